// engine/wse_app.cpp: see wse_app.hpp. Runs on the shards' threads; each touches only its own
// per_shard. Reads CLOCK_REALTIME for WSE timestamps and JWT exp (wall time, not the loop clock);
// the inbound token bucket runs on the shard's loop clock.
#include "engine/wse_app.hpp"

#include <openssl/crypto.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string_view>

#include "auth/acl.hpp"
#include "engine/log.hpp"

namespace wsed::engine {

namespace {

recovery_position position_in(const proto::wse_subscription& sub, std::string_view topic) {
  recovery_position at;
  if (const proto::wse_recovery_position* pos = sub.position_of(topic)) {
    at.has_epoch = pos->has_epoch;
    at.epoch = pos->epoch;
    at.has_offset = pos->has_offset;
    at.offset = pos->offset;
  }
  return at;
}

// The recovery store's clock (TTL): monotonic.
uint64_t mono_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

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
      {"encryption", o.e2e},
      {"priority_queue", false},
      {"recovery", o.recovery},
  }};
}

constexpr std::string_view anonymous_user = "anonymous";
constexpr std::string_view e2e_prefix = "E:";
// PROTOCOL.md's shape, byte for byte.
constexpr std::string_view key_exchange_failed =
    R"({"c":"WSE","t":"error","p":{"code":"KEY_EXCHANGE_FAILED","message":"encryption_public_key )"
    R"(must be base64 of a 65-byte uncompressed P-256 point","recoverable":true}})";
constexpr size_t acl_shapes_max = 4096;  // distinct ACLs kept for sharing, per shard
constexpr uint64_t milli = 1000;         // token bucket unit: a message is 1000 milli-tokens

const char* name_of(subscribe_outcome o) {
  static constexpr const char* names[] = {"ok",
                                          "acl_denied",
                                          "invalid_topic",
                                          "too_many_topics",
                                          "exact_topic_required",
                                          "presence_full",
                                          "presence_data_too_large"};
  static_assert(std::size(names) == size_t(subscribe_outcome::count_));
  return names[size_t(o)];
}

constexpr std::string_view reason_of(subscribe_outcome o) {
  switch (o) {
    case subscribe_outcome::acl_denied:
      return "ACL_DENIED";
    case subscribe_outcome::invalid_topic:
      return "INVALID_TOPIC";
    case subscribe_outcome::too_many_topics:
      return "TOO_MANY_TOPICS";
    case subscribe_outcome::exact_topic_required:
      return "EXACT_TOPIC_REQUIRED";
    case subscribe_outcome::presence_full:
      return "PRESENCE_FULL";
    case subscribe_outcome::presence_data_too_large:
      return "PRESENCE_DATA_TOO_LARGE";
    default:
      return "OK";
  }
}

// The topics of a command frame (one per line).
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty()) out.push_back(line);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

constexpr std::string_view command_subscribe = "subscribe";
constexpr std::string_view command_unsubscribe = "unsubscribe";
constexpr std::string_view command_send = "send";
constexpr std::string_view command_disconnect = "disconnect";
constexpr std::string_view command_history = "history";  // a history from Redis (recovery)
// Subscribe / unsubscribe with extras: "<queue group>\n<presence bytes>\n<presence><topic lines>"
constexpr std::string_view command_subscribe_ex = "subscribe_ex";
constexpr std::string_view command_unsubscribe_ex = "unsubscribe_ex";
// subscribe_ex by connection id: presence refusals subscribe without presence, and a plain
// subscription's topics were added to the router for this shard by the caller (undone once
// applied, unless the shard holds them then).
constexpr std::string_view command_subscribe_pre = "subscribe_pre";
constexpr std::string_view command_presence = "presence";  // new data for every presence topic
// A deferred HTTP answer for a connection of the shard: "<status>\n<body>"
constexpr std::string_view command_http_answer = "http_answer";
// Raw bytes for a connection: "send_binary" (a binary frame; "send" is a text one).
constexpr std::string_view command_send_binary = "send_binary";
// A function to run on the shard: the argument is the address of a heap std::function (post).
constexpr std::string_view command_call = "call";
// Presence events one shard keeps while inboxes are full (beyond: dropped, counted).
constexpr size_t presence_backlog_max = 65536;

// A system message (category WSE first, as wsed builds them: presence events) is never stamped
// and never given to queue groups.
bool system_message(std::string_view text) {
  return text.starts_with("{\"c\":\"WSE\"");
}
// A recovering request whose histories Redis has not answered by then is answered without.
constexpr uint64_t history_wait_max_ms = 15000;

// The history answer's bytes in a command frame: numbers one per line, then each message as
// its length on a line and its bytes.
std::string history_blob(const redis_history_request& q, const redis_history_answer& a) {
  std::string out;
  for (uint64_t v :
       {q.request, uint64_t(q.index), uint64_t(a.answered), uint64_t(a.has_history),
        uint64_t(a.epoch), a.next, uint64_t(a.recovered), uint64_t(a.messages.size())}) {
    out.append(std::to_string(v));
    out.push_back('\n');
  }
  for (std::string_view m : a.messages) {
    out.append(std::to_string(m.size()));
    out.push_back('\n');
    out.append(m);
  }
  return out;
}

bool read_number(std::string_view& text, uint64_t& v) {
  size_t nl = text.find('\n');
  if (nl == std::string_view::npos) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + nl, v);
  if (ec != std::errc() || end != text.data() + nl) return false;
  text.remove_prefix(nl + 1);
  return true;
}

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
  convert_payloads_ = handler_.reads_payload();
  verifier_ = std::move(opt_.verifier);
  sources_.cookie_name = opt_.cookie_name;
  sources_.query = opt_.allow_query_token ? auth::query_token::allowed : auth::query_token::refused;
  shards_.resize(std::max<uint32_t>(opt_.shards, 1));
  for (auto& p : shards_) p = std::make_unique<per_shard>();
  if (opt_.recovery) {
    recovery_ = std::make_unique<recovery_store>(opt_.recovery_limits);
    recover_all_ = opt_.recovery_topics.size() == 1 && opt_.recovery_topics[0] == "*";
  }
  if (opt_.presence) presence_ = std::make_unique<fanout::presence_registry>(opt_.presence_limits);
  if (!opt_.signing_key.empty())
    signing_key_ = std::make_shared<const std::string>(std::move(opt_.signing_key));
  opt_.signing_key.clear();
  shard_ptrs_ = std::make_unique<std::atomic<shard*>[]>(shards_.size());
}

bool wse_app::recoverable(std::string_view topic) const {
  if (!recovery_) return false;
  if (recover_all_) return true;
  for (const std::string& g : opt_.recovery_topics)
    if (auth::glob_match(g, topic)) return true;
  return false;
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

send_status wse_app::send_text(shard& s, conn_ref c, std::string_view text, bool clear) {
  per_shard& p = part(s);
  return send_out(s, c, p, state_of(p, c), proto::ws_opcode::text, text, clear);
}

send_status wse_app::send_out(shard& s, conn_ref c, per_shard& p, conn_state* st,
                              proto::ws_opcode opcode, std::string_view bytes, bool clear) {
  if (!st || !st->e2e || (clear && !p.in_e2e)) return s.send_message(c, opcode, as_bytes(bytes));
  return seal_and_send(s, c, p, *st, bytes);
}

send_status wse_app::seal_and_send(shard& s, conn_ref c, per_shard& p, const conn_state& st,
                                   std::string_view plain) {
  p.sealed.assign(e2e_prefix);
  if (!st.e2e->seal(plain, p.sealed)) {  // (OpenSSL out of memory: nothing goes in the clear)
    s.close(c, close_codes::internal_error, close_reason::internal_error);
    return send_status::dropped;
  }
  p.counts.e2e_encrypted.add();
  return s.send_message(c, proto::ws_opcode::binary, as_bytes(p.sealed), false);  // random bytes
}

send_status wse_app::send_shared(shard& s, conn_ref c, per_shard& p, const conn_state* st,
                                 const fanout::frame& f) {
  if (!st) st = state_of(p, c);
  if (!st || !st->e2e) return s.send_frame(c, f);
  return seal_and_send(s, c, p, *st, f.payload());
}

void wse_app::send_error(shard& s, conn_ref c, per_shard& p, std::string_view code,
                         std::string_view message, bool clear) {
  p.scratch.clear();
  proto::wse_build_error(p.scratch, code, message, wall_ms());
  send_text(s, c, p.scratch, clear);
}

void wse_app::refuse(shard& s, conn_ref c, per_shard& p, auth::verify_error why) {
  (why == auth::verify_error::no_token ? p.counts.auth_required : p.counts.auth_failed).add();
  std::string_view message =
      why == auth::verify_error::no_token ? "Authentication required" : auth::name_of(why);
  // The reason only: never the token (nor its claims).
  log::info("auth_rejected", "connection refused: " + std::string(message),
            {{"reason", auth::name_of(why)}, {"shard", s.index()}}, auth::name_of(why));
  send_error(s, c, p, auth::protocol_code_of(why), message);
  s.close(c, close_codes::unauthorized, close_reason::auth_failed);
}

void wse_app::on_open(shard& s, conn_ref c, const proto::http_request& request) {
  per_shard& p = part(s);
  shard_ptrs_[s.index()].store(&s, std::memory_order_release);
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
  st.acl.reset();
  st.e2e.reset();
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
    if (!who->acl.unrestricted() || !who->acl.publish.empty()) st.acl = shared_acl(p, who->acl);
  } else {
    st.user_id = anonymous_user;
  }
  st.authenticated = true;
  p.counts.auth_ok.add();
  std::vector<uint32_t>& same_user = p.users[st.user_id];
  st.user_pos = uint32_t(same_user.size());
  same_user.push_back(c.slot);
  // Users are routed only by the bridge (a per-user send goes to every shard otherwise).
  if (same_user.size() == 1 && hub_ && bridge_)
    interest(hub_->router().add_user(s.index(), st.user_id), redis_interest::user, st.user_id);

  int64_t now = wall_ms();
  uuid7(p, now, st.connection_id);
  if (instance_id_.size() == 8) {  // the id's last 8 hex digits name this instance
    std::memcpy(st.connection_id + sizeof st.connection_id - 8, instance_id_.data(), 8);
  }
  directory_add(s.index(), c, std::string_view(st.connection_id, sizeof st.connection_id));
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
  user.authenticated_by_token = who.has_value();
  user.msgpack = st.msgpack;
  user.request = &request;

  // ?topics=a,b: subscribed at connect, answered like a client's subscribe.
  if (auto listed = auth::query_value(request.query, "topics")) {
    size_t over = 0;
    std::vector<std::string> names = proto::wse_split_topics(*listed, &over);
    std::vector<std::string_view> views(names.begin(), names.end());
    apply_subscription(s, c, p, st, true, views);
    reply_subscription(s, c, p, "subscribe");
  }
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
    send_error(s, c, p, "RATE_LIMITED", message, true);
  }
  if (++st.dropped > opt_.inbound_burst)
    s.close(c, close_codes::rate_limited, close_reason::rate_limited);
  return false;
}

void wse_app::on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                         std::span<const uint8_t> payload) {
  per_shard& p = part(s);
  conn_state* st = state_of(p, c);
  if (!st || !st->authenticated) {
    p.counts.before_auth.add();
    utf8_or_close(s, c, payload);
    return;
  }
  if (!admit(s, c, p, *st)) return (void)utf8_or_close(s, c, payload);
  if (opcode == proto::ws_opcode::text)
    return on_json(s, c, p, *st, as_text(payload), proto::wse_input_padding::padded);
  if (payload.size() >= e2e_prefix.size() && as_text(payload).starts_with(e2e_prefix))
    return on_encrypted(s, c, p, *st, payload.subspan(e2e_prefix.size()));
  on_binary(s, c, p, *st, payload);
}

void wse_app::on_encrypted(shard& s, conn_ref c, per_shard& p, conn_state& st,
                           std::span<const uint8_t> sealed) {
  if (!st.e2e) {
    p.counts.e2e_unkeyed.add();
    p.counts.invalid.add();
    return send_error(s, c, p, "INVALID_MESSAGE",
                      opt_.e2e ? "E: frame before a key exchange (client_hello with "
                                 "features.encryption and encryption_public_key)"
                               : "E: frame: end-to-end encryption is off on this server");
  }
  if (!st.e2e->open(as_text(sealed), p.opened)) {  // (also: under 28 bytes)
    p.counts.e2e_decrypt_failed.add();
    s.close(c, close_codes::decrypt_failed, close_reason::app_close, "decrypt_failed");
    return;
  }
  p.counts.e2e_decrypted.add();
  // Handled as any message; its answers are sealed too (PONG included).
  p.in_e2e = true;
  std::string_view plain = p.opened;
  const bool json = plain.starts_with('{') || plain.starts_with("WSE{") ||
                    plain.starts_with("U{") || plain.starts_with("S{");
  if (!json) {  // M:, C:, raw MessagePack (or nothing valid: INVALID_MESSAGE, sealed)
    on_binary(s, c, p, st, as_bytes(plain));
  } else {
    if (p.opened.capacity() < p.opened.size() + proto::wse_json_padding_bytes)
      p.opened.reserve(p.opened.size() + proto::wse_json_padding_bytes);
    on_json(s, c, p, st, p.opened, proto::wse_input_padding::padded);
  }
  p.in_e2e = false;
}

void wse_app::on_binary(shard& s, conn_ref c, per_shard& p, conn_state& st_ref,
                        std::span<const uint8_t> payload) {
  conn_state* st = &st_ref;
  const proto::ws_opcode opcode = proto::ws_opcode::binary;
  // Binary: M: + MessagePack, raw MessagePack, or C: + zlib; decoded to JSON text first.
  proto::wse_msgpack_envelope env;
  // A handler that never reads payloads gets MessagePack validated, not converted (the
  // envelope is all that is needed to route it); protocol messages are then decoded again below.
  proto::wse_json_output output =
      convert_payloads_ ? proto::wse_json_output::full : proto::wse_json_output::envelope_only;
  proto::wse_error err =
      p.codec.decode_inbound(payload, true, p.decoded, opt_.message_bytes_max, &env, output);
  if (err != proto::wse_error::none) {
    if (handler_.on_unparsed(wse_conn{&s, c}, opcode, payload)) return;
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
      return deliver(s, c, p, *st, env.type, env.has_category, env.category, payload_json,
                     p.decoded);
    }
  }
  if (output == proto::wse_json_output::envelope_only && p.decoded.empty() &&
      p.codec.decode_inbound(payload, true, p.decoded, opt_.message_bytes_max) !=
          proto::wse_error::none)
    return;  // cannot fail: the same input was just validated
  // The decoded JSON gets spare capacity (grown once, then kept) so it is parsed in place too.
  if (p.decoded.capacity() < p.decoded.size() + proto::wse_json_padding_bytes)
    p.decoded.reserve(p.decoded.size() + proto::wse_json_padding_bytes);
  on_json(s, c, p, *st, p.decoded, proto::wse_input_padding::padded);
}

bool wse_app::utf8_or_close(shard& s, conn_ref c, std::span<const uint8_t> text) {
  if (!s.payload_utf8_unchecked() || proto::valid_utf8(text)) return true;
  s.close(c, proto::close_code::invalid_payload, close_reason::invalid_utf8);
  return false;
}

void wse_app::deliver(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view type,
                      bool has_category, std::string_view category, std::string_view payload_json,
                      std::string_view json) {
  p.counts.app_messages.add();
  wse_app_message m;
  m.type = type;
  m.category = has_category ? category : proto::category_name(proto::category_of(type));
  m.payload_json = payload_json;
  m.user_id = st.user_id;
  m.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
  m.json = json;
  handler_.on_message(wse_conn{&s, c}, m);
}

void wse_app::on_json(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view text,
                      proto::wse_input_padding padding) {
  proto::wse_message msg;
  proto::wse_error err =
      p.parser.parse(text, msg, padding,
                     convert_payloads_ ? proto::wse_payload_text::always
                                       : proto::wse_payload_text::never_for_application);
  if (err != proto::wse_error::none) {
    // simdjson refused it: for a text message the shard left unchecked, invalid UTF-8 is the
    // WebSocket's 1007, not an application error.
    if (err == proto::wse_error::malformed_json && !utf8_or_close(s, c, as_bytes(text))) return;
    if (err == proto::wse_error::missing_type || err == proto::wse_error::type_not_string) {
      std::string_view object = text;
      if (object.starts_with("WSE{"))
        object.remove_prefix(3);
      else if (object.starts_with("U{") || object.starts_with("S{"))
        object.remove_prefix(1);
      if (handler_.on_untyped(wse_conn{&s, c}, object)) {
        p.counts.app_messages.add();
        return;
      }
    } else if (padding == proto::wse_input_padding::padded && text.data() != p.decoded.data() &&
               handler_.on_unparsed(wse_conn{&s, c}, proto::ws_opcode::text, as_bytes(text))) {
      return;  // (a text frame's own bytes; decoded binary that fails is not text)
    }
    p.counts.invalid.add();
    return send_error(s, c, p, "INVALID_MESSAGE", proto::to_string(err));
  }
  switch (msg.kind) {
    case proto::wse_kind::ping:
      p.counts.pings.add();
      p.scratch.clear();
      proto::wse_build_pong(p.scratch, msg.client_timestamp_ms, wall_ms());
      send_text(s, c, p.scratch, true);
      return;
    case proto::wse_kind::pong:
      p.counts.pongs.add();
      return;
    case proto::wse_kind::client_hello:
      return client_hello(s, c, p, st, msg);
    case proto::wse_kind::subscription: {
      p.counts.subscriptions.add();
      if (msg.subscription.topics_over_max) {  // refused whole: never half applied
        p.counts.invalid.add();
        return send_error(s, c, p, "INVALID_MESSAGE",
                          "subscription_update: more than " +
                              std::to_string(proto::wse_subscription_topics_max) +
                              " topics in one request");
      }
      if (!msg.subscription.action_valid || !msg.subscription.topics_is_array) {
        p.counts.invalid.add();
        return send_error(s, c, p, "INVALID_MESSAGE",
                          "subscription_update: p.action must be \"subscribe\" or "
                          "\"unsubscribe\" and p.topics an array of strings");
      }
      // Invalid names (a non-string element has an empty one) are refused one by one by
      // apply_subscription, with their reason in the reply; the rest are applied.
      std::vector<std::string_view> names;
      names.reserve(msg.subscription.topic_count);
      for (const proto::wse_topic& t : msg.subscription.list()) names.push_back(t.name);
      bool subscribing = msg.subscription.action == proto::wse_subscription_action::subscribe;
      if (msg.subscription.queue_group_invalid ||
          (subscribing && presence_ && msg.subscription.presence_invalid)) {
        p.counts.invalid.add();
        return send_error(s, c, p, "INVALID_MESSAGE",
                          msg.subscription.queue_group_invalid
                              ? "subscription_update: p.queue_group must be a string of 1 to " +
                                    std::to_string(proto::wse_queue_group_bytes_max) +
                                    " bytes without control characters"
                              : std::string("subscription_update: p.presence must be a JSON "
                                            "object"));
      }
      wse_subscribe_extras extras;
      extras.has_presence = subscribing && presence_ && msg.subscription.has_presence;
      extras.presence_json = msg.subscription.presence_json;
      extras.queue_group = msg.subscription.queue_group;
      apply_subscription(s, c, p, st, subscribing, names, extras);
      if (recovery_ && subscribing && msg.subscription.recover) {
        if (bridge_) return recover_remote(s, c, p, msg.subscription);
        recover_topics(s, c, p, msg.subscription);
        return reply_subscription(s, c, p, msg.subscription.action_name, true);
      }
      reply_subscription(s, c, p, msg.subscription.action_name);
      return;
    }
    case proto::wse_kind::publish:
      return on_client_publish(s, c, p, st, msg.publish);
    case proto::wse_kind::application:
      break;
  }
  deliver(s, c, p, st, msg.type, msg.has_category, msg.category,
          msg.has_payload ? msg.payload_json : std::string_view{},
          convert_payloads_ ? text.substr(std::min<size_t>(msg.legacy_prefix_bytes, text.size()))
                            : std::string_view{});
}

// client_hello -> server_hello. With --e2e and features.encryption, the first such hello keys the
// connection (its server_hello, with the server's point, still in the clear: the client needs
// it to derive the key); a bad point gets KEY_EXCHANGE_FAILED then encryption:false. A keyed
// connection is never re-keyed: a later hello is answered with the same point, sealed.
void wse_app::client_hello(shard& s, conn_ref c, per_shard& p, conn_state& st,
                           const proto::wse_message& msg) {
  p.counts.hellos.add();
  std::unique_ptr<auth::e2e_cipher> keyed;
  if (opt_.e2e && msg.hello.encryption && !st.e2e) {
    std::string point;
    if (auth::base64_decode(msg.hello.encryption_public_key, point)) {
      unsigned char own[auth::p256_point_bytes];
      keyed = auth::e2e_cipher::accept(point, own);
    }
    if (!keyed) {  // (the connection is not keyed: in the clear)
      p.counts.e2e_key_failed.add();
      send_text(s, c, key_exchange_failed);
    }
  }
  std::array<proto::wse_feature, wse_feature_count> features = features_;
  auth::e2e_cipher* cipher = keyed ? keyed.get() : st.e2e.get();
  for (proto::wse_feature& f : features)
    if (f.name == "encryption") f.enabled = cipher != nullptr;
  std::string point_b64;
  if (cipher) point_b64 = auth::base64_encode(cipher->own_point());
  const proto::wse_limit limits[] = {{"max_message_size", opt_.message_bytes_max}};
  proto::wse_server_hello hello;
  hello.connection_id = std::string_view(st.connection_id, sizeof st.connection_id);
  hello.features = features;
  hello.limits = limits;
  hello.ping_interval_ms = opt_.ping_interval_ms;
  hello.protocol_version = std::min<int64_t>(msg.hello.protocol_version, 2);
  hello.now_ms = wall_ms();
  hello.server_version = WSED_VERSION;
  hello.encryption_public_key = point_b64;
  p.scratch.clear();
  proto::wse_build_server_hello(p.scratch, hello);
  send_text(s, c, p.scratch);
  if (keyed) {
    st.e2e = std::move(keyed);
    p.counts.e2e_keyed.add();
  }
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
  if (std::shared_ptr<const std::string> key = signing_key(&p))
    if (append_signature(*key, payload_json.empty() ? "{}" : payload_json, p.scratch))
      p.counts.signed_messages.add();

  if (st->msgpack) {
    p.encoded.clear();
    if (p.codec.json_to_msgpack(p.scratch, p.encoded, true) == proto::wse_error::none) {
      p.counts.sends[size_t(wse_send_format::msgpack)].add();
      return send_out(s, conn.ref, p, st, proto::ws_opcode::binary, p.encoded);
    }
  } else if (opt_.compression_threshold_bytes && !st->e2e) {  // (sealed JSON is not C: first)
    p.encoded.clear();
    if (p.codec.compress(p.scratch, p.encoded, opt_.compression_threshold_bytes) ==
        proto::wse_compressed::yes) {
      p.counts.sends[size_t(wse_send_format::compressed)].add();
      return s.send_message(conn.ref, proto::ws_opcode::binary, as_bytes(p.encoded), false);
    }
  }
  p.counts.sends[size_t(wse_send_format::json)].add();
  return send_out(s, conn.ref, p, st, proto::ws_opcode::text, p.scratch);
}

std::shared_ptr<const std::string> wse_app::signing_key(per_shard* p) {
  if (!p) {
    std::lock_guard lock(signing_mu_);
    return signing_key_;
  }
  if (signing_version_.load(std::memory_order_acquire) != p->signing_version) {
    std::lock_guard lock(signing_mu_);
    p->signing_key = signing_key_;
    p->signing_version = signing_version_.load(std::memory_order_relaxed);
  }
  return p->signing_key;
}

void wse_app::set_signing_key(std::string key) {
  auto made = key.empty() ? nullptr : std::make_shared<const std::string>(std::move(key));
  std::lock_guard lock(signing_mu_);
  signing_key_ = std::move(made);
  signing_version_.fetch_add(1, std::memory_order_release);
}

bool wse_app::sign(per_shard* p, std::string& json) {
  std::shared_ptr<const std::string> key = signing_key(p);
  if (!key) return true;
  bool escaped = false;
  std::string_view payload = proto::wse_top_level_value(json, "p", escaped);
  bool forged = escaped || !proto::wse_top_level_value(json, "sig", escaped).empty();
  if (forged || !append_signature(*key, payload, json)) return false;
  if (p)
    p->counts.signed_messages.add();
  else
    signed_off_shard_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool wse_app::append_signature(const std::string& key, std::string_view payload_json,
                               std::string& json) {
  const size_t close = json.rfind('}');
  char sig[auth::signature_hex_chars];
  if (close == std::string::npos || !auth::sign_message(key, payload_json, sig)) return false;
  constexpr std::string_view field = ",\"sig\":\"";
  std::string_view tail = std::string_view(sig, sizeof sig);
  json.insert(close, std::string(field).append(tail).append("\""));
  return true;
}

// Every --ping-interval, one server ping to each authenticated connection of this shard: the
// frame text is built once per pass (the same server_time for all).
// Connections whose tokens carry the same wse_topics share one ACL (tokens are minted from few
// shapes): one per distinct shape per shard, dropped once no connection holds it.
std::shared_ptr<const auth::topic_acl> wse_app::shared_acl(per_shard& p,
                                                           const auth::topic_acl& acl) {
  std::string& key = p.acl_key;
  key.clear();
  for (const auto* list : {&acl.allow, &acl.deny, &acl.publish}) {
    for (const std::string& g : *list) {
      key += g;
      key.push_back('\n');  // globs hold no control characters
    }
    key.push_back('\x01');
  }
  auto it = p.acls.find(key);
  if (it != p.acls.end()) return it->second;
  if (p.acls.size() >= acl_shapes_max) {  // drop the shapes no connection holds any more
    std::erase_if(p.acls, [](const auto& kv) { return kv.second.use_count() == 1; });
    if (p.acls.size() >= acl_shapes_max) return std::make_shared<const auth::topic_acl>(acl);
  }
  auto made = std::make_shared<const auth::topic_acl>(acl);
  p.acls.emplace(key, made);
  return made;
}

void wse_app::on_tick(shard& s, uint64_t now_ms) {
  handler_.on_tick(s.index());
  if (!part(s).busy_members.empty()) check_busy_members(s, part(s));
  if (!part(s).presence_backlog.empty()) flush_presence_backlog(s, part(s));
  if (recovery_) {
    per_shard& pr = part(s);
    if (now_ms >= pr.next_expire_ms) {  // once a second
      pr.next_expire_ms = now_ms + 1000;
      uint64_t now = mono_ms();
      if (s.index() == 0) recovery_->expire(now);  // the TTL sweep (writes sweep too)
      std::vector<uint64_t> late;  // histories Redis never answered (a lost delivery)
      for (auto& [id, r] : pr.pending)
        if (now >= r.started_ms + history_wait_max_ms) late.push_back(id);
      for (uint64_t id : late) finish_recovery(s, pr, id);
    }
  }
  if (opt_.ping_interval_ms == 0) return;
  per_shard& p = part(s);
  // Spread over the interval: each tick pings the slots the round's elapsed share reaches (slot
  // k of n at k/n of the round), so every connection is pinged once per interval and a shard
  // never pings all of its connections in one pass (16,700 at once, 100,000 over six shards,
  // held their loops for seconds on two shared cores: clients' PONGs waited behind them). The
  // first round begins one interval after the shard's first tick, as the one-pass ping did.
  if (p.ping_round_ms == 0) p.ping_round_ms = now_ms + opt_.ping_interval_ms;
  if (now_ms < p.ping_round_ms) return;
  uint64_t elapsed_ms = now_ms - p.ping_round_ms;
  size_t upto = elapsed_ms >= opt_.ping_interval_ms
                    ? p.conns.size()
                    : std::min(p.conns.size(),
                               size_t(p.conns.size() * elapsed_ms / opt_.ping_interval_ms) + 1);
  size_t from = std::min<size_t>(p.ping_cursor, upto);
  p.ping_cursor = uint32_t(upto);
  if (elapsed_ms >= opt_.ping_interval_ms) {
    p.ping_round_ms = now_ms;
    p.ping_cursor = 0;
  }
  if (from == upto) return;
  p.scratch.clear();
  proto::wse_build_server_ping(p.scratch, wall_ms());
  // One shared frame for the slice, copied into each connection's queue.
  fanout::frame* f = hub_ ? hub_->pool(s.index()).make_text({}, p.scratch) : nullptr;
  for (size_t i = from; i < upto; ++i) {
    uint32_t slot = uint32_t(i);
    const conn_state& st = p.conns[slot];
    if (!st.live || !st.authenticated) continue;
    if (f)
      s.send_frame(conn_ref{slot, st.generation}, *f);
    else
      send_text(s, conn_ref{slot, st.generation}, p.scratch, true);
    p.counts.server_pings.add();
  }
  if (f) fanout::release(f);
}

void wse_app::on_close(shard& s, conn_ref c) {
  per_shard& p = part(s);
  if (conn_state* st = state_of(p, c)) {
    bool was_connected = st->authenticated;
    if (was_connected) {
      leave_all(s, p, c.slot);
      for (auto it = p.marks.begin(); it != p.marks.end();) {
        std::erase_if(it->second, [&](const auto& m) { return m.slot == c.slot; });
        it = it->second.empty() ? p.marks.erase(it) : std::next(it);
      }
      for (auto it = p.pending.begin(); it != p.pending.end();) {
        if (it->second.slot != c.slot) {
          ++it;
          continue;
        }
        if (it->second.done) it->second.done(wse_recovery_result{});  // gone: found false
        for (fanout::frame* f : it->second.held) fanout::release(f);
        for (auto& t : it->second.topics) {
          if (t.history) fanout::release(t.history);
          auto h = p.holds.find(t.topic);
          if (h == p.holds.end()) continue;
          std::erase_if(h->second, [&](const auto& e) { return e.first == c.slot; });
          if (h->second.empty()) p.holds.erase(h);
        }
        it = p.pending.erase(it);
      }
      directory_remove(std::string_view(st->connection_id, sizeof st->connection_id));
      handler_.on_disconnect(wse_conn{&s, c});  // ids_of still answers during the call
    }
    st->live = false;
    st->qg_busy = false;
    st->authenticated = false;
    st->user_id.clear();
    st->acl.reset();
    if (st->e2e) {
      st->e2e.reset();
      p.counts.e2e_keyed.sub();
    }
  }
}

// Every subscription of a connection (the router told of patterns left without a local
// subscriber): O(its subscriptions).
void wse_app::drop_subscriptions(shard& s, per_shard& p, uint32_t slot) {
  p.topics.unsubscribe_all(slot, [&](std::string_view pattern, bool was_last) {
    p.counts.held.sub();
    if (was_last && hub_)
      interest(hub_->router().remove(s.index(), pattern), redis_interest::pattern, pattern);
  });
}

// Every subscription and the user index entry of a closing connection: O(its subscriptions).
void wse_app::leave_all(shard& s, per_shard& p, uint32_t slot) {
  conn_state& st = p.conns[slot];
  drop_subscriptions(s, p, slot);
  leave_groups(s, st, slot, {}, {});
  while (!st.presence_topics.empty()) {
    std::string topic = st.presence_topics.back();
    presence_leave(s, p, st, slot, topic);
  }
  auto it = p.users.find(st.user_id);
  if (it == p.users.end()) return;
  std::vector<uint32_t>& slots = it->second;
  ENGINE_ASSERT(st.user_pos < slots.size() && slots[st.user_pos] == slot);
  uint32_t moved = slots.back();
  slots[st.user_pos] = moved;
  p.conns[moved].user_pos = st.user_pos;
  slots.pop_back();
  if (!slots.empty()) return;
  if (hub_ && bridge_)
    interest(hub_->router().remove_user(s.index(), st.user_id), redis_interest::user, st.user_id);
  p.users.erase(it);
}

void wse_app::apply_subscription(shard& s, conn_ref c, per_shard& p, conn_state& st,
                                 bool subscribing, std::span<const std::string_view> topics,
                                 const wse_subscribe_extras& extras) {
  p.ok_topics.clear();
  p.failed_topics.clear();
  p.failed_reasons.clear();
  auto refuse = [&](std::string_view topic, subscribe_outcome why) {
    p.counts.subscribe[size_t(why)].add();
    p.failed_topics.push_back(topic);
    p.failed_reasons.push_back(reason_of(why));
  };
  // A topic named twice in one request is answered once (the reply's errors map is a JSON
  // object: one key per topic).
  const bool dedupe = topics.size() > 1;
  if (dedupe) p.seen_topics.clear();
  const std::string_view group = extras.queue_group;
  const bool with_presence = subscribing && presence_ && extras.has_presence;
  const bool data_too_large =
      with_presence && extras.presence_json.size() > presence_->limits().data_bytes_max;
  for (std::string_view topic : topics) {
    if (dedupe && !p.seen_topics.insert(topic).second) continue;
    if (!proto::wse_topic_valid(topic)) {
      refuse(topic, subscribe_outcome::invalid_topic);
      continue;
    }
    if (!subscribing) {
      p.counts.unsubscribe.add();
      if (group.empty()) {
        fanout::unsubscribe_result r = p.topics.unsubscribe(c.slot, topic);
        if (r != fanout::unsubscribe_result::not_subscribed) p.counts.held.sub();
        if (r == fanout::unsubscribe_result::removed_last && hub_)
          interest(hub_->router().remove(s.index(), topic), redis_interest::pattern, topic);
      }
      leave_groups(s, st, c.slot, topic, group);
      if (presence_ && !p.topics.holds(c.slot, topic) &&
          std::none_of(st.groups.begin(), st.groups.end(),
                       [&](const auto& m) { return m.first == topic; }))
        presence_leave(s, p, st, c.slot, topic);
      p.ok_topics.push_back(topic);
      continue;
    }
    const bool exact = proto::wse_publish_topic_valid(topic);
    if ((with_presence || !group.empty()) && !exact) {
      refuse(topic, subscribe_outcome::exact_topic_required);
      continue;
    }
    if (st.acl && !st.acl->allows_subscription(topic)) {
      refuse(topic, subscribe_outcome::acl_denied);
      continue;
    }
    if (data_too_large && !extras.presence_optional) {
      p.counts.presence_refused_data.add();
      refuse(topic, subscribe_outcome::presence_data_too_large);
      continue;
    }
    const size_t held = p.topics.subscriptions_of(c.slot) + st.groups.size();
    bool added = false;  // this request made the subscription (undone if presence refuses)
    if (!group.empty()) {
      fanout::qg_member m{s.index(), c.slot, c.generation};
      bool member = std::any_of(st.groups.begin(), st.groups.end(), [&](const auto& g) {
        return g.first == topic && g.second == group;
      });
      if (!member) {
        if (held >= opt_.topics_per_connection_max) {
          s.count_limit(limit_kind::max_topics_per_connection);
          refuse(topic, subscribe_outcome::too_many_topics);
          continue;
        }
        queue_groups_.add(topic, group, m);
        if (st.qg_busy) queue_groups_.set_busy(topic, m, true);
        st.groups.emplace_back(std::string(topic), std::string(group));
        report_member(st, topic, group, true);
        added = true;
      }
    } else {
      fanout::subscribe_result r = p.topics.subscribe(c.slot, topic);
      if (r != fanout::subscribe_result::already) {
        if (held >= opt_.topics_per_connection_max) {
          // Over the cap: undone (the router was not told yet).
          p.topics.unsubscribe(c.slot, topic);
          s.count_limit(limit_kind::max_topics_per_connection);
          refuse(topic, subscribe_outcome::too_many_topics);
          continue;
        }
        p.counts.held.add();
        if (r == fanout::subscribe_result::added_first && hub_)
          interest(hub_->router().add(s.index(), topic), redis_interest::pattern, topic);
        added = true;
      }
    }
    if (with_presence && data_too_large) {  // presence_optional: subscribed, not present
      p.counts.presence_refused_data.add();
    } else if (with_presence && !presence_join(s, p, st, c.slot, topic, extras.presence_json) &&
               !extras.presence_optional) {
      if (added && !group.empty()) {
        leave_groups(s, st, c.slot, topic, group);
      } else if (added) {
        p.counts.held.sub();
        if (p.topics.unsubscribe(c.slot, topic) == fanout::unsubscribe_result::removed_last && hub_)
          interest(hub_->router().remove(s.index(), topic), redis_interest::pattern, topic);
      }
      refuse(topic, subscribe_outcome::presence_full);
      continue;
    }
    p.counts.subscribe[size_t(subscribe_outcome::ok)].add();
    p.ok_topics.push_back(topic);
  }
}

// Presence (PROTOCOL.md "Presence"): one entry per user and topic; the events go to the topic's
// subscribers as publications (never stamped, never to queue groups: system_message).
bool wse_app::presence_join(shard& s, per_shard& p, conn_state& st, uint32_t slot,
                            std::string_view topic, std::string_view data) {
  fanout::presence_change r = presence_->join(topic, st.user_id, presence_key(s, slot), data);
  if (r == fanout::presence_change::too_many_members ||
      r == fanout::presence_change::data_too_large) {
    (r == fanout::presence_change::too_many_members ? p.counts.presence_refused_full
                                                    : p.counts.presence_refused_data)
        .add();
    return false;
  }
  if (std::find(st.presence_topics.begin(), st.presence_topics.end(), topic) ==
      st.presence_topics.end())
    st.presence_topics.emplace_back(topic);
  report_presence(topic, st.user_id);  // a connection more, or new data
  if (r == fanout::presence_change::joined)
    presence_event(s, p, "presence_join", topic, st.user_id, data);
  else if (r == fanout::presence_change::updated)
    presence_event(s, p, "presence_update", topic, st.user_id, data);
  return true;
}

void wse_app::presence_leave(shard& s, per_shard& p, conn_state& st, uint32_t slot,
                             std::string_view topic) {
  auto at = std::find(st.presence_topics.begin(), st.presence_topics.end(), topic);
  if (at == st.presence_topics.end()) return;
  std::string name = std::move(*at);
  *at = std::move(st.presence_topics.back());
  st.presence_topics.pop_back();
  std::string data;
  fanout::presence_change r = presence_->leave(name, st.user_id, presence_key(s, slot), &data);
  if (r != fanout::presence_change::not_member) report_presence(name, st.user_id);
  if (r == fanout::presence_change::left)
    presence_event(s, p, "presence_leave", name, st.user_id, data);
}

void wse_app::report_presence(std::string_view topic, std::string_view user) {
  if (bridge_ && bridge_->presence_scripts())
    bridge_->presence_changed(topic, user);  // the bridge reads the state when it writes it
}

void wse_app::presence_answer(const redis_presence_query& q, const redis_presence_answer& a) {
  std::string arg;
  if (!a.answered) {
    arg = "503\n{\"error\":\"redis unavailable\"}";
  } else {
    std::vector<std::pair<std::string_view, std::string_view>> data(a.data.begin(), a.data.end());
    std::sort(data.begin(), data.end());
    std::unordered_map<std::string_view, std::string_view> totals(a.totals.begin(), a.totals.end());
    uint64_t users = 0, connections = 0;
    std::string members = "{";
    for (const auto& [user, d] : data) {
      uint64_t n = 0;
      if (auto t = totals.find(user); t != totals.end())
        std::from_chars(t->second.data(), t->second.data() + t->second.size(), n);
      if (n == 0) continue;
      ++users;
      connections += n;
      if (members.size() > 1) members.push_back(',');
      proto::wse_append_json_string(members, user);
      members += ":{\"data\":";
      members.append(d);
      members += ",\"connections\":" + std::to_string(n) + "}";
    }
    members.push_back('}');
    arg = "200\n{";
    if (!q.stats) arg += "\"members\":" + members + ",";
    arg += "\"num_connections\":" + std::to_string(connections) +
           ",\"num_users\":" + std::to_string(users);
    if (!q.stats) {
      arg += ",\"topic\":";
      proto::wse_append_json_string(arg, q.topic);
    }
    arg.push_back('}');
  }
  // Lost when the shard's inbox is full: the handshake timeout then closes the request.
  push_command(q.shard, conn_ref{q.slot, q.generation}, command_http_answer, arg);
}

void wse_app::presence_update(shard& s, per_shard& p, conn_state& st, uint32_t slot,
                              std::string_view data) {
  for (const std::string& topic : st.presence_topics) {
    fanout::presence_change r = presence_->update(topic, st.user_id, presence_key(s, slot), data);
    if (r == fanout::presence_change::updated) {
      report_presence(topic, st.user_id);
      presence_event(s, p, "presence_update", topic, st.user_id, data);
    } else if (r == fanout::presence_change::data_too_large)
      p.counts.presence_refused_data.add();
  }
}

void wse_app::presence_event(shard& s, per_shard& p, std::string_view type, std::string_view topic,
                             std::string_view user, std::string_view data) {
  (type == "presence_join"    ? p.counts.presence_joins
   : type == "presence_leave" ? p.counts.presence_leaves
                              : p.counts.presence_updates)
      .add();
  handler_.on_presence(type, topic, user, data.empty() ? "{}" : data);
  if (bridge_ && bridge_->presence_scripts()) return;  // Redis's script sends it, once
  p.presence_event.clear();
  proto::wse_build_presence_event(p.presence_event, type, topic, user, data.empty() ? "{}" : data);
  // A full inbox (many closes at once: each leave is an event) refuses it whole (no shard got
  // it): it waits, in order, and the newer ones behind it.
  if (p.presence_backlog.empty() &&
      route(&s, fanout::delivery_kind::topic, topic, p.presence_event) != publish_status::busy)
    return;
  if (p.presence_backlog.size() >= presence_backlog_max) {
    p.counts.presence_dropped.add();
    return;
  }
  p.presence_backlog.emplace_back(std::string(topic), p.presence_event);
}

void wse_app::flush_presence_backlog(shard& s, per_shard& p) {
  while (!p.presence_backlog.empty()) {
    auto& [topic, event] = p.presence_backlog.front();
    if (route(&s, fanout::delivery_kind::topic, topic, event) == publish_status::busy) return;
    p.presence_backlog.pop_front();
  }
}

void wse_app::reply_subscription(shard& s, conn_ref c, per_shard& p, std::string_view action,
                                 bool with_recovery) {
  p.scratch.clear();
  proto::wse_recovery_reply rec{};
  if (with_recovery) {
    rec.recoverable = false;
    rec.recovered = !p.recovery.empty();
    for (const proto::wse_topic_recovery& t : p.recovery) {
      rec.recoverable = rec.recoverable || t.recoverable;
      rec.recovered = rec.recovered && t.recovered;
    }
    rec.topics = p.recovery;
  }
  proto::wse_build_subscription_reply(p.scratch, action, p.ok_topics, p.failed_topics,
                                      p.failed_reasons, with_recovery ? &rec : nullptr);
  send_text(s, c, p.scratch);
}

// After apply_subscription: every topic of the request gets its entry in the reply's recovery
// map (ACL-denied, refused and glob topics as "no history"), and each subscribed recoverable
// topic whose position the client gave has its backlog queued now, before the reply and before
// any live frame still in the inbox (those are then skipped up to the replayed offset).
void wse_app::recover_topics(shard& s, conn_ref c, per_shard& p,
                             const proto::wse_subscription& sub) {
  p.recovery.clear();
  uint64_t now = mono_ms();
  uint32_t generation = c.generation;
  auto add = [&](std::string_view topic, const recovery_answer& a) { answered(p, c, topic, a); };
  for (std::string_view topic : p.ok_topics) {
    if (!proto::wse_publish_topic_valid(topic) || !recoverable(topic)) {
      add(topic, recovery_answer{});  // a glob, or a topic kept on the plain path
      continue;
    }
    recovery_answer a =
        recovery_->replay(topic, position_in(sub, topic), now, [&](fanout::frame* f) {
          return send_shared(s, conn_ref{c.slot, generation}, p, nullptr, *f) ==
                 send_status::queued;
        });
    p.counts.replayed.add(a.count);
    add(topic, a);
  }
  for (std::string_view topic : p.failed_topics)
    if (proto::wse_topic_valid(topic)) add(topic, recovery_answer{});
}

// One topic's answer: counted, into the reply's recovery map (p.recovery), and with a history
// a mark: frames of the topic still in the inbox up to a.offset the client has (or was just
// given) already.
void wse_app::answered(per_shard& p, conn_ref c, std::string_view topic, const recovery_answer& a) {
  (a.recovered     ? p.counts.recover_recovered
   : a.has_history ? p.counts.recover_not_recovered
                   : p.counts.recover_no_history)
      .add();
  if (a.has_history) {
    auto at = p.marks.find(topic);
    if (at == p.marks.end()) at = p.marks.try_emplace(std::string(topic)).first;
    std::erase_if(at->second, [&](const auto& m) { return m.slot == c.slot; });
    at->second.push_back({c.slot, c.generation, a.epoch, a.offset});
  }
  proto::wse_topic_recovery t{};
  t.topic = topic;
  t.has_epoch = a.has_history;
  t.epoch = a.epoch;
  t.offset = a.offset;
  t.recoverable = a.has_history;
  t.recovered = a.recovered;
  t.count = a.count;
  p.recovery.push_back(t);
}

void wse_app::on_client_publish(shard& s, conn_ref c, per_shard& p, conn_state& st,
                                const proto::wse_publish& pub) {
  if (!pub.topic_valid) {  // proto::wse_publish_topic_valid: concrete, not a glob
    p.counts.publish_invalid.add();
    return send_error(s, c, p, "INVALID_TOPIC", "publish: p.topic must be a concrete topic");
  }
  if (!st.acl || !st.acl->allows_publish(pub.topic)) {
    p.counts.publish_denied.add();
    return send_error(s, c, p, "PUBLISH_DENIED",
                      "the token's wse_topics.publish does not allow this topic");
  }
  if (!pub.message_is_object) {
    p.counts.publish_invalid.add();
    return send_error(s, c, p, "INVALID_MESSAGE", "publish: p.message must be a JSON object");
  }
  // A client must not make other clients see a system message (server_ready, error, a
  // subscription reply...): category WSE, stated or implied by the type, is the server's alone.
  proto::wse_message inner;
  if (p.framer.parse(pub.message_json, inner) != proto::wse_error::none ||
      (inner.has_category ? inner.category
                          : proto::category_name(proto::category_of(inner.type))) == "WSE") {
    p.counts.publish_invalid.add();
    return send_error(s, c, p, "INVALID_MESSAGE",
                      "publish: p.message must not be a system (category WSE) message");
  }
  switch (route(&s, fanout::delivery_kind::topic, pub.topic, pub.message_json)) {
    case publish_status::published:
      p.counts.publish_ok.add();
      return;
    case publish_status::busy:
      p.counts.publish_busy.add();
      return send_error(s, c, p, "SERVER_BUSY", "a shard's inbox is full: publish again later");
    case publish_status::invalid:
      p.counts.publish_invalid.add();
      return send_error(s, c, p, "INVALID_MESSAGE",
                        "publish: p.message must be a JSON object (on a recoverable topic "
                        "without top-level tp, e, o)");
  }
}

publish_status wse_app::route(shard* s, fanout::delivery_kind kind, std::string_view key,
                              std::string_view json, uint64_t* wakes, bool from_redis,
                              bool local_only) {
  if (!hub_) return publish_status::busy;
  // The publication with its "c" (parsed once, on the calling thread).
  thread_local proto::wse_envelope_parser external_parser;
  thread_local std::string external_text;
  per_shard* p = s ? &part(*s) : nullptr;
  proto::wse_envelope_parser& parser = p ? p->framer : external_parser;
  std::string& text = p ? p->publication : external_text;
  text.clear();
  if (parser.ensure_category(json, text) != proto::wse_error::none) return publish_status::invalid;
  // Signed once here, where it is framed (from Redis: as the publishing instance signed it).
  if (!from_redis && !sign(p, text)) return publish_status::invalid;
  const bool system = kind == fanout::delivery_kind::topic && system_message(text);
  const bool groups = kind == fanout::delivery_kind::topic && queue_groups_.any() && !system;
  if (kind == fanout::delivery_kind::topic && !system && recoverable(key) &&
      !(local_only && bridge_)) {
    // Its own tp/e/o would override the stamp for the clients (a forged position).
    if (!from_redis && proto::wse_has_stamp_keys(text)) return publish_status::invalid;
    if (!bridge_) return route_recoverable(s, key, text, wakes);
    if (!from_redis) return route_sequenced(s, key, text, wakes);
    std::string_view stamped_topic;
    uint32_t epoch = 0;
    uint64_t offset = 0;
    if (proto::wse_parse_recovery_stamp(json, stamped_topic, epoch, offset))
      return route_stamped(key, json, text, stamped_topic, epoch, offset, wakes);
    // Unstamped (a backend's raw PUBLISH): delivered as any publication, not recoverable.
  }
  fanout::frame* f =
      s ? hub_->pool(s->index()).make_text(key, text) : fanout::make_text_frame(key, text);
  if (!f) return publish_status::busy;
  uint32_t producer = s ? s->index() : hub_->external_producer();
  route_result r = hub_->route(kind, producer, f, wakes);
  if (groups && r.ok()) {
    if (!bridge_ || !bridge_->queue_group_script() || local_only)
      pick_members(f, producer);  // (scripting refused: each instance picks what it delivers)
    else if (from_redis)          // (a local publication is counted when Redis sends it back)
      cluster_pick(key, f);
  }
  // Other instances get it through Redis once every local shard took it (a busy answer makes
  // the producer publish again: nothing may have gone out then).
  // A batch (wakes given) wakes the bridge once at its end, as it wakes the shards.
  if (bridge_ && !from_redis && !local_only && r.ok())
    bridge_->publish(producer, kind, f, wakes == nullptr);
  fanout::release(f);
  if (s) {
    s->count_published(kind == fanout::delivery_kind::topic       ? publish_kind::topic
                       : kind == fanout::delivery_kind::broadcast ? publish_kind::broadcast
                                                                  : publish_kind::user);
    if (r.shards_full) s->count_inbox_full(r.shards_full);
  }
  return r.ok() ? publish_status::published : publish_status::busy;
}

// One sequencer per topic (recovery_store::sequence): the stamp is given and the frame pushed
// into the inboxes under the store's lock, through the external lane (FIFO whoever publishes),
// so every shard receives a topic's frames in offset order.
publish_status wse_app::route_recoverable(shard* s, std::string_view topic, std::string_view text,
                                          uint64_t* wakes) {
  route_result r;
  bool ok = recovery_->sequence(topic, text, mono_ms(), [&](fanout::frame* f) {
    r = hub_->route(fanout::delivery_kind::topic, hub_->external_producer(), f, wakes);
    if (r.ok() && queue_groups_.any()) pick_members(f, hub_->external_producer());
    return r.ok();
  });
  if (s) {
    s->count_published(publish_kind::topic);
    if (r.shards_full) s->count_inbox_full(r.shards_full);
  }
  return ok ? publish_status::published : publish_status::busy;
}

// With Redis: Redis sequences it (redis_bridge::publish, sequenced) and every instance, this
// one too, delivers it when it comes back stamped (remote_publication).
publish_status wse_app::route_sequenced(shard* s, std::string_view topic, std::string_view text,
                                        uint64_t* wakes) {
  fanout::frame* f =
      s ? hub_->pool(s->index()).make_text(topic, text) : fanout::make_text_frame(topic, text);
  if (!f) return publish_status::busy;
  uint32_t producer = s ? s->index() : hub_->external_producer();
  bool ok = bridge_->publish(producer, fanout::delivery_kind::topic, f, wakes == nullptr, true);
  fanout::release(f);
  if (s) s->count_published(publish_kind::topic);
  return ok ? publish_status::published : publish_status::busy;
}

// A publication sequenced by Redis, as it came back: kept here as a cache and routed (the
// bridge thread is the one external producer: a topic's frames reach the inboxes in offset
// order). Only Redis's sequence script stamps: its tp is this channel's topic and its offsets
// stay below 2^53 (a Lua number); anything else was forged by whoever can PUBLISH.
// (The script's output already has its "c": a text that needed one was not stamped by it.)
publish_status wse_app::route_stamped(std::string_view topic, std::string_view json,
                                      std::string_view text, std::string_view stamped_topic,
                                      uint32_t epoch, uint64_t offset, uint64_t* wakes) {
  thread_local std::string escaped;
  escaped.clear();
  proto::wse_append_json_string(escaped, topic);
  if (offset >= (uint64_t{1} << 53) || text != json ||
      std::string_view(escaped).substr(1, escaped.size() - 2) != stamped_topic)
    return publish_status::invalid;
  fanout::frame* f = fanout::make_text_frame(topic, text);
  if (!f) return publish_status::busy;
  bool ok = recovery_->append_stamped(topic, f, epoch, offset, mono_ms(), [&](fanout::frame* g) {
    bool routed =
        hub_->route(fanout::delivery_kind::topic, hub_->external_producer(), g, wakes).ok();
    if (routed && bridge_->queue_group_script())
      cluster_pick(topic, g);
    else if (routed && queue_groups_.any())
      pick_members(g, hub_->external_producer());
    return routed;
  });
  fanout::release(f);
  return ok ? publish_status::published : publish_status::busy;
}

// Queue groups (PROTOCOL.md "Queue groups"): one member of each group of f's topic, round robin,
// skipping busy members (check_busy_members) and, for a shard publishing, members whose shard's
// inbox has no room for it; the member's shard sends it (on_member_delivery).
void wse_app::pick_members(fanout::frame* f, uint32_t producer) {
  const bool own_lane = producer != hub_->external_producer();  // has_room: its lane's writer only
  queue_groups_.pick(
      f->key(),
      [&](const fanout::qg_member& m) {
        return !own_lane || hub_->inbox(m.shard).has_room(producer);
      },
      [&](std::string_view, const fanout::qg_member* m) {
        if (!m) {
          qg_no_member_.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        fanout::delivery d;
        d.kind = fanout::delivery_kind::member;
        d.arg = m->slot;
        d.arg2 = m->generation;
        d.f = f;
        if (!hub_->push(m->shard, producer, d))
          qg_inbox_full_.fetch_add(1, std::memory_order_relaxed);
      });
}

void wse_app::on_member_delivery(shard& s, per_shard& p, const fanout::delivery& d) {
  // Once per loop pass (and every tick): a member whose queue drained is picked again soon.
  if (!p.busy_members.empty() && p.busy_checked_ms != s.now_ms()) {
    p.busy_checked_ms = s.now_ms();
    check_busy_members(s, p);
  }
  conn_ref c{d.arg, d.arg2};
  conn_state* st = state_of(p, c);
  if (!st || !st->authenticated || send_shared(s, c, p, st, *d.f) != send_status::queued) {
    p.counts.qg_gone.add();  // closed (or closing, or over its cap) since it was picked
    return;
  }
  p.counts.qg_deliveries.add();
  if (st->qg_busy || s.queued_bytes(c) <= opt_.outbound_bytes_max / 2) return;
  st->qg_busy = true;
  p.counts.qg_busy.add();
  p.busy_members.push_back(c.slot);
  for (const auto& [topic, group] : st->groups)
    queue_groups_.set_busy(topic, fanout::qg_member{s.index(), c.slot, c.generation}, true);
}

// Every tick: a busy member whose queue drained under a quarter of the cap is picked again.
void wse_app::check_busy_members(shard& s, per_shard& p) {
  std::erase_if(p.busy_members, [&](uint32_t slot) {
    conn_state& st = p.conns[slot];
    if (!st.qg_busy) return true;
    conn_ref c{slot, st.generation};
    if (st.live && s.queued_bytes(c) > opt_.outbound_bytes_max / 4) return false;
    st.qg_busy = false;
    for (const auto& [topic, group] : st.groups)
      queue_groups_.set_busy(topic, fanout::qg_member{s.index(), slot, st.generation}, false);
    return true;
  });
}

// Leaves the queue groups of a connection on topic (every topic when empty), only `group` when
// given.
void wse_app::leave_groups(shard& s, conn_state& st, uint32_t slot, std::string_view topic,
                           std::string_view group) {
  std::erase_if(st.groups, [&](const std::pair<std::string, std::string>& m) {
    if ((!topic.empty() && m.first != topic) || (!group.empty() && m.second != group)) return false;
    queue_groups_.remove(m.first, m.second, fanout::qg_member{s.index(), slot, st.generation});
    report_member(st, m.first, m.second, false);
    return true;
  });
}

void wse_app::report_member(const conn_state& st, std::string_view topic, std::string_view group,
                            bool join) {
  if (!bridge_) return;
  std::string member(st.connection_id, sizeof st.connection_id);
  member.push_back('\t');
  member.append(group);
  bridge_->queue_group_member(topic, member, join);
}

void wse_app::queue_group_marker(std::string_view topic, std::string_view members) {
  std::vector<cluster_group> groups;
  bool mine = false;
  for (std::string_view line : split_lines(members)) {
    size_t a = line.find('\t');
    size_t b = a == std::string_view::npos ? a : line.find('\t', a + 1);
    if (b == std::string_view::npos) continue;
    std::string_view instance = line.substr(0, a), id = line.substr(a + 1, b - a - 1),
                     group = line.substr(b + 1);
    mine = mine || instance == instance_id_;
    auto g = std::find_if(groups.begin(), groups.end(),
                          [&](const cluster_group& e) { return e.name == group; });
    if (g == groups.end())
      g = groups.insert(groups.end(), cluster_group{std::string(group), {}, 0});
    g->members.emplace_back(std::string(instance), std::string(id));
  }
  std::lock_guard lock(cluster_mu_);
  auto at = cluster_groups_.find(topic);
  if (!mine) {  // nothing for this instance to deliver
    if (at != cluster_groups_.end()) cluster_groups_.erase(at);
  } else if (at != cluster_groups_.end()) {
    at->second = std::move(groups);
  } else {
    cluster_groups_.try_emplace(std::string(topic), std::move(groups));
  }
  cluster_views_.store(cluster_groups_.size(), std::memory_order_relaxed);
}

void wse_app::queue_groups_lost(std::string_view topic) {
  std::lock_guard lock(cluster_mu_);
  if (topic.empty()) {
    cluster_groups_.clear();
  } else if (auto at = cluster_groups_.find(topic); at != cluster_groups_.end()) {
    cluster_groups_.erase(at);
  }
  cluster_views_.store(cluster_groups_.size(), std::memory_order_relaxed);
}

void wse_app::own_publication(std::string_view topic, std::string_view json) {
  if (system_message(json)) return;  // as route: presence events are not counted
  {
    std::lock_guard lock(cluster_mu_);
    if (cluster_groups_.find(topic) == cluster_groups_.end()) return;
  }
  fanout::frame* f = fanout::make_text_frame(topic, json);  // as published: it has its "c"
  if (!f) return;
  cluster_pick(topic, f);
  fanout::release(f);
}

// Every instance with members counts the topic's publications from the same marker in the same
// order, so for each group they name the same member: only its instance delivers.
void wse_app::cluster_pick(std::string_view topic, fanout::frame* f) {
  if (!cluster_views_.load(std::memory_order_relaxed)) return;
  std::vector<std::pair<std::string_view, std::string_view>> mine;  // (group, connection id)
  std::unique_lock lock(cluster_mu_);
  auto at = cluster_groups_.find(topic);
  if (at == cluster_groups_.end()) return;
  for (cluster_group& g : at->second) {
    if (g.members.empty()) continue;
    const auto& [instance, id] = g.members[g.cursor++ % g.members.size()];
    if (instance == instance_id_) mine.emplace_back(g.name, id);
  }
  // Views into the map stay valid: only this thread (the bridge's) changes it.
  lock.unlock();
  for (const auto& [group, id] : mine) give_member(topic, group, id, f);
}

// The named member of this instance, or (gone, left the group, busy) another of its members of
// that group here, round robin; none: dropped and counted.
void wse_app::give_member(std::string_view topic, std::string_view group,
                          std::string_view connection_id, fanout::frame* f) {
  const uint32_t producer = hub_->external_producer();
  conn_location where{};
  bool found = directory_find(connection_id, where);
  fanout::qg_member m{where.shard, where.slot, where.generation};
  auto push = [&](const fanout::qg_member& to) {
    fanout::delivery d;
    d.kind = fanout::delivery_kind::member;
    d.arg = to.slot;
    d.arg2 = to.generation;
    d.f = f;
    if (!hub_->push(to.shard, producer, d)) qg_inbox_full_.fetch_add(1, std::memory_order_relaxed);
  };
  if (found && queue_groups_.state_of(topic, group, m) == fanout::queue_groups::member_state::ready)
    return push(m);
  bool given = false;
  queue_groups_.pick(
      topic, [](const fanout::qg_member&) { return true; },
      [&](std::string_view, const fanout::qg_member* other) {
        if (other) push(*other);
        given = other != nullptr;
      },
      group);
  if (!given) qg_no_member_.fetch_add(1, std::memory_order_relaxed);
}

std::string wse_app::presence_members(std::string_view topic) const {
  std::string out;
  if (presence_)
    presence_->members_json(topic, out);
  else
    out = "{}";
  return out;
}

fanout::presence_stats wse_app::presence_stats(std::string_view topic) const {
  return presence_ ? presence_->stats(topic) : fanout::presence_stats{};
}

std::string wse_app::queue_group_info(std::string_view topic) const {
  std::string out;
  queue_groups_.info_json(topic, out);
  return out;
}

publish_status wse_app::publish(std::string_view topic, std::string_view json) {
  if (!proto::wse_publish_topic_valid(topic)) return publish_status::invalid;
  return route(nullptr, fanout::delivery_kind::topic, topic, json);
}

publish_status wse_app::publish_local(std::string_view topic, std::string_view json) {
  if (!proto::wse_publish_topic_valid(topic)) return publish_status::invalid;
  return route(nullptr, fanout::delivery_kind::topic, topic, json, nullptr, false, true);
}

publish_status wse_app::broadcast_local(proto::ws_opcode opcode, std::string_view bytes) {
  if (!hub_) return publish_status::busy;
  if (opcode == proto::ws_opcode::text) {
    publish_status st =
        route(nullptr, fanout::delivery_kind::broadcast, {}, bytes, nullptr, false, true);
    if (st != publish_status::invalid) return st;  // else not a JSON object: verbatim
  }
  fanout::frame* f = opcode == proto::ws_opcode::text ? fanout::make_text_frame({}, bytes)
                                                      : fanout::make_binary_frame({}, bytes);
  if (!f) return publish_status::busy;
  route_result r = hub_->route(fanout::delivery_kind::broadcast, hub_->external_producer(), f);
  fanout::release(f);
  return r.ok() ? publish_status::published : publish_status::busy;
}

publish_status wse_app::broadcast(std::string_view json) {
  return route(nullptr, fanout::delivery_kind::broadcast, {}, json);
}

publish_status wse_app::send_to_user(std::string_view user_id, std::string_view json) {
  if (user_id.empty() || user_id.size() > proto::wse_publish_user_bytes_max)
    return publish_status::invalid;
  return route(nullptr, fanout::delivery_kind::user, user_id, json);
}

namespace {

// Topics one per line: the argument of a subscribe / unsubscribe command frame.
std::string topic_lines(std::span<const std::string_view> topics) {
  std::string lines;
  for (std::string_view t : topics) {
    if (t.find('\n') != std::string_view::npos) continue;  // not a topic (control character)
    lines.append(t);
    lines.push_back('\n');
  }
  return lines;
}

}  // namespace

bool wse_app::push_command(uint32_t shard_index, conn_ref c, std::string_view name,
                           std::string_view arg) {
  if (!hub_) return false;
  fanout::frame* f = fanout::make_text_frame(name, arg);
  if (!f) return false;
  fanout::delivery d;
  d.kind = fanout::delivery_kind::command;
  d.arg = c.slot;
  d.arg2 = c.generation;
  d.f = f;
  uint32_t me = current_shard_index();
  bool ok = hub_->push(shard_index, me < hub_->shards() ? me : hub_->external_producer(), d);
  fanout::release(f);
  return ok;
}

bool wse_app::command(wse_conn conn, std::string_view name,
                      std::span<const std::string_view> topics) {
  return conn.owner && push_command(conn.owner->index(), conn.ref, name, topic_lines(topics));
}

bool wse_app::subscribe(wse_conn conn, std::span<const std::string_view> topics) {
  return command(conn, command_subscribe, topics);
}

bool wse_app::unsubscribe(wse_conn conn, std::span<const std::string_view> topics) {
  return command(conn, command_unsubscribe, topics);
}

namespace {

// Empty: no group (a plain subscription).
bool group_name_valid(std::string_view group) {
  return group.empty() || proto::wse_queue_group_valid(group);
}

std::string subscribe_command(std::string_view group, std::string_view presence,
                              std::span<const std::string_view> topics) {
  std::string arg(group);
  arg.push_back('\n');
  arg.append(std::to_string(presence.size()));
  arg.push_back('\n');
  arg.append(presence);
  arg.append(topic_lines(topics));
  return arg;
}

// The other way: false when arg is not a subscribe_command (never, from this process).
bool parse_subscribe_command(std::string_view arg, wse_subscribe_extras& extras,
                             std::vector<std::string_view>& topics) {
  size_t nl = arg.find('\n');
  if (nl == std::string_view::npos) return false;
  extras.queue_group = arg.substr(0, nl);
  arg.remove_prefix(nl + 1);
  uint64_t bytes = 0;
  if (!read_number(arg, bytes) || bytes > arg.size()) return false;
  extras.has_presence = bytes > 0;
  extras.presence_json = arg.substr(0, bytes);
  topics = split_lines(arg.substr(bytes));
  return true;
}

}  // namespace

bool wse_app::subscribe(wse_conn conn, std::span<const std::string_view> topics,
                        const wse_subscribe_extras& extras) {
  thread_local proto::wse_envelope_parser checker;
  if (!group_name_valid(extras.queue_group)) return false;
  std::string_view data = extras.has_presence ? extras.presence_json : std::string_view{};
  if (extras.has_presence && checker.check_object(data) != proto::wse_error::none) return false;
  if (extras.has_presence && data.empty()) data = "{}";
  return conn.owner && push_command(conn.owner->index(), conn.ref, command_subscribe_ex,
                                    subscribe_command(extras.queue_group, data, topics));
}

bool wse_app::unsubscribe(wse_conn conn, std::span<const std::string_view> topics,
                          std::string_view queue_group) {
  if (!group_name_valid(queue_group)) return false;
  return conn.owner && push_command(conn.owner->index(), conn.ref, command_unsubscribe_ex,
                                    subscribe_command(queue_group, {}, topics));
}

bool wse_app::update_presence(wse_conn conn, std::string_view data_json) {
  thread_local proto::wse_envelope_parser checker;
  if (checker.check_object(data_json) != proto::wse_error::none) return false;
  return conn.owner && push_command(conn.owner->index(), conn.ref, command_presence, data_json);
}

uint64_t wse_app::subscription_count() const {
  uint64_t n = 0;
  for (const auto& p : shards_) n += p->counts.held.get();
  return n;
}

size_t wse_app::local_subscriber_count(shard& s, std::string_view topic) {
  return part(s).topics.subscriber_count(topic);
}

void wse_app::set_bridge(redis_bridge* bridge) {
  bridge_ = bridge;
  if (bridge) set_instance_id(bridge->instance_id());
}

void wse_app::set_instance_id(std::string_view id8) {
  instance_id_ = id8.size() == 8 ? std::string(id8) : std::string();
}

wse_app::ids wse_app::ids_of(wse_conn conn) {
  if (!conn.owner) return {};
  conn_state* st = state_of(part(*conn.owner), conn.ref);
  if (!st) return {};
  return {st->user_id, std::string_view(st->connection_id, sizeof st->connection_id)};
}

bool wse_app::ready() const {
  return !bridge_ || bridge_->ready();
}

void wse_app::directory_add(uint32_t shard_index, conn_ref c, std::string_view connection_id) {
  if (!bridge_ && opt_.api_key.empty() && !opt_.directory) return;  // nothing names connections
  directory_stripe& d = directory_[fanout::string_hash{}(connection_id) % directory_stripes];
  std::lock_guard lock(d.mu);
  auto [it, added] = d.map.insert_or_assign(std::string(connection_id),
                                            conn_location{shard_index, c.slot, c.generation});
  if (added) directory_size_.fetch_add(1, std::memory_order_relaxed);
}

bool wse_app::directory_find(std::string_view connection_id, conn_location& where) {
  directory_stripe& d = directory_[fanout::string_hash{}(connection_id) % directory_stripes];
  std::lock_guard lock(d.mu);
  auto it = d.map.find(connection_id);
  if (it == d.map.end()) return false;
  where = it->second;
  return true;
}

void wse_app::directory_remove(std::string_view connection_id) {
  if (!bridge_ && opt_.api_key.empty() && !opt_.directory) return;
  directory_stripe& d = directory_[fanout::string_hash{}(connection_id) % directory_stripes];
  std::lock_guard lock(d.mu);
  if (auto it = d.map.find(connection_id); it != d.map.end()) {
    d.map.erase(it);
    directory_size_.fetch_sub(1, std::memory_order_relaxed);
  }
}

redis_sink::status wse_app::remote_publication(fanout::delivery_kind kind, std::string_view key,
                                               std::string_view json, uint64_t* wakes) {
  if (kind == fanout::delivery_kind::topic && !proto::wse_publish_topic_valid(key))
    return redis_sink::status::invalid;
  if (kind == fanout::delivery_kind::user &&
      (key.empty() || key.size() > proto::wse_publish_user_bytes_max))
    return redis_sink::status::invalid;
  switch (route(nullptr, kind, key, json, wakes, true)) {
    case publish_status::published:
      return redis_sink::status::delivered;
    case publish_status::busy:
      return redis_sink::status::busy;
    case publish_status::invalid:
      break;
  }
  return redis_sink::status::invalid;
}

void wse_app::history(const redis_history_request& request, const redis_history_answer& answer) {
  // Lost when the shard's inbox is full: the request is then answered without it after
  // history_wait_max_ms.
  push_command(request.shard, conn_ref{request.slot, request.generation}, command_history,
               history_blob(request, answer));
}

void wse_app::history_lost(std::string_view topic) {
  if (!recovery_) return;
  if (topic.empty()) return recovery_->forget_all();
  recovery_->forget(topic);
}

void wse_app::wake(uint64_t shards_mask) {
  if (hub_) hub_->wake(shards_mask);
}

redis_sink::command_status wse_app::remote_command(std::string_view json) {
  std::string detail;
  switch (run_command(json, detail, true)) {
    case command_result::ok:
      return command_status::ok;
    case command_result::invalid:
      return command_status::invalid;
    case command_result::busy:
      return command_status::busy;
    default:
      return command_status::unknown;  // not here
  }
}

wse_app::command_result wse_app::run_command(std::string_view json, std::string& detail,
                                             bool from_redis) {
  thread_local proto::wse_command_parser parser;
  thread_local proto::wse_envelope_parser framer;
  thread_local std::string text;
  proto::wse_command cmd;
  if (!parser.parse(json, cmd)) {
    detail = parser.error();
    return command_result::invalid;
  }
  std::string_view id = cmd.connection_id;
  conn_location where{};
  bool found = directory_find(id, where);
  if (!found) {
    // Another instance's connection (its id ends with that instance's id): route it there.
    std::string_view tag = id.size() == proto::wse_uuid_chars ? id.substr(id.size() - 8) : "";
    // Not when it came through Redis already: it was sent to this instance's channel, so the
    // id is unknown here whatever it ends with (no second hop).
    if (bridge_ && !from_redis && tag.size() == 8 && tag != instance_id_ &&
        tag.find_first_not_of("0123456789abcdef") == std::string_view::npos) {
      if (!bridge_->route_command(tag, json)) {
        detail = "redis unavailable (or its command queue full)";
        return command_result::unavailable;
      }
      detail = std::string(tag);
      return command_result::routed;
    }
    detail = "unknown connection";
    return command_result::unknown;
  }
  std::string_view name;
  std::string arg;
  switch (cmd.op) {
    case proto::wse_command_op::send:
      name = command_send;
      text.clear();
      if (framer.ensure_category(cmd.message_json, text) != proto::wse_error::none) {
        detail = "message must be a JSON object";
        return command_result::invalid;
      }
      if (!sign(nullptr, text)) {
        detail = "with --signing-key-file the message may not carry its own sig";
        return command_result::invalid;
      }
      arg = text;
      break;
    case proto::wse_command_op::disconnect:
      name = command_disconnect;
      arg = std::to_string(cmd.code);
      arg.push_back('\n');
      arg.append(cmd.reason);
      break;
    case proto::wse_command_op::subscribe:
    case proto::wse_command_op::unsubscribe:
      name = cmd.op == proto::wse_command_op::subscribe ? command_subscribe : command_unsubscribe;
      arg = topic_lines(cmd.topics);
      break;
  }
  if (!push_command(where.shard, conn_ref{where.slot, where.generation}, name, arg)) {
    detail = "the connection's shard is busy";
    return command_result::busy;
  }
  return command_result::ok;
}

namespace {

void json_answer(http_answer& a, uint16_t status, std::string body) {
  a.status = status;
  a.content_type = "application/json";
  a.body = std::move(body);
  a.body.push_back('\n');
}

std::string error_json(std::string_view reason) {
  std::string out = "{\"error\":";
  proto::wse_append_json_string(out, reason);
  out.push_back('}');
  return out;
}

}  // namespace

bool wse_app::on_http(shard& s, const proto::http_request& request, std::string_view body,
                      http_answer& answer) {
  if (opt_.api_key.empty()) return false;  // 404
  if (request.path == "/api/publish") {
    api_publish(s, part(s), request, body, answer);
    return true;
  }
  if (request.path == "/api/command") {
    api_command(s, request, body, answer);
    return true;
  }
  if (request.path == "/api/presence" || request.path == "/api/presence/stats" ||
      request.path == "/api/queue_groups") {
    api_presence(s, request, answer);
    return true;
  }
  return false;
}

// GET /api/presence?topic=, /api/presence/stats?topic=, /api/queue_groups?topic=.
void wse_app::api_presence(shard& s, const proto::http_request& request, http_answer& answer) {
  if (!api_key_ok(s, request, answer, "GET")) return;
  const bool groups = request.path == "/api/queue_groups";
  if (!groups && !presence_) {
    s.count_api(api_result::not_found);
    return json_answer(answer, 404, error_json("presence is off (--presence)"));
  }
  std::string topic;
  bool given = false;
  for (const auth::query_param& q : auth::parse_query(request.query))
    if (q.name == "topic") {
      topic = q.value;
      given = true;
    }
  if (!given || !proto::wse_publish_topic_valid(topic)) {
    s.count_api(api_result::bad_request);
    return json_answer(answer, 400,
                       error_json("?topic= must name one concrete topic (1 to 256 bytes, no "
                                  "control characters, no * or ?)"));
  }
  if (!groups && bridge_ && bridge_->presence_scripts()) {  // asked of Redis, answered later
    redis_presence_query q;
    q.shard = s.index();
    q.slot = answer.requester.slot;
    q.generation = answer.requester.generation;
    q.stats = request.path == "/api/presence/stats";
    q.topic = topic;
    if (!bridge_->presence_query(std::move(q))) {
      s.count_api(api_result::busy);
      answer.extra_headers = "Retry-After: 1\r\n";
      return json_answer(answer, 503, error_json("too many presence queries waiting"));
    }
    answer.deferred = true;
    return;
  }
  std::string out = "{";
  if (groups) {
    if (bridge_) {  // the rotation across instances, as this instance last heard it
      out += "\"cluster\":";
      std::lock_guard lock(cluster_mu_);
      auto at = cluster_groups_.find(topic);
      if (at == cluster_groups_.end()) {
        out += "null";
      } else {
        out.push_back('{');
        std::vector<const cluster_group*> sorted;
        for (const cluster_group& g : at->second) sorted.push_back(&g);
        std::sort(sorted.begin(), sorted.end(),
                  [](const cluster_group* a, const cluster_group* b) { return a->name < b->name; });
        for (const cluster_group* g : sorted) {
          if (out.back() != '{') out.push_back(',');
          proto::wse_append_json_string(out, g->name);
          out += ":" + std::to_string(g->members.size());
        }
        out.push_back('}');
      }
      out.push_back(',');
    }
    out += "\"groups\":";
    queue_groups_.info_json(topic, out);
    out += ",\"topic\":";
    proto::wse_append_json_string(out, topic);
  } else {
    fanout::presence_stats st = presence_->stats(topic);
    if (request.path == "/api/presence") {
      out += "\"members\":";
      presence_->members_json(topic, out);
      out.push_back(',');
    }
    out += "\"num_connections\":" + std::to_string(st.connections) +
           ",\"num_users\":" + std::to_string(st.users);
    if (request.path == "/api/presence") {
      out += ",\"topic\":";
      proto::wse_append_json_string(out, topic);
    }
  }
  out.push_back('}');
  s.count_api(api_result::ok);
  json_answer(answer, 200, std::move(out));
}

// The method, key and length checks of every API endpoint; false: answered.
bool wse_app::api_key_ok(shard& s, const proto::http_request& request, http_answer& answer,
                         std::string_view method) {
  if (request.method != method) {
    s.count_api(api_result::method);
    answer.extra_headers = "Allow: " + std::string(method) + "\r\n";
    json_answer(answer, 405, error_json("method not allowed: " + std::string(method)));
    return false;
  }
  std::string_view given = request.header("Authorization");
  std::string_view key;
  if (given.size() > 7 && proto::ascii_iequals(given.substr(0, 7), "Bearer "))
    key = given.substr(7);
  // Constant time over the key's length: only the length can leak, not its bytes.
  bool key_ok = key.size() == opt_.api_key.size() &&
                CRYPTO_memcmp(key.data(), opt_.api_key.data(), key.size()) == 0;
  if (!key_ok) {
    s.count_api(api_result::unauthorized);
    // Whether a key came, never the key.
    log::info("api_unauthorized", "HTTP API request refused: wrong or missing API key",
              {{"path", request.path}, {"key_given", !key.empty()}, {"shard", s.index()}},
              key.empty() ? "missing" : "wrong");
    answer.extra_headers = "WWW-Authenticate: Bearer\r\n";
    json_answer(answer, 401, error_json("unauthorized"));
    return false;
  }
  if (method == "POST" && request.content_length < 0) {
    s.count_api(api_result::length_required);
    json_answer(answer, 411, error_json("Content-Length required"));
    return false;
  }
  return true;
}

void wse_app::api_command(shard& s, const proto::http_request& request, std::string_view body,
                          http_answer& answer) {
  if (!api_key_ok(s, request, answer)) return;
  std::string detail;
  switch (run_command(body, detail)) {
    case command_result::ok:
      s.count_api(api_result::ok);
      return json_answer(answer, 200, "{\"result\":\"ok\"}");
    case command_result::routed: {
      s.count_api(api_result::ok);
      std::string out = "{\"result\":\"routed\",\"instance\":";
      proto::wse_append_json_string(out, detail);
      out.push_back('}');
      return json_answer(answer, 202, std::move(out));
    }
    case command_result::unknown:
      s.count_api(api_result::not_found);
      return json_answer(answer, 404, error_json("unknown connection"));
    case command_result::invalid:
      s.count_api(api_result::bad_request);
      return json_answer(answer, 400, error_json(detail));
    case command_result::unavailable:
    case command_result::busy:
      s.count_api(api_result::busy);
      answer.extra_headers = "Retry-After: 1\r\n";
      return json_answer(answer, 503, error_json(detail.empty() ? "redis unavailable" : detail));
  }
}

void wse_app::api_publish(shard& s, per_shard& p, const proto::http_request& request,
                          std::string_view body, http_answer& answer) {
  if (!api_key_ok(s, request, answer)) return;
  if (!p.api_parser.parse(body, p.api_items)) {
    s.count_api(api_result::bad_request);
    return json_answer(answer, 400, error_json(p.api_parser.error()));
  }
  size_t accepted = 0;
  uint64_t wakes = 0;  // each shard woken once for the whole request
  struct wake_at_exit {
    hub* h;
    redis_bridge* bridge;
    uint64_t& mask;
    ~wake_at_exit() {
      if (h && mask) h->wake(mask);
      if (bridge) bridge->wake_publisher();
    }
  } waker{hub_, bridge_, wakes};
  for (const proto::wse_publish_item& item : p.api_items) {
    fanout::delivery_kind kind =
        item.target == proto::wse_publish_target::topic       ? fanout::delivery_kind::topic
        : item.target == proto::wse_publish_target::broadcast ? fanout::delivery_kind::broadcast
                                                              : fanout::delivery_kind::user;
    publish_status st = route(&s, kind, item.key, item.message_json, &wakes);
    if (st == publish_status::invalid) {  // the parser validated it: not expected
      s.count_api(api_result::bad_request);
      s.count_api_publications(accepted);
      return json_answer(
          answer, 400,
          "{\"error\":\"item " + std::to_string(accepted) +
              ": message must be a JSON object (on a recoverable topic without top-level tp, e, "
              "o; when signing, without its own sig)\",\"accepted\":" +
              std::to_string(accepted) + "}");
    }
    if (st == publish_status::busy) {
      s.count_api(api_result::busy);
      s.count_api_publications(accepted);
      answer.extra_headers = "Retry-After: 1\r\n";
      return json_answer(
          answer, 503, "{\"error\":\"inbox full\",\"accepted\":" + std::to_string(accepted) + "}");
    }
    ++accepted;
  }
  s.count_api(api_result::ok);
  s.count_api_publications(accepted);
  json_answer(answer, 200, "{\"accepted\":" + std::to_string(accepted) + "}");
}

void wse_app::on_delivery(shard& s, const fanout::delivery& d) {
  per_shard& p = part(s);
  const fanout::frame& f = *d.f;
  switch (d.kind) {
    case fanout::delivery_kind::topic: {
      std::string_view topic = f.key();
      if ((!p.marks.empty() && p.marks.find(topic) != p.marks.end()) ||
          (!p.holds.empty() && p.holds.find(topic) != p.holds.end()))
        return deliver_marked(s, p, f);
      p.topics.for_each(topic, [&](fanout::subscriber_id id, bool via_glob) {
        const conn_state& st = p.conns[id];
        // A glob subscription never bypasses a deny: the concrete topic is checked too.
        if (via_glob && st.acl && !st.acl->allows_topic(topic)) return;
        send_shared(s, conn_ref{id, st.generation}, p, &st, f);
      });
      return;
    }
    case fanout::delivery_kind::broadcast:
      for (uint32_t slot = 0; slot < p.conns.size(); ++slot) {
        const conn_state& st = p.conns[slot];
        if (st.live && st.authenticated) send_shared(s, conn_ref{slot, st.generation}, p, &st, f);
      }
      return;
    case fanout::delivery_kind::user: {
      auto it = p.users.find(f.key());
      if (it == p.users.end()) return;
      for (uint32_t slot : it->second)
        send_shared(s, conn_ref{slot, p.conns[slot].generation}, p, &p.conns[slot], f);
      return;
    }
    case fanout::delivery_kind::member:
      return on_member_delivery(s, p, d);
    case fanout::delivery_kind::command: {
      conn_ref c{d.arg, d.arg2};
      if (f.key() == command_http_answer) {  // for an HTTP connection: no WSE state
        std::string_view arg = f.payload();
        size_t nl = std::min(arg.find('\n'), arg.size());
        http_answer a;
        a.status = 503;
        std::from_chars(arg.data(), arg.data() + nl, a.status);
        a.body.assign(arg.substr(std::min(nl + 1, arg.size())));
        a.body.push_back('\n');
        if (a.status == 503) a.extra_headers = "Retry-After: 1\r\n";
        s.count_api(a.status == 200 ? api_result::ok : api_result::busy);
        s.answer_deferred(c, a);
        return;
      }
      if (f.key() == command_call) {
        uint64_t address = 0;
        std::string_view arg = f.payload();
        std::from_chars(arg.data(), arg.data() + arg.size(), address, 16);
        std::unique_ptr<std::function<void(shard&, conn_ref)>> fn(
            reinterpret_cast<std::function<void(shard&, conn_ref)>*>(uintptr_t(address)));
        if (fn) (*fn)(s, c);
        return;
      }
      conn_state* st = state_of(p, c);
      if (!st || !st->authenticated) {
        wse_subscribe_extras extras;
        std::vector<std::string_view> topics;
        if (f.key() == command_subscribe_pre &&
            parse_subscribe_command(f.payload(), extras, topics) && extras.queue_group.empty())
          undo_pre_added(s, topics);  // gone: only the router bits set for it to undo
        return;
      }
      if (f.key() == command_send) {
        send_shared(s, c, p, st, f);
        return;
      }
      if (f.key() == command_send_binary) {
        send_out(s, c, p, st, proto::ws_opcode::binary, f.payload());
        return;
      }
      if (f.key() == command_history) return on_history(s, p, c, f.payload(), f);
      if (f.key() == command_disconnect) {
        uint32_t code = 1000;
        std::string_view arg = f.payload();
        size_t nl = arg.find('\n');
        std::from_chars(arg.data(), arg.data() + std::min(nl, arg.size()), code);
        s.close(c, uint16_t(code), close_reason::app_close,
                nl == std::string_view::npos ? std::string_view{} : arg.substr(nl + 1));
        return;
      }
      if (f.key() == command_presence) {
        if (presence_) presence_update(s, p, *st, c.slot, f.payload());
        return;
      }
      if (f.key() == command_subscribe_ex || f.key() == command_unsubscribe_ex ||
          f.key() == command_subscribe_pre) {
        wse_subscribe_extras extras;
        std::vector<std::string_view> topics;
        if (!parse_subscribe_command(f.payload(), extras, topics)) return;
        const std::string_view group = extras.queue_group;
        bool subscribing = f.key() != command_unsubscribe_ex;
        if (!subscribing && topics.empty()) {
          leave_groups(s, *st, c.slot, {}, group);
          if (!group.empty()) {             // that group on every topic; the rest stays
            std::vector<std::string> left;  // presence of topics it no longer holds at all
            for (const std::string& t : st->presence_topics)
              if (!p.topics.holds(c.slot, t) &&
                  std::none_of(st->groups.begin(), st->groups.end(),
                               [&](const auto& m) { return m.first == t; }))
                left.push_back(t);
            for (const std::string& t : left) presence_leave(s, p, *st, c.slot, t);
            return;
          }
          drop_subscriptions(s, p, c.slot);
          while (!st->presence_topics.empty())
            presence_leave(s, p, *st, c.slot, std::string(st->presence_topics.back()));
          return;
        }
        const bool by_id = f.key() == command_subscribe_pre;
        extras.presence_optional = by_id;  // (the Python API: no reply to refuse in)
        apply_subscription(s, c, p, *st, subscribing, topics, extras);
        if (by_id && group.empty()) undo_pre_added(s, topics);
        return;
      }
      std::vector<std::string_view> topics = split_lines(f.payload());
      if (f.key() == command_subscribe) {
        apply_subscription(s, c, p, *st, true, topics);
      } else if (topics.empty()) {
        drop_subscriptions(s, p, c.slot);
        leave_groups(s, *st, c.slot, {}, {});
        while (!st->presence_topics.empty())
          presence_leave(s, p, *st, c.slot, std::string(st->presence_topics.back()));
      } else {
        apply_subscription(s, c, p, *st, false, topics);
      }
      return;
    }
  }
}

// A topic frame while recovering subscribers of this shard have marks: those given the frame's
// offset by their replay skip it; a mark ends with the first frame past it (or of another epoch).
// Also: a connection whose recovering request waits for Redis has the frame held.
void wse_app::deliver_marked(shard& s, per_shard& p, const fanout::frame& f) {
  std::string_view topic = f.key();
  auto at = p.marks.find(topic);
  std::vector<per_shard::recovery_mark>* marks = at != p.marks.end() ? &at->second : nullptr;
  auto held_at = p.holds.find(topic);
  auto* holds = held_at != p.holds.end() ? &held_at->second : nullptr;
  std::string_view raw_topic;
  uint32_t epoch = 0;
  uint64_t offset = 0;
  bool stamped = proto::wse_parse_recovery_stamp(f.payload(), raw_topic, epoch, offset);
  p.topics.for_each(topic, [&](fanout::subscriber_id id, bool via_glob) {
    const conn_state& st = p.conns[id];
    if (via_glob && st.acl && !st.acl->allows_topic(topic)) return;
    if (holds)
      for (const auto& [slot, request] : *holds)
        if (slot == id) {
          auto r = p.pending.find(request);
          if (r == p.pending.end()) break;
          fanout::retain(const_cast<fanout::frame*>(&f));
          r->second.held.push_back(const_cast<fanout::frame*>(&f));
          return;
        }
    if (stamped && marks)
      for (const per_shard::recovery_mark& m : *marks)
        if (m.slot == id && m.generation == st.generation && m.epoch == epoch && offset <= m.upto)
          return;  // replayed already
    send_shared(s, conn_ref{id, st.generation}, p, &st, f);
  });
  if (!marks) return;
  std::erase_if(*marks, [&](const per_shard::recovery_mark& m) {
    return !stamped || m.epoch != epoch || offset >= m.upto ||
           p.conns[m.slot].generation != m.generation || !p.conns[m.slot].live;
  });
  if (marks->empty()) p.marks.erase(at);
}

void wse_app::recover_remote(shard& s, conn_ref c, per_shard& p, const proto::wse_subscription& sub,
                             std::function<void(const wse_recovery_result&)> done) {
  // What this instance received of the topics since its subscriptions to them began (a
  // contiguous run, dropped when the live stream was interrupted) answers when it covers every
  // topic of the request; otherwise Redis does.
  bool cached = true;
  uint64_t now = mono_ms();
  for (std::string_view topic : p.ok_topics)
    if (proto::wse_publish_topic_valid(topic) && recoverable(topic) &&
        !recovery_->covers(topic, position_in(sub, topic), now)) {
      cached = false;
      break;
    }
  if (cached) {
    recover_topics(s, c, p, sub);
    if (done) {
      done(recovery_result(p));
      p.recovery.clear();
      return;
    }
    return reply_subscription(s, c, p, sub.action_name, true);
  }
  uint64_t id = ++p.next_request;
  per_shard::pending_recovery& r = p.pending[id];
  r.done = std::move(done);
  r.slot = c.slot;
  r.generation = c.generation;
  r.started_ms = mono_ms();
  r.action = std::string(sub.action_name);
  for (std::string_view t : p.ok_topics) r.ok.emplace_back(t);
  for (std::string_view t : p.failed_topics) r.failed.emplace_back(t);
  for (std::string_view t : p.failed_reasons) r.reasons.emplace_back(t);
  for (const std::string& topic : r.ok) {
    per_shard::pending_recovery::topic_answer& t = r.topics.emplace_back();
    t.topic = topic;
    if (!proto::wse_publish_topic_valid(topic) || !recoverable(topic)) continue;  // no history
    redis_history_request q;
    q.shard = s.index();
    q.slot = c.slot;
    q.generation = c.generation;
    q.request = id;
    q.index = uint32_t(r.topics.size() - 1);
    q.topic = topic;
    if (const proto::wse_recovery_position* pos = sub.position_of(topic)) {
      if (pos->has_epoch) {
        char e[9];
        std::snprintf(e, sizeof e, "%08x", pos->epoch);
        q.epoch.assign(e, 8);
      }
      q.has_offset = pos->has_offset;
      q.offset = pos->offset;
    }
    if (!bridge_->fetch_history(std::move(q))) continue;  // too many waiting: no history
    t.waiting = true;
    ++r.outstanding;
    p.holds[topic].emplace_back(c.slot, id);
  }
  for (const std::string& topic : r.failed)
    if (proto::wse_topic_valid(topic)) r.topics.emplace_back().topic = topic;
  if (r.outstanding == 0) finish_recovery(s, p, id);
}

// A history from Redis (a command delivery from the bridge thread).
void wse_app::on_history(shard& s, per_shard& p, conn_ref c, std::string_view blob,
                         const fanout::frame& f) {
  uint64_t v[8];
  for (uint64_t& x : v)
    if (!read_number(blob, x)) return;
  auto it = p.pending.find(v[0]);
  if (it == p.pending.end() || it->second.slot != c.slot || it->second.generation != c.generation)
    return;
  per_shard::pending_recovery& r = it->second;
  if (v[1] >= r.topics.size() || !r.topics[v[1]].waiting) return;
  per_shard::pending_recovery::topic_answer& t = r.topics[v[1]];
  t.waiting = false;
  --r.outstanding;
  if (v[2] && v[3]) {  // answered, with a history
    t.answer.has_history = true;
    t.answer.epoch = uint32_t(v[4]);
    t.answer.offset = v[5] - 1;
    t.answer.recovered = v[6] != 0;
    for (uint64_t i = 0; i < v[7]; ++i) {
      uint64_t len = 0;
      if (!read_number(blob, len) || len > blob.size()) {
        t.answer.recovered = false;
        t.replay.clear();
        break;
      }
      t.replay.push_back(blob.substr(0, len));
      blob.remove_prefix(len);
    }
    if (!t.replay.empty()) {
      fanout::retain(const_cast<fanout::frame*>(&f));
      t.history = const_cast<fanout::frame*>(&f);
    }
  }
  if (r.outstanding == 0) finish_recovery(s, p, v[0]);
}

// Every topic answered: replays, the reply, then the live frames held (those the replays
// covered skipped).
void wse_app::finish_recovery(shard& s, per_shard& p, uint64_t id) {
  auto it = p.pending.find(id);
  if (it == p.pending.end()) return;
  per_shard::pending_recovery& r = it->second;
  conn_ref c{r.slot, r.generation};
  p.recovery.clear();
  for (auto& t : r.topics) {
    if (t.answer.recovered) {
      uint64_t sent = 0;
      for (std::string_view msg : t.replay) {
        fanout::frame* fr = hub_->pool(s.index()).make_text(t.topic, msg);
        bool ok = fr && send_shared(s, c, p, nullptr, *fr) == send_status::queued;
        if (fr) fanout::release(fr);
        if (!ok) break;
        ++sent;
      }
      t.answer.count = sent;
      if (sent != t.replay.size()) t.answer.recovered = false;
      p.counts.replayed.add(sent);
    }
    answered(p, c, t.topic, t.answer);
  }
  p.ok_topics.assign(r.ok.begin(), r.ok.end());
  p.failed_topics.assign(r.failed.begin(), r.failed.end());
  p.failed_reasons.assign(r.reasons.begin(), r.reasons.end());
  if (r.done)
    r.done(recovery_result(p));
  else
    reply_subscription(s, c, p, r.action, true);
  for (fanout::frame* f : r.held) {
    std::string_view raw;
    uint32_t epoch = 0;
    uint64_t offset = 0;
    bool skip = false;
    if (proto::wse_parse_recovery_stamp(f->payload(), raw, epoch, offset))
      for (const auto& t : r.topics)
        if (t.topic == f->key() && t.answer.has_history && t.answer.epoch == epoch &&
            offset <= t.answer.offset)
          skip = true;
    if (!skip) send_shared(s, c, p, nullptr, *f);
    fanout::release(f);
  }
  r.held.clear();
  for (auto& t : r.topics) {
    if (t.history) fanout::release(t.history);
    t.history = nullptr;
    auto h = p.holds.find(t.topic);
    if (h == p.holds.end()) continue;
    std::erase_if(h->second, [&](const auto& e) { return e.second == id; });
    if (h->second.empty()) p.holds.erase(h);
  }
  p.pending.erase(it);
  p.ok_topics.clear();  // views into the request just erased
  p.failed_topics.clear();
  p.failed_reasons.clear();
  p.recovery.clear();
}

void wse_app::render_presence_metrics(std::string& out) const {
  size_t n = shards_.size();
  char line[2048];
  if (presence_) {
    size_t topics = 0, bytes = 0;
    fanout::presence_stats t = presence_->totals(&topics, &bytes);
    std::snprintf(line, sizeof line,
                  "# HELP wsed_presence_topics Topics with a presence member.\n"
                  "# TYPE wsed_presence_topics gauge\nwsed_presence_topics %llu\n"
                  "# HELP wsed_presence_users Presence members (users, summed over topics).\n"
                  "# TYPE wsed_presence_users gauge\nwsed_presence_users %llu\n"
                  "# HELP wsed_presence_connections Connections in a topic's presence (summed "
                  "over topics).\n"
                  "# TYPE wsed_presence_connections gauge\nwsed_presence_connections %llu\n"
                  "# HELP wsed_presence_bytes Bytes of presence data, user ids and topic names "
                  "held.\n"
                  "# TYPE wsed_presence_bytes gauge\nwsed_presence_bytes %llu\n",
                  static_cast<unsigned long long>(topics), static_cast<unsigned long long>(t.users),
                  static_cast<unsigned long long>(t.connections),
                  static_cast<unsigned long long>(bytes));
    out += line;
    static constexpr struct {
      const char* label;
      counter wse_counters::*field;
    } events[] = {{"join", &wse_counters::presence_joins},
                  {"update", &wse_counters::presence_updates},
                  {"leave", &wse_counters::presence_leaves}};
    bool first = true;
    for (const auto& e : events) {
      append_family(
          out, n, [&](size_t i) { return (shards_[i]->counts.*e.field).get(); },
          "wsed_presence_events_total", "counter", "Presence events emitted, by type.", "type",
          e.label, first);
      first = false;
    }
    append_family(
        out, n, [&](size_t i) { return shards_[i]->counts.presence_dropped.get(); },
        "wsed_presence_events_dropped_total", "counter",
        "Presence events lost: 65,536 were waiting behind full inboxes already.");
    const char* refused = "Presence joins and updates refused, by reason.";
    append_family(
        out, n, [&](size_t i) { return shards_[i]->counts.presence_refused_data.get(); },
        "wsed_presence_refused_total", "counter", refused, "reason", "data_too_large");
    append_family(
        out, n, [&](size_t i) { return shards_[i]->counts.presence_refused_full.get(); },
        "wsed_presence_refused_total", "counter", refused, "reason", "too_many_members", false);
  }
  fanout::qg_totals q = queue_groups_.totals();
  uint64_t gone = 0;
  for (const auto& p : shards_) gone += p->counts.qg_gone.get();
  std::snprintf(
      line, sizeof line,
      "# HELP wsed_queue_group_topics Topics with a queue group.\n"
      "# TYPE wsed_queue_group_topics gauge\nwsed_queue_group_topics %llu\n"
      "# HELP wsed_queue_group_groups Queue groups (summed over topics).\n"
      "# TYPE wsed_queue_group_groups gauge\nwsed_queue_group_groups %llu\n"
      "# HELP wsed_queue_group_members Queue group members (summed over groups).\n"
      "# TYPE wsed_queue_group_members gauge\nwsed_queue_group_members %llu\n"
      "# HELP wsed_queue_group_dropped_total Publications a queue group did not get, by cause "
      "(no member could take it, the picked member's inbox was full, it closed meanwhile).\n"
      "# TYPE wsed_queue_group_dropped_total counter\n"
      "wsed_queue_group_dropped_total{cause=\"no_member\"} %llu\n"
      "wsed_queue_group_dropped_total{cause=\"inbox_full\"} %llu\n"
      "wsed_queue_group_dropped_total{cause=\"gone\"} %llu\n",
      static_cast<unsigned long long>(q.topics), static_cast<unsigned long long>(q.groups),
      static_cast<unsigned long long>(q.members),
      static_cast<unsigned long long>(qg_no_member_.load(std::memory_order_relaxed)),
      static_cast<unsigned long long>(qg_inbox_full_.load(std::memory_order_relaxed)),
      static_cast<unsigned long long>(gone));
  out += line;
  append_family(
      out, n, [&](size_t i) { return shards_[i]->counts.qg_deliveries.get(); },
      "wsed_queue_group_deliveries_total", "counter", "Publications given to queue group members.");
  append_family(
      out, n, [&](size_t i) { return shards_[i]->counts.qg_busy.get(); },
      "wsed_queue_group_busy_total", "counter",
      "Times a member was skipped from then on for a queue over half --max-outbound-bytes.");
}
void wse_app::render_recovery_metrics(std::string& out) const {
  size_t n = shards_.size();
  const char* help = "Topics of recovering subscribe requests, by answer.";
  static constexpr struct {
    const char* result;
    counter wse_counters::*field;
  } answers[] = {
      {"recovered", &wse_counters::recover_recovered},
      {"not_recovered", &wse_counters::recover_not_recovered},
      {"no_history", &wse_counters::recover_no_history},
  };
  bool first = true;
  for (const auto& a : answers) {
    append_family(
        out, n, [&](size_t i) { return (shards_[i]->counts.*a.field).get(); },
        "wsed_recovery_requests_total", "counter", help, "result", a.result, first);
    first = false;
  }
  append_family(
      out, n, [&](size_t i) { return shards_[i]->counts.replayed.get(); },
      "wsed_recovery_replayed_total", "counter", "Publications replayed to recovering clients.");
  recovery_store::totals t = recovery_->current();
  char line[1024];
  std::snprintf(line, sizeof line,
                "# HELP wsed_recovery_topics Topics with a history held.\n"
                "# TYPE wsed_recovery_topics gauge\nwsed_recovery_topics %llu\n"
                "# HELP wsed_recovery_bytes Bytes of history held (--recovery-memory caps it).\n"
                "# TYPE wsed_recovery_bytes gauge\nwsed_recovery_bytes %llu\n"
                "# HELP wsed_recovery_messages Publications held in histories.\n"
                "# TYPE wsed_recovery_messages gauge\nwsed_recovery_messages %llu\n"
                "# HELP wsed_recovery_sequenced_total Publications stamped and kept.\n"
                "# TYPE wsed_recovery_sequenced_total counter\nwsed_recovery_sequenced_total %llu\n"
                "# HELP wsed_recovery_dropped_topics_total Topic histories dropped, by cause "
                "(a new epoch follows).\n"
                "# TYPE wsed_recovery_dropped_topics_total counter\n"
                "wsed_recovery_dropped_topics_total{cause=\"memory\"} %llu\n"
                "wsed_recovery_dropped_topics_total{cause=\"ttl\"} %llu\n",
                static_cast<unsigned long long>(t.topics), static_cast<unsigned long long>(t.bytes),
                static_cast<unsigned long long>(t.frames),
                static_cast<unsigned long long>(recovery_->sequenced()),
                static_cast<unsigned long long>(recovery_->evicted()),
                static_cast<unsigned long long>(recovery_->expired()));
  out += line;
}

void wse_app::render_metrics(std::string& out) const {
  if (bridge_) bridge_->render_metrics(out);
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
  for (size_t o = 0; o < size_t(subscribe_outcome::count_); ++o) {
    append_family(
        out, n, [&](size_t i) { return shards_[i]->counts.subscribe[o].get(); },
        "wsed_wse_subscribe_total", "counter",
        "Topics of subscribe requests (clients, ?topics=, the server API), by outcome.", "result",
        name_of(subscribe_outcome(o)), o == 0);
  }
  shard_family("wsed_wse_unsubscribe_total", "Topics of unsubscribe requests.",
               &wse_counters::unsubscribe);
  if (recovery_) render_recovery_metrics(out);
  render_presence_metrics(out);
  render_e2e_metrics(out);
  const char* publish_help = "Client publish messages, by outcome.";
  shard_family("wsed_wse_publish_total", publish_help, &wse_counters::publish_ok, "result", "ok");
  shard_family("wsed_wse_publish_total", publish_help, &wse_counters::publish_denied, "result",
               "denied", false);
  shard_family("wsed_wse_publish_total", publish_help, &wse_counters::publish_invalid, "result",
               "invalid", false);
  shard_family("wsed_wse_publish_total", publish_help, &wse_counters::publish_busy, "result",
               "busy", false);
  append_family(
      out, n, [&](size_t i) { return shards_[i]->counts.held.get(); }, "wsed_subscriptions",
      "gauge", "Topic subscriptions held (exact and glob).");
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

void wse_app::render_e2e_metrics(std::string& out) const {
  size_t n = shards_.size();
  auto family = [&](const char* name, const char* type, const char* help,
                    counter wse_counters::*field, const char* label = nullptr,
                    const char* value = nullptr, bool header = true) {
    append_family(
        out, n, [&](size_t i) { return (shards_[i]->counts.*field).get(); }, name, type, help,
        label, value, header);
  };
  family("wsed_e2e_keyed_connections", "gauge",
         "Connections keyed for end-to-end encryption (E: frames).", &wse_counters::e2e_keyed);
  const char* messages = "E: messages sealed (sent) and opened (received).";
  family("wsed_e2e_messages_total", "counter", messages, &wse_counters::e2e_encrypted, "direction",
         "encrypted");
  family("wsed_e2e_messages_total", "counter", messages, &wse_counters::e2e_decrypted, "direction",
         "decrypted", false);
  const char* failures =
      "End-to-end encryption failures: key exchanges refused (KEY_EXCHANGE_FAILED), E: frames "
      "that did not open (close 4400), E: frames before a key exchange (INVALID_MESSAGE).";
  family("wsed_e2e_failures_total", "counter", failures, &wse_counters::e2e_key_failed, "reason",
         "key_exchange");
  family("wsed_e2e_failures_total", "counter", failures, &wse_counters::e2e_decrypt_failed,
         "reason", "decrypt", false);
  family("wsed_e2e_failures_total", "counter", failures, &wse_counters::e2e_unkeyed, "reason",
         "unkeyed", false);
  uint64_t signed_total = signed_off_shard_.load(std::memory_order_relaxed);
  for (const auto& p : shards_) signed_total += p->counts.signed_messages.get();
  out +=
      "# HELP wsed_signed_messages_total Publications and per-connection sends signed "
      "(--signing-key-file).\n# TYPE wsed_signed_messages_total counter\n"
      "wsed_signed_messages_total ";
  out += std::to_string(signed_total);
  out += '\n';
}

// --- By connection id (any thread) -------------------------------------------------------------

bool wse_app::post(uint32_t shard_index, conn_ref c, std::function<void(shard&, conn_ref)> fn) {
  auto* heap = new std::function<void(shard&, conn_ref)>(std::move(fn));
  char arg[17];
  std::snprintf(arg, sizeof arg, "%016llx", static_cast<unsigned long long>(uintptr_t(heap)));
  if (push_command(shard_index, c, command_call, std::string_view(arg, 16))) return true;
  delete heap;
  return false;
}

uint32_t wse_app::on_each_shard(const std::function<void(shard&)>& fn) {
  uint32_t taken = 0;
  for (uint32_t i = 0; i < shards_.size(); ++i)
    taken += post(i, conn_ref{}, [fn](shard& s, conn_ref) { fn(s); });
  return taken;
}

bool wse_app::locate(std::string_view connection_id, wse_conn& out) {
  conn_location where{};
  if (!directory_find(connection_id, where) || where.shard >= shards_.size()) return false;
  shard* s = shard_ptrs_[where.shard].load(std::memory_order_acquire);
  if (!s) return false;
  out = wse_conn{s, conn_ref{where.slot, where.generation}};
  return true;
}

bool wse_app::send_text(std::string_view connection_id, std::string_view text) {
  wse_conn c;
  return locate(connection_id, c) && push_command(c.owner->index(), c.ref, command_send, text);
}

bool wse_app::send_text(const wse_conn& c, std::string_view text) {
  return c.owner && push_command(c.owner->index(), c.ref, command_send, text);
}

bool wse_app::send_binary(const wse_conn& c, std::string_view bytes) {
  return c.owner && push_command(c.owner->index(), c.ref, command_send_binary, bytes);
}

bool wse_app::send_binary(std::string_view connection_id, std::string_view bytes) {
  wse_conn c;
  return locate(connection_id, c) &&
         push_command(c.owner->index(), c.ref, command_send_binary, bytes);
}

bool wse_app::disconnect(std::string_view connection_id, uint16_t code, std::string_view reason) {
  wse_conn c;
  if (!locate(connection_id, c)) return false;
  std::string arg = std::to_string(code);
  arg.push_back('\n');
  arg.append(reason);
  return push_command(c.owner->index(), c.ref, command_disconnect, arg);
}

bool wse_app::set_topic_acl(std::string_view connection_id, std::vector<std::string> allow,
                            std::vector<std::string> deny) {
  wse_conn c;
  if (!locate(connection_id, c)) return false;
  return post(c.owner->index(), c.ref,
              [this, allow = std::move(allow), deny = std::move(deny)](shard& s, conn_ref r) {
                per_shard& p = part(s);
                conn_state* st = state_of(p, r);
                if (!st || !st->authenticated) return;
                auth::topic_acl acl = st->acl ? *st->acl : auth::topic_acl{};
                acl.allow = allow;
                acl.deny = deny;
                st->acl = shared_acl(p, acl);
              });
}

wse_recovery_result wse_app::recovery_result(const per_shard& p) {
  wse_recovery_result out;
  out.found = true;
  out.recovered = !p.recovery.empty();
  for (const proto::wse_topic_recovery& t : p.recovery) {
    wse_recovery_result::topic r;
    r.name = std::string(t.topic);
    r.has_epoch = t.has_epoch;
    r.epoch = t.epoch;
    r.offset = t.offset;
    r.recoverable = t.recoverable;
    r.recovered = t.recovered;
    r.count = t.count;
    out.recovered = out.recovered && t.recovered;
    out.topics.push_back(std::move(r));
  }
  for (size_t i = 0; i < p.failed_topics.size(); ++i)
    out.failed.emplace_back(std::string(p.failed_topics[i]), i < p.failed_reasons.size()
                                                                 ? std::string(p.failed_reasons[i])
                                                                 : std::string());
  return out;
}

bool wse_app::subscribe_recovering(std::string_view connection_id, std::vector<std::string> topics,
                                   bool recover, bool has_epoch, uint32_t epoch, uint64_t offset,
                                   std::function<void(const wse_recovery_result&)> done) {
  wse_conn c;
  if (!locate(connection_id, c)) return false;
  return post(c.owner->index(), c.ref,
              [this, topics = std::move(topics), recover, has_epoch, epoch, offset,
               done = std::move(done)](shard& s, conn_ref r) {
                per_shard& p = part(s);
                conn_state* st = state_of(p, r);
                if (!st || !st->authenticated) return done(wse_recovery_result{});
                std::vector<std::string_view> names(topics.begin(), topics.end());
                apply_subscription(s, r, p, *st, true, names);
                // Without a position (or recover false) the answer still tells where the topic
                // stands (epoch, offset; recoverable: it has a history), nothing replayed.
                if (!recovery_) {
                  p.recovery.clear();
                  for (std::string_view t : p.ok_topics) {
                    proto::wse_topic_recovery tr{};
                    tr.topic = t;
                    tr.recoverable = false;  // recovery off: no history
                    p.recovery.push_back(tr);
                  }
                  wse_recovery_result out = recovery_result(p);
                  out.recovered = false;
                  p.recovery.clear();
                  return done(out);
                }
                proto::wse_subscription sub;
                sub.recover = true;
                sub.action = proto::wse_subscription_action::subscribe;
                sub.action_name = "subscribe";
                sub.topic_count = 0;
                for (std::string_view t : names) {
                  proto::wse_recovery_position pos;
                  pos.topic = t;
                  pos.has_epoch = recover && has_epoch;
                  pos.epoch = epoch;
                  pos.has_offset = recover && has_epoch;
                  pos.offset = offset;
                  sub.recovery.push_back(pos);
                }
                sub.recovery_count = sub.recovery.size();
                for (std::string_view t : names) sub.topics.push_back(proto::wse_topic{t});
                sub.topic_count = sub.topics.size();
                if (bridge_) return recover_remote(s, r, p, sub, done);
                recover_topics(s, r, p, sub);
                wse_recovery_result out = recovery_result(p);
                p.recovery.clear();
                done(out);
              });
}

std::vector<std::string> wse_app::connection_ids() {
  std::vector<std::string> out;
  out.reserve(directory_size_.load(std::memory_order_relaxed));
  for (directory_stripe& d : directory_) {
    std::lock_guard lock(d.mu);
    for (const auto& [id, where] : d.map) out.push_back(id);
  }
  return out;
}

uint64_t wse_app::connection_count() const {
  return directory_size_.load(std::memory_order_relaxed);
}

bool wse_app::subscribe(std::string_view connection_id, std::span<const std::string_view> topics,
                        const wse_subscribe_extras& extras) {
  thread_local proto::wse_envelope_parser checker;
  wse_conn c;
  if (!group_name_valid(extras.queue_group) || !locate(connection_id, c)) return false;
  std::string_view data = extras.has_presence ? extras.presence_json : std::string_view{};
  if (extras.has_presence && checker.check_object(data) != proto::wse_error::none) return false;
  if (extras.has_presence && data.empty()) data = "{}";
  std::string arg = subscribe_command(extras.queue_group, data, topics);
  const bool pre = extras.queue_group.empty() && hub_;  // (group members are not routed)
  uint32_t index = c.owner->index();
  if (pre)
    for (std::string_view t : topics)
      if (proto::wse_topic_valid(t))  // (no control characters: topic_lines keeps them all)
        interest(hub_->router().add(index, t), redis_interest::pattern, t);
  if (push_command(index, c.ref, command_subscribe_pre, arg)) return true;
  if (pre)
    for (std::string_view t : topics)
      if (proto::wse_topic_valid(t))
        interest(hub_->router().remove(index, t), redis_interest::pattern, t);
  return false;
}

void wse_app::undo_pre_added(shard& s, std::span<const std::string_view> topics) {
  // The router keeps one bit per shard (not a count): it stays while the shard holds the pattern.
  const fanout::topic_index& held = part(s).topics;
  for (std::string_view t : topics)
    if (proto::wse_topic_valid(t) && !held.has_pattern(t))
      interest(hub_->router().remove(s.index(), t), redis_interest::pattern, t);
}

bool wse_app::unsubscribe(std::string_view connection_id, std::span<const std::string_view> topics,
                          std::string_view queue_group) {
  wse_conn c;
  return locate(connection_id, c) && unsubscribe(c, topics, queue_group);
}

bool wse_app::update_presence(std::string_view connection_id, std::string_view data_json) {
  wse_conn c;
  return locate(connection_id, c) && update_presence(c, data_json);
}

void wse_app::recovery_totals(uint64_t& topics, uint64_t& bytes) const {
  topics = bytes = 0;
  if (!recovery_) return;
  recovery_store::totals t = recovery_->current();
  topics = t.topics;
  bytes = t.bytes;
}

void wse_app::presence_totals(uint64_t& topics, uint64_t& users) const {
  topics = users = 0;
  if (!presence_) return;
  size_t n = 0;
  users = presence_->totals(&n).users;
  topics = n;
}

wse_app_options wse_options_from(const server_config& c) {
  wse_app_options o;
  o.cookie_name = c.jwt_cookie;
  o.allow_query_token = c.allow_query_token;
  o.message_bytes_max = c.message_bytes_max;
  o.shards = c.workers;
  o.ping_interval_ms = c.ping_interval_ms;
  o.compression_threshold_bytes = c.compression_threshold_bytes;
  o.inbound_rate = c.inbound_rate;
  o.inbound_burst = c.inbound_burst;
  o.topics_per_connection_max = c.topics_per_connection_max;
  o.recovery = c.recovery;
  o.recovery_limits.buffer = c.recovery_buffer;
  o.recovery_limits.ttl_ms = c.recovery_ttl_ms;
  o.recovery_limits.max_replay = c.recovery_max_replay;
  o.recovery_limits.memory_bytes = c.recovery_memory_bytes;
  o.presence = c.presence;
  o.presence_limits.data_bytes_max = c.presence_data_bytes_max;
  o.presence_limits.members_max = c.presence_members_max;
  o.outbound_bytes_max = c.outbound_bytes_max;
  o.e2e = c.e2e;
  o.recovery_topics.clear();
  for (size_t at = 0; at <= c.recovery_topics.size();) {
    size_t comma = std::min(c.recovery_topics.find(',', at), c.recovery_topics.size());
    if (comma > at) o.recovery_topics.push_back(c.recovery_topics.substr(at, comma - at));
    at = comma + 1;
  }
  return o;
}

}  // namespace wsed::engine
