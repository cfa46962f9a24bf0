// engine/flags.cpp: see flags.hpp. Every limit of server_config has a flag here; the flag table
// (build_table) is the one source of --help, the environment names, the config file keys,
// --print-config and the man page.
#include "engine/flags.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "auth/keys.hpp"
#include "engine/fault.hpp"
#include "engine/tls.hpp"
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

// The value as the config file writes it: a TOML string in quotes (single quotes when the text
// holds a double quote; CLI11's reader knows no escapes).
std::string quote(std::string_view text) {
  char q = text.find('"') == std::string_view::npos ? '"' : '\'';
  return q + std::string(text) + q;
}

// The flag table being built, and the values that are not server_config fields themselves.
struct table {
  explicit table(server_config& config) : c(config) {}
  CLI::App app{"wsed: a WebSocket real-time server on io_uring (one shard per core)", "wsed"};
  server_config& c;
  std::string mode = "wse", slow = "disconnect", inbound = "drop", deflate = "on",
              redis_subscribe = "exact", origins;
  std::string config_file;
  bool print_config = false, check_config = false, help_man = false;
  std::string group;  // the --help group of the options being added
  // Per setting: its current value as the config file takes it back (options added without
  // one are printed from their results or default).
  std::map<const CLI::Option*, std::function<std::string()>> shown;
  std::set<const CLI::Option*> actions;  // --help, --version, --print-config, ...: no env, no key
  const CLI::Option* config_option = nullptr;  // --config: an env name, no key
};

CLI::Option* grouped(table& t, CLI::Option* o) {
  return o->group(t.group);
}

// A text or integer option bound to its field.
template <class T>
CLI::Option* value(table& t, const std::string& name, T& field, const std::string& help) {
  auto* o = grouped(t, t.app.add_option(name, field, help)->capture_default_str());
  if constexpr (std::is_same_v<T, std::string>)
    t.shown[o] = [&field] { return quote(field); };
  else
    t.shown[o] = [&field] { return std::to_string(field); };
  return o;
}

// A flag: printed by generic_value, as options added outside this table are.
CLI::Option* flag(table& t, const std::string& name, bool& field, const std::string& help) {
  return grouped(t, t.app.add_flag(name, field, help));
}

CLI::Option* choice(table& t, const std::string& name, std::string& field,
                    std::vector<std::string> members, const std::string& help) {
  return value(t, name, field, help)->check(CLI::IsMember(std::move(members)));
}

// An integer field read through a text parser (sizes, durations) and printed back by its
// formatter, in --help's default and in --print-config alike.
template <class T>
CLI::Option* parsed(table& t, const std::string& name, T& field,
                    std::optional<uint64_t> (*parse)(std::string_view),
                    std::string (*format)(uint64_t), const std::string& help,
                    uint64_t min_value = 0,
                    uint64_t max_value = std::numeric_limits<uint64_t>::max()) {
  auto* o = t.app.add_option_function<std::string>(
      name,
      [&field, parse, format, name, min_value, max_value](const std::string& text) {
        auto v = parse(text);
        bool sizes = parse == parse_size;
        if (!v)
          throw CLI::ValidationError(name, "invalid value '" + text + "': expected " +
                                               (sizes ? "a size (4096, 64KiB, 16MiB)"
                                                      : "a duration (10s, 500ms, 2m, 1h)"));
        uint64_t top = std::min<uint64_t>(max_value, std::numeric_limits<T>::max());
        if (*v < min_value || *v > top)
          throw CLI::ValidationError(name, "'" + text + "' is out of range (" + format(min_value) +
                                               " to " + format(top) + ")");
        field = T(*v);
      },
      help);
  o->default_str(format(field));
  o->type_name(parse == parse_size ? "SIZE" : "DURATION");
  t.shown[o] = [&field, format] { return quote(format(field)); };
  return grouped(t, o);
}

CLI::Option* add_size(table& t, const std::string& name, auto& field, const std::string& help,
                      uint64_t min_value = 0,
                      uint64_t max_value = std::numeric_limits<uint64_t>::max()) {
  return parsed(t, name, field, parse_size, format_size, help, min_value, max_value);
}

CLI::Option* add_duration(table& t, const std::string& name, auto& field, const std::string& help,
                          uint64_t min_value = 0,
                          uint64_t max_value = std::numeric_limits<uint64_t>::max()) {
  return parsed(t, name, field, parse_duration_ms, format_duration_ms, help, min_value, max_value);
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

// The flag table: every setting of the server, in its --help group. Options added here (or by
// t.app.add_option anywhere before name_env_vars) get an environment name, a config file key,
// a --print-config line and a man page entry without more code.
void build_table(table& t) {
  server_config& c = t.c;
  CLI::App& app = t.app;
  app.set_help_flag();  // made again last, so that the Configuration group closes --help

  t.group = "Listen";
  value(t, "--host", c.host, "Address to listen on");
  value(t, "--port", c.port, "TCP port (0: any free port, printed at startup)");
  value(t, "--workers", c.workers,
        "Shards: threads, each with its own io_uring and listener (0: one per online CPU)")
      ->check(CLI::Range(0u, 1024u));
  choice(t, "--mode", t.mode, {"echo", "wse"},
         "What the server speaks: wse (the WSE protocol with JWT auth; needs a key, see --jwt-*) "
         "or echo (each data message goes back to its sender with its opcode)");
  value(t, "--admin-listen", c.admin_listen,
        "ADDR:PORT of a second listener that alone serves /metrics, /healthz, /readyz and /api/* "
        "(default: everything on the main port)");

  t.group = "Limits";
  value(t, "--max-connections", c.connections_max,
        "Connections held at once, whole process; beyond it HTTP 503")
      ->check(CLI::Range(1u, 10000000u));
  value(t, "--max-pending-handshakes", c.pending_handshakes_max,
        "Sockets still in their HTTP upgrade, whole process; beyond it HTTP 503")
      ->check(CLI::Range(1u, 10000000u));
  value(t, "--max-connections-per-ip", c.connections_per_ip_max,
        "Connections at once from one client address; beyond it HTTP 429 (0: no cap)");
  add_size(t, "--max-message-size", c.message_bytes_max,
           "Largest message accepted (bytes, or 64KiB, 16MiB); larger: close 1009", 1);
  value(t, "--max-fragments", c.fragments_per_message_max,
        "Frames one message may be split into; more: close 1009")
      ->check(CLI::Range(1u, 1000000000u));
  add_size(t, "--max-unfinished-bytes", c.unfinished_bytes_max,
           "Bytes held by partially received messages, whole process; over it: close 1013", 1);
  add_size(t, "--max-outbound-bytes", c.outbound_bytes_max,
           "Bytes queued to one connection; a message arriving over it meets --slow-consumer", 1);
  choice(t, "--slow-consumer", t.slow, {"disconnect", "drop"},
         "A message for a connection over --max-outbound-bytes: disconnect (close 4509) or drop "
         "(that whole message is skipped, the connection stays)");
  add_size(t, "--max-header-bytes", c.http_header_bytes_max,
           "Largest HTTP request header block; larger: 431", 256);
  value(t, "--inbound-rate", c.inbound_rate,
        "WSE mode: inbound messages per second per connection (token bucket; 0: unlimited); "
        "over it RATE_LIMITED, persisting: close 4429");
  value(t, "--inbound-burst", c.inbound_burst,
        "WSE mode: inbound messages a connection may send at once (bucket size)")
      ->check(CLI::Range(1u, 100000000u));

  t.group = "Timeouts";
  add_duration(t, "--handshake-timeout", c.handshake_timeout_ms,
               "A socket must finish its upgrade request within this (10s, 500ms, 2m)", 1);
  add_duration(t, "--idle-timeout", c.idle_timeout_ms,
               "Close 4408 after this long without inbound data (0: never)");
  add_duration(t, "--shutdown-timeout", c.shutdown_timeout_ms,
               "On SIGINT/SIGTERM: close 4300 to every client, exit within this");
  add_duration(t, "--linger-timeout", c.linger_timeout_ms,
               "After the server's close frame or error response, wait this long for the peer");
  add_duration(t, "--ping-interval", c.ping_interval_ms,
               "WSE mode: the server pings every connection this often (0: never)");

  t.group = "Buffers";
  value(t, "--recv-buffers", c.recv_buffer_count,
        "Provided receive buffers per shard (power of two)")
      ->check(power_of_two(1, 32768));
  add_size(t, "--recv-buffer-size", c.recv_buffer_bytes, "Bytes of one provided receive buffer",
           512, 1u << 20);

  t.group = "TLS";
  value(t, "--tls-cert-file", c.tls_cert_file,
        "TLS: PEM certificate (then its chain) for the main port: wss:// and https:// "
        "(reloaded on SIGHUP)");
  value(t, "--tls-key-file", c.tls_key_file, "TLS: PEM private key of --tls-cert-file");
  value(t, "--tls-ca-file", c.tls_ca_file,
        "TLS: PEM CA bundle; clients must present a certificate it signed");

  t.group = "Auth";
  value(t, "--jwt-secret-file", c.jwt_secret_file,
        "WSE mode: file holding the HMAC secret (at least 32 bytes)");
  value(t, "--jwt-secret-env", c.jwt_secret_env,
        "WSE mode: environment variable holding the secret when no file is given");
  value(t, "--jwt-previous-secret-file", c.jwt_previous_secret_file,
        "WSE mode: file holding the previous HMAC secret, still accepted (rotation)");
  value(t, "--jwt-previous-secret-env", c.jwt_previous_secret_env,
        "WSE mode: environment variable holding the previous secret (read when set)");
  value(t, "--jwt-public-key-file", c.jwt_public_key_file,
        "WSE mode: PEM public key for RS256 / ES256");
  choice(t, "--jwt-alg", c.jwt_alg, {"HS256", "HS384", "HS512", "RS256", "ES256"},
         "WSE mode: JWT algorithm (tokens must use exactly it)");
  value(t, "--jwt-kid", c.jwt_kid, "WSE mode: required kid header (default: unchecked)");
  value(t, "--jwt-issuer", c.jwt_issuer, "WSE mode: required iss claim (default: unchecked)");
  value(t, "--jwt-audience", c.jwt_audience, "WSE mode: required aud claim (default: unchecked)");
  value(t, "--jwt-cookie", c.jwt_cookie, "WSE mode: cookie carrying the token");
  flag(t, "--allow-query-token", c.allow_query_token,
       "WSE mode: also accept a token query parameter (URLs end up in logs)");
  add_duration(t, "--jwt-leeway", c.jwt_leeway_ms, "WSE mode: clock leeway for exp and nbf");
  t.shown[value(
      t, "--allowed-origins", t.origins,
      "Origins allowed to upgrade, comma-separated (e.g. https://app.example.com); an Origin "
      "header not in the list gets 403. Empty: any")] = [&c] {
    std::string joined;
    for (const auto& origin : c.allowed_origins) joined += (joined.empty() ? "" : ",") + origin;
    return quote(joined);
  };
  flag(t, "--insecure-no-auth", c.insecure_no_auth,
       "WSE mode: no JWT; every connection is user \"anonymous\" (testing only)");
  // Testing: hidden from --help (group ""), documented in docs/ARCHITECTURE.md.
  value(t, "--fault-inject", c.fault_inject,
        "Testing: inject faults under every shard, e.g. "
        "seed=1,short_send=0.1,enobufs=0.05,reset=0.01,sq_full=0.05,alloc=0.02")
      ->group("");

  t.group = "WSE";
  choice(t, "--inbound", t.inbound, {"drop", "log", "echo", "redis"},
         "WSE mode: application messages from clients: drop (count them), log (one JSON line "
         "each on stdout), echo (back to the sender) or redis (XADD to the stream "
         "<prefix>inbound, with connect and disconnect events; needs --redis-url)");
  add_size(t, "--compression-threshold", c.compression_threshold_bytes,
           "WSE mode: per-connection sends whose JSON is longer go out as C: + zlib (0: never)");

  t.group = "permessage-deflate";
  choice(t, "--permessage-deflate", t.deflate, {"on", "off"},
         "on: accept a client's permessage-deflate offer (RFC 7692; no context kept between "
         "messages, libdeflate); off: never negotiate it");
  add_size(t, "--deflate-threshold", c.deflate_threshold_bytes,
           "permessage-deflate: data messages shorter than this go uncompressed");

  t.group = "Fan-out";
  value(t, "--max-topics-per-connection", c.topics_per_connection_max,
        "WSE mode: subscriptions one connection may hold; more: TOO_MANY_TOPICS")
      ->check(CLI::Range(1u, 1000000u));
  value(t, "--inbox-capacity", c.inbox_capacity,
        "Deliveries queued into one shard from each producer (power of two >= 16); full: the "
        "publisher gets 503 / SERVER_BUSY")
      ->check(power_of_two(16, 1u << 24));
  add_size(t, "--share-frames-from", c.frame_reference_bytes_min,
           "Publications at least this large are sent from the one shared frame (by iovec); "
           "smaller ones are copied into each connection's queue (0: always shared)");

  t.group = "Publish API";
  value(t, "--api-key-file", c.api_key_file,
        "WSE mode: file holding the publish API key (POST /api/publish with Authorization: "
        "Bearer KEY; at least 16 bytes). Without it the API answers 404");
  add_size(t, "--max-api-body", c.api_body_bytes_max, "Largest POST /api/publish body; larger: 413",
           2);

  t.group = "Redis";
  t.shown[value(t, "--redis-url", c.redis_url,
                "WSE mode: share topics with other wsed instances through this Redis: "
                "redis://[user:pass@]host:port[/db] or unix:///path (default: none)")] = [&c] {
    return quote(redis::mask_credentials(c.redis_url));
  };
  t.shown[value(t, "--redis-cluster", c.redis_cluster,
                "WSE mode: the same through a Redis Cluster (7+), sharded pub/sub: seed nodes "
                "host:port,host:port,... (the slot map is read from them and followed)")] = [&c] {
    return quote(redis::mask_credentials(c.redis_cluster));
  };
  value(t, "--redis-prefix", c.redis_prefix,
        "Redis channel prefix: topic T is channel <prefix>T (also <prefix>@broadcast, "
        "<prefix>@user:ID, <prefix>@node:INSTANCE, stream <prefix>inbound)");
  choice(t, "--redis-subscribe", t.redis_subscribe, {"exact", "pattern"},
         "exact: SUBSCRIBE each topic with a local subscriber (PSUBSCRIBE for globs); pattern: "
         "one PSUBSCRIBE <prefix>* and filter here");
  add_size(t, "--redis-buffer-bytes", c.redis_buffer_bytes,
           "Publications held while Redis is unreachable; beyond it they are dropped and counted "
           "(wsed_redis_publications_total)");
  value(t, "--redis-stream-maxlen", c.redis_stream_maxlen,
        "--inbound redis: entries the stream keeps (XADD MAXLEN ~ N)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  add_size(t, "--redis-stream-buffer-bytes", c.redis_stream_buffer_bytes,
           "--inbound redis: stream entries one shard may have waiting for Redis; beyond it "
           "dropped and counted (wsed_redis_inbound_total)",
           4096);
  add_duration(t, "--redis-timeout", c.redis_timeout_ms,
               "A connection to Redis that connects, authenticates or answers a ping no faster is "
               "given up and reconnected (wsed_redis_disconnects_total)",
               200);
  add_duration(t, "--redis-member-ttl", c.redis_member_ttl_ms,
               "Presence and queue group members of an instance that stops renewing them (every "
               "third of this) are dropped by the others after this long (presence_leave sent)",
               300, 3600000);
  add_duration(t, "--redis-reconnect-max", c.redis_reconnect_max_ms,
               "Longest wait between reconnection attempts (jittered, doubling from 100ms)", 100);

  t.group = "Recovery";
  flag(t, "--recovery", c.recovery,
       "WSE mode: keep each recoverable topic's last publications, stamped tp/e/o, so a client "
       "that reconnects gets what it missed (with Redis: sequenced in Redis)");
  value(t, "--recovery-topics", c.recovery_topics,
        "Comma-separated globs of the recoverable topics; the others stay on the plain path");
  value(t, "--recovery-buffer", c.recovery_buffer,
        "Publications kept per recoverable topic (a power of two, at least 16)")
      ->check(power_of_two(16, 1u << 20));
  add_duration(t, "--recovery-ttl", c.recovery_ttl_ms,
               "A topic's history is dropped this long after its last publication (a new epoch "
               "then)",
               1000);
  value(t, "--recovery-max-replay", c.recovery_max_replay,
        "Most publications one topic replays; a larger backlog is not recovered")
      ->check(CLI::Range(uint32_t{1}, uint32_t{1} << 20));
  add_size(t, "--recovery-memory", c.recovery_memory_bytes,
           "Bytes of history the process keeps; past it the least recently written topics are "
           "dropped (wsed_recovery_dropped_topics_total)",
           4096);

  t.group = "Presence";
  flag(t, "--presence", c.presence,
       "WSE mode: a subscription with a presence object enters the topic's presence; "
       "presence_join/update/leave go to the topic's subscribers (GET /api/presence)");
  add_size(t, "--presence-max-data", c.presence_data_bytes_max,
           "Bytes of one presence data object (JSON text); larger: PRESENCE_DATA_TOO_LARGE "
           "(wsed_presence_refused_total)",
           2, 1u << 20);
  value(t, "--presence-max-members", c.presence_members_max,
        "Users in one topic's presence (0: unlimited); more: PRESENCE_FULL "
        "(wsed_presence_refused_total)");

  t.group = "Encryption and signing";
  flag(t, "--e2e", c.e2e,
       "WSE mode: end-to-end encryption: a client_hello with features.encryption and a P-256 "
       "encryption_public_key keys the connection, which then gets E: frames (AES-256-GCM) "
       "(off: server_hello says encryption:false)");
  value(t, "--signing-key-file", c.signing_key_file,
        "WSE mode: sign publications and per-connection sends with this key (at least 32 bytes; "
        "one trailing newline dropped; reloaded on SIGHUP): \"sig\" = "
        "hex(HMAC-SHA256(key, hex(SHA-256(p))))");

  t.group = "Logging";
  flag(t, "--quiet", c.quiet, "No startup banner; log warnings and errors only");
  // The two flags of engine/log.hpp.
  t.shown[grouped(t, t.app.add_option_function<std::string>(
                         "--log-level",
                         [&c](const std::string& v) { c.log_level = *log::parse_level(v); },
                         "Least level of the events logged on stderr: debug, info, warn or "
                         "error (--quiet: at least warn)"))
              ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
              ->default_str("info")] = [&c] { return quote(log::name_of(c.log_level)); };
  t.shown[grouped(t, t.app.add_option_function<std::string>(
                         "--log-format",
                         [&c](const std::string& v) { c.log_format = *log::parse_format(v); },
                         "Log lines as json or text; auto: JSON when stdout is not a terminal, "
                         "text when it is"))
              ->check(CLI::IsMember({"auto", "json", "text"}))
              ->default_str("auto")] = [&c] { return quote(log::name_of(c.log_format)); };

  t.group = "Configuration";
  t.actions.insert(grouped(t, app.set_help_flag("-h,--help", "Print this help message and exit")));
  t.actions.insert(
      grouped(t, app.set_version_flag("--version", std::string("wsed ") + WSED_VERSION)));
  t.config_option =
      grouped(t,
              app.add_option("--config", t.config_file,
                             "TOML file of settings: key = value per line, the keys are the long "
                             "flag names (max-connections = 5000). Precedence: flag > environment "
                             "> file > default"))
          ->type_name("FILE");
  t.actions.insert(grouped(
      t, app.add_flag("--print-config", t.print_config,
                      "Print the effective configuration as a config file (where each value "
                      "came from in a comment; secrets masked) and exit")));
  t.actions.insert(grouped(
      t, app.add_flag("--check-config", t.check_config,
                      "Check every setting and the files they name without starting; exit 0 "
                      "(\"ok\") or 2 with one line per problem")));
  t.actions.insert(app.add_flag("--help-man", t.help_man, "Print the man page (roff)")->group(""));
}

// WSED_ + the long name in upper snake case: --max-connections -> WSED_MAX_CONNECTIONS.
std::string env_name_of(const CLI::Option* o) {
  std::string name = "WSED_";
  for (char ch : o->get_lnames().front())
    name += ch == '-' ? '_' : char(std::toupper(static_cast<unsigned char>(ch)));
  return name;
}

// Every option with a long name but the actions reads the environment too (also --config:
// WSED_CONFIG), including options added outside build_table.
void name_env_vars(table& t) {
  for (CLI::Option* o : t.app.get_options())
    if (!t.actions.count(o) && !o->get_lnames().empty()) o->envname(env_name_of(o));
}

bool is_setting(const table& t, const CLI::Option* o) {
  return !t.actions.count(o) && o != t.config_option && !o->get_lnames().empty();
}

// Gives the option one more layer's values and runs its conversion and checks; on a bad value
// adds "<where>: <what>" to problems and leaves the option as it was.
bool apply(CLI::Option* o, const std::vector<std::string>& values, const std::string& where,
           std::vector<std::string>& problems) {
  try {
    for (const auto& v : values) o->add_result(v);
    o->run_callback();
    return true;
  } catch (const CLI::Error& e) {
    problems.push_back(where + ": " + e.what());
    o->clear();
    return false;
  }
}

// A flag's value from the environment or the file: true/false, 1/0, yes/no, on/off.
std::optional<std::string> flag_text(std::string_view text) {
  for (const char* yes : {"true", "1", "yes", "on"})
    if (proto::ascii_iequals(text, yes)) return "true";
  for (const char* no : {"false", "0", "no", "off"})
    if (proto::ascii_iequals(text, no)) return "false";
  return std::nullopt;
}

bool is_flag(const CLI::Option* o) {
  return o->get_expected_min() == 0;
}

// The environment layer: for each option the command line did not set, WSED_<NAME> when it is
// set and not empty.
void read_env(table& t, const config_input& in, std::map<const CLI::Option*, setting_source>& src,
              std::vector<std::string>& problems) {
  if (!in.env) return;
  for (CLI::Option* o : t.app.get_options()) {
    if (o->get_envname().empty() || o->count() > 0) continue;
    auto text = in.env(o->get_envname());
    if (!text || text->empty()) continue;
    std::string where = "environment " + o->get_envname();
    std::string v = *text;
    if (is_flag(o)) {
      auto f = flag_text(v);
      if (!f) {
        problems.push_back(where + ": expected true/false, 1/0, yes/no or on/off, got '" + v + "'");
        continue;
      }
      v = *f;
    }
    if (apply(o, {v}, where, problems)) src[o] = setting_source::env;
  }
}

// What CLI11's lenient reader would misread without a word: a line that is not key = value (it
// reads a bare key as a flag set to true), a '#' inside a quoted value (it cuts the value there,
// as a comment) and a quote left open. One problem per line.
// Also a key given twice (CLI11 would join the values); returns those keys.
std::set<std::string> lint_lines(std::string_view text, const std::string& where,
                                 std::vector<std::string>& problems) {
  std::map<std::string, size_t, std::less<>> keys;
  std::set<std::string> twice;
  for (size_t number = 1; !text.empty(); ++number) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back())))
      line.remove_suffix(1);
    if (line.empty() || line.front() == '#' || line.front() == ';' || line.front() == '[') continue;
    std::string at = where + ": line " + std::to_string(number) + ": ";
    size_t eq = line.find('=');
    if (eq == std::string_view::npos || line.substr(0, eq).find('#') != std::string_view::npos) {
      problems.push_back(at + "expected key = value");
      continue;
    }
    std::string_view key = line.substr(0, eq);
    while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back())))
      key.remove_suffix(1);
    if (auto [it, fresh] = keys.emplace(std::string(key), number); !fresh) {
      problems.push_back(at + "key '" + std::string(key) + "' given twice (first on line " +
                         std::to_string(it->second) + ")");
      twice.emplace(key);
    }
    char open = 0;
    for (char ch : line.substr(eq + 1)) {
      if (open != 0 && ch == open) {
        open = 0;
      } else if (open != 0 && ch == '#') {
        problems.push_back(at + "a '#' inside a quoted value would start a comment (give such a " +
                           "value by flag or environment)");
        open = 0;
        break;
      } else if (open == 0 && (ch == '"' || ch == '\'')) {
        open = ch;
      } else if (open == 0 && ch == '#') {
        break;
      }
    }
    if (open != 0) problems.push_back(at + "a quoted value is not closed");
  }
  return twice;
}

// The file layer (TOML read by CLI11's config reader): every key must name a setting; a key the
// command line or the environment set already is overridden by them.
void read_file(table& t, const config_input& in, std::map<const CLI::Option*, setting_source>& src,
               std::vector<std::string>& problems) {
  std::string text;
  const std::string& file = t.config_file;
  auto from = src.find(t.config_option);
  bool by_env = from != src.end() && from->second == setting_source::env;
  std::string where = (by_env ? "--config (from WSED_CONFIG) " : "--config ") + file;
  if (in.config_text) {
    text = *in.config_text;
  } else {
    std::ifstream f(file, std::ios::binary);
    std::ostringstream all;
    all << f.rdbuf();
    if (!f.is_open() || f.bad()) {
      problems.push_back(where + ": cannot read the file");
      return;
    }
    text = all.str();
  }
  std::set<std::string> twice = lint_lines(text, where, problems);
  std::istringstream stream(text);
  std::vector<CLI::ConfigItem> items;
  CLI::ConfigTOML reader;
  try {
    items = reader.from_config(stream);
  } catch (const std::exception& e) {
    problems.push_back(where + ": " + e.what());
    return;
  }
  bool sections = false;
  std::set<const CLI::Option*> seen;
  for (const CLI::ConfigItem& item : items) {
    if (item.name == "++" || item.name == "--") {
      if (!sections)
        problems.push_back(where + ": [sections] are not used: every key is at the top level");
      sections = true;
      continue;
    }
    CLI::Option* o = item.parents.empty() ? t.app.get_option_no_throw("--" + item.name) : nullptr;
    if (!o || !is_setting(t, o)) {
      if (!item.parents.empty() && sections) continue;  // said once above
      problems.push_back(where + ": unknown key '" + item.fullname() +
                         "' (the keys are the long flag names without --)");
      continue;
    }
    if (twice.count(item.name) || !seen.insert(o).second) continue;  // said by lint_lines
    if (o->count() > 0) continue;  // the command line or the environment wins
    std::vector<std::string> values = item.inputs;
    if (is_flag(o)) {
      auto f = values.size() == 1 ? flag_text(values[0]) : std::nullopt;
      if (!f) {
        problems.push_back(where + ": " + item.name + ": expected true or false");
        continue;
      }
      values = {*f};
    } else if (values.size() != 1) {
      problems.push_back(where + ": " + item.name +
                         ": expected one value (a list is one comma-separated string)");
      continue;
    }
    if (apply(o, values, where + ": " + item.name, problems)) src[o] = setting_source::file;
  }
}

// The settings that depend on each other, and the ones made of several parts; one problem per
// line.
void resolve(table& t, const config_input& in, flags_result& result,
             std::vector<std::string>& problems) {
  server_config& c = t.c;
  auto problem = [&](std::string text) { problems.push_back(std::move(text)); };
  if (!c.admin_listen.empty()) {
    size_t colon = c.admin_listen.rfind(':');
    std::string_view port_text = colon == std::string::npos
                                     ? std::string_view{}
                                     : std::string_view(c.admin_listen).substr(colon + 1);
    uint64_t port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (colon == std::string::npos || colon == 0 || port_text.empty() || ec != std::errc() ||
        end != port_text.data() + port_text.size() || port > 65535) {
      problem("--admin-listen: expected ADDR:PORT, got '" + c.admin_listen + "'");
    } else {
      c.admin_host = c.admin_listen.substr(0, colon);
      if (c.admin_host.size() > 2 && c.admin_host.front() == '[' && c.admin_host.back() == ']')
        c.admin_host = c.admin_host.substr(1, c.admin_host.size() - 2);
      c.admin_port = uint16_t(port);
    }
  }
  c.allowed_origins.clear();
  for (std::string_view rest = t.origins; !rest.empty();) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) c.allowed_origins.emplace_back(item);
  }
  c.slow_consumer =
      t.slow == "drop" ? slow_consumer_policy::drop : slow_consumer_policy::disconnect;
  c.permessage_deflate = t.deflate == "on";
  c.mode = t.mode == "wse" ? server_mode::wse : server_mode::echo;
  c.inbound = t.inbound == "echo"    ? inbound_policy::echo
              : t.inbound == "log"   ? inbound_policy::log
              : t.inbound == "redis" ? inbound_policy::redis
                                     : inbound_policy::drop;
  c.redis_pattern_mode = t.redis_subscribe == "pattern";
  bool redis = !c.redis_url.empty() || !c.redis_cluster.empty();
  if (c.inbound == inbound_policy::redis && !redis)
    problem("--inbound redis needs --redis-url or --redis-cluster");
  if (!c.redis_url.empty() && !c.redis_cluster.empty())
    problem("--redis-url and --redis-cluster: give one of them");
  if (redis && c.mode != server_mode::wse) problem("--redis-url / --redis-cluster need --mode wse");
  if (!c.redis_cluster.empty() && c.redis_pattern_mode)
    problem("--redis-subscribe pattern: a cluster's sharded pub/sub has no patterns");
  std::string why;
  if (in.resolve_redis && !c.redis_url.empty() &&
      !redis::parse_endpoint(c.redis_url, result.redis_endpoint, why))
    problem("--redis-url: " + why);
  if (in.resolve_redis && !c.redis_cluster.empty() &&
      !redis::parse_cluster(c.redis_cluster, result.redis_cluster, why))
    problem("--redis-cluster: " + why);
  if (!c.fault_inject.empty() && !parse_fault_plan(c.fault_inject, &why))
    problem("--fault-inject: " + why);
  if (c.redis_prefix.empty() || c.redis_prefix.size() > 200)
    problem("--redis-prefix: 1 to 200 bytes");
  if (c.tls_cert_file.empty() != c.tls_key_file.empty())
    problem("--tls-cert-file and --tls-key-file go together");
  if (!c.tls_ca_file.empty() && c.tls_cert_file.empty())
    problem("--tls-ca-file needs --tls-cert-file and --tls-key-file");
  if (c.mode != server_mode::wse) {
    if (c.recovery) problem("--recovery needs --mode wse");
    if (c.presence) problem("--presence needs --mode wse");
    if (c.e2e) problem("--e2e needs --mode wse");
    if (!c.signing_key_file.empty()) problem("--signing-key-file needs --mode wse");
  }
}

// --check-config: the files and keys the settings name, read as the server would read them
// (never printed).
void check_files(const server_config& c, const config_input& in,
                 std::vector<std::string>& problems) {
  auto key_file = [&](const char* flag, const std::string& file, size_t min_bytes) {
    std::string why;
    if (!file.empty() && !load_key_file(flag, file, min_bytes, why)) problems.push_back(why);
  };
  auto readable = [&](const char* flag, const std::string& file) {
    if (file.empty()) return;
    std::ifstream f(file, std::ios::binary);
    char byte = 0;
    if (!f.is_open() || !f.get(byte))
      problems.push_back(std::string(flag) + " " + file +
                         ": cannot read the file (or it is empty)");
  };
  if (!c.tls_cert_file.empty() && !c.tls_key_file.empty()) {
    std::string why;  // as the server loads them: the key must match the certificate
    if (!tls_context::load(tls_files{c.tls_cert_file, c.tls_key_file, c.tls_ca_file}, &why))
      problems.push_back("TLS: " + why);
  } else {
    readable("--tls-cert-file", c.tls_cert_file);
    readable("--tls-key-file", c.tls_key_file);
    readable("--tls-ca-file", c.tls_ca_file);
  }
  if (c.mode != server_mode::wse) return;
  key_file("--api-key-file", c.api_key_file, api_key_bytes_min);
  key_file("--signing-key-file", c.signing_key_file, signing_key_bytes_min);
  if (c.insecure_no_auth) return;
  auto alg = auth::parse_alg(c.jwt_alg);
  if (alg && !auth::is_hmac(*alg)) {
    if (c.jwt_public_key_file.empty()) {
      problems.push_back("--jwt-alg " + c.jwt_alg + " needs --jwt-public-key-file");
    } else if (auto pem = auth::load_public_key_file(c.jwt_public_key_file); !pem) {
      problems.push_back("--jwt-public-key-file " + c.jwt_public_key_file + ": " +
                         std::string(auth::name_of(pem.error())));
    }
    return;
  }
  key_file("--jwt-secret-file", c.jwt_secret_file, auth::hmac_secret_bytes_min);
  key_file("--jwt-previous-secret-file", c.jwt_previous_secret_file, auth::hmac_secret_bytes_min);
  if (c.jwt_secret_file.empty()) {
    auto secret = in.env ? in.env(c.jwt_secret_env) : std::nullopt;
    if (!secret || secret->empty())
      problems.push_back("no JWT secret: set " + c.jwt_secret_env +
                         " or --jwt-secret-file (or --jwt-alg RS256/ES256 with "
                         "--jwt-public-key-file, or --insecure-no-auth)");
    else if (secret->size() < auth::hmac_secret_bytes_min)
      problems.push_back(c.jwt_secret_env + ": the secret must be at least " +
                         std::to_string(auth::hmac_secret_bytes_min) + " bytes");
  }
}

const char* source_name(setting_source s) {
  switch (s) {
    case setting_source::flag:
      return "flag";
    case setting_source::env:
      return "env";
    case setting_source::file:
      return "file";
    case setting_source::default_value:
      break;
  }
  return "default";
}

// An option added without a printer: its last result or its default, quoted unless a number.
std::string generic_value(const CLI::Option* o) {
  if (is_flag(o))
    return o->count() > 0 && flag_text(o->results().back()) == "true" ? "true" : "false";
  std::string v = o->count() > 0 ? o->results().back() : o->get_default_str();
  bool number = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
  return number ? v : quote(v);
}

// Whether CLI11's reader gives the printed value back as it is (it knows no escapes and reads
// '#' as a comment anywhere).
bool readable_back(std::string_view v) {
  if (v.find_first_of("#\n") != std::string_view::npos) return false;
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\''))
    return v.substr(1, v.size() - 2).find(v.front()) == std::string_view::npos;
  return true;
}

// --print-config: every setting, grouped as in --help, as a file that --config reads back.
std::string print_config(const table& t, const config_input& in,
                         const std::map<const CLI::Option*, setting_source>& src) {
  std::string out = "# wsed " WSED_VERSION
                    " effective configuration (--print-config); read back with --config FILE.\n"
                    "# Precedence: flag > env (WSED_<FLAG>) > file > default. Masked values "
                    "(***) are not the real ones.\n";
  if (!t.config_file.empty()) out += "# Read from --config " + mask_secrets(t.config_file) + "\n";
  for (const std::string& group : t.app.get_groups()) {
    if (group.empty()) continue;
    bool header = false;
    for (const CLI::Option* o : t.app.get_options()) {
      if (o->get_group() != group || !is_setting(t, o)) continue;
      if (!header) out += "\n# " + group + "\n";
      header = true;
      auto shown = t.shown.find(o);
      std::string v = mask_secrets(shown != t.shown.end() ? shown->second() : generic_value(o));
      auto s = src.find(o);
      setting_source from = s == src.end() ? setting_source::default_value : s->second;
      std::string line = o->get_lnames().front() + " = " + v;
      if (shown == t.shown.end() && o->count() == 0 && o->get_default_str().empty() && !is_flag(o))
        line = "# " + o->get_lnames().front() + ": not set (its default has no text)";
      else if (!readable_back(v))
        line = "# " + o->get_lnames().front() +
               ": not representable in the file (a #, a newline "
               "or both quote characters): give it by flag or environment";
      if (line.size() < 40) line.resize(40, ' ');
      out += line + "  # " + source_name(from);
      if (from == setting_source::env) out += " " + o->get_envname();
      out += "\n";
    }
  }
  const server_config& c = t.c;
  out += "\n# Secrets (never printed):\n";
  auto secret_line = [&](const std::string& env, const std::string& file, const char* what) {
    if (!file.empty()) {
      out += "#   " + std::string(what) + ": file " + mask_secrets(file) + "\n";
      return;
    }
    auto v = in.env ? in.env(env) : std::nullopt;
    out += "#   " + std::string(what) + ": environment " + env +
           (v && !v->empty() ? " (set, " + std::to_string(v->size()) + " bytes)" : " (not set)") +
           "\n";
  };
  secret_line(c.jwt_secret_env, c.jwt_secret_file, "JWT secret");
  secret_line(c.jwt_previous_secret_env, c.jwt_previous_secret_file, "previous JWT secret");
  return out;
}

// roff: a backslash is \e, a line starting with . or ' is protected by \&.
std::string roff(std::string_view text) {
  std::string out;
  for (char ch : text) {
    if (ch == '\\')
      out += "\\e";
    else if (ch == '-')
      out += "\\-";
    else
      out += ch;
  }
  if (!out.empty() && (out.front() == '.' || out.front() == '\'')) out.insert(0, "\\&");
  return out;
}

// wsed.1: the same table as --help, one .TP per option in its group.
std::string man_page(const table& t) {
  std::string out = ".TH WSED 1 \"\" \"wsed " WSED_VERSION "\" \"User Commands\"\n";
  out += ".SH NAME\nwsed \\- a WebSocket real\\-time server on io_uring\n";
  out +=
      ".SH SYNOPSIS\n.B wsed\n[\\fIOPTIONS\\fR]\n.br\n.B wsed gen\\-token\n"
      "\\-\\-sub \\fIUSER\\fR [\\fIOPTIONS\\fR]\n";
  out += ".SH DESCRIPTION\n" +
         roff(
             "wsed serves WebSocket connections with one shard (a thread with its own io_uring) "
             "per core: the WSE protocol with JWT authentication, topics and publishing (the "
             "default), or plain echo. Every option below may also be given as an environment "
             "variable (WSED_ and the option in upper case with _ for -, e.g. "
             "WSED_MAX_CONNECTIONS) or as a key of the --config file (the option without --). "
             "A flag wins over the environment, which wins over the file.") +
         "\n";
  out += ".PP\n" +
         roff(
             "SIZE is a number of bytes or 64KiB, 16MiB, 1GiB (K, KB and KiB all mean 1024). "
             "DURATION is 500ms, 10s, 2m, 1h or a number of seconds. A flag from the "
             "environment or the file is true/false, 1/0, yes/no or on/off.") +
         "\n";
  out += ".SH OPTIONS\n";
  for (const std::string& group : t.app.get_groups()) {
    if (group.empty()) continue;
    out += ".SS " + roff(group) + "\n";
    for (const CLI::Option* o : t.app.get_options()) {
      if (o->get_group() != group) continue;
      out += ".TP\n\\fB\\-\\-" + roff(o->get_lnames().front()) + "\\fR";
      if (!is_flag(o)) out += " \\fI" + roff(o->get_type_name()) + "\\fR";
      out += "\n" + roff(o->get_description());
      std::string def = o->get_default_str();
      if (!def.empty() && !is_flag(o)) out += " (default: " + roff(def) + ")";
      if (!o->get_envname().empty()) out += "\n.br\nEnvironment: " + roff(o->get_envname());
      out += "\n";
    }
  }
  out +=
      ".SH ENVIRONMENT\n.TP\n.B WSED_JWT_SECRET\n" +
      roff(
          "The HMAC secret (at least 32 bytes) when no --jwt-secret-file is given; another "
          "variable may be named by --jwt-secret-env (its own variable, "
          "WSED_JWT_SECRET_ENV, names that variable, it does not hold the secret).") +
      "\n.TP\n.B WSED_JWT_PREVIOUS_SECRET\n" +
      roff("The previous HMAC secret, still accepted (rotation); see --jwt-previous-secret-env.") +
      "\n";
  out += ".SH FILES\n" +
         roff(
             "The --config file is TOML: one key = value per line, # starts a comment; strings "
             "in quotes (\"16MiB\", \"127.0.0.1\"), numbers and true/false bare; lists are one "
             "comma-separated string. An unknown key is an error (exit 2). wsed --print-config "
             "writes such a file.") +
         "\n";
  out += ".SH EXIT STATUS\n" +
         roff(
             "0 after a clean shutdown (SIGINT/SIGTERM) or --help, --version, --print-config, "
             "--check-config; 1 when the server cannot start; 2 for a bad flag, variable, "
             "file or key (one line on stderr per problem).") +
         "\n";
  out += ".SH SIGNALS\n" +
         roff(
             "SIGINT and SIGTERM close every connection with 4300 and exit within "
             "--shutdown-timeout; SIGHUP reloads the JWT keys, the signing key and the TLS "
             "certificate.") +
         "\n";
  return out;
}

// Disables CLI11's own reading of the environment while the command line is parsed (it would
// also put the environment under a --config file): wsed layers it itself.
struct env_names_hidden {
  explicit env_names_hidden(CLI::App& app) {
    for (CLI::Option* o : app.get_options()) {
      names.emplace_back(o, o->get_envname());
      o->envname("");
    }
  }
  ~env_names_hidden() {
    for (auto& [o, name] : names) o->envname(name);
  }
  std::vector<std::pair<CLI::Option*, std::string>> names;
};

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

std::string format_size(uint64_t bytes) {
  static constexpr struct {
    const char* name;
    uint64_t factor;
  } units[] = {{"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"KiB", 1ull << 10}};
  for (const auto& u : units)
    if (bytes != 0 && bytes % u.factor == 0) return std::to_string(bytes / u.factor) + u.name;
  return std::to_string(bytes);
}

std::string format_duration_ms(uint64_t ms) {
  static constexpr struct {
    const char* name;
    uint64_t factor;
  } units[] = {{"h", 3600000}, {"m", 60000}, {"s", 1000}};
  if (ms == 0) return "0";
  for (const auto& u : units)
    if (ms % u.factor == 0) return std::to_string(ms / u.factor) + u.name;
  return std::to_string(ms) + "ms";
}

std::string mask_secrets(std::string_view text) {
  // Per word (split at spaces, commas and quotes): [scheme://]user:password@host... -> ***.
  std::string out;
  while (!text.empty()) {
    size_t end = text.find_first_of(" ,\"'\t\n");
    std::string_view word = text.substr(0, end);
    size_t scheme = word.find("://");
    size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
    size_t slash = word.find('/', start);
    std::string_view authority = word.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    size_t at = authority.rfind('@');
    size_t colon = authority.find(':');
    if (at != std::string_view::npos && colon != std::string_view::npos && colon < at) {
      out.append(word.substr(0, start + colon + 1));
      out.append("***");
      out.append(word.substr(start + at));
    } else {
      out.append(word);
    }
    if (end == std::string_view::npos) break;
    out.push_back(text[end]);
    text.remove_prefix(end + 1);
  }
  return out;
}

std::optional<std::string> load_key_file(const char* flag, const std::string& file,
                                         size_t min_bytes, std::string& why) {
  auto key = auth::load_hmac_secret_file(file);
  if (!key) {
    why = std::string(flag) + " " + file + ": " + std::string(auth::name_of(key.error()));
    return std::nullopt;
  }
  if (key->size() < min_bytes) {
    why = std::string(flag) + " " + file + ": the key must be at least " +
          std::to_string(min_bytes) + " bytes";
    return std::nullopt;
  }
  return std::move(*key);
}

void print_flag_error(const char* program, std::string what) {
  for (char& ch : what)
    if (ch == '\n') ch = ' ';
  std::fprintf(stderr, "%s: %s (see %s --help)\n", program, what.c_str(), program);
}

flags_result load_config(const config_input& input) {
  flags_result result;
  table t(result.config);
  build_table(t);
  name_env_vars(t);
  auto usage = [&](std::string problem) {
    result.problems.push_back(mask_secrets(problem));
    result.what = flags_result::action::exit_usage;
    return std::move(result);
  };
  try {
    env_names_hidden hidden(t.app);
    std::vector<std::string> args(input.args.rbegin(), input.args.rend());
    t.app.parse(args);
  } catch (const CLI::CallForHelp&) {
    result.output = t.app.help();
    result.what = flags_result::action::exit_ok;
    return result;
  } catch (const CLI::CallForVersion&) {
    result.output = std::string("wsed ") + WSED_VERSION + "\n";
    result.what = flags_result::action::exit_ok;
    return result;
  } catch (const CLI::ParseError& e) {
    return usage(e.what());
  }
  if (t.help_man) {
    result.output = man_page(t);
    result.what = flags_result::action::exit_ok;
    return result;
  }
  std::map<const CLI::Option*, setting_source> src;
  for (const CLI::Option* o : t.app.get_options())
    if (o->count() > 0) src[o] = setting_source::flag;
  std::vector<std::string> problems;
  read_env(t, input, src, problems);
  if (!t.config_file.empty()) read_file(t, input, src, problems);
  resolve(t, input, result, problems);
  if (t.check_config) check_files(result.config, input, problems);
  for (auto& p : problems) result.problems.push_back(mask_secrets(p));
  if (!result.problems.empty()) {
    result.what = flags_result::action::exit_usage;
    return result;
  }
  if (t.print_config) {
    result.output += print_config(t, input, src);
    result.what = flags_result::action::exit_ok;
  }
  if (t.check_config) {
    size_t counts[4] = {};
    size_t total = 0;
    for (const CLI::Option* o : t.app.get_options()) {
      if (!is_setting(t, o)) continue;
      auto s = src.find(o);
      ++counts[size_t(s == src.end() ? setting_source::default_value : s->second)];
      ++total;
    }
    result.output +=
        "ok: " + std::to_string(total) + " settings (" +
        std::to_string(counts[size_t(setting_source::flag)]) + " from flags, " +
        std::to_string(counts[size_t(setting_source::env)]) + " from the environment, " +
        std::to_string(counts[size_t(setting_source::file)]) + " from " +
        (t.config_file.empty() ? std::string("a file (none given)") : t.config_file) + ", " +
        std::to_string(counts[size_t(setting_source::default_value)]) + " defaults)\n";
    result.what = flags_result::action::exit_ok;
  }
  return result;
}

flags_result parse_flags(int argc, char** argv) {
  config_input input;
  for (int i = 1; i < argc; ++i) input.args.emplace_back(argv[i]);
  input.env = [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
  flags_result result = load_config(input);
  std::fputs(result.output.c_str(), stdout);
  std::fflush(stdout);
  for (const auto& p : result.problems) print_flag_error("wsed", p);
  return result;
}

}  // namespace wsed::engine
