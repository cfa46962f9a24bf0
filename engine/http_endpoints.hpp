// engine/http_endpoints.hpp: what wsed answers to a plain HTTP request (no WebSocket upgrade):
// the demo page, /healthz, /readyz, /metrics, and /api/* through the application. The shard owns
// the socket, reads the request and its body and queues the answer; this decides the answer.
//
// Owns: nothing (reads the config, every shard's metrics and the application's). Thread: the
// shard that serves the request. With --admin-listen, the endpoints answer only on the admin
// listener and the main port serves only the page (and WebSocket upgrades).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "proto/http.hpp"

namespace wsed::engine {

class shard;
class app_handler;
struct server_shared;

// The whole /metrics text: every shard's families, the server's (TLS), the application's.
std::string render_metrics_text(const server_shared& shared, const app_handler& app);

class http_endpoints {
 public:
  http_endpoints(server_shared& shared, app_handler& app) : shared_(shared), app_(app) {}

  struct answer {
    std::string response;   // status line, headers and body
    bool keep_alive;        // the connection may carry another request
    bool deferred = false;  // the application answers later (http_answer::deferred)
  };
  // admin_socket: accepted on --admin-listen. stopping: the server is shutting down.
  // requester: the connection asking (an API answer the application defers goes to it).
  answer serve(shard& s, const proto::http_request& request, std::string_view body,
               bool admin_socket, bool stopping, uint32_t slot = 0, uint32_t generation = 0);

  // A JSON error answer of the API with Connection: close ({"error":"<reason>"}).
  static std::string api_error(uint16_t status, std::string_view reason);

 private:
  server_shared& shared_;
  app_handler& app_;
};

}  // namespace wsed::engine
