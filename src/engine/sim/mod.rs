//! A deterministic simulation of the failover engine, in the manner of FoundationDB's and
//! TigerBeetle's: the real runner ([`Engine`], with the real `decide`) runs against a model of
//! Redis replication and of the publication store, on tokio's paused clock, driven by seeded
//! random fault schedules. After every step the invariants of the product are checked; a
//! failing seed replays exactly (one RNG, one thread, virtual time, no wall clock read by the
//! model).
//!
//! # Layout
//! - `world`: the shared state behind one lock (servers, store, writes, lease, RNG, trace).
//! - `redis`: the Redis model: replication IDs and offsets, asynchronous streams, partial and
//!   full resync, `REPLICAOF`, `CLIENT PAUSE`, `min-replicas-to-write`, restarts, kills.
//! - `redis_ops`: [`crate::engine::RedisOps`] over the model: latency, timeouts, calls that
//!   time out but were applied, stalled and partitioned servers.
//! - `store`: [`crate::engine::Publisher`] over the model: the conditional publication, slow,
//!   failed and applied-but-unanswered writes, the lease.
//! - `clients`: the writer that follows the newest publication and records what was
//!   acknowledged, by whom, under which epoch.
//! - `schedule`: the seeded fault schedules (single faults and the combinations of issue 14).
//! - `invariants`: the checks, each with a message that says what broke.
//! - `tests`: the schedules run by `cargo test --lib sim`, the replay and the soak.
//!
//! # One run
//! ```text
//!  seed → schedule (faults at virtual times)
//!    → world: three servers (s0 master, s1 s2 replicas) with data, epoch 1 published
//!    → engine, ticker (replication and a write every 100 ms), fault driver, one thread
//!    → fault phase (30 s virtual), heal everything, quiet period (25 s virtual)
//!    → invariants after every event and once the dust settled
//! ```

mod clients;
mod invariants;
mod redis;
mod redis_ops;
mod schedule;
mod store;
#[cfg(test)]
mod tests;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::decide::{Fencing, Policy};
use super::model::Published;
use super::runner::{Engine, EngineConfig, EngineHandle, Member};
use crate::metrics::EngineMetrics;
use schedule::Schedule;
use world::{Shared, World, lock};

/// How often the engine probes (the chart's default).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// One Redis call's deadline (the probe timeout).
const REDIS_DEADLINE: Duration = Duration::from_millis(250);
const DOWN_AFTER: Duration = Duration::from_secs(5);
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// `min-replicas-max-lag` the engine keeps (the chart's default).
const MAX_LAG_SECS: u32 = 2;
/// One publication store call's deadline (the controller's write timeout).
const STORE_DEADLINE: Duration = Duration::from_secs(5);
/// Redis's `repl-timeout`: how long a silently cut link still looks up.
const REPL_TIMEOUT: Duration = Duration::from_secs(60);
/// How far behind (in writes) a replica may be and still resync partially.
const BACKLOG: u64 = 40;
/// How often the model moves replication streams and acknowledgements along, and the
/// writer sends a write.
const TICK: Duration = Duration::from_millis(100);
const FAULT_PHASE: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(25);

/// What one schedule did.
struct Outcome {
    pub seed: u64,
    pub schedule: Schedule,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub acked: usize,
    /// Virtual time from a fault on the published master to the next acknowledged write.
    pub slowest_recovery: Duration,
}

impl Outcome {
    /// Everything needed to understand a failure: the seed, the faults, what happened.
    pub fn report(&self) -> String {
        format!(
            "seed {} (replay: SIM_SEED={} cargo test --lib sim::tests::soak -- --ignored \
             --nocapture)\nschedule:\n{}\nviolations:\n  {}\ntrace:\n  {}",
            self.seed,
            self.seed,
            self.schedule,
            self.violations.join("\n  "),
            self.trace.join("\n  ")
        )
    }
}

/// Runs the schedule of `seed` on its own single-threaded runtime with a paused clock.
fn run(seed: u64) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => panic!("cannot build the simulation's runtime: {error}"),
    };
    runtime.block_on(simulate(seed))
}

async fn simulate(seed: u64) -> Outcome {
    let schedule = Schedule::generate(seed);
    let world: Shared = Arc::new(Mutex::new(World::new(seed, &schedule)));
    let published = lock(&world).store.published.clone();
    let config = EngineConfig {
        members: members(&world, &[]),
        policy: Policy {
            down_after: DOWN_AFTER,
            fencing: Fencing::On {
                max_lag_secs: MAX_LAG_SECS,
            },
        },
        probe_interval: PROBE_INTERVAL,
        switchover_timeout: SWITCHOVER_TIMEOUT,
        published,
        paused: false,
    };
    let (engine, handle) = Engine::new(
        config,
        redis_ops::SimRedis::new(world.clone()),
        EngineMetrics::default(),
        store::SimStore::new(world.clone()),
    );
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let tasks = [
        tokio::spawn(engine.run(shutdown.clone())),
        tokio::spawn(redis::ticker(world.clone(), shutdown.clone())),
    ];
    schedule::drive(&world, &handle, &schedule, start).await;
    tokio::time::sleep_until(start + FAULT_PHASE).await;
    schedule::heal_all(&world, &handle).await;
    tokio::time::sleep(QUIET).await;
    invariants::settled(&world).await;
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let mut world = lock(&world);
    Outcome {
        seed,
        schedule,
        violations: std::mem::take(&mut world.violations),
        trace: std::mem::take(&mut world.trace),
        acked: world.writes.acked.len(),
        slowest_recovery: world.writes.slowest_recovery,
    }
}

/// The engine's members; those in `leaving` are going away.
fn members(world: &Shared, leaving: &[usize]) -> Vec<Member> {
    lock(world)
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| Member {
            endpoint: s.endpoint.clone(),
            addrs: Vec::new(),
            leaving: leaving.contains(&i),
        })
        .collect()
}

/// Tells the engine which members are leaving now.
fn set_leaving(world: &Shared, handle: &EngineHandle, leaving: &[usize]) {
    handle.set_members(members(world, leaving));
}

/// What the store holds at the start: the pair has been running, s0 published under epoch 1.
fn initial_publication(world: &World) -> Published {
    let master = &world.servers[0];
    Published {
        epoch: 1,
        master: Some(master.endpoint.clone()),
        run_id: Some(master.run_id.clone()),
        replid: Some(redis::replid_text(master.replid)),
        replid2: None,
    }
}
