//! The publication store (the RedisPair's annotation, or any authority) and the lease, as a
//! [`Publisher`]: a conditional write on the epoch it replaces, and `read` that returns the
//! truth. Faults: slow calls (up to 95 % of the deadline each), writes that fail (not
//! applied), writes whose answer is lost (applied at once, `Unknown` after the deadline),
//! reads that fail, and the lease lost and regained. What it holds is what every proxy (the
//! writer) follows.

use std::time::Duration;

use super::STORE_DEADLINE;
use super::world::{Shared, World, lock};
use crate::engine::model::{Endpoint, Published, Reason};
use crate::engine::publish::{PublishError, Publisher};

#[derive(Default)]
pub(super) struct Store {
    /// The truth: what proxies follow.
    pub published: Published,
    /// The lineage of the data the last published master held (invariants).
    pub lineage: Option<u64>,
    /// Every publication applied: (epoch, master, reason).
    pub history: Vec<(u64, Option<Endpoint>, Reason)>,
    /// Calls are slow until then.
    pub slow_until: Option<Duration>,
    pub fail_writes: u32,
    pub lose_answers: u32,
    pub fail_reads: u32,
}

pub(super) struct SimStore {
    world: Shared,
}

impl SimStore {
    pub fn new(world: Shared) -> Self {
        Self { world }
    }

    fn latency(&self) -> Duration {
        let mut world = lock(&self.world);
        let now = world.now();
        if world.store.slow_until.is_some_and(|until| now < until) {
            world
                .rng
                .between(STORE_DEADLINE / 2, STORE_DEADLINE * 95 / 100)
        } else {
            world
                .rng
                .between(Duration::from_millis(1), Duration::from_millis(10))
        }
    }
}

/// Takes one of the `count` faults left, if any.
fn take(count: &mut u32) -> bool {
    let some = *count > 0;
    *count = count.saturating_sub(1);
    some
}

impl Publisher for SimStore {
    fn may_act(&self) -> bool {
        lock(&self.world).lease
    }

    async fn retract(&self, old: &Endpoint) -> Result<(), PublishError> {
        tokio::time::sleep(self.latency()).await;
        let mut world = lock(&self.world);
        if take(&mut world.store.fail_writes) {
            world.note(format!("store: retracting {old} failed"));
            return Err(PublishError::Failed("simulated retract failure".into()));
        }
        Ok(())
    }

    async fn publish(
        &self,
        current: &Published,
        next: &Published,
        reason: Reason,
    ) -> Result<(), PublishError> {
        let latency = self.latency();
        tokio::time::sleep(latency).await;
        let lost = {
            let mut world = lock(&self.world);
            if take(&mut world.store.fail_writes) {
                world.note(format!("store: publishing epoch {} failed", next.epoch));
                return Err(PublishError::Failed("simulated write failure".into()));
            }
            let stored = &world.store.published;
            if (stored.epoch, &stored.master) != (current.epoch, &current.master) {
                let newer = stored.clone();
                world.note(format!(
                    "store: epoch {} superseded by epoch {}",
                    next.epoch, newer.epoch
                ));
                return Err(PublishError::Superseded(newer));
            }
            apply(&mut world, next, reason);
            take(&mut world.store.lose_answers)
        };
        if lost {
            lock(&self.world).note(format!("store: answer of epoch {} lost", next.epoch));
            tokio::time::sleep(STORE_DEADLINE.saturating_sub(latency)).await;
            return Err(PublishError::Unknown("simulated lost answer".into()));
        }
        Ok(())
    }

    async fn read(&self) -> Result<Published, PublishError> {
        tokio::time::sleep(self.latency()).await;
        let mut world = lock(&self.world);
        if take(&mut world.store.fail_reads) {
            world.note("store: read failed");
            return Err(PublishError::Failed("simulated read failure".into()));
        }
        Ok(world.store.published.clone())
    }

    fn deadline(&self) -> Duration {
        STORE_DEADLINE
    }
}

/// Makes `next` the publication, after the invariants judged the move.
fn apply(world: &mut World, next: &Published, reason: Reason) {
    super::invariants::on_publication(world, next, reason);
    let show = next
        .master
        .as_ref()
        .map_or_else(|| "none".to_owned(), |m| m.host().to_owned());
    world.note(format!(
        "store: epoch {} master {show} ({})",
        next.epoch,
        reason.as_str()
    ));
    world
        .store
        .history
        .push((next.epoch, next.master.clone(), reason));
    let lineage = next
        .master
        .as_ref()
        .and_then(|m| world.index(m))
        .map(|m| world.servers[m].lineage);
    if lineage.is_some() {
        world.store.lineage = lineage;
    }
    world.store.published = next.clone();
}
