#!/usr/bin/python3
# perf/soak.py: wsed holding N connections (100,000) for --seconds (600) with pings and a trickle
# of publications. wse-bench (sustained-hold) holds the connections through its io_uring rings of
# direct descriptors (beyond RLIMIT_NOFILE: one ring per 20,000, source addresses 127.0.0.x as
# the ports need), each sending a WSE app ping every --ping-interval and checking its PONG; this
# script publishes --publish-rate broadcasts a second (0.1) through POST /api/publish (every connection
# receives each one; wsed's own server pings go out every 25 s as in production), samples wsed's
# RSS and /metrics every --sample-every seconds, and reports: survival (open at the end / opened:
# must be 100%), pings sent / answered and their latency, publications accepted by the API and
# delivered (wsed's deliveries and the client's count of received messages), RSS first / last /
# max and its slope after the warm-up.
#
#   perf/soak.py [--connections 100000] [--seconds 600] [--wsed build-rel/engine/wsed]
#
# wsed runs with --workers ceil(N / 19,000) (each shard's descriptor table is capped by
# RLIMIT_NOFILE; README "Command line"), --max-connections N + 10%, its default --idle-timeout
# (60 s: the client's pings are what keeps a connection), on both CPUs like the bench: on two
# cores the server and the load share them (said in the report).
#
# Owns: the wsed and wse-bench processes it starts (stopped by PID on every exit path), a temp
# dir for the API key and the bench's JSON. Network: 127.0.0.0/8 only. Every wait is bounded.
import argparse
import http.client
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

HOST = "127.0.0.1"
BENCH_SECRET = "bench-secret-key-for-testing-only"  # wse-bench's default --secret
PER_SHARD = 19000  # connections one shard's RLIMIT_NOFILE-capped table holds with its reserve


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def metrics(port, timeout_s=10):
    return benchlib.scrape_summed(port, HOST, timeout_s)


class Publisher(threading.Thread):
    """POST /api/publish of one broadcast every 1/rate seconds over a keep-alive connection until
    stop is set; counts the items the API accepted and every other answer."""

    def __init__(self, port, key, rate):
        super().__init__(daemon=True)
        self.port, self.key, self.rate = port, key, rate
        self.stop = threading.Event()
        self.accepted = 0
        self.failures = {}
        self.seq = 0

    # wsed closes a kept-alive HTTP connection idle for --handshake-timeout (10 s): a connection
    # idle for longer than this is replaced before the next request (else at one publication
    # every 10 s a request now and then meets the reset: 3 of 60 in the first 10-minute run).
    idle_reconnect_s = 4.0

    def run(self):
        conn = None
        last_used = 0.0
        next_t = time.monotonic()
        while not self.stop.is_set():
            if conn is not None and time.monotonic() - last_used > self.idle_reconnect_s:
                conn.close()
                conn = None
            body = json.dumps({"broadcast": True, "message": {
                "t": "soak_tick", "p": {"seq": self.seq, "ts_ms": int(time.time() * 1000)}}})
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                conn.request("POST", "/api/publish", body=body, headers={
                    "Authorization": "Bearer " + self.key, "Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = resp.read()
                last_used = time.monotonic()
                if resp.status == 200:
                    self.accepted += json.loads(answer).get("accepted", 0)
                    self.seq += 1
                else:
                    self.failures[str(resp.status)] = self.failures.get(str(resp.status), 0) + 1
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.failures[type(e).__name__] = self.failures.get(type(e).__name__, 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
            next_t += 1.0 / self.rate
            self.stop.wait(max(0.0, next_t - time.monotonic()))
        if conn is not None:
            conn.close()


def slope_kib_per_min(samples):
    """Least-squares slope of (t_s, rss_kib) samples, KiB per minute."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    return 60 * sum((t - mt) * (r - mr) for t, r in samples) / den if den else None


def soak(args, log=benchlib.log):
    """Starts wsed, runs hold() against it, stops it; returns the results dict (raises
    RuntimeError on a setup failure)."""
    tmp = tempfile.mkdtemp(prefix="wsed-soak-")
    key = os.urandom(18).hex()
    key_file = os.path.join(tmp, "api.key")
    with open(key_file, "w") as f:
        f.write(key)
    workers = args.workers or max(1, math.ceil(args.connections / PER_SHARD))
    cmd = (wsed_command(args.wsed, args.connections, workers, key_file) + ["--port", "0"] +
           args.wsed_args.split())
    log("+ " + " ".join(cmd))
    logf = open(os.path.join(tmp, "wsed.log"), "w")
    srv = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                           env=dict(os.environ, WSED_JWT_SECRET=BENCH_SECRET))
    benchlib.STARTED.append(srv)
    try:
        port = None
        end = time.monotonic() + 15
        while port is None and time.monotonic() < end and srv.poll() is None:
            time.sleep(0.1)
            with open(logf.name, errors="replace") as f:
                for line in f:
                    if "ws://" in line:
                        port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        if port is None:
            raise RuntimeError("wsed did not start: " + open(logf.name).read()[-400:])
        res = hold(args, port, srv.pid, key, tmp, log)
    finally:
        benchlib.stop(srv, 15)
        logf.close()
    res.update({"wsed": " ".join(cmd).replace(key_file, "KEYFILE"), "workers": workers})
    return res


def wsed_command(wsed, connections, workers, key_file):
    """wsed and its flags for a soak of `connections` (the bench's JWT issuer and audience; no
    --port)."""
    return [wsed, "--mode", "wse", "--workers", str(workers),
            "--max-connections", str(int(connections * 1.1) + 100), "--jwt-issuer", "wse-bench",
            "--jwt-audience", "wse-bench", "--api-key-file", key_file]


def hold(args, port, pid, key, tmp, log=benchlib.log):
    """wse-bench sustained-hold of args.connections against the wsed on `port` (process `pid`,
    API key `key`) with the publisher and the samples; returns the summarized results."""
    res = {}
    bench = pub = None
    try:
        json_path = os.path.join(tmp, "bench.json")
        bcmd = [args.bench, "--port", str(port), "--test", "sustained-hold",
                "--tiers", str(args.connections), "--duration", str(args.seconds),
                "--ping-interval", str(args.ping_interval), "--server-pid", str(pid),
                "--ramp-timeout", str(args.ramp_timeout), "--json", json_path]
        log("+ " + " ".join(bcmd))
        with open(os.path.join(tmp, "bench.out"), "w") as out:
            bench = subprocess.Popen(bcmd, stdout=out, stderr=subprocess.STDOUT)
        benchlib.STARTED.append(bench)
        t0 = time.monotonic()
        # The ramp: until every connection is open (or the bench gave up).
        ramp_end = t0 + args.ramp_timeout + 10
        opened_at = None
        while time.monotonic() < ramp_end and bench.poll() is None:
            if metrics(port).get("wsed_connections_open", 0) >= args.connections:
                opened_at = time.monotonic() - t0
                break
            time.sleep(0.5)
        res["ramp_s"] = opened_at
        log(f"ramp: {args.connections:,} open after {opened_at:.1f} s" if opened_at else
            "ramp: not every connection opened")
        pub = Publisher(port, key, args.publish_rate)
        pub.start()
        hold_end = t0 + args.seconds + (opened_at or 0) - args.publish_stop_before
        samples = []  # (t since the ramp, rss KiB, open, deliveries)
        first_m = hold_m = metrics(port)
        next_sample = time.monotonic()
        while bench.poll() is None and time.monotonic() < t0 + args.seconds + args.ramp_timeout + 60:
            now = time.monotonic()
            if now >= hold_end and not pub.stop.is_set():
                pub.stop.set()
            if now >= next_sample:
                m = metrics(port)
                if not m:
                    res["metrics_timeouts"] = res.get("metrics_timeouts", 0) + 1
                    m = hold_m
                hold_m = m
                samples.append((round(now - t0 - (opened_at or 0), 1), rss_kib(pid),
                                int(m.get("wsed_connections_open", 0)),
                                int(m.get("wsed_fanout_deliveries_total", 0))))
                log(f"t={samples[-1][0]:7.1f}s rss {samples[-1][1]:,} KiB open {samples[-1][2]:,} "
                    f"deliveries {samples[-1][3]:,} published {pub.accepted:,}")
                next_sample += args.sample_every
            time.sleep(min(1.0, max(0.05, next_sample - time.monotonic())))
        pub.stop.set()
        pub.join(timeout=15)
        rc = bench.wait(timeout=args.ramp_timeout + 120)
        last_m = metrics(port)
        samples.append((round(time.monotonic() - t0 - (opened_at or 0), 1), rss_kib(pid),
                        int(hold_m.get("wsed_connections_open", 0)),
                        int(last_m.get("wsed_fanout_deliveries_total", 0))))
        res["bench_rc"] = rc
        with open(json_path) as f:
            doc = json.load(f)
        res["bench"] = doc["tests"]["sustained-hold"]["rows"][0]
        res["publications_accepted"] = pub.accepted
        res["publish_failures"] = pub.failures
        res["samples"] = samples
        res["metrics_first"] = {k: v for k, v in first_m.items() if k.startswith(SERIES)}
        res["metrics_last"] = {k: v for k, v in last_m.items() if k.startswith(SERIES)}
        res["metrics_hold"] = {k: v for k, v in hold_m.items() if k.startswith(SERIES)}
        with open(os.path.join(tmp, "bench.out")) as f:
            res["bench_tail"] = f.read()[-3000:]
    finally:
        if pub is not None:
            pub.stop.set()
        if bench is not None:
            benchlib.stop(bench, 15)
    return summarize(res, args)


SERIES = ("wsed_connections_closed_total", "wsed_connections_open", "wsed_fanout_deliveries_total",
          "wsed_wse_server_pings_total", "wsed_wse_messages_total", "wsed_slow_consumer_total",
          "wsed_connections_accepted_total", "wsed_api_publications_total",
          "wsed_connections_rejected_total", "wsed_limit_hits_total")


def summarize(res, args):
    row = res["bench"]
    opened = row.get("opened", 0)
    res["survival_pct"] = 100.0 * row.get("open_at_end", 0) / opened if opened else 0.0
    res["pings_sent"] = row.get("sent_msgs", 0)
    res["pongs"] = row.get("replies", 0)
    last = res["metrics_last"]
    res["server_pings_sent"] = int(last.get("wsed_wse_server_pings_total", 0))
    # wsed_fanout_deliveries_total counts every shared frame queued, its server pings too.
    res["server_deliveries"] = (int(last.get("wsed_fanout_deliveries_total", 0)) -
                                res["server_pings_sent"])
    other = row.get("errors", {}).get("other_messages", 0)
    # What the clients received that is not a PONG: the publications, wsed's server pings and
    # one server_hello per connection (the answer to wse-bench's client_hello).
    res["client_received_publications"] = other - res["server_pings_sent"] - opened
    res["expected_deliveries"] = res["publications_accepted"] * row.get("open_at_end", 0)
    warm = [(t, r) for t, r, _, _ in res["samples"] if t >= args.warmup and r]
    rss = [r for _, r, _, _ in res["samples"] if r]
    res["rss_kib"] = {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                      "max": max(rss) if rss else None,
                      "first_after_warmup": warm[0][1] if warm else None,
                      "slope_kib_per_min_after_warmup": slope_kib_per_min(warm)}
    # Closes wsed made while the connections were held (the last sample before the bench ended;
    # the bench's own closes at its end come after it).
    res["server_closed"] = {k: v for k, v in res["metrics_hold"].items()
                            if k.startswith("wsed_connections_closed_total") and v}
    return res


def report(res, args):
    b = res["bench"]
    lat = b.get("latency_ms", {})
    r = res["rss_kib"]
    f = benchlib.fmt
    lines = [
        f"soak: {res['date']}, {res['revision']}, {res['machine']}",
        f"command: {res['command']}", f"wsed: {res['wsed']}",
        f"wse-bench: {b.get('rings')} rings, {b.get('source_ips')} source addresses, ramp "
        f"{f(b.get('ramp_s'))} s, window {f(b.get('window_s'))} s, exit code {res['bench_rc']}",
        "",
        "| connections | held | survival | pings sent / PONGs | ping p50 / p99 / max ms | "
        "publications (API) | deliveries: wsed / clients / expected | RSS first / last / max MiB | "
        "RSS slope after warm-up |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {b.get('opened', 0):,} / {args.connections:,} | {args.seconds:.0f} s | "
        f"{res['survival_pct']:.3f}% ({b.get('open_at_end', 0):,} open at the end) | "
        f"{res['pings_sent']:,} / {res['pongs']:,} | {f(lat.get('p50'))} / {f(lat.get('p99'))} / "
        f"{f(lat.get('max'))} | {res['publications_accepted']:,} | {res['server_deliveries']:,} / "
        f"{res['client_received_publications']:,} / {res['expected_deliveries']:,} | "
        f"{f(r['first'] and r['first'] / 1024, 1)} / {f(r['last'] and r['last'] / 1024, 1)} / "
        f"{f(r['max'] and r['max'] / 1024, 1)} | {f(r['slope_kib_per_min_after_warmup'], 1)} KiB/min |",
        "",
        f"errors (wse-bench): {b.get('errors')}",
        f"wse-bench CPU: {b.get('client_cpu')}; wsed CPU over the hold: {b.get('server')}",
        f"publish failures: {res['publish_failures'] or 'none'}; wsed server pings sent: "
        f"{res['server_pings_sent']:,}",
        "clients' deliveries: wse-bench's other messages less one server_hello per connection and "
        "every server ping wsed counted, those sent while the bench was already closing too (so at "
        "least this many; exact with --wsed-args '--ping-interval 0')",
        "wsed closes during the hold (last sample): " + (", ".join(f"{k} {v:,.0f}" for k, v in res["server_closed"].items())
                           or "none"),
        "RSS samples (s after the ramp: KiB, open): " + ", ".join(
            f"{t:.0f}: {rss:,} ({o:,})" for t, rss, o, _ in res["samples"]),
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="wsed soak: N connections held with pings and "
                                 "publications; survival, deliveries, RSS")
    ap.add_argument("--wsed", default=os.path.join(benchlib.REPO, "build-rel", "engine", "wsed"))
    ap.add_argument("--bench", default="", help="wse-bench (default: next to --wsed)")
    ap.add_argument("--connections", type=int, default=100000)
    ap.add_argument("--seconds", type=float, default=600, help="hold this long (after the ramp)")
    ap.add_argument("--ping-interval", type=float, default=20, help="client pings, seconds apart")
    ap.add_argument("--publish-rate", type=float, default=0.1,
                    help="broadcasts per second (0.1: one every 10 s, 10,000 deliveries/s on "
                    "average at 100,000 connections)")
    ap.add_argument("--publish-stop-before", type=float, default=5,
                    help="stop publishing this long before the hold ends (in-flight deliveries)")
    ap.add_argument("--sample-every", type=float, default=10, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60, help="seconds after the ramp the RSS slope "
                    "leaves out")
    ap.add_argument("--workers", type=int, default=0, help="wsed shards (0: ceil(N / 19,000))")
    ap.add_argument("--ramp-timeout", type=float, default=180)
    ap.add_argument("--wsed-args", default="")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if not args.bench:
        args.bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.wsed))),
                                  "tools", "wse-bench")
    if not os.access(args.bench, os.X_OK):
        benchlib.log(f"soak: no wse-bench at {args.bench} (ninja -C BUILD tools/wse-bench)")
        return 2
    benchlib.install_handlers()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    res = soak(args)
    res.update({"command": " ".join(sys.argv), "machine": benchlib.machine(),
                "revision": benchlib.git_revision(), "date": started})
    print(report(res, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    ok = (res["survival_pct"] == 100.0 and res["bench"].get("opened") == args.connections
          and res["bench_rc"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
