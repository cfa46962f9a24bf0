#!/bin/bash
# perf/tls.sh: TLS against plain on wsed, side by side in one run. wsed --mode echo --workers 1
# pinned to CPU 0, wse-bench --protocol raw --threads 1 pinned to CPU 1 (loopback only), the same
# commands with and without --tls (wsed --tls-cert-file/--tls-key-file with a self-signed P-256
# certificate made here, in a temp dir), plain and TLS interleaved per round, a fresh server per
# measurement:
#   - connection storm of STORM connections: accept rate, handshake p50/p99 (TLS handshake plus
#     upgrade), server and bench CPU per connection (server: /proc/PID/stat utime+stime over the
#     whole wse-bench invocation, connects and closes; bench: its own CPU over the ramp);
#   - ping latency at CONNS connections (PINGS each, one at a time): p50/p99;
#   - throughput at CONNS connections (189 B JSON echoed): echoes/s, latency, server CPU per
#     message (utime+stime over the window / echoes, from wse-bench --server-pid) and the bench's;
#   - idle memory: IDLE connections held 1 s (wse-bench connection-limit with one probe), server
#     RSS growth per connection at each, and the marginal cost between the first two counts.
# Prints one table of medians over ROUNDS rounds with the TLS/plain ratio.
#
# usage: perf/tls.sh [BUILD_DIR]   (default build/; WSED=, BENCH= override the binaries)
# env: ROUNDS (2), CONNS (100), STORM (1000), PINGS (200), DURATION (3 s), IDLE (2000,10000),
#      KEEP=DIR (keep the JSON reports there)
# Bounded: every wse-bench runs under timeout 180; every wsed is stopped by its PID (trap on exit).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
WSED=${WSED:-$BUILD/engine/wsed}
BENCH=${BENCH:-$BUILD/tools/wse-bench}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-100}
STORM=${STORM:-1000}
PINGS=${PINGS:-200}
DURATION=${DURATION:-3}
IDLE=${IDLE:-2000,10000}
for b in "$WSED" "$BENCH"; do
  [ -x "$b" ] || { echo "perf/tls.sh: $b is missing (build it, or pass the build dir)" >&2; exit 2; }
done
command -v openssl >/dev/null || { echo "perf/tls.sh: needs the openssl CLI" >&2; exit 2; }

tmp=$(mktemp -d /tmp/wsed-tls-perf.XXXXXX)
SPID=""
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; fi
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$tmp"/*.json "$KEEP"/ 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1 ||
  { echo "perf/tls.sh: openssl req failed" >&2; exit 1; }

# start_wsed plain|tls: SPID, SPORT (the port from wsed's first stdout line, within 10 s).
start_wsed() {
  local args=(--mode echo --workers 1 --port 0 --idle-timeout 0 --max-connections 50000
              --max-connections-per-ip 0 --max-pending-handshakes 50000)
  [ "$1" = tls ] && args+=(--tls-cert-file "$tmp/cert.pem" --tls-key-file "$tmp/key.pem")
  taskset -c 0 "$WSED" "${args[@]}" >"$tmp/wsed.out" 2>"$tmp/wsed.err" &
  SPID=$!
  SPORT=""
  for _ in $(seq 100); do
    SPORT=$(grep -oE 'wss?://[^:/ ]+:[0-9]+' "$tmp/wsed.out" 2>/dev/null | head -1 | sed 's/.*://')
    [ -n "$SPORT" ] && return 0
    sleep 0.1
  done
  echo "perf/tls.sh: wsed ($1) printed no port: $(tail -c 500 "$tmp/wsed.err")" >&2
  exit 1
}

stop_wsed() {
  kill "$SPID" 2>/dev/null
  wait "$SPID" 2>/dev/null
  SPID=""
}

ticks() {  # utime + stime of a process, in clock ticks (comm is "wsed": no spaces)
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# bench MODE OUT.json ARGS...: wse-bench pinned to CPU 1 against the running wsed.
bench() {
  local mode=$1 out=$2
  shift 2
  local tls=()
  [ "$mode" = tls ] && tls=(--tls)
  timeout 180 taskset -c 1 "$BENCH" --protocol raw --port "$SPORT" "${tls[@]}" --threads 1 \
    --server-pid "$SPID" --json "$out" "$@" >>"$tmp/bench.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || echo "perf/tls.sh: wse-bench ($mode $*) exited $rc; see its errors in the table" >&2
}

echo "# perf/tls.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
echo "wsed: $WSED --mode echo --workers 1 (CPU 0); wse-bench --protocol raw --threads 1 (CPU 1)"
echo "rounds $ROUNDS, storm $STORM, load $CONNS connections, $PINGS pings, ${DURATION} s windows, idle $IDLE"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    start_wsed "$mode"
    t0=$(ticks "$SPID")
    bench "$mode" "$tmp/storm-$mode-$round.json" --test connection-storm --tiers "$STORM"
    t1=$(ticks "$SPID")
    echo "{\"ticks\": $((t1 - t0)), \"hz\": $hz}" >"$tmp/stormcpu-$mode-$round.json"
    bench "$mode" "$tmp/load-$mode-$round.json" --test ping-latency,throughput --tiers "$CONNS" \
      --pings "$PINGS" --duration "$DURATION"
    stop_wsed
    for n in ${IDLE//,/ }; do
      start_wsed "$mode"
      bench "$mode" "$tmp/idle-$mode-$round-$n.json" --test connection-limit --limit-start "$n" \
        --max-conns "$n" --duration 4 --ramp-timeout 60
      stop_wsed
    done
  done
  echo "round $round done ($(date -u +%H:%M:%S))" >&2
done

python3 - "$tmp" "$ROUNDS" "$IDLE" <<'EOF'
import json, os, statistics, sys

tmp, rounds, idle = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split(",") if n]

def load(name):
    p = os.path.join(tmp, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)

def row(doc, test):
    return doc["tests"][test]["rows"][0] if doc and doc["tests"].get(test, {}).get("rows") else None

def p50_p99(f, label, hist):
    for q in ("p50", "p99"):
        f["%s %s (ms)" % (label, q)] = hist[q]

def figures(mode, r):
    f, errors = {}, 0
    storm = load("storm-%s-%d.json" % (mode, r))
    cpu = load("stormcpu-%s-%d.json" % (mode, r))
    s = row(storm, "connection-storm")
    if s:
        errors += s["errors"]["total"]
        f["storm accept rate (conn/s)"] = s["accept_rate"]
        p50_p99(f, "storm handshake", s["handshake_ms"])
        if s["opened"]:
            f["storm server CPU per conn (us)"] = cpu["ticks"] / cpu["hz"] * 1e6 / s["opened"]
            c = s["client_cpu"]
            f["storm bench CPU per conn (us)"] = (c["user_s"] + c["sys_s"]) * 1e6 / s["opened"]
    doc = load("load-%s-%d.json" % (mode, r))
    p = row(doc, "ping-latency")
    if p:
        errors += p["errors"]["total"]
        p50_p99(f, "ping", p["latency_ms"])
        f["pings answered"] = p["pings"]
    t = row(doc, "throughput")
    if t:
        errors += t["errors"]["total"]
        f["throughput echoes/s"] = t["msg_per_s"]
        p50_p99(f, "throughput", t["latency_ms"])
        if t["replies"] and "server" in t:
            sv = t["server"]
            f["server CPU per msg (us)"] = (sv["user_s"] + sv["sys_s"]) * 1e6 / t["replies"]
            f["  of which user (us)"] = sv["user_s"] * 1e6 / t["replies"]
            c = t["client_cpu"]
            f["bench CPU per msg (us)"] = (c["user_s"] + c["sys_s"]) * 1e6 / t["replies"]
            f["bench busy (% of its core)"] = 100 * c["busy"]
            f["server busy (% of its core)"] = 100 * (sv["user_s"] + sv["sys_s"]) / t["window_s"]
    rss = {}
    for n in idle:
        i = row(load("idle-%s-%d-%d.json" % (mode, r, n)), "connection-limit")
        if i and "server" in i:
            errors += i["errors"]["total"]
            rss[n] = i
            f["idle RSS per conn at %d (B)" % n] = i["server"]["rss_bytes_per_conn"]
    if len(idle) >= 2 and idle[0] in rss and idle[1] in rss:
        a, b = rss[idle[0]], rss[idle[1]]
        if b["open_at_end"] > a["open_at_end"]:
            f["idle RSS marginal %d->%d (B/conn)" % (idle[0], idle[1])] = (
                (b["server"]["rss_loaded_kib"] - b["server"]["rss_before_kib"]) -
                (a["server"]["rss_loaded_kib"] - a["server"]["rss_before_kib"])) * 1024 / (
                b["open_at_end"] - a["open_at_end"])
    f["errors (all tiers)"] = errors
    return f

plain = [figures("plain", r) for r in range(1, rounds + 1)]
tls = [figures("tls", r) for r in range(1, rounds + 1)]
keys = []
for f in plain + tls:
    for k in f:
        if k not in keys:
            keys.append(k)

def med(fs, k):
    v = [f[k] for f in fs if k in f]
    return statistics.median(v) if v else None

def cell(v):
    if v is None:
        return "-"
    return "{:,.0f}".format(v) if abs(v) >= 100 else "{:.3g}".format(v)

print()
print("| figure (median of %d) | plain | TLS | TLS / plain |" % rounds)
print("|---|---|---|---|")
for k in keys:
    a, b = med(plain, k), med(tls, k)
    ratio = "%.2f" % (b / a) if a and b is not None and k != "errors (all tiers)" else "-"
    print("| %s | %s | %s | %s |" % (k, cell(a), cell(b), ratio))
print()
print("per round (plain / TLS):")
for r in range(rounds):
    print("  round %d: %s" % (r + 1, "; ".join("%s %s / %s" % (k, cell(plain[r].get(k)), cell(tls[r].get(k)))
                                              for k in ("throughput echoes/s", "server CPU per msg (us)",
                                                        "storm accept rate (conn/s)"))))
EOF
