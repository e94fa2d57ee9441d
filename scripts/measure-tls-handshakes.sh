#!/usr/bin/env bash
# TLS handshakes: server CPU per full handshake and handshakes/s, for an ECDSA P-256 and an RSA
# 2048 certificate (throwaway ones from openssl), next to plain TCP + WebSocket upgrades. The
# server (one event loop) is pinned to core 0 and bench-client to core 1; each run opens CONNS
# connections to /echo (WebSocket upgrade included), as fast as --concurrency allows, and closes
# them. bench-client does no resumption, and --insecure still checks the handshake signature.
#
# usage: scripts/measure-tls-handshakes.sh [CONNS (5000)] [RUNS (3)]
#   OUT  report directory (default bench-results/<UTC>-tls-handshakes)
#   BASELINE_BIN  also measure this c100k binary with the ECDSA certificate (kind ec-baseline),
#        each run right after the current one (e.g. scripts/build-baseline.sh REV)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need python3 taskset openssl

conns=${1:-5000}
runs=${2:-3}
out=${OUT:-$root/bench-results/$(utc_stamp)-tls-handshakes}
build_release
mkdir -p "$out"
tsv=$out/runs.tsv
printf 'kind\trun\tconns\tserver_cpu_us_per_conn\tconns_per_sec\thandshake_p50_us\thandshake_p99_us\n' >"$tsv"
tls=$(mktemp -d) # throwaway keys stay out of the report
test_cert "$tls/ec" ec
test_cert "$tls/rsa" rsa

kinds="plain ec rsa"
[ -n "${BASELINE_BIN:-}" ] && kinds="$kinds ec-baseline"
for run in $(seq 1 "$runs"); do
  for kind in $kinds; do
    flags=(--threads 1)
    url=ws://ADDR/echo
    if [ "$kind" != plain ]; then
      flags+=(--tls-cert "$tls/${kind%-baseline}/cert.pem" --tls-key "$tls/${kind%-baseline}/key.pem")
      url=wss://ADDR/echo
    fi
    server=c100k; [ "$kind" = ec-baseline ] && server=baseline
    start_server "$server" "$out/server-$kind-$run.log" "${flags[@]}"
    cpu0=$(cpu_ns "$SPID")
    $(pin 1) "$BENCH" connect --url "${url//ADDR/$ADDR}" --insecure --conns "$conns" --hold 0 --procs 1 --threads 1 \
      --concurrency 64 --quiet --out "$out/bench-$kind-$run" >"$out/client-$kind-$run.log" 2>&1 \
      || die "bench-client failed: $(tail -5 "$out/client-$kind-$run.log")"
    cpu1=$(cpu_ns "$SPID")
    kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true
    python3 - "$out/bench-$kind-$run/summary.json" "$kind" "$run" "$cpu0" "$cpu1" >>"$tsv" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); kind, run = sys.argv[2], sys.argv[3]
c = s["connections"]; n = c["established"]
cpu = (int(sys.argv[5]) - int(sys.argv[4])) / 1e3
h = s["histograms"]["handshake"]
print(f"{kind}\t{run}\t{n}\t{cpu / n:.1f}\t{c['per_second']:.0f}\t{h['p50']}\t{h['p99']}")
PY
    log "$(tail -n1 "$tsv")"
  done
done

col() { awk -F'\t' -v k="$1" -v c="$2" 'NR > 1 && $1 == k { print $c }' "$tsv" | median; }
{
  echo "# TLS handshakes"
  echo
  echo "- Date: $(date -u +%Y-%m-%d), machine: $(machine_line)"
  echo "- Command: \`${BASELINE_BIN:+BASELINE_BIN=$BASELINE_BIN }scripts/measure-tls-handshakes.sh $conns $runs\`: c100k \`--threads 1\` pinned to core 0,"
  echo "  \`bench-client connect --url wss://…/echo --insecure --conns $conns --hold 0 --concurrency 64 --procs 1 --threads 1\`"
  echo "  pinned to core 1 (full handshakes, TLS 1.3, no resumption; the WebSocket upgrade is included)."
  echo "- Server CPU per connection = the server's run time over the run ÷ connections (accept, TLS"
  echo "  handshake, upgrade, close). The rate is bounded by the slower side: the client verifies"
  echo "  each handshake's signature on the other core."
  echo
  echo "| certificate | server CPU per connection (µs) | ⇒ handshakes/s per server core | connections/s measured | handshake p50 / p99 (µs) |"
  echo "|---|---|---|---|---|"
  for kind in $kinds; do
    name=$kind; [ "$kind" = ec ] && name="ECDSA P-256"; [ "$kind" = rsa ] && name="RSA 2048"; [ "$kind" = plain ] && name="none (ws://)"
    [ "$kind" = ec-baseline ] && name="ECDSA P-256, baseline binary"
    cpu=$(col "$kind" 4)
    printf '| %s | **%s** | %s | %s | %s / %s |\n' "$name" "$cpu" "$(python3 -c "print(round(1e6/$cpu))")" "$(col "$kind" 5)" "$(col "$kind" 6)" "$(col "$kind" 7)"
  done
  echo
  echo "Medians of $runs runs; every run in [runs.tsv](runs.tsv)."
} >"$out/README.md"
cat "$out/README.md"
