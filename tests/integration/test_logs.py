"""wsed's logs (engine/log.hpp): one JSON event per line on stderr when stdout is not a terminal
(and the startup event on stdout), text with --log-format text, --log-level filtering (and
--quiet), repeats beyond a burst folded into one "N similar suppressed" line, and no secret or
token anywhere in the output of a run that goes through the error paths.

Run with tests/integration/run_tests.py -k logs_ (under /usr/bin/python3). The real wsed binary,
real sockets on 127.0.0.1, a real redis-server (redis_harness); every wait is bounded and every
process started here is stopped by PID.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import time

import redis_harness as R
import test_wse as W
import wsed_harness as H

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
SECRET = W.SECRET   # the JWT secret of W.env() (WSED_JWT_SECRET)
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TEXT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z (debug|info|warn|error) [a-z_]+: ")
LEVELS = ("debug", "info", "warn", "error")

limit = H.limit
env = W.env


def token(sub="alice", ttl=3600, secret=SECRET):
    return W.token(sub, ttl=ttl, secret=secret)


def bad_request(port, n):
    """n requests that are not HTTP: each answered 400 (reject reason bad_request)."""
    for _ in range(n):
        raw, _ = H.raw_request(port, b"NOT-HTTP at all\r\n\r\n", timeout=5)
        assert raw.startswith(b"HTTP/1.1 400"), raw[:100]


def refused_upgrade(port, tok, how="bearer"):
    """An upgrade with tok: the server accepts the upgrade, then refuses the token (4401)."""
    extra, path = b"", "/wse"
    if how == "bearer":
        extra = ("Authorization: Bearer %s\r\n" % tok).encode()
    elif how == "cookie":
        extra = ("Cookie: access_token=%s\r\n" % tok).encode()
    else:
        path = "/wse?token=" + tok
    status, s = H.upgrade(port, H.handshake_request(port, path=path, extra=extra)[0])
    assert status == 101, status
    try:
        H.recv_until_eof(s, 5)   # the error message and the close 4401, then EOF
    finally:
        s.close()


def json_lines(text, where):
    """Every non-empty line of text as a JSON event with ts, level, event and msg."""
    events = []
    for ln in text.splitlines():
        if not ln.strip():
            continue
        try:
            ev = json.loads(ln)
        except ValueError:
            raise AssertionError("%s: a line that is not JSON: %r" % (where, ln[:300]))
        assert isinstance(ev, dict), (where, ln)
        assert TS_RE.match(ev.get("ts", "")), (where, ev)
        assert ev.get("level") in LEVELS, (where, ev)
        assert isinstance(ev.get("event"), str) and ev["event"], (where, ev)
        assert isinstance(ev.get("msg"), str), (where, ev)
        events.append(ev)
    return events


def stdout_text(srv):
    return b"".join(srv.stdout_lines).decode("utf-8", "replace")


def occurrences(events, name, key_field=None, key=None):
    """(lines printed, occurrences counted as suppressed) of event name (with key_field == key)."""
    printed = [e for e in events if e["event"] == name and (key_field is None or e.get(key_field) == key)]
    suppressed = sum(e["count"] for e in events
                     if e["event"] == "log_suppressed" and e["suppressed_event"] == name)
    return len(printed), suppressed


class Quiet:
    """wsed started without a startup banner (--log-level warn/error, --quiet): on a port picked
    here, ready once /healthz answers; stopped by PID."""

    def __init__(self, *args):
        self.port = H.free_port()
        self.proc = subprocess.Popen([BIN, "--host", H.HOST, "--port", str(self.port)] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env())
        H.track(self.proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if H.http_get(self.port, "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("wsed %s did not come up on :%d" % (" ".join(args), self.port))

    def stop(self):
        """SIGTERM, wait (bounded); (exit code, stdout, stderr)."""
        H.stop_process(self.proc, 15)
        out, err = self.proc.communicate(timeout=5)
        return self.proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@limit(40)
def test_logs_json_lines_when_piped():
    """stdout and stderr are pipes: every line of both is a JSON event with ts, level, event
    and msg; the startup event names the URL; the error paths log their events."""
    with tempfile.TemporaryDirectory() as d:
        secret_file = os.path.join(d, "secret")
        with open(secret_file, "w") as f:
            f.write(SECRET)
        srv = H.wsed_server(BIN, "--mode", "wse", "--workers", "2", "--jwt-secret-file", secret_file,
                            env=env())
        with H.supervised(srv):
            port = srv.port
            bad_request(port, 3)
            refused_upgrade(port, token(secret="another-secret-of-at-least-32-bytes!!"))
            refused_upgrade(port, "not.a.token")
            with open(secret_file, "w") as f:
                f.write("short")
            srv.send_signal(signal.SIGHUP)     # reload fails: the current key stays
            deadline = time.monotonic() + 5
            while "reload failed" not in srv.stderr_text() and time.monotonic() < deadline:
                time.sleep(0.02)
        out = json_lines(stdout_text(srv), "stdout")
        err = json_lines(srv.stderr_text(), "stderr")
    assert len(out) == 1 and out[0]["event"] == "listening" and out[0]["level"] == "info", out
    start = out[0]
    assert start["url"] == "ws://127.0.0.1:%d/" % port and start["mode"] == "wse", start
    assert start["msg"].startswith("wsed 0.1.0 listening on ws://127.0.0.1:%d/" % port), start
    assert start["workers"] == 2 and isinstance(start["connections_max"], int), start
    names = [e["event"] for e in err]
    rejected = [e for e in err if e["event"] == "handshake_rejected"]
    assert len(rejected) == 3 and all(e["status"] == 400 and e["reason"] == "bad_request"
                                      and e["level"] == "info" for e in rejected), rejected
    auth = [e for e in err if e["event"] == "auth_rejected"]
    assert sorted(e["reason"] for e in auth) == ["bad_base64url", "bad_signature"], auth
    reload = [e for e in err if e["event"] == "reload"]
    assert len(reload) == 1 and reload[0]["ok"] is False and reload[0]["level"] == "error", reload
    assert "keeping the current keys" in reload[0]["msg"], reload
    assert names[-1] == "shutdown", names


@limit(30)
def test_logs_text_format():
    """--log-format text: the banner lines a person reads, and one text line per event
    ("TS LEVEL event: msg key=value ..."), control characters escaped."""
    srv = H.wsed_server(BIN, "--mode", "echo", "--workers", "1", "--log-format", "text", env=env())
    with H.supervised(srv):
        assert srv.startup_event is None, srv.first_line
        assert srv.first_line.startswith("wsed 0.1.0 listening on ws://127.0.0.1:%d/" % srv.port), srv.first_line
        bad_request(srv.port, 2)
    out = stdout_text(srv).splitlines()
    assert out[1].startswith("  demo page: http://127.0.0.1:%d/" % srv.port), out
    assert any(ln.startswith("  connect: ") for ln in out), out
    lines = [ln for ln in srv.stderr_text().splitlines() if ln.strip()]
    assert lines and all(TEXT_RE.match(ln) for ln in lines), lines
    assert not any(ln.startswith("{") for ln in lines), lines
    rej = [ln for ln in lines if " handshake_rejected: " in ln]
    assert len(rej) == 2 and all(" info " in ln and "status=400 reason=bad_request shard=0" in ln
                                 for ln in rej), rej
    assert lines[-1].split(" ", 2)[2].startswith("shutdown: "), lines


@limit(60)
def test_logs_level_filtering_and_quiet():
    """--log-level warn: no info event and no banner; warn events (a connection limit that bites)
    still come. --log-level error drops those too; --quiet is at least warn (even with
    --log-level debug); --log-level debug keeps info events."""
    def until(port, fn, want):
        """fn(port) until it answers want (a slot frees once the last client's close is seen)."""
        deadline = time.monotonic() + 5
        while True:
            got = fn(port)
            if got[0] == want or time.monotonic() > deadline:
                return got
            if got[1]:
                got[1].close()
            time.sleep(0.02)

    def run(*args):
        q = Quiet("--mode", "echo", "--workers", "1", "--max-connections", "1", *args)
        try:
            for _ in range(2):                           # info: handshake_rejected bad_request
                st, _ = until(q.port, lambda p: (H.parse_http_response(H.raw_request(p, b"NOT-HTTP\r\n\r\n")[0])[0], None), 400)
                assert st == 400, st
            st, held = until(q.port, lambda p: H.upgrade(p, H.handshake_request(p)[0]), 101)
            assert st == 101, st                         # the one connection allowed
            for _ in range(2):                           # warn: handshake_rejected max_connections
                st, _ = H.upgrade(q.port, H.handshake_request(q.port)[0])
                assert st == 503, st
            held.close()
        finally:
            rc, out, err = q.stop()
        assert rc == 0, (rc, err[-500:])
        return out, json_lines(err, "stderr %s" % (args,))

    out, ev = run("--log-level", "warn")
    assert out == "", out                                  # the banner is an info event
    assert ev and all(e["level"] in ("warn", "error") for e in ev), ev
    limited = [e for e in ev if e["event"] == "handshake_rejected"]
    assert len(limited) >= 2 and all(e["reason"] == "max_connections" and e["status"] == 503 for e in limited), ev
    out, ev = run("--log-level", "error")
    assert out == "" and ev == [], (out, ev)
    out, ev = run("--quiet", "--log-level", "debug")
    assert out == "" and all(e["level"] in ("warn", "error") for e in ev) and len(ev) >= 2, ev
    srv = H.wsed_server(BIN, "--mode", "echo", "--workers", "1", "--log-level", "debug", env=env())
    with H.supervised(srv):
        bad_request(srv.port, 1)
    ev = json_lines(srv.stderr_text(), "stderr --log-level debug")
    assert [e["event"] for e in ev if e["level"] == "info"] == ["handshake_rejected", "shutdown"], ev
    rc, out, err = H.run_cmd([BIN, "--help"], timeout=5)
    assert rc == 0 and "\x00" not in out, (rc, out[-300:])
    logging = out[out.index("Logging:"):]
    assert "--log-level TEXT:{debug,info,warn,error}=info" in logging, logging
    assert "--log-format TEXT:{auto,json,text}=auto" in logging, logging
    for bad in (["--log-level", "verbose"], ["--log-format", "xml"]):
        rc, out, err = H.run_cmd([BIN] + bad, timeout=5)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and bad[0] in err, (bad, rc, err)


@limit(90)
def test_logs_flood_is_suppressed_and_counted():
    """500 bad requests and 200 bad tokens from one client: per (event, reason) at most the
    burst is printed per window, the rest is counted in "N similar suppressed" lines (reported
    once the window has ended, while wsed runs, or at exit), every occurrence is either printed
    or counted exactly once, and the output stays small."""
    srv = H.wsed_server(BIN, "--mode", "wse", "--workers", "2", env=env())
    with H.supervised(srv):
        bad_request(srv.port, 500)
        bad = token(secret="a-different-secret-of-at-least-32-bytes")
        for _ in range(200):
            refused_upgrade(srv.port, bad)
        # While it runs, the report comes once the 10 s window has ended (main's tick).
        deadline = time.monotonic() + 20
        while "log_suppressed" not in srv.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "log_suppressed" in srv.stderr_text(), srv.stderr_text()[-1000:]
        m, _ = H.get_metrics(srv.port)
        counted = H.metric_value(m, "wsed_log_suppressed_total")
    ev = json_lines(srv.stderr_text(), "stderr")
    printed, suppressed = occurrences(ev, "handshake_rejected", "reason", "bad_request")
    assert printed + suppressed == 500, (printed, suppressed)
    printed_auth, suppressed_auth = occurrences(ev, "auth_rejected", "reason", "bad_signature")
    assert printed_auth + suppressed_auth == 200, (printed_auth, suppressed_auth)
    assert suppressed > 0 and suppressed_auth > 0, ev[-5:]
    # The counter on /metrics counts the same lines (all were refused before the scrape).
    assert counted == suppressed + suppressed_auth, (counted, suppressed, suppressed_auth)
    reports = [e for e in ev if e["event"] == "log_suppressed"]
    for r in reports:
        assert r["msg"] == "%d similar suppressed (%s)" % (r["count"], r["suppressed_event"]), r
        assert r["window_ms"] == 10000 and r["count"] > 0, r
    # Bounded: 5 lines per key and window (10 s) plus one report each; the run takes a few windows
    # at most, so the whole output stays far below the 700 events.
    assert len(ev) < 80, (len(ev), [e["event"] for e in ev])
    assert printed <= 5 * 8 and printed_auth <= 5 * 8, (printed, printed_auth)


@limit(90)
def test_logs_never_print_a_secret():
    """A run through the error paths at --log-level debug (bad and expired tokens in a header, a
    cookie and the query, bad requests, a wrong and a missing API key, a reload that fails, a
    Redis password in --redis-url and a wrong one): neither the JWT secret, nor a token a client
    sent, nor the API keys, nor the Redis passwords appear on stdout or stderr."""
    redis_pw = "redis-pw-XYZZY-never-printed"
    wrong_pw = "wrong-pw-PLUGH-never-printed"
    api_key = "api-key-QUUX-never-printed-0123"
    wrong_key = "wrong-api-key-FROB-never-printed"
    other_secret = "other-secret-GRAULT-never-printed-0123456"
    tokens = [token("mallory", secret=other_secret), token("expired", ttl=-3600),
              token("ok-user"), "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig-GARPLY-never-printed"]
    with tempfile.TemporaryDirectory() as d, R.RedisServer(password=redis_pw) as redis:
        key_file = os.path.join(d, "api.key")
        secret_file = os.path.join(d, "secret")
        for path, text in ((key_file, api_key), (secret_file, SECRET)):
            with open(path, "w") as f:
                f.write(text)
        common = ["--mode", "wse", "--workers", "2", "--log-level", "debug", "--allow-query-token",
                  "--api-key-file", key_file, "--jwt-secret-file", secret_file]
        good = H.wsed_server(BIN, *common, "--redis-url", "redis://:%s@127.0.0.1:%d" % (redis_pw, redis.port),
                             env=env(WSED_JWT_SECRET="unused-env-secret-WALDO-never-printed"))
        bad = H.wsed_server(BIN, *common, "--redis-url", "redis://:%s@127.0.0.1:%d" % (wrong_pw, redis.port),
                            env=env())
        with H.supervised(good), H.supervised(bad):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (
                    H.http_get(good.port, "/readyz", timeout=3)[0] != 200 or "redis_down" not in bad.stderr_text()):
                time.sleep(0.1)
            assert H.http_get(good.port, "/readyz", timeout=3)[0] == 200, good.stderr_text()[-800:]
            assert "redis_down" in bad.stderr_text(), bad.stderr_text()[-800:]
            for srv in (good, bad):
                for tok in tokens[:2] + tokens[3:]:
                    for how in ("bearer", "cookie", "query"):
                        refused_upgrade(srv.port, tok, how)
                ws = H.RawWS(srv.port, path="/wse", extra=("Authorization: Bearer %s\r\n" % tokens[2]).encode())
                assert ws.wait_messages(1, 5), ws.events
                ws.abort()
                bad_request(srv.port, 2)
                raw, _ = H.raw_request(srv.port, ("GET /wse?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % tokens[0]).encode())
                for key in (wrong_key, None):
                    auth = "Authorization: Bearer %s\r\n" % key if key else ""
                    body = b'{"topic":"t","message":{"t":"x","p":{}}}'
                    req = ("POST /api/publish HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
                           "Content-Length: %d\r\nConnection: close\r\n\r\n" % (auth, len(body))).encode() + body
                    raw, _ = H.raw_request(srv.port, req)
                    assert raw.startswith(b"HTTP/1.1 401"), raw[:200]
            with open(secret_file, "w") as f:
                f.write("short")                     # the next SIGHUP fails to reload
            for srv in (good, bad):
                srv.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not all("reload failed" in s.stderr_text() for s in (good, bad)):
                time.sleep(0.05)
    secrets = [SECRET, other_secret, redis_pw, wrong_pw, api_key, wrong_key, "WALDO"] + tokens + [t.split(".")[2] for t in tokens] + [t.split(".")[1] for t in tokens]
    for srv in (good, bad):
        text = stdout_text(srv) + srv.stderr_text()
        ev = json_lines(srv.stderr_text(), "stderr")
        names = {e["event"] for e in ev}
        # The paths were taken (so the check below is not vacuous).
        assert {"auth_rejected", "handshake_rejected", "api_unauthorized", "reload"} <= names, names
        for s in secrets:
            assert s not in text, "%r printed by wsed :%d: %s" % (s[:12], srv.port, text[text.find(s) - 200:][:400])
    # Cluster seeds with credentials: the startup event names host:port only; a bad seed's flag
    # error masks them.
    seed_pw = "seed-pw-FRED-never-printed"
    port = H.free_port()
    srv = H.wsed_server(BIN, "--mode", "wse", "--workers", "1", "--redis-cluster",
                        "redis://:%s@127.0.0.1:%d,127.0.0.1:%d" % (seed_pw, port, port), env=env())
    with H.supervised(srv):
        assert srv.startup_event["redis"] == "cluster 127.0.0.1:%d,127.0.0.1:%d" % (port, port), srv.startup_event
    text = stdout_text(srv) + srv.stderr_text()
    assert seed_pw not in text, text[-1000:]
    rc, out, err = H.run_cmd([BIN, "--mode", "wse", "--redis-cluster", "redis://u:%s@127.0.0.1:notaport" % seed_pw],
                             timeout=5, env=env())
    assert rc == 2 and "redis://u:***@127.0.0.1:notaport" in err and seed_pw not in out + err, (rc, err)
    assert "redis_down" in {e["event"] for e in json_lines(bad.stderr_text(), "bad")}
    down = [e for e in json_lines(bad.stderr_text(), "bad") if e["event"] == "redis_down"]
    assert "127.0.0.1:%d" % redis.port in down[0]["msg"], down
