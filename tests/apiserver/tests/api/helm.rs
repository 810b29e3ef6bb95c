//! helm 4 against the server: install (server-side apply of every object, the release in a
//! Secret written by a typed client), upgrade, uninstall, and `helm template | kubectl apply`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use crate::support::{Kubectl, client, helm_binary, server};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart");

async fn helm(kubectl: &Kubectl, args: &[&str]) -> String {
    let kubeconfig = kubectl.dir().join("kubeconfig");
    let output = tokio::process::Command::new(helm_binary())
        .args(args)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .env_clear()
        .env("HOME", kubectl.dir())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("helm finishes")
        .expect("helm runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "helm {args:?} failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_a_chart() {
    let server = server().await;
    let kubectl = Kubectl::new(&server);
    let installed = helm(&kubectl, &["install", "demo", CHART]).await;
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let deployments: Api<Deployment> = Api::default_namespaced(client(&server).await);
    let deployment = deployments.get("demo").await.expect("deployment applied");
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let listed = kubectl
        .ok(&[
            "get",
            "sa,cm,svc,deploy,pdb,netpol,role,rolebinding",
            "-o",
            "name",
        ])
        .await;
    for object in [
        "serviceaccount/demo",
        "configmap/demo-config",
        "service/demo",
        "deployment.apps/demo",
        "poddisruptionbudget.policy/demo",
        "networkpolicy.networking.k8s.io/demo",
        "role.rbac.authorization.k8s.io/demo",
        "rolebinding.rbac.authorization.k8s.io/demo",
    ] {
        assert!(
            listed.lines().any(|l| l == object),
            "{object} missing from {listed}"
        );
    }
    let releases = helm(&kubectl, &["list", "-o", "json"]).await;
    let releases: serde_json::Value = serde_json::from_str(&releases).expect("json");
    assert_eq!(
        (releases[0]["name"].as_str(), releases[0]["status"].as_str()),
        (Some("demo"), Some("deployed"))
    );
    helm(&kubectl, &["upgrade", "demo", CHART, "--set", "replicas=3"]).await;
    let upgraded = deployments.get("demo").await.expect("deployment");
    assert_eq!(
        upgraded.spec.as_ref().and_then(|s| s.replicas),
        Some(3),
        "the upgrade's apply merged"
    );
    assert_eq!(upgraded.metadata.generation, Some(2));
    let secrets: Api<Secret> = Api::default_namespaced(client(&server).await);
    let stored = secrets
        .list(&ListParams::default().labels("owner=helm,name=demo"))
        .await
        .expect("release secrets");
    assert_eq!(stored.items.len(), 2, "one Secret per revision");
    helm(&kubectl, &["uninstall", "demo"]).await;
    assert_eq!(
        kubectl
            .ok(&[
                "get",
                "cm,svc,deploy,pdb,netpol,role,rolebinding",
                "-o",
                "name"
            ])
            .await
            .trim(),
        ""
    );
    assert!(
        secrets
            .list(&ListParams::default().labels("owner=helm"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn helm_template_piped_to_kubectl_apply() {
    let server = server().await;
    let kubectl = Kubectl::new(&server);
    let rendered = helm(&kubectl, &["template", "demo", CHART]).await;
    let manifest = kubectl.file("rendered.yaml", &rendered);
    let manifest = manifest.to_str().expect("path");
    let applied = kubectl.ok(&["apply", "-f", manifest]).await;
    assert_eq!(applied.lines().count(), 8, "{applied}");
    assert!(
        applied.lines().all(|l| l.ends_with(" created")),
        "{applied}"
    );
    let before = server.resource_version();
    let again = kubectl.ok(&["apply", "-f", manifest]).await;
    for line in again.lines() {
        // kubectl always sends a PDB's selector again (its patch strategy is "replace") and so
        // reports it configured, as against any cluster; the server writes nothing.
        let expected = if line.starts_with("poddisruptionbudget") {
            " configured"
        } else {
            " unchanged"
        };
        assert!(line.ends_with(expected), "{again}");
    }
    assert_eq!(
        server.resource_version(),
        before,
        "a second apply writes nothing"
    );
    let server_side = kubectl
        .ok(&["apply", "--server-side", "-f", manifest])
        .await;
    assert!(
        server_side
            .lines()
            .all(|l| l.ends_with(" serverside-applied")),
        "{server_side}"
    );
}
