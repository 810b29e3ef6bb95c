//! The engine loop: probe every server each `probe_interval` (and at once when a watched
//! connection drops), decide, execute the plan, publish, and keep status and metrics current.
//! It is the single writer of the topology; planned switchovers run inside it, so they never
//! race a failover.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decide::{Policy, decide, is_down};
use super::model::{
    Endpoint, FailureKind, Plan, Probe, Published, Reason, Role, ServerState, Waiting,
};
use super::redis_io::{Connector, RedisCallError};
use crate::metrics::{Command, CommandLabels, EngineMetrics, Outcome, ReasonLabel, ServerLabel};

/// A server of the group and the socket addresses its host resolved to at start-up, so that a
/// replica reporting `master_host` as an IP still matches a member named by host name.
#[derive(Clone, Debug)]
pub struct Member {
    pub endpoint: Endpoint,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub members: Vec<Member>,
    pub policy: Policy,
    pub probe_interval: Duration,
    pub switchover_timeout: Duration,
}

/// The engine's status as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub master: Option<Endpoint>,
    pub epoch: u64,
    pub servers: Vec<ServerStatus>,
    pub last_failover: Option<FailoverRecord>,
    /// Why the engine is not acting although something is wrong, if it is.
    pub waiting: Option<String>,
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
    /// The HTTP status the admin endpoint answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            SwitchoverError::CatchUpTimeout { .. } => 504,
            SwitchoverError::Redis(_) => 502,
            SwitchoverError::EngineStopped => 503,
            _ => 409,
        }
    }
}

enum Request {
    Switchover {
        target: Option<Endpoint>,
        reply: oneshot::Sender<Result<Published, SwitchoverError>>,
    },
}

/// What the rest of the process holds of the engine: what it publishes, and a way to ask it
/// for a switchover.
#[derive(Clone)]
pub struct EngineHandle {
    pub published: watch::Receiver<Published>,
    pub status: watch::Receiver<Status>,
    requests: mpsc::Sender<Request>,
}

impl EngineHandle {
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

pub struct Engine {
    config: EngineConfig,
    connector: Connector,
    metrics: EngineMetrics,
    servers: Vec<Tracked>,
    published: watch::Sender<Published>,
    status: watch::Sender<Status>,
    requests: mpsc::Receiver<Request>,
    started: Instant,
    last_failover: Option<FailoverRecord>,
    waiting: Option<Waiting>,
}

/// The subscription channel watchers hold; nothing is ever published on it.
const WATCH_CHANNEL: &str = "__redis-pair__:watch";

impl Engine {
    pub fn new(
        config: EngineConfig,
        connector: Connector,
        metrics: EngineMetrics,
    ) -> (Self, EngineHandle) {
        let (published_tx, published_rx) = watch::channel(Published::default());
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (request_tx, request_rx) = mpsc::channel(8);
        let servers = config
            .members
            .iter()
            .map(|member| Tracked {
                member: member.clone(),
                probed: false,
                last_answer: None,
                // Nothing is known before the first probe: fail-safe as "timing out since 0",
                // which the decision treats as "wait", never as "down".
                probe: Probe::Failed {
                    kind: FailureKind::Timeout,
                    since: Duration::ZERO,
                },
                error: Some("not probed yet".into()),
                warnings: Vec::new(),
            })
            .collect();
        let engine = Self {
            config,
            connector,
            metrics,
            servers,
            published: published_tx,
            status: status_tx,
            requests: request_rx,
            started: Instant::now(),
            last_failover: None,
            waiting: None,
        };
        let handle = EngineHandle {
            published: published_rx,
            status: status_rx,
            requests: request_tx,
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

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (lost_tx, mut lost_rx) = mpsc::channel(self.servers.len() * 2);
        for tracked in &self.servers {
            tokio::spawn(watch_connection(
                self.connector.clone(),
                tracked.member.endpoint.clone(),
                self.config.probe_interval,
                lost_tx.clone(),
                shutdown.child_token(),
            ));
        }
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
        info!("engine stopped");
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
        self.execute(plan).await;
        self.refresh_status();
    }

    /// Probes every server concurrently and records what it saw; returns the failures.
    async fn observe(&mut self) -> Vec<(Endpoint, RedisCallError)> {
        let now = self.now();
        let members = &self.config.members;
        let known = |host: &str, port: u16| known_member(members, host, port);
        let results = join_all(
            self.servers
                .iter()
                .map(|t| self.connector.probe(&t.member.endpoint, &known)),
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

    async fn execute(&mut self, plan: Plan) {
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
        if let Some((next, reason)) = plan.publish {
            self.publish(next, reason);
        }
        for (server, master) in &plan.replicate {
            let result = self.connector.replicate(server, master).await;
            self.count(Command::Replicate, &result);
            match result {
                Ok(()) => info!(
                    server = %server,
                    master = %master,
                    reason = "answers but does not replicate from the published master",
                    "made a replica (REPLICAOF)"
                ),
                Err(error) => {
                    warn!(server = %server, master = %master, error = %error, "REPLICAOF failed; will retry")
                }
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

    fn publish(&mut self, next: Published, reason: Reason) {
        let previous = self.published.borrow().master.clone();
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
                from: previous,
                to: next.master.clone(),
                reason,
                epoch: next.epoch,
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
        }
        self.published.send_replace(next);
        self.refresh_status();
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
        self.status.send_replace(Status {
            master: published.master,
            epoch: published.epoch,
            servers,
            last_failover: self.last_failover.clone(),
            waiting: self.waiting.as_ref().map(describe_waiting),
        });
    }

    fn update_metrics(&self, published: &Published, servers: &[ServerStatus]) {
        let m = &self.metrics;
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
                let result = self.switchover(target).await;
                if let Err(error) = &result {
                    warn!(error = %error, "switchover refused or failed");
                }
                self.refresh_status();
                // The requester may have given up waiting; the switchover stands regardless.
                let _ = reply.send(result);
            }
        }
    }

    /// A planned switchover with no acknowledged write lost: pause writes on the master, wait
    /// until the target has every byte of the replication stream, promote it, publish it
    /// (which closes every proxied connection to the old master), demote the old master, and
    /// only then unpause it, so that writes that were waiting fail with READONLY instead of
    /// being acknowledged by a server that is no longer the master.
    async fn switchover(&mut self, target: Option<Endpoint>) -> Result<Published, SwitchoverError> {
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

        let deadline = self.config.switchover_timeout;
        // The pause must outlast everything up to the demotion, or a write could be
        // acknowledged by the old master after the new one is published.
        let pause_for = deadline + self.connector.deadline() * 4 + Duration::from_secs(1);
        let paused = self.connector.pause_writes(&master, pause_for).await;
        self.count(Command::PauseWrites, &paused);
        paused?;

        let caught_up = self.wait_for_catch_up(&master, &target, deadline).await;
        let promoted = match caught_up {
            Ok(()) => {
                let result = self.connector.promote(&target).await;
                self.count(Command::Promote, &result);
                result.map_err(SwitchoverError::from)
            }
            Err(error) => Err(error),
        };
        if let Err(error) = promoted {
            let unpaused = self.connector.unpause(&master).await;
            self.count(Command::Unpause, &unpaused);
            return Err(error);
        }
        let next = Published {
            epoch: published.epoch + 1,
            master: Some(target.clone()),
            run_id: Some(target_run_id),
        };
        self.publish(next.clone(), Reason::Switchover);
        let demoted = self.connector.replicate(&master, &target).await;
        self.count(Command::Replicate, &demoted);
        if let Err(error) = &demoted {
            // The rounds retry the demotion; until then the pause keeps the old master from
            // taking writes, and no proxy routes to it.
            warn!(server = %master, error = %error, "switchover: demoting the old master failed; will retry");
        } else {
            let unpaused = self.connector.unpause(&master).await;
            self.count(Command::Unpause, &unpaused);
        }
        info!(from = %master, to = %target, epoch = next.epoch, "switchover complete");
        Ok(next)
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
fn known_member(members: &[Member], host: &str, port: u16) -> Option<Endpoint> {
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
