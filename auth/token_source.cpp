// auth/token_source.cpp: token extraction and query-string parsing (see token_source.hpp).
//
// Owns: nothing. Thread: the shard handling the upgrade. Never reads anything but its arguments;
// allocates only the returned strings.
#include "auth/token_source.hpp"
#include "auth/text.hpp"

namespace wsed::auth {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Calls visit(name, value) for each `&`-separated, non-empty pair of a raw query string, still
// encoded; stops when visit returns true.
template <typename Visit>
void for_each_raw_pair(std::string_view query, Visit visit) {
  if (!query.empty() && query.front() == '?') query.remove_prefix(1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    const std::string_view name = pair.substr(0, eq);
    const std::string_view value =
        eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    if (visit(name, value)) return;
  }
}

}  // namespace

bool is_placeholder_token(std::string_view value) {
  return value.empty() || value == "undefined" || value == "null";
}

std::optional<std::string_view> find_cookie(std::string_view cookie_header, std::string_view name) {
  while (!cookie_header.empty()) {
    const size_t semi = cookie_header.find(';');
    const std::string_view pair = cookie_header.substr(0, semi);
    cookie_header =
        semi == std::string_view::npos ? std::string_view{} : cookie_header.substr(semi + 1);
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos) continue;
    if (trim(pair.substr(0, eq)) != name) continue;
    std::string_view value = trim(pair.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (!is_placeholder_token(value)) return value;
  }
  return std::nullopt;
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
  authorization = trim(authorization);
  constexpr std::string_view scheme = "bearer";
  if (authorization.size() <= scheme.size() ||
      !equals_ignore_case(authorization.substr(0, scheme.size()), scheme)) {
    return std::nullopt;
  }
  const char separator = authorization[scheme.size()];
  if (separator != ' ' && separator != '\t') return std::nullopt;  // e.g. "Bearerx"
  const std::string_view token = trim(authorization.substr(scheme.size()));
  if (is_placeholder_token(token)) return std::nullopt;
  return token;
}

std::string percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 &&
               hex_value(text[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(text[i + 1]) << 4 | hex_value(text[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::vector<query_param> parse_query(std::string_view query) {
  std::vector<query_param> params;
  for_each_raw_pair(query, [&](std::string_view name, std::string_view value) {
    params.push_back({percent_decode(name), percent_decode(value)});
    return false;
  });
  return params;
}

std::optional<std::string> query_value(std::string_view query, std::string_view name) {
  std::optional<std::string> found;
  for_each_raw_pair(query, [&](std::string_view raw_name, std::string_view raw_value) {
    // Most names carry no escape: compare raw first, decode only when it could differ.
    const bool encoded = raw_name.find_first_of("%+") != std::string_view::npos;
    if (encoded ? percent_decode(raw_name) != name : raw_name != name) return false;
    found = percent_decode(raw_value);
    return true;
  });
  return found;
}

std::optional<std::string> extract_token(std::span<const std::string_view> cookie_headers,
                                         std::string_view authorization, std::string_view query,
                                         const token_sources& sources) {
  for (const std::string_view header : cookie_headers) {
    if (auto value = find_cookie(header, sources.cookie_name)) return std::string(*value);
  }
  if (auto token = bearer_token(authorization)) return std::string(*token);
  if (sources.query == query_token::allowed) {
    std::optional<std::string> token;
    for_each_raw_pair(query, [&](std::string_view raw_name, std::string_view raw_value) {
      if (percent_decode(raw_name) != "token") return false;
      std::string value = percent_decode(raw_value);
      if (is_placeholder_token(value)) return false;  // a later `token=` may still be usable
      token = std::move(value);
      return true;
    });
    return token;
  }
  return std::nullopt;
}

}  // namespace wsed::auth
