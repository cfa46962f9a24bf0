// fanout/presence.hpp: one process's presence state (PROTOCOL.md "Presence"): per topic, per user
// id, one entry holding the user's latest data (a JSON object's text) and the connections of that
// user in the topic. Says when the caller must emit presence_join / presence_update /
// presence_leave; builds the members query and the stats.
//
// Owns: the topic -> user -> {data, connections} maps. Thread: any (shard threads and the HTTP
// thread call it concurrently). Topics are striped by hash over 16 mutexes, each a short critical
// section per call, never a global lock; the totals are relaxed atomics, read without a lock.
// Connection keys are the caller's opaque uint64_t (no engine type): the caller keeps, per
// connection, which topics it joined and calls leave for each on close (no reverse index here).
// Never calls out while holding a lock; data is stored as given (the caller validated it).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "fanout/string_map.hpp"

namespace wsed::fanout {

struct presence_limits {
  size_t data_bytes_max = 4096;  // the data's JSON text
  size_t members_max = 0;        // users per topic; 0 = unlimited
};

enum class presence_change : uint8_t {
  joined,            // the user's first connection in the topic: emit presence_join
  updated,           // the user was there and its data changed: emit presence_update
  unchanged,         // nothing to emit (same data, another connection of the user, a repeat)
  left,              // the user's last connection left: emit presence_leave
  not_member,        // this connection is not in the topic as this user: nothing changed
  too_many_members,  // a new user over members_max: nothing changed
  data_too_large,    // data over data_bytes_max: nothing changed
};

struct presence_stats {
  uint64_t users = 0;
  uint64_t connections = 0;
};

class presence_registry {
 public:
  explicit presence_registry(presence_limits limits = {});
  ~presence_registry();
  presence_registry(const presence_registry&) = delete;
  presence_registry& operator=(const presence_registry&) = delete;

  // conn joins topic as user with data (empty = "{}"). joined / updated (the user was there with
  // other data: the latest wins) / unchanged / too_many_members / data_too_large (checked first).
  presence_change join(std::string_view topic, std::string_view user, uint64_t conn,
                       std::string_view data);
  // New data for a connection already in the topic as user (empty = "{}"): updated / unchanged /
  // not_member / data_too_large (checked first).
  presence_change update(std::string_view topic, std::string_view user, uint64_t conn,
                         std::string_view data);
  // left (the user's last connection: *data_out, when given, gets the user's data for the leave
  // event) / unchanged (the user has other connections there) / not_member.
  presence_change leave(std::string_view topic, std::string_view user, uint64_t conn,
                        std::string* data_out = nullptr);

  presence_stats stats(std::string_view topic) const;
  // The user's connections in topic (0: not there) and, when there and data is given, its data.
  uint32_t user_connections(std::string_view topic, std::string_view user,
                            std::string* data = nullptr) const;
  // Appends {"<user>":{"data":<data>,"connections":n},...} sorted by user id ("{}" for a topic
  // without presence). Built under the topic's stripe lock.
  void members_json(std::string_view topic, std::string& out) const;
  // Process totals for metrics, lock-free (relaxed: each figure exact once calls quiesce):
  // users summed over topics, connections; *topics: topics with presence; *bytes: bytes held,
  // approximately (data + user ids + topic names, not the containers' overhead).
  presence_stats totals(size_t* topics = nullptr, size_t* bytes = nullptr) const;

  const presence_limits& limits() const { return limits_; }

 private:
  // A user's connections in one topic: inline while there is one (the common case), else a heap
  // array. Unordered (removal swaps with the last). 16 bytes.
  class conn_list {
   public:
    explicit conn_list(uint64_t first) : one_(first), size_(1) {}
    ~conn_list();
    conn_list(const conn_list&) = delete;
    conn_list& operator=(const conn_list&) = delete;
    bool contains(uint64_t conn) const;
    void add(uint64_t conn);
    bool remove(uint64_t conn);  // false when conn was not there
    uint32_t size() const { return size_; }

   private:
    const uint64_t* begin() const { return capacity_ > 1 ? many_ : &one_; }
    union {
      uint64_t one_;    // capacity_ == 1
      uint64_t* many_;  // capacity_ > 1
    };
    uint32_t size_ = 0;
    uint32_t capacity_ = 1;
  };
  static_assert(sizeof(conn_list) == 16);
  struct user_entry {
    user_entry(std::string_view d, uint64_t conn) : data(d), conns(conn) {}
    std::string data;
    conn_list conns;
  };
  static_assert(sizeof(user_entry) == sizeof(std::string) + 16);
  struct topic_entry {
    string_map<user_entry> users;
    uint64_t connections = 0;  // sum of users' conns sizes
  };
  static constexpr size_t stripes = 16;
  struct alignas(64) stripe {
    mutable std::mutex mutex;
    string_map<topic_entry> topics;
  };

  stripe& stripe_for(std::string_view topic) { return stripes_[string_hash{}(topic) % stripes]; }
  const stripe& stripe_for(std::string_view topic) const {
    return stripes_[string_hash{}(topic) % stripes];
  }
  void set_data(user_entry& u, std::string_view data);  // under the stripe lock

  const presence_limits limits_;
  stripe stripes_[stripes];
  std::atomic<uint64_t> topics_{0};
  std::atomic<uint64_t> users_{0};
  std::atomic<uint64_t> connections_{0};
  std::atomic<uint64_t> bytes_{0};
};

}  // namespace wsed::fanout
