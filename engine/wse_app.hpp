// engine/wse_app.hpp: the application of `--mode wse`: the WSE protocol (PROTOCOL.md) on top of
// the engine: JWT authentication at the upgrade (error frame + close 4401 on failure),
// server_ready, app ping -> PONG, client_hello -> server_hello, application messages dropped or
// echoed (--inbound).
//
// Owns: per shard, the envelope parser, a scratch string, an RNG for UUIDv7s, the per-connection
// state (indexed by conn_ref.slot, keyed by generation) and counters. Thread: every callback runs
// on the calling shard's thread and touches only that shard's part (indexed by shard::index());
// the verifier is immutable and shared. Never blocks, never logs per message, never does file
// I/O (secrets are loaded by main before the server starts).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "auth/jwt.hpp"
#include "auth/token_source.hpp"
#include "engine/config.hpp"
#include "engine/shard.hpp"
#include "proto/wse_builder.hpp"
#include "proto/wse_envelope.hpp"

namespace wsed::engine {

struct wse_app_options {
  std::shared_ptr<const auth::verifier> verifier;  // nullptr: no auth (user "anonymous")
  std::string cookie_name = "access_token";
  bool allow_query_token = false;
  inbound_policy inbound = inbound_policy::drop;
  uint64_t message_bytes_max = 1u << 20;  // announced in server_hello limits
  uint32_t shards = 1;                    // the server's worker count (resolved, not 0)
  uint32_t ping_interval_ms = 25000;      // server ping to every connection (0: never)
};

// What happened on one shard (written and read by that shard's thread only; to become /metrics
// families once they are relaxed atomics).
struct wse_counts {
  uint64_t auth_ok = 0;
  uint64_t auth_required = 0;  // no token
  uint64_t auth_failed = 0;    // token refused
  uint64_t pings = 0;
  uint64_t pongs = 0;
  uint64_t hellos = 0;
  uint64_t server_pings = 0;  // server pings sent (one per connection per --ping-interval)
  uint64_t app_dropped = 0;
  uint64_t app_echoed = 0;
  uint64_t invalid = 0;         // text messages that are not a WSE envelope
  uint64_t binary_dropped = 0;  // binary formats (M:, C:) are not handled yet
  uint64_t unsupported = 0;     // subscription requests (not handled yet)
  uint64_t before_auth = 0;     // messages of a connection that failed authentication
};

class wse_app final : public app_handler {
 public:
  explicit wse_app(wse_app_options options);
  ~wse_app() override;

  void on_open(shard& s, conn_ref c, const proto::http_request& request) override;
  void on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                  std::span<const uint8_t> payload) override;
  void on_close(shard& s, conn_ref c) override;
  void on_tick(shard& s, uint64_t now_ms) override;

 private:
  struct conn_state {
    uint32_t generation = 0;
    bool live = false;
    bool authenticated = false;
    uint64_t seq = 0;
    std::string user_id;
    char connection_id[proto::wse_uuid_chars] = {};
  };
  struct per_shard {
    proto::wse_envelope_parser parser;
    std::string scratch;
    std::mt19937_64 rng;
    std::vector<conn_state> conns;
    wse_counts counts;
    uint64_t next_ping_ms = 0;  // shard loop clock; 0: not scheduled yet
    per_shard();
  };

  per_shard& part(shard& s);
  conn_state* state_of(per_shard& p, conn_ref c);
  void uuid7(per_shard& p, int64_t now_ms, char (&out)[proto::wse_uuid_chars]);
  void send_text(shard& s, conn_ref c, const std::string& text);
  void refuse(shard& s, conn_ref c, per_shard& p, auth::verify_error why);
  void on_text(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view text);

  wse_app_options opt_;
  auth::token_sources sources_;
  std::vector<std::unique_ptr<per_shard>> shards_;  // sized at construction; [i] made by shard i
};

}  // namespace wsed::engine
