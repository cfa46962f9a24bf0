// engine/shard.hpp: one shard = one thread, one io_uring, one SO_REUSEPORT listener, and the
// connection slots of the sockets it accepted.
//
// Owns: its ring, listener, slots, provided receive buffers, outbound chunks and metrics.
// Thread: only its own thread calls anything here, except wake() (any thread) and the
// metrics, which any shard reads to render /metrics. Never blocks except in the one
// io_uring_submit_and_wait of each loop pass; handlers only queue work.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engine/config.hpp"
#include "engine/http_endpoints.hpp"
#include "engine/hub.hpp"
#include "engine/limits.hpp"
#include "engine/metrics.hpp"
#include "engine/out_queue.hpp"
#include "engine/per_ip.hpp"
#include "engine/ring.hpp"
#include "engine/timer_lists.hpp"
#include "engine/tls.hpp"
#include "proto/deflate.hpp"
#include "proto/http.hpp"
#include "proto/ws.hpp"

namespace wsed::engine {

class shard;

// State shared by every shard of one server. Written at startup; then only atomics change.
struct server_shared {
  const server_config* config = nullptr;
  std::vector<const shard_metrics*> metrics;    // every shard's, for /metrics
  std::atomic<uint32_t> connections{0};         // accepted and not yet freed (not rejects)
  std::atomic<uint32_t> pending_handshakes{0};  // sockets not yet upgraded
  std::atomic<uint64_t> unfinished_bytes{0};    // bytes held by partially received messages
  per_ip_table* per_ip = nullptr;               // set when --max-connections-per-ip is on
  hub* fanout = nullptr;                        // the server's fan-out hub (inboxes, router)
  tls_store* tls = nullptr;                     // set with --tls-cert-file: the main port is TLS
};

// Names one connection of one shard; stale once the slot is reused (generation differs).
struct conn_ref {
  uint32_t slot;
  uint32_t generation;
};

// An answer to a plain HTTP request that the application serves (the /api/* endpoints).
struct http_answer {
  uint16_t status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::string extra_headers;  // each line ending in \r\n
  // Set by on_http: the answer comes later, through shard::answer_deferred (the connection reads
  // nothing more meanwhile, the handshake timeout still applies, and it closes after the answer).
  bool deferred = false;
  conn_ref requester{};  // the connection asking (set by the shard): for answer_deferred
};

// What the application sees. Called on the shard's thread, from inside its loop pass. The
// shard never calls on_close inside another callback of the same application: a close requested
// while the application runs (or while it walks its subscribers) is reported once that call
// returned.
class app_handler {
 public:
  virtual ~app_handler() = default;
  // Once, by the server, before any shard starts: the fan-out hub every shard drains.
  virtual void attach(hub&) {}
  // The upgrade request's views are valid only during the call.
  virtual void on_open(shard&, conn_ref, const proto::http_request&) {}
  // payload is always followed by at least shard::payload_padding_bytes readable bytes (never to
  // be written): a receive buffer's spare tail or a reassembly buffer's spare capacity, so a
  // JSON parser that reads past the end (simdjson) parses it in place.
  virtual void on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                          std::span<const uint8_t> payload) = 0;
  // true: a text message that arrives whole reaches on_message without the shard's UTF-8 check
  // (shard::payload_utf8_unchecked() says so during the call), because the application
  // validates every text message itself (simdjson does, in its first stage) and closes 1007
  // (shard::close with close_reason::invalid_utf8) on invalid UTF-8.
  virtual bool validates_text_utf8() const { return false; }
  virtual void on_close(shard&, conn_ref) {}
  // Every timer tick of the shard (100 ms), with the shard's loop clock; for periodic work
  // such as server pings. Must stay cheap: it runs inside the loop pass.
  virtual void on_tick(shard&, uint64_t /*now_ms*/) {}
  // Appends the application's own Prometheus families to GET /metrics. Runs on whichever shard
  // serves the request: read only relaxed atomics.
  virtual void render_metrics(std::string& /*out*/) const {}
  // A plain HTTP request under /api/ (with its body, Content-Length bytes). false: not served
  // (the shard answers 404).
  virtual bool on_http(shard&, const proto::http_request&, std::string_view /*body*/,
                       http_answer&) {
    return false;
  }
  // One delivery from this shard's inbox; the shard releases d.f when this returns.
  virtual void on_delivery(shard&, const fanout::delivery&) {}
  // /readyz: false answers 503 (the Redis bridge has not confirmed its subscriptions). Any
  // shard's thread: read atomics only.
  virtual bool ready() const { return true; }
};

enum class send_status : uint8_t { queued, backpressure, dropped };

class shard {
 public:
  // Readable bytes after every payload handed to app_handler::on_message.
  static constexpr size_t payload_padding_bytes = limits::payload_padding_bytes;

  shard(uint32_t index, server_shared& shared, app_handler& app);
  ~shard();
  shard(const shard&) = delete;
  shard& operator=(const shard&) = delete;

  // Startup, on the thread that will run the shard (SINGLE_ISSUER): sets up the ring, the
  // listener (bound to port, or to any port when 0) and the buffers. Throws with a message.
  void setup(uint16_t port, uint16_t admin_port = 0);
  uint16_t bound_port() const { return bound_port_; }
  uint16_t admin_port() const { return admin_port_; }
  // Sockets this shard's ring can hold (its direct-descriptor table, capped by RLIMIT_NOFILE).
  // Connections this shard admits before its descriptor table's reserve answers 503.
  uint32_t descriptor_capacity() const {
    return table_capped_ ? file_table_size_ - table_reserve_ : file_table_size_;
  }
  std::string setup_notes() const { return notes_; }

  // Runs until stop() was requested and every connection is closed, or the shutdown
  // timeout passed.
  void run();

  // Any thread: asks the shard to drain (close with code, 4300 by default, and reason to every
  // WebSocket) and stop, within timeout_ms (0: --shutdown-timeout). The first request counts.
  void request_stop(uint16_t code = 4300, std::string_view reason = {}, uint32_t timeout_ms = 0);

  // Sends one data message as a single frame. queued: accepted; backpressure: the connection is
  // over its outbound cap and is being closed with 4509 (--slow-consumer disconnect); dropped:
  // the connection is gone or closing, or over its cap with --slow-consumer drop (not sent).
  // compressible = false: never permessage-deflated (already compressed or encrypted bytes).
  send_status send_message(conn_ref c, proto::ws_opcode opcode, std::span<const uint8_t> payload,
                           bool compressible = true);
  // Queues an already-framed shared frame (a publication, a server ping) to one connection,
  // under the same outbound cap: over it, --slow-consumer disconnect closes with 4509
  // (backpressure), drop skips this whole frame (dropped) and the connection stays.
  send_status send_frame(conn_ref c, const fanout::frame& f);
  // On the shard's thread: the answer to a request on_http deferred (ignored when that
  // connection is gone or not waiting).
  void answer_deferred(conn_ref c, const http_answer& answer);
  // Bytes queued to an open connection and not sent yet (a direct frame counted whole);
  // UINT64_MAX when c is not an open connection (gone, closing, stale).
  uint64_t queued_bytes(conn_ref c) const;
  // reason: the close frame's text (at most 123 bytes; cut there).
  void close(conn_ref c, uint16_t code, close_reason why = close_reason::app_close,
             std::string_view reason = {});
  // During app_handler::on_message: the text payload was not UTF-8 checked by the shard
  // (validates_text_utf8).
  bool payload_utf8_unchecked() const { return payload_utf8_unchecked_; }

  const shard_metrics& metrics() const { return metrics_; }
  uint32_t index() const { return index_; }
  hub& fanout_hub() { return *shared_.fanout; }
  // Counters of this shard that its application bumps (shard thread only).
  void count_limit(limit_kind k) { metrics_.limit_hits[size_t(k)].add(); }
  void count_published(publish_kind k) { metrics_.published[size_t(k)].add(); }
  void count_inbox_full(uint64_t n) { metrics_.inbox_full.add(n); }
  void count_api(api_result r) { metrics_.api_requests[size_t(r)].add(); }
  void count_api_publications(uint64_t n) { metrics_.api_publications.add(n); }
  // The loop's monotonic clock (ms), read once per loop pass.
  uint64_t now_ms() const { return now_ms_; }

 private:
  enum class op : uint8_t {
    accept = 1,
    recv,
    send,
    shutdown,
    close_fd,
    cancel,
    timer,
    wake,
    accept_admin
  };
  enum class conn_state : uint8_t { free, handshake, open, closing, lingering, finishing };
  enum class timer_list : uint8_t { none, handshake, idle, linger, count_ };
  enum ops_flag : uint8_t {
    recv_armed = 1,
    send_pending = 2,
    shutdown_pending = 4,
    close_pending = 8,
  };

  struct byte_buffer;

  // One connection. Slots are preallocated, never moved; the hot part stays small so that an
  // idle connection costs only its slot (no receive buffer, no queue while idle).
  struct connection {
    proto::ws_frame_parser parser;
    out_queue* out = nullptr;  // while something is queued or in flight
    // A shared frame sent straight from its own bytes to a connection with nothing queued (no
    // queue, no chunk, no copy: what one publication costs each of 100,000 idle subscribers).
    // Set: either it is waiting for flush (and `out` holds nothing), or it is the send in
    // flight (whatever `out` gained since goes after it). One reference held.
    fanout::frame* direct = nullptr;
    byte_buffer* carry = nullptr;     // handshake bytes, or a frame header split by a recv
    byte_buffer* assembly = nullptr;  // payload of a message received over several recvs
    uint64_t deadline_ms = 0;         // of the timer list it is in
    uint32_t timer_prev = 0, timer_next = 0;
    uint32_t generation = 0;
    int32_t file_index = -1;  // io_uring direct descriptor
    conn_state state = conn_state::free;
    timer_list timer = timer_list::none;
    uint8_t ops = 0;    // ops_flag bits: operations the kernel still owns
    uint8_t flags = 0;  // dirty, rejecting
    uint8_t closed_reason = 0;
    // Low 24 bits of the loop clock (us) when the handshake list took it: the start of
    // wsed_handshake_duration_seconds (in the slot's last padding bytes).
    uint32_t handshake_start_us : 24 = 0;
  };
  static_assert(sizeof(connection) <= 96, "a slot is what an idle connection costs");

  static constexpr uint8_t flag_dirty = 1;       // in dirty_: flush() looks at it this pass
  static constexpr uint8_t flag_counted = 2;     // counted in shared_.connections
  static constexpr uint8_t flag_pending = 4;     // counted in shared_.pending_handshakes
  static constexpr uint8_t flag_peer_eof = 8;    // the peer finished sending (recv saw EOF)
  static constexpr uint8_t flag_per_ip = 16;     // counted in shared_.per_ip (slot_ip_[slot])
  static constexpr uint8_t flag_admin = 32;      // accepted on --admin-listen: HTTP endpoints only
  static constexpr uint8_t flag_app_close = 64;  // app_.on_close owed (in deferred_closes_)
  static constexpr uint8_t flag_deferred = 128;  // an HTTP answer is owed (answer_deferred)
  static constexpr uint32_t no_slot = UINT32_MAX;
  static constexpr size_t queues_keep_max = limits::queues_keep_max;

  static uint64_t pack(op o, uint32_t generation, uint32_t slot) {
    return user_data::pack(uint8_t(o), generation, slot);
  }

  // The one dispatch switch and its handlers.
  void dispatch(io_uring_cqe* cqe);
  void on_accept(io_uring_cqe* cqe, bool admin);
  void on_recv(connection& c, uint32_t slot, io_uring_cqe* cqe);
  void on_send(connection& c, uint32_t slot, int res);
  void on_close_op(connection& c, uint32_t slot, op o, int res);
  void on_timer();
  void on_wake();

  // Receive paths.
  void on_handshake_bytes(connection& c, uint32_t slot, std::span<uint8_t> data);
  // Serves every complete request in c.carry (keep-alive, pipelining); false once it closed or
  // upgraded.
  bool serve_requests(connection& c, uint32_t slot, size_t scan_from);
  bool serve_one(connection& c, uint32_t slot, std::string_view all, size_t* used);
  void answer_http(connection& c, uint32_t slot, std::string_view response, bool keep_alive);
  void answer_and_close(connection& c, uint32_t slot, std::string_view response);
  void on_ws_bytes(connection& c, uint32_t slot, std::span<uint8_t> data);
  // What arrived on the socket, as the connection's state takes it (plain text: after TLS).
  void on_plain_bytes(connection& c, uint32_t slot, std::span<uint8_t> data);
  void on_tls_bytes(connection& c, uint32_t slot, std::span<uint8_t> data);
  size_t parse_frames(connection& c, uint32_t slot, std::span<uint8_t> data);
  bool on_data_event(connection& c, uint32_t slot, const proto::ws_event& ev);
  // A whole compressed message (permessage-deflate): inflated, checked, handed to the app.
  bool on_compressed_message(connection& c, uint32_t slot, proto::ws_opcode opcode,
                             std::span<const uint8_t> compressed);
  // The frame to send a deflate connection for f: its shared compressed twin (made here on
  // first use), or f itself (a control frame, under --deflate-threshold, incompressible).
  const fanout::frame& deflated_form(const fanout::frame& f);
  // Returns true when the connection stays open for another request.
  bool serve_http(connection& c, uint32_t slot, const proto::http_request& req,
                  std::string_view body);
  bool origin_allowed(std::string_view origin) const;
  void upgrade(connection& c, uint32_t slot, const proto::http_request& req, size_t consumed,
               size_t available);

  // Sending and closing.
  out_queue& out_of(connection& c);
  fanout::frame* take_direct(connection& c);  // clears c.direct; the caller owns its reference
  void queue_shared(out_queue& q, fanout::frame* f);  // copied or referenced (its own reference)
  void release_queue(connection& c);
  void queue_frame(connection& c, uint32_t slot, proto::ws_opcode opcode,
                   std::span<const uint8_t> payload, bool compressed = false);
  void queue_close(connection& c, uint32_t slot, uint16_t code, std::string_view reason);
  void mark_dirty(connection& c, uint32_t slot);
  send_status over_cap(connection& c, uint32_t slot);
  void flush();
  void flush_one(connection& c, uint32_t slot);
  struct tls_state;
  // Encrypts what is queued (up to limits::tls_plain_bytes_per_send) and sends the ciphertext;
  // false: nothing to send.
  bool flush_tls(connection& c, uint32_t slot, tls_state& t);
  tls_state* tls_of(uint32_t slot) const { return slot < tls_.size() ? tls_[slot] : nullptr; }
  void drop_tls(uint32_t slot);
  void close_file(connection& c, uint32_t slot);  // close_direct of the descriptor
  void begin_close(connection& c, uint32_t slot, close_reason why, uint16_t ws_code,
                   std::string_view reason = {});
  void finish(connection& c, uint32_t slot);
  void maybe_free(connection& c, uint32_t slot);
  void run_deferred_closes();
  void drain_inbox();
  uint64_t time_pass(const fanout::delivery& d, uint64_t sent, uint64_t start_ns);
  void reject_api(connection& c, uint32_t slot, uint16_t status, std::string_view reason);
  void reject(connection& c, uint32_t slot, reject_reason why, uint16_t status,
              std::string_view extra_headers = {});

  // Slots and timers.
  uint32_t alloc_slot();
  connection& slot_at(uint32_t slot) { return slots_[slot]; }
  const connection& slot_at(uint32_t slot) const { return slots_[slot]; }
  void expire(timer_list list);
  uint64_t handshake_ns(const connection& c) const;  // the handshake's span so far

  // Ring helpers.
  io_uring_sqe* get_sqe();
  void arm_accept();
  void arm_accept_one(uint32_t index);
  void arm_accept_admin();
  // With a per-IP cap (peer addresses) or a capped descriptor table (pausable), the listener
  // has accepts_in_flight single-shot accepts instead of one multishot accept.
  bool single_accepts() const { return shared_.per_ip || table_capped_; }
  void pause_accepts();   // stops re-arming the listener's accepts (a capped table nearly full)
  void resume_accepts();  // re-arms them, once an eighth of the reserve is free again
  int open_listener(const std::string& host, uint16_t port, uint16_t* bound);
  void arm_recv(connection& c, uint32_t slot);
  void arm_timer();
  void arm_wake();
  void recycle_buffer(uint16_t bid);

  // --fault-inject (engine/fault.hpp): a completion as the injector rewrote it (a copy), and a
  // buffer grown unless the allocation fails (really, or injected).
  io_uring_cqe* inject_fault(const io_uring_cqe* cqe);
  bool grow(connection& c, byte_buffer*& b, const void* bytes, size_t n);
  size_t send_bytes(size_t n) { return fault_ ? fault_->send_bytes(n) : n; }

  uint32_t index_;
  server_shared& shared_;
  const server_config& cfg_;
  app_handler& app_;
  proto::ws_limits limits_;
  // permessage-deflate: the shard's codec (with --permessage-deflate=on) and the last message
  // it inflated (reused; followed by payload_padding_bytes).
  std::unique_ptr<proto::deflate_codec> deflate_;
  std::vector<uint8_t> inflated_;
  shard_metrics metrics_;
  chunk_pool chunks_;
  std::vector<out_queue*> free_queues_;

  std::unique_ptr<fault_injector> fault_;    // --fault-inject; before ring_, which points to it
  provided_buffers empty_bufs_;              // with fault_: the group no buffer is ever added to
  std::unique_ptr<io_uring_cqe> fault_cqe_;  // inject_fault's rewritten copy
  uring ring_;
  int listen_fd_ = -1;
  int admin_fd_ = -1;  // --admin-listen (every shard listens on it too, SO_REUSEPORT)
  uint16_t admin_port_ = 0;
  int wake_fd_ = -1;
  uint64_t wake_value_ = 0;
  uint16_t bound_port_ = 0;
  std::string notes_;

  provided_buffers bufs_;  // one buffer group per shard

  // Slots: a calloc'd array (pages touched only when used) and a free list.
  connection* slots_ = nullptr;
  uint32_t slot_capacity_ = 0;
  uint32_t slots_touched_ = 0;  // slots [0, slots_touched_) have been constructed
  std::vector<uint32_t> free_slots_;
  uint32_t file_table_size_ = 0;
  bool payload_utf8_unchecked_ = false;  // during on_message (validates_text_utf8)
  bool table_capped_ = false;     // below --max-connections + slot_reserve: the reserve answers 503
  uint32_t table_reserve_ = 0;    // entries of a capped table kept for 503 answers (<= half)
  uint32_t accept_pause_at_ = 0;  // slots in use at which a capped table pauses its accepts
  bool accept_paused_ = false;    // the listener's accepts not re-armed until entries free up
  uint32_t accepts_armed_ = 0;    // single-shot accepts in flight, one bit per accept_addrs_ index

  timer_lists<connection, timer_list, size_t(timer_list::count_)> timers_;
  static_assert(decltype(timers_)::none == no_slot);

  // With a per-IP cap: single-shot accepts, each with its own address buffer (a multishot
  // accept reports no peer address), and each slot's address.
  struct accept_addr {
    sockaddr_storage addr;
    socklen_t len;
  };
  static constexpr uint32_t accepts_in_flight = limits::accepts_in_flight;
  std::vector<accept_addr> accept_addrs_;
  std::vector<ip_key> slot_ip_;
  // With TLS: each slot's session (null on the admin listener and for free slots), and the
  // plain text decrypted from one receive.
  std::vector<tls_state*> tls_;
  std::unique_ptr<uint8_t[]> tls_plain_;

  std::vector<uint32_t> dirty_;
  std::vector<uint32_t> held_;  // dirty connections flush() leaves for the next pass
  // Under an inbox backlog, queues shorter than this wait (below the slow-consumer cap, which
  // a held queue must never reach).
  uint64_t hold_send_bytes_ = 0;
  std::vector<conn_ref> deferred_closes_;  // app_.on_close owed, run after the current callback
  bool inbox_backlog_ = false;             // the last drain stopped at its budget
  uint64_t now_ms_ = 0;
  uint64_t now_ns_ = 0;  // the same loop clock read, in ns (CLOCK_MONOTONIC)
  uint64_t stop_deadline_ms_ = 0;
  bool accepting_ = false;
  std::atomic<bool> stop_requested_{false};
  std::mutex stop_mu_;  // guards the three below (written by request_stop, read on wake)
  uint16_t stop_code_ = 4300;
  std::string stop_reason_;
  uint32_t stop_timeout_ms_ = 0;
  bool stopping_ = false;
  __kernel_timespec tick_{};
  proto::http_request_parser http_parser_;  // reused: one request is parsed at a time
  http_endpoints endpoints_;
};

}  // namespace wsed::engine
