//! The failover engine: observe every server, decide (purely), act on Redis, publish.
//!
//! `model` is the vocabulary, `decide` the pure decision, `ops` the trait every Redis command
//! goes through and `redis_io` its real implementation (observation and actions), `publish`
//! the seam through which decisions leave the engine, and `runner` the loop that ties them
//! together and owns the engine's memory.

pub mod decide;
pub mod model;
pub mod ops;
pub mod publish;
pub mod redis_io;
pub mod runner;
#[cfg(test)]
mod sim;

pub use decide::{Fencing, Foreign, Policy, Publication, decide, judge_foreign};
pub use model::{
    Endpoint, FailureKind, MinReplicas, Plan, Probe, Published, Reason, RedisInfo, ReplicaLink,
    Role, ServerState, Unfit, Waiting,
};
pub use ops::RedisOps;
pub use publish::{EngineEvent, InProcess, PublishError, Publisher};
