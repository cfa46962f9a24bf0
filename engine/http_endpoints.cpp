// engine/http_endpoints.cpp: see http_endpoints.hpp. Runs on the serving shard's thread.
#include "engine/http_endpoints.hpp"

#include <cstdio>

#include "engine/demo_page.hpp"
#include "engine/metrics.hpp"
#include "engine/shard.hpp"
#include "proto/wse_builder.hpp"

namespace wsed::engine {

std::string render_metrics_text(const server_shared& shared, const app_handler& app) {
  std::string text = render_prometheus(shared.metrics);
  if (const tls_store* tls = shared.tls) {
    std::shared_ptr<const tls_context> ctx = tls->current.load(std::memory_order_acquire);
    char line[1024];
    std::snprintf(
        line, sizeof line,
        "# HELP wsed_tls_info TLS on the main port: mode memory_bio = OpenSSL in the "
        "shard over memory BIOs; kernel_tls_available = this kernel offers the tls "
        "ULP.\n# TYPE wsed_tls_info gauge\n"
        "wsed_tls_info{mode=\"memory_bio\",kernel_tls_available=\"%s\","
        "client_certificates=\"%s\"} 1\n"
        "# HELP wsed_tls_certificate_expiry_timestamp_seconds notAfter of the serving "
        "certificate.\n# TYPE wsed_tls_certificate_expiry_timestamp_seconds gauge\n"
        "wsed_tls_certificate_expiry_timestamp_seconds %lld\n"
        "# HELP wsed_tls_reloads_total Certificate reloads (SIGHUP), by outcome.\n"
        "# TYPE wsed_tls_reloads_total counter\n"
        "wsed_tls_reloads_total{result=\"ok\"} %llu\n"
        "wsed_tls_reloads_total{result=\"failed\"} %llu\n",
        tls->kernel_tls ? "true" : "false", ctx && ctx->client_certificates() ? "true" : "false",
        static_cast<long long>(ctx ? ctx->not_after() : 0),
        static_cast<unsigned long long>(tls->reloads_ok.load(std::memory_order_relaxed)),
        static_cast<unsigned long long>(tls->reloads_failed.load(std::memory_order_relaxed)));
    text += line;
  }
  app.render_metrics(text);
  return text;
}

namespace {

// The demo page (engine/demo/index.html): inline script and style only, WebSocket to us.
constexpr std::string_view page_headers =
    "Cache-Control: no-cache\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'\r\n";

}  // namespace

std::string http_endpoints::api_error(uint16_t status, std::string_view reason) {
  std::string body = "{\"error\":";
  proto::wse_append_json_string(body, reason);
  body += "}\n";
  return proto::http_response(status, "application/json", body);
}

http_endpoints::answer http_endpoints::serve(shard& s, const proto::http_request& req,
                                             std::string_view body, bool admin_socket,
                                             bool stopping, uint32_t slot, uint32_t generation) {
  const server_config& cfg = *shared_.config;
  bool keep_alive = proto::http_keep_alive(req);
  auto connection = keep_alive ? proto::http_connection::keep_alive : proto::http_connection::close;
  bool endpoints_here = cfg.admin_listen.empty() || admin_socket;
  bool page = !admin_socket && (req.path == "/" || req.path == "/index.html");
  bool health = endpoints_here && (req.path == "/healthz" || req.path == "/readyz");
  bool metrics = endpoints_here && req.path == "/metrics";
  bool api = endpoints_here && req.path.starts_with("/api/");
  bool get = req.method == "GET" || req.method == "HEAD";

  std::string response;
  if (api) {
    http_answer a;
    a.requester = conn_ref{slot, generation};
    if (!app_.on_http(s, req, body, a)) {
      a.status = 404;
      a.content_type = "text/plain";
      a.body = "not found\n";
    }
    if (a.deferred) return {{}, false, true};
    response = proto::http_response(a.status, a.content_type, a.body, a.extra_headers, connection);
  } else if ((page || health || metrics) && !get) {
    response = proto::http_response(405, "text/plain", "method not allowed\n",
                                    "Allow: GET, HEAD\r\n", connection);
  } else if (page) {
    response = proto::http_response(200, "text/html; charset=utf-8", demo_page_html(), page_headers,
                                    connection);
  } else if (health) {
    bool readyz = req.path == "/readyz";
    if (stopping) {
      response = proto::http_response(503, "text/plain", "stopping\n", {}, connection);
    } else if (readyz && !app_.ready()) {
      response = proto::http_response(503, "text/plain", "not ready: redis subscriptions pending\n",
                                      {}, connection);
    } else {
      response =
          proto::http_response(200, "text/plain", readyz ? "ready\n" : "ok\n", {}, connection);
    }
  } else if (metrics) {
    std::string text = render_metrics_text(shared_, app_);
    response = proto::http_response(200, "text/plain; version=0.0.4", text, {}, connection);
  } else {
    response = proto::http_response(404, "text/plain", "not found\n", {}, connection);
  }
  if (req.method == "HEAD") {
    // The same status line and headers (Content-Length included), without the body.
    size_t head_end = response.find("\r\n\r\n");
    if (head_end != std::string::npos) response.resize(head_end + 4);
  }
  return {std::move(response), keep_alive};
}

}  // namespace wsed::engine
