"""The module-level helpers of wsed.compat (rust_jwt_encode ... rust_ecdh_derive_shared_secret),
checked against independent implementations from Debian's python3: hashlib/hmac, zlib,
cryptography (AES-GCM, ECDH + HKDF, key generation) and PyJWT (JWT interop).

Run with /usr/bin/python3 -m pytest. The module under test is wsed.compat (the real layout);
WSED_HELPERS_TEST_MODULE names another module exporting the same functions (for a standalone
build of python/wsed/helpers.cpp, e.g. WSED_HELPERS_TEST_MODULE=_helpers_test).
"""

import base64
import datetime
import hashlib
import hmac
import importlib
import json
import os
import threading
import time
import zlib

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

mod = importlib.import_module(os.environ.get("WSED_HELPERS_TEST_MODULE", "wsed.compat"))

rust_jwt_encode = mod.rust_jwt_encode
rust_jwt_decode = mod.rust_jwt_decode
rust_compress = mod.rust_compress
rust_decompress = mod.rust_decompress
rust_should_compress = mod.rust_should_compress
rust_hmac_sha256 = mod.rust_hmac_sha256
rust_sha256 = mod.rust_sha256
rust_sign_message = mod.rust_sign_message
rust_aes_gcm_encrypt = mod.rust_aes_gcm_encrypt
rust_aes_gcm_decrypt = mod.rust_aes_gcm_decrypt
rust_ecdh_generate_keypair = mod.rust_ecdh_generate_keypair
rust_ecdh_derive_shared_secret = mod.rust_ecdh_derive_shared_secret

SECRET = b"test-secret-key-for-jwt-testing-32bytes!"
OLD_SECRET = b"old-secret-key-for-rotation-32b!!"
NEW_SECRET = b"new-secret-key-for-rotation-32b!!"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HKDF_INFO = b"wse-encryption/aes-gcm-key"
MIB = 1024 * 1024


def now():
    return int(time.time())


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def b64url_bytes(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def header_text(token):
    part = token.split(".")[0]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_token(header, payload, key=SECRET):
    """A JWS signed with hmac directly, from raw header and payload bytes (any JSON, or not)."""
    signing_input = b64url(header) + "." + b64url(payload)
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


HS256_HEADER = b'{"alg":"HS256","typ":"JWT"}'


def claims(**extra):
    out = {"sub": "user-123", "exp": now() + 3600}
    out.update(extra)
    return out


# ---- keys (module scope: RSA generation is slow) ----


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def pkcs8_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def traditional_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def spki_pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---------------------------------------------------------------------------------------------
# SHA-256, HMAC, sign_message


@pytest.mark.parametrize("size", [0, 1, 55, 56, 64, 1000, 70000, 3 * MIB])
def test_sha256_matches_hashlib(size):
    data = os.urandom(size)
    out = rust_sha256(data)
    assert isinstance(out, str)
    assert out == hashlib.sha256(data).hexdigest()
    assert len(out) == 64 and out == out.lower()


@pytest.mark.parametrize("key_size", [0, 1, 32, 64, 65, 200])
@pytest.mark.parametrize("data_size", [0, 10, 100000])
def test_hmac_sha256_matches_hmac_module(key_size, data_size):
    key = os.urandom(key_size)
    data = os.urandom(data_size)
    out = rust_hmac_sha256(key, data)
    assert isinstance(out, bytes)
    assert out == hmac.new(key, data, hashlib.sha256).digest()


def test_sign_message_is_hmac_of_hex_sha256():
    payload = '{"t":"x","p":{"a":1,"name":"Zoë ✓"}}'
    secret = b"any-length-secret"
    inner = hashlib.sha256(payload.encode()).hexdigest().encode("ascii")
    expected = hmac.new(secret, inner, hashlib.sha256).hexdigest()
    assert rust_sign_message(payload, secret) == expected
    assert rust_sign_message("", b"") == hmac.new(
        b"", hashlib.sha256(b"").hexdigest().encode(), hashlib.sha256
    ).hexdigest()


def test_hash_helpers_take_bytes_only():
    with pytest.raises(TypeError):
        rust_sha256("abc")
    with pytest.raises(TypeError):
        rust_sha256(bytearray(b"abc"))
    with pytest.raises(TypeError):
        rust_hmac_sha256("key", b"data")
    with pytest.raises(TypeError):
        rust_hmac_sha256(b"key", "data")
    with pytest.raises(TypeError):
        rust_sign_message(b"{}", b"secret")  # payload_json is a str
    with pytest.raises(TypeError):
        rust_sign_message("{}", "secret")
    with pytest.raises(UnicodeEncodeError):
        rust_sign_message("\ud800", b"secret")


# ---------------------------------------------------------------------------------------------
# zlib


SAMPLES = [
    b"",
    b"a",
    b"hello world " * 100,
    bytes(range(256)) * 50,
    os.urandom(5000),
    json.dumps({"t": "update", "p": list(range(2000))}).encode(),
]


@pytest.mark.parametrize("data", SAMPLES)
def test_compress_round_trips_through_zlib(data):
    out = rust_compress(data)
    assert isinstance(out, bytes)
    assert out[0] == 0x78  # RFC 1950 header: deflate, 32 KiB window
    assert (out[0] * 256 + out[1]) % 31 == 0
    assert zlib.decompress(out) == data
    assert rust_decompress(out) == data


@pytest.mark.parametrize("level", [-5, -1, 0, 1, 5, 6, 9, 10, 12, 100])
def test_compress_levels(level):
    data = b"level test " * 3000 + os.urandom(300)
    out = rust_compress(data, level)
    assert zlib.decompress(out) == data
    if level == 0:
        assert len(out) >= len(data)  # stored blocks
    else:
        assert len(out) < len(data) // 5


def test_compress_default_level_is_6():
    data = b"default level " * 2000
    assert rust_compress(data) == rust_compress(data, 6)
    assert rust_compress(data, level=6) == rust_compress(data)


def test_compress_argument_errors():
    with pytest.raises(TypeError):
        rust_compress("text")
    with pytest.raises(TypeError):
        rust_compress(b"x", 1.5)
    with pytest.raises(OverflowError):
        rust_compress(b"x", 2**31)
    with pytest.raises(OverflowError):
        rust_compress(b"x", 2**80)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_decompress_reads_zlib_module_output(level):
    data = (b"zlib interop " * 5000) + os.urandom(1000)
    assert rust_decompress(zlib.compress(data, level)) == data


def test_decompress_large_and_highly_compressible():
    data = b"\x00" * (3 * MIB) + b"tail"
    assert rust_decompress(zlib.compress(data)) == data


def test_decompress_empty_input_is_empty():
    assert rust_decompress(b"") == b""


def test_decompress_errors():
    good = zlib.compress(b"some data to break " * 50)
    with pytest.raises(RuntimeError):
        rust_decompress(b"not zlib at all")
    with pytest.raises(RuntimeError):
        rust_decompress(good[:-6])  # truncated
    with pytest.raises(RuntimeError):
        rust_decompress(good[:-4] + bytes(4))  # bad Adler-32
    with pytest.raises(RuntimeError, match="decompression write error"):
        rust_decompress(good + b"trailing")
    with pytest.raises(RuntimeError):
        rust_decompress(zlib.compress(b"x")[:2])  # header only
    with pytest.raises(TypeError):
        rust_decompress(good.decode("latin-1"))


def test_decompress_caps_output_at_10_mib():
    exact = zlib.compress(b"\x00" * (10 * MIB))
    assert len(rust_decompress(exact)) == 10 * MIB
    with pytest.raises(RuntimeError):
        rust_decompress(zlib.compress(b"\x00" * (10 * MIB + 1)))
    with pytest.raises(RuntimeError):
        rust_decompress(zlib.compress(b"\x00" * (64 * MIB)))


def test_compress_and_decompress_in_threads():
    # Large inputs run with the GIL released: several threads at once must each get their own.
    inputs = [os.urandom(1000) * 300 + bytes([i]) * 100000 for i in range(8)]
    results = [None] * len(inputs)

    def work(i):
        out = inputs[i]
        for _ in range(5):
            out = rust_decompress(rust_compress(out, i % 10))
        results[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == inputs


def test_should_compress_is_strictly_greater():
    assert rust_should_compress(b"x" * 1025) is True
    assert rust_should_compress(b"x" * 1024) is False
    assert rust_should_compress(b"") is False
    assert rust_should_compress(b"abc", 2) is True
    assert rust_should_compress(b"abc", 3) is False
    assert rust_should_compress(b"abc", threshold=0) is True
    assert rust_should_compress(b"", 0) is False
    with pytest.raises(OverflowError):
        rust_should_compress(b"abc", -1)
    with pytest.raises(TypeError):
        rust_should_compress("abc")


# ---------------------------------------------------------------------------------------------
# AES-256-GCM


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 200000])
def test_aes_gcm_encrypt_opens_with_cryptography(size):
    key = os.urandom(32)
    plain = os.urandom(size)
    sealed = rust_aes_gcm_encrypt(key, plain)
    assert isinstance(sealed, bytes)
    assert len(sealed) == 12 + size + 16
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], None) == plain
    assert rust_aes_gcm_decrypt(key, sealed) == plain


@pytest.mark.parametrize("size", [0, 5, 70000])
def test_aes_gcm_decrypt_opens_cryptography_output(size):
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    plain = os.urandom(size)
    sealed = nonce + AESGCM(key).encrypt(nonce, plain, None)
    assert rust_aes_gcm_decrypt(key, sealed) == plain


def test_aes_gcm_nonce_is_random():
    key = os.urandom(32)
    a = rust_aes_gcm_encrypt(key, b"same")
    b = rust_aes_gcm_encrypt(key, b"same")
    assert a[:12] != b[:12] and a != b


@pytest.mark.parametrize("key_size", [0, 16, 24, 31, 33, 64])
def test_aes_gcm_key_must_be_32_bytes(key_size):
    key = os.urandom(key_size)
    with pytest.raises(ValueError) as e:
        rust_aes_gcm_encrypt(key, b"data")
    assert str(e.value) == "AES-GCM-256 key must be 32 bytes"
    with pytest.raises(ValueError) as e:
        rust_aes_gcm_decrypt(key, bytes(40))
    assert str(e.value) == "AES-GCM-256 key must be 32 bytes"


def test_aes_gcm_too_short_is_checked_before_the_key():
    message = "Encrypted data too short (min 28 bytes: 12 IV + 16 tag)"
    for size in (0, 12, 27):
        with pytest.raises(ValueError) as e:
            rust_aes_gcm_decrypt(os.urandom(32), bytes(size))
        assert str(e.value) == message
        with pytest.raises(ValueError) as e:
            rust_aes_gcm_decrypt(b"short key", bytes(size))
        assert str(e.value) == message
    # 28 bytes is long enough (empty plaintext): it fails on the tag instead.
    with pytest.raises(RuntimeError):
        rust_aes_gcm_decrypt(os.urandom(32), bytes(28))


def test_aes_gcm_authentication_failures():
    key = os.urandom(32)
    sealed = bytearray(rust_aes_gcm_encrypt(key, b"attack at dawn"))
    for index in (0, 11, 12, len(sealed) - 17, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(RuntimeError) as e:
            rust_aes_gcm_decrypt(key, bytes(tampered))
        assert str(e.value) == "Decrypt failed: aead::Error"
    with pytest.raises(RuntimeError) as e:
        rust_aes_gcm_decrypt(os.urandom(32), bytes(sealed))
    assert str(e.value) == "Decrypt failed: aead::Error"


def test_aes_gcm_takes_bytes_only():
    key = os.urandom(32)
    with pytest.raises(TypeError):
        rust_aes_gcm_encrypt(key, "text")
    with pytest.raises(TypeError):
        rust_aes_gcm_encrypt(key.hex(), b"data")
    with pytest.raises(TypeError):
        rust_aes_gcm_decrypt(key, "x" * 40)


# ---------------------------------------------------------------------------------------------
# ECDH P-256 + HKDF


def cryptography_aes_key(private_key, peer_public_key):
    shared = private_key.exchange(ec.ECDH(), peer_public_key)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(shared)


def point_of(public_key, compressed=False):
    return public_key.public_bytes(
        serialization.Encoding.X962,
        serialization.PublicFormat.CompressedPoint
        if compressed
        else serialization.PublicFormat.UncompressedPoint,
    )


def test_ecdh_generate_keypair_shape():
    private, public = rust_ecdh_generate_keypair()
    assert isinstance(private, bytes) and isinstance(public, bytes)
    assert len(private) == 32 and len(public) == 65 and public[0] == 0x04
    scalar = int.from_bytes(private, "big")
    assert 0 < scalar < P256_ORDER
    # The public point is the private scalar's.
    derived = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    assert point_of(derived) == public
    assert rust_ecdh_generate_keypair()[0] != private


def test_ecdh_derives_the_same_key_as_cryptography():
    ours_private, ours_public = rust_ecdh_generate_keypair()
    theirs = ec.generate_private_key(ec.SECP256R1())
    key = rust_ecdh_derive_shared_secret(ours_private, point_of(theirs.public_key()))
    assert isinstance(key, bytes) and len(key) == 32
    their_view = cryptography_aes_key(
        theirs, ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ours_public)
    )
    assert key == their_view
    # A compressed peer point gives the same key.
    assert rust_ecdh_derive_shared_secret(ours_private, point_of(theirs.public_key(), True)) == key
    # Both sides through the module agree too.
    other_private, other_public = rust_ecdh_generate_keypair()
    assert rust_ecdh_derive_shared_secret(
        ours_private, other_public
    ) == rust_ecdh_derive_shared_secret(other_private, ours_public)


def test_ecdh_key_works_for_aes_gcm_with_the_peer():
    ours_private, ours_public = rust_ecdh_generate_keypair()
    theirs = ec.generate_private_key(ec.SECP256R1())
    key = rust_ecdh_derive_shared_secret(ours_private, point_of(theirs.public_key()))
    their_key = cryptography_aes_key(
        theirs, ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ours_public)
    )
    sealed = rust_aes_gcm_encrypt(key, b'{"t":"secret"}')
    assert AESGCM(their_key).decrypt(sealed[:12], sealed[12:], None) == b'{"t":"secret"}'


def test_ecdh_short_scalars_are_left_padded():
    theirs = ec.generate_private_key(ec.SECP256R1())
    peer = point_of(theirs.public_key())
    scalar = int.from_bytes(os.urandom(24), "big") | 1
    padded = scalar.to_bytes(32, "big")
    short = scalar.to_bytes(24, "big")
    expected = cryptography_aes_key(
        theirs, ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    )
    assert rust_ecdh_derive_shared_secret(padded, peer) == expected
    assert rust_ecdh_derive_shared_secret(short, peer) == expected


@pytest.mark.parametrize(
    "private",
    [
        b"",
        bytes(23),
        bytes(33),
        bytes(32),  # zero
        P256_ORDER.to_bytes(32, "big"),
        (P256_ORDER + 1).to_bytes(32, "big"),
        b"\xff" * 32,
    ],
)
def test_ecdh_invalid_private_key(private):
    _, public = rust_ecdh_generate_keypair()
    with pytest.raises(ValueError) as e:
        rust_ecdh_derive_shared_secret(private, public)
    assert str(e.value) == "Invalid private key: crypto error"


def test_ecdh_invalid_peer_key():
    private, public = rust_ecdh_generate_keypair()
    off_curve = bytearray(public)
    off_curve[-1] ^= 0x01
    bad_peers = [
        b"",
        b"\x00",
        bytes(off_curve),
        public[:64],
        b"\x04" + public[1:33],  # uncompressed tag with 33 bytes
        b"\x05" + public[1:],  # unknown tag
        b"\x02" + b"\xff" * 32,  # x beyond the field
    ]
    for peer in bad_peers:
        with pytest.raises(ValueError) as e:
            rust_ecdh_derive_shared_secret(private, peer)
        assert str(e.value) == "Invalid peer public key: crypto error", peer
    # The private key is checked first.
    with pytest.raises(ValueError) as e:
        rust_ecdh_derive_shared_secret(bytes(32), b"")
    assert str(e.value).startswith("Invalid private key")


def test_ecdh_takes_bytes_only():
    private, public = rust_ecdh_generate_keypair()
    with pytest.raises(TypeError):
        rust_ecdh_derive_shared_secret(private.hex(), public)
    with pytest.raises(TypeError):
        rust_ecdh_derive_shared_secret(private, bytearray(public))


# ---------------------------------------------------------------------------------------------
# JWT: encode


def test_jwt_encode_hs256_reads_with_pyjwt():
    c = claims(iss="sqv", aud="sqv-api", roles=["admin", "user"], custom={"nested": True})
    token = rust_jwt_encode(c, SECRET)
    assert isinstance(token, str)
    assert header_text(token) == '{"typ":"JWT","alg":"HS256"}'
    assert pyjwt.decode(token, SECRET, algorithms=["HS256"], audience="sqv-api") == c
    assert pyjwt.get_unverified_header(token) == {"typ": "JWT", "alg": "HS256"}


def test_jwt_encode_adds_no_claims():
    token = rust_jwt_encode({"sub": "only"}, SECRET)
    assert b64url_json(token.split(".")[1]) == {"sub": "only"}
    assert rust_jwt_encode({}, SECRET).split(".")[1] == "e30"  # {}


def test_jwt_encode_is_deterministic_for_hs256():
    c = {"sub": "u", "exp": 2000000000, "n": 1.5}
    assert rust_jwt_encode(c, SECRET) == rust_jwt_encode(dict(c), SECRET)
    assert rust_jwt_encode(c, SECRET) == hs256_token(
        b'{"typ":"JWT","alg":"HS256"}', b'{"sub":"u","exp":2000000000,"n":1.5}'
    )


def test_jwt_encode_key_id():
    token = rust_jwt_encode(claims(), SECRET, key_id="key-2025")
    assert header_text(token) == '{"typ":"JWT","alg":"HS256","kid":"key-2025"}'
    assert pyjwt.get_unverified_header(token)["kid"] == "key-2025"
    token = rust_jwt_encode(claims(), SECRET, "HS256", 'we"ird\\kid\n')
    assert pyjwt.get_unverified_header(token)["kid"] == 'we"ird\\kid\n'


def test_jwt_encode_claim_conversion():
    when = datetime.datetime(2026, 3, 1, 12, 34, 56, tzinfo=datetime.timezone.utc)

    class Custom:
        def __str__(self):
            return "custom!"

    class BadStr:
        def __str__(self):
            raise RuntimeError("no")

    c = {
        "none": None,
        "t": True,
        "f": False,
        "int": -42,
        "i64max": 2**63 - 1,
        "big": 2**64,  # beyond i64: its str
        "float": 1.0,
        "float2": 0.1,
        "float3": 1e20,
        "nan": float("nan"),  # not finite: str() -> "nan"
        "inf": float("-inf"),
        "str": "Zoë ✓ \"quoted\" \\ \n\t\x01",
        "list": [1, [2, {"x": None}]],
        "tuple": (1, 2),  # not special for JWT claims: str()
        "bytes": b"ab",  # str() -> "b'ab'"
        "date": when,  # isoformat()
        "day": datetime.date(2026, 3, 1),
        "obj": Custom(),
        "bad": BadStr(),  # str() raises -> null
        1: "int key",
        None: "none key",
        ("a", 1): "tuple key",
    }
    token = rust_jwt_encode(c, SECRET)
    payload = b64url_json(token.split(".")[1])
    assert payload == {
        "none": None,
        "t": True,
        "f": False,
        "int": -42,
        "i64max": 2**63 - 1,
        "big": str(2**64),
        "float": 1.0,
        "float2": 0.1,
        "float3": 1e20,
        "nan": "nan",
        "inf": "-inf",
        "str": "Zoë ✓ \"quoted\" \\ \n\t\x01",
        "list": [1, [2, {"x": None}]],
        "tuple": "(1, 2)",
        "bytes": "b'ab'",
        "date": "2026-03-01T12:34:56+00:00",
        "day": "2026-03-01",
        "obj": "custom!",
        "bad": None,
        "1": "int key",
        "None": "none key",
        "('a', 1)": "tuple key",
    }
    assert list(payload) == [k if isinstance(k, str) else str(k) for k in c]
    # Floats are written as serde_json does: "1.0", "1e20"; key order as given.
    raw = b64url_bytes(token.split(".")[1]).decode()
    assert '"float":1.0,' in raw and '"float3":1e20,' in raw
    assert rust_jwt_decode(rust_jwt_encode(claims(f=1.0), SECRET), SECRET)["f"] == 1.0


def test_jwt_encode_recursive_claims_raise():
    loop = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        rust_jwt_encode({"loop": loop}, SECRET)


def test_jwt_encode_errors():
    with pytest.raises(RuntimeError) as e:
        rust_jwt_encode(claims(), b"too-short")
    assert str(e.value) == "JWT encode error: Secret key too short (minimum 32 bytes for HS256)"
    with pytest.raises(RuntimeError):
        rust_jwt_encode(claims(), b"x" * 31)
    for alg in ("HS384", "HS512", "none", "hs256", "PS256", ""):
        with pytest.raises(ValueError) as e:
            rust_jwt_encode(claims(), SECRET, alg)
        assert str(e.value) == f"Unsupported algorithm: {alg}. Supported: HS256, RS256, ES256"
    with pytest.raises(TypeError):
        rust_jwt_encode([("sub", "x")], SECRET)
    with pytest.raises(TypeError):
        rust_jwt_encode(claims(), SECRET.decode())
    with pytest.raises(TypeError):
        rust_jwt_encode(claims(), SECRET, b"HS256")
    with pytest.raises(TypeError):
        rust_jwt_encode(claims(), SECRET, "HS256", 5)


def test_jwt_encode_rs256(rsa_key):
    c = claims(iss="svc")
    for pem in (pkcs8_pem(rsa_key), traditional_pem(rsa_key)):
        token = rust_jwt_encode(c, pem, "RS256", key_id="rsa-1")
        assert pyjwt.get_unverified_header(token) == {"typ": "JWT", "alg": "RS256", "kid": "rsa-1"}
        assert pyjwt.decode(token, rsa_key.public_key(), algorithms=["RS256"]) == c
        assert len(b64url_bytes(token.split(".")[2])) == 256


def test_jwt_encode_es256(ec_key):
    c = claims()
    token = rust_jwt_encode(c, pkcs8_pem(ec_key), "ES256")
    assert header_text(token) == '{"typ":"JWT","alg":"ES256"}'
    assert len(b64url_bytes(token.split(".")[2])) == 64  # raw R || S
    assert pyjwt.decode(token, ec_key.public_key(), algorithms=["ES256"]) == c


def test_jwt_encode_key_errors(rsa_key, ec_key):
    def encode_error(key, alg):
        with pytest.raises(RuntimeError) as e:
            rust_jwt_encode(claims(), key, alg)
        return str(e.value)

    fmt = "JWT encode error: Invalid key: Invalid key format"
    assert encode_error(traditional_pem(ec_key), "ES256") == fmt  # SEC1: jsonwebtoken wants PKCS#8
    assert encode_error(pkcs8_pem(rsa_key), "ES256") == fmt
    assert encode_error(pkcs8_pem(ec_key), "RS256") == fmt
    assert encode_error(spki_pem(rsa_key), "RS256") == fmt
    assert encode_error(b"not a pem", "RS256") == fmt
    assert encode_error(SECRET, "ES256") == fmt
    p384 = ec.generate_private_key(ec.SECP384R1())
    ecdsa = "JWT encode error: Invalid key: Invalid ECDSA key"
    assert encode_error(pkcs8_pem(p384), "ES256") == ecdsa
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert encode_error(pkcs8_pem(small), "RS256").startswith("JWT encode error: Invalid key: ")


# ---------------------------------------------------------------------------------------------
# JWT: decode


def test_jwt_decode_pyjwt_token():
    c = claims(
        iat=1700000000,
        roles=["admin", "user"],
        custom={"nested": True, "deep": [1, 2.5, None, "x"]},
        count=42,
        active=True,
        ratio=0.25,
        text="Zoë ✓",
    )
    token = pyjwt.encode(c, SECRET, algorithm="HS256")
    decoded = rust_jwt_decode(token, SECRET)
    assert decoded == c
    assert type(decoded["count"]) is int and type(decoded["ratio"]) is float
    assert list(decoded) == list(c)


def test_jwt_decode_round_trip_and_numbers():
    c = claims(i64max=2**63 - 1, i64min=-(2**63), neg=-1, f=1e300, small=5e-324)
    assert rust_jwt_decode(rust_jwt_encode(c, SECRET), SECRET) == c
    # Integers beyond 64 bits (written by PyJWT's json) come back as ints.
    token = pyjwt.encode(claims(huge=2**80, u64=2**64 - 1), SECRET, algorithm="HS256")
    decoded = rust_jwt_decode(token, SECRET)
    assert decoded["huge"] == 2**80 and decoded["u64"] == 2**64 - 1


def test_jwt_decode_duplicate_claim_keeps_first_position_last_value():
    token = hs256_token(HS256_HEADER, b'{"a":1,"exp":%d,"a":2}' % (now() + 60))
    decoded = rust_jwt_decode(token, SECRET)
    assert decoded == {"a": 2, "exp": decoded["exp"]} and list(decoded) == ["a", "exp"]
    # A repeated exp is refused (serde refuses a repeated field of its claims struct).
    doubled = hs256_token(HS256_HEADER, b'{"exp":%d,"exp":%d}' % (now() + 60, now() + 60))
    assert rust_jwt_decode(doubled, SECRET) is None


def test_jwt_decode_wrong_secret_or_tampering():
    token = rust_jwt_encode(claims(), SECRET)
    assert rust_jwt_decode(token, b"wrong-secret-key-at-least-32bytes!") is None
    head, body, sig = token.split(".")
    assert rust_jwt_decode(f"{head}.{body}x.{sig}", SECRET) is None
    assert rust_jwt_decode(f"{head}.{body}.{sig[:-2]}", SECRET) is None
    other = b64url_json(body)
    other["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(other).encode()).rstrip(b"=").decode()
    assert rust_jwt_decode(f"{head}.{forged}.{sig}", SECRET) is None


def test_jwt_decode_short_secret_is_none():
    token = pyjwt.encode(claims(), b"short", algorithm="HS256")
    assert rust_jwt_decode(token, b"short") is None


@pytest.mark.parametrize(
    "token",
    ["", "just-a-string", "two.parts", "a.b.c", "not.a.jwt.token", "...", "a..b", "\u00e9.x.y"],
)
def test_jwt_decode_malformed_is_none(token):
    assert rust_jwt_decode(token, SECRET) is None


def test_jwt_decode_more_than_three_parts_is_none():
    token = rust_jwt_encode(claims(), SECRET)
    assert rust_jwt_decode(token + ".extra", SECRET) is None
    assert rust_jwt_decode("x." + token, SECRET) is None


def test_jwt_decode_oversized_token_is_none():
    token = rust_jwt_encode(claims(pad="x" * 7000), SECRET)
    assert len(token) > 8192
    assert rust_jwt_decode(token, SECRET) is None
    fits = rust_jwt_encode(claims(pad="x" * 5000), SECRET)
    assert len(fits) <= 8192 and rust_jwt_decode(fits, SECRET) is not None


def test_jwt_decode_exp():
    t = now()
    assert rust_jwt_decode(rust_jwt_encode(claims(exp=t - 10), SECRET), SECRET) is not None
    assert rust_jwt_decode(rust_jwt_encode(claims(exp=t - 60), SECRET), SECRET) is None
    assert rust_jwt_decode(rust_jwt_encode(claims(exp=1000000000), SECRET), SECRET) is None
    assert rust_jwt_decode(rust_jwt_encode({"sub": "no-exp"}, SECRET), SECRET) is None
    for bad in (str(t + 60), None, -5, [t + 60], {"at": t + 60}, True):
        assert rust_jwt_decode(rust_jwt_encode(claims(exp=bad), SECRET), SECRET) is None, bad
    assert rust_jwt_decode(rust_jwt_encode(claims(exp=t + 60.7), SECRET), SECRET)["exp"] == t + 60.7
    # exp up to u64::MAX (only written by other encoders: ours writes ints beyond i64 as strings).
    huge = hs256_token(HS256_HEADER, b'{"exp":18446744073709551615}')
    assert rust_jwt_decode(huge, SECRET) == {"exp": 2**64 - 1}
    assert rust_jwt_decode(rust_jwt_encode(claims(exp=2**64 - 1), SECRET), SECRET) is None
    beyond = hs256_token(HS256_HEADER, b'{"exp":18446744073709551616}')
    assert rust_jwt_decode(beyond, SECRET) is None
    assert rust_jwt_decode(hs256_token(HS256_HEADER, b'{"exp":1e30}'), SECRET) is None


def test_jwt_decode_nbf():
    t = now()
    assert rust_jwt_decode(rust_jwt_encode(claims(nbf=t + 10), SECRET), SECRET) is not None
    assert rust_jwt_decode(rust_jwt_encode(claims(nbf=t + 120), SECRET), SECRET) is None
    assert rust_jwt_decode(rust_jwt_encode(claims(nbf=t - 1000), SECRET), SECRET) is not None
    # A nbf that is not a date is not checked (jsonwebtoken's TryParse).
    assert rust_jwt_decode(rust_jwt_encode(claims(nbf="later"), SECRET), SECRET) is not None


def test_jwt_decode_issuer():
    token = rust_jwt_encode(claims(iss="sqv"), SECRET)
    assert rust_jwt_decode(token, SECRET, issuer="sqv")["iss"] == "sqv"
    assert rust_jwt_decode(token, SECRET, issuer="other-service") is None
    assert rust_jwt_decode(token, SECRET) is not None  # None: not checked
    assert rust_jwt_decode(token, SECRET, issuer="") is None  # "" is checked
    no_iss = rust_jwt_encode(claims(), SECRET)
    assert rust_jwt_decode(no_iss, SECRET, issuer="sqv") is None
    empty_iss = rust_jwt_encode(claims(iss=""), SECRET)
    assert rust_jwt_decode(empty_iss, SECRET, issuer="") is not None
    listed = rust_jwt_encode(claims(iss=["a", "sqv"]), SECRET)
    assert rust_jwt_decode(listed, SECRET, issuer="sqv") is not None
    assert rust_jwt_decode(listed, SECRET, issuer="b") is None
    assert rust_jwt_decode(rust_jwt_encode(claims(iss=5), SECRET), SECRET, issuer="5") is None


def test_jwt_decode_audience():
    token = rust_jwt_encode(claims(aud="sqv-api"), SECRET)
    assert rust_jwt_decode(token, SECRET, audience="sqv-api") is not None
    assert rust_jwt_decode(token, SECRET, audience="other-api") is None
    assert rust_jwt_decode(token, SECRET) is not None  # not checked without audience
    listed = rust_jwt_encode(claims(aud=["web", "sqv-api"]), SECRET)
    assert rust_jwt_decode(listed, SECRET, audience="sqv-api") is not None
    assert rust_jwt_decode(listed, SECRET, audience="mobile") is None
    assert rust_jwt_decode(rust_jwt_encode(claims(), SECRET), SECRET, audience="x") is None
    assert rust_jwt_decode(rust_jwt_encode(claims(aud=[]), SECRET), SECRET, audience="x") is None


def test_jwt_decode_key_id():
    token = rust_jwt_encode(claims(), SECRET, key_id="k1")
    assert rust_jwt_decode(token, SECRET, key_id="k1") is not None
    assert rust_jwt_decode(token, SECRET, key_id="k2") is None
    assert rust_jwt_decode(token, SECRET) is not None
    no_kid = rust_jwt_encode(claims(), SECRET)
    assert rust_jwt_decode(no_kid, SECRET, key_id="k1") is None


def test_jwt_decode_previous_secret_rotation():
    token = rust_jwt_encode(claims(iss="sqv", aud="sqv-api"), OLD_SECRET)
    assert rust_jwt_decode(token, NEW_SECRET, issuer="sqv", audience="sqv-api") is None
    decoded = rust_jwt_decode(
        token, NEW_SECRET, issuer="sqv", audience="sqv-api", previous_secret=OLD_SECRET
    )
    assert decoded["sub"] == "user-123"
    # The claims are still checked on the second try.
    assert rust_jwt_decode(token, NEW_SECRET, issuer="x", previous_secret=OLD_SECRET) is None
    expired = rust_jwt_encode(claims(exp=now() - 100), OLD_SECRET)
    assert rust_jwt_decode(expired, NEW_SECRET, previous_secret=OLD_SECRET) is None
    # A token signed by neither.
    unknown = rust_jwt_encode(claims(), b"unknown-secret-not-configured-32!")
    assert rust_jwt_decode(unknown, NEW_SECRET, previous_secret=OLD_SECRET) is None
    # The current secret still works with a previous one configured.
    current = rust_jwt_encode(claims(), NEW_SECRET)
    assert rust_jwt_decode(current, NEW_SECRET, previous_secret=OLD_SECRET) is not None
    # A previous secret under 32 bytes never verifies.
    short_old = pyjwt.encode(claims(), b"old-but-short", algorithm="HS256")
    assert rust_jwt_decode(short_old, NEW_SECRET, previous_secret=b"old-but-short") is None


def test_jwt_decode_previous_secret_after_kid_mismatch():
    old = rust_jwt_encode(claims(), OLD_SECRET, key_id="old-kid")
    assert rust_jwt_decode(old, NEW_SECRET, key_id="new-kid") is None
    # The kid is not enforced on the previous-key try.
    assert (
        rust_jwt_decode(old, NEW_SECRET, key_id="new-kid", previous_secret=OLD_SECRET) is not None
    )
    # A kid mismatch with a token signed by the current key: the retry uses the previous key,
    # which does not verify it.
    new = rust_jwt_encode(claims(), NEW_SECRET, key_id="other")
    assert rust_jwt_decode(new, NEW_SECRET, key_id="new-kid", previous_secret=OLD_SECRET) is None


def test_jwt_decode_previous_secret_not_tried_for_other_errors():
    # Expired with the current key: no retry (and the previous would not help anyway).
    expired = rust_jwt_encode(claims(exp=now() - 100), NEW_SECRET)
    assert rust_jwt_decode(expired, NEW_SECRET, previous_secret=NEW_SECRET) is None
    # A header naming another algorithm is refused before any retry.
    hs384 = pyjwt.encode(claims(), OLD_SECRET, algorithm="HS384")
    assert rust_jwt_decode(hs384, NEW_SECRET, previous_secret=OLD_SECRET) is None


def test_jwt_decode_alg_must_match():
    token = pyjwt.encode(claims(), SECRET, algorithm="HS512")
    assert rust_jwt_decode(token, SECRET) is None
    unsigned = pyjwt.encode(claims(), None, algorithm="none")
    assert rust_jwt_decode(unsigned, SECRET) is None
    assert rust_jwt_decode(unsigned + "AAAA", SECRET) is None
    # A header claiming none but carrying a valid HS256 signature over it.
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    sig = base64.urlsafe_b64encode(hmac.new(SECRET, head + b"." + body, "sha256").digest())
    assert rust_jwt_decode((head + b"." + body + b"." + sig.rstrip(b"=")).decode(), SECRET) is None


def test_jwt_decode_header_types():
    def with_header(extra):
        header = {"alg": "HS256", "typ": "JWT"}
        header.update(extra)
        return hs256_token(json.dumps(header).encode(), json.dumps(claims()).encode())

    assert rust_jwt_decode(with_header({"crit": ["x"], "extra": 1}), SECRET) is not None
    assert rust_jwt_decode(with_header({"kid": None}), SECRET) is not None
    assert rust_jwt_decode(with_header({"kid": 5}), SECRET) is None
    assert rust_jwt_decode(with_header({"typ": ["JWT"]}), SECRET) is None
    assert rust_jwt_decode(with_header({"x5c": ["abc"]}), SECRET) is not None
    assert rust_jwt_decode(with_header({"x5c": [1]}), SECRET) is None
    assert rust_jwt_decode(with_header({"alg": 256}), SECRET) is None
    no_alg = hs256_token(b'{"typ":"JWT"}', json.dumps(claims()).encode())
    assert rust_jwt_decode(no_alg, SECRET) is None
    assert rust_jwt_decode(hs256_token(b'{"alg":"HS256","alg":"HS256"}', b"{}"), SECRET) is None
    # The header and payload must be JSON objects.
    assert rust_jwt_decode(hs256_token(b"[]", json.dumps(claims()).encode()), SECRET) is None
    assert rust_jwt_decode(hs256_token(HS256_HEADER, b"[1]"), SECRET) is None
    assert rust_jwt_decode(hs256_token(HS256_HEADER, b"not json"), SECRET) is None
    assert rust_jwt_decode(hs256_token(HS256_HEADER, b'{"exp":1e999}'), SECRET) is None


def test_jwt_decode_errors():
    token = rust_jwt_encode(claims(), SECRET)
    for alg in ("HS384", "none", "rs256"):
        with pytest.raises(ValueError) as e:
            rust_jwt_decode(token, SECRET, alg)
        assert str(e.value) == f"Unsupported algorithm: {alg}. Supported: HS256, RS256, ES256"
    with pytest.raises(TypeError):
        rust_jwt_decode(token.encode(), SECRET)
    with pytest.raises(TypeError):
        rust_jwt_decode(token, SECRET.decode())
    with pytest.raises(TypeError):
        rust_jwt_decode(token, SECRET, previous_secret="old")
    with pytest.raises(TypeError):
        rust_jwt_decode(token, SECRET, issuer=b"sqv")


def test_jwt_decode_rs256(rsa_key, rsa_key2):
    c = claims(iss="svc", aud="api")
    token = pyjwt.encode(c, rsa_key, algorithm="RS256")
    spki = spki_pem(rsa_key)
    pkcs1 = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert spki.startswith(b"-----BEGIN PUBLIC KEY") and pkcs1.startswith(b"-----BEGIN RSA PUBLIC")
    assert rust_jwt_decode(token, spki, "RS256", issuer="svc", audience="api") == c
    assert rust_jwt_decode(token, pkcs1, "RS256") == c
    assert rust_jwt_decode(token, spki_pem(rsa_key2), "RS256") is None
    assert rust_jwt_decode(token, spki) is None  # HS256 with a PEM as the secret
    assert rust_jwt_decode(token, b"not a key", "RS256") is None
    # Our own RS256 tokens verify too.
    ours = rust_jwt_encode(c, pkcs8_pem(rsa_key), "RS256")
    assert rust_jwt_decode(ours, spki, "RS256") == c
    # An HS256 token is refused by an RS256 decoder (no key confusion).
    assert rust_jwt_decode(rust_jwt_encode(c, SECRET), spki, "RS256") is None
    forged = hs256_token(b'{"alg":"RS256","typ":"JWT"}', json.dumps(c).encode(), spki)
    assert rust_jwt_decode(forged, spki, "RS256") is None


def test_jwt_decode_rs256_previous_key(rsa_key, rsa_key2):
    token = rust_jwt_encode(claims(), pkcs8_pem(rsa_key), "RS256")
    decoded = rust_jwt_decode(token, spki_pem(rsa_key2), "RS256", previous_secret=spki_pem(rsa_key))
    assert decoded is not None and decoded["sub"] == "user-123"


def test_jwt_decode_es256(ec_key):
    c = claims(n=1)
    token = pyjwt.encode(c, ec_key, algorithm="ES256")
    assert rust_jwt_decode(token, spki_pem(ec_key), "ES256") == c
    other = ec.generate_private_key(ec.SECP256R1())
    assert rust_jwt_decode(token, spki_pem(other), "ES256") is None
    assert rust_jwt_decode(token, pkcs8_pem(ec_key), "ES256") is None  # a private key PEM
    ours = rust_jwt_encode(c, pkcs8_pem(ec_key), "ES256", key_id="ec")
    assert rust_jwt_decode(ours, spki_pem(ec_key), "ES256", key_id="ec") == c
    assert rust_jwt_decode(ours, spki_pem(ec_key), "RS256") is None


def test_jwt_decode_with_a_certificate(ec_key):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsed test")])
    start = datetime.datetime(2020, 1, 1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=36500))
        .sign(ec_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    token = rust_jwt_encode(claims(), pkcs8_pem(ec_key), "ES256")
    assert rust_jwt_decode(token, pem, "ES256") is not None
    assert rust_jwt_decode(token, pem, "RS256") is None


def test_jwt_decode_returns_fresh_dicts():
    token = rust_jwt_encode(claims(list=[1]), SECRET)
    a = rust_jwt_decode(token, SECRET)
    a["list"].append(2)
    assert rust_jwt_decode(token, SECRET)["list"] == [1]


def test_jwt_helpers_in_threads(ec_key):
    pem = pkcs8_pem(ec_key)
    pub = spki_pem(ec_key)
    errors = []

    def work(i):
        try:
            for j in range(20):
                c = claims(i=i, j=j)
                assert rust_jwt_decode(rust_jwt_encode(c, pem, "ES256"), pub, "ES256") == c
                assert rust_jwt_decode(rust_jwt_encode(c, SECRET), SECRET) == c
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
