// proto/wse_envelope.hpp: the inbound WSE envelope (PROTOCOL.md "Envelope"): parses a text
// message with simdjson (in place when the caller leaves wse_json_padding_bytes spare bytes after
// it), classifies it (protocol messages the shard answers itself vs application messages), and
// the category rules (category_of, inserting a top-level "c" into a publication).
//
// Owns: one simdjson parser and one padded copy buffer per wse_envelope_parser (allocated at
// construction, grown to the largest message seen, never per message). Thread: the shard that
// owns the parser; one parser per shard. Pure: no I/O, no clock, no RNG, never throws on input.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/wse_error.hpp"

namespace wsed::proto {

// Spare bytes simdjson may read past the end of a message (simdjson::SIMDJSON_PADDING; checked
// in the .cpp). The engine's receive buffers leave 64 spare bytes after every message.
inline constexpr size_t wse_json_padding_bytes = 64;
inline constexpr size_t wse_json_depth_max = 64;  // deeper: wse_error::too_deep
// Topics one subscription request may list (the message size bounds it first in practice; the
// per-connection cap, --max-topics-per-connection, is the engine's).
inline constexpr size_t wse_subscription_topics_max = 10000;
inline constexpr size_t wse_topic_bytes_max = 256;        // longer topics are refused
inline constexpr size_t wse_queue_group_bytes_max = 128;  // longer group names are refused
// Recovery positions position_of scans one by one; above this many the parser sorts an index.
inline constexpr size_t wse_recovery_positions_linear_max = 16;

enum class wse_category : uint8_t { wse, user, snapshot };

// "WSE", "U", "S".
std::string_view category_name(wse_category category);

// PROTOCOL.md: contains "_snapshot" or starts with "snapshot_" -> S; a WSE system type -> WSE;
// otherwise U.
wse_category category_of(std::string_view type);

enum class wse_kind : uint8_t {
  application,   // anything the engine does not answer itself: handed to the application
  ping,          // app ping: answer with PONG (client_timestamp_ms)
  pong,          // "pong" / "PONG": consumed
  client_hello,  // answer with server_hello
  subscription,  // "subscription_update" / "subscription": subscribe or unsubscribe topics
  publish,       // "publish": a client publishes p.message to the topic p.topic
};

// The kind a type ("t") makes a message: ping, pong/PONG, client_hello, subscription_update /
// subscription, publish; anything else is an application message.
wse_kind wse_kind_of(std::string_view type);

// A topic a client may name in a subscription (a glob allowed): not empty, at most
// wse_topic_bytes_max bytes, no ASCII control character (bytes < 0x20 and 0x7F).
bool wse_topic_valid(std::string_view topic);
// A queue group name: 1 to wse_queue_group_bytes_max bytes, no ASCII control character.
bool wse_queue_group_valid(std::string_view group);
// A topic a publication may go to: wse_topic_valid and no glob character (`*`, `?`), since
// publishing is to concrete topics.
bool wse_publish_topic_valid(std::string_view topic);
// Whether a publication (a JSON object simdjson accepted, e.g. ensure_category's output) has a
// top-level key a recovery stamp would duplicate ("tp", "e", "o"), or a key written with an
// escape (which could spell one of them): on a recoverable topic such a publication is refused,
// since clients would read its keys instead of the stamp's.
bool wse_has_stamp_keys(std::string_view validated_object);
// The raw text of a top-level member's value in a JSON object simdjson accepted (e.g.
// ensure_category's output), or empty when the key is absent; escaped_key is set when some key
// is written with an escape (which could spell it). Signing reads "p" and refuses a "sig".
std::string_view wse_top_level_value(std::string_view validated_object, std::string_view key,
                                     bool& escaped_key);

enum class wse_subscription_action : uint8_t { subscribe, unsubscribe };

struct wse_topic {
  std::string_view name;  // unescaped; empty for an element that is not a string
  bool valid = false;     // wse_topic_valid(name), and false for a non-string element
};

// Where a client stands in one topic's sequence: an entry of p.recovery, as sent
// ({"<topic>":{"epoch":"1f2e3d4c","offset":41}}; PROTOCOL.md "Recovery").
struct wse_recovery_position {
  std::string_view topic;   // the key, unescaped (not checked: it is only looked up)
  bool has_epoch = false;   // "epoch" is a string of exactly 8 lowercase hex digits
  uint32_t epoch = 0;       // that value when has_epoch, else 0
  bool has_offset = false;  // "offset" is a non-negative integer that fits u64 (not 41.0)
  uint64_t offset = 0;      // the last offset received (inclusive) when has_offset, else 0
};

// A subscription request. Its shape never fails the parse (the engine answers every request
// with the reply shape); what was wrong is in these fields:
// - action_valid: p is an object whose "action" is "subscribe" or "unsubscribe". When false,
//   action is subscribe and action_name is p.action if it is a string (else empty).
// - topics_is_array: p.topics is an array (else topic_count is 0). `topics: []` is valid.
// - each element of p.topics, in order, is a wse_topic: a string element is unescaped and
//   checked with wse_topic_valid; a non-string element is listed with an empty name and
//   valid = false (so the reply can count it as failed).
// - at most wse_subscription_topics_max elements are listed; topics_over_max counts the
//   elements after those, which are not looked at. A request with topics_over_max > 0 should be
//   refused as a whole (every listed topic failed with TOO_MANY_TOPICS), never half applied.
// - recover: p.recover is JSON true (false, absent, "true", 1, ...: false).
// - recovery_invalid: p.recovery is present but not an object (null included); no positions.
//   When it is an object, each member, in order, is a wse_recovery_position (a member whose
//   value is not an object, or whose epoch / offset has the wrong shape, is listed with
//   has_epoch / has_offset false). At most wse_subscription_topics_max are listed; members
//   after those are ignored. position_of(topic) finds one (a key sent twice: the first).
// - has_presence: p.presence is a JSON object; presence_json is then its exact raw text (the
//   caller's bytes, valid JSON, never re-encoded; found even under
//   wse_payload_text::never_for_application). presence_invalid: p.presence is present but not
//   an object (null included); presence_json is then empty.
// - has_queue_group: p.queue_group is a string (unescaped into queue_group) of 1 to
//   wse_queue_group_bytes_max bytes with no ASCII control character (bytes < 0x20 and 0x7F).
//   queue_group_invalid: p.queue_group is present but not that (queue_group is then empty).
// has_x and x_invalid are never both true; both false: p.x is absent (or p is not an object).
// A key of p sent twice: the first counts (as for action and topics).
struct wse_subscription {
  wse_subscription_action action = wse_subscription_action::subscribe;
  std::string_view action_name;  // as sent ("subscribe" / "unsubscribe"), for the reply
  bool action_valid = false;
  bool topics_is_array = false;
  size_t topic_count = 0;
  size_t topics_over_max = 0;
  std::vector<wse_topic> topics;  // topic_count entries (kept by the caller's message: reused)
  std::span<const wse_topic> list() const { return {topics.data(), topic_count}; }

  bool recover = false;
  bool recovery_invalid = false;
  size_t recovery_count = 0;
  std::vector<wse_recovery_position> recovery;  // recovery_count entries (reused, like topics)
  // Indices into recovery sorted by (topic, index), built by the parser when recovery_count >
  // wse_recovery_positions_linear_max (else empty): position_of is a binary search then. When
  // it does not hold recovery_count entries (a hand-filled struct), position_of scans.
  std::vector<uint32_t> recovery_sorted;
  std::span<const wse_recovery_position> positions() const {
    return {recovery.data(), recovery_count};
  }
  // The first position sent for topic (exact bytes of the unescaped key), or nullptr.
  const wse_recovery_position* position_of(std::string_view topic) const;

  bool has_presence = false;
  bool presence_invalid = false;
  std::string_view presence_json;  // raw text of p.presence when has_presence, else empty

  bool has_queue_group = false;
  bool queue_group_invalid = false;
  std::string_view queue_group;  // unescaped, when has_queue_group, else empty
};

// A client publication request:
// {"c":"WSE","t":"publish","p":{"topic":"chat","message":{"t":"chat","p":{...}}},"v":1}
// (id, ts, seq, pri ignored). Its shape never fails the parse; the engine answers each problem
// with an error frame:
// - topic_valid: p.topic is a string (unescaped into topic) that passes wse_publish_topic_valid
//   (so a glob is not a valid publish topic). Absent, not a string, duplicated in p, or p not an
//   object: false (topic is then the string when there was one, else empty).
// - message_json: the exact raw JSON text of p.message (valid JSON: the whole message was
//   validated), to be framed with ensure_category. message_is_object: p.message is present
//   once and is a JSON object (otherwise message_json may still show what was sent, or empty).
struct wse_publish {
  std::string_view topic;
  bool topic_valid = false;
  std::string_view message_json;
  bool message_is_object = false;
};

struct wse_client_hello {
  int64_t protocol_version = 0;            // p.protocol_version (0 when absent or not an integer)
  std::string_view client_version;         // p.client_version (empty when absent)
  bool encryption = false;                 // p.features.encryption is true
  std::string_view encryption_public_key;  // p.encryption_public_key (empty when not a string)
};

// The parsed envelope. Every string_view points either into the caller's message (raw spans)
// or into the parser (unescaped strings); all stay valid until the next parse() on the same
// parser and while the message bytes are alive and unmoved.
struct wse_message {
  wse_kind kind = wse_kind::application;
  std::string_view type;            // "t", unescaped
  bool has_category = false;        // a top-level "c" string was present
  std::string_view category;        // "c", unescaped
  std::string_view id;              // "id" when it is a string, else empty
  bool has_payload = false;         // a top-level "p" was present
  std::string_view payload_json;    // raw JSON text of "p" (exact bytes, to forward), if present
  uint8_t legacy_prefix_bytes = 0;  // 3 for "WSE{", 1 for "U{" / "S{", else 0
  int64_t client_timestamp_ms = 0;  // ping: p.timestamp or p.client_timestamp, 0 when absent
  wse_client_hello hello;           // client_hello
  wse_subscription subscription;    // subscription
  wse_publish publish;              // publish
};

// Whether the parse finds the exact text of "p" for an application message (payload_json).
enum class wse_payload_text : uint8_t { always, never_for_application };

// Whether the bytes after the message may be read (they are never written).
enum class wse_input_padding : uint8_t {
  none,    // copy into the parser's padded buffer first
  padded,  // at least wse_json_padding_bytes readable bytes follow the message: parse in place
};

class wse_envelope_parser {
 public:
  wse_envelope_parser();
  ~wse_envelope_parser();
  wse_envelope_parser(const wse_envelope_parser&) = delete;
  wse_envelope_parser& operator=(const wse_envelope_parser&) = delete;

  // Parses one whole inbound text message (legacy prefixes WSE{ U{ S{ accepted). On error, out
  // is left partly filled and must not be used. Every value in the document is validated
  // (strings, numbers, UTF-8, depth <= wse_json_depth_max), so payload_json is valid JSON.
  // payload_text: never_for_application leaves payload_json empty for application messages
  // (and pings, pongs, hellos, subscriptions, which are read from the document), saving the scan
  // of the raw text that finds it; a publish message always gets it.
  wse_error parse(std::string_view message, wse_message& out,
                  wse_input_padding padding = wse_input_padding::none,
                  wse_payload_text payload_text = wse_payload_text::always);

  // A publication about to be framed: appends to out the same JSON with "c":"<category_of(t)>"
  // inserted first when it has no top-level "c" (a nested "c" or "t" does not count; no "t", or
  // a "t" that is not a string, means U), or unchanged when it has one (whatever its value).
  // The publication must be a JSON object (else not_object, malformed_json or too_deep, and
  // out is unchanged). Its input is copied (no padding needed).
  wse_error ensure_category(std::string_view publication_json, std::string& out);

  // Whether json is one JSON object (presence data from an API): none, or why not. Copied (no
  // padding needed).
  wse_error check_object(std::string_view json);

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace wsed::proto
