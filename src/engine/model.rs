//! The vocabulary of the failover engine: who the servers are, what a probe saw, what is
//! published, and the plan the decision produces. Plain data, no I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A Redis server's address as the user named it: `host:port` (`[v6]:port` for IPv6).
///
/// Ordered by host then port; that order is the final, stable tie-break of every decision, so
/// two deciders given the same servers in a different order reach the same plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{input}' is not HOST:PORT ({why})")]
pub struct EndpointParseError {
    input: String,
    why: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |why| EndpointParseError {
            input: input.to_owned(),
            why,
        };
        let (host, port) = input.rsplit_once(':').ok_or(fail("missing ':PORT'"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or(fail("unclosed '['"))?,
            None if host.contains(':') => return Err(fail("an IPv6 host needs [brackets]")),
            None => host,
        };
        if host.is_empty() {
            return Err(fail("empty host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| fail("port is not a number 1-65535"))?;
        if port == 0 {
            return Err(fail("port 0 is not a server port"));
        }
        Ok(Endpoint::new(host, port))
    }
}

impl TryFrom<String> for Endpoint {
    type Error = EndpointParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Endpoint> for String {
    fn from(value: Endpoint) -> Self {
        value.to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

/// What one successful probe read from a server (INFO server/replication/keyspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisInfo {
    pub role: Role,
    /// Changes whenever the process restarts: how a restart is told from a slow server.
    pub run_id: String,
    /// For a replica: the group member it replicates from, if it is one of ours.
    pub master: Option<Endpoint>,
    /// For a replica: `master_link_status:up`.
    pub link_up: bool,
    /// `master_repl_offset` on a master, `slave_repl_offset` on a replica.
    pub offset: u64,
    /// For a replica: it has completed a sync with a master since its process started (the
    /// link is up, or `master_link_down_since_seconds` is not -1). A replica that never did
    /// holds no data it got from a master (a restarted, empty old master, say) and must never
    /// be promoted over the data its peers hold.
    pub synced: bool,
    /// `replica-priority`; 0 means "never promote this server".
    pub priority: u32,
    /// Keys over all databases: "how much data" when two masters must be reconciled.
    pub keys: u64,
    /// `min-replicas-to-write` and `min-replicas-max-lag`, read only when the engine manages
    /// write fencing (`None` when not read, or when CONFIG is not allowed).
    pub min_replicas: Option<MinReplicas>,
    /// `master_replid`: the replication history this server's data belongs to. A replica that
    /// synced from a master carries the master's; a promotion or a restart starts a new one.
    /// How the engine tells "holds the published master's data" from "calls itself master".
    pub replid: String,
    /// `master_replid2`: the history a promoted replica came from (`None` when all zeros).
    pub replid2: Option<String>,
    /// A replica's full sync is under way (`master_sync_in_progress:1`): its dataset is about
    /// to be replaced, so it is neither promoted nor handed the master.
    pub sync_in_progress: bool,
    /// A master's own view of its replicas (`slaveN:` lines that name a member): what they
    /// acknowledged and how long ago. Truer than a replica's `master_link_status`, which
    /// stays up for `repl-timeout` after the link is silently cut.
    pub replicas: Vec<ReplicaLink>,
}

/// See [`ServerState::furthest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Furthest {
    pub run_id: String,
    pub replid: String,
    pub offset: u64,
}

impl Furthest {
    pub fn of(info: &RedisInfo) -> Self {
        Self {
            run_id: info.run_id.clone(),
            replid: info.replid.clone(),
            offset: info.offset,
        }
    }

    /// `info` comes from another process of this history and holds less of it.
    pub fn rewound_by(&self, info: &RedisInfo) -> bool {
        let same_history =
            info.replid == self.replid || info.replid2.as_deref() == Some(self.replid.as_str());
        info.run_id != self.run_id && same_history && info.offset < self.offset
    }
}

/// One replica as its master sees it (`slaveN:ip=..,port=..,state=online,offset=..,lag=..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaLink {
    pub endpoint: Endpoint,
    /// `state=online`: the initial sync is done and the stream flows.
    pub online: bool,
    /// The offset the replica last acknowledged.
    pub offset: u64,
    /// Seconds since that acknowledgement (replicas acknowledge every second).
    pub lag_secs: u64,
}

/// A master's write fence: with `to_write` > 0 it refuses writes (`-NOREPLICAS`) once fewer
/// than `to_write` replicas have acknowledged the stream within `max_lag_secs`. This is what
/// stops a master cut off from its replicas and from the engine from taking writes that a
/// promoted replica will never see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinReplicas {
    pub to_write: u32,
    pub max_lag_secs: u32,
}

/// How a probe failed. The distinction drives how fast a master is declared down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Connection refused or reset: the process is gone, so the server is down at once.
    Refused,
    /// No answer before the probe deadline: hung (SIGSTOP, swapping) or partitioned. Down only
    /// after `down_after`, because a slow server that comes back must not cost a failover.
    Timeout,
    /// The server rejected our credentials: it is there but we cannot manage it.
    AuthFailed,
    /// The server refuses new connections: `maxclients` is reached. It is alive and its
    /// existing clients may still write to it, so it is never called down (failing it over
    /// would make two masters); status says so, and a human must act.
    MaxClients,
    /// Anything else (a protocol error, LOADING, ...).
    Error,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::Timeout => "timeout",
            FailureKind::AuthFailed => "auth-failed",
            FailureKind::MaxClients => "max-clients",
            FailureKind::Error => "error",
        }
    }
}

/// The latest probe of one server, with the memory the decision needs: since when it has not
/// been heard from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Up(RedisInfo),
    Failed {
        kind: FailureKind,
        /// Engine time of the last probe that answered before this run of failures (or of the
        /// first failure, if it never answered). As with Sentinel's down-after, the clock
        /// starts when the server was last heard from, not when we noticed the silence.
        since: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub endpoint: Endpoint,
    pub probe: Probe,
    /// The server is going away (its pod is being deleted): it is never chosen as a new
    /// master, and a published master that is leaving is handed over by a planned switchover.
    pub leaving: bool,
    /// What the server said the last time it answered (the same as the probe while it is up),
    /// kept while it fails: a hung master's last view of its replicas, and how far a stalled
    /// replica had got, are what keep the decision from promoting one that is behind.
    pub last_seen: Option<RedisInfo>,
    /// The furthest this address was seen in a replication history: which process, which
    /// history, what offset. A different process of the same history later reporting less
    /// restarted from an older snapshot: it lost data, and must not take over
    /// (`Unfit::Rewound`). A process of another history is not compared with it.
    pub furthest: Option<Furthest>,
}

impl ServerState {
    pub fn info(&self) -> Option<&RedisInfo> {
        match &self.probe {
            Probe::Up(info) => Some(info),
            Probe::Failed { .. } => None,
        }
    }
}

/// The one thing every proxy follows: which server is the master, and the fencing epoch.
///
/// The epoch increases by exactly one every time `master` changes (including to "none"), so a
/// proxy that sees an epoch can tell whether it is newer than what it routes to.
///
/// `run_id` and `replid` name the *data* the group must keep: the process that was published
/// and its replication history. They are persisted with the publication (so a new leader
/// judges a restart the way the old one would) and are carried over when "no master" is
/// published, so that the server that still holds the data is the one recognised when it
/// answers again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub epoch: u64,
    pub master: Option<Endpoint>,
    /// The master's run_id when it was published: a different run_id later means the process
    /// restarted, possibly empty, and must not be trusted as master (see `decide`).
    pub run_id: Option<String>,
    /// The master's `master_replid` as published (after its promotion): a server holds the
    /// published data only if its history is this one (`None`: not known, as with a
    /// publication written by an older redis-pair; the decision is then stricter).
    pub replid: Option<String>,
    /// The history `replid` continues (`master_replid2` of a promoted master): a server
    /// still on it holds the published data up to the promotion, which is all that is left
    /// if the promoted master loses its data before anyone synced from it.
    pub replid2: Option<String>,
}

/// Why the published master changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// First publication after start-up.
    Initial,
    /// The master refused connections, or did not answer for `down_after`.
    MasterDown,
    /// The master answered with a new run_id: it restarted, maybe without its data.
    MasterRestarted,
    /// A planned switchover requested through the admin endpoint.
    Switchover,
    /// The master is down and no replica can be promoted: "no master" is published.
    NoMasterReachable,
    /// A master is published again after a period with none.
    Recovered,
    /// The master was going away (its pod is being deleted) and was handed over to a replica
    /// by a planned switchover.
    MasterLeaving,
    /// Someone else published something that is not the master (a replica, a server that is
    /// down, none while a master is up): the engine's master is published again, above it.
    Corrected,
    /// The same master under the same epoch, with the replication history it reports now:
    /// Redis starts a new `master_replid` when a master's first replica creates its backlog,
    /// so the history published with a fresh master is renamed moments later. Not a change of
    /// master: no new epoch, not counted, no Event.
    Refreshed,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Initial,
        Reason::MasterDown,
        Reason::MasterRestarted,
        Reason::Switchover,
        Reason::NoMasterReachable,
        Reason::Recovered,
        Reason::MasterLeaving,
        Reason::Corrected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::MasterDown => "master-down",
            Reason::MasterRestarted => "master-restarted",
            Reason::Switchover => "switchover",
            Reason::NoMasterReachable => "no-master-reachable",
            Reason::Recovered => "recovered",
            Reason::MasterLeaving => "master-leaving",
            Reason::Corrected => "corrected",
            Reason::Refreshed => "refreshed",
        }
    }
}

/// Why a decision changed nothing although something is wrong; logged and shown in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The master is not answering but is not down yet.
    MasterFailing { master: Endpoint },
    /// The master is down and no server may be promoted; `unfit` says why each one may not.
    NoCandidate { unfit: Vec<(Endpoint, Unfit)> },
    /// Nothing is published and some server is not answering yet: it may be the master.
    ServersFailing,
    /// Nothing is published and no server is up.
    NothingUp,
    /// The master is going away and no replica is ready to take over without losing writes
    /// (none up, in sync with it, of non-zero priority and staying); `unfit` says why not.
    NoSwitchoverTarget {
        master: Endpoint,
        unfit: Vec<(Endpoint, Unfit)>,
    },
    /// The master is down and the best answering candidate is known to be behind a server
    /// that is not answering yet: promoting it now would lose what the other one has.
    CandidateBehind {
        candidate: Endpoint,
        ahead: Endpoint,
    },
    /// What was last published is not known (a write whose answer never came may have been
    /// applied): nothing changes until it has been read back.
    PublicationUnknown,
}

/// Why a server may not become the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unfit {
    /// Not answering.
    Down,
    /// `replica-priority 0`: never promote.
    PriorityZero,
    /// Has not completed a sync since it started: it holds no data it got from a master.
    NeverSynced,
    /// A full sync is under way: its data is about to be replaced.
    Syncing,
    /// Its replication history is not the published master's (restarted empty, or another
    /// group's data).
    OtherHistory,
    /// Its pod is being deleted.
    Leaving,
    /// It does not replicate from the master it would take over from, or its link is down.
    NotReplicating,
    /// It replicates from the master, but the master does not count it online yet (its
    /// initial sync has not finished from the master's side).
    NotOnline,
    /// It holds less of the history than the master last saw it acknowledge: it restarted
    /// from an older snapshot (a replica's sync file, say) and lost what came after.
    Rewound,
}

/// Why each of these servers may not become the master, in one line.
pub fn describe_unfit(unfit: &[(Endpoint, Unfit)]) -> String {
    if unfit.is_empty() {
        return "the group has no other server".into();
    }
    unfit
        .iter()
        .map(|(server, why)| format!("{server} {}", why.describe()))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Unfit {
    pub fn describe(self) -> &'static str {
        match self {
            Unfit::Down => "not answering",
            Unfit::PriorityZero => "replica-priority is 0 (never promote)",
            Unfit::NeverSynced => "has not completed a sync since it started",
            Unfit::Syncing => "a full sync is still in progress",
            Unfit::OtherHistory => "holds another replication history (restarted empty?)",
            Unfit::Leaving => "is leaving (its pod is being deleted)",
            Unfit::NotReplicating => "does not replicate from the master, or its link is down",
            Unfit::NotOnline => "is not online in its master's view yet (sync not finished)",
            Unfit::Rewound => {
                "holds less than the master last saw it acknowledge (restarted from an older \
                 snapshot)"
            }
        }
    }
}

/// What the engine should do now. Execution order is fixed: `reread` (alone), or `promote`,
/// then `fence`, then (only if the promotion succeeded) `publish`, then `replicate`, and last
/// `switch_over`. At most one promotion and one publication per plan is a property of the
/// type, not of the code that builds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `REPLICAOF NO ONE` on this server.
    pub promote: Option<Endpoint>,
    /// Set the write fence of this server, the master of the plan.
    pub fence: Option<(Endpoint, MinReplicas)>,
    pub publish: Option<(Published, Reason)>,
    /// `REPLICAOF master` on each `server`, as `(server, master)`, sorted by server.
    pub replicate: Vec<(Endpoint, Endpoint)>,
    /// Hand the published master over to this replica with a planned switchover (pause
    /// writes, wait until it has caught up, promote, publish, demote): the master is leaving.
    pub switch_over: Option<Endpoint>,
    pub waiting: Option<Waiting>,
    /// Read the publication back before anything else: a write of it may have been applied
    /// although its answer was lost.
    pub reread: bool,
}

impl Plan {
    /// Nothing to do but wait, for this reason.
    pub fn waiting(waiting: Waiting) -> Self {
        Self {
            waiting: Some(waiting),
            ..Self::default()
        }
    }

    pub fn is_noop(&self) -> bool {
        !self.reread
            && self.promote.is_none()
            && self.fence.is_none()
            && self.publish.is_none()
            && self.replicate.is_empty()
            && self.switch_over.is_none()
    }
}
