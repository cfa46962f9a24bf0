"""wsed presence (one instance, --presence): a subscribe request with a presence object enters the
topic's presence as the connection's user; presence_join / presence_update / presence_leave go to
every subscriber of the topic (the joiner too, after its reply); a user's connections share one
entry; GET /api/presence and /api/presence/stats; the limits (--presence-max-data,
--presence-max-members), the refusals (glob topic, presence not an object) and the metrics.

Run with tests/integration/run_tests.py -k presence (under /usr/bin/python3). wsed runs in WSE
mode on 2 shards with an --api-key-file; users are told apart by JWTs minted with test_wse's
secret (one test runs --insecure-no-auth: every connection is "anonymous"). Events from one
connection's shard arrive in order, so "nothing was sent" is checked by a later event of the same
connection coming next (plus a short quiet window where no such barrier exists). Only 127.0.0.1;
every wait is bounded and every server started here is stopped by PID (wsed_harness).
"""

import json
import socket
import struct
import time
import urllib.parse

import test_fanout as F
import test_recovery as R
import test_wse as W
import wsed_harness as H

BIN = W.BIN
limit = H.limit
compact = F.compact
ABSENT = object()   # no "presence" key in a request
SPEC_EVENT = b'{"c":"WSE","p":{"data":{"name":"Ann"},"topic":"room1","user_id":"u0"},"t":"presence_join","v":1}'
SPEC_MEMBERS = (b'{"members":{"u0":{"data":{"name":"Ann"},"connections":2}},"num_connections":2,"num_users":1,'
                b'"topic":"room1"}')
SPEC_STATS = b'{"num_connections":2,"num_users":1}'


def pres(*args, auth=True, presence=True, workers=2):
    """wsed in WSE mode with --presence (unless presence is false), the API key file, no server
    pings; JWT auth with test_wse's secret, or --insecure-no-auth when auth is false."""
    extra = ["--presence"] if presence else []
    if auth:
        env = W.env()
    else:
        extra.append("--insecure-no-auth")
        env = W.env(WSED_JWT_SECRET="")
    return H.running(BIN, "--mode", "wse", "--workers", str(workers), "--ping-interval", "0",
                     "--api-key-file", F.key_file(), *extra, *args, env=env)


# ---------------------------------------------------------------------------------------------
# WebSocket side
# ---------------------------------------------------------------------------------------------

def sub_request(topics, presence=ABSENT, action="subscribe"):
    p = {"action": action, "topics": list(topics)}
    if presence is not ABSENT:
        p["presence"] = presence
    return compact({"c": "WSE", "t": "subscription_update", "p": p, "v": 1})


def subscription(c, topics, presence=ABSENT, action="subscribe"):
    """Sends a subscription_update (with presence); the very next message must be its reply
    (the reply comes before any event): its p."""
    c.send_text(sub_request(topics, presence, action))
    raw, _ = F.next_json(c, 5, "(reply to %s %r with presence %r)" % (action, topics, presence))
    return F.check_reply(raw, action)


def join_ok(c, topics, presence):
    p = subscription(c, topics, presence)
    assert p["success"] and p["success_topics"] == list(topics) and p["failed_topics"] == [] \
        and p["errors"] == {}, "subscribe %r with presence %r: %r" % (topics, presence, p)
    return p


def event(kind, topic, user, data):
    """The bytes of a presence event (keys sorted; data as sent, compact)."""
    return ('{"c":"WSE","p":{"data":%s,"topic":%s,"user_id":%s},"t":"presence_%s","v":1}'
            % (compact(data), compact(topic), compact(user), kind)).encode("utf-8")


def parse_event(raw):
    """(kind, topic, user, data) of a presence event; checks the key order."""
    doc = json.loads(raw)
    assert list(doc) == ["c", "p", "t", "v"] and doc["c"] == "WSE" and doc["v"] == 1, raw
    assert doc["t"] in ("presence_join", "presence_update", "presence_leave"), raw
    assert list(doc["p"]) == ["data", "topic", "user_id"] and isinstance(doc["p"]["data"], dict), raw
    return doc["t"][len("presence_"):], doc["p"]["topic"], doc["p"]["user_id"], doc["p"]["data"]


def expect_event(c, kind, topic, user, data, what=""):
    raw, _ = F.next_json(c, 5, "(presence_%s of %s in %s %s)" % (kind, user, topic, what))
    want = event(kind, topic, user, data)
    assert raw == want, "%s: got %r\nexpected %r" % (what, raw, want)


def expect_events(conns, kind, topic, user, data, what=""):
    for i, c in enumerate(conns):
        expect_event(c, kind, topic, user, data, "%s (connection %d)" % (what, i))


def quiet(conns, seconds=0.3, what=""):
    """Nothing arrives on any of conns for `seconds`."""
    deadline = time.monotonic() + seconds
    for i, c in enumerate(conns):
        m = c.next_message(max(0.0, deadline - time.monotonic()))
        assert m is None, "%s: connection %d got %r" % (what, i, m[:2])


def drain_events(c, seconds=0.5):
    """Every message until `seconds` of silence, parsed as presence events."""
    out = []
    while True:
        m = c.next_message(seconds)
        if m is None:
            return out
        assert m[0] == "text", m[:2]
        out.append(parse_event(m[1]))


def user_conn(port, sub):
    return F.ws_client(port, sub)


def on_other_shard(port, sub, shard, before, tries=24):
    """A connection of user sub on another shard than `shard` (bounded tries; the extra ones are
    closed): (conn, its shard, open per shard now)."""
    for _ in range(tries):
        c = user_conn(port, sub)
        s, before = F.shard_of_new_connection(port, before)
        if s != shard:
            return c, s, before
        c.close()
        before = wait_open(port, sum(before.values()) - 1)
    raise AssertionError("%d connections of %s all landed on shard %s" % (tries, sub, shard))


def wait_open(port, n, timeout=5.0):
    """Until n connections are open in all; returns the open count per shard."""
    deadline = time.monotonic() + timeout
    while True:
        per = F.open_per_shard(port)
        if sum(per.values()) == n or time.monotonic() > deadline:
            assert sum(per.values()) == n, "open connections %r, expected %d in all" % (per, n)
            return per
        time.sleep(0.02)


def observers(port, topics, user="obs", at_least=2):
    """Plain subscribers of topics (no presence) on both shards."""
    conns, before = F.connect_spread(port, user, at_least, F.open_per_shard(port))
    for c in conns:
        F.subscribe_ok(c, list(topics))
    return conns, before


def reset(c):
    """Goes away with a TCP reset."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def bye(c):
    c.send_close(1000)
    c.close()


# ---------------------------------------------------------------------------------------------
# HTTP side
# ---------------------------------------------------------------------------------------------

def api_get(port, path, key=F.API_KEY, method="GET"):
    """(status, headers, body without its trailing newline) of a request with the API key."""
    hdrs = [("Authorization", "Bearer " + key)] if key is not None else []
    c = H.HttpConn(port, timeout=5)
    try:
        c.send(H.http_request_bytes(method, path, b"" if method == "POST" else None, hdrs + [("Connection", "close")]))
        r = c.read_response(5)
    finally:
        c.close()
    assert r is not None, "no answer to %s %s" % (method, path)
    st, headers, body = r
    return st, headers, body[:-1] if body.endswith(b"\n") else body


def get_json(port, path, key=F.API_KEY, method="GET"):
    st, headers, body = api_get(port, path, key, method)
    assert headers.get("content-type", "").startswith("application/json"), (method, path, st, headers, body[:200])
    return st, body, json.loads(body)


def q(topic):
    return urllib.parse.quote(topic, safe="")


def members_body(topic, members):
    """The exact /api/presence body for members {user: (connections, data)}."""
    doc = {"members": {u: {"data": d, "connections": n} for u, (n, d) in sorted(members.items())},
           "num_connections": sum(n for n, _ in members.values()), "num_users": len(members), "topic": topic}
    return compact(doc).encode("utf-8")


def expect_members(port, topic, members, what="", exact=False):
    """GET /api/presence and /stats show members {user: (connections, data)}: the same JSON, the
    top-level keys and the user ids in order (exact: byte for byte, the entries' keys too)."""
    st, body, doc = get_json(port, "/api/presence?topic=" + q(topic))
    want = members_body(topic, members)
    wdoc = json.loads(want)
    same = body == want if exact else (doc == wdoc and list(doc) == list(wdoc)
                                       and list(doc["members"]) == list(wdoc["members"]))
    assert st == 200 and same, "%s: GET /api/presence?topic=%s -> %s %r\nexpected %r" % (
        what, topic, st, body, want)
    st, body, _ = get_json(port, "/api/presence/stats?topic=" + q(topic))
    want = compact({"num_connections": sum(n for n, _ in members.values()), "num_users": len(members)}).encode()
    assert st == 200 and body == want, "%s: stats -> %s %r, expected %r" % (what, st, body, want)


def wait_members(port, topic, members, timeout=5.0, what=""):
    """Polls /api/presence until it shows members (a close is handled asynchronously)."""
    want = json.loads(members_body(topic, members))
    deadline = time.monotonic() + timeout
    while True:
        st, _, doc = get_json(port, "/api/presence?topic=" + q(topic))
        if (st == 200 and doc == want) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    expect_members(port, topic, members, what)


def presence_metrics(port):
    m = R.metrics(port)
    names = ("wsed_presence_topics", "wsed_presence_users", "wsed_presence_connections")
    return {n[len("wsed_presence_"):]: R.shard_total(m, n) for n in names}


def event_count(m, kind):
    return R.shard_total(m, "wsed_presence_events_total", type=kind) or 0


def refused(m, reason):
    return R.shard_total(m, "wsed_presence_refused_total", reason=reason) or 0


def publish(port, items):
    st, _, doc = F.post_once(port, items)
    assert st == 200 and doc == {"accepted": len(items)}, (st, doc)


def not_delivered(port, c, topic, barrier_item, what):
    """A publication on topic, then barrier_item (a dict with topic or user, which c gets), in one
    API request: c gets only the barrier."""
    msg = {"t": "probe", "p": {"topic": topic}}
    barrier = barrier_item["message"]
    publish(port, [{"topic": topic, "message": msg}, barrier_item])
    got = F.until_barrier(c, F.wire(barrier), what=what)
    assert got == [], "%s: %r reached a connection that must not be subscribed to it" % (what, got)


# ---------------------------------------------------------------------------------------------
# 1. join
# ---------------------------------------------------------------------------------------------

def test_presence_join_event_to_every_subscriber_exact_bytes():
    """u0 subscribes room1 with presence {"name":"Ann"}: its reply first, then the spec's
    presence_join byte for byte, to u0 itself and to plain subscribers on both shards; u1 (on the
    other shard) joins: everyone incl. u1 gets u1's join, and u1 gets no join for u0 (no snapshot)."""
    with pres() as srv:
        obs, before = observers(srv.port, ["room1"])
        u0 = user_conn(srv.port, "u0")
        s0, before = F.shard_of_new_connection(srv.port, before)
        join_ok(u0, ["room1"], {"name": "Ann"})
        raw, _ = F.next_json(u0, 5, "(u0's own presence_join after its reply)")
        assert raw == SPEC_EVENT, "u0's own join %r\nexpected %r" % (raw, SPEC_EVENT)
        for i, c in enumerate(obs):
            raw, _ = F.next_json(c, 5, "(observer %d: u0's join)" % i)
            assert raw == SPEC_EVENT, "observer %d: %r" % (i, raw)
        assert event("join", "room1", "u0", {"name": "Ann"}) == SPEC_EVENT
        u1, s1, before = on_other_shard(srv.port, "u1", s0, before)
        bob = {"name": "Bob", "age": 7, "tags": ["x", "y"], "o": {"k": None}}
        join_ok(u1, ["room1"], bob)
        expect_event(u1, "join", "room1", "u1", bob, "(u1's own join)")
        expect_events([u0] + obs, "join", "room1", "u1", bob, "(u1's join)")
        # u0 changes its data: the next thing everyone sees (u1 included: no join of u0 before it).
        ann2 = {"name": "Ann", "mood": "busy"}
        join_ok(u0, ["room1"], ann2)
        expect_events([u0, u1] + obs, "update", "room1", "u0", ann2, "(u0's update)")
        quiet([u0, u1] + obs, 0.3, "after the update")
        expect_members(srv.port, "room1", {"u0": (1, ann2), "u1": (1, bob)})
        m = R.metrics(srv.port)
        assert (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave")) == (2, 1, 0), \
            (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave"))
        for c in [u0, u1] + obs:
            c.close()


def test_presence_insecure_no_auth_user_is_anonymous():
    """--insecure-no-auth: the user is "anonymous"; two connections share its entry (one join,
    connections 2), the leave comes when both are gone."""
    with pres(auth=False) as srv:
        a = H.WSClient(srv.port, path="/wse")
        ready = json.loads(a.next_message(5)[1])
        assert ready["p"]["details"]["user_id"] == "anonymous", ready
        join_ok(a, ["room1"], {"name": "Ann"})
        expect_event(a, "join", "room1", "anonymous", {"name": "Ann"}, "(anonymous join)")
        b = H.WSClient(srv.port, path="/wse")
        assert json.loads(b.next_message(5)[1])["t"] == "server_ready"
        join_ok(b, ["room1"], {"name": "Ann"})
        quiet([a, b], 0.3, "the same user's second connection with the same data")
        expect_members(srv.port, "room1", {"anonymous": (2, {"name": "Ann"})})
        bye(a)
        wait_members(srv.port, "room1", {"anonymous": (1, {"name": "Ann"})}, what="after one of two closed")
        quiet([b], 0.2, "one of the two connections closed")
        obs = H.WSClient(srv.port, path="/wse")
        assert json.loads(obs.next_message(5)[1])["t"] == "server_ready"
        F.subscribe_ok(obs, ["room1"])
        bye(b)
        expect_event(obs, "leave", "room1", "anonymous", {"name": "Ann"}, "(the last connection closed)")
        wait_members(srv.port, "room1", {})
        obs.close()


# ---------------------------------------------------------------------------------------------
# 2. one user, several connections
# ---------------------------------------------------------------------------------------------

def test_presence_second_connection_same_user_shares_entry():
    """A second connection of u0 (other shard) joining with the same data sends nothing and the
    query says connections 2 (the spec's example bytes); with other data: presence_update to all
    (latest wins); one connection closing: no leave; the last: presence_leave with the last data."""
    with pres() as srv:
        obs, before = observers(srv.port, ["room1"])
        a = user_conn(srv.port, "u0")
        sa, before = F.shard_of_new_connection(srv.port, before)
        join_ok(a, ["room1"], {"name": "Ann"})
        expect_events([a] + obs, "join", "room1", "u0", {"name": "Ann"}, "(first connection)")
        b, sb, before = on_other_shard(srv.port, "u0", sa, before)
        join_ok(b, ["room1"], {"name": "Ann"})
        expect_members(srv.port, "room1", {"u0": (2, {"name": "Ann"})}, "two connections, one entry")
        # Other data from the second connection: an update (and nothing before it: no second join).
        d2 = {"name": "Ann", "device": "phone"}
        join_ok(b, ["room1"], d2)
        expect_events([b, a] + obs, "update", "room1", "u0", d2, "(the second connection's other data)")
        expect_members(srv.port, "room1", {"u0": (2, d2)})
        # The first connection's own re-subscribe with the first data: latest wins, an update.
        join_ok(a, ["room1"], {"name": "Ann"})
        expect_events([a, b] + obs, "update", "room1", "u0", {"name": "Ann"}, "(back to the first data)")
        # One of the two goes: no leave.
        bye(a)
        wait_members(srv.port, "room1", {"u0": (1, {"name": "Ann"})}, what="one connection of two closed")
        d3 = {"name": "Ann", "device": "laptop"}
        join_ok(b, ["room1"], d3)
        expect_events([b] + obs, "update", "room1", "u0", d3, "(after one of two closed: no leave before)")
        quiet([b] + obs, 0.3, "one connection of two closed")
        reset(b)
        expect_events(obs, "leave", "room1", "u0", d3, "(the user's last connection reset)")
        wait_members(srv.port, "room1", {})
        quiet(obs, 0.3, "after the leave")
        m = R.metrics(srv.port)
        assert (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave")) == (1, 3, 1), \
            (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave"))
        for c in obs:
            c.close()


# ---------------------------------------------------------------------------------------------
# 3. update
# ---------------------------------------------------------------------------------------------

def test_presence_update_only_when_data_changes():
    """Re-subscribing with other data: presence_update; with the same data, or without a presence
    object: nothing, the data kept; a request naming a topic already joined and a new one: a join
    for the new one only."""
    with pres() as srv:
        obs, _ = observers(srv.port, ["room1", "room2"])
        c = user_conn(srv.port, "u0")
        join_ok(c, ["room1"], {"v": 1})
        expect_events([c] + obs, "join", "room1", "u0", {"v": 1})
        join_ok(c, ["room1"], {"v": 2})
        expect_events([c] + obs, "update", "room1", "u0", {"v": 2})
        join_ok(c, ["room1"], {"v": 2})             # the same data: nothing
        F.subscribe_ok(c, ["room1"])                # no presence object: kept as it is
        expect_members(srv.port, "room1", {"u0": (1, {"v": 2})}, "after a plain re-subscribe")
        join_ok(c, ["room1", "room2"], {"v": 2})    # room1 unchanged, room2 new
        expect_events([c] + obs, "join", "room2", "u0", {"v": 2}, "(only the new topic)")
        join_ok(c, ["room1"], {"v": 3})
        expect_events([c] + obs, "update", "room1", "u0", {"v": 3}, "(the next event after the no-ops)")
        quiet([c] + obs, 0.3, "after the last update")
        expect_members(srv.port, "room1", {"u0": (1, {"v": 3})})
        expect_members(srv.port, "room2", {"u0": (1, {"v": 2})})
        m = R.metrics(srv.port)
        assert (event_count(m, "join"), event_count(m, "update")) == (2, 2), \
            (event_count(m, "join"), event_count(m, "update"))
        for x in [c] + obs:
            x.close()


# ---------------------------------------------------------------------------------------------
# 4. leave
# ---------------------------------------------------------------------------------------------

def skip_own_leave(c, topic, user, data):
    """After an unsubscribe's reply the leaving connection may or may not get its own leave (it is
    no longer a subscriber): accept one, nothing else."""
    m = c.next_message(0.3)
    if m is not None:
        assert m[0] == "text" and m[1] == event("leave", topic, user, data), \
            "after the unsubscribe's reply: %r" % (m[:2],)


def test_presence_leave_on_unsubscribe_and_close():
    """Unsubscribing leaves the topic's presence (presence_leave with the last data, the other
    topics stay); so does a close (clean or reset) of the user's last connection; of two
    connections only the second unsubscribe leaves; a plain subscriber unsubscribing: nothing;
    after a leave the user can join again (a join)."""
    with pres() as srv:
        obs, before = observers(srv.port, ["room1", "room2", "room3"])
        u0 = user_conn(srv.port, "u0")
        join_ok(u0, ["room1", "room2"], {"n": "zero"})
        got = [F.next_json(u0, 5, "(u0's own joins)")[0] for _ in range(2)]
        assert sorted(got) == sorted([event("join", t, "u0", {"n": "zero"}) for t in ("room1", "room2")]), got
        for c in obs:
            got = [F.next_json(c, 5, "(u0's joins)")[0] for _ in range(2)]
            assert sorted(got) == sorted([event("join", t, "u0", {"n": "zero"}) for t in ("room1", "room2")]), got
        p = subscription(u0, ["room1"], action="unsubscribe")
        assert p["success"] and p["success_topics"] == ["room1"], p
        expect_events(obs, "leave", "room1", "u0", {"n": "zero"}, "(unsubscribe)")
        skip_own_leave(u0, "room1", "u0", {"n": "zero"})
        expect_members(srv.port, "room1", {})
        expect_members(srv.port, "room2", {"u0": (1, {"n": "zero"})})
        # Back again: a join (a fresh entry).
        join_ok(u0, ["room1"], {"n": "again"})
        expect_events([u0] + obs, "join", "room1", "u0", {"n": "again"}, "(joined again after leaving)")
        # The user's last connection closes: a leave per topic, with the data of each.
        bye(u0)
        for c in obs:
            got = sorted([F.next_json(c, 5, "(leaves on close)")[0] for _ in range(2)])
            assert got == sorted([event("leave", "room1", "u0", {"n": "again"}),
                                  event("leave", "room2", "u0", {"n": "zero"})]), got
        expect_members(srv.port, "room1", {})
        expect_members(srv.port, "room2", {})
        # Two connections of u1: the first unsubscribing leaves nothing, the second does.
        a = user_conn(srv.port, "u1")
        b = user_conn(srv.port, "u1")
        join_ok(a, ["room3"], {"n": 1})
        expect_events([a] + obs, "join", "room3", "u1", {"n": 1})
        join_ok(b, ["room3"], {"n": 1})
        p = subscription(a, ["room3"], action="unsubscribe")
        assert p["success"], p
        expect_members(srv.port, "room3", {"u1": (1, {"n": 1})}, "one of two connections unsubscribed")
        join_ok(b, ["room3"], {"n": 2})
        expect_events([b] + obs, "update", "room3", "u1", {"n": 2}, "(no leave before it)")
        quiet([a, b] + obs, 0.3, "one of two unsubscribed")
        p = subscription(b, ["room3"], action="unsubscribe")
        assert p["success"], p
        expect_events(obs, "leave", "room3", "u1", {"n": 2}, "(the second unsubscribed)")
        skip_own_leave(b, "room3", "u1", {"n": 2})
        # A plain subscriber unsubscribing, a topic never joined: nothing.
        p = subscription(obs[0], ["room2"], action="unsubscribe")
        assert p["success"], p
        d = user_conn(srv.port, "u2")
        join_ok(d, ["room3"], {"n": 3})
        expect_events([d] + obs, "join", "room3", "u2", {"n": 3}, "(next event after plain unsubscribes)")
        reset(d)
        expect_events(obs, "leave", "room3", "u2", {"n": 3}, "(reset)")
        quiet(obs + [a, b], 0.3, "the end")
        m = R.metrics(srv.port)
        assert (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave")) == (5, 1, 5), \
            (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave"))
        for c in obs + [a, b]:
            c.close()


# ---------------------------------------------------------------------------------------------
# 5. HTTP
# ---------------------------------------------------------------------------------------------

def test_presence_http_query_exact_bytes():
    """GET /api/presence byte for byte: the spec's example (one user, two connections: {"connections"
    before "data"}), members sorted by user id, a topic without presence ({} and zeros), a topic of
    exactly 256 bytes; /api/presence/stats."""
    with pres() as srv:
        conns = []
        for u, d in (("u0", {"name": "Ann"}), ("u0", {"name": "Ann"}), ("carol", {"c": 3}), ("alice", {"a": 1}),
                     ("bob", {"b": [2]}), ("alice", {"a": 1})):
            c = user_conn(srv.port, u)
            join_ok(c, ["room1" if u == "u0" else "roomS"], d)
            conns.append(c)
        st, body, _ = get_json(srv.port, "/api/presence/stats?topic=room1")
        assert st == 200 and body == SPEC_STATS, (st, body)
        st, body, _ = get_json(srv.port, "/api/presence/stats?topic=roomS")
        assert st == 200 and body == b'{"num_connections":4,"num_users":3}', (st, body)
        st, body, _ = get_json(srv.port, "/api/presence?topic=empty")
        assert st == 200 and body == b'{"members":{},"num_connections":0,"num_users":0,"topic":"empty"}', (st, body)
        st, body, _ = get_json(srv.port, "/api/presence/stats?topic=empty")
        assert st == 200 and body == b'{"num_connections":0,"num_users":0}', (st, body)
        expect_members(srv.port, "a" * 256, {}, "a topic of exactly 256 bytes", exact=True)
        st, body, _ = get_json(srv.port, "/api/presence?topic=room1")
        assert st == 200 and body == SPEC_MEMBERS, "the spec's example: %s %r\nexpected %r" % (st, body, SPEC_MEMBERS)
        want = (b'{"members":{"alice":{"data":{"a":1},"connections":2},"bob":{"data":{"b":[2]},"connections":1},'
                b'"carol":{"data":{"c":3},"connections":1}},"num_connections":4,"num_users":3,"topic":"roomS"}')
        st, body, _ = get_json(srv.port, "/api/presence?topic=roomS")
        assert st == 200 and body == want, "%s %r\nexpected %r" % (st, body, want)
        for c in conns:
            c.close()


def test_presence_http_errors():
    """/api/presence and /api/presence/stats: 400 {"error":...} for a missing topic, a glob, a
    topic over 256 bytes; 405 for POST; 401 {"error":"unauthorized"} for a wrong or missing key."""
    with pres() as srv:
        c = user_conn(srv.port, "u0")
        join_ok(c, ["room1"], {"name": "Ann"})
        for path in ("/api/presence", "/api/presence/stats"):
            for query in ("", "?", "?other=room1", "?topic=room*", "?topic=r*m", "?topic=" + "a" * 257):
                st, body, doc = get_json(srv.port, path + query)
                assert st == 400 and list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"], \
                    (path + query[:40], st, body)
            st, _, _ = api_get(srv.port, path + "?topic=room1", method="POST")
            assert st == 405, ("POST", path, st)
            for key in ("wrong-key-0123456789abcdef", F.API_KEY + "x", None):
                st, body, doc = get_json(srv.port, path + "?topic=room1", key=key)
                assert st == 401 and doc == {"error": "unauthorized"}, (path, key, st, body)
            st, body, doc = get_json(srv.port, path + "?topic=room1")
            assert st == 200 and doc["num_users"] == 1, (path, st, body)
        c.close()


def test_presence_off_ignored_and_404():
    """Without --presence: a presence object is ignored (the subscription applies, also for a
    glob; no reply change, no events), and /api/presence answers 404."""
    with pres(presence=False) as srv:
        a = user_conn(srv.port, "u0")
        obs = user_conn(srv.port, "obs")
        F.subscribe_ok(obs, ["room1"])
        join_ok(a, ["room1"], {"name": "Ann"})
        join_ok(a, ["room.*"], {"name": "Ann"})
        b = user_conn(srv.port, "u1")
        join_ok(b, ["room1"], {"name": "Bob"})
        join_ok(b, ["room1"], {"name": "Bob2"})
        quiet([a, b, obs], 0.5, "presence is off")
        msg = {"t": "chat", "p": {"x": 1}}
        publish(srv.port, [{"topic": "room1", "message": msg}, {"topic": "room.x", "message": msg}])
        for c, n in ((a, 2), (b, 1), (obs, 1)):
            for _ in range(n):
                raw, _ = F.next_json(c, 5, "(publication with presence off)")
                assert raw == F.wire(msg), raw
        quiet([a, b, obs], 0.3, "after the publications")
        for path in ("/api/presence?topic=room1", "/api/presence/stats?topic=room1"):
            st, body, _ = get_json(srv.port, path)
            assert st == 404 and body == b'{"error":"presence is off (--presence)"}', (path, st, body)
        m = R.metrics(srv.port)
        assert not event_count(m, "join") and not event_count(m, "update"), m.get("wsed_presence_events_total")
        for c in (a, b, obs):
            c.close()


# ---------------------------------------------------------------------------------------------
# 6. refusals
# ---------------------------------------------------------------------------------------------

def test_presence_glob_topic_exact_topic_required():
    """A glob with presence is refused (EXACT_TOPIC_REQUIRED, not subscribed); the concrete topic
    of the same request joins."""
    with pres() as srv:
        c = user_conn(srv.port, "u0")
        p = subscription(c, ["room.*", "room1", "r?om2"], {"name": "Ann"})
        assert p["success"] is False and p["success_topics"] == ["room1"] \
            and p["failed_topics"] == ["room.*", "r?om2"] and p["errors"] == {"room.*": "EXACT_TOPIC_REQUIRED", "r?om2": "EXACT_TOPIC_REQUIRED"}, p
        expect_event(c, "join", "room1", "u0", {"name": "Ann"})
        for t in ("room.x", "room2"):
            not_delivered(srv.port, c, t, {"topic": "room1", "message": {"t": "barrier", "p": {"t": t}}},
                          "a glob refused with presence (%s)" % t)
        st, body, _ = get_json(srv.port, "/api/presence?topic=room.x")
        assert st == 200 and json.loads(body)["num_users"] == 0, body
        expect_members(srv.port, "room1", {"u0": (1, {"name": "Ann"})})
        m = R.metrics(srv.port)
        assert R.shard_total(m, "wsed_subscriptions") == 1, R.shard_total(m, "wsed_subscriptions")
        c.close()


def test_presence_not_an_object_invalid_message_nothing_applied():
    """presence null / string / array / number / true: an INVALID_MESSAGE error frame, no reply,
    nothing subscribed, no event; the connection stays."""
    with pres() as srv:
        obs = user_conn(srv.port, "obs")
        F.subscribe_ok(obs, ["room1"])
        c = user_conn(srv.port, "u0")
        for i, bad in enumerate((None, "Ann", ["name", "Ann"], 5, True, "")):
            c.send_text(sub_request(["room1", "room2"], bad))
            F.expect_error(c, "INVALID_MESSAGE", "(presence %r)" % (bad,))
            F.ping_pong(c, 100 + i)   # and no reply after the error
        for t in ("room1", "room2"):
            not_delivered(srv.port, c, t, {"user": "u0", "message": {"t": "barrier", "p": {"t": t}}},
                          "after refused presence requests (%s)" % t)
        raw, _ = F.next_json(obs, 5, "(the observer's probe on room1, no event before it)")
        assert raw == F.wire({"t": "probe", "p": {"topic": "room1"}}), raw
        quiet([obs], 0.3, "refused presence requests")
        expect_members(srv.port, "room1", {})
        m = R.metrics(srv.port)
        assert R.shard_total(m, "wsed_subscriptions") == 1, R.shard_total(m, "wsed_subscriptions")
        assert not event_count(m, "join"), event_count(m, "join")
        join_ok(c, ["room1"], {})   # an empty object is an object
        expect_events([c, obs], "join", "room1", "u0", {}, "(empty data)")
        c.close()
        obs.close()


def test_presence_max_data_too_large():
    """--presence-max-data 64: data of exactly 64 bytes joins; 65 bytes fails every topic of the
    request with PRESENCE_DATA_TOO_LARGE and subscribes nothing; an update over it keeps the old
    data; counted in wsed_presence_refused_total{reason="data_too_large"}."""
    ok = {"s": "x" * 56}
    big = {"s": "x" * 57}
    assert len(compact(ok)) == 64 and len(compact(big)) == 65
    with pres("--presence-max-data", "64") as srv:
        obs = user_conn(srv.port, "obs")
        F.subscribe_ok(obs, ["room1", "room2", "room3"])
        a = user_conn(srv.port, "u0")
        join_ok(a, ["room1"], ok)
        expect_events([a, obs], "join", "room1", "u0", ok, "(64 bytes)")
        b = user_conn(srv.port, "u1")
        p = subscription(b, ["room2"], big)
        assert p["success"] is False and p["success_topics"] == [] and p["failed_topics"] == ["room2"] \
            and p["errors"] == {"room2": "PRESENCE_DATA_TOO_LARGE"}, p
        assert refused(R.metrics(srv.port), "data_too_large") == 1
        p = subscription(b, ["room2", "room3"], big)
        assert p["success"] is False and p["success_topics"] == [] and p["failed_topics"] == ["room2", "room3"] \
            and p["errors"] == {"room2": "PRESENCE_DATA_TOO_LARGE", "room3": "PRESENCE_DATA_TOO_LARGE"}, p
        for t in ("room2", "room3"):
            not_delivered(srv.port, b, t, {"user": "u1", "message": {"t": "barrier", "p": {"t": t}}},
                          "data too large (%s)" % t)
            raw, _ = F.next_json(obs, 5, "(the observer's probe on %s, no event before it)" % t)
            assert raw == F.wire({"t": "probe", "p": {"topic": t}}), raw
        expect_members(srv.port, "room2", {})
        # An update over the limit: refused, the old data stays, still subscribed.
        p = subscription(a, ["room1"], big)
        assert p["success"] is False and p["errors"] == {"room1": "PRESENCE_DATA_TOO_LARGE"}, p
        expect_members(srv.port, "room1", {"u0": (1, ok)}, "after an update over the limit")
        msg = {"t": "still", "p": {}}
        publish(srv.port, [{"topic": "room1", "message": msg}])
        raw, _ = F.next_json(a, 5, "(publication after a refused update)")
        assert raw == F.wire(msg), raw
        raw, _ = F.next_json(obs, 5, "(publication at the observer, no event before it)")
        assert raw == F.wire(msg), raw
        quiet([a, b, obs], 0.3, "refused data")
        m = R.metrics(srv.port)
        assert refused(m, "data_too_large") >= 3, refused(m, "data_too_large")
        assert refused(m, "too_many_members") == 0
        assert R.shard_total(m, "wsed_subscriptions") == 4, R.shard_total(m, "wsed_subscriptions")
        for c in (a, b, obs):
            c.close()


def test_presence_max_members_full():
    """--presence-max-members 2: a third user gets PRESENCE_FULL for that topic (not subscribed:
    a publication on it does not reach it) while the request's other topic applies; a second
    connection of a member still joins; once a member leaves the third user can join."""
    with pres("--presence-max-members", "2") as srv:
        obs = user_conn(srv.port, "obs")
        F.subscribe_ok(obs, ["room1"])   # a plain subscriber is not a member
        u0, u1 = user_conn(srv.port, "u0"), user_conn(srv.port, "u1")
        join_ok(u0, ["room1"], {"n": 0})
        expect_events([u0, obs], "join", "room1", "u0", {"n": 0})
        join_ok(u1, ["room1"], {"n": 1})
        expect_events([u1, u0, obs], "join", "room1", "u1", {"n": 1})
        u2 = user_conn(srv.port, "u2")
        p = subscription(u2, ["room1", "other"], {"n": 2})
        assert p["success"] is False and p["success_topics"] == ["other"] and p["failed_topics"] == ["room1"] \
            and p["errors"] == {"room1": "PRESENCE_FULL"}, p
        expect_event(u2, "join", "other", "u2", {"n": 2}, "(the request's other topic)")
        not_delivered(srv.port, u2, "room1", {"topic": "other", "message": {"t": "barrier", "p": {}}},
                      "PRESENCE_FULL")
        for c in (u0, u1, obs):   # the members and the observer get the probe, no join of u2 before it
            raw, _ = F.next_json(c, 5, "(probe on room1)")
            assert raw == F.wire({"t": "probe", "p": {"topic": "room1"}}), raw
        m = R.metrics(srv.port)
        assert refused(m, "too_many_members") == 1, refused(m, "too_many_members")
        # A member's second connection is not a new user.
        u0b = user_conn(srv.port, "u0")
        join_ok(u0b, ["room1"], {"n": 0})
        join_ok(u0, ["room1"], {"n": 10})
        expect_events([u0, u1, u0b, obs], "update", "room1", "u0", {"n": 10}, "(no join of u2 before it)")
        expect_members(srv.port, "room1", {"u0": (2, {"n": 10}), "u1": (1, {"n": 1})})
        bye(u1)
        expect_events([u0, u0b, obs], "leave", "room1", "u1", {"n": 1})
        join_ok(u2, ["room1"], {"n": 2})
        expect_events([u2, u0, u0b, obs], "join", "room1", "u2", {"n": 2}, "(room for a new user)")
        assert refused(R.metrics(srv.port), "too_many_members") == 1
        for c in (u0, u0b, u2, obs):
            c.close()


# ---------------------------------------------------------------------------------------------
# 7. metrics, many clients on both shards
# ---------------------------------------------------------------------------------------------

def wait_presence_gauges(port, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = presence_metrics(port)
        if got == want or time.monotonic() > deadline:
            assert got == want, "presence gauges %r, expected %r" % (got, want)
            return
        time.sleep(0.02)


def test_presence_metrics_gauges_and_counters():
    """wsed_presence_topics / users (summed over topics) / connections / bytes follow joins and
    leaves; wsed_presence_events_total counts each event once (not once per recipient)."""
    with pres() as srv:
        obs, _ = observers(srv.port, ["room1", "room2"], at_least=3)
        m = R.metrics(srv.port)
        for name in ("wsed_presence_topics", "wsed_presence_users", "wsed_presence_connections",
                     "wsed_presence_bytes"):
            assert R.shard_total(m, name) == 0, (name, R.shard_total(m, name))
        a1, a2 = user_conn(srv.port, "alice"), user_conn(srv.port, "alice")
        bob, carol = user_conn(srv.port, "bob"), user_conn(srv.port, "carol")
        join_ok(a1, ["room1", "room2"], {"who": "alice"})
        join_ok(a2, ["room1"], {"who": "alice"})
        join_ok(bob, ["room1"], {"who": "bob"})
        join_ok(carol, ["room2"], {"who": "carol"})
        expect_event(carol, "join", "room2", "carol", {"who": "carol"})
        join_ok(carol, ["room2"], {"who": "carol", "x": 1})
        wait_presence_gauges(srv.port, {"topics": 2, "users": 4, "connections": 5})
        for c in (a1, a2, bob, carol):   # their own joins and the others'
            drain_events(c, 0.2)
        m = R.metrics(srv.port)
        assert R.shard_total(m, "wsed_presence_bytes") > 0, R.shard_total(m, "wsed_presence_bytes")
        assert (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave")) == (4, 1, 0), \
            (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave"))
        for c in obs:   # 4 joins + 1 update, each once at every observer
            evs = drain_events(c, 0.4)
            assert sorted((k, t, u) for k, t, u, _ in evs) == sorted(
                [("join", "room1", "alice"), ("join", "room2", "alice"), ("join", "room1", "bob"),
                 ("join", "room2", "carol"), ("update", "room2", "carol")]), evs
        bye(a1)
        wait_presence_gauges(srv.port, {"topics": 2, "users": 3, "connections": 3})   # a1 was in both
        drain_events(bob, 0.2)
        p = subscription(bob, ["room1"], action="unsubscribe")
        assert p["success"], p
        wait_presence_gauges(srv.port, {"topics": 2, "users": 2, "connections": 2})
        reset(carol)
        wait_presence_gauges(srv.port, {"topics": 1, "users": 1, "connections": 1})
        bye(a2)
        wait_presence_gauges(srv.port, {"topics": 0, "users": 0, "connections": 0})
        m = R.metrics(srv.port)
        assert R.shard_total(m, "wsed_presence_bytes") == 0, R.shard_total(m, "wsed_presence_bytes")
        # alice leaves room2 (a1 closed) and room1 (a2 closed), bob room1, carol room2.
        assert (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave")) == (4, 1, 4), \
            (event_count(m, "join"), event_count(m, "update"), event_count(m, "leave"))
        for c in obs:
            evs = drain_events(c, 0.4)
            assert sorted((k, t, u, json.dumps(d, sort_keys=True)) for k, t, u, d in evs) == sorted(
                [("leave", "room2", "alice", '{"who": "alice"}'), ("leave", "room1", "bob", '{"who": "bob"}'),
                 ("leave", "room2", "carol", '{"who": "carol", "x": 1}'),
                 ("leave", "room1", "alice", '{"who": "alice"}')]), evs
        bob.close()
        for c in obs:
            c.close()


@limit(60)
def test_presence_many_clients_both_shards():
    """12 users (4 of them with 2 connections, 16 connections over both shards) join "lobby" one
    after the other: every connection gets exactly the joins of the users that joined after it
    (its own included, none twice, no join for a user's second connection); the query lists them
    all; then all close (clean and reset mixed): observers get one leave per user, the gauges
    return to 0."""
    with pres() as srv:
        obs, _ = observers(srv.port, ["lobby"], at_least=2)
        users = ["user%02d" % i for i in range(12)]
        order = users[:8] + users[:4] + users[8:]   # the 4 second connections in the middle
        joined, conns, seen_first = [], [], set()
        for u in order:
            c = user_conn(srv.port, u)
            data = {"user": u, "n": len(u)}
            join_ok(c, ["lobby"], data)
            conns.append((u, c))
            first = u not in seen_first
            seen_first.add(u)
            if first:
                joined.append(u)
                raw, _ = F.next_json(c, 5, "(%s's own join)" % u)
                assert raw == event("join", "lobby", u, data), raw
            c.joined_at = len(joined)
        per = F.open_per_shard(srv.port)
        assert len(per) == 2 and all(v >= 1 for v in per.values()), "connections not spread: %r" % per
        for u, c in conns:
            evs = drain_events(c, 0.3)
            want = [("join", "lobby", x) for x in joined[c.joined_at:]]
            assert sorted((k, t, x) for k, t, x, _ in evs) == sorted(want), \
                "%s (joined %d-th): events %r, expected %r" % (u, c.joined_at, evs, want)
        for i, c in enumerate(obs):
            evs = drain_events(c, 0.3)
            assert sorted(x for _, _, x, _ in evs) == users and all(k == "join" for k, _, _, _ in evs), (i, evs)
        members = {u: (2 if u in users[:4] else 1, {"user": u, "n": len(u)}) for u in users}
        expect_members(srv.port, "lobby", members)
        wait_presence_gauges(srv.port, {"topics": 1, "users": 12, "connections": 16})
        for i, (u, c) in enumerate(conns):
            (reset if i % 3 == 0 else bye)(c)
        for i, c in enumerate(obs):
            evs = []
            deadline = time.monotonic() + 10
            while len(evs) < 12 and time.monotonic() < deadline:
                raw, _ = F.next_json(c, 5, "(leaves: %d so far)" % len(evs))
                evs.append(parse_event(raw))
            assert sorted((k, x) for k, _, x, _ in evs) == [("leave", u) for u in users], (i, evs)
            for k, t, x, d in evs:
                assert t == "lobby" and d == {"user": x, "n": len(x)}, (k, t, x, d)
        quiet(obs, 0.3, "after the leaves")
        wait_presence_gauges(srv.port, {"topics": 0, "users": 0, "connections": 0})
        expect_members(srv.port, "lobby", {})
        m = R.metrics(srv.port)
        assert (event_count(m, "join"), event_count(m, "leave")) == (12, 12), \
            (event_count(m, "join"), event_count(m, "leave"))
        for c in obs:
            c.close()
