#!/usr/bin/python3
# perf/echo_bench.py: the echo comparison of issue 2. wsed (--mode echo --workers 1), Node `ws`
# and Go gorilla/websocket, each pinned to CPU 0, driven by tools/echo-load pinned to CPU 1:
# pingpong and pipelined echo at 100 and 1,000 connections (servers interleaved round-robin,
# 3 rounds, medians), then 10,000 idle connections held for RSS per idle connection. Prints a
# markdown table and writes it, with the command, date, revision and CPU, into perf/RESULTS.md.
#
# Owns: the server and client processes it starts (stopped by PID on every exit path) and
# build/perf-peers/. Runs on one thread. Must never talk to anything but 127.0.0.1, never kill a
# process it did not start, and never run unbounded: every wait has a timeout and the whole
# script finishes in under 10 minutes.
#
# Usage: perf/echo_bench.py [--rounds 3] [--duration 5] [--warmup 1] [--hold 10000]
#                           [--servers wsed,node,go] [--no-results] [--no-build]
#                           [--build-dir build] [--echo-load PATH]
import argparse
import atexit
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "build")
PEERS = os.path.join(REPO, "perf", "peers")
PEER_BUILD = os.path.join(BUILD, "perf-peers")
RESULTS = os.path.join(REPO, "perf", "RESULTS.md")
SECTION = "## Echo: wsed vs Node ws vs Go gorilla (issue 2)"
SERVER_CPU = "0"
CLIENT_CPU = "1"
STARTED = []  # Popen objects of every process this script started
DEFAULT_ECHO_LOAD = os.path.join(BUILD, "tools", "echo-load")
ECHO_LOAD = DEFAULT_ECHO_LOAD


def stop_all():
    for proc in STARTED:
        stop(proc)


def stop(proc, timeout_s=5.0):
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def log(text):
    print(text, file=sys.stderr, flush=True)


def run_checked(cmd, timeout_s, **kwargs):
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, timeout=timeout_s, stdout=sys.stderr, **kwargs)


def build(args):
    """meson release build of wsed + echo-load, npm install for ws, go build for gorilla."""
    if not os.path.isdir(BUILD):
        run_checked(["meson", "setup", BUILD, "--buildtype=release"], 300, cwd=REPO)
    # Build the two targets; a half-written engine must not stop the peers' measurements.
    targets = ["engine/wsed"] + (["tools/echo-load"] if ECHO_LOAD == DEFAULT_ECHO_LOAD else [])
    for target in targets:
        try:
            run_checked(["ninja", "-C", BUILD, target], 600)
        except subprocess.CalledProcessError:
            log(f"echo_bench: building {target} failed")
    if "node" in args.servers and not os.path.isdir(os.path.join(PEERS, "node", "node_modules", "ws")):
        run_checked(["npm", "install", "--no-audit", "--no-fund"], 300, cwd=os.path.join(PEERS, "node"))
    if "go" in args.servers:
        os.makedirs(PEER_BUILD, exist_ok=True)
        env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
                   GOCACHE=os.path.join(tempfile.gettempdir(), "wsed-perf-gocache"), GOFLAGS="")
        run_checked(["go", "build", "-o", os.path.join(PEER_BUILD, "go-echo"),
                     os.path.join(PEERS, "go", "echo_server.go")], 300, env=env)


def server_command(name):
    if name == "wsed":
        return [os.path.join(BUILD, "engine", "wsed"), "--host", "127.0.0.1", "--port", "0",
                "--mode", "echo", "--workers", "1"]
    if name == "node":
        return ["node", os.path.join(PEERS, "node", "echo_server.js"), "--port", "0"]
    if name == "go":
        return [os.path.join(PEER_BUILD, "go-echo"), "--port", "0"]
    raise ValueError(name)


def start_server(name):
    """Starts the server pinned to CPU 0; returns (Popen, port) or raises RuntimeError. Its
    output goes to a file (never a pipe nobody reads: a full or closed pipe stalls or kills it)."""
    cmd = ["taskset", "-c", SERVER_CPU] + server_command(name)
    log_file = tempfile.NamedTemporaryFile(prefix=f"echo-bench-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    log_file.close()
    STARTED.append(proc)
    port = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and port is None and proc.poll() is None:
        time.sleep(0.05)
        with open(log_file.name, errors="replace") as f:
            m = re.search(r"ws://[^:/]+:(\d+)", f.read())
        if m:
            port = int(m.group(1))
    if port is None:
        stop(proc)
        with open(log_file.name, errors="replace") as f:
            out = f.read().strip()[:300]
        os.unlink(log_file.name)
        raise RuntimeError(f"{name} did not print a listening line: {out}")
    os.unlink(log_file.name)  # the server keeps writing to the unlinked file
    return proc, port


def echo_load(port, pid, extra, duration_s, warmup_s):
    fd, json_path = tempfile.mkstemp(prefix="echo-load-", suffix=".json")
    os.close(fd)
    cmd = ["taskset", "-c", CLIENT_CPU, ECHO_LOAD,
           "--host", "127.0.0.1", "--port", str(port), "--server-pid", str(pid),
           "--duration", str(duration_s), "--warmup", str(warmup_s), "--cpus", CLIENT_CPU,
           "--json", json_path] + extra
    log("+ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    STARTED.append(proc)
    try:
        out, _ = proc.communicate(timeout=duration_s + warmup_s + 90)
    except subprocess.TimeoutExpired:
        stop(proc)
        out = "echo-load timed out"
    log(out.rstrip())
    try:
        with open(json_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
    finally:
        os.unlink(json_path)


def wsed_works():
    """True when build/engine/wsed starts, prints its listening line and answers an upgrade."""
    path = os.path.join(BUILD, "engine", "wsed")
    if not os.access(path, os.X_OK):
        return False, "build/engine/wsed is missing"
    try:
        proc, port = start_server("wsed")
    except RuntimeError as e:
        return False, str(e)
    try:
        result = echo_load(port, proc.pid, ["--mode", "pingpong", "--connections", "4"], 0.5, 0.1)
        if not result or result["messages"] == 0 or result["errors"]["total"] != 0:
            return False, f"wsed did not echo: {result and result['errors']}"
        return True, ""
    finally:
        stop(proc)


def measure(name, extra, args):
    try:
        proc, port = start_server(name)
    except RuntimeError as e:
        log(f"echo_bench: {e}")
        return None
    try:
        return echo_load(port, proc.pid, extra, args.duration, args.warmup)
    finally:
        stop(proc)


def hold_twice(name, count):
    """On one fresh server: hold count/5 idle connections, let them go, then hold count. The
    first figure includes one-time costs (pools, buffers and pages touched on first use); the
    marginal cost per connection is the RSS difference between the two holds over the
    difference in connections."""
    try:
        proc, port = start_server(name)
    except RuntimeError as e:
        log(f"echo_bench: {e}")
        return None
    try:
        small = echo_load(port, proc.pid, ["--hold", str(count // 5)], 3.0, 0.0)
        time.sleep(1.0)
        full = echo_load(port, proc.pid, ["--hold", str(count)], 3.0, 0.0)
    finally:
        stop(proc)
    if not small or not full or full["open_at_end"] <= small["open_at_end"]:
        return None
    before = small["server"]["rss_before_kib"]
    rss_small, rss_full = small["server"]["vm_rss_kib"], full["server"]["vm_rss_kib"]
    return {"open": full["open_at_end"], "before_kib": before, "holding_kib": rss_full,
            "per_conn": (rss_full - before) * 1024 / full["open_at_end"],
            "marginal": (rss_full - rss_small) * 1024 / (full["open_at_end"] - small["open_at_end"]),
            "errors": small["errors"]["total"] + full["errors"]["total"]}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def row_of(runs):
    """Medians over the rounds of one (server, mode, conns)."""
    ok = [r for r in runs if r]

    def m(f):
        return median([f(r) for r in ok])

    if not ok:
        return None
    return {
        "msg_s": m(lambda r: r["msg_per_s"]),
        "user": m(lambda r: r["server"]["user_us_per_msg"]),
        "sys": m(lambda r: r["server"]["sys_us_per_msg"]),
        "total": m(lambda r: r["server"]["total_us_per_msg"]),
        "client": m(lambda r: r["client_cpu"]["us_per_msg"]),
        "client_core": m(lambda r: 100 * (r["client_cpu"]["user_s"] + r["client_cpu"]["sys_s"]) / r["seconds"]),
        "server_core": m(lambda r: 100 * (r["server"]["user_s"] + r["server"]["sys_s"]) / r["seconds"]),
        "other_core": m(lambda r: 100 * max(0.0, sum(c["busy_s"] for c in r["cores"])
                                               - r["client_cpu"]["user_s"] - r["client_cpu"]["sys_s"]
                                               - r["server"]["user_s"] - r["server"]["sys_s"]) / r["seconds"]),
        "hwm_kib": m(lambda r: r["server"]["vm_hwm_kib"]),
        "p50": m(lambda r: r["latency_us"]["p50"]),
        "p99": m(lambda r: r["latency_us"]["p99"]),
        "errors": sum(r["errors"]["total"] for r in ok),
        "runs": len(ok),
        "spread": (min(r["msg_per_s"] for r in ok), max(r["msg_per_s"] for r in ok)),
    }


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def tables(rows, holds, servers, configs):
    lines = ["| server | mode | conns | msg/s | server CPU µs/msg user | sys | total | client CPU µs/msg "
             "| server peak RSS (VmHWM) | client core % | server core % | other load % | latency p50/p99 µs | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, conns in configs:
        for name in servers:
            r = rows.get((name, mode, conns))
            if r is None:
                lines.append(f"| {name} | {mode} | {conns:,} | not run | | | | | | | | | | |")
                continue
            lat = f"{fmt(r['p50'], 0)} / {fmt(r['p99'], 0)}" if mode == "pingpong" else "-"
            lines.append(
                f"| {name} | {mode} | {conns:,} | {fmt(r['msg_s'], 0)} | {fmt(r['user'])} | {fmt(r['sys'])} "
                f"| {fmt(r['total'])} | {fmt(r['client'])} | {fmt(r['hwm_kib'] / 1024, 1)} MiB "
                f"| {fmt(r['client_core'], 0)} | {fmt(r['server_core'], 0)} | {fmt(r['other_core'], 0)} "
                f"| {lat} | {r['errors']} |")
    lines.append("")
    lines.append("| server | idle connections held | RSS idle | RSS holding | RSS per idle connection "
                 "(incl. one-time) | marginal RSS per idle connection |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name in servers:
        h = holds.get(name)
        if not h:
            lines.append(f"| {name} | not run | | | | |")
            continue
        lines.append(f"| {name} | {h['open']:,} | {fmt(h['before_kib'] / 1024, 1)} MiB "
                     f"| {fmt(h['holding_kib'] / 1024, 1)} MiB | {fmt(h['per_conn'], 0)} bytes "
                     f"| {fmt(h['marginal'], 0)} bytes |")
    return lines


def ratios(rows, holds, servers, configs):
    lines = []
    if "wsed" not in servers:
        return lines
    for peer in [s for s in servers if s != "wsed"]:
        parts = []
        for mode, conns in configs:
            a, b = rows.get(("wsed", mode, conns)), rows.get((peer, mode, conns))
            if not a or not b or not b["msg_s"] or not a["total"]:
                continue
            parts.append(f"{mode} {conns:,}: msg/s x{a['msg_s'] / b['msg_s']:.2f}, "
                         f"server CPU/msg {peer}/wsed x{b['total'] / a['total']:.2f}")
        ha, hb = holds.get("wsed"), holds.get(peer)
        if ha and hb and ha["per_conn"] > 0:
            parts.append(f"idle RSS/conn {peer}/wsed x{hb['per_conn'] / ha['per_conn']:.1f}")
        if parts:
            lines.append(f"- wsed vs {peer}: " + "; ".join(parts))
    return lines


def client_paragraph(rows, servers):
    got = [(k, r) for k, r in rows.items() if r]
    if not got:
        return []
    (name, mode, conns), r = max(got, key=lambda kr: kr[1]["client_core"] or 0)
    text = (f"Client check: echo-load (one thread on CPU {CLIENT_CPU}) used at most "
            f"{fmt(r['client_core'], 0)}% of its core (in {name} {mode} {conns:,}, where the server "
            f"used {fmt(r['server_core'], 0)}% of CPU {SERVER_CPU}). Client CPU per message as a share "
            "of the server's: ")
    shares, cheaper, similar = [], [], []
    for s in servers:
        mine = [r for (n, _, _), r in got if n == s and r["total"]]
        if mine:
            share = median([r["client"] / r["total"] for r in mine])
            shares.append(f"{s} {100 * share:.0f}%")
            (cheaper if share < 0.8 else similar).append(s)
    text += ", ".join(shares) + ". "
    near = [f"{n} {m} {c:,}" for (n, m, c), r in got if (r["client_core"] or 0) > 85]
    if near:
        text += ("The client was near its core's limit in: " + ", ".join(near) + "; msg/s there is "
                 "bounded by both ends (a lower bound for the server), CPU µs/msg stays valid. ")
    else:
        text += "The client was below 85% of its core in every run, so it did not bound msg/s. "
    if cheaper:
        text += (f"echo-load needs clearly less CPU per message than {', '.join(cheaper)}, so "
                 "those servers saturate first. ")
    if similar:
        text += (f"Against {', '.join(similar)} the two ends cost about the same per message (both "
                 "batch on io_uring, and on loopback each side pays the kernel's TCP cost of its own "
                 "sends and receives), so on two cores msg/s is bounded by the client as much as by "
                 "the server: compare by CPU µs/msg.")
    return [text]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_revision():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "uncommitted"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "uncommitted"


def versions():
    out = []
    try:
        with open(os.path.join(PEERS, "node", "node_modules", "ws", "package.json")) as f:
            out.append("ws " + json.load(f)["version"])
        out.append("node " + subprocess.run(["node", "--version"], capture_output=True, text=True,
                                            timeout=10).stdout.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    try:
        go = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=10).stdout.split()
        out.append(" ".join(go[2:3]))
        gorilla = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "golang-github-gorilla-websocket-dev"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        out.append("gorilla/websocket " + (gorilla or "?") + " (Debian)")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ", ".join(out)


def write_results(body):
    text = ""
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            text = f.read()
    else:
        text = "# wsed performance results\n\n"
    start = text.find(SECTION)
    if start >= 0:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + ("" if nxt < 0 else text[nxt + 1:])
    else:
        text = text.rstrip("\n") + "\n\n" + body
    with open(RESULTS, "w") as f:
        f.write(text.rstrip("\n") + "\n")


def main():
    global BUILD, PEER_BUILD, DEFAULT_ECHO_LOAD, ECHO_LOAD
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--hold", type=int, default=10000)
    parser.add_argument("--servers", default="wsed,node,go")
    parser.add_argument("--no-results", action="store_true", help="do not write perf/RESULTS.md")
    parser.add_argument("--no-build", action="store_true", help="use what is built already")
    parser.add_argument("--build-dir", default=BUILD, help="meson build dir (default build/)")
    parser.add_argument("--echo-load", help="echo-load binary (default BUILD_DIR/tools/echo-load)")
    args = parser.parse_args()
    BUILD = os.path.abspath(args.build_dir)
    PEER_BUILD = os.path.join(BUILD, "perf-peers")
    DEFAULT_ECHO_LOAD = os.path.join(BUILD, "tools", "echo-load")
    ECHO_LOAD = os.path.abspath(args.echo_load) if args.echo_load else DEFAULT_ECHO_LOAD
    args.servers = [s for s in args.servers.split(",") if s]
    args.rounds = max(1, min(args.rounds, 5))
    args.duration = max(0.5, min(args.duration, 10.0))
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    began = time.monotonic()

    if not args.no_build:
        build(args)
    servers = list(args.servers)
    notes = []
    if "wsed" in servers:
        ok, why = wsed_works()
        if not ok:
            log(f"echo_bench: wsed is not ready ({why}); measuring the others only")
            notes.append(f"wsed was not measured: {why}.")
            servers.remove("wsed")

    configs = [("pingpong", 100), ("pingpong", 1000), ("echo", 100), ("echo", 1000)]
    runs = {}
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[:rnd % len(servers)] if servers else []
        for mode, conns in configs:
            for name in order:
                extra = ["--mode", mode, "--connections", str(conns), "--size", str(args.size)]
                log(f"== round {rnd + 1}/{args.rounds}: {name} {mode} {conns}")
                runs.setdefault((name, mode, conns), []).append(measure(name, extra, args))
    rows = {k: row_of(v) for k, v in runs.items()}

    holds = {}
    for name in servers:
        log(f"== hold {args.hold // 5} then {args.hold} idle connections: {name}")
        h = hold_twice(name, args.hold)
        if h:
            holds[name] = h
            if h["open"] < args.hold:
                notes.append(f"{name} held only {h['open']} of {args.hold} connections.")

    elapsed = time.monotonic() - began
    table = tables(rows, holds, args.servers, configs)
    ratio_lines = ratios(rows, holds, servers, configs)
    para = client_paragraph(rows, servers)
    other = median([r["other_core"] for r in rows.values() if r])
    if other is not None and other > 20:
        notes.append(f"Noise: other processes used a median {other:.0f}% of a core during the runs "
                     "(column \"other load\"): msg/s is depressed and noisy; CPU µs/msg and RSS stay "
                     "comparable. Re-run on a quiet machine for msg/s.")
    print("\n".join(table))
    print()
    print("\n".join(ratio_lines + para + notes))

    if args.no_results:
        return 0
    command = "perf/echo_bench.py " + " ".join(sys.argv[1:])
    body = [SECTION, "",
            f"- Command: `{command.strip()}` ({args.rounds} rounds, servers interleaved round-robin, "
            f"medians; {args.duration:g} s measured after {args.warmup:g} s warm-up; {args.size} B text "
            f"payload; echo mode keeps 16 messages in flight per connection; whole run {elapsed:.0f} s)",
            f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
            f"revision: {git_revision()}",
            f"- Machine: {cpu_model()}, {os.cpu_count()} CPUs, kernel {os.uname().release}; "
            f"server on CPU {SERVER_CPU} (taskset), echo-load on CPU {CLIENT_CPU}",
            f"- Peers: {versions()}; wsed runs `--mode echo --workers 1`",
            "- server CPU µs/msg = the server's utime/stime (/proc/PID/stat, all threads) over the "
            "measuring window / messages echoed; client likewise from getrusage; \"other load\" = CPU "
            "busy on both cores (/proc/stat) minus client and server: other processes on the machine, "
            "a noise indicator. RSS per idle connection = (VmRSS holding - VmRSS before connecting) / "
            "connections on a fresh server (includes one-time costs); marginal = (VmRSS holding N - "
            "VmRSS holding N/5) / (0.8 N), the same server holding N/5 first.",
            ""] + table + [""] + ratio_lines + ([""] if ratio_lines else []) + para + [""] + notes
    write_results("\n".join(body) + "\n")
    log(f"echo_bench: wrote {RESULTS} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
