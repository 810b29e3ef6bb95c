//! One reconcile of one RedisPair: fetch (the caches; the Secret with a GET under a deadline)
//! → validate (pure, `validate`) → hand the pair's engine its members, or stop it and report
//! why it cannot be managed (`pairs`) → a typed [`Outcome`]. Failures are retried soon, with a
//! backoff from 1 s to 8 s: reconciles are how a failover's members reach the engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::api::timed_read;
use super::lease::Leadership;
use super::pairs::Pairs;
use super::validate::{self, Observed, SecretLookup};
use super::view::PairKey;
use crate::crd::RedisPair;
use crate::metrics::{ControllerMetrics, OutcomeLabel};

/// A pair in order is looked at again this often, to catch what no watch event announces (a
/// pod relabelled out of the pair).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// What went wrong in a reconcile that a retry may fix.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading the Secret of spec.authSecretRef: {0}")]
    Secret(#[source] kube::Error),
    #[error("starting the pair's engine: {0}")]
    Start(#[source] kube::Error),
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
}

/// How a reconcile that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This controller does not lead: nothing is done (becoming the leader reconciles all).
    NotLeader,
    /// The RedisPair is being deleted: its engine is stopped.
    Deleted,
    /// It cannot be managed as it is: engine stopped, status and Event say why.
    Invalid,
    /// Its engine runs with its current members.
    Managed,
}

impl Outcome {
    /// The `redispair_controller_reconciles_total` label; the two that do nothing are not
    /// counted.
    fn label(self) -> Option<&'static str> {
        match self {
            Outcome::Invalid => Some("invalid"),
            Outcome::Managed => Some("ok"),
            Outcome::NotLeader | Outcome::Deleted => None,
        }
    }

    fn action(self) -> Action {
        match self {
            // An invalid pair waits for a change of it, its pods or its Secret: no retry
            // storm.
            Outcome::NotLeader | Outcome::Deleted | Outcome::Invalid => Action::await_change(),
            Outcome::Managed => Action::requeue(RESYNC_EVERY),
        }
    }
}

/// What every reconcile of one namespace scope sees.
pub struct Context {
    pub client: Client,
    pub pairs: Arc<Pairs>,
    pub leadership: Leadership,
    pub pair_store: Store<RedisPair>,
    pub pod_store: Store<Pod>,
    pub metrics: ControllerMetrics,
    /// Consecutive failures per pair, for the requeue backoff.
    pub failures: Mutex<HashMap<ObjectRef<RedisPair>, u32>>,
}

pub async fn reconcile(pair: Arc<RedisPair>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let outcome = reconcile_pair(&pair, &ctx).await?;
    if let Some(outcome) = outcome.label() {
        ctx.metrics
            .reconciles
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&ObjectRef::from_obj(pair.as_ref()));
    }
    Ok(outcome.action())
}

async fn reconcile_pair(pair: &RedisPair, ctx: &Context) -> Result<Outcome, ReconcileError> {
    let key = PairKey::of(pair);
    if !ctx.leadership.is_leader() {
        return Ok(Outcome::NotLeader);
    }
    if pair.metadata.deletion_timestamp.is_some() {
        ctx.pairs.stop(&key).await;
        return Ok(Outcome::Deleted);
    }
    let pods: Vec<Arc<Pod>> = ctx
        .pod_store
        .state()
        .into_iter()
        .filter(|pod| pod.namespace().as_deref() == Some(key.namespace.as_str()))
        .collect();
    let others: Vec<Arc<RedisPair>> = ctx
        .pair_store
        .state()
        .into_iter()
        .filter(|other| {
            other.namespace().as_deref() == Some(key.namespace.as_str())
                && other.name_any() != key.name
        })
        .collect();
    let secret = match &pair.spec.auth_secret_ref {
        None => None,
        Some(reference) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &key.namespace);
            // Under a deadline like every call: a hung GET would hold this pair's reconciles.
            let found = timed_read(secrets.get_opt(&reference.name))
                .await
                .map_err(ReconcileError::Secret)?;
            Some(found)
        }
    };
    let lookup = match &secret {
        None => SecretLookup::NotReferenced,
        Some(None) => SecretLookup::Missing,
        Some(Some(secret)) => SecretLookup::Found(secret),
    };
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let other_refs: Vec<&RedisPair> = others.iter().map(AsRef::as_ref).collect();
    let observed = Observed {
        pair,
        pods: &pod_refs,
        others: &other_refs,
        secret: lookup,
        running: ctx.pairs.is_running(&key).await,
    };
    match validate::validate(&observed) {
        Err(invalid) => {
            ctx.pairs.stop(&key).await;
            ctx.pairs
                .report_invalid(pair, &invalid)
                .await
                .map_err(ReconcileError::Status)?;
            Ok(Outcome::Invalid)
        }
        Ok(desired) => {
            ctx.pairs
                .apply(pair, desired, &pods)
                .await
                .map_err(ReconcileError::Start)?;
            ctx.pairs.switchover(pair).await;
            Ok(Outcome::Managed)
        }
    }
}

/// Transient failures are retried soon, backing off from 1 s to 8 s: this is failover.
pub fn error_policy(pair: Arc<RedisPair>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconciles
        .get_or_create(&OutcomeLabel { outcome: "error" })
        .inc();
    let attempts = ctx.failures.lock().map_or(1, |mut failures| {
        let attempts = failures
            .entry(ObjectRef::from_obj(pair.as_ref()))
            .or_insert(0);
        *attempts = attempts.saturating_add(1);
        *attempts
    });
    let delay = Duration::from_secs(1 << attempts.clamp(1, 4).saturating_sub(1));
    warn!(pair = %PairKey::of(&pair), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_managed_pair_is_looked_at_again_on_a_timer() {
        assert_eq!(Outcome::Managed.action(), Action::requeue(RESYNC_EVERY));
        for outcome in [Outcome::NotLeader, Outcome::Deleted, Outcome::Invalid] {
            assert_eq!(outcome.action(), Action::await_change(), "{outcome:?}");
        }
        assert_eq!(Outcome::NotLeader.label(), None);
        assert_eq!(Outcome::Invalid.label(), Some("invalid"));
    }
}
