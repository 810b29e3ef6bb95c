//! The pods bound to this node: a watch (`spec.nodeName=<node>`) feeds one worker per pod.
//!
//! A worker's life, as a kubelet's pod worker:
//! ```text
//! set up (network namespace, volumes; retried every 5 s while it fails)
//!   -> start init containers in order (a native sidecar, restartPolicy Always, counts as done
//!      once started; a plain one once it exited 0), then every regular container
//!   -> run: exits restart by policy (backoff 1 s doubling to 60 s), probes decide started,
//!      ready and live; every change is written to the pod's status
//!   -> terminal (Never/OnFailure and every regular container done): sidecars stopped,
//!      network released, phase Succeeded or Failed
//!   -> deletion (deletionTimestamp): preStop, SIGTERM, the grace period, SIGKILL, network
//!      released, final status, then the final delete (grace 0, preconditioned on the uid)
//! ```
//! A pod removed from the API (force deletion) is killed at once.
//!
//! `worker` holds a pod's state and its start and run; `worker/stop` its endings;
//! `worker/probing` the probe tasks.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use crate::args::Args;
use crate::image::Images;
use crate::network::Network;

mod worker;

use worker::Worker;

pub(crate) const SETUP_RETRY: Duration = Duration::from_secs(5);
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);

pub(crate) struct Shared {
    client: kube::Client,
    args: Args,
    network: Network,
    images: Images,
}

pub async fn run(
    client: kube::Client,
    args: Args,
    network: Network,
    images: Images,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", args.node_name));
    let shared = Arc::new(Shared {
        client,
        args,
        network,
        images,
    });
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut events = pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        workers.retain(|_, tx| !tx.is_closed());
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(uid(&pod));
                dispatch(&shared, &mut workers, pod);
            }
            Ok(watcher::Event::Apply(pod)) => dispatch(&shared, &mut workers, pod),
            Ok(watcher::Event::InitDone) => {
                // Pods deleted while the watch was down.
                for (_, tx) in workers.iter().filter(|(uid, _)| !listed.contains(*uid)) {
                    let _ = tx.send(None);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(tx) = workers.remove(&uid(&pod)) {
                    let _ = tx.send(None);
                }
            }
            Err(error) => tracing::warn!("watching pods: {error}"),
        }
    }
    Ok(())
}

pub(crate) fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn dispatch(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, watch::Sender<Option<Pod>>>,
    pod: Pod,
) {
    let key = uid(&pod);
    if let Some(tx) = workers.get(&key) {
        let _ = tx.send(Some(pod));
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if terminal && !deleting {
        return;
    }
    let (tx, rx) = watch::channel(Some(pod.clone()));
    workers.insert(key, tx);
    let shared = shared.clone();
    tokio::spawn(async move {
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        if let Err(error) = Worker::new(shared, pod).run(rx).await {
            tracing::error!(pod = %name, "{error:#}");
        }
    });
}
