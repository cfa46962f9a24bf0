#!/usr/bin/python3
"""perf/redis_modes.py: --redis-subscribe exact (SUBSCRIBE per topic with a local subscriber)
against pattern (one PSUBSCRIBE <prefix>*) at 10, 1,000 and 100,000 subscribed topics.

  /usr/bin/python3 perf/redis_modes.py [--build build] [--topics 10,1000,100000]
                                       [--publications 200000] [--wanted-share 0.5]

Per mode and topic count K: a redis-server on a free 127.0.0.1 port (pinned to CPU 0), one wsed
(--workers 1, pinned to CPU 1) whose one client subscribes to K topics `t:%012d`; then
redis-benchmark (CPU 0) PUBLISHes N publications pipelined (-P 64) to random topics among K /
wanted-share (so with 0.5 half of them are for topics this instance does not carry: another
instance's traffic). Printed per run: seconds from the subscription request to /readyz 200, the
Redis memory the subscriptions take, PUBLISH/s as redis-benchmark saw it, Redis CPU per
publication, wsed CPU per publication, and what wsed received and delivered. Every process is
started here and stopped by PID; everything is bounded in time.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

PAYLOAD = '{"t":"tick","p":{"n":1,"s":"ES","px":5234.75}}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cli(port, *args, timeout=30):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                         timeout=timeout, check=True)
    return out.stdout


def redis_info(port, section):
    info = {}
    for line in redis_cli(port, "INFO", section).splitlines():
        if ":" in line:
            k, v = line.strip().split(":", 1)
            info[k] = v
    return info


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


def metric(text, name, label=None):
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if label is None and line.startswith(name + " "):
            return float(line.split()[-1])
        if label and line.startswith(name + "{") and label in line and 'shard="total"' in line or (
                label and line.startswith(name + "{" + label + "}")):
            return float(line.split()[-1])
    return 0.0


class Subscriber:
    """One raw WebSocket client (no auth: the wsed runs --insecure-no-auth) that subscribes to
    the given topics in requests of 1,000 and then reads and discards everything."""

    def __init__(self, port):
        import base64
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        assert buf.startswith(b"HTTP/1.1 101"), buf[:100]

    def send_text(self, text):
        import struct
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def subscribe(self, topics):
        for i in range(0, len(topics), 1000):
            self.send_text(json.dumps({"t": "subscription_update",
                                       "p": {"action": "subscribe", "topics": topics[i:i + 1000]}}))

    def start_draining(self):
        import threading
        self.sock.settimeout(0.5)
        self.running = True

        def drain():
            while self.running:
                try:
                    if not self.sock.recv(1 << 20):
                        return
                except socket.timeout:
                    continue
                except OSError:
                    return
        self.thread = threading.Thread(target=drain, daemon=True)
        self.thread.start()

    def close(self):
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()


def one_run(build, mode, k, n, share):
    tmp = tempfile.mkdtemp(prefix="wsed-redis-modes-")
    rport = free_port()
    redis = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--daemonize", "no",
                              "--client-output-buffer-limit", "pubsub 0 0 0"],
                             cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    B.STARTED.append(redis)
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis_cli(rport, "PING").strip() == "PONG":
                break
        except subprocess.CalledProcessError:
            pass
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    mem0 = int(redis_info(rport, "memory")["used_memory"])
    wsed, port = B.start_server("wsed", [os.path.join(build, "engine", "wsed"), "--port", "0", "--workers", "1",
                                         "--insecure-no-auth", "--ping-interval", "0",
                                         "--max-topics-per-connection", str(max(k, 100)),
                                         "--slow-consumer", "drop", "--max-outbound-bytes", "64MiB",
                                         "--redis-url", f"redis://127.0.0.1:{rport}",
                                         "--redis-subscribe", mode], cpu=1)
    try:
        deadline = time.monotonic() + 30
        while http_get(port, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "wsed not ready"
            time.sleep(0.02)
        sub = Subscriber(port)
        topics = ["t:%012d" % i for i in range(k)]
        t0 = time.monotonic()
        sub.subscribe(topics)
        sub.start_draining()
        # Ready again once every SUBSCRIBE is confirmed (pattern mode: at once). The first poll
        # waits until Redis confirmed all k + 3 channels (the topics, @broadcast, this instance's
        # @node: channel and the client's @user:anonymous).
        deadline = time.monotonic() + 120
        while True:
            st, body = http_get(port, "/metrics")
            if http_get(port, "/readyz")[0] == 200 and (mode == "pattern" or metric(body, "wsed_redis_subscriptions") >= k + 3):
                break
            assert time.monotonic() < deadline, "subscriptions not confirmed"
            time.sleep(0.01)
        ready_s = time.monotonic() - t0
        mem = int(redis_info(rport, "memory")["used_memory"]) - mem0
        space = max(1, int(k / share))
        cpu_r0 = redis_info(rport, "cpu")
        cpu_w0 = B.proc_cpu_seconds(wsed.pid)
        _, m0 = http_get(port, "/metrics")
        bench = subprocess.run(["taskset", "-c", "0", "redis-benchmark", "-p", str(rport), "-n", str(n), "-c", "4",
                                "-P", "64", "-r", str(space), "-q", "--csv",
                                "PUBLISH", "wse:t:__rand_int__", PAYLOAD],
                               capture_output=True, text=True, timeout=300)
        # Until wsed has taken everything Redis sent it: its received count stands still.
        last, still_since, deadline = -1.0, time.monotonic(), time.monotonic() + 60
        while time.monotonic() < deadline:
            _, body = http_get(port, "/metrics")
            seen = sum(metric(body, "wsed_redis_received_total", 'result="%s"' % r) for r in ("delivered", "own", "duplicate", "invalid"))
            if seen != last:
                last, still_since = seen, time.monotonic()
            elif time.monotonic() - still_since > 0.5:
                break
            time.sleep(0.05)
        cpu_r1 = redis_info(rport, "cpu")
        cpu_w1 = B.proc_cpu_seconds(wsed.pid)
        _, m1 = http_get(port, "/metrics")
        rps = 0.0
        for line in bench.stdout.splitlines():  # the test name's own quotes are not escaped
            parts = line.rstrip().rsplit('","', 7)
            if line.startswith('"PUBLISH') and len(parts) == 8:
                rps = float(parts[1])
        r_cpu = sum(float(cpu_r1[x]) - float(cpu_r0[x]) for x in ("used_cpu_user", "used_cpu_sys"))
        w_cpu = sum(cpu_w1) - sum(cpu_w0)
        got = metric(m1, "wsed_redis_received_total", 'result="delivered"') - metric(
            m0, "wsed_redis_received_total", 'result="delivered"')
        deliveries = metric(m1, "wsed_fanout_deliveries_total", 'shard="total"') - metric(
            m0, "wsed_fanout_deliveries_total", 'shard="total"')
        if os.environ.get("REDIS_MODES_DEBUG"):
            B.log("\n".join(l for l in m1.splitlines() if l.startswith("wsed_redis") or "inbox" in l or "slow" in l))
        sub.close()
        return {"mode": mode, "topics": k, "publications": n, "ready_s": ready_s, "redis_mem_kib": mem / 1024,
                "publish_per_s": rps, "redis_us_per_pub": r_cpu / n * 1e6, "wsed_us_per_pub": w_cpu / n * 1e6,
                "received": got, "deliveries": deliveries}
    finally:
        B.stop(wsed)
        B.stop(redis)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(B.REPO, "build"))
    ap.add_argument("--topics", default="10,1000,100000")
    ap.add_argument("--publications", type=int, default=200000)
    ap.add_argument("--wanted-share", type=float, default=0.5,
                    help="share of the publications for topics this instance carries")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    B.install_handlers()
    rows = []
    for k in [int(x) for x in args.topics.split(",")]:
        for _ in range(args.rounds):
            for mode in ("exact", "pattern"):   # side by side, interleaved
                r = one_run(args.build, mode, k, args.publications, args.wanted_share)
                B.log(json.dumps(r))
                rows.append(r)
    print("| topics | mode | ready after subscribe (s) | Redis memory (KiB) | PUBLISH/s | Redis µs/pub | "
          "wsed µs/pub | received by wsed | deliveries |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| {topics:,} | {mode} | {ready_s:.3f} | {redis_mem_kib:,.0f} | {publish_per_s:,.0f} | "
              "{redis_us_per_pub:.2f} | {wsed_us_per_pub:.2f} | {received:,.0f} | {deliveries:,.0f} |".format(**r))


if __name__ == "__main__":
    main()
