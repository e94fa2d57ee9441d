#!/usr/bin/env bash
# Server CPU per echoed message: CONNS connections, 32-byte text, one message in flight per
# connection (closed loop) or a fixed total RATE, server pinned to core 0 and bench-client to
# core 1. Server CPU is the sum of its threads' run time (schedstat, ns) over the whole client
# run, divided by the messages echoed. Repeats RUNS times per server and reports medians.
#
# usage: scripts/measure-echo-cpu.sh [CONNS (1000)] [RUNS (5)] [SECONDS (10)]
#   SERVERS  which servers, space separated (default "c100k"; "baseline" for the c100k binary at
#            $BASELINE_BIN, e.g. from scripts/build-baseline.sh REV, to compare commits side by
#            side; "node" and "uws" for the peers in bench/peers, set up with scripts/setup-peers.sh)
#   RATE     messages/s in total, open loop (default: closed loop, one in flight per connection)
#   BROADCAST=1  instead of echo: one room of CONNS members, 10 senders at RATE (default 100)
#            messages/s in total; reports server CPU per delivery and delivery latency
#   PROTOCOL=v1  with BROADCAST=1: members speak c100k.v1 (default raw, the seed mode)
#            With BROADCAST=1 the SERVERS list may also name c100k-sse and c100k-poll: this build,
#            its members receiving over SSE or long polling (v1 JSON; the senders stay v1
#            WebSockets), to set the transports' cost per delivery beside WebSocket's in one run.
#            c100k-deflate (echo or broadcast): this build, the clients offering
#            permessage-deflate (bench-client --deflate).
#            c100k-tls (echo or broadcast): this build serving TLS (a throwaway ECDSA P-256
#            certificate; TLS_KEY=rsa for RSA 2048), the clients on wss:// (bytes per message
#            are not scraped for it). baseline-tls: the same with the baseline binary.
#            c100k-h2 (echo or broadcast): this build, the clients' WebSockets carried in HTTP/2
#            streams (bench-client --h2, STREAMS_PER_CONN to a connection, default 100; h2c).
#   SIZE     message size in bytes (default 32 for echo, 64 for a broadcast)
#   PAYLOAD=words  pad messages with text instead of one repeated byte (use it with deflate:
#            it compresses about like real messages)
#   OUT      report directory (default bench-results/<UTC>-echo-cpu; results/ holds the reports
#            committed on purpose)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need python3 taskset ss

conns=${1:-1000}
runs=${2:-5}
secs=${3:-10}
servers=${SERVERS:-c100k}
rate=${RATE:-}
broadcast=${BROADCAST:-0}
protocol=${PROTOCOL:-raw}
load=(--window 1)
[ -n "$rate" ] && load=(--rate "$rate")
what=echo
if [ "$broadcast" = 1 ]; then what=broadcast; rate=${rate:-100}; fi
[ "$protocol" = v1 ] && what=$what-v1
out=${OUT:-$root/bench-results/$(utc_stamp)-$what-cpu${rate:+-$rate}}
build_release
mkdir -p "$out"
tsv=$out/runs.tsv
printf 'server\trun\tmessages\tmsgs_per_sec\tserver_cpu_s\tcpu_us_per_msg\tserver_core_pct\trtt_p50_us\trtt_p99_us\tbytes_sent_per_msg\n' >"$tsv"

# Runs alternate between the servers (run 1 of each, then run 2 of each, …), so drift over the
# session spreads evenly instead of landing on one of them.
for run in $(seq 1 "$runs"); do
  for server in $servers; do
    member_transport=ws
    extra=()
    sflags=()
    scheme=ws
    case $server in
      c100k-sse | c100k-poll) member_transport=${server#c100k-} ;;
      c100k-deflate) extra=(--deflate) ;;
      c100k-h2) extra=(--h2 --streams-per-conn "${STREAMS_PER_CONN:-100}") ;;
      c100k-tls | baseline-tls)
        # Throwaway keys, out of the report directory.
        [ -n "${tls:-}" ] || { tls=$(mktemp -d); test_cert "$tls" "${TLS_KEY:-ec}"; }
        sflags=(--tls-cert "$tls/cert.pem" --tls-key "$tls/key.pem")
        extra=(--ca "$tls/ca.pem")
        scheme=wss
        ;;
    esac
    [ -n "${PAYLOAD:-}" ] && extra+=(--payload "$PAYLOAD")
    start_server "${server%%-*}" "$out/$server-$run.log" --threads 1 "${sflags[@]}"
    cpu0=$(cpu_ns "$SPID")
    wall0=$(date +%s%N)
    sent0=$(metric "$ADDR" c100k_bytes_sent_total 2>/dev/null || echo 0)
    if [ "$broadcast" = 1 ]; then
      room_path=/ws; case $server in node | uws) room_path=/chat ;; esac
      cmd=(broadcast --url "$scheme://$ADDR$room_path?room={room}" --members "$conns" --rooms 1 --senders 10 --rate "$rate" --size "${SIZE:-64}")
      [ "$protocol" = v1 ] && cmd+=(--protocol v1)
      [ "$member_transport" != ws ] && cmd+=(--transport "$member_transport")
    else
      cmd=(echo --url "$scheme://$ADDR/echo" --conns "$conns" --size "${SIZE:-32}" "${load[@]}")
    fi
    $(pin 1) "$BENCH" "${cmd[@]}" "${extra[@]}" --duration "$secs" --procs 1 --threads 1 --quiet --out "$out/bench-$server-$run" \
      >"$out/client-$server-$run.log" 2>&1 || die "bench-client failed: $(tail -5 "$out/client-$server-$run.log")"
    cpu1=$(cpu_ns "$SPID")
    wall1=$(date +%s%N)
    sent1=$(metric "$ADDR" c100k_bytes_sent_total 2>/dev/null || echo 0)
    kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true
    python3 - "$out/bench-$server-$run/summary.json" "$server" "$run" "$cpu0" "$cpu1" "$wall0" "$wall1" "$sent0" "$sent1" >>"$tsv" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); server, run = sys.argv[2], sys.argv[3]
sent = (int(sys.argv[9] or 0) - int(sys.argv[8] or 0))
cpu = (int(sys.argv[5]) - int(sys.argv[4])) / 1e9
wall = (int(sys.argv[7]) - int(sys.argv[6])) / 1e9
m = s["messages"]["received"]; d = s["duration_seconds"]
h = s["histograms"].get("rtt") or s["histograms"]["delivery"]
print(f"{server}\t{run}\t{m}\t{m/d:.0f}\t{cpu:.3f}\t{cpu*1e6/m:.3f}\t{100*cpu/wall:.0f}\t{h['p50']}\t{h['p99']}\t{sent/m:.1f}")
PY
    log "$(tail -n1 "$tsv")"
  done
done

{
  if [ "$broadcast" = 1 ]; then echo "# Server CPU per broadcast delivery"; else echo "# Server CPU per echoed message"; fi
  echo
  echo "- Date: $(date -u +%Y-%m-%d), machine: $(machine_line)"
  [ -n "${SIZE:-}${PAYLOAD:-}" ] && echo "- Messages: ${SIZE:+$SIZE bytes}${PAYLOAD:+, padded with $PAYLOAD (bench-client --payload $PAYLOAD)}"
  echo "- Command: \`SERVERS=\"$servers\"${rate:+ RATE=$rate}$([ "$broadcast" = 1 ] && echo " BROADCAST=1")$([ "$protocol" = v1 ] && echo " PROTOCOL=v1") scripts/measure-echo-cpu.sh $conns $runs $secs\`"
  [ -n "${BASELINE_BIN:-}" ] && echo "- baseline: \`$BASELINE_BIN\`"
  if [ "$broadcast" = 1 ]; then
    echo "- Load: \`bench-client broadcast --members $conns --rooms 1 --senders 10 --rate $rate --size 64 --duration $secs --procs 1 --threads 1$([ "$protocol" = v1 ] && echo " --protocol v1")\`"
    echo "  (\"messages\" below are deliveries: each message reaches the $((conns - 1)) other members)"
    case " $servers " in *" c100k-sse "* | *" c100k-poll "*)
      echo "  (c100k-sse, c100k-poll: the same load, the members receiving with \`--transport sse\` or \`--transport poll\`;"
      echo "  the 10 senders publish over v1 WebSockets in every row)" ;;
    esac
  else
    echo "- Load: \`bench-client echo --conns $conns --size 32 ${load[*]} --duration $secs --procs 1 --threads 1\`"
  fi
  echo "  pinned to core 1; server pinned to core 0 (c100k with \`--threads 1\`). Server CPU = its"
  echo "  threads' run time over the whole client run (ramp and teardown included) ÷ messages echoed (deliveries for a broadcast)."
  echo
  echo "| server | CPU per message (µs) | messages/s | server core used (over the client's wall time) | latency p50 / p99 (µs) | bytes sent per message (c100k's /metrics) |"
  echo "|---|---|---|---|---|---|"
  for server in $servers; do
    rows=$(awk -F'\t' -v s="$server" '$1 == s' "$tsv")
    printf '| %s | **%s** | %s | %s%% | %s / %s | %s |\n' "$server" \
      "$(cut -f6 <<<"$rows" | median)" "$(cut -f4 <<<"$rows" | median)" "$(cut -f7 <<<"$rows" | median)" \
      "$(cut -f8 <<<"$rows" | median)" "$(cut -f9 <<<"$rows" | median)" "$(cut -f10 <<<"$rows" | median)"
  done
  echo
  echo "Medians of $runs runs each; every run in [runs.tsv](runs.tsv), bench-client reports in \`bench-*/\`."
} >"$out/README.md"
cat "$out/README.md"
