// python/wsed/helpers.cpp: the reference extension's module-level helpers (see helpers.hpp),
// over OpenSSL 3 (HMAC, SHA-256, AES-256-GCM, P-256 ECDH, HKDF, RSA/ECDSA), libdeflate (zlib)
// and auth/ (base64url, algorithm names, PEM helpers).
//
// Owns: per thread, libdeflate compressors (one per level used) and a decompressor, and a
// simdjson parser for JWT headers and claims (thread_local, reused); process-wide, the OpenSSL
// algorithm implementations fetched once. Thread: entered with the GIL; the code between a
// maybe_release_gil and its end touches no Python object (only bytes/str buffers the caller's
// arguments keep alive, which are immutable). Key material on the stack is wiped after use.
//
// JWT behaviour follows the reference (jsonwebtoken): decode checks the size (8192), the kid
// (when given), the header alg, the signature, then exp (required, 30 s leeway), nbf (30 s), iss
// and aud (when given); the previous secret is tried after a bad signature or kid only.
#include "python/wsed/helpers.hpp"

#include <libdeflate.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <pybind11/stl.h>
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "auth/e2e.hpp"
#include "auth/jwt.hpp"
#include "auth/openssl.hpp"
#include "proto/wse_builder.hpp"
#include "python/wsed/pyjson.hpp"

namespace wsed::py {

namespace pyb = pybind11;
namespace dom = simdjson::dom;
using auth::jwt_alg;
// The cryptography shared with the engine (auth/e2e.hpp).
using auth::aes_key_bytes;
using auth::ecdh_status;
using auth::gcm_nonce_bytes;
using auth::gcm_tag_bytes;
using auth::hmac_sha256;
using auth::p256_point_bytes;
using auth::p256_scalar_bytes;
using auth::sha256;
using auth::sha256_bytes;

namespace {

// Inputs at least this large are processed with the GIL released (below, releasing costs more
// than it frees: another thread may hold the GIL for a whole switch interval when we want it
// back).
constexpr size_t gil_release_bytes_min = 64 * 1024;
constexpr size_t decompressed_bytes_max = 10 * 1024 * 1024;  // rust_decompress output cap
constexpr size_t p256_scalar_bytes_min = 24;  // the p256 crate left-pads 24..31 byte scalars
constexpr uint64_t jwt_leeway_s = 30;
constexpr size_t rsa_bits_min = 2048;  // ring / RFC 7518 3.3
constexpr size_t rsa_bits_max = 8192;
constexpr char hex_digits[] = "0123456789abcdef";

// ---- arguments and results ----

std::string_view view_of(const pyb::bytes& b) {
  return std::string_view(PyBytes_AS_STRING(b.ptr()),
                          static_cast<size_t>(PyBytes_GET_SIZE(b.ptr())));
}

// The UTF-8 of a str (UnicodeEncodeError for lone surrogates, as the reference's &str).
std::string_view view_of(const pyb::str& s) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
  if (p == nullptr) throw pyb::error_already_set();
  return std::string_view(p, static_cast<size_t>(n));
}

std::optional<std::string_view> view_of(const std::optional<pyb::str>& s) {
  if (!s) return std::nullopt;
  return view_of(*s);
}

std::optional<std::string_view> view_of(const std::optional<pyb::bytes>& b) {
  if (!b) return std::nullopt;
  return view_of(*b);
}

const unsigned char* uchars(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// A new bytes object of size n to fill in place (with or without the GIL: it is not shared yet).
pyb::bytes new_bytes(size_t n) {
  PyObject* o = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
  if (o == nullptr) throw pyb::error_already_set();
  return pyb::reinterpret_steal<pyb::bytes>(o);
}

unsigned char* bytes_data(pyb::bytes& b) {
  return reinterpret_cast<unsigned char*>(PyBytes_AS_STRING(b.ptr()));
}

// Shrinks a bytes object made by new_bytes (it has never been shared).
void shrink_bytes(pyb::bytes& b, size_t n) {
  PyObject* o = b.release().ptr();
  if (_PyBytes_Resize(&o, static_cast<Py_ssize_t>(n)) != 0) throw pyb::error_already_set();
  b = pyb::reinterpret_steal<pyb::bytes>(o);
}

std::string to_hex(const unsigned char* p, size_t n) {
  std::string out(2 * n, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = hex_digits[p[i] >> 4];
    out[2 * i + 1] = hex_digits[p[i] & 15];
  }
  return out;
}

[[noreturn]] void throw_python(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw pyb::error_already_set();
}

// pyo3's i32 extraction: OverflowError beyond the C long, then beyond i32.
int to_i32(const pyb::int_& v) {
  const long x = PyLong_AsLong(v.ptr());
  if (x == -1 && PyErr_Occurred()) throw pyb::error_already_set();
  if (x < INT_MIN || x > INT_MAX) {
    throw_python(PyExc_OverflowError, "out of range integral type conversion attempted");
  }
  return static_cast<int>(x);
}

// pyo3's usize extraction: OverflowError for negative or too large values.
size_t to_size(const pyb::int_& v) {
  const unsigned long long x = PyLong_AsUnsignedLongLong(v.ptr());
  if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw pyb::error_already_set();
  return static_cast<size_t>(x);
}

// The GIL released for the scope when release is true.
class maybe_release_gil {
 public:
  explicit maybe_release_gil(bool release) {
    if (release) release_.emplace();
  }

 private:
  std::optional<pyb::gil_scoped_release> release_;
};

// ---- OpenSSL handles ----

using auth::ossl_ptr;
using auth::wiped;
using md_ctx_ptr = ossl_ptr<EVP_MD_CTX, EVP_MD_CTX_free>;
using x509_ptr = ossl_ptr<X509, X509_free>;
using decoder_ctx_ptr = ossl_ptr<OSSL_DECODER_CTX, OSSL_DECODER_CTX_free>;

// ---- hashes and MACs ----

[[noreturn]] void throw_crypto_failure(const char* what) {
  ERR_clear_error();
  throw std::runtime_error(what);
}

// ---- zlib (libdeflate) ----

// One compressor per level and one decompressor per thread, allocated on first use.
struct deflate_contexts {
  std::array<libdeflate_compressor*, 13> compressors{};
  libdeflate_decompressor* decompressor = nullptr;
  ~deflate_contexts() {
    for (libdeflate_compressor* c : compressors) {
      if (c != nullptr) libdeflate_free_compressor(c);
    }
    if (decompressor != nullptr) libdeflate_free_decompressor(decompressor);
  }
};

deflate_contexts& thread_deflate() {
  thread_local deflate_contexts contexts;
  return contexts;
}

// flate2/miniz: a negative level is the default (6); libdeflate takes 0..12 (10..12 are its
// slow near-optimal levels, where miniz stops at 10).
int deflate_level(int level) {
  if (level < 0) return 6;
  return level > 12 ? 12 : level;
}

pyb::bytes compress(const pyb::bytes& data, const pyb::int_& level_arg) {
  const int level = deflate_level(to_i32(level_arg));
  const std::string_view in = view_of(data);
  deflate_contexts& contexts = thread_deflate();
  libdeflate_compressor*& compressor = contexts.compressors[static_cast<size_t>(level)];
  if (compressor == nullptr) compressor = libdeflate_alloc_compressor(level);
  if (compressor == nullptr) {
    PyErr_NoMemory();
    throw pyb::error_already_set();
  }
  const size_t bound = libdeflate_zlib_compress_bound(compressor, in.size());
  pyb::bytes out = new_bytes(bound);
  unsigned char* o = bytes_data(out);
  size_t written = 0;
  {
    maybe_release_gil release(in.size() >= gil_release_bytes_min);
    written = libdeflate_zlib_compress(compressor, in.data(), in.size(), o, bound);
  }
  if (written == 0) throw std::runtime_error("compression write error: output buffer too small");
  shrink_bytes(out, written);
  return out;
}

pyb::bytes decompress(const pyb::bytes& data) {
  const std::string_view in = view_of(data);
  // flate2's write-mode decoder turns empty input into empty output.
  if (in.empty()) return pyb::bytes("", 0);
  deflate_contexts& contexts = thread_deflate();
  if (contexts.decompressor == nullptr) contexts.decompressor = libdeflate_alloc_decompressor();
  if (contexts.decompressor == nullptr) {
    PyErr_NoMemory();
    throw pyb::error_already_set();
  }
  // libdeflate needs the whole output buffer up front: guess, and grow (x4) up to the cap.
  size_t capacity = in.size() < decompressed_bytes_max / 4 ? in.size() * 4 : decompressed_bytes_max;
  if (capacity < 4096) capacity = 4096;
  if (capacity > decompressed_bytes_max) capacity = decompressed_bytes_max;
  const bool release = in.size() >= gil_release_bytes_min;
  for (;;) {
    pyb::bytes out = new_bytes(capacity);
    unsigned char* o = bytes_data(out);
    size_t in_used = 0;
    size_t out_bytes = 0;
    libdeflate_result result;
    {
      maybe_release_gil unlocked(release || capacity >= gil_release_bytes_min);
      result = libdeflate_zlib_decompress_ex(contexts.decompressor, in.data(), in.size(), o,
                                             capacity, &in_used, &out_bytes);
    }
    if (result == LIBDEFLATE_SUCCESS) {
      // Bytes after the end of the zlib stream: flate2's write_all stops with WriteZero.
      if (in_used != in.size()) {
        throw std::runtime_error("decompression write error: failed to write whole buffer");
      }
      shrink_bytes(out, out_bytes);
      return out;
    }
    if (result != LIBDEFLATE_INSUFFICIENT_SPACE) {
      throw std::runtime_error("decompression write error: corrupt deflate stream");
    }
    if (capacity >= decompressed_bytes_max) {
      throw std::runtime_error(
          "decompression write error: decompressed data exceeds the 10485760-byte (10 MiB) limit");
    }
    capacity = capacity > decompressed_bytes_max / 4 ? decompressed_bytes_max : capacity * 4;
  }
}

// ---- AES-256-GCM: nonce (12) || ciphertext || tag (16) ----

pyb::bytes aes_gcm_encrypt(const pyb::bytes& key_arg, const pyb::bytes& plaintext) {
  const std::string_view key = view_of(key_arg);
  if (key.size() != aes_key_bytes) throw pyb::value_error("AES-GCM-256 key must be 32 bytes");
  const std::string_view plain = view_of(plaintext);
  pyb::bytes out = new_bytes(gcm_nonce_bytes + plain.size() + gcm_tag_bytes);
  unsigned char* o = bytes_data(out);
  bool ok = false;
  {
    maybe_release_gil release(plain.size() >= gil_release_bytes_min);
    ok = auth::gcm_seal(key, plain, o);
  }
  if (!ok) {
    ERR_clear_error();
    throw std::runtime_error("Encrypt failed: aead::Error");
  }
  return out;
}

pyb::bytes aes_gcm_decrypt(const pyb::bytes& key_arg, const pyb::bytes& data) {
  const std::string_view sealed = view_of(data);
  if (sealed.size() < gcm_nonce_bytes + gcm_tag_bytes) {
    throw pyb::value_error("Encrypted data too short (min 28 bytes: 12 IV + 16 tag)");
  }
  const std::string_view key = view_of(key_arg);
  if (key.size() != aes_key_bytes) throw pyb::value_error("AES-GCM-256 key must be 32 bytes");
  const size_t plain_bytes = sealed.size() - gcm_nonce_bytes - gcm_tag_bytes;
  pyb::bytes out = new_bytes(plain_bytes);
  unsigned char* o = bytes_data(out);
  bool ok = false;
  {
    maybe_release_gil release(sealed.size() >= gil_release_bytes_min);
    ok = auth::gcm_open(key, sealed, o);
    if (!ok) OPENSSL_cleanse(o, plain_bytes);  // unauthenticated plaintext never leaves
  }
  if (!ok) {
    ERR_clear_error();
    throw std::runtime_error("Decrypt failed: aead::Error");
  }
  return out;
}

// ---- P-256 ECDH + HKDF-SHA256 ----

pyb::tuple ecdh_generate_keypair() {
  wiped<p256_scalar_bytes> scalar;
  unsigned char point[p256_point_bytes];
  bool ok = false;
  {
    pyb::gil_scoped_release release;
    ok = auth::ecdh_generate(scalar.bytes, point);
  }
  if (!ok) {
    ERR_clear_error();
    throw std::runtime_error("ECDH key generation failed");
  }
  return pyb::make_tuple(pyb::bytes(reinterpret_cast<const char*>(scalar.bytes), p256_scalar_bytes),
                         pyb::bytes(reinterpret_cast<const char*>(point), p256_point_bytes));
}

pyb::bytes ecdh_derive_shared_secret(const pyb::bytes& private_key, const pyb::bytes& peer_key) {
  const std::string_view priv = view_of(private_key);
  if (priv.size() < p256_scalar_bytes_min || priv.size() > p256_scalar_bytes) {
    throw pyb::value_error("Invalid private key: crypto error");
  }
  wiped<p256_scalar_bytes> scalar;  // left-padded to 32 bytes, as the p256 crate does
  std::memcpy(scalar.bytes + (p256_scalar_bytes - priv.size()), priv.data(), priv.size());
  const std::string_view peer = view_of(peer_key);
  wiped<aes_key_bytes> aes_key;
  ecdh_status status = ecdh_status::ok;
  {
    pyb::gil_scoped_release release;
    status = auth::ecdh_derive(scalar.bytes, peer, aes_key.bytes);
  }
  ERR_clear_error();
  switch (status) {
    case ecdh_status::ok:
      return pyb::bytes(reinterpret_cast<const char*>(aes_key.bytes), aes_key_bytes);
    case ecdh_status::bad_private_key:
      throw pyb::value_error("Invalid private key: crypto error");
    case ecdh_status::bad_peer_key:
      throw pyb::value_error("Invalid peer public key: crypto error");
    case ecdh_status::hkdf_failed:
      throw std::runtime_error("HKDF expand failed: invalid output length");
    case ecdh_status::agreement_failed:
      break;
  }
  throw std::runtime_error("ECDH key agreement failed");
}

// ---- JWT: keys ----

// The first PEM block's label ("PUBLIC KEY", "RSA PRIVATE KEY", ...), empty when there is none.
std::string_view first_pem_label(std::string_view pem) {
  constexpr std::string_view begin = "-----BEGIN ";
  size_t at = pem.find(begin);
  if (at == std::string_view::npos) return {};
  at += begin.size();
  const size_t stop = pem.find("-----", at);
  if (stop == std::string_view::npos) return {};
  return pem.substr(at, stop - at);
}

std::optional<jwt_alg> supported_alg(std::string_view name) {
  const std::optional<jwt_alg> alg = auth::parse_alg(name);
  if (!alg || (*alg != jwt_alg::hs256 && *alg != jwt_alg::rs256 && *alg != jwt_alg::es256)) {
    return std::nullopt;
  }
  return alg;
}

jwt_alg alg_or_throw(std::string_view name) {
  const std::optional<jwt_alg> alg = supported_alg(name);
  if (!alg) {
    throw pyb::value_error("Unsupported algorithm: " + std::string(name) +
                           ". Supported: HS256, RS256, ES256");
  }
  return *alg;
}

// An RS256/ES256 signing key the way jsonwebtoken's EncodingKey::from_{rsa,ec}_pem and ring
// take it: RSA as PKCS#1 or PKCS#8 (2048..8192 bits), EC as PKCS#8 only, on P-256. error is
// the "Invalid key: ..." message when key is null.
struct signing_key {
  auth::pkey_ptr key;
  const char* error = nullptr;
};

signing_key load_signing_key(jwt_alg alg, std::string_view pem) {
  const std::string_view label = first_pem_label(pem);
  const bool pkcs1_rsa = label == "RSA PRIVATE KEY";
  const bool pkcs8 = label == "PRIVATE KEY";
  if (alg == jwt_alg::rs256 ? !(pkcs1_rsa || pkcs8) : !pkcs8)
    return {nullptr, "Invalid key: Invalid key format"};
  auth::bio_ptr bio = auth::memory_bio(pem);
  if (!bio) return {nullptr, "Invalid key: Invalid key format"};
  auth::pkey_ptr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, auth::no_passphrase, nullptr));
  if (!key)
    return {nullptr, pkcs1_rsa ? "Invalid key: Invalid RSA key: InvalidEncoding"
                               : "Invalid key: Invalid key format"};
  if (alg == jwt_alg::rs256) {
    if (EVP_PKEY_is_a(key.get(), "RSA") != 1) return {nullptr, "Invalid key: Invalid key format"};
    const auto bits = static_cast<size_t>(EVP_PKEY_get_bits(key.get()));
    if (bits < rsa_bits_min) return {nullptr, "Invalid key: Invalid RSA key: TooSmall"};
    if (bits > rsa_bits_max) return {nullptr, "Invalid key: Invalid RSA key: TooLarge"};
  } else {
    if (EVP_PKEY_is_a(key.get(), "EC") != 1) return {nullptr, "Invalid key: Invalid key format"};
    if (!auth::is_p256(key.get())) return {nullptr, "Invalid key: Invalid ECDSA key"};
  }
  return {std::move(key), nullptr};
}

// A verifying key the way DecodingKey::from_{rsa,ec}_pem takes it. never_verifies: the PEM is
// accepted but no signature will verify with it (jsonwebtoken reports those at verification as
// a bad signature, which lets the previous secret be tried): an RSA private key, an RSA key
// outside 2048..8192 bits, an EC key on another curve.
enum class key_status : uint8_t { ok, never_verifies, refused };
struct verifying_key {
  auth::pkey_ptr key;
  key_status status = key_status::refused;
};

auth::pkey_ptr read_rsa_pkcs1_public(std::string_view pem) {
  EVP_PKEY* key = nullptr;
  decoder_ctx_ptr ctx(OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", nullptr, "RSA",
                                                    EVP_PKEY_PUBLIC_KEY, nullptr, nullptr));
  if (!ctx) return nullptr;
  const unsigned char* data = uchars(pem);
  size_t left = pem.size();
  if (OSSL_DECODER_from_data(ctx.get(), &data, &left) != 1) {
    EVP_PKEY_free(key);
    return nullptr;
  }
  return auth::pkey_ptr(key);
}

verifying_key load_verifying_key(jwt_alg alg, std::string_view pem) {
  const std::string_view label = first_pem_label(pem);
  auth::pkey_ptr key;
  if (label == "PUBLIC KEY") {
    auth::bio_ptr bio = auth::memory_bio(pem);
    if (bio) key.reset(PEM_read_bio_PUBKEY(bio.get(), nullptr, auth::no_passphrase, nullptr));
  } else if (label == "CERTIFICATE") {
    auth::bio_ptr bio = auth::memory_bio(pem);
    x509_ptr cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, auth::no_passphrase, nullptr)
                      : nullptr);
    if (cert) key.reset(X509_get_pubkey(cert.get()));
  } else if (alg == jwt_alg::rs256 && label == "RSA PUBLIC KEY") {
    key = read_rsa_pkcs1_public(pem);
    if (!key) return {nullptr, key_status::never_verifies};  // ring parses it at verification
  } else if (alg == jwt_alg::rs256 && label == "RSA PRIVATE KEY") {
    return {nullptr, key_status::never_verifies};
  } else {
    return {nullptr, key_status::refused};
  }
  if (!key) return {nullptr, key_status::refused};
  if (alg == jwt_alg::rs256) {
    if (EVP_PKEY_is_a(key.get(), "RSA") != 1) return {nullptr, key_status::refused};
    const auto bits = static_cast<size_t>(EVP_PKEY_get_bits(key.get()));
    if (bits < rsa_bits_min || bits > rsa_bits_max) return {nullptr, key_status::never_verifies};
  } else {
    if (EVP_PKEY_is_a(key.get(), "EC") != 1) return {nullptr, key_status::refused};
    if (!auth::is_p256(key.get())) return {nullptr, key_status::never_verifies};
  }
  return {std::move(key), key_status::ok};
}

// ---- JWT: signatures ----

constexpr size_t es256_signature_bytes = 64;  // R || S (RFC 7518 3.4)

bool digest_sign(EVP_PKEY* key, std::string_view input, std::string& signature) {
  md_ctx_ptr ctx(EVP_MD_CTX_new());
  size_t n = 0;
  if (!ctx ||
      EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, key, nullptr) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &n, uchars(input), input.size()) != 1) {
    return false;
  }
  signature.assign(n, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &n,
                     uchars(input), input.size()) != 1) {
    return false;
  }
  signature.resize(n);
  return true;
}

bool digest_verify(EVP_PKEY* key, std::string_view input, const unsigned char* sig,
                   size_t sig_bytes) {
  md_ctx_ptr ctx(EVP_MD_CTX_new());
  if (!ctx ||
      EVP_DigestVerifyInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, key, nullptr) != 1) {
    return false;
  }
  return EVP_DigestVerify(ctx.get(), sig, sig_bytes, uchars(input), input.size()) == 1;
}

// Appends '.' and the signature of token (header.payload) to it; returns the "JWT encode
// error: ..." detail on failure, nullptr on success. No Python: runs without the GIL.
const char* sign_token(jwt_alg alg, std::string_view key, std::string& token) {
  std::string signature;
  if (alg == jwt_alg::hs256) {
    if (key.size() < auth::hmac_secret_bytes_min) {
      return "Secret key too short (minimum 32 bytes for HS256)";
    }
    unsigned char mac[sha256_bytes];
    if (!hmac_sha256(key, token, mac)) return "Invalid key: Signing failed: HMAC";
    signature.assign(reinterpret_cast<const char*>(mac), sizeof mac);
  } else {
    signing_key loaded = load_signing_key(alg, key);
    if (!loaded.key) return loaded.error;
    std::string der;
    if (!digest_sign(loaded.key.get(), token, der)) return "Invalid key: RSA signing failed";
    if (alg == jwt_alg::rs256) {
      signature = std::move(der);
    } else if (!auth::ecdsa_der_to_raw(uchars(der), der.size(), signature)) {
      return "Invalid key: Signing failed: ECDSA";
    }
  }
  token += '.';
  token += auth::base64url_encode(signature);
  return nullptr;
}

// ---- JWT: parsing ----

dom::parser& jwt_parser() {
  thread_local dom::parser parser;
  return parser;
}

// Decodes one base64url part and parses it as a JSON object into the thread's parser (valid
// until its next parse). Integers beyond 64 bits (serde_json reads them as floats) are read as
// 0, which no claim check treats differently from a huge float.
bool parse_json_part(std::string_view b64, std::string& text, std::string& padded,
                     dom::object& out) {
  text.resize(auth::base64url_decoded_bytes(b64.size()));
  const ptrdiff_t n = auth::base64url_decode(b64, text.data());
  if (n < 0) return false;
  text.resize(static_cast<size_t>(n));
  padded.assign(text);
  padded.append(simdjson::SIMDJSON_PADDING, '\0');
  dom::element root;
  simdjson::error_code error = jwt_parser().parse(padded.data(), text.size(), false).get(root);
  if (error == simdjson::NUMBER_ERROR && mask_big_integers(text, padded)) {
    padded.append(simdjson::SIMDJSON_PADDING, '\0');
    error = jwt_parser().parse(padded.data(), text.size(), false).get(root);
  }
  return error == simdjson::SUCCESS && root.get_object().get(out) == simdjson::SUCCESS;
}

bool is_string_or_null(dom::element e) {
  return e.is_string() || e.is_null();
}

struct jose_header {
  std::string alg;
  std::optional<std::string> kid;
};

// jsonwebtoken's Header: alg required (a string), the registered optional members typed (null
// is absent), a repeated registered member refused, other members ignored.
bool parse_header(std::string_view header_b64, jose_header& out) {
  std::string text;
  std::string padded;
  dom::object header;
  if (!parse_json_part(header_b64, text, padded, header)) return false;
  constexpr std::string_view known[] = {"typ", "alg", "cty", "jku", "jwk",
                                        "kid", "x5u", "x5c", "x5t", "x5t#S256"};
  bool seen[std::size(known)] = {};
  bool has_alg = false;
  for (dom::key_value_pair field : header) {
    size_t i = 0;
    while (i < std::size(known) && known[i] != field.key) ++i;
    if (i == std::size(known)) continue;
    if (seen[i]) return false;
    seen[i] = true;
    const dom::element v = field.value;
    if (field.key == "alg") {
      std::string_view alg;
      if (v.get_string().get(alg) != simdjson::SUCCESS) return false;
      out.alg.assign(alg);
      has_alg = true;
    } else if (field.key == "kid") {
      if (!is_string_or_null(v)) return false;
      if (v.is_string()) out.kid.emplace(std::string_view(v));
    } else if (field.key == "jwk") {
      if (!v.is_object() && !v.is_null()) return false;
    } else if (field.key == "x5c") {
      if (v.is_null()) continue;
      dom::array list;
      if (v.get_array().get(list) != simdjson::SUCCESS) return false;
      for (dom::element item : list) {
        if (!item.is_string()) return false;
      }
    } else if (!is_string_or_null(v)) {
      return false;
    }
  }
  return has_alg;
}

// jsonwebtoken's numeric_type: a u64, or a finite non-negative float below 2^64 (rounded);
// anything else counts as absent.
std::optional<uint64_t> numeric_date(dom::element e) {
  switch (e.type()) {
    case dom::element_type::UINT64:
      return uint64_t(e);
    case dom::element_type::INT64: {
      const int64_t v = int64_t(e);
      if (v < 0) return std::nullopt;
      return static_cast<uint64_t>(v);
    }
    case dom::element_type::DOUBLE: {
      const double d = double(e);
      if (!std::isfinite(d) || d < 0 || d >= 18446744073709551616.0) return std::nullopt;
      return static_cast<uint64_t>(std::round(d));
    }
    default:
      return std::nullopt;
  }
}

// iss / aud: a string equal to wanted, or an array of strings holding it.
bool names_contain(dom::element e, std::string_view wanted) {
  std::string_view s;
  if (e.get_string().get(s) == simdjson::SUCCESS) return s == wanted;
  dom::array list;
  if (e.get_array().get(list) != simdjson::SUCCESS) return false;
  bool found = false;
  for (dom::element item : list) {
    if (item.get_string().get(s) != simdjson::SUCCESS) return false;
    found = found || s == wanted;
  }
  return found;
}

struct claim_rules {
  std::optional<std::string_view> issuer;    // None: iss not checked; "" is checked
  std::optional<std::string_view> audience;  // None: aud not checked
  uint64_t now_s = 0;
};

bool claims_ok(const dom::object& claims, const claim_rules& rules) {
  std::optional<uint64_t> exp, nbf;
  dom::element iss, aud;
  bool seen_exp = false, seen_nbf = false, seen_sub = false, seen_iss = false, seen_aud = false;
  for (dom::key_value_pair field : claims) {
    // serde refuses a repeated member of its ClaimsForValidation struct.
    if (field.key == "exp") {
      if (std::exchange(seen_exp, true)) return false;
      exp = numeric_date(field.value);
    } else if (field.key == "nbf") {
      if (std::exchange(seen_nbf, true)) return false;
      nbf = numeric_date(field.value);
    } else if (field.key == "sub") {
      if (std::exchange(seen_sub, true)) return false;
    } else if (field.key == "iss") {
      if (std::exchange(seen_iss, true)) return false;
      iss = field.value;
    } else if (field.key == "aud") {
      if (std::exchange(seen_aud, true)) return false;
      aud = field.value;
    }
  }
  if (!exp) return false;                                      // exp is required
  if (*exp < rules.now_s - jwt_leeway_s) return false;         // expired
  if (nbf && *nbf > rules.now_s + jwt_leeway_s) return false;  // not yet valid
  if (rules.issuer && (!seen_iss || !names_contain(iss, *rules.issuer))) return false;
  if (rules.audience && (!seen_aud || !names_contain(aud, *rules.audience))) return false;
  return true;
}

enum class decode_status : uint8_t { ok, bad_signature, bad_kid, refused };

struct token_parts {
  std::string_view header_b64, payload_b64, signature_b64;
  std::string_view message;  // header.payload, the signing input
};

// jsonwebtoken's split: signature <- after the last '.', payload <- between the last two, header
// <- all before (so a token of more than three parts fails as a header that is not base64url).
bool split_token(std::string_view token, token_parts& out) {
  const size_t last_dot = token.rfind('.');
  if (last_dot == std::string_view::npos) return false;
  out.message = token.substr(0, last_dot);
  out.signature_b64 = token.substr(last_dot + 1);
  const size_t dot = out.message.rfind('.');
  if (dot == std::string_view::npos) return false;
  out.header_b64 = out.message.substr(0, dot);
  out.payload_b64 = out.message.substr(dot + 1);
  return true;
}

// One attempt with one key (jsonwebtoken's decode plus the reference's kid check). On ok,
// claims_json holds the payload JSON. No Python: runs without the GIL for RS256/ES256.
decode_status decode_with_key(std::string_view token, std::string_view key, jwt_alg alg,
                              std::optional<std::string_view> kid, const claim_rules& rules,
                              std::string& claims_json) {
  if (token.size() > auth::token_bytes_max) return decode_status::refused;
  token_parts parts;
  if (!split_token(token, parts)) return decode_status::refused;

  jose_header header;
  if (kid) {
    if (!parse_header(parts.header_b64, header)) return decode_status::refused;
    if (header.kid != kid) return decode_status::bad_kid;
  }

  verifying_key public_key;
  if (alg == jwt_alg::hs256) {
    if (key.size() < auth::hmac_secret_bytes_min) return decode_status::refused;
  } else {
    public_key = load_verifying_key(alg, key);
    if (public_key.status == key_status::refused) return decode_status::refused;
  }

  if (!kid && !parse_header(parts.header_b64, header)) return decode_status::refused;
  if (header.alg != auth::name_of(alg)) return decode_status::refused;

  std::string signature(auth::base64url_decoded_bytes(parts.signature_b64.size()), '\0');
  const ptrdiff_t signature_bytes = auth::base64url_decode(parts.signature_b64, signature.data());
  if (signature_bytes < 0) return decode_status::refused;
  signature.resize(static_cast<size_t>(signature_bytes));
  bool verified = false;
  if (alg == jwt_alg::hs256) {
    unsigned char mac[sha256_bytes];
    verified = hmac_sha256(key, parts.message, mac) && signature.size() == sizeof mac &&
               CRYPTO_memcmp(mac, signature.data(), sizeof mac) == 0;
  } else if (public_key.status == key_status::ok) {
    if (alg == jwt_alg::rs256) {
      verified =
          digest_verify(public_key.key.get(), parts.message, uchars(signature), signature.size());
    } else if (signature.size() == es256_signature_bytes) {
      unsigned char der[80];  // at most 72 for P-256
      const size_t der_bytes = auth::ecdsa_raw_to_der(signature, der, sizeof der);
      verified =
          der_bytes > 0 && digest_verify(public_key.key.get(), parts.message, der, der_bytes);
    }
  }
  ERR_clear_error();
  if (!verified) return decode_status::bad_signature;

  std::string padded;
  dom::object claims;
  if (!parse_json_part(parts.payload_b64, claims_json, padded, claims)) {
    return decode_status::refused;
  }
  return claims_ok(claims, rules) ? decode_status::ok : decode_status::refused;
}

uint64_t unix_now_s() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::string jwt_encode(const pyb::dict& claims, const pyb::bytes& secret, const pyb::str& algorithm,
                       const std::optional<pyb::str>& key_id) {
  const jwt_alg alg = alg_or_throw(view_of(algorithm));
  std::string claims_json;
  to_json(claims, claims_json, json_style::jwt_claims);
  const std::optional<std::string_view> kid = view_of(key_id);
  // jsonwebtoken's Header serializes typ, then alg, then kid.
  std::string header = "{\"typ\":\"JWT\",\"alg\":\"";
  header += auth::name_of(alg);
  header += '"';
  if (kid) {
    header += ",\"kid\":";
    proto::wse_append_json_string(header, *kid);
  }
  header += '}';
  std::string token = auth::base64url_encode(header);
  token += '.';
  token += auth::base64url_encode(claims_json);
  const std::string_view key = view_of(secret);
  const char* error = nullptr;
  {
    maybe_release_gil release(alg != jwt_alg::hs256);
    error = sign_token(alg, key, token);
  }
  ERR_clear_error();
  if (error != nullptr) throw std::runtime_error(std::string("JWT encode error: ") + error);
  return token;
}

pyb::object jwt_decode(const pyb::str& token_arg, const pyb::bytes& secret,
                       const pyb::str& algorithm, const std::optional<pyb::str>& issuer,
                       const std::optional<pyb::str>& audience,
                       const std::optional<pyb::bytes>& previous_secret,
                       const std::optional<pyb::str>& key_id) {
  const jwt_alg alg = alg_or_throw(view_of(algorithm));
  const std::string_view token = view_of(token_arg);
  const std::string_view key = view_of(secret);
  const std::optional<std::string_view> previous = view_of(previous_secret);
  const std::optional<std::string_view> kid = view_of(key_id);
  claim_rules rules;
  rules.issuer = view_of(issuer);
  rules.audience = view_of(audience);
  rules.now_s = unix_now_s();
  std::string claims_json;
  decode_status status = decode_status::refused;
  {
    maybe_release_gil release(alg != jwt_alg::hs256);
    status = decode_with_key(token, key, alg, kid, rules, claims_json);
    if ((status == decode_status::bad_signature || status == decode_status::bad_kid) && previous) {
      // Only a token whose header names the configured alg gets the second try; the kid is not
      // enforced on it (the old key may have had another).
      token_parts parts;
      jose_header header;
      const bool header_read = split_token(token, parts) && parse_header(parts.header_b64, header);
      if (header_read && header.alg != auth::name_of(alg)) {
        status = decode_status::refused;
      } else {
        status = decode_with_key(token, *previous, alg, std::nullopt, rules, claims_json);
      }
    }
  }
  ERR_clear_error();  // key parsing and verification failures leave OpenSSL errors queued
  if (status != decode_status::ok) return pyb::none();
  return from_json(claims_json);
}

// ---- the small ones ----

bool should_compress(const pyb::bytes& data, const pyb::int_& threshold) {
  return view_of(data).size() > to_size(threshold);
}

pyb::bytes hmac_sha256_py(const pyb::bytes& key_arg, const pyb::bytes& data_arg) {
  const std::string_view key = view_of(key_arg);
  const std::string_view data = view_of(data_arg);
  unsigned char mac[sha256_bytes];
  bool ok = false;
  {
    maybe_release_gil release(data.size() >= gil_release_bytes_min);
    ok = hmac_sha256(key, data, mac);
  }
  if (!ok) throw_crypto_failure("HMAC-SHA256 failed");
  return pyb::bytes(reinterpret_cast<const char*>(mac), sizeof mac);
}

std::string sha256_py(const pyb::bytes& data_arg) {
  const std::string_view data = view_of(data_arg);
  unsigned char digest[sha256_bytes];
  bool ok = false;
  {
    maybe_release_gil release(data.size() >= gil_release_bytes_min);
    ok = sha256(data, digest);
  }
  if (!ok) throw_crypto_failure("SHA-256 failed");
  return to_hex(digest, sizeof digest);
}

std::string sign_message(const pyb::str& payload_json, const pyb::bytes& secret) {
  const std::string_view payload = view_of(payload_json);
  const std::string_view key = view_of(secret);
  char signature[auth::signature_hex_chars];
  bool ok = false;
  {
    maybe_release_gil release(payload.size() >= gil_release_bytes_min);
    ok = auth::sign_message(key, payload, signature);
  }
  if (!ok) throw_crypto_failure("HMAC-SHA256 failed");
  return std::string(signature, sizeof signature);
}

}  // namespace

void register_helpers(pyb::module_& m) {
  using namespace pybind11::literals;
  m.def("rust_jwt_encode", &jwt_encode, "claims"_a, "secret"_a, "algorithm"_a = "HS256",
        "key_id"_a = pyb::none(),
        "Sign claims (a dict, used as given: no iat/exp added) into a JWT. HS256: secret is the "
        "key (>= 32 bytes); RS256/ES256: a private key PEM (EC as PKCS#8).");
  m.def("rust_jwt_decode", &jwt_decode, "token"_a, "secret"_a, "algorithm"_a = "HS256",
        "issuer"_a = pyb::none(), "audience"_a = pyb::none(), "previous_secret"_a = pyb::none(),
        "key_id"_a = pyb::none(),
        "Verify a JWT and return its claims as a dict, or None when it is refused (signature, "
        "exp required with 30 s leeway, nbf, iss/aud when given, kid when given; "
        "previous_secret is tried after a bad signature or kid).");
  m.def("rust_compress", &compress, "data"_a, "level"_a = 6, "zlib-compress data.");
  m.def("rust_decompress", &decompress, "data"_a,
        "zlib-decompress data (RuntimeError for invalid data or output over 10 MiB).");
  m.def("rust_should_compress", &should_compress, "data"_a, "threshold"_a = 1024,
        "len(data) > threshold.");
  m.def("rust_hmac_sha256", &hmac_sha256_py, "key"_a, "data"_a, "HMAC-SHA256: 32 raw bytes.");
  m.def("rust_sha256", &sha256_py, "data"_a, "SHA-256 as 64 lower-case hex characters.");
  m.def("rust_sign_message", &sign_message, "payload_json"_a, "secret"_a,
        "hex(HMAC-SHA256(secret, hex(SHA-256(payload_json))))");
  m.def("rust_aes_gcm_encrypt", &aes_gcm_encrypt, "key"_a, "plaintext"_a,
        "AES-256-GCM: random 12-byte nonce || ciphertext || 16-byte tag (no AAD).");
  m.def("rust_aes_gcm_decrypt", &aes_gcm_decrypt, "key"_a, "data"_a,
        "Open nonce || ciphertext || tag made by rust_aes_gcm_encrypt.");
  m.def("rust_ecdh_generate_keypair", &ecdh_generate_keypair,
        "A P-256 key pair: (32-byte private scalar, 65-byte uncompressed public point).");
  m.def("rust_ecdh_derive_shared_secret", &ecdh_derive_shared_secret, "private_key"_a,
        "peer_public_key"_a,
        "ECDH on P-256, then HKDF-SHA256 (no salt, info b\"wse-encryption/aes-gcm-key\"): the "
        "32-byte AES key.");
}

}  // namespace wsed::py
