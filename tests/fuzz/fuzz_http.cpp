// tests/fuzz/fuzz_http.cpp: libFuzzer target for proto::http_request_parser and check_upgrade.
//
// Parses the input whole and accumulated in chunks (as the engine does); the verdict, the
// status and the request fields must not depend on the split. Never reads past the input
// (ASan). Built by tools/fuzz.sh with clang -fsanitize=fuzzer.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "proto/http.hpp"

using namespace wsed::proto;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

std::string verdict(const char* data, size_t size, size_t chunk) {
  http_request_parser parser(512);
  http_parse_status st = http_parse_status::need_more;
  for (size_t end = std::min(chunk, size); st == http_parse_status::need_more;
       end = std::min(end + chunk, size)) {
    st = parser.feed(std::span<const char>(data, end));
    if (end == size) break;
  }
  std::string out = std::to_string(int(st));
  if (st == http_parse_status::error) return out + ":" + std::to_string(parser.error_status());
  if (st == http_parse_status::complete) {
    const http_request& r = parser.request();
    require(parser.consumed() <= size);
    out += ":" + std::string(r.method) + "|" + std::string(r.path) + "|" + std::string(r.query) +
           "|" + std::to_string(r.header_count) + "|" + std::to_string(int(check_upgrade(r)));
    std::string key(r.header("Sec-WebSocket-Key"));
    if (valid_websocket_key(key)) (void)websocket_accept(key);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t chunk = size_t(data[0] % 13) + 1;
  const char* text = reinterpret_cast<const char*>(data + 1);
  require(verdict(text, size - 1, size - 1 ? size - 1 : 1) == verdict(text, size - 1, chunk));
  return 0;
}
