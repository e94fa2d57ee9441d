#!/usr/bin/env bash
# Build the c100k binary of another commit (default: HEAD~1) into target/baseline/<rev>/, for
# side-by-side measurements against it (measure-echo-cpu.sh and measure-idle-memory.sh take
# BASELINE_BIN). Prints the binary's path. Needs: git, cargo.
#   usage: scripts/build-baseline.sh [REV]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rev=$(git -C "$root" rev-parse --short "${1:-HEAD~1}")
dir=$root/target/baseline/$rev
if [ ! -x "$dir/c100k" ]; then
  src=$root/target/baseline/src-$rev
  rm -rf "$src"
  git -C "$root" worktree add --detach --force "$src" "$rev" >&2
  (cd "$src" && CARGO_TARGET_DIR=$root/target/baseline/build cargo build --release --quiet --bin c100k) >&2
  mkdir -p "$dir"
  cp "$root/target/baseline/build/release/c100k" "$dir/c100k"
  git -C "$root" worktree remove --force "$src" >&2
fi
echo "$dir/c100k"
