//! How a pair's engine publishes through the Kubernetes API: the master, its epoch and its
//! identity (run_id, replication ID) as annotations on the RedisPair, in one JSON patch that
//! first tests the epoch it replaces (so a stale leader can never overwrite a newer one); the
//! master label taken off the old master's pod before anything is promoted; Events.
//!
//! Leadership is checked immediately before every write: a retraction or a read can take its
//! whole deadline, and the lease may be gone by its end. A write that got no answer is
//! reported as [`PublishError::Unknown`]: it may have been applied, and the engine reads the
//! publication back ([`Publisher::read`], a quorum GET) before it acts again.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{GetParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::api::{
    READ_TIMEOUT, WRITE_TIMEOUT, annotation_path, is_definite, json_patch, timed_read, timed_write,
};
use super::events::{self, EventSink};
use super::lease::Leadership;
use super::view::PairView;
use crate::crd::{
    self, ACTIVE_ANNOTATION, EPOCH_ANNOTATION, MASTER_REPLID_ANNOTATION, MASTER_REPLID2_ANNOTATION,
    MASTER_RUN_ID_ANNOTATION, ROLE_LABEL, RedisPair,
};
use crate::engine::{Endpoint, EngineEvent, PublishError, Published, Publisher, Reason};
use crate::metrics::{ApiWrite, ControllerMetrics};

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

/// Not sent: this controller does not lead (any more). Certainly not applied.
fn not_leader(what: &str) -> PublishError {
    PublishError::Failed(format!(
        "not {what}: this controller no longer holds the lease"
    ))
}

impl KubePublisher {
    fn pod_of(&self, endpoint: &Endpoint) -> Option<String> {
        self.view.borrow().pods.get(endpoint).cloned()
    }

    /// What the RedisPair publishes now: a GET without a resourceVersion, which the API
    /// server answers from etcd with a quorum read, never from its watch cache.
    async fn published_now(&self) -> Result<(Option<Published>, RedisPair), PublishError> {
        let pair = timed_read(self.pairs.get_with(&self.name, &GetParams::default()))
            .await
            .map_err(|e| PublishError::Failed(format!("reading the RedisPair: {e}")))?;
        let published = crd::published(&pair).map_err(|e| PublishError::Failed(e.to_string()))?;
        Ok((published, pair))
    }
}

/// The operations that write `next`: master, epoch and the master's identity. An identity
/// not known is written empty, so an older one never stays beside a newer master.
fn publication_ops(next: &Published) -> [serde_json::Value; 5] {
    let active = next
        .master
        .as_ref()
        .map_or_else(String::new, Endpoint::to_string);
    let add = |key: &str, value: String| json!({"op": "add", "path": annotation_path(key), "value": value});
    [
        add(ACTIVE_ANNOTATION, active),
        add(EPOCH_ANNOTATION, next.epoch.to_string()),
        add(
            MASTER_RUN_ID_ANNOTATION,
            next.run_id.clone().unwrap_or_default(),
        ),
        add(
            MASTER_REPLID_ANNOTATION,
            next.replid.clone().unwrap_or_default(),
        ),
        add(
            MASTER_REPLID2_ANNOTATION,
            next.replid2.clone().unwrap_or_default(),
        ),
    ]
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
        if !self.may_act() {
            return Err(not_leader("retracted"));
        }
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
            ops.extend(publication_ops(next));
            ops
        } else {
            let mut ops = vec![json!({
                "op": "test", "path": annotation_path(EPOCH_ANNOTATION),
                "value": current.epoch.to_string()
            })];
            ops.extend(publication_ops(next));
            ops
        };
        let patch = json_patch(json!(patch))
            .map_err(|e| PublishError::Failed(format!("building the patch: {e}")))?;
        // Checked right before the write: the read above may have taken its deadline.
        if !self.may_act() {
            return Err(not_leader("published"));
        }
        let result = timed_write(
            ApiWrite::Publish,
            &self.metrics,
            self.pairs
                .patch(&self.name, &PatchParams::default(), &patch),
        )
        .await;
        match result {
            Ok(_) => Ok(()),
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
        WRITE_TIMEOUT.max(READ_TIMEOUT)
    }

    fn record(&self, event: EngineEvent) {
        let described = events::describe(&event, &self.view.borrow().pods);
        self.events.send(&self.reference, described);
    }
}

#[cfg(test)]
mod tests {
    use kube::Resource;

    use super::*;
    use crate::controller::test_api::{PAIR, api_server};

    /// Failure 7 (controller side): a publisher whose lease is gone sends nothing, however
    /// long ago the engine checked; the refusal is definite (never sent), not unknown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_lease_nothing_is_published_or_retracted() {
        let (_server, client, pair) = api_server().await.unwrap_or_else(|e| panic!("{e}"));
        let pairs: Api<RedisPair> = Api::namespaced(client.clone(), "default");
        let (leadership, set_leader) = Leadership::by_hand();
        let (events, _queued) = EventSink::new();
        let master = Endpoint::new("127.0.0.1", 1);
        let (_view_tx, view) = watch::channel(PairView {
            pods: [(master.clone(), "cache-0".to_owned())].into(),
            ..PairView::default()
        });
        let publisher = KubePublisher {
            name: PAIR.into(),
            reference: pair.object_ref(&()),
            pairs: pairs.clone(),
            pods: Api::namespaced(client, "default"),
            view,
            leadership,
            events,
            metrics: ControllerMetrics::default(),
        };
        let first = Published {
            epoch: 1,
            master: Some(master.clone()),
            run_id: None,
            replid: None,
            replid2: None,
        };
        set_leader(true);
        publisher
            .publish(&Published::default(), &first, Reason::Initial)
            .await
            .unwrap_or_else(|e| panic!("publish while leading: {e}"));
        // The engine checked may_act a moment ago; the lease is gone since.
        set_leader(false);
        let next = Published {
            epoch: 2,
            master: None,
            ..Published::default()
        };
        let refused = publisher.publish(&first, &next, Reason::MasterDown).await;
        assert!(
            matches!(refused, Err(PublishError::Failed(_))),
            "{refused:?}"
        );
        let retracted = publisher.retract(&master).await;
        assert!(
            matches!(retracted, Err(PublishError::Failed(_))),
            "{retracted:?}"
        );
        let now = pairs.get(PAIR).await.unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(crd::published(&now), Ok(Some(first)));
    }

    #[test]
    fn a_publication_writes_its_identity_and_clears_an_unknown_one() {
        let next = Published {
            epoch: 4,
            master: Some(Endpoint::new("10.0.0.2", 6379)),
            run_id: Some("abc".into()),
            replid: None,
            replid2: None,
        };
        let ops = publication_ops(&next);
        let value_of = |key: &str| {
            ops.iter()
                .find(|op| op["path"] == annotation_path(key))
                .map(|op| op["value"].clone())
        };
        assert_eq!(value_of(ACTIVE_ANNOTATION), Some(json!("10.0.0.2:6379")));
        assert_eq!(value_of(EPOCH_ANNOTATION), Some(json!("4")));
        assert_eq!(value_of(MASTER_RUN_ID_ANNOTATION), Some(json!("abc")));
        assert_eq!(value_of(MASTER_REPLID_ANNOTATION), Some(json!("")));
    }
}
