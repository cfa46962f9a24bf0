// tools/examples/wse_whoami.cpp: the smallest program embedding wsed as a library behind the
// WSE protocol: an engine::server running engine::wse_app with its own engine::wse_handler.
//
//   WSED_JWT_SECRET=<32+ bytes> build/tools/wse_whoami [PORT]
//
// The handler greets each connection (`welcome`, right after server_ready), answers `whoami`
// with the token's user and the connection id, acknowledges anything else with `ack`, and counts
// disconnects. Every callback runs on the connection's shard thread; the per-shard state below
// is indexed by shard::index(), so shards never share it. Replies go through wse_app::send, so a
// `?format=msgpack` connection gets them as `M:` MessagePack and long ones as `C:` zlib.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "auth/jwt.hpp"
#include "auth/keys.hpp"
#include "engine/server.hpp"
#include "engine/wse_app.hpp"
#include "proto/wse_builder.hpp"

namespace {

using namespace wsed;

class whoami_handler final : public engine::wse_handler {
 public:
  explicit whoami_handler(uint32_t shards) : shards_(shards) {}
  void attach(engine::wse_app& app) { app_ = &app; }

  void on_connect(const engine::wse_user& user, engine::wse_conn conn) override {
    part(conn).connects++;
    std::string& p = part(conn).scratch;
    p = "{\"user\":";
    proto::wse_append_json_string(p, user.user_id);
    p += "}";
    app_->send(conn, "welcome", p);
  }

  void on_message(engine::wse_conn conn, const engine::wse_app_message& m) override {
    std::string& p = part(conn).scratch;
    if (m.type == "whoami") {
      p = "{\"user\":";
      proto::wse_append_json_string(p, m.user_id);
      p += ",\"connection_id\":";
      proto::wse_append_json_string(p, m.connection_id);
      p += ",\"shard\":" + std::to_string(conn.owner->index());
      p += ",\"connects_on_this_shard\":" + std::to_string(part(conn).connects) + "}";
      app_->send(conn, "whoami", p);
      return;
    }
    p = "{\"type\":";
    proto::wse_append_json_string(p, m.type);
    p += ",\"payload_bytes\":" + std::to_string(m.payload_json.size()) + "}";
    app_->send(conn, "ack", p);
  }

  void on_disconnect(engine::wse_conn conn) override { part(conn).disconnects++; }

 private:
  struct per_shard {
    uint64_t connects = 0, disconnects = 0;
    std::string scratch;
  };
  per_shard& part(engine::wse_conn conn) { return shards_[conn.owner->index()]; }

  std::vector<per_shard> shards_;
  engine::wse_app* app_ = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  engine::server_config config;
  config.port = argc > 1 ? uint16_t(std::atoi(argv[1])) : 5006;
  config.workers = 2;

  auto secret = auth::load_env("WSED_JWT_SECRET");
  if (!secret) {
    std::fprintf(stderr, "wse_whoami: set WSED_JWT_SECRET (at least 32 bytes)\n");
    return 2;
  }
  auth::verifier_config vc;
  vc.hmac_secret = std::move(*secret);
  auto verifier = auth::verifier::build(vc);
  if (!verifier) {
    std::fprintf(stderr, "wse_whoami: %s\n", std::string(auth::name_of(verifier.error())).c_str());
    return 2;
  }

  whoami_handler handler(config.workers);
  engine::wse_app_options options;
  options.verifier = std::move(*verifier);
  options.shards = config.workers;
  engine::wse_app app(std::move(options), handler);
  handler.attach(app);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // the shard threads inherit the mask

  engine::server srv(config, app);
  try {
    srv.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wse_whoami: cannot start: %s\n", e.what());
    return 1;
  }
  std::printf("wse_whoami listening on ws://%s:%u/\n", config.host.c_str(), srv.port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  srv.stop();
  srv.join();
  return 0;
}
