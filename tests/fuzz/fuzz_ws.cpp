// tests/fuzz/fuzz_ws.cpp: libFuzzer target for proto::ws_frame_parser (server role).
//
// The first input byte picks how the rest is split into receives; the rest is the byte stream.
// The stream is parsed whole and split the way the engine feeds it (unconsumed tail kept and
// put in front of the next receive); both must see the same events, and the parser's contract
// must hold: need_more consumes nothing and leaves less than ws_carry_bytes_max, data events
// consume something, errors repeat. With text_utf8_by_application (WSE mode) the transcript must
// not change when the "application" checks the messages the parser left unchecked (whole ones
// only) and closes 1007 on invalid UTF-8. Built by tools/fuzz.sh with clang -fsanitize=fuzzer.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "proto/ws.hpp"

using namespace wsed::proto;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

// Feeds chunks; returns a transcript of the events.
std::string run(const uint8_t* data, size_t size, size_t chunk, bool utf8_by_application) {
  ws_limits limits;
  limits.text_utf8_by_application = utf8_by_application;
  limits.message_bytes_max = 1 << 16;
  limits.fragments_per_message_max = 64;
  ws_frame_parser parser(ws_role::server);
  std::vector<uint8_t> pending;
  std::string out, message;
  size_t pos = 0;
  bool done = false;
  while (!done && pos < size) {
    size_t n = std::min(chunk, size - pos);
    pending.insert(pending.end(), data + pos, data + pos + n);
    pos += n;
    size_t used = 0;
    for (;;) {
      std::span<uint8_t> in(pending.data() + used, pending.size() - used);
      if (in.empty()) break;
      ws_event ev = parser.next(in, limits);
      require(ev.consumed <= in.size());
      used += ev.consumed;
      if (ev.kind == ws_event_kind::need_more) {
        require(ev.consumed == 0);
        require(in.size() < ws_carry_bytes_max);
        break;
      }
      if (ev.kind == ws_event_kind::data) {
        // Only complete messages go into the transcript: where an error cuts a message, how
        // much of it was delivered before depends on the split (fail fast), by design.
        require(ev.consumed > 0);
        if (ev.utf8_unchecked) {
          require(utf8_by_application && ev.message_begin && ev.message_end &&
                  ev.message_opcode == ws_opcode::text);
          if (!valid_utf8(std::span<const uint8_t>(ev.payload.data(), ev.payload.size()))) {
            out += "E1007";  // what the application answers
            done = true;
            break;
          }
        }
        if (ev.message_begin) message = "[" + std::to_string(int(ev.message_opcode));
        message.append(reinterpret_cast<const char*>(ev.payload.data()), ev.payload.size());
        if (ev.message_end) out += message + "]";
        continue;
      }
      if (ev.kind == ws_event_kind::error) {
        ws_event again = parser.next(in.subspan(ev.consumed), limits);
        require(again.kind == ws_event_kind::error && again.close_code == ev.close_code);
        out += "E" + std::to_string(ev.close_code);
        done = true;
        break;
      }
      out += "C" + std::to_string(int(ev.kind)) + ":" + std::to_string(ev.close_code) + ":";
      out.append(reinterpret_cast<const char*>(ev.payload.data()), ev.payload.size());
      if (ev.kind == ws_event_kind::close) {
        done = true;
        break;
      }
    }
    pending.erase(pending.begin(), pending.begin() + long(used));
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t chunk = size_t(data[0] % 17) + 1;
  const std::vector<uint8_t> input(data + 1, data + size);
  std::string transcripts[4];
  for (int i = 0; i < 4; ++i) {
    std::vector<uint8_t> copy = input;  // the parser unmasks in place
    const size_t n = i % 2 == 0 ? (copy.empty() ? 1 : copy.size()) : chunk;
    transcripts[i] = run(copy.data(), copy.size(), n, i >= 2);
  }
  for (int i = 1; i < 4; ++i) require(transcripts[i] == transcripts[0]);
  return 0;
}
