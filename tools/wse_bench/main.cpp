// tools/wse_bench/main.cpp: wse-bench, the load generator wsed's performance claims are measured
// with: the seven scenarios of the reference WSE bench clients (connection-storm, ping-latency,
// throughput, size-matrix, format-comparison, sustained-hold, connection-limit) and the Go tool's
// pingpong / echo / blast, and fanout-broadcast / broadcast-all / fanout-multi (subscribers on one
// server or two, one publisher: the HTTP API, a WSE connection, Redis or the server itself), over
// the WSE protocol (JWT cookie,
// server_ready, client_hello) or plain RFC 6455 against any echo server. Prints markdown tables
// shaped like seeds/001-004 and writes a JSON document.
//
// Owns: flags, the scenario sequence and the reports. Thread: the main thread (the load runs on
// the workers a tier creates). Must never run without a deadline: --duration is capped, every
// tier's ramp, hold and window are bounded, connection-limit takes a bounded number of steps.
// Network: the given host only, which must be in 127.0.0.0/8.
#include <arpa/inet.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <openssl/ssl.h>
#include <CLI/CLI.hpp>

#include "engine/tls.hpp"
#include "tools/bench/frames.hpp"
#include "tools/bench/jwt.hpp"
#include "tools/wse_bench/runner.hpp"

namespace {

using namespace wsed::bench;

constexpr double duration_s_max = 3600;  // perf/soak.py holds 100,000 connections 10 minutes
const std::vector<std::string> all_tests = {
    "connection-storm", "ping-latency",     "throughput",  "size-matrix", "format-comparison",
    "sustained-hold",   "connection-limit", "pingpong",    "echo",        "blast",
    "fanout-broadcast", "broadcast-all",    "fanout-multi"};
// Run only when named: they need a publisher (an API key, a WSE token, Redis, or a server
// publishing).
const std::vector<std::string> fanout_tests = {"fanout-broadcast", "broadcast-all", "fanout-multi"};

struct options {
  std::vector<std::string> tests;
  std::string protocol = "wse";
  std::string host = "127.0.0.1";
  uint16_t port = 5006;
  uint16_t port2 = 0;
  bool tls = false;         // --tls: every WebSocket connection (and the upgrade) over TLS
  std::string tls_ca_file;  // verify the server's certificate against it (empty: no check)
  std::string path = "/wse";
  std::string secret = "bench-secret-key-for-testing-only";
  std::string sub = "bench-user";
  bool token_per_connection = false;
  std::vector<uint32_t> tiers = {100, 1000};
  double duration_s = 5;
  uint32_t size_bytes = 64;
  std::vector<uint32_t> sizes = {64, 256, 1024, 4096, 16384, 65536};
  uint32_t window = 16;
  uint32_t stream_window_bytes = 256 * 1024;
  uint32_t pings = 50;
  double ping_interval_s = 0;  // 0: min(5 s, duration / 3)
  uint32_t max_conns = 100000;
  uint32_t limit_start = 1000;
  double ramp_timeout_s = 30;
  bool print_token = false;
  std::string json_path;
  // fanout-broadcast / broadcast-all
  std::string publisher = "api";
  std::string api_key_file;
  std::string api_key;
  std::string topic = "bench_topic";
  uint32_t publish_batch = 100;
  uint32_t publish_inflight = 8;
  double publish_rate = 0;
  int64_t publish_window = -1;      // -1: auto (8M deliveries in flight, 16..1,000 publications)
  uint16_t api_port = 0;            // 0: --port
  uint16_t metrics_port = 0;        // 0: the API port
  uint16_t metrics_port_b = 0;      // 0: --port-b
  double subscribe_timeout_s = 10;  // after the ramp: subscriptions confirmed, then servers ready
  std::string redis_url;            // --publisher redis (and the subscribed-in-Redis check)
  std::string redis_prefix = "wse:";
  sockaddr_in redis_addr{};  // parsed from redis_url
  runner_options runner;
};

// ---- formatting ---------------------------------------------------------------------------

std::string commas(uint64_t v) {
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string si(double v) {
  char b[32];
  if (v >= 1e6) {
    std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  } else if (v >= 1e4) {
    std::snprintf(b, sizeof b, "%.0fK", v / 1e3);
  } else {
    return commas(static_cast<uint64_t>(std::llround(v)));
  }
  return b;
}

std::string ms(uint64_t ns) {
  double v = static_cast<double>(ns) / 1e6;
  char b[32];
  if (v < 10) {
    std::snprintf(b, sizeof b, "%.2f ms", v);
  } else if (v < 1000) {
    std::snprintf(b, sizeof b, "%.1f ms", v);
  } else {
    return commas(static_cast<uint64_t>(std::llround(v))) + " ms";
  }
  return b;
}

std::string fixed(double v, int digits) {
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    out += ch;
  }
  return out + "\"";
}

// A JSON object built field by field.
class json_obj {
 public:
  json_obj& num(const std::string& k, double v) {
    return raw(k, std::isfinite(v) ? fixed(v, 4) : "null");
  }
  json_obj& integer(const std::string& k, uint64_t v) { return raw(k, std::to_string(v)); }
  json_obj& str(const std::string& k, const std::string& v) { return raw(k, json_str(v)); }
  json_obj& boolean(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
  json_obj& raw(const std::string& k, const std::string& v) {
    text_ += (text_.empty() ? "" : ", ") + json_str(k) + ": " + v;
    return *this;
  }
  std::string done() const { return "{" + text_ + "}"; }

 private:
  std::string text_;
};

std::string latency_json(const latency_histogram& h) {
  auto q = [&](double p) { return static_cast<double>(h.quantile(p)) / 1e6; };
  return json_obj()
      .integer("samples", h.count())
      .num("p50", q(0.5))
      .num("p95", q(0.95))
      .num("p99", q(0.99))
      .num("p999", q(0.999))
      .num("p9999", q(0.9999))
      .num("max", static_cast<double>(h.max()) / 1e6)
      .done();
}

std::string errors_json(const error_counts& e) {
  return json_obj()
      .integer("total", e.total())
      .integer("connect", e.connect_failed)
      .integer("os_limit", e.os_limit)
      .integer("handshake", e.handshake_failed)
      .integer("auth", e.auth_failed)
      .integer("unexpected_close", e.unexpected_close)
      .integer("socket", e.socket_errors)
      .integer("protocol", e.protocol_errors)
      .integer("mismatch", e.mismatches)
      .integer("server_pings", e.server_pings)
      .integer("other_messages", e.other_messages)
      .str("first", e.first_detail)
      .done();
}

// The server's RSS growth over the tier per connection open at its end (0 when none is).
double rss_bytes_per_conn(const tier_result& r) {
  if (r.open_at_end == 0) return 0;
  return (static_cast<double>(r.server_rss_loaded_kib) -
          static_cast<double>(r.server_rss_before_kib)) *
         1024 / r.open_at_end;
}

// The fields every tier row carries. `messages` is the count the server CPU is divided by.
json_obj tier_json(const tier_result& r, uint64_t messages) {
  json_obj o;
  o.integer("connections", r.target)
      .integer("opened", r.opened)
      .integer("failed", r.failed)
      .integer("open_after_ramp", r.open_after_ramp)
      .integer("open_at_end", r.open_at_end)
      .integer("rings", r.rings)
      .integer("source_ips", r.source_ips)
      .num("ramp_s", r.ramp_s)
      .num("connect_window_s", r.connect_window_s)
      .num("window_s", r.window_s)
      .integer("sent_msgs", r.sent_msgs)
      .integer("sent_bytes", r.sent_bytes)
      .integer("replies", r.replies)
      .integer("reply_bytes", r.reply_bytes)
      .raw("handshake_ms", latency_json(*r.handshake_latency))
      .raw("latency_ms", latency_json(*r.latency))
      .raw("errors", errors_json(r.errors))
      .raw("client_cpu", json_obj()
                             .num("user_s", r.client_user_s)
                             .num("sys_s", r.client_sys_s)
                             .num("cores", r.client_cores)
                             .num("busy", r.client_busy)
                             .num("busiest_thread", r.busiest_thread)
                             .boolean("saturated", r.client_saturated)
                             .done())
      .boolean("os_limited", r.os_limited)
      .str("os_limit", r.os_limit_message);
  if (r.server_measured) {
    double per = messages ? 1e6 / static_cast<double>(messages) : 0;
    o.raw("server", json_obj()
                        .num("user_s", r.server_user_s)
                        .num("sys_s", r.server_sys_s)
                        .num("user_us_per_msg", r.server_user_s * per)
                        .num("sys_us_per_msg", r.server_sys_s * per)
                        .integer("rss_before_kib", r.server_rss_before_kib)
                        .integer("rss_loaded_kib", r.server_rss_loaded_kib)
                        .num("rss_bytes_per_conn", rss_bytes_per_conn(r))
                        .done());
  }
  return o;
}

// One line under a table per tier: client CPU (and the saturation warning), server CPU and RSS.
std::string tier_notes(const std::string& label, const tier_result& r, uint64_t messages) {
  std::string s = "- " + label + ": client CPU " + fixed(100 * r.client_busy, 0) + "% of " +
                  fixed(r.client_cores, 0) + " core(s), busiest thread " +
                  fixed(100 * r.busiest_thread, 0) + "%";
  if (r.client_saturated) s += " — **client saturated: figures are a floor for the server**";
  if (r.server_measured) {
    if (messages != 0) {
      s += "; server CPU/msg user " + fixed(r.server_user_s * 1e6 / messages, 2) + " us, sys " +
           fixed(r.server_sys_s * 1e6 / messages, 2) + " us";
    }
    if (r.open_at_end != 0) {
      s += "; server RSS " + commas(r.server_rss_loaded_kib) + " KiB (" +
           fixed(rss_bytes_per_conn(r), 0) + " B/conn)";
    }
  }
  if (r.os_limited) s += "; **OS limit: " + r.os_limit_message + "**";
  if (r.errors.total() != 0) s += "; first error: " + r.errors.first_detail;
  if (!r.fatal.empty()) s += "; worker setup failed: " + r.fatal;
  return s + "\n";
}

// ---- scenarios ----------------------------------------------------------------------------

struct section {
  std::string name;
  std::string markdown;
  std::vector<std::string> rows;  // JSON objects
  std::string summary_json = "{}";
  uint64_t errors = 0;  // counted toward the exit code
};

struct context {
  options opt;
  job base;
  bool wse = false;
};

double warmup_for(const options& o) {
  return std::min(1.0, o.duration_s * 0.2);
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

job stream_job(const context& cx, std::vector<uint8_t> payload, wsed::proto::ws_opcode opcode) {
  job j = cx.base;
  j.load = load_kind::stream;
  j.payload = std::move(payload);
  j.opcode = opcode;
  size_t frame = j.payload.size() + 14;
  j.window_msgs =
      cx.wse ? 0 : static_cast<uint32_t>(std::max<size_t>(2, cx.opt.stream_window_bytes / frame));
  return j;
}

uint64_t counted(const context& cx, const tier_result& r) {
  return cx.wse ? r.sent_msgs : r.replies;
}

tier_result run(const context& cx, const job& j, const tier_spec& spec) {
  tier_result r = run_tier(cx.opt.runner, j, spec);
  std::fprintf(stderr, "wse-bench: tier %u: %u opened, %u failed, %" PRIu64 " errors, %.2f s\n",
               r.target, r.opened, r.failed, r.errors.total(), r.ramp_s + r.window_s);
  return r;
}

section connection_storm(const context& cx) {
  section s;
  s.name = "connection-storm";
  s.markdown =
      "| Connections | Accept Rate | p50 | p95 | p99 | p99.9 | Max | Failed |\n"
      "|-------------|-------------|-----|-----|-----|-------|-----|--------|\n";
  std::string notes;
  for (uint32_t n : cx.opt.tiers) {
    tier_result r = run(cx, cx.base, tier_spec{n, 0, 0, 0, false});
    const auto& h = *r.handshake_latency;
    double rate = r.connect_window_s > 0 ? r.opened / r.connect_window_s : 0;
    s.markdown += "| " + commas(n) + " | " + commas(static_cast<uint64_t>(rate)) + "/s | " +
                  ms(h.quantile(0.5)) + " | " + ms(h.quantile(0.95)) + " | " +
                  ms(h.quantile(0.99)) + " | " + ms(h.quantile(0.999)) + " | " + ms(h.max()) +
                  " | " + commas(r.failed) + " |\n";
    s.rows.push_back(tier_json(r, 0).num("accept_rate", rate).done());
    notes += tier_notes(commas(n), r, 0);
    s.errors += r.errors.total();
  }
  s.markdown += "\n" + notes;
  return s;
}

section ping_latency(const context& cx) {
  section s;
  s.name = "ping-latency";
  s.markdown =
      "| Connections | Total Pings | p50 | p95 | p99 | p99.9 | p99.99 | Max | Errors |\n"
      "|-------------|-------------|-----|-----|-----|-------|--------|-----|--------|\n";
  std::string notes;
  for (uint32_t n : cx.opt.tiers) {
    job j = cx.base;
    j.load = load_kind::ping;
    j.pings_per_conn = cx.opt.pings;
    tier_result r = run(cx, j, tier_spec{n, 0, 0, cx.opt.duration_s, true});
    const auto& h = *r.latency;
    s.markdown += "| " + commas(n) + " | " + commas(r.replies) + " | " + ms(h.quantile(0.5)) +
                  " | " + ms(h.quantile(0.95)) + " | " + ms(h.quantile(0.99)) + " | " +
                  ms(h.quantile(0.999)) + " | " + ms(h.quantile(0.9999)) + " | " + ms(h.max()) +
                  " | " + commas(r.errors.total()) + " |\n";
    uint64_t expected = uint64_t{r.opened} * cx.opt.pings;
    s.rows.push_back(tier_json(r, r.replies)
                         .integer("pings_expected", expected)
                         .integer("pings", r.replies)
                         .done());
    notes += tier_notes(commas(n), r, r.replies);
    if (r.replies < expected) {
      notes += "  - " + commas(expected - r.replies) +
               " pings not answered within --duration (the window ended first)\n";
    }
    s.errors += r.errors.total();
  }
  s.markdown += "\n" + notes;
  return s;
}

section throughput(const context& cx) {
  section s;
  s.name = "throughput";
  std::string payload = trade_json();
  s.markdown =
      "Message: " + std::to_string(payload.size()) + " B JSON trading message. " +
      (cx.wse
           ? "wse: inbound only, Msg/s counts messages sent.\n\n"
           : "raw: Msg/s counts echoes received (the honest figure); latency is "
             "send -> echo under a window of " +
                 std::to_string(
                     stream_job(cx, bytes_of(payload), wsed::proto::ws_opcode::text).window_msgs) +
                 " messages per connection.\n\n");
  s.markdown +=
      "| Connections | Msg/s | MB/s | Per-conn msg/s | Sent msg/s | p50 | p99 | Errors |\n"
      "|-------------|-------|------|----------------|------------|-----|-----|--------|\n";
  std::string notes;
  for (uint32_t n : cx.opt.tiers) {
    job j = stream_job(cx, bytes_of(payload), wsed::proto::ws_opcode::text);
    tier_result r = run(cx, j, tier_spec{n, 0, warmup_for(cx.opt), cx.opt.duration_s, false});
    uint64_t msgs = counted(cx, r);
    double rate = msgs / std::max(1e-9, r.window_s);
    double sent_rate = r.sent_msgs / std::max(1e-9, r.window_s);
    double mb = rate * static_cast<double>(payload.size()) / 1e6;
    s.markdown += "| " + commas(n) + " | " + si(rate) + " | " + fixed(mb, 1) + " | " +
                  commas(static_cast<uint64_t>(rate / std::max<uint32_t>(1, r.open_at_end))) +
                  " | " + si(sent_rate) + " | " +
                  (cx.wse ? std::string("-") : ms(r.latency->quantile(0.5))) + " | " +
                  (cx.wse ? std::string("-") : ms(r.latency->quantile(0.99))) + " | " +
                  commas(r.errors.total()) + " |\n";
    s.rows.push_back(tier_json(r, msgs)
                         .num("msg_per_s", rate)
                         .num("mb_per_s", mb)
                         .num("sent_msg_per_s", sent_rate)
                         .num("per_conn_msg_per_s", rate / std::max<uint32_t>(1, r.open_at_end))
                         .integer("payload_bytes", payload.size())
                         .done());
    notes += tier_notes(commas(n), r, msgs);
    s.errors += r.errors.total();
  }
  s.markdown += "\n" + notes;
  return s;
}

std::string size_label(uint32_t b) {
  if (b >= 1024 && b % 1024 == 0) return std::to_string(b / 1024) + " KB";
  return std::to_string(b) + " B";
}

std::string tier_label(uint32_t n) {
  if (n >= 1000 && n % 1000 == 0) return std::to_string(n / 1000) + "K";
  return std::to_string(n);
}

section size_matrix(const context& cx) {
  section s;
  s.name = "size-matrix";
  std::string head = "| Size \\ Conns |", rule = "|-------------|";
  for (uint32_t n : cx.opt.tiers) {
    head += " " + tier_label(n) + " |";
    rule += "-----|";
  }
  std::string rates = "### Messages per second" + std::string(cx.wse ? " (sent)" : " (echoed)") +
                      "\n\n" + head + "\n" + rule + "\n";
  std::string bandwidth = "### Bandwidth (MB/s)\n\n" + head + "\n" + rule + "\n";
  std::string notes;
  for (uint32_t size : cx.opt.sizes) {
    rates += "| **" + size_label(size) + "** |";
    bandwidth += "| **" + size_label(size) + "** |";
    for (uint32_t n : cx.opt.tiers) {
      job j = stream_job(cx, bytes_of(sized_json(size)), wsed::proto::ws_opcode::text);
      tier_result r = run(cx, j, tier_spec{n, 0, warmup_for(cx.opt), cx.opt.duration_s, false});
      uint64_t msgs = counted(cx, r);
      double rate = msgs / std::max(1e-9, r.window_s);
      double mb = rate * size / 1e6;
      rates += " " + si(rate) + " |";
      bandwidth += " " + fixed(mb, 1) + " |";
      s.rows.push_back(tier_json(r, msgs)
                           .integer("size_bytes", size)
                           .num("msg_per_s", rate)
                           .num("mb_per_s", mb)
                           .done());
      notes += tier_notes(size_label(size) + " x " + commas(n), r, msgs);
      s.errors += r.errors.total();
    }
    rates += "\n";
    bandwidth += "\n";
  }
  s.markdown = rates + "\n" + bandwidth + "\n" + notes;
  return s;
}

section format_comparison(const context& cx) {
  section s;
  s.name = "format-comparison";
  std::string json = trade_json();
  std::vector<uint8_t> packed = trade_msgpack_prefixed();
  std::vector<uint8_t> zipped = zlib_prefixed(json);
  s.markdown = "Wire sizes: JSON = " + std::to_string(json.size()) +
               " bytes, MsgPack = " + std::to_string(packed.size()) +
               " bytes (`M:` prefix), Compressed = " + std::to_string(zipped.size()) +
               " bytes (`C:` prefix). " +
               (cx.wse ? "Messages sent per second." : "Echoes received per second.") + "\n\n";
  s.markdown +=
      "| Connections | JSON | MsgPack | vs JSON | Compressed | vs JSON |\n"
      "|-------------|------|---------|---------|------------|---------|\n";
  std::string notes;
  auto pct = [](double v, double base) {
    if (base <= 0) return std::string("-");
    double p = 100 * (v / base - 1);
    return (p >= 0 ? "+" : "") + fixed(p, 0) + "%";
  };
  for (uint32_t n : cx.opt.tiers) {
    double rates[3] = {};
    const char* names[3] = {"json", "msgpack", "compressed"};
    for (int f = 0; f < 3; ++f) {
      job j = f == 0   ? stream_job(cx, bytes_of(json), wsed::proto::ws_opcode::text)
              : f == 1 ? stream_job(cx, packed, wsed::proto::ws_opcode::binary)
                       : stream_job(cx, zipped, wsed::proto::ws_opcode::binary);
      if (f == 1) j.path = with_query(j.path, "format=msgpack");
      tier_result r = run(cx, j, tier_spec{n, 0, warmup_for(cx.opt), cx.opt.duration_s, false});
      uint64_t msgs = counted(cx, r);
      rates[f] = msgs / std::max(1e-9, r.window_s);
      s.rows.push_back(tier_json(r, msgs)
                           .str("format", names[f])
                           .integer("wire_payload_bytes", j.payload.size())
                           .num("msg_per_s", rates[f])
                           .done());
      notes += tier_notes(commas(n) + " " + names[f], r, msgs);
      s.errors += r.errors.total();
    }
    s.markdown += "| " + commas(n) + " | " + si(rates[0]) + " | " + si(rates[1]) + " | " +
                  pct(rates[1], rates[0]) + " | " + si(rates[2]) + " | " + pct(rates[2], rates[0]) +
                  " |\n";
  }
  s.markdown += "\n" + notes;
  return s;
}

double hold_interval_s(const options& o) {
  return o.ping_interval_s > 0 ? o.ping_interval_s : std::min(5.0, o.duration_s / 3);
}

section sustained_hold(const context& cx) {
  section s;
  s.name = "sustained-hold";
  double interval = hold_interval_s(cx.opt);
  s.markdown =
      "Hold " + fixed(cx.opt.duration_s, 1) + " s, one ping per connection every " +
      fixed(interval, 2) + " s.\n\n" +
      "| Connections | Survival | Disconnects | Total PINGs | p50 | p95 | p99 | Errors |\n"
      "|-------------|----------|-------------|-------------|-----|-----|-----|--------|\n";
  std::string notes;
  for (uint32_t n : cx.opt.tiers) {
    job j = cx.base;
    j.load = load_kind::ping;
    j.pings_per_conn = 0;
    j.ping_interval_ns = static_cast<uint64_t>(interval * 1e9);
    j.ping_stagger = true;
    tier_result r = run(cx, j, tier_spec{n, 0, 0, cx.opt.duration_s, false});
    double survival = n ? 100.0 * r.open_at_end / n : 0;
    uint32_t disconnects = r.opened > r.open_at_end ? r.opened - r.open_at_end : 0;
    const auto& h = *r.latency;
    s.markdown += "| " + commas(n) + " | " + fixed(survival, survival == 100 ? 0 : 2) + "% | " +
                  commas(disconnects) + " | " + commas(r.replies) + " | " + ms(h.quantile(0.5)) +
                  " | " + ms(h.quantile(0.95)) + " | " + ms(h.quantile(0.99)) + " | " +
                  commas(r.errors.total()) + " |\n";
    s.rows.push_back(tier_json(r, r.replies)
                         .num("survival_pct", survival)
                         .integer("disconnects", disconnects)
                         .integer("pings", r.replies)
                         .num("ping_interval_s", interval)
                         .done());
    notes += tier_notes(commas(n), r, r.replies);
    // The errors, or the connections lost when more were lost than errors counted.
    s.errors += std::max<uint64_t>(r.errors.total(), n - std::min(n, r.open_at_end));
  }
  s.markdown += "\n" + notes;
  return s;
}

section connection_limit(const context& cx) {
  section s;
  s.name = "connection-limit";
  s.markdown =
      "| Phase | Target | Connected | Accept Rate | Errors | Source IPs | Result |\n"
      "|-------|--------|-----------|-------------|--------|------------|--------|\n";
  double hold = std::min(1.0, cx.opt.duration_s / 4);
  uint32_t good = 0, bad = 0;
  std::string stop_reason, notes;
  auto step = [&](const char* phase_name, uint32_t target) {
    tier_result r = run(cx, cx.base, tier_spec{target, hold, 0, 0, false});
    bool ok = r.failed == 0 && r.errors.total() == 0 && r.open_at_end == target && !r.os_limited;
    double rate = r.connect_window_s > 0 ? r.opened / r.connect_window_s : 0;
    std::string result = ok ? "OK" : r.os_limited ? "OS limit" : "FAIL";
    s.markdown += std::string("| ") + phase_name + " | " + commas(target) + " | " +
                  commas(r.open_at_end) + " | " + commas(static_cast<uint64_t>(rate)) + "/s | " +
                  commas(r.errors.total()) + " | " + std::to_string(r.source_ips) + " | " + result +
                  " |\n";
    s.rows.push_back(tier_json(r, 0)
                         .str("phase", phase_name)
                         .num("accept_rate", rate)
                         .str("result", result)
                         .done());
    if (!ok) notes += tier_notes(commas(target), r, 0);
    if (r.os_limited && stop_reason.empty()) stop_reason = r.os_limit_message;
    return ok;
  };
  // Probe by doubling up to --max-conns, then bisect between the last good and first bad.
  uint32_t target = std::min(cx.opt.limit_start, cx.opt.max_conns);
  for (int i = 0; i < 32; ++i) {
    if (!step("Probe", target)) {
      bad = target;
      break;
    }
    good = target;
    if (target >= cx.opt.max_conns) break;
    target = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{target} * 2, cx.opt.max_conns));
  }
  for (int i = 0; i < 12 && bad != 0 && stop_reason.empty(); ++i) {
    uint32_t resolution = std::max<uint32_t>(1, good / 100);
    if (bad - good <= resolution) break;
    uint32_t mid = good + (bad - good) / 2;
    if (step("Search", mid)) {
      good = mid;
    } else {
      bad = mid;
    }
  }
  std::string verdict;
  if (!stop_reason.empty()) {
    verdict = "Stopped by the client's OS limit, not the server: " + stop_reason +
              ". Max stable connections measured: " + commas(good) + ".";
  } else if (bad == 0) {
    verdict = "Max stable connections: " + commas(good) +
              "+ (every probe passed: limited by --max-conns, not the server).";
  } else {
    verdict = "Max stable connections: " + commas(good) + " (first failure at " + commas(bad) +
              ": the server refused or dropped connections).";
  }
  s.markdown += "\n**" + verdict + "**\n" + (notes.empty() ? "" : "\n" + notes);
  s.summary_json = json_obj()
                       .integer("max_stable", good)
                       .integer("first_bad", bad)
                       .boolean("os_limited", !stop_reason.empty())
                       .str("verdict", verdict)
                       .done();
  return s;  // failures here are the finding, not errors of the run
}

// The Go tool's modes (seed 004): pingpong, echo, blast.
section go_mode(const context& cx, const std::string& mode) {
  section s;
  s.name = mode;
  s.markdown =
      "| Clients | Mode | Duration | Msg/s (sent) | Msg/s (recv) | p50 lat | p99 lat | Unanswered "
      "| Errors |\n"
      "|---------|------|----------|--------------|--------------|---------|---------|------------"
      "|--------|\n";
  std::string notes;
  std::string payload = cx.wse && mode != "blast" ? ping_json(0) : sized_json(cx.opt.size_bytes);
  for (uint32_t n : cx.opt.tiers) {
    job j = stream_job(cx, bytes_of(payload), wsed::proto::ws_opcode::text);
    if (mode == "pingpong") j.window_msgs = 1;
    if (mode == "echo") j.window_msgs = cx.opt.window;
    tier_result r = run(
        cx, j,
        tier_spec{n, 0, mode == "pingpong" ? 0.0 : warmup_for(cx.opt), cx.opt.duration_s, false});
    double sent = r.sent_msgs / std::max(1e-9, r.window_s);
    double recv = r.replies / std::max(1e-9, r.window_s);
    bool replies = j.window_msgs != 0;
    double unanswered = replies && r.sent_msgs
                            ? 100.0 * (1.0 - std::min(1.0, static_cast<double>(r.replies) /
                                                               static_cast<double>(r.sent_msgs)))
                            : 100.0;
    s.markdown += "| " + commas(n) + " | " + mode + " | " + fixed(r.window_s, 1) + "s | " +
                  commas(static_cast<uint64_t>(sent)) + " | " +
                  (replies ? commas(static_cast<uint64_t>(recv)) : std::string("-")) + " | " +
                  (replies ? ms(r.latency->quantile(0.5)) : std::string("-")) + " | " +
                  (replies ? ms(r.latency->quantile(0.99)) : std::string("-")) + " | " +
                  (replies ? fixed(unanswered, 1) + "%" : std::string("- (send only)")) + " | " +
                  commas(r.errors.total()) + " |\n";
    s.rows.push_back(tier_json(r, replies ? r.replies : r.sent_msgs)
                         .str("mode", mode)
                         .integer("payload_bytes", payload.size())
                         .integer("window", j.window_msgs)
                         .num("sent_msg_per_s", sent)
                         .num("recv_msg_per_s", recv)
                         .num("unanswered_pct", unanswered)
                         .done());
    notes += tier_notes(commas(n), r, replies ? r.replies : r.sent_msgs);
    s.errors += r.errors.total();
  }
  s.markdown += "\n" + notes;
  return s;
}

// The fanout publisher's token: the bench claims plus wse_topics.publish ["bench_*"] (and the
// topic itself when it does not match that glob).
std::string publisher_token(const options& o) {
  std::string claims = bench_claims(o.sub + "-publisher", static_cast<int64_t>(time(nullptr)));
  std::string globs = "\"bench_*\"";
  if (o.topic.rfind("bench_", 0) != 0) globs += ",\"" + o.topic + "\"";
  claims.pop_back();  // the closing brace
  claims += ",\"wse_topics\":{\"publish\":[" + globs + "]}}";
  return mint_hs256(o.secret, claims);
}

sockaddr_in loopback_addr(const job& base, uint16_t port) {
  sockaddr_in a = base.server;
  a.sin_port = htons(port);
  return a;
}

// The number of distinct servers the subscribers are on (1 when --port-b is --port).
uint32_t instances(const options& o) {
  return o.port2 != 0 && o.port2 != o.port ? 2 : 1;
}

std::string latency_cells(const latency_histogram& h) {
  return ms(h.quantile(0.5)) + " | " + ms(h.quantile(0.99)) + " | " + ms(h.quantile(0.999));
}

std::string slow_cell(const server_figures& f) {
  if (!f.metrics_read) return "-";
  return commas(static_cast<uint64_t>(f.slow_drop)) +
         (f.slow_disconnect > 0
              ? " (+" + commas(static_cast<uint64_t>(f.slow_disconnect)) + " disc.)"
              : "");
}

std::string counts_json(const fanout_counts& c) {
  return json_obj()
      .integer("subscribers", c.subscribers)
      .integer("gaps", c.gaps)
      .integer("subscribers_with_gaps", c.subscribers_with_gaps)
      .integer("max_gaps_per_subscriber", c.max_gaps)
      .integer("duplicates", c.duplicates)
      .integer("reorders", c.reorders)
      .done();
}

std::string redis_bridge_json(const redis_bridge_figures& b) {
  if (!b.read) return "null";
  json_obj o;
  for (const redis_bridge_counter& c : redis_bridge_counters) o.num(c.json, b.*c.field);
  return o.done();
}

std::string server_json(const server_figures& f) {
  if (!f.metrics_read) return "null";
  return json_obj()
      .num("slow_drop", f.slow_drop)
      .num("slow_disconnect", f.slow_disconnect)
      .num("server_deliveries", f.deliveries)
      .raw("redis", redis_bridge_json(f.redis))
      .done();
}

// One instance's Redis bridge over the tier, for the notes.
std::string redis_bridge_note(const std::string& who, const redis_bridge_figures& b) {
  auto n = [](double v) { return commas(static_cast<uint64_t>(std::max(0.0, v))); };
  std::string s = "  - " + who + " Redis bridge: published " + n(b.published);
  double dropped = b.dropped_buffer_full + b.dropped_ring_full + b.lost;
  if (dropped > 0) {
    s += " (**dropped: buffer full " + n(b.dropped_buffer_full) + ", ring full " +
         n(b.dropped_ring_full) + ", lost " + n(b.lost) + "**)";
  }
  s += "; received: delivered " + n(b.delivered) + ", own echo " + n(b.own);
  if (b.duplicate > 0) s += ", duplicate " + n(b.duplicate);
  if (b.invalid > 0) s += ", **invalid " + n(b.invalid) + "**";
  if (b.busy_retry > 0) s += ", busy retries " + n(b.busy_retry);
  return s + "\n";
}

enum class fanout_mode : uint8_t { topic, broadcast, multi };

// fanout-broadcast, broadcast-all and fanout-multi: subscribers per tier, one publisher, seq
// tracking. With two servers (--port-b; fanout-multi needs it) the subscribers alternate between
// A (--port) and B, and every tier is reported for A's, B's and all subscribers.
section fanout(const context& cx, fanout_mode mode) {
  const options& o = cx.opt;
  const bool broadcast = mode == fanout_mode::broadcast;
  const bool two = cx.base.two_servers;
  section s;
  s.name = mode == fanout_mode::broadcast ? "broadcast-all"
           : mode == fanout_mode::multi   ? "fanout-multi"
                                          : "fanout-broadcast";
  publisher_kind kind = o.publisher == "api"     ? publisher_kind::api
                        : o.publisher == "wse"   ? publisher_kind::wse
                        : o.publisher == "redis" ? publisher_kind::redis
                                                 : publisher_kind::server;
  uint16_t api_port = o.api_port != 0 ? o.api_port : o.port;
  uint16_t metrics_port = o.metrics_port != 0 ? o.metrics_port : api_port;
  uint16_t metrics_port_b = o.metrics_port_b != 0 ? o.metrics_port_b : o.port2;
  std::string channel = o.redis_prefix + (broadcast ? std::string("@broadcast") : o.topic);
  fanout_plan plan;
  plan.subscribe_timeout_s = o.subscribe_timeout_s;
  publisher_config& pc = plan.publisher;
  pc.kind = kind;
  uint16_t pub_port = kind == publisher_kind::api ? api_port : o.port;
  pc.api = kind == publisher_kind::redis ? o.redis_addr : loopback_addr(cx.base, pub_port);
  pc.host_header = o.host + ":" + std::to_string(pub_port);
  pc.api_key = o.api_key;
  pc.path = o.path;
  if (kind == publisher_kind::wse) pc.token = publisher_token(o);
  pc.topic = o.topic;
  pc.broadcast = broadcast;
  pc.batch = o.publish_batch;
  pc.inflight_max = o.publish_inflight;
  pc.rate = o.publish_rate;
  pc.window = kind == publisher_kind::server || o.publish_window == 0
                  ? 0
                  : static_cast<uint64_t>(std::max<int64_t>(0, o.publish_window));
  pc.channel = channel;
  pc.receivers_wanted = instances(o);
  plan.metrics.push_back(
      {loopback_addr(cx.base, metrics_port), o.host + ":" + std::to_string(metrics_port)});
  if (two && instances(o) == 2) {
    plan.metrics.push_back(
        {loopback_addr(cx.base, metrics_port_b), o.host + ":" + std::to_string(metrics_port_b)});
  }
  if (kind != publisher_kind::server) plan.ready = plan.metrics;
  if (!o.redis_url.empty() && kind != publisher_kind::server) {
    plan.redis_wait = true;
    plan.redis_addr = o.redis_addr;
    plan.redis_channel = channel;
    plan.redis_receivers_wanted = instances(o);
  }

  std::string tick = fanout_tick_json(0, 1760000000000000);
  std::string who = kind == publisher_kind::api
                        ? "the HTTP API (POST /api/publish on :" + std::to_string(api_port) + ", " +
                              std::to_string(o.publish_batch) + " items per request, " +
                              std::to_string(o.publish_inflight) + " requests in flight)"
                    : kind == publisher_kind::wse
                        ? "one WSE connection to :" + std::to_string(o.port) +
                              " (publish frames, token with wse_topics.publish)"
                    : kind == publisher_kind::redis
                        ? "Redis directly (PUBLISH " + channel + " on " + o.redis_url + ", " +
                              std::to_string(o.publish_batch) + " commands per pipelined batch, " +
                              std::to_string(o.publish_inflight) + " batches in flight)"
                        : "the server itself (every connection subscribed at connect)";
  s.markdown =
      std::string(broadcast ? "Broadcast to every connection" : "Topic `" + o.topic + "`") +
      ", published by " + who + ", at " +
      (o.publish_rate > 0 ? si(o.publish_rate) + " publications/s" : "full speed") +
      "; fanout_tick of ~" + std::to_string(tick.size() + 8) +
      " B on the wire. Latency: receive time - p.ts_us (CLOCK_REALTIME).\n\n";
  if (two) {
    s.markdown +=
        "Subscribers alternate: even-numbered on A (" + o.host + ":" + std::to_string(o.port) +
        "), odd-numbered on B (" + o.host + ":" + std::to_string(o.port2) + ")" +
        (instances(o) == 1 ? " (the same server: one instance)" : "") +
        ". The publisher starts once every subscription is confirmed, every server " +
        "answers /readyz with 200" +
        (plan.redis_wait
             ? " and Redis counts " + std::to_string(instances(o)) + " subscriber(s) of " + channel
             : std::string()) +
        ". Rows per tier: A's subscribers, B's, all.\n\n";
  }
  s.markdown += std::string("| Subscribers |") + (two ? " On |" : "") +
                " Published/s | Deliveries/s | MB/s | Gaps | Dups | Reorders | p50 | p99 | p99.9 | "
                "Slow-consumer drops | Errors |\n|-------------|" +
                (two ? "----|" : "") +
                "-------------|--------------|------|------|------|----------|-----|-----|-------|"
                "---------------------|--------|\n";
  std::string notes;
  for (uint32_t n : o.tiers) {
    job j = cx.base;
    j.load = load_kind::subscribe;
    j.subscribe_topic =
        cx.wse && kind != publisher_kind::server && !broadcast ? o.topic : std::string();
    j.tick_base_known = kind != publisher_kind::server;
    tier_spec spec{n, 0, warmup_for(o), o.duration_s, false};
    if (o.publish_window < 0 && kind != publisher_kind::server) {  // auto, for this tier
      plan.publisher.window = std::clamp<uint64_t>(8'000'000 / std::max<uint32_t>(1, n), 16, 1000);
    }
    spec.fanout = &plan;
    tier_result r = run(cx, j, spec);
    const fanout_result& f = r.fanout;
    double w = std::max(1e-9, r.window_s);
    double deliveries = r.replies / w;
    double mb = r.reply_bytes / w / 1e6;
    bool known = kind != publisher_kind::server;
    double published =
        known ? f.published / w : deliveries / std::max<uint64_t>(1, f.counts.subscribers);
    uint64_t lost = n - std::min(n, r.open_at_end);
    uint64_t errors = r.errors.total() + f.counts.gaps + f.counts.duplicates +
                      (f.publisher_error.empty() ? 0 : 1) + (f.ready_error.empty() ? 0 : 1) + lost +
                      (f.subscribed < r.open_after_ramp ? r.open_after_ramp - f.subscribed : 0);
    std::string pub_cell = (known ? "" : "~") + si(published);
    // A row from "Published/s" on (the same for A's, B's, all and one server's).
    auto cells = [&](const std::string& delivered, double mb_s, const fanout_counts& c,
                     const latency_histogram& lat, const server_figures& sv, uint64_t errs) {
      return pub_cell + " | " + delivered + " | " + fixed(mb_s, 1) + " | " + commas(c.gaps) +
             " | " + commas(c.duplicates) + " | " + commas(c.reorders) + " | " +
             latency_cells(lat) + " | " + slow_cell(sv) + " | " + commas(errs) + " |\n";
    };
    if (two) {
      for (int side = 0; side < 2; ++side) {
        const side_figures& sf = r.sides[side];
        // One instance: its /metrics are the whole's, shown on the "all" row only.
        const server_figures none;
        const server_figures& sv = static_cast<size_t>(side) < f.servers.size() && instances(o) == 2
                                       ? f.servers[side]
                                       : none;
        uint64_t side_lost =
            sf.connections - std::min<uint64_t>(sf.connections, sf.counts.subscribers);
        s.markdown += "| " + commas(n) + " | " + (side == 0 ? "A" : "B") + " (" +
                      commas(sf.connections) + ") | " +
                      cells(si(sf.replies / w), sf.reply_bytes / w / 1e6, sf.counts, *sf.latency,
                            sv, sf.counts.gaps + sf.counts.duplicates + side_lost);
      }
      s.markdown +=
          "| " + commas(n) + " | **all** | " +
          cells("**" + si(deliveries) + "**", mb, f.counts, *r.latency, f.servers_total, errors);
    } else {
      s.markdown += "| " + commas(n) + " | " +
                    cells(si(deliveries), mb, f.counts, *r.latency, f.servers_total, errors);
    }
    // Every subscriber open at the end gets every publication the server took.
    auto expected_for = [&](const fanout_counts& c) -> uint64_t {
      return known ? f.published_total * c.subscribers : 0;
    };
    uint64_t expected = expected_for(f.counts);
    json_obj row = tier_json(r, r.replies);
    row.str("publisher", o.publisher)
        .boolean("broadcast", broadcast)
        .str("topic", broadcast ? "" : o.topic)
        .num("publish_rate", o.publish_rate)
        .integer("publish_batch", o.publish_batch)
        .integer("publish_window", plan.publisher.window)
        .integer("subscribers", f.counts.subscribers)
        .integer("subscribed", f.subscribed)
        .num("published_per_s", published)
        .boolean("published_per_s_derived", !known)
        .num("deliveries_per_s", deliveries)
        .num("mb_per_s", mb)
        .integer("published", f.published)
        .integer("published_total", f.published_total)
        .integer("publish_sent_total", f.sent_total)
        .integer("publish_busy", f.busy)
        .integer("deliveries_total", f.deliveries_total)
        .integer("deliveries_expected", expected)
        .num("drain_s", f.drain_s)
        .num("ready_s", f.ready_s)
        .str("ready_error", f.ready_error)
        .integer("gaps", f.counts.gaps)
        .integer("subscribers_with_gaps", f.counts.subscribers_with_gaps)
        .integer("max_gaps_per_subscriber", f.counts.max_gaps)
        .integer("duplicates", f.counts.duplicates)
        .integer("reorders", f.counts.reorders)
        .integer("lost_connections", lost)
        .integer("errors", errors)
        .str("publisher_error", f.publisher_error)
        .raw("slow_consumer", f.servers_total.metrics_read
                                  ? json_obj()
                                        .num("drop", f.servers_total.slow_drop)
                                        .num("disconnect", f.servers_total.slow_disconnect)
                                        .num("server_deliveries", f.servers_total.deliveries)
                                        .done()
                                  : "null");
    if (kind == publisher_kind::redis) {
      row.integer("redis_short_receivers", f.short_receivers)
          .integer("redis_min_receivers", f.min_receivers == UINT64_MAX ? 0 : f.min_receivers);
    }
    std::string servers;
    for (const server_figures& sv : f.servers) {
      servers += (servers.empty() ? "" : ", ") + server_json(sv);
    }
    row.raw("servers", "[" + servers + "]");
    if (two) {
      std::string sides;
      for (int side = 0; side < 2; ++side) {
        const side_figures& sf = r.sides[side];
        sides += std::string(side ? ", " : "") +
                 json_obj()
                     .str("instance", side == 0 ? "A" : "B")
                     .integer("port", side == 0 ? o.port : o.port2)
                     .integer("connections", sf.connections)
                     .num("deliveries_per_s", sf.replies / w)
                     .num("mb_per_s", sf.reply_bytes / w / 1e6)
                     .integer("deliveries_total", sf.deliveries_total)
                     .integer("deliveries_expected", expected_for(sf.counts))
                     .raw("counts", counts_json(sf.counts))
                     .raw("latency_ms", latency_json(*sf.latency))
                     .done();
      }
      row.raw("sides", "[" + sides + "]");
    }
    s.rows.push_back(row.done());
    notes += tier_notes(commas(n), r, r.replies);
    notes += "  - " + commas(f.counts.subscribers) + " subscribers at the end";
    if (known) {
      notes += ", " + commas(f.published_total) + " publications taken (" + commas(f.sent_total) +
               " sent, " + commas(f.busy) + " refused busy), " + commas(f.deliveries_total) +
               " of " + commas(expected) + " deliveries after a " + fixed(f.drain_s, 2) +
               " s drain";
    } else {
      notes += ", " + commas(f.deliveries_total) + " deliveries";
    }
    if (two) {
      for (int side = 0; side < 2; ++side) {
        const side_figures& sf = r.sides[side];
        notes += std::string(side == 0 ? " (A: " : ", B: ") + commas(sf.deliveries_total) + " of " +
                 commas(expected_for(sf.counts)) + (side == 1 ? ")" : "");
      }
    }
    if (f.counts.gaps) {
      notes += "; **" + commas(f.counts.gaps) + " seqs missing over " +
               commas(f.counts.subscribers_with_gaps) + " subscribers (max " +
               commas(f.counts.max_gaps) + ")**";
    }
    if (f.subscribed < r.open_after_ramp) {
      notes += "; **" + commas(r.open_after_ramp - f.subscribed) +
               " subscriptions not confirmed within " +
               fixed(o.subscribe_timeout_s,
                     o.subscribe_timeout_s == std::floor(o.subscribe_timeout_s) ? 0 : 1) +
               " s (--subscribe-timeout)**";
    }
    if (!f.ready_error.empty()) notes += "; **not ready before publishing: " + f.ready_error + "**";
    if (lost) notes += "; **" + commas(lost) + " subscribers lost**";
    if (!f.publisher_error.empty()) notes += "; **publisher: " + f.publisher_error + "**";
    if (kind == publisher_kind::redis && f.short_receivers != 0) {
      notes += "; **" + commas(f.short_receivers) + " PUBLISH answers counted fewer than " +
               std::to_string(instances(o)) + " receivers (fewest " + commas(f.min_receivers) +
               ")**";
    }
    notes += "\n";
    for (size_t k = 0; k < f.servers.size(); ++k) {
      if (!f.servers[k].redis.read) continue;
      std::string who = f.servers.size() == 1 ? "the server's" : k == 0 ? "A's" : "B's";
      notes += redis_bridge_note(who, f.servers[k].redis);
    }
    s.errors += errors;
  }
  s.markdown += "\n" + notes;
  return s;
}

const std::map<std::string, std::string>& scenario_titles() {
  static const std::map<std::string, std::string> t = {
      {"connection-storm", "Connection Storm"},
      {"ping-latency", "Ping/Pong Latency Under Load"},
      {"throughput", "Throughput Saturation"},
      {"size-matrix", "Payload Size x Connections Matrix"},
      {"format-comparison", "Format Comparison"},
      {"sustained-hold", "Sustained Hold"},
      {"connection-limit", "Connection Limit"},
      {"pingpong", "Pingpong (strict request/response)"},
      {"echo", "Echo (send and receive concurrently)"},
      {"blast", "Blast (send only)"},
      {"fanout-broadcast", "Fan-out Broadcast (topic)"},
      {"broadcast-all", "Fan-out Broadcast (every connection)"},
      {"fanout-multi", "Multi-instance Fan-out (two servers, one topic)"}};
  return t;
}

const char* help_text =
    R"(Scenarios (--test NAME, repeatable or comma-separated; default: all but the fanout ones, in
this order):

connection-storm   Per tier, opens N connections as fast as possible, at most --connect-inflight
                   connecting or upgrading at once (500, like the reference's batches of 500).
                   Reports the accept rate (connections/s over the ramp) and the handshake latency
                   (p50/p95/p99/p99.9/max) from the TCP connect to the 101 (raw) or to server_ready
                   (wse), and failed connections. raw: any RFC 6455 server; wse: the server must
                   accept the JWT cookie and send server_ready (the client then sends client_hello).

ping-latency       Per tier, every connection sends --pings (50) app pings one at a time, all
                   connections concurrently, until done or --duration. Reports total pings and the
                   round-trip latency p50..p99.99 and max. raw: the ping JSON
                   {"p":{"client_timestamp":<ms>},"t":"ping"} must be echoed back; wse: the server
                   must answer each with a PONG text frame ({"c":"WSE","t":"PONG",...}).

throughput         Per tier, every connection sends a 189 B JSON trading message as fast as it can
                   for --duration (after a short warm-up). Reports msg/s, MB/s (payload), per-
                   connection msg/s and sent msg/s. raw: the echo server sends every message back;
                   the client drains and counts the echoes (the honest figure) with at most
                   --stream-window-bytes unanswered per connection, and reports send->echo latency.
                   wse: the server answers nothing (inbound only): the figure is messages sent.

size-matrix        The throughput test for each --sizes payload (64 B..64 KiB JSON text) x each
                   tier, --duration per cell. Reports two tables: msg/s and MB/s. raw/wse as for
                   throughput.

format-comparison  The throughput test per tier for the same trading object as JSON text, as
                   `M:` + MessagePack (binary frame, on a connection opened with ?format=msgpack)
                   and as `C:` + zlib (binary frame). Reports msg/s per format and the gain over
                   JSON, with the wire sizes. raw: the server echoes the frames (any opcode); wse:
                   the server must accept binary M:/C: inbound; the figure is messages sent.

sustained-hold     Per tier, holds N connections for --duration, each sending an app ping every
                   --ping-interval (default 5 s, or a third of --duration when that is shorter;
                   first pings spread over the interval). Reports survival (connections open at the
                   end / target), disconnects, pings and their latency, and with --server-pid the
                   server's RSS per held connection. raw: pings echoed; wse: PONG answers.

connection-limit   Opens --limit-start connections, then doubles (2K, 4K, ...) up to --max-conns,
                   then bisects between the last good and the first bad step. A step is good when
                   every connection opens and stays open for a short hold. Stops early, saying so,
                   when the client's OS (descriptors, ports, rings) rather than the server is the
                   limit. Reports each step and the max stable count. Failures here are the
                   finding: they do not make the exit code non-zero.

pingpong           (the Go tool's mode) Per tier, strict request/response: each connection keeps
                   one --size byte JSON message in flight. Reports sent and received msg/s and
                   latency. raw: echoed; wse: app ping -> PONG.

echo               (the Go tool's mode) Like pingpong but sends and receives concurrently with up
                   to --window messages in flight per connection. raw: echoed; wse: app pings ->
                   PONGs.

blast              (the Go tool's mode) Send only, as fast as possible, --size byte messages.
                   Reports sent msg/s. raw: the echoes still come back and are drained and counted
                   (sends bounded by --stream-window-bytes unanswered, so the server never sees a
                   slow consumer); wse: nothing comes back.

fanout-broadcast   (run only when named) Per tier, N subscribers connect (wse: JWT cookie,
                   server_ready, client_hello) and subscribe to --topic (bench_topic) with
                   {"c":"WSE","t":"subscription_update","p":{"action":"subscribe","topics":[..]},"v":1};
                   once every reply confirmed it, one publisher sends fanout_tick messages
                   {"t":"fanout_tick","p":{"seq":n,"ts_us":<CLOCK_REALTIME us>,"s":"ES","px":5234.75,
                   "q":2}} with seq dense from 0, for --duration (after a short warm-up):
                   --publisher api: POST /api/publish on --api-port (default --port) with
                   Authorization: Bearer <--api-key-file>, HTTP/1.1 keep-alive, --publish-inflight
                   requests pipelined, JSON array bodies of --publish-batch items (503 inbox full:
                   the items not accepted are counted, never expected); --publisher wse: one WSE
                   connection whose token has wse_topics {"publish":["bench_*"]} sends
                   {"c":"WSE","t":"publish","p":{"topic":..,"message":<tick>},"v":1} frames (the
                   server needs --inbound-rate 0, or its rate limit drops them: gaps); --publisher
                   server: the server publishes by itself (every connection subscribed to
                   bench_topic at connect, one dense p.seq) and the bench only counts: works with
                   --protocol raw too (no JWT, no WSE handshake, fanout_tick text frames counted),
                   so any WebSocket server that publishes fanout_tick can be measured.
                   --publish-rate N publications/s (0: as fast as the server takes them, at most
                   --publish-window publications ahead of the average subscriber, by default
                   8M/N clamped to 16..1,000, so the subscribers, not the server's slow-consumer
                   policy, set the pace and no more than ~8M deliveries are in flight; fewer
                   starve the server's coalescing at 10,000 subscribers).
                   Reports published/s, deliveries/s, MB/s (payload), per-subscriber gaps (seqs
                   taken by the server and never received, after a drain of up to 10 s),
                   duplicates and reorders, end-to-end latency p50/p99/p99.9 (receive time -
                   ts_us) and the slow-consumer drops (and disconnects) of the server's /metrics
                   (wsed_slow_consumer_total on --metrics-port, default the API port; "-" when it
                   cannot be read). Gaps, duplicates, lost subscribers and publisher errors make
                   the exit code non-zero. Tiers beyond RLIMIT_NOFILE spread over rings as usual.

broadcast-all      fanout-broadcast with {"broadcast":true,"message":<tick>} items (every
                   connection receives each tick; nobody subscribes). --publisher api, redis
                   (PUBLISH <prefix>@broadcast) or server.

fanout-multi       (run only when named) fanout-broadcast over two server instances bridged by
                   Redis: instance A at --port, instance B at --port-b. The subscribers of each
                   tier alternate: even-numbered on A, odd on B (--port-b equal to --port: all on
                   one instance, to test the bench). One publisher for both: --publisher api
                   (POST /api/publish on A; A delivers locally and relays through Redis to B),
                   wse (a WSE connection to A) or redis (PUBLISH <--redis-prefix><--topic> <tick>
                   straight into --redis-url, --publish-batch commands per pipelined batch,
                   --publish-inflight batches in flight; each answer's receiver count is checked
                   against the number of instances). Before publishing, after every subscription
                   is confirmed: A and B answer GET /readyz with 200 and, with --redis-url, Redis
                   counts one subscriber per instance on the channel (PUBSUB NUMSUB, or CLIENT
                   LIST psub= for pattern subscriptions), so seq 0 reaches every subscriber (and,
                   before each tier, the previous tier's subscriptions are gone from Redis).
                   Reports per tier three rows, A's subscribers,
                   B's and all: deliveries/s, published/s, MB/s, gaps, duplicates, reorders,
                   latency p50/p99/p99.9 and each instance's slow-consumer drops; then each
                   instance's Redis bridge counters (wsed_redis_publications_total,
                   wsed_redis_received_total) over the tier. Gaps or duplicates on either
                   instance make the exit code non-zero. (--port-b also splits the other
                   scenarios' connections; the fanout ones then report A and B apart.)

TLS (--tls): every WebSocket connection of every scenario (the subscribers and the load
connections, on --port and --port-b) speaks TLS 1.2+ (ALPN http/1.1) before the upgrade: the
workers feed the ciphertext their io_uring receives into an OpenSSL session over memory BIOs and
send what it encrypts, so the load path stays one ring per thread. The TLS handshake is part of
the connection-storm handshake latency and accept rate; throughput counts plain-text messages.
The server's certificate is not verified unless --tls-ca-file names the CA that signed it (a
self-signed benchmark server). The plain HTTP side is not encrypted: with --tls the fanout
scenarios' HTTP API publisher and their /metrics and /readyz reads must go to a plain port,
wsed's --admin-listen (give it as --api-port and/or --metrics-port, --metrics-port-b; a plain
request to a TLS port is answered 400, so they may not be --port or --port-b), and --publisher
wse (a WebSocket publisher) is refused with --tls; --publisher redis or server need only
--metrics-port. Without --tls no TLS code runs.

Every table is followed by one line per tier: client CPU (and a warning when the client, not the
server, was saturated), with --server-pid the server's CPU time per message (user and sys, from
/proc) and RSS per connection, the OS limit when it stopped a tier, and the first error.
Connections beyond RLIMIT_NOFILE are held in io_uring direct descriptors spread over several rings;
beyond 90% of the even half of one source address's ephemeral port range (connect() takes even
ports first; past them each connect scans the whole range and the ramp drops ~6x) they are spread
over 127.0.0.x.
Exit code: 0 when no scenario saw an error, 3 otherwise, 1 on a setup failure, 2 on bad flags.
)";

// --tls with a fanout scenario: what would send plain HTTP (the API publisher, /metrics and
// /readyz) to a TLS port, or a WebSocket publisher (not encrypted); empty: nothing.
std::string tls_plain_ports_problem(const options& o) {
  if (o.publisher == "wse") {
    return "--publisher wse is not encrypted: use --publisher api (on a plain --api-port), redis "
           "or server";
  }
  uint16_t api_port = o.api_port != 0 ? o.api_port : o.port;
  uint16_t metrics_port = o.metrics_port != 0 ? o.metrics_port : api_port;
  uint16_t metrics_port_b = o.metrics_port_b != 0 ? o.metrics_port_b : o.port2;
  auto tls_port = [&o](uint16_t p) { return p == o.port || (o.port2 != 0 && p == o.port2); };
  if (o.publisher == "api" && tls_port(api_port)) {
    return "the HTTP API publisher needs a plain port: --api-port (wsed --admin-listen), not the "
           "TLS port " +
           std::to_string(api_port);
  }
  if (tls_port(metrics_port)) {
    return "/metrics and /readyz need a plain port: --metrics-port (wsed --admin-listen), not the "
           "TLS port " +
           std::to_string(metrics_port);
  }
  if (o.port2 != 0 && o.port2 != o.port && tls_port(metrics_port_b)) {
    return "B's /metrics and /readyz need a plain port: --metrics-port-b (B's --admin-listen), "
           "not the TLS port " +
           std::to_string(metrics_port_b);
  }
  return "";
}

// A list item's number (whole, not negative); otherwise throws naming the item (std::stod alone
// would say only "stod").
double list_number(const std::string& number, const std::string& item) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(number, &used);
  } catch (const std::exception&) {
  }
  if (used != number.size() || !(v >= 0)) {
    throw std::invalid_argument("'" + item + "' is not a non-negative number");
  }
  return v;
}

std::vector<uint32_t> parse_list(const std::string& text) {
  std::vector<uint32_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    double mult = 1;
    std::string number = item;
    char last = item.back();
    if (last == 'K' || last == 'k') mult = 1000, number.pop_back();
    if (last == 'M' || last == 'm') mult = 1000000, number.pop_back();
    // Clamped below 2^32 (the callers' range checks then refuse it) rather than cast out of range.
    out.push_back(static_cast<uint32_t>(std::min(4e9, list_number(number, item) * mult)));
  }
  return out;
}

std::vector<int> parse_cpu_list(const std::string& text) {
  auto cpu = [](const std::string& number, const std::string& item) {
    return static_cast<int>(std::min(1e6, list_number(number, item)));
  };
  std::vector<int> cpus;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t dash = item.find('-');
    if (dash == std::string::npos) {
      cpus.push_back(cpu(item, item));
    } else {
      int a = cpu(item.substr(0, dash), item), b = cpu(item.substr(dash + 1), item);
      for (int c = a; c <= b && cpus.size() < 1024; ++c) cpus.push_back(c);
    }
  }
  return cpus;
}

// redis://HOST:PORT[/DB] with HOST an IPv4 address in 127.0.0.0/8 or localhost (the database does
// not matter to PUBLISH). Empty: the address; otherwise why not.
std::string parse_redis_url(const std::string& url, sockaddr_in& out) {
  const std::string scheme = "redis://";
  if (url.rfind(scheme, 0) != 0) return "must start with redis://";
  std::string rest = url.substr(scheme.size());
  if (rest.find('@') != std::string::npos) return "credentials are not supported";
  rest = rest.substr(0, rest.find('/'));
  size_t colon = rest.rfind(':');
  std::string host = colon == std::string::npos ? rest : rest.substr(0, colon);
  std::string port = colon == std::string::npos ? "6379" : rest.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  out = sockaddr_in{};
  out.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &out.sin_addr) != 1) return "host is not an IPv4 address";
  if ((ntohl(out.sin_addr.s_addr) >> 24) != 127) return "host must be in 127.0.0.0/8";
  size_t used = 0;
  unsigned long p = 0;
  try {
    p = std::stoul(port, &used);
  } catch (const std::exception&) {
  }
  if (used == 0 || used != port.size() || p == 0 || p > 65535) return "bad port";
  out.sin_port = htons(static_cast<uint16_t>(p));
  return "";
}

int run_all(options opt) {
  context cx;
  cx.opt = opt;
  cx.wse = opt.protocol == "wse";
  job& b = cx.base;
  b.protocol = cx.wse ? protocol_mode::wse : protocol_mode::raw;
  b.server.sin_family = AF_INET;
  b.server.sin_port = htons(opt.port);
  if (inet_pton(AF_INET, opt.host.c_str(), &b.server.sin_addr) != 1) {
    std::fprintf(stderr, "wse-bench: --host %s is not an IPv4 address\n", opt.host.c_str());
    return 2;
  }
  if ((ntohl(b.server.sin_addr.s_addr) >> 24) != 127) {
    std::fprintf(stderr, "wse-bench: --host must be in 127.0.0.0/8 (loopback benchmarks only)\n");
    return 2;
  }
  if (opt.port2 != 0) {
    b.server2 = b.server;
    b.server2.sin_port = htons(opt.port2);
    b.two_servers = true;
  }
  b.path = opt.path;
  b.host_header = opt.host + ":" + std::to_string(opt.port);
  b.host_header2 = opt.host + ":" + std::to_string(opt.port2);
  b.secret = opt.secret;
  b.token_now_s = static_cast<int64_t>(time(nullptr));
  if (cx.wse && !opt.token_per_connection) {
    b.token = mint_hs256(opt.secret, bench_claims(opt.sub, b.token_now_s));
  }
  b.ramp_timeout_ns = static_cast<uint64_t>(opt.ramp_timeout_s * 1e9);
  cx.opt.runner.loopback = true;
  if (opt.tls) {
    std::string why;
    b.tls = wsed::engine::tls_context::client(opt.tls_ca_file, &why);
    if (!b.tls) {
      std::fprintf(stderr, "wse-bench: --tls: %s\n", why.c_str());
      return 1;
    }
    // No CA file: no verification at all. SSL_VERIFY_NONE alone still builds and checks the
    // chain and ignores the result: a self-signed certificate's own signature, one more P-256
    // ECDSA verify per handshake (118 us here by `openssl speed`, three P-256 signs: more than
    // the server's signature) that the bench must not pay in a connection storm. The
    // CertificateVerify signature (the protocol's) is still checked.
    if (opt.tls_ca_file.empty()) {
      SSL_CTX_set_cert_verify_callback(
          b.tls->native(), [](X509_STORE_CTX*, void*) { return 1; }, nullptr);
    }
  }

  std::vector<section> sections;
  for (const std::string& t : opt.tests) {
    std::fprintf(stderr, "wse-bench: %s (%s)\n", t.c_str(), opt.protocol.c_str());
    if (t == "connection-storm") sections.push_back(connection_storm(cx));
    if (t == "ping-latency") sections.push_back(ping_latency(cx));
    if (t == "throughput") sections.push_back(throughput(cx));
    if (t == "size-matrix") sections.push_back(size_matrix(cx));
    if (t == "format-comparison") sections.push_back(format_comparison(cx));
    if (t == "sustained-hold") sections.push_back(sustained_hold(cx));
    if (t == "connection-limit") sections.push_back(connection_limit(cx));
    if (t == "pingpong" || t == "echo" || t == "blast") sections.push_back(go_mode(cx, t));
    if (t == "fanout-broadcast") sections.push_back(fanout(cx, fanout_mode::topic));
    if (t == "broadcast-all") sections.push_back(fanout(cx, fanout_mode::broadcast));
    if (t == "fanout-multi") sections.push_back(fanout(cx, fanout_mode::multi));
  }

  uint64_t errors = 0;
  std::printf(
      "# wse-bench: %s protocol%s, %s:%u%s, tiers %s, %.1f s per measurement\n\n",
      opt.protocol.c_str(), opt.tls ? " over TLS" : "", opt.host.c_str(), opt.port,
      opt.port2 ? (" and :" + std::to_string(opt.port2)).c_str() : "",
      [&] {
        std::string s;
        for (uint32_t n : opt.tiers) s += (s.empty() ? "" : ",") + std::to_string(n);
        return s;
      }()
          .c_str(),
      opt.duration_s);
  std::printf("Client: %u thread(s)%s, RLIMIT_NOFILE %u per ring (direct descriptors).\n\n",
              opt.runner.threads, opt.runner.cpus.empty() ? "" : " pinned", ring_files_max());
  int number = 0;
  for (const section& s : sections) {
    std::printf("## Test %d: %s (`%s`)\n\n%s\n", ++number, scenario_titles().at(s.name).c_str(),
                s.name.c_str(), s.markdown.c_str());
    errors += s.errors;
  }
  std::printf("Errors in total: %s\n", commas(errors).c_str());

  if (!opt.json_path.empty()) {
    FILE* f = std::fopen(opt.json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "wse-bench: cannot write %s\n", opt.json_path.c_str());
      return 1;
    }
    std::string tiers;
    for (uint32_t n : opt.tiers) tiers += (tiers.empty() ? "" : ", ") + std::to_string(n);
    std::fprintf(
        f, "{\n  \"tool\": \"wse-bench\",\n  \"config\": %s,\n  \"tests\": {\n",
        json_obj()
            .str("protocol", opt.protocol)
            .boolean("tls", opt.tls)
            .str("host", opt.host)
            .integer("port", opt.port)
            .integer("port2", opt.port2)
            .str("path", opt.path)
            .raw("tiers", "[" + tiers + "]")
            .num("duration_s", opt.duration_s)
            .integer("threads", opt.runner.threads)
            .integer("ring_files_max", ring_files_max())
            .integer("server_pid", static_cast<uint64_t>(std::max(0, opt.runner.server_pid)))
            .str("publisher", opt.publisher)
            .str("redis_url", opt.redis_url)
            .str("redis_prefix", opt.redis_prefix)
            .str("topic", opt.topic)
            .num("publish_rate", opt.publish_rate)
            .integer("publish_batch", opt.publish_batch)
            .integer("publish_inflight", opt.publish_inflight)
            .done()
            .c_str());
    for (size_t k = 0; k < sections.size(); ++k) {
      const section& s = sections[k];
      std::string rows;
      for (size_t r = 0; r < s.rows.size(); ++r) rows += (r ? ",\n      " : "      ") + s.rows[r];
      std::fprintf(f,
                   "    %s: {\"errors\": %" PRIu64 ", \"summary\": %s, \"rows\": [\n%s\n    ]}%s\n",
                   json_str(s.name).c_str(), s.errors, s.summary_json.c_str(), rows.c_str(),
                   k + 1 < sections.size() ? "," : "");
    }
    std::fprintf(f, "  },\n  \"errors\": %" PRIu64 "\n}\n", errors);
    std::fclose(f);
  }
  return errors == 0 ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  std::vector<std::string> tests;
  std::string tiers, sizes, cpus;
  opt.runner.threads = static_cast<uint32_t>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  CLI::App app{"wse-bench: io_uring WebSocket load generator (WSE protocol or raw RFC 6455)"};
  app.footer(help_text);
  app.add_option("--test", tests, "scenario(s) to run (default: all); see below")
      ->delimiter(',')
      ->check(CLI::IsMember(all_tests));
  app.add_option("--protocol", opt.protocol,
                 "wse: JWT cookie, wait server_ready, send client_hello; raw: plain RFC 6455")
      ->check(CLI::IsMember({"wse", "raw"}))
      ->capture_default_str();
  app.add_option("--host", opt.host, "server IPv4 address (127.0.0.0/8)")->capture_default_str();
  app.add_option("--port", opt.port, "server port")->capture_default_str();
  app.add_flag("--tls", opt.tls,
               "speak TLS (wss://) on every WebSocket connection; see TLS below for the HTTP "
               "publisher and /metrics");
  app.add_option("--tls-ca-file", opt.tls_ca_file,
                 "--tls: verify the server's certificate against this PEM CA bundle (default: "
                 "no verification, for a self-signed benchmark server)");
  app.add_option("--port-b,--port2", opt.port2,
                 "second server (instance B) port: odd-numbered connections go there "
                 "(fanout-multi needs it)");
  app.add_option("--path", opt.path, "request target of the upgrade")->capture_default_str();
  app.add_option("--secret", opt.secret, "HS256 secret for the JWT (wse)")->capture_default_str();
  app.add_option("--sub", opt.sub, "JWT sub claim of the shared token")->capture_default_str();
  app.add_flag("--token-per-connection", opt.token_per_connection,
               "mint one token per connection (sub = bench-user-<n>)");
  app.add_flag("--print-token", opt.print_token, "print a token minted from --secret and exit");
  app.add_option("--tiers", tiers, "connection counts, e.g. 100,500,1K,10K (default 100,1000)");
  app.add_option("--duration", opt.duration_s, "seconds per measurement (max 3600)")
      ->check(CLI::Range(0.1, duration_s_max))
      ->capture_default_str();
  app.add_option("--size", opt.size_bytes, "payload bytes for pingpong/echo/blast")
      ->check(CLI::Range(20u, 1u << 20))
      ->capture_default_str();
  app.add_option("--sizes", sizes, "size-matrix payloads (default 64,256,1024,4096,16384,65536)");
  app.add_option("--window", opt.window, "echo: messages in flight per connection")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--stream-window-bytes", opt.stream_window_bytes,
                 "raw streams: unanswered bytes per connection (under the server's outbound cap)")
      ->check(CLI::Range(1024u, 64u << 20))
      ->capture_default_str();
  app.add_option("--pings", opt.pings, "ping-latency: pings per connection")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--ping-interval", opt.ping_interval_s,
                 "sustained-hold: seconds between pings (default min(5, duration/3))")
      ->check(CLI::Range(0.001, 60.0));
  app.add_option("--max-conns", opt.max_conns, "connection-limit: upper bound")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--limit-start", opt.limit_start, "connection-limit: first probe")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--threads", opt.runner.threads,
                 "worker threads (one io_uring each; more rings "
                 "are added when connections exceed RLIMIT_NOFILE)")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  app.add_option("--cpus", cpus, "pin worker threads to these CPUs, e.g. 1 or 0-3 or 1,3");
  app.add_option("--connect-inflight", opt.runner.connect_inflight,
                 "connections connecting or upgrading at once, whole process")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
  app.add_option("--source-ips", opt.runner.source_ips,
                 "spread connections over 127.0.0.1..N (default: as the port range requires)")
      ->check(CLI::Range(0u, 254u));
  app.add_option("--max-rings", opt.runner.max_rings, "most rings (threads) a tier may use")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--ramp-timeout", opt.ramp_timeout_s, "seconds a tier may take to connect")
      ->check(CLI::Range(1.0, 600.0))
      ->capture_default_str();
  app.add_option("--server-pid", opt.runner.server_pid,
                 "server process: CPU time per message and RSS per connection from /proc");
  app.add_option("--json", opt.json_path, "also write the results as JSON to this file");
  app.add_option("--publisher", opt.publisher,
                 "fanout: api (POST /api/publish), wse (a WSE connection allowed to publish), "
                 "redis (PUBLISH into --redis-url) or server (the server publishes by itself; "
                 "the bench only counts)")
      ->check(CLI::IsMember({"api", "wse", "redis", "server"}))
      ->capture_default_str();
  app.add_option(
      "--api-key-file", opt.api_key_file,
      "fanout, --publisher api: file holding the API key (one trailing newline dropped)");
  app.add_option("--topic", opt.topic, "fanout: the topic subscribed to and published on")
      ->capture_default_str();
  app.add_option("--publish-batch", opt.publish_batch,
                 "fanout: publications per API request (a JSON array) or per WSE send")
      ->check(CLI::Range(1u, 10000u))
      ->capture_default_str();
  app.add_option("--publish-inflight", opt.publish_inflight,
                 "fanout, --publisher api: requests in flight on the keep-alive connection")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--publish-rate", opt.publish_rate,
                 "fanout: publications per second (0: as fast as the server takes them)")
      ->check(CLI::Range(0.0, 1e9))
      ->capture_default_str();
  app.add_option("--publish-window", opt.publish_window,
                 "fanout: publications the publisher may be ahead of the average subscriber "
                 "(default: 8M deliveries in flight, 16..1,000 publications; 0: no end-to-end "
                 "flow control, the server's slow-consumer policy decides)")
      ->check(CLI::Range(int64_t{0}, int64_t{100000000}));
  app.add_option("--api-port", opt.api_port, "fanout: port of the HTTP API (default: --port)");
  app.add_option("--metrics-port", opt.metrics_port,
                 "fanout: port serving /metrics (slow-consumer drops; default: the API port)");
  app.add_option("--metrics-port-b", opt.metrics_port_b,
                 "fanout, two servers: port serving B's /metrics and /readyz (default: --port-b)");
  app.add_option("--redis-url", opt.redis_url,
                 "fanout: redis://127.x.x.x:PORT: --publisher redis publishes there, and any "
                 "publisher waits until Redis counts every instance subscribed to the channel");
  app.add_option("--subscribe-timeout", opt.subscribe_timeout_s,
                 "fanout: seconds after the ramp for every subscription to be confirmed, and "
                 "again for every server's /readyz (and Redis's subscriber count)")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  app.add_option("--redis-prefix", opt.redis_prefix,
                 "fanout: the servers' Redis channel prefix (channel = prefix + topic)")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
    if (!tiers.empty()) opt.tiers = parse_list(tiers);
    if (!sizes.empty()) opt.sizes = parse_list(sizes);
    if (!cpus.empty()) opt.runner.cpus = parse_cpu_list(cpus);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wse-bench: bad list: %s\n", e.what());
    return 2;
  }
  bool fanout_named = false;
  for (const std::string& t : tests) {
    fanout_named |= std::find(fanout_tests.begin(), fanout_tests.end(), t) != fanout_tests.end();
  }
  if (fanout_named) {
    bool plain = !opt.topic.empty() && opt.topic.size() <= 256;
    for (char ch : opt.topic)
      plain = plain && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' ||
                        ch == '.' || ch == ':');
    if (!plain) {
      std::fprintf(stderr, "wse-bench: --topic must be 1..256 of [A-Za-z0-9_.:-]\n");
      return 2;
    }
    if (opt.protocol == "raw" && opt.publisher != "server") {
      std::fprintf(stderr,
                   "wse-bench: fanout with --protocol raw needs --publisher server (raw "
                   "connections cannot subscribe)\n");
      return 2;
    }
    if (opt.publisher == "wse" &&
        std::find(tests.begin(), tests.end(), "broadcast-all") != tests.end()) {
      std::fprintf(stderr,
                   "wse-bench: broadcast-all needs --publisher api or server (a WSE client "
                   "publishes to a topic only)\n");
      return 2;
    }
    bool multi = std::find(tests.begin(), tests.end(), "fanout-multi") != tests.end();
    if (multi && opt.port2 == 0) {
      std::fprintf(stderr, "wse-bench: fanout-multi needs --port-b (instance B)\n");
      return 2;
    }
    if (multi && opt.publisher == "server") {
      std::fprintf(stderr,
                   "wse-bench: fanout-multi needs --publisher api, wse or redis (one publisher "
                   "for both instances)\n");
      return 2;
    }
    if (opt.publisher == "redis" && opt.redis_url.empty()) {
      std::fprintf(stderr, "wse-bench: --publisher redis needs --redis-url\n");
      return 2;
    }
    if (!opt.redis_url.empty()) {
      std::string why = parse_redis_url(opt.redis_url, opt.redis_addr);
      if (!why.empty()) {
        std::fprintf(stderr, "wse-bench: --redis-url %s: %s\n", opt.redis_url.c_str(), why.c_str());
        return 2;
      }
    }
    if (opt.tls) {
      std::string why = tls_plain_ports_problem(opt);
      if (!why.empty()) {
        std::fprintf(stderr, "wse-bench: --tls: %s\n", why.c_str());
        return 2;
      }
    }
    if (opt.publisher == "api") {
      if (opt.api_key_file.empty()) {
        std::fprintf(stderr, "wse-bench: --publisher api needs --api-key-file\n");
        return 2;
      }
      std::ifstream in(opt.api_key_file, std::ios::binary);
      std::stringstream text;
      text << in.rdbuf();
      opt.api_key = text.str();
      if (!opt.api_key.empty() && opt.api_key.back() == '\n') opt.api_key.pop_back();
      if (!in || opt.api_key.empty() || opt.api_key.find_first_of("\r\n") != std::string::npos) {
        std::fprintf(stderr, "wse-bench: cannot read one key line from --api-key-file %s\n",
                     opt.api_key_file.c_str());
        return 2;
      }
    }
  }
  if (!opt.tls_ca_file.empty() && !opt.tls) {
    std::fprintf(stderr, "wse-bench: --tls-ca-file needs --tls\n");
    return 2;
  }
  if (opt.print_token) {
    std::printf("%s\n", mint_hs256(opt.secret, bench_claims(opt.sub, time(nullptr))).c_str());
    return 0;
  }
  for (uint32_t n : opt.tiers) {
    if (n == 0 || n > 10000000) {
      std::fprintf(stderr, "wse-bench: tiers must be 1..10M\n");
      return 2;
    }
  }
  for (int c : opt.runner.cpus) {
    if (c >= CPU_SETSIZE) {  // the worker's cpu_set_t holds CPU_SETSIZE CPUs
      std::fprintf(stderr, "wse-bench: --cpus must be 0..%d\n", CPU_SETSIZE - 1);
      return 2;
    }
  }
  for (uint32_t n : opt.sizes) {
    if (n < 20 || n > (16u << 20)) {
      std::fprintf(stderr, "wse-bench: sizes must be 20 B..16 MiB\n");
      return 2;
    }
  }
  // Order: the canonical one, whatever order the flags gave.
  for (const std::string& t : all_tests) {
    bool fanout_test = std::find(fanout_tests.begin(), fanout_tests.end(), t) != fanout_tests.end();
    if ((tests.empty() && !fanout_test) ||
        std::find(tests.begin(), tests.end(), t) != tests.end()) {
      opt.tests.push_back(t);
    }
  }
  signal(SIGPIPE, SIG_IGN);
  return run_all(opt);
}
