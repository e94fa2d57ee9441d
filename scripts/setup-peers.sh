#!/usr/bin/env bash
# Install the servers c100k is measured against (bench/peers/*, this repository's own code) into
# target/peers/<name>, with their npm dependencies at the versions pinned in package-lock.json.
# Needs: node and npm (Node 20: apt-get install nodejs npm, or nodejs.org), network access to the
# npm registry. Idempotent.
#   usage: scripts/setup-peers.sh [NAME...]      (default: every peer: node-ws uws)
# Then: PORT=9001 node target/peers/node-ws/server.js
#       PORT=9002 node target/peers/uws/server.mjs
# measure-echo-cpu.sh and measure-idle-memory.sh start them as SERVERS="node uws".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v npm >/dev/null || { echo "setup-peers.sh: npm not found (install Node.js 20 with npm)" >&2; exit 1; }
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(node-ws uws)
for p in "${peers[@]}"; do
  src=$root/bench/peers/$p
  dst=$root/target/peers/$p
  [ -f "$src/package.json" ] || { echo "setup-peers.sh: no peer $p in bench/peers/" >&2; exit 1; }
  mkdir -p "$dst"
  cp "$src"/* "$dst"/
  (cd "$dst" && npm ci --silent --no-audit --no-fund)
  echo "peer $p ready in $dst"
done
