//! The engine's status as `/status` and the RedisPair's status show it, its per-server
//! metrics, and the plan or the reason for waiting in words.

use serde::Serialize;

use crate::engine::model::{Endpoint, FailureKind, Plan, Reason, Role, Waiting, describe_unfit};

/// The engine's status as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub master: Option<Endpoint>,
    pub epoch: u64,
    pub servers: Vec<ServerStatus>,
    pub last_failover: Option<FailoverRecord>,
    /// Why the engine is not acting although something is wrong, if it is (when paused: what
    /// it would do).
    pub waiting: Option<String>,
    pub paused: bool,
}

/// How a server answers, as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    /// Not answering, not yet for `down_after`.
    Failing,
    Down,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    pub address: Endpoint,
    pub health: Health,
    pub role: Option<Role>,
    pub master: Option<Endpoint>,
    pub link_up: Option<bool>,
    pub offset: Option<u64>,
    pub lag_bytes: Option<u64>,
    pub priority: Option<u32>,
    pub keys: Option<u64>,
    pub run_id: Option<String>,
    /// How the last probe failed, if it did (the error's kind, carried, never parsed back).
    pub failure: Option<FailureKind>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailoverRecord {
    pub from: Option<Endpoint>,
    pub to: Option<Endpoint>,
    pub reason: Reason,
    pub epoch: u64,
    pub unix_ms: u64,
}

/// A plan in words: "promote 10.0.0.2:6379, publish it as master under epoch 5 (master-down)".
pub fn describe_plan(plan: &Plan) -> String {
    let mut steps = Vec::new();
    if plan.reread {
        steps.push("read the publication back".to_owned());
    }
    if let Some(server) = &plan.promote {
        steps.push(format!("promote {server}"));
    }
    if let Some((server, fence)) = &plan.fence {
        steps.push(format!(
            "set min-replicas-to-write {} on {server}",
            fence.to_write
        ));
    }
    if let Some((next, reason)) = &plan.publish {
        steps.push(match &next.master {
            Some(master) => format!(
                "publish {master} as master under epoch {} ({})",
                next.epoch,
                reason.as_str()
            ),
            None => format!("publish no master under epoch {}", next.epoch),
        });
    }
    for (server, master) in &plan.replicate {
        steps.push(format!("make {server} a replica of {master}"));
    }
    if let Some(target) = &plan.switch_over {
        steps.push(format!("hand the master over to {target}"));
    }
    steps.join(", ")
}

pub fn describe_waiting(waiting: &Waiting) -> String {
    match waiting {
        Waiting::MasterFailing { master } => {
            format!("master {master} is not answering; waiting for down-after before failing over")
        }
        Waiting::NoCandidate { unfit } if unfit.is_empty() => {
            "no master: no other server to promote".into()
        }
        Waiting::NoCandidate { unfit } => format!(
            "no master: no server is known to hold the master's data and fit to promote ({}); \
             waiting for one",
            describe_unfit(unfit)
        ),
        Waiting::ServersFailing => {
            "no master yet: waiting for servers that are not answering (one may hold the data)"
                .into()
        }
        Waiting::NothingUp => "no master: no server is answering; still probing".into(),
        Waiting::NoSwitchoverTarget { master, unfit } => format!(
            "master {master} is leaving but no replica is ready to take over ({}); it stays \
             master until it goes, then a failover follows",
            describe_unfit(unfit)
        ),
        Waiting::CandidateBehind { candidate, ahead } => format!(
            "the master is down; {candidate} could take over but {ahead}, which is not \
             answering yet, holds more of the data: waiting for it until down-after"
        ),
        Waiting::PublicationUnknown => {
            "a publication's answer was lost: reading it back before acting".into()
        }
    }
}

/// The bounded metric label of a reason for waiting that needs attention; `None` for the
/// ordinary waits of a failover in progress.
pub fn blocked_label(waiting: &Waiting) -> Option<&'static str> {
    match waiting {
        Waiting::NoCandidate { .. } => Some("no-candidate"),
        Waiting::NoSwitchoverTarget { .. } => Some("no-switchover-target"),
        Waiting::CandidateBehind { .. } => Some("candidate-behind"),
        Waiting::PublicationUnknown => Some("publication-unknown"),
        Waiting::MasterFailing { .. } | Waiting::ServersFailing | Waiting::NothingUp => None,
    }
}
