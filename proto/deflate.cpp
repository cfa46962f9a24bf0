// proto/deflate.cpp: permessage-deflate negotiation (RFC 7692 section 7) and the libdeflate
// message codec (section 7.2: raw DEFLATE, the trailing 00 00 ff ff stripped by the sender).
//
// Owns: a deflate_codec's libdeflate handles and buffers. Thread: the codec's one user. The
// negotiation is pure; the codec allocates only to grow its reused buffers.
#include "proto/deflate.hpp"

#include <libdeflate.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace wsed::proto {
namespace {

constexpr bool is_tchar(char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
}

// A cursor over one header value.
struct cursor {
  std::string_view s;
  size_t i = 0;

  void skip_space() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  }
  bool at(char ch) {
    skip_space();
    return i < s.size() && s[i] == ch;
  }
  bool done() {
    skip_space();
    return i >= s.size();
  }
  std::string_view token() {
    skip_space();
    size_t start = i;
    while (i < s.size() && is_tchar(s[i])) ++i;
    return s.substr(start, i - start);
  }
  // A quoted-string's content (RFC 7230: backslash escapes). ok = false when it is unterminated.
  // RFC 7692 says the unquoted content must be a token; the caller checks the value itself.
  std::string_view quoted(std::string& storage, bool& ok) {
    storage.clear();
    ++i;  // the opening quote
    while (i < s.size() && s[i] != '"') {
      if (s[i] == '\\' && i + 1 < s.size()) ++i;
      storage += s[i++];
    }
    ok = i < s.size();
    if (ok) ++i;
    return storage;
  }
  // Skips to just after the next top-level comma (quoted strings respected), or to the end.
  void skip_offer() {
    while (i < s.size() && s[i] != ',') {
      if (s[i] == '"') {
        ++i;
        while (i < s.size() && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
      }
      if (i < s.size()) ++i;
    }
    if (i < s.size()) ++i;
  }
};

// 8..15 written as decimal digits (no sign, no leading zero).
bool window_bits(std::string_view v, unsigned* bits) {
  if (v.empty() || v.size() > 2 || v[0] == '0') return false;
  unsigned n = 0;
  for (char ch : v) {
    if (ch < '0' || ch > '9') return false;
    n = n * 10 + unsigned(ch - '0');
  }
  if (n < 8 || n > 15) return false;
  *bits = n;
  return true;
}

// Parses the parameters of one permessage-deflate offer (the cursor just after its name).
// Returns true when we can accept it; the cursor ends at the offer's comma or the end either way
// (*malformed when the syntax broke: the rest of that header value cannot be trusted).
bool parse_offer(cursor& c, deflate_negotiation* out, bool* malformed) {
  bool ok = true;
  unsigned seen = 0;  // one bit per known parameter
  std::string storage;
  *out = deflate_negotiation{};
  out->accepted = true;
  while (c.at(';')) {
    ++c.i;
    std::string_view name = c.token();
    if (name.empty()) {
      *malformed = true;
      return false;
    }
    bool has_value = false;
    std::string_view value;
    if (c.at('=')) {
      ++c.i;
      has_value = true;
      c.skip_space();
      if (c.i < c.s.size() && c.s[c.i] == '"') {
        bool closed = false;
        value = c.quoted(storage, closed);
        if (!closed) {
          *malformed = true;
          return false;
        }
      } else {
        value = c.token();
        if (value.empty()) {
          *malformed = true;
          return false;
        }
      }
    }
    unsigned bit;
    unsigned bits = 0;
    if (ascii_iequals(name, "server_no_context_takeover")) {
      bit = 1;
      ok = ok && !has_value;
    } else if (ascii_iequals(name, "client_no_context_takeover")) {
      bit = 2;
      ok = ok && !has_value;
    } else if (ascii_iequals(name, "server_max_window_bits")) {
      bit = 4;
      // libdeflate always uses a 32 KiB window: only 15 can be honoured.
      ok = ok && has_value && window_bits(value, &bits) && bits == 15;
      out->server_max_window_bits = true;
    } else if (ascii_iequals(name, "client_max_window_bits")) {
      bit = 8;
      // Any window the client uses inflates (libdeflate reads a 32 KiB window); no answer needed.
      ok = ok && (!has_value || window_bits(value, &bits));
    } else {
      bit = 0;
      ok = false;  // an unknown parameter: decline this offer
    }
    if (seen & bit) ok = false;  // a repeated parameter
    seen |= bit;
  }
  if (!c.done() && !c.at(',')) {
    *malformed = true;
    return false;
  }
  return ok;
}

}  // namespace

deflate_negotiation negotiate_permessage_deflate(std::span<const std::string_view> header_values) {
  for (std::string_view value : header_values) {
    cursor c{value};
    // Bounded: every pass consumes at least one byte or ends the value.
    while (!c.done()) {
      if (c.at(',')) {
        ++c.i;  // an empty list element
        continue;
      }
      std::string_view name = c.token();
      if (name.empty()) break;  // not a token: the rest of this value is not a list we can read
      if (ascii_iequals(name, "permessage-deflate")) {
        deflate_negotiation n;
        bool malformed = false;
        if (parse_offer(c, &n, &malformed)) return n;
        if (malformed) break;
      }
      c.skip_offer();
    }
  }
  return {};
}

deflate_negotiation negotiate_permessage_deflate(const http_request& request, bool* offered) {
  std::string_view values[http_header_count_max];
  size_t n = 0;
  for (size_t i = 0; i < request.header_count; ++i) {
    if (ascii_iequals(request.headers[i].name, "Sec-WebSocket-Extensions"))
      values[n++] = request.headers[i].value;
  }
  *offered = n != 0;
  return negotiate_permessage_deflate(std::span<const std::string_view>(values, n));
}

std::string_view deflate_response_value(const deflate_negotiation& n) {
  if (n.server_max_window_bits)
    return "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
           "server_max_window_bits=15";
  return "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
}

deflate_codec::deflate_codec(int level)
    : compressor_(libdeflate_alloc_compressor(level)),
      decompressor_(libdeflate_alloc_decompressor()) {
  if (compressor_ == nullptr || decompressor_ == nullptr) {
    libdeflate_free_compressor(compressor_);
    libdeflate_free_decompressor(decompressor_);
    throw std::bad_alloc();
  }
}

deflate_codec::~deflate_codec() {
  libdeflate_free_compressor(compressor_);
  libdeflate_free_decompressor(decompressor_);
}

std::span<const uint8_t> deflate_codec::compress(std::span<const uint8_t> message) {
  if (message.empty()) return {};
  // Only output smaller than the input is worth sending: libdeflate returns 0 when it does not
  // fit, which is exactly "not smaller".
  const size_t limit = message.size() - 1;
  if (out_.size() < limit) out_.resize(limit);
  const size_t written =
      libdeflate_deflate_compress(compressor_, message.data(), message.size(), out_.data(), limit);
  return {out_.data(), written};
}

inflate_status deflate_codec::inflate(std::span<const uint8_t> compressed, size_t bytes_max,
                                      std::vector<uint8_t>& out, size_t* message_bytes,
                                      size_t padding_bytes) {
  *message_bytes = 0;
  if (compressed.empty()) {
    // No block at all: an empty message (what a permissive inflater makes of 00 00 ff ff alone).
    out.resize(std::max(out.size(), padding_bytes));
    return inflate_status::ok;
  }
  // RFC 7692 7.2.2: append 00 00 ff ff (an empty non-final stored block, ending the sender's sync
  // flush), then an empty final stored block so libdeflate sees a complete stream. A sender that
  // ended with a final block of its own (as we do) stops libdeflate there; the rest is ignored.
  static constexpr uint8_t tail[] = {0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff};
  tail_.resize(compressed.size() + sizeof tail);
  if (!compressed.empty()) std::memcpy(tail_.data(), compressed.data(), compressed.size());
  std::memcpy(tail_.data() + compressed.size(), tail, sizeof tail);
  // Start from a guess and grow 4x up to the cap: a bomb must not make us allocate the cap for
  // every small message.
  size_t capacity = std::min(bytes_max, std::max<size_t>(4096, compressed.size() * 4));
  for (;;) {
    out.resize(capacity + padding_bytes);
    size_t in_used = 0, actual = 0;
    const libdeflate_result r = libdeflate_deflate_decompress_ex(
        decompressor_, tail_.data(), tail_.size(), out.data(), capacity, &in_used, &actual);
    if (r == LIBDEFLATE_SUCCESS) {
      *message_bytes = actual;
      return inflate_status::ok;
    }
    if (r != LIBDEFLATE_INSUFFICIENT_SPACE) {
      out.clear();
      return inflate_status::bad_data;
    }
    if (capacity >= bytes_max) {
      out.clear();
      return inflate_status::too_big;
    }
    capacity = std::min(bytes_max, capacity * 4);
  }
}

}  // namespace wsed::proto
