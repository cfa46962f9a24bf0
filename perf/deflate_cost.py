#!/usr/bin/python3
"""permessage-deflate's cost next to plain, side by side in one run (perf/RESULTS.md).

Starts one wsed (--mode echo --workers 1) and measures, alternating plain and deflate rounds:
  * server CPU per echoed message (utime+stime of the wsed process from /proc, over a bounded
    number of pipelined messages on a few connections), for JSON-like messages of each size;
    the deflate client sends them compressed (zlib, sync flush, as browsers do) and the server
    inflates them and compresses its echo (over --deflate-threshold);
  * with --fanout N (WSE mode, a second wsed): server CPU per publication delivered to N plain
    subscribers against N deflate subscribers (the publication compressed once, the compressed
    twin frame shared), publications posted through the HTTP API, subscribers drained by one
    select loop;
  * memory per idle connection (VmRSS delta over N deflate-negotiated connections and N plain
    ones, each batch on fresh slots, after a first plain batch that takes the one-time costs).
Only 127.0.0.1. Every loop is bounded; the server is stopped by PID.

Usage: /usr/bin/python3 perf/deflate_cost.py [--wsed build/engine/wsed] [--messages 20000]
       [--sizes 256,1024,4096,16384 (empty: memory only)] [--idle 2000] [--rounds 2]
       [--fanout 200 --publications 1000 --publication-size 2048]
"""

import argparse
import json
import os
import select
import socket
import sys
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import wsed_harness as H  # noqa: E402
import test_fanout as F  # noqa: E402  (WSE tokens, the API key file, the publish API client)
import test_wse as W  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def json_of(n, seed):
    out, i = [], 0
    size = 0
    while size < n:
        s = '{"t":"price","p":{"sym":"S%d","bid":%d,"ts":17171717%d}},' % ((i + seed) % 97, 10000 + (i * 7919) % 5000, i)
        out.append(s)
        size += len(s)
        i += 1
    return "".join(out)[:n].encode()


def handshake(port, offer, path="/", extra=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    req, _ = H.handshake_request(port, path=path, extra=(H.DEFLATE_OFFER if offer else b"") + extra)
    s.sendall(req)
    buf = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
        d = s.recv(65536)
        if not d:
            raise RuntimeError("EOF in handshake")
        buf += d
    head = buf.split(b"\r\n\r\n")[0]
    if offer and b"permessage-deflate" not in head:
        raise RuntimeError("deflate not negotiated: %r" % head[:300])
    return s, buf.split(b"\r\n\r\n", 1)[1]


def read_frames(s, pending, count, deadline):
    """Reads until count frames arrived; returns the leftover bytes."""
    buf = bytearray(pending)
    got = 0
    while got < count:
        while True:
            if len(buf) < 2:
                break
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = int.from_bytes(buf[2:4], "big")
                off = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = int.from_bytes(buf[2:10], "big")
                off = 10
            if len(buf) < off + n:
                break
            del buf[:off + n]
            got += 1
            if got == count:
                return bytes(buf)
        if time.monotonic() > deadline:
            raise RuntimeError("timed out with %d of %d echoes" % (got, count))
        d = s.recv(1 << 20)
        if not d:
            raise RuntimeError("EOF")
        buf += d
    return bytes(buf)


def echo_round(srv, size, messages, deflate, conns=4, batch=50):
    socks = [handshake(srv.port, deflate) for _ in range(conns)]
    payload = json_of(size, 1)
    body = H.deflate(payload) if deflate else payload
    frame = H.frame(H.OP_TEXT, body, rsv=4 if deflate else 0)
    per_conn = messages // conns
    cpu0 = cpu_seconds(srv.proc.pid)
    t0 = time.monotonic()
    deadline = t0 + 120
    left = [b""] * conns
    for _ in range(per_conn // batch):
        for i, (s, _) in enumerate(socks):
            s.sendall(frame * batch)
        for i, (s, _) in enumerate(socks):
            left[i] = read_frames(s, left[i] or socks[i][1], batch, deadline)
            socks[i] = (s, b"")
    cpu = cpu_seconds(srv.proc.pid) - cpu0
    wall = time.monotonic() - t0
    for s, _ in socks:
        s.close()
    n = (per_conn // batch) * batch * conns
    return cpu / n * 1e6, wall, n, len(frame)


def idle_memory(srv, n):
    """RSS per idle connection, as (plain, deflate) bytes: a first batch of n plain connections
    takes the one-time costs (pools, buffers touched once) and is not counted; then n
    deflate-negotiated and n more plain ones beside them, each on fresh slots."""
    def batch(deflate):
        r0 = rss_kib(srv.proc.pid)
        socks = [handshake(srv.port, deflate)[0] for _ in range(n)]
        time.sleep(0.5)
        return socks, (rss_kib(srv.proc.pid) - r0) * 1024 / n
    time.sleep(0.3)
    warm, _ = batch(False)
    zipped, z = batch(True)
    plain, p = batch(False)
    for s in warm + zipped + plain:
        s.close()
    return p, z


def subscriber(port, deflate, topic, auth):
    s, rest = handshake(port, deflate, "/wse", auth)
    rest = read_frames(s, rest, 1, time.monotonic() + 10)   # server_ready
    sub = F.compact({"c": "WSE", "t": "subscription_update", "p": {"action": "subscribe", "topics": [topic]}, "v": 1})
    s.sendall(H.frame(H.OP_TEXT, sub.encode()))
    read_frames(s, rest, 1, time.monotonic() + 10)          # the reply
    s.setblocking(False)
    return s


def drain(socks, quiet_s=0.5, limit_s=60):
    """Reads every socket until nothing arrived for quiet_s (at most limit_s); returns bytes read."""
    total, last = 0, time.monotonic()
    deadline = last + limit_s
    while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
        r, _, _ = select.select(socks, [], [], 0.1)
        for s in r:
            try:
                d = s.recv(1 << 20)
            except BlockingIOError:
                continue
            total += len(d)
            last = time.monotonic()
    return total


def fanout_rounds(wsed, n, publications, size, rounds):
    with H.running(wsed, "--mode", "wse", "--workers", "1", "--ping-interval", "0", "--api-key-file",
                   F.key_file(), "--max-connections", str(2 * n + 100), "--idle-timeout", "0",
                   "--inbound-rate", "0", env=W.env()) as srv:
        auth = ("Authorization: Bearer %s\r\n" % W.token("bench")).encode()
        groups = {False: [subscriber(srv.port, False, "plain", auth) for _ in range(n)],
                  True: [subscriber(srv.port, True, "zipped", auth) for _ in range(n)]}
        body = json_of(size, 3).decode()
        api = F.Api(srv.port)
        best = {}
        wire = {}
        for _ in range(rounds):
            for deflate in (False, True):
                topic = "zipped" if deflate else "plain"
                items = [{"topic": topic, "message": {"t": "tick", "p": {"i": i, "d": body}}} for i in range(publications)]
                cpu0 = cpu_seconds(srv.proc.pid)
                received = 0
                for r in range(0, publications, 50):
                    F.post_batches(api, items[r:r + 50], 50)
                    received += drain(groups[deflate], quiet_s=0.02, limit_s=5)
                received += drain(groups[deflate])
                cpu = cpu_seconds(srv.proc.pid) - cpu0 - 0.0
                us = cpu / publications * 1e6
                best[deflate] = us if deflate not in best else min(best[deflate], us)
                wire[deflate] = received / (publications * n)
        api.close()
        m, _ = H.get_metrics(srv.port)
        made = H.metric_value(m, "wsed_deflate_total", event="shared_made")
        for socks in groups.values():
            for s in socks:
                s.close()
        print("\n| subscribers | publication bytes | wire bytes per delivery plain / deflate | server CPU µs/publication plain | deflate | deflate / plain | compressions |")
        print("|---|---|---|---|---|---|---|")
        print("| %d | %d | %.0f / %.0f | %.1f | %.1f | %.2fx | %d for %d publications |" % (
            n, size, wire[False], wire[True], best[False], best[True], best[True] / best[False], made,
            publications * rounds))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wsed", default=H.wsed_binary("build"))
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sizes", default="256,1024,4096,16384")
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fanout", type=int, default=0, help="subscribers per kind for the fan-out rounds (0: none)")
    ap.add_argument("--publications", type=int, default=1000)
    ap.add_argument("--publication-size", type=int, default=2048)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    with H.running(args.wsed, "--mode", "echo", "--workers", "1", "--deflate-threshold", "0",
                   "--max-connections", str(3 * args.idle + 100), "--idle-timeout", "0") as srv:
        print("# wsed %s, %d messages per cell, best of %d rounds, deflate threshold 0" % (
            args.wsed, args.messages, args.rounds))
        print("| message bytes | wire bytes plain / deflate | server CPU µs/msg plain | deflate | deflate / plain |")
        print("|---|---|---|---|---|")
        for size in sizes:
            best = {False: None, True: None}
            wire = {}
            for _ in range(args.rounds):
                for deflate in (False, True):
                    us, _, _, w = echo_round(srv, size, args.messages, deflate)
                    wire[deflate] = w
                    best[deflate] = us if best[deflate] is None else min(best[deflate], us)
            print("| %d | %d / %d | %.2f | %.2f | %.1fx |" % (size, wire[False], wire[True], best[False],
                                                            best[True], best[True] / best[False]))
        plain, z = idle_memory(srv, args.idle)
        print("\nidle connections: %d; RSS per connection plain %.0f B, deflate-negotiated %.0f B" % (
            args.idle, plain, z))
    if args.fanout:
        fanout_rounds(args.wsed, args.fanout, args.publications, args.publication_size, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
