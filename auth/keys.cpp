// auth/keys.cpp: secret and public-key loading (see keys.hpp).
//
// Owns: nothing. Thread: startup / reload only (file I/O). Never logs a secret's bytes.
#include "auth/keys.hpp"
#include "auth/openssl.hpp"

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
  bio_ptr bio = memory_bio(pem);
  if (!bio) return key_error::bad_pem;
  pkey_ptr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr));
  if (!key) return key_error::bad_pem;
  if (!key_fits(jwt_alg::rs256, key.get()) && !key_fits(jwt_alg::es256, key.get())) {
    return key_error::unsupported_key;
  }
  return pem;
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
