// proto/wse_json_scan.hpp: internal to proto/ (wse_envelope.cpp, wse_publish.cpp): a small
// scanner over JSON text that simdjson has already validated, to find the exact bytes of a value
// (the DOM keeps no source offsets), and the padded simdjson parse both parsers share.
//
// Owns: nothing but the simdjson parser and padded copy of a wse_json_document. Thread: the
// owner of that document. Must never be used on text simdjson has not accepted: the scanner
// trusts the structure (it stops at the end of the text, never reads past it).
#pragma once

#include <simdjson.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <string>
#include <string_view>

#include "proto/wse_envelope.hpp"
#include "proto/wse_error.hpp"

namespace wsed::proto::json_scan {

inline bool is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

inline size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

// s[i] is '"'; returns the index after the closing quote.
inline size_t skip_string(std::string_view s, size_t i) {
  for (++i; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return s.size();
}

// Skips one value starting at s[i] (no leading space).
inline size_t skip_value(std::string_view s, size_t i) {
  if (i >= s.size()) return i;
  if (s[i] == '"') return skip_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    size_t depth = 0;
    while (i < s.size()) {
      const char ch = s[i];
      if (ch == '"') {
        i = skip_string(s, i);
        continue;
      }
      if (ch == '{' || ch == '[') {
        ++depth;
      } else if ((ch == '}' || ch == ']') && --depth == 0) {
        return i + 1;
      }
      ++i;
    }
    return i;
  }
  while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && !is_space(s[i])) ++i;
  return i;
}

// The exact text of the value of the index-th member of a validated object (leading space
// allowed); empty when there are fewer members.
inline std::string_view member_value(std::string_view object, size_t index) {
  size_t i = skip_space(object, 0) + 1;  // past '{'
  for (size_t member = 0; i < object.size(); ++member) {
    i = skip_space(object, i);
    if (i >= object.size() || object[i] != '"') return {};  // '}': no more members
    i = skip_string(object, i);                             // key
    i = skip_space(object, i) + 1;                          // past ':'
    i = skip_space(object, i);
    const size_t begin = i;
    i = skip_value(object, i);
    if (member == index) return object.substr(begin, i - begin);
    i = skip_space(object, i) + 1;  // past ','
  }
  return {};
}

// Walks the elements of a validated array's text: next() returns the exact text of each
// element in order, then empty.
class array_cursor {
 public:
  explicit array_cursor(std::string_view array) : text_(array), i_(skip_space(array, 0) + 1) {}
  std::string_view next() {
    i_ = skip_space(text_, i_);
    if (i_ >= text_.size() || text_[i_] == ']') return {};
    const size_t begin = i_;
    i_ = skip_value(text_, i_);
    const std::string_view element = text_.substr(begin, i_ - begin);
    i_ = skip_space(text_, i_);
    if (i_ < text_.size() && text_[i_] == ',') ++i_;
    return element;
  }

 private:
  std::string_view text_;
  size_t i_;
};

// One simdjson DOM parser (depth wse_json_depth_max) and a padded copy buffer; grows to the
// largest text seen, then stays.
struct document {
  simdjson::dom::parser parser;
  std::string padded;  // copy of a text that came without padding

  document() {
    // Depth includes the top level. Startup only: may throw.
    if (parser.allocate(4096, wse_json_depth_max)) throw std::bad_alloc();
    padded.resize(4096 + simdjson::SIMDJSON_PADDING);
  }

  // Parses json (in place or from the padded copy) into root.
  wse_error parse(std::string_view json, wse_input_padding padding, simdjson::dom::element& root) {
    const char* bytes = json.data();
    if (padding == wse_input_padding::none) {
      if (padded.size() < json.size() + simdjson::SIMDJSON_PADDING) {
        padded.resize(json.size() + simdjson::SIMDJSON_PADDING);
      }
      if (!json.empty()) std::memcpy(padded.data(), json.data(), json.size());
      bytes = padded.data();
    }
    const auto error = parser.parse(bytes, json.size(), false).get(root);
    if (error == simdjson::DEPTH_ERROR) return wse_error::too_deep;
    if (error) return wse_error::malformed_json;
    return wse_error::none;
  }
};

}  // namespace wsed::proto::json_scan
