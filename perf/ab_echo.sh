#!/bin/bash
# perf/ab_echo.sh ROUNDS BIN_A BIN_B: echo-mode pingpong/echo/blast of two binaries, interleaved.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$ROOT/build/perf-api.key" ] || head -c 24 /dev/urandom | base64 > "$ROOT/build/perf-api.key"
rounds=$1; A=$2; B=$3
for r in $(seq 1 $rounds); do for bin in $A $B; do
  port=$((9000 + RANDOM % 500))
  taskset -c 0 $bin --mode echo --port $port --workers 1 --quiet >/dev/null 2>&1 & pid=$!; sleep 0.3
  timeout 60 taskset -c 1 $ROOT/build/tools/wse-bench --protocol raw --port $port --test pingpong,echo,blast --tiers 100,1000 --duration 2 --threads 1 --cpus 1 --server-pid $pid --json /tmp/abe.json >/dev/null 2>&1
  kill $pid; wait $pid 2>/dev/null
  /usr/bin/python3 - "$bin" <<'PY'
import json,sys
d=json.load(open("/tmp/abe.json")); out=[]
for name,t in d["tests"].items():
    for r in t["rows"]:
        s=r.get("server",{}); out.append("%s/%d %.2fM/s %.2fus" % (name, r["connections"], max(r["recv_msg_per_s"], r["sent_msg_per_s"] if name=="blast" else 0)/1e6, s.get("user_us_per_msg",0)+s.get("sys_us_per_msg",0)))
print(sys.argv[1], " | ".join(out))
PY
done; done
