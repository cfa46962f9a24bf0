// tools/bench/fanout.hpp: the pure parts of wse-bench's fanout-broadcast scenario: the
// fanout_tick payload and the publish API requests that carry it, the incremental HTTP/1.1
// response reader for the publisher's pipelined answers, the scan that pulls p.seq and p.ts_us out
// of a received tick, each subscriber's sequence tracking (gaps, duplicates, reorders), and the
// sum of a Prometheus series in a /metrics text.
//
// Owns: plain values. Thread: a seq_tracker belongs to the worker thread of its connection; the
// builders run on the publisher thread; nothing is shared. Pure and header-only: no I/O, no clock
// (times are parameters). Must never allocate in scan_tick or seq_tracker::on_seq (they run once
// per delivery).
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/http.hpp"

namespace wsed::bench {

// ---- payloads and requests ------------------------------------------------------------------

// The reference's tick: {"t":"fanout_tick","p":{"seq":n,"ts_us":t,"s":"ES","px":5234.75,"q":2}}.
inline void append_fanout_tick(std::string& out, uint64_t seq, uint64_t ts_us) {
  out += "{\"t\":\"fanout_tick\",\"p\":{\"seq\":";
  out += std::to_string(seq);
  out += ",\"ts_us\":";
  out += std::to_string(ts_us);
  out += ",\"s\":\"ES\",\"px\":5234.75,\"q\":2}}";
}

inline std::string fanout_tick_json(uint64_t seq, uint64_t ts_us) {
  std::string s;
  append_fanout_tick(s, seq, ts_us);
  return s;
}

// A publish API body: a JSON array of `count` items with seqs first_seq.., each
// {"topic":"<topic>","message":<tick>} or, broadcast, {"broadcast":true,"message":<tick>}.
// topic is the bench's own name (no escaping needed: checked by the caller to be plain).
inline std::string publish_body(std::string_view topic, bool broadcast, uint64_t first_seq,
                                uint32_t count, uint64_t ts_us) {
  std::string body;
  body.reserve(size_t{count} * (topic.size() + 110) + 2);
  body += '[';
  for (uint32_t k = 0; k < count; ++k) {
    if (k != 0) body += ',';
    if (broadcast) {
      body += "{\"broadcast\":true,\"message\":";
    } else {
      body += "{\"topic\":\"";
      body += topic;
      body += "\",\"message\":";
    }
    append_fanout_tick(body, first_seq + k, ts_us);
    body += '}';
  }
  body += ']';
  return body;
}

// POST /api/publish, keep-alive (HTTP/1.1 default), with the bearer key and Content-Length.
inline std::string publish_request(std::string_view host_header, std::string_view api_key,
                                   std::string_view body) {
  std::string r;
  r.reserve(body.size() + 160 + api_key.size());
  r += "POST /api/publish HTTP/1.1\r\nHost: ";
  r += host_header;
  r += "\r\nAuthorization: Bearer ";
  r += api_key;
  r += "\r\nContent-Type: application/json\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\n\r\n";
  r += body;
  return r;
}

// The WSE client publish of one tick:
// {"c":"WSE","t":"publish","p":{"topic":..,"message":tick},"v":1}.
inline std::string wse_publish_json(std::string_view topic, uint64_t seq, uint64_t ts_us) {
  std::string s = "{\"c\":\"WSE\",\"t\":\"publish\",\"p\":{\"topic\":\"";
  s += topic;
  s += "\",\"message\":";
  append_fanout_tick(s, seq, ts_us);
  s += "},\"v\":1}";
  return s;
}

inline std::string subscribe_json(std::string_view topic) {
  std::string s =
      "{\"c\":\"WSE\",\"t\":\"subscription_update\",\"p\":{\"action\":\"subscribe\","
      "\"topics\":[\"";
  s += topic;
  s += "\"]},\"v\":1}";
  return s;
}

// ---- HTTP responses ---------------------------------------------------------------------------

enum class http_parse : uint8_t { incomplete, ok, bad };

struct http_response {
  http_parse state = http_parse::incomplete;
  int status = 0;
  size_t bytes = 0;       // ok: head + body, what to drop from the buffer
  std::string_view body;  // ok: a view into the buffer given
  bool close = false;     // Connection: close
};

namespace detail {

inline std::string_view trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Digits at the start of v (at most 19); nullopt without any.
inline std::optional<uint64_t> leading_number(std::string_view v) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + std::min<size_t>(v.size(), 19), n);
  if (ec != std::errc() || end == v.data()) return std::nullopt;
  return n;
}

}  // namespace detail

// Reads the first response in buf (pipelined answers follow it). Needs Content-Length (the
// servers measured here always send it; chunked is `bad`). head_bytes_max bounds the head.
inline http_response parse_http_response(std::string_view buf, size_t head_bytes_max = 16384) {
  http_response r;
  size_t head_end = buf.find("\r\n\r\n");
  if (head_end == std::string_view::npos) {
    if (buf.size() > head_bytes_max) r.state = http_parse::bad;
    return r;
  }
  std::string_view head = buf.substr(0, head_end);
  size_t eol = head.find("\r\n");
  std::string_view status_line = head.substr(0, eol);
  if (status_line.substr(0, 7) != "HTTP/1." || status_line.size() < 12 || status_line[8] != ' ') {
    r.state = http_parse::bad;
    return r;
  }
  auto code = detail::leading_number(status_line.substr(9, 3));
  if (!code || *code < 100) {  // three digits at most
    r.state = http_parse::bad;
    return r;
  }
  r.status = static_cast<int>(*code);
  r.close = status_line.substr(0, 8) == "HTTP/1.0";
  std::optional<uint64_t> length;
  while (eol != std::string_view::npos) {
    size_t start = eol + 2;
    eol = head.find("\r\n", start);
    std::string_view line = head.substr(start, eol == std::string_view::npos ? eol : eol - start);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = detail::trim(line.substr(0, colon));
    std::string_view value = detail::trim(line.substr(colon + 1));
    if (proto::ascii_iequals(name, "content-length")) {
      length = detail::leading_number(value);
      if (!length || *length > (64u << 20)) {
        r.state = http_parse::bad;
        return r;
      }
    } else if (proto::ascii_iequals(name, "transfer-encoding")) {
      r.state = http_parse::bad;
      return r;
    } else if (proto::ascii_iequals(name, "connection")) {
      r.close = proto::ascii_iequals(value, "close");
    }
  }
  if (!length) {
    r.state = http_parse::bad;
    return r;
  }
  size_t total = head_end + 4 + static_cast<size_t>(*length);
  if (buf.size() < total) return r;
  r.state = http_parse::ok;
  r.bytes = total;
  r.body = buf.substr(head_end + 4, static_cast<size_t>(*length));
  return r;
}

// The number after "key": in a flat JSON body ({"accepted":N}); nullopt when absent.
inline std::optional<uint64_t> json_number_field(std::string_view body, std::string_view key) {
  std::string pattern;  // built by appends: "\"" + string(key) trips GCC 12's -Wrestrict
  pattern.reserve(key.size() + 3);
  pattern.push_back('"');
  pattern.append(key);
  pattern.append("\":");
  size_t at = body.find(pattern);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = detail::trim(body.substr(at + pattern.size()));
  return detail::leading_number(rest);
}

// ---- received ticks ---------------------------------------------------------------------------

struct tick {
  uint64_t seq = 0;
  uint64_t ts_us = 0;
};

// A fanout_tick's seq and ts_us, found by scanning (these are our own frames, or frames shaped
// like them: "fanout_tick" in the first 64 bytes, then "seq":<digits> and "ts_us":<digits>).
// nullopt for any other message. No allocation.
namespace detail {

// The shapes wsed (with the category inserted) and the reference's server put on the wire:
// {"c":"U","t":"fanout_tick","p":{"seq":N,"ts_us":T,... and {"t":"fanout_tick","p":{"seq":N,...
// read with two prefix compares and digit loops (a tenth of the cost of the general scan's
// searches, which were half of the client's CPU at 6M deliveries/s).
inline std::optional<tick> fixed_shape_tick(std::string_view m) {
  constexpr std::string_view with_c = R"({"c":"U","t":"fanout_tick","p":{"seq":)";
  constexpr std::string_view without_c = R"({"t":"fanout_tick","p":{"seq":)";
  constexpr std::string_view ts_key = R"(,"ts_us":)";
  size_t at = 0;
  // A recovery stamp first ({"tp":"<topic>","e":"<8 hex>","o":N, with wsed --recovery): the
  // tick's keys follow it (the topic is a bench topic: no escaped quote in it).
  constexpr std::string_view stamp = R"({"tp":")";
  if (m.substr(0, stamp.size()) == stamp) {
    size_t o = m.find(R"(","o":)", stamp.size());
    size_t comma = o == std::string_view::npos ? o : m.find(',', o + 6);
    if (comma == std::string_view::npos) return std::nullopt;
    if (m.substr(comma + 1, with_c.size() - 1) != with_c.substr(1)) return std::nullopt;
    at = comma + with_c.size();
  } else if (m.substr(0, with_c.size()) == with_c) {
    at = with_c.size();
  } else if (m.substr(0, without_c.size()) == without_c) {
    at = without_c.size();
  } else {
    return std::nullopt;
  }
  auto digits = [&](uint64_t& out) {
    size_t start = at;
    uint64_t v = 0;
    while (at < m.size() && at - start < 19 && m[at] >= '0' && m[at] <= '9') {
      v = v * 10 + static_cast<uint64_t>(m[at] - '0');
      ++at;
    }
    out = v;
    return at != start;
  };
  tick t;
  if (!digits(t.seq) || m.substr(at, ts_key.size()) != ts_key) return std::nullopt;
  at += ts_key.size();
  if (!digits(t.ts_us)) return std::nullopt;
  return t;
}

}  // namespace detail

inline std::optional<tick> scan_tick(std::string_view m) {
  if (std::optional<tick> fast = detail::fixed_shape_tick(m)) return fast;
  if (m.substr(0, 64).find("\"fanout_tick\"") == std::string_view::npos) return std::nullopt;
  auto number_after = [&](std::string_view key) -> std::optional<uint64_t> {
    size_t at = m.find(key);
    if (at == std::string_view::npos) return std::nullopt;
    std::string_view rest = m.substr(at + key.size());
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    return detail::leading_number(rest);
  };
  auto seq = number_after("\"seq\":");
  auto ts = number_after("\"ts_us\":");
  if (!seq || !ts) return std::nullopt;
  return tick{*seq, *ts};
}

// One subscriber's view of one publisher's dense seq. A seq above the highest seen skips the ones
// in between (counted as missing until they arrive: a late arrival is a reorder); a seq seen
// before is a duplicate (exact within the last `window` seqs; older ones cannot be told from a
// late arrival and count as reorders). `first` fixes the first expected seq (the publisher starts
// after every subscription is confirmed); without it the first seq received is the baseline (a
// server that publishes by itself, joined mid-stream).
class seq_tracker {
 public:
  static constexpr uint64_t window = 1024;

  explicit seq_tracker(std::optional<uint64_t> first = std::nullopt) {
    if (first) {
      started_ = true;
      base_ = *first;
      next_ = *first;
    }
  }

  void on_seq(uint64_t s) {
    if (!started_) {
      started_ = true;
      base_ = s;
      next_ = s;
    }
    if (s >= next_) {
      uint64_t skipped = s - next_;
      missing_ += skipped;
      // Clear the bits of the seqs skipped (and of s), at most the whole window.
      uint64_t clear = std::min<uint64_t>(skipped + 1, window);
      for (uint64_t k = 0; k < clear; ++k) set_bit(s - k, false);
      set_bit(s, true);
      next_ = s + 1;
      ++unique_;
      return;
    }
    if (s < base_ || next_ - s > window) {  // before the baseline, or too old to tell
      ++reorders_;
      return;
    }
    if (bit(s)) {
      ++duplicates_;
      return;
    }
    set_bit(s, true);
    ++reorders_;
    ++unique_;
    if (missing_ != 0) --missing_;
  }

  bool started() const { return started_; }
  uint64_t unique() const { return unique_; }
  uint64_t duplicates() const { return duplicates_; }
  uint64_t reorders() const { return reorders_; }
  // Seqs not received between the first expected and the highest seen.
  uint64_t missing() const { return missing_; }
  // Missing when the publisher's seqs end at `end` (exclusive): also the tail never received
  // (0 for a tracker without a known first seq that received nothing).
  uint64_t missing_until(uint64_t end) const {
    if (!started_) return 0;  // base unknown and nothing received: cannot tell
    return missing_ + (end > next_ ? end - next_ : 0);
  }
  uint64_t next() const { return next_; }

 private:
  bool bit(uint64_t s) const { return (bits_[(s % window) / 64] >> (s % 64)) & 1; }
  void set_bit(uint64_t s, bool on) {
    uint64_t& w = bits_[(s % window) / 64];
    uint64_t m = uint64_t{1} << (s % 64);
    w = on ? (w | m) : (w & ~m);
  }

  std::array<uint64_t, window / 64> bits_{};
  uint64_t base_ = 0;
  uint64_t next_ = 0;  // highest seq seen + 1
  uint64_t unique_ = 0;
  uint64_t missing_ = 0;
  uint64_t duplicates_ = 0;
  uint64_t reorders_ = 0;
  bool started_ = false;
};

// ---- /metrics ---------------------------------------------------------------------------------

// The value of series `name` whose labels contain every `label="value"` of `labels` (e.g.
// {"action=\"drop\""}), summed over the matching lines (a per-shard family's shards); nullopt
// when none.
template <size_t N>
std::optional<double> metric_value(std::string_view text, std::string_view name,
                                   const std::array<std::string_view, N>& labels) {
  std::optional<double> sum;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    std::string_view line = text.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    pos = eol == std::string_view::npos ? text.size() : eol + 1;
    if (line.size() <= name.size() || line.substr(0, name.size()) != name) continue;
    char after = line[name.size()];
    if (after != '{' && after != ' ') continue;
    size_t close = after == '{' ? line.find('}') : name.size();
    if (close == std::string_view::npos) continue;
    std::string_view label_text = line.substr(name.size(), close - name.size());
    bool all = true;
    for (std::string_view l : labels) all = all && label_text.find(l) != std::string_view::npos;
    if (!all) continue;
    std::string_view value = detail::trim(line.substr(close + (after == '{' ? 1 : 0)));
    double v = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc()) continue;
    sum = sum.value_or(0) + v;
  }
  return sum;
}

}  // namespace wsed::bench
