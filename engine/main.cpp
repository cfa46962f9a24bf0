// engine/main.cpp: the wsed binary: flags, then the server library (echo_app or wse_app), then
// waiting for a signal; or `wsed gen-token`, which prints a JWT and exits. Main thread only;
// loads the JWT secret (file or environment, never argv) before any shard starts.
// SIGINT/SIGTERM/SIGPIPE are blocked in every thread and taken here with sigtimedwait, so no
// handler ever runs inside a shard.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <string>

#include "auth/jwt.hpp"
#include "auth/keys.hpp"
#include "engine/flags.hpp"
#include "engine/server.hpp"
#include "engine/wse_app.hpp"
#include "proto/wse_builder.hpp"

namespace {

using namespace wsed;

// The HMAC secret from the file when one is given, else from the environment variable. Prints
// one line and returns nullopt when it cannot be read. Never prints the secret.
std::optional<std::string> load_secret(const std::string& file, const std::string& env) {
  if (!file.empty()) {
    auto r = auth::load_hmac_secret_file(file);
    if (!r) {
      std::fprintf(stderr, "wsed: --jwt-secret-file %s: %s\n", file.c_str(),
                   std::string(auth::name_of(r.error())).c_str());
      return std::nullopt;
    }
    return std::move(*r);
  }
  auto r = auth::load_env(env.c_str());
  if (!r) {
    std::fprintf(stderr,
                 "wsed: no JWT secret: set %s or pass --jwt-secret-file (or --insecure-no-auth) "
                 "(%s)\n",
                 env.c_str(), std::string(auth::name_of(r.error())).c_str());
    return std::nullopt;
  }
  return std::move(*r);
}

// `wsed gen-token --sub USER --ttl 1h [--jwt-secret-file PATH | env]`: prints a token.
int gen_token(int argc, char** argv) {
  CLI::App app{"wsed gen-token: print a JWT the server accepts (for testing)", "wsed gen-token"};
  std::string sub, ttl = "1h", secret_file, secret_env = "WSED_JWT_SECRET", alg_name = "HS256";
  std::string issuer, audience;
  app.add_option("--sub", sub, "The user id (sub claim)")->required();
  app.add_option("--ttl", ttl, "Lifetime (1h, 30m, 90s)")->capture_default_str();
  app.add_option("--jwt-secret-file", secret_file, "File holding the HMAC secret");
  app.add_option("--jwt-secret-env", secret_env, "Environment variable holding the secret")
      ->capture_default_str();
  app.add_option("--jwt-alg", alg_name, "Algorithm")
      ->check(CLI::IsMember({"HS256", "HS384", "HS512"}))
      ->capture_default_str();
  app.add_option("--jwt-issuer", issuer, "iss claim");
  app.add_option("--jwt-audience", audience, "aud claim");
  try {
    app.parse(argc - 1, argv + 1);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    for (char& ch : msg)
      if (ch == '\n') ch = ' ';
    std::fprintf(stderr, "wsed gen-token: %s (see wsed gen-token --help)\n", msg.c_str());
    return 2;
  }
  auto ttl_ms = engine::parse_duration_ms(ttl);
  if (!ttl_ms || *ttl_ms < 1000) {
    std::fprintf(stderr, "wsed gen-token: --ttl: invalid value '%s'\n", ttl.c_str());
    return 2;
  }
  auto secret = load_secret(secret_file, secret_env);
  if (!secret) return 2;
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
  claims += "}";
  auto token = auth::mint(*auth::parse_alg(alg_name), *secret, claims);
  if (!token) {
    std::fprintf(stderr, "wsed gen-token: %s\n", std::string(auth::name_of(token.error())).c_str());
    return 2;
  }
  std::printf("%s\n", token->c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace wsed::engine;
  if (argc >= 2 && std::string_view(argv[1]) == "gen-token") return gen_token(argc, argv);
  flags_result flags = parse_flags(argc, argv);
  if (flags.what == flags_result::action::exit_ok) return 0;
  if (flags.what == flags_result::action::exit_usage) return 2;
  if (flags.config.workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    flags.config.workers = n > 0 ? uint32_t(n) : 1;
  }

  std::unique_ptr<app_handler> app;
  if (flags.config.mode == server_mode::wse) {
    const server_config& c = flags.config;
    wse_app_options o;
    o.cookie_name = c.jwt_cookie;
    o.allow_query_token = c.allow_query_token;
    o.inbound = c.inbound;
    o.message_bytes_max = c.message_bytes_max;
    o.shards = c.workers;
    o.ping_interval_ms = c.ping_interval_ms;
    if (!c.insecure_no_auth) {
      auto secret = load_secret(c.jwt_secret_file, c.jwt_secret_env);
      if (!secret) return 2;
      auth::verifier_config vc;
      vc.alg = *auth::parse_alg(c.jwt_alg);
      vc.hmac_secret = std::move(*secret);
      vc.issuer = c.jwt_issuer;
      vc.audience = c.jwt_audience;
      vc.leeway_s = int64_t(c.jwt_leeway_ms / 1000);
      auto v = auth::verifier::build(vc);
      if (!v) {
        std::fprintf(stderr, "wsed: JWT verifier: %s (HMAC secrets need at least %zu bytes)\n",
                     std::string(auth::name_of(v.error())).c_str(), auth::hmac_secret_bytes_min);
        return 2;
      }
      o.verifier = std::move(*v);
    }
    app = std::make_unique<wse_app>(std::move(o));
  } else {
    app = std::make_unique<echo_app>();
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // inherited by the shard threads

  server srv(flags.config, *app);
  try {
    srv.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wsed: cannot start: %s\n", e.what());
    return 1;
  }
  const server_config& c = flags.config;
  if (!c.quiet) {
    std::printf("wsed %s listening on ws://%s:%u/ (%u workers, mode %s, max %u connections)\n",
                WSED_VERSION, c.host.c_str(), srv.port(), srv.workers(),
                c.mode == server_mode::wse ? "wse" : "echo", c.connections_max);
    if (c.mode == server_mode::wse && c.insecure_no_auth)
      std::fprintf(stderr, "wsed: --insecure-no-auth: every connection is user \"anonymous\"\n");
    std::printf(
        "  connect: /usr/bin/python3 -m websockets ws://%s:%u/   metrics: "
        "http://%s:%u/metrics   stop: Ctrl-C\n",
        c.host.c_str(), srv.port(), c.host.c_str(), srv.port());
    std::fflush(stdout);
    std::string notes = srv.setup_notes();
    while (!notes.empty() && notes.back() == ' ') notes.pop_back();
    if (!notes.empty()) std::fprintf(stderr, "wsed: %s\n", notes.c_str());
  }

  timespec poll{0, 200 * 1000000};
  for (;;) {
    int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig == SIGINT || sig == SIGTERM) break;
    if (srv.finished()) {
      std::fprintf(stderr, "wsed: every shard stopped unexpectedly\n");
      return 1;
    }
  }
  if (!c.quiet) std::fprintf(stderr, "wsed: shutting down (close 4300 to every client)\n");
  srv.stop();
  srv.join();
  return 0;
}
