// engine/shard.cpp: the shard's loop and every syscall it makes (through its io_uring).
//
// Thread: the shard's own. One loop pass = reap every CQE -> dispatch -> flush queued sends ->
// one io_uring_submit_and_wait. Completion handlers only parse, queue and mark connections
// dirty; they never wait. A slot is freed only when the kernel owns no operation of it.
#include "engine/shard.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string_view>

#include "engine/assert.hpp"
#include "engine/limits.hpp"
#include "engine/log.hpp"

namespace wsed::engine {

using proto::ws_event_kind;
using proto::ws_opcode;

namespace {

using limits::cq_entries;
using limits::ring_entries;
using limits::slot_reserve;
using limits::tick_ms;
constexpr uint16_t buffer_group = 0;
constexpr uint16_t empty_buffer_group = 1;  // --fault-inject: never holds a buffer (-ENOBUFS)
// After every receive buffer (in-place JSON parsing: see app_handler::on_message).
constexpr size_t buffer_tail_spare = shard::payload_padding_bytes;

// The loop's clock, read once per pass: CLOCK_MONOTONIC (vDSO), precise enough for the latency
// histograms, the same clock as hub::route's stamps.
uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

[[noreturn]] void fail_setup(const std::string& what, int err) {
  throw std::runtime_error(what + ": " + std::strerror(err));
}

close_reason reason_for_code(uint16_t code) {
  switch (code) {
    case close_codes::invalid_payload:
      return close_reason::invalid_utf8;
    case close_codes::message_too_big:
      return close_reason::message_too_big;
    case close_codes::try_again_later:
      return close_reason::unfinished_budget;
    default:
      return close_reason::protocol_error;
  }
}

}  // namespace

// Growable bytes owned by one connection: handshake bytes, a split frame header, or the
// payload of a message that arrived over several receives. Its capacity always leaves
// payload_padding_bytes after the data (handed to the application as padding).
struct shard::byte_buffer {
  uint32_t size;
  uint32_t capacity;
  uint8_t* data() { return reinterpret_cast<uint8_t*>(this + 1); }

  // Whether appending n bytes (re)allocates.
  static bool allocates(const byte_buffer* b, size_t n) {
    return !b || b->capacity < size_t(b->size) + n + payload_padding_bytes;
  }
  // False when the allocation failed (b is left as it was).
  static bool append(byte_buffer*& b, const void* bytes, size_t n) {
    size_t need = (b ? b->size : 0) + n + payload_padding_bytes;
    ENGINE_ASSERT(need <= UINT32_MAX);
    if (!b || b->capacity < need) {
      size_t cap = std::max<size_t>(need, b ? size_t(b->capacity) * 2 : 256);
      cap = std::min<size_t>(cap, UINT32_MAX);
      auto* nb = static_cast<byte_buffer*>(std::realloc(b, sizeof(byte_buffer) + cap));
      if (!nb) return false;
      if (!b) nb->size = 0;
      nb->capacity = uint32_t(cap);
      b = nb;
    }
    std::memcpy(b->data() + b->size, bytes, n);
    b->size += uint32_t(n);
    return true;
  }
  static void release(byte_buffer*& b) {
    std::free(b);
    b = nullptr;
  }
};

// One connection's TLS session and the ciphertext of its next or current send (held only while
// there is some: an idle TLS connection keeps just the session).
struct shard::tls_state {
  explicit tls_state(const tls_context& ctx) : conn(ctx) {}
  ~tls_state() { tls_conn::recycle(std::move(out)); }
  tls_conn conn;
  tls_buffer out;  // the ciphertext of the send in flight (or the next): the session's own buffer
  size_t out_sent = 0;
  bool broken = false;  // after an error (or a plain HTTP client): nothing more is encrypted
  bool fed = false;     // ciphertext (or what was taken for it) has arrived
  size_t unsent() const { return out.size - out_sent; }
  void release_out() {
    tls_conn::recycle(std::move(out));
    out_sent = 0;
  }
};

shard::shard(uint32_t index, server_shared& shared, app_handler& app)
    : index_(index),
      shared_(shared),
      cfg_(*shared.config),
      app_(app),
      http_parser_(shared.config->http_header_bytes_max),
      endpoints_(shared, app) {
  limits_.message_bytes_max = cfg_.message_bytes_max;
  limits_.fragments_per_message_max = cfg_.fragments_per_message_max;
  limits_.text_utf8_by_application = app_.validates_text_utf8();
  if (cfg_.permessage_deflate) deflate_ = std::make_unique<proto::deflate_codec>();
  hold_send_bytes_ =
      std::min<uint64_t>(limits::backlog_send_bytes_min, cfg_.outbound_bytes_max / 2);
  tick_.tv_sec = 0;
  tick_.tv_nsec = long(tick_ms) * 1000000;
  if (!cfg_.fault_inject.empty()) {
    std::string why;
    std::optional<fault_plan> plan = parse_fault_plan(cfg_.fault_inject, &why);
    if (!plan) throw std::runtime_error("--fault-inject: " + why);
    fault_ = std::make_unique<fault_injector>(*plan, index);
    fault_cqe_ = std::make_unique<io_uring_cqe>();
    metrics_.faults = fault_.get();
  }
}

shard::~shard() {
  // The ring goes first: once it is gone the kernel reads no iovec and writes no buffer of
  // ours, so queues with a send still in flight (shutdown timeout) can be freed.
  ring_.exit();
  if (slots_) {
    for (uint32_t i = 0; i < slots_touched_; ++i) {
      connection& c = slots_[i];
      if (c.out) {
        c.out->discard(chunks_);
        delete c.out;
      }
      if (c.direct) fanout::release(c.direct);
      byte_buffer::release(c.carry);
      byte_buffer::release(c.assembly);
      if (i < tls_.size()) delete tls_[i];
      c.~connection();
    }
    munmap(slots_, sizeof(connection) * slot_capacity_);
  }
  for (out_queue* q : free_queues_) delete q;
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (admin_fd_ >= 0) ::close(admin_fd_);
  if (wake_fd_ >= 0) {
    if (shared_.fanout) shared_.fanout->set_wake_fd(index_, -1);
    ::close(wake_fd_);
  }
}

// ---------------------------------------------------------------------------------------------
// Setup

void shard::setup(uint16_t port, uint16_t admin_port) {
  // The ring: SINGLE_ISSUER | DEFER_TASKRUN where the kernel has them.
  std::string err = ring_.init(ring_entries, cq_entries, &notes_);
  if (!err.empty()) throw std::runtime_error(err);
  if (fault_) {
    ring_.set_fault(fault_.get());
    err = empty_bufs_.init_empty(ring_.get(), empty_buffer_group);
    if (!err.empty()) throw std::runtime_error(err);
  }

  // Direct descriptors: one table entry per slot, capped by RLIMIT_NOFILE (the kernel's cap).
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  uint64_t want = uint64_t(cfg_.connections_max) + slot_reserve;
  uint64_t cap = rl.rlim_cur == RLIM_INFINITY ? want : uint64_t(rl.rlim_cur);
  file_table_size_ = uint32_t(std::min(want, cap));
  int r = io_uring_register_files_sparse(ring_.get(), file_table_size_);
  if (r < 0) fail_setup("io_uring_register_files_sparse", -r);
  // A capped table keeps a reserve to answer 503 with: a storm past it holds each entry for a
  // round trip (the answer, the client's close), so it scales with the table.
  table_capped_ = file_table_size_ < want;
  table_reserve_ =
      std::min(std::max<uint32_t>(slot_reserve, file_table_size_ / limits::table_reserve_div),
               file_table_size_ / 2);
  accept_pause_at_ = file_table_size_ - table_reserve_ / 2;
  if (file_table_size_ < want)
    notes_ += "direct descriptor table capped at " + std::to_string(file_table_size_) +
              " by RLIMIT_NOFILE. ";

  // Slots: reserved address space; pages become resident only as slots are first used.
  slot_capacity_ = file_table_size_;
  void* mem = mmap(nullptr, sizeof(connection) * slot_capacity_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) fail_setup("mmap slots", errno);
  slots_ = static_cast<connection*>(mem);
  timers_.attach(slots_);

  // Provided receive buffers.
  err = bufs_.init(ring_.get(), buffer_group, cfg_.recv_buffer_count, cfg_.recv_buffer_bytes,
                   buffer_tail_spare);
  if (!err.empty()) throw std::runtime_error(err);

  if (shared_.tls)
    tls_plain_.reset(new uint8_t[limits::tls_plain_bytes_per_read + payload_padding_bytes]);

  // The listener: one per shard on the same port; the kernel spreads accepts.
  listen_fd_ = open_listener(cfg_.host, port, &bound_port_);
  if (!cfg_.admin_listen.empty())
    admin_fd_ = open_listener(cfg_.admin_host, admin_port, &admin_port_);

  wake_fd_ = eventfd(0, EFD_CLOEXEC);  // a write blocks only at a counter near 2^64
  if (wake_fd_ < 0) fail_setup("eventfd", errno);
  if (shared_.fanout) shared_.fanout->set_wake_fd(index_, wake_fd_);
}

int shard::open_listener(const std::string& host, uint16_t port, uint16_t* bound_port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port_str = std::to_string(port);
  int gai = getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res);
  if (gai != 0) throw std::runtime_error("cannot resolve " + host + ": " + gai_strerror(gai));
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    fail_setup("socket", errno);
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // inherited by accepted sockets
  if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
    int e = errno;
    freeaddrinfo(res);
    ::close(fd);
    fail_setup("cannot listen on " + host + ":" + port_str, e);
  }
  freeaddrinfo(res);
  if (listen(fd, 4096) < 0) {
    int e = errno;
    ::close(fd);
    fail_setup("listen", e);
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  *bound_port =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return fd;
}

// ---------------------------------------------------------------------------------------------
// The loop

void shard::run() {
  set_current_shard_index(index_);
  set_loop_clock_ns(now_ns_ = monotonic_ns());
  now_ms_ = now_ns_ / 1000000;
  arm_accept();
  if (admin_fd_ >= 0) arm_accept_admin();
  arm_timer();
  arm_wake();
  accepting_ = true;
  for (;;) {
    drain_inbox();
    flush();
    if (stopping_ && (metrics_.slots_used.get() == 0 || now_ms_ >= stop_deadline_ms_)) break;
    // With deliveries left over from the last drain (its budget), do not sleep.
    int r = inbox_backlog_ ? io_uring_submit_and_get_events(ring_.get())
                           : io_uring_submit_and_wait(ring_.get(), 1);
    if (r < 0 && r != -EINTR && r != -ETIME && r != -EBUSY) {
      log::error("shard_stopped", std::string("io_uring_submit_and_wait: ") + std::strerror(-r),
                 {{"shard", index_}, {"errno", -r}});
      break;
    }
    set_loop_clock_ns(now_ns_ = monotonic_ns());
    now_ms_ = now_ns_ / 1000000;
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(ring_.get(), head, cqe) {
      dispatch(fault_ ? inject_fault(cqe) : cqe);
      ++seen;
    }
    io_uring_cq_advance(ring_.get(), seen);
  }
}

void shard::request_stop(uint16_t code, std::string_view reason, uint32_t timeout_ms) {
  {
    std::lock_guard lock(stop_mu_);
    if (stop_requested_.load(std::memory_order_relaxed)) return;  // the first request counts
    stop_code_ = code;
    stop_reason_.assign(reason.substr(0, 123));
    stop_timeout_ms_ = timeout_ms;
    stop_requested_.store(true, std::memory_order_release);
  }
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void shard::dispatch(io_uring_cqe* cqe) {
  uint64_t ud = cqe->user_data;
  op o = op(user_data::op(ud));
  uint32_t gen = user_data::generation(ud);
  uint32_t slot = user_data::index(ud);
  if (cqe->flags & IORING_CQE_F_BUFFER) metrics_.recv_buffers_lent.add();
  switch (o) {
    case op::accept:
      on_accept(cqe, false);
      run_deferred_closes();
      return;
    case op::accept_admin:
      on_accept(cqe, true);
      run_deferred_closes();
      return;
    case op::timer:
      on_timer();
      run_deferred_closes();
      return;
    case op::wake:
      on_wake();
      run_deferred_closes();
      return;
    default:
      break;
  }
  if (slot == no_slot) return;  // fire-and-forget op (closing a descriptor we never slotted)
  ENGINE_ASSERT(slot < slots_touched_);
  connection& c = slot_at(slot);
  if ((c.generation & user_data::generation_mask) != gen || c.state == conn_state::free) {
    metrics_.stale_completions.add();
    if (o == op::recv && (cqe->flags & IORING_CQE_F_BUFFER))
      recycle_buffer(uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
    return;
  }
  switch (o) {
    case op::recv:
      on_recv(c, slot, cqe);
      break;
    case op::send:
      on_send(c, slot, cqe->res);
      break;
    case op::shutdown:
    case op::close_fd:
    case op::cancel:
      on_close_op(c, slot, o, cqe->res);
      break;
    default:
      ENGINE_ASSERT(false && "unknown op");
  }
  run_deferred_closes();
}

// ---------------------------------------------------------------------------------------------
// Accept

void shard::on_accept(io_uring_cqe* cqe, bool admin) {
  ip_key peer;
  if (admin) {
    if (!(cqe->flags & IORING_CQE_F_MORE) && accepting_) arm_accept_admin();
  } else if (single_accepts()) {
    uint32_t index = user_data::index(cqe->user_data);
    ENGINE_ASSERT(index < accept_addrs_.size());
    accepts_armed_ &= ~(1u << index);
    if (cqe->res >= 0) peer = ip_key_of(accept_addrs_[index].addr);
    if (accepting_ && !accept_paused_) arm_accept_one(index);
  } else if (!(cqe->flags & IORING_CQE_F_MORE) && accepting_) {
    arm_accept();
  }
  int res = cqe->res;
  if (res < 0) {
    if (res == -ENFILE || res == -EMFILE) metrics_.limit_hits[size_t(limit_kind::file_table)].add();
    return;
  }
  metrics_.connections_accepted.add();
  uint32_t slot = alloc_slot();
  if (slot == no_slot) {
    // Not even a reserve slot left to answer 503 with: drop the socket. The slots are as many as
    // the descriptor table; when RLIMIT_NOFILE capped it below --max-connections, that is the
    // limit that bit.
    metrics_
        .limit_hits[size_t(table_capped_ ? limit_kind::file_table : limit_kind::max_connections)]
        .add();
    metrics_.rejected[size_t(reject_reason::max_connections)].add();
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_close_direct(sqe, unsigned(res));
    io_uring_sqe_set_data64(sqe, pack(op::close_fd, 0, no_slot));
    return;
  }
  connection& c = slot_at(slot);
  c.file_index = res;
  c.state = conn_state::handshake;
  c.ops = 0;
  c.flags = 0;
  c.parser = proto::ws_frame_parser(proto::ws_role::server);
  metrics_.slots_used.add();
  if (shared_.tls && !admin) {
    // The context current now: a SIGHUP reload applies to connections accepted after it.
    std::shared_ptr<const tls_context> ctx = shared_.tls->current.load(std::memory_order_acquire);
    if (slot >= tls_.size()) tls_.resize(std::max<size_t>(slot + 1, tls_.size() * 2), nullptr);
    tls_[slot] = new tls_state(*ctx);
    metrics_.tls_connections.add();
  }
  // Half of a capped table's reserve used: stop accepting until entries free up, so that new
  // connections wait in the listen queue instead of being closed by the kernel on a full table.
  if (table_capped_ && !accept_paused_ && metrics_.slots_used.get() >= accept_pause_at_)
    pause_accepts();
  arm_recv(c, slot);
  timers_.link(slot, timer_list::handshake, now_ms_ + cfg_.handshake_timeout_ms);
  c.handshake_start_us = uint32_t(now_ns_ / 1000);

  if (stopping_) {
    reject(c, slot, reject_reason::max_connections, 503);
    return;
  }
  if (admin) c.flags |= flag_admin;
  if (shared_.per_ip && !admin) {
    if (!shared_.per_ip->try_acquire(peer)) {
      metrics_.limit_hits[size_t(limit_kind::connections_per_ip)].add();
      reject(c, slot, reject_reason::per_ip, 429);
      return;
    }
    if (slot >= slot_ip_.size()) slot_ip_.resize(std::max<size_t>(slot + 1, slot_ip_.size() * 2));
    slot_ip_[slot] = peer;
    c.flags |= flag_per_ip;
  }
  // RLIMIT_NOFILE capped this shard's descriptor table below what --max-connections needs: its
  // last table_reserve_ entries answer 503 (a full table would make the kernel close accepted
  // sockets unanswered).
  if (table_capped_ && metrics_.slots_used.get() > file_table_size_ - table_reserve_) {
    metrics_.limit_hits[size_t(limit_kind::file_table)].add();
    reject(c, slot, reject_reason::max_connections, 503);
    return;
  }
  if (shared_.connections.fetch_add(1, std::memory_order_relaxed) >= cfg_.connections_max) {
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    metrics_.limit_hits[size_t(limit_kind::max_connections)].add();
    reject(c, slot, reject_reason::max_connections, 503);
    return;
  }
  c.flags |= flag_counted;
  if (shared_.pending_handshakes.fetch_add(1, std::memory_order_relaxed) >=
      cfg_.pending_handshakes_max) {
    shared_.pending_handshakes.fetch_sub(1, std::memory_order_relaxed);
    metrics_.limit_hits[size_t(limit_kind::max_pending_handshakes)].add();
    reject(c, slot, reject_reason::pending_handshakes, 503);
    return;
  }
  c.flags |= flag_pending;
}

uint32_t shard::alloc_slot() {
  if (!free_slots_.empty()) {
    uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }
  if (slots_touched_ < slot_capacity_) {
    new (&slots_[slots_touched_]) connection();
    return slots_touched_++;
  }
  return no_slot;
}

// ---------------------------------------------------------------------------------------------
// Receive

void shard::on_recv(connection& c, uint32_t slot, io_uring_cqe* cqe) {
  int res = cqe->res;
  bool more = cqe->flags & IORING_CQE_F_MORE;
  if (!more) c.ops &= uint8_t(~recv_armed);
  if (res > 0) {
    ENGINE_ASSERT(cqe->flags & IORING_CQE_F_BUFFER);
    uint16_t bid = uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    std::span<uint8_t> data(bufs_.at(bid), size_t(res));
    metrics_.bytes_in.add(uint64_t(res));
    if (tls_of(slot))
      on_tls_bytes(c, slot, data);
    else
      on_plain_bytes(c, slot, data);
    recycle_buffer(bid);
    if (!more && !(c.ops & recv_armed) && c.state != conn_state::finishing) {
      metrics_.recv_rearms.add();
      arm_recv(c, slot);
    }
    return;
  }
  // An error with a buffer: bytes that arrived, then a fault injected in their place.
  if (cqe->flags & IORING_CQE_F_BUFFER)
    recycle_buffer(uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
  if (res == -ENOBUFS) {
    metrics_.recv_rearms.add();
    if (c.state == conn_state::finishing)
      maybe_free(c, slot);  // the recv may have been the last op
    else if (!(c.ops & recv_armed))
      arm_recv(c, slot);
    return;
  }
  if (res == -ECANCELED) {
    maybe_free(c, slot);
    return;
  }
  // EOF (0) or an error: the peer is gone, or at least done sending.
  if (c.state == conn_state::finishing) {
    maybe_free(c, slot);
    return;
  }
  if (c.state == conn_state::lingering) {
    finish(c, slot);
    return;
  }
  c.flags |= flag_peer_eof;
  close_reason why = res == 0 ? close_reason::peer_eof : close_reason::peer_reset;
  if (c.state == conn_state::handshake || c.state == conn_state::open) begin_close(c, slot, why, 0);
  // A half-closed peer may still read: flush what is queued (an HTTP response, our close
  // frame) and close then; after an error there is nobody to flush to.
  const tls_state* t = tls_of(slot);
  bool queued = (c.out && !c.out->empty()) || c.direct || (c.ops & send_pending) ||
                (t && (t->unsent() || t->conn.pending_output()));  // a 400, an alert, records
  if (res < 0 || !queued) finish(c, slot);
}

void shard::on_plain_bytes(connection& c, uint32_t slot, std::span<uint8_t> data) {
  switch (c.state) {
    case conn_state::handshake:
      on_handshake_bytes(c, slot, data);
      break;
    case conn_state::open:
      if (c.timer == timer_list::idle)
        timers_.link(slot, timer_list::idle, now_ms_ + cfg_.idle_timeout_ms);
      on_ws_bytes(c, slot, data);
      break;
    default:
      break;  // closing: input is discarded until the peer's EOF
  }
}

// Ciphertext: fed to the session, whose plain text (up to tls_plain_bytes_per_read at a time,
// in the shard's one scratch buffer, parsed before the next read) goes where plain bytes go.
void shard::on_tls_bytes(connection& c, uint32_t slot, std::span<uint8_t> data) {
  tls_state& t = *tls_of(slot);
  if ((c.state != conn_state::handshake && c.state != conn_state::open) || t.broken)
    return;  // closing: input is discarded until the peer's EOF
  tls_read r = tls_read::data;
  if (!t.fed && !data.empty() && data[0] >= 'A' && data[0] <= 'Z') {
    // A TLS record starts with its content type (a ClientHello with 22): an upper-case letter
    // is an HTTP method, whichever (OpenSSL itself only recognises GET, POST, HEAD, PUT).
    r = tls_read::plain_http;
  } else {
    t.conn.feed(data.data(), data.size());
  }
  t.fed = true;
  uint8_t* plain = tls_plain_.get();
  while (r == tls_read::data && (c.state == conn_state::handshake || c.state == conn_state::open)) {
    const bool was_done = t.conn.handshake_done();
    size_t have = 0;
    while (have < limits::tls_plain_bytes_per_read) {
      size_t n = 0;
      r = t.conn.read(plain + have, limits::tls_plain_bytes_per_read - have, &n);
      if (r != tls_read::data) break;
      have += n;
    }
    if (!was_done && t.conn.handshake_done()) metrics_.tls_handshakes[size_t(tls_result::ok)].add();
    if (have) on_plain_bytes(c, slot, std::span<uint8_t>(plain, have));
  }
  t.conn.end_feed();  // the receive buffer goes back to the ring after this
  if (c.state == conn_state::handshake || c.state == conn_state::open) {
    switch (r) {
      case tls_read::data:
      case tls_read::want_more:
        break;
      case tls_read::closed:  // close_notify: the peer is done sending
        c.flags |= flag_peer_eof;
        begin_close(c, slot, close_reason::peer_eof, 0);
        break;
      case tls_read::plain_http: {
        // An http:// or ws:// client: a clear answer in its own language, then close.
        metrics_.tls_handshakes[size_t(tls_result::plain_http)].add();
        t.conn.discard_output();
        t.broken = true;
        std::string answer = proto::http_response(400, "text/plain",
                                                  "This port speaks TLS: use https:// or wss://\n",
                                                  {}, proto::http_connection::close);
        t.release_out();
        t.out.data.reset(new uint8_t[answer.size()]);
        std::memcpy(t.out.data.get(), answer.data(), answer.size());
        t.out.size = t.out.cap = answer.size();
        begin_close(c, slot, close_reason::tls_error, 0);
        break;
      }
      case tls_read::failed:
        // The alert OpenSSL wrote (if any) still goes out; nothing more is encrypted.
        if (t.conn.handshake_done())
          metrics_.tls_errors.add();
        else
          metrics_.tls_handshakes[size_t(tls_result::failed)].add();
        t.broken = true;
        begin_close(c, slot, close_reason::tls_error, 0);
        break;
    }
  }
  if (t.unsent() || t.conn.pending_output()) mark_dirty(c, slot);
}

void shard::on_handshake_bytes(connection& c, uint32_t slot, std::span<uint8_t> data) {
  if (c.flags & flag_deferred) return;  // waiting for its answer: input is dropped
  size_t before = c.carry ? c.carry->size : 0;
  if (!grow(c, c.carry, data.data(), data.size())) {
    finish(c, slot);  // out of memory: the socket is closed unanswered
    return;
  }
  // Bytes before `before` were searched already, unless they held a complete head whose body
  // was still arriving: then search from the start (cheap: only the head zone is searched).
  // (Only the head zone is looked at: a head ends within --max-header-bytes, and a 1 MiB body
  // arriving in 16 KiB pieces must not be rescanned on every piece.)
  std::string_view old(reinterpret_cast<const char*>(c.carry->data()),
                       std::min<size_t>(before, size_t(cfg_.http_header_bytes_max) + 4));
  size_t scan_from = old.find("\r\n\r\n") != std::string_view::npos ? 0
                     : before >= 3                                  ? before - 3
                                                                    : 0;
  serve_requests(c, slot, scan_from);
}

// Every complete request in c.carry, in order (HTTP/1.1 pipelining); the bytes of the requests
// served are dropped once at the end. scan_from: where the first request's end may start.
bool shard::serve_requests(connection& c, uint32_t slot, size_t scan_from) {
  size_t used = 0;
  bool open = true;
  for (;;) {
    std::string_view all(reinterpret_cast<const char*>(c.carry->data()) + used,
                         c.carry->size - used);
    if (all.empty()) break;
    // The head must end within --max-header-bytes: only that much is ever searched (a body
    // arriving after a complete head is not).
    std::string_view head_zone = all.substr(0, size_t(cfg_.http_header_bytes_max) + 4);
    size_t from = used == 0 ? std::min(scan_from, head_zone.size()) : 0;
    if (head_zone.find("\r\n\r\n", from) == std::string_view::npos) {
      if (all.size() > cfg_.http_header_bytes_max) {
        metrics_.limit_hits[size_t(limit_kind::header_bytes)].add();
        reject(c, slot, reject_reason::header_too_large, 431);
        return false;
      }
      break;
    }
    size_t n = 0;
    open = serve_one(c, slot, all, &n);
    if (!open || n == 0) break;  // closed / upgraded, or the body is not all here yet
    used += n;
  }
  if (open && c.carry && used) {
    size_t left = c.carry->size - used;
    if (left == 0) {
      byte_buffer::release(c.carry);
    } else {
      std::memmove(c.carry->data(), c.carry->data() + used, left);
      c.carry->size = uint32_t(left);
    }
  }
  return open;
}

// One request at the start of all (whose head is complete). *used: its bytes, head and body (0
// while the body is still arriving). Returns false once the connection closes or upgraded.
bool shard::serve_one(connection& c, uint32_t slot, std::string_view all, size_t* used) {
  http_parser_.reset();
  proto::http_parse_status st = http_parser_.feed(std::span<const char>(all.data(), all.size()));
  const proto::http_request& req = http_parser_.request();
  if (st != proto::http_parse_status::complete) {
    uint16_t status = st == proto::http_parse_status::error ? http_parser_.error_status() : 400;
    if (status == 431) metrics_.limit_hits[size_t(limit_kind::header_bytes)].add();
    if (status == 411 && req.path.starts_with("/api/")) {
      metrics_.api_requests[size_t(api_result::length_required)].add();
      reject_api(c, slot, 411, "Content-Length required (chunked bodies are not read)");
      return false;
    }
    reject(c, slot, status == 431 ? reject_reason::header_too_large : reject_reason::bad_request,
           status);
    return false;
  }
  size_t head = http_parser_.consumed();
  switch (proto::check_upgrade(req)) {
    case proto::upgrade_verdict::ok:
      if (c.flags & flag_admin) break;  // the admin listener serves HTTP endpoints only
      if (!origin_allowed(req.header("Origin"))) {
        reject(c, slot, reject_reason::origin, 403);
        return false;
      }
      upgrade(c, slot, req, head, all.size());
      return false;
    case proto::upgrade_verdict::not_websocket:
      break;
    case proto::upgrade_verdict::version_unsupported:
      reject(c, slot, reject_reason::version, 426, "Sec-WebSocket-Version: 13\r\n");
      return false;
    case proto::upgrade_verdict::bad_request:
      reject(c, slot, reject_reason::bad_request, 400);
      return false;
  }
  uint64_t body_bytes = req.content_length > 0 ? uint64_t(req.content_length) : 0;
  if (body_bytes > cfg_.api_body_bytes_max) {
    metrics_.api_requests[size_t(api_result::too_large)].add();
    reject_api(c, slot, 413,
               "body over --max-api-body (" + std::to_string(cfg_.api_body_bytes_max) + " bytes)");
    return false;
  }
  if (all.size() - head < body_bytes) return true;  // wait for the rest of the body
  *used = head + size_t(body_bytes);
  return serve_http(c, slot, req, all.substr(head, size_t(body_bytes)));
}

bool shard::origin_allowed(std::string_view origin) const {
  if (cfg_.allowed_origins.empty() || origin.empty()) return true;
  for (const std::string& allowed : cfg_.allowed_origins)
    if (proto::ascii_iequals(origin, allowed)) return true;
  return false;
}

bool shard::serve_http(connection& c, uint32_t slot, const proto::http_request& req,
                       std::string_view body) {
  http_endpoints::answer a = endpoints_.serve(*this, req, body, (c.flags & flag_admin) != 0,
                                              stopping_, slot, c.generation);
  if (a.deferred) {
    c.flags |= flag_deferred;
    return false;  // nothing more is read until the answer
  }
  answer_http(c, slot, a.response, a.keep_alive);
  return a.keep_alive && c.state == conn_state::handshake;
}

void shard::answer_http(connection& c, uint32_t slot, std::string_view response, bool keep_alive) {
  if (!keep_alive) return answer_and_close(c, slot, response);
  out_of(c).append(chunks_, response.data(), response.size());
  mark_dirty(c, slot);
  // A kept-alive HTTP connection is no longer a pending handshake; it gets the handshake timeout
  // again for its next request.
  if (c.flags & flag_pending) {
    shared_.pending_handshakes.fetch_sub(1, std::memory_order_relaxed);
    c.flags &= uint8_t(~flag_pending);
  }
  if (c.out && c.out->queued_bytes() > cfg_.outbound_bytes_max) {
    // A pipelining client that does not read its answers.
    metrics_.limit_hits[size_t(limit_kind::max_outbound_bytes)].add();
    begin_close(c, slot, close_reason::slow_consumer, 0);
    return;
  }
  timers_.link(slot, timer_list::handshake, now_ms_ + cfg_.handshake_timeout_ms);
  c.handshake_start_us = uint32_t(now_ns_ / 1000);
}

void shard::upgrade(connection& c, uint32_t slot, const proto::http_request& req, size_t consumed,
                    size_t available) {
  proto::deflate_negotiation deflate;
  bool offered = false;
  if (deflate_) deflate = proto::negotiate_permessage_deflate(req, &offered);
  if (deflate.accepted || offered)
    metrics_.deflate[size_t(deflate.accepted ? deflate_event::negotiated : deflate_event::declined)]
        .add();
  c.parser.allow_compressed(deflate.accepted);
  std::string response = proto::upgrade_response(
      req.header("Sec-WebSocket-Key"),
      deflate.accepted ? proto::deflate_response_value(deflate) : std::string_view{});
  out_of(c).append(chunks_, response.data(), response.size());
  mark_dirty(c, slot);
  metrics_.handshake_duration.observe_ns(handshake_ns(c));
  if (c.flags & flag_pending) {
    shared_.pending_handshakes.fetch_sub(1, std::memory_order_relaxed);
    c.flags &= uint8_t(~flag_pending);
  }
  c.state = conn_state::open;
  metrics_.connections_open.add();
  if (cfg_.idle_timeout_ms)
    timers_.link(slot, timer_list::idle, now_ms_ + cfg_.idle_timeout_ms);
  else
    timers_.unlink(slot);
  // The request's views point into the handshake buffer: detach it first, so that an app that
  // closes the connection from on_open (begin_close releases c.carry) leaves them alive.
  // The request may follow earlier kept-alive requests in the buffer: it ends `available` bytes
  // before the buffer's end.
  byte_buffer* hs = c.carry;
  c.carry = nullptr;
  size_t start = hs->size - available;
  app_.on_open(*this, conn_ref{slot, c.generation}, req);
  run_deferred_closes();

  // Bytes after the request (a client may send frames right behind it).
  if (c.state == conn_state::open && available > consumed) {
    std::span<uint8_t> rest(hs->data() + start + consumed, available - consumed);
    on_ws_bytes(c, slot, rest);
  }
  byte_buffer::release(hs);
}

// Since the handshake's start (still in the handshake list: deadline_ms = start + timeout). The
// slot's 24 bits of microseconds wrap after 16.7 s; a longer span is taken in milliseconds.
uint64_t shard::handshake_ns(const connection& c) const {
  if (c.timer == timer_list::handshake) {
    uint64_t start_ms = c.deadline_ms - cfg_.handshake_timeout_ms;
    uint64_t ms = now_ms_ > start_ms ? now_ms_ - start_ms : 0;
    if (ms >= 16000) return ms * 1000000;
  }
  uint32_t us = (uint32_t(now_ns_ / 1000) - c.handshake_start_us) & ((1u << 24) - 1);
  return uint64_t(us) * 1000;
}

void shard::on_ws_bytes(connection& c, uint32_t slot, std::span<uint8_t> data) {
  if (c.carry) {
    // A frame header or control frame was split: continue from the kept bytes.
    if (!grow(c, c.carry, data.data(), data.size()))
      return begin_close(c, slot, close_reason::internal_error, close_codes::internal_error);
    byte_buffer* b = c.carry;
    std::span<uint8_t> all(b->data(), b->size);
    size_t used = parse_frames(c, slot, all);
    if (c.carry != b) return;  // released by a close
    if (used == all.size()) {
      byte_buffer::release(c.carry);
    } else {
      std::memmove(b->data(), b->data() + used, all.size() - used);
      b->size = uint32_t(all.size() - used);
    }
    return;
  }
  size_t used = parse_frames(c, slot, data);
  if (used < data.size() && c.state == conn_state::open) {
    ENGINE_ASSERT(data.size() - used <= proto::ws_carry_bytes_max);
    if (!grow(c, c.carry, data.data() + used, data.size() - used))
      begin_close(c, slot, close_reason::internal_error, close_codes::internal_error);
  }
}

// Parses every complete event in data; returns the bytes used (the rest is an incomplete
// header or control frame). Stops at a close or an error.
size_t shard::parse_frames(connection& c, uint32_t slot, std::span<uint8_t> data) {
  size_t used = 0;
  while (c.state == conn_state::open) {
    proto::ws_event ev = c.parser.next(data.subspan(used), limits_);
    used += ev.consumed;
    switch (ev.kind) {
      case ws_event_kind::need_more:
        return used;
      case ws_event_kind::data:
        if (!on_data_event(c, slot, ev)) return used;
        break;
      case ws_event_kind::ping:
        queue_frame(c, slot, ws_opcode::pong, ev.payload);
        break;
      case ws_event_kind::pong:
        break;
      case ws_event_kind::close: {
        uint16_t code =
            ev.close_code == proto::close_code::no_status ? close_codes::normal : ev.close_code;
        queue_close(c, slot, code, {});
        begin_close(c, slot, close_reason::client_close, 0);
        return used;
      }
      case ws_event_kind::error:
        if (ev.close_code == close_codes::message_too_big)
          metrics_.limit_hits[size_t(limit_kind::max_message_size)].add();
        begin_close(c, slot, reason_for_code(ev.close_code), ev.close_code);
        return used;
    }
    if (used == data.size()) return used;
  }
  return used;
}

// A chunk of a data message: delivered in place when the whole message is in this buffer,
// otherwise assembled. Returns false when the connection started closing.
bool shard::on_data_event(connection& c, uint32_t slot, const proto::ws_event& ev) {
  if (ev.message_begin && ev.message_end && !c.assembly) {
    if (ev.compressed) return on_compressed_message(c, slot, ev.message_opcode, ev.payload);
    metrics_.messages_in.add();
    payload_utf8_unchecked_ = ev.utf8_unchecked;
    app_.on_message(*this, conn_ref{slot, c.generation}, ev.message_opcode, ev.payload);
    payload_utf8_unchecked_ = false;
    return c.state == conn_state::open;
  }
  ENGINE_ASSERT(!ev.utf8_unchecked);  // only ever set on a whole message
  if (!ev.payload.empty() || !c.assembly) {
    uint64_t total =
        shared_.unfinished_bytes.fetch_add(ev.payload.size(), std::memory_order_relaxed) +
        ev.payload.size();
    if (total > cfg_.unfinished_bytes_max) {
      metrics_.limit_hits[size_t(limit_kind::max_unfinished_bytes)].add();
      // Give the bytes back at once: the message is abandoned below.
      shared_.unfinished_bytes.fetch_sub(ev.payload.size(), std::memory_order_relaxed);
      begin_close(c, slot, close_reason::unfinished_budget, close_codes::try_again_later);
      return false;
    }
    if (!grow(c, c.assembly, ev.payload.data(), ev.payload.size())) {
      shared_.unfinished_bytes.fetch_sub(ev.payload.size(), std::memory_order_relaxed);
      begin_close(c, slot, close_reason::internal_error, close_codes::internal_error);
      return false;
    }
    metrics_.assembly_bytes.add(ev.payload.size());
  }
  if (!ev.message_end) return true;
  byte_buffer* msg = c.assembly;
  c.assembly = nullptr;
  shared_.unfinished_bytes.fetch_sub(msg->size, std::memory_order_relaxed);
  metrics_.assembly_bytes.sub(msg->size);
  std::span<const uint8_t> whole(msg->data(), msg->size);
  if (ev.compressed) {
    bool open = on_compressed_message(c, slot, ev.message_opcode, whole);
    byte_buffer::release(msg);
    return open;
  }
  metrics_.messages_in.add();
  app_.on_message(*this, conn_ref{slot, c.generation}, ev.message_opcode, whole);
  byte_buffer::release(msg);
  return c.state == conn_state::open;
}

bool shard::on_compressed_message(connection& c, uint32_t slot, ws_opcode opcode,
                                  std::span<const uint8_t> compressed) {
  size_t n = 0;
  switch (
      deflate_->inflate(compressed, cfg_.message_bytes_max, inflated_, &n, payload_padding_bytes)) {
    case proto::inflate_status::ok:
      break;
    case proto::inflate_status::bad_data:
      metrics_.deflate[size_t(deflate_event::bad_data)].add();
      begin_close(c, slot, reason_for_code(close_codes::invalid_payload),
                  close_codes::invalid_payload);
      return false;
    case proto::inflate_status::too_big:  // over --max-message-size once inflated: a bomb
      metrics_.limit_hits[size_t(limit_kind::max_message_size)].add();
      begin_close(c, slot, reason_for_code(close_codes::message_too_big),
                  close_codes::message_too_big);
      return false;
  }
  metrics_.deflate[size_t(deflate_event::inflated)].add();
  metrics_.deflate_in_wire_bytes.add(compressed.size());
  metrics_.deflate_in_bytes.add(n);
  std::span<const uint8_t> message(inflated_.data(), n);
  const bool text = opcode == ws_opcode::text;
  if (text && !limits_.text_utf8_by_application && !proto::valid_utf8(message)) {
    begin_close(c, slot, reason_for_code(close_codes::invalid_payload),
                close_codes::invalid_payload);
    return false;
  }
  metrics_.messages_in.add();
  payload_utf8_unchecked_ = text && limits_.text_utf8_by_application;
  app_.on_message(*this, conn_ref{slot, c.generation}, opcode, message);
  payload_utf8_unchecked_ = false;
  return c.state == conn_state::open;
}

// ---------------------------------------------------------------------------------------------
// Sending

out_queue& shard::out_of(connection& c) {
  if (!c.out) {
    if (!free_queues_.empty()) {
      c.out = free_queues_.back();
      free_queues_.pop_back();
    } else {
      c.out = new out_queue();
      c.out->count_into(&metrics_.queued_bytes);
    }
  }
  // A direct frame not yet sent goes first, into the queue, so that bytes keep their order.
  if (c.direct && !(c.ops & send_pending)) {
    fanout::frame* f = take_direct(c);
    queue_shared(*c.out, f);
    fanout::release(f);
  }
  return *c.out;
}

// Small frames are copied into the queue's own chunk (many frames, one iovec); large ones are
// referenced (one iovec each, no copy): --share-frames-from, measured in RESULTS.md.
void shard::queue_shared(out_queue& q, fanout::frame* f) {
  if (f->wire_bytes >= cfg_.frame_reference_bytes_min) {
    q.append_frame(f);
    metrics_.deliveries_shared.add();
  } else {
    q.append(chunks_, f->wire().data(), f->wire_bytes);
  }
}

fanout::frame* shard::take_direct(connection& c) {
  fanout::frame* f = c.direct;
  c.direct = nullptr;
  metrics_.queued_bytes.sub(f->wire_bytes);
  return f;
}

send_status shard::send_message(conn_ref ref, ws_opcode opcode, std::span<const uint8_t> payload,
                                bool compressible) {
  if (ref.slot >= slots_touched_) return send_status::dropped;
  connection& c = slot_at(ref.slot);
  if (c.generation != ref.generation || c.state != conn_state::open) return send_status::dropped;
  if (c.out && c.out->queued_bytes() > cfg_.outbound_bytes_max) return over_cap(c, ref.slot);
  metrics_.messages_out.add();
  if (compressible && c.parser.compressed_allowed()) {
    if (payload.size() < cfg_.deflate_threshold_bytes) {
      metrics_.deflate[size_t(deflate_event::below_threshold)].add();
    } else if (std::span<const uint8_t> z = deflate_->compress(payload); !z.empty()) {
      metrics_.deflate[size_t(deflate_event::compressed)].add();
      metrics_.deflate_out_bytes.add(payload.size());
      metrics_.deflate_out_wire_bytes.add(z.size());
      queue_frame(c, ref.slot, opcode, z, true);
      return send_status::queued;
    } else {
      metrics_.deflate[size_t(deflate_event::incompressible)].add();
    }
  }
  queue_frame(c, ref.slot, opcode, payload);
  return send_status::queued;
}

const fanout::frame& shard::deflated_form(const fanout::frame& f) {
  const uint8_t opcode = f.wire()[0] & 0x0F;
  if (opcode != uint8_t(ws_opcode::text) && opcode != uint8_t(ws_opcode::binary)) return f;
  if (f.wire_bytes - f.header_bytes < cfg_.deflate_threshold_bytes) {
    metrics_.deflate[size_t(deflate_event::below_threshold)].add();
    return f;
  }
  fanout::frame* twin = f.deflated.load(std::memory_order_acquire);
  if (twin == nullptr) {
    // The first deflate connection of any shard to get this publication compresses it, once.
    std::string_view payload = f.payload();
    std::span<const uint8_t> z =
        deflate_->compress({reinterpret_cast<const uint8_t*>(payload.data()), payload.size()});
    fanout::frame* made =
        z.empty() ? nullptr : fanout::make_deflated_frame(opcode == uint8_t(ws_opcode::binary), z);
    // Incompressible (or out of memory): f itself marks it, so nobody tries again. Another
    // shard may have stored its twin meanwhile: that one is used, ours is released.
    twin = fanout::publish_deflated(f, made != nullptr ? made : const_cast<fanout::frame*>(&f));
    if (made != nullptr && twin == made) {
      metrics_.deflate[size_t(deflate_event::shared_made)].add();
      metrics_.deflate_out_bytes.add(payload.size());
      metrics_.deflate_out_wire_bytes.add(z.size());
    }
  }
  if (twin == &f) {
    metrics_.deflate[size_t(deflate_event::incompressible)].add();
    return f;
  }
  metrics_.deflate[size_t(deflate_event::shared_delivered)].add();
  return *twin;
}

send_status shard::send_frame(conn_ref ref, const fanout::frame& plain) {
  if (ref.slot >= slots_touched_) return send_status::dropped;
  connection& c = slot_at(ref.slot);
  if (c.generation != ref.generation || c.state != conn_state::open) return send_status::dropped;
  if (c.out && c.out->queued_bytes() > cfg_.outbound_bytes_max) return over_cap(c, ref.slot);
  const fanout::frame& f = c.parser.compressed_allowed() ? deflated_form(plain) : plain;
  auto* frame = const_cast<fanout::frame*>(&f);  // only its refcount changes
  if (!c.direct && !(c.ops & send_pending) && (!c.out || c.out->empty())) {
    // Nothing queued: sent from the frame itself.
    fanout::retain(frame);
    c.direct = frame;
    metrics_.queued_bytes.add(f.wire_bytes);
    metrics_.deliveries_shared.add();
  } else {
    queue_shared(out_of(c), frame);
  }
  mark_dirty(c, ref.slot);
  metrics_.deliveries.add();
  return send_status::queued;
}

// A message for a connection whose queue is over --max-outbound-bytes: --slow-consumer decides.
send_status shard::over_cap(connection& c, uint32_t slot) {
  metrics_.limit_hits[size_t(limit_kind::max_outbound_bytes)].add();
  if (cfg_.slow_consumer == slow_consumer_policy::drop) {
    metrics_.slow_consumer[size_t(slow_action::drop)].add();
    return send_status::dropped;
  }
  metrics_.slow_consumer[size_t(slow_action::disconnect)].add();
  begin_close(c, slot, close_reason::slow_consumer, close_codes::slow_consumer);
  return send_status::backpressure;
}

void shard::answer_deferred(conn_ref ref, const http_answer& a) {
  if (ref.slot >= slots_touched_) return;
  connection& c = slot_at(ref.slot);
  if (c.generation != ref.generation || c.state != conn_state::handshake ||
      !(c.flags & flag_deferred))
    return;
  c.flags &= uint8_t(~flag_deferred);
  answer_and_close(c, ref.slot,
                   proto::http_response(a.status, a.content_type, a.body, a.extra_headers,
                                        proto::http_connection::close));
}

uint64_t shard::queued_bytes(conn_ref ref) const {
  if (ref.slot >= slots_touched_) return UINT64_MAX;
  const connection& c = slot_at(ref.slot);
  if (c.generation != ref.generation || c.state != conn_state::open) return UINT64_MAX;
  const tls_state* t = tls_of(ref.slot);
  return (c.out ? c.out->queued_bytes() : 0) + (c.direct ? c.direct->wire_bytes : 0) +
         (t ? t->unsent() : 0);
}

void shard::close(conn_ref ref, uint16_t code, close_reason why, std::string_view reason) {
  if (ref.slot >= slots_touched_) return;
  connection& c = slot_at(ref.slot);
  if (c.generation != ref.generation) return;
  begin_close(c, ref.slot, why, code, reason);
}

void shard::release_queue(connection& c) {
  if (free_queues_.size() < queues_keep_max)
    free_queues_.push_back(c.out);
  else
    delete c.out;
  c.out = nullptr;
}

void shard::queue_frame(connection& c, uint32_t slot, ws_opcode opcode,
                        std::span<const uint8_t> payload, bool compressed) {
  size_t header = proto::frame_header_bytes(payload.size());
  uint8_t* p = out_of(c).reserve(chunks_, header + payload.size());
  proto::encode_frame_header(p, opcode, payload.size());
  if (compressed) p[0] |= proto::ws_rsv1_bit;
  if (!payload.empty()) std::memcpy(p + header, payload.data(), payload.size());
  mark_dirty(c, slot);
}

void shard::queue_close(connection& c, uint32_t slot, uint16_t code, std::string_view reason) {
  uint8_t payload[proto::ws_control_payload_max];
  size_t n = proto::encode_close_payload(payload, code, reason);
  queue_frame(c, slot, ws_opcode::close, std::span<const uint8_t>(payload, n));
}

void shard::mark_dirty(connection& c, uint32_t slot) {
  if (c.flags & flag_dirty) return;
  c.flags |= flag_dirty;
  dirty_.push_back(slot);
}

void shard::flush() {
  // While the inbox has a backlog (the last drain stopped at its budget), an open connection
  // whose queue is still short waits for the next pass: each send costs the kernel about the
  // same whatever its size, so fewer, larger sends carry more deliveries per second.
  const bool hold = inbox_backlog_;
  held_.clear();
  // flush_one may mark other connections dirty (never this list's own entries twice).
  for (size_t i = 0; i < dirty_.size(); ++i) {
    uint32_t slot = dirty_[i];
    connection& c = slot_at(slot);
    if (hold && c.state == conn_state::open && !(c.ops & send_pending) && c.out != nullptr &&
        c.out->queued_bytes() < hold_send_bytes_) {
      held_.push_back(slot);  // stays flagged dirty
      continue;
    }
    c.flags &= uint8_t(~flag_dirty);
    if (c.state != conn_state::free) flush_one(c, slot);
  }
  dirty_.swap(held_);
}

void shard::flush_one(connection& c, uint32_t slot) {
  if (c.ops & send_pending) return;  // on_send continues
  if (c.state == conn_state::finishing) return;
  if (tls_state* t = tls_of(slot)) {
    if (flush_tls(c, slot, *t)) return;
  } else if (c.direct || (c.out && !c.out->empty())) {
    io_uring_sqe* sqe = get_sqe();
    if (c.direct) {
      io_uring_prep_send(sqe, c.file_index, c.direct->wire().data(),
                         send_bytes(c.direct->wire_bytes), MSG_NOSIGNAL);
    } else {
      const iovec* iov;
      size_t bytes;
      int n = c.out->prepare_send(&iov, &bytes);
      size_t cut = send_bytes(bytes);  // < bytes: a short send (injected), of the first iovec
      if (n == 1 || cut < bytes)
        io_uring_prep_send(sqe, c.file_index, iov[0].iov_base, std::min(cut, iov[0].iov_len),
                           MSG_NOSIGNAL);
      else
        io_uring_prep_sendmsg(sqe, c.file_index, c.out->msg(), MSG_NOSIGNAL);
    }
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, pack(op::send, c.generation, slot));
    c.ops |= send_pending;
    metrics_.sends.add();
    return;
  }
  if (c.state == conn_state::closing && (c.flags & flag_peer_eof)) {
    finish(c, slot);
    return;
  }
  if (c.state == conn_state::closing && !(c.ops & shutdown_pending)) {
    // Everything queued went out: half-close, then wait (bounded) for the peer's EOF so that
    // our last bytes are not destroyed by a reset.
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_shutdown(sqe, c.file_index, SHUT_WR);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, pack(op::shutdown, c.generation, slot));
    c.ops |= shutdown_pending;
    c.state = conn_state::lingering;
  }
}

bool shard::flush_tls(connection& c, uint32_t slot, tls_state& t) {
  if (t.unsent() == 0) {
    if (t.conn.handshake_done() && !t.broken) {
      // Plain text in order (a direct frame is older than anything queued), up to the budget.
      size_t budget = limits::tls_plain_bytes_per_send;
      size_t taken = 0;
      bool ok = true;
      if (c.direct) {
        fanout::frame* f = take_direct(c);
        ok = t.conn.write(f->wire().data(), f->wire_bytes);
        taken += f->wire_bytes;
        fanout::release(f);
      }
      if (ok && c.out && !c.out->empty() && taken < budget) {
        const iovec* iov;
        size_t bytes;
        int n = c.out->prepare_send(&iov, &bytes);
        size_t written = 0;
        for (int i = 0; ok && i < n && taken + written < budget; ++i) {
          size_t len = std::min(iov[i].iov_len, budget - taken - written);
          ok = t.conn.write(static_cast<const uint8_t*>(iov[i].iov_base), len);
          if (ok) written += len;
        }
        c.out->complete_send(chunks_, written);
      }
      if (!ok) {
        metrics_.tls_errors.add();
        t.broken = true;
        begin_close(c, slot, close_reason::tls_error, 0);
      } else if (c.state == conn_state::closing && (!c.out || c.out->empty())) {
        t.conn.shutdown();  // close_notify after our last bytes
      }
    }
    size_t pending = t.conn.pending_output();
    if (pending == 0) return false;
    t.release_out();
    t.out = t.conn.take_buffer();  // no copy: the buffer the records were written into
    if (t.out.size == 0) return false;
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_send(sqe, c.file_index, t.out.data.get() + t.out_sent, send_bytes(t.unsent()),
                     MSG_NOSIGNAL);
  sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, pack(op::send, c.generation, slot));
  c.ops |= send_pending;
  metrics_.sends.add();
  return true;
}

void shard::drop_tls(uint32_t slot) {
  if (slot >= tls_.size() || !tls_[slot]) return;
  delete tls_[slot];
  tls_[slot] = nullptr;
  metrics_.tls_connections.sub();
}

void shard::on_send(connection& c, uint32_t slot, int res) {
  c.ops &= uint8_t(~send_pending);
  tls_state* t = tls_of(slot);
  if (t) {
    // Ciphertext: the plain text it carries left the queue when it was encrypted.
    if (res > 0) t->out_sent += size_t(res);
    if (t->unsent() == 0 || res < 0) t->release_out();
  } else if (c.direct) {
    // The send in flight was the direct frame's: what it left unsent goes before the queue.
    fanout::frame* f = take_direct(c);
    if (res >= 0 && uint32_t(res) < f->wire_bytes && c.state != conn_state::finishing)
      out_of(c).prepend_frame(f, uint32_t(res));
    fanout::release(f);
  } else if (c.out) {
    c.out->complete_send(chunks_, res < 0 ? 0 : size_t(res));
  }
  if (res < 0) {
    if (c.state == conn_state::handshake || c.state == conn_state::open)
      begin_close(c, slot, close_reason::peer_reset, 0);
    finish(c, slot);
    maybe_free(c, slot);  // when already finishing, this completion may have been the last op
    return;
  }
  metrics_.bytes_out.add(uint64_t(res));
  if (c.state == conn_state::finishing) {
    maybe_free(c, slot);
    return;
  }
  if (c.out && c.out->empty()) release_queue(c);
  bool more = c.out != nullptr || (t && (t->unsent() || c.direct || t->conn.pending_output()));
  if (more || c.state == conn_state::closing) mark_dirty(c, slot);
}

// ---------------------------------------------------------------------------------------------
// Closing: closing (flush) -> lingering (half-closed, waiting for EOF) -> finishing (cancel,
// close the descriptor) -> free once the kernel owns no op of the slot.

void shard::reject(connection& c, uint32_t slot, reject_reason why, uint16_t status,
                   std::string_view extra_headers) {
  metrics_.rejected[size_t(why)].add();
  // A limit that bites is the operator's business (warn); a malformed request the client's.
  bool limit = why == reject_reason::max_connections || why == reject_reason::pending_handshakes ||
               why == reject_reason::per_ip;
  log::level lvl = limit ? log::level::warn : log::level::info;
  if (log::enabled(lvl))
    log::emit(lvl, "handshake_rejected",
              "upgrade refused: " + std::to_string(status) + " " +
                  std::string(proto::http_reason(status)),
              {{"status", status}, {"reason", name_of(why)}, {"shard", index_}}, name_of(why));
  answer_and_close(
      c, slot,
      proto::http_response(status, "text/plain", std::string(proto::http_reason(status)) + "\n",
                           extra_headers));
}

// The last answer on a socket: queued, then the close (flushed first, then the linger).
void shard::answer_and_close(connection& c, uint32_t slot, std::string_view response) {
  out_of(c).append(chunks_, response.data(), response.size());
  mark_dirty(c, slot);
  begin_close(c, slot, close_reason::http_done, 0);
}

// An error answer of the HTTP API (JSON, like its other answers), then close: the body was not
// read, so the connection cannot carry another request.
void shard::reject_api(connection& c, uint32_t slot, uint16_t status, std::string_view reason) {
  answer_and_close(c, slot, http_endpoints::api_error(status, reason));
}

void shard::begin_close(connection& c, uint32_t slot, close_reason why, uint16_t ws_code,
                        std::string_view reason) {
  if (c.state != conn_state::handshake && c.state != conn_state::open) return;
  if (c.state == conn_state::open) {
    if (ws_code)
      queue_close(c, slot, ws_code,
                  !reason.empty()                    ? reason
                  : ws_code == close_codes::shutdown ? "server shutting down"
                                                     : std::string_view{});
    metrics_.connections_open.sub();
    // Never inside the application's own call (it may be walking its subscribers): reported
    // by run_deferred_closes once the current callback returned.
    c.flags |= flag_app_close;
    deferred_closes_.push_back(conn_ref{slot, c.generation});
  }
  if (c.flags & flag_pending) {
    shared_.pending_handshakes.fetch_sub(1, std::memory_order_relaxed);
    c.flags &= uint8_t(~flag_pending);
  }
  metrics_.closed[size_t(why)].add();
  c.closed_reason = uint8_t(why);
  c.state = conn_state::closing;
  if (c.assembly) {
    shared_.unfinished_bytes.fetch_sub(c.assembly->size, std::memory_order_relaxed);
    metrics_.assembly_bytes.sub(c.assembly->size);
    byte_buffer::release(c.assembly);
  }
  byte_buffer::release(c.carry);
  uint64_t deadline = now_ms_ + cfg_.linger_timeout_ms;
  if (stopping_) deadline = std::min(deadline, stop_deadline_ms_);
  timers_.link(slot, timer_list::linger, deadline);
  mark_dirty(c, slot);
}

void shard::finish(connection& c, uint32_t slot) {
  if (c.state == conn_state::finishing) return;
  if (c.state == conn_state::handshake || c.state == conn_state::open)
    begin_close(c, slot, close_reason::internal_error, 0);
  c.state = conn_state::finishing;
  timers_.unlink(slot);
  // Every op on the socket: the multishot recv, a send that a peer which never reads would
  // otherwise keep pending (and the slot with it) forever, a shutdown not started yet. Each is
  // cancelled by its own user_data, which the kernel finds by hash: a cancel by descriptor scans
  // every armed request of the ring (10,000 idle connections made each close cost 0.2-0.5 ms).
  // Fire-and-forget (no slot): the slot stays until the cancelled ops' own completions clear
  // their bits, and their user_data carries this generation, so a cancel never reaches a reuse.
  for (auto [bit, o] : {std::pair{recv_armed, op::recv}, std::pair{send_pending, op::send},
                        std::pair{shutdown_pending, op::shutdown}}) {
    if (!(c.ops & bit)) continue;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, pack(o, c.generation, slot), IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, pack(op::cancel, 0, no_slot));
  }
  // A shutdown runs in io-wq and looks the fixed file up only when it runs: closed now, the
  // descriptor index could already hold the next accepted socket, and the shutdown would
  // half-close that one. The close waits for the shutdown's completion (on_close_op).
  if (!(c.ops & shutdown_pending)) close_file(c, slot);
}

void shard::close_file(connection& c, uint32_t slot) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_close_direct(sqe, unsigned(c.file_index));
  io_uring_sqe_set_data64(sqe, pack(op::close_fd, c.generation, slot));
  c.ops |= close_pending;
}

void shard::on_close_op(connection& c, uint32_t slot, op o, int res) {
  (void)res;
  switch (o) {
    case op::shutdown:
      c.ops &= uint8_t(~shutdown_pending);
      if (c.state == conn_state::finishing) {
        close_file(c, slot);  // finish() waited for this shutdown
      } else if (res < 0 && c.state == conn_state::lingering) {
        finish(c, slot);
      }
      break;
    case op::close_fd:
      c.ops &= uint8_t(~close_pending);
      break;
    default:
      break;
  }
  maybe_free(c, slot);
}

void shard::maybe_free(connection& c, uint32_t slot) {
  if (c.state != conn_state::finishing || c.ops != 0) return;
  if (c.flags & flag_app_close) run_deferred_closes();  // before the slot can be reused
  if (c.out) {
    c.out->clear(chunks_);
    release_queue(c);
  }
  if (c.direct) fanout::release(take_direct(c));
  byte_buffer::release(c.carry);
  byte_buffer::release(c.assembly);
  drop_tls(slot);
  if (c.flags & flag_counted) shared_.connections.fetch_sub(1, std::memory_order_relaxed);
  if (c.flags & flag_per_ip) shared_.per_ip->release(slot_ip_[slot]);
  c.state = conn_state::free;
  c.flags = 0;
  c.file_index = -1;
  ++c.generation;
  metrics_.slots_used.sub();
  free_slots_.push_back(slot);
  if (accept_paused_ && accepting_ &&
      metrics_.slots_used.get() + table_reserve_ / 8 < accept_pause_at_)
    resume_accepts();
}

void shard::run_deferred_closes() {
  // on_close may close other connections (appending here): index, not iterators.
  for (size_t i = 0; i < deferred_closes_.size(); ++i) {
    conn_ref ref = deferred_closes_[i];
    connection& c = slot_at(ref.slot);
    if (c.generation != ref.generation || !(c.flags & flag_app_close)) continue;
    c.flags &= uint8_t(~flag_app_close);
    app_.on_close(*this, ref);
  }
  deferred_closes_.clear();
}

// The inbox step of the loop pass: deliveries from every producer (other shards, this one, the
// embedding program's threads), bounded per pass by count and by the bytes they queue, so one
// pass never grows the outbound queues without limit; the rest waits for the next pass (which
// then does not sleep).
void shard::drain_inbox() {
  if (!shared_.fanout) return;
  using limits::pass_deliveries_max;
  constexpr uint64_t pass_bytes_max = limits::pass_queued_bytes_max;
  uint64_t queued_bytes = 0;
  size_t taken = 0;
  fanout::inbox& in = shared_.fanout->inbox(index_);
  // Publication passes are timed back to back: one clock read ends a pass and starts the next
  // (0: read one first; commands are not timed).
  uint64_t pass_start_ns = 0;
  while (taken < pass_deliveries_max && queued_bytes < pass_bytes_max) {
    size_t n = in.drain(64, [&](fanout::delivery& d) {
      const bool timed = d.kind != fanout::delivery_kind::command;
      if (timed && !pass_start_ns) pass_start_ns = monotonic_ns();
      uint64_t sent_before = metrics_.deliveries.get();
      app_.on_delivery(*this, d);
      run_deferred_closes();
      uint64_t sent = metrics_.deliveries.get() - sent_before;
      queued_bytes += sent * d.f->wire_bytes;
      pass_start_ns = timed ? time_pass(d, sent, pass_start_ns) : 0;
      fanout::release(d.f);
    });
    if (n == 0) break;
    taken += n;
  }
  inbox_backlog_ = taken >= pass_deliveries_max || queued_bytes >= pass_bytes_max;
  if (inbox_backlog_) metrics_.limit_hits[size_t(limit_kind::inbox_pass_budget)].add();
  if (taken) metrics_.inbox_drained.add(taken);
}

// One publication's pass ended now: its duration, and the latency of its `sent` deliveries from
// the hub's stamp (microseconds, wrapping every 71 minutes). Returns now.
uint64_t shard::time_pass(const fanout::delivery& d, uint64_t sent, uint64_t start_ns) {
  uint64_t end_ns = monotonic_ns();
  metrics_.fanout_pass_duration.observe_ns(end_ns - start_ns);
  if (sent) {
    uint32_t us = uint32_t(end_ns / 1000) - d.accepted_us;
    metrics_.delivery_latency.observe_ns(uint64_t(us) * 1000, sent);
  }
  return end_ns;
}

// ---------------------------------------------------------------------------------------------
// Timers (engine/timer_lists.hpp)

void shard::expire(timer_list list) {
  for (uint32_t slot; (slot = timers_.pop_expired(list, now_ms_)) != no_slot;) {
    connection& c = slot_at(slot);
    switch (list) {
      case timer_list::handshake:
        begin_close(c, slot, close_reason::handshake_timeout, 0);
        finish(c, slot);  // a socket that never completed its request gets no response
        break;
      case timer_list::idle:
        begin_close(c, slot, close_reason::idle_timeout, close_codes::idle_timeout);
        break;
      default:
        finish(c, slot);
        break;
    }
  }
}

void shard::on_timer() {
  arm_timer();
  expire(timer_list::handshake);
  expire(timer_list::idle);
  expire(timer_list::linger);
  app_.on_tick(*this, now_ms_);
}

void shard::on_wake() {
  if (stop_requested_.load(std::memory_order_acquire) && !stopping_) {
    stopping_ = true;
    uint16_t code;
    std::string reason;
    uint32_t timeout_ms;
    {
      std::lock_guard lock(stop_mu_);
      code = stop_code_;
      reason = stop_reason_;
      timeout_ms = stop_timeout_ms_ ? stop_timeout_ms_ : cfg_.shutdown_timeout_ms;
    }
    stop_deadline_ms_ = now_ms_ + timeout_ms;
    accepting_ = false;
    for (int fd : {listen_fd_, admin_fd_}) {
      if (fd < 0) continue;
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, pack(op::cancel, 0, no_slot));
    }
    for (uint32_t slot = 0; slot < slots_touched_; ++slot) {
      connection& c = slot_at(slot);
      if (c.state == conn_state::open)
        begin_close(c, slot, close_reason::shutdown, code, reason);
      else if (c.state == conn_state::handshake)
        begin_close(c, slot, close_reason::shutdown, 0);
    }
    return;
  }
  arm_wake();
}

// ---------------------------------------------------------------------------------------------
// Ring helpers

io_uring_sqe* shard::get_sqe() {
  io_uring_sqe* sqe = ring_.sqe();
  ENGINE_ASSERT(sqe != nullptr);
  return sqe;
}

void shard::arm_accept() {
  if (single_accepts()) {
    accept_addrs_.resize(accepts_in_flight);
    for (uint32_t i = 0; i < accepts_in_flight; ++i)
      if (!(accepts_armed_ & (1u << i))) arm_accept_one(i);
    return;
  }
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept_direct(sqe, listen_fd_, nullptr, nullptr, 0);
  io_uring_sqe_set_data64(sqe, pack(op::accept, 0, 0));
}

// Single-shot accepts (single_accepts()) are simply not re-armed: the few in flight complete
// into the reserve, and nothing is cancelled (a cancelled accept could drop a connection).
void shard::pause_accepts() {
  accept_paused_ = true;
  metrics_.accept_pauses.add();
}

void shard::resume_accepts() {
  accept_paused_ = false;
  arm_accept();
}

void shard::arm_accept_admin() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept_direct(sqe, admin_fd_, nullptr, nullptr, 0);
  io_uring_sqe_set_data64(sqe, pack(op::accept_admin, 0, 0));
}

void shard::arm_accept_one(uint32_t index) {
  accept_addr& a = accept_addrs_[index];
  a.len = sizeof a.addr;
  io_uring_sqe* sqe = get_sqe();
  // IORING_FILE_INDEX_ALLOC - 1: liburing 2.3 adds 1 to the index it is given (later versions
  // pass IORING_FILE_INDEX_ALLOC through and add 1 to anything else): both end at ALLOC.
  io_uring_prep_accept_direct(sqe, listen_fd_, reinterpret_cast<sockaddr*>(&a.addr), &a.len, 0,
                              IORING_FILE_INDEX_ALLOC - 1);
  io_uring_sqe_set_data64(sqe, pack(op::accept, 0, index));
  accepts_armed_ |= 1u << index;
}

void shard::arm_recv(connection& c, uint32_t slot) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv_multishot(sqe, c.file_index, nullptr, 0, 0);
  sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
  sqe->buf_group = fault_ && fault_->fire(fault_kind::enobufs) ? empty_buffer_group : buffer_group;
  io_uring_sqe_set_data64(sqe, pack(op::recv, c.generation, slot));
  c.ops |= recv_armed;
}

void shard::arm_timer() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_timeout(sqe, &tick_, 0, 0);
  io_uring_sqe_set_data64(sqe, pack(op::timer, 0, 0));
}

void shard::arm_wake() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof wake_value_, 0);
  io_uring_sqe_set_data64(sqe, pack(op::wake, 0, 0));
}

void shard::recycle_buffer(uint16_t bid) {
  bufs_.recycle(bid);
  metrics_.recv_buffers_lent.sub();
}

// ---------------------------------------------------------------------------------------------
// Fault injection (--fault-inject, engine/fault.hpp). Each fault is one the kernel can really
// produce, and leaves the kernel's state as our bookkeeping then believes it to be: a reset
// rewrites a completion that happened (its buffer still recycled, F_MORE kept: the multishot
// recv stays armed until finish() cancels it; an accepted socket is closed), a short send is
// submitted short (flush_one), -ENOBUFS comes from the kernel (arm_recv's empty group), a full
// submission queue makes ring_.sqe() submit first, a failed allocation is grow()'s. Resets and
// failed allocations spare the admin listener's connections (a fault-free path for /metrics).

io_uring_cqe* shard::inject_fault(const io_uring_cqe* real) {
  io_uring_cqe* cqe = fault_cqe_.get();
  *cqe = *real;
  uint32_t slot = user_data::index(cqe->user_data);
  op o = op(user_data::op(cqe->user_data));
  // The admin listener's connections stay fault-free: /metrics can always be read.
  if (cqe->res < 0 || o == op::accept_admin ||
      (o != op::accept && slot < slots_touched_ && (slot_at(slot).flags & flag_admin)))
    return cqe;
  switch (o) {
    case op::recv:
    case op::send:
      if (fault_->fire(fault_kind::reset)) cqe->res = -ECONNRESET;
      break;
    case op::shutdown:
      if (fault_->fire(fault_kind::reset)) cqe->res = -ENOTCONN;
      break;
    case op::accept:
      if (fault_->fire(fault_kind::reset)) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_close_direct(sqe, unsigned(cqe->res));
        io_uring_sqe_set_data64(sqe, pack(op::close_fd, 0, no_slot));
        cqe->res = -ECONNABORTED;
      }
      break;
    default:
      break;
  }
  return cqe;
}

bool shard::grow(connection& c, byte_buffer*& b, const void* bytes, size_t n) {
  if (fault_ && byte_buffer::allocates(b, n) && !(c.flags & flag_admin) &&
      fault_->fire(fault_kind::alloc))
    return false;
  return byte_buffer::append(b, bytes, n);
}

}  // namespace wsed::engine
