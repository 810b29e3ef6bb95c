//! The writer of one pair's status and of its pods' role labels: it follows the engine's
//! status, what the engine published and the pair's view, and writes what `status` builds
//! from them, while this controller leads. A failed write is tried again after
//! [`WRITE_RETRY`]; a change of replication lag alone waits [`LAG_ONLY_WRITE_EVERY`].
//! Also the `redispair_controller_pairs` gauge (pairs by phase), which these writes keep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::api::{json_patch, timed_write};
use super::lease::Leadership;
use super::status;
use super::view::{PairKey, PairView};
use crate::crd::{Phase, ROLE_LABEL, RedisPair, RedisPairStatus};
use crate::engine::Published;
use crate::engine::runner::Status;
use crate::metrics::{ApiWrite, ControllerMetrics, PhaseLabel};

/// Status writes that only update replication lag wait this long, so a pair under write
/// load does not write its status on every probe.
const LAG_ONLY_WRITE_EVERY: Duration = Duration::from_secs(10);
/// A failed status or label write is tried again after this.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// The phase of every managed pair, behind the `redispair_controller_pairs` gauge.
#[derive(Clone, Default)]
pub struct PhaseCounts(Arc<Mutex<HashMap<PairKey, Phase>>>);

impl PhaseCounts {
    pub fn set(&self, key: &PairKey, phase: Option<Phase>, metrics: &ControllerMetrics) {
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

/// Replaces the whole status of `name` (a merge patch would keep fields the new status
/// leaves out).
pub async fn write_status(
    api: &Api<RedisPair>,
    name: &str,
    status: &RedisPairStatus,
    metrics: &ControllerMetrics,
) -> Result<(), kube::Error> {
    let patch = json_patch(json!([{"op": "add", "path": "/status", "value": status}]))?;
    timed_write(
        ApiWrite::Status,
        metrics,
        api.patch_status(name, &PatchParams::default(), &patch),
    )
    .await
    .map(|_| ())
}

/// What one pair's writer reads.
pub struct Sources {
    pub engine: watch::Receiver<Status>,
    pub published: watch::Receiver<Published>,
    pub view: watch::Receiver<PairView>,
}

/// Keeps one pair's status and its pods' role labels in step with its engine.
pub struct StatusWriter {
    pub key: PairKey,
    pub pairs: Api<RedisPair>,
    pub pods: Api<Pod>,
    pub leadership: Leadership,
    pub metrics: ControllerMetrics,
    /// What was written last (at first: what the RedisPair showed when the engine started).
    pub written: RedisPairStatus,
    pub written_at: Option<Instant>,
    pub phases: PhaseCounts,
}

impl StatusWriter {
    pub async fn run(mut self, mut sources: Sources, stop: CancellationToken) {
        let mut retry_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = sources.engine.changed() => if changed.is_err() { return },
                changed = sources.published.changed() => if changed.is_err() { return },
                changed = sources.view.changed() => if changed.is_err() { return },
                () = sleep_until_some(retry_at) => {}
            }
            retry_at = None;
            if !self.leadership.is_leader() {
                continue;
            }
            let (status, labels, paused) = {
                let engine = sources.engine.borrow_and_update();
                let published = sources.published.borrow_and_update();
                let view = sources.view.borrow_and_update();
                let status =
                    status::running(&engine, &view, &published, &self.written, Timestamp::now());
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
        // Checked right before the write: building the status took no time, but a label
        // write before this one may have taken its whole deadline.
        if !self.leadership.is_leader() {
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
            // Before each: a role label routes clients without a sidecar.
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
