// fanout/router.hpp: which shards have local subscribers for a topic, so a publisher sends a
// frame only to shards where someone listens (a shard with no subscriber receives nothing).
//
// Written by a shard when one of its patterns gets its first local subscriber (add) or loses its
// last (remove): topic_index's added_first / removed_last. Read by publishers on any thread.
// Exact patterns live in striped hash maps under shared mutexes (taken per publication and per
// interest change, never per delivery); globs in one list under a shared mutex, skipped entirely
// (one relaxed load) while no glob is subscribed anywhere. At most 64 shards.
#pragma once

#include <cstdint>
#include <string_view>

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
  uint32_t shards() const;
};

}  // namespace wsed::fanout
