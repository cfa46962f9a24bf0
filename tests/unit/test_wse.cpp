// tests/unit/test_wse.cpp: proto/wse_*: the inbound envelope (classification, legacy prefixes,
// malformed input), categories, the outbound envelopes byte for byte, JSON escaping, UUIDv7,
// RFC 3339, and the M: (msgpack) and C: (zlib) formats with their bombs.
// Owns: nothing. Thread: the test runner. Never depends on the order tests run in.
#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "proto/wse_builder.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_formats.hpp"

using namespace wsed::proto;

namespace {

std::span<const uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

wse_error parse_both_ways(wse_envelope_parser& parser, std::string_view text, wse_message& out) {
  // In place (with padding after the copy) and copied: both must agree.
  std::string padded(text);
  padded.append(wse_json_padding_bytes, '\0');
  const wse_error in_place =
      parser.parse(std::string_view(padded.data(), text.size()), out, wse_input_padding::padded);
  const wse_error copied = parser.parse(text, out, wse_input_padding::none);
  CHECK(in_place == copied);
  return copied;
}

// Joins pieces into one string (not "x" + std::string: GCC 12 warns -Wrestrict on that falsely).
std::string concat(std::initializer_list<std::string_view> pieces) {
  std::string out;
  for (std::string_view piece : pieces) out.append(piece);
  return out;
}

std::string nested_msgpack_arrays(size_t depth) {
  std::string m(depth, '\x91');  // fixarray of one element
  m.push_back('\x01');
  return m;
}

}  // namespace

TEST_CASE("wse: category_of") {
  CHECK(category_of("price_snapshot") == wse_category::snapshot);
  CHECK(category_of("snapshot_orders") == wse_category::snapshot);
  CHECK(category_of("snapshot_complete") == wse_category::snapshot);  // snapshot rule first
  for (const char* t :
       {"server_ready", "server_hello", "client_hello_ack", "connection_state_change",
        "subscription_update", "error", "pong", "PONG"}) {
    CAPTURE(t);
    CHECK(category_of(t) == wse_category::wse);
  }
  CHECK(category_of("price_update") == wse_category::user);
  CHECK(category_of("snapshot") == wse_category::user);
  CHECK(category_of("Pong") == wse_category::user);
  CHECK(category_of("") == wse_category::user);
  CHECK(category_name(wse_category::wse) == "WSE");
  CHECK(category_name(wse_category::user) == "U");
  CHECK(category_name(wse_category::snapshot) == "S");
}

TEST_CASE("wse: application message, payload span, id, category") {
  wse_envelope_parser parser;
  wse_message m;
  const std::string text =
      R"({"c":"U","t":"chat","p": {"text":"hi \"there\"","n":[1,2,{"t":"x"}]} ,"id":"abc","v":1})";
  REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
  CHECK(m.kind == wse_kind::application);
  CHECK(m.type == "chat");
  CHECK(m.has_category);
  CHECK(m.category == "U");
  CHECK(m.id == "abc");
  CHECK(m.has_payload);
  CHECK(m.payload_json == R"({"text":"hi \"there\"","n":[1,2,{"t":"x"}]})");
  CHECK(m.legacy_prefix_bytes == 0);

  REQUIRE(parse_both_ways(parser, R"({"t":"a\u0062c","p":17})", m) == wse_error::none);
  CHECK(m.type == "abc");
  CHECK(!m.has_category);
  CHECK(m.payload_json == "17");
  REQUIRE(parse_both_ways(parser, R"({"p":"x,}]","t":"s"})", m) == wse_error::none);
  CHECK(m.payload_json == R"("x,}]")");
  REQUIRE(parse_both_ways(parser, R"({"t":"s"})", m) == wse_error::none);
  CHECK(!m.has_payload);
  CHECK(m.payload_json.empty());
}

TEST_CASE("wse: legacy prefixes") {
  wse_envelope_parser parser;
  wse_message m;
  REQUIRE(parse_both_ways(parser, R"(WSE{"t":"x","p":{}})", m) == wse_error::none);
  CHECK(m.legacy_prefix_bytes == 3);
  CHECK(m.type == "x");
  CHECK(m.payload_json == "{}");
  REQUIRE(parse_both_ways(parser, R"(U{"t":"y"})", m) == wse_error::none);
  CHECK(m.legacy_prefix_bytes == 1);
  CHECK(m.type == "y");
  REQUIRE(parse_both_ways(parser, R"(S{"t":"z_snapshot"})", m) == wse_error::none);
  CHECK(m.legacy_prefix_bytes == 1);
  CHECK(parse_both_ways(parser, R"(X{"t":"y"})", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, "WSE", m) == wse_error::malformed_json);
}

TEST_CASE("wse: ping timestamps, pong, client_hello") {
  wse_envelope_parser parser;
  wse_message m;
  REQUIRE(parse_both_ways(parser, R"({"c":"WSE","t":"ping","p":{"timestamp":1700000000123},"v":1})",
                          m) == wse_error::none);
  CHECK(m.kind == wse_kind::ping);
  CHECK(m.client_timestamp_ms == 1700000000123);
  REQUIRE(parse_both_ways(parser, R"({"p":{"client_timestamp":1700000000456},"t":"ping"})", m) ==
          wse_error::none);
  CHECK(m.kind == wse_kind::ping);
  CHECK(m.client_timestamp_ms == 1700000000456);
  REQUIRE(parse_both_ways(parser, R"({"t":"ping","p":{"client_timestamp":1700000000456.7}})", m) ==
          wse_error::none);
  CHECK(m.client_timestamp_ms == 1700000000456);
  REQUIRE(parse_both_ways(parser, R"({"t":"ping"})", m) == wse_error::none);
  CHECK(m.client_timestamp_ms == 0);
  REQUIRE(parse_both_ways(parser, R"({"t":"ping","p":{"timestamp":"soon"}})", m) ==
          wse_error::none);
  CHECK(m.client_timestamp_ms == 0);
  REQUIRE(parse_both_ways(parser, R"({"t":"ping","p":{"x":{"timestamp":5}}})", m) ==
          wse_error::none);
  CHECK(m.client_timestamp_ms == 0);

  REQUIRE(parse_both_ways(parser, R"({"t":"pong"})", m) == wse_error::none);
  CHECK(m.kind == wse_kind::pong);
  REQUIRE(parse_both_ways(parser, R"({"t":"PONG","p":{}})", m) == wse_error::none);
  CHECK(m.kind == wse_kind::pong);

  REQUIRE(parse_both_ways(
              parser,
              R"({"t":"client_hello","p":{"client_version":"ts-2.4.0","protocol_version":2}})",
              m) == wse_error::none);
  CHECK(m.kind == wse_kind::client_hello);
  CHECK(m.hello.protocol_version == 2);
  CHECK(m.hello.client_version == "ts-2.4.0");
  REQUIRE(parse_both_ways(parser, R"({"t":"client_hello"})", m) == wse_error::none);
  CHECK(m.hello.protocol_version == 0);
  CHECK(m.hello.client_version.empty());
}

TEST_CASE("wse: subscription requests") {
  wse_envelope_parser parser;
  wse_message m;
  REQUIRE(
      parse_both_ways(
          parser,
          R"({"t":"subscription_update","p":{"action":"subscribe","topics":["a","b.*","bad\u0001","",  "x\ty"]}})",
          m) == wse_error::none);
  CHECK(m.kind == wse_kind::subscription);
  CHECK(m.subscription.action == wse_subscription_action::subscribe);
  CHECK(m.subscription.action_name == "subscribe");
  const auto topics = m.subscription.list();
  REQUIRE(topics.size() == 5);
  CHECK(topics[0].name == "a");
  CHECK(topics[0].valid);
  CHECK(topics[1].name == "b.*");
  CHECK(topics[1].valid);
  CHECK(topics[2].name == "bad\x01");
  CHECK(!topics[2].valid);
  CHECK(!topics[3].valid);
  CHECK(!topics[4].valid);

  REQUIRE(parse_both_ways(parser,
                          R"({"t":"subscription","p":{"action":"unsubscribe","topics":[]}})",
                          m) == wse_error::none);
  CHECK(m.subscription.action == wse_subscription_action::unsubscribe);
  CHECK(m.subscription.topic_count == 0);
  CHECK(m.subscription.action_valid);
  CHECK(m.subscription.topics_is_array);
  // A bad shape is not a parse error (the engine answers it with the reply shape): the fields
  // say what was wrong (test_pubsub.cpp covers every shape).
  REQUIRE(parse_both_ways(parser, R"({"t":"subscription","p":{"action":"drop","topics":[]}})", m) ==
          wse_error::none);
  CHECK(!m.subscription.action_valid);
  CHECK(m.subscription.action_name == "drop");
  REQUIRE(parse_both_ways(parser, R"({"t":"subscription","p":{"action":"subscribe"}})", m) ==
          wse_error::none);
  CHECK(m.subscription.action_valid);
  CHECK(!m.subscription.topics_is_array);
  REQUIRE(parse_both_ways(parser, R"({"t":"subscription","p":{"action":"subscribe","topics":[1]}})",
                          m) == wse_error::none);
  REQUIRE(m.subscription.topic_count == 1);
  CHECK(!m.subscription.topics[0].valid);
  REQUIRE(parse_both_ways(parser, R"({"t":"subscription"})", m) == wse_error::none);
  CHECK(!m.subscription.action_valid);
  CHECK(!m.subscription.topics_is_array);
  std::string many = R"({"t":"subscription","p":{"action":"subscribe","topics":[)";
  for (size_t i = 0; i <= wse_subscription_topics_max; ++i)
    many += (i ? ",\"t" : "\"t") + std::to_string(i) + "\"";
  many += "]}}";
  REQUIRE(parse_both_ways(parser, many, m) == wse_error::none);
  CHECK(m.subscription.topic_count == wse_subscription_topics_max);
  CHECK(m.subscription.topics_over_max == 1);
}

TEST_CASE("wse: malformed inbound messages are error values") {
  wse_envelope_parser parser;
  wse_message m;
  CHECK(parse_both_ways(parser, "", m) == wse_error::empty);
  CHECK(parse_both_ways(parser, "{", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, R"({"t":"x",})", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, R"({"t":"x"} {})", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, R"({"t":"x","p":{"a":tru}})", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, "{\"t\":\"\xff\"}", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, "{\"t\":\"a\nb\"}", m) == wse_error::malformed_json);
  CHECK(parse_both_ways(parser, R"(["t","x"])", m) == wse_error::not_object);
  CHECK(parse_both_ways(parser, R"("t")", m) == wse_error::not_object);
  CHECK(parse_both_ways(parser, R"({"p":{}})", m) == wse_error::missing_type);
  CHECK(parse_both_ways(parser, R"({"p":{"t":"nested"}})", m) == wse_error::missing_type);
  CHECK(parse_both_ways(parser, R"({"t":5})", m) == wse_error::type_not_string);
  CHECK(parse_both_ways(parser, R"({"t":null})", m) == wse_error::type_not_string);
  CHECK(parse_both_ways(parser, R"({"t":"a","t":"b"})", m) == wse_error::duplicate_key);
  CHECK(parse_both_ways(parser, R"({"t":"a","p":1,"p":2})", m) == wse_error::duplicate_key);
  std::string deep = R"({"t":"x","p":)";
  deep += std::string(70, '[') + std::string(70, ']') + "}";
  CHECK(parse_both_ways(parser, deep, m) == wse_error::too_deep);
  // The parser is reusable after errors.
  CHECK(parse_both_ways(parser, R"({"t":"ok"})", m) == wse_error::none);
  CHECK(m.type == "ok");
}

TEST_CASE("wse: ensure_category inserts a top-level c only") {
  wse_envelope_parser parser;
  std::string out;
  REQUIRE(parser.ensure_category(R"({"t":"price_update","p":{"x":1}})", out) == wse_error::none);
  CHECK(out == R"({"c":"U","t":"price_update","p":{"x":1}})");
  out.clear();
  // A nested "t" or "c" does not count (PROTOCOL fix).
  REQUIRE(parser.ensure_category(R"({"p":{"t":"error","c":"WSE"},"t":"book_snapshot"})", out) ==
          wse_error::none);
  CHECK(out == R"({"c":"S","p":{"t":"error","c":"WSE"},"t":"book_snapshot"})");
  out.clear();
  REQUIRE(parser.ensure_category(R"( {"t":"x","c":"S"})", out) == wse_error::none);
  CHECK(out == R"( {"t":"x","c":"S"})");
  out.clear();
  REQUIRE(parser.ensure_category("{}", out) == wse_error::none);
  CHECK(out == R"({"c":"U"})");
  out.clear();
  REQUIRE(parser.ensure_category(R"({"t":"error"})", out) == wse_error::none);
  CHECK(out == R"({"c":"WSE","t":"error"})");
  CHECK(parser.ensure_category("[1]", out) == wse_error::not_object);
  CHECK(parser.ensure_category("{", out) == wse_error::malformed_json);
}

TEST_CASE("wse: JSON string escaping") {
  std::string out;
  for (int ch = 0; ch < 0x20; ++ch) {
    out.clear();
    wse_append_json_string(out, std::string(1, static_cast<char>(ch)));
    static constexpr char hex[] = "0123456789abcdef";
    const std::string expected = std::string("\"\\u00") + hex[ch >> 4] + hex[ch & 15] + "\"";
    CHECK(out == expected);
  }
  out.clear();
  wse_append_json_string(out, "a\"b\\c/d\x7f");
  CHECK(out == "\"a\\\"b\\\\c/d\x7f\"");
  out.clear();
  wse_append_json_string(out, "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");  // é € 😀
  CHECK(out == "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"");
  out.clear();
  // Invalid UTF-8: lone continuation, truncated sequence, overlong, surrogate, > U+10FFFF.
  wse_append_json_string(out, "\x80|\xe2\x82|\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80");
  CHECK(out ==
        "\"\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|"
        "\\ufffd\\ufffd\\ufffd\\ufffd\"");
}

TEST_CASE("wse: JSON string escaping finds a special byte at any offset of a long string") {
  // The escaper skips plain ASCII 8 bytes at a time: each special byte, and a multi-byte UTF-8
  // character, at every offset of a 40-byte string (and across an 8-byte boundary).
  struct special {
    std::string in, escaped;
  };
  const special specials[] = {
      {"\x01", "\\u0001"}, {"\x1f", "\\u001f"},      {"\"", "\\\""},
      {"\\", "\\\\"},      {"\x7f", "\x7f"},         {" ", " "},
      {"\x80", "\\ufffd"}, {"\xc3\xa9", "\xc3\xa9"}, {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"}};
  std::string out;
  for (const special& sp : specials) {
    for (size_t pos = 0; pos + sp.in.size() <= 40; ++pos) {
      const std::string before(pos, 'a'), after(40 - pos - sp.in.size(), 'b');
      out.clear();
      wse_append_json_string(out, before + sp.in + after);
      CHECK(out == "\"" + before + sp.escaped + after + "\"");
    }
  }
}

TEST_CASE("wse: RFC 3339 timestamps") {
  CHECK(wse_timestamp(0) == "1970-01-01T00:00:00.000Z");
  CHECK(wse_timestamp(1) == "1970-01-01T00:00:00.001Z");
  CHECK(wse_timestamp(-1) == "1969-12-31T23:59:59.999Z");
  CHECK(wse_timestamp(1795461491123) == "2026-11-23T19:18:11.123Z");
  CHECK(wse_timestamp(951782400000) == "2000-02-29T00:00:00.000Z");  // leap (400)
  CHECK(wse_timestamp(951868800000) == "2000-03-01T00:00:00.000Z");
  CHECK(wse_timestamp(1709164800000) == "2024-02-29T00:00:00.000Z");  // leap (4)
  CHECK(wse_timestamp(1735603200000) == "2024-12-31T00:00:00.000Z");  // day 366
  CHECK(wse_timestamp(2147483647999) == "2038-01-19T03:14:07.999Z");  // int32 seconds end
  CHECK(wse_timestamp(2147483648000) == "2038-01-19T03:14:08.000Z");
  CHECK(wse_timestamp(4107542399999) == "2100-02-28T23:59:59.999Z");  // 2100 is not leap
  CHECK(wse_timestamp(4107542400000) == "2100-03-01T00:00:00.000Z");
  CHECK(wse_timestamp(253402300799999) == "9999-12-31T23:59:59.999Z");
  CHECK(wse_timestamp(INT64_MAX) == "9999-12-31T23:59:59.999Z");  // clamped
  CHECK(wse_timestamp(INT64_MIN) == "0000-01-01T00:00:00.000Z");
}

TEST_CASE("wse: UUIDv7 layout") {
  const std::array<uint8_t, 10> random = {0xff, 0xee, 0xdd, 0xcc, 0xbb,
                                          0xaa, 0x99, 0x88, 0x77, 0x66};
  char uuid[wse_uuid_chars];
  const uint64_t ms = 0x017F22E279B0;  // RFC 9562 appendix A.6 time
  wse_format_uuid7(ms, random, uuid);
  const std::string s(uuid, sizeof uuid);
  CHECK(s == "017f22e2-79b0-7fee-9dcc-bbaa99887766");
  CHECK(s[14] == '7');                                          // version
  CHECK(std::string("89ab").find(s[19]) != std::string::npos);  // variant 10xx
  CHECK(s.substr(0, 8) + s.substr(9, 4) == "017f22e279b0");     // time prefix
  const std::array<uint8_t, 10> zero{};
  wse_format_uuid7(1795461491123, zero, uuid);
  CHECK(std::string(uuid, sizeof uuid) == "01a209d8-29b3-7000-8000-000000000000");
}

TEST_CASE("wse: server_ready, server_hello, error, PONG, ping, subscription bytes") {
  std::string out;
  const wse_feature features[] = {{"batching", true}, {"compression", true}, {"recovery", false}};
  wse_server_ready ready;
  ready.message_id = "019ab221-d6b3-7000-8000-000000000001";
  ready.connection_id = "019ab221-d6b3-7000-8000-000000000002";
  ready.user_id = "user\"1\\\n";
  ready.now_ms = 1795461491123;
  ready.features = features;
  wse_build_server_ready(out, ready);
  CHECK(
      out ==
      R"({"c":"WSE","id":"019ab221-d6b3-7000-8000-000000000001","p":{"details":{"connection_id":"019ab221-d6b3-7000-8000-000000000002","features":{"batching":true,"compression":true,"recovery":false},"server_time":"2026-11-23T19:18:11.123Z","user_id":"user\"1\\\u000a"},"message":"Connection established"},"seq":1,"t":"server_ready","ts":"2026-11-23T19:18:11.123Z","v":1})");

  out.clear();
  const wse_limit limits[] = {{"max_message_size", 1048576}, {"rate_limit", 1000}};
  wse_server_hello hello;
  hello.connection_id = "cid";
  hello.features = features;
  hello.limits = limits;
  hello.now_ms = 0;
  hello.server_version = "wsed/0.1.0";
  wse_build_server_hello(out, hello);
  CHECK(
      out ==
      R"({"c":"WSE","p":{"connection_id":"cid","features":{"batching":true,"compression":true,"recovery":false},"limits":{"max_message_size":1048576,"rate_limit":1000},"ping_interval":25000,"protocol_version":2,"server_time":"1970-01-01T00:00:00.000Z","server_version":"wsed/0.1.0"},"t":"server_hello","v":1})");

  out.clear();
  wse_build_error(out, "AUTH_FAILED", "Token \"expired\"", 1795461491123);
  CHECK(
      out ==
      R"({"c":"WSE","p":{"code":"AUTH_FAILED","message":"Token \"expired\"","timestamp":"2026-11-23T19:18:11.123Z"},"t":"error","v":1})");

  out.clear();
  wse_build_pong(out, 1795461491100, 1795461491123);
  CHECK(
      out ==
      R"({"c":"WSE","t":"PONG","p":{"client_timestamp":1795461491100,"server_timestamp":1795461491123,"latency":23},"v":1})");
  CHECK(out.starts_with(R"({"c":"WSE","t":"PONG")"));
  out.clear();
  wse_build_pong(out, 0, 5);
  CHECK(
      out ==
      R"({"c":"WSE","t":"PONG","p":{"client_timestamp":0,"server_timestamp":5,"latency":0},"v":1})");

  out.clear();
  wse_build_server_ping(out, 1795461491123);
  CHECK(out == R"({"c":"WSE","t":"ping","p":{"server_time":"2026-11-23T19:18:11.123Z"}})");

  out.clear();
  const std::string_view ok[] = {"a", "b.*"};
  const std::string_view failed[] = {"bad\x01"};
  const std::string_view reasons[] = {"INVALID_TOPIC"};
  wse_build_subscription_reply(out, "subscribe", ok, failed, reasons);
  CHECK(
      out ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","success":false,"success_topics":["a","b.*"],"failed_topics":["bad\u0001"],"errors":{"bad\u0001":"INVALID_TOPIC"}},"v":1})");
  out.clear();
  wse_build_subscription_reply(out, "unsubscribe", ok, {});
  CHECK(
      out ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"unsubscribe","success":true,"success_topics":["a","b.*"],"failed_topics":[],"errors":{}},"v":1})");

  out.clear();
  wse_envelope_fields fields;
  fields.category = "U";
  fields.type = "chat";
  fields.payload_json = R"({"text":"hi"})";
  fields.id = "id1";
  fields.now_ms = 0;
  fields.seq = 7;
  wse_build_envelope(out, fields);
  CHECK(
      out ==
      R"({"c":"U","t":"chat","p":{"text":"hi"},"id":"id1","ts":"1970-01-01T00:00:00.000Z","seq":7,"v":1})");
  out.clear();
  wse_build_envelope(out, {"S", "x_snapshot", "", "", 0, 0});
  CHECK(out == R"({"c":"S","t":"x_snapshot","p":{},"ts":"1970-01-01T00:00:00.000Z","v":1})");

  // The builders' output parses back.
  wse_envelope_parser parser;
  wse_message m;
  out.clear();
  wse_build_server_ready(out, ready);
  REQUIRE(parser.parse(out, m) == wse_error::none);
  CHECK(m.type == "server_ready");
}

TEST_CASE("wse: the MessagePack envelope seen on the way agrees with the JSON parser") {
  wse_codec codec;
  wse_envelope_parser parser;
  std::string packed;  // the views of env point into it
  auto decode = [&](std::string_view json, std::string& back, wse_msgpack_envelope& env) {
    packed.clear();
    REQUIRE(codec.json_to_msgpack(json, packed) == wse_error::none);
    REQUIRE(codec.decode_inbound(bytes_of(packed), true, back, 1 << 20, &env) == wse_error::none);
  };
  std::string back;
  wse_msgpack_envelope env;
  decode(R"({"c":"U","t":"chat","id":"x1","p":{"text":"hé","n":[1,{"t":"inner"}]},"v":1})", back,
         env);
  CHECK(env.complete);
  CHECK(env.type == "chat");
  CHECK((env.has_category && env.category == "U"));
  CHECK(env.id == "x1");
  REQUIRE(env.has_payload);
  const std::string_view payload(back.data() + env.payload_begin,
                                 env.payload_end - env.payload_begin);
  CHECK(payload == "{\"text\":\"h\xc3\xa9\",\"n\":[1,{\"t\":\"inner\"}]}");
  CHECK(env.depth == 4);
  wse_message msg;
  REQUIRE(parser.parse(back, msg) == wse_error::none);
  CHECK((msg.type == env.type && msg.category == env.category && msg.payload_json == payload));

  decode(R"({"p":[1,2],"t":"x","c":7,"id":{"a":1}})", back, env);  // c and id not strings
  CHECK((env.complete && !env.has_category && env.id.empty() && env.type == "x"));
  decode(R"({"t":"x"})", back, env);
  CHECK((env.complete && !env.has_payload));
  // Not complete: the JSON parser decides (and refuses these).
  decode(R"({"t":"a","t":"b"})", back, env);
  CHECK_FALSE(env.complete);
  decode(R"({"p":{},"p":{},"t":"a"})", back, env);
  CHECK_FALSE(env.complete);
  decode(R"({"t":5})", back, env);
  CHECK_FALSE(env.complete);
  decode(R"({"p":{"t":"nested only"}})", back, env);
  CHECK_FALSE(env.complete);
  decode(R"(["t","a"])", back, env);
  CHECK_FALSE(env.complete);
  // C: is never seen this way (its views would point into the codec's own buffer).
  std::string zipped;
  REQUIRE(codec.compress(std::string(R"({"t":"chat","p":{}})") + std::string(2000, ' '), zipped,
                         16) == wse_compressed::yes);
  REQUIRE(codec.decode_inbound(bytes_of(zipped), true, back, 1 << 20, &env) == wse_error::none);
  CHECK_FALSE(env.complete);
}

TEST_CASE("wse: envelope_only decoding validates like a full decode and writes nothing") {
  wse_codec codec;
  std::string packed, full, none;
  const std::string_view cases[] = {
      R"({"c":"U","t":"chat","id":"x1","p":{"text":"hé","n":[1,-2,3.5,{"t":"inner"}]},"v":1})",
      R"({"p":[1,2],"t":"x","c":7,"id":{"a":1}})",
      R"({"t":"a","t":"b"})",
      R"({"p":{"t":"nested only"}})",
      R"(["t","a"])",
  };
  for (std::string_view json : cases) {
    packed.clear();
    REQUIRE(codec.json_to_msgpack(json, packed) == wse_error::none);
    wse_msgpack_envelope a, b;
    wse_error ea = codec.decode_inbound(bytes_of(packed), true, full, 1 << 20, &a);
    wse_error eb = codec.decode_inbound(bytes_of(packed), true, none, 1 << 20, &b,
                                        wse_json_output::envelope_only);
    CHECK(ea == eb);
    CHECK(none.empty());
    CHECK((a.complete == b.complete && a.type == b.type && a.has_category == b.has_category &&
           a.category == b.category && a.id == b.id && a.has_payload == b.has_payload &&
           a.depth == b.depth));
  }
  // Refused input is refused the same way: invalid UTF-8 in a nested string, a truncation, an
  // ext type, trailing bytes.
  const std::string bad[] = {
      std::string("\x81\xa1p\x91\xa2\xc3\x28", 7),
      std::string("\x82\xa1t\xa1x\xa1p\x92\x01", 9),
      std::string("\x81\xa1t\xd4\x01\x02", 6),
      std::string("\x81\xa1t\xa1x\x00", 6),
  };
  for (const std::string& m : bad) {
    std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(m.data()), m.size());
    wse_msgpack_envelope a, b;
    wse_error ea = codec.decode_inbound(in, true, full, 1 << 20, &a);
    wse_error eb =
        codec.decode_inbound(in, true, none, 1 << 20, &b, wse_json_output::envelope_only);
    CHECK(ea != wse_error::none);
    CHECK(ea == eb);
  }
}

TEST_CASE("wse: msgpack round trip and decoding rules") {
  wse_codec codec;
  const std::string json =
      R"({"c":"U","t":"chat","p":{"text":"h\u00e9 \"q\"","n":[0,-1,127,128,-33,65535,65536,-2147483649,18446744073709551615],"f":1.5,"g":-0.25,"h":1.0,"e":1e+300,"u":18446744073709551616.0,"b":true,"z":null,"o":{}},"id":"x","seq":3,"v":1})";
  std::string packed;
  REQUIRE(codec.json_to_msgpack(json, packed) == wse_error::none);
  CHECK(packed.starts_with("M:"));
  CHECK(static_cast<uint8_t>(packed[2]) == 0x86);  // fixmap of 6 keys
  std::string back;
  REQUIRE(codec.decode_inbound(bytes_of(packed), true, back) == wse_error::none);
  CHECK(back ==
        "{\"c\":\"U\",\"t\":\"chat\",\"p\":{\"text\":\"h\xc3\xa9 "
        "\\\"q\\\"\",\"n\":[0,-1,127,128,-33,65535,65536,-2147483649,18446744073709551615],\"f\":1."
        "5,\"g\":-0.25,\"h\":1.0,\"e\":1e+300,\"u\":18446744073709551616.0,\"b\":true,\"z\":null,"
        "\"o\":{}},\"id\":\"x\",\"seq\":3,\"v\":1}");
  // Raw msgpack (no prefix) in a binary frame decodes the same.
  std::string raw_back;
  REQUIRE(codec.decode_inbound(bytes_of(packed).subspan(2), true, raw_back) == wse_error::none);
  CHECK(raw_back == back);
  // And a plain round trip of compact JSON is the identity.
  const std::string compact = R"({"t":"ping","p":{"client_timestamp":1795461491123}})";
  packed.clear();
  REQUIRE(codec.json_to_msgpack(compact, packed, false) == wse_error::none);
  back.clear();
  REQUIRE(wse_msgpack_to_json(bytes_of(packed), back) == wse_error::none);
  CHECK(back == compact);

  // Integer keys become strings; other keys, ext and bad UTF-8 are refused.
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\x81\x01\xa1x", 4)), back) == wse_error::none);
  CHECK(back == R"({"1":"x"})");
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\x81\xc0\xa1x", 4)), back) ==
        wse_error::unsupported_type);
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\x81\x90\xa1x", 4)), back) ==
        wse_error::unsupported_type);
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\xd4\x01\x02", 3)), back) ==
        wse_error::unsupported_type);
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\xa2\xc3\x28", 3)), back) ==
        wse_error::invalid_utf8);
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\xc4\x02hi", 4)), back) == wse_error::none);
  CHECK(back == "\"hi\"");
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\xc1", 1)), back) ==
        wse_error::malformed_msgpack);
  back.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\x01\x02", 2)), back) ==
        wse_error::trailing_bytes);
  back.clear();
  CHECK(wse_msgpack_to_json({}, back) == wse_error::empty);
  CHECK(codec.json_to_msgpack("{", packed) == wse_error::malformed_json);
}

TEST_CASE("wse: msgpack depth bomb and truncation") {
  std::string json;
  CHECK(wse_msgpack_to_json(bytes_of(nested_msgpack_arrays(64)), json) == wse_error::none);
  CHECK(json == std::string(64, '[') + "1" + std::string(64, ']'));
  json.clear();
  CHECK(wse_msgpack_to_json(bytes_of(nested_msgpack_arrays(65)), json) == wse_error::too_deep);
  json.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string(100000, '\x91')), json) == wse_error::too_deep);
  // Nested maps count too.
  std::string maps;
  for (int i = 0; i < 65; ++i) maps += "\x81\xa1k";
  maps += '\x01';
  json.clear();
  CHECK(wse_msgpack_to_json(bytes_of(maps), json) == wse_error::too_deep);
  // JSON deeper than 64 is refused by the encoder too.
  wse_codec codec;
  std::string packed;
  CHECK(codec.json_to_msgpack(std::string(64, '[') + std::string(64, ']'), packed) ==
        wse_error::none);
  CHECK(codec.json_to_msgpack(std::string(65, '[') + std::string(65, ']'), packed) ==
        wse_error::too_deep);

  // Headers that promise more than the input holds: array32 of 4G items, str32 of 4 GB, map16.
  for (const std::string& truncated :
       {std::string("\xdd\xff\xff\xff\xff", 5),
        std::string("\xdb\xff\xff\xff\xff"
                    "abc",
                    8),
        std::string("\xde\x00\x02\xa1k", 5), std::string("\xcb\x00", 2), std::string("\x92\x01", 2),
        std::string("\x81\xa1k", 3)}) {
    json.clear();
    CHECK(wse_msgpack_to_json(bytes_of(truncated), json) == wse_error::truncated);
  }
  // Every prefix of a valid message is truncated, never a crash or a success.
  packed.clear();
  REQUIRE(codec.json_to_msgpack(R"({"t":"x","p":{"a":[1,2.5,"s",null]}})", packed, false) ==
          wse_error::none);
  for (size_t n = 1; n < packed.size(); ++n) {
    json.clear();
    CHECK(wse_msgpack_to_json(bytes_of(packed).first(n), json) == wse_error::truncated);
  }
  // The JSON output cap.
  json.clear();
  CHECK(wse_msgpack_to_json(bytes_of(std::string("\xdc\x03\xe8", 3) + std::string(1000, '\xc0')),
                            json, 100) == wse_error::too_large);
}

TEST_CASE("wse: zlib round trip and bomb") {
  wse_codec codec;
  std::string json = R"({"c":"U","t":"big","p":{"rows":[)";
  for (int i = 0; i < 200; ++i) json += (i ? ",{\"i\":" : "{\"i\":") + std::to_string(i) + "}";
  json += "]}}";
  REQUIRE(json.size() > wse_compress_threshold_bytes_default);
  std::string out;
  CHECK(codec.compress(R"({"t":"small"})", out) == wse_compressed::no);
  CHECK(out.empty());
  REQUIRE(codec.compress(json, out) == wse_compressed::yes);
  CHECK(out.starts_with("C:"));
  CHECK(static_cast<uint8_t>(out[2]) == 0x78);  // zlib CMF: deflate, 32 KiB window
  CHECK(out.size() < json.size());
  std::string back;
  REQUIRE(codec.decode_inbound(bytes_of(out), true, back) == wse_error::none);
  CHECK(back == json);
  back.clear();
  REQUIRE(codec.decompress(bytes_of(out).subspan(2), back) == wse_error::none);
  CHECK(back == json);
  // C: around msgpack.
  std::string packed;
  REQUIRE(codec.json_to_msgpack(json, packed, false) == wse_error::none);
  std::string zipped;
  REQUIRE(codec.compress(packed, zipped, 0) == wse_compressed::yes);
  REQUIRE(codec.decode_inbound(bytes_of(zipped), true, back) == wse_error::none);
  CHECK(back == json);

  // 10 MB of zeros, cap 1 MiB: refused without growing past the cap.
  const std::string zeros(10u << 20, '\0');
  std::string bomb;
  REQUIRE(codec.compress(zeros, bomb) == wse_compressed::yes);
  CHECK(bomb.size() < 64 * 1024);
  std::string inflated;
  CHECK(codec.decompress(bytes_of(bomb).subspan(2), inflated, 1u << 20) == wse_error::too_large);
  CHECK(inflated.empty());
  CHECK(inflated.capacity() <= (1u << 20));
  CHECK(codec.decode_inbound(bytes_of(bomb), true, inflated) == wse_error::too_large);
  // Corrupt and truncated streams.
  std::string corrupt = out;
  corrupt[10] = static_cast<char>(corrupt[10] ^ 0x55);
  back.clear();
  CHECK(codec.decode_inbound(bytes_of(corrupt), true, back) == wse_error::bad_zlib);
  CHECK(codec.decode_inbound(bytes_of(out.substr(0, out.size() / 2)), true, back) ==
        wse_error::bad_zlib);
  CHECK(codec.decode_inbound(bytes_of("C:"), true, back) == wse_error::bad_zlib);
}

TEST_CASE("wse: inbound format detection") {
  CHECK(wse_detect_format(bytes_of(R"({"t":"x"})"), false) == wse_inbound_format::json);
  CHECK(wse_detect_format(bytes_of("WSE{}"), false) == wse_inbound_format::json);
  CHECK(wse_detect_format(bytes_of("M:\x80"), true) == wse_inbound_format::msgpack);
  CHECK(wse_detect_format(bytes_of("\x81\xa1t\xa1x"), true) == wse_inbound_format::msgpack);
  CHECK(wse_detect_format(bytes_of("C:x"), true) == wse_inbound_format::zlib);
  wse_codec codec;
  std::string json;
  CHECK(codec.decode_inbound(bytes_of(R"({"t":"x"})"), false, json) == wse_error::none);
  CHECK(json == R"({"t":"x"})");
}

TEST_CASE("wse: the payload text is skipped for application messages on request") {
  wse_envelope_parser parser;
  wse_message m;
  const std::string app = R"({"t":"chat","p":{"x":[1,2,{"y":"}"}]},"c":"U"})";
  REQUIRE(parser.parse(app, m, wse_input_padding::none, wse_payload_text::never_for_application) ==
          wse_error::none);
  CHECK(m.kind == wse_kind::application);
  CHECK(m.has_payload);
  CHECK(m.payload_json.empty());
  CHECK((m.type == "chat" && m.category == "U"));
  REQUIRE(parser.parse(app, m) == wse_error::none);
  CHECK(m.payload_json == R"({"x":[1,2,{"y":"}"}]})");
  // A publish keeps its message text, a ping its timestamp.
  const std::string pub = R"({"t":"publish","p":{"topic":"a","message":{"t":"x"}}})";
  REQUIRE(parser.parse(pub, m, wse_input_padding::none, wse_payload_text::never_for_application) ==
          wse_error::none);
  CHECK(m.publish.message_json == R"({"t":"x"})");
  const std::string ping = R"({"t":"ping","p":{"timestamp":42}})";
  REQUIRE(parser.parse(ping, m, wse_input_padding::none, wse_payload_text::never_for_application) ==
          wse_error::none);
  CHECK(m.client_timestamp_ms == 42);
}

TEST_CASE("wse: the hand-written MessagePack check agrees with msgpack-c on mutated input") {
  // Every byte of a few envelopes flipped, truncated at every length, and with random bytes:
  // the error (or none) and the envelope must be the same in both modes.
  wse_codec codec;
  std::string packed, full, none;
  const std::string_view seeds[] = {
      R"({"c":"U","t":"chat","id":"x1","p":{"text":"hé","n":[1,-2,3.5,true,null,{"t":"in"}]},"v":1})",
      R"({"t":"ping","p":{"timestamp":1700000000000,"a":[[],{},"",0.0]}})",
      R"({"p":[1,[2,[3,[4]]]],"t":"x","c":"S"})",
  };
  std::mt19937 rng(7);
  size_t compared = 0;
  auto compare = [&](const std::string& m) {
    std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(m.data()), m.size());
    wse_msgpack_envelope a, b;
    full.clear();
    none.clear();
    wse_error ea = wse_msgpack_to_json(in, full, 1 << 20, &a);
    wse_error eb = wse_msgpack_to_json(in, none, 1 << 20, &b, wse_json_output::envelope_only);
    REQUIRE(ea == eb);
    if (ea == wse_error::none) {
      REQUIRE((a.complete == b.complete && a.type == b.type && a.has_category == b.has_category &&
               a.category == b.category && a.id == b.id && a.has_payload == b.has_payload &&
               a.depth == b.depth));
    }
    ++compared;
  };
  for (std::string_view json : seeds) {
    packed.clear();
    REQUIRE(codec.json_to_msgpack(json, packed) == wse_error::none);
    compare(packed);
    for (size_t n = 0; n <= packed.size(); ++n) compare(packed.substr(0, n));
    for (size_t i = 0; i < packed.size(); ++i)
      for (int bit = 0; bit < 8; ++bit) {
        std::string m = packed;
        m[i] = char(uint8_t(m[i]) ^ (1u << bit));
        compare(m);
      }
    for (int round = 0; round < 2000; ++round) {
      std::string m = packed;
      int edits = 1 + int(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        size_t at = rng() % m.size();
        switch (rng() % 3) {
          case 0:
            m[at] = char(rng());
            break;
          case 1:
            m.insert(m.begin() + long(at), char(rng()));
            break;
          default:
            if (m.size() > 1) m.erase(m.begin() + long(at));
        }
      }
      compare(m);
    }
  }
  // Depth at the cap and one over it, as keys and values.
  std::string deep(size_t(wse_msgpack_depth_max), '\x91');
  compare(deep + std::string(1, '\x01'));
  compare(deep + std::string(1, '\x91') + std::string(1, '\x01'));
  compare(std::string("\x81\x91\x01\x01", 4));              // an array as a key
  compare(std::string("\x81\x01\xa1x", 4));                 // an integer key
  compare(std::string("\x81\xca\x00\x00\x00\x00\x01", 7));  // a float key
  CHECK(compared > 5000);
}

TEST_CASE("wse: subscription request with recovery, presence and a queue group") {
  wse_envelope_parser parser;
  wse_message m;
  const std::string text =
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","topics":["a","b"],"recover":true,"recovery":{"a":{"epoch":"1f2e3d4c","offset":41}},"presence":{"name":"x"},"queue_group":"workers"},"v":1})";
  for (wse_payload_text payload_text :
       {wse_payload_text::always, wse_payload_text::never_for_application}) {
    REQUIRE(parser.parse(text, m, wse_input_padding::none, payload_text) == wse_error::none);
    const wse_subscription& sub = m.subscription;
    CHECK(m.kind == wse_kind::subscription);
    CHECK(sub.topic_count == 2);
    CHECK(sub.recover);
    CHECK(!sub.recovery_invalid);
    REQUIRE(sub.positions().size() == 1);
    const wse_recovery_position& a = sub.positions()[0];
    CHECK(a.topic == "a");
    CHECK(a.has_epoch);
    CHECK(a.epoch == 0x1f2e3d4cu);
    CHECK(a.has_offset);
    CHECK(a.offset == 41);
    CHECK(sub.position_of("a") == &a);
    CHECK(sub.position_of("b") == nullptr);
    CHECK(sub.has_presence);
    CHECK(!sub.presence_invalid);
    CHECK(sub.presence_json == R"({"name":"x"})");
    // The raw span is the caller's bytes, not a copy.
    CHECK(sub.presence_json.data() >= text.data());
    CHECK(sub.presence_json.data() + sub.presence_json.size() <= text.data() + text.size());
    CHECK(sub.has_queue_group);
    CHECK(!sub.queue_group_invalid);
    CHECK(sub.queue_group == "workers");
  }

  // Absent: every new field off.
  REQUIRE(parse_both_ways(parser, R"({"t":"subscription","p":{"action":"subscribe","topics":[]}})",
                          m) == wse_error::none);
  CHECK(!m.subscription.recover);
  CHECK(!m.subscription.recovery_invalid);
  CHECK(m.subscription.recovery_count == 0);
  CHECK(m.subscription.position_of("a") == nullptr);
  CHECK(!m.subscription.has_presence);
  CHECK(!m.subscription.presence_invalid);
  CHECK(m.subscription.presence_json.empty());
  CHECK(!m.subscription.has_queue_group);
  CHECK(!m.subscription.queue_group_invalid);
  CHECK(m.subscription.queue_group.empty());
}

TEST_CASE("wse: subscription recover flag and recovery positions, every shape") {
  wse_envelope_parser parser;
  wse_message m;
  auto parse_p = [&](const std::string& p) {
    REQUIRE(parse_both_ways(parser, concat({R"({"t":"subscription_update","p":)", p, "}"}), m) ==
            wse_error::none);
    return &m.subscription;
  };
  for (const char* recover : {"false", "null", "1", "\"true\"", "{}", "[true]"}) {
    CAPTURE(recover);
    CHECK(!parse_p(concat({R"({"action":"subscribe","recover":)", recover, "}"}))->recover);
  }
  CHECK(parse_p(R"({"recover":true})")->recover);
  CHECK(parse_p(R"({"recover":true,"recover":false})")->recover);  // the first counts

  for (const char* recovery : {"null", "[]", "\"a\"", "5", "true"}) {
    CAPTURE(recovery);
    const wse_subscription* sub = parse_p(concat({R"({"recovery":)", recovery, "}"}));
    CHECK(sub->recovery_invalid);
    CHECK(sub->recovery_count == 0);
  }
  CHECK(!parse_p(R"({"recovery":{}})")->recovery_invalid);
  CHECK(m.subscription.recovery_count == 0);

  // Epochs: exactly 8 lowercase hex digits in a string.
  struct epoch_case {
    const char* json;
    bool valid;
    uint32_t value;
  };
  const epoch_case epochs[] = {
      {R"("00000000")", true, 0},
      {R"("ffffffff")", true, 0xffffffffu},
      {R"("0123abcd")", true, 0x0123abcdu},
      {R"("\u0030123abcd")", true, 0x0123abcdu},  // unescaped first
      {R"("1F2E3D4C")", false, 0},
      {R"("1f2e3d4")", false, 0},
      {R"("1f2e3d4c0")", false, 0},
      {R"("1f2e3d4g")", false, 0},
      {R"(" 1f2e3d4")", false, 0},
      {R"("")", false, 0},
      {"null", false, 0},
      {"305419896", false, 0},
      {R"(["1f2e3d4c"])", false, 0},
  };
  for (const epoch_case& c : epochs) {
    CAPTURE(std::string_view(c.json));
    const wse_subscription* sub =
        parse_p(concat({R"({"recovery":{"t":{"offset":1,"epoch":)", c.json, "}}}"}));
    REQUIRE(sub->recovery_count == 1);
    CHECK(sub->recovery[0].has_epoch == c.valid);
    CHECK(sub->recovery[0].epoch == c.value);
    CHECK(sub->recovery[0].has_offset);
  }
  const wse_subscription* no_epoch = parse_p(R"({"recovery":{"t":{"offset":1}}})");
  CHECK(!no_epoch->recovery[0].has_epoch);

  // Offsets: a non-negative integer that fits u64.
  struct offset_case {
    const char* json;
    bool valid;
    uint64_t value;
  };
  const offset_case offsets[] = {
      {"0", true, 0},
      {"41", true, 41},
      {"9223372036854775807", true, INT64_MAX},
      {"9223372036854775808", true, 9223372036854775808ull},
      {"18446744073709551615", true, UINT64_MAX},
      {"-1", false, 0},
      {"41.0", false, 0},
      {"4.1e1", false, 0},
      {"1e300", false, 0},
      {R"("41")", false, 0},
      {"null", false, 0},
      {"true", false, 0},
      {"{}", false, 0},
  };
  for (const offset_case& c : offsets) {
    CAPTURE(std::string_view(c.json));
    const wse_subscription* sub =
        parse_p(concat({R"({"recovery":{"t":{"epoch":"0000000a","offset":)", c.json, "}}}"}));
    REQUIRE(sub->recovery_count == 1);
    CHECK(sub->recovery[0].has_offset == c.valid);
    CHECK(sub->recovery[0].offset == c.value);
    CHECK(sub->recovery[0].has_epoch);
  }
  // A number too large for u64 is a double to simdjson: either way, not an offset.
  wse_message big;
  const std::string too_big =
      R"({"t":"subscription","p":{"recovery":{"t":{"offset":18446744073709551616}}}})";
  if (parser.parse(too_big, big) == wse_error::none) {
    REQUIRE(big.subscription.recovery_count == 1);
    CHECK(!big.subscription.recovery[0].has_offset);
  }

  // Entries that are not objects are listed without a position; keys are unescaped; the first
  // of a key sent twice is the one found.
  const wse_subscription* sub = parse_p(
      R"({"recovery":{"x":null,"y":[1],"t\u00e9":{"epoch":"00000001","offset":2},"x":{"epoch":"00000002","offset":3}}})");
  REQUIRE(sub->recovery_count == 4);
  CHECK(sub->recovery[0].topic == "x");
  CHECK(!sub->recovery[0].has_epoch);
  CHECK(!sub->recovery[0].has_offset);
  CHECK(!sub->recovery[1].has_epoch);
  CHECK(sub->recovery[2].topic == "t\xc3\xa9");
  CHECK(sub->position_of("t\xc3\xa9") == &sub->recovery[2]);
  CHECK(sub->position_of("x") == &sub->recovery[0]);
  CHECK(sub->position_of("z") == nullptr);
  CHECK(sub->position_of("") == nullptr);

  // A later parse resets the positions.
  parse_p(R"({"action":"subscribe"})");
  CHECK(m.subscription.recovery_count == 0);
  CHECK(m.subscription.recovery.empty());
  CHECK(m.subscription.recovery_sorted.empty());
  CHECK(m.subscription.position_of("x") == nullptr);
}

TEST_CASE("wse: many recovery positions: sorted lookup, first of a duplicate, the cap") {
  wse_envelope_parser parser;
  wse_message m;
  for (size_t n : {size_t{16}, size_t{17}, size_t{1000}}) {
    CAPTURE(n);
    std::string text = R"({"t":"subscription_update","p":{"recover":true,"recovery":{)";
    for (size_t i = 0; i < n; ++i) {
      text += concat({i ? ",\"t" : "\"t", std::to_string(n - 1 - i),
                      R"(":{"epoch":"0000abcd","offset":)", std::to_string(i), "}"});
    }
    text += R"(,"t3":{"offset":99999}}}})";  // a repeat: the first wins
    REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
    const wse_subscription& sub = m.subscription;
    REQUIRE(sub.recovery_count == n + 1);
    CHECK(sub.recovery_sorted.size() == (n + 1 > wse_recovery_positions_linear_max ? n + 1 : 0));
    for (size_t i = 0; i < n; ++i) {
      const wse_recovery_position* p = sub.position_of(concat({"t", std::to_string(n - 1 - i)}));
      REQUIRE(p != nullptr);
      CHECK(p == &sub.recovery[i]);
      CHECK(p->offset == i);
    }
    CHECK(sub.position_of("t3")->offset == n - 4);
    CHECK(sub.position_of("t") == nullptr);
    CHECK(sub.position_of(concat({"t", std::to_string(n)})) == nullptr);
    CHECK(sub.position_of("u") == nullptr);
  }
  // A hand-filled struct (no index) is scanned.
  wse_subscription hand;
  hand.recovery.resize(20);
  hand.recovery_count = 20;
  for (size_t i = 0; i < 20; ++i) hand.recovery[i].topic = i % 2 ? "odd" : "even";
  CHECK(hand.position_of("odd") == &hand.recovery[1]);
  CHECK(hand.position_of("even") == &hand.recovery[0]);
  CHECK(hand.position_of("none") == nullptr);

  // At most wse_subscription_topics_max positions; the rest are ignored.
  std::string many = R"({"t":"subscription","p":{"recovery":{)";
  for (size_t i = 0; i < wse_subscription_topics_max + 5; ++i) {
    many +=
        concat({i ? ",\"t" : "\"t", std::to_string(i), R"(":{"offset":)", std::to_string(i), "}"});
  }
  many += "}}}";
  REQUIRE(parse_both_ways(parser, many, m) == wse_error::none);
  CHECK(m.subscription.recovery_count == wse_subscription_topics_max);
  CHECK(!m.subscription.recovery_invalid);
  const std::string last = concat({"t", std::to_string(wse_subscription_topics_max - 1)});
  REQUIRE(m.subscription.position_of(last) != nullptr);
  CHECK(m.subscription.position_of(last)->offset == wse_subscription_topics_max - 1);
  CHECK(m.subscription.position_of(concat({"t", std::to_string(wse_subscription_topics_max)})) ==
        nullptr);
}

TEST_CASE("wse: subscription presence data and queue group, every shape") {
  wse_envelope_parser parser;
  wse_message m;
  std::string text;  // raw spans (presence_json) point into it
  auto parse_p = [&](const std::string& p) {
    text = concat({R"({"t":"subscription","p":)", p, "}"});
    REQUIRE(parse_both_ways(parser, text, m) == wse_error::none);
    return &m.subscription;
  };
  // The exact bytes of p.presence, spaces and escapes inside it kept, wherever it is in p.
  const wse_subscription* sub = parse_p(
      R"({"topics":["a"], "presence" :  { "name" : "x\"}" , "n":[1,{"a":"\u00e9"}] } ,"action":"subscribe"})");
  CHECK(sub->has_presence);
  CHECK(sub->presence_json == R"({ "name" : "x\"}" , "n":[1,{"a":"\u00e9"}] })");
  sub = parse_p(R"({"presence":{}})");
  CHECK(sub->has_presence);
  CHECK(sub->presence_json == "{}");
  sub = parse_p(R"({"presence":{"a":1},"presence":[2]})");  // the first counts
  CHECK(sub->has_presence);
  CHECK(!sub->presence_invalid);
  CHECK(sub->presence_json == R"({"a":1})");
  for (const char* presence : {"null", "[]", "\"x\"", "1", "false"}) {
    CAPTURE(presence);
    sub = parse_p(concat({R"({"action":"subscribe","presence":)", presence, "}"}));
    CHECK(!sub->has_presence);
    CHECK(sub->presence_invalid);
    CHECK(sub->presence_json.empty());
  }
  // Under the legacy prefix, in place, the span is still the caller's bytes.
  const std::string legacy = R"(WSE{"t":"subscription","p":{"presence":{"s":"on"}}})";
  REQUIRE(parser.parse(legacy, m, wse_input_padding::none,
                       wse_payload_text::never_for_application) == wse_error::none);
  CHECK(m.payload_json.empty());  // still declined for the payload itself
  CHECK(m.subscription.presence_json == R"({"s":"on"})");
  CHECK(m.subscription.presence_json.data() == legacy.data() + legacy.find("{\"s\""));

  // Queue groups: a string of 1..128 bytes without control characters, unescaped.
  sub = parse_p(R"({"queue_group":"w\u00e9rkers.1"})");
  CHECK(sub->has_queue_group);
  CHECK(sub->queue_group == "w\xc3\xa9rkers.1");
  sub =
      parse_p(concat({R"({"queue_group":")", std::string(wse_queue_group_bytes_max, 'g'), "\"}"}));
  CHECK(sub->has_queue_group);
  CHECK(sub->queue_group.size() == wse_queue_group_bytes_max);
  sub = parse_p(R"({"queue_group":"a","queue_group":5})");  // the first counts
  CHECK(sub->has_queue_group);
  CHECK(sub->queue_group == "a");
  const std::string bad_groups[] = {
      "null",
      "5",
      "{}",
      "[\"a\"]",
      "true",
      R"("")",
      concat({"\"", std::string(wse_queue_group_bytes_max + 1, 'g'), "\""}),
      R"("a\u0001")",
      R"("a\tb")",
      R"("a\u001f")",
      R"("del\u007f")",
  };
  for (const std::string& group : bad_groups) {
    CAPTURE(group);
    sub = parse_p(concat({R"({"queue_group":)", group, "}"}));
    CHECK(!sub->has_queue_group);
    CHECK(sub->queue_group_invalid);
    CHECK(sub->queue_group.empty());
  }

  // p not an object: nothing read, nothing invalid.
  REQUIRE(parse_both_ways(parser, R"({"t":"subscription","p":[{"presence":5}]})", m) ==
          wse_error::none);
  CHECK((!m.subscription.presence_invalid && !m.subscription.queue_group_invalid &&
         !m.subscription.recovery_invalid && !m.subscription.recover));
  // Every field is reset by the next parse, whatever its kind.
  parse_p(R"({"recover":true,"recovery":5,"presence":{},"queue_group":"")"
          R"(})");
  CHECK((m.subscription.recover && m.subscription.recovery_invalid && m.subscription.has_presence &&
         m.subscription.queue_group_invalid));
  REQUIRE(parse_both_ways(parser, R"({"t":"chat"})", m) == wse_error::none);
  CHECK((!m.subscription.recover && !m.subscription.recovery_invalid &&
         !m.subscription.has_presence && !m.subscription.presence_invalid &&
         m.subscription.presence_json.empty() && !m.subscription.has_queue_group &&
         !m.subscription.queue_group_invalid && m.subscription.queue_group.empty()));
}

TEST_CASE("wse: subscription reply with recovery, byte for byte") {
  std::string out;
  const std::string_view ok[] = {"a", "b\"q", "a"};
  const std::string_view failed[] = {"bad\x01"};
  const std::string_view reasons[] = {"INVALID_TOPIC"};
  const wse_topic_recovery topics[] = {
      {"a", true, 0x5a1c09e2u, 41, true, true, 3},
      {"b\"q", true, 0x0000000fu, 7, true, false, 0},
      {"a", true, 0x11111111u, 99, false, false, 9},  // repeated: the first is written
      {"bad\x01", false, 0, 0, false, false, 0},
  };
  const wse_recovery_reply recovery{true, false, topics};
  wse_build_subscription_reply(out, "subscribe", ok, failed, reasons, &recovery);
  CHECK(
      out ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","success":false,"success_topics":["a","b\"q","a"],"failed_topics":["bad\u0001"],"errors":{"bad\u0001":"INVALID_TOPIC"},"recoverable":true,"recovered":false,"recovery":{"a":{"epoch":"5a1c09e2","offset":41,"recoverable":true,"recovered":true,"count":3},"b\"q":{"epoch":"0000000f","offset":7,"recoverable":true,"recovered":false,"count":0},"bad\u0001":{"epoch":null,"offset":0,"recoverable":false,"recovered":false,"count":0}}},"v":1})");
  // It is JSON the parser reads back.
  wse_envelope_parser parser;
  wse_message m;
  REQUIRE(parser.parse(out, m) == wse_error::none);
  CHECK(m.type == "subscription_update");

  out.clear();
  const wse_topic_recovery all_recovered[] = {
      {"x", true, 0xffffffffu, UINT64_MAX, true, true, 500}};
  wse_build_subscription_reply(out, "subscribe", std::span<const std::string_view>(ok).first(1), {},
                               {}, nullptr);
  const std::string plain = out;
  CHECK(
      plain ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","success":true,"success_topics":["a"],"failed_topics":[],"errors":{}},"v":1})");
  out.clear();
  const wse_recovery_reply full{true, true, all_recovered};
  wse_build_subscription_reply(out, "subscribe", std::span<const std::string_view>(ok).first(1), {},
                               {}, &full);
  CHECK(
      out ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","success":true,"success_topics":["a"],"failed_topics":[],"errors":{},"recoverable":true,"recovered":true,"recovery":{"x":{"epoch":"ffffffff","offset":18446744073709551615,"recoverable":true,"recovered":true,"count":500}}},"v":1})");
  out.clear();
  const wse_recovery_reply empty{false, false, {}};
  wse_build_subscription_reply(out, "subscribe", {}, {}, {}, &empty);
  CHECK(
      out ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","success":true,"success_topics":[],"failed_topics":[],"errors":{},"recoverable":false,"recovered":false,"recovery":{}},"v":1})");
}

TEST_CASE("wse: reply maps drop repeated topics, first wins, for many topics too") {
  // 3,000 entries of 1,000 topics (each three times, the later ones with other values): the
  // errors and recovery maps name each topic once, in first-seen order, with its first values.
  std::vector<std::string> names;
  for (int i = 0; i < 1000; ++i) names.push_back(concat({"t", std::to_string((i * 7919) % 1000)}));
  std::vector<std::string_view> failed, reasons;
  std::vector<wse_topic_recovery> topics;
  for (int round = 0; round < 3; ++round) {
    for (const std::string& name : names) {
      failed.push_back(name);
      reasons.push_back(round == 0 ? "ACL_DENIED" : "INVALID_TOPIC");
      topics.push_back({name, round == 0, 0, uint64_t(round), false, false, 0});
    }
  }
  std::string expected_errors = ",\"errors\":{", expected_recovery = ",\"recovery\":{";
  for (size_t i = 0; i < names.size(); ++i) {
    const char* sep = i ? "," : "";
    expected_errors += concat({sep, "\"", names[i], "\":\"ACL_DENIED\""});
    expected_recovery += concat({sep, "\"", names[i],
                                 "\":{\"epoch\":\"00000000\",\"offset\":0,\"recoverable\":false,"
                                 "\"recovered\":false,\"count\":0}"});
  }
  expected_errors += "}";
  expected_recovery += "}";
  const wse_recovery_reply recovery{false, false, topics};
  std::string out;
  wse_build_subscription_reply(out, "subscribe", {}, failed, reasons, &recovery);
  CHECK(out.find(expected_errors) != std::string::npos);
  CHECK(out.find(expected_recovery + "}") != std::string::npos);
  wse_envelope_parser parser;
  wse_message m;
  CHECK(parser.parse(out, m) == wse_error::none);
  // Fewer errors than failed topics: only those with a reason are in the map (as before).
  out.clear();
  const std::string_view two_failed[] = {"x", "y"};
  const std::string_view one_reason[] = {"ACL_DENIED"};
  wse_build_subscription_reply(out, "unsubscribe", {}, two_failed, one_reason);
  CHECK(
      out ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"unsubscribe","success":false,"success_topics":[],"failed_topics":["x","y"],"errors":{"x":"ACL_DENIED"}},"v":1})");
}

TEST_CASE("wse: recovery stamp append and parse round trip") {
  struct stamp_case {
    std::string topic;
    uint32_t epoch;
    uint64_t offset;
    std::string expected;
  };
  const stamp_case cases[] = {
      {"chat", 0x5a1c09e2u, 5, R"({"tp":"chat","e":"5a1c09e2","o":5,)"},
      {"battle.glob_test", 0, 0, R"({"tp":"battle.glob_test","e":"00000000","o":0,)"},
      {"q\"b\\s\x01\xc3\xa9", 0xffffffffu, UINT64_MAX,
       "{\"tp\":\"q\\\"b\\\\s\\u0001\xc3\xa9\",\"e\":\"ffffffff\",\"o\":18446744073709551615,"},
      {"", 0x0000abcdu, 10, R"({"tp":"","e":"0000abcd","o":10,)"},
  };
  for (const stamp_case& c : cases) {
    CAPTURE(c.topic);
    std::string out = "prefix:";
    wse_append_recovery_stamp(out, c.topic, c.epoch, c.offset);
    CHECK(out == concat({"prefix:", c.expected}));
    CHECK(c.expected.size() <= wse_recovery_stamp_bytes_max(c.topic));
    // The caller appends the publication without its '{'.
    std::string frame = c.expected + R"("c":"U","t":"x","p":{"o":1}})";
    std::string_view topic_raw;
    uint32_t epoch = 1;
    uint64_t offset = 1;
    REQUIRE(wse_parse_recovery_stamp(frame, topic_raw, epoch, offset));
    CHECK(epoch == c.epoch);
    CHECK(offset == c.offset);
    std::string escaped;
    wse_append_json_string(escaped, c.topic);
    CHECK(concat({"\"", topic_raw, "\""}) == escaped);
    CHECK(topic_raw.data() == frame.data() + 7);  // a view into the frame
    // The stamped JSON parses, and its "tp" unescapes back to the topic.
    wse_envelope_parser parser;
    wse_message m;
    REQUIRE(parser.parse(frame, m) == wse_error::none);
    CHECK(m.type == "x");
    // The stamp alone (as written) and the stamp of an empty object are read too.
    REQUIRE(wse_parse_recovery_stamp(c.expected, topic_raw, epoch, offset));
    std::string empty_object = c.expected;
    empty_object.back() = '}';
    REQUIRE(wse_parse_recovery_stamp(empty_object, topic_raw, epoch, offset));
    CHECK(offset == c.offset);
    REQUIRE(parser.parse(empty_object, m) == wse_error::missing_type);  // valid JSON, no "t"
  }
  // The bound is reached by a topic of bytes that each escape to 6, and the largest offset.
  const std::string worst(40, '\x01');
  std::string out;
  wse_append_recovery_stamp(out, worst, 0, UINT64_MAX);
  CHECK(out.size() == wse_recovery_stamp_bytes_max(worst));
  out.clear();
  wse_append_recovery_stamp(out, "\xff", 0, UINT64_MAX);  // invalid UTF-8: \ufffd
  CHECK(out.size() == wse_recovery_stamp_bytes_max("\xff"));
  // Other escapes a Redis-side writer may use are taken, still escaped.
  std::string_view topic_raw;
  uint32_t epoch = 0;
  uint64_t offset = 0;
  REQUIRE(wse_parse_recovery_stamp(R"({"tp":"a\/b\u00E9\n\t\r\b\f","e":"00000001","o":2,"t":1})",
                                   topic_raw, epoch, offset));
  CHECK(topic_raw == R"(a\/b\u00E9\n\t\r\b\f)");
}

TEST_CASE("wse: recovery stamp parse refuses near misses") {
  const std::string good = R"({"tp":"chat","e":"5a1c09e2","o":5,"c":"U"})";
  std::string_view topic_raw;
  uint32_t epoch = 0;
  uint64_t offset = 0;
  REQUIRE(wse_parse_recovery_stamp(good, topic_raw, epoch, offset));
  const std::string near_misses[] = {
      "",
      "{",
      R"({"tp":)",
      R"({"tp":"chat)",
      R"({"tp":"chat")",
      R"({"tp":"chat","e":"5a1c09e2")",
      R"({"tp":"chat","e":"5a1c09e2","o":)",
      R"({"tp":"chat","e":"5a1c09e2","o":5)",  // nothing after the offset
      R"( {"tp":"chat","e":"5a1c09e2","o":5,)",
      R"({ "tp":"chat","e":"5a1c09e2","o":5,)",
      R"({"tp": "chat","e":"5a1c09e2","o":5,)",
      R"({"tp":"chat", "e":"5a1c09e2","o":5,)",
      R"({"tp":"chat","e":"5a1c09e2","o": 5,)",
      R"({"tp":"chat","e":"5a1c09e2","o":5 ,)",
      R"({"e":"5a1c09e2","tp":"chat","o":5,)",
      R"({"tp":"chat","o":5,"e":"5a1c09e2",)",
      R"({"c":"U","tp":"chat","e":"5a1c09e2","o":5,)",
      R"({"tp":5,"e":"5a1c09e2","o":5,)",
      R"({"TP":"chat","e":"5a1c09e2","o":5,)",
      R"({"tp":"chat","e":"5A1C09E2","o":5,)",
      R"({"tp":"chat","e":"5a1c09e","o":5,)",
      R"({"tp":"chat","e":"5a1c09e2f","o":5,)",
      R"({"tp":"chat","e":"5a1c09g2","o":5,)",
      R"({"tp":"chat","e":5,"o":5,)",
      R"({"tp":"chat","e":null,"o":5,)",
      R"({"tp":"chat","e":"5a1c09e2","o":"5",)",
      R"({"tp":"chat","e":"5a1c09e2","o":-5,)",
      R"({"tp":"chat","e":"5a1c09e2","o":+5,)",
      R"({"tp":"chat","e":"5a1c09e2","o":05,)",
      R"({"tp":"chat","e":"5a1c09e2","o":00,)",
      R"({"tp":"chat","e":"5a1c09e2","o":5.0,)",
      R"({"tp":"chat","e":"5a1c09e2","o":5e1,)",
      R"({"tp":"chat","e":"5a1c09e2","o":,)",
      R"({"tp":"chat","e":"5a1c09e2","o":18446744073709551616,)",  // u64 max + 1
      R"({"tp":"chat","e":"5a1c09e2","o":99999999999999999999,)",
      R"({"tp":"chat","e":"5a1c09e2","o":5])",
      R"({"tp":"chat","e":"5a1c09e2","o":5:)",
      R"({"tp":"ch\"at","e":"5a1c09e2","o":5)",  // escaped quote, then no separator
      R"({"tp":"ch\at","e":"5a1c09e2","o":5,)",  // not a JSON escape
      R"({"tp":"ch\u00g0","e":"5a1c09e2","o":5,)",
      R"({"tp":"ch\u00","e":"5a1c09e2","o":5,)",
      R"({"tp":"chat\)",
      std::string("{\"tp\":\"ch\nat\",\"e\":\"5a1c09e2\",\"o\":5,"),  // a raw control byte
      R"({"tp":"chat","e":"5a1c09e2","O":5,)",
      R"({"tp":"chat","e":"5a1c09e2,"o":5,)",
      R"(["tp","chat","e":"5a1c09e2","o":5,)",
      R"({"t":"x","c":"U"})",
  };
  for (const std::string& text : near_misses) {
    CAPTURE(text);
    CHECK_FALSE(wse_parse_recovery_stamp(text, topic_raw, epoch, offset));
  }
  // Every truncation of a good stamp before its separator is refused.
  for (size_t n = 0; n < good.find(",\"c\""); ++n) {
    CAPTURE(n);
    CHECK_FALSE(
        wse_parse_recovery_stamp(std::string_view(good).substr(0, n), topic_raw, epoch, offset));
  }
  // A topic that looks like the rest of a stamp is still just the topic.
  const std::string tricky = R"({"tp":"x\",\"e\":\"00000000\",\"o\":1,","e":"00000002","o":3,)";
  REQUIRE(wse_parse_recovery_stamp(tricky, topic_raw, epoch, offset));
  CHECK(topic_raw == R"(x\",\"e\":\"00000000\",\"o\":1,)");
  CHECK(epoch == 2);
  CHECK(offset == 3);
}

TEST_CASE("wse: presence events and stats, byte for byte") {
  std::string out;
  wse_build_presence_event(out, "presence_join", "room.1", "u0",
                           R"({"name":"User 0","status":"online"})");
  CHECK(
      out ==
      R"({"c":"WSE","p":{"data":{"name":"User 0","status":"online"},"topic":"room.1","user_id":"u0"},"t":"presence_join","v":1})");
  out.clear();
  wse_build_presence_event(out, "presence_leave", "r\"\\", "u\n\xc3\xa9", "");
  CHECK(
      out ==
      "{\"c\":\"WSE\",\"p\":{\"data\":{},\"topic\":\"r\\\"\\\\\",\"user_id\":\"u\\u000a\xc3\xa9\"},"
      "\"t\":\"presence_leave\",\"v\":1}");
  out.clear();
  wse_build_presence_event(out, "presence_update", "t", "", R"({"s":[1,2]})");
  CHECK(
      out ==
      R"({"c":"WSE","p":{"data":{"s":[1,2]},"topic":"t","user_id":""},"t":"presence_update","v":1})");
  // Its category rule agrees, and it parses back as a WSE message.
  CHECK(category_of("presence_update") == wse_category::user);  // sent with an explicit "c"
  wse_envelope_parser parser;
  wse_message m;
  REQUIRE(parser.parse(out, m) == wse_error::none);
  CHECK((m.type == "presence_update" && m.category == "WSE" && m.payload_json.starts_with("{")));

  out.clear();
  wse_build_presence_stats(out, 3, 5);
  CHECK(out == R"({"num_users":3,"num_connections":5})");
  out.clear();
  wse_build_presence_stats(out, 0, UINT64_MAX);
  CHECK(out == R"({"num_users":0,"num_connections":18446744073709551615})");
}
