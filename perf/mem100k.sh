#!/bin/bash
# perf/mem100k.sh WSED [TIER]: RSS of wsed (W workers, default 6) holding TIER (100000) subscribers
# that receive RATE (default 10) publications/s.
# usage: mem100k.sh WSED_BIN [tier]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$ROOT/build/perf-api.key" ] || head -c 24 /dev/urandom | base64 > "$ROOT/build/perf-api.key"
bin=$1; tier=${2:-100000}
port=$((7000 + RANDOM % 1000))
WSED_JWT_SECRET=bench-secret-key-for-testing-only $bin --port $port --workers ${W:-6} --quiet --max-connections 120000 \
  --idle-timeout 0 --jwt-issuer wse-bench --jwt-audience wse-bench --api-key-file $ROOT/build/perf-api.key --inbound-rate 0 >/dev/null 2>&1 &
pid=$!
sleep 1
rss0=$(grep VmRSS /proc/$pid/status | awk '{print $2}')
timeout 300 $ROOT/build/tools/wse-bench --port $port --test fanout-broadcast --tiers $tier --publish-rate ${RATE:-10} --duration 10 \
  --threads 2 --api-key-file $ROOT/build/perf-api.key --server-pid $pid --ramp-timeout 120 --json /tmp/mem.json > /tmp/mem.out 2>&1
rss1=$(grep -E "VmHWM|VmRSS" /proc/$pid/status | awk '{print $2}' | tr '\n' ' ')
kill $pid; wait $pid 2>/dev/null
echo "$bin: RSS before ${rss0} KiB, after (HWM RSS): ${rss1} KiB"
grep -E "^\| [0-9]" /tmp/mem.out | head -3
