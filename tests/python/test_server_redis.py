"""Two RustWSEServer instances in one process sharing a real redis-server (started here on a free
port, stopped by its PID): broadcast() on one reaches the other's subscribers exactly once,
broadcast_local() stays on its instance, and a backend's PUBLISH wse:<topic> reaches both."""
import json
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from conftest import HOST, TIMEOUT, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def resp(port, *args, timeout=TIMEOUT):
    """One Redis command over RESP; returns the first reply line (enough for PING / PUBLISH)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        cmd = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() if isinstance(x, str) else x for x in args))
        s.sendall(cmd)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()


@pytest.fixture(scope="module")
def redis_port():
    assert shutil.which("redis-server"), "redis-server is required (Debian package redis-server)"
    port = free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, "redis-server exited with %r" % proc.returncode
            try:
                return resp(port, "PING", timeout=0.5) == "+PONG"
            except OSError:
                return False
        wait_until(up, TIMEOUT, "redis-server answering PING")
        yield port
    finally:
        proc.terminate()  # by PID: this process only
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


@pytest.fixture
def pair(make_server, redis_port):
    url = "redis://%s:%d" % (HOST, redis_port)
    a = make_server(redis_url=url)
    b = make_server(redis_url=url)
    return a, b


def pub(tag):
    return '{"t":"m","p":{"tag":"%s"}}' % tag


def exp(tag):
    return '{"c":"U","t":"m","p":{"tag":"%s"}}' % tag


def warm_up(publisher, remote_client, topic, timeout=10.0):
    """Publishes probes on topic from publisher until remote_client (another instance) gets one,
    then one final probe, read up to: remote_client's stream is clean afterwards. Returns the
    probes published (local subscribers of publisher got them all)."""
    deadline = time.monotonic() + timeout
    sent = []
    while True:
        tag = "probe-%s" % uuid.uuid4().hex[:8]
        publisher.broadcast(topic, pub(tag))
        sent.append(tag)
        try:
            remote_client.recv(0.2)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the other instance never got a publication through Redis"
    final = "final-%s" % uuid.uuid4().hex[:8]
    publisher.broadcast(topic, pub(final))
    sent.append(final)
    remote_client.until_marker(exp(final), timeout)
    return sent


def flush_local(h, client):
    h.frames_before_barrier(client)


def test_broadcast_reaches_the_other_instance_exactly_once(pair):
    A, B = pair
    ca = A.connect("alice")
    cb = B.connect("bob")
    A.server.subscribe_connection(ca.conn_id, ["t1"])
    B.server.subscribe_connection(cb.conn_id, ["t1"])
    warm_up(A.server, cb, "t1")
    flush_local(A, ca)
    warm_up(B.server, ca, "t1")
    flush_local(B, cb)

    A.server.broadcast("t1", pub("m1"))
    assert cb.recv() == exp("m1")  # through Redis
    B.server.broadcast("t1", pub("m2"))
    # ca: m1 delivered locally, then m2 through Redis; an echo of m1 would come before m2
    assert ca.recv() == exp("m1")
    assert ca.recv() == exp("m2")
    A.server.broadcast("t1", pub("m3"))
    assert cb.recv() == exp("m2")
    assert cb.recv() == exp("m3")  # no echo of m2 in between
    assert ca.recv() == exp("m3")


def test_broadcast_reaches_only_subscribers_of_the_other_instance(pair):
    A, B = pair
    ca = A.connect("alice")
    cb = B.connect("bob")
    other = B.connect("carol")
    A.server.subscribe_connection(ca.conn_id, ["t2"])
    B.server.subscribe_connection(cb.conn_id, ["t2"])
    warm_up(A.server, cb, "t2")
    A.server.broadcast("t2", pub("x"))
    assert cb.recv() == exp("x")
    assert B.frames_before_barrier(other) == []


def test_broadcast_local_does_not_leave_its_instance(pair):
    A, B = pair
    ca = A.connect("alice")
    cb = B.connect("bob")
    A.server.subscribe_connection(ca.conn_id, ["t3"])
    B.server.subscribe_connection(cb.conn_id, ["t3"])
    warm_up(A.server, cb, "t3")
    flush_local(A, ca)
    A.server.broadcast_local("t3", pub("local-only"))
    assert ca.recv() == exp("local-only")
    A.server.broadcast("t3", pub("after"))
    assert cb.recv() == exp("after"), "broadcast_local must not reach the other instance"
    assert ca.recv() == exp("after")


def test_broadcast_all_does_not_leave_its_instance(pair):
    A, B = pair
    ca = A.connect("alice")
    cb = B.connect("bob")
    B.server.subscribe_connection(cb.conn_id, ["t4"])
    A.server.subscribe_connection(ca.conn_id, ["t4"])
    warm_up(A.server, cb, "t4")
    A.server.broadcast_all('{"t":"everyone_here"}')
    A.server.broadcast("t4", pub("after"))
    assert cb.recv() == exp("after")


def test_backend_publish_into_redis_reaches_both(pair, redis_port):
    A, B = pair
    ca = A.connect("alice")
    cb = B.connect("bob")
    A.server.subscribe_connection(ca.conn_id, ["news"])
    B.server.subscribe_connection(cb.conn_id, ["news"])

    def publish(tag):
        reply = resp(redis_port, "PUBLISH", "wse:news", pub(tag))
        assert reply.startswith(":"), reply
        return int(reply[1:])

    # both instances' subscriptions are live once a PUBLISH has two receivers
    wait_until(lambda: publish("probe") >= 2, 10.0, "two instances subscribed to wse:news")
    publish("final")
    for c in (ca, cb):
        c.until_marker(exp("final"))
    reply = resp(redis_port, "PUBLISH", "wse:news", '{"t":"from_backend","p":{"k":1}}')
    assert reply == ":2"
    want = '{"c":"U","t":"from_backend","p":{"k":1}}'
    assert ca.recv() == want
    assert cb.recv() == want


def test_health_snapshot_with_redis(pair):
    A, _ = pair
    snap = A.server.health_snapshot()
    assert snap["connections"] == 0
    assert "cluster_connected" in snap
