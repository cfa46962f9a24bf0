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
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

# The tests' stdlib harness: free ports, raw HTTP, /metrics parsing, a raw WebSocket client.
sys.path.insert(0, os.path.join(B.REPO, "tests", "integration"))
import wsed_harness as H  # noqa: E402

PAYLOAD = '{"t":"tick","p":{"n":1,"s":"ES","px":5234.75}}'


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
    """(status, body text) of GET path."""
    status, _, _, body = H.http_get(port, path)
    return status, body.decode("utf-8", "replace")


def metric(text, name, **labels):
    """The series of `name` with these labels in a /metrics text (summed; 0 when absent)."""
    return H.metric_value(H.parse_metrics(text), name, **labels) or 0.0


class Subscriber:
    """One raw WebSocket client (no auth: the wsed runs --insecure-no-auth) that subscribes to
    the given topics in requests of 1,000 and then reads and discards everything (no parsing:
    the client must cost the shared CPUs as little as it can)."""

    def __init__(self, port):
        self.ws = H.WSClient(port, timeout=10)
        self.running = False
        self.thread = None

    def subscribe(self, topics):
        for i in range(0, len(topics), 1000):
            self.ws.send_text(json.dumps({"t": "subscription_update",
                                          "p": {"action": "subscribe", "topics": topics[i:i + 1000]}}))

    def start_draining(self):
        sock = self.ws.sock
        sock.settimeout(0.5)
        self.running = True

        def drain():
            while self.running:
                try:
                    if not sock.recv(1 << 20):
                        return
                except socket.timeout:
                    continue
                except OSError:
                    return
        self.thread = threading.Thread(target=drain, daemon=True)
        self.thread.start()

    def close(self):
        self.running = False
        if self.thread:
            self.thread.join(timeout=2)
        self.ws.close()


def one_run(build, mode, k, n, share):
    tmp = tempfile.mkdtemp(prefix="wsed-redis-modes-")
    rport = H.free_port()
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
        if redis.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {rport} did not answer PING within 10 s "
                               f"(exit status {redis.poll()})")
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
            if time.monotonic() > deadline:
                raise RuntimeError(f"wsed (port {port}) not ready (/readyz) within 30 s of its start")
            time.sleep(0.02)
        sub = Subscriber(port)
        topics = ["t:%012d" % i for i in range(k)]
        t0 = time.monotonic()
        sub.subscribe(topics)
        sub.start_draining()
        # Ready again once every SUBSCRIBE is confirmed (pattern mode: at once). The first poll
        # waits until Redis confirmed all k + 3 channels (the topics, @broadcast, this instance's
        # @node: channel and the client's @user:anonymous).
        def confirmed():
            if http_get(port, "/readyz")[0] != 200:
                return False
            return mode == "pattern" or metric(http_get(port, "/metrics")[1],
                                               "wsed_redis_subscriptions") >= k + 3

        deadline = time.monotonic() + 120
        while not confirmed():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}, {k:,} topics: Redis did not confirm the subscriptions "
                                   f"within 120 s (wsed_redis_subscriptions below {k + 3})")
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
        if bench.returncode != 0:
            raise RuntimeError(f"redis-benchmark exited {bench.returncode}: {bench.stderr.strip()[:300]}")
        # Until wsed has taken everything Redis sent it: its received count stands still.
        last, still_since, deadline = -1.0, time.monotonic(), time.monotonic() + 60
        while time.monotonic() < deadline:
            _, body = http_get(port, "/metrics")
            seen = sum(metric(body, "wsed_redis_received_total", result=r)
                       for r in ("delivered", "own", "duplicate", "invalid"))
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
        got = (metric(m1, "wsed_redis_received_total", result="delivered")
               - metric(m0, "wsed_redis_received_total", result="delivered"))
        deliveries = (metric(m1, "wsed_fanout_deliveries_total")
                      - metric(m0, "wsed_fanout_deliveries_total"))
        if os.environ.get("REDIS_MODES_DEBUG"):
            B.log("\n".join(l for l in m1.splitlines() if l.startswith("wsed_redis") or "inbox" in l or "slow" in l))
        sub.close()
        return {"mode": mode, "topics": k, "publications": n, "ready_s": ready_s, "redis_mem_kib": mem / 1024,
                "publish_per_s": rps, "redis_us_per_pub": r_cpu / n * 1e6, "wsed_us_per_pub": w_cpu / n * 1e6,
                "received": got, "deliveries": deliveries}
    finally:
        B.stop(wsed)
        B.stop(redis)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(B.REPO, "build"))
    ap.add_argument("--topics", default="10,1000,100000")
    ap.add_argument("--publications", type=int, default=200000)
    ap.add_argument("--wanted-share", type=float, default=0.5,
                    help="share of the publications for topics this instance carries")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    wsed = os.path.join(args.build, "engine", "wsed")
    missing = [t for t in ("redis-server", "redis-cli", "redis-benchmark", "taskset") if not shutil.which(t)]
    if not os.access(wsed, os.X_OK):
        missing.append(wsed + " (ninja -C build)")
    if missing:
        print("redis_modes.py: missing: " + ", ".join(missing), file=sys.stderr)
        return 2
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
    sys.exit(main())
