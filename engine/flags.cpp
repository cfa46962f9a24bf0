// engine/flags.cpp: see flags.hpp. Every limit of server_config has a flag here.
#include "engine/flags.hpp"

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>

#include "proto/http.hpp"

namespace wsed::engine {

namespace {

std::optional<uint64_t> split_number(std::string_view text, std::string_view* suffix) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end == text.data()) return std::nullopt;
  *suffix = std::string_view(end, size_t(text.data() + text.size() - end));
  while (!suffix->empty() && suffix->front() == ' ') suffix->remove_prefix(1);
  return value;
}

std::optional<uint64_t> multiply(uint64_t v, uint64_t m) {
  if (m != 0 && v > UINT64_MAX / m) return std::nullopt;
  return v * m;
}

// A CLI11 option bound to an integer field through a text parser.
template <class T, class Parse>
CLI::Option* add_parsed(CLI::App& app, const std::string& name, T& field, Parse parse,
                        const std::string& help, uint64_t scale, const std::string& shown,
                        uint64_t min_value = 0,
                        uint64_t max_value = std::numeric_limits<uint64_t>::max()) {
  auto* opt = app.add_option_function<std::string>(
      name,
      [&field, parse, scale, name, min_value, max_value](const std::string& text) {
        auto v = parse(text);
        if (!v || *v / scale > std::numeric_limits<T>::max() || *v / scale < min_value ||
            *v / scale > max_value)
          throw CLI::ValidationError(name, "invalid value '" + text + "'");
        field = T(*v / scale);
      },
      help);
  opt->default_str(shown);
  return opt;
}

// A CLI11 check: a power of two in [min, max].
CLI::Validator power_of_two(unsigned long min, unsigned long max) {
  return CLI::Validator(
      [min, max](const std::string& s) -> std::string {
        unsigned long v = std::strtoul(s.c_str(), nullptr, 10);
        return v >= min && v <= max && (v & (v - 1)) == 0
                   ? ""
                   : "must be a power of two from " + std::to_string(min) + " to " +
                         std::to_string(max);
      },
      "POWER_OF_TWO");
}

}  // namespace

std::optional<uint64_t> parse_size(std::string_view text) {
  std::string_view suffix;
  auto v = split_number(text, &suffix);
  if (!v) return std::nullopt;
  if (suffix.empty() || proto::ascii_iequals(suffix, "B")) return v;
  static constexpr struct {
    const char* names[3];
    uint64_t factor;
  } units[] = {{{"K", "KB", "KiB"}, 1ull << 10},
               {{"M", "MB", "MiB"}, 1ull << 20},
               {{"G", "GB", "GiB"}, 1ull << 30}};
  for (const auto& u : units)
    for (const char* n : u.names)
      if (proto::ascii_iequals(suffix, n)) return multiply(*v, u.factor);
  return std::nullopt;
}

std::optional<uint64_t> parse_duration_ms(std::string_view text) {
  std::string_view suffix;
  auto v = split_number(text, &suffix);
  if (!v) return std::nullopt;
  if (suffix.empty() || suffix == "s") return multiply(*v, 1000);
  if (suffix == "ms") return v;
  if (suffix == "m") return multiply(*v, 60000);
  if (suffix == "h") return multiply(*v, 3600000);
  return std::nullopt;
}

void print_flag_error(const char* program, std::string what) {
  for (char& ch : what)
    if (ch == '\n') ch = ' ';
  std::fprintf(stderr, "%s: %s (see %s --help)\n", program, what.c_str(), program);
}

flags_result parse_flags(int argc, char** argv) {
  flags_result result;
  server_config& c = result.config;
  CLI::App app{"wsed: a WebSocket real-time server on io_uring (one shard per core)", "wsed"};
  app.set_version_flag("--version", std::string("wsed ") + WSED_VERSION);

  app.add_option("--host", c.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", c.port, "TCP port (0: any free port, printed at startup)")
      ->capture_default_str();
  app.add_option("--workers", c.workers,
                 "Shards: threads, each with its own io_uring and "
                 "listener (default: one per online CPU)")
      ->check(CLI::Range(1u, 1024u));
  std::string mode = "wse";
  app.add_option("--mode", mode,
                 "What the server speaks: wse (the WSE protocol with JWT auth; needs a key, see "
                 "--jwt-*) or echo (each data message goes back to its sender with its opcode)")
      ->check(CLI::IsMember({"echo", "wse"}))
      ->capture_default_str();
  app.add_option("--max-connections", c.connections_max,
                 "Connections held at once, whole process; beyond it HTTP 503")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--max-pending-handshakes", c.pending_handshakes_max,
                 "Sockets still in their HTTP upgrade, whole process; beyond it HTTP 503")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  add_parsed(app, "--handshake-timeout", c.handshake_timeout_ms, parse_duration_ms,
             "A socket must finish its upgrade request within this (10s, 500ms, 2m)", 1, "10s", 1);
  add_parsed(app, "--idle-timeout", c.idle_timeout_ms, parse_duration_ms,
             "Close 4408 after this long without inbound data (0: never)", 1, "60s");
  add_parsed(app, "--max-message-size", c.message_bytes_max, parse_size,
             "Largest message accepted (bytes, or 64KiB, 16MiB); larger: close 1009", 1, "1MiB", 1);
  app.add_option("--max-fragments", c.fragments_per_message_max,
                 "Frames one message may be split into; more: close 1009")
      ->check(CLI::Range(1u, 1000000000u))
      ->capture_default_str();
  add_parsed(app, "--max-unfinished-bytes", c.unfinished_bytes_max, parse_size,
             "Bytes held by partially received messages, whole process; over it: close 1013", 1,
             "256MiB", 1);
  add_parsed(app, "--max-outbound-bytes", c.outbound_bytes_max, parse_size,
             "Bytes queued to one connection; a message arriving over it meets --slow-consumer", 1,
             "1MiB", 1);
  std::string slow = "disconnect";
  app.add_option("--slow-consumer", slow,
                 "A message for a connection over --max-outbound-bytes: disconnect (close 4509) "
                 "or drop (that whole message is skipped, the connection stays)")
      ->check(CLI::IsMember({"disconnect", "drop"}))
      ->capture_default_str();
  add_parsed(app, "--shutdown-timeout", c.shutdown_timeout_ms, parse_duration_ms,
             "On SIGINT/SIGTERM: close 4300 to every client, exit within this", 1, "10s");
  add_parsed(app, "--linger-timeout", c.linger_timeout_ms, parse_duration_ms,
             "After the server's close frame or error response, wait this long for the peer", 1,
             "2s");
  add_parsed(app, "--max-header-bytes", c.http_header_bytes_max, parse_size,
             "Largest HTTP request header block; larger: 431", 1, "8KiB", 256);
  app.add_option("--recv-buffers", c.recv_buffer_count,
                 "Provided receive buffers per shard (power of two)")
      ->check(power_of_two(1, 32768))
      ->capture_default_str();
  add_parsed(app, "--recv-buffer-size", c.recv_buffer_bytes, parse_size,
             "Bytes of one provided receive buffer", 1, "16KiB", 512);
  app.add_flag("--quiet", c.quiet, "No startup banner; log warnings and errors only");
  // Logging: the two flags of engine/log.hpp.
  app.add_option_function<std::string>(
         "--log-level", [&c](const std::string& v) { c.log_level = *log::parse_level(v); },
         "Least level of the events logged on stderr: debug, info, warn or error (--quiet: at "
         "least warn)")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->default_str("info")
      ->group("Logging");
  app.add_option_function<std::string>(
         "--log-format", [&c](const std::string& v) { c.log_format = *log::parse_format(v); },
         "Log lines as json or text; auto: JSON when stdout is not a terminal, text when it is")
      ->check(CLI::IsMember({"auto", "json", "text"}))
      ->default_str("auto")
      ->group("Logging");
  app.add_option("--tls-cert-file", c.tls_cert_file,
                 "TLS: PEM certificate (then its chain) for the main port: wss:// and https:// "
                 "(reloaded on SIGHUP)");
  app.add_option("--tls-key-file", c.tls_key_file, "TLS: PEM private key of --tls-cert-file");
  app.add_option("--tls-ca-file", c.tls_ca_file,
                 "TLS: PEM CA bundle; clients must present a certificate it signed");
  app.add_option("--jwt-secret-file", c.jwt_secret_file,
                 "WSE mode: file holding the HMAC secret (at least 32 bytes)");
  app.add_option("--jwt-secret-env", c.jwt_secret_env,
                 "WSE mode: environment variable holding the secret when no file is given")
      ->capture_default_str();
  app.add_option("--jwt-previous-secret-file", c.jwt_previous_secret_file,
                 "WSE mode: file holding the previous HMAC secret, still accepted (rotation)");
  app.add_option("--jwt-previous-secret-env", c.jwt_previous_secret_env,
                 "WSE mode: environment variable holding the previous secret (read when set)")
      ->capture_default_str();
  app.add_option("--jwt-public-key-file", c.jwt_public_key_file,
                 "WSE mode: PEM public key for RS256 / ES256");
  app.add_option("--jwt-alg", c.jwt_alg, "WSE mode: JWT algorithm (tokens must use exactly it)")
      ->check(CLI::IsMember({"HS256", "HS384", "HS512", "RS256", "ES256"}))
      ->capture_default_str();
  app.add_option("--jwt-kid", c.jwt_kid, "WSE mode: required kid header (default: unchecked)");
  app.add_option("--jwt-issuer", c.jwt_issuer, "WSE mode: required iss claim (default: unchecked)");
  app.add_option("--jwt-audience", c.jwt_audience,
                 "WSE mode: required aud claim (default: unchecked)");
  app.add_option("--allowed-origins", c.allowed_origins,
                 "Origins allowed to upgrade, comma-separated (e.g. https://app.example.com); an "
                 "Origin header not in the list gets 403. Default: any")
      ->delimiter(',');
  app.add_option("--jwt-cookie", c.jwt_cookie, "WSE mode: cookie carrying the token")
      ->capture_default_str();
  app.add_flag("--allow-query-token", c.allow_query_token,
               "WSE mode: also accept a token query parameter (URLs end up in logs)");
  add_parsed(app, "--jwt-leeway", c.jwt_leeway_ms, parse_duration_ms,
             "WSE mode: clock leeway for exp and nbf", 1, "30s");
  std::string inbound = "drop";
  app.add_option("--inbound", inbound,
                 "WSE mode: application messages from clients: drop (count them), log (one JSON "
                 "line each on stdout), echo (back to the sender) or redis (XADD to the stream "
                 "<prefix>inbound, with connect and disconnect events; needs --redis-url)")
      ->check(CLI::IsMember({"drop", "log", "echo", "redis"}))
      ->capture_default_str();
  add_parsed(app, "--ping-interval", c.ping_interval_ms, parse_duration_ms,
             "WSE mode: the server pings every connection this often (0: never)", 1, "25s");
  std::string deflate = "on";
  app.add_option("--permessage-deflate", deflate,
                 "on: accept a client's permessage-deflate offer (RFC 7692; no context kept "
                 "between messages, libdeflate); off: never negotiate it")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  add_parsed(app, "--deflate-threshold", c.deflate_threshold_bytes, parse_size,
             "permessage-deflate: data messages shorter than this go uncompressed", 1, "1024");
  add_parsed(app, "--compression-threshold", c.compression_threshold_bytes, parse_size,
             "WSE mode: per-connection sends whose JSON is longer go out as C: + zlib (0: never)",
             1, "1024");
  app.add_option("--inbound-rate", c.inbound_rate,
                 "WSE mode: inbound messages per second per connection (token bucket; 0: "
                 "unlimited); over it RATE_LIMITED, persisting: close 4429")
      ->capture_default_str();
  app.add_option("--inbound-burst", c.inbound_burst,
                 "WSE mode: inbound messages a connection may send at once (bucket size)")
      ->check(CLI::Range(1u, 100000000u))
      ->capture_default_str();
  app.add_option("--max-connections-per-ip", c.connections_per_ip_max,
                 "Connections at once from one client address; beyond it HTTP 429 (0: no cap)")
      ->capture_default_str();
  app.add_option("--max-topics-per-connection", c.topics_per_connection_max,
                 "WSE mode: subscriptions one connection may hold; more: TOO_MANY_TOPICS")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--inbox-capacity", c.inbox_capacity,
                 "Deliveries queued into one shard from each producer (power of two >= 16); full: "
                 "the publisher gets 503 / SERVER_BUSY")
      ->check(power_of_two(16, 1u << 24))
      ->capture_default_str();
  add_parsed(app, "--share-frames-from", c.frame_reference_bytes_min, parse_size,
             "Publications at least this large are sent from the one shared frame (by iovec); "
             "smaller ones are copied into each connection's queue (0: always shared)",
             1, "4KiB");
  app.add_option("--api-key-file", c.api_key_file,
                 "WSE mode: file holding the publish API key (POST /api/publish with "
                 "Authorization: Bearer KEY; at least 16 bytes). Without it the API answers 404");
  add_parsed(app, "--max-api-body", c.api_body_bytes_max, parse_size,
             "Largest POST /api/publish body; larger: 413", 1, "1MiB", 2);
  app.add_option("--admin-listen", c.admin_listen,
                 "ADDR:PORT of a second listener that alone serves /metrics, /healthz, /readyz "
                 "and /api/* (default: everything on the main port)");
  app.add_option("--redis-url", c.redis_url,
                 "WSE mode: share topics with other wsed instances through this Redis: "
                 "redis://[user:pass@]host:port[/db] or unix:///path (default: none)");
  app.add_option("--redis-cluster", c.redis_cluster,
                 "WSE mode: the same through a Redis Cluster (7+), sharded pub/sub: seed nodes "
                 "host:port,host:port,... (the slot map is read from them and followed)");
  app.add_option("--redis-prefix", c.redis_prefix,
                 "Redis channel prefix: topic T is channel <prefix>T (also <prefix>@broadcast, "
                 "<prefix>@user:ID, <prefix>@node:INSTANCE, stream <prefix>inbound)")
      ->capture_default_str();
  std::string redis_subscribe = "exact";
  app.add_option("--redis-subscribe", redis_subscribe,
                 "exact: SUBSCRIBE each topic with a local subscriber (PSUBSCRIBE for globs); "
                 "pattern: one PSUBSCRIBE <prefix>* and filter here")
      ->check(CLI::IsMember({"exact", "pattern"}))
      ->capture_default_str();
  add_parsed(app, "--redis-buffer-bytes", c.redis_buffer_bytes, parse_size,
             "Publications held while Redis is unreachable; beyond it they are dropped and "
             "counted (wsed_redis_publications_total)",
             1, "16MiB", 0);
  app.add_option("--redis-stream-maxlen", c.redis_stream_maxlen,
                 "--inbound redis: entries the stream keeps (XADD MAXLEN ~ N)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40))
      ->capture_default_str();
  add_parsed(app, "--redis-stream-buffer-bytes", c.redis_stream_buffer_bytes, parse_size,
             "--inbound redis: stream entries one shard may have waiting for Redis; beyond it "
             "dropped and counted (wsed_redis_inbound_total)",
             1, "4MiB", 4096);
  add_parsed(app, "--redis-timeout", c.redis_timeout_ms, parse_duration_ms,
             "A connection to Redis that connects, authenticates or answers a ping no faster is "
             "given up and reconnected (wsed_redis_disconnects_total)",
             1, "5s", 200);
  add_parsed(app, "--redis-member-ttl", c.redis_member_ttl_ms, parse_duration_ms,
             "Presence and queue group members of an instance that stops renewing them (every "
             "third of this) are dropped by the others after this long (presence_leave sent)",
             1, "15s", 300, 3600000);
  add_parsed(app, "--redis-reconnect-max", c.redis_reconnect_max_ms, parse_duration_ms,
             "Longest wait between reconnection attempts (jittered, doubling from 100ms)", 1, "10s",
             100);
  app.add_flag("--recovery", c.recovery,
               "WSE mode: keep each recoverable topic's last publications, stamped tp/e/o, so a "
               "client that reconnects gets what it missed (with Redis: sequenced in Redis)");
  app.add_option("--recovery-topics", c.recovery_topics,
                 "Comma-separated globs of the recoverable topics; the others stay on the plain "
                 "path")
      ->capture_default_str();
  app.add_option("--recovery-buffer", c.recovery_buffer,
                 "Publications kept per recoverable topic (a power of two, at least 16)")
      ->check(power_of_two(16, 1u << 20))
      ->capture_default_str();
  add_parsed(app, "--recovery-ttl", c.recovery_ttl_ms, parse_duration_ms,
             "A topic's history is dropped this long after its last publication (a new epoch "
             "then)",
             1, "300s", 1000);
  app.add_option("--recovery-max-replay", c.recovery_max_replay,
                 "Most publications one topic replays; a larger backlog is not recovered")
      ->check(CLI::Range(uint32_t{1}, uint32_t{1} << 20))
      ->capture_default_str();
  add_parsed(app, "--recovery-memory", c.recovery_memory_bytes, parse_size,
             "Bytes of history the process keeps; past it the least recently written topics "
             "are dropped (wsed_recovery_dropped_topics_total)",
             1, "256MiB", 4096);
  app.add_flag("--presence", c.presence,
               "WSE mode: a subscription with a presence object enters the topic's presence; "
               "presence_join/update/leave go to the topic's subscribers (GET /api/presence)");
  add_parsed(app, "--presence-max-data", c.presence_data_bytes_max, parse_size,
             "Bytes of one presence data object (JSON text); larger: PRESENCE_DATA_TOO_LARGE "
             "(wsed_presence_refused_total)",
             1, "4096", 2, 1u << 20);
  app.add_option("--presence-max-members", c.presence_members_max,
                 "Users in one topic's presence (0: unlimited); more: PRESENCE_FULL "
                 "(wsed_presence_refused_total)")
      ->capture_default_str();
  app.add_flag("--e2e", c.e2e,
               "WSE mode: end-to-end encryption: a client_hello with features.encryption and a "
               "P-256 encryption_public_key keys the connection, which then gets E: frames "
               "(AES-256-GCM) (off: server_hello says encryption:false)");
  app.add_option("--signing-key-file", c.signing_key_file,
                 "WSE mode: sign publications and per-connection sends with this key (at least "
                 "32 bytes; one trailing newline dropped; reloaded on SIGHUP): \"sig\" = "
                 "hex(HMAC-SHA256(key, hex(SHA-256(p))))");
  app.add_flag("--insecure-no-auth", c.insecure_no_auth,
               "WSE mode: no JWT; every connection is user \"anonymous\" (testing only)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    result.what = flags_result::action::exit_ok;
    return result;
  } catch (const CLI::CallForVersion&) {
    std::printf("wsed %s\n", WSED_VERSION);
    result.what = flags_result::action::exit_ok;
    return result;
  } catch (const CLI::ParseError& e) {
    print_flag_error("wsed", e.what());
    result.what = flags_result::action::exit_usage;
    return result;
  }
  if (c.recv_buffer_bytes > (1u << 20)) {
    std::fprintf(stderr, "wsed: --recv-buffer-size: at most 1MiB (see wsed --help)\n");
    result.what = flags_result::action::exit_usage;
  }
  if (!c.admin_listen.empty()) {
    size_t colon = c.admin_listen.rfind(':');
    std::string_view port_text = colon == std::string::npos
                                     ? std::string_view{}
                                     : std::string_view(c.admin_listen).substr(colon + 1);
    uint64_t port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (colon == std::string::npos || colon == 0 || port_text.empty() || ec != std::errc() ||
        end != port_text.data() + port_text.size() || port > 65535) {
      print_flag_error("wsed", "--admin-listen: expected ADDR:PORT, got '" + c.admin_listen + "'");
      result.what = flags_result::action::exit_usage;
      return result;
    }
    c.admin_host = c.admin_listen.substr(0, colon);
    if (c.admin_host.size() > 2 && c.admin_host.front() == '[' && c.admin_host.back() == ']')
      c.admin_host = c.admin_host.substr(1, c.admin_host.size() - 2);
    c.admin_port = uint16_t(port);
  }
  c.slow_consumer = slow == "drop" ? slow_consumer_policy::drop : slow_consumer_policy::disconnect;
  c.permessage_deflate = deflate == "on";
  c.mode = mode == "wse" ? server_mode::wse : server_mode::echo;
  c.inbound = inbound == "echo"    ? inbound_policy::echo
              : inbound == "log"   ? inbound_policy::log
              : inbound == "redis" ? inbound_policy::redis
                                   : inbound_policy::drop;
  c.redis_pattern_mode = redis_subscribe == "pattern";
  auto usage = [&](const std::string& text) {
    print_flag_error("wsed", text);
    result.what = flags_result::action::exit_usage;
    return result;
  };
  bool redis = !c.redis_url.empty() || !c.redis_cluster.empty();
  if (c.inbound == inbound_policy::redis && !redis)
    return usage("--inbound redis needs --redis-url or --redis-cluster");
  if (!c.redis_url.empty() && !c.redis_cluster.empty())
    return usage("--redis-url and --redis-cluster: give one of them");
  if (redis && c.mode != server_mode::wse)
    return usage("--redis-url / --redis-cluster need --mode wse");
  if (!c.redis_cluster.empty() && c.redis_pattern_mode)
    return usage("--redis-subscribe pattern: a cluster's sharded pub/sub has no patterns");
  std::string why;
  if (!c.redis_url.empty() && !redis::parse_endpoint(c.redis_url, result.redis_endpoint, why))
    return usage("--redis-url: " + why);
  if (!c.redis_cluster.empty() && !redis::parse_cluster(c.redis_cluster, result.redis_cluster, why))
    return usage("--redis-cluster: " + why);
  if (c.redis_prefix.empty() || c.redis_prefix.size() > 200)
    return usage("--redis-prefix: 1 to 200 bytes");
  if (c.tls_cert_file.empty() != c.tls_key_file.empty())
    return usage("--tls-cert-file and --tls-key-file go together");
  if (!c.tls_ca_file.empty() && c.tls_cert_file.empty())
    return usage("--tls-ca-file needs --tls-cert-file and --tls-key-file");
  if (c.recovery && c.mode != server_mode::wse) return usage("--recovery needs --mode wse");
  if (c.presence && c.mode != server_mode::wse) return usage("--presence needs --mode wse");
  if (c.e2e && c.mode != server_mode::wse) return usage("--e2e needs --mode wse");
  if (!c.signing_key_file.empty() && c.mode != server_mode::wse)
    return usage("--signing-key-file needs --mode wse");
  return result;
}

}  // namespace wsed::engine
