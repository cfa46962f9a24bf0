// proto/wse_formats.hpp: the per-connection wire formats of PROTOCOL.md "Frames and formats":
// "M:" + MessagePack (out: JSON envelope -> msgpack map with the same keys; in: "M:"+msgpack or
// raw msgpack -> JSON text, so the rest of the pipeline sees JSON) and "C:" + zlib (libdeflate).
//
// Owns: a wse_codec holds a simdjson parser, a libdeflate compressor and decompressor and a
// padded scratch buffer, all allocated at construction (one codec per shard). Thread: the
// shard owning the codec. Pure: no I/O, no clock; never throws on input; decoders never
// allocate beyond their caps, whatever the headers of the input claim.
//
// msgpack decoding uses msgpack-c's visitor parser (msgpack::parse): it keeps its own explicit
// stack (no recursion), calls the visitor before pushing a level, so the visitor refuses level
// 65 before anything is pushed, and it reads counts and lengths without allocating for them
// (a short input ends as "insufficient bytes"). The visitor writes JSON text directly: no
// msgpack::object tree and no zone per message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "proto/wse_error.hpp"

namespace wsed::proto {

inline constexpr size_t wse_msgpack_depth_max = 64;  // deeper: too_deep
inline constexpr size_t wse_compress_threshold_bytes_default = 1024;
inline constexpr size_t wse_decompressed_bytes_max_default = 1u << 20;
inline constexpr int wse_compression_level_default = 6;

enum class wse_inbound_format : uint8_t {
  json,     // text JSON (possibly with a legacy WSE{ / U{ / S{ prefix)
  msgpack,  // "M:" prefix or raw msgpack (binary frame)
  zlib,     // "C:" prefix
};

// Classifies a whole inbound message. binary: it came in a binary frame. A binary message
// without a prefix is raw msgpack; a text message without a prefix is JSON.
wse_inbound_format wse_detect_format(std::span<const uint8_t> message, bool binary);

// msgpack (no prefix) -> JSON text appended to json_out. Map keys must be strings (integer keys
// are written as decimal strings), str must be valid UTF-8, bin is accepted when it is valid
// UTF-8 text, ext is refused. Floats are written in their shortest round-trip form (NaN and
// infinities as null). Nesting over wse_msgpack_depth_max -> too_deep; a truncated input ->
// truncated; bytes after the value -> trailing_bytes; JSON over json_bytes_max -> too_large.
//
// envelope (optional): what the decoder saw at the top level on the way, so that an application
// message needs no second parse of the JSON text (see wse_msgpack_envelope).
struct wse_msgpack_envelope;
// full: the JSON text is written. envelope_only: the whole input is validated the same way
// (types, UTF-8, depth, trailing bytes) and the envelope filled, but nothing is written (its
// payload span is then empty): for a caller that does not need the payload as JSON.
enum class wse_json_output : uint8_t { full, envelope_only };
wse_error wse_msgpack_to_json(std::span<const uint8_t> msgpack, std::string& json_out,
                              size_t json_bytes_max = wse_decompressed_bytes_max_default,
                              wse_msgpack_envelope* envelope = nullptr,
                              wse_json_output output = wse_json_output::full);

// The top level of a MessagePack envelope as the decoder walked it. complete: the value is a map
// whose "t" is a string and whose t, p, c, id keys each appear at most once; then the fields
// below equal what wse_envelope_parser reads from the JSON text (type, category when "c" is a
// string, id when "id" is a string, and "p" as the span [payload_begin, payload_end) of the JSON
// written to json_out). Views point into the MessagePack input.
struct wse_msgpack_envelope {
  bool complete = false;
  std::string_view type;
  bool has_category = false;
  std::string_view category;
  std::string_view id;
  bool has_payload = false;
  size_t payload_begin = 0, payload_end = 0;
  size_t depth = 0;  // deepest nesting seen (the top-level map is 1)
};

enum class wse_compressed : uint8_t { no, yes };

class wse_codec {
 public:
  explicit wse_codec(int compression_level = wse_compression_level_default);
  ~wse_codec();
  wse_codec(const wse_codec&) = delete;
  wse_codec& operator=(const wse_codec&) = delete;

  // JSON text -> msgpack appended to out ("M:" first when with_prefix): objects become maps
  // with the same keys in the same order, integers the smallest msgpack int, other numbers
  // float64. Errors: malformed_json, too_deep (over wse_msgpack_depth_max).
  wse_error json_to_msgpack(std::string_view json, std::string& out, bool with_prefix = true);

  // "C:" + zlib stream of json appended to out when json is longer than threshold_bytes (then
  // yes); otherwise out is left unchanged (no: send the JSON as is).
  wse_compressed compress(std::string_view json, std::string& out,
                          size_t threshold_bytes = wse_compress_threshold_bytes_default);

  // zlib stream (after the "C:" prefix) -> bytes appended to out, at most decompressed_bytes_max
  // (over it: too_large; the output buffer never grows beyond the cap); bad_zlib otherwise.
  wse_error decompress(std::span<const uint8_t> zlib, std::string& out,
                       size_t decompressed_bytes_max = wse_decompressed_bytes_max_default);

  // Any inbound message -> JSON text in json_out (replaced): strips "M:"/"C:", decodes msgpack
  // and zlib (a C: stream may itself hold JSON or msgpack), copies JSON text as it is. With
  // envelope, a message that is MessagePack itself ("M:" or raw, not inside "C:") also fills it
  // (its views then point into message); otherwise envelope->complete stays false.
  // output: envelope_only applies to a message that is MessagePack itself and given an
  // envelope (json_out then stays empty); everything else is decoded in full.
  wse_error decode_inbound(std::span<const uint8_t> message, bool binary, std::string& json_out,
                           size_t json_bytes_max = wse_decompressed_bytes_max_default,
                           wse_msgpack_envelope* envelope = nullptr,
                           wse_json_output output = wse_json_output::full);

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace wsed::proto
