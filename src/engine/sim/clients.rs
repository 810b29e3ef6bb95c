//! The writer: what every application behind a sidecar does. Every tick it sends a
//! write with a unique id to the server the newest publication names, if that server answers
//! as master (the sidecar's check). A write waits while the server is paused or stalled, up
//! to the client's timeout (then its outcome is unknown and it is dropped: the client closed
//! the connection). What was acknowledged, by whom and under which epoch, is recorded for the
//! invariants.

use std::time::Duration;

use super::world::{Ack, World};
use crate::engine::model::Role;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// One step of the writer, every tick (the writer runs on the model's ticker: one event
/// source fewer keeps a schedule cheap): the write under way waits or ends, else a new one is
/// sent.
pub(super) fn step(world: &mut World) {
    let mut write = match world.writer.take() {
        Some(write) => write,
        None => {
            let Some(server) = world.published_master() else {
                return;
            };
            Pending {
                server,
                routed_epoch: world.store.published.epoch,
                sent: world.now(),
                incarnation: *world.servers[server].incarnation.borrow(),
                through_stall: false,
            }
        }
    };
    if let Attempt::Wait = attempt(world, &mut write) {
        world.writer = Some(write);
    }
}

/// A write on its way: where it went, under which publication, on which connection.
pub(super) struct Pending {
    server: usize,
    routed_epoch: u64,
    sent: Duration,
    /// The process the connection reached: a restart closes it and fails the write.
    incarnation: u64,
    /// It waited while the server was stalled (SIGSTOP).
    through_stall: bool,
}

enum Attempt {
    Done,
    Wait,
}

fn attempt(world: &mut World, write: &mut Pending) -> Attempt {
    let now = world.now();
    let server = write.server;
    let s = &world.servers[server];
    if !s.running || *s.incarnation.borrow() != write.incarnation {
        world.writes.refused += 1;
        return Attempt::Done;
    }
    if s.stalled_since.is_some() || s.paused(now) {
        if now.saturating_sub(write.sent) >= CLIENT_TIMEOUT {
            world.writes.unknown += 1;
            return Attempt::Done;
        }
        write.through_stall |= s.stalled_since.is_some();
        return Attempt::Wait;
    }
    if s.role != Role::Master || world.refuses_writes(server, now) {
        // READONLY or NOREPLICAS: an error the client sees, nothing acknowledged.
        world.writes.refused += 1;
        return Attempt::Done;
    }
    let id = world.fresh_id();
    let s = &mut world.servers[server];
    s.data.push(id);
    s.arrived.push(now);
    let ack = Ack {
        id,
        server,
        routed_epoch: write.routed_epoch,
        at: now,
        through_stall: write.through_stall,
    };
    super::invariants::on_ack(world, &ack);
    if let Some(since) = world.writes.outage_since.take() {
        let took = now.saturating_sub(since);
        world.writes.slowest_recovery = world.writes.slowest_recovery.max(took);
    }
    world.writes.acked.push(ack);
    Attempt::Done
}
