// tools/bench/frames.cpp: frame templates, payloads and the upgrade exchange (see frames.hpp).
//
// Owns: nothing. Thread: any. Must never do I/O or read a clock.
#include "tools/bench/frames.hpp"

#include <libdeflate.h>

#include <cstring>
#include <msgpack.hpp>

#include "proto/http.hpp"

namespace wsed::bench {

using proto::ws_opcode;

masked_frame make_masked_frame(ws_opcode opcode, std::span<const uint8_t> payload,
                               std::array<uint8_t, 4> key) {
  masked_frame f;
  f.key = key;
  uint8_t header[proto::ws_header_bytes_max];
  f.header_bytes = proto::encode_frame_header(header, opcode, payload.size(), true, key.data());
  f.bytes.assign(header, header + f.header_bytes);
  f.bytes.insert(f.bytes.end(), payload.begin(), payload.end());
  proto::mask_bytes(f.bytes.data() + f.header_bytes, payload.size(), key.data(), 0);
  return f;
}

std::vector<uint8_t> repeat_frame(const masked_frame& frame, size_t copies) {
  std::vector<uint8_t> out;
  out.reserve(frame.bytes.size() * copies);
  for (size_t i = 0; i < copies; ++i) out.insert(out.end(), frame.bytes.begin(), frame.bytes.end());
  return out;
}

void patch_masked(uint8_t* frame, size_t header_bytes, const std::array<uint8_t, 4>& key,
                  size_t payload_offset, std::string_view text) {
  for (size_t j = 0; j < text.size(); ++j) {
    size_t p = payload_offset + j;
    frame[header_bytes + p] = static_cast<uint8_t>(text[j]) ^ key[p % 4];
  }
}

std::string timestamp_digits(uint64_t timestamp_ms) {
  char digits[ping_timestamp_digits + 1];
  uint64_t v = timestamp_ms;
  for (size_t i = ping_timestamp_digits; i-- > 0;) {
    digits[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
  return std::string(digits, ping_timestamp_digits);
}

std::string ping_json(uint64_t timestamp_ms) {
  return "{\"p\":{\"client_timestamp\":" + timestamp_digits(timestamp_ms) + "},\"t\":\"ping\"}";
}

// Field values shared by the JSON and msgpack forms (the same logical object).
namespace trade {
constexpr const char* type = "trade";
constexpr const char* symbol = "BTC-USD";
constexpr double price = 67432.15;
constexpr double quantity = 0.0125;
constexpr const char* side = "buy";
constexpr uint64_t timestamp_ms = 1740700800123;
constexpr const char* exchange = "binance";
constexpr uint64_t trade_id = 4815162342;
constexpr const char* order_id = "ord-7f3a9c2e";
}  // namespace trade

std::string trade_json() {
  return std::string("{\"t\":\"") + trade::type + "\",\"p\":{\"symbol\":\"" + trade::symbol +
         "\",\"price\":67432.15,\"quantity\":0.0125,\"side\":\"" + trade::side +
         "\",\"timestamp\":" + std::to_string(trade::timestamp_ms) + ",\"exchange\":\"" +
         trade::exchange + "\",\"trade_id\":" + std::to_string(trade::trade_id) +
         ",\"order_id\":\"" + trade::order_id + "\"},\"v\":1}";
}

std::vector<uint8_t> trade_msgpack_prefixed() {
  msgpack::sbuffer buffer;
  buffer.write("M:", 2);
  msgpack::packer<msgpack::sbuffer> pk(buffer);
  pk.pack_map(3);
  pk.pack(std::string("t"));
  pk.pack(std::string(trade::type));
  pk.pack(std::string("p"));
  pk.pack_map(8);
  pk.pack(std::string("symbol"));
  pk.pack(std::string(trade::symbol));
  pk.pack(std::string("price"));
  pk.pack(trade::price);
  pk.pack(std::string("quantity"));
  pk.pack(trade::quantity);
  pk.pack(std::string("side"));
  pk.pack(std::string(trade::side));
  pk.pack(std::string("timestamp"));
  pk.pack(trade::timestamp_ms);
  pk.pack(std::string("exchange"));
  pk.pack(std::string(trade::exchange));
  pk.pack(std::string("trade_id"));
  pk.pack(trade::trade_id);
  pk.pack(std::string("order_id"));
  pk.pack(std::string(trade::order_id));
  pk.pack(std::string("v"));
  pk.pack(1);
  return std::vector<uint8_t>(buffer.data(), buffer.data() + buffer.size());
}

std::vector<uint8_t> zlib_prefixed(std::string_view json) {
  libdeflate_compressor* c = libdeflate_alloc_compressor(6);
  std::vector<uint8_t> out(2 + libdeflate_zlib_compress_bound(c, json.size()));
  out[0] = 'C';
  out[1] = ':';
  size_t n = libdeflate_zlib_compress(c, json.data(), json.size(), out.data() + 2, out.size() - 2);
  libdeflate_free_compressor(c);
  out.resize(2 + n);
  return out;
}

std::vector<uint8_t> zlib_inflate(std::span<const uint8_t> stream, size_t bytes_max) {
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  std::vector<uint8_t> out(bytes_max);
  size_t n = 0;
  libdeflate_result r =
      libdeflate_zlib_decompress(d, stream.data(), stream.size(), out.data(), out.size(), &n);
  libdeflate_free_decompressor(d);
  if (r != LIBDEFLATE_SUCCESS) return {};
  out.resize(n);
  return out;
}

std::string sized_json(size_t bytes) {
  static constexpr std::string_view head = "{\"t\":\"bench\",\"p\":\"";
  static constexpr std::string_view tail = "\"}";
  if (bytes < head.size() + tail.size()) bytes = head.size() + tail.size();
  std::string out(head);
  size_t fill = bytes - head.size() - tail.size();
  for (size_t i = 0; i < fill; ++i) out += static_cast<char>('a' + i % 26);
  out += tail;
  return out;
}

std::string client_hello_json() {
  return "{\"c\":\"WSE\",\"t\":\"client_hello\",\"p\":{\"client_version\":\"wse-bench/0.1\","
         "\"protocol_version\":2,\"features\":{\"compression\":false,\"encryption\":false,"
         "\"batching\":false,\"msgpack\":false}},\"v\":1}";
}

std::string upgrade_request(std::string_view path, std::string_view host_header,
                            std::string_view key_base64, std::string_view token) {
  std::string r;
  r.reserve(256 + token.size());
  r.append("GET ").append(path).append(" HTTP/1.1\r\nHost: ").append(host_header);
  r.append("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
  r.append(key_base64).append("\r\nSec-WebSocket-Version: 13\r\n");
  if (!token.empty()) r.append("Cookie: access_token=").append(token).append("\r\n");
  r.append("\r\n");
  return r;
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

upgrade_check check_upgrade_response(std::string_view response, std::string_view expected_accept,
                                     size_t bytes_max) {
  upgrade_check out;
  size_t end = response.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (response.size() > bytes_max) out.status = upgrade_status::too_long;
    return out;
  }
  std::string_view head = response.substr(0, end);
  std::string_view status = head.substr(0, head.find("\r\n"));
  out.header_bytes = end + 4;
  if (status.substr(0, 12) != "HTTP/1.1 101") {
    out.status = upgrade_status::bad_status;
    out.status_line = std::string(status);
    return out;
  }
  bool accept_ok = false;
  size_t pos = status.size() + 2;
  while (pos < head.size()) {
    size_t eol = head.find("\r\n", pos);
    std::string_view line = head.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos &&
        proto::ascii_iequals(line.substr(0, colon), "sec-websocket-accept")) {
      accept_ok = trim(line.substr(colon + 1)) == expected_accept;
    }
    if (eol == std::string_view::npos) break;
    pos = eol + 2;
  }
  out.status = accept_ok ? upgrade_status::ok : upgrade_status::bad_accept;
  return out;
}

std::string with_query(std::string_view path, std::string_view parameter) {
  std::string out(path);
  out += path.find('?') == std::string_view::npos ? '?' : '&';
  out += parameter;
  return out;
}

}  // namespace wsed::bench
