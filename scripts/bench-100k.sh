#!/usr/bin/env bash
# The 100K run: 100,000 concurrent WebSocket connections on this host, held for 5 minutes with
# heartbeats, with an echo run and a room broadcast run on top, then torn down; one report.
#
#   1. builds release binaries; applies the kernel profile (root) or checks it;
#   2. starts c100k with enough worker processes for the per-process open-file limit, pinned to
#      core 0, heartbeats every PING seconds (every connection is pinged several times);
#   3. bench-client (pinned to core 1) ramps CONNS idle connections from 60 source addresses and
#      holds them HOLD seconds; meanwhile: server RSS per worker and per connection, kernel Slab
#      per connection, server CPU while idle with heartbeats, then a fixed-rate echo run and a
#      room broadcast run (rooms stay within one worker: --reuseport-steer source-ip);
#   4. stops everything it started and writes results/<UTC>-100k/README.md (+ bench reports).
# It stops by itself and fails with a clear message if a step fails.
#
# usage: scripts/bench-100k.sh            the full run: about 7 minutes (+ the build)
#        QUICK=1 scripts/bench-100k.sh    every phase at a small scale: about a minute
# Knobs (environment; QUICK=1 defaults in brackets):
#   CONNS          idle connections                          100000 [2000]
#   HOLD           seconds they are held                     300 [50]; at least IDLE_WINDOW + 2 × PHASE + 20
#   PING           server heartbeat interval, s              30 [5]
#   CONNECT_RATE   new connections per second                5000 [2000]
#   IDLE_WINDOW    seconds of idle-CPU measurement           60 [10]
#   PHASE          seconds of the echo and broadcast runs    30 [10]
#   ECHO_RATE      echo messages per second                  10000 [2000]
#   BROADCAST_RATE room messages per second                  300 [50]
#   OUT            report directory                          bench-results/<UTC>-100k
# Needs: cargo, python3, curl, taskset (util-linux), ss (iproute2); root to apply the kernel
# profile (otherwise it is only checked).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need curl taskset python3

conns=${CONNS:-$(q 100000 2000)}
ping=${PING:-$(q 30 5)}
connect_rate=${CONNECT_RATE:-$(q 5000 2000)}
echo_rate=${ECHO_RATE:-$(q 10000 2000)}
# The room budget (--max-room-rate auto: 100,000 deliveries/s per room) must cover it: QUICK's one
# worker puts all 1,200 members in one room, so 50/s there (60,000 deliveries/s).
bcast_rate=${BROADCAST_RATE:-$(q 300 50)}
window=${IDLE_WINDOW:-$(q 60 10)}
phase=${PHASE:-$(q 30 10)}
min_hold=$(( window + 2 * phase + 20 ))
hold=${HOLD:-$(q 300 "$min_hold")}
[ "$hold" -ge "$min_hold" ] || die "HOLD ($hold s) must cover IDLE_WINDOW + 2 × PHASE + 20 s = $min_hold s (or leave HOLD unset)"
out=${OUT:-$root/bench-results/$(utc_stamp)-100k}
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1

build_release

kernel_profile "$out"

# Workers: enough that each stays well inside the per-process open-file limit, including the
# echo and broadcast connections that come on top.
extra=3000
nofile=$(ulimit -Hn)
per_proc=$(( nofile - 1000 ))
procs=$(( (conns + extra + per_proc - 1) / per_proc ))
src=$(source_range "$procs")   # a multiple of procs: spread evenly over the workers
log "open-file limit $nofile per process: $procs server workers, sources $src"

spawn "$out/server.log" $(pin 0) "$C100K" --listen 127.0.0.1:0 --processes "$procs" --threads 1 \
  --ping-interval "$ping" --reuseport-steer source-ip
sup=$SPAWNED
addr=$(wait_listening "$out/server.log" "$sup")
if [ "$procs" = 1 ]; then workers=$sup; else workers=$(pgrep -P "$sup" | tr '\n' ' '); fi
[ "$(wc -w <<<"$workers")" = "$procs" ] || die "expected $procs workers, found: $workers"
log "c100k on $addr: supervisor $sup, workers $workers"

worker_index() { tr '\0' '\n' <"/proc/$1/environ" | sed -n 's/^C100K_WORKER_INDEX=//p'; }
worker_conns() { # worker index -> its open WebSockets
  if [ "$procs" = 1 ]; then metric "$addr" c100k_websockets_open; else metric "$addr" "c100k_worker_websockets_open{worker=\"$1\"}"; fi
}
declare -A rss0
for w in $workers; do rss0[$w]=$(rss_kb "$w"); done
slab0=$(slab_kb)
sleep 1

log "ramping $conns idle connections at $connect_rate/s, holding $hold s"
spawn "$out/idle.log" $(pin 1) "$BENCH" connect --url "ws://$addr/echo" --conns "$conns" --hold "$hold" \
  --src "$src" --procs auto --connect-rate "$connect_rate" --out "$out/idle"
idle=$SPAWNED
t_ramp=$(date +%s)
ramp_limit=$(( conns / connect_rate * 3 + 60 ))
while [ "$(metric "$addr" c100k_websockets_open)" -lt "$conns" ]; do
  kill -0 "$idle" 2>/dev/null || die "bench-client stopped during the ramp (see $out/idle.log)"
  [ $(( $(date +%s) - t_ramp )) -lt "$ramp_limit" ] || die "ramp did not reach $conns in ${ramp_limit}s (see $out/idle.log)"
  sleep 1
done
log "all $conns open after $(( $(date +%s) - t_ramp ))s"
sleep 5

# Memory: per worker and per connection.
{
  printf 'worker\tpid\tconnections\trss_before_kb\trss_after_kb\tbytes_per_connection\n'
  for w in $workers; do
    i=$(worker_index "$w"); i=${i:-0}
    n=$(worker_conns "$i")
    r1=$(rss_kb "$w")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$w" "$n" "${rss0[$w]}" "$r1" $(( (r1 - ${rss0[$w]}) * 1024 / (n > 0 ? n : 1) ))
  done
} >"$out/memory.tsv"
slab1=$(slab_kb)
kernel_per_conn=$(( (slab1 - slab0) * 1024 / conns ))

# CPU while idle, with heartbeats (the window should cover at least one ping round).
cpu_all() { local s=0 p; for p in $(echo "$sup $workers" | tr ' ' '\n' | sort -u); do s=$(( s + $(cpu_ns "$p") )); done; echo "$s"; }
pings0=$(metric "$addr" c100k_pings_sent_total)
c0=$(cpu_all); sleep "$window"; c1=$(cpu_all)
pings1=$(metric "$addr" c100k_pings_sent_total)
idle_cpu_pct=$(awk -v c=$(( c1 - c0 )) -v w=$window 'BEGIN { printf "%.1f", 100 * c / (w * 1e9) }')
pings_per_s=$(( (pings1 - pings0) / window ))
log "idle with heartbeats: ${idle_cpu_pct}% of one core, $pings_per_s pings/s"

log "echo at $echo_rate msgs/s on 1000 more connections, $phase s"
$(pin 1) "$BENCH" echo --url "ws://$addr/echo" --conns 1000 --size 32 --rate "$echo_rate" --duration "$phase" \
  --src "$src" --procs 1 --threads 1 --quiet --out "$out/echo" >"$out/echo.log" 2>&1 || die "echo run failed (see $out/echo.log)"
log "room broadcast: 1200 members in $procs rooms, $procs senders at $bcast_rate msgs/s, $phase s"
$(pin 1) "$BENCH" broadcast --url "ws://$addr/ws?room={room}" --members 1200 --rooms "$procs" --senders "$procs" \
  --rate "$bcast_rate" --duration "$phase" --src "$src" --procs 1 --threads 1 --quiet --out "$out/broadcast" \
  >"$out/broadcast.log" 2>&1 || die "broadcast run failed (see $out/broadcast.log)"

log "waiting for the hold to end"
wait "$idle" || die "the idle bench-client failed (see $out/idle.log)"
curl -sf "http://$addr/metrics" >"$out/metrics-final.txt" || die "cannot read the server's metrics"
kill -TERM "$sup"
for _ in $(seq 1 300); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sup" 2>/dev/null && die "c100k did not drain within 30 s"
wait "$sup" || die "c100k exited with an error (see $out/server.log)"
log "server drained and exited"

python3 - "$out" "$conns" "$hold" "$ping" "$procs" "$src" "$kernel_per_conn" "$idle_cpu_pct" "$pings_per_s" \
  "$connect_rate" "$echo_rate" "$bcast_rate" "$(machine_line)" "$window" <<'PY'
import json, sys, csv, statistics
out, conns, hold, ping, procs, src, kper, idle_cpu, pings, crate, erate, brate, machine, window = sys.argv[1:]
lines = open(f"{out}/metrics-final.txt").read().splitlines()
metrics = {l.split()[0]: l.split()[1] for l in lines if l and not l.startswith("#")}
idle = json.load(open(f"{out}/idle/summary.json"))
echo = json.load(open(f"{out}/echo/summary.json"))
bc = json.load(open(f"{out}/broadcast/summary.json"))
rows = list(csv.DictReader(open(f"{out}/memory.tsv"), delimiter="\t"))
per_conn = [int(r["bytes_per_connection"]) for r in rows]
c = idle["connections"]; h = idle["histograms"]
e = echo["histograms"]["rtt"]; b = bc["histograms"]["delivery"]; bm = bc["messages"]
mem_rows = "\n".join(f"| {r['worker']} | {r['connections']} | {int(r['rss_before_kb'])/1024:.1f} → {int(r['rss_after_kb'])/1024:.1f} MiB | {r['bytes_per_connection']} B |" for r in rows)
text = f"""# 100K concurrent connections

- Machine: {machine}
- Command: `scripts/bench-100k.sh` (CONNS={conns} HOLD={hold} PING={ping} CONNECT_RATE={crate} ECHO_RATE={erate} BROADCAST_RATE={brate})
- Server: `c100k --processes {procs} --threads 1 --ping-interval {ping} --reuseport-steer source-ip`, pinned to core 0
  (the per-process open-file limit here is 20,000, so {procs} workers share the port).
- Clients: bench-client pinned to core 1, sources {src}; kernel profile: sysctl/99-c100k.conf ([sysctl.txt](sysctl.txt)).

| figure | value | target |
|---|---|---|
| connections established / target | **{c['established']:,} / {c['target']:,}** ({c['failed']} failed) | 100,000 |
| held for | {hold} s with heartbeats every {ping} s | 5 min |
| dropped during the hold | **{c['dropped']}** | 0 |
| heartbeat timeouts (server) | {metrics.get('c100k_heartbeat_timeouts_total')} | 0 |
| connection rate | {c['per_second']:,}/s (ramp {c['ramp_seconds']} s) | |
| TCP connect latency p50 / p99 / max | {h['connect']['p50']} / {h['connect']['p99']} / {h['connect']['max']} µs | |
| handshake latency p50 / p99 / max | {h['handshake']['p50']} / {h['handshake']['p99']} / {h['handshake']['max']} µs | |
| server user-space RSS per idle connection (per worker, median) | **{statistics.median(per_conn)} B** | < 1 KiB |
| kernel Slab per connection (both ends) | {int(kper):,} B | |
| server CPU while idle with heartbeats (all workers, {window} s window) | **{idle_cpu}% of one core** ({pings} pings/s) | < 10% |
| echo, {erate} msgs/s on 1,000 more connections: RTT p50 / p99 / p99.9 | {e['p50']} / {e['p99']} / {e['p999']} µs ({echo['messages']['received']:,} echoed, {echo['messages']['lost']} lost) | |
| broadcast, 1,200 members in {procs} rooms, {brate} msgs/s: delivery p50 / p99 / p99.9 | {b['p50']} / {b['p99']} / {b['p999']} µs ({bm['received']:,} deliveries, {bm['received_per_second']:,}/s, lost {bm['lost']}, duplicated {bm['duplicated']}, out of order {bm['out_of_order']}) | |

Per worker ([memory.tsv](memory.tsv)):

| worker | connections | RSS before → after | per connection |
|---|---|---|---|
{mem_rows}

Reports: [idle/](idle/summary.json), [echo/](echo/summary.json), [broadcast/](broadcast/summary.json)
(each with .hgrm files and latency.svg); server log [server.log](server.log), run log [run.log](run.log).
"""
open(f"{out}/README.md", "w").write(text)
print(text)
PY
log "report: $out/README.md"
