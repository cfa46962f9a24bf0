// engine/server.hpp: the embeddable server: starts one shard per worker, each on its own pinned
// thread, and stops them on request.
//
// Owns: the shards and their threads, server_shared. Thread: start(), stop() and wait() are
// called by the embedding program's thread (the binary's main thread); everything else runs
// on the shards' threads.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/config.hpp"
#include "engine/shard.hpp"

namespace wsed::engine {

class server {
 public:
  server(server_config config, app_handler& app);
  ~server();

  // Sets up every shard (rings, listeners, buffers) and starts their loops. Throws
  // std::runtime_error with a readable message when something cannot be set up.
  void start();
  uint16_t port() const { return port_; }
  uint16_t admin_port() const { return admin_port_; }  // --admin-listen (0: none)
  hub& fanout_hub() { return *hub_; }
  // Bytes queued to every connection and not sent yet (relaxed reads; any thread): a publisher
  // that paces itself on what the sockets take reads this.
  uint64_t outbound_queued_bytes() const;
  // Deliveries pushed into the shards' inboxes and not drained yet (relaxed; any thread).
  uint64_t inbox_backlog() const;
  uint32_t workers() const { return uint32_t(shards_.size()); }
  const std::string& setup_notes() const { return notes_; }
  // With --tls-cert-file: the error that kept the certificate from loading (empty: it loaded);
  // start() refuses to run with one.
  const std::string& tls_error() const { return tls_error_; }
  bool tls() const { return shared_.tls != nullptr; }
  std::shared_ptr<const tls_context> tls_context_now() const;
  // Any thread (SIGHUP): reads the TLS files again; connections accepted afterwards use them,
  // open ones keep theirs. false + *why: the current certificate stays.
  bool reload_tls(std::string* why);
  // The /metrics text (engine and application families), from any thread (relaxed reads).
  std::string metrics_text() const;

  // Asks every shard to drain (close with code, 4300 by default, to each WebSocket) and stop
  // within timeout_ms (0: --shutdown-timeout); returns at once.
  void stop(uint16_t code = 4300, std::string_view reason = {}, uint32_t timeout_ms = 0);
  // True once every shard's loop has returned.
  bool finished() const;
  void join();

 private:
  server_config config_;
  app_handler& app_;
  server_shared shared_;
  std::unique_ptr<per_ip_table> per_ip_;
  std::unique_ptr<hub> hub_;
  std::unique_ptr<tls_store> tls_;
  std::string tls_error_;
  std::vector<std::unique_ptr<shard>> shards_;
  std::vector<std::thread> threads_;
  std::vector<std::unique_ptr<std::atomic<bool>>> done_;
  uint16_t port_ = 0;
  uint16_t admin_port_ = 0;
  std::string notes_;
};

// The application of `--mode echo`: every data message goes back to its sender, same opcode.
class echo_app final : public app_handler {
 public:
  void on_message(shard& s, conn_ref c, proto::ws_opcode opcode,
                  std::span<const uint8_t> payload) override {
    s.send_message(c, opcode, payload);
  }
};

}  // namespace wsed::engine
