// engine/main.cpp: the wsed binary: flags, then the server library, then waiting for a signal.
// Main thread only. SIGINT/SIGTERM/SIGPIPE are blocked in every thread and taken here with
// sigtimedwait, so no handler ever runs inside a shard.
#include <signal.h>

#include <cstdio>
#include <exception>
#include <string>

#include "engine/flags.hpp"
#include "engine/server.hpp"

int main(int argc, char** argv) {
  using namespace wsed::engine;
  flags_result flags = parse_flags(argc, argv);
  if (flags.what == flags_result::action::exit_ok) return 0;
  if (flags.what == flags_result::action::exit_usage) return 2;

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // inherited by the shard threads

  echo_app app;
  server srv(flags.config, app);
  try {
    srv.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wsed: cannot start: %s\n", e.what());
    return 1;
  }
  const server_config& c = flags.config;
  if (!c.quiet) {
    std::printf("wsed %s listening on ws://%s:%u/ (%u workers, mode echo, max %u connections)\n",
                WSED_VERSION, c.host.c_str(), srv.port(), srv.workers(), c.connections_max);
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
