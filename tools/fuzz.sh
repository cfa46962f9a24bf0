#!/usr/bin/env bash
# tools/fuzz.sh [seconds per target] [target...]: builds the libFuzzer targets of tests/fuzz/
# (clang, ASan + UBSan) into build-fuzz/ and runs each for a bounded time from the seed corpus
# in tests/fuzz/corpus/<target>/ (new inputs go to a scratch directory, not into the repo).
# Prints one line per target and, last, "N passed, N failed". A crash leaves its input in
# build-fuzz/ (crash-*), to be added to the corpus once fixed.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ws http wse pubsub jwt command config)

CXX=${CXX_FUZZ:-clang++}
if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "fuzz: $CXX not found (tools/install-deps.sh installs clang)"
  echo "0 passed, 1 failed"
  exit 1
fi
mkdir -p build-fuzz
passed=0
failed=0
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz_$t
  sources=(proto/http.cpp proto/ws.cpp proto/utf8.cpp)
  libs=(-lcrypto)
  case "$t" in
    wse)
      sources+=(proto/wse_envelope.cpp proto/wse_builder.cpp proto/wse_formats.cpp)
      libs+=(-lsimdjson -ldeflate -DMSGPACK_NO_BOOST) ;;
    pubsub) sources+=(proto/wse_envelope.cpp proto/wse_publish.cpp auth/acl.cpp) libs+=(-lsimdjson) ;;
    jwt) sources+=(auth/jwt.cpp auth/acl.cpp) libs+=(-lsimdjson) ;;
    command) sources+=(proto/wse_command.cpp proto/wse_envelope.cpp) libs+=(-lsimdjson) ;;
    config)
      sources+=(engine/flags.cpp engine/log.cpp engine/fault.cpp engine/redis_names.cpp engine/tls.cpp
        auth/keys.cpp auth/jwt.cpp auth/acl.cpp)
      libs+=(-lsimdjson -lssl "-DWSED_VERSION=\"fuzz\"") ;;
  esac
  if ! "$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
      -I. "tests/fuzz/fuzz_$t.cpp" "${sources[@]}" "${libs[@]}" -o "$bin" \
      2>"build-fuzz/fuzz_$t.build.log"; then
    echo "fuzz_$t: build failed (build-fuzz/fuzz_$t.build.log)"
    failed=$((failed + 1))
    continue
  fi
  scratch=$(mktemp -d)
  if (cd build-fuzz && timeout $((seconds + 60)) "./fuzz_$t" -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$scratch" "../tests/fuzz/corpus/$t" \
      >"fuzz_$t.log" 2>&1); then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "build-fuzz/fuzz_$t.log" | grep -o '[0-9]*$')
    echo "fuzz_$t: ok, ${runs:-?} inputs in ${seconds}s"
    passed=$((passed + 1))
  else
    echo "fuzz_$t: FAILED (build-fuzz/fuzz_$t.log):"
    grep -E 'ERROR|SUMMARY|deadly|crash-' "build-fuzz/fuzz_$t.log" | head -5 | sed 's/^/  /'
    failed=$((failed + 1))
  fi
  rm -rf "$scratch"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
