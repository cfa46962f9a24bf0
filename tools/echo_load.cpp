// tools/echo_load.cpp: echo-load, an io_uring WebSocket echo load client. Opens N connections
// (RFC 6455 client handshake), then drives them closed-loop (pingpong: one message in flight
// per connection), pipelined (echo: --window messages in flight), or holds them idle (--hold),
// and reports msg/s, latency, its own CPU per message and, given --server-pid, the server's.
//
// Owns: one io_uring, one provided-buffer ring and a slice of the connections per worker thread;
// the main thread only coordinates phases and reads clocks, rusage and /proc. A worker never
// touches another worker's connections. Must never make a syscall per message (all sends and
// receives of a loop pass go in one io_uring_enter), never block outside that one wait, and never
// loop without a bound: every phase ends on a deadline. Network: the address it is given only.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "proto/http.hpp"
#include "proto/ws.hpp"
#include "tools/bench/stats.hpp"

namespace {

using namespace wsed::proto;
using wsed::tools::cpu_seconds;
using wsed::tools::latency_histogram;

constexpr double duration_s_max = 120;
constexpr double ramp_timeout_s = 60;
constexpr unsigned ring_entries = 4096;
constexpr unsigned cq_entries = 16384;
constexpr unsigned recv_buffer_count = 4096;  // power of two
constexpr unsigned recv_buffer_bytes = 4096;
constexpr uint16_t recv_buffer_group = 0;
constexpr auto wait_timeout = std::chrono::milliseconds(10);

enum class load_mode : uint8_t { pingpong, echo, hold };

struct options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string path = "/";
  load_mode mode = load_mode::pingpong;
  uint32_t connections = 100;
  uint32_t hold = 0;
  double duration_s = 5;
  double warmup_s = 1;
  uint32_t size_bytes = 32;
  bool binary = false;
  uint32_t window = 16;
  uint32_t threads = 1;
  std::vector<int> cpus;
  uint32_t ramp_inflight = 256;
  uint32_t batch = 1;
  uint32_t batch_wait_us = 50;
  bool verify = true;
  int server_pid = 0;
  std::string json_path;
};

enum class phase : uint32_t { ramp, run, stop };

// Counters a worker publishes once per loop pass; the main thread reads them.
struct alignas(64) worker_counters {
  std::atomic<uint64_t> messages{0};       // complete echoes received
  std::atomic<uint64_t> payload_bytes{0};  // of those echoes
  std::atomic<uint32_t> open{0};           // connections open (handshake done, not closed)
  std::atomic<bool> ramp_done{false};      // every connection is open or failed
};

struct error_counts {
  uint64_t connect_failed = 0;
  uint64_t handshake_failed = 0;
  uint64_t unexpected_close = 0;  // close frame or EOF from the server
  uint64_t socket_errors = 0;     // recv/send errors (reset, ...)
  uint64_t protocol_errors = 0;   // frames the client parser refused
  uint64_t mismatches = 0;        // echo with the wrong length, type or bytes
  uint64_t pings = 0;             // pings received (not answered; an echo server sends none)
  std::string first_detail;       // the first error, spelled out

  uint64_t total() const {
    return connect_failed + handshake_failed + unexpected_close + socket_errors + protocol_errors +
           mismatches;
  }
  void note(const std::string& detail) {
    if (first_detail.empty()) first_detail = detail;
  }
  void add(const error_counts& other) {
    connect_failed += other.connect_failed;
    handshake_failed += other.handshake_failed;
    unexpected_close += other.unexpected_close;
    socket_errors += other.socket_errors;
    protocol_errors += other.protocol_errors;
    mismatches += other.mismatches;
    pings += other.pings;
    if (first_detail.empty()) first_detail = other.first_detail;
  }
};

struct shared_state {
  std::atomic<phase> current{phase::ramp};
  std::atomic<bool> measuring{false};  // workers record latency only while this is set
};

// The frames every connection of a worker sends: `window` copies of one pre-masked frame, so
// any run of k frames is one contiguous send. Built once; read-only afterwards.
struct frame_templates {
  std::vector<uint8_t> frames;   // masked, ready to send
  std::vector<uint8_t> payload;  // the unmasked payload, to check echoes against
  size_t frame_bytes = 0;
};

frame_templates build_templates(const options& opt, uint32_t copies) {
  frame_templates t;
  t.payload.resize(opt.size_bytes);
  for (size_t i = 0; i < t.payload.size(); ++i) {
    // Printable ASCII for text (valid UTF-8), every byte value for binary.
    t.payload[i] =
        opt.binary ? static_cast<uint8_t>(i * 31 + 7) : static_cast<uint8_t>('a' + i % 26);
  }
  uint8_t key[4];
  if (getrandom(key, sizeof key, 0) != sizeof key) std::memcpy(key, "wsed", 4);
  uint8_t header[ws_header_bytes_max];
  ws_opcode opcode = opt.binary ? ws_opcode::binary : ws_opcode::text;
  size_t header_bytes = encode_frame_header(header, opcode, opt.size_bytes, true, key);
  std::vector<uint8_t> one(header, header + header_bytes);
  one.insert(one.end(), t.payload.begin(), t.payload.end());
  mask_bytes(one.data() + header_bytes, opt.size_bytes, key, 0);
  t.frame_bytes = one.size();
  t.frames.reserve(one.size() * copies);
  for (uint32_t i = 0; i < copies; ++i) t.frames.insert(t.frames.end(), one.begin(), one.end());
  return t;
}

std::string base64(const uint8_t* data, size_t length) {
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < length; i += 3) {
    uint32_t n = static_cast<uint32_t>(data[i]) << 16;
    if (i + 1 < length) n |= static_cast<uint32_t>(data[i + 1]) << 8;
    if (i + 2 < length) n |= data[i + 2];
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += i + 1 < length ? alphabet[(n >> 6) & 63] : '=';
    out += i + 2 < length ? alphabet[n & 63] : '=';
  }
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// Lives only while a connection is handshaking.
struct handshake {
  std::string request;
  size_t request_sent = 0;
  std::string response;
  std::array<char, 28> expected_accept{};
};

enum class conn_state : uint8_t { idle, connecting, handshaking, open, closed };

struct conn {
  conn_state state = conn_state::idle;
  bool send_busy = false;   // a send SQE is in flight (true from queue to its CQE)
  bool recv_armed = false;  // a multishot recv is armed (true until a CQE without F_MORE)
  uint8_t carry_bytes = 0;  // unparsed tail kept from the previous receive
  uint32_t inflight = 0;    // messages sent (or queued) whose echo has not completed
  uint32_t send_left = 0;   // bytes of the current send not yet accepted by the kernel
  const uint8_t* send_ptr = nullptr;
  uint64_t send_time_ns = 0;   // pingpong: when the in-flight message was submitted
  uint64_t message_bytes = 0;  // payload bytes of the echo being received
  ws_frame_parser parser{ws_role::client};
  std::unique_ptr<handshake> hs;
  std::array<uint8_t, ws_carry_bytes_max> carry{};
};

enum class op : uint8_t { connect = 1, hs_send, recv, send };

constexpr uint64_t pack(op o, uint32_t index) {
  return (uint64_t{static_cast<uint8_t>(o)} << 56) | index;
}
constexpr op op_of(uint64_t user_data) {
  return static_cast<op>(user_data >> 56);
}
constexpr uint32_t index_of(uint64_t user_data) {
  return static_cast<uint32_t>(user_data);
}

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

class worker {
 public:
  worker(const options& opt, shared_state& shared, uint32_t connections, int cpu)
      : opt_(opt), shared_(shared), conns_(connections), cpu_(cpu) {}

  worker_counters counters;
  latency_histogram latency;
  error_counts errors;
  std::string fatal;  // setup failure (no ring, no sockets): the worker did nothing

  void run() {
    if (cpu_ >= 0) pin(cpu_);
    if (!setup()) {
      counters.ramp_done.store(true, std::memory_order_release);
      return;
    }
    loop();
    teardown();
  }

 private:
  static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
  }

  bool setup() {
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    params.cq_entries = cq_entries;
    int rc = io_uring_queue_init_params(ring_entries, &ring_, &params);
    if (rc < 0) {
      params.flags = IORING_SETUP_CQSIZE;  // older kernels
      rc = io_uring_queue_init_params(ring_entries, &ring_, &params);
    }
    if (rc < 0) return fail("io_uring_queue_init", -rc);
    ring_ok_ = true;

    // Provided buffers: recv takes one only when data arrives, so idle sockets hold none.
    size_t ring_bytes = recv_buffer_count * sizeof(io_uring_buf);
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, ring_bytes) != 0) return fail("posix_memalign", ENOMEM);
    buf_ring_ = static_cast<io_uring_buf_ring*>(mem);
    buffers_.resize(size_t{recv_buffer_count} * recv_buffer_bytes);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(buf_ring_);
    reg.ring_entries = recv_buffer_count;
    reg.bgid = recv_buffer_group;
    rc = io_uring_register_buf_ring(&ring_, &reg, 0);
    if (rc < 0) return fail("io_uring_register_buf_ring", -rc);
    io_uring_buf_ring_init(buf_ring_);
    for (unsigned i = 0; i < recv_buffer_count; ++i) recycle(static_cast<uint16_t>(i), i);
    io_uring_buf_ring_advance(buf_ring_, recv_buffer_count);

    // Registered (fixed) files: no fd lookup per operation, and no fd-table slot per socket.
    std::vector<int> fds(conns_.size(), -1);
    for (auto& fd : fds) {
      fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        for (int f : fds)
          if (f >= 0) close(f);
        return fail("socket", errno);
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    rc = fds.empty()
             ? 0
             : io_uring_register_files(&ring_, fds.data(), static_cast<unsigned>(fds.size()));
    for (int f : fds) close(f);  // the fixed table keeps the sockets alive
    if (rc < 0) return fail("io_uring_register_files", -rc);

    address_.sin_family = AF_INET;
    address_.sin_port = htons(opt_.port);
    if (inet_pton(AF_INET, opt_.host.c_str(), &address_.sin_addr) != 1) {
      return fail("inet_pton " + opt_.host, EINVAL);
    }
    templates_ = build_templates(opt_, std::max<uint32_t>(1, opt_.window));
    host_header_ = opt_.host + ":" + std::to_string(opt_.port);
    return true;
  }

  bool fail(const std::string& what, int err) {
    fatal = what + ": " + std::strerror(err);
    return false;
  }

  void teardown() {
    if (ring_ok_) io_uring_queue_exit(&ring_);  // cancels armed recvs, closes fixed files
    free(buf_ring_);
  }

  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    if (s == nullptr) {
      io_uring_submit(&ring_);  // SQ full: flush what is queued, then there is room
      s = io_uring_get_sqe(&ring_);
    }
    return s;
  }

  void recycle(uint16_t bid, unsigned offset) {
    io_uring_buf_ring_add(buf_ring_, buffers_.data() + size_t{bid} * recv_buffer_bytes,
                          recv_buffer_bytes, bid, io_uring_buf_ring_mask(recv_buffer_count),
                          static_cast<int>(offset));
  }

  void loop() {
    const uint64_t ramp_deadline = now_ns() + static_cast<uint64_t>(ramp_timeout_s * 1e9);
    for (;;) {
      phase p = shared_.current.load(std::memory_order_acquire);
      if (p == phase::stop) break;
      if (p == phase::run && !started_) {
        started_ = true;
        if (opt_.mode != load_mode::hold) {
          for (uint32_t i = 0; i < conns_.size(); ++i) maybe_send(i);
        }
      }
      if (!counters.ramp_done.load(std::memory_order_relaxed)) ramp(ramp_deadline);
      stamp_sends();
      wait_and_dispatch();
      publish();
    }
  }

  // Keeps up to ramp_inflight connections connecting or handshaking; marks ramp_done when every
  // connection is open or failed (or the ramp deadline passed: the stragglers count as failed).
  void ramp(uint64_t deadline) {
    while (next_connect_ < conns_.size() && ramping_ < opt_.ramp_inflight) {
      uint32_t i = next_connect_++;
      conns_[i].state = conn_state::connecting;
      io_uring_sqe* s = sqe();
      io_uring_prep_connect(s, static_cast<int>(i), reinterpret_cast<sockaddr*>(&address_),
                            sizeof address_);
      s->flags |= IOSQE_FIXED_FILE;
      io_uring_sqe_set_data64(s, pack(op::connect, i));
      ++ramping_;
    }
    bool all_started = next_connect_ == conns_.size();
    if ((all_started && ramping_ == 0) || now_ns() > deadline) {
      if (ramping_ != 0) {
        errors.handshake_failed += ramping_;
        errors.note(std::to_string(ramping_) +
                    " connections still handshaking at the ramp timeout");
        for (auto& c : conns_) {
          if (c.state == conn_state::connecting || c.state == conn_state::handshaking) {
            c.state = conn_state::closed;
            c.hs.reset();
          }
        }
        ramping_ = 0;
      }
      counters.ramp_done.store(true, std::memory_order_release);
    }
  }

  // Pingpong latency starts when the message is handed to the kernel: just before the enter.
  void stamp_sends() {
    if (to_stamp_.empty()) return;
    uint64_t t = now_ns();
    for (uint32_t i : to_stamp_) conns_[i].send_time_ns = t;
    to_stamp_.clear();
  }

  void wait_and_dispatch() {
    // With --batch N the kernel wakes this thread only once N completions are pending (or the
    // short timeout passed): fewer wake-ups and larger receives per message. 1 = every event.
    __kernel_timespec ts{};
    unsigned wait_nr = 1;
    ts.tv_nsec = std::chrono::nanoseconds(wait_timeout).count();
    if (opt_.batch > 1 && started_ && open_ > 1) {
      wait_nr = std::min(opt_.batch, open_);
      ts.tv_nsec = static_cast<long>(opt_.batch_wait_us) * 1000;
    }
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, wait_nr, &ts, nullptr);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY) {
      errors.socket_errors++;
      errors.note(std::string("io_uring_submit_and_wait_timeout: ") + std::strerror(-rc));
    }
    now_ = now_ns();
    measuring_ = shared_.measuring.load(std::memory_order_relaxed);
    unsigned head = 0, seen = 0;
    recycled_ = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      dispatch(cqe);
    }
    if (recycled_ != 0) io_uring_buf_ring_advance(buf_ring_, static_cast<int>(recycled_));
    io_uring_cq_advance(&ring_, seen);
  }

  // The one switch over completion kinds.
  void dispatch(const io_uring_cqe* cqe) {
    uint32_t i = index_of(cqe->user_data);
    switch (op_of(cqe->user_data)) {
      case op::connect:
        return on_connect(i, cqe->res);
      case op::hs_send:
        return on_hs_send(i, cqe->res);
      case op::recv:
        return on_recv(i, cqe);
      case op::send:
        return on_send(i, cqe->res);
    }
  }

  void publish() {
    counters.messages.store(messages_, std::memory_order_relaxed);
    counters.payload_bytes.store(payload_bytes_, std::memory_order_relaxed);
    counters.open.store(open_, std::memory_order_relaxed);
  }

  void on_connect(uint32_t i, int res) {
    conn& c = conns_[i];
    if (c.state != conn_state::connecting) return;  // given up at the ramp timeout
    if (res < 0) {
      errors.connect_failed++;
      errors.note(std::string("connect: ") + std::strerror(-res));
      c.state = conn_state::closed;
      --ramping_;
      return;
    }
    c.state = conn_state::handshaking;
    c.hs = std::make_unique<handshake>();
    uint8_t key_bytes[16];
    if (getrandom(key_bytes, sizeof key_bytes, 0) != sizeof key_bytes) {
      for (size_t k = 0; k < sizeof key_bytes; ++k) key_bytes[k] = static_cast<uint8_t>(rand());
    }
    std::string key = base64(key_bytes, sizeof key_bytes);
    c.hs->expected_accept = websocket_accept(key);
    c.hs->request = "GET " + opt_.path + " HTTP/1.1\r\nHost: " + host_header_ +
                    "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
                    "\r\nSec-WebSocket-Version: 13\r\n\r\n";
    arm_recv(i);
    send_handshake(i);
  }

  void send_handshake(uint32_t i) {
    handshake& hs = *conns_[i].hs;
    io_uring_sqe* s = sqe();
    io_uring_prep_send(s, static_cast<int>(i), hs.request.data() + hs.request_sent,
                       hs.request.size() - hs.request_sent, MSG_NOSIGNAL);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, pack(op::hs_send, i));
  }

  void on_hs_send(uint32_t i, int res) {
    conn& c = conns_[i];
    if (c.state != conn_state::handshaking || !c.hs) return;
    if (res < 0) return close_with(i, errors.socket_errors, "handshake send", -res);
    c.hs->request_sent += static_cast<size_t>(res);
    if (c.hs->request_sent < c.hs->request.size()) send_handshake(i);
  }

  void arm_recv(uint32_t i) {
    io_uring_sqe* s = sqe();
    io_uring_prep_recv_multishot(s, static_cast<int>(i), nullptr, 0, 0);
    s->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    s->buf_group = recv_buffer_group;
    io_uring_sqe_set_data64(s, pack(op::recv, i));
    conns_[i].recv_armed = true;
  }

  void on_recv(uint32_t i, const io_uring_cqe* cqe) {
    conn& c = conns_[i];
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more) c.recv_armed = false;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
      uint16_t bid = static_cast<uint16_t>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
      if (cqe->res > 0) {
        uint8_t* data = buffers_.data() + size_t{bid} * recv_buffer_bytes;
        on_bytes(i, data, static_cast<size_t>(cqe->res));
      }
      recycle(bid, recycled_++);
    }
    if (c.state != conn_state::handshaking && c.state != conn_state::open) return;
    if (cqe->res == 0) {
      if (c.state == conn_state::handshaking) {
        return close_with(i, errors.handshake_failed, "EOF during the handshake", 0);
      }
      return close_with(i, errors.unexpected_close, "EOF from the server", 0);
    }
    if (cqe->res < 0 && cqe->res != -ENOBUFS) {
      return close_with(i, errors.socket_errors, "recv", -cqe->res);
    }
    if (!c.recv_armed) arm_recv(i);  // -ENOBUFS or the kernel ended the multishot: re-arm
  }

  void close_with(uint32_t i, uint64_t& counter, const std::string& what, int err) {
    conn& c = conns_[i];
    if (c.state == conn_state::closed) return;
    if (c.state == conn_state::handshaking || c.state == conn_state::connecting) --ramping_;
    if (c.state == conn_state::open) --open_;
    c.state = conn_state::closed;
    c.hs.reset();
    counter++;
    errors.note(err != 0 ? what + ": " + std::strerror(err) : what);
    // The socket stays in the fixed table (and its recv armed) until teardown; nothing more
    // is sent on it.
  }

  void on_bytes(uint32_t i, uint8_t* data, size_t length) {
    conn& c = conns_[i];
    if (c.state == conn_state::handshaking) return on_handshake_bytes(i, data, length);
    if (c.state == conn_state::open) on_frame_bytes(i, data, length);
  }

  void on_handshake_bytes(uint32_t i, uint8_t* data, size_t length) {
    conn& c = conns_[i];
    handshake& hs = *c.hs;
    size_t before = hs.response.size();
    hs.response.append(reinterpret_cast<const char*>(data), length);
    size_t end = hs.response.find("\r\n\r\n", before >= 3 ? before - 3 : 0);
    if (end == std::string::npos) {
      if (hs.response.size() > 16384)
        close_with(i, errors.handshake_failed, "response too long", 0);
      return;
    }
    std::string_view head(hs.response.data(), end);
    std::string_view status = head.substr(0, head.find("\r\n"));
    if (status.substr(0, 12) != "HTTP/1.1 101") {
      return close_with(i, errors.handshake_failed, "handshake: " + std::string(status), 0);
    }
    bool accept_ok = false;
    size_t pos = status.size() + 2;
    while (pos < head.size()) {
      size_t eol = head.find("\r\n", pos);
      std::string_view line = head.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
      size_t colon = line.find(':');
      if (colon != std::string_view::npos &&
          iequals(line.substr(0, colon), "sec-websocket-accept")) {
        std::string_view value = trim(line.substr(colon + 1));
        accept_ok = value == std::string_view(hs.expected_accept.data(), hs.expected_accept.size());
      }
      if (eol == std::string_view::npos) break;
      pos = eol + 2;
    }
    if (!accept_ok) {
      return close_with(i, errors.handshake_failed, "handshake: wrong Sec-WebSocket-Accept", 0);
    }
    // Frame bytes that arrived with the response (none from an echo server) are kept.
    size_t consumed_in_data = end + 4 - before;
    c.hs.reset();
    c.state = conn_state::open;
    --ramping_;
    ++open_;
    if (consumed_in_data < length)
      on_frame_bytes(i, data + consumed_in_data, length - consumed_in_data);
  }

  // Frames from the server, with the parser's carry protocol: an incomplete header or control
  // frame is kept (at most ws_carry_bytes_max bytes) and parsed again with the next bytes.
  void on_frame_bytes(uint32_t i, uint8_t* data, size_t length) {
    conn& c = conns_[i];
    if (c.carry_bytes != 0) {
      uint8_t scratch[2 * ws_carry_bytes_max];
      size_t take = std::min(length, sizeof scratch - c.carry_bytes);
      std::memcpy(scratch, c.carry.data(), c.carry_bytes);
      std::memcpy(scratch + c.carry_bytes, data, take);
      size_t total = c.carry_bytes + take;
      size_t used = parse(i, scratch, total);
      if (c.state != conn_state::open) return;
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
    if (c.state == conn_state::open && used < length) keep_carry(i, data + used, length - used);
  }

  void keep_carry(uint32_t i, const uint8_t* tail, size_t bytes) {
    conn& c = conns_[i];
    if (bytes > c.carry.size()) {
      return close_with(i, errors.protocol_errors, "parser left more than a header unparsed", 0);
    }
    std::memcpy(c.carry.data(), tail, bytes);
    c.carry_bytes = static_cast<uint8_t>(bytes);
  }

  // Returns the bytes the parser consumed before it needed more.
  size_t parse(uint32_t i, uint8_t* data, size_t length) {
    conn& c = conns_[i];
    size_t offset = 0;
    while (offset < length) {
      ws_event ev = c.parser.next(std::span<uint8_t>(data + offset, length - offset), limits_);
      offset += ev.consumed;
      switch (ev.kind) {
        case ws_event_kind::need_more:
          return offset;
        case ws_event_kind::data:
          on_data(i, ev);
          break;
        case ws_event_kind::ping:
          errors.pings++;
          break;
        case ws_event_kind::pong:
          break;
        case ws_event_kind::close:
          close_with(i, errors.unexpected_close, "close frame " + std::to_string(ev.close_code), 0);
          return offset;
        case ws_event_kind::error:
          close_with(i, errors.protocol_errors, "protocol error " + std::to_string(ev.close_code),
                     0);
          return offset;
      }
      if (c.state != conn_state::open) return offset;
    }
    return offset;
  }

  void on_data(uint32_t i, const ws_event& ev) {
    conn& c = conns_[i];
    if (ev.message_begin) c.message_bytes = 0;
    size_t n = ev.payload.size();
    if (opt_.verify && n != 0) {
      bool fits = c.message_bytes + n <= templates_.payload.size();
      if (!fits ||
          std::memcmp(ev.payload.data(), templates_.payload.data() + c.message_bytes, n) != 0) {
        return close_with(i, errors.mismatches, "echo payload differs from what was sent", 0);
      }
    }
    c.message_bytes += n;
    if (!ev.message_end) return;
    ws_opcode expected = opt_.binary ? ws_opcode::binary : ws_opcode::text;
    if (c.message_bytes != opt_.size_bytes || ev.message_opcode != expected) {
      return close_with(i, errors.mismatches,
                        "echo of " + std::to_string(c.message_bytes) + " bytes, opcode " +
                            std::to_string(static_cast<int>(ev.message_opcode)),
                        0);
    }
    if (c.inflight == 0) return close_with(i, errors.mismatches, "echo nobody asked for", 0);
    --c.inflight;
    ++messages_;
    payload_bytes_ += opt_.size_bytes;
    if (opt_.mode == load_mode::pingpong) {
      if (measuring_) latency.record(now_ - c.send_time_ns);
      maybe_send(i);
    } else if (!c.send_busy && c.inflight <= opt_.window / 2) {
      maybe_send(i);  // refill in batches: half a window or more per send
    }
  }

  void maybe_send(uint32_t i) {
    conn& c = conns_[i];
    if (c.state != conn_state::open || c.send_busy) return;
    if (shared_.current.load(std::memory_order_relaxed) != phase::run) return;
    uint32_t target = opt_.mode == load_mode::pingpong ? 1 : opt_.window;
    if (c.inflight >= target) return;
    uint32_t frames = target - c.inflight;
    c.inflight += frames;
    c.send_ptr = templates_.frames.data();
    c.send_left = static_cast<uint32_t>(frames * templates_.frame_bytes);
    if (opt_.mode == load_mode::pingpong) to_stamp_.push_back(i);
    queue_send(i);
  }

  void queue_send(uint32_t i) {
    conn& c = conns_[i];
    io_uring_sqe* s = sqe();
    io_uring_prep_send(s, static_cast<int>(i), c.send_ptr, c.send_left, MSG_NOSIGNAL);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, pack(op::send, i));
    c.send_busy = true;
  }

  void on_send(uint32_t i, int res) {
    conn& c = conns_[i];
    c.send_busy = false;
    if (c.state != conn_state::open) return;
    if (res < 0) return close_with(i, errors.socket_errors, "send", -res);
    if (static_cast<uint32_t>(res) < c.send_left) {  // short send: the rest, same order
      c.send_ptr += res;
      c.send_left -= static_cast<uint32_t>(res);
      return queue_send(i);
    }
    c.send_left = 0;
    if (opt_.mode == load_mode::echo && c.inflight <= opt_.window / 2) maybe_send(i);
  }

  const options& opt_;
  shared_state& shared_;
  std::vector<conn> conns_;
  int cpu_;
  io_uring ring_{};
  bool ring_ok_ = false;
  io_uring_buf_ring* buf_ring_ = nullptr;
  std::vector<uint8_t> buffers_;
  unsigned recycled_ = 0;
  sockaddr_in address_{};
  std::string host_header_;
  frame_templates templates_;
  ws_limits limits_{};
  uint32_t next_connect_ = 0;
  uint32_t ramping_ = 0;
  uint32_t open_ = 0;
  uint64_t messages_ = 0;
  uint64_t payload_bytes_ = 0;
  uint64_t now_ = 0;
  bool measuring_ = false;
  bool started_ = false;  // the run phase began (messages flow)
  std::vector<uint32_t> to_stamp_;
};

std::vector<int> parse_cpu_list(const std::string& text) {
  std::vector<int> cpus;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t comma = text.find(',', pos);
    std::string item =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t dash = item.find('-');
    if (dash == std::string::npos) {
      cpus.push_back(std::stoi(item));
    } else {
      int first = std::stoi(item.substr(0, dash)), last = std::stoi(item.substr(dash + 1));
      for (int cpu = first; cpu <= last && cpus.size() < 1024; ++cpu) cpus.push_back(cpu);
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return cpus;
}

void sleep_s(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

struct snapshot {
  uint64_t t_ns = 0;
  uint64_t messages = 0;
  uint64_t payload_bytes = 0;
  cpu_seconds client{};
  cpu_seconds server{};
  std::vector<wsed::tools::cpu_core_seconds> cores;
};

snapshot take_snapshot(const std::vector<std::unique_ptr<worker>>& workers, int server_pid) {
  snapshot s;
  s.t_ns = now_ns();
  for (auto& w : workers) {
    s.messages += w->counters.messages.load(std::memory_order_relaxed);
    s.payload_bytes += w->counters.payload_bytes.load(std::memory_order_relaxed);
  }
  s.client = wsed::tools::own_cpu_seconds();
  if (server_pid > 0)
    s.server = wsed::tools::process_cpu_seconds(server_pid).value_or(cpu_seconds{});
  s.cores = wsed::tools::cores_seconds();
  return s;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    out += ch;
  }
  return out;
}

const char* mode_name(load_mode m) {
  return m == load_mode::pingpong ? "pingpong" : m == load_mode::echo ? "echo" : "hold";
}

int run(options opt) {
  uint32_t total = opt.mode == load_mode::hold ? opt.hold : opt.connections;
  uint32_t threads = std::max<uint32_t>(1, std::min(opt.threads, std::max<uint32_t>(1, total)));
  shared_state shared;
  std::vector<std::unique_ptr<worker>> workers;
  for (uint32_t t = 0; t < threads; ++t) {
    uint32_t share = total / threads + (t < total % threads ? 1 : 0);
    int cpu = opt.cpus.empty() ? -1 : opt.cpus[t % opt.cpus.size()];
    workers.push_back(std::make_unique<worker>(opt, shared, share, cpu));
  }
  std::optional<wsed::tools::process_memory> server_before;
  if (opt.server_pid > 0) server_before = wsed::tools::process_memory_kib(opt.server_pid);

  uint64_t ramp_start = now_ns();
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w] { w->run(); });
  // Ramp: bounded by the workers' own ramp deadline (plus a margin).
  for (int step = 0; step < static_cast<int>((ramp_timeout_s + 5) * 100); ++step) {
    bool done = std::all_of(workers.begin(), workers.end(), [](auto& w) {
      return w->counters.ramp_done.load(std::memory_order_acquire);
    });
    if (done) break;
    sleep_s(0.01);
  }
  double ramp_s = static_cast<double>(now_ns() - ramp_start) / 1e9;
  uint32_t open_after_ramp = 0;
  for (auto& w : workers) open_after_ramp += w->counters.open.load(std::memory_order_relaxed);

  shared.current.store(phase::run, std::memory_order_release);
  if (opt.mode != load_mode::hold) sleep_s(opt.warmup_s);
  std::optional<wsed::tools::process_memory> server_holding_start;
  if (opt.mode == load_mode::hold && opt.server_pid > 0) {
    sleep_s(std::min(1.0, opt.duration_s));  // let the server settle after the ramp
    server_holding_start = wsed::tools::process_memory_kib(opt.server_pid);
  }
  shared.measuring.store(true, std::memory_order_relaxed);
  snapshot before = take_snapshot(workers, opt.server_pid);
  sleep_s(opt.duration_s);
  snapshot after = take_snapshot(workers, opt.server_pid);
  shared.measuring.store(false, std::memory_order_relaxed);
  std::optional<wsed::tools::process_memory> server_after;
  if (opt.server_pid > 0) server_after = wsed::tools::process_memory_kib(opt.server_pid);
  uint32_t open_at_end = 0;
  for (auto& w : workers) open_at_end += w->counters.open.load(std::memory_order_relaxed);
  shared.current.store(phase::stop, std::memory_order_release);
  for (auto& t : running) t.join();

  error_counts errors;
  latency_histogram latency;
  std::string fatal;
  for (auto& w : workers) {
    errors.add(w->errors);
    latency.merge(w->latency);
    if (fatal.empty()) fatal = w->fatal;
  }
  if (!fatal.empty()) {
    std::fprintf(stderr, "echo-load: %s\n", fatal.c_str());
    return 1;
  }

  double seconds = static_cast<double>(after.t_ns - before.t_ns) / 1e9;
  uint64_t messages = after.messages - before.messages;
  double msg_s = static_cast<double>(messages) / seconds;
  double mb_s = static_cast<double>(after.payload_bytes - before.payload_bytes) / seconds / 1e6;
  double per_msg = messages > 0 ? 1e6 / static_cast<double>(messages) : 0;
  double client_user = after.client.user - before.client.user;
  double client_sys = after.client.sys - before.client.sys;
  double server_user = after.server.user - before.server.user;
  double server_sys = after.server.sys - before.server.sys;

  std::printf(
      "echo-load: mode %s, %u/%u connections open (ramp %.2f s), %u thread(s), %u B %s, %.2f s\n",
      mode_name(opt.mode), open_at_end, total, ramp_s, threads, opt.size_bytes,
      opt.binary ? "binary" : "text", seconds);
  if (opt.mode != load_mode::hold) {
    std::printf("  messages %" PRIu64 "  msg/s %.0f  MB/s %.2f (payload echoed)\n", messages, msg_s,
                mb_s);
  }
  if (opt.mode == load_mode::pingpong) {
    std::printf("  latency us p50 %.1f  p99 %.1f  p99.9 %.1f  (%" PRIu64 " samples)\n",
                static_cast<double>(latency.quantile(0.5)) / 1e3,
                static_cast<double>(latency.quantile(0.99)) / 1e3,
                static_cast<double>(latency.quantile(0.999)) / 1e3, latency.count());
  }
  std::printf("  client CPU user %.3f s  sys %.3f s  (%.2f us/msg, %.0f%% of a core)\n",
              client_user, client_sys, (client_user + client_sys) * per_msg,
              100 * (client_user + client_sys) / seconds);
  std::string cores_text, cores_json;
  for (size_t c = 0; c < after.cores.size() && c < before.cores.size(); ++c) {
    double busy = after.cores[c].busy - before.cores[c].busy;
    double softirq = after.cores[c].softirq - before.cores[c].softirq;
    char item[160];
    std::snprintf(item, sizeof item, "%scpu%zu %.0f%% (softirq %.0f%%, %.2f us/msg)", c ? ", " : "",
                  c, 100 * busy / seconds, 100 * softirq / seconds, busy * per_msg);
    cores_text += item;
    std::snprintf(
        item, sizeof item,
        "%s{\"cpu\": %zu, \"busy_s\": %.4f, \"softirq_s\": %.4f, \"busy_us_per_msg\": %.4f}",
        c ? ", " : "", c, busy, softirq, busy * per_msg);
    cores_json += item;
  }
  std::printf("  machine cores busy (all processes): %s\n", cores_text.c_str());
  if (opt.server_pid > 0) {
    if (opt.mode != load_mode::hold) {
      std::printf("  server CPU us/msg user %.2f  sys %.2f  total %.2f  (%.0f%% of a core)\n",
                  server_user * per_msg, server_sys * per_msg, (server_user + server_sys) * per_msg,
                  100 * (server_user + server_sys) / seconds);
    }
    if (server_after) {
      std::printf("  server VmHWM %" PRIu64 " KiB  VmRSS %" PRIu64 " KiB\n",
                  server_after->vm_hwm_kib, server_after->vm_rss_kib);
    }
    if (opt.mode == load_mode::hold && server_before && server_after && open_at_end > 0) {
      double per_conn = (static_cast<double>(server_after->vm_rss_kib) -
                         static_cast<double>(server_before->vm_rss_kib)) *
                        1024 / open_at_end;
      std::printf("  server RSS before %" PRIu64 " KiB, holding %" PRIu64
                  " KiB: %.0f bytes per idle connection\n",
                  server_before->vm_rss_kib, server_after->vm_rss_kib, per_conn);
    }
  }
  std::printf(
      "  errors %" PRIu64 " (connect %" PRIu64 ", handshake %" PRIu64 ", unexpected close %" PRIu64
      ", socket %" PRIu64 ", protocol %" PRIu64 ", mismatch %" PRIu64 ")%s%s\n",
      errors.total(), errors.connect_failed, errors.handshake_failed, errors.unexpected_close,
      errors.socket_errors, errors.protocol_errors, errors.mismatches,
      errors.first_detail.empty() ? "" : "; first: ", errors.first_detail.c_str());
  if (errors.pings != 0)
    std::printf("  pings received (not answered): %" PRIu64 "\n", errors.pings);

  if (!opt.json_path.empty()) {
    FILE* f = std::fopen(opt.json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "echo-load: cannot write %s: %s\n", opt.json_path.c_str(),
                   std::strerror(errno));
      return 1;
    }
    std::fprintf(f,
                 "{\n  \"mode\": \"%s\", \"connections\": %u, \"open_after_ramp\": %u, "
                 "\"open_at_end\": %u,\n",
                 mode_name(opt.mode), total, open_after_ramp, open_at_end);
    std::fprintf(f, "  \"threads\": %u, \"size_bytes\": %u, \"binary\": %s, \"window\": %u,\n",
                 threads, opt.size_bytes, opt.binary ? "true" : "false", opt.window);
    std::fprintf(f,
                 "  \"ramp_s\": %.3f, \"seconds\": %.3f, \"messages\": %" PRIu64
                 ", \"msg_per_s\": %.1f, \"mb_per_s\": %.3f,\n",
                 ramp_s, seconds, messages, msg_s, mb_s);
    std::fprintf(
        f,
        "  \"latency_us\": {\"p50\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"samples\": %" PRIu64
        "},\n",
        static_cast<double>(latency.quantile(0.5)) / 1e3,
        static_cast<double>(latency.quantile(0.99)) / 1e3,
        static_cast<double>(latency.quantile(0.999)) / 1e3, latency.count());
    std::fprintf(f,
                 "  \"cores\": [%s],\n  \"client_cpu\": {\"user_s\": %.4f, \"sys_s\": %.4f, "
                 "\"us_per_msg\": %.4f},\n",
                 cores_json.c_str(), client_user, client_sys, (client_user + client_sys) * per_msg);
    std::fprintf(
        f,
        "  \"server\": {\"pid\": %d, \"user_s\": %.4f, \"sys_s\": %.4f, \"user_us_per_msg\": %.4f, "
        "\"sys_us_per_msg\": %.4f, \"total_us_per_msg\": %.4f, \"vm_hwm_kib\": %" PRIu64
        ", \"vm_rss_kib\": %" PRIu64 ", \"rss_before_kib\": %" PRIu64
        ", \"rss_holding_start_kib\": %" PRIu64 "},\n",
        opt.server_pid, server_user, server_sys, server_user * per_msg, server_sys * per_msg,
        (server_user + server_sys) * per_msg, server_after ? server_after->vm_hwm_kib : 0,
        server_after ? server_after->vm_rss_kib : 0, server_before ? server_before->vm_rss_kib : 0,
        server_holding_start ? server_holding_start->vm_rss_kib : 0);
    std::fprintf(f,
                 "  \"errors\": {\"total\": %" PRIu64 ", \"connect\": %" PRIu64
                 ", \"handshake\": %" PRIu64 ", \"unexpected_close\": %" PRIu64
                 ", \"socket\": %" PRIu64 ", \"protocol\": %" PRIu64 ", \"mismatch\": %" PRIu64
                 ", \"pings\": %" PRIu64 ", \"first\": \"%s\"}\n}\n",
                 errors.total(), errors.connect_failed, errors.handshake_failed,
                 errors.unexpected_close, errors.socket_errors, errors.protocol_errors,
                 errors.mismatches, errors.pings, json_escape(errors.first_detail).c_str());
    std::fclose(f);
  }
  return errors.total() == 0 ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  options opt;
  std::string mode = "pingpong";
  std::string cpus;
  CLI::App app{"echo-load: io_uring WebSocket echo load client (loopback benchmarks)"};
  app.add_option("--host", opt.host, "server IPv4 address")->capture_default_str();
  app.add_option("--port", opt.port, "server port")->required();
  app.add_option("--path", opt.path, "request target of the upgrade")->capture_default_str();
  app.add_option("--mode", mode,
                 "pingpong (one message in flight per connection) or echo (pipelined)")
      ->check(CLI::IsMember({"pingpong", "echo"}))
      ->capture_default_str();
  app.add_option("--connections", opt.connections, "connections")
      ->check(CLI::Range(1u, 1'000'000u))
      ->capture_default_str();
  app.add_option("--hold", opt.hold,
                 "open N connections and hold them idle for --duration (no messages)")
      ->check(CLI::Range(1u, 1'000'000u));
  app.add_option("--duration", opt.duration_s, "measuring window, seconds (max 120)")
      ->check(CLI::Range(0.1, duration_s_max))
      ->capture_default_str();
  app.add_option("--warmup", opt.warmup_s, "seconds of load before the window")
      ->check(CLI::Range(0.0, 60.0))
      ->capture_default_str();
  app.add_option("--size", opt.size_bytes, "payload bytes per message")
      ->check(CLI::Range(0u, 1u << 20))
      ->capture_default_str();
  app.add_flag("--binary", opt.binary, "binary messages (default text)");
  app.add_option("--window", opt.window, "echo mode: messages in flight per connection")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--threads", opt.threads, "worker threads (one io_uring each)")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  app.add_option("--cpus", cpus, "pin worker threads to these CPUs, e.g. 1 or 0-3 or 1,3");
  app.add_option("--ramp-inflight", opt.ramp_inflight,
                 "connections connecting/handshaking at once, per thread")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--batch", opt.batch,
                 "wake for at least N completions per loop pass (or --batch-wait-us); 1 = each")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--batch-wait-us", opt.batch_wait_us, "longest wait for a --batch, microseconds")
      ->check(CLI::Range(1u, 10000u))
      ->capture_default_str();
  app.add_flag("!--no-verify", opt.verify,
               "do not compare echoed payload bytes (lengths are always checked)");
  app.add_option("--server-pid", opt.server_pid,
                 "read this process's CPU time and memory from /proc");
  app.add_option("--json", opt.json_path, "also write the results as JSON to this file");
  try {
    app.parse(argc, argv);
    if (!cpus.empty()) opt.cpus = parse_cpu_list(cpus);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo-load: bad --cpus: %s\n", e.what());
    return 2;
  }
  opt.mode = opt.hold != 0    ? load_mode::hold
             : mode == "echo" ? load_mode::echo
                              : load_mode::pingpong;
  if (opt.mode == load_mode::hold) opt.window = 1;
  signal(SIGPIPE, SIG_IGN);
  return run(opt);
}
