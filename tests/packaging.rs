//! The Helm chart and the plain manifests, read the way the cluster and the binary will read
//! them: every rendered object parses into its Kubernetes type (and loses no field doing so),
//! every container argument is a flag of `redis-pair` (parsed by its own clap definition),
//! every probe asks the admin server for a path it serves on the port the arguments bind, the
//! RBAC is the least the controller and the sidecar need, and `deploy/` and the chart's CRD are
//! what the chart and the binary produce now.
//!
//! Renders come from the pinned helm (`scripts/kube-tools.sh` installs it). To regenerate
//! `deploy/` after a chart change: `REDIS_PAIR_UPDATE_DEPLOY=1 cargo test --test packaging`.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use redis_pair::cli::{Cli, ControllerArgs, Mode, ProxyArgs};
use redis_pair::crd::{ROLE_LABEL, RedisPair};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const RELEASE: &str = "redis-pair";
const NAMESPACE: &str = "redis-pair";
const CHART: &str = "charts/redis-pair";
/// What `deploy/redis-pair.yaml` starts with, before the render.
const DEPLOY_HEADER: &str = "\
# redis-pair without Helm: charts/redis-pair rendered with its default values (release
# redis-pair, namespace redis-pair). Generated; do not edit: after a chart change run
#   REDIS_PAIR_UPDATE_DEPLOY=1 cargo test --test packaging
# Install:
#   kubectl create namespace redis-pair
#   kubectl apply --server-side -f deploy/redis-pair.yaml
";

/// The value sets the checks render (scripts/check-packaging.sh lints the same ones).
fn value_sets() -> Vec<(&'static str, Vec<String>)> {
    let digest = format!("image.digest=sha256:{}", "0".repeat(64));
    vec![
        ("default", vec![]),
        ("examples", set(&["examples.enabled=true"])),
        ("namespaces", set(&["watchNamespaces={shop,cache}"])),
        (
            "everything",
            set(&[
                "examples.enabled=true",
                "metrics.serviceMonitor.enabled=true",
                "networkPolicy.enabled=true",
                "sidecarAccess[0].namespace=shop",
                "sidecarAccess[0].serviceAccounts={web,worker}",
                "sidecarAccess[0].pairs={cache}",
                &digest,
            ]),
        ),
    ]
}

fn set(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".to_owned(), (*v).to_owned()])
        .collect()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let helm = repo().join("target/tools/helm");
    assert!(
        helm.is_file(),
        "{} is missing: run scripts/kube-tools.sh (scripts/test.sh does)",
        helm.display()
    );
    helm
}

/// `helm template` of the chart; `extra` are more flags.
fn render(extra: &[String]) -> String {
    let output = Command::new(helm())
        .current_dir(repo())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(extra)
        .output()
        .expect("run helm template");
    assert!(
        output.status.success(),
        "helm template {extra:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

/// Every object of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML parses");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("(no kind)")
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("(no name)")
}

/// Parses `object` as `T` and checks that nothing was lost: every field of the YAML must come
/// back when the typed value is serialized again (a misspelt or misplaced field would be
/// dropped by the typed parse, and here it fails).
fn typed<T: DeserializeOwned + Serialize>(object: &Value) -> T {
    let what = format!("{}/{}", kind(object), name(object));
    let parsed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse into its type: {e}"));
    let again = serde_json::to_value(&parsed).expect("serializes");
    if let Err(path) = contained(object, &again, String::new()) {
        panic!("{what}: the field {path} is not part of its type (a typo, or misplaced)");
    }
    parsed
}

/// `Ok` when every field of `original` is in `again` with the same value.
fn contained(original: &Value, again: &Value, path: String) -> Result<(), String> {
    match (original, again) {
        (Value::Object(o), Value::Object(a)) => o.iter().try_for_each(|(k, v)| match a.get(k) {
            Some(w) => contained(v, w, format!("{path}.{k}")),
            None if v.is_null() => Ok(()),
            None => Err(format!("{path}.{k}")),
        }),
        (Value::Array(o), Value::Array(a)) if o.len() == a.len() => o
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, format!("{path}[{i}]"))),
        (Value::Number(o), Value::Number(a)) if o.as_f64() == a.as_f64() => Ok(()),
        (o, a) if o == a => Ok(()),
        _ => Err(path),
    }
}

/// All objects of type `T` in a render, typed.
fn all<T>(objects: &[Value]) -> Vec<T>
where
    T: k8s_openapi::Resource + DeserializeOwned + Serialize,
{
    objects
        .iter()
        .filter(|o| o["apiVersion"] == T::API_VERSION && kind(o) == T::KIND)
        .map(typed::<T>)
        .collect()
}

fn one<T>(objects: &[Value], name: &str) -> T
where
    T: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
        + DeserializeOwned
        + Serialize,
{
    let mut found: Vec<T> = all::<T>(objects)
        .into_iter()
        .filter(|o| o.metadata().name.as_deref() == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {} {name}", T::KIND);
    found.remove(0)
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

/// The container's arguments, as the binary's own parser reads them.
fn cli(container: &Container) -> Cli {
    let args = container.args.clone().unwrap_or_default();
    Cli::try_parse_from(std::iter::once("redis-pair".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| {
            panic!(
                "container {}: {args:?} is not a valid redis-pair command line: {e}",
                container.name
            )
        })
}

fn controller_args(container: &Container) -> ControllerArgs {
    match cli(container).command {
        Mode::Controller(args) => args,
        other => panic!(
            "container {} runs {other:?}, not the controller",
            container.name
        ),
    }
}

fn proxy_args(container: &Container) -> ProxyArgs {
    match cli(container).command {
        Mode::Proxy(args) => args,
        other => panic!("container {} runs {other:?}, not the proxy", container.name),
    }
}

/// The container port a probe (or Service) names, as a number.
fn port_number(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("container {} has no port named {name}", container.name))
                .container_port
        }
    }
}

/// (path, port) of an HTTP probe.
fn http_probe(container: &Container, probe: Option<&Probe>, which: &str) -> (String, u16) {
    let probe = probe.unwrap_or_else(|| panic!("container {} has no {which}", container.name));
    let get = probe.http_get.as_ref().unwrap_or_else(|| {
        panic!(
            "container {}: the {which} is not an HTTP GET",
            container.name
        )
    });
    let port = u16::try_from(port_number(container, &get.port)).expect("a port number");
    (get.path.clone().unwrap_or_default(), port)
}

/// Checks the probes of a container that serves the admin endpoint on `admin`: liveness asks
/// `/healthz`, readiness (and startup) `/readyz`, on the port the admin server binds, which is
/// bound on every address (the kubelet probes the pod IP). Returns every probed path.
fn check_admin_probes(container: &Container, admin: SocketAddr, startup: bool) -> Vec<String> {
    assert!(
        admin.ip().is_unspecified(),
        "container {}: the admin endpoint listens on {admin}, which the kubelet cannot reach on \
         the pod IP",
        container.name
    );
    let mut probes = vec![
        (
            "livenessProbe",
            container.liveness_probe.as_ref(),
            "/healthz",
        ),
        (
            "readinessProbe",
            container.readiness_probe.as_ref(),
            "/readyz",
        ),
    ];
    if startup {
        probes.push(("startupProbe", container.startup_probe.as_ref(), "/readyz"));
    }
    probes
        .into_iter()
        .map(|(which, probe, expected)| {
            let (path, port) = http_probe(container, probe, which);
            assert_eq!(path, expected, "container {}: {which} path", container.name);
            assert_eq!(
                port,
                admin.port(),
                "container {}: the {which} asks port {port}, the admin endpoint listens on {admin}",
                container.name
            );
            path
        })
        .collect()
}

fn env_field_ref(container: &Container, var: &str) -> String {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == var)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
        .unwrap_or_else(|| {
            panic!(
                "container {} has no {var} from the downward API",
                container.name
            )
        })
}

fn rendered(set: &str) -> Vec<Value> {
    let (_, values) = value_sets()
        .into_iter()
        .find(|(name, _)| *name == set)
        .expect("a value set");
    objects(&render(&values))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn chart_crd_is_what_redis_pair_crd_prints() {
    let generated = redis_pair::crd::crd_yaml().expect("the CRD renders");
    let copy = std::fs::read_to_string(repo().join(CHART).join("crds/redispair.yaml"))
        .expect("the chart's CRD");
    assert!(
        copy == generated,
        "charts/redis-pair/crds/redispair.yaml differs from `redis-pair crd`; regenerate it with \
         `cargo run -q -- crd > charts/redis-pair/crds/redispair.yaml`"
    );
}

#[test]
fn deploy_is_the_chart_rendered_with_default_values() {
    let expected = format!("{DEPLOY_HEADER}{}", render(&["--include-crds".to_owned()]));
    let path = repo().join("deploy/redis-pair.yaml");
    if std::env::var_os("REDIS_PAIR_UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, &expected).expect("write deploy/redis-pair.yaml");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "deploy/redis-pair.yaml is not the chart rendered with default values; regenerate it with \
         `REDIS_PAIR_UPDATE_DEPLOY=1 cargo test --test packaging`"
    );
    let files: BTreeSet<_> = std::fs::read_dir(repo().join("deploy"))
        .expect("deploy/")
        .map(|e| e.expect("a directory entry").file_name())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from(["redis-pair.yaml".into()]),
        "deploy/ holds only the rendered manifests (kubectl apply -f deploy/ applies every file)"
    );
}

#[test]
fn every_rendered_object_parses_into_its_kubernetes_type() {
    for (set, values) in value_sets() {
        let mut with_crds = values.clone();
        with_crds.push("--include-crds".into());
        for object in objects(&render(&with_crds)) {
            match (object["apiVersion"].as_str().unwrap_or(""), kind(&object)) {
                ("apps/v1", "Deployment") => drop(typed::<Deployment>(&object)),
                ("apps/v1", "StatefulSet") => drop(typed::<StatefulSet>(&object)),
                ("v1", "Service") => drop(typed::<Service>(&object)),
                ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(&object)),
                ("v1", "Secret") => drop(typed::<Secret>(&object)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    drop(typed::<ClusterRole>(&object))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    drop(typed::<ClusterRoleBinding>(&object))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(&object)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    drop(typed::<RoleBinding>(&object))
                }
                ("policy/v1", "PodDisruptionBudget") => drop(typed::<PodDisruptionBudget>(&object)),
                ("networking.k8s.io/v1", "NetworkPolicy") => drop(typed::<NetworkPolicy>(&object)),
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    drop(typed::<CustomResourceDefinition>(&object))
                }
                ("redispair.io/v1alpha1", "RedisPair") => drop(typed::<RedisPair>(&object)),
                // No Rust type: scripts/check-packaging.sh validates it against a schema, and
                // metrics_service_and_service_monitor_agree checks what it points at.
                ("monitoring.coreos.com/v1", "ServiceMonitor") => {}
                (api_version, kind) => {
                    panic!("{set}: {api_version} {kind} is not checked here; add it")
                }
            }
            let namespace = object["metadata"]["namespace"].as_str();
            let cluster_scoped = matches!(
                kind(&object),
                "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
            );
            assert!(
                cluster_scoped || namespace.is_some(),
                "{set}: {}/{} has no namespace (kubectl apply would put it in the current one)",
                kind(&object),
                name(&object)
            );
        }
    }
}

#[test]
fn controller_runs_real_flags_with_its_lease_and_identity() {
    for set in ["default", "namespaces"] {
        let objects = rendered(set);
        let deployment: Deployment = one(&objects, "redis-pair-controller");
        let spec = pod_spec(&deployment);
        assert_eq!(spec.containers.len(), 1);
        let container = &spec.containers[0];
        let args = controller_args(container);

        let probed = check_admin_probes(container, args.admin_listen, false);
        assert_eq!(probed, ["/healthz", "/readyz"]);
        assert_eq!(
            env_field_ref(container, "POD_NAMESPACE"),
            "metadata.namespace"
        );
        assert_eq!(env_field_ref(container, "POD_NAME"), "metadata.name");

        // The Lease: in the release namespace, named as the Role that grants it.
        assert_eq!(args.lease_namespace.as_deref(), Some(NAMESPACE));
        let lease_role: Role = one(&objects, "redis-pair-controller-lease");
        assert_eq!(lease_role.metadata.namespace.as_deref(), Some(NAMESPACE));
        let named: Vec<_> = lease_role
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.resource_names.clone())
            .collect();
        assert_eq!(
            named,
            [vec![args.lease_name.clone()]],
            "{set}: the Lease rule's name"
        );

        // The namespaces it watches are those it holds Roles in.
        let role_namespaces: BTreeSet<String> = all::<Role>(&objects)
            .into_iter()
            .filter(|r| r.metadata.name.as_deref() == Some("redis-pair-controller"))
            .filter_map(|r| r.metadata.namespace)
            .collect();
        let watched: BTreeSet<String> = args.namespaces.iter().cloned().collect();
        assert_eq!(
            watched, role_namespaces,
            "{set}: --namespace flags and Roles"
        );
        if set == "namespaces" {
            assert_eq!(watched, BTreeSet::from(["cache".into(), "shop".into()]));
            assert!(
                all::<ClusterRole>(&objects).is_empty(),
                "no ClusterRole with watchNamespaces"
            );
        }
    }
}

#[test]
fn controller_deployment_is_highly_available_and_hardened() {
    let objects = rendered("default");
    let deployment: Deployment = one(&objects, "redis-pair-controller");
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(
        spec.replicas,
        Some(2),
        "two controllers: one leads, one waits"
    );
    let pod = pod_spec(&deployment);
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    let selects = |selector: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };

    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("a pod anti-affinity");
    let term = &anti[0].pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert!(selects(
        term.label_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("labels")
    ));

    let pdb: PodDisruptionBudget = one(&objects, "redis-pair-controller");
    let pdb_spec = pdb.spec.expect("spec");
    assert_eq!(pdb_spec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(selects(
        pdb_spec
            .selector
            .and_then(|s| s.match_labels)
            .as_ref()
            .expect("labels")
    ));

    let pod_security = pod
        .security_context
        .as_ref()
        .expect("a pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid > 0));
    assert_eq!(
        pod_security
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("a securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    let resources = container.resources.as_ref().expect("resources");
    for (which, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let map = map.as_ref().unwrap_or_else(|| panic!("resource {which}"));
        assert!(
            map.contains_key("cpu") && map.contains_key("memory"),
            "{which}: {map:?}"
        );
    }

    // The pods run as the ServiceAccount the ClusterRoleBinding names.
    let account = pod.service_account_name.clone().expect("a service account");
    let _: ServiceAccount = one(&objects, &account);
    let binding: ClusterRoleBinding = one(&objects, "redis-pair-controller");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        (account.as_str(), Some(NAMESPACE))
    );
}

/// (apiGroup, resource, verbs, resourceNames) of every rule, sorted.
fn rules(rules: &[PolicyRule]) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut flat = vec![];
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                flat.push((
                    group.clone(),
                    resource.clone(),
                    verbs,
                    rule.resource_names.clone().unwrap_or_default(),
                ));
            }
        }
    }
    flat.sort();
    flat
}

fn rule(
    group: &str,
    resource: &str,
    verbs: &[&str],
    names: &[&str],
) -> (String, String, Vec<String>, Vec<String>) {
    let mut verbs: Vec<String> = verbs.iter().map(|v| (*v).to_owned()).collect();
    verbs.sort();
    (
        group.into(),
        resource.into(),
        verbs,
        names.iter().map(|n| (*n).to_owned()).collect(),
    )
}

#[test]
fn rbac_is_exactly_what_the_controller_and_the_sidecar_call() {
    let controller = {
        let mut expected = vec![
            rule("redispair.io", "redispairs", &["get", "list", "watch"], &[]),
            rule("redispair.io", "redispairs", &["patch"], &[]),
            rule("redispair.io", "redispairs/status", &["patch"], &[]),
            rule("", "pods", &["list", "watch"], &[]),
            rule("", "pods", &["patch"], &[]),
            rule("", "secrets", &["get", "list", "watch"], &[]),
            rule("events.k8s.io", "events", &["create"], &[]),
        ];
        expected.sort();
        expected
    };
    let lease = {
        let mut expected = vec![
            rule("coordination.k8s.io", "leases", &["create"], &[]),
            rule(
                "coordination.k8s.io",
                "leases",
                &["get", "update"],
                &["redis-pair-controller"],
            ),
        ];
        expected.sort();
        expected
    };

    let objects = rendered("everything");
    let cluster_roles = all::<ClusterRole>(&objects);
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    assert_eq!(
        rules(cluster_roles[0].rules.as_deref().unwrap_or_default()),
        controller
    );
    let lease_role: Role = one(&objects, "redis-pair-controller-lease");
    assert_eq!(
        rules(lease_role.rules.as_deref().unwrap_or_default()),
        lease
    );

    let sidecar: Role = one(&objects, "redis-pair-sidecar");
    assert_eq!(sidecar.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        rules(sidecar.rules.as_deref().unwrap_or_default()),
        [rule(
            "redispair.io",
            "redispairs",
            &["get", "list", "watch"],
            &["cache"]
        )]
    );
    let sidecar_binding: RoleBinding = one(&objects, "redis-pair-sidecar");
    let bound: Vec<_> = sidecar_binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
        .collect();
    assert_eq!(
        bound,
        [
            ("ServiceAccount", "web", Some("shop")),
            ("ServiceAccount", "worker", Some("shop"))
        ]
    );
    let demo: Role = one(&objects, "redis-pair-example-demo");
    assert_eq!(
        rules(demo.rules.as_deref().unwrap_or_default()),
        [rule(
            "redispair.io",
            "redispairs",
            &["get", "list", "watch"],
            &["redis-pair-example"]
        )]
    );

    // watchNamespaces: the same rules in a Role per namespace, and the Lease Role as before.
    let objects = rendered("namespaces");
    for role in all::<Role>(&objects) {
        let expected = if role.metadata.name.as_deref() == Some("redis-pair-controller-lease") {
            &lease
        } else {
            &controller
        };
        assert_eq!(
            &rules(role.rules.as_deref().unwrap_or_default()),
            expected,
            "{:?}",
            role.metadata.name
        );
    }
}

#[test]
fn every_rbac_rule_has_a_comment() {
    for (set, values) in value_sets() {
        let text = render(&values);
        let lines: Vec<&str> = text.lines().collect();
        let mut rules = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                rules += 1;
                let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
                assert!(
                    before.is_some_and(|l| l.trim_start().starts_with('#')),
                    "{set}: the RBAC rule at line {} has no comment saying why it is needed",
                    i + 1
                );
            }
        }
        assert!(rules >= 9, "{set}: found only {rules} rules");
    }
}

/// Asks the admin server of a running `redis-pair` for every probed path: none may be a 404.
/// The admin router is the same in every mode (src/admin.rs); local mode runs it without a
/// cluster, with two servers that refuse connections.
#[test]
fn probed_paths_are_served_by_the_admin_endpoint() {
    let mut probed = BTreeSet::new();
    for set in ["default", "examples"] {
        let objects = rendered(set);
        for deployment in all::<Deployment>(&objects) {
            let pod = pod_spec(&deployment);
            for container in pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
            {
                for probe in [
                    &container.liveness_probe,
                    &container.readiness_probe,
                    &container.startup_probe,
                ]
                .into_iter()
                .flatten()
                {
                    if let Some(get) = &probe.http_get {
                        probed.insert(get.path.clone().unwrap_or_default());
                    }
                }
            }
        }
    }
    assert!(probed.len() >= 2, "probes found: {probed:?}");

    let admin = free_port();
    let mut local = LocalMode::start(admin);
    for path in &probed {
        let status = local.get(path);
        assert_ne!(
            status, 404,
            "GET {path} is not served by the admin endpoint"
        );
    }
    assert_eq!(
        local.get("/no-such-path"),
        404,
        "the server answers 404 for unknown paths"
    );
}

#[test]
fn demo_app_reaches_redis_through_a_native_sidecar() {
    let objects = rendered("examples");
    let pair_object = objects
        .iter()
        .find(|o| kind(o) == "RedisPair")
        .expect("the example RedisPair");
    let pair: RedisPair = typed(pair_object);
    let auth = pair
        .spec
        .auth_secret_ref
        .clone()
        .expect("the example has a password");
    let _: Secret = one(&objects, &auth.name);

    let deployment: Deployment = one(&objects, "redis-pair-example-demo");
    let pod = pod_spec(&deployment);
    let args = check_native_sidecar(pod, &pair.metadata.name.clone().expect("a name"), &auth);

    // The app writes to the sidecar's listener, and holds no API token.
    let app = &pod.containers[0];
    let script = app.command.as_ref().expect("a command").join(" ");
    let target = format!("-h {} -p {}", args.listen.ip(), args.listen.port());
    assert!(
        script.contains(&target),
        "the app does not write to {target}: {script}"
    );
    let token_volume = mounted_volume(
        &pod.init_containers.as_deref().unwrap_or_default()[0],
        Path::new(TOKEN),
    );
    assert!(
        !app.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == token_volume),
        "the app container must not get the API token"
    );
}

/// The snippet NOTES.txt prints after `helm install` (and the README copies) is the same
/// working sidecar: its pod-spec fragment parses, and passes the demo's checks.
#[test]
fn the_sidecar_snippet_in_the_install_notes_is_a_working_native_sidecar() {
    let output = Command::new(helm())
        .current_dir(repo())
        .args([
            "install",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ])
        .output()
        .expect("run helm install --dry-run=client");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let notes = &text[text.find("\nNOTES:\n").expect("NOTES")..];
    let indent = "     ";
    let fragment: Vec<&str> = notes
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{indent}automountServiceAccountToken:")))
        .take_while(|l| l.starts_with(indent))
        .map(|l| &l[indent.len()..])
        .collect();
    assert!(
        fragment.len() > 20,
        "no sidecar snippet in the NOTES:\n{notes}"
    );
    let yaml = format!("containers: []\n{}", fragment.join("\n"));
    let value: Value = serde_saphyr::from_str(&yaml).expect("the snippet is YAML");
    let pod: PodSpec = typed(&value);
    let auth = redis_pair::crd::SecretKeyRef {
        name: "cache-redis".into(),
        key: "password".into(),
    };
    check_native_sidecar(&pod, "cache", &auth);
}

/// The API token file kube's in-cluster configuration reads.
const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Checks a pod's redis-pair sidecar: a native sidecar (an init container with restartPolicy
/// Always) whose flags parse, following `pair` in the pod's namespace, probed on the admin
/// port it binds, with the password file from the pair's Secret key and the API token mounted
/// in it alone. Returns its flags.
fn check_native_sidecar(
    pod: &PodSpec,
    pair: &str,
    auth: &redis_pair::crd::SecretKeyRef,
) -> ProxyArgs {
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "only the sidecar mounts the API token"
    );
    let sidecars = pod.init_containers.as_deref().unwrap_or_default();
    assert_eq!(sidecars.len(), 1);
    let sidecar = &sidecars[0];
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar: an init container with restartPolicy Always"
    );
    let args = proxy_args(sidecar);
    assert_eq!(args.pair, pair);
    assert_eq!(
        args.namespace, None,
        "the namespace comes from POD_NAMESPACE"
    );
    assert_eq!(
        env_field_ref(sidecar, "POD_NAMESPACE"),
        "metadata.namespace"
    );
    assert_eq!(args.listen, "127.0.0.1:6379".parse().expect("an address"));
    check_admin_probes(sidecar, args.admin_listen, true);

    let volume = |name: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    // The password file is the RedisPair's Secret key.
    let file = args
        .credentials
        .password_file
        .clone()
        .expect("--password-file");
    let secret_volume = volume(&mounted_volume(sidecar, &file));
    let secret = secret_volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some(auth.name.as_str()));
    let item = secret
        .items
        .iter()
        .flatten()
        .find(|i| file.ends_with(&i.path))
        .expect("the key's file");
    assert_eq!(item.key, auth.key);

    // The API token, CA and namespace: the service account's files, projected.
    let token_volume = volume(&mounted_volume(sidecar, Path::new(TOKEN)));
    let projected = token_volume
        .projected
        .as_ref()
        .expect("a projected token volume");
    let sources = projected.sources.as_deref().unwrap_or_default();
    assert!(sources.iter().any(|s| {
        s.service_account_token
            .as_ref()
            .is_some_and(|t| t.path == "token")
    }));
    assert!(sources.iter().any(|s| {
        s.config_map
            .as_ref()
            .is_some_and(|c| c.name == "kube-root-ca.crt")
    }));
    assert!(
        sources.iter().any(|s| s.downward_api.is_some()),
        "the namespace file"
    );
    args
}

/// The volume a container mounts `file` from.
fn mounted_volume(container: &Container, file: &Path) -> String {
    container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| file.starts_with(&m.mount_path))
        .unwrap_or_else(|| {
            panic!(
                "container {} mounts nothing at {}",
                container.name,
                file.display()
            )
        })
        .name
        .clone()
}

#[test]
fn example_redis_pods_hand_over_before_they_stop() {
    let objects = rendered("examples");
    let statefulset: StatefulSet = one(&objects, "redis-pair-example");
    let spec = statefulset.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    let pod = spec.template.spec.as_ref().expect("pod");
    let redis = &pod.containers[0];
    let pre_stop = redis
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .expect("a preStop sleep")
        .seconds;
    assert!(
        pre_stop >= 2,
        "a switchover takes about a second; preStop sleeps {pre_stop}s"
    );
    assert!(
        pod.termination_grace_period_seconds
            .is_some_and(|g| g > pre_stop),
        "the grace period must outlast the preStop sleep"
    );

    let headless: Service = one(&objects, &spec.service_name.clone().expect("a serviceName"));
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );

    // The RedisPair and the -master Service select these pods; the Service only the master.
    let pair_object = objects
        .iter()
        .find(|o| kind(o) == "RedisPair")
        .expect("a RedisPair");
    let pair: RedisPair = typed(pair_object);
    let pair_labels = pair
        .spec
        .selector
        .match_labels
        .clone()
        .expect("matchLabels");
    assert!(pair_labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
    assert!(!pair_labels.contains_key(ROLE_LABEL));
    let master: Service = one(&objects, "redis-pair-example-master");
    let mut selector = master.spec.and_then(|s| s.selector).expect("a selector");
    assert_eq!(selector.remove(ROLE_LABEL).as_deref(), Some("master"));
    assert_eq!(
        selector, pair_labels,
        "the -master Service selects the pair's pods"
    );
    assert_eq!(
        redis
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect::<Vec<_>>(),
        [pair.spec.port]
    );
}

#[test]
fn metrics_service_and_service_monitor_agree() {
    let objects = rendered("everything");
    let deployment: Deployment = one(&objects, "redis-pair-controller");
    let pod = pod_spec(&deployment);
    let container = &pod.containers[0];
    let admin = controller_args(container).admin_listen;
    let service: Service = one(&objects, "redis-pair-controller-metrics");
    let spec = service.spec.expect("spec");
    let port = &spec.ports.as_deref().unwrap_or_default()[0];
    let target = port.target_port.as_ref().expect("a targetPort");
    assert_eq!(i32::from(admin.port()), port_number(container, target));
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert!(
        spec.selector
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    );

    let monitor = objects
        .iter()
        .find(|o| kind(o) == "ServiceMonitor")
        .expect("a ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), port.name.as_deref());
    assert_eq!(endpoint["path"], "/metrics");
    let service_labels = service.metadata.labels.expect("labels");
    let wanted = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(
        wanted
            .iter()
            .all(|(k, v)| service_labels.get(k).map(String::as_str) == v.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// A `redis-pair local` process, for its admin endpoint.

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("its address")
}

struct LocalMode {
    child: Child,
    admin: SocketAddr,
}

impl LocalMode {
    fn start(admin: SocketAddr) -> Self {
        let listen = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_redis-pair"))
            .args([
                "local",
                "--listen",
                &listen.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            // Nothing listens on these: the servers are down, the admin endpoint still serves.
            .args(["--server", "127.0.0.1:1", "--server", "127.0.0.1:2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-pair local");
        let mut local = LocalMode { child, admin };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(admin).is_err() {
            if let Ok(Some(status)) = local.child.try_wait() {
                panic!("redis-pair local exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the admin endpoint never came up on {admin}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        local
    }

    /// The HTTP status of `GET path`.
    fn get(&mut self, path: &str) -> u16 {
        let mut stream = TcpStream::connect(self.admin).expect("connect to the admin endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
    }
}

impl Drop for LocalMode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Values whose content is a Kubernetes object passed through as it is: their inner keys are
/// Kubernetes fields, documented by Kubernetes and checked on the render.
const PASSED_THROUGH: &[&str] = &[
    "resources",
    "sidecarResources",
    "podSecurityContext",
    "securityContext",
];

/// values.yaml documents every field (a comment right above each key), and it and
/// values.schema.json name the same fields: no undocumented value, no schema entry for a
/// value that does not exist.
#[test]
fn values_are_documented_field_by_field_and_match_the_schema() {
    let text =
        std::fs::read_to_string(repo().join(CHART).join("values.yaml")).expect("values.yaml");
    let lines: Vec<&str> = text.lines().collect();
    // (indent, key) of the keys above the current line.
    let mut path: Vec<(usize, String)> = vec![];
    let mut documented = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with('-') || trimmed.is_empty() {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        path.retain(|(at, _)| *at < indent);
        let inside_object = path
            .iter()
            .any(|(_, k)| PASSED_THROUGH.contains(&k.as_str()));
        path.push((indent, key.to_owned()));
        if inside_object {
            continue;
        }
        let dotted = path
            .iter()
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let above = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        assert!(
            above.is_some_and(|l| l.trim_start().starts_with('#')),
            "values.yaml: {dotted} (line {}) has no comment above it",
            i + 1
        );
        documented.insert(dotted);
    }

    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("values.schema.json"))
            .expect("the schema"),
    )
    .expect("the schema is JSON");
    let mut in_schema = BTreeSet::new();
    fn walk(node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        for (key, child) in node["properties"].as_object().into_iter().flatten() {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if !PASSED_THROUGH.contains(&key.as_str()) {
                walk(child, &dotted, out);
            }
            out.insert(dotted);
        }
    }
    walk(&schema, "", &mut in_schema);
    assert_eq!(
        documented, in_schema,
        "values.yaml and values.schema.json name different fields"
    );
    assert_eq!(
        schema["additionalProperties"],
        Value::Bool(false),
        "unknown top-level values must fail"
    );
}
