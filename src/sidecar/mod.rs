//! `redis-pair proxy --pair NAME`: the sidecar of an application pod. It watches one
//! RedisPair, follows the master its annotations publish (`redispair.io/active` under
//! `redispair.io/epoch`), routes new connections to it only once the server itself says
//! `master` (ROLE), and serves clients with the same proxy as local mode.
//!
//! - `route`: the decision (pure): which publication is followed, what is routed, readiness.
//! - `pair`: the RedisPair watch (kube-runtime watcher, field selector, backoff).
//! - `role`: the ROLE check (redis-rs).
//! - `follow`: the task that ties them together and feeds the proxy and the admin endpoint.
//! - `resident`: gives back the pages of start-up code once ready (idle RSS).
//!
//! Like local mode it validates its configuration before it serves anything (exit 64 with one
//! line naming the fix); unlike a configuration mistake, an API server that does not answer
//! yet is an outage: the sidecar keeps trying and is simply not ready.

mod follow;
mod pair;
mod resident;
mod role;
mod route;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::cli::ProxyArgs;
use crate::cluster::{self, ClusterError};
use crate::engine::Published;
use crate::engine::redis_io::Credentials;
use crate::metrics::{self, ProxyMetrics, SidecarMetrics};
use crate::proxy;

use self::follow::{Follower, Outputs, RoleCredentials, View};

/// Deadline for a client's connection to the master (the proxy's connect timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{what} {value:?} is not a valid Kubernetes name: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "cannot tell which namespace RedisPair {pair} is in: give --namespace, set POD_NAMESPACE \
         (in a pod: env from fieldRef metadata.namespace), or run in a pod with a service account"
    )]
    NoNamespace { pair: String },
    #[error("cannot read --password-file {path}: {source}; check the path and its permissions")]
    PasswordFile { path: PathBuf, source: io::Error },
    #[error(
        "cannot listen on {addr} ({flag}): {source}; stop whatever holds it or pick another address"
    )]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("--listen-unix: {0}")]
    ListenUnix(#[from] proxy::UnixListenError),
    #[error("{0}")]
    Kubernetes(#[from] ClusterError),
    #[error("the sidecar's follower stopped unexpectedly ({0}); restart it and report a bug")]
    FollowerStopped(&'static str),
}

impl SidecarError {
    /// 64 (EX_USAGE) for anything the user fixes in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            SidecarError::FollowerStopped(_) => 1,
            _ => 64,
        }
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub async fn run(args: ProxyArgs) -> Result<(), SidecarError> {
    check_name("--pair", &args.pair, 253)?;
    let namespace = namespace(&args)?;
    check_name("the namespace", &namespace, 63)?;
    let credentials = Credentials {
        username: args.credentials.username.clone(),
        password: password(args.credentials.password_file.as_deref())?,
    };
    let listeners = proxy::Listeners {
        tcp: bind("--listen", args.listen).await?,
        unix: match &args.proxy.listen_unix {
            Some(path) => Some(proxy::UnixSocketListener::bind(path)?),
            None => None,
        },
    };
    let admin_listener = bind("--admin-listen", args.admin_listen).await?;
    // Only a configuration that names no cluster at all is fatal; one whose API server does
    // not answer yet is an outage, which the watch rides out with backoff.
    let cluster = cluster::connect().await?;

    let mut registry = metrics::registry();
    let proxy_metrics = ProxyMetrics::register(&mut registry);
    let sidecar_metrics = SidecarMetrics::register(&mut registry);
    let (route_tx, route_rx) = watch::channel(Published::default());
    let (view_tx, view_rx) = watch::channel(View {
        pair: args.pair.clone(),
        namespace: namespace.clone(),
        cluster_epoch: None,
        master: None,
        route_generation: 0,
        not_ready: Some("starting".into()),
        watching: false,
    });
    let follower = Follower::new(
        RoleCredentials {
            credentials,
            password_file: args.credentials.password_file.clone(),
        },
        Outputs {
            route: route_tx,
            view: view_tx,
            metrics: sidecar_metrics,
        },
    );
    let events = pair::events(cluster.client, &namespace, &args.pair);

    let stop_follower = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let mut follower_task = tokio::spawn(follower.run(events, stop_follower.clone()));
    let admin_state = Arc::new(AdminState {
        registry,
        // The listeners are bound before this serves, so "a verified master is known" is all
        // that is left to wait for; draining is the admin endpoint's own 503.
        ready: {
            let view = view_rx.clone();
            let pair = format!("RedisPair {namespace}/{}", args.pair);
            Box::new(move || match &view.borrow().not_ready {
                None => Ok(()),
                Some(why) => Err(format!("{pair}: {why}")),
            })
        },
        status: Some({
            let view = view_rx.clone();
            Box::new(move || serde_json::to_value(&*view.borrow()).unwrap_or_default())
        }),
        engine: None,
        draining: stop_accepting.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state,
        stop_admin.clone(),
    ));
    let proxy_task = tokio::spawn(proxy::serve(
        listeners,
        route_rx,
        proxy_metrics,
        args.proxy.config(CONNECT_TIMEOUT),
        stop_accepting.clone(),
    ));
    tokio::spawn(release_startup_pages(view_rx));
    info!(
        pair = %args.pair,
        namespace = %namespace,
        listen = %args.listen,
        listen_unix = args.proxy.listen_unix.as_ref().map(|p| p.display().to_string()),
        admin = %args.admin_listen,
        "redis-pair proxy started"
    );

    tokio::select! {
        () = crate::signal::terminate_or_interrupt() => {}
        ended = &mut follower_task => {
            // The follower only returns when told to; a proxy without it would route on stale
            // information forever.
            stop_accepting.cancel();
            stop_admin.cancel();
            return Err(SidecarError::FollowerStopped(match ended {
                Err(e) if e.is_panic() => "it panicked",
                _ => "it returned",
            }));
        }
    }
    info!("shutting down: no new connections, draining open ones");
    stop_accepting.cancel();
    let _ = proxy_task.await;
    stop_follower.cancel();
    stop_admin.cancel();
    let _ = follower_task.await;
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

/// Once start-up is over (the first verified master, or a few seconds), gives back the pages
/// of code that only start-up ran (see `resident`).
async fn release_startup_pages(mut view: watch::Receiver<View>) {
    let ready = view.wait_for(|v| v.not_ready.is_none());
    let _ = tokio::time::timeout(Duration::from_secs(10), ready).await;
    // Let the first ROLE check's and the first requests' connections settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let released = resident::release_startup_pages();
    tracing::debug!(
        released_kib = released / 1024,
        "released the pages of start-up code"
    );
}

/// `--namespace`, else `POD_NAMESPACE` (both through clap), else the service account's
/// namespace file. Never the kubeconfig context's: a sidecar that silently watched another
/// namespace's RedisPair of the same name would route an application to the wrong Redis.
fn namespace(args: &ProxyArgs) -> Result<String, SidecarError> {
    args.namespace
        .as_deref()
        .map(str::trim)
        .filter(|ns| !ns.is_empty())
        .map(str::to_owned)
        .or_else(cluster::pod_namespace)
        .ok_or_else(|| SidecarError::NoNamespace {
            pair: args.pair.clone(),
        })
}

/// A DNS-1123 name as Kubernetes requires of objects (subdomain, `max` 253) and namespaces
/// (label, `max` 63): a typo is reported now, not as a watch that never finds anything.
fn check_name(what: &'static str, value: &str, max: usize) -> Result<(), SidecarError> {
    let fail = |why| SidecarError::InvalidName {
        what,
        value: value.to_owned(),
        why,
    };
    if value.is_empty() {
        return Err(fail("it is empty"));
    }
    if value.len() > max {
        return Err(fail("it is too long"));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let dots = max == 253;
    for part in value.split('.') {
        if !dots && part.len() != value.len() {
            return Err(fail("a namespace has no dots"));
        }
        let bytes = part.as_bytes();
        if !bytes.iter().all(|&b| allowed(b)) {
            return Err(fail("use lowercase letters, digits and '-'"));
        }
        if bytes.first().is_none_or(|b| *b == b'-') || bytes.last().is_none_or(|b| *b == b'-') {
            return Err(fail("it must start and end with a letter or digit"));
        }
    }
    Ok(())
}

/// `--password-file`, else `REDISPAIR_PASSWORD`.
pub(crate) fn password(file: Option<&std::path::Path>) -> Result<Option<String>, SidecarError> {
    crate::engine::redis_io::read_password(file).map_err(|source| SidecarError::PasswordFile {
        path: file.map(std::path::Path::to_path_buf).unwrap_or_default(),
        source,
    })
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Listen { flag, addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_kubernetes_checks_them() {
        assert!(check_name("--pair", "cache", 253).is_ok());
        assert!(check_name("--pair", "cache-1.eu", 253).is_ok());
        assert!(check_name("the namespace", "apps-2", 63).is_ok());
        for bad in ["", "Cache", "cache_1", "-cache", "cache-", "a..b", ".a"] {
            assert!(check_name("--pair", bad, 253).is_err(), "{bad:?}");
        }
        assert!(check_name("the namespace", "a.b", 63).is_err());
        assert!(check_name("the namespace", &"a".repeat(64), 63).is_err());
        assert!(check_name("--pair", &"a".repeat(254), 253).is_err());
    }

    #[test]
    fn configuration_mistakes_exit_64_and_a_stopped_follower_1() {
        let no_ns = SidecarError::NoNamespace {
            pair: "cache".into(),
        };
        assert_eq!(no_ns.exit_code(), 64);
        assert_eq!(SidecarError::FollowerStopped("it returned").exit_code(), 1);
    }
}
