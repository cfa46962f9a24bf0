// proto/wse_builder.hpp: outbound WSE envelopes (PROTOCOL.md), byte for byte: server_ready,
// server_hello, error, PONG, server ping, subscription_update replies (with recovery), the
// recovery stamp of a publication (and its reader), presence events and stats, and the generic
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
  // End-to-end encryption: base64 of the server's P-256 point (empty: the key is left out).
  std::string_view encryption_public_key;
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
// One topic's entry in a subscription reply's recovery map (PROTOCOL.md "Recovery").
struct wse_topic_recovery {
  std::string_view topic;
  bool has_epoch = false;  // false: "epoch":null (no history)
  uint32_t epoch = 0;      // written "%08x"
  uint64_t offset = 0;     // the topic's last offset (head - 1); 0 without history
  bool recoverable = false;
  bool recovered = false;
  uint64_t count = 0;  // publications actually queued for the replay
};

// The recovery part of a reply to a recovering subscribe; the caller computes the totals
// (recoverable: any topic recoverable, recovered: every topic recovered).
struct wse_recovery_reply {
  bool recoverable = false;
  bool recovered = false;
  std::span<const wse_topic_recovery> topics;
};

// {"c":"WSE","t":"subscription_update","p":{"action":..,"success":<no failed topic>,
//  "success_topics":[..],"failed_topics":[..],"errors":{topic:reason,..}},"v":1}
// errors[i] is the reason of failed_topics[i] (ACL_DENIED, INVALID_TOPIC, TOO_MANY_TOPICS); a
// topic failed twice in one request appears once in the map (JSON keys are unique).
// With recovery, p goes on after "errors" with
//  "recoverable":<bool>,"recovered":<bool>,"recovery":{"<topic>":{"epoch":"<%08x>"|null,
//  "offset":N,"recoverable":<bool>,"recovered":<bool>,"count":n},..}
// in that order; a topic listed twice is written once (the first entry). Without it (nullptr),
// the bytes are those of a plain reply. Repeated keys are found by a scan for a few entries and
// through a sorted index above that (a 10,000-topic reply is O(n log n), never quadratic).
void wse_build_subscription_reply(std::string& out, std::string_view action,
                                  std::span<const std::string_view> success_topics,
                                  std::span<const std::string_view> failed_topics,
                                  std::span<const std::string_view> errors = {},
                                  const wse_recovery_reply* recovery = nullptr);

// The recovery stamp (PROTOCOL.md "Recovery"): the opening of a stamped publication,
//  {"tp":"<topic, JSON-escaped>","e":"<epoch, 8 lowercase hex>","o":<offset>,
// appended to out; the caller then appends the publication JSON without its leading '{' (for
// an empty publication {}, it replaces the stamp's last ',' with '}'). Redis-side code writes
// the same bytes, so a live frame and its replay are byte-identical wherever they were stamped.
void wse_append_recovery_stamp(std::string& out, std::string_view topic, uint32_t epoch,
                               uint64_t offset);
// An upper bound of what wse_append_recovery_stamp appends for topic (every topic byte escaped
// to at most 6 bytes, the offset at most 20 digits), to reserve once.
constexpr size_t wse_recovery_stamp_bytes_max(std::string_view topic) {
  return 49 + 6 * topic.size();
}
// Reads a stamp back from the start of a publication (a fast prefix scan, not a JSON parse):
// true when json starts with exactly the shape wse_append_recovery_stamp writes, followed by ','
// (or by '}' for a stamped empty object). topic_raw is the text between the quotes, still
// escaped (any valid JSON escape is taken; raw control bytes are not; UTF-8 is not checked);
// epoch and offset are the values. False (outputs unspecified) for anything else: other keys or
// key order, spaces, uppercase or short hex, a signed, leading-zero, fractional or > u64 offset.
bool wse_parse_recovery_stamp(std::string_view json, std::string_view& topic_raw, uint32_t& epoch,
                              uint64_t& offset);

// A presence event (type: presence_join, presence_leave or presence_update), as a text frame
// to every subscriber of topic:
//  {"c":"WSE","p":{"data":<data_json, or {} when empty>,"topic":"<topic>","user_id":"<user>"},
//   "t":"<type>","v":1}
// (keys sorted, strings JSON-escaped; data_json is raw JSON, written as is). PROTOCOL.md's
// example (WSE's) has no "topic": wsed adds it, since a client subscribed to several topics
// needs to know whose presence changed.
void wse_build_presence_event(std::string& out, std::string_view type, std::string_view topic,
                              std::string_view user_id, std::string_view data_json);
// A presence stats query body: {"num_users":n,"num_connections":m}
void wse_build_presence_stats(std::string& out, uint64_t users, uint64_t connections);
void wse_build_envelope(std::string& out, const wse_envelope_fields& fields);

}  // namespace wsed::proto
