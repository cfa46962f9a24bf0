// auth/e2e.cpp: see e2e.hpp. The one-shot functions make a context per call (the Python
// helpers); e2e_cipher keeps its two keyed contexts for the connection's life (the engine).
#include "auth/e2e.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "auth/openssl.hpp"

namespace wsed::auth {

namespace {

using mac_ctx_ptr = ossl_ptr<EVP_MAC_CTX, EVP_MAC_CTX_free>;
using cipher_ctx_ptr = ossl_ptr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using pkey_ctx_ptr = ossl_ptr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using kdf_ctx_ptr = ossl_ptr<EVP_KDF_CTX, EVP_KDF_CTX_free>;
using bn_ptr = ossl_ptr<BIGNUM, BN_clear_free>;
using param_bld_ptr = ossl_ptr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using params_ptr = ossl_ptr<OSSL_PARAM, OSSL_PARAM_free>;

const unsigned char* uchars(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// Implementations fetched once for the process (never freed: they live as long as libcrypto).
EVP_MAC* hmac_impl() {
  static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}
EVP_MD* sha256_impl() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}
EVP_CIPHER* aes_gcm_impl() {
  static EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}
EVP_KDF* hkdf_impl() {
  static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  return kdf;
}

constexpr char hex_digits[] = "0123456789abcdef";

// Random nonces drawn from the DRBG in bulk: one RAND_bytes per 341 nonces instead of one each
// (RAND_bytes costs a global lock and a fork check per call). Bytes are used once, then the
// buffer is refilled; still 12 random bytes per message, as the protocol asks.
struct nonce_pool {
  unsigned char bytes[4092];
  size_t used = sizeof bytes;
  bool take(unsigned char* out) {
    if (used + gcm_nonce_bytes > sizeof bytes) {
      if (RAND_bytes(bytes, sizeof bytes) != 1) return false;
      used = 0;
    }
    std::memcpy(out, bytes + used, gcm_nonce_bytes);
    OPENSSL_cleanse(bytes + used, gcm_nonce_bytes);
    used += gcm_nonce_bytes;
    return true;
  }
};
thread_local nonce_pool nonces;

void hex_into(const unsigned char* p, size_t n, char* out) {
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = hex_digits[p[i] >> 4];
    out[2 * i + 1] = hex_digits[p[i] & 15];
  }
}

// EVP's update functions take int lengths: feed them in slices.
constexpr size_t evp_slice_bytes = size_t{1} << 30;

// The group order n: a private scalar must be in [1, n).
constexpr unsigned char p256_order[p256_scalar_bytes] = {
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51};

bool scalar_in_range(const unsigned char (&scalar)[p256_scalar_bytes]) {
  bool zero = true;
  for (unsigned char b : scalar) zero = zero && b == 0;
  if (zero) return false;
  // Big-endian compare with n (the scalar is secret, but its validity is not).
  return std::memcmp(scalar, p256_order, p256_scalar_bytes) < 0;
}

// An EC key on P-256 from OSSL_PARAMs (the group, then what push adds).
template <typename Push>
pkey_ptr p256_key_from(int selection, Push push) {
  param_bld_ptr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) !=
          1 ||
      !push(bld.get())) {
    return nullptr;
  }
  params_ptr params(OSSL_PARAM_BLD_to_param(bld.get()));
  pkey_ctx_ptr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* key = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, selection, params.get()) != 1) {
    return nullptr;
  }
  return pkey_ptr(key);
}

pkey_ptr p256_private_key(const unsigned char (&scalar)[p256_scalar_bytes]) {
  bn_ptr d(BN_secure_new());
  if (!d || BN_bin2bn(scalar, p256_scalar_bytes, d.get()) == nullptr) return nullptr;
  return p256_key_from(EVP_PKEY_KEYPAIR, [&](OSSL_PARAM_BLD* bld) {
    return OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d.get()) == 1;
  });
}

// SEC1 compressed (33 bytes, 02/03) or uncompressed (65 bytes, 04); OpenSSL checks the point
// is on the curve.
pkey_ptr p256_public_key(std::string_view sec1) {
  const bool compressed = sec1.size() == 33 && (sec1[0] == 0x02 || sec1[0] == 0x03);
  const bool uncompressed = sec1.size() == p256_point_bytes && sec1[0] == 0x04;
  if (!compressed && !uncompressed) return nullptr;
  return p256_key_from(EVP_PKEY_PUBLIC_KEY, [&](OSSL_PARAM_BLD* bld) {
    return OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, sec1.data(),
                                            sec1.size()) == 1;
  });
}

bool hkdf_sha256(const unsigned char* ikm, size_t ikm_bytes, unsigned char* out, size_t out_bytes) {
  if (hkdf_impl() == nullptr) return false;
  kdf_ctx_ptr ctx(EVP_KDF_CTX_new(hkdf_impl()));
  if (!ctx) return false;
  // No salt: RFC 5869's default (HashLen zero bytes, which HMAC treats as the empty key).
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<unsigned char*>(ikm),
                                        ikm_bytes),
      OSSL_PARAM_construct_octet_string(
          OSSL_KDF_PARAM_INFO, const_cast<char*>(e2e_hkdf_info.data()), e2e_hkdf_info.size()),
      OSSL_PARAM_construct_end()};
  return EVP_KDF_derive(ctx.get(), out, out_bytes, params) == 1;
}

}  // namespace

bool hmac_sha256(std::string_view key, std::string_view data, unsigned char (&out)[sha256_bytes]) {
  if (hmac_impl() == nullptr) return false;
  mac_ctx_ptr ctx(EVP_MAC_CTX_new(hmac_impl()));
  if (!ctx) return false;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_end()};
  static const unsigned char no_key = 0;  // OpenSSL wants a pointer even for an empty key
  size_t n = 0;
  return EVP_MAC_init(ctx.get(), key.empty() ? &no_key : uchars(key), key.size(), params) == 1 &&
         EVP_MAC_update(ctx.get(), uchars(data), data.size()) == 1 &&
         EVP_MAC_final(ctx.get(), out, &n, sizeof out) == 1 && n == sha256_bytes;
}

bool sha256(std::string_view data, unsigned char (&out)[sha256_bytes]) {
  unsigned int n = 0;
  return sha256_impl() != nullptr &&
         EVP_Digest(data.data(), data.size(), out, &n, sha256_impl(), nullptr) == 1 &&
         n == sha256_bytes;
}

bool gcm_seal(std::string_view key, std::string_view plain, unsigned char* out) {
  cipher_ctx_ptr ctx(EVP_CIPHER_CTX_new());
  if (!ctx || aes_gcm_impl() == nullptr) return false;
  unsigned char* nonce = out;
  unsigned char* cipher = out + gcm_nonce_bytes;
  if (RAND_bytes(nonce, gcm_nonce_bytes) != 1 ||
      EVP_EncryptInit_ex2(ctx.get(), aes_gcm_impl(), uchars(key), nonce, nullptr) != 1) {
    return false;
  }
  size_t done = 0;
  while (done < plain.size()) {
    const size_t n = std::min(plain.size() - done, evp_slice_bytes);
    int written = 0;
    if (EVP_EncryptUpdate(ctx.get(), cipher + done, &written, uchars(plain) + done,
                          static_cast<int>(n)) != 1) {
      return false;
    }
    done += static_cast<size_t>(written);
    if (static_cast<size_t>(written) != n) return false;  // GCM is a stream mode
  }
  int tail = 0;
  return EVP_EncryptFinal_ex(ctx.get(), cipher + done, &tail) == 1 && tail == 0 &&
         EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, gcm_tag_bytes, cipher + done) == 1;
}

bool gcm_open(std::string_view key, std::string_view sealed, unsigned char* out) {
  cipher_ctx_ptr ctx(EVP_CIPHER_CTX_new());
  if (!ctx || aes_gcm_impl() == nullptr) return false;
  const unsigned char* nonce = uchars(sealed);
  const unsigned char* cipher = nonce + gcm_nonce_bytes;
  const size_t cipher_bytes = sealed.size() - gcm_nonce_bytes - gcm_tag_bytes;
  unsigned char tag[gcm_tag_bytes];
  std::memcpy(tag, cipher + cipher_bytes, gcm_tag_bytes);
  if (EVP_DecryptInit_ex2(ctx.get(), aes_gcm_impl(), uchars(key), nonce, nullptr) != 1) {
    return false;
  }
  size_t done = 0;
  while (done < cipher_bytes) {
    const size_t n = std::min(cipher_bytes - done, evp_slice_bytes);
    int written = 0;
    if (EVP_DecryptUpdate(ctx.get(), out + done, &written, cipher + done, static_cast<int>(n)) !=
        1) {
      return false;
    }
    done += static_cast<size_t>(written);
    if (static_cast<size_t>(written) != n) return false;
  }
  int tail = 0;
  return EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, gcm_tag_bytes, tag) == 1 &&
         EVP_DecryptFinal_ex(ctx.get(), out + done, &tail) == 1;
}

ecdh_status ecdh_derive(const unsigned char (&scalar)[p256_scalar_bytes], std::string_view peer,
                        unsigned char (&aes_key)[aes_key_bytes]) {
  if (!scalar_in_range(scalar)) return ecdh_status::bad_private_key;
  pkey_ptr own = p256_private_key(scalar);
  if (!own) return ecdh_status::bad_private_key;
  pkey_ptr theirs = p256_public_key(peer);
  if (!theirs) return ecdh_status::bad_peer_key;
  pkey_ctx_ptr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) return ecdh_status::agreement_failed;
  if (EVP_PKEY_derive_set_peer_ex(ctx.get(), theirs.get(), 1) != 1) {
    return ecdh_status::bad_peer_key;
  }
  wiped<p256_scalar_bytes> shared;
  size_t shared_bytes = sizeof shared.bytes;
  if (EVP_PKEY_derive(ctx.get(), shared.bytes, &shared_bytes) != 1 ||
      shared_bytes != p256_scalar_bytes) {
    return ecdh_status::agreement_failed;
  }
  if (!hkdf_sha256(shared.bytes, shared_bytes, aes_key, sizeof aes_key)) {
    return ecdh_status::hkdf_failed;
  }
  return ecdh_status::ok;
}

bool ecdh_generate(unsigned char (&scalar)[p256_scalar_bytes],
                   unsigned char (&point)[p256_point_bytes]) {
  pkey_ptr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return false;
  BIGNUM* d_raw = nullptr;
  if (EVP_PKEY_get_bn_param(key.get(), OSSL_PKEY_PARAM_PRIV_KEY, &d_raw) != 1) return false;
  const bn_ptr d(d_raw);
  size_t point_bytes = 0;
  return BN_bn2binpad(d.get(), scalar, p256_scalar_bytes) == static_cast<int>(p256_scalar_bytes) &&
         EVP_PKEY_get_octet_string_param(key.get(), OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point,
                                         &point_bytes) == 1 &&
         point_bytes == p256_point_bytes && point[0] == 0x04;
}

bool sign_message(std::string_view key, std::string_view payload,
                  char (&out)[signature_hex_chars]) {
  unsigned char digest[sha256_bytes];
  char digest_hex[2 * sha256_bytes];
  unsigned char mac[sha256_bytes];
  if (!sha256(payload, digest)) return false;
  hex_into(digest, sizeof digest, digest_hex);
  if (!hmac_sha256(key, std::string_view(digest_hex, sizeof digest_hex), mac)) return false;
  hex_into(mac, sizeof mac, out);
  return true;
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');  // (EVP_EncodeBlock adds a NUL)
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), uchars(bytes),
                                int(bytes.size()));
  out.resize(size_t(std::max(n, 0)));
  return out;
}

bool base64_decode(std::string_view text, std::string& out) {
  out.clear();
  if (text.size() % 4 != 0 || text.size() > size_t(INT_MAX)) return false;
  size_t pad = 0;
  while (pad < 2 && pad < text.size() && text[text.size() - 1 - pad] == '=') ++pad;
  for (size_t i = 0; i < text.size() - pad; ++i) {
    const char ch = text[i];
    const bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '+' || ch == '/';
    if (!ok) return false;
  }
  out.resize(text.size() / 4 * 3);
  const int n =
      EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), uchars(text), int(text.size()));
  if (n < 0 || size_t(n) != out.size()) {
    out.clear();
    return false;
  }
  out.resize(out.size() - pad);
  return true;
}

std::unique_ptr<e2e_cipher> e2e_cipher::with_key(const unsigned char (&key)[aes_key_bytes]) {
  if (aes_gcm_impl() == nullptr) return nullptr;
  std::unique_ptr<e2e_cipher> c(new e2e_cipher());
  c->enc_ = EVP_CIPHER_CTX_new();
  c->dec_ = EVP_CIPHER_CTX_new();
  if (!c->enc_ || !c->dec_ ||
      EVP_EncryptInit_ex2(c->enc_, aes_gcm_impl(), key, nullptr, nullptr) != 1 ||
      EVP_DecryptInit_ex2(c->dec_, aes_gcm_impl(), key, nullptr, nullptr) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return c;
}

std::unique_ptr<e2e_cipher> e2e_cipher::accept(std::string_view peer_point,
                                               unsigned char (&own_point)[p256_point_bytes]) {
  if (peer_point.size() != p256_point_bytes || peer_point[0] != 0x04) return nullptr;
  wiped<p256_scalar_bytes> scalar;
  wiped<aes_key_bytes> key;
  if (!ecdh_generate(scalar.bytes, own_point) ||
      ecdh_derive(scalar.bytes, peer_point, key.bytes) != ecdh_status::ok) {
    ERR_clear_error();
    return nullptr;
  }
  std::unique_ptr<e2e_cipher> c = with_key(key.bytes);
  if (c) std::memcpy(c->point_, own_point, p256_point_bytes);
  return c;
}

e2e_cipher::~e2e_cipher() {
  EVP_CIPHER_CTX_free(enc_);  // (frees and cleanses the key schedule)
  EVP_CIPHER_CTX_free(dec_);
}

bool e2e_cipher::seal(std::string_view plain, std::string& out) {
  if (plain.size() > size_t(INT_MAX)) return false;
  const size_t at = out.size();
  out.resize(at + gcm_overhead_bytes + plain.size());
  auto* nonce = reinterpret_cast<unsigned char*>(out.data() + at);
  unsigned char* cipher = nonce + gcm_nonce_bytes;
  int written = 0, tail = 0;
  // The tag through a parameter, not EVP_CIPHER_CTX_ctrl (which translates to one, slowly).
  OSSL_PARAM get_tag[] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG,
                                                            cipher + plain.size(), gcm_tag_bytes),
                          OSSL_PARAM_construct_end()};
  if (!nonces.take(nonce) || EVP_EncryptInit_ex2(enc_, nullptr, nullptr, nonce, nullptr) != 1 ||
      EVP_EncryptUpdate(enc_, cipher, &written, uchars(plain), int(plain.size())) != 1 ||
      size_t(written) != plain.size() || EVP_EncryptFinal_ex(enc_, cipher + written, &tail) != 1 ||
      tail != 0 || EVP_CIPHER_CTX_get_params(enc_, get_tag) != 1) {
    ERR_clear_error();
    out.resize(at);
    return false;
  }
  return true;
}

bool e2e_cipher::open(std::string_view sealed, std::string& out) {
  out.clear();
  if (sealed.size() < gcm_overhead_bytes || sealed.size() > size_t(INT_MAX)) return false;
  const unsigned char* nonce = uchars(sealed);
  const unsigned char* cipher = nonce + gcm_nonce_bytes;
  const size_t cipher_bytes = sealed.size() - gcm_overhead_bytes;
  unsigned char tag[gcm_tag_bytes];
  std::memcpy(tag, cipher + cipher_bytes, gcm_tag_bytes);
  out.resize(cipher_bytes);
  auto* plain = reinterpret_cast<unsigned char*>(out.data());
  int written = 0, tail = 0;
  if (EVP_DecryptInit_ex2(dec_, nullptr, nullptr, nonce, nullptr) != 1 ||
      EVP_DecryptUpdate(dec_, plain, &written, cipher, int(cipher_bytes)) != 1 ||
      size_t(written) != cipher_bytes ||
      EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_GCM_SET_TAG, gcm_tag_bytes, tag) != 1 ||
      EVP_DecryptFinal_ex(dec_, plain + written, &tail) != 1) {
    ERR_clear_error();
    OPENSSL_cleanse(out.data(), out.size());  // unauthenticated plaintext never leaves
    out.clear();
    return false;
  }
  return true;
}

}  // namespace wsed::auth
