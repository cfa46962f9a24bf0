// tools/bench/ports.hpp: how many connections one loopback source address can open to one server
// address at the storm rate, from net.ipv4.ip_local_port_range.
//
// connect() (Linux >= 4.6, __inet_hash_connect) takes source ports from the even half of the
// range and leaves the odd half to bind(). Once the even ports of a source address are taken
// (towards the one server address), every further connect scans that whole even half under the
// bind-hash locks before it tries an odd port. Measured here (32768-60999: 14,116 even ports),
// 4 source addresses ramp 52,000 connections (13K each) at 27.7K/s but 64,000 (16K each) at
// 4.5K/s with ten times the client's sys time; 100,000 over 4 addresses took 39 s.
//
// Owns: nothing (pure). Thread: any. Must never be sized to the whole range.
#pragma once

#include <algorithm>
#include <cstdint>

namespace wsed::bench {

// Connections per source address: 90% of the range's even ports (a margin for other programs).
inline uint32_t connect_ports_per_address(uint32_t low, uint32_t high) {
  uint32_t even = (high > low ? high - low + 1 : 1) / 2;
  return even > 2000 ? even - even / 10 : std::max<uint32_t>(1, even);
}

}  // namespace wsed::bench
