// tools/bench/stats.hpp: measurement helpers of wse-bench: an HDR-style
// log-linear latency histogram, this process's CPU time (getrusage), and another process's CPU
// time and memory read from /proc/PID/stat and /proc/PID/status (the server under test).
//
// Owns: plain values only. Thread: a histogram belongs to one worker thread (merged by the main
// thread after the workers joined); the /proc and rusage readers run on the main thread.
// Must never allocate or take a lock in histogram::record (it runs once per echoed message).
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>

namespace wsed::tools {

// Values (nanoseconds), HDR-style: 128 linear sub-buckets per power of two, so a quantile (the
// midpoint of its bucket) is within 0.4% of the true value. 59 KiB; exact max kept apart.
class latency_histogram {
 public:
  static constexpr unsigned sub_bits = 7;
  static constexpr unsigned sub_count = 1u << sub_bits;
  static constexpr size_t bucket_count = (64 - sub_bits + 1) * sub_count;

  void record(uint64_t value_ns) {
    ++buckets_[index_of(value_ns)];
    ++count_;
    if (value_ns > max_) max_ = value_ns;
  }

  void merge(const latency_histogram& other) {
    for (size_t i = 0; i < bucket_count; ++i) buckets_[i] += other.buckets_[i];
    count_ += other.count_;
    if (other.max_ > max_) max_ = other.max_;
  }

  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }

  // Value at quantile q (0..1): the midpoint of the bucket that holds it; 0 when empty.
  uint64_t quantile(double q) const {
    if (count_ == 0) return 0;
    uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(count_ - 1)) + 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < bucket_count; ++i) {
      seen += buckets_[i];
      if (seen >= rank) return std::min(midpoint_of(i), max_);
    }
    return max_;
  }

 private:
  static size_t index_of(uint64_t v) {
    if (v < sub_count) return static_cast<size_t>(v);
    unsigned exponent = 63u - static_cast<unsigned>(std::countl_zero(v));  // >= sub_bits
    uint64_t sub = (v >> (exponent - sub_bits)) & (sub_count - 1);
    return (exponent - sub_bits + 1) * sub_count + static_cast<size_t>(sub);
  }

  static uint64_t midpoint_of(size_t index) {
    if (index < sub_count) return index;
    unsigned exponent = static_cast<unsigned>(index / sub_count) + sub_bits - 1;
    uint64_t sub = index % sub_count;
    uint64_t width = uint64_t{1} << (exponent - sub_bits);
    return ((sub_count + sub) << (exponent - sub_bits)) + width / 2;
  }

  std::array<uint64_t, bucket_count> buckets_{};
  uint64_t count_ = 0;
  uint64_t max_ = 0;
};

struct cpu_seconds {
  double user = 0;
  double sys = 0;
};

inline cpu_seconds own_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return {seconds(usage.ru_utime), seconds(usage.ru_stime)};
}

// utime and stime (fields 14 and 15) of a /proc stat file: /proc/PID/stat (all threads of
// the process) or /proc/self/task/TID/stat (one thread).
inline std::optional<cpu_seconds> stat_cpu_seconds(const std::string& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = text.rfind(')');  // the command name may hold spaces and parentheses
  if (paren == std::string::npos || paren + 2 > text.size()) return std::nullopt;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  // After ")": field 3 (state) is the first; utime is field 14, stime field 15.
  unsigned long long utime = 0, stime = 0;
  for (int number = 3; number <= 15 && fields >> field; ++number) {
    if (number == 14) utime = std::stoull(field);
    if (number == 15) stime = std::stoull(field);
  }
  double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return cpu_seconds{static_cast<double>(utime) / ticks, static_cast<double>(stime) / ticks};
}

inline std::optional<cpu_seconds> process_cpu_seconds(int pid) {
  return stat_cpu_seconds("/proc/" + std::to_string(pid) + "/stat");
}

struct process_memory {
  uint64_t vm_hwm_kib = 0;  // peak resident set
  uint64_t vm_rss_kib = 0;  // resident set now
};

inline std::optional<process_memory> process_memory_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  if (!in) return std::nullopt;
  process_memory memory;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) memory.vm_hwm_kib = std::stoull(line.substr(6));
    if (line.rfind("VmRSS:", 0) == 0) memory.vm_rss_kib = std::stoull(line.substr(6));
  }
  return memory;
}

}  // namespace wsed::tools
