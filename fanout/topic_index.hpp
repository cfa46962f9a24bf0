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
#include <string>
#include <string_view>

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
  template <class F>
  void unsubscribe_all(subscriber_id id, F&& on_removed);

  // Patterns id holds (its subscription count, for --max-topics-per-connection).
  size_t subscriptions_of(subscriber_id id) const;
  // Calls fn(subscriber_id, bool via_glob) once per subscriber that one of its patterns matches
  // topic (via_glob: only glob patterns of this subscriber matched, so the caller must check its
  // ACL against the concrete topic). Returns how many calls were made.
  template <class F>
  size_t for_each(std::string_view topic, F&& fn);
  // Distinct subscribers a publication on topic would reach.
  size_t subscriber_count(std::string_view topic);
  // Distinct patterns with at least one subscriber (exact + glob).
  size_t pattern_count() const;
};

}  // namespace wsed::fanout
