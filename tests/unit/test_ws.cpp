// tests/unit/test_ws.cpp: proto/ws: RFC 6455 frame parsing rules (the ones Autobahn 1-7, 9, 10
// check), limits, chunked delivery, the need_more contract, and the encoder. Every stream is fed
// whole, split at every offset and byte by byte (ws_feed.hpp).
// Owns: nothing. Thread: the test runner. Never depends on the order tests run in.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "proto/ws.hpp"
#include "tests/unit/ws_feed.hpp"

using namespace wsed::proto;
using namespace wsed::test;

namespace {

ws_record expect_events(const bytes& stream, const std::vector<std::string>& events,
                        uint16_t error_code = 0, ws_role role = ws_role::server,
                        const ws_limits& limits = {}) {
  const ws_record r = feed_all_ways(stream, role, limits);
  INFO(to_string(r));
  CHECK(r.events == events);
  CHECK(r.error_code == error_code);
  return r;
}

void expect_error(const bytes& stream, uint16_t code, const ws_limits& limits = {},
                  ws_role role = ws_role::server) {
  expect_events(stream, {}, code, role, limits);
}

ws_event one(ws_frame_parser& p, bytes& buf, const ws_limits& limits = {}) {
  return p.next(std::span<uint8_t>(buf), limits);
}

std::string as_string(std::span<uint8_t> s) {
  return std::string(reinterpret_cast<const char*>(s.data()), s.size());
}

}  // namespace

TEST_CASE("ws: RFC 6455 section 5.7 examples") {
  // A single-frame masked text message (client to server).
  expect_events({0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}, {"T:Hello"});
  // Unmasked, in the client role.
  expect_events({0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}, {"T:Hello"}, 0, ws_role::client);
  // A fragmented unmasked text message.
  expect_events({0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f}, {"T:Hello"}, 0,
                ws_role::client);
  // Unmasked ping, masked pong.
  expect_events({0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}, {"ping:Hello"}, 0, ws_role::client);
  expect_events({0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}, {"pong:Hello"});
  // 256 bytes and 64 KiB binary messages, unmasked.
  const std::string b256(256, '\x5a');
  expect_events(raw_frame(0x82, b256, nullptr), {"B:" + b256}, 0, ws_role::client);
  std::string b64k(65536, '\0');
  for (size_t i = 0; i < b64k.size(); ++i) b64k[i] = static_cast<char>(i * 7);
  CHECK(raw_frame(0x82, b64k, nullptr)[1] == 127);
  expect_events(raw_frame(0x82, b64k, nullptr), {"B:" + b64k}, 0, ws_role::client);
}

TEST_CASE("ws: masked messages of every length class and mask phase") {
  for (size_t n :
       {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 125, 126, 127, 1000, 65535, 65536, 70001}) {
    CAPTURE(n);
    std::string payload(n, 'x');
    for (size_t i = 0; i < n; ++i) payload[i] = static_cast<char>('a' + i % 26);
    expect_events(cframe(ws_opcode::text, payload), {"T:" + payload});
    std::string bin(n, '\0');
    for (size_t i = 0; i < n; ++i) bin[i] = static_cast<char>(i * 31 + 7);
    if (n <= 1000) expect_events(cframe(ws_opcode::binary, bin), {"B:" + bin});
  }
}

TEST_CASE("ws: non-minimal length encodings are accepted") {
  expect_events(cframe(ws_opcode::text, "abc", true, length_form::len16), {"T:abc"});
  expect_events(cframe(ws_opcode::text, "abc", true, length_form::len64), {"T:abc"});
  expect_events(cframe(ws_opcode::binary, std::string(300, 'q'), true, length_form::len64),
                {"B:" + std::string(300, 'q')});
  expect_events(cframe(ws_opcode::ping, "", true, length_form::minimal), {"ping:"});
}

TEST_CASE("ws: empty messages and empty fragments") {
  expect_events(cframe(ws_opcode::text, ""), {"T:"});
  expect_events(cframe(ws_opcode::binary, ""), {"B:"});
  // An empty non-FIN first fragment starts a message.
  expect_events(cat({cframe(ws_opcode::text, "", false), cframe(ws_opcode::continuation, "abc")}),
                {"T:abc"});
  // Empty fragments everywhere (Autobahn 5.x / 6.1.x).
  expect_events(cat({cframe(ws_opcode::text, "", false), cframe(ws_opcode::continuation, "", false),
                     cframe(ws_opcode::continuation, "")}),
                {"T:"});
  expect_events(
      cat({cframe(ws_opcode::binary, "ab", false), cframe(ws_opcode::continuation, "", false),
           cframe(ws_opcode::continuation, "cd")}),
      {"B:abcd"});
  // An open message with no end yet.
  const ws_record open = feed_all_ways(cframe(ws_opcode::text, "abc", false));
  CHECK(open.events.empty());
  CHECK(open.message_open);
}

TEST_CASE("ws: control frames between fragments, several messages in one buffer") {
  expect_events(
      cat({cframe(ws_opcode::text, "fragment1", false), cframe(ws_opcode::ping, "p1"),
           cframe(ws_opcode::continuation, "fragment2", false), cframe(ws_opcode::pong, ""),
           cframe(ws_opcode::continuation, "fragment3"), cframe(ws_opcode::binary, "\x01\x02"),
           cframe(ws_opcode::text, "z"), cframe(ws_opcode::close, close_payload(1000, "bye"))}),
      {"ping:p1", "pong:", "T:fragment1fragment2fragment3", "B:\x01\x02", "T:z", "close:1000:bye"});
  const std::string ping125(125, 'P');
  expect_events(cat({cframe(ws_opcode::binary, "x", false), cframe(ws_opcode::ping, ping125),
                     cframe(ws_opcode::continuation, "y")}),
                {"ping:" + ping125, "B:xy"});
}

TEST_CASE("ws: close frames") {
  expect_events(cframe(ws_opcode::close, ""), {"close:1005:"});
  expect_events(cframe(ws_opcode::close, close_payload(1000)), {"close:1000:"});
  const std::string reason123(123, 'r');
  expect_events(cframe(ws_opcode::close, close_payload(1001, reason123)),
                {"close:1001:" + reason123});
  expect_events(cframe(ws_opcode::close, close_payload(4999, "\xce\xba\xe1\xbd\xb9\xcf\x83")),
                {"close:4999:\xce\xba\xe1\xbd\xb9\xcf\x83"});
  for (uint16_t code : {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                        3000, 3999, 4000, 4999}) {
    CAPTURE(code);
    CHECK(valid_received_close_code(code));
    expect_events(cframe(ws_opcode::close, close_payload(code, "x")),
                  {"close:" + std::to_string(code) + ":x"});
  }
  // Autobahn 7.9.x: invalid codes are protocol errors (1012-1014 are valid: IANA registry).
  for (uint16_t code : {0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535}) {
    CAPTURE(code);
    CHECK_FALSE(valid_received_close_code(code));
    expect_error(cframe(ws_opcode::close, close_payload(code)), 1002);
  }
  // A 1-byte close payload.
  expect_error(cframe(ws_opcode::close, "\x03"), 1002);
  // A reason that is not UTF-8 (Autobahn 7.5.1), and one cut mid-character.
  expect_error(cframe(ws_opcode::close, close_payload(1000,
                                                      "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc"
                                                      "\xce\xb5\xed\xa0\x80\x65\x64\x69\x74")),
               1007);
  expect_error(cframe(ws_opcode::close, close_payload(1000, "ab\xce")), 1007);
  // Close after an unfinished fragment is still a close.
  expect_events(cat({cframe(ws_opcode::text, "a", false), cframe(ws_opcode::close, "")}),
                {"close:1005:"});
}

TEST_CASE("ws: masking rules by role") {
  expect_error(raw_frame(0x81, "Hello", nullptr), 1002);  // unmasked to the server
  expect_error(raw_frame(0x89, "", nullptr), 1002);
  expect_error(cframe(ws_opcode::text, "Hello"), 1002, {}, ws_role::client);  // masked to a client
}

TEST_CASE("ws: reserved bits and opcodes") {
  for (uint8_t rsv : {0x40, 0x20, 0x10, 0x70}) {
    CAPTURE(rsv);
    expect_error(raw_frame(static_cast<uint8_t>(0x81 | rsv), "Hello", default_key), 1002);
    expect_error(raw_frame(static_cast<uint8_t>(0x89 | rsv), "", default_key), 1002);
  }
  for (uint8_t op : {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF}) {
    CAPTURE(op);
    expect_error(raw_frame(static_cast<uint8_t>(0x80 | op), "", default_key), 1002);
    expect_error(raw_frame(static_cast<uint8_t>(0x80 | op), "reserved", default_key), 1002);
    // After a valid message, the earlier message still counts.
    expect_events(cat({cframe(ws_opcode::text, "Hello"),
                       raw_frame(static_cast<uint8_t>(0x80 | op), "", default_key),
                       cframe(ws_opcode::ping, "")}),
                  {"T:Hello"}, 1002);
  }
}

TEST_CASE("ws: control frame rules") {
  expect_error(cframe(ws_opcode::ping, std::string(126, 'x')), 1002);
  expect_error(cframe(ws_opcode::ping, std::string(126, 'x'), true, length_form::len16), 1002);
  expect_error(cframe(ws_opcode::pong, "abc", true, length_form::len16), 1002);  // > 125 form
  expect_error(cframe(ws_opcode::ping, "abc", false), 1002);                     // FIN = 0
  expect_error(cframe(ws_opcode::close, close_payload(1000), false), 1002);
  expect_error(cframe(ws_opcode::close, std::string(126, 'x')), 1002);
}

TEST_CASE("ws: fragmentation rules") {
  expect_error(cframe(ws_opcode::continuation, "abc"), 1002);
  expect_error(cframe(ws_opcode::continuation, "abc", false), 1002);
  expect_error(cat({cframe(ws_opcode::text, "a", false), cframe(ws_opcode::text, "b")}), 1002);
  expect_error(cat({cframe(ws_opcode::text, "a", false), cframe(ws_opcode::binary, "b")}), 1002);
  expect_error(cat({cframe(ws_opcode::binary, "a", false), cframe(ws_opcode::text, "b", false)}),
               1002);
  // A finished message does not leave one open.
  expect_events(cat({cframe(ws_opcode::text, "a"), cframe(ws_opcode::continuation, "b")}), {"T:a"},
                1002);
}

TEST_CASE("ws: 64-bit length with the top bit set") {
  bytes f{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
  expect_error(f, 1002);
  ws_limits huge;
  huge.message_bytes_max = ~uint64_t{0};
  expect_error(f, 1002, huge);
}

TEST_CASE("ws: message size limit is checked at each frame header") {
  ws_limits limits;
  limits.message_bytes_max = 100;
  expect_events(cframe(ws_opcode::binary, std::string(100, 'a')), {"B:" + std::string(100, 'a')}, 0,
                ws_role::server, limits);
  expect_error(cframe(ws_opcode::binary, std::string(101, 'a')), 1009, limits);
  expect_events(cat({cframe(ws_opcode::text, std::string(60, 'a'), false),
                     cframe(ws_opcode::continuation, std::string(40, 'b'))}),
                {"T:" + std::string(60, 'a') + std::string(40, 'b')}, 0, ws_role::server, limits);
  expect_error(cat({cframe(ws_opcode::text, std::string(60, 'a'), false),
                    cframe(ws_opcode::continuation, std::string(41, 'b'))}),
               1009, limits);
  // The count restarts with each message.
  expect_events(cat({cframe(ws_opcode::text, std::string(100, 'a')),
                     cframe(ws_opcode::text, std::string(100, 'b'))}),
                {"T:" + std::string(100, 'a'), "T:" + std::string(100, 'b')}, 0, ws_role::server,
                limits);
  // Control frames do not count.
  expect_events(
      cat({cframe(ws_opcode::text, std::string(100, 'a'), false),
           cframe(ws_opcode::ping, std::string(50, 'p')), cframe(ws_opcode::continuation, "")}),
      {"ping:" + std::string(50, 'p'), "T:" + std::string(100, 'a')}, 0, ws_role::server, limits);

  // The error comes at the header, before any payload: a 1 MiB + 1 frame's header alone.
  ws_frame_parser p;
  bytes header = cframe(ws_opcode::binary, std::string((1u << 20) + 1, 'z'));
  header.resize(14);
  const ws_event ev = one(p, header);
  CHECK(ev.kind == ws_event_kind::error);
  CHECK(ev.close_code == 1009);
  // The header up to the length is enough (no mask key yet).
  ws_frame_parser p2;
  bytes partial(header.begin(), header.begin() + 10);
  CHECK(one(p2, partial).close_code == 1009);
}

TEST_CASE("ws: fragments per message limit") {
  ws_limits limits;
  limits.fragments_per_message_max = 3;
  const bytes three =
      cat({cframe(ws_opcode::text, "a", false), cframe(ws_opcode::continuation, "b", false),
           cframe(ws_opcode::continuation, "c")});
  expect_events(cat({three, three}), {"T:abc", "T:abc"}, 0, ws_role::server, limits);
  expect_error(
      cat({cframe(ws_opcode::text, "a", false), cframe(ws_opcode::continuation, "b", false),
           cframe(ws_opcode::continuation, "c", false), cframe(ws_opcode::continuation, "d")}),
      1009, limits);
  // Empty fragments count too.
  expect_error(
      cat({cframe(ws_opcode::binary, "", false), cframe(ws_opcode::continuation, "", false),
           cframe(ws_opcode::continuation, "", false), cframe(ws_opcode::continuation, "")}),
      1009, limits);
}

TEST_CASE("ws: text messages are UTF-8 checked, fail fast") {
  expect_events(cframe(ws_opcode::text, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"),
                {"T:\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"});
  // A character split across fragments is fine (Autobahn 6.2.x).
  expect_events(cat({cframe(ws_opcode::text, "\xf0\x9f", false),
                     cframe(ws_opcode::continuation, "\x98", false),
                     cframe(ws_opcode::continuation, "\x80!")}),
                {"T:\xf0\x9f\x98\x80!"});
  expect_error(cframe(ws_opcode::text, "ab\xff"), 1007);
  expect_error(cframe(ws_opcode::text, "\xed\xa0\x80"), 1007);  // surrogate
  expect_error(cframe(ws_opcode::text, "\xf4\x90\x80\x80"), 1007);
  expect_error(cframe(ws_opcode::text, "\xc0\xaf"), 1007);
  // Valid so far but cut at the end of the message.
  expect_error(cframe(ws_opcode::text, "ab\xe2\x82"), 1007);
  expect_error(cat({cframe(ws_opcode::text, "ab\xe2", false), cframe(ws_opcode::continuation, "")}),
               1007);
  // Binary is never checked.
  expect_events(cframe(ws_opcode::binary, "\xff\xfe"), {"B:\xff\xfe"});
  // Text in the close frame's place after a bad fragment: the error is what counts.
  expect_error(cat({cframe(ws_opcode::text, "\xce\xba\xed\xa0", false),
                    cframe(ws_opcode::continuation, "ok")}),
               1007);

  // Fail fast: the error comes with the bad byte, long before the frame's end (Autobahn 6.4.x).
  std::string payload(1000, 'a');
  payload[10] = '\xf4';
  payload[11] = '\x90';
  bytes f = cframe(ws_opcode::text, payload);
  const size_t header = f.size() - payload.size();
  ws_frame_parser p;
  bytes first(f.begin(), f.begin() + header + 11);  // up to and including 0xF4
  const ws_event ok = one(p, first);
  CHECK(ok.kind == ws_event_kind::data);
  CHECK(ok.payload.size() == 11);
  bytes second(f.begin() + header + 11, f.begin() + header + 12);  // 0x90
  const ws_event bad = one(p, second);
  CHECK(bad.kind == ws_event_kind::error);
  CHECK(bad.close_code == 1007);
}

TEST_CASE("ws: payload arrives in chunks; mask phase carries over") {
  const std::string payload = "The quick brown fox jumps over the lazy dog";
  bytes f = cframe(ws_opcode::binary, payload);
  ws_frame_parser p;
  // Header alone: need_more, nothing consumed, nothing changed.
  bytes h(f.begin(), f.begin() + 6);
  ws_event ev = one(p, h);
  CHECK(ev.kind == ws_event_kind::need_more);
  CHECK(ev.consumed == 0);
  CHECK_FALSE(p.in_message());
  // Header + 3 bytes: a first chunk.
  bytes c1(f.begin(), f.begin() + 9);
  ev = one(p, c1);
  CHECK(ev.kind == ws_event_kind::data);
  CHECK(ev.message_begin);
  CHECK_FALSE(ev.message_end);
  CHECK(ev.message_opcode == ws_opcode::binary);
  CHECK(ev.consumed == 9);
  CHECK(as_string(ev.payload) == "The");
  CHECK(ev.payload.data() == c1.data() + 6);  // in place
  CHECK(p.in_message());
  CHECK(p.message_bytes() == 3);
  // Then 5 more, then the rest.
  bytes c2(f.begin() + 9, f.begin() + 14);
  ev = one(p, c2);
  CHECK(ev.kind == ws_event_kind::data);
  CHECK_FALSE(ev.message_begin);
  CHECK_FALSE(ev.message_end);
  CHECK(as_string(ev.payload) == " quic");
  bytes empty;
  CHECK(one(p, empty).kind == ws_event_kind::need_more);
  bytes c3(f.begin() + 14, f.end());
  c3.push_back(0x89);  // the start of the next frame stays unconsumed
  ev = one(p, c3);
  CHECK(ev.kind == ws_event_kind::data);
  CHECK(ev.message_end);
  CHECK(ev.consumed == c3.size() - 1);
  CHECK(as_string(ev.payload) == payload.substr(8));
  CHECK_FALSE(p.in_message());
  CHECK(p.message_bytes() == 0);
  std::span<uint8_t> rest = std::span<uint8_t>(c3).subspan(ev.consumed);
  ev = p.next(rest, {});
  CHECK(ev.kind == ws_event_kind::need_more);
  CHECK(ev.consumed == 0);
}

TEST_CASE("ws: an incomplete control frame is left untouched") {
  bytes f = cframe(ws_opcode::ping, "hello ping");
  bytes partial(f.begin(), f.end() - 1);
  const bytes before = partial;
  ws_frame_parser p;
  const ws_event ev = one(p, partial);
  CHECK(ev.kind == ws_event_kind::need_more);
  CHECK(ev.consumed == 0);
  CHECK(partial == before);  // still masked
  const ws_event whole = one(p, f);
  CHECK(whole.kind == ws_event_kind::ping);
  CHECK(whole.consumed == f.size());
  CHECK(as_string(whole.payload) == "hello ping");
}

TEST_CASE("ws: a failed parser stays failed; reset clears it") {
  ws_frame_parser p;
  bytes bad = raw_frame(0x81, "x", nullptr);
  CHECK(one(p, bad).close_code == 1002);
  CHECK(p.failed());
  bytes good = cframe(ws_opcode::text, "ok");
  const ws_event again = one(p, good);
  CHECK(again.kind == ws_event_kind::error);
  CHECK(again.close_code == 1002);
  CHECK(again.consumed == 0);
  p.reset();
  CHECK_FALSE(p.failed());
  const ws_event ev = one(p, good);
  CHECK(ev.kind == ws_event_kind::data);
  CHECK(as_string(ev.payload) == "ok");

  ws_frame_parser q;
  bytes bad_text = cframe(ws_opcode::text, "\xff");
  CHECK(one(q, bad_text).close_code == 1007);
  bytes more = cframe(ws_opcode::text, "ok");
  CHECK(one(q, more).close_code == 1007);
  ws_limits small;
  small.message_bytes_max = 1;
  ws_frame_parser r;
  bytes big = cframe(ws_opcode::text, "ok");
  CHECK(one(r, big, small).close_code == 1009);
  CHECK(one(r, big, small).close_code == 1009);
}

TEST_CASE("ws: encoder round-trips through the parser") {
  uint8_t header[ws_header_bytes_max];
  CHECK(encode_frame_header(header, ws_opcode::text, 0) == 2);
  CHECK(header[0] == 0x81);
  CHECK(header[1] == 0x00);
  CHECK(encode_frame_header(header, ws_opcode::binary, 125, false) == 2);
  CHECK(header[0] == 0x02);
  CHECK(header[1] == 125);
  CHECK(encode_frame_header(header, ws_opcode::binary, 126) == 4);
  CHECK(header[1] == 126);
  CHECK(header[2] == 0);
  CHECK(header[3] == 126);
  CHECK(encode_frame_header(header, ws_opcode::binary, 65535) == 4);
  CHECK(header[2] == 0xFF);
  CHECK(header[3] == 0xFF);
  CHECK(encode_frame_header(header, ws_opcode::binary, 65536) == 10);
  CHECK(header[1] == 127);
  CHECK(bytes(header + 2, header + 10) == bytes{0, 0, 0, 0, 0, 1, 0, 0});
  CHECK(encode_frame_header(header, ws_opcode::binary, 0x0102030405060708ull) == 10);
  CHECK(bytes(header + 2, header + 10) == bytes{1, 2, 3, 4, 5, 6, 7, 8});
  const uint8_t key[4] = {1, 2, 3, 4};
  CHECK(encode_frame_header(header, ws_opcode::ping, 5, true, key) == 6);
  CHECK(header[0] == 0x89);
  CHECK(header[1] == 0x85);
  CHECK(bytes(header + 2, header + 6) == bytes{1, 2, 3, 4});
  CHECK(encode_frame_header(header, ws_opcode::binary, 70000, true, key) == 14);
  CHECK(frame_header_bytes(0) == 2);
  CHECK(frame_header_bytes(125) == 2);
  CHECK(frame_header_bytes(126) == 4);
  CHECK(frame_header_bytes(65535) == 4);
  CHECK(frame_header_bytes(65536) == 10);

  // Masked client frames, as tools/ would build them, parsed by the server role; unmasked
  // server frames parsed by the client role.
  for (size_t n : {0, 1, 5, 125, 126, 1000, 65535, 65536}) {
    CAPTURE(n);
    std::string payload(n, '\0');
    for (size_t i = 0; i < n; ++i) payload[i] = static_cast<char>('A' + i % 50);
    const uint8_t k[4] = {0xde, 0xad, 0xbe, 0xef};
    bytes f(ws_header_bytes_max + n);
    const size_t hl = encode_frame_header(f.data(), ws_opcode::text, n, true, k);
    std::memcpy(f.data() + hl, payload.data(), n);
    mask_bytes(f.data() + hl, n, k);
    f.resize(hl + n);
    CHECK(feed_chunks(f, {}).events == std::vector<std::string>{"T:" + payload});
    bytes s(ws_header_bytes_max + n);
    const size_t sl = encode_frame_header(s.data(), ws_opcode::binary, n);
    CHECK(sl == frame_header_bytes(n));
    std::memcpy(s.data() + sl, payload.data(), n);
    s.resize(sl + n);
    CHECK(feed_chunks(s, {}, ws_role::client).events == std::vector<std::string>{"B:" + payload});
  }
}

TEST_CASE("ws: mask_bytes matches the byte-wise definition at every offset and length") {
  const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
  for (size_t offset = 0; offset < 4; ++offset)
    for (size_t n = 0; n < 40; ++n) {
      bytes data(n);
      for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 13 + 1);
      bytes expect = data;
      for (size_t i = 0; i < n; ++i) expect[i] ^= key[(offset + i) % 4];
      mask_bytes(data.data(), n, key, offset);
      CHECK(data == expect);
    }
}

TEST_CASE("ws: close payload encoding") {
  uint8_t out[ws_control_payload_max];
  CHECK(encode_close_payload(out, 1000) == 2);
  CHECK(out[0] == 0x03);
  CHECK(out[1] == 0xE8);
  CHECK(encode_close_payload(out, 4408, "idle") == 6);
  CHECK(out[0] == 0x11);
  CHECK(out[1] == 0x38);
  CHECK(std::string(reinterpret_cast<char*>(out + 2), 4) == "idle");
  CHECK(encode_close_payload(out, close_code::no_status, "x") == 0);  // 1005 is never sent
  CHECK(encode_close_payload(out, 1009, std::string(200, 'a')) == 125);
  CHECK(encode_close_payload(out, 1009, std::string(123, 'a')) == 125);
  // A 2-byte character straddling byte 123 is dropped whole.
  const std::string straddle = std::string(122, 'a') + "\xc3\xa9" + "tail";
  CHECK(encode_close_payload(out, 1000, straddle) == 2 + 122);
  // A 4-byte character ending exactly at byte 123 is kept.
  const std::string fits = std::string(119, 'a') + "\xf0\x9f\x98\x80" + "tail";
  CHECK(encode_close_payload(out, 1000, fits) == 125);
  // A 4-byte character starting at 121: cut to 120.
  const std::string cut = std::string(120, 'a') + "\xf0\x9f\x98\x80";
  const size_t n = encode_close_payload(out, 1000, cut);
  CHECK(n == 122);
  CHECK(valid_utf8(std::span<const uint8_t>(out + 2, n - 2)));
  // And the parser accepts what the encoder made.
  bytes frame(2 + 4 + 125);
  const uint8_t key[4] = {9, 8, 7, 6};
  const size_t m = encode_close_payload(out, 1000, straddle);
  const size_t hl = encode_frame_header(frame.data(), ws_opcode::close, m, true, key);
  std::memcpy(frame.data() + hl, out, m);
  mask_bytes(frame.data() + hl, m, key);
  frame.resize(hl + m);
  CHECK(feed_chunks(frame, {}).events ==
        std::vector<std::string>{"close:1000:" + std::string(122, 'a')});
}

TEST_CASE("ws: parser state stays small") {
  CHECK(sizeof(ws_frame_parser) <= 32);
}
