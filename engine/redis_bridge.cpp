// engine/redis_bridge.cpp: the Redis bridge thread (see redis_bridge.hpp).
//
// Owns: per Redis node (one for --redis-url, one per master of a cluster) the two sockets (S
// subscriber, P publisher), their hiredis readers and output buffers, the subscriptions asked
// of that node and confirmed by it, its echo filter and fences; process-wide, the wanted
// channels, the held publications and the cluster's slot map. Thread: the bridge thread, except
// the producer entry points (any thread; they only push and wake).
//
// One loop iteration: take the wake, drain the producers' ring into the held queue, apply
// interest changes, move held publications, commands and stream entries to their node's P, send
// fences on S, poll every socket (and the wake eventfd), read and dispatch replies, write,
// reconnect when due, refresh the cluster's slot map when due, publish readiness.
#include "engine/redis_bridge.hpp"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <set>
#include <unordered_map>

#include "engine/log.hpp"
#include "fanout/string_map.hpp"
#include "fanout/topic_index.hpp"
#include "proto/wse_builder.hpp"

namespace wsed::engine {

namespace {

uint64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

// Replies P and S expect, in order (runs of one kind are merged: a pipelined burst of PUBLISH
// is one entry).
enum class tag : uint8_t {
  auth,
  select,
  publish,
  xadd,
  command,
  slots,
  ping,
  script_sequence,  // SCRIPT LOAD (recovery), in the handshake
  script_history,
  sequence,            // EVALSHA of the sequence script: a recoverable publication
  history,             // EVALSHA of the history script: a recovering subscriber's fetch
  script_queue_group,  // SCRIPT LOAD, in the handshake
  queue_group,         // EVALSHA of the queue group script
  script_presence,     // SCRIPT LOAD, in the handshake
  script_presence_query,
  presence,        // EVALSHA of the presence script
  presence_query,  // EVALSHA of the presence query script
};
struct tag_run {
  tag t;
  uint32_t n;
};

constexpr size_t read_chunk_bytes = 64 * 1024;
constexpr size_t out_pending_max = 1u << 20;  // P: stop moving publications past this
constexpr size_t subscribe_batch = 256;       // channels per SUBSCRIBE command (one Redis)
constexpr size_t echo_records_max = 1u << 20;
constexpr uint32_t drain_batch = 4096;
constexpr uint64_t fence_hold_ms = 500;         // after P died: its last commands may still run
constexpr uint64_t topology_refresh_ms = 5000;  // cluster: CLUSTER SLOTS this often
constexpr uint64_t redirect_refresh_ms = 100;   // and this soon after a redirect (not a spin)
constexpr uint16_t cluster_slots = 16384;

// What a held publication counts against --redis-buffer-bytes: its bytes and the command's.
uint64_t held_cost(const fanout::frame& f) {
  return f.payload().size() + f.key().size() + 64;
}

std::string_view str_of(const redisReply* r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
               r->type == REDIS_REPLY_ERROR)
             ? std::string_view(r->str, r->len)
             : std::string_view{};
}

// Errors that mean "ask the cluster where this slot lives now".
bool is_redirect(std::string_view error) {
  return error.starts_with("MOVED") || error.starts_with("ASK") ||
         error.starts_with("CLUSTERDOWN") || error.starts_with("TRYAGAIN");
}

// The bridge's events (engine/log.hpp): names host:port or a socket path, never the password of
// --redis-url (endpoint::text() has none); quiet (an embedding program's) drops info and below.
void log_event(bool quiet, log::level l, std::string_view event, const std::string& text,
               log::fields f = {}) {
  if (quiet && l < log::level::warn) return;
  log::emit(l, event, "redis: " + text, f);
}

}  // namespace

struct redis_bridge::connection {
  connection(node* n, const char* what) : owner(n), name(what) {}
  node* owner;
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
  uint64_t since_ms = 0;       // when the current connect started
  uint64_t last_reply_ms = 0;  // the last reply read (liveness)
  bool keepalive_out = false;  // P: a PING of ours not answered yet

  bool ready() const { return st == state::ready; }
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

// One Redis server: the whole of it (--redis-url), or one master of a cluster.
struct redis_bridge::node {
  explicit node(redis::endpoint e) : ep(std::move(e)), name(ep.text()) {}
  redis::endpoint ep;
  std::string name;
  connection s{this, "subscriber"}, p{this, "publisher"};
  bool active = true;  // a master in the slot map (or a seed while the map is unknown)
  // Subscriptions by their Redis names: asked of this node's current S connection, and
  // confirmed (updated by the confirmations, in stream order with the messages).
  fanout::string_set requested_channels, requested_patterns;
  fanout::string_set confirmed_channels, confirmed_patterns;
  // One (un)subscription of one name. `pending`: asked, not written yet, in the order asked
  // (flush_subscriptions writes runs of one verb as one command); `ops`: written, its
  // confirmation still to come (subscribe-family replies come in order). ops.size() is what
  // /readyz waits for.
  struct op {
    bool subscribe, glob;
    std::string name;
  };
  std::vector<op> pending;
  std::deque<op> ops;
  // Echo filter and fences (see redis_names.hpp).
  redis::echo_filter echo;
  uint64_t written_seq = 0, acked_seq = 0, fenced_seq = 0, fence_target = 0;
  bool fence_out = false;
  uint64_t fence_hold_until = 0;
  // Consecutive copies of one publication (an exact and a glob subscription both matching).
  uint64_t last_fp = 0;
  uint32_t dup_left = 0;
  std::deque<redis_history_request> fetch_out;  // written on P, answers to come in order
  std::deque<pending_presence> presence_out;    // presence writes, in order
  std::deque<redis_presence_query> query_out;   // presence queries written, in order
};

struct redis_bridge::impl {
  bool cluster = false;
  std::vector<std::unique_ptr<node>> nodes;
  std::vector<int32_t> slots;  // cluster: slot -> index in nodes (-1: unknown)
  bool topology_known = false;
  // Cluster: a wanted channel is asked of no node right now (its slot has no master, or a
  // master refused it with a redirect): not ready until a slot map places it again.
  bool unplaced = false;
  bool slots_query_out = false;
  uint64_t next_refresh_at = 0;
  // Everything wanted, by Redis name (channels, and patterns for one Redis).
  fanout::string_set want_channels, want_patterns;

  struct held_pub {
    fanout::delivery_kind kind;
    fanout::frame* f;
    bool sequenced;  // through the sequence script (recovery)
  };
  std::deque<held_pub> held;
  uint64_t held_bytes = 0;

  // A received publication the shards' inboxes could not take yet (retried; S not read).
  bool pending = false;
  fanout::delivery_kind pending_kind = fanout::delivery_kind::topic;
  std::string pending_key, pending_json;
  uint64_t pending_retry_at = 0;
  uint64_t wakes = 0;  // shards to wake after this batch of received publications

  std::mt19937 rng{std::random_device{}()};
  std::string channel, key;
  std::vector<char> read_buf = std::vector<char>(read_chunk_bytes);
  std::vector<std::pair<redis_interest, std::string>> dirty;
  std::vector<std::pair<std::string, std::string>> commands;
  std::string inbound_resp;
  bool logged_down = false;
  bool logged_first_failure = false;  // a Redis that never answered (e.g. AUTH) is said once
  // Recovery: the scripts' SHA1s (from SCRIPT LOAD), histories waiting for their channel's
  // subscription, scratch.
  std::string sequence_sha, history_sha;
  std::vector<redis_history_request> fetch_wait;
  std::string meta, log, topic_json, rest, epoch, number, ttl, buffer, replay_max;
  std::string all_pattern;  // pattern mode: the one pattern
  // Queue groups: this instance's members per topic ("<connection id>\t<group>", join order;
  // an empty list stays until Redis was told), the topics to write (value: publish the marker
  // even when unchanged), the script's SHA1, the next renewal.
  std::string queue_group_sha;
  fanout::string_map<std::vector<std::string>> queue_group_own;
  fanout::string_map<bool> queue_group_dirty;
  uint64_t queue_group_refresh_at = 0;
  std::string qg_members, qg_instances, qg_order, qg_keep;
  // Presence: this instance's members per topic (user -> connections, data; 0 connections
  // kept until written), the users to write per topic, the scripts' SHA1s, queries waiting.
  struct own_presence {
    uint32_t connections = 0;  // as last written
    std::string data;          // as last written
    bool data_sent = false;    // Redis has this data from this instance
    uint32_t inflight = 0;     // writes of it not answered yet
  };
  std::string presence_sha, presence_query_sha;
  fanout::string_map<fanout::string_map<own_presence>> presence_own;
  fanout::string_map<std::set<std::string>> presence_dirty;  // topic -> users to write
  fanout::string_map<uint64_t> presence_retry_at;            // topic -> after a failed write
  uint64_t presence_refresh_at = 0;
  std::vector<redis_presence_query> query_wait;
  std::string pd, pt, pc, pi;
};

redis_bridge::redis_bridge(redis_bridge_options options, const fanout::router& router,
                           redis_sink& sink)
    : opt_(std::move(options)),
      router_(router),
      sink_(sink),
      ring_(opt_.ring_capacity, opt_.producers + 1, &redis_bridge::wake_hook, this),
      impl_(std::make_unique<impl>()) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  stream_key_ = opt_.prefix + "inbound";
  std::string maxlen = std::to_string(opt_.stream_maxlen);
  for (std::string_view a :
       {std::string_view("XADD"), std::string_view(stream_key_), std::string_view("MAXLEN"),
        std::string_view("~"), std::string_view(maxlen), std::string_view("*")})
    redis::append_bulk(xadd_head_, a);
  for (uint32_t i = 0; i <= opt_.producers; ++i)
    inbound_.push_back(std::make_unique<inbound_lane>());
  impl& m = *impl_;
  m.cluster = !opt_.cluster.empty();
  if (m.cluster) {
    opt_.pattern_mode = false;  // sharded pub/sub has no pattern subscriptions
    m.slots.assign(cluster_slots, -1);
    for (const redis::endpoint& e : opt_.cluster) m.nodes.push_back(std::make_unique<node>(e));
  } else {
    m.nodes.push_back(std::make_unique<node>(opt_.endpoint));
    m.topology_known = true;
  }
  m.buffer = std::to_string(opt_.recovery_buffer);
  m.ttl = std::to_string(opt_.recovery_ttl_ms);
  m.replay_max = std::to_string(opt_.recovery_max_replay);
  m.all_pattern = redis::pattern_for_glob(opt_.prefix, "*");
  if (opt_.pattern_mode) {
    // "*" covers the @ channels too (topics beginning with @, broadcasts, users, this node).
    m.want_patterns.insert(redis::pattern_for_glob(opt_.prefix, "*"));
  } else {
    for (auto [kind, key] :
         {std::pair{redis::channel_kind::broadcast, std::string_view{}},
          std::pair{redis::channel_kind::command, std::string_view(opt_.instance_id)}}) {
      std::string name;
      redis::append_channel(name, opt_.prefix, kind, key);
      m.want_channels.insert(std::move(name));
    }
  }
}

redis_bridge::~redis_bridge() {
  stop();
  impl& m = *impl_;
  for (auto& h : m.held) fanout::release(h.f);
  ring_.drain(~size_t{0}, [](fanout::delivery& d) { fanout::release(d.f); });
  for (auto& n : m.nodes) {
    for (connection* c : {&n->s, &n->p}) {
      if (c->fd >= 0) close(c->fd);
      if (c->reader) redisReaderFree(c->reader);
    }
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

bool redis_bridge::publish(uint32_t producer, fanout::delivery_kind kind, fanout::frame* f,
                           bool wake, bool sequenced) {
  fanout::delivery d;
  d.kind = kind;
  d.arg = sequenced ? 1 : 0;
  d.f = f;
  fanout::retain(f);
  bool ok;
  if (producer < opt_.producers) {
    ok = wake ? ring_.try_push(producer, d) : ring_.try_push_no_wake(producer, d);
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
    // The bridge takes the whole queue every pass: it is this full only when Redis stalls.
    if (commands_.size() >= commands_queued_max) {
      c_.commands_queue_full.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    commands_.emplace_back(std::string(instance), std::string(json));
  }
  wake();
  return true;
}

bool redis_bridge::fetch_history(redis_history_request request) {
  {
    std::lock_guard lock(mu_);
    // Every history not answered yet (queued, waiting for its channel, or asked of Redis).
    if (fetches_outstanding_ >= fetches_queued_max) {
      c_.history_refused.add();
      return false;
    }
    ++fetches_outstanding_;
    request.asked_ms = now_ms();
    fetches_.push_back(std::move(request));
  }
  wake();
  return true;
}

void redis_bridge::queue_group_member(std::string_view topic, std::string_view member, bool join) {
  {
    std::lock_guard lock(mu_);
    queue_group_ops_.push_back({std::string(topic), std::string(member), join});
  }
  wake();
}

bool redis_bridge::add_inbound(uint32_t producer, std::initializer_list<std::string_view> fields) {
  inbound_lane& l = *inbound_[producer < opt_.producers ? producer : opt_.producers];
  {
    std::lock_guard lock(l.mu);
    if (l.resp.size() >= opt_.inbound_bytes_max) {
      c_.inbound_dropped.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    // XADD <prefix>inbound MAXLEN ~ N * field value ...: the head is formatted once.
    redis::append_array_header(l.resp, xadd_head_args + fields.size());
    l.resp.append(xadd_head_);
    for (std::string_view f : fields) redis::append_bulk(l.resp, f);
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

// The node a channel or key lives on: the one Redis, or the master owning its slot (null while
// the cluster's slot map does not name one).
redis_bridge::node* redis_bridge::owner_of(std::string_view key) {
  impl& m = *impl_;
  if (!m.cluster) return m.nodes[0].get();
  int32_t i = m.slots[redis::key_slot(key)];
  return i < 0 ? nullptr : m.nodes[size_t(i)].get();
}

bool redis_bridge::all_publishers_ready() const {
  const impl& m = *impl_;
  if (!m.topology_known) return false;
  for (const auto& n : m.nodes) {
    if (n->active && !n->p.ready()) return false;
  }
  return true;
}

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
  node& n = *c.owner;
  bool was_up = c.ready();
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  if (c.reader) redisReaderFree(c.reader);
  c.reader = nullptr;
  c.out.clear();
  c.out_off = 0;
  c.handshake_left = 0;
  if (was_up) c_.disconnects.add();
  if (&c == &n.p) {
    for (const tag_run& r : c.tags) {
      if (r.t == tag::publish) {
        c_.lost.add(r.n);
      } else if (r.t == tag::sequence) {
        c_.lost.add(r.n);
      } else if (r.t == tag::xadd) {
        c_.inbound_lost.add(r.n);
      } else if (r.t == tag::slots) {
        m.slots_query_out = false;
      }
    }
    while (!n.fetch_out.empty()) {  // unanswered: the subscribers get "not recovered"
      answer_unanswered(n.fetch_out.front());
      n.fetch_out.pop_front();
    }
    for (pending_presence& w : n.presence_out) {  // they may not have run
      presence_rewrite(w.topic);
      presence_written(w);
    }
    n.presence_out.clear();
    while (!n.query_out.empty()) {
      c_.presence_queries_failed.add();
      sink_.presence_answer(n.query_out.front(), redis_presence_answer{});
      n.query_out.pop_front();
      std::lock_guard lock(mu_);
      --presence_queries_outstanding_;
    }
    // Its last commands may still run after the close: no fence proves their echoes for a while.
    n.acked_seq = n.written_seq;
    n.fence_hold_until = now_ms() + fence_hold_ms;
  } else {
    n.requested_channels.clear();
    n.requested_patterns.clear();
    c_.subscriptions.sub(n.confirmed_channels.size() + n.confirmed_patterns.size());
    n.confirmed_channels.clear();
    n.confirmed_patterns.clear();
    n.ops.clear();
    n.pending.clear();
    n.fence_out = false;
    n.dup_left = 0;
    if (opt_.recovery && was_up) sink_.history_lost({});  // the live stream has a hole
    if (was_up) {
      sink_.queue_groups_lost({});
      // Every view is gone (not only this node's): every topic asks for a marker again.
      for (const auto& [topic, members] : m.queue_group_own)
        if (!members.empty()) m.queue_group_dirty.insert_or_assign(topic, true);
    }
  }
  c.tags.clear();
  c.st = connection::state::down;
  up_.store(false, std::memory_order_release);
  if (n.active && (was_up || !m.logged_down || !m.logged_first_failure)) {
    log_event(opt_.quiet, log::level::warn, "redis_down",
              std::string(c.name) + " connection to " + n.name + " lost: " + why +
                  "; reconnecting with backoff",
              {{"connection", c.name}, {"node", n.name}});
    m.logged_down = true;
    m.logged_first_failure = true;
  }
  if (m.cluster && was_up) m.next_refresh_at = 0;  // a failover moves slots: ask again soon
  schedule_retry(c);
}

void redis_bridge::connect(connection& c) {
  const redis::endpoint& e = c.owner->ep;
  int fd = socket(e.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return disconnect(c, std::string("socket: ") + std::strerror(errno));
  if (!e.unix_socket) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  c.fd = fd;
  c.since_ms = now_ms();
  c.last_reply_ms = c.since_ms;
  c.keepalive_out = false;
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
  const redis::endpoint& e = c.owner->ep;
  if (!e.password.empty()) {
    if (e.user.empty()) {
      redis::append_command(c.out, {"AUTH", e.password});
    } else {
      redis::append_command(c.out, {"AUTH", e.user, e.password});
    }
    c.push_tag(tag::auth);
    ++c.handshake_left;
  }
  if (!m.cluster && &c == &c.owner->p && e.db != 0) {
    std::string db = std::to_string(e.db);
    redis::append_command(c.out, {"SELECT", db});
    c.push_tag(tag::select);
    ++c.handshake_left;
  }
  if (&c == &c.owner->p) {  // queue groups, on every new publisher connection
    redis::append_command(c.out, {"SCRIPT", "LOAD", redis::queue_group_script});
    c.push_tag(tag::script_queue_group);
    redis::append_command(c.out, {"SCRIPT", "LOAD", redis::presence_script});
    c.push_tag(tag::script_presence);
    redis::append_command(c.out, {"SCRIPT", "LOAD", redis::presence_query_script});
    c.push_tag(tag::script_presence_query);
    c.handshake_left += 3;
  }
  if (opt_.recovery && &c == &c.owner->p) {  // the scripts, on every new publisher connection
    redis::append_command(c.out, {"SCRIPT", "LOAD", redis::sequence_script});
    c.push_tag(tag::script_sequence);
    redis::append_command(c.out, {"SCRIPT", "LOAD", redis::history_script});
    c.push_tag(tag::script_history);
    c.handshake_left += 2;
  }
  // Ready only once Redis answered: a listening socket whose server does not run (stopped,
  // hung) still completes the TCP handshake.
  redis::append_command(c.out, {"PING"});
  c.push_tag(tag::ping);
  ++c.handshake_left;
}

void redis_bridge::became_ready(connection& c) {
  impl& m = *impl_;
  node& n = *c.owner;
  c.st = connection::state::ready;
  c_.connects.add();
  if (&c == &n.s) {
    // Everything wanted that lives here, again (a new connection holds no subscription).
    for (const std::string& ch : m.want_channels) {
      if (owner_of(ch) == &n) subscribe_on(n, ch, false);
    }
    if (!m.cluster) {
      for (const std::string& pat : m.want_patterns) subscribe_on(n, pat, true);
    }
    flush_subscriptions(n);
  } else {
    // What the lost connection wrote may not have run: tell Redis again.
    for (const auto& [topic, members] : m.queue_group_own)
      m.queue_group_dirty.try_emplace(topic, false);
    std::vector<std::string> topics;
    for (const auto& [topic, users] : m.presence_own) topics.push_back(topic);
    for (const std::string& topic : topics) presence_rewrite(topic);
    if (m.cluster && !m.slots_query_out) m.next_refresh_at = 0;  // the first P up asks for the map
  }
  if (m.logged_down) {
    log_event(opt_.quiet, log::level::info, "redis_up",
              std::string(c.name) + " connected to " + n.name,
              {{"connection", c.name}, {"node", n.name}});
    m.logged_down = false;
  }
}

void redis_bridge::subscribe_on(node& n, const std::string& name, bool glob) {
  auto& requested = glob ? n.requested_patterns : n.requested_channels;
  if (n.s.ready() && requested.insert(name).second) n.pending.push_back({true, glob, name});
}

void redis_bridge::unsubscribe_on(node& n, const std::string& name, bool glob) {
  auto& requested = glob ? n.requested_patterns : n.requested_channels;
  if (requested.erase(name) && n.s.ready()) n.pending.push_back({false, glob, name});
}

// Writes what was asked, in the order asked (an unsubscribe then a resubscribe of one channel
// stay in that order): each run of one verb is one command, of at most subscribe_batch names
// (a cluster takes one slot per SSUBSCRIBE: one name each).
void redis_bridge::flush_subscriptions(node& n) {
  impl& m = *impl_;
  const size_t batch = m.cluster ? 1 : subscribe_batch;
  std::vector<std::string_view> args;
  for (size_t i = 0; i < n.pending.size();) {
    const node::op& first = n.pending[i];
    std::string_view verb = m.cluster    ? (first.subscribe ? "SSUBSCRIBE" : "SUNSUBSCRIBE")
                            : first.glob ? (first.subscribe ? "PSUBSCRIBE" : "PUNSUBSCRIBE")
                                         : (first.subscribe ? "SUBSCRIBE" : "UNSUBSCRIBE");
    args.assign(1, verb);
    size_t j = i;
    while (j < n.pending.size() && j - i < batch && n.pending[j].subscribe == first.subscribe &&
           n.pending[j].glob == first.glob)
      args.push_back(n.pending[j++].name);
    redis::append_command(n.s.out, args);
    c_.subscribe_commands.add();
    i = j;
  }
  for (node::op& o : n.pending) n.ops.push_back(std::move(o));
  n.pending.clear();
}

// Every wanted channel asked of its owner and of no other node (after the slot map changed).
void redis_bridge::reconcile_all() {
  impl& m = *impl_;
  for (auto& n : m.nodes) {
    std::vector<std::string> moved;
    for (const std::string& ch : n->requested_channels) {
      if (!m.want_channels.count(ch) || owner_of(ch) != n.get()) moved.push_back(ch);
    }
    for (const std::string& ch : moved) unsubscribe_on(*n, ch, false);
  }
  m.unplaced = false;
  for (const std::string& ch : m.want_channels) {
    if (node* o = owner_of(ch)) {
      subscribe_on(*o, ch, false);
    } else {
      m.unplaced = true;
    }
  }
  for (auto& n : m.nodes) flush_subscriptions(*n);
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
  for (auto& [kind, key] : m.dirty) {
    bool glob = kind == redis_interest::pattern && fanout::is_glob(key);
    if (glob && m.cluster) continue;  // sharded pub/sub has no patterns: local publications only
    bool wanted = kind == redis_interest::user ? router_.wants_user(key) : router_.wants(key);
    if (!wanted && kind == redis_interest::pattern && !glob) {
      auto own = m.queue_group_own.find(key);
      wanted = own != m.queue_group_own.end() && !own->second.empty();
    }
    std::string name;
    if (glob) {
      name = redis::pattern_for_glob(opt_.prefix, key);
    } else {
      redis::append_channel(
          name, opt_.prefix,
          kind == redis_interest::user ? redis::channel_kind::user : redis::channel_kind::topic,
          key);
    }
    node* o = glob ? m.nodes[0].get() : owner_of(name);
    if (wanted) {
      (glob ? m.want_patterns : m.want_channels).insert(name);
      if (o) subscribe_on(*o, name, glob);
    } else {
      (glob ? m.want_patterns : m.want_channels).erase(name);
      for (auto& n : m.nodes) unsubscribe_on(*n, name, glob);
    }
  }
  m.dirty.clear();
  for (auto& n : m.nodes) flush_subscriptions(*n);
}

void redis_bridge::take_publications() {
  impl& m = *impl_;
  bool p_ready = all_publishers_ready();
  ring_.drain(drain_batch, [&](fanout::delivery& d) {
    uint64_t bytes = held_cost(*d.f);
    if (m.held_bytes + bytes > opt_.buffer_bytes_max) {
      c_.dropped_buffer.add();
      fanout::release(d.f);
      return;
    }
    if (!p_ready) c_.buffered_total.add();
    m.held.push_back({d.kind, d.f, d.arg != 0});
    m.held_bytes += bytes;
  });
}

void redis_bridge::write_publications() {
  impl& m = *impl_;
  std::string_view verb = m.cluster ? "SPUBLISH" : "PUBLISH";
  while (!m.held.empty()) {
    impl::held_pub h = m.held.front();
    m.channel.clear();
    redis::append_channel(m.channel, opt_.prefix,
                          h.kind == fanout::delivery_kind::topic ? redis::channel_kind::topic
                          : h.kind == fanout::delivery_kind::broadcast
                              ? redis::channel_kind::broadcast
                              : redis::channel_kind::user,
                          h.f->key());
    node* n = owner_of(m.channel);
    // In order: the first that cannot go yet holds the rest back.
    if (!n || !n->p.ready() || n->p.pending_out() >= out_pending_max) break;
    m.held.pop_front();
    std::string_view payload = h.f->payload();
    if (h.sequenced) {
      write_sequenced(*n, h.f->key(), payload);
      m.held_bytes -= held_cost(*h.f);
      fanout::release(h.f);
      continue;
    }
    redis::append_command(n->p.out, {verb, m.channel, payload});
    n->p.push_tag(tag::publish);
    ++n->written_seq;
    // Recorded even while S is down: a PUBLISH written now may run after S resubscribed.
    n->echo.record(redis::fingerprint(m.channel, payload), n->written_seq);
    if (n->echo.pending() > echo_records_max)
      n->echo.expire_through(n->written_seq - echo_records_max);
    m.held_bytes -= held_cost(*h.f);
    fanout::release(h.f);
  }
  c_.buffered.set(m.held.size());
}

void redis_bridge::answer_unanswered(redis_history_request& request) {
  c_.history_failed.add();
  answered_one();
  sink_.history(request, redis_history_answer{});
}

void redis_bridge::answered_one() {
  std::lock_guard lock(mu_);
  --fetches_outstanding_;
}

// Histories whose channel subscription is confirmed go out (EVALSHA history on the channel's
// node); those waiting longer than --redis-timeout are answered "not recovered".
void redis_bridge::write_fetches(uint64_t now) {
  impl& m = *impl_;
  {
    std::lock_guard lock(mu_);
    for (auto& f : fetches_) m.fetch_wait.push_back(std::move(f));
    fetches_.clear();
  }
  size_t kept = 0;
  for (size_t i = 0; i < m.fetch_wait.size(); ++i) {
    redis_history_request& f = m.fetch_wait[i];
    node* n = topic_node(f.topic);
    bool subscribed = n && hears(*n, m.channel);
    if (subscribed && n->p.ready() && !m.history_sha.empty()) {
      redis::recovery_keys(opt_.prefix, m.channel, m.meta, m.log);
      m.number = f.has_offset ? std::to_string(f.offset) : std::string("-1");
      redis::append_command(
          n->p.out, {"EVALSHA", m.history_sha, "2", m.meta, m.log,
                     f.epoch.empty() ? std::string_view("-") : f.epoch, m.number, m.replay_max});
      n->p.push_tag(tag::history);
      n->fetch_out.push_back(std::move(f));
      continue;
    }
    if (now >= f.asked_ms + opt_.timeout_ms) {
      answer_unanswered(f);
      continue;
    }
    if (kept != i) m.fetch_wait[kept] = std::move(f);
    ++kept;
  }
  m.fetch_wait.resize(kept);
}

// The node of topic's channel (m.channel is then that channel's name).
redis_bridge::node* redis_bridge::topic_node(std::string_view topic) {
  impl& m = *impl_;
  m.channel.clear();
  redis::append_channel(m.channel, opt_.prefix, redis::channel_kind::topic, topic);
  return owner_of(m.channel);
}

// Whether n's S has confirmed it hears channel (directly, or through the one pattern).
bool redis_bridge::hears(node& n, const std::string& channel) const {
  return opt_.pattern_mode
             ? n.confirmed_patterns.find(impl_->all_pattern) != n.confirmed_patterns.end()
             : n.confirmed_channels.find(channel) != n.confirmed_channels.end();
}

void redis_bridge::take_queue_group_ops() {
  impl& m = *impl_;
  std::vector<queue_group_op> ops;
  {
    std::lock_guard lock(mu_);
    if (queue_group_ops_.empty()) return;
    ops.swap(queue_group_ops_);
  }
  std::vector<std::pair<redis_interest, std::string>> interest;
  for (queue_group_op& op : ops) {
    auto [it, added] = m.queue_group_own.try_emplace(op.topic);
    std::vector<std::string>& own = it->second;
    bool was_empty = own.empty();
    auto at = std::find(own.begin(), own.end(), op.member);
    if (op.join && at == own.end()) own.push_back(std::move(op.member));
    if (!op.join && at != own.end()) own.erase(at);
    m.queue_group_dirty.try_emplace(op.topic, false);
    // The channel is wanted while this instance has members there (apply_interest asks).
    if (was_empty != own.empty()) interest.emplace_back(redis_interest::pattern, op.topic);
  }
  if (interest.empty()) return;
  std::lock_guard lock(mu_);  // apply_interest (next) reads them from dirty_
  for (auto& e : interest) dirty_.push_back(std::move(e));
}

// Each topic whose members changed (or is due for renewal) gets queue_group_script on its
// channel's node, once this instance's subscription to the channel is confirmed (a topic whose
// members all left is written as soon as P is up).
void redis_bridge::write_queue_groups(uint64_t now) {
  impl& m = *impl_;
  if (now >= m.queue_group_refresh_at) {
    m.queue_group_refresh_at = now + opt_.member_ttl_ms / 3;
    for (const auto& [topic, members] : m.queue_group_own)
      m.queue_group_dirty.try_emplace(topic, false);
  }
  if (m.queue_group_dirty.empty() || m.queue_group_sha.empty()) return;
  if (m.qg_keep.empty()) m.qg_keep = std::to_string(opt_.member_ttl_ms);
  std::string_view verb = m.cluster ? "SPUBLISH" : "PUBLISH";
  for (auto it = m.queue_group_dirty.begin(); it != m.queue_group_dirty.end();) {
    const std::string& topic = it->first;
    auto own = m.queue_group_own.find(topic);
    bool empty = own == m.queue_group_own.end() || own->second.empty();
    node* n = topic_node(topic);
    bool subscribed = n && hears(*n, m.channel);
    if (!n || !n->p.ready() || (!empty && !subscribed)) {
      ++it;
      continue;
    }
    redis::queue_group_keys(opt_.prefix, m.channel, m.qg_members, m.qg_instances, m.qg_order);
    std::vector<std::string_view> args = {"EVALSHA",
                                          m.queue_group_sha,
                                          "3",
                                          m.qg_members,
                                          m.qg_instances,
                                          m.qg_order,
                                          opt_.instance_id,
                                          m.qg_keep,
                                          m.channel,
                                          verb,
                                          it->second ? "1" : "0"};
    if (!empty)
      for (const std::string& member : own->second) args.push_back(member);
    redis::append_command(n->p.out, args);
    n->p.push_tag(tag::queue_group);
    if (empty && own != m.queue_group_own.end()) m.queue_group_own.erase(own);
    it = m.queue_group_dirty.erase(it);
  }
}

void redis_bridge::presence_changed(std::string_view topic, std::string_view user) {
  {
    std::lock_guard lock(mu_);
    presence_ops_.push_back({std::string(topic), std::string(user)});
  }
  wake();
}

bool redis_bridge::presence_query(redis_presence_query query) {
  {
    std::lock_guard lock(mu_);
    if (presence_queries_outstanding_ >= presence_queries_max) return false;
    ++presence_queries_outstanding_;
    query.asked_ms = now_ms();
    presence_queries_.push_back(std::move(query));
  }
  wake();
  return true;
}

void redis_bridge::take_presence_ops() {
  impl& m = *impl_;
  std::vector<presence_op> ops;
  std::vector<redis_presence_query> queries;
  {
    std::lock_guard lock(mu_);
    ops.swap(presence_ops_);
    queries.swap(presence_queries_);
  }
  for (redis_presence_query& q : queries) m.query_wait.push_back(std::move(q));
  for (presence_op& op : ops) m.presence_dirty[op.topic].insert(std::move(op.user));
}

// Every user of topic this instance told Redis of is written again, data included (after a lost
// connection, a failed write, or when the script says this instance had lapsed).
void redis_bridge::presence_rewrite(const std::string& topic) {
  impl& m = *impl_;
  auto own = m.presence_own.find(topic);
  if (own == m.presence_own.end()) return;
  auto& dirty = m.presence_dirty[topic];
  for (auto& [user, st] : own->second) {
    st.data_sent = false;
    dirty.insert(user);
  }
}

// Each topic with changed members (or due for renewal) gets presence_script on its channel's
// node: right away when it only removes, otherwise once this instance's subscription to the
// channel is confirmed (so its own subscribers hear the events). A user's count and data are
// read from the application when written (the truth, whatever order the shards reported in);
// data goes only when it changed since this instance last sent it. Queries go out as they come.
void redis_bridge::write_presence(uint64_t now) {
  impl& m = *impl_;
  if (now >= m.presence_refresh_at) {
    m.presence_refresh_at = now + opt_.member_ttl_ms / 3;
    for (const auto& [topic, users] : m.presence_own) m.presence_dirty.try_emplace(topic);
  }
  size_t kept = 0;
  for (size_t i = 0; i < m.query_wait.size(); ++i) {
    redis_presence_query& q = m.query_wait[i];
    node* n = topic_node(q.topic);
    if (n && n->p.ready() && !m.presence_query_sha.empty()) {
      redis::presence_keys(opt_.prefix, m.channel, m.pd, m.pt, m.pc, m.pi);
      redis::append_command(n->p.out, {"EVALSHA", m.presence_query_sha, "2", m.pd, m.pt});
      n->p.push_tag(tag::presence_query);
      n->query_out.push_back(std::move(q));
      continue;
    }
    if (now >= q.asked_ms + opt_.timeout_ms) {
      c_.presence_queries_failed.add();
      sink_.presence_answer(q, redis_presence_answer{});
      std::lock_guard lock(mu_);
      --presence_queries_outstanding_;
      continue;
    }
    if (kept != i) m.query_wait[kept] = std::move(q);
    ++kept;
  }
  m.query_wait.resize(kept);
  if (m.presence_sha.empty()) return;
  if (m.qg_keep.empty()) m.qg_keep = std::to_string(opt_.member_ttl_ms);
  std::string_view verb = m.cluster ? "SPUBLISH" : "PUBLISH";
  for (auto it = m.presence_dirty.begin(); it != m.presence_dirty.end();) {
    const std::string& topic = it->first;
    node* n = topic_node(topic);
    auto retry = m.presence_retry_at.find(topic);
    if (!n || !n->p.ready() || (retry != m.presence_retry_at.end() && now < retry->second)) {
      ++it;
      continue;
    }
    // The users' state now (read from the application: the truth, whatever order the shards
    // reported in).
    struct now_state {
      const std::string* user;
      uint32_t connections;
      std::string data;
    };
    std::vector<now_state> users;
    bool adds = false;
    for (const std::string& user : it->second) {
      std::string data;
      uint32_t c = sink_.presence_state(topic, user, data);
      adds = adds || c > 0;
      users.push_back({&user, c, std::move(data)});
    }
    if (adds && !hears(*n, m.channel)) {
      ++it;
      continue;
    }
    auto& own = m.presence_own[topic];
    std::vector<std::string> counts;
    counts.reserve(users.size());
    pending_presence written{topic, {}};
    std::vector<std::string_view> triplets;
    bool full = true;  // every user of this instance there, with its data: restores a lapse
    for (now_state& u : users) {
      impl::own_presence& st = own[*u.user];
      if (u.connections == 0 && st.connections == 0 && st.data_sent) continue;  // nothing to say
      bool send_data = u.connections > 0 && (!st.data_sent || st.data != u.data);
      full = full && (u.connections == 0 || send_data);
      st.connections = u.connections;
      st.data = std::move(u.data);
      st.data_sent = true;
      ++st.inflight;
      counts.push_back(std::to_string(st.connections));
      triplets.push_back(*u.user);
      triplets.push_back(counts.back());
      triplets.push_back(
          send_data ? (st.data.empty() ? std::string_view("{}") : std::string_view(st.data))
                    : std::string_view());
      written.users.push_back(*u.user);
    }
    bool holds = false;
    for (const auto& [user, st] : own) {
      holds = holds || st.connections > 0;
      full = full && (st.connections == 0 || it->second.count(user));
    }
    redis::presence_keys(opt_.prefix, m.channel, m.pd, m.pt, m.pc, m.pi);
    m.topic_json.clear();
    proto::wse_append_json_string(m.topic_json, topic);
    std::vector<std::string_view> args = {"EVALSHA",
                                          m.presence_sha,
                                          "4",
                                          m.pd,
                                          m.pt,
                                          m.pc,
                                          m.pi,
                                          opt_.instance_id,
                                          m.qg_keep,
                                          m.channel,
                                          verb,
                                          m.topic_json,
                                          holds ? "1" : "0",
                                          full ? "1" : "0"};
    args.insert(args.end(), triplets.begin(), triplets.end());
    redis::append_command(n->p.out, args);
    n->p.push_tag(tag::presence);
    n->presence_out.push_back(std::move(written));
    it = m.presence_dirty.erase(it);
  }
}

// A write of this instance's users of one topic is over (answered, or its connection lost):
// users left with no connection here and no write in flight are forgotten.
void redis_bridge::presence_written(const pending_presence& w) {
  impl& m = *impl_;
  auto own = m.presence_own.find(w.topic);
  if (own == m.presence_own.end()) return;
  auto dirty = m.presence_dirty.find(w.topic);
  for (const std::string& user : w.users) {
    auto u = own->second.find(user);
    if (u == own->second.end()) continue;
    if (u->second.inflight) --u->second.inflight;
    if (u->second.connections != 0 || u->second.inflight != 0) continue;
    if (dirty != m.presence_dirty.end() && dirty->second.count(user)) continue;
    own->second.erase(u);
  }
  if (own->second.empty() && dirty == m.presence_dirty.end()) {
    m.presence_own.erase(own);
    m.presence_retry_at.erase(w.topic);
  }
}

void redis_bridge::on_presence_reply(node& n, const redisReply* r) {
  impl& m = *impl_;
  if (n.presence_out.empty()) return;
  pending_presence w = std::move(n.presence_out.front());
  n.presence_out.pop_front();
  if (r->type == REDIS_REPLY_ERROR) {
    c_.presence_errors.add();
    if (str_of(r).starts_with("NOSCRIPT")) disconnect(n.p, "the presence script was flushed");
    presence_rewrite(w.topic);  // it may not have run: all again, in a second
    m.presence_retry_at.insert_or_assign(w.topic, now_ms() + 1000);
    presence_written(w);
    return;
  }
  c_.presence_writes.add();
  m.presence_retry_at.erase(w.topic);
  // 2: this instance's members there had lapsed (another instance dropped them) and the write
  // was not whole: nothing applied; all again, with their data.
  if (r->type == REDIS_REPLY_INTEGER && r->integer == 2) presence_rewrite(w.topic);
  presence_written(w);
}

void redis_bridge::on_presence_query_reply(node& n, const redisReply* r) {
  if (n.query_out.empty()) return;
  redis_presence_query q = std::move(n.query_out.front());
  n.query_out.pop_front();
  {
    std::lock_guard lock(mu_);
    --presence_queries_outstanding_;
  }
  redis_presence_answer a;
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
      r->element[0]->type == REDIS_REPLY_ARRAY && r->element[1]->type == REDIS_REPLY_ARRAY) {
    a.answered = true;
    for (size_t part = 0; part < 2; ++part) {
      const redisReply* list = r->element[part];
      for (size_t i = 0; i + 1 < list->elements; i += 2)
        (part == 0 ? a.data : a.totals)
            .emplace_back(str_of(list->element[i]), str_of(list->element[i + 1]));
    }
    c_.presence_queries.add();
  } else {
    c_.presence_queries_failed.add();
  }
  sink_.presence_answer(q, a);
}

void redis_bridge::on_history_reply(node& n, const redisReply* r) {
  if (n.fetch_out.empty()) return;
  redis_history_request f = std::move(n.fetch_out.front());
  n.fetch_out.pop_front();
  if (r->type != REDIS_REPLY_ARRAY) {
    if (r->type == REDIS_REPLY_ERROR && str_of(r).starts_with("NOSCRIPT"))
      disconnect(n.p, "the history script was flushed");
    return answer_unanswered(f);
  }
  redis_history_answer a;
  a.answered = true;
  if (r->elements >= 3) {
    std::string_view e = str_of(r->element[0]);
    uint32_t epoch = 0;
    auto [end, ec] = std::from_chars(e.data(), e.data() + e.size(), epoch, 16);
    if (e.size() != 8 || ec != std::errc() || end != e.data() + e.size() ||
        r->element[1]->type != REDIS_REPLY_INTEGER || r->element[1]->integer < 1 ||
        r->element[2]->type != REDIS_REPLY_INTEGER)
      return answer_unanswered(f);
    a.has_history = true;
    a.epoch = epoch;
    a.next = uint64_t(r->element[1]->integer);
    a.recovered = r->element[2]->integer == 1;
    for (size_t i = 3; i < r->elements; ++i) a.messages.push_back(str_of(r->element[i]));
  }
  c_.history_answered.add();
  answered_one();
  sink_.history(f, a);
}

// EVALSHA sequence: Redis stamps the publication with the topic's next offset, keeps it and
// publishes it (no echo record: this instance delivers it when it comes back, like every other).
void redis_bridge::write_sequenced(node& n, std::string_view topic, std::string_view payload) {
  impl& m = *impl_;
  redis::recovery_keys(opt_.prefix, m.channel, m.meta, m.log);
  m.topic_json.clear();
  proto::wse_append_json_string(m.topic_json, topic);
  m.rest.clear();
  if (payload.size() > 2) {
    m.rest.push_back(',');
    m.rest.append(payload.substr(1));
  } else {
    m.rest.push_back('}');
  }
  char epoch[9];
  std::snprintf(epoch, sizeof epoch, "%08x", uint32_t(m.rng()));
  redis::append_command(
      n.p.out, {"EVALSHA", m.sequence_sha, "2", m.meta, m.log, m.channel, m.topic_json, m.rest,
                std::string_view(epoch, 8), m.buffer, m.ttl, m.cluster ? "SPUBLISH" : "PUBLISH"});
  n.p.push_tag(tag::sequence);
}

void redis_bridge::write_commands() {
  impl& m = *impl_;
  {
    std::lock_guard lock(mu_);
    m.commands.swap(commands_);
  }
  std::string_view verb = m.cluster ? "SPUBLISH" : "PUBLISH";
  for (auto& [instance, json] : m.commands) {
    std::string channel;
    redis::append_channel(channel, opt_.prefix, redis::channel_kind::command, instance);
    node* n = owner_of(channel);
    if (!n || !n->p.ready()) {
      c_.commands_unroutable.add();  // Redis went away after the caller was told 202
      continue;
    }
    redis::append_command(n->p.out, {verb, channel, json});
    n->p.push_tag(tag::command);
  }
  m.commands.clear();
  if (!opt_.inbound_stream) return;
  // Stream entries wait in their lanes while Redis is away (add_inbound refuses, and counts,
  // what would overfill a lane).
  node* n = owner_of(stream_key_);
  if (!n || !n->p.ready() || n->p.pending_out() >= out_pending_max) return;
  for (auto& lane : inbound_) {
    uint32_t count;
    {
      std::lock_guard lock(lane->mu);
      if (lane->count == 0) continue;
      m.inbound_resp.swap(lane->resp);
      count = lane->count;
      lane->count = 0;
    }
    n->p.out.append(m.inbound_resp);
    n->p.push_tag(tag::xadd, count);
    m.inbound_resp.clear();
  }
}

void redis_bridge::send_fences() {
  impl& m = *impl_;
  uint64_t now = 0;
  for (auto& np : m.nodes) {
    node& n = *np;
    if (n.fence_hold_until) {  // cleared once over, fence or not (it shortens the poll)
      if (!now) now = now_ms();
      if (now < n.fence_hold_until) continue;
      n.fence_hold_until = 0;
    }
    if (n.fence_out || !n.s.ready() || n.acked_seq <= n.fenced_seq) continue;
    redis::append_command(n.s.out, {"PING"});
    n.fence_out = true;
    n.fence_target = n.acked_seq;
  }
}

// Cluster: CLUSTER SLOTS on a ready publisher connection, at start, every few seconds, and soon
// after a redirect or a lost connection.
void redis_bridge::refresh_topology(uint64_t now) {
  impl& m = *impl_;
  if (!m.cluster || m.slots_query_out || now < m.next_refresh_at) return;
  for (auto& n : m.nodes) {
    if (!n->p.ready()) continue;
    redis::append_command(n->p.out, {"CLUSTER", "SLOTS"});
    n->p.push_tag(tag::slots);
    m.slots_query_out = true;
    m.next_refresh_at = now + topology_refresh_ms;
    return;
  }
  m.next_refresh_at = now + redirect_refresh_ms;  // no publisher connection up: look again soon
}

void redis_bridge::apply_topology(node& answering, const redisReply* r) {
  impl& m = *impl_;
  m.slots_query_out = false;
  if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) return;
  std::vector<int32_t> slots(cluster_slots, -1);
  std::vector<bool> master(m.nodes.size(), false);
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* range = r->element[i];
    if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) continue;
    const redisReply* who = range->element[2];
    if (range->element[0]->type != REDIS_REPLY_INTEGER ||
        range->element[1]->type != REDIS_REPLY_INTEGER || who->type != REDIS_REPLY_ARRAY ||
        who->elements < 2 || who->element[1]->type != REDIS_REPLY_INTEGER)
      continue;
    long long first = range->element[0]->integer, last = range->element[1]->integer;
    if (first < 0 || last >= cluster_slots || first > last) continue;
    redis::endpoint e = opt_.cluster.front();  // the seeds' credentials
    std::string_view host = str_of(who->element[0]);
    // An empty host means "the address you reached me at" (the node that answered).
    e.host = !host.empty() && host != "?" ? std::string(host) : answering.ep.host;
    e.port = uint16_t(who->element[1]->integer);
    std::string name = e.text();
    size_t index = 0;
    while (index < m.nodes.size() && m.nodes[index]->name != name) ++index;
    if (index == m.nodes.size()) {
      std::string why;
      if (!redis::resolve(e, why)) {
        log_event(opt_.quiet, log::level::warn, "redis_cluster_node",
                  "cluster node " + name + ": " + why, {{"node", name}});
        continue;
      }
      m.nodes.push_back(std::make_unique<node>(e));
      master.push_back(false);
      log_event(opt_.quiet, log::level::info, "redis_cluster_node",
                "cluster node " + name + " joins", {{"node", name}});
    }
    master[index] = true;
    for (long long sl = first; sl <= last; ++sl) slots[size_t(sl)] = int32_t(index);
  }
  m.slots = std::move(slots);
  m.topology_known = true;
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    node& n = *m.nodes[i];
    n.active = master[i];
    if (!n.active) {  // no slot any more (or a seed that is not a master): let it go
      for (connection* c : {&n.s, &n.p}) {
        if (c->st != connection::state::down) disconnect(*c, "not a master in the slot map");
        c->retry_at = UINT64_MAX;
      }
    } else {
      for (connection* c : {&n.s, &n.p}) {
        if (c->st == connection::state::down && c->retry_at == UINT64_MAX) c->retry_at = 0;
      }
    }
  }
  // Also when nothing changed: a channel refused with MOVED by a master still importing its
  // slot is requested from no node until a later map names that master again.
  reconcile_all();
}

uint32_t redis_bridge::expected_copies(node& n, std::string_view channel) {
  if (n.confirmed_patterns.empty()) return 1;
  uint32_t copies = 0;
  if (n.confirmed_channels.find(channel) != n.confirmed_channels.end()) ++copies;
  for (const std::string& pat : n.confirmed_patterns)
    copies += redis::glob_match(pat, channel) ? 1 : 0;
  return copies ? copies : 1;
}

// One publication as it arrived on S. False: the shards could not take it yet (kept pending).
bool redis_bridge::on_message(node& n, std::string_view channel, std::string_view payload) {
  impl& m = *impl_;
  uint64_t fp = redis::fingerprint(channel, payload);
  if (n.dup_left > 0 && fp == n.last_fp) {
    --n.dup_left;
    c_.received_duplicate.add();
    return true;
  }
  n.last_fp = fp;
  n.dup_left = expected_copies(n, channel) - 1;
  if (!n.echo.empty() && n.echo.consume(fp)) {
    c_.received_own.add();
    if (sink_.wants_own_publications() &&
        redis::parse_channel(channel, opt_.prefix, m.key) == redis::channel_kind::topic)
      sink_.own_publication(m.key, payload);
    return true;
  }
  fanout::delivery_kind dk;
  switch (redis::parse_channel(channel, opt_.prefix, m.key)) {
    case redis::channel_kind::topic:
      if (payload.starts_with(redis::queue_group_marker)) {
        sink_.queue_group_marker(m.key, payload.substr(redis::queue_group_marker.size()));
        return true;
      }
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
        case redis_sink::command_status::invalid:
          c_.commands_invalid.add();
          break;
        case redis_sink::command_status::unknown:
          c_.commands_unknown.add();
          break;
        case redis_sink::command_status::busy:
          c_.commands_busy.add();
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
bool redis_bridge::on_s_reply(node& n, const redisReply* r) {
  impl& m = *impl_;
  if (n.s.st == connection::state::handshake) return handshake_reply(n.s, r);
  if (r->type == REDIS_REPLY_ERROR) {
    std::string_view err = str_of(r);
    if (is_redirect(err) && !n.ops.empty()) {  // the slot moved: ask the cluster again
      node::op o = std::move(n.ops.front());
      n.ops.pop_front();
      if (o.subscribe) {
        n.requested_channels.erase(o.name);
        m.unplaced = true;
      }
      m.next_refresh_at = std::min(m.next_refresh_at, now_ms() + redirect_refresh_ms);
      return true;
    }
    disconnect(n.s, "error: " + std::string(err));
    return false;
  }
  if (r->type == REDIS_REPLY_STATUS) {
    if (str_of(r) == "PONG") complete_fence(n);  // a fence while not subscribed to anything
    return true;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) return true;
  std::string_view kind = str_of(r->element[0]);
  if ((kind == "message" || kind == "smessage") && r->elements == 3)
    return on_message(n, str_of(r->element[1]), str_of(r->element[2]));
  if (kind == "pmessage" && r->elements == 4)
    return on_message(n, str_of(r->element[2]), str_of(r->element[3]));
  if (kind == "pong") {
    complete_fence(n);
    return true;
  }
  bool subscribe = kind == "subscribe" || kind == "psubscribe" || kind == "ssubscribe";
  bool glob = kind == "psubscribe" || kind == "punsubscribe";
  if (!subscribe && kind != "unsubscribe" && kind != "punsubscribe" && kind != "sunsubscribe")
    return true;
  std::string name(str_of(r->element[1]));
  bool ours = !n.ops.empty() && n.ops.front().subscribe == subscribe &&
              n.ops.front().glob == glob && n.ops.front().name == name;
  if (ours) n.ops.pop_front();
  auto& confirmed = glob ? n.confirmed_patterns : n.confirmed_channels;
  if (subscribe) {
    if (confirmed.insert(name).second) c_.subscriptions.add();
    // From now on this instance hears the channel: a marker published now starts its count
    // where the others' starts.
    if (!glob && redis::parse_channel(name, opt_.prefix, m.key) == redis::channel_kind::topic) {
      auto own = m.queue_group_own.find(m.key);
      if (own != m.queue_group_own.end() && !own->second.empty())
        m.queue_group_dirty.insert_or_assign(m.key, true);
      if (m.presence_own.find(m.key) != m.presence_own.end())
        m.presence_dirty.try_emplace(m.key);  // written now if it waited for the subscription
    }
    if (glob && opt_.pattern_mode)
      for (const auto& [topic, members] : m.queue_group_own)
        if (!members.empty()) m.queue_group_dirty.insert_or_assign(topic, true);
  } else {
    if (confirmed.erase(name)) {
      c_.subscriptions.sub();
      if (!glob && redis::parse_channel(name, opt_.prefix, m.key) == redis::channel_kind::topic) {
        if (opt_.recovery) sink_.history_lost(m.key);
        sink_.queue_groups_lost(m.key);
      }
    }
    if (!ours && n.requested_channels.erase(name)) {
      // Redis dropped it (a cluster slot moved away): resubscribe where the slot lives now.
      m.unplaced = true;
      m.next_refresh_at = std::min(m.next_refresh_at, now_ms() + redirect_refresh_ms);
      if (node* o = owner_of(name); o && o != &n) {
        subscribe_on(*o, name, false);
        flush_subscriptions(*o);
      }
    }
  }
  return true;
}

// The fence's pong: every echo of the publications it covers has been read.
void redis_bridge::complete_fence(node& n) {
  n.fence_out = false;
  n.fenced_seq = n.fence_target;
  n.echo.expire_through(n.fence_target);
}

// A reply to AUTH, SELECT or the PING of a connection's handshake (S or P); false: refused,
// the connection is dropped.
bool redis_bridge::handshake_reply(connection& c, const redisReply* r) {
  tag t = tag::ping;
  c.pop_tag(t);
  bool optional =
      t == tag::script_queue_group || t == tag::script_presence || t == tag::script_presence_query;
  if (r->type == REDIS_REPLY_ERROR && optional) {
    (t == tag::script_queue_group ? queue_group_script_ : presence_scripts_)
        .store(false, std::memory_order_relaxed);
    (t == tag::script_queue_group ? impl_->queue_group_sha
     : t == tag::script_presence  ? impl_->presence_sha
                                  : impl_->presence_query_sha)
        .clear();
    // Scripting refused (an ACL, a proxy): pub/sub still works; queue groups and presence stay
    // on this instance alone (their SHA1 stays empty). Said once per connection.
    log_event(opt_.quiet, log::level::warn, "redis_script_refused",
              std::string("SCRIPT LOAD refused (queue groups and presence across "
                          "instances off): ") +
                  std::string(str_of(r)),
              {{"node", c.owner->name}});
    if (--c.handshake_left == 0) became_ready(c);
    return true;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    const char* what = t == tag::auth     ? "AUTH"
                       : t == tag::select ? "SELECT"
                       : t == tag::ping   ? "PING"
                                          : "SCRIPT LOAD";
    disconnect(c, std::string(what) + " refused: " + std::string(str_of(r)));
    return false;
  }
  if (t == tag::script_sequence) impl_->sequence_sha = std::string(str_of(r));
  if (t == tag::script_history) impl_->history_sha = std::string(str_of(r));
  if (t == tag::script_queue_group) impl_->queue_group_sha = std::string(str_of(r));
  if (t == tag::script_presence) impl_->presence_sha = std::string(str_of(r));
  if (t == tag::script_presence_query) impl_->presence_query_sha = std::string(str_of(r));
  if (--c.handshake_left == 0) became_ready(c);
  return true;
}

void redis_bridge::on_p_reply(node& n, const redisReply* r) {
  impl& m = *impl_;
  if (n.p.st == connection::state::handshake) {
    handshake_reply(n.p, r);
    return;
  }
  tag t;
  if (!n.p.pop_tag(t)) return;  // not expected: ignore
  bool error = r->type == REDIS_REPLY_ERROR;
  if (error && is_redirect(str_of(r)))
    m.next_refresh_at = std::min(m.next_refresh_at, now_ms() + redirect_refresh_ms);
  switch (t) {
    case tag::auth:
    case tag::select:
    case tag::script_sequence:
    case tag::script_history:
    case tag::script_queue_group:
    case tag::script_presence:
    case tag::script_presence_query:
      return;  // only in the handshake
    case tag::presence:
      return on_presence_reply(n, r);
    case tag::presence_query:
      return on_presence_query_reply(n, r);
    case tag::queue_group:
      (error ? c_.queue_group_errors : c_.queue_group_writes).add();
      if (error && str_of(r).starts_with("NOSCRIPT"))
        disconnect(n.p, "the queue group script was flushed");
      return;
    case tag::sequence:
      (error ? c_.lost : c_.published).add();
      if (!error) c_.sequenced.add();
      if (error && str_of(r).starts_with("NOSCRIPT"))  // flushed: the new connection reloads
        disconnect(n.p, "the sequence script was flushed");
      return;
    case tag::history:
      return on_history_reply(n, r);
    case tag::publish:
      ++n.acked_seq;
      (error ? c_.lost : c_.published).add();
      return;
    case tag::xadd:
      (error ? c_.inbound_error : c_.inbound_added).add();
      return;
    case tag::command:
      if (!error) c_.commands_routed.add();
      return;
    case tag::ping:
      n.p.keepalive_out = false;
      return;
    case tag::slots:
      if (error) {
        m.slots_query_out = false;
        log_event(opt_.quiet, log::level::warn, "redis_slots_refused",
                  "CLUSTER SLOTS refused by " + n.name + ": " + std::string(str_of(r)),
                  {{"node", n.name}});
        return;
      }
      apply_topology(n, r);
      return;
  }
}

// Reads what the socket has (S: not while a received publication is pending) and dispatches
// every complete reply.
void redis_bridge::read_replies(connection& c, bool readable) {
  impl& m = *impl_;
  node& n = *c.owner;
  bool is_s = &c == &n.s;
  if (readable && !(is_s && m.pending)) {
    for (int rounds = 0; rounds < 16; ++rounds) {
      ssize_t got = recv(c.fd, m.read_buf.data(), m.read_buf.size(), 0);
      if (got > 0) {
        if (redisReaderFeed(c.reader, m.read_buf.data(), size_t(got)) != REDIS_OK)
          return disconnect(c, "reader: out of memory");
        if (size_t(got) < m.read_buf.size()) break;
        continue;
      }
      if (got == 0) return disconnect(c, "closed by the server");
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
    c.failures = 0;  // Redis answered: the backoff starts over (not at a mere TCP connect)
    c.last_reply_ms = now_ms();
    const auto* r = static_cast<const redisReply*>(reply);
    bool go = true;
    if (is_s) {
      go = on_s_reply(n, r);
    } else {
      on_p_reply(n, r);
    }
    freeReplyObject(reply);
    if (!go || c.fd < 0) break;
  }
}

void redis_bridge::write_out(connection& c) {
  while (c.pending_out() > 0) {
    ssize_t sent = send(c.fd, c.out.data() + c.out_off, c.pending_out(), MSG_NOSIGNAL);
    if (sent > 0) {
      c.out_off += size_t(sent);
      continue;
    }
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (sent < 0 && errno == EINTR) continue;
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

// A connect or handshake that takes longer than --redis-timeout, or a connection that has read
// nothing for that long although it was pinged halfway through, is given up (a Redis that went
// silent: a partition, a dead host) and reconnected; /readyz turns 503 meanwhile.
void redis_bridge::check_liveness(uint64_t now) {
  impl& m = *impl_;
  const uint64_t limit = opt_.timeout_ms;
  for (auto& np : m.nodes) {
    node& n = *np;
    for (connection* c : {&n.s, &n.p}) {
      if (c->st == connection::state::down) continue;
      if (c->st != connection::state::ready) {
        if (now - c->since_ms > limit)
          disconnect(*c, "no answer within the timeout (--redis-timeout)");
        continue;
      }
      bool is_s = c == &n.s;
      if (is_s && m.pending) {  // we stopped reading S ourselves
        c->last_reply_ms = now;
        continue;
      }
      uint64_t quiet = now - c->last_reply_ms;
      if (quiet > limit) {
        disconnect(*c, "no reply for " + std::to_string(limit) + " ms (--redis-timeout)");
        continue;
      }
      if (quiet < limit / 2) continue;
      if (is_s && !n.fence_out) {  // a fence that expires nothing new doubles as a keepalive
        redis::append_command(n.s.out, {"PING"});
        n.fence_out = true;
        n.fence_target = n.fenced_seq;
      } else if (!is_s && !c->keepalive_out) {
        redis::append_command(c->out, {"PING"});
        c->push_tag(tag::ping);
        c->keepalive_out = true;
      }
    }
  }
}

// Ready: the slot map is known and every active node's connections are up with no
// confirmation outstanding (so every wanted subscription is in place).
void redis_bridge::update_ready() {
  impl& m = *impl_;
  bool r = m.topology_known && !m.unplaced;
  bool up = m.topology_known;
  for (const auto& n : m.nodes) {
    if (!n->active) continue;
    if (!n->s.ready() || !n->p.ready()) up = false;
    if (!n->s.ready() || !n->p.ready() || !n->ops.empty()) r = false;
  }
  up_.store(up, std::memory_order_release);
  std::lock_guard lock(mu_);
  ready_.store(r && dirty_.empty(), std::memory_order_release);
}

void redis_bridge::run() {
  impl& m = *impl_;
  std::string where =
      m.cluster ? "cluster " + m.nodes[0]->name + " (" + std::to_string(m.nodes.size()) + " seeds)"
                : m.nodes[0]->name;
  log_event(
      opt_.quiet, log::level::info, "redis_connecting",
      "connecting to " + where + " (prefix " + opt_.prefix + ", instance " + opt_.instance_id + ")",
      {{"prefix", opt_.prefix}, {"instance", opt_.instance_id}});
  m.logged_down = true;  // announce the first success
  std::vector<pollfd> fds;
  std::vector<connection*> polled;
  while (!stop_.load(std::memory_order_acquire)) {
    uint64_t now = now_ms();
    for (auto& n : m.nodes) {
      if (!n->active) continue;
      for (connection* c : {&n->s, &n->p}) {
        if (c->st == connection::state::down && now >= c->retry_at) connect(*c);
      }
    }
    wake_pending_.store(false, std::memory_order_release);
    take_publications();
    take_queue_group_ops();
    take_presence_ops();
    apply_interest();
    write_publications();
    write_commands();
    if (opt_.recovery) write_fetches(now);
    write_queue_groups(now);
    write_presence(now);
    send_fences();
    refresh_topology(now);
    check_liveness(now);
    if (m.pending && now >= m.pending_retry_at) {
      if (deliver(m.pending_kind, m.pending_key, m.pending_json)) m.pending = false;
    }

    fds.clear();
    polled.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    polled.push_back(nullptr);
    int timeout = int(std::min<uint64_t>(1000, std::max<uint64_t>(opt_.timeout_ms / 4, 10)));
    for (auto& n : m.nodes) {
      for (connection* c : {&n->s, &n->p}) {
        if (c->st == connection::state::down) {
          if (n->active && c->retry_at != UINT64_MAX)
            timeout = std::min<int>(timeout, int(c->retry_at > now ? c->retry_at - now : 0));
          continue;
        }
        short ev = 0;
        if (c->st == connection::state::connecting || c->pending_out() > 0) ev |= POLLOUT;
        bool paused = c == &n->s && m.pending;  // not read until the shards take the pending one
        if (c->st != connection::state::connecting && !paused) ev |= POLLIN;
        if (paused && !ev) continue;  // a hang-up would wake poll at once, over and over
        fds.push_back({c->fd, ev, 0});
        polled.push_back(c);
      }
      if (n->fence_hold_until) timeout = std::min(timeout, 50);
    }
    if (m.cluster && !m.slots_query_out)
      timeout = std::min<int>(timeout, int(m.next_refresh_at > now ? m.next_refresh_at - now : 0));
    if (m.pending) timeout = std::min(timeout, 1);
    if (!m.held.empty() && all_publishers_ready()) timeout = std::min(timeout, 1);
    if (!ring_.empty_approx()) timeout = 0;
    int rc = poll(fds.data(), nfds_t(fds.size()), timeout);
    if (rc < 0 && errno != EINTR) {
      log_event(false, log::level::error, "redis_stopped",
                std::string("poll failed, the bridge stops: ") + std::strerror(errno));
      break;
    }
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(wake_fd_, &v, sizeof v);
    }
    for (size_t i = 1; i < fds.size(); ++i) {
      connection& c = *polled[i];
      if (c.fd < 0 || c.fd != fds[i].fd) continue;
      short re = fds[i].revents;
      if (c.st == connection::state::connecting) {
        if (!(re & (POLLOUT | POLLERR | POLLHUP))) continue;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          disconnect(c, std::string("connect: ") + std::strerror(err));
          continue;
        }
        connected(c);
        write_out(c);
        continue;
      }
      if (re & (POLLIN | POLLERR | POLLHUP)) read_replies(c, true);
      if (c.fd >= 0 && &c == &c.owner->s && !m.pending) read_replies(c, false);  // buffered
      if (c.fd >= 0 && c.pending_out() > 0) write_out(c);
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
  if (opt_.recovery) {
    line("wsed_redis_sequenced_total", "counter",
         "Recoverable publications Redis stamped and kept (of those published).",
         c_.sequenced.get());
    const char* h = "wsed_redis_histories_total";
    const char* h_help = "Histories read from Redis for recovering subscribers, by result.";
    line(h, "counter", h_help, c_.history_answered.get(), "result", "answered");
    line(h, "counter", h_help, c_.history_failed.get(), "result", "failed", false);
    line(h, "counter", h_help, c_.history_refused.get(), "result", "refused", false);
  }
  const char* pw = "wsed_redis_presence_writes_total";
  const char* pw_help = "This instance's presence members written to Redis, by result.";
  line(pw, "counter", pw_help, c_.presence_writes.get(), "result", "ok");
  line(pw, "counter", pw_help, c_.presence_errors.get(), "result", "error", false);
  const char* pq = "wsed_redis_presence_queries_total";
  const char* pq_help = "Presence queries (GET /api/presence) answered from Redis, by result.";
  line(pq, "counter", pq_help, c_.presence_queries.get(), "result", "answered");
  line(pq, "counter", pq_help, c_.presence_queries_failed.get(), "result", "failed", false);
  const char* qg = "wsed_redis_queue_group_writes_total";
  const char* qg_help = "This instance's queue group members written to Redis, by result.";
  line(qg, "counter", qg_help, c_.queue_group_writes.get(), "result", "ok");
  line(qg, "counter", qg_help, c_.queue_group_errors.get(), "result", "error", false);
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
  line(cmd, "counter", cmd_help, c_.commands_busy.get(), "result", "busy", false);
  const char* routed = "wsed_redis_commands_routed_total";
  const char* routed_help = "Commands for another instance's connection, by outcome.";
  line(routed, "counter", routed_help, c_.commands_routed.get(), "result", "published");
  line(routed, "counter", routed_help, c_.commands_unroutable.get(), "result", "unroutable", false);
  line(routed, "counter", routed_help, c_.commands_queue_full.load(std::memory_order_relaxed),
       "result", "queue_full", false);
  const char* in = "wsed_redis_inbound_total";
  const char* in_help = "Inbound stream entries (--inbound redis), by outcome.";
  line(in, "counter", in_help, c_.inbound_added.get(), "result", "added");
  line(in, "counter", in_help, c_.inbound_dropped.load(std::memory_order_relaxed), "result",
       "dropped", false);
  line(in, "counter", in_help, c_.inbound_error.get(), "result", "error", false);
  line(in, "counter", in_help, c_.inbound_lost.get(), "result", "lost", false);
}

redis_bridge_options bridge_options_from(const server_config& c) {
  redis_bridge_options ro;
  ro.prefix = c.redis_prefix;
  ro.pattern_mode = c.redis_pattern_mode;
  ro.buffer_bytes_max = c.redis_buffer_bytes;
  ro.producers = c.workers;
  ro.inbound_stream = c.inbound == inbound_policy::redis;
  ro.stream_maxlen = c.redis_stream_maxlen;
  ro.inbound_bytes_max = c.redis_stream_buffer_bytes;
  ro.ring_capacity = c.inbox_capacity;
  ro.reconnect_max_ms = c.redis_reconnect_max_ms;
  ro.timeout_ms = c.redis_timeout_ms;
  ro.member_ttl_ms = c.redis_member_ttl_ms;
  ro.quiet = c.quiet;
  ro.recovery = c.recovery;
  ro.recovery_buffer = c.recovery_buffer;
  ro.recovery_ttl_ms = c.recovery_ttl_ms;
  ro.recovery_max_replay = c.recovery_max_replay;
  return ro;
}

}  // namespace wsed::engine
