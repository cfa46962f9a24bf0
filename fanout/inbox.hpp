// fanout/inbox.hpp: the bounded lock-free queue of deliveries into one shard, and the two ring
// shapes it may be built on (an MPSC ring, or a mesh of SPSC rings: one per producer).
//
// Owns: the ring cells. Thread: try_push from producers (any thread for the MPSC ring; exactly
// one thread per producer index for the SPSC mesh); drain only on the consumer shard's thread.
// A full ring is backpressure: try_push returns false and the caller counts it and answers its
// own client (HTTP 503, an error frame); nothing is dropped silently. Never blocks, never
// allocates after construction.
//
// Waking: the consumer sleeps in io_uring_submit_and_wait. A producer that pushed calls the
// wake function only when the consumer's `awake_` flag was clear (one wake per drain, not per
// message); the consumer clears the flag before it drains (begin_drain), so an item pushed after
// the drain started is either seen by that drain or wakes the next pass.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include "fanout/frame.hpp"

namespace wsed::fanout {

inline constexpr size_t cache_line_bytes = 64;

enum class delivery_kind : uint8_t {
  topic,      // frame->key() is the concrete topic; every local subscriber gets the frame once
  broadcast,  // every connection of the shard
  user,       // frame->key() is a user id: every connection of that user on the shard
  command,    // an engine command for one connection (arg = slot, arg2 = generation); the frame
              // carries the command's bytes (key = command name, payload = its argument)
};

// One item of an inbox: 16 bytes. The inbox holds one reference to f (the consumer releases it).
struct delivery {
  delivery_kind kind = delivery_kind::topic;
  uint8_t reserved_[3] = {};
  uint32_t arg = 0;
  uint32_t arg2 = 0;
  uint32_t reserved2_ = 0;
  frame* f = nullptr;
};
static_assert(sizeof(delivery) == 24 || sizeof(delivery) == 16, "small, copied by value");

// Bounded multi-producer single-consumer ring (per-cell sequence numbers, as in Vyukov's bounded
// queue): try_push is one CAS on the tail plus a release store; the consumer reads cells in
// order without atomics on the head. capacity: a power of two.
class mpsc_ring {
 public:
  explicit mpsc_ring(size_t capacity);
  bool try_push(const delivery& d);
  // Consumer: pops up to max items in FIFO order into fn(delivery&); returns how many.
  template <class F>
  size_t drain(size_t max, F&& fn);
  size_t capacity() const { return mask_ + 1; }
  bool empty_approx() const;

 private:
  struct cell {
    std::atomic<uint64_t> seq;
    delivery d;
  };
  std::unique_ptr<cell[]> cells_;
  size_t mask_;
  alignas(cache_line_bytes) std::atomic<uint64_t> tail_{0};  // producers
  alignas(cache_line_bytes) uint64_t head_ = 0;              // consumer only
};

// Bounded single-producer single-consumer ring: head and tail on their own cache lines, each
// side caching the other's index.
class spsc_ring {
 public:
  explicit spsc_ring(size_t capacity);
  bool try_push(const delivery& d);
  template <class F>
  size_t drain(size_t max, F&& fn);
  size_t capacity() const { return mask_ + 1; }
  bool empty_approx() const;

 private:
  std::unique_ptr<delivery[]> cells_;
  size_t mask_;
  alignas(cache_line_bytes) std::atomic<uint64_t> tail_{0};
  uint64_t head_cached_ = 0;  // producer's copy of head_
  alignas(cache_line_bytes) std::atomic<uint64_t> head_{0};
  uint64_t tail_cached_ = 0;  // consumer's copy of tail_
};

// What a shard drains: the ring shape chosen by perf/bench_fanout (see perf/RESULTS.md), a
// wake hook and counters.
class inbox {
 public:
  using wake_fn = void (*)(void* context);
  // capacity: items (power of two); producers: how many producer indexes may push (the shards,
  // plus one per non-shard producer); wake(context) is called by a producer that pushed into an
  // inbox whose consumer may be asleep.
  inbox(size_t capacity, uint32_t producers, wake_fn wake, void* context);
  // Producer `producer` (< producers): false when full (counted in full_count()).
  bool try_push(uint32_t producer, const delivery& d);
  // Consumer: clears the awake flag, then pops up to max items into fn(delivery&).
  template <class F>
  size_t drain(size_t max, F&& fn);
  uint64_t full_count() const { return full_.load(std::memory_order_relaxed); }
  uint64_t pushed_count() const { return pushed_.load(std::memory_order_relaxed); }
};

}  // namespace wsed::fanout
