// tools/bench/jwt.cpp: HS256 minting and base64 for wse-bench (see jwt.hpp). base64url is
// auth's, JSON strings are escaped by proto's builder; only the signing is here, because the
// bench must also mint tokens with secrets the server would refuse (auth::mint checks length).
//
// Owns: nothing. Thread: any (OpenSSL's one-shot HMAC keeps no shared state). Must never read a
// clock or log a secret.
#include "tools/bench/jwt.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <string>

#include "auth/jwt.hpp"
#include "proto/wse_builder.hpp"

namespace wsed::bench {

std::string base64url(std::span<const uint8_t> bytes) {
  return auth::base64url_encode(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::string base64(std::span<const uint8_t> bytes) {
  std::string out((bytes.size() + 2) / 3 * 4 + 1, '\0');  // EVP_EncodeBlock writes a NUL
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes.data(),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string bench_claims(std::string_view sub, int64_t now_s, int64_t ttl_s) {
  std::string claims = "{\"sub\":";
  proto::wse_append_json_string(claims, sub);
  claims += ",\"iss\":\"wse-bench\",\"aud\":\"wse-bench\",\"iat\":" + std::to_string(now_s) +
            ",\"exp\":" + std::to_string(now_s + ttl_s) + "}";
  return claims;
}

std::string mint_hs256(std::string_view secret, std::string_view claims_json) {
  std::string signing_input = base64url(std::string_view("{\"alg\":\"HS256\",\"typ\":\"JWT\"}")) +
                              "." + base64url(claims_json);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_bytes = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size(), mac,
       &mac_bytes);
  return signing_input + "." + base64url(std::span<const uint8_t>(mac, mac_bytes));
}

}  // namespace wsed::bench
