// tests/unit/test_recovery.cpp: engine/recovery (the per-topic sequencer and histories) and the
// Redis-side names of recovery (engine/redis_names: keys in the channel's slot).
// Owns: nothing. Thread: the test runner, plus the threads of the one concurrency test. Never
// reads the clock (every call gets its own now).
#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/recovery.hpp"
#include "engine/redis_names.hpp"
#include "proto/wse_builder.hpp"
#include "proto/wse_envelope.hpp"

using namespace wsed::engine;

namespace {

struct stamped {
  std::string topic;
  uint32_t epoch = 0;
  uint64_t offset = 0;
  std::string json;
};

stamped read(const wsed::fanout::frame* f) {
  stamped s;
  std::string_view raw;
  REQUIRE(wsed::proto::wse_parse_recovery_stamp(f->payload(), raw, s.epoch, s.offset));
  s.topic = std::string(raw);
  s.json = std::string(f->payload());
  return s;
}

// Sequences json on topic; the routed frame is returned read.
stamped publish(recovery_store& r, std::string_view topic, std::string_view json, uint64_t now) {
  stamped got;
  bool ok = r.sequence(topic, json, now, [&](wsed::fanout::frame* f) {
    got = read(f);
    return true;
  });
  REQUIRE(ok);
  return got;
}

std::vector<stamped> replay(recovery_store& r, std::string_view topic, recovery_position at,
                            uint64_t now, recovery_answer& a) {
  std::vector<stamped> out;
  a = r.replay(topic, at, now, [&](wsed::fanout::frame* f) {
    out.push_back(read(f));
    return true;
  });
  return out;
}

recovery_position at(uint32_t epoch, uint64_t offset) {
  recovery_position p;
  p.has_epoch = p.has_offset = true;
  p.epoch = epoch;
  p.offset = offset;
  return p;
}

// A frame stamped elsewhere (as Redis would), handed to append_stamped; 1 when it was routed.
int keep_stamped(recovery_store& r, std::string_view topic, uint32_t epoch, uint64_t offset) {
  std::string json;
  wsed::proto::wse_append_recovery_stamp(json, topic, epoch, offset);
  json += R"("c":"U"})";
  wsed::fanout::frame* f = wsed::fanout::make_text_frame(topic, json);
  REQUIRE(f);
  int routed = 0;
  CHECK(r.append_stamped(topic, f, epoch, offset, 1, [&](wsed::fanout::frame*) {
    ++routed;
    return true;
  }));
  wsed::fanout::release(f);
  return routed;
}

recovery_options small(uint32_t buffer = 16, uint32_t max_replay = 500) {
  recovery_options o;
  o.buffer = buffer;
  o.max_replay = max_replay;
  o.seed = 42;
  return o;
}

}  // namespace

TEST_CASE("recovery: stamps are dense per topic and byte-exact") {
  recovery_store r(small());
  stamped a0 = publish(r, "a", R"({"c":"U","t":"x","p":{"n":0}})", 1);
  stamped a1 = publish(r, "a", R"({"c":"U","t":"x","p":{"n":1}})", 2);
  stamped b0 = publish(r, "b", R"({"c":"U","t":"x"})", 3);
  stamped e0 = publish(r, "empty", "{}", 4);
  CHECK(a0.offset == 0);
  CHECK(a1.offset == 1);
  CHECK(a0.epoch == a1.epoch);
  CHECK(b0.offset == 0);
  CHECK(b0.epoch != a0.epoch);  // one epoch per history (random, here seeded)
  char e[9];
  std::snprintf(e, sizeof e, "%08x", a1.epoch);
  CHECK(a1.json ==
        std::string(R"({"tp":"a","e":")") + e + R"(","o":1,"c":"U","t":"x","p":{"n":1}})");
  CHECK(e0.json.ends_with(R"(,"o":0})"));
  stamped q = publish(r, "q\"\\", R"({"c":"U"})", 5);
  CHECK(q.json.starts_with(R"({"tp":"q\"\\","e":")"));
  CHECK(r.current().topics == 4);
  CHECK(r.current().frames == 5);
  CHECK(r.sequenced() == 5);
}

TEST_CASE("recovery: a refused route takes no offset and leaves no history") {
  recovery_store r(small());
  CHECK_FALSE(r.sequence("a", R"({"c":"U"})", 1, [](wsed::fanout::frame*) { return false; }));
  CHECK(r.current().topics == 0);
  stamped a0 = publish(r, "a", R"({"c":"U"})", 2);
  CHECK(a0.offset == 0);
  CHECK_FALSE(r.sequence("a", R"({"c":"U"})", 3, [](wsed::fanout::frame*) { return false; }));
  CHECK(publish(r, "a", R"({"c":"U"})", 4).offset == 1);
  CHECK_FALSE(r.sequence("a", "not json", 5, [](wsed::fanout::frame*) { return true; }));
}

TEST_CASE("recovery: replay answers") {
  recovery_store r(small(16, 10));
  recovery_answer a;
  // No history.
  CHECK(replay(r, "a", at(1, 0), 1, a).empty());
  CHECK_FALSE(a.has_history);
  CHECK(a.offset == 0);
  uint32_t epoch = 0;
  for (int i = 0; i < 12; ++i) epoch = publish(r, "a", R"({"c":"U"})", 10 + i).epoch;
  // Recovered: offsets after the given one, in order.
  std::vector<stamped> got = replay(r, "a", at(epoch, 5), 30, a);
  CHECK(a.has_history);
  CHECK(a.recovered);
  CHECK(a.epoch == epoch);
  CHECK(a.offset == 11);
  REQUIRE(got.size() == 6);
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i].offset == 6 + i);
  CHECK(a.count == 6);
  // Up to date: recovered, nothing to give.
  CHECK(replay(r, "a", at(epoch, 11), 30, a).empty());
  CHECK(a.recovered);
  CHECK(a.count == 0);
  // Another epoch, a future offset, no position, a backlog over max_replay (11 > 10): not
  // recovered, nothing given, never truncated.
  for (recovery_position p : {at(epoch + 1, 5), at(epoch, 12), recovery_position{}, at(epoch, 0)}) {
    CHECK(replay(r, "a", p, 30, a).empty());
    CHECK(a.has_history);
    CHECK_FALSE(a.recovered);
    CHECK(a.count == 0);
    CHECK(a.offset == 11);
    CHECK(a.epoch == epoch);
  }
  // Too old: 20 published, 16 kept (offsets 4..19).
  for (int i = 0; i < 8; ++i) publish(r, "a", R"({"c":"U"})", 40 + i);
  CHECK(replay(r, "a", at(epoch, 2), 50, a).empty());
  CHECK_FALSE(a.recovered);
  CHECK(replay(r, "a", at(epoch, 10), 50, a).size() == 9);
  CHECK(a.recovered);
  CHECK(r.current().frames == 16);
  // A send that fails stops the replay: not recovered, count says what went.
  int sends = 0;
  a = r.replay("a", at(epoch, 12), 50, [&](wsed::fanout::frame*) { return ++sends < 3; });
  CHECK_FALSE(a.recovered);
  CHECK(a.count == 2);
  CHECK(r.covers("a", at(epoch, 12), 50));
  CHECK_FALSE(r.covers("a", at(epoch, 1), 50));
}

TEST_CASE("recovery: TTL and memory budget drop whole topics, a new epoch follows") {
  recovery_options o = small();
  o.ttl_ms = 1000;
  o.memory_bytes = 8192;
  recovery_store r(o);
  uint32_t e1 = publish(r, "a", R"({"c":"U"})", 0).epoch;
  r.expire(999);
  CHECK(r.current().topics == 1);
  r.expire(1000);
  CHECK(r.current().topics == 0);
  CHECK(r.expired() == 1);
  stamped again = publish(r, "a", R"({"c":"U"})", 1001);
  CHECK(again.offset == 0);
  CHECK(again.epoch != e1);
  // Budget: topics written least recently go first; the topic being written stays.
  std::string big = R"({"c":"U","p":")" + std::string(1500, 'x') + R"("})";
  for (int t = 0; t < 10; ++t) {
    std::string name = "t";
    name += std::to_string(t);
    publish(r, name, big, 1100 + t);
  }
  CHECK(r.current().bytes <= o.memory_bytes + 2048);
  CHECK(r.evicted() > 0);
  recovery_answer a;
  replay(r, "a", at(again.epoch, 0), 1200, a);
  CHECK_FALSE(a.has_history);  // the oldest written: dropped
  replay(r, "t9", at(0, 0), 1200, a);
  CHECK(a.has_history);  // the newest: kept
  r.forget("t9");
  replay(r, "t9", at(0, 0), 1200, a);
  CHECK_FALSE(a.has_history);
  r.forget_all();
  CHECK(r.current().topics == 0);
  CHECK(r.current().bytes == 0);
  CHECK(r.current().frames == 0);
}

TEST_CASE("recovery: a cache of stamped frames keeps only a contiguous run") {
  recovery_store r(small());
  auto keep = [&](uint32_t epoch, uint64_t offset) { keep_stamped(r, "a", epoch, offset); };
  keep(7, 40);
  keep(7, 41);
  recovery_answer a;
  CHECK(replay(r, "a", at(7, 39), 2, a).size() == 2);
  CHECK(a.recovered);
  CHECK(a.offset == 41);
  keep(7, 45);  // a hole (44..42 never came): the run starts again at 45
  replay(r, "a", at(7, 41), 2, a);
  CHECK_FALSE(a.recovered);
  CHECK(a.offset == 45);
  keep(9, 0);  // another epoch
  replay(r, "a", at(9, 0), 2, a);
  CHECK(a.recovered);
  CHECK(a.epoch == 9);
  CHECK(r.current().frames == 1);
}

TEST_CASE("recovery: concurrent publishers on one topic get dense offsets, routed in order") {
  recovery_store r(small(1024));
  constexpr int threads = 4, each = 2000;
  std::vector<uint64_t> routed;  // offsets in route order (route runs under the store's lock)
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < each; ++i)
        r.sequence("hot", R"({"c":"U"})", 1, [&](wsed::fanout::frame* f) {
          routed.push_back(read(f).offset);
          return true;
        });
    });
  for (auto& t : ts) t.join();
  REQUIRE(routed.size() == size_t(threads * each));
  for (size_t i = 0; i < routed.size(); ++i) CHECK(routed[i] == i);
}

TEST_CASE("redis recovery keys live in the channel's slot") {
  std::string meta, log;
  for (std::string channel : {"wse:news", "wse:a{b}c", "wse:{}", "wse:x{", "wse:@@user"}) {
    wsed::engine::redis::recovery_keys("wse:", channel, meta, log);
    CHECK(meta.starts_with("wse:{"));
    CHECK(meta.ends_with("m"));
    CHECK(log.ends_with("l"));
    CHECK(wsed::engine::redis::key_slot(meta) == wsed::engine::redis::key_slot(channel));
    CHECK(wsed::engine::redis::key_slot(log) == wsed::engine::redis::key_slot(channel));
  }
}

TEST_CASE("redis queue group and presence keys live in the channel's slot, apart") {
  namespace r = wsed::engine::redis;
  std::string m, i, n, d, t, c, p;
  for (std::string channel : {"wse:jobs", "wse:a{b}c", "wse:{}", "wse:x{"}) {
    r::queue_group_keys("wse:", channel, m, i, n);
    r::presence_keys("wse:", channel, d, t, c, p);
    std::set<std::string> all{m, i, n, d, t, c, p};
    CHECK(all.size() == 7);
    for (const std::string& k : all) CHECK(r::key_slot(k) == r::key_slot(channel));
    CHECK(m == "wse:{" + m.substr(5, m.find('}') - 5) + "}q:" + channel + "m");
    CHECK(d.ends_with("}p:" + channel + "d"));
  }
}

TEST_CASE("recovery: a second copy of a cached offset is not routed again") {
  recovery_store r(small());
  int routed = 0;
  auto keep = [&](uint32_t epoch, uint64_t offset) {
    routed += keep_stamped(r, "a", epoch, offset);
  };
  keep(7, 0);
  keep(7, 1);
  keep(7, 1);  // a copy (an exact and a glob subscription, a redelivery)
  keep(7, 0);
  CHECK(routed == 2);
  keep(7, UINT64_MAX - 1 + 1);  // no next offset after it: routed, never kept
  CHECK(r.current().frames == 2);
  recovery_answer a;
  CHECK(replay(r, "a", at(7, 0), 2, a).size() == 1);
  CHECK(a.recovered);
}

TEST_CASE("recovery: publications whose own keys would override the stamp") {
  using wsed::proto::wse_has_stamp_keys;
  CHECK_FALSE(wse_has_stamp_keys(R"({"c":"U","t":"x","p":{"tp":1,"e":2,"o":3}})"));
  CHECK_FALSE(wse_has_stamp_keys(R"({})"));
  CHECK_FALSE(wse_has_stamp_keys(R"( { "top" : [1, {"o": 2}], "ee": "o" } )"));
  CHECK(wse_has_stamp_keys(R"({"c":"U","tp":"x"})"));
  CHECK(wse_has_stamp_keys(R"({"e":"00000000"})"));
  CHECK(wse_has_stamp_keys(R"({"p":{"a":[1,2,"}"]}, "o" :5})"));
  CHECK(wse_has_stamp_keys(R"({"\u006f":5})"));  // an escape could spell one
}
