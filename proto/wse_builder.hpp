// proto/wse_builder.hpp: outbound WSE envelopes (PROTOCOL.md), byte for byte: server_ready,
// server_hello, error, PONG, server ping, subscription_update replies and the generic
// application envelope; JSON string escaping; UUIDv7 and RFC 3339 timestamps.
//
// Owns: nothing. Thread: any (the shard that sends). Pure: time and random bytes are
// parameters (never reads a clock or an RNG); every builder appends to a caller std::string
// (clear it and reuse it: no heap churn once its capacity has grown), never throws on input.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace wsed::proto {

// Appends s as a JSON string literal (with quotes): '"' and '\\' escaped, every control
// character (U+0000..U+001F) as \u00XX, valid UTF-8 passed through, each byte of an invalid
// UTF-8 sequence replaced by \ufffd (so the output is always valid JSON text).
void wse_append_json_string(std::string& out, std::string_view s);

inline constexpr size_t wse_timestamp_chars = 24;  // 2026-11-23T19:18:11.123Z
inline constexpr size_t wse_uuid_chars = 36;       // 8-4-4-4-12 lowercase hex

// RFC 3339 UTC with milliseconds and 'Z'. Years 0000..9999 (unix_ms is clamped to that range).
void wse_format_timestamp(int64_t unix_ms, char (&out)[wse_timestamp_chars]);
std::string wse_timestamp(int64_t unix_ms);  // convenience for tests and startup code

// UUIDv7 (RFC 9562): 48-bit big-endian unix_ms, version 7, 12 bits of random_bytes[0..1],
// variant 10, 62 bits of random_bytes[2..9]; canonical lowercase.
void wse_format_uuid7(uint64_t unix_ms, std::span<const uint8_t, 10> random_bytes,
                      char (&out)[wse_uuid_chars]);

struct wse_feature {
  std::string_view name;
  bool enabled = false;
};

struct wse_limit {
  std::string_view name;
  uint64_t value = 0;
};

// Features and limits are written in the order given: pass them sorted by name (WSE's clients
// are written against sorted keys).
struct wse_server_ready {
  std::string_view message_id;     // UUIDv7 ("id")
  std::string_view connection_id;  // UUIDv7
  std::string_view user_id;        // JWT sub (escaped here)
  int64_t now_ms = 0;              // server_time and ts
  std::span<const wse_feature> features;
  uint64_t seq = 1;
};

struct wse_server_hello {
  std::string_view connection_id;
  std::span<const wse_feature> features;
  std::span<const wse_limit> limits;
  uint32_t ping_interval_ms = 25000;
  int64_t protocol_version = 2;  // min(client's, 2): the caller decides
  int64_t now_ms = 0;
  std::string_view server_version;
};

// The generic envelope: {"c":..,"t":..,"p":<payload_json>,"id":..,"ts":..,"seq":..,"v":1}.
struct wse_envelope_fields {
  std::string_view category;  // "U", "S", "WSE" (category_name(category_of(type)))
  std::string_view type;
  std::string_view payload_json;  // raw JSON, written as is; empty -> {}
  std::string_view id;            // UUIDv7; empty -> no "id"
  int64_t now_ms = 0;             // ts
  uint64_t seq = 0;               // 0 -> no "seq"
};

void wse_build_server_ready(std::string& out, const wse_server_ready& ready);
void wse_build_server_hello(std::string& out, const wse_server_hello& hello);
// {"c":"WSE","p":{"code":..,"message":..,"timestamp":"<ts>"},"t":"error","v":1}
void wse_build_error(std::string& out, std::string_view code, std::string_view message,
                     int64_t now_ms);
// {"c":"WSE","t":"PONG","p":{"client_timestamp":C,"server_timestamp":S,"latency":L},"v":1}
// L = S - C, or 0 when the ping carried no timestamp (C == 0).
void wse_build_pong(std::string& out, int64_t client_timestamp_ms, int64_t now_ms);
// {"c":"WSE","t":"ping","p":{"server_time":"<ts>"}}
void wse_build_server_ping(std::string& out, int64_t now_ms);
// {"c":"WSE","t":"subscription_update","p":{"action":..,"success":<no failed topic>,
//  "success_topics":[..],"failed_topics":[..],"errors":{topic:reason,..}},"v":1}
// errors[i] is the reason of failed_topics[i] (ACL_DENIED, INVALID_TOPIC, TOO_MANY_TOPICS); a
// topic failed twice in one request appears once in the map (JSON keys are unique).
void wse_build_subscription_reply(std::string& out, std::string_view action,
                                  std::span<const std::string_view> success_topics,
                                  std::span<const std::string_view> failed_topics,
                                  std::span<const std::string_view> errors = {});
void wse_build_envelope(std::string& out, const wse_envelope_fields& fields);

}  // namespace wsed::proto
