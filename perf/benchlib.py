#!/usr/bin/python3
# perf/benchlib.py: helpers shared by the perf/ scripts (run_suite.py, callgrind.sh's helpers).
# Starting servers pinned with taskset on
# free ports, stopping every process started by PID, machine and revision facts, medians.
#
# Owns: the Popen objects in STARTED (every process a script started through it). Must never kill
# a process it did not start, never talk to anything but 127.0.0.0/8, and never wait without a
# timeout.
import http.client
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
PEERS = os.path.join(REPO, "perf", "peers")
STARTED = []  # Popen objects of every process started through this module


def log(text):
    print(text, file=sys.stderr, flush=True)


def stop(proc, timeout_s=5.0):
    """SIGTERM, then SIGKILL after timeout_s; only ever the given Popen's own PID."""
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


def stop_all():
    for proc in STARTED:
        stop(proc)


def install_handlers():
    """Stop every started process on exit, SIGTERM and SIGINT."""
    import atexit

    def on_signal(signum, _frame):
        stop_all()
        sys.exit(128 + signum)

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run_checked(cmd, timeout_s, **kwargs):
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, timeout=timeout_s, stdout=sys.stderr, **kwargs)


def start_server(name, cmd, cpu, timeout_s=10.0, cwd=REPO, env=None):
    """Starts cmd pinned to `cpu` (taskset); waits for a `ws://HOST:PORT` line on its output.
    Returns (Popen, port) or raises RuntimeError. Output goes to an unlinked file, never a pipe
    nobody reads (a full or closed pipe stalls or kills the server)."""
    full = ["taskset", "-c", str(cpu)] + cmd
    log("+ " + " ".join(full))
    log_file = tempfile.NamedTemporaryFile(prefix=f"wsed-perf-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(full, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd,
                            env=dict(os.environ, **env) if env else None)
    log_file.close()
    STARTED.append(proc)
    port = None
    deadline = time.monotonic() + timeout_s
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


def proc_cpu_seconds(pid):
    """(user, sys) seconds of a process, all threads, from /proc/PID/stat; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def build_go_peer(build_dir):
    """go build of perf/peers/go/echo_server.go with Debian's gorilla (GOPATH mode), as
    the peers need. Returns the binary's path."""
    out_dir = os.path.join(build_dir, "perf-peers")
    os.makedirs(out_dir, exist_ok=True)
    binary = os.path.join(out_dir, "go-echo")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=os.path.join(tempfile.gettempdir(), "wsed-perf-gocache"), GOFLAGS="")
    run_checked(["go", "build", "-o", binary, os.path.join(PEERS, "go", "echo_server.go")], 300, env=env)
    return binary


def ensure_node_peer():
    if not os.path.isdir(os.path.join(PEERS, "node", "node_modules", "ws")):
        run_checked(["npm", "install", "--no-audit", "--no-fund"], 300, cwd=os.path.join(PEERS, "node"))


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def ram_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def nofile_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def machine():
    soft, hard = nofile_limit()
    ram = ram_gib()
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, {ram:.1f} GiB RAM, kernel {os.uname().release}, "
            f"RLIMIT_NOFILE {soft}/{hard}" if ram else
            f"{cpu_model()}, {os.cpu_count()} CPUs, kernel {os.uname().release}")


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


def peer_versions():
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
        gorilla = subprocess.run(["dpkg-query", "-W", "-f", "${Version}",
                                  "golang-github-gorilla-websocket-dev"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        out.append("gorilla/websocket " + (gorilla or "?") + " (Debian)")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ", ".join(out)


_SHARD_LABEL = re.compile(r'shard="[^"]*",?')


def series_summed_over_shards(text):
    """{series: value} of a /metrics exposition, each series' shard="N" label dropped and its
    shards summed (wsed exposes per-shard series only, no total)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        name = _SHARD_LABEL.sub("", name).replace(",}", "}").replace("{}", "")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def scrape_summed(port, host="127.0.0.1", timeout_s=10):
    """GET /metrics of a wsed as series_summed_over_shards; {} when it does not answer within
    timeout_s (the caller counts that: a stalled shard is a finding)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    return series_summed_over_shards(body)
