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

  void add(uint32_t shard, std::string_view pattern);     // pattern may be a glob
  void remove(uint32_t shard, std::string_view pattern);  // undoes one add
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

  uint32_t shards_;
  stripe stripes_[stripes];
  mutable std::shared_mutex globs_mutex_;
  std::vector<glob_interest> globs_;     // under globs_mutex_
  std::atomic<uint32_t> glob_count_{0};  // globs_.size(), read without the lock
};

}  // namespace wsed::fanout
