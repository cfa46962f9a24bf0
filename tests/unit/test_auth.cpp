// tests/unit/test_auth.cpp: auth/: JWT verification (RFC 7515 appendix A.1 and A.3 vectors, every
// rejection reason, key rotation), minting, the topic ACL and its globs, token extraction from
// the upgrade request, the query-string parser and key loading. Keys are generated at run time
// (never committed).
// Owns: temporary key files it creates and removes. Thread: the test runner. Never depends on
// the order tests run in, never reads the clock (every verify gets a fixed now).
#include <doctest/doctest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "auth/acl.hpp"
#include "auth/jwt.hpp"
#include "auth/keys.hpp"
#include "auth/token_source.hpp"

using namespace wsed::auth;

namespace {

constexpr int64_t now = 1'700'000'000;
const std::string secret_a(40, 'a');  // 40 bytes: above the 32-byte minimum
const std::string secret_b = "0123456789abcdef0123456789abcdef-b";

std::string b64(std::string_view s) {
  return base64url_encode(s);
}

std::string unb64(std::string_view s) {
  std::string out(base64url_decoded_bytes(s.size()), '\0');
  const ptrdiff_t n = base64url_decode(s, out.data());
  REQUIRE(n >= 0);
  out.resize(static_cast<size_t>(n));
  return out;
}

// An HS token with any header (mint() always writes a well-formed one).
std::string sign_hs(std::string_view header_json, std::string_view claims_json,
                    std::string_view secret, const char* digest = "SHA256") {
  std::string input = b64(header_json) + "." + b64(claims_json);
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t mac_bytes = 0;
  REQUIRE(EVP_Q_mac(nullptr, "HMAC", nullptr, digest, nullptr, secret.data(), secret.size(),
                    reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac,
                    sizeof mac, &mac_bytes) != nullptr);
  return input + "." + b64(std::string_view(reinterpret_cast<char*>(mac), mac_bytes));
}

std::string hs256(std::string_view claims_json, std::string_view secret = secret_a) {
  return sign_hs(R"({"alg":"HS256","typ":"JWT"})", claims_json, secret);
}

std::shared_ptr<const verifier> build_ok(const verifier_config& config) {
  auto v = verifier::build(config);
  REQUIRE_MESSAGE(v.has_value(), name_of(v.error()));
  return *v;
}

std::shared_ptr<const verifier> hs_verifier(std::string secret = secret_a) {
  verifier_config c;
  c.hmac_secret = std::move(secret);
  return build_ok(c);
}

std::string verdict(const verifier& v, std::string_view token, int64_t at = now) {
  auto r = v.verify(token, at);
  return r ? "ok:" + r->user_id : std::string(name_of(r.error()));
}

std::string pem_of(EVP_PKEY* key, bool private_key) {
  BIO* bio = BIO_new(BIO_s_mem());
  REQUIRE(bio != nullptr);
  const int ok = private_key
                     ? PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr)
                     : PEM_write_bio_PUBKEY(bio, key);
  REQUIRE(ok == 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  return pem;
}

struct key_pair {
  std::string public_pem;
  std::string private_pem;
};

key_pair make_keys(EVP_PKEY* key) {
  REQUIRE(key != nullptr);
  key_pair pair{pem_of(key, false), pem_of(key, true)};
  EVP_PKEY_free(key);
  return pair;
}

const key_pair& rsa_keys() {
  static const key_pair keys = make_keys(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
  return keys;
}

const key_pair& ec_keys() {
  static const key_pair keys = make_keys(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  return keys;
}

std::string claims(std::string_view sub = "alice", int64_t exp = now + 3600) {
  return R"({"sub":")" + std::string(sub) + R"(","exp":)" + std::to_string(exp) + "}";
}

// Replaces one character of part (0 header, 1 payload, 2 signature) with another valid one.
std::string tamper(std::string token, int part) {
  size_t start = 0;
  for (int i = 0; i < part; ++i) start = token.find('.', start) + 1;
  char& c = token[start + 1];
  c = c == 'A' ? 'B' : 'A';
  return token;
}

// The RFC 7515 appendix A payload: {"iss":"joe",\r\n "exp":1300819380,\r\n
// "http://example.com/is_root":true} (no sub: a verified token ends at missing_sub).
constexpr std::string_view rfc_payload =
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ";
constexpr int64_t rfc_exp = 1300819380;

}  // namespace

TEST_SUITE("auth") {
  TEST_CASE("auth: base64url is strict and canonical") {
    CHECK(b64("") == "");
    CHECK(b64("f") == "Zg");
    CHECK(b64("fo") == "Zm8");
    CHECK(b64("foo") == "Zm9v");
    CHECK(b64("foobar") == "Zm9vYmFy");
    CHECK(b64("\xfb\xff\xbf") == "-_-_");
    CHECK(unb64("Zm9vYmE") == "fooba");
    CHECK(unb64("-_-_") == "\xfb\xff\xbf");
    char out[16];
    CHECK(base64url_decode("Zh", out) == -1);     // non-zero unused bits
    CHECK(base64url_decode("Zm9=", out) == -1);   // padding
    CHECK(base64url_decode("Zm9vY", out) == -1);  // length % 4 == 1
    CHECK(base64url_decode("Zm+v", out) == -1);   // standard alphabet
    CHECK(base64url_decode("Zm 9", out) == -1);
    CHECK(base64url_decode("Zm8", out) == 2);
  }

  TEST_CASE("auth: RFC 7515 A.1 HS256 vector") {
    const std::string token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." +
                              std::string(rfc_payload) +
                              ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const std::string key = unb64(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow");
    REQUIRE(key.size() == 64);
    const auto v = hs_verifier(key);
    // The signature verifies; the claims have no sub.
    CHECK(verdict(*v, token, rfc_exp - 1) == "missing_sub");
    CHECK(verdict(*v, token, rfc_exp + 29) == "missing_sub");  // within the 30 s leeway
    CHECK(verdict(*v, token, rfc_exp + 30) == "expired");
    CHECK(verdict(*v, token, now) == "expired");
    verifier_config strict;
    strict.hmac_secret = key;
    strict.leeway_s = 0;
    CHECK(verdict(*build_ok(strict), token, rfc_exp - 1) == "missing_sub");
    CHECK(verdict(*build_ok(strict), token, rfc_exp) == "expired");
    CHECK(verdict(*hs_verifier(secret_a), token, rfc_exp - 1) == "bad_signature");
    CHECK(verdict(*v, tamper(token, 2), rfc_exp - 1) == "bad_signature");
    CHECK(verdict(*v, tamper(token, 1), rfc_exp - 1) == "bad_signature");
  }

  TEST_CASE("auth: RFC 7515 A.3 ES256 vector") {
    // The JWK's x and y, as an uncompressed point.
    const std::string point = std::string("\x04") +
                              unb64("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU") +
                              unb64("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0");
    OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
    REQUIRE(OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) == 1);
    REQUIRE(OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                             point.size()) == 1);
    OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
    EVP_PKEY* key = nullptr;
    REQUIRE(EVP_PKEY_fromdata_init(ctx) == 1);
    REQUIRE(EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) == 1);
    verifier_config c;
    c.alg = jwt_alg::es256;
    c.public_key_pem = pem_of(key, false);
    EVP_PKEY_free(key);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    const auto v = build_ok(c);
    const std::string token =
        "eyJhbGciOiJFUzI1NiJ9." + std::string(rfc_payload) +
        ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    CHECK(verdict(*v, token, rfc_exp - 100) == "missing_sub");
    CHECK(verdict(*v, token, rfc_exp + 30) == "expired");
    CHECK(verdict(*v, tamper(token, 2), rfc_exp - 100) == "bad_signature");
    CHECK(verdict(*v, tamper(token, 1), rfc_exp - 100) == "bad_signature");
    // A 63-byte signature (one byte short) is refused before OpenSSL sees it.
    CHECK(verdict(*v, token.substr(0, token.size() - 2), rfc_exp - 100) == "bad_signature");
  }

  TEST_CASE("auth: HS256/384/512 mint and verify round trip") {
    for (jwt_alg alg : {jwt_alg::hs256, jwt_alg::hs384, jwt_alg::hs512}) {
      CAPTURE(name_of(alg));
      verifier_config c;
      c.alg = alg;
      c.hmac_secret = secret_a;
      const auto v = build_ok(c);
      auto token = mint(alg, secret_a, claims("u-42", now + 60));
      REQUIRE(token.has_value());
      auto r = v->verify(*token, now);
      REQUIRE(r.has_value());
      CHECK(r->user_id == "u-42");
      CHECK(r->expires_at_s == now + 60);
      CHECK(r->acl.unrestricted());
      // The signature part's length is the digest's.
      const size_t sig_chars = token->size() - token->rfind('.') - 1;
      CHECK(sig_chars == (alg == jwt_alg::hs256 ? 43u : alg == jwt_alg::hs384 ? 64u : 86u));
    }
    // An HS384 token on an HS256 verifier.
    CHECK(verdict(*hs_verifier(), *mint(jwt_alg::hs384, secret_a, claims())) == "alg_mismatch");
    CHECK(!mint(jwt_alg::hs256, "short", claims()).has_value());
    CHECK(mint(jwt_alg::hs256, "short", claims()).error() == mint_error::secret_too_short);
    CHECK(mint(jwt_alg::hs256, secret_a, "[1]").error() == mint_error::bad_claims);
    CHECK(mint(jwt_alg::hs256, secret_a, "{").error() == mint_error::bad_claims);
  }

  TEST_CASE("auth: RS256 and ES256 with generated keys") {
    verifier_config rs;
    rs.alg = jwt_alg::rs256;
    rs.public_key_pem = rsa_keys().public_pem;
    const auto rsv = build_ok(rs);
    auto rtoken = mint(jwt_alg::rs256, rsa_keys().private_pem, claims("bob"), "k1");
    REQUIRE(rtoken.has_value());
    CHECK(verdict(*rsv, *rtoken) == "ok:bob");
    CHECK(rtoken->size() - rtoken->rfind('.') - 1 == 342u);  // 256 bytes
    CHECK(verdict(*rsv, tamper(*rtoken, 2)) == "bad_signature");
    CHECK(verdict(*rsv, tamper(*rtoken, 1)) == "bad_signature");

    verifier_config es;
    es.alg = jwt_alg::es256;
    es.public_key_pem = ec_keys().public_pem;
    const auto esv = build_ok(es);
    auto etoken = mint(jwt_alg::es256, ec_keys().private_pem, claims("carol"));
    REQUIRE(etoken.has_value());
    CHECK(etoken->size() - etoken->rfind('.') - 1 == 86u);  // 64 bytes R || S, not DER
    CHECK(verdict(*esv, *etoken) == "ok:carol");
    CHECK(verdict(*esv, tamper(*etoken, 2)) == "bad_signature");
    CHECK(verdict(*esv, tamper(*etoken, 0)) != "ok:carol");

    // Wrong key type for the algorithm, at mint and at build.
    CHECK(mint(jwt_alg::es256, rsa_keys().private_pem, claims()).error() == mint_error::bad_key);
    CHECK(mint(jwt_alg::rs256, "not a pem", claims()).error() == mint_error::bad_key);
    verifier_config mismatch = es;
    mismatch.public_key_pem = rsa_keys().public_pem;
    CHECK(verifier::build(mismatch).error() == config_error::key_type_mismatch);
    // An RS256 token on the ES256 verifier.
    CHECK(verdict(*esv, *rtoken) == "alg_mismatch");
  }

  TEST_CASE("auth: alg none and key confusion are refused") {
    const auto v = hs_verifier();
    const std::string body = b64(claims());
    CHECK(verdict(*v, b64(R"({"alg":"none"})") + "." + body + ".x") == "alg_none");
    CHECK(verdict(*v, b64(R"({"alg":"NoNe"})") + "." + body + ".x") == "alg_none");
    CHECK(verdict(*v, b64(R"({"alg":"none"})") + "." + body + ".") == "malformed");
    CHECK(verdict(*v, b64(R"({"alg":"hs256"})") + "." + body + ".x") == "alg_mismatch");
    // HS256 signed with the RSA public key PEM as the HMAC secret, sent to an RS256 verifier.
    verifier_config rs;
    rs.alg = jwt_alg::rs256;
    rs.public_key_pem = rsa_keys().public_pem;
    const std::string forged = hs256(claims(), rsa_keys().public_pem);
    CHECK(verdict(*build_ok(rs), forged) == "alg_mismatch");
  }

  TEST_CASE("auth: structure, size and base64url") {
    const auto v = hs_verifier();
    const std::string good = hs256(claims());
    CHECK(verdict(*v, good) == "ok:alice");
    CHECK(verdict(*v, "") == "malformed");
    CHECK(verdict(*v, "abc") == "malformed");
    CHECK(verdict(*v, "a.b") == "malformed");
    CHECK(verdict(*v, good + ".x") == "malformed");
    CHECK(verdict(*v, std::string(".") + b64(claims()) + ".x") == "malformed");
    CHECK(verdict(*v, b64("not json") + "." + b64(claims()) + ".x") == "malformed");
    CHECK(verdict(*v, b64(R"(["alg","HS256"])") + "." + b64(claims()) + ".x") == "malformed");
    CHECK(verdict(*v, b64(R"({"typ":"JWT"})") + "." + b64(claims()) + ".x") == "malformed");
    CHECK(verdict(*v, b64(R"({"alg":256})") + "." + b64(claims()) + ".x") == "malformed");
    CHECK(verdict(*v, sign_hs(R"({"alg":"HS256","alg":"none"})", claims(), secret_a)) ==
          "malformed");
    CHECK(verdict(*v, "eyJ*bGciOiJIUzI1NiJ9." + b64(claims()) + ".x") == "bad_base64url");
    CHECK(verdict(*v, good.substr(0, good.rfind('.')) + ".ab=c") == "bad_base64url");
    // Bad payload base64url under a valid signature (the signature is checked first).
    {
      const std::string header = b64(R"({"alg":"HS256"})");
      const std::string input = header + ".e30=";  // padded "{}"
      unsigned char mac[32];
      size_t n = 0;
      EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, secret_a.data(), secret_a.size(),
                reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, sizeof mac,
                &n);
      CHECK(verdict(*v, input + "." + b64(std::string_view(reinterpret_cast<char*>(mac), n))) ==
            "bad_base64url");
    }
    // Exactly token_bytes_max is fine; one more byte is too long. Payload lengths skip some
    // sizes, so the kid is lengthened until one lands exactly.
    std::string big;
    for (std::string kid = "k"; big.size() != token_bytes_max; kid += 'k') {
      for (std::string pad; big.size() < token_bytes_max; pad += 'x') {
        big = sign_hs(
            R"({"alg":"HS256","kid":")" + kid + R"("})",
            R"({"sub":"alice","exp":)" + std::to_string(now + 60) + R"(,"pad":")" + pad + R"("})",
            secret_a);
        if (big.size() == token_bytes_max) break;
      }
      if (big.size() != token_bytes_max) big.clear();
    }
    CHECK(verdict(*v, big) == "ok:alice");
    CHECK(verdict(*v, big + "A") == "too_long");
    CHECK(verdict(*v, std::string(token_bytes_max + 1, 'a')) == "too_long");
  }

  TEST_CASE("auth: tampering with header, payload or signature") {
    const auto v = hs_verifier();
    const std::string good = hs256(claims());
    CHECK(verdict(*v, tamper(good, 0)) != "ok:alice");
    CHECK(verdict(*v, tamper(good, 1)) == "bad_signature");
    CHECK(verdict(*v, tamper(good, 2)) == "bad_signature");
    // A header re-encoded with a different (valid) content keeps the old signature.
    const std::string reheadered =
        b64(R"({"alg":"HS256","typ":"jwt"})") + good.substr(good.find('.'));
    CHECK(verdict(*v, reheadered) == "bad_signature");
    // Truncated signature, empty signature, signature of another secret.
    CHECK(verdict(*v, good.substr(0, good.size() - 3)) == "bad_signature");
    CHECK(verdict(*v, hs256(claims(), secret_b)) == "bad_signature");
  }

  TEST_CASE("auth: exp, nbf and leeway") {
    const auto v = hs_verifier();
    CHECK(verdict(*v, hs256(R"({"sub":"a"})")) == "missing_exp");
    CHECK(verdict(*v, hs256(claims("a", now))) == "ok:a");  // leeway 30 s
    CHECK(verdict(*v, hs256(claims("a", now - 29))) == "ok:a");
    CHECK(verdict(*v, hs256(claims("a", now - 30))) == "expired");
    CHECK(verdict(*v, hs256(claims("a", now - 100000))) == "expired");
    verifier_config strict;
    strict.hmac_secret = secret_a;
    strict.leeway_s = 0;
    const auto s = build_ok(strict);
    CHECK(verdict(*s, hs256(claims("a", now + 1))) == "ok:a");
    CHECK(verdict(*s, hs256(claims("a", now))) == "expired");
    // Fractional and huge NumericDates.
    CHECK(verdict(*s, hs256(R"({"sub":"a","exp":1700000000.9})")) == "expired");
    CHECK(verdict(*s, hs256(R"({"sub":"a","exp":1700000001.5})")) == "ok:a");
    CHECK(verdict(*s, hs256(R"({"sub":"a","exp":18446744073709551615})")) == "ok:a");
    CHECK(verdict(*s, hs256(R"({"sub":"a","exp":1e300})")) == "ok:a");
    CHECK(verdict(*s, hs256(R"({"sub":"a","exp":"1800000000"})")) == "bad_claims_json");
    CHECK(verdict(*s, hs256(R"({"sub":"a","exp":null})")) == "bad_claims_json");
    const std::string exp = R"(,"exp":)" + std::to_string(now + 60) + "}";
    CHECK(verdict(*s, hs256(R"({"sub":"a","nbf":)" + std::to_string(now) + exp)) == "ok:a");
    CHECK(verdict(*s, hs256(R"({"sub":"a","nbf":)" + std::to_string(now + 1) + exp)) ==
          "not_yet_valid");
    CHECK(verdict(*v, hs256(R"({"sub":"a","nbf":)" + std::to_string(now + 30) + exp)) == "ok:a");
    CHECK(verdict(*v, hs256(R"({"sub":"a","nbf":)" + std::to_string(now + 31) + exp)) ==
          "not_yet_valid");
    CHECK(verdict(*s, hs256(R"({"sub":"a","nbf":1700000000.2)" + exp)) == "not_yet_valid");
    CHECK(verdict(*s, hs256(R"({"sub":"a","nbf":true)" + exp)) == "bad_claims_json");
    // Duplicate registered claims are refused, not resolved.
    CHECK(verdict(*v, hs256(R"({"sub":"a","exp":1,"exp":)" + std::to_string(now + 60) + "}")) ==
          "bad_claims_json");
    CHECK(verdict(*v, hs256(R"({"sub":"a","sub":"root")" + exp)) == "bad_claims_json");
    CHECK(verdict(*v, hs256("[]")) == "bad_claims_json");
    CHECK(verdict(*v, hs256("{\"sub\":")) == "bad_claims_json");
  }

  TEST_CASE("auth: iss and aud when configured") {
    verifier_config c;
    c.hmac_secret = secret_a;
    c.issuer = "https://idp.example";
    c.audience = "wsed";
    const auto v = build_ok(c);
    const std::string exp = R"(,"exp":)" + std::to_string(now + 60) + "}";
    auto tok = [&](std::string_view middle) {
      return hs256("{\"sub\":\"a\"" + std::string(middle) + exp);
    };
    CHECK(verdict(*v, tok(R"(,"iss":"https://idp.example","aud":"wsed")")) == "ok:a");
    CHECK(verdict(*v, tok(R"(,"iss":"https://idp.example","aud":["x","wsed"])")) == "ok:a");
    CHECK(verdict(*v, tok(R"(,"iss":"https://idp.example","aud":["x",7])")) == "aud_mismatch");
    CHECK(verdict(*v, tok(R"(,"iss":"https://idp.example","aud":"wsed2")")) == "aud_mismatch");
    CHECK(verdict(*v, tok(R"(,"iss":"https://idp.example","aud":[])")) == "aud_mismatch");
    CHECK(verdict(*v, tok(R"(,"iss":"https://idp.example")")) == "aud_mismatch");
    CHECK(verdict(*v, tok(R"(,"iss":"https://evil.example","aud":"wsed")")) == "iss_mismatch");
    CHECK(verdict(*v, tok(R"(,"iss":["https://idp.example"],"aud":"wsed")")) == "iss_mismatch");
    CHECK(verdict(*v, tok(R"(,"aud":"wsed")")) == "iss_mismatch");
    // Not configured: not checked.
    CHECK(verdict(*hs_verifier(), tok(R"(,"iss":7,"aud":{"x":1})")) == "ok:a");
  }

  TEST_CASE("auth: sub must be a non-empty string") {
    const auto v = hs_verifier();
    const std::string exp = R"("exp":)" + std::to_string(now + 60) + "}";
    CHECK(verdict(*v, hs256(std::string("{") + exp)) == "missing_sub");
    CHECK(verdict(*v, hs256(R"({"sub":"",)" + exp)) == "missing_sub");
    CHECK(verdict(*v, hs256(R"({"sub":42,)" + exp)) == "missing_sub");
    CHECK(verdict(*v, hs256(R"({"sub":null,)" + exp)) == "missing_sub");
    CHECK(verdict(*v, hs256(R"({"sub":["a"],)" + exp)) == "missing_sub");
    CHECK(verdict(*v, hs256(R"({"sub":"user \"q\" \u00e9",)" + exp)) == "ok:user \"q\" \xc3\xa9");
  }

  TEST_CASE("auth: crit and kid") {
    const std::string body = claims();
    const auto v = hs_verifier();
    CHECK(verdict(*v, sign_hs(R"({"alg":"HS256","crit":["exp"],"exp":1})", body, secret_a)) ==
          "crit_present");
    CHECK(verdict(*v, sign_hs(R"({"alg":"HS256","crit":[]})", body, secret_a)) == "crit_present");
    // No kid configured: any kid, or none.
    CHECK(verdict(*v, sign_hs(R"({"alg":"HS256","kid":"k9"})", body, secret_a)) == "ok:alice");
    CHECK(verdict(*v, sign_hs(R"({"alg":"HS256","kid":7})", body, secret_a)) == "malformed");
    verifier_config c;
    c.hmac_secret = secret_a;
    c.kid = "2024-01";
    const auto k = build_ok(c);
    CHECK(verdict(*k, *mint(jwt_alg::hs256, secret_a, body, "2024-01")) == "ok:alice");
    CHECK(verdict(*k, *mint(jwt_alg::hs256, secret_a, body, "2023-12")) == "kid_mismatch");
    CHECK(verdict(*k, *mint(jwt_alg::hs256, secret_a, body)) == "kid_mismatch");
    CHECK(verdict(*k, sign_hs(R"({"alg":"HS256","kid":"2024-01"})", body, secret_b)) ==
          "bad_signature");
  }

  TEST_CASE("auth: secret length and rotation") {
    verifier_config c;
    c.hmac_secret = std::string(31, 's');
    CHECK(verifier::build(c).error() == config_error::secret_too_short);
    c.hmac_secret = std::string(32, 's');
    CHECK(verifier::build(c).has_value());
    c.hmac_secret_previous = std::string(31, 'p');
    CHECK(verifier::build(c).error() == config_error::previous_secret_too_short);
    for (jwt_alg alg : {jwt_alg::hs384, jwt_alg::hs512}) {
      verifier_config h;
      h.alg = alg;
      h.hmac_secret = "";
      CHECK(verifier::build(h).error() == config_error::secret_too_short);
    }

    verifier_config rotating;
    rotating.hmac_secret = secret_b;
    rotating.hmac_secret_previous = secret_a;
    const auto v = build_ok(rotating);
    CHECK(verdict(*v, hs256(claims("new"), secret_b)) == "ok:new");
    CHECK(verdict(*v, hs256(claims("old"), secret_a)) == "ok:old");
    CHECK(verdict(*v, hs256(claims("x"), std::string(40, 'z'))) == "bad_signature");
    // Without the previous secret, old tokens fail.
    CHECK(verdict(*hs_verifier(secret_b), hs256(claims("old"), secret_a)) == "bad_signature");
  }

  TEST_CASE("auth: public key configuration errors") {
    verifier_config c;
    c.alg = jwt_alg::rs256;
    CHECK(verifier::build(c).error() == config_error::missing_key);
    c.public_key_pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    CHECK(verifier::build(c).error() == config_error::bad_key);
    c.public_key_pem = rsa_keys().private_pem;  // a private key is not a public key PEM
    CHECK(verifier::build(c).error() == config_error::bad_key);
    c.public_key_pem = ec_keys().public_pem;
    CHECK(verifier::build(c).error() == config_error::key_type_mismatch);
    EVP_PKEY* small = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{1024});
    c.public_key_pem = pem_of(small, false);
    EVP_PKEY_free(small);
    CHECK(verifier::build(c).error() == config_error::rsa_key_too_small);
    EVP_PKEY* p384 = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
    c.alg = jwt_alg::es256;
    c.public_key_pem = pem_of(p384, false);
    CHECK(verifier::build(c).error() == config_error::key_type_mismatch);
    CHECK(check_public_key_pem(c.public_key_pem).error() == key_error::unsupported_key);
    EVP_PKEY_free(p384);
  }

  TEST_CASE("auth: names for metrics and protocol codes") {
    std::vector<std::string_view> names;
    for (size_t i = 0; i < verify_error_count; ++i) {
      names.push_back(name_of(static_cast<verify_error>(i)));
    }
    CHECK(names == std::vector<std::string_view>{
                       "no_token", "malformed", "bad_base64url", "too_long", "alg_mismatch",
                       "alg_none", "crit_present", "kid_mismatch", "bad_signature", "expired",
                       "not_yet_valid", "missing_exp", "iss_mismatch", "aud_mismatch",
                       "missing_sub", "bad_claims_json", "bad_acl"});
    CHECK(protocol_code_of(verify_error::no_token) == "AUTH_REQUIRED");
    CHECK(protocol_code_of(verify_error::expired) == "AUTH_FAILED");
    CHECK(protocol_code_of(verify_error::malformed) == "AUTH_FAILED");
    CHECK(auth_close_code == 4401);
    CHECK(name_of(jwt_alg::es256) == "ES256");
    CHECK(parse_alg("RS256") == jwt_alg::rs256);
    CHECK(!parse_alg("rs256").has_value());
    CHECK(!parse_alg("none").has_value());
    CHECK(name_of(config_error::secret_too_short) == "secret_too_short");
  }

  TEST_CASE("auth: glob matching") {
    CHECK(glob_match("*", ""));
    CHECK(glob_match("*", "anything"));
    CHECK(glob_match("chat.*", "chat."));
    CHECK(glob_match("chat.*", "chat.room.1"));
    CHECK(!glob_match("chat.*", "chat"));
    CHECK(glob_match("a?c", "abc"));
    CHECK(!glob_match("a?c", "ac"));
    CHECK(!glob_match("a?c", "abbc"));
    CHECK(glob_match("*.log.*", "x.log.y"));
    CHECK(glob_match("a*b*c", "aXXbYYbc"));
    CHECK(!glob_match("a*b*c", "aXXbYYb"));
    CHECK(glob_match("price", "price"));
    CHECK(!glob_match("price", "prices"));
    CHECK(!glob_match("", "x"));
    CHECK(glob_match("**?", "z"));

    CHECK(globs_intersect("chat.*", "*.secret"));  // "chat.secret"
    CHECK(!globs_intersect("chat.*", "news.*"));
    CHECK(globs_intersect("a?", "?b"));
    CHECK(!globs_intersect("a?", "???"));
    CHECK(globs_intersect("*", "x"));
    CHECK(!globs_intersect("abc", "abd"));

    CHECK(glob_covers("chat.*", "chat.room.*"));
    CHECK(glob_covers("chat.*", "chat.?"));
    CHECK(!glob_covers("chat.?", "chat.*"));  // chat.* also matches chat.ab
    CHECK(!glob_covers("chat.*", "*"));
    CHECK(glob_covers("*", "*"));
    CHECK(glob_covers("a?c", "a?c"));
    CHECK(!glob_covers("abc", "a?c"));
  }

  TEST_CASE("auth: topic ACL semantics") {
    topic_acl open;
    CHECK(open.unrestricted());
    CHECK(open.allows_topic("anything"));
    CHECK(!open.allows_topic(""));
    CHECK(!open.allows_topic("bad\ntopic"));
    CHECK(!open.allows_topic(std::string("nul\0x", 5)));
    CHECK(!open.allows_topic("del\x7f"));
    CHECK(open.allows_topic("caf\xc3\xa9"));
    CHECK(!open.allows_subscription("tab\t*"));

    topic_acl acl;
    acl.allow = {"chat.*", "price.?"};
    acl.deny = {"chat.admin*"};
    CHECK(acl.allows_topic("chat.lobby"));
    CHECK(!acl.allows_topic("chat.admin"));  // deny wins
    CHECK(!acl.allows_topic("chat.admins"));
    CHECK(acl.allows_topic("price.a"));
    CHECK(!acl.allows_topic("price.ab"));
    CHECK(!acl.allows_topic("news"));
    CHECK(acl.allows_subscription("chat.lobby"));
    CHECK(acl.allows_subscription("chat.room.*"));
    CHECK(!acl.allows_subscription("chat.*"));  // could receive chat.admin
    CHECK(!acl.allows_subscription("*"));
    CHECK(acl.allows_subscription("price.?"));
    CHECK(!acl.allows_subscription("price.*"));

    topic_acl deny_only;
    deny_only.deny = {"secret.*"};
    CHECK(deny_only.allows_topic("public"));
    CHECK(!deny_only.allows_topic("secret.x"));
    CHECK(deny_only.allows_subscription("public.*"));
    CHECK(!deny_only.allows_subscription("*"));
    CHECK(!deny_only.allows_subscription("s*"));
  }

  TEST_CASE("auth: wse_topics claim becomes the ACL") {
    const auto v = hs_verifier();
    const std::string exp = R"(,"exp":)" + std::to_string(now + 60) + "}";
    auto with = [&](std::string_view topics) {
      return v->verify(hs256(R"({"sub":"a","wse_topics":)" + std::string(topics) + exp), now);
    };
    auto r = with(R"({"allow":["chat.*","price.?"],"deny":["chat.admin"],"other":1})");
    REQUIRE(r.has_value());
    CHECK(r->acl.allow == std::vector<std::string>{"chat.*", "price.?"});
    CHECK(r->acl.deny == std::vector<std::string>{"chat.admin"});
    CHECK(!r->acl.allows_topic("chat.admin"));
    r = with(R"({"allow":[]})");
    REQUIRE(r.has_value());
    CHECK(r->acl.unrestricted());
    r = with(R"({"deny":["x"]})");
    REQUIRE(r.has_value());
    CHECK(r->acl.allow.empty());
    CHECK(r->acl.allows_topic("y"));
    CHECK(with("null").has_value());
    CHECK(with(R"(["chat.*"])").error() == verify_error::bad_acl);
    CHECK(with(R"({"allow":"chat.*"})").error() == verify_error::bad_acl);
    CHECK(with(R"({"allow":[1]})").error() == verify_error::bad_acl);
    CHECK(with(R"({"allow":[""]})").error() == verify_error::bad_acl);
    CHECK(with(R"({"deny":["a\nb"]})").error() == verify_error::bad_acl);
    CHECK(with(R"({"allow":["a"],"allow":["b"]})").error() == verify_error::bad_acl);
    CHECK(with("{\"allow\":[\"" + std::string(acl_glob_bytes_max + 1, 'g') + "\"]}").error() ==
          verify_error::bad_acl);
    std::string many = R"({"allow":[)";
    for (size_t i = 0; i <= acl_globs_max; ++i) many += (i ? ",\"t\"" : "\"t\"");
    CHECK(with(many + "]}").error() == verify_error::bad_acl);
  }

  TEST_CASE("auth: token from cookies") {
    const token_sources sources;
    auto from = [&](std::vector<std::string_view> cookies, std::string_view authorization = {},
                    std::string_view query = {}, const token_sources& s = token_sources{}) {
      return extract_token(cookies, authorization, query, s).value_or("<none>");
    };
    CHECK(from({"access_token=abc"}) == "abc");
    CHECK(from({"a=1; access_token=abc; b=2"}) == "abc");
    CHECK(from({"a=1;access_token=abc"}) == "abc");
    CHECK(from({"  access_token = abc  "}) == "abc");
    CHECK(from({"access_token=\"abc\""}) == "abc");
    CHECK(from({"access_token="}) == "<none>");
    CHECK(from({"access_token=undefined; access_token=null; access_token=real"}) == "real");
    CHECK(from({"access_token=undefined", "x=1; access_token=second"}) == "second");
    CHECK(from({"my_access_token=no; access_tokenx=no"}) == "<none>");
    CHECK(from({"access_token"}) == "<none>");
    CHECK(from({"access_token=a=b"}) == "a=b");
    CHECK(from({}) == "<none>");
    token_sources named;
    named.cookie_name = "jwt";
    CHECK(from({"access_token=x; jwt=y"}, {}, {}, named) == "y");
    // Cookie first, then bearer.
    CHECK(from({"access_token=cookie"}, "Bearer header") == "cookie");
    CHECK(from({"access_token=null"}, "Bearer header") == "header");
    (void)sources;
  }

  TEST_CASE("auth: token from Authorization and query") {
    auto from = [&](std::string_view authorization, std::string_view query = {},
                    query_token q = query_token::refused) {
      token_sources s;
      s.query = q;
      return extract_token({}, authorization, query, s).value_or("<none>");
    };
    CHECK(from("Bearer abc.def.ghi") == "abc.def.ghi");
    CHECK(from("bearer abc") == "abc");
    CHECK(from("BEARER   abc  ") == "abc");
    CHECK(from("Bearer\tabc") == "abc");
    CHECK(from("Bearer") == "<none>");
    CHECK(from("Bearer ") == "<none>");
    CHECK(from("Bearer undefined") == "<none>");
    CHECK(from("Bearerabc") == "<none>");
    CHECK(from("Basic YWxhZGRpbjpvcGVuc2VzYW1l") == "<none>");
    CHECK(from("") == "<none>");
    // Query only when allowed, percent-decoded, after the header.
    CHECK(from("", "token=abc") == "<none>");
    CHECK(from("", "token=abc", query_token::allowed) == "abc");
    CHECK(from("", "?format=json&token=a%2Eb%2ec", query_token::allowed) == "a.b.c");
    CHECK(from("", "token=&token=null&token=x", query_token::allowed) == "x");
    CHECK(from("", "tokens=abc", query_token::allowed) == "<none>");
    CHECK(from("", "%74oken=enc", query_token::allowed) == "enc");
    CHECK(from("Bearer hdr", "token=q", query_token::allowed) == "hdr");
  }

  TEST_CASE("auth: query-string parsing") {
    CHECK(percent_decode("a+b%20c%2Bd") == "a b c+d");
    CHECK(percent_decode("100%") == "100%");
    CHECK(percent_decode("%zz%4") == "%zz%4");
    CHECK(percent_decode("%e2%82%AC") == "\xe2\x82\xac");
    CHECK(percent_decode("%00") == std::string("\0", 1));
    const auto params = parse_query("?format=msgpack&&topics=a%2Cb&flag&x=1=2&=v");
    REQUIRE(params.size() == 5);
    CHECK(params[0].name == "format");
    CHECK(params[0].value == "msgpack");
    CHECK(params[1].name == "topics");
    CHECK(params[1].value == "a,b");
    CHECK(params[2].name == "flag");
    CHECK(params[2].value == "");
    CHECK(params[3].name == "x");
    CHECK(params[3].value == "1=2");
    CHECK(params[4].name == "");
    CHECK(params[4].value == "v");
    CHECK(parse_query("").empty());
    CHECK(parse_query("?").empty());
    CHECK(query_value("format=msgpack", "format") == "msgpack");
    CHECK(query_value("a=1&format=json&format=msgpack", "format") == "json");
    CHECK(query_value("xformat=msgpack", "format") == std::nullopt);
    CHECK(query_value("form%61t=msgpack", "format") == "msgpack");
    CHECK(query_value("format", "format") == "");
    CHECK(query_value("client_version=1.2+beta", "client_version") == "1.2 beta");
  }

  TEST_CASE("auth: loading secrets and keys") {
    char dir_template[] = "/tmp/wsed_auth_test_XXXXXX";
    REQUIRE(mkdtemp(dir_template) != nullptr);
    const std::string dir = dir_template;
    auto write = [&](const std::string& name, const std::string& bytes) {
      const std::string path = dir + "/" + name;
      std::FILE* f = std::fopen(path.c_str(), "wb");
      REQUIRE(f != nullptr);
      std::fwrite(bytes.data(), 1, bytes.size(), f);
      std::fclose(f);
      return path;
    };
    const std::string secret_path = write("secret", secret_b + "\n");
    CHECK(*load_hmac_secret_file(secret_path) == secret_b);
    CHECK(*load_hmac_secret_file(write("crlf", "abc\r\n")) == "abc");
    CHECK(*load_hmac_secret_file(write("two", "abc\n\n")) == "abc\n");  // one newline only
    CHECK(*load_hmac_secret_file(write("none", "abc")) == "abc");
    CHECK(load_hmac_secret_file(write("empty", "\n")).error() == key_error::empty);
    CHECK(load_hmac_secret_file(dir + "/missing").error() == key_error::cannot_read);
    CHECK(load_hmac_secret_file(write("big", std::string(key_file_bytes_max + 1, 'k'))).error() ==
          key_error::too_large);
    CHECK(*load_public_key_file(write("rsa.pem", rsa_keys().public_pem)) == rsa_keys().public_pem);
    CHECK(*load_public_key_file(write("ec.pem", ec_keys().public_pem)) == ec_keys().public_pem);
    CHECK(load_public_key_file(write("junk.pem", "junk")).error() == key_error::bad_pem);
    CHECK(load_public_key_file(write("priv.pem", ec_keys().private_pem)).error() ==
          key_error::bad_pem);
    for (const char* name : {"secret", "crlf", "two", "none", "empty", "big", "rsa.pem", "ec.pem",
                             "junk.pem", "priv.pem"}) {
      std::remove((dir + "/" + name).c_str());
    }
    rmdir(dir.c_str());

    REQUIRE(setenv("WSED_AUTH_TEST_SECRET", (secret_a + "\n").c_str(), 1) == 0);
    CHECK(*load_env("WSED_AUTH_TEST_SECRET") == secret_a);
    unsetenv("WSED_AUTH_TEST_SECRET");
    CHECK(load_env("WSED_AUTH_TEST_SECRET").error() == key_error::env_missing);
    CHECK(name_of(key_error::bad_pem) == "bad_pem");
  }

}  // TEST_SUITE("auth")
