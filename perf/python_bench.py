#!/usr/bin/python3
# perf/python_bench.py: the Python module (wsed.compat.RustWSEServer) under load, side by side
# with the plain engine binary, in one run.
#
# 1. Inbound: a RustWSEServer (JWT HS256 on, workers=1, drain mode) in a server process pinned to
#    CPU 0 whose Python loop calls drain_inbound(1024, 50) and counts the ("msg", id, dict)
#    events (reading data["t"] of each); `wse-bench --test blast --size 100` (WSE protocol: JWT
#    cookie, server_ready, client_hello, then 100 B JSON text messages as fast as the kernel takes
#    them) on CPU 1 with K connections. The same load against `wsed --inbound drop` (same auth,
#    --workers 1, --inbound-rate 0) is the engine's ceiling; the ratio Python/engine is printed.
# 2. Sends: the server process with N connections held by `wse-bench --test broadcast-all
#    --publisher server` (it only counts; every frame it counts carries a dense per-connection
#    seq, so gaps and duplicates are checked); the Python loop calls send_event(id, dict)
#    round-robin, or send(id, text), or broadcast_all(text) (also paced: at most 4,096 calls
#    ahead of the shard) for D seconds or --max-frames frames, then waits until the engine has
#    handed every frame to the kernel. Calls/s on the Python side, frames/s and the count the
#    clients received (all of them must arrive; a cell where some did not says so).
# 3. A table, ratios against the reference's published figures (seed 000, Apple M2) and a
#    one-line JSON summary (last line of stdout).
#
# Owns: the processes it starts (the server processes, wsed, wse-bench: stopped by PID on every
# exit path through benchlib.STARTED) and its temporary files. Never talks to anything but
# 127.0.0.1; every wait has a timeout. The default run takes ~2.5 minutes, --quick ~30 s.
#
# Usage: perf/python_bench.py [--quick] [--build-dir /tmp/build-bench] [--inbound-conns 1,10,100]
#                             [--send-conns 10,100,1000] [--modes send_event,send,broadcast_all,
#                             broadcast_all_paced] [--inbound-duration 5] [--send-duration 3]
#                             [--max-frames 6000000] [--flush-timeout 2] [--no-inbound]
#                             [--wait-quiet 0] [--no-send] [--json FILE]
# Internal: perf/python_bench.py --serve inbound|send ... (the server process; see serve()).
# Exit: 0 done (even when a check failed: the table says so), 1 on setup failures, 2 when the
# build is missing.
import argparse
import datetime
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_CPU = 0
CLIENT_CPU = 1
SECRET_ENV = "WSED_BENCH_JWT_SECRET"  # the HS256 secret, to the server processes
PACE_AHEAD = 4096  # broadcast_all_paced: calls ahead of the shard (its inbox lane holds 8,192)
MSG_BYTES = 100  # wse-bench blast --size: {"t":"bench","p":"aaa..."} of exactly this many bytes
# seed 000 (../shared/seeds/000_61634b89fd501488.txt), Apple M2, macOS, Python 3.14, one client
# through the reference's Python drain loop; 10 client processes for the aggregate.
REFERENCE = {"sequential_1": 124352, "sustained_1": 113000, "sustained_10": 356000}


# ==== the server process (--serve) ================================================================

def threads_cpu():
    """{tid: user+sys seconds} of this process's threads, from /proc/self/task."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def split_cpu(main_tid):
    """(the Python main thread's CPU s (thread_time: ns resolution; call from that thread),
    every other thread's: the shard, the engine's helpers (/proc: 10 ms ticks))."""
    t = threads_cpu()
    t.pop(main_tid, None)
    return time.thread_time(), sum(t.values())


def metric_total(text, name, label=""):
    """The sum over the shards of a per-shard wsed_* family in prometheus text, restricted to
    the lines that carry `label` (e.g. 'action="drop"'); 0 when absent."""
    prefix = name + '{shard="'
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and label in line:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def serve(a):
    """The server process: one RustWSEServer, drain mode, until SIGTERM or --life seconds.
    Prints `ws://127.0.0.1:PORT` once listening and, on exit, one `RESULT {json}` line."""
    from wsed.compat import RustWSEServer  # PYTHONPATH=<build>/python, set by the driver

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    secret = os.environ[SECRET_ENV].encode()
    # rate_limit_*: send_event's per-connection bucket (reference defaults 100,000 / 10,000 per s)
    # would cap a 3 s flood at ~130,000 per connection: lifted for the send test, reported as 0s.
    s = RustWSEServer("127.0.0.1", 0, max_connections=max(1000, a.conns * 2), jwt_secret=secret,
                      jwt_issuer="wse-bench", jwt_audience="wse-bench", workers=1,
                      rate_limit_capacity=1e12, rate_limit_refill=1e12)
    s.enable_drain_mode()
    s.start()
    print(f"ws://127.0.0.1:{s.local_port()}", flush=True)
    main_tid = threading.get_native_id()
    deadline = time.monotonic() + a.life
    result = {"role": a.serve}
    try:
        if a.serve == "inbound":
            result.update(serve_inbound(s, stop, deadline, main_tid))
        else:
            result.update(serve_send(s, a, stop, deadline, main_tid))
    finally:
        result["dropped"] = s.inbound_dropped_count()
        print("RESULT " + json.dumps(result), flush=True)
        s.stop()


def serve_inbound(s, stop, deadline, main_tid):
    n = 0
    other = {}
    first = last = None
    max_depth = 0
    samples = []  # [t, msgs, dropped, main CPU s, other threads' CPU s] every 0.1 s
    next_sample = 0.0
    drain = s.drain_inbound
    mono = time.monotonic
    while not stop["flag"]:
        now = mono()
        if now >= deadline:
            break
        batch = drain(1024, 50)
        for kind, _cid, data in batch:
            if kind == "msg":
                data["t"]  # the dict is real: one key read per event, as an app would
                n += 1
            else:
                other[kind] = other.get(kind, 0) + 1
        if batch:
            now = mono()
            if first is None and n:
                first = now
            last = now
        if now >= next_sample:
            depth = s.inbound_queue_depth()
            max_depth = max(max_depth, depth)
            main, rest = split_cpu(main_tid)
            samples.append([now, n, s.inbound_dropped_count(), main, rest, depth])
            next_sample = now + 0.1
    main, rest = split_cpu(main_tid)
    samples.append([mono(), n, s.inbound_dropped_count(), main, rest, s.inbound_queue_depth()])
    # the backlog, after the load (bounded): every connection's disconnect event should be in it
    until = mono() + 5.0
    while s.inbound_queue_depth() > 0 and mono() < until:
        for kind, _cid, data in drain(1024, 10):
            if kind != "msg":
                other[kind] = other.get(kind, 0) + 1
    time.sleep(0.2)  # the last closes
    for kind, _cid, data in drain(1024, 10):
        if kind != "msg":
            other[kind] = other.get(kind, 0) + 1
    return {"msgs": n, "other_events": other, "first_msg_t": first, "last_msg_t": last,
            "max_depth": max_depth, "samples": samples}


def serve_send(s, a, stop, deadline, main_tid):
    mono = time.monotonic
    # every connection registered (its auth_connect event taken), then a short settle
    connected = 0
    while connected < a.conns and not stop["flag"] and mono() < deadline:
        for kind, _cid, _data in s.drain_inbound(1024, 20):
            if kind == "auth_connect":
                connected += 1
    ids = s.get_connections()
    if len(ids) < a.conns or stop["flag"]:
        return {"error": f"{len(ids)} of {a.conns} connections registered", "connections": len(ids)}
    time.sleep(0.2)
    m0 = s.prometheus_metrics()
    base_out = metric_total(m0, "wsed_messages_out_total") + metric_total(m0, "wsed_fanout_deliveries_total")
    base_full = metric_total(m0, "wsed_fanout_inbox_full_total")
    n = len(ids)
    calls = zeros = rounds = 0
    cpu0 = split_cpu(main_tid)
    t0 = mono()
    t_end = t0 + a.duration
    # bounded in time (--duration) and in frames (--max-frames: the engine must deliver them all)
    max_rounds = max(16, a.max_frames // n)  # a round: n calls (send_event, send) or one call of n frames
    if a.mode == "send_event":
        send_event = s.send_event
        while True:
            ts = time.time_ns() // 1000
            for cid in ids:
                if not send_event(cid, {"t": "fanout_tick", "p": {"seq": rounds, "ts_us": ts}}):
                    zeros += 1
            rounds += 1
            if mono() >= t_end or rounds >= max_rounds:
                break
        calls = rounds * n
        expected = calls - zeros
    elif a.mode == "send":
        send = s.send
        while True:
            text = '{"t":"fanout_tick","p":{"seq":%d,"ts_us":%d}}' % (rounds, time.time_ns() // 1000)
            for cid in ids:
                send(cid, text)
            rounds += 1
            if mono() >= t_end or rounds >= max_rounds:
                break
        calls = rounds * n
        expected = calls
    elif a.mode == "broadcast_all":
        broadcast_all = s.broadcast_all
        while True:
            for _ in range(16):
                broadcast_all('{"t":"fanout_tick","p":{"seq":%d,"ts_us":%d}}'
                              % (rounds, time.time_ns() // 1000))
                rounds += 1
            if mono() >= t_end or rounds >= max_rounds:
                break
        calls = rounds
        expected = calls * n
    else:  # broadcast_all_paced: at most PACE_AHEAD calls not yet taken by the shard
        # (wsed_fanout_inbox_drained_total, read every 256 calls): the flow control an
        # application has to build itself, as broadcast_all says nothing when the inbox is full
        broadcast_all = s.broadcast_all
        base_drained = metric_total(m0, "wsed_fanout_inbox_drained_total")
        while True:
            for _ in range(256):
                broadcast_all('{"t":"fanout_tick","p":{"seq":%d,"ts_us":%d}}'
                              % (rounds, time.time_ns() // 1000))
                rounds += 1
            if mono() >= t_end or rounds >= max_rounds:
                break
            while rounds - (metric_total(s.prometheus_metrics(), "wsed_fanout_inbox_drained_total")
                            - base_drained) > PACE_AHEAD and mono() < t_end:
                time.sleep(0.0002)
        calls = rounds
        expected = calls * n
    t_calls = mono()
    cpu_calls = split_cpu(main_tid)
    # flushed: the engine queued every frame to its connection (messages_out + shared
    # deliveries) and has no byte left to hand to the kernel; bounded by --flush-timeout
    flushed = None
    queued = out = 0.0
    limit = t_calls + a.flush_timeout
    while mono() < limit and not stop["flag"]:
        m = s.prometheus_metrics()
        out = metric_total(m, "wsed_messages_out_total") + metric_total(m, "wsed_fanout_deliveries_total") - base_out
        queued = metric_total(m, "wsed_outbound_queued_bytes")
        if out >= expected and queued == 0:
            flushed = mono()
            break
        time.sleep(0.005)
    cpu_flushed = split_cpu(main_tid)
    m = s.prometheus_metrics()
    return {
        "mode": a.mode, "connections": n, "calls": calls, "rounds": rounds, "zero_returns": zeros,
        "count_bound": rounds >= max_rounds,
        "expected_frames": expected, "t_first_call": t0, "t_last_call": t_calls, "t_flushed": flushed,
        "engine_frames_queued": out, "outbound_queued_bytes_left": queued,
        "inbox_full": metric_total(m, "wsed_fanout_inbox_full_total") - base_full,
        "slow_consumer_drop": metric_total(m, "wsed_slow_consumer_total", 'action="drop"'),
        "main_cpu_calls_s": cpu_calls[0] - cpu0[0], "other_cpu_calls_s": cpu_calls[1] - cpu0[1],
        "main_cpu_total_s": cpu_flushed[0] - cpu0[0], "other_cpu_total_s": cpu_flushed[1] - cpu0[1],
    }


# ==== the driver ==================================================================================

def log(text):
    print(text, file=sys.stderr, flush=True)


def si(v):
    if v is None:
        return "n/a"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}K"
    return f"{v:.0f}"


def ratio(a, b):
    return a / b if a is not None and b else None


class Driver:
    def __init__(self, a, benchlib):
        self.a, self.bl = a, benchlib
        self.build = os.path.abspath(a.build_dir)
        self.wse_bench = os.path.join(self.build, "tools", "wse-bench")
        self.wsed = os.path.join(self.build, "engine", "wsed")
        self.pypath = os.path.join(self.build, "python")
        self.secret = secrets.token_hex(24)  # 48 bytes of HS256 key, this run only
        self.tmp = tempfile.mkdtemp(prefix="wsed-python-bench-")
        self.commands = []

    def note(self, cmd):
        subst = {"--port": "PORT", "--server-pid": "PID", "--json": "FILE.json", "--secret": "SECRET"}
        text = " ".join(subst[cmd[i - 1]] if i and cmd[i - 1] in subst else c for i, c in enumerate(cmd))
        if text not in self.commands:
            self.commands.append(text)

    # -- processes
    def start_py_server(self, role, extra):
        """The server process (this script with --serve) pinned to CPU 0; (Popen, port, out path)."""
        out = os.path.join(self.tmp, f"server-{role}-{len(self.bl.STARTED)}.out")
        cmd = ["taskset", "-c", str(SERVER_CPU), sys.executable, os.path.abspath(__file__),
               "--serve", role] + extra
        self.note(cmd)
        env = dict(os.environ, PYTHONPATH=self.pypath, **{SECRET_ENV: self.secret})
        with open(out, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        self.bl.STARTED.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            with open(out, errors="replace") as f:
                first = f.readline()
            if first.startswith("ws://"):
                return proc, int(first.strip().rsplit(":", 1)[1]), out
            time.sleep(0.05)
        self.bl.stop(proc)
        with open(out, errors="replace") as f:
            raise RuntimeError(f"the {role} server process did not start: {f.read()[:500]}")

    def py_result(self, proc, out):
        self.bl.stop(proc, timeout_s=10)
        with open(out, errors="replace") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError(f"the server process printed no result: {text[-800:]}")

    def start_wsed(self):
        cmd = [self.wsed, "--mode", "wse", "--port", "0", "--workers", "1", "--inbound", "drop",
               "--inbound-rate", "0", "--jwt-issuer", "wse-bench", "--jwt-audience", "wse-bench",
               "--jwt-secret-env", SECRET_ENV]
        self.note(["taskset", "-c", str(SERVER_CPU)] + cmd)
        return self.bl.start_server("wsed", cmd, SERVER_CPU, env={SECRET_ENV: self.secret})

    def run_bench(self, port, pid, test_args, duration, label):
        """wse-bench pinned to CPU 1; (its JSON row, monotonic time it exited)."""
        js = os.path.join(self.tmp, f"bench-{label}.json")
        cmd = ["taskset", "-c", str(CLIENT_CPU), self.wse_bench, "--host", "127.0.0.1", "--port", str(port),
               "--protocol", "wse", "--secret", self.secret, "--threads", "1", "--cpus", str(CLIENT_CPU),
               "--duration", f"{duration:g}", "--ramp-timeout", "20", "--server-pid", str(pid),
               "--json", js] + test_args
        self.note(cmd)
        log(f"+ wse-bench {' '.join(test_args)} --duration {duration:g} ({label})")
        before = cpu_times()
        srv_before = self.bl.proc_cpu_seconds(pid)
        kids_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.bl.STARTED.append(proc)
        try:
            _, err = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            self.bl.stop(proc)
            raise RuntimeError(f"wse-bench ({label}) did not finish in {duration + 60:.0f} s")
        t_exit = time.monotonic()
        after = cpu_times()
        srv_after = self.bl.proc_cpu_seconds(pid)
        kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode not in (0, 3) or not os.path.exists(js):
            raise RuntimeError(f"wse-bench ({label}) exit {proc.returncode}: {err.strip()[-500:]}")
        with open(js) as f:
            doc = json.load(f)
        test = next(iter(doc["tests"].values()))
        row = test["rows"][0]
        row["_exit_code"] = proc.returncode
        # whole invocation (ramp and warm-up too): the load generator's CPU is the bottleneck
        # when CPU 1 is ~100% busy; steal: the hypervisor ran someone else
        for cpu, key in ((SERVER_CPU, "cpu0"), (CLIENT_CPU, "cpu1")):
            busy, steal = cpu_busy(before, after, cpu)
            row["_" + key] = {"busy": busy, "steal": steal}
        # CPU the machine spent on anything but this cell's server and wse-bench (other jobs:
        # the figures are only comparable when this is small)
        hz = os.sysconf("SC_CLK_TCK")
        both = sum(after[c][0] - before[c][0] for c in (SERVER_CPU, CLIENT_CPU) if c in after and c in before) / hz
        ours = (kids_after.ru_utime + kids_after.ru_stime - kids_before.ru_utime - kids_before.ru_stime)
        if srv_before and srv_after:
            ours += sum(srv_after) - sum(srv_before)
        elapsed = t_exit - t_start
        row["_bench_cpu_s"] = kids_after.ru_utime + kids_after.ru_stime - kids_before.ru_utime - kids_before.ru_stime
        row["_elapsed_s"] = elapsed
        row["_foreign"] = max(0.0, both - ours) / elapsed if elapsed > 0 else None
        row["_stderr_tail"] = err.strip().splitlines()[-3:]
        return row, t_exit

    def wait_quiet(self):
        """Between cells (nothing of ours runs): waits, at most --wait-quiet seconds, until other
        processes use under 15% of a CPU over 0.5 s. Returns the last reading (share of a CPU)."""
        if self.a.wait_quiet <= 0:
            return None
        until = time.monotonic() + self.a.wait_quiet
        hz = os.sysconf("SC_CLK_TCK")
        while True:
            a = cpu_times()
            time.sleep(0.5)
            b = cpu_times()
            busy = sum(b[c][0] - a[c][0] for c in b if c in a) / hz / 0.5
            if busy < 0.15 or time.monotonic() >= until:
                if busy >= 0.15:
                    log(f"  (machine still busy: {busy * 100:.0f}% of a CPU used by others; going on)")
                return busy
            time.sleep(1.0)

    # -- 1. inbound
    def inbound_python(self, k):
        proc, port, out = self.start_py_server("inbound", ["--conns", str(k), "--life", str(self.a.inbound_duration + 60)])
        try:
            row, t_exit = self.run_bench(port, proc.pid, ["--test", "blast", "--size", str(MSG_BYTES), "--tiers", str(k)],
                                         self.a.inbound_duration, f"in-py-{k}")
        finally:
            res = self.py_result(proc, out)
        w = row["window_s"]
        lo, hi = t_exit - w, t_exit  # wse-bench's measurement window (its teardown takes ms)
        a_ = interp(res["samples"], lo)
        b_ = interp(res["samples"], hi)
        msgs = b_[1] - a_[1]
        python_eps = msgs / w if w > 0 else None
        # per event the Python thread handled / per message the shard read (events + drops):
        # both threads are runnable all the time under this load, so the scheduler gives each
        # about half of CPU 0; these say what each did with its half
        main_us = (b_[3] - a_[3]) / msgs * 1e6 if msgs else None
        arrived = msgs + (b_[2] - a_[2]) + (b_[5] - a_[5])  # drained + dropped + queue growth
        other_us = (b_[4] - a_[4]) / arrived * 1e6 if arrived > 0 else None
        whole = None
        if res["first_msg_t"] and res["last_msg_t"] and res["last_msg_t"] > res["first_msg_t"]:
            whole = res["msgs"] / (res["last_msg_t"] - res["first_msg_t"])
        return {
            "python_events_per_s": python_eps, "python_events_window": msgs,
            "python_events_total": res["msgs"], "python_rate_first_to_last": whole,
            "sent_per_s": row["sent_msgs"] / w if w > 0 else None, "sent_window": row["sent_msgs"],
            "dropped_window": b_[2] - a_[2], "dropped_total": res["dropped"], "max_queue_depth": res["max_depth"],
            "main_thread_us_per_event": main_us, "other_threads_us_per_msg_read": other_us,
            "cpu0_busy": ((b_[3] - a_[3]) + (b_[4] - a_[4])) / w if w > 0 else None,
            "client": row["client_cpu"], "cpu0": row["_cpu0"], "cpu1": row["_cpu1"],
            "foreign": row["_foreign"], "bench_cpu_share": row["_bench_cpu_s"] / row["_elapsed_s"],
            "opened": row["opened"], "errors": row["errors"],
            "other_events": res["other_events"], "window_s": w,
        }

    def inbound_engine(self, k):
        proc, port = self.start_wsed()
        try:
            row, _ = self.run_bench(port, proc.pid, ["--test", "blast", "--size", str(MSG_BYTES), "--tiers", str(k)],
                                    self.a.inbound_duration, f"in-wsed-{k}")
        finally:
            self.bl.stop(proc)
        w = row["window_s"]
        srv = row.get("server", {})
        return {"engine_msgs_per_s": row["sent_msgs"] / w if w > 0 else None, "sent_window": row["sent_msgs"],
                "server_us_per_msg": (srv.get("user_us_per_msg", 0) + srv.get("sys_us_per_msg", 0)) if srv else None,
                "client": row["client_cpu"], "cpu0": row["_cpu0"], "cpu1": row["_cpu1"],
            "foreign": row["_foreign"], "bench_cpu_share": row["_bench_cpu_s"] / row["_elapsed_s"],
                "opened": row["opened"], "errors": row["errors"], "window_s": w}

    # -- 2. sends
    def send_cell(self, mode, n):
        d = self.a.send_duration
        # broadcast_all outruns the shard (one call: n frames): its backlog takes longer to flush
        ft = self.a.flush_timeout * (2 if mode.startswith("broadcast_all") else 1)
        proc, port, out = self.start_py_server("send", ["--conns", str(n), "--mode", mode, "--duration", f"{d:g}",
                                                        "--max-frames", str(self.a.max_frames),
                                                        "--flush-timeout", f"{ft:g}", "--life", str(d + ft + 60)])
        try:
            # the window covers the settle (0.2 s), the calls and the flush; frames are counted
            # from the connect on (deliveries_total), so the exact alignment does not matter
            row, t_exit = self.run_bench(port, proc.pid, ["--test", "broadcast-all", "--publisher", "server",
                                                          "--tiers", str(n)], d + ft + 0.5, f"send-{mode}-{n}")
        finally:
            res = self.py_result(proc, out)
        if "error" in res:
            return {"error": res["error"]}
        calls_s = res["t_last_call"] - res["t_first_call"]
        got = row["deliveries_total"]
        flushed = res["t_flushed"]
        complete = (got == res["expected_frames"] and row["gaps"] == 0 and row["duplicates"] == 0
                    and res["inbox_full"] == 0 and res["slow_consumer_drop"] == 0)
        notes = []
        if flushed is None:
            notes.append(f"not flushed within {ft:g} s ({res['engine_frames_queued']:.0f} of "
                         f"{res['expected_frames']} queued, {res['outbound_queued_bytes_left']:.0f} B left)")
        elif flushed > t_exit:
            notes.append("flushed after wse-bench's window ended")
        if res["inbox_full"]:
            notes.append(f"{res['inbox_full']:.0f} pushes refused by a full shard inbox")
        if res["zero_returns"]:
            notes.append(f"{res['zero_returns']} send_event calls returned 0")
        if got != res["expected_frames"]:
            notes.append(f"received {got:,} of {res['expected_frames']:,}")
        return {
            "calls": res["calls"], "calls_per_s": res["calls"] / calls_s, "call_seconds": calls_s,
            "count_bound": res["count_bound"],
            "expected_frames": res["expected_frames"], "frames_received": got,
            "frames_per_s": got / (flushed - res["t_first_call"]) if flushed else None,
            "flush_s": flushed - res["t_last_call"] if flushed else None,
            "gaps": row["gaps"], "duplicates": row["duplicates"], "reorders": row["reorders"],
            "zero_returns": res["zero_returns"], "inbox_full": res["inbox_full"],
            "slow_consumer_drop": res["slow_consumer_drop"], "complete": complete, "notes": notes,
            "main_thread_us_per_call": res["main_cpu_calls_s"] / res["calls"] * 1e6 if res["calls"] else None,
            "other_threads_us_per_frame": res["other_cpu_total_s"] / got * 1e6 if got else None,
            "cpu0_busy_calls": (res["main_cpu_calls_s"] + res["other_cpu_calls_s"]) / calls_s,
            "latency_ms": {k: row["latency_ms"].get(k) for k in ("p50", "p99")},
            "client": row["client_cpu"], "cpu0": row["_cpu0"], "cpu1": row["_cpu1"],
            "foreign": row["_foreign"], "bench_cpu_share": row["_bench_cpu_s"] / row["_elapsed_s"],
            "opened": row["opened"], "errors": row["errors"],
        }


def cpu_times():
    """{cpu: (busy jiffies, steal jiffies, total jiffies)} from /proc/stat."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *v = line.split()
                    v = [int(x) for x in v[:8]]  # user nice system idle iowait irq softirq steal
                    out[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v))
    except OSError:
        pass
    return out


def cpu_busy(before, after, cpu):
    """(busy share, steal share) of one CPU between two cpu_times() readings."""
    if cpu not in before or cpu not in after:
        return None, None
    total = after[cpu][2] - before[cpu][2]
    if total <= 0:
        return None, None
    return (after[cpu][0] - before[cpu][0]) / total, (after[cpu][1] - before[cpu][1]) / total


def interp(samples, t):
    """samples [t, v1, v2, ...] linearly interpolated at time t (clamped to the ends)."""
    if t <= samples[0][0]:
        return samples[0]
    for a, b in zip(samples, samples[1:]):
        if a[0] <= t <= b[0]:
            f = (t - a[0]) / (b[0] - a[0]) if b[0] > a[0] else 0.0
            return [t] + [x + (y - x) * f for x, y in zip(a[1:], b[1:])]
    return samples[-1]


def saturated(r):
    """The load generator was the limit: wse-bench says so, or its process (every thread, the
    kernel work done in its context included: getrusage of the reaped child) used >= 90% of
    its CPU over the invocation."""
    return r["client"]["saturated"] or r["bench_cpu_share"] >= 0.9


def client_note(r):
    """wse-bench's CPU share of its one core over the whole invocation (rusage)."""
    return f"{r['bench_cpu_share'] * 100:.0f}%" + (" SATURATED" if saturated(r) else "")


def steal(r):
    """The larger of CPU 0's and CPU 1's steal share over the cell (the hypervisor ran another
    guest: this VM's CPUs were not there)."""
    return max(r["cpu0"]["steal"] or 0, r["cpu1"]["steal"] or 0)


def foreign_note(r):
    """CPU used by other processes on the machine during the cell, in % of one CPU; steal."""
    f = r.get("foreign")
    return ("?" if f is None else f"{f * 100:.0f}%") + f", steal {steal(r) * 100:.0f}%"


def errors_of(e):
    return e if isinstance(e, (int, float)) else (e.get("total", 0) if isinstance(e, dict) else 0)


def report(a, drv, inbound, sends, started, benchlib):
    lines = []
    p = lines.append
    p(f"# perf/python_bench.py, {started:%Y-%m-%d %H:%M} UTC")
    p("")
    p(f"Command: `{' '.join(['perf/python_bench.py'] + a.argv)}`; git {benchlib.git_revision()}")
    p(f"Machine: {benchlib.machine()}; server process on CPU {SERVER_CPU} (engine shard thread and "
      f"Python loop share it), wse-bench on CPU {CLIENT_CPU}")
    p("")
    if inbound:
        p(f"## Inbound: {MSG_BYTES} B JSON text messages, wse-bench blast, {a.inbound_duration:g} s window")
        p("")
        p("| conns | Python drain events/s | client sent/s (Python) | dropped (queue full) | Python thread µs/event "
          "| engine threads µs/msg read | engine (wsed --inbound drop) msg/s | engine µs/msg | Python / engine "
          "| wse-bench CPU (Python / engine) | other load (Python / engine) |")
        p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for k, r in inbound.items():
            py, en = r["python"], r["engine"]
            dropped_pct = 100 * py["dropped_window"] / py["sent_window"] if py["sent_window"] else 0
            p(f"| {k} | {py['python_events_per_s']:,.0f} | {py['sent_per_s']:,.0f} | "
              f"{py['dropped_window']:,.0f} ({dropped_pct:.0f}%) | {py['main_thread_us_per_event']:.2f} | "
              f"{py['other_threads_us_per_msg_read']:.2f} | {en['engine_msgs_per_s']:,.0f} | "
              f"{en['server_us_per_msg'] if en['server_us_per_msg'] is not None else float('nan'):.2f} | "
              f"{r['ratio']:.3f} | {client_note(py)} / {client_note(en)} | {foreign_note(py)} / {foreign_note(en)} |")
        p("")
        errs = [f"{k}: Python {errors_of(r['python']['errors'])}, engine {errors_of(r['engine']['errors'])}"
                for k, r in inbound.items() if errors_of(r["python"]["errors"]) or errors_of(r["engine"]["errors"])]
        if errs:
            p("wse-bench errors: " + "; ".join(errs))
            p("")
    if sends:
        p(f"## Sends from Python: {a.send_duration:g} s of calls or {a.max_frames:,} frames, whichever comes first; "
          "frames counted by wse-bench broadcast-all --publisher server")
        p("")
        p("| call | conns | calls/s (Python) | Python thread µs/call | frames expected | frames received | "
          "frames/s received | flush after calls | gaps / dups | e2e p50 / p99 | wse-bench CPU | other load | complete |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|")
        for (mode, n), r in sends.items():
            if "error" in r:
                p(f"| {mode} | {n} | error: {r['error']} | | | | | | | | | | no |")
                continue
            fps = f"{r['frames_per_s']:,.0f}" if r["frames_per_s"] else "n/a"
            flush = f"{r['flush_s'] * 1000:.0f} ms" if r["flush_s"] is not None else "not flushed"
            p(f"| {mode} | {n} | {r['calls_per_s']:,.0f}{' (count bound)' if r['count_bound'] else ''} | "
              f"{r['main_thread_us_per_call']:.2f} | "
              f"{r['expected_frames']:,} | {r['frames_received']:,} | {fps} | {flush} | {r['gaps']} / {r['duplicates']} | "
              f"{r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} ms | {client_note(r)} | {foreign_note(r)} | "
              f"{'yes' if r['complete'] else 'NO: ' + '; '.join(r['notes'])} |")
        p("")
    if inbound:
        p("## Against the reference's published figures (seed 000: Apple M2, macOS, Python 3.14; other hardware)")
        p("")
        p("| figure | reference | wsed (this run) | wsed / reference |")
        p("|---|---:|---:|---:|")
        one = inbound.get(1, {}).get("python", {}).get("python_events_per_s")
        ten = inbound.get(10, {}).get("python", {}).get("python_events_per_s")
        rows = [("1 client, sequential 50K msgs (reference) vs 1 connection drained", REFERENCE["sequential_1"], one),
                ("1 client, sustained JSON 10 s (reference) vs 1 connection drained", REFERENCE["sustained_1"], one),
                ("10 client processes, sustained JSON (reference) vs 10 connections drained", REFERENCE["sustained_10"], ten)]
        for label, ref, ours in rows:
            r_ = ratio(ours, ref)
            p(f"| {label} | {ref:,} msg/s | {si(ours)} events/s | {f'{r_:.2f}x' if r_ else 'n/a'} |")
        p("")
    p("Notes:")
    notes = []
    for k, r in inbound.items():
        py, en = r["python"], r["engine"]
        for who, c in (("Python server", py), ("engine", en)):
            if saturated(c):
                notes.append(f"- inbound {k} conns, {who}: wse-bench saturated its CPU: the figure is the "
                             "load generator's limit, not the server's (a lower bound)")
        ev = py["other_events"]
        if ev.get("auth_connect", 0) < py["opened"] or ev.get("disconnect", 0) < py["opened"]:
            notes.append(f"- inbound {k} conns: {py['opened']} connections opened and closed, the Python loop got "
                         f"{ev.get('auth_connect', 0)} auth_connect and {ev.get('disconnect', 0)} disconnect events: "
                         "the full inbound queue dropped the others (lifecycle events are dropped like messages)")
        if py["dropped_window"]:
            notes.append(f"- inbound {k} conns: the engine took {py['sent_per_s']:,.0f} msg/s and the Python loop "
                         f"drained {py['python_events_per_s']:,.0f}/s: the bounded inbound queue "
                         f"(max_inbound_queue_size 131072) overflowed and dropped the rest "
                         f"(max depth {py['max_queue_depth']:,}); CPU 0 busy {py['cpu0_busy'] * 100:.0f}%")
    for (mode, n), r in sends.items():
        if "error" not in r and saturated(r):
            notes.append(f"- {mode} {n} conns: wse-bench saturated: frames/s may be the client's limit")
    cells = [r["python"] for r in inbound.values()] + [r["engine"] for r in inbound.values()] + \
        [r for r in sends.values() if "error" not in r]
    busy = [c["foreign"] for c in cells if c.get("foreign") is not None]
    if busy and max(busy) > 0.1:
        notes.append(f"- other processes used up to {max(busy) * 100:.0f}% of a CPU during a cell (other load "
                     "column): those figures are low by up to that share; rerun on a quiet machine")
    stolen = [steal(c) for c in cells]
    if stolen and max(stolen) > 0.05:
        notes.append(f"- the hypervisor stole up to {max(stolen) * 100:.0f}% of a CPU's time during a cell (steal, "
                     "over the whole wse-bench invocation): those cells are low by about that share")
    if not any(saturated(c) for c in cells):
        notes.append("- wse-bench was never the limit (wse-bench CPU column: its process's share of CPU 1)")
    lines += notes
    p("")
    p("Commands (SECRET: a fresh 48-byte HS256 key per run; PORT / PID / FILE per cell):")
    p("")
    for c in drv.commands:
        p(f"    {c}")
    return "\n".join(lines)


def summary(a, inbound, sends, started):
    out = {"bench": "perf/python_bench.py", "date": f"{started:%Y-%m-%dT%H:%MZ}", "quick": a.quick,
           "inbound": {}, "sends": {}, "reference": REFERENCE}
    for k, r in inbound.items():
        out["inbound"][str(k)] = {
            "python_events_per_s": round(r["python"]["python_events_per_s"] or 0),
            "client_sent_per_s": round(r["python"]["sent_per_s"] or 0),
            "dropped": round(r["python"]["dropped_window"]),
            "engine_msgs_per_s": round(r["engine"]["engine_msgs_per_s"] or 0),
            "python_over_engine": round(r["ratio"], 4) if r["ratio"] else None,
            "python_thread_us_per_event": round(r["python"]["main_thread_us_per_event"] or 0, 3)}
    for (mode, n), r in sends.items():
        if "error" in r:
            out["sends"][f"{mode}/{n}"] = {"error": r["error"]}
            continue
        out["sends"][f"{mode}/{n}"] = {
            "calls_per_s": round(r["calls_per_s"]), "frames_per_s": round(r["frames_per_s"] or 0),
            "expected": r["expected_frames"], "received": r["frames_received"], "complete": r["complete"]}
    if 1 in inbound and inbound[1]["python"]["python_events_per_s"]:
        v = inbound[1]["python"]["python_events_per_s"]
        out["vs_reference"] = {"1_conn_over_sequential": round(v / REFERENCE["sequential_1"], 3),
                               "1_conn_over_sustained": round(v / REFERENCE["sustained_1"], 3)}
        if 10 in inbound and inbound[10]["python"]["python_events_per_s"]:
            out["vs_reference"]["10_conns_over_10_procs"] = round(
                inbound[10]["python"]["python_events_per_s"] / REFERENCE["sustained_10"], 3)
    return out


def main():
    ap = argparse.ArgumentParser(description="The Python module under load: drain_inbound events/s against "
                                 "the engine's ceiling, and send_event / send / broadcast_all calls/s with "
                                 "every frame counted by the clients.")
    ap.add_argument("--quick", action="store_true", help="short windows and fewer cells (~30 s)")
    ap.add_argument("--build-dir", default="/tmp/build-bench",
                    help="meson build dir holding python/, engine/wsed, tools/wse-bench")
    ap.add_argument("--inbound-conns", help="connection counts of the inbound test (default 1,10,100)")
    ap.add_argument("--send-conns", help="connection counts of the send test (default 10,100,1000; --quick 100)")
    ap.add_argument("--modes", default="send_event,send,broadcast_all,broadcast_all_paced",
                    help="send calls to measure (broadcast_all_paced: broadcast_all with the caller keeping at "
                         f"most {4096:,} calls ahead of the shard, read from prometheus_metrics())")
    ap.add_argument("--inbound-duration", type=float, help="wse-bench window per inbound cell (5 s; --quick 2)")
    ap.add_argument("--send-duration", type=float, help="seconds of calls per send cell (3 s; --quick 1)")
    ap.add_argument("--flush-timeout", type=float, default=None,
                    help="seconds after the calls for the engine to hand every frame to the kernel "
                         "(2, twice that for broadcast_all; --quick 1)")
    ap.add_argument("--max-frames", type=int, default=None,
                    help="most frames one send cell makes (calls x connections reached; 6,000,000; --quick 2,500,000)")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each cell, wait up to this many seconds for other processes to use under "
                         "15%% of a CPU (a shared machine; default 0: go on, the other-load column says it)")
    ap.add_argument("--no-inbound", action="store_true")
    ap.add_argument("--no-send", action="store_true")
    ap.add_argument("--json", help="also write the whole result (every figure) to this file")
    # internal: the server process
    ap.add_argument("--serve", choices=["inbound", "send"], help=argparse.SUPPRESS)
    ap.add_argument("--conns", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="send_event", help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=3.0, help=argparse.SUPPRESS)
    ap.add_argument("--life", type=float, default=120.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        if a.flush_timeout is None:
            a.flush_timeout = 3.0
        a.max_frames = min(a.max_frames or 6_000_000, 50_000_000)
        a.life = min(max(a.life, 1.0), 600.0)
        return serve(a)

    a.argv = sys.argv[1:]
    q = a.quick
    a.inbound_conns = [int(x) for x in (a.inbound_conns or ("1,100" if q else "1,10,100")).split(",")]
    a.send_conns = [int(x) for x in (a.send_conns or ("100" if q else "10,100,1000")).split(",")]
    a.inbound_duration = min(a.inbound_duration or (2.0 if q else 5.0), 120.0)
    a.send_duration = min(a.send_duration or (1.0 if q else 3.0), 120.0)
    a.wait_quiet = min(max(a.wait_quiet, 0.0), 600.0)
    a.flush_timeout = min(a.flush_timeout if a.flush_timeout is not None else (1.0 if q else 2.0), 60.0)
    a.max_frames = min(a.max_frames or (2_500_000 if q else 6_000_000), 50_000_000)
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in ("send_event", "send", "broadcast_all", "broadcast_all_paced"):
            ap.error(f"unknown mode {m}")

    sys.path.insert(0, HERE)
    import benchlib
    benchlib.install_handlers()
    drv = Driver(a, benchlib)
    for path in (drv.wse_bench, drv.wsed, os.path.join(drv.pypath, "wsed", "compat.py")):
        if not os.path.exists(path):
            log(f"missing {path}: build first (meson setup {a.build_dir} {benchlib.REPO} --buildtype=release; "
                f"ninja -C {a.build_dir})")
            return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    t_begin = time.monotonic()
    inbound, sends = {}, {}
    try:
        if not a.no_inbound:
            for k in a.inbound_conns:  # Python then engine per tier, so drift hits both alike
                drv.wait_quiet()
                py = drv.inbound_python(k)
                drv.wait_quiet()
                en = drv.inbound_engine(k)
                inbound[k] = {"python": py, "engine": en,
                              "ratio": ratio(py["python_events_per_s"], en["engine_msgs_per_s"])}
                log(f"  inbound {k}: Python {si(py['python_events_per_s'])} events/s (client sent "
                    f"{si(py['sent_per_s'])}/s), engine {si(en['engine_msgs_per_s'])} msg/s")
        if not a.no_send:
            for n in a.send_conns:
                for mode in modes:
                    drv.wait_quiet()
                    r = drv.send_cell(mode, n)
                    sends[(mode, n)] = r
                    if "error" not in r:
                        log(f"  {mode} {n}: {si(r['calls_per_s'])} calls/s, {r['frames_received']:,} of "
                            f"{r['expected_frames']:,} frames received")
    except RuntimeError as e:
        log(f"python_bench: {e}")
        return 1
    finally:
        benchlib.stop_all()
        shutil.rmtree(drv.tmp, ignore_errors=True)
    text = report(a, drv, inbound, sends, started, benchlib)
    print(text)
    s = summary(a, inbound, sends, started)
    s["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": s, "inbound": {str(k): v for k, v in inbound.items()},
                       "sends": {f"{m}/{n}": v for (m, n), v in sends.items()}}, f, indent=1)
    print(json.dumps(s, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
