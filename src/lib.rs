//! redis-pair: highly available Redis master/replica groups.
//!
//! One binary, one module per concern: [`engine`] decides and runs failovers, [`proxy`]
//! forwards client bytes to the published master, [`local`] wires both into one process for
//! a list of servers; on Kubernetes, [`crd`] is the RedisPair resource, [`controller`] runs the
//! engine for every RedisPair and publishes its master on it, [`sidecar`] feeds the proxy from
//! those publications, and [`cluster`] reaches the API server. [`admin`] serves health, status
//! and metrics, [`metrics`] defines what is measured.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod local;
pub mod metrics;
pub mod proxy;
pub mod sidecar;
pub mod signal;
