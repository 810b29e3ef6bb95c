#!/usr/bin/env bash
# Proxy overhead benchmark (issue 3): direct vs HAProxy (TCP mode, one thread) vs twemproxy vs
# `redis-pair local`, all in front of the same master+replica pair on 127.0.0.1, rounds
# interleaved so that drift hits every target alike.
#
#   bench/proxy.sh                 full run: n=200000, 3 rounds (about 8-10 min on 2 cores)
#   QUICK=1 bench/proxy.sh         n=20000, 2 rounds (about 1 min)
#   UNIX=1 bench/proxy.sh          also each proxy with the client on a Unix socket
#                                  (haproxy-unix, twemproxy-unix, redis-pair-unix; Redis itself
#                                  stays on TCP, as it is in another pod in production)
#
# Knobs (environment): ROUNDS, N, TARGETS="direct haproxy twemproxy redis-pair" (also:
#   haproxy-unix twemproxy-unix redis-pair-unix, and direct-unix: Redis's own Unix socket;
#   haproxy-splice: HAProxy forwarding with splice(2), zero-copy),
#   WORKLOADS="c50-P1-d3 ..." (clients, pipeline, value bytes), BASE_PORT (17100),
#   SKIP_BUILD=1, PAIR_BIN=path, PAIR_ARGS="extra redis-pair local flags",
#   PAIR_ALT_ARGS="--threads 1": adds target redis-pair-alt, a second redis-pair with these flags
#   PAIR_ALT_BIN=path: the binary for redis-pair-alt (default PAIR_BIN), to compare two builds
#   (hidden tuning flags: --threads N, --buffer-size BYTES), to compare settings in one run,
#   REQUIRE_PAIR=1 (fail instead of skipping redis-pair when it does not build/start).
# Output: a table on stdout, and bench/out/proxy-<time>/{results.tsv,table.md,*.csv,*.log}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ "${QUICK:-0}" = 1 ]; then
  N=${N:-20000}; ROUNDS=${ROUNDS:-2}
else
  N=${N:-200000}; ROUNDS=${ROUNDS:-3}
fi
TARGETS=${TARGETS:-"direct haproxy twemproxy redis-pair"}
if [ "${UNIX:-0}" = 1 ]; then
  for t in haproxy-unix twemproxy-unix redis-pair-unix; do
    [[ " $TARGETS " == *" $t "* ]] || TARGETS+=" $t"
  done
fi
WORKLOADS=${WORKLOADS:-"c50-P1-d3 c50-P1-d4096 c50-P16-d3 c50-P16-d4096 c500-P1-d3 c500-P1-d4096"}
BASE_PORT=${BASE_PORT:-17100}
MASTER_PORT=$((BASE_PORT + 1)) REPLICA_PORT=$((BASE_PORT + 2))
HAPROXY_PORT=$((BASE_PORT + 11)) TWEM_PORT=$((BASE_PORT + 12)) TWEM_STATS=$((BASE_PORT + 13))
PAIR_PORT=$((BASE_PORT + 14)) PAIR_ADMIN=$((BASE_PORT + 15))
ALT_PORT=$((BASE_PORT + 16)) ALT_ADMIN=$((BASE_PORT + 17)) SPLICE_PORT=$((BASE_PORT + 18))
[ -n "${PAIR_ALT_BIN:-}" ] && PAIR_ALT_ARGS=${PAIR_ALT_ARGS:- }
[ -n "${PAIR_ALT_ARGS:-}" ] && [[ " $TARGETS " != *" redis-pair-alt "* ]] && TARGETS+=" redis-pair-alt"

OUT=${OUT:-$BENCH_DIR/out/proxy-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
# Unix sockets of the *-unix targets (a short path: sun_path holds 107 bytes).
SOCK_DIR=$(mktemp -d /tmp/redis-pair-bench.XXXXXX)
BENCH_DIRS+=("$SOCK_DIR")

# --- prerequisites -------------------------------------------------------------------------
ensure_tools redis-server redis-server redis-benchmark redis-tools redis-cli redis-tools \
  haproxy haproxy nutcracker nutcracker python3 python3 curl curl
raise_fd_limit
if [[ " $TARGETS " == *" redis-pair"* ]]; then
  if ! build_pair; then
    [ "${REQUIRE_PAIR:-0}" = 1 ] && die "redis-pair does not build or has no 'local' subcommand"
    log "warning: redis-pair does not build or has no 'local' subcommand: skipping it"
    TARGETS=$(echo " $TARGETS " | sed 's/ redis-pair-alt / /; s/ redis-pair-unix / /; s/ redis-pair / /')
  fi
fi
machine_info | tee "$OUT/machine.txt" >&2
echo "N=$N ROUNDS=$ROUNDS TARGETS=$TARGETS WORKLOADS=$WORKLOADS PAIR_ARGS=${PAIR_ARGS:-} PAIR_ALT_ARGS=${PAIR_ALT_ARGS:-} PAIR_BIN=$PAIR_BIN PAIR_ALT_BIN=${PAIR_ALT_BIN:-}" | tee "$OUT/params.txt" >&2

# --- the pair and the proxies ----------------------------------------------------------------
start_redis "$MASTER_PORT" "$OUT/redis" --unixsocket "$SOCK_DIR/redis.sock" --unixsocketperm 600
start_redis "$REPLICA_PORT" "$OUT/redis" --replicaof "$HOST" "$MASTER_PORT"
wait_replica_synced "$REPLICA_PORT" || die "replica did not sync"

# PID: the process whose CPU and RSS a target's row reports; CONN: redis-benchmark's
# connection arguments for it.
declare -A CONN PID
CONN[direct]="-h $HOST -p $MASTER_PORT"
PID[direct]=$(eval echo "\$REDIS_PID_$MASTER_PORT")
CONN[direct-unix]="-s $SOCK_DIR/redis.sock"
PID[direct-unix]=${PID[direct]}
MASTER_PID=${PID[direct]}
REPLICA_PID=$(eval echo "\$REDIS_PID_$REPLICA_PORT")

start_haproxy() { # target port extra-global extra-defaults
  local t=$1 port=$2
  cat >"$OUT/$t.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
$3
defaults
    mode tcp
    timeout connect 1s
    timeout client 1m
    timeout server 1m
$4
frontend redis
    bind $HOST:$port
    bind $SOCK_DIR/$t.sock mode 666
    default_backend master
backend master
    server m $HOST:$MASTER_PORT
EOF
  haproxy -db -f "$OUT/$t.cfg" >"$OUT/$t.log" 2>&1 &
  PID[$t]=$!; BENCH_PIDS+=("$!"); CONN[$t]="-h $HOST -p $port"
  PID[$t-unix]=${PID[$t]}; CONN[$t-unix]="-s $SOCK_DIR/$t.sock"
  wait_port "$port" || die "$t did not start (see $OUT/$t.log)"
}

start_twemproxy() {
  # One pool, one server: twemproxy multiplexes all clients over server_connections (1) link.
  # A second, identical pool listens on a Unix socket for the twemproxy-unix target.
  pool() { # name listen
    printf '%s:\n  listen: %s\n  redis: true\n  hash: fnv1a_64\n  distribution: ketama\n' "$1" "$2"
    printf '  auto_eject_hosts: false\n  timeout: 5000\n  server_connections: 1\n'
    printf '  servers:\n   - %s:%s:1\n' "$HOST" "$MASTER_PORT"
  }
  { pool pair "$HOST:$TWEM_PORT"; pool pair_unix "$SOCK_DIR/twemproxy.sock 0666"; } >"$OUT/nutcracker.yml"
  nutcracker -c "$OUT/nutcracker.yml" -s "$TWEM_STATS" -a "$HOST" -o "$OUT/nutcracker.log" &
  PID[twemproxy]=$!; BENCH_PIDS+=("$!"); CONN[twemproxy]="-h $HOST -p $TWEM_PORT"
  PID[twemproxy-unix]=${PID[twemproxy]}; CONN[twemproxy-unix]="-s $SOCK_DIR/twemproxy.sock"
  wait_port "$TWEM_PORT" || die "nutcracker did not start (see $OUT/nutcracker.log)"
}

start_pair() { # target listen_port admin_port extra_args binary
  local t=$1 port=$2 admin=$3
  # shellcheck disable=SC2086
  "$5" local --listen "$HOST:$port" --admin-listen "$HOST:$admin" \
    --server "$HOST:$MASTER_PORT" --server "$HOST:$REPLICA_PORT" \
    --listen-unix "$SOCK_DIR/$t.sock" $4 >"$OUT/$t.log" 2>&1 &
  PID[$t]=$!; BENCH_PIDS+=("$!"); CONN[$t]="-h $HOST -p $port"
  PID[$t-unix]=${PID[$t]}; CONN[$t-unix]="-s $SOCK_DIR/$t.sock"
  local i
  for i in $(seq 1 100); do
    if curl -fsS -m 1 "http://$HOST:$admin/readyz" >/dev/null 2>&1 &&
       [ "$(rcli "$port" PING 2>/dev/null)" = PONG ]; then
      return 0
    fi
    kill -0 "${PID[$t]}" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

needs() { [[ " $TARGETS " == *" $1 "* || " $TARGETS " == *" $1-unix "* ]]; }
needs haproxy && start_haproxy haproxy "$HAPROXY_PORT" "" ""
# Zero-copy forwarding (splice(2) through a pipe, both directions): what an L4 proxy gains
# when it never copies the bytes into user space.
# (Each spliced connection holds a pipe, two fds: maxpipes keeps them inside the fd limit.)
needs haproxy-splice && start_haproxy haproxy-splice "$SPLICE_PORT" "    maxpipes 1000" \
  "$(printf '    option splice-request\n    option splice-response')"
needs twemproxy && start_twemproxy
for t in $TARGETS; do
  case $t in
    direct|direct-unix|haproxy|haproxy-unix|haproxy-splice|haproxy-splice-unix|twemproxy|twemproxy-unix) ;;
    redis-pair-unix)
      [[ " $TARGETS " == *" redis-pair "* ]] ||
        start_pair redis-pair "$PAIR_PORT" "$PAIR_ADMIN" "${PAIR_ARGS:-}" "$PAIR_BIN" ||
        die "redis-pair did not become ready (see $OUT/redis-pair.log)" ;;
    redis-pair|redis-pair-alt)
      if [ "$t" = redis-pair ]; then ok=0; start_pair "$t" "$PAIR_PORT" "$PAIR_ADMIN" "${PAIR_ARGS:-}" "$PAIR_BIN" || ok=$?
      else ok=0; start_pair "$t" "$ALT_PORT" "$ALT_ADMIN" "${PAIR_ALT_ARGS:-}" "${PAIR_ALT_BIN:-$PAIR_BIN}" || ok=$?; fi
      if [ "$ok" != 0 ]; then
        [ "${REQUIRE_PAIR:-0}" = 1 ] && { tail -20 "$OUT/$t.log" >&2; die "$t did not become ready"; }
        log "warning: $t did not become ready (see $OUT/$t.log): skipping it"
        tail -5 "$OUT/$t.log" >&2 || true
        TARGETS=$(echo " $TARGETS " | sed "s/ $t / /")
      fi ;;
    *) die "unknown target $t" ;;
  esac
done
sleep 1
: >"$OUT/rss_idle.tsv"
for t in $TARGETS; do
  [[ $t == direct* ]] && continue
  printf '%s\tstart\t%s\n' "$t" "$(rss_kb "${PID[$t]}")" >>"$OUT/rss_idle.tsv"
done

# --- the runs ---------------------------------------------------------------------------------
printf 'round\tworkload\ttarget\ttest\trps\tp50_ms\tp99_ms\tcpu_s_per_M\trss_peak_kb\tredis_cpu_s_per_M\tmachine_cpu_s_per_M\tidle_pct\n' >"$OUT/results.tsv"
read -ra TLIST <<<"$TARGETS"
NT=${#TLIST[@]}

run_one() { # round workload target
  local round=$1 wl=$2 t=$3 c p d
  IFS=- read -r c p d <<<"$wl"; c=${c#c}; p=${p#P}; d=${d#d}
  local pid=${PID[$t]} base="$OUT/r$1-$2-$3"
  local t0 t1 spid rc=0 r0 r1 m0 m1 mb0 mi0 mb1 mi1
  t0=$(cpu_ticks "$pid")
  r0=$(( $(cpu_ticks "$MASTER_PID") + $(cpu_ticks "$REPLICA_PID") ))
  m0=$(machine_jiffies)
  ( while :; do rss_kb "$pid"; sleep 0.1; done ) >"$base.rss" 2>/dev/null &
  spid=$!; BENCH_PIDS+=("$spid")
  # shellcheck disable=SC2086
  redis-benchmark ${CONN[$t]} -t set,get -n "$N" -c "$c" -P "$p" -d "$d" --csv \
    >"$base.csv" 2>"$base.err" || rc=$?
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
  t1=$(cpu_ticks "$pid")
  r1=$(( $(cpu_ticks "$MASTER_PID") + $(cpu_ticks "$REPLICA_PID") ))
  m1=$(machine_jiffies)
  local cpu rss rcpu mcpu idle
  cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$N" 'BEGIN{printf "%.3f", (b-a)/hz/(2*n)*1e6}')
  rcpu=$(awk -v a="$r0" -v b="$r1" -v hz="$CLK_TCK" -v n="$N" 'BEGIN{printf "%.3f", (b-a)/hz/(2*n)*1e6}')
  # Busy time of the whole machine per request (client, both Redis servers, the proxy and
  # anything else), and how idle the CPUs were: near 0 % idle, the run was CPU-bound.
  read -r mb0 mi0 <<<"$m0"; read -r mb1 mi1 <<<"$m1"
  mcpu=$(awk -v a="$mb0" -v b="$mb1" -v hz="$CLK_TCK" -v n="$N" 'BEGIN{printf "%.3f", (b-a)/hz/(2*n)*1e6}')
  idle=$(awk -v b=$((mb1 - mb0)) -v i=$((mi1 - mi0)) 'BEGIN{printf "%.1f", (b+i) ? 100*i/(b+i) : 0}')
  rss=$(sort -n "$base.rss" | tail -1); rss=${rss:-0}
  if [ $rc -ne 0 ] || ! grep -q '^"SET"' "$base.csv"; then
    log "  $wl $t: redis-benchmark failed (rc=$rc): $(tr '\n' ' ' <"$base.err" | cut -c1-200)"
    printf '%s\t%s\t%s\tSET\tNA\tNA\tNA\t%s\t%s\t%s\t%s\t%s\n' "$round" "$wl" "$t" "$cpu" "$rss" "$rcpu" "$mcpu" "$idle" >>"$OUT/results.tsv"
    return
  fi
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  tr -d '"' <"$base.csv" | awk -F, -v r="$round" -v w="$wl" -v t="$t" -v cpu="$cpu" -v rss="$rss" \
    -v rcpu="$rcpu" -v mcpu="$mcpu" -v idle="$idle" \
    'NR>1 {printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, w, t, $1, $2, $5, $7, cpu, rss, rcpu, mcpu, idle}' \
    >>"$OUT/results.tsv"
  log "  $wl $(printf '%-10s' "$t") $(tr -d '"' <"$base.csv" | awk -F, 'NR>1{printf "%s %.0f/s p50 %s p99 %s   ", $1, $2, $5, $7}')cpu ${cpu}s/M rss ${rss}kB redis ${rcpu}s/M all ${mcpu}s/M idle ${idle}%"
}

# Other load on the machine skews everything: keep a record of who used the CPUs.
( while :; do date +%T; top -bn1 -o %CPU | sed -n '7,14p'; sleep 20; done ) >"$OUT/top.log" 2>&1 &
BENCH_PIDS+=("$!")
START=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS"
  wi=0
  for wl in $WORKLOADS; do
    # rotate the target order per round and workload so no target always goes first
    for k in $(seq 0 $((NT - 1))); do
      run_one "$round" "$wl" "${TLIST[$(( (k + round + wi) % NT ))]}"
      sleep 0.3
    done
    wi=$((wi + 1))
  done
done
log "runs took $(( $(date +%s) - START )) s"
sleep 2
for t in $TARGETS; do
  [[ $t == direct* ]] && continue
  printf '%s\tafter\t%s\n' "$t" "$(rss_kb "${PID[$t]}")" >>"$OUT/rss_idle.tsv"
done

# --- the table --------------------------------------------------------------------------------
python3 "$BENCH_DIR/proxy_table.py" "$OUT" | tee "$OUT/table.md"
log "results in $OUT"
