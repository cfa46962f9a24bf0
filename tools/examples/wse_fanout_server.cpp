// tools/examples/wse_fanout_server.cpp: the reference's fan-out benchmark server written on wsed's
// C++ API: every connection is subscribed to `bench_topic` when it connects, and one publisher
// thread publishes fanout_tick messages with a dense p.seq as fast as the server takes them (or
// at --rate per second), like WSE's bench_fanout_server.py. Measured with
// `wse-bench --test fanout-broadcast --publisher server` (also with --protocol raw).
//
//   build/tools/wse_fanout_server [--port N] [--workers N] [--rate N] [--seconds N]
//
// Without WSED_JWT_SECRET every connection is accepted as user "anonymous" (raw clients need no
// token); with it, upgrades need a JWT signed with that secret. The publisher runs on its own
// thread (not a shard): wse_app::publish frames each tick once and queues it for the shards that
// have subscribers; it paces itself on the bytes queued to the sockets (server::
// outbound_queued_bytes), and when an inbox is full (publish_status::busy) the same seq is
// retried, so the sequence stays dense and no reader that keeps up is cut as a slow consumer.
// Prints the publications made when it stops (SIGINT/SIGTERM or --seconds).
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

#include "auth/jwt.hpp"
#include "auth/keys.hpp"
#include "engine/server.hpp"
#include "engine/wse_app.hpp"
#include "tools/bench/fanout.hpp"

namespace {

using namespace wsed;

constexpr std::string_view bench_topic = "bench_topic";

class autosubscribe_handler final : public engine::wse_handler {
 public:
  void attach(engine::wse_app& app) { app_ = &app; }
  void on_connect(const engine::wse_user&, engine::wse_conn conn) override {
    const std::string_view topics[] = {bench_topic};
    app_->subscribe(conn, topics);
  }
  void on_message(engine::wse_conn, const engine::wse_app_message&) override {}

 private:
  engine::wse_app* app_ = nullptr;
};

uint64_t wall_us() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
}

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

// Bytes that may wait in the outbound queues per subscription before the publisher pauses: a
// quarter of --max-outbound-bytes (1 MiB), so a reader that keeps up is never cut as a slow
// consumer, and four times the shards' 64 KiB send threshold under a backlog.
constexpr uint64_t backlog_per_subscriber_bytes = 256 << 10;
// Publications waiting in the shards' inboxes before the publisher pauses (each becomes one
// frame per subscriber once drained). 64 starved the shards' coalescing: 4.6M / 3.1M / 3.1M
// deliveries/s at 100 / 1,000 / 10,000 subscribers against 9.8-10.7M / 7.5-9.0M / 3.5-6.0M
// (perf/RESULTS.md).
constexpr uint64_t inbox_backlog_max = 1024;

// Publishes until stop; returns the publications made (seq 0 .. n-1). "As fast as the server
// takes them": when the bytes queued to the sockets exceed the backlog, it waits for them.
uint64_t publish_ticks(engine::server& srv, engine::wse_app& app, uint64_t rate,
                       const std::atomic<bool>& stop, uint64_t* busy_retries) {
  std::string tick;
  uint64_t seq = 0;
  const uint64_t start_ns = monotonic_ns();
  while (!stop.load(std::memory_order_relaxed)) {
    if (rate) {  // paced: publication n is due at start + n / rate
      uint64_t due = start_ns + seq * 1000000000 / rate;
      uint64_t now = monotonic_ns();
      if (now < due) {
        uint64_t wait_ns = due - now;
        if (wait_ns > 50000) usleep(useconds_t(wait_ns / 1000));
        continue;
      }
    }
    uint64_t backlog_max = (app.subscription_count() + 1) * backlog_per_subscriber_bytes;
    if (srv.inbox_backlog() > inbox_backlog_max || srv.outbound_queued_bytes() > backlog_max) {
      usleep(20);
      continue;
    }
    tick.clear();
    bench::append_fanout_tick(tick, seq, wall_us());
    if (app.publish(bench_topic, tick) == engine::publish_status::busy) {
      ++*busy_retries;
      usleep(50);  // an inbox is full: let the shards drain, then the same seq again
      continue;
    }
    ++seq;
  }
  return seq;
}

}  // namespace

int main(int argc, char** argv) {
  engine::server_config config;
  config.port = 5006;
  config.workers = 2;
  config.ping_interval_ms = 0;
  config.quiet = true;
  uint64_t rate = 0;
  uint64_t seconds = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view flag = argv[i];
    long long v = std::atoll(argv[i + 1]);
    if (flag == "--port") {
      config.port = uint16_t(v);
    } else if (flag == "--workers") {
      config.workers = uint32_t(v);
    } else if (flag == "--rate") {
      rate = uint64_t(v);
    } else if (flag == "--seconds") {
      seconds = uint64_t(v);
    } else {
      std::fprintf(stderr, "wse_fanout_server: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0 || config.workers == 0 || config.workers > 64) {
    std::fprintf(
        stderr, "usage: wse_fanout_server [--port N] [--workers 1..64] [--rate N] [--seconds N]\n");
    return 2;
  }

  engine::wse_app_options options;
  options.shards = config.workers;
  options.ping_interval_ms = 0;
  options.inbound_rate = 0;
  if (auto secret = auth::load_env("WSED_JWT_SECRET")) {
    auth::verifier_config vc;
    vc.hmac_secret = std::move(*secret);
    auto verifier = auth::verifier::build(vc);
    if (!verifier) {
      std::fprintf(stderr, "wse_fanout_server: %s\n",
                   std::string(auth::name_of(verifier.error())).c_str());
      return 2;
    }
    options.verifier = std::move(*verifier);
  }
  autosubscribe_handler handler;
  engine::wse_app app(std::move(options), handler);
  handler.attach(app);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // the shard and publisher threads inherit it

  engine::server srv(config, app);
  try {
    srv.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wse_fanout_server: cannot start: %s\n", e.what());
    return 1;
  }
  std::printf("wse_fanout_server listening on ws://%s:%u/ (%u workers, topic %s)\n",
              config.host.c_str(), srv.port(), srv.workers(), std::string(bench_topic).c_str());
  std::fflush(stdout);

  std::atomic<bool> stop{false};
  uint64_t published = 0, busy = 0;
  std::thread publisher([&] { published = publish_ticks(srv, app, rate, stop, &busy); });
  timespec limit{time_t(seconds ? seconds : 86400 * 365), 0};
  sigtimedwait(&signals, nullptr, &limit);
  stop.store(true);
  publisher.join();
  srv.stop();
  srv.join();
  std::printf("published %llu (%llu busy retries)\n", static_cast<unsigned long long>(published),
              static_cast<unsigned long long>(busy));
  return 0;
}
