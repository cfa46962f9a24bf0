"""wsed WSE recovery (PROTOCOL.md "Recovery (WSE v2.4)"), one instance: the tp/e/o stamp on every
publication of a recoverable topic, recover-subscribe after a reconnect (replay before the reply,
exactly the missed offsets), the limits (ring size, --recovery-max-replay, epoch, --recovery-memory
LRU, --recovery-ttl), ACL and --recovery-topics (no history), several shards and publishers on one
topic (one dense sequence), a re-subscribe while publications flow, and the metrics.

The subscriber side is `Sequencer`, a client driven like WSE's EventSequencer: per topic (epoch,
last); a stamped message with a new epoch re-baselines (accepted, last = o); o <= last is dropped;
o == last + 1 is delivered; anything else is dropped and answered with a recover-subscribe for that
topic with {epoch, last}. Every delivery (topic, o, payload seq) is recorded, so that the tests
check exactly-once, in-order delivery to the "application" against the publisher's dense seq.

Run with tests/integration/run_tests.py -k recovery (under /usr/bin/python3). wsed runs with
--insecure-no-auth (the ACL test mints HS256 tokens with python3-jwt, as test_wse does) and an
--api-key-file; publications go through POST /api/publish. Only 127.0.0.1; every wait is bounded
and every server started here is stopped by PID (wsed_harness).
"""

import json
import re
import threading
import time

import test_fanout as F
import test_wse as W
import wsed_harness as H

BIN = W.BIN
limit = H.limit
compact = F.compact
EPOCH_RE = re.compile(r"^[0-9a-f]{8}$")
REPLY_KEYS = ["action", "success", "success_topics", "failed_topics", "errors", "recoverable", "recovered",
              "recovery"]
ENTRY_KEYS = ["epoch", "offset", "recoverable", "recovered", "count"]
NO_HISTORY = {"epoch": None, "offset": 0, "recoverable": False, "recovered": False, "count": 0}


def rec(*args, workers=2, auth=False, recovery=True):
    """wsed in WSE mode with the API key file, no server pings, --recovery (unless recovery is
    false), --insecure-no-auth (unless auth: then JWTs signed with test_wse's secret)."""
    extra = ["--recovery"] if recovery else []
    if auth:
        env = W.env()
    else:
        extra.append("--insecure-no-auth")
        env = W.env(WSED_JWT_SECRET="")
    return H.running(BIN, "--mode", "wse", "--workers", str(workers), "--ping-interval", "0",
                     "--api-key-file", F.key_file(), *extra, *args, env=env)


def metrics(port):
    return H.get_metrics(port)[0]


def shard_total(m, name, **labels):
    """A per-shard family's sum over the shards (or its one series when it has no shard label)."""
    return H.metric_value(m, name, **labels)


def wait_metric(port, name, pred, timeout=5.0, **labels):
    """Polls /metrics until pred(value of name) holds; returns the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        v = shard_total(metrics(port), name, **labels)
        if (v is not None and pred(v)) or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


def wait_sequenced(port, n, timeout=5.0):
    """Until wsed_recovery_sequenced_total reaches n (the publications are in the histories)."""
    v = wait_metric(port, "wsed_recovery_sequenced_total", lambda x: x >= n, timeout)
    assert v == n, "wsed_recovery_sequenced_total is %r, expected %d" % (v, n)


def tick(n, w=None):
    p = {"seq": n}
    if w is not None:
        p["w"] = w
    return {"t": "tick", "p": p}


def items(topic, seqs, w=None):
    return [{"topic": topic, "message": tick(n, w)} for n in seqs]


def publish(port, topic, seqs, w=None):
    seqs = list(seqs)
    st, _, doc = F.post_once(port, items(topic, seqs, w))
    assert st == 200 and doc == {"accepted": len(seqs)}, (st, doc)


def stamped(topic, epoch, offset, message):
    """The bytes a publication of message on topic arrives as, stamped (epoch, offset)."""
    return ('{"tp":%s,"e":"%s","o":%d,' % (json.dumps(topic, ensure_ascii=False), epoch, offset)).encode() \
        + F.wire(message)[1:]


def recover_request(topics, positions, action="subscribe"):
    """A subscription_update with recover: positions {topic: (epoch, offset)}."""
    return compact({"c": "WSE", "t": "subscription_update",
                    "p": {"action": action, "topics": list(topics), "recover": True,
                          "recovery": {t: {"epoch": e, "offset": o} for t, (e, o) in positions.items()}},
                    "v": 1})


def parse_stamp(raw):
    """(tp, e, o, doc) of a stamped publication; checks the stamp keys come first."""
    doc = json.loads(raw)
    keys = list(doc)
    assert keys[:4] == ["tp", "e", "o", "c"], "stamp keys not first: %r" % raw[:200]
    assert isinstance(doc["tp"], str) and EPOCH_RE.match(doc["e"]) and isinstance(doc["o"], int) and doc["o"] >= 0, \
        raw[:200]
    return doc["tp"], doc["e"], doc["o"], doc


def check_recovery_reply(raw, asked):
    """A subscription_update reply with recovery: the spec's key order, one entry per topic asked,
    top-level recoverable / recovered consistent with the entries. Returns p."""
    def no_duplicate_keys(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), "duplicate keys in a reply object: %s" % raw
        return dict(pairs)
    doc = json.loads(raw, object_pairs_hook=no_duplicate_keys)
    assert list(doc) == ["c", "t", "p", "v"] and doc["c"] == "WSE" and doc["t"] == "subscription_update", raw
    p = doc["p"]
    assert list(p) == REPLY_KEYS, "reply keys %r, expected %r: %s" % (list(p), REPLY_KEYS, raw)
    assert p["success"] is (not p["failed_topics"]), raw
    assert sorted(p["errors"]) == sorted(p["failed_topics"]), raw
    r = p["recovery"]
    assert isinstance(r, dict) and sorted(r) == sorted(set(asked)), \
        "recovery map has %r, the request asked %r: %s" % (sorted(r), asked, raw)
    for t, e in r.items():
        assert list(e) == ENTRY_KEYS, "entry %r keys %r: %s" % (t, list(e), raw)
        assert e["epoch"] is None or EPOCH_RE.match(e["epoch"]), (t, e)
        assert isinstance(e["offset"], int) and isinstance(e["count"], int), (t, e)
        assert isinstance(e["recoverable"], bool) and isinstance(e["recovered"], bool), (t, e)
        if e["epoch"] is None:
            assert e == NO_HISTORY, "an entry without history must be %r: %r: %r" % (NO_HISTORY, t, e)
        else:
            assert e["recoverable"] is True, (t, e)
        if not e["recovered"]:
            assert e["count"] == 0, "not recovered but count %d: %r" % (e["count"], (t, e))
    assert p["recoverable"] is any(e["recoverable"] for e in r.values()), raw
    assert p["recovered"] is (bool(r) and all(e["recovered"] for e in r.values())), raw
    return p


# ---------------------------------------------------------------------------------------------
# the EventSequencer client
# ---------------------------------------------------------------------------------------------

class Sequencer:
    """A WSE subscriber that sequences stamped publications like WSE's EventSequencer.

    pos        {topic: [epoch, last]}: the position, what a recover-subscribe sends
    delivered  [(topic, o, payload p)] in delivery order (what the application saw)
    log        every message of every connection in arrival order: ("connect", n),
               ("sent", conn, request dict, gap),
               ("pub", conn, tp, e, o, raw), ("plain", conn, raw), ("reply", conn, p, raw, info),
               ("other", conn, raw)
    replies    [(p, info)]; info: {"request": the request dict, "stamped_before": stamped frames of
               the request's topics received on that connection between the request and the reply,
               "gap": True for the sequencer's own recover-subscribes}

    The only additions to the EventSequencer rules (for bounded, diagnosable tests): while a
    gap's recover-subscribe for a topic is outstanding, further gaps of that topic are dropped
    without sending another; and when a reply says a topic with a position was not recovered, the
    loss is recorded in self.lost and the position moves to the reply's (epoch, offset) (a
    client giving up on what it missed).
    """

    def __init__(self, port, topics, token=None, name="seq"):
        self.port = port
        self.topics = list(topics)
        self.token = token
        self.name = name
        self.pos = {}
        self.delivered = []
        self.log = []
        self.replies = []
        self.lost = []
        self.dups = self.gaps = self.gap_recovers = self.rebaselines = 0
        self.pending_gap = {}
        self.outstanding = []
        self.conn = None
        self.connects = 0
        self.features = None
        self.since_request = []

    # -- connection --
    def connect(self):
        extra = ("Authorization: Bearer %s\r\n" % self.token).encode() if self.token else b""
        self.conn = H.WSClient(self.port, path="/wse", extra=extra)
        m = self.conn.next_message(5)
        assert m and m[0] == "text", "%s: no server_ready: %r" % (self.name, m)
        doc = json.loads(m[1])
        assert doc.get("t") == "server_ready", "%s: first message %r" % (self.name, m[1][:200])
        self.features = doc["p"]["details"]["features"]
        self.connects += 1
        self.outstanding = []
        self.pending_gap = {}
        self.log.append(("connect", self.connects))
        return self

    def disconnect(self, clean=True):
        """Goes away: a close 1000 (clean) or a TCP reset; whatever is still unread is lost."""
        if self.conn is None:
            return
        if clean:
            self.conn.send_close(1000)
        else:
            import socket
            import struct
            self.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()
        self.conn = None

    def reconnect(self, clean=True, recover=True, timeout=5):
        """disconnect, connect, subscribe (with recover and the positions); returns the reply."""
        self.disconnect(clean)
        self.connect()
        return self.subscribe(recover=recover, timeout=timeout)

    # -- requests --
    def send_subscribe(self, topics=None, recover=None, positions=None, gap=False):
        topics = list(self.topics if topics is None else topics)
        if positions is None:
            positions = {t: tuple(self.pos[t]) for t in topics if t in self.pos}
        if recover is None:
            recover = bool(positions)
        if recover:
            raw = recover_request(topics, positions)
        else:
            raw = compact({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": topics},
                           "v": 1})
        req = json.loads(raw)
        self.outstanding.append({"request": req, "stamped_before": [], "gap": gap, "topics": topics,
                                 "recover": recover})
        self.log.append(("sent", self.connects, req, gap))
        self.conn.send_text(raw)
        return req

    def subscribe(self, topics=None, recover=None, positions=None, timeout=5):
        """Sends a subscribe and pumps until its reply: (p, info)."""
        self.send_subscribe(topics, recover, positions)
        return self.wait_reply(timeout)

    # -- receiving --
    def pump(self, timeout):
        """Handles one message: its kind ("pub", "plain", "reply", "other"), None on timeout."""
        m = self.conn.next_message(timeout)
        if m is None:
            return None
        assert m[0] == "text", "%s: unexpected %r" % (self.name, m[:3])
        raw = m[1]
        if raw.startswith(b'{"tp":'):
            self.on_publication(raw)
            return "pub"
        if raw.startswith(b'{"c":"WSE","t":"subscription_update"'):
            self.on_reply(raw)
            return "reply"
        doc = json.loads(raw)
        if "tp" in doc or "e" in doc or "o" in doc:
            raise AssertionError("%s: stamp keys not at the start: %r" % (self.name, raw[:200]))
        if doc.get("t") in ("tick",):
            self.log.append(("plain", self.connects, raw))
            return "plain"
        self.log.append(("other", self.connects, raw))
        return "other"

    def on_publication(self, raw):
        t, e, o, doc = parse_stamp(raw)
        self.log.append(("pub", self.connects, t, e, o, raw))
        for req in self.outstanding:
            if t in req["topics"]:
                req["stamped_before"].append((t, e, o, raw))
        st = self.pos.get(t)
        if st is None or st[0] != e:
            if st is not None:
                self.rebaselines += 1
            self.pos[t] = [e, o]
            self.delivered.append((t, o, doc.get("p")))
        elif o <= st[1]:
            self.dups += 1
        elif o == st[1] + 1:
            st[1] = o
            self.delivered.append((t, o, doc.get("p")))
        else:
            self.gaps += 1
            if not self.pending_gap.get(t):
                self.pending_gap[t] = True
                self.gap_recovers += 1
                self.send_subscribe([t], recover=True, positions={t: tuple(st)}, gap=True)

    def on_reply(self, raw):
        assert self.outstanding, "%s: a subscription_update nobody asked for: %r" % (self.name, raw[:300])
        info = self.outstanding.pop(0)
        if info["recover"]:
            p = check_recovery_reply(raw, info["topics"])
            for t, ent in p["recovery"].items():
                if info["gap"]:
                    self.pending_gap[t] = False
                if not ent["recovered"] and t in self.pos and ent["epoch"] is not None:
                    self.lost.append((t, tuple(self.pos[t]), ent))
                    self.pos[t] = [ent["epoch"], ent["offset"]]
        else:
            p = json.loads(raw)["p"]
        self.log.append(("reply", self.connects, p, raw, info))
        self.replies.append((p, info))

    def wait_reply(self, timeout=5):
        n = len(self.replies)
        deadline = time.monotonic() + timeout
        while len(self.replies) == n:
            left = deadline - time.monotonic()
            assert left > 0 and self.pump(left) is not None, \
                "%s: no subscription_update reply within %ss (outstanding %r)" % (
                    self.name, timeout, [o["request"] for o in self.outstanding])
        return self.replies[n]

    def pump_until(self, pred, timeout):
        """Pumps until pred(self); False on timeout."""
        deadline = time.monotonic() + timeout
        while not pred(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.2))
        return True

    def drain(self, quiet=0.2, timeout=5):
        """Pumps until nothing came for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pump(quiet) is not None:
            pass

    def delivered_seqs(self, topic=None, w=None):
        return [p["seq"] for (t, o, p) in self.delivered if (topic is None or t == topic)
                and (w is None or p.get("w") == w)]

    def check_exactly_once(self, n, topic=None, what=""):
        """The application saw payload seqs 0..n-1, each once, in order, with nothing lost."""
        seqs = self.delivered_seqs(topic)
        if seqs != list(range(n)):
            missing = sorted(set(range(n)) - set(seqs))
            dup = len(seqs) - len(set(seqs))
            out = [i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1][:5]
            raise AssertionError("%s %s: delivered %d seqs (expected 0..%d once each): %d missing (first %r), "
                                 "%d duplicated, breaks at %r; dups dropped %d, gaps %d, gap recovers %d, lost %r"
                                 % (self.name, what, len(seqs), n - 1, len(missing), missing[:10], dup,
                                    [(seqs[i - 1], seqs[i]) for i in out], self.dups, self.gaps,
                                    self.gap_recovers, self.lost[:3]))
        assert not self.lost, "%s %s: recoveries failed: %r" % (self.name, what, self.lost[:3])

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def stamped_in(log, start, end=None):
    """The ("pub", ...) entries of log[start:end]."""
    return [e for e in log[start:end] if e[0] == "pub"]


def log_index_of_reply(s, nth_reply):
    """Index in s.log of the nth (0-based) reply."""
    k = -1
    for i, e in enumerate(s.log):
        if e[0] == "reply":
            k += 1
            if k == nth_reply:
                return i
    raise AssertionError("no reply %d" % nth_reply)


# ---------------------------------------------------------------------------------------------
# 1. on / off
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_recovery_feature_flag_on_and_off():
    """features.recovery follows --recovery; without it publications are not stamped and a recover
    request gets the plain v2 reply (no recovery keys)."""
    with rec() as srv:
        s = Sequencer(srv.port, ["a"]).connect()
        assert s.features.get("recovery") is True, s.features
        s.close()
    with rec(recovery=False) as srv:
        s = Sequencer(srv.port, ["a"]).connect()
        assert s.features.get("recovery") is False, s.features
        s.conn.send_text(recover_request(["a"], {"a": ("1f2e3d4c", 41)}))
        raw, _ = F.next_json(s.conn, 5, "(reply to a recover request without --recovery)")
        p = F.check_reply(raw, "subscribe")   # exactly the five v2 keys
        assert p["success"] and p["success_topics"] == ["a"], raw
        publish(srv.port, "a", range(3))
        for n in range(3):
            raw, _ = F.next_json(s.conn, 5, "(publication %d without --recovery)" % n)
            assert raw == F.wire(tick(n)), "without --recovery: %r, expected %r" % (raw, F.wire(tick(n)))
        m = metrics(srv.port)
        assert H.metric_value(m, "wsed_recovery_sequenced_total") in (None, 0), m.get("wsed_recovery_sequenced_total")
        s.close()


def test_recovery_flag_checks():
    """Bad --recovery-* values exit 2 before serving; --recovery needs --mode wse."""
    base = [BIN, "--mode", "wse", "--insecure-no-auth", "--host", H.HOST, "--port", "0", "--recovery"]
    env = W.env(WSED_JWT_SECRET="")
    for bad in (["--recovery-buffer", "100"], ["--recovery-buffer", "8"], ["--recovery-buffer", "0"],
                ["--recovery-buffer", "x"], ["--recovery-memory", "1000"], ["--recovery-memory", "12parsecs"],
                ["--recovery-ttl", "soon"], ["--recovery-max-replay", "0"], ["--recovery-max-replay", "-1"]):
        rc, out, err = H.run_cmd(base + bad, timeout=10, env=env)
        assert rc == 2 and not out and err.strip(), "%r: rc %r, stdout %r, stderr %r" % (bad, rc, out[:200], err[:300])
    rc, out, err = H.run_cmd([BIN, "--host", H.HOST, "--port", "0", "--recovery"], timeout=10, env=env)
    assert rc == 2 and not out, ("--recovery without --mode wse", rc, out[:200], err[:300])
    # Good values start (and stop cleanly).
    with rec("--recovery-buffer", "16", "--recovery-ttl", "2s", "--recovery-max-replay", "1",
             "--recovery-memory", "4096", "--recovery-topics", "a.*,b"):
        pass
    with rec("--recovery-buffer", "1024", "--recovery-memory", "64KiB", "--recovery-ttl", "1500ms"):
        pass


# ---------------------------------------------------------------------------------------------
# 2. the stamp
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_recovery_stamp_bytes():
    """{"t":"x","p":{"n":1}} on topic "a" arrives as {"tp":"a","e":"<8hex>","o":0,"c":"U","t":"x",
    "p":{"n":1}}, the next with o 1 and the same epoch; a "c" given is kept; topics needing JSON
    escapes are escaped in tp; a glob subscriber sees the concrete topic; offsets are per topic."""
    esc = 'q"uo\\te'
    with rec() as srv:
        a = H.WSClient(srv.port, path="/wse")
        assert json.loads(a.next_message(5)[1])["t"] == "server_ready"
        a.send_text(compact({"c": "WSE", "t": "subscription_update",
                             "p": {"action": "subscribe", "topics": ["a", esc, "g.*"]}, "v": 1}))
        raw, _ = F.next_json(a, 5, "(plain subscribe reply with --recovery)")
        p = json.loads(raw)["p"]
        assert p["success"] and p["success_topics"] == ["a", esc, "g.*"], raw
        msgs = [("a", {"t": "x", "p": {"n": 1}}), ("a", {"t": "x", "p": {"n": 2}}),
                ("a", {"c": "S", "t": "kept", "p": {}}), (esc, {"t": "x", "p": {"n": 3}}),
                ("g.one", {"t": "x", "p": {"n": 4}}), ("g.two", {"t": "x", "p": {"n": 5}}),
                ("g.one", {"t": "price_snapshot", "p": {"px": 5234.75}})]
        st, _, doc = F.post_once(srv.port, [{"topic": t, "message": m} for t, m in msgs])
        assert st == 200 and doc == {"accepted": len(msgs)}, (st, doc)
        got = []
        for t, m in msgs:
            raw, _ = F.next_json(a, 5, "(publication on %r)" % t)
            got.append(raw)
        first = got[0]
        mt = re.match(rb'^\{"tp":"a","e":"([0-9a-f]{8})","o":0,"c":"U","t":"x","p":\{"n":1\}\}$', first)
        assert mt, "first publication on a: %r" % first
        ea = mt.group(1).decode()
        assert got[1] == b'{"tp":"a","e":"%s","o":1,"c":"U","t":"x","p":{"n":2}}' % ea.encode(), got[1]
        assert got[2] == b'{"tp":"a","e":"%s","o":2,"c":"S","t":"kept","p":{}}' % ea.encode(), got[2]
        te, ee, oe, _ = parse_stamp(got[3])
        assert got[3] == b'{"tp":"q\\"uo\\\\te","e":"%s","o":0,"c":"U","t":"x","p":{"n":3}}' % ee.encode(), got[3]
        assert te == esc and oe == 0, got[3]
        t1, e1, o1, _ = parse_stamp(got[4])
        t2, e2, o2, _ = parse_stamp(got[5])
        t3, e3, o3, _ = parse_stamp(got[6])
        assert (t1, o1, t2, o2, t3, o3) == ("g.one", 0, "g.two", 0, "g.one", 1), got[4:]
        assert e3 == e1, "same topic, same epoch: %r" % got[4:]
        for (t, m), raw, e, o in zip(msgs[3:], got[3:], [ee, e1, e2, e1], [0, 0, 0, 1]):
            assert raw == stamped(t, e, o, m), "%r\nexpected %r" % (raw, stamped(t, e, o, m))
        # A second subscriber (other shard, maybe) sees the very same bytes, and the replay of them
        # is byte-identical too.
        b = Sequencer(srv.port, ["a"]).connect()
        pb, _ = b.subscribe(recover=True, positions={"a": (ea, 0)})
        assert pb["recovery"]["a"] == {"epoch": ea, "offset": 2, "recoverable": True, "recovered": True,
                                       "count": 2}, pb
        replayed = [e[5] for e in stamped_in(b.log, 0)]
        assert replayed == got[1:3], "replay %r, live %r" % (replayed, got[1:3])
        st, _, doc = F.post_once(srv.port, [{"topic": "a", "message": {"t": "x", "p": {"n": 9}}}])
        raw, _ = F.next_json(a, 5, "(o 3)")
        assert raw == stamped("a", ea, 3, {"t": "x", "p": {"n": 9}}), raw
        assert b.pump(5) == "pub" and b.log[-1][5] == raw, b.log[-1]
        m = metrics(srv.port)
        assert H.metric_value(m, "wsed_recovery_sequenced_total") == len(msgs) + 1, \
            H.metric_value(m, "wsed_recovery_sequenced_total")
        assert H.metric_value(m, "wsed_recovery_topics") == 4, H.metric_value(m, "wsed_recovery_topics")
        assert H.metric_value(m, "wsed_recovery_messages") == len(msgs) + 1, \
            H.metric_value(m, "wsed_recovery_messages")
        assert H.metric_value(m, "wsed_recovery_bytes") > 0
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# 3. disconnect, reconnect, recover
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_recovery_reconnect_gets_exactly_the_missed():
    """Subscribed, 10 publications, gone; 50 more; back with recover: exactly those 50, in order,
    before the reply (recovered, count 50, offset 59); then live ones continue at o 60: the
    application sees seq 0..79 once each."""
    with rec() as srv:
        s = Sequencer(srv.port, ["room"]).connect()
        p, _ = s.subscribe()
        assert "recovery" not in p, "a plain subscribe gets the plain reply: %r" % (p,)
        publish(srv.port, "room", range(10))
        assert s.pump_until(lambda q: len(q.delivered) == 10, 5), s.delivered
        epoch = s.pos["room"][0]
        assert s.pos["room"] == [epoch, 9], s.pos
        s.disconnect()
        publish(srv.port, "room", range(10, 60))
        wait_sequenced(srv.port, 60)
        s.connect()
        mark = len(s.log)
        p, info = s.subscribe()
        assert info["request"]["p"]["recovery"] == {"room": {"epoch": epoch, "offset": 9}}, info["request"]
        assert p["recovery"]["room"] == {"epoch": epoch, "offset": 59, "recoverable": True, "recovered": True,
                                         "count": 50}, p
        assert p["recoverable"] is True and p["recovered"] is True and p["success"] is True, p
        before = stamped_in(s.log, mark)
        assert [e[4] for e in before] == list(range(10, 60)), \
            "stamped frames before the reply have offsets %r, expected 10..59" % [e[4] for e in before]
        for e in before:
            assert e[5] == stamped("room", epoch, e[4], tick(e[4])), e[5]
        publish(srv.port, "room", range(60, 80))
        assert s.pump_until(lambda q: len(q.delivered) == 80, 5), len(s.delivered)
        s.drain(0.2)
        after = stamped_in(s.log, log_index_of_reply(s, 1) + 1)
        assert [e[4] for e in after] == list(range(60, 80)), [e[4] for e in after]
        s.check_exactly_once(80)
        assert s.dups == 0 and s.gaps == 0 and s.rebaselines == 0, (s.dups, s.gaps, s.rebaselines)
        m = metrics(srv.port)
        assert shard_total(m, "wsed_recovery_requests_total", result="recovered") == 1, \
            shard_total(m, "wsed_recovery_requests_total", result="recovered")
        assert shard_total(m, "wsed_recovery_replayed_total") == 50, shard_total(m, "wsed_recovery_replayed_total")
        # The same position again from another connection: the same 50, and nothing newer is lost.
        t = Sequencer(srv.port, ["room"]).connect()
        t.pos["room"] = [epoch, 9]
        p, _ = t.subscribe()
        assert p["recovery"]["room"] == {"epoch": epoch, "offset": 79, "recoverable": True, "recovered": True,
                                         "count": 70}, p
        assert [o for (_, o, _) in t.delivered] == list(range(10, 80)), t.delivered[:3]
        # Up to date: recovered with count 0.
        p, _ = t.subscribe()
        assert p["recovery"]["room"] == {"epoch": epoch, "offset": 79, "recoverable": True, "recovered": True,
                                         "count": 0}, p
        s.close()
        t.close()


@limit(30)
def test_recovery_gap_triggers_sequencer_recover():
    """A client that comes back with a plain subscribe (no recover) but keeps its position: the
    first live frame is a gap (o > last + 1), the sequencer drops it and sends a recover-subscribe
    {epoch, last}; the replay fills the hole before the reply and the application still sees every
    seq once, in order."""
    with rec() as srv:
        s = Sequencer(srv.port, ["hole"]).connect()
        s.subscribe()
        publish(srv.port, "hole", range(10))
        assert s.pump_until(lambda q: len(q.delivered) == 10, 5), s.delivered
        epoch = s.pos["hole"][0]
        s.disconnect()
        publish(srv.port, "hole", range(10, 40))
        wait_sequenced(srv.port, 40)
        s.connect()
        p, _ = s.subscribe(recover=False)
        assert "recovery" not in p and p["success"], p
        publish(srv.port, "hole", range(40, 45))
        assert s.pump_until(lambda q: len(q.delivered) == 45, 5), \
            "delivered %d (gaps %d, gap recovers %d, replies %r)" % (len(s.delivered), s.gaps, s.gap_recovers,
                                                                     [r[0] for r in s.replies][-2:])
        s.drain(0.2)
        assert s.gap_recovers == 1 and s.gaps >= 1, (s.gaps, s.gap_recovers)
        gp, ginfo = s.replies[-1]
        assert ginfo["gap"] and ginfo["request"]["p"]["recovery"] == {"hole": {"epoch": epoch, "offset": 9}}, ginfo
        ent = gp["recovery"]["hole"]
        assert ent["recovered"] and ent["epoch"] == epoch and ent["count"] == ent["offset"] - 9 and ent["offset"] >= 40, \
            gp
        s.check_exactly_once(45, what="after a gap")
        m = metrics(srv.port)
        assert shard_total(m, "wsed_recovery_requests_total", result="recovered") == 1
        s.close()


# ---------------------------------------------------------------------------------------------
# 4. reconnects while a publisher runs
# ---------------------------------------------------------------------------------------------

class Publisher(threading.Thread):
    """Publishes tick(seq [, w]) 0..n-1 on topic through one API connection in batches of `batch`,
    pausing `pause` s between batches."""

    def __init__(self, port, topic, n, batch=10, pause=0.002, w=None):
        super().__init__(daemon=True)
        self.port, self.topic, self.n, self.batch, self.pause, self.w = port, topic, n, batch, pause, w
        self.error = None
        self.sent = 0

    def run(self):
        try:
            api = F.Api(self.port)
            for r in range(0, self.n, self.batch):
                chunk = items(self.topic, range(r, min(self.n, r + self.batch)), self.w)
                st, _, doc = api.post(chunk)
                assert st == 200 and doc == {"accepted": len(chunk)}, (r, st, doc)
                self.sent += len(chunk)
                if self.pause:
                    time.sleep(self.pause)
            api.close()
        except BaseException as e:   # reported by the test
            self.error = e

    def finish(self, timeout=20):
        self.join(timeout)
        assert not self.is_alive(), "publisher still running after %ss (%d sent)" % (timeout, self.sent)
        assert self.error is None, "publisher failed: %r" % (self.error,)


@limit(40)
def test_recovery_reconnects_during_continuous_publishing():
    """3000 publications in batches of 10 while the subscriber goes away (close 1000 or TCP
    reset, unread frames lost) and comes back with recover 8 times: every seq once, in order."""
    n = 3000
    with rec("--recovery-buffer", "4096", "--recovery-max-replay", "4096") as srv:
        s = Sequencer(srv.port, ["stream"]).connect()
        s.subscribe()
        pub = Publisher(srv.port, "stream", n)
        pub.start()
        reconnects = []
        deadline = time.monotonic() + 25
        next_at = 250
        while len(s.delivered) < n and time.monotonic() < deadline:
            s.pump(0.2)
            if len(s.delivered) >= next_at and len(reconnects) < 8:
                next_at += 300
                clean = len(reconnects) % 2 == 0
                last = tuple(s.pos["stream"])
                s.disconnect(clean)
                time.sleep(0.01 * (len(reconnects) % 4))
                s.connect()
                mark = len(s.log)
                p, info = s.subscribe(timeout=10)
                ent = p["recovery"]["stream"]
                pre = [e[4] for e in stamped_in(s.log, mark)]
                replayed = [o for o in pre if o <= ent["offset"]]
                newer = pre[len(replayed):]
                reconnects.append((last, ent, len(replayed), clean, len(newer)))
                assert ent["recovered"] and ent["epoch"] == last[0], \
                    "reconnect %d from %r: %r" % (len(reconnects), last, ent)
                assert replayed == list(range(last[1] + 1, ent["offset"] + 1)) and ent["count"] == len(replayed), \
                    "reconnect %d from %r: reply %r but the frames before it had offsets %r" % (
                        len(reconnects), last, ent, pre[:5] + ["..."] + pre[-5:])
                # Live frames newer than the reply's offset may only follow the replay.
                assert newer == list(range(ent["offset"] + 1, ent["offset"] + 1 + len(newer))), (ent, pre[-10:])
        pub.finish()
        s.pump_until(lambda q: len(q.delivered) >= n, 5)
        s.drain(0.2)
        s.check_exactly_once(n, what="after %d reconnects" % len(reconnects))
        assert len(reconnects) == 8, "only %d reconnects (delivered %d)" % (len(reconnects), len(s.delivered))
        assert sum(r[2] for r in reconnects) > 0, "no reconnect needed a replay: %r" % reconnects
        print("reconnects (from, replayed, clean, live before the reply): %r; gaps %d, gap recovers %d, dups %d"
              % ([(r[0][1], r[2], r[3], r[4]) for r in reconnects], s.gaps, s.gap_recovers, s.dups))
        m = metrics(srv.port)
        assert shard_total(m, "wsed_recovery_requests_total", result="recovered") == 8 + s.gap_recovers, \
            shard_total(m, "wsed_recovery_requests_total", result="recovered")
        assert shard_total(m, "wsed_recovery_requests_total", result="not_recovered") == 0
        assert H.metric_value(m, "wsed_recovery_sequenced_total") == n
        s.close()


# ---------------------------------------------------------------------------------------------
# 5, 6. not recovered: backlog over max replay, too old, wrong epoch
# ---------------------------------------------------------------------------------------------

def recover_once(port, topics, positions, token=None):
    """A fresh connection sends one recover-subscribe: (p, stamped frames before the reply, the
    Sequencer, kept open)."""
    s = Sequencer(port, topics, token=token).connect()
    p, _ = s.subscribe(topics, recover=True, positions=positions)
    return p, stamped_in(s.log, 0), s


@limit(30)
def test_recovery_backlog_over_max_replay_not_recovered():
    """--recovery-buffer 64 --recovery-max-replay 20: a backlog of 30 is not recovered (count 0,
    the current epoch, offset head-1, nothing replayed); 20 is; 21 is not; the sequencer then
    accepts the loss and goes on live."""
    with rec("--recovery-buffer", "64", "--recovery-max-replay", "20") as srv:
        s = Sequencer(srv.port, ["big"]).connect()
        s.subscribe()
        publish(srv.port, "big", [0])
        assert s.pump_until(lambda q: len(q.delivered) == 1, 5)
        epoch = s.pos["big"][0]
        s.disconnect()
        publish(srv.port, "big", range(1, 31))
        wait_sequenced(srv.port, 31)
        s.connect()
        mark = len(s.log)
        p, _ = s.subscribe()
        assert p["recovery"]["big"] == {"epoch": epoch, "offset": 30, "recoverable": True, "recovered": False,
                                        "count": 0}, p
        assert p["recoverable"] is True and p["recovered"] is False and p["success"] is True, p
        assert stamped_in(s.log, mark) == [], "frames replayed although not recovered: %r" % stamped_in(s.log, mark)
        # Boundaries: backlog 20 (offsets 11..30) is recovered, 21 (10..30) is not.
        p, before, t = recover_once(srv.port, ["big"], {"big": (epoch, 10)})
        assert p["recovery"]["big"] == {"epoch": epoch, "offset": 30, "recoverable": True, "recovered": True,
                                        "count": 20}, p
        assert [e[4] for e in before] == list(range(11, 31)), [e[4] for e in before]
        t.close()
        p, before, t = recover_once(srv.port, ["big"], {"big": (epoch, 9)})
        assert p["recovery"]["big"]["recovered"] is False and p["recovery"]["big"]["count"] == 0 and before == [], \
            (p, before)
        t.close()
        # The first sequencer gave up on 1..30 (recorded) and goes on with 31.
        assert s.lost and s.pos["big"] == [epoch, 30], (s.lost, s.pos)
        publish(srv.port, "big", [31])
        assert s.pump_until(lambda q: len(q.delivered) == 2, 5), s.delivered
        assert s.delivered_seqs() == [0, 31] and s.gaps == 0, (s.delivered, s.gaps)
        m = metrics(srv.port)
        assert shard_total(m, "wsed_recovery_requests_total", result="not_recovered") == 2
        assert shard_total(m, "wsed_recovery_requests_total", result="recovered") == 1
        assert shard_total(m, "wsed_recovery_replayed_total") == 20
        s.close()


@limit(30)
def test_recovery_too_old_and_wrong_epoch():
    """--recovery-buffer 16, 40 publications (offsets 24..39 kept): from 23 recovered (16); from 22
    or 0 too old; a wrong epoch is not recovered and the reply carries the current one; several
    topics in one request each get their own answer (recovered = all of them)."""
    with rec("--recovery-buffer", "16") as srv:
        publish(srv.port, "old", range(40))
        publish(srv.port, "fresh", range(5))
        wait_sequenced(srv.port, 45)
        probe = Sequencer(srv.port, ["old"]).connect()
        p, _ = probe.subscribe(recover=True, positions={"old": ("00000000", 0)})
        epoch = p["recovery"]["old"]["epoch"]
        probe.close()
        assert epoch is not None and epoch != "00000000", "probe with epoch 00000000: %r" % p
        assert p["recovery"]["old"] == {"epoch": epoch, "offset": 39, "recoverable": True, "recovered": False,
                                        "count": 0}, p
        p, before, s = recover_once(srv.port, ["old"], {"old": (epoch, 23)})
        assert p["recovery"]["old"] == {"epoch": epoch, "offset": 39, "recoverable": True, "recovered": True,
                                        "count": 16}, p
        assert [e[4] for e in before] == list(range(24, 40)), [e[4] for e in before]
        assert [q["seq"] for (_, _, q) in s.delivered] == list(range(24, 40)), s.delivered[:3]
        s.close()
        for off in (22, 0):
            p, before, s = recover_once(srv.port, ["old"], {"old": (epoch, off)})
            assert p["recovery"]["old"] == {"epoch": epoch, "offset": 39, "recoverable": True, "recovered": False,
                                            "count": 0}, (off, p)
            assert before == [], (off, before)
            s.close()
        wrong = "%08x" % (int(epoch, 16) ^ 0x80000001)
        p, before, s = recover_once(srv.port, ["old"], {"old": (wrong, 38)})
        assert p["recovery"]["old"] == {"epoch": epoch, "offset": 39, "recoverable": True, "recovered": False,
                                        "count": 0}, p
        assert before == [] and p["recovered"] is False and p["recoverable"] is True, (p, before)
        s.close()
        # Two topics: each its own answer (WSE used only the first entry).
        p, before, s = recover_once(srv.port, ["old", "fresh"], {"old": (wrong, 38), "fresh": ("00000001", 0)})
        fe = p["recovery"]["fresh"]["epoch"]
        assert fe is not None and fe != "00000001", p
        assert p["recovery"] == {"old": {"epoch": epoch, "offset": 39, "recoverable": True, "recovered": False,
                                         "count": 0},
                                 "fresh": {"epoch": fe, "offset": 4, "recoverable": True, "recovered": False,
                                           "count": 0}}, p
        assert p["recovered"] is False and before == [], (p, before)
        s.close()
        p, before, s = recover_once(srv.port, ["old", "fresh"], {"old": (epoch, 37), "fresh": (fe, 1)})
        assert p["recovery"] == {"old": {"epoch": epoch, "offset": 39, "recoverable": True, "recovered": True,
                                         "count": 2},
                                 "fresh": {"epoch": fe, "offset": 4, "recoverable": True, "recovered": True,
                                           "count": 3}}, p
        assert p["recovered"] is True, p
        assert sorted((e[2], e[4]) for e in before) == [("fresh", 2), ("fresh", 3), ("fresh", 4), ("old", 38),
                                                        ("old", 39)], before
        s.close()
        p, before, s = recover_once(srv.port, ["old", "fresh"], {"old": (epoch, 37), "fresh": (fe, 0)})
        p2, _ = s.subscribe(["old", "fresh", "never"], recover=True,
                            positions={"old": (wrong, 39), "fresh": (fe, 4), "never": ("12345678", 3)})
        assert p2["recovery"]["never"] == NO_HISTORY and p2["recovery"]["old"]["recovered"] is False \
            and p2["recovery"]["fresh"] == {"epoch": fe, "offset": 4, "recoverable": True, "recovered": True,
                                            "count": 0}, p2
        assert p2["recovered"] is False and p2["recoverable"] is True, p2
        s.close()


# ---------------------------------------------------------------------------------------------
# 7, 8. histories dropped: memory budget, TTL
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_recovery_memory_budget_evicts_least_recently_written():
    """--recovery-memory 64KiB: publishing ~1 KiB frames on 150 other topics drops the first
    topic's history (cause memory). Recovering it then: no history; after a new publication: a
    new epoch, not recovered; a subscribed sequencer re-baselines on the new epoch."""
    pad = "x" * 1000
    with rec("--recovery-memory", "64KiB", "--recovery-buffer", "16") as srv:
        s = Sequencer(srv.port, ["ev0"]).connect()
        s.subscribe()
        st, _, doc = F.post_once(srv.port, [{"topic": "ev0", "message": {"t": "tick", "p": {"seq": 0, "pad": pad}}}])
        assert st == 200, (st, doc)
        assert s.pump_until(lambda q: len(q.delivered) == 1, 5)
        e1 = s.pos["ev0"][0]
        p, _, t = recover_once(srv.port, ["ev0"], {"ev0": (e1, 0)})
        assert p["recovery"]["ev0"]["epoch"] == e1 and p["recovery"]["ev0"]["offset"] == 0, p
        t.close()
        others = [{"topic": "other%d" % i, "message": {"t": "tick", "p": {"seq": i, "pad": pad}}} for i in range(150)]
        F.post_batches(F.Api(srv.port), others, 50)
        wait_sequenced(srv.port, 151)
        m = metrics(srv.port)
        dropped = H.metric_value(m, "wsed_recovery_dropped_topics_total", cause="memory")
        held = H.metric_value(m, "wsed_recovery_bytes")
        assert dropped and dropped > 0, "150 KiB published under a 64 KiB budget, no memory drop: %r" % dropped
        assert held is not None and held <= 64 * 1024, "wsed_recovery_bytes %r over the 64KiB budget" % held
        assert H.metric_value(m, "wsed_recovery_topics") < 151, H.metric_value(m, "wsed_recovery_topics")
        assert H.metric_value(m, "wsed_recovery_dropped_topics_total", cause="ttl") == 0
        # The latest topic is still held: recovered.
        p, before, t = recover_once(srv.port, ["other149"], {"other149": ("00000000", 0)})
        assert p["recovery"]["other149"]["epoch"] is not None and p["recovery"]["other149"]["offset"] == 0, \
            "the latest written topic should still be held: %r" % p
        t.close()
        p, _, t = recover_once(srv.port, ["ev0"], {"ev0": (e1, 0)})
        assert p["recovery"]["ev0"] == NO_HISTORY, "ev0 should have been dropped first: %r" % p
        assert p["recoverable"] is False and p["recovered"] is False, p
        t.close()
        # A new publication: a new epoch from offset 0; the subscribed sequencer re-baselines.
        st, _, doc = F.post_once(srv.port, [{"topic": "ev0", "message": {"t": "tick", "p": {"seq": 1}}}])
        assert st == 200, (st, doc)
        assert s.pump_until(lambda q: len(q.delivered) == 2, 5), s.delivered
        e2, o2 = s.pos["ev0"]
        assert e2 != e1 and o2 == 0 and s.rebaselines == 1 and s.delivered_seqs() == [0, 1], (e1, s.pos, s.delivered)
        p, before, t = recover_once(srv.port, ["ev0"], {"ev0": (e1, 0)})
        assert p["recovery"]["ev0"] == {"epoch": e2, "offset": 0, "recoverable": True, "recovered": False,
                                        "count": 0}, p
        assert before == [], before
        t.close()
        m = metrics(srv.port)
        assert shard_total(m, "wsed_recovery_requests_total", result="no_history") >= 1
        s.close()


@limit(30)
def test_recovery_ttl_drops_history():
    """--recovery-ttl 1s: 2.5 s after its last publication a topic's history is gone
    (wsed_recovery_topics 0, dropped cause ttl) and a recover gets no history; the next
    publication starts a new epoch at offset 0."""
    with rec("--recovery-ttl", "1s") as srv:
        s = Sequencer(srv.port, ["brief"]).connect()
        s.subscribe()
        publish(srv.port, "brief", range(3))
        assert s.pump_until(lambda q: len(q.delivered) == 3, 5)
        e1 = s.pos["brief"][0]
        m = metrics(srv.port)
        assert H.metric_value(m, "wsed_recovery_topics") == 1, H.metric_value(m, "wsed_recovery_topics")
        t0 = time.monotonic()
        time.sleep(2.5)
        # Without anybody touching the topic, the sweep dropped it.
        v = wait_metric(srv.port, "wsed_recovery_topics", lambda x: x == 0, 1.0)
        m = metrics(srv.port)
        assert v == 0, "wsed_recovery_topics still %r %.1fs after the last write (ttl 1s)" % (v, time.monotonic() - t0)
        assert H.metric_value(m, "wsed_recovery_dropped_topics_total", cause="ttl") == 1, \
            H.metric_value(m, "wsed_recovery_dropped_topics_total", cause="ttl")
        assert H.metric_value(m, "wsed_recovery_messages") == 0 and H.metric_value(m, "wsed_recovery_bytes") == 0, \
            (H.metric_value(m, "wsed_recovery_messages"), H.metric_value(m, "wsed_recovery_bytes"))
        p, before, t = recover_once(srv.port, ["brief"], {"brief": (e1, 1)})
        assert p["recovery"]["brief"] == NO_HISTORY and before == [], (p, before)
        t.close()
        publish(srv.port, "brief", [3])
        assert s.pump_until(lambda q: len(q.delivered) == 4, 5)
        assert s.pos["brief"][0] != e1 and s.pos["brief"][1] == 0 and s.rebaselines == 1, (e1, s.pos)
        s.close()


# ---------------------------------------------------------------------------------------------
# 9. ACL and --recovery-topics
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_recovery_acl_denied_topic_is_no_history():
    """A token denying secret.*: a recover request for secret.x (which has a history) puts it in
    failed_topics (ACL_DENIED) and answers it as no history (nothing about it leaks); the allowed
    topic in the same request is recovered."""
    with rec(auth=True) as srv:
        publish(srv.port, "secret.x", range(5))
        publish(srv.port, "open", range(5))
        wait_sequenced(srv.port, 10)
        free = Sequencer(srv.port, ["secret.x"], token=W.token("root")).connect()
        p, _ = free.subscribe(recover=True, positions={"secret.x": ("00000000", 0)})
        se = p["recovery"]["secret.x"]["epoch"]
        assert se is not None, p
        free.close()
        probe = Sequencer(srv.port, ["open"], token=W.token("root")).connect()
        p, _ = probe.subscribe(recover=True, positions={"open": ("00000000", 0)})
        oe = p["recovery"]["open"]["epoch"]
        probe.close()
        tok = W.token("mallory", wse_topics={"deny": ["secret.*"]})
        p, before, s = recover_once(srv.port, ["secret.x", "open"], {"secret.x": (se, 1), "open": (oe, 2)}, token=tok)
        assert p["success"] is False and p["success_topics"] == ["open"] and p["failed_topics"] == ["secret.x"] \
            and p["errors"] == {"secret.x": "ACL_DENIED"}, p
        assert p["recovery"]["secret.x"] == NO_HISTORY, "an ACL-denied topic must look like no history: %r" % p
        assert p["recovery"]["open"] == {"epoch": oe, "offset": 4, "recoverable": True, "recovered": True,
                                         "count": 2}, p
        assert p["recoverable"] is True and p["recovered"] is False, p
        assert [(e[2], e[4]) for e in before] == [("open", 3), ("open", 4)], \
            "only the allowed topic is replayed: %r" % [(e[2], e[4]) for e in before]
        # A glob in a recover request: subscribed, no history.
        p, _ = s.subscribe(["op*"], recover=True, positions={"op*": (oe, 0)})
        assert p["success"] and p["recovery"]["op*"] == NO_HISTORY, p
        s.drain(0.2)
        assert not [e for e in stamped_in(s.log, 0) if e[2] == "secret.x"], "secret.x delivered to a denied user"
        m = metrics(srv.port)
        assert shard_total(m, "wsed_recovery_requests_total", result="no_history") >= 2, \
            shard_total(m, "wsed_recovery_requests_total", result="no_history")
        s.close()


@limit(30)
def test_recovery_topics_glob_selects_recoverable():
    """--recovery-topics "rec.*,exact": those are stamped and recoverable; others stay plain
    (unstamped) and a recover request for them is answered no history."""
    with rec("--recovery-topics", "rec.*,exact") as srv:
        s = Sequencer(srv.port, ["rec.a", "exact", "plain", "exactly"]).connect()
        s.subscribe()
        for t in ("rec.a", "exact", "plain", "exactly"):
            publish(srv.port, t, range(2), w=t)
        s.drain(0.3)
        pubs = sorted((e[2], e[4], json.loads(e[5])["p"]["w"]) for e in s.log if e[0] == "pub")
        assert pubs == [("exact", 0, "exact"), ("exact", 1, "exact"), ("rec.a", 0, "rec.a"), ("rec.a", 1, "rec.a")], \
            "stamped: %r" % pubs
        plain = sorted(e[2] for e in s.log if e[0] == "plain")
        assert plain == sorted(F.wire(tick(n, w)) for n in range(2) for w in ("plain", "exactly")), \
            "unstamped: %r" % plain
        m = metrics(srv.port)
        assert H.metric_value(m, "wsed_recovery_sequenced_total") == 4
        assert H.metric_value(m, "wsed_recovery_topics") == 2
        ea = s.pos["rec.a"][0]
        p, before, t = recover_once(srv.port, ["rec.a", "plain", "exactly"],
                                    {"rec.a": (ea, 0), "plain": (ea, 0), "exactly": (ea, 0)})
        assert p["recovery"]["plain"] == NO_HISTORY and p["recovery"]["exactly"] == NO_HISTORY, p
        assert p["recovery"]["rec.a"] == {"epoch": ea, "offset": 1, "recoverable": True, "recovered": True,
                                          "count": 1}, p
        assert p["recovered"] is False and p["recoverable"] is True, p
        assert [(e[2], e[4]) for e in before] == [("rec.a", 1)], before
        t.close()
        s.close()


# ---------------------------------------------------------------------------------------------
# 10. two shards, two publishers, one topic
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_recovery_two_shards_two_publishers_one_dense_sequence():
    """--workers 2, subscribers on both shards, two API connections publishing 1500 each on one
    topic in parallel: every subscriber sees offsets 0..2999 with no gap or duplicate, the same
    bytes at each offset, each publisher's seqs in its order."""
    n = 1500
    with rec(workers=2) as srv:
        subs = []
        before = F.open_per_shard(srv.port)
        shards = set()
        while len(subs) < 4 or len(shards) < 2:
            assert len(subs) < 24, "24 connections all on shard(s) %r" % shards
            s = Sequencer(srv.port, ["one"], name="sub%d" % len(subs)).connect()
            sh, before = F.shard_of_new_connection(srv.port, before)
            shards.add(sh)
            s.subscribe()
            subs.append(s)
        pubs = [Publisher(srv.port, "one", n, batch=10, pause=0.001, w=w) for w in ("A", "B")]
        for p in pubs:
            p.start()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and any(len(s.delivered) < 2 * n for s in subs):
            for s in subs:
                for _ in range(500):
                    if s.pump(0.002) is None:
                        break
        for p in pubs:
            p.finish()
        for s in subs:
            s.pump_until(lambda q: len(q.delivered) >= 2 * n, 5)
            s.drain(0.1)
        ref = None
        for s in subs:
            offs = [e[4] for e in stamped_in(s.log, 0)]
            assert offs == list(range(2 * n)), "%s saw %d stamped frames, offsets not 0..%d: first breaks %r" % (
                s.name, len(offs), 2 * n - 1,
                [(offs[i - 1], offs[i]) for i in range(1, len(offs)) if offs[i] != offs[i - 1] + 1][:5])
            epochs = {e[3] for e in stamped_in(s.log, 0)}
            assert len(epochs) == 1, epochs
            for w in ("A", "B"):
                assert s.delivered_seqs(w=w) == list(range(n)), (s.name, w, s.delivered_seqs(w=w)[:10])
            assert s.gaps == 0 and s.dups == 0 and s.gap_recovers == 0, (s.name, s.gaps, s.dups)
            frames = [e[5] for e in stamped_in(s.log, 0)]
            if ref is None:
                ref = frames
            else:
                assert frames == ref, "%s and %s differ at an offset" % (subs[0].name, s.name)
        m = metrics(srv.port)
        assert H.metric_value(m, "wsed_recovery_sequenced_total") == 2 * n
        for s in subs:
            s.close()


# ---------------------------------------------------------------------------------------------
# 11. re-subscribe with recover while subscribed
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_recovery_resubscribe_while_flowing_no_duplicates_after_reply():
    """Already subscribed, publications flowing, the client re-subscribes with recover from a
    position a few behind: the replayed frames (byte-identical to the live ones) come before the
    reply; after the reply every frame of the topic has o > the reply's offset, dense; the
    application sees every seq once."""
    n = 2000
    with rec("--recovery-buffer", "1024") as srv:
        s = Sequencer(srv.port, ["flow"]).connect()
        s.subscribe()
        pub = Publisher(srv.port, "flow", n, batch=5, pause=0.002)
        pub.start()
        checks = []
        deadline = time.monotonic() + 20
        next_at = 200
        while len(s.delivered) < n and time.monotonic() < deadline:
            s.pump(0.2)
            if len(s.delivered) >= next_at and len(checks) < 5 and pub.is_alive():
                next_at += 300
                e, last = s.pos["flow"]
                back = min(last, 3 + 7 * len(checks))
                mark = len(s.log)
                nrep = len(s.replies)
                s.send_subscribe(["flow"], recover=True, positions={"flow": (e, last - back)})
                p, info = s.wait_reply(10)
                assert p["success"] and p["success_topics"] == ["flow"], p
                ent = p["recovery"]["flow"]
                assert ent["recovered"] and ent["epoch"] == e and ent["offset"] >= last, (last, back, ent)
                assert ent["count"] == ent["offset"] - (last - back), ent
                bef = stamped_in(s.log, mark, log_index_of_reply(s, nrep))
                offs = [x[4] for x in bef]
                # The replay: the count frames last-back+1 .. offset, in order, somewhere before the
                # reply, after the live frames already on the wire.
                want = list(range(last - back + 1, ent["offset"] + 1))
                k = max(i for i, o in enumerate(offs) if o <= ent["offset"]) if offs else -1
                assert offs[k + 1 - len(want):k + 1] == want, \
                    "between the request and the reply offsets %r; expected the replay %r" % (offs, want)
                assert all(o > ent["offset"] for o in offs[k + 1:]), offs
                live = {x[4]: x[5] for x in stamped_in(s.log, 0, mark)}
                live.update({x[4]: x[5] for x in bef[:k + 1 - len(want)]})
                for x in bef[k + 1 - len(want):k + 1]:
                    if x[4] in live:
                        assert live[x[4]] == x[5], "replay of o %d %r differs from the live %r" % (x[4], x[5],
                                                                                                  live[x[4]])
                checks.append((last - back, ent["offset"], ent["count"], len(offs)))
        pub.finish()
        s.pump_until(lambda q: len(q.delivered) >= n, 5)
        s.drain(0.2)
        assert len(checks) >= 3, "only %d re-subscribes while publishing" % len(checks)
        # After each recover reply, up to the next request: every stamped frame has o > that
        # reply's offset, dense from offset + 1.
        for i, e in enumerate(s.log):
            if e[0] != "reply" or not e[4]["recover"]:
                continue
            off = e[2]["recovery"]["flow"]["offset"]
            end = next((j for j in range(i + 1, len(s.log)) if s.log[j][0] == "sent"), len(s.log))
            after = [x[4] for x in stamped_in(s.log, i + 1, end)]
            assert after == list(range(off + 1, off + 1 + len(after))), \
                "after the reply with offset %d: offsets %r" % (off, after[:20])
        s.check_exactly_once(n, what="with re-subscribes %r" % checks)
        print("re-subscribes (from, reply offset, count, frames before reply): %r; dups dropped %d" % (checks, s.dups))
        m = metrics(srv.port)
        assert F.total(m, "wsed_subscriptions") == 1, "re-subscribing doubled the subscription"
        s.close()


@H.limit(30)
def test_recovery_publication_with_stamp_keys_refused():
    """A publication carrying its own top-level tp / e / o (or an escaped key that could spell
    one) on a recoverable topic is refused (400 from the API, INVALID_MESSAGE for a client):
    clients would read its keys instead of the stamp's (a forged position). On a topic outside
    --recovery-topics the same message goes out unchanged."""
    with rec("--recovery-topics", "r.*") as srv:
        for bad in ({"tp": "r.a", "t": "x"}, {"t": "x", "o": 99999}, {"e": "00000000"},
                    {"\\u006f": 1, "t": "x"}):
            st, _, doc = F.post_once(srv.port, [{"topic": "r.a", "message": bad}])
            assert st == 400, (bad, st, doc)
        st, _, doc = F.post_once(srv.port, [{"topic": "plain", "message": {"t": "x", "o": 1}}])
        assert st == 200, (st, doc)
        st, _, doc = F.post_once(srv.port, [{"topic": "r.a", "message": {"t": "x", "p": {"o": 1}}}])
        assert st == 200, (st, doc)  # nested keys are the publisher's own
