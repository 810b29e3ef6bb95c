//! The planned switchover: hand the master over with no acknowledged write lost.
//!
//! ```text
//!  pause writes on the master (long enough for every step below, at its deadline)
//!    → wait until the target has the whole replication stream (else: unpause, abort)
//!    → the pause still covers the rest? (else pause again, or abort)
//!    → retract the master → promote the target → fence it → publish it
//!        published      → demote the old master → unpause it
//!        refused        → demote the target again → unpause the master (nothing routed to it)
//!        answer lost    → demote the old master anyway (the target may be published), then
//!                         read the publication back: the pair follows whichever stands
//! ```
//!
//! The old master is unpaused only once it is a replica (its waiting writes then fail with
//! READONLY instead of being acknowledged by a server that is no longer the master) or once
//! it is certain that nothing else was promoted and published. Both paths (requested through
//! the admin endpoint or the `switchover` annotation, and the hand-over of a leaving master)
//! run this, with the readiness rules of `decide::switchover_target`.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::Engine;
use super::handle::SwitchoverError;
use crate::engine::decide::{self, pause_holds, pause_length};
use crate::engine::model::{Endpoint, Probe, Published, Reason, Role};
use crate::engine::ops::RedisOps;
use crate::engine::publish::{EngineEvent, PublishError, Publisher};
use crate::metrics::Command;

impl<P: Publisher, R: RedisOps> Engine<P, R> {
    pub(super) async fn switchover(
        &mut self,
        wanted: Option<Endpoint>,
        reason: Reason,
    ) -> Result<Published, SwitchoverError> {
        if self.config.paused {
            return Err(SwitchoverError::Paused);
        }
        if !self.publisher.may_act() {
            return Err(SwitchoverError::NotLeader);
        }
        if self.unsettled.is_some() {
            return Err(SwitchoverError::PublicationUnknown);
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
        if let Some(wanted) = &wanted {
            if !self.servers.iter().any(|t| &t.member.endpoint == wanted) {
                return Err(SwitchoverError::UnknownTarget(wanted.clone()));
            }
            if wanted == &master {
                return Err(SwitchoverError::AlreadyMaster(master));
            }
        }
        let target =
            decide::switchover_target(&self.states(), &published, &master, wanted.as_ref())
                .map_err(|unfit| match (&wanted, unfit.first()) {
                    (Some(target), Some((_, why))) => SwitchoverError::TargetNotReady {
                        target: target.clone(),
                        why: *why,
                    },
                    _ => SwitchoverError::NoCandidate(unfit),
                })?;
        info!(from = %master, to = %target, "switchover: pausing writes on the master");
        self.publisher.record(EngineEvent::SwitchoverStarted {
            from: master.clone(),
            to: target.clone(),
        });
        let result = self.switch(&published, &master, &target, reason).await;
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
        reason: Reason,
    ) -> Result<Published, SwitchoverError> {
        let catch_up = self.config.switchover_timeout;
        let redis_deadline = self.redis.deadline();
        let api_deadline = self.publisher.deadline();
        let pause_for = pause_length(catch_up, redis_deadline, api_deadline);
        if !self.publisher.may_act() {
            return Err(SwitchoverError::NotLeader);
        }
        // Counted from before the command is sent: the server's pause ends no earlier.
        let mut pause_until = self.now() + pause_for;
        let paused = self.redis.pause_writes(master, pause_for).await;
        self.count(Command::PauseWrites, &paused);
        paused?;

        if let Err(error) = self.wait_for_catch_up(master, target, catch_up).await {
            self.unpause(master).await;
            return Err(error);
        }
        // Retract, promote, fence, publish, read back, demote: each may take its deadline.
        let remaining = api_deadline * 3 + redis_deadline * 3;
        if !pause_holds(pause_until, self.now(), remaining) {
            let again = remaining + Duration::from_secs(1);
            let from = self.now();
            let repaused = if self.publisher.may_act() {
                self.redis.pause_writes(master, again).await
            } else {
                Ok(())
            };
            self.count(Command::PauseWrites, &repaused);
            if repaused.is_err() || !self.publisher.may_act() {
                self.unpause(master).await;
                return Err(SwitchoverError::PauseTooShort);
            }
            pause_until = from + again;
        }
        debug!(left = ?pause_until.saturating_sub(self.now()), "switchover: pause holds");
        if !self.publisher.may_act() {
            self.unpause(master).await;
            return Err(SwitchoverError::NotLeader);
        }
        if !self.retract(master).await {
            self.unpause(master).await;
            return Err(SwitchoverError::Publish(
                "the old master could not be retracted".into(),
            ));
        }
        // The lease is checked right before the promotion: the retraction may have taken
        // its whole deadline. So may the target have changed (restarted, resynced) since it
        // caught up.
        if !self.publisher.may_act() {
            self.unpause(master).await;
            return Err(SwitchoverError::NotLeader);
        }
        if !self.still_as_decided(target).await {
            self.unpause(master).await;
            return Err(SwitchoverError::TargetChanged(target.clone()));
        }
        let promoted = self.redis.promote(target).await;
        self.count(Command::Promote, &promoted);
        if let Err(error) = promoted {
            // Nothing routes to the target; if the promotion ran after all, the rounds make
            // it a replica of the published master again.
            self.unpause(master).await;
            return Err(error.into());
        }
        let (replid, replid2) = match self.history_after_promotion(target).await {
            Some((replid, replid2)) => (Some(replid), replid2),
            // Not readable now: the history it was promoted from, which it continues.
            None => (published.replid.clone(), None),
        };
        let next = Published {
            epoch: published.epoch + 1,
            master: Some(target.clone()),
            run_id: self.run_id_of(target),
            replid,
            replid2,
        };
        let fence = self
            .info_of(target)
            .and_then(|info| decide::fence_for(info, &self.config.policy));
        if let Some(fence) = fence {
            self.set_fence(target, fence).await;
        }
        match self.publish_outcome(next.clone(), reason).await {
            Ok(()) => {}
            Err(PublishError::Unknown(why)) => {
                // The target may be what the proxies follow now: the old master must not
                // take another write, whichever publication stands.
                self.demote(master, target).await;
                if self.reread().await && self.published.borrow().master.as_ref() == Some(target) {
                    info!(from = %master, to = %target, "switchover complete (read back)");
                    return Ok(self.published.borrow().clone());
                }
                return Err(SwitchoverError::PublishUnknown(why));
            }
            Err(error) => {
                // Certainly not published: nobody was told of the target and no write reached
                // either server (the master is paused): undo the promotion.
                let undone = if self.publisher.may_act() {
                    self.redis.replicate(target, master).await
                } else {
                    Ok(())
                };
                self.count(Command::Replicate, &undone);
                self.unpause(master).await;
                return Err(SwitchoverError::Publish(match undone {
                    Ok(()) => error.to_string(),
                    Err(undo) => format!("{error}; demoting {target} again failed: {undo}"),
                }));
            }
        }
        // The old master holds the data until the target is known to still hold it too: a
        // target that restarted while it was being published must not be synced from.
        if !self.same_process(target).await {
            // It stays paused: the target is published, so it must not take writes; the next
            // round publishes it again (it holds the history the target continued) and
            // unpauses it then.
            return Err(SwitchoverError::TargetChanged(target.clone()));
        }
        self.demote(master, target).await;
        info!(from = %master, to = %target, epoch = next.epoch, "switchover complete");
        Ok(next)
    }

    /// Makes the old master a replica of the new one, then lets its paused writes go (they
    /// fail with READONLY). On failure the rounds retry; the pause is renewed meanwhile.
    async fn demote(&mut self, master: &Endpoint, target: &Endpoint) {
        if !self.publisher.may_act() {
            return;
        }
        let demoted = self.redis.replicate(master, target).await;
        self.count(Command::Replicate, &demoted);
        match demoted {
            Ok(()) => {
                self.publisher.record(EngineEvent::Repointed {
                    server: master.clone(),
                    master: target.clone(),
                    was_master: true,
                });
                self.unpause(master).await;
            }
            Err(error) => {
                warn!(server = %master, error = %error, "switchover: demoting the old master failed; will retry");
                let renewed = self
                    .redis
                    .pause_writes(
                        master,
                        self.config.probe_interval * 4 + self.redis.deadline(),
                    )
                    .await;
                self.count(Command::PauseWrites, &renewed);
            }
        }
    }

    pub(super) async fn unpause(&self, server: &Endpoint) {
        let unpaused = self.redis.unpause(server).await;
        self.count(Command::Unpause, &unpaused);
    }

    fn run_id_of(&self, server: &Endpoint) -> Option<String> {
        self.info_of(server).map(|info| info.run_id.clone())
    }

    /// Waits until `target` has processed the master's whole replication stream. Polling is
    /// the only way to learn a remote offset; the deadline bounds it.
    async fn wait_for_catch_up(
        &self,
        master: &Endpoint,
        target: &Endpoint,
        deadline: Duration,
    ) -> Result<(), SwitchoverError> {
        let started = tokio::time::Instant::now();
        // Writes are paused, so this offset is final.
        let master_offset = self.redis.offset(master).await?;
        loop {
            // A target that does not answer now may answer in a moment; only the deadline
            // ends the wait.
            match self.redis.offset(target).await {
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
