// engine/metrics.hpp: per-shard counters and histograms and their Prometheus rendering.
//
// Each shard owns one shard_metrics and is its only writer; any shard may read every shard's
// counters to render /metrics. Counters are relaxed atomics written with load+store (no locked
// instruction on the hot path: there is one writer), read with relaxed loads. A histogram is
// such counters too (one per bucket, and the sum). Every per-shard family is exposed per shard
// only (`shard="i"`): no total series, which would double a PromQL `sum` (README "Metrics").
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "engine/fault.hpp"

namespace wsed::engine {

enum class reject_reason : uint8_t {
  max_connections,
  pending_handshakes,
  bad_request,
  version,
  header_too_large,
  origin,  // Origin header present and not in --allowed-origins
  per_ip,  // --max-connections-per-ip reached for the client's address
  count_
};

enum class close_reason : uint8_t {
  client_close,
  protocol_error,
  invalid_utf8,
  message_too_big,
  idle_timeout,
  handshake_timeout,
  shutdown,
  slow_consumer,
  unfinished_budget,
  peer_reset,
  peer_eof,
  http_done,
  internal_error,
  app_close,     // the application called shard::close
  auth_failed,   // WSE: token missing or refused (4401)
  rate_limited,  // WSE: over the inbound rate for too long (4429)
  tls_error,     // a TLS handshake or record error, or a plain HTTP client on the TLS port
  count_
};

enum class limit_kind : uint8_t {
  max_connections,
  max_pending_handshakes,
  max_message_size,
  max_fragments,
  max_unfinished_bytes,
  max_outbound_bytes,
  header_bytes,
  file_table,
  connections_per_ip,
  max_topics_per_connection,
  inbox_pass_budget,  // a loop pass stopped draining its inbox at the per-pass budget
  count_
};

// Answers of the HTTP API (POST /api/publish).
enum class api_result : uint8_t {
  ok,
  bad_request,
  unauthorized,
  not_found,
  method,
  length_required,
  too_large,
  busy,
  count_
};

// What a publication was addressed to.
enum class publish_kind : uint8_t { topic, broadcast, user, count_ };

// How a TLS handshake ended (the main port with --tls-cert-file).
enum class tls_result : uint8_t {
  ok,
  failed,      // a handshake error: bad record, no shared cipher, a refused client certificate
  plain_http,  // a plain HTTP request on the TLS port (answered 400 in clear text)
  count_
};

// What the slow-consumer policy did with a message for a connection over its outbound cap.
enum class slow_action : uint8_t { disconnect, drop, count_ };

// permessage-deflate (RFC 7692) events, per shard.
enum class deflate_event : uint8_t {
  negotiated,        // upgrades that accepted an offer
  declined,          // upgrades that offered it and got no extension (no acceptable offer, or off)
  inflated,          // compressed messages received and inflated
  bad_data,          // compressed messages that were not valid DEFLATE (close 1007)
  compressed,        // messages sent compressed (per-connection sends)
  below_threshold,   // messages sent plain on a deflate connection: under --deflate-threshold
  incompressible,    // messages sent plain: compressing did not make them smaller
  shared_made,       // publications compressed once into a shared twin frame
  shared_delivered,  // deliveries of a shared twin frame (compressed, no compression of its own)
  count_
};

const char* name_of(reject_reason r);
const char* name_of(close_reason r);
const char* name_of(limit_kind l);
const char* name_of(api_result r);
const char* name_of(publish_kind k);
const char* name_of(slow_action a);
const char* name_of(tls_result r);
const char* name_of(deflate_event e);

class counter {
 public:
  void add(uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void sub(uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  void set(uint64_t v) { v_.store(v, std::memory_order_relaxed); }  // a gauge's one writer
  uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

// A duration histogram with one writer (its shard) and any number of readers: a counter per
// bucket (not cumulative; rendering sums them up) and the sum of the observed seconds (a double,
// as Prometheus's client libraries keep it: nanoseconds weighted by a pass's deliveries would
// wrap a uint64 within hours at 100,000 subscribers per publication). The bucket bounds are
// fixed (1-2.5-5 steps from 1 us to 10 s): a few compares find the bucket of the short
// durations that dominate, and every shard's series have the same `le` set for PromQL.
class histogram {
 public:
  static constexpr std::array<uint64_t, 22> bounds_ns = {
      1'000,         2'500,         5'000,         10'000,        25'000,      50'000,
      100'000,       250'000,       500'000,       1'000'000,     2'500'000,   5'000'000,
      10'000'000,    25'000'000,    50'000'000,    100'000'000,   250'000'000, 500'000'000,
      1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
  static constexpr size_t bucket_count = bounds_ns.size() + 1;  // the last one is +Inf

  // n observations of ns each (a fan-out pass's deliveries share one latency).
  void observe_ns(uint64_t ns, uint64_t n = 1) {
    size_t i = 0;
    while (i < bounds_ns.size() && ns > bounds_ns[i]) ++i;
    buckets_[i].add(n);
    // One writer: load + store, no compare-exchange loop.
    sum_seconds_.store(sum_seconds_.load(std::memory_order_relaxed) + double(ns) * 1e-9 * double(n),
                       std::memory_order_relaxed);
  }
  // Observations in bucket i alone (not cumulative).
  uint64_t bucket(size_t i) const { return buckets_[i].get(); }
  double sum_seconds() const { return sum_seconds_.load(std::memory_order_relaxed); }

 private:
  std::array<counter, bucket_count> buckets_;
  std::atomic<double> sum_seconds_{0};
  static_assert(std::atomic<double>::is_always_lock_free);
};

struct shard_metrics {
  counter connections_open;  // WebSocket connections past the upgrade
  counter slots_used;        // sockets holding a slot: handshakes, WebSockets, closing ones
  counter connections_accepted;
  std::array<counter, size_t(reject_reason::count_)> rejected;
  std::array<counter, size_t(close_reason::count_)> closed;
  counter messages_in;
  counter messages_out;
  counter bytes_in;
  counter bytes_out;
  counter accept_pauses;  // accepts paused: the shard's (capped) descriptor table nearly full
  counter sends;          // send operations submitted (bytes_out / sends: bytes per send)
  counter stale_completions;
  counter recv_rearms;  // multishot recv re-armed (ENOBUFS or kernel ended it)
  std::array<counter, size_t(limit_kind::count_)> limit_hits;
  // Fan-out.
  std::array<counter, size_t(api_result::count_)> api_requests;
  counter api_publications;                                     // publish API items accepted
  std::array<counter, size_t(publish_kind::count_)> published;  // made on this shard
  counter deliveries;         // shared frames queued to connections
  counter deliveries_shared;  // of those, queued by reference to the frame (not copied)
  counter queued_bytes;       // gauge: bytes in this shard's outbound queues (not yet sent)
  counter inbox_full;         // pushes into a full inbox (by the producing shard)
  counter inbox_drained;      // deliveries taken from this shard's inbox
  std::array<counter, size_t(slow_action::count_)> slow_consumer;
  // TLS.
  std::array<counter, size_t(tls_result::count_)> tls_handshakes;
  counter tls_errors;       // record errors after the handshake (the connection is closed)
  counter tls_connections;  // gauge: connections with a TLS session (handshaking or open)
  // permessage-deflate.
  std::array<counter, size_t(deflate_event::count_)> deflate;
  counter deflate_in_wire_bytes;   // compressed payload bytes received
  counter deflate_in_bytes;        // what they inflated to
  counter deflate_out_bytes;       // message bytes sent compressed (before compression)
  counter deflate_out_wire_bytes;  // what they compressed to (per-connection sends and twins)
  // Latencies (README "Metrics" names each span exactly).
  histogram handshake_duration;    // accept (or a kept-alive answer) -> the 101 queued
  histogram fanout_pass_duration;  // one publication's delivery pass over the shard's recipients
  histogram delivery_latency;      // hub accepted the publication -> queued to the connection

  // Leak accounting (back to zero once the shard is idle) and --fault-inject.
  counter recv_buffers_lent;  // gauge: provided receive buffers in our hands (not yet recycled)
  counter assembly_bytes;     // gauge: payload bytes of messages being reassembled
  const fault_injector* faults = nullptr;  // with --fault-inject: its counts are rendered
};

// Renders every shard's counters and histograms (a `shard="i"` series each), then the process
// families (process_resident_memory_bytes, ...: the names Prometheus client libraries use).
std::string render_prometheus(std::span<const shard_metrics* const> shards);

// One Prometheus series set: a `shard="i"` line per shard (read(i)), no total (sum in PromQL);
// with label, every line also carries label="label_value"; header: the HELP/TYPE lines first.
// For applications that keep their own per-shard counters.
void append_family(std::string& out, size_t shard_count,
                   const std::function<uint64_t(size_t)>& read, const char* name, const char* type,
                   const char* help, const char* label = nullptr, const char* label_value = nullptr,
                   bool header = true);

}  // namespace wsed::engine
