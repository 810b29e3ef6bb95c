//! One pod's worker: its containers' slots, its status view, and the loop that starts them,
//! restarts them by policy and acts on their probes (the endings are in `stop`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BACKOFF_MAX, BACKOFF_MIN, SETUP_RETRY, Shared, uid};
use crate::env;
use crate::network::PodNetwork;
use crate::probe::{self, Target};
use crate::process::{self, Mount, Spawn};
use crate::status::{ContainerView, Phase, PodView, State};
use crate::volumes;

mod probing;
mod stop;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Init,
    Sidecar,
    Regular,
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Startup,
    Liveness,
    Readiness,
}

enum Event {
    Exited {
        slot: usize,
        run: u32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Probe {
        slot: usize,
        run: u32,
        which: Which,
        ok: bool,
    },
}

/// One container and what the worker knows of its current run.
struct Slot {
    container: Container,
    kind: Kind,
    run: u32,
    pid: Option<u32>,
    started_at: Option<Instant>,
    probes: Option<JoinHandle<()>>,
    /// Exited for good (no restart by policy), or an init container that completed.
    done: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
    ready_streak: (u32, u32),
    live_failures: u32,
    startup_failures: u32,
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    api: Api<Pod>,
    pod: Pod,
    name: String,
    dir: PathBuf,
    net: Option<PodNetwork>,
    view: PodView,
    slots: Vec<Slot>,
    published: Option<serde_json::Value>,
    /// When the pod's ServiceAccount tokens were last asked for.
    tokens_at: Instant,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>, pod: Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api = Api::namespaced(shared.client.clone(), &namespace);
        let dir = shared
            .args
            .state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{}", uid(&pod)));
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots = Vec::new();
        for c in spec.init_containers.unwrap_or_default() {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            slots.push(Slot::new(c, kind));
        }
        for c in spec.containers {
            slots.push(Slot::new(c, Kind::Regular));
        }
        let views = slots
            .iter()
            .map(|s| ContainerView {
                name: s.container.name.clone(),
                image: s.container.image.clone().unwrap_or_default(),
                init: s.kind != Kind::Regular,
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last_state: None,
                ready: false,
                started: false,
                restart_count: 0,
                pid: None,
            })
            .collect();
        let (tx, rx) = mpsc::channel(64);
        Self {
            view: PodView::new(shared.args.node_ip, views),
            shared,
            api,
            pod,
            name: format!("{namespace}/{name}"),
            dir,
            net: None,
            slots,
            published: None,
            tokens_at: Instant::now(),
            tx,
            rx,
        }
    }

    pub(super) async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Pod>>,
    ) -> anyhow::Result<()> {
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                return self.terminate(&mut updates).await;
            }
            match self.setup().await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(pod = %self.name, "setting up: {error:#}");
                    for view in &mut self.view.containers {
                        view.state = State::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: format!("{error:#}"),
                        };
                    }
                    self.publish().await;
                    tokio::select! {
                        _ = tokio::time::sleep(SETUP_RETRY) => {}
                        changed = updates.changed() => {
                            let pod = updates.borrow_and_update().clone();
                            match (changed, pod) {
                                (Ok(()), Some(pod)) => self.pod = pod,
                                _ => return self.force_stop().await,
                            }
                        }
                    }
                }
            }
        }
        tracing::info!(pod = %self.name, ip = ?self.view.pod_ip, "pod network ready");
        let mut resync = tokio::time::interval(volumes::RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.advance().await;
            self.publish().await;
            let next = self.slots.iter().filter_map(|s| s.restart_at).min();
            tokio::select! {
                changed = updates.changed() => {
                    let pod = updates.borrow_and_update().clone();
                    match (changed, pod) {
                        (Ok(()), Some(pod)) => {
                            self.pod = pod;
                            if self.pod.metadata.deletion_timestamp.is_some() {
                                return self.terminate(&mut updates).await;
                            }
                        }
                        _ => return self.force_stop().await,
                    }
                }
                Some(event) = self.rx.recv() => self.handle(event),
                _ = sleep_until(next) => {}
                _ = resync.tick() => self.resync_volumes().await,
            }
        }
    }

    /// Secrets and ConfigMaps as they are now; tokens when they are due.
    async fn resync_volumes(&mut self) {
        let tokens = self.tokens_at.elapsed() >= volumes::TOKEN_REFRESH;
        let dir = self.dir.join("volumes");
        match volumes::prepare(&self.shared.client, &self.pod, &dir, tokens).await {
            Ok(()) if tokens => self.tokens_at = Instant::now(),
            Ok(()) => {}
            Err(error) => tracing::warn!(pod = %self.name, "resyncing volumes: {error:#}"),
        }
    }

    async fn setup(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir.join("logs"))?;
        volumes::prepare(
            &self.shared.client,
            &self.pod,
            &self.dir.join("volumes"),
            true,
        )
        .await?;
        self.tokens_at = Instant::now();
        if self.net.is_none() {
            let net = self.shared.network.create().await?;
            self.view.pod_ip = Some(net.ip);
            self.net = Some(net);
        }
        self.view.phase = Phase::Pending;
        Ok(())
    }

    /// Starts what is due: init containers in order, then the regular ones.
    async fn advance(&mut self) {
        if self.view.phase != Phase::Pending && self.view.phase != Phase::Running {
            return;
        }
        let now = Instant::now();
        let mut init_done = true;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let due = slot.pid.is_none() && !slot.done && slot.restart_at.is_none_or(|t| t <= now);
            match slot.kind {
                Kind::Init | Kind::Sidecar if !init_done => break,
                Kind::Init => {
                    if !slot.done {
                        init_done = false;
                        if due {
                            self.start(i).await;
                        }
                    }
                }
                Kind::Sidecar => {
                    if due {
                        self.start(i).await;
                    }
                    if !self.view.containers[i].started {
                        init_done = false;
                    }
                }
                Kind::Regular => {
                    if !init_done {
                        break;
                    }
                    if due {
                        self.start(i).await;
                    }
                }
            }
        }
        if self.view.phase == Phase::Pending && init_done {
            self.view.phase = Phase::Running;
        }
        self.settle_terminal().await;
    }

    async fn start(&mut self, i: usize) {
        let Some(net) = &self.net else { return };
        let pod_ip = net.ip;
        let netns = net.netns.clone();
        let spawn = self.spawn_spec(i, pod_ip, netns).await;
        let slot = &mut self.slots[i];
        slot.restart_at = None;
        let view = &mut self.view.containers[i];
        let spawned = spawn.and_then(|spawn| Ok((process::spawn(&spawn)?, spawn)));
        let (mut child, spawn) = match spawned {
            Ok(started) => started,
            Err(error) => {
                tracing::warn!(pod = %self.name, container = %slot.container.name, "{error:#}");
                view.state = State::Waiting {
                    reason: "CreateContainerError".into(),
                    message: format!("{error:#}"),
                };
                slot.restart_at = Some(Instant::now() + slot.backoff);
                slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        slot.run += 1;
        if slot.run > 1 {
            view.restart_count += 1;
        }
        slot.pid = child.id();
        slot.started_at = Some(Instant::now());
        slot.ready_streak = (0, 0);
        slot.live_failures = 0;
        slot.startup_failures = 0;
        view.pid = slot.pid;
        view.state = State::Running {
            started_at: Timestamp::now(),
        };
        let has_startup = slot.container.startup_probe.is_some();
        view.started = !has_startup;
        view.ready = !has_startup && slot.container.readiness_probe.is_none();
        tracing::info!(pod = %self.name, container = %slot.container.name, pid = ?slot.pid, "started");
        let (tx, run) = (self.tx.clone(), slot.run);
        tokio::spawn(async move {
            let status = child.wait().await;
            let (code, signal) = match status {
                Ok(status) => (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ),
                Err(_) => (None, None),
            };
            let _ = tx
                .send(Event::Exited {
                    slot: i,
                    run,
                    code,
                    signal,
                })
                .await;
        });
        let c = &slot.container;
        if c.startup_probe.is_some() || c.liveness_probe.is_some() || c.readiness_probe.is_some() {
            let target = Target {
                pod_ip,
                container: c.clone(),
                spawn,
            };
            slot.probes = Some(tokio::spawn(probing::probe_loop(
                target,
                i,
                run,
                self.tx.clone(),
            )));
        }
    }

    async fn spawn_spec(
        &self,
        i: usize,
        pod_ip: std::net::Ipv4Addr,
        netns: String,
    ) -> anyhow::Result<Spawn> {
        let container = &self.slots[i].container;
        let ctx = env::Context {
            client: &self.shared.client,
            pod: &self.pod,
            pod_ip,
            node_ip: self.shared.args.node_ip,
            api_host: self
                .shared
                .args
                .api_host
                .unwrap_or(self.shared.args.node_ip),
            api_port: self.shared.args.api_port,
        };
        let environment = env::build(&ctx, container).await?;
        let expand = |v: &Option<Vec<String>>| -> Vec<String> {
            v.iter()
                .flatten()
                .map(|s| env::expand(s, &environment))
                .collect()
        };
        let image = container.image.clone().unwrap_or_default();
        let argv = self.shared.images.argv(
            &image,
            &expand(&container.command),
            &expand(&container.args),
        )?;
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let mut source = volumes::volume_dir(&self.dir, &mount.name);
            if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
            }
            mounts.push(Mount {
                source,
                target: PathBuf::from(&mount.mount_path),
                read_only: mount.read_only.unwrap_or(false),
            });
        }
        let cwd = match &container.working_dir {
            Some(dir) => PathBuf::from(dir),
            None => {
                let dir = self.dir.join("containers").join(&container.name);
                std::fs::create_dir_all(&dir)?;
                dir
            }
        };
        Ok(Spawn {
            argv,
            env: environment,
            netns,
            mounts,
            cwd,
            log: self
                .dir
                .join("logs")
                .join(format!("{}.log", container.name)),
        })
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited {
                slot: i,
                run,
                code,
                signal,
            } => {
                let restart_policy = self.restart_policy();
                let slot = &mut self.slots[i];
                if slot.run != run {
                    return;
                }
                if let Some(probes) = slot.probes.take() {
                    probes.abort();
                }
                slot.pid = None;
                let ran = slot.started_at.map(|t| t.elapsed()).unwrap_or_default();
                if ran > BACKOFF_MAX {
                    slot.backoff = BACKOFF_MIN;
                }
                let view = &mut self.view.containers[i];
                let started_at = match &view.state {
                    State::Running { started_at } => *started_at,
                    _ => Timestamp::now(),
                };
                let exit_code = code.unwrap_or(128 + signal.unwrap_or(0));
                let reason = if exit_code == 0 { "Completed" } else { "Error" };
                tracing::info!(pod = %self.name, container = %slot.container.name, exit_code, "exited");
                let terminated = State::Terminated {
                    exit_code,
                    signal,
                    reason: reason.into(),
                    started_at,
                    finished_at: Timestamp::now(),
                };
                view.last_state = Some(terminated.clone());
                view.state = terminated;
                view.ready = false;
                view.started = false;
                view.pid = None;
                let restart = match slot.kind {
                    Kind::Sidecar => true,
                    Kind::Init if exit_code == 0 => false,
                    Kind::Init | Kind::Regular => match restart_policy.as_str() {
                        "Never" => false,
                        "OnFailure" => exit_code != 0,
                        _ => slot.kind == Kind::Regular || exit_code != 0,
                    },
                };
                if restart {
                    // As the kubelet shows a container waiting out its restart delay.
                    view.state = State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {}s restarting failed container={}",
                            slot.backoff.as_secs(),
                            slot.container.name
                        ),
                    };
                    slot.restart_at = Some(Instant::now() + slot.backoff);
                    slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
                } else {
                    slot.done = true;
                    if slot.kind == Kind::Init && exit_code != 0 {
                        self.view.phase = Phase::Failed;
                    }
                }
            }
            Event::Probe {
                slot: i,
                run,
                which,
                ok,
            } => {
                let slot = &mut self.slots[i];
                if slot.run != run || slot.pid.is_none() {
                    return;
                }
                let view = &mut self.view.containers[i];
                let failure_threshold = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
                    p.as_ref()
                        .map(|p| probe::timing(p).failure_threshold)
                        .unwrap_or(3)
                };
                let kill = match which {
                    Which::Startup if ok => {
                        view.started = true;
                        view.ready = slot.container.readiness_probe.is_none();
                        false
                    }
                    Which::Startup => {
                        slot.startup_failures += 1;
                        slot.startup_failures >= failure_threshold(&slot.container.startup_probe)
                    }
                    Which::Liveness if ok => {
                        slot.live_failures = 0;
                        false
                    }
                    Which::Liveness => {
                        slot.live_failures += 1;
                        slot.live_failures >= failure_threshold(&slot.container.liveness_probe)
                    }
                    Which::Readiness => {
                        let probe = slot.container.readiness_probe.as_ref().map(probe::timing);
                        let (success, failure) = probe
                            .map(|t| (t.success_threshold, t.failure_threshold))
                            .unwrap_or((1, 3));
                        if ok {
                            slot.ready_streak = (slot.ready_streak.0 + 1, 0);
                            if slot.ready_streak.0 >= success {
                                view.ready = true;
                            }
                        } else {
                            slot.ready_streak = (0, slot.ready_streak.1 + 1);
                            if slot.ready_streak.1 >= failure {
                                view.ready = false;
                            }
                        }
                        false
                    }
                };
                if kill && let Some(pid) = slot.pid {
                    tracing::info!(pod = %self.name, container = %slot.container.name, ?which, "probe failed: killing");
                    process::signal_group(pid, libc::SIGKILL);
                }
            }
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Writes the status if it changed.
    async fn publish(&mut self) {
        self.view.settle(Timestamp::now());
        let status = self.view.render();
        if self.published.as_ref() == Some(&status) {
            return;
        }
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match self
            .api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => self.published = Some(status),
            Err(error) => {
                tracing::warn!(pod = %self.name, "writing status: {:#}", crate::api_error(error))
            }
        }
    }
}

impl Slot {
    fn new(container: Container, kind: Kind) -> Self {
        Self {
            container,
            kind,
            run: 0,
            pid: None,
            started_at: None,
            probes: None,
            done: false,
            restart_at: None,
            backoff: BACKOFF_MIN,
            ready_streak: (0, 0),
            live_failures: 0,
            startup_failures: 0,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
