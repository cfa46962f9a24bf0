"""wse-bench integration tests: the load generator against the real wsed (echo mode with the raw protocol, WSE mode with the wse protocol).

Run with tests/integration/run_tests.py -k wse_bench (under /usr/bin/python3; PyJWT from Debian's
python3-jwt checks the minted tokens independently). The wse-bench binary is found next to the wsed
binary under test: dirname(dirname($WSED_BIN))/tools/wse-bench. Every scenario runs about a second
at a small tier; each test bounds its waits and stops the server it started (by PID).
"""

import json
import os
import tempfile
import time

import jwt

import wsed_harness as H

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
BENCH = os.path.join(os.path.dirname(os.path.dirname(BIN)), "tools", "wse-bench")
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
                 "sustained-hold", "connection-limit", "pingpong", "echo", "blast"):
        assert "\n" + name in out, name


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
