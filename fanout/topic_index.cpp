// fanout/topic_index.cpp: one shard's subscriptions (exact map, glob list, per-topic glob match
// cache, per-subscriber back references for O(own subscriptions) removal).
//
// Owns: the entries, the member lists and the cache. Thread: the owning shard only. Never
// allocates in for_each except on a glob cache miss; never calls back into the caller except
// through for_each's and unsubscribe_all's callbacks.
#include "fanout/topic_index.hpp"

#include <algorithm>

#include "auth/acl.hpp"
#include "fanout/assert.hpp"

namespace wsed::fanout {

bool is_glob(std::string_view pattern) {
  return pattern.find_first_of("*?") != std::string_view::npos;
}

topic_index::topic_index() = default;
topic_index::~topic_index() = default;

subscribe_result topic_index::subscribe(subscriber_id id, std::string_view pattern) {
  if (id >= subscribers_.size()) {
    const size_t size = std::max<size_t>(size_t{id} + 1, subscribers_.size() * 2);
    subscribers_.resize(size);
    stamps_.resize(size, 0);
  }
  std::vector<membership>& own = subscribers_[id];
  auto it = entries_.find(pattern);
  subscribe_result result = subscribe_result::added;
  if (it != entries_.end()) {
    // Already subscribed? Scan the shorter of the two lists.
    const entry& e = it->second;
    if (own.size() <= e.members.size()) {
      for (const membership& m : own) {
        if (m.e == &e) return subscribe_result::already;
      }
    } else {
      for (const member& m : e.members) {
        if (m.id == id) return subscribe_result::already;
      }
    }
  } else {
    it = entries_.try_emplace(std::string(pattern)).first;
    entry& e = it->second;
    e.pattern = it->first;
    e.glob = is_glob(pattern);
    if (e.glob) {
      e.position_in_globs = static_cast<uint32_t>(globs_.size());
      globs_.push_back(&e);
      glob_entries_ = globs_.size();
      glob_cache_.clear();
    }
    result = subscribe_result::added_first;
  }
  entry& e = it->second;
  e.members.push_back({id, static_cast<uint32_t>(own.size())});
  own.push_back({&e, static_cast<uint32_t>(e.members.size() - 1)});
  return result;
}

unsubscribe_result topic_index::unsubscribe(subscriber_id id, std::string_view pattern) {
  if (id >= subscribers_.size()) return unsubscribe_result::not_subscribed;
  auto it = entries_.find(pattern);
  if (it == entries_.end()) return unsubscribe_result::not_subscribed;
  const std::vector<membership>& own = subscribers_[id];
  for (size_t i = 0; i < own.size(); ++i) {
    if (own[i].e != &it->second) continue;
    entry* e = detach(id, i);
    if (!e->members.empty()) return unsubscribe_result::removed;
    erase_entry(e);
    return unsubscribe_result::removed_last;
  }
  return unsubscribe_result::not_subscribed;
}

topic_index::entry* topic_index::detach(subscriber_id id, size_t position) {
  std::vector<membership>& own = subscribers_[id];
  FANOUT_ASSERT(position < own.size());
  const membership gone = own[position];
  entry* e = gone.e;
  FANOUT_ASSERT(gone.position_in_entry < e->members.size());
  FANOUT_ASSERT(e->members[gone.position_in_entry].id == id);
  // Swap-remove from the entry's members; the moved member's subscriber learns its new place.
  const member moved = e->members.back();
  e->members[gone.position_in_entry] = moved;
  e->members.pop_back();
  if (gone.position_in_entry < e->members.size()) {
    subscribers_[moved.id][moved.position_in_subscriber].position_in_entry = gone.position_in_entry;
  }
  // Swap-remove from the subscriber's list; the moved membership's entry learns its new place.
  const membership last = own.back();
  own[position] = last;
  own.pop_back();
  if (position < own.size()) {
    last.e->members[last.position_in_entry].position_in_subscriber =
        static_cast<uint32_t>(position);
  }
  return e;
}

void topic_index::erase_entry(entry* e) {
  FANOUT_ASSERT(e->members.empty());
  if (e->glob) {
    const uint32_t slot = e->position_in_globs;
    FANOUT_ASSERT(slot < globs_.size() && globs_[slot] == e);
    globs_[slot] = globs_.back();
    globs_[slot]->position_in_globs = slot;
    globs_.pop_back();
    glob_entries_ = globs_.size();
    glob_cache_.clear();  // cached lists may point at e
  }
  auto it = entries_.find(e->pattern);
  FANOUT_ASSERT(it != entries_.end() && &it->second == e);
  entries_.erase(it);
}

const topic_index::entry* topic_index::find_exact(std::string_view topic) const {
  auto it = entries_.find(topic);
  if (it == entries_.end() || it->second.glob) return nullptr;
  return &it->second;
}

const std::vector<topic_index::entry*>* topic_index::globs_matching(std::string_view topic) {
  auto it = glob_cache_.find(topic);
  if (it != glob_cache_.end()) return &it->second;
  if (glob_cache_.size() >= glob_cache_topics_max) glob_cache_.clear();
  std::vector<entry*> matching;
  for (entry* g : globs_) {
    if (auth::glob_match(g->pattern, topic)) matching.push_back(g);
  }
  return &glob_cache_.try_emplace(std::string(topic), std::move(matching)).first->second;
}

uint32_t topic_index::next_pass() {
  if (++pass_ == 0) {
    std::fill(stamps_.begin(), stamps_.end(), 0);
    pass_ = 1;
  }
  return pass_;
}

}  // namespace wsed::fanout
