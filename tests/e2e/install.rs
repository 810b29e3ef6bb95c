//! `helm install` of the chart with its example, on the real server.

use crate::support::cluster::cluster;
use crate::support::kube::{kubectl, text, try_kubectl};
use crate::support::pair::{Example, RELEASE};

#[test]
fn helm_install_makes_the_example_pair_healthy_at_epoch_1_on_the_real_server() {
    let example = Example::install("install");
    let published = example.await_published("the example pair Healthy", |p| p.epoch >= 1);
    assert_eq!(
        published.epoch, 1,
        "the first publication is epoch 1: {published:?}"
    );
    assert!(
        example.redis_pods().contains(&published.master_pod),
        "the master {published:?} is one of the StatefulSet's pods"
    );

    let version: serde_json::Value =
        serde_json::from_str(&kubectl(cluster(), &["version", "-o", "json"])).unwrap();
    let server = text(&version, "/serverVersion/gitVersion");
    assert!(server.starts_with("v1.37."), "server version {server}");

    // The controller runs as the chart's ServiceAccount, and the real authorizer holds it to
    // the chart's namespaced rules (`watchNamespaces`): its own namespace's pods, nothing else.
    let sa = format!(
        "system:serviceaccount:{}:{RELEASE}-redis-pair-controller",
        example.ns.name
    );
    let can = |verb: &str, resource: &str, ns: &str| {
        try_kubectl(
            cluster(),
            &["auth", "can-i", verb, resource, "--as", &sa, "-n", ns],
        )
        .is_ok()
    };
    assert!(can("patch", "redispairs.redispair.io", &example.ns.name));
    assert!(
        !can("list", "pods", "default"),
        "{sa} may list pods in another namespace"
    );
    assert!(
        !can("delete", "pods", &example.ns.name),
        "{sa} may delete pods"
    );
}
