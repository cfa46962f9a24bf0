// fanout/topic_index.hpp: one shard's subscriptions: exact topics in a hash map, glob patterns
// (`*` any run of bytes, `?` one byte, as auth::glob_match) in a list whose matches are cached per
// concrete topic. A subscriber receives each publication once even when several of its
// subscriptions match it.
//
// Owns: the pattern entries and per-subscriber subscription lists. Thread: the owning shard only.
// Subscriber ids are the caller's (the engine uses connection slots); the index names no engine
// type. Unsubscribe and unsubscribe_all cost O(subscriptions of that subscriber) (plus the glob
// cache invalidation when a glob's last subscriber leaves). for_each must not be re-entered and
// its callback must not modify the index (the engine defers closes until the walk is over).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fanout/string_map.hpp"

namespace wsed::fanout {

using subscriber_id = uint32_t;

// True when pattern contains `*` or `?`.
bool is_glob(std::string_view pattern);

enum class subscribe_result : uint8_t {
  added_first,  // added, and the pattern had no local subscriber before (router interest)
  added,        // added to a pattern that already had subscribers
  already,      // this subscriber already had exactly this pattern: nothing changed
};

enum class unsubscribe_result : uint8_t {
  removed_last,    // removed, and the pattern has no local subscriber left (router interest)
  removed,         // removed; others remain
  not_subscribed,  // the subscriber did not have this pattern: nothing changed
};

class topic_index {
 public:
  topic_index();
  ~topic_index();
  topic_index(const topic_index&) = delete;
  topic_index& operator=(const topic_index&) = delete;

  subscribe_result subscribe(subscriber_id id, std::string_view pattern);
  unsubscribe_result unsubscribe(subscriber_id id, std::string_view pattern);
  // Removes every pattern of id; on_removed(std::string_view pattern, bool was_last) per pattern.
  // on_removed must not modify the index; the pattern view is valid during the call only.
  template <class F>
  void unsubscribe_all(subscriber_id id, F&& on_removed) {
    if (id >= subscribers_.size()) return;
    while (!subscribers_[id].empty()) {
      entry* e = detach(id, subscribers_[id].size() - 1);
      on_removed(std::string_view(e->pattern), e->members.empty());
      if (e->members.empty()) erase_entry(e);
    }
  }

  // Patterns id holds (its subscription count, for --max-topics-per-connection).
  size_t subscriptions_of(subscriber_id id) const {
    return id < subscribers_.size() ? subscribers_[id].size() : 0;
  }
  // Whether any subscriber holds exactly this pattern.
  bool has_pattern(std::string_view pattern) const {
    return entries_.find(pattern) != entries_.end();
  }
  // Whether id holds exactly this pattern. O(its subscriptions).
  bool holds(subscriber_id id, std::string_view pattern) const {
    if (id >= subscribers_.size()) return false;
    for (const membership& m : subscribers_[id])
      if (m.e->pattern == pattern) return true;
    return false;
  }
  // Calls fn(subscriber_id, bool via_glob) once per subscriber that one of its patterns matches
  // topic (via_glob: only glob patterns of this subscriber matched, so the caller must check its
  // ACL against the concrete topic). Returns how many calls were made.
  template <class F>
  size_t for_each(std::string_view topic, F&& fn) {
    const entry* exact = find_exact(topic);
    const std::vector<entry*>* globs = glob_entries_ == 0 ? nullptr : globs_matching(topic);
    const size_t glob_lists = globs == nullptr ? 0 : globs->size();
    size_t calls = 0;
    if (glob_lists == 0 || (exact == nullptr && glob_lists == 1)) {
      // One list: every member is distinct, no dedupe needed.
      const entry* only = exact != nullptr ? exact : glob_lists == 1 ? (*globs)[0] : nullptr;
      if (only == nullptr) return 0;
      const bool via_glob = only != exact;
      for (const member& m : only->members) fn(m.id, via_glob);
      return only->members.size();
    }
    const uint32_t pass = next_pass();
    if (exact != nullptr) {
      for (const member& m : exact->members) {
        stamps_[m.id] = pass;
        fn(m.id, false);
      }
      calls += exact->members.size();
    }
    for (const entry* g : *globs) {
      for (const member& m : g->members) {
        if (stamps_[m.id] == pass) continue;
        stamps_[m.id] = pass;
        fn(m.id, true);
        ++calls;
      }
    }
    return calls;
  }
  // Distinct subscribers a publication on topic would reach.
  size_t subscriber_count(std::string_view topic) {
    return for_each(topic, [](subscriber_id, bool) {});
  }
  // Distinct patterns with at least one subscriber (exact + glob).
  size_t pattern_count() const { return entries_.size(); }
  // Glob patterns with at least one subscriber.
  size_t glob_count() const { return glob_entries_; }

  // Concrete topics whose glob match list is cached before the cache is dropped whole.
  static constexpr size_t glob_cache_topics_max = 4096;

 private:
  struct entry;
  // One subscription seen from its pattern: who, and where in that subscriber's list it is.
  struct member {
    subscriber_id id;
    uint32_t position_in_subscriber;
  };
  // One subscription seen from its subscriber: which pattern, and where in its member list.
  struct membership {
    entry* e;
    uint32_t position_in_entry;
  };
  struct entry {
    std::string_view pattern;  // the map key (stable: unordered_map nodes do not move)
    bool glob = false;
    uint32_t position_in_globs = 0;  // glob entries: index in globs_
    std::vector<member> members;
  };
  const entry* find_exact(std::string_view topic) const;
  // The glob entries matching topic, from the cache or computed (and cached).
  const std::vector<entry*>* globs_matching(std::string_view topic);
  uint32_t next_pass();
  // Removes subscription `position` of id from both sides; returns its entry (maybe empty now).
  entry* detach(subscriber_id id, size_t position);
  // Erases an entry without members (and its glob list slot and the glob cache when a glob).
  void erase_entry(entry* e);

  string_map<entry> entries_;                         // every pattern with a subscriber
  std::vector<entry*> globs_;                         // the glob entries of entries_
  size_t glob_entries_ = 0;                           // globs_.size()
  string_map<std::vector<entry*>> glob_cache_;        // concrete topic -> matching globs
  std::vector<std::vector<membership>> subscribers_;  // by subscriber id
  std::vector<uint32_t> stamps_;                      // by subscriber id: last pass that reached it
  uint32_t pass_ = 0;
};

}  // namespace wsed::fanout
