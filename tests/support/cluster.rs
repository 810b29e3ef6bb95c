//! The rest of a cluster for the end-to-end tests, beside `kube.rs`'s API server and
//! sidecars: Redis pods (a real redis-server on its own loopback address, with a Pod object
//! carrying that IP, and the kubelet's part of deleting one), `redis-pair controller`
//! processes, and the real kubectl.
//!
//! ```ignore
//! let kube = Kube::start().await;
//! let pods = RedisPod::start_group(&kube, "cache", 2).await;   // redis-0, redis-1
//! kube.create_pair("cache", spec_selecting(&[("app", "cache")]).port(pods[0].port())).await;
//! let controller = Controller::start(&kube, "a").await;
//! kubectl(&kube, &["get", "rpair", "cache"]).await;
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use redis_pair::crd::{ACTIVE_ANNOTATION, EPOCH_ANNOTATION, ROLE_LABEL, RedisPair};
use serde_json::{Value, json};

use super::kube::Kube;
use super::{
    PortLease, RedisServer, STARTUP_DEADLINE, TestDir, die_with_parent, eventually, http, log_tail,
    signal,
};

// ---------------------------------------------------------------------------------------------
// Redis pods
// ---------------------------------------------------------------------------------------------

/// Loopback addresses handed to pods, unique within this test process: 127.0.0.2 and up.
static NEXT_POD_IP: AtomicU8 = AtomicU8::new(2);

/// A loopback address for one more pod of this test process.
pub fn next_pod_ip() -> String {
    let n = NEXT_POD_IP.fetch_add(1, Ordering::SeqCst);
    assert!(n < 250, "out of loopback addresses for pods");
    format!("127.0.0.{n}")
}

/// A Redis pod: a real redis-server on an address of its own, and its Pod object, Running and
/// Ready with that IP, scheduled on a node (so a DELETE is graceful, as for a real pod).
pub struct RedisPod {
    pub name: String,
    pub server: RedisServer,
    pods: Api<Pod>,
}

impl RedisPod {
    /// `count` pods named `<app>-0`, `<app>-1`, ... labelled `app=<app>`, each redis-server
    /// on an address of its own and all on one port (a RedisPair has one port).
    pub async fn start_group(kube: &Kube, app: &str, count: usize) -> Vec<RedisPod> {
        // One port for the group (a RedisPair has one), each pod on an address of its own.
        let port = Arc::new(PortLease::take());
        let mut pods = Vec::with_capacity(count);
        for i in 0..count {
            let server = RedisServer::builder()
                .host(&next_pod_ip())
                .group_port(&port)
                .start()
                .await;
            pods.push(RedisPod::adopt(kube, &format!("{app}-{i}"), app, server).await);
        }
        pods
    }

    /// Creates the Pod object for `server`, labelled `app=<app>`, and reports it Running and
    /// Ready at its address.
    pub async fn adopt(kube: &Kube, name: &str, app: &str, server: RedisServer) -> RedisPod {
        let labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
        Self::adopt_with_labels(kube, name, &labels, server).await
    }

    /// The same with these labels (a StatefulSet's pod template's, say).
    pub async fn adopt_with_labels(
        kube: &Kube,
        name: &str,
        labels: &BTreeMap<String, String>,
        server: RedisServer,
    ) -> RedisPod {
        let pods: Api<Pod> = Api::namespaced(kube.client(), kube.namespace());
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": "test-node",
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "redis", "image": "redis:7.2",
                                "ports": [{"containerPort": server.port()}]}]
            }
        }))
        .expect("a pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
        let pod = RedisPod {
            name: name.to_owned(),
            server,
            pods,
        };
        pod.report_running().await;
        pod
    }

    /// What a kubelet reports once the container runs: phase, IP, Ready.
    pub async fn report_running(&self) {
        let ip = self.server.host().to_owned();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "redis", "ready": true, "restartCount": 0,
                "image": "redis:7.2", "imageID": "", "state": {"running": {}}}]
        }});
        self.pods
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("report pod {} running: {e}", self.name));
    }

    pub fn ip(&self) -> &str {
        self.server.host()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `IP:port`, as the `redispair.io/active` annotation names it.
    pub fn endpoint(&self) -> String {
        self.server.addr()
    }

    /// The pod's `redispair.io/role` label now.
    pub async fn role_label(&self) -> Option<String> {
        let pod = self.pods.get(&self.name).await.ok()?;
        pod.metadata.labels?.get(ROLE_LABEL).cloned()
    }

    /// A graceful delete, as `kubectl delete pod` sends it: the pod gets its
    /// deletionTimestamp and stays until the kubelet has stopped it ([`Self::stop_as_kubelet`]).
    pub async fn delete(&self) {
        self.pods
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete pod {}: {e}", self.name));
    }

    /// The kubelet's part of a deletion after the preStop hook: SIGTERM to redis-server (which
    /// exits at once without persistence), then the Pod object is removed (grace period 0).
    pub async fn stop_as_kubelet(&mut self) {
        self.server.terminate().await;
        self.remove_object().await;
    }

    /// Removes the Pod object at once (what the kubelet's final delete does).
    pub async fn remove_object(&self) {
        match self
            .pods
            .delete(&self.name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => panic!("remove pod {}: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network partitions
// ---------------------------------------------------------------------------------------------

static NEXT_PARTITION: AtomicU8 = AtomicU8::new(0);

/// A network partition on loopback: packets between one server (its address and port) and
/// the addresses it is cut off from are dropped (nftables, both directions), as a cut cable
/// drops them: connections time out, nothing is refused. Every other path stays open, and
/// only that port is matched: nftables rules hold for the whole machine, and other test
/// processes put servers of their own on the same loopback addresses (ports are leased).
/// Healed on Drop.
pub struct Partition {
    table: String,
}

impl Partition {
    /// Needs root and `nft` (Debian's nftables; scripts/test.sh installs it).
    pub fn isolate(server: &RedisServer, from: &[&str]) -> Partition {
        let table = format!(
            "redispair_test_{}_{}",
            std::process::id(),
            NEXT_PARTITION.fetch_add(1, Ordering::SeqCst)
        );
        let (ip, port) = (server.host(), server.port());
        let others = format!("{{ {} }}", from.join(", "));
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; policy accept; }}\n\
             add rule inet {table} input ip saddr {others} ip daddr {ip} tcp dport {port} drop\n\
             add rule inet {table} input ip saddr {ip} tcp sport {port} ip daddr {others} drop\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("run nft ({e}): the partition tests need root and nftables (apt-get install nftables; scripts/test.sh installs it)")
            });
        {
            use std::io::Write;
            let stdin = nft.stdin.as_mut().expect("nft stdin");
            stdin
                .write_all(script.as_bytes())
                .expect("write the nft rules");
        }
        let output = nft.wait_with_output().expect("nft");
        assert!(
            output.status.success(),
            "nft refused the partition (root needed): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// The RedisPair as the controller publishes it
// ---------------------------------------------------------------------------------------------

/// The pair's published master (the `redispair.io/active` annotation, `None` when empty) and
/// epoch, as a sidecar reads them.
pub async fn published(kube: &Kube, pair: &str) -> Result<(Option<String>, u64), String> {
    let pair: RedisPair = kube
        .pairs()
        .get(pair)
        .await
        .map_err(|e| format!("get the RedisPair: {e}"))?;
    let annotations = pair.metadata.annotations.unwrap_or_default();
    let epoch = annotations
        .get(EPOCH_ANNOTATION)
        .ok_or("no epoch annotation yet")?
        .parse::<u64>()
        .map_err(|e| format!("epoch annotation: {e}"))?;
    let active = annotations
        .get(ACTIVE_ANNOTATION)
        .filter(|a| !a.is_empty())
        .cloned();
    Ok((active, epoch))
}

/// Waits until the pair publishes `master` under an epoch above `after`, and returns that epoch.
pub async fn await_published(kube: &Kube, pair: &str, master: &str, after: u64) -> u64 {
    eventually(
        &format!("{pair} publishes {master} under an epoch above {after}"),
        super::SETTLE_DEADLINE,
        async || match published(kube, pair).await? {
            (Some(active), epoch) if active == master && epoch > after => Ok(epoch),
            other => Err(format!("published {other:?}")),
        },
    )
    .await
}

/// The RedisPair's status as JSON (`{}` before the controller wrote one).
pub async fn pair_status(kube: &Kube, pair: &str) -> Result<Value, String> {
    let pair: RedisPair = kube
        .pairs()
        .get(pair)
        .await
        .map_err(|e| format!("get the RedisPair: {e}"))?;
    serde_json::to_value(pair.status.unwrap_or_default()).map_err(|e| e.to_string())
}

/// The reasons of the Events recorded about a RedisPair, oldest first.
pub async fn event_reasons(kube: &Kube, pair: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(kube.client(), kube.namespace());
    let mut list: Vec<Event> = events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pair))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter().filter_map(|e| e.reason).collect()
}

// ---------------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------------

/// A `redis-pair controller` process watching the fixture's namespace, its Lease there too.
pub struct Controller {
    pub identity: String,
    child: Option<Child>,
    admin: String,
    _admin_lease: PortLease,
    dir: TestDir,
}

impl Controller {
    pub async fn start(kube: &Kube, identity: &str) -> Controller {
        Self::start_with(kube, identity, &[]).await
    }

    /// With extra flags (e.g. `--lease-duration 3s`). The controller runs as the chart's
    /// ServiceAccount with exactly the chart's RBAC ([`chart_rbac`]).
    pub async fn start_with(kube: &Kube, identity: &str, extra: &[&str]) -> Controller {
        let lease = PortLease::take();
        let admin = format!("127.0.0.1:{}", lease.port());
        let dir = TestDir::new(&format!("controller-{identity}"));
        let kubeconfig = dir.path().join("kubeconfig");
        let token = chart_rbac(kube).await;
        std::fs::write(
            &kubeconfig,
            test_apiserver::kubeconfig_yaml(&kube.server().url(), None, &token),
        )
        .expect("write the controller's kubeconfig");
        let log = std::fs::File::create(dir.path().join("controller.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-pair"));
        cmd.arg("controller")
            .args(["--admin-listen", &admin])
            .args(["--namespace", kube.namespace()])
            .args(["--lease-namespace", kube.namespace()])
            .args(["--identity", identity])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,redis_pair=debug")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn redis-pair controller");
        let controller = Controller {
            identity: identity.to_owned(),
            child: Some(child),
            admin,
            _admin_lease: lease,
            dir,
        };
        eventually(
            &format!("controller {identity} ready"),
            STARTUP_DEADLINE,
            async || match http("GET", &controller.admin, "/readyz").await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
        controller
    }

    pub fn admin_addr(&self) -> &str {
        &self.admin
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("controller.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `/status`: identity, leader, and each managed pair's engine status.
    pub async fn status(&self) -> Result<Value, String> {
        let (code, body) = http("GET", &self.admin, "/status").await?;
        if code != 200 {
            return Err(format!("/status → {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON: {e}"))
    }

    pub async fn is_leader(&self) -> bool {
        self.status()
            .await
            .is_ok_and(|s| s["leader"].as_bool() == Some(true))
    }

    pub async fn metrics(&self) -> Result<String, String> {
        match http("GET", &self.admin, "/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("/metrics → {code}: {body}")),
        }
    }

    /// SIGKILL: a crash, no chance to release the Lease.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(&mut self, within: Duration) -> i32 {
        let Some(mut child) = self.child.take() else {
            panic!("controller {} is not running", self.identity);
        };
        signal(&child, libc::SIGTERM);
        let status = eventually(
            &format!("controller {} exits", self.identity),
            within,
            async || {
                child
                    .try_wait()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "running".into())
            },
        )
        .await;
        status.code().unwrap_or(-1)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- controller {} log (tail) ---\n{}",
                self.identity,
                log_tail(&self.log_path(), 60)
            );
        }
        self.kill();
    }
}

/// The controller's ServiceAccount in the chart (release `redis-pair`).
pub const CONTROLLER_ACCOUNT: &str = "redis-pair-controller";

/// The chart's RBAC for the controller (`helm template` with the fixture's namespace as the
/// release namespace, default values: a ClusterRole and the Lease Role), applied once per
/// namespace with kubectl; returns a token of the controller's ServiceAccount. The controller
/// then gets exactly what the chart grants, and a rule missing from the chart fails the tests.
pub async fn chart_rbac(kube: &Kube) -> String {
    apply_chart_rbac(kube, CONTROLLER_ACCOUNT, &[]).await;
    kube.server()
        .service_account_token(kube.namespace(), CONTROLLER_ACCOUNT)
}

/// An application's ServiceAccount, whose pods run the sidecar.
pub const APP_ACCOUNT: &str = "app";

/// A kubeconfig for sidecars as the chart lets them read RedisPairs: `sidecarAccess` naming
/// the fixture's namespace and the ServiceAccount `app` (which the application, not the chart,
/// creates; so does this).
pub async fn chart_sidecar_kubeconfig(kube: &Kube) -> PathBuf {
    let namespace = kube.namespace();
    let flags = [
        "--set".to_owned(),
        format!("sidecarAccess[0].namespace={namespace}"),
        "--set".to_owned(),
        format!("sidecarAccess[0].serviceAccounts[0]={APP_ACCOUNT}"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(kube.client(), namespace);
    if accounts
        .get_opt(APP_ACCOUNT)
        .await
        .expect("read ServiceAccounts")
        .is_none()
    {
        let account = serde_json::from_value(json!({"metadata": {"name": APP_ACCOUNT}}))
            .expect("a ServiceAccount");
        accounts
            .create(&PostParams::default(), &account)
            .await
            .expect("create the app's ServiceAccount");
        apply_chart_rbac(kube, APP_ACCOUNT, &flags).await;
    }
    let path = kube.kubeconfig().with_file_name("sidecar-kubeconfig");
    let token = kube.server().service_account_token(namespace, APP_ACCOUNT);
    std::fs::write(
        &path,
        test_apiserver::kubeconfig_yaml(&kube.server().url(), None, &token),
    )
    .expect("write the sidecar's kubeconfig");
    path
}

/// Applies the RBAC objects of `helm template` with `flags` (for `account`, in a file of its
/// own), once.
async fn apply_chart_rbac(kube: &Kube, account: &str, flags: &[&str]) {
    let file = kube
        .kubeconfig()
        .with_file_name(format!("chart-rbac-{account}.yaml"));
    if file.exists() {
        return;
    }
    let rbac: Vec<Value> = rendered_chart(kube.namespace(), flags)
        .into_iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .filter(|o| {
            // The sidecar's objects alone when asked for them; the controller's otherwise.
            let sidecar = o["metadata"]["labels"]["app.kubernetes.io/component"] == "sidecar";
            sidecar == (account == APP_ACCOUNT)
        })
        .collect();
    assert!(
        !rbac.is_empty(),
        "the chart renders RBAC objects for {account}"
    );
    // A stream of documents, as `helm template | kubectl apply -f -` gives kubectl.
    let stream: String = rbac.iter().map(|o| format!("---\n{o}\n")).collect();
    std::fs::write(&file, stream).expect("write the RBAC objects");
    kubectl(kube, &["apply", "-f", &file.display().to_string()])
        .await
        .unwrap_or_else(|e| panic!("apply the chart's RBAC for {account}: {e}"));
}

/// `helm template redis-pair charts/redis-pair --namespace NS [flags]`, as objects.
pub fn rendered_chart(namespace: &str, flags: &[&str]) -> Vec<Value> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let helm = repo.join("target/tools/helm");
    assert!(
        helm.exists(),
        "{} is missing: run scripts/kube-tools.sh (scripts/test.sh does)",
        helm.display()
    );
    let output = Command::new(helm)
        .current_dir(&repo)
        .args([
            "template",
            "redis-pair",
            "charts/redis-pair",
            "--namespace",
            namespace,
        ])
        .args(flags)
        .output()
        .expect("run helm template");
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("helm prints UTF-8");
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&yaml).expect("the rendered chart is YAML");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

// ---------------------------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------------------------

/// The pinned kubectl (`scripts/kube-tools.sh`), or `$REDISPAIR_KUBECTL`.
pub fn kubectl_path() -> PathBuf {
    if let Some(path) = std::env::var_os("REDISPAIR_KUBECTL") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/kubectl");
    assert!(
        path.exists(),
        "{} is missing: run scripts/kube-tools.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs the real kubectl against the fixture's API server in its namespace; returns stdout,
/// or stderr as the error.
pub async fn kubectl(kube: &Kube, args: &[&str]) -> Result<String, String> {
    let home = kube.kubeconfig().with_file_name("kubectl-home");
    let _ = std::fs::create_dir_all(&home);
    let output = tokio::process::Command::new(kubectl_path())
        .args(args)
        .args(["--namespace", kube.namespace()])
        .env("KUBECONFIG", kube.kubeconfig())
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("run kubectl: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            stdout
        ))
    }
}

/// `kubectl get rpair NAME` as columns: header → value of the one row.
pub async fn kubectl_row(kube: &Kube, pair: &str) -> Result<BTreeMap<String, String>, String> {
    let table = kubectl(kube, &["get", "rpair", pair]).await?;
    let mut lines = table.lines();
    let header = lines.next().ok_or("no header")?;
    let row = lines.next().ok_or("no row")?;
    // Columns are separated by runs of spaces; an empty cell is found by the header's offsets.
    let starts: Vec<usize> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i)
        .collect();
    let mut cells = BTreeMap::new();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(usize::MAX);
        let name = header[*start..end.min(header.len())].trim().to_owned();
        let value = row
            .get(*start..end.min(row.len()))
            .unwrap_or("")
            .trim()
            .to_owned();
        cells.insert(name, value);
    }
    Ok(cells)
}
