//! The failover engine: observe every server, decide (purely), act on Redis, publish.
//!
//! `model` is the vocabulary, `decide` the pure decision, `probe` the observation (I/O),
//! `actions` the Redis commands that change the topology, and `runner` the loop that ties them
//! together and owns the engine's memory.

pub mod decide;
pub mod model;
pub mod redis_io;
pub mod runner;

pub use decide::{Policy, decide};
pub use model::{
    Endpoint, FailureKind, Plan, Probe, Published, Reason, RedisInfo, Role, ServerState, Waiting,
};
