// tests/unit/test_e2e.cpp: auth/e2e: HMAC-SHA256 (RFC 4231 case 2), the message signature
// (checked against Python's hmac/hashlib), AES-256-GCM through e2e_cipher and the one-shot
// functions (each opens the other's output; a flipped bit, a short input or another key is
// refused; nonces never repeat), and the P-256 exchange from both sides (the same key; bad points
// refused).
// Owns: nothing. Thread: the test runner.
#include <doctest/doctest.h>

#include <cstring>
#include <set>
#include <string>

#include "auth/e2e.hpp"

using namespace wsed::auth;

namespace {

std::string hex(const unsigned char* p, size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

std::string_view view(const unsigned char* p, size_t n) {
  return {reinterpret_cast<const char*>(p), n};
}

}  // namespace

TEST_SUITE("e2e") {
  TEST_CASE("e2e: HMAC-SHA256 RFC 4231 case 2 and the message signature") {
    unsigned char mac[sha256_bytes];
    REQUIRE(hmac_sha256("Jefe", "what do ya want for nothing?", mac));
    CHECK(hex(mac, sizeof mac) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    char sig[signature_hex_chars];
    REQUIRE(sign_message(std::string(32, 'k'), "{\"n\":1}", sig));
    // python3: hmac.new(b'k'*32, hashlib.sha256(b'{"n":1}').hexdigest().encode(), 'sha256')
    CHECK(std::string(sig, sizeof sig) ==
          "ba03c8510494da8ef0bbc875037dff7e75312d33a24ca76c3c268748aca154ca");
  }

  TEST_CASE("e2e: e2e_cipher and the one-shot AES-256-GCM open each other's output") {
    unsigned char key[aes_key_bytes];
    for (size_t i = 0; i < sizeof key; ++i) key[i] = static_cast<unsigned char>(i * 7 + 1);
    auto cipher = e2e_cipher::with_key(key);
    REQUIRE(cipher);
    const std::string plain = "{\"t\":\"ping\",\"p\":{}}";
    std::string sealed = "E:";
    REQUIRE(cipher->seal(plain, sealed));
    REQUIRE(sealed.size() == 2 + plain.size() + gcm_overhead_bytes);
    std::string_view body = std::string_view(sealed).substr(2);
    std::string opened(plain.size(), '\0');
    REQUIRE(gcm_open(view(key, sizeof key), body, reinterpret_cast<unsigned char*>(opened.data())));
    CHECK(opened == plain);
    // Two seals of the same text differ (random nonces).
    std::string again;
    REQUIRE(cipher->seal(plain, again));
    CHECK(again != body);

    std::string one_shot(plain.size() + gcm_overhead_bytes, '\0');
    REQUIRE(
        gcm_seal(view(key, sizeof key), plain, reinterpret_cast<unsigned char*>(one_shot.data())));
    std::string out;
    REQUIRE(cipher->open(one_shot, out));
    CHECK(out == plain);
    // The empty plaintext: exactly the 28 bytes.
    std::string empty;
    REQUIRE(cipher->seal("", empty));
    CHECK(empty.size() == gcm_overhead_bytes);
    REQUIRE(cipher->open(empty, out));
    CHECK(out.empty());

    SUBCASE("nonces never repeat, across refills of the per-thread buffer") {
      std::set<std::string> seen;
      for (int i = 0; i < 1000; ++i) {  // about three refills (341 nonces each)
        std::string one;
        REQUIRE(cipher->seal("x", one));
        CHECK(seen.insert(one.substr(0, gcm_nonce_bytes)).second);
        REQUIRE(cipher->open(one, out));
        CHECK(out == "x");
      }
    }
    SUBCASE("a flipped bit anywhere is refused, the output cleared") {
      for (size_t i = 0; i < one_shot.size(); ++i) {
        std::string bad = one_shot;
        bad[i] = char(bad[i] ^ 0x01);
        out.assign(1, 'x');
        CHECK_FALSE(cipher->open(bad, out));
        CHECK(out.empty());
      }
    }
    SUBCASE("fewer than 28 bytes, or another key") {
      CHECK_FALSE(cipher->open(std::string(27, 'a'), out));
      unsigned char other[aes_key_bytes] = {};
      auto wrong = e2e_cipher::with_key(other);
      REQUIRE(wrong);
      CHECK_FALSE(wrong->open(one_shot, out));
      // The cipher still works after refusals.
      REQUIRE(cipher->open(one_shot, out));
      CHECK(out == plain);
    }
  }

  TEST_CASE("e2e: the P-256 exchange gives both sides one key") {
    unsigned char client_scalar[p256_scalar_bytes], client_point[p256_point_bytes];
    REQUIRE(ecdh_generate(client_scalar, client_point));
    unsigned char server_point[p256_point_bytes];
    auto server = e2e_cipher::accept(view(client_point, sizeof client_point), server_point);
    REQUIRE(server);
    CHECK(server_point[0] == 0x04);
    unsigned char key[aes_key_bytes];
    REQUIRE(ecdh_derive(client_scalar, view(server_point, sizeof server_point), key) ==
            ecdh_status::ok);
    std::string sealed(5 + gcm_overhead_bytes, '\0');
    REQUIRE(
        gcm_seal(view(key, sizeof key), "hello", reinterpret_cast<unsigned char*>(sealed.data())));
    std::string out;
    REQUIRE(server->open(sealed, out));
    CHECK(out == "hello");

    SUBCASE("points that are not uncompressed P-256 points are refused") {
      unsigned char point[p256_point_bytes];
      std::string off_curve(view(client_point, sizeof client_point));
      off_curve[64] = char(off_curve[64] ^ 0x01);
      CHECK_FALSE(e2e_cipher::accept(off_curve, point));
      CHECK_FALSE(e2e_cipher::accept(std::string(65, '\0'), point));
      CHECK_FALSE(e2e_cipher::accept(std::string_view(off_curve).substr(0, 64), point));
      std::string wrong_tag(view(client_point, sizeof client_point));
      wrong_tag[0] = 0x02;
      CHECK_FALSE(e2e_cipher::accept(wrong_tag, point));
    }
  }
}

TEST_CASE("e2e: base64 round trip and strict decoding") {
  std::string out;
  for (const std::string& s : {std::string(), std::string("a"), std::string("ab"),
                               std::string("abc"), std::string("abcd"), std::string(65, 4)}) {
    std::string text = base64_encode(s);
    CHECK(text.size() % 4 == 0);
    REQUIRE(base64_decode(text, out));
    CHECK(out == s);
  }
  CHECK(base64_encode("ab") == "YWI=");
  CHECK_FALSE(base64_decode("YWI", out));       // length
  CHECK_FALSE(base64_decode("YW-=", out));      // alphabet (base64url)
  CHECK_FALSE(base64_decode("Y===", out));      // padding
  CHECK_FALSE(base64_decode("YWI=YWI=", out));  // padding inside
}
