//! The Node and its Lease, as a kubelet keeps them: the Node is created (or taken over) with
//! its address, capacity and a Ready condition; the Lease in `kube-node-lease` is renewed every
//! 10 s and the Node's status every minute. The node-lifecycle controller judges the node by
//! both, so an agent that stops (or is SIGSTOPped) is a node lost.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::args::Args;

const LEASE_SECONDS: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Creates or takes over the Node; returns the time its conditions hold since (this agent's
/// start), which every later status write keeps.
pub async fn register(client: &kube::Client, args: &Args) -> anyhow::Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": args.node_name,
            "labels": {
                "kubernetes.io/hostname": args.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %args.node_name, "registered the Node"),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(node = %args.node_name, "the Node exists; taking it over")
        }
        Err(error) => return Err(crate::api_error(error)).context("creating the Node"),
    }
    let since = crate::time(Timestamp::now());
    patch_status(&nodes, args, &since).await?;
    Ok(since)
}

/// Renews the Lease forever and the Node's status every minute; an error ends the agent (a
/// node that cannot renew is lost anyway, and a test should see why).
pub async fn renew(client: kube::Client, args: Args, since: String) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut last_status = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let result = renew_lease(&leases, &nodes, &args).await;
        let result = match result {
            Ok(()) if last_status.elapsed() >= STATUS_EVERY => {
                last_status = tokio::time::Instant::now();
                patch_status(&nodes, &args, &since).await
            }
            other => other,
        };
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                // An API outage of a test is survived, as a kubelet survives it.
                failures += 1;
                tracing::warn!(failures, "renewing the node: {error:#}");
            }
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn renew_lease(leases: &Api<Lease>, nodes: &Api<Node>, args: &Args) -> anyhow::Result<()> {
    let now = crate::micro_time(Timestamp::now());
    let renew = json!({ "spec": { "renewTime": now, "holderIdentity": args.node_name } });
    match leases
        .patch(
            &args.node_name,
            &PatchParams::default(),
            &Patch::Merge(&renew),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let node = nodes
                .get(&args.node_name)
                .await
                .map_err(crate::api_error)
                .context("reading the Node")?;
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {
                    "name": args.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": args.node_name,
                        "uid": node.metadata.uid,
                    }],
                },
                "spec": {
                    "holderIdentity": args.node_name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now,
                },
            }))?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map_err(crate::api_error)
                .context("creating the Lease")?;
            Ok(())
        }
        Err(error) => Err(crate::api_error(error)).context("renewing the Lease"),
    }
}

async fn patch_status(nodes: &Api<Node>, args: &Args, since: &str) -> anyhow::Result<()> {
    let now = crate::time(Timestamp::now());
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        })
    };
    let resources =
        json!({ "cpu": "32", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi" });
    let status = json!({
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": args.node_ip.to_string() },
                { "type": "Hostname", "address": args.node_name },
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "node-agent"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node-agent"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "node-agent"),
                condition("Ready", "True", "KubeletReady", "node-agent is posting ready status"),
            ],
            "nodeInfo": {
                "kubeletVersion": args.kubelet_version,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "node-agent://0.1.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "redis-pair node-agent",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        }
    });
    nodes
        .patch_status(
            &args.node_name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .map_err(crate::api_error)
        .context("writing the Node's status")?;
    Ok(())
}
