//! The pairs this controller manages: for each, the core engine (the same runner local mode
//! uses) with a [`KubePublisher`], and a task that keeps the RedisPair's status and its pods'
//! role labels in step with what the engine reports. Reconciles hand each pair its members;
//! a change of anything else restarts its engine from what the RedisPair publishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{GetParams, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::api::{annotation_path, json_patch, timed_read, timed_write};
use super::events::{Described, EventSink};
use super::lease::{Leadership, Term};
use super::publisher::KubePublisher;
use super::status::{self, PodIndex};
use super::status_writer::{PhaseCounts, Sources, StatusWriter, write_status};
use super::validate::{Desired, Invalid, Settings};
pub use super::view::{PairKey, PairView};
use crate::crd::{self, Phase, ROLE_LABEL, RedisPair, SWITCHOVER_ANNOTATION, SwitchoverStatus};
use crate::engine::Published;
use crate::engine::redis_io::{Connector, Credentials};
use crate::engine::runner::{Engine, EngineConfig, EngineHandle};
use crate::metrics::{ApiWrite, ControllerMetrics, EngineMetrics};

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
    /// The leadership term the engine was started in. An engine never outlives its term:
    /// losing the lease stops the engines of the term that ended (and only those), and a
    /// reconcile in a later term restarts one it finds from an earlier one.
    term: Term,
    settings: Settings,
    handle: EngineHandle,
    view: watch::Sender<PairView>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The switchover request (the annotation's value) handled or being handled, so a
    /// reconcile that still sees it does not start it again.
    switchover: Option<String>,
}

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
        let term = self.shared.leadership.term();
        if let Some(runtime) = slot.as_ref() {
            if runtime.term != term {
                // Started under a term that ended (the lease was lost and regained while it
                // ran): another leader may have acted meanwhile, so it starts again from what
                // is published now, in this term, and the stop of the ended term skips it.
                info!(pair = %key, "leadership changed since its engine started; restarting it");
            } else if runtime.settings == desired.settings {
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
        // A quorum GET (no resourceVersion), never the watch cache.
        let fresh = timed_read(
            self.pairs_api(&key.namespace)
                .get_with(&key.name, &GetParams::default()),
        )
        .await?;
        let view = PairView {
            pods: index,
            labels,
            generation: pair.metadata.generation,
            last_switchover: None,
        };
        *slot = Some(self.start(&key, &fresh, term, desired.settings, members, view));
        self.shared.metrics.engines.inc();
        Ok(())
    }

    fn start(
        &self,
        key: &PairKey,
        pair: &RedisPair,
        term: Term,
        settings: Settings,
        members: Vec<crate::engine::runner::Member>,
        view: PairView,
    ) -> Runtime {
        // The publication with its identity (the master's run_id and replication ID) as the
        // annotations carry it: a new leader judges a restarted master as the old one would.
        let published: Published = crd::published(pair).ok().flatten().unwrap_or_default();
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
            .run(
                Sources {
                    engine: handle.status.clone(),
                    published: handle.published.clone(),
                    view: view_rx,
                },
                stop.clone(),
            ),
        );
        tasks.close();
        Runtime {
            term,
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
        self.stop_if(key, |_| true).await;
    }

    /// Stops the pair's engine if it runs and `started_in` says yes to its term; the check
    /// and the stop happen under the slot's lock, so a reconcile cannot slip in between.
    async fn stop_if(&self, key: &PairKey, started_in: impl Fn(Term) -> bool) {
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        if !slot.as_ref().is_some_and(|r| started_in(r.term)) {
            return;
        }
        if let Some(runtime) = slot.take() {
            info!(pair = %key, "stopping its engine");
            stop(runtime).await;
            self.shared.metrics.engines.dec();
        }
    }

    /// Stops every engine: the controller shuts down.
    pub async fn stop_all(&self) {
        for key in self.keys() {
            self.stop(&key).await;
        }
    }

    /// Stops the engines started in `ended` or before: the lease was lost. Engines a
    /// reconcile started after the lease came back (a later term) keep running, however
    /// long stopping the others took.
    pub async fn stop_term(&self, ended: Term) {
        for key in self.keys() {
            self.stop_if(&key, |term| term <= ended).await;
        }
    }

    fn keys(&self) -> Vec<PairKey> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
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
        if !self.shared.leadership.is_leader() {
            return Ok(());
        }
        write_status(
            &self.pairs_api(&key.namespace),
            &key.name,
            &status,
            &self.shared.metrics,
        )
        .await?;
        if !already {
            self.shared
                .events
                .send(&pair.object_ref(&()), Described::invalid(&invalid.message));
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
                        events.send(&reference, Described::switchover_refused(&requested, why));
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

#[cfg(test)]
mod tests;
