#!/usr/bin/env bash
# tools/install-deps.sh: installs everything wsed needs to build, test and benchmark, from
# Debian 12 packages (and npm for the test clients, done by tools/test.sh). Idempotent: packages
# already installed are skipped; uses sudo only when not root.
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build clang-format clang libclang-rt-14-dev linux-perf valgrind
  liburing-dev libwslay-dev libdeflate-dev libhiredis-dev libssl-dev libsimdjson-dev
  libmsgpack-dev libcli11-dev doctest-dev libbenchmark-dev
  python3 python3-dev python3-websockets python3-jwt python3-pybind11 pybind11-dev python3-pytest python3-msgpack python3-cryptography
  redis-server
  chromium
  golang-go golang-github-gorilla-websocket-dev
  procps util-linux openssl
  prometheus debhelper libsystemd-dev
  dpkg-dev systemd adduser man-db
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm (for the `ws` test clients): keep an existing installation.
if ! command -v node >/dev/null 2>&1; then missing+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
