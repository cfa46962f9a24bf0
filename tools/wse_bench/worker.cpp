// tools/wse_bench/worker.cpp: the wse-bench load thread (see worker.hpp).
//
// Owns: one ring, its provided buffers, its direct-descriptor table and its connections. Thread:
// the worker thread only. Must never make a syscall per message, block outside the ring wait, or
// run a loop without a bound in count or time.
#include "tools/wse_bench/worker.hpp"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#include "proto/http.hpp"
#include "tools/bench/jwt.hpp"

namespace wsed::bench {

using proto::ws_event;
using proto::ws_event_kind;
using proto::ws_opcode;

namespace {

constexpr unsigned ring_entries = 4096;
constexpr unsigned cq_entries = 65536;
constexpr unsigned recv_buffer_count = 128;  // power of two
constexpr unsigned recv_buffer_bytes = 64 * 1024;
constexpr uint16_t recv_buffer_group = 0;
constexpr long wait_timeout_ns = 2'000'000;
constexpr uint64_t ping_scan_ns = 1'000'000;
constexpr size_t stream_run_bytes = 64 * 1024;  // one send carries at most this (or one frame)
// TCP_NOTSENT_LOWAT: the socket takes no more once this much is queued unsent (and wakes a blocked
// send when it is under half of it). Without it a sender that outruns the server queues megabytes
// per connection (send buffer autotuning) and gets no send CQE for seconds while the server
// drains it (the write-space wakeup waits for a third of the buffer to empty): a measuring window
// against a slow server could see no send at all. With it, sends track what the server reads,
// two runs ahead at most; in-flight data (the receive window) is not limited.
constexpr int notsent_lowat_bytes = 2 * stream_run_bytes;
constexpr size_t ready_message_bytes_max = 16384;
// --tls: plain text decrypted per parse (a few 16 KiB records), in the worker's one buffer.
constexpr size_t tls_plain_bytes = 64 * 1024;
// --tls: a connection's ciphertext buffer larger than this is given back once sent (stream runs
// of 64 KiB); smaller ones (pings, upgrades) are kept for the next send.
constexpr size_t tls_out_keep_bytes = 16 * 1024;

constexpr uint64_t pack(uint8_t o, uint32_t index) {
  return engine::user_data::pack(o, 0, index);
}

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

std::array<uint8_t, 4> random_key() {
  std::array<uint8_t, 4> key{};
  if (getrandom(key.data(), key.size(), 0) != static_cast<ssize_t>(key.size())) {
    std::memcpy(key.data(), "wseb", 4);
  }
  return key;
}

uint64_t random_below(uint64_t bound) {
  uint64_t r = 0;
  if (bound == 0 || getrandom(&r, sizeof r, 0) != sizeof r) return 0;
  return r % bound;
}

}  // namespace

bool is_os_limit_errno(int err) {
  return err == EMFILE || err == ENFILE || err == EADDRNOTAVAIL || err == ENOBUFS ||
         err == ENOMEM || err == EADDRINUSE;
}

void error_counts::add(const error_counts& o) {
  connect_failed += o.connect_failed;
  os_limit += o.os_limit;
  handshake_failed += o.handshake_failed;
  auth_failed += o.auth_failed;
  unexpected_close += o.unexpected_close;
  socket_errors += o.socket_errors;
  protocol_errors += o.protocol_errors;
  mismatches += o.mismatches;
  subscribe_failed += o.subscribe_failed;
  server_pings += o.server_pings;
  other_messages += o.other_messages;
  if (first_detail.empty()) first_detail = o.first_detail;
  if (os_limit_detail.empty()) os_limit_detail = o.os_limit_detail;
}

worker::worker(const job& j, run_control& control, uint32_t first_index, uint32_t count, int cpu)
    : job_(j), control_(control), first_index_(first_index), conns_(count), cpu_(cpu) {}

worker::~worker() {
  ring_.exit();  // cancels armed recvs, closes the direct files (before the buffers go)
}

void worker::run() {
  counters.tid.store(static_cast<int>(gettid()), std::memory_order_release);
  if (cpu_ >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_, &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  if (!setup()) {
    failed_ = static_cast<uint32_t>(conns_.size());
    publish();
    counters.ramp_done.store(true, std::memory_order_release);
    counters.load_done.store(true, std::memory_order_release);
    return;
  }
  loop();
  if (job_.load == load_kind::subscribe) finish_fanout();
  // The ring (and with it every socket) is torn down now, on this thread: a tier's connections
  // are gone when join() returns.
  ring_.exit();
}

bool worker::fail(const std::string& what, int err) {
  fatal = what + ": " + std::strerror(err);
  return false;
}

bool worker::setup() {
  // The ring and the provided buffers as the shards set them up (engine/ring.hpp). A recv takes
  // a buffer only when data arrives, so idle sockets hold none.
  std::string err = ring_.init(ring_entries, cq_entries);
  if (err.empty())
    err = bufs_.init(ring_.get(), recv_buffer_group, recv_buffer_count, recv_buffer_bytes, 0);
  if (!err.empty()) {
    fatal = err;
    return false;
  }
  int rc = 0;

  // Direct descriptors: sockets live in the ring's sparse table, not in the process's fd table,
  // so RLIMIT_NOFILE bounds a ring's table size, not the connections of the process.
  if (!conns_.empty()) {
    rc = io_uring_register_files_sparse(ring_.get(), static_cast<unsigned>(conns_.size()));
    if (rc < 0) return fail("io_uring_register_files_sparse", -rc);
  }

  // Templates: built once, masked ahead of time.
  if (job_.load == load_kind::stream) {
    stream_frame_ = make_masked_frame(job_.opcode, job_.payload, random_key());
    size_t frame_bytes = stream_frame_.bytes.size();
    stream_copies_ = static_cast<uint32_t>(std::max<size_t>(1, stream_run_bytes / frame_bytes));
    if (job_.window_msgs != 0) stream_copies_ = std::min(stream_copies_, job_.window_msgs);
    stream_run_ = repeat_frame(stream_frame_, stream_copies_);
    expected_reply_bytes_ = job_.payload.size();
    expected_reply_opcode_ = job_.opcode;
  }
  if (job_.load == load_kind::ping) {
    std::string ping = ping_json(wall_ms());
    ping_frame_ = make_masked_frame(
        ws_opcode::text,
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(ping.data()), ping.size()),
        random_key());
    ping_buffers_.resize(ping_frame_.bytes.size() * conns_.size());
    for (size_t i = 0; i < conns_.size(); ++i) {
      std::memcpy(ping_buffers_.data() + i * ping_frame_.bytes.size(), ping_frame_.bytes.data(),
                  ping_frame_.bytes.size());
    }
    expected_reply_bytes_ = ping.size();
    expected_reply_opcode_ = ws_opcode::text;
  }
  if (job_.protocol == protocol_mode::wse) {
    std::string hello = client_hello_json();
    hello_frame_ = make_masked_frame(
        ws_opcode::text,
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(hello.data()), hello.size()),
        random_key());
    hello_run_ = hello_frame_.bytes;
    if (job_.load == load_kind::subscribe && !job_.subscribe_topic.empty()) {
      std::string sub = subscribe_json(job_.subscribe_topic);
      masked_frame f = make_masked_frame(
          ws_opcode::text,
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(sub.data()), sub.size()),
          hello_frame_.key);
      hello_run_.insert(hello_run_.end(), f.bytes.begin(), f.bytes.end());
    }
  }
  limits_.message_bytes_max = 64u << 20;
  if (job_.tls) tls_plain_.reset(new uint8_t[tls_plain_bytes]);
  return true;
}

io_uring_sqe* worker::sqe() {
  return ring_.sqe();  // a full SQ is flushed first
}

void worker::recycle(uint16_t bid, unsigned offset) {
  bufs_.add(bid, offset);
}

void worker::loop() {
  const uint64_t ramp_deadline = now_ns() + job_.ramp_timeout_ns;
  now_ = now_ns();
  for (;;) {
    phase p = control_.current.load(std::memory_order_acquire);
    if (p == phase::stop) break;
    if (p == phase::run && !started_) {
      started_ = true;
      for (uint32_t i = 0; i < conns_.size(); ++i) {
        conn& c = conns_[i];
        if (job_.load == load_kind::ping) {
          c.next_ping_ns = now_ + (job_.ping_stagger ? random_below(job_.ping_interval_ns) : 0);
          maybe_ping(i);
        } else {
          maybe_stream(i);
        }
      }
    }
    if (!counters.ramp_done.load(std::memory_order_relaxed)) ramp(ramp_deadline);
    if (started_ && job_.load == load_kind::ping && now_ - last_scan_ns_ >= ping_scan_ns) {
      scan_pings();
    }
    stamp_sends();
    wait_and_dispatch();
    publish();
  }
}

void worker::ramp(uint64_t deadline) {
  uint32_t room = job_.connect_inflight > ramping_ ? job_.connect_inflight - ramping_ : 0;
  uint32_t n = std::min<uint32_t>(room, static_cast<uint32_t>(conns_.size()) - next_connect_);
  if (n != 0) open_sockets(next_connect_, n);
  bool all_started = next_connect_ == conns_.size();
  if ((all_started && ramping_ == 0) || now_ > deadline) {
    if (ramping_ != 0) {
      errors.handshake_failed += ramping_;
      errors.note(std::to_string(ramping_) + " connections still upgrading at the ramp timeout");
      for (auto& c : conns_) {
        if (c.state == conn_state::connecting || c.state == conn_state::upgrading ||
            c.state == conn_state::awaiting_ready) {
          c.state = conn_state::closed;
          c.hs.reset();
          ++failed_;
          ++dead_;
        }
      }
      ramping_ = 0;
    }
    for (uint32_t i = next_connect_; i < conns_.size(); ++i) {  // never started (deadline)
      conns_[i].state = conn_state::closed;
      ++failed_;
      ++dead_;
      errors.handshake_failed++;
    }
    next_connect_ = static_cast<uint32_t>(conns_.size());
    counters.ramp_done.store(true, std::memory_order_release);
  }
}

// Creates n sockets (socket + options + optional source bind), moves them into the ring's direct
// table with one register call, closes the process fds, and queues the connects. socket() rather
// than IORING_OP_SOCKET: TCP_NODELAY, SO_LINGER and IP_BIND_ADDRESS_NO_PORT need setsockopt, which
// a direct descriptor cannot get on liburing 2.3.
void worker::open_sockets(uint32_t first, uint32_t n) {
  std::vector<int> fds;
  fds.reserve(n);
  std::string refused;  // why the OS refused the rest of the n (empty: it did not)
  for (uint32_t k = 0; k < n; ++k) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      refused = std::string("socket(): ") + std::strerror(errno);
      break;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // Abortive close at teardown: no TIME_WAIT, so back-to-back tiers do not run out of ports.
    linger lg{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int lowat = notsent_lowat_bytes;
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    if (job_.source_ips > 1) {
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      sockaddr_in src{};
      src.sin_family = AF_INET;
      uint32_t g = first_index_ + first + k;
      src.sin_addr.s_addr = htonl((127u << 24) | (1u + g % job_.source_ips));
      if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
        refused = std::string("bind(127.0.0.x): ") + std::strerror(errno);
        close(fd);
        break;
      }
    }
    fds.push_back(fd);
  }
  uint32_t made = static_cast<uint32_t>(fds.size());
  if (made != 0) {
    int rc = io_uring_register_files_update(ring_.get(), first, fds.data(), made);
    for (int fd : fds) close(fd);  // the direct table holds the sockets now
    if (rc < 0 || static_cast<uint32_t>(rc) != made) {
      refused =
          std::string("io_uring_register_files_update: ") + std::strerror(rc < 0 ? -rc : EMFILE);
      made = 0;
    }
  }
  for (uint32_t k = 0; k < made; ++k) {
    uint32_t i = first + k;
    conn& c = conns_[i];
    c.state = conn_state::connecting;
    c.connect_start_ns = now_;
    if (first_connect_ns_ == 0) first_connect_ns_ = now_;
    io_uring_sqe* s = sqe();
    c.on_b = job_.two_servers && ((first_index_ + i) & 1) != 0;
    const sockaddr_in& to = c.on_b ? job_.server2 : job_.server;
    io_uring_prep_connect(s, static_cast<int>(i), reinterpret_cast<const sockaddr*>(&to),
                          sizeof to);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, pack(static_cast<uint8_t>(op::connect), i));
    ++ramping_;
  }
  // Sockets the OS refused: these connections fail (the OS limit, not the server).
  for (uint32_t k = made; k < n; ++k) {
    conns_[first + k].state = conn_state::closed;
    ++failed_;
    ++dead_;
  }
  if (made < n) errors.note_os_limit(refused, n - made);
  next_connect_ = first + n;
}

// Latency starts when a message is handed to the kernel: just before the enter.
void worker::stamp_sends() {
  if (to_stamp_.empty()) return;
  uint64_t t = now_ns();
  for (auto [i, slot] : to_stamp_) conns_[i].batch_time_ns[slot] = t;
  to_stamp_.clear();
}

void worker::wait_and_dispatch() {
  __kernel_timespec ts{};
  ts.tv_nsec = wait_timeout_ns;
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(ring_.get(), &cqe, 1, &ts, nullptr);
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
    errors.socket_errors++;
    errors.note(std::string("io_uring_submit_and_wait_timeout: ") + std::strerror(-rc));
  }
  now_ = now_ns();
  measuring_ = control_.measuring.load(std::memory_order_relaxed);
  if (measuring_ && job_.load == load_kind::subscribe) {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    wall_us_ =
        static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000;
  }
  unsigned head = 0, seen = 0;
  recycled_ = 0;
  io_uring_for_each_cqe(ring_.get(), head, cqe) {
    ++seen;
    dispatch(cqe);
  }
  if (recycled_ != 0) bufs_.commit(recycled_);
  io_uring_cq_advance(ring_.get(), seen);
}

// The one switch over completion kinds.
void worker::dispatch(const io_uring_cqe* cqe) {
  uint32_t i = static_cast<uint32_t>(cqe->user_data);
  switch (static_cast<op>(engine::user_data::op(cqe->user_data))) {
    case op::connect:
      return on_connect(i, cqe->res);
    case op::hs_send:
      return on_hs_send(i, cqe->res);
    case op::recv:
      return on_recv(i, cqe);
    case op::send:
      return on_send(i, cqe->res);
    case op::tls_send:
      return on_tls_send(i, cqe->res);
  }
}

void worker::publish() {
  counters.sent_msgs.store(sent_msgs_, std::memory_order_relaxed);
  counters.sent_bytes.store(sent_bytes_, std::memory_order_relaxed);
  // The subscribers' ticks are counted per side; summed here, once per pass.
  counters.replies.store(replies_ + side_ticks_[0] + side_ticks_[1], std::memory_order_relaxed);
  counters.reply_bytes.store(reply_bytes_ + side_tick_bytes_[0] + side_tick_bytes_[1],
                             std::memory_order_relaxed);
  counters.replies_b.store(side_ticks_[1], std::memory_order_relaxed);
  counters.reply_bytes_b.store(side_tick_bytes_[1], std::memory_order_relaxed);
  counters.open.store(open_, std::memory_order_relaxed);
  counters.opened.store(opened_, std::memory_order_relaxed);
  counters.failed.store(failed_, std::memory_order_relaxed);
  counters.subscribed.store(subscribed_, std::memory_order_relaxed);
  counters.first_connect_ns.store(first_connect_ns_, std::memory_order_relaxed);
  counters.last_open_ns.store(last_open_ns_, std::memory_order_relaxed);
  if (job_.load == load_kind::ping && job_.pings_per_conn != 0 && started_ &&
      counters.ramp_done.load(std::memory_order_relaxed) && finished_ + dead_ >= conns_.size()) {
    counters.load_done.store(true, std::memory_order_release);
  }
}

void worker::on_connect(uint32_t i, int res) {
  conn& c = conns_[i];
  if (c.state != conn_state::connecting) return;  // given up at the ramp timeout
  if (res < 0) {
    std::string detail = std::string("connect: ") + std::strerror(-res);
    if (is_os_limit_errno(-res)) {
      errors.note_os_limit(detail);
    } else {
      errors.connect_failed++;
      errors.note(detail);
    }
    c.state = conn_state::closed;
    --ramping_;
    ++failed_;
    ++dead_;
    return;
  }
  c.state = conn_state::upgrading;
  c.hs = std::make_unique<handshake>();
  uint8_t key_bytes[16];
  if (getrandom(key_bytes, sizeof key_bytes, 0) != sizeof key_bytes) {
    for (size_t k = 0; k < sizeof key_bytes; ++k) key_bytes[k] = static_cast<uint8_t>(i + k);
  }
  std::string key = base64(key_bytes);
  c.hs->expected_accept = proto::websocket_accept(key);
  std::string token;
  if (job_.protocol == protocol_mode::wse) {
    token =
        !job_.token.empty()
            ? job_.token
            : mint_hs256(job_.secret, bench_claims("bench-user-" + std::to_string(first_index_ + i),
                                                   job_.token_now_s));
  }
  c.hs->request =
      upgrade_request(job_.path, c.on_b ? job_.host_header2 : job_.host_header, key, token);
  arm_recv(i);
  if (job_.tls) return start_tls(i);  // the upgrade request follows the TLS handshake
  send_handshake(i);
}

void worker::send_handshake(uint32_t i) {
  conn& c = conns_[i];
  handshake& hs = *c.hs;
  if (c.tls) {
    if (!c.tls->session.write(reinterpret_cast<const uint8_t*>(hs.request.data()),
                              hs.request.size())) {
      return close_with(i, errors.handshake_failed, "TLS: " + c.tls->session.error_text(), 0);
    }
    hs.request_sent = hs.request.size();
    return flush_tls(i);
  }
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, static_cast<int>(i), hs.request.data() + hs.request_sent,
                     hs.request.size() - hs.request_sent, MSG_NOSIGNAL);
  s->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(s, pack(static_cast<uint8_t>(op::hs_send), i));
}

void worker::on_hs_send(uint32_t i, int res) {
  conn& c = conns_[i];
  if (c.state != conn_state::upgrading || !c.hs) return;
  if (res < 0) return close_with(i, errors.handshake_failed, "upgrade send", -res);
  c.hs->request_sent += static_cast<size_t>(res);
  if (c.hs->request_sent < c.hs->request.size()) send_handshake(i);
}

void worker::arm_recv(uint32_t i) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv_multishot(s, static_cast<int>(i), nullptr, 0, 0);
  s->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
  s->buf_group = recv_buffer_group;
  io_uring_sqe_set_data64(s, pack(static_cast<uint8_t>(op::recv), i));
  conns_[i].recv_armed = true;
}

void worker::on_recv(uint32_t i, const io_uring_cqe* cqe) {
  conn& c = conns_[i];
  if ((cqe->flags & IORING_CQE_F_MORE) == 0) c.recv_armed = false;
  if (cqe->flags & IORING_CQE_F_BUFFER) {
    uint16_t bid = static_cast<uint16_t>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    if (cqe->res > 0) {
      if (c.tls) {
        on_tls_bytes(i, bufs_.at(bid), static_cast<size_t>(cqe->res));
      } else {
        on_bytes(i, bufs_.at(bid), static_cast<size_t>(cqe->res));
      }
    }
    recycle(bid, recycled_++);  // every path, errors included
  }
  if (c.state == conn_state::closed || c.state == conn_state::idle) return;
  if (cqe->res == 0) {
    if (c.state != conn_state::open) {
      return close_with(i, errors.handshake_failed, "EOF during the upgrade", 0);
    }
    return close_with(i, errors.unexpected_close, "EOF from the server", 0);
  }
  if (cqe->res < 0 && cqe->res != -ENOBUFS) {
    uint64_t& counter =
        c.state == conn_state::open ? errors.socket_errors : errors.handshake_failed;
    return close_with(i, counter, "recv", -cqe->res);
  }
  if (!c.recv_armed) arm_recv(i);  // -ENOBUFS or the kernel ended the multishot: re-arm
}

void worker::close_with(uint32_t i, uint64_t& counter, const std::string& what, int err) {
  conn& c = conns_[i];
  if (c.state == conn_state::closed) return;
  if (c.state == conn_state::open) {
    --open_;
    if (job_.load == load_kind::ping && job_.pings_per_conn != 0 &&
        c.pings_done >= job_.pings_per_conn) {
      --finished_;
    }
  } else {
    --ramping_;
    ++failed_;
  }
  ++dead_;
  if (c.sub && c.sub->subscribed) --subscribed_;
  c.state = conn_state::closed;
  c.hs.reset();
  counter++;
  errors.note(err != 0 ? what + ": " + std::strerror(err) : what);
  // The socket stays in the direct table (its recv armed) until the ring is torn down.
}

void worker::on_bytes(uint32_t i, uint8_t* data, size_t length) {
  conn& c = conns_[i];
  if (c.state == conn_state::upgrading) return on_handshake_bytes(i, data, length);
  if (c.state == conn_state::open || c.state == conn_state::awaiting_ready) {
    on_frame_bytes(i, data, length);
  }
}

void worker::on_handshake_bytes(uint32_t i, uint8_t* data, size_t length) {
  conn& c = conns_[i];
  handshake& hs = *c.hs;
  size_t before = hs.response.size();
  hs.response.append(reinterpret_cast<const char*>(data), length);
  upgrade_check check = check_upgrade_response(
      hs.response, std::string_view(hs.expected_accept.data(), hs.expected_accept.size()));
  switch (check.status) {
    case upgrade_status::incomplete:
      return;
    case upgrade_status::too_long:
      return close_with(i, errors.handshake_failed, "upgrade response too long", 0);
    case upgrade_status::bad_status:
      return close_with(i, errors.handshake_failed, "upgrade refused: " + check.status_line, 0);
    case upgrade_status::bad_accept:
      return close_with(i, errors.handshake_failed, "upgrade: wrong Sec-WebSocket-Accept", 0);
    case upgrade_status::ok:
      break;
  }
  size_t consumed_in_data = check.header_bytes - before;
  hs.response.clear();
  if (job_.protocol == protocol_mode::raw) {
    became_open(i);
  } else {
    c.state = conn_state::awaiting_ready;
  }
  if (consumed_in_data < length) {
    on_frame_bytes(i, data + consumed_in_data, length - consumed_in_data);
  }
}

void worker::became_open(uint32_t i) {
  conn& c = conns_[i];
  handshake_latency.record(now_ - c.connect_start_ns);
  c.hs.reset();
  c.state = conn_state::open;
  --ramping_;
  ++open_;
  ++opened_;
  last_open_ns_ = now_;
  if (job_.load == load_kind::subscribe) {
    std::optional<uint64_t> first;
    if (job_.tick_base_known) first = 0;
    c.sub = std::make_unique<subscriber>(first);
    // No subscribe to send (raw, or the server subscribes at connect): subscribed once open.
    if (job_.protocol == protocol_mode::raw || job_.subscribe_topic.empty()) {
      c.sub->subscribed = true;
      ++subscribed_;
    }
  }
  if (job_.protocol == protocol_mode::wse) {
    start_send(i, hello_run_.data(), static_cast<uint32_t>(hello_run_.size()), 0, false);
    return;
  }
  if (started_) {
    if (job_.load == load_kind::ping) {
      c.next_ping_ns = now_;
      maybe_ping(i);
    } else {
      maybe_stream(i);
    }
  }
}

// Server frames with the parser's carry protocol: an incomplete header or control frame is kept
// (at most ws_carry_bytes_max bytes) and parsed again with the next bytes.
void worker::on_frame_bytes(uint32_t i, uint8_t* data, size_t length) {
  conn& c = conns_[i];
  if (c.carry_bytes != 0) {
    uint8_t scratch[2 * proto::ws_carry_bytes_max];
    size_t take = std::min(length, sizeof scratch - c.carry_bytes);
    std::memcpy(scratch, c.carry.data(), c.carry_bytes);
    std::memcpy(scratch + c.carry_bytes, data, take);
    size_t total = c.carry_bytes + take;
    size_t used = parse(i, scratch, total);
    if (c.state != conn_state::open && c.state != conn_state::awaiting_ready) return;
    if (used < c.carry_bytes || (used < total && take == length)) {
      keep_carry(i, scratch + used, total - used);
      return;
    }
    size_t skip = used - c.carry_bytes;
    c.carry_bytes = 0;
    data += skip;
    length -= skip;
  }
  size_t used = parse(i, data, length);
  if ((c.state == conn_state::open || c.state == conn_state::awaiting_ready) && used < length) {
    keep_carry(i, data + used, length - used);
  }
}

void worker::keep_carry(uint32_t i, const uint8_t* tail, size_t bytes) {
  conn& c = conns_[i];
  if (bytes > c.carry.size()) {
    return close_with(i, errors.protocol_errors, "parser left more than a header unparsed", 0);
  }
  std::memmove(c.carry.data(), tail, bytes);
  c.carry_bytes = static_cast<uint8_t>(bytes);
}

size_t worker::parse(uint32_t i, uint8_t* data, size_t length) {
  conn& c = conns_[i];
  size_t offset = 0;
  while (offset < length) {
    ws_event ev = c.parser.next(std::span<uint8_t>(data + offset, length - offset), limits_);
    offset += ev.consumed;
    switch (ev.kind) {
      case ws_event_kind::need_more:
        return offset;
      case ws_event_kind::data:
        if (c.state == conn_state::awaiting_ready) {
          on_ready_data(i, ev);
        } else {
          on_data(i, ev);
        }
        break;
      case ws_event_kind::ping:
        errors.server_pings++;  // not answered: the servers measured here do not require it
        break;
      case ws_event_kind::pong:
        break;
      case ws_event_kind::close: {
        bool auth = ev.close_code == 4401 || ev.close_code == 4403;
        bool upgrading = c.state != conn_state::open;
        uint64_t& counter = auth        ? errors.auth_failed
                            : upgrading ? errors.handshake_failed
                                        : errors.unexpected_close;
        close_with(i, counter, "close frame " + std::to_string(ev.close_code), 0);
        return offset;
      }
      case ws_event_kind::error:
        close_with(i, errors.protocol_errors, "protocol error " + std::to_string(ev.close_code), 0);
        return offset;
    }
    if (c.state != conn_state::open && c.state != conn_state::awaiting_ready) return offset;
  }
  return offset;
}

// wse: text messages before server_ready. server_ready opens the connection; an error frame
// (AUTH_REQUIRED / AUTH_FAILED) fails it; anything else is skipped.
void worker::on_ready_data(uint32_t i, const ws_event& ev) {
  conn& c = conns_[i];
  std::string& m = c.hs->message;
  if (ev.message_begin) m.clear();
  size_t room = ready_message_bytes_max - std::min(ready_message_bytes_max, m.size());
  m.append(reinterpret_cast<const char*>(ev.payload.data()), std::min(room, ev.payload.size()));
  if (!ev.message_end) return;
  if (m.find("\"t\":\"server_ready\"") != std::string::npos) return became_open(i);
  if (m.find("\"t\":\"error\"") != std::string::npos) {
    return close_with(i, errors.auth_failed, "error before server_ready: " + m.substr(0, 200), 0);
  }
  errors.other_messages++;
}

void worker::on_data(uint32_t i, const ws_event& ev) {
  conn& c = conns_[i];
  if (job_.load == load_kind::subscribe) return on_subscriber_data(i, ev);
  if (ev.message_begin) {
    c.message_bytes = 0;
    if (job_.protocol == protocol_mode::raw) {
      c.message_is_reply = true;
    } else {
      // wse: only PONG answers a ping ({"c":"WSE","t":"PONG"... in the first bytes).
      std::string_view head(reinterpret_cast<const char*>(ev.payload.data()),
                            std::min<size_t>(ev.payload.size(), 48));
      bool pings = job_.load == load_kind::ping || job_.window_msgs != 0;
      c.message_is_reply = pings && head.find("\"t\":\"PONG\"") != std::string_view::npos;
    }
  }
  c.message_bytes += ev.payload.size();
  if (!ev.message_end) return;
  if (!c.message_is_reply) {
    errors.other_messages++;
    return;
  }
  if (job_.protocol == protocol_mode::raw &&
      (c.message_bytes != expected_reply_bytes_ || ev.message_opcode != expected_reply_opcode_)) {
    return close_with(i, errors.mismatches,
                      "echo of " + std::to_string(c.message_bytes) + " bytes, opcode " +
                          std::to_string(static_cast<int>(ev.message_opcode)),
                      0);
  }
  if (c.inflight == 0 || c.batch_count == 0) {
    return close_with(i, errors.mismatches, "reply nobody asked for", 0);
  }
  on_reply(i);
}

void worker::on_reply(uint32_t i) {
  conn& c = conns_[i];
  --c.inflight;
  ++replies_;
  reply_bytes_ += c.message_bytes;
  if (measuring_) latency.record(now_ - c.batch_time_ns[c.batch_head]);
  if (--c.batch_frames[c.batch_head] == 0) {
    c.batch_head = static_cast<uint8_t>((c.batch_head + 1) % batches_max);
    --c.batch_count;
  }
  if (job_.load == load_kind::ping) {
    ++c.pings_done;
    if (job_.pings_per_conn != 0 && c.pings_done == job_.pings_per_conn) {
      ++finished_;
      return;
    }
    c.next_ping_ns = now_ + job_.ping_interval_ns;
    if (job_.ping_interval_ns == 0) maybe_ping(i);
    return;
  }
  maybe_stream(i);
}

void worker::start_send(uint32_t i, const uint8_t* data, uint32_t bytes, uint32_t frames,
                        bool replies) {
  conn& c = conns_[i];
  if (replies) {
    uint8_t slot = static_cast<uint8_t>((c.batch_head + c.batch_count) % batches_max);
    c.batch_frames[slot] = static_cast<uint16_t>(frames);
    c.batch_time_ns[slot] = now_;
    ++c.batch_count;
    c.inflight += frames;
    to_stamp_.emplace_back(i, slot);
  }
  c.send.start(data, bytes, frames);
  queue_send(i);
}

void worker::queue_send(uint32_t i) {
  conn& c = conns_[i];
  if (c.tls) {
    // Encrypted whole now; done (after_send) once its ciphertext went out.
    c.send_busy = true;
    if (!c.tls->session.write(c.send.ptr, c.send.left)) {
      return close_with(i, errors.socket_errors, "TLS: " + c.tls->session.error_text(), 0);
    }
    return flush_tls(i);
  }
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, static_cast<int>(i), c.send.ptr, c.send.left, MSG_NOSIGNAL);
  s->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(s, pack(static_cast<uint8_t>(op::send), i));
  c.send_busy = true;
}

void worker::on_send(uint32_t i, int res) {
  conn& c = conns_[i];
  c.send_busy = false;
  if (c.state != conn_state::open) return;
  if (res < 0) return close_with(i, errors.socket_errors, "send", -res);
  sent_bytes_ += static_cast<uint64_t>(res);
  after_send(i, static_cast<uint32_t>(res));
}

// `bytes` more of the send in progress were taken (plain: by the kernel; --tls: encrypted and
// their ciphertext sent): the messages they complete count, then the rest or the next send.
void worker::after_send(uint32_t i, uint32_t bytes) {
  conn& c = conns_[i];
  // A short send counts the messages it completed (a slow server may take a whole run over
  // many CQEs, longer than a measuring window); the rest follows, same order.
  sent_msgs_ += c.send.accept(bytes);
  if (c.send.left != 0) return queue_send(i);
  if (!started_) return;
  if (job_.load == load_kind::ping) return maybe_ping(i);
  maybe_stream(i);
}

// Stream: with replies (raw echo), refill once half the window is answered, so each send carries
// several frames; without (wse inbound), keep one send of a full run in flight.
void worker::maybe_stream(uint32_t i) {
  conn& c = conns_[i];
  if (job_.load != load_kind::stream || c.state != conn_state::open || c.send_busy) return;
  if (control_.current.load(std::memory_order_relaxed) != phase::run) return;
  uint32_t frames = stream_copies_;
  bool replies = job_.window_msgs != 0;
  if (replies) {
    uint32_t w = job_.window_msgs;
    if (c.inflight >= w || c.batch_count >= batches_max) return;
    if (c.inflight > w / 2 && w > 1) return;
    frames = std::min(frames, w - c.inflight);
    frames = std::min<uint32_t>(frames, 65535);
  }
  start_send(i, stream_run_.data(), static_cast<uint32_t>(frames * stream_frame_.bytes.size()),
             frames, replies);
}

void worker::maybe_ping(uint32_t i) {
  conn& c = conns_[i];
  if (c.state != conn_state::open || c.send_busy || c.inflight != 0) return;
  if (control_.current.load(std::memory_order_relaxed) != phase::run) return;
  if (job_.pings_per_conn != 0 && c.pings_done >= job_.pings_per_conn) return;
  if (now_ < c.next_ping_ns) return;
  size_t bytes = ping_frame_.bytes.size();
  uint8_t* frame = ping_buffers_.data() + size_t{i} * bytes;
  patch_masked(frame, ping_frame_.header_bytes, ping_frame_.key, ping_timestamp_offset,
               timestamp_digits(wall_ms()));
  start_send(i, frame, static_cast<uint32_t>(bytes), 1, true);
}

void worker::scan_pings() {
  last_scan_ns_ = now_;
  for (uint32_t i = 0; i < conns_.size(); ++i) maybe_ping(i);
}

}  // namespace wsed::bench

namespace wsed::bench {

// subscribe: a message's head is scanned where it lies when it came in one piece (the common
// case: no copy), else its first 256 bytes are gathered (seq and ts_us are in the first ~70).
void worker::on_subscriber_data(uint32_t i, const ws_event& ev) {
  conn& c = conns_[i];
  subscriber& s = *c.sub;
  std::string_view chunk(reinterpret_cast<const char*>(ev.payload.data()), ev.payload.size());
  if (ev.message_begin) {
    c.message_bytes = 0;
    s.partial.clear();
  }
  c.message_bytes += chunk.size();
  if (ev.message_begin && ev.message_end) return on_subscriber_message(i, chunk);
  constexpr size_t head_max = 256;
  if (s.partial.size() < head_max) {
    s.partial.append(chunk.substr(0, head_max - s.partial.size()));
  }
  if (ev.message_end) on_subscriber_message(i, s.partial);
}

void worker::on_subscriber_message(uint32_t i, std::string_view m) {
  conn& c = conns_[i];
  subscriber& s = *c.sub;
  if (std::optional<tick> t = scan_tick(m)) {
    ++side_ticks_[c.on_b];
    side_tick_bytes_[c.on_b] += c.message_bytes;
    s.ticks.on_seq(t->seq);
    if (measuring_) {
      (c.on_b ? latency_b : latency).record(wall_us_ > t->ts_us ? (wall_us_ - t->ts_us) * 1000 : 0);
    }
    return;
  }
  if (m.find("\"t\":\"subscription_update\"") != std::string_view::npos) {
    if (m.find("\"success\":true") == std::string_view::npos) {
      return close_with(i, errors.subscribe_failed,
                        "subscribe refused: " + std::string(m.substr(0, 300)), 0);
    }
    if (!s.subscribed) {
      s.subscribed = true;
      ++subscribed_;
    }
    return;
  }
  errors.other_messages++;
}

// subscribe: every subscriber open at the end against what the server took (or, when the server
// publishes by itself, against the seqs between its first and its highest).
void worker::finish_fanout() {
  uint64_t accepted = control_.ticks_accepted.load(std::memory_order_acquire);
  for (const conn& c : conns_) {
    if (c.state != conn_state::open || !c.sub || !c.sub->subscribed) continue;
    const seq_tracker& t = c.sub->ticks;
    uint64_t gaps =
        accepted != UINT64_MAX ? (accepted > t.unique() ? accepted - t.unique() : 0) : t.missing();
    fanout_counts& f = c.on_b ? fanout_b : fanout;
    f.subscribers++;
    f.gaps += gaps;
    f.subscribers_with_gaps += gaps != 0;
    f.max_gaps = std::max(f.max_gaps, gaps);
    f.duplicates += t.duplicates();
    f.reorders += t.reorders();
  }
}

}  // namespace wsed::bench

namespace wsed::bench {

// --tls: the session, and its ClientHello (written by the first read, with no input yet).
void worker::start_tls(uint32_t i) {
  conn& c = conns_[i];
  c.tls = std::make_unique<tls_side>(*job_.tls);
  size_t n = 0;
  if (c.tls->session.read(tls_plain_.get(), tls_plain_bytes, &n) == engine::tls_read::failed) {
    return close_with(i, errors.handshake_failed, "TLS: " + c.tls->session.error_text(), 0);
  }
  flush_tls(i);
}

// --tls: ciphertext received: fed to the session, its plain text (up to tls_plain_bytes at a
// time) parsed where plain bytes are; the upgrade request goes out once the handshake is done.
void worker::on_tls_bytes(uint32_t i, const uint8_t* data, size_t length) {
  conn& c = conns_[i];
  tls_side& t = *c.tls;
  auto live = [&c] {
    return c.state == conn_state::upgrading || c.state == conn_state::awaiting_ready ||
           c.state == conn_state::open;
  };
  if (!live()) return;
  t.session.feed(data, length);
  engine::tls_read r = engine::tls_read::data;
  while (r == engine::tls_read::data && live()) {
    const bool was_done = t.session.handshake_done();
    size_t have = 0;
    while (have < tls_plain_bytes) {
      size_t n = 0;
      r = t.session.read(tls_plain_.get() + have, tls_plain_bytes - have, &n);
      if (r != engine::tls_read::data) break;
      have += n;
    }
    if (!was_done && t.session.handshake_done()) send_handshake(i);
    if (have != 0 && live()) on_bytes(i, tls_plain_.get(), have);
  }
  if (c.tls) c.tls->session.end_feed();  // the receive buffer goes back to the ring after this
  if (!live()) return;
  switch (r) {
    case engine::tls_read::data:
    case engine::tls_read::want_more:
      break;
    case engine::tls_read::closed:
      if (c.state != conn_state::open) {
        return close_with(i, errors.handshake_failed, "TLS close_notify during the upgrade", 0);
      }
      return close_with(i, errors.unexpected_close, "TLS close_notify from the server", 0);
    case engine::tls_read::plain_http:
    case engine::tls_read::failed:
      return close_with(
          i, c.state == conn_state::open ? errors.protocol_errors : errors.handshake_failed,
          "TLS: " + t.session.error_text(), 0);
  }
  flush_tls(i);
}

// --tls: sends the ciphertext the session holds, one SEND at a time. Once none is left, a plain
// send in progress is complete.
void worker::flush_tls(uint32_t i) {
  conn& c = conns_[i];
  tls_side& t = *c.tls;
  if (t.sending) return;
  if (t.out_sent == t.out_size) {
    size_t pending = t.session.pending_output();
    if (pending != 0) {
      if (t.out_cap < pending) {
        t.out.reset(new uint8_t[pending]);
        t.out_cap = pending;
      }
      t.out_size = t.session.take_output(t.out.get(), pending);
      t.out_sent = 0;
    }
    if (pending == 0 || t.out_size == 0) {
      t.out_size = t.out_sent = 0;
      if (t.out_cap > tls_out_keep_bytes) {
        t.out.reset();
        t.out_cap = 0;
      }
      if (c.send_busy) {
        c.send_busy = false;
        if (c.state == conn_state::open) after_send(i, c.send.left);
      }
      return;
    }
  }
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, static_cast<int>(i), t.out.get() + t.out_sent, t.out_size - t.out_sent,
                     MSG_NOSIGNAL);
  s->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(s, pack(static_cast<uint8_t>(op::tls_send), i));
  t.sending = true;
}

void worker::on_tls_send(uint32_t i, int res) {
  conn& c = conns_[i];
  tls_side& t = *c.tls;
  t.sending = false;
  if (c.state == conn_state::closed || c.state == conn_state::idle) return;
  if (res < 0) {
    return close_with(i,
                      c.state == conn_state::open ? errors.socket_errors : errors.handshake_failed,
                      "send", -res);
  }
  if (c.state == conn_state::open) sent_bytes_ += static_cast<uint64_t>(res);
  t.out_sent += static_cast<size_t>(res);
  flush_tls(i);
}

}  // namespace wsed::bench
