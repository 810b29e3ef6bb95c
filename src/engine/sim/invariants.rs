//! The promises redis-pair makes, checked as the world moves. Each check is called where the
//! event happens (a publication, an acknowledgement, a full sync, a tick) and says in its
//! message what broke.
//!
//! 1. Epochs only rise, and one epoch names one master.
//! 2. One master: a write routed under epoch `e` and acknowledged once a newer epoch names
//!    another server was acknowledged by a second master. (Except a write that waited on a
//!    hung server: what a hung master does when it resumes is its fence's business, and an
//!    unfenced master that lost its replicas is the price rule 7 pays for availability.)
//! 3. The data: a published master holds the published lineage while a running server still
//!    does; a server whose full sync is under way (its data is being replaced) is never
//!    published.
//! 4. No loss on planned moves: a switchover or hand-over publishes a master holding every
//!    acknowledged write.
//! 5. No loss in a failover when a promotable replica had the write: it held it, the engine
//!    could know (its probe or the master's view said so), and it was not down by the
//!    engine's own rule (`down_after`, less a probe interval of slack).
//! 6. The published master is never demoted while it is the newest publication in a way that
//!    wipes acknowledged writes held nowhere else.
//! 7. A master the engine reaches is not fenced for long (`-NOREPLICAS`) once its replicas
//!    stopped acknowledging: maxLag + one probe, with slack.
//! 8. Topology commands are sent only with the lease (checked in `redis_ops`).
//! 9. Once the dust settled: the published master answers as master and takes writes, and
//!    every running server replicates from it.

use std::collections::HashSet;
use std::time::Duration;

use super::world::{Ack, Shared, World, lock};
use super::{DOWN_AFTER, MAX_LAG_SECS, PROBE_INTERVAL};
use crate::engine::model::{Published, Reason, Role};

/// How long the master may refuse writes while the engine reaches it (invariant 7): Redis's
/// lag in whole seconds, a probe to notice, a round to act, and slack.
const FENCED_AT_MOST: Duration = Duration::from_secs(MAX_LAG_SECS as u64 + 6);

/// Invariants 1, 3, 4 and 5, judged as the store applies `next`.
pub(super) fn on_publication(world: &mut World, next: &Published, reason: Reason) {
    let previous = world.store.published.clone();
    // A refresh renames the same master's history under the same epoch: allowed, and only
    // that.
    let refresh = reason == Reason::Refreshed
        && next.epoch == previous.epoch
        && next.master == previous.master
        && next.run_id == previous.run_id;
    if next.epoch <= previous.epoch && !refresh {
        world.violation(format!(
            "epoch fell or repeated: {} published over {}",
            next.epoch, previous.epoch
        ));
    }
    if let Some((_, master, _)) = world
        .store
        .history
        .iter()
        .find(|(epoch, master, _)| *epoch == next.epoch && master != &next.master)
    {
        let master = master.clone();
        world.violation(format!(
            "epoch {} names two masters: {master:?} and {:?}",
            next.epoch, next.master
        ));
    }
    let Some(chosen) = next.master.as_ref().and_then(|m| world.index(m)) else {
        return;
    };
    if next.master == previous.master {
        return;
    }
    let name = world.name(chosen);
    if world.servers[chosen].syncing() {
        world.violation(format!(
            "{name} published as master while its full sync is in progress (its data is \
             being replaced)"
        ));
    }
    check_lineage(world, chosen);
    let held: HashSet<u64> = world.servers[chosen].data.iter().copied().collect();
    let missing: Vec<Ack> = world
        .writes
        .acked
        .iter()
        .filter(|a| !held.contains(&a.id))
        .cloned()
        .collect();
    if missing.is_empty() {
        return;
    }
    let old = previous.master.as_ref().and_then(|m| world.index(m));
    if matches!(reason, Reason::Switchover | Reason::MasterLeaving) {
        // Everything the old master holds moves; what an earlier failover lost is not this
        // move's doing.
        // The process that was published: one that restarted (empty, say) and took writes
        // meanwhile is a failover's business (rule 2), not the hand-over's.
        let on_old: HashSet<u64> = old
            .filter(|o| previous.run_id.as_deref() == Some(world.servers[*o].run_id.as_str()))
            .map(|o| world.servers[o].data.iter().copied().collect())
            .unwrap_or_default();
        let lost: Vec<&Ack> = missing.iter().filter(|a| on_old.contains(&a.id)).collect();
        if let Some(first) = lost.first() {
            world.violation(format!(
                "planned move ({}) to {name} loses {} acknowledged writes the old master \
                 holds (first: {})",
                reason.as_str(),
                lost.len(),
                describe(world, first)
            ));
        }
        return;
    }
    let lost: Vec<(Ack, usize)> = missing
        .iter()
        .filter_map(|ack| witness(world, ack, chosen, old).map(|w| (ack.clone(), w)))
        .collect();
    if let Some((first, holder)) = lost.first() {
        let holder = world.name(*holder);
        world.violation(format!(
            "failover ({}) to {name} loses {} acknowledged writes that {holder}, a promotable \
             replica known to hold them, had (first: {})",
            reason.as_str(),
            lost.len(),
            describe(world, first)
        ));
    }
}

/// Invariant 3: `chosen` holds the data the last publication named, unless nobody running
/// does any more.
fn check_lineage(world: &mut World, chosen: usize) {
    let Some(lineage) = world.store.lineage else {
        return;
    };
    if world.servers[chosen].lineage == lineage {
        return;
    }
    let holder = world
        .servers
        .iter()
        .find(|s| s.running && s.lineage == lineage && !s.data.is_empty())
        .map(|s| s.endpoint.host().to_owned());
    if let Some(holder) = holder {
        let name = world.name(chosen);
        world.violation(format!(
            "{name} published as master without the published data (another lineage) while \
             {holder} still holds it"
        ));
    }
}

/// A server other than `chosen` and the old master that had `ack`, could be known to, and
/// was promotable and not down by the engine's rule.
fn witness(world: &World, ack: &Ack, chosen: usize, old: Option<usize>) -> Option<usize> {
    let now = world.now();
    let slack = PROBE_INTERVAL + Duration::from_millis(500);
    world.servers.iter().enumerate().find_map(|(i, s)| {
        let position = s.data.iter().position(|id| *id == ack.id)? as u64;
        // Ahead on the chosen one's own branch: a server whose history forked from it (an
        // old master that kept its last writes) holds what an earlier failover lost.
        let ahead = s.data.starts_with(&world.servers[chosen].data);
        let fit = i != chosen
            && ahead
            && Some(i) != old
            && s.running
            && s.role == Role::Replica
            && s.synced
            && !s.syncing()
            && s.priority > 0
            && !world.leaving[i]
            && Some(s.lineage) == world.store.lineage
            && position < s.known()
            && s.failing_since()
                .is_none_or(|since| now.saturating_sub(since) + slack < DOWN_AFTER);
        fit.then_some(i)
    })
}

fn describe(world: &World, ack: &Ack) -> String {
    format!(
        "write {} acknowledged by {} at {:.3}s, routed under epoch {}",
        ack.id,
        world.name(ack.server),
        ack.at.as_secs_f64(),
        ack.routed_epoch
    )
}

/// Invariant 2, as `ack` is acknowledged.
pub(super) fn on_ack(world: &mut World, ack: &Ack) {
    let published = &world.store.published;
    if published.epoch > ack.routed_epoch
        && world.published_master() != Some(ack.server)
        && !ack.through_stall
    {
        let (epoch, text) = (published.epoch, describe(world, ack));
        world.violation(format!(
            "two masters: {text}, after epoch {epoch} moved the master elsewhere"
        ));
    }
}

/// Invariant 6: `replica` is about to be replaced by `master`'s data.
pub(super) fn before_full_sync(world: &mut World, replica: usize, master: usize) {
    let Some(epoch) = world.servers[replica].demoted_published else {
        return;
    };
    let incoming: HashSet<u64> = world.servers[master].data.iter().copied().collect();
    let elsewhere: HashSet<u64> = world
        .servers
        .iter()
        .enumerate()
        .filter(|(i, s)| *i != replica && s.running)
        .flat_map(|(_, s)| s.data.iter().copied())
        .collect();
    let held: HashSet<u64> = world.servers[replica].data.iter().copied().collect();
    let wiped: Vec<Ack> = world
        .writes
        .acked
        .iter()
        .filter(|a| held.contains(&a.id) && !incoming.contains(&a.id) && !elsewhere.contains(&a.id))
        .cloned()
        .collect();
    if let Some(first) = wiped.first() {
        let (name, from) = (world.name(replica), world.name(master));
        let text = describe(world, first);
        world.violation(format!(
            "{name} was demoted while it was the published master (epoch {epoch}); its full \
             sync from {from} wipes {} acknowledged writes held nowhere else (first: {text})",
            wiped.len()
        ));
    }
}

/// Invariant 7, every tick.
pub(super) fn periodic(world: &mut World, now: Duration) {
    let Some(master) = world.published_master() else {
        world.fenced_since = None;
        return;
    };
    let s = &world.servers[master];
    let store_busy = world
        .store
        .slow_until
        .is_some_and(|until| now < until + DOWN_AFTER)
        || world.store.fail_writes > 0;
    let engine_can_act = s.answers()
        && s.partitioned_since.is_none()
        && !s.full
        && s.role == Role::Master
        && !s.paused(now)
        && world.lease
        && !store_busy;
    if !(engine_can_act && world.refuses_writes(master, now)) {
        world.fenced_since = None;
        return;
    }
    let (since, reported) = world.fenced_since.get_or_insert((now, false));
    if now.saturating_sub(*since) >= FENCED_AT_MOST && !*reported {
        *reported = true;
        let name = world.name(master);
        world.violation(format!(
            "{name}, the published master, has refused writes (-NOREPLICAS) for {FENCED_AT_MOST:?} \
             although the engine reaches it: its replicas stopped acknowledging and the fence \
             stayed on"
        ));
    }
}

/// Invariant 9, once the dust settled.
pub(super) async fn settled(world: &Shared) {
    let mut world = lock(world);
    let now = world.now();
    let Some(master) = world.published_master() else {
        world.violation("settled: no master is published although every fault healed");
        return;
    };
    let name = world.name(master);
    let s = &world.servers[master];
    let problem = if !s.running {
        Some("is not running")
    } else if s.role != Role::Master {
        Some("answers as a replica")
    } else if s.paused(now) {
        Some("is still paused")
    } else if world.refuses_writes(master, now) {
        Some("refuses writes (-NOREPLICAS)")
    } else {
        None
    };
    if let Some(problem) = problem {
        world.violation(format!("settled: the published master {name} {problem}"));
    }
    let strays: Vec<String> = world
        .servers
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            *i != master
                && s.running
                && !(s.role == Role::Replica && s.master == Some(master) && s.link_up(now))
        })
        .map(|(_, s)| s.endpoint.host().to_owned())
        .collect();
    if !strays.is_empty() {
        world.violation(format!(
            "settled: {} do not replicate from the published master {name}",
            strays.join(", ")
        ));
    }
}
