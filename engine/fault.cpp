// engine/fault.cpp: see fault.hpp.
#include "engine/fault.hpp"

#include <charconv>
#include <cmath>

namespace wsed::engine {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

}  // namespace

const char* name_of(fault_kind k) {
  static constexpr const char* names[] = {"short_send", "enobufs", "reset", "sq_full", "alloc"};
  static_assert(std::size(names) == size_t(fault_kind::count_));
  return names[size_t(k)];
}

bool fault_plan::any() const {
  for (uint64_t t : threshold)
    if (t) return true;
  return false;
}

std::optional<fault_plan> parse_fault_plan(std::string_view spec, std::string* error) {
  fault_plan plan;
  while (!spec.empty()) {
    size_t comma = spec.find(',');
    std::string_view item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      *error = "'" + std::string(item) + "' is not name=value";
      return std::nullopt;
    }
    std::string_view name = item.substr(0, eq), value = item.substr(eq + 1);
    const char* end = value.data() + value.size();
    if (name == "seed") {
      auto [p, ec] = std::from_chars(value.data(), end, plan.seed);
      if (ec != std::errc() || p != end || value.empty()) {
        *error = "seed: '" + std::string(value) + "' is not a number";
        return std::nullopt;
      }
      continue;
    }
    size_t k = 0;
    while (k < size_t(fault_kind::count_) && name != name_of(fault_kind(k))) ++k;
    if (k == size_t(fault_kind::count_)) {
      *error = "unknown fault '" + std::string(name) +
               "' (seed, short_send, enobufs, reset, sq_full, alloc)";
      return std::nullopt;
    }
    double rate = -1;
    auto [p, ec] = std::from_chars(value.data(), end, rate);
    if (ec != std::errc() || p != end || value.empty() || !(rate >= 0 && rate <= 1)) {
      *error = std::string(name) + ": '" + std::string(value) + "' is not a rate in [0, 1]";
      return std::nullopt;
    }
    plan.threshold[k] = rate >= 1 ? UINT64_MAX : uint64_t(std::ldexp(rate, 64));
  }
  return plan;
}

fault_injector::fault_injector(const fault_plan& plan, uint64_t stream) : plan_(plan) {
  uint64_t x = plan.seed ^ splitmix64(stream);
  for (uint64_t& s : s_) s = splitmix64(x);
}

uint64_t fault_injector::next() {
  uint64_t result = rotl(s_[1] * 5, 7) * 9;
  uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

}  // namespace wsed::engine
