// python/wsed/native.cpp: the CPython extension wsed._native: the engine (engine::server +
// engine::wse_app, optionally engine::redis_bridge) behind one Python class, Engine, with the
// reference's method names (wsed.compat.RustWSEServer subclasses it).
//
// Owns: per Engine, the configuration, the inbound event queue (bounded, shared by drain mode
// and the callback dispatcher), the per-connection send_event state (format, sequence, duplicate
// filter, token bucket), and, while running, the server, the app and the bridge.
// Thread: the shards run in their own threads and never take the GIL: their handler callbacks
// only push events into the queue. drain_inbound waits with the GIL released and converts a
// whole batch under one acquisition; set_callbacks' functions are called by one dispatcher
// thread, holding the GIL only while calling. Every send / broadcast / subscribe method only
// enqueues for the owning shard (hub inboxes); queries that need a shard's own state
// (subscriber counts, subscribe_with_recovery) wait for its answer with the GIL released,
// bounded by a deadline.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "auth/jwt.hpp"
#include "engine/redis_bridge.hpp"
#include "engine/redis_names.hpp"
#include "engine/server.hpp"
#include "engine/wse_app.hpp"
#include "proto/wse_builder.hpp"
#include "proto/wse_envelope.hpp"
#include "proto/wse_formats.hpp"
#include "python/wsed/helpers.hpp"
#include "python/wsed/pyjson.hpp"

namespace py = pybind11;

namespace wsed::py_native {

namespace py = ::pybind11;  // (wsed::py is the helpers' namespace)
using namespace wsed::engine;

// --- Inbound events ----------------------------------------------------------------------------

enum class event_kind : uint8_t {
  connect,
  auth_connect,
  msg,
  raw,
  bin,
  disconnect,
  presence_join,
  presence_leave
};

const char* name_of(event_kind k) {
  switch (k) {
    case event_kind::connect:
      return "connect";
    case event_kind::auth_connect:
      return "auth_connect";
    case event_kind::msg:
      return "msg";
    case event_kind::raw:
      return "raw";
    case event_kind::bin:
      return "bin";
    case event_kind::disconnect:
      return "disconnect";
    case event_kind::presence_join:
      return "presence_join";
    case event_kind::presence_leave:
      return "presence_leave";
  }
  return "?";
}

struct event {
  event_kind kind;
  std::string conn_id;  // empty for presence events
  std::string data;     // cookies / user id / JSON / raw text / bytes / presence JSON
};

// Bounded MPSC queue: shards push (never block: full drops and counts), one consumer at a time
// takes batches.
class event_queue {
 public:
  void set_capacity(size_t n) { capacity_ = n ? n : 1; }
  // Connects and disconnects are never dropped (they are bounded by the connections, and an
  // application counting connections must see both); data events over the capacity are.
  void push(event_kind kind, std::string_view conn_id, std::string_view data) {
    const bool lifecycle = kind == event_kind::connect || kind == event_kind::auth_connect ||
                           kind == event_kind::disconnect;
    {
      std::lock_guard lock(mu_);
      if (q_.size() >= capacity_ && !lifecycle) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      q_.push_back(event{kind, std::string(conn_id), std::string(data)});
      depth_.store(q_.size(), std::memory_order_relaxed);
    }
    cv_.notify_one();
  }
  // Waits up to timeout_ms for the first event, then takes up to max without waiting.
  void take(std::vector<event>& out, size_t max, int64_t timeout_ms) {
    std::unique_lock lock(mu_);
    if (q_.empty() && timeout_ms > 0)
      cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                   [&] { return !q_.empty() || interrupted_; });
    interrupted_ = false;
    while (!q_.empty() && out.size() < max) {
      out.push_back(std::move(q_.front()));
      q_.pop_front();
    }
    depth_.store(q_.size(), std::memory_order_relaxed);
  }
  void interrupt() {
    {
      std::lock_guard lock(mu_);
      interrupted_ = true;
    }
    cv_.notify_all();
  }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t depth() const { return depth_.load(std::memory_order_relaxed); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<event> q_;
  size_t capacity_ = 131072;
  bool interrupted_ = false;
  std::atomic<uint64_t> dropped_{0}, depth_{0};
};

// --- send_event's per-connection state -----------------------------------------------------------

struct conn_entry {
  bool msgpack = false;
  uint64_t seq = 1;  // server_ready was 1
  double tokens = 0;
  std::chrono::steady_clock::time_point refilled;
  std::chrono::steady_clock::time_point notified;  // last RATE_LIMITED / warning frame
  bool ever_notified = false;
  std::deque<std::string> ids;
  std::unordered_set<std::string> id_set;
};

class conn_table {
 public:
  void add(std::string_view id, bool msgpack, double capacity) {
    stripe& s = at(id);
    std::lock_guard lock(s.mu);
    conn_entry& e = s.map[std::string(id)];
    e = conn_entry{};
    e.msgpack = msgpack;
    e.tokens = capacity;
    e.refilled = std::chrono::steady_clock::now();
  }
  void remove(std::string_view id) {
    stripe& s = at(id);
    std::lock_guard lock(s.mu);
    s.map.erase(std::string(id));
  }
  template <typename F>
  bool with(std::string_view id, F&& f) {
    stripe& s = at(id);
    std::lock_guard lock(s.mu);
    auto it = s.map.find(std::string(id));
    if (it == s.map.end()) return false;
    f(it->second);
    return true;
  }

 private:
  struct stripe {
    std::mutex mu;
    std::unordered_map<std::string, conn_entry> map;
  };
  static constexpr size_t stripes = 16;
  stripe& at(std::string_view id) { return stripes_[std::hash<std::string_view>{}(id) % stripes]; }
  stripe stripes_[stripes];
};

// --- Small formatting helpers --------------------------------------------------------------------

void uuid7(std::string& out) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t ms = uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count());
  uint64_t a = rng(), b = rng();
  uint8_t bytes[16];
  for (int i = 0; i < 6; ++i) bytes[i] = uint8_t(ms >> (40 - 8 * i));
  for (int i = 6; i < 16; ++i) bytes[i] = uint8_t((i < 11 ? a : b) >> (8 * (i % 8)));
  bytes[6] = uint8_t(0x70 | (bytes[6] & 0x0f));
  bytes[8] = uint8_t(0x80 | (bytes[8] & 0x3f));
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(hex[bytes[i] >> 4]);
    out.push_back(hex[bytes[i] & 15]);
  }
}

// "2026-03-01T12:34:56.789Z"
void iso_now(std::string& out) {
  thread_local int64_t cached_secs = -1;
  thread_local char prefix[32];  // "2026-03-01T12:34:56.", formatted once per second
  auto now = std::chrono::system_clock::now();
  int64_t ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  int64_t secs = ms / 1000;
  if (secs != cached_secs) {
    time_t tt = time_t(secs);
    tm t{};
    gmtime_r(&tt, &t);
    std::snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d.",
                  (t.tm_year + 1900) % 10000, (t.tm_mon + 1) % 100, t.tm_mday % 100,
                  t.tm_hour % 100, t.tm_min % 100, t.tm_sec % 100);
    cached_secs = secs;
  }
  out += prefix;
  int m = int(ms % 1000);
  out.push_back(char('0' + m / 100));
  out.push_back(char('0' + m / 10 % 10));
  out.push_back(char('0' + m % 10));
  out.push_back('Z');
}

// The reference's category rule: S for snapshots, WSE for the system types, else U.
std::string_view category_for(std::string_view t) {
  if (t.find("_snapshot") != std::string_view::npos || t.starts_with("snapshot_")) return "S";
  static constexpr std::string_view system[] = {"server_ready",
                                                "server_hello",
                                                "client_hello_ack",
                                                "connection_state_change",
                                                "subscription_update",
                                                "error",
                                                "pong",
                                                "PONG"};
  for (std::string_view s : system)
    if (t == s) return "WSE";
  return "U";
}

std::string as_string(const py::handle& h) {
  return py::cast<std::string>(h);
}

std::vector<std::string> topic_list(const py::handle& topics, const char* what) {
  if (py::isinstance<py::str>(topics))
    throw py::type_error(std::string(what) + ": topics must be a list of str, not a str");
  std::vector<std::string> out;
  for (py::handle t : py::iter(topics)) {
    if (!py::isinstance<py::str>(t))
      throw py::type_error(std::string(what) + ": every topic must be a str");
    out.push_back(as_string(t));
  }
  return out;
}

// --- The engine --------------------------------------------------------------------------------

struct options {
  std::string host;
  uint16_t port = 0;
  uint32_t max_connections = 1000;
  std::optional<std::string> jwt_secret, jwt_issuer, jwt_audience, jwt_cookie_name,
      jwt_previous_secret, jwt_key_id, jwt_algorithm, jwt_private_key;
  size_t max_inbound_queue_size = 131072;
  bool recovery = false;
  uint32_t recovery_buffer = 128, recovery_ttl_s = 300, recovery_max = 500;
  uint64_t recovery_memory = 268435456;
  bool presence = false;
  uint32_t presence_max_data = 4096, presence_max_members = 0;
  double rate_capacity = 100000.0, rate_refill = 10000.0;
  uint64_t max_message_size = 1048576;
  uint32_t ping_interval_s = 25, idle_timeout_s = 60;
  uint64_t max_outbound_queue_bytes = 16777216;
  uint32_t max_subscriptions = 0;
  std::string redis_url, redis_cluster, redis_prefix = "wse:";
  uint32_t workers = 1;
  uint32_t inbound_rate = 0, inbound_burst = 10000;  // per connection; 0: unlimited
  size_t dedup_window = 1024;                        // send_event ids remembered per connection
  std::chrono::milliseconds enqueue_timeout{2000};   // a call waiting for a full shard inbox
};

// The Redis endpoint or cluster seeds of the options (ValueError when they do not parse).
void parse_redis(const options& o, redis_bridge_options& ro) {
  std::string why;
  if (!o.redis_url.empty() && !redis::parse_endpoint(o.redis_url, ro.endpoint, why))
    throw py::value_error("redis_url: " + why);
  if (!o.redis_cluster.empty() && !redis::parse_cluster(o.redis_cluster, ro.cluster, why))
    throw py::value_error("redis_cluster: " + why);
}

class engine_object;

class handler final : public wse_handler {
 public:
  explicit handler(engine_object& e) : e_(e) {}
  void on_connect(const wse_user& user, wse_conn conn) override;
  void on_message(wse_conn conn, const wse_app_message& message) override;
  bool on_unparsed(wse_conn conn, proto::ws_opcode opcode,
                   std::span<const uint8_t> payload) override;
  void on_disconnect(wse_conn conn) override;
  bool on_untyped(wse_conn conn, std::string_view json) override;
  void on_presence(std::string_view type, std::string_view topic, std::string_view user,
                   std::string_view data) override;

 private:
  engine_object& e_;
};

class engine_object {
 public:
  explicit engine_object(options o) : opt_(std::move(o)), handler_(*this) {
    queue_.set_capacity(opt_.max_inbound_queue_size);
    verifier_ = build_verifier();  // validates every key now (ValueError)
  }
  ~engine_object() {
    try {
      stop_now(1001, "server shutting down", 2000);
    } catch (...) {
    }
    stop_dispatcher();
  }

  // --- lifecycle
  void start() {
    std::lock_guard lock(life_mu_);
    if (running_) throw std::runtime_error("Server is already running");
    server_config c;
    c.host = opt_.host;
    c.port = opt_.port;
    c.workers = opt_.workers;
    c.mode = server_mode::wse;
    c.connections_max = opt_.max_connections;
    c.idle_timeout_ms = opt_.idle_timeout_s * 1000;
    c.message_bytes_max = opt_.max_message_size;
    c.outbound_bytes_max =
        opt_.max_outbound_queue_bytes ? opt_.max_outbound_queue_bytes : (uint64_t(1) << 40);
    c.topics_per_connection_max =
        opt_.max_subscriptions ? opt_.max_subscriptions : proto::wse_subscription_topics_max;
    c.quiet = true;
    c.ping_interval_ms = opt_.ping_interval_s * 1000;
    c.inbound_rate = opt_.inbound_rate;
    c.inbound_burst = opt_.inbound_burst;
    c.recovery = opt_.recovery;
    c.recovery_buffer = opt_.recovery_buffer;
    c.recovery_ttl_ms = opt_.recovery_ttl_s * 1000;
    c.recovery_max_replay = opt_.recovery_max;
    c.recovery_memory_bytes = opt_.recovery_memory;
    c.presence = opt_.presence;
    c.presence_data_bytes_max = opt_.presence_max_data;
    c.presence_members_max = opt_.presence_max_members;
    c.redis_url = opt_.redis_url;
    c.redis_cluster = opt_.redis_cluster;
    c.redis_prefix = opt_.redis_prefix;
    if (opt_.jwt_cookie_name) c.jwt_cookie = *opt_.jwt_cookie_name;

    wse_app_options o = wse_options_from(c);
    o.verifier = verifier_;
    o.directory = true;
    auto app = std::make_unique<wse_app>(std::move(o), handler_);
    current_app_.store(app.get(), std::memory_order_release);
    auto srv = std::make_unique<server>(c, *app);
    std::unique_ptr<redis_bridge> bridge;
    if (!c.redis_url.empty() || !c.redis_cluster.empty()) {
      redis_bridge_options ro = bridge_options_from(c);
      parse_redis(opt_, ro);
      std::random_device rd;
      char id[9];
      std::snprintf(id, sizeof id, "%08x", unsigned(rd()));
      ro.instance_id = id;
      bridge = std::make_unique<redis_bridge>(std::move(ro), srv->fanout_hub().router(), *app);
      app->set_bridge(bridge.get());
      bridge->start();
    }
    try {
      srv->start();  // binds and starts the shards: a client may connect once it returns
    } catch (const std::exception& e) {
      if (bridge) bridge->stop();
      current_app_.store(nullptr, std::memory_order_release);
      std::string why = e.what();
      if (why.find("in use") == std::string::npos && why.find("EADDRINUSE") != std::string::npos)
        why += " (address in use)";
      throw std::runtime_error("cannot start: " + why);
    }
    app_ = std::move(app);
    server_ = std::move(srv);
    bridge_ = std::move(bridge);
    if (!started_) started_at_ = std::chrono::steady_clock::now();
    started_ = true;
    running_ = true;
  }

  void stop() { stop_now(1001, "server shutting down", 2000); }

  void drain(uint16_t code, const std::string& reason, double timeout_s) {
    uint32_t ms = timeout_s <= 0 ? 1 : uint32_t(std::min(timeout_s, 3600.0) * 1000);
    stop_now(code, reason, ms);
  }

  bool is_running() const { return running_.load(); }
  uint16_t local_port() const {
    std::lock_guard lock(life_mu_);
    return server_ ? server_->port() : 0;
  }

  // --- events
  void enable_drain_mode() { drain_mode_ = true; }
  void set_drain_mode(bool on) { drain_mode_ = on; }  // wsed.Server: callbacks take over

  py::list drain_inbound(size_t max_count, int64_t timeout_ms) {
    std::vector<event> batch;
    {
      py::gil_scoped_release unlocked;
      queue_.take(batch, std::max<size_t>(max_count, 1), timeout_ms);
    }
    py::list out(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) out[i] = as_tuple(batch[i]);
    return out;
  }

  uint64_t inbound_dropped() const { return queue_.dropped(); }
  uint64_t inbound_depth() const { return queue_.depth(); }

  void set_callbacks(py::object on_connect, py::object on_message, py::object on_disconnect) {
    for (const py::object* f : {&on_connect, &on_message, &on_disconnect})
      if (!PyCallable_Check(f->ptr())) throw py::type_error("All callbacks must be callable");
    stop_dispatcher();
    on_connect_ = std::move(on_connect);
    on_message_ = std::move(on_message);
    on_disconnect_ = std::move(on_disconnect);
    callbacks_ = true;
    dispatching_ = true;
    dispatcher_ = std::thread([this] { dispatch_loop(); });
  }

  bool wants_events() const { return drain_mode_.load() || callbacks_.load(); }
  void push(event_kind k, std::string_view id, std::string_view data) {
    if (wants_events()) queue_.push(k, id, data);
  }
  conn_table& conns() { return conns_; }
  double rate_capacity() const { return opt_.rate_capacity; }
  // The app of the running server, for the shard threads' callbacks (set before the shards
  // start, cleared after they stopped).
  wse_app* app() const { return current_app_.load(std::memory_order_acquire); }

  // --- sending
  // A full shard inbox (Python outran the shard): the call waits for room, GIL released, with
  // growing pauses, up to enqueue_timeout; then it gives up and counts (dropped_).
  template <class Push>
  bool push_waiting(Push&& push) {
    if (push()) return true;
    py::gil_scoped_release unlocked;
    auto deadline = std::chrono::steady_clock::now() + opt_.enqueue_timeout;
    std::chrono::microseconds pause{20};
    while (std::chrono::steady_clock::now() < deadline) {
      waits_.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(pause);
      if (push()) return true;
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }

  void send(const std::string& id, const std::string& text) {
    wse_app* a = live();
    wse_conn c;
    if (a && a->locate(id, c)) push_waiting([&] { return a->send_text(c, text); });
  }
  void send_bytes(const std::string& id, const py::bytes& data) {
    wse_app* a = live();
    wse_conn c;
    std::string_view bytes(data);
    if (a && a->locate(id, c)) push_waiting([&] { return a->send_binary(c, bytes); });
  }

  size_t send_event(const std::string& id, const py::dict& ev, int64_t threshold) {
    wse_app* a = live();
    if (!a) return 0;
    std::string given_id;
    if (ev.contains("id") && py::isinstance<py::str>(ev["id"])) given_id = as_string(ev["id"]);
    std::string type;
    if (ev.contains("t") && py::isinstance<py::str>(ev["t"])) type = as_string(ev["t"]);
    // The JSON is built before the connection's state is touched (Python calls under no lock).
    std::string json = "{\"c\":";
    proto::wse_append_json_string(json, category_for(type));
    if (!type.empty()) {
      json += ",\"t\":";
      proto::wse_append_json_string(json, type);
    }
    bool has_seq = false, has_ts = false;
    for (auto [k, v] : ev) {
      if (!py::isinstance<py::str>(k)) continue;
      std::string key = as_string(k);
      if (key == "t" || key == "v" || key == "c") continue;
      if (key == "seq") has_seq = true;
      if (key == "ts") has_ts = true;
      json += ',';
      proto::wse_append_json_string(json, key);
      json += ':';
      wsed::py::to_json(v, json);
    }
    if (!ev.contains("id")) {  // a given id (of any type) is kept where it stands
      json += ",\"id\":\"";
      uuid7(json);
      json += '"';
    }
    bool msgpack = false, duplicate = false, limited = false, notify = false, warn = false;
    uint64_t seq = 0;
    double remaining = 0;
    bool known = conns_.with(id, [&](conn_entry& e) {
      msgpack = e.msgpack;
      if (!given_id.empty() && e.id_set.count(given_id)) {
        duplicate = true;
        return;
      }
      auto now = std::chrono::steady_clock::now();
      double elapsed = std::chrono::duration<double>(now - e.refilled).count();
      e.tokens = std::min(opt_.rate_capacity, e.tokens + elapsed * opt_.rate_refill);
      e.refilled = now;
      bool quiet = e.ever_notified && now - e.notified < std::chrono::seconds(1);
      if (e.tokens < 1.0) {
        limited = true;
        notify = !quiet;
      } else {
        warn = e.tokens < 0.2 * opt_.rate_capacity && !quiet;
        e.tokens -= 1.0;
      }
      if (notify || warn) {
        e.notified = now;
        e.ever_notified = true;
      }
      remaining = e.tokens;
      if (limited) return;
      seq = ++e.seq;  // (the id is remembered once the frame is queued)
    });
    if (!known || duplicate) {
      (known ? refused_duplicate_ : refused_unknown_).fetch_add(1, std::memory_order_relaxed);
      return 0;
    }
    if (limited) {
      refused_rate_.fetch_add(1, std::memory_order_relaxed);
      if (notify)
        a->send_text(id,
                     "{\"c\":\"WSE\",\"t\":\"error\",\"p\":{\"code\":\"RATE_LIMITED\",\"message\":"
                     "\"Rate limit exceeded\",\"retry_after\":1.0},\"v\":1}");
      return 0;
    }
    if (warn) {
      uint64_t cap = uint64_t(opt_.rate_capacity);
      std::string w = "{\"c\":\"WSE\",\"t\":\"rate_limit_warning\",\"p\":{\"current_rate\":" +
                      std::to_string(uint64_t(opt_.rate_capacity - remaining)) +
                      ",\"limit\":" + std::to_string(cap) +
                      ",\"remaining\":" + std::to_string(uint64_t(remaining)) +
                      ",\"retry_after\":1.0},\"v\":1}";
      a->send_text(id, w);
    }
    if (!has_seq) json += ",\"seq\":" + std::to_string(seq);
    if (!has_ts) {
      json += ",\"ts\":\"";
      iso_now(json);
      json += '"';
    }
    json += ",\"v\":1}";
    thread_local proto::wse_codec codec;
    thread_local std::string encoded;
    encoded.clear();
    std::string_view wire = json;
    if (msgpack) {
      if (codec.json_to_msgpack(json, encoded, true) != proto::wse_error::none)
        throw std::runtime_error("Msgpack error: the event does not convert");
      wire = encoded;
    } else if (threshold > 0 && json.size() > size_t(threshold) &&
               codec.compress(json, encoded, uint32_t(std::min<int64_t>(threshold, UINT32_MAX))) ==
                   proto::wse_compressed::yes) {
      wire = encoded;
    }
    wse_conn c;
    bool sent = a->locate(id, c) && push_waiting([&] { return a->send_binary(c, wire); });
    conns_.with(id, [&](conn_entry& e) {
      if (!sent) {
        e.tokens = std::min(opt_.rate_capacity, e.tokens + 1.0);  // refunded: nothing went
        return;
      }
      if (given_id.empty()) return;
      e.ids.push_back(given_id);
      e.id_set.insert(given_id);
      if (e.ids.size() > opt_.dedup_window) {
        e.id_set.erase(e.ids.front());
        e.ids.pop_front();
      }
    });
    return sent ? wire.size() : 0;
  }

  void broadcast_all(const std::string& text) {
    if (wse_app* a = live())
      push_waiting(
          [&] { return a->broadcast_local(proto::ws_opcode::text, text) != publish_status::busy; });
  }
  void broadcast_all_bytes(const py::bytes& data) {
    std::string_view bytes(data);
    if (wse_app* a = live())
      push_waiting([&] {
        return a->broadcast_local(proto::ws_opcode::binary, bytes) != publish_status::busy;
      });
  }
  // A topic publication is all or nothing across the shards (hub::route), so a busy one is
  // published again whole.
  void broadcast_local(const std::string& topic, const std::string& json) {
    publish_topic(topic, json, true);
  }
  void broadcast(const std::string& topic, const std::string& json) {
    publish_topic(topic, json, false);
  }
  void publish_topic(const std::string& topic, const std::string& json, bool local) {
    wse_app* a = live();
    if (!a) return;
    publish_status st = publish_status::busy;
    push_waiting([&] {
      st = local ? a->publish_local(topic, json) : a->publish(topic, json);
      return st != publish_status::busy;
    });
    if (st == publish_status::invalid) throw py::value_error(invalid_publication(topic));
  }

  // --- connections and topics
  uint64_t connection_count() const {
    wse_app* a = app_.get();
    return a && running_ ? a->connection_count() : 0;
  }
  std::vector<std::string> connections() {
    wse_app* a = live();
    return a ? a->connection_ids() : std::vector<std::string>{};
  }
  void disconnect(const std::string& id) {
    if (wse_app* a = live()) a->disconnect(id, 1000, "disconnected by the application");
  }
  void set_topic_acl(const std::string& id, const py::object& allow, const py::object& deny) {
    std::vector<std::string> al =
        allow.is_none() ? std::vector<std::string>{} : topic_list(allow, "set_topic_acl");
    std::vector<std::string> de =
        deny.is_none() ? std::vector<std::string>{} : topic_list(deny, "set_topic_acl");
    if (wse_app* a = live()) a->set_topic_acl(id, std::move(al), std::move(de));
  }
  void subscribe(const std::string& id, const py::object& topics, const py::object& presence_data,
                 const py::object& queue_group) {
    std::vector<std::string> list = topic_list(topics, "subscribe_connection");
    wse_subscribe_extras x;
    std::string data, group;
    if (!presence_data.is_none()) {
      if (!py::isinstance<py::dict>(presence_data))
        throw py::type_error("subscribe_connection: presence_data must be a dict");
      wsed::py::to_json(presence_data, data);
      x.has_presence = true;
      x.presence_json = data;
    }
    if (!queue_group.is_none()) {
      group = py::cast<std::string>(queue_group);
      if (group.empty() || !proto::wse_queue_group_valid(group))
        throw py::value_error(
            "subscribe_connection: queue_group must be 1 to 128 bytes without control "
            "characters");
      x.queue_group = group;
    }
    std::vector<std::string_view> views(list.begin(), list.end());
    wse_app* a = live();
    wse_conn c;
    if (a && a->locate(id, c)) push_waiting([&] { return a->subscribe(id, views, x); });
  }
  void unsubscribe(const std::string& id, const py::object& topics) {
    std::vector<std::string> list;
    if (!topics.is_none()) {
      list = topic_list(topics, "unsubscribe_connection");
      if (list.empty()) return;  // an empty list: nothing (None is everything)
    }
    std::vector<std::string_view> views(list.begin(), list.end());
    wse_app* a = live();
    wse_conn c;
    if (a && a->locate(id, c)) push_waiting([&] { return a->unsubscribe(id, views); });
  }

  py::dict subscribe_with_recovery(const std::string& id, const py::object& topics, bool recover,
                                   const py::object& epoch, const py::object& offset) {
    std::vector<std::string> list = topic_list(topics, "subscribe_with_recovery");
    bool has_position = recover && !epoch.is_none() && !offset.is_none();
    uint32_t e = 0;
    uint64_t off = 0;
    if (has_position) {
      std::string text = py::cast<std::string>(epoch);
      char* end = nullptr;
      unsigned long v = text.empty() || text.size() > 8 ? 0 : std::strtoul(text.c_str(), &end, 16);
      if (text.empty() || text.size() > 8 || !end || *end)
        throw py::value_error("Invalid epoch hex string: " + text);
      e = uint32_t(v);
      int64_t o = py::cast<int64_t>(offset);
      if (o < 0) throw py::value_error("offset must be >= 0");
      off = uint64_t(o);
    }
    auto result = std::make_shared<waiter<wse_recovery_result>>();
    wse_app* a = live();
    bool posted =
        a && a->subscribe_recovering(id, list, recover, has_position, e, off,
                                     [result](const wse_recovery_result& r) { result->give(r); });
    wse_recovery_result r;
    if (posted) {
      py::gil_scoped_release unlocked;
      result->wait(std::chrono::seconds(20), r);
    }
    py::dict out;
    py::dict per_topic;
    for (const auto& t : r.topics) {
      py::dict d;
      if (t.has_epoch) {
        char hex[9];
        std::snprintf(hex, sizeof hex, "%08x", t.epoch);
        d["epoch"] = py::str(hex);
      } else {
        d["epoch"] = py::none();
      }
      d["offset"] = t.offset;
      d["recoverable"] = t.recoverable;
      d["recovered"] = t.recovered;
      d["count"] = t.count;
      per_topic[py::str(t.name)] = d;
    }
    for (const std::string& t : list)  // refused or never applied: no history
      if (!per_topic.contains(t)) {
        py::dict d;
        d["epoch"] = py::none();
        d["offset"] = 0;
        d["recoverable"] = false;
        d["recovered"] = false;
        d["count"] = 0;
        per_topic[py::str(t)] = d;
      }
    out["recovered"] = recover && !list.empty() && r.found && r.recovered && r.failed.empty();
    out["topics"] = per_topic;
    return out;
  }

  uint64_t topic_subscriber_count(const std::string& topic) {
    wse_app* a = live();
    if (!a) return 0;
    auto total = std::make_shared<waiter<uint64_t>>();
    uint32_t n = a->on_each_shard(
        [a, total, topic](shard& s) { total->add(a->local_subscriber_count(s, topic)); });
    py::gil_scoped_release unlocked;
    return total->wait_for_adds(n, std::chrono::seconds(5));
  }

  py::object queue_group_info(const std::string& topic) {
    wse_app* a = live();
    barrier(a);
    return a ? wsed::py::from_json(a->queue_group_info(topic)) : py::dict();
  }

  // --- presence
  py::object presence(const std::string& topic) {
    wse_app* a = live();
    barrier(a);
    return a ? wsed::py::from_json(a->presence_members(topic)) : py::dict();
  }
  py::dict presence_stats(const std::string& topic) {
    fanout::presence_stats st{};
    wse_app* a = live();
    barrier(a);
    if (a) st = a->presence_stats(topic);
    py::dict d;
    d["num_users"] = st.users;
    d["num_connections"] = st.connections;
    return d;
  }
  void update_presence(const std::string& id, const py::dict& data) {
    wse_app* a = live();
    if (!a || !opt_.presence) return;
    std::string json;
    wsed::py::to_json(data, json);
    if (json.size() > opt_.presence_max_data)
      throw std::runtime_error("Failed to update presence data (size limit or unknown connection)");
    a->update_presence(id, json);
  }

  // --- health
  py::dict health() {
    py::dict d;
    wse_app* a = live();
    d["connections"] = connection_count();
    d["inbound_queue_depth"] = queue_.depth();
    d["inbound_dropped"] = queue_.dropped();
    bool up = bridge_ && bridge_->connected();
    d["cluster_connected"] = up;
    d["cluster_peer_count"] = up ? 1 : 0;  // Redis is the one peer
    d["cluster_messages_sent"] = bridge_ ? bridge_->stats().published.get() : 0;
    d["cluster_messages_delivered"] = bridge_ ? bridge_->stats().received_delivered.get() : 0;
    d["cluster_messages_dropped"] =
        bridge_ ? bridge_->stats().dropped_buffer.get() + bridge_->stats().lost.get() +
                      bridge_->stats().dropped_ring.load(std::memory_order_relaxed)
                : 0;
    d["uptime_secs"] =
        started_
            ? std::chrono::duration<double>(std::chrono::steady_clock::now() - started_at_).count()
            : 0.0;
    uint64_t rt = 0, rb = 0, pt = 0, pu = 0;
    if (a) a->recovery_totals(rt, rb);
    if (a) a->presence_totals(pt, pu);
    d["recovery_enabled"] = opt_.recovery;
    d["recovery_topic_count"] = rt;
    d["recovery_total_bytes"] = rb;
    d["presence_enabled"] = opt_.presence;
    d["presence_topics"] = pt;
    d["presence_total_users"] = pu;
    d["redis_connected"] = up;
    d["send_event_rate_limited"] = refused_rate_.load(std::memory_order_relaxed);
    d["send_event_duplicates"] = refused_duplicate_.load(std::memory_order_relaxed);
    d["running"] = running_.load();
    return d;
  }
  std::string metrics() {
    std::string text;
    {
      std::lock_guard lock(life_mu_);
      if (server_) text = server_->metrics_text();
    }
    text +=
        "# HELP wsed_python_inbound_queue_depth Events waiting for drain_inbound or the "
        "callbacks\n# TYPE wsed_python_inbound_queue_depth "
        "gauge\nwsed_python_inbound_queue_depth " +
        std::to_string(queue_.depth()) +
        "\n# HELP wsed_python_inbound_dropped_total Events dropped: the queue "
        "(max_inbound_queue_size) was full\n# TYPE wsed_python_inbound_dropped_total "
        "counter\nwsed_python_inbound_dropped_total " +
        std::to_string(queue_.dropped()) +
        "\n# HELP wsed_python_send_event_refused_total send_event calls that sent nothing\n# TYPE "
        "wsed_python_send_event_refused_total counter\n"
        "wsed_python_send_event_refused_total{cause=\"rate_limited\"} " +
        std::to_string(refused_rate_.load(std::memory_order_relaxed)) +
        "\nwsed_python_send_event_refused_total{cause=\"duplicate\"} " +
        std::to_string(refused_duplicate_.load(std::memory_order_relaxed)) +
        "\nwsed_python_send_event_refused_total{cause=\"unknown_connection\"} " +
        std::to_string(refused_unknown_.load(std::memory_order_relaxed)) +
        "\n# HELP wsed_python_push_waits_total Pauses of a call waiting for room in a full shard "
        "inbox\n# TYPE wsed_python_push_waits_total counter\nwsed_python_push_waits_total " +
        std::to_string(waits_.load(std::memory_order_relaxed)) +
        "\n# HELP wsed_python_push_dropped_total Calls given up after enqueue_timeout of a full "
        "shard "
        "inbox\n# TYPE wsed_python_push_dropped_total counter\nwsed_python_push_dropped_total " +
        std::to_string(dropped_.load(std::memory_order_relaxed)) + "\n";
    return text;
  }

 private:
  template <typename T>
  struct waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    T value{};
    uint32_t adds = 0;
    void give(const T& v) {
      {
        std::lock_guard lock(mu);
        value = v;
        done = true;
      }
      cv.notify_all();
    }
    void add(const T& v) {
      {
        std::lock_guard lock(mu);
        value += v;
        ++adds;
      }
      cv.notify_all();
    }
    bool wait(std::chrono::milliseconds limit, T& out) {
      std::unique_lock lock(mu);
      cv.wait_for(lock, limit, [&] { return done; });
      if (done) out = value;
      return done;
    }
    T wait_for_adds(uint32_t n, std::chrono::milliseconds limit) {
      std::unique_lock lock(mu);
      cv.wait_for(lock, limit, [&] { return adds >= n; });
      return value;
    }
  };

  // Read-your-writes for the queries of process-wide registries: waits (GIL released, bounded)
  // until every shard applied what was enqueued before (the external lane is FIFO).
  static void barrier(wse_app* a) {
    if (!a) return;
    auto done = std::make_shared<waiter<uint64_t>>();
    uint32_t n = a->on_each_shard([done](shard&) { done->add(1); });
    py::gil_scoped_release unlocked;
    done->wait_for_adds(n, std::chrono::seconds(5));
  }

  static std::string invalid_publication(const std::string& topic) {
    return "broadcast: data must be a JSON object and the topic concrete (no * or ?), not "
           "longer than 256 bytes, without control characters (topic '" +
           topic.substr(0, 64) + "')";
  }

  wse_app* live() const { return running_ ? app_.get() : nullptr; }

  std::shared_ptr<const auth::verifier> build_verifier() {
    if (opt_.ping_interval_s >= opt_.idle_timeout_s && opt_.idle_timeout_s != 0)
      throw py::value_error("ping_interval (" + std::to_string(opt_.ping_interval_s) +
                            "s) must be less than idle_timeout (" +
                            std::to_string(opt_.idle_timeout_s) + "s)");
    std::string alg = opt_.jwt_algorithm.value_or("HS256");
    if (alg != "HS256" && alg != "RS256" && alg != "ES256")
      throw py::value_error("Unsupported jwt_algorithm: " + alg +
                            ". Supported: HS256, RS256, ES256");
    if (!opt_.jwt_secret) return nullptr;
    auth::verifier_config vc;
    vc.alg = *auth::parse_alg(alg);
    if (alg == "HS256") {
      if (opt_.jwt_secret->size() < 32)
        throw py::value_error("jwt_secret must be at least 32 bytes (RFC 7518 HS256 minimum)");
      vc.hmac_secret = *opt_.jwt_secret;
      if (opt_.jwt_previous_secret) {
        if (opt_.jwt_previous_secret->size() < 32)
          throw py::value_error("jwt_previous_secret must be at least 32 bytes");
        vc.hmac_secret_previous = *opt_.jwt_previous_secret;
      }
    } else {
      vc.public_key_pem = *opt_.jwt_secret;
      if (opt_.jwt_previous_secret)
        throw py::value_error("jwt_previous_secret is supported with HS256 only in wsed");
      if (opt_.jwt_private_key) {
        std::string probe = R"({"sub":"probe","exp":4102444800})";
        if (!auth::mint(vc.alg, *opt_.jwt_private_key, probe, {}))
          throw py::value_error("Invalid " + alg + " jwt_private_key PEM");
      }
    }
    vc.kid = opt_.jwt_key_id.value_or("");
    vc.issuer = opt_.jwt_issuer.value_or("");
    vc.audience = opt_.jwt_audience.value_or("");
    vc.leeway_s = 30;
    auto v = auth::verifier::build(vc);
    if (!v)
      throw py::value_error("Invalid " + alg +
                            " public key PEM: " + std::string(auth::name_of(v.error())));
    return std::move(*v);
  }

  py::tuple as_tuple(event& e) {
    py::object id = e.conn_id.empty() ? py::object(py::none()) : py::object(py::str(e.conn_id));
    return py::make_tuple(name_of(e.kind), id, data_of(e));
  }

  py::object data_of(event& e) {
    switch (e.kind) {
      case event_kind::connect:
      case event_kind::auth_connect:
        return py::str(e.data);
      case event_kind::raw:
        return py::reinterpret_steal<py::object>(
            PyUnicode_DecodeUTF8(e.data.data(), Py_ssize_t(e.data.size()), "replace"));
      case event_kind::bin:
        return py::bytes(e.data);
      case event_kind::disconnect:
        return py::none();
      case event_kind::msg: {
        py::object v = wsed::py::from_json(e.data);
        if (py::isinstance<py::dict>(v)) {  // the reference's normalisation
          py::dict d = v;
          if (!d.contains("t") && d.contains("type")) d["t"] = d.attr("pop")("type");
          if (!d.contains("p") && d.contains("payload")) d["p"] = d.attr("pop")("payload");
        }
        return v;
      }
      case event_kind::presence_join:
      case event_kind::presence_leave:
        return wsed::py::from_json(e.data);
    }
    return py::none();
  }

  void dispatch_loop() {
    std::vector<event> batch;
    while (dispatching_.load()) {
      if (drain_mode_.load()) {  // drain_inbound takes the events now
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      batch.clear();
      queue_.take(batch, 256, 100);
      if (batch.empty()) continue;
      py::gil_scoped_acquire locked;
      for (event& e : batch) {
        try {
          switch (e.kind) {
            case event_kind::connect:
            case event_kind::auth_connect:
              on_connect_(e.conn_id, e.data);
              break;
            case event_kind::disconnect:
              on_disconnect_(e.conn_id);
              break;
            case event_kind::msg:
            case event_kind::raw:
            case event_kind::bin:
              on_message_(e.conn_id, data_of(e));
              break;
            default:
              break;  // presence events are for drain mode
          }
        } catch (py::error_already_set& err) {
          err.discard_as_unraisable("wsed callback");
        }
      }
    }
  }

  void stop_dispatcher() {
    if (!dispatcher_.joinable()) return;
    dispatching_ = false;
    queue_.interrupt();
    if (PyGILState_Check()) {
      py::gil_scoped_release unlocked;
      dispatcher_.join();
    } else {
      dispatcher_.join();
    }
  }

  void stop_now(uint16_t code, std::string_view reason, uint32_t timeout_ms) {
    std::unique_ptr<server> srv;
    std::unique_ptr<redis_bridge> bridge;
    std::unique_ptr<wse_app> app;
    {
      std::lock_guard lock(life_mu_);
      if (!running_) return;
      running_ = false;
      srv = std::move(server_);
      bridge = std::move(bridge_);
      app = std::move(app_);
    }
    auto finish = [&] {
      srv->stop(code, reason, timeout_ms);
      srv->join();
      if (bridge) bridge->stop();
      srv.reset();
      bridge.reset();
      current_app_.store(nullptr, std::memory_order_release);
      app.reset();
    };
    if (PyGILState_Check()) {
      py::gil_scoped_release unlocked;
      finish();
    } else {
      finish();
    }
  }

  options opt_;
  handler handler_;
  event_queue queue_;
  conn_table conns_;
  std::shared_ptr<const auth::verifier> verifier_;
  mutable std::mutex life_mu_;  // start / stop / the pointers below
  std::unique_ptr<wse_app> app_;
  std::atomic<wse_app*> current_app_{nullptr};
  std::unique_ptr<server> server_;
  std::unique_ptr<redis_bridge> bridge_;
  std::atomic<bool> running_{false};
  bool started_ = false;
  std::chrono::steady_clock::time_point started_at_;
  std::atomic<bool> drain_mode_{false}, callbacks_{false}, dispatching_{false};
  py::object on_connect_, on_message_, on_disconnect_;
  std::thread dispatcher_;
  std::atomic<uint64_t> refused_rate_{0}, refused_duplicate_{0}, refused_unknown_{0};
  std::atomic<uint64_t> waits_{0}, dropped_{0};  // push_waiting: pauses, calls given up
};

// Every Cookie header of the upgrade, joined by "; " (the reference's cookies string).
std::string cookie_header(const proto::http_request& request) {
  std::string cookies;
  for (size_t i = 0; i < request.header_count; ++i)
    if (proto::ascii_iequals(request.headers[i].name, "Cookie")) {
      if (!cookies.empty()) cookies += "; ";
      cookies += request.headers[i].value;
    }
  return cookies;
}

void handler::on_connect(const wse_user& user, wse_conn) {
  e_.conns().add(user.connection_id, user.msgpack, e_.rate_capacity());
  if (user.authenticated_by_token)
    e_.push(event_kind::auth_connect, user.connection_id, user.user_id);
  else
    e_.push(event_kind::connect, user.connection_id, cookie_header(*user.request));
}

void handler::on_message(wse_conn, const wse_app_message& m) {
  e_.push(event_kind::msg, m.connection_id, m.json);
}

bool handler::on_unparsed(wse_conn conn, proto::ws_opcode opcode,
                          std::span<const uint8_t> payload) {
  wse_app* a = e_.app();
  if (!a) return false;
  std::string_view id = a->ids_of(conn).connection_id;
  std::string_view bytes(reinterpret_cast<const char*>(payload.data()), payload.size());
  e_.push(opcode == proto::ws_opcode::text ? event_kind::raw : event_kind::bin, id, bytes);
  return true;
}

bool handler::on_untyped(wse_conn conn, std::string_view json) {
  wse_app* a = e_.app();
  if (!a) return false;
  e_.push(event_kind::msg, a->ids_of(conn).connection_id, json);
  return true;
}

void handler::on_disconnect(wse_conn conn) {
  wse_app* a = e_.app();
  if (!a) return;
  std::string_view id = a->ids_of(conn).connection_id;
  if (id.empty()) return;
  e_.conns().remove(id);
  e_.push(event_kind::disconnect, id, {});
}

void handler::on_presence(std::string_view type, std::string_view topic, std::string_view user,
                          std::string_view data) {
  event_kind k;
  if (type == "presence_join")
    k = event_kind::presence_join;
  else if (type == "presence_leave")
    k = event_kind::presence_leave;
  else
    return;  // updates are not events (the reference's drain queue has none)
  std::string json = "{\"topic\":";
  proto::wse_append_json_string(json, topic);
  json += ",\"user_id\":";
  proto::wse_append_json_string(json, user);
  json += ",\"data\":";
  json += data.empty() ? std::string_view("{}") : data;
  json += '}';
  e_.push(k, {}, json);
}

template <typename T>
T checked(const char* name, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    throw py::value_error(std::string(name) + " must be between " + std::to_string(lo) + " and " +
                          std::to_string(hi) + " (got " + std::to_string(v) + ")");
  return T(v);
}

std::optional<std::string> opt_bytes(const py::object& o, const char* name) {
  if (o.is_none()) return std::nullopt;
  if (py::isinstance<py::bytes>(o)) return py::cast<std::string>(o);
  throw py::type_error(std::string(name) + " must be bytes");
}

std::optional<std::string> opt_str(const py::object& o, const char* name) {
  if (o.is_none()) return std::nullopt;
  if (py::isinstance<py::str>(o)) return py::cast<std::string>(o);
  throw py::type_error(std::string(name) + " must be a str");
}

std::unique_ptr<engine_object> make_engine(
    const std::string& host, int64_t port, int64_t max_connections, py::object jwt_secret,
    py::object jwt_issuer, py::object jwt_audience, py::object jwt_cookie_name,
    py::object jwt_previous_secret, py::object jwt_key_id, py::object jwt_algorithm,
    py::object jwt_private_key, int64_t max_inbound_queue_size, bool recovery_enabled,
    int64_t recovery_buffer_size, int64_t recovery_ttl, int64_t recovery_max_messages,
    int64_t recovery_memory_budget, bool presence_enabled, int64_t presence_max_data_size,
    int64_t presence_max_members, double rate_limit_capacity, double rate_limit_refill,
    int64_t max_message_size, int64_t ping_interval, int64_t idle_timeout,
    int64_t max_outbound_queue_bytes, int64_t max_subscriptions_per_connection,
    py::object redis_url, py::object redis_cluster, const std::string& redis_prefix,
    int64_t workers, int64_t inbound_rate, int64_t inbound_burst, int64_t dedup_window,
    double enqueue_timeout) {
  options o;
  o.host = host;
  o.port = checked<uint16_t>("port", port, 0, 65535);
  o.max_connections = checked<uint32_t>("max_connections", max_connections, 1, 10000000);
  o.jwt_secret = opt_bytes(jwt_secret, "jwt_secret");
  o.jwt_issuer = opt_str(jwt_issuer, "jwt_issuer");
  o.jwt_audience = opt_str(jwt_audience, "jwt_audience");
  o.jwt_cookie_name = opt_str(jwt_cookie_name, "jwt_cookie_name");
  o.jwt_previous_secret = opt_bytes(jwt_previous_secret, "jwt_previous_secret");
  o.jwt_key_id = opt_str(jwt_key_id, "jwt_key_id");
  o.jwt_algorithm = opt_str(jwt_algorithm, "jwt_algorithm");
  o.jwt_private_key = opt_bytes(jwt_private_key, "jwt_private_key");
  o.max_inbound_queue_size =
      checked<size_t>("max_inbound_queue_size", max_inbound_queue_size, 1, int64_t(1) << 30);
  o.recovery = recovery_enabled;
  o.recovery_buffer = checked<uint32_t>("recovery_buffer_size", recovery_buffer_size, 1, 1 << 20);
  uint32_t ring = 16;  // the reference: max(n, 16) up to a power of two
  while (ring < o.recovery_buffer) ring <<= 1;
  o.recovery_buffer = ring;
  o.recovery_ttl_s = checked<uint32_t>("recovery_ttl", recovery_ttl, 1, 86400 * 30);
  o.recovery_max = checked<uint32_t>("recovery_max_messages", recovery_max_messages, 1, 1 << 24);
  o.recovery_memory =
      checked<uint64_t>("recovery_memory_budget", recovery_memory_budget, 1024, int64_t(1) << 40);
  o.presence = presence_enabled;
  o.presence_max_data =
      checked<uint32_t>("presence_max_data_size", presence_max_data_size, 2, 1 << 20);
  o.presence_max_members =
      checked<uint32_t>("presence_max_members", presence_max_members, 0, 100000000);
  if (!(rate_limit_capacity > 0) || !(rate_limit_refill >= 0))
    throw py::value_error("rate_limit_capacity must be > 0 and rate_limit_refill >= 0");
  o.rate_capacity = rate_limit_capacity;
  o.rate_refill = rate_limit_refill;
  o.max_message_size = checked<uint64_t>("max_message_size", max_message_size, 1024, 1 << 30);
  o.ping_interval_s = checked<uint32_t>("ping_interval", ping_interval, 0, 86400);
  o.idle_timeout_s = checked<uint32_t>("idle_timeout", idle_timeout, 0, 86400);
  o.max_outbound_queue_bytes =
      checked<uint64_t>("max_outbound_queue_bytes", max_outbound_queue_bytes, 0, int64_t(1) << 40);
  if (o.max_outbound_queue_bytes && o.max_outbound_queue_bytes < 65536)
    throw py::value_error("max_outbound_queue_bytes must be 0 (unlimited) or at least 65536");
  o.max_subscriptions = checked<uint32_t>("max_subscriptions_per_connection",
                                          max_subscriptions_per_connection, 0, 1000000);
  o.redis_url = opt_str(redis_url, "redis_url").value_or("");
  o.redis_cluster = opt_str(redis_cluster, "redis_cluster").value_or("");
  if (!o.redis_url.empty() && !o.redis_cluster.empty())
    throw py::value_error("give redis_url or redis_cluster, not both");
  o.redis_prefix = redis_prefix;
  redis_bridge_options probe;
  parse_redis(o, probe);  // a bad URL is refused here, not at start()
  o.workers = checked<uint32_t>("workers", workers, 1, 64);
  o.inbound_rate = checked<uint32_t>("inbound_rate", inbound_rate, 0, 100000000);
  o.inbound_burst = checked<uint32_t>("inbound_burst", inbound_burst, 1, 100000000);
  o.dedup_window = checked<size_t>("dedup_window", dedup_window, 0, 1000000);
  if (!(enqueue_timeout >= 0 && enqueue_timeout <= 3600))
    throw py::value_error("enqueue_timeout must be between 0 and 3600 seconds");
  o.enqueue_timeout = std::chrono::milliseconds(int64_t(enqueue_timeout * 1000));
  return std::make_unique<engine_object>(std::move(o));
}

}  // namespace wsed::py_native

PYBIND11_MODULE(_native, m) {
  using namespace wsed::py_native;
  using namespace pybind11::literals;
  m.doc() = "wsed's engine (io_uring WebSocket server speaking WSE) for Python";
  m.attr("__version__") = WSED_VERSION;
  wsed::py::register_helpers(m);
  py::class_<engine_object>(m, "Engine")
      .def(py::init(&make_engine), "host"_a, "port"_a, "max_connections"_a = 1000,
           "jwt_secret"_a = py::none(), "jwt_issuer"_a = py::none(), "jwt_audience"_a = py::none(),
           "jwt_cookie_name"_a = py::none(), "jwt_previous_secret"_a = py::none(),
           "jwt_key_id"_a = py::none(), "jwt_algorithm"_a = py::none(),
           "jwt_private_key"_a = py::none(), "max_inbound_queue_size"_a = 131072,
           "recovery_enabled"_a = false, "recovery_buffer_size"_a = 128, "recovery_ttl"_a = 300,
           "recovery_max_messages"_a = 500, "recovery_memory_budget"_a = 268435456,
           "presence_enabled"_a = false, "presence_max_data_size"_a = 4096,
           "presence_max_members"_a = 0, "rate_limit_capacity"_a = 100000.0,
           "rate_limit_refill"_a = 10000.0, "max_message_size"_a = 1048576, "ping_interval"_a = 25,
           "idle_timeout"_a = 60, "max_outbound_queue_bytes"_a = 16777216,
           "max_subscriptions_per_connection"_a = 0, py::kw_only(), "redis_url"_a = py::none(),
           "redis_cluster"_a = py::none(), "redis_prefix"_a = "wse:", "workers"_a = 1,
           "inbound_rate"_a = 0, "inbound_burst"_a = 10000, "dedup_window"_a = 1024,
           "enqueue_timeout"_a = 2.0)
      .def("start", &engine_object::start)
      .def("stop", &engine_object::stop)
      .def("is_running", &engine_object::is_running)
      .def("drain", &engine_object::drain, "close_code"_a = 4300, "close_reason"_a = "",
           "timeout"_a = 30.0)
      .def("local_port", &engine_object::local_port)
      .def("enable_drain_mode", &engine_object::enable_drain_mode)
      .def("_set_drain_mode", &engine_object::set_drain_mode, "on"_a)
      .def("drain_inbound", &engine_object::drain_inbound, "max_count"_a = 256, "timeout_ms"_a = 50)
      .def("inbound_dropped_count", &engine_object::inbound_dropped)
      .def("inbound_queue_depth", &engine_object::inbound_depth)
      .def("set_callbacks", &engine_object::set_callbacks, "on_connect"_a, "on_message"_a,
           "on_disconnect"_a)
      .def("send", &engine_object::send, "conn_id"_a, "data"_a)
      .def("send_bytes", &engine_object::send_bytes, "conn_id"_a, "data"_a)
      .def("send_event", &engine_object::send_event, "conn_id"_a, "event"_a,
           "compression_threshold"_a = 1024)
      .def("broadcast_all", &engine_object::broadcast_all, "data"_a)
      .def("broadcast_all_bytes", &engine_object::broadcast_all_bytes, "data"_a)
      .def("broadcast_local", &engine_object::broadcast_local, "topic"_a, "data"_a)
      .def("broadcast", &engine_object::broadcast, "topic"_a, "data"_a)
      .def("get_connection_count", &engine_object::connection_count)
      .def("get_connections", &engine_object::connections)
      .def("disconnect", &engine_object::disconnect, "conn_id"_a)
      .def("set_topic_acl", &engine_object::set_topic_acl, "conn_id"_a, "allow"_a = py::none(),
           "deny"_a = py::none())
      .def("subscribe_connection", &engine_object::subscribe, "conn_id"_a, "topics"_a,
           "presence_data"_a = py::none(), "queue_group"_a = py::none())
      .def("subscribe_with_recovery", &engine_object::subscribe_with_recovery, "conn_id"_a,
           "topics"_a, "recover"_a = false, "epoch"_a = py::none(), "offset"_a = py::none())
      .def("unsubscribe_connection", &engine_object::unsubscribe, "conn_id"_a,
           "topics"_a = py::none())
      .def("get_topic_subscriber_count", &engine_object::topic_subscriber_count, "topic"_a)
      .def("get_queue_group_info", &engine_object::queue_group_info, "topic"_a)
      .def("presence", &engine_object::presence, "topic"_a)
      .def("presence_stats", &engine_object::presence_stats, "topic"_a)
      .def("update_presence", &engine_object::update_presence, "conn_id"_a, "data"_a)
      .def("health_snapshot", &engine_object::health)
      .def("prometheus_metrics", &engine_object::metrics);
}
