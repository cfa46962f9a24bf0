"""GET /metrics against Prometheus's own checker, and the example dashboard and alert rules.

A real wsed (WSE mode, two shards, a real redis-server from redis_harness; and one with TLS on
the main port) is scraped before and after traffic: WebSocket connections, publications through
the HTTP API, through Redis (redis-cli PUBLISH) and from a client, a refused handshake. The
exposition must pass `promtool check metrics` (Debian's prometheus package) with no output at all:
a lint warning fails the test too. Per-shard families carry `shard="i"` and no total series; the
three histograms are cumulative, end in +Inf == _count, and count exactly the traffic made.

docs/alerts.yml must pass `promtool check rules` and the unit tests in docs/alerts_test.yml
(`promtool test rules`); docs/grafana-dashboard.json must parse, and every metric name that its
expressions and the rules' expressions use must be in a real scrape.
Run with tests/integration/run_tests.py -k metrics (under /usr/bin/python3).
"""
import json
import os
import re
import subprocess

import redis_harness as R
import test_fanout as F
import test_redis as TR
import test_tls as T
import test_wsed as WS
import wsed_harness as H

limit = H.limit
PROMTOOL = "/usr/bin/promtool"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = os.path.join(REPO, "docs")
HISTOGRAMS = ("wsed_handshake_duration_seconds", "wsed_fanout_pass_duration_seconds",
              "wsed_delivery_latency_seconds")


def promtool(*args, stdin=None):
    """(exit code, stdout + stderr) of promtool; a missing promtool is a failure, not a skip: it is
    a declared dependency (tools/install-deps.sh installs Debian's prometheus package)."""
    assert os.access(PROMTOOL, os.X_OK), "%s missing: apt-get install prometheus (tools/install-deps.sh)" % PROMTOOL
    p = subprocess.run([PROMTOOL] + list(args), input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=30, cwd=DOCS)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def check_exposition(text, what):
    """promtool check metrics prints nothing and exits 0 (problems and lint warnings both fail)."""
    rc, out = promtool("check", "metrics", stdin=text.encode())
    assert rc == 0 and out.strip() == "", "promtool check metrics on %s: exit %d\n%s" % (what, rc, out)


def samples(text):
    """[(name, labels dict, value)] in exposition order."""
    out = []
    for name, lab in H.parse_metrics(text).items():
        out += [(name, l, v) for l, v in lab]
    return out


def check_no_total_series(text):
    """Every series with a shard label names a shard by number: sums are the consumer's job."""
    shards = {lab["shard"] for _, lab, _ in samples(text) if "shard" in lab}
    assert shards and all(s.isdigit() for s in shards), "shard label values %r" % sorted(shards)
    assert 'shard="total"' not in text


def histogram(m, name):
    """{shard: (sorted [(le, cumulative)], sum, count)}, checking the Prometheus shape: every shard
    has the same le set ending in +Inf, the buckets never decrease, +Inf == _count."""
    by_shard = {}
    for lab, v in m.get(name + "_bucket", []):
        le = float("inf") if lab["le"] == "+Inf" else float(lab["le"])
        by_shard.setdefault(lab["shard"], []).append((le, v))
    assert sorted(by_shard) == ["0", "1"], "%s: buckets for shards %r" % (name, sorted(by_shard))
    out = {}
    les = None
    for shard, buckets in by_shard.items():
        buckets.sort()
        assert les is None or [b[0] for b in buckets] == les, "%s: shards have different le sets" % name
        les = [b[0] for b in buckets]
        assert les[-1] == float("inf") and len(set(les)) == len(les), "%s shard %s: le %r" % (name, shard, les)
        counts = [b[1] for b in buckets]
        assert counts == sorted(counts), "%s shard %s: buckets not cumulative: %r" % (name, shard, buckets)
        count = H.metric_value(m, name + "_count", shard=shard)
        total = H.metric_value(m, name + "_sum", shard=shard)
        assert count == counts[-1], "%s shard %s: _count %s != +Inf bucket %s" % (name, shard, count, counts[-1])
        assert total is not None and total >= 0 and (count or not total), "%s shard %s: _sum %r" % (name, shard, total)
        out[shard] = (buckets, total, count)
    return out


def count_of(m, name):
    return sum(c for _, _, c in histogram(m, name).values())


def sum_of(m, name):
    return sum(s for _, s, _ in histogram(m, name).values())


def scrape(port):
    status, _, _, body = H.http_get(port, "/metrics")
    assert status == 200, "GET /metrics -> %r" % status
    text = body.decode("utf-8", "replace")
    return H.parse_metrics(text), text


# ---------------------------------------------------------------------------------------------
# a scrape after traffic, with Redis
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_metrics_promtool_clean_and_histograms_count_the_traffic():
    with R.RedisServer() as redis, F.fan("--redis-url", redis.url()) as srv:
        TR.wait_readyz([srv], 200, 20, "with Redis")
        m0, text0 = scrape(srv.port)
        check_exposition(text0, "an idle wsed with Redis")
        check_no_total_series(text0)
        for name in HISTOGRAMS:
            assert count_of(m0, name) == 0 and sum_of(m0, name) == 0, "%s moved before any traffic" % name

        # A refused handshake: no 101, so no handshake observation (426, reason version).
        WS.expect_status(srv.port, WS.upgrade_request(version="12"), 426, "Sec-WebSocket-Version: 12")
        n_subs = 8   # subs[0] may publish too (its token's wse_topics.publish)
        subs = [F.ws_client(srv.port, "user%d" % i, acl={"publish": ["news"]} if i == 0 else None)
                for i in range(n_subs)]
        for c in subs:
            F.subscribe_ok(c, ["news"])
        # wsed's Redis subscription for the topic is in place once a PUBLISH reaches a subscriber.
        TR.poll(lambda: int(redis.cli("PUBLISH", "wse:news", F.compact({"t": "probe", "p": {}})).strip()),
               lambda n: n >= 1, 10, lambda n: "PUBLISH wse:news reached %r Redis subscribers" % n)
        n_api = 20
        F.post_once(srv.port, [{"topic": "news", "message": F.tick(i)} for i in range(n_api)])
        redis.cli("PUBLISH", "wse:news", F.compact({"t": "from_redis", "p": {}}))
        subs[0].send_text(F.publish_frame("news", {"t": "from_client", "p": {}}))
        for c in subs:   # each subscriber's stream ends with the client's publication
            F.until_barrier(c, F.wire({"t": "from_client", "p": {}}), 10, "(the client's publication)")

        m1, text1 = scrape(srv.port)
        check_exposition(text1, "wsed with Redis after traffic")
        check_no_total_series(text1)
        rejected = H.metric_value(m1, "wsed_connections_rejected_total", reason="version")
        assert rejected == 1, "rejected{reason=version} = %r" % rejected
        # Handshakes: one observation per 101, none for the 426 (nor for the /metrics scrapes).
        assert count_of(m1, "wsed_handshake_duration_seconds") == n_subs, histogram(m1, "wsed_handshake_duration_seconds")
        assert sum_of(m1, "wsed_handshake_duration_seconds") > 0
        # Delivery latency: one observation per delivery queued from an inbox.
        deliveries = H.metric_value(m1, "wsed_fanout_deliveries_total")
        assert deliveries >= n_subs * (n_api + 1), deliveries
        assert count_of(m1, "wsed_delivery_latency_seconds") == deliveries, \
            (count_of(m1, "wsed_delivery_latency_seconds"), deliveries)
        # Fan-out passes: one per publication per shard that had a subscriber for it.
        pubs = H.metric_value(m1, "wsed_fanout_inbox_drained_total")
        passes = count_of(m1, "wsed_fanout_pass_duration_seconds")
        assert n_api + 1 <= passes <= pubs, (passes, pubs)
        print("handshakes %d, deliveries %d, passes %d of %d drained" % (count_of(m1, "wsed_handshake_duration_seconds"), deliveries, passes, pubs))
        for name in HISTOGRAMS:   # the +Inf bucket holds everything; 10 s holds it all here too
            for shard, (buckets, _, count) in histogram(m1, name).items():
                assert dict(buckets)[10.0] == count, "%s shard %s: an observation over 10 s: %r" % (name, shard, buckets)
        for c in subs:
            c.close()


@limit(30)
def test_metrics_handshake_histogram_kept_alive_upgrade_and_refusals():
    """An upgrade after a kept-alive HTTP answer on the same socket is one observation; refused
    handshakes (426, 400) and plain HTTP requests are none."""
    with H.running(WS.BIN, "--mode", "echo", "--workers", "2") as srv:
        WS.expect_status(srv.port, WS.upgrade_request(version="12"), 426, "Sec-WebSocket-Version: 12")
        WS.expect_status(srv.port, WS.upgrade_request(drop=("Sec-WebSocket-Key",)), 400, "no key")
        s = H.connect(srv.port)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            st, headers, _ = H.read_response_head(s)
            assert st == 200 and "close" not in headers.get("connection", ""), (st, headers)
            m, text = scrape(srv.port)
            assert count_of(m, "wsed_handshake_duration_seconds") == 0, histogram(m, "wsed_handshake_duration_seconds")
            req, _ = H.handshake_request(srv.port)
            s.sendall(req)
            st, _, _ = H.read_response_head(s)
            assert st == 101, st
            m, text = scrape(srv.port)
            check_exposition(text, "wsed --mode echo")
            assert count_of(m, "wsed_handshake_duration_seconds") == 1, histogram(m, "wsed_handshake_duration_seconds")
            assert H.metric_value(m, "wsed_connections_rejected_total") == 2
        finally:
            s.close()


# ---------------------------------------------------------------------------------------------
# TLS: the scrape over https, handshakes that include the TLS handshake
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_metrics_promtool_clean_over_tls():
    with T.tls_server() as srv:
        n = 5
        socks = [T.TLSWS(srv.port) for _ in range(n)]
        status, _, body = T.https_request(srv.port, "GET", "/metrics")
        assert status == 200, status
        text = body.decode("utf-8", "replace")
        check_exposition(text, "wsed with TLS")
        check_no_total_series(text)
        m = H.parse_metrics(text)
        assert H.metric_value(m, "wsed_tls_handshakes_total", result="ok") >= n
        assert count_of(m, "wsed_handshake_duration_seconds") == n, histogram(m, "wsed_handshake_duration_seconds")
        for s in socks:
            s.sock.close()


# ---------------------------------------------------------------------------------------------
# the example alert rules and dashboard
# ---------------------------------------------------------------------------------------------

METRIC_NAME = re.compile(r"\b((?:wsed|process)_[a-z0-9_]+|up)\b")


def names_used(expr):
    """Metric names in a PromQL expression (ours, process_*, and `up`), not label names."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", no_matchers)
    return set(METRIC_NAME.findall(no_groupings))


def dashboard_exprs():
    with open(os.path.join(DOCS, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return dash, exprs


def rule_exprs():
    """The `expr:` lines of docs/alerts.yml (one-line expressions, as written there)."""
    with open(os.path.join(DOCS, "alerts.yml")) as f:
        return [ln.split("expr:", 1)[1].strip() for ln in f if ln.strip().startswith("expr:")]


@limit(30)
def test_metrics_alert_rules_check_and_unit_tests():
    rc, out = promtool("check", "rules", "alerts.yml")
    assert rc == 0 and "SUCCESS" in out and "FAILED" not in out, out
    rc, out = promtool("test", "rules", "alerts_test.yml")
    assert rc == 0 and "SUCCESS" in out, out
    exprs = rule_exprs()
    assert len(exprs) >= 6, exprs
    # The rules' alert names are the ones README documents.
    with open(os.path.join(DOCS, "alerts.yml")) as f:
        names = [ln.split("alert:", 1)[1].strip() for ln in f if ln.strip().startswith("- alert:")]
    with open(os.path.join(os.path.dirname(DOCS), "README.md")) as f:
        readme = f.read()
    assert len(names) == len(exprs), (names, len(exprs))
    missing = [n for n in names if "`%s`" % n not in readme]
    assert not missing, "alerts README does not name: %r" % missing


@limit(60)
def test_metrics_dashboard_and_rules_use_only_exposed_names():
    dash, exprs = dashboard_exprs()
    assert dash.get("title") and dash.get("panels") and len(exprs) >= 9, (dash.get("title"), len(exprs))
    titles = " ".join(p.get("title", "") for p in dash["panels"]).lower()
    for want in ("connections", "reject", "handshake", "delivery", "fan-out", "slow consumer", "redis", "memory"):
        assert want in titles, "no panel about %r in %s" % (want, titles)
    used = set()
    for e in exprs + rule_exprs():
        used |= names_used(e)
    assert "wsed_handshake_duration_seconds_bucket" in used and "up" in used, sorted(used)
    used.discard("up")   # Prometheus's own scrape health series
    # With the optional families on (Redis, recovery, presence): promtool checks those too, and
    # the names are looked up in the fullest exposition.
    with R.RedisServer() as redis, F.fan("--redis-url", redis.url(), "--recovery", "--presence") as srv:
        TR.wait_readyz([srv], 200, 20, "with Redis")
        m, text = scrape(srv.port)
        check_exposition(text, "wsed with Redis, --recovery, --presence")
        for fam in ("wsed_recovery_topics", "wsed_presence_topics", "wsed_redis_up"):
            assert fam in m, "%s missing with its flag on" % fam
    missing = sorted(n for n in used if n not in m)
    assert not missing, "names the dashboard or the rules use that /metrics does not expose: %s" % missing
