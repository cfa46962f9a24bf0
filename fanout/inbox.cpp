// fanout/inbox.cpp: construction of the inbox rings (the hot paths are inline in inbox.hpp).
//
// Owns: the ring cells, allocated once here. Thread: whoever builds the shard (before any
// producer or consumer runs). Never called on a hot path.
#include "fanout/inbox.hpp"

#include "fanout/assert.hpp"

namespace wsed::fanout {

namespace {
bool power_of_two(size_t n) {
  return n != 0 && (n & (n - 1)) == 0;
}
}  // namespace

mpsc_ring::mpsc_ring(size_t capacity) : cells_(new cell[capacity]), mask_(capacity - 1) {
  FANOUT_ASSERT(power_of_two(capacity));
  for (size_t i = 0; i < capacity; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
}

spsc_ring::spsc_ring(size_t capacity) : cells_(new delivery[capacity]), mask_(capacity - 1) {
  FANOUT_ASSERT(power_of_two(capacity));
}

inbox::inbox(size_t capacity, uint32_t producers, wake_fn wake, void* context)
    : wake_(wake), context_(context) {
  FANOUT_ASSERT(producers > 0);
  FANOUT_ASSERT(wake != nullptr);
  lanes_.reserve(producers);
  for (uint32_t i = 0; i < producers; ++i) lanes_.push_back(std::make_unique<lane>(capacity));
}

}  // namespace wsed::fanout
