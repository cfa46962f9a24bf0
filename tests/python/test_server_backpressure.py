"""Python outrunning the shards: calls wait for room in a full shard inbox (GIL released) instead of
losing frames, and lifecycle events are never dropped. (Found by perf/python_bench.py: 19-71% of
send() / broadcast_all() frames were lost without a trace.)"""
import json

N = 30000  # several times a shard inbox lane (8192)


def drain_count(client, n, timeout=30.0):
    got = 0
    while got < n:
        client.recv(timeout)
        got += 1
    return got


def test_send_flood_every_frame_arrives_in_order(h):
    c = h.connect("alice")
    payloads = ['{"t":"n","p":{"i":%d}}' % i for i in range(N)]
    for p in payloads:
        h.server.send(c.conn_id, p)  # far faster than the shard drains: waits, never drops
    for i in range(N):
        assert json.loads(c.recv(30.0))["p"]["i"] == i
    assert "wsed_python_push_dropped_total 0" in h.server.prometheus_metrics()


def test_broadcast_all_flood_reaches_every_client_whole(h):
    clients = [h.connect("u%d" % k) for k in range(4)]
    for i in range(N // 2):
        h.server.broadcast_all('{"t":"b","p":{"i":%d}}' % i)
    for c in clients:
        assert drain_count(c, N // 2) == N // 2
    assert "wsed_python_push_dropped_total 0" in h.server.prometheus_metrics()


def test_send_event_flood_all_counted_and_ids_remembered_only_when_sent(make_server):
    h = make_server(rate_limit_capacity=1e9, rate_limit_refill=1e9)
    c = h.connect("alice")
    sent = sum(1 for i in range(N) if h.server.send_event(c.conn_id, {"t": "e", "id": "id-%d" % i}) > 0)
    assert sent == N
    for i in range(N):
        frame = c.recv(30.0)
        assert json.loads(frame)["id"] == "id-%d" % i
    assert h.server.send_event(c.conn_id, {"t": "e", "id": "id-%d" % (N - 1)}) == 0  # a repeat
    assert h.server.send_event("not-a-connection", {"t": "e", "id": "fresh"}) == 0
    assert h.server.send_event(c.conn_id, {"t": "e", "id": "fresh"}) > 0  # not remembered above


def test_lifecycle_events_pass_a_full_queue(make_server):
    h = make_server(max_inbound_queue_size=4)
    a = h.connect("alice")
    for i in range(50):
        a.send_json({"t": "m", "p": {"i": i}})
    h.marker(a)  # every message reached the engine (and the full queue dropped most)
    b = h.connect("bob")
    b.close()
    b.wait_closed()
    kinds = []
    for _ in range(200):
        evs = h.server.drain_inbound(256, 100)
        kinds += [(k, cid) for k, cid, _ in evs]
        if ("disconnect", b.conn_id) in kinds:
            break
    assert ("auth_connect", b.conn_id) in kinds
    assert ("disconnect", b.conn_id) in kinds
    assert h.server.inbound_dropped_count() > 0


def test_dedup_window_and_enqueue_timeout_are_options(make_server):
    h = make_server(dedup_window=2)
    c = h.connect("alice")
    for i in range(3):
        assert h.server.send_event(c.conn_id, {"t": "e", "id": "d%d" % i}) > 0
    assert h.server.send_event(c.conn_id, {"t": "e", "id": "d2"}) == 0  # still remembered
    assert h.server.send_event(c.conn_id, {"t": "e", "id": "d0"}) > 0   # out of the window
    import pytest
    from wsed.compat import RustWSEServer
    with pytest.raises(ValueError, match="enqueue_timeout"):
        RustWSEServer("127.0.0.1", 0, enqueue_timeout=-1)
    with pytest.raises(ValueError, match="dedup_window"):
        RustWSEServer("127.0.0.1", 0, dedup_window=-1)
