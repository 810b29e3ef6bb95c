//! The test API server checked against real clients: kube-rs (the crate the controller uses),
//! the pinned kubectl, and raw HTTP for what neither sends (malformed input, protocol edges).

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cli;
mod helm;
mod http_edges;
mod kube_client;
mod kubectl;
mod rbac;
mod support;
