// proto/wse_command.cpp: the command parser (see wse_command.hpp).
//
// Owns: the simdjson document and the error text. Thread: the parser's owner. The raw text of
// "message" is found by the scanner of wse_json_scan.hpp, as the publish parser does.
#include "proto/wse_command.hpp"

#include <simdjson.h>

#include <iterator>

#include "proto/ws.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_json_scan.hpp"

namespace wsed::proto {

struct wse_command_parser::state {
  json_scan::document doc;
  std::string error;
};

wse_command_parser::wse_command_parser() : state_(std::make_unique<state>()) {}
wse_command_parser::~wse_command_parser() = default;

std::string_view wse_command_parser::error() const {
  return state_->error;
}

bool wse_command_parser::parse(std::string_view text, wse_command& out) {
  out = wse_command{};
  std::string& error = state_->error;
  error.clear();
  auto fail = [&](const char* why) {
    error = why;
    return false;
  };
  simdjson::dom::element root;
  if (state_->doc.parse(text, wse_input_padding::none, root) != wse_error::none)
    return fail("invalid JSON");
  simdjson::dom::object object;
  if (root.get_object().get(object)) return fail("the command must be a JSON object");
  bool seen_op = false, seen_message = false;
  size_t index = 0, message_index = 0;
  static constexpr std::string_view known[] = {"op",   "connection_id", "message",
                                               "code", "reason",        "topics"};
  unsigned seen = 0;  // bit i: known[i] was given (a field named twice is refused)
  for (const auto field : object) {
    const std::string_view key = field.key;
    for (unsigned i = 0; i < std::size(known); ++i) {
      if (key != known[i]) continue;
      if (seen & (1u << i)) {
        error = "duplicate field " + std::string(key);
        return false;
      }
      seen |= 1u << i;
    }
    if (key == "op") {
      std::string_view op;
      if (field.value.get_string().get(op)) return fail("op must be a string");
      seen_op = true;
      if (op == "send") {
        out.op = wse_command_op::send;
      } else if (op == "disconnect") {
        out.op = wse_command_op::disconnect;
      } else if (op == "subscribe") {
        out.op = wse_command_op::subscribe;
      } else if (op == "unsubscribe") {
        out.op = wse_command_op::unsubscribe;
      } else {
        return fail("op must be one of send, disconnect, subscribe, unsubscribe");
      }
    } else if (key == "connection_id") {
      if (field.value.get_string().get(out.connection_id))
        return fail("connection_id must be a string");
    } else if (key == "message") {
      if (!field.value.is_object()) return fail("message must be a JSON object");
      seen_message = true;
      message_index = index;
    } else if (key == "code") {
      int64_t code = 0;
      if (field.value.get_int64().get(code)) return fail("code must be an integer");
      if (!(code == 1000 || code == 1001 || (code >= 3000 && code <= 4999)))
        return fail("code must be 1000, 1001 or 3000-4999");
      out.code = uint16_t(code);
    } else if (key == "reason") {
      if (field.value.get_string().get(out.reason)) return fail("reason must be a string");
      if (out.reason.size() > ws_control_payload_max - 2)  // a close frame's room
        return fail("reason must be at most 123 bytes");
    } else if (key == "topics") {
      simdjson::dom::array topics;
      if (field.value.get_array().get(topics)) return fail("topics must be an array of strings");
      for (auto t : topics) {
        std::string_view topic;
        if (t.get_string().get(topic)) return fail("topics must be an array of strings");
        if (!wse_topic_valid(topic))
          return fail("topics: a topic is 1 to 256 bytes without control characters");
        out.topics.push_back(topic);
      }
    }
    ++index;
  }
  if (!seen_op) return fail("missing op");
  if (out.connection_id.empty()) return fail("missing connection_id");
  if (out.op == wse_command_op::send) {
    if (!seen_message) return fail("send: missing message");
    out.message_json = json_scan::member_value(text, message_index);
  }
  if (out.op == wse_command_op::subscribe && out.topics.empty())
    return fail("subscribe: topics must name at least one topic");
  return true;
}

}  // namespace wsed::proto
