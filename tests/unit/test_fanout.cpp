// tests/unit/test_fanout.cpp: fanout/: shared frames (bytes decoded by proto's parser, refcounts
// and pool returns across threads), the inbox rings (FIFO, full, wraparound, multi-producer
// stress, one wake per drain), the topic index (exact, globs, dedupe, via_glob, transitions,
// against a brute-force model) and the router.
// Owns: nothing. Thread: the test runner, plus the std::threads a case starts and joins. Every
// case is named "fanout: ..." so `--test-case='fanout*'` runs them all (under TSan too).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "auth/acl.hpp"
#include "fanout/frame.hpp"
#include "fanout/inbox.hpp"
#include "fanout/router.hpp"
#include "fanout/topic_index.hpp"
#include "proto/ws.hpp"

using namespace wsed;
using namespace wsed::fanout;

namespace {

// Decodes a server frame with proto's parser (client role: unmasked frames only); returns the
// whole message, and checks it is one FIN text frame filling all of wire.
std::string decode_text(std::span<const uint8_t> wire) {
  std::vector<uint8_t> buf(wire.begin(), wire.end());
  proto::ws_frame_parser parser(proto::ws_role::client);
  proto::ws_limits limits;
  limits.message_bytes_max = 1u << 24;
  std::span<uint8_t> input(buf);
  std::string message;
  bool ended = false;
  for (int steps = 0; steps < 100000 && !input.empty(); ++steps) {
    const proto::ws_event e = parser.next(input, limits);
    REQUIRE(e.kind == proto::ws_event_kind::data);
    CHECK(e.message_opcode == proto::ws_opcode::text);
    message.append(reinterpret_cast<const char*>(e.payload.data()), e.payload.size());
    ended = e.message_end;
    input = input.subspan(e.consumed);
  }
  CHECK(ended);
  CHECK(input.empty());
  return message;
}

std::string payload_of(size_t bytes) {
  std::string s(bytes, 'x');
  for (size_t i = 0; i < bytes; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

}  // namespace

TEST_CASE("fanout: text frames decode with proto's parser at every header length") {
  frame_pool pool;
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{125}, size_t{126}, size_t{65535}, size_t{65536},
                       size_t{200000}}) {
    CAPTURE(bytes);
    const std::string payload = payload_of(bytes);
    for (int from_pool = 0; from_pool < 2; ++from_pool) {
      frame* f = from_pool ? pool.make_text("room.1", payload) : make_text_frame("", payload);
      REQUIRE(f != nullptr);
      CHECK(f->key() == (from_pool ? "room.1" : ""));
      CHECK(f->payload() == payload);
      CHECK(f->header_bytes == proto::frame_header_bytes(bytes));
      CHECK(f->wire_bytes == f->header_bytes + bytes);
      CHECK(f->wire()[0] == 0x81);        // FIN + text
      CHECK((f->wire()[1] & 0x80) == 0);  // unmasked
      CHECK(f->refs.load() == 1);
      CHECK(decode_text(f->wire()) == payload);
      release(f);
    }
  }
  CHECK(pool.outstanding() == 0);
}

TEST_CASE("fanout: the pool reuses a returned frame of a fitting size") {
  frame_pool pool;
  frame* a = pool.make_text("k", "hello");
  const frame* first = a;
  CHECK(pool.outstanding() == 1);
  release(a);
  CHECK(pool.outstanding() == 0);
  frame* b = pool.make_text("k2", "world!");  // same size class
  CHECK(b == first);
  CHECK(b->key() == "k2");
  CHECK(b->payload() == "world!");
  frame* c = pool.make_text("k", payload_of(5000));  // bigger class: a new frame
  CHECK(c != first);
  CHECK(pool.outstanding() == 2);
  retain(c, 2);
  release(c);
  release(c);
  CHECK(pool.outstanding() == 2);
  release(c);
  release(b);
  CHECK(pool.outstanding() == 0);
  // Frames bigger than the largest class are exact and freed when given back.
  frame* big = pool.make_text("", payload_of(3u << 20));
  REQUIRE(big != nullptr);
  CHECK(big->capacity == big->wire_bytes);
  release(big);
  CHECK(pool.outstanding() == 0);
}

TEST_CASE("fanout: frames released on other threads return to their pool") {
  frame_pool pool;
  constexpr int threads = 4;
  constexpr int rounds = 2000;
  std::vector<frame*> frames;
  for (int round = 0; round < rounds; ++round) {
    // Each round: a batch of frames, each retained once per thread; the threads retain and
    // release more references and drop theirs, the owner drops its own.
    frames.clear();
    for (int i = 0; i < 8; ++i) {
      frame* f = pool.make_text("t", payload_of(static_cast<size_t>(i * 40 + round % 7)));
      REQUIRE(f != nullptr);
      retain(f, threads);
      frames.push_back(f);
    }
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&frames] {
        for (frame* f : frames) {
          retain(f, 3);
          for (int k = 0; k < 3; ++k) release(f);
          release(f);
        }
      });
    }
    for (frame* f : frames) release(f);
    for (std::thread& w : workers) w.join();
    REQUIRE(pool.outstanding() == 0);
    if (round == 50) break;  // threads are costly under TSan: the long run is below
  }
  // Long run: one releasing thread, the owner making frames as fast as they come back.
  std::atomic<frame*> handoff{nullptr};
  std::atomic<bool> done{false};
  std::thread releaser([&] {
    while (!done.load(std::memory_order_acquire) ||
           handoff.load(std::memory_order_acquire) != nullptr) {
      frame* f = handoff.exchange(nullptr, std::memory_order_acq_rel);
      if (f != nullptr) release(f);
    }
  });
  for (int i = 0; i < 20000; ++i) {
    frame* f = pool.make_text("t", payload_of(static_cast<size_t>(i % 300)));
    REQUIRE(f != nullptr);
    CHECK(f->payload().size() == static_cast<size_t>(i % 300));
    frame* expected = nullptr;
    for (int spins = 0; !handoff.compare_exchange_weak(expected, f, std::memory_order_acq_rel);
         ++spins) {
      expected = nullptr;
      if (spins > 1000) std::this_thread::yield();
    }
  }
  done.store(true, std::memory_order_release);
  releaser.join();
  CHECK(pool.outstanding() == 0);
}

namespace {

delivery item(uint32_t producer, uint32_t seq) {
  delivery d;
  d.arg = producer;
  d.arg2 = seq;
  return d;
}

// FIFO, full, and many wraparounds of a capacity-8 ring (mpsc_ring or spsc_ring).
template <class Ring>
void check_ring_basics() {
  Ring ring(8);
  CHECK(ring.capacity() == 8);
  CHECK(ring.empty_approx());
  std::vector<uint32_t> got;
  auto collect = [&got](delivery& d) { got.push_back(d.arg2); };
  CHECK(ring.drain(64, collect) == 0);
  for (uint32_t i = 0; i < 8; ++i) CHECK(ring.try_push(item(0, i)));
  CHECK_FALSE(ring.try_push(item(0, 99)));  // full
  CHECK_FALSE(ring.empty_approx());
  CHECK(ring.drain(3, collect) == 3);
  CHECK(got == std::vector<uint32_t>{0, 1, 2});
  for (uint32_t i = 8; i < 11; ++i) CHECK(ring.try_push(item(0, i)));
  CHECK_FALSE(ring.try_push(item(0, 99)));
  CHECK(ring.drain(64, collect) == 8);
  for (uint32_t i = 0; i < 11; ++i) CHECK(got[i] == i);
  CHECK(ring.empty_approx());
  // Wraparound: the indexes pass the capacity many times, with every fill level.
  uint32_t next_in = 0, next_out = 0;
  bool in_order = true;
  for (int round = 0; round < 1000; ++round) {
    const uint32_t pushes = static_cast<uint32_t>(round % 9);
    for (uint32_t i = 0; i < pushes; ++i) {
      if (!ring.try_push(item(0, next_in))) break;
      ++next_in;
    }
    ring.drain(static_cast<size_t>(round % 5 + 1), [&](delivery& d) {
      in_order = in_order && d.arg2 == next_out;
      ++next_out;
    });
  }
  ring.drain(64, [&](delivery& d) {
    in_order = in_order && d.arg2 == next_out;
    ++next_out;
  });
  CHECK(in_order);
  CHECK(next_out == next_in);
  CHECK(next_in > 1000);
}

// producers threads push items_each items (arg = producer, arg2 = its sequence) with push(p, d),
// retrying on full; the calling thread drains with drain(fn) and checks that every producer's
// sequence arrives complete and in order.
template <class Push, class Drain>
void check_producers_into_one(uint32_t producers, uint32_t items_each, Push push, Drain drain) {
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([p, items_each, &push] {
      for (uint32_t i = 0; i < items_each; ++i) {
        for (uint32_t spins = 0; !push(p, item(p, i)); ++spins) {
          if (spins > 64) std::this_thread::yield();
        }
      }
    });
  }
  std::vector<uint32_t> next(producers, 0);
  uint64_t received = 0, out_of_order = 0, bad_producer = 0;
  const uint64_t expected = uint64_t{producers} * items_each;
  for (uint64_t idle = 0; received < expected && idle < 200'000'000;) {
    const size_t n = drain([&](delivery& d) {
      ++received;
      if (d.arg >= producers) {
        ++bad_producer;
        return;
      }
      if (d.arg2 != next[d.arg]) ++out_of_order;
      next[d.arg] = d.arg2 + 1;
    });
    if (n == 0) {
      ++idle;
      std::this_thread::yield();
    }
  }
  for (std::thread& t : threads) t.join();
  drain([&](delivery&) { ++received; });  // nothing may be left over (no duplicates)
  CHECK(received == expected);
  CHECK(out_of_order == 0);
  CHECK(bad_producer == 0);
  for (uint32_t p = 0; p < producers; ++p) CHECK(next[p] == items_each);
}

struct wake_counter {
  std::atomic<int> calls{0};
  static void wake(void* context) {
    static_cast<wake_counter*>(context)->calls.fetch_add(1, std::memory_order_relaxed);
  }
};

}  // namespace

TEST_CASE("fanout: mpsc_ring is FIFO, refuses when full, wraps around") {
  check_ring_basics<mpsc_ring>();
}

TEST_CASE("fanout: spsc_ring is FIFO, refuses when full, wraps around") {
  check_ring_basics<spsc_ring>();
}

TEST_CASE("fanout: mpsc_ring, 4 producers x 200k items into one consumer") {
  mpsc_ring ring(1024);
  check_producers_into_one(
      4, 200'000, [&ring](uint32_t, const delivery& d) { return ring.try_push(d); },
      [&ring](auto&& fn) { return ring.drain(64, fn); });
}

TEST_CASE("fanout: inbox, 4 producers x 200k items into one consumer, one wake per drain") {
  wake_counter wakes;
  inbox box(1024, 4, &wake_counter::wake, &wakes);
  uint64_t drains = 0;
  check_producers_into_one(
      4, 200'000, [&box](uint32_t p, const delivery& d) { return box.try_push(p, d); },
      [&box, &drains](auto&& fn) {
        ++drains;
        return box.drain(64, fn);
      });
  CHECK(box.pushed_count() == 800'000);
  // A wake needs a drain to clear the flag first: at most one wake per drain (plus the first).
  CHECK(wakes.calls.load() >= 1);
  CHECK(static_cast<uint64_t>(wakes.calls.load()) <= drains + 1);
}

TEST_CASE("fanout: inbox consumer that sleeps until woken never misses an item") {
  // The engine's shape: drain; when nothing came, sleep until a producer's wake. A lost wake
  // would leave items in the rings while the consumer sleeps: the wait is bounded (1 s) and a
  // timeout with items waiting is counted as a lost wake.
  struct waker {
    std::atomic<uint64_t> wakes{0};
    static void wake(void* context) {
      static_cast<waker*>(context)->wakes.fetch_add(1, std::memory_order_release);
    }
  } w;
  inbox box(256, 3, &waker::wake, &w);
  constexpr uint32_t producers = 3, items_each = 100'000;
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([&box, p] {
      for (uint32_t i = 0; i < items_each; ++i) {
        while (!box.try_push(p, item(p, i))) std::this_thread::yield();
        if (i % 1000 == 0) std::this_thread::yield();  // let the consumer fall asleep
      }
    });
  }
  uint64_t received = 0, lost_wakes = 0, sleeps = 0, drains = 0;
  std::vector<uint32_t> next(producers, 0);
  uint64_t out_of_order = 0;
  while (received < uint64_t{producers} * items_each && lost_wakes < 10) {
    const uint64_t token = w.wakes.load(std::memory_order_acquire);
    ++drains;
    const size_t n = box.drain(64, [&](delivery& d) {
      out_of_order += d.arg2 != next[d.arg];
      next[d.arg] = d.arg2 + 1;
    });
    received += n;
    if (n != 0) continue;
    ++sleeps;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (w.wakes.load(std::memory_order_acquire) == token) {
      if (std::chrono::steady_clock::now() > deadline) {
        lost_wakes += !box.empty_approx();
        break;
      }
      std::this_thread::yield();
    }
  }
  for (std::thread& t : threads) t.join();
  CHECK(lost_wakes == 0);
  CHECK(received == uint64_t{producers} * items_each);
  CHECK(out_of_order == 0);
  CHECK(sleeps > 0);
  // A wake needs a drain to clear the flag first: at most one wake per drain (plus the first).
  CHECK(w.wakes.load() <= drains + 1);
}

TEST_CASE("fanout: inbox wakes once per drain cycle, counts full pushes") {
  wake_counter wakes;
  inbox box(4, 2, &wake_counter::wake, &wakes);
  CHECK(box.producers() == 2);
  CHECK(box.empty_approx());
  for (uint32_t i = 0; i < 4; ++i) CHECK(box.try_push(0, item(0, i)));
  CHECK(wakes.calls.load() == 1);  // first push woke, the next three did not
  CHECK_FALSE(box.try_push(0, item(0, 4)));
  CHECK(box.full_count() == 1);
  CHECK(box.try_push(1, item(1, 0)));  // the other producer's ring has room
  CHECK(wakes.calls.load() == 1);
  CHECK(box.pushed_count() == 5);
  std::vector<std::pair<uint32_t, uint32_t>> got;
  auto collect = [&got](delivery& d) { got.emplace_back(d.arg, d.arg2); };
  CHECK(box.drain(2, collect) == 2);  // bounded: more remain, and no wake will come for them
  CHECK(box.try_push(1, item(1, 1)));
  CHECK(wakes.calls.load() == 2);  // the drain cleared the flag: the next push wakes again
  CHECK(box.try_push(0, item(0, 4)));
  CHECK(wakes.calls.load() == 2);
  CHECK(box.drain(64, collect) == 5);
  CHECK(box.empty_approx());
  CHECK(box.drain(64, collect) == 0);
  REQUIRE(got.size() == 7);
  // Each producer's items in order.
  std::vector<uint32_t> next(2, 0);
  for (auto [p, seq] : got) {
    CHECK(seq == next[p]);
    next[p] = seq + 1;
  }
  CHECK(next == std::vector<uint32_t>{5, 2});
  // try_push_no_wake + wake_if_needed: one wake for a batch.
  for (uint32_t i = 0; i < 3; ++i) CHECK(box.try_push_no_wake(1, item(1, 2 + i)));
  CHECK(wakes.calls.load() == 2);
  box.wake_if_needed();
  box.wake_if_needed();
  CHECK(wakes.calls.load() == 3);
  CHECK(box.drain(64, collect) == 3);
}

namespace {

// (subscriber, via_glob) pairs for_each delivers, sorted.
std::vector<std::pair<subscriber_id, bool>> delivered(topic_index& index, std::string_view topic) {
  std::vector<std::pair<subscriber_id, bool>> out;
  const size_t calls = index.for_each(
      topic, [&out](subscriber_id id, bool via_glob) { out.emplace_back(id, via_glob); });
  CHECK(calls == out.size());
  std::sort(out.begin(), out.end());
  return out;
}

using got_list = std::vector<std::pair<subscriber_id, bool>>;

}  // namespace

TEST_CASE("fanout: is_glob") {
  CHECK(is_glob("battle.*"));
  CHECK(is_glob("a?c"));
  CHECK_FALSE(is_glob("battle.glob_test"));
  CHECK_FALSE(is_glob(""));
}

TEST_CASE("fanout: topic_index exact topics, transitions and idempotent subscribe") {
  topic_index index;
  CHECK(index.pattern_count() == 0);
  CHECK(index.subscribe(3, "room.1") == subscribe_result::added_first);
  CHECK(index.subscribe(3, "room.1") == subscribe_result::already);
  CHECK(index.subscribe(7, "room.1") == subscribe_result::added);
  CHECK(index.subscribe(7, "room.2") == subscribe_result::added_first);
  CHECK(index.pattern_count() == 2);
  CHECK(index.subscriptions_of(3) == 1);
  CHECK(index.subscriptions_of(7) == 2);
  CHECK(index.subscriptions_of(1000) == 0);
  CHECK(delivered(index, "room.1") == got_list{{3, false}, {7, false}});
  CHECK(delivered(index, "room.2") == got_list{{7, false}});
  CHECK(delivered(index, "room.3").empty());
  CHECK(index.subscriber_count("room.1") == 2);
  CHECK(index.unsubscribe(3, "room.2") == unsubscribe_result::not_subscribed);
  CHECK(index.unsubscribe(3, "nothing") == unsubscribe_result::not_subscribed);
  CHECK(index.unsubscribe(99, "room.1") == unsubscribe_result::not_subscribed);
  CHECK(index.unsubscribe(3, "room.1") == unsubscribe_result::removed);
  CHECK(delivered(index, "room.1") == got_list{{7, false}});
  CHECK(index.unsubscribe(7, "room.1") == unsubscribe_result::removed_last);
  CHECK(delivered(index, "room.1").empty());
  CHECK(index.pattern_count() == 1);
  CHECK(index.subscribe(3, "room.1") == subscribe_result::added_first);  // again from scratch
  CHECK(index.pattern_count() == 2);
}

TEST_CASE("fanout: topic_index globs, overlaps delivered once, via_glob") {
  topic_index index;
  CHECK(index.subscribe(1, "battle.*") == subscribe_result::added_first);
  CHECK(index.subscribe(2, "battle.glob_test") == subscribe_result::added_first);
  CHECK(index.subscribe(3, "battle.glob_tes?") == subscribe_result::added_first);
  CHECK(index.subscribe(4, "battle.*") == subscribe_result::added);
  CHECK(index.subscribe(4, "battle.glob_test") == subscribe_result::added);  // exact + glob
  CHECK(index.subscribe(5, "battle.*") == subscribe_result::added);
  CHECK(index.subscribe(5, "*.glob_test") == subscribe_result::added_first);  // two globs
  CHECK(index.glob_count() == 3);
  CHECK(index.pattern_count() == 4);
  CHECK(delivered(index, "battle.glob_test") ==
        got_list{{1, true}, {2, false}, {3, true}, {4, false}, {5, true}});
  CHECK(index.subscriber_count("battle.glob_test") == 5);
  CHECK(delivered(index, "battle.x") == got_list{{1, true}, {4, true}, {5, true}});
  CHECK(delivered(index, "battle.") == got_list{{1, true}, {4, true}, {5, true}});  // * empty
  CHECK(delivered(index, "battle").empty());
  CHECK(delivered(index, "war.glob_test") == got_list{{5, true}});
  CHECK(delivered(index, "battle.glob_tesX") ==
        got_list{{1, true}, {3, true}, {4, true}, {5, true}});
  // Cached lists follow the removal of a glob's last subscriber.
  CHECK(index.unsubscribe(3, "battle.glob_tes?") == unsubscribe_result::removed_last);
  CHECK(delivered(index, "battle.glob_tesX") == got_list{{1, true}, {4, true}, {5, true}});
  CHECK(index.unsubscribe(5, "battle.*") == unsubscribe_result::removed);
  CHECK(delivered(index, "battle.glob_test") ==
        got_list{{1, true}, {2, false}, {4, false}, {5, true}});
  // A glob added later reaches topics already cached.
  CHECK(index.subscribe(6, "b*") == subscribe_result::added_first);
  CHECK(delivered(index, "battle.x") == got_list{{1, true}, {4, true}, {6, true}});
}

TEST_CASE("fanout: topic_index unsubscribe_all cleans everything") {
  topic_index index;
  index.subscribe(1, "a");
  index.subscribe(1, "b");
  index.subscribe(1, "x.*");
  index.subscribe(1, "?");
  index.subscribe(2, "b");
  index.subscribe(2, "x.*");
  CHECK(delivered(index, "x.1") == got_list{{1, true}, {2, true}});  // fills the cache
  CHECK(delivered(index, "b") == got_list{{1, false}, {2, false}});
  std::map<std::string, bool> removed;
  index.unsubscribe_all(1, [&removed](std::string_view pattern, bool was_last) {
    removed.emplace(std::string(pattern), was_last);
  });
  CHECK(removed ==
        std::map<std::string, bool>{{"?", true}, {"a", true}, {"b", false}, {"x.*", false}});
  CHECK(index.subscriptions_of(1) == 0);
  CHECK(delivered(index, "x.1") == got_list{{2, true}});
  CHECK(delivered(index, "b") == got_list{{2, false}});
  CHECK(delivered(index, "a").empty());
  removed.clear();
  index.unsubscribe_all(2, [&removed](std::string_view pattern, bool was_last) {
    removed.emplace(std::string(pattern), was_last);
  });
  CHECK(removed == std::map<std::string, bool>{{"b", true}, {"x.*", true}});
  CHECK(index.pattern_count() == 0);
  CHECK(index.glob_count() == 0);
  CHECK(delivered(index, "x.1").empty());
  CHECK(delivered(index, "b").empty());
  index.unsubscribe_all(2, [](std::string_view, bool) { FAIL("nothing left to remove"); });
  index.unsubscribe_all(500, [](std::string_view, bool) { FAIL("unknown subscriber"); });
}

TEST_CASE("fanout: topic_index against a brute-force model") {
  // Random subscribe / unsubscribe / unsubscribe_all / publish over a small alphabet of
  // topics and patterns; the model is a set of (subscriber, pattern) and auth::glob_match.
  const std::vector<std::string> topics = {"a", "b", "ab", "a.b", "a.c", "b.c", "abc", ""};
  const std::vector<std::string> patterns = {"a", "b",   "ab", "a.b", "a.c", "*",   "a*",
                                             "?", "a.?", "*c", "a?c", "??",  "*.*", "b.c"};
  constexpr subscriber_id subscribers = 12;
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    CAPTURE(seed);
    std::mt19937 rng(seed);
    topic_index index;
    std::set<std::pair<subscriber_id, std::string>> model;
    auto pattern_subscribers = [&model](const std::string& pattern) {
      size_t n = 0;
      for (const auto& [id, p] : model) n += p == pattern;
      return n;
    };
    size_t mismatches = 0;
    for (int step = 0; step < 3000; ++step) {
      const int op = static_cast<int>(rng() % 10);
      const subscriber_id id = rng() % subscribers;
      const std::string& pattern = patterns[rng() % patterns.size()];
      if (op < 4) {
        const bool had = model.count({id, pattern}) != 0;
        const bool first = pattern_subscribers(pattern) == 0;
        const subscribe_result r = index.subscribe(id, pattern);
        model.insert({id, pattern});
        const subscribe_result want = had     ? subscribe_result::already
                                      : first ? subscribe_result::added_first
                                              : subscribe_result::added;
        mismatches += r != want;
      } else if (op < 6) {
        const bool had = model.erase({id, pattern}) != 0;
        const unsubscribe_result r = index.unsubscribe(id, pattern);
        const unsubscribe_result want = !had ? unsubscribe_result::not_subscribed
                                        : pattern_subscribers(pattern)
                                            ? unsubscribe_result::removed
                                            : unsubscribe_result::removed_last;
        mismatches += r != want;
      } else if (op == 6) {
        std::map<std::string, bool> got, want;
        index.unsubscribe_all(
            id, [&got](std::string_view p, bool last) { got.emplace(std::string(p), last); });
        for (auto it = model.begin(); it != model.end();) {
          if (it->first == id) {
            const std::string p = it->second;
            it = model.erase(it);
            want.emplace(p, pattern_subscribers(p) == 0);
          } else {
            ++it;
          }
        }
        mismatches += got != want;
      } else {
        const std::string& topic = topics[rng() % topics.size()];
        std::map<subscriber_id, bool> want;  // id -> via_glob
        for (const auto& [sid, p] : model) {
          if (!auth::glob_match(p, topic)) continue;
          const bool glob = is_glob(p);
          auto [it, inserted] = want.emplace(sid, glob);
          if (!inserted) it->second = it->second && glob;
        }
        std::map<subscriber_id, bool> got;
        size_t calls = 0;
        index.for_each(topic, [&](subscriber_id sid, bool via_glob) {
          ++calls;
          got[sid] = via_glob;
        });
        mismatches += got != want || calls != want.size();
      }
      std::set<std::string> distinct;
      for (const auto& entry : model) distinct.insert(entry.second);
      mismatches += index.pattern_count() != distinct.size();
      for (subscriber_id s = 0; s < subscribers; ++s) {
        size_t n = 0;
        for (const auto& entry : model) n += entry.first == s;
        mismatches += index.subscriptions_of(s) != n;
      }
      if (mismatches != 0) {
        INFO("step " << step << " op " << op);
        REQUIRE(mismatches == 0);
      }
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("fanout: router masks for exact and glob patterns, remove") {
  router r(4);
  CHECK(r.shards() == 4);
  CHECK(r.shards_for("room.1") == 0);
  r.add(0, "room.1");
  r.add(2, "room.1");
  r.add(1, "room.2");
  CHECK(r.shards_for("room.1") == 0b101);
  CHECK(r.shards_for("room.2") == 0b010);
  CHECK(r.shards_for("room.3") == 0);
  r.add(3, "room.*");
  r.add(1, "room.?");
  CHECK(r.shards_for("room.1") == 0b1111);
  CHECK(r.shards_for("room.22") == 0b1000);
  CHECK(r.shards_for("hall") == 0);
  r.remove(3, "room.*");
  CHECK(r.shards_for("room.22") == 0);
  CHECK(r.shards_for("room.1") == 0b0111);
  r.remove(1, "room.?");
  r.remove(0, "room.1");
  CHECK(r.shards_for("room.1") == 0b0100);
  r.remove(2, "room.1");
  r.remove(2, "room.1");  // not held: nothing changes
  r.remove(0, "never");
  CHECK(r.shards_for("room.1") == 0);
  CHECK(r.shards_for("room.2") == 0b0010);
  router wide(64);
  wide.add(63, "x");
  wide.add(0, "*");
  CHECK(wide.shards_for("x") == ((uint64_t{1} << 63) | 1));
  CHECK(wide.shards_for("y") == 1);
}

TEST_CASE("fanout: router shared by shards adding and removing while publishers read") {
  constexpr uint32_t shards = 4;
  router r(shards);
  r.add(0, "steady");
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0};
  std::vector<std::thread> threads;
  for (uint32_t shard = 1; shard < shards; ++shard) {
    threads.emplace_back([&r, shard] {
      const std::string mine = "t." + std::to_string(shard);
      for (int i = 0; i < 2000; ++i) {
        r.add(shard, mine);
        r.add(shard, "g.*");
        r.remove(shard, "g.*");
        r.remove(shard, mine);
      }
    });
  }
  std::thread publisher([&] {
    while (!stop.load(std::memory_order_acquire)) {
      if ((r.shards_for("steady") & 1) == 0) wrong.fetch_add(1);
      if ((r.shards_for("t.1") & ~uint64_t{0b0010}) != 0) wrong.fetch_add(1);
      if ((r.shards_for("g.x") & 1) != 0) wrong.fetch_add(1);
    }
  });
  for (std::thread& t : threads) t.join();
  stop.store(true, std::memory_order_release);
  publisher.join();
  CHECK(wrong.load() == 0);
  CHECK(r.shards_for("steady") == 1);
  CHECK(r.shards_for("t.1") == 0);
  CHECK(r.shards_for("g.x") == 0);
}
