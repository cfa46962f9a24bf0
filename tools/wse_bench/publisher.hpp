// tools/wse_bench/publisher.hpp: the fanout-broadcast publisher of wse-bench, on a thread of its
// own: fanout_tick publications with a dense seq from 0, over the HTTP API (POST /api/publish,
// keep-alive, pipelined, JSON array bodies of --publish-batch items, a bounded number of requests
// in flight), over one WSE connection allowed to publish (a publish frame per tick), or straight
// into Redis (PUBLISH <prefix><topic> <tick>, --publish-batch commands per pipelined batch, a
// bounded number of batches in flight; the answers read with hiredis's reply reader). Either at
// --publish-rate publications/s or, at 0, as fast as the server takes them. Also the one-shot
// GET /metrics the scenario reads slow-consumer counters with, and the PUBSUB query that tells
// when every instance has subscribed in Redis.
//
// Owns: its socket and buffers; publishes its counters as atomics the main thread reads. Thread:
// the publisher thread (started and joined by run_tier). Must never block without a timeout
// (every wait is a poll of at most a few ms, the stop flag is checked each pass), never send
// past its in-flight bound, and never publish after stop.
// Header-only (included by runner.cpp only); links hiredis (the reply reader).
#pragma once

#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/http.hpp"
#include "proto/ws.hpp"
#include "tools/bench/fanout.hpp"
#include "tools/bench/frames.hpp"
#include "tools/bench/jwt.hpp"

namespace wsed::bench {

enum class publisher_kind : uint8_t { api, wse, server, redis };

struct publisher_config {
  publisher_kind kind = publisher_kind::api;
  sockaddr_in api{};        // api: the HTTP API's address; wse: the WebSocket server's; redis:
                            // the Redis server's
  std::string host_header;  // Host: of the requests / the upgrade
  std::string api_key;      // api: the bearer key
  std::string path = "/wse";
  std::string token;  // wse: a token whose wse_topics has "publish" matching the topic
  std::string topic = "bench_topic";
  bool broadcast = false;     // api: {"broadcast":true,...} items instead of the topic
  uint32_t batch = 100;       // api: items per request; wse: frames per send at most
  uint32_t inflight_max = 8;  // api: requests in flight (pipelined)
  double rate = 0;            // publications per second; 0: as fast as the server takes them
  // End-to-end flow control: at most `window` publications ahead of what the average subscriber
  // has received (0: off). Without it a publisher outruns the subscribers' reading and the server
  // (rightly) closes or skips them as slow consumers; with it, "as fast as the server takes
  // them" is as fast as it delivers them.
  uint64_t window = 0;
  std::function<uint64_t()> delivered;  // deliveries received by the bench's subscribers so far
  uint64_t subscribers = 1;
  std::string channel;            // redis: <prefix><topic> (or <prefix>@broadcast)
  uint64_t receivers_wanted = 0;  // redis: PUBLISH answers below this are counted (0: none)
};

inline uint64_t wall_us_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

inline uint64_t mono_ns_now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// A TCP connection to addr within timeout_ms, non-blocking, TCP_NODELAY; -1 (and why) otherwise.
inline int connect_with_timeout(const sockaddr_in& addr, int timeout_ms, std::string& why) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    why = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
      errno != EINPROGRESS) {
    why = std::string("connect: ") + std::strerror(errno);
    close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  int err = 0;
  socklen_t len = sizeof err;
  if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
      err != 0) {
    why = std::string("connect: ") + (err ? std::strerror(err) : "timed out");
    close(fd);
    return -1;
  }
  return fd;
}

// GET path on addr (Connection: close), the body of a 200 within timeout_ms; nullopt otherwise.
// After the answer it waits (at most 200 ms more) for the server's close, so the server has closed
// this connection before the caller opens the next: closing first, right after the answer, made
// wsed shut down the connection accepted next in about 1 of 12 tries (its FIN arrives before any
// request is sent; the requests are still read and executed, their answers never come).
inline std::optional<std::string> http_get(const sockaddr_in& addr, const std::string& host_header,
                                           const std::string& path, int timeout_ms = 2000) {
  std::string why;
  int fd = connect_with_timeout(addr, timeout_ms, why);
  if (fd < 0) return std::nullopt;
  std::string req =
      "GET " + path + " HTTP/1.1\r\nHost: " + host_header + "\r\nConnection: close\r\n\r\n";
  std::string in;
  size_t sent = 0;
  uint64_t deadline = mono_ns_now() + static_cast<uint64_t>(timeout_ms) * 1'000'000u;
  std::optional<std::string> out;
  bool answered = false;  // the whole answer is in: waiting for the close
  while (mono_ns_now() < deadline) {
    pollfd p{fd, static_cast<short>(POLLIN | (sent < req.size() ? POLLOUT : 0)), 0};
    if (poll(&p, 1, 10) <= 0) continue;
    if (sent < req.size() && (p.revents & POLLOUT)) {
      ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) in.append(buf, static_cast<size_t>(n));
      if (answered) {
        if (n == 0 || (n < 0 && errno != EAGAIN)) break;  // the server's close
        continue;
      }
      http_response r = parse_http_response(in, 1 << 20);
      if (r.state == http_parse::ok) {
        if (r.status == 200) out = std::string(r.body);
        if (!r.close || n == 0) break;
        answered = true;
        deadline = std::min(deadline, mono_ns_now() + 200'000'000u);
        continue;
      }
      if (r.state == http_parse::bad || n == 0 || (n < 0 && errno != EAGAIN)) break;
    }
  }
  close(fd);
  return out;
}

// RESP: one bulk string, and one command (an array of bulk strings), appended to out.
inline void append_bulk(std::string& out, std::string_view a) {
  out += '$';
  out += std::to_string(a.size());
  out += "\r\n";
  out += a;
  out += "\r\n";
}

inline void append_resp(std::string& out, std::initializer_list<std::string_view> args) {
  out += '*';
  out += std::to_string(args.size());
  out += "\r\n";
  for (std::string_view a : args) append_bulk(out, a);
}

// Owns one hiredis reply reader (RESP parser; no I/O).
class resp_reader {
 public:
  resp_reader() : r_(redisReaderCreate()) {}
  ~resp_reader() {
    if (r_ != nullptr) redisReaderFree(r_);
  }
  resp_reader(const resp_reader&) = delete;
  resp_reader& operator=(const resp_reader&) = delete;
  bool feed(const char* data, size_t n) { return r_ && redisReaderFeed(r_, data, n) == REDIS_OK; }
  // The next whole reply (nullptr: none yet, or `bad` set on a protocol error). Free with
  // freeReplyObject (reply_ptr does).
  struct reply_free {
    void operator()(redisReply* r) const { freeReplyObject(r); }
  };
  using reply_ptr = std::unique_ptr<redisReply, reply_free>;
  reply_ptr next() {
    void* out = nullptr;
    if (r_ == nullptr || redisReaderGetReply(r_, &out) != REDIS_OK) {
      bad = true;
      return nullptr;
    }
    return reply_ptr(static_cast<redisReply*>(out));
  }
  bool bad = false;

 private:
  redisReader* r_;
};

// Sends `request` (RESP commands) to Redis and returns the `replies` answers within timeout_ms;
// empty on any failure. For the few PUBSUB queries of a run, not the publishing.
inline std::vector<resp_reader::reply_ptr> redis_query(const sockaddr_in& addr,
                                                       const std::string& request, size_t replies,
                                                       int timeout_ms = 2000) {
  std::vector<resp_reader::reply_ptr> out;
  std::string why;
  int fd = connect_with_timeout(addr, timeout_ms, why);
  if (fd < 0) return out;
  resp_reader reader;
  size_t sent = 0;
  uint64_t deadline = mono_ns_now() + static_cast<uint64_t>(timeout_ms) * 1'000'000u;
  while (mono_ns_now() < deadline && out.size() < replies && !reader.bad) {
    pollfd p{fd, static_cast<short>(POLLIN | (sent < request.size() ? POLLOUT : 0)), 0};
    if (poll(&p, 1, 10) <= 0) continue;
    if (sent < request.size() && (p.revents & POLLOUT)) {
      ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
    }
    if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    if (n < 0 || !reader.feed(buf, static_cast<size_t>(n))) continue;
    while (out.size() < replies) {
      resp_reader::reply_ptr r = reader.next();
      if (!r) break;
      out.push_back(std::move(r));
    }
  }
  close(fd);
  if (out.size() < replies) out.clear();
  return out;
}

// Redis's subscribers of `channel` (PUBSUB NUMSUB) and its clients with a pattern subscription
// (CLIENT LIST's psub=; PUBSUB NUMPAT counts distinct patterns, one for two instances that both
// subscribe <prefix>*): a PUBLISH on the channel reaches at most one per subscribed instance.
// nullopt: Redis did not answer.
struct redis_subscribers {
  uint64_t channel = 0;
  uint64_t pattern_clients = 0;
};

inline std::optional<redis_subscribers> redis_receivers(const sockaddr_in& addr,
                                                        std::string_view channel) {
  std::string req;
  append_resp(req, {"PUBSUB", "NUMSUB", channel});
  append_resp(req, {"CLIENT", "LIST"});
  auto r = redis_query(addr, req, 2);
  if (r.size() != 2 || r[0]->type != REDIS_REPLY_ARRAY || r[0]->elements != 2 ||
      r[0]->element[1]->type != REDIS_REPLY_INTEGER ||
      (r[1]->type != REDIS_REPLY_STRING && r[1]->type != REDIS_REPLY_STATUS)) {
    return std::nullopt;
  }
  redis_subscribers out;
  out.channel = static_cast<uint64_t>(std::max<long long>(0, r[0]->element[1]->integer));
  std::string_view list(r[1]->str, r[1]->len);
  for (size_t at = list.find(" psub="); at != std::string_view::npos;
       at = list.find(" psub=", at + 1)) {
    size_t digits = at + 6;
    if (digits < list.size() && list[digits] >= '1' && list[digits] <= '9') ++out.pattern_clients;
  }
  return out;
}

class publisher {
 public:
  // api, redis: no more batches are queued while this many bytes are still unsent.
  static constexpr size_t out_unsent_max = 4u << 20;

  explicit publisher(publisher_config cfg) : cfg_(std::move(cfg)) {}
  publisher(const publisher&) = delete;
  publisher& operator=(const publisher&) = delete;
  ~publisher() {
    if (fd_ >= 0) close(fd_);
  }

  // Connects (and, wse, upgrades and waits for server_ready) within timeout_ms. False: `error`.
  bool open(int timeout_ms) {
    std::string why;
    fd_ = connect_with_timeout(cfg_.api, timeout_ms, why);
    if (fd_ < 0) return set_error(why);
    if (cfg_.kind == publisher_kind::wse) return upgrade(timeout_ms);
    return true;
  }

  // Publishes until stop is set, then waits up to drain_ms for the answers still owed.
  void run(const std::atomic<bool>& stop, int drain_ms) {
    start_ns_ = mono_ns_now();
    while (!stop.load(std::memory_order_acquire) && error.empty()) pass(true);
    uint64_t deadline = mono_ns_now() + static_cast<uint64_t>(drain_ms) * 1'000'000u;
    while (error.empty() && mono_ns_now() < deadline && !drained()) pass(false);
    if (!pending_.empty() && error.empty()) {  // api, redis
      set_error(std::to_string(pending_.size()) +
                (cfg_.kind == publisher_kind::api ? " publish requests" : " PUBLISH batches") +
                " unanswered after the drain");
    }
    if (cfg_.kind == publisher_kind::wse) {  // what was sent and not refused was taken
      accepted.store(sent.load() - busy.load() - refused.load(), std::memory_order_release);
      if (!first_refusal_.empty()) {
        set_error(std::to_string(refused.load()) +
                  " publications refused, the first: " + first_refusal_);
      }
    }
  }

  // Publications the server took (api: from the answers; wse: sent and not refused, final once
  // run() returned), items sent, 503/SERVER_BUSY refusals, other refusals, requests answered.
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> busy{0};
  std::atomic<uint64_t> refused{0};
  std::atomic<uint64_t> responses{0};
  // redis: PUBLISH answers that counted fewer receivers than receivers_wanted, and the fewest.
  std::atomic<uint64_t> short_receivers{0};
  std::atomic<uint64_t> min_receivers{UINT64_MAX};
  std::string error;  // set by the publisher thread; read after join

 private:
  bool set_error(const std::string& e) {
    if (error.empty()) error = e;
    return false;
  }

  bool drained() const {
    if (cfg_.kind == publisher_kind::api || cfg_.kind == publisher_kind::redis) {
      return pending_.empty();
    }
    return out_.size() == out_sent_;  // wse: everything handed to the kernel (errors come soon)
  }

  // Publications due now: rate x elapsed, or, at rate 0, as many as the bounds allow.
  uint64_t due() const {
    uint64_t n = UINT64_MAX;
    if (cfg_.rate > 0) {
      double elapsed = static_cast<double>(mono_ns_now() - start_ns_) / 1e9;
      uint64_t total = static_cast<uint64_t>(cfg_.rate * elapsed) + 1;
      n = total > next_seq_ ? total - next_seq_ : 0;
    }
    if (cfg_.window != 0 && cfg_.delivered) {
      uint64_t received = cfg_.delivered() / std::max<uint64_t>(1, cfg_.subscribers);
      uint64_t limit = received + cfg_.window;
      n = std::min(n, limit > next_seq_ ? limit - next_seq_ : 0);
    }
    return n;
  }

  // api and redis: pipelined batches of up to --publish-batch publications (one POST of a JSON
  // array, or that many PUBLISH commands), at most inflight_max unanswered and out_unsent_max
  // bytes unsent (pending_: the publications of each batch not answered yet).
  void queue_batches() {
    // due() reads every worker's counters and the clock: once per call, not per batch.
    uint64_t budget = due();
    while (pending_.size() < cfg_.inflight_max && out_.size() - out_sent_ < out_unsent_max) {
      uint64_t n = std::min<uint64_t>(budget, cfg_.batch);
      if (n == 0) return;
      budget -= n;
      uint64_t ts = wall_us_now();
      if (cfg_.kind == publisher_kind::api) {
        out_ += publish_request(
            cfg_.host_header, cfg_.api_key,
            publish_body(cfg_.topic, cfg_.broadcast, next_seq_, static_cast<uint32_t>(n), ts));
      } else {
        for (uint64_t k = 0; k < n; ++k) append_publish(next_seq_ + k, ts);
      }
      pending_.push_back(static_cast<uint32_t>(n));
      next_seq_ += n;
      sent.fetch_add(n, std::memory_order_relaxed);
    }
  }

  // redis: one PUBLISH <channel> <tick> in RESP; all but the tick is the same for every command
  // (publish_head_, built once).
  void append_publish(uint64_t seq, uint64_t ts) {
    if (publish_head_.empty()) {
      publish_head_ = "*3\r\n";
      append_bulk(publish_head_, "PUBLISH");
      append_bulk(publish_head_, cfg_.channel);
    }
    tick_.clear();
    append_fanout_tick(tick_, seq, ts);
    out_ += publish_head_;
    append_bulk(out_, tick_);
  }

  // redis: the answers of one read. The counters are added once per read, not per answer.
  void parse_redis_answers(const char* data, size_t n) {
    if (!reader_.feed(data, n)) {
      set_error("Redis reply reader refused the input");
      return;
    }
    uint64_t answers = 0, taken = 0, short_answers = 0;
    uint64_t fewest = min_receivers.load(std::memory_order_relaxed);
    for (;;) {
      resp_reader::reply_ptr r = reader_.next();
      if (reader_.bad) {
        set_error("unreadable Redis answer");
        break;
      }
      if (!r) break;
      if (pending_.empty()) {
        set_error("a Redis answer nobody asked for");
        break;
      }
      if (--pending_.front() == 0) pending_.pop_front();
      ++answers;
      if (r->type != REDIS_REPLY_INTEGER) {
        refused.fetch_add(1, std::memory_order_relaxed);
        set_error("PUBLISH answered " + (r->type == REDIS_REPLY_ERROR
                                             ? std::string(r->str, r->len)
                                             : "type " + std::to_string(r->type)));
        break;
      }
      ++taken;
      uint64_t got = static_cast<uint64_t>(std::max<long long>(0, r->integer));
      fewest = std::min(fewest, got);
      short_answers += got < cfg_.receivers_wanted;
    }
    responses.fetch_add(answers, std::memory_order_relaxed);
    accepted.fetch_add(taken, std::memory_order_relaxed);
    short_receivers.fetch_add(short_answers, std::memory_order_relaxed);
    min_receivers.store(fewest, std::memory_order_relaxed);
  }

  void queue_wse() {
    // Frames go out as fast as the socket takes them: at most one batch queued unsent.
    if (out_.size() - out_sent_ > 0) return;
    uint64_t n = std::min<uint64_t>(due(), cfg_.batch);
    if (n == 0) return;
    out_.clear();
    out_sent_ = 0;
    uint64_t ts = wall_us_now();
    for (uint64_t k = 0; k < n; ++k) {
      std::string m = wse_publish_json(cfg_.topic, next_seq_ + k, ts);
      masked_frame f = make_masked_frame(
          proto::ws_opcode::text,
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.data()), m.size()), key_);
      out_.append(reinterpret_cast<const char*>(f.bytes.data()), f.bytes.size());
    }
    next_seq_ += n;
    sent.fetch_add(n, std::memory_order_relaxed);
  }

  // One pass: queue what is due, send, read answers; waits at most 1 ms.
  void pass(bool publishing) {
    if (publishing) {
      if (cfg_.kind == publisher_kind::wse) {
        queue_wse();
      } else {
        queue_batches();  // api, redis
      }
    }
    pollfd p{fd_, static_cast<short>(POLLIN | (out_sent_ < out_.size() ? POLLOUT : 0)), 0};
    if (poll(&p, 1, 1) < 0 && errno != EINTR) {
      set_error(std::string("poll: ") + std::strerror(errno));
      return;
    }
    if (out_sent_ < out_.size() && (p.revents & POLLOUT)) {
      ssize_t n = send(fd_, out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
      if (n > 0) out_sent_ += static_cast<size_t>(n), bytes_sent_ += static_cast<uint64_t>(n);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        set_error(std::string("send: ") + std::strerror(errno));
        return;
      }
      if (cfg_.kind != publisher_kind::wse && out_sent_ == out_.size()) {
        out_.clear();
        out_sent_ = 0;
      }
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) read_answers();
  }

  void read_answers() {
    char buf[65536];
    for (int k = 0; k < 16; ++k) {
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n == 0) {
        set_error(cfg_.kind == publisher_kind::api     ? "the API closed the connection"
                  : cfg_.kind == publisher_kind::redis ? "Redis closed the connection"
                                                       : "the server closed the publisher");
        return;
      }
      if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
          set_error(std::string("recv: ") + std::strerror(errno));
        return;
      }
      if (cfg_.kind == publisher_kind::api) {
        in_.append(buf, static_cast<size_t>(n));
        parse_api_answers();
      } else if (cfg_.kind == publisher_kind::redis) {
        parse_redis_answers(buf, static_cast<size_t>(n));
      } else {
        parse_frames(reinterpret_cast<uint8_t*>(buf), static_cast<size_t>(n));
      }
      if (!error.empty() || static_cast<size_t>(n) < sizeof buf) return;
    }
  }

  void parse_api_answers() {
    size_t used = 0;
    for (;;) {
      http_response r = parse_http_response(std::string_view(in_).substr(used));
      if (r.state == http_parse::incomplete) break;
      if (r.state == http_parse::bad || pending_.empty()) {
        set_error("unreadable or unexpected API answer: " + in_.substr(used, 120));
        return;
      }
      uint32_t items = pending_.front();
      pending_.pop_front();
      responses.fetch_add(1, std::memory_order_relaxed);
      if (r.status == 200) {
        accepted.fetch_add(json_number_field(r.body, "accepted").value_or(items),
                           std::memory_order_relaxed);
      } else if (r.status == 503) {  // the first N items were published, the rest were not
        uint64_t took =
            std::min<uint64_t>(json_number_field(r.body, "accepted").value_or(0), items);
        accepted.fetch_add(took, std::memory_order_relaxed);
        busy.fetch_add(items - took, std::memory_order_relaxed);
      } else {
        refused.fetch_add(items, std::memory_order_relaxed);
        set_error("POST /api/publish answered " + std::to_string(r.status) + " (answer " +
                  std::to_string(responses.load()) + ", " + std::to_string(bytes_sent_) +
                  " bytes sent): " + std::string(r.body.substr(0, 200)));
        return;
      }
      used += r.bytes;
      if (r.close) {
        set_error("the API closed the keep-alive connection");
        return;
      }
    }
    in_.erase(0, used);
  }

  // wse: frames from the server to the publisher: error frames (SERVER_BUSY: backpressure, any
  // other: refused), server pings and anything else ignored.
  void parse_frames(uint8_t* data, size_t length) {
    carry_.insert(carry_.end(), data, data + length);
    size_t offset = 0;
    proto::ws_limits limits;
    limits.message_bytes_max = 1 << 20;
    while (offset < carry_.size()) {
      proto::ws_event ev =
          parser_.next(std::span<uint8_t>(carry_.data() + offset, carry_.size() - offset), limits);
      if (ev.kind == proto::ws_event_kind::need_more) break;
      offset += ev.consumed;
      if (ev.kind == proto::ws_event_kind::error || ev.kind == proto::ws_event_kind::close) {
        set_error("publisher connection: close/protocol error " + std::to_string(ev.close_code));
        return;
      }
      if (ev.kind != proto::ws_event_kind::data) continue;
      if (ev.message_begin) message_.clear();
      if (message_.size() < 4096) {
        message_.append(reinterpret_cast<const char*>(ev.payload.data()),
                        std::min<size_t>(ev.payload.size(), 4096 - message_.size()));
      }
      if (!ev.message_end) continue;
      if (message_.find("\"t\":\"error\"") == std::string::npos) continue;
      // Counted and publishing goes on, so what the server took stays exact; the first refusal
      // other than backpressure is the run's error (set once run() ends).
      if (message_.find("SERVER_BUSY") != std::string::npos) {
        busy.fetch_add(1, std::memory_order_relaxed);
      } else {
        refused.fetch_add(1, std::memory_order_relaxed);
        if (first_refusal_.empty()) first_refusal_ = message_.substr(0, 200);
      }
    }
    carry_.erase(carry_.begin(), carry_.begin() + static_cast<long>(offset));
  }

  // wse: the upgrade with the token cookie, then server_ready, then client_hello (blocking, with
  // timeout_ms for the whole).
  bool upgrade(int timeout_ms) {
    uint8_t key_bytes[16];
    if (getrandom(key_bytes, sizeof key_bytes, 0) != sizeof key_bytes) {
      std::memcpy(key_bytes, "wse-bench-pubkey", 16);
    }
    if (getrandom(key_.data(), key_.size(), 0) != static_cast<ssize_t>(key_.size())) {
      std::memcpy(key_.data(), "wsep", 4);
    }
    std::string key = base64(key_bytes);
    auto accept = proto::websocket_accept(key);
    std::string req = upgrade_request(cfg_.path, cfg_.host_header, key, cfg_.token);
    uint64_t deadline = mono_ns_now() + static_cast<uint64_t>(timeout_ms) * 1'000'000u;
    size_t sent_bytes = 0;
    std::string in;
    bool upgraded = false;
    while (mono_ns_now() < deadline) {
      pollfd p{fd_, static_cast<short>(POLLIN | (sent_bytes < req.size() ? POLLOUT : 0)), 0};
      if (poll(&p, 1, 10) <= 0) continue;
      if (sent_bytes < req.size() && (p.revents & POLLOUT)) {
        ssize_t n = send(fd_, req.data() + sent_bytes, req.size() - sent_bytes, MSG_NOSIGNAL);
        if (n > 0) sent_bytes += static_cast<size_t>(n);
      }
      if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[16384];
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n == 0) return set_error("publisher: EOF during the upgrade");
      if (n < 0) continue;
      size_t start = 0;
      if (!upgraded) {
        size_t before = in.size();
        in.append(buf, static_cast<size_t>(n));
        upgrade_check c =
            check_upgrade_response(in, std::string_view(accept.data(), accept.size()));
        if (c.status == upgrade_status::incomplete) continue;
        if (c.status != upgrade_status::ok) {
          return set_error("publisher upgrade refused: " + in.substr(0, in.find('\r')));
        }
        upgraded = true;
        start = c.header_bytes - before;
      }
      // Frames until server_ready (text messages are small here: whole in one read).
      carry_.insert(carry_.end(), buf + start, buf + n);
      proto::ws_limits limits;
      limits.message_bytes_max = 1 << 20;
      size_t offset = 0;
      while (offset < carry_.size()) {
        proto::ws_event ev = parser_.next(
            std::span<uint8_t>(carry_.data() + offset, carry_.size() - offset), limits);
        if (ev.kind == proto::ws_event_kind::need_more) break;
        offset += ev.consumed;
        if (ev.kind == proto::ws_event_kind::close || ev.kind == proto::ws_event_kind::error) {
          return set_error("publisher: close " + std::to_string(ev.close_code) +
                           " before server_ready");
        }
        if (ev.kind != proto::ws_event_kind::data) continue;
        if (ev.message_begin) message_.clear();
        message_.append(reinterpret_cast<const char*>(ev.payload.data()), ev.payload.size());
        if (!ev.message_end) continue;
        if (message_.find("\"t\":\"server_ready\"") != std::string::npos) {
          carry_.erase(carry_.begin(), carry_.begin() + static_cast<long>(offset));
          std::string hello = client_hello_json();
          masked_frame f =
              make_masked_frame(proto::ws_opcode::text,
                                std::span<const uint8_t>(
                                    reinterpret_cast<const uint8_t*>(hello.data()), hello.size()),
                                key_);
          out_.assign(reinterpret_cast<const char*>(f.bytes.data()), f.bytes.size());
          out_sent_ = 0;
          return true;
        }
        if (message_.find("\"t\":\"error\"") != std::string::npos) {
          return set_error("publisher: " + message_.substr(0, 200));
        }
      }
      carry_.erase(carry_.begin(), carry_.begin() + static_cast<long>(offset));
    }
    return set_error("publisher: no server_ready within the timeout");
  }

  publisher_config cfg_;
  int fd_ = -1;
  uint64_t start_ns_ = 0;
  uint64_t next_seq_ = 0;
  std::string out_;  // bytes queued to send
  size_t out_sent_ = 0;
  uint64_t bytes_sent_ = 0;
  std::string in_;                // api: answers received, not parsed yet
  std::deque<uint32_t> pending_;  // api: items of each request not answered yet; redis: commands
                                  // of each batch
  resp_reader reader_;            // redis: the answers
  std::string tick_;              // redis: the tick being framed
  std::string publish_head_;      // redis: "*3 $7 PUBLISH $n <channel>" in RESP
  proto::ws_frame_parser parser_{proto::ws_role::client};
  std::vector<uint8_t> carry_;  // wse: bytes received, not parsed yet
  std::string message_;
  std::string first_refusal_;  // wse: the first error frame other than SERVER_BUSY
  std::array<uint8_t, 4> key_{};
};

}  // namespace wsed::bench
