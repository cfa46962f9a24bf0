// engine/log.hpp: the process's event log. One line per event on stderr (fd 2), written with
// one write() so that lines from the shards, the Redis bridge and main never interleave: JSON
// (`{"ts":...,"level":...,"event":...,"msg":...,<fields>}`) or text for a terminal. Any thread
// may log; configure() runs once in main before the other threads start. Events repeating under
// the same (event, key) beyond a burst within a window are counted instead of printed and
// reported later as one "N similar suppressed" line (tick(), or the key's next line).
// Never give it a token, a secret or key material: call sites log names, sizes and reasons.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace wsed::log {

enum class level : uint8_t { debug, info, warn, error };
// auto_: json when stdout is not a terminal, text when it is (resolved by configure()).
enum class format : uint8_t { auto_, json, text };

std::optional<level> parse_level(std::string_view name);    // debug | info | warn | error
std::optional<format> parse_format(std::string_view name);  // auto | json | text
const char* name_of(level l);
const char* name_of(format f);

// One field of an event: a string, a signed or unsigned integer or a bool.
struct field {
  enum class kind : uint8_t { str, i64, u64, boolean };
  std::string_view key;
  kind type = kind::str;
  std::string_view s;
  int64_t i = 0;
  uint64_t u = 0;

  field(std::string_view k, std::string_view v) : key(k), type(kind::str), s(v) {}
  field(std::string_view k, const char* v) : key(k), type(kind::str), s(v ? v : "") {}
  field(std::string_view k, const std::string& v) : key(k), type(kind::str), s(v) {}
  field(std::string_view k, bool v) : key(k), type(kind::boolean), u(v) {}
  template <class T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool>) field(std::string_view k, T v)
      : key(k) {
    if constexpr (std::is_signed_v<T>) {
      type = kind::i64;
      i = int64_t(v);
    } else {
      type = kind::u64;
      u = uint64_t(v);
    }
  }
};
using fields = std::initializer_list<field>;

// Repeats: a key may print repeat_burst lines per repeat_window_ms; the rest of that window is
// counted and reported as one line when the window has ended.
constexpr uint32_t repeat_window_ms = 10000;
constexpr uint32_t repeat_burst = 5;
// Longest string value (bytes of input) in a line; longer ones are cut and end in "...".
constexpr size_t value_bytes_max = 1024;

struct options {
  level min_level = level::info;
  format fmt = format::auto_;
  int fd = 2;  // the log stream
};

// Main thread, before any other thread logs (an embedding program may skip it: the defaults
// are level warn, format auto, stderr).
void configure(const options& o);
format current_format();  // json or text (auto resolved)
bool enabled(level l);

// One event on the log stream: dropped below the level; (event, key) rate-limited (key: a
// constant that separates kinds of one event, e.g. a reject reason; never client input).
void emit(level l, std::string_view event, std::string_view msg, fields f = {},
          std::string_view key = {});
inline void debug(std::string_view event, std::string_view msg, fields f = {},
                  std::string_view key = {}) {
  emit(level::debug, event, msg, f, key);
}
inline void info(std::string_view event, std::string_view msg, fields f = {},
                 std::string_view key = {}) {
  emit(level::info, event, msg, f, key);
}
inline void warn(std::string_view event, std::string_view msg, fields f = {},
                 std::string_view key = {}) {
  emit(level::warn, event, msg, f, key);
}
inline void error(std::string_view event, std::string_view msg, fields f = {},
                  std::string_view key = {}) {
  emit(level::error, event, msg, f, key);
}
// The same line on another descriptor, never rate-limited (the startup event on stdout).
void emit_to(int fd, level l, std::string_view event, std::string_view msg, fields f = {});

// Reports every window that has ended with suppressed lines (main's loop, every ~200 ms), or
// all of them (flush: at exit).
void tick();
void flush();
uint64_t suppressed_total();  // lines counted instead of printed since start

// --- the pure parts (unit-tested) ---

// Appends s as a JSON string body (no quotes): control characters as \uXXXX (or \n, \t...),
// '"' and '\\' escaped, invalid UTF-8 bytes as U+FFFD. quote_chars false (text format) leaves
// '"' and '\\' alone and still escapes control characters, so no value can start a new line.
void append_escaped(std::string& out, std::string_view s, bool quote_chars = true);
// "2026-12-03T13:20:00.123Z"
void append_rfc3339_ms(std::string& out, int64_t wall_ms);
// One whole line, newline included.
std::string format_line(format fmt, int64_t wall_ms, level l, std::string_view event,
                        std::string_view msg, fields f);

// Bounded (slot_count slots, one mutex each) table of (event, key) windows. Thread-safe.
class repeat_limiter {
 public:
  static constexpr size_t slot_count = 256;
  static constexpr size_t event_bytes_max = 47;
  struct report {
    char event[event_bytes_max + 1] = {};
    level lvl = level::info;
    uint64_t suppressed = 0;
  };

  repeat_limiter(uint64_t window_ms, uint32_t burst) : window_ms_(window_ms), burst_(burst) {}
  // One occurrence at now_ms: true to print it. When the slot held a window that has ended with
  // suppressed lines (this key's, or another key's it evicts), *pending gets that report (to be
  // printed first) and the function returns it in pending->suppressed > 0.
  bool admit(level l, std::string_view event, std::string_view key, uint64_t now_ms,
             report* pending);
  // fn(report) for every window ended by now_ms (all of them when force) with suppressed lines.
  template <class F>
  void expire(uint64_t now_ms, bool force, F&& fn) {
    for (auto& s : slots_) {
      report r;
      {
        std::lock_guard lock(s.mu);
        if (!s.used || s.suppressed == 0 || (!force && now_ms - s.start_ms < window_ms_)) continue;
        take(s, r);
        s.used = false;
      }
      fn(r);
    }
  }

 private:
  struct slot {
    std::mutex mu;
    bool used = false;
    level lvl = level::info;
    uint64_t hash = 0;
    uint64_t start_ms = 0;
    uint32_t printed = 0;
    uint64_t suppressed = 0;
    char event[event_bytes_max + 1] = {};
  };
  static void take(slot& s, report& r);
  uint64_t window_ms_;
  uint32_t burst_;
  slot slots_[slot_count];
};

}  // namespace wsed::log
