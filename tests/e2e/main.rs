//! End-to-end tests on the real control plane: kube-apiserver, etcd, kube-controller-manager and
//! kube-scheduler built from the upstream modules (`scripts/cluster.sh`), pods run as processes
//! by our node agent, the chart installed by the real helm. One cluster per test process, a
//! namespace per test (`support::cluster`).
//!
//! Each scenario states a promise and awaits it with a deadline; the figures it measures
//! (failover time, write pause, acknowledged writes) are printed (`--nocapture` shows them).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod support;

mod faults;
mod install;
mod lifecycle;
