//! The engine loop: probe every server each `probe_interval` (and at once when a watched
//! connection drops or the members change), decide, execute the plan, publish, and keep
//! status and metrics current. It is the single writer of the topology; planned switchovers
//! run inside it, so they never race a failover.
//!
//! What differs between local mode and the controller comes in from outside: the members
//! (fixed, or following the pods), what is already published (nothing, or the RedisPair's
//! annotation), and the [`Publisher`] that makes a decision visible and says whether the
//! engine may act at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decide::{Fencing, Foreign, Policy, decide, is_down, judge_foreign};
use super::model::{
    Endpoint, FailureKind, MinReplicas, Plan, Probe, Published, Reason, Role, ServerState, Waiting,
};
use super::publish::{EngineEvent, PublishError, Publisher};
use super::redis_io::{Connector, RedisCallError};
use crate::metrics::{Command, CommandLabels, EngineMetrics, Outcome, ReasonLabel, ServerLabel};

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

#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    pub address: Endpoint,
    pub health: &'static str,
    pub role: Option<Role>,
    pub master: Option<Endpoint>,
    pub link_up: Option<bool>,
    pub offset: Option<u64>,
    pub lag_bytes: Option<u64>,
    pub priority: Option<u32>,
    pub keys: Option<u64>,
    pub run_id: Option<String>,
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

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("no master is published, so there is nothing to switch over from")]
    NoMaster,
    #[error("{0} is not a server of this group; pick one of the configured servers")]
    UnknownTarget(Endpoint),
    #[error("the engine is paused (spec.paused); unpause it to switch over")]
    Paused,
    #[error("this controller does not hold the lease; the leader acts")]
    NotLeader,
    #[error("publishing the new master failed ({0}); the switchover was undone")]
    Publish(String),
    #[error("{target} cannot take over: {why}")]
    TargetNotReady { target: Endpoint, why: String },
    #[error(
        "no replica can take over: none is up, replicating from the master and of non-zero priority"
    )]
    NoCandidate,
    #[error("the master {master} is not healthy ({why}); a failover, not a switchover, is due")]
    MasterUnhealthy { master: Endpoint, why: String },
    #[error(
        "{target} did not catch up with the master within {timeout}; the switchover was aborted, \
         the master unpaused and it stays master"
    )]
    CatchUpTimeout { target: Endpoint, timeout: String },
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
        )
    }

    /// The HTTP status the admin endpoint answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            SwitchoverError::CatchUpTimeout { .. } => 504,
            SwitchoverError::Redis(_) => 502,
            SwitchoverError::EngineStopped | SwitchoverError::NotLeader => 503,
            SwitchoverError::Publish(_) => 502,
            _ => 409,
        }
    }
}

enum Request {
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
    requests: mpsc::Sender<Request>,
    members: std::sync::Arc<watch::Sender<Vec<Member>>>,
}

impl EngineHandle {
    /// Tells the engine what is published now where publications live (the controller reads
    /// the RedisPair's annotations): one that is not its own is judged by
    /// [`super::decide::judge_foreign`], followed or corrected.
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

struct Tracked {
    member: Member,
    /// False until the first probe has answered or failed.
    probed: bool,
    /// Engine time (at the start of its round) of the last probe that answered.
    last_answer: Option<Duration>,
    probe: Probe,
    error: Option<String>,
    warnings: Vec<String>,
}

pub struct Engine<P> {
    config: EngineConfig,
    connector: Connector,
    metrics: EngineMetrics,
    publisher: P,
    servers: Vec<Tracked>,
    published: watch::Sender<Published>,
    status: watch::Sender<Status>,
    requests: mpsc::Receiver<Request>,
    members: watch::Receiver<Vec<Member>>,
    started: Instant,
    last_failover: Option<FailoverRecord>,
    waiting: Option<Waiting>,
    /// A leaving master's hand-over failed: the next try waits until then, since each one
    /// pauses writes for up to `switchover_timeout`.
    handover_retry_at: Option<Instant>,
    /// While paused: what the engine would do now, if anything.
    would_do: Option<String>,
}

/// The subscription channel watchers hold; nothing is ever published on it.
const WATCH_CHANNEL: &str = "__redis-pair__:watch";

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
            error: Some("not probed yet".into()),
            warnings: Vec::new(),
        }
    }
}

impl<P: Publisher> Engine<P> {
    pub fn new(
        config: EngineConfig,
        connector: Connector,
        metrics: EngineMetrics,
        publisher: P,
    ) -> (Self, EngineHandle) {
        let (published_tx, published_rx) = watch::channel(config.published.clone());
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (request_tx, request_rx) = mpsc::channel(8);
        let (members_tx, members_rx) = watch::channel(config.members.clone());
        let servers = config
            .members
            .iter()
            .map(|member| Tracked::new(member.clone(), Duration::ZERO))
            .collect();
        let engine = Self {
            config,
            connector,
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
            connector: self.connector.clone(),
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
    fn next_down_at(&self) -> Option<tokio::time::Instant> {
        let now = self.now();
        self.servers
            .iter()
            .filter_map(|t| match t.probe {
                Probe::Failed { kind, since } if kind != FailureKind::Refused => {
                    Some(since + self.config.policy.down_after)
                }
                _ => None,
            })
            .filter(|at| *at > now)
            .min()
            .map(|at| tokio::time::Instant::from_std(self.started + at))
    }

    async fn round(&mut self) {
        self.observe().await;
        let plan = decide(
            &self.states(),
            &self.published.borrow(),
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

    /// Probes every server concurrently and records what it saw; returns the failures.
    async fn observe(&mut self) -> Vec<(Endpoint, RedisCallError)> {
        let now = self.now();
        let members: Vec<&Member> = self.servers.iter().map(|t| &t.member).collect();
        let known = |host: &str, port: u16| known_member(&members, host, port);
        let read_fence = self.config.policy.fencing != Fencing::Unmanaged;
        let results = join_all(
            self.servers
                .iter()
                .map(|t| self.connector.probe(&t.member.endpoint, &known, read_fence)),
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
                    tracked.error = Some(error.to_string());
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
            })
            .collect()
    }

    fn note_waiting(&mut self, plan: &Plan) {
        if plan.waiting != self.waiting {
            match &plan.waiting {
                Some(waiting) => warn!("{}", describe_waiting(waiting)),
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
        if let Some(server) = &plan.promote {
            let result = self.connector.promote(server).await;
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
        }
        if let Some((server, fence)) = plan.fence {
            // A failure is not a reason to hold the publication back: the next round sets the
            // fence again, and an unfenced or over-fenced master for a round beats none.
            self.set_fence(&server, fence).await;
        }
        if let Some((next, reason)) = plan.publish
            && !self.publish(next, reason).await
        {
            // Nothing is repointed at a master that is not published.
            return;
        }
        for (server, master) in &plan.replicate {
            if !self.publisher.may_act() {
                return;
            }
            let was_master = self
                .servers
                .iter()
                .find(|t| &t.member.endpoint == server)
                .and_then(|t| match &t.probe {
                    Probe::Up(info) => Some(info.role == Role::Master),
                    Probe::Failed { .. } => None,
                })
                .unwrap_or(false);
            let result = self.connector.replicate(server, master).await;
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
        let result = self.connector.set_fence(server, fence).await;
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

    fn count(&self, command: Command, result: &Result<(), RedisCallError>) {
        let outcome = match result {
            Ok(()) => Outcome::Success,
            Err(e) if e.kind == FailureKind::Timeout => Outcome::Timeout,
            Err(_) => Outcome::Failure,
        };
        self.metrics
            .commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
    }

    /// Publishes `next` through the publisher; only if that succeeded is it what the engine
    /// (and a proxy in this process) follows. `false` when it was not published.
    async fn publish(&mut self, next: Published, reason: Reason) -> bool {
        let current = self.published.borrow().clone();
        self.publish_over(current, next, reason, true).await
    }

    /// Publishes `next` in place of `current` (what the publisher's conditional write tests).
    /// A publication found newer than `current` is judged (`judge_foreign`) when
    /// `judge` is set, so a stray write is corrected rather than followed.
    async fn publish_over(
        &mut self,
        current: Published,
        next: Published,
        reason: Reason,
        judge: bool,
    ) -> bool {
        if !self.publisher.may_act() {
            return false;
        }
        if let Err(error) = self.publisher.publish(&current, &next, reason).await {
            warn!(epoch = next.epoch, error = %error, "publishing failed; will retry");
            if let PublishError::Superseded(newer) = error
                && judge
            {
                Box::pin(self.foreign(newer)).await;
            }
            return false;
        }
        let previous = current.master;
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
        true
    }

    /// A publication that is not the engine's own: ignored, followed or corrected.
    async fn foreign(&mut self, seen: Published) {
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
                self.published.send_replace(seen);
                self.refresh_status();
            }
            Foreign::Correct(next) => {
                warn!(
                    epoch = seen.epoch,
                    named = ?seen.master.as_ref().map(Endpoint::to_string),
                    "a publication not made by redis-pair names no answering master; correcting it"
                );
                self.publish_over(seen, next, Reason::Corrected, false)
                    .await;
            }
        }
    }

    fn refresh_status(&self) {
        let now = self.now();
        let published = self.published.borrow().clone();
        let master_offset = published.master.as_ref().and_then(|m| {
            self.servers
                .iter()
                .find(|t| &t.member.endpoint == m)
                .and_then(|t| match &t.probe {
                    Probe::Up(info) => Some(info.offset),
                    Probe::Failed { .. } => None,
                })
        });
        let servers = self
            .servers
            .iter()
            .map(|t| {
                let info = match &t.probe {
                    Probe::Up(info) => Some(info),
                    Probe::Failed { .. } => None,
                };
                let health = match &t.probe {
                    Probe::Up(_) => "up",
                    failed if is_down(failed, &self.config.policy, now) => "down",
                    Probe::Failed { .. } => "failing",
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
                .set(i64::from(s.health == "up"));
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

    /// A planned switchover with no acknowledged write lost: pause writes on the master, wait
    /// until the target has every byte of the replication stream, retract the master, promote
    /// the target, publish it (which closes every proxied connection to the old master),
    /// demote the old master, and only then unpause it, so that writes that were waiting fail
    /// with READONLY instead of being acknowledged by a server that is no longer the master.
    async fn switchover(
        &mut self,
        target: Option<Endpoint>,
        reason: Reason,
    ) -> Result<Published, SwitchoverError> {
        if self.config.paused {
            return Err(SwitchoverError::Paused);
        }
        if !self.publisher.may_act() {
            return Err(SwitchoverError::NotLeader);
        }
        self.observe().await;
        let published = self.published.borrow().clone();
        let master = published.master.clone().ok_or(SwitchoverError::NoMaster)?;
        let master_state = self
            .servers
            .iter()
            .find(|t| t.member.endpoint == master)
            .ok_or(SwitchoverError::NoMaster)?;
        match &master_state.probe {
            Probe::Up(info) if info.role == Role::Master => {}
            Probe::Up(_) => {
                return Err(SwitchoverError::MasterUnhealthy {
                    master,
                    why: "it reports role replica".into(),
                });
            }
            Probe::Failed { kind, .. } => {
                return Err(SwitchoverError::MasterUnhealthy {
                    master,
                    why: format!("probe failed: {}", kind.as_str()),
                });
            }
        }
        let (target, target_run_id) = self.switchover_target(&master, target)?;
        info!(from = %master, to = %target, "switchover: pausing writes on the master");
        self.publisher.record(EngineEvent::SwitchoverStarted {
            from: master.clone(),
            to: target.clone(),
        });
        let result = self
            .switch(&published, &master, &target, target_run_id, reason)
            .await;
        if let Err(error) = &result {
            self.publisher.record(EngineEvent::SwitchoverFailed {
                from: master.clone(),
                to: target.clone(),
                error: error.to_string(),
            });
        }
        result
    }

    /// The steps of [`Self::switchover`] once the target is chosen.
    async fn switch(
        &mut self,
        published: &Published,
        master: &Endpoint,
        target: &Endpoint,
        target_run_id: String,
        reason: Reason,
    ) -> Result<Published, SwitchoverError> {
        let deadline = self.config.switchover_timeout;
        // The pause must outlast everything up to the demotion, or a write could be
        // acknowledged by the old master after the new one is published.
        let pause_for = deadline + self.connector.deadline() * 4 + Duration::from_secs(1);
        let paused = self.connector.pause_writes(master, pause_for).await;
        self.count(Command::PauseWrites, &paused);
        paused?;

        let caught_up = self.wait_for_catch_up(master, target, deadline).await;
        let promoted = match caught_up {
            Ok(()) if !self.publisher.may_act() => Err(SwitchoverError::NotLeader),
            Ok(()) if !self.retract(master).await => Err(SwitchoverError::Publish(
                "the old master could not be retracted".into(),
            )),
            Ok(()) => {
                let result = self.connector.promote(target).await;
                self.count(Command::Promote, &result);
                result.map_err(SwitchoverError::from)
            }
            Err(error) => Err(error),
        };
        if let Err(error) = promoted {
            self.unpause(master).await;
            return Err(error);
        }
        let next = Published {
            epoch: published.epoch + 1,
            master: Some(target.clone()),
            run_id: Some(target_run_id),
        };
        if let Some(fence) = self.fence_after_promotion(target) {
            self.set_fence(target, fence).await;
        }
        if !self.publish(next.clone(), reason).await {
            // Nobody was told of the target, and no write reached either server (the master
            // is paused, the target was not routed to): undo the promotion.
            let undone = self.connector.replicate(target, master).await;
            self.count(Command::Replicate, &undone);
            self.unpause(master).await;
            return Err(SwitchoverError::Publish(match undone {
                Ok(()) => "not published".into(),
                Err(error) => format!("not published, and demoting {target} again failed: {error}"),
            }));
        }
        let demoted = self.connector.replicate(master, target).await;
        self.count(Command::Replicate, &demoted);
        if let Err(error) = &demoted {
            // The rounds retry the demotion; until then the pause keeps the old master from
            // taking writes, and no proxy routes to it.
            warn!(server = %master, error = %error, "switchover: demoting the old master failed; will retry");
        } else {
            self.publisher.record(EngineEvent::Repointed {
                server: master.clone(),
                master: target.clone(),
                was_master: true,
            });
            self.unpause(master).await;
        }
        info!(from = %master, to = %target, epoch = next.epoch, "switchover complete");
        Ok(next)
    }

    async fn unpause(&self, server: &Endpoint) {
        let unpaused = self.connector.unpause(server).await;
        self.count(Command::Unpause, &unpaused);
    }

    /// A promoted replica has no replica of its own yet: with a fence set (left from a time
    /// it was master) it would refuse every write until one attached.
    fn fence_after_promotion(&self, target: &Endpoint) -> Option<MinReplicas> {
        let current = self
            .servers
            .iter()
            .find(|t| &t.member.endpoint == target)
            .and_then(|t| match &t.probe {
                Probe::Up(info) => info.min_replicas,
                Probe::Failed { .. } => None,
            })?;
        (self.config.policy.fencing != Fencing::Unmanaged && current.to_write > 0).then_some(
            MinReplicas {
                to_write: 0,
                ..current
            },
        )
    }

    fn switchover_target(
        &self,
        master: &Endpoint,
        wanted: Option<Endpoint>,
    ) -> Result<(Endpoint, String), SwitchoverError> {
        let ready = |t: &Tracked| -> Result<String, String> {
            match &t.probe {
                Probe::Failed { kind, .. } => {
                    Err(format!("it is not answering ({})", kind.as_str()))
                }
                Probe::Up(info) if info.role != Role::Replica => Err("it is not a replica".into()),
                Probe::Up(info) if info.master.as_ref() != Some(master) => {
                    Err(format!("it does not replicate from the master {master}"))
                }
                Probe::Up(info) if !info.link_up => Err("its replication link is down".into()),
                Probe::Up(info) if info.priority == 0 => {
                    Err("its replica-priority is 0 (never promote)".into())
                }
                Probe::Up(info) if !info.synced => Err("it has not completed a sync yet".into()),
                Probe::Up(_) if t.member.leaving => {
                    Err("it is leaving (its pod is being deleted)".into())
                }
                Probe::Up(info) => Ok(info.run_id.clone()),
            }
        };
        match wanted {
            Some(target) => {
                let tracked = self
                    .servers
                    .iter()
                    .find(|t| t.member.endpoint == target)
                    .ok_or_else(|| SwitchoverError::UnknownTarget(target.clone()))?;
                let run_id = ready(tracked).map_err(|why| SwitchoverError::TargetNotReady {
                    target: target.clone(),
                    why,
                })?;
                Ok((target, run_id))
            }
            None => {
                let best = self
                    .servers
                    .iter()
                    .filter(|t| ready(t).is_ok())
                    .filter_map(|t| match &t.probe {
                        Probe::Up(info) => Some((&t.member.endpoint, info)),
                        Probe::Failed { .. } => None,
                    })
                    .max_by(super::decide::more_caught_up)
                    .ok_or(SwitchoverError::NoCandidate)?;
                Ok((best.0.clone(), best.1.run_id.clone()))
            }
        }
    }

    /// Waits until `target` has processed the master's whole replication stream. Polling is
    /// the only way to learn a remote offset; the deadline bounds it.
    async fn wait_for_catch_up(
        &self,
        master: &Endpoint,
        target: &Endpoint,
        deadline: Duration,
    ) -> Result<(), SwitchoverError> {
        let started = Instant::now();
        // Writes are paused, so this offset is final.
        let master_offset = self.connector.offset(master).await?;
        loop {
            // A target that does not answer now may answer in a moment; only the deadline
            // ends the wait.
            match self.connector.offset(target).await {
                Ok(offset) if offset >= master_offset => {
                    debug!(offset, "switchover: target caught up");
                    return Ok(());
                }
                Ok(_) => {}
                Err(error) => {
                    debug!(error = %error, "switchover: reading the target's offset failed")
                }
            }
            if started.elapsed() >= deadline {
                return Err(SwitchoverError::CatchUpTimeout {
                    target: target.clone(),
                    timeout: humantime::format_duration(deadline).to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
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

/// A plan in words: "promote 10.0.0.2:6379, publish it as master under epoch 5 (master-down)".
fn describe_plan(plan: &Plan) -> String {
    let mut steps = Vec::new();
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

fn describe_waiting(waiting: &Waiting) -> String {
    match waiting {
        Waiting::MasterFailing { master } => {
            format!("master {master} is not answering; waiting for down-after before failing over")
        }
        Waiting::NoCandidate => {
            "no master: no answering replica may be promoted (priority 0 or none up)".into()
        }
        Waiting::ServersFailing => {
            "no master yet: waiting for servers that are not answering (one may be the master)"
                .into()
        }
        Waiting::NothingUp => "no master: no server is answering; still probing".into(),
        Waiting::NoSwitchoverTarget { master } => format!(
            "master {master} is leaving but no replica is in sync with it to take over; it \
             stays master until it goes, then a failover follows"
        ),
    }
}

/// The watched connections, one per member, following the members as they change.
struct Watchers {
    connector: Connector,
    retry_every: Duration,
    lost: mpsc::Sender<Endpoint>,
    shutdown: CancellationToken,
    running: HashMap<Endpoint, CancellationToken>,
}

impl Watchers {
    fn follow<'a>(&mut self, members: impl Iterator<Item = &'a Endpoint>) {
        let members: Vec<&Endpoint> = members.collect();
        self.running.retain(|endpoint, stop| {
            let keep = members.contains(&endpoint);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for endpoint in members {
            if !self.running.contains_key(endpoint) {
                let stop = self.shutdown.child_token();
                tokio::spawn(watch_connection(
                    self.connector.clone(),
                    endpoint.clone(),
                    self.retry_every,
                    self.lost.clone(),
                    stop.clone(),
                ));
                self.running.insert(endpoint.clone(), stop);
            }
        }
    }
}

/// Holds a pub/sub connection to one server; when it ends, the process behind it most likely
/// died, and the engine probes at once instead of at the next tick.
async fn watch_connection(
    connector: Connector,
    endpoint: Endpoint,
    retry_every: Duration,
    lost: mpsc::Sender<Endpoint>,
    shutdown: CancellationToken,
) {
    loop {
        let held = async {
            if let Ok(mut pubsub) = connector.subscribe(&endpoint, WATCH_CHANNEL).await {
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {}
                // A full channel means a probe round is already due.
                let _ = lost.try_send(endpoint.clone());
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = held => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retry_every) => {}
        }
    }
}
