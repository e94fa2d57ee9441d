#!/usr/bin/env bash
# Server memory per idle WebSocket: start c100k, read its RSS, open CONNS idle connections with
# bench-client, read the RSS again: (after - before) / CONNS. Also the kernel's Slab growth per
# connection (both ends of each loopback connection). Repeats RUNS times and reports the median.
#
# usage: scripts/measure-idle-memory.sh [CONNS (15000)] [RUNS (3)]
#   SERVER_ARGS  extra c100k flags (default none: the defaults, 30 s heartbeats)
#   BASELINE_BIN also measure this c100k binary (e.g. scripts/build-baseline.sh REV), each run
#                right after the current one, to compare commits side by side
#   SERVERS      servers to measure, alternating per run (default c100k, plus baseline with
#                BASELINE_BIN): c100k, baseline, node, uws (scripts/setup-peers.sh)
#   TRANSPORT    what each idle connection is (c100k): ws (default: a WebSocket on /echo),
#                ws-room (a seed-mode member of one room, /ws?room=idle), sse (an event stream of
#                that room, /sse?room=idle), poll (a long poll of it, /poll?room=idle), wss (a
#                WebSocket on /echo over TLS: the server runs with a throwaway ECDSA P-256
#                certificate, TLS_KEY=rsa for RSA 2048), h2 (a WebSocket on /echo in a stream of an
#                h2c connection: bench-client --h2, STREAMS_PER_CONN per connection, default 100;
#                the figure is per WebSocket, so it includes its share of the TCP connection)
#   SETTLE       seconds between the last connection open and the reading (default 2); past the
#                handshake timeout (10 s) the connections' handshake deadlines have expired too
#   OUT          report directory (default bench-results/<UTC>-idle-memory)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need python3 taskset ss

conns=${1:-15000}
runs=${2:-3}
settle=${SETTLE:-2}
out=${OUT:-$root/bench-results/$(utc_stamp)-idle-memory}
report_dir "$out" 'server\trun\trss_before_kb\trss_after_kb\tuser_bytes_per_conn\tslab_before_kb\tslab_after_kb\tkernel_slab_bytes_per_conn'
tsv=$TSV
servers=${SERVERS:-c100k}
[ -n "${BASELINE_BIN:-}" ] && [ -z "${SERVERS:-}" ] && servers="c100k baseline"
transport=${TRANSPORT:-ws}
case $transport in
  ws) client=(--url "ws://ADDR/echo") ;;
  ws-room) client=(--url "ws://ADDR/ws?room=idle") ;;
  sse) client=(--transport sse --url "http://ADDR/sse?room=idle") ;;
  poll) client=(--transport poll --url "http://ADDR/poll?room=idle") ;;
  wss)
    tls=$(mktemp -d) # throwaway keys stay out of the report
    test_cert "$tls" "${TLS_KEY:-ec}"
    client=(--url "wss://ADDR/echo" --ca "$tls/ca.pem")
    SERVER_ARGS="${SERVER_ARGS:-} --tls-cert $tls/cert.pem --tls-key $tls/key.pem"
    ;;
  h2) client=(--url "ws://ADDR/echo" --h2 --streams-per-conn "${STREAMS_PER_CONN:-100}") ;;
  *) die "TRANSPORT must be ws, ws-room, sse, poll, wss or h2" ;;
esac

for run in $(seq 1 "$runs"); do
  for server in $servers; do
    flags=()
    case $server in c100k | baseline) read -ra flags <<<"${SERVER_ARGS:-}" ;; esac
    start_server "$server" "$out/server-$server-$run.log" "${flags[@]}"
    spid=$SPID addr=$ADDR
    # Warm up: the first connections page in code and allocator structures that every later
    # connection shares; that fixed cost is not per connection.
    "$BENCH" connect "${client[@]//ADDR/$addr}" --conns 200 --hold 0 --procs 1 --quiet --out "$out/warmup-$server-$run" \
      >/dev/null 2>&1 || die "warm-up failed"
    for _ in $(seq 1 100); do [ "$(established "$addr")" -eq 0 ] && break; sleep 0.1; done
    sleep 1
    rss0=$(rss_kb "$spid"); slab0=$(slab_kb)
    spawn "$out/client-$server-$run.log" $(pin 1) "$BENCH" connect "${client[@]//ADDR/$addr}" --conns "$conns" \
      --hold $(( settle + 13 )) --connect-rate 20000 --procs auto --out "$out/bench-$server-$run" --quiet
    cpid=$SPAWNED
    if [ "$transport" = h2 ]; then
      # Few TCP connections carry them: wait for the server to count the WebSockets.
      for _ in $(seq 1 600); do [ "$(metric "$addr" c100k_websockets_open)" -ge "$conns" ] && break; sleep 0.1; done
      [ "$(metric "$addr" c100k_websockets_open)" -ge "$conns" ] || die "not all $conns WebSockets opened"
    else
      wait_established "$addr" "$conns" 60
    fi
    sleep "$settle" # let the ramp's transient allocations settle
    rss1=$(rss_kb "$spid"); slab1=$(slab_kb)
    per=$(( (rss1 - rss0) * 1024 / conns ))
    kper=$(( (slab1 - slab0) * 1024 / conns ))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$run" "$rss0" "$rss1" "$per" "$slab0" "$slab1" "$kper" >>"$tsv"
    log "$server run $run: RSS $rss0 -> $rss1 KiB = $per B/connection; kernel Slab +$kper B/connection"
    wait "$cpid" || die "bench-client failed (see $out/client-$server-$run.log)"
    kill -TERM "$spid"; wait "$spid" || true
  done
done

col() { awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $1 == s { print $c }' "$tsv" | median; }
user=$(col c100k 5)
kern=$(col c100k 8)
cat >"$out/README.md" <<EOF
# Idle memory per connection ($transport)

- Date: $(date -u +%Y-%m-%d), machine: $(machine_line)
- Command: \`TRANSPORT=$transport scripts/measure-idle-memory.sh $conns $runs\` (server: \`c100k --listen 127.0.0.1:0 ${SERVER_ARGS:-}\`
  pinned to core 0; client: \`bench-client connect ${client[*]} --conns $conns --connect-rate 20000\` pinned to core 1)
- Method: server RSS (VmRSS) after a warm-up of 200 connections opened and closed, then $settle s after
  all $conns were open; kernel
  \`Slab:\` from /proc/meminfo over the same interval (it counts both ends of each loopback connection).

| | median of $runs runs |
|---|---|
| server user-space RSS per idle connection | **$user bytes** |
| kernel Slab per connection (both ends) | $kern bytes |
$(for s in $servers; do [ "$s" = c100k ] || echo "| $s$([ "$s" = baseline ] && echo " (\`$BASELINE_BIN\`)"), user-space RSS per idle connection, measured alternately | $(col "$s" 5) bytes |"; done)

Per run: [runs.tsv](runs.tsv); bench-client reports in \`bench-*/\`.
EOF
cat "$out/README.md"
