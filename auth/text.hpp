// auth/text.hpp: ASCII text helpers shared by the auth/ sources (auth/ depends on nothing of
// ours, so it keeps its own). Pure; any thread.
#pragma once

#include <string_view>

namespace wsed::auth {

// ASCII case-insensitive equality (HTTP auth schemes, JOSE "none").
inline bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

}  // namespace wsed::auth
