#!/bin/sh
# tools/fault_soak.sh: the fault-injection storms of tests/integration/test_faults.py, seed after
# seed, for a while: one line per seed (what completed, the victims and how they ended, the
# faults injected by kind), then "N seeds, N failed". Exit 0 when every seed held.
#
#   tools/fault_soak.sh [--wsed BIN] [--minutes N] [--first-seed S] [--clients N] [--messages N]
#                       [--rates SPEC] [--sanitizers]
#
# Defaults: build-rel/engine/wsed, 5 minutes, seeds from 1000, 48 clients of 20 messages, the
# tests' rates. With --sanitizers the binary is an ASan/UBSan build and its stderr is checked.
# Only 127.0.0.1; each seed's server is stopped by PID.
set -eu
cd "$(dirname "$0")/.."
wsed=build-rel/engine/wsed
minutes=5
set --  "$@" --end-of-args
extra=""
while [ "$1" != --end-of-args ]; do
  case "$1" in
    --wsed) wsed=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --sanitizers) export WSED_SANITIZERS=1; shift ;;
    --first-seed|--clients|--messages|--rates) extra="$extra $1 $2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "fault_soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$wsed" ] || { echo "fault_soak.sh: no wsed binary at $wsed (build it first)" >&2; exit 2; }
wsed=$(realpath "$wsed")
seconds=$(awk "BEGIN { print $minutes * 60 }")
cd tests/integration
# shellcheck disable=SC2086
exec /usr/bin/python3 test_faults.py --wsed "$wsed" --seconds "$seconds" $extra
