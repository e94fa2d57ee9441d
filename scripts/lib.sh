# Shared helpers for the measurement scripts (source it). Every process a script starts with
# `spawn` is stopped when the script exits, however it exits.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
C100K=${C100K_BIN:-$root/target/release/c100k}
BENCH=$root/target/release/bench-client

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# need CMD...: fail with what to install when a command is missing.
need() {
  local c pkg
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 && continue
    case $c in
      taskset) pkg="util-linux" ;; ss) pkg="iproute2" ;; curl) pkg="curl" ;; python3) pkg="python3" ;;
      node | npm) pkg="nodejs npm" ;; *) pkg=$c ;;
    esac
    die "$c is needed: install it (Debian: apt-get install $pkg)"
  done
}
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

build_release() {
  log "building release binaries"
  (cd "$root" && cargo build --release --workspace --quiet) || die "build failed"
}

# report_dir DIR HEADER: build the binaries, make the report directory and start its runs.tsv
# with HEADER (tab-separated, `\t` escapes allowed); sets TSV.
report_dir() {
  build_release
  mkdir -p "$1"
  TSV=$1/runs.tsv
  printf '%b\n' "$2" >"$TSV"
}

# start_redis DIR [PREFIX...]: a throwaway redis-server (no persistence, files in DIR, log in
# DIR/redis.log) on a free loopback port, pinned to core 0 and run under PREFIX (e.g. nice);
# waits until it answers PING. Sets REDIS_PORT and REDIS_PID.
start_redis() {
  local dir=$1; shift
  REDIS_PORT=$(free_port)
  spawn "$dir/redis.log" $(pin 0) "$@" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --protected-mode no --dir "$dir"
  REDIS_PID=$SPAWNED
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
}

_pids=()
_cleanup() {
  set +e # every process must be stopped, even if some already exited
  local p
  for p in "${_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${_pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null # only our own: a bare `wait` would also wait for `tee` in >(…)
  done
  return 0
}
trap _cleanup EXIT
trap 'exit 130' INT TERM

# spawn LOGFILE CMD...: run in the background, remember the pid in SPAWNED.
spawn() {
  local logf=$1; shift
  "$@" >"$logf" 2>&1 &
  SPAWNED=$!
  _pids+=("$SPAWNED")
}

# CPU pinning prefix: "taskset -c N" when the machine has more than one core, else nothing.
pin() { if [ "$(nproc)" -gt 1 ]; then echo "taskset -c $1"; fi; }

# wait_listening LOGFILE PID: wait for c100k's "listening on ADDR" line; prints ADDR.
wait_listening() {
  local logf=$1 pid=$2 addr=
  for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$logf" | head -n1)
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "server exited"; }
    sleep 0.05
  done
  die "server did not start (log: $logf)"
}

# start_server NAME LOGFILE [C100K FLAGS...]: start a server on a free loopback port, pinned to
# core 0; sets SPID and ADDR. NAME: c100k (this build), baseline ($BASELINE_BIN), node or uws (the
# peers in bench/peers, installed by scripts/setup-peers.sh).
start_server() {
  local name=$1 logf=$2; shift 2
  case $name in
    c100k | baseline)
      local bin=$C100K
      if [ "$name" = baseline ]; then
        bin=${BASELINE_BIN:?set BASELINE_BIN to a c100k binary (scripts/build-baseline.sh REV)}
      fi
      spawn "$logf" $(pin 0) "$bin" --listen 127.0.0.1:0 "$@"
      SPID=$SPAWNED
      ADDR=$(wait_listening "$logf" "$SPID")
      ;;
    node | uws)
      local dir=$root/target/peers/node-ws script=server.js port
      [ "$name" = uws ] && { dir=$root/target/peers/uws; script=server.mjs; }
      [ -d "$dir/node_modules" ] || die "peer $name is not installed: run scripts/setup-peers.sh"
      port=$(free_port)
      PORT=$port spawn "$logf" $(pin 0) node "$dir/$script"
      SPID=$SPAWNED
      ADDR=127.0.0.1:$port
      for _ in $(seq 1 200); do grep -q listening "$logf" && return 0; kill -0 "$SPID" 2>/dev/null || break; sleep 0.05; done
      cat "$logf" >&2
      die "$name did not start"
      ;;
    *) die "unknown server $name (c100k, baseline, node, uws)" ;;
  esac
}

# test_cert DIR [ec|rsa]: a throwaway CA (DIR/ca.pem) and a server certificate for localhost and
# 127.0.0.1 signed by it (DIR/cert.pem, DIR/key.pem): ECDSA P-256 (default) or RSA 2048.
test_cert() {
  local dir=$1 kind=${2:-ec} alg
  need openssl
  mkdir -p "$dir"
  case $kind in
    ec) alg=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) alg=(-newkey rsa:2048) ;;
    *) die "test_cert: kind must be ec or rsa" ;;
  esac
  openssl req -x509 "${alg[@]}" -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 30 -subj /CN=c100k-test-ca 2>/dev/null
  openssl req "${alg[@]}" -nodes -keyout "$dir/key.pem" -out "$dir/cert.csr" -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -out "$dir/cert.pem" \
    -days 30 -extfile "$dir/ext.cnf" 2>/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# established ADDR: TCP connections established to the server at ADDR (from ss(8)).
established() { ss -Htn state established "( sport = :${1##*:} )" | wc -l; }

# wait_established ADDR N TIMEOUT_S: wait until at least N connections to ADDR are established.
wait_established() {
  local n
  for _ in $(seq 1 $(($3 * 10))); do
    n=$(established "$1")
    [ "$n" -ge "$2" ] && return 0
    sleep 0.1
  done
  die "only $n of $2 connections to $1 established within $3 s"
}

# metric ADDR NAME: one value from c100k's /metrics.
# At 1M connections on 2 cores one worker may wait seconds for its turn to answer /metrics:
# tried three times, 20 s each; prints nothing (never fails the script) when it still cannot.
metric() {
  local body
  for _ in 1 2 3; do
    body=$(curl -sf --max-time 20 "http://$1/metrics") && break
  done
  awk -v n="$2" '$1 == n { print $2 }' <<<"${body:-}"
}

# wait_metric ADDR NAME VALUE TIMEOUT_S: wait until the metric is at least VALUE.
wait_metric() {
  local v
  for _ in $(seq 1 $(($4 * 10))); do
    v=$(metric "$1" "$2")
    [ -n "$v" ] && [ "$v" -ge "$3" ] && return 0
    sleep 0.1
  done
  die "$2 did not reach $3 within $4 s (last: ${v:-none})"
}

# wait_metric_le ADDR NAME VALUE TIMEOUT_S: wait until the metric is at most VALUE.
wait_metric_le() {
  local v
  for _ in $(seq 1 $(($4 * 10))); do
    v=$(metric "$1" "$2")
    [ -n "$v" ] && [ "$v" -le "$3" ] && return 0
    sleep 0.1
  done
  die "$2 did not fall to $3 within $4 s (last: ${v:-none})"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
slab_kb() { awk '/^Slab:/ { print $2 }' /proc/meminfo; }

# cpu_ns PID: CPU time of every thread of PID, in ns (from schedstat: exact, not tick-based).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }

# median of the numbers on stdin
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

machine_line() {
  echo "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
}

utc_stamp() { date -u +%Y%m%dT%H%M%SZ; }

# QUICK=1 picks the second of two defaults: `q FULL QUICK`.
q() { if [ "${QUICK:-0}" = 1 ]; then echo "$2"; else echo "$1"; fi; }

# kernel_profile OUT: apply the kernel profile as root (else only check it), into OUT/sysctl.txt.
kernel_profile() {
  log "kernel profile"
  if [ "$(id -u)" = 0 ]; then
    "$root/scripts/apply-sysctl.sh" >"$1/sysctl.txt" || die "applying the kernel profile failed (see $1/sysctl.txt)"
  else
    "$root/scripts/apply-sysctl.sh" --check >"$1/sysctl.txt"
    log "not root: kernel profile only checked (see $1/sysctl.txt)"
  fi
}

# source_range PROCS: ten client source addresses per server worker from 127.0.0.2 on (across
# octets: 1M connections take 530), as bench-client's --src range.
source_range() {
  local n=$(( $1 * 10 ))
  [ "$n" -le 60000 ] || die "too many workers ($1) for the source range"
  local last=$(( 2 + n - 1 ))
  echo "127.0.0.2-127.0.$(( last / 256 )).$(( last % 256 ))"
}

# sample_storm ADDR PID FILE: while PID runs, append the server's accepts, WebSocket handshakes
# and SSE streams started (counters from /metrics) to FILE every 100 ms, with the time.
sample_storm() {
  : >"$3"
  local m acc hs sse
  while kill -0 "$2" 2>/dev/null; do
    m=$(curl -s "http://$1/metrics" || true)
    acc=$(awk '/^c100k_connections_accepted_total /{print $2}' <<<"$m")
    hs=$(awk '/^c100k_handshakes_total /{print $2}' <<<"$m")
    sse=$(awk '/^c100k_sse_streams_total /{print $2}' <<<"$m")
    [ -n "$acc" ] && printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$acc" "${hs:-0}" "${sse:-0}" >>"$3"
    sleep 0.1
  done
}
