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

namespace {

// Users share the exact maps with topics under a first byte no topic can hold.
constexpr char user_mark = '\x01';

std::string user_key(std::string_view user) {
  std::string k(1, user_mark);
  k.append(user);
  return k;
}

}  // namespace

bool router::add_exact(uint64_t bit, std::string_view key) {
  stripe& s = stripes_[string_hash{}(key) % stripes];
  std::unique_lock lock(s.mutex);
  auto it = s.masks.find(key);
  if (it == s.masks.end()) {
    s.masks.emplace(std::string(key), bit);
    return true;
  }
  bool first = it->second == 0;
  it->second |= bit;
  return first;
}

bool router::remove_exact(uint64_t bit, std::string_view key) {
  stripe& s = stripes_[string_hash{}(key) % stripes];
  std::unique_lock lock(s.mutex);
  auto it = s.masks.find(key);
  if (it == s.masks.end() || (it->second & bit) == 0) return false;
  it->second &= ~bit;
  if (it->second != 0) return false;
  s.masks.erase(it);
  return true;
}

bool router::wants_exact(std::string_view key) const {
  const stripe& s = stripes_[string_hash{}(key) % stripes];
  std::shared_lock lock(s.mutex);
  return s.masks.find(key) != s.masks.end();
}

bool router::add(uint32_t shard, std::string_view pattern) {
  FANOUT_ASSERT(shard < shards_);
  const uint64_t bit = uint64_t{1} << shard;
  if (!is_glob(pattern)) return add_exact(bit, pattern);
  std::unique_lock lock(globs_mutex_);
  for (glob_interest& g : globs_) {
    if (g.pattern == pattern) {
      g.mask |= bit;
      return false;
    }
  }
  globs_.push_back({std::string(pattern), bit});
  glob_count_.store(static_cast<uint32_t>(globs_.size()), std::memory_order_release);
  return true;
}

bool router::remove(uint32_t shard, std::string_view pattern) {
  FANOUT_ASSERT(shard < shards_);
  const uint64_t bit = uint64_t{1} << shard;
  if (!is_glob(pattern)) return remove_exact(bit, pattern);
  std::unique_lock lock(globs_mutex_);
  for (size_t i = 0; i < globs_.size(); ++i) {
    if (globs_[i].pattern != pattern) continue;
    globs_[i].mask &= ~bit;
    if (globs_[i].mask != 0) return false;
    globs_[i] = std::move(globs_.back());
    globs_.pop_back();
    glob_count_.store(static_cast<uint32_t>(globs_.size()), std::memory_order_release);
    return true;
  }
  return false;
}

bool router::add_user(uint32_t shard, std::string_view user) {
  FANOUT_ASSERT(shard < shards_);
  return add_exact(uint64_t{1} << shard, user_key(user));
}

bool router::remove_user(uint32_t shard, std::string_view user) {
  FANOUT_ASSERT(shard < shards_);
  return remove_exact(uint64_t{1} << shard, user_key(user));
}

bool router::wants(std::string_view pattern) const {
  if (!is_glob(pattern)) return wants_exact(pattern);
  std::shared_lock lock(globs_mutex_);
  for (const glob_interest& g : globs_) {
    if (g.pattern == pattern) return true;
  }
  return false;
}

bool router::wants_user(std::string_view user) const {
  return wants_exact(user_key(user));
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
