// proto/http.cpp: the incremental HTTP/1.1 request-head parser, the upgrade checks, the
// Sec-WebSocket-Accept computation (OpenSSL SHA-1 + base64) and the response builders.
//
// Owns: parser state only; every string_view points into the caller's buffer. Thread: the
// shard that owns the pre-handshake socket. Never allocates while parsing (only the response
// builders return std::string), never does I/O, never accepts bare-LF line endings or obs-fold.
#include "proto/http.hpp"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstring>

namespace wsed::proto {
namespace {

constexpr std::string_view websocket_guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

constexpr bool is_tchar(unsigned char c) {
  // RFC 9110 token: ALPHA / DIGIT / "!#$%&'*+-.^_`|~"
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

// Field value characters: VCHAR, obs-text, SP, HTAB.
constexpr bool is_field_char(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7F);
}

// Request-target characters: visible ASCII (no spaces, no controls, no obs-text).
constexpr bool is_target_char(unsigned char c) {
  return c > 0x20 && c < 0x7F;
}

constexpr char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

constexpr bool is_base64_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// Parses "METHOD SP target SP HTTP/d.d"; returns 0 or the HTTP status to fail with.
uint16_t parse_request_line(std::string_view line, http_request& req) {
  const size_t sp1 = line.find(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos) return 400;
  req.method = line.substr(0, sp1);
  if (!std::all_of(req.method.begin(), req.method.end(),
                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); }))
    return 400;
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return 400;
  req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (!std::all_of(req.target.begin(), req.target.end(),
                   [](char c) { return is_target_char(static_cast<unsigned char>(c)); }))
    return 400;
  const size_t question = req.target.find('?');
  req.path = req.target.substr(0, question);
  req.query =
      question == std::string_view::npos ? std::string_view{} : req.target.substr(question + 1);
  const std::string_view version = line.substr(sp2 + 1);
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || !digit(version[5]) ||
      version[6] != '.' || !digit(version[7]))
    return 400;
  if (version[5] != '1' || (version[7] != '0' && version[7] != '1')) return 505;
  req.version_minor = static_cast<uint8_t>(version[7] - '0');
  return 0;
}

// Parses "name: value"; returns 0 or the HTTP status to fail with.
uint16_t parse_header_line(std::string_view line, http_header& header) {
  const size_t colon = line.find(':');
  if (colon == 0 || colon == std::string_view::npos) return 400;
  header.name = line.substr(0, colon);
  // Rejects obs-fold (a line starting with SP/HT) and whitespace before the colon, too.
  if (!std::all_of(header.name.begin(), header.name.end(),
                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); }))
    return 400;
  const std::string_view value = line.substr(colon + 1);
  if (!std::all_of(value.begin(), value.end(),
                   [](char c) { return is_field_char(static_cast<unsigned char>(c)); }))
    return 400;
  header.value = trim_ows(value);
  return 0;
}

}  // namespace

bool ascii_iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

std::string_view http_request::header(std::string_view name) const {
  for (size_t i = 0; i < header_count; ++i)
    if (ascii_iequals(headers[i].name, name)) return headers[i].value;
  return {};
}

bool http_request::has_token(std::string_view name, std::string_view token) const {
  for (size_t i = 0; i < header_count; ++i) {
    if (!ascii_iequals(headers[i].name, name)) continue;
    std::string_view rest = headers[i].value;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      if (ascii_iequals(trim_ows(rest.substr(0, comma)), token)) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

http_parse_status http_request_parser::fail(uint16_t status) {
  error_status_ = status;
  return http_parse_status::error;
}

void http_request_parser::reset() {
  scanned_ = 0;
  consumed_ = 0;
  error_status_ = 0;
  request_ = http_request{};
}

http_parse_status http_request_parser::feed(std::span<const char> accumulated) {
  if (error_status_ != 0) return http_parse_status::error;
  if (consumed_ != 0) return http_parse_status::complete;
  // Search for the blank line that ends the head, only within the first header_bytes_max_
  // bytes. A line feed ends the head when it follows "\n" or "\n\r"; bare-LF heads are found
  // too, so that parse_block can answer 400 rather than waiting for the cap.
  const size_t limit = std::min(accumulated.size(), header_bytes_max_);
  const char* data = accumulated.data();
  for (size_t i = scanned_; i < limit; ++i) {
    if (data[i] != '\n') continue;
    const bool end =
        (i >= 1 && data[i - 1] == '\n') || (i >= 2 && data[i - 1] == '\r' && data[i - 2] == '\n');
    if (end) {
      scanned_ = i + 1;
      const http_parse_status status = parse_block(accumulated.first(i + 1));
      if (status == http_parse_status::complete) consumed_ = i + 1;
      return status;
    }
  }
  scanned_ = limit;
  if (accumulated.size() >= header_bytes_max_) return fail(431);
  return http_parse_status::need_more;
}

http_parse_status http_request_parser::parse_block(std::span<const char> block) {
  std::string_view rest(block.data(), block.size());
  bool first = true;
  http_request& req = request_;
  req.header_count = 0;
  while (true) {
    const size_t lf = rest.find('\n');                      // always found: the block ends with one
    if (lf == 0 || rest[lf - 1] != '\r') return fail(400);  // bare LF
    const std::string_view line = rest.substr(0, lf - 1);
    rest.remove_prefix(lf + 1);
    if (line.empty()) {
      if (first) return fail(400);
      break;  // the blank line: end of the head
    }
    if (first) {
      if (const uint16_t status = parse_request_line(line, req)) return fail(status);
      first = false;
      continue;
    }
    if (req.header_count == http_header_count_max) return fail(431);
    if (const uint16_t status = parse_header_line(line, req.headers[req.header_count]))
      return fail(status);
    ++req.header_count;
  }
  if (!req.header("Transfer-Encoding").empty()) return fail(411);
  for (size_t i = 0; i < req.header_count; ++i) {
    if (!ascii_iequals(req.headers[i].name, "Content-Length")) continue;
    std::string_view v = req.headers[i].value;
    if (v.empty() || v.size() > 18 ||
        !std::all_of(v.begin(), v.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
      return fail(400);
    int64_t n = 0;
    for (char ch : v) n = n * 10 + (ch - '0');
    if (req.content_length >= 0 && req.content_length != n) return fail(400);
    req.content_length = n;
  }
  return http_parse_status::complete;
}

upgrade_verdict check_upgrade(const http_request& request) {
  if (!request.has_token("Upgrade", "websocket")) return upgrade_verdict::not_websocket;
  if (request.method != "GET" || request.version_minor != 1) return upgrade_verdict::bad_request;
  if (!request.has_token("Connection", "upgrade")) return upgrade_verdict::bad_request;
  if (request.header("Sec-WebSocket-Version") != "13") return upgrade_verdict::version_unsupported;
  if (!valid_websocket_key(request.header("Sec-WebSocket-Key")))
    return upgrade_verdict::bad_request;
  return upgrade_verdict::ok;
}

bool valid_websocket_key(std::string_view key) {
  // 16 bytes encode to 22 base64 characters plus "==". The bits of the last character past
  // the 128th are not checked (decoders ignore them).
  if (key.size() != 24 || key[22] != '=' || key[23] != '=') return false;
  return std::all_of(key.begin(), key.begin() + 22, is_base64_char);
}

std::array<char, 28> websocket_accept(std::string_view key) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  char joined[128];
  if (key.size() + websocket_guid.size() <= sizeof(joined)) {
    std::memcpy(joined, key.data(), key.size());
    std::memcpy(joined + key.size(), websocket_guid.data(), websocket_guid.size());
    SHA1(reinterpret_cast<const unsigned char*>(joined), key.size() + websocket_guid.size(),
         digest);
  } else {
    const std::string long_key = std::string(key) + std::string(websocket_guid);
    SHA1(reinterpret_cast<const unsigned char*>(long_key.data()), long_key.size(), digest);
  }
  unsigned char encoded[29];  // 28 characters + NUL
  EVP_EncodeBlock(encoded, digest, SHA_DIGEST_LENGTH);
  std::array<char, 28> out;
  std::memcpy(out.data(), encoded, out.size());
  return out;
}

std::string upgrade_response(std::string_view key, std::string_view extensions) {
  const std::array<char, 28> accept = websocket_accept(key);
  std::string out;
  out.reserve(130 + (extensions.empty() ? 0 : 28 + extensions.size()));
  out += "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
  out += "Sec-WebSocket-Accept: ";
  out.append(accept.data(), accept.size());
  if (!extensions.empty()) {
    out += "\r\nSec-WebSocket-Extensions: ";
    out += extensions;
  }
  out += "\r\n\r\n";
  return out;
}

bool http_keep_alive(const http_request& request) {
  return request.version_minor == 1 && !request.has_token("Connection", "close");
}

std::string http_response(uint16_t status, std::string_view content_type, std::string_view body,
                          std::string_view extra_headers, http_connection connection) {
  std::string out;
  out.reserve(128 + content_type.size() + extra_headers.size() + body.size());
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out += ' ';
  out += http_reason(status);
  out += "\r\n";
  if (!content_type.empty()) {
    out += "Content-Type: ";
    out += content_type;
    out += "\r\n";
  }
  out += "Content-Length: ";
  out += std::to_string(body.size());
  out += connection == http_connection::close ? "\r\nConnection: close\r\n" : "\r\n";
  out += extra_headers;
  out += "\r\n";
  out += body;
  return out;
}

std::string_view http_reason(uint16_t status) {
  switch (status) {
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 426:
      return "Upgrade Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

}  // namespace wsed::proto
