#!/usr/bin/env bash
# Profile the proxies under one redis-benchmark workload (issue 3): syscalls and context
# switches per request (perf stat on tracepoints, cheap), where redis-pair spends its CPU
# (perf record -g), and strace -c -f on a short run, as asked by the issue.
#
#   bench/profile.sh                          GET, -c 50 -P 1, 3-byte values, n=200000
#   TEST=set CLIENTS=500 PIPELINE=1 SIZE=4096 bench/profile.sh
#   PAIR_ARGS="--no-multiplex" bench/profile.sh  (any redis-pair local flags, e.g. --threads 2)
#   CALLGRIND=0 bench/profile.sh             skip the callgrind pass (instructions per request)
# Targets: TARGETS="redis-pair haproxy direct". Output: bench/out/profile-<time>/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-200000} TEST=${TEST:-get} CLIENTS=${CLIENTS:-50} PIPELINE=${PIPELINE:-1} SIZE=${SIZE:-3}
TARGETS=${TARGETS:-"redis-pair haproxy direct"}
BASE_PORT=${BASE_PORT:-17300}
MASTER_PORT=$((BASE_PORT + 1)) REPLICA_PORT=$((BASE_PORT + 2))
HAPROXY_PORT=$((BASE_PORT + 11)) PAIR_PORT=$((BASE_PORT + 14)) PAIR_ADMIN=$((BASE_PORT + 15))
OUT=${OUT:-$BENCH_DIR/out/profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

ensure_tools redis-server redis-server redis-benchmark redis-tools haproxy haproxy \
  perf linux-perf strace strace curl curl
raise_fd_limit
build_pair || die "redis-pair does not build"
machine_info >"$OUT/machine.txt"

start_redis "$MASTER_PORT" "$OUT/redis"
start_redis "$REPLICA_PORT" "$OUT/redis" --replicaof "$HOST" "$MASTER_PORT"
wait_replica_synced "$REPLICA_PORT" || die "replica did not sync"
declare -A PORT PID
PORT[direct]=$MASTER_PORT; PID[direct]=$(eval echo "\$REDIS_PID_$MASTER_PORT")

cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 1s
    timeout client 1m
    timeout server 1m
listen redis
    bind $HOST:$HAPROXY_PORT
    server m $HOST:$MASTER_PORT
EOF
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
PID[haproxy]=$!; BENCH_PIDS+=("$!"); PORT[haproxy]=$HAPROXY_PORT
# shellcheck disable=SC2086
"$PAIR_BIN" local --listen "$HOST:$PAIR_PORT" --admin-listen "$HOST:$PAIR_ADMIN" \
  --server "$HOST:$MASTER_PORT" --server "$HOST:$REPLICA_PORT" ${PAIR_ARGS:-} >"$OUT/redis-pair.log" 2>&1 &
PID[redis-pair]=$!; BENCH_PIDS+=("$!"); PORT[redis-pair]=$PAIR_PORT
wait_port "$HAPROXY_PORT" && wait_port "$PAIR_PORT" || die "a proxy did not start"
for _ in $(seq 50); do curl -fsS -m 1 "http://$HOST:$PAIR_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

bench() { # port n
  redis-benchmark -h "$HOST" -p "$1" -t "$TEST" -n "$2" -c "$CLIENTS" -P "$PIPELINE" -d "$SIZE" --csv 2>/dev/null \
    | tr -d '"' | awk -F, 'NR>1 {printf "%s %.0f ops/s p50 %s p99 %s", $1, $2, $5, $7}'
}
EVENTS="task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter"
for s in read write readv writev recvfrom sendto epoll_wait epoll_pwait epoll_ctl futex splice accept4 sched_yield; do
  EVENTS+=",syscalls:sys_enter_$s"
done

echo "workload: -t $TEST -n $N -c $CLIENTS -P $PIPELINE -d $SIZE   PAIR_ARGS=${PAIR_ARGS:-}" | tee "$OUT/summary.txt"
for t in $TARGETS; do
  bench "${PORT[$t]}" 20000 >/dev/null   # warm up: connections, buffers
  perf stat -e "$EVENTS" -p "${PID[$t]}" -o "$OUT/perfstat-$t.txt" &
  ppid=$!; BENCH_PIDS+=("$ppid"); sleep 0.3
  r=$(bench "${PORT[$t]}" "$N")
  kill -INT "$ppid"; wait "$ppid" 2>/dev/null || true
  awk -v n="$N" -v t="$t" -v r="$r" '
    /raw_syscalls:sys_enter/ {gsub(",","",$1); sys=$1}
    /syscalls:sys_enter_/ && !/raw/ {gsub(",","",$1); if ($1+0 > 0) {split($2,a,"sys_enter_"); per = per sprintf(" %s %.2f", a[2], $1/n)}}
    /context-switches/ {gsub(",","",$1); cs=$1}
    /task-clock/ {gsub(",","",$1); tc=$1}
    END {printf "%-10s %s | CPU %.1f us/req, syscalls %.2f/req, ctx switches %.3f/req |%s\n", t, r, tc*1000/n, sys/n, cs/n, per}
  ' "$OUT/perfstat-$t.txt" | tee -a "$OUT/summary.txt"
done

if [[ " $TARGETS " == *" redis-pair "* ]]; then
  perf record -F 999 -g -p "${PID[redis-pair]}" -o "$OUT/perf.data" 2>"$OUT/perf-record.err" &
  ppid=$!; BENCH_PIDS+=("$ppid"); sleep 0.3
  bench "$PAIR_PORT" "$N" >/dev/null
  kill -INT "$ppid"; wait "$ppid" 2>/dev/null || true
  perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | cut -c1-150 | head -40 >"$OUT/perf-top.txt" || true
  perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -10 >"$OUT/perf-dso.txt" || true
  echo "--- redis-pair: CPU by DSO (perf record, cpu-clock)"; cat "$OUT/perf-dso.txt"
  echo "--- redis-pair: top symbols"; head -25 "$OUT/perf-top.txt"

  # strace slows the proxy down a lot; its counts are for the syscall mix, not for speed.
  strace -c -f -q -p "${PID[redis-pair]}" -o "$OUT/strace-redis-pair.txt" &
  ppid=$!; BENCH_PIDS+=("$ppid"); sleep 0.5
  bench "$PAIR_PORT" 20000 >/dev/null
  kill -INT "$ppid"; wait "$ppid" 2>/dev/null || true
  echo "--- redis-pair: strace -c -f over 20000 requests"; head -20 "$OUT/strace-redis-pair.txt"

  # callgrind counts the instructions redis-pair itself executes (user space only, not the
  # kernel), which is repeatable whatever else the machine does: a regression check for our
  # own code rather than a speed measurement. Counters are zeroed after a warm-up, so start-up
  # is not counted; the engine's probes during the window are (a few per second).
  if [ "${CALLGRIND:-1}" = 1 ]; then
    ensure_tools valgrind valgrind callgrind_control valgrind
    CG_PORT=$((BASE_PORT + 16)) CG_ADMIN=$((BASE_PORT + 17)) CG_N=${CG_N:-20000}
    # shellcheck disable=SC2086
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
      "$PAIR_BIN" local --listen "$HOST:$CG_PORT" --admin-listen "$HOST:$CG_ADMIN" \
      --server "$HOST:$MASTER_PORT" --server "$HOST:$REPLICA_PORT" --drain-timeout 1s \
      ${PAIR_ARGS:-} >"$OUT/redis-pair-callgrind.log" 2>&1 &
    cgpid=$!; BENCH_PIDS+=("$cgpid")
    for _ in $(seq 300); do curl -fsS -m 1 "http://$HOST:$CG_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    bench "$CG_PORT" 2000 >/dev/null
    callgrind_control -z "$cgpid" >/dev/null 2>&1
    bench "$CG_PORT" "$CG_N" >/dev/null
    callgrind_control -d "$cgpid" >/dev/null 2>&1
    kill -TERM "$cgpid"; wait "$cgpid" 2>/dev/null || true
    dump=$(ls -t "$OUT"/callgrind.out* 2>/dev/null | grep -v '\.out$' | head -1)
    if [ -n "$dump" ]; then
      total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
      echo "--- redis-pair: callgrind: ${total:-?} instructions (user space) over $CG_N requests = $(( ${total:-0} / CG_N )) per request"
    else
      echo "--- redis-pair: callgrind produced no dump (see $OUT/redis-pair-callgrind.log)"
    fi
  fi
fi 2>&1 | tee -a "$OUT/summary.txt"
log "results in $OUT"
