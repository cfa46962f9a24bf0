// tests/unit/test_fanout.cpp: fanout/: shared frames (bytes decoded by proto's parser, refcounts
// and pool returns across threads), the inbox rings (FIFO, full, wraparound, multi-producer
// stress, one wake per drain), the topic index (exact, globs, dedupe, via_glob, transitions,
// against a brute-force model) and the router.
// Owns: nothing. Thread: the test runner, plus the std::threads a case starts and joins. Every
// case is named "fanout: ..." so `--test-case='fanout*'` runs them all (under TSan too).
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "fanout/frame.hpp"
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
