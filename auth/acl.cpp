// auth/acl.cpp: glob matching and the topic ACL check (see acl.hpp).
//
// Owns: nothing. Thread: any (pure functions over the caller's strings). Never allocates in
// glob_match/glob_covers (they run on every subscription check); globs_intersect allocates one
// small visited table (subscribe time only).
#include "auth/acl.hpp"

#include <cstdint>

namespace wsed::auth {

namespace {

bool has_wildcard(std::string_view s) {
  return s.find_first_of("*?") != std::string_view::npos;
}

// Greedy matcher with one backtrack point (the last `*` seen), generic over the rule deciding
// whether a pattern byte that is not `*` consumes one text symbol. O(|pattern| * |text|) worst
// case, no recursion.
template <typename OneSymbolMatches>
bool star_match(std::string_view pattern, std::string_view text, OneSymbolMatches matches) {
  size_t p = 0;
  size_t t = 0;
  size_t star_p = std::string_view::npos;  // position after the last `*` in pattern
  size_t star_t = 0;                       // text position that `*` is currently extended to
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star_p = ++p;
      star_t = t;
    } else if (p < pattern.size() && matches(pattern[p], text[t])) {
      ++p;
      ++t;
    } else if (star_p != std::string_view::npos) {
      p = star_p;
      t = ++star_t;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace

bool valid_topic(std::string_view topic) {
  if (topic.empty()) return false;
  for (const char c : topic) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x20 || b == 0x7F) return false;
  }
  return true;
}

bool glob_match(std::string_view pattern, std::string_view text) {
  return star_match(pattern, text, [](char p, char t) { return p == '?' || p == t; });
}

bool glob_covers(std::string_view pattern, std::string_view subscription_pattern) {
  // Symbolic match: the subscription's `*` can only be absorbed by a `*` of pattern, its `?`
  // by a `?` (or a `*`), its literal bytes by the same literal or `?`. Sound: if this matches,
  // every expansion of the subscription matches pattern.
  return star_match(pattern, subscription_pattern, [](char p, char s) {
    if (s == '*') return false;
    if (p == '?') return true;
    return s != '?' && p == s;
  });
}

bool globs_intersect(std::string_view a, std::string_view b) {
  // Emptiness of the product automaton: state (i, j) = positions in a and b. A `*` may be left
  // (epsilon) or consume a byte and stay; `?` and literals consume one byte. Two literals must
  // agree; anything else can share a byte (the alphabet has more than two symbols).
  const size_t width = b.size() + 1;
  std::vector<uint8_t> seen((a.size() + 1) * width, 0);
  std::vector<uint32_t> stack;
  auto push = [&](size_t i, size_t j) {
    uint8_t& s = seen[i * width + j];
    if (s == 0) {
      s = 1;
      stack.push_back(static_cast<uint32_t>(i * width + j));
    }
  };
  push(0, 0);
  while (!stack.empty()) {
    const size_t state = stack.back();
    stack.pop_back();
    const size_t i = state / width;
    const size_t j = state % width;
    if (i == a.size() && j == b.size()) return true;
    if (i < a.size() && a[i] == '*') push(i + 1, j);
    if (j < b.size() && b[j] == '*') push(i, j + 1);
    if (i == a.size() || j == b.size()) continue;
    const char ca = a[i];
    const char cb = b[j];
    if (ca == '*' && cb == '*') continue;  // consuming a byte on both stars loops in place
    const bool literal_a = ca != '*' && ca != '?';
    const bool literal_b = cb != '*' && cb != '?';
    if (literal_a && literal_b && ca != cb) continue;
    push(ca == '*' ? i : i + 1, cb == '*' ? j : j + 1);
  }
  return false;
}

bool topic_acl::allows_topic(std::string_view topic) const {
  if (!valid_topic(topic)) return false;
  for (const std::string& d : deny) {
    if (glob_match(d, topic)) return false;
  }
  if (allow.empty()) return true;
  for (const std::string& a : allow) {
    if (glob_match(a, topic)) return true;
  }
  return false;
}

bool topic_acl::allows_subscription(std::string_view pattern) const {
  if (!has_wildcard(pattern)) return allows_topic(pattern);
  if (!valid_topic(pattern)) return false;
  for (const std::string& d : deny) {
    if (globs_intersect(d, pattern)) return false;
  }
  if (allow.empty()) return true;
  for (const std::string& a : allow) {
    if (glob_covers(a, pattern)) return true;
  }
  return false;
}

bool topic_acl::allows_publish(std::string_view topic) const {
  if (!valid_topic(topic) || has_wildcard(topic)) return false;
  for (const std::string& d : deny) {
    if (glob_match(d, topic)) return false;
  }
  for (const std::string& p : publish) {
    if (glob_match(p, topic)) return true;
  }
  return false;
}

}  // namespace wsed::auth
