// engine/metrics.cpp: names of the counter labels and the Prometheus text rendering.
// Runs on whichever shard serves GET /metrics; only reads counters (and /proc/self for the
// process families).
#include "engine/metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>

#include "engine/log.hpp"

namespace wsed::engine {

const char* name_of(reject_reason r) {
  static constexpr const char* names[] = {"max_connections", "pending_handshakes", "bad_request",
                                          "version",         "header_too_large",   "origin",
                                          "per_ip"};
  static_assert(std::size(names) == size_t(reject_reason::count_));
  return names[size_t(r)];
}

const char* name_of(close_reason r) {
  static constexpr const char* names[] = {
      "client_close",      "protocol_error", "invalid_utf8",   "message_too_big",   "idle_timeout",
      "handshake_timeout", "shutdown",       "slow_consumer",  "unfinished_budget", "peer_reset",
      "peer_eof",          "http_done",      "internal_error", "app_close",         "auth_failed",
      "rate_limited",      "tls_error"};
  static_assert(std::size(names) == size_t(close_reason::count_));
  return names[size_t(r)];
}

const char* name_of(limit_kind l) {
  static constexpr const char* names[] = {
      "max_connections",        "max_pending_handshakes",    "max_message_size", "max_fragments",
      "max_unfinished_bytes",   "max_outbound_bytes",        "header_bytes",     "file_table",
      "max_connections_per_ip", "max_topics_per_connection", "inbox_pass_budget"};
  static_assert(std::size(names) == size_t(limit_kind::count_));
  return names[size_t(l)];
}

const char* name_of(api_result r) {
  static constexpr const char* names[] = {"ok",     "bad_request",     "unauthorized", "not_found",
                                          "method", "length_required", "too_large",    "busy"};
  static_assert(std::size(names) == size_t(api_result::count_));
  return names[size_t(r)];
}

const char* name_of(publish_kind k) {
  static constexpr const char* names[] = {"topic", "broadcast", "user"};
  static_assert(std::size(names) == size_t(publish_kind::count_));
  return names[size_t(k)];
}

const char* name_of(tls_result r) {
  static constexpr const char* names[] = {"ok", "failed", "plain_http"};
  static_assert(std::size(names) == size_t(tls_result::count_));
  return names[size_t(r)];
}

const char* name_of(slow_action a) {
  static constexpr const char* names[] = {"disconnect", "drop"};
  static_assert(std::size(names) == size_t(slow_action::count_));
  return names[size_t(a)];
}

const char* name_of(deflate_event e) {
  static constexpr const char* names[] = {
      "negotiated",      "declined",       "inflated",    "bad_data",         "compressed",
      "below_threshold", "incompressible", "shared_made", "shared_delivered",
  };
  static_assert(std::size(names) == size_t(deflate_event::count_));
  return names[size_t(e)];
}

void append_family(std::string& out, size_t shard_count,
                   const std::function<uint64_t(size_t)>& read, const char* name, const char* type,
                   const char* help, const char* label, const char* label_value, bool header) {
  char line[256];
  if (header) {
    std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    out += line;
  }
  for (size_t i = 0; i < shard_count; ++i) {
    uint64_t v = read(i);
    if (label)
      std::snprintf(line, sizeof line, "%s{shard=\"%zu\",%s=\"%s\"} %" PRIu64 "\n", name, i, label,
                    label_value, v);
    else
      std::snprintf(line, sizeof line, "%s{shard=\"%zu\"} %" PRIu64 "\n", name, i, v);
    out += line;
  }
}

namespace {

using reader = std::function<uint64_t(const shard_metrics&)>;

void family(std::string& out, std::span<const shard_metrics* const> shards, const char* name,
            const char* type, const char* help, const reader& read, const char* label = nullptr,
            const char* label_value = nullptr, bool header = true) {
  append_family(
      out, shards.size(), [&](size_t i) { return read(*shards[i]); }, name, type, help, label,
      label_value, header);
}

template <class Enum, class Array>
void labelled(std::string& out, std::span<const shard_metrics* const> shards, const char* name,
              const char* help, const char* label, Array shard_metrics::*field) {
  for (size_t k = 0; k < size_t(Enum::count_); ++k) {
    family(
        out, shards, name, "counter", help,
        [&](const shard_metrics& m) { return (m.*field)[k].get(); }, label, name_of(Enum(k)),
        k == 0);
  }
}

// A histogram family in seconds: per shard, cumulative `_bucket`s up to le="+Inf", `_sum`,
// `_count`. The count is the +Inf bucket as read here, so each shard's series agree with
// themselves even while the shard keeps observing.
void histogram_family(std::string& out, std::span<const shard_metrics* const> shards,
                      const char* name, const char* help, histogram shard_metrics::*field) {
  char line[320];
  std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  out += line;
  for (size_t s = 0; s < shards.size(); ++s) {
    const histogram& h = (*shards[s]).*field;
    uint64_t cumulative = 0;
    for (size_t b = 0; b < histogram::bucket_count; ++b) {
      cumulative += h.bucket(b);
      if (b < histogram::bounds_ns.size())
        std::snprintf(line, sizeof line, "%s_bucket{shard=\"%zu\",le=\"%g\"} %" PRIu64 "\n", name,
                      s, double(histogram::bounds_ns[b]) / 1e9, cumulative);
      else
        std::snprintf(line, sizeof line, "%s_bucket{shard=\"%zu\",le=\"+Inf\"} %" PRIu64 "\n", name,
                      s, cumulative);
      out += line;
    }
    std::snprintf(line, sizeof line,
                  "%s_sum{shard=\"%zu\"} %.9g\n%s_count{shard=\"%zu\"} %" PRIu64 "\n", name, s,
                  h.sum_seconds(), name, s, cumulative);
    out += line;
  }
}

// One unlabelled sample with its HELP/TYPE lines.
void sample(std::string& out, const char* name, const char* type, const char* help, double v) {
  char line[320];
  std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s %.15g\n", name, help, name, type,
                name, v);
  out += line;
}

// The process families of the Prometheus client libraries (same names, same units), from
// /proc/self: what an operator's process dashboards and `up`-style alerts already expect.
void process_families(std::string& out) {
  const double page = double(sysconf(_SC_PAGESIZE));
  const double ticks = double(sysconf(_SC_CLK_TCK));
  // /proc/self/stat: fields after the ")" that ends the command name; utime is field 14,
  // stime 15, starttime 22, vsize 23, rss 24 (man 5 proc).
  char buf[1024];
  double utime = 0, stime = 0, start_ticks = 0, vsize = 0, rss_pages = 0;
  if (FILE* f = std::fopen("/proc/self/stat", "r")) {
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    if (const char* p = std::strrchr(buf, ')')) {
      unsigned long long v[22] = {};  // fields 3..24
      int got = std::sscanf(p + 2,
                            "%*c %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
                            "%llu %llu %llu %llu %llu %llu %llu %llu",
                            &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10],
                            &v[11], &v[12], &v[13], &v[14], &v[15], &v[16], &v[17], &v[18], &v[19],
                            &v[20], &v[21]);
      if (got == 21) {  // v[k] is field k + 3
        utime = double(v[11]);
        stime = double(v[12]);
        start_ticks = double(v[19]);
        vsize = double(v[20]);
        rss_pages = double(v[21]);
      }
    }
  }
  double boot_time = 0;
  if (FILE* f = std::fopen("/proc/stat", "r")) {
    char ln[256];
    while (std::fgets(ln, sizeof ln, f)) {
      unsigned long long b;
      if (std::sscanf(ln, "btime %llu", &b) == 1) {
        boot_time = double(b);
        break;
      }
    }
    std::fclose(f);
  }
  size_t fds = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++fds;
    closedir(d);
    if (fds) --fds;  // the directory's own descriptor
  }
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  sample(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent, seconds.",
         (utime + stime) / ticks);
  sample(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         rss_pages * page);
  sample(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize);
  sample(out, "process_start_time_seconds", "gauge",
         "Start time of the process since the Unix epoch, seconds.",
         boot_time + start_ticks / ticks);
  sample(out, "process_open_fds", "gauge",
         "Open file descriptors (io_uring direct descriptors of connections are not among them).",
         double(fds));
  sample(out, "process_max_fds", "gauge", "RLIMIT_NOFILE (soft): the file descriptor limit.",
         double(rl.rlim_cur));
}

}  // namespace

std::string render_prometheus(std::span<const shard_metrics* const> shards) {
  std::string out;
  out.reserve(32768);
  family(out, shards, "wsed_connections_open", "gauge", "WebSocket connections open.",
         [](const shard_metrics& m) { return m.connections_open.get(); });
  family(out, shards, "wsed_connection_slots_used", "gauge",
         "Sockets holding a connection slot (in handshake, open, or closing).",
         [](const shard_metrics& m) { return m.slots_used.get(); });
  family(out, shards, "wsed_connections_accepted_total", "counter", "TCP connections accepted.",
         [](const shard_metrics& m) { return m.connections_accepted.get(); });
  labelled<reject_reason>(out, shards, "wsed_connections_rejected_total",
                          "Connections refused before the upgrade, by reason.", "reason",
                          &shard_metrics::rejected);
  labelled<close_reason>(out, shards, "wsed_connections_closed_total",
                         "Connections closed, by reason.", "reason", &shard_metrics::closed);
  family(out, shards, "wsed_messages_in_total", "counter", "Data messages received.",
         [](const shard_metrics& m) { return m.messages_in.get(); });
  family(out, shards, "wsed_messages_out_total", "counter", "Data messages queued to clients.",
         [](const shard_metrics& m) { return m.messages_out.get(); });
  family(out, shards, "wsed_bytes_in_total", "counter", "Bytes received from sockets.",
         [](const shard_metrics& m) { return m.bytes_in.get(); });
  family(out, shards, "wsed_bytes_out_total", "counter", "Bytes sent to sockets.",
         [](const shard_metrics& m) { return m.bytes_out.get(); });
  family(out, shards, "wsed_accept_pauses_total", "counter",
         "Times a shard stopped accepting because its descriptor table (capped by RLIMIT_NOFILE) "
         "was nearly full; connections wait in the listen queue meanwhile.",
         [](const shard_metrics& m) { return m.accept_pauses.get(); });
  family(out, shards, "wsed_sends_total", "counter",
         "Send operations submitted (bytes out per send: how well queued messages coalesce).",
         [](const shard_metrics& m) { return m.sends.get(); });
  family(out, shards, "wsed_stale_completions_total", "counter",
         "Completions for a connection slot that was already reused (dropped).",
         [](const shard_metrics& m) { return m.stale_completions.get(); });
  family(out, shards, "wsed_recv_rearms_total", "counter",
         "Multishot receives re-armed (provided buffers ran out or the kernel ended them).",
         [](const shard_metrics& m) { return m.recv_rearms.get(); });
  labelled<limit_kind>(out, shards, "wsed_limit_hits_total", "Times a limit was hit, by limit.",
                       "limit", &shard_metrics::limit_hits);
  labelled<api_result>(out, shards, "wsed_api_requests_total",
                       "HTTP API requests (POST /api/publish), by answer.", "result",
                       &shard_metrics::api_requests);
  family(out, shards, "wsed_api_publications_total", "counter",
         "Publications accepted through the HTTP API.",
         [](const shard_metrics& m) { return m.api_publications.get(); });
  labelled<publish_kind>(out, shards, "wsed_fanout_published_total",
                         "Publications framed on this shard (any source), by target.", "kind",
                         &shard_metrics::published);
  family(out, shards, "wsed_fanout_deliveries_total", "counter",
         "Shared publication frames queued to connections.",
         [](const shard_metrics& m) { return m.deliveries.get(); });
  family(out, shards, "wsed_fanout_deliveries_shared_total", "counter",
         "Of those, queued by reference to the shared frame (--share-frames-from), not copied.",
         [](const shard_metrics& m) { return m.deliveries_shared.get(); });
  family(out, shards, "wsed_outbound_queued_bytes", "gauge",
         "Bytes queued to this shard's connections and not sent yet.",
         [](const shard_metrics& m) { return m.queued_bytes.get(); });
  family(out, shards, "wsed_fanout_inbox_full_total", "counter",
         "Pushes refused by a full shard inbox (backpressure to the publisher).",
         [](const shard_metrics& m) { return m.inbox_full.get(); });
  family(out, shards, "wsed_fanout_inbox_drained_total", "counter",
         "Deliveries taken from this shard's inbox.",
         [](const shard_metrics& m) { return m.inbox_drained.get(); });
  labelled<slow_action>(out, shards, "wsed_slow_consumer_total",
                        "Messages for a connection over --max-outbound-bytes, by what was done.",
                        "action", &shard_metrics::slow_consumer);
  labelled<tls_result>(out, shards, "wsed_tls_handshakes_total",
                       "TLS handshakes on the main port (--tls-cert-file), by outcome.", "result",
                       &shard_metrics::tls_handshakes);
  family(out, shards, "wsed_tls_record_errors_total", "counter",
         "TLS record errors after the handshake (bad MAC, unexpected message): closed.",
         [](const shard_metrics& m) { return m.tls_errors.get(); });
  family(out, shards, "wsed_tls_connections", "gauge",
         "Connections holding a TLS session (handshaking, open or closing).",
         [](const shard_metrics& m) { return m.tls_connections.get(); });
  labelled<deflate_event>(out, shards, "wsed_deflate_total",
                          "permessage-deflate: negotiations and messages, by event.", "event",
                          &shard_metrics::deflate);
  family(out, shards, "wsed_deflate_in_wire_bytes_total", "counter",
         "Compressed payload bytes received (permessage-deflate).",
         [](const shard_metrics& m) { return m.deflate_in_wire_bytes.get(); });
  family(out, shards, "wsed_deflate_in_bytes_total", "counter",
         "What the compressed messages received inflated to.",
         [](const shard_metrics& m) { return m.deflate_in_bytes.get(); });
  family(out, shards, "wsed_deflate_out_bytes_total", "counter",
         "Message bytes compressed for sending (per-connection sends and shared twins).",
         [](const shard_metrics& m) { return m.deflate_out_bytes.get(); });
  family(out, shards, "wsed_deflate_out_wire_bytes_total", "counter",
         "What those messages compressed to.",
         [](const shard_metrics& m) { return m.deflate_out_wire_bytes.get(); });
  histogram_family(out, shards, "wsed_handshake_duration_seconds",
                   "From the loop pass that accepted the socket (for an upgrade on a kept-alive "
                   "HTTP connection: that queued the previous answer) to the one that queued the "
                   "101; with TLS it includes the TLS handshake.",
                   &shard_metrics::handshake_duration);
  histogram_family(out, shards, "wsed_fanout_pass_duration_seconds",
                   "One delivery pass of a publication over its recipients on a shard (topic, "
                   "broadcast, user or queue-group delivery from the shard's inbox).",
                   &shard_metrics::fanout_pass_duration);
  histogram_family(out, shards, "wsed_delivery_latency_seconds",
                   "From the fan-out hub accepting a publication (client, HTTP API, Redis, "
                   "embedder) to the end of the fan-out pass that queued it to a connection, one "
                   "observation per connection.",
                   &shard_metrics::delivery_latency);
  family(out, shards, "wsed_recv_buffers_lent", "gauge",
         "Provided receive buffers handed to the shard by the kernel and not recycled yet.",
         [](const shard_metrics& m) { return m.recv_buffers_lent.get(); });
  family(out, shards, "wsed_reassembly_bytes", "gauge",
         "Payload bytes held for messages arriving in several frames or receives.",
         [](const shard_metrics& m) { return m.assembly_bytes.get(); });
  for (size_t k = 0; k < size_t(fault_kind::count_); ++k)
    family(
        out, shards, "wsed_faults_injected_total", "counter",
        "Faults injected by --fault-inject (testing), by kind.",
        [k](const shard_metrics& m) { return m.faults ? m.faults->injected(fault_kind(k)) : 0; },
        "kind", name_of(fault_kind(k)), k == 0);
  sample(out, "wsed_log_suppressed_total", "counter",
         "Log lines counted instead of printed by the repeat limiter (README \"Logs\").",
         double(log::suppressed_total()));
  process_families(out);
  return out;
}

}  // namespace wsed::engine
