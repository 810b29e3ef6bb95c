//! The probe tasks of a container's run.

use tokio::sync::mpsc;

use super::{Event, Which};
use crate::probe::{self, Target};

/// Runs a container's probes as a kubelet does: the startup probe until it succeeds, then
/// liveness and readiness side by side, each on its own period; results go to the worker.
pub(super) async fn probe_loop(target: Target, slot: usize, run: u32, tx: mpsc::Sender<Event>) {
    let send = |which, ok| {
        let tx = tx.clone();
        async move {
            tx.send(Event::Probe {
                slot,
                run,
                which,
                ok,
            })
            .await
            .is_ok()
        }
    };
    let container = target.container.clone();
    if let Some(startup) = &container.startup_probe {
        let timing = probe::timing(startup);
        tokio::time::sleep(timing.initial_delay).await;
        loop {
            let ok = probe::check(startup, &target).await.is_ok();
            if !send(Which::Startup, ok).await || ok {
                break;
            }
            tokio::time::sleep(timing.period).await;
        }
    }
    let each = |which, probe: Option<k8s_openapi::api::core::v1::Probe>| {
        let target = target.clone();
        let send = &send;
        async move {
            let Some(probe) = probe else {
                return std::future::pending::<()>().await;
            };
            let timing = probe::timing(&probe);
            tokio::time::sleep(timing.initial_delay).await;
            loop {
                let result = probe::check(&probe, &target).await;
                if let Err(error) = &result {
                    // Why, for whoever reads a restart's cause in the agent's log.
                    tracing::info!(container = %target.container.name, ?which, "probe failed: {error:#}");
                }
                if !send(which, result.is_ok()).await {
                    return;
                }
                tokio::time::sleep(timing.period).await;
            }
        }
    };
    futures_util::future::join(
        each(Which::Liveness, container.liveness_probe.clone()),
        each(Which::Readiness, container.readiness_probe.clone()),
    )
    .await;
}
