"""wsed WSE recovery across instances (PROTOCOL.md "Recovery (WSE v2.4)" and "Multi-instance
through Redis"): two wsed instances with --recovery on one real redis-server. Every publication of
a recoverable topic is sequenced by a script in Redis (one sequencer per topic for all instances),
stamped tp/e/o, kept in Redis (<prefix>{<tag>}r:<prefix><topic>m / ...l, PEXPIRE --recovery-ttl)
and delivered by every instance when it comes back from Redis; a recover-subscribe on any instance
gets exactly the missed ones before its reply (from the instance's cache when it covers them, else
read from Redis once the instance's channel subscription is confirmed).

Covered: a reconnect to the other instance (and back, served from the cache), hops between the
instances under a continuous publisher, one dense sequence for publishers on both instances
(identical streams on both, the Redis keys), epoch renewal after the TTL, Redis killed and
restarted between a disconnect and a reconnect, a backlog over --recovery-max-replay.

The subscriber side is test_recovery's Sequencer (WSE's EventSequencer rules: new epoch ->
re-baseline, o <= last dropped, o == last + 1 delivered, else dropped and a recover-subscribe);
s.port is switched to hop between instances. A first subscribe is a recover-subscribe with no
position: served from Redis, its reply comes only after the instance's channel subscription is
confirmed, so nothing published after it can miss that instance (no probes, which would take
offsets). Publications that must keep one global order (a dense seq equal to the offset) go
through `Feed`, which waits after each POST until the publishing instance's
wsed_redis_sequenced_total counted it (Redis ran the script) before the next one, whichever
instance it goes through.

Run with tests/integration/run_tests.py -k redis_recovery (under /usr/bin/python3). redis-server
(redis_harness) on a free port of 127.0.0.1, wsed with --insecure-no-auth and the API key file;
every wait is bounded and every process is stopped by PID (wsed_harness).
"""

import contextlib
import threading
import time

import redis_harness as R
import test_fanout as F
import test_recovery as TR
import test_redis as RT
import test_wse as W
import wsed_harness as H

BIN = W.BIN
limit = H.limit
Sequencer = TR.Sequencer
stamped_in = TR.stamped_in
NO_HISTORY = TR.NO_HISTORY
PREFIX = "wse:"


# ---------------------------------------------------------------------------------------------
# instances, metrics, Redis keys
# ---------------------------------------------------------------------------------------------

def node(redis, *extra, workers=2):
    """wsed in WSE mode, --recovery, bridged to `redis`, no auth, the API key, no server pings."""
    return H.running(BIN, "--mode", "wse", "--workers", str(workers), "--ping-interval", "0",
                     "--api-key-file", F.key_file(), "--insecure-no-auth", "--recovery",
                     "--redis-url", redis.url(), *extra, env=W.env(WSED_JWT_SECRET=""))


@contextlib.contextmanager
def pair(redis, *extra):
    """Instances A and B on redis with the same flags, both /readyz 200."""
    with node(redis, *extra) as a, node(redis, *extra) as b:
        RT.wait_readyz([a, b], 200, 20, "at startup")
        yield a, b


def metrics(srv):
    return F.metrics(srv.port)


def mv(m, name, **labels):
    """A metric's value (summed over the shards for per-shard families), 0 when absent."""
    return RT.rmetric(m, name, **labels)


def requests(m, result):
    return mv(m, "wsed_recovery_requests_total", result=result)


def histories(m, result):
    return mv(m, "wsed_redis_histories_total", result=result)


def recovery_lines(m):
    return {k: v for k, v in m.items() if k.startswith(("wsed_recovery", "wsed_redis_sequenced",
                                                          "wsed_redis_histories", "wsed_redis_up",
                                                          "wsed_redis_ready", "wsed_redis_publications"))}


def delta(m1, m0, name, **labels):
    return mv(m1, name, **labels) - mv(m0, name, **labels)


def sequenced(srv):
    return mv(metrics(srv), "wsed_redis_sequenced_total")


def wait_until(fetch, pred, timeout, describe, step=0.003):
    """test_redis.poll with a shorter step (metrics of a running feed)."""
    return RT.poll(fetch, pred, timeout, describe, step)


def redis_keys(redis, topic):
    """The two keys of topic's history in Redis (meta hash, list) found by SCAN, or (None, None)."""
    pattern = "%s{*}r:%s%sm" % (PREFIX, PREFIX, topic)
    found = []
    cursor = b"0"
    with redis.resp() as r:
        while True:
            cursor, keys = r.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            found += keys
            if cursor in (b"0", 0):
                break
    assert len(found) <= 1, "several meta keys for %r: %r" % (topic, found)
    if not found:
        return None, None
    meta = found[0].decode()
    return meta, meta[:-1] + "l"


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------

def tick(n, w=None):
    p = {"seq": n}
    if w is not None:
        p["w"] = w
    return {"t": "tick", "p": p}


class Feed:
    """tick(seq) 0, 1, 2 ... on one topic through the APIs of several instances (one kept-alive
    connection each). post(srv, n) publishes the next n through srv and returns only once srv's
    wsed_redis_sequenced_total counted them, so Redis sequenced them before anything posted
    after: offsets follow seq across instances (on a fresh topic, o == seq)."""

    def __init__(self, topic, srvs):
        self.topic = topic
        self.apis = {s.port: F.Api(s.port) for s in srvs}
        self.done = {s.port: sequenced(s) for s in srvs}
        self.next = 0
        self.via = []   # the instance port of each seq

    def post(self, srv, n, timeout=10):
        seqs = list(range(self.next, self.next + n))
        st, _, doc = self.apis[srv.port].post([{"topic": self.topic, "message": tick(k)} for k in seqs])
        assert st == 200 and doc == {"accepted": n}, (st, doc)
        self.next += n
        self.via += [srv.port] * n
        self.done[srv.port] += n
        want = self.done[srv.port]
        v = wait_until(lambda: sequenced(srv), lambda x: x >= want, timeout,
                       lambda x: ":%d wsed_redis_sequenced_total %r, expected %d after seq %d; %r" % (
                           srv.port, x, want, seqs[-1], recovery_lines(metrics(srv))))
        assert v == want, ":%d sequenced %r, expected %d" % (srv.port, v, want)

    def close(self):
        for a in self.apis.values():
            a.close()


class FeedThread(threading.Thread):
    """Feed.post in a thread: n publications in batches of `batch`, alternating between the
    instances batch by batch, pausing `pause` s between batches."""

    def __init__(self, feed, srvs, n, batch=10, pause=0.01):
        super().__init__(daemon=True)
        self.feed, self.srvs, self.n, self.batch, self.pause = feed, list(srvs), n, batch, pause
        self.error = None

    def run(self):
        try:
            i = 0
            while self.feed.next < self.n:
                self.feed.post(self.srvs[i % len(self.srvs)], min(self.batch, self.n - self.feed.next))
                i += 1
                time.sleep(self.pause)
        except BaseException as e:   # reported by finish()
            self.error = e

    def finish(self, timeout=20):
        self.join(timeout)
        assert not self.is_alive(), "publisher still running after %ss (at seq %d)" % (timeout, self.feed.next)
        assert self.error is None, "publisher failed: %r" % (self.error,)


class Publisher(threading.Thread):
    """tick(seq, w) 0..n-1 through one instance's API in batches, as fast as it answers (no
    waiting for Redis): the concurrent publisher of test 3."""

    def __init__(self, srv, topic, n, w, batch=10, pause=0.001):
        super().__init__(daemon=True)
        self.srv, self.topic, self.n, self.w, self.batch, self.pause = srv, topic, n, w, batch, pause
        self.error = None
        self.sent = 0

    def run(self):
        try:
            api = F.Api(self.srv.port)
            for r in range(0, self.n, self.batch):
                chunk = [{"topic": self.topic, "message": tick(k, self.w)}
                         for k in range(r, min(self.n, r + self.batch))]
                st, _, doc = api.post(chunk)
                assert st == 200 and doc == {"accepted": len(chunk)}, (r, st, doc)
                self.sent += len(chunk)
                time.sleep(self.pause)
            api.close()
        except BaseException as e:
            self.error = e

    def finish(self, timeout=20):
        self.join(timeout)
        assert not self.is_alive(), "publisher %s still running after %ss (%d sent)" % (self.w, timeout, self.sent)
        assert self.error is None, "publisher %s failed: %r" % (self.w, self.error)


# ---------------------------------------------------------------------------------------------
# subscribers
# ---------------------------------------------------------------------------------------------

def join(srv, topics, name):
    """A Sequencer on srv subscribed to topics (fresh: no history) with a recover-subscribe
    without position: its reply means srv's channel subscriptions are confirmed in Redis."""
    s = Sequencer(srv.port, topics, name=name).connect()
    assert s.features.get("recovery") is True, s.features
    p, _ = s.subscribe(recover=True, positions={})
    assert p["success"] and p["success_topics"] == list(topics), p
    for t in topics:
        assert p["recovery"][t] == NO_HISTORY, "a fresh topic %r: %r" % (t, p)
    return s


def hop(s, srv, clean=True, away=0.0, timeout=10):
    """s goes away (for `away` s) and comes back on srv with recover and its position: (p, entry
    of its one topic, the stamped log entries between the request and the reply, the position it
    sent)."""
    (topic,) = s.topics
    pos = tuple(s.pos[topic])
    s.disconnect(clean)
    if away:
        time.sleep(away)
    s.port = srv.port
    s.connect()
    mark = len(s.log)
    p, info = s.subscribe(timeout=timeout)
    assert info["request"]["p"]["recover"] is True and \
        info["request"]["p"]["recovery"] == {topic: {"epoch": pos[0], "offset": pos[1]}}, info["request"]
    assert p["success"] and p["success_topics"] == [topic], p
    return p, p["recovery"][topic], stamped_in(s.log, mark), pos


def offsets_seqs(s):
    """(o, payload seq) of every delivery."""
    return [(o, pl["seq"]) for (_, o, pl) in s.delivered]


def frames_by_offset(s):
    """{o: raw bytes} of every stamped frame s received (checks repeats are byte-identical)."""
    out = {}
    for e in stamped_in(s.log, 0):
        if e[4] in out:
            assert out[e[4]] == e[5], "%s: offset %d arrived as %r and as %r" % (s.name, e[4], out[e[4]], e[5])
        out[e[4]] = e[5]
    return out


def close_all(*subs):
    for s in subs:
        s.close()


# ---------------------------------------------------------------------------------------------
# 1. a reconnect to the other instance, and back
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_redis_recovery_reconnect_to_the_other_instance():
    """A Sequencer on A gets 15 publications (10 through B's API, 5 through A's), goes away; 20
    more; back on B with recover: exactly offsets 15..34 before the reply (recovered, count 20,
    read from Redis: B has no cache), then live ones go on. Gone again (TCP reset), 5 more, back on
    A: A's cache (a witness stays subscribed there) covers it, replayed without asking Redis. The
    application sees seq 0..49 once each, in order, o == seq, and every frame is byte-identical
    to what the witness got live."""
    topic = "xroom"
    with R.RedisServer() as redis, pair(redis) as (a, b):
        s = join(a, [topic], "hopper")
        w = join(a, [topic], "witness-A")
        feed = Feed(topic, [a, b])
        feed.post(b, 10)
        feed.post(a, 5)
        assert s.pump_until(lambda q: len(q.delivered) == 15, 5), offsets_seqs(s)
        epoch, last = s.pos[topic]
        assert last == 14 and offsets_seqs(s) == [(k, k) for k in range(15)], offsets_seqs(s)
        s.disconnect()
        feed.post(b, 10)
        feed.post(a, 10)
        assert w.pump_until(lambda q: len(q.delivered) == 35, 5), len(w.delivered)

        mb0, ma0 = metrics(b), metrics(a)
        p, ent, before, pos = hop(s, b)
        assert pos == (epoch, 14), pos
        assert ent == {"epoch": epoch, "offset": 34, "recoverable": True, "recovered": True, "count": 20}, p
        assert p["recoverable"] is True and p["recovered"] is True, p
        assert [e[4] for e in before] == list(range(15, 35)), \
            "before B's reply: offsets %r, expected 15..34" % [e[4] for e in before]
        live = frames_by_offset(w)
        for e in before:
            assert e[3] == epoch and e[5] == live[e[4]], "replayed %r, live on A %r" % (e[5], live[e[4]])
        mb = metrics(b)
        assert delta(mb, mb0, "wsed_redis_histories_total", result="answered") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_redis_histories_total", result="failed") == 0, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="recovered") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_recovery_replayed_total") == 20, recovery_lines(mb)
        assert delta(metrics(a), ma0, "wsed_recovery_requests_total", result="recovered") == 0

        # Live on B, published through both.
        feed.post(a, 5)
        feed.post(b, 5)
        assert s.pump_until(lambda q: len(q.delivered) == 45, 5), offsets_seqs(s)[-5:]
        s.drain(0.1)
        after = stamped_in(s.log, TR.log_index_of_reply(s, 1) + 1)
        assert [e[4] for e in after] == list(range(35, 45)), [e[4] for e in after]

        # Reset, 5 more through B, back on A: served from A's cache.
        s.disconnect(clean=False)
        feed.post(b, 5)
        assert w.pump_until(lambda q: len(q.delivered) == 50, 5), len(w.delivered)
        ma0 = metrics(a)
        p, ent, before, pos = hop(s, a)
        assert pos == (epoch, 44), pos
        assert ent == {"epoch": epoch, "offset": 49, "recoverable": True, "recovered": True, "count": 5}, p
        assert [e[4] for e in before] == list(range(45, 50)), [e[4] for e in before]
        ma = metrics(a)
        assert delta(ma, ma0, "wsed_recovery_requests_total", result="recovered") == 1, recovery_lines(ma)
        assert delta(ma, ma0, "wsed_redis_histories_total", result="answered") == 0 and \
            delta(ma, ma0, "wsed_redis_histories_total", result="failed") == 0, \
            "A's cache covers 45..49 (its witness is subscribed), yet A asked Redis: %r" % recovery_lines(ma)

        s.drain(0.2)
        w.drain(0.1)
        s.check_exactly_once(50, what="across A -> B -> A")
        assert offsets_seqs(s) == [(k, k) for k in range(50)], offsets_seqs(s)
        assert s.dups == 0 and s.gaps == 0 and s.rebaselines == 0 and not s.lost, (s.dups, s.gaps, s.rebaselines)
        w.check_exactly_once(50, what="(the witness on A)")
        live = frames_by_offset(w)
        for o, raw in frames_by_offset(s).items():
            assert raw == live[o], "offset %d: %r on the hopper, %r live on A" % (o, raw, live[o])
        feed.close()
        close_all(s, w)


# ---------------------------------------------------------------------------------------------
# 2. hops between the instances under a continuous publisher
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_redis_recovery_hops_between_instances_while_publishing():
    """2000 publications in batches of 10, alternating between A's and B's API (one global order:
    each batch sequenced before the next), while the Sequencer hops A -> B -> A -> B ... (close
    1000 or a TCP reset, unread frames lost, away 30..120 ms) with recover: each reply recovered,
    the frames before it exactly last+1..offset, live ones dense from offset+1 (before and after
    the reply); every seq once, in order, o == seq."""
    n, topic = 2000, "hops"
    with R.RedisServer() as redis, pair(redis, "--recovery-buffer", "1024", "--recovery-max-replay", "1024") as (a, b):
        srvs = [a, b]
        s = join(a, [topic], "hopper")
        feed = Feed(topic, srvs)
        pub = FeedThread(feed, srvs, n, batch=10, pause=0.01)
        pub.start()
        hops = []
        deadline = time.monotonic() + 30
        next_at = 150
        while len(s.delivered) < n and time.monotonic() < deadline:
            s.pump(0.2)
            if len(s.delivered) >= next_at and len(hops) < 10 and pub.is_alive():
                next_at += 180
                to = srvs[(len(hops) + 1) % 2]   # A -> B -> A ...
                clean = len(hops) % 2 == 0
                p, ent, before, pos = hop(s, to, clean, away=0.03 * (1 + len(hops) % 4))
                pre = [e[4] for e in before]
                replayed = [o for o in pre if o <= ent["offset"]]
                newer = pre[len(replayed):]
                hops.append((to.port, pos[1], ent["offset"], ent["count"], len(newer), clean))
                assert ent["recovered"] and ent["epoch"] == pos[0] and ent["recoverable"], \
                    "hop %d to :%d from %r: %r" % (len(hops), to.port, pos, ent)
                assert replayed == list(range(pos[1] + 1, ent["offset"] + 1)) and ent["count"] == len(replayed), \
                    "hop %d to :%d from %r: reply %r, frames before it %r" % (len(hops), to.port, pos, ent,
                                                                              pre[:5] + ["..."] + pre[-5:])
                assert newer == list(range(ent["offset"] + 1, ent["offset"] + 1 + len(newer))), (ent, pre[-10:])
        pub.finish()
        s.pump_until(lambda q: len(q.delivered) >= n, 5)
        s.drain(0.2)
        print("hops (to port, from o, reply offset, count, newer before reply, clean): %r; gaps %d, gap recovers %d, "
              "dups %d" % (hops, s.gaps, s.gap_recovers, s.dups))
        assert len(hops) >= 6, "only %d hops while publishing (delivered %d)" % (len(hops), len(s.delivered))
        # After each recover reply, up to the next request or connection: offsets dense from the
        # reply's offset + 1 (nothing the replay covered comes again live).
        for i, e in enumerate(s.log):
            if e[0] != "reply" or not e[4]["recover"] or e[2]["recovery"][topic]["epoch"] is None:
                continue   # (the first subscribe: no history yet)
            off = e[2]["recovery"][topic]["offset"]
            end = next((j for j in range(i + 1, len(s.log)) if s.log[j][0] in ("sent", "connect")), len(s.log))
            after = [x[4] for x in stamped_in(s.log, i + 1, end)]
            assert after == list(range(off + 1, off + 1 + len(after))), \
                "after a reply with offset %d: offsets %r" % (off, after[:20])
        assert sum(h[3] for h in hops) > 0, "no hop needed a replay: %r" % hops
        s.check_exactly_once(n, what="after %d hops" % len(hops))
        bad = [(o, q) for o, q in offsets_seqs(s) if o != q]
        assert not bad, "offsets do not follow the publication order: %r" % bad[:5]
        assert s.rebaselines == 0, s.rebaselines
        ma, mb = metrics(a), metrics(b)
        rec = requests(ma, "recovered") + requests(mb, "recovered")
        assert rec == len(hops) + s.gap_recovers, (rec, len(hops), s.gap_recovers)
        assert requests(ma, "not_recovered") + requests(mb, "not_recovered") == 0, (recovery_lines(ma),
                                                                                    recovery_lines(mb))
        assert histories(ma, "failed") + histories(mb, "failed") == 0, (recovery_lines(ma), recovery_lines(mb))
        assert mv(ma, "wsed_redis_sequenced_total") + mv(mb, "wsed_redis_sequenced_total") == n
        feed.close()
        s.close()


# ---------------------------------------------------------------------------------------------
# 3. one dense sequence for publishers on both instances
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_redis_recovery_publishers_on_both_instances_one_dense_sequence():
    """A publisher on A's API and one on B's, 1000 each, concurrently on one topic; a subscriber
    on each instance: both see offsets 0..1999 (one epoch, no gap, no duplicate), the very same
    bytes at each offset, each publisher's seqs in its order. Redis holds the topic's meta (e, n
    2000) and the last --recovery-buffer (128) stamped frames, byte-identical to the live ones,
    both keys with a TTL of at most --recovery-ttl."""
    n, topic = 1000, "dense"
    with R.RedisServer() as redis, pair(redis) as (a, b):
        sa = join(a, [topic], "sub-A")
        sb = join(b, [topic], "sub-B")
        pubs = [Publisher(a, topic, n, "A"), Publisher(b, topic, n, "B")]
        for p in pubs:
            p.start()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and any(len(s.delivered) < 2 * n for s in (sa, sb)):
            for s in (sa, sb):
                for _ in range(200):
                    if s.pump(0.002) is None:
                        break
        for p in pubs:
            p.finish()
        for s in (sa, sb):
            s.pump_until(lambda q: len(q.delivered) >= 2 * n, 5)
            s.drain(0.1)
        ref = None
        for s in (sa, sb):
            st = stamped_in(s.log, 0)
            offs = [e[4] for e in st]
            assert offs == list(range(2 * n)), "%s: %d stamped frames, not offsets 0..%d; breaks %r" % (
                s.name, len(offs), 2 * n - 1,
                [(offs[i - 1], offs[i]) for i in range(1, len(offs)) if offs[i] != offs[i - 1] + 1][:5])
            assert len({e[3] for e in st}) == 1, {e[3] for e in st}
            for wname in ("A", "B"):
                got = [pl["seq"] for (_, _, pl) in s.delivered if pl.get("w") == wname]
                assert got == list(range(n)), (s.name, wname, len(got), got[:10])
            assert s.gaps == 0 and s.dups == 0 and s.gap_recovers == 0 and s.rebaselines == 0, \
                (s.name, s.gaps, s.dups, s.gap_recovers, s.rebaselines)
            frames = [e[5] for e in st]
            if ref is None:
                ref = frames
            else:
                assert frames == ref, "A's and B's subscribers differ, first at offset %d: %r / %r" % next(
                    (i, x, y) for i, (x, y) in enumerate(zip(ref, frames)) if x != y)
        epoch = sa.pos[topic][0]
        ma, mb = metrics(a), metrics(b)
        assert mv(ma, "wsed_redis_sequenced_total") == n and mv(mb, "wsed_redis_sequenced_total") == n, \
            (recovery_lines(ma), recovery_lines(mb))
        # Redis: one sequencer for the topic.
        meta, log = redis_keys(redis, topic)
        assert meta, "no %s{*}r:%s%sm key; keys: %r" % (PREFIX, PREFIX, topic, redis.command("KEYS", "*"))
        with redis.resp() as r:
            h = r.command("HGETALL", meta)
            h = dict(zip(h[::2], h[1::2]))
            assert h == {b"e": epoch.encode(), b"n": str(2 * n).encode()}, h
            assert r.command("LLEN", log) == 128, r.command("LLEN", log)
            kept = r.command("LRANGE", log, 0, -1)
            assert kept == ref[-128:], "Redis's list differs from the live frames: %r / %r" % (kept[:1], ref[-128:][:1])
            for k in (meta, log):
                ttl = r.command("PTTL", k)
                assert 0 < ttl <= 300000, (k, ttl)
        close_all(sa, sb)


# ---------------------------------------------------------------------------------------------
# 4. epoch renewal after the TTL
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_redis_recovery_ttl_renews_the_epoch():
    """--recovery-ttl 1s: 3 publications (epoch e1), 2.5 s later Redis's keys are gone; the next
    publication starts a new epoch e2 at offset 0 (the subscribed Sequencer re-baselines). A
    client coming back on the other instance with (e1, 2) gets recovered false with e2 (offset
    head-1, count 0, nothing replayed), takes e2's position and goes on live."""
    topic = "brief"
    with R.RedisServer() as redis, pair(redis, "--recovery-ttl", "1s") as (a, b):
        s = join(a, [topic], "stays-on-A")
        r = join(a, [topic], "returns-on-B")
        feed = Feed(topic, [a, b])
        feed.post(b, 2)
        feed.post(a, 1)
        for q in (s, r):
            assert q.pump_until(lambda x: len(x.delivered) == 3, 5), offsets_seqs(q)
        e1 = s.pos[topic][0]
        assert s.pos[topic] == [e1, 2] and r.pos[topic] == [e1, 2], (s.pos, r.pos)
        meta, log = redis_keys(redis, topic)
        assert meta, redis.command("KEYS", "*")
        with redis.resp() as c:
            for k in (meta, log):
                ttl = c.command("PTTL", k)
                assert 0 < ttl <= 1000, (k, ttl)
        r.disconnect()
        time.sleep(2.5)
        assert redis.command("EXISTS", meta, log) == 0, "history keys still there 2.5 s after the last write (ttl 1s)"
        feed.post(a, 1)   # seq 3: a new history
        feed.post(b, 1)   # seq 4
        assert s.pump_until(lambda x: len(x.delivered) == 5, 5), offsets_seqs(s)
        e2 = s.pos[topic][0]
        assert e2 != e1 and s.pos[topic] == [e2, 1] and s.rebaselines == 1, (e1, s.pos, s.rebaselines)
        assert offsets_seqs(s) == [(0, 0), (1, 1), (2, 2), (0, 3), (1, 4)], offsets_seqs(s)
        h = redis.command("HGETALL", redis_keys(redis, topic)[0])
        assert dict(zip(h[::2], h[1::2])) == {b"e": e2.encode(), b"n": b"2"}, h

        mb0 = metrics(b)
        p, ent, before, pos = hop(r, b)
        assert pos == (e1, 2), pos
        assert ent == {"epoch": e2, "offset": 1, "recoverable": True, "recovered": False, "count": 0}, p
        assert p["recoverable"] is True and p["recovered"] is False, p
        assert before == [], "nothing may be replayed on a new epoch: %r" % [e[5] for e in before]
        assert r.pos[topic] == [e2, 1] and len(r.lost) == 1, (r.pos, r.lost)
        mb = metrics(b)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="not_recovered") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_redis_histories_total", result="answered") == 1, recovery_lines(mb)
        feed.post(a, 1)
        feed.post(b, 1)   # o 2, 3 of e2
        for q in (s, r):
            assert q.pump_until(lambda x: len(x.delivered) >= (7 if x is s else 5), 5), offsets_seqs(q)
            q.drain(0.1)
        assert offsets_seqs(r) == [(0, 0), (1, 1), (2, 2), (2, 5), (3, 6)], offsets_seqs(r)
        assert r.gaps == 0 and r.dups == 0 and r.rebaselines == 0, (r.gaps, r.dups, r.rebaselines)
        s.check_exactly_once(7, what="across an epoch renewal")
        assert s.pos[topic] == [e2, 3], s.pos
        feed.close()
        close_all(s, r)


# ---------------------------------------------------------------------------------------------
# 5. Redis killed and restarted between a disconnect and a reconnect
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_redis_recovery_redis_restarted_history_gone():
    """5 publications (epoch e1); the client goes away; redis-server is SIGKILLed and started
    again on the same port (no persistence). While it is down, a recover request on B is answered
    after --redis-timeout (2s) as no history (histories failed). Once both instances are ready again: a recover with
    (e1, 4) on B answers no history (epoch null, offset 0, not recoverable, count 0, nothing
    replayed), both instances keep running; the next publications come with a new epoch from
    offset 0, to the returning client and to one that stayed connected on A through the restart
    (both re-baseline)."""
    topic = "fragile"
    with R.RedisServer() as redis, pair(redis, "--redis-timeout", "2s") as (a, b):
        s = join(a, [topic], "returns-on-B")
        stay = join(a, [topic], "stays-on-A")
        feed = Feed(topic, [a, b])
        feed.post(a, 3)
        feed.post(b, 2)
        for q in (s, stay):
            assert q.pump_until(lambda x: len(x.delivered) == 5, 5), offsets_seqs(q)
        e1 = s.pos[topic][0]
        assert s.pos[topic] == [e1, 4], s.pos
        s.disconnect()
        feed.close()
        redis.kill()
        RT.wait_readyz([a, b], 503, 15, "with Redis killed")
        # A recover request while Redis is down: answered once --redis-timeout (2s) passed, no
        # history (Redis could not be asked), counted failed; the connection stays usable.
        mb0 = metrics(b)
        q = Sequencer(b.port, [topic], name="while-down").connect()
        t0 = time.monotonic()
        p, _ = q.subscribe(recover=True, positions={topic: (e1, 2)}, timeout=10)
        waited = time.monotonic() - t0
        assert p["recovery"][topic] == NO_HISTORY and p["success"] is True, p
        assert stamped_in(q.log, 0) == [], q.log
        assert waited < 8, "the reply took %.1fs with --redis-timeout 2s" % waited
        mb = metrics(b)
        assert delta(mb, mb0, "wsed_redis_histories_total", result="failed") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="no_history") == 1, recovery_lines(mb)
        q.close()
        redis.restart()
        RT.wait_readyz([a, b], 200, 20, "after Redis restarted")
        assert redis_keys(redis, topic) == (None, None), redis.command("KEYS", "*")

        mb0 = metrics(b)
        p, ent, before, pos = hop(s, b)
        assert pos == (e1, 4), pos
        assert ent == NO_HISTORY, "after a Redis restart there is no history: %r" % p
        assert p["recoverable"] is False and p["recovered"] is False and p["success"] is True, p
        assert before == [], [e[5] for e in before]
        mb = metrics(b)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="no_history") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_redis_histories_total", result="answered") == 1, recovery_lines(mb)

        feed = Feed(topic, [a, b])
        feed.next = 5
        feed.post(b, 3)
        feed.post(a, 2)
        for q in (s, stay):
            assert q.pump_until(lambda x: len(x.delivered) == 10, 5), \
                "%s: %r (replies %r)" % (q.name, offsets_seqs(q), [x[0] for x in q.replies])
            q.drain(0.1)
            e2 = q.pos[topic][0]
            assert e2 != e1 and q.pos[topic] == [e2, 4] and q.rebaselines == 1, (q.name, e1, q.pos, q.rebaselines)
            assert offsets_seqs(q) == [(k, k) for k in range(5)] + [(k - 5, k) for k in range(5, 10)], \
                (q.name, offsets_seqs(q))
            q.check_exactly_once(10, what="across a Redis restart")
        assert s.pos == stay.pos, (s.pos, stay.pos)
        for srv in (a, b):
            assert srv.alive(), "wsed :%d died: %s" % (srv.port, srv.stderr_text()[-1500:])
            m = metrics(srv)
            assert mv(m, "wsed_redis_up") == 1 and mv(m, "wsed_redis_ready") == 1, recovery_lines(m)
        feed.close()
        close_all(s, stay)


# ---------------------------------------------------------------------------------------------
# 6. a backlog over --recovery-max-replay on the other instance
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_redis_recovery_backlog_over_max_replay_on_the_other_instance():
    """--recovery-buffer 64 --recovery-max-replay 20: gone after offset 0, 30 more; back on B:
    not recovered (the current epoch, offset 30, count 0, nothing replayed), the Sequencer takes
    the loss and goes on live (o 31). On B, from fresh connections: a backlog of exactly 20 is
    recovered (count 20), 21 is not."""
    topic = "big"
    with R.RedisServer() as redis, pair(redis, "--recovery-buffer", "64", "--recovery-max-replay", "20") as (a, b):
        s = join(a, [topic], "hopper")
        feed = Feed(topic, [a, b])
        feed.post(a, 1)
        assert s.pump_until(lambda x: len(x.delivered) == 1, 5), offsets_seqs(s)
        epoch = s.pos[topic][0]
        s.disconnect()
        feed.post(b, 15)
        feed.post(a, 15)
        mb0 = metrics(b)
        p, ent, before, pos = hop(s, b)
        assert pos == (epoch, 0), pos
        assert ent == {"epoch": epoch, "offset": 30, "recoverable": True, "recovered": False, "count": 0}, p
        assert p["recovered"] is False and p["recoverable"] is True, p
        assert before == [], "a backlog of 30 > 20 must not be replayed (nor truncated): %r" % [e[4] for e in before]
        assert s.pos[topic] == [epoch, 30] and len(s.lost) == 1, (s.pos, s.lost)
        mb = metrics(b)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="not_recovered") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_recovery_replayed_total") == 0, recovery_lines(mb)

        for at, want in ((10, {"epoch": epoch, "offset": 30, "recoverable": True, "recovered": True, "count": 20}),
                         (9, {"epoch": epoch, "offset": 30, "recoverable": True, "recovered": False, "count": 0})):
            q = Sequencer(b.port, [topic], name="probe-%d" % at).connect()
            p, _ = q.subscribe(recover=True, positions={topic: (epoch, at)})
            assert p["recovery"][topic] == want, (at, p)
            got = [e[4] for e in stamped_in(q.log, 0)]
            assert got == (list(range(at + 1, 31)) if want["recovered"] else []), (at, got)
            q.close()

        feed.post(b, 1)   # o 31, live
        assert s.pump_until(lambda x: len(x.delivered) == 2, 5), offsets_seqs(s)
        s.drain(0.1)
        assert offsets_seqs(s) == [(0, 0), (31, 31)], offsets_seqs(s)
        assert s.gaps == 0 and s.gap_recovers == 0 and s.rebaselines == 0, (s.gaps, s.gap_recovers)
        mb = metrics(b)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="recovered") == 1, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_recovery_requests_total", result="not_recovered") == 2, recovery_lines(mb)
        assert delta(mb, mb0, "wsed_recovery_replayed_total") == 20, recovery_lines(mb)
        feed.close()
        s.close()


@H.limit(40)
def test_redis_recovery_forged_stamps_from_redis_are_refused():
    """Whoever can PUBLISH on Redis cannot pass a stamp off as the sequencer's: a stamp whose tp
    is not the channel's topic, or whose offset no Lua number reaches (here 2^64-1, which once
    wrapped the cache's ring and crashed the server), is refused and counted invalid; the
    instance keeps serving and its real sequence is untouched."""
    with R.RedisServer() as redis, pair(redis) as (a, b):
        s = join(b, ["x"], "victim")
        forged = ['{"tp":"x","e":"deadbeef","o":18446744073709551615,"t":"f","p":{}}',
                  '{"tp":"y","e":"deadbeef","o":3,"t":"f","p":{}}',
                  '{"tp":"x","e":"deadbeef","o":9007199254740992,"t":"f","p":{}}']
        m0 = metrics(b)
        for raw in forged:
            for _ in range(150):  # more than a ring holds
                redis.cli("PUBLISH", "wse:x", raw)
        wait_until(lambda: metrics(b), lambda m: delta(m, m0, "wsed_redis_received_total",
                                                       result="invalid") >= 450, 10,
                   lambda m: "the forged stamps counted invalid (B alive: %s)" % b.alive())
        st, _, doc = F.post_once(a.port, [{"topic": "x", "message": tick(0)}])
        assert st == 200, (st, doc)
        s.pump_until(lambda q: len(q.delivered) >= 1, 5)
        assert [(t, o) for t, o, _ in s.delivered] == [("x", 0)], s.delivered
        assert b.alive(), "wsed B died on forged stamps"
        close_all(s)
