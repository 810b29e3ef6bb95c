# Shared helpers for bench/proxy.sh, bench/failover.sh and bench/kube.sh (sourced, not run).
# Everything listens on and talks to 127.0.0.1 only.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
PAIR_BIN=${PAIR_BIN:-$REPO_DIR/target/release/redis-pair}
HOST=127.0.0.1

# Every process we start is recorded here and killed on exit (by pid, nothing else).
BENCH_PIDS=()
BENCH_DIRS=()   # temporary directories, removed on exit
cleanup() {
  local pid dir
  for pid in "${BENCH_PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true   # a SIGSTOPped server must be able to die
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${BENCH_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for dir in "${BENCH_DIRS[@]}"; do
    rm -rf -- "$dir"
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ns() { local t=$EPOCHREALTIME; echo "${t//[.,]/}000"; }  # bash 5: no fork of date

# apt-get install the Debian packages whose commands are missing (the machine is root).
ensure_tools() {
  local missing_pkgs=() cmd pkg
  while [ $# -gt 0 ]; do
    cmd=$1 pkg=$2; shift 2
    command -v "$cmd" >/dev/null 2>&1 || missing_pkgs+=("$pkg")
  done
  [ ${#missing_pkgs[@]} -eq 0 ] && return 0
  log "installing missing packages: ${missing_pkgs[*]}"
  local SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
  # Debian starts the packaged services; we want our own instances only.
  for svc in redis-server redis-sentinel haproxy nutcracker; do
    $SUDO systemctl stop "$svc" 2>/dev/null || $SUDO service "$svc" stop 2>/dev/null || true
  done
}

# Build redis-pair (release) and check that `redis-pair local` exists. Returns 1 if not usable.
build_pair() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release (redis-pair)"
    (cd "$REPO_DIR" && cargo build --release --bin redis-pair 2>&1 | tail -3) >&2 || return 1
  fi
  [ -x "$PAIR_BIN" ] && "$PAIR_BIN" local --help >/dev/null 2>&1
}

# The failover writer (examples/failover_writer.rs), a debug build as bench/failover.sh has
# always used; WRITER=path uses one built already. Sets WRITER.
build_writer() {
  if [ -z "${WRITER:-}" ]; then
    log "cargo build --example failover_writer"
    (cd "$REPO_DIR" && cargo build -q --example failover_writer 2>&1 | tail -3) >&2
    WRITER=$REPO_DIR/target/debug/examples/failover_writer
  fi
  [ -x "$WRITER" ] || die "writer did not build"
}

wait_until() { # timeout_s cmd...
  local limit=$1; shift
  local end=$(( $(date +%s%N) + limit * 1000000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

first_ack_after() { # log t_ns: succeeds when a write sent after t was acked
  awk -v t="$2" '$1 == "ack" && $3 > t {found=1; exit} END {exit !found}' "$1"
}

raise_fd_limit() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  [ "$(ulimit -n)" -ge 4096 ] || log "warning: ulimit -n is $(ulimit -n); -c 500 through a proxy needs ~1100"
}

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

wait_port() { # port [timeout_s]
  local i
  for i in $(seq 1 $(( ${2:-10} * 20 ))); do
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# start_redis PORT DIR [extra redis-server args...]; sets REDIS_PID_<PORT>
start_redis() {
  local port=$1 dir=$2; shift 2
  port_free "$port" || die "port $port is in use"
  mkdir -p "$dir"
  redis-server --port "$port" --bind "$HOST" --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis-$port.log" --daemonize no --protected-mode no "$@" &
  local pid=$!
  disown "$pid"   # kill -9 is part of the failover bench: no "Killed" job notices
  BENCH_PIDS+=("$pid")
  eval "REDIS_PID_$port=$pid"
  wait_port "$port" 10 || die "redis-server on $port did not start (see $dir/redis-$port.log)"
}

rcli() { local port=$1; shift; redis-cli -h "$HOST" -p "$port" "$@"; }

# wait until PORT is a replica with master_link_status:up
wait_replica_synced() { # port [timeout_s]
  local i
  for i in $(seq 1 $(( ${2:-20} * 10 ))); do
    rcli "$1" INFO replication 2>/dev/null | tr -d '\r' | grep -q '^master_link_status:up' && return 0
    sleep 0.1
  done
  return 1
}

role_of() { rcli "$1" ROLE 2>/dev/null | head -1; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
# "busy idle" jiffies of the whole machine (all CPUs): what every process together used.
machine_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat; }

machine_info() {
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel: $(uname -sr)"
  echo "redis-server: $(redis-server --version | awk '{print $3}')"
  echo "haproxy: $(haproxy -v 2>/dev/null | head -1 | awk '{print $3}')"
  echo "nutcracker: $(nutcracker --version 2>&1 | head -1 | awk '{print $NF}')"
  if [ -x "$PAIR_BIN" ]; then
    echo "redis-pair: $(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?') $(ls -l --time-style=+%FT%T "$PAIR_BIN" | awk '{print $6}')"
  fi
}
