// tests/unit/ws_feed.hpp: test helpers for proto/ws: a frame builder and a feeder that drives
// ws_frame_parser the way the engine does (keeps the unconsumed tail at need_more and puts it
// in front of the next chunk) and records what came out.
// Owns: nothing. Thread: the test runner. Never used outside the unit tests.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "proto/ws.hpp"

namespace wsed::test {

using bytes = std::vector<uint8_t>;

enum class length_form : uint8_t { minimal, len16, len64 };

// One frame. b0 carries FIN, RSV and the opcode as given. key == nullptr: unmasked.
inline bytes raw_frame(uint8_t b0, const std::string& payload, const uint8_t* key,
                       length_form form = length_form::minimal) {
  bytes out{b0};
  const uint64_t n = payload.size();
  const uint8_t mask = key != nullptr ? 0x80 : 0;
  if (form == length_form::minimal && n < 126) {
    out.push_back(static_cast<uint8_t>(mask | n));
  } else if (form != length_form::len64 && n <= 0xFFFF) {
    out.push_back(mask | 126);
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(n));
  } else {
    out.push_back(mask | 127);
    for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  }
  if (key != nullptr) out.insert(out.end(), key, key + 4);
  for (size_t i = 0; i < payload.size(); ++i)
    out.push_back(static_cast<uint8_t>(payload[i]) ^ (key != nullptr ? key[i % 4] : 0));
  return out;
}

inline const uint8_t default_key[4] = {0x37, 0xFA, 0x21, 0x3D};

// A masked client frame (what the server parses).
inline bytes cframe(proto::ws_opcode op, const std::string& payload, bool fin = true,
                    length_form form = length_form::minimal) {
  return raw_frame(static_cast<uint8_t>((fin ? 0x80 : 0) | static_cast<uint8_t>(op)), payload,
                   default_key, form);
}

inline std::string close_payload(uint16_t code, const std::string& reason = {}) {
  std::string s;
  s += static_cast<char>(code >> 8);
  s += static_cast<char>(code & 0xFF);
  return s + reason;
}

inline bytes cat(std::initializer_list<bytes> parts) {
  bytes out;
  for (const bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// What a stream produced: completed messages and control frames in arrival order ("T:" text,
// "B:" binary, a "Z" before either for a compressed message (RSV1, permessage-deflate), "ping:",
// "pong:", "close:<code>:"), then the error code if any (0: none).
struct ws_record {
  std::vector<std::string> events;
  uint16_t error_code = 0;
  bool message_open = false;  // a message was started but not finished when input ran out
  bool operator==(const ws_record&) const = default;
};

// Printable summary: sizes, and the first bytes with non-ASCII shown as '.'.
inline std::string printable(const std::string& e) {
  std::string s = e.substr(0, 40);
  for (char& c : s)
    if (c < 0x20 || c > 0x7E) c = '.';
  return s + (e.size() > 40 ? "..." : "") + "(" + std::to_string(e.size()) + ")";
}

inline std::string to_string(const ws_record& r) {
  std::string s = "error=" + std::to_string(r.error_code) + " open=" + (r.message_open ? "1" : "0");
  for (const auto& e : r.events) s += " [" + printable(e) + "]";
  return s;
}

// Feeds stream in chunks ending at each cut, like the engine.
inline ws_record feed_chunks(const bytes& stream, const std::vector<size_t>& cuts,
                             proto::ws_role role = proto::ws_role::server,
                             const proto::ws_limits& limits = {}, bool deflate = false) {
  using proto::ws_event_kind;
  proto::ws_frame_parser parser(role);
  parser.allow_compressed(deflate);
  bool compressed = false;
  ws_record rec;
  bytes carry;
  std::string message;
  proto::ws_opcode message_op = proto::ws_opcode::continuation;
  std::vector<size_t> ends = cuts;
  ends.push_back(stream.size());
  size_t start = 0;
  bool done = false;
  for (size_t end : ends) {
    if (done) break;
    bytes buf = carry;  // a fresh buffer each time: the parser unmasks in place
    buf.insert(buf.end(), stream.begin() + start, stream.begin() + end);
    start = end;
    std::span<uint8_t> in(buf);
    while (!done) {
      const proto::ws_event ev = parser.next(in, limits);
      REQUIRE(ev.consumed <= in.size());
      const std::string payload(reinterpret_cast<const char*>(ev.payload.data()),
                                ev.payload.size());
      switch (ev.kind) {
        case ws_event_kind::need_more:
          REQUIRE(ev.consumed == 0);
          REQUIRE(in.size() < proto::ws_carry_bytes_max);
          break;
        case ws_event_kind::data:
          REQUIRE(ev.consumed > 0);
          REQUIRE(ev.message_begin == !rec.message_open);
          if (ev.message_begin) {
            REQUIRE((ev.message_opcode == proto::ws_opcode::text ||
                     ev.message_opcode == proto::ws_opcode::binary));
            message_op = ev.message_opcode;
            compressed = ev.compressed;
            message.clear();
            rec.message_open = true;
          }
          REQUIRE(ev.message_opcode == message_op);
          REQUIRE(ev.compressed == compressed);
          REQUIRE(parser.in_message() == !ev.message_end);
          message += payload;
          if (ev.message_end) {
            rec.events.push_back(std::string(compressed ? "Z" : "") +
                                 (message_op == proto::ws_opcode::text ? "T:" : "B:") + message);
            rec.message_open = false;
          }
          break;
        case ws_event_kind::ping:
          rec.events.push_back("ping:" + payload);
          break;
        case ws_event_kind::pong:
          rec.events.push_back("pong:" + payload);
          break;
        case ws_event_kind::close:
          rec.events.push_back("close:" + std::to_string(ev.close_code) + ":" + payload);
          done = true;  // the engine stops feeding after a close
          break;
        case ws_event_kind::error: {
          REQUIRE(ev.close_code != 0);
          rec.error_code = ev.close_code;
          rec.message_open = false;  // how much of a failed message arrived depends on the split
          REQUIRE(parser.failed());
          const proto::ws_event again = parser.next(in, limits);  // stays failed
          REQUIRE(again.kind == ws_event_kind::error);
          REQUIRE(again.close_code == ev.close_code);
          done = true;
          break;
        }
      }
      if (ev.kind == ws_event_kind::need_more) break;
      in = in.subspan(ev.consumed);
    }
    carry.assign(in.begin(), in.end());
  }
  return rec;
}

// Whole, split once at every offset (or a sample of offsets for long streams), and byte by
// byte: every way must give the same record, which is returned.
inline ws_record feed_all_ways(const bytes& stream, proto::ws_role role = proto::ws_role::server,
                               const proto::ws_limits& limits = {}, bool deflate = false) {
  const ws_record whole = feed_chunks(stream, {}, role, limits, deflate);
  for (size_t at = 0; at <= stream.size(); ++at) {
    if (stream.size() > 2048 && at > 300 && at + 300 < stream.size() && at % 97 != 0) continue;
    const ws_record split = feed_chunks(stream, {at}, role, limits, deflate);
    if (!(split == whole)) {
      INFO("split at " << at << ": " << to_string(split) << " vs whole: " << to_string(whole));
      REQUIRE(split == whole);
    }
  }
  std::vector<size_t> every;
  for (size_t at = 1; at < stream.size(); ++at) every.push_back(at);
  const ws_record bytewise = feed_chunks(stream, every, role, limits, deflate);
  INFO("byte by byte: " << to_string(bytewise) << " vs whole: " << to_string(whole));
  REQUIRE(bytewise == whole);
  return whole;
}

}  // namespace wsed::test
