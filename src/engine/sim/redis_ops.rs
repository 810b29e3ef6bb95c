//! [`RedisOps`] over the model: what the engine's calls meet on the way.
//!
//! Every call takes a small latency. A killed server refuses at once; one at `maxclients`
//! refuses new connections; a stalled (SIGSTOP) or partitioned server does not answer before
//! the deadline, and a command sent to it may or may not run (the RNG decides: the "unknown"
//! outcome): a stalled server runs it when it resumes, a partitioned one runs it now and the
//! answer is lost. A topology command sent without the lease is a violation, whatever its
//! outcome.

use std::time::Duration;

use super::REDIS_DEADLINE;
use super::redis::{Command, replid_text};
use super::world::{Shared, lock};
use crate::engine::model::{Endpoint, FailureKind, RedisInfo, Role};
use crate::engine::ops::{KnownMember, RedisOps};
use crate::engine::redis_io::{Observation, RedisCallError};

#[derive(Clone)]
pub(super) struct SimRedis {
    world: Shared,
}

impl SimRedis {
    pub fn new(world: Shared) -> Self {
        Self { world }
    }

    /// Reaches `endpoint` (and runs `command` there if it gets through); the server's index.
    async fn call(
        &self,
        endpoint: &Endpoint,
        command: Option<Command>,
    ) -> Result<usize, RedisCallError> {
        let latency = {
            let mut world = lock(&self.world);
            if let Some(command) = command.filter(|c| c.changes_topology())
                && !world.lease
            {
                world.violation(format!(
                    "{command:?} sent to {endpoint} while the engine did not hold the lease \
                     (may_act was false)"
                ));
            }
            world
                .rng
                .between(Duration::from_millis(1), Duration::from_millis(4))
        };
        tokio::time::sleep(latency).await;
        {
            let mut world = lock(&self.world);
            let Some(server) = world.index(endpoint) else {
                return Err(error(FailureKind::Error, "not a simulated server"));
            };
            let s = &world.servers[server];
            if !s.running {
                return Err(error(FailureKind::Refused, "connection refused"));
            }
            let stalled = s.stalled_since.is_some();
            // A hung server cannot even refuse: it says nothing.
            if !stalled && s.partitioned_since.is_none() && s.full {
                return Err(error(
                    FailureKind::MaxClients,
                    "max number of clients reached",
                ));
            }
            if stalled || s.partitioned_since.is_some() {
                if let Some(command) = command
                    && world.rng.chance(50)
                {
                    let name = world.name(server);
                    if stalled {
                        world.note(format!("{name}: {command:?} queued while stalled"));
                        world.servers[server].pending.push(command);
                    } else {
                        world.note(format!("{name}: {command:?} applied, answer lost"));
                        world.apply(server, command);
                    }
                }
            } else {
                if let Some(command) = command {
                    world.apply(server, command);
                }
                return Ok(server);
            }
        }
        tokio::time::sleep(REDIS_DEADLINE.saturating_sub(latency)).await;
        Err(error(FailureKind::Timeout, "no answer within the deadline"))
    }

    async fn command(&self, endpoint: &Endpoint, command: Command) -> Result<(), RedisCallError> {
        self.call(endpoint, Some(command)).await.map(|_| ())
    }
}

fn error(kind: FailureKind, detail: &str) -> RedisCallError {
    RedisCallError {
        kind,
        detail: detail.to_owned(),
    }
}

impl RedisOps for SimRedis {
    fn deadline(&self) -> Duration {
        REDIS_DEADLINE
    }

    async fn probe(
        &self,
        endpoint: &Endpoint,
        known: KnownMember<'_>,
        read_fence: bool,
    ) -> Result<Observation, RedisCallError> {
        let server = self.call(endpoint, None).await?;
        let mut world = lock(&self.world);
        let now = world.now();
        let replicas = world.replica_links(server, now);
        let s = &world.servers[server];
        let master = s
            .master
            .filter(|_| s.role == Role::Replica)
            .map(|m| &world.servers[m].endpoint)
            .and_then(|m| known(m.host(), m.port()));
        let info = RedisInfo {
            role: s.role,
            run_id: s.run_id.clone(),
            master,
            link_up: s.role == Role::Replica && s.link_up(now),
            offset: s.offset(),
            synced: s.synced,
            priority: s.priority,
            keys: s.offset(),
            min_replicas: read_fence.then_some(s.fence),
            replid: replid_text(s.replid),
            replid2: s.replid2.map(|(id, _)| replid_text(id)),
            sync_in_progress: s.syncing(),
            replicas,
        };
        // What the engine could know from now on: the invariants judge it by this.
        let offset = s.offset();
        world.servers[server].known_own = offset;
        if world.published_master() == Some(server) && info.role == Role::Master {
            for link in &info.replicas {
                if let Some(r) = world.index(&link.endpoint) {
                    world.servers[r].known_by_master = link.offset;
                }
            }
        }
        Ok(Observation {
            info,
            warnings: Vec::new(),
        })
    }

    async fn promote(&self, endpoint: &Endpoint) -> Result<(), RedisCallError> {
        self.command(endpoint, Command::Promote).await
    }

    async fn replicate(
        &self,
        endpoint: &Endpoint,
        master: &Endpoint,
    ) -> Result<(), RedisCallError> {
        let Some(master) = lock(&self.world).index(master) else {
            return Err(error(
                FailureKind::Error,
                "master is not a simulated server",
            ));
        };
        self.command(endpoint, Command::Replicate(master)).await
    }

    async fn set_fence(
        &self,
        endpoint: &Endpoint,
        fence: crate::engine::model::MinReplicas,
    ) -> Result<(), RedisCallError> {
        self.command(endpoint, Command::Fence(fence)).await
    }

    async fn pause_writes(
        &self,
        endpoint: &Endpoint,
        for_at_most: Duration,
    ) -> Result<(), RedisCallError> {
        self.command(endpoint, Command::Pause(for_at_most)).await
    }

    async fn unpause(&self, endpoint: &Endpoint) -> Result<(), RedisCallError> {
        self.command(endpoint, Command::Unpause).await
    }

    async fn offset(&self, endpoint: &Endpoint) -> Result<u64, RedisCallError> {
        let server = self.call(endpoint, None).await?;
        Ok(lock(&self.world).servers[server].offset())
    }

    async fn watch(&self, endpoint: &Endpoint) -> bool {
        let subscription = {
            let world = lock(&self.world);
            world
                .index(endpoint)
                .map(|i| &world.servers[i])
                .filter(|s| s.answers() && s.partitioned_since.is_none() && !s.full)
                .map(|s| s.incarnation.subscribe())
        };
        match subscription {
            // The connection ends when the process dies or restarts.
            Some(mut incarnation) => {
                let _ = incarnation.changed().await;
                true
            }
            None => {
                tokio::time::sleep(REDIS_DEADLINE).await;
                false
            }
        }
    }
}
