#!/usr/bin/python3
# perf/run_suite.py: the wse-bench suite against wsed, and wsed side by side with the Node `ws`
# and Go gorilla echo servers, written to perf/results/<YYYY-MM-DD>.md.
#
# 1. Suite: build/engine/wsed (--mode echo --workers 1 for --protocol raw) pinned to CPU 0 on a
#    free port, `wse-bench --test ...` pinned to CPU 1; the tables come from wse-bench's JSON
#    (its own markdown is kept in the file too). Load scenarios and connection scenarios run as
#    two invocations so each gets tiers that fit the machine.
# 2. Side by side (raw only): pingpong and echo at 100 and 1,000 connections, blast and
#    throughput at 100, against wsed, node and go, servers interleaved round-robin over --rounds
#    rounds, one server process per (mode, tier), medians and ratios, and a paragraph on whether
#    the client was the limit, from wse-bench's own CPU figures.
#
# Owns: the processes it starts (stopped by PID on every exit path, via benchlib.STARTED),
# build/perf-peers/ and its output file. Runs on one thread. Never talks to anything but
# 127.0.0.1; every wait has a timeout. Default tiers finish in under 10 minutes on 2 cores.
#
# Usage: perf/run_suite.py [--full] [--protocol raw|wse] [--rounds 3] [--duration 2]
#                          [--load-tool PATH] [--out FILE] [--no-suite] [--no-compare]
#                          [--servers wsed,node,go] [--no-build] [--build-dir build]
# Exit: 0 done, 2 when the load tool (build/tools/wse-bench) is missing, 1 on setup failures.
import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import fmt, log, median  # noqa: E402

REPO = benchlib.REPO
SERVER_CPU = 0
CLIENT_CPU = 1
LOAD_TESTS = ["ping-latency", "throughput", "size-matrix", "format-comparison", "pingpong", "echo", "blast"]
CONN_TESTS = ["connection-storm", "sustained-hold", "connection-limit"]
# (mode, tiers) of the side-by-side comparison; one wse-bench invocation per (server, mode, tier)
COMPARE = [("pingpong", 100), ("pingpong", 1000), ("echo", 100), ("echo", 1000),
           ("blast", 100), ("throughput", 100)]
RING_FILES = 20000  # RLIMIT_NOFILE here: one io_uring's direct-descriptor table holds at most this
COMMANDS = []  # every load/server command run, for the results file


def sh(cmd):
    return " ".join(shlex.quote(c) for c in cmd)


def note(cmd):
    """Records a command for the results file, with run-specific values as placeholders."""
    out, subst = [], {"--port": "PORT", "--server-pid": "PID", "--json": "FILE.json"}
    for i, c in enumerate(cmd):
        out.append(subst[cmd[i - 1]] if i and cmd[i - 1] in subst else c)
    text = sh(out)
    if text not in COMMANDS:
        COMMANDS.append(text)


# ---- the load tool, pluggable ----------------------------------------------------------------

class WseBench:
    """build/tools/wse-bench: the suite and the side-by-side runs."""
    kind = "wse-bench"

    def __init__(self, path, protocol, threads):
        self.path, self.protocol, self.threads = path, protocol, threads

    def base(self, port, pid):
        cmd = ["taskset", "-c", str(CLIENT_CPU), self.path, "--host", "127.0.0.1", "--port", str(port),
               "--protocol", self.protocol, "--threads", str(self.threads), "--cpus", str(CLIENT_CPU),
               "--server-pid", str(pid)]
        if self.protocol == "raw":
            cmd += ["--path", "/"]
        return cmd

    def suite_cmd(self, port, pid, tests, tiers, duration, extra, json_path):
        return self.base(port, pid) + ["--test", ",".join(tests), "--tiers", ",".join(map(str, tiers)),
                                       "--duration", f"{duration:g}", "--json", json_path] + extra

    def compare_cmd(self, port, pid, mode, conns, duration, size, json_path):
        return self.base(port, pid) + ["--test", mode, "--tiers", str(conns), "--duration", f"{duration:g}",
                                       "--size", str(size), "--json", json_path]

    @staticmethod
    def row(doc, mode):
        """One comparison row from wse-bench's JSON (one test, one tier)."""
        try:
            r = doc["tests"][mode]["rows"][0]
        except (KeyError, IndexError, TypeError):
            return None
        window = r.get("window_s") or 0
        replies = r.get("replies") or 0
        sent = r.get("sent_msgs") or 0
        counted = replies if replies else sent
        if window <= 0 or counted <= 0:
            return None
        cc = r.get("client_cpu", {})
        srv = r.get("server") or {}
        lat = r.get("latency_ms") or {}
        client_s = (cc.get("user_s") or 0) + (cc.get("sys_s") or 0)
        su, ss = srv.get("user_us_per_msg"), srv.get("sys_us_per_msg")
        return {"msg_s": counted / window, "sent_s": sent / window, "messages": counted,
                "window_s": window,
                "server_user": su if su or ss else None, "server_sys": ss if su or ss else None,
                "client_us": 1e6 * client_s / counted, "client_busy": 100 * (cc.get("busy") or 0),
                "client_busiest": 100 * (cc.get("busiest_thread") or 0),
                "client_saturated": bool(cc.get("saturated")),
                "p50_ms": lat.get("p50") if lat.get("samples") else None,
                "p99_ms": lat.get("p99") if lat.get("samples") else None,
                "errors": (r.get("errors") or {}).get("total", 0)}


def run_load(cmd, timeout_s, json_path):
    """Runs one load command (its stdout kept), returns (parsed JSON or None, stdout, rc)."""
    log("+ " + sh(cmd))
    note(cmd)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    benchlib.STARTED.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        benchlib.stop(proc)
        out, err = proc.communicate(timeout=10)
        err = (err or "") + f"\nrun_suite: load tool timed out after {timeout_s:.0f} s"
    if err.strip():
        log(err.rstrip())
    doc = None
    try:
        with open(json_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        pass
    finally:
        if os.path.exists(json_path):
            os.unlink(json_path)
    return doc, out, proc.returncode


def temp_json():
    fd, path = tempfile.mkstemp(prefix="run-suite-", suffix=".json")
    os.close(fd)
    os.unlink(path)  # the tool creates it; a stale empty file must not parse as a result
    return path


# ---- servers --------------------------------------------------------------------------------

def server_cmd(name, args, workers=1):
    if name == "wsed":
        mode = "echo" if args.protocol == "raw" else args.protocol
        auth = ["--jwt-issuer", "wse-bench", "--jwt-audience", "wse-bench"] if mode == "wse" else []
        return [os.path.join(args.build_dir, "engine", "wsed"), "--host", "127.0.0.1", "--port", "0",
                "--mode", mode, "--workers", str(workers)] + auth + shlex.split(args.wsed_args)
    if name == "node":
        return ["node", os.path.join(benchlib.PEERS, "node", "echo_server.js"), "--port", "0"]
    if name == "go":
        return [os.path.join(args.build_dir, "perf-peers", "go-echo"), "--port", "0"]
    raise ValueError(name)


# WSE mode: wsed verifies the JWTs wse-bench mints from its default secret (a benchmark key,
# not a secret: it is in wse-bench's --help). Passed through the environment, never argv.
BENCH_SECRET = "bench-secret-key-for-testing-only"


def start(name, args, workers=1):
    cmd = server_cmd(name, args, workers)
    env = {"WSED_JWT_SECRET": BENCH_SECRET} if name == "wsed" and args.protocol == "wse" else None
    note((["WSED_JWT_SECRET=..."] if env else []) + ["taskset", "-c", str(SERVER_CPU)] + cmd)
    return benchlib.start_server(name, cmd, SERVER_CPU, env=env)


# ---- JSON -> markdown -----------------------------------------------------------------------

def flatten(obj, prefix=""):
    out = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif not isinstance(v, list):
            out[key] = v
    return out


# Columns shown per suite row, in this order, when present (the JSON holds more; it is kept
# beside the results file). A column whose values are all empty/zero is left out.
SUITE_COLUMNS = [
    ("connections", "conns"), ("mode", "mode"), ("format", "format"), ("payload_bytes", "payload B"),
    ("size_bytes", "size B"), ("opened", "opened"), ("failed", "failed"), ("open_at_end", "open at end"),
    ("accept_rate", "accepts/s"), ("msg_per_s", "msg/s"), ("recv_msg_per_s", "recv msg/s"),
    ("sent_msg_per_s", "sent msg/s"), ("mb_per_s", "MB/s"), ("pings", "pings"),
    ("handshake_ms.p50", "handshake p50 ms"), ("handshake_ms.p99", "handshake p99 ms"),
    ("latency_ms.p50", "p50 ms"), ("latency_ms.p99", "p99 ms"), ("latency_ms.p999", "p99.9 ms"),
    ("server.user_us_per_msg", "server user µs/msg"), ("server.sys_us_per_msg", "server sys µs/msg"),
    ("server.rss_bytes_per_conn", "server RSS B/conn"),
    ("client_cpu.busy", "client busy %"), ("client_cpu.saturated", "client saturated"),
    ("os_limited", "OS limited"), ("errors.total", "errors"),
]


def cell(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if v else "0"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def suite_tables(doc):
    """Markdown tables from wse-bench's JSON: one per test, one row per tier (or cell)."""
    lines = []
    for name, test in (doc.get("tests") or {}).items():
        rows = [flatten(r) for r in test.get("rows", []) if isinstance(r, dict)]
        for r in rows:
            if isinstance(r.get("client_cpu.busy"), (int, float)):
                r["client_cpu.busy"] = round(100 * r["client_cpu.busy"])
        lines.append(f"#### {name} (errors: {test.get('errors', 0)})")
        lines.append("")
        if not rows:
            lines += ["(no rows)", ""]
            continue
        cols = [(k, h) for k, h in SUITE_COLUMNS if any(r.get(k) not in (None, "", 0, 0.0) for r in rows)]
        if not cols:
            cols = [(k, k) for k in rows[0]]
        lines.append("| " + " | ".join(h for _, h in cols) + " |")
        lines.append("|" + "|".join("---:" if k not in ("mode", "format") else "---" for k, _ in cols) + "|")
        for r in rows:
            lines.append("| " + " | ".join(cell(r.get(k)) for k, _ in cols) + " |")
        summary = test.get("summary") or {}
        if summary:
            lines += ["", "Summary: " + ", ".join(f"{k} = {cell(v)}" for k, v in flatten(summary).items())]
        firsts = sorted({r.get("errors.first") for r in rows if r.get("errors.first")})
        limits = sorted({r.get("os_limit") for r in rows if r.get("os_limit")})
        if firsts:
            lines += ["", "First errors: " + "; ".join(firsts)]
        if limits:
            lines += ["", "OS limits hit: " + "; ".join(limits)]
        lines.append("")
    return lines


# ---- suite ----------------------------------------------------------------------------------

def run_suite(args, tool):
    """wse-bench's scenarios against wsed, in two invocations (load and connection scenarios).
    Returns markdown lines."""
    groups = [("load scenarios", [t for t in LOAD_TESTS if t in args.tests], args.load_tiers, 1, []),
              ("connection scenarios", [t for t in CONN_TESTS if t in args.tests], args.conn_tiers,
               args.conn_workers,
               ["--max-conns", str(args.max_conns), "--limit-start", str(min(1000, args.max_conns))])]
    out = []
    for title, tests, tiers, workers, extra in groups:
        if not tests:
            continue
        log(f"== suite: {title}: {','.join(tests)} at tiers {tiers}, wsed --workers {workers}")
        try:
            proc, port = start("wsed", args, workers)
        except RuntimeError as e:
            out += [f"### Suite: {title}", "", f"wsed did not start: {e}", ""]
            continue
        json_path = temp_json()
        cmd = tool.suite_cmd(port, proc.pid, tests, tiers, args.duration, extra, json_path)
        budget = 120 + len(tests) * len(tiers) * (args.duration + 10) * (7 if "size-matrix" in tests else 2)
        began = time.monotonic()
        try:
            doc, stdout, rc = run_load(cmd, budget, json_path)
        finally:
            benchlib.stop(proc)
        took = time.monotonic() - began
        if doc is not None:
            keep = os.path.splitext(args.out)[0] + f".{title.split()[0]}.json"
            with open(keep, "w") as f:
                json.dump(doc, f, indent=1)
        out += [f"### Suite: {title}", "",
                f"- Command: `{COMMANDS[-1]}` (exit code {rc}, {took:.0f} s)",
                f"- Server: `taskset -c {SERVER_CPU} {sh(server_cmd('wsed', args, workers))}`"
                + (f" ({workers} shards, pinned by wsed to CPU i % 2: above 20,000 connections one ring's "
                   "direct-descriptor table, capped by RLIMIT_NOFILE, cannot hold them all, so the server "
                   "shares CPU 1 with the client in these tiers)" if workers > 1 else ""),
                ""]
        if doc is None:
            out += ["wse-bench wrote no JSON; its output:", "", "```", stdout.strip()[-4000:], "```", ""]
            continue
        out += suite_tables(doc)
        out += ["<details><summary>wse-bench's own report</summary>", "", stdout.strip(), "", "</details>", ""]
    return out


# ---- side by side ---------------------------------------------------------------------------

def compare(args, tool, servers):
    runs = {}
    for rnd in range(args.rounds):
        k = rnd % len(servers)
        order = servers[k:] + servers[:k]
        for mode, conns in COMPARE:
            for name in order:
                json_path = temp_json()
                try:
                    proc, port = start(name, args)
                except RuntimeError as e:
                    log(f"run_suite: {e}")
                    runs.setdefault((name, mode, conns), []).append(None)
                    continue
                try:
                    cmd = tool.compare_cmd(port, proc.pid, mode, conns, args.duration, args.size, json_path)
                    log(f"== round {rnd + 1}/{args.rounds}: {name} {mode} {conns}")
                    before = benchlib.proc_cpu_seconds(proc.pid)
                    doc, _, _ = run_load(cmd, args.duration + 90, json_path)
                    after = benchlib.proc_cpu_seconds(proc.pid)
                finally:
                    benchlib.stop(proc)
                row = tool.row(doc, mode) if doc else None
                if row and before and after:
                    # Whole invocation (ramp, warm-up, window) over the window's messages: an upper
                    # bound, used only when the tool did not measure the server itself.
                    row["server_whole"] = 1e6 * (after[0] + after[1] - before[0] - before[1]) / row["messages"]
                runs.setdefault((name, mode, conns), []).append(row)
    return {k: row_of(v) for k, v in runs.items()}


def idle_memory(args, tool, servers):
    """Per server, on one fresh server: wse-bench connection-storm at N/5 then N connections (each
    tier's connections stay open, idle, until its measurement ends). RSS per idle connection
    including one-time costs = (RSS holding N - RSS before any connection) / N; marginal =
    (RSS holding N - RSS holding N/5) / (0.8 N), which leaves out pools, buffers and pages
    touched once."""
    out = {}
    small = max(1, args.hold // 5)
    for name in servers:
        json_path = temp_json()
        try:
            proc, port = start(name, args)
        except RuntimeError as e:
            log(f"run_suite: {e}")
            continue
        try:
            log(f"== idle memory: {name}, {small:,} then {args.hold:,} connections")
            cmd = tool.suite_cmd(port, proc.pid, ["connection-storm"], [small, args.hold], 1.0, [], json_path)
            doc, _, _ = run_load(cmd, 180, json_path)
        finally:
            benchlib.stop(proc)
        try:
            rows = doc["tests"]["connection-storm"]["rows"]
            first, last = rows[0], rows[-1]
            before = first["server"]["rss_before_kib"]
            rss_small, rss_full = first["server"]["rss_loaded_kib"], last["server"]["rss_loaded_kib"]
            held_small, held = first["open_at_end"], last["open_at_end"]
        except (KeyError, IndexError, TypeError):
            continue
        if held <= held_small:
            continue
        out[name] = {"held": held, "before_kib": before, "holding_kib": rss_full,
                     "per_conn": (rss_full - before) * 1024 / held,
                     "marginal": (rss_full - rss_small) * 1024 / (held - held_small),
                     "errors": sum(r["errors"]["total"] for r in rows)}
    return out


def idle_table(idle, servers):
    lines = ["| server | idle connections held | RSS before | RSS holding | RSS per idle connection "
             "(incl. one-time) | marginal RSS per idle connection | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in servers:
        h = idle.get(name)
        if not h:
            lines.append(f"| {name} | not run | | | | | |")
            continue
        lines.append(f"| {name} | {h['held']:,} | {h['before_kib'] / 1024:.1f} MiB | {h['holding_kib'] / 1024:.1f} MiB "
                     f"| {h['per_conn']:,.0f} bytes | {h['marginal']:,.0f} bytes | {h['errors']} |")
    if "wsed" in idle:
        lines.append("")
        for peer in [s for s in servers if s != "wsed" and s in idle]:
            lines.append(f"- marginal idle RSS per connection, {peer}/wsed: "
                         f"x{idle[peer]['marginal'] / max(1.0, idle['wsed']['marginal']):.1f}")
    return lines


def row_of(rows):
    ok = [r for r in rows if r]
    if not ok:
        return None

    def m(key):
        return median([r.get(key) for r in ok])

    user, sys_ = m("server_user"), m("server_sys")
    total = user + sys_ if user is not None and sys_ is not None else None
    return {"msg_s": m("msg_s"), "sent_s": m("sent_s"), "user": user, "sys": sys_, "total": total,
            "whole": m("server_whole"), "client_us": m("client_us"), "client_busy": m("client_busy"),
            "client_busiest": m("client_busiest"),
            "saturated": sum(1 for r in ok if r.get("client_saturated")),
            "p50": m("p50_ms"), "p99": m("p99_ms"), "errors": sum(r["errors"] for r in ok), "runs": len(ok)}


def server_us(r):
    """Server CPU µs/msg: the tool's figure over the window, else the whole-invocation bound."""
    if r is None:
        return None
    return r["total"] if r["total"] else r["whole"]


def compare_tables(rows, servers):
    lines = ["| server | mode | conns | msg/s (received) | msg/s (sent) | server CPU µs/msg user | sys | total "
             "| server CPU µs/msg, whole run | client CPU µs/msg | client busy % | client saturated "
             "| p50 / p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, conns in COMPARE:
        for name in servers:
            r = rows.get((name, mode, conns))
            if r is None:
                lines.append(f"| {name} | {mode} | {conns:,} | not run | | | | | | | | | | |")
                continue
            lat = f"{fmt(r['p50'], 2)} / {fmt(r['p99'], 2)}" if r["p50"] is not None else "-"
            lines.append(
                f"| {name} | {mode} | {conns:,} | {fmt(r['msg_s'], 0)} | {fmt(r['sent_s'], 0)} "
                f"| {fmt(r['user'])} | {fmt(r['sys'])} | {fmt(r['total'])} | {fmt(r['whole'])} "
                f"| {fmt(r['client_us'])} | {fmt(r['client_busy'], 0)} | {r['saturated']}/{r['runs']} "
                f"| {lat} | {r['errors']} |")
    return lines


def ratio_lines(rows, servers):
    lines = []
    if "wsed" not in servers:
        return lines
    for peer in [s for s in servers if s != "wsed"]:
        parts = []
        for mode, conns in COMPARE:
            a, b = rows.get(("wsed", mode, conns)), rows.get((peer, mode, conns))
            if not a or not b or not b["msg_s"]:
                continue
            text = f"{mode} {conns:,}: msg/s x{a['msg_s'] / b['msg_s']:.2f}"
            sa, sb = server_us(a), server_us(b)
            if sa and sb:
                text += f", server CPU/msg {peer}/wsed x{sb / sa:.2f}"
            parts.append(text)
        if parts:
            lines.append(f"- wsed vs {peer}: " + "; ".join(parts))
    return lines


def client_paragraph(rows, servers, tool):
    got = [(k, r) for k, r in rows.items() if r]
    if not got:
        return []
    (name, mode, conns), r = max(got, key=lambda kr: kr[1]["client_busy"] or 0)
    text = (f"Is the client the limit? {tool.kind} ran {tool.threads} thread(s) pinned to CPU "
            f"{CLIENT_CPU}; by its own CPU figures it was busiest at {fmt(r['client_busy'], 0)}% of its core "
            f"(in {name} {mode} {conns:,}). ")
    sat = [f"{n} {m} {c:,} ({x['saturated']}/{x['runs']} runs)" for (n, m, c), x in got if x["saturated"]]
    near = [f"{n} {m} {c:,}" for (n, m, c), x in got if (x["client_busy"] or 0) > 85]
    if sat:
        text += ("It flagged itself saturated in: " + ", ".join(sat) + ": there msg/s is a floor for the "
                 "server (bounded by the client), and server CPU µs/msg stays valid. ")
    elif near:
        text += ("It was above 85% of its core in: " + ", ".join(near) + ": msg/s there is bounded by "
                 "both ends; compare by server CPU µs/msg. ")
    else:
        text += "It never flagged itself saturated and stayed below 85% of its core, so it did not bound msg/s. "
    shares = []
    for s in servers:
        mine = [x for (n, _, _), x in got if n == s and server_us(x) and x["client_us"]]
        if mine:
            shares.append(f"{s} {100 * median([x['client_us'] / server_us(x) for x in mine]):.0f}%")
    if shares:
        text += ("Client CPU per message as a share of the server's (median over the configurations): "
                 + ", ".join(shares) + ". A share well under 100% means the server saturates first; "
                 "near 100% (wsed: both ends batch on io_uring and each pays the kernel's loopback TCP "
                 "cost of its own sends and receives) means that on two cores msg/s is bounded by both.")
    return [text]


# ---- main -----------------------------------------------------------------------------------

def parse_tiers(text):
    out = []
    for part in text.split(","):
        part = part.strip().upper()
        if part:
            mult = 1000 if part.endswith("K") else 1
            out.append(int(float(part.rstrip("K")) * mult))
    return out


def main():
    parser = argparse.ArgumentParser(description="wse-bench suite + side-by-side comparison")
    parser.add_argument("--protocol", choices=["raw", "wse"], default="raw")
    parser.add_argument("--full", action="store_true",
                        help="bigger tiers: load 100,1K,10K; connections 1K,10K,50K; --duration 5")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 2, --full 5)")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds (medians)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes of pingpong/echo/blast")
    parser.add_argument("--load-tiers", help="tiers of the load scenarios (default 100,1000)")
    parser.add_argument("--conn-tiers", help="tiers of connection-storm and sustained-hold")
    parser.add_argument("--max-conns", type=int, help="connection-limit upper bound")
    parser.add_argument("--tests", default=",".join(CONN_TESTS[:1] + LOAD_TESTS + CONN_TESTS[1:]),
                        help="suite scenarios (default: all)")
    parser.add_argument("--servers", default="wsed,node,go", help="side-by-side servers")
    parser.add_argument("--threads", type=int, default=1, help="load tool threads (all on CPU 1)")
    parser.add_argument("--load-tool", help="load generator (default BUILD/tools/wse-bench)")
    parser.add_argument("--hold", type=int, default=10000,
                        help="idle-memory comparison: connections held (after holding a fifth of them)")
    parser.add_argument("--wsed-args", default="", help="extra wsed flags")
    parser.add_argument("--out", help="results file (default perf/results/YYYY-MM-DD.md)")
    parser.add_argument("--no-suite", action="store_true")
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    args = parser.parse_args()

    args.build_dir = os.path.abspath(args.build_dir)
    args.duration = max(0.5, min(args.duration or (5.0 if args.full else 2.0), 30.0))
    args.rounds = max(1, min(args.rounds, 5))
    args.load_tiers = parse_tiers(args.load_tiers or ("100,1000,10000" if args.full else "100,1000"))
    args.conn_tiers = parse_tiers(args.conn_tiers or ("1000,10000,50000" if args.full else "100,1000,10000"))
    args.max_conns = args.max_conns or (50000 if args.full else 10000)
    # One wsed ring holds at most RING_FILES sockets; more connections need more shards.
    biggest = max(args.conn_tiers + [args.max_conns])
    args.conn_workers = max(1, math.ceil(biggest / (RING_FILES - 1000)))
    args.tests = [t for t in args.tests.split(",") if t]
    servers = [s for s in args.servers.split(",") if s]
    if args.protocol != "raw":
        servers = [s for s in servers if s == "wsed"]  # the peers speak plain RFC 6455 echo only
    day = datetime.date.today().isoformat()
    args.out = os.path.abspath(args.out or os.path.join(REPO, "perf", "results", f"{day}.md"))

    tool_path = os.path.abspath(args.load_tool or os.path.join(args.build_dir, "tools", "wse-bench"))
    if not os.access(tool_path, os.X_OK):
        print(f"run_suite: {tool_path} is missing: build it (ninja -C build tools/wse-bench)",
              file=sys.stderr)
        return 2
    tool = WseBench(tool_path, args.protocol, args.threads)
    benchlib.install_handlers()
    began = time.monotonic()

    if not args.no_build:
        benchlib.run_checked(["ninja", "-C", args.build_dir, "engine/wsed"], 600)
        if "node" in servers and not args.no_compare:
            benchlib.ensure_node_peer()
        if "go" in servers and not args.no_compare:
            benchlib.build_go_peer(args.build_dir)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)

    suite = []
    if not args.no_suite:
        suite = run_suite(args, tool)
    rows, idle = {}, {}
    if not args.no_compare and servers:
        rows = compare(args, tool, servers)
        if args.hold > 0:
            idle = idle_memory(args, tool, servers)
    elapsed = time.monotonic() - began

    body = [f"# wse-bench results, {day}", "",
            f"- Command: `perf/run_suite.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}`".rstrip()
            + f" (whole run {elapsed:.0f} s)",
            f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
            f"revision: {benchlib.git_revision()}",
            f"- Machine: {benchlib.machine()}",
            f"- Pinning: servers on CPU {SERVER_CPU} (taskset), {tool.kind} on CPU {CLIENT_CPU} "
            f"(taskset + --cpus {CLIENT_CPU}, {args.threads} thread(s)); protocol {args.protocol}; "
            f"{args.duration:g} s per measurement",
            ""]
    if suite:
        body += ["## Suite: wse-bench against wsed", "",
                 f"Load scenarios at tiers {', '.join(f'{t:,}' for t in args.load_tiers)} (wsed --workers 1); "
                 f"connection scenarios at tiers {', '.join(f'{t:,}' for t in args.conn_tiers)}, "
                 f"connection-limit up to {args.max_conns:,}. Raw JSON beside this file "
                 f"({os.path.basename(os.path.splitext(args.out)[0])}.load.json, .connection.json).", ""]
        body += suite
    if rows:
        table = compare_tables(rows, servers)
        body += ["## Side by side: wsed vs Node ws vs Go gorilla", "",
                 f"- {args.rounds} rounds, servers interleaved round-robin, a fresh server per (mode, tier), "
                 f"medians; {args.size} B text payload (throughput: wse-bench's 187 B trading message); "
                 "echo keeps wse-bench's --window in flight per connection; blast and throughput send "
                 "within --stream-window-bytes unanswered and count the echoes.",
                 f"- Peers: {benchlib.peer_versions()}; wsed runs `--mode echo --workers 1`.",
                 "- msg/s (received) = echoes received in the window / window; server CPU µs/msg = the "
                 "server's user/sys time over the window (wse-bench, from /proc) / messages; \"whole run\" = "
                 "the server's CPU over the whole invocation (connect, warm-up, window) / the window's "
                 "messages (an upper bound, measured by run_suite); client CPU µs/msg from wse-bench's "
                 "getrusage figures.", ""]
        body += table + [""] + ratio_lines(rows, servers) + [""] + client_paragraph(rows, servers, tool) + [""]
    if idle:
        body += ["## Idle memory: wsed vs Node ws vs Go gorilla", "",
                 f"- One fresh server each; wse-bench connection-storm holds {max(1, args.hold // 5):,} then "
                 f"{args.hold:,} idle connections; VmRSS from /proc. Marginal = (RSS holding {args.hold:,} - "
                 f"RSS holding {max(1, args.hold // 5):,}) / the difference in connections: what one more "
                 "idle connection costs, without one-time pools and buffers.", ""]
        body += idle_table(idle, servers) + [""]
    body += ["## Commands run", "", "```"] + COMMANDS + ["```", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(line.replace(tempfile.gettempdir() + "/run-suite-", "/tmp/run-suite-")
                          for line in body))
    print("\n".join(body))
    log(f"run_suite: wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
