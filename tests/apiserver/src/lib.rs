//! An in-memory Kubernetes API server for redis-pair's tests, faithful to the real HTTP API
//! for what redis-pair and kubectl use: discovery, built-in kinds and CRD-defined custom
//! resources, every verb with its resourceVersion semantics, watches with resume, bookmarks
//! and 410s, server-side tables, and faults to inject.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let server = test_apiserver::ApiServer::start(test_apiserver::Options::default()).await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! server.drop_watches();
//! # Ok(()) }
//! ```

mod api;
mod auth;
mod discovery;
mod objects;
mod patch;
mod protobuf;
mod request;
mod resources;
mod schema;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod tls;
mod typed;
mod watch;

pub use api::Granted;
pub use server::{ApiServer, Options, kubeconfig_yaml};
