// engine/fault.hpp: the fault injector under the shard (--fault-inject, for tests and soaks).
//
// A seeded PRNG and one rate per kind of fault; the shard asks fire(kind) where that fault can
// happen and, when it fires, makes the kernel really produce it or rewrites a completion into
// one the kernel could have sent (docs/ARCHITECTURE.md, "Fault injection"). Off (no injector)
// the shard pays one predictable branch per site.
//
// Owns: its PRNG state and its counts. Thread: the shard's (fire); the counts are relaxed
// atomics with one writer, read by /metrics from any thread. Parsing never throws.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace wsed::engine {

enum class fault_kind : uint8_t {
  short_send,  // a send submitted for fewer bytes than queued: the rest goes in the next send
  enobufs,     // a multishot recv armed on an empty buffer group: the kernel answers -ENOBUFS
  reset,       // a recv/send completion turned into -ECONNRESET (accept: -ECONNABORTED)
  sq_full,     // io_uring_get_sqe reports a full submission queue: submitted, then retried
  alloc,       // a reassembly (or split-header) buffer allocation fails: close 1011
  count_
};
const char* name_of(fault_kind k);

// What --fault-inject says: the seed and, per kind, the probability of firing at each chance as
// a threshold on a 64-bit draw (0: never).
struct fault_plan {
  uint64_t seed = 0;
  std::array<uint64_t, size_t(fault_kind::count_)> threshold{};
  bool any() const;
};

// "seed=N,short_send=P,enobufs=P,reset=P,sq_full=P,alloc=P" (any subset, any order; P in [0, 1]).
// nullopt with *error set on anything else.
std::optional<fault_plan> parse_fault_plan(std::string_view spec, std::string* error);

class fault_injector {
 public:
  // stream: mixed into the seed, so that each shard draws its own reproducible sequence.
  fault_injector(const fault_plan& plan, uint64_t stream);

  // One chance for a fault of kind k: true (and counted) when it fires.
  bool fire(fault_kind k) {
    uint64_t t = plan_.threshold[size_t(k)];
    if (t == 0 || next() >= t) return false;
    std::atomic<uint64_t>& n = injected_[size_t(k)];
    n.store(n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return true;
  }
  // A draw in [0, n) (n > 0).
  uint64_t below(uint64_t n) { return next() % n; }
  // A send of `bytes`: shortened to [1, bytes) when a short_send fires (bytes > 1).
  size_t send_bytes(size_t bytes) {
    return bytes > 1 && fire(fault_kind::short_send) ? 1 + size_t(below(bytes - 1)) : bytes;
  }
  uint64_t injected(fault_kind k) const {
    return injected_[size_t(k)].load(std::memory_order_relaxed);
  }

 private:
  uint64_t next();  // xoshiro256**

  fault_plan plan_;
  uint64_t s_[4];
  std::array<std::atomic<uint64_t>, size_t(fault_kind::count_)> injected_{};
};

}  // namespace wsed::engine
