// proto/wse_envelope.cpp: inbound envelope parsing (simdjson DOM, in place when padded) and the
// category rules.
//
// Owns: the simdjson DOM parser of a wse_envelope_parser. Thread: the shard owning the parser.
// Never does I/O, never reads a clock, never throws on input; allocates only when a message is
// larger than any seen before (the parser and the padded copy grow, then stay).
//
// Why the DOM API and not On-Demand: Debian's simdjson picks On-Demand's kernel at compile time
// (the fallback kernel without -mavx2), while the DOM parser dispatches at run time to the
// fastest kernel of the CPU. The DOM also validates the whole message, so "p" can be forwarded
// as is. The DOM keeps no source offsets, so the raw spans of "p" (and of a publish request's
// p.message, a subscription's p.presence) are found by a small scanner over the (already
// validated) text (wse_json_scan.hpp): it skips to the n-th member's value.
#include "proto/wse_envelope.hpp"

#include <simdjson.h>

#include <algorithm>
#include <cmath>

#include "proto/wse_json_scan.hpp"

namespace wsed::proto {

static_assert(wse_json_padding_bytes >= simdjson::SIMDJSON_PADDING,
              "receive buffers must leave simdjson's padding after each message");

std::string_view to_string(wse_error error) {
  switch (error) {
    case wse_error::none:
      return "none";
    case wse_error::empty:
      return "empty";
    case wse_error::malformed_json:
      return "malformed_json";
    case wse_error::not_object:
      return "not_object";
    case wse_error::missing_type:
      return "missing_type";
    case wse_error::type_not_string:
      return "type_not_string";
    case wse_error::duplicate_key:
      return "duplicate_key";
    case wse_error::too_deep:
      return "too_deep";
    case wse_error::bad_payload:
      return "bad_payload";
    case wse_error::too_many_topics:
      return "too_many_topics";
    case wse_error::malformed_msgpack:
      return "malformed_msgpack";
    case wse_error::truncated:
      return "truncated";
    case wse_error::trailing_bytes:
      return "trailing_bytes";
    case wse_error::unsupported_type:
      return "unsupported_type";
    case wse_error::invalid_utf8:
      return "invalid_utf8";
    case wse_error::too_large:
      return "too_large";
    case wse_error::bad_zlib:
      return "bad_zlib";
    case wse_error::unknown_format:
      return "unknown_format";
  }
  return "unknown";
}

std::string_view category_name(wse_category category) {
  switch (category) {
    case wse_category::wse:
      return "WSE";
    case wse_category::snapshot:
      return "S";
    case wse_category::user:
      break;
  }
  return "U";
}

wse_category category_of(std::string_view type) {
  // The snapshot rule comes first (as in WSE), so "snapshot_complete" is S.
  if (type.find("_snapshot") != std::string_view::npos || type.starts_with("snapshot_")) {
    return wse_category::snapshot;
  }
  static constexpr std::string_view system_types[] = {
      "server_ready",
      "server_hello",
      "client_hello_ack",
      "connection_state_change",
      "subscription_update",
      "snapshot_complete",
      "error",
      "pong",
      "PONG",
  };
  for (std::string_view s : system_types) {
    if (type == s) return wse_category::wse;
  }
  return wse_category::user;
}

namespace {

using simdjson::dom::element;

std::string_view strip_legacy_prefix(std::string_view message, uint8_t& prefix_bytes) {
  prefix_bytes = 0;
  if (message.starts_with("WSE{")) {
    prefix_bytes = 3;
  } else if (message.starts_with("U{") || message.starts_with("S{")) {
    prefix_bytes = 1;
  }
  return message.substr(prefix_bytes);
}

// An integer millisecond count from a JSON number (ints, and floats as JS/Python may send).
bool number_as_int64(element value, int64_t& out) {
  int64_t i = 0;
  if (!value.get_int64().get(i)) {
    out = i;
    return true;
  }
  double d = 0;
  if (!value.get_double().get(d) && std::isfinite(d) && std::fabs(d) < 9.0e18) {
    out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

void read_ping(element payload, wse_message& out) {
  for (const char* key : {"timestamp", "client_timestamp"}) {
    element value;
    if (!payload[key].get(value) && number_as_int64(value, out.client_timestamp_ms)) return;
  }
}

void read_hello(element payload, wse_message& out) {
  element value;
  if (!payload["protocol_version"].get(value)) {
    int64_t version = 0;
    if (!value.get_int64().get(version)) out.hello.protocol_version = version;
  }
  std::string_view client_version;
  if (!payload["client_version"].get_string().get(client_version)) {
    out.hello.client_version = client_version;
  }
  bool encryption = false;
  if (!payload["features"]["encryption"].get_bool().get(encryption)) {
    out.hello.encryption = encryption;
  }
  std::string_view key;
  if (!payload["encryption_public_key"].get_string().get(key)) {
    out.hello.encryption_public_key = key;
  }
}

// A byte that may not appear in a topic or a queue group: an ASCII control character.
bool is_control(char ch) {
  const auto byte = static_cast<unsigned char>(ch);
  return byte < 0x20 || byte == 0x7f;
}

// text is exactly 8 lowercase hex digits (an epoch as PROTOCOL.md writes it: %08x).
bool parse_epoch(std::string_view text, uint32_t& epoch) {
  if (text.size() != 8) return false;
  uint32_t value = 0;
  for (char ch : text) {
    uint32_t digit = 0;
    if (ch >= '0' && ch <= '9') {
      digit = static_cast<uint32_t>(ch - '0');
    } else if (ch >= 'a' && ch <= 'f') {
      digit = static_cast<uint32_t>(ch - 'a' + 10);
    } else {
      return false;
    }
    value = value << 4 | digit;
  }
  epoch = value;
  return true;
}

wse_recovery_position read_position(std::string_view topic, element value) {
  wse_recovery_position position;
  position.topic = topic;
  simdjson::dom::object object;
  if (value.get_object().get(object)) return position;
  std::string_view epoch;
  if (!object["epoch"].get_string().get(epoch)) {
    position.has_epoch = parse_epoch(epoch, position.epoch);
  }
  uint64_t offset = 0;
  // get_uint64 takes integers only (41.0 and 4.1e1 are doubles) and refuses negatives.
  if (!object["offset"].get_uint64().get(offset)) {
    position.has_offset = true;
    position.offset = offset;
  }
  return position;
}

void read_positions(element value, wse_subscription& sub) {
  simdjson::dom::object object;
  if (value.get_object().get(object)) {
    sub.recovery_invalid = true;
    return;
  }
  for (const auto field : object) {
    if (sub.recovery_count == wse_subscription_topics_max) break;
    sub.recovery.push_back(read_position(field.key, field.value));
    ++sub.recovery_count;
  }
  if (sub.recovery_count <= wse_recovery_positions_linear_max) return;
  // Ties by index, so the first of a key sent twice comes first (as a scan would find it).
  sub.recovery_sorted.resize(sub.recovery_count);
  for (size_t i = 0; i < sub.recovery_count; ++i) sub.recovery_sorted[i] = static_cast<uint32_t>(i);
  std::sort(sub.recovery_sorted.begin(), sub.recovery_sorted.end(), [&](uint32_t a, uint32_t b) {
    const std::string_view ta = sub.recovery[a].topic, tb = sub.recovery[b].topic;
    return ta != tb ? ta < tb : a < b;
  });
}

void read_queue_group(element value, wse_subscription& sub) {
  std::string_view group;
  const bool valid = !value.get_string().get(group) && wse_queue_group_valid(group);
  sub.has_queue_group = valid;
  sub.queue_group_invalid = !valid;
  if (valid) sub.queue_group = group;
}

// payload_text: the exact text of p when the parse already found it, else empty (found here,
// from json and payload_index, only when p.presence is an object).
void read_subscription(element payload, std::string_view json, size_t payload_index,
                       std::string_view payload_text, wse_message& out) {
  wse_subscription& sub = out.subscription;
  simdjson::dom::object object;
  if (payload.get_object().get(object)) return;
  // The keys added by recovery, presence and queue groups, in one pass (the first of a key
  // counts, as object["key"] finds it).
  bool seen_recover = false, seen_recovery = false, seen_presence = false, seen_group = false;
  size_t index = 0;
  for (const auto field : object) {
    const std::string_view key = field.key;
    if (key == "recover" && !seen_recover) {
      seen_recover = true;
      bool recover = false;
      sub.recover = !field.value.get_bool().get(recover) && recover;
    } else if (key == "recovery" && !seen_recovery) {
      seen_recovery = true;
      read_positions(field.value, sub);
    } else if (key == "presence" && !seen_presence) {
      seen_presence = true;
      sub.has_presence = field.value.is_object();
      sub.presence_invalid = !sub.has_presence;
      if (sub.has_presence) {
        if (payload_text.empty()) payload_text = json_scan::member_value(json, payload_index);
        sub.presence_json = json_scan::member_value(payload_text, index);
      }
    } else if (key == "queue_group" && !seen_group) {
      seen_group = true;
      read_queue_group(field.value, sub);
    }
    ++index;
  }
  std::string_view action;
  if (!object["action"].get_string().get(action)) {
    sub.action_name = action;
    if (action == "subscribe") {
      sub.action = wse_subscription_action::subscribe;
      sub.action_valid = true;
    } else if (action == "unsubscribe") {
      sub.action = wse_subscription_action::unsubscribe;
      sub.action_valid = true;
    }
  }
  simdjson::dom::array topics;
  if (object["topics"].get_array().get(topics)) return;
  sub.topics_is_array = true;
  for (element topic : topics) {
    if (sub.topic_count == wse_subscription_topics_max) {
      ++sub.topics_over_max;
      continue;
    }
    std::string_view name;
    if (topic.get_string().get(name))
      sub.topics.push_back(wse_topic{});
    else
      sub.topics.push_back(wse_topic{name, wse_topic_valid(name)});
    ++sub.topic_count;
  }
}

// payload_json is the exact text of payload (an object or not).
void read_publish(element payload, std::string_view payload_json, wse_message& out) {
  wse_publish& pub = out.publish;
  simdjson::dom::object object;
  if (payload.get_object().get(object)) return;
  size_t topics = 0;
  size_t messages = 0;
  size_t index = 0;
  size_t message_index = 0;
  bool message_is_object = false;
  for (const auto field : object) {
    if (field.key == "topic") {
      std::string_view topic;
      if (++topics == 1 && !field.value.get_string().get(topic)) pub.topic = topic;
    } else if (field.key == "message") {
      if (++messages == 1) {
        message_index = index;
        message_is_object = field.value.is_object();
      }
    }
    ++index;
  }
  pub.topic_valid = topics == 1 && wse_publish_topic_valid(pub.topic);
  if (messages > 0) pub.message_json = json_scan::member_value(payload_json, message_index);
  pub.message_is_object = messages == 1 && message_is_object;
}

void reset(wse_message& out) {
  // Field by field: the topic list keeps its capacity.
  out.kind = wse_kind::application;
  out.type = {};
  out.has_category = false;
  out.category = {};
  out.id = {};
  out.has_payload = false;
  out.payload_json = {};
  out.client_timestamp_ms = 0;
  out.hello = {};
  out.subscription.action = wse_subscription_action::subscribe;
  out.subscription.action_name = {};
  out.subscription.action_valid = false;
  out.subscription.topics_is_array = false;
  out.subscription.topic_count = 0;
  out.subscription.topics.clear();
  out.subscription.topics_over_max = 0;
  out.subscription.recover = false;
  out.subscription.recovery_invalid = false;
  out.subscription.recovery_count = 0;
  out.subscription.recovery.clear();
  out.subscription.recovery_sorted.clear();
  out.subscription.has_presence = false;
  out.subscription.presence_invalid = false;
  out.subscription.presence_json = {};
  out.subscription.has_queue_group = false;
  out.subscription.queue_group_invalid = false;
  out.subscription.queue_group = {};
  out.publish = {};
}

}  // namespace

wse_kind wse_kind_of(std::string_view type) {
  if (type == "ping") return wse_kind::ping;
  if (type == "pong" || type == "PONG") return wse_kind::pong;
  if (type == "client_hello") return wse_kind::client_hello;
  if (type == "subscription_update" || type == "subscription") return wse_kind::subscription;
  if (type == "publish") return wse_kind::publish;
  return wse_kind::application;
}

bool wse_queue_group_valid(std::string_view group) {
  return !group.empty() && group.size() <= wse_queue_group_bytes_max &&
         std::none_of(group.begin(), group.end(), is_control);
}

bool wse_topic_valid(std::string_view topic) {
  return !topic.empty() && topic.size() <= wse_topic_bytes_max &&
         std::none_of(topic.begin(), topic.end(), is_control);
}

const wse_recovery_position* wse_subscription::position_of(std::string_view topic) const {
  const std::span<const wse_recovery_position> all = positions();
  if (recovery_sorted.size() != all.size()) {
    for (const wse_recovery_position& position : all) {
      if (position.topic == topic) return &position;
    }
    return nullptr;
  }
  const auto at = std::lower_bound(
      recovery_sorted.begin(), recovery_sorted.end(), topic,
      [&](uint32_t index, std::string_view key) { return all[index].topic < key; });
  if (at == recovery_sorted.end() || all[*at].topic != topic) return nullptr;
  return &all[*at];
}

bool wse_has_stamp_keys(std::string_view object) {
  using namespace json_scan;
  size_t i = skip_space(object, 0);
  if (i >= object.size() || object[i] != '{') return false;
  ++i;
  while (i < object.size()) {
    i = skip_space(object, i);
    if (i >= object.size() || object[i] != '"') return false;  // '}': no more members
    size_t end = skip_string(object, i);
    std::string_view key = object.substr(i + 1, end - i - 2);
    if (key == "tp" || key == "e" || key == "o" || key.find('\\') != std::string_view::npos)
      return true;
    i = skip_space(object, end) + 1;  // past ':'
    i = skip_value(object, skip_space(object, i));
    i = skip_space(object, i) + 1;  // past ','
  }
  return false;
}

std::string_view wse_top_level_value(std::string_view object, std::string_view key,
                                     bool& escaped_key) {
  using namespace json_scan;
  escaped_key = false;
  size_t i = skip_space(object, 0);
  if (i >= object.size() || object[i] != '{') return {};
  ++i;
  std::string_view found;
  while (i < object.size()) {
    i = skip_space(object, i);
    if (i >= object.size() || object[i] != '"') break;  // '}': no more members
    size_t end = skip_string(object, i);
    std::string_view name = object.substr(i + 1, end - i - 2);
    if (name.find('\\') != std::string_view::npos) escaped_key = true;
    i = skip_space(object, skip_space(object, end) + 1);  // past ':'
    size_t value_end = skip_value(object, i);
    if (name == key && found.empty()) found = object.substr(i, value_end - i);
    i = skip_space(object, value_end) + 1;  // past ','
  }
  return found;
}

bool wse_publish_topic_valid(std::string_view topic) {
  return wse_topic_valid(topic) && topic.find_first_of("*?") == std::string_view::npos;
}

struct wse_envelope_parser::state {
  json_scan::document doc;
  wse_error parse(std::string_view json, wse_input_padding padding, element& root) {
    return doc.parse(json, padding, root);
  }
};

wse_envelope_parser::wse_envelope_parser() : state_(std::make_unique<state>()) {}
wse_envelope_parser::~wse_envelope_parser() = default;

wse_error wse_envelope_parser::parse(std::string_view message, wse_message& out,
                                     wse_input_padding padding, wse_payload_text payload_text) {
  reset(out);
  const std::string_view json = strip_legacy_prefix(message, out.legacy_prefix_bytes);
  if (json.empty()) return wse_error::empty;
  element root;
  if (const wse_error error = state_->parse(json, padding, root); error != wse_error::none) {
    return error;
  }
  simdjson::dom::object object;
  if (root.get_object().get(object)) return wse_error::not_object;

  bool has_type = false;
  bool has_c = false;
  bool has_id = false;
  size_t index = 0;
  size_t payload_index = 0;
  element payload;
  for (const auto field : object) {
    const std::string_view key = field.key;
    if (key == "t") {
      if (has_type) return wse_error::duplicate_key;
      has_type = true;
      if (field.value.get_string().get(out.type)) return wse_error::type_not_string;
    } else if (key == "p") {
      if (out.has_payload) return wse_error::duplicate_key;
      out.has_payload = true;
      payload = field.value;
      payload_index = index;
    } else if (key == "c") {
      if (has_c) return wse_error::duplicate_key;
      has_c = true;
      out.has_category = !field.value.get_string().get(out.category);
    } else if (key == "id") {
      if (has_id) return wse_error::duplicate_key;
      has_id = true;
      if (field.value.get_string().get(out.id)) out.id = {};
    }
    ++index;
  }
  if (!has_type) return wse_error::missing_type;
  out.kind = wse_kind_of(out.type);
  // The exact text of "p" is found by scanning the raw JSON (the DOM keeps no offsets): always,
  // unless the caller declines it (then only a publish, which needs its message's text, gets it).
  const bool text_needed =
      out.kind == wse_kind::publish || payload_text == wse_payload_text::always;
  if (out.has_payload && text_needed)
    out.payload_json = json_scan::member_value(json, payload_index);

  const bool payload_is_object = out.has_payload && payload.is_object();
  switch (out.kind) {
    case wse_kind::ping:
      if (payload_is_object) read_ping(payload, out);
      break;
    case wse_kind::client_hello:
      if (payload_is_object) read_hello(payload, out);
      break;
    case wse_kind::subscription:
      if (payload_is_object) read_subscription(payload, json, payload_index, out.payload_json, out);
      break;
    case wse_kind::publish:
      if (payload_is_object) read_publish(payload, out.payload_json, out);
      break;
    case wse_kind::application:
    case wse_kind::pong:
      break;
  }
  return wse_error::none;
}

wse_error wse_envelope_parser::check_object(std::string_view json) {
  element root;
  const wse_error error = state_->parse(json, wse_input_padding::none, root);
  if (error != wse_error::none) return error;
  return root.is_object() ? wse_error::none : wse_error::not_object;
}

wse_error wse_envelope_parser::ensure_category(std::string_view publication_json,
                                               std::string& out) {
  element root;
  const wse_error error = state_->parse(publication_json, wse_input_padding::none, root);
  if (error != wse_error::none) return error;
  simdjson::dom::object object;
  if (root.get_object().get(object)) return wse_error::not_object;
  std::string_view type;
  bool seen_type = false;  // the first top-level "t" decides (a non-string one means U)
  size_t members = 0;
  for (const auto field : object) {
    if (field.key == "c") {
      out.append(publication_json);
      return wse_error::none;
    }
    if (field.key == "t" && !seen_type) {
      seen_type = true;
      if (field.value.get_string().get(type)) type = {};
    }
    ++members;
  }
  const size_t brace = json_scan::skip_space(publication_json, 0);
  out.append(publication_json.substr(0, brace + 1));
  out.append("\"c\":\"");
  out.append(category_name(category_of(type)));
  out.append(members == 0 ? "\"" : "\",");
  out.append(publication_json.substr(brace + 1));
  return wse_error::none;
}

}  // namespace wsed::proto
