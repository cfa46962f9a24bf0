// tests/fuzz/fuzz_wse.cpp: libFuzzer target for the WSE inbound path: wse_codec::decode_inbound
// (text JSON, M: / raw MessagePack, C: zlib) then the envelope parser, as wse_app runs them on
// every client message.
//
// The first input byte picks text or binary; the rest is the message. Properties: nothing
// crashes or overruns (ASan/UBSan), decoded JSON stays under its cap, the MessagePack envelope
// fast path agrees with the JSON parser on every field it hands on, and every message the
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
  wse_msgpack_envelope env;
  const wse_error decoded = codec.decode_inbound(message, binary, json, cap, &env);
  // The hand-written check (handlers that never read payloads) decides exactly as msgpack-c,
  // error for error, and sees the same envelope (the JSON size cap aside: it writes nothing).
  std::string none;
  wse_msgpack_envelope checked;
  const wse_error validated =
      codec.decode_inbound(message, binary, none, cap, &checked, wse_json_output::envelope_only);
  if (decoded != wse_error::too_large) {
    require(validated == decoded);
    if (decoded == wse_error::none)
      require(checked.complete == env.complete && checked.type == env.type &&
              checked.has_category == env.has_category && checked.category == env.category &&
              checked.id == env.id && checked.has_payload == env.has_payload &&
              checked.depth == env.depth);
  }
  if (decoded != wse_error::none) return 0;
  require(json.size() <= cap);

  // The MessagePack fast path (wse_app skips the JSON parse for application messages and pongs
  // when env.complete) must agree with the JSON parser on everything it hands on.
  wse_message msg;
  const bool parsed = parser.parse(json, msg) == wse_error::none;
  if (env.complete && env.depth < wse_json_depth_max) {
    const wse_kind fast_kind = wse_kind_of(env.type);
    if (fast_kind == wse_kind::application || fast_kind == wse_kind::pong) {
      require(parsed);
      require(msg.kind == fast_kind && msg.type == env.type && msg.id == env.id);
      require(msg.has_category == env.has_category);
      require(!msg.has_category || msg.category == env.category);
      require(msg.has_payload == env.has_payload);
      require(!msg.has_payload ||
              msg.payload_json == std::string_view(json).substr(
                                      env.payload_begin, env.payload_end - env.payload_begin));
    }
  }
  if (!parsed) return 0;
  const wse_kind kind = msg.kind;
  const std::string type(msg.type);

  // The legacy prefixes (WSE{, U{, S{) are text-only: strip them as the parser did.
  const std::string_view body = std::string_view(json).substr(msg.legacy_prefix_bytes);
  std::string packed;
  require(codec.json_to_msgpack(body, packed, true) == wse_error::none);
  std::string back;
  require(codec.decode_inbound(std::span<const uint8_t>(
                                   reinterpret_cast<const uint8_t*>(packed.data()), packed.size()),
                               true, back, cap * 4) == wse_error::none);
  wse_message again;
  require(reparser.parse(back, again) == wse_error::none);
  require(again.kind == kind && again.type == type);

  std::string compressed;
  if (codec.compress(body, compressed, 0) == wse_compressed::yes) {
    std::string inflated;
    require(codec.decompress(
                std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(compressed.data()) + 2,
                                         compressed.size() - 2),
                inflated, body.size()) == wse_error::none);
    require(inflated == body);
  }
  return 0;
}
