// auth/e2e.hpp: the cryptography of end-to-end encryption (PROTOCOL.md "End-to-end encryption
// (E:)") and of message signing, over OpenSSL 3 EVP: SHA-256, HMAC-SHA256, AES-256-GCM
// (nonce || ciphertext || tag, no AAD), P-256 ECDH + HKDF-SHA256 (no salt, info
// "wse-encryption/aes-gcm-key"). Shared by the engine (wse_app) and the Python module's helpers.
//
// Owns: an e2e_cipher owns its two keyed EVP contexts (freed, and so wiped, with it); the
// algorithm implementations are fetched once per process; per thread that seals, a 4 KiB buffer
// of random bytes the nonces are taken from (each byte once). Thread: any; one e2e_cipher is used
// by one thread at a time. Key material on the stack is wiped after use. No I/O.
#pragma once

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace wsed::auth {

inline constexpr size_t aes_key_bytes = 32;
inline constexpr size_t gcm_nonce_bytes = 12;
inline constexpr size_t gcm_tag_bytes = 16;
inline constexpr size_t gcm_overhead_bytes = gcm_nonce_bytes + gcm_tag_bytes;  // 28
inline constexpr size_t sha256_bytes = 32;
inline constexpr size_t p256_scalar_bytes = 32;
inline constexpr size_t p256_point_bytes = 65;  // 04 || X || Y
inline constexpr size_t signature_hex_chars = 64;
inline constexpr std::string_view e2e_hkdf_info = "wse-encryption/aes-gcm-key";

bool sha256(std::string_view data, unsigned char (&out)[sha256_bytes]);
bool hmac_sha256(std::string_view key, std::string_view data, unsigned char (&out)[sha256_bytes]);
// The reference's message signature: hex(HMAC-SHA256(key, hex(SHA-256(payload)))), lowercase.
bool sign_message(std::string_view key, std::string_view payload, char (&out)[signature_hex_chars]);

// Standard base64 (RFC 4648 section 4, padded), as the key exchange carries points. decode is
// strict about the alphabet, the padding and the length (a multiple of 4); false otherwise.
std::string base64_encode(std::string_view bytes);
bool base64_decode(std::string_view text, std::string& out);

// One-shot AES-256-GCM with a fresh context. seal: out gets nonce (random) || ciphertext || tag
// (plain.size() + 28 bytes). open: sealed is at least 28 bytes; out gets sealed.size() - 28
// bytes, which must not be used when it returns false.
bool gcm_seal(std::string_view key, std::string_view plain, unsigned char* out);
bool gcm_open(std::string_view key, std::string_view sealed, unsigned char* out);

// A P-256 key pair: the 32-byte big-endian private scalar and the uncompressed public point.
bool ecdh_generate(unsigned char (&scalar)[p256_scalar_bytes],
                   unsigned char (&point)[p256_point_bytes]);
enum class ecdh_status : uint8_t {
  ok,
  bad_private_key,
  bad_peer_key,
  agreement_failed,
  hkdf_failed
};
// ECDH of scalar with peer (SEC1: 33 compressed or 65 uncompressed bytes, checked on the curve),
// the 32-byte x coordinate through HKDF-SHA256 (no salt, e2e_hkdf_info) into aes_key.
ecdh_status ecdh_derive(const unsigned char (&scalar)[p256_scalar_bytes], std::string_view peer,
                        unsigned char (&aes_key)[aes_key_bytes]);

// One keyed connection's AES-256-GCM: the key is scheduled once, each message only sets its
// nonce. Not copyable.
class e2e_cipher {
 public:
  // The server's side of the exchange: an ephemeral P-256 key, agreement with the client's
  // point (exactly 65 bytes, 0x04 first), HKDF. Null when the point is not a P-256 point (or
  // OpenSSL fails); own_point then is unspecified.
  static std::unique_ptr<e2e_cipher> accept(std::string_view peer_point,
                                            unsigned char (&own_point)[p256_point_bytes]);
  // accept's public point (to answer the client with; zeros for with_key).
  std::string_view own_point() const {
    return {reinterpret_cast<const char*>(point_), p256_point_bytes};
  }
  // Null when OpenSSL cannot make the contexts.
  static std::unique_ptr<e2e_cipher> with_key(const unsigned char (&key)[aes_key_bytes]);
  ~e2e_cipher();
  e2e_cipher(const e2e_cipher&) = delete;
  e2e_cipher& operator=(const e2e_cipher&) = delete;

  // Appends random nonce || ciphertext || tag (plain.size() + 28 bytes) to out.
  bool seal(std::string_view plain, std::string& out);
  // sealed = nonce || ciphertext || tag; out becomes the plaintext (cleared on failure: a bad
  // tag, fewer than 28 bytes).
  bool open(std::string_view sealed, std::string& out);

 private:
  e2e_cipher() = default;
  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;
  unsigned char point_[p256_point_bytes] = {};
};

}  // namespace wsed::auth
