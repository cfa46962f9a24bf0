#!/bin/bash
# perf/presence.sh [ROUNDS]: presence with N (10,000) members joining: the join rate and the memory
# per member, presence against plain subscribe, ROUNDS (3) rounds interleaved, a fresh wsed per case.
#
# wsed --workers 1 --presence on CPU 0 (taskset), perf/presence_load.py on CPU 1. The client opens
# N WSE connections (one JWT each, sub u00000..u09999: N distinct users; the one-user cases give
# every connection sub u00000), then sends every connection one subscription_update at once and
# times it until the last reply (and the last presence_join event) arrives. Cases per round:
#   plain-100x100-noflag   100 topics x 100 subscribers, no presence object, wsed without --presence
#   plain-100x100          the same on a wsed with --presence (the baseline of the memory figure)
#   presence-100x100-distinct   100 topics x 100 members, each its own user
#   presence-100x100-one-user   100 topics x 100 connections of one user
#   plain-1x10000          one topic, N subscribers, no presence object
#   presence-1x10000-distinct   one topic, N members: member k's join goes to k subscribers,
#                          N(N+1)/2 (50M) presence_join frames in all; bounded by ONE_TOPIC_TIMEOUT
#   presence-1x10000-one-user   one topic, N connections of one user (one event)
#   presence-1x10000-leave9000  as presence-1x10000-distinct, then 90% of the members close at
#                          once: how many presence_leave frames each staying member gets (should: 9,000)
# Memory per member = (RSS holding N presence members - RSS holding N plain subscribers) / N,
# both measured once everything is delivered, plus wsed_presence_bytes / N from /metrics.
#
# Env: N (10000), WSED (build/engine/wsed), CASES (space-separated subset of the above),
# ONE_TOPIC_TIMEOUT (300 s), OUT (a fresh directory under /tmp), ALLOW_NO_PRESENCE=1 (run on a
# binary without --presence: the presence object is then ignored; for testing this script only).
# Every wait is bounded; only 127.0.0.1; the script stops only the PIDs it started.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSED=${WSED:-$ROOT/build/engine/wsed}
PY=/usr/bin/python3
LOAD=$ROOT/perf/presence_load.py
N=${N:-10000}
ROUNDS=${1:-3}
SECRET=bench-secret-key-for-testing-only
ONE_TOPIC_TIMEOUT=${ONE_TOPIC_TIMEOUT:-300}
CASES=${CASES:-"plain-100x100-noflag plain-100x100 presence-100x100-distinct presence-100x100-one-user plain-1x10000 presence-1x10000-distinct presence-1x10000-one-user presence-1x10000-leave9000"}
OUT=${OUT:-$(mktemp -d /tmp/wsed-perf-presence.XXXXXX)}
mkdir -p "$OUT"
KEY=$OUT/api.key
[ -f "$KEY" ] || { head -c 24 /dev/urandom | base64 > "$KEY"; chmod 600 "$KEY"; }

[ -x "$WSED" ] || { echo "presence.sh: no $WSED (build it first)" >&2; exit 2; }
presence_flag=(--presence)
if ! "$WSED" --help 2>&1 | grep -q -- '--presence'; then
  if [ -n "${ALLOW_NO_PRESENCE:-}" ]; then
    echo "presence.sh: $WSED has no --presence: running without it (the presence object is ignored)" >&2
    presence_flag=()
  else
    echo "presence.sh: $WSED has no --presence flag" >&2; exit 2
  fi
fi
# One wsed shard holds N sockets and the client N more: each process needs RLIMIT_NOFILE > N.
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$hard" -gt $((N + 200)) ] || { echo "presence.sh: ulimit -Hn $hard < N + 200" >&2; exit 2; }
ulimit -n "$hard" 2>/dev/null || true

spid=""; cpid=""
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null
  if [ -n "$spid" ]; then
    kill "$spid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
  fi
  spid=""; cpid=""
}
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

start_server() {  # extra wsed args; sets spid, port
  local log=$OUT/wsed.log
  : > "$log"
  WSED_JWT_SECRET=$SECRET taskset -c 0 "$WSED" --host 127.0.0.1 --port 0 --workers 1 \
    --max-connections $((N + 1000)) --max-pending-handshakes 1024 --idle-timeout 0 --ping-interval 0 \
    --inbound-rate 0 --api-key-file "$KEY" "$@" >>"$log" 2>&1 &
  spid=$!
  port=""
  for _ in $(seq 100); do
    port=$(grep -o 'ws://127.0.0.1:[0-9]*' "$log" | head -1 | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$port" ] || { echo "presence.sh: wsed did not start: $(head -c 300 "$log")" >&2; exit 1; }
}

run_case() {  # round, case
  local round=$1 case=$2 shape topics wsed_args=() load_args=()
  case $case in
    *100x100*) topics=100 ;;
    *1x10000*) topics=1 ;;
  esac
  [ "$case" = plain-100x100-noflag ] || wsed_args=("${presence_flag[@]}")
  case $case in
    presence-*) load_args+=(--presence) ;;
  esac
  case $case in
    *one-user) load_args+=(--users one) ;;
    *leave9000) load_args+=(--close-first $((N * 9 / 10))) ;;
  esac
  local timeout=120
  case $case in presence-1x10000-distinct|presence-1x10000-leave*) timeout=$ONE_TOPIC_TIMEOUT ;; esac
  start_server "${wsed_args[@]}"
  echo "+ [$round] $case: taskset -c 0 wsed --workers 1 ${wsed_args[*]} ... / taskset -c 1 presence_load.py run --conns $N --topics $topics ${load_args[*]}" >&2
  timeout $((timeout + 300)) taskset -c 1 "$PY" "$LOAD" run --port "$port" --server-pid "$spid" --conns "$N" \
    --topics "$topics" --secret "$SECRET" --api-key-file "$KEY" --label "$case" --timeout "$timeout" \
    --json "$OUT/$case.$round.json" "${load_args[@]}" &
  cpid=$!
  wait "$cpid"; local rc=$?
  cpid=""
  [ $rc -eq 0 ] || echo "presence.sh: $case round $round: client exit $rc (errors in $OUT/$case.$round.json)" >&2
  kill -0 "$spid" 2>/dev/null || echo "presence.sh: $case round $round: wsed exited on its own: $(tail -c 300 "$OUT/wsed.log")" >&2
  cleanup
}

t0=$(date +%s)
for r in $(seq "$ROUNDS"); do
  for c in $CASES; do run_case "$r" "$c"; done
done
echo
echo "# perf/presence.sh $ROUNDS (N=$N), $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - t0 )) s;" \
  "revision $(git -C "$ROOT" rev-parse --short HEAD)$( [ -n "$(git -C "$ROOT" status --porcelain)" ] && echo ' (+ uncommitted changes)')"
echo "# binary $WSED: sha256 $(sha256sum "$WSED" | cut -c1-16), built $(date -u -r "$WSED" '+%Y-%m-%d %H:%M:%S UTC')"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, kernel $(uname -r), RLIMIT_NOFILE $(ulimit -n); results in $OUT"
echo
files=()
for c in $CASES; do for r in $(seq "$ROUNDS"); do [ -f "$OUT/$c.$r.json" ] && files+=("$OUT/$c.$r.json"); done; done
"$PY" "$LOAD" summary "${files[@]}"
