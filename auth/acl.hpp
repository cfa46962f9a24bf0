// auth/acl.hpp: the topic ACL a token grants (claim
// `wse_topics: {"allow": [...], "deny": [...], "publish": [...]}`) and the glob matching it uses
// (`*` = any run of bytes, `?` = any one byte; no escapes).
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
inline constexpr size_t acl_globs_max = 256;       // allow + deny + publish together
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
  std::vector<std::string> allow;    // empty = every topic is allowed (unless denied)
  std::vector<std::string> deny;     // wins over allow and over publish
  std::vector<std::string> publish;  // topics a client may publish to; empty = none (off)

  // An exact topic (publish, or a subscription without wildcards). Control characters: false.
  bool allows_topic(std::string_view topic) const;
  // A subscription, which may be a glob: allowed when no deny glob can match any topic it
  // matches, and (allow not empty) some allow glob covers it. A pattern without `*`/`?` is
  // checked as an exact topic.
  bool allows_subscription(std::string_view pattern) const;
  // A client publication to topic: some publish glob matches it and no deny glob does (deny
  // wins; allow is not consulted). An empty publish list refuses everything, so publishing is
  // off unless the claim grants it. A topic with a control character, `*` or `?` (publishing
  // is to concrete topics) is refused.
  bool allows_publish(std::string_view topic) const;
  // Subscriptions and deliveries are not restricted. Says nothing about publishing (see
  // allows_publish): two ACLs that are both unrestricted may still differ in publish.
  bool unrestricted() const { return allow.empty() && deny.empty(); }
};

}  // namespace wsed::auth
