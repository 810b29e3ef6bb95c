//! The Redis model: what a server holds and how replication moves it.
//!
//! A dataset is a log of write ids (the offset is its length), named by a replication ID
//! (`replid`, and `replid2` up to an offset after a promotion) and by a lineage (which empty
//! start it descends from: what "the same data" means to the invariants). Replication is
//! asynchronous: each tick a replica receives what its master had `delay` ago, and
//! acknowledges its offset once a second.
//!
//! ```text
//!  REPLICAOF m → Connecting ─ m's history holds (replid, offset) and the backlog covers it
//!                    │            → Up (partial resync: the data is kept)
//!                    └ otherwise → Syncing (old data kept, sync_in_progress) → Up (replaced)
//!  Up: link looks up until repl-timeout without traffic (a silent cut); a killed master
//!      closes it at once.
//! ```
//!
//! Not modelled: key-level data (a write is an id), chained replication's own offsets (a
//! sub-replica syncs from its master's log), disk persistence timing, `WAIT`.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::world::{Shared, World, lock};
use super::{BACKLOG, MAX_LAG_SECS, REPL_TIMEOUT, TICK};
use crate::engine::model::{Endpoint, MinReplicas, ReplicaLink, Role};

/// A replica's link to its master, from the replica's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    None,
    Connecting,
    /// A full sync: the old data stays until it completes.
    Syncing {
        started: Duration,
        done_at: Duration,
    },
    Up {
        /// Last time anything came from the master: the link looks up for `repl-timeout`.
        last_io: Duration,
        /// What the master last heard from this replica (`REPLCONF ACK`).
        ack_offset: u64,
        ack_at: Duration,
    },
}

/// A topology or configuration command, as a server applies it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Command {
    Promote,
    Replicate(usize),
    Fence(MinReplicas),
    Pause(Duration),
    Unpause,
}

impl Command {
    pub fn changes_topology(self) -> bool {
        matches!(self, Command::Promote | Command::Replicate(_))
    }
}

pub(super) struct Server {
    pub endpoint: Endpoint,
    pub running: bool,
    pub run_id: String,
    /// SIGSTOP since then: nothing answers, nothing moves.
    pub stalled_since: Option<Duration>,
    /// The engine cannot reach it since then (clients and replicas still can).
    pub partitioned_since: Option<Duration>,
    /// At `maxclients`: new connections are refused, existing ones (the writer's) work.
    pub full: bool,
    pub role: Role,
    pub master: Option<usize>,
    pub link: Link,
    /// The replication link from its master is cut silently (both directions).
    pub cut: bool,
    /// How far behind its master's stream this replica runs.
    pub delay: Duration,
    pub replid: u64,
    pub replid2: Option<(u64, u64)>,
    pub data: Vec<u64>,
    /// When each entry of `data` arrived here.
    pub arrived: Vec<Duration>,
    pub lineage: u64,
    /// Completed a sync since the process started.
    pub synced: bool,
    pub priority: u32,
    pub fence: MinReplicas,
    pub paused_until: Option<Duration>,
    /// Commands that reached it while stalled: run when it resumes.
    pub pending: Vec<Command>,
    /// Bumped when the process dies or restarts: what ends a watched connection.
    pub incarnation: watch::Sender<u64>,
    /// Its own offset at its last answered probe, and what the published master last said it
    /// acknowledged: what the engine could know it holds.
    pub known_own: u64,
    pub known_by_master: u64,
    /// Demoted while it was the newest published master, under this epoch (invariants).
    pub demoted_published: Option<u64>,
}

pub(super) fn replid_text(id: u64) -> String {
    format!("{id:040x}")
}

const UNFENCED: MinReplicas = MinReplicas {
    to_write: 0,
    max_lag_secs: MAX_LAG_SECS,
};

impl Server {
    pub fn offset(&self) -> u64 {
        self.data.len() as u64
    }

    /// Answers clients and other servers (the engine may still be cut off from it).
    pub fn answers(&self) -> bool {
        self.running && self.stalled_since.is_none()
    }

    pub fn paused(&self, now: Duration) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    pub fn syncing(&self) -> bool {
        matches!(self.link, Link::Syncing { .. })
    }

    pub fn link_up(&self, now: Duration) -> bool {
        matches!(self.link, Link::Up { last_io, .. } if now.saturating_sub(last_io) < REPL_TIMEOUT)
    }

    /// Since when the engine cannot reach it (stalled or partitioned), if it cannot.
    pub fn failing_since(&self) -> Option<Duration> {
        match (self.stalled_since, self.partitioned_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn known(&self) -> u64 {
        self.known_own.max(self.known_by_master)
    }
}

impl World {
    /// Builds `count` servers: s0 a master holding `writes` writes, the others its synced
    /// replicas.
    pub fn populate(&mut self, count: usize, writes: u64) {
        let lineage = self.fresh_id();
        let replid = self.fresh_id();
        let data: Vec<u64> = (0..writes).map(|_| self.fresh_id()).collect();
        for i in 0..count {
            let run_id = self.fresh_id();
            let (incarnation, _) = watch::channel(0);
            self.servers.push(Server {
                endpoint: Endpoint::new(format!("s{i}"), 6379),
                running: true,
                run_id: format!("run{run_id}"),
                stalled_since: None,
                partitioned_since: None,
                full: false,
                role: if i == 0 { Role::Master } else { Role::Replica },
                master: (i > 0).then_some(0),
                link: if i == 0 {
                    Link::None
                } else {
                    Link::Up {
                        last_io: Duration::ZERO,
                        ack_offset: writes,
                        ack_at: Duration::ZERO,
                    }
                },
                cut: false,
                delay: Duration::from_millis(20 + 30 * i as u64),
                replid,
                replid2: None,
                arrived: vec![Duration::ZERO; data.len()],
                data: data.clone(),
                lineage,
                synced: i > 0,
                priority: 100,
                fence: MinReplicas {
                    to_write: u32::from(count > 1),
                    max_lag_secs: MAX_LAG_SECS,
                },
                paused_until: None,
                pending: Vec::new(),
                incarnation,
                known_own: writes,
                known_by_master: writes,
                demoted_published: None,
            });
        }
    }

    /// The master's own view of its replicas (`INFO replication` `slaveN:` lines).
    pub fn replica_links(&self, master: usize, now: Duration) -> Vec<ReplicaLink> {
        self.servers
            .iter()
            .filter(|r| r.running && r.role == Role::Replica && r.master == Some(master))
            .filter_map(|r| match r.link {
                Link::Up {
                    ack_offset, ack_at, ..
                } if now.saturating_sub(ack_at) < REPL_TIMEOUT => Some(ReplicaLink {
                    endpoint: r.endpoint.clone(),
                    online: true,
                    offset: ack_offset,
                    lag_secs: now.saturating_sub(ack_at).as_secs(),
                }),
                Link::Syncing { .. } => Some(ReplicaLink {
                    endpoint: r.endpoint.clone(),
                    online: false,
                    offset: 0,
                    lag_secs: 0,
                }),
                _ => None,
            })
            .collect()
    }

    /// `-NOREPLICAS`: fewer replicas acknowledged within `max_lag` than the fence asks.
    pub fn refuses_writes(&self, master: usize, now: Duration) -> bool {
        let fence = self.servers[master].fence;
        let good = self
            .replica_links(master, now)
            .iter()
            .filter(|r| r.online && r.lag_secs <= u64::from(fence.max_lag_secs))
            .count();
        fence.to_write > 0 && good < fence.to_write as usize
    }

    /// Runs `command` on `server` now.
    pub fn apply(&mut self, server: usize, command: Command) {
        let now = self.now();
        let name = self.name(server);
        match command {
            Command::Promote => {
                let s = &self.servers[server];
                if s.role == Role::Master {
                    return;
                }
                if s.syncing() {
                    // Its data was about to be replaced: what it holds may be far behind.
                    self.violation(format!(
                        "{name} promoted while its full sync was in progress"
                    ));
                }
                let s = &self.servers[server];
                let (replid, offset) = (s.replid, s.offset());
                let fresh = self.fresh_id();
                let s = &mut self.servers[server];
                s.role = Role::Master;
                s.master = None;
                s.link = Link::None;
                s.replid2 = Some((replid, offset));
                s.replid = fresh;
                self.reconnect_replicas_of(server);
                self.note(format!("{name}: REPLICAOF NO ONE at offset {offset}"));
            }
            Command::Replicate(master) => {
                let s = &self.servers[server];
                if s.role == Role::Replica && s.master == Some(master) {
                    return;
                }
                if s.role == Role::Master && self.published_master() == Some(server) {
                    let epoch = self.store.published.epoch;
                    self.servers[server].demoted_published = Some(epoch);
                }
                let s = &mut self.servers[server];
                s.role = Role::Replica;
                s.master = Some(master);
                s.link = Link::Connecting;
                self.reconnect_replicas_of(server);
                let master = self.name(master);
                self.note(format!("{name}: REPLICAOF {master}"));
            }
            Command::Fence(fence) => {
                self.servers[server].fence = fence;
                self.note(format!("{name}: min-replicas-to-write {}", fence.to_write));
            }
            Command::Pause(length) => {
                self.servers[server].paused_until = Some(now + length);
                self.note(format!("{name}: CLIENT PAUSE WRITE {length:?}"));
            }
            Command::Unpause => {
                self.servers[server].paused_until = None;
                self.note(format!("{name}: CLIENT UNPAUSE"));
            }
        }
    }

    /// A server's role changed: its replicas reconnect and resync from what it is now.
    fn reconnect_replicas_of(&mut self, server: usize) {
        for r in &mut self.servers {
            if r.master == Some(server) && r.role == Role::Replica && r.link != Link::None {
                r.link = Link::Connecting;
            }
        }
    }

    /// Moves every replica's stream along: handshakes, full syncs, delivery, acks, timeouts.
    pub fn tick(&mut self) {
        let now = self.now();
        for replica in 0..self.servers.len() {
            self.replication_step(replica, now);
        }
        super::clients::step(self);
        super::invariants::periodic(self, now);
    }

    fn replication_step(&mut self, r: usize, now: Duration) {
        let replica = &self.servers[r];
        let Some(m) = replica.master.filter(|_| replica.role == Role::Replica) else {
            return;
        };
        if !replica.answers() || m == r {
            return;
        }
        let master = &self.servers[m];
        let closed = !master.running;
        let reachable = master.answers() && !replica.cut;
        let link = replica.link;
        match link {
            Link::None | Link::Connecting if reachable => self.handshake(r, m, now),
            Link::None | Link::Connecting => {}
            // A closed connection aborts the transfer at once; a silent one only after
            // repl-timeout: until then the replica reports a sync in progress.
            Link::Syncing { .. } if closed => self.servers[r].link = Link::Connecting,
            Link::Syncing { started, .. }
                if !reachable && now.saturating_sub(started) >= REPL_TIMEOUT =>
            {
                self.servers[r].link = Link::Connecting;
            }
            Link::Syncing { done_at, .. } if reachable && now >= done_at => {
                self.complete_full_sync(r, m, now);
            }
            Link::Syncing { .. } => {}
            Link::Up { .. } if closed => self.servers[r].link = Link::Connecting,
            Link::Up {
                ack_offset, ack_at, ..
            } if reachable => {
                let cutoff = now.saturating_sub(replica.delay);
                let (from, to) = (replica.data.len(), master.data.len());
                let arrived = master.arrived[from.min(to)..to]
                    .iter()
                    .take_while(|at| **at <= cutoff)
                    .count();
                let entries: Vec<u64> = master.data[from.min(to)..from.min(to) + arrived].to_vec();
                let replica = &mut self.servers[r];
                replica
                    .arrived
                    .extend(std::iter::repeat_n(now, entries.len()));
                replica.data.extend(entries);
                let (ack_offset, ack_at) = if now.saturating_sub(ack_at) >= Duration::from_secs(1) {
                    (replica.offset(), now)
                } else {
                    (ack_offset, ack_at)
                };
                replica.link = Link::Up {
                    last_io: now,
                    ack_offset,
                    ack_at,
                };
            }
            Link::Up { last_io, .. } if now.saturating_sub(last_io) >= REPL_TIMEOUT => {
                self.servers[r].link = Link::Connecting;
                let name = self.name(r);
                self.note(format!("{name}: master link timed out (repl-timeout)"));
            }
            Link::Up { .. } => {}
        }
    }

    /// `PSYNC replid offset`: continue when the master's history holds it and the backlog
    /// covers the gap, else a full sync.
    fn handshake(&mut self, r: usize, m: usize, now: Duration) {
        let (replica, master) = (&self.servers[r], &self.servers[m]);
        let (ro, mo) = (replica.offset(), master.offset());
        let same = replica.replid == master.replid && ro <= mo;
        let before = master
            .replid2
            .is_some_and(|(id, upto)| id == replica.replid && ro <= upto);
        let names = format!("{} from {}", self.name(r), self.name(m));
        if (same || before) && mo - ro <= BACKLOG {
            let len = replica.data.len();
            if replica.data[..] != master.data[..len] || replica.lineage != master.lineage {
                panic!(
                    "model bug: partial resync of {names} at offset {ro} but the histories differ"
                );
            }
            let (old, new) = (replica.replid, master.replid);
            let replica = &mut self.servers[r];
            if old != new {
                replica.replid2 = Some((old, ro));
                replica.replid = new;
            }
            replica.link = Link::Up {
                last_io: now,
                ack_offset: ro,
                ack_at: now,
            };
            replica.synced = true;
            replica.demoted_published = None;
            self.note(format!("{names}: partial resync at offset {ro}"));
        } else {
            let took = self
                .rng
                .between(Duration::from_millis(300), Duration::from_millis(3000));
            self.servers[r].link = Link::Syncing {
                started: now,
                done_at: now + took,
            };
            self.note(format!(
                "{names}: full sync ({ro} behind {mo}, takes {took:?})"
            ));
        }
    }

    fn complete_full_sync(&mut self, r: usize, m: usize, now: Duration) {
        super::invariants::before_full_sync(self, r, m);
        let master = &self.servers[m];
        let (data, replid, lineage) = (master.data.clone(), master.replid, master.lineage);
        let replica = &mut self.servers[r];
        replica.arrived = vec![now; data.len()];
        replica.data = data;
        replica.replid = replid;
        replica.replid2 = None;
        replica.lineage = lineage;
        replica.synced = true;
        replica.known_own = 0;
        replica.known_by_master = 0;
        replica.demoted_published = None;
        replica.link = Link::Up {
            last_io: now,
            ack_offset: replica.offset(),
            ack_at: now,
        };
        let names = format!("{} from {}", self.name(r), self.name(m));
        self.note(format!("{names}: full sync done"));
    }

    pub fn kill(&mut self, server: usize) {
        let s = &mut self.servers[server];
        s.running = false;
        s.stalled_since = None;
        s.paused_until = None;
        s.pending.clear();
        s.incarnation.send_modify(|n| *n += 1);
        self.master_hit(server);
        self.note(format!("{}: killed", self.name(server)));
    }

    /// Starts the process again: with its data (RDB) or empty, as a master or as a replica
    /// of its last master (when its configuration says so).
    pub fn restart(&mut self, server: usize, keep_data: bool, as_replica: bool) {
        let run_id = self.fresh_id();
        let fresh_replid = self.fresh_id();
        let lineage = self.fresh_id();
        self.master_hit(server);
        let s = &mut self.servers[server];
        let follow = s.master.filter(|_| as_replica);
        s.running = true;
        s.run_id = format!("run{run_id}");
        s.stalled_since = None;
        s.paused_until = None;
        s.pending.clear();
        s.full = false;
        s.synced = false;
        s.fence = UNFENCED;
        s.known_own = 0;
        s.known_by_master = 0;
        s.demoted_published = None;
        s.incarnation.send_modify(|n| *n += 1);
        if keep_data {
            // A master restarted from its RDB starts a new history continuing the old one;
            // a replica keeps its master's ID to resync partially.
            if follow.is_none() {
                s.replid2 = Some((s.replid, s.offset()));
                s.replid = fresh_replid;
            }
        } else {
            s.data.clear();
            s.arrived.clear();
            s.replid = fresh_replid;
            s.replid2 = None;
            s.lineage = lineage;
        }
        s.role = if follow.is_some() {
            Role::Replica
        } else {
            Role::Master
        };
        s.master = follow;
        s.link = if follow.is_some() {
            Link::Connecting
        } else {
            Link::None
        };
        let what = match (keep_data, follow.is_some()) {
            (true, true) => "with its data, as a replica",
            (true, false) => "with its data, as a master",
            (false, true) => "empty, as a replica",
            (false, false) => "empty, as a master",
        };
        self.note(format!("{}: restarted {what}", self.name(server)));
    }

    pub fn stall(&mut self, server: usize) {
        let now = self.now();
        self.servers[server].stalled_since.get_or_insert(now);
        self.master_hit(server);
        self.note(format!("{}: stalled (SIGSTOP)", self.name(server)));
    }

    /// SIGCONT: the commands that reached it meanwhile run now.
    pub fn resume(&mut self, server: usize) {
        if self.servers[server].stalled_since.take().is_none() {
            return;
        }
        self.note(format!("{}: resumed (SIGCONT)", self.name(server)));
        let pending = std::mem::take(&mut self.servers[server].pending);
        for command in pending {
            self.apply(server, command);
        }
    }
}

/// Moves replication and the writer along every `TICK` until shut down.
pub(super) async fn ticker(world: Shared, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = every.tick() => lock(&world).tick(),
        }
    }
}
