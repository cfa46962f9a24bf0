// engine/wse_inbound.hpp: the binary's built-in wse_handler, `--inbound drop|log|echo|redis`: what
// wsed does with application messages from clients when no application is linked in.
//   drop: counts them. log: one JSON line per message on stdout
//   ({"user":..,"connection_id":..,"t":..,"p":..}), buffered per shard and written at most every
//   timer tick (100 ms) or when 64 KiB are waiting. echo: sends each one back to its sender
//   through wse_app::send (the per-connection path: the M: and C: formats apply). redis: one
//   entry per message in the stream <prefix>inbound (event, connection_id, user_id, t, c, p),
//   and one per connect and disconnect, for backends reading with XREADGROUP.
//
// Owns: per shard, counters and the log buffer. Thread: each shard touches only its own part;
// render_metrics reads relaxed atomics. The log write (fwrite of whole lines, one call per
// buffer) is the one place a shard does blocking I/O, and only with --inbound log.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/config.hpp"
#include "engine/metrics.hpp"
#include "engine/wse_app.hpp"

namespace wsed::engine {

class wse_inbound final : public wse_handler {
 public:
  wse_inbound(inbound_policy policy, uint32_t shards);
  ~wse_inbound() override;
  // The app that echo replies go through; set before the server starts.
  void attach(wse_app& app) { app_ = &app; }
  // --inbound redis: the bridge whose stream gets every message and connect / disconnect event.
  void set_bridge(redis_bridge* bridge) { bridge_ = bridge; }

  void on_connect(const wse_user& user, wse_conn conn) override;
  void on_message(wse_conn conn, const wse_app_message& message) override;
  void on_disconnect(wse_conn conn) override;
  // drop counts messages and never reads their payload.
  bool reads_payload() const override { return policy_ != inbound_policy::drop; }
  void on_tick(uint32_t shard_index) override;
  void render_metrics(std::string& out) const override;

 private:
  struct per_shard {
    counter dropped, logged, echoed, streamed;
    std::string log;
  };
  void flush(per_shard& p);

  inbound_policy policy_;
  wse_app* app_ = nullptr;
  redis_bridge* bridge_ = nullptr;
  std::vector<std::unique_ptr<per_shard>> shards_;
};

}  // namespace wsed::engine
