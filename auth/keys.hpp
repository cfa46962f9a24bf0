// auth/keys.hpp: loading the verifier's secrets at startup or reload: an HMAC secret or a PEM
// public key from a file, or a value from the environment (never from argv alone: argv is
// visible to every user of the machine in /proc).
//
// Owns: nothing (returns the loaded bytes). Thread: the main thread at startup, or whichever
// thread rebuilds the verifier on SIGHUP; never a shard's loop (these functions do file I/O).
// Never logs or echoes a secret.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "auth/jwt.hpp"

namespace wsed::auth {

inline constexpr size_t key_file_bytes_max = 1u << 20;  // a bigger "key" is a mistake

enum class key_error : uint8_t {
  cannot_read,      // open/read failed (missing file, permissions)
  empty,            // nothing left after trimming
  too_large,        // over key_file_bytes_max
  bad_pem,          // not a PEM public key
  unsupported_key,  // a public key that is neither RSA nor EC P-256
  env_missing,      // the environment variable is not set
};
std::string_view name_of(key_error error);

// The file's bytes with one trailing "\n" (or "\r\n") removed, as `echo secret > file` writes.
result<std::string, key_error> load_hmac_secret_file(const std::string& path);

// The file's PEM text, checked to be a public key (SubjectPublicKeyInfo) of type RSA or EC
// P-256. Build the verifier with it (verifier_config::public_key_pem).
result<std::string, key_error> load_public_key_file(const std::string& path);

// The value of the environment variable name (trimmed of one trailing newline, like a file).
// getenv is not thread-safe against setenv: call at startup/reload only.
result<std::string, key_error> load_env(const char* name);

// Checks that pem is an RSA or EC P-256 public key (what load_public_key_file accepts).
result<std::string, key_error> check_public_key_pem(std::string pem);

}  // namespace wsed::auth
