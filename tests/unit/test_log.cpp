// tests/unit/test_log.cpp: engine/log's pure parts: JSON / text escaping (control characters,
// quotes, invalid UTF-8), the line formats (parsed back with simdjson), timestamps, level and
// format names, and the repeat limiter (burst, window, report, eviction, bounded table, threads).
// Owns: nothing. Thread: the test runner (and the threads of the concurrency case).
#include <doctest/doctest.h>

#include <simdjson.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "engine/log.hpp"
#include "proto/utf8.hpp"

namespace L = wsed::log;

namespace {

std::string escaped(std::string_view s, bool quote_chars = true) {
  std::string out;
  L::append_escaped(out, s, quote_chars);
  return out;
}

// The line as simdjson sees it: an object with these string members.
std::string member(const std::string& line, const char* key) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  auto err = parser.parse(line).get(doc);
  REQUIRE_MESSAGE(!err, line);
  std::string_view v;
  REQUIRE_MESSAGE(!doc[key].get(v), key);
  return std::string(v);
}

}  // namespace

TEST_CASE("log: escaping of control characters, quotes and backslashes") {
  CHECK(escaped("plain text") == "plain text");
  CHECK(escaped("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(escaped("l1\nl2\r\t") == "l1\\nl2\\r\\t");
  CHECK(escaped(std::string_view("\x00\x01\x1f\x7f", 4)) == "\\u0000\\u0001\\u001f\\u007f");
  CHECK(escaped(std::string("\x1b[31mred", 8)) == "\\u001b[31mred");
  // Text format: quotes stay, control characters are still escaped (no forged lines).
  CHECK(escaped("say \"hi\"\nforged", false) == "say \"hi\"\\nforged");
}

TEST_CASE("log: valid UTF-8 passes, each invalid byte becomes U+FFFD") {
  CHECK(escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") ==
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CHECK(escaped("\xff") == "\\ufffd");
  CHECK(escaped("a\xc3") == "a\\ufffd");                      // truncated sequence at the end
  CHECK(escaped("\xc0\xaf") == "\\ufffd\\ufffd");             // overlong '/'
  CHECK(escaped("\xe0\x80\xaf") == "\\ufffd\\ufffd\\ufffd");  // overlong, 3 bytes
  CHECK(escaped("\xed\xa0\x80") == "\\ufffd\\ufffd\\ufffd");  // a surrogate
  CHECK(escaped("\xf4\x90\x80\x80") == "\\ufffd\\ufffd\\ufffd\\ufffd");  // above U+10FFFF
  CHECK(escaped("\xe2\x28\xa1") == "\\ufffd(\\ufffd");                   // bad continuation
  // Whatever the bytes, the escaped text is valid UTF-8 without a raw control character.
  std::string all;
  for (int i = 0; i < 256; ++i)
    for (int j = 0; j < 256; j += 7) {
      all += char(i);
      all += char(j);
    }
  std::string e = escaped(all);
  CHECK(wsed::proto::valid_utf8(e));
  for (char c : e) CHECK_FALSE((uint8_t(c) < 0x20 || c == 0x7f));
}

TEST_CASE("log: a JSON line parses and keeps every field") {
  std::string nasty("tab\there \"quoted\" \\ back\nnew \xff end");
  std::string line =
      L::format_line(L::format::json, 1764768000123, L::level::warn, "handshake_rejected", nasty,
                     {{"status", uint16_t(400)},
                      {"delta", -5},
                      {"ok", false},
                      {"reason", "bad_request"},
                      {"empty", ""}});
  REQUIRE(line.back() == '\n');
  CHECK(line.find('\n') == line.size() - 1);  // one line
  line.pop_back();
  CHECK(member(line, "ts") == "2025-12-03T13:20:00.123Z");
  CHECK(member(line, "level") == "warn");
  CHECK(member(line, "event") == "handshake_rejected");
  CHECK(member(line, "msg") == "tab\there \"quoted\" \\ back\nnew \xef\xbf\xbd end");
  CHECK(member(line, "reason") == "bad_request");
  CHECK(line.find("\"status\":400") != std::string::npos);
  CHECK(line.find("\"delta\":-5") != std::string::npos);
  CHECK(line.find("\"ok\":false") != std::string::npos);
  CHECK(line.find("empty") == std::string::npos);  // empty strings are left out
  CHECK(line.rfind("{\"ts\":", 0) == 0);
}

TEST_CASE("log: long values are cut, the line stays valid JSON") {
  std::string big(5000, 'x');
  big[1023] = '\n';
  std::string line = L::format_line(L::format::json, 0, L::level::info, "e", big, {{"v", big}});
  line.pop_back();
  std::string msg = member(line, "msg");
  CHECK(msg.size() == L::value_bytes_max + 3);
  CHECK(msg.ends_with("\n..."));
  CHECK(member(line, "v") == msg);
}

TEST_CASE("log: the text format") {
  std::string line = L::format_line(
      L::format::text, 0, L::level::error, "reload", "SIGHUP: reload failed\nforged line",
      {{"what", "jwt"}, {"ok", false}, {"path", "/a b/c"}, {"n", 3u}});
  CHECK(line ==
        "1970-01-01T00:00:00.000Z error reload: SIGHUP: reload failed\\nforged line what=jwt "
        "ok=false path=\"/a b/c\" n=3\n");
}

TEST_CASE("log: timestamps, level and format names") {
  std::string ts;
  L::append_rfc3339_ms(ts, 951782400999);  // 2000-02-29 (a leap day), last millisecond
  CHECK(ts == "2000-02-29T00:00:00.999Z");
  for (auto l : {L::level::debug, L::level::info, L::level::warn, L::level::error})
    CHECK(L::parse_level(L::name_of(l)) == l);
  CHECK(L::parse_level("warning") == L::level::warn);
  CHECK_FALSE(L::parse_level("verbose"));
  for (auto f : {L::format::auto_, L::format::json, L::format::text})
    CHECK(L::parse_format(L::name_of(f)) == f);
  CHECK_FALSE(L::parse_format("xml"));
}

TEST_CASE("log: the repeat limiter prints a burst per window, then reports the rest") {
  L::repeat_limiter lim(1000, 3);
  L::repeat_limiter::report r;
  int printed = 0;
  for (int i = 0; i < 100; ++i) printed += lim.admit(L::level::info, "bad", "k", 10 + i, &r);
  CHECK(printed == 3);
  CHECK(r.suppressed == 0);
  // Another key of the same event, and another event, have windows of their own.
  CHECK(lim.admit(L::level::info, "bad", "other", 50, &r));
  CHECK(lim.admit(L::level::info, "worse", "k", 50, &r));
  // Before the window ends, expire reports nothing.
  int reports = 0;
  lim.expire(900, false, [&](const L::repeat_limiter::report&) { ++reports; });
  CHECK(reports == 0);
  // The next line after the window: printed, with the 97 suppressed reported first.
  CHECK(lim.admit(L::level::warn, "bad", "k", 1010, &r));
  CHECK(r.suppressed == 97);
  CHECK(std::string(r.event) == "bad");
  CHECK(r.lvl == L::level::info);
  // A window that ends quietly is reported by expire, once.
  L::repeat_limiter::report r2;
  for (int i = 0; i < 10; ++i) lim.admit(L::level::warn, "bad", "k", 1020 + i, &r2);
  CHECK(r2.suppressed == 0);
  std::vector<uint64_t> counts;
  lim.expire(2100, false,
             [&](const L::repeat_limiter::report& x) { counts.push_back(x.suppressed); });
  CHECK(counts == std::vector<uint64_t>{8});
  counts.clear();
  lim.expire(5000, true,
             [&](const L::repeat_limiter::report& x) { counts.push_back(x.suppressed); });
  CHECK(counts.empty());
  // Force reports a window that has not ended (at exit).
  for (int i = 0; i < 5; ++i) lim.admit(L::level::warn, "exit", "", 6000, &r2);
  lim.expire(6001, true,
             [&](const L::repeat_limiter::report& x) { counts.push_back(x.suppressed); });
  CHECK(counts == std::vector<uint64_t>{2});
}

TEST_CASE("log: the limiter's table is bounded; an evicted window's count is reported") {
  L::repeat_limiter lim(1000000, 1);
  uint64_t evicted = 0, printed = 0;
  const int keys = 4 * int(L::repeat_limiter::slot_count);
  for (int round = 0; round < 3; ++round)
    for (int k = 0; k < keys; ++k) {
      L::repeat_limiter::report r;
      std::string key = "key";
      key += std::to_string(k);
      printed += lim.admit(L::level::info, "ev", key, 1, &r);
      evicted += r.suppressed;
    }
  uint64_t left = 0;
  lim.expire(2, true, [&](const L::repeat_limiter::report& x) { left += x.suppressed; });
  // Every occurrence is either printed or counted exactly once (reported on eviction or at the
  // end).
  CHECK(printed + evicted + left == uint64_t(3 * keys));
  CHECK(printed >= uint64_t(keys));  // each key printed at least its first line
}

TEST_CASE("log: the limiter from many threads counts every occurrence once") {
  L::repeat_limiter lim(1000000, 5);
  std::atomic<uint64_t> printed{0}, reported{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) {
        L::repeat_limiter::report r;
        std::string key = "k";
        key += std::to_string((i + t) % 7);
        if (lim.admit(L::level::info, "flood", key, 1, &r)) printed.fetch_add(1);
        reported.fetch_add(r.suppressed);
      }
    });
  for (auto& th : threads) th.join();
  lim.expire(2, true,
             [&](const L::repeat_limiter::report& x) { reported.fetch_add(x.suppressed); });
  CHECK(printed.load() == 7 * 5);
  CHECK(printed.load() + reported.load() == 4 * 20000);
}
