//! The chart's example installed by helm in a test's namespace: two Redis pods of a real
//! StatefulSet, their RedisPair, the chart's two controllers (their ServiceAccount and RBAC,
//! restricted to this namespace by `watchNamespaces`: one controller per namespace), and the
//! demo app with the redis-pair sidecar at 127.0.0.1:6379 in its pod.

use std::time::Duration;

use serde_json::Value;

use super::cluster::{Namespace, cluster};
use super::kube::{helm, kubectl, text, try_json};
use super::wait::eventually;

/// The helm release; every name below derives from it.
pub const RELEASE: &str = "demo";
/// The example RedisPair, its StatefulSet, its Secret's prefix.
pub const PAIR: &str = "demo-redis-pair-example";
/// How long anything the controller does may take on a loaded two-core machine.
pub const SETTLE: Duration = Duration::from_secs(60);

/// What the RedisPair says now.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// `redispair.io/active`: the master's `IP:port`.
    pub active: String,
    /// `redispair.io/epoch`.
    pub epoch: u64,
    /// `status.phase`.
    pub phase: String,
    /// `status.master.pod`.
    pub master_pod: String,
    /// Whether a `redispair.io/switchover` annotation is still there.
    pub switchover_pending: bool,
}

pub struct Example {
    pub ns: Namespace,
}

impl Example {
    /// `helm install` with the examples enabled, in a new namespace; returns once helm's
    /// `--wait` is satisfied (every pod Ready).
    pub fn install(test: &str) -> Example {
        Example::install_with(test, &[])
    }

    /// `install` with more helm arguments (`--set ...`).
    pub fn install_with(test: &str, more: &[&str]) -> Example {
        let example = Example {
            ns: cluster().namespace(test),
        };
        example.helm("install", more);
        example
    }

    /// `helm install` or `helm upgrade` of the release with the example, managing this
    /// namespace only, `more` added; returns once every pod is Ready (`--wait`).
    pub fn helm(&self, command: &str, more: &[&str]) {
        let only_here = format!("watchNamespaces={{{}}}", self.ns.name);
        let mut args = vec![
            command,
            RELEASE,
            "charts/redis-pair",
            "--namespace",
            &self.ns.name,
        ];
        args.extend(["--set", "examples.enabled=true", "--set", &only_here]);
        args.extend(["--wait", "--timeout", "180s"]);
        args.extend(more);
        helm(self.ns.cluster, &args);
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["--namespace", self.ns.name.as_str()];
        all.extend(args);
        kubectl(self.ns.cluster, &all)
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--namespace", self.ns.name.as_str()];
        all.extend(args);
        try_json(self.ns.cluster, &all)
    }

    pub fn published(&self) -> Result<Published, String> {
        let pair = self.json(&["get", "redispair", PAIR])?;
        let epoch = text(&pair, "/metadata/annotations/redispair.io~1epoch");
        Ok(Published {
            active: text(&pair, "/metadata/annotations/redispair.io~1active").to_owned(),
            epoch: epoch.parse().map_err(|_| format!("epoch {epoch:?}"))?,
            phase: text(&pair, "/status/phase").to_owned(),
            master_pod: text(&pair, "/status/master/pod").to_owned(),
            switchover_pending: pair
                .pointer("/metadata/annotations/redispair.io~1switchover")
                .is_some(),
        })
    }

    /// Waits until the pair is Healthy and `condition` holds of what it publishes.
    pub fn await_published(&self, what: &str, condition: impl Fn(&Published) -> bool) -> Published {
        eventually(what, SETTLE, || {
            let published = self.published()?;
            if published.phase == "Healthy" && !published.active.is_empty() && condition(&published)
            {
                Ok(published)
            } else {
                Err(format!("{published:?}"))
            }
        })
    }

    /// The example's Redis password, from its Secret.
    pub fn password(&self) -> String {
        self.kubectl(&[
            "get",
            "secret",
            &format!("{PAIR}-auth"),
            "-o",
            "go-template={{.data.password | base64decode}}",
        ])
    }

    /// A pod, as JSON.
    pub fn pod(&self, name: &str) -> Value {
        self.json(&["get", "pod", name])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The process id of a pod's container, as the node agent reports it in the pod status
    /// (`containerID: node-agent://PID`).
    pub fn container_pid(&self, pod: &str, container: &str) -> i32 {
        let pod = self.pod(pod);
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let status = statuses
            .iter()
            .find(|s| s["name"] == container)
            .unwrap_or_else(|| panic!("no status of container {container}: {pod}"));
        let id = text(status, "/containerID");
        id.strip_prefix("node-agent://")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("containerID {id:?}"))
    }

    /// The network namespace of the demo app's running pod: where its sidecar listens.
    pub fn app_netns(&self) -> String {
        let ip = eventually("a Ready demo pod", SETTLE, || {
            let pods = self.json(&[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=example-demo",
            ])?;
            pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .find(|p| ready(p))
                .map(|p| text(p, "/status/podIP").to_owned())
                .ok_or_else(|| "none yet".to_owned())
        });
        self.ns.cluster.netns_of(&ip)
    }

    /// The Redis pod names, from the StatefulSet's pods.
    pub fn redis_pods(&self) -> Vec<String> {
        let pods = self
            .json(&[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=example-redis",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| text(p, "/metadata/name").to_owned())
            .collect()
    }
}

/// The pod's Ready condition is True.
pub fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
