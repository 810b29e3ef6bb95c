//! Where the engine's decisions become visible, and what may stop it from acting.
//!
//! The engine decides and drives Redis; a [`Publisher`] is the one place its decisions leave
//! the process. Local mode keeps them in memory (the proxy in the same process follows the
//! engine's watch channel); the controller writes them to the RedisPair (an annotation with a
//! conditional write) and answers [`Publisher::may_act`] from its lease, so an engine that lost
//! the lease stops between two commands.

use std::future::Future;
use std::time::Duration;

use super::model::{Endpoint, Published, Reason, Waiting};

/// What the engine tells the world, in the order it does things: `retract` the old master,
/// promote, `publish` the new one. Only a successful `publish` counts: the engine never
/// repoints replicas at a master that is not published.
pub trait Publisher: Send + Sync + 'static {
    /// Whether the engine may send a topology-changing command or publish now. Checked before
    /// every one of them.
    fn may_act(&self) -> bool {
        true
    }

    /// Called before anything is promoted or published in place of the published master
    /// `old`. The controller takes the master label off its pod here, so a Service selecting
    /// the master never routes to it during the failover. An error aborts the change (the
    /// next round tries again).
    fn retract(&self, old: &Endpoint) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Makes `next` the publication in place of `current`, only if `current` is still what is
    /// published (the fencing token: a stale engine can never overwrite a newer epoch).
    fn publish(
        &self,
        current: &Published,
        next: &Published,
        reason: Reason,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Reads what is published now from the authority itself (the controller: a quorum GET
    /// of the RedisPair, never a cache). How an unknown outcome becomes known.
    fn read(&self) -> impl Future<Output = Result<Published, PublishError>> + Send;

    /// The longest one call of this publisher may take: part of how long a switchover keeps
    /// the old master's writes paused.
    fn deadline(&self) -> Duration;

    /// Something people may want to see happened (the controller turns it into a Kubernetes
    /// Event). Must not block.
    fn record(&self, event: EngineEvent) {
        let _ = event;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// What is published is newer than what the engine knew: it adopts `0` and decides again.
    #[error("a newer publication exists (epoch {}); this engine's view was stale", .0.epoch)]
    Superseded(Published),
    /// Certainly not published (the write was refused, or never sent); the next round tries
    /// again.
    #[error("{0}")]
    Failed(String),
    /// Sent, but no answer came (a timeout, a connection reset after sending): it may have
    /// been applied. The engine reads the publication back before it acts again.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// What the engine did, for people: the controller's Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// `to` is published as the master (or no master, when `None`) under `epoch`.
    Published {
        from: Option<Endpoint>,
        to: Option<Endpoint>,
        epoch: u64,
        reason: Reason,
    },
    /// `server` was made a replica of `master`; `was_master` tells a demotion from a
    /// reattachment.
    Repointed {
        server: Endpoint,
        master: Endpoint,
        was_master: bool,
    },
    SwitchoverStarted {
        from: Endpoint,
        to: Endpoint,
    },
    SwitchoverFailed {
        from: Endpoint,
        to: Endpoint,
        error: String,
    },
    /// The engine started waiting for this reason although something is wrong (a master that
    /// cannot be handed over, no server that holds the data, ...): people must know.
    Waiting(Waiting),
}

/// Local mode: publishing is the engine's own watch channel, which cannot fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct InProcess;

impl Publisher for InProcess {
    async fn retract(&self, _old: &Endpoint) -> Result<(), PublishError> {
        Ok(())
    }

    async fn publish(
        &self,
        _current: &Published,
        _next: &Published,
        _reason: Reason,
    ) -> Result<(), PublishError> {
        Ok(())
    }

    async fn read(&self) -> Result<Published, PublishError> {
        // Never asked: an in-process publication cannot be unknown.
        Err(PublishError::Failed(
            "local mode keeps no publication outside the engine".into(),
        ))
    }

    fn deadline(&self) -> Duration {
        Duration::ZERO
    }
}
