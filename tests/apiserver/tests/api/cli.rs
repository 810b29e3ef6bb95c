//! The `test-apiserver` binary: serves with a kubeconfig until SIGTERM; bad input is one
//! `error:` line and exit 64.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

use crate::support::eventually;

const BINARY: &str = env!("CARGO_BIN_EXE_test-apiserver");

async fn run(args: &[&str]) -> std::process::Output {
    let output = tokio::process::Command::new(BINARY)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("exits")
        .expect("runs")
}

fn one_error_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[tokio::test]
async fn bad_flags_and_a_busy_port_are_one_error_line() {
    let bad = one_error_line(&run(&["--bogus"]).await);
    assert!(bad.contains("--bogus"), "{bad}");
    one_error_line(&run(&["--listen", "not-an-address"]).await);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let busy = holder.local_addr().expect("addr").to_string();
    let error = one_error_line(&run(&["--listen", &busy]).await);
    assert!(error.contains(&busy), "{error}");
}

#[tokio::test]
async fn the_binary_serves_kubectl_until_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(BINARY)
        .args([
            "--listen",
            &listen,
            "--kubeconfig",
            kubeconfig.to_str().expect("path"),
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
        .await
        .expect("announces")
        .expect("reads");
    assert_eq!(
        line.as_deref(),
        Some(format!("test-apiserver serving on http://{listen}").as_str())
    );
    let written = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    assert!(
        written.contains(&format!("server: http://{listen}"))
            && written.contains("namespace: default")
    );
    let home = tempfile::tempdir().expect("home");
    let output = tokio::process::Command::new(crate::support::kubectl_binary())
        .args([
            "get",
            "namespaces",
            "-o",
            "name",
            &format!("--cache-dir={}", home.path().join("cache").display()),
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .expect("kubectl runs");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec![
            "namespace/default",
            "namespace/kube-node-lease",
            "namespace/kube-public",
            "namespace/kube-system"
        ]
    );
    let pid = child.id().expect("pid");
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on SIGTERM")
        .expect("waits");
    assert!(status.success(), "{status}");
    eventually("the port to close", Duration::from_secs(5), || async {
        std::net::TcpStream::connect(&listen).is_err().then_some(())
    })
    .await;
}
