//! The README's Kubernetes section, run: every command in it, exactly as written, through bash
//! with the pinned helm and kubectl against the test API server. What a cluster would do around
//! them this test does itself: the StatefulSet's pods are real redis-servers on loopback
//! addresses of their own, started with the password the chart generated; the controller
//! Deployment and the demo's sidecar are the real binary with the args, environment and
//! ServiceAccount the chart rendered; and it plays the kubelet when a pod is deleted (the
//! preStop delay, SIGTERM, the final delete) and the StatefulSet controller (the pod comes back).

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::Api;
use support::cluster::RedisPod;
use support::kube::Kube;
use support::{Conn, PortLease, RedisServer, SETTLE_DEADLINE, TestDir, eventually, http};

/// The commands of the walkthrough, in README order: install and look.
const INSTALL: [&str; 3] = [
    "helm install redis-pair charts/redis-pair --namespace redis-pair --create-namespace --set examples.enabled=true",
    "kubectl -n redis-pair get rpair",
    "kubectl -n redis-pair get pods -L redispair.io/role",
];
/// Without Helm.
const WITHOUT_HELM: [&str; 2] = [
    "kubectl create namespace redis-pair",
    "kubectl apply --server-side -f deploy/redis-pair.yaml",
];
/// A planned switchover, then the master pod deleted.
const SWITCHOVER: [&str; 4] = [
    "kubectl -n redis-pair annotate rpair redis-pair-example redispair.io/switchover=any",
    r#"kubectl -n redis-pair get rpair redis-pair-example -o jsonpath='{.status.lastSwitchover.message}{"\n"}'"#,
    r#"kubectl -n redis-pair delete pod "$(kubectl -n redis-pair get rpair redis-pair-example -o jsonpath='{.status.master.pod}')""#,
    "kubectl -n redis-pair get events",
];

const NS: &str = "redis-pair";
const PAIR: &str = "redis-pair-example";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README from `## Kubernetes` to the next `## ` heading.
fn kubernetes_section() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = readme
        .find("\n## Kubernetes\n")
        .expect("README has a Kubernetes section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 4);
    rest[..end].to_owned()
}

/// The fenced blocks of `language` in `text`.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("a closed code block");
        found.push(body[..end].to_owned());
        rest = &body[end + 3..];
    }
    found
}

/// The commands of the section's shell blocks (continuation lines joined, comments dropped).
fn readme_commands() -> Vec<String> {
    let mut commands = Vec::new();
    for block in blocks(&kubernetes_section(), "sh") {
        let mut current = String::new();
        for line in block.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(line);
                    commands.push(std::mem::take(&mut current));
                }
            }
        }
    }
    commands
}

#[test]
fn the_readme_kubernetes_commands_are_the_ones_these_tests_run() {
    let expected: Vec<String> = INSTALL
        .iter()
        .chain(&WITHOUT_HELM)
        .chain(&SWITCHOVER)
        .map(|c| (*c).to_owned())
        .collect();
    assert_eq!(
        readme_commands(),
        expected,
        "the README's Kubernetes commands changed: update this test, which runs them"
    );
}

/// Runs one README command through bash, as a user would, with the pinned tools first on PATH.
fn shell(kube: &Kube, home: &Path, command: &str) -> Result<String, String> {
    let tools = repo().join("target/tools");
    assert!(
        tools.join("kubectl").exists() && tools.join("helm").exists(),
        "target/tools has no kubectl/helm: run scripts/kube-tools.sh (scripts/test.sh does)"
    );
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-c", command])
        .current_dir(repo())
        .env("PATH", path)
        .env("KUBECONFIG", kube.kubeconfig())
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run bash: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{command}` failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Runs a README command until its output satisfies `done`.
async fn shell_until(
    kube: &Kube,
    home: &Path,
    command: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    eventually(command, SETTLE_DEADLINE, async || {
        let out = shell(kube, home, command)?;
        if done(&out) { Ok(out) } else { Err(out) }
    })
    .await
}

/// A process started from a container of a rendered pod template: its args, with the listen
/// addresses that a pod has to itself moved to leased loopback ports of this machine.
struct Process {
    child: Option<Child>,
    log: PathBuf,
    _leases: Vec<PortLease>,
}

impl Process {
    fn spawn(
        container: &Container,
        replace: &BTreeMap<&str, String>,
        env: &[(&str, String)],
        dir: &TestDir,
        name: &str,
    ) -> Process {
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|arg| match arg.split_once('=') {
                Some((flag, _)) if replace.contains_key(flag) => {
                    format!("{flag}={}", replace[flag])
                }
                _ => arg,
            })
            .collect();
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-pair"));
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().expect("spawn redis-pair");
        Process {
            child: Some(child),
            log,
            _leases: Vec::new(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A kubeconfig with `account`'s token in `namespace`.
fn kubeconfig_of(kube: &Kube, dir: &TestDir, account: &str) -> PathBuf {
    let token = kube.server().service_account_token(NS, account);
    let path = dir.path().join(format!("{account}.kubeconfig"));
    std::fs::write(
        &path,
        test_apiserver::kubeconfig_yaml(&kube.server().url(), None, &token),
    )
    .expect("write a kubeconfig");
    path
}

fn first_container(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Container {
    template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first().cloned())
        .expect("a container")
}

/// Starts what the StatefulSet would: its pods, each a redis-server on an address of its own
/// with the config the chart generated (`requirepass`, `masterauth` from the Secret).
async fn start_redis_pods(
    kube: &Kube,
    sts: &StatefulSet,
    password: &str,
    port: &Arc<PortLease>,
) -> Vec<RedisPod> {
    let labels = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("template labels");
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut pods = Vec::new();
    for i in 0..replicas {
        pods.push(start_redis_pod(kube, &format!("{PAIR}-{i}"), &labels, password, port).await);
    }
    pods
}

async fn start_redis_pod(
    kube: &Kube,
    name: &str,
    labels: &BTreeMap<String, String>,
    password: &str,
    port: &Arc<PortLease>,
) -> RedisPod {
    let server = RedisServer::builder()
        .host(&support::cluster::next_pod_ip())
        .group_port(port)
        .requirepass(password)
        .masterauth(password)
        .start()
        .await;
    RedisPod::adopt_with_labels(kube, name, labels, server).await
}

#[tokio::test]
async fn the_readme_walkthrough_works_on_the_test_api_server() {
    let kube = Kube::start_bare(NS).await;
    let dir = TestDir::new("readme");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("a home for kubectl and helm");

    // helm install, exactly as the README says; its notes print the sidecar snippet.
    let notes = shell(&kube, &home, INSTALL[0]).expect("helm install");
    let snippet = blocks(&kubernetes_section(), "yaml")
        .into_iter()
        .find(|b| b.contains("initContainers:"))
        .expect("the README's sidecar snippet");
    // The snippet is the block indented under its step, from its first line to the first
    // line that is indented less.
    let printed: String = notes
        .lines()
        .skip_while(|l| !l.contains("automountServiceAccountToken"))
        .take_while(|l| l.is_empty() || l.starts_with("     "))
        .map(|l| format!("{}\n", l.strip_prefix("     ").unwrap_or("")))
        .collect();
    assert_eq!(
        snippet.trim_end(),
        printed.trim_end(),
        "the README's sidecar snippet differs from what helm install prints"
    );

    // What the cluster would run: the StatefulSet's pods ...
    let secrets: Api<Secret> = Api::namespaced(kube.client(), NS);
    let auth = secrets
        .get(&format!("{PAIR}-auth"))
        .await
        .expect("the example's Secret");
    let password = auth
        .data
        .as_ref()
        .and_then(|d| d.get("password"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .expect("a password in the Secret");
    let statefulsets: Api<StatefulSet> = Api::namespaced(kube.client(), NS);
    let sts = statefulsets.get(PAIR).await.expect("the StatefulSet");
    let redis = first_container(&sts.spec.as_ref().expect("spec").template);
    let redis_port = redis
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| p.container_port)
        .expect("a Redis port");
    let port = Arc::new(
        PortLease::try_take(u16::try_from(redis_port).expect("a port"))
            .unwrap_or_else(|| panic!("port {redis_port} is taken by another test process")),
    );
    let mut pods = start_redis_pods(&kube, &sts, &password, &port).await;

    // ... the controller Deployment, with the chart's args, environment and ServiceAccount ...
    let deployments: Api<Deployment> = Api::namespaced(kube.client(), NS);
    let controller = deployments
        .get("redis-pair-controller")
        .await
        .expect("the controller Deployment");
    let template = &controller.spec.as_ref().expect("spec").template;
    let account = template
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .expect("a ServiceAccount");
    let controller_kubeconfig = kubeconfig_of(&kube, &dir, &account);
    let replicas = controller
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let mut controllers = Vec::new();
    for i in 0..replicas {
        let admin = PortLease::take();
        let replace = BTreeMap::from([("--admin-listen", format!("127.0.0.1:{}", admin.port()))]);
        let env = [
            ("KUBECONFIG", controller_kubeconfig.display().to_string()),
            ("POD_NAMESPACE", NS.to_owned()),
            ("POD_NAME", format!("redis-pair-controller-{i}")),
        ];
        let mut process = Process::spawn(
            &first_container(template),
            &replace,
            &env,
            &dir,
            &format!("controller-{i}"),
        );
        process._leases.push(admin);
        controllers.push(process);
    }

    // ... and the demo's sidecar: the native sidecar of its pod spec, as the chart rendered it.
    let demo = deployments
        .get(&format!("{PAIR}-demo"))
        .await
        .expect("the demo Deployment");
    let demo_spec = demo
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod spec");
    let sidecar = demo_spec
        .init_containers
        .as_ref()
        .and_then(|c| c.first().cloned())
        .expect("the native sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let demo_account = demo_spec.service_account_name.clone().expect("an account");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, &password).expect("the mounted password");
    let (listen, admin) = (PortLease::take(), PortLease::take());
    let sidecar_listen = format!("127.0.0.1:{}", listen.port());
    let sidecar_admin = format!("127.0.0.1:{}", admin.port());
    let replace = BTreeMap::from([
        ("--listen", sidecar_listen.clone()),
        ("--admin-listen", sidecar_admin.clone()),
        ("--password-file", password_file.display().to_string()),
    ]);
    let env = [
        (
            "KUBECONFIG",
            kubeconfig_of(&kube, &dir, &demo_account)
                .display()
                .to_string(),
        ),
        ("POD_NAMESPACE", NS.to_owned()),
    ];
    let mut sidecar_process = Process::spawn(&sidecar, &replace, &env, &dir, "sidecar");
    sidecar_process._leases.extend([listen, admin]);
    // The startup probe of the snippet: the app starts once /readyz says so.
    eventually(
        "the sidecar's startup probe passes",
        SETTLE_DEADLINE,
        async || match http("GET", &sidecar_admin, "/readyz").await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    // The README's looks: a Healthy pair, one master and one replica label.
    shell_until(&kube, &home, INSTALL[1], |out| {
        out.contains(PAIR) && out.contains("Healthy")
    })
    .await;
    shell_until(&kube, &home, INSTALL[2], |out| {
        out.contains("master") && out.contains("replica")
    })
    .await;

    // The demo app: INCRs through its sidecar, with the password, from here on.
    let writes = DemoWriter::start(&sidecar_listen, &password);

    // A planned switchover, and its answer in the status.
    let before = master_pod(&kube).await;
    shell(&kube, &home, SWITCHOVER[0]).expect("kubectl annotate");
    shell_until(&kube, &home, SWITCHOVER[1], |out| {
        out.starts_with("completed")
    })
    .await;
    let after = master_pod(&kube).await;
    assert_ne!(before, after, "the switchover moved the master");

    // The master pod deleted: the README's command blocks until the pod is gone, while this
    // test is the kubelet (preStop 5 s at most, or until handed over; SIGTERM; final delete)
    // and then the StatefulSet controller (the pod comes back, empty).
    let master = after.clone();
    let index = pods
        .iter()
        .position(|p| p.name == master)
        .expect("the master is one of the pods");
    let mut leaving = pods.remove(index);
    let kubelet = async {
        let pod_api: Api<Pod> = Api::namespaced(kube.client(), NS);
        let pairs: Api<redis_pair::crd::RedisPair> = Api::namespaced(kube.client(), NS);
        eventually(
            "the pod is being deleted",
            SETTLE_DEADLINE,
            async || match pod_api.get(&master).await {
                Ok(p) if p.metadata.deletion_timestamp.is_some() => Ok(()),
                other => Err(format!(
                    "{:?}",
                    other.map(|p| p.metadata.deletion_timestamp)
                )),
            },
        )
        .await;
        let handed_over = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let now = pairs
                    .get(PAIR)
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .and_then(|s| s.master)
                    .map(|m| m.pod);
                if now.as_deref() != Some(master.as_str()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        leaving.stop_as_kubelet().await;
        handed_over.is_ok()
    };
    let delete = tokio::process::Command::new("bash")
        .args(["-c", SWITCHOVER[2]])
        .current_dir(repo())
        .env(
            "PATH",
            format!(
                "{}:{}",
                repo().join("target/tools").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("KUBECONFIG", kube.kubeconfig())
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output();
    let (deleted, handed_over) = tokio::join!(delete, kubelet);
    let deleted = deleted.expect("run kubectl delete");
    assert!(
        deleted.status.success(),
        "kubectl delete pod: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(
        handed_over,
        "the master was handed over within the preStop delay"
    );
    drop(leaving);
    let labels = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("labels");
    pods.push(start_redis_pod(&kube, &master, &labels, &password, &port).await);
    shell_until(&kube, &home, INSTALL[1], |out| out.contains("Healthy")).await;
    let events = shell(&kube, &home, SWITCHOVER[3]).expect("kubectl get events");
    for reason in ["SwitchoverStarted", "SwitchoverCompleted", "Promoted"] {
        assert!(events.contains(reason), "{reason} in:\n{events}");
    }
    let (acked, lost) = writes.stop(&pods, &password).await;
    assert!(acked > 0, "the demo wrote through its sidecar");
    assert_eq!(
        lost, 0,
        "acknowledged INCRs lost across a switchover and a deletion"
    );
    drop(controllers);
    drop(sidecar_process);
}

#[tokio::test]
async fn the_readme_install_without_helm_works_on_the_test_api_server() {
    let kube = Kube::start_bare(NS).await;
    let dir = TestDir::new("readme-plain");
    for command in WITHOUT_HELM {
        shell(&kube, dir.path(), command).unwrap_or_else(|e| panic!("{e}"));
    }
    let deployments: Api<Deployment> = Api::namespaced(kube.client(), NS);
    let controller = deployments
        .get("redis-pair-controller")
        .await
        .expect("the controller Deployment");
    assert_eq!(controller.spec.and_then(|s| s.replicas), Some(2));
}

/// The published master's pod.
async fn master_pod(kube: &Kube) -> String {
    let pairs: Api<redis_pair::crd::RedisPair> = Api::namespaced(kube.client(), NS);
    eventually("a master", SETTLE_DEADLINE, async || {
        let pair = pairs.get(PAIR).await.map_err(|e| e.to_string())?;
        pair.status
            .and_then(|s| s.master)
            .map(|m| m.pod)
            .ok_or_else(|| "no master yet".to_owned())
    })
    .await
}

/// The demo app: INCR demo:writes through the sidecar as fast as it can, remembering the
/// highest value acknowledged; a lost write shows as a final counter below it.
struct DemoWriter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, i64)>,
}

impl DemoWriter {
    fn start(sidecar: &str, password: &str) -> DemoWriter {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sidecar, password, flag) = (sidecar.to_owned(), password.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut acked, mut highest) = (0u64, 0i64);
            let mut conn: Option<Conn> = None;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if conn.is_none() {
                    conn = Conn::connect_auth(&sidecar, Some(&password)).await.ok();
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                let c = conn.as_mut().expect("connected");
                match c.cmd(&["INCR", "demo:writes"]).await {
                    Ok(support::Resp::Int(n)) => {
                        acked += 1;
                        highest = highest.max(n);
                    }
                    _ => conn = None,
                }
            }
            (acked, highest)
        });
        DemoWriter { stop, task }
    }

    /// Stops, and returns how many INCRs were acknowledged and by how much the final counter
    /// on the master falls short of the highest acknowledged.
    async fn stop(self, pods: &[RedisPod], password: &str) -> (u64, i64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (acked, highest) = self.task.await.expect("the demo writer");
        let mut counter = None;
        for pod in pods {
            let mut c = Conn::connect_auth(&pod.endpoint(), Some(password))
                .await
                .expect("connect");
            let role = c.cmd(&["ROLE"]).await.expect("ROLE");
            let is_master = role
                .items()
                .and_then(|i| i.first())
                .and_then(support::Resp::text)
                .is_some_and(|r| r == "master");
            if is_master {
                let value = c.cmd(&["GET", "demo:writes"]).await.expect("GET");
                counter = value.text().and_then(|v| v.parse::<i64>().ok());
            }
        }
        let counter = counter.expect("a master holds the counter");
        (acked, (highest - counter).max(0))
    }
}
