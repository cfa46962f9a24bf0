// proto/wse_builder.cpp: outbound envelope bytes, JSON escaping, UUIDv7 and RFC 3339 text.
//
// Owns: nothing. Thread: any. Never reads a clock or an RNG, never does I/O; appends to the
// caller's string (the only allocation is that string growing, and the index that drops
// repeated keys from a reply's map of more than a few topics).
#include "proto/wse_builder.hpp"

#include <cstdint>
#include <cstring>

#include <algorithm>
#include <charconv>
#include <numeric>
#include <vector>

namespace wsed::proto {

namespace {

constexpr char hex_digits[] = "0123456789abcdef";

// Length (2..4) of the valid UTF-8 sequence at p (p[0] >= 0x80), or 0 when it is invalid.
size_t utf8_sequence_bytes(const unsigned char* p, size_t left) {
  const unsigned char b0 = p[0];
  auto cont = [&](size_t i) { return i < left && (p[i] & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left < 2) return 0;
    const unsigned char b1 = p[1];
    if (b0 == 0xE0 && b1 < 0xA0) return 0;  // overlong
    if (b0 == 0xED && b1 > 0x9F) return 0;  // surrogate
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left < 2) return 0;
    const unsigned char b1 = p[1];
    if (b0 == 0xF0 && b1 < 0x90) return 0;  // overlong
    if (b0 == 0xF4 && b1 > 0x8F) return 0;  // above U+10FFFF
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

void append_int(std::string& out, int64_t value) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
  out.append(digits, end);
}

void append_uint(std::string& out, uint64_t value) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
  out.append(digits, end);
}

void append_timestamp(std::string& out, int64_t unix_ms) {
  char text[wse_timestamp_chars];
  wse_format_timestamp(unix_ms, text);
  out.push_back('"');
  out.append(text, sizeof text);
  out.push_back('"');
}

void append_features(std::string& out, std::span<const wse_feature> features) {
  out.push_back('{');
  for (size_t i = 0; i < features.size(); ++i) {
    if (i != 0) out.push_back(',');
    wse_append_json_string(out, features[i].name);
    out.append(features[i].enabled ? ":true" : ":false");
  }
  out.push_back('}');
}

void append_topics(std::string& out, std::span<const std::string_view> topics) {
  out.push_back('[');
  for (size_t i = 0; i < topics.size(); ++i) {
    if (i != 0) out.push_back(',');
    wse_append_json_string(out, topics[i]);
  }
  out.push_back(']');
}

// Calls emit(i), in order, for each i < n whose key(i) no smaller index has: the first of a
// repeated JSON key wins. A back scan for a few keys; above that a sort of the indices by key
// (ties by index) marks the first of each run, so n keys cost O(n log n), not O(n^2).
template <class Key, class Emit>
void for_each_first_key(size_t n, Key key, Emit emit) {
  constexpr size_t scan_max = 16;
  if (n <= scan_max) {
    for (size_t i = 0; i < n; ++i) {
      bool seen = false;
      for (size_t j = 0; j < i && !seen; ++j) seen = key(j) == key(i);
      if (!seen) emit(i);
    }
    return;
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const std::string_view ka = key(a), kb = key(b);
    return ka != kb ? ka < kb : a < b;
  });
  std::vector<bool> first(n, false);
  for (size_t k = 0; k < n; ++k) {
    first[order[k]] = k == 0 || key(order[k - 1]) != key(order[k]);
  }
  for (size_t i = 0; i < n; ++i) {
    if (first[i]) emit(i);
  }
}

void append_hex8(std::string& out, uint32_t value) {
  char text[8];
  for (int i = 7; i >= 0; --i, value >>= 4) text[i] = hex_digits[value & 15];
  out.append(text, sizeof text);
}

// The recovery part of a subscription reply, after "errors" (see the header).
void append_recovery(std::string& out, const wse_recovery_reply& recovery) {
  out.append(recovery.recoverable ? ",\"recoverable\":true" : ",\"recoverable\":false");
  out.append(recovery.recovered ? ",\"recovered\":true" : ",\"recovered\":false");
  out.append(",\"recovery\":{");
  const std::span<const wse_topic_recovery> topics = recovery.topics;
  bool first = true;
  for_each_first_key(
      topics.size(), [&](size_t i) { return topics[i].topic; },
      [&](size_t i) {
        const wse_topic_recovery& t = topics[i];
        if (!first) out.push_back(',');
        first = false;
        wse_append_json_string(out, t.topic);
        if (t.has_epoch) {
          out.append(":{\"epoch\":\"");
          append_hex8(out, t.epoch);
          out.append("\",\"offset\":");
        } else {
          out.append(":{\"epoch\":null,\"offset\":");
        }
        append_uint(out, t.offset);
        out.append(t.recoverable ? ",\"recoverable\":true" : ",\"recoverable\":false");
        out.append(t.recovered ? ",\"recovered\":true" : ",\"recovered\":false");
        out.append(",\"count\":");
        append_uint(out, t.count);
        out.push_back('}');
      });
  out.push_back('}');
}

// json[i..] starts with literal.
bool has_at(std::string_view json, size_t i, std::string_view literal) {
  return i <= json.size() && json.size() - i >= literal.size() &&
         json.compare(i, literal.size(), literal) == 0;
}

bool is_hex(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

// The JSON string body at json[i..] (after its opening quote): the index of its closing quote,
// or npos when the text ends first, has a raw control byte or an escape JSON does not have.
size_t string_end(std::string_view json, size_t i) {
  while (i < json.size()) {
    const auto b = static_cast<unsigned char>(json[i]);
    if (b == '"') return i;
    if (b < 0x20) return std::string_view::npos;
    if (b != '\\') {
      ++i;
      continue;
    }
    if (i + 1 >= json.size()) return std::string_view::npos;
    const char escape = json[i + 1];
    if (escape == 'u') {
      if (json.size() - i < 6) return std::string_view::npos;
      for (size_t k = i + 2; k < i + 6; ++k) {
        if (!is_hex(json[k])) return std::string_view::npos;
      }
      i += 6;
    } else if (std::string_view("\"\\/bfnrt").find(escape) != std::string_view::npos) {
      i += 2;
    } else {
      return std::string_view::npos;
    }
  }
  return std::string_view::npos;
}

void put2(char* out, unsigned value) {
  out[0] = static_cast<char>('0' + value / 10);
  out[1] = static_cast<char>('0' + value % 10);
}

// True when one of the 8 bytes of w needs a look: a control character, '"', '\\' or a
// non-ASCII byte (SWAR: a byte is zero in v iff (v - 1) & ~v has its top bit set).
bool any_special(uint64_t w) {
  constexpr uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  auto has_zero = [](uint64_t v) { return (v - ones) & ~v & highs; };
  uint64_t control = (w - 0x20 * ones) & ~w & highs;  // bytes < 0x20 (and some >= 0x80)
  return ((w & highs) | control | has_zero(w ^ ('"' * ones)) | has_zero(w ^ ('\\' * ones))) != 0;
}

}  // namespace

void wse_append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  const auto* bytes = reinterpret_cast<const unsigned char*>(s.data());
  size_t run_begin = 0;  // start of bytes copied as they are
  size_t i = 0;
  while (i < s.size()) {
    if (s.size() - i >= 8) {  // plain ASCII runs go 8 bytes at a time
      uint64_t w;
      std::memcpy(&w, bytes + i, 8);
      if (!any_special(w)) {
        i += 8;
        continue;
      }
    }
    const unsigned char b = bytes[i];
    if (b >= 0x20 && b != '"' && b != '\\' && b < 0x80) {
      ++i;
      continue;
    }
    if (b >= 0x80) {
      const size_t n = utf8_sequence_bytes(bytes + i, s.size() - i);
      if (n != 0) {
        i += n;
        continue;
      }
    }
    out.append(s.data() + run_begin, i - run_begin);
    if (b == '"' || b == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(b));
    } else if (b < 0x20) {
      const char escape[6] = {'\\', 'u', '0', '0', hex_digits[b >> 4], hex_digits[b & 15]};
      out.append(escape, sizeof escape);
    } else {
      out.append("\\ufffd");
    }
    run_begin = ++i;
  }
  out.append(s.data() + run_begin, s.size() - run_begin);
  out.push_back('"');
}

void wse_format_timestamp(int64_t unix_ms, char (&out)[wse_timestamp_chars]) {
  constexpr int64_t ms_min = -62167219200000;  // 0000-01-01T00:00:00.000Z
  constexpr int64_t ms_max = 253402300799999;  // 9999-12-31T23:59:59.999Z
  unix_ms = std::clamp(unix_ms, ms_min, ms_max);
  const int64_t ms_per_day = 86400000;
  int64_t days = unix_ms / ms_per_day;
  int64_t ms_of_day = unix_ms % ms_per_day;
  if (ms_of_day < 0) {
    ms_of_day += ms_per_day;
    --days;
  }
  // Civil date from days since 1970-01-01 (proleptic Gregorian): count in 400-year eras that
  // start on March 1st, so the leap day is the last day of an era-year.
  const int64_t z = days + 719468;  // days since 0000-03-01
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t day_of_era = z - era * 146097;  // [0, 146096]
  const int64_t year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) /
      365;  // [0, 399]
  const int64_t day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const int64_t month_index = (5 * day_of_year + 2) / 153;  // 0 = March
  const unsigned day = static_cast<unsigned>(day_of_year - (153 * month_index + 2) / 5 + 1);
  const unsigned month =
      static_cast<unsigned>(month_index < 10 ? month_index + 3 : month_index - 9);
  const unsigned year = static_cast<unsigned>(year_of_era + era * 400 + (month <= 2 ? 1 : 0));

  const auto ms = static_cast<unsigned>(ms_of_day);
  put2(out + 0, year / 100);
  put2(out + 2, year % 100);
  out[4] = '-';
  put2(out + 5, month);
  out[7] = '-';
  put2(out + 8, day);
  out[10] = 'T';
  put2(out + 11, ms / 3600000);
  out[13] = ':';
  put2(out + 14, ms / 60000 % 60);
  out[16] = ':';
  put2(out + 17, ms / 1000 % 60);
  out[19] = '.';
  out[20] = static_cast<char>('0' + ms % 1000 / 100);
  put2(out + 21, ms % 100);
  out[23] = 'Z';
}

std::string wse_timestamp(int64_t unix_ms) {
  char text[wse_timestamp_chars];
  wse_format_timestamp(unix_ms, text);
  return std::string(text, sizeof text);
}

void wse_format_uuid7(uint64_t unix_ms, std::span<const uint8_t, 10> random_bytes,
                      char (&out)[wse_uuid_chars]) {
  uint8_t b[16];
  for (int i = 0; i < 6; ++i) b[i] = static_cast<uint8_t>(unix_ms >> (40 - 8 * i));
  b[6] = static_cast<uint8_t>(0x70 | (random_bytes[0] & 0x0F));
  b[7] = random_bytes[1];
  b[8] = static_cast<uint8_t>(0x80 | (random_bytes[2] & 0x3F));
  for (int i = 9; i < 16; ++i) b[i] = random_bytes[static_cast<size_t>(i - 6)];
  size_t o = 0;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = hex_digits[b[i] >> 4];
    out[o++] = hex_digits[b[i] & 15];
  }
}

void wse_build_server_ready(std::string& out, const wse_server_ready& ready) {
  out.append("{\"c\":\"WSE\",\"id\":");
  wse_append_json_string(out, ready.message_id);
  out.append(",\"p\":{\"details\":{\"connection_id\":");
  wse_append_json_string(out, ready.connection_id);
  out.append(",\"features\":");
  append_features(out, ready.features);
  out.append(",\"server_time\":");
  append_timestamp(out, ready.now_ms);
  out.append(",\"user_id\":");
  wse_append_json_string(out, ready.user_id);
  out.append("},\"message\":\"Connection established\"},\"seq\":");
  append_uint(out, ready.seq);
  out.append(",\"t\":\"server_ready\",\"ts\":");
  append_timestamp(out, ready.now_ms);
  out.append(",\"v\":1}");
}

void wse_build_server_hello(std::string& out, const wse_server_hello& hello) {
  out.append("{\"c\":\"WSE\",\"p\":{\"connection_id\":");
  wse_append_json_string(out, hello.connection_id);
  if (!hello.encryption_public_key.empty()) {  // (keys stay sorted)
    out.append(",\"encryption_public_key\":");
    wse_append_json_string(out, hello.encryption_public_key);
  }
  out.append(",\"features\":");
  append_features(out, hello.features);
  out.append(",\"limits\":{");
  for (size_t i = 0; i < hello.limits.size(); ++i) {
    if (i != 0) out.push_back(',');
    wse_append_json_string(out, hello.limits[i].name);
    out.push_back(':');
    append_uint(out, hello.limits[i].value);
  }
  out.append("},\"ping_interval\":");
  append_uint(out, hello.ping_interval_ms);
  out.append(",\"protocol_version\":");
  append_int(out, hello.protocol_version);
  out.append(",\"server_time\":");
  append_timestamp(out, hello.now_ms);
  out.append(",\"server_version\":");
  wse_append_json_string(out, hello.server_version);
  out.append("},\"t\":\"server_hello\",\"v\":1}");
}

void wse_build_error(std::string& out, std::string_view code, std::string_view message,
                     int64_t now_ms) {
  out.append("{\"c\":\"WSE\",\"p\":{\"code\":");
  wse_append_json_string(out, code);
  out.append(",\"message\":");
  wse_append_json_string(out, message);
  out.append(",\"timestamp\":");
  append_timestamp(out, now_ms);
  out.append("},\"t\":\"error\",\"v\":1}");
}

void wse_build_pong(std::string& out, int64_t client_timestamp_ms, int64_t now_ms) {
  out.append("{\"c\":\"WSE\",\"t\":\"PONG\",\"p\":{\"client_timestamp\":");
  append_int(out, client_timestamp_ms);
  out.append(",\"server_timestamp\":");
  append_int(out, now_ms);
  out.append(",\"latency\":");
  append_int(out, client_timestamp_ms == 0 ? 0 : now_ms - client_timestamp_ms);
  out.append("},\"v\":1}");
}

void wse_build_server_ping(std::string& out, int64_t now_ms) {
  out.append("{\"c\":\"WSE\",\"t\":\"ping\",\"p\":{\"server_time\":");
  append_timestamp(out, now_ms);
  out.append("}}");
}

void wse_build_subscription_reply(std::string& out, std::string_view action,
                                  std::span<const std::string_view> success_topics,
                                  std::span<const std::string_view> failed_topics,
                                  std::span<const std::string_view> errors,
                                  const wse_recovery_reply* recovery) {
  out.append("{\"c\":\"WSE\",\"t\":\"subscription_update\",\"p\":{\"action\":");
  wse_append_json_string(out, action);
  out.append(failed_topics.empty() ? ",\"success\":true" : ",\"success\":false");
  out.append(",\"success_topics\":");
  append_topics(out, success_topics);
  out.append(",\"failed_topics\":");
  append_topics(out, failed_topics);
  out.append(",\"errors\":{");
  bool first = true;
  for_each_first_key(
      std::min(failed_topics.size(), errors.size()), [&](size_t i) { return failed_topics[i]; },
      [&](size_t i) {
        if (!first) out.push_back(',');
        first = false;
        wse_append_json_string(out, failed_topics[i]);
        out.push_back(':');
        wse_append_json_string(out, errors[i]);
      });
  out.push_back('}');
  if (recovery != nullptr) append_recovery(out, *recovery);
  out.append("},\"v\":1}");
}

void wse_append_recovery_stamp(std::string& out, std::string_view topic, uint32_t epoch,
                               uint64_t offset) {
  out.append("{\"tp\":");
  wse_append_json_string(out, topic);
  out.append(",\"e\":\"");
  append_hex8(out, epoch);
  out.append("\",\"o\":");
  append_uint(out, offset);
  out.push_back(',');
}

bool wse_parse_recovery_stamp(std::string_view json, std::string_view& topic_raw, uint32_t& epoch,
                              uint64_t& offset) {
  constexpr std::string_view open = "{\"tp\":\"", epoch_key = ",\"e\":\"", offset_key = "\",\"o\":";
  if (!has_at(json, 0, open)) return false;
  const size_t topic_begin = open.size();
  const size_t topic_end = string_end(json, topic_begin);
  if (topic_end == std::string_view::npos) return false;
  size_t i = topic_end + 1;
  if (!has_at(json, i, epoch_key)) return false;
  i += epoch_key.size();
  if (json.size() - i < 8) return false;
  uint32_t e = 0;
  for (const size_t end = i + 8; i < end; ++i) {
    const char ch = json[i];
    if (ch >= '0' && ch <= '9') {
      e = e << 4 | static_cast<uint32_t>(ch - '0');
    } else if (ch >= 'a' && ch <= 'f') {
      e = e << 4 | static_cast<uint32_t>(ch - 'a' + 10);
    } else {
      return false;
    }
  }
  if (!has_at(json, i, offset_key)) return false;
  i += offset_key.size();
  // Digits as to_chars writes them: no sign, no leading zero (but "0"), at most u64.
  const size_t digits_begin = i;
  uint64_t o = 0;
  while (i < json.size() && json[i] >= '0' && json[i] <= '9') {
    const auto digit = static_cast<uint64_t>(json[i] - '0');
    if (o > (UINT64_MAX - digit) / 10) return false;
    o = o * 10 + digit;
    ++i;
  }
  const size_t digits = i - digits_begin;
  if (digits == 0 || (digits > 1 && json[digits_begin] == '0')) return false;
  if (i == json.size() || (json[i] != ',' && json[i] != '}')) return false;
  topic_raw = json.substr(topic_begin, topic_end - topic_begin);
  epoch = e;
  offset = o;
  return true;
}

void wse_build_presence_event(std::string& out, std::string_view type, std::string_view topic,
                              std::string_view user_id, std::string_view data_json) {
  out.append("{\"c\":\"WSE\",\"p\":{\"data\":");
  out.append(data_json.empty() ? std::string_view("{}") : data_json);
  out.append(",\"topic\":");
  wse_append_json_string(out, topic);
  out.append(",\"user_id\":");
  wse_append_json_string(out, user_id);
  out.append("},\"t\":");
  wse_append_json_string(out, type);
  out.append(",\"v\":1}");
}

void wse_build_presence_stats(std::string& out, uint64_t users, uint64_t connections) {
  out.append("{\"num_users\":");
  append_uint(out, users);
  out.append(",\"num_connections\":");
  append_uint(out, connections);
  out.push_back('}');
}

void wse_build_envelope(std::string& out, const wse_envelope_fields& fields) {
  out.append("{\"c\":");
  wse_append_json_string(out, fields.category);
  out.append(",\"t\":");
  wse_append_json_string(out, fields.type);
  out.append(",\"p\":");
  out.append(fields.payload_json.empty() ? std::string_view("{}") : fields.payload_json);
  if (!fields.id.empty()) {
    out.append(",\"id\":");
    wse_append_json_string(out, fields.id);
  }
  out.append(",\"ts\":");
  append_timestamp(out, fields.now_ms);
  if (fields.seq != 0) {
    out.append(",\"seq\":");
    append_uint(out, fields.seq);
  }
  out.append(",\"v\":1}");
}

}  // namespace wsed::proto
