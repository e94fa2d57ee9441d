#!/usr/bin/env bash
# The whole test suite, as README.md gives it and CI (.ci/run) runs it:
#   1. cargo test for the workspace: sans-IO unit tests, and integration tests over real loopback
#      sockets (routes, close codes, the v1 room protocol, resume, presence, auth, the server API,
#      timers, backpressure, shutdown, 5,000 idle connections, bench-client scenarios), with a
#      Python `websockets` client among them (scripts/setup-python.sh installs it);
#   2. the Autobahn TestSuite fuzzingclient cases 1.* to 10.* against a release build;
#   3. the kernel-profile script's own tests against a fake /proc/sys tree (it must pass on any
#      machine, so it never compares this machine's kernel).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

C100K_PYTHON=$(./scripts/setup-python.sh)
export C100K_PYTHON
cargo test --workspace
./scripts/autobahn.sh
./scripts/test-apply-sysctl.sh
