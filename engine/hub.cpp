// engine/hub.cpp: see hub.hpp. push/route run on any thread; wake() writes a shard's eventfd.
#include "engine/hub.hpp"

#include <time.h>
#include <unistd.h>

#include "engine/assert.hpp"

namespace wsed::engine {

namespace {
thread_local uint32_t current_shard = UINT32_MAX;
thread_local uint64_t loop_clock_ns = 0;

// When the hub accepted a delivery (delivery::accepted_us): a shard's loop clock, or, on any
// other thread (the Redis bridge, an embedding program), one clock read per push or route.
uint32_t accepted_us() {
  uint64_t ns = loop_clock_ns;
  if (!ns) {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns = uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
  }
  return uint32_t(ns / 1000);
}
}  // namespace

void set_loop_clock_ns(uint64_t ns) {
  loop_clock_ns = ns;
}

uint32_t current_shard_index() {
  return current_shard;
}
void set_current_shard_index(uint32_t index) {
  current_shard = index;
}

hub::hub(uint32_t shards, uint32_t inbox_capacity) : router_(shards) {
  ENGINE_ASSERT(shards >= 1 && shards <= fanout::router_shards_max);
  parts_.reserve(shards);
  for (uint32_t i = 0; i < shards; ++i)
    parts_.push_back(std::make_unique<part>(inbox_capacity, shards + 1));
}

hub::~hub() {
  // Deliveries still queued (shutdown) hold frame references: release them before the pools go.
  for (auto& p : parts_)
    p->inbox.drain(SIZE_MAX, [](fanout::delivery& d) { fanout::release(d.f); });
}

void hub::set_wake_fd(uint32_t shard, int fd) {
  parts_[shard]->wake_fd.store(fd, std::memory_order_release);
}

void hub::wake_shard(void* context) {
  auto* p = static_cast<part*>(context);
  int fd = p->wake_fd.load(std::memory_order_acquire);
  if (fd < 0) return;  // not set up yet: its first loop pass drains anyway
  uint64_t one = 1;
  (void)!write(fd, &one, sizeof one);
}

bool hub::push(uint32_t target, uint32_t producer, fanout::delivery d) {
  ENGINE_ASSERT(target < parts_.size() && producer <= parts_.size());
  d.accepted_us = accepted_us();
  fanout::retain(d.f);
  bool ok;
  if (producer == external_producer()) {
    std::lock_guard lock(external_mu_);
    ok = parts_[target]->inbox.try_push(producer, d);
  } else {
    ok = parts_[target]->inbox.try_push(producer, d);
  }
  if (!ok) fanout::release(d.f);
  return ok;
}

void hub::wake(uint64_t shards_mask) {
  for (uint64_t m = shards_mask, i = 0; m; ++i, m >>= 1)
    if (m & 1) parts_[i]->inbox.wake_if_needed();
}

route_result hub::route(fanout::delivery_kind kind, uint32_t producer, fanout::frame* f,
                        uint64_t* wakes) {
  route_result r;
  const uint64_t mask = kind == fanout::delivery_kind::topic
                            ? router_.shards_for(f->key())
                            : (shards() >= 64 ? ~uint64_t(0) : (uint64_t(1) << shards()) - 1);
  fanout::delivery d;
  d.kind = kind;
  d.f = f;
  d.accepted_us = accepted_us();
  std::unique_lock<std::mutex> lock(external_mu_, std::defer_lock);
  if (producer == external_producer()) lock.lock();
  // All or nothing: every target's lane of this producer is checked first (this producer is
  // its only writer, so the room stays), then the frame goes into each.
  for (uint64_t m = mask, i = 0; m; ++i, m >>= 1) {
    if (!(m & 1)) continue;
    ++r.shards_targeted;
    if (!parts_[i]->inbox.has_room(producer)) ++r.shards_full;
  }
  if (r.shards_full) return r;
  for (uint64_t m = mask, i = 0; m; ++i, m >>= 1) {
    if (!(m & 1)) continue;
    fanout::retain(f);
    bool ok = parts_[i]->inbox.try_push_no_wake(producer, d);
    ENGINE_ASSERT(ok);
    // A shard's own inbox is drained in this loop pass: no wake. Others now, or batched.
    if (i == producer) continue;
    if (wakes)
      *wakes |= uint64_t(1) << i;
    else
      parts_[i]->inbox.wake_if_needed();
  }
  return r;
}

}  // namespace wsed::engine
