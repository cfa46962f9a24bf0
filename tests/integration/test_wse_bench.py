"""wse-bench integration tests: the load generator against the real wsed (echo mode with the raw protocol, WSE mode with the wse protocol, fan-out with the publish API).

Run with tests/integration/run_tests.py -k wse_bench (under /usr/bin/python3; PyJWT from Debian's
python3-jwt checks the minted tokens independently). The wse-bench binary is found next to the wsed
binary under test: dirname(dirname($WSED_BIN))/tools/wse-bench, or $WSE_BENCH_BIN. Every scenario runs about a second
at a small tier; each test bounds its waits and stops the server it started (by PID).
"""

import json
import os
import tempfile
import time

import jwt

import wsed_harness as H

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
# WSE_BENCH_BIN: another wse-bench (a wsed from one build tree, the bench from another).
BENCH = os.environ.get("WSE_BENCH_BIN") or os.path.join(os.path.dirname(os.path.dirname(BIN)), "tools", "wse-bench")
SAN = os.environ.get("WSED_SANITIZERS") == "1"
SECRET = "integration-secret-at-least-32-bytes-long"
limit = H.limit


def run_bench(*args, timeout=60):
    """(rc, stdout, stderr) of wse-bench with args."""
    return H.run_cmd([BENCH] + [str(a) for a in args], timeout=timeout)


# Scenarios that send as fast as the window allows: in WSE mode they run with the inbound rate
# limit off (--inbound-rate 0), or the server's per-connection limit would be what they measure.
FLOODS = {"throughput", "size-matrix", "format-comparison", "echo", "pingpong", "blast"}


def scenario(name, *extra, protocol="raw"):
    """Run one scenario against wsed (raw: --mode echo; wse: --mode wse with the bench's JWT
    secret, issuer and audience, and --inbound-rate 0 for a flood); return (markdown, the test's
    JSON). wsed must then exit 0 on SIGTERM without a sanitizer report."""
    san = dict(H.SANITIZER_ENV) if SAN else {}
    if protocol == "raw":
        server = H.running(BIN, "--mode", "echo", "--workers", "1", env=san)
    else:
        rate = ["--inbound-rate", "0"] if name in FLOODS else []
        server = H.running(BIN, "--mode", "wse", "--workers", "1", "--jwt-issuer", "wse-bench",
                           "--jwt-audience", "wse-bench", *rate, env=dict(san, WSED_JWT_SECRET=SECRET))
    with server as srv, tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        auth = ["--secret", SECRET] if protocol == "wse" else []
        rc, out, err = run_bench("--protocol", protocol, "--port", srv.port, "--test", name, *auth,
                                 "--tiers", "100", "--duration", "1", "--threads", "2",
                                 "--server-pid", srv.proc.pid, "--json", path, *extra)
        assert rc == 0, "wse-bench %s exited %s\nstdout: %s\nstderr: %s" % (name, rc, out[-3000:], err[-2000:])
        with open(path) as f:
            doc = json.load(f)
    assert doc["errors"] == 0, doc
    test = doc["tests"][name]
    assert test["errors"] == 0, test
    assert test["rows"], test
    for row in test["rows"]:
        assert row["errors"]["total"] == 0, row
        assert row["failed"] == 0, row
        assert row["opened"] == row["connections"], row
    assert "| " in out and "## Test" in out, out
    return out, test


def test_wse_bench_token_verifies_with_pyjwt():
    rc, out, err = run_bench("--print-token", "--secret", SECRET, timeout=10)
    assert rc == 0, err
    token = out.strip()
    assert token.count(".") == 2 and "=" not in token, token
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="wse-bench", issuer="wse-bench")
    assert claims["sub"] == "bench-user", claims
    assert claims["iss"] == "wse-bench" and claims["aud"] == "wse-bench", claims
    assert claims["exp"] - claims["iat"] == 3600, claims
    assert abs(claims["iat"] - time.time()) < 60, claims
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    try:
        jwt.decode(token, SECRET + "x", algorithms=["HS256"], audience="wse-bench")
        raise AssertionError("a wrong secret verified")
    except jwt.InvalidSignatureError:
        pass
    rc, out, _ = run_bench("--print-token", "--secret", SECRET, "--sub", "user-7", timeout=10)
    assert jwt.decode(out.strip(), SECRET, algorithms=["HS256"], audience="wse-bench")["sub"] == "user-7"


def test_wse_bench_help_documents_every_scenario():
    rc, out, _ = run_bench("--help", timeout=10)
    assert rc == 0
    for name in ("connection-storm", "ping-latency", "throughput", "size-matrix", "format-comparison",
                 "sustained-hold", "connection-limit", "pingpong", "echo", "blast", "fanout-broadcast",
                 "broadcast-all"):
        assert "\n" + name in out, name
    for flag in ("--publisher", "--api-key-file", "--publish-batch", "--publish-rate", "--metrics-port"):
        assert flag in out, flag


@limit(60)
def test_wse_bench_connection_storm():
    out, t = scenario("connection-storm")
    row = t["rows"][0]
    assert row["accept_rate"] > 0 and row["handshake_ms"]["samples"] == 100 and row["handshake_ms"]["p50"] > 0, row
    assert "Accept Rate" in out


@limit(60)
def test_wse_bench_ping_latency():
    _, t = scenario("ping-latency", "--pings", "20")
    row = t["rows"][0]
    assert row["pings"] == 2000, row
    assert row["latency_ms"]["p50"] > 0 and row["latency_ms"]["max"] >= row["latency_ms"]["p99"], row


@limit(60)
def test_wse_bench_wse_protocol_against_wsed_wse_mode():
    """The WSE handshake end to end: JWT cookie accepted, server_ready awaited, client_hello sent;
    app pings answered with PONG by wsed --mode wse; inbound messages counted as sent."""
    _, t = scenario("connection-storm", protocol="wse")
    assert t["rows"][0]["handshake_ms"]["samples"] == 100, t["rows"][0]
    _, t = scenario("ping-latency", "--pings", "10", protocol="wse")
    row = t["rows"][0]
    assert row["pings"] == 1000 and row["latency_ms"]["p50"] > 0, row
    # Inbound only, counted as the kernel accepts each message's last byte (short sends count the
    # whole messages they carried). With TCP_NOTSENT_LOWAT on its sockets wse-bench queues little
    # unsent data, so sends track what the server reads and even an ASan server shows a rate
    # within the one-second window (before, send CQEs could stall for seconds: 0 msg/s).
    _, t = scenario("throughput", protocol="wse")
    row = t["rows"][0]
    assert row["sent_msg_per_s"] > 0 and row["sent_bytes"] > 0, row


@limit(60)
def test_wse_bench_throughput():
    _, t = scenario("throughput")
    row = t["rows"][0]
    assert row["msg_per_s"] > 0 and row["mb_per_s"] > 0 and row["sent_msg_per_s"] > 0, row
    assert 175 <= row["payload_bytes"] <= 194, row
    assert row["server"]["user_s"] + row["server"]["sys_s"] > 0, row


@limit(60)
def test_wse_bench_size_matrix():
    _, t = scenario("size-matrix", "--sizes", "64,4096")
    assert [r["size_bytes"] for r in t["rows"]] == [64, 4096], t
    for row in t["rows"]:
        assert row["msg_per_s"] > 0 and row["mb_per_s"] > 0, row


@limit(60)
def test_wse_bench_format_comparison():
    _, t = scenario("format-comparison")
    formats = {r["format"]: r for r in t["rows"]}
    assert set(formats) == {"json", "msgpack", "compressed"}, t
    for row in formats.values():
        assert row["msg_per_s"] > 0, row
    assert formats["msgpack"]["wire_payload_bytes"] < formats["json"]["wire_payload_bytes"]


@limit(60)
def test_wse_bench_sustained_hold():
    _, t = scenario("sustained-hold", "--ping-interval", "0.2")
    row = t["rows"][0]
    assert row["survival_pct"] == 100 and row["disconnects"] == 0, row
    assert row["pings"] >= 100, row
    assert row["server"]["rss_loaded_kib"] > 0, row


@limit(60)
def test_wse_bench_connection_limit():
    out, t = scenario("connection-limit", "--limit-start", "50", "--max-conns", "200")
    assert [r["connections"] for r in t["rows"]] == [50, 100, 200], t
    assert all(r["result"] == "OK" for r in t["rows"]), t
    assert t["summary"]["max_stable"] == 200 and not t["summary"]["os_limited"], t
    assert "Max stable connections: 200+" in out


@limit(60)
def test_wse_bench_pingpong():
    _, t = scenario("pingpong")
    row = t["rows"][0]
    assert row["window"] == 1 and row["recv_msg_per_s"] > 0 and row["latency_ms"]["p50"] > 0, row


@limit(60)
def test_wse_bench_echo():
    _, t = scenario("echo", "--window", "8")
    row = t["rows"][0]
    assert row["window"] == 8 and row["recv_msg_per_s"] > 0 and row["sent_msg_per_s"] > 0, row


@limit(60)
def test_wse_bench_blast():
    _, t = scenario("blast")
    row = t["rows"][0]
    assert row["sent_msg_per_s"] > 0 and row["recv_msg_per_s"] > 0, row


# ---- fanout-broadcast (issue 8): the publish API / a WSE publisher against wsed's fan-out ---------
# These need a wsed with topics and the publish API (--api-key-file); against an older binary they
# fail (wsed refuses the flag), as they should.

API_KEY = "integration-api-key-0123456789"


def key_file(tmp, name, key):
    """A key file tmp/name holding key (and a newline); returns its path."""
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(key + "\n")
    return path


def bench_test(path, name):
    """Test `name` of the --json report at path, or None when wse-bench wrote none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["tests"][name]


def fanout(name, *extra, server_args=(), key=API_KEY, threads=2):
    """Run fanout scenario `name` at 100 subscribers for ~1 s against wsed --mode wse --workers 2
    with an API key file; return (rc, markdown, the test's JSON or None, stderr)."""
    san = dict(H.SANITIZER_ENV) if SAN else {}
    with tempfile.TemporaryDirectory() as tmp:
        server_key = key_file(tmp, "server.key", API_KEY)
        bench_key = key_file(tmp, "bench.key", key)
        server = H.running(BIN, "--mode", "wse", "--workers", "2", "--jwt-issuer", "wse-bench",
                           "--jwt-audience", "wse-bench", "--api-key-file", server_key,
                           *server_args, env=dict(san, WSED_JWT_SECRET=SECRET))
        with server as srv:
            path = os.path.join(tmp, "out.json")
            rc, out, err = run_bench("--protocol", "wse", "--port", srv.port, "--test", name,
                                     "--secret", SECRET, "--api-key-file", bench_key,
                                     "--tiers", "100", "--duration", "1", "--threads", threads,
                                     "--server-pid", srv.proc.pid, "--json", path, *extra,
                                     timeout=60)
            test = bench_test(path, name)
    return rc, out, test, err


def check_delivered_all(rc, out, t, err):
    """Every subscriber got every publication the server took, once and in order."""
    assert rc == 0, "wse-bench exited %s\nstdout: %s\nstderr: %s" % (rc, out[-3000:], err[-2000:])
    assert t["errors"] == 0, t
    row = t["rows"][0]
    assert row["subscribers"] == 100 and row["subscribed"] == 100, row
    assert row["published_total"] > 0 and row["published"] > 0, row
    assert row["deliveries_total"] == row["deliveries_expected"] == 100 * row["published_total"], row
    assert row["gaps"] == 0 and row["duplicates"] == 0 and row["reorders"] == 0, row
    assert row["subscribers_with_gaps"] == 0 and row["lost_connections"] == 0, row
    assert row["publisher_error"] == "", row
    assert row["deliveries_per_s"] > 0 and row["mb_per_s"] > 0, row
    assert row["latency_ms"]["samples"] > 0 and row["latency_ms"]["p50"] > 0, row
    assert row["latency_ms"]["p999"] >= row["latency_ms"]["p50"], row
    # /metrics was read: no slow consumer, and the server queued at least what arrived.
    assert row["slow_consumer"] is not None, row
    assert row["slow_consumer"]["drop"] == 0 and row["slow_consumer"]["disconnect"] == 0, row
    assert row["slow_consumer"]["server_deliveries"] >= row["deliveries_total"], row
    assert "Deliveries/s" in out and "| 100 |" in out, out
    return row


@limit(90)
def test_wse_bench_fanout_broadcast_http_api():
    """Publisher: POST /api/publish, pipelined batches; 100 WSE subscribers of bench_topic."""
    rc, out, t, err = fanout("fanout-broadcast", "--publish-batch", "50", "--publish-inflight", "4")
    row = check_delivered_all(rc, out, t, err)
    assert row["publisher"] == "api" and row["topic"] == "bench_topic", row
    assert row["publish_sent_total"] == row["published_total"] + row["publish_busy"], row


@limit(90)
def test_wse_bench_fanout_broadcast_at_a_rate_and_broadcast_all():
    """--publish-rate holds the publication rate; broadcast-all reaches every connection."""
    rc, out, t, err = fanout("fanout-broadcast", "--publish-rate", "2000", "--publish-batch", "10")
    row = check_delivered_all(rc, out, t, err)
    assert 1000 <= row["published_per_s"] <= 2600, row  # 1 s window on a loaded box
    rc, out, t, err = fanout("broadcast-all", "--publish-rate", "5000")
    row = check_delivered_all(rc, out, t, err)
    assert row["broadcast"] is True, row


@limit(90)
def test_wse_bench_fanout_broadcast_wse_publisher():
    """Publisher: one WSE connection whose token may publish to bench_*."""
    rc, out, t, err = fanout("fanout-broadcast", "--publisher", "wse",
                             server_args=("--inbound-rate", "0"))
    row = check_delivered_all(rc, out, t, err)
    assert row["publisher"] == "wse", row


@limit(60)
def test_wse_bench_fanout_broadcast_wrong_key_fails():
    """A refused publisher is an error of the run: exit 3, the 401 in the report."""
    rc, out, t, err = fanout("fanout-broadcast", key="not-the-key-0123456789")
    assert rc == 3, (rc, out[-2000:], err[-2000:])
    row = t["rows"][0]
    assert "401" in row["publisher_error"] and row["published_total"] == 0, row
    assert t["errors"] > 0, t


# ---- --publisher server --protocol raw: any WebSocket server that publishes fanout_tick ----------

def tick_server(rate, skip_every=0):
    """A python3-websockets server on 127.0.0.1 that sends every connection one dense seq of
    fanout_tick text frames at `rate`/s (skipping each seq divisible by skip_every when set), like
    the reference's bench_fanout_server. Returns (port, stop())."""
    import asyncio
    import threading
    import websockets

    conns = set()
    started = threading.Event()
    port = []
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    async def handler(ws, path=None):
        conns.add(ws)
        try:
            await ws.wait_closed()
        finally:
            conns.discard(ws)

    async def main():
        async with websockets.serve(handler, H.HOST, 0, compression=None) as srv:
            port.append(srv.sockets[0].getsockname()[1])
            started.set()
            seq, t0 = 1, time.monotonic()
            while not stopping.is_set():
                due = int((time.monotonic() - t0) * rate)
                while seq <= due:
                    if skip_every and seq % skip_every == 0:
                        seq += 1
                        continue
                    msg = '{"c":"U","t":"fanout_tick","p":{"seq":%d,"ts_us":%d,"s":"ES","px":5234.75,"q":2}}' % (
                        seq, int(time.time() * 1e6))
                    websockets.broadcast(conns, msg)
                    seq += 1
                await asyncio.sleep(0.001)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(10), "tick server did not start"

    def stop():
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
    return port[0], stop


def raw_fanout(skip_every=0):
    port, stop = tick_server(2000, skip_every)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.json")
            rc, out, err = run_bench("--protocol", "raw", "--publisher", "server", "--path", "/",
                                     "--port", port, "--test", "fanout-broadcast", "--tiers", "20",
                                     "--duration", "1", "--threads", "1", "--json", path, timeout=60)
            with open(path) as f:
                t = json.load(f)["tests"]["fanout-broadcast"]
    finally:
        stop()
    return rc, out, t, err


@limit(60)
def test_wse_bench_fanout_raw_counts_a_server_that_publishes_by_itself():
    """--protocol raw --publisher server: no JWT, no WSE handshake, no subscribe; fanout_tick text
    frames from another WebSocket server counted, seq tracked from the first one received."""
    rc, out, t, err = raw_fanout()
    assert rc == 0, (rc, out[-2000:], err[-2000:])
    row = t["rows"][0]
    assert row["subscribers"] == 20 and row["publisher"] == "server", row
    assert row["gaps"] == 0 and row["duplicates"] == 0, row
    assert row["deliveries_total"] >= 20 * 1000, row  # 2,000/s for >= 1 s, each to 20
    assert row["published_per_s_derived"] is True and 1000 <= row["published_per_s"] <= 3000, row
    assert row["latency_ms"]["samples"] > 0, row
    assert row["slow_consumer"] is None, row  # no wsed /metrics there: not read, not invented
    assert "~" in out  # the derived publication rate is marked


@limit(60)
def test_wse_bench_fanout_raw_counts_gaps_of_a_lossy_server():
    """The same server skipping every 50th seq: every subscriber sees the gaps, exit code 3."""
    rc, out, t, err = raw_fanout(skip_every=50)
    assert rc == 3, (rc, out[-2000:], err[-2000:])
    row = t["rows"][0]
    assert row["gaps"] > 0 and row["subscribers_with_gaps"] == 20, row
    assert row["duplicates"] == 0, row
    assert t["errors"] >= row["gaps"], t


@limit(90)
def test_wse_bench_fanout_slow_consumer_drops_are_the_gaps():
    """No flow control (--publish-window 0) against --slow-consumer drop: the drops wsed counts in
    /metrics are exactly the seqs the subscribers miss (exit 3: gaps are loss)."""
    rc, out, t, err = fanout("fanout-broadcast", "--publish-window", "0", threads=1,
                             server_args=("--slow-consumer", "drop", "--max-outbound-bytes", "16KiB"))
    row = t["rows"][0]
    assert row["slow_consumer"] is not None, row
    drops = row["slow_consumer"]["drop"]
    assert row["gaps"] == drops and row["slow_consumer"]["disconnect"] == 0, row
    assert row["lost_connections"] == 0 and row["duplicates"] == 0, row
    if not SAN:  # a sanitizer build may be slow enough for one client thread to keep up
        assert drops > 0 and rc == 3, (rc, row)
    assert rc == (3 if drops else 0), (rc, out[-2000:], err[-2000:])


@limit(90)
def test_wse_bench_fanout_against_the_example_server():
    """--publisher server against tools/examples/wse_fanout_server (built next to wsed): every
    connection subscribed at connect, one dense p.seq; counted with 0 gaps both ways: the WSE
    handshake (no secret: anonymous) and --protocol raw."""
    example = os.path.join(os.path.dirname(os.path.dirname(BIN)), "tools", "wse_fanout_server")
    assert os.path.exists(example), "example not built: %s" % example
    for protocol, path in (("wse", "/wse"), ("raw", "/")):
        with H.supervised(H.Server([example, "--port", "0", "--workers", "2"],
                                   name="wse_fanout_server")) as srv, \
                tempfile.TemporaryDirectory() as tmp:
            out_path = os.path.join(tmp, "out.json")
            rc, out, err = run_bench("--protocol", protocol, "--path", path, "--publisher", "server",
                                     "--port", srv.port, "--test", "fanout-broadcast",
                                     "--tiers", "100", "--duration", "1", "--threads", "2",
                                     "--json", out_path, timeout=60)
            assert rc == 0, (protocol, rc, out[-2000:], err[-2000:])
            with open(out_path) as f:
                row = json.load(f)["tests"]["fanout-broadcast"]["rows"][0]
        assert row["subscribers"] == 100 and row["gaps"] == 0 and row["duplicates"] == 0, row
        assert row["deliveries_per_s"] > 0 and row["latency_ms"]["samples"] > 0, row


# ---- fanout-multi (issue 9): two wsed instances joined through a real redis-server ------------

def fanout_multi(*extra):
    """fanout-multi at 100 subscribers for ~1 s: two wsed --workers 1 on one Redis (started here
    on a free port), subscribers alternating A / B; returns (rc, markdown, the test's JSON, stderr)."""
    import redis_harness as R
    san = dict(H.SANITIZER_ENV) if SAN else {}
    with tempfile.TemporaryDirectory() as tmp, R.RedisServer() as redis:
        key = key_file(tmp, "api.key", API_KEY)
        args = ("--mode", "wse", "--workers", "1", "--jwt-issuer", "wse-bench", "--jwt-audience", "wse-bench",
                "--api-key-file", key, "--redis-url", redis.url())
        env = dict(san, WSED_JWT_SECRET=SECRET)
        with H.running(BIN, *args, env=env) as a, H.running(BIN, *args, env=env) as b:
            path = os.path.join(tmp, "out.json")
            rc, out, err = run_bench("--protocol", "wse", "--port", a.port, "--port-b", b.port,
                                     "--test", "fanout-multi", "--secret", SECRET, "--api-key-file", key,
                                     "--redis-url", redis.url(), "--tiers", "100", "--duration", "1",
                                     "--threads", "2", "--json", path, *extra, timeout=90)
            test = bench_test(path, "fanout-multi")
    return rc, out, test, err


def check_multi(rc, out, t, err):
    assert rc == 0, "wse-bench exited %s\nstdout: %s\nstderr: %s" % (rc, out[-3000:], err[-2000:])
    row = t["rows"][0]
    assert row["subscribers"] == 100 and row["subscribed"] == 100, row
    assert row["published_total"] > 0, row
    assert row["deliveries_total"] == row["deliveries_expected"] == 100 * row["published_total"], row
    assert row["gaps"] == 0 and row["duplicates"] == 0 and row["reorders"] == 0, row
    sides = {s["instance"]: s for s in row["sides"]}
    assert set(sides) == {"A", "B"}, row["sides"]
    for name, side in sides.items():  # half of the subscribers on each instance, each got everything
        assert side["connections"] == 50, side
        assert side["deliveries_total"] == side["deliveries_expected"] == 50 * row["published_total"], (name, side)
        assert side["counts"]["gaps"] == 0 and side["counts"]["duplicates"] == 0, (name, side)
        assert side["latency_ms"]["samples"] > 0, (name, side)
    assert "| 100 | B (50) |" in out and "| 100 | **all** |" in out, out
    return row


@limit(120)
def test_wse_bench_fanout_multi_api_publisher_on_a():
    """The publisher posts to A; B's subscribers get every publication through Redis, once."""
    row = check_multi(*fanout_multi())
    assert row["publisher"] == "api", row


@limit(120)
def test_wse_bench_fanout_multi_redis_publisher():
    """The publisher PUBLISHes straight into Redis (a backend): both instances deliver it all."""
    row = check_multi(*fanout_multi("--publisher", "redis"))
    assert row["publisher"] == "redis", row


# ---------------------------------------------------------------------------------------------
# --tls: the workers speak TLS (engine/tls.hpp's client context) to a wsed with a certificate
# ---------------------------------------------------------------------------------------------

def self_signed(tmp, name="server"):
    """A self-signed P-256 certificate for localhost / 127.0.0.1 made with the openssl CLI in tmp;
    returns (cert path, key path)."""
    cert, key = os.path.join(tmp, name + ".crt"), os.path.join(tmp, name + ".key")
    rc, _, err = H.run_cmd(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], timeout=30)
    assert rc == 0, err
    return cert, key


def tls_bench(tmp, tests, *extra, protocol="raw", cert=None, key=None):
    """wse-bench --tls running `tests` (comma-separated) at 100 connections for ~1 s each against
    wsed with --tls-cert-file/--tls-key-file (raw: --mode echo; wse: --mode wse, --inbound-rate 0);
    returns (rc, markdown, the JSON report or None, stderr, wsed's first stdout line)."""
    if cert is None:
        cert, key = self_signed(tmp)
    san = dict(H.SANITIZER_ENV) if SAN else {}
    tls = ["--tls-cert-file", cert, "--tls-key-file", key]
    if protocol == "raw":
        server = H.running(BIN, "--mode", "echo", "--workers", "1", *tls, env=san)
    else:
        server = H.running(BIN, "--mode", "wse", "--workers", "1", "--jwt-issuer", "wse-bench",
                           "--jwt-audience", "wse-bench", "--inbound-rate", "0", *tls,
                           env=dict(san, WSED_JWT_SECRET=SECRET))
    with server as srv:
        path = os.path.join(tmp, "out-%s.json" % protocol)
        auth = ["--secret", SECRET] if protocol == "wse" else []
        rc, out, err = run_bench("--tls", "--protocol", protocol, "--port", srv.port, "--test", tests, *auth,
                                 "--tiers", "100", "--duration", "1", "--pings", "20", "--threads", "2",
                                 "--server-pid", srv.proc.pid, "--json", path, *extra, timeout=90)
        doc = None
        if os.path.exists(path):
            with open(path) as f:
                doc = json.load(f)
        first = srv.first_line
    return rc, out, doc, err, first


def check_clean(rc, out, doc, err, names):
    assert rc == 0, "wse-bench --tls exited %s\nstdout: %s\nstderr: %s" % (rc, out[-3000:], err[-2000:])
    assert doc["config"]["tls"] is True and doc["errors"] == 0, doc["config"]
    assert "over TLS" in out, out[:300]
    for name in names:
        test = doc["tests"][name]
        assert test["errors"] == 0 and test["rows"], test
        for row in test["rows"]:
            assert row["errors"]["total"] == 0, row
            assert row["failed"] == 0 and row["opened"] == row["connections"] == 100, row
    return doc["tests"]


@limit(150)
def test_wse_bench_tls_storm_ping_latency_and_throughput():
    """connection-storm, ping-latency and throughput over TLS against wsed's TLS port (echo mode):
    every handshake (TLS, then the upgrade) completes, every ping is echoed through the TLS
    sessions, the echoes arrive in plain text of the right size (a mismatch would be an error)."""
    with tempfile.TemporaryDirectory() as tmp:
        rc, out, doc, err, first = tls_bench(tmp, "connection-storm,ping-latency,throughput")
        assert first.startswith("wsed") and "wss://" in first, first
        tests = check_clean(rc, out, doc, err, ["connection-storm", "ping-latency", "throughput"])
    storm = tests["connection-storm"]["rows"][0]
    assert storm["accept_rate"] > 0 and storm["handshake_ms"]["samples"] == 100, storm
    assert storm["handshake_ms"]["p50"] > 0, storm
    ping = tests["ping-latency"]["rows"][0]
    assert ping["pings"] == ping["pings_expected"] == 2000, ping
    assert ping["latency_ms"]["p50"] > 0 and ping["latency_ms"]["max"] >= ping["latency_ms"]["p99"], ping
    tput = tests["throughput"]["rows"][0]
    assert tput["msg_per_s"] > 0 and tput["mb_per_s"] > 0 and tput["sent_msg_per_s"] > 0, tput
    assert tput["sent_bytes"] > 0 and tput["reply_bytes"] == tput["replies"] * tput["payload_bytes"], tput
    assert tput["server"]["user_s"] + tput["server"]["sys_s"] > 0, tput


@limit(150)
def test_wse_bench_tls_wse_protocol_and_ca_file():
    """The WSE handshake over TLS (JWT cookie, server_ready, client_hello; PONGs and inbound
    messages through the sessions), with the server's certificate verified against --tls-ca-file
    (the self-signed certificate is its own CA); a CA that did not sign it fails every handshake."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(tmp)
        rc, out, doc, err, _ = tls_bench(tmp, "ping-latency,throughput", "--tls-ca-file", cert,
                                         protocol="wse", cert=cert, key=key)
        tests = check_clean(rc, out, doc, err, ["ping-latency", "throughput"])
        ping = tests["ping-latency"]["rows"][0]
        assert ping["pings"] == 2000 and ping["latency_ms"]["p50"] > 0, ping
        tput = tests["throughput"]["rows"][0]
        assert tput["sent_msg_per_s"] > 0 and tput["sent_bytes"] > 0, tput

        other, _ = self_signed(tmp, "other")
        rc, out, doc, err, _ = tls_bench(tmp, "connection-storm", "--tls-ca-file", other, cert=cert, key=key)
        assert rc == 3, (rc, out[-2000:], err[-2000:])
        row = doc["tests"]["connection-storm"]["rows"][0]
        assert row["opened"] == 0 and row["errors"]["handshake"] == 100, row
        assert "certificate verify failed" in row["errors"]["first"], row["errors"]["first"]


@limit(60)
def test_wse_bench_tls_refuses_plain_http_on_the_tls_port():
    """--tls with a fanout scenario: the HTTP API publisher and /metrics must name a plain port
    (wsed --admin-listen), a WebSocket publisher is refused; --tls-ca-file needs --tls."""
    rc, _, err = run_bench("--tls", "--test", "fanout-broadcast", "--port", "5006", "--api-key-file", "/dev/null")
    assert rc == 2 and "--api-port" in err, (rc, err)
    rc, _, err = run_bench("--tls", "--test", "fanout-broadcast", "--publisher", "server", "--port", "5006")
    assert rc == 2 and "--metrics-port" in err, (rc, err)
    rc, _, err = run_bench("--tls", "--test", "fanout-broadcast", "--publisher", "wse")
    assert rc == 2 and "--publisher wse" in err, (rc, err)
    rc, _, err = run_bench("--tls-ca-file", "/dev/null", "--test", "connection-storm")
    assert rc == 2 and "needs --tls" in err, (rc, err)
    rc, out, _ = run_bench("--help", timeout=10)
    assert rc == 0 and "--tls" in out and "--tls-ca-file" in out and "--admin-listen" in out, out[-2000:]


@limit(120)
def test_wse_bench_tls_fanout_with_the_api_on_the_admin_port():
    """fanout-broadcast with --tls: 100 subscribers over TLS on the main port, the HTTP API
    publisher and /metrics, /readyz on wsed's plain --admin-listen port (--api-port)."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(tmp)
        admin = H.free_port()
        rc, out, t, err = fanout("fanout-broadcast", "--tls", "--api-port", admin, "--publish-batch", "50",
                                 server_args=("--tls-cert-file", cert, "--tls-key-file", key,
                                              "--admin-listen", "127.0.0.1:%d" % admin))
    row = check_delivered_all(rc, out, t, err)
    assert row["publisher"] == "api", row
    assert "over TLS" in out, out[:300]
