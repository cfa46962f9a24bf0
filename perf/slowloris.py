#!/usr/bin/python3
# perf/slowloris.py: a normal client's connect latency (TCP connect + HTTP upgrade + the WSE
# server_ready frame) against a real wsed, first unloaded, then while N sockets (10,000) trickle
# their upgrade request (one byte every --interval seconds: the server's --handshake-timeout
# closes them; they reconnect) or, once upgraded, their frames (one byte of a frame at a time).
# Reports p50/p99 of each phase, the loaded/unloaded p99 ratio (target: within 2x), what the
# server did to the trickling sockets (its /metrics counters) and what the tricklers saw.
#
#   perf/slowloris.py [--wsed build-rel/engine/wsed] [--sockets 10000] [--connects 1000]
#   perf/slowloris.py trickle --port P --mode handshake|frames ...   (the load process alone)
#
# Layout: wsed --workers 1 on CPU 0; the trickler is a separate process (this script, `trickle`)
# on CPU 1 at nice 10, so that the measuring client (the main process, also CPU 1) is scheduled
# first when it wakes; the trickler's CPU time is reported so that it is visible when it, not the
# server, could be the limit. The tricklers bind to 127.0.0.2 .. 127.0.0.(1 + --sources) (with
# IP_BIND_ADDRESS_NO_PORT): 10,000 sockets reconnecting every handshake timeout would otherwise
# share the one ephemeral port range of 127.0.0.1 with the measuring client (and, with
# --max-connections-per-ip, one address's cap), which is not what is measured.
#
# Owns: the wsed and trickler processes it starts (stopped by PID on every exit path). Network:
# 127.0.0.0/8 only. Every wait is bounded (--seconds for the trickler, timeouts on every socket).
import argparse
import base64
import hashlib
import hmac
import heapq
import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

HOST = "127.0.0.1"
SECRET = "slowloris-secret-key-at-least-32-bytes"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(sub="slowloris", ttl_s=3600, secret=SECRET):
    """An HS256 JWT (stdlib only): what wsed verifies at the upgrade."""
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": sub, "iat": now, "exp": now + ttl_s}).encode())
    sig = b64url(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def upgrade_request(port, tok):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /wse HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Cookie: access_token={tok}\r\n\r\n").encode()


def masked_text_frame(payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


PING_FRAME_PAYLOAD = b'{"c":"WSE","t":"ping","p":{"client_timestamp":1}}'


def first_frame_end(buf, head_end):
    """Offset just past the first complete server frame after the HTTP head, or None."""
    p = head_end
    if len(buf) < p + 2:
        return None
    n = buf[p + 1] & 0x7F
    p += 2
    if n == 126:
        if len(buf) < p + 2:
            return None
        n = struct.unpack_from(">H", buf, p)[0]
        p += 2
    elif n == 127:
        if len(buf) < p + 8:
            return None
        n = struct.unpack_from(">Q", buf, p)[0]
        p += 8
    return p + n if len(buf) >= p + n else None


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def duration_s(text):
    """wsed's DUR (10s, 500ms, 2m, 1h, a number of seconds) in seconds."""
    for suffix, scale in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---------------------------------------------------------------------------------------------
# The normal client


def connect_once(port, tok, timeout_s=10.0, tcp_times=None):
    """One connect: TCP + upgrade + server_ready. Returns (seconds, None) or (None, why); appends
    the TCP connect's own seconds to tcp_times when given."""
    req = upgrade_request(port, tok)
    t0 = time.perf_counter()
    try:
        s = socket.create_connection((HOST, port), timeout=timeout_s)
    except OSError as e:
        return None, f"connect: {e.strerror or e}"
    if tcp_times is not None:
        tcp_times.append(time.perf_counter() - t0)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(req)
        buf = b""
        head_end = -1
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                return None, "eof" if not buf else "eof after " + buf[:12].decode(errors="replace")
            buf += chunk
            if head_end < 0:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    continue
                head_end = i + 4
                if not buf.startswith(b"HTTP/1.1 101"):
                    return None, "status " + buf[9:12].decode(errors="replace")
            if first_frame_end(buf, head_end) is not None:
                return time.perf_counter() - t0, None
        return None, "timeout"
    except OSError as e:
        return None, f"io: {e.strerror or e}"
    finally:
        s.close()


def measure_connects(port, tok, count, gap_s, time_budget_s):
    """`count` sequential connects, `gap_s` apart, within time_budget_s. Returns a summary dict."""
    lat, tcp, failures = [], [], {}
    end = time.monotonic() + time_budget_s
    started = time.monotonic()
    for _ in range(count):
        if time.monotonic() > end:
            break
        t, why = connect_once(port, tok, tcp_times=tcp)
        if t is None:
            failures[why] = failures.get(why, 0) + 1
        else:
            lat.append(t)
        time.sleep(gap_s)
    lat.sort()
    tcp.sort()
    return {"connects": len(lat) + sum(failures.values()), "ok": len(lat), "failures": failures,
            "seconds": time.monotonic() - started,
            "tcp_p50_ms": quantile(tcp, 0.5) * 1e3 if tcp else None,
            "tcp_p99_ms": quantile(tcp, 0.99) * 1e3 if tcp else None,
            "over_10ms": sum(1 for v in lat if v > 0.010),
            "p50_ms": quantile(lat, 0.5) * 1e3 if lat else None,
            "p99_ms": quantile(lat, 0.99) * 1e3 if lat else None,
            "max_ms": lat[-1] * 1e3 if lat else None}


# ---------------------------------------------------------------------------------------------
# The trickler (a separate process: `slowloris.py trickle ...`)


class Trickler:
    """N non-blocking sockets from 127.0.0.2.. that each send one byte every `interval_s`:
    mode handshake: the bytes of an upgrade request (never finished in time), reconnecting when
    the server closes; mode frames: a full upgrade first (server_ready awaited), then the bytes of
    masked WSE ping frames. Counts what the server did to them."""

    def __init__(self, port, mode, sockets, interval_s, sources, tok, ramp_per_s, spread_s=0.0):
        self.port, self.mode, self.n, self.interval = port, mode, sockets, interval_s
        self.sources = [f"127.0.0.{2 + i}" for i in range(sources)]
        self.tok, self.ramp_per_s, self.spread_s = tok, ramp_per_s, spread_s
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # fd -> state dict
        self.due = []    # heap of (time, seq, fd, generation): next byte to send
        self.reconnect = []  # heap of (time, seq): sockets to open
        self.seq = 0
        self.gen = 0
        self.st = {"opened": 0, "upgraded": 0, "server_closed": 0, "status": {}, "connect_failed": 0,
                   "bytes_trickled": 0, "frames_completed": 0, "pongs": 0, "bytes_received": 0,
                   "lifetimes_s": [], "errors": {}, "peak_open": 0}

    def _bump(self, table, key):
        self.st[table][key] = self.st[table].get(key, 0) + 1

    def _schedule(self, when, fd, gen):
        self.seq += 1
        heapq.heappush(self.due, (when, self.seq, fd, gen))

    def _queue_open(self, when):
        self.seq += 1
        heapq.heappush(self.reconnect, (when, self.seq))

    def _open(self, now):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.bind((self.sources[self.seq % len(self.sources)], 0))
            s.connect_ex((HOST, self.port))
        except OSError as e:
            s.close()
            self.st["connect_failed"] += 1
            self._bump("errors", f"open: {e.strerror}")
            self._queue_open(now + self.interval)
            return
        self.gen += 1
        req = upgrade_request(self.port, self.tok)
        c = {"sock": s, "gen": self.gen, "born": now, "state": "connecting", "req": req, "sent": 0,
             "rx": b"", "frame": b"", "frame_sent": 0}
        self.conns[s.fileno()] = c
        self.sel.register(s, selectors.EVENT_WRITE)
        self.st["opened"] += 1
        self.st["peak_open"] = max(self.st["peak_open"], len(self.conns))

    def _close(self, fd, now, by_server, reopen=True):
        c = self.conns.pop(fd)
        self.sel.unregister(c["sock"])
        c["sock"].close()
        if by_server:
            self.st["server_closed"] += 1
            self.st["lifetimes_s"].append(now - c["born"])
        if reopen:
            self._queue_open(now + random.uniform(0, self.interval))

    def _on_writable(self, fd, now):
        c = self.conns[fd]
        err = c["sock"].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.st["connect_failed"] += 1
            self._bump("errors", "connect: " + os.strerror(err))
            self._close(fd, now, by_server=False)
            return
        self.sel.modify(c["sock"], selectors.EVENT_READ)
        if self.mode == "handshake":
            c["state"] = "trickle"
            self._schedule(now + random.uniform(0, self.interval), fd, c["gen"])
        else:
            c["state"] = "upgrading"
            try:
                c["sock"].send(c["req"])  # a few hundred bytes: the socket buffer takes them whole
            except OSError as e:
                self._bump("errors", f"send: {e.strerror}")
                self._close(fd, now, by_server=True)

    def _on_readable(self, fd, now):
        c = self.conns[fd]
        try:
            data = c["sock"].recv(65536)
        except OSError as e:
            self._bump("errors", f"recv: {e.strerror}")
            self._close(fd, now, by_server=True)
            return
        if not data:
            self._close(fd, now, by_server=True)
            return
        self.st["bytes_received"] += len(data)
        if c["state"] == "upgrading":
            c["rx"] += data
            i = c["rx"].find(b"\r\n\r\n")
            if i < 0:
                return
            if not c["rx"].startswith(b"HTTP/1.1 101"):
                self._bump("status", c["rx"][9:12].decode(errors="replace"))
                self._close(fd, now, by_server=True)
                return
            if first_frame_end(c["rx"], i + 4) is None:
                return
            c["rx"] = b""
            c["state"] = "trickle"
            self.st["upgraded"] += 1
            self._schedule(now + random.uniform(0, self.interval), fd, c["gen"])
        elif c["state"] == "trickle" and self.mode == "handshake" and data[:5] == b"HTTP/":
            self._bump("status", data[9:12].decode(errors="replace"))
            self._close(fd, now, by_server=True)
        elif c["state"] == "trickle":
            # frames mode: the answers to the completed ping frames (a PONG split over two reads
            # is missed: they are a few dozen bytes, on loopback one read each)
            self.st["pongs"] += data.count(b'"t":"PONG"')

    def _trickle(self, fd, gen, now):
        c = self.conns.get(fd)
        if c is None or c["gen"] != gen or c["state"] != "trickle":
            return
        if self.mode == "handshake":
            if c["sent"] >= len(c["req"]) - 1:
                c["sent"] = 0  # never finish the request: start its head again (still garbage)
            b = c["req"][c["sent"]:c["sent"] + 1]
        else:
            if c["frame_sent"] >= len(c["frame"]):
                c["frame"], c["frame_sent"] = masked_text_frame(PING_FRAME_PAYLOAD), 0
            b = c["frame"][c["frame_sent"]:c["frame_sent"] + 1]
        try:
            c["sock"].send(b)
        except OSError as e:
            self._bump("errors", f"send: {e.strerror}")
            self._close(fd, now, by_server=True)
            return
        self.st["bytes_trickled"] += 1
        if self.mode == "handshake":
            c["sent"] += 1
        else:
            c["frame_sent"] += 1
            if c["frame_sent"] == len(c["frame"]):
                self.st["frames_completed"] += 1
        self._schedule(now + self.interval, fd, gen)

    def run(self, seconds, status_path=None):
        end = time.monotonic() + seconds
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        start = time.monotonic()
        # The ramp: ramp_per_s opens a second, spread over at least `spread_s` so that the
        # handshake timeouts (and the reconnects) that follow come at an even rate, not in waves.
        ramp_s = max(self.n / self.ramp_per_s, self.spread_s)
        for i in range(self.n):
            self._queue_open(start + ramp_s * i / self.n)
        ramped_at = None
        last_status = 0.0
        while True:
            now = time.monotonic()
            if now >= end or stop:
                break
            while self.reconnect and self.reconnect[0][0] <= now and len(self.conns) < self.n:
                heapq.heappop(self.reconnect)
                self._open(now)
            while self.due and self.due[0][0] <= now:
                _, _, fd, gen = heapq.heappop(self.due)
                self._trickle(fd, gen, now)
            if ramped_at is None and self.st["opened"] >= self.n and (
                    self.mode == "handshake" or self.st["upgraded"] >= self.n):
                ramped_at = now - start
            if status_path and now - last_status >= 0.5:
                last_status = now
                with open(status_path + ".tmp", "w") as f:
                    json.dump({"open": len(self.conns), "upgraded": self.st["upgraded"],
                               "ramped": ramped_at is not None}, f)
                os.replace(status_path + ".tmp", status_path)
            nxt = min([end] + [h[0][0] for h in (self.due, self.reconnect) if h])
            for key, events in self.sel.select(max(0.0, min(0.05, nxt - now))):
                fd = key.fd
                if fd not in self.conns:
                    continue
                t = time.monotonic()
                if events & selectors.EVENT_WRITE and self.conns[fd]["state"] == "connecting":
                    self._on_writable(fd, t)
                elif events & selectors.EVENT_READ:
                    self._on_readable(fd, t)
        open_at_end = len(self.conns)
        for fd in list(self.conns):
            self._close(fd, time.monotonic(), by_server=False, reopen=False)
        life = sorted(self.st.pop("lifetimes_s"))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.st.update({"open_at_end": open_at_end, "ramp_s": ramped_at,
                        "server_closed_lifetime_p50_s": quantile(life, 0.5),
                        "server_closed_lifetime_min_s": life[0] if life else None,
                        "server_closed_lifetime_max_s": life[-1] if life else None,
                        "cpu_s": usage.ru_utime + usage.ru_stime, "seconds": seconds})
        return self.st


def trickle_main(argv):
    ap = argparse.ArgumentParser(prog="slowloris.py trickle")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["handshake", "frames"], required=True)
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between a socket's bytes")
    ap.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2..")
    ap.add_argument("--seconds", type=float, required=True, help="run this long, then close all")
    ap.add_argument("--ramp-per-s", type=float, default=2000)
    ap.add_argument("--spread", type=float, default=0,
                    help="spread the first opens over at least this many seconds")
    ap.add_argument("--token", default="", help="frames mode: the JWT (default: minted)")
    ap.add_argument("--status", help="write {open, upgraded, ramped} to this file twice a second")
    a = ap.parse_args(argv)
    soft, _ = raise_nofile()
    if a.sockets + 64 > soft:
        print(f"trickle: {a.sockets} sockets need RLIMIT_NOFILE > {a.sockets + 64} (have {soft})",
              file=sys.stderr)
        return 2
    t = Trickler(a.port, a.mode, a.sockets, a.interval, max(1, min(a.sources, 250)),
                 a.token or token(), a.ramp_per_s, a.spread)
    print(json.dumps(t.run(min(a.seconds, 3600), a.status)), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# The measurement


def metrics(port):
    """wsed's /metrics as {series: value}, summed over the shards ({}: no answer)."""
    return benchlib.scrape_summed(port, HOST, 5)


INTERESTING = ("wsed_connections_closed_total", "wsed_connections_rejected_total",
               "wsed_limit_hits_total", "wsed_accept_pauses_total", "wsed_connections_accepted_total",
               "wsed_connections_open", "wsed_wse_messages_total")


def metric_delta(before, after):
    out = {}
    for k, v in after.items():
        if k.startswith(INTERESTING):
            d = v - before.get(k, 0) if not k.startswith("wsed_connections_open") else v
            if d:
                out[k] = d
    return out


def wait_status(path, pred, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with open(path) as f:
                st = json.load(f)
            if pred(st):
                return st
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return None


def loaded_phase(args, port, tok, mode, cpu_client):
    status = f"/tmp/slowloris-{os.getpid()}-{mode}.status"
    budget = args.connects * (args.gap + 0.05) + 30
    seconds = args.ramp_timeout + args.settle + budget
    cmd = ["taskset", "-c", str(cpu_client), "nice", "-n", "10", sys.executable,
           os.path.abspath(__file__), "trickle", "--port", str(port), "--mode", mode,
           "--sockets", str(args.sockets), "--interval", str(args.interval),
           "--sources", str(args.sources), "--seconds", str(seconds),
           "--spread", str(args.hs_timeout_s if mode == "handshake" else 0), "--token", tok,
           "--status", status]
    benchlib.log("+ " + " ".join(cmd[:-4]) + " --token TOKEN --status FILE")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    benchlib.STARTED.append(proc)
    try:
        want = (lambda st: st["ramped"])
        st = wait_status(status, want, args.ramp_timeout)
        if st is None:
            benchlib.log(f"{mode}: the tricklers did not ramp within {args.ramp_timeout} s")
        if mode == "handshake":
            time.sleep(args.settle)  # the first handshake timeouts: the churn at its steady rate
        before = metrics(port)
        res = measure_connects(port, tok, args.connects, args.gap, budget)
        after = metrics(port)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        benchlib.stop(proc)
        for p in (status, status + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)
    try:
        trickler = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        trickler = {}
    res["server"] = metric_delta(before, after)
    res["trickler"] = trickler
    return res


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "trickle":
        return trickle_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description="slowloris against wsed: connect p50/p99 unloaded "
                                 "and under N trickling sockets")
    ap.add_argument("--wsed", default=os.path.join(benchlib.REPO, "build-rel", "engine", "wsed"))
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--connects", type=int, default=1000, help="measured connects per phase")
    ap.add_argument("--gap", type=float, default=0.005, help="seconds between measured connects")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between a trickler's bytes")
    ap.add_argument("--sources", type=int, default=8, help="trickler source addresses 127.0.0.2..")
    ap.add_argument("--modes", default="handshake,frames")
    ap.add_argument("--handshake-timeout", default="10s")
    ap.add_argument("--max-pending-handshakes", type=int, default=0,
                    help="wsed's cap (0: wsed's default, 16384)")
    ap.add_argument("--settle", type=float, default=0,
                    help="seconds after the ramp before measuring (default: handshake timeout + 1)")
    ap.add_argument("--ramp-timeout", type=float, default=60)
    ap.add_argument("--wsed-args", default="", help="more wsed flags")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    benchlib.install_handlers()
    soft, hard = raise_nofile()
    hs_timeout_s = duration_s(args.handshake_timeout)
    args.hs_timeout_s = hs_timeout_s
    if not args.settle:
        args.settle = hs_timeout_s + 1
    pending = ["--max-pending-handshakes", str(args.max_pending_handshakes)] if args.max_pending_handshakes else []
    cmd = [args.wsed, "--mode", "wse", "--workers", "1", "--port", "0",
           "--handshake-timeout", args.handshake_timeout, *pending,
           "--max-connections", str(args.sockets + 4096)] + args.wsed_args.split()
    srv, port = benchlib.start_server("wsed", cmd, 0, env={"WSED_JWT_SECRET": SECRET})
    tok = token()
    results = {"command": " ".join(sys.argv), "wsed": " ".join(cmd), "machine": benchlib.machine(),
               "revision": benchlib.git_revision(), "rlimit_nofile": [soft, hard],
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        os.sched_setaffinity(0, {1 % os.cpu_count()})
        for _ in range(50):  # warm-up: page in the server's paths and the client's
            connect_once(port, tok)
        budget = args.connects * (args.gap + 0.05) + 30
        results["unloaded"] = measure_connects(port, tok, args.connects, args.gap, budget)
        benchlib.log(f"unloaded: {fmt_phase(results['unloaded'])}")
        for mode in [m for m in args.modes.split(",") if m]:
            r = loaded_phase(args, port, tok, mode, 1 % os.cpu_count())
            results[mode] = r
            benchlib.log(f"{mode}: {fmt_phase(r)}")
        results["unloaded_after"] = measure_connects(port, tok, args.connects, args.gap, budget)
        benchlib.log(f"unloaded after: {fmt_phase(results['unloaded_after'])}")
    finally:
        benchlib.stop(srv)
    print(report(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    base = results["unloaded"]["p99_ms"]
    ok = all(results[m]["ok"] == results[m]["connects"] and base and results[m]["p99_ms"]
             and results[m]["p99_ms"] <= 2 * base for m in args.modes.split(",") if m)
    return 0 if ok else 1


def fmt_phase(r):
    f = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"{r['ok']}/{r['connects']} ok, p50 {f(r['p50_ms'])} ms, p99 {f(r['p99_ms'])} ms, "
            f"max {f(r['max_ms'])} ms, TCP connect p50 {f(r['tcp_p50_ms'])} p99 {f(r['tcp_p99_ms'])} ms, "
            f"{r['over_10ms']} over 10 ms, {r['seconds']:.1f} s" + (f", failures {r['failures']}" if r["failures"] else ""))


def report(res, args):
    base = res["unloaded"]["p99_ms"]
    lines = [f"slowloris: {res['date']}, {res['revision']}, {res['machine']}",
             f"command: {res['command']}", f"wsed: {res['wsed']}", "",
             f"| phase | connects ok | p50 ms | p99 ms | max ms | p99 / unloaded p99 |",
             "|---|---|---|---|---|---|"]
    for name in ["unloaded"] + [m for m in args.modes.split(",") if m] + ["unloaded_after"]:
        r = res[name]
        ratio = (r["p99_ms"] / base) if base and r["p99_ms"] else None
        label = name if name.startswith("unloaded") else f"{args.sockets:,} trickling {name}"
        lines.append(f"| {label} | {r['ok']}/{r['connects']} | {benchlib.fmt(r['p50_ms'])} | "
                     f"{benchlib.fmt(r['p99_ms'])} | {benchlib.fmt(r['max_ms'])} | "
                     f"{benchlib.fmt(ratio)} |")
    for name in [m for m in args.modes.split(",") if m]:
        r = res[name]
        t = r.get("trickler", {})
        lines += ["", f"{name}: server counters over the measurement: " +
                  ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["server"].items())),
                  f"{name}: tricklers: " + ", ".join(
                      f"{k} {benchlib.fmt(v) if isinstance(v, float) else v}"
                      for k, v in t.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
