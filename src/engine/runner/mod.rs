//! The engine loop: probe every server each `probe_interval` (and at once when a watched
//! connection drops or the members change), decide, execute the plan, publish, and keep
//! status and metrics current. It is the single writer of the topology; planned switchovers
//! run inside it, so they never race a failover.
//!
//! ```text
//!  tick / watch lost / members changed / down_after reached
//!    → observe (probe all, remember each server's last answer)
//!    → decide(servers, publication, policy, now)            (pure: engine::decide)
//!    → execute: [read back] | retract → promote → fence → publish → repoint → hand over
//!    → status, metrics
//! ```
//!
//! What differs between local mode and the controller comes in from outside: the members
//! (fixed, or following the pods), what is already published (nothing, or the RedisPair's
//! annotation), and the [`Publisher`] that makes a decision visible and says whether the
//! engine may act at all (checked right before every command that changes the topology).
//! Redis itself is reached through [`RedisOps`]: the real [`Connector`], or the simulation's
//! model.
//!
//! Layout: `handle` (configuration, members, the handle and its requests), `switchover` (the
//! planned hand-over protocol), `status` (what `/status` shows, the plan and the waits in
//! words), `watch` (the watched connections).

mod handle;
mod status;
mod switchover;
mod watch;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch as channel};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use handle::Request;
pub use handle::{EngineConfig, EngineHandle, Member, SwitchoverError};
pub use status::describe_waiting;
pub use status::{FailoverRecord, Health, ServerStatus, Status};
use status::{blocked_label, describe_plan};
use watch::Watchers;

use super::decide::{Fencing, Foreign, Publication, decide, is_down, judge_foreign};
use super::model::{
    Endpoint, FailureKind, Furthest, MinReplicas, Plan, Probe, Published, Reason, RedisInfo, Role,
    ServerState, Waiting,
};
use super::ops::RedisOps;
use super::publish::{EngineEvent, PublishError, Publisher};
use super::redis_io::{Connector, Observation, RedisCallError};
use crate::metrics::{Command, CommandLabels, EngineMetrics, Outcome, ReasonLabel, ServerLabel};

struct Tracked {
    member: Member,
    /// False until the first probe has answered or failed.
    probed: bool,
    /// Engine time (at the start of its round) of the last probe that answered.
    last_answer: Option<Duration>,
    probe: Probe,
    /// The last answer, kept while the server fails (see `ServerState::last_seen`).
    last_seen: Option<RedisInfo>,
    /// See `ServerState::furthest`.
    furthest: Option<Furthest>,
    error: Option<String>,
    warnings: Vec<String>,
}

impl Tracked {
    fn new(member: Member, now: Duration) -> Self {
        Self {
            member,
            probed: false,
            last_answer: None,
            // Nothing is known before the first probe: fail-safe as "timing out since now",
            // which the decision treats as "wait", never as "down".
            probe: Probe::Failed {
                kind: FailureKind::Timeout,
                since: now,
            },
            last_seen: None,
            furthest: None,
            error: Some("not probed yet".into()),
            warnings: Vec::new(),
        }
    }

    fn probe_info(&self) -> Option<&RedisInfo> {
        match &self.probe {
            Probe::Up(info) => Some(info),
            Probe::Failed { .. } => None,
        }
    }
}

pub struct Engine<P, R = Connector> {
    config: EngineConfig,
    redis: R,
    metrics: EngineMetrics,
    publisher: P,
    servers: Vec<Tracked>,
    published: channel::Sender<Published>,
    status: channel::Sender<Status>,
    requests: mpsc::Receiver<Request>,
    members: channel::Receiver<Vec<Member>>,
    started: Instant,
    last_failover: Option<FailoverRecord>,
    waiting: Option<Waiting>,
    /// A leaving master's hand-over failed: the next try waits until then, since each one
    /// pauses writes for up to `switchover_timeout`.
    handover_retry_at: Option<Instant>,
    /// While paused: what the engine would do now, if anything.
    would_do: Option<String>,
    /// A publication whose answer was lost, and why it was made: until it is read back the
    /// engine does not know what is published and takes no step (decide's rule 0).
    unsettled: Option<(Published, Reason)>,
}

impl<P: Publisher, R: RedisOps> Engine<P, R> {
    pub fn new(
        config: EngineConfig,
        redis: R,
        metrics: EngineMetrics,
        publisher: P,
    ) -> (Self, EngineHandle) {
        let (published_tx, published_rx) = channel::channel(config.published.clone());
        let (status_tx, status_rx) = channel::channel(Status::default());
        let (request_tx, request_rx) = mpsc::channel(8);
        let (members_tx, members_rx) = channel::channel(config.members.clone());
        let servers = config
            .members
            .iter()
            .map(|member| Tracked::new(member.clone(), Duration::ZERO))
            .collect();
        let engine = Self {
            config,
            redis,
            metrics,
            publisher,
            servers,
            published: published_tx,
            status: status_tx,
            requests: request_rx,
            members: members_rx,
            started: Instant::now(),
            last_failover: None,
            waiting: None,
            handover_retry_at: None,
            would_do: None,
            unsettled: None,
        };
        engine.refresh_status();
        let handle = EngineHandle {
            published: published_rx,
            status: status_rx,
            requests: request_tx,
            members: std::sync::Arc::new(members_tx),
        };
        (engine, handle)
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Probes every server once and returns the servers that rejected our credentials: a
    /// configuration error the caller reports before it starts serving.
    pub async fn first_probe(&mut self) -> Vec<(Endpoint, RedisCallError)> {
        let failures = self.observe().await;
        self.refresh_status();
        failures
            .into_iter()
            .filter(|(_, e)| e.kind == FailureKind::AuthFailed)
            .collect()
    }

    /// Runs until `shutdown` is cancelled. An action under way (a promotion, a switchover) is
    /// finished first; losing the right to act (`Publisher::may_act`) stops it between two
    /// commands instead.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (lost_tx, mut lost_rx) = mpsc::channel(64);
        let mut watchers = Watchers {
            redis: self.redis.clone(),
            retry_every: self.config.probe_interval,
            lost: lost_tx,
            shutdown: shutdown.child_token(),
            running: HashMap::new(),
        };
        watchers.follow(self.servers.iter().map(|t| &t.member.endpoint));
        let mut ticker = tokio::time::interval(self.config.probe_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // A server that is failing turns down at a known instant; a round right then
            // saves up to a probe interval on a hung master.
            let down_at = self.next_down_at();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(request) = self.requests.recv() => self.serve(request).await,
                Ok(()) = self.members.changed() => {
                    self.update_members();
                    watchers.follow(self.servers.iter().map(|t| &t.member.endpoint));
                    self.round().await;
                    ticker.reset();
                }
                Some(endpoint) = lost_rx.recv() => {
                    debug!(server = %endpoint, "watched connection closed; probing now");
                    self.round().await;
                    ticker.reset();
                }
                () = sleep_until_some(down_at) => {
                    self.round().await;
                    ticker.reset();
                }
                _ = ticker.tick() => self.round().await,
            }
        }
        watchers.shutdown.cancel();
        info!("engine stopped");
    }

    /// Takes the latest members: a server that stays keeps what the engine knows of it.
    fn update_members(&mut self) {
        let members = self.members.borrow_and_update().clone();
        let now = self.now();
        let mut kept: Vec<Tracked> = Vec::with_capacity(members.len());
        for member in members {
            match self
                .servers
                .iter()
                .position(|t| t.member.endpoint == member.endpoint)
            {
                Some(index) => {
                    let mut tracked = self.servers.swap_remove(index);
                    if member.leaving && !tracked.member.leaving {
                        info!(server = %member.endpoint, "member is leaving");
                    }
                    tracked.member = member;
                    kept.push(tracked);
                }
                None => {
                    info!(server = %member.endpoint, "member added");
                    kept.push(Tracked::new(member, now));
                }
            }
        }
        for gone in &self.servers {
            info!(server = %gone.member.endpoint, "member removed");
        }
        self.servers = kept;
    }

    /// When the earliest failing (not yet down) server becomes down, if any.
    fn next_down_at(&self) -> Option<Instant> {
        let now = self.now();
        self.servers
            .iter()
            .filter_map(|t| match t.probe {
                Probe::Failed { kind, since }
                    if kind != FailureKind::Refused && kind != FailureKind::MaxClients =>
                {
                    Some(since + self.config.policy.down_after)
                }
                _ => None,
            })
            .filter(|at| *at > now)
            .min()
            .map(|at| self.started + at)
    }

    async fn round(&mut self) {
        self.observe().await;
        let plan = decide(
            &self.states(),
            &self.publication(),
            &self.config.policy,
            self.now(),
        );
        self.note_waiting(&plan);
        if self.config.paused {
            self.note_paused(&plan);
        } else {
            self.execute(plan).await;
        }
        self.refresh_status();
    }

    fn publication(&self) -> Publication {
        match self.unsettled {
            Some(_) => Publication::Unsettled,
            None => Publication::Settled(self.published.borrow().clone()),
        }
    }

    /// Probes every server concurrently and records what it saw; returns the failures.
    async fn observe(&mut self) -> Vec<(Endpoint, RedisCallError)> {
        let now = self.now();
        let members: Vec<&Member> = self.servers.iter().map(|t| &t.member).collect();
        let known = |host: &str, port: u16| known_member(&members, host, port);
        let read_fence = self.config.policy.fencing != Fencing::Unmanaged;
        let results = futures_util::future::join_all(
            self.servers
                .iter()
                .map(|t| self.redis.probe(&t.member.endpoint, &known, read_fence)),
        )
        .await;
        let mut failures = Vec::new();
        for (tracked, result) in self.servers.iter_mut().zip(results) {
            let endpoint = &tracked.member.endpoint;
            let first = !tracked.probed;
            tracked.probed = true;
            match result {
                Ok(observation) => {
                    if matches!(tracked.probe, Probe::Failed { .. }) && !first {
                        info!(server = %endpoint, "server answers again");
                    }
                    tracked.last_seen = Some(observation.info.clone());
                    let info = &observation.info;
                    // The same process moves freely (a full resync may take it back); a new
                    // one replaces the mark only once it has caught up with it.
                    let keep = tracked
                        .furthest
                        .as_ref()
                        .is_some_and(|mark| mark.rewound_by(info));
                    if !keep {
                        tracked.furthest = Some(Furthest::of(info));
                    }
                    tracked.probe = Probe::Up(observation.info);
                    tracked.last_answer = Some(now);
                    for warning in &observation.warnings {
                        if !tracked.warnings.contains(warning) {
                            warn!(server = %endpoint, "{warning}");
                        }
                    }
                    tracked.error = None;
                    tracked.warnings = observation.warnings;
                }
                Err(error) => {
                    let since = match tracked.probe {
                        Probe::Failed { since, .. } => since,
                        Probe::Up(_) => tracked.last_answer.unwrap_or(now),
                    };
                    if first
                        || !matches!(tracked.probe, Probe::Failed { kind, .. } if kind == error.kind)
                    {
                        warn!(server = %endpoint, error = %error, "probe failed");
                    }
                    tracked.probe = Probe::Failed {
                        kind: error.kind,
                        since,
                    };
                    tracked.error = Some(match error.kind {
                        FailureKind::MaxClients => format!(
                            "{error}: it refuses new connections (maxclients); redis-pair cannot \
                             manage it and will not fail it over while it is alive; raise \
                             maxclients or find the client that holds too many connections"
                        ),
                        _ => error.to_string(),
                    });
                    tracked.warnings.clear();
                    failures.push((endpoint.clone(), error));
                }
            }
        }
        failures
    }

    fn states(&self) -> Vec<ServerState> {
        self.servers
            .iter()
            .map(|t| ServerState {
                endpoint: t.member.endpoint.clone(),
                probe: t.probe.clone(),
                leaving: t.member.leaving,
                last_seen: t.last_seen.clone(),
                furthest: t.furthest.clone(),
            })
            .collect()
    }

    fn note_waiting(&mut self, plan: &Plan) {
        if plan.waiting != self.waiting {
            match &plan.waiting {
                Some(waiting) => {
                    warn!("{}", describe_waiting(waiting));
                    if let Some(label) = blocked_label(waiting) {
                        self.metrics
                            .blocked
                            .get_or_create(&ReasonLabel { reason: label })
                            .inc();
                        self.publisher.record(EngineEvent::Waiting(waiting.clone()));
                    }
                }
                None => debug!("no longer waiting"),
            }
            self.waiting = plan.waiting.clone();
        }
    }

    /// What a paused engine would do, for `/status` and the RedisPair's status.
    fn note_paused(&mut self, plan: &Plan) {
        let would = (!plan.is_noop()).then(|| describe_plan(plan));
        if would != self.would_do {
            if let Some(would) = &would {
                info!("paused: would {would}");
            }
            self.would_do = would;
        }
    }

    async fn execute(&mut self, plan: Plan) {
        if plan.reread {
            self.reread().await;
            return;
        }
        if plan.is_noop() {
            return;
        }
        if !self.publisher.may_act() {
            debug!("not acting: this engine may not act now (no lease)");
            return;
        }
        let current = self.published.borrow().clone();
        let new_master = plan
            .publish
            .as_ref()
            .map(|(next, _)| next.master.as_ref())
            .or(plan.promote.as_ref().map(Some))
            .filter(|next| *next != current.master.as_ref());
        if let (Some(_), Some(old)) = (new_master, &current.master)
            && !self.retract(old).await
        {
            return;
        }
        let why = plan.publish.as_ref().map_or(
            "the published master reports role replica",
            |(_, reason)| reason.as_str(),
        );
        // The retraction may have taken seconds: the server chosen must still be the process,
        // in the history and out of any sync, that the decision saw.
        let chosen = plan.promote.clone().or(new_master.flatten().cloned());
        if let Some(chosen) = &chosen
            && !self.still_as_decided(chosen).await
        {
            return;
        }
        let mut publish = plan.publish;
        if let Some(server) = &plan.promote {
            // Checked right before the command: the retraction may have taken its deadline.
            if !self.publisher.may_act() {
                return;
            }
            let result = self.redis.promote(server).await;
            self.count(Command::Promote, &result);
            match result {
                Ok(()) => {
                    info!(server = %server, reason = why, "promoted to master (REPLICAOF NO ONE)")
                }
                Err(error) => {
                    // Never publish a server that is not master; the next round tries again.
                    warn!(server = %server, error = %error, "promotion failed; will retry");
                    return;
                }
            }
            if let Some((next, _)) = publish
                .as_mut()
                .filter(|(n, _)| n.master.as_ref() == Some(server))
                && let Some((replid, replid2)) = self.history_after_promotion(server).await
            {
                // Promotion started a new history; the one it continues is its replid2.
                next.replid = Some(replid);
                next.replid2 = replid2;
            }
        }
        if let Some((server, fence)) = plan.fence
            && self.publisher.may_act()
        {
            // A failure is not a reason to hold the publication back: the next round sets the
            // fence again, and an unfenced or over-fenced master for a round beats none.
            self.set_fence(&server, fence).await;
        }
        if let Some((next, reason)) = publish
            && !self.publish(next, reason).await
        {
            // Nothing is repointed at a master that is not published.
            return;
        }
        // The publication may have taken seconds: nothing is repointed at a master that
        // restarted meanwhile (its replicas would resync to whatever it holds now).
        if let Some(chosen) = &chosen {
            if !self.same_process(chosen).await {
                return;
            }
            // A switchover abandoned after its publication leaves the old master paused
            // until it is published again: now.
            if self.publisher.may_act() {
                self.unpause(chosen).await;
            }
        }
        for (server, master) in &plan.replicate {
            if !self.publisher.may_act() {
                return;
            }
            let was_master = self
                .info_of(server)
                .is_some_and(|info| info.role == Role::Master);
            let result = self.redis.replicate(server, master).await;
            self.count(Command::Replicate, &result);
            match result {
                Ok(()) => {
                    info!(
                        server = %server,
                        master = %master,
                        reason = "answers but does not replicate from the published master",
                        "made a replica (REPLICAOF)"
                    );
                    self.publisher.record(EngineEvent::Repointed {
                        server: server.clone(),
                        master: master.clone(),
                        was_master,
                    });
                }
                Err(error) => {
                    warn!(server = %server, master = %master, error = %error, "REPLICAOF failed; will retry")
                }
            }
        }
        if let Some(target) = plan.switch_over {
            self.hand_over(target).await;
        }
    }

    /// Whether `server` is still what the round's decision saw: the same process, the same
    /// history and role, not in a full sync. A restart or a resync between the decision and
    /// the command would otherwise promote or publish data nobody decided on.
    async fn still_as_decided(&self, server: &Endpoint) -> bool {
        let Some(decided) = self.info_of(server) else {
            return false;
        };
        match self.probe_one(server).await {
            Ok(now)
                if now.info.run_id == decided.run_id
                    && now.info.replid == decided.replid
                    && now.info.role == decided.role
                    && !now.info.sync_in_progress =>
            {
                true
            }
            Ok(_) => {
                warn!(server = %server, "changed since the decision (restarted or resynced); deciding again");
                false
            }
            Err(error) => {
                warn!(server = %server, error = %error, "cannot confirm the server chosen; deciding again");
                false
            }
        }
    }

    /// What the last probe of `server` saw, if it answered.
    fn info_of(&self, server: &Endpoint) -> Option<&RedisInfo> {
        self.servers
            .iter()
            .find(|t| &t.member.endpoint == server)
            .and_then(Tracked::probe_info)
    }

    /// One probe of one member, outside a round (no fence read).
    async fn probe_one(&self, server: &Endpoint) -> Result<Observation, RedisCallError> {
        let members: Vec<&Member> = self.servers.iter().map(|t| &t.member).collect();
        let known = |host: &str, port: u16| known_member(&members, host, port);
        self.redis.probe(server, &known, false).await
    }

    /// Whether `server` still runs the process the round's decision saw (same run_id).
    async fn same_process(&self, server: &Endpoint) -> bool {
        let decided = self.info_of(server).map(|info| info.run_id.clone());
        match self.probe_one(server).await {
            Ok(now) if Some(&now.info.run_id) == decided.as_ref() => true,
            Ok(_) => {
                warn!(server = %server, "restarted since the decision; not repointing anything at it");
                false
            }
            Err(error) => {
                warn!(server = %server, error = %error, "cannot confirm the new master; repointing next round");
                false
            }
        }
    }

    /// A promotion starts a new replication history: the one published is what the promoted
    /// server reports now (its replicas will carry it). `None` if it cannot be read.
    async fn history_after_promotion(&self, server: &Endpoint) -> Option<(String, Option<String>)> {
        match self.probe_one(server).await {
            Ok(observation)
                if observation.info.role == Role::Master
                    && !super::decide::history_is_provisional(&observation.info) =>
            {
                Some((observation.info.replid, observation.info.replid2))
            }
            Ok(_) => None,
            Err(error) => {
                debug!(server = %server, error = %error, "reading the history after promotion failed");
                None
            }
        }
    }

    /// Asks the publisher to take the published master `old` out of service before it is
    /// replaced; `false` (and the change waits for the next round) when that failed.
    async fn retract(&self, old: &Endpoint) -> bool {
        match self.publisher.retract(old).await {
            Ok(()) => true,
            Err(error) => {
                warn!(master = %old, error = %error, "cannot retract the old master before replacing it; will retry");
                false
            }
        }
    }

    async fn set_fence(&self, server: &Endpoint, fence: MinReplicas) {
        let result = self.redis.set_fence(server, fence).await;
        self.count(Command::SetFence, &result);
        match result {
            Ok(()) => info!(
                server = %server,
                min_replicas_to_write = fence.to_write,
                min_replicas_max_lag = fence.max_lag_secs,
                "write fence set"
            ),
            Err(error) => {
                warn!(server = %server, error = %error, "setting the write fence failed; will retry")
            }
        }
    }

    /// The published master is leaving: a planned switchover to `target`, so nothing
    /// acknowledged is lost. A failure waits `switchover_timeout` before the next try.
    async fn hand_over(&mut self, target: Endpoint) {
        if self.handover_retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match self.switchover(Some(target), Reason::MasterLeaving).await {
            Ok(_) => self.handover_retry_at = None,
            Err(error) => {
                warn!(error = %error, "handing over the leaving master failed; will retry");
                self.handover_retry_at = Some(Instant::now() + self.config.switchover_timeout);
            }
        }
    }

    fn count<T>(&self, command: Command, result: &Result<T, RedisCallError>) {
        let outcome = match result {
            Ok(_) => Outcome::Success,
            Err(e) if e.kind == FailureKind::Timeout => Outcome::Timeout,
            Err(_) => Outcome::Failure,
        };
        self.metrics
            .commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
    }

    /// Publishes `next` through the publisher; only if that succeeded is it what the engine
    /// (and a proxy in this process) follows. `false` when it was not published (or may have
    /// been: then the engine is unsettled until it reads it back).
    async fn publish(&mut self, next: Published, reason: Reason) -> bool {
        self.publish_outcome(next, reason).await.is_ok()
    }

    async fn publish_outcome(
        &mut self,
        next: Published,
        reason: Reason,
    ) -> Result<(), PublishError> {
        let current = self.published.borrow().clone();
        self.publish_over(current, next, reason, true).await
    }

    /// Publishes `next` in place of `current` (what the publisher's conditional write tests).
    /// A publication found newer than `current` is judged (`judge_foreign`) when `judge` is
    /// set, so a stray write is corrected rather than followed. A lost answer leaves the
    /// engine unsettled.
    async fn publish_over(
        &mut self,
        current: Published,
        next: Published,
        reason: Reason,
        judge: bool,
    ) -> Result<(), PublishError> {
        if !self.publisher.may_act() {
            return Err(PublishError::Failed("this engine may not act now".into()));
        }
        match self.publisher.publish(&current, &next, reason).await {
            Ok(()) if reason == Reason::Refreshed => {
                debug!(replid = ?next.replid, "published the master's renamed history");
                self.published.send_replace(next);
                Ok(())
            }
            Ok(()) => {
                self.published_as(current.master, next, reason);
                Ok(())
            }
            Err(PublishError::Superseded(newer)) => {
                warn!(
                    epoch = next.epoch,
                    newer = newer.epoch,
                    "publishing failed: superseded"
                );
                if judge {
                    Box::pin(self.foreign(newer.clone())).await;
                }
                Err(PublishError::Superseded(newer))
            }
            Err(PublishError::Unknown(why)) => {
                warn!(epoch = next.epoch, error = %why, "publishing got no answer; reading it back before anything else");
                self.unsettled = Some((next, reason));
                Err(PublishError::Unknown(why))
            }
            Err(error) => {
                warn!(epoch = next.epoch, error = %error, "publishing failed; will retry");
                Err(error)
            }
        }
    }

    /// `next` is published (in place of a publication whose master was `previous`): follow
    /// it, count it, tell people.
    fn published_as(&mut self, previous: Option<Endpoint>, next: Published, reason: Reason) {
        let show = |e: &Option<Endpoint>| {
            e.as_ref()
                .map_or_else(|| "none".to_owned(), Endpoint::to_string)
        };
        info!(
            epoch = next.epoch,
            master = %show(&next.master),
            previous = %show(&previous),
            reason = reason.as_str(),
            "published master"
        );
        self.metrics
            .failovers
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        if reason != Reason::Initial {
            self.last_failover = Some(FailoverRecord {
                from: previous.clone(),
                to: next.master.clone(),
                reason,
                epoch: next.epoch,
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
        }
        self.publisher.record(EngineEvent::Published {
            from: previous,
            to: next.master.clone(),
            epoch: next.epoch,
            reason,
        });
        self.published.send_replace(next);
        self.refresh_status();
    }

    /// Reads the publication back after a lost answer (decide's rule 0): our own write that
    /// was applied is followed as if it had been answered; another is judged; one that was
    /// not applied changes nothing. `false` while it cannot be read (the next round tries
    /// again; nothing is done meanwhile).
    async fn reread(&mut self) -> bool {
        let read = match self.publisher.read().await {
            Ok(read) => read,
            Err(error) => {
                warn!(error = %error, "reading the publication back failed; still not acting");
                return false;
            }
        };
        let Some((attempted, reason)) = self.unsettled.take() else {
            return true;
        };
        let own = self.published.borrow().clone();
        if (read.epoch, &read.master) == (attempted.epoch, &attempted.master) {
            info!(
                epoch = read.epoch,
                "the publication whose answer was lost was applied"
            );
            self.published_as(own.master, attempted, reason);
        } else if read.epoch > own.epoch {
            Box::pin(self.foreign(read)).await;
        } else {
            info!(
                epoch = attempted.epoch,
                "the publication whose answer was lost was not applied"
            );
        }
        true
    }

    /// A publication that is not the engine's own: ignored, followed or corrected.
    async fn foreign(&mut self, seen: Published) {
        if self.unsettled.is_some() {
            // It may be our own lost write: only the authority can say.
            self.reread().await;
            return;
        }
        let own = self.published.borrow().clone();
        if judge_foreign(&self.states(), &own, &seen) == Foreign::Ignore {
            return;
        }
        // Judged on what the servers say now: a probe from before the engine's last REPLICAOF
        // would show a replica as the master it was, and following a publication of it would
        // make the engine promote it and demote the real master.
        self.observe().await;
        match judge_foreign(&self.states(), &own, &seen) {
            Foreign::Ignore => {}
            Foreign::Adopt => {
                warn!(
                    epoch = seen.epoch,
                    master = ?seen.master.as_ref().map(Endpoint::to_string),
                    "a newer publication names an answering master; following it"
                );
                let adopted = self.with_identity(seen);
                self.published.send_replace(adopted);
                self.refresh_status();
            }
            Foreign::Correct(next) => {
                warn!(
                    epoch = seen.epoch,
                    named = ?seen.master.as_ref().map(Endpoint::to_string),
                    "a publication not made by redis-pair names no answering master; correcting it"
                );
                let _ = self
                    .publish_over(seen, next, Reason::Corrected, false)
                    .await;
            }
        }
    }

    /// A publication written elsewhere may not name the master's process and history: fill
    /// them in from its probe, so that its restart is recognised as one.
    fn with_identity(&self, mut published: Published) -> Published {
        let info = published
            .master
            .as_ref()
            .and_then(|master| self.info_of(master));
        if let Some(info) = info {
            published.run_id.get_or_insert_with(|| info.run_id.clone());
            published.replid.get_or_insert_with(|| info.replid.clone());
        }
        published
    }

    fn refresh_status(&self) {
        let now = self.now();
        let published = self.published.borrow().clone();
        let master_offset = published
            .master
            .as_ref()
            .and_then(|m| self.info_of(m).map(|info| info.offset));
        let servers = self
            .servers
            .iter()
            .map(|t| {
                let info = t.probe_info();
                let health = match &t.probe {
                    Probe::Up(_) => Health::Up,
                    failed if is_down(failed, &self.config.policy, now) => Health::Down,
                    Probe::Failed { .. } => Health::Failing,
                };
                let is_replica = info.is_some_and(|i| i.role == Role::Replica);
                ServerStatus {
                    address: t.member.endpoint.clone(),
                    health,
                    role: info.map(|i| i.role),
                    master: info.and_then(|i| i.master.clone()),
                    link_up: info.filter(|_| is_replica).map(|i| i.link_up),
                    offset: info.map(|i| i.offset),
                    lag_bytes: info
                        .filter(|_| is_replica)
                        .and_then(|i| master_offset.map(|m| m.saturating_sub(i.offset))),
                    priority: info.map(|i| i.priority),
                    keys: info.map(|i| i.keys),
                    run_id: info.map(|i| i.run_id.clone()),
                    failure: match &t.probe {
                        Probe::Failed { kind, .. } if t.probed => Some(*kind),
                        _ => None,
                    },
                    error: t.error.clone(),
                    warnings: t.warnings.clone(),
                }
            })
            .collect::<Vec<_>>();
        self.update_metrics(&published, &servers);
        let waiting = if self.config.paused {
            let mut said = "paused (observing only)".to_owned();
            if let Some(would) = &self.would_do {
                said.push_str(&format!("; would {would}"));
            }
            if let Some(waiting) = &self.waiting {
                said.push_str(&format!("; {}", describe_waiting(waiting)));
            }
            Some(said)
        } else {
            self.waiting.as_ref().map(describe_waiting)
        };
        self.status.send_replace(Status {
            master: published.master,
            epoch: published.epoch,
            servers,
            last_failover: self.last_failover.clone(),
            waiting,
            paused: self.config.paused,
        });
    }

    fn update_metrics(&self, published: &Published, servers: &[ServerStatus]) {
        let Some(m) = &self.metrics.group else {
            return;
        };
        m.epoch
            .set(i64::try_from(published.epoch).unwrap_or(i64::MAX));
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for s in servers {
            let label = ServerLabel {
                server: s.address.to_string(),
            };
            m.master
                .get_or_create(&label)
                .set(i64::from(published.master.as_ref() == Some(&s.address)));
            m.server_up
                .get_or_create(&label)
                .set(i64::from(s.health == Health::Up));
            m.server_is_master
                .get_or_create(&label)
                .set(i64::from(s.role == Some(Role::Master)));
            m.server_offset
                .get_or_create(&label)
                .set(gauge(s.offset.unwrap_or(0)));
            m.server_lag_bytes
                .get_or_create(&label)
                .set(gauge(s.lag_bytes.unwrap_or(0)));
        }
    }

    async fn serve(&mut self, request: Request) {
        match request {
            Request::Switchover { target, reply } => {
                let result = self.switchover(target, Reason::Switchover).await;
                if let Err(error) = &result {
                    warn!(error = %error, "switchover refused or failed");
                }
                self.refresh_status();
                // The requester may have given up waiting; the switchover stands regardless.
                let _ = reply.send(result);
            }
            Request::Seen(publication) => self.foreign(publication).await,
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Maps a replica's `master_host:master_port` to the member it names, by name or by address.
fn known_member(members: &[&Member], host: &str, port: u16) -> Option<Endpoint> {
    let ip = host.parse::<std::net::IpAddr>().ok();
    members
        .iter()
        .find(|m| {
            m.endpoint.port() == port
                && (m.endpoint.host() == host
                    || ip.is_some_and(|ip| m.addrs.iter().any(|a| a.ip() == ip)))
        })
        .map(|m| m.endpoint.clone())
}
