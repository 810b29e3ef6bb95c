//! End-to-end harness: real `redis-server` processes, a real `redis-pair local` process, an
//! HTTP/1.0 client for its admin endpoint and condition polling with deadlines.
//!
//! Every fixture owns its child process and kills it on Drop, so a failing (panicking) test
//! leaves nothing running; on a panic the fixtures also print the tail of their logs, which is
//! what nextest shows next to the failure.

pub mod cluster;
pub mod kube;
pub mod resp;
pub mod writes;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use resp::{Conn, Resp};

/// Deadline for a fixture to come up (redis-server answering PING, redis-pair ready).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// Generous deadline for "eventually" conditions after a failover-inducing event.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(15);
/// How often conditions are re-checked.
const POLL_EVERY: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Polling with deadlines
// ---------------------------------------------------------------------------------------------

/// Re-runs `check` every ~25ms until it returns `Ok`, and returns that value. Panics after
/// `within` with `what` and the last observed state (the last `Err`). A single check that hangs
/// (e.g. talking to a SIGSTOPped server) is cut off at the overall deadline.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("(condition never checked)");
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(observed)) => last = observed,
            Err(_) => last = format!("{last} (a further check was still running at the deadline)"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {:?} waiting for: {what}\nlast observed: {last}",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Checks that `check` keeps returning `Ok` for the whole `window` (polled every ~25ms),
/// panicking at the first `Err` with `what` and what was observed. A check that errors because
/// it could not observe anything should return `Ok` if that is acceptable for the invariant.
pub async fn always(
    what: &str,
    window: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let start = Instant::now();
    let mut checks = 0u32;
    while start.elapsed() < window {
        if let Err(observed) = check().await {
            panic!(
                "invariant broken after {:?} (check #{checks}): {what}\nobserved: {observed}",
                start.elapsed()
            );
        }
        checks += 1;
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(
        checks >= 2,
        "invariant `{what}` was checked only {checks} times in {window:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and ports
// ---------------------------------------------------------------------------------------------

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A per-fixture directory under cargo's integration-test temp dir. Removed on Drop unless the
/// test is panicking, so the logs of a failure stay behind for inspection.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(format!("{}-{n}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[harness] keeping {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback port held by this test process: free when chosen, and not chosen by any other
/// test process while held (an flock(2) on a file named after it, which the kernel drops when
/// the process dies). A fixture holds its ports for its whole life, so a server that is
/// killed and restarted gets its port back instead of finding another test's server there.
/// Processes outside the tests can still take a port; the fixtures check who answers.
pub struct PortLease {
    port: u16,
    _lock: File,
}

impl PortLease {
    /// A port free now and held by no other test process.
    pub fn take() -> PortLease {
        for _ in 0..1000 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port();
            if let Some(lease) = Self::try_take(port) {
                return lease;
            }
        }
        panic!("no free port without a lease in 1000 tries");
    }

    /// `port`, unless another lease holds it (in this process or another).
    pub fn try_take(port: u16) -> Option<PortLease> {
        let dir = std::env::temp_dir().join("redis-pair-test-ports");
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create the port lock dir {}: {e}", dir.display()));
        let path = dir.join(port.to_string());
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open the port lock {}: {e}", path.display()));
        // SAFETY: flock(2) on a descriptor we own; it touches no memory.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (locked == 0).then_some(PortLease { port, _lock: file })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Two distinct ports free a moment ago and not held by another test process. The caller
/// does not hold them: for a process that fails at once, before it binds anything.
pub fn free_ports2() -> (u16, u16) {
    let (a, b) = (PortLease::take(), PortLease::take());
    (a.port(), b.port())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes the child die with the test process even when the test process is killed outright
/// (e.g. by a nextest timeout) and no Drop runs. The signal follows the spawning thread, which
/// is the test's own thread for every fixture here.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

// ---------------------------------------------------------------------------------------------
// redis-server fixture
// ---------------------------------------------------------------------------------------------

/// Options for one redis-server.
#[derive(Clone, Default)]
pub struct ServerBuilder {
    replica_of: Option<String>,
    priority: Option<u32>,
    requirepass: Option<String>,
    masterauth: Option<String>,
    maxclients: Option<u32>,
    /// Tried before a free port (the harness's own test of port races).
    first_port: Option<u16>,
    /// The loopback address it binds (default 127.0.0.1).
    host: Option<String>,
    /// A port held for a group of servers on addresses of their own (the pods of one
    /// RedisPair share a port).
    group_port: Option<Arc<PortLease>>,
}

impl ServerBuilder {
    pub fn replica_of(mut self, master: &RedisServer) -> Self {
        self.replica_of = Some(master.addr());
        self
    }
    pub fn priority(mut self, p: u32) -> Self {
        self.priority = Some(p);
        self
    }
    pub fn requirepass(mut self, pw: &str) -> Self {
        self.requirepass = Some(pw.to_string());
        self
    }
    pub fn masterauth(mut self, pw: &str) -> Self {
        self.masterauth = Some(pw.to_string());
        self
    }
    /// `maxclients`: past it the server answers new connections with an error and closes them.
    pub fn maxclients(mut self, n: u32) -> Self {
        self.maxclients = Some(n);
        self
    }
    /// Tries `port` first, as if `free_port` had returned it.
    pub fn first_port(mut self, port: u16) -> Self {
        self.first_port = Some(port);
        self
    }
    /// Binds this loopback address instead of 127.0.0.1, so that servers can stand for pods
    /// with IPs of their own (127.0.0.2, 127.0.0.3, ...). The port is leased as for any other.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }
    /// Binds the port of `lease`, shared with the other servers of a group, each on an address
    /// of its own (`host`): the lease keeps the port from every other test process.
    pub fn group_port(mut self, lease: &Arc<PortLease>) -> Self {
        self.group_port = Some(lease.clone());
        self
    }

    /// Starts the server and waits until it answers PING. Does not wait for replication.
    pub async fn start(self) -> RedisServer {
        let mut last_log = String::new();
        for attempt in 0..5 {
            let (port, lease) = match (&self.group_port, self.first_port) {
                (Some(lease), _) if attempt == 0 => (lease.port(), Some(lease.clone())),
                (Some(lease), _) => panic!(
                    "redis-server on {}:{} (a group's port) did not start:\n{last_log}",
                    self.host.as_deref().unwrap_or("127.0.0.1"),
                    lease.port()
                ),
                (None, Some(port)) if attempt == 0 => (port, None),
                _ => {
                    let lease = Arc::new(PortLease::take());
                    (lease.port(), Some(lease))
                }
            };
            let mut server = RedisServer {
                port,
                _port: lease,
                dir: TestDir::new(&format!("redis-{port}")),
                child: None,
                stopped: false,
                config: self.clone(),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(log) => last_log = log, // most likely the port was taken; try another
            }
        }
        panic!("redis-server did not start after 5 attempts; last log:\n{last_log}");
    }
}

/// What `INFO replication` says about a server's role.
#[derive(Debug, Clone, PartialEq)]
pub struct Replication {
    /// "master" or "slave", as redis reports it.
    pub role: String,
    /// For a replica, "host:port" of its master.
    pub master: Option<String>,
    /// For a replica, master_link_status == up.
    pub link_up: bool,
    /// master_repl_offset.
    pub offset: i64,
}

/// A real redis-server on loopback (127.0.0.1 unless `ServerBuilder::host`), no persistence,
/// in its own temp dir.
pub struct RedisServer {
    port: u16,
    /// Held while the server lives, across kill and restart (None: a port chosen by the test).
    _port: Option<Arc<PortLease>>,
    dir: TestDir,
    child: Option<Child>,
    stopped: bool,
    config: ServerBuilder,
}

impl RedisServer {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A stand-alone master.
    pub async fn master() -> RedisServer {
        Self::builder().start().await
    }

    /// A replica of `master`, returned once its link is up and the initial sync has finished.
    pub async fn replica(master: &RedisServer) -> RedisServer {
        let replica = Self::builder().replica_of(master).start().await;
        replica.await_replicating_from(master).await;
        replica
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it binds: 127.0.0.1 unless `ServerBuilder::host` named another.
    pub fn host(&self) -> &str {
        self.config.host.as_deref().unwrap_or("127.0.0.1")
    }

    /// "host:port", the form given to `--server` and reported in /status.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let dir = self.dir.path().to_path_buf();
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(&dir)
            .args(["--port", &self.port.to_string(), "--bind", self.host()])
            // Outgoing connections (a replica's link to its master) from its own address, as a
            // pod's come from the pod IP: otherwise every loopback alias connects from
            // 127.0.0.1 and a master's view of its replicas (INFO `slaveN: ip=`) names no member.
            .args(["--bind-source-addr", self.host()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(self.log_path())
            // Full resyncs start at once instead of after the 5s diskless-sync delay.
            .args(["--repl-diskless-sync-delay", "0"]);
        if let Some(master) = &self.config.replica_of {
            let (host, port) = master.rsplit_once(':').expect("host:port");
            cmd.args(["--replicaof", host, port]);
        }
        if let Some(p) = self.config.priority {
            cmd.args(["--replica-priority", &p.to_string()]);
        }
        if let Some(pw) = &self.config.requirepass {
            cmd.args(["--requirepass", pw]);
        }
        if let Some(pw) = &self.config.masterauth {
            cmd.args(["--masterauth", pw]);
        }
        if let Some(n) = self.config.maxclients {
            cmd.args(["--maxclients", &n.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        self.stopped = false;

        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}:\n{}",
                    log_tail(&self.log_path(), 20)
                ));
            }
            if let Ok(mut c) = self.conn().await
                && matches!(c.cmd(&["PING"]).await, Ok(Resp::Simple(ref s)) if s == "PONG")
            {
                // The port was only free a moment ago: another test's server (or proxy) may
                // have taken it, and ours then fails to bind while that one answers.
                let ours = self.child.as_ref().map(|c| c.id().to_string());
                let answering = match c.cmd(&["INFO", "server"]).await {
                    Ok(r) => parse_info(&r.text().unwrap_or_default()).remove("process_id"),
                    Err(_) => None,
                };
                if answering.is_some() && answering == ours {
                    return Ok(());
                }
                self.kill();
                return Err(format!(
                    "port {} is answered by another process (process_id {answering:?}, ours \
                     {ours:?})",
                    self.port
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on {} did not answer PING in time:\n{}",
                    self.addr(),
                    log_tail(&self.log_path(), 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, as a kubelet stops a container, and waits for the exit (without persistence a
    /// redis-server exits at once).
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on {} ignored SIGTERM", self.addr());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stopped = false;
    }

    /// SIGKILL, reaping the process so the port is free for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn stop(&mut self) {
        let child = self
            .child
            .as_ref()
            .expect("stop() on a server that is not running");
        signal(child, libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT after `stop`.
    pub fn cont(&mut self) {
        let child = self
            .child
            .as_ref()
            .expect("cont() on a server that is not running");
        signal(child, libc::SIGCONT);
        self.stopped = false;
    }

    /// Starts the server again on the same port with the same options. Without persistence it
    /// comes back empty, and as a master unless it was configured with `replica_of`.
    /// Kills the server and starts it again without its data and without `--replicaof`: it
    /// comes back as an empty master of a new replication history, as a replica restarted
    /// without persistence does when REPLICAOF was only ever sent at run time.
    pub async fn restart_as_empty_master(&mut self) {
        self.config.replica_of = None;
        self.restart().await;
    }

    pub async fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn_and_wait().await {
            panic!("restart of redis-server on {} failed: {log}", self.addr());
        }
    }

    /// A new authenticated connection straight to this server.
    pub async fn conn(&self) -> std::io::Result<Conn> {
        Conn::connect_auth(&self.addr(), self.config.requirepass.as_deref()).await
    }

    /// One command on a fresh connection, as a `Result<_, String>` for use in conditions.
    pub async fn cmd(&self, args: &[&str]) -> Result<Resp, String> {
        let mut c = self
            .conn()
            .await
            .map_err(|e| format!("{}: {e}", self.addr()))?;
        c.cmd(args)
            .await
            .map_err(|e| format!("{} {args:?}: {e}", self.addr()))
    }

    /// `INFO <section>` parsed into field → value.
    pub async fn info(&self, section: &str) -> Result<HashMap<String, String>, String> {
        match self.cmd(&["INFO", section]).await? {
            r @ (Resp::Bulk(_) | Resp::Other(_)) => Ok(parse_info(&r.text().unwrap_or_default())),
            other => Err(format!(
                "{}: INFO {section} → {}",
                self.addr(),
                other.brief()
            )),
        }
    }

    pub async fn replication(&self) -> Result<Replication, String> {
        let info = self.info("replication").await?;
        let role = info
            .get("role")
            .cloned()
            .ok_or_else(|| format!("{}: no role in INFO", self.addr()))?;
        let master = match (info.get("master_host"), info.get("master_port")) {
            (Some(h), Some(p)) => Some(format!("{h}:{p}")),
            _ => None,
        };
        Ok(Replication {
            role,
            master,
            link_up: info
                .get("master_link_status")
                .map(|s| s == "up")
                .unwrap_or(false),
            offset: info
                .get("master_repl_offset")
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1),
        })
    }

    pub async fn dbsize(&self) -> Result<i64, String> {
        match self.cmd(&["DBSIZE"]).await? {
            Resp::Int(n) => Ok(n),
            other => Err(format!("{}: DBSIZE → {}", self.addr(), other.brief())),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, String> {
        match self.cmd(&["GET", key]).await? {
            Resp::Nil => Ok(None),
            r @ Resp::Bulk(_) => Ok(r.text()),
            other => Err(format!("{}: GET {key} → {}", self.addr(), other.brief())),
        }
    }

    /// Writes `n` keys `{prefix}{i}` = `i` in one pipeline.
    pub async fn fill(&self, prefix: &str, n: usize) {
        let cmds: Vec<Vec<String>> = (0..n)
            .map(|i| vec!["SET".into(), format!("{prefix}{i}"), i.to_string()])
            .collect();
        let mut c = self.conn().await.expect("connect for fill");
        let replies = c.pipeline(&cmds).await.expect("fill pipeline");
        assert!(
            replies.iter().all(Resp::is_ok),
            "fill on {} got non-OK replies",
            self.addr()
        );
    }

    /// Waits until this server is a replica of `master` with its link up and the same
    /// replication offset as the master (the initial sync and everything since has arrived).
    pub async fn await_replicating_from(&self, master: &RedisServer) {
        let what = format!(
            "{} replicating from {} and caught up",
            self.addr(),
            master.addr()
        );
        eventually(&what, SETTLE_DEADLINE, async || {
            let r = self.replication().await?;
            let m = master.replication().await?;
            if r.role == "slave"
                && r.master.as_deref() == Some(&master.addr())
                && r.link_up
                && r.offset == m.offset
            {
                Ok(())
            } else {
                Err(format!("replica {r:?}, master {m:?}"))
            }
        })
        .await;
        // And the master counts it as online (its initial sync finished): what a switchover
        // target must be.
        let what = format!("{} sees {} online", master.addr(), self.addr());
        let port = format!("port={},", self.port);
        eventually(&what, SETTLE_DEADLINE, async || {
            let info = master.info("replication").await?;
            let online = info.iter().any(|(name, value)| {
                name.starts_with("slave") && value.contains(&port) && value.contains("state=online")
            });
            if online {
                Ok(())
            } else {
                Err(format!("{info:?}"))
            }
        })
        .await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref()
            && self.stopped
        {
            signal(child, libc::SIGCONT);
        }
        if std::thread::panicking() && self.log_path().exists() {
            eprintln!(
                "[harness] redis-server {} log tail:\n{}",
                self.addr(),
                log_tail(&self.log_path(), 15)
            );
        }
        self.kill();
    }
}

/// Parses `INFO` text (`field:value` lines, `#` section headers) into a map.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Admin HTTP client
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.0 request with `Connection: close`; returns (status code, body).
pub async fn http(method: &str, addr: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse_http_response(&raw)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(r) => r.map_err(|e| format!("{method} http://{addr}{path}: {e}")),
        Err(_) => Err(format!(
            "{method} http://{addr}{path}: no response within 10s"
        )),
    }
}

pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response {text:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The parsed `/status` document with accessors for the fields tests assert on.
#[derive(Clone)]
pub struct Status(pub Value);

impl Status {
    pub fn master(&self) -> Option<&str> {
        self.0["master"].as_str()
    }
    pub fn epoch(&self) -> u64 {
        self.0["epoch"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric epoch in /status: {self}"))
    }
    /// The entry of `servers` whose address is `addr` (panics when absent: a contract breach).
    pub fn server(&self, addr: &str) -> &Value {
        self.0["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|v| v["address"].as_str() == Some(addr)))
            .unwrap_or_else(|| panic!("server {addr} missing from /status: {self}"))
    }
    pub fn last_failover(&self) -> &Value {
        &self.0["last_failover"]
    }
    pub fn reason(&self) -> Option<&str> {
        self.0["last_failover"]["reason"].as_str()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// redis-pair fixture
// ---------------------------------------------------------------------------------------------

/// A master A, its replica B and redis-pair in front of them with `extra` flags, A published.
pub async fn proxied_pair(extra: &[&str]) -> (RedisServer, RedisServer, RedisPair) {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let mut builder = RedisPair::builder().server(&a).server(&b);
    for arg in extra {
        builder = if *arg == CLIENTS_OVER_UNIX_SOCKET {
            builder.clients_over_unix_socket()
        } else {
            builder.arg(arg)
        };
    }
    let pair = builder.start().await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;
    (a, b, pair)
}

/// In the options of `proxied_pair`: the proxy also listens on a Unix socket
/// (`--listen-unix`), and `RedisPair::proxy_conn` connects through that.
pub const CLIENTS_OVER_UNIX_SOCKET: &str = "(clients over a Unix socket)";

/// Options for one `redis-pair local` process. Defaults are short so failovers take about a
/// second: probe every 100ms, down after 1s.
#[derive(Clone)]
pub struct PairBuilder {
    servers: Vec<String>,
    probe_interval: Duration,
    down_after: Duration,
    wait_for_master: Option<Duration>,
    switchover_timeout: Option<Duration>,
    drain_timeout: Duration,
    env: Vec<(String, String)>,
    extra_args: Vec<String>,
    unix_socket: UnixSocket,
    /// (listen, admin) tried before free ports (the harness's own test of port races).
    first_ports: Option<(u16, u16)>,
}

#[derive(Clone)]
enum UnixSocket {
    None,
    InTestDir,
    At(PathBuf),
}

/// The value of one series in a Prometheus text exposition, e.g.
/// `metric(text, r#"redispair_master{server="127.0.0.1:7000"}"#)`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

pub fn fmt_dur(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl PairBuilder {
    pub fn server(mut self, s: &RedisServer) -> Self {
        self.servers.push(s.addr());
        self
    }
    pub fn down_after(mut self, d: Duration) -> Self {
        self.down_after = d;
        self
    }
    pub fn wait_for_master(mut self, d: Duration) -> Self {
        self.wait_for_master = Some(d);
        self
    }
    pub fn switchover_timeout(mut self, d: Duration) -> Self {
        self.switchover_timeout = Some(d);
        self
    }
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }
    /// Any further command-line argument, e.g. `--no-multiplex`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }
    /// Tries these (listen, admin) ports first, as if `free_ports2` had returned them.
    pub fn first_ports(mut self, listen: u16, admin: u16) -> Self {
        self.first_ports = Some((listen, admin));
        self
    }

    /// Also listen on a Unix socket in the test's directory; `proxy_conn` uses it.
    pub fn clients_over_unix_socket(mut self) -> Self {
        self.unix_socket = UnixSocket::InTestDir;
        self
    }

    /// Also listen on the Unix socket at `path`; `proxy_conn` uses it.
    pub fn unix_socket_at(mut self, path: &Path) -> Self {
        self.unix_socket = UnixSocket::At(path.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn args(&self, listen: u16, admin: u16) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "local".into(),
            "--listen".into(),
            format!("127.0.0.1:{listen}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
            "--probe-interval".into(),
            fmt_dur(self.probe_interval),
            "--down-after".into(),
            fmt_dur(self.down_after),
            // 1s by default keeps Drop (SIGTERM) quick when a test leaves connections open.
            "--drain-timeout".into(),
            fmt_dur(self.drain_timeout),
        ];
        for s in &self.servers {
            a.push("--server".into());
            a.push(s.clone());
        }
        if let Some(d) = self.wait_for_master {
            a.push("--wait-for-master".into());
            a.push(fmt_dur(d));
        }
        if let Some(d) = self.switchover_timeout {
            a.push("--switchover-timeout".into());
            a.push(fmt_dur(d));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Starts redis-pair and waits until `/readyz` answers 200.
    pub async fn start(self) -> RedisPair {
        let mut last = String::new();
        for attempt in 0..3 {
            let (listen, admin, leases) = match self.first_ports {
                Some((listen, admin)) if attempt == 0 => (listen, admin, None),
                _ => {
                    let leases = (PortLease::take(), PortLease::take());
                    (leases.0.port(), leases.1.port(), Some(leases))
                }
            };
            let dir = TestDir::new(&format!("pair-{listen}"));
            let log = dir.path().join("redis-pair.log");
            let out = File::create(&log).expect("create log");
            let err = out.try_clone().expect("clone log handle");
            let unix = match &self.unix_socket {
                UnixSocket::None => None,
                UnixSocket::InTestDir => Some(dir.path().join("redis-pair.sock")),
                UnixSocket::At(path) => Some(path.clone()),
            };
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-pair"));
            cmd.args(self.args(listen, admin));
            if let Some(path) = &unix {
                cmd.arg("--listen-unix").arg(path);
            }
            cmd.env_remove("REDISPAIR_USERNAME")
                .env_remove("REDISPAIR_PASSWORD")
                .env("RUST_LOG", "debug")
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            die_with_parent(&mut cmd);
            let child = cmd.spawn().expect("spawn redis-pair");
            let mut pair = RedisPair {
                child: Some(child),
                listen: format!("127.0.0.1:{listen}"),
                admin: format!("127.0.0.1:{admin}"),
                unix,
                probe_interval: self.probe_interval,
                down_after: self.down_after,
                log,
                _dir: dir,
                _ports: leases,
            };
            let ready = match pair.await_ready().await {
                Ok(()) => pair.check_serves(&self.servers).await,
                Err(e) => Err(e),
            };
            match ready {
                Ok(()) => return pair,
                Err(e)
                    if e.contains("another redis-pair")
                        || (e.contains("exited")
                            && pair.log_text().to_lowercase().contains("in use")) =>
                {
                    last = e; // a port race with another test: try new ports
                }
                Err(e) => panic!(
                    "redis-pair did not become ready: {e}\nlog:\n{}",
                    log_tail(&pair.log, 60)
                ),
            }
        }
        panic!("redis-pair could not bind its ports after 3 attempts: {last}");
    }
}

/// A running `redis-pair local` process.
pub struct RedisPair {
    child: Option<Child>,
    listen: String,
    admin: String,
    unix: Option<PathBuf>,
    pub probe_interval: Duration,
    pub down_after: Duration,
    log: PathBuf,
    _dir: TestDir,
    /// Held while the process lives (None: ports chosen by the test).
    _ports: Option<(PortLease, PortLease)>,
}

impl RedisPair {
    pub fn builder() -> PairBuilder {
        PairBuilder {
            servers: Vec::new(),
            probe_interval: Duration::from_millis(100),
            down_after: Duration::from_secs(1),
            wait_for_master: None,
            switchover_timeout: None,
            drain_timeout: Duration::from_secs(1),
            env: Vec::new(),
            extra_args: Vec::new(),
            unix_socket: UnixSocket::None,
            first_ports: None,
        }
    }

    /// The proxy's client address (`--listen`).
    pub fn proxy_addr(&self) -> &str {
        &self.listen
    }

    pub fn admin_addr(&self) -> &str {
        &self.admin
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory of the redis-pair process now (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> Result<u64, String> {
        let pid = self.child.as_ref().ok_or("redis-pair is not running")?.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
        Ok(kib * 1024)
    }

    async fn await_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut last;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("redis-pair exited early with {status}"));
            }
            match self.readyz().await {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("/readyz {code}"),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {STARTUP_DEADLINE:?}; last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether the process answering on our admin port is ours, and not another test's that
    /// took the port between `free_ports2` and our bind (ours then exits): its `/status`
    /// lists exactly our servers. Our process binds every listener before it serves the admin
    /// port, so if the admin port is ours, so are the others.
    async fn check_serves(&self, servers: &[String]) -> Result<(), String> {
        let status = self.status().await?;
        let listed: Vec<&str> = status.0["servers"]
            .as_array()
            .map(|s| s.iter().filter_map(|v| v["address"].as_str()).collect())
            .unwrap_or_default();
        if listed == servers {
            return Ok(());
        }
        Err(format!(
            "{} is answered by another redis-pair (servers {listed:?}, ours {servers:?})",
            self.admin
        ))
    }

    pub async fn readyz(&self) -> Result<u16, String> {
        http("GET", &self.admin, "/readyz")
            .await
            .map(|(code, _)| code)
    }

    pub async fn status(&self) -> Result<Status, String> {
        let (code, body) = http("GET", &self.admin, "/status").await?;
        if code != 200 {
            return Err(format!("/status answered {code}: {body}"));
        }
        serde_json::from_str(&body)
            .map(Status)
            .map_err(|e| format!("/status is not JSON ({e}): {body}"))
    }

    pub async fn metrics(&self) -> Result<String, String> {
        match http("GET", &self.admin, "/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("/metrics answered {code}: {body}")),
        }
    }

    /// `POST /switchover[?target=...]`; returns the status code and the JSON body.
    pub async fn switchover(&self, target: Option<&str>) -> (u16, Value) {
        let path = match target {
            Some(t) => format!("/switchover?target={t}"),
            None => "/switchover".to_string(),
        };
        let (code, body) = http("POST", &self.admin, &path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("POST {path} answered {code} with a non-JSON body ({e}): {body:?}")
        });
        (code, json)
    }

    /// Waits until `/status` publishes `master` (None = no master) and returns that status.
    pub async fn await_master(&self, master: Option<&str>, within: Duration) -> Status {
        let what = format!("/status master == {master:?}");
        eventually(&what, within, async || {
            let s = self.status().await?;
            if s.master() == master {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
        .await
    }

    /// The proxy's Unix socket (`--listen-unix`), if it was started with one.
    pub fn proxy_unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// A new client connection through the proxy: over its Unix socket if it has one, else
    /// over TCP.
    pub async fn proxy_conn(&self) -> std::io::Result<Conn> {
        match &self.unix {
            Some(path) => Conn::connect_unix(path).await,
            None => Conn::connect(&self.listen).await,
        }
    }

    /// Runs one command through the proxy on a fresh connection until it gets a non-error
    /// reply (connections may be refused or closed around a failover), and returns that reply.
    pub async fn proxy_cmd_eventually(&self, args: &[&str], within: Duration) -> Resp {
        let what = format!("{args:?} through the proxy to succeed");
        eventually(&what, within, async || {
            let mut c = self
                .proxy_conn()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match c.cmd(args).await {
                Ok(Resp::Error(e)) => Err(format!("server error: {e}")),
                Ok(r) => Ok(r),
                Err(e) => Err(format!("io: {e}")),
            }
        })
        .await
    }
}

impl RedisPair {
    /// Sends SIGTERM (the process starts draining) without waiting for it to exit.
    pub fn terminate(&self) {
        if let Some(child) = self.child.as_ref() {
            signal(child, libc::SIGTERM);
        }
    }

    /// Waits up to `within` for the process to exit and returns its exit code (panics if it
    /// does not exit in time, or dies of a signal).
    pub async fn await_exit(&mut self, within: Duration) -> i32 {
        let child = self.child.as_mut().expect("redis-pair already reaped");
        eventually("redis-pair to exit", within, async || {
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
}

impl Drop for RedisPair {
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
                "[harness] redis-pair log tail ({}):\n{}",
                self.log.display(),
                log_tail(&self.log, 80)
            );
        }
    }
}
