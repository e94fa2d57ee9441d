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
# AUTOBAHN_VIA_H2=1 runs the cases over HTTP/2 (RFC 8441): the suite connects to a test adapter
# (tests/clients/h2_tunnel.mjs, Node) that carries each of its WebSockets in an extended-CONNECT
# stream of one shared h2c connection to c100k.
#
# environment: AUTOBAHN_VENV (default target/autobahn-venv), AUTOBAHN_OUT (default
# target/autobahn), AUTOBAHN_CASES (default '*'), C100K_BIN (skip the build, use this binary),
# AUTOBAHN_VIA_H2.
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
tunnel=
trap 'kill -TERM $pid $tunnel 2>/dev/null; wait $pid $tunnel 2>/dev/null || true' EXIT

# listening_addr NAME PID LOG: the address a process (c100k, the tunnel) says it listens on.
listening_addr() {
  local a
  for _ in $(seq 1 200); do
    a=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$3" | head -n1)
    [ -n "$a" ] && { echo "$a"; return; }
    kill -0 "$2" 2>/dev/null || { echo "autobahn: $1 exited:" >&2; cat "$3" >&2; exit 2; }
    sleep 0.05
  done
  echo "autobahn: $1 did not start:" >&2; cat "$3" >&2; exit 2
}
addr=$(listening_addr c100k "$pid" "$log")

if [ -n "${AUTOBAHN_VIA_H2:-}" ]; then
  node "$root/tests/clients/h2_tunnel.mjs" "http://$addr" >"$out/tunnel.log" 2>&1 &
  tunnel=$!
  server=$addr
  addr=$(listening_addr "the HTTP/2 tunnel" "$tunnel" "$out/tunnel.log")
  echo "autobahn: over HTTP/2, through the tunnel at $addr to c100k at $server"
fi

"$venv/bin/python" "$root/scripts/autobahn.py" "ws://$addr/echo" --out "$out" \
  --cases "$cases" --exclude "${AUTOBAHN_EXCLUDE:-}"
