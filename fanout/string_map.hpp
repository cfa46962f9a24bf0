// fanout/string_map.hpp: a hash map (and set) keyed by std::string that is looked up by
// std::string_view without building a string (transparent hash and equality): topics, patterns and
// user ids arrive as views into frames and parsed messages.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

namespace wsed::fanout {

struct string_hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

template <class V>
using string_map = std::unordered_map<std::string, V, string_hash, std::equal_to<>>;
using string_set = std::unordered_set<std::string, string_hash, std::equal_to<>>;

}  // namespace wsed::fanout
