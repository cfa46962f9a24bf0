// proto/utf8.cpp: the incremental UTF-8 validator (a byte-class DFA derived below from the
// RFC 3629 table, plus an 8-bytes-at-a-time ASCII fast path).
//
// Owns: two constant tables. Thread: any (the tables are read-only). Never allocates, never
// looks past the span it is given, never accepts a byte that cannot lead to valid UTF-8.
#include "proto/utf8.hpp"

#include <array>
#include <cstring>

namespace wsed::proto {
namespace {

// Byte classes. Each class is a set of bytes that every DFA state treats alike.
enum byte_class : uint8_t {
  c_ascii,      // 00..7F
  c_cont_lo,    // 80..8F
  c_cont_mid,   // 90..9F
  c_cont_hi,    // A0..BF
  c_never,      // C0 C1 F5..FF: no valid sequence contains them
  c_lead2,      // C2..DF
  c_lead3_e0,   // E0: next byte A0..BF (no overlongs)
  c_lead3,      // E1..EC EE EF
  c_lead3_ed,   // ED: next byte 80..9F (no surrogates)
  c_lead4_f0,   // F0: next byte 90..BF (no overlongs)
  c_lead4,      // F1..F3
  c_lead4_f4,   // F4: next byte 80..8F (nothing above U+10FFFF)
  class_count,  // 12
};

// States are multiples of class_count so that a transition is one lookup at state + class.
// 0 is "at a boundary" and 12 is "rejected" (utf8_validator::reject_state).
enum state : uint8_t {
  s_accept = 0,
  s_reject = 12,
  s_need1 = 24,     // one continuation byte (80..BF) left
  s_need2 = 36,     // two left
  s_need3 = 48,     // three left
  s_after_e0 = 60,  // then A0..BF, then one more
  s_after_ed = 72,  // then 80..9F, then one more
  s_after_f0 = 84,  // then 90..BF, then two more
  s_after_f4 = 96,  // then 80..8F, then two more
  state_end = 108,
};
static_assert(s_reject == utf8_validator::reject_state);
static_assert(class_count == 12 && int{s_reject} == int{class_count});

constexpr uint8_t class_of(unsigned b) {
  if (b < 0x80) return c_ascii;
  if (b < 0x90) return c_cont_lo;
  if (b < 0xA0) return c_cont_mid;
  if (b < 0xC0) return c_cont_hi;
  if (b < 0xC2) return c_never;
  if (b < 0xE0) return c_lead2;
  if (b == 0xE0) return c_lead3_e0;
  if (b == 0xED) return c_lead3_ed;
  if (b < 0xF0) return c_lead3;
  if (b == 0xF0) return c_lead4_f0;
  if (b < 0xF4) return c_lead4;
  if (b == 0xF4) return c_lead4_f4;
  return c_never;
}

constexpr std::array<uint8_t, 256> make_class_table() {
  std::array<uint8_t, 256> t{};
  for (unsigned b = 0; b < 256; ++b) t[b] = class_of(b);
  return t;
}

// Which continuation classes a state accepts, and where each leads.
constexpr uint8_t next_state(uint8_t s, uint8_t c) {
  const bool cont = c == c_cont_lo || c == c_cont_mid || c == c_cont_hi;
  switch (s) {
    case s_accept:
      switch (c) {
        case c_ascii:
          return s_accept;
        case c_lead2:
          return s_need1;
        case c_lead3_e0:
          return s_after_e0;
        case c_lead3:
          return s_need2;
        case c_lead3_ed:
          return s_after_ed;
        case c_lead4_f0:
          return s_after_f0;
        case c_lead4:
          return s_need3;
        case c_lead4_f4:
          return s_after_f4;
        default:
          return s_reject;
      }
    case s_need1:
      return cont ? s_accept : s_reject;
    case s_need2:
      return cont ? s_need1 : s_reject;
    case s_need3:
      return cont ? s_need2 : s_reject;
    case s_after_e0:
      return c == c_cont_hi ? s_need1 : s_reject;
    case s_after_ed:
      return c == c_cont_lo || c == c_cont_mid ? s_need1 : s_reject;
    case s_after_f0:
      return c == c_cont_mid || c == c_cont_hi ? s_need2 : s_reject;
    case s_after_f4:
      return c == c_cont_lo ? s_need2 : s_reject;
    default:
      return s_reject;  // s_reject absorbs
  }
}

constexpr std::array<uint8_t, state_end> make_transition_table() {
  std::array<uint8_t, state_end> t{};
  for (unsigned s = 0; s < state_end; s += class_count)
    for (unsigned c = 0; c < class_count; ++c)
      t[s + c] = next_state(static_cast<uint8_t>(s), static_cast<uint8_t>(c));
  return t;
}

constexpr auto class_table = make_class_table();
constexpr auto transition_table = make_transition_table();

// Spot checks of the derivation (the unit tests cover every boundary).
static_assert(transition_table[s_accept + class_table[0xF4]] == s_after_f4);
static_assert(transition_table[s_after_f4 + class_table[0x90]] == s_reject);
static_assert(transition_table[s_after_ed + class_table[0xA0]] == s_reject);
static_assert(transition_table[s_accept + class_table[0xC1]] == s_reject);

constexpr uint64_t high_bits = 0x8080808080808080ull;

// Validates p[0..n) starting in state s; returns the final state (s_reject at the first bad byte).
uint8_t run(uint8_t s, const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (s == s_accept) {
      // ASCII fast path: whole words, then single bytes, while at a boundary.
      while (n - i >= 8) {
        uint64_t word;
        std::memcpy(&word, p + i, 8);
        if (word & high_bits) break;
        i += 8;
      }
      while (i < n && p[i] < 0x80) ++i;
      if (i == n) break;
    }
    s = transition_table[s + class_table[p[i++]]];
    if (s == s_reject) break;
  }
  return s;
}

}  // namespace

bool utf8_validator::feed(std::span<const uint8_t> bytes) {
  if (state_ == s_reject) return false;
  state_ = run(state_, bytes.data(), bytes.size());
  return state_ != s_reject;
}

bool valid_utf8(std::span<const uint8_t> bytes) {
  return run(s_accept, bytes.data(), bytes.size()) == s_accept;
}

}  // namespace wsed::proto
