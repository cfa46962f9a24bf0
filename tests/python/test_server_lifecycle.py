"""RustWSEServer's lifecycle (construction and its validation, start/stop/restart, drain), the
introspection methods (health_snapshot, prometheus_metrics), unknown ids, the cluster methods
that wsed does not have, and the wse_server shim."""
import json
import socket

import pytest

from conftest import HOST, SECRET, TIMEOUT, Client, RustWSEServer, free_port, make_token, wait_until
import wsed.compat


def connect(aloop, port, user="alice"):
    c = Client(aloop, "ws://%s:%d/" % (HOST, port), {"Authorization": "Bearer " + make_token(user)})
    ready = json.loads(c.recv())
    assert ready["t"] == "server_ready"
    c.ready = ready
    c.conn_id = ready["p"]["details"]["connection_id"]
    return c


@pytest.fixture
def servers():
    made = []
    yield made
    for s in made:
        if s.is_running():
            s.stop()


def new(servers, port=0, **kw):
    kw.setdefault("jwt_secret", SECRET)
    s = RustWSEServer(HOST, port, **kw)
    servers.append(s)
    return s


# --- start / stop -----------------------------------------------------------------------------

def test_start_binds_before_returning_and_stop_closes_with_1001(aloop, servers):
    s = new(servers)
    assert s.is_running() is False
    assert s.start() is None
    assert s.is_running() is True
    port = s.local_port()
    assert 0 < port < 65536
    c = connect(aloop, port)  # no wait between start() and the connect
    wait_until(lambda: s.get_connection_count() == 1, what="1 connection")
    assert s.stop() is None
    assert s.is_running() is False
    assert s.get_connection_count() == 0
    code, reason = c.wait_closed()
    assert code == 1001


def test_double_start_raises(servers):
    s = new(servers)
    s.start()
    with pytest.raises(RuntimeError, match="already running"):
        s.start()
    assert s.is_running()


def test_restart_after_stop(aloop, servers):
    port = free_port()
    s = new(servers, port=port)
    s.start()
    assert s.local_port() == port
    connect(aloop, port)
    s.stop()
    s.start()
    assert s.is_running()
    assert s.local_port() == port
    c = connect(aloop, port, "bob")
    assert c.ready["p"]["details"]["user_id"] == "bob"
    wait_until(lambda: s.get_connection_count() == 1, what="1 connection after restart")
    s.stop()
    s.start()  # and with drain mode on
    s.enable_drain_mode()
    c = connect(aloop, port, "carol")
    events = []
    wait_until(lambda: events.extend(s.drain_inbound(10, 50)) or events, what="an event")
    assert events[0] == ("auth_connect", c.conn_id, "carol")


def test_stop_when_not_running_is_a_no_op(servers):
    s = new(servers)
    assert s.stop() is None
    s.start()
    s.stop()
    assert s.stop() is None
    assert s.is_running() is False


def test_port_in_use_raises(servers):
    blocker = socket.socket()
    blocker.bind((HOST, 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        s = new(servers, port=port)
        with pytest.raises(RuntimeError, match="in use"):
            s.start()
        assert s.is_running() is False
    finally:
        blocker.close()
    s.start()  # the port is free now
    assert s.is_running() and s.local_port() == port


def test_port_taken_by_another_server_raises(servers):
    a = new(servers)
    a.start()
    b = new(servers, port=a.local_port())
    with pytest.raises(RuntimeError, match="in use"):
        b.start()
    assert b.is_running() is False


def test_constructor_positional_order_of_the_reference(servers):
    args = (HOST, 0, 10, SECRET, None, None, None, None, None, "HS256", None, 1000, True, 64, 300, 500,
            1 << 24, True, 2048, 0, 1000.0, 100.0, 1 << 20, 20, 60, 1 << 24, 0)
    s = RustWSEServer(*args)
    servers.append(s)
    s.start()
    snap = s.health_snapshot()
    assert snap["recovery_enabled"] is True and snap["presence_enabled"] is True


def test_wsed_options_are_keyword_only():
    args = (HOST, 0, 10, SECRET, None, None, None, None, None, "HS256", None, 1000, True, 64, 300, 500,
            1 << 24, True, 2048, 0, 1000.0, 100.0, 1 << 20, 20, 60, 1 << 24, 0)
    with pytest.raises(TypeError):
        RustWSEServer(*args, "redis://127.0.0.1:6379")
    RustWSEServer(*args, redis_prefix="x:", workers=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"ping_interval": 60, "idle_timeout": 60}, "ping_interval"),
    ({"ping_interval": 90, "idle_timeout": 60}, "ping_interval"),
    ({"jwt_algorithm": "HS999"}, "Unsupported jwt_algorithm"),
    ({"jwt_algorithm": "none", "jwt_secret": None}, "Unsupported jwt_algorithm"),
    ({"jwt_secret": b"too short"}, "at least 32 bytes"),
    ({"port": 70000}, None),
    ({"port": -1}, None),
    ({"max_connections": 0}, None),
])
def test_constructor_value_errors(kwargs, match):
    kw = {"jwt_secret": SECRET, "port": 0}
    kw.update(kwargs)
    port = kw.pop("port")
    with pytest.raises(ValueError, match=match):
        RustWSEServer(HOST, port, **kw)


@pytest.mark.parametrize("kwargs", [
    {"port": "5006"},
    {"max_connections": "many"},
    {"jwt_secret": 12345},
    {"host": 127},
    {"recovery_buffer_size": "big"},
    {"no_such_option": 1},
])
def test_constructor_type_errors(kwargs):
    kw = {"host": HOST, "port": 0}
    kw.update(kwargs)
    with pytest.raises(TypeError):
        RustWSEServer(kw.pop("host"), kw.pop("port"), **kw)


def test_max_connections_refuses_the_next_one(aloop, servers):
    s = new(servers, max_connections=1)
    s.start()
    connect(aloop, s.local_port())
    wait_until(lambda: s.get_connection_count() == 1, what="1 connection")
    try:
        c = Client(aloop, "ws://%s:%d/" % (HOST, s.local_port()), {"Authorization": "Bearer " + make_token("b")})
    except Exception:
        pass  # refused at the upgrade
    else:  # or upgraded and closed, without a server_ready
        c.wait_closed()
        frames = c.no_frames_left()
        assert not [f for f in frames if isinstance(f, str) and '"server_ready"' in f], frames
    assert s.get_connection_count() == 1


# --- drain ------------------------------------------------------------------------------------

def test_drain_closes_every_client_with_code_and_reason(aloop, servers):
    s = new(servers)
    s.start()
    port = s.local_port()
    clients = [connect(aloop, port, "u%d" % i) for i in range(3)]
    wait_until(lambda: s.get_connection_count() == 3, what="3 connections")
    assert s.drain(4300, "moving to another node", timeout=TIMEOUT) is None
    for c in clients:
        code, reason = c.wait_closed()
        assert (code, reason) == (4300, "moving to another node")
    assert s.is_running() is False
    assert s.get_connection_count() == 0


def test_drain_defaults(aloop, servers):
    s = new(servers)
    s.start()
    c = connect(aloop, s.local_port())
    s.drain(timeout=TIMEOUT)
    assert c.wait_closed()[0] == 4300
    assert s.is_running() is False
    s.start()  # can start again after a drain
    assert s.is_running()


def test_drain_with_custom_code_keyword(aloop, servers):
    s = new(servers)
    s.start()
    c = connect(aloop, s.local_port())
    s.drain(close_code=4000, close_reason="bye", timeout=TIMEOUT)
    assert c.wait_closed() == (4000, "bye")


def test_drain_emits_disconnect_events(aloop, servers):
    s = new(servers)
    s.enable_drain_mode()
    s.start()
    c = connect(aloop, s.local_port())
    s.drain(4300, "", timeout=TIMEOUT)
    events = []
    wait_until(lambda: events.extend(s.drain_inbound(10, 50)) or any(e[0] == "disconnect" for e in events),
               what="the disconnect event after drain")
    assert ("disconnect", c.conn_id, None) in events


def silent_ws(port, user="silent"):
    """A WebSocket connection made by hand that, once upgraded, never reads again (so it never
    answers a close). Returns the socket."""
    import base64
    import os
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET /wse HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                  % (HOST, port, key, make_token(user))).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_drain_stops_accepting_and_gives_up_after_its_timeout(aloop, servers):
    import threading
    s = new(servers)
    s.start()
    port = s.local_port()
    stuck = silent_ws(port)
    wait_until(lambda: s.get_connection_count() == 1, what="the silent connection")
    done = threading.Event()
    errors = []

    def run_drain():
        try:
            s.drain(4300, "draining", timeout=3)
        except Exception as exc:  # reported by the test
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=run_drain)
    t.start()
    try:
        def refused():
            assert not done.is_set(), "drain returned before its timeout with a client that never closed"
            try:
                c = Client(aloop, "ws://%s:%d/" % (HOST, port), {"Authorization": "Bearer " + make_token("late")})
            except Exception:
                return True  # not accepted
            try:
                first = c.recv(1.0)
            except Exception:
                return True  # closed without a server_ready
            if isinstance(first, str) and '"server_ready"' in first:
                c.wait_closed()  # accepted before the drain began: it is closed by the drain too
                assert c.close_code == 4300
                return False
            return True
        wait_until(refused, 10.0, "a new connection refused while draining")
    finally:
        assert done.wait(3 + 2 * TIMEOUT), "drain did not return after its timeout"
        t.join(TIMEOUT)
        stuck.close()
    assert errors == []
    assert s.is_running() is False


# --- introspection ------------------------------------------------------------------------------

HEALTH_KEYS = {"connections", "inbound_queue_depth", "inbound_dropped", "uptime_secs", "recovery_enabled",
               "recovery_topic_count", "recovery_total_bytes", "presence_enabled", "presence_topics",
               "presence_total_users", "cluster_connected", "cluster_peer_count", "cluster_messages_sent",
               "cluster_messages_delivered", "cluster_messages_dropped"}


def test_health_snapshot(aloop, servers):
    s = new(servers, presence_enabled=True)
    s.start()
    clients = [connect(aloop, s.local_port(), "u%d" % i) for i in range(2)]
    wait_until(lambda: s.get_connection_count() == 2, what="2 connections")
    snap = s.health_snapshot()
    assert isinstance(snap, dict)
    missing = HEALTH_KEYS - set(snap)
    assert not missing, "health_snapshot lacks %s" % sorted(missing)
    assert snap["connections"] == 2
    assert snap["inbound_queue_depth"] == 0  # drain mode is off: nothing is queued
    assert snap["inbound_dropped"] == 0
    assert isinstance(snap["uptime_secs"], float) and snap["uptime_secs"] >= 0
    assert snap["recovery_enabled"] is False
    assert snap["recovery_topic_count"] == 0 and snap["recovery_total_bytes"] == 0
    assert snap["presence_enabled"] is True
    assert snap["presence_topics"] == 0 and snap["presence_total_users"] == 0
    assert snap["cluster_connected"] is False
    assert snap["cluster_peer_count"] == 0
    for k in ("cluster_messages_sent", "cluster_messages_delivered", "cluster_messages_dropped"):
        assert isinstance(snap[k], int)
    clients[0].close()
    wait_until(lambda: s.health_snapshot()["connections"] == 1, what="health connections 1")
    before = s.health_snapshot()["uptime_secs"]
    wait_until(lambda: s.health_snapshot()["uptime_secs"] > before, what="uptime growing")


def test_prometheus_metrics(aloop, servers):
    s = new(servers)
    s.start()
    connect(aloop, s.local_port())
    wait_until(lambda: s.get_connection_count() == 1, what="1 connection")
    text = s.prometheus_metrics()
    assert isinstance(text, str)
    assert "# TYPE wsed_" in text and "# HELP wsed_" in text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = value
    assert any(n.startswith("wsed_") for n in samples)
    def shard_sum(family):  # per-shard families: no total series, the sum is the consumer's
        return sum(float(v) for n, v in samples.items() if n.startswith(family + '{shard="'))
    assert shard_sum("wsed_connections_open") == 1
    assert shard_sum("wsed_connections_accepted_total") >= 1


def test_connection_count_and_events_before_start(servers):
    s = new(servers)
    assert s.get_connection_count() == 0
    s.enable_drain_mode()
    assert s.drain_inbound(5, 10) == []
    assert s.inbound_dropped_count() == 0 and s.inbound_queue_depth() == 0


# --- unknown ids ----------------------------------------------------------------------------------

def test_unknown_connection_ids_are_ignored(aloop, servers):
    s = new(servers)
    s.start()
    c = connect(aloop, s.local_port())
    assert s.send("nope", "x") is None
    assert s.send_bytes("nope", b"x") is None
    assert s.send_event("nope", {"t": "x", "p": {}}) == 0
    assert s.disconnect("nope") is None
    assert s.subscribe_connection("nope", ["a"]) is None
    assert s.unsubscribe_connection("nope", ["a"]) is None
    assert s.unsubscribe_connection("nope") is None
    assert s.set_topic_acl("nope", allow=["x"], deny=["y"]) is None
    res = s.subscribe_with_recovery("nope", ["a"])
    assert isinstance(res, dict) and res["recovered"] is False
    assert s.get_topic_subscriber_count("a") == 0
    # the real connection is untouched
    s.send(c.conn_id, "still here")
    assert c.recv() == "still here"
    assert s.get_connection_count() == 1


# --- what wsed does not have -------------------------------------------------------------------

@pytest.mark.parametrize("name,args", [
    ("connect_cluster", (["127.0.0.1:9999"],)),
    ("cluster_info", ()),
    ("cluster_connected", ()),
    ("cluster_peers_count", ()),
    ("get_cluster_dlq_entries", ()),
])
def test_cluster_methods_name_redis_url(servers, name, args):
    s = new(servers)
    with pytest.raises(NotImplementedError, match="redis_url"):
        getattr(s, name)(*args)


def test_wse_server_shim():
    from wse_server._wse_accel import RustWSEServer as Shimmed
    from wse_server._wse_accel import rust_jwt_encode, rust_jwt_decode  # noqa: F401
    import wse_server
    assert Shimmed is wsed.compat.RustWSEServer
    assert wse_server.RustWSEServer is wsed.compat.RustWSEServer
    s = Shimmed(HOST, 0, jwt_secret=SECRET)
    assert s.is_running() is False
