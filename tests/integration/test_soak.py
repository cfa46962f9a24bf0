"""The soak, short (issue 13): wsed holding 2,000 WSE connections for 20 s under wse-bench's
sustained-hold (an app ping per connection every 2 s, each PONG checked) while
POST /api/publish broadcasts 2 publications a second: every connection survives, every ping is
answered, every publication reaches every connection (wsed's server pings off, so that the
clients' count of other messages is exactly the publications), and wsed's RSS does not grow after the
warm-up beyond a loose bound. perf/soak.py is the long version (100,000 connections, 10 minutes);
this test drives the same code (its hold()) against a supervised wsed.

Run with tests/integration/run_tests.py -k soak (under /usr/bin/python3). The wse-bench binary is
found next to the wsed binary under test (or $WSE_BENCH_BIN). Only 127.0.0.1; every wait is
bounded; the server and the bench are stopped by PID.
"""

import argparse
import os
import sys
import tempfile

import wsed_harness as H

sys.path.insert(0, os.path.join(H.REPO, "perf"))
import soak as S  # noqa: E402

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
BENCH = os.environ.get("WSE_BENCH_BIN") or os.path.join(os.path.dirname(os.path.dirname(BIN)), "tools", "wse-bench")
SAN = os.environ.get("WSED_SANITIZERS") == "1"
limit = H.limit


@limit(60)
def test_soak_2000_connections_20s_survive_with_pings_and_publications():
    assert os.access(BENCH, os.X_OK), "no wse-bench at %s (ninja -C BUILD tools/wse-bench)" % BENCH
    n = 2000
    args = argparse.Namespace(bench=BENCH, connections=n, seconds=20.0, ping_interval=2.0,
                              publish_rate=2.0, publish_stop_before=3.0, sample_every=2.0,
                              warmup=5.0, ramp_timeout=20.0)
    tmp = tempfile.mkdtemp(prefix="wsed-test-soak-")
    key = os.urandom(18).hex()
    key_file = os.path.join(tmp, "api.key")
    with open(key_file, "w") as f:
        f.write(key)
    env = dict(H.SANITIZER_ENV) if SAN else {}
    env["WSED_JWT_SECRET"] = S.BENCH_SECRET
    # No server pings: what the clients receive besides their PONGs is then exactly the
    # publications (perf/soak.py keeps wsed's default 25 s and subtracts them).
    flags = S.wsed_command(BIN, n, 2, key_file)[1:] + ["--ping-interval", "0"]
    with H.running(BIN, *flags, env=env) as srv:
        res = S.hold(args, srv.port, srv.proc.pid, key, tmp, log=lambda _line: None)
    b = res["bench"]
    detail = res.get("bench_tail", "")[-1500:]
    assert res["bench_rc"] == 0, detail
    assert b["opened"] == n and b["open_at_end"] == n and res["survival_pct"] == 100.0, detail
    assert b["errors"]["total"] == 0, b["errors"]
    # Every ping answered: at most one per connection may still be in flight when the bench stops.
    assert res["pings_sent"] >= n * 5, res["pings_sent"]
    assert res["pings_sent"] - n <= res["pongs"] <= res["pings_sent"], (res["pings_sent"], res["pongs"])
    # Every publication reached every connection (the publisher stops 3 s before the end).
    assert res["publications_accepted"] >= 20 and not res["publish_failures"], res["publish_failures"]
    assert res["client_received_publications"] == res["expected_deliveries"], (
        res["client_received_publications"], res["expected_deliveries"])
    assert res["server_deliveries"] == res["expected_deliveries"]
    # wsed closed no WebSocket connection while they were held (its own /metrics requests only).
    assert all(res["samples"][i][2] == n for i in range(len(res["samples"]))), res["samples"]
    # RSS after the warm-up: flat within a loose bound (4 MiB; ASan's allocator: 16 MiB).
    warm = [r for t, r, _, _ in res["samples"] if t >= args.warmup and r]
    assert len(warm) >= 3, res["samples"]
    growth_kib = max(warm) - warm[0]
    assert growth_kib <= (16384 if SAN else 4096), res["samples"]
