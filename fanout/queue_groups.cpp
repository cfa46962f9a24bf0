// fanout/queue_groups.cpp: queue group membership (striped topic maps of sorted group lists) and
// the info query. pick is in the header (its callbacks are templates).
//
// Owns: the maps of queue_groups.hpp. Thread: any; each call holds one stripe's mutex for a short
// section and never calls out while holding it.
#include "fanout/queue_groups.hpp"

#include <algorithm>

#include "proto/wse_builder.hpp"

namespace wsed::fanout {

namespace {

template <class Groups>
auto find_group(Groups& groups, std::string_view name) {
  auto it = std::lower_bound(groups.begin(), groups.end(), name,
                             [](const auto& g, std::string_view n) { return g.name < n; });
  return it != groups.end() && it->name == name ? it : groups.end();
}

}  // namespace

queue_groups::queue_groups() = default;

queue_groups::~queue_groups() = default;

bool queue_groups::add(std::string_view topic, std::string_view group, qg_member m) {
  stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto [t, new_topic] = s.topics.try_emplace(std::string(topic));
  topic_groups& groups = t->second;
  auto g = std::lower_bound(groups.begin(), groups.end(), group,
                            [](const group_entry& e, std::string_view n) { return e.name < n; });
  if (g == groups.end() || g->name != group) {
    g = groups.insert(g, group_entry{std::string(group), {}, {}, 0});
    groups_.fetch_add(1, std::memory_order_relaxed);
  } else if (std::find(g->members.begin(), g->members.end(), m) != g->members.end()) {
    return false;
  }
  g->members.push_back(m);
  g->busy.push_back(0);
  members_.fetch_add(1, std::memory_order_relaxed);
  if (new_topic) topics_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool queue_groups::remove(std::string_view topic, std::string_view group, qg_member m) {
  stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return false;
  topic_groups& groups = t->second;
  auto g = find_group(groups, group);
  if (g == groups.end()) return false;
  auto it = std::find(g->members.begin(), g->members.end(), m);
  if (it == g->members.end()) return false;
  const size_t index = static_cast<size_t>(it - g->members.begin());
  g->members.erase(it);  // keeps the rotation order
  g->busy.erase(g->busy.begin() + static_cast<ptrdiff_t>(index));
  members_.fetch_sub(1, std::memory_order_relaxed);
  // The same member stays next: those after the removed one moved down by one.
  if (index < g->cursor) --g->cursor;
  if (g->cursor >= g->members.size()) g->cursor = 0;
  if (!g->members.empty()) return true;
  groups.erase(g);
  groups_.fetch_sub(1, std::memory_order_relaxed);
  if (groups.empty()) {
    s.topics.erase(t);
    topics_.fetch_sub(1, std::memory_order_relaxed);
  }
  return true;
}

bool queue_groups::set_busy(std::string_view topic, qg_member m, bool busy) {
  stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return false;
  bool found = false;
  for (group_entry& g : t->second)
    for (size_t i = 0; i < g.members.size(); ++i)
      if (g.members[i] == m) {
        g.busy[i] = busy ? 1 : 0;
        found = true;
      }
  return found;
}

queue_groups::member_state queue_groups::state_of(std::string_view topic, std::string_view group,
                                                  qg_member m) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return member_state::absent;
  auto g = find_group(t->second, group);
  if (g == t->second.end()) return member_state::absent;
  for (size_t i = 0; i < g->members.size(); ++i)
    if (g->members[i] == m) return g->busy[i] ? member_state::busy : member_state::ready;
  return member_state::absent;
}

bool queue_groups::has(std::string_view topic) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  return s.topics.find(topic) != s.topics.end();
}

void queue_groups::info_json(std::string_view topic, std::string& out) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  out.push_back('{');
  auto t = s.topics.find(topic);
  if (t != s.topics.end()) {
    bool first = true;
    for (const group_entry& g : t->second) {
      if (!first) out.push_back(',');
      first = false;
      proto::wse_append_json_string(out, g.name);
      out.push_back(':');
      out.append(std::to_string(g.members.size()));
    }
  }
  out.push_back('}');
}

size_t queue_groups::groups(std::string_view topic) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  return t == s.topics.end() ? 0 : t->second.size();
}

size_t queue_groups::members(std::string_view topic, std::string_view group) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return 0;
  auto g = find_group(t->second, group);
  return g == t->second.end() ? 0 : g->members.size();
}

qg_totals queue_groups::totals() const {
  return {topics_.load(std::memory_order_relaxed), groups_.load(std::memory_order_relaxed),
          members_.load(std::memory_order_relaxed)};
}

}  // namespace wsed::fanout
