//! kubectl (the server's own version, `DIR/kubectl`) and helm (`target/tools/helm`) against the
//! test process's cluster, as cluster-admin. Answers as text or JSON.

use std::process::Command;

use serde_json::Value;

use super::cluster::{Cluster, repo};

/// Runs kubectl; its stdout, or why it failed.
pub fn try_kubectl(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    run(
        Command::new(cluster.dir.join("kubectl")).args(args),
        cluster,
        "kubectl",
        args,
    )
}

/// Runs kubectl and panics if it fails.
pub fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    try_kubectl(cluster, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl ... -o json`, parsed; or why it failed.
pub fn try_json(cluster: &Cluster, args: &[&str]) -> Result<Value, String> {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let out = try_kubectl(cluster, &args)?;
    serde_json::from_str(&out).map_err(|e| format!("kubectl {args:?}: {e}"))
}

/// Runs helm and panics if it fails.
pub fn helm(cluster: &Cluster, args: &[&str]) -> String {
    let mut command = Command::new(repo().join("target/tools/helm"));
    command.args(args).current_dir(repo());
    run(&mut command, cluster, "helm", args).unwrap_or_else(|e| panic!("{e}"))
}

fn run(
    command: &mut Command,
    cluster: &Cluster,
    tool: &str,
    args: &[&str],
) -> Result<String, String> {
    let out = command
        .env("KUBECONFIG", cluster.kubeconfig())
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{tool} {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A string at a JSON pointer, or "".
pub fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}
