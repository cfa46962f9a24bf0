// tools/bench/frames.hpp: what wse-bench puts on the wire: pre-masked client frame templates,
// the benchmark payloads (trading message as JSON, `M:` msgpack and `C:` zlib; sized JSON; the
// app ping; client_hello), and the HTTP upgrade request and response check.
//
// Owns: plain values. Thread: built by the main thread or a worker at setup, read-only after.
// Pure: no I/O, no clock (timestamps are parameters). Must never be called per message on the
// hot path except patch_masked (a few bytes, for pings).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/ws.hpp"

namespace wsed::bench {

// One client frame (header + payload), masked with key, ready to send as is.
struct masked_frame {
  std::vector<uint8_t> bytes;
  size_t header_bytes = 0;
  std::array<uint8_t, 4> key{};
};

masked_frame make_masked_frame(proto::ws_opcode opcode, std::span<const uint8_t> payload,
                               std::array<uint8_t, 4> key);

// `copies` back-to-back copies of one frame: any run of k frames is one contiguous send.
std::vector<uint8_t> repeat_frame(const masked_frame& frame, size_t copies);

// Overwrites payload bytes [payload_offset, payload_offset + text.size()) of a masked frame with
// text, masked at the right key positions (the ping's timestamp digits).
void patch_masked(uint8_t* frame, size_t header_bytes, const std::array<uint8_t, 4>& key,
                  size_t payload_offset, std::string_view text);

// The benchmark app ping: {"p":{"client_timestamp":<13 digits>},"t":"ping"}.
std::string ping_json(uint64_t timestamp_ms);
inline constexpr size_t ping_timestamp_offset = 25;  // of the 13 digits in ping_json
inline constexpr size_t ping_timestamp_digits = 13;
std::string timestamp_digits(uint64_t timestamp_ms);  // 13 digits, zero-padded

// The ~175-194 B trading message of the reference throughput test, as JSON text.
std::string trade_json();
// The same object as a MessagePack map, prefixed with "M:".
std::vector<uint8_t> trade_msgpack_prefixed();
// "C:" + zlib stream (libdeflate, level 6) of json.
std::vector<uint8_t> zlib_prefixed(std::string_view json);
// Inflates a zlib stream (test helper and self-check); empty on error.
std::vector<uint8_t> zlib_inflate(std::span<const uint8_t> stream, size_t bytes_max);

// A valid JSON object of exactly `bytes` bytes (at least 20): {"t":"bench","p":"aaa..."}.
std::string sized_json(size_t bytes);

// The WSE client_hello sent after server_ready.
std::string client_hello_json();

// The RFC 6455 upgrade request (with `Cookie: access_token=<token>` when token is not empty).
std::string upgrade_request(std::string_view path, std::string_view host_header,
                            std::string_view key_base64, std::string_view token);

enum class upgrade_status : uint8_t { incomplete, ok, bad_status, bad_accept, too_long };
struct upgrade_check {
  upgrade_status status = upgrade_status::incomplete;
  size_t header_bytes = 0;  // ok: bytes of the response head including the blank line
  std::string status_line;  // bad_status: the line the server sent
};
// Checks an upgrade response received so far (101 and the expected Sec-WebSocket-Accept).
upgrade_check check_upgrade_response(std::string_view response, std::string_view expected_accept,
                                     size_t bytes_max = 16384);

// Path with "format=msgpack" added to its query.
std::string with_query(std::string_view path, std::string_view parameter);

}  // namespace wsed::bench
