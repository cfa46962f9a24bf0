// tools/wse_bench/runner.cpp: one tier of a scenario (see runner.hpp).
//
// Owns: the tier's workers and threads. Thread: the main thread. Must never wait without a
// deadline.
#include "tools/wse_bench/runner.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <thread>

#include "tools/bench/ports.hpp"

namespace wsed::bench {

namespace {

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

void sleep_s(double s) {
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

struct totals {
  uint64_t sent_msgs = 0, sent_bytes = 0, replies = 0, reply_bytes = 0;
  uint64_t replies_b = 0, reply_bytes_b = 0;
  uint64_t t_ns = 0;
  cpu_seconds client{};
  cpu_seconds server{};
};

totals take(const std::vector<std::unique_ptr<worker>>& workers, int server_pid) {
  totals t;
  t.t_ns = now_ns();
  for (auto& w : workers) {
    t.sent_msgs += w->counters.sent_msgs.load(std::memory_order_relaxed);
    t.sent_bytes += w->counters.sent_bytes.load(std::memory_order_relaxed);
    t.replies += w->counters.replies.load(std::memory_order_relaxed);
    t.reply_bytes += w->counters.reply_bytes.load(std::memory_order_relaxed);
    t.replies_b += w->counters.replies_b.load(std::memory_order_relaxed);
    t.reply_bytes_b += w->counters.reply_bytes_b.load(std::memory_order_relaxed);
  }
  t.client = own_cpu_seconds();
  if (server_pid > 0) t.server = process_cpu_seconds(server_pid).value_or(cpu_seconds{});
  return t;
}

// CPU seconds (user + sys) of one thread of this process.
double thread_cpu_s(int tid) {
  if (tid <= 0) return 0;
  auto cpu = tools::stat_cpu_seconds("/proc/self/task/" + std::to_string(tid) + "/stat");
  return cpu ? cpu->user + cpu->sys : 0;
}

std::vector<double> threads_cpu_s(const std::vector<std::unique_ptr<worker>>& workers) {
  std::vector<double> v;
  for (auto& w : workers)
    v.push_back(thread_cpu_s(w->counters.tid.load(std::memory_order_acquire)));
  return v;
}

double busiest(const std::vector<double>& before, const std::vector<double>& after, double s) {
  double top = 0;
  for (size_t i = 0; i < before.size() && i < after.size(); ++i) {
    top = std::max(top, (after[i] - before[i]) / std::max(1e-9, s));
  }
  return top;
}

uint32_t sum_open(const std::vector<std::unique_ptr<worker>>& workers) {
  uint32_t n = 0;
  for (auto& w : workers) n += w->counters.open.load(std::memory_order_relaxed);
  return n;
}

uint32_t sum_subscribed(const std::vector<std::unique_ptr<worker>>& workers) {
  uint32_t n = 0;
  for (auto& w : workers) n += w->counters.subscribed.load(std::memory_order_relaxed);
  return n;
}

uint64_t sum_replies(const std::vector<std::unique_ptr<worker>>& workers) {
  uint64_t n = 0;
  for (auto& w : workers) n += w->counters.replies.load(std::memory_order_relaxed);
  return n;
}

// A counter of the Redis bridge: the sum of its lines with `label` (the bridge is one per
// process: its series have no shard label).
std::optional<double> bridge_value(std::string_view text, std::string_view name,
                                   std::string_view label) {
  return metric_value(text, name, std::array<std::string_view, 1>{label});
}

// The slow-consumer and delivery counters of one server's /metrics (summed over its shards: the
// exposition has no total series), and its Redis bridge's (absolute values: the tier takes
// differences).
std::optional<server_figures> read_server_metrics(const http_endpoint& e) {
  auto text = http_get(e.addr, e.host, "/metrics");
  if (!text) return std::nullopt;
  using labels = std::array<std::string_view, 1>;
  server_figures m;
  m.metrics_read = true;
  m.slow_drop =
      metric_value(*text, "wsed_slow_consumer_total", labels{"action=\"drop\""}).value_or(0);
  m.slow_disconnect =
      metric_value(*text, "wsed_slow_consumer_total", labels{"action=\"disconnect\""}).value_or(0);
  m.deliveries =
      metric_value(*text, "wsed_fanout_deliveries_total", std::array<std::string_view, 0>{})
          .value_or(0);
  for (const redis_bridge_counter& c : redis_bridge_counters) {
    std::optional<double> v = bridge_value(*text, c.metric, c.label);
    m.redis.read |= v.has_value();
    m.redis.*c.field = v.value_or(0);
  }
  return m;
}

std::vector<std::optional<server_figures>> read_fanout_metrics(const fanout_plan& f) {
  std::vector<std::optional<server_figures>> v;
  for (const http_endpoint& e : f.metrics) v.push_back(read_server_metrics(e));
  return v;
}

// after - before, per server and summed into r (servers whose /metrics failed either time: not
// read).
void fanout_metrics_delta(const std::vector<std::optional<server_figures>>& before,
                          const std::vector<std::optional<server_figures>>& after,
                          fanout_result& r) {
  for (size_t k = 0; k < before.size() && k < after.size(); ++k) {
    server_figures d;
    if (before[k] && after[k]) {
      const server_figures &b = *before[k], &a = *after[k];
      d.metrics_read = true;
      d.slow_drop = a.slow_drop - b.slow_drop;
      d.slow_disconnect = a.slow_disconnect - b.slow_disconnect;
      d.deliveries = a.deliveries - b.deliveries;
      d.redis.read = a.redis.read;
      for (const redis_bridge_counter& c : redis_bridge_counters) {
        d.redis.*c.field = a.redis.*c.field - b.redis.*c.field;
      }
      server_figures& sum = r.servers_total;
      sum.metrics_read = true;
      sum.slow_drop += d.slow_drop;
      sum.slow_disconnect += d.slow_disconnect;
      sum.deliveries += d.deliveries;
    }
    r.servers.push_back(d);
  }
}

// Before the publisher: every server ready (GET /readyz answers 200) and, when asked, Redis counts
// the subscribers wanted on the channel (its own plus the clients with pattern subscriptions).
// Bounded by `until`; what did not pass is returned.
std::string wait_ready(const fanout_plan& f, uint64_t until) {
  std::string missing;
  for (const http_endpoint& e : f.ready) {
    bool ready = false;
    for (;;) {
      ready = http_get(e.addr, e.host, "/readyz", 1000).has_value();
      if (ready || now_ns() >= until) break;
      sleep_s(0.01);
    }
    if (!ready) missing += (missing.empty() ? "" : "; ") + e.host + " /readyz not 200";
  }
  if (f.redis_wait) {
    std::optional<uint64_t> n;
    for (;;) {
      auto r = redis_receivers(f.redis_addr, f.redis_channel);
      n = r ? std::optional<uint64_t>(r->channel + r->pattern_clients) : std::nullopt;
      if ((n && *n >= f.redis_receivers_wanted) || now_ns() >= until) break;
      sleep_s(0.01);
    }
    if (!n || *n < f.redis_receivers_wanted) {
      missing += (missing.empty() ? "" : "; ") + std::string("Redis: ") +
                 (n ? std::to_string(*n) : std::string("no answer")) + " subscribers of " +
                 f.redis_channel + " (want " + std::to_string(f.redis_receivers_wanted) + ")";
    }
  }
  return missing;
}

// Before a tier's ramp: the previous tier's subscriptions gone from Redis (exact subscriptions:
// the channel's subscriber count back to 0), so the check after the ramp cannot pass on an
// instance's old subscription that its unsubscribe is about to end. Bounded (3 s: another
// subscriber of the channel, or patterns only, and it just goes on).
void wait_redis_unsubscribed(const fanout_plan& f) {
  if (!f.redis_wait) return;
  uint64_t until = now_ns() + 3'000'000'000u;
  for (;;) {
    auto r = redis_receivers(f.redis_addr, f.redis_channel);
    if (!r || r->channel == 0 || now_ns() >= until) return;
    sleep_s(0.01);
  }
}

// What the publisher has had taken so far (wse: sent and not refused; final after run()).
uint64_t published_now(const publisher& p, publisher_kind kind) {
  if (kind == publisher_kind::api || kind == publisher_kind::redis) {
    return p.accepted.load(std::memory_order_relaxed);
  }
  uint64_t sent = p.sent.load(std::memory_order_relaxed);
  uint64_t no = p.busy.load(std::memory_order_relaxed) + p.refused.load(std::memory_order_relaxed);
  return sent > no ? sent - no : 0;
}

}  // namespace

uint32_t ring_files_max() {
  static uint32_t cached = [] {
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
      getrlimit(RLIMIT_NOFILE, &rl);
    }
    return static_cast<uint32_t>(std::min<rlim_t>(rl.rlim_cur, 1u << 20));
  }();
  return cached;
}

// See tools/bench/ports.hpp: a source address gets 90% of the even half of the range.
uint32_t ports_per_source_ip() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned low = 32768, high = 60999;
  in >> low >> high;
  return connect_ports_per_address(low, high);
}

tier_result run_tier(const runner_options& ro, job j, const tier_spec& spec) {
  tier_result r;
  r.target = spec.connections;
  uint32_t per_ring = ring_files_max();
  uint32_t threads = std::max<uint32_t>(1, std::min(ro.threads, std::max<uint32_t>(1, r.target)));
  uint32_t rings = std::max(threads, (r.target + per_ring - 1) / per_ring);
  r.rings = rings;
  if (rings > ro.max_rings) {
    r.os_limited = true;
    r.os_limit_message = std::to_string(r.target) + " connections need " + std::to_string(rings) +
                         " rings of " + std::to_string(per_ring) +
                         " direct descriptors (RLIMIT_NOFILE " + std::to_string(per_ring) +
                         "), over --max-rings " + std::to_string(ro.max_rings);
    return r;
  }
  uint32_t ports = ports_per_source_ip();
  uint32_t ips = ro.source_ips != 0 ? ro.source_ips : (r.target + ports - 1) / ports;
  ips = std::max<uint32_t>(1, ips);
  if (ips > 1 && !ro.loopback) {
    r.os_limited = true;
    r.os_limit_message = std::to_string(r.target) + " connections need " + std::to_string(ips) +
                         " source addresses of " + std::to_string(ports) +
                         " ports; spreading over 127.0.0.x needs a loopback server";
    return r;
  }
  if (ips > 254) {
    r.os_limited = true;
    r.os_limit_message = std::to_string(r.target) + " connections need " + std::to_string(ips) +
                         " source addresses of " + std::to_string(ports) +
                         " ports; 127.0.0.1-254 offer 254";
    return r;
  }
  r.source_ips = ips;
  j.source_ips = ips;
  j.connect_inflight = std::max<uint32_t>(1, ro.connect_inflight / rings);
  size_t cpu_count = ro.cpus.empty()
                         ? static_cast<size_t>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)))
                         : ro.cpus.size();
  r.client_cores = static_cast<double>(std::min<size_t>(rings, cpu_count));

  if (ro.server_pid > 0) {
    auto m = process_memory_kib(ro.server_pid);
    r.server_measured = m.has_value();
    if (m) r.server_rss_before_kib = m->vm_rss_kib;
  }

  if (spec.fanout != nullptr) wait_redis_unsubscribed(*spec.fanout);
  run_control control;
  std::vector<std::unique_ptr<worker>> workers;
  uint32_t first = 0;
  for (uint32_t t = 0; t < rings; ++t) {
    uint32_t share = r.target / rings + (t < r.target % rings ? 1 : 0);
    int cpu = ro.cpus.empty() ? -1 : ro.cpus[t % ro.cpus.size()];
    workers.push_back(std::make_unique<worker>(j, control, first, share, cpu));
    first += share;
  }
  if (j.two_servers) {
    r.sides[1].connections = r.target / 2;  // the odd-numbered ones
    r.sides[0].connections = r.target - r.sides[1].connections;
  }
  cpu_seconds cpu_before = own_cpu_seconds();
  uint64_t ramp_start = now_ns();
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w] { w->run(); });
  for (int spin = 0; spin < 1000; ++spin) {  // the tids, for per-thread CPU (bounded: 1 s)
    if (std::all_of(workers.begin(), workers.end(),
                    [](auto& w) { return w->counters.tid.load(std::memory_order_acquire) != 0; })) {
      break;
    }
    sleep_s(0.001);
  }
  std::vector<double> threads_before = threads_cpu_s(workers);
  uint64_t ramp_deadline = ramp_start + j.ramp_timeout_ns + 5'000'000'000u;
  while (now_ns() < ramp_deadline) {
    bool done = std::all_of(workers.begin(), workers.end(), [](auto& w) {
      return w->counters.ramp_done.load(std::memory_order_acquire);
    });
    if (done) break;
    sleep_s(0.002);
  }
  r.ramp_s = static_cast<double>(now_ns() - ramp_start) / 1e9;
  r.open_after_ramp = sum_open(workers);
  cpu_seconds cpu_ramp = own_cpu_seconds();
  std::vector<double> threads_ramp = threads_cpu_s(workers);
  uint64_t first_connect = UINT64_MAX, last_open = 0;
  for (auto& w : workers) {
    uint64_t f = w->counters.first_connect_ns.load(std::memory_order_relaxed);
    if (f != 0) first_connect = std::min(first_connect, f);
    last_open = std::max(last_open, w->counters.last_open_ns.load(std::memory_order_relaxed));
  }
  r.connect_window_s =
      last_open > first_connect ? static_cast<double>(last_open - first_connect) / 1e9 : 0;
  if (spec.hold_s > 0) sleep_s(spec.hold_s);

  // fanout: every open subscriber confirmed, then the publisher starts (seq 0 reaches them all).
  const fanout_plan* fp = spec.fanout;
  std::vector<std::optional<server_figures>> metrics_before;
  std::unique_ptr<publisher> pub;
  std::atomic<bool> pub_stop{false};
  std::thread pub_thread;
  if (fp != nullptr) {
    metrics_before = read_fanout_metrics(*fp);
    uint64_t until = now_ns() + static_cast<uint64_t>(fp->subscribe_timeout_s * 1e9);
    while (now_ns() < until && sum_subscribed(workers) < sum_open(workers)) sleep_s(0.002);
    r.fanout.subscribed = sum_subscribed(workers);
    uint64_t ready_start = now_ns();
    r.fanout.ready_error =
        wait_ready(*fp, ready_start + static_cast<uint64_t>(fp->subscribe_timeout_s * 1e9));
    r.fanout.ready_s = static_cast<double>(now_ns() - ready_start) / 1e9;
    if (fp->publisher.kind != publisher_kind::server) {
      publisher_config pc = fp->publisher;
      pc.subscribers = std::max<uint64_t>(1, r.fanout.subscribed);
      pc.delivered = [&workers] { return sum_replies(workers); };
      pub = std::make_unique<publisher>(pc);
      if (pub->open(5000)) {
        pub_thread = std::thread([&] { pub->run(pub_stop, 5000); });
      } else {
        r.fanout.publisher_error = pub->error;
      }
    }
  }
  uint64_t published_before = 0;

  bool loaded = j.load != load_kind::none && spec.window_s > 0;
  if (loaded) {
    control.current.store(phase::run, std::memory_order_release);
    if (spec.warmup_s > 0) sleep_s(spec.warmup_s);
    control.measuring.store(true, std::memory_order_relaxed);
    if (pub) published_before = published_now(*pub, fp->publisher.kind);
    totals before = take(workers, ro.server_pid);
    std::vector<double> threads_start = threads_cpu_s(workers);
    uint64_t end = before.t_ns + static_cast<uint64_t>(spec.window_s * 1e9);
    while (now_ns() < end) {
      if (spec.until_done && std::all_of(workers.begin(), workers.end(), [](auto& w) {
            return w->counters.load_done.load(std::memory_order_acquire);
          })) {
        break;
      }
      sleep_s(std::min(0.005, spec.window_s / 20));
    }
    totals after = take(workers, ro.server_pid);
    r.busiest_thread = busiest(threads_start, threads_cpu_s(workers),
                               static_cast<double>(after.t_ns - before.t_ns) / 1e9);
    control.measuring.store(false, std::memory_order_relaxed);
    if (pub) r.fanout.published = published_now(*pub, fp->publisher.kind) - published_before;
    r.window_s = static_cast<double>(after.t_ns - before.t_ns) / 1e9;
    r.sent_msgs = after.sent_msgs - before.sent_msgs;
    r.sent_bytes = after.sent_bytes - before.sent_bytes;
    r.replies = after.replies - before.replies;
    r.reply_bytes = after.reply_bytes - before.reply_bytes;
    r.sides[1].replies = after.replies_b - before.replies_b;
    r.sides[1].reply_bytes = after.reply_bytes_b - before.reply_bytes_b;
    r.sides[0].replies = r.replies - r.sides[1].replies;
    r.sides[0].reply_bytes = r.reply_bytes - r.sides[1].reply_bytes;
    r.client_user_s = after.client.user - before.client.user;
    r.client_sys_s = after.client.sys - before.client.sys;
    r.server_user_s = after.server.user - before.server.user;
    r.server_sys_s = after.server.sys - before.server.sys;
    r.client_busy =
        (r.client_user_s + r.client_sys_s) / std::max(1e-9, r.window_s) / r.client_cores;
  } else {
    r.client_user_s = cpu_ramp.user - cpu_before.user;
    r.client_sys_s = cpu_ramp.sys - cpu_before.sys;
    r.client_busy = (r.client_user_s + r.client_sys_s) / std::max(1e-9, r.ramp_s) / r.client_cores;
    r.busiest_thread = busiest(threads_before, threads_ramp, r.ramp_s);
  }
  // /proc counts in clock ticks (10 ms): a short window reads coarse, so 0.9 is the bar.
  r.client_saturated = r.client_busy > 0.9 || r.busiest_thread > 0.9;
  if (r.server_measured) {
    auto m = process_memory_kib(ro.server_pid);
    if (m) r.server_rss_loaded_kib = m->vm_rss_kib;
  }
  if (fp != nullptr) {
    // The publisher stops; the server's answers still owed come in; then the deliveries still on
    // their way (bounded: until every subscriber has them all, or none arrived for 3 s).
    if (pub_thread.joinable()) {
      pub_stop.store(true, std::memory_order_release);
      pub_thread.join();
      r.fanout.publisher_error = pub->error;
      r.fanout.published_total = pub->accepted.load();
      r.fanout.sent_total = pub->sent.load();
      r.fanout.busy = pub->busy.load();
      r.fanout.short_receivers = pub->short_receivers.load();
      r.fanout.min_receivers = pub->min_receivers.load();
      control.ticks_accepted.store(r.fanout.published_total, std::memory_order_release);
    } else if (fp->publisher.kind != publisher_kind::server) {
      control.ticks_accepted.store(0, std::memory_order_release);
    }
    uint64_t drain_start = now_ns();
    uint64_t until = drain_start + static_cast<uint64_t>(fp->drain_timeout_s * 1e9);
    uint64_t last = sum_replies(workers), last_change = now_ns();
    uint64_t want = r.fanout.published_total * sum_subscribed(workers);
    // A server that publishes by itself never stops: nothing to drain.
    while (fp->publisher.kind != publisher_kind::server && now_ns() < until) {
      uint64_t got = sum_replies(workers);
      if (got != last) last = got, last_change = now_ns();
      if (got >= want) break;
      // No delivery for 3 s: the rest is lost (a shorter bound read a stall of a loaded box,
      // 10,000 subscribers on 2 shared cores, as 281,064 gaps).
      if (now_ns() - last_change > 3'000'000'000u) break;
      sleep_s(0.005);
    }
    r.fanout.drain_s = static_cast<double>(now_ns() - drain_start) / 1e9;
    r.fanout.deliveries_total = sum_replies(workers);
    for (auto& w : workers) {
      r.sides[1].deliveries_total += w->counters.replies_b.load(std::memory_order_relaxed);
    }
    r.sides[0].deliveries_total = r.fanout.deliveries_total - r.sides[1].deliveries_total;
    fanout_metrics_delta(metrics_before, read_fanout_metrics(*fp), r.fanout);
  }
  r.open_at_end = sum_open(workers);
  control.current.store(phase::stop, std::memory_order_release);
  for (auto& t : running) t.join();

  for (auto& w : workers) {
    r.errors.add(w->errors);
    r.handshake_latency->merge(w->handshake_latency);
    r.latency->merge(w->latency);
    r.latency->merge(w->latency_b);
    r.sides[0].latency->merge(w->latency);
    r.sides[1].latency->merge(w->latency_b);
    r.sides[0].counts.add(w->fanout);
    r.sides[1].counts.add(w->fanout_b);
    r.opened += w->counters.opened.load(std::memory_order_relaxed);
    r.failed += w->counters.failed.load(std::memory_order_relaxed);
    r.fanout.counts.add(w->fanout);
    r.fanout.counts.add(w->fanout_b);
    if (r.fatal.empty()) r.fatal = w->fatal;
  }
  if (r.errors.os_limit != 0) {
    r.os_limited = true;
    r.os_limit_message = std::to_string(r.errors.os_limit) +
                         " connections refused by the client's OS (" + r.errors.os_limit_detail +
                         "), not by the server";
  }
  workers.clear();  // frees the tier's memory before the next one
  return r;
}

}  // namespace wsed::bench
