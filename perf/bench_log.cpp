// perf/bench_log.cpp: Google Benchmark micro-benchmarks of engine/log: what one event costs when
// its level is filtered out, when the repeat limiter suppresses it (a flood), from 1 and 2
// threads on one key, and formatting a line (JSON and text) without writing it; and a whole
// printed line written to /dev/null.
//
// Owns: the log configuration of this process (fd: /dev/null). Thread: the benchmark's threads.
// Never asserts behaviour (tests/unit/test_log.cpp does); it prints figures.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "engine/log.hpp"

namespace L = wsed::log;

namespace {

int dev_null() {
  static int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  return fd;
}

void configure(L::level min) {
  L::configure({.min_level = min, .fmt = L::format::json, .fd = dev_null()});
}

void BM_filtered(benchmark::State& state) {
  configure(L::level::warn);
  for (auto _ : state)
    L::info("handshake_rejected", "upgrade refused: 400 Bad Request",
            {{"status", 400}, {"reason", "bad_request"}, {"shard", 0u}}, "bad_request");
}
BENCHMARK(BM_filtered);

// After the first window's burst every call is counted, not printed (the reports are rare).
void BM_suppressed(benchmark::State& state) {
  if (state.thread_index() == 0) configure(L::level::info);
  for (auto _ : state)
    L::info("handshake_rejected", "upgrade refused: 400 Bad Request",
            {{"status", 400}, {"reason", "bad_request"}, {"shard", 0u}}, "bad_request");
}
BENCHMARK(BM_suppressed)->Threads(1)->Threads(2);

void BM_format_json(benchmark::State& state) {
  for (auto _ : state) {
    std::string line = L::format_line(L::format::json, 1764768000123, L::level::info,
                                      "handshake_rejected", "upgrade refused: 400 Bad Request",
                                      {{"status", 400}, {"reason", "bad_request"}, {"shard", 0u}});
    benchmark::DoNotOptimize(line.data());
  }
}
BENCHMARK(BM_format_json);

void BM_format_text(benchmark::State& state) {
  for (auto _ : state) {
    std::string line = L::format_line(L::format::text, 1764768000123, L::level::info,
                                      "handshake_rejected", "upgrade refused: 400 Bad Request",
                                      {{"status", 400}, {"reason", "bad_request"}, {"shard", 0u}});
    benchmark::DoNotOptimize(line.data());
  }
}
BENCHMARK(BM_format_text);

// A printed line: formatting, the clock and one write() (to /dev/null), as the startup event
// and every line the limiter lets through.
void BM_printed_line(benchmark::State& state) {
  configure(L::level::info);
  static const char* keys[] = {"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"};
  uint64_t i = 0;
  for (auto _ : state)
    L::emit_to(dev_null(), L::level::info, "handshake_rejected", keys[i++ & 7],
               {{"status", 400}, {"reason", "bad_request"}, {"shard", 0u}});
}
BENCHMARK(BM_printed_line);

}  // namespace

BENCHMARK_MAIN();
