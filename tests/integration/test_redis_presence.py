"""wsed presence across instances (README "Presence and queue groups"): a real redis-server and
two wsed with --presence. Presence is kept in Redis (per topic, per user, the connections of
every instance), so a user's first connection anywhere sends presence_join and its last
presence_leave, once, to the subscribers on every instance (the user's own included); GET
/api/presence on any instance answers for the whole cluster (from Redis); an instance killed
with SIGKILL has its members leave once its renewal lapses.

Run with tests/integration/run_tests.py -k redis_presence (under /usr/bin/python3). Only
127.0.0.1; every wait is bounded; every process started here is stopped by PID.
"""

import json
import signal
import time

import redis_harness as R
import test_fanout as F
import test_redis as T
import wsed_harness as H

limit = H.limit
compact = F.compact
ROOM = "room1"
AUTH = b"Authorization: Bearer " + F.API_KEY.encode() + b"\r\n"


def enter(c, data, topic=ROOM, action="subscribe"):
    """Subscribe c to topic with presence data (or unsubscribe, data None); the reply must be a
    success."""
    p = {"action": action, "topics": [topic]}
    if data is not None:
        p["presence"] = data
    c.send_text(compact({"c": "WSE", "t": "subscription_update", "p": p, "v": 1}))
    while True:  # (presence events of the topic may come first: c may be subscribed already)
        raw, doc = F.next_json(c, 5, "(reply to the presence subscribe)")
        if not doc.get("t", "").startswith("presence_"):
            break
    p = F.check_reply(raw, action)
    assert p["success"] and p["success_topics"] == [topic], raw


def events(c, wait, timeout=10):
    """The presence events c receives until `wait` s pass with nothing new (bounded)."""
    got = []
    deadline = time.monotonic() + timeout
    quiet = time.monotonic() + wait
    while time.monotonic() < min(deadline, quiet):
        m = c.next_message(max(0.01, min(deadline, quiet) - time.monotonic()))
        if m is None:
            continue
        doc = json.loads(m[1])
        if doc.get("t", "").startswith("presence_"):
            got.append((doc["t"], doc["p"]["user_id"], doc["p"]["data"], m[1]))
            quiet = time.monotonic() + wait
    return got


def expect(c, want, what, timeout=10):
    """c gets exactly the events `want` [(type, user)] (in that order), then nothing for 0.5 s."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < len(want) and time.monotonic() < deadline:
        got += events(c, 0.2, max(0.1, deadline - time.monotonic()))
    got += events(c, 0.5, 2)
    assert [(t, u) for t, u, _, _ in got] == want, "%s: got %r, want %r" % (what, [(t, u) for t, u, _, _ in got], want)
    return got


def presence(srv, path="/api/presence", topic=ROOM):
    st, _, _, body = H.http_get(srv.port, path + "?topic=" + topic, extra=AUTH)
    assert st == 200, (st, body)
    return json.loads(body)


@limit(90)
def test_redis_presence_join_leave_once_across_instances_and_queries():
    with R.RedisServer() as redis, T.instances(redis, extra=("--presence",)) as (a, b):
        watch_a = T.client(a, "watcher_a", topics=[ROOM])
        watch_b = T.client(b, "watcher_b", topics=[ROOM])
        u0a = T.client(a, "u0")
        enter(u0a, {"name": "Ann"})
        want = [("presence_join", "u0")]
        got = expect(watch_a, want, "A's watcher, u0 joins on A")
        assert got[0][3] == b'{"c":"WSE","p":{"data":{"name":"Ann"},"topic":"room1","user_id":"u0"},"t":"presence_join","v":1}', got
        expect(watch_b, want, "B's watcher, u0 joins on A")
        expect(u0a, want, "the joiner itself")
        # u0's second connection, on B, with the same data: nothing; u1 on B: one join.
        u0b = T.client(b, "u0")
        enter(u0b, {"name": "Ann"})
        u1b = T.client(b, "u1")
        enter(u1b, {"name": "Bob"})
        for c, what in ((watch_a, "A"), (watch_b, "B"), (u0a, "u0 on A")):
            expect(c, [("presence_join", "u1")], "%s's view of u0 again and u1" % what)
        q = presence(a)
        assert q == {"members": {"u0": {"data": {"name": "Ann"}, "connections": 2},
                                 "u1": {"data": {"name": "Bob"}, "connections": 1}},
                     "num_connections": 3, "num_users": 2, "topic": ROOM}, q
        assert presence(b) == q
        assert presence(b, "/api/presence/stats") == {"num_connections": 3, "num_users": 2}
        # New data from u0's connection on B: one update everywhere.
        enter(u0b, {"name": "Ann", "status": "away"})
        got = expect(watch_a, [("presence_update", "u0")], "update")
        assert got[0][2] == {"name": "Ann", "status": "away"}
        expect(watch_b, [("presence_update", "u0")], "update on B")
        # u0 leaves on A (still on B): nothing; then on B: one leave, with the last data.
        u0a.close()
        expect(watch_a, [], "u0 still on B")
        enter(u0b, None, action="unsubscribe")
        got = expect(watch_a, [("presence_leave", "u0")], "u0's last connection")
        assert got[0][2] == {"name": "Ann", "status": "away"}
        expect(watch_b, [("presence_leave", "u0")], "u0's last connection, B")
        assert presence(a, "/api/presence/stats") == {"num_connections": 1, "num_users": 1}
        m = T.metrics(a)
        assert T.rmetric(m, "wsed_redis_presence_queries_total", result="answered") >= 2
        T.close_all([watch_a, watch_b, u0b, u1b])


@limit(120)
def test_redis_presence_killed_instance_members_leave():
    """B (holding u1) is SIGKILLed: A's subscribers get u1's presence_leave once B's renewal
    lapses (--redis-member-ttl 3s, then A's next renewal within 1 s), and the query no longer
    lists u1."""
    ttl = ("--presence", "--redis-member-ttl", "3s")
    with R.RedisServer() as redis, T.instance(redis, *ttl) as a, \
            T.instance(redis, *ttl, check_exit=False) as b:
        T.wait_readyz([a, b], 200, 20, "at startup")
        watch = T.client(a, "watcher", topics=[ROOM])
        u0 = T.client(a, "u0")
        enter(u0, {"n": 0})
        expect(watch, [("presence_join", "u0")], "u0's join")  # (then u1's: one order)
        u1 = T.client(b, "u1")
        enter(u1, {"n": 1})
        expect(watch, [("presence_join", "u1")], "u1's join")
        b.send_signal(signal.SIGKILL)
        b.wait(10)
        t0 = time.monotonic()
        got = expect(watch, [("presence_leave", "u1")], "u1's instance died", timeout=20)
        took = time.monotonic() - t0
        assert took <= 8, "the leave came after %.1fs" % took
        assert got[0][2] == {"n": 1}
        assert presence(a)["members"] == {"u0": {"data": {"n": 0}, "connections": 1}}
        T.close_all([watch, u0])


@limit(60)
def test_redis_presence_count_change_is_not_an_update():
    """u0 has two connections on A with data {"n":"a"}, then one on B with {"n":"b"} (an update:
    the latest wins); one of A's connections closing changes only the count: no event, and the
    data stays {"n":"b"}."""
    with R.RedisServer() as redis, T.instances(redis, extra=("--presence",)) as (a, b):
        watch = T.client(b, "watcher", topics=[ROOM])
        a1, a2 = T.client(a, "u0"), T.client(a, "u0")
        enter(a1, {"n": "a"})
        enter(a2, {"n": "a"})
        expect(watch, [("presence_join", "u0")], "u0 joins (twice on A: one event)")
        b1 = T.client(b, "u0")
        enter(b1, {"n": "b"})
        expect(watch, [("presence_update", "u0")], "other data from B")
        a2.close()
        expect(watch, [], "a count change alone")
        assert presence(b)["members"] == {"u0": {"data": {"n": "b"}, "connections": 2}}
        T.close_all([watch, a1, b1])


@limit(60)
def test_redis_presence_quick_join_leave_settles_and_scripting_refused_falls_back():
    """A member that joins and leaves before its write goes out leaves nothing behind and the
    bridge stops writing (a few writes, not one per round trip); a Redis user without
    @scripting: publications still flow, presence works per instance (events routed locally)."""
    with R.RedisServer() as redis, T.instances(redis, n=1, extra=("--presence",)) as (a,):
        watch = T.client(a, "watcher", topics=[ROOM])
        for i in range(5):
            c = T.client(a, "q%d" % i)
            enter(c, {"i": i})
            c.close()
        time.sleep(1.5)
        w1 = T.rmetric(T.metrics(a), "wsed_redis_presence_writes_total", result="ok")
        time.sleep(1.5)
        w2 = T.rmetric(T.metrics(a), "wsed_redis_presence_writes_total", result="ok")
        assert w2 - w1 <= 2, "presence writes keep going: %s then %s" % (w1, w2)
        assert presence(a)["members"] == {}
        watch.close()
    with R.RedisServer() as redis:
        redis.command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "&*", "+@all", "-@scripting")
        url = "redis://noscript:pw@127.0.0.1:%d" % redis.port
        with T.instance(url, "--presence") as a:
            T.wait_readyz([a], 200, 20, "without scripting")
            watch = T.client(a, "watcher", topics=[ROOM])
            u0 = T.client(a, "u0")
            enter(u0, {"n": 0})
            expect(watch, [("presence_join", "u0")], "per instance, without scripting")
            assert presence(a)["members"] == {"u0": {"data": {"n": 0}, "connections": 1}}
            T.close_all([watch, u0])
