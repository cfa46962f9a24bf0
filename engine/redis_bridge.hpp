// engine/redis_bridge.hpp: the process's one link to Redis, so several wsed instances share
// topics (README "Scaling out through Redis"; DESIGN.md section 6).
//
// One thread with its own poll loop and two connections to Redis: S (subscriber: SUBSCRIBE /
// PSUBSCRIBE as local interest changes, receives the publications of every instance and
// backend) and P (commands: PUBLISH pipelined, XADD of the inbound stream, command routing).
// hiredis's reader parses every reply; the sockets, the loop and the (trivial) command
// formatting are ours: Debian's hiredis 0.14 async API keeps a callback per channel and asserts
// on replies it does not know (SSUBSCRIBE, needed for a cluster).
//
// Owns: the sockets, the subscription state, the held publications, the echo filter, the
// counters. Thread: publish / interest_changed / route_command / add_inbound from any thread
// (a bounded ring per producer, small mutex-guarded queues for the rare ones); ready() and
// render_metrics from any thread (atomics); everything else on the bridge thread. Received
// publications go to the sink (wse_app) on the bridge thread, which frames them once for the
// whole process and routes them to the shards. Never blocks a shard: a full ring or buffer is
// a counted drop, never a wait.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "engine/config.hpp"
#include "engine/metrics.hpp"
#include "engine/redis_names.hpp"
#include "fanout/inbox.hpp"
#include "fanout/router.hpp"

struct redisReply;  // hiredis

namespace wsed::engine {

// A recovering subscriber's request for one topic's history (--recovery with Redis), answered
// through redis_sink::history.
struct redis_history_request {
  uint32_t shard = 0, slot = 0, generation = 0;  // who asked
  uint64_t request = 0;                          // the asker's id of the subscribe request
  uint32_t index = 0;                            // the topic's place in that request
  std::string topic;
  std::string epoch;  // 8 hex digits, or empty: the client gave none
  bool has_offset = false;
  uint64_t offset = 0;    // the last offset the client received
  uint64_t asked_ms = 0;  // set by the bridge
};

struct redis_history_answer {
  bool answered = false;  // false: Redis did not answer within --redis-timeout (or went away)
  bool has_history = false;
  uint32_t epoch = 0;
  uint64_t next = 0;  // the topic's next offset
  bool recovered = false;
  std::vector<std::string_view> messages;  // the stamped payloads to replay, in order
};

// An HTTP presence query (GET /api/presence) waiting for Redis, answered through
// redis_sink::presence_answer.
struct redis_presence_query {
  uint32_t shard = 0, slot = 0, generation = 0;  // the HTTP connection waiting
  bool stats = false;                            // /api/presence/stats
  std::string topic;
  uint64_t asked_ms = 0;  // set by the bridge
};
struct redis_presence_answer {
  bool answered = false;  // false: Redis did not answer within --redis-timeout (or went away)
  std::vector<std::pair<std::string_view, std::string_view>> data;    // user -> data
  std::vector<std::pair<std::string_view, std::string_view>> totals;  // user -> connections
};

// What the bridge hands the application (wse_app) on the bridge thread.
class redis_sink {
 public:
  enum class status : uint8_t { delivered, busy, invalid };
  virtual ~redis_sink() = default;
  // A publication from Redis: frame it and route it to the local shards (not back to Redis).
  // wakes: the shards to wake, added to (the bridge wakes them once per batch).
  virtual status remote_publication(fanout::delivery_kind kind, std::string_view key,
                                    std::string_view json, uint64_t* wakes) = 0;
  // A command for one of this instance's connections (JSON, README "Commands").
  enum class command_status : uint8_t { ok, unknown, invalid, busy };
  virtual command_status remote_command(std::string_view json) = 0;
  // The answer to fetch_history (views valid during the call).
  virtual void history(const redis_history_request& request,
                       const redis_history_answer& answer) = 0;
  // The live stream of a topic's channel (empty: of every channel) was interrupted: whatever
  // this instance cached of its history may have a hole now.
  virtual void history_lost(std::string_view topic) = 0;
  virtual void wake(uint64_t shards_mask) = 0;
  // Queue groups across instances (redis_names: queue_group_script). A topic's marker: its
  // members, one "<instance>\t<connection id>\t<group>" per line in rotation order (views
  // valid during the call). Counting restarts there.
  virtual void queue_group_marker(std::string_view /*topic*/, std::string_view /*members*/) {}
  // The stream of a topic's channel (empty: every channel) was interrupted: its markers and
  // counts are no longer those of the other instances.
  virtual void queue_groups_lost(std::string_view /*topic*/) {}
  // A publication of this instance came back from Redis (its local subscribers had it): it
  // still counts for the queue groups. Only asked while wants_own_publications().
  virtual bool wants_own_publications() const { return false; }
  virtual void own_publication(std::string_view /*topic*/, std::string_view /*json*/) {}
  // This instance's connections of user in topic's presence now (0: none) and its data.
  virtual uint32_t presence_state(std::string_view /*topic*/, std::string_view /*user*/,
                                  std::string& /*data*/) {
    return 0;
  }
  // The answer to presence_query (views valid during the call).
  virtual void presence_answer(const redis_presence_query& /*query*/,
                               const redis_presence_answer& /*answer*/) {}
};

struct redis_bridge_options {
  redis::endpoint endpoint;              // one Redis (--redis-url)
  std::vector<redis::endpoint> cluster;  // or the seeds of a Redis Cluster (--redis-cluster):
                                         // sharded pub/sub (SSUBSCRIBE / SPUBLISH) by key slot
  std::string prefix = "wse:";
  bool pattern_mode = false;  // one PSUBSCRIBE <prefix>* instead of per-topic subscriptions
  uint64_t buffer_bytes_max = 16ull << 20;  // publications held while Redis is unreachable
  uint32_t producers = 1;                   // shards; one more lane for other threads
  uint32_t ring_capacity = 8192;            // per producer lane (power of two)
  std::string instance_id;                  // 8 lowercase hex digits
  bool inbound_stream = false;              // --inbound redis
  uint64_t stream_maxlen = 100000;          // XADD MAXLEN ~ N
  uint64_t inbound_bytes_max = 4ull << 20;  // per producer lane of stream entries waiting
  uint32_t timeout_ms = 5000;  // connect, handshake, and silence (pinged at half) before giving up
  // Presence and queue group members of this instance in Redis: renewed every third of it;
  // another instance drops them this long after their last renewal (--redis-member-ttl).
  uint32_t member_ttl_ms = 15000;
  uint32_t reconnect_min_ms = 100;
  uint32_t reconnect_max_ms = 10000;
  bool quiet = false;
  // --recovery: recoverable publications are sequenced by a script in Redis (publish with
  // sequenced = true); histories are read back for recovering subscribers.
  bool recovery = false;
  uint32_t recovery_buffer = 128;
  uint64_t recovery_ttl_ms = 300000;
  uint32_t recovery_max_replay = 500;
};

// Interest kinds the shards report (topic_index / user index first-and-last changes).
enum class redis_interest : uint8_t { pattern, user };

// The options a server configuration gives; the caller sets the endpoint (or cluster seeds)
// and the instance id. Shared by the binary and the Python module.
redis_bridge_options bridge_options_from(const server_config& c);

class redis_bridge {
 public:
  redis_bridge(redis_bridge_options options, const fanout::router& router, redis_sink& sink);
  ~redis_bridge();  // stops and joins
  redis_bridge(const redis_bridge&) = delete;
  redis_bridge& operator=(const redis_bridge&) = delete;

  void start();
  void stop();

  // Any thread. A local publication (kind topic / broadcast / user) to PUBLISH; the bridge takes
  // its own reference to f. producer: the calling shard's index, or options.producers for any
  // other thread. False (and counted): the ring is full.
  // wake false: the caller publishes a batch and calls wake_publisher() once after it.
  // sequenced (a topic publication, with options.recovery): Redis's sequence script stamps it,
  // keeps it in the topic's history and publishes it; every instance, this one included,
  // delivers it when it comes back (one sequencer per topic for the whole cluster).
  bool publish(uint32_t producer, fanout::delivery_kind kind, fanout::frame* f, bool wake = true,
               bool sequenced = false);
  // Any thread: reads a topic's history for a recovering subscriber once this instance's
  // subscription to the topic's channel is confirmed (so nothing falls between the history and
  // the live stream); the answer comes through redis_sink::history on the bridge thread.
  // False: too many requests waiting.
  bool fetch_history(redis_history_request request);
  void wake_publisher() { ring_.wake_if_needed(); }
  // Any thread: the process gained or lost its first / last subscriber of a pattern (or user).
  void interest_changed(redis_interest kind, std::string_view key);
  // Any thread: publishes a command (JSON) on instance `instance`'s channel. False: Redis is
  // not connected (the caller answers 503).
  bool route_command(std::string_view instance, std::string_view json);
  // Any thread: a queue group member of this instance joined (or left) topic; member is
  // "<connection id>\t<group>". The bridge keeps this instance's members of each topic in Redis
  // (queue_group_script, renewed every member_ttl_ms / 3; after member_ttl_ms without
  // renewal another instance drops them), and subscribes to the topic's channel meanwhile.
  void queue_group_member(std::string_view topic, std::string_view member, bool join);
  // Any thread: this instance's connections of user in topic's presence changed. The bridge
  // reads them (redis_sink::presence_state) and keeps them in Redis (presence_script, renewed
  // like the queue groups), which sends the presence events; written once the topic's channel
  // is subscribed (so this instance's subscribers hear the event), a 0 at once; retried after
  // a failure or a lost connection.
  void presence_changed(std::string_view topic, std::string_view user);
  // Any thread: reads a topic's presence from Redis; the answer comes through
  // redis_sink::presence_answer on the bridge thread. False: too many queries waiting.
  bool presence_query(redis_presence_query query);
  // Any thread: false once Redis refused to load the presence / queue group scripts (scripting
  // off: those stay per instance); true until then.
  bool presence_scripts() const { return presence_scripts_.load(std::memory_order_relaxed); }
  bool queue_group_script() const { return queue_group_script_.load(std::memory_order_relaxed); }
  // Any thread (a shard): one inbound-stream entry (--inbound redis), fields as name/value
  // pairs. False (and counted): that producer's lane is over inbound_bytes_max.
  bool add_inbound(uint32_t producer, std::initializer_list<std::string_view> fields);

  bool ready() const { return ready_.load(std::memory_order_acquire); }
  bool connected() const { return up_.load(std::memory_order_relaxed); }
  const std::string& instance_id() const { return opt_.instance_id; }
  const std::string& prefix() const { return opt_.prefix; }
  void render_metrics(std::string& out) const;

  // Written by the bridge thread, except the two multi-writer ones (atomic adds).
  struct counters {
    counter connects, disconnects;
    counter published, dropped_buffer, lost, buffered_total;
    std::atomic<uint64_t> dropped_ring{0};  // any producer
    counter received_delivered, received_own, received_duplicate, received_invalid, received_busy;
    counter commands_ok, commands_unknown, commands_invalid, commands_busy, commands_routed,
        commands_unroutable;
    std::atomic<uint64_t> commands_queue_full{0};  // any thread (route_command)
    counter inbound_added, inbound_error, inbound_lost;
    std::atomic<uint64_t> inbound_dropped{0};  // any producer
    counter subscribe_commands;
    counter sequenced;  // --recovery: publications Redis stamped (counted published too)
    counter history_answered, history_failed;
    counter history_refused;  // any thread, under mu_: too many histories outstanding
    counter queue_group_writes, queue_group_errors;  // queue_group_script runs, failed ones
    counter presence_writes, presence_errors;        // presence_script runs, failed ones
    counter presence_queries, presence_queries_failed;
    counter buffered, subscriptions;  // gauges
  };
  const counters& stats() const { return c_; }

 private:
  struct impl;
  struct connection;
  struct pending_presence;
  static void wake_hook(void* context);
  void wake();
  struct node;
  // The bridge thread's steps (redis_bridge.cpp).
  void run();
  node* owner_of(std::string_view key);
  bool all_publishers_ready() const;
  void connect(connection& c);
  void connected(connection& c);
  void became_ready(connection& c);
  void disconnect(connection& c, const std::string& why);
  void schedule_retry(connection& c);
  void subscribe_on(node& n, const std::string& name, bool glob);
  void unsubscribe_on(node& n, const std::string& name, bool glob);
  void flush_subscriptions(node& n);
  void reconcile_all();
  void apply_interest();
  void take_publications();
  void write_publications();
  void write_commands();
  void write_fetches(uint64_t now);
  node* topic_node(std::string_view topic);
  bool hears(node& n, const std::string& channel) const;
  void take_queue_group_ops();
  void write_queue_groups(uint64_t now);
  void take_presence_ops();
  void write_presence(uint64_t now);
  void on_presence_reply(node& n, const ::redisReply* r);
  void presence_rewrite(const std::string& topic);
  void presence_written(const pending_presence& w);
  void on_presence_query_reply(node& n, const ::redisReply* r);
  void write_sequenced(node& n, std::string_view topic, std::string_view payload);
  void answer_unanswered(redis_history_request& request);
  void answered_one();
  void on_history_reply(node& n, const ::redisReply* r);
  void send_fences();
  void refresh_topology(uint64_t now);
  void apply_topology(node& answering, const ::redisReply* r);
  uint32_t expected_copies(node& n, std::string_view channel);
  bool on_message(node& n, std::string_view channel, std::string_view payload);
  bool deliver(fanout::delivery_kind kind, std::string_view key, std::string_view json);
  bool on_s_reply(node& n, const ::redisReply* r);
  bool handshake_reply(connection& c, const ::redisReply* r);
  void complete_fence(node& n);
  void on_p_reply(node& n, const ::redisReply* r);
  void read_replies(connection& c, bool readable);
  void write_out(connection& c);
  void check_liveness(uint64_t now);
  void update_ready();

  redis_bridge_options opt_;
  const fanout::router& router_;
  redis_sink& sink_;
  fanout::inbox ring_;      // publications from the shards (one lane each) and other threads
  std::mutex external_mu_;  // one external producer at a time on the last lane
  int wake_fd_ = -1;
  std::string stream_key_;  // <prefix>inbound
  std::string xadd_head_;   // the bulk strings XADD <stream> MAXLEN ~ N *, formatted once
  static constexpr size_t xadd_head_args = 6;
  static constexpr size_t commands_queued_max = 65536;  // route_command between two passes
  std::atomic<bool> wake_pending_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> ready_{false};
  std::atomic<bool> up_{false};
  std::atomic<bool> presence_scripts_{true}, queue_group_script_{true};

  // Rare inputs, swapped out whole by the bridge thread.
  std::mutex mu_;
  std::vector<std::pair<redis_interest, std::string>> dirty_;  // under mu_
  std::vector<std::pair<std::string, std::string>> commands_;  // under mu_: instance, json
  std::vector<redis_history_request> fetches_;                 // under mu_
  struct queue_group_op {
    std::string topic, member;
    bool join;
  };
  std::vector<queue_group_op> queue_group_ops_;  // under mu_
  struct presence_op {
    std::string topic, user;
  };
  struct pending_presence {
    std::string topic;
    std::vector<std::string> users;
  };
  std::vector<presence_op> presence_ops_;               // under mu_
  std::vector<redis_presence_query> presence_queries_;  // under mu_
  size_t presence_queries_outstanding_ = 0;             // under mu_
  static constexpr size_t presence_queries_max = 4096;
  size_t fetches_outstanding_ = 0;  // under mu_: not answered yet
  static constexpr size_t fetches_queued_max = 65536;
  struct alignas(64) inbound_lane {
    std::mutex mu;
    std::string resp;  // formatted XADD commands
    uint32_t count = 0;
  };
  std::vector<std::unique_ptr<inbound_lane>> inbound_;

  counters c_;
  std::unique_ptr<impl> impl_;  // the bridge thread's state
  std::thread thread_;
};

}  // namespace wsed::engine
