//! A kubelet of our own, for redis-pair's tests on a real control plane: it registers a Node,
//! renews its Lease, and runs every pod bound to it as real processes, each pod in a network
//! namespace of its own with its own IP on the cluster's bridge.
//!
//! # Layout
//! - [`args`]: the command line (`scripts/cluster.sh` passes every address).
//! - `node`: the Node object, its status and its Lease (renewed every 10 s; stopping renewals is
//!   how a test loses the node).
//! - `pods`: the watch on pods bound to this node, one worker per pod. A worker's life:
//!   `set up (network, volumes) -> start containers -> run (exits, probes) -> terminate
//!   (preStop, SIGTERM, grace, SIGKILL) -> tear down -> final delete`.
//! - `network`: pod network namespaces, veth pairs and IPs (I/O: `ip`).
//! - `volumes`: Secret, ConfigMap and ServiceAccount-token volumes written to the pod's
//!   directory (I/O: the API server and files).
//! - `process`: a container's process, entered into the pod's namespaces (I/O: fork/exec).
//! - `env`: a container's environment (values, the downward API, Secret and ConfigMap keys) and
//!   `$(VAR)` expansion.
//! - `image`: which binary of this machine an image name stands for (pure).
//! - `probe`: tcpSocket, httpGet and exec checks.
//! - `status`: the pod status, as a kubelet writes it (pure).
#![deny(rust_2018_idioms)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod args;
mod env;
mod image;
mod network;
mod node;
mod pods;
mod probe;
mod process;
mod status;
mod volumes;

pub use args::Args;

/// A kube error in one line: the API server's Status is otherwise printed twice, whole.
pub(crate) fn api_error(error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => {
            anyhow::anyhow!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => anyhow::Error::new(other),
    }
}

/// A `metav1.MicroTime`: the API server accepts exactly six fractional digits.
pub(crate) fn micro_time(at: k8s_openapi::jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A `metav1.Time`: whole seconds, as the API server stores it.
pub(crate) fn time(at: k8s_openapi::jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

use anyhow::Context as _;

/// Runs the agent until SIGTERM or SIGINT; the pods' processes are left to `cluster.sh down`
/// (a kubelet's restart does not stop containers either).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("the kubeconfig")?;
    let client = kube::Client::try_from(config).context("the Kubernetes client")?;
    let network = network::Network::new(&args)?;
    let images = image::Images::new(&args.image)?;
    let since = node::register(&client, &args).await?;
    let lease = tokio::spawn(node::renew(client.clone(), args.clone(), since));
    let pods = tokio::spawn(pods::run(client, args, network, images));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = lease => result.context("the Lease task")?.context("the Lease"),
        result = pods => result.context("the pod task")?.context("the pods"),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
