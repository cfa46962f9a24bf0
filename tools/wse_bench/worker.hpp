// tools/wse_bench/worker.hpp: one wse-bench load thread: an io_uring, a provided-buffer ring, a
// registered (direct-descriptor) file table and a slice of the connections, each a small state
// machine (connect -> upgrade -> [wse: wait server_ready, send client_hello] -> open).
//
// Owns: its ring, buffers and connections; the main thread only flips the phase and reads the
// published counters (atomics) and, after join, the histograms and error counts. Thread: the
// worker thread. Must never make a syscall per message (a loop pass's sends and receives go in one
// io_uring_enter), never block outside that wait, never touch another worker's connections, and
// never loop without a bound (the ramp has a deadline; the main thread ends every phase).
#pragma once

#include <liburing.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/ring.hpp"
#include "engine/tls.hpp"
#include "proto/ws.hpp"
#include "tools/bench/fanout.hpp"
#include "tools/bench/frames.hpp"
#include "tools/bench/send_progress.hpp"
#include "tools/bench/stats.hpp"

namespace wsed::bench {

using tools::cpu_seconds;
using tools::latency_histogram;
using tools::own_cpu_seconds;
using tools::process_cpu_seconds;
using tools::process_memory_kib;

enum class protocol_mode : uint8_t { raw, wse };

// none: connections only (storm, hold, limit); ping: app pings, one in flight, `pings_per_conn`
// spaced by `ping_interval_ns`; stream: template frames as fast as the window allows.
// subscribe: fanout-broadcast subscribers: (wse) subscribe to a topic after client_hello, then
// count fanout_tick messages, their seq (gaps, duplicates, reorders) and latency (now - ts_us).
enum class load_kind : uint8_t { none, ping, stream, subscribe };

// Read-only description of one tier run, shared by its workers.
struct job {
  protocol_mode protocol = protocol_mode::raw;
  sockaddr_in server{};
  sockaddr_in server2{};  // --port2 / --port-b: odd-numbered connections go here (server B)
  bool two_servers = false;
  std::string path = "/";
  std::string host_header;
  std::string host_header2;  // two_servers: the Host of B's upgrades
  std::string token;         // wse: shared token; empty: mint one per connection from secret
  std::string secret;
  int64_t token_now_s = 0;
  // --tls: every connection speaks TLS (the handshake is part of the upgrade, so of the
  // connection-storm latency); nullptr: plain TCP (no TLS code on the path).
  std::shared_ptr<const engine::tls_context> tls;
  uint32_t source_ips = 1;          // > 1: bind connection n to 127.0.0.(1 + n % source_ips)
  uint32_t connect_inflight = 250;  // per worker: connecting or upgrading at once
  uint64_t ramp_timeout_ns = 30'000'000'000;
  load_kind load = load_kind::none;
  // stream
  std::vector<uint8_t> payload;
  proto::ws_opcode opcode = proto::ws_opcode::text;
  uint32_t window_msgs = 0;  // unanswered messages per connection; 0: no replies (send only)
  // ping
  uint32_t pings_per_conn = 0;  // 0: no cap
  uint64_t ping_interval_ns = 0;
  bool ping_stagger = false;  // first ping at a random point of the interval
  // subscribe
  std::string subscribe_topic;   // wse: sent after client_hello; empty: the server subscribes
  bool tick_base_known = false;  // the publisher starts at seq 0 after every subscription
};

enum class phase : uint32_t { ramp, run, stop };

struct run_control {
  std::atomic<phase> current{phase::ramp};
  std::atomic<bool> measuring{false};  // latency is recorded only while set
  // subscribe: publications the server took (set before phase::stop; a subscriber open at the
  // end that received fewer has gaps). UINT64_MAX: unknown (the server publishes by itself).
  std::atomic<uint64_t> ticks_accepted{UINT64_MAX};
};

// subscribe: the sequence figures of a worker's subscribers (connections open at the end).
struct fanout_counts {
  uint64_t subscribers = 0;  // open at the end with a confirmed subscription
  uint64_t gaps = 0;         // seqs published and never received, over all of them
  uint64_t subscribers_with_gaps = 0;
  uint64_t max_gaps = 0;  // of one subscriber
  uint64_t duplicates = 0;
  uint64_t reorders = 0;
  void add(const fanout_counts& o) {
    subscribers += o.subscribers;
    gaps += o.gaps;
    subscribers_with_gaps += o.subscribers_with_gaps;
    max_gaps = std::max(max_gaps, o.max_gaps);
    duplicates += o.duplicates;
    reorders += o.reorders;
  }
};

// Counters a worker publishes once per loop pass.
struct alignas(64) worker_counters {
  std::atomic<uint64_t> sent_msgs{0};    // messages whose every byte the kernel accepted
  std::atomic<uint64_t> sent_bytes{0};   // wire bytes handed to the kernel
  std::atomic<uint64_t> replies{0};      // echoes (raw) or PONGs (wse) received
  std::atomic<uint64_t> reply_bytes{0};  // payload bytes of those
  std::atomic<uint64_t> replies_b{0};    // two_servers, subscribe: of those, on server B
  std::atomic<uint64_t> reply_bytes_b{0};
  std::atomic<uint32_t> open{0};              // connections open now
  std::atomic<uint32_t> opened{0};            // connections that ever completed the handshake
  std::atomic<uint32_t> failed{0};            // connections that never opened
  std::atomic<uint32_t> subscribed{0};        // subscribe: subscriptions confirmed
  std::atomic<bool> ramp_done{false};         // every connection is open or failed
  std::atomic<bool> load_done{false};         // ping: every live connection sent all its pings
  std::atomic<int> tid{0};                    // the worker thread (its CPU time is in /proc)
  std::atomic<uint64_t> first_connect_ns{0};  // CLOCK_MONOTONIC of the first connect
  std::atomic<uint64_t> last_open_ns{0};      // and of the last handshake completed
};

struct error_counts {
  uint64_t connect_failed = 0;  // refused, reset or timed out by the server side
  uint64_t os_limit = 0;  // EMFILE/ENFILE/EADDRNOTAVAIL/ENOMEM: the client's OS, not the server
  uint64_t handshake_failed = 0;  // non-101, bad accept key, EOF or close during the upgrade
  uint64_t auth_failed = 0;       // wse: error frame or close 4401 instead of server_ready
  uint64_t unexpected_close = 0;  // close frame or EOF after the handshake
  uint64_t socket_errors = 0;     // recv/send errors on an open connection
  uint64_t protocol_errors = 0;   // frames the client parser refused
  uint64_t mismatches = 0;        // a reply of the wrong size or type, or none was expected
  uint64_t subscribe_failed = 0;  // subscribe: the subscription_update reply said success false
  uint64_t server_pings = 0;      // WebSocket pings received (not an error)
  uint64_t other_messages = 0;    // wse: messages that are not replies (not an error)
  std::string first_detail;
  std::string os_limit_detail;

  uint64_t total() const {
    return connect_failed + os_limit + handshake_failed + auth_failed + unexpected_close +
           socket_errors + protocol_errors + mismatches + subscribe_failed;
  }
  void note(const std::string& detail) {
    if (first_detail.empty()) first_detail = detail;
  }
  // `connections` the client's OS refused (not the server); the first such detail kept apart.
  void note_os_limit(const std::string& detail, uint64_t connections = 1) {
    os_limit += connections;
    if (os_limit_detail.empty()) os_limit_detail = detail;
    note(detail);
  }
  void add(const error_counts& o);
};

// True for errno values that mean the client machine ran out of something (not the server).
bool is_os_limit_errno(int err);

class worker {
 public:
  worker(const job& j, run_control& control, uint32_t first_index, uint32_t count, int cpu);
  ~worker();
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  void run();

  worker_counters counters;
  latency_histogram handshake_latency;  // connect submitted -> 101 (raw) or server_ready (wse)
  latency_histogram latency;            // send -> reply (subscribe: ts_us -> received), measuring
  latency_histogram latency_b;          // two_servers, subscribe: B's subscribers (not in latency)
  error_counts errors;
  fanout_counts fanout;    // subscribe: filled when the worker stops (two_servers: A's only)
  fanout_counts fanout_b;  // two_servers, subscribe: B's subscribers
  std::string fatal;       // setup failure: the worker did nothing

 private:
  enum class conn_state : uint8_t { idle, connecting, upgrading, awaiting_ready, open, closed };
  struct handshake {
    std::string request;
    size_t request_sent = 0;
    std::string response;
    std::array<char, 28> expected_accept{};
    std::string message;  // wse: the text message being received before server_ready
  };
  static constexpr unsigned batches_max = 4;
  // --tls: one connection's session and the ciphertext of its send in flight. Every plain send
  // (upgrade request, frames) is encrypted whole when it starts; it completes once all the
  // ciphertext OpenSSL has for the connection went out.
  struct tls_side {
    explicit tls_side(const engine::tls_context& ctx) : session(ctx) {}
    engine::tls_conn session;
    std::unique_ptr<uint8_t[]> out;  // ciphertext of the send in flight
    size_t out_size = 0;
    size_t out_sent = 0;
    size_t out_cap = 0;
    bool sending = false;  // a tls_send SQE is in flight (out stays until its CQE)
  };
  struct subscriber {
    seq_tracker ticks;
    std::string partial;  // the head of a message that arrived in pieces (at most 256 bytes)
    bool subscribed = false;
    explicit subscriber(std::optional<uint64_t> first) : ticks(first) {}
  };
  struct conn {
    proto::ws_frame_parser parser{proto::ws_role::client};
    uint64_t connect_start_ns = 0;
    uint64_t next_ping_ns = 0;
    uint64_t message_bytes = 0;
    send_progress send;     // the send in flight: its messages count as the kernel takes them
    uint32_t inflight = 0;  // messages sent whose reply has not arrived
    uint32_t pings_done = 0;
    std::array<uint64_t, batches_max> batch_time_ns{};
    std::array<uint16_t, batches_max> batch_frames{};
    uint8_t batch_head = 0;
    uint8_t batch_count = 0;
    conn_state state = conn_state::idle;
    bool send_busy = false;   // a send SQE is in flight (true from queue to its CQE)
    bool recv_armed = false;  // a multishot recv is armed (true until a CQE without F_MORE)
    bool message_is_reply = false;
    bool on_b = false;  // two_servers: connected to server B
    uint8_t carry_bytes = 0;
    std::unique_ptr<handshake> hs;
    std::unique_ptr<subscriber> sub;  // subscribe only
    std::unique_ptr<tls_side> tls;    // --tls only
    std::array<uint8_t, proto::ws_carry_bytes_max> carry{};
  };
  enum class op : uint8_t { connect = 1, hs_send, recv, send, tls_send };

  bool setup();
  bool fail(const std::string& what, int err);
  io_uring_sqe* sqe();
  void recycle(uint16_t bid, unsigned offset);
  void loop();
  void ramp(uint64_t deadline);
  void open_sockets(uint32_t first, uint32_t n);
  void stamp_sends();
  void wait_and_dispatch();
  void dispatch(const io_uring_cqe* cqe);
  void publish();
  void on_connect(uint32_t i, int res);
  void send_handshake(uint32_t i);
  void on_hs_send(uint32_t i, int res);
  void arm_recv(uint32_t i);
  void on_recv(uint32_t i, const io_uring_cqe* cqe);
  void close_with(uint32_t i, uint64_t& counter, const std::string& what, int err);
  void on_bytes(uint32_t i, uint8_t* data, size_t length);
  void on_handshake_bytes(uint32_t i, uint8_t* data, size_t length);
  void on_frame_bytes(uint32_t i, uint8_t* data, size_t length);
  void keep_carry(uint32_t i, const uint8_t* tail, size_t bytes);
  size_t parse(uint32_t i, uint8_t* data, size_t length);
  void on_data(uint32_t i, const proto::ws_event& ev);
  void on_ready_data(uint32_t i, const proto::ws_event& ev);
  void on_subscriber_data(uint32_t i, const proto::ws_event& ev);
  void on_subscriber_message(uint32_t i, std::string_view m);
  void finish_fanout();
  void became_open(uint32_t i);
  void on_reply(uint32_t i);
  void start_send(uint32_t i, const uint8_t* data, uint32_t bytes, uint32_t frames, bool replies);
  void queue_send(uint32_t i);
  void on_send(uint32_t i, int res);
  void after_send(uint32_t i, uint32_t bytes);
  void start_tls(uint32_t i);
  void on_tls_bytes(uint32_t i, const uint8_t* data, size_t length);
  void flush_tls(uint32_t i);
  void on_tls_send(uint32_t i, int res);
  void maybe_stream(uint32_t i);
  void maybe_ping(uint32_t i);
  void scan_pings();

  const job& job_;
  run_control& control_;
  uint32_t first_index_;
  std::vector<conn> conns_;
  int cpu_;
  engine::uring ring_;
  engine::provided_buffers bufs_;  // mmap'd: pages are touched only when used
  unsigned recycled_ = 0;
  proto::ws_limits limits_{};
  // Frames: the stream run (copies of one masked frame), client_hello, per-connection pings.
  masked_frame stream_frame_;
  std::vector<uint8_t> stream_run_;
  uint32_t stream_copies_ = 0;
  masked_frame hello_frame_;
  std::vector<uint8_t> hello_run_;  // client_hello, then (subscribe, wse) the subscribe frame
  masked_frame ping_frame_;
  std::vector<uint8_t> ping_buffers_;
  size_t expected_reply_bytes_ = 0;  // raw: payload bytes of every echo
  proto::ws_opcode expected_reply_opcode_ = proto::ws_opcode::text;
  uint32_t next_connect_ = 0;
  uint32_t ramping_ = 0;
  uint32_t open_ = 0;
  uint32_t opened_ = 0;
  uint32_t failed_ = 0;
  uint32_t finished_ = 0;  // ping: connections that sent all their pings
  uint32_t dead_ = 0;      // connections closed or failed
  uint32_t subscribed_ = 0;
  uint64_t sent_msgs_ = 0;
  uint64_t sent_bytes_ = 0;
  uint64_t replies_ = 0;  // echoes and PONGs (the subscribers' ticks: side_ticks_)
  uint64_t reply_bytes_ = 0;
  uint64_t side_ticks_[2] = {0, 0};  // subscribe: ticks received on A (or the one server), on B
  uint64_t side_tick_bytes_[2] = {0, 0};
  uint64_t now_ = 0;
  uint64_t wall_us_ = 0;  // CLOCK_REALTIME of this pass (subscribe latency), while measuring
  uint64_t first_connect_ns_ = 0;
  uint64_t last_open_ns_ = 0;
  uint64_t last_scan_ns_ = 0;
  bool measuring_ = false;
  bool started_ = false;
  std::vector<std::pair<uint32_t, uint8_t>> to_stamp_;  // (connection, batch slot)
  std::unique_ptr<uint8_t[]> tls_plain_;                // --tls: decrypted bytes, parsed at once
};

}  // namespace wsed::bench
