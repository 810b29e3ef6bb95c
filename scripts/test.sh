#!/usr/bin/env bash
# The test command: formatting, lints, the packaging checks and every test (unit, property,
# and end to end against real redis-server processes on loopback, the real kubectl and helm,
# the project's test Kubernetes API server, and the real control plane of scripts/cluster.sh
# for tests/e2e). CI runs exactly this (.ci/run).
# On a fresh Debian machine it installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# redis-server for every end-to-end test; nft for the partition test (it cuts one Redis
# pod off with nftables rules, so the tests run as root, as CI does); for the real control
# plane (scripts/cluster.sh): ip (network namespaces, veths, a bridge), openssl (its CA and
# certificates) and curl (its health checks).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server redis-tools)
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> kubectl and helm (pinned, for the test API server's tests and helm for tests/e2e)"
scripts/kube-tools.sh

# The real control plane's binaries, cached by version under ~/.cache/redis-pair: warm, nothing
# is built (0.1 s); cold, about 23 minutes on two cores, with progress every 30 s on stderr.
echo "==> the real control plane: kube-apiserver, controller-manager, scheduler, etcd"
scripts/kube-build.sh >/dev/null

echo "==> shell scripts parse"
for script in scripts/*.sh bench/*.sh .ci/run; do bash -n "$script"; done
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-packaging.sh  # chart, schema, manifests, Dockerfile; installs the helm tests/packaging.rs renders with
# Each test in its own process (a redis-server or a controller left by one test cannot touch
# another's), with the slow-test report of .config/nextest.toml. crates.io supplies it; the
# first install compiles it (about 10 minutes on 2 cores), later runs find it in ~/.cargo/bin.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> cargo-nextest is missing: installing it from crates.io (compiles for about 10 minutes)"
  if ! cargo install cargo-nextest --locked --quiet; then
    echo "!!! ============================================================================ !!!"
    echo "!!! cargo-nextest could not be installed from crates.io: running cargo test      !!!"
    echo "!!! instead (every test in one process per binary; slow tests are not reported)  !!!"
    echo "!!! ============================================================================ !!!"
  fi
fi
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi

# Each e2e test process's watchdog stops its cluster once the process is gone: wait for that,
# then check nothing of theirs is left (no recorded process, pod namespace or bridge).
echo "==> the e2e clusters stopped"
for run in target/tmp/kube-e2e/run-*; do
  [ -f "$run/cluster.env" ] || continue
  for _ in $(seq 120); do
    [ -z "$(ls "$run/pids" 2>/dev/null)" ] && [ ! -f "$run/netns" ] && break
    sleep 0.5
  done
  bridge="$(sed -n 's/^BRIDGE=//p' "$run/cluster.env")"
  if [ -n "$(ls "$run/pids" 2>/dev/null)" ] || [ -f "$run/netns" ] || ip link show "$bridge" >/dev/null 2>&1; then
    echo "error: the cluster of $run was not stopped (see $run/down.log)" >&2
    exit 1
  fi
done
