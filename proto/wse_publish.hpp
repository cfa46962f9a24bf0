// proto/wse_publish.hpp: the body of the HTTP publish API (`POST /api/publish`) and the
// `?topics=a,b` list of the upgrade URL.
//
// Owns: one simdjson parser, its padded copy and the last error text per wse_publish_parser
// (grown to the largest body seen, then kept). Thread: the shard (or the API thread) that owns
// the parser. Pure: no I/O, no clock, never throws on input; the views it hands out point into
// the caller's body or into the parser and never outlive the next parse().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proto/wse_envelope.hpp"

namespace wsed::proto {

inline constexpr size_t wse_publish_items_max = 10000;     // items in one body (an array)
inline constexpr size_t wse_publish_user_bytes_max = 256;  // a "user" key

enum class wse_publish_target : uint8_t { topic, broadcast, user };

struct wse_publish_item {
  wse_publish_target target = wse_publish_target::topic;
  std::string_view key;           // topic or user id, unescaped; empty for broadcast
  std::string_view message_json;  // the exact raw JSON object text of "message"
};

class wse_publish_parser {
 public:
  wse_publish_parser();
  ~wse_publish_parser();
  wse_publish_parser(const wse_publish_parser&) = delete;
  wse_publish_parser& operator=(const wse_publish_parser&) = delete;

  // Parses a body: one object {"topic":"t","message":{...}} | {"broadcast":true,"message":{...}}
  // | {"user":"alice","message":{...}}, or a JSON array of those (at most wse_publish_items_max;
  // an empty array is valid and yields no items). Rules per item: exactly one of topic,
  // broadcast, user; topic a string with wse_publish_topic_valid (no control character, at most
  // wse_topic_bytes_max bytes, no glob `*` / `?`); broadcast exactly true; user a non-empty
  // string of at most wse_publish_user_bytes_max bytes; message present once and a JSON object;
  // a field named twice is refused; other fields are ignored. The whole body is JSON-validated
  // (UTF-8, depth at most wse_json_depth_max), so every message_json is valid JSON.
  // out is cleared first and filled in body order. All or nothing: on failure returns false,
  // out is empty and error() is a short reason naming the item index and the field, e.g.
  // "item 3: message must be a JSON object", "item 0: exactly one of topic, broadcast, user",
  // "invalid JSON", "too many items (max 10000)". Views stay valid until the next parse() and
  // while body is alive and unmoved. padding: as for wse_envelope_parser::parse (padded: parse
  // in place, else the body is copied into the parser's padded buffer first).
  bool parse(std::string_view body, std::vector<wse_publish_item>& out,
             wse_input_padding padding = wse_input_padding::none);
  std::string_view error() const;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

// The topics of the upgrade URL's `?topics=a,b` (value already percent-decoded, as
// auth::query_value returns it): split on ',', empty pieces dropped, order and duplicates kept,
// no other check (each piece goes through the subscription path, which validates it). At most
// wse_subscription_topics_max pieces are returned; the pieces after those are not returned and
// are counted in *over_max_count when it is given (so the caller can refuse or count them). A
// topic containing ',' cannot be named here (%2C decodes to ',' before the split).
std::vector<std::string> wse_split_topics(std::string_view query_value,
                                          size_t* over_max_count = nullptr);

}  // namespace wsed::proto
