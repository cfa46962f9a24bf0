// auth/acl.hpp: the topic ACL a token grants (claim `wse_topics: {"allow": [...], "deny": [...]}`)
// and the glob matching it uses (`*` = any run of bytes, `?` = any one byte; no escapes).
//
// Owns: its glob lists (built once per connection, at upgrade). Thread: the shard that owns the
// connection; immutable once built, so it may also be read from any thread. Pure: no I/O, no
// clock, no allocation while matching. Never accepts a topic with a control character.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace wsed::auth {

// Limits on what a token may carry (a bigger claim is refused as bad_acl).
inline constexpr size_t acl_globs_max = 256;       // allow + deny together
inline constexpr size_t acl_glob_bytes_max = 256;  // one glob

// A topic or glob wsed accepts: not empty, no control character (bytes < 0x20 and 0x7F).
bool valid_topic(std::string_view topic);

// True when pattern (with `*` and `?`) matches all of text. Bytes, not code points: `?` is one
// byte. Linear-ish (greedy with one backtrack point), no recursion, no allocation.
bool glob_match(std::string_view pattern, std::string_view text);

// True when every topic that subscription_pattern matches is also matched by pattern
// (conservative: false when unsure). Used to check a glob subscription against an allow glob.
bool glob_covers(std::string_view pattern, std::string_view subscription_pattern);

// True when some topic is matched by both globs. Used to check a glob subscription against a
// deny glob: a subscription that could receive a denied topic is refused.
bool globs_intersect(std::string_view a, std::string_view b);

struct topic_acl {
  std::vector<std::string> allow;  // empty = every topic is allowed (unless denied)
  std::vector<std::string> deny;   // wins over allow

  // An exact topic (publish, or a subscription without wildcards). Control characters: false.
  bool allows_topic(std::string_view topic) const;
  // A subscription, which may be a glob: allowed when no deny glob can match any topic it
  // matches, and (allow not empty) some allow glob covers it. A pattern without `*`/`?` is
  // checked as an exact topic.
  bool allows_subscription(std::string_view pattern) const;
  bool unrestricted() const { return allow.empty() && deny.empty(); }
};

}  // namespace wsed::auth
