#!/usr/bin/env bash
# Install the seed's Node `ws` chat server (an independent RFC 6455 server to drive bench-client
# against) into target/node-ws: server.js from ../shared/peers/node-ws (or $NODE_PEER_SRC),
# ws from the npm registry. Run it with: PORT=9001 node target/node-ws/server.js
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${NODE_PEER_SRC:-$root/../shared/peers/node-ws}
dst=$root/target/node-ws
[ -f "$src/server.js" ] || { echo "no Node peer at $src (set NODE_PEER_SRC)" >&2; exit 1; }
mkdir -p "$dst"
cp "$src"/server.js "$src"/package.json "$dst"/
[ -f "$src/package-lock.json" ] && cp "$src/package-lock.json" "$dst"/
(cd "$dst" && npm install --silent --no-audit --no-fund)
echo "Node ws peer ready: PORT=9001 node $dst/server.js"
