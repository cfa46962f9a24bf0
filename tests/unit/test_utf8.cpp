// tests/unit/test_utf8.cpp: proto/utf8 against the Unicode Table 3-7 well-formed ranges,
// Autobahn 6.x style edge cases, fail-fast positions, and every split of the input.
// Owns: nothing. Thread: the test runner. Never depends on the order tests run in.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "proto/utf8.hpp"

using wsed::proto::utf8_validator;
using wsed::proto::valid_utf8;

namespace {

using bytes = std::vector<uint8_t>;

bytes encode(uint32_t cp) {
  // Deliberately naive encoder (it also encodes surrogates and values above U+10FFFF).
  if (cp < 0x80) return {static_cast<uint8_t>(cp)};
  if (cp < 0x800)
    return {static_cast<uint8_t>(0xC0 | cp >> 6), static_cast<uint8_t>(0x80 | (cp & 0x3F))};
  if (cp < 0x10000)
    return {static_cast<uint8_t>(0xE0 | cp >> 12), static_cast<uint8_t>(0x80 | (cp >> 6 & 0x3F)),
            static_cast<uint8_t>(0x80 | (cp & 0x3F))};
  return {static_cast<uint8_t>(0xF0 | cp >> 18), static_cast<uint8_t>(0x80 | (cp >> 12 & 0x3F)),
          static_cast<uint8_t>(0x80 | (cp >> 6 & 0x3F)), static_cast<uint8_t>(0x80 | (cp & 0x3F))};
}

// Reference: Unicode 15 Table 3-7 (well-formed UTF-8 byte sequences), written as ranges.
// Returns the index of the first byte that makes the input invalid, or -1 when there is none;
// *complete says whether the input ends on a character boundary.
long reference_fail_index(std::span<const uint8_t> s, bool* complete) {
  struct row {
    uint8_t lead_lo, lead_hi, second_lo, second_hi;
    int length;
  };
  static const row rows[] = {
      {0x00, 0x7F, 0, 0, 1},       {0xC2, 0xDF, 0x80, 0xBF, 2}, {0xE0, 0xE0, 0xA0, 0xBF, 3},
      {0xE1, 0xEC, 0x80, 0xBF, 3}, {0xED, 0xED, 0x80, 0x9F, 3}, {0xEE, 0xEF, 0x80, 0xBF, 3},
      {0xF0, 0xF0, 0x90, 0xBF, 4}, {0xF1, 0xF3, 0x80, 0xBF, 4}, {0xF4, 0xF4, 0x80, 0x8F, 4},
  };
  size_t i = 0;
  *complete = true;
  while (i < s.size()) {
    const row* r = nullptr;
    for (const row& candidate : rows)
      if (s[i] >= candidate.lead_lo && s[i] <= candidate.lead_hi) r = &candidate;
    if (r == nullptr) return static_cast<long>(i);
    for (int k = 1; k < r->length; ++k) {
      if (i + k >= s.size()) {
        *complete = false;
        return -1;
      }
      const uint8_t lo = k == 1 ? r->second_lo : 0x80;
      const uint8_t hi = k == 1 ? r->second_hi : 0xBF;
      if (s[i + k] < lo || s[i + k] > hi) return static_cast<long>(i + k);
    }
    i += r->length;
  }
  return -1;
}

// Feeds byte by byte; returns the index at which feed() first said false, or -1.
long fail_index_bytewise(const bytes& s, bool* at_boundary) {
  utf8_validator v;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!v.feed(std::span<const uint8_t>(&s[i], 1))) {
      CHECK(v.failed());
      *at_boundary = false;
      return static_cast<long>(i);
    }
  }
  *at_boundary = v.at_boundary();
  return -1;
}

void check_against_reference(const bytes& s) {
  bool ref_complete = false;
  const long ref = reference_fail_index(s, &ref_complete);
  bool at_boundary = false;
  const long got = fail_index_bytewise(s, &at_boundary);
  REQUIRE(got == ref);
  if (ref < 0) CHECK(at_boundary == ref_complete);
  CHECK(valid_utf8(s) == (ref < 0 && ref_complete));
  // Whole-span feed agrees too.
  utf8_validator whole;
  CHECK(whole.feed(s) == (ref < 0));
}

// Result of feeding s split at offset `at`: (accepted all, at boundary).
std::pair<bool, bool> feed_split(const bytes& s, size_t at) {
  utf8_validator v;
  bool ok = v.feed(std::span<const uint8_t>(s.data(), at));
  ok = v.feed(std::span<const uint8_t>(s.data() + at, s.size() - at)) && ok;
  return {ok, v.at_boundary()};
}

bytes concat(std::initializer_list<bytes> parts) {
  bytes out;
  for (const bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

TEST_CASE("utf8: code point boundaries are valid") {
  for (uint32_t cp :
       {0x0u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFu, 0x1000u, 0xD7FFu, 0xE000u, 0xFFFDu, 0xFFFEu,
        0xFFFFu, 0x10000u, 0x3FFFFu, 0x40000u, 0xFFFFFu, 0x100000u, 0x10FFFFu}) {
    CAPTURE(cp);
    const bytes b = encode(cp);
    CHECK(valid_utf8(b));
    check_against_reference(b);
  }
  CHECK(valid_utf8(std::string_view("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")));  // κόσμε
  CHECK(
      valid_utf8(std::string_view("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0"
                                  "\xc3\xa1-UTF-8!!")));
  CHECK(valid_utf8(std::string_view("")));
}

TEST_CASE("utf8: every code point round-trips, surrogates and > U+10FFFF do not") {
  for (uint32_t cp = 0; cp <= 0x110000; ++cp) {
    const bool expect = cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    const bytes b = encode(cp);
    if (valid_utf8(b) != expect) {
      FAIL("code point " << cp);
    }
  }
}

TEST_CASE("utf8: fail fast at the first impossible byte") {
  struct vec {
    bytes input;
    long fail_at;
  };
  const vec cases[] = {
      {{0xF4, 0x90, 0x80, 0x80}, 1},   // > U+10FFFF
      {{0xF4, 0x8F, 0xBF, 0xBF}, -1},  // U+10FFFF
      {{0xED, 0xA0, 0x80}, 1},         // U+D800
      {{0xED, 0xBF, 0xBF}, 1},         // U+DFFF
      {{0xED, 0x9F, 0xBF}, -1},        // U+D7FF
      {{0xC0, 0x80}, 0},               // overlong NUL
      {{0xC1, 0xBF}, 0},               // overlong U+007F
      {{0xE0, 0x80, 0x80}, 1},         // overlong
      {{0xE0, 0x9F, 0xBF}, 1},         // overlong U+07FF
      {{0xE0, 0xA0, 0x80}, -1},        // U+0800
      {{0xF0, 0x80, 0x80, 0x80}, 1},   // overlong
      {{0xF0, 0x8F, 0xBF, 0xBF}, 1},   // overlong U+FFFF
      {{0xF0, 0x90, 0x80, 0x80}, -1},  // U+10000
      {{0xF5, 0x80, 0x80, 0x80}, 0},
      {{0xF8, 0x88, 0x80, 0x80, 0x80}, 0},  // 5-byte form
      {{0xFC, 0x84, 0x80, 0x80, 0x80, 0x80}, 0},
      {{0xFE}, 0},
      {{0xFF}, 0},
      {{0x80}, 0},  // lone continuation
      {{0xBF}, 0},
      {{0x41, 0xC2, 0x41}, 2},        // truncated 2-byte then ASCII
      {{0xE2, 0x82, 0x41}, 2},        // truncated 3-byte then ASCII
      {{0xF0, 0x9F, 0x98, 0xC2}, 3},  // truncated 4-byte then a lead
      {{0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE,
        0xB5, 0xED, 0xA0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64},
       12},  // Autobahn 6.4.x: κόσμε + surrogate + "edited"
  };
  for (const vec& c : cases) {
    CAPTURE(c.fail_at);
    bool at_boundary = false;
    CHECK(fail_index_bytewise(c.input, &at_boundary) == c.fail_at);
    check_against_reference(c.input);
  }
}

TEST_CASE("utf8: truncated sequences are valid so far but not at a boundary") {
  for (const bytes& b : {bytes{0xC2}, bytes{0xE2, 0x82}, bytes{0xE0}, bytes{0xF0, 0x9F},
                         bytes{0xF0, 0x9F, 0x98}, bytes{0xF4, 0x8F, 0xBF}}) {
    utf8_validator v;
    CHECK(v.feed(b));
    CHECK_FALSE(v.at_boundary());
    CHECK_FALSE(v.failed());
    CHECK_FALSE(valid_utf8(b));
  }
  utf8_validator v;
  CHECK(v.feed(bytes{0xE2, 0x82}));
  CHECK(v.feed(bytes{0xAC}));  // completes U+20AC
  CHECK(v.at_boundary());
}

TEST_CASE("utf8: a failed validator stays failed until reset") {
  utf8_validator v;
  CHECK_FALSE(v.feed(bytes{0xFF}));
  CHECK(v.failed());
  CHECK_FALSE(v.feed(bytes{0x41}));
  CHECK_FALSE(v.feed(bytes{}));
  v.reset();
  CHECK(v.feed(bytes{0x41}));
  CHECK(v.at_boundary());
}

TEST_CASE("utf8: all 1-, 2- and 3-byte inputs agree with the reference") {
  for (unsigned a = 0; a < 256; ++a)
    for (unsigned b = 0; b < 256; ++b)
      check_against_reference(bytes{static_cast<uint8_t>(a), static_cast<uint8_t>(b)});
  // Three bytes with a non-ASCII lead (ASCII leads reduce to the 2-byte case).
  long mismatches = 0;
  for (unsigned a = 0x80; a < 256; ++a)
    for (unsigned b = 0; b < 256; ++b)
      for (unsigned c = 0; c < 256; ++c) {
        const uint8_t s[3] = {static_cast<uint8_t>(a), static_cast<uint8_t>(b),
                              static_cast<uint8_t>(c)};
        bool complete = false;
        const long ref = reference_fail_index(s, &complete);
        utf8_validator v;
        long got = -1;
        for (size_t i = 0; i < 3 && got < 0; ++i)
          if (!v.feed(std::span<const uint8_t>(&s[i], 1))) got = static_cast<long>(i);
        if (got != ref || valid_utf8(s) != (ref < 0 && complete)) ++mismatches;
      }
  CHECK(mismatches == 0);
}

TEST_CASE("utf8: 4-byte leads against the reference") {
  const uint8_t probes[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F,
                            0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xF0, 0xFF};
  for (unsigned lead = 0xF0; lead <= 0xFF; ++lead)
    for (uint8_t b : probes)
      for (uint8_t c : probes)
        for (uint8_t d : probes)
          check_against_reference(bytes{static_cast<uint8_t>(lead), b, c, d});
}

TEST_CASE("utf8: the ASCII fast path reports the same position for every alignment") {
  for (size_t prefix = 0; prefix < 40; ++prefix) {
    for (const bytes& tail :
         {bytes{0xFF}, bytes{0xED, 0xA0}, bytes{0xC3, 0xA9, 0x80}, bytes{0xF4, 0x90}}) {
      const bytes s = concat({bytes(prefix, 'a'), tail, bytes(20, 'b')});
      CAPTURE(prefix);
      check_against_reference(s);
    }
    const bytes good = concat({bytes(prefix, 'a'), encode(0x1F600), bytes(prefix, 'c')});
    CHECK(valid_utf8(good));
  }
}

TEST_CASE("utf8: split at every offset gives the same answer") {
  std::mt19937 rng(12345);
  for (int round = 0; round < 300; ++round) {
    bytes s;
    const int chars = static_cast<int>(rng() % 24);
    for (int i = 0; i < chars; ++i) {
      const uint32_t kind = rng() % 5;
      const uint32_t cp = kind == 0   ? rng() % 0x80
                          : kind == 1 ? 0x80 + rng() % 0x780
                          : kind == 2 ? 0x800 + rng() % 0xF800
                                      : 0x10000 + rng() % 0x100000;
      const bytes e = encode(cp);
      s.insert(s.end(), e.begin(), e.end());
    }
    if (round % 3 == 1 && !s.empty()) s[rng() % s.size()] = static_cast<uint8_t>(rng());
    if (round % 3 == 2 && !s.empty()) s.pop_back();
    bool complete = false;
    const bool expect_ok = reference_fail_index(s, &complete) < 0;
    for (size_t at = 0; at <= s.size(); ++at) {
      const auto [ok, boundary] = feed_split(s, at);
      CHECK(ok == expect_ok);
      if (ok) CHECK(boundary == complete);
    }
  }
}
