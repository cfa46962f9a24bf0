// proto/wse_error.hpp: the error values of the WSE envelope, builder and format code.
//
// Owns: nothing. Thread: any. Errors are values: every wse_* function that can fail on peer
// input returns one of these; none throws and none aborts on bad input.
#pragma once

#include <cstdint>
#include <string_view>

namespace wsed::proto {

enum class wse_error : uint8_t {
  none = 0,
  empty,              // no bytes (or only a legacy prefix)
  malformed_json,     // not JSON, invalid UTF-8, trailing bytes
  not_object,         // JSON, but the top level is not an object
  missing_type,       // no top-level "t"
  type_not_string,    // "t" is not a string
  duplicate_key,      // a top-level envelope key (t, c, p, id) appears twice
  too_deep,           // nesting over 64 (JSON or msgpack)
  bad_payload,        // a protocol message whose "p" has the wrong shape
  too_many_topics,    // subscription request over wse_subscription_topics_max
  malformed_msgpack,  // a reserved msgpack type byte (0xc1)
  truncated,          // msgpack shorter than its headers announce
  trailing_bytes,     // msgpack: bytes after the top-level value
  unsupported_type,   // msgpack ext, non-string map key, bin that is not UTF-8 text
  invalid_utf8,       // msgpack str that is not valid UTF-8
  too_large,          // output over its cap (decompressed size, JSON size)
  bad_zlib,           // not a valid zlib stream
  unknown_format,     // binary message without a known prefix that is not msgpack either
};

std::string_view to_string(wse_error error);

}  // namespace wsed::proto
