// engine/log.cpp: formatting (JSON / text), the repeat limiter and the one write() per line.
// Any thread; the only shared state is the configuration (atomics) and the limiter's slots
// (one mutex each, held for a few loads and stores, never while writing).
#include "engine/log.hpp"

#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace wsed::log {

namespace {

struct state {
  std::atomic<uint8_t> min_level{uint8_t(level::warn)};
  std::atomic<uint8_t> fmt{uint8_t(isatty(STDOUT_FILENO) ? format::text : format::json)};
  std::atomic<int> fd{STDERR_FILENO};
  std::atomic<uint64_t> suppressed{0};
  repeat_limiter limiter{repeat_window_ms, repeat_burst};
};

state& the_state() {
  static state s;  // function-local: safe to log from static initialisers and from any thread
  return s;
}

int64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

uint64_t monotonic_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

// The whole line, retrying short writes and EINTR; a failing log stream is ignored.
void write_all(int fd, const std::string& line) {
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= size_t(n);
  }
}

// Length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlongs, no surrogates, at most
// U+10FFFF), or 0 when the byte there does not start one.
size_t utf8_sequence(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return uint8_t(s[i + k]); };
  uint8_t c = b(0);
  size_t n = c < 0x80             ? 1
             : (c & 0xe0) == 0xc0 ? 2
             : (c & 0xf0) == 0xe0 ? 3
             : (c & 0xf8) == 0xf0 ? 4
                                  : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((b(k) & 0xc0) != 0x80) return 0;
  if (n == 2 && c < 0xc2) return 0;                   // overlong
  if (n == 3 && c == 0xe0 && b(1) < 0xa0) return 0;   // overlong
  if (n == 3 && c == 0xed && b(1) >= 0xa0) return 0;  // surrogate
  if (n == 4 && ((c == 0xf0 && b(1) < 0x90) || c > 0xf4 || (c == 0xf4 && b(1) >= 0x90)))
    return 0;  // overlong / > U+10FFFF
  return n;
}

void append_value(std::string& out, std::string_view v, bool quote_chars) {
  if (v.size() <= value_bytes_max) return append_escaped(out, v, quote_chars);
  append_escaped(out, v.substr(0, value_bytes_max), quote_chars);
  out += "...";
}

// Text format: a value is printed bare when it is a plain word, else as a JSON string.
bool plain_word(std::string_view v) {
  if (v.empty() || v.size() > value_bytes_max) return false;
  for (char ch : v) {
    auto c = uint8_t(ch);
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::strchr("._:/@+-,[]", c) != nullptr;
    if (!ok || c == 0) return false;
  }
  return true;
}

void append_field_value(std::string& out, const field& f, format fmt) {
  switch (f.type) {
    case field::kind::str:
      if (fmt == format::text && plain_word(f.s)) {
        out += f.s;
      } else {
        out += '"';
        append_value(out, f.s, true);
        out += '"';
      }
      return;
    case field::kind::i64:
      out += std::to_string(f.i);
      return;
    case field::kind::u64:
      out += std::to_string(f.u);
      return;
    case field::kind::boolean:
      out += f.u ? "true" : "false";
      return;
  }
}

void print(state& st, int fd, level l, std::string_view event, std::string_view msg, fields f) {
  write_all(
      fd, format_line(format(st.fmt.load(std::memory_order_relaxed)), wall_ms(), l, event, msg, f));
}

void print_report(state& st, const repeat_limiter::report& r) {
  std::string msg = std::to_string(r.suppressed) + " similar suppressed (" + r.event + ")";
  print(st, st.fd.load(std::memory_order_relaxed), r.lvl, "log_suppressed", msg,
        {{"suppressed_event", std::string_view(r.event)},
         {"count", r.suppressed},
         {"window_ms", repeat_window_ms}});
}

uint64_t fnv1a(uint64_t h, std::string_view s) {
  for (char c : s) h = (h ^ uint8_t(c)) * 1099511628211ull;
  return h;
}

}  // namespace

std::optional<level> parse_level(std::string_view name) {
  if (name == "debug") return level::debug;
  if (name == "info") return level::info;
  if (name == "warn" || name == "warning") return level::warn;
  if (name == "error") return level::error;
  return std::nullopt;
}

std::optional<format> parse_format(std::string_view name) {
  if (name == "auto") return format::auto_;
  if (name == "json") return format::json;
  if (name == "text") return format::text;
  return std::nullopt;
}

const char* name_of(level l) {
  switch (l) {
    case level::debug:
      return "debug";
    case level::info:
      return "info";
    case level::warn:
      return "warn";
    case level::error:
      return "error";
  }
  return "info";
}

const char* name_of(format f) {
  switch (f) {
    case format::auto_:
      return "auto";
    case format::json:
      return "json";
    case format::text:
      return "text";
  }
  return "auto";
}

void configure(const options& o) {
  state& st = the_state();
  format f = o.fmt;
  if (f == format::auto_) f = isatty(STDOUT_FILENO) ? format::text : format::json;
  st.fmt.store(uint8_t(f), std::memory_order_relaxed);
  st.min_level.store(uint8_t(o.min_level), std::memory_order_relaxed);
  st.fd.store(o.fd, std::memory_order_relaxed);
}

format current_format() {
  return format(the_state().fmt.load(std::memory_order_relaxed));
}

bool enabled(level l) {
  return uint8_t(l) >= the_state().min_level.load(std::memory_order_relaxed);
}

void emit(level l, std::string_view event, std::string_view msg, fields f, std::string_view key) {
  if (!enabled(l)) return;
  state& st = the_state();
  repeat_limiter::report pending;
  bool print_it = st.limiter.admit(l, event, key, monotonic_ms(), &pending);
  if (pending.suppressed) print_report(st, pending);
  if (print_it)
    print(st, st.fd.load(std::memory_order_relaxed), l, event, msg, f);
  else
    st.suppressed.fetch_add(1, std::memory_order_relaxed);  // /metrics: counted when suppressed
}

void emit_to(int fd, level l, std::string_view event, std::string_view msg, fields f) {
  if (!enabled(l)) return;
  print(the_state(), fd, l, event, msg, f);
}

void tick() {
  state& st = the_state();
  st.limiter.expire(monotonic_ms(), false,
                    [&](const repeat_limiter::report& r) { print_report(st, r); });
}

void flush() {
  state& st = the_state();
  st.limiter.expire(monotonic_ms(), true,
                    [&](const repeat_limiter::report& r) { print_report(st, r); });
}

uint64_t suppressed_total() {
  return the_state().suppressed.load(std::memory_order_relaxed);
}

void append_escaped(std::string& out, std::string_view s, bool quote_chars) {
  static constexpr char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < s.size();) {
    auto c = uint8_t(s[i]);
    if (c >= 0x80) {
      size_t n = utf8_sequence(s, i);
      if (n == 0) {
        out += "\\ufffd";  // one replacement per invalid byte
        ++i;
      } else {
        out.append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    ++i;
    if (c == '"' || c == '\\') {
      if (quote_chars) out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
}

void append_rfc3339_ms(std::string& out, int64_t wall_ms) {
  time_t secs = time_t(wall_ms / 1000);
  tm t{};
  gmtime_r(&secs, &t);
  char buf[40];
  int n =
      std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
                    t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, int(wall_ms % 1000));
  if (n > 0) out.append(buf, size_t(n));
}

std::string format_line(format fmt, int64_t wall_ms, level l, std::string_view event,
                        std::string_view msg, fields f) {
  std::string out;
  out.reserve(128 + msg.size());
  if (fmt == format::text) {
    append_rfc3339_ms(out, wall_ms);
    out += ' ';
    out += name_of(l);
    out += ' ';
    append_escaped(out, event, false);
    out += ": ";
    append_value(out, msg, false);
    for (const field& x : f) {
      if (x.type == field::kind::str && x.s.empty()) continue;  // empty strings are left out
      out += ' ';
      append_escaped(out, x.key, false);
      out += '=';
      append_field_value(out, x, fmt);
    }
  } else {
    out += "{\"ts\":\"";
    append_rfc3339_ms(out, wall_ms);
    out += "\",\"level\":\"";
    out += name_of(l);
    out += "\",\"event\":\"";
    append_escaped(out, event);
    out += "\",\"msg\":\"";
    append_value(out, msg, true);
    out += '"';
    for (const field& x : f) {
      if (x.type == field::kind::str && x.s.empty()) continue;
      out += ",\"";
      append_escaped(out, x.key);
      out += "\":";
      append_field_value(out, x, fmt);
    }
    out += '}';
  }
  out += '\n';
  return out;
}

void repeat_limiter::take(slot& s, report& r) {
  std::memcpy(r.event, s.event, sizeof r.event);
  r.lvl = s.lvl;
  r.suppressed = s.suppressed;
  s.suppressed = 0;
}

bool repeat_limiter::admit(level l, std::string_view event, std::string_view key, uint64_t now_ms,
                           report* pending) {
  uint64_t h = fnv1a(fnv1a(14695981039346656037ull, event) * 31 + 1, key);
  slot& s = slots_[h % slot_count];
  std::lock_guard lock(s.mu);
  bool same = s.used && s.hash == h;
  if (same && now_ms - s.start_ms < window_ms_) {
    if (s.printed < burst_) {
      ++s.printed;
      return true;
    }
    ++s.suppressed;
    return false;
  }
  // A new window: for this key (the last one ended) or for another key taking the slot.
  if (s.used && s.suppressed) take(s, *pending);
  s.used = true;
  s.hash = h;
  s.lvl = l;
  s.start_ms = now_ms;
  s.printed = 1;
  s.suppressed = 0;
  size_t n = std::min(event.size(), event_bytes_max);
  std::memcpy(s.event, event.data(), n);
  s.event[n] = '\0';
  return true;  // the window's first line always prints
}

}  // namespace wsed::log
