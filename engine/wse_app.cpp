// engine/wse_app.cpp: see wse_app.hpp. Runs on the shards' threads; each touches only its own
// per_shard. Reads CLOCK_REALTIME for WSE timestamps and JWT exp (wall time, not the loop clock).
#include "engine/wse_app.hpp"

#include <time.h>

#include <algorithm>
#include <array>
#include <string_view>

namespace wsed::engine {

namespace {

int64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

bool equal_nocase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// Sorted by name (clients are written against sorted keys). Only what wsed really does is true.
constexpr std::array<proto::wse_feature, 6> features{{
    {"batching", false},
    {"circuit_breaker", false},
    {"compression", false},
    {"encryption", false},
    {"priority_queue", false},
    {"recovery", false},
}};

constexpr std::string_view anonymous_user = "anonymous";

}  // namespace

wse_app::per_shard::per_shard() : rng(std::random_device{}()) {}

wse_app::wse_app(wse_app_options options) : opt_(std::move(options)) {
  sources_.cookie_name = opt_.cookie_name;
  sources_.query = opt_.allow_query_token ? auth::query_token::allowed : auth::query_token::refused;
  shards_.resize(std::max<uint32_t>(opt_.shards, 1));
}

wse_app::~wse_app() = default;

wse_app::per_shard& wse_app::part(shard& s) {
  std::unique_ptr<per_shard>& p = shards_.at(s.index());
  if (!p) p = std::make_unique<per_shard>();
  return *p;
}

wse_app::conn_state* wse_app::state_of(per_shard& p, conn_ref c) {
  if (c.slot >= p.conns.size()) return nullptr;
  conn_state& st = p.conns[c.slot];
  return st.live && st.generation == c.generation ? &st : nullptr;
}

void wse_app::uuid7(per_shard& p, int64_t now_ms, char (&out)[proto::wse_uuid_chars]) {
  std::array<uint8_t, 10> bytes{};
  uint64_t a = p.rng(), b = p.rng();
  for (size_t i = 0; i < 8; ++i) bytes[i] = uint8_t(a >> (8 * i));
  bytes[8] = uint8_t(b);
  bytes[9] = uint8_t(b >> 8);
  proto::wse_format_uuid7(uint64_t(now_ms), bytes, out);
}

void wse_app::send_text(shard& s, conn_ref c, const std::string& text) {
  s.send_message(
      c, proto::ws_opcode::text,
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

void wse_app::refuse(shard& s, conn_ref c, per_shard& p, auth::verify_error why) {
  if (why == auth::verify_error::no_token)
    ++p.counts.auth_required;
  else
    ++p.counts.auth_failed;
  p.scratch.clear();
  std::string_view message =
      why == auth::verify_error::no_token ? "Authentication required" : auth::name_of(why);
  proto::wse_build_error(p.scratch, auth::protocol_code_of(why), message, wall_ms());
  send_text(s, c, p.scratch);
  s.close(c, auth::auth_close_code);
}

void wse_app::on_open(shard& s, conn_ref c, const proto::http_request& request) {
  per_shard& p = part(s);
  if (c.slot >= p.conns.size()) p.conns.resize(std::max<size_t>(c.slot + 1, p.conns.size() * 2));
  conn_state& st = p.conns[c.slot];
  st.generation = c.generation;
  st.live = true;
  st.authenticated = false;
  st.seq = 0;
  st.user_id.clear();

  if (opt_.verifier) {
    std::array<std::string_view, proto::http_header_count_max> cookies;
    size_t cookie_count = 0;
    std::string_view authorization;
    for (size_t i = 0; i < request.header_count; ++i) {
      const proto::http_header& h = request.headers[i];
      if (equal_nocase(h.name, "Cookie"))
        cookies[cookie_count++] = h.value;
      else if (authorization.empty() && equal_nocase(h.name, "Authorization"))
        authorization = h.value;
    }
    auto token =
        auth::extract_token(std::span<const std::string_view>(cookies.data(), cookie_count),
                            authorization, request.query, sources_);
    if (!token) return refuse(s, c, p, auth::verify_error::no_token);
    auto who = opt_.verifier->verify(*token, wall_ms() / 1000);
    if (!who) return refuse(s, c, p, who.error());
    st.user_id = std::move(who->user_id);
  } else {
    st.user_id = anonymous_user;
  }
  st.authenticated = true;
  ++p.counts.auth_ok;

  int64_t now = wall_ms();
  uuid7(p, now, st.connection_id);
  char message_id[proto::wse_uuid_chars];
  uuid7(p, now, message_id);
  proto::wse_server_ready ready;
  ready.message_id = std::string_view(message_id, sizeof message_id);
  ready.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
  ready.user_id = st.user_id;
  ready.now_ms = now;
  ready.features = features;
  ready.seq = ++st.seq;
  p.scratch.clear();
  proto::wse_build_server_ready(p.scratch, ready);
  send_text(s, c, p.scratch);
}

void wse_app::on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                         std::span<const uint8_t> payload) {
  per_shard& p = part(s);
  conn_state* st = state_of(p, c);
  if (!st || !st->authenticated) {
    ++p.counts.before_auth;
    return;
  }
  if (opcode != proto::ws_opcode::text) {
    ++p.counts.binary_dropped;
    return;
  }
  on_text(s, c, p, *st,
          std::string_view(reinterpret_cast<const char*>(payload.data()), payload.size()));
}

void wse_app::on_text(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view text) {
  proto::wse_message msg;
  proto::wse_error err = p.parser.parse(text, msg, proto::wse_input_padding::none);
  if (err != proto::wse_error::none) {
    ++p.counts.invalid;
    p.scratch.clear();
    proto::wse_build_error(p.scratch, "INVALID_MESSAGE", proto::to_string(err), wall_ms());
    send_text(s, c, p.scratch);
    return;
  }
  switch (msg.kind) {
    case proto::wse_kind::ping:
      ++p.counts.pings;
      p.scratch.clear();
      proto::wse_build_pong(p.scratch, msg.client_timestamp_ms, wall_ms());
      send_text(s, c, p.scratch);
      return;
    case proto::wse_kind::pong:
      ++p.counts.pongs;
      return;
    case proto::wse_kind::client_hello: {
      ++p.counts.hellos;
      const proto::wse_limit limits[] = {{"max_message_size", opt_.message_bytes_max}};
      proto::wse_server_hello hello;
      hello.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
      hello.features = features;
      hello.limits = limits;
      hello.ping_interval_ms = 25000;
      hello.protocol_version = std::min<int64_t>(msg.hello.protocol_version, 2);
      hello.now_ms = wall_ms();
      hello.server_version = WSED_VERSION;
      p.scratch.clear();
      proto::wse_build_server_hello(p.scratch, hello);
      send_text(s, c, p.scratch);
      return;
    }
    case proto::wse_kind::subscription:
      ++p.counts.unsupported;
      return;
    case proto::wse_kind::application:
      break;
  }
  if (opt_.inbound == inbound_policy::drop) {
    ++p.counts.app_dropped;
    return;
  }
  ++p.counts.app_echoed;
  int64_t now = wall_ms();
  char id[proto::wse_uuid_chars];
  uuid7(p, now, id);
  proto::wse_envelope_fields f;
  f.category = msg.has_category ? msg.category : proto::category_name(proto::category_of(msg.type));
  f.type = msg.type;
  f.payload_json = msg.has_payload ? msg.payload_json : std::string_view{};
  f.id = std::string_view(id, sizeof id);
  f.now_ms = now;
  f.seq = ++st.seq;
  p.scratch.clear();
  proto::wse_build_envelope(p.scratch, f);
  send_text(s, c, p.scratch);
}

// Every --ping-interval, one server ping to each authenticated connection of this shard: the
// frame text is built once per pass (the same server_time for all).
void wse_app::on_tick(shard& s, uint64_t now_ms) {
  if (opt_.ping_interval_ms == 0) return;
  per_shard& p = part(s);
  if (p.next_ping_ms == 0) p.next_ping_ms = now_ms + opt_.ping_interval_ms;
  if (now_ms < p.next_ping_ms) return;
  p.next_ping_ms = now_ms + opt_.ping_interval_ms;
  p.scratch.clear();
  proto::wse_build_server_ping(p.scratch, wall_ms());
  for (uint32_t slot = 0; slot < p.conns.size(); ++slot) {
    const conn_state& st = p.conns[slot];
    if (!st.live || !st.authenticated) continue;
    send_text(s, conn_ref{slot, st.generation}, p.scratch);
    ++p.counts.server_pings;
  }
}

void wse_app::on_close(shard& s, conn_ref c) {
  per_shard& p = part(s);
  if (conn_state* st = state_of(p, c)) {
    st->live = false;
    st->authenticated = false;
    st->user_id.clear();
  }
}

}  // namespace wsed::engine
