"""Outbound side of RustWSEServer: send, send_bytes, send_event (envelope, formats, duplicate
filter, rate limit) and the instance-wide broadcasts."""
import datetime
import json
import zlib

import msgpack  # python3-msgpack
import pytest

from conftest import TS_RE, UUID7_RE, wait_until


def test_send_is_a_verbatim_text_frame(h):
    c = h.connect("alice")
    text = 'héllo {not json at all ✓'
    h.server.send(c.conn_id, text)
    frame = c.recv()
    assert isinstance(frame, str)
    assert frame == text
    h.server.send(c.conn_id, '{"t":"no_c_added"}')
    assert c.recv() == '{"t":"no_c_added"}'


def test_send_bytes_is_a_verbatim_binary_frame(h):
    c = h.connect("alice")
    data = bytes(range(256)) + b"M:C:"
    h.server.send_bytes(c.conn_id, data)
    frame = c.recv()
    assert isinstance(frame, bytes)
    assert frame == data


def test_send_event_envelope(h):
    c = h.connect("alice")
    n = h.server.send_event(c.conn_id, {"t": "update", "p": {"x": 1}, "extra": [1, "a"]})
    frame = c.recv()
    assert isinstance(frame, bytes), "send_event sends a binary frame"
    assert n == len(frame)
    msg = json.loads(frame)
    assert list(msg) == ["c", "t", "p", "extra", "id", "seq", "ts", "v"]
    assert msg["c"] == "U"
    assert msg["t"] == "update"
    assert msg["p"] == {"x": 1}
    assert msg["extra"] == [1, "a"]
    assert UUID7_RE.match(msg["id"]), msg["id"]
    assert isinstance(msg["seq"], int)
    assert TS_RE.match(msg["ts"]), msg["ts"]
    sent_at = datetime.datetime.strptime(msg["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - sent_at).total_seconds()) < 300
    assert msg["v"] == 1


def test_send_event_seq_grows_per_connection_and_ids_differ(h):
    c = h.connect("alice")
    for i in range(3):
        h.server.send_event(c.conn_id, {"t": "n", "p": {"i": i}})
    msgs = [json.loads(c.recv()) for _ in range(3)]
    assert [m["p"]["i"] for m in msgs] == [0, 1, 2]
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert len({m["id"] for m in msgs}) == 3


@pytest.mark.parametrize("t,cat", [
    ("chat", "U"), ("user_snapshot", "S"), ("snapshot_orders", "S"), ("snapshot_complete", "S"),
    ("error", "WSE"), ("server_hello", "WSE"), ("subscription_update", "WSE"), ("PONG", "WSE"),
    ("connection_state_change", "WSE"),
])
def test_send_event_category_rule(h, t, cat):
    c = h.connect("alice")
    h.server.send_event(c.conn_id, {"t": t, "p": {}})
    msg = json.loads(c.recv())
    assert msg["c"] == cat
    assert msg["t"] == t


def test_send_event_replaces_callers_c_and_v_and_defaults_to_u(h):
    c = h.connect("alice")
    h.server.send_event(c.conn_id, {"c": "X", "t": "chat", "v": 9, "p": {}})
    msg = json.loads(c.recv())
    assert msg["c"] == "U" and msg["v"] == 1
    assert list(msg)[:2] == ["c", "t"] and list(msg)[-1] == "v"
    h.server.send_event(c.conn_id, {"p": {"no": "type"}})
    msg = json.loads(c.recv())
    assert msg["c"] == "U"
    assert "t" not in msg
    assert msg["p"] == {"no": "type"}


def test_send_event_keeps_a_given_id(h):
    c = h.connect("alice")
    n = h.server.send_event(c.conn_id, {"t": "x", "p": {}, "id": "my-own-id-1"})
    frame = c.recv()
    assert n == len(frame)
    msg = json.loads(frame)
    assert msg["id"] == "my-own-id-1"
    assert list(msg) == ["c", "t", "p", "id", "seq", "ts", "v"]


def test_send_event_compresses_above_the_threshold(h):
    c = h.connect("alice")
    big = {"t": "big", "p": {"s": "abcdefgh" * 500}}
    n = h.server.send_event(c.conn_id, big)
    frame = c.recv()
    assert isinstance(frame, bytes)
    assert frame.startswith(b"C:"), frame[:20]
    assert n == len(frame)
    msg = json.loads(zlib.decompress(frame[2:]))
    assert list(msg) == ["c", "t", "p", "id", "seq", "ts", "v"]
    assert msg["t"] == "big" and msg["p"] == big["p"] and msg["c"] == "U"
    assert len(frame) < 2000  # it really is compressed
    # threshold 0: never compressed
    n = h.server.send_event(c.conn_id, big, compression_threshold=0)
    frame = c.recv()
    assert n == len(frame)
    assert json.loads(frame)["p"] == big["p"]
    # a threshold above the JSON's length: plain JSON
    h.server.send_event(c.conn_id, big, compression_threshold=1 << 20)
    assert json.loads(c.recv())["p"] == big["p"]
    # a small event under the default threshold: plain JSON
    h.server.send_event(c.conn_id, {"t": "small", "p": {}})
    frame = c.recv()
    assert frame.startswith(b"{") and json.loads(frame)["t"] == "small"


def test_send_event_small_threshold(h):
    c = h.connect("alice")
    n = h.server.send_event(c.conn_id, {"t": "tiny", "p": {"a": 1}}, compression_threshold=10)
    frame = c.recv()
    assert frame.startswith(b"C:") and n == len(frame)
    assert json.loads(zlib.decompress(frame[2:]))["p"] == {"a": 1}


def test_send_event_msgpack_connection(h):
    c = h.connect("alice", query="format=msgpack")
    n = h.server.send_event(c.conn_id, {"t": "mp", "p": {"a": 1, "l": [1, 2.5, None, True]}})
    frame = c.recv()
    assert isinstance(frame, bytes)
    assert frame.startswith(b"M:"), frame[:10]
    assert n == len(frame)
    msg = msgpack.unpackb(frame[2:], raw=False)
    assert list(msg) == ["c", "t", "p", "id", "seq", "ts", "v"]
    assert msg["c"] == "U" and msg["t"] == "mp" and msg["v"] == 1
    assert msg["p"] == {"a": 1, "l": [1, 2.5, None, True]}
    assert UUID7_RE.match(msg["id"]) and TS_RE.match(msg["ts"])


def test_send_event_msgpack_connection_large_event_stays_msgpack(h):
    c = h.connect("alice", query="format=msgpack")
    big = {"t": "big", "p": {"s": "y" * 5000}}
    n = h.server.send_event(c.conn_id, big)
    frame = c.recv()
    assert frame.startswith(b"M:") and n == len(frame)
    assert msgpack.unpackb(frame[2:], raw=False)["p"] == big["p"]


def test_send_event_duplicate_id_returns_zero(h):
    c = h.connect("alice")
    other = h.connect("bob")
    assert h.server.send_event(c.conn_id, {"t": "x", "p": {}, "id": "dup-1"}) > 0
    assert h.server.send_event(c.conn_id, {"t": "x", "p": {"again": 1}, "id": "dup-1"}) == 0
    assert h.server.send_event(c.conn_id, {"t": "x", "p": {}, "id": "dup-2"}) > 0
    frames = h.frames_before_barrier(c)
    assert [json.loads(f)["id"] for f in frames] == ["dup-1", "dup-2"]
    # the filter is per connection: the same id to another connection is sent
    assert h.server.send_event(other.conn_id, {"t": "x", "p": {}, "id": "dup-1"}) > 0
    assert json.loads(other.recv())["id"] == "dup-1"


def test_send_event_rate_limit(make_server):
    h = make_server(rate_limit_capacity=5.0, rate_limit_refill=0.01)
    c = h.connect("alice")
    results = [h.server.send_event(c.conn_id, {"t": "r", "p": {"i": i}}) for i in range(12)]
    assert all(r > 0 for r in results[:5]), results
    assert results[5:] == [0] * 7, results
    frames = h.frames_before_barrier(c)
    envelopes = [json.loads(f) for f in frames if isinstance(f, bytes)]
    assert [m["p"]["i"] for m in envelopes] == [0, 1, 2, 3, 4]
    # another connection has its own bucket
    d = h.connect("bob")
    assert h.server.send_event(d.conn_id, {"t": "r", "p": {}}) > 0


def test_send_event_to_unknown_or_closed_connection_returns_zero(h):
    assert h.server.send_event("nope", {"t": "x", "p": {}}) == 0
    c = h.connect("alice")
    c.close()
    h.events.wait("disconnect", c.conn_id)
    assert h.server.send_event(c.conn_id, {"t": "x", "p": {}}) == 0


# --- broadcasts to the whole instance ---------------------------------------------------------

def test_broadcast_all_reaches_every_client_with_c_inserted(h):
    clients = [h.connect("u%d" % i) for i in range(3)]
    h.server.broadcast_all('{"t":"news","p":{"a":1}}')
    for c in clients:
        frame = c.recv()
        assert isinstance(frame, str)
        assert frame == '{"c":"U","t":"news","p":{"a":1}}'


@pytest.mark.parametrize("data,expected", [
    ('{"c":"X","t":"news"}', '{"c":"X","t":"news"}'),           # c present: unchanged
    ('{"t":"user_snapshot","p":{}}', '{"c":"S","t":"user_snapshot","p":{}}'),
    ('{"p":{"t":"x_snapshot"}}', '{"c":"U","p":{"t":"x_snapshot"}}'),  # a nested t does not count
    ('plain text, not JSON', 'plain text, not JSON'),
])
def test_broadcast_all_category_insertion(h, data, expected):
    c = h.connect("alice")
    h.server.broadcast_all(data)
    assert c.recv() == expected


def test_broadcast_all_spaced_json_gets_its_category(h):
    c = h.connect("alice")
    h.server.broadcast_all(json.dumps({"t": "user_snapshot", "p": {"a": 1}}))
    msg = json.loads(c.recv())
    assert msg == {"c": "S", "t": "user_snapshot", "p": {"a": 1}}
    assert list(msg)[0] == "c"


def test_broadcast_all_bytes_is_binary_to_everyone(h):
    clients = [h.connect("u%d" % i) for i in range(3)]
    data = b"\x00\x01binary broadcast\xff"
    h.server.broadcast_all_bytes(data)
    for c in clients:
        frame = c.recv()
        assert isinstance(frame, bytes)
        assert frame == data


def test_broadcast_all_after_a_client_left(h):
    a = h.connect("alice")
    b = h.connect("bob")
    b.close()
    h.events.wait("disconnect", b.conn_id)
    h.server.broadcast_all('{"t":"after_close"}')
    assert a.recv() == '{"c":"U","t":"after_close"}'
