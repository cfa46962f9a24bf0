// auth/openssl.hpp: the OpenSSL 3 pieces jwt.cpp, keys.cpp, e2e.cpp and the Python module's
// helpers share (RAII holders, wiped stack buffers, reading a PEM from memory without a
// passphrase prompt, which key types an algorithm takes).
//
// Owns: whatever key or BIO its holders hold. Thread: any. No I/O beyond the caller's memory.
#pragma once

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "auth/jwt.hpp"

namespace wsed::auth {

struct bio_free {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct pkey_free {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using bio_ptr = std::unique_ptr<BIO, bio_free>;

// A unique_ptr freeing with an OpenSSL free function: ossl_ptr<EVP_MD_CTX, EVP_MD_CTX_free>.
template <typename T, void (*Free)(T*)>
struct ossl_free {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using ossl_ptr = std::unique_ptr<T, ossl_free<T, Free>>;

// Wipes a stack buffer of key material when the scope ends.
template <size_t N>
struct wiped {
  unsigned char bytes[N] = {};
  ~wiped() { OPENSSL_cleanse(bytes, N); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;

// A read-only BIO over pem (which must outlive it); null when OpenSSL cannot allocate one.
inline bio_ptr memory_bio(std::string_view pem) {
  return bio_ptr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// PEM passphrase callback: never prompt on a terminal (an encrypted key is refused).
inline int no_passphrase(char*, int, int, void*) {
  return 0;
}

inline bool is_p256(EVP_PKEY* key) {
  char group[64];
  size_t length = 0;
  if (EVP_PKEY_get_group_name(key, group, sizeof group, &length) != 1) return false;
  const std::string_view name(group, length);
  return name == "prime256v1" || name == "P-256" || name == "secp256r1";
}

// Whether key is of the type alg signs with (RS256: RSA; ES256: EC on P-256). Not for HS*.
inline bool key_fits(jwt_alg alg, EVP_PKEY* key) {
  if (alg == jwt_alg::rs256) return EVP_PKEY_is_a(key, "RSA") == 1;
  return EVP_PKEY_is_a(key, "EC") == 1 && is_p256(key);
}

// JWS ES256 carries R || S (32 bytes each); OpenSSL signs and verifies a DER ECDSA-Sig-Value.
// raw must hold 64 bytes; returns the DER bytes written (0: failure or der too small).
size_t ecdsa_raw_to_der(std::string_view raw, unsigned char* der, size_t der_capacity);
// false: not a valid DER signature (or R / S over 32 bytes).
bool ecdsa_der_to_raw(const unsigned char* der, size_t der_bytes, std::string& raw);

}  // namespace wsed::auth
