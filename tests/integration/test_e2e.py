"""wsed end-to-end encryption (`E:` frames, PROTOCOL.md "End-to-end encryption (E:)") and message
signing (--signing-key-file) against the real binary.

The client side is built here on Debian's python3-cryptography from the bytes on the wire: a P-256
key pair, the server's `encryption_public_key` from server_hello, ECDH, HKDF-SHA256 (no salt, info
`wse-encryption/aes-gcm-key`), AES-256-GCM with a 12-byte nonce and the tag at the end. Clients are
python3-websockets connections (and raw-socket ones for byte-exact frames). Signatures are checked
with Python's hmac/hashlib. Run with tests/integration/run_tests.py -k e2e (under /usr/bin/python3).
Only 127.0.0.0/8; every wait is bounded and every server started here is stopped (by PID).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import tempfile
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import websockets

import redis_harness as R
import test_fanout as F
import test_redis as RD
import test_wse as W
import test_wse_features as WF
import wsed_harness as H
from test_wse import limit, token

BIN = W.BIN
INFO = b"wse-encryption/aes-gcm-key"
SIGNING_KEY = "signing-key-for-the-e2e-tests-0123456789"
SIGNING_KEY_2 = "second-signing-key-for-the-e2e-tests-987654"


def e2e_server(*args, workers=2):
    """wsed with --e2e, the API key, no server pings (they would interleave)."""
    return H.running(BIN, "--mode", "wse", "--workers", str(workers), "--ping-interval", "0",
                     "--api-key-file", F.key_file(), "--e2e", *args, env=W.env())


def compact(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)


def derive(private_key, server_point_b64):
    """The AES key from our private key and the server's base64 point (the client's half)."""
    point = base64.b64decode(server_point_b64, validate=True)
    assert len(point) == 65 and point[0] == 4, point
    server_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    shared = private_key.exchange(ec.ECDH(), server_pub)
    assert len(shared) == 32
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(shared)


def public_b64(private_key):
    raw = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    assert len(raw) == 65
    return base64.b64encode(raw).decode()


def seal(key, plain):
    nonce = os.urandom(12)
    return b"E:" + nonce + AESGCM(key).encrypt(nonce, plain, None)


def unseal(key, data):
    assert isinstance(data, bytes) and data.startswith(b"E:") and len(data) >= 30, data[:40]
    return AESGCM(key).decrypt(data[2:14], data[14:], None)


def hello(point_b64=None, encryption=True):
    p = {"client_version": "e2e-test/1", "protocol_version": 2, "features": {"encryption": encryption}}
    if point_b64 is not None:
        p["encryption_public_key"] = point_b64
    return compact({"c": "WSE", "t": "client_hello", "p": p, "v": 1})


class Client:
    """One python3-websockets connection past server_ready; key is set once keyed."""

    def __init__(self, ws):
        self.ws, self.key, self.cid = ws, None, None

    @classmethod
    async def open(cls, port, sub="alice", query=""):
        ws = await websockets.connect("ws://127.0.0.1:%d/wse%s" % (port, query), open_timeout=5,
                                      extra_headers={"Authorization": "Bearer " + token(sub)},
                                      max_size=None, compression=None)
        c = cls(ws)
        ready = json.loads(await c.recv_raw())
        assert ready["t"] == "server_ready", ready
        c.cid = ready["p"]["details"]["connection_id"]
        c.ready = ready
        return c

    async def recv_raw(self, timeout=5):
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def recv(self, timeout=5):
        """The next message as (sealed?, plaintext bytes)."""
        m = await self.recv_raw(timeout)
        if isinstance(m, bytes) and m.startswith(b"E:"):
            assert self.key is not None, "E: frame on an unkeyed connection: %r" % m[:40]
            return True, unseal(self.key, m)
        return False, m.encode() if isinstance(m, str) else m

    async def recv_json(self, sealed, timeout=5):
        was, plain = await self.recv(timeout)
        assert was == sealed, "want sealed=%s, got %r" % (sealed, plain[:200])
        return json.loads(plain)

    async def key_exchange(self):
        priv = ec.generate_private_key(ec.SECP256R1())
        await self.ws.send(hello(public_b64(priv)))
        sh = await self.recv_json(False)  # the keying server_hello itself is in the clear
        assert sh["t"] == "server_hello" and sh["p"]["features"]["encryption"] is True, sh
        self.key = derive(priv, sh["p"]["encryption_public_key"])
        return sh

    async def send_sealed(self, obj_or_bytes):
        plain = obj_or_bytes if isinstance(obj_or_bytes, bytes) else compact(obj_or_bytes).encode()
        await self.ws.send(seal(self.key, plain))

    async def close(self):
        await self.ws.close()


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def subscribe(c, topics, sealed):
    msg = {"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": topics}, "v": 1}
    if sealed:
        await c.send_sealed(msg)
    else:
        await c.ws.send(compact(msg))
    reply = await c.recv_json(sealed)
    assert reply["t"] == "subscription_update" and reply["p"]["success_topics"] == topics, reply
    return reply


def metric(port, name, **labels):
    return WF.family_sum(H.get_metrics(port)[0], name, **labels) or 0


# ---------------------------------------------------------------------------------------------
# the exchange, publications, pings
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_e2e_keyed_and_plain_subscribers_of_one_topic():
    """server_ready advertises encryption; the keyed subscriber gets each publication as E: (the
    JSON inside), the unkeyed one the same publication as text; its subscribe went in E: and was
    answered in E:. /metrics counts the keyed connection and the sealed / opened messages."""
    with e2e_server() as srv:
        async def go():
            keyed, plain = await Client.open(srv.port, "k"), await Client.open(srv.port, "p")
            assert keyed.ready["p"]["details"]["features"]["encryption"] is True, keyed.ready
            sh = await keyed.key_exchange()
            assert list(sh["p"]) == ["connection_id", "encryption_public_key", "features", "limits",
                                     "ping_interval", "protocol_version", "server_time", "server_version"], sh
            await subscribe(keyed, ["news"], sealed=True)
            await subscribe(plain, ["news"], sealed=False)
            assert metric(srv.port, "wsed_e2e_keyed_connections") == 1
            for n in range(3):
                st, _, doc = F.post_once(srv.port, [{"topic": "news", "message": {"t": "story", "p": {"n": n}}}])
                assert st == 200, (st, doc)
                got = await keyed.recv_json(True)
                clear = await plain.recv_json(False)
                assert got == clear and got["t"] == "story" and got["p"] == {"n": n}, (got, clear)
            await keyed.close()
            await plain.close()
        run(go())
        m = H.get_metrics(srv.port)[0]
        assert WF.family_sum(m, "wsed_e2e_messages_total", direction="encrypted") >= 4, m.get("wsed_e2e_messages_total")
        assert WF.family_sum(m, "wsed_e2e_messages_total", direction="decrypted") == 1
        deadline = time.monotonic() + 3
        while metric(srv.port, "wsed_e2e_keyed_connections") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(srv.port, "wsed_e2e_keyed_connections") == 0, "the gauge drops at close"


@limit(30)
def test_e2e_ping_answered_inside_e_and_clear_ping_in_clear():
    """An E: ping gets its PONG inside E:; a plain ping on the keyed connection gets a plain PONG
    (PROTOCOL.md's exception)."""
    with e2e_server() as srv:
        async def go():
            c = await Client.open(srv.port)
            await c.key_exchange()
            await c.send_sealed({"c": "WSE", "t": "ping", "p": {"timestamp": 1234}, "v": 1})
            sealed, plain = await c.recv()
            assert sealed and plain.startswith(b'{"c":"WSE","t":"PONG"'), plain
            assert json.loads(plain)["p"]["client_timestamp"] == 1234
            await c.ws.send(compact({"c": "WSE", "t": "ping", "p": {"timestamp": 99}, "v": 1}))
            sealed, plain = await c.recv()
            assert not sealed and json.loads(plain)["p"]["client_timestamp"] == 99, plain
            await c.close()
        run(go())


@limit(30)
def test_e2e_bad_public_key_gets_key_exchange_failed_then_clear_hello():
    """Not base64, a 64-byte point, a point off the curve, no key at all: KEY_EXCHANGE_FAILED
    (text, recoverable) then server_hello with encryption:false; the connection stays unkeyed (an E:
    frame is INVALID_MESSAGE) and a good hello afterwards keys it."""
    good = ec.generate_private_key(ec.SECP256R1())
    raw = base64.b64decode(public_b64(good))
    off_curve = raw[:64] + bytes([raw[64] ^ 1])
    bad_keys = ["not base64!", base64.b64encode(raw[:64]).decode(), base64.b64encode(off_curve).decode(), None]
    with e2e_server() as srv:
        async def go():
            for bad in bad_keys:
                c = await Client.open(srv.port)
                await c.ws.send(hello(bad))
                was, raw = await c.recv()
                assert not was and raw.startswith(
                    b'{"c":"WSE","t":"error","p":{"code":"KEY_EXCHANGE_FAILED","message":"'), raw
                err = json.loads(raw)
                assert err["p"]["recoverable"] is True and err["c"] == "WSE", err
                sh = await c.recv_json(False)
                assert sh["t"] == "server_hello" and sh["p"]["features"]["encryption"] is False, sh
                assert "encryption_public_key" not in sh["p"], sh
                await c.ws.send(seal(os.urandom(32), b'{"t":"ping"}'))
                err = await c.recv_json(False)
                assert err["p"]["code"] == "INVALID_MESSAGE", err
                await c.key_exchange()  # a later good hello keys it
                await c.send_sealed({"t": "ping", "p": {"timestamp": 5}})
                sealed, pong = await c.recv()
                assert sealed and b'"PONG"' in pong, pong
                await c.close()
        run(go())
        assert metric(srv.port, "wsed_e2e_failures_total", reason="key_exchange") == 4
        assert metric(srv.port, "wsed_e2e_failures_total", reason="unkeyed") == 4


@limit(30)
def test_e2e_second_hello_does_not_rekey():
    """A second client_hello with a new point (in the clear or inside E:) is answered inside E:
    under the first key, with the same server point; the key stays."""
    with e2e_server() as srv:
        async def go():
            c = await Client.open(srv.port)
            first = await c.key_exchange()
            other = ec.generate_private_key(ec.SECP256R1())
            await c.ws.send(hello(public_b64(other)))
            again = await c.recv_json(True)
            assert again["t"] == "server_hello" and again["p"]["features"]["encryption"] is True, again
            assert again["p"]["encryption_public_key"] == first["p"]["encryption_public_key"], again
            await c.send_sealed(hello(public_b64(other)).encode())
            third = await c.recv_json(True)
            assert third["p"]["encryption_public_key"] == first["p"]["encryption_public_key"]
            await c.send_sealed({"t": "ping", "p": {"timestamp": 7}})
            assert (await c.recv_json(True))["t"] == "PONG"
            await c.close()
        run(go())
        assert metric(srv.port, "wsed_e2e_failures_total", reason="key_exchange") == 0


@limit(30)
def test_e2e_truncated_and_garbled_frames_close_4400():
    """E: with fewer than 28 bytes, a flipped ciphertext bit, a flipped tag bit, another key: each
    closes the connection with 4400 (counted); the server keeps serving."""
    with e2e_server() as srv:
        async def one(mangle):
            c = await Client.open(srv.port)
            await c.key_exchange()
            frame = mangle(c.key, seal(c.key, b'{"t":"ping","p":{"timestamp":1}}'))
            await c.ws.send(frame)
            try:
                m = await c.recv_raw(5)
                raise AssertionError("answered instead of closed: %r" % (m,))
            except websockets.ConnectionClosed as e:
                assert e.rcvd is not None and e.rcvd.code == 4400, e
                assert e.rcvd.reason == "decrypt_failed", e

        def flip(at):
            return lambda key, f: f[:at] + bytes([f[at] ^ 1]) + f[at + 1:]

        cases = [lambda key, f: f[:2 + 27], lambda key, f: b"E:", flip(2 + 12 + 3), flip(-1), flip(2),
                 lambda key, f: seal(os.urandom(32), b'{"t":"ping"}')]

        async def go():
            for mangle in cases:
                await one(mangle)
            c = await Client.open(srv.port)  # still serving
            await c.key_exchange()
            await c.close()
        run(go())
        assert metric(srv.port, "wsed_e2e_failures_total", reason="decrypt") == len(cases)


@limit(30)
def test_e2e_msgpack_connection_gets_m_inside_e():
    """?format=msgpack + E2E: an E:(M: msgpack) message is decrypted and handled (--inbound echo:
    the per-connection echo comes back as E:(M: ...)); the subscription reply and a publication,
    text JSON on a msgpack connection, come as E:(JSON)."""
    with e2e_server("--inbound", "echo") as srv:
        async def go():
            c = await Client.open(srv.port, query="?format=msgpack")
            await c.key_exchange()
            await c.send_sealed(b"M:" + WF.packb({"t": "chat", "p": {"text": "hi", "n": 3}, "v": 1}))
            sealed, plain = await c.recv()
            assert sealed and plain.startswith(b"M:"), plain[:40]
            WF.check_echo_doc(WF.unpackb(plain[2:]), "chat", {"text": "hi", "n": 3})
            await c.send_sealed(b"M:" + WF.packb({"c": "WSE", "t": "subscription_update",
                                                  "p": {"action": "subscribe", "topics": ["mp"]}, "v": 1}))
            # System messages and publications are text JSON on a msgpack connection: the same
            # JSON inside E:.
            reply = await c.recv_json(True)
            assert reply["t"] == "subscription_update" and reply["p"]["success_topics"] == ["mp"], reply
            st, _, doc = F.post_once(srv.port, [{"topic": "mp", "message": {"t": "tick", "p": {"k": [1, 2]}}}])
            assert st == 200, (st, doc)
            doc = await c.recv_json(True)
            assert doc["t"] == "tick" and doc["p"] == {"k": [1, 2]}, doc
            await c.close()
        run(go())


@limit(40)
def test_e2e_queue_group_delivery_and_recovery_replay_are_sealed():
    """--recovery: a keyed connection's queue group deliveries arrive as E:; publications it missed,
    replayed by a recovering subscribe, arrive as E: (stamped, byte for byte the live JSON an
    unkeyed subscriber got), before the sealed reply."""
    with e2e_server("--recovery") as srv:
        async def go():
            member = await Client.open(srv.port, "m")
            await member.key_exchange()
            await member.send_sealed({"c": "WSE", "t": "subscription_update",
                                      "p": {"action": "subscribe", "topics": ["jobs"], "queue_group": "workers"},
                                      "v": 1})
            reply = await member.recv_json(True)
            assert reply["p"]["success_topics"] == ["jobs"], reply
            st, _, doc = F.post_once(srv.port, [{"topic": "jobs", "message": {"t": "job", "p": {"n": n}}}
                                                for n in range(3)])
            assert st == 200, (st, doc)
            got = [await member.recv_json(True) for _ in range(3)]
            assert [g["p"]["n"] for g in got] == [0, 1, 2], got
            # Recovery: a plain subscriber sees the live frames; a keyed one recovers them.
            plain = await Client.open(srv.port, "p")
            await subscribe(plain, ["hist"], sealed=False)
            st, _, doc = F.post_once(srv.port, [{"topic": "hist", "message": {"t": "h", "p": {"n": n}}}
                                                for n in range(4)])
            assert st == 200, (st, doc)
            live = [(await plain.recv())[1] for _ in range(4)]
            first = json.loads(live[0])
            keyed = await Client.open(srv.port, "k")
            await keyed.key_exchange()
            await keyed.send_sealed({"c": "WSE", "t": "subscription_update",
                                     "p": {"action": "subscribe", "topics": ["hist"], "recover": True,
                                           "recovery": {"hist": {"epoch": first["e"], "offset": first["o"]}}},
                                     "v": 1})
            replayed = []
            for _ in range(3):
                sealed, plain_bytes = await keyed.recv()
                assert sealed, plain_bytes
                replayed.append(plain_bytes)
            assert replayed == live[1:], (replayed, live)
            reply = await keyed.recv_json(True)
            assert reply["t"] == "subscription_update" and reply["p"]["recovered"] is True, reply
            for c in (member, plain, keyed):
                await c.close()
        run(go())


@limit(60)
def test_e2e_redis_delivery_from_another_instance_is_sealed():
    """Two instances on one Redis: a publication made on A reaches B's keyed subscriber as E: and
    B's unkeyed one in the clear (the bridge's delivery path)."""
    with R.RedisServer() as redis, RD.instances(redis, extra=("--e2e",)) as (a, b):
        async def go():
            keyed, plain = await Client.open(b.port, "k"), await Client.open(b.port, "p")
            await keyed.key_exchange()
            await subscribe(keyed, ["remote"], sealed=True)
            await subscribe(plain, ["remote"], sealed=False)
            deadline = time.monotonic() + 10
            got = None
            n = 0
            while got is None and time.monotonic() < deadline:  # until B's SUBSCRIBE is in place
                st, _, doc = F.post_once(a.port, [{"topic": "remote", "message": {"t": "r", "p": {"n": n}}}])
                assert st == 200, (st, doc)
                try:
                    got = await keyed.recv_json(True, timeout=0.5)
                except asyncio.TimeoutError:
                    n += 1
            assert got is not None and got["t"] == "r", got
            clear = await plain.recv_json(False)
            assert clear == got, (clear, got)
            await keyed.close()
            await plain.close()
        run(go(), timeout=40)


@limit(30)
def test_e2e_command_send_through_http_api_is_sealed():
    """POST /api/command {"op":"send"} to a keyed connection arrives as E: (the JSON inside); to an
    unkeyed one in the clear; a broadcast likewise."""
    with e2e_server() as srv:
        async def go():
            keyed, plain = await Client.open(srv.port, "k"), await Client.open(srv.port, "p")
            await keyed.key_exchange()
            for c, sealed in ((keyed, True), (plain, False)):
                st, _, doc = F.post_once(srv.port, {"op": "send", "connection_id": c.cid,
                                                    "message": {"t": "direct", "p": {"to": c.cid}}},
                                         path="/api/command")
                assert st == 200, (st, doc)
                got = await c.recv_json(sealed)
                assert got["t"] == "direct" and got["p"] == {"to": c.cid}, got
            st, _, doc = F.post_once(srv.port, [{"broadcast": True, "message": {"t": "all", "p": {}}}])
            assert st == 200, (st, doc)
            assert (await keyed.recv_json(True))["t"] == "all"
            assert (await plain.recv_json(False))["t"] == "all"
            await keyed.close()
            await plain.close()
        run(go())


@limit(30)
def test_e2e_off_by_default():
    """Without --e2e: server_ready says encryption:false, a hello asking for it gets server_hello
    encryption:false (no error, no key) and an E: frame is INVALID_MESSAGE."""
    with H.running(BIN, "--mode", "wse", "--workers", "1", "--ping-interval", "0", env=W.env()) as srv:
        async def go():
            c = await Client.open(srv.port)
            assert c.ready["p"]["details"]["features"]["encryption"] is False
            await c.ws.send(hello(public_b64(ec.generate_private_key(ec.SECP256R1()))))
            sh = await c.recv_json(False)
            assert sh["t"] == "server_hello" and sh["p"]["features"]["encryption"] is False, sh
            assert "encryption_public_key" not in sh["p"], sh
            await c.ws.send(seal(os.urandom(32), b"{}"))
            err = await c.recv_json(False)
            assert err["p"]["code"] == "INVALID_MESSAGE" and "off" in err["p"]["message"], err
            await c.close()
        run(go())


# ---------------------------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------------------------

def raw_p(text):
    """The exact bytes of the top-level "p" value of a compact JSON object text."""
    doc = json.loads(text)
    p = compact(doc["p"]).encode()
    assert p in text, (p, text)
    return p


def expected_sig(key, payload_bytes):
    digest = hashlib.sha256(payload_bytes).hexdigest().encode()
    return hmac.new(key.encode(), digest, hashlib.sha256).hexdigest()


def check_signed(text, key):
    doc = json.loads(text)
    assert doc.get("sig") == expected_sig(key, raw_p(text)), (doc, key)
    return doc


@limit(45)
def test_e2e_signing_publications_and_sends():
    """--signing-key-file: a publication, a per-connection send (the echo of --inbound echo) and
    an API command send carry "sig" = hex(HMAC-SHA256(key, hex(SHA-256(p)))) over the exact bytes
    of p, checked with hmac/hashlib; inside E: too. A publication with its own "sig" is refused.
    SIGHUP reloads the key."""
    with tempfile.TemporaryDirectory() as d:
        kf = os.path.join(d, "signing.key")
        WF._write(kf, SIGNING_KEY + "\n")
        with e2e_server("--signing-key-file", kf, "--inbound", "echo") as srv:
            async def go(key):
                c, k = await Client.open(srv.port, "s"), await Client.open(srv.port, "sk")
                await k.key_exchange()
                await subscribe(c, ["sig.t"], sealed=False)
                await subscribe(k, ["sig.t"], sealed=True)
                st, _, doc = F.post_once(srv.port, [{"topic": "sig.t", "message": {"t": "n", "p": {"a": [1, "x"]}}}])
                assert st == 200, (st, doc)
                sealed, text = await c.recv()
                assert not sealed
                check_signed(text, key)
                sealed, text = await k.recv()
                assert sealed
                check_signed(text, key)
                await c.ws.send(compact({"t": "chat", "p": {"text": "hello", "n": 1}}))
                sealed, text = await c.recv()
                assert check_signed(text, key)["t"] == "chat"
                st, _, doc = F.post_once(srv.port, {"op": "send", "connection_id": c.cid,
                                                    "message": {"t": "d", "p": {"z": True}}}, path="/api/command")
                assert st == 200, (st, doc)
                _, text = await c.recv()
                check_signed(text, key)
                await c.close()
                await k.close()
            run(go(SIGNING_KEY))
            st, _, doc = F.post_once(srv.port, [{"topic": "sig.t", "message": {"t": "n", "p": {}, "sig": "forged"}}])
            assert st == 400 and doc["accepted"] == 0 and "sig" in doc["error"], (st, doc)
            WF._write(kf, SIGNING_KEY_2)
            srv.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "signing key reloaded" not in srv.stderr_text() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "signing key reloaded" in srv.stderr_text(), srv.stderr_text()[-500:]
            run(go(SIGNING_KEY_2))
            assert metric(srv.port, "wsed_signed_messages_total") >= 6


def test_e2e_flags_checked_at_startup():
    """A signing key under 32 bytes or a missing file: exit 2 with the reason; --help lists both."""
    with tempfile.TemporaryDirectory() as d:
        short = os.path.join(d, "short.key")
        WF._write(short, "too-short")
        for path, want in ((short, "at least 32 bytes"), (os.path.join(d, "none"), "--signing-key-file")):
            rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0", "--signing-key-file", path], env=W.env())
            assert rc == 2 and want in err, (rc, err)
    rc, out, err = H.run_cmd([BIN, "--help"])
    assert rc == 0 and "--e2e" in out and "--signing-key-file" in out, out
