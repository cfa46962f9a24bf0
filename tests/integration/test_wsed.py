"""wsed integration tests: the real binary on 127.0.0.1 driven by real clients.

Run with tests/integration/run_tests.py (under /usr/bin/python3: Debian's python3-websockets 10.4).
The wsed binary comes from $WSED_BIN; $WSED_SANITIZERS=1 sets ASan/UBSan options and checks stderr.
Every test bounds its waits and stops the servers it started (by PID: SIGTERM, wait, SIGKILL).
"""

import asyncio
import hashlib
import os
import subprocess
import signal
import socket
import struct
import re
import select
import time

import websockets

import wsed_harness as H
from wsed_harness import OP_TEXT, OP_BINARY, OP_CONT, OP_PING, frame

BIN = os.environ.get("WSED_BIN") or H.wsed_binary("build")
SAN = os.environ.get("WSED_SANITIZERS") == "1"


limit = H.limit


def wsed(*args, check_exit=True):
    """Start wsed --port 0 with args; on exit stop it (SIGTERM) and check exit code 0 / no sanitizer report."""
    return H.running(BIN, *args, env=H.SANITIZER_ENV if SAN else None, check_exit=check_exit)


def uri(srv):
    return "ws://127.0.0.1:%d/" % srv.port


def utf8_str(nbytes, seed=0):
    """A str whose UTF-8 encoding is exactly nbytes long, mixing 1-4 byte characters."""
    pat = "s%d:aé€𝄞κόσμε漢字😀-" % seed
    out, size, i = [], 0, 0
    while size < nbytes:
        ch = pat[i % len(pat)]
        n = len(ch.encode())
        if size + n > nbytes:
            ch, n = "x", 1
        out.append(ch)
        size += n
        i += 1
    return "".join(out)


def run(coro, timeout):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(step)


def metric(port, name, **labels):
    m, _ = H.get_metrics(port)
    return H.metric_value(m, name, **labels)


# ---------------------------------------------------------------------------------------------
# 1. echo round trips from python3-websockets
# ---------------------------------------------------------------------------------------------

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 1000000]


@limit(60)
def test_echo_python_websockets():
    with wsed("--mode", "echo") as srv:
        async def go():
            async with websockets.connect(uri(srv), max_size=None, open_timeout=5, close_timeout=5,
                                          ping_interval=None) as ws:
                for n in SIZES:
                    s = utf8_str(n, n)
                    await ws.send(s)
                    r = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(r, str), "text %d echoed as %s" % (n, type(r).__name__)
                    assert r == s, "text %d bytes: echo differs (got %d bytes)" % (n, len(r.encode()))
                    b = hashlib.shake_256(b"%d" % n).digest(n) if n else b""
                    await ws.send(b)
                    r = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(r, bytes), "binary %d echoed as %s" % (n, type(r).__name__)
                    assert r == b, "binary %d bytes: echo differs (got %d bytes)" % (n, len(r))
                # pipelined, interleaved types
                sent = []
                for i in range(50):
                    m = utf8_str(i * 31, i) if i % 2 else hashlib.sha256(b"%d" % i).digest() * i
                    sent.append(m)
                    await ws.send(m)
                for i, m in enumerate(sent):
                    r = await asyncio.wait_for(ws.recv(), 10)
                    assert r == m and type(r) is type(m), "pipelined message %d differs" % i
                # websockets' own ping: the server answers with a pong
                pong = await ws.ping(b"hello-ping")
                await asyncio.wait_for(pong, 5)
            assert ws.close_code == 1000, "close code %s" % ws.close_code
        run(go(), 50)


# ---------------------------------------------------------------------------------------------
# 2. echo round trips from Node ws (tests/node/echo_test.js)
# ---------------------------------------------------------------------------------------------

NODE_DIR = os.path.join(H.REPO, "tests", "node")


def ensure_node_modules():
    if os.path.isdir(os.path.join(NODE_DIR, "node_modules", "ws")):
        return
    rc, out, err = H.run_cmd(["npm", "ci", "--no-audit", "--no-fund", "--prefix", NODE_DIR], timeout=120)
    assert rc == 0, "npm ci failed: %s %s" % (out[-500:], err[-500:])


def run_node_echo_test(port):
    """Returns (passed, failed, output)."""
    ensure_node_modules()
    rc, out, err = H.run_cmd(["node", os.path.join(NODE_DIR, "echo_test.js"), "ws://127.0.0.1:%d/" % port],
                             timeout=90)
    import re
    m = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    if not m:
        return 0, 1, "no result line (exit %s): %s %s" % (rc, out[-1000:], err[-1000:])
    return int(m.group(1)), int(m.group(2)), out + err


@limit(100)
def test_echo_node_ws():
    with wsed("--mode", "echo") as srv:
        p, f, out = run_node_echo_test(srv.port)
        assert f == 0 and p > 0, "node echo_test.js: %d passed, %d failed:\n%s" % (
            p, f, "\n".join(ln for ln in out.splitlines() if not ln.startswith("ok ")))


# ---------------------------------------------------------------------------------------------
# 3. 1,000 concurrent connections x 100 messages, every byte checked
# ---------------------------------------------------------------------------------------------

def conc_message(k, i):
    """Content unique to (connection k, message i): misrouted or reordered echoes are caught."""
    n = (k * 7 + i * 13) % 300 + 1
    if (k + i) % 2:
        return hashlib.shake_128(b"%d/%d" % (k, i)).digest(n)
    return ("c%d m%d " % (k, i)) + utf8_str(n, k + i)


@limit(150)
def test_1000_connections_x_100_messages():
    N, M = 1000, 100
    with wsed("--mode", "echo", "--workers", "2", "--max-pending-handshakes", "2000") as srv:
        async def go():
            sem = asyncio.Semaphore(100)

            async def opener(k):
                async with sem:
                    return await websockets.connect(uri(srv), open_timeout=30, close_timeout=10,
                                                    ping_interval=None, compression=None, max_size=None)

            conns = await asyncio.gather(*[opener(k) for k in range(N)])
            loop = asyncio.get_running_loop()
            m, _ = await loop.run_in_executor(None, H.get_metrics, srv.port)
            open_total = H.metric_value(m, "wsed_connections_open")
            assert open_total == N, "sum of wsed_connections_open = %s with %d clients" % (open_total, N)

            async def exchange(k, ws):
                async def sender():
                    for i in range(M):
                        await ws.send(conc_message(k, i))

                async def receiver():
                    for i in range(M):
                        r = await ws.recv()
                        exp = conc_message(k, i)
                        if r != exp or type(r) is not type(exp):
                            raise AssertionError("connection %d message %d: expected %r, got %r"
                                                 % (k, i, exp[:40], r[:40]))
                await asyncio.gather(sender(), receiver())
                await ws.close()
                assert ws.close_code == 1000, "connection %d close code %s" % (k, ws.close_code)

            await asyncio.gather(*[exchange(k, ws) for k, ws in enumerate(conns)])
        run(go(), 110)
        assert wait_until(lambda: metric(srv.port, "wsed_connections_open") == 0, 10), \
            "sum of wsed_connections_open did not drop to 0 after all clients closed"
        mi = metric(srv.port, "wsed_messages_in_total")
        assert mi is not None and mi >= N * M, "wsed_messages_in_total = %s < %d" % (mi, N * M)


# ---------------------------------------------------------------------------------------------
# 4. handshake errors over raw sockets
# ---------------------------------------------------------------------------------------------

def upgrade_request(key="dGhlIHNhbXBsZSBub25jZQ==", version="13", extra="", path="/", method="GET",
                    drop=()):
    hdrs = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
    lines = ["%s %s HTTP/1.1" % (method, path)] + ["%s: %s" % (k, v) for k, v in hdrs if k not in drop]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def expect_status(port, req, status, what):
    raw, eof = H.raw_request(port, req, timeout=5)
    st, headers, hlist, body = H.parse_http_response(raw)
    assert st == status, "%s: expected HTTP %d, got %r (%r)" % (what, status, st, raw[:200])
    if status >= 400:
        assert "close" in headers.get("connection", "").lower(), "%s: no 'Connection: close' in %r" % (what, raw[:300])
        assert eof, "%s: the server did not close the socket after the error response" % what
    return headers, hlist, body


def upgrade_status(port, req):
    """Sends an upgrade request and returns the status code of the response head (without
    waiting for the server to close: a 101 keeps the connection open)."""
    status, s = H.upgrade(port, req)
    if s:
        s.close()
    return status


@limit(30)
def test_allowed_origins_403():
    """--allowed-origins: an Origin outside the list gets 403 before the upgrade (counted as
    rejected reason=origin); listed origins (any case) and requests without Origin upgrade."""
    with wsed("--mode", "echo", "--allowed-origins", "http://ok.example,https://app.example") as srv:
        port = srv.port
        expect_status(port, upgrade_request(extra="Origin: http://evil.example\r\n"), 403, "foreign Origin")
        assert upgrade_status(port, upgrade_request(extra="Origin: HTTPS://APP.EXAMPLE\r\n")) == 101
        assert upgrade_status(port, upgrade_request(extra="Origin: http://ok.example\r\n")) == 101
        assert upgrade_status(port, upgrade_request()) == 101
        v = metric(port, "wsed_connections_rejected_total", reason="origin")
        assert v == 1, "wsed_connections_rejected_total{reason=origin} = %s" % v
    with wsed("--mode", "echo") as srv:  # no list: any Origin upgrades
        assert upgrade_status(srv.port, upgrade_request(extra="Origin: http://evil.example\r\n")) == 101


@limit(40)
def test_handshake_errors_and_http_endpoints():
    with wsed("--mode", "echo") as srv:
        port = srv.port
        big = "X-Filler: " + "a" * 9000 + "\r\n"
        expect_status(port, upgrade_request(extra=big), 431, "header block > 8 KiB")
        h, hlist, _ = expect_status(port, upgrade_request(version="12"), 426, "Sec-WebSocket-Version: 12")
        assert ("sec-websocket-version", "13") in hlist, "426 without 'Sec-WebSocket-Version: 13': %r" % hlist
        expect_status(port, upgrade_request(drop=("Sec-WebSocket-Key",)), 400, "missing Sec-WebSocket-Key")
        expect_status(port, upgrade_request(key="abc"), 400, "Sec-WebSocket-Key 'abc'")
        expect_status(port, upgrade_request(key="AAECAwQFBgcICQoLDA0O"), 400, "key of 15 bytes")
        expect_status(port, upgrade_request(key="AAECAwQFBgcICQoLDA0ODxA="), 400, "key of 17 bytes")
        expect_status(port, upgrade_request(key="!!!!!!!!!!!!!!!!!!!!!!=="), 400, "key not base64")
        _, _, body = expect_status(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, "GET /healthz")
        assert body == b"ok\n", "healthz body %r" % body
        _, _, body = expect_status(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200, "GET /metrics")
        assert b"wsed_connections_open" in body, "metrics body lacks wsed_connections_open: %r" % body[:300]
        expect_status(port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "GET /nope")
        expect_status(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                      405, "POST /healthz")
        # HTTP/1.1 keeps the connection for the next request: 404, 405 and 200 on one socket,
        # pipelined in one send, answered in order, then closed on request.
        s = H.connect(port)
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                  b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw, eof = H.recv_until_eof(s, 5)
        s.close()
        assert eof, "the server did not close after the Connection: close request: %r" % raw[:300]
        statuses = [int(x) for x in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
        assert statuses == [404, 405, 200], "pipelined answers %r in %r" % (statuses, raw[:400])
        assert raw.count(b"Connection: close") == 1, "only the last answer closes: %r" % raw[:400]
        # the server keeps serving: a websocket echo and health check still work
        ws = H.RawWS(port)
        ws.send_frame(OP_TEXT, b"still alive")
        assert ws.wait_messages(1, 5), "no echo after the error responses"
        assert ws.messages()[0] == ("text", b"still alive")
        ws.finish()
        assert ws.close_code() == 1000, "close code %s" % ws.close_code()
        st, _, _, _ = H.http_get(port, "/healthz")
        assert st == 200
        m, text = H.get_metrics(port)
        for reason in ("header_too_large", "version", "bad_request"):
            v = H.metric_value(m, "wsed_connections_rejected_total", reason=reason)
            assert v and v > 0, "sum of wsed_connections_rejected_total{reason=%s} = %s" % (reason, v)


read_101 = H.read_response_head


def read_frames(s, buf, n, timeout=5.0):
    """Read n unmasked server frames -> [(opcode, payload)]."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        if len(buf) >= 2:
            ln = buf[1] & 0x7F
            off = 2 + (2 if ln == 126 else 8 if ln == 127 else 0)
            if len(buf) >= off:
                if ln == 126:
                    ln = int.from_bytes(buf[2:4], "big")
                elif ln == 127:
                    ln = int.from_bytes(buf[2:10], "big")
                if len(buf) >= off + ln:
                    out.append((buf[0] & 0x0F, buf[off:off + ln]))
                    buf = buf[off + ln:]
                    continue
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for %d frames, got %s" % (n, out)
        s.settimeout(left)
        d = s.recv(65536)
        assert d, "EOF while waiting for frames, got %s" % out
        buf += d
    return out


@limit(30)
def test_handshake_variants():
    with wsed("--mode", "echo") as srv:
        port = srv.port
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        # 1. the first frame in the same TCP write as the upgrade request
        s = H.connect(port)
        s.sendall(upgrade_request(key=key) + frame(OP_TEXT, b"early bird"))
        st, headers, rest = read_101(s)
        assert st == 101, "upgrade + frame in one write: status %s" % st
        assert headers.get("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", headers
        assert read_frames(s, rest, 1) == [(1, b"early bird")], "frame sent with the request not echoed"
        s.close()
        # 2. the request sent one byte at a time
        s = H.connect(port)
        for b in upgrade_request(key=key):
            s.send(bytes([b]))
            time.sleep(0.0005)
        st, _, rest = read_101(s)
        assert st == 101, "byte-wise upgrade request: status %s" % st
        s.sendall(frame(OP_BINARY, b"\x00\x01"))
        assert read_frames(s, rest, 1) == [(2, b"\x00\x01")]
        s.close()
        # 3. case-insensitive header names/values, Connection token list, extra headers
        req = ("GET /any/path?x=1 HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: t\r\nupgrade: WebSocket\r\n"
               "connection: keep-alive, Upgrade\r\nsec-websocket-key: %s\r\nsec-websocket-version: 13\r\n"
               "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
               "Sec-WebSocket-Protocol: chat, superchat\r\n\r\n" % key).encode()
        s = H.connect(port)
        s.sendall(req)
        st, headers, rest = read_101(s)
        assert st == 101, "case-insensitive/token-list upgrade: status %s" % st
        # permessage-deflate is accepted (test_deflate.py); a plain message under the threshold stays plain.
        assert headers.get("sec-websocket-extensions") == \
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover", headers
        s.sendall(frame(OP_TEXT, b"ok"))
        assert read_frames(s, rest, 1) == [(1, b"ok")]
        s.close()


@limit(30)
def test_max_pending_handshakes_503():
    with wsed("--mode", "echo", "--max-pending-handshakes", "3", "--handshake-timeout", "10s") as srv:
        silent = [H.connect(srv.port) for _ in range(3)]
        time.sleep(0.3)
        raw, eof = H.raw_request(srv.port, H.handshake_request(srv.port)[0], timeout=5)
        st, _, _, _ = H.parse_http_response(raw)
        assert st == 503, "4th socket with --max-pending-handshakes 3: %r" % raw[:200]
        for s in silent:
            s.close()

        def upgrade():
            try:
                return H.RawWS(srv.port)
            except AssertionError:
                return None
        w = wait_until(upgrade, 5, 0.1)
        assert w, "upgrades still refused after the pending sockets went away"
        w.finish()
        v = metric(srv.port, "wsed_connections_rejected_total", reason="pending_handshakes")
        assert v and v >= 1, "wsed_connections_rejected_total{reason=pending_handshakes} = %s" % v


@limit(30)
def test_max_unfinished_bytes_closes_1013():
    with wsed("--mode", "echo", "--max-unfinished-bytes", "64KiB", "--workers", "1") as srv:
        a, b = H.RawWS(srv.port), H.RawWS(srv.port)
        a.send_frame(OP_BINARY, b"a" * 40000, fin=False)
        time.sleep(0.2)
        b.send_frame(OP_BINARY, b"b" * 40000, fin=False)
        assert b.wait_close(5), "second unfinished 40 KB message (budget 64 KiB) was not refused"
        assert b.close_code() == 1013, "close code %s" % b.close_code()
        b.finish()
        a.send_frame(OP_CONT, b"A" * 100)
        assert a.wait_messages(1, 5) and a.messages()[0] == ("binary", b"a" * 40000 + b"A" * 100), \
            "the first message (within budget) was not echoed: %s" % [e[0] for e in a.events]
        a.finish()
        # the budget is released: a new unfinished message fits again
        c = H.RawWS(srv.port)
        c.send_frame(OP_TEXT, b"c" * 40000, fin=False)
        c.send_frame(OP_CONT, b"")
        assert c.wait_messages(1, 5) and c.messages()[0] == ("text", b"c" * 40000), "budget not released"
        c.finish()


# ---------------------------------------------------------------------------------------------
# 5. handshake timeout
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_handshake_timeout_cuts_slow_clients():
    with wsed("--mode", "echo", "--handshake-timeout", "1s") as srv:
        port = srv.port
        # an upgraded connection is NOT subject to the handshake timeout
        ws = H.RawWS(port)
        silent = H.connect(port)
        half = H.connect(port)
        t0 = time.monotonic()
        half.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        results = {}
        for name, s in (("nothing sent", silent), ("half a request", half)):
            data, eof = H.recv_until_eof(s, timeout=max(0.1, t0 + 4.0 - time.monotonic()))
            results[name] = (eof, time.monotonic() - t0, data)
            s.close()
        for name, (eof, dt, data) in results.items():
            assert eof, "socket that sent %s was not closed within 4 s" % name
            assert 0.5 <= dt <= 3.5, "socket that sent %s closed after %.2fs (handshake timeout 1s)" % (name, dt)
        time.sleep(max(0.0, t0 + 2.0 - time.monotonic()))
        ws.send_frame(OP_TEXT, b"after 2 s")
        assert ws.wait_messages(1, 5), "upgraded connection did not survive the handshake timeout"
        ws.finish()
        v = metric(port, "wsed_connections_closed_total", reason="handshake_timeout")
        assert v and v >= 2, "sum of wsed_connections_closed_total{reason=handshake_timeout} = %s" % v


# ---------------------------------------------------------------------------------------------
# 6. SIGTERM
# ---------------------------------------------------------------------------------------------

@limit(40)
def test_sigterm_closes_every_client_with_4300():
    srv = H.wsed_server(BIN, "--mode", "echo", "--shutdown-timeout", "5s", env=H.SANITIZER_ENV if SAN else None)
    srv.start()
    try:
        async def go():
            conns = [await websockets.connect(uri(srv), open_timeout=5, close_timeout=5, ping_interval=None)
                     for _ in range(20)]
            for i, ws in enumerate(conns):   # all really open and echoing
                await ws.send("hi %d" % i)
                assert await asyncio.wait_for(ws.recv(), 5) == "hi %d" % i

            async def waiter(ws):
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed:
                    pass
                return ws.close_code, ws.close_reason

            tasks = [asyncio.ensure_future(waiter(ws)) for ws in conns]
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            srv.send_signal(signal.SIGTERM)
            res = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            return res, t0
        res, t0 = run(go(), 30)
        codes = [c for c, _ in res]
        assert codes == [4300] * 20, "close codes after SIGTERM: %s" % codes
        reasons = set(r for _, r in res)
        assert reasons == {"server shutting down"}, "close reasons after SIGTERM: %s" % reasons
        rc = srv.wait(7)
        assert rc is not None, "wsed still running %.1fs after SIGTERM (shutdown timeout 5s)" % (time.monotonic() - t0)
        assert rc == 0, "exit code %s after SIGTERM" % rc
    finally:
        srv.stop(timeout=5)
        assert not srv.sanitizer_problems(), srv.stderr_text()[-3000:]


@limit(30)
def test_sigint_closes_clients_with_4300():
    srv = H.wsed_server(BIN, "--mode", "echo", "--shutdown-timeout", "5s", env=H.SANITIZER_ENV if SAN else None)
    srv.start()
    try:
        conns = [H.RawWS(srv.port) for _ in range(3)]
        srv.send_signal(signal.SIGINT)
        for c in conns:
            assert c.wait_close(5), "no close frame within 5 s of SIGINT"
            assert c.close_code() == 4300, "close code %s after SIGINT" % c.close_code()
            c.finish()
        rc = srv.wait(7)
        assert rc == 0, "exit code %s after SIGINT" % rc
    finally:
        srv.stop(timeout=5)
        assert not srv.sanitizer_problems(), srv.stderr_text()[-3000:]


@limit(40)
def test_sigterm_with_silent_client_exits_within_shutdown_timeout():
    """A client that never answers the 4300 close frame (but whose socket accepts data)."""
    srv = H.wsed_server(BIN, "--mode", "echo", "--shutdown-timeout", "2s", env=H.SANITIZER_ENV if SAN else None)
    srv.start()
    try:
        s = H.connect(srv.port)
        req, _ = H.handshake_request(srv.port)
        s.sendall(req)
        data, _ = H.recv_until_eof(s, timeout=0.5)
        assert data.startswith(b"HTTP/1.1 101"), data[:100]
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        rc = srv.wait(6)
        assert rc is not None, "wsed still running 6 s after SIGTERM with --shutdown-timeout 2s"
        assert rc == 0, "exit code %s; stderr: %s" % (rc, srv.stderr_text()[-500:])
        assert time.monotonic() - t0 <= 5.0
        s.close()
    finally:
        srv.stop(timeout=5)
        assert not srv.sanitizer_problems(), srv.stderr_text()[-3000:]


@limit(40)
def test_sigterm_with_unresponsive_client_exits_within_shutdown_timeout():
    """A client that never reads: the server's sends are blocked (and it gets cut as a slow consumer)."""
    srv = H.wsed_server(BIN, "--mode", "echo", "--shutdown-timeout", "2s", env=H.SANITIZER_ENV if SAN else None)
    srv.start()
    try:
        # a client that completed the upgrade but never reads nor answers the close frame,
        # with the server's send path blocked by unread echoes
        s = H.connect(srv.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        req, _ = H.handshake_request(srv.port)
        s.sendall(req)
        time.sleep(0.2)
        s.setblocking(False)
        payload = b"z" * 60000
        sent = 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end and sent < 8 << 20:
            try:
                sent += s.send(frame(OP_BINARY, payload))
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        rc = srv.wait(6)
        assert rc is not None, "wsed still running 6 s after SIGTERM with --shutdown-timeout 2s"
        assert rc == 0, "exit code %s; stderr: %s" % (rc, srv.stderr_text()[-500:])
        dt = time.monotonic() - t0
        assert dt <= 5.0, "exit took %.1fs (shutdown timeout 2s)" % dt
        s.close()
    finally:
        srv.stop(timeout=5)
        assert not srv.sanitizer_problems(), srv.stderr_text()[-3000:]


# ---------------------------------------------------------------------------------------------
# 7. --workers 2: accepts spread over both shards
# ---------------------------------------------------------------------------------------------

@limit(60)
def test_workers_2_spread_accepts():
    with wsed("--mode", "echo", "--workers", "2") as srv:
        conns = []
        try:
            def shards():
                m, _ = H.get_metrics(srv.port)
                return [H.metric_value(m, "wsed_connections_accepted_total", shard=str(i)) for i in (0, 1)]
            for _ in range(200):
                conns.append(H.RawWS(srv.port))
            acc = shards()
            extra = 0
            while not all(a and a > 0 for a in acc) and extra < 800:
                for _ in range(100):
                    conns.append(H.RawWS(srv.port))
                extra += 100
                acc = shards()
            assert all(a and a > 0 for a in acc), "accepts per shard after %d connections: %s" % (len(conns), acc)
            m, _ = H.get_metrics(srv.port)
            open_total = H.metric_value(m, "wsed_connections_open")
            assert open_total == len(conns), "wsed_connections_open{total}=%s, %d open" % (open_total, len(conns))
            per = [H.metric_value(m, "wsed_connections_open", shard=str(i)) for i in (0, 1)]
            assert None not in per and sum(per) == open_total, "per-shard open %s vs total %s" % (per, open_total)
            # every connection echoes on whichever shard it landed
            for i, c in enumerate(conns):
                c.send_frame(OP_TEXT, b"conn %d" % i)
            for i, c in enumerate(conns):
                assert c.wait_messages(1, 5) and c.messages()[0] == ("text", b"conn %d" % i), "conn %d echo" % i
        finally:
            for c in conns:
                c.abort()


# ---------------------------------------------------------------------------------------------
# 8. limits and command line
# ---------------------------------------------------------------------------------------------

@limit(30)
def test_max_message_size_closes_1009():
    with wsed("--mode", "echo", "--max-message-size", "64KiB") as srv:
        ok = H.RawWS(srv.port)
        ok.send_frame(OP_BINARY, b"\x01" * 65536)
        assert ok.wait_messages(1, 5) and ok.messages()[0] == ("binary", b"\x01" * 65536), \
            "a message of exactly --max-message-size was not echoed"
        ok.finish()
        for what, data in (("single frame of 64 KiB + 1", frame(OP_BINARY, b"\x02" * 65537)),
                           ("3 fragments totalling 64 KiB + 1",
                            frame(OP_TEXT, b"a" * 30000, fin=False) + frame(OP_CONT, b"b" * 30000, fin=False)
                            + frame(OP_CONT, b"c" * 5537))):
            ws = H.RawWS(srv.port)
            ws.send_raw(data)
            assert ws.wait_close(5), "%s: no close within 5 s" % what
            code = ws.close_code()
            ws.send_close(code if code else 1000)
            ws.wait_eof(5)
            ws.abort()
            assert code == 1009, "%s: close code %s, events %s" % (what, code, [e[0] for e in ws.events])
            assert not ws.messages(), "%s: something was echoed" % what
        v = metric(srv.port, "wsed_limit_hits_total", limit="max_message_size")
        assert v and v >= 2, "wsed_limit_hits_total{limit=max_message_size} = %s" % v


@limit(30)
def test_max_fragments_closes_1009():
    with wsed("--mode", "echo", "--max-fragments", "8") as srv:
        def frags(n):
            return b"".join(frame(OP_TEXT if i == 0 else OP_CONT, b"f%d," % i, fin=(i == n - 1)) for i in range(n))
        ok = H.RawWS(srv.port)
        ok.send_raw(frags(8))
        assert ok.wait_messages(1, 5) and ok.messages()[0][1] == b"".join(b"f%d," % i for i in range(8)), \
            "8 fragments with --max-fragments 8 not echoed: %s" % ok.events
        ok.finish()
        bad = H.RawWS(srv.port)
        bad.send_raw(frags(9))
        assert bad.wait_close(5), "9 fragments: no close"
        bad.finish()
        assert bad.close_code() == 1009, "9 fragments with --max-fragments 8: close code %s" % bad.close_code()


@limit(30)
def test_max_connections_503():
    with wsed("--mode", "echo", "--max-connections", "5", "--workers", "2") as srv:
        conns = [H.RawWS(srv.port) for _ in range(5)]
        raw, eof = H.raw_request(srv.port, H.handshake_request(srv.port)[0], timeout=5)
        st, headers, _, _ = H.parse_http_response(raw)
        assert st == 503, "6th upgrade with --max-connections 5: %r" % raw[:200]
        assert eof, "socket not closed after the 503"
        for c in conns:   # the five still work
            c.send_frame(OP_TEXT, b"x")
        assert all(c.wait_messages(1, 5) for c in conns), "an admitted connection stopped echoing"
        conns[0].finish()

        def sixth():
            try:
                w = H.RawWS(srv.port)
            except AssertionError:
                return None
            return w
        w = wait_until(sixth, 5, 0.1)
        assert w, "a new upgrade is still refused after one of the 5 connections closed"
        w.finish()
        for c in conns[1:]:
            c.finish()
        v = metric(srv.port, "wsed_connections_rejected_total", reason="max_connections")
        assert v and v >= 1, "wsed_connections_rejected_total{reason=max_connections} = %s" % v


@limit(60)
def test_descriptor_table_full_answers_503():
    """Under RLIMIT_NOFILE 200 (prlimit) the shard's direct descriptor table has 200 entries, below
    --max-connections: wsed says so at startup, admits 136 connections and answers the next ones
    503 from its 64 reserve entries (counted limit="file_table") instead of letting the kernel
    close accepted sockets; the admitted ones keep working and a freed entry admits again. (The
    accept pause at half the reserve is measured by a storm in perf/RESULTS.md.)"""
    argv = ["prlimit", "--nofile=200:200", "--", BIN, "--host", H.HOST, "--port", "0", "--mode", "echo",
            "--workers", "1", "--max-connections", "1000"]
    with H.supervised(H.Server(argv, env=H.SANITIZER_ENV if SAN else None, name="wsed")) as srv:
        conns = [H.RawWS(srv.port) for _ in range(136)]
        assert "capped at 200 by RLIMIT_NOFILE" in srv.stderr_text(), "no startup note about the capped table"
        for _ in range(3):
            raw, eof = H.raw_request(srv.port, H.handshake_request(srv.port)[0], timeout=5)
            st, _, _, _ = H.parse_http_response(raw)
            assert st == 503 and eof, "upgrade past the table's 136 usable entries: %r" % raw[:200]
        for c in conns[::17]:
            c.send_frame(OP_TEXT, b"still")
        assert all(c.wait_messages(1, 5) for c in conns[::17]), "an admitted connection stopped echoing"
        for c in conns[:4]:
            c.finish()
        hits = wait_until(lambda: _metric_or_none(srv.port, "wsed_limit_hits_total", limit="file_table"), 5, 0.1)
        assert hits and hits >= 3, "limit_hits{file_table} = %s" % hits
        w = wait_until(lambda: _try_raw(srv.port), 5, 0.1)
        assert w, "no upgrade admitted after a connection closed"
        w.finish()
        for c in conns[4:]:
            c.finish()


@limit(60)
def test_descriptor_table_storm_past_the_reserve_still_answers_503():
    """RLIMIT_NOFILE 200: 136 admitted, then 90 clients that read their 503 but keep the socket
    open (each holds a reserve entry until --linger-timeout), more than the 64 reserve entries.
    The shard stops accepting at half the reserve, so the clients past it wait in the listen
    queue and get their 503 once entries free up; none sees a socket closed unanswered."""
    import socket
    import threading
    argv = ["prlimit", "--nofile=200:200", "--", BIN, "--host", H.HOST, "--port", "0", "--mode", "echo",
            "--workers", "1", "--max-connections", "1000", "--linger-timeout", "1s"]
    with H.supervised(H.Server(argv, env=H.SANITIZER_ENV if SAN else None, name="wsed")) as srv:
        conns = [H.RawWS(srv.port) for _ in range(136)]
        statuses, socks, lock = [], [], threading.Lock()

        def client():
            try:
                s = H.connect(srv.port, 15)
                s.sendall(H.handshake_request(srv.port)[0])
                st, _, _ = H.read_response_head(s, 15)
            except Exception as e:   # noqa: BLE001 - reported in the assertion below
                s, st = None, repr(e)
            with lock:
                statuses.append(st)
                socks.append(s)   # kept open: the server lingers for our EOF

        threads = [threading.Thread(target=client) for _ in range(90)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        others = [x for x in statuses if x != 503]
        assert statuses.count(503) == 90, "%d of 90 got 503; the others: %r" % (statuses.count(503), others)
        for s in socks:
            if s is not None:
                s.close()
        for c in conns[:4]:   # room for GET /metrics
            c.finish()
        m = wait_until(lambda: _metric_or_none(srv.port, "wsed_accept_pauses_total"), 10, 0.2)
        assert m and m >= 1, "wsed_accept_pauses_total = %s" % m
        for c in conns[4:]:
            c.finish()


def _metric_or_none(port, name, **labels):
    try:   # GET /metrics is itself a connection: 503 while the table is still full
        return metric(port, name, **labels)
    except AssertionError:
        return None


def _try_raw(port):
    try:
        return H.RawWS(port)
    except AssertionError:
        return None


@limit(30)
def test_idle_timeout_closes_4408():
    with wsed("--mode", "echo", "--idle-timeout", "1s") as srv:
        idle = H.RawWS(srv.port)
        busy = H.RawWS(srv.port)
        t0 = time.monotonic()
        # busy keeps sending pings (inbound data) every 0.3 s for 2.5 s and must survive
        while time.monotonic() - t0 < 2.5:
            busy.send_frame(OP_PING, b"keepalive")
            time.sleep(0.3)
        assert idle.wait_close(3), "idle connection not closed within 4 s (--idle-timeout 1s)"
        dt = idle.event_times[[e[0] for e in idle.events].index("close")] - t0
        assert idle.close_code() == 4408, "idle close code %s" % idle.close_code()
        assert 0.5 <= dt <= 3.5, "idle connection closed after %.2fs (--idle-timeout 1s)" % dt
        idle.finish()
        assert not busy.closed_by_server, "a connection sending pings was closed: %s" % busy.events[-3:]
        busy.send_frame(OP_TEXT, b"still here")
        assert busy.wait_messages(1, 3) and busy.messages()[0] == ("text", b"still here")
        busy.finish()
        v = metric(srv.port, "wsed_connections_closed_total", reason="idle_timeout")
        assert v and v >= 1, "wsed_connections_closed_total{reason=idle_timeout} = %s" % v


def flood_without_reading(srv, payload_bytes):
    """Upgrades a socket with a tiny receive buffer that never reads, then sends binary messages
    (echoed back into that buffer) until wsed counts a slow_consumer close or the socket fails,
    for at most 10 s. Returns (socket, True if the client was cut)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.settimeout(5)
    s.connect((H.HOST, srv.port))
    req, _ = H.handshake_request(srv.port)
    s.sendall(req)
    time.sleep(0.2)
    s.setblocking(False)
    msg = frame(OP_BINARY, b"s" * payload_bytes)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            s.send(msg)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            return s, True
        if metric(srv.port, "wsed_connections_closed_total", reason="slow_consumer"):
            return s, True
    return s, False


@limit(40)
def test_slow_consumer_closed_4509():
    with wsed("--mode", "echo", "--max-outbound-bytes", "256KiB", "--max-message-size", "1MiB") as srv:
        s, cut = flood_without_reading(srv, 512 * 1024)
        s.close()
        v = wait_until(lambda: metric(srv.port, "wsed_connections_closed_total", reason="slow_consumer"), 3)
        assert cut and v and v >= 1, "a client that never reads was not cut as a slow consumer " \
                                     "(--max-outbound-bytes 256KiB): slow_consumer=%s" % v


@limit(30)
def test_slow_consumer_that_stays_connected_frees_its_slot():
    """A client that never reads and never closes: after the 4509 close and the linger
    timeout, the server must give up the pending send and free the slot, although the TCP
    connection is still open on the client's side."""
    with wsed("--mode", "echo", "--workers", "1", "--max-outbound-bytes", "256KiB",
              "--linger-timeout", "500ms") as srv:
        s, _ = flood_without_reading(srv, 256 * 1024)
        try:
            assert metric(srv.port, "wsed_connections_closed_total", reason="slow_consumer") == 1, \
                "the client was not cut as a slow consumer"
            # The /metrics request itself holds one slot while it is served.
            v = wait_until(lambda: metric(srv.port, "wsed_connection_slots_used") == 1, 5)
            assert v, "slot still held %s s after the close: wsed_connection_slots_used=%s" % (
                5, metric(srv.port, "wsed_connection_slots_used"))
        finally:
            s.close()


BAD_FLAGS = [["--workers", "abc"], ["--nope"], ["--port", "70000"], ["--max-message-size", "lots"],
             ["--idle-timeout", "soon"], ["--mode", "chat"], ["--workers"]]


@limit(30)
def test_command_line():
    for argv in BAD_FLAGS:
        rc, out, err = H.run_cmd([BIN] + argv, timeout=5)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert rc == 2, "%s: exit code %s (stderr %r)" % (" ".join(argv), rc, err[:300])
        assert len(lines) == 1, "%s: expected a one-line error on stderr, got %r" % (" ".join(argv), err[:400])
    rc, out, err = H.run_cmd([BIN, "--help"], timeout=5)
    assert rc == 0 and "--max-message-size" in out and "--port" in out, "--help: rc %s out %r" % (rc, out[:200])
    rc, out, err = H.run_cmd([BIN, "--version"], timeout=5)
    assert rc == 0 and "0.1.0" in out, "--version: rc %s out %r err %r" % (rc, out[:200], err[:200])


@limit(30)
def test_startup_line_and_metrics_shape():
    with wsed("--mode", "echo", "--workers", "2", "--max-connections", "777") as srv:
        assert srv.first_line.startswith("wsed 0.1.0 listening on ws://127.0.0.1:%d/" % srv.port), srv.first_line
        assert "2 workers" in srv.first_line and "mode echo" in srv.first_line and "777" in srv.first_line, \
            srv.first_line
        ev = srv.startup_event   # stdout is a pipe: the startup line is a JSON event (test_logs.py)
        assert ev and ev["event"] == "listening" and ev["level"] == "info", ev
        assert ev["url"] == "ws://127.0.0.1:%d/" % srv.port and ev["workers"] == 2 and ev["mode"] == "echo", ev
        assert ev["connections_max"] == 777 and ev["metrics_url"].endswith(":%d/metrics" % srv.port), ev
        m, text = H.get_metrics(srv.port)
        for fam in ("wsed_connections_open", "wsed_connections_accepted_total", "wsed_messages_in_total",
                    "wsed_messages_out_total", "wsed_bytes_in_total", "wsed_bytes_out_total",
                    "wsed_stale_completions_total"):
            shards = sorted(lab.get("shard") for lab, _ in m.get(fam, []))
            assert shards == ["0", "1"], "%s shards %s (per shard only, no total)" % (fam, shards)
        ws = H.RawWS(srv.port)
        for i in range(10):
            ws.send_frame(OP_TEXT, b"count me %d" % i)
        assert ws.wait_messages(10, 5)
        ws.finish()
        m, _ = H.get_metrics(srv.port)
        mi = H.metric_value(m, "wsed_messages_in_total")
        mo = H.metric_value(m, "wsed_messages_out_total")
        assert mi == 10 and mo == 10, "messages in/out total %s/%s after 10 echoes" % (mi, mo)
        cc = H.metric_value(m, "wsed_connections_closed_total", reason="client_close")
        assert cc and cc >= 1, "closed_total{reason=client_close} = %s" % cc


@limit(60)
def test_garbage_and_abrupt_disconnects_leave_server_healthy():
    """Random bytes after the upgrade, connections reset mid-frame or closed mid-handshake:
    the server keeps serving, the open gauge returns to 0, and it exits cleanly."""
    import random
    rnd = random.Random(6455)
    with wsed("--mode", "echo", "--workers", "2") as srv:
        port = srv.port
        for i in range(60):
            kind = i % 4
            s = H.connect(port)
            try:
                if kind == 0:      # garbage after the upgrade
                    req, _ = H.handshake_request(port)
                    s.sendall(req + bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 3000))))
                elif kind == 1:    # reset in the middle of a frame
                    req, _ = H.handshake_request(port)
                    s.sendall(req + frame(OP_BINARY, b"q" * 5000)[:rnd.randint(1, 4000)])
                    time.sleep(0.005)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif kind == 2:    # garbage instead of an HTTP request
                    s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 500))) + b"\r\n\r\n")
                else:              # EOF in the middle of the request
                    req, _ = H.handshake_request(port)
                    s.sendall(req[:rnd.randint(1, len(req) - 1)])
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                s.close()
        assert srv.alive(), "wsed died: %s" % srv.stderr_text()[-2000:]
        ws = H.RawWS(port)
        ws.send_frame(OP_TEXT, b"healthy")
        assert ws.wait_messages(1, 5) and ws.messages()[0] == ("text", b"healthy")
        ws.finish()
        assert wait_until(lambda: metric(port, "wsed_connections_open") == 0, 10), \
            "wsed_connections_open{total} stays at %s after every client went away" % metric(
                port, "wsed_connections_open")


@limit(60)
def test_a_lingering_close_never_half_closes_the_next_connection():
    """A client that closes as soon as it has a whole `Connection: close` answer (before wsed's
    FIN) makes wsed finish that socket while its SHUT_WR may still be queued; the next accepted
    socket can take the same direct-descriptor index, and must not be the one half-closed: a new
    connection never sees EOF before it sent anything."""
    req = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with wsed("--mode", "echo", "--workers", "1", "--idle-timeout", "0") as srv:
        bad = []
        for attempt in range(300):
            a = H.connect(srv.port)
            a.sendall(req)
            data = b""
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + len(b"ready\n"):
                chunk = a.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            a.close()  # before the server's FIN
            b = H.connect(srv.port)
            readable, _, _ = select.select([b], [], [], 0.05)
            if readable:
                bad.append((attempt, b.recv(100)))
            b.close()
        assert not bad, "%d of 300 new connections were readable before sending anything: %r" % (len(bad), bad[:3])


def test_port_in_use_is_refused_not_shared():
    """The shards bind with SO_REUSEPORT; a second wsed on a port another one listens on must
    not share it silently: it exits 1 saying the address is in use, and the first one keeps
    serving."""
    with wsed("--mode", "echo") as srv:
        p = subprocess.run([BIN, "--mode", "echo", "--port", str(srv.port), "--workers", "1"],
                           capture_output=True, text=True, timeout=20,
                           env=dict(os.environ, **(H.SANITIZER_ENV if SAN else {})))
        assert p.returncode == 1, (p.returncode, p.stderr)
        assert "address already in use" in p.stderr, p.stderr

        async def go():
            async with websockets.connect(uri(srv), open_timeout=5, close_timeout=5) as ws:
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), 5) == "still here"
        asyncio.run(go())
