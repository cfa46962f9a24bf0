// auth/keys.cpp: secret and public-key loading (see keys.hpp).
//
// Owns: nothing. Thread: startup / reload only (file I/O). Never logs a secret's bytes.
#include "auth/keys.hpp"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace wsed::auth {

namespace {

struct file_close {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

result<std::string, key_error> read_file(const std::string& path) {
  std::unique_ptr<std::FILE, file_close> file(std::fopen(path.c_str(), "rb"));
  if (!file) return key_error::cannot_read;
  std::string bytes;
  char chunk[4096];
  for (;;) {
    const size_t n = std::fread(chunk, 1, sizeof chunk, file.get());
    bytes.append(chunk, n);
    if (bytes.size() > key_file_bytes_max) return key_error::too_large;
    if (n < sizeof chunk) break;
  }
  if (std::ferror(file.get())) return key_error::cannot_read;
  return bytes;
}

void trim_one_newline(std::string& s) {
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
}

int no_passphrase(char*, int, int, void*) {
  return 0;
}

}  // namespace

std::string_view name_of(key_error error) {
  switch (error) {
    case key_error::cannot_read:
      return "cannot_read";
    case key_error::empty:
      return "empty";
    case key_error::too_large:
      return "too_large";
    case key_error::bad_pem:
      return "bad_pem";
    case key_error::unsupported_key:
      return "unsupported_key";
    case key_error::env_missing:
      return "env_missing";
  }
  return "?";
}

result<std::string, key_error> load_hmac_secret_file(const std::string& path) {
  auto bytes = read_file(path);
  if (!bytes) return bytes;
  trim_one_newline(*bytes);
  if (bytes->empty()) return key_error::empty;
  return bytes;
}

result<std::string, key_error> check_public_key_pem(std::string pem) {
  if (pem.empty()) return key_error::empty;
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  if (!bio) return key_error::bad_pem;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr), &EVP_PKEY_free);
  if (!key) return key_error::bad_pem;
  if (EVP_PKEY_is_a(key.get(), "RSA") == 1) return pem;
  if (EVP_PKEY_is_a(key.get(), "EC") == 1) {
    char group[64];
    size_t length = 0;
    if (EVP_PKEY_get_group_name(key.get(), group, sizeof group, &length) == 1 &&
        std::string_view(group, length) == "prime256v1") {
      return pem;
    }
  }
  return key_error::unsupported_key;
}

result<std::string, key_error> load_public_key_file(const std::string& path) {
  auto bytes = read_file(path);
  if (!bytes) return bytes;
  return check_public_key_pem(std::move(*bytes));
}

result<std::string, key_error> load_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return key_error::env_missing;
  std::string s(value);
  trim_one_newline(s);
  if (s.empty()) return key_error::empty;
  return s;
}

}  // namespace wsed::auth
