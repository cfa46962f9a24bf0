// engine/main.cpp: the wsed binary: flags, then the server library (echo_app or wse_app), then
// waiting for a signal; or `wsed gen-token`, which prints a JWT and exits. Main thread only;
// loads the JWT secret (file or environment, never argv) before any shard starts.
// SIGINT/SIGTERM/SIGPIPE/SIGHUP are blocked in every thread and taken here with sigtimedwait, so no
// handler ever runs inside a shard.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "auth/jwt.hpp"
#include "auth/keys.hpp"
#include "engine/flags.hpp"
#include "engine/log.hpp"
#include "engine/notify.hpp"
#include "engine/redis_bridge.hpp"
#include "engine/server.hpp"
#include "engine/wse_app.hpp"
#include "engine/wse_inbound.hpp"
#include "proto/wse_builder.hpp"

namespace {

using namespace wsed;

// The HMAC secret from the file when one is given, else from the environment variable. Fills
// why with one line and returns nullopt when it cannot be read. Never prints the secret.
std::optional<std::string> load_secret(const std::string& file, const std::string& env,
                                       std::string& why) {
  if (!file.empty()) {
    auto r = auth::load_hmac_secret_file(file);
    if (!r) {
      why = "--jwt-secret-file " + file + ": " + std::string(auth::name_of(r.error()));
      return std::nullopt;
    }
    return std::move(*r);
  }
  auto r = auth::load_env(env.c_str());
  if (!r) {
    why = "no JWT secret: set " + env +
          " or pass --jwt-secret-file (or --jwt-alg RS256/ES256 with --jwt-public-key-file, or "
          "--insecure-no-auth) (" +
          std::string(auth::name_of(r.error())) + ")";
    return std::nullopt;
  }
  return std::move(*r);
}

// Reads every key the configuration names (files, environment) and builds a verifier: at
// startup and on SIGHUP. Fills why and returns nullptr on any failure.
std::shared_ptr<const auth::verifier> build_verifier(const engine::server_config& c,
                                                     std::string& why) {
  auth::verifier_config vc;
  vc.alg = *auth::parse_alg(c.jwt_alg);
  bool hmac = auth::is_hmac(vc.alg);
  if (hmac) {
    auto secret = load_secret(c.jwt_secret_file, c.jwt_secret_env, why);
    if (!secret) return nullptr;
    vc.hmac_secret = std::move(*secret);
    if (!c.jwt_previous_secret_file.empty()) {
      auto r = auth::load_hmac_secret_file(c.jwt_previous_secret_file);
      if (!r) {
        why = "--jwt-previous-secret-file " + c.jwt_previous_secret_file + ": " +
              std::string(auth::name_of(r.error()));
        return nullptr;
      }
      vc.hmac_secret_previous = std::move(*r);
    } else if (auto r = auth::load_env(c.jwt_previous_secret_env.c_str())) {
      vc.hmac_secret_previous = std::move(*r);  // optional: unset means no previous secret
    }
  } else {
    if (c.jwt_public_key_file.empty()) {
      why = "--jwt-alg " + c.jwt_alg + " needs --jwt-public-key-file (a PEM public key)";
      return nullptr;
    }
    auto pem = auth::load_public_key_file(c.jwt_public_key_file);
    if (!pem) {
      why = "--jwt-public-key-file " + c.jwt_public_key_file + ": " +
            std::string(auth::name_of(pem.error()));
      return nullptr;
    }
    vc.public_key_pem = std::move(*pem);
  }
  vc.kid = c.jwt_kid;
  vc.issuer = c.jwt_issuer;
  vc.audience = c.jwt_audience;
  vc.leeway_s = int64_t(c.jwt_leeway_ms / 1000);
  auto v = auth::verifier::build(vc);
  if (!v) {
    why = "JWT verifier: " + std::string(auth::name_of(v.error()));
    if (hmac)
      why +=
          " (HMAC secrets need at least " + std::to_string(auth::hmac_secret_bytes_min) + " bytes)";
    return nullptr;
  }
  return std::move(*v);
}

// `wsed gen-token --sub USER --ttl 1h [--jwt-secret-file PATH | env]`: prints a token.
int gen_token(int argc, char** argv) {
  CLI::App app{"wsed gen-token: print a JWT the server accepts (for testing)", "wsed gen-token"};
  std::string sub, ttl = "1h", secret_file, secret_env = "WSED_JWT_SECRET", alg_name = "HS256";
  std::string issuer, audience, private_key_file, kid;
  std::vector<std::string> topics, publish;
  app.add_option("--sub", sub, "The user id (sub claim)")->required();
  app.add_option("--ttl", ttl, "Lifetime (1h, 30m, 90s)")->capture_default_str();
  app.add_option("--jwt-secret-file", secret_file, "File holding the HMAC secret");
  app.add_option("--jwt-secret-env", secret_env, "Environment variable holding the secret")
      ->capture_default_str();
  app.add_option("--jwt-private-key-file", private_key_file,
                 "PEM private key for RS256 / ES256 (instead of a secret)");
  app.add_option("--jwt-alg", alg_name, "Algorithm")
      ->check(CLI::IsMember({"HS256", "HS384", "HS512", "RS256", "ES256"}))
      ->capture_default_str();
  app.add_option("--jwt-kid", kid, "kid header");
  app.add_option("--topics", topics,
                 "wse_topics allow globs, comma-separated (default: no wse_topics claim)")
      ->delimiter(',');
  app.add_option("--publish", publish,
                 "wse_topics publish globs: topics the holder may publish to, comma-separated")
      ->delimiter(',');
  app.add_option("--jwt-issuer", issuer, "iss claim");
  app.add_option("--jwt-audience", audience, "aud claim");
  try {
    app.parse(argc - 1, argv + 1);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    engine::print_flag_error("wsed gen-token", e.what());
    return 2;
  }
  auto ttl_ms = engine::parse_duration_ms(ttl);
  if (!ttl_ms || *ttl_ms < 1000) {
    std::fprintf(stderr, "wsed gen-token: --ttl: invalid value '%s'\n", ttl.c_str());
    return 2;
  }
  auth::jwt_alg alg = *auth::parse_alg(alg_name);
  std::string key, why;
  if (!auth::is_hmac(alg)) {
    if (private_key_file.empty()) {
      std::fprintf(stderr, "wsed gen-token: --jwt-alg %s needs --jwt-private-key-file\n",
                   alg_name.c_str());
      return 2;
    }
    auto pem = auth::load_hmac_secret_file(private_key_file);  // the file's bytes, as they are
    if (!pem) {
      std::fprintf(stderr, "wsed gen-token: --jwt-private-key-file %s: %s\n",
                   private_key_file.c_str(), std::string(auth::name_of(pem.error())).c_str());
      return 2;
    }
    key = std::move(*pem);
  } else {
    auto secret = load_secret(secret_file, secret_env, why);
    if (!secret) {
      std::fprintf(stderr, "wsed gen-token: %s\n", why.c_str());
      return 2;
    }
    key = std::move(*secret);
  }
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t iat = now.tv_sec;
  std::string claims = "{\"sub\":";
  proto::wse_append_json_string(claims, sub);
  claims += ",\"iat\":" + std::to_string(iat);
  claims += ",\"exp\":" + std::to_string(iat + int64_t(*ttl_ms / 1000));
  if (!issuer.empty()) {
    claims += ",\"iss\":";
    proto::wse_append_json_string(claims, issuer);
  }
  if (!audience.empty()) {
    claims += ",\"aud\":";
    proto::wse_append_json_string(claims, audience);
  }
  if (!topics.empty() || !publish.empty()) {
    auto list = [&](const char* name, const std::vector<std::string>& globs) {
      claims += '"';
      claims += name;
      claims += "\":[";
      for (size_t i = 0; i < globs.size(); ++i) {
        if (i) claims += ",";
        proto::wse_append_json_string(claims, globs[i]);
      }
      claims += "]";
    };
    claims += ",\"wse_topics\":{";
    if (!topics.empty()) list("allow", topics);
    if (!topics.empty() && !publish.empty()) claims += ",";
    if (!publish.empty()) list("publish", publish);
    claims += "}";
  }
  claims += "}";
  auto token = auth::mint(alg, key, claims, kid);
  if (!token) {
    std::fprintf(stderr, "wsed gen-token: %s\n", std::string(auth::name_of(token.error())).c_str());
    return 2;
  }
  std::printf("%s\n", token->c_str());
  return 0;
}

// SIGHUP: rebuild the verifier from the key files / environment and swap it in; open
// connections are untouched. On failure the current keys stay. The signing key likewise.
void reload_keys(const engine::server_config& c, engine::wse_app* wse) {
  if (wse && !c.signing_key_file.empty()) {
    std::string why;
    if (auto key = engine::load_key_file("--signing-key-file", c.signing_key_file,
                                         engine::signing_key_bytes_min, why)) {
      wse->set_signing_key(std::move(*key));
      log::info("reload", "SIGHUP: signing key reloaded", {{"what", "signing_key"}, {"ok", true}});
    } else {
      log::error("reload", "SIGHUP: " + why + "; keeping the current signing key",
                 {{"what", "signing_key"}, {"ok", false}});
    }
  }
  if (!wse || c.insecure_no_auth) {
    log::info("reload", "SIGHUP: no JWT keys to reload in this mode", {{"what", "jwt"}});
    return;
  }
  std::string why;
  auto v = build_verifier(c, why);
  if (!v) {
    wse->count_reload(false);
    log::error("reload", "SIGHUP: reload failed: " + why + "; keeping the current keys",
               {{"what", "jwt"}, {"ok", false}});
    return;
  }
  wse->set_verifier(std::move(v));
  wse->count_reload(true);  // after the swap: a scraper seeing the count sees the new keys
  log::info("reload", "SIGHUP: JWT keys reloaded", {{"what", "jwt"}, {"ok", true}});
}

// The startup event on stdout, which scripts and tests read the port from (the first
// ws:// or wss:// URL on its first line): text lines for a terminal, one JSON event otherwise.
void print_banner(const engine::server_config& c, engine::server& srv,
                  const engine::redis_bridge* bridge, const std::string& redis_where) {
  using namespace engine;
  const char* ws_scheme = srv.tls() ? "wss" : "ws";
  const char* http_scheme = srv.tls() ? "https" : "http";
  const char* mode = c.mode == server_mode::wse ? "wse" : "echo";
  auto url = [](const char* scheme, const std::string& host, unsigned port) {
    return std::string(scheme) + "://" + host + ":" + std::to_string(port) + "/";
  };
  std::string ws_url = url(ws_scheme, c.host, srv.port());
  std::string http_url = url(http_scheme, c.host, srv.port());
  std::string admin_url =
      c.admin_listen.empty() ? http_url : url("http", c.admin_host, srv.admin_port());
  std::string first = "wsed " + std::string(WSED_VERSION) + " listening on " + ws_url + " (" +
                      std::to_string(srv.workers()) + " workers, mode " + mode + ", max " +
                      std::to_string(c.connections_max) + " connections)";
  auto tls = srv.tls_context_now();
  const char* ktls = kernel_tls_available() ? "offered by this kernel, not used" : "not offered";
  bool publish = c.mode == server_mode::wse && !c.api_key_file.empty();
  bool token = c.mode == server_mode::wse && !c.insecure_no_auth;
  if (log::current_format() == log::format::json) {
    log::emit_to(STDOUT_FILENO, log::level::info, "listening", first,
                 {{"url", ws_url},
                  {"version", WSED_VERSION},
                  {"workers", srv.workers()},
                  {"mode", mode},
                  {"connections_max", c.connections_max},
                  {"demo_url", http_url},
                  {"metrics_url", admin_url + "metrics"},
                  {"tls_subject", tls ? tls->subject() : std::string()},
                  {"tls_client_certificates", tls && tls->client_certificates()},
                  {"redis", bridge ? redis_where : std::string()},
                  {"redis_prefix", bridge ? c.redis_prefix : std::string()},
                  {"instance", bridge ? bridge->instance_id() : std::string()},
                  {"publish_url", publish ? admin_url + "api/publish" : std::string()},
                  {"token_cookie", token ? c.jwt_cookie : std::string()}});
    return;
  }
  std::printf("%s\n", first.c_str());
  std::printf("  demo page: %s   metrics: %smetrics   stop: Ctrl-C\n", http_url.c_str(),
              admin_url.c_str());
  if (tls)
    std::printf("  tls: %s (TLS 1.2/1.3 in the shards over memory BIOs; kernel TLS %s)%s\n",
                tls->subject().c_str(), ktls,
                tls->client_certificates() ? "; client certificates required" : "");
  if (bridge)
    std::printf("  redis: %s (prefix %s, instance %s)\n", redis_where.c_str(),
                c.redis_prefix.c_str(), bridge->instance_id().c_str());
  if (publish)
    std::printf("  publish: POST %sapi/publish (Authorization: Bearer <key of %s>)\n",
                admin_url.c_str(), c.api_key_file.c_str());
  if (token)
    std::printf(
        "  token: wsed gen-token --sub YOU (same key settings); send it as cookie %s or "
        "Authorization: Bearer\n",
        c.jwt_cookie.c_str());
  else
    std::printf("  connect: /usr/bin/python3 -m websockets %s\n", ws_url.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace wsed::engine;
  if (argc >= 2 && std::string_view(argv[1]) == "gen-token") return gen_token(argc, argv);
  flags_result flags = parse_flags(argc, argv);
  if (flags.what == flags_result::action::exit_ok) return 0;
  if (flags.what == flags_result::action::exit_usage) return 2;
  // --quiet: at least warn. From here on, every message is a log event (engine/log.hpp).
  log::configure({.min_level = flags.config.quiet
                                   ? std::max(flags.config.log_level, log::level::warn)
                                   : flags.config.log_level,
                  .fmt = flags.config.log_format});
  if (flags.config.workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    flags.config.workers = n > 0 ? uint32_t(n) : 1;
  }

  std::unique_ptr<app_handler> app;
  std::unique_ptr<wse_inbound> inbound;
  wse_app* wse = nullptr;
  const server_config& c = flags.config;
  if (c.mode == server_mode::wse) {
    wse_app_options o = wse_options_from(c);
    const struct {
      const char* flag;
      const std::string& file;
      size_t min_bytes;
      std::string& key;
    } key_files[] = {
        {"--api-key-file", c.api_key_file, engine::api_key_bytes_min, o.api_key},
        {"--signing-key-file", c.signing_key_file, engine::signing_key_bytes_min, o.signing_key}};
    for (const auto& k : key_files) {
      if (k.file.empty()) continue;
      std::string why;
      auto key = engine::load_key_file(k.flag, k.file, k.min_bytes, why);
      if (!key) {
        log::error("config_error", why, {{"flag", k.flag}});
        return 2;
      }
      k.key = std::move(*key);
    }
    if (!c.insecure_no_auth) {
      std::string why;
      o.verifier = build_verifier(c, why);
      if (!o.verifier) {
        log::error("config_error", why);
        return 2;
      }
    }
    inbound = std::make_unique<wse_inbound>(c.inbound, c.workers);
    auto w = std::make_unique<wse_app>(std::move(o), *inbound);
    inbound->attach(*w);
    wse = w.get();
    app = std::move(w);
  } else {
    app = std::make_unique<echo_app>();
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // inherited by the shard threads

  server srv(flags.config, *app);
  if (!srv.tls_error().empty()) {
    log::error("config_error", srv.tls_error());
    return 2;
  }
  // Scale-out: the bridge reads the router the server made and is stopped after the shards
  // (they publish into it), so it is declared after srv and destroyed first.
  std::unique_ptr<redis_bridge> bridge;
  std::string redis_where;  // host:port or socket path (never the password)
  if (wse && (!c.redis_url.empty() || !c.redis_cluster.empty())) {
    redis_bridge_options ro = bridge_options_from(c);
    ro.endpoint = flags.redis_endpoint;  // parsed and resolved by parse_flags
    ro.cluster = flags.redis_cluster;
    std::random_device rd;
    char id[9];
    std::snprintf(id, sizeof id, "%08x", unsigned(rd()));
    ro.instance_id = id;
    redis_where = ro.cluster.empty() ? ro.endpoint.text() : "cluster";
    for (size_t i = 0; i < ro.cluster.size(); ++i)  // text(): host:port, never the credentials
      redis_where += (i ? "," : " ") + ro.cluster[i].text();
    bridge = std::make_unique<redis_bridge>(std::move(ro), srv.fanout_hub().router(), *wse);
    wse->set_bridge(bridge.get());
    if (inbound) inbound->set_bridge(bridge.get());
    bridge->start();
  }
  try {
    srv.start();
  } catch (const std::exception& e) {
    log::error("start_failed", std::string("cannot start: ") + e.what());
    return 1;
  }
  if (log::enabled(log::level::info)) print_banner(c, srv, bridge.get(), redis_where);
  if (c.mode == server_mode::wse && c.insecure_no_auth)
    log::warn("insecure_no_auth", "--insecure-no-auth: every connection is user \"anonymous\"");
  std::string notes = srv.setup_notes();
  while (!notes.empty() && notes.back() == ' ') notes.pop_back();
  if (!notes.empty()) log::warn("setup_note", notes);

  // sd_notify (engine/notify.hpp): READY=1 once the listeners are bound and Redis is ready
  // (or --redis-timeout passed), STOPPING=1, RELOADING=1 around SIGHUP.
  service_notifier notifier(bridge.get(), c.redis_timeout_ms,
                            std::string(srv.tls() ? "wss://" : "ws://") + c.host + ":" +
                                std::to_string(srv.port()) + "/");
  for (;;) {
    timespec poll = notifier.tick();
    int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig == SIGINT || sig == SIGTERM) break;
    if (sig == SIGHUP) {
      notifier.reloading();
      reload_keys(c, wse);
      if (srv.tls()) {
        std::string why;
        if (srv.reload_tls(&why))
          log::info("reload", "SIGHUP: TLS certificate reloaded",
                    {{"what", "tls"}, {"ok", true}, {"subject", srv.tls_context_now()->subject()}});
        else
          log::error("reload", "SIGHUP: TLS reload failed: " + why + "; keeping the current one",
                     {{"what", "tls"}, {"ok", false}});
      }
      notifier.reloaded();
    }
    log::tick();  // "N similar suppressed" for the windows that ended
    if (srv.finished()) {
      log::error("shards_stopped", "every shard stopped unexpectedly");
      log::flush();
      return 1;
    }
  }
  notifier.stopping();
  log::info("shutdown", "shutting down (close 4300 to every client)");
  srv.stop();
  srv.join();
  if (bridge) bridge->stop();
  log::flush();
  return 0;
}
