#!/usr/bin/env bash
# The 1M run: CONNS c100k.v1 members (WebSocket) in rooms of ROOM_SIZE, rooms in Redis across
# every worker process, held HOLD seconds with heartbeats every PING seconds and a fixed-rate
# broadcast throughout; then every worker is SIGKILLed at once and a new server started on the
# same port, and every member reconnects with the client library's backoff and resumes with
# `since` (the storm). One report.
#
#   1. checks the host first (memory, descriptors, source ports, conntrack) and stops with what
#      to raise when CONNS would not fit; applies the kernel profile (root) or checks it;
#   2. starts redis-server and c100k (--processes: as many workers as the 20,000-descriptor cap
#      needs, --threads 1, --redis), pinned to core 0;
#   3. bench-client reconnect (pinned to core 1): the members ramp from source addresses spread
#      over 127.0.0.0/8 and join their rooms; 10 senders publish RATE messages/s in total;
#   4. during the hold: server RSS and kernel Slab per connection, server CPU, Redis memory per
#      room; then the storm, sampling the new server's accepts and handshakes every 100 ms;
#   5. stops everything it started; writes OUT/README.md.
#
# usage: scripts/bench-1m.sh             the full run (about 30 minutes on this 2-core host)
#        QUICK=1 scripts/bench-1m.sh     every phase at 5,000 members: about 2 minutes
# Knobs (environment; QUICK=1 defaults in brackets):
#   CONNS 1000000 [5000]  ROOM_SIZE 1000 [500]  HOLD 600 [30]  PING 30 [5]  RATE 100 [20]
#   CONNECT_RATE 10000  STORM_SECONDS 600 [40] (after the restart, until the run ends)
#   CONCURRENCY 512  handshakes in flight at once during the ramp (bench-client --concurrency;
#     50,000 overran the server: 72,050 handshakes timed out and those members never joined)
#   RECONNECT_CONCURRENCY 50000  the same in the storm (--reconnect-concurrency): real clients
#     all come back at once, spread only by their backoff's jitter; 512 set the storm's pace
#     instead of the server (530 in flight at ~0.4 s each, ~1,300 reconnects/s)
#   PROCESSES  worker processes on each side (default: as many as the descriptor cap needs);
#     more to reproduce the 1M layout's (process, room) pairs with fewer members
#   C100K_BIN  the server binary (default target/release/c100k), e.g. a baseline's
#   SERVER_ARGS  more c100k flags for both servers, e.g. admission toward Redis
#     ("--redis-in-flight 64 --redis-join-wait 5")
#   OUT  report directory (default bench-results/<UTC>-1m)
# Needs: redis-server, redis-cli, taskset, python3, curl; root to apply the kernel profile.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need redis-server redis-cli taskset python3 curl

conns=${CONNS:-$(q 1000000 5000)}
room_size=${ROOM_SIZE:-$(q 1000 500)}
hold=${HOLD:-$(q 600 30)}
ping=${PING:-$(q 30 5)}
rate=${RATE:-$(q 100 20)}
connect_rate=${CONNECT_RATE:-10000}
concurrency=${CONCURRENCY:-512}
reconnect_concurrency=${RECONNECT_CONCURRENCY:-50000}
storm=${STORM_SECONDS:-$(q 600 40)}
rooms=$(( (conns + room_size - 1) / room_size ))
out=${OUT:-$root/bench-results/$(utc_stamp)-1m}
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1

# ---- will it fit? ----
nofile=$(ulimit -Hn)
per_proc=$(( nofile - 1000 ))
procs=$(( (conns + 100 + per_proc - 1) / per_proc ))
if [ -n "${PROCESSES:-}" ]; then
  [ "$PROCESSES" -ge "$procs" ] || die "PROCESSES=$PROCESSES: $conns connections need at least $procs"
  procs=$PROCESSES
fi
src=$(source_range "$procs")
nsrc=$(( procs * 10 ))
sysctl_get() { cat "/proc/sys/$(tr . / <<<"$1")" 2>/dev/null || echo 0; }
ports=$(awk '{ print $2 - $1 + 1 }' /proc/sys/net/ipv4/ip_local_port_range)
avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
need_kb=$(( conns * 12 ))   # ~10 KB of kernel socket memory (both ends) + both sides' user space
fds=$(( 2 * conns + 50000 ))
problems=()
[ "$avail_kb" -ge "$need_kb" ] || problems+=("memory: $((need_kb / 1048576)) GiB needed, $((avail_kb / 1048576)) GiB available")
[ "$(sysctl_get fs.file-max)" -ge "$fds" ] || problems+=("fs.file-max must be at least $fds (scripts/apply-sysctl.sh)")
[ "$(sysctl_get fs.nr_open)" -ge "$nofile" ] || problems+=("fs.nr_open is below the descriptor limit $nofile")
ct=$(sysctl_get net.netfilter.nf_conntrack_max)
[ "$ct" = 0 ] || [ "$ct" -ge "$fds" ] || problems+=("net.netfilter.nf_conntrack_max must be at least $fds (it is $ct)")
[ $(( nsrc * ports )) -ge "$conns" ] || problems+=("source ports: $nsrc addresses × $ports ports < $conns (widen net.ipv4.ip_local_port_range)")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'bench-1m.sh: %s connections do not fit this host:\n' "$conns" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi

build_release
kernel_profile "$out"

# Redis stands in for a Redis host of its own: on core 0 beside 50-odd busy workers it got a
# fair share, 1/54 of the core, and its calls timed out mid-ramp. At nice -20 it runs whenever
# it has work (root only; otherwise it runs unprioritized and the report says so).
redis_nice=()
if [ "$(id -u)" = 0 ]; then redis_nice=(nice -n -20); fi
export REDIS_NICE=${redis_nice[2]:-0}
start_redis "$out" "${redis_nice[@]}"
redis_port=$REDIS_PORT
port=$(free_port)
server=("$C100K" --listen "127.0.0.1:$port" --processes "$procs" --threads 1 --ping-interval "$ping"
  --redis "redis://127.0.0.1:$redis_port" --max-publish-rate 0 --history-size 10000 ${SERVER_ARGS:-})
spawn "$out/server-1.log" $(pin 0) "${server[@]}"
sup=$SPAWNED
addr=$(wait_listening "$out/server-1.log" "$sup")
if [ "$procs" = 1 ]; then workers=$sup; else workers=$(pgrep -P "$sup" | tr '\n' ' '); fi
log "c100k on $addr: $procs workers, Redis on $redis_port; $conns members in $rooms rooms, sources $src"
rss_sum() { local s=0 w; for w in $workers; do s=$(( s + $(rss_kb "$w") )); done; echo "$s"; }
cpu_sum() { local s=0 w; for w in $sup $workers; do s=$(( s + $(cpu_ns "$w") )); done; echo "$s"; }
rss0=$(rss_sum); slab0=$(slab_kb)

total=$(( hold + storm ))
spawn "$out/client.log" $(pin 1) "$BENCH" reconnect --url "ws://$addr/ws" --members "$conns" --rooms "$rooms" \
  --senders 10 --rate "$rate" --size 64 --duration "$total" --connect-rate "$connect_rate" --src "$src" \
  --concurrency "$concurrency" --reconnect-concurrency "$reconnect_concurrency" \
  --procs auto --out "$out/bench" --quiet
bench=$SPAWNED
t0=$(date +%s%N)
# The ramp ends when the senders start (bench-client publishes once every member has joined).
wait_metric "$addr" c100k_publishes_total 1 $(( conns / 2000 + 120 )) || die "the ramp did not finish (see $out/client.log)"
ramp=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
held=$(metric "$addr" c100k_websockets_open)
log "ramp: $held members joined in ${ramp}s; holding ${hold}s"

sleep 10
rss1=$(rss_sum); slab1=$(slab_kb)
redis_mem=$(redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r')
pings0=$(metric "$addr" c100k_pings_sent_total); sent0=$(metric "$addr" c100k_messages_sent_total); c0=$(cpu_sum)
window=$(( hold - 20 ))
sleep "$window"
c1=$(cpu_sum); pings1=$(metric "$addr" c100k_pings_sent_total); sent1=$(metric "$addr" c100k_messages_sent_total)
open_end=$(metric "$addr" c100k_websockets_open)
timeouts=$(metric "$addr" c100k_heartbeat_timeouts_total)
sleep $(( hold - 10 - window ))

# What Redis ran (commands from scripts included) before and during the storm.
redis-cli -p "$redis_port" info commandstats >"$out/redis-commandstats-before-storm.txt" || true
log "storm: SIGKILL to every worker, a new server on the same port"
kill -KILL $workers "$sup" 2>/dev/null || true
wait "$sup" 2>/dev/null || true
spawn "$out/server-2.log" $(pin 0) "${server[@]}"
sup2=$SPAWNED
wait_listening "$out/server-2.log" "$sup2" >/dev/null
sample_storm "$addr" "$bench" "$out/samples.tsv"
wait "$bench" || log "bench-client reported a problem: $(tail -3 "$out/client.log")"
# The new server's own count of what went wrong toward Redis in the storm.
storm_counts="redis_errors=$(metric "$addr" c100k_redis_errors_total) shed=$(metric "$addr" c100k_redis_shed_total)"
storm_counts+=" v1_errors=$(metric "$addr" c100k_v1_errors_total) joins=$(metric "$addr" c100k_joins_total)"
kill -TERM "$sup2"; wait "$sup2" 2>/dev/null || true
redis-cli -p "$redis_port" info commandstats >"$out/redis-commandstats-after-storm.txt" || true

# A counter the server did not answer for (metric() gives up after 3 × 20 s) has no figure.
delta() { if [ -n "$1" ] && [ -n "$2" ]; then echo $(( $2 - $1 )); else echo n/a; fi; }
COUNTS=$storm_counts BIN=$C100K STORM=$storm CONNECT_RATE=$connect_rate CONCURRENCY=$concurrency RECONNECT_CONCURRENCY=$reconnect_concurrency python3 - "$out" "$conns" "$rooms" "$room_size" "$procs" "$hold" "$ping" "$rate" "$ramp" "$held" "$open_end" \
  "$timeouts" "$rss0" "$rss1" "$slab0" "$slab1" "$redis_mem" "$(( c1 - c0 ))" "$window" "$(delta "$pings0" "$pings1")" \
  "$(delta "$sent0" "$sent1")" "$src" "$(machine_line)" >"$out/README.md" <<'PY'
import json, os, sys
(out, conns, rooms, room_size, procs, hold, ping, rate, ramp, held, open_end, timeouts, rss0, rss1, slab0, slab1,
 redis_mem, cpu_ns, window, pings, sent, src, machine) = sys.argv[1:]
conns, held, window = int(conns), int(held), int(window)
s = json.load(open(f"{out}/bench/summary.json"))
rows = [l.split("\t") for l in open(f"{out}/samples.tsv") if l.strip()]
rows = [(float(t), int(a), int(h)) for t, a, h, _ in rows]
def peak(col):
    best = 0.0
    for i, r in enumerate(rows):
        for k in range(i + 1, len(rows)):
            if rows[k][0] - r[0] >= 1.0:
                best = max(best, (rows[k][col] - r[col]) / (rows[k][0] - r[0]))
                break
    return best
r, m, hs = s["resume"], s["messages"], s["histograms"]
d, res = hs.get("delivery", {}), hs.get("resume", {})
per_s = lambda n: 'n/a (no /metrics answer)' if n == 'n/a' else f"{int(n) / window:,.0f}"
c = dict(kv.split('=', 1) for kv in os.environ['COUNTS'].split())
us = lambda v: f"{v / 1e3:.1f} ms" if v < 1e6 else f"{v / 1e6:.2f} s"
print(f"""# {conns:,} v1 members on one host, rooms in Redis, then every worker restarted

- Date: {__import__('datetime').date.today()}, machine: {machine}
- Command: `scripts/bench-1m.sh` (CONNS={conns} ROOM_SIZE={room_size} HOLD={hold} PING={ping} RATE={rate}
  STORM_SECONDS={os.environ['STORM']} CONNECT_RATE={os.environ['CONNECT_RATE']} CONCURRENCY={os.environ['CONCURRENCY']}
  RECONNECT_CONCURRENCY={os.environ['RECONNECT_CONCURRENCY']} PROCESSES={procs}{'' if os.environ['BIN'].endswith('target/release/c100k') else ' C100K_BIN=' + os.environ['BIN']}{' SERVER_ARGS="' + os.environ['SERVER_ARGS'] + '"' if os.environ.get('SERVER_ARGS') else ''})
- Server: `c100k --processes {procs} --threads 1 --ping-interval {ping} --redis … --max-publish-rate 0
  --history-size 10000` and redis-server 7 (nice {os.environ.get('REDIS_NICE', '0')}), both pinned to core 0; bench-client `reconnect`
  (`--procs auto`) pinned to core 1, sources {src}. {rooms} rooms of {room_size}; 10 senders
  publish {rate} messages/s in total the whole time.

| figure | value |
|---|---|
| members joined / target | **{held:,} / {conns:,}** (ramp {ramp} s: {held / max(float(ramp), 0.1):,.0f} joins/s) |
| open at the end of the hold | **{int(open_end):,}** (heartbeat timeouts: {timeouts}) |
| server user-space RSS per connection (all workers) | **{(int(rss1) - int(rss0)) * 1024 / max(held, 1):.0f} B** |
| kernel Slab per connection (both ends) | {(int(slab1) - int(slab0)) * 1024 / max(held, 1):,.0f} B |
| server CPU during the hold (heartbeats and broadcast, {window} s) | {int(cpu_ns) / (window * 1e9) * 100:.1f}% of one core ({per_s(pings)} pings/s, {per_s(sent)} deliveries/s) |
| Redis memory per room | {int(redis_mem) / int(rooms):,.0f} B ({int(redis_mem) / 1048576:.1f} MiB for {rooms} rooms) |
| broadcast delivery latency p50 / p99 (whole run) | {us(d.get('p50', 0))} / {us(d.get('p99', 0))} |
| storm: members back, 99% / 100% within | {r['reconnects']:,} of {conns:,}; **{us(res.get('p99', 0))} / {us(res.get('max', 0))}** |
| storm: peak accepts/s / handshakes/s at the new server | {peak(1):,.0f} / {peak(2):,.0f} |
| reconnects recovered / not | {r['recovered']:,} / {r['unrecovered']:,} |
| storm, the new server's counts: joins / Redis errors / joins shed / v1 error replies | {' / '.join(f"{int(v):,}" if v.isdigit() else 'n/a' for v in (c.get('joins', ''), c.get('redis_errors', ''), c.get('shed', ''), c.get('v1_errors', '')))} |
| messages lost | **{m['lost']}** (expected {m['expected']:,}, received {m['received']:,}, duplicated {m['duplicated']}, out of order {m['out_of_order']}; publishes answered with an error: {m.get('publish_errors', 0):,}, each of which may have run all the same, and its sender never gets its own message) |

Verdict: {'ok' if s.get('verdict', {}).get('ok') else 'NOT OK: ' + '; '.join(s.get('verdict', {}).get('problems', []))}. Reports: `bench/` (summary.json, .hgrm, SVG), `samples.tsv`, logs.
""")
PY
cat "$out/README.md"
log "report: $out/README.md"
