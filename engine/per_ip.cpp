// engine/per_ip.cpp: see per_ip.hpp.
#include "engine/per_ip.hpp"

#include <netinet/in.h>

#include <cstring>

namespace wsed::engine {

ip_key ip_key_of(const sockaddr_storage& addr) {
  ip_key k;
  if (addr.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(addr);
    k.bytes[10] = 0xff;
    k.bytes[11] = 0xff;
    std::memcpy(k.bytes.data() + 12, &a.sin_addr, 4);
  } else if (addr.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(addr);
    std::memcpy(k.bytes.data(), &a.sin6_addr, 16);
  }
  return k;
}

size_t per_ip_table::hasher::operator()(const ip_key& k) const {
  uint64_t a, b;
  std::memcpy(&a, k.bytes.data(), 8);
  std::memcpy(&b, k.bytes.data() + 8, 8);
  uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull;
  return size_t(h ^ (h >> 31));
}

per_ip_table::stripe& per_ip_table::stripe_of(const ip_key& key) {
  return stripes_[(hasher{}(key) >> 7) % stripes];
}

bool per_ip_table::try_acquire(const ip_key& key) {
  stripe& s = stripe_of(key);
  std::lock_guard lock(s.mu);
  uint32_t& n = s.counts[key];
  if (n >= max_) {
    if (n == 0) s.counts.erase(key);
    return false;
  }
  ++n;
  return true;
}

void per_ip_table::release(const ip_key& key) {
  stripe& s = stripe_of(key);
  std::lock_guard lock(s.mu);
  auto it = s.counts.find(key);
  if (it == s.counts.end()) return;
  if (--it->second == 0) s.counts.erase(it);
}

size_t per_ip_table::addresses() const {
  size_t n = 0;
  for (const stripe& s : stripes_) {
    std::lock_guard lock(s.mu);
    n += s.counts.size();
  }
  return n;
}

}  // namespace wsed::engine
