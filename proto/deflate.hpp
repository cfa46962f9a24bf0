// proto/deflate.hpp: permessage-deflate (RFC 7692). The Sec-WebSocket-Extensions negotiation
// (pure parsing: bytes in, the answer out) and the message codec over libdeflate (raw DEFLATE,
// no context kept between messages: both sides are told no_context_takeover).
//
// Owns: a deflate_codec holds a libdeflate compressor and decompressor. Thread: one codec per
// shard, used by that shard's thread only. No I/O, no clock; the codec's output buffer grows
// (amortized) up to the caller's cap and is reused for every message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "proto/http.hpp"

struct libdeflate_compressor;
struct libdeflate_decompressor;

namespace wsed::proto {

// What the server answers to a client's offers.
struct deflate_negotiation {
  bool accepted = false;  // an acceptable permessage-deflate offer was found
  // The accepted offer asked server_max_window_bits=15: the answer must name it (we always
  // compress with libdeflate's 32 KiB window, so it is the only value we can honour).
  bool server_max_window_bits = false;
};

// Parses every Sec-WebSocket-Extensions value of the request (one element per header line; each
// a comma-separated list of offers `name *( ";" param [ "=" (token | quoted-string) ] )`) and picks
// the first permessage-deflate offer we can honour. An offer is declined (the next one is tried)
// when it has an unknown or repeated parameter, a value where none is allowed, a window-bits
// value outside 8..15 (client_max_window_bits may have none), or server_max_window_bits < 15.
// A malformed list declines what it cannot parse and keeps the offers parsed before it.
deflate_negotiation negotiate_permessage_deflate(std::span<const std::string_view> header_values);
// The same over every Sec-WebSocket-Extensions header line of a request. *offered: the request
// had at least one such line.
deflate_negotiation negotiate_permessage_deflate(const http_request& request, bool* offered);

// The Sec-WebSocket-Extensions value of the 101 answer to an accepted offer.
std::string_view deflate_response_value(const deflate_negotiation& n);

// libdeflate level for permessage-deflate: 1 costs 1.5-2.7x less CPU than 6 from 4 KiB up for a
// ratio ~7% worse (perf/RESULTS.md, "permessage-deflate").
inline constexpr int deflate_level_default = 1;

enum class inflate_status : uint8_t {
  ok,
  bad_data,  // not a valid raw DEFLATE stream: close 1007
  too_big,   // inflates to more than the cap: close 1009
};

class deflate_codec {
 public:
  explicit deflate_codec(
      int level = deflate_level_default);  // throws std::bad_alloc (startup only)
  ~deflate_codec();
  deflate_codec(const deflate_codec&) = delete;
  deflate_codec& operator=(const deflate_codec&) = delete;

  // Compresses one message as raw DEFLATE (one final block: a receiver that appends
  // 00 00 ff ff, as RFC 7692 says, stops at the final block). Returns a view into the codec's
  // buffer (valid until the next call), empty when the output would not be smaller than the
  // input (the message is better sent uncompressed).
  std::span<const uint8_t> compress(std::span<const uint8_t> message);

  // Inflates one received message (its frames' payloads joined; the sender stripped the
  // trailing 00 00 ff ff, which this puts back in effect). The message goes to the start of
  // out (replaced; *message_bytes long, followed by padding_bytes more readable bytes), grown
  // from a guess up to bytes_max.
  inflate_status inflate(std::span<const uint8_t> compressed, size_t bytes_max,
                         std::vector<uint8_t>& out, size_t* message_bytes,
                         size_t padding_bytes = 0);

 private:
  libdeflate_compressor* compressor_ = nullptr;
  libdeflate_decompressor* decompressor_ = nullptr;
  std::vector<uint8_t> out_;   // compress output
  std::vector<uint8_t> tail_;  // inflate input with the RFC 7692 tail appended
};

}  // namespace wsed::proto
