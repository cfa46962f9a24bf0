#!/usr/bin/env bash
# perf/ab_inbound.sh: WSE inbound throughput and format-comparison of two wsed binaries,
# interleaved (server on CPU 0, wse-bench on CPU 1): msg/s and server CPU per message.
# usage: ab_inbound.sh ROUNDS BIN_A BIN_B [tier]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$ROOT/build/perf-api.key" ] || head -c 24 /dev/urandom | base64 > "$ROOT/build/perf-api.key"
rounds=$1; A=$2; B=$3; tier=${4:-1000}
bench=$ROOT/build/tools/wse-bench
for r in $(seq 1 $rounds); do
  for bin in $A $B; do
    port=$((6000 + RANDOM % 2000))
    WSED_JWT_SECRET=bench-secret-key-for-testing-only taskset -c 0 $bin --port $port --workers 1 --quiet \
      --jwt-issuer wse-bench --jwt-audience wse-bench --inbound-rate 0 --max-connections 30000 >/dev/null 2>&1 &
    pid=$!
    sleep 0.4
    out=$(timeout 120 taskset -c 1 $bench --port $port --test throughput,format-comparison --tiers $tier --duration 3 --threads 1 --cpus 1 --server-pid $pid --json /tmp/ab.json 2>&1)
    kill $pid; wait $pid 2>/dev/null
    /usr/bin/python3 $ROOT/perf/ab_sum.py "$bin" /tmp/ab.json
  done
done
