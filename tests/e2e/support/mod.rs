//! The end-to-end tests' support tree, one concern a file:
//! - `cluster`: the real control plane, started once per test process and stopped when the
//!   process ends (however it ends), and a namespace per test;
//! - `kube`: kubectl and helm against that cluster, answers as JSON;
//! - `pair`: the chart's example (a RedisPair, its StatefulSet, the demo app and its sidecar)
//!   installed by helm, and what a test asks of it;
//! - `resp`: a small blocking Redis client;
//! - `writer`: a writer inside a pod's network namespace that counts acknowledged INCRs;
//! - `wait`: conditions awaited with deadlines.

pub mod cluster;
pub mod kube;
pub mod pair;
pub mod resp;
pub mod wait;
pub mod writer;
