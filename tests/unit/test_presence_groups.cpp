// tests/unit/test_presence_groups.cpp: fanout/presence and fanout/queue_groups: presence join /
// update / leave transitions with several connections per user, limits, the members and stats
// queries byte for byte, the totals; queue groups' round robin (exact shares, skipping, nobody can
// take, fairness across removals, several groups per topic), the info query, memory returned;
// both shared by 4 threads and checked against per-thread models afterwards.
// Owns: nothing. Thread: the test runner, plus the std::threads a case starts and joins. Every
// case is named "fanout: ..." so `--test-case='fanout*'` (tests/run_all.py's unit[tsan] filter)
// runs them under TSan too.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fanout/presence.hpp"
#include "fanout/queue_groups.hpp"
#include "proto/wse_builder.hpp"

using namespace wsed;
using namespace wsed::fanout;

namespace {

std::string members_of(const presence_registry& r, std::string_view topic) {
  std::string out;
  r.members_json(topic, out);
  return out;
}

std::string info_of(const queue_groups& q, std::string_view topic) {
  std::string out;
  q.info_json(topic, out);
  return out;
}

const auto take_all = [](const qg_member&) { return true; };

// One pick on topic where only one group exists: the chosen member's slot, or -1.
int pick_slot(queue_groups& q, std::string_view topic) {
  int slot = -1;
  q.pick(topic, take_all, [&](std::string_view, const qg_member* m) {
    if (m != nullptr) slot = static_cast<int>(m->slot);
  });
  return slot;
}

}  // namespace

TEST_CASE("fanout: presence join, update, leave with two connections of one user") {
  presence_registry r;
  CHECK(r.join("room", "u1", 10, R"({"s":"on"})") == presence_change::joined);
  CHECK(r.join("room", "u1", 10, R"({"s":"on"})") == presence_change::unchanged);  // repeat
  CHECK(r.stats("room").users == 1);
  CHECK(r.stats("room").connections == 1);
  // A second connection of the same user with the same data: nothing to emit.
  CHECK(r.join("room", "u1", 11, R"({"s":"on"})") == presence_change::unchanged);
  CHECK(r.stats("room").users == 1);
  CHECK(r.stats("room").connections == 2);
  // A third with other data: the latest data wins.
  CHECK(r.join("room", "u1", 12, R"({"s":"away"})") == presence_change::updated);
  CHECK(r.stats("room").connections == 3);
  CHECK(members_of(r, "room") == R"({"u1":{"data":{"s":"away"},"connections":3}})");
  CHECK(r.update("room", "u1", 11, R"({"s":"away"})") == presence_change::unchanged);
  CHECK(r.update("room", "u1", 11, R"({"s":"busy"})") == presence_change::updated);
  CHECK(r.update("room", "u1", 99, R"({"s":"x"})") == presence_change::not_member);
  CHECK(r.update("room", "u2", 11, R"({"s":"x"})") == presence_change::not_member);
  CHECK(r.update("hall", "u1", 11, R"({"s":"x"})") == presence_change::not_member);
  CHECK(r.update("room", "u1", 11, "") == presence_change::updated);  // empty = {}
  CHECK(members_of(r, "room") == R"({"u1":{"data":{},"connections":3}})");

  std::string data = "untouched";
  CHECK(r.leave("room", "u1", 99, &data) == presence_change::not_member);
  CHECK(r.leave("room", "u2", 10, &data) == presence_change::not_member);
  CHECK(r.leave("hall", "u1", 10, &data) == presence_change::not_member);
  CHECK(r.leave("room", "u1", 10, &data) == presence_change::unchanged);
  CHECK(r.leave("room", "u1", 10, &data) == presence_change::not_member);  // already left
  CHECK(r.leave("room", "u1", 12) == presence_change::unchanged);
  CHECK(data == "untouched");
  CHECK(r.stats("room").connections == 1);
  CHECK(r.update("room", "u1", 12, R"({"a":1})") == presence_change::not_member);
  CHECK(r.update("room", "u1", 11, R"({"a":1})") == presence_change::updated);
  CHECK(r.leave("room", "u1", 11, &data) == presence_change::left);
  CHECK(data == R"({"a":1})");
  CHECK(r.stats("room").users == 0);
  CHECK(r.stats("room").connections == 0);
  CHECK(members_of(r, "room") == "{}");
  size_t topics = 9, bytes = 9;
  const presence_stats t = r.totals(&topics, &bytes);
  CHECK(t.users == 0);
  CHECK(t.connections == 0);
  CHECK(topics == 0);
  CHECK(bytes == 0);
  // The user comes back: joined again.
  CHECK(r.join("room", "u1", 11, "") == presence_change::joined);
  CHECK(members_of(r, "room") == R"({"u1":{"data":{},"connections":1}})");
}

TEST_CASE("fanout: presence limits: members per topic, data bytes") {
  presence_limits limits;
  limits.data_bytes_max = 16;
  limits.members_max = 2;
  presence_registry r(limits);
  CHECK(r.limits().members_max == 2);
  const std::string at_max = R"({"k":")" + std::string(8, 'x') + R"("})";  // 16 bytes
  REQUIRE(at_max.size() == 16);
  const std::string over = R"({"k":")" + std::string(9, 'x') + R"("})";  // 17 bytes
  CHECK(r.join("t", "a", 1, over) == presence_change::data_too_large);
  CHECK(r.stats("t").users == 0);
  CHECK(r.totals().users == 0);
  CHECK(r.join("t", "a", 1, at_max) == presence_change::joined);
  CHECK(r.join("t", "a", 2, over) == presence_change::data_too_large);  // nothing changed
  CHECK(r.stats("t").connections == 1);
  CHECK(r.update("t", "a", 1, over) == presence_change::data_too_large);
  CHECK(r.join("t", "b", 3, "") == presence_change::joined);
  CHECK(r.join("t", "c", 4, "") == presence_change::too_many_members);
  CHECK(r.stats("t").users == 2);
  CHECK(r.stats("t").connections == 2);
  // Existing users may add connections past the cap (it counts users); other topics have theirs.
  CHECK(r.join("t", "b", 5, "") == presence_change::unchanged);
  CHECK(r.join("t", "a", 6, at_max) == presence_change::unchanged);
  CHECK(r.join("other", "c", 4, "") == presence_change::joined);
  CHECK(r.stats("t").connections == 4);
  CHECK(r.leave("t", "b", 3) == presence_change::unchanged);
  CHECK(r.join("t", "c", 4, "") == presence_change::too_many_members);
  CHECK(r.leave("t", "b", 5) == presence_change::left);
  CHECK(r.join("t", "c", 4, "") == presence_change::joined);
  CHECK(members_of(r, "t") ==
        R"({"a":{"data":{"k":"xxxxxxxx"},"connections":2},"c":{"data":{},"connections":1}})");
}

TEST_CASE("fanout: presence members_json bytes, sorting and escaping; stats; totals") {
  presence_registry r;
  CHECK(r.join("lobby", "zed", 1, R"({"name":"Z"})") == presence_change::joined);
  CHECK(r.join("lobby", "amy", 2, R"({"name":"A","tags":[1,2]})") == presence_change::joined);
  CHECK(r.join("lobby", "amy", 3, R"({"name":"A","tags":[1,2]})") == presence_change::unchanged);
  CHECK(r.join("lobby", "q\"b\\\n", 4, "") == presence_change::joined);
  CHECK(r.join("lobby", "mo\xc3\xa9", 5, R"({})") == presence_change::joined);
  CHECK(members_of(r, "lobby") ==
        "{\"amy\":{\"data\":{\"name\":\"A\",\"tags\":[1,2]},\"connections\":2},"
        "\"mo\xc3\xa9\":{\"data\":{},\"connections\":1},"
        "\"q\\\"b\\\\\\u000a\":{\"data\":{},\"connections\":1},"
        "\"zed\":{\"data\":{\"name\":\"Z\"},\"connections\":1}}");
  std::string out = "prefix:";
  r.members_json("lobby", out);  // appends
  CHECK(out.rfind("prefix:{\"amy\"", 0) == 0);
  CHECK(r.stats("lobby").users == 4);
  CHECK(r.stats("lobby").connections == 5);
  CHECK(r.stats("nowhere").users == 0);
  CHECK(members_of(r, "nowhere") == "{}");

  CHECK(r.join("side", "amy", 9, R"({"x":true})") == presence_change::joined);
  size_t topics = 0, bytes = 0;
  presence_stats t = r.totals(&topics, &bytes);
  CHECK(topics == 2);
  CHECK(t.users == 5);
  CHECK(t.connections == 6);
  // data + user ids + topic names: lobby, zed, amy, the escaped one, moé; side, amy
  const size_t expected = 5 + (3 + 12) + (3 + 25) + (5 + 2) + (4 + 2) + (4 + 3 + 10);
  CHECK(bytes == expected);
  CHECK(r.update("side", "amy", 9, R"({"x":false})") == presence_change::updated);
  r.totals(&topics, &bytes);
  CHECK(bytes == expected + 1);
  CHECK(r.leave("side", "amy", 9) == presence_change::left);
  t = r.totals(&topics, &bytes);
  CHECK(topics == 1);
  CHECK(t.users == 4);
  CHECK(t.connections == 5);
  CHECK(bytes == expected - (4 + 3 + 10));
}

TEST_CASE("fanout: queue_groups round robin over 5 members, exact shares") {
  queue_groups q;
  CHECK_FALSE(q.any());
  CHECK_FALSE(q.has("jobs"));
  CHECK(q.pick("jobs", take_all, [](std::string_view, const qg_member*) { FAIL("no group"); }) ==
        0);
  for (uint32_t i = 0; i < 5; ++i) CHECK(q.add("jobs", "workers", {i % 2, i, 7}));
  CHECK_FALSE(q.add("jobs", "workers", {0, 0, 7}));  // idempotent
  CHECK(q.add("jobs", "workers", {0, 0, 8}));        // another generation is another member
  CHECK(q.remove("jobs", "workers", {0, 0, 8}));
  CHECK(q.any());
  CHECK(q.has("jobs"));
  CHECK_FALSE(q.has("jobs.other"));
  CHECK(q.groups("jobs") == 1);
  CHECK(q.members("jobs", "workers") == 5);
  CHECK(q.members("jobs", "idle") == 0);
  std::map<uint32_t, int> counts;
  std::vector<uint32_t> order;
  for (int i = 0; i < 500; ++i) {
    const size_t groups = q.pick("jobs", take_all, [&](std::string_view g, const qg_member* m) {
      CHECK(g == "workers");
      REQUIRE(m != nullptr);
      CHECK(m->generation == 7);
      ++counts[m->slot];
      if (order.size() < 10) order.push_back(m->slot);
    });
    CHECK(groups == 1);
  }
  CHECK(order == std::vector<uint32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4});
  REQUIRE(counts.size() == 5);
  for (const auto& [slot, n] : counts) {
    CAPTURE(slot);
    CHECK(n == 100);
  }
}

TEST_CASE("fanout: queue_groups skips members that cannot take; none can -> nullptr") {
  queue_groups q;
  for (uint32_t i = 0; i < 4; ++i) q.add("t", "g", {0, i, 1});
  std::set<uint32_t> blocked{1};
  auto can_take = [&](const qg_member& m) { return blocked.count(m.slot) == 0; };
  std::vector<int> got;
  auto record = [&](std::string_view, const qg_member* m) {
    got.push_back(m == nullptr ? -1 : static_cast<int>(m->slot));
  };
  for (int i = 0; i < 6; ++i) q.pick("t", can_take, record);
  CHECK(got == std::vector<int>{0, 2, 3, 0, 2, 3});
  // Nobody can take: nullptr, and every member was asked exactly once.
  std::map<uint32_t, int> asked;
  got.clear();
  q.pick(
      "t",
      [&](const qg_member& m) {
        ++asked[m.slot];
        return false;
      },
      record);
  CHECK(got == std::vector<int>{-1});
  CHECK(asked == std::map<uint32_t, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}});
  // The cursor stayed where it was (slot 0 next: the last pick was 3, the last index).
  blocked.clear();
  got.clear();
  for (int i = 0; i < 4; ++i) q.pick("t", can_take, record);
  CHECK(got == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("fanout: queue_groups removals mid-rotation keep the next member and fair shares") {
  queue_groups q;
  for (uint32_t i = 0; i < 5; ++i) q.add("t", "g", {0, i, 1});
  CHECK(pick_slot(q, "t") == 0);
  CHECK(pick_slot(q, "t") == 1);         // next: 2
  CHECK(q.remove("t", "g", {0, 0, 1}));  // before the cursor
  CHECK_FALSE(q.remove("t", "g", {0, 0, 1}));
  CHECK_FALSE(q.remove("t", "other", {0, 1, 1}));
  CHECK_FALSE(q.remove("nowhere", "g", {0, 1, 1}));
  CHECK(pick_slot(q, "t") == 2);         // next: 3
  CHECK(q.remove("t", "g", {0, 3, 1}));  // the next one itself: 4 comes next
  CHECK(pick_slot(q, "t") == 4);         // next: 1 (wrapped)
  CHECK(q.remove("t", "g", {0, 4, 1}));  // after the cursor
  CHECK(pick_slot(q, "t") == 1);
  CHECK(pick_slot(q, "t") == 2);         // next: 1 (wrapped); members 1, 2
  CHECK(q.remove("t", "g", {0, 2, 1}));  // the last index while the cursor is at 0
  CHECK(pick_slot(q, "t") == 1);
  CHECK(q.members("t", "g") == 1);
  // Removing the current next member when it is the last index wraps the cursor.
  queue_groups w;
  for (uint32_t i = 0; i < 3; ++i) w.add("t", "g", {0, i, 1});
  CHECK(pick_slot(w, "t") == 0);
  CHECK(pick_slot(w, "t") == 1);  // next: 2 (last index)
  CHECK(w.remove("t", "g", {0, 2, 1}));
  CHECK(pick_slot(w, "t") == 0);
  CHECK(w.add("t", "g", {0, 5, 1}));  // joins after the current members
  CHECK(pick_slot(w, "t") == 1);
  CHECK(pick_slot(w, "t") == 5);
  CHECK(pick_slot(w, "t") == 0);

  // Shares stay exact while members come and go every few picks.
  queue_groups s;
  for (uint32_t i = 0; i < 6; ++i) s.add("t", "g", {0, i, 1});
  std::map<uint32_t, int> counts;
  for (int i = 0; i < 6 * 10; ++i) ++counts[static_cast<uint32_t>(pick_slot(s, "t"))];
  CHECK(s.remove("t", "g", {0, 3, 1}));
  for (int i = 0; i < 7; ++i) ++counts[static_cast<uint32_t>(pick_slot(s, "t"))];  // mid-round
  CHECK(s.remove("t", "g", {0, 1, 1}));
  counts.clear();
  for (int i = 0; i < 4 * 25; ++i) ++counts[static_cast<uint32_t>(pick_slot(s, "t"))];
  CHECK(counts == std::map<uint32_t, int>{{0, 25}, {2, 25}, {4, 25}, {5, 25}});
}

TEST_CASE("fanout: queue_groups several groups per topic, info_json, memory returned") {
  queue_groups q;
  q.add("orders", "mailer", {0, 1, 1});
  q.add("orders", "billing", {0, 2, 1});
  q.add("orders", "billing", {1, 2, 1});
  q.add("orders", "audit\"x", {1, 9, 1});
  q.add("refunds", "billing", {0, 3, 1});
  CHECK(q.groups("orders") == 3);
  CHECK(q.members("orders", "billing") == 2);
  CHECK(info_of(q, "orders") == R"({"audit\"x":1,"billing":2,"mailer":1})");
  CHECK(info_of(q, "refunds") == R"({"billing":1})");
  CHECK(info_of(q, "none") == "{}");
  qg_totals t = q.totals();
  CHECK(t.topics == 2);
  CHECK(t.groups == 4);
  CHECK(t.members == 5);
  for (int round = 0; round < 4; ++round) {
    std::vector<std::pair<std::string, qg_member>> picks;
    const size_t groups = q.pick("orders", take_all, [&](std::string_view g, const qg_member* m) {
      REQUIRE(m != nullptr);
      picks.emplace_back(std::string(g), *m);
    });
    CHECK(groups == 3);
    REQUIRE(picks.size() == 3);  // each group once, in name order
    CHECK(picks[0].first == "audit\"x");
    CHECK(picks[1].first == "billing");
    CHECK(picks[1].second == qg_member{static_cast<uint32_t>(round % 2), 2, 1});
    CHECK(picks[2].first == "mailer");
  }
  // A group where nobody can take does not stop the others.
  std::vector<bool> got;
  q.pick(
      "orders", [](const qg_member& m) { return m.shard == 0; },
      [&](std::string_view, const qg_member* m) { got.push_back(m != nullptr); });
  CHECK(got == std::vector<bool>{false, true, true});

  CHECK(q.remove("orders", "mailer", {0, 1, 1}));
  CHECK(q.groups("orders") == 2);
  CHECK(q.remove("orders", "billing", {0, 2, 1}));
  CHECK(q.remove("orders", "billing", {1, 2, 1}));
  CHECK(q.remove("orders", "audit\"x", {1, 9, 1}));
  CHECK_FALSE(q.has("orders"));
  CHECK(q.groups("orders") == 0);
  CHECK(q.any());
  CHECK(q.remove("refunds", "billing", {0, 3, 1}));
  CHECK_FALSE(q.any());
  t = q.totals();
  CHECK(t.topics == 0);
  CHECK(t.groups == 0);
  CHECK(t.members == 0);
}

TEST_CASE("fanout: presence and queue groups shared by 4 threads, totals consistent") {
  constexpr int threads_n = 4;
  constexpr int ops = 20000;
  constexpr int topics_n = 6;
  constexpr int users_n = 5;
  constexpr uint32_t conns_per_thread = 8;
  presence_registry presence;
  queue_groups groups;
  auto topic_name = [](int i) { return "topic." + std::to_string(i); };
  auto user_name = [](int i) { return "user" + std::to_string(i); };
  auto group_name = [](int g) { return std::string_view(g == 0 ? "g0" : "g1"); };

  using key = std::tuple<int, int, uint64_t>;  // topic, user, conn
  struct thread_result {
    std::set<key> presence_held;             // (topic, user, conn) this thread left joined
    std::map<std::pair<int, int>, int> net;  // joined - left per (topic, user)
    std::set<std::tuple<int, int, uint32_t>> groups_held;  // topic, group, slot
    uint64_t picked = 0, nobody = 0, errors = 0;           // errors: a result the model contradicts
  };
  std::vector<thread_result> results(threads_n);
  std::vector<std::thread> threads;
  std::atomic<bool> stop{false};
  for (int th = 0; th < threads_n; ++th) {
    threads.emplace_back([&, th] {
      thread_result& res = results[th];
      std::mt19937 rng(1234 + th);
      // Each thread owns conns th*100 + [0, conns_per_thread); a conn always acts as one user
      // so membership is per (topic, conn). Users are shared by every thread.
      for (int i = 0; i < ops; ++i) {
        const int t = static_cast<int>(rng() % topics_n);
        const uint64_t conn = static_cast<uint64_t>(th) * 100 + rng() % conns_per_thread;
        const int u = static_cast<int>(conn % users_n);
        const std::string topic = topic_name(t), user = user_name(u);
        const key k{t, u, conn};
        const unsigned op = rng() % 8;
        if (op < 3) {
          const std::string data = R"({"v":)" + std::to_string(rng() % 3) + "}";
          const presence_change c = presence.join(topic, user, conn, data);
          if (c == presence_change::joined) ++res.net[{t, u}];
          if (c == presence_change::too_many_members || c == presence_change::data_too_large ||
              c == presence_change::left || c == presence_change::not_member) {
            ++res.errors;
          }
          res.presence_held.insert(k);
        } else if (op < 5) {
          std::string data;
          const presence_change c = presence.leave(topic, user, conn, &data);
          const bool held = res.presence_held.erase(k) == 1;
          if (c == presence_change::left) {
            --res.net[{t, u}];
            if (data.rfind(R"({"v":)", 0) != 0) ++res.errors;
          }
          if ((c == presence_change::not_member) == held) ++res.errors;
        } else if (op == 5) {
          const presence_change c = presence.update(topic, user, conn, R"({"v":1})");
          const bool held = res.presence_held.count(k) == 1;
          if ((c == presence_change::not_member) == held) ++res.errors;
        } else if (op == 6) {
          const int g = static_cast<int>(rng() % 2);
          const uint32_t slot = static_cast<uint32_t>(rng() % conns_per_thread);
          const qg_member m{static_cast<uint32_t>(th), slot, 1};
          const std::tuple<int, int, uint32_t> gk{t, g, slot};
          const std::string_view group = group_name(g);
          if (rng() % 2 == 0) {
            const bool added = groups.add(topic, group, m);
            if (added != res.groups_held.insert(gk).second) ++res.errors;
          } else {
            const bool removed = groups.remove(topic, group, m);
            if (removed != (res.groups_held.erase(gk) == 1)) ++res.errors;
          }
        } else {
          if (!groups.any()) continue;
          groups.pick(
              topic, [&](const qg_member& m) { return m.slot % 3 != 0; },
              [&](std::string_view g, const qg_member* m) {
                if (g != "g0" && g != "g1") ++res.errors;
                if (m == nullptr) {
                  ++res.nobody;
                } else {
                  ++res.picked;
                  if (m->slot % 3 == 0 || m->shard >= threads_n) ++res.errors;
                }
              });
        }
      }
    });
  }
  // A metrics / HTTP reader meanwhile.
  std::thread reader([&] {
    std::string out;
    while (!stop.load(std::memory_order_acquire)) {
      size_t topics = 0, bytes = 0;
      presence.totals(&topics, &bytes);
      for (int t = 0; t < topics_n; ++t) {
        out.clear();
        presence.members_json(topic_name(t), out);
        presence.stats(topic_name(t));
        groups.info_json(topic_name(t), out);
      }
      groups.totals();
    }
  });
  for (std::thread& t : threads) t.join();
  stop.store(true, std::memory_order_release);
  reader.join();

  // Presence: the registry holds exactly the union of what each thread left joined.
  std::map<std::pair<int, int>, uint64_t> conns_of;  // (topic, user) -> connections
  std::map<std::pair<int, int>, int> net;
  uint64_t bad = 0;
  for (const thread_result& res : results) {
    for (const key& k : res.presence_held) ++conns_of[{std::get<0>(k), std::get<1>(k)}];
    for (const auto& [tu, n] : res.net) net[tu] += n;
    bad += res.errors;
  }
  CHECK(bad == 0);
  for (int t = 0; t < topics_n; ++t) {
    for (int u = 0; u < users_n; ++u) {
      CAPTURE(t);
      CAPTURE(u);
      const bool present = conns_of.count({t, u}) == 1;
      CHECK(net[{t, u}] == (present ? 1 : 0));  // joined and left events pair up
    }
  }
  uint64_t users = 0, connections = 0;
  size_t topics_with = 0;
  for (int t = 0; t < topics_n; ++t) {
    const presence_stats s = presence.stats(topic_name(t));
    users += s.users;
    connections += s.connections;
    if (s.users != 0) ++topics_with;
    uint64_t model_users = 0, model_conns = 0;
    for (const auto& [tu, n] : conns_of) {
      if (tu.first != t) continue;
      ++model_users;
      model_conns += n;
    }
    CHECK(s.users == model_users);
    CHECK(s.connections == model_conns);
  }
  size_t topics = 0, bytes = 0;
  const presence_stats totals = presence.totals(&topics, &bytes);
  CHECK(totals.users == users);
  CHECK(totals.connections == connections);
  CHECK(topics == topics_with);

  // Queue groups: the members each thread left added, nothing else.
  std::map<std::pair<int, int>, size_t> members_of_group;
  uint64_t picked = 0;
  for (const thread_result& res : results) {
    for (const auto& [t, g, slot] : res.groups_held) ++members_of_group[{t, g}];
    picked += res.picked;
  }
  CHECK(picked > 0);
  uint64_t members = 0;
  for (int t = 0; t < topics_n; ++t) {
    for (int g = 0; g < 2; ++g) {
      const size_t n = groups.members(topic_name(t), group_name(g));
      CHECK(n == members_of_group[{t, g}]);
      members += n;
    }
  }
  CHECK(groups.totals().members == members);

  // Everyone leaves: nothing held, memory accounted back to zero.
  for (int th = 0; th < threads_n; ++th) {
    for (const key& k : results[th].presence_held) {
      presence.leave(topic_name(std::get<0>(k)), user_name(std::get<1>(k)), std::get<2>(k));
    }
    for (const auto& [t, g, slot] : results[th].groups_held) {
      CHECK(groups.remove(topic_name(t), group_name(g), {static_cast<uint32_t>(th), slot, 1}));
    }
  }
  const presence_stats empty = presence.totals(&topics, &bytes);
  CHECK(empty.users == 0);
  CHECK(empty.connections == 0);
  CHECK(topics == 0);
  CHECK(bytes == 0);
  CHECK_FALSE(groups.any());
  CHECK(groups.totals().groups == 0);
}

TEST_CASE("fanout: queue_groups busy members are skipped in every group of the topic") {
  queue_groups q;
  for (uint32_t i = 0; i < 3; ++i) {
    q.add("t", "a", {0, i, 1});
    q.add("t", "b", {0, i, 1});
  }
  q.add("other", "a", {0, 1, 1});
  CHECK(q.set_busy("t", {0, 1, 1}, true));
  CHECK_FALSE(q.set_busy("t", {0, 1, 2}, true));  // another generation: not a member
  CHECK_FALSE(q.set_busy("none", {0, 1, 1}, true));
  std::map<std::string, std::vector<int>> got;
  auto record = [&](std::string_view group, const qg_member* m) {
    got[std::string(group)].push_back(m == nullptr ? -1 : static_cast<int>(m->slot));
  };
  for (int i = 0; i < 4; ++i) q.pick("t", take_all, record);
  CHECK(got["a"] == std::vector<int>{0, 2, 0, 2});
  CHECK(got["b"] == std::vector<int>{0, 2, 0, 2});
  CHECK(pick_slot(q, "other") == 1);  // busy is per topic
  // Removing a busy member keeps the others' flags in place.
  CHECK(q.remove("t", "a", {0, 0, 1}));
  got.clear();
  for (int i = 0; i < 2; ++i) q.pick("t", take_all, record);
  CHECK(got["a"] == std::vector<int>{2, 2});
  CHECK(q.set_busy("t", {0, 2, 1}, true));
  got.clear();
  q.pick("t", take_all, record);
  CHECK(got["a"] == std::vector<int>{-1});  // every member busy: none can take it
  CHECK(q.set_busy("t", {0, 1, 1}, false));
  got.clear();
  q.pick("t", take_all, record);
  CHECK(got["a"] == std::vector<int>{1});
}
