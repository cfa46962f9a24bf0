// tools/bench/jwt.cpp: HS256 minting and base64 for wse-bench (see jwt.hpp).
//
// Owns: nothing. Thread: any (OpenSSL's one-shot HMAC keeps no shared state). Must never read a
// clock or log a secret.
#include "tools/bench/jwt.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <string>

namespace wsed::bench {

namespace {

std::string encode(std::span<const uint8_t> bytes, const char* alphabet, bool pad) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t n = static_cast<uint32_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= static_cast<uint32_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) n |= bytes[i + 2];
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    if (i + 1 < bytes.size()) {
      out += alphabet[(n >> 6) & 63];
    } else if (pad) {
      out += '=';
    }
    if (i + 2 < bytes.size()) {
      out += alphabet[n & 63];
    } else if (pad) {
      out += '=';
    }
  }
  return out;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(ch));
      out += esc;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

}  // namespace

std::string base64url(std::span<const uint8_t> bytes) {
  return encode(bytes, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", false);
}

std::string base64(std::span<const uint8_t> bytes) {
  return encode(bytes, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true);
}

std::string bench_claims(std::string_view sub, int64_t now_s, int64_t ttl_s) {
  return "{\"sub\":" + json_string(sub) +
         ",\"iss\":\"wse-bench\",\"aud\":\"wse-bench\",\"iat\":" + std::to_string(now_s) +
         ",\"exp\":" + std::to_string(now_s + ttl_s) + "}";
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
