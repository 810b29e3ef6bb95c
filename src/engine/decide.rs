//! The failover decision: a pure function from what the probes saw, what is published and the
//! time, to a [`Plan`]. No I/O and no clock reads happen here, so every safety property of
//! redis-pair is a property of this file and is tested here, exhaustively and by proptest.
//!
//! The rules, in order:
//! 1. The published master is authoritative while it is up: every other server that answers is
//!    made its replica (a returning old master included) before anything can be routed to it.
//! 2. A master that refuses connections is down at once; one that does not answer is down only
//!    after `down_after`. A master that answers with a new run_id restarted, possibly empty; it
//!    is treated as failed so that its replicas never full-resync from an empty dataset.
//! 3. When the master is down, the most caught-up replica wins: highest replication offset,
//!    then lowest `replica-priority` value, then address order. Priority 0 never wins, and
//!    neither does a replica that has not completed a sync since it started (it has no data).
//! 4. With nothing published (start-up, or after every server was down) the existing topology
//!    is kept: an existing master is published rather than promoting anything, and of two
//!    masters the one with more data (keys, then offset) is kept.

use std::cmp::Ordering;
use std::time::Duration;

use super::model::{
    Endpoint, FailureKind, Plan, Probe, Published, Reason, RedisInfo, Role, ServerState, Waiting,
};

/// The knobs of the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a server may fail to answer before it is down.
    pub down_after: Duration,
}

/// Decides what to do now. Deterministic: the same servers (in any order), publication, policy
/// and time always give the same plan, so two deciders looking at the same world agree.
pub fn decide(
    servers: &[ServerState],
    published: &Published,
    policy: &Policy,
    now: Duration,
) -> Plan {
    let view = View {
        servers,
        policy,
        now,
    };
    match &published.master {
        Some(master) => view.with_master(published, master),
        None => view.without_master(published),
    }
}

/// A failed server is down when it refuses connections (the process is gone) or has failed
/// for `down_after`; before that it is only failing. An answering server is never down.
pub fn is_down(probe: &Probe, policy: &Policy, now: Duration) -> bool {
    match probe {
        Probe::Up(_) => false,
        Probe::Failed {
            kind: FailureKind::Refused,
            ..
        } => true,
        Probe::Failed { since, .. } => now.saturating_sub(*since) >= policy.down_after,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness<'a> {
    Up(&'a RedisInfo),
    /// Not answering, but not for long enough to be called down.
    Failing,
    Down,
}

struct View<'a> {
    servers: &'a [ServerState],
    policy: &'a Policy,
    now: Duration,
}

impl<'a> View<'a> {
    fn liveness(&self, server: &'a ServerState) -> Liveness<'a> {
        match &server.probe {
            Probe::Up(info) => Liveness::Up(info),
            failed if is_down(failed, self.policy, self.now) => Liveness::Down,
            Probe::Failed { .. } => Liveness::Failing,
        }
    }

    fn liveness_of(&self, endpoint: &Endpoint) -> Liveness<'a> {
        self.servers
            .iter()
            .find(|s| &s.endpoint == endpoint)
            .map_or(Liveness::Down, |s| self.liveness(s))
    }

    fn up(&self) -> impl Iterator<Item = (&'a Endpoint, &'a RedisInfo)> + '_ {
        self.servers.iter().filter_map(|s| match self.liveness(s) {
            Liveness::Up(info) => Some((&s.endpoint, info)),
            _ => None,
        })
    }

    fn with_master(&self, published: &Published, master: &Endpoint) -> Plan {
        match self.liveness_of(master) {
            Liveness::Up(info) => {
                let restarted = published
                    .run_id
                    .as_deref()
                    .is_some_and(|known| known != info.run_id);
                if !restarted {
                    return Plan {
                        // Someone demoted our master behind our back: it stays the authority.
                        promote: (info.role == Role::Replica).then(|| master.clone()),
                        publish: None,
                        replicate: self.replicas_to_repoint(master),
                        waiting: None,
                    };
                }
                // With no replica to take over, the restarted process is all there is: it is
                // a new incarnation, so it is republished under a new epoch and run_id.
                self.fail_over(published, master, Reason::MasterRestarted)
                    .unwrap_or_else(|| {
                        self.make_master(published, master, info, Reason::MasterRestarted)
                    })
            }
            Liveness::Failing => Plan {
                waiting: Some(Waiting::MasterFailing {
                    master: master.clone(),
                }),
                ..Plan::default()
            },
            Liveness::Down => self
                .fail_over(published, master, Reason::MasterDown)
                .unwrap_or_else(|| Plan {
                    publish: Some((
                        Published {
                            epoch: published.epoch + 1,
                            master: None,
                            run_id: None,
                        },
                        Reason::NoMasterReachable,
                    )),
                    waiting: Some(Waiting::NoCandidate),
                    ..Plan::default()
                }),
        }
    }

    fn without_master(&self, published: &Published) -> Plan {
        if self
            .servers
            .iter()
            .any(|s| self.liveness(s) == Liveness::Failing)
        {
            // A server that is not answering yet may be the master with the most data; giving
            // it `down_after` costs seconds, choosing wrong costs data.
            return Plan {
                waiting: Some(Waiting::ServersFailing),
                ..Plan::default()
            };
        }
        let existing_master = self
            .up()
            .filter(|(_, info)| info.role == Role::Master)
            .max_by(more_data);
        let Some((chosen, info)) = existing_master.or_else(|| self.best_candidate(None)) else {
            let nothing_up = self.up().next().is_none();
            return Plan {
                waiting: Some(if nothing_up {
                    Waiting::NothingUp
                } else {
                    Waiting::NoCandidate
                }),
                ..Plan::default()
            };
        };
        let reason = if published.epoch == 0 {
            Reason::Initial
        } else {
            Reason::Recovered
        };
        self.make_master(published, chosen, info, reason)
    }

    /// Promotes the best replica in place of `old`, or `None` when no replica may be promoted.
    fn fail_over(&self, published: &Published, old: &Endpoint, reason: Reason) -> Option<Plan> {
        let (chosen, info) = self.best_candidate(Some(old))?;
        Some(self.make_master(published, chosen, info, reason))
    }

    /// Makes `chosen` the master under the next epoch: promote it if it is a replica, publish
    /// it with its run_id, and repoint everyone else at it.
    fn make_master(
        &self,
        published: &Published,
        chosen: &Endpoint,
        info: &RedisInfo,
        reason: Reason,
    ) -> Plan {
        Plan {
            promote: (info.role == Role::Replica).then(|| chosen.clone()),
            publish: Some((
                Published {
                    epoch: published.epoch + 1,
                    master: Some(chosen.clone()),
                    run_id: Some(info.run_id.clone()),
                },
                reason,
            )),
            replicate: self.replicas_to_repoint(chosen),
            waiting: None,
        }
    }

    /// The most caught-up promotable replica, excluding `except`.
    fn best_candidate(&self, except: Option<&Endpoint>) -> Option<(&'a Endpoint, &'a RedisInfo)> {
        self.up()
            .filter(|(endpoint, info)| Some(*endpoint) != except && is_promotable(info))
            .max_by(more_caught_up)
    }

    /// Every answering server other than `master` that is not already its replica.
    fn replicas_to_repoint(&self, master: &Endpoint) -> Vec<(Endpoint, Endpoint)> {
        let mut repoint: Vec<_> = self
            .up()
            .filter(|(endpoint, info)| {
                *endpoint != master
                    && !(info.role == Role::Replica && info.master.as_ref() == Some(master))
            })
            .map(|(endpoint, _)| (endpoint.clone(), master.clone()))
            .collect();
        repoint.sort();
        repoint
    }
}

/// A replica may be promoted when it is allowed to (priority > 0) and holds data it got from
/// a master.
pub fn is_promotable(info: &RedisInfo) -> bool {
    info.role == Role::Replica && info.priority > 0 && info.synced
}

/// `Greater` when `a` is the better promotion candidate: higher offset, then lower priority
/// value (Redis's convention), then the lower address.
pub fn more_caught_up(a: &(&Endpoint, &RedisInfo), b: &(&Endpoint, &RedisInfo)) -> Ordering {
    a.1.offset
        .cmp(&b.1.offset)
        .then(b.1.priority.cmp(&a.1.priority))
        .then(b.0.cmp(a.0))
}

/// `Greater` when master `a` holds more data than master `b`: keys, then offset, then address.
fn more_data(a: &(&Endpoint, &RedisInfo), b: &(&Endpoint, &RedisInfo)) -> Ordering {
    a.1.keys
        .cmp(&b.1.keys)
        .then(a.1.offset.cmp(&b.1.offset))
        .then(b.0.cmp(a.0))
}

#[cfg(test)]
mod tests;
