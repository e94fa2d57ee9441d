#!/usr/bin/env bash
# Server RSS per v1 room member by layout: one c100k worker (--threads 1) holding MEMBERS
# members (default 18,868: what each of the 53 workers holds in the 1M run) in 1 room or in
# ROOMS rooms, with the in-process broker and with --redis, while a sender publishes 5
# messages/s. Tells what per-(process, room) state and the Redis broker add to a member.
#
# usage: scripts/measure-member-layout.sh [MEMBERS (18868)] [RUNS (2)]
#   ROOMS  rooms of the many-rooms layout (default 1000)
#   OUT    report directory (default bench-results/<UTC>-member-layout)
# Reads the worker's RSS before the members connect and once the sender has published 10
# messages (every member joined: bench-client publishes after the ramp).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need redis-server redis-cli python3 taskset curl

members=${1:-18868}
runs=${2:-2}
many=${ROOMS:-1000}
out=${OUT:-$root/bench-results/$(utc_stamp)-member-layout}
report_dir "$out" 'run\tbroker\trooms\tmembers_open\tuser_bytes_per_member'
tsv=$TSV

start_redis "$out"
rport=$REDIS_PORT

for run in $(seq 1 "$runs"); do
  for layout in "memory 1" "memory $many" "redis 1" "redis $many"; do
    read -r broker rooms <<<"$layout"
    flags=(--threads 1 --max-publish-rate 0 --history-size 10000)
    [ "$broker" = redis ] && flags+=(--redis "redis://127.0.0.1:$rport")
    redis-cli -p "$rport" flushall >/dev/null
    start_server c100k "$out/server-$broker-$rooms-$run.log" "${flags[@]}"
    spid=$SPID addr=$ADDR
    r0=$(rss_kb "$spid")
    spawn "$out/bench-$broker-$rooms-$run.log" $(pin 1) "$BENCH" broadcast --protocol v1 --url "ws://$addr/ws" \
      --members "$members" --rooms "$rooms" --senders 1 --rate 5 --duration 12 --connect-rate 5000 \
      --src 127.0.0.2-127.0.0.5 --procs 1 --quiet --out "$out/bench-$broker-$rooms-$run"
    bench=$SPAWNED
    wait_metric "$addr" c100k_publishes_total 10 120
    r1=$(rss_kb "$spid")
    open=$(metric "$addr" c100k_websockets_open)
    printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$broker" "$rooms" "$open" $(( (r1 - r0) * 1024 / open )) | tee -a "$tsv"
    wait "$bench" || true
    kill -TERM "$spid"; wait "$spid" 2>/dev/null || true
  done
done

python3 - "$tsv" "$members" "$many" "$(machine_line)" >"$out/README.md" <<'PY'
import statistics, sys
tsv, members, many, machine = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv)][1:]
med = lambda b, r: statistics.median(int(x[4]) for x in rows if x[1] == b and x[2] == r)
print(f"""# Server RSS per v1 member by layout ({int(members):,} members on one worker)

- Machine: {machine}
- Command: `scripts/measure-member-layout.sh {members}` (one `c100k --threads 1` on core 0,
  `bench-client broadcast --protocol v1 --senders 1 --rate 5 --connect-rate 5000` on core 1)

| broker | 1 room | {int(many):,} rooms |
|---|---|---|
| in-process | {med('memory', '1'):.0f} B | {med('memory', many):.0f} B |
| Redis | {med('redis', '1'):.0f} B | {med('redis', many):.0f} B |

Medians of {len(rows) // 4} runs; per run: [runs.tsv](runs.tsv).""")
PY
cat "$out/README.md"
