// proto/wse_formats.cpp: "M:" MessagePack (msgpack-c packer and visitor parser) and "C:" zlib
// (libdeflate) codecs.
//
// Owns: the simdjson parser, libdeflate handles and scratch buffers of a wse_codec. Thread: the
// shard owning the codec. Never does I/O, never throws on input, never allocates beyond the
// caller's caps (decoded JSON size, decompressed size).
#define MSGPACK_NO_BOOST 1
#include "proto/wse_formats.hpp"

#include <libdeflate.h>
#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <msgpack.hpp>
#include <new>

#include "proto/utf8.hpp"
#include "proto/wse_builder.hpp"

namespace wsed::proto {

namespace {

bool starts_with(std::span<const uint8_t> bytes, char a, char b) {
  return bytes.size() >= 2 && bytes[0] == static_cast<uint8_t>(a) &&
         bytes[1] == static_cast<uint8_t>(b);
}

bool is_msgpack_map_byte(uint8_t b) {
  return (b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf;
}

// msgpack-c visitor writing JSON text. Every callback returns false to stop the parse at the
// first error (kept in error).
struct json_writer_visitor {
  std::string& out;
  size_t out_base;
  size_t json_bytes_max;
  wse_msgpack_envelope* envelope = nullptr;  // optional: the top level, as wse_msgpack_envelope
  bool write = true;                         // false: validate only, out stays untouched
  wse_error error = wse_error::none;
  size_t depth = 0;
  bool in_key = false;
  bool first[wse_msgpack_depth_max + 1] = {};
  // With envelope: the current top-level key, where its value's JSON starts, what was seen.
  std::string_view top_key{};
  size_t value_begin = 0;
  bool top_map = false, seen_t = false, seen_p = false, seen_c = false, seen_id = false;
  bool duplicate = false, type_is_string = false;

  // A string at the top level of the envelope: a key, or the value of t / c / id.
  void top_string(std::string_view text) {
    if (in_key) {
      top_key = text;
    } else if (top_key == "t") {
      envelope->type = text;
      type_is_string = true;
    } else if (top_key == "c") {
      envelope->category = text;
      envelope->has_category = true;
    } else if (top_key == "id") {
      envelope->id = text;
    }
  }
  void top_key_done() {
    bool* seen = top_key == "t"    ? &seen_t
                 : top_key == "p"  ? &seen_p
                 : top_key == "c"  ? &seen_c
                 : top_key == "id" ? &seen_id
                                   : nullptr;
    if (seen) {
      duplicate = duplicate || *seen;
      *seen = true;
    }
    value_begin = out.size();
  }

  bool fail(wse_error e) {
    if (error == wse_error::none) error = e;
    return false;
  }
  bool check_size() {
    return out.size() - out_base <= json_bytes_max ? true : fail(wse_error::too_large);
  }
  bool scalar(std::string_view text) {
    if (in_key) return fail(wse_error::unsupported_type);
    if (!write) return true;
    out.append(text);
    return check_size();
  }
  bool integer_text(std::string_view digits) {
    if (!in_key) return scalar(digits);
    if (!write) return true;
    out.push_back('"');
    out.append(digits);
    out.push_back('"');
    return check_size();
  }

  bool visit_nil() { return scalar("null"); }
  bool visit_boolean(bool v) { return scalar(v ? "true" : "false"); }
  bool visit_positive_integer(uint64_t v) {
    if (!write) return true;
    char digits[24];
    return integer_text({digits, std::to_chars(digits, digits + sizeof digits, v).ptr});
  }
  bool visit_negative_integer(int64_t v) {
    if (!write) return true;
    char digits[24];
    return integer_text({digits, std::to_chars(digits, digits + sizeof digits, v).ptr});
  }
  template <typename Float>
  bool visit_float(Float v) {
    if (!write) return scalar({});
    if (!std::isfinite(v)) return scalar("null");
    char digits[40];
    char* end = std::to_chars(digits, digits + sizeof digits - 2, v).ptr;
    if (std::string_view(digits, static_cast<size_t>(end - digits)).find_first_of(".e") ==
        std::string_view::npos) {
      *end++ = '.';  // keep a float a float through a JSON round trip
      *end++ = '0';
    }
    return scalar({digits, static_cast<size_t>(end - digits)});
  }
  bool visit_float32(float v) { return visit_float(v); }
  bool visit_float64(double v) { return visit_float(v); }
  // A str, or a bin holding text; UTF-8 already checked.
  bool text_value(std::string_view text) {
    if (envelope && depth == 1 && top_map) top_string(text);
    if (!write) return true;
    wse_append_json_string(out, text);
    return check_size();
  }
  bool visit_str(const char* v, uint32_t size) {
    const std::string_view text(v, size);
    return valid_utf8(text) ? text_value(text) : fail(wse_error::invalid_utf8);
  }
  bool visit_bin(const char* v, uint32_t size) {
    const std::string_view text(v, size);
    return valid_utf8(text) ? text_value(text) : fail(wse_error::unsupported_type);
  }
  bool visit_ext(const char*, uint32_t) { return fail(wse_error::unsupported_type); }
  bool open(char bracket) {
    if (in_key) return fail(wse_error::unsupported_type);
    if (++depth > wse_msgpack_depth_max) return fail(wse_error::too_deep);
    if (envelope) {
      if (depth == 1) top_map = bracket == '{';
      envelope->depth = std::max(envelope->depth, depth);
    }
    first[depth] = true;
    if (!write) return true;
    out.push_back(bracket);
    return check_size();
  }
  bool next_item() {
    if (!first[depth] && write) out.push_back(',');
    first[depth] = false;
    return true;
  }
  bool close(char bracket) {
    --depth;
    if (!write) return true;
    out.push_back(bracket);
    return check_size();
  }
  bool start_array(uint32_t) { return open('['); }
  bool start_array_item() { return next_item(); }
  bool end_array_item() { return true; }
  bool end_array() { return close(']'); }
  bool start_map(uint32_t) { return open('{'); }
  bool start_map_key() {
    in_key = true;
    return next_item();
  }
  bool end_map_key() {
    in_key = false;
    if (write) out.push_back(':');
    if (envelope && depth == 1) top_key_done();
    return true;
  }
  bool start_map_value() { return true; }
  bool end_map_value() {
    if (envelope && depth == 1 && top_key == "p") {
      envelope->has_payload = true;
      envelope->payload_begin = value_begin;
      envelope->payload_end = out.size();
    }
    if (envelope && depth == 1) top_key = {};  // a non-string key leaves no name behind
    return true;
  }
  bool end_map() { return close('}'); }
  void parse_error(size_t, size_t) { fail(wse_error::malformed_msgpack); }
  void insufficient_bytes(size_t, size_t) { fail(wse_error::truncated); }
};

// MessagePack checked by hand, without writing anything: the same rules and the same errors, in
// the same order, as msgpack-c's parse with json_writer_visitor (the unit tests and the fuzz
// target compare the two), at a fraction of its cost (perf/bench_wse): msgpack-c's generic
// state machine and its heap-allocated stack were half of the server's CPU per `M:` message.
class msgpack_checker {
 public:
  msgpack_checker(std::span<const uint8_t> in, wse_msgpack_envelope* envelope)
      : p_(in.data()), end_(in.data() + in.size()), env_(envelope) {}

  // Checks one value at the start; *used: its bytes.
  wse_error check(size_t* used) {
    const uint8_t* begin = p_;
    wse_error e = value();
    while (e == wse_error::none && depth_ > 0) e = value();
    *used = size_t(p_ - begin);
    return e;
  }
  bool top_map = false, seen_t = false, type_is_string = false, duplicate = false;

 private:
  struct level {
    uint64_t left;  // items still to come (a map's keys and values both count)
    bool map;
  };
  bool need(size_t n) const { return size_t(end_ - p_) >= n; }
  uint64_t be(size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = (v << 8) | p_[i];
    p_ += n;
    return v;
  }
  // Whether the item about to be read is a map key, and at the envelope's top level.
  bool in_key() const {
    return depth_ > 0 && stack_[depth_ - 1].map && stack_[depth_ - 1].left % 2 == 0;
  }
  bool at_top() const { return env_ && depth_ == 1 && top_map; }

  // Called after a complete item at the current level (not a container opening).
  void item_done() {
    while (depth_ > 0) {
      level& l = stack_[depth_ - 1];
      if (--l.left != 0) return;
      --depth_;  // the container is complete: it is an item of its parent
    }
  }
  wse_error text(size_t n, bool is_str) {
    if (!need(n)) return wse_error::truncated;
    std::string_view t(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    if (!valid_utf8(t)) return is_str ? wse_error::invalid_utf8 : wse_error::unsupported_type;
    if (at_top()) {
      if (in_key()) {
        top_key_ = t;
        key_done();
      } else {
        top_value_string(t);
      }
    }
    item_done();
    return wse_error::none;
  }
  void key_done() {
    bool* seen = top_key_ == "t"    ? &seen_t
                 : top_key_ == "p"  ? &seen_p_
                 : top_key_ == "c"  ? &seen_c_
                 : top_key_ == "id" ? &seen_id_
                                    : nullptr;
    if (seen) {
      duplicate = duplicate || *seen;
      *seen = true;
    }
    if (top_key_ == "p") env_->has_payload = true;
  }
  void top_value_string(std::string_view t) {
    if (top_key_ == "t") {
      env_->type = t;
      type_is_string = true;
    } else if (top_key_ == "c") {
      env_->category = t;
      env_->has_category = true;
    } else if (top_key_ == "id") {
      env_->id = t;
    }
  }
  // A scalar that is not text: allowed as a key only when it is an integer.
  wse_error scalar(size_t n, bool integer) {
    if (!need(n)) return wse_error::truncated;
    if (in_key() && !integer) return wse_error::unsupported_type;
    p_ += n;
    if (at_top() && in_key()) {
      top_key_ = {};  // a non-string key leaves no name behind
    }
    item_done();
    return wse_error::none;
  }
  wse_error open(uint64_t items, bool map) {
    if (in_key()) return wse_error::unsupported_type;
    if (depth_ == wse_msgpack_depth_max) return wse_error::too_deep;
    if (env_) {
      if (depth_ == 0) top_map = map;
      env_->depth = std::max<size_t>(env_->depth, depth_ + 1);
    }
    if (items == 0) {
      item_done();
      return wse_error::none;
    }
    stack_[depth_++] = level{map ? items * 2 : items, map};
    return wse_error::none;
  }
  // One item (a scalar, a text, or a container's header).
  wse_error value() {
    if (!need(1)) return wse_error::truncated;
    const uint8_t b = *p_++;
    if (b <= 0x7f || b >= 0xe0) return scalar(0, true);
    if (b <= 0x8f) return open(b & 0x0f, true);
    if (b <= 0x9f) return open(b & 0x0f, false);
    if (b <= 0xbf) return text(b & 0x1f, true);
    switch (b) {
      case 0xc0:
      case 0xc2:
      case 0xc3:
        return scalar(0, false);
      case 0xc4:
      case 0xc5:
      case 0xc6:
      case 0xd9:
      case 0xda:
      case 0xdb: {
        size_t w = (b == 0xc4 || b == 0xd9) ? 1 : (b == 0xc5 || b == 0xda) ? 2 : 4;
        if (!need(w)) return wse_error::truncated;
        return text(size_t(be(w)), b >= 0xd9);
      }
      case 0xc7:
      case 0xc8:
      case 0xc9: {
        size_t w = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
        if (!need(w)) return wse_error::truncated;
        size_t n = size_t(be(w));
        if (!need(n + 1)) return wse_error::truncated;
        return wse_error::unsupported_type;
      }
      case 0xca:
        return scalar(4, false);
      case 0xcb:
        return scalar(8, false);
      case 0xcc:
      case 0xd0:
        return scalar(1, true);
      case 0xcd:
      case 0xd1:
        return scalar(2, true);
      case 0xce:
      case 0xd2:
        return scalar(4, true);
      case 0xcf:
      case 0xd3:
        return scalar(8, true);
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8: {
        size_t n = size_t(1) << (b - 0xd4);
        if (!need(n + 1)) return wse_error::truncated;
        return wse_error::unsupported_type;
      }
      case 0xdc:
      case 0xdd:
      case 0xde:
      case 0xdf: {
        size_t w = (b == 0xdc || b == 0xde) ? 2 : 4;
        if (!need(w)) return wse_error::truncated;
        return open(be(w), b >= 0xde);
      }
      default:  // 0xc1: never used
        return wse_error::malformed_msgpack;
    }
  }

  const uint8_t* p_;
  const uint8_t* end_;
  wse_msgpack_envelope* env_;
  level stack_[wse_msgpack_depth_max];
  size_t depth_ = 0;
  std::string_view top_key_{};
  bool seen_p_ = false, seen_c_ = false, seen_id_ = false;
};

struct string_stream {
  std::string& out;
  void write(const char* data, size_t size) { out.append(data, size); }
};

using packer = msgpack::packer<string_stream>;

// Cannot fail: the DOM was validated by the parse (depth included).
void pack_element(simdjson::dom::element element, packer& pk, string_stream& stream) {
  using simdjson::dom::element_type;
  switch (element.type()) {
    case element_type::OBJECT: {
      const simdjson::dom::object object = element.get_object().value_unsafe();
      pk.pack_map(static_cast<uint32_t>(object.size()));
      for (const auto field : object) {
        pk.pack_str(static_cast<uint32_t>(field.key.size()));
        pk.pack_str_body(field.key.data(), static_cast<uint32_t>(field.key.size()));
        pack_element(field.value, pk, stream);
      }
      break;
    }
    case element_type::ARRAY: {
      const simdjson::dom::array array = element.get_array().value_unsafe();
      pk.pack_array(static_cast<uint32_t>(array.size()));
      for (const simdjson::dom::element item : array) {
        pack_element(item, pk, stream);
      }
      break;
    }
    case element_type::STRING: {
      const std::string_view s = element.get_string().value_unsafe();
      pk.pack_str(static_cast<uint32_t>(s.size()));
      pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
      break;
    }
    case element_type::INT64:
      pk.pack_int64(element.get_int64().value_unsafe());
      break;
    case element_type::UINT64:
      pk.pack_uint64(element.get_uint64().value_unsafe());
      break;
    case element_type::DOUBLE: {
      // Always float64: msgpack-c's pack_double turns integral doubles into ints (and its range
      // test converts 2^64 to uint64_t, which is undefined).
      uint64_t bits = 0;
      const double value = element.get_double().value_unsafe();
      std::memcpy(&bits, &value, sizeof bits);
      char encoded[9] = {static_cast<char>(0xcb)};
      for (int i = 0; i < 8; ++i) encoded[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
      stream.write(encoded, sizeof encoded);
      break;
    }
    case element_type::BOOL:
      if (element.get_bool().value_unsafe()) {
        pk.pack_true();
      } else {
        pk.pack_false();
      }
      break;
    case element_type::NULL_VALUE:
      pk.pack_nil();
      break;
  }
}

}  // namespace

wse_inbound_format wse_detect_format(std::span<const uint8_t> message, bool binary) {
  if (starts_with(message, 'C', ':')) return wse_inbound_format::zlib;
  if (starts_with(message, 'M', ':')) return wse_inbound_format::msgpack;
  return binary ? wse_inbound_format::msgpack : wse_inbound_format::json;
}

wse_error wse_msgpack_to_json(std::span<const uint8_t> msgpack, std::string& json_out,
                              size_t json_bytes_max, wse_msgpack_envelope* envelope,
                              wse_json_output output) {
  if (envelope) *envelope = wse_msgpack_envelope{};
  if (msgpack.empty()) return wse_error::empty;
  if (output == wse_json_output::envelope_only) {
    msgpack_checker checker(msgpack, envelope);
    size_t used = 0;
    const wse_error error = checker.check(&used);
    if (error != wse_error::none) return error;
    if (used != msgpack.size()) return wse_error::trailing_bytes;
    if (envelope)
      envelope->complete =
          checker.top_map && checker.seen_t && checker.type_is_string && !checker.duplicate;
    return wse_error::none;
  }
  json_writer_visitor visitor{json_out, json_out.size(), json_bytes_max, envelope};
  size_t offset = 0;
  const bool ok = msgpack::parse(reinterpret_cast<const char*>(msgpack.data()), msgpack.size(),
                                 offset, visitor);
  if (visitor.error != wse_error::none) return visitor.error;
  if (!ok) return wse_error::malformed_msgpack;
  if (offset != msgpack.size()) return wse_error::trailing_bytes;
  if (envelope) {
    envelope->complete =
        visitor.top_map && visitor.seen_t && visitor.type_is_string && !visitor.duplicate;
  }
  return wse_error::none;
}

struct wse_codec::state {
  simdjson::dom::parser parser;
  std::string padded;
  std::string scratch;  // decompressed bytes awaiting msgpack decoding
  libdeflate_compressor* compressor = nullptr;
  libdeflate_decompressor* decompressor = nullptr;

  explicit state(int level)
      : compressor(libdeflate_alloc_compressor(level)),
        decompressor(libdeflate_alloc_decompressor()) {
    if (parser.allocate(4096, wse_msgpack_depth_max)) throw std::bad_alloc();  // startup only
  }
  ~state() {
    libdeflate_free_compressor(compressor);
    libdeflate_free_decompressor(decompressor);
  }
  state(const state&) = delete;
  state& operator=(const state&) = delete;
};

wse_codec::wse_codec(int compression_level) : state_(std::make_unique<state>(compression_level)) {
  if (state_->compressor == nullptr || state_->decompressor == nullptr) {
    throw std::bad_alloc();  // startup only
  }
}

wse_codec::~wse_codec() = default;

wse_error wse_codec::json_to_msgpack(std::string_view json, std::string& out, bool with_prefix) {
  std::string& padded = state_->padded;
  if (padded.size() < json.size() + simdjson::SIMDJSON_PADDING) {
    padded.resize(json.size() + simdjson::SIMDJSON_PADDING);
  }
  std::memcpy(padded.data(), json.data(), json.size());
  simdjson::dom::element root;
  const auto parse_error = state_->parser.parse(padded.data(), json.size(), false).get(root);
  if (parse_error == simdjson::DEPTH_ERROR) return wse_error::too_deep;
  if (parse_error) return wse_error::malformed_json;
  if (with_prefix) out.append("M:");
  string_stream stream{out};
  packer pk(stream);
  pack_element(root, pk, stream);
  return wse_error::none;
}

wse_compressed wse_codec::compress(std::string_view json, std::string& out,
                                   size_t threshold_bytes) {
  if (json.size() <= threshold_bytes) return wse_compressed::no;
  const size_t bound = libdeflate_zlib_compress_bound(state_->compressor, json.size());
  const size_t base = out.size();
  out.resize(base + 2 + bound);
  out[base] = 'C';
  out[base + 1] = ':';
  const size_t written = libdeflate_zlib_compress(state_->compressor, json.data(), json.size(),
                                                  out.data() + base + 2, bound);
  if (written == 0) {  // cannot happen with the bound; send uncompressed
    out.resize(base);
    return wse_compressed::no;
  }
  out.resize(base + 2 + written);
  return wse_compressed::yes;
}

wse_error wse_codec::decompress(std::span<const uint8_t> zlib, std::string& out,
                                size_t decompressed_bytes_max) {
  const size_t base = out.size();
  // Start from a guess and grow by 4x up to the cap: libdeflate needs the whole output buffer
  // up front, and a bomb must not make us allocate the cap for every small message.
  size_t capacity = std::min(decompressed_bytes_max, std::max<size_t>(4096, zlib.size() * 4));
  for (;;) {
    if (out.capacity() < base + capacity) {
      // Exactly this much (resize or reserve on a non-empty string may round up to 2x).
      std::string grown;
      grown.reserve(base + capacity);
      grown.append(out.data(), base);
      out.swap(grown);
    }
    out.resize(base + capacity);
    size_t actual = 0;
    const libdeflate_result result = libdeflate_zlib_decompress(
        state_->decompressor, zlib.data(), zlib.size(), out.data() + base, capacity, &actual);
    if (result == LIBDEFLATE_SUCCESS) {
      out.resize(base + actual);
      return wse_error::none;
    }
    if (result != LIBDEFLATE_INSUFFICIENT_SPACE) {
      out.resize(base);
      return wse_error::bad_zlib;
    }
    if (capacity >= decompressed_bytes_max) {
      out.resize(base);
      return wse_error::too_large;
    }
    capacity = std::min(decompressed_bytes_max, capacity * 4);
  }
}

wse_error wse_codec::decode_inbound(std::span<const uint8_t> message, bool binary,
                                    std::string& json_out, size_t json_bytes_max,
                                    wse_msgpack_envelope* envelope, wse_json_output output) {
  json_out.clear();
  if (envelope) *envelope = wse_msgpack_envelope{};
  switch (wse_detect_format(message, binary)) {
    case wse_inbound_format::json:
      if (message.size() > json_bytes_max) return wse_error::too_large;
      json_out.append(reinterpret_cast<const char*>(message.data()), message.size());
      return wse_error::none;
    case wse_inbound_format::msgpack:
      if (starts_with(message, 'M', ':')) message = message.subspan(2);
      return wse_msgpack_to_json(message, json_out, json_bytes_max, envelope,
                                 envelope ? output : wse_json_output::full);
    case wse_inbound_format::zlib:
      break;
  }
  std::string& inflated = state_->scratch;
  inflated.clear();
  const wse_error error = decompress(message.subspan(2), inflated, json_bytes_max);
  if (error != wse_error::none) return error;
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(inflated.data()),
                                       inflated.size());
  if (!bytes.empty() && is_msgpack_map_byte(bytes[0])) {
    return wse_msgpack_to_json(bytes, json_out, json_bytes_max);
  }
  json_out.swap(inflated);
  return wse_error::none;
}

}  // namespace wsed::proto
