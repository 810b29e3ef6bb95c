#!/usr/bin/env bash
# The test command: formatting, lints, the packaging checks and every test (unit, property,
# and end to end against real redis-server processes on loopback, the real kubectl and helm,
# and the project's test Kubernetes API server). CI runs exactly this (.ci/run).
# On a fresh Debian machine it installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# redis-server for every end-to-end test; nft for the partition test (it cuts one Redis
# pod off with nftables rules, so the tests run as root, as CI does).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server redis-tools)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> kubectl and helm (pinned, for the test API server's tests)"
scripts/kube-tools.sh

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
