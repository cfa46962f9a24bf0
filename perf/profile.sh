#!/usr/bin/env bash
# perf/profile.sh: CPU profile of wsed with `perf record -g`: top functions (self and children,
# kernel and user) and a flame graph (perf/flamegraph.py, SVG).
#
# Either profiles a running wsed (--pid PID; nothing is started, you drive the load), or starts
# build/engine/wsed --mode echo --workers 1 on a free port pinned to CPU 0 and drives --scenario
# with the load tool pinned to CPU 1 (build/tools/wse-bench).
# Hardware counters are used when the machine has them; otherwise (as on these VMs) the
# software clock: -e cpu-clock.
#
# Owns: the processes it starts (stopped by PID on exit) and --out DIR. Network: 127.0.0.1 only.
# Bounded: --seconds is capped at 120, every wait has a timeout.
#
# Usage: perf/profile.sh [--scenario pingpong|echo|blast|throughput] [--connections N]
#                        [--seconds N] [--pid PID] [--out DIR] [--freq HZ]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build}
scenario=pingpong
connections=100
seconds=5
pid=""
out=""
freq=999

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) scenario=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --pid) pid=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --freq) freq=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "profile.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "profile.sh: --seconds takes whole seconds" >&2; exit 2 ;; esac
if [ "$seconds" -gt 120 ]; then seconds=120; fi
if [ "$seconds" -lt 1 ]; then seconds=1; fi
out=${out:-$repo/perf/profiles/$(date -u +%Y%m%dT%H%M%SZ)-$scenario}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if ! command -v perf >/dev/null 2>&1; then
  echo "profile.sh: perf is missing: apt-get install linux-perf" >&2
  exit 1
fi

# Hardware cycles if the PMU is there, else the software cpu-clock.
event=(-e cycles)
if ! perf stat -e cycles -x, true 2>&1 >/dev/null | grep -q '^[0-9]'; then
  event=(-e cpu-clock)
fi

server_pid=""
load_pid=""
cleanup() {
  if [ -n "$load_pid" ] && kill -0 "$load_pid" 2>/dev/null; then kill "$load_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_cmd=()
if [ -z "$pid" ]; then
  wsed=$build/engine/wsed
  [ -x "$wsed" ] || { echo "profile.sh: $wsed is missing (ninja -C build)" >&2; exit 1; }
  taskset -c 0 "$wsed" --host 127.0.0.1 --port 0 --mode echo --workers 1 >"$out/wsed.log" 2>&1 &
  server_pid=$!
  port=""
  for _ in $(seq 1 100); do
    port=$(grep -oE 'ws://[^:/]+:[0-9]+' "$out/wsed.log" | head -1 | sed 's/.*://' || true)
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "profile.sh: wsed did not start: $(head -c 300 "$out/wsed.log")" >&2; exit 1; }
  pid=$server_pid
  # The load runs 2 s longer than the recording on each side: warm-up before, margin after.
  load_s=$((seconds + 4))
  [ -x "$build/tools/wse-bench" ] || { echo "profile.sh: $build/tools/wse-bench is missing (ninja -C build)" >&2; exit 1; }
  load_cmd=(taskset -c 1 "$build/tools/wse-bench" --protocol raw --path / --host 127.0.0.1
            --port "$port" --test "$scenario" --tiers "$connections" --duration "$load_s"
            --threads 1 --cpus 1)
  echo "+ ${load_cmd[*]}" >&2
  "${load_cmd[@]}" >"$out/load.log" 2>&1 &
  load_pid=$!
  sleep 2
else
  kill -0 "$pid" 2>/dev/null || { echo "profile.sh: no process $pid" >&2; exit 1; }
fi

record=(perf record "${event[@]}" -F "$freq" -g -p "$pid" -o "$out/perf.data" -- sleep "$seconds")
echo "+ ${record[*]}" >&2
timeout $((seconds + 30)) "${record[@]}" 2>"$out/record.log" || {
  echo "profile.sh: perf record failed: $(tail -3 "$out/record.log")" >&2; exit 1; }

if [ -n "$load_pid" ]; then
  # Bounded: the load tool ends by itself 2 s after the recording.
  for _ in $(seq 1 300); do kill -0 "$load_pid" 2>/dev/null || break; sleep 0.1; done
  wait "$load_pid" 2>/dev/null || true
  load_pid=""
fi

report() {
  # -g none: flat lists (the call chains are in the flame graph); the first 25 lines.
  { timeout 120 perf report -i "$out/perf.data" --stdio -g none --percent-limit 0.3 "$@" 2>/dev/null || true; } \
    | { grep -E '^ +[0-9]' || true; } | head -25
}
{
  echo "# wsed profile: scenario $scenario, $connections connections, ${seconds} s, event ${event[*]:1}, pid $pid"
  echo "# command: ${record[*]}"
  if [ ${#load_cmd[@]} -gt 0 ]; then echo "# load: ${load_cmd[*]}"; fi
  echo
  echo "## Self (where the samples land), kernel and user"
  report --no-children --sort sym
  echo
  echo "## Children (a function's samples including its callees)"
  report --children --sort sym
  echo
  echo "## Self by binary (kernel vs wsed vs libraries)"
  report --no-children --sort dso
} >"$out/top.txt"
cat "$out/top.txt"

timeout 300 perf script -i "$out/perf.data" 2>/dev/null >"$out/perf.script"
/usr/bin/python3 "$repo/perf/flamegraph.py" --title "wsed: $scenario, $connections connections (${event[*]:1}, ${seconds} s)" \
  --folded-out "$out/stacks.folded" "$out/perf.script" >"$out/flame.svg"
rm -f "$out/perf.script"
echo
echo "profile.sh: $out/flame.svg, $out/top.txt, $out/stacks.folded, $out/perf.data"
