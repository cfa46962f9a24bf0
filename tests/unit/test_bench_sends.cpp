// tests/unit/test_bench_sends.cpp: wse-bench's send accounting (tools/bench/send_progress.hpp):
// the whole messages a send of equal frames completes as the kernel accepts it in pieces.
// Owns: test cases only. Thread: the test runner's main thread. Never opens a socket.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "tools/bench/send_progress.hpp"

using wsed::bench::send_progress;

TEST_CASE("send_progress: a whole send counts every frame once") {
  std::vector<uint8_t> run(10 * 190);
  send_progress p;
  p.start(run.data(), static_cast<uint32_t>(run.size()), 10);
  CHECK(p.frame_bytes == 190);
  CHECK(p.accept(static_cast<uint32_t>(run.size())) == 10);
  CHECK(p.left == 0);
  CHECK(p.frame_done == 0);
  CHECK(p.ptr == run.data() + run.size());
}

TEST_CASE("send_progress: short sends count the frames they completed") {
  std::vector<uint8_t> run(4 * 100);
  send_progress p;
  p.start(run.data(), 400, 4);
  CHECK(p.accept(99) == 0);  // inside the first frame
  CHECK(p.left == 301);
  CHECK(p.ptr == run.data() + 99);
  CHECK(p.accept(1) == 1);    // its last byte
  CHECK(p.accept(250) == 2);  // frames 2 and 3, half of 4
  CHECK(p.frame_done == 50);
  CHECK(p.accept(50) == 1);
  CHECK(p.left == 0);
}

TEST_CASE("send_progress: frames 0 counts bytes only; res past the end is clamped") {
  std::vector<uint8_t> hello(77);
  send_progress p;
  p.start(hello.data(), 77, 0);
  CHECK(p.accept(40) == 0);
  CHECK(p.accept(37) == 0);
  CHECK(p.left == 0);
  p.start(hello.data(), 70, 7);
  CHECK(p.accept(1000) == 7);
  CHECK(p.left == 0);
  CHECK(p.ptr == hello.data() + 70);
}

TEST_CASE("send_progress: any split of a run sums to its frames") {
  std::mt19937 rng(7);
  std::vector<uint8_t> run(64 * 1024);
  for (uint32_t frame : {1u, 7u, 190u, 4096u, 65536u}) {
    uint32_t frames = static_cast<uint32_t>(run.size()) / frame;
    uint32_t bytes = frames * frame;
    for (int trial = 0; trial < 50; ++trial) {
      send_progress p;
      p.start(run.data(), bytes, frames);
      uint64_t counted = 0, accepted = 0;
      for (int step = 0; step < 100000 && p.left != 0; ++step) {
        uint32_t piece = std::uniform_int_distribution<uint32_t>(1, 3 * frame)(rng);
        uint32_t before = p.left;
        counted += p.accept(piece);
        accepted += before - p.left;
        CHECK(counted == accepted / frame);  // exactly the frames wholly accepted so far
      }
      CHECK(p.left == 0);
      CHECK(counted == frames);
    }
  }
}
