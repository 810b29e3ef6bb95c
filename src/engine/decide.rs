//! The failover decision: a pure function from what the probes saw, what is published and the
//! time, to a [`Plan`]. No I/O and no clock reads happen here, so every safety property of
//! redis-pair is a property of this module and is tested here: table tests, properties, and
//! the simulation (`engine::sim`) that runs the real runner against a model of Redis.
//!
//! The rules, in order:
//! 0. A publication whose outcome is unknown (a write that timed out may have been applied)
//!    is read back before anything else: no topology step is taken on a guess.
//! 1. The published master is authoritative while it is up: every other server that answers is
//!    made its replica (a returning old master included) before anything can be routed to it.
//! 2. A master that refuses connections is down at once; one that does not answer is down only
//!    after `down_after`; one that refuses new clients (`maxclients`) is never down, since its
//!    existing clients can still write to it. A master that answers with a new run_id
//!    restarted, possibly empty; it is treated as failed so that its replicas never
//!    full-resync from an empty dataset.
//! 3. Only a server known to hold the published master's data may take its place: a replica
//!    that completed a sync of that replication history (`replid`) and is not in the middle of
//!    another, or a master promoted from one (`replid2`), and neither holding less than the
//!    master last saw it acknowledge (offsets only grow: one that went back restarted from an
//!    older snapshot). Never a server because it calls itself master. With none, "no master"
//!    is published and the pair waits.
//! 4. Of those, the most caught-up wins, judged by the replica's own offset or the master's
//!    last word on it, whichever is further; then an existing master (nothing to promote);
//!    then the lower `replica-priority` value; then address order. Priority 0 never wins. A
//!    candidate known to be behind a server that is failing but not yet down is not promoted
//!    until that server is down.
//! 5. With nothing published the existing topology is kept: a server holding the last
//!    published data is preferred; at start-up (or when every member answers and none holds
//!    that data, not even one that may not be promoted) an existing master is published
//!    rather than promoting anything, the one with more data (keys, then offset) if two.
//! 6. A server that is leaving (its pod is being deleted) is never chosen as a new master. A
//!    published master that is leaving is handed over by a planned switchover to a replica
//!    that is ready ([`switchover_target`]), so a rolling restart loses no write.
//! 7. With write fencing on, the master keeps `min-replicas-to-write 1` while its own view
//!    shows a replica acknowledging within `max_lag`, and 0 otherwise: a master cut off from
//!    its replicas and from the engine stops taking writes; one the engine still reaches that
//!    merely lost its replicas is unfenced within `max_lag` and one probe. A promoted replica
//!    has no replicas yet, so it starts unfenced.
//!
//! The planned switchover's own safety rules ([`switchover_target`], [`pause_length`],
//! [`pause_holds`]) live here too, so both switchover paths (requested and hand-over) share
//! them.

use std::cmp::Ordering;
use std::time::Duration;

use super::model::{
    Endpoint, FailureKind, MinReplicas, Plan, Probe, Published, Reason, RedisInfo, Role,
    ServerState, Unfit, Waiting,
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

/// What the engine knows of the publication it acts under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publication {
    /// This is what is published.
    Settled(Published),
    /// A write of it may or may not have been applied: it must be read back (rule 0).
    Unsettled,
}

/// Decides what to do now. Deterministic: the same servers (in any order), publication, policy
/// and time always give the same plan, so two deciders looking at the same world agree.
pub fn decide(
    servers: &[ServerState],
    publication: &Publication,
    policy: &Policy,
    now: Duration,
) -> Plan {
    let published = match publication {
        Publication::Settled(published) => published,
        Publication::Unsettled => {
            return Plan {
                reread: true,
                waiting: Some(Waiting::PublicationUnknown),
                ..Plan::default()
            };
        }
    };
    let view = View {
        servers,
        published,
        policy,
        now,
    };
    match &published.master {
        Some(master) => view.with_master(master),
        None => view.without_master(),
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
    /// Newer (or of the same epoch with another master), but it names a replica, a server that
    /// does not answer or is not in the group, or no master while the engine's master
    /// answers: publish the engine's master above it.
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
        let ours = master == own.master.as_ref();
        Foreign::Correct(Published {
            epoch: seen.epoch + 1,
            master: master.cloned(),
            run_id: if ours { own.run_id.clone() } else { None },
            // The data to keep is still the engine's, whichever master is named.
            replid: own.replid.clone(),
            replid2: own.replid2.clone(),
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
/// for `down_after`; before that it is only failing. An answering server is never down, and
/// neither is one that refuses only new clients (`maxclients`): it is there.
pub fn is_down(probe: &Probe, policy: &Policy, now: Duration) -> bool {
    match probe {
        Probe::Up(_) => false,
        Probe::Failed {
            kind: FailureKind::Refused,
            ..
        } => true,
        Probe::Failed {
            kind: FailureKind::MaxClients,
            ..
        } => false,
        Probe::Failed { since, .. } => now.saturating_sub(*since) >= policy.down_after,
    }
}

/// The replica a planned switchover hands the master over to: `wanted` if it is ready, else
/// the most caught-up ready one. Ready means: answering, a replica of `master` that the
/// master itself sees online, completed its sync and not in another, of the published
/// history, priority above 0, and staying. On refusal, why each server is not ready.
pub fn switchover_target(
    servers: &[ServerState],
    published: &Published,
    master: &Endpoint,
    wanted: Option<&Endpoint>,
) -> Result<Endpoint, Vec<(Endpoint, Unfit)>> {
    let policy = Policy {
        down_after: Duration::MAX,
        fencing: Fencing::Unmanaged,
    };
    let view = View {
        servers,
        published,
        policy: &policy,
        now: Duration::ZERO,
    };
    let mut ready = Vec::new();
    let mut unfit = Vec::new();
    for server in servers {
        if &server.endpoint == master || wanted.is_some_and(|w| w != &server.endpoint) {
            continue;
        }
        match view.handover_fitness(server, master) {
            Ok(info) => ready.push((&server.endpoint, info)),
            Err(why) => unfit.push((server.endpoint.clone(), why)),
        }
    }
    unfit.sort_by(|a, b| a.0.cmp(&b.0));
    ready
        .iter()
        .max_by(|a, b| view.more_caught_up(a, b))
        .map(|(endpoint, _)| (*endpoint).clone())
        .ok_or(unfit)
}

/// How long the master's writes are paused for a planned switchover: long enough to cover
/// every step up to the old master's demotion, each at its deadline (catching up, the
/// retraction, the promotion, the fence, the publication, reading it back if its answer is
/// lost, the demotion), plus a margin. The old master must never acknowledge a write once
/// the target may be promoted.
pub fn pause_length(
    catch_up: Duration,
    redis_deadline: Duration,
    api_deadline: Duration,
) -> Duration {
    // Offsets (master, target's last poll), promote, fence, demote: Redis calls.
    // Retract, publish, read back: API calls.
    catch_up + redis_deadline * 5 + api_deadline * 3 + Duration::from_secs(1)
}

/// Whether a pause that holds until `pause_until` (engine time, counted from before the
/// pause was sent, so it errs early) still covers `steps` more of work from `now`. Checked
/// before the promotion: if it would not, the switchover pauses again or is abandoned.
pub fn pause_holds(pause_until: Duration, now: Duration, steps: Duration) -> bool {
    now.saturating_add(steps) < pause_until
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness<'a> {
    Up(&'a RedisInfo),
    /// Not answering, but not for long enough to be called down.
    Failing,
    Down,
}

/// What a failover may do.
enum Takeover<'a> {
    To(&'a Endpoint, &'a RedisInfo),
    /// A better server may come back: wait.
    Wait(Waiting),
    /// No server may take over; why each may not.
    Nobody(Vec<(Endpoint, Unfit)>),
}

struct View<'a> {
    servers: &'a [ServerState],
    published: &'a Published,
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

    fn server(&self, endpoint: &Endpoint) -> Option<&'a ServerState> {
        self.servers.iter().find(|s| &s.endpoint == endpoint)
    }

    fn liveness_of(&self, endpoint: &Endpoint) -> Liveness<'a> {
        self.server(endpoint)
            .map_or(Liveness::Down, |s| self.liveness(s))
    }

    fn up(&self) -> impl Iterator<Item = (&'a Endpoint, &'a RedisInfo)> + '_ {
        self.servers.iter().filter_map(|s| match self.liveness(s) {
            Liveness::Up(info) => Some((&s.endpoint, info)),
            _ => None,
        })
    }

    fn with_master(&self, master: &Endpoint) -> Plan {
        match self.liveness_of(master) {
            Liveness::Up(info) => {
                let restarted = self
                    .published
                    .run_id
                    .as_deref()
                    .is_some_and(|known| known != info.run_id);
                if !restarted {
                    return self.keep_master(master, info);
                }
                // A new process: it is a candidate like any other, by its history (a restart
                // from a snapshot may keep it; an empty restart starts a new one).
                match self.takeover(None) {
                    Takeover::To(chosen, chosen_info) => {
                        self.make_master(chosen, chosen_info, Reason::MasterRestarted)
                    }
                    Takeover::Wait(waiting) => Plan::waiting(waiting),
                    // The data is gone from every member (all answer, none holds it): what is
                    // left is all there is; the restarted process unless another holds more.
                    Takeover::Nobody(_) if self.history_is_gone() => match self.most_data_left() {
                        Some((chosen, chosen_info)) if chosen_info.keys > info.keys => {
                            self.make_master(chosen, chosen_info, Reason::MasterRestarted)
                        }
                        _ => self.make_master(master, info, Reason::MasterRestarted),
                    },
                    Takeover::Nobody(unfit) => Plan {
                        // Its replicas must not resync from it while a server that may hold
                        // the data is away: nobody is routed to it, nobody repointed.
                        publish: Some((self.no_master(), Reason::MasterRestarted)),
                        waiting: Some(Waiting::NoCandidate { unfit }),
                        ..Plan::default()
                    },
                }
            }
            Liveness::Failing => Plan::waiting(Waiting::MasterFailing {
                master: master.clone(),
            }),
            Liveness::Down => match self.takeover(Some(master)) {
                Takeover::To(chosen, info) => self.make_master(chosen, info, Reason::MasterDown),
                Takeover::Wait(waiting) => Plan::waiting(waiting),
                Takeover::Nobody(unfit) => Plan {
                    publish: Some((self.no_master(), Reason::NoMasterReachable)),
                    waiting: Some(Waiting::NoCandidate { unfit }),
                    ..Plan::default()
                },
            },
        }
    }

    /// The published master answers as the same process: it stays the authority.
    fn keep_master(&self, master: &Endpoint, info: &RedisInfo) -> Plan {
        let leaving = self.is_leaving(master) && info.role == Role::Master;
        let (switch_over, waiting) = if leaving {
            match switchover_target(self.servers, self.published, master, None) {
                Ok(target) => (Some(target), None),
                Err(unfit) => (
                    None,
                    Some(Waiting::NoSwitchoverTarget {
                        master: master.clone(),
                        unfit,
                    }),
                ),
            }
        } else {
            (None, None)
        };
        // The same process reports another history than the one published (its first replica
        // made it start a new one): that is what its replicas carry now; publish it.
        let renamed = info.role == Role::Master
            && !history_is_provisional(info)
            && self.published.run_id.as_deref() == Some(info.run_id.as_str())
            && self.published.replid.as_deref() != Some(info.replid.as_str());
        let refresh = renamed.then(|| {
            (
                Published {
                    replid: Some(info.replid.clone()),
                    replid2: info.replid2.clone(),
                    ..self.published.clone()
                },
                Reason::Refreshed,
            )
        });
        Plan {
            // Someone demoted our master behind our back: it stays the authority.
            promote: (info.role == Role::Replica).then(|| master.clone()),
            fence: self.fence(master, info),
            publish: refresh,
            replicate: self.replicas_to_repoint(master),
            switch_over,
            waiting,
            reread: false,
        }
    }

    fn without_master(&self) -> Plan {
        if self
            .servers
            .iter()
            .any(|s| self.liveness(s) == Liveness::Failing)
        {
            // A server that is not answering yet may be the master with the most data; giving
            // it `down_after` costs seconds, choosing wrong costs data.
            return Plan::waiting(Waiting::ServersFailing);
        }
        if self.up().next().is_none() {
            return Plan::waiting(Waiting::NothingUp);
        }
        let reason = if self.published.epoch == 0 {
            Reason::Initial
        } else {
            Reason::Recovered
        };
        if self.knows_history() {
            // The data to keep is known: whoever holds it, and only them, unless it is gone
            // from every member.
            match self.takeover(None) {
                Takeover::To(chosen, info) => return self.make_master(chosen, info, reason),
                Takeover::Wait(waiting) => return Plan::waiting(waiting),
                Takeover::Nobody(unfit) if !self.history_is_gone() => {
                    return Plan::waiting(Waiting::NoCandidate { unfit });
                }
                // Gone from every member: what is left with the most data.
                Takeover::Nobody(unfit) => {
                    return match self.most_data_left() {
                        Some((chosen, info)) => self.make_master(chosen, info, reason),
                        None => Plan::waiting(Waiting::NoCandidate { unfit }),
                    };
                }
            }
        }
        let existing_master = self
            .up()
            .filter(|(_, info)| info.role == Role::Master)
            .max_by(more_data);
        let legacy_replica = || {
            self.up()
                .filter(|(endpoint, info)| {
                    !self.is_leaving(endpoint) && is_promotable(info) && !info.sync_in_progress
                })
                .max_by(|a, b| self.more_caught_up(a, b))
        };
        match existing_master.or_else(legacy_replica) {
            Some((chosen, info)) => self.make_master(chosen, info, reason),
            None if self.up().next().is_none() => Plan::waiting(Waiting::NothingUp),
            None => Plan::waiting(Waiting::NoCandidate {
                unfit: self.unfit_all(),
            }),
        }
    }

    /// Who takes over from `old` (or, with nothing published, from the last published data).
    fn takeover(&self, old: Option<&Endpoint>) -> Takeover<'a> {
        let mut unfit = Vec::new();
        let mut fit = Vec::new();
        for server in self.servers {
            if Some(&server.endpoint) == old {
                continue;
            }
            match self.failover_fitness(server) {
                Ok(info) => fit.push((&server.endpoint, info)),
                Err(why) => unfit.push((server.endpoint.clone(), why)),
            }
        }
        unfit.sort_by(|a, b| a.0.cmp(&b.0));
        let best = fit.iter().max_by(|a, b| self.more_caught_up(a, b)).copied();
        // Rule 4: a failing server known to be further along (it held data of this history
        // when it last answered, or the master said so) is waited for until it is down.
        let best_offset = best.map(|(endpoint, info)| self.known_offset(endpoint, Some(info)));
        let ahead = self
            .servers
            .iter()
            .filter(|s| Some(&s.endpoint) != old && self.liveness(s) == Liveness::Failing)
            .filter(|s| {
                s.last_seen
                    .as_ref()
                    .is_some_and(|seen| seen.priority > 0 && self.holds_history(seen))
            })
            .map(|s| {
                (
                    &s.endpoint,
                    self.known_offset(&s.endpoint, s.last_seen.as_ref()),
                )
            })
            .filter(|(_, offset)| best_offset.is_none_or(|best| *offset > best))
            .min_by(|a, b| a.0.cmp(b.0));
        match (best, ahead) {
            (Some((candidate, _)), Some((ahead, _))) => Takeover::Wait(Waiting::CandidateBehind {
                candidate: candidate.clone(),
                ahead: ahead.clone(),
            }),
            // Nobody answering may take over, but one that is not answering yet may.
            (None, Some(_)) => Takeover::Wait(Waiting::ServersFailing),
            (Some((chosen, info)), None) => Takeover::To(chosen, info),
            (None, None) => Takeover::Nobody(unfit),
        }
    }

    /// Whether `server` may become master in a failover (rule 3), and its probe if so.
    fn failover_fitness(&self, server: &'a ServerState) -> Result<&'a RedisInfo, Unfit> {
        let Liveness::Up(info) = self.liveness(server) else {
            return Err(Unfit::Down);
        };
        if self.is_leaving(&server.endpoint) {
            return Err(Unfit::Leaving);
        }
        if info.priority == 0 {
            return Err(Unfit::PriorityZero);
        }
        if info.role == Role::Replica && !info.synced {
            return Err(Unfit::NeverSynced);
        }
        if info.sync_in_progress {
            return Err(Unfit::Syncing);
        }
        if !self.holds_history(info) {
            return Err(Unfit::OtherHistory);
        }
        // The master's word is compared only when it is the master's last word (it is not
        // answering now): within one round the replica may be probed a moment before the
        // master's view of an acknowledgement it sent just after.
        let restarted_behind = server
            .furthest
            .as_ref()
            .is_some_and(|mark| mark.rewound_by(info));
        let masters_last_word =
            !self.published_master_up() && info.offset < self.masters_word(&server.endpoint);
        if restarted_behind || masters_last_word {
            // Offsets in one history only grow; one that went back lost data.
            return Err(Unfit::Rewound);
        }
        Ok(info)
    }

    /// Whether `server` may be handed the master in a planned switchover from `master`.
    fn handover_fitness(
        &self,
        server: &'a ServerState,
        master: &Endpoint,
    ) -> Result<&'a RedisInfo, Unfit> {
        let info = self.failover_fitness(server)?;
        let master_sees_it = self
            .server(master)
            .and_then(ServerState::info)
            .is_some_and(|m| {
                m.replicas
                    .iter()
                    .any(|r| r.endpoint == server.endpoint && r.online)
            });
        if info.role != Role::Replica || info.master.as_ref() != Some(master) || !info.link_up {
            return Err(Unfit::NotReplicating);
        }
        if !master_sees_it {
            return Err(Unfit::NotOnline);
        }
        Ok(info)
    }

    /// Whether the published history is known (a publication made by this version).
    fn knows_history(&self) -> bool {
        self.published.replid.is_some()
    }

    /// Rule 3: `info` holds data of the published master's replication history.
    fn holds_history(&self, info: &RedisInfo) -> bool {
        // The published history, the one it continues (a server still on that one holds the
        // data up to the promotion), and the published master's current one when it is the
        // same process (what its replicas carry once they synced from it).
        let mut history: Vec<&str> = Vec::new();
        history.extend(self.published.replid.as_deref());
        history.extend(self.published.replid2.as_deref());
        if let Some(master) = self.published_master_seen()
            && !history_is_provisional(master)
        {
            history.push(&master.replid);
            history.extend(master.replid2.as_deref());
        }
        if history.is_empty() {
            // Not known (an older version's publication, or a master that had no replica
            // yet): what the synced replicas of the published master carry is its history.
            let of_master = |i: &RedisInfo| {
                i.role == Role::Replica
                    && i.synced
                    && i.master.is_some()
                    && i.master == self.published.master
            };
            if of_master(info) {
                return true;
            }
            history.extend(
                self.up()
                    .filter(|(_, i)| of_master(i))
                    .map(|(_, i)| i.replid.as_str()),
            );
            if history.is_empty() {
                return false;
            }
        }
        match info.role {
            Role::Replica => {
                info.synced
                    && (history.contains(&info.replid.as_str())
                        || info
                            .replid2
                            .as_deref()
                            .is_some_and(|r| history.contains(&r)))
            }
            Role::Master => {
                self.published.run_id.as_deref() == Some(info.run_id.as_str())
                    || history.contains(&info.replid.as_str())
                    || info
                        .replid2
                        .as_deref()
                        .is_some_and(|r| history.contains(&r))
            }
        }
    }

    /// The published master's last answer, if it certainly came from the published process
    /// (its run_id is known and the same).
    fn published_master_seen(&self) -> Option<&'a RedisInfo> {
        let master = self.published.master.as_ref()?;
        let seen = self.server(master)?.last_seen.as_ref()?;
        let same = self.published.run_id.as_deref() == Some(seen.run_id.as_str());
        (same && seen.role == Role::Master).then_some(seen)
    }

    /// The furthest offset `endpoint` is known to hold: its own word, or the published
    /// master's last word on what it acknowledged.
    fn known_offset(&self, endpoint: &Endpoint, info: Option<&RedisInfo>) -> u64 {
        let own = info.map_or(0, |i| i.offset);
        own.max(self.masters_word(endpoint))
    }

    fn published_master_up(&self) -> bool {
        self.published
            .master
            .as_ref()
            .is_some_and(|m| matches!(self.liveness_of(m), Liveness::Up(_)))
    }

    /// What the published master last said `endpoint` acknowledged (0 when it said nothing).
    fn masters_word(&self, endpoint: &Endpoint) -> u64 {
        self.published_master_seen()
            .and_then(|m| m.replicas.iter().find(|r| &r.endpoint == endpoint))
            .map_or(0, |r| r.offset)
    }

    /// `Greater` when `a` is the better candidate for master: further along, then already a
    /// master (nothing to promote, nothing to resync), then lower priority value (Redis's
    /// convention), then the lower address.
    fn more_caught_up(&self, a: &(&Endpoint, &RedisInfo), b: &(&Endpoint, &RedisInfo)) -> Ordering {
        self.known_offset(a.0, Some(a.1))
            .cmp(&self.known_offset(b.0, Some(b.1)))
            .then((a.1.role == Role::Master).cmp(&(b.1.role == Role::Master)))
            .then(b.1.priority.cmp(&a.1.priority))
            .then(b.0.cmp(a.0))
    }

    /// When the published data is gone from the group: the server with the most data left
    /// (keys, then offset), master or replica, that may become master. Existing masters are
    /// not preferred here: a replica may hold an older part of the lost history, the best
    /// that is left.
    fn most_data_left(&self) -> Option<(&'a Endpoint, &'a RedisInfo)> {
        self.up()
            .filter(|(endpoint, info)| {
                !self.is_leaving(endpoint)
                    && info.priority > 0
                    && !info.sync_in_progress
                    && (info.role == Role::Master || info.synced)
            })
            .max_by(more_data)
    }

    /// The published data is gone from the whole group: every member answers and none holds
    /// it (not even one that may not be promoted). Only then may other data be made the
    /// master's: while a holder exists or a member is away, the pair waits.
    fn history_is_gone(&self) -> bool {
        self.servers
            .iter()
            .all(|s| matches!(self.liveness(s), Liveness::Up(_)))
            && !self.up().any(|(_, info)| self.holds_history(info))
    }

    fn unfit_all(&self) -> Vec<(Endpoint, Unfit)> {
        let mut unfit: Vec<_> = self
            .servers
            .iter()
            .filter_map(|s| {
                self.failover_fitness(s)
                    .err()
                    .map(|why| (s.endpoint.clone(), why))
            })
            .collect();
        unfit.sort_by(|a, b| a.0.cmp(&b.0));
        unfit
    }

    /// "No master" under the next epoch, keeping the name of the data that is waited for.
    fn no_master(&self) -> Published {
        Published {
            epoch: self.published.epoch + 1,
            master: None,
            run_id: self.published.run_id.clone(),
            replid: self.published.replid.clone(),
            replid2: self.published.replid2.clone(),
        }
    }

    /// Makes `chosen` the master under the next epoch: promote it if it is a replica, publish
    /// it with its run_id and history, and repoint everyone else at it. A promotion starts a
    /// new history: the runner publishes the `replid` the promoted server reports after it.
    fn make_master(&self, chosen: &Endpoint, info: &RedisInfo, reason: Reason) -> Plan {
        Plan {
            promote: (info.role == Role::Replica).then(|| chosen.clone()),
            fence: self.fence(chosen, info),
            publish: Some((
                Published {
                    epoch: self.published.epoch + 1,
                    master: Some(chosen.clone()),
                    run_id: Some(info.run_id.clone()),
                    replid: (!history_is_provisional(info)).then(|| info.replid.clone()),
                    replid2: info.replid2.clone(),
                },
                reason,
            )),
            replicate: self.replicas_to_repoint(chosen),
            switch_over: None,
            waiting: None,
            reread: false,
        }
    }

    fn is_leaving(&self, endpoint: &Endpoint) -> bool {
        self.server(endpoint).is_some_and(|s| s.leaving)
    }

    fn fence(&self, master: &Endpoint, info: &RedisInfo) -> Option<(Endpoint, MinReplicas)> {
        fence_for(info, self.policy).map(|fence| (master.clone(), fence))
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

/// The fence a server that is (or is about to be made) the master should have now (rule 7),
/// if it differs from what it has. Nothing when the fence is not managed or could not be
/// read. For a replica about to be promoted it is "off": it has no replicas yet, and a fence
/// left from a time it was master would refuse every write until one attached.
pub fn fence_for(info: &RedisInfo, policy: &Policy) -> Option<MinReplicas> {
    let current = info.min_replicas?;
    let wanted = match policy.fencing {
        Fencing::Unmanaged => return None,
        Fencing::Off => MinReplicas {
            to_write: 0,
            ..current
        },
        Fencing::On { max_lag_secs } => MinReplicas {
            to_write: u32::from(has_replica_in_sync(info, max_lag_secs)),
            max_lag_secs,
        },
    };
    (wanted != current).then_some(wanted)
}

/// Rule 7, by the master's own view: a replica it streams to acknowledged within `max_lag`.
/// (A replica's `master_link_status` stays up for `repl-timeout` after a silent cut.) A
/// replica's probe has no replicas of its own, so a promoted replica starts unfenced.
fn has_replica_in_sync(master: &RedisInfo, max_lag_secs: u32) -> bool {
    master.role == Role::Master
        && master
            .replicas
            .iter()
            .any(|r| r.online && r.lag_secs <= u64::from(max_lag_secs))
}

/// A master that never had a replica has no replication backlog, and Redis gives it a new
/// `master_replid` (dropping the old one) when its first replica attaches: its history is
/// not yet the name its replicas will carry, so it is published as not known (the stricter
/// rule applies) until it is refreshed.
pub fn history_is_provisional(info: &RedisInfo) -> bool {
    info.role == Role::Master && info.offset == 0 && info.replicas.is_empty()
}

/// A replica may be promoted when it is allowed to (priority > 0) and holds data it got from
/// a master.
pub fn is_promotable(info: &RedisInfo) -> bool {
    info.role == Role::Replica && info.priority > 0 && info.synced
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
