// python/wsed/helpers.hpp: the module-level helper functions of the reference extension
// (rust_jwt_encode/decode, rust_compress/decompress/should_compress, rust_hmac_sha256,
// rust_sha256, rust_sign_message, rust_aes_gcm_encrypt/decrypt, rust_ecdh_generate_keypair,
// rust_ecdh_derive_shared_secret), with the reference's names, parameters, defaults, results,
// exception types and messages (/tmp/ref_facts.md section 11).
//
// Owns: nothing beyond per-thread OpenSSL / libdeflate contexts (helpers.cpp). Thread: called
// by Python with the GIL; heavy work (large inputs, RSA/ECDSA, ECDH) runs with it released.
#pragma once

#include <pybind11/pybind11.h>

namespace wsed::py {

// Adds the helper functions to m.
void register_helpers(pybind11::module_& m);

}  // namespace wsed::py
