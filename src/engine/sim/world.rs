//! The simulated world behind one lock: the servers, the publication store, what the writer
//! saw acknowledged, the lease, the one random source, the violations found and a trace of
//! what happened (printed with a failing seed). Never held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::redis::Server;
use super::schedule::Schedule;
use super::store::Store;
use crate::engine::model::Endpoint;

pub(super) type Shared = Arc<Mutex<World>>;

pub(super) fn lock(world: &Shared) -> MutexGuard<'_, World> {
    // A panic under the lock already failed the run; the poison adds nothing.
    world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SplitMix64: tiny, fast, and all the randomness of a run comes from it.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `[from, to)` at millisecond resolution.
    pub fn between(&mut self, from: Duration, to: Duration) -> Duration {
        let span = to.saturating_sub(from).as_millis().max(1);
        from + Duration::from_millis(self.below(u64::try_from(span).unwrap_or(u64::MAX)))
    }
}

/// One write the writer saw acknowledged.
#[derive(Clone, Debug)]
pub(super) struct Ack {
    pub id: u64,
    pub server: usize,
    /// The epoch of the publication the writer followed when it sent the write.
    pub routed_epoch: u64,
    pub at: Duration,
    /// It waited while the server was stalled: a hung master that resumes answers what it
    /// had received (only its fence can refuse it).
    pub through_stall: bool,
}

#[derive(Default)]
pub(super) struct Writes {
    pub acked: Vec<Ack>,
    pub refused: u64,
    pub unknown: u64,
    /// A fault hit the published master at this time and no write was acknowledged since.
    pub outage_since: Option<Duration>,
    pub slowest_recovery: Duration,
}

pub(super) struct World {
    pub start: Instant,
    pub rng: Rng,
    pub servers: Vec<Server>,
    pub store: Store,
    pub writes: Writes,
    /// The writer's write under way, if any.
    pub writer: Option<super::clients::Pending>,
    /// What `Publisher::may_act` answers.
    pub lease: bool,
    /// Members the engine was told are leaving.
    pub leaving: Vec<bool>,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// When the published master began refusing writes while the engine reached it, and
    /// whether that was reported.
    pub fenced_since: Option<(Duration, bool)>,
    /// The fault phase is over: faults still scheduled to fire do not.
    pub healed: bool,
    next_id: u64,
}

impl World {
    pub fn new(seed: u64, schedule: &Schedule) -> Self {
        let mut world = World {
            start: Instant::now(),
            rng: Rng::new(seed ^ 0x005E_ED0F_5EED),
            servers: Vec::new(),
            store: Store::default(),
            writes: Writes::default(),
            writer: None,
            lease: true,
            leaving: vec![false; schedule.servers],
            violations: Vec::new(),
            trace: Vec::new(),
            fenced_since: None,
            healed: false,
            next_id: 0,
        };
        world.populate(schedule.servers, schedule.initial_writes);
        world.store.published = super::initial_publication(&world);
        world.store.lineage = Some(world.servers[0].lineage);
        world
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A fresh identifier: run_ids, replication IDs, lineages and write ids never repeat.
    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn note(&mut self, what: impl AsRef<str>) {
        let now = self.now().as_secs_f64();
        self.trace.push(format!("{now:>8.3}s {}", what.as_ref()));
    }

    pub fn violation(&mut self, what: impl AsRef<str>) {
        let now = self.now().as_secs_f64();
        let line = format!("{now:>8.3}s {}", what.as_ref());
        self.trace.push(format!("VIOLATION {line}"));
        self.violations.push(line);
    }

    pub fn index(&self, endpoint: &Endpoint) -> Option<usize> {
        self.servers.iter().position(|s| &s.endpoint == endpoint)
    }

    pub fn name(&self, server: usize) -> String {
        self.servers
            .get(server)
            .map_or_else(|| format!("#{server}"), |s| s.endpoint.host().to_owned())
    }

    /// The server the newest publication names.
    pub fn published_master(&self) -> Option<usize> {
        self.store
            .published
            .master
            .as_ref()
            .and_then(|m| self.index(m))
    }

    /// A fault hit the published master: recovery is timed from here.
    pub fn master_hit(&mut self, server: usize) {
        if self.published_master() == Some(server) && self.writes.outage_since.is_none() {
            self.writes.outage_since = Some(self.now());
        }
    }
}
