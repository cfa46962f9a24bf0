// tools/wse_bench/runner.hpp: runs one tier of a scenario: spreads the connections over enough
// rings (workers) to get past RLIMIT_NOFILE, ramps them, applies the load for a window, and
// returns the figures with the client's and the server's CPU and memory.
//
// Owns: the workers of the tier (created and joined inside run_tier). Thread: the main thread.
// Must never wait without a deadline: the ramp, the hold and the window are all bounded.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tools/bench/stats.hpp"
#include "tools/wse_bench/publisher.hpp"
#include "tools/wse_bench/worker.hpp"

namespace wsed::bench {

struct runner_options {
  uint32_t threads = 1;
  std::vector<int> cpus;
  uint32_t connect_inflight = 500;  // whole process
  uint32_t source_ips = 0;          // 0: as many as the connections need (loopback only)
  uint32_t max_rings = 64;
  int server_pid = 0;
  bool loopback = true;
};

// An HTTP endpoint of a server: its address and the Host: of requests to it.
struct http_endpoint {
  sockaddr_in addr{};
  std::string host;
};

// fanout-broadcast: who publishes, where /metrics is (slow-consumer counters).
struct fanout_plan {
  publisher_config publisher;
  // /metrics of each server (fanout-multi: A, then B); slow-consumer and Redis bridge counters.
  std::vector<http_endpoint> metrics;
  // Before publishing: each of these answers GET /readyz with 200 (wsed with Redis: every wanted
  // subscription confirmed by Redis) ...
  std::vector<http_endpoint> ready;
  // ... and, when redis_wait is set, Redis counts at least redis_receivers_wanted subscribers of
  // redis_channel (PUBSUB NUMSUB, plus the clients with a pattern subscription: each instance has
  // subscribed), so seq 0 reaches all.
  bool redis_wait = false;
  sockaddr_in redis_addr{};
  std::string redis_channel;
  uint64_t redis_receivers_wanted = 0;
  double subscribe_timeout_s = 10;  // every subscription confirmed within this after the ramp
  double drain_timeout_s = 10;      // deliveries still arriving after the publisher stopped
                                    // (and at most 3 s without one)
};

// The Redis bridge counters of one wsed instance over a tier (deltas of its /metrics).
struct redis_bridge_figures {
  bool read = false;  // false: no /metrics, or no wsed_redis_* series (no bridge)
  double published = 0, dropped_buffer_full = 0, dropped_ring_full = 0, lost = 0;
  double delivered = 0, own = 0, duplicate = 0, invalid = 0, busy_retry = 0;
};

// Each counter of redis_bridge_figures: its series in /metrics (metric{label}) and its key in
// the JSON. Read, differenced and written from this one list.
struct redis_bridge_counter {
  const char* metric;
  const char* label;  // result="..."
  const char* json;
  double redis_bridge_figures::*field;
};
inline constexpr redis_bridge_counter redis_bridge_counters[] = {
    {"wsed_redis_publications_total", "result=\"published\"", "published",
     &redis_bridge_figures::published},
    {"wsed_redis_publications_total", "result=\"dropped_buffer_full\"", "dropped_buffer_full",
     &redis_bridge_figures::dropped_buffer_full},
    {"wsed_redis_publications_total", "result=\"dropped_ring_full\"", "dropped_ring_full",
     &redis_bridge_figures::dropped_ring_full},
    {"wsed_redis_publications_total", "result=\"lost\"", "lost", &redis_bridge_figures::lost},
    {"wsed_redis_received_total", "result=\"delivered\"", "received_delivered",
     &redis_bridge_figures::delivered},
    {"wsed_redis_received_total", "result=\"own\"", "received_own", &redis_bridge_figures::own},
    {"wsed_redis_received_total", "result=\"duplicate\"", "received_duplicate",
     &redis_bridge_figures::duplicate},
    {"wsed_redis_received_total", "result=\"invalid\"", "received_invalid",
     &redis_bridge_figures::invalid},
    {"wsed_redis_received_total", "result=\"busy_retry\"", "received_busy_retry",
     &redis_bridge_figures::busy_retry},
};

// The slow-consumer counters of one server over a tier.
struct server_figures {
  bool metrics_read = false;
  double slow_drop = 0;        // wsed_slow_consumer_total{action="drop"}
  double slow_disconnect = 0;  // and {action="disconnect"}
  double deliveries = 0;       // wsed_fanout_deliveries_total
  redis_bridge_figures redis;
};

struct fanout_result {
  uint32_t subscribed = 0;  // confirmed when the publisher started
  fanout_counts counts;
  uint64_t published = 0;        // in the window (publisher: taken by the server)
  uint64_t published_total = 0;  // whole run (server publishes by itself: 0, unknown)
  uint64_t sent_total = 0;
  uint64_t busy = 0;  // 503 / SERVER_BUSY refusals (backpressure, not loss)
  uint64_t deliveries_total = 0;
  double drain_s = 0;
  std::string publisher_error;
  std::vector<server_figures> servers;  // per plan.metrics endpoint, over the tier
  // Their slow-consumer and delivery counters summed (metrics_read: any server's were read).
  server_figures servers_total;
  double ready_s = 0;            // waiting for /readyz and Redis's subscribers before publishing
  std::string ready_error;       // empty: every readiness check passed
  uint64_t short_receivers = 0;  // redis publisher: answers below the receivers wanted
  uint64_t min_receivers = UINT64_MAX;  // and the fewest receivers one PUBLISH reached
};

// With two servers (job.two_servers), the figures of each one's connections: [0] server A
// (even-numbered connections), [1] server B (odd-numbered).
struct side_figures {
  uint32_t connections = 0;  // of the tier's target
  uint64_t replies = 0;      // in the window
  uint64_t reply_bytes = 0;
  uint64_t deliveries_total = 0;  // whole run, after the drain
  std::unique_ptr<latency_histogram> latency = std::make_unique<latency_histogram>();
  fanout_counts counts;
};

struct tier_spec {
  uint32_t connections = 0;
  double hold_s = 0;        // after the ramp, before any load (connection-limit: stability)
  double warmup_s = 0;      // load before the measuring window
  double window_s = 0;      // measuring window (0: no load phase)
  bool until_done = false;  // end the window once every worker's pings are done
  const fanout_plan* fanout = nullptr;  // subscribe: start the publisher after the subscriptions
};

struct tier_result {
  uint32_t target = 0;
  uint32_t rings = 0;
  uint32_t source_ips = 1;
  uint32_t opened = 0;
  uint32_t open_after_ramp = 0;
  uint32_t open_at_end = 0;
  uint32_t failed = 0;
  double ramp_s = 0;            // workers started -> every connection open or failed
  double connect_window_s = 0;  // first connect submitted -> last handshake completed
  double window_s = 0;
  uint64_t sent_msgs = 0;  // in the window
  uint64_t sent_bytes = 0;
  uint64_t replies = 0;
  uint64_t reply_bytes = 0;
  std::unique_ptr<latency_histogram> handshake_latency = std::make_unique<latency_histogram>();
  std::unique_ptr<latency_histogram> latency = std::make_unique<latency_histogram>();
  error_counts errors;
  double client_user_s = 0;  // over the window (or the ramp when there is no window)
  double client_sys_s = 0;
  double client_cores = 1;    // cores the client's rings can use
  double client_busy = 0;     // share of those cores
  double busiest_thread = 0;  // share of one core used by the busiest worker thread
  bool client_saturated = false;
  bool server_measured = false;
  double server_user_s = 0;
  double server_sys_s = 0;
  uint64_t server_rss_before_kib = 0;
  uint64_t server_rss_loaded_kib = 0;
  fanout_result fanout;
  std::array<side_figures, 2> sides;  // job.two_servers only
  bool os_limited = false;  // the client's OS (fds, ports, rings), not the server, stopped it
  std::string os_limit_message;
  std::string fatal;
};

// Direct descriptors one ring may hold (RLIMIT_NOFILE, raised to its hard limit once).
uint32_t ring_files_max();
uint32_t ports_per_source_ip();

tier_result run_tier(const runner_options& ro, job j, const tier_spec& spec);

}  // namespace wsed::bench
