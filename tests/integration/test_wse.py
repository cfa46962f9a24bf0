"""wsed --mode wse integration tests: JWT authentication at the upgrade, server_ready, app ping ->
PONG, client_hello -> server_hello, --inbound echo, startup checks and `wsed gen-token`.

Run with tests/integration/run_tests.py -k wse_ (under /usr/bin/python3). Tokens are minted
independently with Debian's python3-jwt (PyJWT); the secret reaches wsed through WSED_JWT_SECRET.
Only 127.0.0.1; every wait is bounded and every server started here is stopped (by PID).
"""

import json
import os
import re
import time

import jwt

import wsed_harness as H
from wsed_harness import OP_TEXT

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
SAN = os.environ.get("WSED_SANITIZERS") == "1"
SECRET = "integration-secret-at-least-32-bytes-long"
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FEATURES = ["batching", "circuit_breaker", "compression", "encryption", "priority_queue", "recovery"]


limit = H.limit


def env(**extra):
    e = dict(H.SANITIZER_ENV) if SAN else {}
    e["WSED_JWT_SECRET"] = SECRET
    e.update(extra)
    return e


def wse(*args):
    return H.running(BIN, "--mode", "wse", "--workers", "2", *args, env=env())


def token(sub="alice", ttl=3600, secret=SECRET, **claims):
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + ttl}
    body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256")


def connect(srv, tok=None, how="cookie", path="/wse"):
    extra = b""
    if tok is not None and how == "cookie":
        extra = ("Cookie: theme=dark\r\nCookie: access_token=%s; other=1\r\n" % tok).encode()
    elif tok is not None and how == "bearer":
        extra = ("Authorization: bearer %s\r\n" % tok).encode()
    elif tok is not None and how == "query":
        path = path + "?format=json&token=" + tok
    return H.RawWS(srv.port, path=path, extra=extra)


def text_messages(ws):
    return [json.loads(e[1]) for e in ws.messages() if e[0] == "text"]


def message(ws, n, timeout=5):
    """Message n (1-based) as (kind, bytes)."""
    assert ws.wait_messages(n, timeout) and len(ws.messages()) >= n, "no message %d; events %r" % (n, ws.events[-5:])
    return ws.messages()[n - 1]


def next_text(ws, n, timeout=5):
    """Message n (1-based), which must be a text message: its bytes."""
    m = message(ws, n, timeout)
    assert m[0] == "text", m
    return m[1]


def check_error(raw, code):
    """raw is a WSE error envelope with this code: {"c":"WSE","p":{"code",..,"message","timestamp"},"t":"error","v":1}."""
    assert raw.startswith(b'{"c":"WSE","p":{"code":"%s"' % code.encode()), raw
    doc = json.loads(raw)
    assert list(doc) == ["c", "p", "t", "v"] and doc["t"] == "error" and doc["v"] == 1, doc
    assert list(doc["p"]) == ["code", "message", "timestamp"] and TS_RE.match(doc["p"]["timestamp"]), doc
    return doc


def expect_refused(ws, code):
    """The upgrade was refused: one error message with this code, then close 4401."""
    assert ws.wait_close(5), "no close; events %r" % ws.events
    msgs = ws.messages()
    assert len(msgs) == 1 and msgs[0][0] == "text", msgs
    check_error(msgs[0][1], code)
    assert ws.close_code() == 4401, ws.events
    ws.abort()


def check_server_ready(raw, sub, compression=True):
    """compression: features.compression expected (on unless --compression-threshold 0)."""
    doc = json.loads(raw)
    assert list(doc) == ["c", "id", "p", "seq", "t", "ts", "v"], doc
    assert doc["c"] == "WSE" and doc["t"] == "server_ready" and doc["seq"] == 1 and doc["v"] == 1, doc
    assert UUID7_RE.match(doc["id"]), doc["id"]
    assert TS_RE.match(doc["ts"]), doc["ts"]
    p = doc["p"]
    assert list(p) == ["details", "message"] and p["message"] == "Connection established", p
    d = p["details"]
    assert list(d) == ["connection_id", "features", "server_time", "user_id"], d
    assert UUID7_RE.match(d["connection_id"]) and d["connection_id"] != doc["id"], d
    assert TS_RE.match(d["server_time"]), d
    assert d["user_id"] == sub, d
    assert list(d["features"]) == FEATURES, d
    assert d["features"] == {f: f == "compression" and compression for f in FEATURES}, d
    # Stamped at send time (wall clock): within a minute of ours.
    ts = time.mktime(time.strptime(doc["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(ts - time.time()) < 60, doc["ts"]
    return doc


def expect_ready(srv, tok, sub, **connect_args):
    """A connection with token tok gets server_ready for user sub; then closed cleanly."""
    ws = connect(srv, tok, **connect_args)
    check_server_ready(next_text(ws, 1), sub)
    ws.finish()


def test_wse_server_ready_from_cookie():
    with wse() as srv:
        expect_ready(srv, token("alice"), "alice")
        # A user id needing JSON escaping survives the trip.
        expect_ready(srv, token('bob "the" \\ builder\u00e9'), 'bob "the" \\ builder\u00e9')


def test_wse_ping_pong():
    with wse() as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        ws.send_frame(OP_TEXT, b'{"c":"WSE","t":"ping","p":{"timestamp":123},"v":1}')
        raw = next_text(ws, 2)
        assert raw.startswith(b'{"c":"WSE","t":"PONG"'), raw
        p = json.loads(raw)["p"]
        assert p["client_timestamp"] == 123 and abs(p["server_timestamp"] / 1000 - time.time()) < 60, p
        ws.send_frame(OP_TEXT, b'{"p":{"client_timestamp":5},"t":"ping"}')
        raw = next_text(ws, 3)
        assert raw.startswith(b'{"c":"WSE","t":"PONG"') and json.loads(raw)["p"]["client_timestamp"] == 5, raw
        # Legacy prefix, and pongs are consumed (no reply), then one more ping answers.
        ws.send_frame(OP_TEXT, b'WSE{"t":"pong","p":{}}')
        ws.send_frame(OP_TEXT, b'{"t":"PONG","p":{}}')
        ws.send_frame(OP_TEXT, b'WSE{"t":"ping","p":{"timestamp":7}}')
        raw = next_text(ws, 4)
        assert json.loads(raw)["p"]["client_timestamp"] == 7, raw
        time.sleep(0.1)
        assert len(ws.messages()) == 4, ws.messages()
        ws.finish()


@limit(20)
def test_wse_idle_timeout_4408():
    """A WSE connection that sends nothing is closed with 4408 after --idle-timeout, even while
    the server pings it (server pings are outbound: they do not count as activity); one that
    pings stays open."""
    with wse("--idle-timeout", "1s", "--ping-interval", "300ms") as srv:
        idle, busy = connect(srv, token()), connect(srv, token(sub="bob"))
        next_text(idle, 1)
        next_text(busy, 1)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0 and not idle.closed_by_server:
            busy.send_frame(OP_TEXT, b'{"t":"ping","p":{"timestamp":1}}')
            time.sleep(0.2)
        assert idle.wait_close(2), "idle WSE connection not closed; events %r" % idle.events[-3:]
        assert idle.close_code() == 4408, idle.events[-3:]
        pings = [m for m in text_messages(idle) if m.get("t") == "ping"]
        assert pings, "no server ping reached the idle connection before its close"
        assert not busy.closed_by_server and not busy.eof, busy.events[-3:]
        idle.abort()
        busy.finish()


@limit(20)
def test_wse_origin_403_before_auth():
    """WSE mode with --allowed-origins: a browser upgrade from a foreign Origin gets 403 before
    any token is looked at; a listed Origin with a valid cookie token gets server_ready."""
    with wse("--allowed-origins", "https://app.example") as srv:
        tok = token()
        cookie = ("Cookie: access_token=%s\r\n" % tok).encode()
        req, _ = H.handshake_request(srv.port, path="/wse",
                                     extra=cookie + b"Origin: https://evil.example\r\n")
        status, _ = H.upgrade(srv.port, req)
        assert status == 403, status
        ws = H.RawWS(srv.port, path="/wse", extra=cookie + b"Origin: https://app.example\r\n")
        check_server_ready(next_text(ws, 1), "alice")
        ws.finish()
        m, _ = H.get_metrics(srv.port)
        assert H.metric_value(m, "wsed_connections_rejected_total", reason="origin") == 1
        assert H.metric_value(m, "wsed_wse_auth_total", result="ok") == 1


def test_wse_server_ping_every_interval():
    """--ping-interval 1s: every authenticated connection gets {"c":"WSE","t":"ping",
    "p":{"server_time":...}} about once a second; a refused one gets none."""
    with wse("--ping-interval", "1s") as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        t0 = time.monotonic()
        raw = next_text(ws, 2, timeout=4)
        assert time.monotonic() - t0 < 3, "first server ping after %.1f s" % (time.monotonic() - t0)
        doc = json.loads(raw)
        assert raw.startswith(b'{"c":"WSE","t":"ping"'), raw
        assert doc["t"] == "ping" and list(doc["p"]) == ["server_time"] and TS_RE.match(doc["p"]["server_time"]), doc
        raw = next_text(ws, 3, timeout=4)
        assert json.loads(raw)["t"] == "ping", raw
        ws.finish()
    with wse("--ping-interval", "0") as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        time.sleep(1.5)
        assert len(ws.messages()) == 1, ws.messages()
        ws.finish()


def test_wse_client_hello_server_hello():
    with wse("--max-message-size", "64KiB") as srv:
        ws = connect(srv, token())
        ready = json.loads(next_text(ws, 1))
        ws.send_frame(OP_TEXT, b'{"c":"WSE","t":"client_hello","p":{"client_version":"t/1","protocol_version":3},"v":1}')
        doc = json.loads(next_text(ws, 2))
        assert list(doc) == ["c", "p", "t", "v"] and doc["t"] == "server_hello" and doc["c"] == "WSE", doc
        p = doc["p"]
        assert list(p) == ["connection_id", "features", "limits", "ping_interval", "protocol_version",
                           "server_time", "server_version"], p
        assert p["connection_id"] == ready["p"]["details"]["connection_id"], (p, ready)
        assert p["ping_interval"] == 25000 and p["protocol_version"] == 2, p
        assert p["limits"]["max_message_size"] == 65536, p
        assert list(p["features"]) == FEATURES and TS_RE.match(p["server_time"]), p
        ws.send_frame(OP_TEXT, b'{"t":"client_hello","p":{"protocol_version":1}}')
        assert json.loads(next_text(ws, 3))["p"]["protocol_version"] == 1
        ws.finish()


def test_wse_invalid_message_keeps_connection():
    with wse() as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        ws.send_frame(OP_TEXT, b'{"t":')
        raw = next_text(ws, 2)
        doc = json.loads(raw)
        assert doc["t"] == "error" and doc["p"]["code"] == "INVALID_MESSAGE" and doc["c"] == "WSE", doc
        ws.send_frame(H.OP_BINARY, b"M:\xc1")   # undecodable msgpack: INVALID_MESSAGE too
        doc = json.loads(next_text(ws, 3))
        assert doc["t"] == "error" and doc["p"]["code"] == "INVALID_MESSAGE", doc
        ws.send_frame(OP_TEXT, b'{"t":"ping","p":{"timestamp":9}}')
        assert json.loads(next_text(ws, 4))["t"] == "PONG"
        ws.finish()


def test_wse_invalid_utf8_text_closes_1007():
    """A text message that arrives whole is UTF-8 checked by the JSON parser (the shard skips its
    own pass in WSE mode): invalid UTF-8 is still the WebSocket's 1007, whether it looks like JSON,
    is not JSON at all, or comes in fragments (checked by the shard); valid multi-byte text is
    served."""
    cases = [
        ("invalid UTF-8 in a JSON string", [H.frame(OP_TEXT, b'{"t":"chat","p":{"x":"\xff"}}')]),
        ("invalid UTF-8, not JSON", [H.frame(OP_TEXT, b"\xc3(")]),
        ("a surrogate in the type", [H.frame(OP_TEXT, b'{"t":"\xed\xa0\x80","p":{}}')]),
        ("fragmented", [H.frame(OP_TEXT, b'{"t":"chat","p":{"x":"', fin=False),
                        H.frame(0, b'\xf4\x90\x80\x80"}}')]),
    ]
    with wse() as srv:
        for what, frames in cases:
            ws = connect(srv, token())
            next_text(ws, 1)
            ws.send_frame(OP_TEXT, '{"t":"ping","p":{"timestamp":9,"x":"é€𝄞"}}'.encode())
            assert json.loads(next_text(ws, 2))["t"] == "PONG", what
            ws.sock.sendall(b"".join(frames))
            assert ws.wait_close(5), "%s: no close" % what
            assert ws.close_code() == 1007, "%s: close %r" % (what, ws.close_code())
            ws.finish()
        m, _ = H.get_metrics(srv.port)
        closed = H.metric_value(m, "wsed_connections_closed_total", reason="invalid_utf8")
        assert closed == len(cases), closed
        expect_ready(srv, token(), "alice")   # and the server is fine


def test_wse_auth_refusals():
    with wse() as srv:
        expect_refused(connect(srv, None), "AUTH_REQUIRED")
        expect_refused(connect(srv, token(ttl=-3600)), "AUTH_FAILED")              # expired
        expect_refused(connect(srv, token(secret="another-secret-that-is-32-bytes-long!")), "AUTH_FAILED")
        expect_refused(connect(srv, "null"), "AUTH_REQUIRED")                      # placeholder
        # Query tokens are refused unless allowed.
        expect_refused(connect(srv, token(), how="query"), "AUTH_REQUIRED")
        expect_ready(srv, token("carol"), "carol", how="bearer")
        # The server is still fine afterwards.
        expect_ready(srv, token("dave"), "dave")


def test_wse_auth_pipelined_frames_after_refusal():
    """Frames sent right behind a refused upgrade request are ignored; the server survives."""
    with wse() as srv:
        s = H.connect(srv.port)
        req, _ = H.handshake_request(srv.port, path="/wse")
        s.sendall(req + H.frame(OP_TEXT, b'{"t":"ping","p":{"timestamp":1}}'))
        data, eof = H.recv_until_eof(s, 5)
        s.close()
        assert eof, data
        assert b"101" in data.split(b"\r\n")[0] and b"AUTH_REQUIRED" in data and b"PONG" not in data, data
        expect_ready(srv, token(), "alice")


def test_wse_query_token_allowed():
    with wse("--allow-query-token") as srv:
        expect_ready(srv, token("erin"), "erin", how="query")


def test_wse_issuer_audience():
    with wse("--jwt-issuer", "me", "--jwt-audience", "app") as srv:
        expect_refused(connect(srv, token()), "AUTH_FAILED")
        expect_refused(connect(srv, token(iss="me", aud="other")), "AUTH_FAILED")
        expect_ready(srv, token("frank", iss="me", aud="app"), "frank")


def test_wse_inbound_echo():
    with wse("--inbound", "echo") as srv:
        ws = connect(srv, token())
        next_text(ws, 1)
        ws.send_frame(OP_TEXT, b'{"t":"chat","p":{"text":"hi","n":[1,2]},"v":1}')
        doc = json.loads(next_text(ws, 2))
        assert doc["t"] == "chat" and doc["c"] == "U" and doc["p"] == {"text": "hi", "n": [1, 2]}, doc
        assert doc["seq"] == 2 and UUID7_RE.match(doc["id"]) and TS_RE.match(doc["ts"]), doc
        ws.finish()
    with wse() as srv:   # default: drop
        ws = connect(srv, token())
        next_text(ws, 1)
        ws.send_frame(OP_TEXT, b'{"t":"chat","p":{"text":"hi"}}')
        ws.send_frame(OP_TEXT, b'{"t":"ping","p":{"timestamp":1}}')
        assert json.loads(next_text(ws, 2))["t"] == "PONG", ws.messages()
        ws.finish()


def test_wse_insecure_no_auth():
    with H.running(BIN, "--mode", "wse", "--insecure-no-auth", "--workers", "1",
                   env=env(WSED_JWT_SECRET="")) as srv:
        assert "mode wse" in srv.first_line, srv.first_line
        expect_ready(srv, None, "anonymous")


def test_wse_startup_checks():
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0"], env={"WSED_JWT_SECRET": ""})
    assert rc == 2 and err.count("\n") == 1 and "secret" in err, (rc, err)
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0"], env={"WSED_JWT_SECRET": "short"})
    assert rc == 2 and err.count("\n") == 1 and "secret_too_short" in err, (rc, err)
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0", "--jwt-secret-file", "/nonexistent/x"],
                             env={"WSED_JWT_SECRET": SECRET})
    assert rc == 2 and err.count("\n") == 1, (rc, err)
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--jwt-alg", "none"], env={"WSED_JWT_SECRET": SECRET})
    assert rc == 2, (rc, err)


def test_wse_gen_token_verifies_with_pyjwt():
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "grace", "--ttl", "1h"], env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0, err
    tok = out.strip()
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "grace" and claims["exp"] - claims["iat"] == 3600, claims
    assert abs(claims["iat"] - time.time()) < 60, claims
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "h", "--ttl", "10m", "--jwt-issuer", "me",
                              "--jwt-audience", "app"], env={"WSED_JWT_SECRET": SECRET})
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"], audience="app", issuer="me")
    assert claims["exp"] - claims["iat"] == 600, claims
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "t", "--topics", "news.*,chat.\"x\"",
                              "--jwt-kid", "k7"], env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0, err
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["wse_topics"] == {"allow": ["news.*", 'chat."x"']}, claims
    assert jwt.get_unverified_header(out.strip())["kid"] == "k7"
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "r", "--jwt-alg", "RS256"],
                             env={"WSED_JWT_SECRET": SECRET})
    assert rc == 2 and "private-key" in err, (rc, out, err)
    rc, out, err = H.run_cmd([BIN, "gen-token", "--ttl", "1h"], env={"WSED_JWT_SECRET": SECRET})
    assert rc == 2 and not out, (rc, out, err)
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "x"], env={"WSED_JWT_SECRET": ""})
    assert rc == 2 and not out, (rc, out, err)


def test_wse_gen_token_accepted_by_server():
    rc, out, _ = H.run_cmd([BIN, "gen-token", "--sub", "ivy"], env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0
    with wse() as srv:
        expect_ready(srv, out.strip(), "ivy", how="bearer")
