"""wsed WSE-mode features (issue 4) against the real binary: wse as the default mode, MessagePack
(`?format=msgpack`, `M:` frames), inbound binary (`M:`, raw msgpack, `C:` + zlib), outbound
compression (`C:` + zlib over --compression-threshold), --inbound log, the inbound rate limit
(RATE_LIMITED, 4429), --max-connections-per-ip (HTTP 429, both modes), SIGHUP key rotation,
RS256/ES256 public keys (and HS key confusion), --jwt-kid and the WSE /metrics families.

Run with tests/integration/run_tests.py -k wse_feat (under /usr/bin/python3). Tokens are minted
independently with Debian's python3-jwt (PyJWT; cryptography for RS256/ES256), keys with the openssl
CLI; one test drives the server through Debian's python3-websockets. Only 127.0.0.0/8; every wait is
bounded and every server started here is stopped (by PID).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import struct
import subprocess
import tempfile
import time
import zlib

import jwt

import test_wse as W
import wsed_harness as H
from test_wse import (limit, token, connect, message, next_text, check_error, expect_refused, expect_ready,
                      check_server_ready)
from wsed_harness import OP_BINARY, OP_TEXT

BIN = W.BIN
SECRET = W.SECRET
SECRET_A = "rotation-secret-A-at-least-32-bytes-long!"
SECRET_B = "rotation-secret-B-at-least-32-bytes-long!"
SECRET_C = "rotation-secret-C-at-least-32-bytes-long!"
ENVELOPE_KEYS = {"c", "id", "p", "seq", "t", "ts", "v"}


def wse(*args, secret=SECRET, mode=("--mode", "wse")):
    """wsed in WSE mode (or the default mode with mode=()), the HMAC secret in the environment
    (secret=None: no secret; an empty WSED_JWT_SECRET)."""
    return H.running(BIN, *mode, "--workers", "2", *args, env=W.env(WSED_JWT_SECRET=secret or ""))


def ping(ws, n, stamp):
    """Send an app ping and check that message n is its PONG."""
    ws.send_frame(OP_TEXT, b'{"c":"WSE","t":"ping","p":{"timestamp":%d},"v":1}' % stamp)
    raw = next_text(ws, n)
    assert raw.startswith(b'{"c":"WSE","t":"PONG"') and json.loads(raw)["p"]["client_timestamp"] == stamp, raw
    return raw


def check_echo_doc(doc, t, p, c="U"):
    assert set(doc) == ENVELOPE_KEYS, doc
    assert doc["t"] == t and doc["p"] == p and doc["c"] == c and doc["v"] == 1, doc
    assert isinstance(doc["seq"], int) and not isinstance(doc["seq"], bool), doc
    assert W.UUID7_RE.match(doc["id"]) and W.TS_RE.match(doc["ts"]), doc


def family_sum(metrics, name, **labels):
    """Sum of the series of `name` whose labels include `labels`, over the shards (None: no
    series): per-shard families have no total series."""
    return H.metric_value(metrics, name, **labels)


def wait_metric(port, name, at_least, timeout=3.0, **labels):
    deadline = time.monotonic() + timeout
    while True:
        m, _ = H.get_metrics(port)
        v = family_sum(m, name, **labels)
        if (v or 0) >= at_least or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# MessagePack: python3-msgpack when installed, else a small codec (the subset JSON needs + bin)
# ---------------------------------------------------------------------------------------------

try:
    import msgpack as _msgpack
except ImportError:
    _msgpack = None


def _pack(o, out):
    if o is None:
        out += b"\xc0"
    elif o is True or o is False:
        out += b"\xc3" if o else b"\xc2"
    elif isinstance(o, int):
        if 0 <= o < 128:
            out += bytes([o])
        elif -32 <= o < 0:
            out += struct.pack("b", o)
        elif 0 <= o < 1 << 64:
            out += b"\xcf" + struct.pack(">Q", o)
        else:
            out += b"\xd3" + struct.pack(">q", o)
    elif isinstance(o, float):
        out += b"\xcb" + struct.pack(">d", o)
    elif isinstance(o, str):
        b = o.encode("utf-8")
        if len(b) < 32:
            out += bytes([0xA0 | len(b)])
        elif len(b) < 256:
            out += b"\xd9" + bytes([len(b)])
        elif len(b) < 65536:
            out += b"\xda" + struct.pack(">H", len(b))
        else:
            out += b"\xdb" + struct.pack(">I", len(b))
        out += b
    elif isinstance(o, (bytes, bytearray)):
        out += b"\xc6" + struct.pack(">I", len(o)) + bytes(o)
    elif isinstance(o, (list, tuple)):
        out += (bytes([0x90 | len(o)]) if len(o) < 16 else b"\xdd" + struct.pack(">I", len(o)))
        for x in o:
            _pack(x, out)
    elif isinstance(o, dict):
        out += (bytes([0x80 | len(o)]) if len(o) < 16 else b"\xdf" + struct.pack(">I", len(o)))
        for k, v in o.items():
            _pack(k, out)
            _pack(v, out)
    else:
        raise TypeError(type(o))


def packb(o):
    if _msgpack:
        return _msgpack.packb(o, use_bin_type=True)
    out = bytearray()
    _pack(o, out)
    return bytes(out)


def _unpack(b, i):
    t = b[i]
    i += 1
    fixed = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
             0xCA: ">f", 0xCB: ">d"}
    if t <= 0x7F:
        return t, i
    if t >= 0xE0:
        return t - 256, i
    if 0x80 <= t <= 0x8F or t in (0xDE, 0xDF):
        n, i = (t & 0x0F, i) if t <= 0x8F else _len(b, i, 2 if t == 0xDE else 4)
        d = {}
        for _ in range(n):
            k, i = _unpack(b, i)
            d[k], i = _unpack(b, i)
        return d, i
    if 0x90 <= t <= 0x9F or t in (0xDC, 0xDD):
        n, i = (t & 0x0F, i) if t <= 0x9F else _len(b, i, 2 if t == 0xDC else 4)
        a = []
        for _ in range(n):
            x, i = _unpack(b, i)
            a.append(x)
        return a, i
    if 0xA0 <= t <= 0xBF or t in (0xD9, 0xDA, 0xDB):
        n, i = (t & 0x1F, i) if t <= 0xBF else _len(b, i, {0xD9: 1, 0xDA: 2, 0xDB: 4}[t])
        if i + n > len(b):
            raise ValueError("truncated str")
        return b[i:i + n].decode("utf-8"), i + n
    if t in (0xC4, 0xC5, 0xC6):
        n, i = _len(b, i, {0xC4: 1, 0xC5: 2, 0xC6: 4}[t])
        if i + n > len(b):
            raise ValueError("truncated bin")
        return bytes(b[i:i + n]), i + n
    if t in fixed:
        f = fixed[t]
        n = struct.calcsize(f)
        if i + n > len(b):
            raise ValueError("truncated number")
        return struct.unpack_from(f, b, i)[0], i + n
    if t == 0xC0:
        return None, i
    if t in (0xC2, 0xC3):
        return t == 0xC3, i
    raise ValueError("msgpack type 0x%02x not supported here" % t)


def _len(b, i, n):
    if i + n > len(b):
        raise ValueError("truncated length")
    return int.from_bytes(b[i:i + n], "big"), i + n


def unpackb(b):
    if _msgpack:
        return _msgpack.unpackb(b, raw=False, strict_map_key=False)
    o, i = _unpack(bytes(b), 0)
    if i != len(b):
        raise ValueError("%d bytes after the msgpack object" % (len(b) - i))
    return o


def test_wse_feat_msgpack_codec_self_check():
    """The test's own codec round-trips (so the other tests can trust it)."""
    doc = {"t": "chat", "p": {"text": "hi" * 40, "n": 3, "neg": -5, "big": 1 << 40, "f": 1.5, "l": [None, True,
                                                                                                  False]}, "v": 1}
    assert unpackb(packb(doc)) == doc
    assert unpackb(b"\x83\xa1t\xa4chat\xa1v\x01\xa1p\x80") == {"t": "chat", "v": 1, "p": {}}
    for bad in (b"\xc1", b"\x81\xa1t", b"\xa5ab", b"\x01\x02"):
        try:
            unpackb(bad)
        except Exception:
            continue
        raise AssertionError("decoded garbage %r" % bad)


# ---------------------------------------------------------------------------------------------
# 1. wse is the default mode
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_wse_feat_default_mode_is_wse():
    with wse(mode=()) as srv:
        assert "mode wse" in srv.first_line, srv.first_line
        expect_ready(srv, token("alice"), "alice")
        expect_refused(connect(srv, None), "AUTH_REQUIRED")
    # No key at all (and no --insecure-no-auth): exit 2 before serving, naming the secret.
    rc, out, err = H.run_cmd([BIN, "--host", H.HOST, "--port", "0"], timeout=8,
                             env={"WSED_JWT_SECRET": "", "WSED_JWT_PREVIOUS_SECRET": ""})
    assert rc == 2 and "secret" in err.lower() and "listening" not in out, (rc, out, err)
    # --mode echo needs no key.
    with H.running(BIN, "--mode", "echo", "--workers", "1", env=W.env(WSED_JWT_SECRET="")) as srv:
        assert "mode echo" in srv.first_line, srv.first_line
        ws = H.RawWS(srv.port)
        ws.send_frame(OP_TEXT, b"hello")
        assert message(ws, 1) == ("text", b"hello"), ws.events
        ws.finish()


# ---------------------------------------------------------------------------------------------
# 2./3. MessagePack out, binary in
# ---------------------------------------------------------------------------------------------

async def _msgpack_with_websockets(port, tok):
    import websockets
    async with websockets.connect("ws://127.0.0.1:%d/wse?format=msgpack" % port, open_timeout=5,
                                  extra_headers={"Cookie": "access_token=" + tok}) as c:
        ready = await asyncio.wait_for(c.recv(), 5)
        await c.send(json.dumps({"t": "chat", "p": {"text": "hi", "n": 3}, "v": 1}))
        echo = await asyncio.wait_for(c.recv(), 5)
        await c.send('{"c":"WSE","t":"ping","p":{"timestamp":77},"v":1}')
        pong = await asyncio.wait_for(c.recv(), 5)
        return ready, echo, pong


@limit(30)
def test_wse_feat_msgpack_echo():
    """?format=msgpack: the echo comes back as a binary M: + msgpack map; server_ready and PONG stay
    text JSON. Driven through python3-websockets."""
    with wse("--inbound", "echo") as srv:
        ready, echo, pong = asyncio.run(asyncio.wait_for(_msgpack_with_websockets(srv.port, token("alice")), 20))
        assert isinstance(ready, str), ready
        check_server_ready(ready, "alice")
        assert isinstance(echo, bytes) and echo.startswith(b"M:"), echo
        doc = unpackb(echo[2:])
        assert isinstance(doc, dict), doc
        check_echo_doc(doc, "chat", {"text": "hi", "n": 3})
        assert isinstance(pong, str) and pong.startswith('{"c":"WSE","t":"PONG"'), pong
        assert json.loads(pong)["p"]["client_timestamp"] == 77, pong


@limit(30)
def test_wse_feat_inbound_binary_frames():
    """Binary frames in: M: + msgpack, raw msgpack, C: + zlib (JSON or msgpack) all decode to the
    same envelope (echoed); garbage gets a text INVALID_MESSAGE and the connection stays usable."""
    with wse("--inbound", "echo") as srv:
        ws = connect(srv, token(), path="/wse?format=msgpack")
        check_server_ready(next_text(ws, 1), "alice")
        n = 1

        def echo_of(payload, t, p):
            nonlocal n
            ws.send_frame(OP_BINARY, payload)
            n += 1
            kind, raw = message(ws, n)
            assert kind == "binary" and raw.startswith(b"M:"), (payload, kind, raw)
            check_echo_doc(unpackb(raw[2:]), t, p)

        echo_of(b"M:" + packb({"t": "chat", "p": {"k": 1}, "v": 1}), "chat", {"k": 1})
        echo_of(packb({"t": "raw", "p": {"k": [1, 2]}}), "raw", {"k": [1, 2]})
        echo_of(b"C:" + zlib.compress(b'{"t":"zipped","p":{"text":"' + b"z" * 3000 + b'"},"v":1}'),
                "zipped", {"text": "z" * 3000})
        echo_of(b"C:" + zlib.compress(packb({"t": "zipped_mp", "p": {"k": "v"}})), "zipped_mp", {"k": "v"})
        # A ping as M: + msgpack gets a (text) PONG.
        ws.send_frame(OP_BINARY, b"M:" + packb({"c": "WSE", "t": "ping", "p": {"timestamp": 31}, "v": 1}))
        n += 1
        raw = next_text(ws, n)
        assert raw.startswith(b'{"c":"WSE","t":"PONG"') and json.loads(raw)["p"]["client_timestamp"] == 31, raw
        # Garbage: an invalid msgpack byte, a C: that is not zlib, M: with a truncated map.
        for junk in (b"\xc1garbage\xff", b"C:this is not zlib", b"M:\x82\xa1t"):
            ws.send_frame(OP_BINARY, junk)
            n += 1
            check_error(next_text(ws, n), "INVALID_MESSAGE")
        n += 1
        ping(ws, n, 32)
        assert not ws.closed_by_server and not ws.eof, ws.events
        ws.finish()
        # On a JSON connection binary input is decoded the same way and echoed as text JSON.
        ws = connect(srv, token())
        next_text(ws, 1)
        ws.send_frame(OP_BINARY, b"M:" + packb({"t": "chat", "p": {"k": 1}}))
        check_echo_doc(json.loads(next_text(ws, 2)), "chat", {"k": 1})
        ws.finish()


@limit(30)
def test_wse_feat_inbound_binary_limits():
    """C: is inflated under a cap (a zlib bomb is refused: INVALID_MESSAGE, or close 1009), msgpack
    nested deeper than 64 is refused; the server survives both."""
    with wse("--inbound", "echo", "--max-message-size", "1MiB") as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        nested = {"t": "deep", "p": {"x": 1}}
        for _ in range(20):
            nested["p"] = {"x": [nested["p"]]}
        ws.send_frame(OP_BINARY, b"M:" + packb(nested))
        check_echo_doc(json.loads(next_text(ws, 2)), "deep", nested["p"])
        deep = [1]
        for _ in range(100):
            deep = [deep]
        ws.send_frame(OP_BINARY, b"M:" + packb({"t": "deep", "p": {"x": deep}}))
        check_error(next_text(ws, 3), "INVALID_MESSAGE")
        ping(ws, 4, 4)
        bomb = zlib.compress(b'{"t":"bomb","p":{"s":"' + b"0" * (64 << 20) + b'"}}', 9)
        assert len(bomb) < 200 << 10, len(bomb)
        ws.send_frame(OP_BINARY, b"C:" + bomb)
        assert ws.wait_for(lambda s: len(s.messages()) >= 5 or s.closed_by_server or s.eof, 10), ws.events[-3:]
        if ws.closed_by_server or ws.eof:
            assert ws.close_code() == 1009, [e for e in ws.events if e[0] != "text"]
            ws.abort()
        else:
            kind, raw = ws.messages()[4]
            assert kind == "text", (kind, raw[:100])
            check_error(raw, "INVALID_MESSAGE")
            ping(ws, 6, 6)
            ws.finish()
        ws = connect(srv, token())
        next_text(ws, 1)
        ping(ws, 2, 7)
        ws.finish()


# ---------------------------------------------------------------------------------------------
# 4. outbound compression
# ---------------------------------------------------------------------------------------------

def _ready_features(raw):
    return json.loads(raw)["p"]["details"]["features"]


@limit(40)
def test_wse_feat_compression_threshold():
    big = {"text": "x" * 3000, "n": 1}
    with wse("--inbound", "echo", "--compression-threshold", "1024") as srv:
        ws = connect(srv, token())
        assert _ready_features(next_text(ws, 1))["compression"] is True
        ws.send_frame(OP_TEXT, json.dumps({"t": "big", "p": big, "v": 1}).encode())
        kind, raw = message(ws, 2)
        assert kind == "binary" and raw.startswith(b"C:"), (kind, raw[:80])
        plain = zlib.decompress(raw[2:])
        assert len(plain) > 1024 and len(raw) < len(plain), (len(raw), len(plain))
        check_echo_doc(json.loads(plain), "big", big)
        ws.send_frame(OP_TEXT, b'{"t":"small","p":{"a":1},"v":1}')
        raw = next_text(ws, 3)
        check_echo_doc(json.loads(raw), "small", {"a": 1})
        # The boundary: "longer than the threshold". Echoes differ only in the text's length
        # (seq stays one digit), so size one of exactly 1024 bytes and one of 1025.
        ws.send_frame(OP_TEXT, b'{"t":"edge","p":{"s":""},"v":1}')
        base = len(next_text(ws, 4))
        for n, extra, want in ((5, 0, "text"), (6, 1, "binary")):
            s = "y" * (1024 - base + extra)
            ws.send_frame(OP_TEXT, json.dumps({"t": "edge", "p": {"s": s}, "v": 1}, separators=(",", ":")).encode())
            kind, raw = message(ws, n)
            plain = raw if kind == "text" else zlib.decompress(raw[2:])
            assert len(plain) == 1024 + extra, (len(plain), plain[:120])
            assert kind == want, "echo JSON of %d bytes (threshold 1024) came as %s" % (len(plain), kind)
        ws.finish()
    with wse("--inbound", "echo", "--compression-threshold", "0") as srv:
        ws = connect(srv, token())
        assert _ready_features(next_text(ws, 1))["compression"] is False
        ws.send_frame(OP_TEXT, json.dumps({"t": "big", "p": big, "v": 1}).encode())
        check_echo_doc(json.loads(next_text(ws, 2)), "big", big)
        ws.finish()
    with wse("--inbound", "echo") as srv:   # default threshold 1024: compression on
        ws = connect(srv, token())
        assert _ready_features(next_text(ws, 1))["compression"] is True
        ws.send_frame(OP_TEXT, json.dumps({"t": "big", "p": big, "v": 1}).encode())
        kind, raw = message(ws, 2)
        assert kind == "binary" and raw.startswith(b"C:"), (kind, raw[:80])
        # msgpack connections are never compressed.
        ws2 = connect(srv, token(), path="/wse?format=msgpack")
        next_text(ws2, 1)
        ws2.send_frame(OP_TEXT, json.dumps({"t": "big", "p": big, "v": 1}).encode())
        kind, raw = message(ws2, 2)
        assert kind == "binary" and raw.startswith(b"M:"), (kind, raw[:80])
        check_echo_doc(unpackb(raw[2:]), "big", big)
        ws2.finish()
        ws.finish()
        m, _ = H.get_metrics(srv.port)
        sends = {f: family_sum(m, "wsed_wse_sends_total", format=f) for f in ("msgpack", "compressed")}
        assert sends == {"msgpack": 1, "compressed": 1}, (sends, m.get("wsed_wse_sends_total"))


# ---------------------------------------------------------------------------------------------
# 5. --inbound log
# ---------------------------------------------------------------------------------------------

def _json_lines(srv):
    """The inbound messages on stdout (the startup event there, a log event, is skipped)."""
    out = []
    for ln in list(srv.stdout_lines):
        try:
            doc = json.loads(ln)
        except ValueError:
            continue
        if isinstance(doc, dict) and "event" not in doc:
            out.append(doc)
    return out


@limit(30)
def test_wse_feat_inbound_log():
    with wse("--inbound", "log") as srv:
        ws = connect(srv, token('bob "b"'))
        cid = json.loads(next_text(ws, 1))["p"]["details"]["connection_id"]
        ws.send_frame(OP_TEXT, b'{"t":"chat","p":{"text":"hi","n":[1,2]},"v":1}')
        ping(ws, 2, 5)                                      # protocol messages are not logged
        ws.send_frame(OP_BINARY, b"M:" + packb({"t": "mp", "p": {"k": 1}}))
        ws.send_frame(OP_TEXT, b'{"t":"nop"}')              # no payload: p null
        deadline = time.monotonic() + 3
        while len(_json_lines(srv)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        lines = _json_lines(srv)
        assert len(lines) == 3, (lines, srv.stdout_lines)
        for doc in lines:
            assert set(doc) == {"user", "connection_id", "t", "p"}, doc
            assert doc["user"] == 'bob "b"' and doc["connection_id"] == cid, (doc, cid)
        assert [(d["t"], d["p"]) for d in lines] == [("chat", {"text": "hi", "n": [1, 2]}), ("mp", {"k": 1}),
                                                     ("nop", None)], lines
        assert len(ws.messages()) == 2, ws.messages()      # log does not echo
        ws.finish()


# ---------------------------------------------------------------------------------------------
# 6. inbound rate limit
# ---------------------------------------------------------------------------------------------

def _kinds(ws):
    pongs = errors = 0
    for kind, raw in ws.messages()[1:]:
        assert kind == "text", (kind, raw)
        doc = json.loads(raw)
        if doc["t"] == "PONG":
            pongs += 1
        elif doc["t"] == "error":
            check_error(raw, "RATE_LIMITED")
            errors += 1
        else:
            raise AssertionError("unexpected %r" % raw)
    return pongs, errors


@limit(30)
def test_wse_feat_rate_limit():
    pingf = lambda i: H.frame(OP_TEXT, b'{"t":"ping","p":{"timestamp":%d}}' % i)
    with wse("--inbound-rate", "10", "--inbound-burst", "10") as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        assert ws.send_raw(b"".join(pingf(i) for i in range(15)))
        ws.wait_messages(1 + 11, 5)
        time.sleep(0.3)
        pongs, errors = _kinds(ws)
        assert 10 <= pongs <= 14 and errors == 1, (pongs, errors, ws.messages())
        assert not ws.closed_by_server and not ws.eof, ws.events
        # Still usable once the bucket refills.
        time.sleep(0.25)
        n = len(ws.messages()) + 1
        ping(ws, n, 99)
        # A flood: more than burst drops in one episode -> 4429.
        ws.send_raw(b"".join(pingf(i) for i in range(100)))
        assert ws.wait_close(5), ws.events[-5:]
        assert ws.close_code() == 4429, [e for e in ws.events if e[0] != "text"]
        ws.abort()
        m, _ = H.get_metrics(srv.port)
        v = family_sum(m, "wsed_wse_rate_limited_total")
        assert v is not None and v >= 5, v
        closed = [lab for lab, val in m.get("wsed_connections_closed_total", [])
                  if "rate" in lab.get("reason", "") and val > 0]
        assert closed, [s for s in m.get("wsed_connections_closed_total", []) if s[1] > 0]
        # Other connections are unaffected.
        ws = connect(srv, token())
        next_text(ws, 1)
        ping(ws, 2, 1)
        ws.finish()


# ---------------------------------------------------------------------------------------------
# 7. --max-connections-per-ip
# ---------------------------------------------------------------------------------------------

def _upgrade_status(port, path="/wse", extra=b"", source=H.HOST):
    """Raw upgrade from `source`: (status, socket left open on 101 else None)."""
    return H.upgrade(port, H.handshake_request(port, path=path, extra=extra)[0], source=source)


def _per_ip(mode_args, path, extra, opened):
    with H.running(BIN, *mode_args, "--workers", "2", "--max-connections-per-ip", "2",
                   env=W.env()) as srv:
        a, b = opened(srv), opened(srv)
        status, s = _upgrade_status(srv.port, path, extra)
        assert status == 429, status
        # Another address (127.0.0.2: all of 127.0.0.0/8 is loopback on Linux) has its own count.
        status2, s2 = _upgrade_status(srv.port, path, extra, source="127.0.0.2")
        assert status2 == 101, status2
        s2.close()
        a.finish()
        deadline = time.monotonic() + 3
        while True:
            status, s = _upgrade_status(srv.port, path, extra)
            if status == 101 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 101, "no slot after closing one of two connections (last status %r)" % status
        s.close()
        b.finish()
        m, _ = H.get_metrics(srv.port)
        v = family_sum(m, "wsed_connections_rejected_total", reason="per_ip")
        assert v is not None and v >= 1, m.get("wsed_connections_rejected_total")


@limit(40)
def test_wse_feat_max_connections_per_ip_wse():
    tok = token()

    def opened(srv):
        ws = connect(srv, tok)
        check_server_ready(next_text(ws, 1), "alice")
        return ws

    _per_ip(("--mode", "wse"), "/wse", b"Cookie: access_token=%s\r\n" % tok.encode(), opened)


@limit(40)
def test_wse_feat_max_connections_per_ip_echo():
    def opened(srv):
        ws = H.RawWS(srv.port)
        ws.send_frame(OP_TEXT, b"x")
        assert message(ws, 1) == ("text", b"x")
        return ws

    _per_ip(("--mode", "echo"), "/", b"", opened)


# ---------------------------------------------------------------------------------------------
# 8. SIGHUP key rotation
# ---------------------------------------------------------------------------------------------

def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def _hup(srv, result, count):
    """SIGHUP, then wait for the count-th stderr line of that outcome (printed once the new keys are
    in place, or the failure is final) and check wsed_key_reloads_total{result}."""
    line = "SIGHUP: JWT keys reloaded" if result == "ok" else "SIGHUP: reload failed: "
    srv.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while srv.stderr_text().count(line) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.stderr_text().count(line) == count, "want %d x %r on stderr: %s" % (count, line, srv.stderr_text()[-600:])
    v = wait_metric(srv.port, "wsed_key_reloads_total", count, result=result)
    assert v == count, "wsed_key_reloads_total{result=%r} = %r, want %d" % (result, v, count)


def _accepted(srv, secret, sub):
    expect_ready(srv, token(sub, secret=secret), sub)


@limit(45)
def test_wse_feat_sighup_rotation():
    with tempfile.TemporaryDirectory() as d:
        f, prev = os.path.join(d, "secret"), os.path.join(d, "previous")
        _write(f, SECRET_A)
        _write(prev, SECRET_C)
        with wse("--jwt-secret-file", f, "--jwt-previous-secret-file", prev) as srv:
            _accepted(srv, SECRET_C, "c0")                 # the previous secret is accepted too
            expect_refused(connect(srv, token(secret=SECRET)), "AUTH_FAILED")   # env unused: file given
            c1 = connect(srv, token("one", secret=SECRET_A))
            check_server_ready(next_text(c1, 1), "one")
            # Rotate: F = B (previous still C).
            _write(f, SECRET_B)
            _hup(srv, "ok", 1)
            ping(c1, 2, 1)                                 # open connections stay
            _accepted(srv, SECRET_B, "b1")
            expect_refused(connect(srv, token(secret=SECRET_A)), "AUTH_FAILED")
            # The previous-secret file now holds A: A is back after another SIGHUP; C is gone.
            _write(prev, SECRET_A)
            _hup(srv, "ok", 2)
            _accepted(srv, SECRET_A, "a2")
            _accepted(srv, SECRET_B, "b2")
            expect_refused(connect(srv, token(secret=SECRET_C)), "AUTH_FAILED")
            # A corrupt (too short) secret: reload fails, the current keys stay.
            _write(f, "short")
            _hup(srv, "failed", 1)
            assert "; keeping the current keys" in srv.stderr_text(), srv.stderr_text()[-600:]
            assert srv.alive()
            _accepted(srv, SECRET_B, "b3")
            _accepted(srv, SECRET_A, "a3")
            ping(c1, 3, 2)
            m, _ = H.get_metrics(srv.port)
            assert family_sum(m, "wsed_key_reloads_total", result="ok") == 2, m.get("wsed_key_reloads_total")
            c1.finish()


# ---------------------------------------------------------------------------------------------
# 9./10. RS256, ES256, key confusion, kid
# ---------------------------------------------------------------------------------------------

def _b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def hs_token(secret, header=None, sub="alice", ttl=3600):
    """HS256 token built by hand (PyJWT refuses to HMAC with a PEM key, which is the point here)."""
    now = int(time.time())
    h = _b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = _b64u(json.dumps({"sub": sub, "iat": now, "exp": now + ttl}).encode())
    sig = hmac.new(secret if isinstance(secret, bytes) else secret.encode(), h + b"." + p, hashlib.sha256).digest()
    return (h + b"." + p + b"." + _b64u(sig)).decode()


def _openssl(*args):
    p = subprocess.run(["openssl", *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr


def _keypair(d, name, kind):
    priv, pub = os.path.join(d, name + ".key"), os.path.join(d, name + ".pub.pem")
    if kind == "RSA":
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", priv)
    else:
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", priv)
    _openssl("pkey", "-in", priv, "-pubout", "-out", pub)
    with open(priv, "rb") as f1, open(pub, "rb") as f2:
        return f1.read(), pub, f2.read()


def _asymmetric(alg, kind):
    now = int(time.time())
    claims = lambda sub: {"sub": sub, "iat": now, "exp": now + 3600}
    with tempfile.TemporaryDirectory() as d:
        priv, pub_path, pub = _keypair(d, "k", kind)
        other_priv, _, _ = _keypair(d, "other", kind)
        with wse("--jwt-alg", alg, "--jwt-public-key-file", pub_path, secret=None) as srv:
            expect_ready(srv, jwt.encode(claims("pk-user"), priv, algorithm=alg), "pk-user")
            expect_ready(srv, jwt.encode(claims("bearer-user"), priv, algorithm=alg), "bearer-user", how="bearer")
            # Key confusion: HS256 with the public key's PEM text as the HMAC secret.
            expect_refused(connect(srv, hs_token(pub)), "AUTH_FAILED")
            expect_refused(connect(srv, hs_token(pub.strip())), "AUTH_FAILED")
            expect_refused(connect(srv, token(secret=SECRET)), "AUTH_FAILED")
            # Signed by another key; alg none; an expired one.
            expect_refused(connect(srv, jwt.encode(claims("x"), other_priv, algorithm=alg)), "AUTH_FAILED")
            unsigned = jwt.encode(claims("x"), None, algorithm="none")
            expect_refused(connect(srv, unsigned), "AUTH_FAILED")
            old = {"sub": "x", "iat": now - 7200, "exp": now - 3600}
            expect_refused(connect(srv, jwt.encode(old, priv, algorithm=alg)), "AUTH_FAILED")
            # A token of the other asymmetric algorithm is refused too.
            other_alg, other_kind = ("ES256", "EC") if alg == "RS256" else ("RS256", "RSA")
            k2, _, _ = _keypair(d, "k2", other_kind)
            expect_refused(connect(srv, jwt.encode(claims("x"), k2, algorithm=other_alg)), "AUTH_FAILED")
            expect_ready(srv, jwt.encode(claims("still"), priv, algorithm=alg), "still")
            # wsed gen-token signs with the private key; PyJWT and the server both accept it.
            rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "minted", "--jwt-alg", alg,
                                      "--jwt-private-key-file", os.path.join(d, "k.key")], env={})
            assert rc == 0, err
            assert jwt.decode(out.strip(), pub, algorithms=[alg])["sub"] == "minted"
            expect_ready(srv, out.strip(), "minted")


@limit(60)
def test_wse_feat_rs256():
    _asymmetric("RS256", "RSA")


@limit(60)
def test_wse_feat_es256():
    _asymmetric("ES256", "EC")


@limit(40)
def test_wse_feat_public_key_startup_checks():
    """A missing/garbage key file, or a key of the wrong type for --jwt-alg: exit 2 before serving."""
    with tempfile.TemporaryDirectory() as d:
        _, rsa_pub, _ = _keypair(d, "rsa", "RSA")
        _, ec_pub, _ = _keypair(d, "ec", "EC")
        junk = os.path.join(d, "junk.pem")
        _write(junk, "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
        ec_priv = os.path.join(d, "ec.key")   # a private key is not a public key
        for alg, path in (("RS256", ec_pub), ("ES256", rsa_pub), ("RS256", junk), ("ES256", os.path.join(d, "no")),
                          ("RS256", None), ("ES256", ec_priv)):
            argv = [BIN, "--mode", "wse", "--host", H.HOST, "--port", "0", "--jwt-alg", alg]
            argv += ["--jwt-public-key-file", path] if path else []
            rc, out, err = H.run_cmd(argv, timeout=8, env={"WSED_JWT_SECRET": ""})
            assert rc == 2 and "listening" not in out and "key" in err.lower(), (alg, path, rc, out, err)


@limit(30)
def test_wse_feat_jwt_kid():
    with wse("--jwt-kid", "k1") as srv:
        expect_ready(srv, jwt.encode({"sub": "kid1", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256",
                                     headers={"kid": "k1"}), "kid1")
        expect_refused(connect(srv, jwt.encode({"sub": "x", "exp": int(time.time()) + 600}, SECRET,
                                               algorithm="HS256", headers={"kid": "k2"})), "AUTH_FAILED")
        expect_refused(connect(srv, token()), "AUTH_FAILED")          # no kid at all
    with wse() as srv:   # no --jwt-kid: any kid
        expect_ready(srv, jwt.encode({"sub": "any", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256",
                                     headers={"kid": "whatever"}), "any")


# ---------------------------------------------------------------------------------------------
# 11. /metrics
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_wse_feat_metrics():
    with wse("--inbound", "echo") as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        ws.send_frame(OP_TEXT, b'{"t":"chat","p":{"a":1}}')
        next_text(ws, 2)
        ping(ws, 3, 1)
        ws.finish()
        expect_refused(connect(srv, token(secret="another-secret-that-is-32-bytes-long!")), "AUTH_FAILED")
        expect_refused(connect(srv, None), "AUTH_REQUIRED")
        m, text = H.get_metrics(srv.port)
        auth = {r: H.metric_value(m, "wsed_wse_auth_total", result=r)
                for r in ("ok", "failed", "required")}
        assert auth == {"ok": 1, "failed": 1, "required": 1}, (auth, m.get("wsed_wse_auth_total"))
        assert "# TYPE wsed_wse_auth_total counter" in text, text
        assert m.get("wsed_wse_messages_total"), sorted(k for k in m if k.startswith("wsed_wse"))
        assert H.metric_value(m, "wsed_wse_messages_total") >= 2, \
            m["wsed_wse_messages_total"]
        sends = family_sum(m, "wsed_wse_sends_total", format="json")
        assert sends is not None and sends >= 1, m.get("wsed_wse_sends_total")
        assert family_sum(m, "wsed_wse_rate_limited_total") == 0, m.get("wsed_wse_rate_limited_total")
        assert family_sum(m, "wsed_key_reloads_total", result="ok") == 0, m.get("wsed_key_reloads_total")


# ---------------------------------------------------------------------------------------------
# 12. the library API: tools/examples/wse_whoami embeds engine::server + wse_app + its handler
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_wse_feat_library_example_whoami():
    """The example program's wse_handler: on_connect sends `welcome` right after server_ready,
    on_message answers `whoami` with the token's user and the connection id, anything else with
    `ack`; replies take the connection's format (M: for format=msgpack)."""
    example = os.path.join(os.path.dirname(os.path.dirname(BIN)), "tools", "wse_whoami")
    assert os.path.exists(example), "example not built: %s" % example
    with H.supervised(H.Server([example, "0"], env=W.env(), name="wse_whoami")) as srv:
        ws = connect(srv, token(sub="zoe"))
        ready = json.loads(next_text(ws, 1))
        welcome = json.loads(next_text(ws, 2))
        assert welcome["t"] == "welcome" and welcome["p"] == {"user": "zoe"}, welcome
        ws.send_frame(OP_TEXT, b'{"t":"whoami"}')
        who = json.loads(next_text(ws, 3))
        assert who["t"] == "whoami" and who["p"]["user"] == "zoe", who
        assert who["p"]["connection_id"] == ready["p"]["details"]["connection_id"], (who, ready)
        ws.send_frame(OP_TEXT, b'{"t":"note","p":{"a":1}}')
        ack = json.loads(next_text(ws, 4))
        assert ack["t"] == "ack" and ack["p"] == {"type": "note", "payload_bytes": 7}, ack
        ws.finish()
        mp = connect(srv, token(sub="max"), path="/wse?format=msgpack")
        assert mp.wait_messages(2, 5), mp.events
        kind, body = mp.messages()[1][:2]
        assert kind == "binary" and body[:2] == b"M:", mp.messages()[1]
        doc = unpackb(body[2:])
        assert doc["t"] == "welcome" and doc["p"] == {"user": "max"}, doc
        mp.finish()
        expect_refused(connect(srv, token(secret="another-secret-of-at-least-32-bytes!!")),
                       "AUTH_FAILED")


@limit(40)
def test_wse_feat_library_example_fanout_server():
    """tools/examples/wse_fanout_server (the reference's bench server on the C++ API): every
    connection is subscribed to bench_topic at connect and receives the one publisher's
    fanout_tick messages with a dense p.seq, each once and in order, paced so that readers that
    keep up are never cut as slow consumers; it stops on SIGTERM with exit 0."""
    example = os.path.join(os.path.dirname(os.path.dirname(BIN)), "tools", "wse_fanout_server")
    assert os.path.exists(example), "example not built: %s" % example
    with H.supervised(H.Server([example, "--port", "0", "--rate", "5000"],
                               name="wse_fanout_server")) as srv:
        clients = [H.RawWS(srv.port) for _ in range(20)]
        assert all(c.wait_for(lambda c=c: len(c.messages()) >= 1001, 20) for c in clients), \
            "not every client got 1,000 ticks in 20 s: %r" % [len(c.messages()) for c in clients]
        for i, c in enumerate(clients):
            docs = [json.loads(body) for kind, body in c.messages()[:1001] if kind == "text"]
            assert docs[0]["t"] == "server_ready", docs[0]
            s = [d["p"]["seq"] for d in docs[1:]]
            assert all(d["t"] == "fanout_tick" for d in docs[1:]), docs[1:3]
            assert s == list(range(s[0], s[0] + len(s))), "client %d: not dense/in order: %r" % (
                i, [x for x, y in zip(s, s[1:]) if y != x + 1][:5])
        for c in clients:
            c.finish()
