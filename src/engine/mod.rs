//! The failover engine: observe every server, decide (purely), act on Redis, publish.
//!
//! `model` is the vocabulary, `decide` the pure decision, `redis_io` every Redis command the
//! engine sends (observation and actions), `publish` the seam through which decisions leave
//! the engine, and `runner` the loop that ties them together and owns the engine's memory.

pub mod decide;
pub mod model;
pub mod publish;
pub mod redis_io;
pub mod runner;

pub use decide::{Fencing, Foreign, Policy, decide, judge_foreign};
pub use model::{
    Endpoint, FailureKind, MinReplicas, Plan, Probe, Published, Reason, RedisInfo, Role,
    ServerState, Waiting,
};
pub use publish::{EngineEvent, InProcess, PublishError, Publisher};
