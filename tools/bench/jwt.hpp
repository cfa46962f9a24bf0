// tools/bench/jwt.hpp: JWT minting for wse-bench: HS256 tokens with the reference bench client's
// claims (sub, iss = aud = "wse-bench", iat, exp = iat + 1 h), base64url without padding.
//
// Owns: nothing (pure functions over byte spans; HMAC-SHA256 from OpenSSL). Thread: any.
// Must never read a clock (time is a parameter) or log a secret.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace wsed::bench {

// RFC 4648 section 5, no padding.
std::string base64url(std::span<const uint8_t> bytes);
inline std::string base64url(std::string_view text) {
  return base64url(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

// RFC 4648 section 4, with padding (Sec-WebSocket-Key).
std::string base64(std::span<const uint8_t> bytes);

// The claims object of the reference bench client, as compact JSON.
std::string bench_claims(std::string_view sub, int64_t now_s, int64_t ttl_s = 3600);

// header.payload.signature with header {"alg":"HS256","typ":"JWT"} and claims_json as payload.
std::string mint_hs256(std::string_view secret, std::string_view claims_json);

}  // namespace wsed::bench
