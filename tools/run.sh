#!/usr/bin/env bash
# tools/run.sh [wsed flags...]: the first README command. Installs dependencies, builds the
# release binary and starts wsed with defaults on 127.0.0.1:5006 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh release
exec build/engine/wsed "$@"
