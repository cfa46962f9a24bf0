"""wsed's Redis bridge (issue 9) against the real binary and a real redis-server: two (or more)
wsed instances joined through one Redis (publications, globs, broadcasts and per-user sends cross
instances exactly once each, in order), backends publishing with redis-cli, the exact and pattern
subscription modes, `--inbound redis` (a Redis Stream), commands routed to the instance that holds
a connection (HTTP `POST /api/command` and `@node:` channels), Redis killed and restarted under a
publisher (/readyz, buffering, the publication counters), a full buffer, a Redis that is not
there yet, URL forms (credentials with percent-escapes, /db, unix sockets) and bad ones, a
three-master Redis Cluster (`--redis-cluster`, sharded pub/sub), and edges: a glob toggled under a
stream, identical bytes published by two instances at once, names Redis's matcher could misread.

Run with tests/integration/run_tests.py -k redis (under /usr/bin/python3). Redis servers are
started by redis_harness on free ports of 127.0.0.1 and stopped by PID; tokens, the API key and
the WebSocket clients come from test_wse / test_fanout / wsed_harness. Before a stream is
checked, every subscriber is "settled": probes are published until each has received one (the
instance's Redis subscription is in place), then one end marker after which nothing but the
checked stream arrives. Every wait is bounded.
"""

import contextlib
import json
import os
import re
import select
import signal
import threading
import time

import redis_harness as R
import test_fanout as F
import test_wse as W
import wsed_harness as H

BIN = W.BIN
API_KEY = F.API_KEY
limit = H.limit
compact = F.compact
wire = F.wire
tick = F.tick
INSTANCE_RE = re.compile(r"redis:.*\binstance ([0-9a-f]{8})\b")


# ---------------------------------------------------------------------------------------------
# wsed instances
# ---------------------------------------------------------------------------------------------

def instance(redis, *extra, workers=2, check_exit=True):
    """wsed in WSE mode on `workers` shards with the API key, no server pings, bridged to `redis`
    (a RedisServer, a URL string, or None for no Redis flag), under H.supervised."""
    args = ["--mode", "wse", "--workers", str(workers), "--ping-interval", "0", "--api-key-file", F.key_file()]
    if isinstance(redis, R.RedisServer):
        args += ["--redis-url", redis.url()]
    elif isinstance(redis, str):
        args += ["--redis-url", redis]
    return H.running(BIN, *args, *extra, env=W.env(), check_exit=check_exit)


@contextlib.contextmanager
def instances(redis, n=2, extra=(), ready=True):
    """n instances on `redis`; with ready, both answer /readyz 200 before the body runs."""
    with contextlib.ExitStack() as stack:
        srvs = [stack.enter_context(instance(redis, *extra)) for _ in range(n)]
        if ready:
            wait_readyz(srvs, 200, 20, "at startup")
        yield srvs


def poll(fetch, pred, timeout, describe, step=0.05):
    """Calls fetch() every `step` s until pred(value) holds and returns that value; after
    `timeout` s an AssertionError with describe(the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fetch()
        if pred(v):
            return v
        assert time.monotonic() < deadline, describe(v)
        time.sleep(step)


def output_text(srv):
    return b"".join(srv.stdout_lines).decode("utf-8", "replace") + srv.stderr_text()


def instance_id(srv, timeout=5):
    """The 8 hex digits on the startup line `redis: ... instance <id>` (stdout or stderr)."""
    return poll(lambda: INSTANCE_RE.search(output_text(srv)), bool, timeout,
                lambda _: "no `redis: ... instance <id>` line; output: %s" % output_text(srv)[-1500:]).group(1)


def readyz(port):
    try:
        return H.http_get(port, "/readyz", timeout=3)[0]
    except OSError:
        return None


def wait_readyz(srvs, status, timeout, what=""):
    """Polls until every instance's /readyz answers `status` (bounded)."""
    poll(lambda: [readyz(s.port) for s in srvs], lambda got: all(g == status for g in got), timeout,
         lambda got: "/readyz %s: %r after %ss, waited for %d on all" % (what, got, timeout, status))


def rmetric(m, name, **labels):
    """A metric's value: the sum of the series whose labels include `labels` (over the shards for
    per-shard families); 0 when there is none."""
    v = H.metric_value(m, name, **labels)
    return 0 if v is None else v


def metrics(srv):
    return F.metrics(srv.port)


def wait_metric(srv, pred, timeout, what):
    """Polls /metrics until pred(metrics) holds; returns those metrics."""
    return poll(lambda: metrics(srv), pred, timeout,
                lambda m: "%s: not within %ss; redis metrics: %s" % (what, timeout, redis_lines(m)))


def redis_lines(m):
    return {k: v for k, v in m.items() if k.startswith("wsed_redis")}


# ---------------------------------------------------------------------------------------------
# WSE clients
# ---------------------------------------------------------------------------------------------

def client(srv, sub="alice", topics=(), rcvbuf=None):
    """A WSE connection for user `sub` past server_ready (c.cid its connection id, c.user),
    subscribed to `topics`."""
    tok = W.token(sub)
    c = H.WSClient(srv.port, path="/wse", extra=("Authorization: Bearer %s\r\n" % tok).encode(), rcvbuf=rcvbuf)
    m = c.next_message(5)
    assert m and m[0] == "text", "no server_ready for %s: %r" % (sub, m)
    doc = json.loads(m[1])
    assert doc.get("t") == "server_ready", doc
    c.cid = doc["p"]["details"]["connection_id"]
    c.user = sub
    c.srv = srv
    if topics:
        F.subscribe_ok(c, list(topics))
    return c


def next_doc(c, timeout=5, what=""):
    """The next text message of c: (raw bytes, parsed JSON)."""
    return F.next_json(c, timeout, what)


def poll_clients(clients, timeout):
    """One select over the clients' sockets; reads what came into each one's buffer."""
    live = [c for c in clients if not c.eof]
    if not live:
        return
    r, _, _ = select.select(live, [], [], max(0.0, timeout))
    for c in r:
        c.recv_some(0)


def settle(send, reach, everyone=None, timeout=20, what="", ignore=()):
    """Publishes probes with send(message) until every client of `reach` got one (the path from
    the sender to it works: subscriptions are in place), then an end marker; each client of
    `everyone` (default: reach) then reads up to that marker, which must be preceded by probes
    only. After this nothing from send's path is in flight to those clients."""
    everyone = list(reach if everyone is None else everyone)
    pending = list(reach)
    deadline = time.monotonic() + timeout
    k = 0
    while pending:
        assert time.monotonic() < deadline, "%s: %d of %d clients got no probe in %ss (%d probes sent)" % (
            what, len(pending), len(reach), timeout, k)
        send({"t": "probe", "p": {"k": k}})
        k += 1
        round_end = time.monotonic() + 0.25
        while pending and time.monotonic() < round_end:
            poll_clients(pending, 0.05)
            for c in list(pending):
                m = c.next_message(0)
                if m is None:
                    continue
                assert m[0] == "text", "%s: unexpected %r" % (what, m[:2])
                doc = json.loads(m[1])
                if doc.get("t") in ignore:
                    continue
                assert doc.get("t") == "probe", "%s: a message before any probe: %r" % (what, m[1][:200])
                pending.remove(c)
    tag = "end-%d-%d" % (os.getpid(), time.monotonic_ns())
    send({"t": "probe_end", "p": {"tag": tag}})
    for c in everyone:
        deadline = time.monotonic() + 10
        while True:
            raw, doc = next_doc(c, max(0.0, deadline - time.monotonic()), "(the end of the probes, %s)" % what)
            if doc.get("t") == "probe_end" and doc["p"]["tag"] == tag:
                break
            if doc.get("t") in ignore:
                continue
            assert doc.get("t") == "probe", "%s: a message among the probes: %r" % (what, raw[:200])
    return k


def cli_sender(redis, channel):
    """send(message) for settle(): redis-cli PUBLISH channel <message JSON>."""
    return lambda m: redis.cli("PUBLISH", channel, compact(m))


def api_sender(srv, topic=None, user=None, broadcast=False):
    """send(message) for settle(): a POST /api/publish to srv, all on one kept-alive connection
    (one shard handles them all, so they stay in order)."""
    api = F.Api(srv.port)

    def send(m):
        item = {"message": m}
        if broadcast:
            item["broadcast"] = True
        elif user is not None:
            item["user"] = user
        else:
            item["topic"] = topic
        st, _, doc = api.post(item)
        assert st == 200 and doc == {"accepted": 1}, (st, doc)
    return send


def collect(c, done, timeout, what=""):
    """Messages (parsed) of c until done(list) holds."""
    got = []
    deadline = time.monotonic() + timeout
    while not done(got):
        raw, doc = next_doc(c, max(0.0, deadline - time.monotonic()), "%s (after %d: %r)" % (
            what, len(got), [g.get("p") for g in got[-3:]]))
        got.append(doc)
    return got


def quiet(c, stamp, what=""):
    """Nothing else is queued to c: the next message is the PONG to a ping sent now."""
    c.send_text(b'{"c":"WSE","t":"ping","p":{"timestamp":%d},"v":1}' % stamp)
    raw, doc = next_doc(c, 5, "(PONG %d %s)" % (stamp, what))
    assert doc.get("t") == "PONG", "%s: unexpected message instead of the PONG: %r" % (what, raw[:200])


def close_all(clients):
    for c in clients:
        c.close()


def command(srv, body, key=API_KEY):
    """One POST /api/command to srv: (status, parsed JSON answer)."""
    st, _, doc = F.post_once(srv.port, body, key, path="/api/command")
    return st, doc


# ---------------------------------------------------------------------------------------------
# 1. two instances, 100 subscribers, 10,000 publications through A
# ---------------------------------------------------------------------------------------------

@limit(120)
def test_redis_two_instances_100_subscribers_every_seq_once_in_order():
    n_per, n_pubs, batch = 50, 10000, 500
    with R.RedisServer() as redis, instances(redis) as (a, b):
        subs_a = [client(a, "ua%d" % i, ["ticks"]) for i in range(n_per)]
        subs_b = [client(b, "ub%d" % i, ["ticks"]) for i in range(n_per)]
        subs = subs_a + subs_b
        for srv in (a, b):
            per_shard = F.open_per_shard(srv.port)
            assert sorted(per_shard) == ["0", "1"] and sum(per_shard.values()) == n_per, per_shard
        wait_readyz([a, b], 200, 15, "after subscribing")
        probes = settle(cli_sender(redis, "wse:ticks"), subs, what="ticks")
        ma0, mb0 = metrics(a), metrics(b)

        expected = [wire(tick(n)) for n in range(n_pubs)]
        want = len(F.frames_of(expected))
        drainer = H.Drainer(subs, 90)
        api = F.Api(a.port)
        t0 = time.monotonic()
        F.post_batches(api, [{"topic": "ticks", "message": tick(n)} for n in range(n_pubs)], batch)
        t_pub = time.monotonic() - t0
        complete = drainer.wait_all(want, 60)
        t_all = time.monotonic() - t0
        api.close()
        # Anything beyond the expected bytes (a duplicate, an echo delivered) shows up before a
        # backend's barrier, which comes through Redis after everything A published.
        redis.cli("PUBLISH", "wse:ticks", compact({"t": "barrier", "p": {}}))
        drainer.wait_all(want + len(F.frames_of([wire({"t": "barrier", "p": {}})])), 15)
        drainer.stop()
        print("published %d through A in %.2fs; all %d subscribers complete after %.2fs (%s); %d probes"
              % (n_pubs, t_pub, len(subs), t_all, complete, probes))
        expected_b = expected + [wire({"t": "barrier", "p": {}})]
        F.check_streams(subs_a, expected_b, "10,000 ticks to the 50 subscribers on A (local)")
        F.check_streams(subs_b, expected_b, "10,000 ticks to the 50 subscribers on B (through Redis)")

        ma = wait_metric(a, lambda m: rmetric(m, "wsed_redis_publications_total", result="published")
                         - rmetric(ma0, "wsed_redis_publications_total", result="published") == n_pubs, 10,
                         "A's wsed_redis_publications_total{result=published} grew by %d" % n_pubs)
        assert rmetric(ma, "wsed_redis_publications_total") - rmetric(ma0, "wsed_redis_publications_total") \
            == n_pubs, redis_lines(ma)
        # A's own echoes are ignored, each one; B delivered every one.
        assert rmetric(ma, "wsed_redis_received_total", result="own") - \
            rmetric(ma0, "wsed_redis_received_total", result="own") == n_pubs, redis_lines(ma)
        mb = metrics(b)
        assert rmetric(mb, "wsed_redis_received_total", result="delivered") - \
            rmetric(mb0, "wsed_redis_received_total", result="delivered") == n_pubs + 1, redis_lines(mb)
        assert rmetric(mb, "wsed_redis_publications_total") == 0, redis_lines(mb)
        for m in (ma, mb):
            assert rmetric(m, "wsed_redis_up") == 1 and rmetric(m, "wsed_redis_ready") == 1, redis_lines(m)
        close_all(subs)


# ---------------------------------------------------------------------------------------------
# 2. backends publish with redis-cli; channel names and payloads
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_redis_backend_publish_reaches_both_instances_once():
    with R.RedisServer() as redis, instances(redis) as (a, b):
        subs = [client(a, "x1", ["chat"]), client(a, "x2", ["chat", "@vip"]),
                client(b, "y1", ["chat"]), client(b, "y2", ["chat", "@vip"])]
        settle(cli_sender(redis, "wse:chat"), subs, what="chat")
        settle(cli_sender(redis, "wse:@@vip"), subs[1::2], what="@vip")
        msg = '{"t":"chat","p":{"text":"hi"}}'
        receivers = int(redis.cli("PUBLISH", "wse:chat", msg).strip())
        assert receivers >= 2, "PUBLISH wse:chat reached %d Redis subscribers (both instances?)" % receivers
        redis.cli("PUBLISH", "wse:@@vip", '{"t":"vip","p":{"n":1}}')
        # A topic beginning with @ is the channel P@@...; wse:@vip is not the topic @vip.
        redis.cli("PUBLISH", "wse:@vip", '{"t":"vip","p":{"n":2}}')
        redis.cli("PUBLISH", "wse:chat", '{"t":"chat","p":{"text":"end"}}')
        for c in subs:
            got = collect(c, lambda g: g and g[-1].get("p") == {"text": "end"}, 5, "for %s" % c.user)
            want = [{"c": "U", "t": "chat", "p": {"text": "hi"}}]
            if "2" in c.user:
                want.append({"c": "U", "t": "vip", "p": {"n": 1}})
            want.append({"c": "U", "t": "chat", "p": {"text": "end"}})
            assert got == want, "%s on %s got %r, expected %r" % (c.user, "A" if c.srv is a else "B", got, want)
            quiet(c, 7, "after the backend's publications")

        # What A publishes appears on the Redis channel verbatim: the publication JSON.
        with redis.resp() as watch:
            watch.subscribe("wse:chat", "wse:@@vip")
            st, _, doc = F.post_once(a.port, [{"topic": "chat", "message": {"t": "chat", "p": {"from": "A"}}},
                                              {"topic": "@vip", "message": {"t": "vip", "p": {"from": "A"}}}])
            assert st == 200 and doc == {"accepted": 2}, (st, doc)
            seen = [watch.next_push(5), watch.next_push(5)]
            assert None not in seen, "A's publications did not appear on Redis: %r" % seen
            seen = {ch: json.loads(p) for ch, p in seen}
            for ch, t in ((b"wse:chat", "chat"), (b"wse:@@vip", "vip")):
                assert ch in seen and seen[ch]["t"] == t and seen[ch]["p"] == {"from": "A"} and \
                    seen[ch].get("c", "U") == "U", seen
        for c in subs:
            want = [{"c": "U", "t": "chat", "p": {"from": "A"}}]
            if "2" in c.user:
                want.append({"c": "U", "t": "vip", "p": {"from": "A"}})
            got = collect(c, lambda g: len(g) == len(want), 5, "A's publications for %s" % c.user)
            assert got == want, (c.user, got)
            quiet(c, 8, "after A's publications")

        # The same bytes from a backend and from A: two publications, each delivered once
        # everywhere (the echo filter consumes one copy only).
        st, _, doc = F.post_once(a.port, {"topic": "chat", "message": {"t": "same", "p": {"k": 1}}})
        assert st == 200, (st, doc)
        redis.cli("PUBLISH", "wse:chat", '{"c":"U","t":"same","p":{"k":1}}')
        for c in subs:
            got = collect(c, lambda g: len(g) == 2, 5, "the twin publications for %s" % c.user)
            assert got == [{"c": "U", "t": "same", "p": {"k": 1}}] * 2, (c.user, got)
            quiet(c, 9, "after the twins")

        # What is not a publication (not JSON, not an object) is counted and delivered to no one.
        before = [rmetric(metrics(s), "wsed_redis_received_total", result="invalid") for s in (a, b)]
        redis.cli("PUBLISH", "wse:chat", "not json")
        redis.cli("PUBLISH", "wse:chat", "[1,2]")
        redis.cli("PUBLISH", "wse:chat", '{"t":"after","p":{}}')
        for c in subs:
            raw, doc = next_doc(c, 5, "(after the invalid ones)")
            assert doc == {"c": "U", "t": "after", "p": {}}, raw
        for srv, n0 in zip((a, b), before):
            m = metrics(srv)
            assert rmetric(m, "wsed_redis_received_total", result="invalid") - n0 == 2, redis_lines(m)
        close_all(subs)


@limit(60)
def test_redis_exact_mode_follows_local_subscribers():
    """Exact mode: the instance subscribes P<topic> with its first local subscriber and
    unsubscribes with its last; a backend PUBLISH then reaches no one."""
    with R.RedisServer() as redis, instances(redis, n=1) as (a,):
        def channels():
            return sorted(ch.decode() for ch in redis.command("PUBSUB", "CHANNELS", "wse:room*"))

        def wait_channels(want, what):
            poll(channels, lambda got: got == want, 10,
                 lambda got: "%s: Redis channels %r, expected %r" % (what, got, want))

        assert channels() == []
        c1 = client(a, "e1", ["room1"])
        c2 = client(a, "e2", ["room1", "room2"])
        wait_channels(["wse:room1", "wse:room2"], "after subscribing")
        wait_readyz([a], 200, 10, "after subscribing")
        F.subscription(c1, ["room1"], "unsubscribe")
        F.subscription(c2, ["room2"], "unsubscribe")
        wait_channels(["wse:room1"], "after room2's last subscriber left")
        c2.close()
        wait_channels([], "after room1's last subscriber closed")
        assert int(redis.cli("PUBLISH", "wse:room1", '{"t":"x","p":{}}').strip()) == 0
        c3 = client(a, "e3", ["room1"])
        wait_channels(["wse:room1"], "after a new subscriber")
        settle(cli_sender(redis, "wse:room1"), [c3], what="room1 again")
        quiet(c1, 1, "unsubscribed from room1")
        close_all([c1, c3])


@limit(60)
def test_redis_prefix_flag():
    with R.RedisServer() as redis, instances(redis, extra=("--redis-prefix", "app7:")) as (a, b):
        subs = [client(a, "p1", ["chat"]), client(b, "p2", ["chat"])]
        settle(cli_sender(redis, "app7:chat"), subs, what="app7:chat")
        assert int(redis.cli("PUBLISH", "wse:chat", '{"t":"other","p":{}}').strip()) == 0
        with redis.resp() as watch:
            watch.subscribe("app7:chat")
            F.post_once(a.port, {"topic": "chat", "message": {"t": "pfx", "p": {}}})
            push = watch.next_push(5)
            assert push is not None and push[0] == b"app7:chat" and json.loads(push[1])["t"] == "pfx", push
        for c in subs:
            raw, doc = next_doc(c, 5, "(pfx)")
            assert doc == {"c": "U", "t": "pfx", "p": {}}, raw
            quiet(c, 1)
        close_all(subs)


# ---------------------------------------------------------------------------------------------
# 3. globs across instances (exact mode: PSUBSCRIBE per glob; pattern mode: one PSUBSCRIBE P*)
# ---------------------------------------------------------------------------------------------

def glob_case(mode):
    """On each instance: X news.*, Y news.sport + news.* (+ br[a].*), Z news.sport only. Rounds
    published from A, then from B, then by a backend: each arrives once where it matches."""
    with R.RedisServer() as redis, instances(redis, extra=("--redis-subscribe", mode)) as (a, b):
        subs = {}
        for srv, tag in ((a, "A"), (b, "B")):
            subs["X" + tag] = client(srv, "x" + tag, ["news.*"])
            subs["Y" + tag] = client(srv, "y" + tag, ["news.sport", "news.*", "br[a].*"])
            subs["Z" + tag] = client(srv, "z" + tag, ["news.sport"])
        everyone = list(subs.values())
        if mode == "pattern":
            def psubscribers():   # clients with a pattern (PUBSUB NUMPAT counts unique patterns)
                text = redis.command("CLIENT", "LIST").decode()
                return [ln for ln in text.splitlines() if re.search(r"\bpsub=[1-9]", ln)]
            deadline = time.monotonic() + 10
            while len(psubscribers()) < 2 or redis.command("PUBSUB", "NUMPAT") != 1:
                assert time.monotonic() < deadline, "pattern mode: not one pattern on 2 clients: %r, NUMPAT %r" % (
                    psubscribers(), redis.command("PUBSUB", "NUMPAT"))
                time.sleep(0.05)
            assert all(re.search(r"\bpsub=1\b", ln) for ln in psubscribers()), psubscribers()
            assert redis.command("PUBSUB", "CHANNELS", "wse:news*") == [], "pattern mode SUBSCRIBEd channels"
        # news.sport reaches everyone (through the exact channel and the pattern).
        settle(cli_sender(redis, "wse:news.sport"), everyone, what="news.sport")
        settle(cli_sender(redis, "wse:news.weather"), [subs[k] for k in subs if k[0] in "XY"], what="news.weather")
        settle(cli_sender(redis, "wse:br[a].x"), [subs["YA"], subs["YB"]], what="br[a].x")

        def round_items(name):
            return [("news.sport", {"t": "news", "p": {"on": "sport", "from": name}}),
                    ("news.weather", {"t": "news", "p": {"on": "weather", "from": name}}),
                    ("br[a].x", {"t": "news", "p": {"on": "br[a].x", "from": name}}),
                    ("bra.x", {"t": "news", "p": {"on": "bra.x", "from": name}}),   # no one's glob matches
                    ("news.sport", {"t": "end", "p": {"from": name}})]

        for name in ("A", "B", "redis"):
            # One request per instance (one shard takes it: its items stay in order); the
            # backend's PUBLISHes one after the other.
            if name == "redis":
                for topic, m in round_items(name):
                    redis.cli("PUBLISH", "wse:" + topic, compact(m))
            else:
                st, _, doc = F.post_once((a if name == "A" else b).port,
                                         [{"topic": t, "message": m} for t, m in round_items(name)])
                assert st == 200 and doc == {"accepted": 5}, (st, doc)
            for key, c in subs.items():
                got = collect(c, lambda g: g and g[-1]["t"] == "end", 5, "round %s for %s" % (name, key))
                on = [g["p"]["on"] for g in got[:-1]]
                want = {"X": ["sport", "weather"], "Y": ["sport", "weather", "br[a].x"], "Z": ["sport"]}[key[0]]
                assert on == want and all(g["p"]["from"] == name for g in got), \
                    "%s mode, round from %s: %s got %r, expected %r" % (mode, name, key, got, want)
        for i, c in enumerate(everyone):
            quiet(c, i, "after the rounds")
        if mode == "exact":   # YB's news.sport came through the channel and the pattern: one delivered
            m = metrics(b)
            assert rmetric(m, "wsed_redis_received_total", result="duplicate") >= 1, redis_lines(m)
        close_all(everyone)


@limit(60)
def test_redis_glob_across_instances_once_exact_mode():
    glob_case("exact")


@limit(60)
def test_redis_glob_across_instances_once_pattern_mode():
    glob_case("pattern")


# ---------------------------------------------------------------------------------------------
# 4. broadcast and per-user channels
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_redis_broadcast_and_user_channels_reach_both_instances():
    with R.RedisServer() as redis, instances(redis) as (a, b):
        alice = [client(a, "alice"), client(b, "alice")]
        bob = [client(a, "bob"), client(a, "bob"), client(b, "bob")]
        everyone = alice + bob
        settle(cli_sender(redis, "wse:@broadcast"), everyone, what="@broadcast")
        settle(cli_sender(redis, "wse:@user:bob"), bob, what="@user:bob")
        redis.cli("PUBLISH", "wse:@broadcast", '{"t":"all","p":{"n":1}}')
        redis.cli("PUBLISH", "wse:@user:bob", '{"t":"dm","p":{"n":2}}')
        redis.cli("PUBLISH", "wse:@user:carol", '{"t":"dm","p":{"n":3}}')
        # From A's API: a broadcast and a per-user send reach B's connections through Redis.
        st, _, doc = F.post_once(a.port, [{"broadcast": True, "message": {"t": "all", "p": {"n": 4}}},
                                          {"user": "alice", "message": {"t": "dm", "p": {"n": 5}}}])
        assert st == 200 and doc == {"accepted": 2}, (st, doc)
        st, _, doc = F.post_once(b.port, {"user": "bob", "message": {"t": "dm", "p": {"n": 6}}})
        assert st == 200, (st, doc)
        st, _, doc = F.post_once(b.port, {"broadcast": True, "message": {"t": "end", "p": {}}})
        assert st == 200, (st, doc)
        for c in everyone:
            # Five paths (redis-cli, A, B): no order between them; each message once.
            want = [1, 4, 5] if c.user == "alice" else [1, 2, 4, 6]
            got = collect(c, lambda g: sum(1 for x in g if x["t"] != "end") >= len(want)
                          and any(x["t"] == "end" for x in g), 5, "for %s" % c.user)
            ns = sorted(g["p"]["n"] for g in got if g["t"] != "end")
            assert ns == want, "%s on %s got %r, expected n %r" % (c.user, "A" if c.srv is a else "B", got, want)
            assert all(g["c"] == "U" for g in got), got
        for i, c in enumerate(everyone):
            quiet(c, i)
        close_all(everyone)


# ---------------------------------------------------------------------------------------------
# 5. --inbound redis
# ---------------------------------------------------------------------------------------------

def stream_entries(redis, key="wse:inbound"):
    return [(eid.decode(), R.entry_fields(flat)) for eid, flat in redis.command("XRANGE", key, "-", "+")]


def wait_entries(redis, pred, timeout, what):
    return poll(lambda: stream_entries(redis), pred, timeout,
                lambda entries: "%s: not within %ss; stream: %r" % (what, timeout, entries[-10:]))


@limit(60)
def test_redis_inbound_stream_messages_and_events():
    import test_wse_features as WF
    with R.RedisServer() as redis, instances(redis, extra=("--inbound", "redis")) as (a, b):
        ids = {instance_id(a), instance_id(b)}
        assert len(ids) == 2, ids
        ca = client(a, 'bob "b"')
        cb = client(b, "carol")
        for c in (ca, cb):
            assert c.cid[-8:] == instance_id(c.srv), (c.cid, instance_id(c.srv))
        ca.send_text(b'{"t":"chat","p":{"text":"hi","n":[1,2]},"v":1}')
        quiet(ca, 1)                       # protocol messages do not go to the stream
        ca.sock.sendall(H.frame(H.OP_BINARY, b"M:" + WF.packb({"t": "mp", "p": {"k": 1}})))
        ca.send_text(b'{"t":"price_snapshot","p":{"px":5}}')
        cb.send_text(b'{"t":"chat","p":{"text":"from b"}}')
        ca.send_close(1000)
        cb.send_close(1000)
        for c in (ca, cb):
            deadline = time.monotonic() + 5
            while not c.eof and time.monotonic() < deadline:
                c.recv_some(0.1)
        entries = wait_entries(redis, lambda es: sum(1 for _, f in es if f.get("event") == "disconnect") >= 2, 10,
                               "both disconnect events")
        mine = {c.cid: [f for _, f in entries if f.get("connection_id") == c.cid] for c in (ca, cb)}
        assert sum(len(v) for v in mine.values()) == len(entries), "entries of other connections: %r" % entries
        ea = mine[ca.cid]
        assert [f["event"] for f in ea] == ["connect", "message", "message", "message", "disconnect"], ea
        assert all(f["user_id"] == 'bob "b"' for f in ea), ea
        msgs = ea[1:4]
        assert [(f["t"], f["c"], json.loads(f["p"])) for f in msgs] == [
            ("chat", "U", {"text": "hi", "n": [1, 2]}), ("mp", "U", {"k": 1}), ("price_snapshot", "S", {"px": 5})], msgs
        eb = mine[cb.cid]
        assert [f["event"] for f in eb] == ["connect", "message", "disconnect"], eb
        assert eb[1]["user_id"] == "carol" and json.loads(eb[1]["p"]) == {"text": "from b"}, eb
        m = metrics(a)
        assert rmetric(m, "wsed_redis_inbound_total", result="added") >= 5, redis_lines(m)
        assert rmetric(m, "wsed_redis_inbound_total", result="error") == 0, redis_lines(m)


@limit(60)
def test_redis_inbound_stream_maxlen():
    with R.RedisServer() as redis, instances(redis, n=1, extra=("--inbound", "redis",
                                                                 "--redis-stream-maxlen", "50")) as (a,):
        c = client(a, "many")
        n = 1000
        for i in range(n):
            c.send_text(b'{"t":"n","p":{"i":%d}}' % i)
        quiet(c, 1)
        m = wait_metric(a, lambda m: rmetric(m, "wsed_redis_inbound_total", result="added") >= n + 1, 10,
                        "%d entries added" % (n + 1))
        assert rmetric(m, "wsed_redis_inbound_total", result="dropped") == 0, redis_lines(m)
        xlen = redis.command("XLEN", "wse:inbound")
        # MAXLEN ~ trims whole stream nodes (100 entries by default): at most 50 + one node's worth.
        assert 50 <= xlen <= 50 + 101, "XLEN %d with --redis-stream-maxlen 50 after %d entries" % (xlen, n + 1)
        last = stream_entries(redis)[-1][1]
        assert last["event"] == "message" and json.loads(last["p"]) == {"i": n - 1}, last
        c.close()


# ---------------------------------------------------------------------------------------------
# 6. commands routed to the instance that holds the connection
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_redis_commands_route_to_the_holding_instance():
    with R.RedisServer() as redis, instances(redis) as (a, b):
        id_a, id_b = instance_id(a), instance_id(b)
        assert re.fullmatch(r"[0-9a-f]{8}", id_a) and id_a != id_b, (id_a, id_b)
        cb = client(b, "target")
        ca = client(a, "local")
        assert cb.cid.endswith(id_b) and ca.cid.endswith(id_a), (cb.cid, id_b, ca.cid, id_a)
        m0 = metrics(b)

        # send: routed from A to B.
        st, doc = command(a, {"op": "send", "connection_id": cb.cid, "message": {"t": "x", "p": {"k": 1}}})
        assert st == 202 and doc == {"result": "routed", "instance": id_b}, (st, doc)
        raw, doc = next_doc(cb, 5, "(the routed send)")
        assert doc["t"] == "x" and doc["p"] == {"k": 1}, raw
        # send on the instance itself: 200 ok.
        st, doc = command(a, {"op": "send", "connection_id": ca.cid, "message": {"t": "y", "p": {"k": 2}}})
        assert st == 200 and doc == {"result": "ok"}, (st, doc)
        raw, doc = next_doc(ca, 5, "(the local send)")
        assert doc["t"] == "y" and doc["p"] == {"k": 2}, raw

        # subscribe: B's connection receives the topic, from A's publications too.
        st, doc = command(a, {"op": "subscribe", "connection_id": cb.cid, "topics": ["cmd.topic", "other"]})
        assert st == 202 and doc["result"] == "routed", (st, doc)

        def skip_updates(c, what):
            while True:
                raw, doc = next_doc(c, 5, what)
                if doc.get("t") != "subscription_update":
                    return raw, doc

        # The subscription is made on B when the command arrives; probes from A until it works
        # (B may tell its client with a subscription_update).
        updates = ("subscription_update",)
        settle(api_sender(a, "cmd.topic"), [cb], what="cmd.topic on B", ignore=updates)
        settle(api_sender(a, "other"), [cb], what="other on B", ignore=updates)
        # unsubscribe one topic through Redis directly (the @node: channel).
        redis.cli("PUBLISH", "wse:@node:" + id_b, compact({"op": "unsubscribe", "connection_id": cb.cid,
                                                            "topics": ["cmd.topic"]}))
        poll(lambda: redis.command("PUBSUB", "NUMSUB", "wse:cmd.topic")[1], lambda n: n == 0, 10,
             lambda _: "B still subscribed to wse:cmd.topic after the unsubscribe command")
        F.post_once(a.port, {"topic": "cmd.topic", "message": {"t": "sub", "p": {"n": 2}}})
        F.post_once(a.port, {"topic": "other", "message": {"t": "other", "p": {}}})
        raw, doc = skip_updates(cb, "(other, after unsubscribing cmd.topic)")
        assert doc == {"c": "U", "t": "other", "p": {}}, raw

        # Errors: an unknown id of A -> 404; bad body 400; bad key 401.
        fake = "01900000-0000-7000-8000-0000" + id_a
        st, doc = command(a, {"op": "send", "connection_id": fake, "message": {"t": "x", "p": {}}})
        assert st == 404 and doc == {"error": "unknown connection"}, (st, doc)
        st, doc = command(a, b'{"op":"send"')
        assert st == 400, (st, doc)
        st, doc = command(a, {"op": "explode", "connection_id": cb.cid})
        assert st == 400, (st, doc)
        st, doc = command(a, {"op": "send", "connection_id": cb.cid, "message": {}}, key="wrong-key-0123456789abcdef")
        assert st == 401, (st, doc)
        # Not a command, through Redis: counted as invalid on B.
        redis.cli("PUBLISH", "wse:@node:" + id_b, "{not json")
        redis.cli("PUBLISH", "wse:@node:" + id_b, compact({"op": "fly", "connection_id": cb.cid}))
        wait_metric(b, lambda m: rmetric(m, "wsed_redis_commands_total", result="invalid")
                    - rmetric(m0, "wsed_redis_commands_total", result="invalid") == 2, 5, "B counts 2 invalid")
        # An unknown id of B arriving through Redis is counted on B.
        fake_b = "01900000-0000-7000-8000-0000" + id_b
        st, doc = command(a, {"op": "send", "connection_id": fake_b, "message": {"t": "x", "p": {}}})
        assert st == 202, (st, doc)
        wait_metric(b, lambda m: rmetric(m, "wsed_redis_commands_total", result="unknown")
                    > rmetric(m0, "wsed_redis_commands_total", result="unknown"), 5, "B counts the unknown id")

        # disconnect: B closes the connection with the given code and reason.
        st, doc = command(a, {"op": "disconnect", "connection_id": cb.cid, "code": 4000, "reason": "bye"})
        assert st == 202, (st, doc)
        deadline = time.monotonic() + 5
        while True:
            m = cb.next_message(max(0.0, deadline - time.monotonic()))
            assert m is not None and m[0] != "eof", "no close frame after the disconnect command: %r" % (m,)
            if m[0] == "close":
                assert m[1] == 4000 and m[2] == b"bye", m
                break
            assert json.loads(m[1]).get("t") == "subscription_update", m
        m = metrics(b)
        assert rmetric(m, "wsed_redis_commands_total", result="ok") - \
            rmetric(m0, "wsed_redis_commands_total", result="ok") >= 4, redis_lines(m)
        # Closed: its id is unknown to B now; asked on B itself: 404.
        deadline = time.monotonic() + 5
        while True:
            st, doc = command(b, {"op": "send", "connection_id": cb.cid, "message": {"t": "x", "p": {}}})
            if st == 404:
                break
            assert st == 200 and time.monotonic() < deadline, (st, doc)
            time.sleep(0.05)
        # A disconnect without a code closes 1000.
        st, doc = command(b, {"op": "disconnect", "connection_id": ca.cid})
        assert st == 202, (st, doc)
        m = ca.next_message(5)
        assert m is not None and m[0] == "close" and m[1] == 1000, m
        cb.close()
        ca.close()


# ---------------------------------------------------------------------------------------------
# 7. Redis killed and restarted under a publisher
# ---------------------------------------------------------------------------------------------

class Publisher(threading.Thread):
    """Publishes message(seq) (default tick(seq)) with a dense seq through POST /api/publish at a
    bounded rate (`per` items every `every` s) until stop(); self.next is the next seq to publish.
    busy_ok: a 503 (part accepted) is retried; without it every request must be taken whole."""

    def __init__(self, srv, topic, per=5, every=0.01, message=tick, busy_ok=True, name=None):
        super().__init__(daemon=True)
        self.api = F.Api(srv.port)
        self.topic, self.per, self.every, self.message, self.busy_ok = topic, per, every, message, busy_ok
        self.name = name
        self.next = 0
        self.error = None
        self._halt = threading.Event()

    def run(self):
        try:
            while not self._halt.is_set():
                items = [{"topic": self.topic, "message": self.message(n)}
                         for n in range(self.next, self.next + self.per)]
                while items:
                    st, _, doc = self.api.post(items, timeout=10)
                    if self.busy_ok:
                        assert st in (200, 503), (st, doc)
                    else:
                        assert st == 200 and doc == {"accepted": len(items)}, (st, doc)
                    n = doc["accepted"]
                    items = items[n:]
                    self.next += n
                    if items:
                        time.sleep(0.01)
                self._halt.wait(self.every)
        except Exception as e:   # reported by the test
            self.error = e

    def wait_next(self, n, timeout, what):
        deadline = time.monotonic() + timeout
        while self.next < n:
            assert self.error is None and self.is_alive(), "publisher failed: %r" % (self.error,)
            assert time.monotonic() < deadline, "publisher at %d, not %d, after %ss (%s)" % (self.next, n, timeout,
                                                                                               what)
            time.sleep(0.01)

    def stop(self):
        """Stops publishing (the connection stays open for one more post)."""
        self._halt.set()
        self.join(15)
        assert self.error is None, "publisher %sfailed: %r" % (self.name + " " if self.name else "", self.error)


def seqs_of(buf):
    """The ticks' seqs in a buffer of server frames, and whether the "end" came last."""
    frames, used = H.split_frames(bytes(buf))
    out, end = [], False
    for fin, op, payload, masked in frames:
        doc = json.loads(payload)
        assert not end, "a message after the end: %r" % payload[:100]
        if doc["t"] == "end":
            end = True
        else:
            assert doc["t"] == "tick", payload[:100]
            out.append(doc["p"]["seq"])
    return out, end


@limit(90)
def test_redis_killed_and_restarted_under_a_publisher():
    with R.RedisServer() as redis, instances(redis) as (a, b):
        subs_a = [client(a, "ka%d" % i, ["ticks"]) for i in range(10)]
        subs_b = [client(b, "kb%d" % i, ["ticks"]) for i in range(10)]
        settle(cli_sender(redis, "wse:ticks"), subs_a + subs_b, what="ticks")
        m0 = metrics(a)
        drainer = H.Drainer(subs_a + subs_b, 80)
        pub = Publisher(a, "ticks")
        pub.start()
        pub.wait_next(500, 10, "before the kill")
        redis.kill()
        at_kill = pub.next
        t_kill = time.monotonic()
        wait_readyz([a, b], 503, 10, "with Redis killed")
        for srv in (a, b):
            assert H.http_get(srv.port, "/healthz")[0] == 200
        pub.wait_next(at_kill + 300, 10, "while Redis is down")
        for srv in (a, b):
            m = metrics(srv)
            assert rmetric(m, "wsed_redis_up") == 0 and rmetric(m, "wsed_redis_ready") == 0, redis_lines(m)
        assert readyz(a.port) == 503 and readyz(b.port) == 503
        connects0 = rmetric(metrics(a), "wsed_redis_connects_total")
        redis.restart()
        # Each instance (and each of its two connections) reconnects on its own schedule. What A
        # publishes directly (Redis acknowledges it) after its publishing connection is back and
        # before B has resubscribed reaches no one on B, and no counter of A can say so. That
        # window is bounded by polling: it starts no earlier than the publisher's position one
        # poll before A was last seen with no reconnection (wsed_redis_connects_total unchanged)
        # and ends no later than its position once B was first seen ready.
        seq_lo, prev_seq, b_ready_seq = pub.next, pub.next, None
        deadline = time.monotonic() + 30
        while True:
            seq = pub.next
            if rmetric(metrics(a), "wsed_redis_connects_total") == connects0:
                seq_lo = prev_seq
            prev_seq = seq
            if b_ready_seq is None and readyz(b.port) == 200:
                b_ready_seq = pub.next
            if b_ready_seq is not None and readyz(a.port) == 200 and readyz(b.port) == 200:
                break
            assert time.monotonic() < deadline, "/readyz after Redis came back: A %r B %r" % (readyz(a.port),
                                                                                              readyz(b.port))
            time.sleep(0.01)
        ready_from = pub.next           # published after both were ready again: must reach everyone
        print("killed at seq %d, restarted after %.1fs; A reconnecting from seq >= %d, B first seen ready at %d, "
              "both ready at seq %d" % (at_kill, time.monotonic() - t_kill, seq_lo, b_ready_seq, ready_from))
        pub.wait_next(ready_from + 500, 15, "after Redis came back")
        pub.stop()
        total = pub.next
        # The end on the publisher's connection (the same shard: after every tick).
        st, _, doc = pub.api.post({"topic": "ticks", "message": {"t": "end", "p": {}}})
        assert st == 200, (st, doc)
        pub.api.close()
        end_bytes = F.frames_of([wire({"t": "end", "p": {}})])
        poll(lambda: all(bytes(c.buf).endswith(end_bytes) for c in subs_a + subs_b), bool, 20,
             lambda _: "not every subscriber got the end: %r" % [seqs_of(c.buf)[0][-3:] for c in subs_a + subs_b])
        drainer.stop()
        for c in subs_a:   # local delivery never stopped
            got, end = seqs_of(c.buf)
            assert end and got == list(range(total)), "a subscriber on A: %d ticks of %d, first gap at %r" % (
                len(got), total, next((i for i, s in enumerate(got) if s != i), None))
        missed = in_window = 0
        for c in subs_b:
            got, end = seqs_of(c.buf)
            assert end, "a subscriber on B has no end"
            assert all(x < y for x, y in zip(got, got[1:])), "a subscriber on B got duplicates or reorders: %r" % [
                (x, y) for x, y in zip(got, got[1:]) if x >= y][:5]
            after = [s for s in got if s >= ready_from]
            assert after == list(range(ready_from, total)), \
                "a subscriber on B missed publications made after both were ready (from %d): %d of %d" % (
                    ready_from, len(after), total - ready_from)
            if total - len(got) > missed:
                missed = total - len(got)
                have = set(got)
                gaps = [s for s in range(total) if s not in have]
                in_window = sum(1 for s in gaps if seq_lo <= s < b_ready_seq)
                ranges = [(x, y) for x, y in zip([gaps[0]] + [g for p, g in zip(gaps, gaps[1:]) if g != p + 1],
                                                 [p for p, g in zip(gaps, gaps[1:]) if g != p + 1] + [gaps[-1]])]
                print("B's worst subscriber missed %d: seqs %r" % (missed, ranges))
        ma = wait_metric(a, lambda m: rmetric(m, "wsed_redis_publications_total")
                         - rmetric(m0, "wsed_redis_publications_total") == total + 1, 15,
                         "every publication of A (%d) ends in one result" % (total + 1))
        handed = F.total(ma, "wsed_api_publications_total") - F.total(m0, "wsed_api_publications_total")
        assert handed == total + 1, (handed, total)

        def d(name, **lab):
            return rmetric(ma, name, **lab) - rmetric(m0, name, **lab)
        dropped = d("wsed_redis_publications_total", result="dropped_buffer_full") + \
            d("wsed_redis_publications_total", result="dropped_ring_full")
        lost = d("wsed_redis_publications_total", result="lost")
        buffered = d("wsed_redis_buffered_total")
        print("total %d, B missed at most %d (%d in the window); A: published %d dropped %d lost %d buffered %d" % (
            total + 1, missed, in_window, d("wsed_redis_publications_total", result="published"), dropped, lost,
            buffered))
        # Every publication B missed outside that window was held, dropped or lost by A.
        assert missed - in_window <= dropped + lost + buffered, (missed, in_window, dropped, lost, buffered,
                                                                 redis_lines(ma))
        assert rmetric(ma, "wsed_redis_disconnects_total") >= 1 and rmetric(ma, "wsed_redis_connects_total") >= 2, \
            redis_lines(ma)
        assert rmetric(ma, "wsed_redis_buffered") == 0, redis_lines(ma)
        close_all(subs_a + subs_b)


# ---------------------------------------------------------------------------------------------
# 8. Redis not there yet; 9. bad URLs
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_redis_not_there_at_start_then_ready():
    port = H.free_port()
    with instance("redis://127.0.0.1:%d" % port) as a:
        assert H.http_get(a.port, "/healthz")[0] == 200
        for _ in range(5):
            assert readyz(a.port) == 503, "/readyz without Redis: %r" % readyz(a.port)
            time.sleep(0.1)
        m = metrics(a)
        assert rmetric(m, "wsed_redis_up") == 0 and rmetric(m, "wsed_redis_ready") == 0, redis_lines(m)
        c = client(a, "early", ["t"])   # WebSocket serving does not wait for Redis
        # Commands: one for a connection of this instance works without Redis; one for another
        # instance cannot be routed: 503.
        st, doc = command(a, {"op": "send", "connection_id": c.cid, "message": {"t": "hello", "p": {}}})
        assert st == 200 and doc == {"result": "ok"}, (st, doc)
        raw, doc = next_doc(c, 5, "(the local command)")
        assert doc["t"] == "hello", raw
        other = "deadbeef" if not c.cid.endswith("deadbeef") else "cafebabe"
        st, doc = command(a, {"op": "send", "connection_id": "01900000-0000-7000-8000-0000" + other,
                              "message": {"t": "x", "p": {}}})
        assert st == 503, (st, doc)
        with R.RedisServer(port) as redis:
            wait_readyz([a], 200, 20, "after Redis started")
            m = metrics(a)
            assert rmetric(m, "wsed_redis_up") == 1 and rmetric(m, "wsed_redis_connects_total") >= 1, redis_lines(m)
            settle(cli_sender(redis, "wse:t"), [c], what="t")
            c.close()


@limit(60)
def test_redis_url_credentials_db_and_unix_socket():
    """redis://user:pass@host:port/db (percent-escapes decoded; the stream lands in that db),
    AUTH with a password only, a wrong password (never ready, still serving), unix:///path."""
    pw = "p@ss:w/rd%"
    esc = "p%40ss%3Aw%2Frd%25"
    with R.RedisServer(password=pw) as redis:
        redis.cli("ACL", "SETUSER", "wsed", "on", ">" + pw + "2", "~*", "&*", "+@all")
        urls = ["redis://:%s@127.0.0.1:%d/3" % (esc, redis.port), "redis://wsed:%s2@127.0.0.1:%d/3" % (esc, redis.port)]
        with instance(urls[0], "--inbound", "redis") as a, instance(urls[1], "--inbound", "redis") as b, \
                instance("redis://:wrong@127.0.0.1:%d" % redis.port) as bad:
            wait_readyz([a, b], 200, 15, "with credentials")
            ca, cb = client(a, "auth-a"), client(b, "auth-b")
            poll(lambda: redis.command("XLEN", "wse:inbound", db=3), lambda n: n >= 2, 10,
                 lambda n: "%d connect events in db 3, not 2" % n)
            assert redis.command("XLEN", "wse:inbound") == 0, "the stream went to db 0, not 3"
            users = {R.entry_fields(f)["user_id"] for _, f in redis.command("XRANGE", "wse:inbound", "-", "+", db=3)}
            assert users == {"auth-a", "auth-b"}, users
            for _ in range(5):   # a wrong password: never ready; WebSocket and liveness unaffected
                assert readyz(bad.port) == 503 and H.http_get(bad.port, "/healthz")[0] == 200
                time.sleep(0.1)
            client(bad, "still-served").close()
            assert rmetric(metrics(bad), "wsed_redis_up") == 0
            close_all([ca, cb])
    with R.RedisServer(unix_socket=True) as redis, instance("unix://" + redis.socket_path) as a:
        wait_readyz([a], 200, 15, "over a unix socket")
        c = client(a, "unix", ["u"])
        settle(cli_sender(redis, "wse:u"), [c], what="unix socket")
        c.close()


@limit(20)
def test_redis_flags_as_contracted():
    rc, out, err = H.run_cmd([BIN, "--help"], timeout=10)
    text = out + err
    missing = [f for f in ("--redis-url", "--redis-prefix", "--redis-subscribe", "--redis-buffer-bytes",
                           "--redis-stream-maxlen", "--redis-cluster") if not re.search(re.escape(f) + r"\b", text)]
    assert not missing, "wsed --help lacks %s" % missing
    assert re.search(r"--inbound\b.*\bredis\b", text), "--inbound has no redis choice"


@limit(30)
def test_redis_bad_url_exit_2():
    # The flags exist (an unknown flag also exits 2), and a good URL starts.
    rc, out, err = H.run_cmd([BIN, "--help"], timeout=10)
    assert "--redis-url" in out + err and "--redis-subscribe" in out + err, "wsed --help lacks the Redis flags"
    with instance("redis://127.0.0.1:%d" % H.free_port()) as srv:
        assert H.http_get(srv.port, "/healthz")[0] == 200
    for flag, url in (("--redis-url", "http://x"), ("--redis-url", "redis://127.0.0.1:notaport"),
                      ("--redis-url", "redis://127.0.0.1:99999"), ("--redis-url", "rediss://127.0.0.1:6379"),
                      ("--redis-subscribe", "sometimes")):
        rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--host", H.HOST, "--port", "0", flag, url],
                                 timeout=10, env=W.env())
        assert rc == 2, "%s %s: exit %r (expected 2); stdout %r stderr %r" % (flag, url, rc, out[-300:], err[-300:])
        assert err.strip() and ("redis" in err.lower()), "%s %s: stderr %r" % (flag, url, err)
        assert "ws://" not in out, "%s %s: it started listening: %r" % (flag, url, out)


# ---------------------------------------------------------------------------------------------
# 10. Redis Cluster
# ---------------------------------------------------------------------------------------------

@limit(90)
def test_redis_cluster_two_instances_topics_on_different_slots():
    with R.RedisCluster() as cluster:
        topics, owners = [], set()
        for i in range(200):   # one topic per master
            t = "ct%d" % i
            owner = cluster.node_for("wse:" + t).port
            if owner not in owners:
                owners.add(owner)
                topics.append(t)
            if len(topics) == 3:
                break
        assert len(topics) == 3, (topics, owners)
        with contextlib.ExitStack() as stack:
            srvs = [stack.enter_context(H.running(
                BIN, "--mode", "wse", "--workers", "2", "--ping-interval", "0", "--api-key-file", F.key_file(),
                "--redis-cluster", cluster.seeds(), env=W.env())) for _ in range(2)]
            a, b = srvs
            wait_readyz(srvs, 200, 20, "cluster, at startup")
            subs = {}
            for srv, tag in ((a, "A"), (b, "B")):
                subs["all" + tag] = client(srv, "all" + tag, topics)
                for t in topics:
                    subs[t + tag] = client(srv, t + tag, [t])
            wait_readyz(srvs, 200, 20, "cluster, after subscribing")
            for t in topics:
                on = [c for k, c in subs.items() if k.startswith("all") or k[:-1] == t]
                settle(api_sender(a, t), [c for c in on if c.srv is b], on, what="%s from A" % t)
                settle(api_sender(b, t), [c for c in on if c.srv is a], on, what="%s from B" % t)
            n = 50
            for srv, name in ((a, "A"), (b, "B")):
                items = [{"topic": t, "message": {"t": "m", "p": {"from": name, "topic": t, "n": i}}}
                         for i in range(n) for t in topics]
                items += [{"topic": t, "message": {"t": "end", "p": {"from": name, "topic": t}}} for t in topics]
                st, _, doc = F.post_once(srv.port, items)
                assert st == 200 and doc == {"accepted": len(items)}, (st, doc)
            for key, c in subs.items():
                mine = topics if key.startswith("all") else [key[:-1]]
                got = collect(c, lambda g: sum(1 for x in g if x["t"] == "end") == 2 * len(mine), 15,
                              "cluster, for %s" % key)
                for name in ("A", "B"):
                    for t in mine:
                        ns = [x["p"]["n"] for x in got if x["t"] == "m" and x["p"]["from"] == name
                              and x["p"]["topic"] == t]
                        assert ns == list(range(n)), "cluster: %s got %d of %s's %d on %s (in order, once): %r" % (
                            key, len(ns), name, n, t, ns[:10])
                assert all(x["p"]["topic"] in mine for x in got), key
                quiet(c, 1, "cluster, " + key)
            # Each topic's channel is held by both instances on the master that owns its slot.
            for t in topics:
                owner = cluster.node_for("wse:" + t)
                numsub = owner.command("PUBSUB", "SHARDNUMSUB", "wse:" + t)
                assert numsub[1] >= 2, "cluster: wse:%s on its master :%d: SHARDNUMSUB %r" % (t, owner.port, numsub)
            # A backend's SPUBLISH on the owning master reaches both instances once.
            for t in topics:
                owner = cluster.node_for("wse:" + t)
                owner.cli("SPUBLISH", "wse:" + t, compact({"t": "sp", "p": {"topic": t}}))
            for key, c in subs.items():
                mine = topics if key.startswith("all") else [key[:-1]]
                got = collect(c, lambda g: len(g) == len(mine), 5, "cluster SPUBLISH, for %s" % key)
                assert sorted(g["p"]["topic"] for g in got) == sorted(mine) and all(g["t"] == "sp" for g in got), got
                quiet(c, 2, "cluster SPUBLISH, " + key)
            # Broadcasts and commands cross too.
            every = list(subs.values())
            settle(api_sender(a, broadcast=True), [c for c in every if c.srv is b], every, what="cluster broadcast")
            target = subs["allB"]
            st, doc = command(a, {"op": "send", "connection_id": target.cid, "message": {"t": "cmd", "p": {"k": 1}}})
            assert st == 202 and doc.get("result") == "routed", (st, doc)
            raw, doc = next_doc(target, 5, "(a command routed through the cluster)")
            assert doc["t"] == "cmd" and doc["p"] == {"k": 1}, raw
            close_all(every)


# ---------------------------------------------------------------------------------------------
# edges: a glob toggled under a stream, identical publications from two instances, odd names
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_redis_glob_toggled_under_a_stream_each_publication_once():
    """On B, Y holds news.sport and toggles news.* (PSUBSCRIBE / PUNSUBSCRIBE on Redis) while A
    publishes a dense stream on news.sport: Y (and Z, news.sport only) get every seq once, in
    order, whatever copies Redis sends through the channel and the pattern meanwhile."""
    with R.RedisServer() as redis, instances(redis) as (a, b):
        y = client(b, "toggler", ["news.sport"])
        z = client(b, "plain", ["news.sport"])
        w = client(b, "watcher", ["other"])   # keeps the connection that toggles its subscriptions apart
        settle(cli_sender(redis, "wse:news.sport"), [y, z], what="news.sport")
        pub = Publisher(a, "news.sport", per=5, every=0.005)
        drainer_z = H.Drainer([z], 50)
        pub.start()
        toggles = 0
        deadline = time.monotonic() + 6
        replies = []
        while time.monotonic() < deadline:
            action = "subscribe" if toggles % 2 == 0 else "unsubscribe"
            y.send_text(compact({"c": "WSE", "t": "subscription_update",
                                 "p": {"action": action, "topics": ["news.*"]}, "v": 1}))
            toggles += 1
            time.sleep(0.05)
        if toggles % 2 == 0:   # the last was an unsubscribe: end with news.* held, so both subscriptions stay
            y.send_text(compact({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe",
                                                                              "topics": ["news.*"]}, "v": 1}))
            toggles += 1
        pub.stop()
        total = pub.next
        st, _, doc = pub.api.post({"topic": "news.sport", "message": {"t": "end", "p": {}}})
        assert st == 200, (st, doc)
        pub.api.close()
        got = []
        deadline = time.monotonic() + 20
        while True:
            raw, doc = next_doc(y, max(0.0, deadline - time.monotonic()), "(Y's stream, %d so far)" % len(got))
            if doc["t"] == "subscription_update":
                replies.append(doc["p"])
                continue
            if doc["t"] == "end":
                break
            got.append(doc["p"]["seq"])
        end_bytes = F.frames_of([wire({"t": "end", "p": {}})])
        assert drainer_z.wait_all(len(F.frames_of([wire(tick(n)) for n in range(total)])) + len(end_bytes), 20)
        drainer_z.stop()
        dups = [s for s, t in zip(got, got[1:]) if t <= s]
        assert not dups and got == list(range(total)), \
            "Y (news.sport, news.* toggled %d times) got %d of %d, duplicates/reorders at %r, missing %r" % (
                toggles, len(got), total, dups[:10], sorted(set(range(total)) - set(got))[:10])
        zs, end = seqs_of(z.buf)
        assert end and zs == list(range(total)), "Z got %d of %d" % (len(zs), total)
        assert len(replies) == toggles and all(r["success"] for r in replies), (len(replies), toggles)
        quiet(y, 1, "after the toggles")
        m = metrics(b)
        print("%d publications, %d toggles; B: %s" % (total, toggles, redis_lines(m).get("wsed_redis_received_total")))
        close_all([y, z, w])


@limit(60)
def test_redis_identical_publications_from_two_instances():
    """A and B publish the same bytes at the same time (n each): every subscriber on either
    instance gets each message exactly twice (the echo filter takes only its own copies)."""
    n = 2000
    with R.RedisServer() as redis, instances(redis) as (a, b):
        subs = [client(a, "ia%d" % i, ["same"]) for i in range(3)] + [client(b, "ib%d" % i, ["same"]) for i in range(3)]
        settle(api_sender(a, "same"), [c for c in subs if c.srv is b], subs, what="same from A")
        settle(api_sender(b, "same"), [c for c in subs if c.srv is a], subs, what="same from B")
        drainer = H.Drainer(subs, 50)
        errors = []

        def publish(srv):
            try:
                api = F.Api(srv.port)
                F.post_batches(api, [{"topic": "same", "message": {"t": "s", "p": {"k": k}}} for k in range(n)], 100)
                api.close()
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=publish, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        want = sum(len(H.server_frame(H.OP_TEXT, wire({"t": "s", "p": {"k": k}}))) for k in range(n)) * 2
        complete = drainer.wait_all(want, 20)
        redis.cli("PUBLISH", "wse:same", '{"t":"end","p":{}}')
        drainer.wait_all(want + len(H.server_frame(H.OP_TEXT, wire({"t": "end", "p": {}}))), 10)
        drainer.stop()
        for c in subs:
            frames, _ = H.split_frames(bytes(c.buf))
            docs = [json.loads(f[2]) for f in frames]
            assert docs and docs[-1]["t"] == "end", "no end for %s (complete %s)" % (c.user, complete)
            counts = {}
            for d in docs[:-1]:
                counts[d["p"]["k"]] = counts.get(d["p"]["k"], 0) + 1
            bad = {k: v for k, v in counts.items() if v != 2}
            missing = [k for k in range(n) if k not in counts]
            assert not bad and not missing, "%s on %s: counts != 2 for %d keys (e.g. %r), %d missing" % (
                c.user, "A" if c.srv is a else "B", len(bad), list(bad.items())[:5], len(missing))
        close_all(subs)


@limit(60)
def test_redis_odd_topic_user_and_glob_names():
    """Names Redis's matcher or the channel syntax could take apart: topics with spaces, UTF-8,
    quotes, backslashes, `[`; globs with `?`, `[`, `\\`; a user id with `:` and `*`."""
    topics = ["a b", "caf\u00e9", 'q"uo', "back\\slash", "[x", "h:t"]
    globs = {"h?t": ["hat", "h:t", "hot"], "back\\*": ["back\\slash"], "[*": ["[x"]}
    user = "we*ird:id"
    with R.RedisServer() as redis, instances(redis) as (a, b):
        exact_b = client(b, "exact", topics)
        glob_b = client(b, "globber", list(globs))
        users = [client(a, user), client(b, user)]
        def by_glob(t):
            return any(t in m for m in globs.values())
        for t in topics + [t for m in globs.values() for t in m if t not in topics]:
            on = ([exact_b] if t in topics else []) + ([glob_b] if by_glob(t) else [])
            settle(cli_sender(redis, "wse:" + t), on, what="topic %r" % t)
        settle(cli_sender(redis, "wse:@user:" + user), users, what="user %r" % user)
        pubs = topics + ["hat", "hot", "ht", "back", "x", "hoot"]
        st, _, doc = F.post_once(a.port, [{"topic": t, "message": {"t": "odd", "p": {"topic": t}}} for t in pubs]
                                 + [{"user": user, "message": {"t": "dm", "p": {}}}])
        assert st == 200, (st, doc)
        st, _, doc = F.post_once(a.port, [{"topic": "a b", "message": {"t": "end", "p": {}}},
                                          {"topic": "hat", "message": {"t": "end", "p": {}}}])
        assert st == 200, (st, doc)
        got = collect(exact_b, lambda g: g and g[-1]["t"] == "end", 5, "exact")
        assert [g["p"]["topic"] for g in got[:-1]] == topics, got
        got = collect(glob_b, lambda g: g and g[-1]["t"] == "end", 5, "globs")
        want = [t for t in pubs if by_glob(t)]
        assert [g["p"]["topic"] for g in got[:-1]] == want, (got, want)
        for c in users:
            raw, doc = next_doc(c, 5, "(dm for %r)" % user)
            assert doc == {"c": "U", "t": "dm", "p": {}}, raw
        for i, c in enumerate([exact_b, glob_b] + users):
            quiet(c, i)
        close_all([exact_b, glob_b] + users)


@limit(60)
def test_redis_buffer_full_drops_are_counted():
    """Redis not there: publications are held up to the buffer's size, the rest dropped and
    counted; local subscribers get all of them; once Redis is up the held ones are published
    and every publication has ended in exactly one result."""
    port = H.free_port()
    n = 1000
    with instance("redis://127.0.0.1:%d" % port, "--redis-buffer-bytes", "4096") as a:
        c = client(a, "local", ["held"])
        drainer = H.Drainer([c], 40)
        api = F.Api(a.port)
        msgs = [{"t": "h", "p": {"seq": i, "pad": "x" * 64}} for i in range(n)]
        F.post_batches(api, [{"topic": "held", "message": m} for m in msgs], 100)
        api.close()
        want = len(F.frames_of([wire(m) for m in msgs]))
        assert drainer.wait_all(want, 15), "the local subscriber did not get all %d" % n
        drainer.stop()
        F.check_streams([c], [wire(m) for m in msgs], "local delivery while Redis is down")
        m = wait_metric(a, lambda m: rmetric(m, "wsed_redis_publications_total", result="dropped_buffer_full")
                        + rmetric(m, "wsed_redis_buffered") == n, 10, "held + dropped == %d" % n)
        held = rmetric(m, "wsed_redis_buffered")
        size = len(wire(msgs[0]))
        assert 1 <= held <= 4096 // (size - 8) + 1, "%d held of %d-byte publications in a 4096-byte buffer" % (
            held, size)
        assert rmetric(m, "wsed_redis_publications_total", result="published") == 0, redis_lines(m)
        with R.RedisServer(port):
            wait_readyz([a], 200, 20, "after Redis started")
            m = wait_metric(a, lambda m: rmetric(m, "wsed_redis_publications_total", result="published") == held
                            and rmetric(m, "wsed_redis_buffered") == 0, 10, "the %d held ones published" % held)
            assert rmetric(m, "wsed_redis_publications_total") == n, redis_lines(m)
            assert rmetric(m, "wsed_redis_buffered_total") == held, redis_lines(m)
        c.close()


@limit(60)
def test_redis_cluster_slot_moves_and_delivery_follows():
    """Three masters, two instances with --redis-cluster, subscribers to T on both. T's slot is
    moved from its master X to another master Y (SETSLOT IMPORTING / MIGRATING / NODE, no keys)
    while both instances publish on T: each instance's SSUBSCRIBE follows the slot (SHARDNUMSUB
    wse:T is 2 on Y, 0 on X); publications made during the move may be lost but never arrive
    twice or out of order (and local subscribers get every one); afterwards every publication
    through either instance's API reaches every subscriber once, in order, and so does a
    backend's `redis-cli -c SPUBLISH` sent to X (redirected to Y). A topic S that stays on X
    keeps working throughout."""
    with R.RedisCluster() as cluster:
        topic = "mover"
        ch = "wse:" + topic
        slot = cluster.keyslot(ch)
        x = cluster.node_for(ch)
        y = next(n for n in cluster.nodes if n is not x)
        stay = next("stay%d" % i for i in range(1000)
                    if cluster.node_for("wse:stay%d" % i) is x and cluster.keyslot("wse:stay%d" % i) != slot)
        with contextlib.ExitStack() as stack:
            srvs = [stack.enter_context(H.running(
                BIN, "--mode", "wse", "--workers", "2", "--ping-interval", "0", "--api-key-file", F.key_file(),
                "--redis-cluster", cluster.seeds(), env=W.env())) for _ in range(2)]
            a, b = srvs
            wait_readyz(srvs, 200, 20, "slot move, at startup")
            subs = [client(a, "ma1", [topic]), client(a, "ma2", [topic, stay]),
                    client(b, "mb1", [topic]), client(b, "mb2", [topic, stay])]
            name_of = {id(c): ("A" if c.srv is a else "B") + c.user for c in subs}
            on_a = [c for c in subs if c.srv is a]
            on_b = [c for c in subs if c.srv is b]
            stayers = [subs[1], subs[3]]
            wait_readyz(srvs, 200, 20, "slot move, after subscribing")
            settle(api_sender(a, topic), on_b, subs, what="%s from A, before the move" % topic)
            settle(api_sender(b, topic), on_a, subs, what="%s from B, before the move" % topic)
            settle(api_sender(a, stay), stayers[1:], stayers, what="%s from A, before the move" % stay)

            def shardnumsub(node, channel):
                r = node.command("PUBSUB", "SHARDNUMSUB", channel)
                return r[1]
            assert shardnumsub(x, ch) == 2 and shardnumsub(y, ch) == 0, \
                "before the move: SHARDNUMSUB %s on X :%d = %d, on Y :%d = %d" % (
                    ch, x.port, shardnumsub(x, ch), y.port, shardnumsub(y, ch))

            # Both instances publish on T while the slot moves.
            def mover(srv, name):
                return Publisher(srv, topic, per=4, every=0.02, busy_ok=False, name=name,
                                 message=lambda n: {"t": "mv", "p": {"from": name, "n": n}})

            drainer = H.Drainer(subs, 40)
            pubs = [mover(a, "A"), mover(b, "B")]
            for p in pubs:
                p.start()
            time.sleep(0.3)
            t0 = time.monotonic()
            R.move_slot(cluster, slot, x, y)
            t_moved = time.monotonic() - t0
            # (a) each instance's SSUBSCRIBE follows the slot to Y (bounded: the engine asks for
            # the slot map after the sunsubscribe push, or at the latest after its 5 s refresh).
            poll(lambda: (shardnumsub(x, ch), shardnumsub(y, ch)), lambda xy: xy == (0, 2), 15,
                 lambda xy: "after the move of slot %d: SHARDNUMSUB %s on X :%d = %d, on Y :%d = %d (wanted 0 and 2)"
                 % (slot, ch, x.port, xy[0], y.port, xy[1]))
            t_follow = time.monotonic() - t0
            time.sleep(0.3)
            for p in pubs:
                p.stop()
                p.api.close()
            drainer.stop()
            assert all(not c.eof for c in subs), "a subscriber was disconnected during the move"
            total = {p.name: p.next for p in pubs}

            # Settle again (marks from each instance until every subscriber got one from both,
            # then an end mark from each), recording the publications made during the move.
            during = {id(c): {"A": [], "B": []} for c in subs}

            def take(c, doc):
                """Records a during-the-move publication; True if doc was one."""
                if doc.get("t") != "mv":
                    return False
                during[id(c)][doc["p"]["from"]].append(doc["p"]["n"])
                return True

            senders = {"A": api_sender(a, topic), "B": api_sender(b, topic)}
            pending = {id(c): {"A", "B"} for c in subs}
            deadline = time.monotonic() + 20
            k = 0
            while any(pending.values()):
                assert time.monotonic() < deadline, "after the move: marks not received: %r" % (
                    {name_of[i]: sorted(v) for i, v in pending.items() if v},)
                for name, send in senders.items():
                    send({"t": "mark", "p": {"from": name, "k": k}})
                k += 1
                round_end = time.monotonic() + 0.25
                while any(pending.values()) and time.monotonic() < round_end:
                    poll_clients(subs, 0.05)
                    for c in subs:
                        while True:
                            m = c.next_message(0)
                            if m is None:
                                break
                            assert m[0] == "text", "after the move, %s: unexpected %r" % (name_of[id(c)], m[:2])
                            doc = json.loads(m[1])
                            if take(c, doc):
                                continue
                            assert doc.get("t") == "mark", "after the move, %s: unexpected %r" % (
                                name_of[id(c)], m[1][:200])
                            pending[id(c)].discard(doc["p"]["from"])
            tag = "end-%d-%d" % (os.getpid(), time.monotonic_ns())
            for name, send in senders.items():
                send({"t": "mark_end", "p": {"from": name, "tag": tag}})
            for c in subs:
                ends = set()
                end_by = time.monotonic() + 10
                while len(ends) < 2:
                    raw, doc = next_doc(c, max(0.0, end_by - time.monotonic()),
                                        "(the end marks after the move, %s)" % name_of[id(c)])
                    if take(c, doc) or doc.get("t") == "mark":
                        continue
                    assert doc.get("t") == "mark_end" and doc["p"]["tag"] == tag, \
                        "after the move, %s: unexpected %r" % (name_of[id(c)], raw[:200])
                    ends.add(doc["p"]["from"])

            # During the move: nothing twice, nothing out of order; local ones all there.
            lost = {}
            for c in subs:
                for name in ("A", "B"):
                    ns = during[id(c)][name]
                    bad = [(p, q) for p, q in zip(ns, ns[1:]) if q <= p]
                    assert not bad, "during the move, %s got %s's publications twice or out of order at %r" % (
                        name_of[id(c)], name, bad[:10])
                    assert all(0 <= n < total[name] for n in ns), (name_of[id(c)], name, ns[-5:], total)
                    if name == name_of[id(c)][0]:
                        assert ns == list(range(total[name])), \
                            "during the move, local subscriber %s got %d of its instance's %d publications" % (
                                name_of[id(c)], len(ns), total[name])
                    else:
                        lost["%s<-%s" % (name_of[id(c)], name)] = total[name] - len(ns)

            # (b) after the move: through each instance's API, to everyone once, in order.
            n = 40
            for srv, name in ((a, "A"), (b, "B")):
                items = [{"topic": topic, "message": {"t": "m", "p": {"from": name, "n": i}}} for i in range(n)]
                items += [{"topic": topic, "message": {"t": "end", "p": {"from": name}}}]
                st, _, doc = F.post_once(srv.port, items)
                assert st == 200 and doc == {"accepted": len(items)}, (st, doc)
            for c in subs:
                got = collect(c, lambda g: sum(1 for d in g if d["t"] == "end") == 2, 15,
                              "after the move, for %s" % name_of[id(c)])
                assert all(d["t"] in ("m", "end") for d in got), (name_of[id(c)], got[:5])
                for name in ("A", "B"):
                    ns = [d["p"]["n"] for d in got if d["t"] == "m" and d["p"]["from"] == name]
                    assert ns == list(range(n)), "after the move: %s got %d of %s's %d (once, in order): %r" % (
                        name_of[id(c)], len(ns), name, n, ns[:10])
                quiet(c, 1, "after the move, " + name_of[id(c)])

            # (c) a backend's SPUBLISH through X (redirected by redis-cli -c to Y) reaches both.
            out = x.cli("-c", "SPUBLISH", ch, compact({"t": "sp", "p": {"k": 1}}))
            assert out.strip().splitlines()[-1:] == ["2"], "redis-cli -c -p X SPUBLISH %s: %r" % (ch, out)
            for c in subs:
                raw, doc = next_doc(c, 5, "(a backend's SPUBLISH after the move, %s)" % name_of[id(c)])
                assert doc == {"c": "U", "t": "sp", "p": {"k": 1}}, raw
                quiet(c, 2, "after the backend's SPUBLISH, " + name_of[id(c)])

            # The topic left on X is still held there by both and still crosses.
            assert shardnumsub(x, "wse:" + stay) == 2, "wse:%s on X after the move" % stay
            settle(api_sender(b, stay), stayers[:1], stayers, what="%s from B, after the move" % stay)
            for c in subs:
                quiet(c, 3, "at the end, " + name_of[id(c)])
            print("slot %d moved :%d -> :%d in %.2fs; SSUBSCRIBEs followed after %.2fs; during the move %r "
                  "published, lost per receiver %r" % (slot, x.port, y.port, t_moved, t_follow, total, lost))
            close_all(subs)


@limit(60)
def test_redis_cluster_slot_moved_source_first_is_resubscribed():
    """The old owner learns of the move first: wsed, told by it where the slot lives, asks the new
    owner, which still refuses with MOVED (it is only importing); the subscription must come back
    once the new owner takes the slot (the slot map then looks unchanged to wsed)."""
    with R.RedisCluster() as cluster:
        ch = "wse:mover"
        slot = cluster.keyslot(ch)
        x = cluster.node_for(ch)
        y = next(n for n in cluster.nodes if n is not x)
        third = next(n for n in cluster.nodes if n is not x and n is not y)
        seeds = ",".join("127.0.0.1:%d" % n.port for n in (x, y, third))  # wsed asks X first
        with H.running(BIN, "--mode", "wse", "--workers", "2", "--ping-interval", "0", "--api-key-file",
                       F.key_file(), "--redis-cluster", seeds, env=W.env()) as a:
            wait_readyz([a], 200, 20, "cluster, at startup")
            c = client(a, "mover", ["mover"])
            wait_readyz([a], 200, 20, "cluster, after subscribing")

            def numsub(n):
                return n.command("PUBSUB", "SHARDNUMSUB", ch)[1]
            poll(lambda: numsub(x), lambda n: n == 1, 10, lambda _: "wsed never subscribed %s on its owner" % ch)
            R.move_slot(cluster, slot, x, y, source_first=True, pause=1.0)
            poll(lambda: (numsub(x), numsub(y)), lambda xy: xy == (0, 1), 20,
                 lambda xy: "after the move: SHARDNUMSUB on the old owner %r, new owner %r" % xy)
            wait_readyz([a], 200, 20, "cluster, after the move")
            got = x.cli("-c", "SPUBLISH", ch, '{"t":"sp","p":{"n":1}}').strip()
            assert got == "1", "SPUBLISH after the move reached %r subscribers" % got
            msgs = collect(c, lambda g: any(m["t"] == "sp" for m in g), 10, "cluster, after the move")
            assert [m for m in msgs if m["t"] == "sp"] == [{"c": "U", "t": "sp", "p": {"n": 1}}], msgs
            close_all([c])


@limit(60)
def test_redis_one_payload_again_and_again_is_delivered_once_each():
    """One instance publishes the very same bytes 3,000 times (a typing indicator), pipelined:
    its echoes come back while later copies are still being written and fenced, and each of its
    subscribers must get exactly 3,000 (B's too); none may be taken for an echo twice."""
    n = 3000
    with R.RedisServer() as redis, instances(redis) as (a, b):
        subs = [client(a, "ra%d" % i, ["typing"]) for i in range(3)] + [client(b, "rb%d" % i, ["typing"]) for i in range(3)]
        settle(api_sender(a, "typing"), [c for c in subs if c.srv is b], subs, what="typing from A")
        drainer = H.Drainer(subs, 50)
        api = F.Api(a.port)
        F.post_batches(api, [{"topic": "typing", "message": {"t": "typing", "p": {}}}] * n, 100)
        st, _, doc = api.post({"topic": "typing", "message": {"t": "end", "p": {}}})
        assert st == 200, (st, doc)
        api.close()
        one = len(H.server_frame(H.OP_TEXT, wire({"t": "typing", "p": {}})))
        end = len(H.server_frame(H.OP_TEXT, wire({"t": "end", "p": {}})))
        drainer.wait_all(n * one + end, 20)
        drainer.stop()
        for c in subs:
            frames, _ = H.split_frames(bytes(c.buf))
            docs = [json.loads(f[2]) for f in frames]
            assert docs and docs[-1]["t"] == "end", "%s: no end after %d" % (c.user, len(docs))
            got = sum(1 for d in docs if d["t"] == "typing")
            assert got == n, "%s (on %s) got %d of %d identical publications" % (
                c.user, "A" if c.srv is a else "B", got, n)
        close_all(subs)


@limit(60)
def test_redis_silent_redis_is_detected_and_recovered():
    """A Redis that stops answering (SIGSTOP: the process is there, its sockets accept nothing
    more) is given up after --redis-timeout: /readyz 503 and a disconnect counted; local
    delivery keeps working; once it answers again (SIGCONT) the instance is ready again."""
    with R.RedisServer() as redis, instances(redis, extra=("--redis-timeout", "1s")) as (a, b):
        sa = client(a, "sa", ["quiet"])
        wait_readyz([a, b], 200, 10, "before the stop")
        d0 = rmetric(metrics(a), "wsed_redis_disconnects_total")
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            wait_readyz([a, b], 503, 10, "with Redis stopped")
            m = metrics(a)
            assert rmetric(m, "wsed_redis_disconnects_total") > d0, redis_lines(m)
            assert rmetric(m, "wsed_redis_up") == 0, redis_lines(m)
            st, _, doc = F.post_once(a.port, {"topic": "quiet", "message": {"t": "local", "p": {}}})
            assert st == 200, (st, doc)
            raw, got = next_doc(sa, 5, "local delivery with Redis stopped")
            assert got["t"] == "local", got
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        wait_readyz([a, b], 200, 20, "after Redis answers again")
        close_all([sa])


@limit(30)
def test_redis_cluster_unreachable_does_not_spin():
    """--redis-cluster seeds where nothing listens: wsed starts, /readyz 503, and its bridge
    waits on its backoff instead of spinning (a few tenths of a second of CPU in 3 s at most,
    where a busy loop takes all 3)."""
    ports = [H.free_port() for _ in range(3)]
    with H.running(BIN, "--mode", "wse", "--workers", "1", "--ping-interval", "0", "--api-key-file", F.key_file(),
                   "--redis-cluster", ",".join("127.0.0.1:%d" % p for p in ports), env=W.env()) as a:
        assert readyz(a.port) == 503
        time.sleep(0.5)

        def cpu_s():
            with open("/proc/%d/stat" % a.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        c0 = cpu_s()
        time.sleep(3)
        used = cpu_s() - c0
        assert used < 0.6, "wsed used %.2f s of CPU in 3 s with the cluster unreachable" % used
        assert readyz(a.port) == 503
