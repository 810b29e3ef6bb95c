//! Probes (startup, liveness, readiness) and lifecycle handlers: tcpSocket and httpGet against
//! the pod's IP from the node, exec inside the pod's namespaces, as a kubelet runs them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::process::{self, Spawn};

/// Where a container's checks go.
#[derive(Clone, Debug)]
pub struct Target {
    pub pod_ip: Ipv4Addr,
    pub container: Container,
    /// How to run an exec check: the container's own spawn, argv replaced.
    pub spawn: Spawn,
}

pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(probe: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Timing {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// One run of a probe: success, or why not.
pub async fn check(probe: &Probe, target: &Target) -> anyhow::Result<()> {
    let timeout = timing(probe).timeout;
    let run = async {
        if let Some(tcp) = &probe.tcp_socket {
            let port = port(&tcp.port, &target.container)?;
            tokio::net::TcpStream::connect(SocketAddr::from((target.pod_ip, port))).await?;
            Ok(())
        } else if let Some(http) = &probe.http_get {
            http_get(http, target).await
        } else if let Some(exec) = &probe.exec {
            exec_action(exec, target, timeout).await
        } else {
            bail!("unsupported probe (tcpSocket, httpGet and exec are)")
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .context("timed out")?
}

pub async fn http_get(http: &HTTPGetAction, target: &Target) -> anyhow::Result<()> {
    let port = port(&http.port, &target.container)?;
    let host = http
        .host
        .clone()
        .unwrap_or_else(|| target.pod_ip.to_string());
    let path = http.path.clone().unwrap_or_else(|| "/".into());
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/node-agent\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let read = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        bail!("HTTP {code}")
    }
}

pub async fn exec_action(
    exec: &ExecAction,
    target: &Target,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut spawn = target.spawn.clone();
    spawn.argv = exec.command.clone().unwrap_or_default();
    let mut child = process::spawn(&spawn)?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if status.success() {
                Ok(())
            } else {
                bail!("exited with {status}")
            }
        }
        Err(_) => {
            if let Some(pid) = pid {
                process::signal_group(pid, libc::SIGKILL);
            }
            let _ = child.wait().await;
            bail!("timed out")
        }
    }
}

fn port(port: &IntOrString, container: &Container) -> anyhow::Result<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).context("port out of range"),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .with_context(|| format!("no port named {name}")),
    }
}
