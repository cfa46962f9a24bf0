// engine/wse_app.cpp: see wse_app.hpp. Runs on the shards' threads; each touches only its own
// per_shard. Reads CLOCK_REALTIME for WSE timestamps and JWT exp (wall time, not the loop clock);
// the inbound token bucket runs on the shard's loop clock.
#include "engine/wse_app.hpp"

#include <time.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <optional>
#include <string_view>

namespace wsed::engine {

namespace {

int64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string_view as_text(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

std::span<const uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// Sorted by name (clients are written against sorted keys). Only what wsed really does is true.
std::array<proto::wse_feature, wse_feature_count> features_of(const wse_app_options& o) {
  return {{
      {"batching", false},
      {"circuit_breaker", false},
      {"compression", o.compression_threshold_bytes > 0},
      {"encryption", false},
      {"priority_queue", false},
      {"recovery", false},
  }};
}

constexpr std::string_view anonymous_user = "anonymous";
constexpr uint64_t milli = 1000;  // token bucket unit: a message is 1000 milli-tokens

const char* name_of(wse_send_format f) {
  static constexpr const char* names[] = {"json", "msgpack", "compressed"};
  static_assert(std::size(names) == size_t(wse_send_format::count_));
  return names[size_t(f)];
}

}  // namespace

wse_app::per_shard::per_shard() : rng(std::random_device{}()) {}

wse_app::wse_app(wse_app_options options, wse_handler& handler)
    : opt_(std::move(options)), handler_(handler), features_(features_of(opt_)) {
  auth_ = opt_.verifier != nullptr;
  verifier_ = std::move(opt_.verifier);
  sources_.cookie_name = opt_.cookie_name;
  sources_.query = opt_.allow_query_token ? auth::query_token::allowed : auth::query_token::refused;
  shards_.resize(std::max<uint32_t>(opt_.shards, 1));
  for (auto& p : shards_) p = std::make_unique<per_shard>();
}

wse_app::~wse_app() = default;

void wse_app::set_verifier(std::shared_ptr<const auth::verifier> verifier) {
  if (!auth_ || !verifier) return;
  std::lock_guard lock(verifier_mu_);
  verifier_ = std::move(verifier);
  verifier_version_.store(verifier_version_.load(std::memory_order_relaxed) + 1,
                          std::memory_order_release);
}

void wse_app::count_reload(bool ok) {
  (ok ? reloads_ok_ : reloads_failed_).add();
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

void wse_app::send_text(shard& s, conn_ref c, std::string_view text) {
  s.send_message(c, proto::ws_opcode::text, as_bytes(text));
}

void wse_app::send_error(shard& s, conn_ref c, per_shard& p, std::string_view code,
                         std::string_view message) {
  p.scratch.clear();
  proto::wse_build_error(p.scratch, code, message, wall_ms());
  send_text(s, c, p.scratch);
}

void wse_app::refuse(shard& s, conn_ref c, per_shard& p, auth::verify_error why) {
  (why == auth::verify_error::no_token ? p.counts.auth_required : p.counts.auth_failed).add();
  std::string_view message =
      why == auth::verify_error::no_token ? "Authentication required" : auth::name_of(why);
  send_error(s, c, p, auth::protocol_code_of(why), message);
  s.close(c, auth::auth_close_code, close_reason::auth_failed);
}

void wse_app::on_open(shard& s, conn_ref c, const proto::http_request& request) {
  per_shard& p = part(s);
  if (c.slot >= p.conns.size()) p.conns.resize(std::max<size_t>(c.slot + 1, p.conns.size() * 2));
  conn_state& st = p.conns[c.slot];
  st.generation = c.generation;
  st.live = true;
  st.authenticated = false;
  st.rate_limited = false;
  st.dropped = 0;
  st.tokens_milli = uint64_t(opt_.inbound_burst) * milli;
  st.refilled_ms = s.now_ms();
  st.seq = 0;
  st.user_id.clear();
  auto format = auth::query_value(request.query, "format");
  st.msgpack = format && proto::ascii_iequals(*format, "msgpack");

  std::optional<auth::identity> who;
  if (auth_) {
    std::array<std::string_view, proto::http_header_count_max> cookies;  // every Cookie header
    size_t cookie_count = 0;
    for (size_t i = 0; i < request.header_count; ++i)
      if (proto::ascii_iequals(request.headers[i].name, "Cookie"))
        cookies[cookie_count++] = request.headers[i].value;
    auto token =
        auth::extract_token(std::span<const std::string_view>(cookies.data(), cookie_count),
                            request.header("Authorization"), request.query, sources_);
    if (!token) return refuse(s, c, p, auth::verify_error::no_token);
    if (verifier_version_.load(std::memory_order_acquire) != p.verifier_version) {
      std::lock_guard lock(verifier_mu_);
      p.verifier = verifier_;
      p.verifier_version = verifier_version_.load(std::memory_order_relaxed);
    }
    auto verified = p.verifier->verify(*token, wall_ms() / 1000);
    if (!verified) return refuse(s, c, p, verified.error());
    who = std::move(*verified);
    st.user_id = who->user_id;
  } else {
    st.user_id = anonymous_user;
  }
  st.authenticated = true;
  p.counts.auth_ok.add();

  int64_t now = wall_ms();
  uuid7(p, now, st.connection_id);
  char message_id[proto::wse_uuid_chars];
  uuid7(p, now, message_id);
  proto::wse_server_ready ready;
  ready.message_id = std::string_view(message_id, sizeof message_id);
  ready.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
  ready.user_id = st.user_id;
  ready.now_ms = now;
  ready.features = features_;
  ready.seq = ++st.seq;
  p.scratch.clear();
  proto::wse_build_server_ready(p.scratch, ready);
  send_text(s, c, p.scratch);

  wse_user user;
  user.user_id = st.user_id;
  user.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
  user.acl = who ? &who->acl : nullptr;
  handler_.on_connect(user, wse_conn{&s, c});
}

// The inbound token bucket: true when the message may be processed. Over the rate the message
// is dropped; the first drop of an episode sends RATE_LIMITED, more than a burst of drops in one
// episode closes with 4429.
bool wse_app::admit(shard& s, conn_ref c, per_shard& p, conn_state& st) {
  if (opt_.inbound_rate == 0) return true;
  uint64_t now = s.now_ms();
  uint64_t cap = uint64_t(opt_.inbound_burst) * milli;
  if (now > st.refilled_ms) {
    st.tokens_milli = std::min(cap, st.tokens_milli + (now - st.refilled_ms) * opt_.inbound_rate);
    st.refilled_ms = now;
  }
  if (st.tokens_milli >= milli) {
    st.tokens_milli -= milli;
    st.rate_limited = false;
    return true;
  }
  p.counts.rate_limited.add();
  if (!st.rate_limited) {
    st.rate_limited = true;
    st.dropped = 0;
    std::string message = "inbound messages over " + std::to_string(opt_.inbound_rate) +
                          "/s (burst " + std::to_string(opt_.inbound_burst) + "): dropped";
    send_error(s, c, p, "RATE_LIMITED", message);
  }
  if (++st.dropped > opt_.inbound_burst) s.close(c, 4429, close_reason::rate_limited);
  return false;
}

void wse_app::on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                         std::span<const uint8_t> payload) {
  per_shard& p = part(s);
  conn_state* st = state_of(p, c);
  if (!st || !st->authenticated) {
    p.counts.before_auth.add();
    return;
  }
  if (!admit(s, c, p, *st)) return;
  if (opcode == proto::ws_opcode::text) return on_json(s, c, p, *st, as_text(payload));
  // Binary: M: + MessagePack, raw MessagePack, or C: + zlib; decoded to JSON text first.
  proto::wse_msgpack_envelope env;
  proto::wse_error err =
      p.codec.decode_inbound(payload, true, p.decoded, opt_.message_bytes_max, &env);
  if (err != proto::wse_error::none) {
    p.counts.invalid.add();
    return send_error(s, c, p, "INVALID_MESSAGE", proto::to_string(err));
  }
  // An application message (or a pong) in MessagePack needs no second parse: the decoder saw
  // its envelope on the way (the views point into payload, alive for this call). Anything else
  // (protocol messages with payload fields, odd shapes) goes through the JSON parser.
  // (depth < the JSON cap: simdjson counts a scalar inside the innermost array as a level where
  // the MessagePack decoder does not, so at the cap the parser decides; the fuzz target found it)
  if (env.complete && env.depth < proto::wse_json_depth_max) {
    proto::wse_kind kind = proto::wse_kind_of(env.type);
    if (kind == proto::wse_kind::pong) return p.counts.pongs.add();
    if (kind == proto::wse_kind::application) {
      std::string_view payload_json;
      if (env.has_payload)
        payload_json = std::string_view(p.decoded).substr(env.payload_begin,
                                                          env.payload_end - env.payload_begin);
      return deliver(s, c, p, *st, env.type, env.has_category, env.category, payload_json);
    }
  }
  on_json(s, c, p, *st, p.decoded);
}

void wse_app::deliver(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view type,
                      bool has_category, std::string_view category, std::string_view payload_json) {
  p.counts.app_messages.add();
  wse_app_message m;
  m.type = type;
  m.category = has_category ? category : proto::category_name(proto::category_of(type));
  m.payload_json = payload_json;
  m.user_id = st.user_id;
  m.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
  handler_.on_message(wse_conn{&s, c}, m);
}

void wse_app::on_json(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view text) {
  proto::wse_message msg;
  proto::wse_error err = p.parser.parse(text, msg, proto::wse_input_padding::none);
  if (err != proto::wse_error::none) {
    p.counts.invalid.add();
    return send_error(s, c, p, "INVALID_MESSAGE", proto::to_string(err));
  }
  switch (msg.kind) {
    case proto::wse_kind::ping:
      p.counts.pings.add();
      p.scratch.clear();
      proto::wse_build_pong(p.scratch, msg.client_timestamp_ms, wall_ms());
      send_text(s, c, p.scratch);
      return;
    case proto::wse_kind::pong:
      p.counts.pongs.add();
      return;
    case proto::wse_kind::client_hello: {
      p.counts.hellos.add();
      const proto::wse_limit limits[] = {{"max_message_size", opt_.message_bytes_max}};
      proto::wse_server_hello hello;
      hello.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
      hello.features = features_;
      hello.limits = limits;
      hello.ping_interval_ms = opt_.ping_interval_ms;
      hello.protocol_version = std::min<int64_t>(msg.hello.protocol_version, 2);
      hello.now_ms = wall_ms();
      hello.server_version = WSED_VERSION;
      p.scratch.clear();
      proto::wse_build_server_hello(p.scratch, hello);
      send_text(s, c, p.scratch);
      return;
    }
    case proto::wse_kind::subscription:
      p.counts.subscriptions.add();  // topic subscriptions come with the fan-out issue
      return;
    case proto::wse_kind::application:
      break;
  }
  deliver(s, c, p, st, msg.type, msg.has_category, msg.category,
          msg.has_payload ? msg.payload_json : std::string_view{});
}

send_status wse_app::send(wse_conn conn, std::string_view type, std::string_view payload_json,
                          std::string_view category) {
  shard& s = *conn.owner;
  per_shard& p = part(s);
  conn_state* st = state_of(p, conn.ref);
  if (!st || !st->authenticated) return send_status::dropped;
  int64_t now = wall_ms();
  char id[proto::wse_uuid_chars];
  uuid7(p, now, id);
  proto::wse_envelope_fields f;
  f.category = category.empty() ? proto::category_name(proto::category_of(type)) : category;
  f.type = type;
  f.payload_json = payload_json;
  f.id = std::string_view(id, sizeof id);
  f.now_ms = now;
  f.seq = ++st->seq;
  // type, payload_json and category must not point into p.scratch or p.encoded (they are
  // rebuilt here): handlers pass the message's own views or their own buffers.
  p.scratch.clear();
  proto::wse_build_envelope(p.scratch, f);

  if (st->msgpack) {
    p.encoded.clear();
    if (p.codec.json_to_msgpack(p.scratch, p.encoded, true) == proto::wse_error::none) {
      p.counts.sends[size_t(wse_send_format::msgpack)].add();
      return s.send_message(conn.ref, proto::ws_opcode::binary, as_bytes(p.encoded));
    }
  } else if (opt_.compression_threshold_bytes) {
    p.encoded.clear();
    if (p.codec.compress(p.scratch, p.encoded, opt_.compression_threshold_bytes) ==
        proto::wse_compressed::yes) {
      p.counts.sends[size_t(wse_send_format::compressed)].add();
      return s.send_message(conn.ref, proto::ws_opcode::binary, as_bytes(p.encoded));
    }
  }
  p.counts.sends[size_t(wse_send_format::json)].add();
  return s.send_message(conn.ref, proto::ws_opcode::text, as_bytes(p.scratch));
}

// Every --ping-interval, one server ping to each authenticated connection of this shard: the
// frame text is built once per pass (the same server_time for all).
void wse_app::on_tick(shard& s, uint64_t now_ms) {
  handler_.on_tick(s.index());
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
    p.counts.server_pings.add();
  }
}

void wse_app::on_close(shard& s, conn_ref c) {
  per_shard& p = part(s);
  if (conn_state* st = state_of(p, c)) {
    bool was_connected = st->authenticated;
    st->live = false;
    st->authenticated = false;
    st->user_id.clear();
    if (was_connected) handler_.on_disconnect(wse_conn{&s, c});
  }
}

void wse_app::render_metrics(std::string& out) const {
  size_t n = shards_.size();
  auto shard_family = [&](const char* name, const char* help, counter wse_counters::*field,
                          const char* label = nullptr, const char* value = nullptr,
                          bool header = true) {
    append_family(
        out, n, [&](size_t i) { return (shards_[i]->counts.*field).get(); }, name, "counter", help,
        label, value, header);
  };
  const char* auth_help = "WSE upgrades by authentication result.";
  shard_family("wsed_wse_auth_total", auth_help, &wse_counters::auth_ok, "result", "ok");
  shard_family("wsed_wse_auth_total", auth_help, &wse_counters::auth_required, "result", "required",
               false);
  shard_family("wsed_wse_auth_total", auth_help, &wse_counters::auth_failed, "result", "failed",
               false);
  static constexpr struct {
    const char* kind;
    counter wse_counters::*field;
  } kinds[] = {
      {"ping", &wse_counters::pings},
      {"pong", &wse_counters::pongs},
      {"client_hello", &wse_counters::hellos},
      {"subscription", &wse_counters::subscriptions},
      {"application", &wse_counters::app_messages},
      {"invalid", &wse_counters::invalid},
      {"before_auth", &wse_counters::before_auth},
  };
  bool first = true;
  for (const auto& k : kinds) {
    shard_family("wsed_wse_messages_total", "WSE inbound messages by kind.", k.field, "kind",
                 k.kind, first);
    first = false;
  }
  shard_family("wsed_wse_server_pings_total", "WSE server pings sent.",
               &wse_counters::server_pings);
  shard_family("wsed_wse_rate_limited_total", "WSE inbound messages dropped over --inbound-rate.",
               &wse_counters::rate_limited);
  for (size_t f = 0; f < size_t(wse_send_format::count_); ++f) {
    append_family(
        out, n, [&](size_t i) { return shards_[i]->counts.sends[f].get(); }, "wsed_wse_sends_total",
        "counter", "WSE per-connection sends by wire format.", "format",
        name_of(wse_send_format(f)), f == 0);
  }
  char line[160];
  std::snprintf(line, sizeof line,
                "# HELP wsed_key_reloads_total JWT key reloads (SIGHUP) by result.\n"
                "# TYPE wsed_key_reloads_total counter\n"
                "wsed_key_reloads_total{result=\"ok\"} %llu\n",
                static_cast<unsigned long long>(reloads_ok_.get()));
  out += line;
  std::snprintf(line, sizeof line, "wsed_key_reloads_total{result=\"failed\"} %llu\n",
                static_cast<unsigned long long>(reloads_failed_.get()));
  out += line;
  handler_.render_metrics(out);
}

}  // namespace wsed::engine
