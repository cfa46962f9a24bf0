"""wsed topics and fan-out (issue 8) against the real binary: WSE subscriptions (exact and glob, the
reply shape, limits, ACL at subscribe and per delivered topic, `?topics=` at connect), client
publish, per-user and broadcast sends across both shards, the HTTP publish API (auth, errors,
keep-alive, pipelining, 503 on a full inbox), slow consumers (4509 / drop) and --admin-listen.

Run with tests/integration/run_tests.py -k fanout (under /usr/bin/python3). Tokens are minted with
Debian's python3-jwt; the JWT secret reaches wsed through WSED_JWT_SECRET, the API key through a
temporary --api-key-file. Subscribers are raw-socket clients drained in bulk by one select thread
(H.WSClient / H.Drainer) so that 100 of them keep up with the server; one test goes through
python3-websockets. Streams are checked byte for byte against the frames the spec says must arrive.
Only 127.0.0.1; every wait is bounded and every server started here is stopped (by PID).
"""

import asyncio
import atexit
import json
import os
import shutil
import tempfile
import time

import jwt

import test_wse as W
import wsed_harness as H
from wsed_harness import OP_TEXT

BIN = W.BIN
SECRET = W.SECRET
API_KEY = "fanout-api-key-0123456789abcdef"
limit = H.limit

_tmpdir = None


def tmpdir():
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.mkdtemp(prefix="wsed-fanout-")
        atexit.register(shutil.rmtree, _tmpdir, True)
    return _tmpdir


def key_file(content=API_KEY + "\n", name="api.key"):
    """A key file (the trailing newline is dropped by wsed)."""
    p = os.path.join(tmpdir(), name)
    with open(p, "w") as f:
        f.write(content)
    return p


def fan(*args, api=True, workers=2):
    """wsed in WSE mode on 2 shards, no server pings (they would interleave with the streams
    checked byte for byte), the API key file unless api is false."""
    extra = ["--api-key-file", key_file()] if api else []
    return H.running(BIN, "--mode", "wse", "--workers", str(workers), "--ping-interval", "0", *extra, *args,
                     env=W.env())


def compact(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# WebSocket side
# ---------------------------------------------------------------------------------------------

def ws_client(port, sub="alice", acl=None, path="/wse", rcvbuf=None, tok=None):
    """A WSE connection for user sub (token with wse_topics=acl when given) past server_ready."""
    if tok is None:
        tok = W.token(sub, **({"wse_topics": acl} if acl is not None else {}))
    c = H.WSClient(port, path=path, extra=("Authorization: Bearer %s\r\n" % tok).encode(), rcvbuf=rcvbuf)
    m = c.next_message(5)
    assert m and m[0] == "text" and json.loads(m[1]).get("t") == "server_ready", \
        "no server_ready for %s: %r" % (sub, m)
    return c


def next_json(c, timeout=5, what=""):
    m = c.next_message(timeout)
    assert m is not None, "no message %s within %ss" % (what, timeout)
    assert m[0] == "text", "expected a text message %s, got %r" % (what, m[:2])
    return m[1], json.loads(m[1])


def check_reply(raw, action):
    """A subscription_update reply: exact key order of the spec; returns p."""
    def no_duplicate_keys(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), "duplicate keys in a reply object: %s" % raw
        return dict(pairs)
    doc = json.loads(raw, object_pairs_hook=no_duplicate_keys)
    assert list(doc) == ["c", "t", "p", "v"], raw
    assert doc["c"] == "WSE" and doc["t"] == "subscription_update" and doc["v"] == 1, raw
    p = doc["p"]
    assert list(p) == ["action", "success", "success_topics", "failed_topics", "errors"], raw
    assert p["action"] == action, raw
    assert p["success"] is (not p["failed_topics"]), "success must be true exactly when nothing failed: %s" % raw
    assert sorted(p["errors"]) == sorted(p["failed_topics"]), "one reason per failed topic: %s" % raw
    return p


def subscription(c, topics, action="subscribe", timeout=5):
    """Send a subscription_update, return the reply's p."""
    c.send_text(compact({"c": "WSE", "t": "subscription_update", "p": {"action": action, "topics": topics},
                         "v": 1}))
    raw, _ = next_json(c, timeout, "(reply to %s %r)" % (action, topics))
    return check_reply(raw, action)


def subscribe_ok(c, topics):
    p = subscription(c, topics)
    assert p["success"] and p["success_topics"] == topics and p["failed_topics"] == [] and p["errors"] == {}, p
    return p


def expect_error(c, code, what=""):
    raw, _ = next_json(c, 5, what)
    return W.check_error(raw, code)


def ping_pong(c, stamp):
    """The connection is alive and nothing is queued before the PONG."""
    c.send_text(b'{"c":"WSE","t":"ping","p":{"timestamp":%d},"v":1}' % stamp)
    raw, doc = next_json(c, 5, "(PONG %d)" % stamp)
    assert raw.startswith(b'{"c":"WSE","t":"PONG"') and doc["p"]["client_timestamp"] == stamp, raw
    return doc


def category(t):
    if "_snapshot" in t or t.startswith("snapshot_"):
        return "S"
    if t in ("server_ready", "server_hello", "client_hello_ack", "connection_state_change", "subscription_update",
             "snapshot_complete", "error", "pong", "PONG"):
        return "WSE"
    return "U"


def wire(message):
    """The bytes a publication of `message` (a dict with "t") arrives as."""
    s = compact(message)
    if "c" not in message:
        s = '{"c":"%s",%s' % (category(message.get("t", "")), s[1:])
    return s.encode("utf-8")


def until_barrier(c, barrier, timeout=5, what=""):
    """The payloads received before the message whose bytes are `barrier` (which must come)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        m = c.next_message(max(0.0, deadline - time.monotonic()))
        assert m is not None and m[0] != "eof", "barrier %r never came %s; got %r" % (barrier, what, got[-5:])
        assert m[0] == "text", "unexpected %r %s" % (m[:2], what)
        if m[1] == barrier:
            return got
        got.append(m[1])


def shard_of_new_connection(port, before):
    """Which shard's wsed_connections_open grew since `before` ({shard: n}); returns (shard, now)."""
    now = open_per_shard(port)
    grown = [s for s in now if now[s] > before.get(s, 0)]
    assert len(grown) == 1, "cannot tell the new connection's shard: %r -> %r" % (before, now)
    return grown[0], now


def open_per_shard(port):
    m, _ = H.get_metrics(port)
    return {lab["shard"]: v for lab, v in m.get("wsed_connections_open", [])}


# ---------------------------------------------------------------------------------------------
# HTTP side
# ---------------------------------------------------------------------------------------------

def publish_request(items, key=API_KEY, headers=(), path="/api/publish"):
    body = items if isinstance(items, (bytes, str)) else compact(items)
    hdrs = ([("Authorization", "Bearer " + key)] if key is not None else []) + list(headers)
    return H.http_request_bytes("POST", path, body, hdrs)


class Api:
    """One keep-alive connection to POST /api/publish."""

    def __init__(self, port, key=API_KEY):
        self.conn = H.HttpConn(port, timeout=30)
        self.key = key

    def post(self, items, timeout=30):
        req = publish_request(items, self.key)
        self.conn.send(req)
        r = self.conn.read_response(timeout)
        assert r is not None, "no answer to a POST /api/publish of %d bytes within %ss" % (len(req), timeout)
        return answer(r, "POST /api/publish of %d bytes" % len(req))

    def close(self):
        self.conn.close()


def post_batches(api, items, batch):
    """POSTs items through api (an Api) in requests of `batch` items; each is accepted whole."""
    for r in range(0, len(items), batch):
        chunk = items[r:r + batch]
        status, _, doc = api.post(chunk)
        assert status == 200 and doc == {"accepted": len(chunk)}, (r // batch, status, doc)


def answer(r, what="API answer"):
    """(status, headers, parsed JSON body) of an API answer; checks the common headers."""
    assert r is not None, "%s: no (whole) answer" % what
    status, headers, body = r
    assert headers.get("content-type", "").startswith("application/json"), \
        "%s: %s with Content-Type %r (not application/json): %r" % (what, status, headers.get("content-type"),
                                                                     body[:100])
    assert "content-length" in headers, (what, status, headers)
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError("API answer %s is not JSON: %r" % (status, body[:200]))
    return status, headers, doc


def post_once(port, items, key=API_KEY, headers=(), path="/api/publish"):
    c = H.HttpConn(port, timeout=10)
    try:
        req = publish_request(items, key, headers, path)
        c.send(req)
        r = c.read_response()
        assert r is not None, "no answer to a POST %s of %d bytes" % (path, len(req))
        return answer(r, "POST %s of %d bytes" % (path, len(req)))
    finally:
        c.close()


def metrics(port):
    return H.get_metrics(port)[0]


def total(m, name, **labels):
    return H.metric_value(m, name, **labels)


# ---------------------------------------------------------------------------------------------
# streams checked byte for byte
# ---------------------------------------------------------------------------------------------

def frames_of(payloads):
    return b"".join(H.server_frame(OP_TEXT, p) for p in payloads)


def describe_mismatch(buf, expected_payloads):
    frames, used = H.split_frames(bytes(buf))
    got = [f[2] for f in frames]
    for i, (g, e) in enumerate(zip(got, expected_payloads)):
        if g != e:
            return ("%d frames (%d bytes, %d left unparsed) instead of %d; frame %d is %r, expected %r"
                    % (len(got), len(buf), len(buf) - used, len(expected_payloads), i, g[:120], e[:120]))
    return ("%d frames (%d bytes, %d left unparsed) instead of %d; all present ones match; last %r"
            % (len(got), len(buf), len(buf) - used, len(expected_payloads), got[-1][:80] if got else None))


def check_streams(clients, expected_payloads, what):
    """Every client's buffer holds exactly the frames of expected_payloads, nothing else."""
    expected = frames_of(expected_payloads)
    bad = [(i, c) for i, c in enumerate(clients) if bytes(c.buf) != expected]
    if bad:
        i, c = bad[0]
        raise AssertionError("%s: %d of %d subscribers got a wrong stream; subscriber %d: %s"
                             % (what, len(bad), len(clients), i, describe_mismatch(c.buf, expected_payloads)))


def tick(n):
    return {"t": "tick", "p": {"seq": n}}


# ---------------------------------------------------------------------------------------------
# 1. two shards, 100 subscribers, 10,000 publications
# ---------------------------------------------------------------------------------------------

@limit(90)
def test_fanout_100_subscribers_two_shards_every_seq_once_in_order():
    n_subs, n_pubs, batch = 100, 10000, 500
    with fan() as srv:
        subs = [ws_client(srv.port, "user%d" % i) for i in range(n_subs)]
        for c in subs:
            subscribe_ok(c, ["ticks"])
        per_shard = open_per_shard(srv.port)
        assert sorted(per_shard) == ["0", "1"] and all(per_shard.values()) and sum(per_shard.values()) == n_subs, \
            "the %d subscribers are not spread over both shards: %r" % (n_subs, per_shard)
        m = metrics(srv.port)
        assert total(m, "wsed_subscriptions") == n_subs, total(m, "wsed_subscriptions")

        expected = [wire(tick(n)) for n in range(n_pubs)]
        want = len(frames_of(expected))
        drainer = H.Drainer(subs, 75)
        api = Api(srv.port)
        t0 = time.monotonic()
        post_batches(api, [{"topic": "ticks", "message": tick(n)} for n in range(n_pubs)], batch)
        t_pub = time.monotonic() - t0
        drainer.wait_all(want, 60)
        t_all = time.monotonic() - t0
        time.sleep(0.1)   # anything beyond the expected bytes would show now
        drainer.stop()
        api.close()
        check_streams(subs, expected, "10,000 ticks to 100 subscribers")
        print("published %d in %.2fs, all %d subscribers complete after %.2fs (%.0f deliveries/s)"
              % (n_pubs, t_pub, n_subs, t_all, n_subs * n_pubs / t_all))
        m = metrics(srv.port)
        assert total(m, "wsed_fanout_published_total", kind="topic") == n_pubs, \
            total(m, "wsed_fanout_published_total", kind="topic")
        assert total(m, "wsed_api_publications_total") == n_pubs, total(m, "wsed_api_publications_total")
        assert total(m, "wsed_api_requests_total", result="ok") == n_pubs // batch, \
            total(m, "wsed_api_requests_total", result="ok")
        assert total(m, "wsed_fanout_deliveries_total") == n_subs * n_pubs, total(m, "wsed_fanout_deliveries_total")
        for s in ("0", "1"):   # both shards delivered their own subscribers' share
            assert H.metric_value(m, "wsed_fanout_deliveries_total", shard=s) == per_shard[s] * n_pubs, \
                (s, H.metric_value(m, "wsed_fanout_deliveries_total", shard=s), per_shard)
        for c in subs:
            c.close()


# ---------------------------------------------------------------------------------------------
# 2. globs and overlap; the publication's bytes
# ---------------------------------------------------------------------------------------------

def test_fanout_glob_overlap_each_publication_once():
    """`news.sport` + `news.*` + `news.s?ort` on one connection: each publication once; `?` is one
    character (a dot too), `*` any run including dots and the empty one."""
    subs = {
        "A": ["news.sport", "news.*", "news.s?ort"],
        "B": ["news.s?ort"],
        "C": ["news.*"],
        "D": ["*"],
        "E": ["news.sport"],
        "F": ["news.sp*t"],
    }
    topics = ["news.sport", "news.sort", "news.spport", "news.a.b.c", "news", "news.s.ort", "xnews.sport",
              "news.sportx", "news."]
    want = {
        "A": [0, 1, 2, 3, 5, 7, 8],
        "B": [0, 5],
        "C": [0, 1, 2, 3, 5, 7, 8],
        "D": list(range(len(topics))),
        "E": [0],
        "F": [0, 2],
    }
    with fan() as srv:
        clients = {}
        for name, pats in subs.items():
            clients[name] = ws_client(srv.port, "g" + name)
            subscribe_ok(clients[name], pats)
        items = [{"topic": t, "message": {"t": "news", "p": {"n": i}}} for i, t in enumerate(topics)]
        barrier = {"t": "end", "p": {}}
        status, _, doc = post_once(srv.port, items + [{"broadcast": True, "message": barrier}])
        assert status == 200 and doc == {"accepted": len(items) + 1}, (status, doc)
        for name, c in clients.items():
            got = until_barrier(c, wire(barrier), what="for %s %r" % (name, subs[name]))
            expected = [wire({"t": "news", "p": {"n": i}}) for i in want[name]]
            assert got == expected, "%s subscribed %r got %r, expected topics %r" % (
                name, subs[name], [json.loads(g)["p"]["n"] for g in got], [topics[i] for i in want[name]])
        m = metrics(srv.port)
        assert total(m, "wsed_subscriptions") == sum(len(p) for p in subs.values()), total(m, "wsed_subscriptions")
        for c in clients.values():
            c.close()
        # Closing cleans every subscription up; a publication then reaches no one.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = metrics(srv.port)
            if total(m, "wsed_connections_open") == 0 and total(m, "wsed_subscriptions") == 0:
                break
            time.sleep(0.05)
        assert total(m, "wsed_connections_open") == 0 and total(m, "wsed_subscriptions") == 0, \
            (total(m, "wsed_connections_open"), total(m, "wsed_subscriptions"))
        delivered = total(m, "wsed_fanout_deliveries_total")
        # A barrier on another topic, to a fresh subscriber, after the publications: once it
        # arrived, the shards have handled them, and only the barrier was delivered.
        z = ws_client(srv.port, "z")
        subscribe_ok(z, ["unrelated"])
        barrier = {"t": "barrier", "p": {"tag": "after close"}}
        status, _, doc = post_once(srv.port, items + [{"topic": "unrelated", "message": barrier}])
        assert status == 200, (status, doc)
        assert until_barrier(z, wire(barrier), what="after close") == []
        assert total(metrics(srv.port), "wsed_fanout_deliveries_total") == delivered + 1
        z.close()


def test_fanout_publication_wire_bytes():
    """A publication is its message as given with "c" inserted after the first `{` when there is
    no top-level "c" (a nested one does not count); one text frame, also over the compression
    threshold; the category follows the type."""
    messages = [
        {"t": "chat", "p": {"x": 1}},
        {"c": "S", "t": "kept", "p": {}},
        {"p": {"c": "nested", "t": "inner"}, "t": "outer"},
        {"t": "price_snapshot", "p": {"px": 5234.75}},
        {"t": "big", "p": {"s": "\u00e9t\u00e9 \u2603 " * 300}},
    ]
    with fan() as srv:
        c = ws_client(srv.port)
        subscribe_ok(c, ["w"])
        status, _, doc = post_once(srv.port, [{"topic": "w", "message": m} for m in messages])
        assert status == 200 and doc == {"accepted": len(messages)}, (status, doc)
        for m in messages:
            raw, _ = next_json(c, 5, "(publication %s)" % m["t"])
            assert raw == wire(m), "message %s arrived as %r, expected %r" % (m["t"], raw[:200], wire(m)[:200])
        assert len(wire(messages[-1])) > 1024
        # A message without "t": whatever it becomes, it must arrive as valid JSON.
        status, _, doc = post_once(srv.port, [{"topic": "w", "message": {}}, {"topic": "w", "message": {"p": {}}}])
        if status == 200:
            assert doc == {"accepted": 2}, doc
            for _ in range(doc["accepted"]):
                next_json(c, 5, "(publication without t)")
        else:
            assert status == 400 and isinstance(doc.get("error"), str), (status, doc)
        c.close()


def test_fanout_json_forms_escapes_and_real_clients():
    """What backends and clients really send: JSON with spaces and newlines (Python's json.dumps
    default, pretty-printed), topics written with \\u escapes on one side and raw UTF-8 on the
    other, quotes and backslashes in topics, lower-case header names, any Content-Type, the WSE
    client's extra envelope keys and the legacy WSE{ prefix, and curl (Expect: 100-continue for
    bodies over 1 KiB)."""
    with fan() as srv:
        c = ws_client(srv.port)
        odd = 'q"uo\\te'
        # The TS client's extra keys (id, ts, seq, pri) are ignored; the legacy prefix works.
        c.send_text(json.dumps({"c": "WSE", "t": "subscription_update", "id": "0192", "ts": "2026-01-01T00:00:00Z",
                                "seq": 3, "pri": 5, "p": {"action": "subscribe", "topics": ["caf\u00e9", odd]},
                                "v": 1}))
        raw, _ = next_json(c, 5, "(reply with escaped topics)")
        p = check_reply(raw, "subscribe")
        assert p["success"] and p["success_topics"] == ["caf\u00e9", odd], p
        c.send_text(b'WSE{"t":"subscription_update","p":{"action":"subscribe","topics":["legacy"]}}')
        raw, _ = next_json(c, 5, "(reply to a WSE{ subscription)")
        assert check_reply(raw, "subscribe")["success_topics"] == ["legacy"], raw
        messages = [{"t": "spaced", "p": {"n": 1, "s": "a b"}}, {"t": "pretty", "p": {"list": [1, 2]}},
                    {"t": "odd", "p": {}}, {"t": "legacy", "p": {}}]
        bodies = [json.dumps([{"topic": "caf\u00e9", "message": messages[0]}]),                 # \u00e9 escaped
                  json.dumps([{"topic": "caf\u00e9", "message": messages[1]}], indent=2, ensure_ascii=False),
                  json.dumps({"topic": odd, "message": messages[2]}),
                  json.dumps({"topic": "legacy", "message": messages[3]})]
        hc = H.HttpConn(srv.port)
        for i, body in enumerate(bodies):
            data = body.encode("utf-8")
            if i == 0:   # lower-case header names
                hc.send(b"POST /api/publish HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n"
                        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n" % (API_KEY.encode(), len(data))
                        + data)
            else:
                hc.send(publish_request(body, headers=[("Content-Type", "application/x-anything")]))
            st, _, doc = answer(hc.read_response(5), "body %d" % i)
            assert st == 200 and doc == {"accepted": 1}, (i, body, st, doc)
        hc.close()
        for m in messages:
            raw, doc = next_json(c, 5, "(publication %s)" % m["t"])
            assert list(doc)[0] == "c" and doc == dict({"c": "U"}, **m), (raw, m)
        # curl, with a body over 1 KiB (curl sends Expect: 100-continue for those).
        big_msg = {"t": "curl", "p": {"s": "z" * 2000}}
        path = os.path.join(tmpdir(), "body.json")
        with open(path, "w") as f:
            json.dump({"topic": "legacy", "message": big_msg}, f)
        rc, out, err = H.run_cmd(["curl", "-sS", "--max-time", "5", "-H", "Authorization: Bearer " + API_KEY,
                                  "-H", "Content-Type: application/json", "--data-binary", "@" + path,
                                  "http://127.0.0.1:%d/api/publish" % srv.port], timeout=10)
        assert rc == 0 and json.loads(out) == {"accepted": 1}, (rc, out, err)
        raw, doc = next_json(c, 5, "(the publication sent with curl)")
        assert doc == dict({"c": "U"}, **big_msg), raw[:100]
        c.close()


def test_fanout_msgpack_connection_gets_text_publications():
    """A ?format=msgpack connection: its subscription reply may be M: MessagePack (a per-connection
    send), but topic publications, broadcasts and per-user sends are the shared text frame."""
    import test_wse_features as WF
    with fan() as srv:
        tok = W.token("packer")
        c = H.WSClient(srv.port, path="/wse?format=msgpack", extra=("Authorization: Bearer %s\r\n" % tok).encode())
        m = c.next_message(5)
        assert m is not None and m[0] in ("text", "binary"), m
        c.send_text(compact({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": ["mp"]},
                             "v": 1}))
        m = c.next_message(5)
        assert m is not None, "no subscription reply"
        if m[0] == "binary":
            assert m[1].startswith(b"M:"), m[1][:20]
            reply = WF.unpackb(m[1][2:])
        else:
            reply = json.loads(m[1])
        assert reply["t"] == "subscription_update" and reply["p"]["success_topics"] == ["mp"], reply
        msgs = [{"t": "mp", "p": {"n": 1}}, {"t": "all", "p": {"n": 2}}, {"t": "me", "p": {"n": 3}}]
        st, _, doc = post_once(srv.port, [{"topic": "mp", "message": msgs[0]}, {"broadcast": True, "message": msgs[1]},
                                          {"user": "packer", "message": msgs[2]}])
        assert st == 200, (st, doc)
        for want in msgs:
            m = c.next_message(5)
            assert m == ("text", wire(want)), (m, wire(want))
        c.close()


# ---------------------------------------------------------------------------------------------
# 3. subscribe / unsubscribe semantics and limits
# ---------------------------------------------------------------------------------------------

def test_fanout_subscription_management():
    with fan("--max-topics-per-connection", "4") as srv:
        c = ws_client(srv.port)
        for action in ("subscribe", "unsubscribe"):
            p = subscription(c, [], action)
            assert p == {"action": action, "success": True, "success_topics": [], "failed_topics": [],
                         "errors": {}}, p
        subscribe_ok(c, ["t1", "t2"])
        subscribe_ok(c, ["t1", "t2"])   # idempotent
        assert total(metrics(srv.port), "wsed_subscriptions") == 2
        bad = ["bad\x01topic", "a" * 257, "", "tab\there"]
        p = subscription(c, bad + ["a" * 256])
        assert p["success"] is False and p["success_topics"] == ["a" * 256] and p["failed_topics"] == bad, p
        assert p["errors"] == {t: "INVALID_TOPIC" for t in bad}, p
        # A topic named twice in one request is answered once.
        p = subscription(c, ["t1", "bad\x01topic", "t1", "bad\x01topic", "t2"])
        assert p["success_topics"] == ["t1", "t2"] and p["failed_topics"] == ["bad\x01topic"], p
        p = subscription(c, ["zz", "zz"], "unsubscribe")
        assert p["success_topics"] == ["zz"], p
        # Held: t1 t2 aaa..: one more fits, the rest are TOO_MANY_TOPICS.
        p = subscription(c, ["t3", "t4", "t5", "t1"])
        assert p["success"] is False and p["success_topics"] == ["t3", "t1"], p
        assert p["failed_topics"] == ["t4", "t5"] and p["errors"] == {"t4": "TOO_MANY_TOPICS",
                                                                      "t5": "TOO_MANY_TOPICS"}, p
        m = metrics(srv.port)
        assert total(m, "wsed_subscriptions") == 4, total(m, "wsed_subscriptions")
        assert (total(m, "wsed_limit_hits_total", limit="max_topics_per_connection") or 0) >= 1, \
            "max_topics_per_connection limit hit not counted"
        assert total(m, "wsed_wse_subscribe_total", result="too_many_topics") == 2
        assert total(m, "wsed_wse_subscribe_total", result="invalid_topic") == len(bad) + 1   # + the repeated one, once
        assert (total(m, "wsed_wse_subscribe_total", result="ok") or 0) >= 4

        def publish_and_collect(topics, tag):
            barrier = {"t": "barrier", "p": {"tag": tag}}
            items = [{"topic": t, "message": {"t": "m", "p": {"topic": t}}} for t in topics]
            status, _, doc = post_once(srv.port, items + [{"user": "alice", "message": barrier}])
            assert status == 200 and doc == {"accepted": len(items) + 1}, (status, doc)
            return [json.loads(g)["p"]["topic"] for g in until_barrier(c, wire(barrier), what=tag)]

        assert publish_and_collect(["t1", "t2", "t3", "t4", "t5"], "held") == ["t1", "t2", "t3"]
        p = subscription(c, ["t1", "never-held"], "unsubscribe")
        assert p == {"action": "unsubscribe", "success": True, "success_topics": ["t1", "never-held"],
                     "failed_topics": [], "errors": {}}, p
        assert publish_and_collect(["t1", "t2", "t3"], "after unsubscribe") == ["t2", "t3"]
        subscribe_ok(c, ["t4"])   # the freed slot is usable again
        assert total(metrics(srv.port), "wsed_subscriptions") == 4
        # sync_request: no answer at all, the connection stays.
        c.send_text(b'{"c":"S","t":"sync_request","p":{},"v":1}')
        ping_pong(c, 11)
        # A missing or unknown action: INVALID_MESSAGE, the connection stays.
        c.send_text(b'{"c":"WSE","t":"subscription_update","p":{"topics":["x"]},"v":1}')
        expect_error(c, "INVALID_MESSAGE", "(no action)")
        c.send_text(b'{"c":"WSE","t":"subscription_update","p":{"action":"bogus","topics":["x"]},"v":1}')
        expect_error(c, "INVALID_MESSAGE", "(bogus action)")
        ping_pong(c, 12)
        assert publish_and_collect(["t2", "x"], "end") == ["t2"]
        c.close()


def check_accounted(p, asked, what):
    """Every topic asked for is in success_topics or failed_topics, by its own name, once."""
    named = p["success_topics"] + p["failed_topics"]
    assert sorted(named) == sorted(asked), "%s: the reply does not account for each topic by name: %d asked, " \
        "%d in success_topics, failed_topics %r" % (what, len(asked), len(p["success_topics"]), p["failed_topics"][:5])


def test_fanout_many_topics_in_one_request():
    """The only cap is --max-topics-per-connection (default 100): 80 topics in one subscribe, or
    70 in ?topics=, are all subscribed; 30 more get 20 in and 10 TOO_MANY_TOPICS, each by name."""
    with fan() as srv:
        c = ws_client(srv.port)
        asked = ["t%d" % i for i in range(80)]
        p = subscription(c, asked)
        check_accounted(p, asked, "80 topics in one subscribe")
        assert p["success"] and p["success_topics"] == asked, \
            "80 topics under --max-topics-per-connection 100: only %d subscribed, failed %r" % (
                len(p["success_topics"]), p["failed_topics"][:3])
        more = ["u%d" % i for i in range(30)]
        p = subscription(c, more)
        check_accounted(p, more, "30 more")
        assert p["success_topics"] == more[:20] and p["errors"] == {t: "TOO_MANY_TOPICS" for t in more[20:]}, p
        assert total(metrics(srv.port), "wsed_subscriptions") == 100
        q = ["q%d" % i for i in range(70)]
        d = ws_client(srv.port, "q", path="/wse?topics=" + ",".join(q))
        raw, _ = next_json(d, 5, "(reply to 70 topics in ?topics=)")
        p = check_reply(raw, "subscribe")
        check_accounted(p, q, "70 topics in ?topics=")
        assert p["success"] and p["success_topics"] == q, (len(p["success_topics"]), p["failed_topics"][:3])
        c.close()
        d.close()


# ---------------------------------------------------------------------------------------------
# 4. ACL
# ---------------------------------------------------------------------------------------------

def test_fanout_acl_deny_wins_at_subscribe_and_delivery():
    """allow battle_*, deny battle_half: battle_half is refused, and so is every glob that could
    match it (auth::topic_acl::allows_subscription: a deny that intersects the glob refuses it);
    battle_half is never delivered to that connection, battle_one is (once, via two matching
    subscriptions). A connection without an ACL gets everything (the control)."""
    acl = {"allow": ["battle_*"], "deny": ["battle_half"]}
    asked = ["battle_half", "battle_*", "battle_?alf", "battle_one", "battle_o*", "other", "battle_h*", "*"]
    with fan() as srv:
        c = ws_client(srv.port, "acl-user", acl=acl)
        raw = None
        c.send_text(compact({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": asked},
                             "v": 1}))
        raw, _ = next_json(c, 5, "(ACL reply)")
        denied = ["battle_half", "battle_*", "battle_?alf", "other", "battle_h*", "*"]
        expected = {"c": "WSE", "t": "subscription_update",
                    "p": {"action": "subscribe", "success": False, "success_topics": ["battle_one", "battle_o*"],
                          "failed_topics": denied, "errors": {t: "ACL_DENIED" for t in denied}}, "v": 1}
        assert raw == compact(expected).encode(), "reply %r\nexpected %r" % (raw, compact(expected))
        free = ws_client(srv.port, "free-user")
        subscribe_ok(free, ["battle_*"])
        topics = ["battle_half", "battle_one", "battle_oz", "other", "battle_halfx"]
        barrier = {"t": "end", "p": {}}
        items = [{"topic": t, "message": {"t": "b", "p": {"topic": t}}} for t in topics]
        status, _, doc = post_once(srv.port, items + [{"broadcast": True, "message": barrier}])
        assert status == 200 and doc["accepted"] == len(items) + 1, (status, doc)
        got = [json.loads(g)["p"]["topic"] for g in until_barrier(c, wire(barrier), what="(ACL connection)")]
        assert got == ["battle_one", "battle_oz"], got
        got = [json.loads(g)["p"]["topic"] for g in until_barrier(free, wire(barrier), what="(free connection)")]
        assert got == ["battle_half", "battle_one", "battle_oz", "battle_halfx"], got
        m = metrics(srv.port)
        assert total(m, "wsed_wse_subscribe_total", result="acl_denied") == len(denied)
        c.close()
        free.close()


# ---------------------------------------------------------------------------------------------
# 5. per-user sends and broadcast across shards
# ---------------------------------------------------------------------------------------------

def connect_spread(port, user, at_least, before, tries=24):
    """Connections for user until there are at_least and both shards hold one (bounded)."""
    conns, shards = [], set()
    for _ in range(tries):
        c = ws_client(port, user)
        s, before = shard_of_new_connection(port, before)
        conns.append(c)
        shards.add(s)
        if len(conns) >= at_least and len(shards) == 2:
            return conns, before
    raise AssertionError("%d connections of %s all landed on shard(s) %r" % (len(conns), user, shards))


def test_fanout_user_send_and_broadcast_both_shards():
    with fan() as srv:
        before = open_per_shard(srv.port)
        alice, before = connect_spread(srv.port, "alice", 3, before)
        bob, before = connect_spread(srv.port, "bob", 2, before)
        others = [ws_client(srv.port, u) for u in ("carol", "alice2", "Alice", "alic")]
        everyone = alice + bob + others
        per_shard = open_per_shard(srv.port)
        assert all(per_shard.values()), per_shard
        to_alice = {"t": "dm", "p": {"to": "alice"}}
        to_bob = {"t": "dm", "p": {"to": "bob"}}
        to_all = {"t": "news", "p": {"all": True}}
        barrier = {"t": "end", "p": {}}
        items = [{"user": "alice", "message": to_alice}, {"user": "nobody", "message": {"t": "dm", "p": {}}},
                 {"broadcast": True, "message": to_all}, {"user": "bob", "message": to_bob},
                 {"broadcast": True, "message": barrier}]
        status, _, doc = post_once(srv.port, items)
        assert status == 200 and doc == {"accepted": len(items)}, (status, doc)
        for group, first in ((alice, [wire(to_alice), wire(to_all)]), (bob, [wire(to_all), wire(to_bob)]),
                             (others, [wire(to_all)])):
            for c in group:
                got = until_barrier(c, wire(barrier))
                assert got == first, (got, first)
        m = metrics(srv.port)
        assert total(m, "wsed_fanout_published_total", kind="broadcast") == 2
        assert 2 <= (total(m, "wsed_fanout_published_total", kind="user") or 0) <= 3
        assert total(m, "wsed_fanout_deliveries_total") == len(alice) + len(bob) + 2 * len(everyone), \
            (total(m, "wsed_fanout_deliveries_total"), len(alice), len(bob), len(everyone))
        # A user id that JSON escapes (quotes, backslash, non-ASCII written as \\u in the body).
        odd = 'bob "the" caf\u00e9 \\ \u2603'
        c = ws_client(srv.port, odd)
        msg = {"t": "dm", "p": {"odd": True}}
        st, _, doc = post_once(srv.port, json.dumps([{"user": odd, "message": msg}]))
        assert st == 200 and doc == {"accepted": 1}, (st, doc)
        raw, doc = next_json(c, 5, "(send to a user id with escapes)")
        assert doc == dict({"c": "U"}, **msg), raw
        for c in everyone + [c]:
            c.close()


# ---------------------------------------------------------------------------------------------
# 6. ?topics= on the upgrade URL
# ---------------------------------------------------------------------------------------------

async def _websockets_topics_client(port, tok, published):
    import websockets
    async with websockets.connect("ws://127.0.0.1:%d/wse?format=json&topics=lib.a,lib.%%2A" % port,
                                  extra_headers={"Authorization": "Bearer " + tok}, open_timeout=5,
                                  close_timeout=2) as ws:
        ready = await asyncio.wait_for(ws.recv(), 5)
        reply = await asyncio.wait_for(ws.recv(), 5)
        await asyncio.get_running_loop().run_in_executor(None, published)
        msgs = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
        return ready, reply, msgs


def test_fanout_topics_query_subscribes_at_connect():
    with fan() as srv:
        c = ws_client(srv.port, path="/wse?topics=a,b")
        raw, _ = next_json(c, 5, "(reply to ?topics)")
        p = check_reply(raw, "subscribe")
        assert p["success"] and p["success_topics"] == ["a", "b"], p
        d = ws_client(srv.port, "denied", acl={"deny": ["secret"]}, path="/wse?client_version=1&topics=ok,secret")
        raw, _ = next_json(d, 5, "(reply to ?topics with a denied topic)")
        p = check_reply(raw, "subscribe")
        assert p["success"] is False and p["success_topics"] == ["ok"] and p["errors"] == {"secret": "ACL_DENIED"}, p
        barrier = {"t": "end", "p": {}}
        items = [{"topic": t, "message": {"t": "q", "p": {"topic": t}}} for t in ("a", "b", "c", "ok", "secret")]
        status, _, doc = post_once(srv.port, items + [{"broadcast": True, "message": barrier}])
        assert status == 200, (status, doc)
        assert [json.loads(g)["p"]["topic"] for g in until_barrier(c, wire(barrier))] == ["a", "b"]
        assert [json.loads(g)["p"]["topic"] for g in until_barrier(d, wire(barrier))] == ["ok"]

        # python3-websockets, with a percent-encoded glob in the query.
        def published():
            st, _, dc = post_once(srv.port, [{"topic": "lib.zz", "message": {"t": "q", "p": {"n": 1}}},
                                             {"topic": "lib.a", "message": {"t": "q", "p": {"n": 2}}}])
            assert st == 200, (st, dc)
        ready, reply, msgs = asyncio.run(asyncio.wait_for(
            _websockets_topics_client(srv.port, W.token("lib"), published), 20))
        assert json.loads(ready)["t"] == "server_ready", ready
        p = check_reply(reply, "subscribe")
        assert p["success"] and p["success_topics"] == ["lib.a", "lib.*"], p
        assert [json.loads(x)["p"]["n"] for x in msgs] == [1, 2], msgs
        c.close()
        d.close()


# ---------------------------------------------------------------------------------------------
# 7. client publish
# ---------------------------------------------------------------------------------------------

def publish_frame(topic, message):
    return compact({"c": "WSE", "t": "publish", "p": {"topic": topic, "message": message}, "v": 1})


def test_fanout_gen_token_publish_claim():
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "p", "--publish", "chat.*,news"],
                             env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0, (rc, err)
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["wse_topics"]["publish"] == ["chat.*", "news"], claims
    assert "deny" not in claims["wse_topics"], claims
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "p", "--topics", "chat.*", "--publish", "chat.room"],
                             env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0, (rc, err)
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["wse_topics"] == {"allow": ["chat.*"], "publish": ["chat.room"]}, claims


def test_fanout_client_publish():
    rc, out, err = H.run_cmd([BIN, "gen-token", "--sub", "publisher", "--publish", "chat.*"],
                             env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0, (rc, err)
    with fan() as srv:
        pub = ws_client(srv.port, "publisher", tok=out.strip())
        subscribe_ok(pub, ["chat.*"])
        sub = ws_client(srv.port, "reader")
        subscribe_ok(sub, ["chat.room"])
        bystander = ws_client(srv.port, "bystander")
        subscribe_ok(bystander, ["other.x", "chat.secret"])
        hi = {"t": "chat", "p": {"text": "hi"}}
        pub.send_text(publish_frame("chat.room", hi))
        raw, _ = next_json(sub, 5, "(the chat message at the subscriber)")
        assert raw == wire(hi), raw
        raw, _ = next_json(pub, 5, "(the chat message back at the subscribed publisher)")
        assert raw == wire(hi), raw
        # Refusals: an error frame each, the connection stays.
        pub.send_text(publish_frame("other.x", hi))
        expect_error(pub, "PUBLISH_DENIED", "(publish outside the publish globs)")
        pub.send_text(compact({"c": "WSE", "t": "publish", "p": {"topic": "chat.room", "message": "hi"}, "v": 1}))
        expect_error(pub, "INVALID_MESSAGE", "(message is a string)")
        pub.send_text(compact({"c": "WSE", "t": "publish", "p": {"topic": "chat.room", "message": [1]}, "v": 1}))
        expect_error(pub, "INVALID_MESSAGE", "(message is an array)")
        pub.send_text(compact({"c": "WSE", "t": "publish", "p": {"topic": "chat.room"}, "v": 1}))
        expect_error(pub, "INVALID_MESSAGE", "(no message)")
        pub.send_text(publish_frame("chat.\x01", hi))
        expect_error(pub, "INVALID_TOPIC", "(control character in the topic)")
        ping_pong(pub, 1)
        sub.send_text(publish_frame("chat.room", hi))   # a token without "publish"
        expect_error(sub, "PUBLISH_DENIED", "(token without publish)")
        ping_pong(sub, 2)
        denier = ws_client(srv.port, "denier", acl={"publish": ["chat.*"], "deny": ["chat.secret"]})
        denier.send_text(publish_frame("chat.secret", hi))
        expect_error(denier, "PUBLISH_DENIED", "(publish to a denied topic)")
        ok = {"t": "chat", "p": {"text": "allowed"}}
        denier.send_text(publish_frame("chat.room", ok))
        barrier = {"t": "end", "p": {}}
        # The HTTP barrier goes out after the allowed publish reached the subscriber.
        raw, _ = next_json(sub, 5, "(the second allowed publish)")
        assert raw == wire(ok), raw
        status, _, doc = post_once(srv.port, [{"broadcast": True, "message": barrier}])
        assert status == 200, (status, doc)
        assert until_barrier(bystander, wire(barrier)) == [], "a refused publish was delivered"
        assert until_barrier(sub, wire(barrier)) == []
        assert until_barrier(pub, wire(barrier)) == [wire(ok)]
        m = metrics(srv.port)
        assert total(m, "wsed_wse_publish_total", result="ok") == 2
        assert total(m, "wsed_wse_publish_total", result="denied") == 3
        assert total(m, "wsed_wse_publish_total", result="invalid") == 4
        for c in (pub, sub, bystander, denier):
            c.close()


@limit(60)
def test_fanout_client_publish_server_busy_is_backpressure():
    """--inbox-capacity 16, a publisher on one shard sending bursts of 2,000 publishes, subscribers
    on both shards: a refused publish gets SERVER_BUSY (connection stays) and reaches no one; every
    other one reaches every subscriber, in order."""
    n, rounds = 2000, 3
    with fan("--inbox-capacity", "16") as srv:
        before = open_per_shard(srv.port)
        pub = ws_client(srv.port, "busy-publisher", acl={"publish": ["busy"]})
        pub_shard, before = shard_of_new_connection(srv.port, before)
        subs, shards = [], set()
        while len(subs) < 4 or len(shards) < 2:
            assert len(subs) < 30, "30 subscribers all on shard %r" % shards
            subs.append(ws_client(srv.port, "busy-sub%d" % len(subs)))
            sh, before = shard_of_new_connection(srv.port, before)
            shards.add(sh)
        for c in subs:
            subscribe_ok(c, ["busy"])
        busy = ok = 0
        for r in range(rounds):
            burst = b"".join(H.frame(OP_TEXT, publish_frame("busy", tick(r * n + i)).encode()) for i in range(n))
            pub.sock.sendall(burst)
            ping_stamp = 1000 + r
            pub.send_text(b'{"c":"WSE","t":"ping","p":{"timestamp":%d},"v":1}' % ping_stamp)
            while True:   # the replies to this burst: SERVER_BUSY errors, then the PONG
                raw, doc = next_json(pub, 10, "(replies to burst %d)" % r)
                if doc.get("t") == "PONG":
                    assert doc["p"]["client_timestamp"] == ping_stamp, doc
                    break
                W.check_error(raw, "SERVER_BUSY")
                busy += 1
            ok = (r + 1) * n - busy
            time.sleep(0.05)   # every round, even after a refusal: more chances of a partly delivered one
        assert busy, ("no SERVER_BUSY in %d bursts of %d publishes with --inbox-capacity 16 (publisher on shard "
                      "%s): the client side of inbox backpressure is untested" % (rounds, n, pub_shard))
        barrier = {"t": "end", "p": {}}
        for _ in range(100):
            st, _, doc = post_once(srv.port, [{"broadcast": True, "message": barrier}])
            if st != 503:
                break
            time.sleep(0.02)
        assert st == 200, (st, doc)
        for i, c in enumerate(subs):
            got = until_barrier(c, wire(barrier), timeout=10, what="(subscriber %d)" % i)
            seqs = [json.loads(g)["p"]["seq"] for g in got]
            assert seqs == sorted(set(seqs)), "subscriber %d: publications out of order or twice" % i
            assert len(seqs) == ok, ("subscriber %d got %d publications; %d were accepted (%d SERVER_BUSY): a "
                                     "refused publish was delivered or an accepted one lost" % (i, len(seqs), ok,
                                                                                                busy))
        m = metrics(srv.port)
        assert total(m, "wsed_wse_publish_total", result="busy") == busy
        assert total(m, "wsed_wse_publish_total", result="ok") == ok
        assert (total(m, "wsed_fanout_inbox_full_total") or 0) >= busy
        print("%d SERVER_BUSY of %d publishes" % (busy, ok + busy))
        for c in subs + [pub]:
            c.close()


def test_fanout_flag_checks():
    for args in (["--inbox-capacity", "8"], ["--inbox-capacity", "24"], ["--slow-consumer", "later"],
                 ["--admin-listen", "127.0.0.1"], ["--admin-listen", "127.0.0.1:99999"],
                 ["--max-topics-per-connection", "0"]):
        rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0"] + args, env=W.env(), timeout=10)
        assert rc == 2 and err.strip(), (args, rc, out[-200:], err[-300:])
    rc, out, _ = H.run_cmd([BIN, "--help"])
    assert rc == 0
    for flag in ("--api-key-file", "--max-api-body", "--max-topics-per-connection", "--slow-consumer",
                 "--inbox-capacity", "--admin-listen"):
        assert flag in out, flag
    line = [ln for ln in out.splitlines() if "--max-outbound-bytes" in ln][0]
    assert "1MiB" in line, "--max-outbound-bytes default: %r" % line


# ---------------------------------------------------------------------------------------------
# 8. the HTTP API
# ---------------------------------------------------------------------------------------------

def test_fanout_api_off_without_key_file_and_short_key_refused():
    with fan(api=False) as srv:
        c = H.HttpConn(srv.port)
        c.send(publish_request([{"broadcast": True, "message": {"t": "x"}}]))
        r = c.read_response()
        assert r is not None and r[0] == 404, r
        c.close()
        st, _, _, body = H.http_get(srv.port, "/readyz")
        assert st == 200 and body == b"ready\n", (st, body)
    key16 = "exactly-16-bytes"
    with H.running(BIN, "--mode", "wse", "--workers", "1", "--api-key-file", key_file(key16, "k16.key"),
                   env=W.env()) as srv:
        st, _, doc = post_once(srv.port, [{"broadcast": True, "message": {"t": "x"}}], key=key16)
        assert st == 200 and doc == {"accepted": 1}, ("a 16-byte key without a newline", st, doc)
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0", "--api-key-file",
                              key_file("only-15-bytes!!\n", "short.key")], env=W.env(), timeout=10)
    assert rc == 2, (rc, out[-300:], err[-300:])
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--port", "0", "--api-key-file",
                              os.path.join(tmpdir(), "missing.key")], env=W.env(), timeout=10)
    assert rc == 2, (rc, out[-300:], err[-300:])


def test_fanout_api_auth_and_errors():
    with fan("--max-api-body", "1KiB") as srv:
        port = srv.port
        good = [{"broadcast": True, "message": {"t": "x", "p": {}}}]
        for key, hdrs in ((None, ()), ("wrong-key-0123456789abcdef", ()), (API_KEY + "x", ()), (API_KEY[:-1], ()),
                          (None, [("Authorization", "Basic " + API_KEY)]),
                          (None, [("Authorization", API_KEY)])):
            st, headers, doc = post_once(port, good, key=key, headers=hdrs)
            assert st == 401 and doc == {"error": "unauthorized"}, (key, hdrs, st, doc)
            assert headers.get("www-authenticate", "").startswith("Bearer"), headers
        st, _, doc = post_once(port, good, key=None, headers=[("Authorization", "bEaReR " + API_KEY)])
        assert st == 200 and doc == {"accepted": 1}, ("scheme is case-insensitive", st, doc)
        bad_bodies = [b"", b"{", b"not json", b"[1,2", b"{}", b"[{}]", b'{"topic":"t"}', b'{"message":{"t":"x"}}',
                      b'{"topic":5,"message":{"t":"x"}}', b'{"topic":"t","message":"str"}',
                      b'{"topic":"t","message":[1]}', b'{"topic":"bad\\u0001","message":{"t":"x"}}',
                      b'{"user":7,"message":{"t":"x"}}', b'"just a string"', b"42",
                      compact({"topic": "a" * 257, "message": {"t": "x"}}).encode()]
        for body in bad_bodies:
            st, _, doc = post_once(port, body)
            assert st == 400 and isinstance(doc.get("error"), str) and doc["error"], (body, st, doc)
        # A 400 array publishes nothing, not even its valid first items.
        watcher = ws_client(port, "watcher")
        subscribe_ok(watcher, ["t"])
        st, _, doc = post_once(port, b'[{"topic":"t","message":{"t":"first"}},{"topic":5,"message":{}}]')
        assert st == 400, (st, doc)
        barrier = {"t": "end", "p": {}}
        st, _, doc = post_once(port, [{"topic": "t", "message": barrier}])
        assert st == 200
        assert until_barrier(watcher, wire(barrier)) == [], "a refused (400) request published something"
        watcher.close()
        # Methods, lengths.
        for method in ("GET", "PUT", "DELETE"):
            c = H.HttpConn(port)
            c.send(H.http_request_bytes(method, "/api/publish", b"" if method == "PUT" else None,
                                        [("Authorization", "Bearer " + API_KEY), ("Connection", "close")]))
            st, headers, doc = answer(c.read_response())
            assert st == 405 and "POST" in headers.get("allow", ""), (method, st, headers, doc)
            c.close()
        for extra in ([], [("Transfer-Encoding", "chunked")]):
            c = H.HttpConn(port)
            c.send(H.http_request_bytes("POST", "/api/publish", None, [("Authorization", "Bearer " + API_KEY)] + extra))
            r = c.read_response(5)
            assert r is not None and r[0] == 411, (extra, r)
            answer(r)
            c.close()
        # Over --max-api-body: 413 before the body is sent.
        c = H.HttpConn(port)
        c.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 1025\r\n\r\n"
               % API_KEY.encode())
        r = c.read_response(5)
        assert r is not None and r[0] == 413, r
        answer(r)
        c.close()
        msg = {"topic": "t", "message": {"t": "x", "p": {"s": ""}}}
        pad = 1024 - len(compact(msg))
        msg["message"]["p"]["s"] = "a" * pad
        assert len(compact(msg)) == 1024
        st, _, doc = post_once(port, compact(msg))
        assert st == 200 and doc == {"accepted": 1}, ("a body of exactly --max-api-body", st, doc)
        msg["message"]["p"]["s"] += "a"
        st, _, doc = post_once(port, compact(msg))
        assert st == 413, (st, doc)
        m = metrics(port)
        assert total(m, "wsed_api_requests_total", result="unauthorized") == 6
        assert total(m, "wsed_api_requests_total", result="bad_request") == len(bad_bodies) + 1
        assert total(m, "wsed_api_requests_total", result="method") == 3
        assert total(m, "wsed_api_requests_total", result="length_required") == 2
        assert total(m, "wsed_api_requests_total", result="too_large") == 2
        assert total(m, "wsed_api_requests_total", result="ok") == 3
        assert total(m, "wsed_api_publications_total") == 3


def test_fanout_api_large_bodies():
    """Bodies that span several receive buffers (16 KiB each by default) up to --max-api-body."""
    with fan("--max-api-body", "2MiB") as srv:
        c = ws_client(srv.port)
        subscribe_ok(c, ["l"])
        api = Api(srv.port)
        for n in (300, 400, 2000, 20000):
            items = [{"topic": "l", "message": tick(i)} for i in range(n)]
            if n == 20000:   # over the item cap, but a valid body of about 1 MiB: 400, not 413 or 431
                st, _, doc = api.post(items)
                assert st == 400, (n, len(compact(items)), st, doc)
                continue
            st, _, doc = api.post(items)
            assert st == 200 and doc == {"accepted": n}, ("%d items, %d bytes" % (n, len(compact(items))), st, doc)
            for i in range(n):
                raw, _ = next_json(c, 5, "(item %d of %d)" % (i, n))
                assert raw == wire(tick(i)), (i, raw)
        # A request dribbled in 7-byte pieces (head and body split anywhere).
        req = publish_request([{"topic": "l", "message": tick(-1)}])
        for i in range(0, len(req), 7):
            api.conn.send(req[i:i + 7])
            time.sleep(0.001)
        st, _, doc = answer(api.conn.read_response(5), "dribbled request")
        assert st == 200 and doc == {"accepted": 1}, (st, doc)
        raw, _ = next_json(c, 5, "(the dribbled publication)")
        assert raw == wire(tick(-1)), raw
        api.close()
        c.close()


@limit(60)
def test_fanout_api_keep_alive_and_pipelining():
    with fan() as srv:
        port = srv.port
        watcher = ws_client(port, "watcher")
        subscribe_ok(watcher, ["k"])
        api = Api(port)
        for i in range(100):
            st, _, doc = api.post([{"topic": "k", "message": {"t": "k", "p": {"i": i}}}])
            assert st == 200 and doc == {"accepted": 1}, (i, st, doc)
        api.close()
        # 50 requests in one send, different outcomes, answered in order.
        reqs, want, published = [], [], []
        for i in range(50):
            kind = i % 5
            if kind == 3:
                reqs.append(publish_request(b"{bad", API_KEY))
                want.append((400, None))
            elif kind == 4:
                reqs.append(publish_request([{"topic": "k", "message": {"t": "k"}}], "wrong-key-0123456789abcdef"))
                want.append((401, None))
            else:
                n = 1 + i % 7
                items = [{"topic": "k", "message": {"t": "k", "p": {"i": 100 + i, "j": j}}} for j in range(n)]
                published += [it["message"] for it in items]
                reqs.append(publish_request(items, API_KEY))
                want.append((200, {"accepted": n}))
        c = H.HttpConn(port, timeout=20)
        c.send(b"".join(reqs))
        for i, (st_want, doc_want) in enumerate(want):
            r = c.read_response(10)
            assert r is not None, "pipelined answer %d of 50 missing (after %d)" % (i + 1, i)
            st, _, doc = answer(r)
            assert st == st_want and (doc_want is None or doc == doc_want), (i, st, doc, st_want, doc_want)
        # 40 requests of about 1.5 KB in one send: their boundaries straddle the receive buffers.
        reqs = []
        for i in range(40):
            msg = {"t": "k", "p": {"s": i, "pad": "p" * (1400 + i)}}
            published.append(msg)
            reqs.append(publish_request([{"topic": "k", "message": msg}], API_KEY))
        c.send(b"".join(reqs))
        for i in range(40):
            st, _, doc = answer(c.read_response(10), "pipelined request %d of 40 (1.5 KB each)" % (i + 1))
            assert st == 200 and doc == {"accepted": 1}, (i, st, doc)
        # Connection: close is honoured; HTTP/1.0 closes.
        c.send(publish_request([{"topic": "k", "message": {"t": "k", "p": {"last": 1}}}], API_KEY,
                               [("Connection", "close")]))
        st, _, doc = answer(c.read_response(5))
        assert st == 200 and c.wait_eof(5), "Connection: close not honoured"
        c.close()
        c = H.HttpConn(port)
        body = compact([{"topic": "k", "message": {"t": "k", "p": {"last": 2}}}])
        c.send(H.http_request_bytes("POST", "/api/publish", body, [("Authorization", "Bearer " + API_KEY)],
                                    version="HTTP/1.0"))
        st, _, doc = answer(c.read_response(5))
        assert st == 200 and c.wait_eof(5), "HTTP/1.0 request: connection not closed"
        c.close()
        published += [{"t": "k", "p": {"last": 1}}, {"t": "k", "p": {"last": 2}}]
        expected = [wire({"t": "k", "p": {"i": i}}) for i in range(100)] + [wire(m) for m in published]
        got = []
        for _ in expected:
            raw, _ = next_json(watcher, 5, "(publication %d of %d)" % (len(got) + 1, len(expected)))
            got.append(raw)
        assert got == expected, describe_list(got, expected)
        # The item cap: 10,000 items accepted, 10,001 refused.
        item = {"topic": "nobody-listens", "message": {"t": "x"}}
        st, _, doc = post_once(port, [item] * 10000)
        assert st == 200 and doc == {"accepted": 10000}, (st, doc)
        st, _, doc = post_once(port, [item] * 10001)
        assert st == 400, (st, doc)
        watcher.close()


def describe_list(got, expected):
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            return "item %d: got %r expected %r" % (i, g, e)
    return "lengths %d vs %d" % (len(got), len(expected))


@limit(90)
def test_fanout_api_503_when_inbox_full():
    """--inbox-capacity 16 and one array of 10,000: a 503 {"error":"inbox full","accepted":N}; the
    subscribers (on both shards) get exactly the accepted prefix of each request, in order."""
    n_items, tries, busy_rounds = 10000, 8, 3
    with fan("--inbox-capacity", "16") as srv:
        subs, before = [], open_per_shard(srv.port)
        shards = set()
        while len(subs) < 6 or len(shards) < 2:
            assert len(subs) < 30, "30 subscribers all on shard %r" % shards
            subs.append(ws_client(srv.port, "s%d" % len(subs)))
            s, before = shard_of_new_connection(srv.port, before)
            shards.add(s)
        for c in subs:
            subscribe_ok(c, ["full"])
        expected, busy = [], []
        drainer = H.Drainer(subs, 75)
        api = Api(srv.port)
        for r in range(tries):
            items = [{"topic": "full", "message": tick(r * n_items + i)} for i in range(n_items)]
            st, _, doc = api.post(items, timeout=60)
            if st == 503:
                assert doc.get("error") == "inbox full" and isinstance(doc.get("accepted"), int), doc
                n = doc["accepted"]
                assert 0 <= n < n_items, doc
                busy.append(n)
            else:
                assert st == 200 and doc == {"accepted": n_items}, (st, doc)
                n = n_items
            expected += [wire(tick(r * n_items + i)) for i in range(n)]
            if len(busy) >= busy_rounds:   # a few 503s: more chances of a partly published item
                break
            time.sleep(0.05)
        api.close()
        first_busy = list(busy)
        # Nothing beyond the accepted items: a barrier after them must come next. The inbox may
        # still be full for a moment: retried (bounded), each 503 counted.
        barrier = {"t": "end", "p": {}}
        for _ in range(100):
            st, _, doc = post_once(srv.port, [{"topic": "full", "message": barrier}])
            if st != 503:
                break
            assert doc == {"error": "inbox full", "accepted": 0}, doc
            busy.append(0)
            time.sleep(0.02)
        assert st == 200 and doc == {"accepted": 1}, ("the inbox never drained after the 503", st, doc)
        drainer.wait_all(len(frames_of(expected + [wire(barrier)])), 30)
        time.sleep(0.1)
        drainer.stop()
        check_streams(subs, expected + [wire(barrier)], "accepted prefixes (503 after %r)" % first_busy)
        assert busy, ("no 503 in %d requests of %d items with --inbox-capacity 16 (every request was "
                      "accepted whole); the inbox-full path is untested" % (tries, n_items))
        m = metrics(srv.port)
        assert (total(m, "wsed_fanout_inbox_full_total") or 0) >= len(busy), total(m, "wsed_fanout_inbox_full_total")
        assert total(m, "wsed_api_requests_total", result="busy") == len(busy)
        assert total(m, "wsed_api_publications_total") == len(expected) + 1, \
            (total(m, "wsed_api_publications_total"), len(expected), "+ 1 barrier")
        print("503 after %r accepted items; the barrier was refused %d times" % (first_busy,
                                                                                  len(busy) - len(first_busy)))
        for c in subs:
            c.close()


def accepted_per_shard(m):
    return {lab["shard"]: v for lab, v in m.get("wsed_connections_accepted_total", [])}


@limit(60)
def test_fanout_api_503_is_all_or_nothing_across_shards():
    """A publication is published on every shard or on none: with --inbox-capacity 16, 16 items
    for a topic only the other shard has fill that shard's inbox, then an item for a topic both
    shards have must be refused whole (503, accepted 16), not delivered on the API's own shard."""
    with fan("--inbox-capacity", "16") as srv:
        before = open_per_shard(srv.port)
        by_shard = {"0": [], "1": []}
        for _ in range(30):
            c = ws_client(srv.port, "aon")
            sh, before = shard_of_new_connection(srv.port, before)
            by_shard[sh].append(c)
            if by_shard["0"] and by_shard["1"]:
                break
        assert by_shard["0"] and by_shard["1"], "30 connections all on one shard"
        subs = {sh: cs[0] for sh, cs in by_shard.items()}
        for sh, c in subs.items():
            subscribe_ok(c, ["only" + sh, "both"])
        # The API connection's shard: the one whose accepted count grew when it connected (read
        # over that same connection, so no other connection is counted in between).
        a0 = accepted_per_shard(metrics(srv.port))
        api = Api(srv.port)
        api.conn.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        st, _, body = api.conn.read_response(5)
        assert st == 200, st
        a1 = accepted_per_shard(H.parse_metrics(body.decode()))
        grown = [sh for sh in a1 if a1[sh] > a0.get(sh, 0)]
        assert len(grown) == 1, (a0, a1)
        remote = "1" if grown == ["0"] else "0"
        busy = []
        expected = {"0": [], "1": []}
        for r in range(5):
            items = []
            for g in range(40):
                items += [{"topic": "only" + remote, "message": {"t": "x", "p": {"r": r, "g": g, "i": i}}}
                          for i in range(16)]
                items.append({"topic": "both", "message": {"t": "y", "p": {"r": r, "g": g}}})
            st, _, doc = api.post(items)
            n = len(items)
            if st == 503:
                assert doc.get("error") == "inbox full" and isinstance(doc.get("accepted"), int), doc
                n = doc["accepted"]
                busy.append(n)
            else:
                assert st == 200 and doc == {"accepted": len(items)}, (st, doc)
            for it in items[:n]:
                for sh in ("0", "1"):
                    if it["topic"] in ("only" + sh, "both"):
                        expected[sh].append(wire(it["message"]))
            time.sleep(0.05)
        api.close()
        assert busy, "no 503 in 5 requests of 680 items with --inbox-capacity 16"
        barrier = {"t": "end", "p": {}}
        for _ in range(100):
            st, _, doc = post_once(srv.port, [{"broadcast": True, "message": barrier}])
            if st != 503:
                break
            time.sleep(0.02)
        assert st == 200, (st, doc)
        for sh, c in subs.items():
            got = until_barrier(c, wire(barrier), timeout=10, what="(shard %s)" % sh)
            assert got == expected[sh], "shard %s subscriber (API on shard %s, 503 after %r): %s" % (
                sh, grown[0], busy, describe_list(got, expected[sh]))
        for cs in by_shard.values():
            for c in cs:
                c.close()


# ---------------------------------------------------------------------------------------------
# 9. slow consumers
# ---------------------------------------------------------------------------------------------

BIG_PAD = "x" * 16000


def big(n):
    return {"t": "big", "p": {"seq": n, "pad": BIG_PAD}}


def slow_setup(srv, n_others):
    stuck = ws_client(srv.port, "stuck", rcvbuf=4096)
    subscribe_ok(stuck, ["big"])
    others = [ws_client(srv.port, "o%d" % i) for i in range(n_others)]
    for c in others:
        subscribe_ok(c, ["big"])
    return stuck, others


def publish_paced(api, drainer, sent, count, batch=4, timeout=20):
    """Publish big(len(sent)..) count times in batches (appended to sent), each time waiting until
    every other subscriber (a Drainer with expect) has every frame so far: they keep up, so only
    the stuck client's queue can fill, and a wait that times out means the stuck client delayed
    the others. The stuck client must get past the server's kernel send buffer first (on
    loopback it grows to tcp_wmem's maximum, 4 MiB here), so a few MiB go out before its queue
    fills."""
    for _ in range(0, count, batch):
        b = len(sent)
        items = [{"topic": "big", "message": big(i)} for i in range(b, b + batch)]
        payloads = [wire(it["message"]) for it in items]
        drainer.expect += frames_of(payloads)
        sent += payloads
        st, _, doc = api.post(items)
        assert st == 200 and doc == {"accepted": batch}, (st, doc)
        assert drainer.wait_all(len(drainer.expect), timeout), \
            "the other subscribers did not get message %d within %ss" % (len(sent) - 1, timeout)


def check_drained(drainer, what):
    """Every client of the drainer got exactly drainer.expect."""
    bad = [c for c in drainer.clients if c.bad is not None or c.got != len(drainer.expect)]
    if bad:
        c = bad[0]
        raise AssertionError("%s: %d of %d subscribers got a wrong stream; one got %d bytes of %d, first "
                             "difference %r" % (what, len(bad), len(drainer.clients), c.got, len(drainer.expect),
                                                c.bad))


def read_everything(c, timeout):
    """Read c until EOF, a close frame, or `timeout` of silence: ([payloads], close code|None,
    eof, leftover bytes)."""
    out, code = [], None
    while True:
        m = c.next_message(timeout)
        if m is None:
            return out, code, False, bytes(c.buf)
        if m[0] == "eof":
            return out, code, True, bytes(c.buf)
        if m[0] == "close":
            return out, m[1], c.eof, bytes(c.buf)
        assert m[0] == "text", m[:2]
        out.append(m[1])


@limit(90)
def test_fanout_slow_consumer_disconnect_4509_others_unharmed():
    with fan("--max-outbound-bytes", "64KiB", "--compression-threshold", "0") as srv:
        stuck, others = slow_setup(srv, 100)
        api = Api(srv.port)
        sent = []
        drainer = H.Drainer(others, 80, expect=bytearray())
        closed = 0
        for step in range(160):   # at most 640 messages of 16 KB (10 MB)
            publish_paced(api, drainer, sent, 4)
            closed = total(metrics(srv.port), "wsed_connections_closed_total", reason="slow_consumer") or 0
            if closed:
                break
        assert closed == 1, "the client that never reads was not closed as a slow consumer after %d messages " \
                            "of 16 KB (--max-outbound-bytes 64KiB)" % len(sent)
        cut_after = len(sent)
        publish_paced(api, drainer, sent, 20)   # the others go on receiving
        time.sleep(0.1)
        drainer.stop()
        api.close()
        check_drained(drainer, "100 subscribers beside a slow consumer")
        # The stuck client now reads: whole frames, a prefix of the publications, then close 4509.
        frames, code, eof, rest = read_everything(stuck, 5)
        assert code == 4509, "stuck client: close code %r (eof=%s) after %d frames" % (code, eof, len(frames))
        assert frames == sent[:len(frames)], "the slow consumer's frames are not a prefix of the publications"
        assert len(frames) < cut_after
        stuck.send_close(4509)
        assert stuck.next_message(5) == ("eof",), "no EOF after the close handshake"
        m = metrics(srv.port)
        assert total(m, "wsed_connections_closed_total", reason="slow_consumer") == 1
        assert (total(m, "wsed_slow_consumer_total", action="disconnect") or 0) >= 1
        assert total(m, "wsed_connections_open") == 100
        print("cut after %d messages of 16 KB; the stuck client had %d queued frames" % (cut_after, len(frames)))
        for c in others:
            c.close()


@limit(90)
def test_fanout_slow_consumer_drop_keeps_connection_whole_frames():
    with fan("--max-outbound-bytes", "64KiB", "--compression-threshold", "0", "--slow-consumer", "drop") as srv:
        stuck, others = slow_setup(srv, 100)
        api = Api(srv.port)
        drainer = H.Drainer(others, 80, expect=bytearray())
        sent = []
        drops = 0
        for step in range(160):
            publish_paced(api, drainer, sent, 4)
            drops = total(metrics(srv.port), "wsed_slow_consumer_total", action="drop") or 0
            if drops >= 8:
                break
        assert drops > 0, "no drop counted after %d messages of 16 KB to a client that never reads" % len(sent)
        time.sleep(0.1)
        drainer.stop()
        check_drained(drainer, "100 subscribers beside a dropping slow consumer")
        m = metrics(srv.port)
        assert not total(m, "wsed_connections_closed_total", reason="slow_consumer"), "drop mode closed a connection"
        assert total(m, "wsed_connections_open") == 101
        # The stuck client reads now: whole frames, valid JSON, an ordered subsequence of seqs.
        frames, code, eof, rest = read_everything(stuck, 1.0)
        assert code is None and not eof and rest == b"", (code, eof, rest[:40])
        seqs = [json.loads(f)["p"]["seq"] for f in frames]
        assert seqs == sorted(set(seqs)) and set(seqs) <= set(range(len(sent))), seqs
        assert all(f == wire(big(s)) for f, s in zip(frames, seqs)), "a partly sent or altered frame"
        assert len(seqs) < len(sent)
        drops = total(metrics(srv.port), "wsed_slow_consumer_total", action="drop")
        assert drops == len(sent) - len(seqs), "drops counted %s, messages missing at the stuck client %d" % (
            drops, len(sent) - len(seqs))
        # Still subscribed and served.
        st, _, doc = post_once(srv.port, [{"topic": "big", "message": {"t": "after", "p": {}}}])
        assert st == 200
        raw, _ = next_json(stuck, 5, "(publication after the drain)")
        assert raw == wire({"t": "after", "p": {}}), raw
        api.close()
        print("stuck client got %d of %d; %d dropped" % (len(seqs), len(sent), drops))
        for c in others + [stuck]:
            c.close()


@limit(60)
def test_fanout_direct_send_partial_then_queue_in_order():
    """A publication to a connection with nothing queued is sent from the shared frame itself
    (no queue). Here that first send is a 6 MB frame (past the kernel's send buffer, 4 MiB at most) to a
    client with a 4 KiB receive buffer,
    so the kernel takes only part of it; 50 small publications queue behind it, then a ping. The
    client, reading only now, gets all of it byte for byte in order, and the server's queued-bytes
    gauge returns to 0 once the client has read everything."""
    pad = "x" * 6_000_000
    with fan("--max-api-body", "8MiB", "--max-outbound-bytes", "16MiB", "--compression-threshold", "0") as srv:
        c = ws_client(srv.port, "reader", rcvbuf=4096)
        subscribe_ok(c, ["direct"])
        first = {"t": "big", "p": {"seq": 0, "pad": pad}}
        small = [{"t": "tick", "p": {"seq": i}} for i in range(1, 51)]
        st, _, doc = post_once(srv.port, [{"topic": "direct", "message": first}])
        assert st == 200 and doc == {"accepted": 1}, (st, doc)
        time.sleep(0.2)   # the direct send is in the kernel, partly taken
        st, _, doc = post_once(srv.port, [{"topic": "direct", "message": m} for m in small])
        assert st == 200 and doc == {"accepted": 50}, (st, doc)
        m = metrics(srv.port)
        assert (total(m, "wsed_outbound_queued_bytes") or 0) > 0, "nothing left queued behind a 4 KiB receive buffer"
        got = []
        for _ in range(51):
            msg = c.next_message(10)
            assert msg and msg[0] == "text", "message %d: %r" % (len(got), msg and msg[:1])
            got.append(msg[1])
        assert got == [wire(first)] + [wire(x) for x in small], "frames out of order or altered"
        ping_pong(c, 7)
        deadline = time.time() + 5
        while time.time() < deadline and total(metrics(srv.port), "wsed_outbound_queued_bytes"):
            time.sleep(0.05)
        assert total(metrics(srv.port), "wsed_outbound_queued_bytes") == 0
        c.close()


@limit(60)
def test_fanout_churn_while_publishing():
    """While the API publishes 8,000 ticks: connections come, subscribe, read a little and go
    (half of them with a TCP reset), three never read, twenty stay. Each newcomer's stream is
    contiguous from its first tick; the twenty get every tick in order. Then the three get 5 MB
    each (past the kernel's buffers, --slow-consumer drop: their queues stay full) and the server
    stops cleanly with those shared frames queued (no leak, no sanitizer report, exit 0)."""
    import socket
    import struct
    import threading
    n_batches, batch = 40, 200
    with fan("--max-outbound-bytes", "256KiB", "--slow-consumer", "drop", "--compression-threshold", "0") as srv:
        steady = [ws_client(srv.port, "steady%d" % i) for i in range(20)]
        for c in steady:
            subscribe_ok(c, ["churn"])
        stuck = [ws_client(srv.port, "stuck%d" % i, rcvbuf=4096) for i in range(3)]
        for c in stuck:
            subscribe_ok(c, ["churn", "stuckbig"])
        drainer = H.Drainer(steady, 50)
        errors = []

        def publisher():
            try:
                api = Api(srv.port)
                for b in range(n_batches):
                    st, _, doc = api.post([{"topic": "churn", "message": tick(b * batch + i)} for i in range(batch)])
                    assert st == 200 and doc == {"accepted": batch}, (b, st, doc)
                    time.sleep(0.02)
                api.close()
            except BaseException as e:   # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        cycles = fed = 0
        while t.is_alive() and cycles < 200:
            c = ws_client(srv.port, "churn%d" % cycles)
            subscribe_ok(c, ["churn", "other"])
            seqs = []
            for _ in range(5):
                m = c.next_message(0.5)
                if m is None:
                    break
                seqs.append(json.loads(m[1])["p"]["seq"])
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, \
                "newcomer %d: not contiguous %r" % (cycles, seqs)
            fed += bool(seqs)
            if cycles % 2:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                c.send_close(1000)
            c.close()
            cycles += 1
        t.join(30)
        assert not t.is_alive(), "publisher did not finish"
        assert fed >= 1, "none of %d newcomers got a tick while the publisher ran" % cycles
        assert not errors, errors[0]
        expected = [wire(tick(n)) for n in range(n_batches * batch)]
        drainer.wait_all(len(frames_of(expected)), 20)
        time.sleep(0.1)
        drainer.stop()
        check_streams(steady, expected, "20 steady subscribers during churn")
        assert cycles >= 10, "only %d churn cycles" % cycles
        print("%d newcomers came and went during %d publications" % (cycles, n_batches * batch))
        for c in steady:
            c.close()
        api = Api(srv.port)
        for b in range(11):
            st, _, doc = api.post([{"topic": "stuckbig", "message": big(b * 32 + i)} for i in range(32)])
            assert st == 200, (st, doc)
        api.close()
        drops = wait_drops(srv.port)
        assert drops, "the never-reading clients' queues did not fill (no drop counted)"
        # The stuck ones stay: the server is stopped with frames queued to them.


def wait_drops(port, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        v = total(metrics(port), "wsed_slow_consumer_total", action="drop") or 0
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# 10. --admin-listen
# ---------------------------------------------------------------------------------------------

def test_fanout_admin_listen_moves_http_endpoints():
    admin = H.free_port()
    with fan("--admin-listen", "127.0.0.1:%d" % admin) as srv:
        for path in ("/metrics", "/healthz", "/readyz"):
            st, _, _, body = H.http_get(srv.port, path)
            assert st == 404, ("main port", path, st)
            st, _, _, body = H.http_get(admin, path)
            assert st == 200, ("admin port", path, st, body[:100])
            if path == "/readyz":
                assert body == b"ready\n", body
        st, _, _, _ = H.http_get(srv.port, "/")
        assert st == 200, "the demo page stays on the main port: %s" % st
        c = H.HttpConn(srv.port)
        c.send(publish_request([{"broadcast": True, "message": {"t": "x"}}]))
        r = c.read_response(5)
        assert r is not None and r[0] == 404, r
        c.close()
        ws = ws_client(srv.port)   # WebSockets still upgrade on the main port
        subscribe_ok(ws, ["adm"])
        msg = {"t": "adm", "p": {"n": 1}}
        st, _, doc = post_once(admin, [{"topic": "adm", "message": msg}])
        assert st == 200 and doc == {"accepted": 1}, (st, doc)
        raw, _ = next_json(ws, 5, "(publication through the admin port)")
        assert raw == wire(msg), raw
        m = metrics(admin)
        assert total(m, "wsed_connections_open") == 1
        assert total(m, "wsed_api_requests_total", result="ok") == 1
        ws.close()
