// engine/per_ip.hpp: concurrent connections per client address, whole process, for
// --max-connections-per-ip.
//
// Owns: the count per address (striped maps, each under its own mutex). Thread: any shard;
// called once when a socket is accepted and once when its slot is freed, never per message.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace wsed::engine {

// An IPv6 address, or an IPv4 address as ::ffff:a.b.c.d.
struct ip_key {
  std::array<uint8_t, 16> bytes{};
  bool operator==(const ip_key&) const = default;
};

// The address of an accepted peer (AF_INET or AF_INET6); other families map to ::.
ip_key ip_key_of(const sockaddr_storage& addr);

class per_ip_table {
 public:
  explicit per_ip_table(uint32_t max_per_address) : max_(max_per_address) {}

  // Counts one more connection of the address; false (nothing counted) when it already has max.
  bool try_acquire(const ip_key& key);
  void release(const ip_key& key);
  // Addresses with at least one connection (takes every stripe lock: for tests, not per accept).
  size_t addresses() const;

 private:
  struct hasher {
    size_t operator()(const ip_key& k) const;
  };
  struct stripe {
    mutable std::mutex mu;
    std::unordered_map<ip_key, uint32_t, hasher> counts;
  };
  static constexpr size_t stripes = 16;
  stripe& stripe_of(const ip_key& key);

  uint32_t max_;
  std::array<stripe, stripes> stripes_;
};

}  // namespace wsed::engine
