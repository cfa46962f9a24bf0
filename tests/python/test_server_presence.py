"""Presence through RustWSEServer (presence_enabled=True, JWT users): join/leave drain events,
presence_join/leave/update frames to the topic's subscribers, presence()/presence_stats(),
update_presence and the data size limit."""
import json

import pytest

from conftest import wait_until


def wire(c, t, topic):
    """The next presence frame of type t on client c (text frame), as a dict; its p without the
    (optional) "topic" key, which must name the topic when present."""
    while True:
        frame = c.recv()
        assert isinstance(frame, str), "presence frames are text: %r" % (frame,)
        msg = json.loads(frame)
        if msg.get("t") == t:
            assert msg["c"] == "WSE"
            assert msg["p"].pop("topic", topic) == topic
            return msg


@pytest.fixture
def ph(make_server):
    return make_server(presence_enabled=True)


def test_join_event_and_frames(ph):
    h = ph
    a = h.connect("alice")
    h.server.subscribe_connection(a.conn_id, ["lobby"], presence_data={"name": "Alice"})
    ev = h.events.wait("presence_join")
    assert ev == ("presence_join", None, {"topic": "lobby", "user_id": "alice", "data": {"name": "Alice"}})
    msg = wire(a, "presence_join", "lobby")  # the joiner gets its own join
    assert msg["p"] == {"user_id": "alice", "data": {"name": "Alice"}}
    b = h.connect("bob")
    h.server.subscribe_connection(b.conn_id, ["lobby"], {"name": "Bob"})
    assert h.events.wait("presence_join")[2] == {"topic": "lobby", "user_id": "bob", "data": {"name": "Bob"}}
    assert wire(a, "presence_join", "lobby")["p"] == {"user_id": "bob", "data": {"name": "Bob"}}
    assert wire(b, "presence_join", "lobby")["p"] == {"user_id": "bob", "data": {"name": "Bob"}}


def test_presence_queries(ph):
    h = ph
    assert h.server.presence("lobby") == {}
    assert h.server.presence_stats("lobby") == {"num_users": 0, "num_connections": 0}
    a1 = h.connect("alice")
    a2 = h.connect("alice")
    b = h.connect("bob")
    h.server.subscribe_connection(a1.conn_id, ["lobby"], {"s": "on"})
    h.server.subscribe_connection(b.conn_id, ["lobby"], {"s": "away"})
    h.server.subscribe_connection(a2.conn_id, ["lobby"], {"s": "on"})
    wait_until(lambda: h.server.presence_stats("lobby") == {"num_users": 2, "num_connections": 3},
               what="presence_stats 2 users / 3 connections (is %r)" % h.server.presence_stats("lobby"))
    assert h.server.presence("lobby") == {"alice": {"data": {"s": "on"}, "connections": 2},
                                          "bob": {"data": {"s": "away"}, "connections": 1}}
    h.events.wait("presence_join", pred=lambda e: e[2]["user_id"] == "bob")
    h.events.wait("presence_join", pred=lambda e: e[2]["user_id"] == "alice")
    h.events.pull(50)
    joins = [e for e in h.events.seen if e[0] == "presence_join"]
    assert len(joins) == 2, "one join per user, not per connection: %r" % joins
    snap = h.server.health_snapshot()
    assert snap["presence_enabled"] is True
    assert snap["presence_topics"] == 1
    assert snap["presence_total_users"] == 2


def test_leave_on_last_connection_only(ph):
    h = ph
    watcher = h.connect("watcher")
    h.server.subscribe_connection(watcher.conn_id, ["lobby"], {})
    a1 = h.connect("alice")
    a2 = h.connect("alice")
    h.server.subscribe_connection(a1.conn_id, ["lobby"], {"n": 1})
    h.server.subscribe_connection(a2.conn_id, ["lobby"], {"n": 1})
    wait_until(lambda: h.server.presence_stats("lobby")["num_connections"] == 3, what="3 connections")
    a1.close()
    h.events.wait("disconnect", a1.conn_id)
    wait_until(lambda: h.server.presence_stats("lobby") == {"num_users": 2, "num_connections": 2},
               what="alice still present through her second connection")
    assert not [e for e in h.events.seen if e[0] == "presence_leave"]
    h.server.unsubscribe_connection(a2.conn_id, ["lobby"])
    ev = h.events.wait("presence_leave")
    assert ev == ("presence_leave", None, {"topic": "lobby", "user_id": "alice", "data": {"n": 1}})
    assert wire(watcher, "presence_leave", "lobby")["p"] == {"user_id": "alice", "data": {"n": 1}}
    assert h.server.presence("lobby") == {"watcher": {"data": {}, "connections": 1}}


def test_leave_on_disconnect_comes_before_the_disconnect_event(ph):
    h = ph
    watcher = h.connect("watcher")
    h.server.subscribe_connection(watcher.conn_id, ["room"], {})
    b = h.connect("bob")
    h.server.subscribe_connection(b.conn_id, ["room"], {"x": True})
    h.events.wait("presence_join", pred=lambda e: e[2]["user_id"] == "bob")
    b.close()
    leave = h.events.wait("presence_leave")
    assert leave[2] == {"topic": "room", "user_id": "bob", "data": {"x": True}}
    disc = h.events.wait("disconnect", b.conn_id)
    assert h.events.seen.index(leave) < h.events.seen.index(disc)
    assert wire(watcher, "presence_leave", "room")["p"]["user_id"] == "bob"
    wait_until(lambda: h.server.presence_stats("room") == {"num_users": 1, "num_connections": 1},
               what="only the watcher left")


def test_update_presence(ph):
    h = ph
    a = h.connect("alice")
    b = h.connect("bob")
    h.server.subscribe_connection(a.conn_id, ["lobby"], {"s": "on"})
    h.server.subscribe_connection(b.conn_id, ["lobby"], {"s": "on"})
    wait_until(lambda: h.server.presence_stats("lobby")["num_users"] == 2, what="2 users")
    h.server.update_presence(a.conn_id, {"s": "busy"})
    msg = wire(b, "presence_update", "lobby")
    assert msg["p"] == {"user_id": "alice", "data": {"s": "busy"}}
    wait_until(lambda: h.server.presence("lobby").get("alice", {}).get("data") == {"s": "busy"},
               what="updated data in presence()")


def test_presence_data_size_limit(make_server):
    h = make_server(presence_enabled=True, presence_max_data_size=64)
    a = h.connect("alice")
    small = {"s": "ok"}
    big = {"blob": "x" * 200}
    h.server.subscribe_connection(a.conn_id, ["lobby"], small)
    wait_until(lambda: h.server.presence_stats("lobby")["num_users"] == 1, what="alice present")
    with pytest.raises(RuntimeError):
        h.server.update_presence(a.conn_id, big)
    assert h.server.presence("lobby")["alice"]["data"] == small
    # joining with too much data is refused: not tracked
    b = h.connect("bob")
    try:
        h.server.subscribe_connection(b.conn_id, ["lobby"], big)
    except ValueError:
        pass  # refusing loudly is fine too
    c = h.connect("carol")
    h.server.subscribe_connection(c.conn_id, ["lobby"], small)
    h.events.wait("presence_join", pred=lambda e: e[2]["user_id"] == "carol")
    wait_until(lambda: "carol" in h.server.presence("lobby"), what="carol present")
    assert "bob" not in h.server.presence("lobby")
    assert not [e for e in h.events.seen if e[0] == "presence_join" and e[2]["user_id"] == "bob"]


def test_presence_disabled(h):
    a = h.connect("alice")
    h.server.subscribe_connection(a.conn_id, ["lobby"], {"s": "on"})
    h.subscriber_count("lobby", 1)
    assert h.server.presence("lobby") == {}
    assert h.server.presence_stats("lobby") == {"num_users": 0, "num_connections": 0}
    h.server.update_presence(a.conn_id, {"s": "x"})  # a no-op
    assert h.server.health_snapshot()["presence_enabled"] is False
    assert h.frames_before_barrier(a) == []


def test_presence_max_members(make_server):
    h = make_server(presence_enabled=True, presence_max_members=2)
    clients = [h.connect(u) for u in ("u1", "u2", "u3")]
    for c in clients:
        h.server.subscribe_connection(c.conn_id, ["small"], {"u": c.ready["p"]["details"]["user_id"]})
    h.events.wait("presence_join", pred=lambda e: e[2]["user_id"] == "u2")
    members = h.server.presence("small")
    assert set(members) == {"u1", "u2"}
    assert h.server.presence_stats("small") == {"num_users": 2, "num_connections": 2}
    # a place frees up when a member leaves
    h.server.unsubscribe_connection(clients[0].conn_id, ["small"])
    h.events.wait("presence_leave", pred=lambda e: e[2]["user_id"] == "u1")
    c4 = h.connect("u4")
    h.server.subscribe_connection(c4.conn_id, ["small"], {})
    h.events.wait("presence_join", pred=lambda e: e[2]["user_id"] == "u4")
    assert set(h.server.presence("small")) == {"u2", "u4"}


def test_presence_full_topic_still_subscribes(make_server):
    """The member cap limits presence tracking, not the subscription (the reference tracks
    nothing more and subscribes anyway)."""
    h = make_server(presence_enabled=True, presence_max_members=1)
    a = h.connect("u1")
    b = h.connect("u2")
    h.server.subscribe_connection(a.conn_id, ["small"], {})
    h.server.subscribe_connection(b.conn_id, ["small"], {})
    h.subscriber_count("small", 2)
    assert set(h.server.presence("small")) == {"u1"}
    h.server.broadcast_local("small", '{"t":"x"}')
    assert b.next_of("x")["c"] == "U"
