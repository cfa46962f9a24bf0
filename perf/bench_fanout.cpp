// perf/bench_fanout.cpp: Google Benchmark micro-benchmarks of fanout/: the two inbox ring shapes
// (one MPSC ring, or a mesh of SPSC rings, one per producer) with 1..3 producer threads feeding
// one consumer thread that drains batches of 64, and topic_index::for_each over one topic's
// subscribers (exact only, and with an overlapping glob that forces the dedupe pass); frame
// make + release from the pool and from the heap; router::shards_for with and without globs;
// what timing a fan-out pass costs (engine/metrics histograms and the clock read).
//
// Owns: its rings, indexes and the producer threads it starts and joins inside each benchmark.
// Thread: the benchmark's main thread is the consumer. Never asserts behaviour (the unit tests
// do); it prints figures. On 2 cores: the consumer is pinned to CPU 0 and the producers to CPU 1
// (they share it when there are several, so they yield when the ring is full).
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/metrics.hpp"
#include "engine/recovery.hpp"
#include "fanout/frame.hpp"
#include "fanout/inbox.hpp"
#include "fanout/router.hpp"
#include "fanout/topic_index.hpp"

using namespace wsed::fanout;

namespace {

constexpr size_t ring_capacity = 4096;
constexpr size_t drain_batch = 64;
constexpr uint32_t items_per_producer_round = 1u << 16;

void pin_to_cpu(int cpu) {
  const unsigned cpus = std::thread::hardware_concurrency();
  if (cpus < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<unsigned>(cpu) % cpus, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned i = 0; i < std::thread::hardware_concurrency(); ++i) CPU_SET(i, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

struct mpsc_shape {
  mpsc_ring ring;
  explicit mpsc_shape(int) : ring(ring_capacity) {}
  bool push(int, const delivery& d) { return ring.try_push(d); }
  template <class F>
  size_t drain(F&& fn) {
    return ring.drain(drain_batch, fn);
  }
  uint64_t before_drain() const { return 0; }
  void idle(uint64_t) { __builtin_ia32_pause(); }
  uint64_t wake_calls() const { return 0; }
};

struct mesh_shape {
  std::vector<std::unique_ptr<spsc_ring>> rings;
  explicit mesh_shape(int lanes) {
    for (int i = 0; i < lanes; ++i) rings.push_back(std::make_unique<spsc_ring>(ring_capacity));
  }
  bool push(int producer, const delivery& d) { return rings[producer]->try_push(d); }
  template <class F>
  size_t drain(F&& fn) {
    size_t n = 0;
    for (auto& r : rings) n += r->drain(drain_batch, fn);
    return n;
  }
  uint64_t before_drain() const { return 0; }
  void idle(uint64_t) { __builtin_ia32_pause(); }
  uint64_t wake_calls() const { return 0; }
};

// Each iteration: every producer pushes items_per_producer_round items (yielding on full), the
// consumer drains until it has them all. Producer threads live across iterations.
template <class Shape>
void ring_throughput(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  // range(1): producer indexes the consumer serves (>= producers; the idle ones stay empty, as
  // the rings of shards that are not publishing).
  const int lanes = std::max(producers, static_cast<int>(state.range(1)));
  Shape shape(lanes);
  std::atomic<uint64_t> round{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      pin_to_cpu(1);
      uint64_t done_rounds = 0;
      uint32_t seq = 0;
      while (!stop.load(std::memory_order_acquire)) {
        if (round.load(std::memory_order_acquire) == done_rounds) {
          std::this_thread::yield();
          continue;
        }
        for (uint32_t i = 0; i < items_per_producer_round; ++i) {
          delivery d;
          d.arg = static_cast<uint32_t>(p);
          d.arg2 = seq++;
          while (!shape.push(p, d)) std::this_thread::yield();
        }
        ++done_rounds;
      }
    });
  }
  pin_to_cpu(0);
  uint64_t checksum = 0;
  const uint64_t expected = uint64_t{items_per_producer_round} * static_cast<uint64_t>(producers);
  for (auto _ : state) {
    round.fetch_add(1, std::memory_order_release);
    uint64_t got = 0;
    while (got < expected) {
      const uint64_t token = shape.before_drain();
      const size_t n = shape.drain([&](delivery& d) { checksum += d.arg2; });
      got += n;
      if (n == 0) shape.idle(token);
    }
  }
  stop.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  unpin();
  benchmark::DoNotOptimize(checksum);
  const double items = static_cast<double>(state.iterations()) * static_cast<double>(expected);
  state.SetItemsProcessed(static_cast<int64_t>(items));
  state.counters["per_item"] =
      benchmark::Counter(items, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["wakes_per_item"] = static_cast<double>(shape.wake_calls()) / items;
}

// The inbox as the engine uses it: the mesh plus per-producer counters and the wake protocol
// (one exchange per push; the wake hook only counts).
struct inbox_shape {
  static void wake(void* context) {
    static_cast<std::atomic<uint64_t>*>(context)->fetch_add(1, std::memory_order_release);
  }
  std::atomic<uint64_t> wakes{0};
  inbox box;
  explicit inbox_shape(int producers)
      : box(ring_capacity, static_cast<uint32_t>(producers), &inbox_shape::wake, &wakes) {}
  bool push(int producer, const delivery& d) {
    return box.try_push(static_cast<uint32_t>(producer), d);
  }
  template <class F>
  size_t drain(F&& fn) {
    return box.drain(drain_batch, fn);
  }
  // The engine sleeps when a drain found nothing, until a producer wakes it: spin on the wake
  // count read before that drain.
  uint64_t before_drain() const { return wakes.load(std::memory_order_acquire); }
  void idle(uint64_t seen) {
    while (wakes.load(std::memory_order_acquire) == seen) __builtin_ia32_pause();
  }
  uint64_t wake_calls() const { return wakes.load(std::memory_order_relaxed); }
};

void BM_mpsc_ring(benchmark::State& state) {
  ring_throughput<mpsc_shape>(state);
}
void BM_spsc_mesh(benchmark::State& state) {
  ring_throughput<mesh_shape>(state);
}
void BM_inbox(benchmark::State& state) {
  ring_throughput<inbox_shape>(state);
}
void ring_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"producers", "lanes"})->UseRealTime()->Unit(benchmark::kMillisecond);
  for (int producers : {1, 2, 3}) b->Args({producers, producers});
  b->Args({1, 3});
}
BENCHMARK(BM_mpsc_ring)->Apply(ring_args);
BENCHMARK(BM_spsc_mesh)->Apply(ring_args);
BENCHMARK(BM_inbox)->Apply(ring_args);

// topic_index::for_each over one topic's subscribers: range(0) subscribers of "room.1";
// range(1) = 1: every other one also holds the overlapping glob "room.*" (two lists match, so
// the walk dedupes by stamp and reports via_glob).
void BM_for_each(benchmark::State& state) {
  const auto subscribers = static_cast<subscriber_id>(state.range(0));
  const bool with_glob = state.range(1) != 0;
  topic_index index;
  for (subscriber_id id = 0; id < subscribers; ++id) {
    index.subscribe(id, "room.1");
    if (with_glob && id % 2 == 0) index.subscribe(id, "room.*");
  }
  uint64_t sum = 0;
  size_t deliveries = 0;
  for (auto _ : state) {
    deliveries += index.for_each("room.1", [&sum](subscriber_id id, bool via_glob) {
      sum += id + static_cast<uint64_t>(via_glob);
    });
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<int64_t>(deliveries));
  state.counters["per_delivery"] = benchmark::Counter(
      static_cast<double>(deliveries), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_for_each)->ArgsProduct({{100, 1000, 10000}, {0, 1}})->ArgNames({"subs", "glob"});

// One 194-byte publication framed and released on the owner thread: from the pool (reused
// after the first) and from the heap (malloc + free each time).
void BM_frame_pool_make_release(benchmark::State& state) {
  frame_pool pool;
  const std::string payload(194, 'x');
  for (auto _ : state) {
    frame* f = pool.make_text("room.1", payload);
    benchmark::DoNotOptimize(f->wire().data());
    release(f);
  }
  state.SetItemsProcessed(state.iterations());
}
void BM_frame_heap_make_release(benchmark::State& state) {
  const std::string payload(194, 'x');
  for (auto _ : state) {
    frame* f = make_text_frame("room.1", payload);
    benchmark::DoNotOptimize(f->wire().data());
    release(f);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_frame_pool_make_release);
BENCHMARK(BM_frame_heap_make_release);

// What --recovery adds to one publication (the fanout_tick of wse-bench, 94 B): the stamp, the
// stamped frame (heap), the lock and the history ring (full: the oldest frame released), on
// `topics` topics written round robin. Compare with BM_frame_pool_make_release (the plain path's
// framing).
void BM_recovery_sequence(benchmark::State& state) {
  wsed::engine::recovery_options o;
  o.seed = 1;
  wsed::engine::recovery_store store(o);
  const std::string json =
      R"({"c":"U","t":"fanout_tick","p":{"seq":1,"ts_us":1760000000000000,"s":"ES","px":5234.75,"q":2}})";
  const int topics = int(state.range(0));
  std::vector<std::string> names;
  for (int i = 0; i < topics; ++i) names.push_back("bench_topic." + std::to_string(i));
  uint64_t i = 0;
  for (auto _ : state) {
    bool ok = store.sequence(names[i++ % names.size()], json, 1, [](frame* f) {
      benchmark::DoNotOptimize(f->wire().data());
      return true;
    });
    benchmark::DoNotOptimize(ok);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_recovery_sequence)->Arg(1)->Arg(1000)->Arg(100000)->ArgName("topics");

// Frames made on CPU 0 and released on CPU 1 (handed over through an spsc_ring), as a shard's
// publications are released by the shards that sent them: range(0) = 1 from the pool, 0 heap.
void BM_frame_cross_thread(benchmark::State& state) {
  const bool pooled = state.range(0) != 0;
  frame_pool pool;
  spsc_ring handoff(ring_capacity);
  std::atomic<bool> stop{false};
  std::thread releaser([&] {
    pin_to_cpu(1);
    for (;;) {
      const size_t n = handoff.drain(drain_batch, [](delivery& d) { release(d.f); });
      if (n == 0) {
        if (stop.load(std::memory_order_acquire) && handoff.empty_approx()) break;
        __builtin_ia32_pause();
      }
    }
  });
  pin_to_cpu(0);
  const std::string payload(194, 'x');
  for (auto _ : state) {
    delivery d;
    d.f = pooled ? pool.make_text("room.1", payload) : make_text_frame("room.1", payload);
    while (!handoff.try_push(d)) __builtin_ia32_pause();
  }
  stop.store(true, std::memory_order_release);
  releaser.join();
  unpin();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_frame_cross_thread)->Arg(0)->Arg(1)->ArgName("pooled")->UseRealTime();

// router::shards_for for a subscribed exact topic among 10000, with range(0) glob patterns
// subscribed somewhere (none match the topic, so every glob is tried).
void BM_router_shards_for(benchmark::State& state) {
  router r(4);
  for (int i = 0; i < 10000; ++i) r.add(static_cast<uint32_t>(i % 4), "room." + std::to_string(i));
  for (int64_t g = 0; g < state.range(0); ++g) r.add(0, "hall." + std::to_string(g) + ".*");
  uint64_t sum = 0;
  for (auto _ : state) sum += r.shards_for("room.4242");
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_router_shards_for)->Arg(0)->Arg(1)->Arg(10)->ArgName("globs");

// What timing one fan-out pass costs a shard (engine/shard.cpp drain_inbox + time_pass): one
// CLOCK_MONOTONIC read, the pass duration observed, the pass's deliveries observed as one
// weighted latency. range(0) = 1: that; 0: the clock read alone; 2: the two observes alone.
void BM_fanout_pass_timing(benchmark::State& state) {
  wsed::engine::shard_metrics m;
  const int64_t what = state.range(0);
  uint64_t prev = 0;
  auto now_ns = [] {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
  };
  uint64_t fake = 0;
  for (auto _ : state) {
    uint64_t t = what == 2 ? (fake += 700) : now_ns();
    if (what != 0) {
      m.fanout_pass_duration.observe_ns(t - prev);
      m.delivery_latency.observe_ns((t - prev) * 3, 100);
    }
    prev = t;
  }
  benchmark::DoNotOptimize(m.fanout_pass_duration.bucket(0));
  benchmark::DoNotOptimize(prev);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_fanout_pass_timing)->Arg(0)->Arg(1)->Arg(2)->ArgName("clock0_all1_observes2");

// histogram::observe_ns over durations spread from 1 us to 20 s (the bucket search).
void BM_histogram_observe(benchmark::State& state) {
  wsed::engine::histogram h;
  std::vector<uint64_t> values;
  for (uint64_t v = 1000; v < 20'000'000'000; v = v * 5 / 4) values.push_back(v);
  size_t i = 0;
  for (auto _ : state) {
    h.observe_ns(values[i]);
    if (++i == values.size()) i = 0;
  }
  benchmark::DoNotOptimize(h.sum_seconds());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_histogram_observe);

}  // namespace

BENCHMARK_MAIN();
