#!/bin/bash
# perf/fan.sh LABEL TEST TIERS [wsed args]: wsed --workers 2 + wse-bench fanout-broadcast|broadcast-all
# with the API publisher (BENCH_ARGS: more wse-bench flags, e.g. --publish-rate 1000).
# usage: fan.sh LABEL TEST TIERS [extra wsed args...]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$ROOT/build/perf-api.key" ] || head -c 24 /dev/urandom | base64 > "$ROOT/build/perf-api.key"
label=$1; test=$2; tiers=$3; shift 3
port=$((8000 + RANDOM % 1000))
WSED_JWT_SECRET=bench-secret-key-for-testing-only taskset -c 0,1 $ROOT/build/engine/wsed --port $port --workers 2 --quiet \
  --jwt-issuer wse-bench --jwt-audience wse-bench --api-key-file $ROOT/build/perf-api.key --idle-timeout 0 --inbound-rate 0 "$@" >/dev/null 2>&1 &
pid=$!
sleep 0.5
timeout 200 $ROOT/build/tools/wse-bench --port $port --test $test --tiers $tiers --duration 3 --threads 2 \
  --api-key-file $ROOT/build/perf-api.key --server-pid $pid ${BENCH_ARGS:-} > /tmp/fan-$label.out 2>&1
kill $pid; wait $pid 2>/dev/null
echo "== $label ($test $tiers $*)"
grep -E "^\| [0-9]" /tmp/fan-$label.out
grep -E "server CPU|us/msg|µs" /tmp/fan-$label.out | head -4
