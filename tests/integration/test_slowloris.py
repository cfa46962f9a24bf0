"""Slowloris, loosely (issue 13): 1,500 sockets trickling their HTTP upgrade (a byte every 0.5 s,
never finished) or, once upgraded, their frames (a byte at a time) against a real wsed, while a
normal client connects (TCP + upgrade + server_ready) 200 times: every connect succeeds and its
p99 stays within a generous bound of the unloaded figure (5x, or 100 ms: 400 ms under the
sanitizers); the trickling handshakes are closed by --handshake-timeout with the documented answer
(none: the socket is closed, no HTTP response) and counted in
wsed_connections_closed_total{reason="handshake_timeout"}; the trickling frames keep their
connections and each frame completed is answered. perf/slowloris.py is the long version (10,000
sockets); this test runs its trickler process and its normal client.

Run with tests/integration/run_tests.py -k slowloris (under /usr/bin/python3). Only 127.0.0.0/8
(the tricklers bind to 127.0.0.2..5); every wait is bounded; every process is stopped by PID.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import wsed_harness as H

sys.path.insert(0, os.path.join(H.REPO, "perf"))
import slowloris as S  # noqa: E402

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
SAN = os.environ.get("WSED_SANITIZERS") == "1"
limit = H.limit
SOCKETS = 1500


def env():
    e = dict(H.SANITIZER_ENV) if SAN else {}
    e["WSED_JWT_SECRET"] = S.SECRET
    return e


def p99_bound_ms(unloaded_p99_ms):
    return max(5 * unloaded_p99_ms, 400.0 if SAN else 100.0)


def start_trickler(port, mode, seconds, interval, status, spread):
    cmd = [sys.executable, os.path.join(H.REPO, "perf", "slowloris.py"), "trickle", "--port", str(port),
           "--mode", mode, "--sockets", str(SOCKETS), "--interval", str(interval), "--sources", "4",
           "--seconds", str(seconds), "--spread", str(spread), "--ramp-per-s", "3000", "--status", status]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    H.track(proc)
    return proc


def finish_trickler(proc):
    """SIGTERM (the trickler closes its sockets and prints its figures); its JSON."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def loaded(mode, interval, server_args, wait_after_ramp_s, spread):
    """(unloaded, loaded connect summaries, trickler figures, metrics before / after the load)."""
    tok = S.token()
    status = tempfile.mktemp(prefix="wsed-test-slowloris-", suffix=".json")
    # wsed's default --max-pending-handshakes (16384): the defaults must hold against this.
    with H.running(BIN, "--mode", "wse", "--workers", "1", *server_args, env=env()) as srv:
        for _ in range(20):
            S.connect_once(srv.port, tok)
        unloaded = S.measure_connects(srv.port, tok, 200, 0.002, 25)
        assert unloaded["ok"] == 200, unloaded
        proc = start_trickler(srv.port, mode, 40, interval, status, spread)
        try:
            st = S.wait_status(status, lambda s: s["ramped"], 15)
            assert st is not None, "the tricklers did not ramp"
            time.sleep(wait_after_ramp_s)
            before = H.get_metrics(srv.port)[0]
            under_load = S.measure_connects(srv.port, tok, 200, 0.002, 25)
            after = H.get_metrics(srv.port)[0]
            figures = finish_trickler(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for p in (status, status + ".tmp"):
                if os.path.exists(p):
                    os.unlink(p)
    return unloaded, under_load, figures, before, after


@limit(60)
def test_slowloris_trickling_handshakes_are_timed_out_and_leave_connects_fast():
    # 2 s handshake timeout, a byte every 0.5 s: each trickler sends 3-4 bytes of its ~300-byte
    # request, is closed, and reconnects: the first opens spread over the 2 s, 750 handshake
    # timeouts a second from then on.
    unloaded, under_load, t, before, after = loaded("handshake", 0.5, ["--handshake-timeout", "2s"], 2.5, 2)
    assert under_load["ok"] == 200 and not under_load["failures"], under_load
    assert under_load["p99_ms"] <= p99_bound_ms(unloaded["p99_ms"]), (unloaded, under_load)
    # The documented answer to a request not finished in time: none, the socket is closed.
    assert t["status"] == {} and t["bytes_received"] == 0, t
    assert t["server_closed"] >= SOCKETS, t
    assert 1.9 <= t["server_closed_lifetime_min_s"] and t["server_closed_lifetime_max_s"] <= 3.5, t
    assert t["peak_open"] == SOCKETS and t["connect_failed"] == 0, t
    timeouts = H.metric_value(after, "wsed_connections_closed_total", reason="handshake_timeout")
    timeouts_before = H.metric_value(before, "wsed_connections_closed_total",
                                     reason="handshake_timeout")
    assert timeouts >= SOCKETS and timeouts - timeouts_before > 0, (timeouts_before, timeouts)
    # Every one was a pending handshake under the cap: none was refused.
    assert H.metric_value(after, "wsed_connections_rejected_total", reason="pending_handshakes") == 0


@limit(60)
def test_slowloris_trickling_frames_keep_their_connections_and_leave_connects_fast():
    # A byte of a 58-byte masked WSE ping frame every 0.05 s: a frame completes every ~3 s.
    unloaded, under_load, t, before, after = loaded("frames", 0.05, [], 4.0, 0)
    assert under_load["ok"] == 200 and not under_load["failures"], under_load
    assert under_load["p99_ms"] <= p99_bound_ms(unloaded["p99_ms"]), (unloaded, under_load)
    assert t["upgraded"] == SOCKETS and t["server_closed"] == 0 and t["open_at_end"] == SOCKETS, t
    assert t["frames_completed"] >= SOCKETS // 2, t
    assert H.metric_value(after, "wsed_connections_open") >= SOCKETS
    # Each completed ping frame is answered with a PONG (but the few completed just before the
    # trickler stopped), and counted.
    assert t["frames_completed"] - 50 <= t["pongs"] <= t["frames_completed"], t
    pings = H.metric_value(after, "wsed_wse_messages_total", kind="ping")
    assert pings >= t["pongs"] - 50, (pings, t)
