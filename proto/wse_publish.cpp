// proto/wse_publish.cpp: the publish API body parser and the `?topics=` split (see
// wse_publish.hpp).
//
// Owns: the simdjson document and the error text of a wse_publish_parser. Thread: the owner of
// the parser. Never does I/O, never throws on input; allocates only when a body is larger than
// any seen before, for the error text, and for the caller's item vector.
//
// The DOM keeps no source offsets, so the raw text of each item and of its "message" is found
// by the scanner of wse_json_scan.hpp walking the validated body alongside the DOM.
#include "proto/wse_publish.hpp"

#include <simdjson.h>

#include "proto/wse_json_scan.hpp"

namespace wsed::proto {

namespace {

using simdjson::dom::element;

// Why one item was refused (nullptr: accepted).
const char* read_item(element value, std::string_view text, wse_publish_item& item) {
  simdjson::dom::object object;
  if (value.get_object().get(object)) return "must be a JSON object";
  size_t targets = 0;
  bool seen_topic = false;
  bool seen_broadcast = false;
  bool seen_user = false;
  bool seen_message = false;
  size_t index = 0;
  size_t message_index = 0;
  element message;
  for (const auto field : object) {
    const std::string_view key = field.key;
    if (key == "topic") {
      if (seen_topic) return "duplicate field topic";
      seen_topic = true;
      ++targets;
      item.target = wse_publish_target::topic;
      if (field.value.get_string().get(item.key)) return "topic must be a string";
    } else if (key == "broadcast") {
      if (seen_broadcast) return "duplicate field broadcast";
      seen_broadcast = true;
      ++targets;
      item.target = wse_publish_target::broadcast;
      bool flag = false;
      if (field.value.get_bool().get(flag) || !flag) return "broadcast must be true";
    } else if (key == "user") {
      if (seen_user) return "duplicate field user";
      seen_user = true;
      ++targets;
      item.target = wse_publish_target::user;
      if (field.value.get_string().get(item.key)) return "user must be a string";
    } else if (key == "message") {
      if (seen_message) return "duplicate field message";
      seen_message = true;
      message = field.value;
      message_index = index;
    }
    ++index;
  }
  if (targets != 1) return "exactly one of topic, broadcast, user";
  if (item.target == wse_publish_target::broadcast) item.key = {};
  if (item.target == wse_publish_target::topic && !wse_publish_topic_valid(item.key)) {
    if (wse_topic_valid(item.key))
      return "topic must not contain * or ? (publish to a concrete topic)";
    return "topic must be 1 to 256 bytes without control characters";
  }
  if (item.target == wse_publish_target::user &&
      (item.key.empty() || item.key.size() > wse_publish_user_bytes_max)) {
    return "user must be 1 to 256 bytes";
  }
  if (!seen_message) return "missing message";
  if (!message.is_object()) return "message must be a JSON object";
  item.message_json = json_scan::member_value(text, message_index);
  return nullptr;
}

}  // namespace

static_assert(wse_topic_bytes_max == 256 && wse_publish_user_bytes_max == 256,
              "the error texts of read_item name these limits");

struct wse_publish_parser::state {
  json_scan::document doc;
  std::string error;
};

wse_publish_parser::wse_publish_parser() : state_(std::make_unique<state>()) {}
wse_publish_parser::~wse_publish_parser() = default;

std::string_view wse_publish_parser::error() const {
  return state_->error;
}

bool wse_publish_parser::parse(std::string_view body, std::vector<wse_publish_item>& out,
                               wse_input_padding padding) {
  out.clear();
  std::string& error = state_->error;
  error.clear();
  element root;
  switch (state_->doc.parse(body, padding, root)) {
    case wse_error::none:
      break;
    case wse_error::too_deep:
      error = "invalid JSON (nested deeper than " + std::to_string(wse_json_depth_max) + ")";
      return false;
    default:
      error = "invalid JSON";
      return false;
  }
  auto refuse = [&](size_t item, const char* reason) {
    out.clear();
    error = "item " + std::to_string(item) + ": " + reason;
    return false;
  };
  if (root.is_object()) {
    wse_publish_item item;
    if (const char* reason = read_item(root, body, item)) return refuse(0, reason);
    out.push_back(item);
    return true;
  }
  simdjson::dom::array items;
  if (root.get_array().get(items)) {
    error = "the body must be a JSON object or an array of objects";
    return false;
  }
  if (items.size() > wse_publish_items_max) {
    error = "too many items (max " + std::to_string(wse_publish_items_max) + ")";
    return false;
  }
  out.reserve(items.size());
  json_scan::array_cursor cursor(body);
  size_t index = 0;
  for (element value : items) {
    const std::string_view text = cursor.next();
    wse_publish_item item;
    if (const char* reason = read_item(value, text, item)) return refuse(index, reason);
    out.push_back(item);
    ++index;
  }
  return true;
}

std::vector<std::string> wse_split_topics(std::string_view query_value, size_t* over_max_count) {
  std::vector<std::string> topics;
  size_t over_max = 0;
  while (!query_value.empty()) {
    const size_t comma = query_value.find(',');
    const std::string_view piece = query_value.substr(0, comma);
    query_value =
        comma == std::string_view::npos ? std::string_view{} : query_value.substr(comma + 1);
    if (piece.empty()) continue;
    if (topics.size() == wse_subscription_topics_max) {
      ++over_max;
    } else {
      topics.emplace_back(piece);
    }
  }
  if (over_max_count) *over_max_count = over_max;
  return topics;
}

}  // namespace wsed::proto
