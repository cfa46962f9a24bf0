#!/usr/bin/env bash
# tools/build.sh [release|debug|asan|tsan]: configures (once) and builds one build directory:
# build (release), build-debug, build-asan (ASan+UBSan), build-tsan (ThreadSanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
case "$kind" in
  release) dir=build; opts=(--buildtype=release) ;;
  debug) dir=build-debug; opts=(--buildtype=debug) ;;
  asan) dir=build-asan; opts=(--buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false) ;;
  tsan) dir=build-tsan; opts=(--buildtype=debug -Db_sanitize=thread -Db_lundef=false) ;;
  *) echo "usage: tools/build.sh [release|debug|asan|tsan]" >&2; exit 2 ;;
esac
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" "${opts[@]}" >/dev/null
fi
ninja -C "$dir" >/dev/null
echo "built $dir"
