"""wsed queue groups across instances (README "Presence and queue groups"): a real redis-server
and two wsed; each publication on a topic goes to exactly one member of each group in the whole
cluster (the members of every instance are kept in Redis; a marker on the topic's channel gives
every instance the same rotation, and each counts the channel's publications from it), plain
subscribers on both instances still get everything, a member that closes is taken out of the
rotation, and an instance killed with SIGKILL has its members dropped once its renewal lapses.

Run with tests/integration/run_tests.py -k redis_groups (under /usr/bin/python3). Only
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
TOPIC = "jobs"


def join(c, topic=TOPIC, group="workers"):
    """c becomes a member of `group` of `topic` (the reply must say so)."""
    c.send_text(compact({"c": "WSE", "t": "subscription_update",
                         "p": {"action": "subscribe", "topics": [topic], "queue_group": group}, "v": 1}))
    raw, _ = F.next_json(c, 5, "(reply to the queue group subscribe)")
    p = F.check_reply(raw, "subscribe")
    assert p["success"] and p["success_topics"] == [topic], raw


def leave(c, topic=TOPIC, group="workers"):
    c.send_text(compact({"c": "WSE", "t": "subscription_update",
                         "p": {"action": "unsubscribe", "topics": [topic], "queue_group": group}, "v": 1}))
    raw, _ = F.next_json(c, 5, "(reply to the queue group unsubscribe)")
    assert F.check_reply(raw, "unsubscribe")["success"], raw


def groups(srv, topic=TOPIC):
    """GET /api/queue_groups: the parsed answer."""
    st, _, _, body = H.http_get(srv.port, "/api/queue_groups?topic=" + topic,
                                extra=b"Authorization: Bearer " + F.API_KEY.encode() + b"\r\n")
    assert st == 200, (st, body)
    return json.loads(body)


def wait_cluster(srvs, want, timeout=15, topic=TOPIC):
    """Until every instance's view of the cluster's rotation has `want` ({group: members})."""
    T.poll(lambda: [groups(s, topic).get("cluster") for s in srvs], lambda got: all(g == want for g in got),
           timeout, lambda got: "cluster views %r, waited for %r" % (got, want))


def publish_seqs(srv, first, n, topic=TOPIC, batch=100):
    api = F.Api(srv.port)
    F.post_batches(api, [{"topic": topic, "message": {"t": "job", "p": {"seq": s}}}
                         for s in range(first, first + n)], batch)


def seqs_of(c, until, timeout):
    """The seqs c receives (job messages) until `until` seconds pass with nothing new, or timeout."""
    got = []
    deadline = time.monotonic() + timeout
    quiet_until = time.monotonic() + until
    while time.monotonic() < min(deadline, quiet_until):
        m = c.next_message(max(0.01, min(deadline, quiet_until) - time.monotonic()))
        if m is None:
            continue
        assert m[0] == "text", m[:2]
        doc = json.loads(m[1])
        if doc.get("t") == "job":
            got.append(doc["p"]["seq"])
            quiet_until = time.monotonic() + until
    return got


def drain_all(clients, expected_total, timeout=30):
    """Reads every client until the job messages they got together reach expected_total, then
    a short quiet period; returns {client index: [seq...]}."""
    got = {i: [] for i in range(len(clients))}
    deadline = time.monotonic() + timeout
    while sum(len(v) for v in got.values()) < expected_total and time.monotonic() < deadline:
        T.poll_clients(clients, 0.2)
        for i, c in enumerate(clients):
            while True:
                m = c.next_message(0)
                if m is None:
                    break
                doc = json.loads(m[1])
                if doc.get("t") == "job":
                    got[i].append(doc["p"]["seq"])
    for i, c in enumerate(clients):  # nothing more (a duplicate would show here)
        got[i] += seqs_of(c, 0.3, 2)
    return got


def check_spread(got, n, members, what):
    counts = [len(got[i]) for i in range(members)]
    every = sorted(s for i in range(members) for s in got[i])
    assert every == list(range(n)), "%s: each publication to exactly one member; counts %r, %d distinct of %d" % (
        what, counts, len(set(every)), n)
    mean = n / members
    assert all(0.5 * mean <= k <= 1.5 * mean for k in counts), "%s: counts %r not within 0.5-1.5x of %s" % (
        what, counts, mean)
    return counts


@limit(90)
def test_redis_groups_500_publications_5_members_over_2_instances():
    """500 publications (half through each instance), 5 members (3 on A, 2 on B): the members'
    counts sum to 500, each publication reaches exactly one member (round robin: 100 each),
    and a plain subscriber on each instance gets all 500."""
    with R.RedisServer() as redis, T.instances(redis) as (a, b):
        members = [T.client(a, "wa%d" % i) for i in range(3)] + [T.client(b, "wb%d" % i) for i in range(2)]
        plain = [T.client(a, "pa", topics=[TOPIC]), T.client(b, "pb", topics=[TOPIC])]
        for c in members:
            join(c)
        wait_cluster([a, b], {"workers": 5})
        assert groups(a)["groups"] == {"workers": 3} and groups(b)["groups"] == {"workers": 2}
        publish_seqs(a, 0, 250)
        publish_seqs(b, 250, 250)
        got = drain_all(members + plain, 500 + 1000)
        counts = check_spread(got, 500, 5, "5 members over 2 instances")
        assert counts == [100] * 5, "round robin over the cluster's rotation: %r" % counts
        for i in (5, 6):
            assert sorted(got[i]) == list(range(500)), "plain subscriber %d got %d" % (i, len(got[i]))
        ma, mb = T.metrics(a), T.metrics(b)
        assert T.rmetric(ma, "wsed_queue_group_deliveries_total") == 300
        assert T.rmetric(mb, "wsed_queue_group_deliveries_total") == 200
        assert T.rmetric(ma, "wsed_redis_queue_group_writes_total", result="ok") >= 1
        T.close_all(members + plain)


@limit(90)
def test_redis_groups_two_groups_leave_and_close():
    """Two groups on one topic each get every publication once; a member that leaves its group
    and one that closes are taken out of every instance's rotation (the rest share the work)."""
    with R.RedisServer() as redis, T.instances(redis) as (a, b):
        w = [T.client(a, "w0"), T.client(b, "w1"), T.client(b, "w2")]
        l = [T.client(a, "l0"), T.client(b, "l1")]
        for c in w:
            join(c, group="workers")
        for c in l:
            join(c, group="loggers")
        wait_cluster([a, b], {"loggers": 2, "workers": 3})
        publish_seqs(a, 0, 60)
        got = drain_all(w + l, 120)
        assert sorted(got[0] + got[1] + got[2]) == list(range(60)), got
        assert sorted(got[3] + got[4]) == list(range(60)), got
        assert [len(got[i]) for i in range(5)] == [20, 20, 20, 30, 30], {i: len(v) for i, v in got.items()}
        leave(w[1])
        w[2].close()
        wait_cluster([a, b], {"loggers": 2, "workers": 1})
        publish_seqs(b, 100, 30)
        got = drain_all([w[0]] + l, 60)
        assert sorted(got[0]) == list(range(100, 130)), got[0]
        assert sorted(got[1] + got[2]) == list(range(100, 130))
        assert seqs_of(w[1], 0.3, 1) == [], "a member that left its group gets nothing more"
        T.close_all([w[0], w[1]] + l)


@limit(120)
def test_redis_groups_killed_instance_members_leave_within_keep_time():
    """B is killed (SIGKILL): its members stay in the rotation until their renewal lapses
    (--redis-member-ttl 3s after B's last one, then A's next renewal within 1 s drops them); from
    then on A's member gets every publication."""
    ttl = ("--redis-member-ttl", "3s")
    with R.RedisServer() as redis, T.instance(redis, *ttl) as a, T.instance(redis, *ttl, check_exit=False) as b:
        T.wait_readyz([a, b], 200, 20, "at startup")
        ma = T.client(a, "wa")
        mb = T.client(b, "wb")
        join(ma)
        join(mb)
        wait_cluster([a, b], {"workers": 2})
        b.send_signal(signal.SIGKILL)
        b.wait(10)
        t0 = time.monotonic()
        wait_cluster([a], {"workers": 1}, timeout=20)
        took = time.monotonic() - t0
        assert took <= 8, "B's members left after %.1fs" % took
        publish_seqs(a, 0, 20)
        got = drain_all([ma], 20)
        assert sorted(got[0]) == list(range(20)), got[0]
        ma.close()


@limit(90)
def test_redis_groups_raw_redis_publish_and_recoverable_topic():
    """A backend's raw PUBLISH wse:<topic> and a recoverable topic (sequenced by Redis, stamped)
    are split over the cluster's members the same way: every publication to exactly one."""
    with R.RedisServer() as redis, T.instances(redis, extra=("--recovery", "--recovery-topics", "rec.*")) as (a, b):
        members = [T.client(a, "wa"), T.client(b, "wb0"), T.client(b, "wb1")]
        for c in members:
            join(c)
            join(c, topic="rec.jobs")
        wait_cluster([a, b], {"workers": 3})
        wait_cluster([a, b], {"workers": 3}, topic="rec.jobs")
        for s in range(30):
            redis.command("PUBLISH", "wse:" + TOPIC, compact({"t": "job", "p": {"seq": s}}))
        got = drain_all(members, 30)
        assert sorted(sum(got.values(), [])) == list(range(30)), got
        assert [len(v) for v in got.values()] == [10, 10, 10], got
        publish_seqs(a, 0, 15, topic="rec.jobs")
        publish_seqs(b, 15, 15, topic="rec.jobs")
        got = drain_all(members, 30)
        assert sorted(sum(got.values(), [])) == list(range(30)), got
        T.close_all(members)
