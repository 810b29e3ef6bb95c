//! The `RedisPair` custom resource (`redispair.io/v1alpha1`): the one source of truth for the
//! CRD (`redis-pair crd` prints it; `crds/redispair.yaml` and the chart's copy are that output),
//! and the annotations and labels through which the controller and the sidecars meet.
//!
//! The schema carries every rule the API server can check before anything reaches the
//! controller: ranges, duration formats, and CEL rules for what spans fields. The controller
//! checks the same rules again (`controller::validate`), so a cluster that skipped them still
//! gets a clear status instead of a misbehaving engine.

use std::time::Duration as StdDuration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::Duration;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::engine::{Endpoint, Published};

/// The published master, `IP:port`, or empty when there is none. What every sidecar follows.
pub const ACTIVE_ANNOTATION: &str = "redispair.io/active";
/// The fencing epoch of [`ACTIVE_ANNOTATION`]: a decimal that only ever rises.
pub const EPOCH_ANNOTATION: &str = "redispair.io/epoch";
/// The published master's Redis `run_id` when it was published (empty: not known). A new
/// leader starts its engine from it, so a master that restarted (possibly empty) while no
/// controller led is still told from the process that was published.
pub const MASTER_RUN_ID_ANNOTATION: &str = "redispair.io/master-run-id";
/// The published master's replication ID (`master_replid`) when it was published (empty: not
/// known): the history a server must hold to take over without losing the data.
pub const MASTER_REPLID_ANNOTATION: &str = "redispair.io/master-replid";
/// The history the published master's continues (`master_replid2` of a promoted master;
/// empty: none or not known).
pub const MASTER_REPLID2_ANNOTATION: &str = "redispair.io/master-replid2";
/// Set by a person (`kubectl annotate rpair NAME redispair.io/switchover=POD` or `=any`) to ask
/// for a planned switchover; the controller removes it when it is done.
pub const SWITCHOVER_ANNOTATION: &str = "redispair.io/switchover";
/// On the Redis pods: `master` or `replica`, so a Service can select the master for clients
/// without a sidecar.
pub const ROLE_LABEL: &str = "redispair.io/role";

/// A group of Redis pods, one master and its replicas, kept highly available by the
/// redis-pair controller and reached through the redis-pair sidecar.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "redispair.io",
    version = "v1alpha1",
    kind = "RedisPair",
    namespaced,
    shortname = "rpair",
    category = "redis",
    status = "RedisPairStatus",
    doc = "A Redis master with its replicas, kept highly available by redis-pair",
    printcolumn = r#"{"name":"Master","type":"string","jsonPath":".status.master.pod"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.replicasInSync","description":"replicas in sync with the master / replicas"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.master.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Last-Failover","type":"string","jsonPath":".status.lastFailover.reason","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
// In milliseconds, not `duration(string(...) + 's')`: the real API server estimates the cost
// of building a string of unbounded length and refuses the whole CRD (100x over budget).
#[x_kube(validation = Rule::new(
    "!self.fencing.enabled || duration(self.failover.downAfter).getMilliseconds() >= (self.fencing.maxLagSeconds + 2) * 1000 + duration(self.failover.probeInterval).getMilliseconds()"
).message(
    "failover.downAfter must be at least fencing.maxLagSeconds + 2s + failover.probeInterval: a master cut off from its replicas may take writes for up to maxLagSeconds + 2s, and no replica may be promoted before it stops"
))]
#[x_kube(validation = Rule::new(
    "duration(self.failover.probeTimeout) < duration(self.failover.downAfter)"
).message(
    "failover.probeTimeout must be shorter than failover.downAfter, or a hung master is never seen failing before it is down"
))]
pub struct RedisPairSpec {
    /// Selects the Redis pods of this group (a master and one or more replicas) in the
    /// RedisPair's namespace. A pod may belong to one RedisPair only.
    #[x_kube(validation = Rule::new(
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
    ).message("selector must not be empty: an empty selector matches every pod in the namespace"))]
    pub selector: LabelSelector,

    /// The Redis port of every selected pod.
    #[serde(default = "default_port")]
    #[schemars(extend("minimum" = 1, "maximum" = 65535))]
    pub port: i32,

    /// The Secret key holding the password of Redis's default user (requirepass). The
    /// controller uses it for its own connections and re-reads it when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,

    #[serde(default)]
    pub failover: FailoverSpec,

    /// Observe and report, never act: no promotion, no repointing, no publication.
    #[serde(default)]
    pub paused: bool,

    #[serde(default)]
    pub fencing: FencingSpec,
}

/// A key of a Secret in the RedisPair's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How failures are detected and how long a planned switchover may take. Durations are
/// written as Go durations: `500ms`, `2s`, `1m30s`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// How often every Redis pod is probed.
    #[serde(default = "default_probe_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('1m')").message("must be between 10ms and 1m"))]
    pub probe_interval: Duration,

    /// Deadline of one probe (connect, AUTH and INFO together).
    #[serde(default = "default_probe_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('1m')").message("must be between 10ms and 1m"))]
    pub probe_timeout: Duration,

    /// A master that stops answering is failed over after this long; one whose process is
    /// gone (connection refused, pod deleted) at once.
    #[serde(default = "default_down_after")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('10m')").message("must be between 100ms and 10m"))]
    pub down_after: Duration,

    /// A planned switchover is aborted (and the master unpaused) if the new master has not
    /// caught up within this.
    #[serde(default = "default_switchover_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('10m')").message("must be between 100ms and 10m"))]
    pub switchover_timeout: Duration,
}

/// Write fencing: while a replica is in sync, the master keeps `min-replicas-to-write 1`, so a
/// master cut off from its replicas and from the controller stops acknowledging writes within
/// `maxLagSeconds` + 2s (Redis counts the lag in whole seconds and checks it once a second)
/// instead of taking writes a promoted replica never sees. When the
/// controller reaches the master and sees no replica left, it lowers the fence so the master
/// alone keeps serving.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FencingSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `min-replicas-max-lag`: how long, in seconds, the master accepts writes without an
    /// acknowledgement from a replica.
    #[serde(default = "default_max_lag")]
    #[schemars(extend("minimum" = 1, "maximum" = 3600))]
    pub max_lag_seconds: i32,
}

/// Go's duration syntax, without a sign.
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

fn default_port() -> i32 {
    6379
}
fn default_secret_key() -> String {
    "password".into()
}
fn default_probe_interval() -> Duration {
    StdDuration::from_millis(500).into()
}
fn default_probe_timeout() -> Duration {
    StdDuration::from_millis(250).into()
}
fn default_down_after() -> Duration {
    StdDuration::from_secs(5).into()
}
fn default_switchover_timeout() -> Duration {
    StdDuration::from_secs(5).into()
}
fn default_true() -> bool {
    true
}
fn default_max_lag() -> i32 {
    2
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            down_after: default_down_after(),
            switchover_timeout: default_switchover_timeout(),
        }
    }
}

impl Default for FencingSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_lag_seconds: default_max_lag(),
        }
    }
}

/// What the controller observed and did, written through the status subresource only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisPairStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// One line on what is wrong or what the controller waits for, when something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The published master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas in sync with the master / replicas, e.g. `1/1` (the REPLICAS column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_in_sync: Option<String>,
    /// The fencing epoch of the published master (the `redispair.io/epoch` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover: Option<SwitchoverStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// A master is published and every replica is in sync with it.
    Healthy,
    /// A master is published, but a replica is missing, down or not in sync.
    Degraded,
    /// No master is published: every client waits.
    NoMaster,
    /// `spec.paused`: observed and reported, never acted on.
    Paused,
    /// The RedisPair cannot be managed as it is; the condition `Valid` says why and how to fix it.
    Invalid,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Healthy => "Healthy",
            Phase::Degraded => "Degraded",
            Phase::NoMaster => "NoMaster",
            Phase::Paused => "Paused",
            Phase::Invalid => "Invalid",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterStatus {
    pub pod: String,
    /// `IP:port`, as in the `redispair.io/active` annotation.
    pub endpoint: String,
    /// The master's Redis run_id when it was published: a new controller tells a restarted
    /// (possibly empty) master from the one it took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub pod: String,
    pub endpoint: String,
    /// Its replication link to the master is up.
    pub link_up: bool,
    /// How far behind the master's replication offset it is, when both answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    pub time: Time,
    /// The pod that was master, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The pod that is master now; none when no master could be published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// master-down, master-restarted, switchover, master-leaving, no-master-reachable,
    /// recovered.
    pub reason: String,
    pub epoch: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverStatus {
    pub time: Time,
    /// What was asked for: a pod name, or `any`.
    pub requested: String,
    pub succeeded: bool,
    pub message: String,
}

/// The CRD as YAML, as `redis-pair crd` prints it and `crds/redispair.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let yaml = serde_saphyr::to_string(&RedisPair::crd())?;
    Ok(format!(
        "# Generated by `redis-pair crd` from src/crd.rs; do not edit by hand.\n{yaml}"
    ))
}

/// What the annotations of a RedisPair publish.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("annotation {EPOCH_ANNOTATION} is {0:?}, not a decimal number")]
    Epoch(String),
    #[error("annotation {ACTIVE_ANNOTATION} is {0:?}, not IP:port")]
    Active(String),
}

/// The publication the annotations carry: `None` when nothing was ever published.
pub fn published(pair: &RedisPair) -> Result<Option<Published>, AnnotationError> {
    let annotations = pair.metadata.annotations.as_ref();
    let Some(epoch) = annotations.and_then(|a| a.get(EPOCH_ANNOTATION)) else {
        return Ok(None);
    };
    let epoch = epoch
        .trim()
        .parse::<u64>()
        .map_err(|_| AnnotationError::Epoch(epoch.clone()))?;
    let master = match annotations.and_then(|a| a.get(ACTIVE_ANNOTATION)) {
        None => None,
        Some(active) if active.trim().is_empty() => None,
        Some(active) => Some(
            active
                .trim()
                .parse::<Endpoint>()
                .map_err(|_| AnnotationError::Active(active.clone()))?,
        ),
    };
    // Written in the same patch as the epoch; absent (a publication by an older redis-pair,
    // or by hand) or empty means not known.
    let identity = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Ok(Some(Published {
        epoch,
        master,
        run_id: identity(MASTER_RUN_ID_ANNOTATION),
        replid: identity(MASTER_REPLID_ANNOTATION),
        replid2: identity(MASTER_REPLID2_ANNOTATION),
    }))
}

impl FailoverSpec {
    pub fn probe_interval(&self) -> StdDuration {
        self.probe_interval.into()
    }
    pub fn probe_timeout(&self) -> StdDuration {
        self.probe_timeout.into()
    }
    pub fn down_after(&self) -> StdDuration {
        self.down_after.into()
    }
    pub fn switchover_timeout(&self) -> StdDuration {
        self.switchover_timeout.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(annotations: &[(&str, &str)]) -> RedisPair {
        let mut pair = RedisPair::new(
            "cache",
            serde_json::from_value(serde_json::json!({
                "selector": {"matchLabels": {"app": "redis"}}
            }))
            .expect("a minimal spec"),
        );
        pair.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        pair
    }

    #[test]
    fn a_minimal_spec_gets_every_default() {
        let spec = pair(&[]).spec;
        assert_eq!(spec.port, 6379);
        assert_eq!(spec.auth_secret_ref, None);
        assert_eq!(spec.failover, FailoverSpec::default());
        assert_eq!(spec.failover.down_after(), StdDuration::from_secs(5));
        assert!(!spec.paused);
        assert_eq!(spec.fencing, FencingSpec::default());
    }

    #[test]
    fn annotations_give_the_publication() {
        let none = pair(&[]);
        assert_eq!(published(&none), Ok(None));
        let p = pair(&[
            (EPOCH_ANNOTATION, "7"),
            (ACTIVE_ANNOTATION, "10.0.0.5:6379"),
        ]);
        assert_eq!(
            published(&p),
            Ok(Some(Published {
                epoch: 7,
                master: Some(Endpoint::new("10.0.0.5", 6379)),
                run_id: None,
                replid: None,
                replid2: None,
            }))
        );
        let known = pair(&[
            (EPOCH_ANNOTATION, "9"),
            (ACTIVE_ANNOTATION, "10.0.0.5:6379"),
            (MASTER_RUN_ID_ANNOTATION, "4f2a"),
            (MASTER_REPLID_ANNOTATION, "9c1e"),
        ]);
        let known = published(&known).ok().flatten().unwrap_or_default();
        assert_eq!(known.run_id.as_deref(), Some("4f2a"));
        assert_eq!(known.replid.as_deref(), Some("9c1e"));
        let unknown = pair(&[
            (EPOCH_ANNOTATION, "9"),
            (MASTER_RUN_ID_ANNOTATION, ""),
            (MASTER_REPLID_ANNOTATION, " "),
        ]);
        let unknown = published(&unknown).ok().flatten().unwrap_or_default();
        assert_eq!((unknown.run_id, unknown.replid), (None, None));
        let no_master = pair(&[(EPOCH_ANNOTATION, "8"), (ACTIVE_ANNOTATION, "")]);
        assert_eq!(
            published(&no_master).map(|p| p.map(|p| p.master)),
            Ok(Some(None))
        );
    }

    #[test]
    fn bad_annotations_are_errors_not_a_fresh_start() {
        let p = pair(&[(EPOCH_ANNOTATION, "seven")]);
        assert_eq!(published(&p), Err(AnnotationError::Epoch("seven".into())));
        let p = pair(&[(EPOCH_ANNOTATION, "3"), (ACTIVE_ANNOTATION, "nowhere")]);
        assert_eq!(
            published(&p),
            Err(AnnotationError::Active("nowhere".into()))
        );
    }

    #[test]
    fn the_crd_carries_the_rules_the_api_server_checks() {
        let crd = serde_json::to_value(RedisPair::crd()).expect("serializes");
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["port"]["maximum"].as_f64(),
            Some(65535.0)
        );
        assert_eq!(spec["properties"]["port"]["format"], "int32");
        assert_eq!(spec["properties"]["port"]["default"], 6379);
        assert_eq!(
            spec["properties"]["failover"]["properties"]["downAfter"]["pattern"],
            DURATION_PATTERN
        );
        let rules = spec["x-kubernetes-validations"]
            .as_array()
            .expect("cross-field rules");
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Master",
                "Replicas",
                "Epoch",
                "Phase",
                "Age",
                "Endpoint",
                "Last-Failover"
            ]
        );
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "rpair");
    }
}
