#!/usr/bin/env bash
# Failover time and loss benchmark (issue 3): `redis-pair local` vs Redis Sentinel, same run.
#
# A writer (examples/failover_writer.rs) sends one acknowledged SET every 10 ms, through
# redis-pair's proxy, or straight to the master that Sentinel names (asking Sentinel again on
# every reconnect). Faults, each for ROUNDS rounds, interleaved between the two systems:
#   kill        kill -9 the master
#   stop        SIGSTOP the master (hung); SIGCONT it once writes flow again
#   switchover  planned: redis-pair POST /switchover; Sentinel `SENTINEL FAILOVER`
# Measured per round: time from the fault to the ack of the first write sent after it, the
# longest pause between two acks, and the acknowledged writes the final master lacks.
# Between rounds the topology is reset: the killed server is restarted as a replica of the new
# master, and the run waits until the system under test sees both servers healthy.
#
#   bench/failover.sh              10 rounds of each fault for each system (about 8-10 min)
#   QUICK=1 bench/failover.sh      3 rounds
# Knobs: ROUNDS, SYSTEMS="redis-pair sentinel", FAULTS="kill stop switchover",
#   DOWN_AFTER_MS=1000 (redis-pair --down-after and Sentinel down-after-milliseconds),
#   FAILOVER_TIMEOUT_MS=2000 (Sentinel), PAIR_ARGS (extra redis-pair local flags),
#   WRITER_ARGS (extra writer flags, e.g. --response-timeout-ms 200), BASE_PORT (17200),
#   SKIP_BUILD=1, REQUIRE_PAIR=1, WRITER (a built failover_writer; default: cargo build it).
# Output: a table on stdout; bench/out/failover-<time>/{results.tsv,table.md,logs}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ "${QUICK:-0}" = 1 ]; then ROUNDS=${ROUNDS:-3}; else ROUNDS=${ROUNDS:-10}; fi
SYSTEMS=${SYSTEMS:-"redis-pair sentinel"}
FAULTS=${FAULTS:-"kill stop switchover"}
DOWN_AFTER_MS=${DOWN_AFTER_MS:-1000}
FAILOVER_TIMEOUT_MS=${FAILOVER_TIMEOUT_MS:-2000}
RECOVERY_LIMIT_S=${RECOVERY_LIMIT_S:-20}
SETTLE_LIMIT_S=${SETTLE_LIMIT_S:-20}
BASE_PORT=${BASE_PORT:-17200}
P_A=$((BASE_PORT + 1)) P_B=$((BASE_PORT + 2))            # redis-pair's pair
PAIR_PORT=$((BASE_PORT + 10)) PAIR_ADMIN=$((BASE_PORT + 11))
S_A=$((BASE_PORT + 21)) S_B=$((BASE_PORT + 22))          # Sentinel's pair
SENT_PORTS="$((BASE_PORT + 31)) $((BASE_PORT + 32)) $((BASE_PORT + 33))"
SENT_LIST=$(for p in $SENT_PORTS; do printf '%s:%s,' "$HOST" "$p"; done); SENT_LIST=${SENT_LIST%,}
# Both writers use the same timeouts: a hung server is noticed after the response timeout.
WRITER_TIMEOUTS="--connect-timeout-ms 100 --response-timeout-ms 250"

OUT=${OUT:-$BENCH_DIR/out/failover-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

# --- prerequisites --------------------------------------------------------------------------
ensure_tools redis-server redis-server redis-cli redis-tools redis-sentinel redis-sentinel \
  python3 python3 curl curl jq jq
raise_fd_limit
build_writer
if [[ " $SYSTEMS " == *" redis-pair "* ]]; then
  if ! build_pair; then
    [ "${REQUIRE_PAIR:-0}" = 1 ] && die "redis-pair does not build or has no 'local' subcommand"
    log "warning: redis-pair does not build or has no 'local' subcommand: skipping it"
    SYSTEMS=${SYSTEMS//redis-pair/}
  fi
fi
machine_info | tee "$OUT/machine.txt" >&2
echo "ROUNDS=$ROUNDS SYSTEMS=$SYSTEMS FAULTS=$FAULTS DOWN_AFTER_MS=$DOWN_AFTER_MS FAILOVER_TIMEOUT_MS=$FAILOVER_TIMEOUT_MS PAIR_ARGS=${PAIR_ARGS:-} WRITER=$WRITER_TIMEOUTS ${WRITER_ARGS:-}" \
  | tee "$OUT/params.txt" >&2

declare -A SRV_PID
srv_start() { # port [replicaof_port]
  local extra=()
  [ -n "${2:-}" ] && extra=(--replicaof "$HOST" "$2")
  # appendonly no, save "": as the proxy bench; a restarted server starts empty and full-syncs.
  start_redis "$1" "$OUT/redis" "${extra[@]}"
  SRV_PID[$1]=$(eval echo "\$REDIS_PID_$1")
}
other() { [ "$1" = "$2" ] && echo "$3" || echo "$2"; } # other PORT A B

# --- redis-pair -------------------------------------------------------------------------------
pair_status() { curl -fsS -m 1 "http://$HOST:$PAIR_ADMIN/status" 2>/dev/null; }
pair_master_port() { pair_status | jq -r '.master // "none"' | sed 's/.*://'; }
pair_healthy() { # both up, one master published, the other a linked replica
  local st; st=$(pair_status) || return 1
  echo "$st" | jq -e '.master != null and ([.servers[] | select(.health == "up")] | length) == 2
    and ([.servers[] | select(.role == "replica" and .link_up == true)] | length) == 1' >/dev/null
}
start_pair_system() {
  srv_start "$P_A"; srv_start "$P_B" "$P_A"
  wait_replica_synced "$P_B" || die "replica $P_B did not sync"
  # shellcheck disable=SC2086
  "$PAIR_BIN" local --listen "$HOST:$PAIR_PORT" --admin-listen "$HOST:$PAIR_ADMIN" \
    --server "$HOST:$P_A" --server "$HOST:$P_B" --down-after "${DOWN_AFTER_MS}ms" ${PAIR_ARGS:-} \
    >"$OUT/redis-pair.log" 2>&1 &
  PAIR_PID=$!; BENCH_PIDS+=("$PAIR_PID")
  wait_until 15 pair_healthy || { tail -20 "$OUT/redis-pair.log" >&2; return 1; }
}

# --- Sentinel ---------------------------------------------------------------------------------
sent() { local p=$1; shift; redis-cli -h "$HOST" -p "$p" "$@" 2>/dev/null; }
sent_master_port() { sent "${SENT_PORTS%% *}" SENTINEL get-master-addr-by-name mymaster | sed -n 2p; }
sentinel_healthy() { # all 3 agree on the real master; the replica is known, linked, not down
  local p m=""
  for p in $SENT_PORTS; do
    local mp; mp=$(sent "$p" SENTINEL get-master-addr-by-name mymaster | sed -n 2p)
    [ -n "$mp" ] || return 1
    [ -z "$m" ] && m=$mp
    [ "$mp" = "$m" ] || return 1
    sent "$p" SENTINEL ckquorum mymaster | grep -q '^OK' || return 1
    local r; r=$(sent "$p" SENTINEL replicas mymaster | tr '\n' ' ')
    [[ "$r" == *" flags slave "* ]] || return 1
    [[ "$r" == *"master-link-status ok"* ]] || return 1
  done
  [ "$(role_of "$m")" = master ] && wait_replica_synced "$(other "$m" "$S_A" "$S_B")" 1
}
start_sentinel_system() {
  srv_start "$S_A"; srv_start "$S_B" "$S_A"
  wait_replica_synced "$S_B" || die "replica $S_B did not sync"
  local p
  for p in $SENT_PORTS; do
    cat >"$OUT/sentinel-$p.conf" <<EOF
port $p
bind $HOST
daemonize no
protected-mode no
dir $OUT
logfile $OUT/sentinel-$p.log
sentinel monitor mymaster $HOST $S_A 2
sentinel down-after-milliseconds mymaster $DOWN_AFTER_MS
sentinel failover-timeout mymaster $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs mymaster 1
EOF
    redis-sentinel "$OUT/sentinel-$p.conf" &
    BENCH_PIDS+=("$!")
    wait_port "$p" || die "sentinel $p did not start"
  done
  wait_until 20 sentinel_healthy
}

# --- one round --------------------------------------------------------------------------------
printf 'system\tfault\tround\trecovery_ms\tmax_gap_ms\tacked\tfailed\tlost_pre\tlost_all\top_ms\tsettle_ms\tnote\n' >"$OUT/results.tsv"
LAST_SENTINEL_FAILOVER=0

settled() { # a b: one master, the other a replica of it
  local ra rb; ra=$(role_of "$1"); rb=$(role_of "$2")
  { [ "$ra" = master ] && [ "$rb" = slave ]; } || { [ "$ra" = slave ] && [ "$rb" = master ]; }
}

run_round() { # system fault round
  local sys=$1 fault=$2 round=$3 a b master new note="" op_ms=NA
  if [ "$sys" = redis-pair ]; then
    a=$P_A b=$P_B
    wait_until 20 pair_healthy || { note="not healthy before round;"; log "  $sys: not healthy: $(pair_status)"; }
    master=$(pair_master_port)
  else
    a=$S_A b=$S_B
    # Sentinel will not fail the same master over again within 2 x failover-timeout.
    local wait_ms=$(( LAST_SENTINEL_FAILOVER + 2 * FAILOVER_TIMEOUT_MS * 1000000 + 500000000 - $(date +%s%N) ))
    [ "$wait_ms" -gt 0 ] && sleep "$(awk -v n="$wait_ms" 'BEGIN{print n/1e9}')"
    wait_until 30 sentinel_healthy || note="not healthy before round;"
    master=$(sent_master_port)
  fi
  local replica; replica=$(other "$master" "$a" "$b")
  local prefix="fo:$sys:$fault:$round:" wlog="$OUT/writer-$sys-$fault-$round.log"
  local target_args
  if [ "$sys" = redis-pair ]; then target_args=(--addr "$HOST:$PAIR_PORT")
  else target_args=(--sentinel "$SENT_LIST" --master-name mymaster); fi
  # shellcheck disable=SC2086
  "$WRITER" "${target_args[@]}" --prefix "$prefix" --interval-ms 10 $WRITER_TIMEOUTS \
    ${WRITER_ARGS:-} --duration-s 120 --log "$wlog" &
  local wpid=$!; BENCH_PIDS+=("$wpid")
  sleep 1.5

  # t_fault: just before the signal; t_sent_after: just after it. Recovery counts from t_fault to
  # the ack of the first write *sent* after t_sent_after, which the old master cannot have served.
  local t_fault=${EPOCHREALTIME//[.,]/}000 t_sent_after
  case $fault in
    kill) kill -KILL "${SRV_PID[$master]}" ;;
    stop) kill -STOP "${SRV_PID[$master]}" ;;
    switchover)
      if [ "$sys" = redis-pair ]; then
        curl -sS -m 30 -X POST -o "$OUT/switchover-$round.json" -w '%{http_code}' \
          "http://$HOST:$PAIR_ADMIN/switchover" >"$OUT/switchover-$round.code" 2>&1 || true
        note+="POST $(cat "$OUT/switchover-$round.code") $(head -c 120 "$OUT/switchover-$round.json" 2>/dev/null | tr -d '\n');"
      else
        sent "${SENT_PORTS%% *}" SENTINEL FAILOVER mymaster >"$OUT/switchover-s-$round.txt" || true
        note+="FAILOVER $(tr -d '\n' <"$OUT/switchover-s-$round.txt");"
      fi
      op_ms=$(( ($(now_ns) - t_fault) / 1000000 )) ;;
  esac
  t_sent_after=${EPOCHREALTIME//[.,]/}000

  # wait until writes flow again (a write sent after the fault was acknowledged)
  if ! wait_until "$RECOVERY_LIMIT_S" first_ack_after "$wlog" "$t_sent_after"; then
    note+="no write acked within ${RECOVERY_LIMIT_S}s;"
  fi
  [ "$sys" = sentinel ] && LAST_SENTINEL_FAILOVER=$(now_ns)
  if [ "$fault" = switchover ]; then
    # the switchover must have moved the master
    wait_until 10 eval '[ "$( [ "$sys" = redis-pair ] && pair_master_port || sent_master_port )" = "$replica" ]' \
      || note+="master did not move;"
  fi
  sleep 1

  # bring the old master back
  case $fault in
    kill) srv_start "$master" "$replica" ;;
    stop) kill -CONT "${SRV_PID[$master]}" ;;
  esac
  # Writes go on until the topology has settled: exactly one master, the other its replica (a
  # SIGCONTed or switched-over old master must be demoted by the system under test).
  local t_back; t_back=$(now_ns)
  if ! wait_until "$SETTLE_LIMIT_S" settled "$a" "$b"; then
    note+="old master not demoted within ${SETTLE_LIMIT_S}s (demoted by hand);"
    local nm; nm=$( [ "$sys" = redis-pair ] && pair_master_port || sent_master_port )
    rcli "$(other "$nm" "$a" "$b")" REPLICAOF "$HOST" "$nm" >/dev/null || true
  fi
  local settle_ms=$(( ($(now_ns) - t_back) / 1000000 ))
  sleep 1.5
  kill -TERM "$wpid" 2>/dev/null || true
  wait "$wpid" 2>/dev/null || true

  # the final master: who the system publishes; flag a split brain
  local fm
  if [ "$sys" = redis-pair ]; then fm=$(pair_master_port); else fm=$(sent_master_port); fi
  if [ "$(role_of "$a")" = master ] && [ "$(role_of "$b")" = master ]; then note+="two masters at the end;"; fi
  [[ "$fm" =~ ^[0-9]+$ ]] || { note+="no master published at the end;"; fm=$replica; }
  rcli "$fm" --scan --pattern "${prefix}*" >"$OUT/keys-$sys-$fault-$round.txt" 2>/dev/null || true
  local res; res=$(python3 "$BENCH_DIR/failover_analyze.py" "$wlog" "$t_fault" "$t_sent_after" "$prefix" "$OUT/keys-$sys-$fault-$round.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$fault" "$round" "$res" "$op_ms" "$settle_ms" "${note:--}" >>"$OUT/results.tsv"
  log "  $(printf '%-10s %-10s' "$sys" "$fault") round $round: recovery_ms max_gap_ms acked failed lost_pre lost_all = $(echo "$res" | tr '\t' ' ') op_ms=$op_ms settle_ms=$settle_ms ${note}"

  # wait for the restarted server to sync before the next round
  wait_replica_synced "$master" 20 || log "  $master did not resync"
}

# --- main -------------------------------------------------------------------------------------
for sys in $SYSTEMS; do
  case $sys in
    redis-pair)
      if ! start_pair_system; then
        [ "${REQUIRE_PAIR:-0}" = 1 ] && die "redis-pair did not become healthy"
        log "warning: redis-pair did not become healthy (see $OUT/redis-pair.log): skipping it"
        SYSTEMS=${SYSTEMS//redis-pair/}
      fi ;;
    sentinel) start_sentinel_system || die "sentinels did not become healthy" ;;
    *) die "unknown system $sys" ;;
  esac
done

START=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS"
  for fault in $FAULTS; do
    for sys in $SYSTEMS; do
      run_round "$sys" "$fault" "$round"
    done
  done
done
log "rounds took $(( $(date +%s) - START )) s"
python3 "$BENCH_DIR/failover_table.py" "$OUT" | tee "$OUT/table.md"
log "results in $OUT"
