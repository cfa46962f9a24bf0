// engine/hub.hpp: the fan-out hub of one server: the router (which shards want a topic), one
// inbox and one frame pool per shard, and the wake of each shard's loop.
//
// Owns: the inboxes, the pools and the router; made by the server before any shard starts and
// destroyed after every shard stopped. Thread: publish_* and push from any thread (a shard
// passes its own index as producer, and frames from its own pool; other threads pass
// external_producer() and are serialised by a mutex, so the SPSC mesh keeps one writer per
// ring); pool(i) and drain on shard i's thread only. A push into a full inbox fails: the caller
// answers its client (503, SERVER_BUSY) and counts it. Never blocks on I/O (a wake is one
// eventfd write, non-blocking).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "fanout/frame.hpp"
#include "fanout/inbox.hpp"
#include "fanout/router.hpp"

namespace wsed::engine {

// What pushing one publication into every shard that wants it did.
struct route_result {
  uint32_t shards_targeted = 0;  // shards that have a recipient
  uint32_t shards_full = 0;      // of those, how many refused it (inbox full)
  bool ok() const { return shards_full == 0; }
};

class hub {
 public:
  hub(uint32_t shards, uint32_t inbox_capacity);
  ~hub();
  hub(const hub&) = delete;
  hub& operator=(const hub&) = delete;

  uint32_t shards() const { return uint32_t(parts_.size()); }
  uint32_t external_producer() const { return shards(); }
  fanout::router& router() { return router_; }
  fanout::inbox& inbox(uint32_t shard) { return parts_[shard]->inbox; }
  // Shard `shard`'s thread only.
  fanout::frame_pool& pool(uint32_t shard) { return parts_[shard]->pool; }

  // Shard setup: the eventfd a producer writes to wake that shard (-1: none yet).
  void set_wake_fd(uint32_t shard, int fd);

  // Pushes one delivery (the inbox takes one reference of d.f, taken here) into `target`.
  // producer: the calling shard's index, or external_producer() from any other thread.
  bool push(uint32_t target, uint32_t producer, fanout::delivery d);

  // A frame addressed by kind: topic -> every shard the router names; broadcast and user -> every
  // shard. All or nothing: when one target's inbox is full, no shard gets it (shards_full > 0).
  // The caller keeps its own reference to f.
  // wakes: when given, the shards to wake are added to it instead of being woken now (a producer
  // publishing a batch wakes each shard once, with wake(mask)); the producer's own shard is
  // never woken (it drains its inbox in the current loop pass).
  route_result route(fanout::delivery_kind kind, uint32_t producer, fanout::frame* f,
                     uint64_t* wakes = nullptr);
  void wake(uint64_t shards_mask);

 private:
  struct part {
    // The wake context is the part itself (its address is final: parts live on the heap).
    part(uint32_t capacity, uint32_t producers)
        : inbox(capacity, producers, &hub::wake_shard, this) {}
    fanout::inbox inbox;
    fanout::frame_pool pool;
    std::atomic<int> wake_fd{-1};
  };
  static void wake_shard(void* context);

  fanout::router router_;
  std::vector<std::unique_ptr<part>> parts_;
  std::mutex external_mu_;  // one external producer at a time (SPSC mesh: one writer per ring)
};

// The shard index of the calling thread, or UINT32_MAX on a thread that is not a shard's
// (set by shard::run): producers use it to pick their producer index and pool.
uint32_t current_shard_index();
void set_current_shard_index(uint32_t index);
// The shard loop's clock (CLOCK_MONOTONIC ns, read once per pass; 0 on other threads): push and
// route stamp a delivery with it (delivery::accepted_us), or read the clock off a shard.
void set_loop_clock_ns(uint64_t ns);

}  // namespace wsed::engine
