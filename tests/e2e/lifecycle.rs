//! The cluster's own operations on the release: eviction through the Eviction API and the
//! chart's PodDisruptionBudget, `helm upgrade` and `helm uninstall`.

use crate::faults::{settle_and_check, writing, writing_with};
use crate::support::kube::text;
use crate::support::pair::{Example, RELEASE, SETTLE, ready};
use crate::support::wait::eventually;

/// Asks the Eviction API to evict a pod: the answer, or why it was refused.
fn evict(example: &Example, pod: &str) -> Result<String, String> {
    let ns = &example.ns.name;
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": { "name": pod, "namespace": ns },
    });
    let file = example
        .ns
        .cluster
        .dir
        .join(format!("eviction-{ns}-{pod}.json"));
    std::fs::write(&file, body.to_string()).unwrap();
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction");
    crate::support::kube::try_kubectl(
        example.ns.cluster,
        &["create", "--raw", &path, "-f", file.to_str().unwrap()],
    )
}

fn controller_pods(example: &Example) -> Vec<serde_json::Value> {
    let pods = example
        .json(&[
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=controller",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    pods["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn an_evicted_master_pod_is_handed_over_and_the_pdb_keeps_a_controller() {
    let (example, before, writer) = writing("eviction");
    // No budget covers the example's Redis pods: the eviction is a graceful deletion, and the
    // controller hands the master over during the pod's preStop.
    evict(&example, &before.master_pod).unwrap_or_else(|e| panic!("evicting the master: {e}"));
    let after = example.await_published("the master handed over", |p| {
        p.epoch > before.epoch && p.master_pod != before.master_pod
    });
    let report = settle_and_check(&example, writer, "eviction of the master's pod");
    eprintln!(
        "eviction: {} → {} (epoch {}), longest write pause {:?}",
        before.master_pod,
        after.master_pod,
        after.epoch,
        report.longest_pause()
    );

    // The chart's budget for the controllers (maxUnavailable 1), as the disruption
    // controller computes it and the Eviction API enforces it.
    let pdb = format!("{RELEASE}-redis-pair-controller");
    eventually(
        "the controllers' budget to allow one disruption",
        SETTLE,
        || {
            let budget = example.json(&["get", "pdb", &pdb])?;
            match budget
                .pointer("/status/disruptionsAllowed")
                .and_then(|v| v.as_i64())
            {
                Some(1) => Ok(()),
                other => Err(format!("disruptionsAllowed {other:?}")),
            }
        },
    );
    let names: Vec<String> = controller_pods(&example)
        .iter()
        .map(|p| text(p, "/metadata/name").to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    evict(&example, &names[0]).unwrap_or_else(|e| panic!("the first controller: {e}"));
    match evict(&example, &names[1]) {
        Err(refused) => assert!(refused.contains("disruption budget"), "{refused}"),
        // Allowed only if the first one's replacement was already Ready: never none left.
        Ok(_) => assert!(
            controller_pods(&example).iter().any(|p| {
                ready(p)
                    && p["metadata"]["deletionTimestamp"].is_null()
                    && !names.iter().any(|n| n == text(p, "/metadata/name"))
            }),
            "both controllers evicted with no other Ready"
        ),
    }
}

#[test]
fn helm_upgrade_drops_what_the_chart_no_longer_renders_and_uninstall_removes_the_release() {
    let extra = ["--set", "controller.podAnnotations.e2e/stale=yes"];
    let (example, before, writer) = writing_with("upgrade", &extra);
    let deployment = format!("{RELEASE}-redis-pair-controller");
    let annotations = |example: &Example| {
        let d = example.json(&["get", "deployment", &deployment]).unwrap();
        d.pointer("/spec/template/metadata/annotations")
            .cloned()
            .unwrap_or_default()
    };
    let installed = annotations(&example);
    assert_eq!(installed["e2e/stale"], "yes", "{installed}");

    // Without the value the rendered Deployment no longer has the annotation: the upgrade must
    // remove it from the live object (a merge that only adds would keep it).
    example.helm("upgrade", &["--reset-values"]);
    let upgraded = annotations(&example);
    assert!(upgraded.get("e2e/stale").is_none(), "{upgraded}");
    let d = example
        .json(&["get", "deployment", &deployment, "--show-managed-fields"])
        .unwrap();
    // Who wrote the Deployment, and how (server-side `Apply` or a client-side `Update`).
    let writers: Vec<String> = d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{}/{}", text(f, "/manager"), text(f, "/operation")))
        .collect();
    let after = example.await_published("the pair Healthy after the upgrade", |_| true);
    let report = settle_and_check(&example, writer, "helm upgrade");
    eprintln!(
        "helm upgrade (Deployment written by {writers:?}): master {} → {} (epoch {} → {}), longest write pause {:?}",
        before.master_pod,
        after.master_pod,
        before.epoch,
        after.epoch,
        report.longest_pause()
    );

    crate::support::kube::helm(
        example.ns.cluster,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            &example.ns.name,
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    eventually("every pod and the RedisPair gone", SETTLE, || {
        let left = example.kubectl(&[
            "get",
            "pods,redispairs,statefulsets,deployments",
            "-o",
            "name",
        ]);
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
}
