//! `redis-pair controller`: keeps the Redis pods of every RedisPair highly available.
//!
//! A kube-runtime Controller per watched namespace (or one for the cluster) reconciles each
//! RedisPair when it, one of its pods or its Secret changes. Only the holder of the Lease
//! (`lease`) runs engines or writes anything; the others keep their caches warm and take over
//! when it goes.
//!
//! # Layout (imports point down this list, never up)
//! - `reconcile`: fetch → validate → hand the pair to `pairs` → a typed outcome.
//! - `pairs`: one engine per pair, started, updated, restarted, stopped per leadership term.
//! - `publisher`: the engine's `Publisher` (annotations by JSON patch, master label, Events).
//! - `status_writer`: the RedisPair's status and its pods' role labels, written.
//! - `status`: what they should say (pure); `events`: what each Event says (pure) and the
//!   queue that records them; `validate`: is a pair manageable (pure).
//! - `view`: the plain data the tasks of a pair share; `api`: every API call's deadline and
//!   the write helpers; `lease`: the election and the leadership terms.

pub mod api;
pub mod events;
pub mod lease;
pub mod pairs;
pub mod publisher;
pub mod reconcile;
pub mod status;
pub mod status_writer;
#[cfg(test)]
mod test_api;
pub mod validate;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Secret};
use kube::core::{PartialObjectMeta, SelectorExt};
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::events::EventSink;
use self::lease::{Elector, Leadership, LeaseConfig};
use self::pairs::{Pairs, Shared};
use self::reconcile::{Context, error_policy, reconcile};
use crate::admin::{self, AdminState};
use crate::cli::ControllerArgs;
use crate::cluster::{self, ClusterError};
use crate::crd::RedisPair;
use crate::metrics::{self, ControllerMetrics, EngineMetrics};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "cannot listen on {addr} (--admin-listen): {source}; stop whatever holds it or pick \
         another address"
    )]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("--lease-duration must be at least 3s, or a renewal cannot fit in it ({0:?} given)")]
    LeaseTooShort(Duration),
    #[error("the {0} stopped unexpectedly; restart the controller and report a bug")]
    TaskEnded(&'static str),
}

impl ControllerError {
    /// 64 (EX_USAGE) for what the user fixes in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ControllerError::TaskEnded(_) => 1,
            _ => 64,
        }
    }
}

/// Runs until SIGTERM or SIGINT: then stops every engine, releases the Lease and returns.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    if args.lease_duration < Duration::from_secs(3) {
        return Err(ControllerError::LeaseTooShort(args.lease_duration));
    }
    let cluster = cluster::connect().await?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| ControllerError::Listen {
            addr: args.admin_listen,
            source,
        })?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(cluster::pod_namespace)
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let client = cluster.client;

    let mut registry = metrics::registry();
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let engine_metrics = EngineMetrics::register(&mut registry, false);

    let (mut elector, leadership) = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &lease_namespace),
        LeaseConfig {
            name: args.lease_name.clone(),
            identity: identity.clone(),
            duration: args.lease_duration,
        },
        controller_metrics.clone(),
    );
    let (events, queued_events) = EventSink::new();
    let pairs = Arc::new(Pairs::new(Shared {
        client: client.clone(),
        leadership: leadership.clone(),
        events,
        engine_metrics,
        metrics: controller_metrics.clone(),
    }));

    let shutdown = CancellationToken::new();
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    // Three caches per scope (pairs, pods, secrets' metadata); ready when all have synced.
    let synced = Arc::new(AtomicUsize::new(0));
    let caches = scopes.len() * 3;
    let mut controllers = tokio::task::JoinSet::new();
    for scope in scopes {
        controllers.spawn(run_scope(
            scope,
            client.clone(),
            pairs.clone(),
            leadership.clone(),
            controller_metrics.clone(),
            synced.clone(),
            shutdown.clone(),
        ));
    }

    let reporter = Reporter {
        controller: "redis-pair-controller".into(),
        instance: Some(identity.clone()),
    };
    let events_task = tokio::spawn(events::record_events(
        client.clone(),
        reporter,
        queued_events,
        leadership.clone(),
        controller_metrics.clone(),
    ));
    // Losing the lease stops every engine at once (each also checks before every action).
    let follower_task = tokio::spawn(stop_engines_when_not_leader(
        leadership.clone(),
        pairs.clone(),
    ));

    let draining = CancellationToken::new();
    let admin_state = Arc::new(AdminState {
        registry,
        ready: {
            let synced = synced.clone();
            Box::new(move || {
                let done = synced.load(Ordering::Relaxed);
                if done >= caches {
                    Ok(())
                } else {
                    Err(format!("{done} of {caches} watches have synced"))
                }
            })
        },
        status: {
            let pairs = pairs.clone();
            let leadership = leadership.clone();
            let identity = identity.clone();
            Some(Box::new(move || {
                serde_json::json!({
                    "identity": identity,
                    "leader": leadership.is_leader(),
                    "pairs": pairs.statuses(),
                })
            }))
        },
        engine: None,
        draining: draining.clone(),
    });
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state,
        stop_admin.clone(),
    ));
    info!(
        identity = %identity,
        lease = %format!("{lease_namespace}/{}", args.lease_name),
        admin = %args.admin_listen,
        namespaces = %if args.namespaces.is_empty() { "all".to_owned() } else { args.namespaces.join(",") },
        "redis-pair controller started"
    );

    let lease_stop = shutdown.child_token();
    let mut lease_task = tokio::spawn(async move {
        elector.run(lease_stop).await;
        elector
    });
    let outcome = tokio::select! {
        () = crate::signal::terminate_or_interrupt() => Ok(()),
        ended = &mut lease_task => match ended {
            Ok(_) | Err(_) => Err(ControllerError::TaskEnded("lease election")),
        },
        Some(_) = controllers.join_next() => Err(ControllerError::TaskEnded("controller")),
    };
    info!("shutting down: stopping every engine, then releasing the lease");
    draining.cancel();
    shutdown.cancel();
    if let Ok(mut elector) = lease_task.await {
        // Nothing acts any more once the elector has returned; then the next leader need not
        // wait for the Lease to expire.
        pairs.stop_all().await;
        elector.release().await;
    } else {
        pairs.stop_all().await;
    }
    follower_task.abort();
    events_task.abort();
    controllers.abort_all();
    stop_admin.cancel();
    let _ = admin_task.await;
    info!("stopped");
    outcome
}

/// The watches and the Controller of one namespace, or of the whole cluster for `None`.
async fn run_scope(
    namespace: Option<String>,
    client: Client,
    pairs: Arc<Pairs>,
    leadership: Leadership,
    metrics: ControllerMetrics,
    synced: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let pair_api: Api<RedisPair> = api(&client, namespace.as_deref());
    let pod_api: Api<Pod> = api(&client, namespace.as_deref());
    // Metadata only: the controller reads a Secret's data with a GET when a pair needs it,
    // and keeps no passwords of unrelated Secrets in memory.
    let secret_api: Api<PartialObjectMeta<Secret>> = api(&client, namespace.as_deref());

    let pairs_synced = Synced::new(&synced);
    let (pair_store, pair_writer) = reflector::store();
    let pair_events = reflector::reflector(
        pair_writer,
        cluster::resumed(
            watcher(pair_api, watcher::Config::default()).inspect_ok(pairs_synced.marker()),
        ),
    )
    .applied_objects();

    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pod_writer,
        cluster::resumed(
            watcher(pod_api, watcher::Config::default())
                .inspect_ok(Synced::new(&synced).marker())
                .modify(keep_what_matters),
        ),
    )
    .touched_objects();

    // No cache of Secrets is read: a change only says which pairs to look at again.
    let secret_events = cluster::resumed(
        watcher(secret_api, watcher::Config::default()).inspect_ok(Synced::new(&synced).marker()),
    )
    .touched_objects();

    // Deleted RedisPairs have no reconcile: their engines are stopped here.
    tokio::spawn({
        let pairs = pairs.clone();
        let pair_store = pair_store.clone();
        let namespace = namespace.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                // Before its first full list the cache is empty, not a list of deletions.
                if !pairs_synced.done() {
                    continue;
                }
                pairs
                    .retain(|key| {
                        namespace.as_ref().is_some_and(|ns| *ns != key.namespace)
                            || pair_store
                                .get(&ObjectRef::new(&key.name).within(&key.namespace))
                                .is_some()
                    })
                    .await;
            }
        }
    });

    let context = Arc::new(Context {
        client,
        pairs,
        leadership: leadership.clone(),
        pair_store: pair_store.clone(),
        pod_store,
        metrics,
        failures: Mutex::new(HashMap::new()),
    });
    let pods_to_pairs = pair_store.clone();
    let secrets_to_pairs = pair_store.clone();
    Controller::for_stream(pair_events, pair_store)
        .watches_stream(pod_events, move |pod: Pod| {
            pairs_selecting(&pods_to_pairs, &pod)
        })
        .watches_stream(secret_events, move |secret: PartialObjectMeta<Secret>| {
            pairs_using_secret(&secrets_to_pairs, &secret)
        })
        // Each watch backs off by itself; the Controller's own backoff would pause every
        // trigger (pod events, becoming the leader) whenever any one watch failed.
        .trigger_backoff(NoPause)
        .reconcile_all_on(became_leader(leadership))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            match result {
                // A failed reconcile was logged by error_policy.
                Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!(error = %error, "watching failed; retrying with backoff"),
            }
            std::future::ready(())
        })
        .await;
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Whether a cache has had its first full list, counted once into the process's total.
///
/// Taken from the watch events (the first `InitDone`), not from `Store::wait_until_ready`:
/// in kube-runtime 5 that future is a one-waker oneshot, so of several tasks waiting on one
/// store (the Controller's runner among them) only the last to poll is ever woken.
#[derive(Clone)]
struct Synced {
    done: Arc<std::sync::atomic::AtomicBool>,
    total: Arc<AtomicUsize>,
}

impl Synced {
    fn new(total: &Arc<AtomicUsize>) -> Self {
        Self {
            done: Arc::default(),
            total: total.clone(),
        }
    }

    fn done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// For `inspect_ok` on a watcher stream.
    fn marker<K>(&self) -> impl FnMut(&watcher::Event<K>) + use<K> {
        let synced = self.clone();
        move |event| {
            if matches!(event, watcher::Event::InitDone)
                && !synced.done.swap(true, Ordering::Relaxed)
            {
                synced.total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Only what the controller reads of a pod stays in its cache: labels, deletion, IP, phase.
fn keep_what_matters(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.spec = None;
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        ..PodStatus::default()
    });
}

fn pairs_selecting(pairs: &Store<RedisPair>, pod: &Pod) -> Vec<ObjectRef<RedisPair>> {
    pairs
        .state()
        .iter()
        .filter(|pair| pair.namespace() == pod.namespace())
        .filter(|pair| validate::selector_of(pair).is_ok_and(|s| s.matches(pod.labels())))
        .map(|pair| ObjectRef::from_obj(pair.as_ref()))
        .collect()
}

fn pairs_using_secret(
    pairs: &Store<RedisPair>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<RedisPair>> {
    pairs
        .state()
        .iter()
        .filter(|pair| pair.namespace() == secret.namespace())
        .filter(|pair| {
            pair.spec
                .auth_secret_ref
                .as_ref()
                .is_some_and(|r| Some(&r.name) == secret.metadata.name.as_ref())
        })
        .map(|pair| ObjectRef::from_obj(pair.as_ref()))
        .collect()
}

/// The Controller's trigger backoff: none (see `run_scope`).
struct NoPause;

impl Iterator for NoPause {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoPause {
    fn reset(&mut self) {}
}

/// Yields once each time this controller becomes the leader: every pair is reconciled then.
fn became_leader(leadership: Leadership) -> impl futures_util::Stream<Item = ()> + Send {
    futures_util::stream::unfold(leadership.changes(), |mut changes| async move {
        loop {
            changes.changed().await.ok()?;
            if *changes.borrow_and_update() {
                return Some(((), changes));
            }
        }
    })
}

/// Losing the lease stops the engines of the term that ended. Only those: the lease may come
/// back while they are being stopped, and the reconciles of the new term start engines that
/// must keep running (a pair left without one would wait for its 30 s resync).
async fn stop_engines_when_not_leader(leadership: Leadership, pairs: Arc<Pairs>) {
    let mut changes = leadership.changes();
    while changes.changed().await.is_ok() {
        if !*changes.borrow_and_update() {
            pairs.stop_term(leadership.term()).await;
        }
    }
}

/// `POD_NAME` is the identity in a cluster; outside one, the host name and the process id
/// keep two controllers on one machine apart.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "redis-pair".into());
    format!("{host}-{}", std::process::id())
}
