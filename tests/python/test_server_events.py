"""Inbound side of RustWSEServer: the handshake (JWT or not), server_ready, the drain-mode events,
what the engine answers itself (ping, client_hello, pong), the inbound queue bound and the
callback mode."""
import json
import threading

import msgpack  # python3-msgpack
import pytest

from conftest import (ANY, SECRET, TIMEOUT, TS_RE, UUID7_RE, Closed, make_token, wait_until)
import wsed.compat


# --- handshake ------------------------------------------------------------------------------

def test_jwt_bearer_connect_emits_auth_connect_and_server_ready(h):
    c = h.client({"Authorization": "Bearer " + make_token("alice")})
    first = c.recv()
    assert isinstance(first, str), "server_ready must be a text frame"
    ready = json.loads(first)
    assert ready["c"] == "WSE"
    assert ready["t"] == "server_ready"
    assert ready["v"] == 1
    assert UUID7_RE.match(ready["id"]), ready["id"]
    assert isinstance(ready["seq"], int)
    details = ready["p"]["details"]
    conn_id = details["connection_id"]
    assert UUID7_RE.match(conn_id), conn_id
    assert details["user_id"] == "alice"
    assert isinstance(details["features"], dict)
    assert details["features"]["recovery"] is False
    assert TS_RE.match(details["server_time"]), details["server_time"]
    assert TS_RE.match(ready["ts"]), ready["ts"]
    ev = h.events.wait("auth_connect")
    assert ev == ("auth_connect", conn_id, "alice")
    assert h.server.get_connections() == [conn_id]


def test_jwt_token_from_cookie(h):
    c = h.connect(user=None, cookie="theme=dark; access_token=%s; other=1" % make_token("carol"))
    assert c.ready["p"]["details"]["user_id"] == "carol"
    assert h.events.wait("auth_connect", c.conn_id) == ("auth_connect", c.conn_id, "carol")


@pytest.mark.parametrize("value", ["", "undefined", "null"])
def test_empty_cookie_values_fall_back_to_bearer(h, value):
    c = h.connect("frank", cookie="access_token=%s" % value)
    assert h.events.wait("auth_connect", c.conn_id)[2] == "frank"


def test_query_string_token_is_not_read(h):
    c = h.client(query="token=" + make_token("alice"))
    assert json.loads(c.recv())["p"]["code"] == "AUTH_REQUIRED"
    assert c.wait_closed()[0] == 4401


def test_jwt_custom_cookie_name(make_server):
    h = make_server(jwt_cookie_name="sess")
    c = h.connect(user=None, cookie="sess=%s" % make_token("dave"))
    assert h.events.wait("auth_connect", c.conn_id)[2] == "dave"


def test_jwt_token_made_by_rust_jwt_encode(h):
    import time
    tok = wsed.compat.rust_jwt_encode({"sub": "erin", "exp": int(time.time()) + 600}, SECRET)
    c = h.connect(user=None, headers={"Authorization": "Bearer " + tok})
    assert c.ready["p"]["details"]["user_id"] == "erin"
    assert h.events.wait("auth_connect", c.conn_id)[2] == "erin"


def test_jwt_issuer_and_audience_are_checked(make_server):
    h = make_server(jwt_issuer="wsed-tests", jwt_audience="clients")
    ok = h.connect("alice", iss="wsed-tests", aud="clients")
    assert h.events.wait("auth_connect", ok.conn_id)[2] == "alice"
    for claims in ({"iss": "someone-else", "aud": "clients"}, {"iss": "wsed-tests", "aud": "others"}, {}):
        c = h.client({"Authorization": "Bearer " + make_token("mallory", **claims)})
        assert json.loads(c.recv())["p"]["code"] == "AUTH_FAILED"
        assert c.wait_closed()[0] == 4401


def test_jwt_previous_secret_is_accepted(make_server):
    old = b"the-previous-secret-of-32-bytes-or-more"
    h = make_server(jwt_previous_secret=old)
    c = h.connect(user=None, headers={"Authorization": "Bearer " + make_token("olduser", secret=old)})
    assert h.events.wait("auth_connect", c.conn_id)[2] == "olduser"
    c2 = h.connect("newuser")
    assert h.events.wait("auth_connect", c2.conn_id)[2] == "newuser"


def _es256_token(tmp_path, claims):
    """An ES256 key pair and a token made with the openssl CLI (no crypto library loaded in this
    process besides the module's own)."""
    import base64
    import subprocess
    key = tmp_path / "ec.pem"
    pub = tmp_path / "ec.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(key)], check=True, capture_output=True, timeout=30)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                   capture_output=True, timeout=30)

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input.encode(),
                         check=True, capture_output=True, timeout=30).stdout
    # DER SEQUENCE { INTEGER r, INTEGER s } -> raw r || s (32 bytes each)
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    parts = []
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        parts.append(int.from_bytes(der[i + 2:i + 2 + n], "big").to_bytes(32, "big"))
        i += 2 + n
    return pub.read_bytes(), signing_input + "." + b64(parts[0] + parts[1])


def test_jwt_es256_public_key(make_server, tmp_path):
    import time
    public_pem, tok = _es256_token(tmp_path, {"sub": "ecuser", "exp": int(time.time()) + 600})
    h = make_server(jwt_secret=public_pem, jwt_algorithm="ES256")
    c = h.connect(user=None, headers={"Authorization": "Bearer " + tok})
    assert h.events.wait("auth_connect", c.conn_id)[2] == "ecuser"
    # an HS256 token is refused by an ES256 server
    bad = h.client({"Authorization": "Bearer " + make_token("hs")})
    assert json.loads(bad.recv())["p"]["code"] == "AUTH_FAILED"
    assert bad.wait_closed()[0] == 4401


def _assert_no_event_before(h, bad_client_closed_first=True):
    """After the refused client, a good client's auth_connect must be the first event."""
    good = h.connect("zed")
    ev = h.events.wait("auth_connect", good.conn_id)
    others = [e for e in h.events.seen if e is not ev]
    assert others == [], "a refused connection produced events: %r" % others


def test_no_token_gets_auth_required_and_4401_and_no_event(h):
    c = h.client()
    err = json.loads(c.recv())
    assert err["t"] == "error"
    assert err["c"] == "WSE"
    assert err["p"]["code"] == "AUTH_REQUIRED"
    with pytest.raises(Closed):
        c.recv()
    assert c.wait_closed()[0] == 4401
    _assert_no_event_before(h)
    assert h.server.get_connection_count() == 1


@pytest.mark.parametrize("token", [
    make_token("mallory", secret=b"another-secret-of-at-least-32-bytes!!"),
    make_token("late", ttl=-3600),
    "not.a.jwt",
])
def test_bad_token_gets_auth_failed_and_4401(h, token):
    c = h.client({"Authorization": "Bearer " + token})
    err = json.loads(c.recv())
    assert err["t"] == "error"
    assert err["p"]["code"] == "AUTH_FAILED"
    assert c.wait_closed()[0] == 4401
    _assert_no_event_before(h)


def test_auth_off_connect_event_carries_the_cookie_header(make_server):
    h = make_server(jwt_secret=None)
    cookie = "theme=dark; sid=abc123; empty="
    c = h.connect(user=None, cookie=cookie)
    assert c.ready["p"]["details"]["user_id"] == "anonymous"
    assert h.events.wait("connect", c.conn_id) == ("connect", c.conn_id, cookie)
    c2 = h.connect(user=None)
    assert h.events.wait("connect", c2.conn_id) == ("connect", c2.conn_id, "")


def test_auth_off_ignores_tokens(make_server):
    h = make_server(jwt_secret=None)
    c = h.connect(user="alice")  # sends a bearer token, which nobody checks
    ev = h.events.wait(ANY, c.conn_id)
    assert ev[0] == "connect"


# --- connections ------------------------------------------------------------------------------

def test_client_close_emits_disconnect(h):
    c = h.connect("alice")
    h.events.wait("auth_connect", c.conn_id)
    c.close()
    assert h.events.wait("disconnect", c.conn_id) == ("disconnect", c.conn_id, None)
    wait_until(lambda: h.server.get_connection_count() == 0, what="connection count 0")
    assert h.server.get_connections() == []


def test_abrupt_tcp_close_emits_disconnect(h):
    c = h.connect("alice")
    c.abort()
    assert h.events.wait("disconnect", c.conn_id) == ("disconnect", c.conn_id, None)


def test_server_disconnect_closes_with_1000(h):
    c = h.connect("alice")
    h.server.disconnect(c.conn_id)
    assert c.wait_closed()[0] == 1000
    assert h.events.wait("disconnect", c.conn_id) == ("disconnect", c.conn_id, None)
    wait_until(lambda: h.server.get_connection_count() == 0, what="connection count 0")


def test_connection_count_and_list(h):
    assert h.server.get_connection_count() == 0
    assert h.server.get_connections() == []
    clients = [h.connect("u%d" % i) for i in range(3)]
    ids = {c.conn_id for c in clients}
    assert len(ids) == 3
    wait_until(lambda: h.server.get_connection_count() == 3, what="3 connections")
    conns = h.server.get_connections()
    assert isinstance(conns, list)
    assert set(conns) == ids and len(conns) == 3
    clients[1].close()
    wait_until(lambda: h.server.get_connection_count() == 2, what="2 connections")
    assert set(h.server.get_connections()) == ids - {clients[1].conn_id}


# --- client messages ----------------------------------------------------------------------------

def test_msg_event_is_the_whole_json(h):
    c = h.connect("alice")
    sent = {"t": "chat", "p": {"text": "héllo ✓", "n": 42, "big": 2 ** 62, "neg": -7, "f": 2.5,
                               "list": [1, "two", None, True, False, {"x": []}]},
            "id": "abc", "extra": {"nested": {"deep": 1}}}
    c.send_json(sent)
    ev = h.events.wait_msg(c.conn_id, "chat")
    assert ev[0] == "msg" and ev[1] == c.conn_id
    assert ev[2] == sent
    assert isinstance(ev[2]["p"]["n"], int) and isinstance(ev[2]["p"]["f"], float)


def test_msg_type_and_payload_are_renamed(h):
    c = h.connect("alice")
    c.send_json({"type": "chat", "payload": {"x": 1}, "k": 2})
    ev = h.events.wait_msg(c.conn_id, "chat")
    assert ev[2] == {"t": "chat", "p": {"x": 1}, "k": 2}
    # with t/p present, type/payload stay as they are
    c.send_json({"t": "both", "type": "other", "p": 1, "payload": 2})
    ev = h.events.wait_msg(c.conn_id, "both")
    assert ev[2] == {"t": "both", "type": "other", "p": 1, "payload": 2}


@pytest.mark.parametrize("obj", [{"p": {"x": 1}}, {"a": 1}, {"t": 5, "p": {}}, {}])
def test_json_object_without_a_string_t_is_still_msg(h, obj):
    c = h.connect("alice")
    c.send_json(obj)
    ev = h.events.wait(ANY, c.conn_id, lambda e: e[0] != "auth_connect")
    assert ev == ("msg", c.conn_id, obj)


def test_legacy_wse_prefix_is_accepted(h):
    c = h.connect("alice")
    c.send('WSE{"t":"legacy","p":{"a":1}}')
    assert h.events.wait_msg(c.conn_id, "legacy")[2] == {"t": "legacy", "p": {"a": 1}}


@pytest.mark.parametrize("text", ["hello world", "not json {", "[1, 2, 3]", "42"])
def test_text_that_is_not_a_json_object_is_raw(h, text):
    c = h.connect("alice")
    c.send(text)
    ev = h.events.wait("raw", c.conn_id)
    assert ev == ("raw", c.conn_id, text)


def test_binary_that_is_not_msgpack_is_bin(h):
    c = h.connect("alice")
    blob = b"\xc1\xc1\x00\xff binary blob \x00"  # 0xc1 is never valid msgpack
    c.send(blob)
    ev = h.events.wait("bin", c.conn_id)
    assert ev == ("bin", c.conn_id, blob)
    assert isinstance(ev[2], bytes)


def test_msgpack_connection_inbound_binary_is_msg(h):
    c = h.connect("alice", query="format=msgpack")
    c.send(msgpack.packb({"t": "mp", "p": {"a": 1, "s": "x"}}))
    assert h.events.wait_msg(c.conn_id, "mp")[2] == {"t": "mp", "p": {"a": 1, "s": "x"}}
    c.send(b"M:" + msgpack.packb({"t": "mp2", "p": [1, 2]}))
    assert h.events.wait_msg(c.conn_id, "mp2")[2] == {"t": "mp2", "p": [1, 2]}


def test_events_of_a_connection_keep_their_order(h):
    c = h.connect("alice")
    for i in range(20):
        c.send_json({"t": "seq", "p": {"i": i}})
    c.close()
    h.events.wait("disconnect", c.conn_id)
    mine = h.events.of(c.conn_id)
    assert [e[0] for e in mine] == ["auth_connect"] + ["msg"] * 20 + ["disconnect"]
    assert [e[2]["p"]["i"] for e in mine[1:-1]] == list(range(20))


# --- answered by the engine, not emitted ------------------------------------------------------

def _assert_not_emitted(h, c, t):
    c.send_json({"t": "after", "p": {}})
    h.events.wait_msg(c.conn_id, "after")
    kinds = [(e[0], e[2].get("t") if isinstance(e[2], dict) else e[2]) for e in h.events.of(c.conn_id)]
    assert kinds == [("auth_connect", c.ready["p"]["details"]["user_id"]), ("msg", "after")], \
        "%s must not be emitted: %r" % (t, kinds)


def test_ping_gets_pong_and_is_not_emitted(h):
    c = h.connect("alice")
    c.send_json({"c": "WSE", "t": "ping", "p": {"timestamp": 1234}, "v": 1})
    frame = c.recv()
    assert isinstance(frame, str)
    assert frame.startswith('{"c":"WSE","t":"PONG"'), frame
    pong = json.loads(frame)
    assert pong["p"]["client_timestamp"] == 1234
    assert isinstance(pong["p"]["server_timestamp"], int) and pong["p"]["server_timestamp"] > 0
    assert isinstance(pong["p"]["latency"], int) and pong["p"]["latency"] >= 0
    _assert_not_emitted(h, c, "ping")


@pytest.mark.parametrize("ping,expected", [
    ({"p": {"client_timestamp": 1700000000000}, "t": "ping"}, 1700000000000),  # the benchmarks' form
    ({"t": "ping", "p": {}}, 0),
])
def test_ping_variants(h, ping, expected):
    c = h.connect("alice")
    c.send_json(ping)
    pong = c.next_of("PONG")
    assert pong["p"]["client_timestamp"] == expected
    assert pong["p"]["latency"] >= 0


def test_client_hello_gets_server_hello_and_is_not_emitted(make_server):
    h = make_server(max_message_size=65536)
    c = h.connect("alice")
    c.send_json({"c": "WSE", "t": "client_hello", "p": {"client_version": "test", "protocol_version": 2}, "v": 1})
    frame = c.recv()
    assert isinstance(frame, str)
    hello = json.loads(frame)
    assert hello["c"] == "WSE" and hello["t"] == "server_hello"
    p = hello["p"]
    assert p["connection_id"] == c.conn_id
    assert p["protocol_version"] == 2
    assert isinstance(p["features"], dict)
    assert p["limits"]["max_message_size"] == 65536
    assert p["ping_interval"] == 25000
    assert TS_RE.match(p["server_time"])
    c.send_json({"t": "client_hello", "p": {"protocol_version": 7}})
    assert c.next_of("server_hello")["p"]["protocol_version"] == 2
    _assert_not_emitted(h, c, "client_hello")


def test_pong_is_consumed(h):
    c = h.connect("alice")
    c.send_json({"t": "pong", "p": {}})
    _assert_not_emitted(h, c, "pong")


# --- limits ---------------------------------------------------------------------------------------

def test_message_over_max_message_size_closes_1009(make_server):
    h = make_server(max_message_size=1024)
    c = h.connect("alice")
    c.send_json({"t": "ok", "p": {"s": "x" * 100}})
    h.events.wait_msg(c.conn_id, "ok")
    c.send_json({"t": "too_big", "p": {"s": "x" * 2000}})
    assert c.wait_closed()[0] == 1009
    h.events.wait("disconnect", c.conn_id)
    assert not [e for e in h.events.of(c.conn_id) if e[0] == "msg" and e[2]["t"] == "too_big"]


def test_inbound_rate_limit_closes_4429(make_server):
    h = make_server(inbound_rate=5, inbound_burst=5)
    c = h.connect("alice")
    for i in range(200):
        if c.closed.is_set():
            break
        try:
            c.send_json({"t": "spam", "p": {"i": i}})
        except Exception:
            break  # closed by the server meanwhile
    assert c.wait_closed()[0] == 4429
    frames = c.no_frames_left()
    errors = [json.loads(f) for f in frames if isinstance(f, str) and '"error"' in f]
    assert any(e["p"]["code"] == "RATE_LIMITED" for e in errors), frames
    h.events.wait("disconnect", c.conn_id)
    msgs = [e for e in h.events.of(c.conn_id) if e[0] == "msg"]
    assert 1 <= len(msgs) < 200


def test_idle_connection_is_closed(make_server):
    h = make_server(ping_interval=1, idle_timeout=2)
    c = h.connect("alice")
    ping = c.next_of("ping", timeout=10)  # the server's own ping
    assert ping["c"] == "WSE" and "server_time" in ping["p"]
    code, _ = c.wait_closed(timeout=15)
    assert code == 4408
    h.events.wait("disconnect", c.conn_id)


def test_workers_spread_connections(make_server):
    h = make_server(workers=2)
    clients = [h.connect("u%d" % i) for i in range(6)]
    wait_until(lambda: h.server.get_connection_count() == 6, what="6 connections")
    assert set(h.server.get_connections()) == {c.conn_id for c in clients}
    for c in clients:
        h.server.subscribe_connection(c.conn_id, ["all"])
    h.server.broadcast_local("all", '{"t":"hi"}')
    h.server.broadcast_all('{"t":"everyone"}')
    for c in clients:
        assert c.recv() == '{"c":"U","t":"hi"}'
        assert c.recv() == '{"c":"U","t":"everyone"}'
        c.send_json({"t": "from", "p": {}})
    for c in clients:
        assert h.events.wait_msg(c.conn_id, "from")
        assert h.server.send_event(c.conn_id, {"t": "direct", "p": {}}) > 0
        assert json.loads(c.recv())["t"] == "direct"


# --- the inbound queue bound --------------------------------------------------------------------

def test_inbound_queue_overflow_drops_and_counts(make_server):
    h = make_server(max_inbound_queue_size=4)
    c = h.connect("alice")
    n = 50
    for i in range(n):
        c.send_json({"t": "flood", "p": {"i": i}})
    # connect + n messages went to a queue of 4 that nobody drains
    wait_until(lambda: h.server.inbound_dropped_count() + h.server.inbound_queue_depth() == n + 1,
               what="dropped + depth == %d (dropped %d, depth %d)"
                    % (n + 1, h.server.inbound_dropped_count(), h.server.inbound_queue_depth()))
    assert h.server.inbound_queue_depth() == 4
    assert h.server.inbound_dropped_count() == n + 1 - 4
    snap = h.server.health_snapshot()
    assert snap["inbound_dropped"] == n + 1 - 4
    assert snap["inbound_queue_depth"] == 4
    batch = h.server.drain_inbound(100, 100)
    assert [e[0] for e in batch] == ["auth_connect", "msg", "msg", "msg"]
    assert [e[2]["p"]["i"] for e in batch[1:]] == [0, 1, 2]
    assert h.server.inbound_queue_depth() == 0
    # room again: later events are queued
    c.send_json({"t": "later", "p": {}})
    assert h.events.wait_msg(c.conn_id, "later")


def test_drain_inbound_timeout_returns_empty_list(h):
    assert h.server.drain_inbound(10, 20) == []


def test_drain_inbound_waits_without_the_gil(h):
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = len(ticks)
        assert h.server.drain_inbound(1, 300) == []
        assert len(ticks) > before, "another Python thread could not run during drain_inbound"
    finally:
        stop.set()
        t.join(TIMEOUT)


def test_drain_inbound_returns_as_soon_as_an_event_arrives(h):
    c = h.connect("alice")
    h.events.wait("auth_connect", c.conn_id)
    got = []
    t = threading.Thread(target=lambda: got.extend(h.server.drain_inbound(10, 10000)))
    t.start()
    c.send_json({"t": "wake", "p": {}})
    t.join(TIMEOUT)  # well before the 10 s timeout
    assert not t.is_alive(), "drain_inbound kept waiting although an event was queued"
    assert got and got[0][2] == {"t": "wake", "p": {}}


# --- callback mode ----------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

        self.threads = set()

    def on_connect(self, conn_id, arg):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.calls.append(("connect", conn_id, arg))

    def on_message(self, conn_id, data):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.calls.append(("message", conn_id, data))

    def on_disconnect(self, conn_id):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.calls.append(("disconnect", conn_id))

    def snapshot(self):
        with self.lock:
            return list(self.calls)


def test_callbacks_are_called_in_order(make_server):
    h = make_server(drain=False, start=False, jwt_secret=None)
    rec = Recorder()
    h.server.set_callbacks(rec.on_connect, rec.on_message, rec.on_disconnect)
    h.server.start()
    c = h.connect(user=None, cookie="k=v")
    for i in range(10):
        c.send_json({"t": "cb", "p": {"i": i}})
    c.send("plain text")
    c.send(b"\xc1binary")
    c.close()
    wait_until(lambda: any(x[0] == "disconnect" for x in rec.snapshot()), what="on_disconnect")
    calls = rec.snapshot()
    assert calls[0] == ("connect", c.conn_id, "k=v")
    assert [x[0] for x in calls] == ["connect"] + ["message"] * 12 + ["disconnect"]
    assert all(x[1] == c.conn_id for x in calls)
    assert [x[2] for x in calls[1:11]] == [{"t": "cb", "p": {"i": i}} for i in range(10)]
    assert calls[11][2] == "plain text"
    assert calls[12][2] == b"\xc1binary"
    assert h.server.drain_inbound(10, 10) == []  # callbacks, not the drain queue
    assert len(rec.threads) == 1 and threading.get_ident() not in rec.threads  # one dispatcher thread


def test_callbacks_with_jwt_get_the_user_id(make_server):
    h = make_server(drain=False, start=False)
    rec = Recorder()
    h.server.set_callbacks(rec.on_connect, rec.on_message, rec.on_disconnect)
    h.server.start()
    c = h.connect("alice")
    wait_until(lambda: rec.snapshot(), what="on_connect")
    assert rec.snapshot()[0] == ("connect", c.conn_id, "alice")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_callback_exceptions_are_swallowed(make_server):
    h = make_server(drain=False, start=False)
    rec = Recorder()
    seen = []

    def bad_message(conn_id, data):
        seen.append(data)
        raise ValueError("boom from a test callback")

    h.server.set_callbacks(rec.on_connect, bad_message, rec.on_disconnect)
    h.server.start()
    c = h.connect("alice")
    c.send_json({"t": "one", "p": {}})
    c.send_json({"t": "two", "p": {}})
    wait_until(lambda: len(seen) == 2, what="both messages despite the exception")
    assert [d["t"] for d in seen] == ["one", "two"]
    c.close()
    wait_until(lambda: any(x[0] == "disconnect" for x in rec.snapshot()), what="on_disconnect")
    assert h.server.is_running()


def test_set_callbacks_requires_callables(make_server):
    h = make_server(drain=False, start=False)
    with pytest.raises(TypeError):
        h.server.set_callbacks(None, lambda a, b: None, lambda a: None)
    with pytest.raises(TypeError):
        h.server.set_callbacks(lambda a, b: None, "nope", lambda a: None)
