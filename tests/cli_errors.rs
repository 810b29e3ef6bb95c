//! Bad configuration makes `redis-pair local` exit quickly with code 64 and one `error: ` line
//! on stderr that names the problem (docs/INTERFACE.md, "Exit codes").

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{RedisServer, free_ports2};

/// A configuration error must be reported at once, not after retries or timeouts.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Runs `redis-pair local <args>` and waits for it to exit; panics if it is still running
/// after `EXIT_DEADLINE` (it is killed first).
fn run_local(args: &[String], env: &[(&str, &str)]) -> Outcome {
    let dir = support::TestDir::new("cli");
    let err_path = dir.path().join("stderr");
    let err_file = std::fs::File::create(&err_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-pair"));
    cmd.arg("local")
        .args(args)
        .env_remove("REDISPAIR_USERNAME")
        .env_remove("REDISPAIR_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn redis-pair");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > EXIT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-pair local {args:?} still running after {EXIT_DEADLINE:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    }
}

/// Lines of stderr that are log records (human format starts with a timestamp, JSON with `{`,
/// either may be coloured) are allowed; everything else must be the one error line.
fn is_log_record(line: &str) -> bool {
    line.starts_with(|c: char| c.is_ascii_digit() || c == '{' || c == '\u{1b}')
}

/// Asserts exit code 64, exactly one non-log stderr line, starting with `error: `, containing
/// every string of `all_of` and at least one of `any_of` (case-insensitive), and no panic.
fn assert_config_error(out: &Outcome, all_of: &[&str], any_of: &[&str]) {
    let stderr = &out.stderr;
    assert!(
        !stderr.contains("panicked"),
        "redis-pair panicked:\n{stderr}"
    );
    assert_eq!(
        out.code,
        Some(64),
        "exit code for bad configuration; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_log_record(l))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line on stderr, got:\n{stderr}"
    );
    let line = lines[0];
    assert!(
        line.starts_with("error: "),
        "the error line must start with `error: `: {line:?}"
    );
    let lower = line.to_lowercase();
    for s in all_of {
        assert!(
            lower.contains(&s.to_lowercase()),
            "error line must mention {s:?}: {line:?}"
        );
    }
    assert!(
        any_of.is_empty() || any_of.iter().any(|s| lower.contains(&s.to_lowercase())),
        "error line must mention one of {any_of:?}: {line:?}"
    );
}

/// `--listen` and `--admin-listen` on free ports, so only the error under test can occur.
fn listen_args() -> Vec<String> {
    let (listen, admin) = free_ports2();
    vec![
        "--listen".into(),
        format!("127.0.0.1:{listen}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
    ]
}

fn server_args(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--server".to_string(), a.clone()])
        .collect()
}

#[tokio::test]
async fn unresolvable_host_exits_64_naming_the_host() {
    let a = RedisServer::master().await;
    let mut args = listen_args();
    args.extend(server_args(&["no-such-host.invalid:6379".into(), a.addr()]));
    let out = run_local(&args, &[]);
    assert_config_error(&out, &["no-such-host.invalid"], &[]);
}

#[tokio::test]
async fn password_rejected_by_a_server_exits_64() {
    let a = RedisServer::builder().requirepass("right").start().await;
    let b = RedisServer::builder().requirepass("right").start().await;
    let mut args = listen_args();
    args.extend(server_args(&[a.addr(), b.addr()]));
    let out = run_local(&args, &[("REDISPAIR_PASSWORD", "wrong")]);
    assert_config_error(&out, &[], &["password", "auth"]);
}

#[tokio::test]
async fn duplicate_server_exits_64_naming_it() {
    let a = RedisServer::master().await;
    let b = RedisServer::master().await;
    let mut args = listen_args();
    args.extend(server_args(&[a.addr(), b.addr(), a.addr()]));
    let out = run_local(&args, &[]);
    assert_config_error(
        &out,
        &[&a.addr()],
        &["duplicate", "twice", "more than once", "repeated"],
    );
}

#[tokio::test]
async fn a_single_server_exits_64() {
    let a = RedisServer::master().await;
    let mut args = listen_args();
    args.extend(server_args(&[a.addr()]));
    let out = run_local(&args, &[]);
    assert_config_error(&out, &["server"], &["two", "2", "twice"]);
}

#[tokio::test]
async fn unparsable_duration_exits_64_naming_the_flag() {
    let a = RedisServer::master().await;
    let b = RedisServer::master().await;
    let mut args = listen_args();
    args.extend(server_args(&[a.addr(), b.addr()]));
    args.extend(["--down-after".to_string(), "banana".to_string()]);
    let out = run_local(&args, &[]);
    assert_config_error(&out, &["down-after"], &["banana"]);
}

#[tokio::test]
async fn listen_address_in_use_exits_64_naming_the_address() {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let (_, admin) = free_ports2();
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{busy_port}"),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin}"),
    ];
    args.extend(server_args(&[a.addr(), b.addr()]));
    let out = run_local(&args, &[]);
    assert_config_error(
        &out,
        &[&busy_port.to_string()],
        &["in use", "bind", "listen"],
    );
    drop(busy);
}

#[tokio::test]
async fn zero_shared_connections_exits_64_naming_the_flag_and_range() {
    let a = RedisServer::master().await;
    let b = RedisServer::master().await;
    let mut args = listen_args();
    args.extend(server_args(&[a.addr(), b.addr()]));
    args.extend(["--shared-connections".to_string(), "0".to_string()]);
    let out = run_local(&args, &[]);
    assert_config_error(&out, &["shared-connections"], &["1..=256", "range"]);
}

/// Free ports, the two servers, and `--listen-unix path`.
fn listen_unix_args(a: &RedisServer, b: &RedisServer, path: &std::path::Path) -> Vec<String> {
    let mut args = listen_args();
    args.extend(server_args(&[a.addr(), b.addr()]));
    args.extend(["--listen-unix".to_string(), path.display().to_string()]);
    args
}

#[tokio::test]
async fn unix_socket_in_a_missing_directory_exits_64_naming_the_path() {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let dir = support::TestDir::new("unix-missing");
    let path = dir.path().join("no-such-dir").join("redis-pair.sock");
    let out = run_local(&listen_unix_args(&a, &b, &path), &[]);
    assert_config_error(
        &out,
        &["--listen-unix", &path.display().to_string()],
        &["directory exists"],
    );
}

#[tokio::test]
async fn unix_socket_path_holding_a_regular_file_exits_64_and_keeps_the_file() {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let dir = support::TestDir::new("unix-file");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "keep me").unwrap();
    let out = run_local(&listen_unix_args(&a, &b, &path), &[]);
    assert_config_error(&out, &[&path.display().to_string()], &["not a socket"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[tokio::test]
async fn unix_socket_served_by_another_redis_pair_exits_64_and_leaves_it_serving() {
    let (a, b, running) = support::proxied_pair(&[support::CLIENTS_OVER_UNIX_SOCKET]).await;
    let path = running
        .proxy_unix_path()
        .expect("unix socket")
        .to_path_buf();
    let out = run_local(&listen_unix_args(&a, &b, &path), &[]);
    assert_config_error(
        &out,
        &[&path.display().to_string()],
        &["another process is serving"],
    );
    // The first one's socket file is untouched and still serves.
    let mut conn = running.proxy_conn().await.expect("connect over the socket");
    assert!(conn.cmd(&["SET", "k", "v"]).await.unwrap().is_ok());
}
