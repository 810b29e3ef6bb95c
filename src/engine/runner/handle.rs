//! What the rest of the process holds of an engine: its configuration, the members it is
//! given, and the handle through which it is asked for a switchover or told of a publication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::status::Status;
use crate::engine::decide::Policy;
use crate::engine::model::{Endpoint, Published, Unfit, describe_unfit};
use crate::engine::redis_io::RedisCallError;

/// A server of the group and the socket addresses its host resolved to, so that a replica
/// reporting `master_host` as an IP still matches a member named by host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub endpoint: Endpoint,
    pub addrs: Vec<SocketAddr>,
    /// Going away (its pod is being deleted): never promoted; as the master, handed over.
    pub leaving: bool,
}

impl Member {
    /// A member known by its IP address, as a pod is.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            endpoint: Endpoint::new(addr.ip().to_string(), addr.port()),
            addrs: vec![addr],
            leaving: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The members at start; [`EngineHandle::set_members`] changes them.
    pub members: Vec<Member>,
    pub policy: Policy,
    pub probe_interval: Duration,
    pub switchover_timeout: Duration,
    /// What is published already: the epoch goes on from here, never back.
    pub published: Published,
    /// Observe and report, never act.
    pub paused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("no master is published, so there is nothing to switch over from")]
    NoMaster,
    #[error("{0} is not a server of this group; pick one of the configured servers")]
    UnknownTarget(Endpoint),
    #[error("{0} is already the master")]
    AlreadyMaster(Endpoint),
    #[error(
        "{0} changed (restarted or resynced) while the switchover was under way; it was \
         abandoned and the old master was not demoted: it keeps its data and stays master, or \
         is published again if the target was published already"
    )]
    TargetChanged(Endpoint),
    #[error("the engine is paused (spec.paused); unpause it to switch over")]
    Paused,
    #[error("this controller does not hold the lease; the leader acts")]
    NotLeader,
    #[error("publishing the new master failed ({0}); the switchover was undone")]
    Publish(String),
    #[error(
        "publishing the new master got no answer ({0}); the old master was demoted and the \
         publication is being read back: the pair follows whichever stands"
    )]
    PublishUnknown(String),
    #[error("{target} cannot take over: {}", .why.describe())]
    TargetNotReady { target: Endpoint, why: Unfit },
    #[error("no replica can take over: {}", describe_unfit(.0))]
    NoCandidate(Vec<(Endpoint, Unfit)>),
    #[error("the master {master} is not healthy ({why}); a failover, not a switchover, is due")]
    MasterUnhealthy { master: Endpoint, why: String },
    #[error(
        "{target} did not catch up with the master within {timeout}; the switchover was aborted, \
         the master unpaused and it stays master"
    )]
    CatchUpTimeout { target: Endpoint, timeout: String },
    #[error(
        "the master's write pause could not be made to outlast the remaining steps; the \
         switchover was aborted before anything was promoted"
    )]
    PauseTooShort,
    #[error("what is published is not known yet (a write's answer was lost); try again shortly")]
    PublicationUnknown,
    #[error("a Redis command failed during the switchover: {0}")]
    Redis(#[from] RedisCallError),
    #[error("the engine has stopped")]
    EngineStopped,
}

impl SwitchoverError {
    /// Whether the switchover got as far as pausing writes (the engine records how it ended);
    /// otherwise it was refused before anything was touched.
    pub fn started(&self) -> bool {
        matches!(
            self,
            SwitchoverError::CatchUpTimeout { .. }
                | SwitchoverError::Redis(_)
                | SwitchoverError::Publish(_)
                | SwitchoverError::PublishUnknown(_)
                | SwitchoverError::PauseTooShort
                | SwitchoverError::TargetChanged(_)
        )
    }

    /// The HTTP status the admin endpoint answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            SwitchoverError::CatchUpTimeout { .. } => 504,
            SwitchoverError::Redis(_) => 502,
            SwitchoverError::EngineStopped
            | SwitchoverError::NotLeader
            | SwitchoverError::PublicationUnknown => 503,
            SwitchoverError::Publish(_)
            | SwitchoverError::PublishUnknown(_)
            | SwitchoverError::PauseTooShort
            | SwitchoverError::TargetChanged(_) => 502,
            _ => 409,
        }
    }
}

pub(super) enum Request {
    Switchover {
        target: Option<Endpoint>,
        reply: oneshot::Sender<Result<Published, SwitchoverError>>,
    },
    /// A publication found where publications live that may not be the engine's own.
    Seen(Published),
}

/// What the rest of the process holds of the engine: what it publishes, and ways to ask it
/// for a switchover and to change its members.
#[derive(Clone)]
pub struct EngineHandle {
    pub published: watch::Receiver<Published>,
    pub status: watch::Receiver<Status>,
    pub(super) requests: mpsc::Sender<Request>,
    pub(super) members: Arc<watch::Sender<Vec<Member>>>,
}

impl EngineHandle {
    /// Tells the engine what is published now where publications live (the controller reads
    /// the RedisPair's annotations): one that is not its own is judged by
    /// [`crate::engine::decide::judge_foreign`], followed or corrected.
    pub fn seen(&self, publication: Published) {
        let own = self.published.borrow().clone();
        if (own.epoch, &own.master) != (publication.epoch, &publication.master) {
            // A full queue means the engine is busy; the next reconcile tells it again.
            let _ = self.requests.try_send(Request::Seen(publication));
        }
    }

    /// The group is now `members`: new ones are probed at once, a removed one is gone (a
    /// removed master is down at once), a leaving master is handed over.
    pub fn set_members(&self, members: Vec<Member>) {
        self.members.send_if_modified(|current| {
            let changed = *current != members;
            if changed {
                *current = members;
            }
            changed
        });
    }

    pub async fn switchover(&self, target: Option<Endpoint>) -> Result<Published, SwitchoverError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Switchover { target, reply })
            .await
            .map_err(|_| SwitchoverError::EngineStopped)?;
        answer.await.map_err(|_| SwitchoverError::EngineStopped)?
    }
}
