// tests/fuzz/fuzz_wse.cpp: libFuzzer target for the WSE inbound path: wse_codec::decode_inbound
// (text JSON, M: / raw MessagePack, C: zlib) then the envelope parser, as wse_app runs them on
// every client message.
//
// The first input byte picks text or binary; the rest is the message. Properties: nothing
// crashes or overruns (ASan/UBSan), decoded JSON stays under its cap, and every message the
// parser accepts survives the server's own format round trip: JSON -> MessagePack -> JSON parses
// again to the same kind and type, and zlib compress -> decompress gives the same bytes. Built
// by tools/fuzz.sh with clang -fsanitize=fuzzer.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>

#include "proto/wse_envelope.hpp"
#include "proto/wse_formats.hpp"

using namespace wsed::proto;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

constexpr size_t cap = 1 << 16;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static wse_codec codec;
  static wse_envelope_parser parser, reparser;
  if (size == 0) return 0;
  const bool binary = data[0] & 1;
  const std::span<const uint8_t> message(data + 1, size - 1);

  std::string json;
  if (codec.decode_inbound(message, binary, json, cap) != wse_error::none) return 0;
  require(json.size() <= cap);

  wse_message msg;
  if (parser.parse(json, msg) != wse_error::none) return 0;
  const wse_kind kind = msg.kind;
  const std::string type(msg.type);

  // The legacy prefixes (WSE{, U{, S{) are text-only: strip them as the parser did.
  const std::string_view body = std::string_view(json).substr(msg.legacy_prefix_bytes);
  std::string packed;
  require(codec.json_to_msgpack(body, packed, true) == wse_error::none);
  std::string back;
  require(codec.decode_inbound(
              std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(packed.data()),
                                       packed.size()),
              true, back, cap * 4) == wse_error::none);
  wse_message again;
  require(reparser.parse(back, again) == wse_error::none);
  require(again.kind == kind && again.type == type);

  std::string compressed;
  if (codec.compress(body, compressed, 0) == wse_compressed::yes) {
    std::string inflated;
    require(codec.decompress(std::span<const uint8_t>(
                                 reinterpret_cast<const uint8_t*>(compressed.data()) + 2,
                                 compressed.size() - 2),
                             inflated, body.size()) == wse_error::none);
    require(inflated == body);
  }
  return 0;
}
