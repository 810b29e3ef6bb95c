//! Pod networks: one network namespace per pod, a veth pair whose host end joins the cluster's
//! bridge and whose pod end is `eth0` with the pod's IP, and a default route via the node. So
//! `127.0.0.1` in a pod is the pod's own, and pods reach each other and the API server by IP.
//! I/O: the `ip` command (iproute2), as root.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};

use crate::args::Args;

/// The pod subnet's free addresses and the record of namespaces made.
#[derive(Clone)]
pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    prefix_len: u8,
    netns_prefix: String,
    record: PathBuf,
    free: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
}

/// What one pod's network is made of; [`Network::release`] undoes it.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Network {
    pub fn new(args: &Args) -> anyhow::Result<Self> {
        if !(16..=30).contains(&args.prefix_len) {
            bail!("--prefix-len {} (16 to 30)", args.prefix_len);
        }
        let mask = u32::MAX << (32 - args.prefix_len);
        let base = u32::from(args.node_ip) & mask;
        let broadcast = base | !mask;
        let (first, last) = match &args.pod_ips {
            None => (base + 1, broadcast - 1),
            Some(range) => {
                let (first, last) = range
                    .split_once('-')
                    .with_context(|| format!("--pod-ips {range}: not FIRST-LAST"))?;
                let first: Ipv4Addr = first.parse().context("--pod-ips: the first address")?;
                let last: Ipv4Addr = last.parse().context("--pod-ips: the last address")?;
                (u32::from(first), u32::from(last))
            }
        };
        if first <= base || last >= broadcast || first > last {
            bail!(
                "--pod-ips: not within the node's /{} subnet",
                args.prefix_len
            );
        }
        let free = (first..=last)
            .map(Ipv4Addr::from)
            .filter(|ip| *ip != args.node_ip)
            .collect();
        Ok(Self {
            bridge: args.bridge.clone(),
            gateway: args.node_ip,
            prefix_len: args.prefix_len,
            netns_prefix: args.netns_prefix.clone(),
            record: args.netns_record.clone(),
            free: Arc::new(Mutex::new(free)),
        })
    }

    fn take_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let mut free = self
            .free
            .lock()
            .map_err(|_| anyhow::anyhow!("IP pool poisoned"))?;
        let ip = free.iter().next().copied().context("no free pod IP left")?;
        free.remove(&ip);
        Ok(ip)
    }

    fn give_back(&self, ip: Ipv4Addr) {
        if let Ok(mut free) = self.free.lock() {
            free.insert(ip);
        }
    }

    /// Makes the pod's namespace and wires it to the bridge.
    pub async fn create(&self) -> anyhow::Result<PodNetwork> {
        let ip = self.take_ip()?;
        let last = ip.octets();
        // Interface names have at most 15 bytes: the namespace prefix is unique per cluster and
        // the two low octets are unique within it.
        let netns = format!("{}{}-{}", self.netns_prefix, last[2], last[3]);
        let host_end = format!("{}{}-{}", self.netns_prefix, last[2], last[3]);
        let pod = PodNetwork { netns, ip };
        if let Err(error) = self.wire(&pod, &host_end).await {
            self.release(pod).await;
            return Err(error);
        }
        Ok(pod)
    }

    async fn wire(&self, pod: &PodNetwork, host_end: &str) -> anyhow::Result<()> {
        let ns = pod.netns.as_str();
        // A namespace of that name left by an agent that was killed goes first, with whatever
        // still runs in it (else those processes would hold it, unnamed, with its veth).
        kill_all_in(ns).await;
        let _ = ip(&["netns", "delete", ns]).await;
        let _ = ip(&["link", "delete", host_end]).await;
        ip(&["netns", "add", ns]).await?;
        self.record_netns(ns)?;
        let address = format!("{}/{}", pod.ip, self.prefix_len);
        let gateway = self.gateway.to_string();
        // The pod's MAC address follows from its IP (as Docker's does). A StatefulSet's pod
        // comes back with the same IP at once; with a new random MAC, the host and every pod
        // kept sending to the old one until their neighbour entries went stale: the new pod
        // was unreachable for about 20 s (probes timed out, its liveness killed it, the
        // controller could not make it a replica).
        let o = pod.ip.octets();
        let mac = format!("02:52:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        ip(&[
            "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "address", &mac,
            "netns", ns,
        ])
        .await?;
        ip(&["link", "set", host_end, "master", &self.bridge, "up"]).await?;
        ip(&["-n", ns, "addr", "add", &address, "dev", "eth0"]).await?;
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
        ip(&["-n", ns, "route", "add", "default", "via", &gateway]).await?;
        Ok(())
    }

    /// Deletes the namespace (its veth pair goes with it) and frees the IP.
    pub async fn release(&self, pod: PodNetwork) {
        // A probe or hook still running (or a daemon a container forked) would hold the
        // namespace, and with it the veth and the IP's route, after the name is gone.
        kill_all_in(&pod.netns).await;
        if let Err(error) = ip(&["netns", "delete", &pod.netns]).await {
            tracing::warn!(netns = %pod.netns, "{error:#}");
        }
        self.give_back(pod.ip);
    }

    fn record_netns(&self, ns: &str) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record)
            .with_context(|| format!("opening {}", self.record.display()))?;
        writeln!(file, "{ns}").context("recording the network namespace")
    }
}

/// SIGKILLs every process in a named network namespace.
async fn kill_all_in(ns: &str) {
    let Ok(output) = tokio::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .await
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) on a pid read just now; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
