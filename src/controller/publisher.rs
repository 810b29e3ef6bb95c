//! How a pair's engine publishes through the Kubernetes API: the master and epoch as
//! annotations on the RedisPair (a JSON patch that first tests the epoch it replaces, so a
//! stale leader can never overwrite a newer one), the master label taken off the old master's
//! pod before anything is promoted, and Events. Every write waits for the lease.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::lease::Leadership;
use super::pairs::PairView;
use crate::crd::{self, ACTIVE_ANNOTATION, EPOCH_ANNOTATION, ROLE_LABEL, RedisPair};
use crate::engine::{Endpoint, EngineEvent, PublishError, Published, Publisher, Reason};
use crate::metrics::{ApiWrite, ControllerMetrics, WriteOutcome};

/// A write on the failover path gets this long; the API server's own timeouts are minutes.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one API write under [`WRITE_TIMEOUT`] and counts its outcome.
pub async fn timed_write<T>(
    kind: ApiWrite,
    metrics: &ControllerMetrics,
    write: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => {
            metrics.api_write(kind, &result);
            result
        }
        Err(_) => {
            metrics.count_write(kind, WriteOutcome::Timeout);
            Err(kube::Error::Service(
                format!("no answer within {WRITE_TIMEOUT:?}").into(),
            ))
        }
    }
}

/// A JSON patch (RFC 6902) from its JSON form.
pub fn json_patch(ops: serde_json::Value) -> Result<Patch<()>, kube::Error> {
    serde_json::from_value::<json_patch::Patch>(ops)
        .map(Patch::Json)
        .map_err(kube::Error::SerdeError)
}

/// `/metadata/annotations/<key>` as a JSON pointer (`/` in a key is `~1`).
pub fn annotation_path(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

pub struct KubePublisher {
    pub name: String,
    pub reference: ObjectReference,
    pub pairs: Api<RedisPair>,
    pub pods: Api<Pod>,
    pub view: watch::Receiver<PairView>,
    pub leadership: Leadership,
    pub events: EventSink,
    pub metrics: ControllerMetrics,
}

impl KubePublisher {
    fn pod_of(&self, endpoint: &Endpoint) -> Option<String> {
        self.view.borrow().pods.get(endpoint).cloned()
    }

    fn describe(&self, endpoint: &Endpoint) -> String {
        match self.pod_of(endpoint) {
            Some(pod) => format!("{pod} ({endpoint})"),
            None => endpoint.to_string(),
        }
    }

    async fn patch(&self, kind: ApiWrite, ops: serde_json::Value) -> Result<(), kube::Error> {
        let patch = json_patch(ops)?;
        timed_write(
            kind,
            &self.metrics,
            self.pairs
                .patch(&self.name, &PatchParams::default(), &patch),
        )
        .await
        .map(|_| ())
    }

    /// What the RedisPair publishes now, read fresh.
    async fn published_now(&self) -> Result<(Option<Published>, RedisPair), PublishError> {
        let pair = tokio::time::timeout(WRITE_TIMEOUT, self.pairs.get(&self.name))
            .await
            .map_err(|_| PublishError::Failed("reading the RedisPair timed out".into()))?
            .map_err(|e| PublishError::Failed(format!("reading the RedisPair: {e}")))?;
        let published = crd::published(&pair).map_err(|e| PublishError::Failed(e.to_string()))?;
        Ok((published, pair))
    }
}

impl Publisher for KubePublisher {
    fn may_act(&self) -> bool {
        self.leadership.is_leader()
    }

    async fn retract(&self, old: &Endpoint) -> Result<(), PublishError> {
        let Some(pod) = self.pod_of(old) else {
            // Not a pod of the pair any more (deleted, or its IP changed): nothing carries
            // the label for this endpoint.
            return Ok(());
        };
        let labels = json!({"metadata": {"labels": {ROLE_LABEL: null}}});
        let result = timed_write(
            ApiWrite::Label,
            &self.metrics,
            self.pods
                .patch(&pod, &PatchParams::default(), &Patch::Merge(&labels)),
        )
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(PublishError::Failed(format!(
                "removing the master label of pod {pod}: {error}"
            ))),
        }
    }

    async fn publish(
        &self,
        current: &Published,
        next: &Published,
        _reason: Reason,
    ) -> Result<(), PublishError> {
        let active = next
            .master
            .as_ref()
            .map_or_else(String::new, Endpoint::to_string);
        let set = [
            json!({"op": "add", "path": annotation_path(ACTIVE_ANNOTATION), "value": active}),
            json!({"op": "add", "path": annotation_path(EPOCH_ANNOTATION), "value": next.epoch.to_string()}),
        ];
        let patch = if current.epoch == 0 {
            // The first publication of this pair: nothing to test the epoch against, so test
            // that the object is still the one that carries none.
            let (published, pair) = self.published_now().await?;
            if let Some(published) = published.filter(|p| p.epoch > 0) {
                return Err(PublishError::Superseded(published));
            }
            let mut ops = vec![json!({
                "op": "test", "path": "/metadata/resourceVersion",
                "value": pair.resource_version().unwrap_or_default()
            })];
            if pair.metadata.annotations.is_none() {
                ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
            }
            ops.extend(set);
            ops
        } else {
            let mut ops = vec![json!({
                "op": "test", "path": annotation_path(EPOCH_ANNOTATION),
                "value": current.epoch.to_string()
            })];
            ops.extend(set);
            ops
        };
        match self.patch(ApiWrite::Publish, json!(patch)).await {
            Ok(()) => Ok(()),
            // No answer, a broken connection or a server-side failure: the patch may have
            // been applied. The engine reads it back before it acts again.
            Err(error) if !is_definite(&error) => Err(PublishError::Unknown(format!(
                "writing the annotations: {error}"
            ))),
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => {
                // The test failed: someone published after what this engine knew.
                let (published, _) = self.published_now().await?;
                match published {
                    Some(newer) if newer.epoch > current.epoch => {
                        Err(PublishError::Superseded(newer))
                    }
                    _ => Err(PublishError::Failed(format!(
                        "the RedisPair changed while publishing; will retry ({})",
                        status.message
                    ))),
                }
            }
            Err(error) => Err(PublishError::Failed(format!(
                "writing the annotations: {error}"
            ))),
        }
    }

    async fn read(&self) -> Result<Published, PublishError> {
        let (published, _) = self.published_now().await?;
        Ok(published.unwrap_or_default())
    }

    fn deadline(&self) -> Duration {
        WRITE_TIMEOUT
    }

    fn record(&self, event: EngineEvent) {
        let (type_, reason, action, note) = match event {
            EngineEvent::Waiting(waiting) => (
                EventType::Warning,
                "FailoverBlocked",
                "Failover",
                crate::engine::runner::describe_waiting(&waiting),
            ),
            EngineEvent::Published {
                from,
                to,
                epoch,
                reason: Reason::Corrected,
            } => (
                EventType::Warning,
                "PublicationCorrected",
                "Publish",
                format!(
                    "the annotations named {}, which is not the master, under epoch {};                      redis-pair owns them and published {} under epoch {epoch}",
                    from.map_or_else(|| "no master".into(), |f| self.describe(&f)),
                    epoch.saturating_sub(1),
                    to.map_or_else(|| "no master".into(), |t| self.describe(&t)),
                ),
            ),
            EngineEvent::Published {
                from,
                to: Some(to),
                epoch,
                reason,
            } => {
                let was = from.map_or_else(String::new, |f| format!(", was {}", self.describe(&f)));
                let planned = matches!(reason, Reason::Switchover | Reason::MasterLeaving);
                let type_ = match reason {
                    Reason::MasterDown | Reason::MasterRestarted => EventType::Warning,
                    _ => EventType::Normal,
                };
                (
                    type_,
                    if planned {
                        "SwitchoverCompleted"
                    } else {
                        "Promoted"
                    },
                    if planned { "Switchover" } else { "Failover" },
                    format!(
                        "{} is the master, epoch {epoch}{was} ({})",
                        self.describe(&to),
                        reason.as_str()
                    ),
                )
            }
            EngineEvent::Published {
                from,
                epoch,
                reason,
                ..
            } => (
                EventType::Warning,
                "NoMaster",
                "Failover",
                format!(
                    "no master is published (epoch {epoch}, {}): {} is gone and no replica can \
                     take over; clients wait",
                    reason.as_str(),
                    from.map_or_else(|| "the master".into(), |f| self.describe(&f))
                ),
            ),
            EngineEvent::Repointed {
                server,
                master,
                was_master,
            } => (
                EventType::Normal,
                if was_master { "Demoted" } else { "Reattached" },
                "Replicate",
                format!(
                    "{} replicates from {} now",
                    self.describe(&server),
                    self.describe(&master)
                ),
            ),
            EngineEvent::SwitchoverStarted { from, to } => (
                EventType::Normal,
                "SwitchoverStarted",
                "Switchover",
                format!(
                    "handing the master over from {} to {}: writes paused until it has caught up",
                    self.describe(&from),
                    self.describe(&to)
                ),
            ),
            EngineEvent::SwitchoverFailed { from, to, error } => (
                EventType::Warning,
                "SwitchoverFailed",
                "Switchover",
                format!(
                    "switchover from {} to {} failed: {error}",
                    self.describe(&from),
                    self.describe(&to)
                ),
            ),
        };
        self.events
            .send(&self.reference, type_, reason, action, note);
    }
}

/// Whether a failed write certainly did not happen: the API server answered with a refusal
/// (4xx). A timeout, a broken connection or a 5xx may hide an applied write.
fn is_definite(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if (400..500).contains(&status.code))
}

/// Where Events go: a queue in front of kube-runtime's Recorder, so the engine never waits
/// for the API server to record something.
#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::Sender<(ObjectReference, Event)>,
}

impl EventSink {
    pub fn new() -> (Self, mpsc::Receiver<(ObjectReference, Event)>) {
        let (queue, events) = mpsc::channel(256);
        (Self { queue }, events)
    }

    pub fn send(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if self.queue.try_send((regarding.clone(), event)).is_err() {
            debug!(reason, "event queue full; event dropped");
        }
    }
}

/// Records queued Events while this controller is the leader.
///
/// A Recorder per Event: kube-runtime's Recorder folds an Event into an earlier one of the
/// same reason and object (an EventSeries) without comparing the notes, so a second
/// "Demoted" within minutes would only bump the count of the first and keep its message,
/// naming the wrong pods. A failover's Events are few; each keeps its own message.
pub async fn record_events(
    client: kube::Client,
    reporter: kube::runtime::events::Reporter,
    mut events: mpsc::Receiver<(ObjectReference, Event)>,
    leadership: Leadership,
    metrics: ControllerMetrics,
) {
    while let Some((regarding, event)) = events.recv().await {
        if !leadership.is_leader() {
            continue;
        }
        let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter.clone());
        let result = timed_write(
            ApiWrite::Event,
            &metrics,
            recorder.publish(&event, &regarding),
        )
        .await;
        if let Err(error) = result {
            warn!(reason = %event.reason, error = %error, "recording an event failed");
        }
    }
}
