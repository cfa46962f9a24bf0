// auth/token_source.hpp: where the upgrade request carries its JWT (cookie, Authorization:
// Bearer, optionally a `token` query parameter), and the query-string parser the engine also
// uses for `format=msgpack`, `protocol_version`, ...
//
// Owns: nothing (functions over the caller's header values). Thread: the shard handling the
// upgrade. Pure: no I/O, no clock. Never looks at the query for a token unless the operator
// allowed it (URLs end up in access logs).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace wsed::auth {

enum class query_token : uint8_t {
  refused,  // default: a `token` query parameter is ignored
  allowed,  // operator flag: accepted after cookie and Authorization
};

struct token_sources {
  std::string_view cookie_name = "access_token";  // must outlive the call (config string)
  query_token query = query_token::refused;
};

// Placeholder values browsers' scripts write when they have no token; never a token.
bool is_placeholder_token(std::string_view value);

// The token to verify, in PROTOCOL.md order: the first usable cookie named sources.cookie_name
// over all Cookie headers (each a `;`-separated list of name=value, value optionally quoted), then
// `Authorization: Bearer <token>` (scheme case-insensitive), then the `token` query parameter
// (percent-decoded) when sources.query allows it. Empty, `undefined` and `null` values are
// skipped in every source. nullopt = no token (PROTOCOL error AUTH_REQUIRED).
std::optional<std::string> extract_token(std::span<const std::string_view> cookie_headers,
                                         std::string_view authorization, std::string_view query,
                                         const token_sources& sources);

// The value of the first cookie named name in one Cookie header value that is not a placeholder
// (not empty, `undefined` or `null`), with surrounding spaces and one pair of double quotes
// removed. No percent-decoding (cookie values are opaque). nullopt = none.
std::optional<std::string_view> find_cookie(std::string_view cookie_header, std::string_view name);

// The token of `Bearer <token>` (scheme case-insensitive, spaces/tabs around the token dropped);
// nullopt for another scheme, an empty or placeholder token.
std::optional<std::string_view> bearer_token(std::string_view authorization);

// application/x-www-form-urlencoded decoding: `+` is a space, %XX a byte; a `%` not followed by
// two hex digits is kept as is (WHATWG URL behaviour), so decoding never fails.
std::string percent_decode(std::string_view text);

struct query_param {
  std::string name;
  std::string value;  // empty when the pair had no `=`
};

// Splits a query string (with or without its leading `?`) on `&`, each pair on its first `=`,
// and percent-decodes both sides. Empty pairs (`a=1&&b=2`) are skipped. Order is kept.
std::vector<query_param> parse_query(std::string_view query);

// The decoded value of the first parameter whose decoded name is name; nullopt when absent.
std::optional<std::string> query_value(std::string_view query, std::string_view name);

}  // namespace wsed::auth
