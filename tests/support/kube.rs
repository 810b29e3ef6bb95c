//! Kubernetes fixtures for the end-to-end tests: the project's test API server (crate
//! `test-apiserver`) with the real RedisPair CRD installed, a kube-rs client for it, RedisPairs
//! and their annotations written the way the controller writes them, and `redis-pair proxy`
//! (sidecar) processes pointed at it through a kubeconfig.
//!
//! ```ignore
//! let kube = Kube::start().await;                 // API server + CRD + a namespace of its own
//! let a = RedisServer::builder().host("127.0.0.2").start().await;   // a "pod" of its own IP
//! kube.create_pair("cache", spec_selecting(&[("app", "redis")])).await;
//! kube.publish("cache", 1, Some(&a.addr())).await;                  // what the controller does
//! let sidecar = Sidecar::builder(&kube, "cache").start().await;
//! sidecar.await_ready(SETTLE_DEADLINE).await;
//! kube.refuse_connections_for(Duration::from_secs(30)).await;       // an API server outage
//! ```
//!
//! The API server runs on a thread and runtime of its own, so a test that blocks its own
//! thread (a fixture's Drop waiting for a process) never stalls the API server as well, and on
//! a leased port (`PortLease`), so that no other test process takes the port while an outage
//! has it closed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt, ResourceExt};
use redis_pair::crd::{ACTIVE_ANNOTATION, EPOCH_ANNOTATION, RedisPair, RedisPairSpec};
use serde_json::{Value, json};
use test_apiserver::{ApiServer, Options};

use super::{
    Conn, PortLease, STARTUP_DEADLINE, TestDir, die_with_parent, eventually, http, log_tail,
    metric, signal,
};

static NEXT_NAMESPACE: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// The test API server
// ---------------------------------------------------------------------------------------------

/// A test API server with the RedisPair CRD installed and a namespace of its own (unique to
/// this test process, so a process answering on a fixture's port is told from ours), a client
/// for it, and a kubeconfig file for processes.
pub struct Kube {
    server: Option<ApiServer>,
    /// Ends the API server's runtime; its thread is joined on Drop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: kube::Client,
    namespace: String,
    kubeconfig: PathBuf,
    dir: TestDir,
    _port: PortLease,
}

impl Kube {
    /// Starts the API server (plain HTTP), installs the CRD (`RedisPair::crd()`, what `crds/`
    /// holds) and creates the namespace.
    pub async fn start() -> Kube {
        Self::start_with(false).await
    }

    /// The same over HTTPS, with a CA made at start (in the kubeconfig), as a cluster serves;
    /// requests without credentials are then anonymous, so RBAC applies to every client.
    pub async fn start_tls() -> Kube {
        Self::start_with(true).await
    }

    /// A fresh API server with nothing installed, as a new cluster is (what `helm install`
    /// starts from); the fixture's namespace is `namespace`, which something else creates.
    pub async fn start_bare(namespace: &str) -> Kube {
        let mut kube = Self::start_server(false).await;
        kube.namespace = namespace.to_owned();
        kube
    }

    async fn start_with(tls: bool) -> Kube {
        let kube = Self::start_server(tls).await;
        kube.install_crd().await;
        kube.create_namespace(&kube.namespace).await;
        kube
    }

    async fn start_server(tls: bool) -> Kube {
        let mut attempt = 0;
        let (port, server, stop, thread) = loop {
            // On a leased port: during an outage (`refuse_connections_for`) the port is closed,
            // and no other test process may take it before the API server takes it back.
            let port = PortLease::take();
            match start_on_own_thread(port.port(), tls) {
                Ok((server, stop, thread)) => break (port, server, stop, thread),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("[harness] the test API server did not start ({e}); trying again");
                }
                Err(e) => panic!("the test API server does not start: {e}"),
            }
        };
        let dir = TestDir::new("kube");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("write the kubeconfig");
        let client = client_for(&server).await;
        let namespace = format!(
            "t{}-{}",
            std::process::id(),
            NEXT_NAMESPACE.fetch_add(1, Ordering::SeqCst)
        );
        Kube {
            server: Some(server),
            stop: Some(stop),
            thread: Some(thread),
            _port: port,
            client,
            namespace,
            kubeconfig,
            dir,
        }
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The namespace this fixture's objects go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The kubeconfig file that points at this API server (context namespace `default`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn server(&self) -> &ApiServer {
        self.server.as_ref().expect("the API server runs")
    }

    /// RedisPairs in this fixture's namespace.
    pub fn pairs(&self) -> Api<RedisPair> {
        Api::namespaced(self.client(), &self.namespace)
    }

    /// Creates the RedisPair CRD and waits until RedisPairs are served.
    pub async fn install_crd(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        crds.create(&PostParams::default(), &RedisPair::crd())
            .await
            .expect("create the RedisPair CRD");
        let pairs: Api<RedisPair> = Api::all(self.client());
        eventually("RedisPairs to be served", STARTUP_DEADLINE, async || {
            pairs
                .list(&Default::default())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
    }

    pub async fn create_namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client());
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("a namespace");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Creates RedisPair `name` in this fixture's namespace.
    pub async fn create_pair(&self, name: &str, spec: RedisPairSpec) -> RedisPair {
        self.pairs()
            .create(&PostParams::default(), &RedisPair::new(name, spec))
            .await
            .unwrap_or_else(|e| panic!("create RedisPair {name}: {e}"))
    }

    pub async fn get_pair(&self, name: &str) -> RedisPair {
        self.pairs()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get RedisPair {name}: {e}"))
    }

    pub async fn delete_pair(&self, name: &str) {
        self.pairs()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete RedisPair {name}: {e}"));
    }

    /// Publishes `active` (`None`: no master) under `epoch`, the way the controller does: a
    /// JSON patch that first tests the epoch it read, so it fails rather than overwrite a
    /// publication it did not see. It writes whatever epoch it is given (lower ones too),
    /// which is how tests make stale publications. Returns the updated RedisPair.
    pub async fn publish(&self, name: &str, epoch: u64, active: Option<&str>) -> RedisPair {
        let current = self.get_pair(name).await;
        let annotations = current.annotations();
        let mut ops = Vec::new();
        let pointer = |key: &str| format!("/metadata/annotations/{}", key.replace('/', "~1"));
        match annotations.get(EPOCH_ANNOTATION) {
            Some(old) => {
                ops.push(json!({"op": "test", "path": pointer(EPOCH_ANNOTATION), "value": old}))
            }
            None => {
                if current.metadata.annotations.is_none() {
                    ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
                }
            }
        }
        ops.push(
            json!({"op": "add", "path": pointer(EPOCH_ANNOTATION), "value": epoch.to_string()}),
        );
        ops.push(
            json!({"op": "add", "path": pointer(ACTIVE_ANNOTATION), "value": active.unwrap_or("")}),
        );
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).expect("a JSON patch");
        self.pairs()
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .unwrap_or_else(|e| panic!("publish epoch {epoch} {active:?} on {name}: {e}"))
    }

    /// Sets (`Some`) or removes (`None`) annotations with a merge patch, e.g. malformed ones.
    pub async fn annotate(&self, name: &str, annotations: &[(&str, Option<&str>)]) -> RedisPair {
        let map: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map_or(Value::Null, |v| json!(v))))
            .collect();
        let patch = json!({"metadata": {"annotations": map}});
        self.pairs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("annotate {name} with {annotations:?}: {e}"))
    }

    /// Sets a label with a merge patch: a change that leaves the annotations as they are
    /// (and so makes the global resourceVersion move on).
    pub async fn touch(&self, name: &str, value: &str) -> RedisPair {
        let patch = json!({"metadata": {"labels": {"touched": value}}});
        self.pairs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("label {name}: {e}"))
    }

    /// Creates ServiceAccount `name` in this fixture's namespace, bound (Role + RoleBinding of
    /// the same name) to exactly `rules` (a JSON array of RBAC PolicyRules), and returns a
    /// kubeconfig file that authenticates as it with a token: what a pod with that service
    /// account may do, nothing more.
    pub async fn service_account_kubeconfig(&self, name: &str, rules: Value) -> PathBuf {
        let ns = self.namespace.as_str();
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), ns);
        let roles: Api<Role> = Api::namespaced(self.client(), ns);
        let bindings: Api<RoleBinding> = Api::namespaced(self.client(), ns);
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("a ServiceAccount");
        let role: Role =
            serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
                .expect("a Role");
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        }))
        .expect("a RoleBinding");
        let post = PostParams::default();
        accounts
            .create(&post, &account)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {name}: {e}"));
        roles
            .create(&post, &role)
            .await
            .unwrap_or_else(|e| panic!("create Role {name}: {e}"));
        bindings
            .create(&post, &binding)
            .await
            .unwrap_or_else(|e| panic!("create RoleBinding {name}: {e}"));
        let token = self.server().service_account_token(ns, name);
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        fs::write(&path, self.server().kubeconfig_yaml_with_token(&token))
            .expect("write the service account's kubeconfig");
        path
    }

    /// An outage: the API server refuses connections (open ones, watches included, are cut)
    /// for `duration`. Returns once the port is closed.
    pub async fn refuse_connections_for(&self, duration: Duration) {
        self.server().refuse_connections_for(duration).await;
    }

    /// Ends every open watch stream abruptly.
    pub fn drop_watches(&self) {
        self.server().drop_watches();
    }

    /// Forgets the history: a watch resuming from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.server().compact();
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type ApiServerThread = (
    ApiServer,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
);

/// Starts the API server on 127.0.0.1:`port` on a thread with a runtime of its own, which runs
/// until the returned sender is used or dropped.
fn start_on_own_thread(port: u16, tls: bool) -> std::io::Result<ApiServerThread> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("test-apiserver".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let options = Options {
                    listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    tls,
                    ..Options::default()
                };
                let started = ApiServer::start(options).await;
                let ok = started.is_ok();
                let _ = started_tx.send(started);
                if ok {
                    let _ = stopped.await;
                }
            });
        })?;
    let server = started_rx
        .recv()
        .map_err(|_| std::io::Error::other("the API server thread ended"))??;
    Ok((server, stop, thread))
}

async fn client_for(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml())
        .expect("the kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("the kubeconfig loads");
    kube::Client::try_from(config).expect("a client for the test API server")
}

/// A RedisPair spec selecting pods with these labels, every other field at its default.
pub fn spec_selecting(labels: &[(&str, &str)]) -> RedisPairSpec {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({"selector": {"matchLabels": labels}})).expect("a RedisPair spec")
}

// ---------------------------------------------------------------------------------------------
// The sidecar process
// ---------------------------------------------------------------------------------------------

/// Options for one `redis-pair proxy` process.
#[derive(Clone)]
pub struct SidecarBuilder {
    pair: String,
    namespace: String,
    kubeconfig: PathBuf,
    drain_timeout: Duration,
    wait_for_master: Option<Duration>,
    unix_socket: bool,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl SidecarBuilder {
    /// The password of the ROLE checks, in `REDISPAIR_PASSWORD` (use `arg` for
    /// `--password-file`).
    pub fn password_env(mut self, password: &str) -> Self {
        self.env
            .push(("REDISPAIR_PASSWORD".into(), password.into()));
        self
    }
    pub fn wait_for_master(mut self, d: Duration) -> Self {
        self.wait_for_master = Some(d);
        self
    }
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }
    /// Also listen on a Unix socket in the test's directory; `proxy_conn` uses it.
    pub fn clients_over_unix_socket(mut self) -> Self {
        self.unix_socket = true;
        self
    }
    /// Any further command-line argument, e.g. `--no-multiplex`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Another kubeconfig than the fixture's (e.g. `Kube::service_account_kubeconfig`).
    pub fn kubeconfig(mut self, path: &Path) -> Self {
        self.kubeconfig = path.to_path_buf();
        self
    }

    fn command(&self, listen: u16, admin: u16, unix: Option<&Path>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-pair"));
        cmd.args([
            "proxy",
            "--pair",
            &self.pair,
            "--namespace",
            &self.namespace,
        ])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--drain-timeout", &super::fmt_dur(self.drain_timeout)]);
        if let Some(d) = self.wait_for_master {
            cmd.args(["--wait-for-master", &super::fmt_dur(d)]);
        }
        if let Some(path) = unix {
            cmd.arg("--listen-unix").arg(path);
        }
        cmd.args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("POD_NAMESPACE")
            .env_remove("REDISPAIR_USERNAME")
            .env_remove("REDISPAIR_PASSWORD")
            .env("RUST_LOG", "debug,kube=info,hyper=info,tower=info")
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the sidecar and waits until its admin endpoint answers as ours (its `/status`
    /// names our pair and namespace); it need not be ready (see `Sidecar::await_ready`).
    pub async fn start(self) -> Sidecar {
        let mut last = String::new();
        for _ in 0..3 {
            let ports = (PortLease::take(), PortLease::take());
            let (listen, admin) = (ports.0.port(), ports.1.port());
            let dir = TestDir::new(&format!("sidecar-{listen}"));
            let log = dir.path().join("redis-pair.log");
            let out = File::create(&log).expect("create log");
            let err = out.try_clone().expect("clone log handle");
            let unix = self.unix_socket.then(|| dir.path().join("redis-pair.sock"));
            let mut cmd = self.command(listen, admin, unix.as_deref());
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
            die_with_parent(&mut cmd);
            let child = cmd.spawn().expect("spawn redis-pair proxy");
            let mut sidecar = Sidecar {
                child: Some(child),
                pair: self.pair.clone(),
                namespace: self.namespace.clone(),
                listen: format!("127.0.0.1:{listen}"),
                admin: format!("127.0.0.1:{admin}"),
                unix,
                log,
                _dir: dir,
                _ports: ports,
            };
            match sidecar.await_answering().await {
                Ok(()) => return sidecar,
                Err(e)
                    if e.contains("another process")
                        || (e.contains("exited")
                            && sidecar.log_text().to_lowercase().contains("in use")) =>
                {
                    last = e; // a port race with another test: try new ports
                }
                Err(e) => panic!(
                    "redis-pair proxy did not start: {e}\nlog:\n{}",
                    log_tail(&sidecar.log, 60)
                ),
            }
        }
        panic!("redis-pair proxy could not bind its ports after 3 attempts: {last}");
    }
}

/// A running `redis-pair proxy` process. SIGTERM on Drop, SIGKILL if it does not exit.
pub struct Sidecar {
    child: Option<Child>,
    pair: String,
    namespace: String,
    listen: String,
    admin: String,
    unix: Option<PathBuf>,
    log: PathBuf,
    _dir: TestDir,
    _ports: (PortLease, PortLease),
}

impl Sidecar {
    /// A sidecar for RedisPair `pair` in `kube`'s namespace, with `kube`'s kubeconfig.
    pub fn builder(kube: &Kube, pair: &str) -> SidecarBuilder {
        SidecarBuilder {
            pair: pair.into(),
            namespace: kube.namespace().into(),
            kubeconfig: kube.kubeconfig().into(),
            // 1s keeps Drop (SIGTERM) quick when a test leaves connections open.
            drain_timeout: Duration::from_secs(1),
            wait_for_master: None,
            unix_socket: false,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn proxy_addr(&self) -> &str {
        &self.listen
    }

    pub fn admin_addr(&self) -> &str {
        &self.admin
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The proxy's Unix socket, if it was started with one.
    pub fn proxy_unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// A new client connection over TCP.
    pub async fn proxy_conn(&self) -> std::io::Result<Conn> {
        Conn::connect(&self.listen).await
    }

    /// A new client connection over the Unix socket (panics without `clients_over_unix_socket`).
    pub async fn proxy_unix_conn(&self) -> std::io::Result<Conn> {
        Conn::connect_unix(self.unix.as_deref().expect("started without a Unix socket")).await
    }

    /// `/readyz`: the status code and the body.
    pub async fn readyz(&self) -> Result<(u16, String), String> {
        http("GET", &self.admin, "/readyz").await
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> Result<Value, String> {
        let (code, body) = http("GET", &self.admin, "/status").await?;
        if code != 200 {
            return Err(format!("/status answered {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))
    }

    pub async fn metrics(&self) -> Result<String, String> {
        match http("GET", &self.admin, "/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("/metrics answered {code}: {body}")),
        }
    }

    /// One series of `/metrics`, e.g. `redispair_sidecar_cluster_epoch` or
    /// `redispair_sidecar_publications_total{outcome="stale"}` (0 when absent).
    pub async fn metric(&self, series: &str) -> Result<f64, String> {
        Ok(metric(&self.metrics().await?, series).unwrap_or(0.0))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn await_ready(&self, within: Duration) {
        eventually("the sidecar to be ready", within, async || {
            match self.readyz().await? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("/readyz {code}: {body}")),
            }
        })
        .await
    }

    /// Waits until `/readyz` answers 503 with a body containing `why`.
    pub async fn await_not_ready(&self, why: &str, within: Duration) {
        let what = format!("/readyz 503 with {why:?}");
        eventually(&what, within, async || match self.readyz().await? {
            (503, body) if body.contains(why) => Ok(()),
            (code, body) => Err(format!("/readyz {code}: {body}")),
        })
        .await
    }

    /// Sends SIGTERM (the sidecar starts draining) without waiting for it to exit.
    pub fn terminate(&self) {
        if let Some(child) = self.child.as_ref() {
            signal(child, libc::SIGTERM);
        }
    }

    /// Waits up to `within` for the process to exit and returns its exit code (panics if it
    /// does not exit in time, or dies of a signal).
    pub async fn await_exit(&mut self, within: Duration) -> i32 {
        let child = self
            .child
            .as_mut()
            .expect("redis-pair proxy already reaped");
        eventually("redis-pair proxy to exit", within, async || {
            match child.try_wait() {
                Ok(Some(status)) => status
                    .code()
                    .ok_or_else(|| format!("killed by a signal: {status}")),
                Ok(None) => Err("still running".into()),
                Err(e) => Err(format!("wait failed: {e}")),
            }
        })
        .await
    }

    /// Waits until the admin endpoint answers and its `/status` names our pair and namespace
    /// (the process binds every listener before the admin endpoint answers, so then the other
    /// ports are ours too).
    async fn await_answering(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("redis-pair proxy exited early with {status}"));
            }
            let last = match self.status().await {
                Ok(status)
                    if status["pair"] == self.pair.as_str()
                        && status["namespace"] == self.namespace.as_str() =>
                {
                    return Ok(());
                }
                Ok(status) => {
                    return Err(format!(
                        "{} is answered by another process ({status})",
                        self.admin
                    ));
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer after {STARTUP_DEADLINE:?}; last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "[harness] redis-pair proxy log tail ({}):\n{}",
                self.log.display(),
                log_tail(&self.log, 80)
            );
        }
    }
}
