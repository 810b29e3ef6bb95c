//! The pinned kubectl (1.35) against the server: what people and the README run.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::support::{Kubectl, client, eventually, redispair_crd_yaml, server};

const PAIR: &str = "apiVersion: redispair.io/v1
kind: RedisPair
metadata:
  name: demo
spec:
  port: 6379
";

/// The columns of a printed table row, split on runs of spaces.
fn columns(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

async fn with_pair() -> (test_apiserver::ApiServer, Kubectl) {
    let server = server().await;
    let kubectl = Kubectl::new(&server);
    let crd = kubectl.file("crd.json", &redispair_crd_yaml());
    let crd = crd.to_str().expect("path");
    assert_eq!(
        kubectl.ok(&["apply", "-f", crd]).await.trim(),
        "customresourcedefinition.apiextensions.k8s.io/redispairs.redispair.io created"
    );
    let pair = kubectl.file("pair.yaml", PAIR);
    assert_eq!(
        kubectl
            .ok(&["apply", "-f", pair.to_str().expect("path")])
            .await
            .trim(),
        "redispair.redispair.io/demo created"
    );
    (server, kubectl)
}

#[tokio::test]
async fn apply_creates_then_patches_and_reports_unchanged() {
    let (_server, kubectl) = with_pair().await;
    let pair = kubectl.dir().join("pair.yaml");
    let pair = pair.to_str().expect("path");
    assert_eq!(
        kubectl.ok(&["apply", "-f", pair]).await.trim(),
        "redispair.redispair.io/demo unchanged"
    );
    std::fs::write(pair, PAIR.replace("6379", "6379\n  replicas: 3")).expect("edit");
    assert_eq!(
        kubectl.ok(&["apply", "-f", pair]).await.trim(),
        "redispair.redispair.io/demo configured"
    );
    let object: Value =
        serde_json::from_str(&kubectl.ok(&["get", "rp", "demo", "-o", "json"]).await)
            .expect("json");
    assert_eq!(object["spec"]["replicas"], 3);
    assert_eq!(object["metadata"]["generation"], 2);
    // A built-in kind: apply sends a strategic merge patch.
    let config = kubectl.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n",
    );
    let config = config.to_str().expect("path");
    kubectl.ok(&["apply", "-f", config]).await;
    std::fs::write(
        config,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  b: \"2\"\n",
    )
    .expect("edit");
    assert_eq!(
        kubectl.ok(&["apply", "-f", config]).await.trim(),
        "configmap/c configured"
    );
    let data = kubectl
        .ok(&["get", "configmap", "c", "-o", "jsonpath={.data}"])
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&data).expect("json"),
        json!({"b": "2"}),
        "apply removed what it no longer declares"
    );
}

#[tokio::test]
async fn get_prints_tables_wide_yaml_and_jsonpath() {
    let (server, kubectl) = with_pair().await;
    let table = kubectl.ok(&["get", "rp"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(columns(lines[0]), vec!["NAME", "MASTER", "AGE"]);
    assert_eq!(columns(lines[1])[0], "demo");
    let wide = kubectl
        .ok(&["get", "redispairs.redispair.io", "-o", "wide"])
        .await;
    let wide: Vec<&str> = wide.lines().collect();
    assert_eq!(columns(wide[0]), vec!["NAME", "MASTER", "PORT", "AGE"]);
    assert_eq!(
        columns(wide[1])[1],
        "6379",
        "the empty MASTER cell prints nothing, PORT follows"
    );
    let yaml = kubectl
        .ok(&["get", "redispair", "demo", "-o", "yaml"])
        .await;
    assert!(
        yaml.contains("kind: RedisPair")
            && yaml.contains("  port: 6379")
            && yaml.contains("  replicas: 2"),
        "{yaml}"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "demo", "-o", "jsonpath={.spec.port}"])
            .await,
        "6379"
    );
    // Pods: the server's printer columns, STATUS from the containers and Terminating.
    let client = client(&server).await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let manifest = kubectl.file("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: redis-0\nspec:\n  nodeName: node-1\n  containers:\n  - name: redis\n    image: redis:7\n");
    kubectl
        .ok(&["apply", "-f", manifest.to_str().expect("path")])
        .await;
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.2",
        "containerStatuses": [{"name": "redis", "ready": true, "restartCount": 0, "image": "redis:7", "imageID": "", "state": {"running": {}}}]}});
    pods.patch_status("redis-0", &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("status");
    let printed = kubectl.ok(&["get", "pods", "-o", "wide"]).await;
    let printed: Vec<&str> = printed.lines().collect();
    assert_eq!(
        columns(printed[0]),
        vec![
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );
    let row = columns(printed[1]);
    assert_eq!(
        (row[0], row[1], row[2], row[3], row[5], row[6], row[7]),
        (
            "redis-0",
            "1/1",
            "Running",
            "0",
            "127.0.0.2",
            "node-1",
            "<none>"
        )
    );
    pods.delete("redis-0", &DeleteParams::default())
        .await
        .expect("graceful delete");
    let printed = kubectl.ok(&["get", "po", "redis-0"]).await;
    assert_eq!(
        columns(printed.lines().nth(1).expect("row"))[2],
        "Terminating"
    );
    let namespaces = kubectl.ok(&["get", "ns"]).await;
    assert_eq!(
        columns(namespaces.lines().next().expect("header")),
        vec!["NAME", "STATUS", "AGE"]
    );
    assert_eq!(
        namespaces.lines().count(),
        5,
        "the four namespaces of a fresh cluster: {namespaces}"
    );
}

#[tokio::test]
async fn get_watch_prints_each_change_made_by_another_process() {
    let (_server, kubectl) = with_pair().await;
    let mut watch = kubectl.command(&[
        "get",
        "rp",
        "demo",
        "-w",
        "-o",
        "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas",
    ]);
    let mut child = watch
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line in time")
            .expect("reads")
            .expect("open")
    };
    assert_eq!(columns(&next().await), vec!["NAME", "REPLICAS"]);
    assert_eq!(columns(&next().await), vec!["demo", "2"]);
    for replicas in ["3", "4"] {
        kubectl
            .ok(&[
                "patch",
                "rp",
                "demo",
                "--type",
                "merge",
                "-p",
                &format!("{{\"spec\":{{\"replicas\":{replicas}}}}}"),
            ])
            .await;
        assert_eq!(columns(&next().await), vec!["demo", replicas]);
    }
    child.kill().await.expect("stops");
    // The server-side table watch (kubectl's default output) prints rows too.
    let mut watch = kubectl.command(&["get", "rp", "-w"]);
    let mut child = watch
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line in time")
            .expect("reads")
            .expect("open")
    };
    assert_eq!(columns(&next().await), vec!["NAME", "MASTER", "AGE"]);
    assert_eq!(columns(&next().await)[0], "demo");
    kubectl
        .ok(&[
            "patch",
            "rp",
            "demo",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"master":"demo-0"}}"#,
        ])
        .await;
    assert_eq!(columns(&next().await)[..2], ["demo", "demo-0"]);
    child.kill().await.expect("stops");
}

#[tokio::test]
async fn label_annotate_and_every_patch_type() {
    let (_server, kubectl) = with_pair().await;
    assert_eq!(
        kubectl
            .ok(&["label", "rp", "demo", "tier=cache"])
            .await
            .trim(),
        "redispair.redispair.io/demo labeled"
    );
    assert_eq!(
        kubectl
            .ok(&["annotate", "rp", "demo", "note=hi"])
            .await
            .trim(),
        "redispair.redispair.io/demo annotated"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "-l", "tier=cache", "-o", "name"])
            .await
            .trim(),
        "redispair.redispair.io/demo"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "-l", "tier!=cache", "-o", "name"])
            .await
            .trim(),
        ""
    );
    kubectl.ok(&["label", "rp", "demo", "tier-"]).await;
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "demo", "-o", "jsonpath={.metadata.labels}"])
            .await,
        ""
    );
    kubectl
        .ok(&[
            "patch",
            "rp",
            "demo",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":5}}"#,
        ])
        .await;
    kubectl.ok(&["patch", "rp", "demo", "--type", "json", "-p", r#"[{"op":"test","path":"/spec/replicas","value":5},{"op":"replace","path":"/spec/replicas","value":6}]"#]).await;
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "demo", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "6"
    );
    let failed = kubectl
        .fails(&[
            "patch",
            "rp",
            "demo",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":1}]"#,
        ])
        .await;
    assert!(
        failed.contains("the server rejected our request due to an error in our request"),
        "{failed}"
    );
    assert_eq!(
        kubectl
            .ok(&[
                "patch",
                "rp",
                "demo",
                "--subresource=status",
                "--type",
                "merge",
                "-p",
                r#"{"status":{"master":"demo-1"}}"#
            ])
            .await
            .trim(),
        "redispair.redispair.io/demo patched"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "demo", "-o", "jsonpath={.status.master}"])
            .await,
        "demo-1"
    );
    // Built-in kinds: kubectl label/annotate send strategic merge patches.
    kubectl
        .ok(&[
            "create",
            "secret",
            "generic",
            "auth",
            "--from-literal=password=x",
        ])
        .await;
    kubectl.ok(&["label", "secret", "auth", "app=redis"]).await;
    kubectl
        .ok(&["annotate", "namespace", "default", "owner=tests"])
        .await;
    assert_eq!(
        kubectl
            .ok(&[
                "get",
                "secret",
                "auth",
                "-o",
                "jsonpath={.metadata.labels.app}"
            ])
            .await,
        "redis"
    );
    assert_eq!(
        kubectl
            .ok(&[
                "get",
                "ns",
                "default",
                "-o",
                "jsonpath={.metadata.annotations.owner}"
            ])
            .await,
        "tests"
    );
    let secrets = kubectl.ok(&["get", "secrets"]).await;
    assert_eq!(
        columns(secrets.lines().nth(1).expect("row"))[..3],
        ["auth", "Opaque", "1"]
    );
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_reports_the_conflict() {
    let (_server, kubectl) = with_pair().await;
    let stale = kubectl.ok(&["get", "rp", "demo", "-o", "json"]).await;
    kubectl
        .ok(&[
            "patch",
            "rp",
            "demo",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":4}}"#,
        ])
        .await;
    let file = kubectl.file("stale.json", &stale);
    let error = kubectl
        .fails(&["replace", "-f", file.to_str().expect("path")])
        .await;
    assert!(
        error.contains("Operation cannot be fulfilled on redispairs.redispair.io \"demo\": the object has been modified; please apply your changes to the latest version and try again"),
        "{error}"
    );
}

#[tokio::test]
async fn delete_waits_for_a_graceful_pod_until_the_kubelet_finishes() {
    let server = server().await;
    let kubectl = Kubectl::new(&server);
    let manifest = kubectl.file("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  nodeName: node-1\n  containers:\n  - name: redis\n    image: redis:7\n");
    kubectl
        .ok(&["apply", "-f", manifest.to_str().expect("path")])
        .await;
    let mut delete = kubectl.command(&["delete", "pod", "p", "--timeout=30s"]);
    let child = delete
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl delete");
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    eventually("deletionTimestamp set", Duration::from_secs(10), || async {
        pods.get("p")
            .await
            .ok()
            .and_then(|p| p.metadata.deletion_timestamp)
            .map(|_| ())
    })
    .await;
    // kubectl is still waiting; the kubelet (this test) finishes the deletion.
    pods.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("kubelet delete");
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("delete returns")
        .expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "pod \"p\" deleted from default namespace"
    );
    let (_server2, kubectl2) = with_pair().await;
    assert_eq!(
        kubectl2.ok(&["delete", "rp", "demo"]).await.trim(),
        "redispair.redispair.io \"demo\" deleted from default namespace"
    );
    let error = kubectl2.fails(&["get", "rp", "demo"]).await;
    assert_eq!(
        error.trim(),
        "Error from server (NotFound): redispairs.redispair.io \"demo\" not found"
    );
}

#[tokio::test]
async fn api_resources_resolve_kinds_plurals_and_short_names() {
    let (_server, kubectl) = with_pair().await;
    let resources = kubectl.ok(&["api-resources"]).await;
    let row = resources
        .lines()
        .find(|l| l.starts_with("redispairs"))
        .expect("redispairs listed");
    assert_eq!(
        columns(row),
        vec!["redispairs", "rp", "redispair.io/v1", "true", "RedisPair"]
    );
    let pods = resources
        .lines()
        .find(|l| l.starts_with("pods "))
        .expect("pods listed");
    assert_eq!(columns(pods), vec!["pods", "po", "v1", "true", "Pod"]);
    for name in [
        "rp",
        "redispair",
        "redispairs",
        "RedisPair",
        "redispairs.redispair.io",
        "redispairs.v1.redispair.io",
    ] {
        assert_eq!(
            kubectl.ok(&["get", name, "-o", "name"]).await.trim(),
            "redispair.redispair.io/demo",
            "{name}"
        );
    }
    assert!(
        kubectl
            .ok(&["get", "all", "-o", "name"])
            .await
            .contains("redispair.redispair.io/demo"),
        "categories: all"
    );
    let named = kubectl
        .ok(&["api-resources", "--api-group=redispair.io", "-o", "name"])
        .await;
    assert_eq!(named.trim(), "redispairs.redispair.io");
}

#[tokio::test]
async fn wait_for_jsonpath_returns_when_the_condition_holds() {
    let (_server, kubectl) = with_pair().await;
    let mut wait = kubectl.command(&[
        "wait",
        "rp/demo",
        "--for=jsonpath={.status.master}=demo-0",
        "--timeout=30s",
    ]);
    let child = wait
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl wait");
    kubectl
        .ok(&[
            "patch",
            "rp",
            "demo",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"master":"demo-0"}}"#,
        ])
        .await;
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("wait returns")
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "redispair.redispair.io/demo condition met"
    );
}

#[tokio::test]
async fn bad_objects_are_rejected_with_the_real_messages() {
    let (_server, kubectl) = with_pair().await;
    let bad = kubectl.file(
        "bad.yaml",
        &PAIR.replace("demo", "bad").replace("6379", "70000"),
    );
    let error = kubectl
        .fails(&["apply", "-f", bad.to_str().expect("path")])
        .await;
    assert!(
        error.contains("The RedisPair \"bad\" is invalid: spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535"),
        "{error}"
    );
    let unknown = kubectl.file(
        "unknown.yaml",
        &PAIR
            .replace("demo", "typo")
            .replace("port: 6379", "port: 6379\n  portt: 1"),
    );
    let error = kubectl
        .fails(&["apply", "-f", unknown.to_str().expect("path")])
        .await;
    assert!(
        error.contains("strict decoding error: unknown field \"spec.portt\""),
        "{error}"
    );
    // Without strict validation the unknown field is pruned.
    kubectl
        .run(&[
            "apply",
            "--validate=false",
            "-f",
            unknown.to_str().expect("path"),
        ])
        .await;
    assert_eq!(
        kubectl
            .ok(&["get", "rp", "typo", "-o", "jsonpath={.spec}"])
            .await,
        r#"{"port":6379,"replicas":2}"#
    );
    let error = kubectl.fails(&["create", "namespace", "Bad_Name"]).await;
    assert!(error.contains("The Namespace \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label"), "{error}");
    // Built-in kinds too: their fields are 1.33's.
    let pod = kubectl.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: redis\n    image: redis:7\n    imagee: typo\n",
    );
    let error = kubectl
        .fails(&["apply", "-f", pod.to_str().expect("path")])
        .await;
    assert!(
        error.contains("Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.containers[0].imagee\""),
        "{error}"
    );
    kubectl
        .run(&[
            "apply",
            "--validate=false",
            "-f",
            pod.to_str().expect("path"),
        ])
        .await;
    let stored = kubectl
        .ok(&["get", "pod", "p", "-o", "jsonpath={.spec.containers[0]}"])
        .await;
    assert!(
        !stored.contains("imagee") && stored.contains("redis:7"),
        "pruned: {stored}"
    );
}
