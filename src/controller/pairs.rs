//! The pairs this controller manages: for each, the core engine (the same runner local mode
//! uses) with a [`KubePublisher`], and a task that keeps the RedisPair's status and its pods'
//! role labels in step with what the engine reports. Reconciles hand each pair its members;
//! a change of anything else restarts its engine from what the RedisPair publishes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::lease::Leadership;
use super::publisher::{
    EventSink, KubePublisher, WRITE_TIMEOUT, annotation_path, json_patch, timed_write,
};
use super::status::{self, PodIndex};
use super::validate::{Desired, Invalid, Settings};
use crate::crd::{
    self, Phase, ROLE_LABEL, RedisPair, RedisPairStatus, SWITCHOVER_ANNOTATION, SwitchoverStatus,
};
use crate::engine::redis_io::{Connector, Credentials};
use crate::engine::runner::{Engine, EngineConfig, EngineHandle, Status};
use crate::engine::{Endpoint, Published};
use crate::metrics::{ApiWrite, ControllerMetrics, EngineMetrics, PhaseLabel};

/// A RedisPair, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub namespace: String,
    pub name: String,
}

impl PairKey {
    pub fn of(pair: &RedisPair) -> Self {
        Self {
            namespace: pair.namespace().unwrap_or_default(),
            name: pair.name_any(),
        }
    }
}

impl std::fmt::Display for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a pair's tasks know of its pods and spec; every reconcile refreshes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairView {
    pub pods: PodIndex,
    /// Each member pod's role label as the pod watch last saw it.
    pub labels: BTreeMap<String, Option<String>>,
    pub generation: Option<i64>,
    pub last_switchover: Option<SwitchoverStatus>,
}

/// What every pair's tasks share.
pub struct Shared {
    pub client: Client,
    pub leadership: Leadership,
    pub events: EventSink,
    pub engine_metrics: EngineMetrics,
    pub metrics: ControllerMetrics,
}

pub struct Pairs {
    shared: Shared,
    /// One slot per pair; a slot's lock serializes starting, updating and stopping it.
    slots: Mutex<HashMap<PairKey, Arc<tokio::sync::Mutex<Option<Runtime>>>>>,
    phases: PhaseCounts,
}

struct Runtime {
    settings: Settings,
    handle: EngineHandle,
    view: watch::Sender<PairView>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The switchover request (the annotation's value) handled or being handled, so a
    /// reconcile that still sees it does not start it again.
    switchover: Option<String>,
}

/// Status writes that only update replication lag wait this long, so a pair under write
/// load does not write its status on every probe.
const LAG_ONLY_WRITE_EVERY: Duration = Duration::from_secs(10);
/// A failed status or label write is tried again after this.
const WRITE_RETRY: Duration = Duration::from_secs(1);

impl Pairs {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared,
            slots: Mutex::new(HashMap::new()),
            phases: PhaseCounts::default(),
        }
    }

    fn slot(&self, key: &PairKey) -> Arc<tokio::sync::Mutex<Option<Runtime>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    fn pairs_api(&self, namespace: &str) -> Api<RedisPair> {
        Api::namespaced(self.shared.client.clone(), namespace)
    }

    pub async fn is_running(&self, key: &PairKey) -> bool {
        self.slot(key).lock().await.is_some()
    }

    /// Gives the pair `desired`: updates a running engine's members, or (re)starts it.
    pub async fn apply(
        &self,
        pair: &RedisPair,
        desired: Desired,
        pods: &[Arc<Pod>],
    ) -> Result<(), kube::Error> {
        let key = PairKey::of(pair);
        let slot = self.slot(&key);
        let mut slot = slot.lock().await;
        let labels = desired
            .members
            .iter()
            .map(|m| {
                let label = pods
                    .iter()
                    .find(|p| p.name_any() == m.pod)
                    .and_then(|p| p.labels().get(ROLE_LABEL).cloned());
                (m.pod.clone(), label)
            })
            .collect();
        let index: PodIndex = desired
            .members
            .iter()
            .map(|m| (m.member.endpoint.clone(), m.pod.clone()))
            .collect();
        let members = desired.members.iter().map(|m| m.member.clone()).collect();
        if let Some(runtime) = slot.as_ref() {
            if runtime.settings == desired.settings {
                // What the annotations say now: the engine's own publication coming back, a
                // lagging cache, or someone else's write to follow or correct.
                if let Some(seen) = desired.published.clone() {
                    runtime.handle.seen(seen);
                }
                runtime.view.send_if_modified(|view| {
                    let before = view.clone();
                    view.pods = index;
                    view.labels = labels;
                    view.generation = pair.metadata.generation;
                    *view != before
                });
                runtime.handle.set_members(members);
                return Ok(());
            }
            info!(pair = %key, "settings changed; restarting its engine");
        }
        if let Some(runtime) = slot.take() {
            stop(runtime).await;
        }
        // What is published now, read fresh: the pair in the cache may not show the last
        // publication yet, and an engine starting from an older one would undo it.
        let fresh =
            tokio::time::timeout(WRITE_TIMEOUT, self.pairs_api(&key.namespace).get(&key.name))
                .await
                .map_err(|_| kube::Error::Service("reading the RedisPair timed out".into()))??;
        let mut published = crd::published(&fresh).ok().flatten().unwrap_or_default();
        if let Some(master) = fresh.status.as_ref().and_then(|s| s.master.as_ref())
            && published
                .master
                .as_ref()
                .map(Endpoint::to_string)
                .as_deref()
                == Some(master.endpoint.as_str())
        {
            published.run_id = master.run_id.clone();
        }
        let view = PairView {
            pods: index,
            labels,
            generation: pair.metadata.generation,
            last_switchover: None,
        };
        *slot = Some(self.start(&key, &fresh, desired.settings, members, published, view));
        self.shared.metrics.engines.inc();
        Ok(())
    }

    fn start(
        &self,
        key: &PairKey,
        pair: &RedisPair,
        settings: Settings,
        members: Vec<crate::engine::runner::Member>,
        published: Published,
        view: PairView,
    ) -> Runtime {
        info!(pair = %key, epoch = published.epoch, members = members.len(), "starting its engine");
        let (view_tx, view_rx) = watch::channel(view);
        let client = &self.shared.client;
        let publisher = KubePublisher {
            name: key.name.clone(),
            reference: pair.object_ref(&()),
            pairs: self.pairs_api(&key.namespace),
            pods: Api::namespaced(client.clone(), &key.namespace),
            view: view_rx.clone(),
            leadership: self.shared.leadership.clone(),
            events: self.shared.events.clone(),
            metrics: self.shared.metrics.clone(),
        };
        let connector = Connector::new(
            Credentials {
                username: None,
                password: settings.password.clone(),
            },
            settings.probe_timeout,
        );
        let config = EngineConfig {
            members,
            policy: settings.policy,
            probe_interval: settings.probe_interval,
            switchover_timeout: settings.switchover_timeout,
            published,
            paused: settings.paused,
        };
        let (engine, handle) = Engine::new(
            config,
            connector,
            self.shared.engine_metrics.clone(),
            publisher,
        );
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(engine.run(stop.clone()));
        tasks.spawn(
            StatusWriter {
                key: key.clone(),
                pairs: self.pairs_api(&key.namespace),
                pods: Api::namespaced(client.clone(), &key.namespace),
                leadership: self.shared.leadership.clone(),
                metrics: self.shared.metrics.clone(),
                written: pair.status.clone().unwrap_or_default(),
                written_at: None,
                phases: self.phases.clone(),
            }
            .run(handle.status.clone(), view_rx, stop.clone()),
        );
        tasks.close();
        Runtime {
            settings,
            handle,
            view: view_tx,
            stop,
            tasks,
            switchover: None,
        }
    }

    /// Stops the pair's engine, if one runs; what was published stays.
    pub async fn stop(&self, key: &PairKey) {
        let slot = self.slot(key);
        let runtime = slot.lock().await.take();
        if let Some(runtime) = runtime {
            info!(pair = %key, "stopping its engine");
            stop(runtime).await;
            self.shared.metrics.engines.dec();
        }
    }

    /// Stops every engine: the lease is lost, or the controller shuts down.
    pub async fn stop_all(&self) {
        let keys: Vec<PairKey> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for key in keys {
            self.stop(&key).await;
        }
    }

    /// Stops the engines of pairs for which `exists` is false (deleted RedisPairs).
    pub async fn retain(&self, exists: impl Fn(&PairKey) -> bool) {
        let gone: Vec<PairKey> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|key| !exists(key))
            .cloned()
            .collect();
        for key in gone {
            self.stop(&key).await;
            self.slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            self.phases.set(&key, None, &self.shared.metrics);
        }
    }

    /// Writes the status of a pair that cannot be managed, and an Event when the reason is
    /// new (a reconcile that finds the same problem again writes nothing: no retry storm).
    pub async fn report_invalid(
        &self,
        pair: &RedisPair,
        invalid: &Invalid,
    ) -> Result<(), kube::Error> {
        let key = PairKey::of(pair);
        let previous = pair.status.clone().unwrap_or_default();
        let already = previous.phase == Some(Phase::Invalid)
            && previous.message.as_deref() == Some(invalid.message.as_str());
        self.phases
            .set(&key, Some(Phase::Invalid), &self.shared.metrics);
        if already && previous.observed_generation == pair.metadata.generation {
            return Ok(());
        }
        warn!(pair = %key, reason = invalid.reason.as_str(), "{}", invalid.message);
        let status = status::invalid(
            invalid,
            pair.metadata.generation,
            &previous,
            Timestamp::now(),
        );
        write_status(
            &self.pairs_api(&key.namespace),
            &key.name,
            &status,
            &self.shared.metrics,
        )
        .await?;
        if !already {
            self.shared.events.send(
                &pair.object_ref(&()),
                kube::runtime::events::EventType::Warning,
                "Invalid",
                "Validate",
                invalid.message.clone(),
            );
        }
        Ok(())
    }

    /// Handles the `redispair.io/switchover` annotation: a planned switchover to that pod (or
    /// to the best replica, for `any`), once per request; the result goes to the status, an
    /// Event, and the annotation is removed.
    pub async fn switchover(&self, pair: &RedisPair) {
        let requested = pair.annotations().get(SWITCHOVER_ANNOTATION).cloned();
        let key = PairKey::of(pair);
        let slot = self.slot(&key);
        let mut slot = slot.lock().await;
        let Some(runtime) = slot.as_mut() else {
            return;
        };
        if runtime.switchover == requested {
            return;
        }
        runtime.switchover = requested.clone();
        let Some(requested) = requested else {
            return;
        };
        let handle = runtime.handle.clone();
        let view = runtime.view.clone();
        let api = self.pairs_api(&key.namespace);
        let reference = pair.object_ref(&());
        let events = self.shared.events.clone();
        let metrics = self.shared.metrics.clone();
        let leadership = self.shared.leadership.clone();
        runtime.tasks.reopen();
        runtime.tasks.spawn(async move {
            let target = if requested == "any" {
                Ok(None)
            } else {
                let pods = view.borrow().pods.clone();
                pods.iter()
                    .find(|(_, pod)| **pod == requested)
                    .map(|(endpoint, _)| Some(endpoint.clone()))
                    .ok_or_else(|| {
                        format!(
                            "pod {requested} is not a member of this RedisPair; name one of {} or use any",
                            pods.values().cloned().collect::<Vec<_>>().join(", ")
                        )
                    })
            };
            info!(pair = %key, requested = %requested, "switchover requested");
            let outcome = match target {
                Ok(target) => handle
                    .switchover(target)
                    .await
                    .map(|published| published.epoch)
                    .map_err(|e| (e.to_string(), e.started())),
                Err(why) => Err((why, false)),
            };
            let record = SwitchoverStatus {
                time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
                requested: requested.clone(),
                succeeded: outcome.is_ok(),
                message: match &outcome {
                    Ok(epoch) => format!("completed: new master published under epoch {epoch}"),
                    Err((why, _)) => why.clone(),
                },
            };
            match &outcome {
                Ok(_) => info!(pair = %key, "switchover completed"),
                Err((why, started)) => {
                    warn!(pair = %key, error = %why, "switchover failed");
                    // One the engine started it reports itself; a refused one is ours to.
                    if !started {
                        events.send(
                            &reference,
                            kube::runtime::events::EventType::Warning,
                            "SwitchoverFailed",
                            "Switchover",
                            format!("switchover to {requested} refused: {why}"),
                        );
                    }
                }
            }
            view.send_modify(|view| view.last_switchover = Some(record));
            if leadership.is_leader() {
                remove_switchover_request(&api, &key.name, &requested, &metrics).await;
            }
        });
        runtime.tasks.close();
    }

    /// What `/status` shows: every managed pair's engine status.
    pub fn statuses(&self) -> serde_json::Value {
        let slots: Vec<(PairKey, Arc<tokio::sync::Mutex<Option<Runtime>>>)> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut pairs = serde_json::Map::new();
        for (key, slot) in slots {
            // A slot being started or stopped right now is left out rather than waited for.
            if let Ok(slot) = slot.try_lock()
                && let Some(runtime) = slot.as_ref()
            {
                let status = runtime.handle.status.borrow().clone();
                pairs.insert(
                    key.to_string(),
                    serde_json::to_value(status).unwrap_or_default(),
                );
            }
        }
        serde_json::Value::Object(pairs)
    }
}

async fn stop(runtime: Runtime) {
    runtime.stop.cancel();
    runtime.tasks.close();
    runtime.tasks.wait().await;
}

/// The phase of every managed pair, behind the `redispair_controller_pairs` gauge.
#[derive(Clone, Default)]
struct PhaseCounts(Arc<Mutex<HashMap<PairKey, Phase>>>);

impl PhaseCounts {
    fn set(&self, key: &PairKey, phase: Option<Phase>, metrics: &ControllerMetrics) {
        let mut phases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match phase {
            Some(phase) => phases.insert(key.clone(), phase),
            None => phases.remove(key),
        };
        for phase in [
            Phase::Healthy,
            Phase::Degraded,
            Phase::NoMaster,
            Phase::Paused,
            Phase::Invalid,
        ] {
            let count = phases.values().filter(|p| **p == phase).count();
            metrics
                .pairs
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

async fn write_status(
    api: &Api<RedisPair>,
    name: &str,
    status: &RedisPairStatus,
    metrics: &ControllerMetrics,
) -> Result<(), kube::Error> {
    // The whole status replaced: a merge patch would keep fields the new status leaves out.
    let patch = json_patch(json!([{"op": "add", "path": "/status", "value": status}]))?;
    timed_write(
        ApiWrite::Status,
        metrics,
        api.patch_status(name, &PatchParams::default(), &patch),
    )
    .await
    .map(|_| ())
}

/// Removes a handled switchover request, only if it is still the one handled.
async fn remove_switchover_request(
    api: &Api<RedisPair>,
    name: &str,
    requested: &str,
    metrics: &ControllerMetrics,
) {
    let path = annotation_path(SWITCHOVER_ANNOTATION);
    let Ok(patch) = json_patch(json!([
        {"op": "test", "path": path, "value": requested},
        {"op": "remove", "path": path}
    ])) else {
        return;
    };
    let result = timed_write(
        ApiWrite::SwitchoverAnnotation,
        metrics,
        api.patch(name, &PatchParams::default(), &patch),
    )
    .await;
    match result {
        Ok(_) => {}
        // Changed or removed meanwhile: the new value is a new request.
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 404 => {}
        Err(error) => warn!(error = %error, "removing the switchover annotation failed"),
    }
}

/// Keeps one pair's status and its pods' role labels in step with its engine.
struct StatusWriter {
    key: PairKey,
    pairs: Api<RedisPair>,
    pods: Api<Pod>,
    leadership: Leadership,
    metrics: ControllerMetrics,
    written: RedisPairStatus,
    written_at: Option<Instant>,
    phases: PhaseCounts,
}

impl StatusWriter {
    async fn run(
        mut self,
        mut engine: watch::Receiver<Status>,
        mut view: watch::Receiver<PairView>,
        stop: CancellationToken,
    ) {
        let mut retry_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = engine.changed() => if changed.is_err() { return },
                changed = view.changed() => if changed.is_err() { return },
                () = sleep_until_some(retry_at) => {}
            }
            retry_at = None;
            if !self.leadership.is_leader() {
                continue;
            }
            let (status, labels, paused) = {
                let engine = engine.borrow_and_update();
                let view = view.borrow_and_update();
                let status = status::running(
                    &engine,
                    &view.pods,
                    view.generation,
                    view.last_switchover.as_ref(),
                    &self.written,
                    Timestamp::now(),
                );
                let wanted = status::role_labels(&engine, &view.pods);
                let labels: Vec<(String, Option<&'static str>)> = wanted
                    .into_iter()
                    .filter(|(pod, role)| view.labels.get(pod).and_then(|l| l.as_deref()) != *role)
                    .collect();
                (status, labels, engine.paused)
            };
            self.phases.set(&self.key, status.phase, &self.metrics);
            if !self.write_status(status).await {
                retry_at = Some(Instant::now() + WRITE_RETRY);
            }
            // Labels are how clients without a sidecar find the master: not touched while
            // paused (observe, never act).
            if !paused && !self.write_labels(&labels).await {
                retry_at = Some(Instant::now() + WRITE_RETRY);
            }
        }
    }

    /// `false` when a write was due and failed.
    async fn write_status(&mut self, status: RedisPairStatus) -> bool {
        if status == self.written {
            return true;
        }
        let lag_only = without_lag(&status) == without_lag(&self.written);
        if lag_only
            && self
                .written_at
                .is_some_and(|at| at.elapsed() < LAG_ONLY_WRITE_EVERY)
        {
            return true;
        }
        match write_status(&self.pairs, &self.key.name, &status, &self.metrics).await {
            Ok(()) => {
                self.written = status;
                self.written_at = Some(Instant::now());
                true
            }
            Err(error) => {
                warn!(pair = %self.key, error = %error, "writing the status failed; will retry");
                false
            }
        }
    }

    async fn write_labels(&self, labels: &[(String, Option<&'static str>)]) -> bool {
        let mut ok = true;
        for (pod, role) in labels {
            if !self.leadership.is_leader() {
                return true;
            }
            let patch = json!({"metadata": {"labels": {ROLE_LABEL: role}}});
            let result = timed_write(
                ApiWrite::Label,
                &self.metrics,
                self.pods
                    .patch(pod, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await;
            match result {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    warn!(pair = %self.key, pod = %pod, error = %error, "labelling the pod failed; will retry");
                    ok = false;
                }
            }
        }
        ok
    }
}

/// The status without its replication lag, which changes with every write to the master.
fn without_lag(status: &RedisPairStatus) -> RedisPairStatus {
    let mut status = status.clone();
    for replica in &mut status.replicas {
        replica.lag_bytes = None;
    }
    status
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
