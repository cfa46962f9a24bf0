// fanout/queue_groups.hpp: which members form each queue group of each exact topic, process-wide,
// and the round-robin pick (PROTOCOL.md "Queue groups": each publication on the topic goes to one
// member of each group, skipping members that cannot take it; none can -> the caller drops and
// counts it).
//
// Owns: the topic -> groups -> members lists and one round-robin cursor per group. Thread: any
// (shards add and remove their members and pick on publication; the HTTP thread reads the info).
// Topics are striped by hash over 16 mutexes, never a global lock; any() is one relaxed load so
// publications skip everything while no group exists. Members are the caller's (shard, slot,
// generation), compared for equality only: no engine type. pick's callbacks run under the
// stripe's lock and must not call back into the registry.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "fanout/string_map.hpp"

namespace wsed::fanout {

struct qg_member {
  uint32_t shard;
  uint32_t slot;
  uint32_t generation;
  friend bool operator==(const qg_member&, const qg_member&) = default;
};

struct qg_totals {
  uint64_t topics = 0;   // topics with at least one group
  uint64_t groups = 0;   // summed over topics
  uint64_t members = 0;  // summed over groups
};

class queue_groups {
 public:
  queue_groups();
  ~queue_groups();
  queue_groups(const queue_groups&) = delete;
  queue_groups& operator=(const queue_groups&) = delete;

  // m joins group of topic, after the group's current members in its rotation. False (nothing
  // changed) when m is already there. O(members of the group).
  bool add(std::string_view topic, std::string_view group, qg_member m);
  // m leaves; false when it was not there. The cursor keeps pointing at the same next member.
  // The last member drops the group, the last group drops the topic.
  bool remove(std::string_view topic, std::string_view group, qg_member m);

  // Whether any topic has a group (one relaxed load), and whether this topic has one.
  bool any() const { return topics_.load(std::memory_order_relaxed) != 0; }
  bool has(std::string_view topic) const;

  // For each group of topic, in group name order: tries the members round robin from the
  // group's cursor, each at most once (busy ones skipped), and calls on_pick(std::string_view
  // group, const qg_member*) with the first one for which can_take(const qg_member&) is true (the
  // cursor then moves past it), or with nullptr when none could take it (the cursor stays). Returns
  // the number of groups (0: the topic has none). Runs under the stripe's lock: the callbacks must
  // not call back into the registry, and the pointer is valid during on_pick only.
  // only_group: that group alone (when the topic has it).
  template <class CanTake, class OnPick>
  size_t pick(std::string_view topic, CanTake&& can_take, OnPick&& on_pick,
              std::string_view only_group = {}) {
    stripe& s = stripe_for(topic);
    std::lock_guard lock(s.mutex);
    auto t = s.topics.find(topic);
    if (t == s.topics.end()) return 0;
    for (group_entry& g : t->second) {
      if (!only_group.empty() && g.name != only_group) continue;
      const size_t n = g.members.size();
      const qg_member* chosen = nullptr;
      for (size_t k = 0; k < n; ++k) {
        size_t i = g.cursor + k;
        if (i >= n) i -= n;
        if (!g.busy[i] && can_take(static_cast<const qg_member&>(g.members[i]))) {
          chosen = &g.members[i];
          g.cursor = i + 1 == n ? 0 : i + 1;
          break;
        }
      }
      on_pick(std::string_view(g.name), chosen);
    }
    return t->second.size();
  }

  // Marks m busy (its owner saw its outbound queue fill: pick skips it) or not busy again in
  // every group of topic it is in. False when m is in none of them.
  bool set_busy(std::string_view topic, qg_member m, bool busy);
  // Whether m is in group of topic, and busy.
  enum class member_state : uint8_t { absent, ready, busy };
  member_state state_of(std::string_view topic, std::string_view group, qg_member m) const;

  // Appends {"<group>":<member count>,...}, groups sorted ("{}" for a topic without groups).
  void info_json(std::string_view topic, std::string& out) const;
  size_t groups(std::string_view topic) const;
  size_t members(std::string_view topic, std::string_view group) const;
  // Process totals for metrics, lock-free (relaxed).
  qg_totals totals() const;

 private:
  struct group_entry {
    std::string name;
    std::vector<qg_member> members;  // rotation order
    std::vector<uint8_t> busy;       // per member (same index): skipped by pick
    size_t cursor = 0;               // index of the next member to try (< members.size())
  };
  using topic_groups = std::vector<group_entry>;  // sorted by name; never empty in the map
  static constexpr size_t stripes = 16;
  struct alignas(64) stripe {
    mutable std::mutex mutex;
    string_map<topic_groups> topics;
  };

  stripe& stripe_for(std::string_view topic) { return stripes_[string_hash{}(topic) % stripes]; }
  const stripe& stripe_for(std::string_view topic) const {
    return stripes_[string_hash{}(topic) % stripes];
  }

  stripe stripes_[stripes];
  std::atomic<uint64_t> topics_{0};
  std::atomic<uint64_t> groups_{0};
  std::atomic<uint64_t> members_{0};
};

}  // namespace wsed::fanout
