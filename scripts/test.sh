#!/usr/bin/env bash
# The whole test suite, as README.md gives it and CI (.ci/run) runs it:
#   1. cargo test for the workspace: sans-IO unit tests, and integration tests over real loopback
#      sockets (routes, close codes, the v1 room protocol, resume, presence, auth, the server API,
#      timers, backpressure, shutdown, 5,000 idle connections, bench-client scenarios), with a
#      Python `websockets` client among them (scripts/setup-python.sh installs it);
#      plus the cluster tests (tests/cluster.rs) on real redis-server processes and a 3-master
#      Redis Cluster the tests start themselves;
#   2. the room suites again with rooms in Redis (C100K_TEST_BROKER=redis): the Redis broker
#      keeps the in-memory broker's semantics;
#   3. the client library's unit tests (node --test client/test/), then the demo page in
#      Debian's headless Chromium and the client in Node against real servers
#      (tests/browser/run.mjs, puppeteer-core from npm; screenshots in target/browser/);
#   4. the Autobahn TestSuite fuzzingclient cases 1.* to 10.*, and a subset of the permessage-deflate
#      cases 12.* and 13.*, against a release build; then again over HTTP/2 (RFC 8441) through a
#      test adapter;
#   5. a smoke pass of every fuzz target (scripts/fuzz.sh, 3 s each, cargo-fuzz); the committed
#      corpora themselves replay in step 1 (tests/fuzz_corpus.rs);
#   6. the kernel-profile script's own tests against a fake /proc/sys tree (it must pass on any
#      machine, so it never compares this machine's kernel).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

C100K_PYTHON=$(./scripts/setup-python.sh)
export C100K_PYTHON
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing (Debian: apt-get install redis-server)" >&2; exit 1; }
done
for tool in node npm chromium; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing (Debian: apt-get install nodejs npm chromium)" >&2; exit 1; }
done
command -v cargo-fuzz >/dev/null || { echo "test.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }
cargo test --workspace
C100K_TEST_BROKER=redis cargo test --test v1 --test presence --test api --test rooms --test python_client \
  --test auth --test backpressure --test attacks --test sse_poll
node --test client/test/
[ -d tests/browser/node_modules/puppeteer-core ] || (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --quiet
C100K_BIN=target/debug/c100k SHOTS=target/browser node --experimental-websocket --no-warnings tests/browser/run.mjs
# Autobahn: 1.* to 10.* whole, and of the deflate groups the 18 message sizes of 12.1 and 13.1 and the
# first case of each other parameter group (./scripts/autobahn.sh alone runs all 517 cases, ~5 min).
AUTOBAHN_CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.1.*,13.1.*,13.2.1,13.3.1,13.4.1,13.5.1,13.6.1,13.7.1' \
  ./scripts/autobahn.sh
# The same cases over HTTP/2 (RFC 8441): each of the suite's WebSockets carried in a stream of one
# shared h2c connection by the test adapter tests/clients/h2_tunnel.mjs.
AUTOBAHN_VIA_H2=1 AUTOBAHN_OUT=target/autobahn-h2 \
  AUTOBAHN_CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.1.*,13.1.*,13.2.1,13.3.1,13.4.1,13.5.1,13.6.1,13.7.1' ./scripts/autobahn.sh
SMOKE=1 ./scripts/fuzz.sh 3
./scripts/test-apply-sysctl.sh
