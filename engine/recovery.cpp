// engine/recovery.cpp: see recovery.hpp.
#include "engine/recovery.hpp"

#include <random>

#include "engine/assert.hpp"
#include "proto/wse_builder.hpp"

namespace wsed::engine {

namespace {

// What one kept frame costs the budget: the allocation (header + key + wire) and its ring cell.
uint64_t frame_cost(const fanout::frame* f) {
  return sizeof(fanout::frame) + f->key_bytes + f->wire_bytes + sizeof(void*);
}

constexpr uint64_t topic_cost_bytes = sizeof(void*) * 16 + 128;  // entry, map node, topic

constexpr uint32_t ring_initial = 16;

}  // namespace

recovery_store::recovery_store(recovery_options options) : opt_(options) {
  ENGINE_ASSERT(opt_.buffer >= ring_initial && (opt_.buffer & (opt_.buffer - 1)) == 0);
  rng_state_ =
      opt_.seed ? opt_.seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
}

recovery_store::~recovery_store() {
  std::lock_guard lock(mu_);
  while (oldest_) drop_locked(*oldest_);
}

uint32_t recovery_store::new_epoch_locked(uint32_t avoid) {
  for (;;) {  // splitmix64
    uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    uint32_t e = uint32_t(z ^ (z >> 31));
    if (e != avoid) return e;  // a renewed epoch always differs from the one lost
  }
}

void recovery_store::unlink_locked(topic_history& h) {
  (h.newer ? h.newer->older : newest_) = h.older;
  (h.older ? h.older->newer : oldest_) = h.newer;
  h.newer = h.older = nullptr;
}

void recovery_store::touch_locked(topic_history& h, uint64_t now_ms) {
  h.written_ms = now_ms;
  if (newest_ == &h) return;
  if (h.newer || h.older || oldest_ == &h) unlink_locked(h);
  h.older = newest_;
  if (newest_) newest_->newer = &h;
  newest_ = &h;
  if (!oldest_) oldest_ = &h;
}

void recovery_store::drop_locked(topic_history& h) {
  unlink_locked(h);
  for (uint64_t o = h.next - h.count; o < h.next; ++o) {
    fanout::release(h.ring[o & (h.ring.size() - 1)]);
    --frames_;
  }
  bytes_ -= h.bytes;
  auto it = topics_.find(std::string_view(h.topic));
  ENGINE_ASSERT(it != topics_.end());
  topics_.erase(it);  // h is gone
}

recovery_store::topic_history* recovery_store::find_locked(std::string_view topic,
                                                           uint64_t now_ms) {
  auto it = topics_.find(topic);
  if (it == topics_.end()) return nullptr;
  topic_history* h = it->second.get();
  if (now_ms >= h->written_ms + opt_.ttl_ms) {
    drop_locked(*h);
    expired_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  return h;
}

recovery_store::topic_history& recovery_store::create_locked(std::string_view topic,
                                                             uint32_t epoch) {
  auto made = std::make_unique<topic_history>();
  topic_history& h = *made;
  h.topic = std::string(topic);
  h.epoch = epoch;
  h.ring.assign(ring_initial, nullptr);
  h.bytes = topic_cost_bytes + topic.size() + ring_initial * sizeof(void*);
  bytes_ += h.bytes;
  topics_.emplace(h.topic, std::move(made));
  return h;
}

fanout::frame* recovery_store::stamp_locked(std::string_view topic, std::string_view json,
                                            uint64_t now_ms) {
  if (json.empty() || json.front() != '{') return nullptr;
  topic_history* h = find_locked(topic, now_ms);
  uint32_t epoch = h ? h->epoch : 0;
  uint64_t offset = h ? h->next : 0;
  if (!h) {
    // The epoch a new history gets, kept for the commit (a refused publication leaves no trace).
    pending_epoch_ = new_epoch_locked(0);
    epoch = pending_epoch_;
  }
  text_.clear();
  proto::wse_append_recovery_stamp(text_, topic, epoch, offset);
  json.remove_prefix(1);
  // An empty object {} stamps to {"tp":..,"e":..,"o":N} (no trailing comma).
  if (json.size() == 1 && json.front() == '}') text_.pop_back();
  text_.append(json);
  return fanout::make_text_frame(topic, text_);
}

void recovery_store::push_locked(topic_history& h, fanout::frame* f, uint64_t now_ms) {
  if (h.count == h.ring.size() && h.ring.size() < opt_.buffer) {  // grow: re-place the cells
    std::vector<fanout::frame*> bigger(h.ring.size() * 2, nullptr);
    for (uint64_t o = h.next - h.count; o < h.next; ++o)
      bigger[o & (bigger.size() - 1)] = h.ring[o & (h.ring.size() - 1)];
    h.bytes += (bigger.size() - h.ring.size()) * sizeof(void*);
    bytes_ += (bigger.size() - h.ring.size()) * sizeof(void*);
    h.ring.swap(bigger);
  }
  fanout::frame*& cell = h.ring[h.next & (h.ring.size() - 1)];
  if (h.count == h.ring.size()) {  // full: the oldest goes
    h.bytes -= frame_cost(cell);
    bytes_ -= frame_cost(cell);
    fanout::release(cell);
    --frames_;
    --h.count;
  }
  fanout::retain(f);
  cell = f;
  ++h.count;
  ++h.next;
  ++frames_;
  h.bytes += frame_cost(f);
  bytes_ += frame_cost(f);
  touch_locked(h, now_ms);
  trim_locked(&h, now_ms);
}

void recovery_store::commit_locked(std::string_view topic, fanout::frame* f, uint64_t now_ms) {
  topic_history* h = find_locked(topic, now_ms);
  if (!h) h = &create_locked(topic, pending_epoch_);
  push_locked(*h, f, now_ms);
  sequenced_.fetch_add(1, std::memory_order_relaxed);
}

recovery_answer recovery_store::take(std::string_view topic, const recovery_position& at,
                                     uint64_t now_ms, std::vector<fanout::frame*>& frames) {
  std::lock_guard lock(mu_);
  recovery_answer a;
  topic_history* h = find_locked(topic, now_ms);
  if (!h) return a;
  a.has_history = true;
  a.epoch = h->epoch;
  a.offset = h->next - 1;
  if (!at.has_epoch || !at.has_offset || at.epoch != h->epoch) return a;
  uint64_t first = h->next - h->count;  // the oldest offset kept
  if (at.offset >= h->next || at.offset + 1 < first) return a;
  if (h->next - 1 - at.offset > opt_.max_replay) return a;
  for (uint64_t o = at.offset + 1; o < h->next; ++o) {
    fanout::frame* f = h->ring[o & (h->ring.size() - 1)];
    fanout::retain(f);
    frames.push_back(f);
  }
  a.recovered = true;
  return a;
}

bool recovery_store::seen_locked(std::string_view topic, uint32_t epoch, uint64_t offset,
                                 uint64_t now_ms) {
  topic_history* h = find_locked(topic, now_ms);
  return h && h->epoch == epoch && offset < h->next;  // a copy, or older than the run
}

void recovery_store::keep_locked(std::string_view topic, fanout::frame* f, uint32_t epoch,
                                 uint64_t offset, uint64_t now_ms) {
  if (offset == UINT64_MAX) return;  // no next offset after it (only a forgery says so)
  topic_history* h = find_locked(topic, now_ms);
  if (h && (h->epoch != epoch || h->next != offset)) {  // not the next of the run: start anew
    drop_locked(*h);
    h = nullptr;
  }
  if (!h) {
    h = &create_locked(topic, epoch);
    h->next = offset;
  }
  push_locked(*h, f, now_ms);
  sequenced_.fetch_add(1, std::memory_order_relaxed);
}

// Past the TTL or over the budget: the least recently written topics go first (never `keep`,
// the topic being written).
void recovery_store::trim_locked(const topic_history* keep, uint64_t now_ms) {
  while (oldest_ && oldest_ != keep) {
    if (now_ms >= oldest_->written_ms + opt_.ttl_ms) {
      drop_locked(*oldest_);
      expired_.fetch_add(1, std::memory_order_relaxed);
    } else if (bytes_ > opt_.memory_bytes) {
      drop_locked(*oldest_);
      evicted_.fetch_add(1, std::memory_order_relaxed);
    } else {
      break;
    }
  }
}

void recovery_store::expire(uint64_t now_ms) {
  std::lock_guard lock(mu_);
  trim_locked(nullptr, now_ms);
}

void recovery_store::forget(std::string_view topic) {
  std::lock_guard lock(mu_);
  auto it = topics_.find(topic);
  if (it != topics_.end()) drop_locked(*it->second);
}

void recovery_store::forget_all() {
  std::lock_guard lock(mu_);
  while (oldest_) drop_locked(*oldest_);
}

recovery_store::totals recovery_store::current() const {
  std::lock_guard lock(mu_);
  return {topics_.size(), bytes_, frames_};
}

}  // namespace wsed::engine
