//! The command line; `scripts/cluster.sh` passes every value from its `cluster.env`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Clone, Debug, clap::Parser)]
#[command(about = "A kubelet of our own: runs the pods bound to one Node as processes")]
pub struct Args {
    /// Credentials of `system:node:<name>` (the Node authorizer and NodeRestriction apply).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    #[arg(long)]
    pub node_name: String,
    /// The node's address, on the bridge: its InternalIP, the pods' hostIP and gateway.
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// Where the API server listens (KUBERNETES_SERVICE_HOST); default --node-ip.
    #[arg(long)]
    pub api_host: Option<Ipv4Addr>,
    /// The pod IPs this node hands out, FIRST-LAST within the subnet (nodes on one bridge take
    /// disjoint ranges); default the whole subnet but the node's address.
    #[arg(long, value_name = "FIRST-LAST")]
    pub pod_ips: Option<String>,
    /// The bridge the pods' veths join (made by `cluster.sh up`).
    #[arg(long)]
    pub bridge: String,
    /// Prefix length of the pods' subnet, the /N around --node-ip.
    #[arg(long, default_value_t = 24)]
    pub prefix_len: u8,
    /// The API server's port: KUBERNETES_SERVICE_PORT in every container.
    #[arg(long)]
    pub api_port: u16,
    /// Pods' files (volumes, logs) go under <state-dir>/pods/<namespace>_<name>_<uid>/.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// One line per network namespace made, so `cluster.sh down` removes what a killed agent left.
    #[arg(long)]
    pub netns_record: PathBuf,
    /// Prefix of the network namespaces' names (unique per cluster).
    #[arg(long)]
    pub netns_prefix: String,
    /// NAME=PATH: containers whose image is NAME (any registry, tag or digest) run PATH as the
    /// image's entrypoint, e.g. redis=/usr/bin/redis-server.
    #[arg(long, value_name = "NAME=PATH")]
    pub image: Vec<String>,
    /// What the Node reports as its kubelet version (the control plane's).
    #[arg(long, default_value = "v0.0.0")]
    pub kubelet_version: String,
}
