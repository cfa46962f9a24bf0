// tests/fuzz/fuzz_jwt.cpp: libFuzzer target for the JWT verifier (auth/jwt) and its base64url
// codec. Every input is used three ways:
//   1. as a compact token, verified by HS256 and HS512 verifiers (one with issuer, audience and
//      kid set): verify never crashes, and a token it accepts must carry a non-empty sub;
//   2. as claims JSON, minted into an HS256 token and verified: minting succeeds exactly when
//      the input is a JSON object, and the token it makes never fails on its structure,
//      base64url or signature (only a claim check may refuse it); the same token with one
//      signature character changed is always refused;
//   3. as bytes for base64url: decode(encode(x)) == x, and a text that decodes re-encodes to
//      itself (one encoding per value).
// Properties beyond "no crash" are checked with abort(), so libFuzzer reports them. Built by
// tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "auth/jwt.hpp"
#include "proto/wse_json_scan.hpp"

using namespace wsed::auth;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

constexpr int64_t now_s = 1800000000;  // a fixed clock: runs are reproducible

std::shared_ptr<const verifier> make(jwt_alg alg, bool strict) {
  verifier_config config;
  config.alg = alg;
  config.hmac_secret = std::string(64, 'k');
  config.hmac_secret_previous = std::string(48, 'p');
  if (strict) {
    config.issuer = "wsed-issuer";
    config.audience = "wsed-audience";
    config.kid = "key-1";
  }
  auto built = verifier::build(config);
  require(built.has_value());
  return *built;
}

bool structural(verify_error e) {
  return e == verify_error::malformed || e == verify_error::bad_base64url ||
         e == verify_error::too_long || e == verify_error::alg_mismatch ||
         e == verify_error::alg_none || e == verify_error::crit_present ||
         e == verify_error::kid_mismatch || e == verify_error::bad_signature;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto hs256 = make(jwt_alg::hs256, false);
  static const auto hs256_strict = make(jwt_alg::hs256, true);
  static const auto hs512 = make(jwt_alg::hs512, false);
  std::string_view input(reinterpret_cast<const char*>(data), size);

  // 1. The input as a token.
  for (const auto* v : {hs256.get(), hs256_strict.get(), hs512.get()}) {
    auto r = v->verify(input, now_s);
    if (r) require(!r->user_id.empty());
  }

  // 2. The input as claims, minted and verified.
  auto minted = mint(jwt_alg::hs256, std::string(64, 'k'), input);
  if (minted) {
    size_t start = wsed::proto::json_scan::skip_space(input, 0);
    require(start < input.size() && input[start] == '{');
    const std::string& token = *minted;
    auto r = hs256->verify(token, now_s);
    if (token.size() <= token_bytes_max) {
      require(r.has_value() || !structural(r.error()));
      std::string bent = token;
      char& last = bent.back();
      last = last == 'A' ? 'B' : 'A';
      require(!hs256->verify(bent, now_s).has_value());
    } else {
      require(!r.has_value() && r.error() == verify_error::too_long);
    }
  }

  // 3. base64url both ways.
  std::string encoded = base64url_encode(input);
  std::string decoded(base64url_decoded_bytes(encoded.size()), '\0');
  ptrdiff_t n = base64url_decode(encoded, decoded.data());
  require(n >= 0 && std::string_view(decoded.data(), size_t(n)) == input);
  std::string back(base64url_decoded_bytes(size), '\0');
  ptrdiff_t m = base64url_decode(input, back.data());
  if (m >= 0) require(base64url_encode(std::string_view(back.data(), size_t(m))) == input);
  return 0;
}
