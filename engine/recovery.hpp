// engine/recovery.hpp: the history of recoverable topics (PROTOCOL.md "Recovery"): one
// sequencer per topic for the process, so a client that reconnects gets what it missed.
//
// Per topic: an epoch (random u32, new whenever the topic's history is recreated), a dense offset
// from 0, and a ring of the last `buffer` stamped frames (grown by doubling up to it). Every
// publication on a recoverable topic is stamped {"tp":..,"e":..,"o":.., + the publication, and
// the same immutable frame is what subscribers get live and what a recovering subscriber gets
// replayed, so both are byte-identical. Limits: the ring, a TTL since the topic's last write, a
// process memory budget (the least recently written topics are dropped first: an intrusive LRU
// list by write), at most max_replay publications replayed (a larger backlog is not recovered,
// never truncated).
//
// With Redis (engine/redis_bridge) the sequence lives in Redis and this store is filled from
// what Redis sends (append_stamped): it then holds what this instance received, as a cache.
//
// Owns: the stamped frames it keeps (one reference each; heap frames, so it may outlive the
// shards' pools). Thread: any thread; one mutex for the whole store, held while a publication
// is stamped and pushed into the shards' inboxes (so one topic's frames reach every inbox in
// offset order) and while a replay is queued (so no publication slips between the replay and
// the live stream). Never blocks on I/O.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "fanout/frame.hpp"
#include "fanout/string_map.hpp"

namespace wsed::engine {

struct recovery_options {
  uint32_t buffer = 128;  // publications kept per topic (power of two, at least 16)
  uint64_t ttl_ms = 300000;
  uint32_t max_replay = 500;
  uint64_t memory_bytes = 256ull << 20;
  uint64_t seed = 0;  // epochs' random source (0: std::random_device)
};

// What one topic's history answers a recovering subscriber.
struct recovery_answer {
  bool has_history = false;  // false: epoch null, offset 0 (no history, or ACL-denied, or a glob)
  uint32_t epoch = 0;
  uint64_t offset = 0;  // the last offset written (head - 1)
  bool recovered = false;
  uint64_t count = 0;  // publications actually queued
};

// Where a subscriber stands in a topic's sequence (from its request).
struct recovery_position {
  bool has_epoch = false;
  uint32_t epoch = 0;
  bool has_offset = false;
  uint64_t offset = 0;  // the last offset it received
};

class recovery_store {
 public:
  explicit recovery_store(recovery_options options);
  ~recovery_store();
  recovery_store(const recovery_store&) = delete;
  recovery_store& operator=(const recovery_store&) = delete;

  const recovery_options& options() const { return opt_; }

  // Sequences one publication of topic (json: an object with its "c"): stamps it with the next
  // offset and calls route(frame) -> bool with the store locked; true: the frame is kept (the
  // offset is taken), false (the inboxes refused it): nothing changed, the caller reports busy.
  // route must not call back into the store. False also when the frame cannot be allocated.
  template <class Route>
  bool sequence(std::string_view topic, std::string_view json, uint64_t now_ms, Route&& route) {
    std::lock_guard lock(mu_);
    fanout::frame* f = stamp_locked(topic, json, now_ms);
    if (!f) return false;
    bool ok = route(f);
    if (ok) commit_locked(topic, f, now_ms);
    fanout::release(f);
    return ok;
  }

  // Keeps a frame stamped elsewhere (Redis) with its epoch and offset, then calls route(frame)
  // with the store locked (its result is returned). A frame that does not continue the topic's
  // run (another epoch, or an offset that is not the next) starts a new run from it: the cache
  // only ever holds a contiguous range. An offset of the current run already kept (a second
  // copy) is not routed again.
  template <class Route>
  bool append_stamped(std::string_view topic, fanout::frame* f, uint32_t epoch, uint64_t offset,
                      uint64_t now_ms, Route&& route) {
    std::lock_guard lock(mu_);
    if (seen_locked(topic, epoch, offset, now_ms)) return true;  // a copy: delivered already
    bool ok = route(f);
    if (ok) keep_locked(topic, f, epoch, offset, now_ms);
    return ok;
  }

  // Queues the replay for a subscriber at `at`: send(frame) -> bool for each later publication,
  // in order, only when the whole backlog can be given (same epoch, still kept, at most
  // max_replay). Stops at the first send that fails (count says how many went).
  // The frames are taken (one reference each) under the lock and sent after it: the caller is
  // the subscriber's shard, so whatever is published meanwhile reaches it later, through its
  // inbox.
  template <class Send>
  recovery_answer replay(std::string_view topic, const recovery_position& at, uint64_t now_ms,
                         Send&& send) {
    thread_local std::vector<fanout::frame*> frames;
    frames.clear();
    recovery_answer a = take(topic, at, now_ms, frames);
    bool ok = a.recovered;
    for (fanout::frame* f : frames) {
      if (ok && send(f)) {
        ++a.count;
      } else {
        ok = false;
      }
      fanout::release(f);
    }
    a.recovered = ok;
    frames.clear();
    return a;
  }

  // Whether replay would recover a subscriber at `at` now (nothing is queued).
  bool covers(std::string_view topic, const recovery_position& at, uint64_t now_ms) {
    std::lock_guard lock(mu_);
    topic_history* h = find_locked(topic, now_ms);
    if (!h || !at.has_epoch || !at.has_offset || at.epoch != h->epoch) return false;
    uint64_t first = h->next - h->count;
    return at.offset < h->next && at.offset + 1 >= first &&
           h->next - 1 - at.offset <= opt_.max_replay;
  }

  // Drops the topics whose TTL passed (also done on every write); any thread.
  void expire(uint64_t now_ms);
  // Drops one topic's history (its next publication starts a new epoch).
  void forget(std::string_view topic);
  // Drops every topic's history (the cache is no longer contiguous: Redis was lost).
  void forget_all();

  struct totals {
    uint64_t topics = 0, bytes = 0, frames = 0;
  };
  totals current() const;
  // Counters (relaxed; any thread).
  uint64_t sequenced() const { return sequenced_.load(std::memory_order_relaxed); }
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }
  uint64_t expired() const { return expired_.load(std::memory_order_relaxed); }

 private:
  struct topic_history {
    std::string topic;
    uint32_t epoch = 0;
    uint64_t next = 0;                 // the next offset
    uint64_t count = 0;                // frames kept: offsets [next - count, next)
    std::vector<fanout::frame*> ring;  // a power of two, grown up to buffer
    uint64_t bytes = 0;                // accounted to the budget
    uint64_t written_ms = 0;
    topic_history* newer = nullptr;  // LRU by write: head is the most recently written
    topic_history* older = nullptr;
  };

  // replay's part under the lock: the answer (count 0) and the frames to send, retained.
  recovery_answer take(std::string_view topic, const recovery_position& at, uint64_t now_ms,
                       std::vector<fanout::frame*>& frames);
  bool seen_locked(std::string_view topic, uint32_t epoch, uint64_t offset, uint64_t now_ms);
  fanout::frame* stamp_locked(std::string_view topic, std::string_view json, uint64_t now_ms);
  void commit_locked(std::string_view topic, fanout::frame* f, uint64_t now_ms);
  void keep_locked(std::string_view topic, fanout::frame* f, uint32_t epoch, uint64_t offset,
                   uint64_t now_ms);
  topic_history* find_locked(std::string_view topic, uint64_t now_ms);
  topic_history& create_locked(std::string_view topic, uint32_t epoch);
  void push_locked(topic_history& h, fanout::frame* f, uint64_t now_ms);
  void touch_locked(topic_history& h, uint64_t now_ms);
  void unlink_locked(topic_history& h);
  void drop_locked(topic_history& h);
  void trim_locked(const topic_history* keep, uint64_t now_ms);
  uint32_t new_epoch_locked(uint32_t avoid);

  const recovery_options opt_;
  mutable std::mutex mu_;
  fanout::string_map<std::unique_ptr<topic_history>> topics_;  // under mu_
  topic_history* newest_ = nullptr;                            // under mu_
  topic_history* oldest_ = nullptr;                            // under mu_
  uint64_t bytes_ = 0;                                         // under mu_
  uint64_t frames_ = 0;                                        // under mu_
  uint64_t rng_state_;                                         // under mu_
  uint32_t pending_epoch_ = 0;  // under mu_: the epoch stamp_locked gave a topic not yet kept
  std::string text_;            // under mu_: stamped JSON
  std::atomic<uint64_t> sequenced_{0}, evicted_{0}, expired_{0};
};

}  // namespace wsed::engine
