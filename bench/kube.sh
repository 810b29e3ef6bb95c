#!/usr/bin/env bash
# The Kubernetes benchmark (issue 10): redis-pair's controller and sidecars against the
# project's test API server, with Redis "pods" that are real redis-servers on loopback
# addresses of their own (127.0.10.2, 127.0.20.1, ...) and Pod objects carrying those IPs.
# No cluster, so no Redis operator can run here; the peers are measured by bench/failover.sh.
#
# Parts (PARTS, in this order):
#   failover  two Redis pods, two controllers (as deployed: one leads), three sidecars, one
#             examples/failover_writer per sidecar (one SET every 10 ms, every ack logged).
#             Faults, ROUNDS rounds each, interleaved:
#               kill    kill -9 of the master's redis-server; it is restarted empty, as a
#                       container restart would, and the controller makes it a replica
#               delete  graceful deletion of the master pod: DELETE, then this script plays the
#                       kubelet: it waits until the master was handed over (the annotation
#                       moved) or PRESTOP_S passed, SIGTERMs redis-server and DELETEs the pod
#                       with gracePeriodSeconds=0; then the pod is created again (same name
#                       and IP, an empty redis-server), as its StatefulSet would
#             Per round and sidecar: time from the fault to the ack of the first write sent
#             after it, the longest pause between acks, and the acknowledged writes the final
#             master lacks (bench/failover_analyze.py). Also when the leader published the new
#             master (its log) and when each sidecar routed to it (the sidecar's log).
#             Before the rounds and after them: CPU and RSS of the idle sidecars and controllers.
#   peers     bench/failover.sh SYSTEMS="redis-pair sentinel" FAULTS=kill, ROUNDS rounds, in
#             this run: Redis Sentinel and redis-pair local, for the ratios; then local mode's
#             planned switchover (SYSTEMS=redis-pair FAULTS=switchover) beside the pod deletion.
#   pairs     PAIRS pairs (2 x PAIRS redis-servers, each pod on an address of its own) under
#             two fresh controllers: time until all are Healthy, the controllers' idle CPU and
#             RSS over IDLE_S, then KILL_PAIRS masters killed at once (kill -9), each pair
#             written through a sidecar of its own: time until every one takes writes again.
#
#   bench/kube.sh             10 rounds, 50 pairs, 30 s idle windows (about 8 min)
#   QUICK=1 bench/kube.sh     3 rounds, 10 s idle windows (about 3 min)
# Knobs: ROUNDS, FAULTS="kill delete", PARTS="failover peers pairs", PAIRS=50, KILL_PAIRS=10,
#   IDLE_S (30, QUICK 10), PRESTOP_S=5 (the kubelet's longest wait before SIGTERM),
#   PAIR_SPEC (JSON merged into every RedisPair's spec, e.g. '{"failover":{"probeInterval":
#   "200ms"}}'; default: the CRD's defaults), SIDECAR_ARGS / CONTROLLER_ARGS (extra flags),
#   PEER_SYSTEMS="redis-pair sentinel", PEER_SWITCHOVER=1 (also local mode's planned switchover,
#   beside the pod deletion), BASE_PORT=17400 (bench/failover.sh keeps its own 17200),
#   SKIP_BUILD=1, PAIR_BIN, APISERVER_BIN, WRITER (a built failover_writer).
# Output: a table on stdout; bench/out/kube-<time>/{results.tsv,footprint.tsv,summary.tsv,
#   table.md,machine.txt,top.log,logs}, bench/failover.sh's own output under peers/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ "${QUICK:-0}" = 1 ]; then ROUNDS=${ROUNDS:-3} IDLE_S=${IDLE_S:-10}; else ROUNDS=${ROUNDS:-10} IDLE_S=${IDLE_S:-30}; fi
FAULTS=${FAULTS:-"kill delete"}
PARTS=${PARTS:-"failover peers pairs"}
PAIRS=${PAIRS:-50}
KILL_PAIRS=${KILL_PAIRS:-10}
PRESTOP_S=${PRESTOP_S:-5}
PAIR_SPEC=${PAIR_SPEC:-'{}'}
PEER_SYSTEMS=${PEER_SYSTEMS:-"redis-pair sentinel"}
RECOVERY_LIMIT_S=${RECOVERY_LIMIT_S:-20}
SETTLE_LIMIT_S=${SETTLE_LIMIT_S:-30}
APISERVER_BIN=${APISERVER_BIN:-$REPO_DIR/target/release/test-apiserver}
BASE_PORT=${BASE_PORT:-17400}
if [ "$PAIRS" -gt 250 ] || [ "$KILL_PAIRS" -gt "$PAIRS" ] || [ "$KILL_PAIRS" -gt 99 ]; then
  die "PAIRS must be at most 250 and KILL_PAIRS at most PAIRS and 99"
fi

API_PORT=$((BASE_PORT + 1))
API=http://$HOST:$API_PORT
# failover part: the pods' addresses, their port, controllers, sidecars (listen, admin)
FO_NS=bench FO_PAIR=cache FO_PORT=$((BASE_PORT + 10))
FO_IPS=(127.0.10.2 127.0.10.3)
FO_CTL_ADMIN=($((BASE_PORT + 11)) $((BASE_PORT + 12)))
SIDECARS=3
sc_port() { echo $((BASE_PORT + 20 + $1)); }
sc_admin() { echo $((BASE_PORT + 30 + $1)); }
# pairs part: pair n has pods p<n>-0 on 127.0.20.n and p<n>-1 on 127.0.21.n, all on one port
PR_NS=bench50 PR_PORT=$((BASE_PORT + 40))
PR_CTL_ADMIN=($((BASE_PORT + 41)) $((BASE_PORT + 42)))
pr_sc_port() { echo $((BASE_PORT + 100 + $1)); }
pr_sc_admin() { echo $((BASE_PORT + 200 + $1)); }
WRITER_TIMEOUTS="--connect-timeout-ms 100 --response-timeout-ms 250"   # as bench/failover.sh

OUT=${OUT:-$BENCH_DIR/out/kube-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/redis" "$OUT/writers"
export KUBECONFIG=$OUT/kubeconfig

# --- prerequisites --------------------------------------------------------------------------
ensure_tools redis-server redis-server redis-cli redis-tools redis-sentinel redis-sentinel \
  python3 python3 curl curl jq jq
raise_fd_limit
build_writer
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --workspace (redis-pair, test-apiserver)"
  (cd "$REPO_DIR" && cargo build --release --workspace 2>&1 | tail -3) >&2
fi
"$PAIR_BIN" controller --help >/dev/null 2>&1 || die "$PAIR_BIN does not run or has no controller"
[ -x "$APISERVER_BIN" ] || die "no test API server at $APISERVER_BIN"
{
  machine_info
  echo "binaries: $PAIR_BIN, $APISERVER_BIN (built $(date -r "$APISERVER_BIN" +%FT%T)), writer $WRITER"
  echo "uptime at start: $(uptime)"
  echo "top at start:"; top -bn1 -o %CPU | sed -n '7,14p'
} | tee "$OUT/machine.txt" >&2
echo "ROUNDS=$ROUNDS FAULTS=$FAULTS PARTS=$PARTS PAIRS=$PAIRS KILL_PAIRS=$KILL_PAIRS IDLE_S=$IDLE_S PRESTOP_S=$PRESTOP_S PAIR_SPEC=$PAIR_SPEC SIDECAR_ARGS=${SIDECAR_ARGS:-} CONTROLLER_ARGS=${CONTROLLER_ARGS:-} WRITER=$WRITER $WRITER_TIMEOUTS" \
  | tee "$OUT/params.txt" >&2
# What else ran on the two cores: top every 20 s.
# shellcheck disable=SC2064,SC2016
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  while :; do date +%T; top -bn1 -o %CPU | sed -n '7,14p'; sleep 20 & s=$!; wait "$s"; done ) >"$OUT/top.log" 2>&1 &
BENCH_PIDS+=("$!")

forget_pid() { # a process that is gone: cleanup must not signal its (reusable) pid
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}
gone() { [ ! -e "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
# A tracing log line's timestamp (RFC 3339, UTC) in unix ns.
log_ns() { date -d "$1" +%s%N; }

# --- the API server -------------------------------------------------------------------------
api() { # METHOD PATH [JSON body] [content type]: the response body; fails on HTTP >= 400
  local args=(-sS -m 10 -X "$1" -H "Content-Type: ${4:-application/json}")
  [ -n "${3:-}" ] && args+=(--data-binary "$3")
  curl --fail-with-body "${args[@]}" "$API$2"
}
pair_path() { echo "/apis/redispair.io/v1alpha1/namespaces/$1/redispairs/$2"; }
pod_path() { echo "/api/v1/namespaces/$1/pods/$2"; }
start_apiserver() {
  port_free "$API_PORT" || die "port $API_PORT is in use"
  "$APISERVER_BIN" --listen "$HOST:$API_PORT" --kubeconfig "$KUBECONFIG" >"$OUT/apiserver.log" 2>&1 &
  APISERVER_PID=$!; BENCH_PIDS+=("$APISERVER_PID")
  wait_port "$API_PORT" 10 || die "the test API server did not start (see $OUT/apiserver.log)"
  # The CRD as `redis-pair crd` writes it, by server-side apply (the test API server reads
  # YAML there; a POST takes JSON only).
  api PATCH "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/redispairs.redispair.io?fieldManager=bench-kube" \
    "@$REPO_DIR/crds/redispair.yaml" application/apply-patch+yaml >/dev/null
  local ns
  for ns in "$FO_NS" "$PR_NS"; do
    api POST /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}" >/dev/null
  done
  wait_until 10 api GET "/apis/redispair.io/v1alpha1/namespaces/$FO_NS/redispairs" >/dev/null \
    || die "RedisPairs are not served"
}

# --- Redis pods -----------------------------------------------------------------------------
declare -A POD_PID   # by "ns/name"
wait_addr() { # ip port timeout_s
  local i
  for i in $(seq 1 $(( $3 * 20 ))); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
start_pod_redis() { # ns name ip port: the pod's container, an empty redis-server
  local ns=$1 name=$2 ip=$3 port=$4
  ! (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null || die "$ip:$port is in use"
  redis-server --port "$port" --bind "$ip" --save "" --appendonly no --dir "$OUT/redis" \
    --dbfilename "$ns-$name.rdb" --logfile "$OUT/redis/$ns-$name.log" --daemonize no \
    --protected-mode no --repl-diskless-sync-delay 0 &
  local pid=$!
  disown "$pid"   # kill -9 is part of the bench: no "Killed" job notices
  BENCH_PIDS+=("$pid")
  POD_PID[$ns/$name]=$pid
  wait_addr "$ip" "$port" 10 || die "redis-server $ns/$name on $ip:$port did not start"
}
create_pod_object() { # ns name app ip port: created, then Running and Ready at ip, as a kubelet reports
  local ns=$1 name=$2 app=$3 ip=$4 port=$5
  api POST "/api/v1/namespaces/$ns/pods" "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",
    \"metadata\":{\"name\":\"$name\",\"labels\":{\"app\":\"$app\"}},
    \"spec\":{\"nodeName\":\"bench-node\",\"terminationGracePeriodSeconds\":$((PRESTOP_S + 10)),
      \"containers\":[{\"name\":\"redis\",\"image\":\"redis:7.2\",\"ports\":[{\"containerPort\":$port}]}]}}" >/dev/null
  api PATCH "$(pod_path "$ns" "$name")/status" "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$ip\",
    \"podIPs\":[{\"ip\":\"$ip\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}],
    \"containerStatuses\":[{\"name\":\"redis\",\"ready\":true,\"restartCount\":0,\"image\":\"redis:7.2\",
      \"imageID\":\"\",\"state\":{\"running\":{}}}]}}" application/merge-patch+json >/dev/null
}
create_pair() { # ns name port
  local spec
  spec=$(jq -cn --arg app "$2" --argjson port "$3" --argjson extra "$PAIR_SPEC" \
    '{selector: {matchLabels: {app: $app}}, port: $port} * $extra')
  api POST "/apis/redispair.io/v1alpha1/namespaces/$1/redispairs" \
    "{\"apiVersion\":\"redispair.io/v1alpha1\",\"kind\":\"RedisPair\",\"metadata\":{\"name\":\"$2\"},\"spec\":$spec}" >/dev/null
}
published() { # ns pair: "ENDPOINT EPOCH" from the annotations
  api GET "$(pair_path "$1" "$2")" | jq -r '"\(.metadata.annotations["redispair.io/active"] // "") \(.metadata.annotations["redispair.io/epoch"] // 0)"'
}
kill_pod_redis() { # ns name signal: and wait until the process is gone
  local pid=${POD_PID[$1/$2]}
  kill "-$3" "$pid" 2>/dev/null || true
  wait_until 15 gone "$pid" || log "  redis-server $1/$2 ($pid) did not exit on SIG$3"
  forget_pid "$pid"
}

# --- controllers and sidecars ---------------------------------------------------------------
start_controller() { # identity admin_port namespace lease_name
  # shellcheck disable=SC2086
  RUST_LOG=info "$PAIR_BIN" controller --identity "$1" --admin-listen "$HOST:$2" --namespace "$3" \
    --lease-namespace "$3" --lease-name "$4" ${CONTROLLER_ARGS:-} >"$OUT/controller-$1.log" 2>&1 &
  local pid=$!; BENCH_PIDS+=("$pid")
  eval "CTL_PID_$2=$pid"
  wait_until 20 curl -fs -m 1 -o /dev/null "http://$HOST:$2/readyz" \
    || die "controller $1 not ready (see $OUT/controller-$1.log)"
}
ctl_pid() { eval echo "\$CTL_PID_$1"; }
is_leader() { curl -fsS -m 1 "http://$HOST:$1/status" 2>/dev/null | jq -e '.leader == true' >/dev/null; }
leader_of() { # admin ports...: the one that leads
  local p
  for p in "$@"; do is_leader "$p" && { echo "$p"; return 0; }; done
  return 1
}
metric_sum() { # admin_port prefix: the sum of the series whose name and labels start with it
  curl -fsS -m 2 "http://$HOST:$1/metrics" | awk -v p="$2" '$0 !~ /^#/ && index($1, p) == 1 {s += $2} END {printf "%d\n", s}'
}
start_sidecar() { # name ns pair listen admin
  # shellcheck disable=SC2086
  RUST_LOG=info "$PAIR_BIN" proxy --pair "$3" --namespace "$2" --listen "$HOST:$4" \
    --admin-listen "$HOST:$5" ${SIDECAR_ARGS:-} >"$OUT/sidecar-$1.log" 2>&1 &
  local pid=$!; BENCH_PIDS+=("$pid")
  eval "SC_PID_$5=$pid"
}
sc_pid() { eval echo "\$SC_PID_$1"; }
sidecar_on() { # admin endpoint: ready and routing to endpoint
  curl -fs -m 1 -o /dev/null "http://$HOST:$1/readyz" \
    && [ "$(curl -fsS -m 1 "http://$HOST:$1/status" 2>/dev/null | jq -r '.master // ""')" = "$2" ]
}
# The first line of a log matching a pattern whose timestamp is after t_ns, as unix ns.
first_log_after() { # file t_ns pattern
  local line ts
  while IFS= read -r line; do
    ts=${line%% *}
    [ "$(log_ns "$ts")" -gt "$2" ] && { log_ns "$ts"; return 0; }
  done < <(grep -E "$3" "$1" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g')
  echo NA
}

# --- CPU and RSS windows --------------------------------------------------------------------
printf 'key\tvalue\n' >"$OUT/summary.tsv"
summary() { printf '%s\t%s\n' "$1" "$2" >>"$OUT/summary.tsv"; log "  $1 = $2"; }
printf 'part\tprocess\tphase\twindow_s\tcpu_ticks\tcpu_pct\trss_kb\trss_anon_kb\thwm_kb\tnote\n' >"$OUT/footprint.tsv"
# A group of processes, "pid,pid,...": CPU ticks and /proc status fields (kB) summed.
group_ticks() { local p s=0; for p in ${1//,/ }; do s=$(( s + $(cpu_ticks "$p") )); done; echo "$s"; }
group_status() { # field pids
  local p s=0 v
  for p in ${2//,/ }; do v=$(awk -v f="$1:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null); s=$(( s + ${v:-0} )); done
  echo "$s"
}
# measure_idle PART PHASE SECONDS name=pid[,pid...]...: CPU over the window, RSS at its end (all of it,
# and the anonymous part: heap and stacks, what no other process shares), peak RSS
measure_idle() {
  local part=$1 phase=$2 secs=$3; shift 3
  local -A t0
  local np m0 m1
  for np in "$@"; do t0[$np]=$(group_ticks "${np#*=}"); done
  m0=$(machine_jiffies)
  sleep "$secs"
  m1=$(machine_jiffies)
  local busy=$(( ${m1% *} - ${m0% *} )) idle=$(( ${m1#* } - ${m0#* } ))
  local machine_pct; machine_pct=$(awk -v b="$busy" -v i="$idle" 'BEGIN {printf "%.1f", 100 * b / (b + i)}')
  for np in "$@"; do
    local pid=${np#*=} ticks
    ticks=$(( $(group_ticks "$pid") - ${t0[$np]} ))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "${np%%=*}" "$phase" "$secs" "$ticks" \
      "$(awk -v t="$ticks" -v s="$secs" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", 100 * t / hz / s}')" \
      "$(group_status VmRSS "$pid")" "$(group_status RssAnon "$pid")" "$(group_status VmHWM "$pid")" \
      "machine busy ${machine_pct}% of both cores" >>"$OUT/footprint.tsv"
  done
  log "  $part $phase: ${secs}s window, machine busy ${machine_pct}%"
}

# --- part 1: failover through sidecars ------------------------------------------------------
printf 'system\tfault\tround\tsidecar\trecovery_ms\tmax_gap_ms\tacked\tfailed\tlost_pre\tlost_all\tpublished_ms\trouted_ms\thandover_ms\tsettle_ms\tnote\n' >"$OUT/results.tsv"

fo_healthy() { # the pair Healthy with its replica linked; every sidecar routes to the published master
  local pair active
  pair=$(api GET "$(pair_path "$FO_NS" "$FO_PAIR")" 2>/dev/null) || return 1
  active=$(jq -r '.metadata.annotations["redispair.io/active"] // ""' <<<"$pair")
  jq -e '.status.phase == "Healthy" and (.status.replicas | length) == 1 and all(.status.replicas[]; .linkUp)' \
    <<<"$pair" >/dev/null || return 1
  local i
  for i in $(seq 1 $SIDECARS); do sidecar_on "$(sc_admin "$i")" "$active" || return 1; done
}
fo_pod_of() { # endpoint: the pod name at it
  local ip=${1%:*} n
  for n in 0 1; do [ "${FO_IPS[$n]}" = "$ip" ] && { echo "redis-$n"; return 0; }; done
  return 1
}

start_failover_part() {
  log "failover: 2 Redis pods, 2 controllers, $SIDECARS sidecars"
  local n
  for n in 0 1; do
    start_pod_redis "$FO_NS" "redis-$n" "${FO_IPS[$n]}" "$FO_PORT"
    create_pod_object "$FO_NS" "redis-$n" "$FO_PAIR" "${FO_IPS[$n]}" "$FO_PORT"
  done
  create_pair "$FO_NS" "$FO_PAIR" "$FO_PORT"
  start_controller a "${FO_CTL_ADMIN[0]}" "$FO_NS" redis-pair-bench
  start_controller b "${FO_CTL_ADMIN[1]}" "$FO_NS" redis-pair-bench
  for n in $(seq 1 $SIDECARS); do start_sidecar "$n" "$FO_NS" "$FO_PAIR" "$(sc_port "$n")" "$(sc_admin "$n")"; done
  wait_until 60 fo_healthy || die "the pair did not become Healthy: $(api GET "$(pair_path "$FO_NS" "$FO_PAIR")" | jq -c .status)"
  FO_LEADER=$(leader_of "${FO_CTL_ADMIN[@]}") || die "no controller leads"
  FO_FOLLOWER=$([ "$FO_LEADER" = "${FO_CTL_ADMIN[0]}" ] && echo "${FO_CTL_ADMIN[1]}" || echo "${FO_CTL_ADMIN[0]}")
  log "  Healthy; master $(published "$FO_NS" "$FO_PAIR"); leader: the controller on :$FO_LEADER"
}

fo_footprint() { # phase
  local procs=() n
  for n in $(seq 1 $SIDECARS); do procs+=("sidecar-$n=$(sc_pid "$(sc_admin "$n")")"); done
  procs+=("controller-leader=$(ctl_pid "$FO_LEADER")" "controller-follower=$(ctl_pid "$FO_FOLLOWER")"
          "test-apiserver=$APISERVER_PID")
  local r0; r0=$(metric_sum "$(sc_admin 1)" 'redispair_sidecar_role_checks_total')
  measure_idle failover "$1" "$IDLE_S" "${procs[@]}"
  local r1; r1=$(metric_sum "$(sc_admin 1)" 'redispair_sidecar_role_checks_total')
  summary "sidecar_role_checks_in_window ($1)" "$((r1 - r0))"
}

fo_round() { # fault round
  local fault=$1 round=$2 note="" old old_epoch
  wait_until "$SETTLE_LIMIT_S" fo_healthy || note+="not healthy before the round;"
  read -r old old_epoch < <(published "$FO_NS" "$FO_PAIR")
  local pod; pod=$(fo_pod_of "$old") || die "the published master $old is no pod of ours"
  local i wpids=() wlogs=() prefixes=()
  for i in $(seq 1 $SIDECARS); do
    prefixes[i]="kube:$fault:$round:$i:" wlogs[i]="$OUT/writers/$fault-$round-$i.log"
    # shellcheck disable=SC2086
    "$WRITER" --addr "$HOST:$(sc_port "$i")" --prefix "${prefixes[i]}" --interval-ms 10 \
      $WRITER_TIMEOUTS --duration-s 300 --log "${wlogs[i]}" &
    wpids[i]=$!; BENCH_PIDS+=("${wpids[i]}")
  done
  fault_phase_sleep

  local t_fault t_sent_after handover_ms=NA
  t_fault=$(now_ns)
  case $fault in
    kill) kill -KILL "${POD_PID[$FO_NS/$pod]}" ;;
    delete) api DELETE "$(pod_path "$FO_NS" "$pod")" >/dev/null || note+="DELETE failed;" ;;
  esac
  t_sent_after=$(now_ns)
  if [ "$fault" = delete ]; then
    # The kubelet: the preStop delay, cut short once the master was handed over.
    local end=$(( t_fault + PRESTOP_S * 1000000000 )) now_active
    while [ "$(now_ns)" -lt "$end" ]; do
      read -r now_active _ < <(published "$FO_NS" "$FO_PAIR")
      if [ -n "$now_active" ] && [ "$now_active" != "$old" ]; then handover_ms=$(ms_since "$t_fault"); break; fi
      sleep 0.02
    done
    [ "$handover_ms" = NA ] && note+="not handed over within the ${PRESTOP_S}s preStop;"
    kill_pod_redis "$FO_NS" "$pod" TERM
    api DELETE "$(pod_path "$FO_NS" "$pod")?gracePeriodSeconds=0" >/dev/null || note+="final DELETE failed;"
  fi

  for i in $(seq 1 $SIDECARS); do
    wait_until "$RECOVERY_LIMIT_S" first_ack_after "${wlogs[i]}" "$t_sent_after" \
      || note+="sidecar $i: no write acked within ${RECOVERY_LIMIT_S}s;"
  done
  local new new_epoch
  read -r new new_epoch < <(published "$FO_NS" "$FO_PAIR")
  [ "$new" != "$old" ] && [ "$new_epoch" -gt "$old_epoch" ] || note+="master did not move ($old $old_epoch -> $new $new_epoch);"
  sleep 1

  # The old master back: restarted empty (kill: a container restart; delete: the pod again).
  if [ "$fault" = kill ]; then
    wait_until 10 gone "${POD_PID[$FO_NS/$pod]}" || note+="the killed redis-server lingers;"
    forget_pid "${POD_PID[$FO_NS/$pod]}"
  fi
  local t_back; t_back=$(now_ns)
  local ip=${old%:*}
  start_pod_redis "$FO_NS" "$pod" "$ip" "$FO_PORT"
  [ "$fault" = delete ] && create_pod_object "$FO_NS" "$pod" "$FO_PAIR" "$ip" "$FO_PORT"
  local settle_ms=NA
  if wait_until "$SETTLE_LIMIT_S" fo_healthy; then settle_ms=$(ms_since "$t_back")
  else note+="not Healthy within ${SETTLE_LIMIT_S}s of the old master's return;"; fi
  sleep 1.5
  for i in $(seq 1 $SIDECARS); do kill -TERM "${wpids[i]}" 2>/dev/null || true; done
  for i in $(seq 1 $SIDECARS); do wait "${wpids[i]}" 2>/dev/null || true; forget_pid "${wpids[i]}"; done

  local final; read -r final _ < <(published "$FO_NS" "$FO_PAIR")
  [ "$(role_at "${FO_IPS[0]}" "$FO_PORT")" = master ] && [ "$(role_at "${FO_IPS[1]}" "$FO_PORT")" = master ] \
    && note+="two masters at the end;"
  # When the leader published the new master, and when each sidecar routed to it.
  local pub_ns published_ms=NA
  pub_ns=$(first_log_after "$OUT/controller-a.log" "$t_fault" "published master epoch=$new_epoch ")
  [ "$pub_ns" = NA ] && pub_ns=$(first_log_after "$OUT/controller-b.log" "$t_fault" "published master epoch=$new_epoch ")
  [ "$pub_ns" != NA ] && published_ms=$(( (pub_ns - t_fault) / 1000000 ))
  for i in $(seq 1 $SIDECARS); do
    local keys="$OUT/writers/keys-$fault-$round-$i.txt" res routed_ns routed_ms=NA
    redis-cli -h "${final%:*}" -p "${final#*:}" --scan --pattern "${prefixes[i]}*" >"$keys" 2>/dev/null || true
    res=$(python3 "$BENCH_DIR/failover_analyze.py" "${wlogs[i]}" "$t_fault" "$t_sent_after" "${prefixes[i]}" "$keys")
    routed_ns=$(first_log_after "$OUT/sidecar-$i.log" "$t_fault" "routing new connections to the verified master")
    [ "$routed_ns" != NA ] && routed_ms=$(( (routed_ns - t_fault) / 1000000 ))
    printf 'kube\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fault" "$round" "$i" "$res" "$published_ms" \
      "$routed_ms" "$handover_ms" "$settle_ms" "${note:--}" >>"$OUT/results.tsv"
    log "  $(printf '%-6s' "$fault") round $round sidecar $i: recovery_ms max_gap_ms acked failed lost_pre lost_all = $(tr '\t' ' ' <<<"$res") published_ms=$published_ms routed_ms=$routed_ms handover_ms=$handover_ms settle_ms=$settle_ms ${note}"
  done
}
# 1.5 s of writes before the fault, plus 0-9 ms: the writers tick every 10 ms from their start,
# so a fault exactly 1.5 s after it would always meet a write in flight.
fault_phase_sleep() { sleep "$(awk -v r="$RANDOM" 'BEGIN {printf "%.3f", 1.5 + (r % 10) / 1000}')"; }
role_at() { redis-cli -h "$1" -p "$2" ROLE 2>/dev/null | head -1; }

stop_failover_part() { # SIGTERM: the leader hands its Lease over, sidecars drain
  local n pid
  for n in $(seq 1 $SIDECARS); do pid=$(sc_pid "$(sc_admin "$n")"); kill -TERM "$pid" 2>/dev/null || true; done
  for n in 0 1; do pid=$(ctl_pid "${FO_CTL_ADMIN[$n]}"); kill -TERM "$pid" 2>/dev/null || true; done
  for n in 0 1; do kill_pod_redis "$FO_NS" "redis-$n" TERM; done
}

# --- part 3: many pairs under one controller ------------------------------------------------
pr_all_healthy() { # the leader counts every pair Healthy
  local leader; leader=$(leader_of "${PR_CTL_ADMIN[@]}") || return 1
  [ "$(metric_sum "$leader" 'redispair_controller_pairs{phase="Healthy"}')" -eq "$PAIRS" ]
}

run_pairs_part() {
  log "pairs: $PAIRS pairs, $((2 * PAIRS)) redis-servers, 2 controllers"
  local n
  for n in $(seq 1 "$PAIRS"); do
    start_pod_redis "$PR_NS" "p$n-0" "127.0.20.$n" "$PR_PORT"
    start_pod_redis "$PR_NS" "p$n-1" "127.0.21.$n" "$PR_PORT"
    create_pod_object "$PR_NS" "p$n-0" "p$n" "127.0.20.$n" "$PR_PORT"
    create_pod_object "$PR_NS" "p$n-1" "p$n" "127.0.21.$n" "$PR_PORT"
  done
  start_controller c50-a "${PR_CTL_ADMIN[0]}" "$PR_NS" redis-pair-bench50
  start_controller c50-b "${PR_CTL_ADMIN[1]}" "$PR_NS" redis-pair-bench50
  wait_until 20 leader_of "${PR_CTL_ADMIN[@]}" >/dev/null || die "no controller leads"
  local leader follower
  leader=$(leader_of "${PR_CTL_ADMIN[@]}")
  follower=$([ "$leader" = "${PR_CTL_ADMIN[0]}" ] && echo "${PR_CTL_ADMIN[1]}" || echo "${PR_CTL_ADMIN[0]}")
  local lpid fpid; lpid=$(ctl_pid "$leader") fpid=$(ctl_pid "$follower")
  sleep 2
  summary controller_leader_rss_kb_no_pairs "$(rss_kb "$lpid")"
  summary controller_follower_rss_kb_no_pairs "$(rss_kb "$fpid")"

  local t0; t0=$(now_ns)
  for n in $(seq 1 "$PAIRS"); do create_pair "$PR_NS" "p$n" "$PR_PORT"; done
  summary pairs_created_ms "$(ms_since "$t0")"
  if wait_until 180 pr_all_healthy; then summary all_healthy_ms "$(ms_since "$t0")"
  else summary all_healthy_ms NA; log "  not all Healthy: $(metric_sum "$leader" 'redispair_controller_pairs{phase="Healthy"}')"; fi
  sleep 6   # the write fences go up 5 s after a replica is in sync; let that pass too

  local rec0 wr0; rec0=$(metric_sum "$leader" 'redispair_controller_reconciles_total') wr0=$(metric_sum "$leader" 'redispair_controller_api_writes_total')
  curl -fsS -m 2 "http://$HOST:$leader/metrics" >"$OUT/leader-metrics-idle-start.txt"
  local servers="" r
  for n in $(seq 1 "$PAIRS"); do for r in 0 1; do servers+="${servers:+,}${POD_PID[$PR_NS/p$n-$r]}"; done; done
  measure_idle pairs "$PAIRS pairs Healthy, idle" "$IDLE_S" "controller-leader=$lpid" "controller-follower=$fpid" \
    "test-apiserver=$APISERVER_PID" "redis-servers ($((2 * PAIRS)), together)=$servers"
  summary idle_reconciles "$(( $(metric_sum "$leader" 'redispair_controller_reconciles_total') - rec0 ))"
  summary idle_api_writes "$(( $(metric_sum "$leader" 'redispair_controller_api_writes_total') - wr0 ))"
  curl -fsS -m 2 "http://$HOST:$leader/metrics" >"$OUT/leader-metrics-idle-end.txt"
  # which writes: the difference per series (kind and outcome)
  summary idle_api_writes_by_kind "$(awk '$1 ~ /^redispair_controller_api_writes_total/ {
      if (FNR == NR) { a[$1] = $2 } else if ($2 - a[$1] > 0) { d = $1; sub(/^[^{]*/, "", d); printf "%s%s %d", sep, d, $2 - a[$1]; sep = ", " } }' \
    "$OUT/leader-metrics-idle-start.txt" "$OUT/leader-metrics-idle-end.txt")"

  # One sidecar and one writer per pair to be killed.
  local wpids=() wlogs=() prefixes=() masters=() pods=()
  for n in $(seq 1 "$KILL_PAIRS"); do
    start_sidecar "p$n" "$PR_NS" "p$n" "$(pr_sc_port "$n")" "$(pr_sc_admin "$n")"
  done
  for n in $(seq 1 "$KILL_PAIRS"); do
    read -r 'masters[n]' _ < <(published "$PR_NS" "p$n")
    wait_until 20 sidecar_on "$(pr_sc_admin "$n")" "${masters[n]}" || die "sidecar p$n not ready"
    pods[n]=$([ "${masters[n]%:*}" = "127.0.20.$n" ] && echo "p$n-0" || echo "p$n-1")
    prefixes[n]="kill$KILL_PAIRS:p$n:" wlogs[n]="$OUT/writers/pairs-p$n.log"
    # shellcheck disable=SC2086
    "$WRITER" --addr "$HOST:$(pr_sc_port "$n")" --prefix "${prefixes[n]}" --interval-ms 10 \
      $WRITER_TIMEOUTS --duration-s 300 --log "${wlogs[n]}" &
    wpids[n]=$!; BENCH_PIDS+=("${wpids[n]}")
  done
  fault_phase_sleep
  local c0; c0=$(cpu_ticks "$lpid")
  local t_fault t_sent_after; t_fault=$(now_ns)
  for n in $(seq 1 "$KILL_PAIRS"); do kill -KILL "${POD_PID[$PR_NS/${pods[n]}]}"; done
  t_sent_after=$(now_ns)
  local note=""
  for n in $(seq 1 "$KILL_PAIRS"); do
    wait_until "$RECOVERY_LIMIT_S" first_ack_after "${wlogs[n]}" "$t_sent_after" || note+="p$n: no write acked within ${RECOVERY_LIMIT_S}s;"
  done
  summary all_writing_again_ms "$(ms_since "$t_fault")"
  summary leader_cpu_s_during_failovers "$(awk -v t="$(( $(cpu_ticks "$lpid") - c0 ))" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')"
  sleep 1
  for n in $(seq 1 "$KILL_PAIRS"); do kill -TERM "${wpids[n]}" 2>/dev/null || true; done
  for n in $(seq 1 "$KILL_PAIRS"); do wait "${wpids[n]}" 2>/dev/null || true; forget_pid "${wpids[n]}"; done
  for n in $(seq 1 "$KILL_PAIRS"); do
    local new new_epoch keys="$OUT/writers/keys-pairs-p$n.txt" res pub_ns published_ms=NA routed_ns routed_ms=NA pnote=$note
    read -r new new_epoch < <(published "$PR_NS" "p$n")
    [ "$new" != "${masters[n]}" ] || pnote+="p$n: master did not move;"
    redis-cli -h "${new%:*}" -p "${new#*:}" --scan --pattern "${prefixes[n]}*" >"$keys" 2>/dev/null || true
    res=$(python3 "$BENCH_DIR/failover_analyze.py" "${wlogs[n]}" "$t_fault" "$t_sent_after" "${prefixes[n]}" "$keys")
    pub_ns=$(first_log_after "$OUT/controller-$([ "$leader" = "${PR_CTL_ADMIN[0]}" ] && echo c50-a || echo c50-b).log" \
      "$t_fault" "published master epoch=$new_epoch master=$new ")
    [ "$pub_ns" != NA ] && published_ms=$(( (pub_ns - t_fault) / 1000000 ))
    routed_ns=$(first_log_after "$OUT/sidecar-p$n.log" "$t_fault" "routing new connections to the verified master")
    [ "$routed_ns" != NA ] && routed_ms=$(( (routed_ns - t_fault) / 1000000 ))
    printf 'kube-%s\tkill%s\t1\tp%s\t%s\t%s\t%s\tNA\tNA\t%s\n' "$PAIRS" "$KILL_PAIRS" "$n" "$res" "$published_ms" "$routed_ms" "${pnote:--}" >>"$OUT/results.tsv"
    log "  p$n: recovery_ms max_gap_ms acked failed lost_pre lost_all = $(tr '\t' ' ' <<<"$res") published_ms=$published_ms routed_ms=$routed_ms ${pnote}"
  done
}

# --- part 2: the peers, by bench/failover.sh ------------------------------------------------
# bench/failover.sh cleans up its own processes on SIGTERM; on our exit it gets that, and the
# time to finish, before our cleanup signals anything else.
PEERS_PID=""
stop_peers() {
  [ -n "$PEERS_PID" ] || return 0
  kill -TERM "$PEERS_PID" 2>/dev/null || true
  wait_until 10 gone "$PEERS_PID" || true
}
trap 'stop_peers; cleanup' EXIT
run_failover_sh() { # out_dir log systems faults
  SYSTEMS=$3 FAULTS=$4 ROUNDS=$ROUNDS SKIP_BUILD=1 PAIR_BIN=$PAIR_BIN WRITER=$WRITER OUT=$1 QUICK=0 \
    "$BENCH_DIR/failover.sh" >"$2" 2>&1 &
  PEERS_PID=$!
  local rc=0
  wait "$PEERS_PID" || rc=$?
  PEERS_PID=""
  return "$rc"
}
run_peers_part() {
  log "peers: bench/failover.sh SYSTEMS=\"$PEER_SYSTEMS\" FAULTS=kill ROUNDS=$ROUNDS (log: $OUT/peers.log)"
  run_failover_sh "$OUT/peers" "$OUT/peers.log" "$PEER_SYSTEMS" kill \
    || log "warning: bench/failover.sh failed (see $OUT/peers.log); no ratios"
  # The planned handover of local mode, beside the pod deletion (Sentinel's takes ~15 s a round).
  if [ "${PEER_SWITCHOVER:-1}" = 1 ] && [[ " $PEER_SYSTEMS " == *" redis-pair "* ]]; then
    log "peers: bench/failover.sh SYSTEMS=redis-pair FAULTS=switchover ROUNDS=$ROUNDS (log: $OUT/peers-switchover.log)"
    run_failover_sh "$OUT/peers-switchover" "$OUT/peers-switchover.log" redis-pair switchover \
      || log "warning: bench/failover.sh (switchover) failed (see $OUT/peers-switchover.log)"
  fi
}

# --- main -----------------------------------------------------------------------------------
start_apiserver
START=$(date +%s)
for part in $PARTS; do
  case $part in
    failover)
      start_failover_part
      fo_footprint "idle, before the rounds"
      for round in $(seq 1 "$ROUNDS"); do
        log "round $round/$ROUNDS"
        for fault in $FAULTS; do fo_round "$fault" "$round"; done
      done
      fo_footprint "idle, after the rounds"
      stop_failover_part ;;
    peers) run_peers_part ;;
    pairs) run_pairs_part ;;
    *) die "unknown part $part" ;;
  esac
done
log "parts took $(( $(date +%s) - START )) s"
{ echo "uptime at the end: $(uptime)"; } >>"$OUT/machine.txt"
python3 "$BENCH_DIR/kube_table.py" "$OUT" | tee "$OUT/table.md"
log "results in $OUT"
