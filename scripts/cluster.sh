#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, as processes, for the tests and by hand:
#
#   scripts/cluster.sh up DIR     build what is missing, start it all, return when it is healthy
#   scripts/cluster.sh down DIR   stop everything `up` started in DIR, remove its network devices
#
# `up` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by
# scripts/kube-build.sh) and one node agent per node (tests/node-agent, built with cargo;
# $REDISPAIR_KUBE_NODES nodes, default 2; none with REDISPAIR_KUBE_NODE=0), writes a
# cluster-admin kubeconfig to DIR/kubeconfig (DIR/kubectl is a kubectl of the server's
# version) and returns once every node is Ready. Containers of image
# `redis` run the Debian redis-server, of image `redis-pair` $REDISPAIR_BIN (default
# target/debug/redis-pair). Everything else lives in DIR too: certificates (pki/), etcd's
# data (etcd/), one log per process (logs/), pid files (pids/), the pods' files (node-N/) and
# the cluster's addresses (cluster.env, read again by a second `up` of the same DIR, so its
# certificates and data stay valid).
#
# Addresses. etcd listens on loopback only. The API server listens on the node's address,
# 10.201.S.1, the host side of a bridge `rpkS` made for this cluster: pods (network namespaces
# on that bridge, 10.201.S.2 and up) reach it there, and Endpoints may not name loopback.
# S is the first subnet no other cluster on this machine uses. Ports are PORT_BASE + 0 (API
# server), + 1 (etcd clients), + 2 (etcd peers), + 3 (controller-manager), + 4 (scheduler);
# + 5 to + 9 are kept free for what comes (a kubelet port, a proxy). PORT_BASE is
# $REDISPAIR_KUBE_PORT_BASE, or the first of 16400, 16410, ... whose ten ports are free, so
# two clusters coexist.
#
# Authentication is real: client certificates from a CA made here (cluster-admin is
# O=system:masters), ServiceAccount tokens signed with a key made here (TokenRequest works),
# --authorization-mode=Node,RBAC, and each controller uses its own ServiceAccount.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 up DIR | down DIR" >&2; exit 64; }
[ $# -eq 2 ] || usage
command="$1"
mkdir -p "$2"
dir="$(cd "$2" && pwd)"
pki="$dir/pki" logs="$dir/logs" pids="$dir/pids"

say() { echo "==> $*" >&2; }
fail() { echo "error: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The processes in start order; `down` stops them in reverse (node-agent-0, -1, ... first).
components=(etcd kube-apiserver kube-controller-manager kube-scheduler)

# The pid files' names, the node agents' first: the order `down` stops them in.
recorded() {
  local f name i
  for f in "$pids"/node-agent*.pid; do [ -f "$f" ] && basename "$f" .pid; done
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    name="${components[$i]}"
    if [ -f "$pids/$name.pid" ]; then echo "$name"; fi
  done
}

# alive NAME: the pid file names a running process started from our binary (node-agent-N's
# binary is node-agent).
alive() {
  local pid exe
  pid="$(cat "$pids/$1.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # A pid is reused once its process is gone: check it is still the binary we started (which
  # may have been rebuilt since: the link then ends in " (deleted)").
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [ "$(basename "$exe")" = "${1%-[0-9]*}" ]
}

stop() {
  local name pid
  for name in $(recorded); do
    if alive "$name"; then
      pid="$(cat "$pids/$name.pid")"
      say "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop in 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$pids/$name.pid"
  done
  # The pods' network namespaces (the node agent records each one it makes), then the bridge.
  if [ -f "$dir/netns" ]; then
    local ns
    while read -r ns; do
      [ -n "$ns" ] || continue
      # A process left in a pod's namespace (the agent died with SIGKILL) goes with it.
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      as_root ip netns delete "$ns" 2>/dev/null || true
      # The host end of the pod's veth has the namespace's name (gone with it, unless a process
      # still holds the namespace).
      as_root ip link delete "$ns" 2>/dev/null || true
    done <"$dir/netns"
    rm -f "$dir/netns"
  fi
  if [ -f "$dir/cluster.env" ]; then
    local BRIDGE=""
    # shellcheck source=/dev/null
    . "$dir/cluster.env"
    if [ -n "$BRIDGE" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
      say "removing bridge $BRIDGE"
      as_root ip link delete "$BRIDGE" type bridge
    fi
  fi
}

if [ "$command" = down ]; then
  stop
  exit 0
fi
[ "$command" = up ] || usage

for name in $(recorded); do
  if alive "$name"; then fail "$name already runs for $dir: run '$0 down $dir' first"; fi
done

missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v ip >/dev/null || missing+=(iproute2)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bins="$(scripts/kube-build.sh)"
KUBE_BIN="$(sed -n 's/^KUBE_BIN=//p' <<<"$bins")"
ETCD_BIN="$(sed -n 's/^ETCD_BIN=//p' <<<"$bins")"

# --- addresses ------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports_free() { local p; for ((p = $1; p < $1 + 10; p++)); do port_free "$p" || return 1; done; }

# A second `up` of the same DIR keeps its addresses: the certificates name them.
if [ -f "$dir/cluster.env" ]; then
  # shellcheck source=/dev/null
  . "$dir/cluster.env"
else
  if [ -n "${REDISPAIR_KUBE_PORT_BASE:-}" ]; then
    PORT_BASE="$REDISPAIR_KUBE_PORT_BASE"
  else
    for ((PORT_BASE = 16400; PORT_BASE < 17400; PORT_BASE += 10)); do
      ports_free "$PORT_BASE" && break
    done
  fi
  for ((SUBNET = 0; SUBNET < 250; SUBNET++)); do
    ip link show "rpk$SUBNET" >/dev/null 2>&1 || ip -4 addr show | grep -q "inet 10\.201\.$SUBNET\." ||
      break
  done
  cat >"$dir/cluster.env" <<EOF
# Written by scripts/cluster.sh up; read again by up and down.
PORT_BASE=$PORT_BASE
SUBNET=$SUBNET
BRIDGE=rpk$SUBNET
NODE_IP=10.201.$SUBNET.1
POD_CIDR=10.201.$SUBNET.0/24
SERVICE_CIDR=10.96.0.0/16
NODES=${REDISPAIR_KUBE_NODES:-2}
EOF
  # shellcheck source=/dev/null
  . "$dir/cluster.env"
fi
API_PORT=$((PORT_BASE)) ETCD_PORT=$((PORT_BASE + 1)) ETCD_PEER_PORT=$((PORT_BASE + 2))
KCM_PORT=$((PORT_BASE + 3)) SCHED_PORT=$((PORT_BASE + 4))
ports_free "$PORT_BASE" || fail "a port in $PORT_BASE-$((PORT_BASE + 9)) is taken (REDISPAIR_KUBE_PORT_BASE picks others)"
SERVER="https://$NODE_IP:$API_PORT"

# Nodes share the bridge and split its /24: node N has the address 10.201.S.(N*BLOCK + 1) (node
# 0's is the API server's) and hands out the rest of its block to its pods.
[[ "${NODES:=1}" =~ ^[1-8]$ ]] || fail "REDISPAIR_KUBE_NODES=$NODES (1 to 8)"
block=$((256 / NODES))
node_octet() { echo $(($1 * block + 1)); }
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  say "bridge $BRIDGE with the node address $NODE_IP"
  as_root ip link add "$BRIDGE" type bridge
  as_root ip addr add "$NODE_IP/24" dev "$BRIDGE"
  as_root ip link set "$BRIDGE" up
fi
for ((n = 1; n < NODES; n++)); do
  address="10.201.$SUBNET.$(node_octet "$n")"
  ip -4 addr show dev "$BRIDGE" | grep -q "inet $address/" ||
    as_root ip addr add "$address/24" dev "$BRIDGE"
done

# --- certificates and keys --------------------------------------------------------------------
mkdir -p "$pki" "$logs" "$pids"
# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by our CA, made once.
cert() {
  [ -f "$pki/$1.crt" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/$1.crt" -extfile <(printf '%s\n' "$3") 2>/dev/null
  rm -f "$pki/$1.csr"
}
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
if [ ! -f "$pki/ca.crt" ]; then
  say "certificates and ServiceAccount keys in $pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=redis-pair-test-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
# The API server's serving certificate: every name a client inside or outside a pod uses.
cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
cert kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
cert kube-scheduler "/CN=system:kube-scheduler" "$client_ext"
# Each node agent authenticates as a kubelet: the Node authorizer and NodeRestriction apply.
for ((n = 0; n < NODES; n++)); do
  cert "node-$n" "/O=system:nodes/CN=system:node:node-$n" "$client_ext"
done
if [ ! -f "$pki/sa.key" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi
chmod 600 "$pki"/*.key

# kubeconfig FILE CERT: credentials embedded, so the file can be copied anywhere.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: redis-pair-test
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$2.crt")
    client-key-data: $(base64 -w0 <"$pki/$2.key")
contexts:
- name: redis-pair-test
  context:
    cluster: redis-pair-test
    user: $2
current-context: redis-pair-test
EOF
  chmod 600 "$1"
}
kubeconfig "$dir/kubeconfig" admin
# A kubectl of the server's version beside the kubeconfig (kube-tools.sh's is two minors older).
ln -sfn "$KUBE_BIN/kubectl" "$dir/kubectl"
kubeconfig "$dir/kube-controller-manager.kubeconfig" kube-controller-manager
kubeconfig "$dir/kube-scheduler.kubeconfig" kube-scheduler
for ((n = 0; n < NODES; n++)); do kubeconfig "$dir/node-$n.kubeconfig" "node-$n"; done

# --- processes --------------------------------------------------------------------------------
# start NAME BINARY ARGS...: in a session of its own (a Ctrl-C in the shell that ran `up` does
# not reach it), output to logs/NAME.log.
start() {
  local name="$1" bin="$2"; shift 2
  say "starting $name (log: $logs/$name.log)"
  setsid "$bin" "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name.pid"
}

# await NAME WHAT SECONDS COMMAND...: until COMMAND succeeds; a process that died or a
# deadline passed stops the cluster and shows the end of the log.
await() {
  local name="$1" what="$2" seconds="$3" started; shift 3
  started=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      tail -n 30 "$logs/$name.log" >&2
      stop
      fail "$name exited before $what"
    fi
    if [ $(($(date +%s) - started)) -ge "$seconds" ]; then
      tail -n 30 "$logs/$name.log" >&2
      stop
      fail "no $what after ${seconds}s"
    fi
    sleep 0.2
  done
  say "$what after $(($(date +%s) - started))s"
}

api() {
  curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$SERVER$1"
}

trap 'stop; exit 130' INT TERM

start etcd "$ETCD_BIN/etcd" \
  --name node --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "node=http://127.0.0.1:$ETCD_PEER_PORT" \
  --log-level warn
await etcd "etcd healthy" 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --anonymous-auth=false \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --allow-privileged=true --profiling=false
await kube-apiserver "kube-apiserver ready" 120 api /readyz

# The controllers a workload of ours meets; kube-controller-manager's default set adds volumes,
# CSRs, HPA, cron jobs and such, nothing redis-pair or its tests touch.
controllers=(
  serviceaccount-controller serviceaccount-token-controller   # `default` SA, legacy token Secrets
  root-ca-certificate-publisher-controller                     # kube-root-ca.crt, in every SA volume
  namespace-controller garbage-collector-controller           # deletion: namespaces, ownerReferences
  deployment-controller replicaset-controller statefulset-controller job-controller
  ttl-after-finished-controller pod-garbage-collector-controller
  endpointslice-controller endpoints-controller service-cidr-controller
  disruption-controller                                        # PDB status, so the Eviction API decides
  node-lifecycle-controller taint-eviction-controller         # node loss: taints, then evictions
  clusterrole-aggregation-controller                           # admin/edit/view
)
start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
  --kubeconfig "$dir/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --controllers "$(IFS=,; echo "${controllers[*]}")" \
  --profiling=false
start kube-scheduler "$KUBE_BIN/kube-scheduler" \
  --kubeconfig "$dir/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig "$dir/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig "$dir/kube-scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
  --leader-elect=false --profiling=false
await kube-controller-manager "kube-controller-manager healthy" 60 \
  curl -skf "https://127.0.0.1:$KCM_PORT/healthz"
await kube-scheduler "kube-scheduler healthy" 60 curl -skf "https://127.0.0.1:$SCHED_PORT/healthz"
# The ServiceAccount controller has made `default` in `default` (pods need it to be admitted).
await kube-controller-manager "the default ServiceAccount" 60 \
  api /api/v1/namespaces/default/serviceaccounts/default

# --- the nodes --------------------------------------------------------------------------------
# Two by default: with every node NotReady, node-lifecycle assumes the control plane is cut off
# ("full disruption") and evicts nothing, so losing a node needs another one that stays.
# node_ready NAME: the Node says Ready and node-lifecycle has lifted the not-ready taint (until
# then the scheduler places nothing on it).
node_ready() {
  local node
  # (The API server pretty-prints JSON for curl: the spaces go before matching.)
  node="$(api "/api/v1/nodes/$1" | tr -d ' \n')" || return 1
  grep -q '"type":"Ready","status":"True"' <<<"$node" && ! grep -q '"taints"' <<<"$node"
}
if [ "${REDISPAIR_KUBE_NODE:-1}" = 1 ]; then
  say "building the node agent (cargo build -p node-agent)"
  cargo build --quiet --locked -p node-agent
  redis_server="$(command -v redis-server)"
  for ((n = 0; n < NODES; n++)); do
    first=$(($(node_octet "$n") + 1)) last=$(($(node_octet "$n") + block - 2))
    [ "$last" -le 254 ] || last=254
    start "node-agent-$n" "$PWD/target/debug/node-agent" \
      --kubeconfig "$dir/node-$n.kubeconfig" --node-name "node-$n" \
      --node-ip "10.201.$SUBNET.$(node_octet "$n")" --api-host "$NODE_IP" \
      --pod-ips "10.201.$SUBNET.$first-10.201.$SUBNET.$last" \
      --bridge "$BRIDGE" --api-port "$API_PORT" \
      --state-dir "$dir/node-$n" --netns-record "$dir/netns" --netns-prefix "rpk${SUBNET}p" \
      --kubelet-version "$(basename "$(dirname "$KUBE_BIN")")" \
      --image "redis=$redis_server" \
      --image "redis-pair=${REDISPAIR_BIN:-$PWD/target/debug/redis-pair}"
  done
  for ((n = 0; n < NODES; n++)); do
    await "node-agent-$n" "node node-$n Ready" 90 node_ready "node-$n"
  done
fi

say "up: export KUBECONFIG=$dir/kubeconfig   (API server $SERVER)"
