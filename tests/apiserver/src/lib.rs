//! An in-memory Kubernetes API server for redis-pair's tests.
pub mod patch;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod status;
pub mod store;
pub mod table;
