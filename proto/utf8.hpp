// proto/utf8.hpp: incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing
// above U+10FFFF) for WebSocket text messages and close reasons.
//
// Owns: one byte of state. Thread: any. Pure: no I/O, no allocation. The validator says "bad"
// at the first byte that can no longer start or continue a valid sequence (fail fast, as the
// Autobahn 6.x cases require), not at the end of the message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace wsed::proto {

class utf8_validator {
 public:
  // Feeds the next bytes. Returns false as soon as the input cannot be valid UTF-8, whatever
  // follows; the validator then stays failed until reset().
  bool feed(std::span<const uint8_t> bytes);
  // True when everything fed so far ends on a character boundary (no sequence left open).
  bool at_boundary() const { return state_ == 0; }
  bool failed() const { return state_ == reject_state; }
  void reset() { state_ = 0; }

  static constexpr uint8_t reject_state = 12;

 private:
  uint8_t state_ = 0;
};

// Whole-buffer check: valid and complete.
bool valid_utf8(std::span<const uint8_t> bytes);
inline bool valid_utf8(std::string_view s) {
  return valid_utf8(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

}  // namespace wsed::proto
