//! A pod's endings: terminal under its restart policy, deleted with grace (preStop, SIGTERM,
//! the grace period, SIGKILL, the final delete), or gone from the API (killed at once).

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};
use kube::api::{DeleteParams, Preconditions};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Kind, Slot, Worker};
use crate::probe::{self, Target};
use crate::process;
use crate::status::{Phase, State};

impl Worker {
    /// Under Never or OnFailure, the pod ends once every regular container is done.
    pub(super) async fn settle_terminal(&mut self) {
        let regulars: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.kind == Kind::Regular)
            .collect();
        let finished = self.view.phase == Phase::Failed
            || (!regulars.is_empty() && regulars.iter().all(|s| s.done));
        if !finished || self.net.is_none() {
            return;
        }
        if self.view.phase != Phase::Failed {
            let all_zero = self
                .view
                .containers
                .iter()
                .zip(&self.slots)
                .filter(|(_, s)| s.kind == Kind::Regular)
                .all(|(v, _)| matches!(v.state, State::Terminated { exit_code: 0, .. }));
            self.view.phase = if all_zero {
                Phase::Succeeded
            } else {
                Phase::Failed
            };
        }
        self.stop_all(Instant::now() + Duration::from_secs(2)).await;
        self.release().await;
    }

    /// preStop, SIGTERM, the grace period, SIGKILL; regular containers before sidecars.
    pub(super) async fn terminate(
        &mut self,
        updates: &mut watch::Receiver<Option<Pod>>,
    ) -> anyhow::Result<()> {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        let deadline = Instant::now() + Duration::from_secs(grace);
        tracing::info!(pod = %self.name, grace, "terminating");
        let stopping = async {
            self.pre_stop(deadline).await;
            self.stop_all(deadline).await;
        };
        let mut gone = false;
        tokio::select! {
            _ = stopping => {}
            _ = async { loop {
                if updates.changed().await.is_err() || updates.borrow().is_none() { return; }
            } } => { gone = true; }
        }
        if gone {
            return self.force_stop().await;
        }
        self.release().await;
        let all_zero = self
            .view
            .containers
            .iter()
            .all(|v| matches!(v.state, State::Terminated { exit_code: 0, .. }));
        self.view.phase = if all_zero {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
        self.publish().await;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match self.api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(error) => Err(crate::api_error(error)).context("the final delete"),
        }
    }

    async fn pre_stop(&mut self, deadline: Instant) {
        let Some(net) = &self.net else { return };
        let (pod_ip, netns) = (net.ip, net.netns.clone());
        let mut hooks = Vec::new();
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.kind != Kind::Regular || slot.pid.is_none() {
                continue;
            }
            let Some(handler) = slot
                .container
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.clone())
            else {
                continue;
            };
            // The hook runs where the container runs: its namespaces, mounts and environment.
            match self.spawn_spec(i, pod_ip, netns.clone()).await {
                Ok(spawn) => {
                    let container = self.slots[i].container.clone();
                    hooks.push(run_handler(
                        handler,
                        Target {
                            pod_ip,
                            container,
                            spawn,
                        },
                        deadline,
                    ));
                }
                Err(error) => tracing::warn!(pod = %self.name, "preStop: {error:#}"),
            }
        }
        let _ = tokio::time::timeout_at(deadline, futures_util::future::join_all(hooks)).await;
    }

    async fn stop_all(&mut self, deadline: Instant) {
        for kinds in [&[Kind::Regular][..], &[Kind::Sidecar, Kind::Init][..]] {
            for slot in self.slots.iter_mut().filter(|s| kinds.contains(&s.kind)) {
                slot.done = true;
                slot.restart_at = None;
                if let Some(pid) = slot.pid {
                    process::signal_group(pid, libc::SIGTERM);
                }
            }
            // A sidecar gets at least 2 s after the regular containers, as in the kubelet.
            let until = deadline
                .max(Instant::now() + Duration::from_secs(if kinds.len() > 1 { 2 } else { 0 }));
            while self
                .slots
                .iter()
                .any(|s| kinds.contains(&s.kind) && s.pid.is_some())
            {
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(Some(event)) => self.handle(event),
                    Ok(None) => break,
                    Err(_) => {
                        for slot in self.slots.iter().filter(|s| kinds.contains(&s.kind)) {
                            if let Some(pid) = slot.pid {
                                process::signal_group(pid, libc::SIGKILL);
                            }
                        }
                        // The exits follow at once; each is still read to record it.
                        while self
                            .slots
                            .iter()
                            .any(|s| kinds.contains(&s.kind) && s.pid.is_some())
                        {
                            match self.rx.recv().await {
                                Some(event) => self.handle(event),
                                None => break,
                            }
                        }
                    }
                }
            }
        }
    }

    /// The pod is gone from the API: no grace, nothing more to write.
    pub(super) async fn force_stop(&mut self) -> anyhow::Result<()> {
        self.stop_all(Instant::now()).await;
        self.release().await;
        Ok(())
    }

    async fn release(&mut self) {
        if let Some(net) = self.net.take() {
            self.shared.network.release(net).await;
        }
    }
}

async fn run_handler(handler: LifecycleHandler, target: Target, deadline: Instant) {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let result = if let Some(exec) = &handler.exec {
        probe::exec_action(exec, &target, timeout).await
    } else if let Some(http) = &handler.http_get {
        probe::http_get(http, &target).await
    } else if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
        Ok(())
    } else {
        Ok(())
    };
    if let Err(error) = result {
        tracing::warn!(container = %target.container.name, "preStop: {error:#}");
    }
}
