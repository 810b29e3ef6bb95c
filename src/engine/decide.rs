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
//! 5. A master nobody published is a candidate too when the published master is down, and it
//!    wins a tie. It is what an engine leaves behind that promoted a replica and died (or lost
//!    its lease) before publishing: the most caught-up server, so it is kept, not replaced by
//!    promoting another replica and then wiped by a resync.
//! 6. A server that is leaving (its pod is being deleted) is never chosen as a new master. A
//!    published master that is leaving is handed over by a planned switchover to the most
//!    caught-up replica that is in sync with it, so a rolling restart loses no write.
//! 7. With write fencing on, the master keeps `min-replicas-to-write 1` while a replica is in
//!    sync with it, and 0 once the engine reaches it and sees none: a master cut off from its
//!    replicas and from the engine stops taking writes, one that merely lost its replicas
//!    does not.

use std::cmp::Ordering;
use std::time::Duration;

use super::model::{
    Endpoint, FailureKind, MinReplicas, Plan, Probe, Published, Reason, RedisInfo, Role,
    ServerState, Waiting,
};

/// The knobs of the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a server may fail to answer before it is down.
    pub down_after: Duration,
    pub fencing: Fencing,
}

/// Whether and how the engine keeps the master's write fence (rule 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// Never touched: whatever the servers' configuration says stands (local mode).
    Unmanaged,
    /// Kept at `min-replicas-to-write 0`: the master takes writes with or without replicas.
    Off,
    /// `min-replicas-to-write 1` with this `min-replicas-max-lag` while a replica is in sync.
    On { max_lag_secs: u32 },
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

/// What to make of a publication that is not the engine's own (`seen`, read from where
/// publications live): another engine's, which is to be followed, or a stray write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// Older than what the engine published (a cache that lags behind), or the same.
    Ignore,
    /// Newer, and it names an answering master: another engine acted; follow it.
    Adopt,
    /// Newer (or of the same epoch with another master), but it names a replica, a server that does not answer or is not in the group, or
    /// no master while the engine's master answers: publish the engine's master above it.
    Correct(Published),
}

/// Judges `seen` against the engine's own publication `own` and what the probes saw. A
/// publication is only ever followed when it could be right: following one that names a
/// replica would make the engine promote it and demote the real master.
pub fn judge_foreign(servers: &[ServerState], own: &Published, seen: &Published) -> Foreign {
    if seen.epoch < own.epoch || (seen.epoch == own.epoch && seen.master == own.master) {
        return Foreign::Ignore;
    }
    let answers_as_master = |endpoint: &Endpoint| {
        servers
            .iter()
            .find(|s| &s.endpoint == endpoint)
            .and_then(ServerState::info)
            .is_some_and(|info| info.role == Role::Master)
    };
    let above = |master: Option<&Endpoint>| {
        Foreign::Correct(Published {
            epoch: seen.epoch + 1,
            master: master.cloned(),
            run_id: (master == own.master.as_ref())
                .then(|| own.run_id.clone())
                .flatten(),
        })
    };
    let ours = own.master.as_ref().filter(|m| answers_as_master(m));
    let named = seen.master.as_ref().filter(|m| answers_as_master(m));
    if seen.epoch == own.epoch {
        // A stray write reusing the engine's epoch (two masters under one epoch must never
        // be): published again above it, keeping the engine's master while it answers, as the
        // clients are there (a sidecar ignores an epoch it already holds).
        return above(ours.or(named));
    }
    match (&seen.master, named, ours) {
        // Another engine acted: what it published answers as master.
        (Some(_), Some(_), _) => Foreign::Adopt,
        // It names no master, and none of ours answers either: that is the truth.
        (None, _, None) => Foreign::Adopt,
        // It names a replica, a server that does not answer or is not in the group, or no
        // master while ours answers: ours again, above it; "no master" if ours is gone too.
        (_, _, ours) => above(ours),
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
                    let leaving = self.is_leaving(master) && info.role == Role::Master;
                    let switch_over = leaving.then(|| self.switchover_target(master)).flatten();
                    let waiting =
                        (leaving && switch_over.is_none()).then(|| Waiting::NoSwitchoverTarget {
                            master: master.clone(),
                        });
                    return Plan {
                        // Someone demoted our master behind our back: it stays the authority.
                        promote: (info.role == Role::Replica).then(|| master.clone()),
                        fence: self.fence(master, info),
                        publish: None,
                        replicate: self.replicas_to_repoint(master),
                        switch_over,
                        waiting,
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
            fence: self.fence(chosen, info),
            publish: Some((
                Published {
                    epoch: published.epoch + 1,
                    master: Some(chosen.clone()),
                    run_id: Some(info.run_id.clone()),
                },
                reason,
            )),
            replicate: self.replicas_to_repoint(chosen),
            switch_over: None,
            waiting: None,
        }
    }

    /// The best server to become master in place of `except`: the most caught-up of the
    /// promotable replicas and the masters nobody published (rule 5); never a leaving one.
    fn best_candidate(&self, except: Option<&Endpoint>) -> Option<(&'a Endpoint, &'a RedisInfo)> {
        self.up()
            .filter(|(endpoint, info)| {
                Some(*endpoint) != except
                    && !self.is_leaving(endpoint)
                    && (is_promotable(info) || (info.role == Role::Master && info.priority > 0))
            })
            .max_by(more_caught_up)
    }

    /// The replica a leaving master hands over to: in sync with it, allowed to be promoted,
    /// staying, and the most caught-up of those.
    fn switchover_target(&self, master: &Endpoint) -> Option<Endpoint> {
        self.up()
            .filter(|(endpoint, info)| {
                !self.is_leaving(endpoint)
                    && is_promotable(info)
                    && info.link_up
                    && info.master.as_ref() == Some(master)
            })
            .max_by(more_caught_up)
            .map(|(endpoint, _)| endpoint.clone())
    }

    fn is_leaving(&self, endpoint: &Endpoint) -> bool {
        self.servers
            .iter()
            .any(|s| &s.endpoint == endpoint && s.leaving)
    }

    /// The fence `master` should have now (rule 7), if it differs from what it has. Nothing
    /// when the fence is not managed or could not be read.
    fn fence(&self, master: &Endpoint, info: &RedisInfo) -> Option<(Endpoint, MinReplicas)> {
        let current = info.min_replicas?;
        let wanted = match self.policy.fencing {
            Fencing::Unmanaged => return None,
            Fencing::Off => MinReplicas {
                to_write: 0,
                ..current
            },
            Fencing::On { max_lag_secs } => MinReplicas {
                to_write: u32::from(self.has_replica_in_sync(master)),
                max_lag_secs,
            },
        };
        (wanted != current).then(|| (master.clone(), wanted))
    }

    fn has_replica_in_sync(&self, master: &Endpoint) -> bool {
        self.up().any(|(_, info)| {
            info.role == Role::Replica && info.link_up && info.master.as_ref() == Some(master)
        })
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

/// `Greater` when `a` is the better candidate for master: higher offset, then already a
/// master (rule 5: nothing to promote, nothing to resync), then lower priority value (Redis's
/// convention), then the lower address.
pub fn more_caught_up(a: &(&Endpoint, &RedisInfo), b: &(&Endpoint, &RedisInfo)) -> Ordering {
    a.1.offset
        .cmp(&b.1.offset)
        .then((a.1.role == Role::Master).cmp(&(b.1.role == Role::Master)))
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
