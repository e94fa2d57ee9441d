#!/usr/bin/env bash
# The whole test suite, as README.md gives it and CI (.ci/run) runs it:
#   1. cargo test for the workspace: sans-IO unit tests, and integration tests over real loopback
#      sockets (routes, close codes, rooms across loops, timers, backpressure, shutdown, 5,000
#      idle connections, bench-client scenarios);
#   2. the Autobahn TestSuite fuzzingclient cases 1.* to 10.* against a release build;
#   3. the kernel-profile checker (scripts/apply-sysctl.sh --check: reports, changes nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test --workspace
./scripts/autobahn.sh
./scripts/apply-sysctl.sh --check
