#!/usr/bin/env bash
# A reconnect storm, measured: MEMBERS v1 members (WebSocket, SSE or long-poll: TRANSPORT) in
# rooms of ROOM_SIZE on one c100k with rooms in Redis, 10 senders publishing RATE messages/s in
# total; KILL_AT seconds in, the server is SIGKILLed and started again at once on the same port
# and Redis. Every member reconnects with the client library's backoff (1 s doubling to 60 s,
# full jitter) and resumes with `since`.
#
# Reports the time until 99% and 100% of the members were back and each member's reconnect time
# p50 (connection lost → rejoined: bench-client's `resume` histogram; every member loses its
# connection within milliseconds of the kill, so its p99 and max are when 99% and 100% were
# back), the
# server's peak and mean accepts/s and handshakes/s during the storm (sampled from /metrics every
# 100 ms), messages replayed, and messages lost (must be 0: every member resumes, `recovered`).
#
# usage: scripts/bench-reconnect.sh [MEMBERS (10000)] [SECONDS (40)] [KILL_AT (10)]
#   TRANSPORT  ws (default), sse or poll
#   ROOM_SIZE  members per room (default 1000);  RATE  messages/s in total (default 100)
#   OUT        report directory (default bench-results/<UTC>-reconnect-TRANSPORT)
# Needs: redis-server, redis-cli, taskset, python3, curl (and builds the release binaries).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need redis-server redis-cli taskset python3 curl

members=${1:-10000}
secs=${2:-40}
kill_at=${3:-10}
transport=${TRANSPORT:-ws}
room_size=${ROOM_SIZE:-1000}
rate=${RATE:-100}
rooms=$(( (members + room_size - 1) / room_size ))
out=${OUT:-$root/bench-results/$(utc_stamp)-reconnect-$transport}
build_release
mkdir -p "$out"

start_redis "$out"
redis_port=$REDIS_PORT
port=$(free_port)
server=("$C100K" --listen "127.0.0.1:$port" --max-publish-rate 0 --history-size 10000 --redis "redis://127.0.0.1:$redis_port")
spawn "$out/server-1.log" $(pin 0) "${server[@]}"
first=$SPAWNED
wait_listening "$out/server-1.log" "$first" >/dev/null

log "reconnect storm: $members $transport members in $rooms rooms, $rate msg/s, server killed at ${kill_at} s"
$(pin 1) "$BENCH" reconnect --transport "$transport" --url "ws://127.0.0.1:$port/ws" --members "$members" \
  --rooms "$rooms" --senders 10 --rate "$rate" --size 64 --duration "$secs" --connect-rate 20000 \
  --out "$out/bench" --quiet >"$out/client.log" 2>&1 &
bench=$!
_pids+=("$bench")
wait_metric "127.0.0.1:$port" c100k_publishes_total 1 120
sleep "$kill_at"
kill -KILL "$first"
wait "$first" 2>/dev/null || true
spawn "$out/server-2.log" $(pin 0) "${server[@]}"
second=$SPAWNED
wait_listening "$out/server-2.log" "$second" >/dev/null
log "server restarted (pid $second)"

# Sample the new server's counters for the rest of the run.
sample_storm "127.0.0.1:$port" "$bench" "$out/samples.tsv"
wait "$bench" || die "bench-client failed: $(tail -5 "$out/client.log")"
kill -TERM "$second"; wait "$second" 2>/dev/null || true

python3 - "$out" "$members" "$transport" "$rate" "$secs" "$kill_at" "$(machine_line)" "$rooms" >"$out/README.md" <<'PY'
import json, sys
out, members, transport, rate, secs, kill_at, machine, rooms = sys.argv[1:]
members = int(members)
s = json.load(open(f"{out}/bench/summary.json"))
rows = [l.split("\t") for l in open(f"{out}/samples.tsv") if l.strip()]
rows = [(float(t), int(a), int(h), int(e)) for t, a, h, e in rows]
def rate_of(col):
    # Peak over 1 s windows (sliding on the 100 ms samples) and the mean over the storm.
    peak = 0.0
    for i, r in enumerate(rows):
        for k in range(i + 1, len(rows)):
            if rows[k][0] - r[0] >= 1.0:
                peak = max(peak, (rows[k][col] - r[col]) / (rows[k][0] - r[0]))
                break
    span = rows[-1][0] - rows[0][0] if len(rows) > 1 else 0
    mean = (rows[-1][col] - rows[0][col]) / span if span > 0 else 0
    return peak, mean
acc_peak, acc_mean = rate_of(1)
hs_peak, hs_mean = rate_of(2)
sse_peak, sse_mean = rate_of(3)
r, m, h = s["resume"], s["messages"], s["histograms"]["resume"]
back = r["reconnects"]
print(f"""# Reconnect storm: {members} {transport} members, server restarted

- Date: {__import__('datetime').date.today()}, machine: {machine}
- Command: `TRANSPORT={transport} scripts/bench-reconnect.sh {members} {secs} {kill_at}`
- Redis 7 and c100k share core 0, bench-client has core 1. {members} `c100k.v1` members over
  {transport} in {rooms} rooms, 10 senders (WebSocket) publishing {rate} messages/s in total;
  {kill_at} s into the publishing the server is SIGKILLed and started again at once on the same
  port and Redis. Members reconnect with the client library's backoff: attempt n waits a uniform
  random time below min(60 s, 1 s × 2^(n-1)), and join with `since`.

| | |
|---|---|
| members back on the new server | {back} of {members} |
| 99% back within / 100% back within (p99 / max of the reconnect time) | **{h['p99'] / 1e6:.2f} s / {h['max'] / 1e6:.2f} s** |
| reconnect time per member p50 | {h['p50'] / 1e6:.2f} s |
| accepts/s at the server, peak (1 s) / mean over the run after the restart | {acc_peak:.0f} / {acc_mean:.0f} |
| WebSocket handshakes/s, peak / mean | {hs_peak:.0f} / {hs_mean:.0f} |
| SSE streams started/s, peak / mean | {sse_peak:.0f} / {sse_mean:.0f} |
| reconnects: recovered / not | {r['reconnects']}: {r['recovered']} / {r['unrecovered']} |
| messages replayed from history | {r['messages_recovered']} |
| messages lost | **{m['lost']}** (expected {m['expected']}, received {m['received']}, duplicated {m['duplicated']}, out of order {m['out_of_order']}) |

The server's rates are sampled from its `/metrics` every 100 ms from its start; with the
backoff's full jitter the first attempts spread over the first second and later ones over 2 s,
4 s…, which is what keeps the peak low. Verdict: {s.get('verdict')}. Report: `bench/`
(summary.json, resume.hgrm, SVG); samples: `samples.tsv`.
""")
PY
cat "$out/README.md"
