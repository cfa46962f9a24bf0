#!/bin/bash
# perf/fanout_multi.sh [TIERS]: multi-instance fan-out side by side with single-instance fan-out.
#
# Starts a redis-server on a free 127.0.0.1 port (--save '' --appendonly no), two wsed instances
# A and B bridged by it (--workers 1 --redis-url ...), and one wsed without Redis (S); then, per
# tier (default 10,100,1000,10000), wse-bench fanout-multi against A and B (subscribers split
# evenly, the publisher on A's HTTP API, or straight into Redis with PUBLISHER=redis) and, right
# after it, wse-bench fanout-broadcast against S at the same tier. Prints both tables and the
# ratio multi/single of deliveries/s. Exit: 0 when no run saw a gap, a duplicate or another error,
# 3 when one did, 2 when something is missing, 1 when a server did not start.
#
# Environment: DURATION (3 s per measurement), PUBLISHER (api | redis | wse: a WSE connection to
# A; the single-instance run always uses api), WORKERS (1, per wsed of A and B), SINGLE_WORKERS
# (WORKERS; 2 gives the single instance as many shards as A and B together),
# SERVER_CPUS (0,1: taskset of every server, as perf/fan.sh pins wsed), BENCH_CPUS (unset:
# the bench is not pinned, as in perf/fan.sh), BENCH_THREADS (2), BENCH_ARGS (more wse-bench
# flags), WSED (the wsed binary; default build/engine/wsed), WSED_ARGS (more flags for all
# three wsed), OUT (a directory for the outputs; default a
# new one under /tmp), NO_REDIS=1 (no Redis: fanout-multi with A and B both on one plain wsed,
# to test the bench itself).
#
# Every process is started here, stopped by its PID on every exit path, and every wait is
# bounded (each wse-bench run by `timeout`, BENCH_TIMEOUT seconds: 180).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIERS=${1:-10,100,1000,10000}
DURATION=${DURATION:-3}
PUBLISHER=${PUBLISHER:-api}
WORKERS=${WORKERS:-1}
SINGLE_WORKERS=${SINGLE_WORKERS:-$WORKERS}
SERVER_CPUS=${SERVER_CPUS:-0,1}
BENCH_THREADS=${BENCH_THREADS:-2}
NO_REDIS=${NO_REDIS:-0}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-180}
OUT=${OUT:-$(mktemp -d /tmp/fanout-multi.XXXXXX)}
WSED=${WSED:-$ROOT/build/engine/wsed}
BENCH=$ROOT/build/tools/wse-bench
KEY=$ROOT/build/perf-api.key
SECRET=bench-secret-key-for-testing-only
mkdir -p "$OUT"

for f in "$WSED" "$BENCH"; do
  [ -x "$f" ] || { echo "fanout_multi.sh: $f missing (ninja -C build)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "fanout_multi.sh: python3 missing" >&2; exit 2; }
if [ "$NO_REDIS" != 1 ]; then
  command -v redis-server >/dev/null || { echo "fanout_multi.sh: redis-server missing" >&2; exit 2; }
  if ! "$WSED" --help 2>&1 | grep -q -- '--redis-url'; then
    echo "fanout_multi.sh: $WSED has no --redis-url (NO_REDIS=1 tests the bench alone)" >&2
    exit 2
  fi
fi
case $PUBLISHER in
  api | wse) ;;
  redis) [ "$NO_REDIS" = 1 ] && { echo "fanout_multi.sh: PUBLISHER=redis needs Redis" >&2; exit 2; } ;;
  *) echo "fanout_multi.sh: PUBLISHER must be api, redis or wse" >&2; exit 2 ;;
esac
[ -f "$KEY" ] || head -c 24 /dev/urandom | base64 > "$KEY"

PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_wsed NAME [args]: wsed on a free port; sets PORT and PID (the port from its first line).
start_wsed() {
  local name=$1 log=$OUT/wsed-$1.out
  shift
  # shellcheck disable=SC2086  # WSED_ARGS: several flags, split on purpose
  local workers=$WORKERS
  [ "$name" = S ] && workers=$SINGLE_WORKERS
  WSED_JWT_SECRET=$SECRET taskset -c "$SERVER_CPUS" "$WSED" --port 0 --workers "$workers" \
    --jwt-issuer wse-bench --jwt-audience wse-bench --api-key-file "$KEY" --idle-timeout 0 \
    --inbound-rate 0 "$@" ${WSED_ARGS:-} > "$log" 2> "$OUT/wsed-$name.err" &
  PID=$!
  PIDS+=("$PID")
  PORT=
  for _ in $(seq 100); do
    PORT=$(head -1 "$log" 2>/dev/null | grep -oE 'listening on ws://127\.0\.0\.1:[0-9]+' |
      grep -oE '[0-9]+$')
    [ -n "$PORT" ] && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$PORT" ]; then
    echo "fanout_multi.sh: wsed $name did not start:" >&2
    cat "$log" "$OUT/wsed-$name.err" >&2
    exit 1
  fi
  sleep 0.2  # the startup lines after the first (the Redis one names the instance id)
  echo "wsed $name: port $PORT, pid $PID$(grep -m1 -hoE 'instance [0-9a-f]{8}' "$log" | sed 's/^/, /')"
}

REDIS_URL=
REDIS_ARGS=()
if [ "$NO_REDIS" != 1 ]; then
  RPORT=$(free_port)
  (cd "$OUT" && exec taskset -c "$SERVER_CPUS" redis-server --port "$RPORT" --bind 127.0.0.1 \
    --save '' --appendonly no > "$OUT/redis.out" 2>&1) &
  RPID=$!
  PIDS+=("$RPID")
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.05
  done
  [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] ||
    { echo "fanout_multi.sh: redis-server did not start" >&2; cat "$OUT/redis.out" >&2; exit 1; }
  REDIS_URL=redis://127.0.0.1:$RPORT
  REDIS_ARGS=(--redis-url "$REDIS_URL")
  echo "redis-server: port $RPORT, pid $RPID"
  start_wsed A "${REDIS_ARGS[@]}"
  PORT_A=$PORT PID_A=$PID
  start_wsed B "${REDIS_ARGS[@]}"
  PORT_B=$PORT PID_B=$PID
else
  start_wsed A
  PORT_A=$PORT PID_A=$PID PORT_B=$PORT PID_B=$PID RPID=$PID
  echo "NO_REDIS=1: A and B are the same wsed (every subscriber on one instance)"
fi
start_wsed S
PORT_S=$PORT PID_S=$PID

# CPU ticks (user + system, every thread) a process used so far.
cpu_ticks() {
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# One tier of one scenario: wse-bench under a time bound; its rc in $OUT/NAME.rc, and the CPU
# ticks Redis, A, B and S used during it in $OUT/NAME.cpu.
bench() {
  local name=$1
  shift
  local before=() after=() p
  for p in "$RPID" "$PID_A" "$PID_B" "$PID_S"; do before+=("$(cpu_ticks "$p")"); done
  local pin=()
  [ -n "${BENCH_CPUS:-}" ] && pin=(taskset -c "$BENCH_CPUS")
  # shellcheck disable=SC2086  # BENCH_ARGS: several flags, split on purpose
  timeout "$BENCH_TIMEOUT" "${pin[@]}" "$BENCH" --duration "$DURATION" --threads "$BENCH_THREADS" \
    --api-key-file "$KEY" --json "$OUT/$name.json" "$@" ${BENCH_ARGS:-} \
    > "$OUT/$name.md" 2> "$OUT/$name.err"
  local rc=$?
  echo "$rc" > "$OUT/$name.rc"
  if [ "$rc" = 124 ]; then
    echo "fanout_multi.sh: $name: wse-bench still running after BENCH_TIMEOUT=$BENCH_TIMEOUT s, stopped" >&2
  fi
  for p in "$RPID" "$PID_A" "$PID_B" "$PID_S"; do after+=("$(cpu_ticks "$p")"); done
  echo "$(getconf CLK_TCK) $((after[0] - before[0])) $((after[1] - before[1])) $((after[2] - before[2])) $((after[3] - before[3]))" > "$OUT/$name.cpu"
}

IFS=, read -r -a tier_list <<< "$TIERS"
for n in "${tier_list[@]}"; do
  echo "tier $n: fanout-multi (A :$PORT_A, B :$PORT_B, publisher $PUBLISHER), then fanout-broadcast (:$PORT_S)"
  bench "multi-$n" --test fanout-multi --port "$PORT_A" --port-b "$PORT_B" --tiers "$n" \
    --publisher "$PUBLISHER" ${REDIS_URL:+--redis-url "$REDIS_URL"} --server-pid "$PID_A"
  bench "single-$n" --test fanout-broadcast --port "$PORT_S" --tiers "$n" --server-pid "$PID_S"
done
stop_all

python3 - "$OUT" "$TIERS" "$PUBLISHER" "$NO_REDIS" <<'EOF'
import json, os, re, sys
out, tiers, publisher, no_redis = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]

def load(name):
    path = os.path.join(out, name + ".json")
    rc_path = os.path.join(out, name + ".rc")
    rc = int(open(rc_path).read().strip() or 1) if os.path.exists(rc_path) else 1
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None, rc
    tests = doc.get("tests", {})
    for t in tests.values():
        if t.get("rows"):
            return t["rows"][0], rc
    return None, rc

def table(name):
    """The table rows and the notes of wse-bench's markdown."""
    try:
        text = open(os.path.join(out, name + ".md")).read()
    except OSError:
        return [], []
    rows = [l for l in text.splitlines() if re.match(r"^\| [0-9]", l)]
    notes = [l for l in text.splitlines() if l.startswith("- ") or l.startswith("  - ")]
    return rows, notes

def si(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e4:
        return "%.0fK" % (v / 1e3)
    return "{:,}".format(int(round(v)))

def lat(l):
    return "%.2f / %.2f / %.2f ms" % (l["p50"], l["p99"], l["p999"]) if l else "-"

what = "A and B = one plain wsed (NO_REDIS=1)" if no_redis == "1" else "two wsed --workers 1 bridged by Redis"
def scenario(title, prefix, columns):
    """One scenario's wse-bench tables, every tier's rows under one header, then their notes."""
    print("\n## %s\n" % title)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    notes = []
    for n in tiers:
        rows, tier_notes = table(prefix + n)
        print("\n".join(rows) if rows else "| %s | (no result: see %s/%s%s.err) |" % (n, out, prefix, n))
        notes += tier_notes
    print("\n" + "\n".join(notes))

COLUMNS = ["Published/s", "Deliveries/s", "MB/s", "Gaps", "Dups", "Reorders", "p50", "p99", "p99.9",
           "Slow-consumer drops", "Errors"]
scenario("fanout-multi (%s, publisher %s)" % (what, publisher), "multi-", ["Subscribers", "On"] + COLUMNS)
scenario("fanout-broadcast (one wsed, no Redis, publisher api)", "single-", ["Subscribers"] + COLUMNS)

print("\n## multi / single\n")
print("| Subscribers | Single deliveries/s | Multi deliveries/s (A + B) | Ratio | Multi published/s | Single published/s | Multi gaps/dups | Single gaps/dups | Multi p50/p99/p99.9 | Single p50/p99/p99.9 |")
print("|---|---|---|---|---|---|---|---|---|---|")
bad = False
for n in tiers:
    m, mrc = load("multi-" + n)
    s, src = load("single-" + n)
    bad |= mrc != 0 or src != 0 or m is None or s is None
    if m is None or s is None:
        print("| %s | %s | %s | - | | | | | | |" % (n, si(s["deliveries_per_s"]) if s else "-", si(m["deliveries_per_s"]) if m else "-"))
        continue
    sides = m.get("sides", [])
    split = " (%s + %s)" % (si(sides[0]["deliveries_per_s"]), si(sides[1]["deliveries_per_s"])) if len(sides) == 2 else ""
    ratio = m["deliveries_per_s"] / s["deliveries_per_s"] if s["deliveries_per_s"] else float("nan")
    print("| {:,} | {} | {}{} | {:.2f} | {} | {} | {}/{} | {}/{} | {} | {} |".format(
        int(n), si(s["deliveries_per_s"]), si(m["deliveries_per_s"]), split, ratio,
        si(m["published_per_s"]), si(s["published_per_s"]), m["gaps"], m["duplicates"],
        s["gaps"], s["duplicates"], lat(m.get("latency_ms")), lat(s.get("latency_ms"))))

def cpu(name):
    try:
        tck, *ticks = [int(x) for x in open(os.path.join(out, name + ".cpu")).read().split()]
    except (OSError, ValueError):
        return None
    return [t / tck for t in ticks]  # seconds: redis, A, B, S

print("\n## CPU per publication (whole run, ramp included: user + system of every thread)\n")
print("| Subscribers | multi: Redis µs/pub | multi: A µs/pub | multi: B µs/pub | multi: A + B + Redis | single: wsed µs/pub |")
print("|---|---|---|---|---|---|")
for n in tiers:
    m, _ = load("multi-" + n)
    s, _ = load("single-" + n)
    cm, cs = cpu("multi-" + n), cpu("single-" + n)
    if not (m and s and cm and cs and m["published_total"] and s["published_total"]):
        continue
    pm, ps = m["published_total"], s["published_total"]
    r, a, b = (x / pm * 1e6 for x in cm[:3])
    print("| {:,} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |".format(int(n), r, a, b, r + a + b, cs[3] / ps * 1e6))
print("\nwse-bench exit codes: " + ", ".join(
    "%s %s" % (name, open(os.path.join(out, name + ".rc")).read().strip())
    for n in tiers for name in ("multi-" + n, "single-" + n)
    if os.path.exists(os.path.join(out, name + ".rc"))))
print("Outputs (markdown, JSON, stderr, server logs): " + out)
sys.exit(3 if bad else 0)
EOF
