// tests/unit/test_bench.cpp: the pure parts of wse-bench (tools/bench/): the HDR-style histogram,
// JWT minting and base64, pre-masked frame templates, the benchmark payloads and the upgrade check,
// the source-port rule, and fanout-broadcast's seq tracking, publish requests, HTTP answers,
// tick scan and /metrics reading.
// Owns: test cases only. Thread: the test runner's main thread. Never opens a socket.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <msgpack.hpp>
#include <random>
#include <string>
#include <vector>

#include "proto/http.hpp"
#include "proto/ws.hpp"
#include "tools/bench/fanout.hpp"
#include "tools/bench/frames.hpp"
#include "tools/bench/jwt.hpp"
#include "tools/bench/ports.hpp"
#include "tools/bench/stats.hpp"

using namespace wsed::bench;
using wsed::proto::ws_event_kind;
using wsed::proto::ws_frame_parser;
using wsed::proto::ws_opcode;
using wsed::proto::ws_role;

namespace {

std::span<const uint8_t> span_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Decodes client frames with the server-side parser; returns the messages (opcode, payload).
std::vector<std::pair<ws_opcode, std::string>> decode_client_frames(std::vector<uint8_t> bytes) {
  std::vector<std::pair<ws_opcode, std::string>> out;
  ws_frame_parser parser(ws_role::server);
  wsed::proto::ws_limits limits;
  limits.message_bytes_max = 1u << 24;
  size_t offset = 0;
  std::string current;
  while (offset < bytes.size()) {
    auto ev = parser.next(std::span<uint8_t>(bytes.data() + offset, bytes.size() - offset), limits);
    REQUIRE(ev.kind != ws_event_kind::error);
    if (ev.kind == ws_event_kind::need_more) break;
    offset += ev.consumed;
    REQUIRE(ev.kind == ws_event_kind::data);
    if (ev.message_begin) current.clear();
    current.append(reinterpret_cast<const char*>(ev.payload.data()), ev.payload.size());
    if (ev.message_end) out.emplace_back(ev.message_opcode, current);
  }
  CHECK(offset == bytes.size());
  return out;
}

}  // namespace

TEST_CASE("bench histogram: percentiles within 1% of the exact values, max exact") {
  wsed::tools::latency_histogram h;
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(12.0, 1.5);  // ~160 us median, long tail
  std::vector<uint64_t> values;
  for (int i = 0; i < 200000; ++i) {
    uint64_t v = static_cast<uint64_t>(dist(rng)) + 1;
    values.push_back(v);
    h.record(v);
  }
  std::sort(values.begin(), values.end());
  CHECK(h.count() == values.size());
  CHECK(h.max() == values.back());
  for (double q : {0.5, 0.9, 0.95, 0.99, 0.999, 0.9999}) {
    uint64_t exact = values[static_cast<size_t>(q * static_cast<double>(values.size() - 1))];
    double got = static_cast<double>(h.quantile(q));
    CAPTURE(q);
    CHECK(std::fabs(got - static_cast<double>(exact)) / static_cast<double>(exact) < 0.01);
  }
  wsed::tools::latency_histogram other;
  other.record(5'000'000'000);
  h.merge(other);
  CHECK(h.max() == 5'000'000'000);
  CHECK(h.quantile(1.0) == 5'000'000'000);
  wsed::tools::latency_histogram empty;
  CHECK(empty.quantile(0.5) == 0);
  wsed::tools::latency_histogram small;
  for (uint64_t v = 0; v < 100; ++v) small.record(v);  // exact below 128
  CHECK(small.quantile(0.5) == 49);
}

TEST_CASE("bench base64 and base64url: RFC 4648 vectors") {
  CHECK(base64url(std::string_view("")) == "");
  CHECK(base64url(std::string_view("f")) == "Zg");
  CHECK(base64url(std::string_view("fo")) == "Zm8");
  CHECK(base64url(std::string_view("foo")) == "Zm9v");
  CHECK(base64url(std::string_view("foobar")) == "Zm9vYmFy");
  const uint8_t high[] = {0xfb, 0xff, 0xbf};
  CHECK(base64url(std::span<const uint8_t>(high, 3)) == "-_-_");
  CHECK(base64(span_of("f")) == "Zg==");
  CHECK(base64(span_of("fo")) == "Zm8=");
  CHECK(base64(std::span<const uint8_t>(high, 3)) == "+/+/");
}

TEST_CASE("bench JWT: the well-known HS256 example and the bench claims") {
  std::string token = mint_hs256("your-256-bit-secret",
                                 R"({"sub":"1234567890","name":"John Doe","iat":1516239022})");
  CHECK(token ==
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c");
  CHECK(
      bench_claims("bench-user", 1700000000) ==
      R"({"sub":"bench-user","iss":"wse-bench","aud":"wse-bench","iat":1700000000,"exp":1700003600})");
  CHECK(bench_claims("a\"b", 1, 10).find(R"("sub":"a\"b")") != std::string::npos);
  std::string t = mint_hs256("s", bench_claims("u", 1));
  CHECK(std::count(t.begin(), t.end(), '.') == 2);
  CHECK(t.find('=') == std::string::npos);
}

TEST_CASE("bench frame templates: pre-masked frames decode to the exact payload") {
  for (size_t size : {0, 1, 125, 126, 127, 65535, 65536, 70000}) {
    CAPTURE(size);
    std::string payload = size == 0 ? std::string() : sized_json(std::max<size_t>(size, 20));
    payload.resize(size, 'x');
    masked_frame f = make_masked_frame(ws_opcode::text, span_of(payload), {0x12, 0x34, 0x56, 0x78});
    CHECK(f.bytes.size() == f.header_bytes + size);
    auto messages = decode_client_frames(repeat_frame(f, 3));
    REQUIRE(messages.size() == 3);
    for (auto& [opcode, text] : messages) {
      CHECK(opcode == ws_opcode::text);
      CHECK(text == payload);
    }
  }
  std::vector<uint8_t> packed = trade_msgpack_prefixed();
  masked_frame b = make_masked_frame(ws_opcode::binary, packed, {1, 2, 3, 4});
  auto messages = decode_client_frames(b.bytes);
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].first == ws_opcode::binary);
  CHECK(messages[0].second == std::string(packed.begin(), packed.end()));
}

TEST_CASE("bench ping template: patching the masked timestamp yields the new ping") {
  masked_frame f = make_masked_frame(ws_opcode::text, span_of(ping_json(0)), {9, 8, 7, 6});
  patch_masked(f.bytes.data(), f.header_bytes, f.key, ping_timestamp_offset,
               timestamp_digits(1740700800123));
  auto messages = decode_client_frames(f.bytes);
  REQUIRE(messages.size() == 1);
  CHECK(messages[0].second == R"({"p":{"client_timestamp":1740700800123},"t":"ping"})");
  CHECK(ping_json(5).substr(ping_timestamp_offset, ping_timestamp_digits) == "0000000000005");
}

TEST_CASE("bench payloads: trading message, msgpack, zlib, sized JSON, client_hello") {
  std::string json = trade_json();
  CHECK(json.size() >= 175);
  CHECK(json.size() <= 194);
  std::vector<uint8_t> packed = trade_msgpack_prefixed();
  REQUIRE(packed.size() > 2);
  CHECK(packed[0] == 'M');
  CHECK(packed[1] == ':');
  CHECK(packed.size() < json.size());
  msgpack::object_handle oh =
      msgpack::unpack(reinterpret_cast<const char*>(packed.data()) + 2, packed.size() - 2);
  auto map = oh.get().as<std::map<std::string, msgpack::object>>();
  CHECK(map.at("t").as<std::string>() == "trade");
  auto inner = map.at("p").as<std::map<std::string, msgpack::object>>();
  CHECK(inner.at("symbol").as<std::string>() == "BTC-USD");
  CHECK(inner.at("price").as<double>() == doctest::Approx(67432.15));
  CHECK(map.at("v").as<int>() == 1);

  std::vector<uint8_t> zipped = zlib_prefixed(json);
  REQUIRE(zipped.size() > 2);
  CHECK(zipped[0] == 'C');
  CHECK(zipped[1] == ':');
  std::vector<uint8_t> back = zlib_inflate(std::span<const uint8_t>(zipped).subspan(2), 4096);
  CHECK(std::string(back.begin(), back.end()) == json);

  for (size_t n : {20, 64, 256, 1024, 65536}) {
    std::string s = sized_json(n);
    CHECK(s.size() == n);
    CHECK(s.front() == '{');
    CHECK(s.back() == '}');
  }
  CHECK(client_hello_json().find(R"("t":"client_hello")") != std::string::npos);
}

TEST_CASE("bench upgrade: request with the cookie, response check") {
  std::string req = upgrade_request("/wse", "127.0.0.1:5006", "dGhlIHNhbXBsZSBub25jZQ==", "T");
  CHECK(req.rfind("GET /wse HTTP/1.1\r\n", 0) == 0);
  CHECK(req.find("\r\nCookie: access_token=T\r\n") != std::string::npos);
  CHECK(req.substr(req.size() - 4) == "\r\n\r\n");
  CHECK(upgrade_request("/", "h", "k", "").find("Cookie") == std::string::npos);

  auto accept = wsed::proto::websocket_accept("dGhlIHNhbXBsZSBub25jZQ==");
  std::string_view expected(accept.data(), accept.size());
  CHECK(expected == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  std::string ok =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "sec-websocket-accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
  upgrade_check c = check_upgrade_response(ok, expected);
  CHECK(c.status == upgrade_status::ok);
  CHECK(c.header_bytes == ok.size() - 4);
  CHECK(check_upgrade_response(ok.substr(0, 40), expected).status == upgrade_status::incomplete);
  CHECK(check_upgrade_response("HTTP/1.1 503 Service Unavailable\r\n\r\n", expected).status ==
        upgrade_status::bad_status);
  std::string wrong = ok;
  wrong.replace(wrong.find("s3pP"), 4, "AAAA");
  CHECK(check_upgrade_response(wrong, expected).status == upgrade_status::bad_accept);
  CHECK(check_upgrade_response(std::string(20000, 'a'), expected).status ==
        upgrade_status::too_long);
  CHECK(with_query("/wse", "format=msgpack") == "/wse?format=msgpack");
  CHECK(with_query("/wse?a=1", "format=msgpack") == "/wse?a=1&format=msgpack");
}

TEST_CASE("bench source ports: a source address gets 90% of the even half of the range") {
  // The default range 32768-60999 has 14,116 even ports: 12,705 per address, so 100,000
  // connections spread over 8 addresses (not 4, whose even ports run out at ~56K).
  CHECK(connect_ports_per_address(32768, 60999) == 12705);
  CHECK((100000 + 12705 - 1) / 12705 == 8);
  CHECK(connect_ports_per_address(1024, 65535) == 29031);
  CHECK(connect_ports_per_address(40000, 41999) == 1000);  // small range: the even half, no margin
  CHECK(connect_ports_per_address(5000, 5000) == 1);
  CHECK(connect_ports_per_address(6000, 5000) == 1);  // inverted: never 0
}

// ---- fanout-broadcast (tools/bench/fanout.hpp) ------------------------------------------------

TEST_CASE("bench fanout seq tracking: in order, gaps, late arrivals, duplicates") {
  seq_tracker t(0);
  for (uint64_t s = 0; s < 100; ++s) t.on_seq(s);
  CHECK(t.unique() == 100);
  CHECK(t.missing() == 0);
  CHECK(t.duplicates() == 0);
  CHECK(t.reorders() == 0);
  CHECK(t.missing_until(100) == 0);
  CHECK(t.missing_until(105) == 5);  // the publisher's last 5 never arrived

  t.on_seq(103);  // 100..102 skipped
  CHECK(t.missing() == 3);
  t.on_seq(101);  // late: a reorder, no longer missing
  CHECK(t.reorders() == 1);
  CHECK(t.missing() == 2);
  t.on_seq(101);  // again: a duplicate
  t.on_seq(103);
  t.on_seq(50);
  CHECK(t.duplicates() == 3);
  CHECK(t.unique() == 102);
  CHECK(t.missing() == 2);
  CHECK(t.missing_until(104) == 2);
}

TEST_CASE("bench fanout seq tracking: jumps past the window, old seqs, no known start") {
  seq_tracker t(0);
  t.on_seq(0);
  t.on_seq(5000);  // a jump of more than the window: the window is cleared
  CHECK(t.missing() == 4999);
  t.on_seq(4999);  // within the window, not seen: a late arrival
  CHECK(t.reorders() == 1);
  CHECK(t.missing() == 4998);
  t.on_seq(10);  // older than the window: cannot be told, counted as a reorder
  CHECK(t.reorders() == 2);
  CHECK(t.duplicates() == 0);

  seq_tracker first_missing(0);
  first_missing.on_seq(3);  // the publisher starts at 0: 0..2 are gaps
  CHECK(first_missing.missing() == 3);

  seq_tracker joined;  // the server publishes by itself: the first seq received is the base
  CHECK(joined.missing_until(10) == 0);
  joined.on_seq(7000);
  joined.on_seq(7001);
  joined.on_seq(7003);
  CHECK(joined.started());
  CHECK(joined.unique() == 3);
  CHECK(joined.missing() == 1);
  joined.on_seq(6999);  // before the base: not a duplicate, not a gap
  CHECK(joined.reorders() == 1);
  CHECK(joined.missing() == 1);

  seq_tracker wrap(0);  // every seq once over many windows: exact, no false duplicates
  for (uint64_t s = 0; s < 10 * seq_tracker::window; s += 2) wrap.on_seq(s);
  for (uint64_t s = 10 * seq_tracker::window - 1; s > 9 * seq_tracker::window; s -= 2) {
    wrap.on_seq(s);
  }
  CHECK(wrap.duplicates() == 0);
  CHECK(wrap.missing() == 10 * seq_tracker::window / 2 - seq_tracker::window / 2);
}

TEST_CASE("bench fanout payloads: the tick, the publish API request, the WSE messages") {
  CHECK(
      fanout_tick_json(5, 1760000000000000) ==
      R"({"t":"fanout_tick","p":{"seq":5,"ts_us":1760000000000000,"s":"ES","px":5234.75,"q":2}})");
  std::string body = publish_body("bench_topic", false, 10, 3, 42);
  CHECK(body.front() == '[');
  CHECK(body.back() == ']');
  CHECK(body.find(
            R"([{"topic":"bench_topic","message":{"t":"fanout_tick","p":{"seq":10,"ts_us":42,)") ==
        0);
  CHECK(body.find(R"("seq":12,)") != std::string::npos);
  CHECK(body.find(R"("seq":13,)") == std::string::npos);
  CHECK(body.find("}},{\"topic\"") != std::string::npos);  // items comma-separated
  std::string all = publish_body("ignored", true, 0, 2, 1);
  CHECK(all.find(R"([{"broadcast":true,"message":{"t":"fanout_tick")") == 0);
  CHECK(all.find("ignored") == std::string::npos);

  std::string req = publish_request("127.0.0.1:5006", "k3y-0123456789abcdef", body);
  size_t head_end = req.find("\r\n\r\n");
  REQUIRE(head_end != std::string::npos);
  std::string head = req.substr(0, head_end + 4);
  CHECK(head.rfind("POST /api/publish HTTP/1.1\r\n", 0) == 0);
  CHECK(head.find("\r\nHost: 127.0.0.1:5006\r\n") != std::string::npos);
  CHECK(head.find("\r\nAuthorization: Bearer k3y-0123456789abcdef\r\n") != std::string::npos);
  CHECK(head.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n") !=
        std::string::npos);
  CHECK(head.find("Connection:") == std::string::npos);  // 1.1: keep-alive by default
  CHECK(req.substr(head_end + 4) == body);

  CHECK(
      wse_publish_json("bench_topic", 7, 9) ==
      R"({"c":"WSE","t":"publish","p":{"topic":"bench_topic","message":{"t":"fanout_tick","p":{"seq":7,"ts_us":9,"s":"ES","px":5234.75,"q":2}}},"v":1})");
  CHECK(
      subscribe_json("bench_topic") ==
      R"({"c":"WSE","t":"subscription_update","p":{"action":"subscribe","topics":["bench_topic"]},"v":1})");
}

TEST_CASE("bench fanout HTTP answers: pipelined, incomplete, 503 with accepted, refused shapes") {
  std::string two =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
      "{\"accepted\":100}\n"
      "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 35\r\n\r\n"
      "{\"error\":\"inbox full\",\"accepted\":7}";
  http_response a = parse_http_response(two);
  REQUIRE(a.state == http_parse::ok);
  CHECK(a.status == 200);
  CHECK(a.body == "{\"accepted\":100}\n");
  CHECK(json_number_field(a.body, "accepted") == 100);
  CHECK_FALSE(a.close);
  http_response b = parse_http_response(std::string_view(two).substr(a.bytes));
  REQUIRE(b.state == http_parse::ok);
  CHECK(b.status == 503);
  CHECK(json_number_field(b.body, "accepted") == 7);
  CHECK(a.bytes + b.bytes == two.size());
  // Every cut before the end of the first answer is incomplete, never wrong.
  for (size_t cut = 0; cut < a.bytes; ++cut) {
    CHECK(parse_http_response(std::string_view(two).substr(0, cut)).state ==
          http_parse::incomplete);
  }
  CHECK(parse_http_response(std::string_view(two).substr(0, a.bytes)).state == http_parse::ok);

  CHECK(parse_http_response("HTTP/1.1 200 OK\r\n\r\n").state == http_parse::bad);  // no length
  CHECK(parse_http_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").state ==
        http_parse::bad);
  CHECK(parse_http_response("SMTP 220 hello\r\nContent-Length: 0\r\n\r\n").state ==
        http_parse::bad);
  CHECK(parse_http_response(std::string(20000, 'x'), 16384).state == http_parse::bad);
  http_response closing = parse_http_response(
      "HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}");
  CHECK(closing.state == http_parse::ok);
  CHECK(closing.status == 401);
  CHECK(closing.close);
  CHECK(parse_http_response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
  CHECK_FALSE(json_number_field("{\"error\":\"x\"}", "accepted").has_value());
}

TEST_CASE("bench fanout received ticks: seq and ts_us found by scanning, others refused") {
  auto t = scan_tick(
      R"({"c":"U","t":"fanout_tick","p":{"seq":123456,"ts_us":1760000000000001,"s":"ES","px":5234.75,"q":2}})");
  REQUIRE(t.has_value());
  CHECK(t->seq == 123456);
  CHECK(t->ts_us == 1760000000000001);
  auto spaced = scan_tick(R"({"t": "fanout_tick", "p": {"ts_us": 5, "seq": 9}})");
  REQUIRE(spaced.has_value());  // spaces after the colons are skipped
  CHECK(spaced->seq == 9);
  CHECK(spaced->ts_us == 5);
  CHECK_FALSE(scan_tick(std::string(64, ' ') + R"({"t":"fanout_tick","p":{"seq":1,"ts_us":1}})"));
  auto other_order = scan_tick(R"({"t":"fanout_tick","p":{"ts_us": 5,"seq": 9}})");
  REQUIRE(other_order.has_value());
  CHECK(other_order->seq == 9);
  CHECK(other_order->ts_us == 5);
  // The fixed shapes (a prefix compare) agree with the general scan, cut anywhere.
  std::string ours =
      R"({"c":"U","t":"fanout_tick","p":{"seq":42,"ts_us":1760000000000009,"s":"ES","px":5234.75,"q":2}})";
  std::string plain = R"({"t":"fanout_tick","p":{"seq":43,"ts_us":7,"s":"ES"}})";
  REQUIRE(wsed::bench::detail::fixed_shape_tick(ours).has_value());
  CHECK(wsed::bench::detail::fixed_shape_tick(ours)->ts_us == 1760000000000009);
  REQUIRE(wsed::bench::detail::fixed_shape_tick(plain).has_value());
  CHECK(wsed::bench::detail::fixed_shape_tick(plain)->seq == 43);
  CHECK_FALSE(
      wsed::bench::detail::fixed_shape_tick(R"({"t":"fanout_tick","p":{"ts_us":1,"seq":2}})"));
  // With wsed --recovery the stamp comes first.
  std::string stamped =
      R"({"tp":"bench_topic","e":"5a1c09e2","o":77,"c":"U","t":"fanout_tick","p":{"seq":44,"ts_us":9}})";
  REQUIRE(wsed::bench::detail::fixed_shape_tick(stamped).has_value());
  CHECK(wsed::bench::detail::fixed_shape_tick(stamped)->seq == 44);
  CHECK(wsed::bench::detail::fixed_shape_tick(stamped)->ts_us == 9);
  for (size_t cut = 0; cut < stamped.find("9}}"); ++cut)
    CHECK_FALSE(wsed::bench::detail::fixed_shape_tick(std::string_view(stamped).substr(0, cut)));
  for (const std::string& m : {ours, plain}) {
    for (size_t cut = 0; cut <= m.size(); ++cut) {
      std::string_view part(m.data(), cut);
      auto fast = wsed::bench::detail::fixed_shape_tick(part);
      if (fast) {                 // whenever the fast path answers, the general scan says the same
        std::string spaced(" ");  // not the fixed shape
        spaced.append(part);
        auto general = scan_tick(spaced);
        REQUIRE(general.has_value());
        CHECK(general->seq == fast->seq);
        CHECK(general->ts_us == fast->ts_us);
      }
    }
  }
  CHECK_FALSE(scan_tick(R"({"c":"WSE","t":"subscription_update","p":{"success":true}})"));
  CHECK_FALSE(scan_tick(R"({"t":"fanout_tick","p":{"seq":1}})"));  // no ts_us
  CHECK_FALSE(scan_tick(R"({"t":"fanout_tick","p":{"seq":"x","ts_us":1}})"));
  CHECK_FALSE(scan_tick(""));
}

TEST_CASE("bench fanout /metrics: a labelled series summed over the shards, absent series") {
  std::string text =
      "# HELP wsed_slow_consumer_total Messages that met a full queue.\n"
      "wsed_slow_consumer_total{shard=\"0\",action=\"drop\"} 3\n"
      "wsed_slow_consumer_total{shard=\"1\",action=\"drop\"} 5\n"
      "wsed_slow_consumer_total{shard=\"1\",action=\"disconnect\"} 2\n"
      "wsed_slow_consumer_total_other{shard=\"0\",action=\"drop\"} 100\n"
      "wsed_fanout_deliveries_total{shard=\"0\"} 1e+06\n"
      "wsed_fanout_deliveries_total{shard=\"10\"} 5e+05\n"
      "wsed_up 1\n";
  using one = std::array<std::string_view, 1>;
  using two = std::array<std::string_view, 2>;
  CHECK(metric_value(text, "wsed_slow_consumer_total", one{"action=\"drop\""}) ==
        8);  // summed over shards 0 and 1; the _other family is not this one
  CHECK(metric_value(text, "wsed_slow_consumer_total", one{"action=\"disconnect\""}) == 2);
  CHECK(metric_value(text, "wsed_slow_consumer_total", two{"shard=\"1\"", "action=\"drop\""}) == 5);
  CHECK(metric_value(text, "wsed_fanout_deliveries_total", std::array<std::string_view, 0>{}) ==
        1.5e6);
  CHECK(metric_value(text, "wsed_fanout_deliveries_total", one{"shard=\"1\""}) ==
        std::nullopt);  // shard="1" is not shard="10"
  CHECK(metric_value(text, "wsed_up", std::array<std::string_view, 0>{}) == 1);
  CHECK_FALSE(metric_value(text, "wsed_absent", std::array<std::string_view, 0>{}).has_value());
}
