// fanout/router.cpp: shard interest per pattern (striped exact maps, one glob list).
//
// Owns: the interest maps. Thread: add/remove from the shard whose interest changed, shards_for
// from any publisher; readers share the locks, so publications on different topics never
// serialize. Never calls out while holding a lock; never blocks beyond those short sections.
#include "fanout/router.hpp"

#include <mutex>

#include "auth/acl.hpp"
#include "fanout/assert.hpp"
#include "fanout/topic_index.hpp"

namespace wsed::fanout {

router::router(uint32_t shards) : shards_(shards) {
  FANOUT_ASSERT(shards > 0 && shards <= router_shards_max);
}

router::~router() = default;

void router::add(uint32_t shard, std::string_view pattern) {
  FANOUT_ASSERT(shard < shards_);
  const uint64_t bit = uint64_t{1} << shard;
  if (is_glob(pattern)) {
    std::unique_lock lock(globs_mutex_);
    for (glob_interest& g : globs_) {
      if (g.pattern == pattern) {
        g.mask |= bit;
        return;
      }
    }
    globs_.push_back({std::string(pattern), bit});
    glob_count_.store(static_cast<uint32_t>(globs_.size()), std::memory_order_release);
    return;
  }
  const size_t hash = string_hash{}(pattern);
  stripe& s = stripes_[hash % stripes];
  std::unique_lock lock(s.mutex);
  auto it = s.masks.find(pattern);
  if (it == s.masks.end()) {
    s.masks.emplace(std::string(pattern), bit);
  } else {
    it->second |= bit;
  }
}

void router::remove(uint32_t shard, std::string_view pattern) {
  FANOUT_ASSERT(shard < shards_);
  const uint64_t bit = uint64_t{1} << shard;
  if (is_glob(pattern)) {
    std::unique_lock lock(globs_mutex_);
    for (size_t i = 0; i < globs_.size(); ++i) {
      if (globs_[i].pattern != pattern) continue;
      globs_[i].mask &= ~bit;
      if (globs_[i].mask == 0) {
        globs_[i] = std::move(globs_.back());
        globs_.pop_back();
        glob_count_.store(static_cast<uint32_t>(globs_.size()), std::memory_order_release);
      }
      return;
    }
    return;
  }
  stripe& s = stripes_[string_hash{}(pattern) % stripes];
  std::unique_lock lock(s.mutex);
  auto it = s.masks.find(pattern);
  if (it == s.masks.end()) return;
  it->second &= ~bit;
  if (it->second == 0) s.masks.erase(it);
}

uint64_t router::shards_for(std::string_view topic) const {
  uint64_t mask = 0;
  {
    const stripe& s = stripes_[string_hash{}(topic) % stripes];
    std::shared_lock lock(s.mutex);
    auto it = s.masks.find(topic);
    if (it != s.masks.end()) mask = it->second;
  }
  // Acquire (a plain load on x86): a glob added before this publication was ordered is seen.
  if (glob_count_.load(std::memory_order_acquire) == 0) return mask;
  const uint64_t all = shards_ == 64 ? ~uint64_t{0} : (uint64_t{1} << shards_) - 1;
  std::shared_lock lock(globs_mutex_);
  for (const glob_interest& g : globs_) {
    if (mask == all) break;
    if ((g.mask & ~mask) != 0 && auth::glob_match(g.pattern, topic)) mask |= g.mask;
  }
  return mask;
}

}  // namespace wsed::fanout
