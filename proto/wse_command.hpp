// proto/wse_command.hpp: a server-side command for one connection, as a backend sends it through
// Redis (channel <prefix>@node:<instance>) or the HTTP API (POST /api/command):
//   {"op":"send","connection_id":"<id>","message":{"t":..,"p":..}}
//   {"op":"disconnect","connection_id":"<id>","code":4000,"reason":"text"}
//   {"op":"subscribe"|"unsubscribe","connection_id":"<id>","topics":["a","b"]}
//
// Owns: one simdjson parser, its padded copy, the topic views and the error text. Thread: the
// owner of the parser. Pure: no I/O, no clock, never throws on input; views point into the
// caller's text or the parser and live until the next parse().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace wsed::proto {

enum class wse_command_op : uint8_t { send, disconnect, subscribe, unsubscribe };

struct wse_command {
  wse_command_op op = wse_command_op::send;
  std::string_view connection_id;
  std::string_view message_json;         // send: the exact raw JSON object text of "message"
  uint16_t code = 1000;                  // disconnect: 1000, 1001 or 3000-4999
  std::string_view reason;               // disconnect: at most 123 bytes (a close frame's room)
  std::vector<std::string_view> topics;  // subscribe / unsubscribe (none: every topic)
};

class wse_command_parser {
 public:
  wse_command_parser();
  ~wse_command_parser();
  wse_command_parser(const wse_command_parser&) = delete;
  wse_command_parser& operator=(const wse_command_parser&) = delete;
  // false: error() says why ("op must be one of send, disconnect, subscribe, unsubscribe",
  // "duplicate field code", ...). Unknown fields are ignored.
  bool parse(std::string_view text, wse_command& out);
  std::string_view error() const;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace wsed::proto
