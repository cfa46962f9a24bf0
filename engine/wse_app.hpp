// engine/wse_app.hpp: the WSE protocol (PROTOCOL.md) on top of the engine, and the library API
// an application uses to sit behind it.
//
// wse_app authenticates each upgrade (JWT; error frame + close 4401 on failure), sends
// server_ready, answers app ping -> PONG, client_hello -> server_hello, sends the server ping
// every --ping-interval, decodes the inbound formats (text JSON, M:/raw MessagePack, C: zlib),
// applies the inbound rate limit (RATE_LIMITED, then close 4429), and hands every other message
// (an application message) to a wse_handler: on_connect(user, conn), on_message(conn, message),
// on_disconnect(conn). The handler answers through wse_app::send(), the per-connection send path,
// where the connection's format applies (M: + MessagePack for format=msgpack connections, C: +
// zlib above --compression-threshold, else text JSON).
//
// Owns: per shard, the envelope parser, codec, scratch strings, an RNG for UUIDv7s, the
// per-connection state (indexed by conn_ref.slot, keyed by generation) and counters. Thread:
// every callback runs on the calling shard's thread and touches only that shard's part; the
// verifier is immutable and swapped under a mutex (set_verifier, from any thread: SIGHUP), each
// shard copying it when a version counter moved;
// render_metrics reads relaxed atomics from any shard. Never blocks, never does file I/O (keys
// are loaded by the embedding program).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "auth/acl.hpp"
#include "auth/jwt.hpp"
#include "auth/token_source.hpp"
#include "engine/assert.hpp"
#include "engine/config.hpp"
#include "engine/metrics.hpp"
#include "engine/shard.hpp"
#include "proto/wse_builder.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_formats.hpp"

namespace wsed::engine {

// One WSE connection as the application sees it. Valid only on its shard's thread; stale (sends
// are dropped) once the connection closed.
struct wse_conn {
  shard* owner = nullptr;
  conn_ref ref{};
};

// Who connected (views valid during on_connect only).
struct wse_user {
  std::string_view user_id;              // the token's sub ("anonymous" without auth)
  std::string_view connection_id;        // UUIDv7, as in server_ready
  const auth::topic_acl* acl = nullptr;  // the token's wse_topics (null without auth)
};

// One inbound application message, whatever its wire format (views valid during the call).
struct wse_app_message {
  std::string_view type;          // "t"
  std::string_view category;      // "c" as sent, or inferred from the type
  std::string_view payload_json;  // "p" as JSON text; empty when absent
  std::string_view user_id;
  std::string_view connection_id;
};

// The application behind wse_app. Every callback runs on the connection's shard thread, inside
// its loop pass: queue work, never block.
class wse_handler {
 public:
  virtual ~wse_handler() = default;
  virtual void on_connect(const wse_user& /*user*/, wse_conn /*conn*/) {}
  virtual void on_message(wse_conn conn, const wse_app_message& message) = 0;
  virtual void on_disconnect(wse_conn /*conn*/) {}
  // Every shard timer tick (100 ms), for batching work such as log flushes.
  virtual void on_tick(uint32_t /*shard_index*/) {}
  // Appends the handler's Prometheus families (relaxed atomics only).
  virtual void render_metrics(std::string& /*out*/) const {}
};

struct wse_app_options {
  std::shared_ptr<const auth::verifier> verifier;  // nullptr: no auth (user "anonymous")
  std::string cookie_name = "access_token";
  bool allow_query_token = false;
  uint64_t message_bytes_max = 1u << 20;  // announced in server_hello; cap of decoded messages
  uint32_t shards = 1;                    // the server's worker count (resolved, not 0)
  uint32_t ping_interval_ms = 25000;      // server ping to every connection (0: never)
  uint32_t compression_threshold_bytes = proto::wse_compress_threshold_bytes_default;  // 0: never
  uint32_t inbound_rate = 10000;   // messages per second per connection (0: unlimited)
  uint32_t inbound_burst = 10000;  // bucket size
};

enum class wse_send_format : uint8_t { json, msgpack, compressed, count_ };

inline constexpr size_t wse_feature_count = 6;  // the features object of server_ready / hello

// What happened on one shard; written by that shard only, read by /metrics from any shard.
struct wse_counters {
  counter auth_ok, auth_required, auth_failed;
  counter pings, pongs, hellos, server_pings, app_messages, invalid, subscriptions, before_auth;
  counter rate_limited;  // inbound messages dropped over the rate
  std::array<counter, size_t(wse_send_format::count_)> sends;
};

class wse_app final : public app_handler {
 public:
  wse_app(wse_app_options options, wse_handler& handler);
  ~wse_app() override;

  // Per-connection send of an envelope {"c","id","p","seq","t","ts","v"} in the connection's
  // format. category empty: inferred from the type; payload_json empty: {}. Call on the
  // connection's shard thread (from a wse_handler callback).
  send_status send(wse_conn conn, std::string_view type, std::string_view payload_json,
                   std::string_view category = {});

  // Any thread: new upgrades verify with this verifier from now on (SIGHUP key reload);
  // connections already open are untouched. Ignored when the app was built without auth.
  void set_verifier(std::shared_ptr<const auth::verifier> verifier);
  // Counts a key reload attempt (wsed_key_reloads_total), from the thread that did it.
  void count_reload(bool ok);

  void on_open(shard& s, conn_ref c, const proto::http_request& request) override;
  void on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                  std::span<const uint8_t> payload) override;
  void on_close(shard& s, conn_ref c) override;
  void on_tick(shard& s, uint64_t now_ms) override;
  void render_metrics(std::string& out) const override;

 private:
  struct conn_state {
    uint32_t generation = 0;
    bool live = false;
    bool authenticated = false;
    bool msgpack = false;       // format=msgpack: per-connection sends as M: + MessagePack
    bool rate_limited = false;  // in an episode of dropped messages
    uint32_t dropped = 0;       // messages dropped in the current episode
    uint64_t tokens_milli = 0;  // inbound token bucket, in thousandths of a message
    uint64_t refilled_ms = 0;   // shard loop clock of the last refill
    uint64_t seq = 0;
    std::string user_id;
    char connection_id[proto::wse_uuid_chars] = {};
  };
  struct per_shard {
    proto::wse_envelope_parser parser;
    proto::wse_codec codec;
    std::string scratch;  // outbound JSON
    std::string encoded;  // outbound M: / C: bytes
    std::string decoded;  // inbound binary formats decoded to JSON
    std::mt19937_64 rng;
    std::vector<conn_state> conns;
    wse_counters counts;
    uint64_t next_ping_ms = 0;                       // shard loop clock; 0: not scheduled yet
    std::shared_ptr<const auth::verifier> verifier;  // this shard's copy of verifier_
    uint64_t verifier_version = 0;                   // of that copy
    per_shard();
  };

  per_shard& part(shard& s) {
    ENGINE_ASSERT(s.index() < shards_.size());  // wse_app_options::shards below the workers
    return *shards_[s.index()];
  }
  conn_state* state_of(per_shard& p, conn_ref c);
  void uuid7(per_shard& p, int64_t now_ms, char (&out)[proto::wse_uuid_chars]);
  void send_text(shard& s, conn_ref c, std::string_view text);
  void send_error(shard& s, conn_ref c, per_shard& p, std::string_view code,
                  std::string_view message);
  void refuse(shard& s, conn_ref c, per_shard& p, auth::verify_error why);
  bool admit(shard& s, conn_ref c, per_shard& p, conn_state& st);
  void on_json(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view text);
  // Hands one application message to the handler.
  void deliver(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view type,
               bool has_category, std::string_view category, std::string_view payload_json);

  wse_app_options opt_;
  wse_handler& handler_;
  const std::array<proto::wse_feature, wse_feature_count> features_;  // from the options
  bool auth_ = false;
  // The current verifier, swapped by set_verifier. Shards keep their own copy and take the lock
  // only when verifier_version_ moved (once per reload), so an upgrade costs one atomic load.
  std::mutex verifier_mu_;
  std::shared_ptr<const auth::verifier> verifier_;  // guarded by verifier_mu_
  std::atomic<uint64_t> verifier_version_{1};       // written under verifier_mu_
  auth::token_sources sources_;
  std::vector<std::unique_ptr<per_shard>> shards_;  // one per shard, made at construction
  counter reloads_ok_, reloads_failed_;             // written by the reloading thread only
};

}  // namespace wsed::engine
