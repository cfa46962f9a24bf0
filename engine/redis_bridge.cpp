// engine/redis_bridge.cpp: the Redis bridge thread (see redis_bridge.hpp).
//
// Owns: the two sockets (S subscriber, P publisher), their hiredis readers and output buffers,
// the subscription sets, the held publications, the echo filter. Thread: the bridge thread,
// except the producer entry points at the top (any thread; they only push and wake).
//
// One loop iteration: take the wake, drain the producers' ring into the held queue, apply
// interest changes, move held publications, commands and stream entries to P, send a fence on
// S, poll both sockets (and the wake eventfd), read and dispatch replies, write, reconnect when
// due, publish readiness.
#include "engine/redis_bridge.hpp"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <unordered_set>

#include "fanout/topic_index.hpp"

namespace wsed::engine {

namespace {

uint64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

// Replies P and S expect, in order (runs of one kind are merged: a pipelined burst of PUBLISH
// is one entry).
enum class tag : uint8_t { auth, select, publish, xadd, command };
struct tag_run {
  tag t;
  uint32_t n;
};

constexpr size_t read_chunk_bytes = 64 * 1024;
constexpr size_t out_pending_max = 1u << 20;  // P: stop moving publications past this
constexpr size_t subscribe_batch = 256;       // channels per SUBSCRIBE command
constexpr size_t echo_records_max = 1u << 20;
constexpr uint32_t drain_batch = 4096;
constexpr uint64_t fence_hold_ms = 500;  // after P died: its last commands may still run

std::string_view str_of(const redisReply* r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
               r->type == REDIS_REPLY_ERROR)
             ? std::string_view(r->str, r->len)
             : std::string_view{};
}

}  // namespace

struct redis_bridge::connection {
  explicit connection(const char* n) : name(n) {}
  const char* name;
  int fd = -1;
  enum class state : uint8_t { down, connecting, handshake, ready } st = state::down;
  std::string out;
  size_t out_off = 0;
  redisReader* reader = nullptr;
  std::deque<tag_run> tags;
  uint32_t handshake_left = 0;
  uint32_t failures = 0;
  uint64_t retry_at = 0;
  bool was_ready = false;  // for the log: announce the recovery once

  size_t pending_out() const { return out.size() - out_off; }
  void push_tag(tag t, uint32_t n = 1) {
    if (!tags.empty() && tags.back().t == t) {
      tags.back().n += n;
    } else {
      tags.push_back({t, n});
    }
  }
  bool pop_tag(tag& t) {
    if (tags.empty()) return false;
    t = tags.front().t;
    if (--tags.front().n == 0) tags.pop_front();
    return true;
  }
};

struct redis_bridge::impl {
  connection s{"subscriber"}, p{"publisher"};
  // Subscriptions, by their Redis names: wanted (from the router), requested on the current S
  // connection, and confirmed (updated by the confirmations, in stream order with the messages).
  std::unordered_set<std::string> want_channels, want_patterns;
  std::unordered_set<std::string> requested_channels, requested_patterns;
  std::unordered_set<std::string> confirmed_channels, confirmed_patterns;
  uint64_t inflight = 0;  // confirmations still to come on S
  std::vector<std::string_view> sub_batch, unsub_batch, psub_batch, punsub_batch;

  struct held_pub {
    fanout::delivery_kind kind;
    fanout::frame* f;
  };
  std::deque<held_pub> held;
  uint64_t held_bytes = 0;

  redis::echo_filter echo;
  uint64_t written_seq = 0, acked_seq = 0, fenced_seq = 0, fence_target = 0;
  bool fence_out = false;
  uint64_t fence_hold_until = 0;

  // Consecutive copies of one publication (an exact and a glob subscription both matching).
  uint64_t last_fp = 0;
  uint32_t dup_left = 0;

  // A received publication the shards' inboxes could not take yet (retried; S not read).
  bool pending = false;
  fanout::delivery_kind pending_kind = fanout::delivery_kind::topic;
  std::string pending_key, pending_json;
  uint64_t pending_retry_at = 0;
  uint64_t wakes = 0;  // shards to wake after this batch of received publications

  std::mt19937 rng{std::random_device{}()};
  std::string channel, key, scratch;
  std::vector<char> read_buf = std::vector<char>(read_chunk_bytes);
  std::vector<std::pair<redis_interest, std::string>> dirty;
  std::vector<std::pair<std::string, std::string>> commands;
  std::string inbound_resp;
  bool logged_down = false;
};

redis_bridge::redis_bridge(redis_bridge_options options, const fanout::router& router,
                           redis_sink& sink)
    : opt_(std::move(options)),
      router_(router),
      sink_(sink),
      ring_(opt_.ring_capacity, opt_.producers + 1, &redis_bridge::wake_hook, this),
      impl_(std::make_unique<impl>()) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  for (uint32_t i = 0; i <= opt_.producers; ++i)
    inbound_.push_back(std::make_unique<inbound_lane>());
  impl& m = *impl_;
  if (opt_.pattern_mode) {
    m.want_patterns.insert(redis::pattern_for_glob(opt_.prefix, "*"));
    // "*" covers the @ channels too (topics beginning with @, broadcasts, users, this node).
  } else {
    m.want_channels.insert(opt_.prefix + std::string(redis::broadcast_name));
    m.want_channels.insert(opt_.prefix + std::string(redis::node_name) + opt_.instance_id);
  }
}

redis_bridge::~redis_bridge() {
  stop();
  impl& m = *impl_;
  for (auto& h : m.held) fanout::release(h.f);
  ring_.drain(~size_t{0}, [](fanout::delivery& d) { fanout::release(d.f); });
  for (connection* c : {&m.s, &m.p}) {
    if (c->fd >= 0) close(c->fd);
    if (c->reader) redisReaderFree(c->reader);
  }
  if (wake_fd_ >= 0) close(wake_fd_);
}

void redis_bridge::wake_hook(void* context) {
  auto* self = static_cast<redis_bridge*>(context);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(self->wake_fd_, &one, sizeof one);
}

void redis_bridge::wake() {
  if (wake_pending_.load(std::memory_order_relaxed)) return;
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) wake_hook(this);
}

bool redis_bridge::publish(uint32_t producer, fanout::delivery_kind kind, fanout::frame* f) {
  fanout::delivery d;
  d.kind = kind;
  d.f = f;
  fanout::retain(f);
  bool ok;
  if (producer < opt_.producers) {
    ok = ring_.try_push(producer, d);
  } else {
    std::lock_guard lock(external_mu_);
    ok = ring_.try_push(opt_.producers, d);
  }
  if (!ok) {
    fanout::release(f);
    c_.dropped_ring.fetch_add(1, std::memory_order_relaxed);
  }
  return ok;
}

void redis_bridge::interest_changed(redis_interest kind, std::string_view key) {
  if (opt_.pattern_mode) return;  // one pattern covers everything
  {
    std::lock_guard lock(mu_);
    dirty_.emplace_back(kind, std::string(key));
    ready_.store(false, std::memory_order_release);
  }
  wake();
}

bool redis_bridge::route_command(std::string_view instance, std::string_view json) {
  if (!up_.load(std::memory_order_acquire)) return false;
  {
    std::lock_guard lock(mu_);
    if (commands_.size() >= 65536) return false;
    commands_.emplace_back(std::string(instance), std::string(json));
  }
  wake();
  return true;
}

bool redis_bridge::add_inbound(uint32_t producer, std::initializer_list<std::string_view> fields) {
  inbound_lane& l = *inbound_[producer < opt_.producers ? producer : opt_.producers];
  {
    std::lock_guard lock(l.mu);
    if (l.resp.size() >= opt_.inbound_bytes_max) {
      c_.inbound_dropped.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    // XADD <prefix>inbound MAXLEN ~ N * field value ...
    std::vector<std::string_view> args;
    args.reserve(6 + fields.size());
    std::string stream = opt_.prefix + "inbound";
    std::string maxlen = std::to_string(opt_.stream_maxlen);
    args.insert(args.end(), {"XADD", stream, "MAXLEN", "~", maxlen, "*"});
    args.insert(args.end(), fields.begin(), fields.end());
    redis::append_command(l.resp, args);
    ++l.count;
  }
  wake();
  return true;
}

void redis_bridge::start() {
  stop_.store(false);
  thread_ = std::thread([this] { run(); });
}

void redis_bridge::stop() {
  stop_.store(true);
  wake_hook(this);
  if (thread_.joinable()) thread_.join();
}

// ---- the bridge thread -------------------------------------------------------------------

namespace {

void log_line(bool quiet, const std::string& text) {
  if (!quiet) std::fprintf(stderr, "wsed: redis: %s\n", text.c_str());
}

}  // namespace

void redis_bridge::schedule_retry(connection& c) {
  impl& m = *impl_;
  uint64_t delay = opt_.reconnect_min_ms;
  for (uint32_t i = 0; i < c.failures && delay < opt_.reconnect_max_ms; ++i) delay *= 2;
  if (delay > opt_.reconnect_max_ms) delay = opt_.reconnect_max_ms;
  // Jitter: between half and all of it, so instances do not reconnect in step.
  delay = delay / 2 + std::uniform_int_distribution<uint64_t>(0, delay / 2)(m.rng);
  c.retry_at = now_ms() + delay;
  if (c.failures < 64) ++c.failures;
}

void redis_bridge::disconnect(connection& c, const std::string& why) {
  impl& m = *impl_;
  bool was_up = c.st == connection::state::ready;
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  if (c.reader) redisReaderFree(c.reader);
  c.reader = nullptr;
  c.out.clear();
  c.out_off = 0;
  c.handshake_left = 0;
  if (was_up) c_.disconnects.add();
  if (&c == &m.p) {
    for (const tag_run& r : c.tags) {
      if (r.t == tag::publish) {
        c_.lost.add(r.n);
      } else if (r.t == tag::xadd) {
        c_.inbound_lost.add(r.n);
      }
    }
    // Its last commands may still run after the close: no fence proves their echoes for a while.
    m.acked_seq = m.written_seq;
    m.fence_hold_until = now_ms() + fence_hold_ms;
  } else {
    m.requested_channels.clear();
    m.requested_patterns.clear();
    m.confirmed_channels.clear();
    m.confirmed_patterns.clear();
    m.inflight = 0;
    m.fence_out = false;
    m.dup_left = 0;
    c_.subscriptions.sub(c_.subscriptions.get());
  }
  c.tags.clear();
  c.st = connection::state::down;
  up_.store(false, std::memory_order_release);
  if (was_up || !m.logged_down) {
    log_line(opt_.quiet, std::string(c.name) + " connection to " + opt_.endpoint.text() +
                             " lost: " + why + "; reconnecting with backoff");
    m.logged_down = true;
  }
  schedule_retry(c);
}

void redis_bridge::connect(connection& c) {
  const redis::endpoint& e = opt_.endpoint;
  int fd = socket(e.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return disconnect(c, std::string("socket: ") + std::strerror(errno));
  if (!e.unix_socket) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  c.fd = fd;
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&e.address), e.address_bytes);
  if (rc == 0) return connected(c);
  if (errno == EINPROGRESS) {
    c.st = connection::state::connecting;
    return;
  }
  disconnect(c, std::string("connect: ") + std::strerror(errno));
}

void redis_bridge::connected(connection& c) {
  impl& m = *impl_;
  c.reader = redisReaderCreate();
  c.st = connection::state::handshake;
  const redis::endpoint& e = opt_.endpoint;
  if (!e.password.empty()) {
    if (e.user.empty()) {
      redis::append_command(c.out, {"AUTH", e.password});
    } else {
      redis::append_command(c.out, {"AUTH", e.user, e.password});
    }
    c.push_tag(tag::auth);
    ++c.handshake_left;
  }
  if (&c == &m.p && e.db != 0) {
    std::string db = std::to_string(e.db);
    redis::append_command(c.out, {"SELECT", db});
    c.push_tag(tag::select);
    ++c.handshake_left;
  }
  if (c.handshake_left == 0) became_ready(c);
}

void redis_bridge::became_ready(connection& c) {
  impl& m = *impl_;
  c.st = connection::state::ready;
  c.failures = 0;
  c_.connects.add();
  if (&c == &m.s) {
    // Everything wanted, again (a new connection holds no subscription).
    for (const std::string& ch : m.want_channels) {
      m.requested_channels.insert(ch);
      m.sub_batch.push_back(ch);
    }
    for (const std::string& pat : m.want_patterns) {
      m.requested_patterns.insert(pat);
      m.psub_batch.push_back(pat);
    }
    flush_subscriptions();
  }
  if (m.s.st == connection::state::ready && m.p.st == connection::state::ready) {
    up_.store(true, std::memory_order_release);
    if (m.logged_down) {
      log_line(opt_.quiet, "connected to " + opt_.endpoint.text());
      m.logged_down = false;
    }
  }
}

void redis_bridge::flush_subscriptions() {
  impl& m = *impl_;
  connection& s = m.s;
  auto emit = [&](std::vector<std::string_view>& names, std::string_view verb) {
    for (size_t i = 0; i < names.size(); i += subscribe_batch) {
      size_t n = std::min(subscribe_batch, names.size() - i);
      std::vector<std::string_view> args;
      args.reserve(n + 1);
      args.push_back(verb);
      args.insert(args.end(), names.begin() + long(i), names.begin() + long(i + n));
      redis::append_command(s.out, args);
      m.inflight += n;
      c_.subscribe_commands.add();
    }
    names.clear();
  };
  if (s.st != connection::state::ready) {
    m.sub_batch.clear();
    m.unsub_batch.clear();
    m.psub_batch.clear();
    m.punsub_batch.clear();
    return;
  }
  emit(m.sub_batch, "SUBSCRIBE");
  emit(m.psub_batch, "PSUBSCRIBE");
  emit(m.unsub_batch, "UNSUBSCRIBE");
  emit(m.punsub_batch, "PUNSUBSCRIBE");
}

// Interest changes reported by the shards: compare with the router (the truth, whatever order
// the reports arrived in) and subscribe or unsubscribe.
void redis_bridge::apply_interest() {
  impl& m = *impl_;
  {
    std::lock_guard lock(mu_);
    m.dirty.swap(dirty_);
  }
  if (m.dirty.empty()) return;
  bool s_ready = m.s.st == connection::state::ready;
  // The views in the batches point into the want / requested sets' nodes, which stay put until
  // flush_subscriptions below has copied them (erasures happen after it).
  std::vector<std::string> unsubscribed_channels, unsubscribed_patterns;
  for (auto& [kind, key] : m.dirty) {
    bool glob = kind == redis_interest::pattern && fanout::is_glob(key);
    bool wanted = kind == redis_interest::user ? router_.wants_user(key) : router_.wants(key);
    std::string name;
    if (kind == redis_interest::user) {
      name = opt_.prefix + std::string(redis::user_name) + key;
    } else if (glob) {
      name = redis::pattern_for_glob(opt_.prefix, key);
    } else {
      redis::append_topic_channel(name, opt_.prefix, key);
    }
    auto& want = glob ? m.want_patterns : m.want_channels;
    auto& requested = glob ? m.requested_patterns : m.requested_channels;
    if (wanted) {
      auto [it, fresh] = want.insert(name);
      if (s_ready && !requested.count(name)) {
        auto r = requested.insert(name).first;
        (glob ? m.psub_batch : m.sub_batch).push_back(*r);
      }
      (void)it;
      (void)fresh;
    } else {
      want.erase(name);
      if (s_ready && requested.count(name))
        (glob ? unsubscribed_patterns : unsubscribed_channels).push_back(std::move(name));
    }
  }
  m.dirty.clear();
  for (const std::string& n : unsubscribed_channels) m.unsub_batch.push_back(n);
  for (const std::string& n : unsubscribed_patterns) m.punsub_batch.push_back(n);
  flush_subscriptions();
  for (const std::string& n : unsubscribed_channels) m.requested_channels.erase(n);
  for (const std::string& n : unsubscribed_patterns) m.requested_patterns.erase(n);
}

void redis_bridge::take_publications() {
  impl& m = *impl_;
  bool p_ready = m.p.st == connection::state::ready;
  ring_.drain(drain_batch, [&](fanout::delivery& d) {
    uint64_t bytes = d.f->payload().size() + d.f->key().size() + 64;
    if (m.held_bytes + bytes > opt_.buffer_bytes_max) {
      c_.dropped_buffer.add();
      fanout::release(d.f);
      return;
    }
    if (!p_ready || !m.held.empty()) {
      if (!p_ready) c_.buffered_total.add();
    }
    m.held.push_back({d.kind, d.f});
    m.held_bytes += bytes;
  });
  c_.buffered.sub(c_.buffered.get());
  c_.buffered.add(m.held.size());
}

void redis_bridge::write_publications() {
  impl& m = *impl_;
  connection& p = m.p;
  if (p.st != connection::state::ready) return;
  while (!m.held.empty() && p.pending_out() < out_pending_max) {
    impl::held_pub h = m.held.front();
    m.held.pop_front();
    m.channel.clear();
    switch (h.kind) {
      case fanout::delivery_kind::topic:
        redis::append_topic_channel(m.channel, opt_.prefix, h.f->key());
        break;
      case fanout::delivery_kind::broadcast:
        m.channel.append(opt_.prefix).append(redis::broadcast_name);
        break;
      default:
        m.channel.append(opt_.prefix).append(redis::user_name).append(h.f->key());
        break;
    }
    std::string_view payload = h.f->payload();
    redis::append_command(p.out, {"PUBLISH", m.channel, payload});
    p.push_tag(tag::publish);
    ++m.written_seq;
    // Recorded even while S is down: a PUBLISH written now may run after S resubscribed.
    m.echo.record(redis::fingerprint(m.channel, payload), m.written_seq);
    if (m.echo.pending() > echo_records_max)
      m.echo.expire_through(m.written_seq - echo_records_max);
    m.held_bytes -= payload.size() + h.f->key().size() + 64;
    fanout::release(h.f);
  }
  c_.buffered.sub(c_.buffered.get());
  c_.buffered.add(m.held.size());
}

void redis_bridge::write_commands() {
  impl& m = *impl_;
  connection& p = m.p;
  {
    std::lock_guard lock(mu_);
    m.commands.swap(commands_);
  }
  for (auto& [instance, json] : m.commands) {
    if (p.st != connection::state::ready) {
      c_.commands_unknown.add();  // could not be routed (the caller was told 202 before)
      continue;
    }
    std::string channel = opt_.prefix + std::string(redis::node_name) + instance;
    redis::append_command(p.out, {"PUBLISH", channel, json});
    p.push_tag(tag::command);
  }
  m.commands.clear();
  if (!opt_.inbound_stream) return;
  // Stream entries wait in their lanes while Redis is away (add_inbound refuses, and counts,
  // what would overfill a lane).
  if (p.st != connection::state::ready) return;
  for (auto& lane : inbound_) {
    uint32_t n;
    {
      std::lock_guard lock(lane->mu);
      if (lane->count == 0) continue;
      m.inbound_resp.swap(lane->resp);
      n = lane->count;
      lane->count = 0;
    }
    p.out.append(m.inbound_resp);
    p.push_tag(tag::xadd, n);
    m.inbound_resp.clear();
  }
}

void redis_bridge::send_fence() {
  impl& m = *impl_;
  if (m.fence_out || m.s.st != connection::state::ready || m.acked_seq <= m.fenced_seq) return;
  if (m.fence_hold_until && now_ms() < m.fence_hold_until) return;
  m.fence_hold_until = 0;
  redis::append_command(m.s.out, {"PING"});
  m.fence_out = true;
  m.fence_target = m.acked_seq;
}

uint32_t redis_bridge::expected_copies(std::string_view channel) {
  impl& m = *impl_;
  if (m.confirmed_patterns.empty()) return 1;
  uint32_t n = 0;
  if (!m.confirmed_channels.empty()) {
    m.scratch.assign(channel);
    n += uint32_t(m.confirmed_channels.count(m.scratch));
  }
  for (const std::string& pat : m.confirmed_patterns) n += redis::glob_match(pat, channel) ? 1 : 0;
  return n ? n : 1;
}

// One publication as it arrived on S. False: the shards could not take it yet (kept pending).
bool redis_bridge::on_message(std::string_view channel, std::string_view payload) {
  impl& m = *impl_;
  uint64_t fp = redis::fingerprint(channel, payload);
  if (m.dup_left > 0 && fp == m.last_fp) {
    --m.dup_left;
    c_.received_duplicate.add();
    return true;
  }
  m.last_fp = fp;
  uint32_t copies = expected_copies(channel);
  m.dup_left = copies - 1;
  if (!m.echo.empty() && m.echo.consume(fp)) {
    c_.received_own.add();
    return true;
  }
  redis::channel_kind kind = redis::parse_channel(channel, opt_.prefix, m.key);
  fanout::delivery_kind dk;
  switch (kind) {
    case redis::channel_kind::topic:
      dk = fanout::delivery_kind::topic;
      break;
    case redis::channel_kind::broadcast:
      dk = fanout::delivery_kind::broadcast;
      break;
    case redis::channel_kind::user:
      dk = fanout::delivery_kind::user;
      break;
    case redis::channel_kind::command:
      if (m.key != opt_.instance_id) return true;  // another instance's (pattern mode)
      switch (sink_.remote_command(payload)) {
        case redis_sink::command_status::ok:
          c_.commands_ok.add();
          break;
        case redis_sink::command_status::unknown:
          c_.commands_unknown.add();
          break;
        case redis_sink::command_status::invalid:
          c_.commands_invalid.add();
          break;
        case redis_sink::command_status::busy:
          c_.commands_unknown.add();
          break;
      }
      return true;
    default:
      c_.received_invalid.add();
      return true;
  }
  return deliver(dk, m.key, payload);
}

bool redis_bridge::deliver(fanout::delivery_kind kind, std::string_view key,
                           std::string_view json) {
  impl& m = *impl_;
  switch (sink_.remote_publication(kind, key, json, &m.wakes)) {
    case redis_sink::status::delivered:
      c_.received_delivered.add();
      return true;
    case redis_sink::status::invalid:
      c_.received_invalid.add();
      return true;
    case redis_sink::status::busy:
      break;
  }
  c_.received_busy.add();
  if (!m.pending) {
    m.pending = true;
    m.pending_kind = kind;
    m.pending_key.assign(key);
    m.pending_json.assign(json);
  }
  m.pending_retry_at = now_ms() + 1;
  return false;
}

// Replies on S: confirmations, messages, the fence's pong, the AUTH answer.
bool redis_bridge::on_s_reply(const redisReply* r) {
  impl& m = *impl_;
  if (r->type == REDIS_REPLY_ERROR) {
    disconnect(m.s, "error: " + std::string(str_of(r)));
    return false;
  }
  if (r->type == REDIS_REPLY_STATUS) {
    std::string_view st = str_of(r);
    if (st == "PONG") {  // a fence while not subscribed to anything
      m.fence_out = false;
      m.fenced_seq = m.fence_target;
      m.echo.expire_through(m.fence_target);
      return true;
    }
    tag t;
    if (m.s.pop_tag(t) && m.s.st == connection::state::handshake && --m.s.handshake_left == 0)
      became_ready(m.s);
    return true;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) return true;
  std::string_view kind = str_of(r->element[0]);
  if (kind == "message" && r->elements == 3) {
    return on_message(str_of(r->element[1]), str_of(r->element[2]));
  }
  if (kind == "pmessage" && r->elements == 4) {
    return on_message(str_of(r->element[2]), str_of(r->element[3]));
  }
  std::string name(str_of(r->element[1]));
  if (kind == "subscribe") {
    if (m.inflight) --m.inflight;
    if (m.confirmed_channels.insert(name).second) c_.subscriptions.add();
  } else if (kind == "psubscribe") {
    if (m.inflight) --m.inflight;
    if (m.confirmed_patterns.insert(name).second) c_.subscriptions.add();
  } else if (kind == "unsubscribe") {
    if (m.inflight) --m.inflight;
    if (m.confirmed_channels.erase(name)) c_.subscriptions.sub();
  } else if (kind == "punsubscribe") {
    if (m.inflight) --m.inflight;
    if (m.confirmed_patterns.erase(name)) c_.subscriptions.sub();
  } else if (kind == "pong") {
    m.fence_out = false;
    m.fenced_seq = m.fence_target;
    m.echo.expire_through(m.fence_target);
  }
  return true;
}

void redis_bridge::on_p_reply(const redisReply* r) {
  impl& m = *impl_;
  tag t;
  if (!m.p.pop_tag(t)) return;  // not expected: ignore
  bool error = r->type == REDIS_REPLY_ERROR;
  switch (t) {
    case tag::auth:
    case tag::select:
      if (error) {
        disconnect(m.p, std::string(t == tag::auth ? "AUTH" : "SELECT") +
                            " refused: " + std::string(str_of(r)));
        return;
      }
      if (m.p.st == connection::state::handshake && --m.p.handshake_left == 0) became_ready(m.p);
      return;
    case tag::publish:
      ++m.acked_seq;
      if (error) {
        c_.lost.add();
      } else {
        c_.published.add();
      }
      return;
    case tag::xadd:
      if (error) {
        c_.inbound_error.add();
      } else {
        c_.inbound_added.add();
      }
      return;
    case tag::command:
      if (!error) c_.commands_routed.add();
      return;
  }
}

// Reads what the socket has (S: not while a received publication is pending) and dispatches
// every complete reply.
void redis_bridge::read_replies(connection& c, bool readable) {
  impl& m = *impl_;
  bool is_s = &c == &m.s;
  if (readable && !(is_s && m.pending)) {
    for (int rounds = 0; rounds < 16; ++rounds) {
      ssize_t n = recv(c.fd, m.read_buf.data(), m.read_buf.size(), 0);
      if (n > 0) {
        if (redisReaderFeed(c.reader, m.read_buf.data(), size_t(n)) != REDIS_OK)
          return disconnect(c, "reader: out of memory");
        if (size_t(n) < m.read_buf.size()) break;
        continue;
      }
      if (n == 0) return disconnect(c, "closed by the server");
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return disconnect(c, std::string("recv: ") + std::strerror(errno));
    }
  }
  while (c.reader && !(is_s && m.pending)) {
    void* reply = nullptr;
    if (redisReaderGetReply(c.reader, &reply) != REDIS_OK) {
      std::string why = c.reader->errstr;
      return disconnect(c, "protocol error: " + why);
    }
    if (!reply) break;
    if (is_s) {
      bool go = on_s_reply(static_cast<const redisReply*>(reply));
      freeReplyObject(reply);
      if (!go || c.fd < 0) break;
    } else {
      on_p_reply(static_cast<const redisReply*>(reply));
      freeReplyObject(reply);
      if (c.fd < 0) break;
    }
  }
}

void redis_bridge::write_out(connection& c) {
  while (c.pending_out() > 0) {
    ssize_t n = send(c.fd, c.out.data() + c.out_off, c.pending_out(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += size_t(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0 && errno == EINTR) continue;
    return disconnect(c, std::string("send: ") + std::strerror(errno));
  }
  if (c.out_off == c.out.size()) {
    c.out.clear();
    c.out_off = 0;
  } else if (c.out_off > (1u << 20) && c.out_off * 2 > c.out.size()) {
    c.out.erase(0, c.out_off);
    c.out_off = 0;
  }
}

void redis_bridge::update_ready() {
  impl& m = *impl_;
  bool r =
      m.s.st == connection::state::ready && m.p.st == connection::state::ready && m.inflight == 0;
  std::lock_guard lock(mu_);
  ready_.store(r && dirty_.empty(), std::memory_order_release);
}

void redis_bridge::run() {
  impl& m = *impl_;
  log_line(opt_.quiet, "connecting to " + opt_.endpoint.text() + " (prefix " + opt_.prefix +
                           ", instance " + opt_.instance_id + ")");
  m.logged_down = true;  // announce the first success
  while (!stop_.load(std::memory_order_acquire)) {
    uint64_t now = now_ms();
    for (connection* c : {&m.s, &m.p}) {
      if (c->st == connection::state::down && now >= c->retry_at) connect(*c);
    }
    wake_pending_.store(false, std::memory_order_release);
    take_publications();
    apply_interest();
    write_publications();
    write_commands();
    send_fence();
    if (m.pending && now >= m.pending_retry_at) {
      if (deliver(m.pending_kind, m.pending_key, m.pending_json)) m.pending = false;
    }

    pollfd fds[3];
    fds[0] = {wake_fd_, POLLIN, 0};
    nfds_t n = 1;
    int s_index = -1, p_index = -1;
    for (connection* c : {&m.s, &m.p}) {
      if (c->fd < 0) continue;
      short ev = 0;
      if (c->st == connection::state::connecting || c->pending_out() > 0) ev |= POLLOUT;
      if (c->st != connection::state::connecting && !(c == &m.s && m.pending)) ev |= POLLIN;
      (c == &m.s ? s_index : p_index) = int(n);
      fds[n++] = {c->fd, ev, 0};
    }
    int timeout = 1000;
    for (connection* c : {&m.s, &m.p}) {
      if (c->st == connection::state::down)
        timeout = std::min<int>(timeout, int(c->retry_at > now ? c->retry_at - now : 0));
    }
    if (m.pending) timeout = std::min(timeout, 1);
    if (m.fence_hold_until) timeout = std::min(timeout, 50);
    if (m.held.size() && m.p.st == connection::state::ready && m.p.pending_out() < out_pending_max)
      timeout = 0;
    if (!ring_.empty_approx()) timeout = 0;
    int rc = poll(fds, n, timeout);
    if (rc < 0 && errno != EINTR) break;
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(wake_fd_, &v, sizeof v);
    }
    for (connection* c : {&m.s, &m.p}) {
      int i = c == &m.s ? s_index : p_index;
      if (i < 0 || c->fd < 0) continue;
      short re = fds[i].revents;
      if (c->st == connection::state::connecting) {
        if (!(re & (POLLOUT | POLLERR | POLLHUP))) continue;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          disconnect(*c, std::string("connect: ") + std::strerror(err));
          continue;
        }
        connected(*c);
        write_out(*c);
        continue;
      }
      if (re & (POLLIN | POLLERR | POLLHUP)) read_replies(*c, true);
      if (c->fd >= 0 && c == &m.s && !m.pending) read_replies(*c, false);  // left in the reader
      if (c->fd >= 0 && c->pending_out() > 0) write_out(*c);
    }
    if (m.wakes) {
      sink_.wake(m.wakes);
      m.wakes = 0;
    }
    update_ready();
  }
  ready_.store(false);
  up_.store(false);
}

void redis_bridge::render_metrics(std::string& out) const {
  auto line = [&](const char* name, const char* type, const char* help, uint64_t v,
                  const char* label = nullptr, const char* value = nullptr, bool header = true) {
    if (header) {
      out += "# HELP ";
      out += name;
      out += ' ';
      out += help;
      out += "\n# TYPE ";
      out += name;
      out += ' ';
      out += type;
      out += '\n';
    }
    out += name;
    if (label) {
      out += '{';
      out += label;
      out += "=\"";
      out += value;
      out += "\"}";
    }
    out += ' ';
    out += std::to_string(v);
    out += '\n';
  };
  line("wsed_redis_up", "gauge", "1 while both connections to Redis are up.", up_.load() ? 1 : 0);
  line("wsed_redis_ready", "gauge", "1 once every wanted subscription is confirmed (/readyz).",
       ready() ? 1 : 0);
  line("wsed_redis_connects_total", "counter", "Connections to Redis that became ready.",
       c_.connects.get());
  line("wsed_redis_disconnects_total", "counter", "Ready connections to Redis that were lost.",
       c_.disconnects.get());
  const char* pub = "wsed_redis_publications_total";
  const char* pub_help =
      "Local publications handed to Redis, by outcome (every one ends in exactly one).";
  line(pub, "counter", pub_help, c_.published.get(), "result", "published");
  line(pub, "counter", pub_help, c_.dropped_buffer.get(), "result", "dropped_buffer_full", false);
  line(pub, "counter", pub_help, c_.dropped_ring.load(std::memory_order_relaxed), "result",
       "dropped_ring_full", false);
  line(pub, "counter", pub_help, c_.lost.get(), "result", "lost", false);
  line("wsed_redis_buffered_total", "counter",
       "Publications that waited in the buffer while Redis was unreachable.",
       c_.buffered_total.get());
  line("wsed_redis_buffered", "gauge", "Publications waiting for Redis now.", c_.buffered.get());
  const char* rec = "wsed_redis_received_total";
  const char* rec_help = "Messages received from Redis, by what became of them.";
  line(rec, "counter", rec_help, c_.received_delivered.get(), "result", "delivered");
  line(rec, "counter", rec_help, c_.received_own.get(), "result", "own", false);
  line(rec, "counter", rec_help, c_.received_duplicate.get(), "result", "duplicate", false);
  line(rec, "counter", rec_help, c_.received_invalid.get(), "result", "invalid", false);
  line(rec, "counter", rec_help, c_.received_busy.get(), "result", "busy_retry", false);
  line("wsed_redis_subscriptions", "gauge", "Channels and patterns Redis confirmed.",
       c_.subscriptions.get());
  line("wsed_redis_subscribe_commands_total", "counter",
       "SUBSCRIBE / PSUBSCRIBE / UNSUBSCRIBE / PUNSUBSCRIBE commands sent.",
       c_.subscribe_commands.get());
  const char* cmd = "wsed_redis_commands_total";
  const char* cmd_help = "Commands for this instance's connections received through Redis.";
  line(cmd, "counter", cmd_help, c_.commands_ok.get(), "result", "ok");
  line(cmd, "counter", cmd_help, c_.commands_unknown.get(), "result", "unknown", false);
  line(cmd, "counter", cmd_help, c_.commands_invalid.get(), "result", "invalid", false);
  line("wsed_redis_commands_routed_total", "counter",
       "Commands published to another instance's channel.", c_.commands_routed.get());
  const char* in = "wsed_redis_inbound_total";
  const char* in_help = "Inbound stream entries (--inbound redis), by outcome.";
  line(in, "counter", in_help, c_.inbound_added.get(), "result", "added");
  line(in, "counter", in_help, c_.inbound_dropped.load(std::memory_order_relaxed), "result",
       "dropped", false);
  line(in, "counter", in_help, c_.inbound_error.get(), "result", "error", false);
  line(in, "counter", in_help, c_.inbound_lost.get(), "result", "lost", false);
}

}  // namespace wsed::engine
