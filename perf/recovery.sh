#!/bin/bash
# perf/recovery.sh [ROUNDS]: --recovery off against on, interleaved, at TIERS (1000) subscribers:
# wsed --workers 2 + wse-bench fanout-broadcast with the API publisher (as perf/fan.sh). With
# REDIS=1 each wsed also runs with --redis-url against a redis-server this script starts on a
# free port, and the Redis CPU per publication is printed (plain PUBLISH vs the sequence script).
# WSED: the binary (default build/engine/wsed). Every run is bounded (wse-bench: 120 s).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSED=${WSED:-$ROOT/build/engine/wsed}
BENCH=${BENCH:-$ROOT/build/tools/wse-bench}
KEY=$ROOT/build/perf-api.key
[ -f "$KEY" ] || head -c 24 /dev/urandom | base64 > "$KEY"
rounds=${1:-3}
redis_args=()
if [ -n "${REDIS:-}" ]; then
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile /tmp/wsed-perf-redis.pid --logfile /tmp/wsed-perf-redis.log
  sleep 0.3
  rpid=$(cat /tmp/wsed-perf-redis.pid)
  redis_args=(--redis-url "redis://127.0.0.1:$rport")
fi
cpu_ticks() { [ -n "${rpid:-}" ] && awk '{print $14+$15}' /proc/$rpid/stat || echo 0; }
run() {  # label, extra wsed args
  local label=$1; shift
  local port=$((8000 + RANDOM % 1000))
  WSED_JWT_SECRET=bench-secret-key-for-testing-only taskset -c 0,1 "$WSED" --port $port --workers 2 \
    --quiet --jwt-issuer wse-bench --jwt-audience wse-bench --api-key-file "$KEY" --idle-timeout 0 \
    --inbound-rate 0 "${redis_args[@]}" "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep 0.5
  local c0; c0=$(cpu_ticks)
  timeout 120 "$BENCH" --port $port --test fanout-broadcast --tiers "${TIERS:-1000}" --duration 3 \
    --threads 2 --api-key-file "$KEY" --server-pid $pid > /tmp/wsed-recovery-$label.out 2>&1
  local c1; c1=$(cpu_ticks)
  kill $pid; wait $pid 2>/dev/null
  echo "== $label ($*)"
  grep -E "^\| [0-9]" /tmp/wsed-recovery-$label.out
  grep -E "server CPU" /tmp/wsed-recovery-$label.out | head -1
  if [ -n "${rpid:-}" ]; then
    local pubs; pubs=$(grep -o '[0-9,]* publications taken' /tmp/wsed-recovery-$label.out | tr -d ',' | cut -d' ' -f1)
    python3 -c "print('  redis CPU: %.2f us/publication' % (($c1-$c0)*1e6/$(getconf CLK_TCK)/max(1,${pubs:-0})))"
  fi
}
for i in $(seq "$rounds"); do
  run off$i
  run on$i --recovery
done
[ -n "${rpid:-}" ] && kill "$rpid"
