//! The engine's side effects on Redis, behind one small trait: the runner talks to
//! [`RedisOps`], the real [`Connector`] sends the commands over TCP, and the simulation
//! (`engine::sim`) answers them from a model of Redis replication on a virtual clock.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;

use super::model::{Endpoint, MinReplicas};
use super::redis_io::{Connector, Observation, RedisCallError};

/// Maps a replica's `master_host:master_port` (or a master's `slaveN:ip=,port=`) to the group
/// member it names, if it is one.
pub type KnownMember<'a> = &'a (dyn Fn(&str, u16) -> Option<Endpoint> + Sync);

/// Every Redis command the engine sends. Each call is bounded by [`RedisOps::deadline`]; a
/// call that timed out may still have run on the server (the engine treats it as unknown).
pub trait RedisOps: Clone + Send + Sync + 'static {
    /// The longest one call may take.
    fn deadline(&self) -> Duration;

    /// Observes one server (INFO server/replication/keyspace, and the write fence when
    /// `read_fence`).
    fn probe(
        &self,
        endpoint: &Endpoint,
        known: KnownMember<'_>,
        read_fence: bool,
    ) -> impl Future<Output = Result<Observation, RedisCallError>> + Send;

    /// `REPLICAOF NO ONE`.
    fn promote(
        &self,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<(), RedisCallError>> + Send;

    /// `REPLICAOF master`.
    fn replicate(
        &self,
        endpoint: &Endpoint,
        master: &Endpoint,
    ) -> impl Future<Output = Result<(), RedisCallError>> + Send;

    /// `CONFIG SET min-replicas-max-lag`, then `min-replicas-to-write`.
    fn set_fence(
        &self,
        endpoint: &Endpoint,
        fence: MinReplicas,
    ) -> impl Future<Output = Result<(), RedisCallError>> + Send;

    /// `CLIENT PAUSE ms WRITE`: expires by itself after `for_at_most`.
    fn pause_writes(
        &self,
        endpoint: &Endpoint,
        for_at_most: Duration,
    ) -> impl Future<Output = Result<(), RedisCallError>> + Send;

    /// `CLIENT UNPAUSE`.
    fn unpause(
        &self,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<(), RedisCallError>> + Send;

    /// The replication offset alone (a master's, or what a replica has processed).
    fn offset(
        &self,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<u64, RedisCallError>> + Send;

    /// Holds a connection to the server and returns when it ends: `true` when one was held
    /// (the process behind it most likely died, so the engine probes at once), `false` when
    /// none could be opened.
    fn watch(&self, endpoint: &Endpoint) -> impl Future<Output = bool> + Send;
}

/// The subscription channel watchers hold; nothing is ever published on it.
const WATCH_CHANNEL: &str = "__redis-pair__:watch";

impl RedisOps for Connector {
    fn deadline(&self) -> Duration {
        Connector::deadline(self)
    }

    async fn probe(
        &self,
        endpoint: &Endpoint,
        known: KnownMember<'_>,
        read_fence: bool,
    ) -> Result<Observation, RedisCallError> {
        Connector::probe(self, endpoint, known, read_fence).await
    }

    async fn promote(&self, endpoint: &Endpoint) -> Result<(), RedisCallError> {
        Connector::promote(self, endpoint).await
    }

    async fn replicate(
        &self,
        endpoint: &Endpoint,
        master: &Endpoint,
    ) -> Result<(), RedisCallError> {
        Connector::replicate(self, endpoint, master).await
    }

    async fn set_fence(
        &self,
        endpoint: &Endpoint,
        fence: MinReplicas,
    ) -> Result<(), RedisCallError> {
        Connector::set_fence(self, endpoint, fence).await
    }

    async fn pause_writes(
        &self,
        endpoint: &Endpoint,
        for_at_most: Duration,
    ) -> Result<(), RedisCallError> {
        Connector::pause_writes(self, endpoint, for_at_most).await
    }

    async fn unpause(&self, endpoint: &Endpoint) -> Result<(), RedisCallError> {
        Connector::unpause(self, endpoint).await
    }

    async fn offset(&self, endpoint: &Endpoint) -> Result<u64, RedisCallError> {
        Connector::offset(self, endpoint).await
    }

    async fn watch(&self, endpoint: &Endpoint) -> bool {
        // A RESP2 subscription Redis never times out: its end is the process's end.
        let Ok(mut pubsub) = self.subscribe(endpoint, WATCH_CHANNEL).await else {
            return false;
        };
        let mut messages = pubsub.on_message();
        while messages.next().await.is_some() {}
        true
    }
}
