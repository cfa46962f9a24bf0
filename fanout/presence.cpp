// fanout/presence.cpp: the presence registry (striped topic maps, relaxed totals) and the JSON
// string escaper fanout's queries share.
//
// Owns: the maps of presence.hpp. Thread: any; every call holds one stripe's mutex for a short
// section (members_json: for the walk of one topic) and never calls out while holding it.
#include "fanout/presence.hpp"

#include "proto/wse_builder.hpp"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "fanout/assert.hpp"

namespace wsed::fanout {

namespace {

constexpr std::string_view empty_data = "{}";

void add_bytes(std::atomic<uint64_t>& bytes, size_t added, size_t removed) {
  if (added >= removed) {
    bytes.fetch_add(added - removed, std::memory_order_relaxed);
  } else {
    bytes.fetch_sub(removed - added, std::memory_order_relaxed);
  }
}

}  // namespace

// --- conn_list ---

presence_registry::conn_list::~conn_list() {
  if (capacity_ > 1) delete[] many_;
}

bool presence_registry::conn_list::contains(uint64_t conn) const {
  const uint64_t* p = begin();
  return std::find(p, p + size_, conn) != p + size_;
}

void presence_registry::conn_list::add(uint64_t conn) {
  if (size_ == 0) {  // only while inline: a heap array shrinks back at one element
    one_ = conn;
    size_ = 1;
    return;
  }
  if (size_ == capacity_) {
    const uint32_t capacity = capacity_ == 1 ? 4 : capacity_ * 2;
    auto* grown = new uint64_t[capacity];
    std::memcpy(grown, begin(), size_ * sizeof(uint64_t));
    if (capacity_ > 1) delete[] many_;
    many_ = grown;
    capacity_ = capacity;
  }
  many_[size_++] = conn;
}

bool presence_registry::conn_list::remove(uint64_t conn) {
  if (capacity_ == 1) {
    if (size_ == 0 || one_ != conn) return false;
    size_ = 0;
    return true;
  }
  uint64_t* p = many_;
  uint64_t* it = std::find(p, p + size_, conn);
  if (it == p + size_) return false;
  *it = p[--size_];
  if (size_ == 1) {  // back inline: memory returns
    const uint64_t last = p[0];
    delete[] p;
    one_ = last;
    capacity_ = 1;
  }
  return true;
}

// --- presence_registry ---

presence_registry::presence_registry(presence_limits limits) : limits_(limits) {}

presence_registry::~presence_registry() = default;

void presence_registry::set_data(user_entry& u, std::string_view data) {
  add_bytes(bytes_, data.size(), u.data.size());
  u.data.assign(data);
}

presence_change presence_registry::join(std::string_view topic, std::string_view user,
                                        uint64_t conn, std::string_view data) {
  if (data.empty()) data = empty_data;
  if (data.size() > limits_.data_bytes_max) return presence_change::data_too_large;
  stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t != s.topics.end()) {
    auto u = t->second.users.find(user);
    if (u != t->second.users.end()) {
      if (!u->second.conns.contains(conn)) {
        u->second.conns.add(conn);
        ++t->second.connections;
        connections_.fetch_add(1, std::memory_order_relaxed);
      }
      if (u->second.data == data) return presence_change::unchanged;
      set_data(u->second, data);
      return presence_change::updated;
    }
    if (limits_.members_max != 0 && t->second.users.size() >= limits_.members_max) {
      return presence_change::too_many_members;
    }
  } else {
    t = s.topics.try_emplace(std::string(topic)).first;
    topics_.fetch_add(1, std::memory_order_relaxed);
    bytes_.fetch_add(topic.size(), std::memory_order_relaxed);
  }
  t->second.users.try_emplace(std::string(user), data, conn);
  ++t->second.connections;
  users_.fetch_add(1, std::memory_order_relaxed);
  connections_.fetch_add(1, std::memory_order_relaxed);
  bytes_.fetch_add(user.size() + data.size(), std::memory_order_relaxed);
  return presence_change::joined;
}

presence_change presence_registry::update(std::string_view topic, std::string_view user,
                                          uint64_t conn, std::string_view data) {
  if (data.empty()) data = empty_data;
  if (data.size() > limits_.data_bytes_max) return presence_change::data_too_large;
  stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return presence_change::not_member;
  auto u = t->second.users.find(user);
  if (u == t->second.users.end() || !u->second.conns.contains(conn)) {
    return presence_change::not_member;
  }
  if (u->second.data == data) return presence_change::unchanged;
  set_data(u->second, data);
  return presence_change::updated;
}

presence_change presence_registry::leave(std::string_view topic, std::string_view user,
                                         uint64_t conn, std::string* data_out) {
  stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return presence_change::not_member;
  auto u = t->second.users.find(user);
  if (u == t->second.users.end() || !u->second.conns.remove(conn)) {
    return presence_change::not_member;
  }
  FANOUT_ASSERT(t->second.connections > 0);
  --t->second.connections;
  connections_.fetch_sub(1, std::memory_order_relaxed);
  if (u->second.conns.size() != 0) return presence_change::unchanged;
  bytes_.fetch_sub(u->first.size() + u->second.data.size(), std::memory_order_relaxed);
  if (data_out != nullptr) *data_out = std::move(u->second.data);
  t->second.users.erase(u);
  users_.fetch_sub(1, std::memory_order_relaxed);
  if (t->second.users.empty()) {
    FANOUT_ASSERT(t->second.connections == 0);
    bytes_.fetch_sub(t->first.size(), std::memory_order_relaxed);
    s.topics.erase(t);
    topics_.fetch_sub(1, std::memory_order_relaxed);
  }
  return presence_change::left;
}

presence_stats presence_registry::stats(std::string_view topic) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return {};
  return {t->second.users.size(), t->second.connections};
}

uint32_t presence_registry::user_connections(std::string_view topic, std::string_view user,
                                             std::string* data) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) return 0;
  auto u = t->second.users.find(user);
  if (u == t->second.users.end()) return 0;
  if (data) data->assign(u->second.data);
  return u->second.conns.size();
}

void presence_registry::members_json(std::string_view topic, std::string& out) const {
  const stripe& s = stripe_for(topic);
  std::lock_guard lock(s.mutex);
  auto t = s.topics.find(topic);
  if (t == s.topics.end()) {
    out.append("{}");
    return;
  }
  using member = const std::pair<const std::string, user_entry>*;
  std::vector<member> sorted;
  sorted.reserve(t->second.users.size());
  for (const auto& u : t->second.users) sorted.push_back(&u);
  std::sort(sorted.begin(), sorted.end(), [](member a, member b) { return a->first < b->first; });
  out.push_back('{');
  bool first = true;
  for (member m : sorted) {
    if (!first) out.push_back(',');
    first = false;
    proto::wse_append_json_string(out, m->first);
    out.append(":{\"data\":");
    out.append(m->second.data);
    out.append(",\"connections\":");
    out.append(std::to_string(m->second.conns.size()));
    out.push_back('}');
  }
  out.push_back('}');
}

presence_stats presence_registry::totals(size_t* topics, size_t* bytes) const {
  if (topics != nullptr) *topics = topics_.load(std::memory_order_relaxed);
  if (bytes != nullptr) *bytes = bytes_.load(std::memory_order_relaxed);
  return {users_.load(std::memory_order_relaxed), connections_.load(std::memory_order_relaxed)};
}

}  // namespace wsed::fanout
