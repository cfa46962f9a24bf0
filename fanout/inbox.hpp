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
  member,     // a publication for one queue group member (arg = slot, arg2 = generation);
              // frame->key() is the topic
};

// One item of an inbox: 16 bytes. The inbox holds one reference to f (the consumer releases it).
struct delivery {
  delivery_kind kind = delivery_kind::topic;
  uint8_t reserved_[3] = {};
  uint32_t arg = 0;
  uint32_t arg2 = 0;
  uint32_t accepted_us = 0;  // the hub's stamp (CLOCK_MONOTONIC us, wraps): delivery latency
  frame* f = nullptr;
};
static_assert(sizeof(delivery) == 24 || sizeof(delivery) == 16, "small, copied by value");

// Bounded multi-producer single-consumer ring (per-cell sequence numbers, as in Vyukov's bounded
// queue): try_push is one CAS on the tail plus a release store; the consumer reads cells in
// order without atomics on the head. capacity: a power of two.
class mpsc_ring {
 public:
  explicit mpsc_ring(size_t capacity);
  bool try_push(const delivery& d) {
    uint64_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
      cell& c = cells_[pos & mask_];
      const uint64_t seq = c.seq.load(std::memory_order_acquire);
      const int64_t lag = static_cast<int64_t>(seq - pos);
      if (lag == 0) {
        if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          c.d = d;
          c.seq.store(pos + 1, std::memory_order_release);
          return true;
        }
      } else if (lag < 0) {
        return false;  // the cell still holds the item of the previous lap: full
      } else {
        pos = tail_.load(std::memory_order_relaxed);
      }
    }
  }
  // Consumer: pops up to max items in FIFO order into fn(delivery&); returns how many.
  template <class F>
  size_t drain(size_t max, F&& fn) {
    size_t n = 0;
    while (n < max) {
      cell& c = cells_[head_ & mask_];
      if (c.seq.load(std::memory_order_acquire) != head_ + 1) break;
      delivery d = c.d;
      c.seq.store(head_ + mask_ + 1, std::memory_order_release);
      ++head_;
      ++n;
      fn(d);
    }
    return n;
  }
  size_t capacity() const { return mask_ + 1; }
  // Consumer: no item ready at the head.
  bool empty_approx() const {
    return cells_[head_ & mask_].seq.load(std::memory_order_acquire) != head_ + 1;
  }

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
  // Producer (one thread).
  bool try_push(const delivery& d) {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_cached_ > mask_) {
      head_cached_ = head_.load(std::memory_order_acquire);
      if (tail - head_cached_ > mask_) return false;
    }
    cells_[tail & mask_] = d;
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }
  // Producer: true when the next try_push will succeed (only the consumer moves head_, and only
  // forward, so room seen here stays until this producer pushes).
  bool has_room() {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_cached_ > mask_) head_cached_ = head_.load(std::memory_order_acquire);
    return tail - head_cached_ <= mask_;
  }
  // Consumer: pops up to max items in FIFO order into fn(delivery&); returns how many.
  template <class F>
  size_t drain(size_t max, F&& fn) {
    const uint64_t head = head_.load(std::memory_order_relaxed);
    if (tail_cached_ - head < max) tail_cached_ = tail_.load(std::memory_order_acquire);
    uint64_t ready = tail_cached_ - head;
    if (ready > max) ready = max;
    for (uint64_t i = 0; i < ready; ++i) {
      delivery d = cells_[(head + i) & mask_];
      fn(d);
    }
    if (ready != 0) head_.store(head + ready, std::memory_order_release);
    return static_cast<size_t>(ready);
  }
  size_t capacity() const { return mask_ + 1; }
  // Consumer: no item ready.
  bool empty_approx() const {
    return tail_.load(std::memory_order_acquire) == head_.load(std::memory_order_relaxed);
  }

 private:
  std::unique_ptr<delivery[]> cells_;
  size_t mask_;
  alignas(cache_line_bytes) std::atomic<uint64_t> tail_{0};
  uint64_t head_cached_ = 0;  // producer's copy of head_
  alignas(cache_line_bytes) std::atomic<uint64_t> head_{0};
  uint64_t tail_cached_ = 0;  // consumer's copy of tail_
};

// What a shard drains: the ring shape chosen by perf/bench_fanout (see perf/RESULTS.md): a mesh
// of SPSC rings, one per producer index, drained round robin. Plus the wake hook and counters.
class inbox {
 public:
  using wake_fn = void (*)(void* context);
  // capacity: items per producer (power of two); producers: how many producer indexes may push
  // (the shards, plus one per non-shard producer); wake(context) is called by a producer that
  // pushed into an inbox whose consumer may be asleep.
  inbox(size_t capacity, uint32_t producers, wake_fn wake, void* context);
  inbox(const inbox&) = delete;
  inbox& operator=(const inbox&) = delete;

  // Producer `producer` (< producers; one thread at a time per index): false when full
  // (counted in full_count()). Wakes the consumer when no wake is pending.
  bool try_push(uint32_t producer, const delivery& d) {
    if (!try_push_no_wake(producer, d)) return false;
    wake_if_needed();
    return true;
  }
  // The same without the wake check, for a producer that pushes several items in one pass and
  // then calls wake_if_needed() once (one atomic exchange per pass instead of per item).
  bool try_push_no_wake(uint32_t producer, const delivery& d) {
    lane& l = *lanes_[producer];
    if (!l.ring.try_push(d)) {
      l.full.store(l.full.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      return false;
    }
    l.pushed.store(l.pushed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return true;
  }
  // Producer `producer`: true when its next try_push will succeed (so a producer can check every
  // inbox a publication goes to before pushing it into any: all or nothing).
  bool has_room(uint32_t producer) { return lanes_[producer]->ring.has_room(); }
  // Producer, after a successful push: calls wake(context) unless a wake is already pending.
  // The fence orders the push before the flag read (the consumer fences between clearing the
  // flag and reading the rings), so a producer that sees the flag set knows the consumer will
  // see its item; only a clear flag costs the exchange (no cache-line ping-pong while set).
  void wake_if_needed() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (wake_pending_.load(std::memory_order_relaxed)) return;
    if (!wake_pending_.exchange(true, std::memory_order_seq_cst)) wake_(context_);
  }

  // Consumer: clears the wake-pending flag, then pops up to max items into fn(delivery&),
  // taking from each producer's ring in turn (the first ring rotates, so no producer starves).
  // Returns how many. When it returns max, more may be waiting and no wake will come for them:
  // drain again (the engine bounds each pass and loops).
  template <class F>
  size_t drain(size_t max, F&& fn) {
    wake_pending_.store(false, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const size_t lanes = lanes_.size();
    size_t n = 0;
    for (size_t i = 0; i < lanes && n < max; ++i) {
      size_t index = next_lane_ + i;
      if (index >= lanes) index -= lanes;
      n += lanes_[index]->ring.drain(max - n, fn);
    }
    if (++next_lane_ >= lanes) next_lane_ = 0;
    return n;
  }
  // Consumer: no item ready in any ring.
  bool empty_approx() const {
    for (const auto& l : lanes_) {
      if (!l->ring.empty_approx()) return false;
    }
    return true;
  }

  uint64_t full_count() const { return sum(&lane::full); }
  uint64_t pushed_count() const { return sum(&lane::pushed); }
  uint32_t producers() const { return static_cast<uint32_t>(lanes_.size()); }

 private:
  // One producer's ring and counters (written by that producer only, read by anyone).
  struct lane {
    explicit lane(size_t capacity) : ring(capacity) {}
    spsc_ring ring;
    alignas(cache_line_bytes) std::atomic<uint64_t> pushed{0};
    std::atomic<uint64_t> full{0};
  };
  uint64_t sum(std::atomic<uint64_t> lane::*counter) const {
    uint64_t total = 0;
    for (const auto& l : lanes_) total += ((*l).*counter).load(std::memory_order_relaxed);
    return total;
  }

  std::vector<std::unique_ptr<lane>> lanes_;
  wake_fn wake_;
  void* context_;
  size_t next_lane_ = 0;  // consumer only
  alignas(cache_line_bytes) std::atomic<bool> wake_pending_{false};
};

}  // namespace wsed::fanout
