// auth/jwt.hpp: JWT (JWS compact serialization) verification for the WebSocket upgrade, and
// minting for `wsed gen-token` and tests. Algorithms: HS256/384/512, RS256, ES256 (OpenSSL 3).
//
// Owns: the verifier's keys (EVP objects), immutable once built. Thread: any; verify() is const
// and safe to call from every shard at once on one shared verifier. Reload (SIGHUP) = build a new
// verifier and swap the std::shared_ptr<const verifier> the shards read; connections already
// authenticated keep what they were granted. The swap itself is the engine's business.
// Never reads a clock (now_s is a parameter), never does I/O, never throws from verify().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "auth/acl.hpp"

namespace wsed::auth {

// A value or an error (std::expected is C++23; this is the part of it we use).
template <typename T, typename E>
class result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  result(E error) : v_(std::in_place_index<1>, error) {}

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // Only when !has_value().
  E error() const { return std::get<1>(v_); }

 private:
  std::variant<T, E> v_;
};

enum class jwt_alg : uint8_t { hs256, hs384, hs512, rs256, es256 };

std::string_view name_of(jwt_alg alg);  // "HS256", ...
// The JOSE name, exactly (case-sensitive, as RFC 7518 spells it); nullopt when unknown.
std::optional<jwt_alg> parse_alg(std::string_view name);
constexpr bool is_hmac(jwt_alg alg) {
  return alg == jwt_alg::hs256 || alg == jwt_alg::hs384 || alg == jwt_alg::hs512;
}

inline constexpr size_t token_bytes_max = 8192;      // longer: too_long
inline constexpr size_t hmac_secret_bytes_min = 32;  // shorter: refused at build
inline constexpr int64_t leeway_default_s = 30;      // for exp and nbf
inline constexpr size_t rsa_key_bits_min = 2048;     // RFC 7518 3.3

// Why a token was refused. Stable names (name_of) are metrics labels: never rename one.
enum class verify_error : uint8_t {
  no_token,         // no token in the request (extract_token found none)
  malformed,        // not three base64url parts, or a header that is not the JSON we accept
  bad_base64url,    // a part is not canonical unpadded base64url
  too_long,         // over token_bytes_max
  alg_mismatch,     // header alg is not the configured one (includes HS token vs RSA/EC key)
  alg_none,         // header alg is "none" (any case)
  crit_present,     // header has crit: we implement no extension
  kid_mismatch,     // a kid is configured and the token's differs or is missing
  bad_signature,    // signature does not verify (with the current nor the previous secret)
  expired,          // now >= exp + leeway
  not_yet_valid,    // now + leeway < nbf
  missing_exp,      // no exp claim
  iss_mismatch,     // issuer configured and iss differs or is missing
  aud_mismatch,     // audience configured and aud (string or array) does not contain it
  missing_sub,      // sub missing, empty or not a string
  bad_claims_json,  // payload is not a JSON object, or exp/nbf are not numbers, duplicate claims
  bad_acl,          // wse_topics is not {"allow": [globs], "deny": [globs]} with valid globs
};
inline constexpr size_t verify_error_count = 17;

std::string_view name_of(verify_error error);  // "no_token", "malformed", ...
// The PROTOCOL.md error code sent before closing with 4401: no_token -> "AUTH_REQUIRED",
// anything else -> "AUTH_FAILED".
std::string_view protocol_code_of(verify_error error);
inline constexpr uint16_t auth_close_code = 4401;

// Why a verifier could not be built (startup / reload time).
enum class config_error : uint8_t {
  secret_too_short,           // HS*: secret under hmac_secret_bytes_min
  previous_secret_too_short,  // HS*: previous secret set but under hmac_secret_bytes_min
  missing_key,                // RS256/ES256: no public key PEM
  bad_key,                    // PEM does not parse as a public key
  key_type_mismatch,          // RSA key for ES256, EC key for RS256, EC curve not P-256
  rsa_key_too_small,          // under rsa_key_bits_min
  crypto_failure,             // OpenSSL could not set up a context (out of memory, provider)
};
std::string_view name_of(config_error error);

struct verifier_config {
  jwt_alg alg = jwt_alg::hs256;
  std::string hmac_secret;           // HS*: raw bytes, at least hmac_secret_bytes_min
  std::string hmac_secret_previous;  // HS*: optional (empty = none), tried after the current one
  std::string public_key_pem;        // RS256 (RSA) / ES256 (EC P-256): SubjectPublicKeyInfo PEM
  std::string kid;                   // empty = any kid (or none) accepted
  std::string issuer;                // empty = iss not checked
  std::string audience;              // empty = aud not checked
  int64_t leeway_s = leeway_default_s;
};

// What a valid token grants the connection.
struct identity {
  std::string user_id;       // the sub claim
  int64_t expires_at_s = 0;  // the exp claim (seconds since the epoch, floored)
  topic_acl acl;             // from wse_topics; unrestricted when the claim is absent
};

class verifier {
 public:
  // Checks the configuration (secret lengths, key type) and prepares the OpenSSL objects.
  static result<std::shared_ptr<const verifier>, config_error> build(const verifier_config& config);

  // Verifies a compact JWS at time now_s (seconds since the epoch). Checks, in order: length,
  // structure, header (alg, crit, kid), signature (constant-time compare for HMAC), then claims
  // (exp, nbf, iss, aud, sub, wse_topics). Claims are parsed only after the signature is good.
  result<identity, verify_error> verify(std::string_view token, int64_t now_s) const;

  jwt_alg alg() const { return alg_; }
  ~verifier();
  verifier(const verifier&) = delete;
  verifier& operator=(const verifier&) = delete;

 private:
  struct keys;  // OpenSSL handles (jwt.cpp)

  verifier() = default;
  bool signature_ok(std::string_view signing_input, std::string_view signature) const;

  jwt_alg alg_ = jwt_alg::hs256;
  std::string kid_;
  std::string issuer_;
  std::string audience_;
  int64_t leeway_s_ = leeway_default_s;
  std::unique_ptr<keys> keys_;
};

// Why mint failed.
enum class mint_error : uint8_t {
  secret_too_short,  // HS*: key under hmac_secret_bytes_min
  bad_key,           // RS256/ES256: key is not a private key PEM of the right type
  bad_claims,        // claims_json is not a JSON object
  crypto_failure,
};
std::string_view name_of(mint_error error);

// Signs claims_json (a JSON object, used verbatim) with alg. key = the raw HMAC secret for HS*,
// a private key PEM (PKCS#8 or traditional) for RS256/ES256. The header is
// {"alg":"<alg>","typ":"JWT"} plus "kid" when kid is not empty. For tools and tests, not the
// hot path.
result<std::string, mint_error> mint(jwt_alg alg, std::string_view key,
                                     std::string_view claims_json, std::string_view kid = {});

// Unpadded base64url (RFC 4648 section 5), as JWS uses it. Decoding is strict: no padding, no
// whitespace, length % 4 != 1, unused trailing bits must be zero (one encoding per value).
std::string base64url_encode(std::string_view bytes);
// Decodes into out (which must hold base64url_decoded_bytes(text.size()) bytes); returns the
// number of bytes written, or -1 when text is not canonical base64url.
ptrdiff_t base64url_decode(std::string_view text, char* out);
constexpr size_t base64url_decoded_bytes(size_t text_bytes) {
  return text_bytes / 4 * 3 + 2;
}

}  // namespace wsed::auth
