//! `redis-pair local`: the failover engine, the proxy and the admin endpoint in one process,
//! for a list of Redis servers and no Kubernetes. Validates its configuration before it
//! serves anything, so every mistake is one clear line and exit code 64.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::cli::LocalArgs;
use crate::engine::redis_io::{self, Connector, Credentials};
use crate::engine::runner::{Engine, EngineConfig, Member};
use crate::engine::{Endpoint, Fencing, InProcess, Policy, Published};
use crate::metrics::{self, EngineMetrics, ProxyMetrics};
use crate::proxy;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("redis-pair local needs at least two --server (a master and a replica), got {0}")]
    TooFewServers(usize),
    #[error("--server {0} is given twice; list every server once")]
    DuplicateServer(String),
    #[error(
        "cannot resolve the host of --server {endpoint}: {detail}; fix the name or use an IP address"
    )]
    Unresolvable { endpoint: Endpoint, detail: String },
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
    #[error("--listen {0} is the address of a --server; the proxy would forward to itself")]
    ListenIsAServer(SocketAddr),
    #[error("{0}")]
    InvalidTiming(String),
    #[error(
        "server {endpoint} rejected redis-pair's credentials ({detail}); set --password-file or \
         REDISPAIR_PASSWORD (and --username for an ACL user) to what the server requires"
    )]
    AuthRejected { endpoint: Endpoint, detail: String },
    #[error("the failover engine stopped unexpectedly ({0}); restart redis-pair and report a bug")]
    EngineStopped(String),
}

impl LocalError {
    /// 64 (EX_USAGE) for anything the user fixes in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::EngineStopped(_) => 1,
            _ => 64,
        }
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub async fn run(args: LocalArgs) -> Result<(), LocalError> {
    check_timing(&args)?;
    let members = resolve(&args.servers).await?;
    if members.iter().any(|m| m.addrs.contains(&args.listen)) {
        return Err(LocalError::ListenIsAServer(args.listen));
    }
    let credentials = Credentials {
        username: args.credentials.username.clone(),
        password: redis_io::read_password(args.credentials.password_file.as_deref()).map_err(
            |source| LocalError::PasswordFile {
                path: args.credentials.password_file.clone().unwrap_or_default(),
                source,
            },
        )?,
    };
    let proxy_listeners = proxy::Listeners {
        tcp: bind("--listen", args.listen).await?,
        unix: match &args.proxy.listen_unix {
            Some(path) => Some(proxy::UnixSocketListener::bind(path)?),
            None => None,
        },
    };
    let admin_listener = bind("--admin-listen", args.admin_listen).await?;

    let mut registry = metrics::registry();
    let engine_metrics = EngineMetrics::register(&mut registry, true);
    let proxy_metrics = ProxyMetrics::register(&mut registry);
    let config = EngineConfig {
        members,
        policy: Policy {
            down_after: args.down_after,
            // Local mode leaves min-replicas-* as the servers' configuration has them.
            fencing: Fencing::Unmanaged,
        },
        probe_interval: args.probe_interval,
        switchover_timeout: args.switchover_timeout,
        published: Published::default(),
        paused: false,
    };
    let connector = Connector::new(credentials, args.probe_timeout);
    let (mut engine, handle) = Engine::new(config, connector, engine_metrics, InProcess);
    if let Some((endpoint, error)) = engine.first_probe().await.into_iter().next() {
        return Err(LocalError::AuthRejected {
            endpoint,
            detail: error.detail,
        });
    }

    let stop_engine = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let engine_task = tokio::spawn(engine.run(stop_engine.clone()));
    let admin_state = Arc::new(AdminState {
        registry,
        ready: {
            let published = handle.published.clone();
            Box::new(move || match published.borrow().master {
                Some(_) => Ok(()),
                None => Err("no master published".into()),
            })
        },
        status: {
            let status = handle.status.clone();
            Some(Box::new(move || {
                serde_json::to_value(&*status.borrow()).unwrap_or_default()
            }))
        },
        engine: Some(handle.clone()),
        draining: stop_accepting.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state,
        stop_admin.clone(),
    ));
    let proxy_config = args
        .proxy
        .config(args.probe_timeout.max(Duration::from_millis(500)));
    let proxy_task = tokio::spawn(proxy::serve(
        proxy_listeners,
        handle.published.clone(),
        proxy_metrics,
        proxy_config,
        stop_accepting.clone(),
    ));
    info!(
        listen = %args.listen,
        listen_unix = args.proxy.listen_unix.as_ref().map(|p| p.display().to_string()),
        admin = %args.admin_listen,
        servers = %args.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        "redis-pair local started"
    );

    let mut engine_task = engine_task;
    tokio::select! {
        () = crate::signal::terminate_or_interrupt() => {}
        ended = &mut engine_task => {
            // The engine only returns when told to; anything else is a bug, and a proxy whose
            // engine is gone would route on stale information forever.
            stop_accepting.cancel();
            stop_admin.cancel();
            return Err(LocalError::EngineStopped(match ended {
                Err(e) if e.is_panic() => "it panicked".into(),
                _ => "it returned".into(),
            }));
        }
    }
    info!("shutting down: no new connections, draining open ones");
    stop_accepting.cancel();
    let _ = proxy_task.await;
    stop_engine.cancel();
    stop_admin.cancel();
    let _ = engine_task.await;
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

fn check_timing(args: &LocalArgs) -> Result<(), LocalError> {
    if args.probe_timeout >= args.down_after {
        return Err(LocalError::InvalidTiming(format!(
            "--probe-timeout ({}) must be shorter than --down-after ({}), or a hung master is \
             never seen failing before it is down",
            humantime::format_duration(args.probe_timeout),
            humantime::format_duration(args.down_after)
        )));
    }
    Ok(())
}

async fn resolve(servers: &[Endpoint]) -> Result<Vec<Member>, LocalError> {
    if servers.len() < 2 {
        return Err(LocalError::TooFewServers(servers.len()));
    }
    let mut seen: HashMap<SocketAddr, &Endpoint> = HashMap::new();
    let mut members = Vec::with_capacity(servers.len());
    for (i, endpoint) in servers.iter().enumerate() {
        if servers[..i].contains(endpoint) {
            return Err(LocalError::DuplicateServer(endpoint.to_string()));
        }
        let lookup = tokio::net::lookup_host((endpoint.host(), endpoint.port()));
        let addrs: Vec<SocketAddr> =
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(error)) => {
                    return Err(LocalError::Unresolvable {
                        endpoint: endpoint.clone(),
                        detail: error.to_string(),
                    });
                }
                Err(_) => {
                    return Err(LocalError::Unresolvable {
                        endpoint: endpoint.clone(),
                        detail: "the lookup took longer than 5s".into(),
                    });
                }
            };
        for addr in &addrs {
            if let Some(other) = seen.insert(*addr, endpoint) {
                return Err(LocalError::DuplicateServer(format!(
                    "{endpoint} (the same server as {other})"
                )));
            }
        }
        members.push(Member {
            endpoint: endpoint.clone(),
            addrs,
            leaving: false,
        });
    }
    Ok(members)
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, LocalError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| LocalError::Listen { flag, addr, source })
}
