#!/usr/bin/env bash
# The Kubernetes demo, with no cluster: the project's test API server, the RedisPair CRD, two
# Redis "pods" (real redis-servers on 127.0.0.2 and 127.0.0.3, with Pod objects carrying those
# IPs), the controller, and two sidecar proxies. `kubectl get rpair -w` runs alongside while a
# writer goes through a sidecar, the master is killed (kill -9), comes back, and a switchover is
# asked for with one annotation. Then it stays up so you can try it (Ctrl-C stops everything).
#
#   scripts/demo.sh --kube           # interactive: stays up after the show
#   scripts/demo.sh --kube --once    # the show only, then clean up
#
# Ports: API server 18443, Redis 7101 on each pod IP, sidecars 6401/6402 (admin 9411/9412),
# controller admin 9410.
set -euo pipefail
cd "$(dirname "$0")/.."

ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1
API_PORT=${API_PORT:-18443}
REDIS_PORT=${REDIS_PORT:-7101}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || ! command -v curl >/dev/null; then
  echo "==> installing redis-server, redis-tools and curl (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools curl >/dev/null
fi
scripts/kube-tools.sh
echo "==> building redis-pair and the test API server (release)"
cargo build --release --quiet --workspace
BIN=target/release/redis-pair
KUBECTL=target/tools/kubectl

WORK=$(mktemp -d)
export KUBECONFIG=$WORK/kubeconfig
# kubectl keeps its discovery cache under $HOME; this demo's stays in its own directory.
export HOME=$WORK
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
k() { "$KUBECTL" "$@"; }
wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "timed out waiting for: $what" >&2; exit 1
}
epoch() { k get rpair cache -o jsonpath='{.status.epoch}'; }
master_pod() { k get rpair cache -o jsonpath='{.status.master.pod}'; }

say "A Kubernetes API server for the demo (tests/apiserver), and the RedisPair CRD"
target/release/test-apiserver --listen "127.0.0.1:$API_PORT" --kubeconfig "$KUBECONFIG" >"$WORK/apiserver.log" 2>&1 &
PIDS+=($!)
wait_for "the API server" k get namespaces
k apply -f crds/redispair.yaml

start_redis() { # ip
  redis-server --port "$REDIS_PORT" --bind "$1" --save "" --appendonly no --dir "$WORK" \
    --dbfilename "dump-$1.rdb" --logfile "$WORK/redis-$1.log" --repl-diskless-sync-delay 0 &
  PIDS+=($!)
  disown  # the show kills one with -9: no "Killed" notice from the shell
  wait_for "redis-server on $1" redis-cli -h "$1" -p "$REDIS_PORT" ping
}
pod() { # name ip: a Pod object for a redis-server, Running with that IP, as a kubelet reports it
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {app: cache}}
spec:
  nodeName: demo-node
  containers: [{name: redis, image: redis:7.2, ports: [{containerPort: $REDIS_PORT}]}]
EOF
  k patch pod "$1" --subresource=status --type merge -p "{\"status\": {\"phase\": \"Running\",
    \"podIP\": \"$2\", \"podIPs\": [{\"ip\": \"$2\"}], \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}],
    \"containerStatuses\": [{\"name\": \"redis\", \"ready\": true, \"restartCount\": 0, \"image\": \"redis:7.2\",
    \"imageID\": \"\", \"state\": {\"running\": {}}}]}}" >/dev/null
}

say "Two Redis pods: redis-0 on 127.0.0.2, redis-1 on 127.0.0.3 (both start as empty masters)"
start_redis 127.0.0.2
start_redis 127.0.0.3
pod redis-0 127.0.0.2
pod redis-1 127.0.0.3
k get pods -o wide

say "The controller, and a RedisPair selecting them"
"$BIN" controller --admin-listen 127.0.0.1:9410 --lease-namespace default >"$WORK/controller.log" 2>&1 &
PIDS+=($!)
k apply -f - <<EOF
apiVersion: redispair.io/v1alpha1
kind: RedisPair
metadata: {name: cache}
spec:
  selector: {matchLabels: {app: cache}}
  port: $REDIS_PORT
EOF
wait_for "a master" test -n "$(master_pod)"
k get rpair cache
k get pods -L redispair.io/role

say "kubectl get rpair -w, from now on:"
k get rpair -w &
PIDS+=($!)

say "Two sidecars (as in two app pods): 127.0.0.1:6401 and 127.0.0.1:6402"
for n in 1 2; do
  "$BIN" proxy --pair cache --namespace default --listen "127.0.0.1:640$n" --admin-listen "127.0.0.1:941$n" \
    >"$WORK/sidecar-$n.log" 2>&1 &
  PIDS+=($!)
  wait_for "sidecar $n ready" curl -sf "127.0.0.1:941$n/readyz"
done
redis-cli -p 6401 set greeting "hello through a sidecar"
redis-cli -p 6402 get greeting

say "A writer through sidecar 1: INCR demo:counter, 20 times a second"
( while true; do redis-cli -p 6401 incr demo:counter >/dev/null 2>&1 || true; sleep 0.05; done ) &
PIDS+=($!)
sleep 1

OLD=$(master_pod); OLD_EPOCH=$(epoch)
OLD_IP=$(k get pod "$OLD" -o jsonpath='{.status.podIP}')
say "kill -9 of the master's redis-server ($OLD at $OLD_IP)"
kill -9 "$(redis-cli -h "$OLD_IP" -p "$REDIS_PORT" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p' | tr -d '\r')"
wait_for "a new master" test "$(epoch)" -gt "$OLD_EPOCH"
sleep 0.5
k get rpair cache -o wide
echo "counter, read through sidecar 2: $(redis-cli -p 6402 get demo:counter)"

say "$OLD comes back: the controller makes it a replica of $(master_pod)"
start_redis "$OLD_IP"
wait_for "$OLD replicating" sh -c "redis-cli -h $OLD_IP -p $REDIS_PORT info replication | grep -q master_link_status:up"
k get pods -L redispair.io/role

say "A planned switchover back to $OLD, with one annotation"
echo "+ kubectl annotate rpair cache redispair.io/switchover=$OLD"
k annotate rpair cache "redispair.io/switchover=$OLD"
wait_for "the switchover" test "$(master_pod)" = "$OLD"
sleep 0.5
k get rpair cache
k get rpair cache -o jsonpath='{.status.lastSwitchover.message}{"\n"}'
echo "counter, read through sidecar 2: $(redis-cli -p 6402 get demo:counter)"

say "What the controller recorded (kubectl get events):"
k get events.events.k8s.io --sort-by=.eventTime

if [ "$ONCE" = 1 ]; then
  say "Done."
  exit 0
fi
say "Still running. Try:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG HOME=$HOME
  $KUBECTL get rpair cache -o yaml
  $KUBECTL annotate rpair cache redispair.io/switchover=any
  redis-cli -p 6401        # or -p 6402: the two sidecars
  curl -s 127.0.0.1:9410/metrics | grep redispair_controller
Ctrl-C stops everything.
EOF
wait
