#!/usr/bin/env bash
# tools/run.sh [wsed flags...]: the first README command. Installs dependencies, builds the
# release binary and starts wsed (WSE mode, 127.0.0.1:5006; Ctrl-C stops it).
#
# WSE mode needs a JWT key. Unless you bring one (WSED_JWT_SECRET, or a --jwt-* key flag), this
# script makes a development secret once (.wsed-dev-secret, mode 600, git-ignored), signs a
# token for user "dev" with it and prints how to connect with that token.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh release

wsed=build/engine/wsed
brings_key=0
for arg in "$@"; do
  case "$arg" in
    --jwt-secret-file* | --jwt-public-key-file* | --insecure-no-auth | --mode=echo | echo) brings_key=1 ;;
  esac
done
if [[ -z "${WSED_JWT_SECRET:-}" && $brings_key == 0 ]]; then
  if [[ ! -s .wsed-dev-secret ]]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .wsed-dev-secret)
    echo "run.sh: made a development JWT secret in .wsed-dev-secret (not for production)"
  fi
  WSED_JWT_SECRET="$(cat .wsed-dev-secret)"
  export WSED_JWT_SECRET
  token="$("$wsed" gen-token --sub dev --ttl 24h)"
  port=5006
  prev=""
  for arg in "$@"; do
    [[ "$prev" == "--port" ]] && port="$arg"
    [[ "$arg" == --port=* ]] && port="${arg#--port=}"
    prev="$arg"
  done
  cat <<MSG
run.sh: a token for user "dev", valid 24 h:

  $token

  Browser: open http://127.0.0.1:$port/ , paste the token, Connect.
  Terminal: /usr/bin/python3 tools/wse_client.py --url ws://127.0.0.1:$port/wse --ping --token $token
  More tokens: WSED_JWT_SECRET=\$(cat .wsed-dev-secret) $wsed gen-token --sub NAME

MSG
fi
exec "$wsed" "$@"
