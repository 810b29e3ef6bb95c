#!/usr/bin/env bash
# The demo: starts two redis-servers (a master and its replica) on loopback, runs
# `redis-pair local` in front of them, shows a failover and the old master's return as a
# replica, then keeps running so you can try it yourself (Ctrl-C stops everything).
#
#   scripts/demo.sh            # interactive: stays up after the show
#   scripts/demo.sh --once     # the show only, then clean up (what CI-like checks use)
#   scripts/demo.sh --kube     # the Kubernetes mode instead (scripts/demo-kube.sh): controller,
#                              # sidecars and kubectl on the project's test API server
#
# Ports: REDIS_A (7001), REDIS_B (7002), LISTEN (6400), ADMIN (9400).
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_A=${REDIS_A:-7001}
REDIS_B=${REDIS_B:-7002}
LISTEN=${LISTEN:-6400}
ADMIN=${ADMIN:-9400}
if [ "${1:-}" = "--kube" ]; then
  shift
  exec scripts/demo-kube.sh "$@"
fi
ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || ! command -v curl >/dev/null; then
  echo "==> installing redis-server, redis-tools and curl (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools curl >/dev/null
fi
echo "==> building redis-pair (release)"
cargo build --release --quiet
BIN=target/release/redis-pair

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis() { # port [replicaof-port]
  local port=$1 extra=()
  [ -n "${2:-}" ] && extra=(--replicaof 127.0.0.1 "$2")
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    --dbfilename "dump-$port.rdb" --logfile "$WORK/redis-$port.log" --repl-diskless-sync-delay 0 "${extra[@]}" &
  PIDS+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "redis-server on $port did not start; see $WORK/redis-$port.log" >&2; exit 1
}
pid_of_port() { redis-cli -p "$1" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p' | tr -d '\r'; }
master() { curl -s "http://127.0.0.1:$ADMIN/status" | sed -n 's/^  "master": "\{0,1\}\([^",]*\)"\{0,1\},$/\1/p'; }
wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "timed out waiting for: $what" >&2; exit 1
}
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

start_redis "$REDIS_A"
start_redis "$REDIS_B" "$REDIS_A"
SOCK=$WORK/redis-pair.sock
"$BIN" local --listen "127.0.0.1:$LISTEN" --listen-unix "$SOCK" --admin-listen "127.0.0.1:$ADMIN" \
  --server "127.0.0.1:$REDIS_A" --server "127.0.0.1:$REDIS_B" >"$WORK/redis-pair.log" 2>&1 &
PIDS+=($!)
wait_for "redis-pair to publish a master" curl -sf "http://127.0.0.1:$ADMIN/readyz"

say "1. Clients talk to 127.0.0.1:$LISTEN; the master is $(master)"
echo "\$ redis-cli -p $LISTEN set greeting hello"; redis-cli -p "$LISTEN" set greeting hello
echo "\$ redis-cli -s $SOCK get greeting    # the same proxy on a Unix socket"
redis-cli -s "$SOCK" get greeting
wait_for "the replica to have the key" sh -c "[ \"\$(redis-cli -p $REDIS_B get greeting)\" = hello ]"

say "2. kill -9 the master (127.0.0.1:$REDIS_A)"
victim=$(pid_of_port "$REDIS_A")
kill -9 "$victim"
wait "$victim" 2>/dev/null || true  # reap it quietly
wait_for "the failover" sh -c "[ \"\$(curl -s http://127.0.0.1:$ADMIN/status | grep -c '\"master\": \"127.0.0.1:$REDIS_B\"')\" = 1 ]"
echo "master is now $(master)"
echo "\$ redis-cli -p $LISTEN get greeting"; redis-cli -p "$LISTEN" get greeting
echo "\$ redis-cli -p $LISTEN set after failover"; redis-cli -p "$LISTEN" set after failover

say "3. Restart the old master: it comes back as a replica of the new one"
start_redis "$REDIS_A"
wait_for "the old master to sync" sh -c "[ \"\$(redis-cli -p $REDIS_A get after)\" = failover ]"
redis-cli -p "$REDIS_A" info replication | grep -E '^(role|master_port|master_link_status)' | tr -d '\r'

say "redis-pair's log of what it decided:"
grep -E 'published master|promoted|made a replica|probe failed' "$WORK/redis-pair.log" | sed 's/^/  /'

if [ "$ONCE" = 1 ]; then
  say "Demo complete."
  exit 0
fi
say "Still running. Try: redis-cli -p $LISTEN   |   redis-cli -s $SOCK   |   curl -s 127.0.0.1:$ADMIN/status   |   curl -s -XPOST 127.0.0.1:$ADMIN/switchover"
echo "Ctrl-C stops redis-pair and both redis-servers."
wait "${PIDS[-1]}"
