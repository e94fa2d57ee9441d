#!/usr/bin/env bash
# Autobahn TestSuite fuzzingclient (server conformance) against c100k's /echo: every case, 1.* to
# 10.* and the permessage-deflate cases 12.* and 13.* (AUTOBAHN_CASES narrows it; ./scripts/test.sh
# runs a fast subset of 12/13).
#
# The server runs with --deflate-min-size 0, so every echo on a deflate connection is compressed:
# kosoku reports ERROR when a deflate session answers with an uncompressed message, which RFC 7692
# allows (c100k sends messages under --deflate-min-size plain; tests/python_client.rs checks that
# against Python's websockets). 13.3.* and 13.5.* come out UNIMPLEMENTED: their offers ask for
# server_max_window_bits=8 or 9, which c100k declines (it compresses with one 15-bit window per
# event loop, so it can compress a room message once for everyone).
#
# Creates a Python venv with kosoku==0.1.0 (Autobahn's case files and verdicts on Python 3),
# builds and starts c100k on a free loopback port with settings the suite needs (16 MiB+
# messages, heartbeats off so no ping lands inside a case), runs the cases, prints the verdict
# counts and exits non-zero if any case FAILED.
#
# environment: AUTOBAHN_VENV (default target/autobahn-venv), AUTOBAHN_OUT (default
# target/autobahn), AUTOBAHN_CASES (default '*'), C100K_BIN (skip the build, use this binary).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${AUTOBAHN_VENV:-$root/target/autobahn-venv}
out=${AUTOBAHN_OUT:-$root/target/autobahn}
cases=${AUTOBAHN_CASES:-*}

if ! "$venv/bin/python" -c 'import kosoku' >/dev/null 2>&1; then
  echo "autobahn: creating $venv with kosoku==0.1.0"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kosoku==0.1.0'
fi

bin=${C100K_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --quiet --bin c100k)
  bin=$root/target/release/c100k
fi

mkdir -p "$out"
log=$out/server.log
"$bin" --listen 127.0.0.1:0 --threads 2 --ping-interval 0 \
  --max-message-size $((64 << 20)) --max-backlog $((256 << 20)) --deflate-min-size 0 ${AUTOBAHN_SERVER_ARGS:-} >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT

addr=
for _ in $(seq 1 200); do
  addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "autobahn: c100k exited:"; cat "$log"; exit 2; }
  sleep 0.05
done
[ -n "$addr" ] || { echo "autobahn: c100k did not start:"; cat "$log"; exit 2; }

"$venv/bin/python" "$root/scripts/autobahn.py" "ws://$addr/echo" --out "$out" \
  --cases "$cases" --exclude "${AUTOBAHN_EXCLUDE:-}"
