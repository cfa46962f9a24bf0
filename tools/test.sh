#!/usr/bin/env bash
# tools/test.sh: the second README command. Installs dependencies, builds the release and the
# ASan+UBSan builds, installs the Node test clients, and runs every test suite
# (tests/run_all.py). The last line printed is "N passed, N failed" over every test.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh release
tools/build.sh asan
tools/build.sh tsan
# playwright-core (the browser test) drives Debian's /usr/bin/chromium: never download browsers.
(cd tests/node && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
exec /usr/bin/python3 tests/run_all.py --build build --asan-build build-asan --tsan-build build-tsan
