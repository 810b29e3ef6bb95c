#!/usr/bin/env bash
# End to end on a real (kind) cluster, for users who have one: kind, docker, kubectl and helm
# on PATH. Creates a cluster, builds and loads the image, installs the chart with the examples,
# waits for the demo app to write through its sidecar, deletes the master pod, and checks that
# the app keeps writing (no write lost) and that the old master comes back as a replica.
#
#   tests/e2e-kind/run.sh            # KEEP=1 keeps the cluster afterwards
#
# It cannot run in CI (no container engine there); scripts/check-packaging.sh lints it.
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster="${CLUSTER:-redis-pair-e2e}"
# The oldest Kubernetes redis-pair supports.
node_image="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
image="redis-pair:e2e"
ns=redis-pair
pair=redis-pair-example
kubectl=(kubectl --context "kind-$cluster" -n "$ns")

step() { echo "==> $*"; }
fail() { echo "FAILED: $*" >&2; "${kubectl[@]}" get rpair,pods -L redispair.io/role >&2 || true; exit 1; }

# Polls a command until it succeeds, for at most $1 seconds.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (not within ${seconds}s)"
    sleep 1
  done
}

cleanup() { [ -n "${KEEP:-}" ] || kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "kind cluster $cluster ($node_image)"
kind create cluster --name "$cluster" --image "$node_image" --wait 120s

step "image $image"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

step "helm install with examples"
helm --kube-context "kind-$cluster" install redis-pair charts/redis-pair \
  --namespace "$ns" --create-namespace --wait --timeout 5m \
  --set image.repository=redis-pair --set image.tag=e2e --set image.pullPolicy=Never \
  --set examples.enabled=true

# What the controller published and what the pods say.
master_pod() { "${kubectl[@]}" get rpair "$pair" -o jsonpath='{.status.master.pod}'; }
phase() { "${kubectl[@]}" get rpair "$pair" -o jsonpath='{.status.phase}'; }
role_label() { "${kubectl[@]}" get pod "$1" -o jsonpath='{.metadata.labels.redispair\.io/role}'; }
# The demo's counter, read through the demo pod's own sidecar.
# (The single-quoted scripts run in the pod's shell, which expands them.)
# shellcheck disable=SC2016
writes() {
  "${kubectl[@]}" exec deploy/"$pair"-demo -c app -- \
    sh -c 'REDISCLI_AUTH="$(cat /var/run/secrets/redis-pair/password)" redis-cli -h 127.0.0.1 GET demo:writes'
}
# Redis's own view of a pod: ROLE's first line.
# shellcheck disable=SC2016
redis_role() {
  "${kubectl[@]}" exec "$1" -c redis -- \
    sh -c 'REDISCLI_AUTH="$(sed -n "s/^requirepass //p" /etc/redis/redis.conf)" redis-cli ROLE | head -n 1'
}
is_healthy() { [ "$(phase)" = Healthy ]; }
writes_above() { [ "$(writes)" -gt "$1" ]; }
master_is_not() { local now; now="$(master_pod)"; [ -n "$now" ] && [ "$now" != "$1" ]; }
rejoined() { [ "$(role_label "$1")" = replica ] && [ "$(redis_role "$1")" = slave ]; }

step "the pair is Healthy and the demo writes"
wait_for 120 "RedisPair $pair Healthy" is_healthy
old="$(master_pod)"
[ "$(role_label "$old")" = master ] || fail "$old is published but not labelled master"
wait_for 60 "the demo app writing" writes_above 10
before="$(writes)"
echo "master $old, demo:writes=$before"

step "delete the master pod $old"
"${kubectl[@]}" delete pod "$old" --wait=false
wait_for 30 "a new master" master_is_not "$old"
new="$(master_pod)"
echo "new master $new"
[ "$(redis_role "$new")" = master ] || fail "$new is published but Redis says it is not master"

step "nothing the demo wrote is lost, and it keeps writing"
# Every INCR up to $before was acknowledged by the old master, so the new one must be at
# $before or beyond: a lower counter is a lost write.
wait_for 30 "demo:writes readable through the sidecar" writes_above -1
after="$(writes)"
[ "$after" -ge "$before" ] || fail "demo:writes went back from $before to $after: writes were lost"
wait_for 60 "the demo writing past $after + 25 on $new" writes_above $((after + 25))

step "the old master comes back as a replica"
wait_for 120 "$old back as a replica of $new" rejoined "$old"
wait_for 60 "RedisPair $pair Healthy again" is_healthy
"${kubectl[@]}" get rpair "$pair"
echo "e2e passed: $old -> $new, demo:writes $before -> $(writes)"
