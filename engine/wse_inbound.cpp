// engine/wse_inbound.cpp: see wse_inbound.hpp.
#include "engine/wse_inbound.hpp"

#include <cstdio>

#include "engine/assert.hpp"
#include "proto/wse_builder.hpp"

namespace wsed::engine {

namespace {
constexpr size_t log_flush_bytes = 64 * 1024;
}

wse_inbound::wse_inbound(inbound_policy policy, uint32_t shards) : policy_(policy) {
  shards_.resize(std::max<uint32_t>(shards, 1));
  for (auto& p : shards_) p = std::make_unique<per_shard>();
}

wse_inbound::~wse_inbound() {
  for (auto& p : shards_) flush(*p);
}

void wse_inbound::on_message(wse_conn conn, const wse_app_message& m) {
  ENGINE_ASSERT(conn.owner->index() < shards_.size());  // built with fewer shards than workers
  per_shard& p = *shards_[conn.owner->index()];
  switch (policy_) {
    case inbound_policy::drop:
      p.dropped.add();
      return;
    case inbound_policy::log:
      p.logged.add();
      p.log += "{\"user\":";
      proto::wse_append_json_string(p.log, m.user_id);
      p.log += ",\"connection_id\":";
      proto::wse_append_json_string(p.log, m.connection_id);
      p.log += ",\"t\":";
      proto::wse_append_json_string(p.log, m.type);
      p.log += ",\"p\":";
      p.log += m.payload_json.empty() ? std::string_view("null") : m.payload_json;
      p.log += "}\n";
      if (p.log.size() >= log_flush_bytes) flush(p);
      return;
    case inbound_policy::echo:
      p.echoed.add();
      if (app_) app_->send(conn, m.type, m.payload_json, m.category);
      return;
    case inbound_policy::redis:
      if (!bridge_) return p.dropped.add();
      if (bridge_->add_inbound(
              conn.owner->index(),
              {"event", "message", "connection_id", m.connection_id, "user_id", m.user_id, "t",
               m.type, "c", m.category, "p",
               m.payload_json.empty() ? std::string_view("null") : m.payload_json}))
        p.streamed.add();
      return;
  }
}

void wse_inbound::on_connect(const wse_user& user, wse_conn conn) {
  if (policy_ != inbound_policy::redis || !bridge_) return;
  bridge_->add_inbound(conn.owner->index(), {"event", "connect", "connection_id",
                                             user.connection_id, "user_id", user.user_id});
}

void wse_inbound::on_disconnect(wse_conn conn) {
  if (policy_ != inbound_policy::redis || !bridge_ || !app_) return;
  wse_app::ids who = app_->ids_of(conn);
  bridge_->add_inbound(conn.owner->index(), {"event", "disconnect", "connection_id",
                                             who.connection_id, "user_id", who.user_id});
}

void wse_inbound::on_tick(uint32_t shard_index) {
  if (shard_index < shards_.size()) flush(*shards_[shard_index]);
}

void wse_inbound::flush(per_shard& p) {
  if (p.log.empty()) return;
  std::fwrite(p.log.data(), 1, p.log.size(), stdout);
  std::fflush(stdout);
  p.log.clear();
}

void wse_inbound::render_metrics(std::string& out) const {
  static constexpr struct {
    const char* action;
    counter per_shard::*field;
  } actions[] = {{"dropped", &per_shard::dropped},
                 {"logged", &per_shard::logged},
                 {"echoed", &per_shard::echoed},
                 {"streamed", &per_shard::streamed}};
  bool first = true;
  for (const auto& a : actions) {
    append_family(
        out, shards_.size(), [&](size_t i) { return ((*shards_[i]).*(a.field)).get(); },
        "wsed_wse_inbound_total", "counter",
        "WSE application messages handled by --inbound, by action.", "action", a.action, first);
    first = false;
  }
}

}  // namespace wsed::engine
