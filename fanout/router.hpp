// fanout/router.hpp: which shards have local subscribers for a topic, so a publisher sends a
// frame only to shards where someone listens (a shard with no subscriber receives nothing).
//
// Written by a shard when one of its patterns gets its first local subscriber (add) or loses its
// last (remove): topic_index's added_first / removed_last. Read by publishers on any thread.
// Exact patterns live in striped hash maps under shared mutexes (taken per publication and per
// interest change, never per delivery); globs in one list under a shared mutex, skipped entirely
// (one relaxed load) while no glob is subscribed anywhere. At most 64 shards.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fanout/string_map.hpp"

namespace wsed::fanout {

inline constexpr uint32_t router_shards_max = 64;

class router {
 public:
  explicit router(uint32_t shards);
  ~router();
  router(const router&) = delete;
  router& operator=(const router&) = delete;

  // pattern may be a glob. True when the process had no shard interested before (add) or has
  // none left (remove): what the Redis bridge subscribes / unsubscribes on.
  bool add(uint32_t shard, std::string_view pattern);
  bool remove(uint32_t shard, std::string_view pattern);  // undoes one add
  // The same for a user id (per-user sends), kept apart from topics.
  bool add_user(uint32_t shard, std::string_view user);
  bool remove_user(uint32_t shard, std::string_view user);
  // Whether any shard holds this pattern (exactly as added) / this user.
  bool wants(std::string_view pattern) const;
  bool wants_user(std::string_view user) const;
  // Bit i set: shard i has a subscriber whose pattern matches topic.
  uint64_t shards_for(std::string_view topic) const;
  uint32_t shards() const { return shards_; }

 private:
  static constexpr size_t stripes = 8;
  struct alignas(64) stripe {
    mutable std::shared_mutex mutex;
    string_map<uint64_t> masks;
  };
  struct glob_interest {
    std::string pattern;
    uint64_t mask;
  };

  bool add_exact(uint64_t bit, std::string_view key);
  bool remove_exact(uint64_t bit, std::string_view key);
  bool wants_exact(std::string_view key) const;

  uint32_t shards_;
  stripe stripes_[stripes];
  mutable std::shared_mutex globs_mutex_;
  std::vector<glob_interest> globs_;     // under globs_mutex_
  std::atomic<uint32_t> glob_count_{0};  // globs_.size(), read without the lock
};

}  // namespace wsed::fanout
