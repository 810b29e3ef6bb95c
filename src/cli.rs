//! The command line: one binary, one subcommand per mode. Flags are turned into the typed
//! configuration of the module that owns them; nothing here does I/O.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::Endpoint;
use crate::proxy::ProxyConfig;

#[derive(Debug, Parser)]
#[command(
    name = "redis-pair",
    version,
    about = "Highly available Redis master/replica groups: failover engine and proxy"
)]
pub struct Cli {
    /// Log format (logs go to stdout; a fatal error is one line on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Failover engine and proxy in one process for a list of Redis servers, no Kubernetes:
    /// clients connect to --listen and always reach the current master.
    Local(LocalArgs),
    /// The Kubernetes controller: keeps the Redis pods of every RedisPair highly available
    /// and publishes each pair's master on the RedisPair. Run two; one holds the lease.
    Controller(ControllerArgs),
    /// The sidecar proxy for an application pod: follows one RedisPair's published master and
    /// forwards every client on --listen to it.
    Proxy(ProxyArgs),
    /// Prints the RedisPair CustomResourceDefinition as YAML (what crds/redispair.yaml holds).
    Crd,
}

fn duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 500ms, 2s or 1m"))?;
    if parsed.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(parsed)
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Address the proxy accepts client connections on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// A Redis server of the group, HOST:PORT; give it once per server (at least two).
    #[arg(long = "server", value_name = "HOST:PORT", required = true)]
    pub servers: Vec<Endpoint>,

    /// Address of the admin HTTP endpoint (/healthz, /readyz, /metrics, /status, /switchover).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9400")]
    pub admin_listen: SocketAddr,

    /// How often every server is probed.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = duration)]
    pub probe_interval: Duration,

    /// Deadline of one probe (connect, AUTH and INFO together).
    #[arg(long, value_name = "DUR", default_value = "250ms", value_parser = duration)]
    pub probe_timeout: Duration,

    /// A server that stops answering is down after this long (one that refuses connections is
    /// down at once).
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = duration)]
    pub down_after: Duration,

    /// A planned switchover is aborted if the target has not caught up within this.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = duration)]
    pub switchover_timeout: Duration,

    #[command(flatten)]
    pub credentials: CredentialArgs,

    #[command(flatten)]
    pub proxy: ProxyFlags,
}

/// The credentials of redis-pair's own Redis connections.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// ACL user for redis-pair's own Redis connections.
    #[arg(long, value_name = "USER", env = "REDISPAIR_USERNAME")]
    pub username: Option<String>,

    /// File holding the password for redis-pair's own Redis connections (or set
    /// REDISPAIR_PASSWORD).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// How the proxy serves clients; the same in local mode and in the sidecar.
#[derive(Debug, Args)]
pub struct ProxyFlags {
    /// Also accept clients on this Unix socket (created 0666, replacing one left by a stopped
    /// process, removed on exit). Clients on the same host or pod get the same service for
    /// less CPU than over loopback TCP (docs/DECISIONS.md).
    #[arg(long, value_name = "PATH")]
    pub listen_unix: Option<PathBuf>,

    /// A request (or a pinned client's connection) that finds no master published waits this
    /// long, then the client is closed.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = duration)]
    pub wait_for_master: Duration,

    /// On SIGTERM/SIGINT, open client connections get this long to finish.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Give every client a server connection of its own and copy its bytes as they are,
    /// instead of sharing server connections for plain data commands (docs/DECISIONS.md).
    #[arg(long)]
    pub no_multiplex: bool,

    /// At most this many server connections are shared by the multiplexed clients; a client
    /// goes to an idle one, else the least loaded.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shared_connections: u16,

    /// A client on the shared path that lets more than this many MiB of replies pile up
    /// unread is closed (like Redis's client-output-buffer-limit), so one stalled client
    /// cannot grow the proxy without bound.
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_backlog_mib: u32,

    /// Requests read from the shared-path clients and not yet written to the master are held
    /// to this many MiB in all, and a quarter of it per client: a client over its share, or
    /// any client while the total is over, is not read until the master takes them (TCP
    /// pushes back on the application; nobody is closed). Bounds the proxy's memory while
    /// the master is stalled or no master is published (docs/DECISIONS.md).
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_request_backlog_mib: u32,

    /// Worker threads. One (the default) runs everything on a single-threaded runtime, which
    /// measured cheapest per request (docs/PERFORMANCE.md): the proxy's work is almost all
    /// kernel TCP, and one Redis master rarely needs more than a core of proxying. 0 = one per
    /// core.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
}

impl ProxyFlags {
    /// The proxy's configuration; `connect_timeout` bounds a connection to the master.
    pub fn config(&self, connect_timeout: Duration) -> ProxyConfig {
        ProxyConfig {
            wait_for_master: self.wait_for_master,
            connect_timeout,
            drain_timeout: self.drain_timeout,
            multiplex: !self.no_multiplex,
            shared_connections: usize::from(self.shared_connections),
            max_client_backlog: usize::try_from(u64::from(self.max_client_backlog_mib) << 20)
                .unwrap_or(usize::MAX),
            max_request_backlog: usize::try_from(u64::from(self.max_request_backlog_mib) << 20)
                .unwrap_or(usize::MAX),
        }
    }
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Watch RedisPairs in this namespace; repeat for several. Default: every namespace.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Address of the admin HTTP endpoint (/healthz, /readyz, /metrics, /status).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// Name of the coordination.k8s.io Lease the controllers elect a leader with.
    #[arg(long, value_name = "NAME", default_value = "redis-pair-controller")]
    pub lease_name: String,

    /// Namespace of the Lease. Default: the controller pod's namespace (POD_NAMESPACE or the
    /// service account's), else the kubeconfig context's.
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,

    /// This controller's name in the Lease. Default: POD_NAME, else the host name.
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a Lease holds without renewal: the longest a dead leader delays a failover
    /// (a leader that shuts down cleanly hands the Lease over at once). It renews every sixth
    /// of this and stops acting after two thirds of it without a renewal.
    #[arg(long, value_name = "DUR", default_value = "6s", value_parser = duration)]
    pub lease_duration: Duration,

    /// Worker threads (0 = one per core).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The RedisPair whose master this sidecar forwards to.
    #[arg(long, value_name = "NAME")]
    pub pair: String,

    /// The RedisPair's namespace. Default: POD_NAMESPACE, else the service account's.
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address the proxy accepts client connections on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6379")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP endpoint (/healthz, /readyz, /metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9401")]
    pub admin_listen: SocketAddr,

    /// Credentials for the sidecar's ROLE checks of the published master (clients
    /// authenticate themselves; the sidecar never authenticates for them).
    #[command(flatten)]
    pub credentials: CredentialArgs,

    #[command(flatten)]
    pub proxy: ProxyFlags,
}
