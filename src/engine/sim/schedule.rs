//! Seeded fault schedules: which faults hit which server when, generated from one seed.
//!
//! A schedule is a few *episodes* (the combinations that broke redis-pair before, issue 14)
//! and single faults, at random times in the fault phase. Targets are named by role
//! ([`Who::Master`]: whoever is published when the fault fires), so a schedule means the same
//! thing whatever the engine did before it. A fault that lasts (a stall, a cut) heals itself
//! after its time; everything left is healed at the end of the fault phase.

use std::fmt;
use std::time::Duration;

use super::redis::Link;
use super::world::{Rng, Shared, World, lock};
use super::{FAULT_PHASE, set_leaving};
use crate::engine::model::{Endpoint, Role};
use crate::engine::runner::EngineHandle;

/// A server, by role when the fault fires.
#[derive(Clone, Copy, Debug)]
pub(super) enum Who {
    /// The published master (or, with none published, the first running master).
    Master,
    /// The k-th other server, in address order.
    Replica(usize),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    /// SIGKILL; restarted after a while when `restart` says so (else at the heal).
    Kill {
        who: Who,
        restart: Option<(Duration, Restart)>,
    },
    /// The process restarts now.
    Restart(Who, Restart),
    /// SIGSTOP for a while.
    Stall(Who, Duration),
    /// The engine cannot reach it for a while (clients and replicas can).
    Partition(Who, Duration),
    /// Its replication link is cut silently for a while.
    Cut(Who, Duration),
    /// Its replication connection is reset: it reconnects and resyncs (partially if the
    /// master's backlog still covers what it missed).
    LinkReset(Who),
    /// Its replication stream runs this far behind for a while.
    Lag(Who, Duration, Duration),
    /// At `maxclients` for a while.
    MaxClients(Who, Duration),
    /// Every publication store call is slow for a while.
    StoreSlow(Duration),
    /// The next store writes fail.
    StoreFail(u32),
    /// The next publications are applied but their answer is lost.
    LoseAnswer(u32),
    /// The next reads of the publication fail.
    ReadFail(u32),
    /// The lease is lost for a while.
    LeaseLost(Duration),
    /// A planned switchover is requested (to this server, or the engine's choice).
    Switchover(Option<Who>),
    /// The server is leaving (its pod is being deleted); deleted after a while when set: it
    /// is killed and a replacement comes back empty.
    Leave(Who, Option<Duration>),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Restart {
    pub keep_data: bool,
    pub as_replica: bool,
}

pub(super) struct Schedule {
    pub servers: usize,
    pub initial_writes: u64,
    pub episodes: Vec<&'static str>,
    pub faults: Vec<(Duration, Fault)>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} servers, episodes: {}",
            self.servers,
            self.episodes.join(", ")
        )?;
        for (at, fault) in &self.faults {
            writeln!(f, "  at {:>7.3}s {fault:?}", at.as_secs_f64())?;
        }
        Ok(())
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const EPISODES: [&str; 10] = [
    "master hang + replica restart without data",
    "replica silently cut + up-to-date replica slow + master kill",
    "publication answer lost during a failover",
    "switchover with a slow store",
    "switchover with a lost publication answer",
    "lease lost mid-move",
    "rolling restart (members leaving)",
    "replica cut off (fencing)",
    "master hang during a replica's full sync",
    "random faults",
];

impl Schedule {
    pub fn generate(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let servers = if rng.chance(30) { 2 } else { 3 };
        let mut schedule = Schedule {
            servers,
            initial_writes: 20 + rng.below(50),
            episodes: Vec::new(),
            faults: Vec::new(),
        };
        for _ in 0..1 + rng.below(2) {
            let episode = usize::try_from(rng.below(EPISODES.len() as u64)).unwrap_or(0);
            let start = rng.between(secs(1.0), secs(20.0));
            schedule.episodes.push(EPISODES[episode]);
            for (offset, fault) in episode_faults(&mut rng, episode, servers) {
                schedule.faults.push((start + offset, fault));
            }
        }
        for _ in 0..rng.below(3) {
            let at = rng.between(secs(1.0), FAULT_PHASE - secs(2.0));
            let fault = random_fault(&mut rng);
            schedule.faults.push((at, fault));
        }
        schedule.faults.sort_by_key(|(at, _)| *at);
        schedule
    }
}

fn episode_faults(rng: &mut Rng, episode: usize, servers: usize) -> Vec<(Duration, Fault)> {
    let other = servers - 1;
    let restart = |rng: &mut Rng| Restart {
        keep_data: rng.chance(60),
        as_replica: rng.chance(50),
    };
    match episode {
        0 => {
            let mut faults = vec![(
                Duration::ZERO,
                Fault::Stall(Who::Master, rng.between(secs(6.0), secs(20.0))),
            )];
            for k in 0..other {
                let empty = Restart {
                    keep_data: false,
                    as_replica: rng.chance(30),
                };
                faults.push((
                    rng.between(secs(0.2), secs(3.0)),
                    Fault::Restart(Who::Replica(k), empty),
                ));
            }
            faults
        }
        1 => {
            let at = rng.between(secs(1.0), secs(5.0));
            vec![
                (
                    Duration::ZERO,
                    Fault::Cut(Who::Replica(other - 1), secs(25.0)),
                ),
                (
                    at,
                    Fault::Stall(Who::Replica(0), rng.between(secs(0.3), secs(2.5))),
                ),
                (
                    at + rng.between(secs(0.05), secs(0.3)),
                    Fault::Kill {
                        who: Who::Master,
                        restart: Some((rng.between(secs(1.0), secs(8.0)), restart(rng))),
                    },
                ),
            ]
        }
        2 => vec![
            (Duration::ZERO, Fault::LoseAnswer(1 + rng.below(2) as u32)),
            if rng.chance(50) {
                (
                    secs(0.1),
                    Fault::Stall(Who::Master, rng.between(secs(5.5), secs(12.0))),
                )
            } else {
                (
                    secs(0.1),
                    Fault::Kill {
                        who: Who::Master,
                        restart: Some((rng.between(secs(0.5), secs(6.0)), restart(rng))),
                    },
                )
            },
        ],
        3 => vec![
            (
                Duration::ZERO,
                Fault::StoreSlow(rng.between(secs(5.0), secs(25.0))),
            ),
            (secs(0.1), Fault::Switchover(None)),
        ],
        4 => vec![
            (Duration::ZERO, Fault::LoseAnswer(1)),
            (secs(0.1), Fault::Switchover(None)),
        ],
        5 => vec![
            (
                Duration::ZERO,
                Fault::StoreSlow(rng.between(secs(5.0), secs(15.0))),
            ),
            if rng.chance(50) {
                (secs(0.1), Fault::Switchover(None))
            } else {
                (
                    secs(0.1),
                    Fault::Kill {
                        who: Who::Master,
                        restart: None,
                    },
                )
            },
            (
                rng.between(secs(0.5), secs(7.0)),
                Fault::LeaseLost(rng.between(secs(0.5), secs(6.0))),
            ),
        ],
        6 => {
            let replica = Who::Replica(rng.below(other as u64) as usize);
            vec![
                (
                    Duration::ZERO,
                    Fault::Leave(replica, Some(rng.between(secs(0.5), secs(3.0)))),
                ),
                (
                    rng.between(secs(2.0), secs(9.0)),
                    Fault::Leave(Who::Master, Some(rng.between(secs(1.0), secs(8.0)))),
                ),
            ]
        }
        7 => {
            let mut faults = Vec::new();
            for k in 0..other {
                if rng.chance(70) {
                    let length = rng.between(secs(4.0), secs(25.0));
                    faults.push((Duration::ZERO, Fault::Cut(Who::Replica(k), length)));
                }
            }
            faults
        }
        8 => {
            // Cut long enough to overflow the backlog, then the master hangs while the replica
            // full-syncs; with three servers the other replica is gone too.
            // (The fence refuses writes for the first seconds of the cut: 8 s and more leave
            // enough writes behind to overflow the backlog.)
            let cut = rng.between(secs(8.0), secs(12.0));
            let mut faults = vec![
                (Duration::ZERO, Fault::Cut(Who::Replica(0), cut)),
                (cut + secs(0.05), Fault::LinkReset(Who::Replica(0))),
            ];
            if other > 1 {
                faults.push((
                    cut,
                    Fault::Kill {
                        who: Who::Replica(1),
                        restart: None,
                    },
                ));
            }
            faults.push((
                cut + rng.between(secs(0.1), secs(0.4)),
                Fault::Stall(Who::Master, rng.between(secs(6.0), secs(12.0))),
            ));
            faults
        }
        _ => (0..1 + rng.below(3))
            .map(|_| (rng.between(Duration::ZERO, secs(8.0)), random_fault(rng)))
            .collect(),
    }
}

fn random_fault(rng: &mut Rng) -> Fault {
    let who = if rng.chance(50) {
        Who::Master
    } else {
        Who::Replica(rng.below(2) as usize)
    };
    let short_or_long = |rng: &mut Rng| {
        if rng.chance(50) {
            rng.between(secs(0.2), secs(3.0))
        } else {
            rng.between(secs(3.0), secs(15.0))
        }
    };
    match rng.below(13) {
        0 => Fault::Kill {
            who,
            restart: rng.chance(70).then(|| {
                (
                    rng.between(secs(0.5), secs(8.0)),
                    Restart {
                        keep_data: rng.chance(60),
                        as_replica: rng.chance(50),
                    },
                )
            }),
        },
        1 => Fault::Restart(
            who,
            Restart {
                keep_data: rng.chance(60),
                as_replica: rng.chance(50),
            },
        ),
        2 => Fault::Stall(who, short_or_long(rng)),
        3 => Fault::Partition(who, short_or_long(rng)),
        4 => Fault::Cut(Who::Replica(rng.below(2) as usize), short_or_long(rng)),
        5 => Fault::Lag(
            Who::Replica(rng.below(2) as usize),
            rng.between(secs(0.2), secs(3.0)),
            short_or_long(rng),
        ),
        6 => Fault::MaxClients(who, short_or_long(rng)),
        7 => Fault::StoreSlow(short_or_long(rng)),
        8 => Fault::StoreFail(1 + rng.below(3) as u32),
        9 => Fault::LoseAnswer(1),
        10 => Fault::ReadFail(1 + rng.below(3) as u32),
        11 => Fault::LeaseLost(short_or_long(rng)),
        _ => Fault::Switchover(
            rng.chance(50)
                .then_some(Who::Replica(rng.below(2) as usize)),
        ),
    }
}

/// The server `who` names now.
fn resolve(world: &World, who: Who) -> usize {
    let master = world.published_master().unwrap_or_else(|| {
        world
            .servers
            .iter()
            .position(|s| s.running && s.role == Role::Master)
            .unwrap_or(0)
    });
    match who {
        Who::Master => master,
        Who::Replica(k) => {
            let others: Vec<usize> = (0..world.servers.len()).filter(|i| *i != master).collect();
            others[k % others.len()]
        }
    }
}

/// Fires every fault of `schedule` at its time (from `start`).
pub(super) async fn drive(
    world: &Shared,
    handle: &EngineHandle,
    schedule: &Schedule,
    start: tokio::time::Instant,
) {
    for (at, fault) in &schedule.faults {
        tokio::time::sleep_until(start + *at).await;
        inject(world, handle, *fault);
    }
}

/// Runs `then` on the world after `after`, unless everything was healed meanwhile.
fn later(world: &Shared, after: Duration, then: impl FnOnce(&mut World) + Send + 'static) {
    let world = world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let mut world = lock(&world);
        if !world.healed {
            then(&mut world);
        }
    });
}

fn inject(world_ref: &Shared, handle: &EngineHandle, fault: Fault) {
    let mut world = lock(world_ref);
    world.note(format!("FAULT {fault:?}"));
    let now = world.now();
    match fault {
        Fault::Kill { who, restart } => {
            let server = resolve(&world, who);
            world.kill(server);
            if let Some((after, how)) = restart {
                later(world_ref, after, move |w| {
                    w.restart(server, how.keep_data, how.as_replica)
                });
            }
        }
        Fault::Restart(who, how) => {
            let server = resolve(&world, who);
            world.kill(server);
            world.restart(server, how.keep_data, how.as_replica);
        }
        Fault::Stall(who, length) => {
            let server = resolve(&world, who);
            world.stall(server);
            later(world_ref, length, move |w| w.resume(server));
        }
        Fault::Partition(who, length) => {
            let server = resolve(&world, who);
            world.servers[server].partitioned_since.get_or_insert(now);
            later(world_ref, length, move |w| {
                w.servers[server].partitioned_since = None;
            });
        }
        Fault::Cut(who, length) => {
            let server = resolve(&world, who);
            world.servers[server].cut = true;
            later(world_ref, length, move |w| w.servers[server].cut = false);
        }
        Fault::LinkReset(who) => {
            let server = resolve(&world, who);
            let s = &mut world.servers[server];
            if s.role == Role::Replica && s.link != Link::None {
                s.link = Link::Connecting;
            }
        }
        Fault::Lag(who, delay, length) => {
            let server = resolve(&world, who);
            let normal = world.servers[server].delay;
            world.servers[server].delay = delay;
            later(world_ref, length, move |w| w.servers[server].delay = normal);
        }
        Fault::MaxClients(who, length) => {
            let server = resolve(&world, who);
            world.servers[server].full = true;
            later(world_ref, length, move |w| w.servers[server].full = false);
        }
        Fault::StoreSlow(length) => world.store.slow_until = Some(now + length),
        Fault::StoreFail(count) => world.store.fail_writes += count,
        Fault::LoseAnswer(count) => world.store.lose_answers += count,
        Fault::ReadFail(count) => world.store.fail_reads += count,
        Fault::LeaseLost(length) => {
            world.lease = false;
            later(world_ref, length, |w| w.lease = true);
        }
        Fault::Switchover(to) => {
            let target: Option<Endpoint> =
                to.map(|who| world.servers[resolve(&world, who)].endpoint.clone());
            let (handle, world) = (handle.clone(), world_ref.clone());
            tokio::spawn(async move {
                let result = handle.switchover(target).await;
                let said = match result {
                    Ok(published) => format!("switchover done: epoch {}", published.epoch),
                    Err(error) => format!("switchover refused or failed: {error}"),
                };
                lock(&world).note(said);
            });
        }
        Fault::Leave(who, deleted_after) => {
            let server = resolve(&world, who);
            world.leaving[server] = true;
            let leaving = leaving_list(&world);
            drop(world);
            set_leaving(world_ref, handle, &leaving);
            if let Some(after) = deleted_after {
                replace_later(world_ref, handle, server, after);
            }
        }
    }
}

fn leaving_list(world: &World) -> Vec<usize> {
    (0..world.leaving.len())
        .filter(|i| world.leaving[*i])
        .collect()
}

/// The leaving pod is deleted after `after`; its replacement comes back empty and staying.
fn replace_later(world_ref: &Shared, handle: &EngineHandle, server: usize, after: Duration) {
    let (world, handle) = (world_ref.clone(), handle.clone());
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let back_after = {
            let mut w = lock(&world);
            if w.healed {
                return;
            }
            w.kill(server);
            w.rng.between(secs(1.0), secs(3.0))
        };
        tokio::time::sleep(back_after).await;
        let leaving = {
            let mut w = lock(&world);
            if w.healed {
                return;
            }
            w.restart(server, false, false);
            w.leaving[server] = false;
            leaving_list(&w)
        };
        set_leaving(&world, &handle, &leaving);
    });
}

/// The end of the fault phase: every fault heals, killed servers come back with their data.
pub(super) async fn heal_all(world_ref: &Shared, handle: &EngineHandle) {
    {
        let mut world = lock(world_ref);
        world.healed = true;
        world.note("HEAL everything");
        for server in 0..world.servers.len() {
            world.resume(server);
            let s = &mut world.servers[server];
            s.partitioned_since = None;
            s.cut = false;
            s.full = false;
            s.delay = s.delay.min(Duration::from_millis(100));
            if !s.running {
                world.restart(server, true, false);
            }
        }
        world.store.slow_until = None;
        world.store.fail_writes = 0;
        world.store.lose_answers = 0;
        world.store.fail_reads = 0;
        world.lease = true;
        world.leaving.iter_mut().for_each(|l| *l = false);
    }
    set_leaving(world_ref, handle, &[]);
}
