// tests/fuzz/fuzz_command.cpp: libFuzzer target for the server-side command parser
// (proto/wse_command), the body of POST /api/command and of the Redis <prefix>@node:<instance>
// channel. Properties: nothing crashes or overruns (ASan/UBSan); a refusal always says why; an
// accepted command obeys the documented shape (valid topics, a disconnect code of 1000, 1001 or
// 3000-4999, a reason that fits a close frame, a send's message a JSON object that parses on its
// own); and one parser reused, a fresh parser and a copy of the bytes all give the same answer.
// Checked with abort(), so libFuzzer reports a broken property. Built by tools/fuzz.sh.
#include <simdjson.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "proto/wse_command.hpp"
#include "proto/wse_envelope.hpp"

using namespace wsed::proto;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

struct outcome {
  bool ok = false;
  std::string error;
  wse_command_op op = wse_command_op::send;
  std::string connection_id, message_json, reason;
  uint16_t code = 0;
  std::vector<std::string> topics;
  bool operator==(const outcome&) const = default;
};

outcome run(wse_command_parser& parser, std::string_view text) {
  outcome o;
  wse_command c;
  o.ok = parser.parse(text, c);
  if (!o.ok) {
    o.error = std::string(parser.error());
    return o;
  }
  o.op = c.op;
  o.connection_id = std::string(c.connection_id);
  o.message_json = std::string(c.message_json);
  o.reason = std::string(c.reason);
  o.code = c.code;
  for (auto t : c.topics) o.topics.emplace_back(t);
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static wse_command_parser reused;
  static simdjson::dom::parser json;
  std::string_view input(reinterpret_cast<const char*>(data), size);

  outcome first = run(reused, input);
  if (!first.ok) {
    require(!first.error.empty());
  } else {
    if (first.op == wse_command_op::disconnect)
      require(first.code == 1000 || first.code == 1001 ||
              (first.code >= 3000 && first.code <= 4999));
    require(first.reason.size() <= 123);
    for (const auto& t : first.topics) require(wse_topic_valid(t));
    if (first.op == wse_command_op::send) {
      require(!first.message_json.empty() && first.message_json.front() == '{');
      simdjson::padded_string copy(first.message_json);
      simdjson::dom::element e;
      require(json.parse(copy).get(e) == simdjson::SUCCESS && e.is_object());
    }
  }
  std::string copy(input);
  wse_command_parser fresh;
  require(run(fresh, copy) == first);
  require(run(reused, input) == first);
  return 0;
}
