// engine/redis_names.cpp: Redis URL parsing, channel names, RESP formatting, Redis's glob
// matcher, key slots and the echo filter (see redis_names.hpp).
#include "engine/redis_names.hpp"

#include <netdb.h>
#include <sys/un.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>

namespace wsed::engine::redis {

std::string endpoint::text() const {
  return unix_socket ? path : host + ":" + std::to_string(port);
}

namespace {

int hex_value(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(char(hi * 16 + lo));
    i += 2;
  }
  return true;
}

bool parse_number(std::string_view s, uint64_t max, uint64_t& out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && out <= max;
}

}  // namespace

bool resolve(endpoint& e, std::string& why) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string host = e.host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  std::string service = std::to_string(e.port);
  int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0 || !found) {
    why = "cannot resolve " + e.host + ": " + gai_strerror(rc);
    return false;
  }
  std::memcpy(&e.address, found->ai_addr, found->ai_addrlen);
  e.address_bytes = found->ai_addrlen;
  freeaddrinfo(found);
  return true;
}

bool parse_endpoint(std::string_view url, endpoint& out, std::string& why) {
  out = endpoint{};
  why.clear();
  constexpr std::string_view tcp = "redis://", unix_scheme = "unix://";
  if (url.starts_with(unix_scheme)) {
    std::string_view rest = url.substr(unix_scheme.size());
    size_t q = rest.find('?');
    std::string_view path = rest.substr(0, q);
    if (path.empty() || path.front() != '/') {
      why = "unix:// needs an absolute socket path (unix:///run/redis.sock)";
      return false;
    }
    if (q != std::string_view::npos) {
      std::string_view query = rest.substr(q + 1);
      uint64_t db = 0;
      if (!query.starts_with("db=") || !parse_number(query.substr(3), 65535, db)) {
        why = "unix://: the only query is ?db=N";
        return false;
      }
      out.db = uint32_t(db);
    }
    sockaddr_un sun{};
    if (path.size() >= sizeof sun.sun_path) {
      why = "unix socket path too long";
      return false;
    }
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, path.data(), path.size());
    out.unix_socket = true;
    out.path = std::string(path);
    std::memcpy(&out.address, &sun, sizeof sun);
    out.address_bytes = socklen_t(sizeof sun);
    return true;
  }
  if (url.starts_with("rediss://")) {
    why =
        "rediss:// (TLS) is not supported; use redis:// on a trusted network or a local TLS proxy";
    return false;
  }
  if (!url.starts_with(tcp)) {
    why = "expected redis://[user:pass@]host:port[/db] or unix:///path";
    return false;
  }
  std::string_view rest = url.substr(tcp.size());
  size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    std::string_view creds = rest.substr(0, at);
    rest = rest.substr(at + 1);
    size_t colon = creds.find(':');
    std::string_view user =
        colon == std::string_view::npos ? std::string_view{} : creds.substr(0, colon);
    std::string_view pass = colon == std::string_view::npos ? creds : creds.substr(colon + 1);
    if (!percent_decode(user, out.user) || !percent_decode(pass, out.password)) {
      why = "bad percent-escape in the credentials";
      return false;
    }
  }
  size_t slash = rest.find('/');
  std::string_view hostport = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    uint64_t db = 0;
    std::string_view d = rest.substr(slash + 1);
    if (!d.empty() && !parse_number(d, 65535, db)) {
      why = "the database after / must be a number";
      return false;
    }
    out.db = uint32_t(db);
  }
  size_t colon = hostport.rfind(':');
  if (hostport.starts_with("[")) {  // [v6]:port
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) {
      why = "unterminated [IPv6 address]";
      return false;
    }
    colon = close + 1 < hostport.size() && hostport[close + 1] == ':' ? close + 1
                                                                      : std::string_view::npos;
    out.host = std::string(hostport.substr(0, close + 1));
  } else {
    out.host = std::string(hostport.substr(0, colon));
  }
  if (out.host.empty()) {
    why = "missing host";
    return false;
  }
  if (colon != std::string_view::npos) {
    uint64_t port = 0;
    if (!parse_number(hostport.substr(colon + 1), 65535, port) || port == 0) {
      why = "the port must be a number from 1 to 65535";
      return false;
    }
    out.port = uint16_t(port);
  }
  return resolve(out, why);
}

std::string mask_credentials(std::string_view list) {
  std::string out;
  for (;;) {
    size_t comma = list.find(',');
    std::string item(list.substr(0, comma));
    size_t at = item.rfind('@');
    if (at != std::string::npos) {
      size_t scheme = item.find("://");
      size_t from = scheme == std::string::npos || scheme > at ? 0 : scheme + 3;
      size_t colon = item.find(':', from);
      if (colon < at) from = colon + 1;
      item.replace(from, at - from, "***");
    }
    out += item;
    if (comma == std::string_view::npos) break;
    out += ',';
    list.remove_prefix(comma + 1);
  }
  return out;
}

bool parse_cluster(std::string_view list, std::vector<endpoint>& out, std::string& why) {
  out.clear();
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    if (item.empty()) continue;
    endpoint e;
    std::string url =
        item.starts_with("redis://") ? std::string(item) : "redis://" + std::string(item);
    if (!parse_endpoint(url, e, why)) {
      why = mask_credentials(item) + ": " + why;
      return false;
    }
    out.push_back(std::move(e));
  }
  if (out.empty()) {
    why = "expected host:port,host:port,...";
    return false;
  }
  return true;
}

void append_topic_channel(std::string& out, std::string_view prefix, std::string_view topic) {
  out.append(prefix);
  if (!topic.empty() && topic.front() == '@') out.push_back('@');
  out.append(topic);
}

void append_channel(std::string& out, std::string_view prefix, channel_kind kind,
                    std::string_view key) {
  switch (kind) {
    case channel_kind::topic:
      return append_topic_channel(out, prefix, key);
    case channel_kind::broadcast:
      out.append(prefix).append(broadcast_name);
      return;
    case channel_kind::user:
      out.append(prefix).append(user_name).append(key);
      return;
    case channel_kind::command:
      out.append(prefix).append(node_name).append(key);
      return;
    case channel_kind::unknown:
      return;
  }
}

namespace {

// Backslash before every byte of text that is one of specials (Redis's matcher escapes).
void append_escaped(std::string& out, std::string_view text, std::string_view specials) {
  for (char ch : text) {
    if (specials.find(ch) != std::string_view::npos) out.push_back('\\');
    out.push_back(ch);
  }
}

}  // namespace

std::string pattern_for_glob(std::string_view prefix, std::string_view glob) {
  std::string out;
  append_escaped(out, prefix, "[]\\*?");  // the prefix is literal
  if (!glob.empty() && glob.front() == '@') out.append("@");
  append_escaped(out, glob, "[]\\");  // the glob keeps its * and ?
  return out;
}

channel_kind parse_channel(std::string_view channel, std::string_view prefix, std::string& key) {
  key.clear();
  if (!channel.starts_with(prefix)) return channel_kind::unknown;
  std::string_view rest = channel.substr(prefix.size());
  if (rest.empty()) return channel_kind::unknown;
  if (rest.front() != '@') {
    key.assign(rest);
    return channel_kind::topic;
  }
  if (rest.starts_with("@@")) {
    key.assign(rest.substr(1));
    return channel_kind::topic;
  }
  if (rest == broadcast_name) return channel_kind::broadcast;
  if (rest.starts_with(user_name) && rest.size() > user_name.size()) {
    key.assign(rest.substr(user_name.size()));
    return channel_kind::user;
  }
  if (rest.starts_with(node_name) && rest.size() > node_name.size()) {
    key.assign(rest.substr(node_name.size()));
    return channel_kind::command;
  }
  return channel_kind::unknown;
}

bool glob_match(std::string_view p, std::string_view s) {
  // Iterative with one backtrack point for the last `*` (linear for our patterns).
  size_t pi = 0, si = 0, star_p = std::string_view::npos, star_s = 0;
  auto match_one = [&](size_t& i, char ch) -> bool {  // p[i] is not '*'; advances i past it
    char c = p[i];
    if (c == '?') {
      ++i;
      return true;
    }
    if (c == '\\' && i + 1 < p.size()) {
      i += 2;
      return p[i - 1] == ch;
    }
    if (c == '[') {
      size_t j = i + 1;
      bool negate = j < p.size() && p[j] == '^';
      if (negate) ++j;
      bool hit = false;
      while (j < p.size() && p[j] != ']') {
        if (p[j] == '\\' && j + 1 < p.size()) {
          if (p[j + 1] == ch) hit = true;
          j += 2;
        } else if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
          char lo = p[j], hi = p[j + 2];
          if (lo > hi) std::swap(lo, hi);
          if (ch >= lo && ch <= hi) hit = true;
          j += 3;
        } else {
          if (p[j] == ch) hit = true;
          ++j;
        }
      }
      i = j < p.size() ? j + 1 : j;
      return negate ? !hit : hit;
    }
    ++i;
    return c == ch;
  };
  while (si < s.size()) {
    if (pi < p.size() && p[pi] == '*') {
      while (pi < p.size() && p[pi] == '*') ++pi;
      if (pi == p.size()) return true;
      star_p = pi;
      star_s = si;
      continue;
    }
    size_t next = pi;
    if (pi < p.size() && match_one(next, s[si])) {
      pi = next;
      ++si;
      continue;
    }
    if (star_p == std::string_view::npos) return false;
    pi = star_p;
    si = ++star_s;
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

uint16_t key_slot(std::string_view key) {
  size_t open = key.find('{');
  if (open != std::string_view::npos) {
    size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1)
      key = key.substr(open + 1, close - open - 1);
  }
  uint16_t crc = 0;  // CRC16-XMODEM (CCITT polynomial 0x1021, initial 0), as Redis Cluster
  for (char ch : key) {
    crc ^= uint16_t(uint8_t(ch)) << 8;
    for (int b = 0; b < 8; ++b)
      crc = (crc & 0x8000) ? uint16_t((crc << 1) ^ 0x1021) : uint16_t(crc << 1);
  }
  return crc & 16383;
}

namespace {

// slot -> the shortest decimal string whose key slot it is (built once).
const std::vector<std::string>& slot_tags() {
  static const std::vector<std::string> tags = [] {
    std::vector<std::string> t(16384);
    size_t left = t.size();
    for (uint64_t i = 0; left > 0; ++i) {
      std::string s = std::to_string(i);
      std::string& cell = t[key_slot(s)];
      if (cell.empty()) {
        cell = std::move(s);
        --left;
      }
    }
    return t;
  }();
  return tags;
}

}  // namespace

namespace {

// "<prefix>{<tag>}<kind>:<channel>": a key in the channel's cluster slot.
void slot_key(std::string_view prefix, std::string_view channel, char kind, std::string& out) {
  out.clear();
  out.append(prefix);
  out.push_back('{');
  out.append(slot_tags()[key_slot(channel)]);
  out.push_back('}');
  out.push_back(kind);
  out.push_back(':');
  out.append(channel);
}

}  // namespace

void recovery_keys(std::string_view prefix, std::string_view channel, std::string& meta,
                   std::string& log) {
  slot_key(prefix, channel, 'r', meta);
  log = meta;
  meta.push_back('m');
  log.push_back('l');
}

const std::string_view sequence_script = R"lua(
local e = redis.call('HGET', KEYS[1], 'e')
local o
if not e then
  e = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'n', 1)
  o = 0
else
  o = redis.call('HINCRBY', KEYS[1], 'n', 1) - 1
end
local msg = '{"tp":' .. ARGV[2] .. ',"e":"' .. e .. '","o":' .. string.format('%d', o) .. ARGV[3]
redis.call('RPUSH', KEYS[2], msg)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call(ARGV[7], ARGV[1], msg)
return o
)lua";

void queue_group_keys(std::string_view prefix, std::string_view channel, std::string& members,
                      std::string& instances, std::string& order) {
  slot_key(prefix, channel, 'q', members);
  instances = members;
  order = members;
  members.push_back('m');
  instances.push_back('i');
  order.push_back('n');
}

const std::string_view queue_group_script = R"lua(
local inst = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = {}
for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)) do
  if e ~= inst then
    dead[e] = true
    redis.call('ZREM', KEYS[2], e)
  end
end
local want = {}
for i = 6, #ARGV do want[inst .. '\t' .. ARGV[i]] = true end
local changed = false
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local owner = string.match(m, '^([^\t]*)\t')
  if dead[owner] or (owner == inst and not want[m]) then
    redis.call('ZREM', KEYS[1], m)
    changed = true
  elseif owner == inst then
    want[m] = nil
  end
end
for i = 6, #ARGV do
  local m = inst .. '\t' .. ARGV[i]
  if want[m] then
    redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), m)
    want[m] = nil
    changed = true
  end
end
local keep = tonumber(ARGV[2])
if #ARGV >= 6 then
  redis.call('ZADD', KEYS[2], now + keep, inst)
else
  redis.call('ZREM', KEYS[2], inst)
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], 4 * keep) end
if changed or ARGV[5] == '1' then
  redis.call(ARGV[4], ARGV[3],
             'wsed:queue_groups\n' .. table.concat(redis.call('ZRANGE', KEYS[1], 0, -1), '\n'))
end
if changed then return 1 end
return 0
)lua";

void presence_keys(std::string_view prefix, std::string_view channel, std::string& data,
                   std::string& totals, std::string& counts, std::string& instances) {
  slot_key(prefix, channel, 'p', data);
  totals = data;
  counts = data;
  instances = data;
  data.push_back('d');
  totals.push_back('t');
  counts.push_back('c');
  instances.push_back('i');
}

const std::string_view presence_script = R"lua(
local inst, keep, channel, verb, topic = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function esc(s)
  return (string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == '\\' then return '\\\\' end
    return string.format('\\u%04x', string.byte(c))
  end))
end
local function event(kind, user, data)
  redis.call(verb, channel, '{"c":"WSE","p":{"data":' .. data .. ',"topic":' .. topic ..
             ',"user_id":"' .. esc(user) .. '"},"t":"presence_' .. kind .. '","v":1}')
end
local function set(owner, user, count, data)
  local field = owner .. '\t' .. user
  local old = tonumber(redis.call('HGET', KEYS[3], field) or '0')
  if count > 0 then
    redis.call('HSET', KEYS[3], field, count)
  else
    redis.call('HDEL', KEYS[3], field)
  end
  local before = tonumber(redis.call('HGET', KEYS[2], user) or '0')
  local after = before - old + count
  if after > 0 then
    redis.call('HSET', KEYS[2], user, after)
  else
    redis.call('HDEL', KEYS[2], user)
  end
  if before <= 0 and after > 0 then
    if data == '' then data = '{}' end
    redis.call('HSET', KEYS[1], user, data)
    event('join', user, data)
  elseif before > 0 and after <= 0 then
    local last = redis.call('HGET', KEYS[1], user) or '{}'
    redis.call('HDEL', KEYS[1], user)
    event('leave', user, last)
  elseif after > 0 and count > 0 and data ~= '' and redis.call('HGET', KEYS[1], user) ~= data then
    redis.call('HSET', KEYS[1], user, data)
    event('update', user, data)
  end
end
for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)) do
  if e ~= inst then
    redis.call('ZREM', KEYS[4], e)
    local p = e .. '\t'
    local all = redis.call('HGETALL', KEYS[3])
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, #p) == p then set(e, string.sub(all[i], #p + 1), 0, '') end
    end
  end
end
if ARGV[6] == '1' and ARGV[7] ~= '1' and not redis.call('ZSCORE', KEYS[4], inst) then
  return 2  -- this instance's members here had lapsed: only a whole rewrite restores them
end
for i = 8, #ARGV, 3 do set(inst, ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]) end
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[4], now + keep, inst)
else
  redis.call('ZREM', KEYS[4], inst)
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], 4 * keep) end
return 1
)lua";

const std::string_view presence_query_script = R"lua(
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
)lua";

const std::string_view history_script = R"lua(
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return {} end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local at = tonumber(ARGV[2])
local len = redis.call('LLEN', KEYS[2])
if ARGV[1] ~= e or at == nil or at < 0 or at >= n or at + 1 < n - len or n - 1 - at > tonumber(ARGV[3]) then
  return {e, n, 0}
end
local backlog = n - 1 - at
local out = {e, n, 1}
if backlog > 0 then
  local msgs = redis.call('LRANGE', KEYS[2], len - backlog, -1)
  for i = 1, #msgs do out[#out + 1] = msgs[i] end
end
return out
)lua";

namespace {

void append_length(std::string& out, char type, size_t n) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  (void)ec;  // 24 bytes hold any size_t
  out.push_back(type);
  out.append(digits, end);
  out.append("\r\n");
}

}  // namespace

void append_array_header(std::string& out, size_t n) {
  append_length(out, '*', n);
}

void append_bulk(std::string& out, std::string_view arg) {
  append_length(out, '$', arg.size());
  out.append(arg);
  out.append("\r\n");
}

void append_command(std::string& out, std::initializer_list<std::string_view> args) {
  append_array_header(out, args.size());
  for (std::string_view a : args) append_bulk(out, a);
}

void append_command(std::string& out, const std::vector<std::string_view>& args) {
  append_array_header(out, args.size());
  for (std::string_view a : args) append_bulk(out, a);
}

uint64_t fingerprint(std::string_view channel, std::string_view payload) {
  uint64_t a = std::hash<std::string_view>{}(channel);
  uint64_t b = std::hash<std::string_view>{}(payload);
  return a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull + (a << 6) + (a >> 2));
}

namespace {

uint64_t stored(uint64_t fp) {
  return fp ? fp : 1;
}

}  // namespace

echo_filter::slot* echo_filter::find(uint64_t fp) {
  fp = stored(fp);
  const size_t mask = slots_.size() - 1;
  for (size_t i = fp & mask;; i = (i + 1) & mask) {
    if (slots_[i].fp == fp) return &slots_[i];
    if (slots_[i].fp == 0) return nullptr;
  }
}

void echo_filter::add(uint64_t fp) {
  if ((used_ + 1) * 2 > slots_.size()) {  // grow at half full
    std::vector<slot> old(slots_.size() * 2);
    old.swap(slots_);
    used_ = 0;
    const size_t mask = slots_.size() - 1;
    for (const slot& s : old) {
      if (s.fp == 0) continue;
      size_t i = s.fp & mask;
      while (slots_[i].fp != 0) i = (i + 1) & mask;
      slots_[i] = s;
      ++used_;
    }
  }
  fp = stored(fp);
  const size_t mask = slots_.size() - 1;
  size_t i = fp & mask;
  while (slots_[i].fp != 0 && slots_[i].fp != fp) i = (i + 1) & mask;
  if (slots_[i].fp == 0) {
    slots_[i].fp = fp;
    ++used_;
  }
  ++slots_[i].live;
}

void echo_filter::erase(slot* s) {
  // Backward-shift deletion: move later members of the probe run into the hole.
  const size_t mask = slots_.size() - 1;
  size_t hole = size_t(s - slots_.data());
  for (size_t i = (hole + 1) & mask; slots_[i].fp != 0; i = (i + 1) & mask) {
    size_t home = slots_[i].fp & mask;
    // The member at i may move to the hole when its home is not in (hole, i].
    bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
    if (stays) continue;
    slots_[hole] = slots_[i];
    hole = i;
  }
  slots_[hole] = slot{};
  --used_;
}

void echo_filter::record(uint64_t fp, uint64_t seq) {
  order_.push_back({fp, seq});
  add(fp);
}

bool echo_filter::consume(uint64_t fp) {
  slot* s = find(fp);
  if (!s || s->live == 0) return false;
  --s->live;
  ++s->credit;
  return true;
}

void echo_filter::expire_through(uint64_t seq) {
  while (!order_.empty() && order_.front().seq <= seq) {
    if (slot* s = find(order_.front().fp)) {
      if (s->credit > 0) {
        --s->credit;  // this record's echo came (the oldest records are credited first)
      } else if (s->live > 0) {
        --s->live;  // it never will
      }
      if (s->live == 0 && s->credit == 0) erase(s);
    }
    order_.pop_front();
  }
}

void echo_filter::clear() {
  order_.clear();
  std::fill(slots_.begin(), slots_.end(), slot{});
  used_ = 0;
}

}  // namespace wsed::engine::redis
