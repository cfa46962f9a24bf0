// tests/unit/test_http.cpp: proto/http: the request-head parser (fed whole, split at every
// offset and byte by byte), its limits and errors, the upgrade checks, the RFC 6455 accept key
// and the response builders.
// Owns: nothing. Thread: the test runner. Never depends on the order tests run in.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "proto/http.hpp"

using namespace wsed::proto;

namespace {

struct parse_result {
  http_parse_status status = http_parse_status::need_more;
  uint16_t error_status = 0;
  size_t consumed = 0;
  std::string method, target, path, query;
  int version_minor = -1;
  std::vector<std::pair<std::string, std::string>> headers;

  bool operator==(const parse_result&) const = default;
};

parse_result snapshot(const http_request_parser& p, http_parse_status status) {
  parse_result r;
  r.status = status;
  r.error_status = p.error_status();
  r.consumed = status == http_parse_status::complete ? p.consumed() : 0;
  if (status == http_parse_status::complete) {
    const http_request& q = p.request();
    r.method = q.method;
    r.target = q.target;
    r.path = q.path;
    r.query = q.query;
    r.version_minor = q.version_minor;
    for (size_t i = 0; i < q.header_count; ++i)
      r.headers.emplace_back(std::string(q.headers[i].name), std::string(q.headers[i].value));
  }
  return r;
}

// Feeds the accumulated prefixes ending at each cut (and then the whole input), the way the
// engine does; stops at the first non-need_more status.
parse_result feed_with_cuts(const std::string& input, const std::vector<size_t>& cuts,
                            size_t header_bytes_max) {
  http_request_parser p(header_bytes_max);
  std::vector<size_t> ends = cuts;
  ends.push_back(input.size());
  for (size_t end : ends) {
    const http_parse_status s = p.feed(std::span<const char>(input.data(), end));
    if (s != http_parse_status::need_more) return snapshot(p, s);
  }
  return snapshot(p, http_parse_status::need_more);
}

// Parses input whole, split once at every offset, and byte by byte; all must agree.
parse_result parse(const std::string& input,
                   size_t header_bytes_max = http_header_bytes_max_default) {
  const parse_result whole = feed_with_cuts(input, {}, header_bytes_max);
  for (size_t at = 0; at <= input.size(); ++at) {
    const parse_result split = feed_with_cuts(input, {at}, header_bytes_max);
    if (!(split == whole)) {
      CAPTURE(at);
      FAIL("split result differs");
    }
  }
  std::vector<size_t> every;
  for (size_t at = 0; at < input.size(); ++at) every.push_back(at);
  CHECK(feed_with_cuts(input, every, header_bytes_max) == whole);
  return whole;
}

const std::string browser_request =
    "GET /wse?format=msgpack&x=1 HTTP/1.1\r\n"
    "Host: example.com:8080\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "\r\n";

std::string upgrade_request(const std::string& extra_or_replaced_lines) {
  return "GET /chat HTTP/1.1\r\nHost: server.example.com\r\n" + extra_or_replaced_lines + "\r\n";
}

const std::string good_upgrade_lines =
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n";

upgrade_verdict verdict_of(const std::string& request) {
  http_request_parser p;
  REQUIRE(p.feed(std::span<const char>(request.data(), request.size())) ==
          http_parse_status::complete);
  return check_upgrade(p.request());
}

}  // namespace

TEST_CASE("http: RFC 6455 section 1.3 accept key") {
  const auto accept = websocket_accept("dGhlIHNhbXBsZSBub25jZQ==");
  CHECK(std::string(accept.data(), accept.size()) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  // A long (invalid) key still hashes, through the heap path.
  const auto long_accept = websocket_accept(std::string(500, 'A'));
  CHECK(std::string(long_accept.data(), long_accept.size()).size() == 28);
}

TEST_CASE("http: a browser upgrade request, split every way") {
  const std::string trailing = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";  // a frame after it
  const parse_result r = parse(browser_request + trailing);
  REQUIRE(r.status == http_parse_status::complete);
  CHECK(r.consumed == browser_request.size());
  CHECK(r.method == "GET");
  CHECK(r.target == "/wse?format=msgpack&x=1");
  CHECK(r.path == "/wse");
  CHECK(r.query == "format=msgpack&x=1");
  CHECK(r.version_minor == 1);
  REQUIRE(r.headers.size() == 12);
  CHECK(r.headers[0] == std::pair<std::string, std::string>("Host", "example.com:8080"));
  CHECK(r.headers[10] ==
        std::pair<std::string, std::string>("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="));
  CHECK(verdict_of(browser_request) == upgrade_verdict::ok);
}

TEST_CASE("http: header lookups and tokens") {
  const std::string req =
      "GET / HTTP/1.1\r\nconnection: keep-alive\r\nCONNECTION:\t UPGRADE \t\r\nX-Empty:\r\n"
      "X-List: a ,b,  c\r\n\r\n";
  const parse_result r = parse(req);
  REQUIRE(r.status == http_parse_status::complete);
  CHECK(r.path == "/");
  CHECK(r.query == "");
  http_request_parser p;
  REQUIRE(p.feed(std::span<const char>(req.data(), req.size())) == http_parse_status::complete);
  const http_request& q = p.request();
  CHECK(q.header("Connection") == "keep-alive");
  CHECK(q.header("x-empty") == "");
  CHECK(q.header("Missing") == "");
  CHECK(q.has_token("Connection", "upgrade"));  // second Connection header
  CHECK(q.has_token("x-list", "b"));
  CHECK(q.has_token("x-list", "c"));
  CHECK_FALSE(q.has_token("x-list", "d"));
  CHECK_FALSE(q.has_token("x-list", ""));
  CHECK(q.headers[1].value == "UPGRADE");
}

TEST_CASE("http: incomplete heads need more") {
  for (const std::string& s : {std::string(""), std::string("GET / HTTP/1.1\r\n"),
                               std::string("GET / HTTP/1.1\r\nHost: a\r\n"),
                               std::string("GET / HTTP/1.1\r\nHost: a\r\n\r")}) {
    CHECK(parse(s).status == http_parse_status::need_more);
  }
}

TEST_CASE("http: malformed requests are 400") {
  const char* bad[] = {
      "\r\n\r\n",
      "\r\nGET / HTTP/1.1\r\n\r\n",  // leading empty line
      "GET  / HTTP/1.1\r\n\r\n",     // two spaces
      " GET / HTTP/1.1\r\n\r\n",
      "GET /\r\n\r\n",  // HTTP/0.9 style
      "GET / HTTP/1.1 \r\n\r\n",
      "GET / http/1.1\r\n\r\n",
      "GET / HTTP/1.10\r\n\r\n",
      "GET / HTTP/11\r\n\r\n",
      "G(T / HTTP/1.1\r\n\r\n",                        // method not a token
      "GET /a\x01 HTTP/1.1\r\n\r\n",                   // control in target
      "GET / HTTP/1.1\nHost: a\n\n",                   // bare LF
      "GET / HTTP/1.1\r\nHost: a\n\r\n",               // bare LF in a header line
      "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  // obs-fold
      "GET / HTTP/1.1\r\nHost : a\r\n\r\n",            // space before colon
      "GET / HTTP/1.1\r\n: a\r\n\r\n",                 // empty name
      "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
      "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",  // DEL in value
      "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",   // CR in value
  };
  for (const char* s : bad) {
    CAPTURE(s);
    const parse_result r = parse(s);
    CHECK(r.status == http_parse_status::error);
    CHECK(r.error_status == 400);
  }
  // A NUL in a header value.
  const parse_result nul = parse(std::string("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 26));
  CHECK(nul.error_status == 400);
}

TEST_CASE("http: versions") {
  CHECK(parse("GET / HTTP/1.0\r\n\r\n").version_minor == 0);
  CHECK(parse("GET / HTTP/2.0\r\n\r\n").error_status == 505);
  CHECK(parse("GET / HTTP/1.2\r\n\r\n").error_status == 505);
  CHECK(parse("GET / HTTP/0.9\r\n\r\n").error_status == 505);
}

TEST_CASE("http: Content-Length bodies are read by the caller, other bodies get 411") {
  CHECK(parse("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").error_status == 411);
  CHECK(parse("POST /x HTTP/1.1\r\nContent-Length: x5\r\n\r\n").error_status == 400);
  CHECK(parse("POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").error_status ==
        400);
  CHECK(parse("POST /x HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n").error_status ==
        400);
  const parse_result zero = parse("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  CHECK(zero.status == http_parse_status::complete);
}

TEST_CASE("http: header block size cap is 431") {
  // Exactly at the cap: fine. One byte over: 431, whether or not the end arrives later.
  const std::string head = "GET / HTTP/1.1\r\nX: ";
  const size_t cap = 200;
  std::string exact = head + std::string(cap - head.size() - 4, 'v') + "\r\n\r\n";
  REQUIRE(exact.size() == cap);
  const parse_result ok = parse(exact, cap);
  CHECK(ok.status == http_parse_status::complete);
  CHECK(ok.consumed == cap);
  std::string over = head + std::string(cap - head.size() - 3, 'v') + "\r\n\r\n";
  const parse_result big = parse(over, cap);
  CHECK(big.status == http_parse_status::error);
  CHECK(big.error_status == 431);
  // No end at all: need_more below the cap, 431 once cap bytes are buffered.
  const std::string endless = head + std::string(cap, 'v');
  CHECK(parse(endless.substr(0, cap - 1), cap).status == http_parse_status::need_more);
  CHECK(parse(endless.substr(0, cap), cap).error_status == 431);
  CHECK(parse(endless, cap).error_status == 431);
  // Default cap.
  const std::string huge = "GET / HTTP/1.1\r\nX: " + std::string(9000, 'a') + "\r\n\r\n";
  http_request_parser p;
  CHECK(p.feed(std::span<const char>(huge.data(), huge.size())) == http_parse_status::error);
  CHECK(p.error_status() == 431);
}

TEST_CASE("http: header count cap is 431") {
  std::string lines;
  for (size_t i = 0; i < http_header_count_max; ++i) lines += "X-H" + std::to_string(i) + ": v\r\n";
  const parse_result ok = parse("GET / HTTP/1.1\r\n" + lines + "\r\n");
  CHECK(ok.status == http_parse_status::complete);
  CHECK(ok.headers.size() == http_header_count_max);
  const parse_result over = parse("GET / HTTP/1.1\r\n" + lines + "X-One-More: v\r\n\r\n");
  CHECK(over.status == http_parse_status::error);
  CHECK(over.error_status == 431);
}

TEST_CASE("http: the parser keeps its verdict and resets") {
  http_request_parser p;
  const std::string bad = "BAD\r\n\r\n";
  CHECK(p.feed(std::span<const char>(bad.data(), bad.size())) == http_parse_status::error);
  CHECK(p.feed(std::span<const char>(browser_request.data(), browser_request.size())) ==
        http_parse_status::error);
  p.reset();
  CHECK(p.error_status() == 0);
  CHECK(p.feed(std::span<const char>(browser_request.data(), browser_request.size())) ==
        http_parse_status::complete);
  CHECK(p.consumed() == browser_request.size());
  CHECK(p.feed(std::span<const char>(browser_request.data(), browser_request.size())) ==
        http_parse_status::complete);
}

TEST_CASE("http: check_upgrade") {
  CHECK(verdict_of(upgrade_request(good_upgrade_lines)) == upgrade_verdict::ok);
  CHECK(verdict_of("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n") == upgrade_verdict::not_websocket);
  CHECK(verdict_of(upgrade_request("Upgrade: h2c\r\nConnection: Upgrade\r\n")) ==
        upgrade_verdict::not_websocket);
  // Token matching is case-insensitive and list-aware.
  CHECK(verdict_of(upgrade_request("Upgrade: foo, WebSocket\r\nConnection: keep-alive, upgrade\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 13\r\n")) == upgrade_verdict::ok);
  // Not GET.
  CHECK(verdict_of("POST /chat HTTP/1.1\r\n" + good_upgrade_lines + "\r\n") ==
        upgrade_verdict::bad_request);
  // HTTP/1.0.
  CHECK(verdict_of("GET /chat HTTP/1.0\r\n" + good_upgrade_lines + "\r\n") ==
        upgrade_verdict::bad_request);
  // No Connection: upgrade.
  CHECK(verdict_of(upgrade_request("Upgrade: websocket\r\nConnection: keep-alive\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 13\r\n")) ==
        upgrade_verdict::bad_request);
  // Version.
  CHECK(verdict_of(upgrade_request("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 8\r\n")) ==
        upgrade_verdict::version_unsupported);
  CHECK(verdict_of(upgrade_request("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")) ==
        upgrade_verdict::version_unsupported);
  // Key.
  CHECK(verdict_of(upgrade_request("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Version: 13\r\n")) ==
        upgrade_verdict::bad_request);
  CHECK(
      verdict_of(upgrade_request("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n")) ==
      upgrade_verdict::bad_request);
}

TEST_CASE("http: valid_websocket_key") {
  CHECK(valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
  CHECK(valid_websocket_key("AAAAAAAAAAAAAAAAAAAAAA=="));
  CHECK(valid_websocket_key("+/+/+/+/+/+/+/+/+/+/+w=="));
  CHECK_FALSE(valid_websocket_key(""));
  CHECK_FALSE(valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ="));    // 23 chars
  CHECK_FALSE(valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ==="));  // 25 chars
  CHECK_FALSE(valid_websocket_key("dGhlIHNhbXBsZSBub25jZQAA"));   // no padding
  CHECK_FALSE(valid_websocket_key("dGhlIHNhbXBsZSBub25jZ-=="));   // '-' is not base64
  CHECK_FALSE(valid_websocket_key("dGhlIHNhbXBsZSBub25j=Q=="));   // padding inside
  CHECK_FALSE(valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ==\r"));
}

TEST_CASE("http: responses") {
  CHECK(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==") ==
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
  CHECK(http_response(426, "text/plain", "upgrade required\n", "Sec-WebSocket-Version: 13\r\n") ==
        "HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n"
        "Connection: close\r\nSec-WebSocket-Version: 13\r\n\r\nupgrade required\n");
  CHECK(http_response(204, "", "") ==
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  CHECK(http_reason(431) == "Request Header Fields Too Large");
  CHECK(http_reason(505) == "HTTP Version Not Supported");
  CHECK(http_reason(501) == "Not Implemented");
  CHECK(http_reason(400) == "Bad Request");
  CHECK(http_reason(404) == "Not Found");
  CHECK(http_reason(200) == "OK");
  CHECK(http_reason(599) == "Unknown");
}
