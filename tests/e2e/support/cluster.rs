//! The real control plane the tests run on: `scripts/cluster.sh up` into a directory of this
//! test process, once per process (every test thread shares it), stopped when the process ends.
//!
//! Stopping does not rely on destructors (a `static` is never dropped, and a test process may
//! be killed): a watchdog process of its own, started before the cluster, reads a pipe whose
//! only writer is this process. When this process exits, however it exits, the kernel closes
//! the pipe, the watchdog reads EOF and runs `scripts/cluster.sh down`.
//!
//! Under nextest (one process per test) every test process brings its own cluster (about 10 s
//! warm); `up` is serialised by a lock file so concurrent starts pick distinct ports and subnets.
//! A run's directory (`target/tmp/kube-e2e/run-PID`: logs, pods' output) stays until a later run
//! finds its process gone and removes it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository: scripts, the chart.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One running cluster.
pub struct Cluster {
    /// `cluster.sh`'s directory: kubeconfig, logs/, pids/, node-N/pods/, cluster.env.
    pub dir: PathBuf,
    /// The S of the cluster's 10.201.S.0/24 and of its pods' namespace names.
    pub subnet: String,
    /// Holds the write end of the watchdog's pipe (in its `stdin`) for as long as the process
    /// lives: a `static` is never dropped, so only the process's exit closes it.
    _watchdog: Child,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    fn start() -> Cluster {
        let runs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kube-e2e");
        std::fs::create_dir_all(&runs).unwrap();
        remove_finished_runs(&runs);
        let dir = runs.join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let watchdog = start_watchdog(&dir);
        ensure_tools();

        let started = std::time::Instant::now();
        let lock = File::create(runs.join("up.lock")).unwrap();
        // SAFETY: flock(2) on a descriptor this function owns; released when `lock` is dropped.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let log = File::create(dir.join("up.log")).unwrap();
        let status = Command::new(repo().join("scripts/cluster.sh"))
            .arg("up")
            .arg(&dir)
            .env("REDISPAIR_BIN", env!("CARGO_BIN_EXE_redis-pair"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        drop(lock);
        let up_log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
        assert!(
            status.success(),
            "cluster.sh up {}: {status}\n{up_log}",
            dir.display()
        );
        eprintln!(
            "e2e: cluster up in {:.1} s at {} (KUBECONFIG={}/kubeconfig)",
            started.elapsed().as_secs_f64(),
            dir.display(),
            dir.display()
        );

        let env = std::fs::read_to_string(dir.join("cluster.env")).unwrap();
        let subnet = env
            .lines()
            .find_map(|l| l.strip_prefix("SUBNET="))
            .expect("SUBNET in cluster.env")
            .to_owned();
        Cluster {
            dir,
            subnet,
            _watchdog: watchdog,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The network namespace the node agent made for the pod with this IP (its naming:
    /// `rpkSp` + the address's last two octets).
    pub fn netns_of(&self, pod_ip: &str) -> String {
        let octets: Vec<&str> = pod_ip.split('.').collect();
        assert_eq!(octets.len(), 4, "pod IP {pod_ip}");
        format!("rpk{}p{}-{}", self.subnet, octets[2], octets[3])
    }

    /// A namespace of its own for one test, deleted when the returned guard drops.
    pub fn namespace(&'static self, test: &str) -> Namespace {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut name: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(50)
            .collect();
        name = format!(
            "{}-{}",
            name.trim_end_matches('-'),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        super::kube::kubectl(self, &["create", "namespace", &name]);
        Namespace {
            name,
            cluster: self,
        }
    }
}

/// A test's namespace; dropping it deletes it (and everything in it) without waiting.
pub struct Namespace {
    pub name: String,
    pub cluster: &'static Cluster,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // A failed test's pods keep their logs under the run directory's node-N/pods/.
        let _ = super::kube::try_kubectl(
            self.cluster,
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

/// `cluster.sh down DIR` once this process is gone: a process in a group of its own (a Ctrl-C
/// to the test does not reach it) that blocks reading a pipe only this process writes to.
fn start_watchdog(dir: &Path) -> Child {
    let log = File::create(dir.join("down.log")).unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(r#"read -r _ignored; exec "$0" down "$1""#)
        .arg(repo().join("scripts/cluster.sh"))
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Runs whose process is gone have been stopped by their watchdog: their directories go.
fn remove_finished_runs(runs: &Path) {
    for entry in std::fs::read_dir(runs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("run-") else {
            continue;
        };
        let stopped = !Path::new("/proc").join(pid).exists()
            && !entry
                .path()
                .join("pids")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some());
        if stopped {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// helm (and kube-tools.sh's kubectl) in target/tools; cached, so usually nothing happens.
fn ensure_tools() {
    if repo().join("target/tools/helm").exists() {
        return;
    }
    let status = Command::new(repo().join("scripts/kube-tools.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "scripts/kube-tools.sh: {status}");
}
