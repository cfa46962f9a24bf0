// engine/config.hpp: every tunable of the server, with its default. Filled once at startup
// (engine/flags.cpp for the binary, or by an embedding program) and read-only afterwards,
// so every shard may read it without synchronisation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/log.hpp"

namespace wsed::engine {

enum class server_mode : uint8_t { echo, wse };
// WSE application messages from clients (redis: XADD to the <prefix>inbound stream).
enum class inbound_policy : uint8_t { drop, log, echo, redis };
// What happens to a message for a connection whose outbound queue is over its cap.
enum class slow_consumer_policy : uint8_t { disconnect, drop };

struct server_config {
  std::string host = "127.0.0.1";
  uint16_t port = 5006;  // 0: any free port, shared by every shard
  uint32_t workers = 0;  // 0: one per online CPU
  server_mode mode = server_mode::wse;

  uint32_t connections_max = 100000;        // whole process; beyond it HTTP 503
  uint32_t pending_handshakes_max = 16384;  // whole process; beyond it HTTP 503
  uint32_t handshake_timeout_ms = 10000;    // upgrade must complete within this
  uint32_t idle_timeout_ms = 60000;         // no inbound bytes for this long: close 4408 (0 = off)
  uint64_t message_bytes_max = 1u << 20;    // larger message: close 1009
  uint32_t fragments_per_message_max = 4096;     // more frames in one message: close 1009
  uint64_t unfinished_bytes_max = 256ull << 20;  // whole process; over it: close 1013
  uint64_t outbound_bytes_max = 1u << 20;        // per connection queued bytes; over it: 4509/drop
  slow_consumer_policy slow_consumer = slow_consumer_policy::disconnect;
  uint32_t shutdown_timeout_ms = 10000;   // SIGTERM: everything closed within this
  uint32_t linger_timeout_ms = 2000;      // after our close/response: wait this long for EOF
  uint32_t http_header_bytes_max = 8192;  // header block; over it: 431
  // Concurrent connections from one client address (IPv4, or IPv6 /128), whole process; over it
  // HTTP 429 before the upgrade. 0: no cap (the default: behind a proxy or NAT, many users share
  // one address).
  uint32_t connections_per_ip_max = 0;

  uint32_t recv_buffer_bytes = 16384;  // one provided receive buffer
  uint32_t recv_buffer_count = 512;    // provided receive buffers per shard (power of two)
  bool quiet = false;                  // the log level at least warn (and no startup banner)
  // Logging (engine/log.hpp): events below log_level are not printed; auto: JSON lines when
  // stdout is not a terminal, text when it is.
  log::level log_level = log::level::info;
  log::format log_format = log::format::auto_;

  // --mode wse. The secret itself is loaded by main (from a file or the environment, never argv).
  // TLS on the main listener (the admin listener stays plain): PEM files, read at startup and
  // on SIGHUP. Empty cert: plain ws://.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;      // client certificates required and checked against it
  std::string jwt_secret_file;  // empty: read jwt_secret_env
  std::string jwt_secret_env = "WSED_JWT_SECRET";
  std::string jwt_previous_secret_file;  // empty: read jwt_previous_secret_env (if set)
  std::string jwt_previous_secret_env = "WSED_JWT_PREVIOUS_SECRET";
  std::string jwt_public_key_file;  // RS256 / ES256: PEM public key
  std::string jwt_alg = "HS256";    // HS256 | HS384 | HS512 | RS256 | ES256
  std::string jwt_kid;              // empty: any kid (or none)
  std::string jwt_issuer;           // empty: iss not checked
  std::string jwt_audience;         // empty: aud not checked
  std::string jwt_cookie = "access_token";
  // Browsers send Origin; when this list is not empty, an upgrade whose Origin is not in it gets
  // 403 (requests without Origin, i.e. non-browser clients, pass). Exact, case-insensitive.
  std::vector<std::string> allowed_origins;
  bool allow_query_token = false;  // accept ?token=... (URLs end up in logs)
  uint32_t jwt_leeway_ms = 30000;  // exp/nbf leeway
  inbound_policy inbound = inbound_policy::drop;
  bool insecure_no_auth = false;      // every connection is user "anonymous"
  uint32_t ping_interval_ms = 25000;  // WSE mode: server ping to every connection (0: never)
  // permessage-deflate (RFC 7692): accepted when a client offers it (no context kept between
  // messages). Data messages shorter than the threshold go uncompressed.
  bool permessage_deflate = true;
  uint32_t deflate_threshold_bytes = 1024;
  // WSE mode: per-connection sends whose JSON is longer go out as "C:" + zlib (0: never).
  uint32_t compression_threshold_bytes = 1024;
  // WSE mode: token bucket on inbound data messages, per connection (rate 0: unlimited). Over
  // it: the message is dropped with one RATE_LIMITED error per episode; more than `burst`
  // drops in one episode: close 4429.
  uint32_t inbound_rate = 10000;   // messages per second
  uint32_t inbound_burst = 10000;  // bucket size (messages)

  // Fan-out (WSE mode). Subscriptions one connection may hold; more: TOO_MANY_TOPICS.
  uint32_t topics_per_connection_max = 100;
  // Deliveries queued into one shard's inbox (power of two); full: backpressure to the publisher.
  uint32_t inbox_capacity = 8192;  // per producer (each shard and one external lane)
  // Publications at least this large are queued by reference to the shared frame (an iovec);
  // smaller ones are copied into the connection's own chunk (0: always by reference).
  uint32_t frame_reference_bytes_min = 4096;
  // The publish API (POST /api/publish): off without a key file (404). The key is loaded by main.
  std::string api_key_file;
  uint64_t api_body_bytes_max = 1u << 20;  // larger Content-Length: 413
  // When set ("ADDR:PORT"), /metrics, /healthz, /readyz and /api/* are served only there.
  std::string admin_listen;
  std::string admin_host;   // parsed from admin_listen
  uint16_t admin_port = 0;  // parsed from admin_listen (0: any free port)

  // Scale-out through Redis (engine/redis_bridge). Empty URL: this process alone.
  std::string redis_url;      // redis://[user:pass@]host:port[/db] or unix:///path[?db=N]
  std::string redis_cluster;  // host:port,... seeds of a Redis Cluster (sharded pub/sub)
  std::string redis_prefix = "wse:";
  bool redis_pattern_mode = false;  // one PSUBSCRIBE <prefix>* instead of per-topic SUBSCRIBE
  uint64_t redis_buffer_bytes = 16ull << 20;        // publications held while Redis is away
  uint64_t redis_stream_maxlen = 100000;            // --inbound redis: XADD MAXLEN ~ N
  uint64_t redis_stream_buffer_bytes = 4ull << 20;  // stream entries waiting, per shard
  uint32_t redis_reconnect_max_ms = 10000;          // backoff cap (jittered, doubling from 100 ms)
  uint32_t redis_member_ttl_ms = 15000;  // presence / queue group members of a silent instance
  uint32_t redis_timeout_ms = 5000;      // connect / handshake / silence (pinged at half) limit

  // Recovery (engine/recovery, PROTOCOL.md "Recovery"): per recoverable topic the last
  // recovery_buffer publications, stamped with tp/e/o; with Redis the sequence and the history
  // live in Redis (one sequencer per topic for every instance).
  bool recovery = false;
  std::string recovery_topics = "*";   // globs (comma-separated) of recoverable topics
  uint32_t recovery_buffer = 128;      // publications kept per topic (power of two, >= 16)
  uint32_t recovery_ttl_ms = 300000;   // a topic's history expires this long after its last write
  uint32_t recovery_max_replay = 500;  // a larger backlog is not recovered (never truncated)
  uint64_t recovery_memory_bytes = 256ull << 20;  // process budget; least recently written evicted

  // Presence (PROTOCOL.md "Presence"): who is in a topic, per user, joined by subscribing with a
  // presence object (or the C++ API); join/update/leave events to the topic's subscribers.
  bool presence = false;
  uint32_t presence_data_bytes_max = 4096;  // the data object's JSON text
  uint32_t presence_members_max = 0;        // users per topic; 0: unlimited

  // End-to-end encryption (PROTOCOL.md "End-to-end encryption (E:)"): off by default (each
  // keyed subscriber costs an AES-GCM seal per delivery; clients fall back to the clear).
  bool e2e = false;
  // Message signing: "sig" on publications and per-connection sends; the key (at least 32
  // bytes) is loaded by main, again on SIGHUP. Empty: unsigned.
  std::string signing_key_file;

  // Testing (engine/fault.hpp): "seed=N,short_send=P,..." injects faults under every shard.
  // Empty: off.
  std::string fault_inject;
};

}  // namespace wsed::engine
