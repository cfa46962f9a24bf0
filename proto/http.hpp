// proto/http.hpp: the HTTP/1.1 request parser for the WebSocket upgrade and the plain
// endpoints (/healthz, /metrics), the Sec-WebSocket-Accept computation, and the few
// response builders the engine needs before a socket speaks WebSocket.
//
// Owns: nothing but parser state. Thread: whichever shard calls it. Never does I/O, never
// reads a clock, never allocates while parsing: every string_view in http_request points into
// the caller's buffer, which must stay alive and unmoved while the request is used.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace wsed::proto {

inline constexpr size_t http_header_bytes_max_default = 8192;
inline constexpr size_t http_header_count_max = 64;

struct http_header {
  std::string_view name;   // as received; compare case-insensitively
  std::string_view value;  // leading and trailing spaces and tabs removed
};

struct http_request {
  std::string_view method;      // "GET"
  std::string_view target;      // "/wse?format=msgpack"
  std::string_view path;        // "/wse"
  std::string_view query;       // "format=msgpack" (without '?'; empty when none)
  uint8_t version_minor = 1;    // HTTP/1.x
  int64_t content_length = -1;  // Content-Length (-1: absent); the body follows the head
  size_t header_count = 0;
  std::array<http_header, http_header_count_max> headers{};

  // First header with this name (case-insensitive), or empty view when absent.
  std::string_view header(std::string_view name) const;
  // True when the header (comma-separated list) contains the token (case-insensitive),
  // e.g. has_token("Connection", "upgrade") for "keep-alive, Upgrade".
  bool has_token(std::string_view name, std::string_view token) const;
};

enum class http_parse_status : uint8_t {
  need_more,  // header block not complete yet: call feed again with more bytes
  complete,   // request() is valid; consumed() bytes belong to the request
  error,      // error_status() says which HTTP status to answer with
};

// Incremental: feed() is called with the whole accumulated buffer each time (the engine appends
// every received chunk to one handshake buffer); the parser resumes scanning where it stopped,
// so feeding byte by byte costs O(n) in total, and the result does not depend on how the bytes
// were split. Strict: CRLF line endings only (bare LF, obs-fold, whitespace before a colon,
// controls in a value -> 400); the head, blank line included, must fit in header_bytes_max
// bytes (431 as soon as that many bytes are buffered without its end). Host is not required.
// Bytes after the head (e.g. a first frame sent early) are not consumed: they start at
// consumed(). After complete or error, feed() keeps returning that verdict until reset().
class http_request_parser {
 public:
  explicit http_request_parser(size_t header_bytes_max = http_header_bytes_max_default)
      : header_bytes_max_(header_bytes_max) {}

  http_parse_status feed(std::span<const char> accumulated);

  const http_request& request() const { return request_; }
  size_t consumed() const { return consumed_; }
  // 400 malformed (also a bad or conflicting Content-Length), 431 header block over the cap or
  // too many headers, 505 not HTTP/1.1, 411 a Transfer-Encoding body (only Content-Length bodies
  // are read; the caller reads content_length bytes after consumed()).
  uint16_t error_status() const { return error_status_; }
  void reset();

 private:
  http_parse_status parse_block(std::span<const char> block);
  http_parse_status fail(uint16_t status);

  size_t header_bytes_max_;
  size_t scanned_ = 0;  // bytes already searched for the end of the header block
  size_t consumed_ = 0;
  uint16_t error_status_ = 0;
  http_request request_{};
};

enum class upgrade_verdict : uint8_t {
  not_websocket,        // plain HTTP request (no Upgrade: websocket)
  ok,                   // valid RFC 6455 upgrade
  bad_request,          // 400: not GET, missing/invalid Sec-WebSocket-Key, no Connection: upgrade
  version_unsupported,  // 426 with Sec-WebSocket-Version: 13
};

upgrade_verdict check_upgrade(const http_request& request);

// True when the key is base64 of exactly 16 bytes (24 characters, "==" padded).
bool valid_websocket_key(std::string_view key);

// RFC 6455 section 4.2.2: base64(SHA-1(key + GUID)); always 28 characters.
std::array<char, 28> websocket_accept(std::string_view key);

// "HTTP/1.1 101 Switching Protocols" with Upgrade, Connection and Sec-WebSocket-Accept, and
// Sec-WebSocket-Extensions: extensions when not empty.
std::string upgrade_response(std::string_view key, std::string_view extensions = {});

enum class http_connection : uint8_t { close, keep_alive };

// A complete response with Content-Length and "Connection: close" (or, keep_alive, nothing: the
// HTTP/1.1 default); extra_headers is inserted verbatim (each line ending in \r\n), e.g.
// "Sec-WebSocket-Version: 13\r\n".
std::string http_response(uint16_t status, std::string_view content_type, std::string_view body,
                          std::string_view extra_headers = {},
                          http_connection connection = http_connection::close);

// Whether the connection may carry another request after this one: HTTP/1.1 without
// "Connection: close".
bool http_keep_alive(const http_request& request);

std::string_view http_reason(uint16_t status);

// ASCII case-insensitive equality (header names, tokens, origins, unit suffixes).
bool ascii_iequals(std::string_view a, std::string_view b);

}  // namespace wsed::proto
