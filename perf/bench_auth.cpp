// perf/bench_auth.cpp: Google Benchmark micro-benchmarks of auth/: JWT verification per
// algorithm (HS256 reference 10 us, goal <= 2 us; RS256; ES256) and token extraction from a
// typical browser Cookie header. Verify runs once per upgrade, on the shard's loop.
//
// Owns: keys generated at start (never written to disk). Thread: the benchmark's main thread.
// Never asserts behaviour (the unit tests do); it prints figures.
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <string>
#include <string_view>

#include "auth/jwt.hpp"
#include "auth/token_source.hpp"

using namespace wsed::auth;

namespace {

constexpr int64_t now = 1'700'000'000;

// A realistic access token's claims (about 250 bytes, with an ACL).
std::string typical_claims() {
  return R"({"sub":"user-1234567890","iss":"https://auth.example.com","aud":"wsed",)"
         R"("exp":1700003600,"iat":1700000000,"jti":"c0a8012e-5f3b-4c1d-9e2a-7b6f1d2c3e4f",)"
         R"("roles":["trader","viewer"],"wse_topics":{"allow":["prices.*","chat.?"],)"
         R"("deny":["prices.internal*"]}})";
}

std::string pem(EVP_PKEY* key, bool private_key) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (private_key) {
    PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  } else {
    PEM_write_bio_PUBKEY(bio, key);
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

void run_verify(benchmark::State& state, const verifier& v, const std::string& token) {
  if (!v.verify(token, now)) {
    state.SkipWithError("token does not verify");
    return;
  }
  for (auto _ : state) {
    auto r = v.verify(token, now);
    benchmark::DoNotOptimize(r);
  }
}

verifier_config base_config(jwt_alg alg) {
  verifier_config c;
  c.alg = alg;
  c.issuer = "https://auth.example.com";
  c.audience = "wsed";
  return c;
}

void BM_verify_hs256(benchmark::State& state) {
  const std::string secret(48, 's');
  verifier_config c = base_config(jwt_alg::hs256);
  c.hmac_secret = secret;
  const auto v = verifier::build(c);
  run_verify(state, **v, *mint(jwt_alg::hs256, secret, typical_claims()));
}
BENCHMARK(BM_verify_hs256);

void BM_verify_rs256(benchmark::State& state) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  verifier_config c = base_config(jwt_alg::rs256);
  c.public_key_pem = pem(key, false);
  const std::string token = *mint(jwt_alg::rs256, pem(key, true), typical_claims());
  EVP_PKEY_free(key);
  run_verify(state, **verifier::build(c), token);
}
BENCHMARK(BM_verify_rs256);

void BM_verify_es256(benchmark::State& state) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  verifier_config c = base_config(jwt_alg::es256);
  c.public_key_pem = pem(key, false);
  const std::string token = *mint(jwt_alg::es256, pem(key, true), typical_claims());
  EVP_PKEY_free(key);
  run_verify(state, **verifier::build(c), token);
}
BENCHMARK(BM_verify_es256);

// A browser's Cookie header: analytics cookies first, the token near the end.
void BM_extract_token_cookie(benchmark::State& state) {
  const std::string secret(48, 's');
  const std::string token = *mint(jwt_alg::hs256, secret, typical_claims());
  const std::string cookie =
      "_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; "
      "session_pref=dark; consent=\"necessary,analytics\"; access_token=" +
      token + "; csrftoken=abcdef0123456789";
  const std::string_view headers[] = {cookie};
  const token_sources sources;
  for (auto _ : state) {
    auto t = extract_token(headers, "", "format=msgpack", sources);
    benchmark::DoNotOptimize(t);
  }
}
BENCHMARK(BM_extract_token_cookie);

}  // namespace

BENCHMARK_MAIN();
