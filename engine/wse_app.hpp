// engine/wse_app.hpp: the WSE protocol (PROTOCOL.md) on top of the engine, and the library API
// an application uses to sit behind it.
//
// wse_app authenticates each upgrade (JWT; error frame + close 4401 on failure), sends
// server_ready, answers app ping -> PONG, client_hello -> server_hello, sends the server ping
// every --ping-interval, decodes the inbound formats (text JSON, M:/raw MessagePack, C: zlib),
// applies the inbound rate limit (RATE_LIMITED, then close 4429), and hands every other message
// (an application message) to a wse_handler: on_connect(user, conn), on_message(conn, message),
// on_disconnect(conn). The handler answers through wse_app::send(), the per-connection send path,
// where the connection's format applies (M: + MessagePack for format=msgpack connections, C: +
// zlib above --compression-threshold, else text JSON). With end-to-end encryption (--e2e), a
// connection keyed by its client_hello gets everything sealed as E: frames but PONG, server pings
// and RATE_LIMITED, and may send E: frames; with a signing key, publications and per-connection
// sends carry "sig" (README "End-to-end encryption and message signing").
//
// Owns: per shard, the envelope parser, codec, scratch strings, an RNG for UUIDv7s, the
// per-connection state (indexed by conn_ref.slot, keyed by generation) and counters. Thread:
// every callback runs on the calling shard's thread and touches only that shard's part; the
// verifier is immutable and swapped under a mutex (set_verifier, from any thread: SIGHUP), each
// shard copying it when a version counter moved;
// render_metrics reads relaxed atomics from any shard. Never blocks, never does file I/O (keys
// are loaded by the embedding program).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "auth/acl.hpp"
#include "auth/e2e.hpp"
#include "auth/jwt.hpp"
#include "auth/token_source.hpp"
#include "engine/assert.hpp"
#include "engine/config.hpp"
#include "engine/metrics.hpp"
#include "engine/recovery.hpp"
#include "engine/redis_bridge.hpp"
#include "engine/shard.hpp"
#include "fanout/presence.hpp"
#include "fanout/queue_groups.hpp"
#include "fanout/string_map.hpp"
#include "fanout/topic_index.hpp"
#include "proto/wse_builder.hpp"
#include "proto/wse_command.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_formats.hpp"
#include "proto/wse_publish.hpp"

static_assert(wsed::engine::shard::payload_padding_bytes >= wsed::proto::wse_json_padding_bytes,
              "text messages are parsed in place");

namespace wsed::engine {

// One WSE connection as the application sees it. Valid only on its shard's thread; stale (sends
// are dropped) once the connection closed.
struct wse_conn {
  shard* owner = nullptr;
  conn_ref ref{};
};

// Who connected (views valid during on_connect only).
struct wse_user {
  std::string_view user_id;                      // the token's sub ("anonymous" without auth)
  std::string_view connection_id;                // UUIDv7, as in server_ready
  const auth::topic_acl* acl = nullptr;          // the token's wse_topics (null without auth)
  const proto::http_request* request = nullptr;  // the upgrade request (its headers)
  bool authenticated_by_token = false;  // a JWT was verified (false: the app runs without auth)
  bool msgpack = false;                 // format=msgpack: per-connection sends are M: binary
};

// One inbound application message, whatever its wire format (views valid during the call).
struct wse_app_message {
  std::string_view type;          // "t"
  std::string_view category;      // "c" as sent, or inferred from the type
  std::string_view payload_json;  // "p" as JSON text; empty when absent
  std::string_view user_id;
  std::string_view connection_id;
  // The whole message as JSON text (a text message without its legacy prefix, or a binary one
  // decoded); empty when the handler does not read payloads (reads_payload false).
  std::string_view json;
};

// The application behind wse_app. Every callback runs on the connection's shard thread, inside
// its loop pass: queue work, never block.
class wse_handler {
 public:
  virtual ~wse_handler() = default;
  virtual void on_connect(const wse_user& /*user*/, wse_conn /*conn*/) {}
  virtual void on_message(wse_conn conn, const wse_app_message& message) = 0;
  // false: on_message never reads payload_json (it may then be empty for MessagePack input,
  // which is validated but not converted to JSON). Asked once, at construction of wse_app.
  virtual bool reads_payload() const { return true; }
  virtual void on_disconnect(wse_conn /*conn*/) {}
  // A data message that is not a WSE message (text that is not a JSON object, binary that is
  // none of the WSE binary formats). true: the handler took it; false (the default): the client
  // gets INVALID_MESSAGE.
  virtual bool on_unparsed(wse_conn /*conn*/, proto::ws_opcode /*opcode*/,
                           std::span<const uint8_t> /*payload*/) {
    return false;
  }
  // A JSON object without a string "t" (json without its legacy prefix). true: the handler took
  // it as an application message; false (the default): the client gets INVALID_MESSAGE.
  virtual bool on_untyped(wse_conn /*conn*/, std::string_view /*json*/) { return false; }
  // A presence event of this instance's connections (type presence_join / presence_update /
  // presence_leave, data a JSON object), on the shard thread that made it.
  virtual void on_presence(std::string_view /*type*/, std::string_view /*topic*/,
                           std::string_view /*user_id*/, std::string_view /*data_json*/) {}
  // Every shard timer tick (100 ms), for batching work such as log flushes.
  virtual void on_tick(uint32_t /*shard_index*/) {}
  // Appends the handler's Prometheus families (relaxed atomics only).
  virtual void render_metrics(std::string& /*out*/) const {}
};

struct wse_app_options {
  std::shared_ptr<const auth::verifier> verifier;  // nullptr: no auth (user "anonymous")
  std::string cookie_name = "access_token";
  bool allow_query_token = false;
  uint64_t message_bytes_max = 1u << 20;  // announced in server_hello; cap of decoded messages
  uint32_t shards = 1;                    // the server's worker count (resolved, not 0)
  uint32_t ping_interval_ms = 25000;      // server ping to every connection (0: never)
  uint32_t compression_threshold_bytes = proto::wse_compress_threshold_bytes_default;  // 0: never
  uint32_t inbound_rate = 10000;             // messages per second per connection (0: unlimited)
  uint32_t inbound_burst = 10000;            // bucket size
  uint32_t topics_per_connection_max = 100;  // subscriptions; more: TOO_MANY_TOPICS
  std::string api_key;  // POST /api/publish with "Authorization: Bearer <key>"; empty: off (404)
  // Recovery (engine/recovery.hpp, PROTOCOL.md "Recovery"); off: publications stay unstamped.
  bool recovery = false;
  recovery_options recovery_limits;
  std::vector<std::string> recovery_topics = {"*"};  // globs of the recoverable topics
  // Presence (PROTOCOL.md "Presence"); off: a subscription's presence object is ignored.
  bool presence = false;
  fanout::presence_limits presence_limits;
  // The shard's --max-outbound-bytes: a queue group member with over half of it queued is
  // skipped by the pick until it is under a quarter.
  uint64_t outbound_bytes_max = 1u << 20;
  // Keep the connection id directory (connection id -> shard, slot) also without a bridge or an
  // API key: embedding programs that address connections by id (the Python module).
  bool directory = false;
  // End-to-end encryption (PROTOCOL.md "End-to-end encryption (E:)"): a client_hello with
  // features.encryption and a P-256 point keys the connection; off: server_hello says
  // encryption:false and E: frames are INVALID_MESSAGE.
  bool e2e = false;
  // Message signing: publications and per-connection sends carry "sig" (README "Message
  // signing"); empty: unsigned. Replaced later by set_signing_key (SIGHUP).
  std::string signing_key;
};

// The answer of subscribe_recovering: the reply's recovery part (PROTOCOL.md "Recovery").
struct wse_recovery_result {
  bool found = false;  // the connection was open when the request ran
  bool recovered = false;
  struct topic {
    std::string name;
    bool has_epoch = false;
    uint32_t epoch = 0;
    uint64_t offset = 0;
    bool recoverable = false, recovered = false;
    uint64_t count = 0;
  };
  std::vector<topic> topics;
  std::vector<std::pair<std::string, std::string>> failed;  // (topic, reason)
};

// The options a server configuration gives (everything but the verifier and the API key, which
// the embedding program loads): shared by the binary and the Python module.
wse_app_options wse_options_from(const server_config& c);

// What a publication call did.
enum class publish_status : uint8_t {
  published,  // queued to every shard that has a recipient (maybe none)
  busy,       // a shard's inbox was full: shards that took it deliver it, the others do not
  invalid,    // not a JSON object, or a bad topic / user id
};

// The outcome of one topic in a subscription request.
enum class subscribe_outcome : uint8_t {
  ok,
  acl_denied,
  invalid_topic,
  too_many_topics,
  exact_topic_required,     // a glob with presence or a queue group
  presence_full,            // a new user over --presence-max-members
  presence_data_too_large,  // over --presence-max-data
  count_
};

enum class wse_send_format : uint8_t { json, msgpack, compressed, count_ };

inline constexpr size_t wse_feature_count = 6;  // the features object of server_ready / hello

// What happened on one shard; written by that shard only, read by /metrics from any shard.
struct wse_counters {
  counter auth_ok, auth_required, auth_failed;
  counter pings, pongs, hellos, server_pings, app_messages, invalid, subscriptions, before_auth;
  counter rate_limited;  // inbound messages dropped over the rate
  std::array<counter, size_t(wse_send_format::count_)> sends;
  std::array<counter, size_t(subscribe_outcome::count_)> subscribe;  // per topic of a request
  counter unsubscribe;
  counter publish_ok, publish_denied, publish_invalid, publish_busy;  // client publishes
  counter held;  // gauge: subscriptions held on this shard
  // Topics of recovering subscribe requests, by answer; publications replayed.
  counter recover_recovered, recover_not_recovered, recover_no_history, replayed;
  counter presence_joins, presence_updates, presence_leaves;  // events emitted
  counter presence_refused_data, presence_refused_full;       // joins / updates refused
  counter presence_dropped;  // events lost: the backlog behind full inboxes was full
  // Publications given to queue group members; picked members found gone; members marked busy.
  counter qg_deliveries, qg_gone, qg_busy;
  // End-to-end encryption: keyed connections (gauge), key exchanges refused, messages sealed /
  // opened, E: frames refused (too short, bad tag: close 4400; before a key exchange).
  counter e2e_keyed, e2e_key_failed, e2e_encrypted, e2e_decrypted, e2e_decrypt_failed, e2e_unkeyed;
  counter signed_messages;  // publications framed and per-connection sends with a "sig"
};

// Optional parts of a subscribe request (PROTOCOL.md "Presence", "Queue groups").
struct wse_subscribe_extras {
  bool has_presence = false;
  std::string_view presence_json;  // a JSON object (validated by the caller)
  std::string_view queue_group;    // empty: a plain subscription
  // Presence refused (full, data too large): subscribed all the same, without presence (the
  // reference's Python API); false: the topic is refused (a client's request).
  bool presence_optional = false;
};

class wse_app final : public app_handler, public redis_sink {
 public:
  wse_app(wse_app_options options, wse_handler& handler);
  ~wse_app() override;

  // Per-connection send of an envelope {"c","id","p","seq","t","ts","v"} in the connection's
  // format. category empty: inferred from the type; payload_json empty: {}. Call on the
  // connection's shard thread (from a wse_handler callback).
  send_status send(wse_conn conn, std::string_view type, std::string_view payload_json,
                   std::string_view category = {});

  // Any thread: new upgrades verify with this verifier from now on (SIGHUP key reload);
  // connections already open are untouched. Ignored when the app was built without auth.
  void set_verifier(std::shared_ptr<const auth::verifier> verifier);
  // Counts a key reload attempt (wsed_key_reloads_total), from the thread that did it.
  void count_reload(bool ok);
  // Any thread: publications framed and per-connection sends made from now on are signed with
  // key (empty: unsigned). SIGHUP reloads --signing-key-file with it.
  void set_signing_key(std::string key);

  // --- Fan-out, callable from any thread (they enqueue for the shards that have recipients).
  // json is a publication object ({"t":..,"p":..}); "c" is inserted when it has none.
  publish_status publish(std::string_view topic, std::string_view json);
  publish_status broadcast(std::string_view json);
  publish_status send_to_user(std::string_view user_id, std::string_view json);
  // This instance only: topic subscribers (queue group members picked here; not recoverable
  // when there is a bridge: offsets are the cluster's), or every connection with the bytes
  // verbatim (text or binary; a JSON object as text gets its "c").
  publish_status publish_local(std::string_view topic, std::string_view json);
  publish_status broadcast_local(proto::ws_opcode opcode, std::string_view bytes);
  // Subscribes / unsubscribes one connection (no reply frame is sent; the token's ACL and the
  // topic cap apply as for a client's request). unsubscribe with no topics: every subscription.
  // False when the connection's shard inbox is full.
  bool subscribe(wse_conn conn, std::span<const std::string_view> topics);
  bool unsubscribe(wse_conn conn, std::span<const std::string_view> topics);
  // As subscribe / unsubscribe, with presence data (a JSON object) and/or a queue group
  // (a group with unsubscribe: only those memberships). False: the shard's inbox is full, or
  // the data is not a JSON object / the group not 1 to 128 bytes without control characters.
  bool subscribe(wse_conn conn, std::span<const std::string_view> topics,
                 const wse_subscribe_extras& extras);
  bool unsubscribe(wse_conn conn, std::span<const std::string_view> topics,
                   std::string_view queue_group);
  // New presence data (a JSON object) for every topic the connection is in the presence of:
  // presence_update where it changed. False as above.
  bool update_presence(wse_conn conn, std::string_view data_json);
  // Any thread. Members {"<user>":{"connections":n,"data":{..}},...} sorted by user id, and the
  // stats (PROTOCOL.md "Presence"); {} and zeros without presence (or with it off).
  std::string presence_members(std::string_view topic) const;
  fanout::presence_stats presence_stats(std::string_view topic) const;
  // Any thread. {"<group>":<members>,...} sorted by group name.
  std::string queue_group_info(std::string_view topic) const;
  bool presence_enabled() const { return presence_ != nullptr; }
  bool recovery_enabled() const { return recovery_ != nullptr; }
  // Any thread (relaxed totals): topics with history and their bytes; topics with presence and
  // users summed over them. Zeros when the feature is off.
  void recovery_totals(uint64_t& topics, uint64_t& bytes) const;
  void presence_totals(uint64_t& topics, uint64_t& users) const;
  // Subscriptions held, whole process (relaxed; any thread).
  uint64_t subscription_count() const;
  // Connections of this shard a publication on topic would reach (the shard's thread only).
  size_t local_subscriber_count(shard& s, std::string_view topic);

  // --- Scale-out (engine/redis_bridge). Set before the server starts; null: this process alone.
  // Local publications are then also handed to the bridge, interest changes reported to it,
  // and /readyz waits for it. The instance id (8 hex digits) ends every connection id.
  void set_bridge(redis_bridge* bridge);
  // Without a bridge too: connection ids end with this id (commands of the HTTP API).
  void set_instance_id(std::string_view id8);
  // --- By connection id, from any thread (the Python module). Each only enqueues for the
  // owning shard; false: the id is not an open connection of this instance (needs
  // wse_app_options::directory, a bridge or an API key), or its shard's inbox is full.
  bool locate(std::string_view connection_id, wse_conn& out);
  bool send_text(std::string_view connection_id, std::string_view text);
  // The same for a connection already located (any thread): false only when its shard's inbox
  // is full (a caller may retry).
  bool send_text(const wse_conn& conn, std::string_view text);
  bool send_binary(const wse_conn& conn, std::string_view bytes);
  bool send_binary(std::string_view connection_id, std::string_view bytes);
  bool disconnect(std::string_view connection_id, uint16_t code, std::string_view reason = {});
  // As subscribe(wse_conn, ...) above. A publication made after it returns reaches the
  // connection: the shard's interest is registered with the router from the calling thread,
  // ahead of the shard applying it (the publication then queues behind the command).
  bool subscribe(std::string_view connection_id, std::span<const std::string_view> topics,
                 const wse_subscribe_extras& extras);
  // No topics: every subscription (group: only that group's memberships).
  bool unsubscribe(std::string_view connection_id, std::span<const std::string_view> topics,
                   std::string_view queue_group = {});
  bool update_presence(std::string_view connection_id, std::string_view data_json);
  // Replaces the connection's topic ACL (globs; empty allow: every topic) for later requests.
  bool set_topic_acl(std::string_view connection_id, std::vector<std::string> allow,
                     std::vector<std::string> deny);
  // Subscribes and (recover) replays from epoch/offset as a client's recovering subscribe
  // does (no reply frame); done runs on the connection's shard thread with the outcome (also
  // when the connection is gone: found false). With a bridge the replay waits for Redis.
  bool subscribe_recovering(std::string_view connection_id, std::vector<std::string> topics,
                            bool recover, bool has_epoch, uint32_t epoch, uint64_t offset,
                            std::function<void(const wse_recovery_result&)> done);
  // Runs fn(shard) on every shard's thread; returns how many shards took it (a full inbox
  // refuses). fn must not block.
  uint32_t on_each_shard(const std::function<void(shard&)>& fn);
  // Connection ids of this instance (the directory; needs it kept) and their number.
  std::vector<std::string> connection_ids();
  uint64_t connection_count() const;

  // Who a connection is, during a handler callback (on_disconnect included). Views valid
  // during the callback.
  struct ids {
    std::string_view user_id, connection_id;
  };
  ids ids_of(wse_conn conn);

  // A command (proto/wse_command.hpp) from the HTTP API or from Redis: queued for the
  // connection when it is on this instance, published to its instance's channel otherwise.
  enum class command_result : uint8_t { ok, routed, unknown, invalid, unavailable, busy };
  // from_redis: it arrived on this instance's channel (never routed on).
  command_result run_command(std::string_view json, std::string& detail, bool from_redis = false);

  bool ready() const override;
  // redis_sink: the bridge thread hands over what it received.
  redis_sink::status remote_publication(fanout::delivery_kind kind, std::string_view key,
                                        std::string_view json, uint64_t* wakes) override;
  command_status remote_command(std::string_view json) override;
  void history(const redis_history_request& request, const redis_history_answer& answer) override;
  void history_lost(std::string_view topic) override;
  void wake(uint64_t shards_mask) override;
  void queue_group_marker(std::string_view topic, std::string_view members) override;
  void queue_groups_lost(std::string_view topic) override;
  bool wants_own_publications() const override {
    return cluster_views_.load(std::memory_order_relaxed) != 0;
  }
  void own_publication(std::string_view topic, std::string_view json) override;
  void presence_answer(const redis_presence_query& query,
                       const redis_presence_answer& answer) override;
  uint32_t presence_state(std::string_view topic, std::string_view user,
                          std::string& data) override {
    return presence_ ? presence_->user_connections(topic, user, &data) : 0;
  }

  void attach(hub& h) override { hub_ = &h; }
  void on_open(shard& s, conn_ref c, const proto::http_request& request) override;
  void on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                  std::span<const uint8_t> payload) override;
  void on_close(shard& s, conn_ref c) override;
  bool validates_text_utf8() const override { return true; }  // simdjson's stage 1
  void on_tick(shard& s, uint64_t now_ms) override;
  void render_metrics(std::string& out) const override;
  bool on_http(shard& s, const proto::http_request& request, std::string_view body,
               http_answer& answer) override;
  void on_delivery(shard& s, const fanout::delivery& d) override;

 private:
  struct conn_state {
    uint32_t generation = 0;
    bool live = false;
    bool authenticated = false;
    bool msgpack = false;       // format=msgpack: per-connection sends as M: + MessagePack
    bool rate_limited = false;  // in an episode of dropped messages
    uint32_t dropped = 0;       // messages dropped in the current episode
    uint64_t tokens_milli = 0;  // inbound token bucket, in thousandths of a message
    uint64_t refilled_ms = 0;   // shard loop clock of the last refill
    uint64_t seq = 0;
    uint32_t user_pos = 0;  // index in per_shard::users[user_id]
    std::string user_id;
    // The token's topic ACL for the connection's life (null: every topic, publishing refused);
    // shared with the shard's other connections whose tokens carry the same one.
    std::shared_ptr<const auth::topic_acl> acl;
    char connection_id[proto::wse_uuid_chars] = {};
    std::vector<std::string> presence_topics;  // topics whose presence it is in
    // (topic, group) of its queue group memberships
    std::vector<std::pair<std::string, std::string>> groups;
    bool qg_busy = false;  // marked busy in queue_groups_ (its queue filled)
    // Keyed by a client_hello (end-to-end encryption): null for every other connection, so an
    // unkeyed connection costs one pointer. Never re-keyed; dropped at close.
    std::unique_ptr<auth::e2e_cipher> e2e;
  };
  struct per_shard {
    proto::wse_envelope_parser parser;
    proto::wse_codec codec;
    std::string scratch;  // outbound JSON
    std::string encoded;  // outbound M: / C: bytes
    std::string decoded;  // inbound binary formats decoded to JSON
    std::string opened;   // an inbound E: frame decrypted
    std::string sealed;   // outbound: E: + nonce + ciphertext + tag
    // While a decrypted message is handled: its answers are encrypted too, PONG included.
    bool in_e2e = false;
    std::shared_ptr<const std::string> signing_key;  // this shard's copy of signing_key_
    uint64_t signing_version = 0;                    // of that copy
    std::mt19937_64 rng;
    std::vector<conn_state> conns;
    fanout::topic_index topics;                       // subscriber ids are slots
    fanout::string_map<std::vector<uint32_t>> users;  // user id -> slots
    // Distinct token ACLs, shared by the connections that carry the same one (shared_acl).
    std::unordered_map<std::string, std::shared_ptr<const auth::topic_acl>> acls;
    std::string acl_key;
    proto::wse_publish_parser api_parser;
    std::vector<proto::wse_publish_item> api_items;
    // Frames publications (ensure_category): its own parser, since the message being published
    // may be a view into `parser`'s buffers (a client's publish message).
    proto::wse_envelope_parser framer;
    std::string publication;  // a publication with its "c"
    std::vector<std::string_view> ok_topics, failed_topics, failed_reasons;
    std::unordered_set<std::string_view> seen_topics;  // of the request being applied
    std::vector<proto::wse_topic_recovery> recovery;   // the reply's recovery map
    // A recovering subscriber has been given every publication up to `upto` of a topic (by
    // replay): live frames of that topic still in the inbox with an offset up to it are not
    // sent again. Dropped by the first later frame (a topic's frames arrive in offset order).
    struct recovery_mark {
      uint32_t slot, generation, epoch;
      uint64_t upto;
    };
    fanout::string_map<std::vector<recovery_mark>> marks;
    // With Redis, a recovering request waits for its topics' histories (redis_bridge::
    // fetch_history): meanwhile the live frames of those topics for that connection are held,
    // then given after the replays and the reply, those the replay covered skipped.
    struct pending_recovery {
      uint32_t slot = 0, generation = 0;
      uint64_t started_ms = 0;
      std::string action;
      std::vector<std::string> ok, failed, reasons;  // the reply's lists (copied)
      struct topic_answer {
        std::string topic;
        bool waiting = false;
        recovery_answer answer;
        fanout::frame* history = nullptr;      // the answer's frame (its payload holds the replay)
        std::vector<std::string_view> replay;  // into history's payload
      };
      std::vector<topic_answer> topics;
      uint32_t outstanding = 0;
      std::vector<fanout::frame*> held;  // live frames held, one reference each
      // subscribe_recovering: given the outcome instead of a reply frame to the client.
      std::function<void(const wse_recovery_result&)> done;
    };
    std::unordered_map<uint64_t, pending_recovery> pending;
    // topic -> (slot, request) of the connections whose live frames of it are held
    fanout::string_map<std::vector<std::pair<uint32_t, uint64_t>>> holds;
    uint64_t next_request = 0;
    std::string presence_event;  // an event being built
    // (topic, event) a full inbox refused, in order; retried every tick before newer ones.
    std::deque<std::pair<std::string, std::string>> presence_backlog;
    std::vector<uint32_t> busy_members;  // slots marked busy in queue_groups_ (checked per tick)
    uint64_t busy_checked_ms = 0;        // shard loop clock of the last check on a delivery
    uint64_t next_expire_ms = 0;         // shard 0: the recovery store's TTL sweep
    wse_counters counts;
    uint64_t ping_round_ms = 0;  // shard loop clock: the server ping round began; 0: not yet
    uint32_t ping_cursor = 0;    // slots below it were pinged this round
    std::shared_ptr<const auth::verifier> verifier;  // this shard's copy of verifier_
    uint64_t verifier_version = 0;                   // of that copy
    per_shard();
  };

  per_shard& part(shard& s) {
    ENGINE_ASSERT(s.index() < shards_.size());  // wse_app_options::shards below the workers
    return *shards_[s.index()];
  }
  conn_state* state_of(per_shard& p, conn_ref c);
  void uuid7(per_shard& p, int64_t now_ms, char (&out)[proto::wse_uuid_chars]);
  // The one way wse_app's own messages reach a connection: a keyed connection gets them as E:
  // (clear: one of PROTOCOL.md's exceptions, sent in the clear unless it answers an E: message).
  send_status send_text(shard& s, conn_ref c, std::string_view text, bool clear = false);
  send_status send_out(shard& s, conn_ref c, per_shard& p, conn_state* st, proto::ws_opcode opcode,
                       std::string_view bytes, bool clear = false);
  // A shared frame (publication, replay, command): by reference as it is, or its payload sealed
  // for this keyed connection (the plaintext is what an unkeyed one gets: JSON, or raw bytes).
  // st: the connection's state (null: looked up here).
  send_status send_shared(shard& s, conn_ref c, per_shard& p, const conn_state* st,
                          const fanout::frame& f);
  send_status seal_and_send(shard& s, conn_ref c, per_shard& p, const conn_state& st,
                            std::string_view plain);
  // Inbound E: (the bytes after the prefix) on an authenticated connection.
  void on_encrypted(shard& s, conn_ref c, per_shard& p, conn_state& st,
                    std::span<const uint8_t> sealed);
  // Inbound binary that is not E: (M:, raw MessagePack, C:).
  void on_binary(shard& s, conn_ref c, per_shard& p, conn_state& st,
                 std::span<const uint8_t> payload);
  void client_hello(shard& s, conn_ref c, per_shard& p, conn_state& st,
                    const proto::wse_message& msg);
  // The signing key for a producer (a shard's copy, or the current one off-shard); null: none.
  std::shared_ptr<const std::string> signing_key(per_shard* p);
  // With a signing key: json (a validated object) gets its "sig" (over its "p"); false when it
  // has a "sig" of its own or a key written with an escape (refused). Without a key: true.
  bool sign(per_shard* p, std::string& json);
  // json (a JSON object with "p" at payload, or none) with ,"sig":"..." before its last '}'.
  bool append_signature(const std::string& key, std::string_view payload_json, std::string& json);
  void render_e2e_metrics(std::string& out) const;
  // A text message the shard left unchecked (validates_text_utf8) that is not UTF-8: close 1007
  // and false. Otherwise (checked, or valid) true.
  bool utf8_or_close(shard& s, conn_ref c, std::span<const uint8_t> text);
  void send_error(shard& s, conn_ref c, per_shard& p, std::string_view code,
                  std::string_view message, bool clear = false);
  void refuse(shard& s, conn_ref c, per_shard& p, auth::verify_error why);
  bool admit(shard& s, conn_ref c, per_shard& p, conn_state& st);
  // padding: whether wse_json_padding_bytes readable bytes follow text (parsed in place).
  void on_json(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view text,
               proto::wse_input_padding padding = proto::wse_input_padding::none);
  // Hands one application message to the handler.
  void deliver(shard& s, conn_ref c, per_shard& p, conn_state& st, std::string_view type,
               bool has_category, std::string_view category, std::string_view payload_json,
               std::string_view json = {});
  // A subscribe request with "recover": queues each topic's replay (after apply_subscription
  // subscribed it) and fills p.recovery for the reply.
  void recover_topics(shard& s, conn_ref c, per_shard& p, const proto::wse_subscription& sub);
  bool recoverable(std::string_view topic) const;
  void answered(per_shard& p, conn_ref c, std::string_view topic, const recovery_answer& a);
  // Applies one subscribe/unsubscribe to a connection; fills p.ok_topics / failed_*.
  void apply_subscription(shard& s, conn_ref c, per_shard& p, conn_state& st, bool subscribe,
                          std::span<const std::string_view> topics,
                          const wse_subscribe_extras& extras = {});
  // Presence: enters / leaves one topic (events routed to its subscribers); false when the
  // topic's presence is full.
  bool presence_join(shard& s, per_shard& p, conn_state& st, uint32_t slot, std::string_view topic,
                     std::string_view data);
  void presence_leave(shard& s, per_shard& p, conn_state& st, uint32_t slot,
                      std::string_view topic);
  void presence_event(shard& s, per_shard& p, std::string_view type, std::string_view topic,
                      std::string_view user, std::string_view data);
  void flush_presence_backlog(shard& s, per_shard& p);
  // With Redis: this instance's state of user in topic goes to the bridge, whose script sends
  // the events (once for the cluster).
  void report_presence(std::string_view topic, std::string_view user);
  void presence_update(shard& s, per_shard& p, conn_state& st, uint32_t slot,
                       std::string_view data);
  uint64_t presence_key(shard& s, uint32_t slot) const { return uint64_t(s.index()) << 32 | slot; }
  // Queue groups: the member subscriptions of a connection on topic (group empty: all of them).
  void leave_groups(shard& s, conn_state& st, uint32_t slot, std::string_view topic,
                    std::string_view group);
  // One member of each group of topic gets f (through its shard's inbox).
  void pick_members(fanout::frame* f, uint32_t producer);
  // With Redis (the bridge thread, for each publication of the topic as Redis ordered it): the
  // member the cluster-wide rotation names, when it is one of this instance's.
  void cluster_pick(std::string_view topic, fanout::frame* f);
  void give_member(std::string_view topic, std::string_view group, std::string_view connection_id,
                   fanout::frame* f);
  // Tells the bridge (when there is one) a member joined / left.
  void report_member(const conn_state& st, std::string_view topic, std::string_view group,
                     bool join);
  void on_member_delivery(shard& s, per_shard& p, const fanout::delivery& d);
  void check_busy_members(shard& s, per_shard& p);
  void render_presence_metrics(std::string& out) const;
  void api_presence(shard& s, const proto::http_request& request, http_answer& answer);
  void reply_subscription(shard& s, conn_ref c, per_shard& p, std::string_view action,
                          bool with_recovery = false);
  void on_client_publish(shard& s, conn_ref c, per_shard& p, conn_state& st,
                         const proto::wse_publish& pub);
  void leave_all(shard& s, per_shard& p, uint32_t slot);
  void drop_subscriptions(shard& s, per_shard& p, uint32_t slot);
  std::shared_ptr<const auth::topic_acl> shared_acl(per_shard& p, const auth::topic_acl& acl);
  // Frames json (with its "c") once and routes it. On a shard thread (s not null) the frame
  // comes from that shard's pool.
  // from_redis: received from the bridge (not handed back to it).
  // local_only: not handed to the bridge (publish_local).
  publish_status route(shard* s, fanout::delivery_kind kind, std::string_view key,
                       std::string_view json, uint64_t* wakes = nullptr, bool from_redis = false,
                       bool local_only = false);
  publish_status route_recoverable(shard* s, std::string_view topic, std::string_view text,
                                   uint64_t* wakes);
  publish_status route_sequenced(shard* s, std::string_view topic, std::string_view text,
                                 uint64_t* wakes);
  publish_status route_stamped(std::string_view topic, std::string_view json, std::string_view text,
                               std::string_view stamped_topic, uint32_t epoch, uint64_t offset,
                               uint64_t* wakes);
  void deliver_marked(shard& s, per_shard& p, const fanout::frame& f);
  void render_recovery_metrics(std::string& out) const;
  // With Redis: asks the bridge for each topic's history; the reply goes when all answered.
  // done: the outcome goes to it instead of a reply frame (subscribe_recovering).
  void recover_remote(shard& s, conn_ref c, per_shard& p, const proto::wse_subscription& sub,
                      std::function<void(const wse_recovery_result&)> done = {});
  void on_history(shard& s, per_shard& p, conn_ref c, std::string_view blob,
                  const fanout::frame& f);
  void finish_recovery(shard& s, per_shard& p, uint64_t id);
  // p.recovery, p.failed_* as a wse_recovery_result.
  static wse_recovery_result recovery_result(const per_shard& p);
  void api_command(shard& s, const proto::http_request& request, std::string_view body,
                   http_answer& answer);
  bool api_key_ok(shard& s, const proto::http_request& request, http_answer& answer,
                  std::string_view method = "POST");
  // The router's interest changed for the whole process: tell the bridge.
  void interest(bool changed, redis_interest kind, std::string_view key) {
    if (changed && bridge_) bridge_->interest_changed(kind, key);
  }
  void directory_add(uint32_t shard, conn_ref c, std::string_view connection_id);
  void directory_remove(std::string_view connection_id);
  struct conn_location;
  bool directory_find(std::string_view connection_id, conn_location& where);
  void api_publish(shard& s, per_shard& p, const proto::http_request& request,
                   std::string_view body, http_answer& answer);
  bool command(wse_conn conn, std::string_view name, std::span<const std::string_view> topics);
  // One command delivery (name, argument) for connection c of shard shard_index; false: that
  // shard's inbox is full.
  bool push_command(uint32_t shard_index, conn_ref c, std::string_view name, std::string_view arg);
  // The router bits subscribe(connection_id, ...) set for shard s, cleared once applied unless
  // the shard holds the pattern now.
  void undo_pre_added(shard& s, std::span<const std::string_view> topics);
  // Runs fn on shard shard_index's thread with connection c (checked by fn); false: inbox full.
  bool post(uint32_t shard_index, conn_ref c, std::function<void(shard&, conn_ref)> fn);

  wse_app_options opt_;
  wse_handler& handler_;
  const std::array<proto::wse_feature, wse_feature_count> features_;  // from the options
  bool auth_ = false;
  bool convert_payloads_ = true;  // handler_.reads_payload()
  // The current verifier, swapped by set_verifier. Shards keep their own copy and take the lock
  // only when verifier_version_ moved (once per reload), so an upgrade costs one atomic load.
  std::mutex verifier_mu_;
  std::shared_ptr<const auth::verifier> verifier_;  // guarded by verifier_mu_
  std::atomic<uint64_t> verifier_version_{1};       // written under verifier_mu_
  auth::token_sources sources_;
  hub* hub_ = nullptr;  // set by the server (attach) before any shard starts
  std::vector<std::unique_ptr<per_shard>> shards_;  // one per shard, made at construction
  counter reloads_ok_, reloads_failed_;             // written by the reloading thread only
  // The signing key, as the verifier: swapped under a mutex, copied by each shard when the
  // version moved (null: unsigned).
  std::mutex signing_mu_;
  std::shared_ptr<const std::string> signing_key_;  // guarded by signing_mu_
  std::atomic<uint64_t> signing_version_{1};        // written under signing_mu_
  std::atomic<uint64_t> signed_off_shard_{0};       // publications signed off the shards

  std::unique_ptr<recovery_store> recovery_;             // null: recovery off
  std::unique_ptr<fanout::presence_registry> presence_;  // null: presence off
  fanout::queue_groups queue_groups_;
  // Publications no member of a group could take / whose picked member's inbox was full (any
  // publishing thread: fetch_add).
  std::atomic<uint64_t> qg_no_member_{0}, qg_inbox_full_{0};
  // With Redis: per topic with members here, the cluster's rotation as the last marker gave it
  // (redis_names: queue_group_script) and the count since. Written by the bridge thread; the
  // HTTP API reads the sizes under the mutex.
  struct cluster_group {
    std::string name;
    std::vector<std::pair<std::string, std::string>> members;  // (instance, connection id)
    uint64_t cursor = 0;
  };
  mutable std::mutex cluster_mu_;
  fanout::string_map<std::vector<cluster_group>> cluster_groups_;  // under cluster_mu_
  std::atomic<uint64_t> cluster_views_{0};                         // cluster_groups_.size()
  bool recover_all_ = false;                                       // recovery_topics is just "*"

  redis_bridge* bridge_ = nullptr;
  std::string instance_id_;  // 8 hex digits; empty: connection ids stay fully random
  // Connection id -> where it lives (commands); striped, touched once per connect / close.
  struct conn_location {
    uint32_t shard, slot, generation;
  };
  struct alignas(64) directory_stripe {
    std::mutex mu;
    fanout::string_map<conn_location> map;
  };
  static constexpr size_t directory_stripes = 16;
  std::array<directory_stripe, directory_stripes> directory_;
  std::atomic<uint64_t> directory_size_{0};
  // The shards, learnt as each one first calls in (locate needs their addresses).
  std::unique_ptr<std::atomic<shard*>[]> shard_ptrs_;  // opt_.shards entries
};

}  // namespace wsed::engine
