#!/usr/bin/env bash
# Fuzz every parser that reads peer bytes (fuzz/fuzz_targets/, bodies in src/fuzzing.rs and
# bench-client's fuzz_response) with cargo fuzz (libFuzzer), SECONDS each, growing the committed
# corpora in fuzz/corpus/<target>/. Prints executions, corpus size and coverage (libFuzzer's
# `cov:` edge count) per target, and writes them to fuzz/last-run.tsv. A crash stops the script
# with the input in fuzz/artifacts/<target>/ (so does an input that runs over 10 s: a hang): add it to the target's corpus (it then replays in
# `cargo test`, tests/fuzz_corpus.rs) and fix the bug.
#
# usage: scripts/fuzz.sh [SECONDS (60)] [TARGET…]
#   JOBS   libFuzzer workers per target (default 1)
#   SMOKE=1  new inputs go to a scratch directory, not into fuzz/corpus (what ./scripts/test.sh
#            runs: a few seconds per target, so the harness cannot rot)
# Needs: cargo-fuzz (`cargo install cargo-fuzz`; it is run on this stable toolchain with
# RUSTC_BOOTSTRAP=1 and --sanitizer none: Rust's own checks stand in for ASan, and no unsafe code
# is reachable from these parsers).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-60}
shift || true
cd "$root/fuzz"
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none >&2
stats=last-run.tsv
if [ "${SMOKE:-0}" = 1 ]; then stats=$(mktemp); fi
printf 'target\tseconds\texecutions\texec_per_sec\tcoverage_edges\tcorpus_files\n' >"$stats"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  # libFuzzer adds new inputs to the first directory given.
  dirs=("corpus/$t")
  if [ "${SMOKE:-0}" = 1 ]; then dirs=("$(mktemp -d)" "corpus/$t"); fi
  # -print_final_stats gives the execution count; cov: from the last status line is coverage.
  par=()
  if [ "${JOBS:-1}" -gt 1 ]; then par=(-fork="$JOBS"); fi
  if ! cargo fuzz run --sanitizer none "$t" "${dirs[@]}" -- -max_total_time="$secs" -print_final_stats=1 \
    -max_len=8192 -timeout=10 "${par[@]}" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz.sh: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units:/ { s += $2 } END { print s + 0 }' "$log")
  # With -fork (JOBS > 1) the parent reports totals on its status lines: "#N: cov: …".
  if [ "$execs" -eq 0 ]; then execs=$(grep -oE '^#[0-9]+' "$log" | tail -n1 | tr -d '#'); fi
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | awk '{ print $2 }')
  files=$(find "corpus/$t" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "$execs" "$((execs / (secs > 0 ? secs : 1)))" "${cov:-0}" "$files" \
    | tee -a "$stats"
  rm -f "$log"
  if [ "${SMOKE:-0}" = 1 ]; then rm -rf "${dirs[0]}"; fi
done
