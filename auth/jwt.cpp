// auth/jwt.cpp: JWS compact verification and minting over OpenSSL 3 and simdjson (see jwt.hpp).
//
// Owns: the verifier's OpenSSL objects (freed with it) and one simdjson parser per thread
// (thread_local, allocated once for token_bytes_max, reused by every verify on that thread).
// Thread: any. Never reads a clock, never does I/O, never throws from verify(); decoded header,
// payload and signature live in stack buffers (a token is at most token_bytes_max bytes).
#include "auth/jwt.hpp"
#include "auth/openssl.hpp"
#include "auth/text.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <simdjson.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

namespace wsed::auth {

namespace {

namespace dom = simdjson::dom;

constexpr size_t decoded_bytes_max = base64url_decoded_bytes(token_bytes_max);
constexpr size_t es256_signature_bytes = 64;  // R || S, 32 bytes each (RFC 7518 3.4)

// ---- base64url ----

constexpr char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

constexpr std::array<int8_t, 256> b64_table() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int i = 0; i < 64; ++i) t[static_cast<uint8_t>(b64_alphabet[i])] = static_cast<int8_t>(i);
  return t;
}
constexpr std::array<int8_t, 256> b64_values = b64_table();

int b64_value(char c) {
  return b64_values[static_cast<uint8_t>(c)];
}

// ---- small helpers ----

int64_t saturating_add(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) {
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  }
  return out;
}

const char* digest_name(jwt_alg alg) {
  switch (alg) {
    case jwt_alg::hs384:
      return "SHA384";
    case jwt_alg::hs512:
      return "SHA512";
    default:
      return "SHA256";
  }
}

// The shard's JSON parser: allocated once per thread for the largest document a token can hold.
dom::parser& thread_json_parser() {
  thread_local dom::parser parser = [] {
    dom::parser p;
    // Moves the allocation off the first verify; on failure parse() grows the buffers itself.
    if (p.allocate(decoded_bytes_max) != simdjson::SUCCESS) p = dom::parser();
    return p;
  }();
  return parser;
}

// Decodes one base64url part into a padded buffer and parses it as a JSON object.
struct padded_json {
  alignas(64) char bytes[decoded_bytes_max + simdjson::SIMDJSON_PADDING];
};

enum class part_status : uint8_t { ok, bad_base64url, bad_json };

part_status parse_part(std::string_view b64, padded_json& buf, dom::object& out) {
  const ptrdiff_t n = base64url_decode(b64, buf.bytes);
  if (n < 0) return part_status::bad_base64url;
  std::memset(buf.bytes + n, 0, simdjson::SIMDJSON_PADDING);
  dom::element root;
  if (thread_json_parser().parse(buf.bytes, static_cast<size_t>(n), false).get(root)) {
    return part_status::bad_json;
  }
  if (root.get_object().get(out)) return part_status::bad_json;
  return part_status::ok;
}

// A NumericDate (RFC 7519): a JSON number of seconds. Fractions round toward refusal: exp down,
// nbf up. Huge values saturate.
bool numeric_date(dom::element e, bool round_up, int64_t& out) {
  switch (e.type()) {
    case dom::element_type::INT64:
      return !e.get_int64().get(out);
    case dom::element_type::UINT64:
      out = std::numeric_limits<int64_t>::max();
      return true;
    case dom::element_type::DOUBLE: {
      double d = 0;
      if (e.get_double().get(d) || !std::isfinite(d)) return false;
      d = round_up ? std::ceil(d) : std::floor(d);
      constexpr double limit = 4.0e18;  // inside int64, far beyond any real date
      out = static_cast<int64_t>(d > limit ? limit : d < -limit ? -limit : d);
      return true;
    }
    default:
      return false;
  }
}

bool audience_contains(dom::element aud, std::string_view wanted) {
  std::string_view s;
  if (!aud.get_string().get(s)) return s == wanted;
  dom::array list;
  if (aud.get_array().get(list)) return false;
  for (dom::element item : list) {
    if (!item.get_string().get(s) && s == wanted) return true;
  }
  return false;
}

bool parse_glob_list(dom::element e, std::vector<std::string>& out, size_t& total) {
  dom::array list;
  if (e.get_array().get(list)) return false;
  for (dom::element item : list) {
    std::string_view glob;
    if (item.get_string().get(glob)) return false;
    if (!valid_topic(glob) || glob.size() > acl_glob_bytes_max) return false;
    if (++total > acl_globs_max) return false;
    out.emplace_back(glob);
  }
  return true;
}

bool parse_acl(dom::element e, topic_acl& acl) {
  if (e.is_null()) return true;
  dom::object obj;
  if (e.get_object().get(obj)) return false;
  size_t total = 0;  // globs of allow, deny and publish together (acl_globs_max)
  bool seen_allow = false;
  bool seen_deny = false;
  bool seen_publish = false;
  for (dom::key_value_pair field : obj) {
    if (field.key == "allow") {
      if (seen_allow || !parse_glob_list(field.value, acl.allow, total)) return false;
      seen_allow = true;
    } else if (field.key == "deny") {
      if (seen_deny || !parse_glob_list(field.value, acl.deny, total)) return false;
      seen_deny = true;
    } else if (field.key == "publish") {
      if (seen_publish || !parse_glob_list(field.value, acl.publish, total)) return false;
      seen_publish = true;
    }
  }
  return true;
}

// ---- OpenSSL RAII ----

struct md_ctx_free {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct mac_ctx_free {
  void operator()(EVP_MAC_CTX* c) const { EVP_MAC_CTX_free(c); }
};
struct ecdsa_sig_free {
  void operator()(ECDSA_SIG* s) const { ECDSA_SIG_free(s); }
};
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, md_ctx_free>;
using mac_ctx_ptr = std::unique_ptr<EVP_MAC_CTX, mac_ctx_free>;
using ecdsa_sig_ptr = std::unique_ptr<ECDSA_SIG, ecdsa_sig_free>;

// A keyed, initialized HMAC context that verify() duplicates (the key schedule is done once).
mac_ctx_ptr hmac_template(EVP_MAC* mac, jwt_alg alg, std::string_view secret) {
  mac_ctx_ptr ctx(EVP_MAC_CTX_new(mac));
  if (!ctx) return nullptr;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                          const_cast<char*>(digest_name(alg)), 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(secret.data()), secret.size(),
                   params) != 1) {
    return nullptr;
  }
  return ctx;
}

bool hmac_matches(EVP_MAC_CTX* tmpl, std::string_view input, std::string_view signature) {
  mac_ctx_ptr ctx(EVP_MAC_CTX_dup(tmpl));
  if (!ctx) return false;
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t mac_bytes = 0;
  if (EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(input.data()),
                     input.size()) != 1 ||
      EVP_MAC_final(ctx.get(), mac, &mac_bytes, sizeof mac) != 1) {
    return false;
  }
  // The length is public (it is the algorithm's); the bytes are compared in constant time.
  return mac_bytes == signature.size() && CRYPTO_memcmp(mac, signature.data(), mac_bytes) == 0;
}

bool digest_verify(EVP_PKEY* key, const EVP_MD* md, std::string_view input,
                   const unsigned char* sig, size_t sig_bytes) {
  md_ctx_ptr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key) != 1) return false;
  return EVP_DigestVerify(ctx.get(), sig, sig_bytes,
                          reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
}

}  // namespace

size_t ecdsa_raw_to_der(std::string_view raw, unsigned char* der, size_t der_capacity) {
  ecdsa_sig_ptr sig(ECDSA_SIG_new());
  if (!sig) return 0;
  const auto* bytes = reinterpret_cast<const unsigned char*>(raw.data());
  BIGNUM* r = BN_bin2bn(bytes, 32, nullptr);
  BIGNUM* s = BN_bin2bn(bytes + 32, 32, nullptr);
  if (r == nullptr || s == nullptr || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return 0;
  }
  const int needed = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (needed <= 0 || static_cast<size_t>(needed) > der_capacity) return 0;
  unsigned char* p = der;
  return static_cast<size_t>(i2d_ECDSA_SIG(sig.get(), &p));
}

bool ecdsa_der_to_raw(const unsigned char* der, size_t der_bytes, std::string& raw) {
  const unsigned char* p = der;
  ecdsa_sig_ptr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_bytes)));
  if (!sig) return false;
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  unsigned char out[es256_signature_bytes];
  if (BN_bn2binpad(r, out, 32) != 32 || BN_bn2binpad(s, out + 32, 32) != 32) return false;
  raw.assign(reinterpret_cast<const char*>(out), sizeof out);
  return true;
}

// ---- names ----

std::string_view name_of(jwt_alg alg) {
  switch (alg) {
    case jwt_alg::hs256:
      return "HS256";
    case jwt_alg::hs384:
      return "HS384";
    case jwt_alg::hs512:
      return "HS512";
    case jwt_alg::rs256:
      return "RS256";
    case jwt_alg::es256:
      return "ES256";
  }
  return "?";
}

std::optional<jwt_alg> parse_alg(std::string_view name) {
  for (jwt_alg a :
       {jwt_alg::hs256, jwt_alg::hs384, jwt_alg::hs512, jwt_alg::rs256, jwt_alg::es256}) {
    if (name == name_of(a)) return a;
  }
  return std::nullopt;
}

std::string_view name_of(verify_error error) {
  static constexpr std::string_view names[verify_error_count] = {
      "no_token",        "malformed",    "bad_base64url", "too_long",      "alg_mismatch",
      "alg_none",        "crit_present", "kid_mismatch",  "bad_signature", "expired",
      "not_yet_valid",   "missing_exp",  "iss_mismatch",  "aud_mismatch",  "missing_sub",
      "bad_claims_json", "bad_acl"};
  const auto i = static_cast<size_t>(error);
  return i < verify_error_count ? names[i] : "?";
}

std::string_view protocol_code_of(verify_error error) {
  return error == verify_error::no_token ? "AUTH_REQUIRED" : "AUTH_FAILED";
}

std::string_view name_of(config_error error) {
  switch (error) {
    case config_error::secret_too_short:
      return "secret_too_short";
    case config_error::previous_secret_too_short:
      return "previous_secret_too_short";
    case config_error::missing_key:
      return "missing_key";
    case config_error::bad_key:
      return "bad_key";
    case config_error::key_type_mismatch:
      return "key_type_mismatch";
    case config_error::rsa_key_too_small:
      return "rsa_key_too_small";
    case config_error::crypto_failure:
      return "crypto_failure";
  }
  return "?";
}

std::string_view name_of(mint_error error) {
  switch (error) {
    case mint_error::secret_too_short:
      return "secret_too_short";
    case mint_error::bad_key:
      return "bad_key";
    case mint_error::bad_claims:
      return "bad_claims";
    case mint_error::crypto_failure:
      return "crypto_failure";
  }
  return "?";
}

// ---- base64url ----

std::string base64url_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += b64_alphabet[v >> 6 & 63];
    out += b64_alphabet[v & 63];
  }
  if (bytes.size() - i == 1) {
    const uint32_t v = at(i) << 16;
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
  } else if (bytes.size() - i == 2) {
    const uint32_t v = at(i) << 16 | at(i + 1) << 8;
    out += b64_alphabet[v >> 18 & 63];
    out += b64_alphabet[v >> 12 & 63];
    out += b64_alphabet[v >> 6 & 63];
  }
  return out;
}

ptrdiff_t base64url_decode(std::string_view text, char* out) {
  const size_t tail = text.size() % 4;
  if (tail == 1) return -1;
  size_t o = 0;
  size_t i = 0;
  for (; i + 4 <= text.size(); i += 4) {
    const int a = b64_value(text[i]);
    const int b = b64_value(text[i + 1]);
    const int c = b64_value(text[i + 2]);
    const int d = b64_value(text[i + 3]);
    if ((a | b | c | d) < 0) return -1;
    const uint32_t v = static_cast<uint32_t>(a << 18 | b << 12 | c << 6 | d);
    out[o++] = static_cast<char>(v >> 16);
    out[o++] = static_cast<char>(v >> 8);
    out[o++] = static_cast<char>(v);
  }
  if (tail >= 2) {
    const int a = b64_value(text[i]);
    const int b = b64_value(text[i + 1]);
    const int c = tail == 3 ? b64_value(text[i + 2]) : 0;
    if ((a | b | c) < 0) return -1;
    const uint32_t v = static_cast<uint32_t>(a << 18 | b << 12 | c << 6);
    out[o++] = static_cast<char>(v >> 16);
    if (tail == 3) out[o++] = static_cast<char>(v >> 8);
    // Canonical only: the bits past the last whole byte must be zero.
    if ((tail == 2 && (v & 0xFFFF) != 0) || (tail == 3 && (v & 0xFF) != 0)) return -1;
  }
  return static_cast<ptrdiff_t>(o);
}

// ---- verifier ----

struct verifier::keys {
  EVP_MAC* mac = nullptr;                // HS*: the HMAC implementation
  EVP_MAC_CTX* hmac_current = nullptr;   // HS*: keyed templates, duplicated per verify
  EVP_MAC_CTX* hmac_previous = nullptr;  // HS*: rotation, may be null
  EVP_PKEY* public_key = nullptr;        // RS256/ES256
  EVP_MD* sha256 = nullptr;              // RS256/ES256
  ~keys() {
    EVP_MAC_CTX_free(hmac_previous);
    EVP_MAC_CTX_free(hmac_current);
    EVP_MAC_free(mac);
    EVP_PKEY_free(public_key);
    EVP_MD_free(sha256);
  }
};

verifier::~verifier() = default;

result<std::shared_ptr<const verifier>, config_error> verifier::build(
    const verifier_config& config) {
  std::shared_ptr<verifier> v(new verifier());
  v->alg_ = config.alg;
  v->kid_ = config.kid;
  v->issuer_ = config.issuer;
  v->audience_ = config.audience;
  v->leeway_s_ = config.leeway_s < 0 ? 0 : config.leeway_s;
  v->keys_ = std::make_unique<keys>();
  keys& k = *v->keys_;
  if (is_hmac(config.alg)) {
    if (config.hmac_secret.size() < hmac_secret_bytes_min) return config_error::secret_too_short;
    if (!config.hmac_secret_previous.empty() &&
        config.hmac_secret_previous.size() < hmac_secret_bytes_min) {
      return config_error::previous_secret_too_short;
    }
    k.mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (k.mac == nullptr) return config_error::crypto_failure;
    k.hmac_current = hmac_template(k.mac, config.alg, config.hmac_secret).release();
    if (k.hmac_current == nullptr) return config_error::crypto_failure;
    if (!config.hmac_secret_previous.empty()) {
      k.hmac_previous = hmac_template(k.mac, config.alg, config.hmac_secret_previous).release();
      if (k.hmac_previous == nullptr) return config_error::crypto_failure;
    }
    return std::shared_ptr<const verifier>(std::move(v));
  }
  if (config.public_key_pem.empty()) return config_error::missing_key;
  bio_ptr bio = memory_bio(config.public_key_pem);
  if (!bio) return config_error::crypto_failure;
  k.public_key = PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr);
  if (k.public_key == nullptr) return config_error::bad_key;
  if (!key_fits(config.alg, k.public_key)) return config_error::key_type_mismatch;
  if (config.alg == jwt_alg::rs256 &&
      static_cast<size_t>(EVP_PKEY_get_bits(k.public_key)) < rsa_key_bits_min) {
    return config_error::rsa_key_too_small;
  }
  k.sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (k.sha256 == nullptr) return config_error::crypto_failure;
  return std::shared_ptr<const verifier>(std::move(v));
}

bool verifier::signature_ok(std::string_view signing_input, std::string_view signature) const {
  const keys& k = *keys_;
  if (is_hmac(alg_)) {
    if (hmac_matches(k.hmac_current, signing_input, signature)) return true;
    return k.hmac_previous != nullptr && hmac_matches(k.hmac_previous, signing_input, signature);
  }
  if (alg_ == jwt_alg::rs256) {
    return digest_verify(k.public_key, k.sha256, signing_input,
                         reinterpret_cast<const unsigned char*>(signature.data()),
                         signature.size());
  }
  if (signature.size() != es256_signature_bytes) return false;
  unsigned char der[80];  // at most 72 for P-256
  const size_t der_bytes = ecdsa_raw_to_der(signature, der, sizeof der);
  return der_bytes > 0 && digest_verify(k.public_key, k.sha256, signing_input, der, der_bytes);
}

result<identity, verify_error> verifier::verify(std::string_view token, int64_t now_s) const {
  if (token.size() > token_bytes_max) return verify_error::too_long;
  const size_t dot1 = token.find('.');
  if (dot1 == std::string_view::npos) return verify_error::malformed;
  const size_t dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return verify_error::malformed;
  }
  const std::string_view header_b64 = token.substr(0, dot1);
  const std::string_view payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string_view signature_b64 = token.substr(dot2 + 1);
  if (header_b64.empty() || payload_b64.empty() || signature_b64.empty()) {
    return verify_error::malformed;
  }

  padded_json buf;  // header first, then the payload (the header's strings are done by then)

  // Header: alg (required), kid, crit. Duplicate members are refused, not resolved.
  {
    dom::object header;
    switch (parse_part(header_b64, buf, header)) {
      case part_status::bad_base64url:
        return verify_error::bad_base64url;
      case part_status::bad_json:
        return verify_error::malformed;
      case part_status::ok:
        break;
    }
    std::string_view alg;
    std::string_view kid;
    bool has_alg = false;
    bool has_kid = false;
    bool has_crit = false;
    for (dom::key_value_pair field : header) {
      if (field.key == "alg") {
        if (has_alg || field.value.get_string().get(alg)) return verify_error::malformed;
        has_alg = true;
      } else if (field.key == "kid") {
        if (has_kid || field.value.get_string().get(kid)) return verify_error::malformed;
        has_kid = true;
      } else if (field.key == "crit") {
        has_crit = true;
      }
    }
    if (!has_alg) return verify_error::malformed;
    if (equals_ignore_case(alg, "none")) return verify_error::alg_none;
    if (alg != name_of(alg_)) return verify_error::alg_mismatch;
    if (has_crit) return verify_error::crit_present;
    if (!kid_.empty() && (!has_kid || kid != kid_)) return verify_error::kid_mismatch;
  }

  // Signature over the ASCII "header.payload", before anything in the payload is looked at.
  {
    char signature[decoded_bytes_max];
    const ptrdiff_t n = base64url_decode(signature_b64, signature);
    if (n < 0) return verify_error::bad_base64url;
    if (!signature_ok(token.substr(0, dot2), std::string_view(signature, static_cast<size_t>(n)))) {
      return verify_error::bad_signature;
    }
  }

  dom::object claims;
  switch (parse_part(payload_b64, buf, claims)) {
    case part_status::bad_base64url:
      return verify_error::bad_base64url;
    case part_status::bad_json:
      return verify_error::bad_claims_json;
    case part_status::ok:
      break;
  }
  // One pass over the members; a registered claim that appears twice is refused.
  dom::element iss, aud, sub, topics;
  bool has_exp = false, has_nbf = false, has_iss = false, has_aud = false, has_sub = false,
       has_topics = false;
  int64_t exp_s = 0;
  int64_t nbf_s = 0;
  for (dom::key_value_pair field : claims) {
    const std::string_view key = field.key;
    bool duplicate = false;
    if (key == "exp") {
      duplicate = has_exp;
      if (!numeric_date(field.value, false, exp_s)) return verify_error::bad_claims_json;
      has_exp = true;
    } else if (key == "nbf") {
      duplicate = has_nbf;
      if (!numeric_date(field.value, true, nbf_s)) return verify_error::bad_claims_json;
      has_nbf = true;
    } else if (key == "iss") {
      duplicate = std::exchange(has_iss, true);
      iss = field.value;
    } else if (key == "aud") {
      duplicate = std::exchange(has_aud, true);
      aud = field.value;
    } else if (key == "sub") {
      duplicate = std::exchange(has_sub, true);
      sub = field.value;
    } else if (key == "wse_topics") {
      duplicate = std::exchange(has_topics, true);
      topics = field.value;
    }
    if (duplicate) return verify_error::bad_claims_json;
  }

  if (!has_exp) return verify_error::missing_exp;
  if (now_s >= saturating_add(exp_s, leeway_s_)) return verify_error::expired;
  if (has_nbf && saturating_add(now_s, leeway_s_) < nbf_s) return verify_error::not_yet_valid;
  if (!issuer_.empty()) {
    std::string_view value;
    if (!has_iss || iss.get_string().get(value) || value != issuer_) {
      return verify_error::iss_mismatch;
    }
  }
  if (!audience_.empty() && (!has_aud || !audience_contains(aud, audience_))) {
    return verify_error::aud_mismatch;
  }
  std::string_view user;
  if (!has_sub || sub.get_string().get(user) || user.empty()) return verify_error::missing_sub;

  identity who;
  who.user_id.assign(user);
  who.expires_at_s = exp_s;
  if (has_topics && !parse_acl(topics, who.acl)) return verify_error::bad_acl;
  return who;
}

// ---- minting ----

result<std::string, mint_error> mint(jwt_alg alg, std::string_view key,
                                     std::string_view claims_json, std::string_view kid) {
  {
    dom::parser parser;
    const simdjson::padded_string padded(claims_json);
    dom::element root;
    dom::object obj;
    if (parser.parse(padded).get(root) || root.get_object().get(obj)) return mint_error::bad_claims;
  }
  std::string header = "{\"alg\":\"";
  header += name_of(alg);
  header += "\",\"typ\":\"JWT\"";
  if (!kid.empty()) {
    // kid is an operator-chosen label; escape the two characters that would break the JSON.
    header += ",\"kid\":\"";
    for (const char c : kid) {
      if (c == '"' || c == '\\') header += '\\';
      header += c;
    }
    header += '"';
  }
  header += '}';
  std::string token = base64url_encode(header);
  token += '.';
  token += base64url_encode(claims_json);
  const auto* input = reinterpret_cast<const unsigned char*>(token.data());

  std::string signature;
  if (is_hmac(alg)) {
    if (key.size() < hmac_secret_bytes_min) return mint_error::secret_too_short;
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t mac_bytes = 0;
    if (EVP_Q_mac(nullptr, "HMAC", nullptr, digest_name(alg), nullptr, key.data(), key.size(),
                  input, token.size(), mac, sizeof mac, &mac_bytes) == nullptr) {
      return mint_error::crypto_failure;
    }
    signature.assign(reinterpret_cast<const char*>(mac), mac_bytes);
  } else {
    bio_ptr bio = memory_bio(key);
    if (!bio) return mint_error::crypto_failure;
    pkey_ptr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
    if (!pkey || !key_fits(alg, pkey.get())) return mint_error::bad_key;
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    size_t sig_bytes = 0;
    if (!ctx ||
        EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, pkey.get(),
                              nullptr) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &sig_bytes, input, token.size()) != 1) {
      return mint_error::crypto_failure;
    }
    std::string der(sig_bytes, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(der.data()), &sig_bytes, input,
                       token.size()) != 1) {
      return mint_error::crypto_failure;
    }
    der.resize(sig_bytes);
    if (alg == jwt_alg::rs256) {
      signature = std::move(der);
    } else if (!ecdsa_der_to_raw(reinterpret_cast<const unsigned char*>(der.data()), der.size(),
                                 signature)) {
      return mint_error::crypto_failure;
    }
  }
  token += '.';
  token += base64url_encode(signature);
  return token;
}

}  // namespace wsed::auth
