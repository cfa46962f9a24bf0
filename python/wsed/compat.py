"""wsed.compat: the reference engine's Python interface on wsed.

An application written for ``wse_server._wse_accel.RustWSEServer`` runs on wsed after one change:

    from wsed.compat import RustWSEServer, rust_jwt_encode

The constructor takes the reference's parameters with the same defaults, plus wsed's own
keyword-only options ``redis_url``, ``redis_cluster``, ``redis_prefix`` and ``workers``. The
reference's cluster mesh has no counterpart: several wsed instances scale out through Redis
(``redis_url="redis://127.0.0.1:6379"`` or ``redis_cluster="host:port,..."``), so its cluster
methods raise NotImplementedError naming those options.
"""

from ._native import (  # noqa: F401  (re-exported)
    Engine as _Engine,
    rust_aes_gcm_decrypt,
    rust_aes_gcm_encrypt,
    rust_compress,
    rust_decompress,
    rust_ecdh_derive_shared_secret,
    rust_ecdh_generate_keypair,
    rust_hmac_sha256,
    rust_jwt_decode,
    rust_jwt_encode,
    rust_sha256,
    rust_should_compress,
    rust_sign_message,
)

__all__ = [
    "RustWSEServer",
    "rust_aes_gcm_decrypt",
    "rust_aes_gcm_encrypt",
    "rust_compress",
    "rust_decompress",
    "rust_ecdh_derive_shared_secret",
    "rust_ecdh_generate_keypair",
    "rust_hmac_sha256",
    "rust_jwt_decode",
    "rust_jwt_encode",
    "rust_sha256",
    "rust_should_compress",
    "rust_sign_message",
]

_NO_MESH = (
    "{name}: wsed has no cluster mesh; instances scale out through Redis: pass "
    "redis_url='redis://host:port' (or redis_cluster='host:port,...') to RustWSEServer(...)"
)


def _no_mesh(name):
    def method(self, *args, **kwargs):
        raise NotImplementedError(_NO_MESH.format(name=name))

    method.__name__ = name
    method.__doc__ = _NO_MESH.format(name=name)
    return method


class RustWSEServer(_Engine):
    """The reference's RustWSEServer, on wsed's engine (see the module docstring)."""

    connect_cluster = _no_mesh("connect_cluster")
    cluster_connected = _no_mesh("cluster_connected")
    cluster_peers_count = _no_mesh("cluster_peers_count")
    cluster_info = _no_mesh("cluster_info")
    reload_cluster_tls = _no_mesh("reload_cluster_tls")
    get_cluster_dlq_entries = _no_mesh("get_cluster_dlq_entries")
