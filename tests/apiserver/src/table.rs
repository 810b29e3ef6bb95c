//! Server-side printing: the `Table` (meta.k8s.io/v1) that `kubectl get` asks for, with the
//! columns of the real printers (pkg/printers/internalversion) for built-in kinds and a CRD's
//! additionalPrinterColumns (JSONPath) for custom resources.

use jiff::Timestamp;
use jsonpath_rust::JsonPath;
use serde_json::{Value, json};

use crate::resources::{Behaviour, ResourceType};

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// One column of a Table.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_: &'static str,
    pub format: String,
    pub description: String,
    pub priority: i64,
    /// Where a CRD column reads its value.
    json_path: Option<String>,
}

fn column(name: &str, type_: &'static str, priority: i64, description: &str) -> Column {
    Column {
        name: name.into(),
        type_,
        format: String::new(),
        description: description.into(),
        priority,
        json_path: None,
    }
}

fn name_column() -> Column {
    Column {
        format: "name".into(),
        ..column("Name", "string", 0, NAME_DESCRIPTION)
    }
}

fn age_column() -> Column {
    column("Age", "string", 0, AGE_DESCRIPTION)
}

impl Column {
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.type_, "format": self.format, "description": self.description, "priority": self.priority})
    }
}

/// The columns the real server prints for a kind.
pub fn columns(kind: &ResourceType) -> Vec<Column> {
    let s = |name: &str| column(name, "string", 0, "");
    let wide = |name: &str| column(name, "string", 1, "");
    match (kind.behaviour, kind.group.as_str(), kind.plural.as_str()) {
        (Behaviour::Custom, _, _) => {
            let mut columns = vec![name_column()];
            let custom = if kind.printer_columns.is_empty() {
                vec![Column {
                    json_path: Some(".metadata.creationTimestamp".into()),
                    ..column("Age", "date", 0, AGE_DESCRIPTION)
                }]
            } else {
                kind.printer_columns
                    .iter()
                    .map(|c| Column {
                        name: c.name.clone(),
                        type_: match c.type_.as_str() {
                            "integer" => "integer",
                            "number" => "number",
                            "boolean" => "boolean",
                            "date" => "date",
                            _ => "string",
                        },
                        format: c.format.clone(),
                        description: c.description.clone(),
                        priority: c.priority,
                        json_path: Some(c.json_path.clone()),
                    })
                    .collect()
            };
            columns.extend(custom);
            columns
        }
        (Behaviour::Pod, _, _) => vec![
            name_column(),
            column(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            column(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age_column(),
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ],
        (Behaviour::Namespace, _, _) => vec![name_column(), s("Status"), age_column()],
        (Behaviour::Secret, _, _) => vec![
            name_column(),
            s("Type"),
            column("Data", "integer", 0, ""),
            age_column(),
        ],
        (Behaviour::Service, _, _) => vec![
            name_column(),
            s("Type"),
            s("Cluster-IP"),
            s("External-IP"),
            s("Port(s)"),
            age_column(),
            wide("Selector"),
        ],
        (Behaviour::CustomResourceDefinition, _, _) => vec![
            name_column(),
            Column {
                format: "date-time".into(),
                ..s("Created At")
            },
        ],
        (_, "", "configmaps") => vec![
            name_column(),
            column("Data", "integer", 0, ""),
            age_column(),
        ],
        (_, "", "serviceaccounts") => vec![
            name_column(),
            column("Secrets", "integer", 0, ""),
            age_column(),
        ],
        (_, "coordination.k8s.io", "leases") => vec![name_column(), s("Holder"), age_column()],
        (_, _, "events") => vec![
            s("Last Seen"),
            s("Type"),
            s("Reason"),
            s("Object"),
            wide("Subobject"),
            wide("Source"),
            s("Message"),
            wide("First Seen"),
            column("Count", "integer", 1, ""),
            Column {
                format: "name".into(),
                ..wide("Name")
            },
        ],
        (_, "apps", "deployments") => vec![
            name_column(),
            s("Ready"),
            column("Up-to-date", "integer", 0, ""),
            column("Available", "integer", 0, ""),
            age_column(),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        (_, "apps", "statefulsets") => vec![
            name_column(),
            s("Ready"),
            age_column(),
            wide("Containers"),
            wide("Images"),
        ],
        (_, "policy", "poddisruptionbudgets") => vec![
            name_column(),
            s("Min Available"),
            s("Max Unavailable"),
            column("Allowed Disruptions", "integer", 0, ""),
            age_column(),
        ],
        (_, "networking.k8s.io", "networkpolicies") => {
            vec![name_column(), s("Pod-Selector"), age_column()]
        }
        (_, "rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            vec![
                name_column(),
                s("Role"),
                age_column(),
                wide("Users"),
                wide("Groups"),
                wide("ServiceAccounts"),
            ]
        }
        _ => vec![
            name_column(),
            Column {
                format: "date-time".into(),
                ..s("Created At")
            },
        ],
    }
}

/// `duration.HumanDuration`: how kubectl and the server print ages.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn since(timestamp: Option<&str>, now: Timestamp) -> String {
    match timestamp.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn count(value: &Value, pointer: &str) -> i64 {
    match value.pointer(pointer) {
        Some(Value::Object(m)) => m.len() as i64,
        Some(Value::Array(a)) => a.len() as i64,
        _ => 0,
    }
}

fn labels_text(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The cells of one row, in `columns(kind)` order.
pub fn cells(kind: &ResourceType, object: &Value, now: Timestamp) -> Vec<Value> {
    let name = text(object, "/metadata/name");
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let age = Value::String(since(created, now));
    match (kind.behaviour, kind.group.as_str(), kind.plural.as_str()) {
        (Behaviour::Custom, _, _) => {
            let mut cells = vec![Value::String(name)];
            for column in columns(kind).iter().skip(1) {
                cells.push(custom_cell(column, object, now));
            }
            cells
        }
        (Behaviour::Pod, _, _) => pod_cells(object, name, age, now),
        (Behaviour::Namespace, _, _) => {
            vec![name.into(), text(object, "/status/phase").into(), age]
        }
        (Behaviour::Secret, _, _) => vec![
            name.into(),
            text(object, "/type").into(),
            count(object, "/data").into(),
            age,
        ],
        (Behaviour::Service, _, _) => {
            let type_ = text(object, "/spec/type");
            let ports: Vec<String> = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let protocol = p["protocol"].as_str().unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(node_port) => format!("{}:{node_port}/{protocol}", p["port"]),
                        None => format!("{}/{protocol}", p["port"]),
                    }
                })
                .collect();
            let external = object
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|ips| {
                    ips.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name.into(),
                type_.into(),
                or_none(text(object, "/spec/clusterIP")).into(),
                or_none(external).into(),
                or_none(ports.join(",")).into(),
                age,
                or_none(labels_text(object.pointer("/spec/selector"))).into(),
            ]
        }
        (Behaviour::CustomResourceDefinition, _, _) => vec![
            name.into(),
            text(object, "/metadata/creationTimestamp").into(),
        ],
        (_, "", "configmaps") => {
            vec![
                name.into(),
                (count(object, "/data") + count(object, "/binaryData")).into(),
                age,
            ]
        }
        (_, "", "serviceaccounts") => vec![name.into(), count(object, "/secrets").into(), age],
        (_, "coordination.k8s.io", "leases") => {
            vec![
                name.into(),
                or_none(text(object, "/spec/holderIdentity")).into(),
                age,
            ]
        }
        (_, _, "events") => event_cells(object, name, now),
        (_, "apps", "deployments") => vec![
            name.into(),
            format!(
                "{}/{}",
                object
                    .pointer("/status/readyReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                object
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )
            .into(),
            object
                .pointer("/status/updatedReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .into(),
            object
                .pointer("/status/availableReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .into(),
            age,
            containers_text(object, "name").into(),
            containers_text(object, "image").into(),
            or_none(labels_text(object.pointer("/spec/selector/matchLabels"))).into(),
        ],
        (_, "apps", "statefulsets") => vec![
            name.into(),
            format!(
                "{}/{}",
                object
                    .pointer("/status/readyReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                object
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )
            .into(),
            age,
            containers_text(object, "name").into(),
            containers_text(object, "image").into(),
        ],
        (_, "policy", "poddisruptionbudgets") => vec![
            name.into(),
            if object.pointer("/spec/minAvailable").is_some() {
                text(object, "/spec/minAvailable")
            } else {
                "N/A".into()
            }
            .into(),
            if object.pointer("/spec/maxUnavailable").is_some() {
                text(object, "/spec/maxUnavailable")
            } else {
                "N/A".into()
            }
            .into(),
            object
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .into(),
            age,
        ],
        (_, "networking.k8s.io", "networkpolicies") => {
            vec![
                name.into(),
                or_none(labels_text(object.pointer("/spec/podSelector/matchLabels"))).into(),
                age,
            ]
        }
        (_, "rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let subjects = |kind: &str| {
                object
                    .pointer("/subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| match s["namespace"].as_str() {
                        Some(ns) if kind == "ServiceAccount" => {
                            format!("{ns}/{}", s["name"].as_str().unwrap_or(""))
                        }
                        _ => s["name"].as_str().unwrap_or("").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name.into(),
                format!(
                    "{}/{}",
                    text(object, "/roleRef/kind"),
                    text(object, "/roleRef/name")
                )
                .into(),
                age,
                subjects("User").into(),
                subjects("Group").into(),
                subjects("ServiceAccount").into(),
            ]
        }
        _ => vec![
            name.into(),
            text(object, "/metadata/creationTimestamp").into(),
        ],
    }
}

fn containers_text(object: &Value, field: &str) -> String {
    object
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c[field].as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `printPod`: READY, STATUS (the container reasons, `Terminating` once deletionTimestamp is
/// set), RESTARTS, AGE, and the wide columns.
fn pod_cells(object: &Value, name: String, age: Value, now: Timestamp) -> Vec<Value> {
    let total = object
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = text(object, "/status/phase");
    if let Some(r) = object
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        reason = r.to_string();
    }
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut has_running = false;
    let statuses = object
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for status in statuses.iter().rev() {
        restarts += status["restartCount"].as_i64().unwrap_or(0);
        if let Some(finished) = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            && last_restart.is_none_or(|l| finished > l)
        {
            last_restart = Some(finished);
        }
        if let Some(waiting) = status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            reason = waiting.to_string();
        } else if let Some(terminated) = status.pointer("/state/terminated") {
            reason = match terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => r.to_string(),
                None => match terminated["signal"].as_i64().filter(|s| *s != 0) {
                    Some(signal) => format!("Signal:{signal}"),
                    None => format!("ExitCode:{}", terminated["exitCode"].as_i64().unwrap_or(0)),
                },
            };
        } else if status["ready"].as_bool() == Some(true)
            && status.pointer("/state/running").is_some()
        {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        reason = if object.pointer("/status/reason").and_then(Value::as_str) == Some("NodeLost") {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts_text = match last_restart {
        Some(at) => format!(
            "{restarts} ({} ago)",
            human_duration(now.duration_since(at).as_secs())
        ),
        None => restarts.to_string(),
    };
    let gates = object
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let gates_text = if gates == 0 {
        "<none>".to_string()
    } else {
        let conditions = object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let true_gates = object
            .pointer("/spec/readinessGates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|g| {
                conditions
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        format!("{true_gates}/{gates}")
    };
    vec![
        name.into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_text.into(),
        age,
        or_none(text(object, "/status/podIP")).into(),
        or_none(text(object, "/spec/nodeName")).into(),
        or_none(text(object, "/status/nominatedNodeName")).into(),
        gates_text.into(),
    ]
}

fn event_cells(object: &Value, name: String, now: Timestamp) -> Vec<Value> {
    let first = ["/firstTimestamp", "/deprecatedFirstTimestamp", "/eventTime"]
        .iter()
        .find_map(|p| object.pointer(p).and_then(Value::as_str))
        .map(str::to_string);
    let last = [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/deprecatedLastTimestamp",
        "/eventTime",
    ]
    .iter()
    .find_map(|p| object.pointer(p).and_then(Value::as_str))
    .map(str::to_string);
    let regarding = object
        .get("involvedObject")
        .or_else(|| object.get("regarding"))
        .cloned()
        .unwrap_or(Value::Null);
    let count = object
        .pointer("/series/count")
        .or_else(|| object.get("count"))
        .or_else(|| object.get("deprecatedCount"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let message = object
        .get("message")
        .or_else(|| object.get("note"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let source = match (
        text(object, "/source/component"),
        text(object, "/reportingController"),
        text(object, "/reportingComponent"),
    ) {
        (s, _, _) if !s.is_empty() => s,
        (_, s, _) if !s.is_empty() => s,
        (_, _, s) => s,
    };
    vec![
        since(last.as_deref(), now).into(),
        text(object, "/type").into(),
        text(object, "/reason").into(),
        format!(
            "{}/{}",
            regarding["kind"].as_str().unwrap_or("").to_lowercase(),
            regarding["name"].as_str().unwrap_or("")
        )
        .into(),
        text(&regarding, "/fieldPath").into(),
        source.into(),
        message.into(),
        since(first.as_deref(), now).into(),
        count.into(),
        name.into(),
    ]
}

/// A Kubernetes JSONPath of a printer column (`.spec.x`, `{.spec.x}`) as RFC 9535 JSONPath.
fn to_rfc_path(path: &str) -> String {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    if path.starts_with('.') || path.starts_with('[') {
        format!("${path}")
    } else {
        format!("$.{path}")
    }
}

fn custom_cell(column: &Column, object: &Value, now: Timestamp) -> Value {
    let Some(path) = &column.json_path else {
        return Value::Null;
    };
    let Ok(results) = object.query(&to_rfc_path(path)) else {
        return Value::Null;
    };
    let Some(value) = results.first().copied() else {
        return Value::Null;
    };
    match (column.type_, value) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(s)) => Value::String(s.clone()),
        ("string", other) => Value::String(other.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_f64().map(|f| Value::from(f as i64)))
            .unwrap_or(Value::Null),
        ("number", Value::Number(n)) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => match s.parse::<Timestamp>() {
            Ok(t) => Value::String(human_duration(now.duration_since(t).as_secs())),
            Err(_) => Value::String("<invalid>".into()),
        },
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn human_durations_as_kubectl_prints_them() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 120, "3h2m"),
            (9 * 3600, "9h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
            (-5, "<invalid>"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn pod_rows_follow_print_pod() {
        let registry = Registry::default();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.0.0.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let row = cells(&pods, &pod, now);
        assert_eq!(
            row,
            vec![
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("1"),
                json!("10m"),
                json!("127.0.0.2"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let mut terminating = pod.clone();
        terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:11:00Z");
        assert_eq!(cells(&pods, &terminating, now)[2], "Terminating");
        assert_eq!(columns(&pods).iter().filter(|c| c.priority == 0).count(), 5);
    }

    #[test]
    fn custom_columns_read_json_paths() {
        let crd = json!({
            "metadata": {"name": "redispairs.redispair.io"},
            "spec": {"group": "redispair.io", "scope": "Namespaced", "names": {"plural": "redispairs", "kind": "RedisPair"},
                "versions": [{"name": "v1", "served": true, "storage": true, "additionalPrinterColumns": [
                    {"name": "Master", "type": "string", "jsonPath": ".status.master"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Port", "type": "integer", "jsonPath": ".spec.port", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ]}]}
        });
        let types = crate::resources::custom_types(&crd).expect("valid");
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().expect("time");
        let object = json!({"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"port": 6379},
            "status": {"master": "a-0", "conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(
            cells(&types[0], &object, now),
            vec![
                json!("a"),
                json!("a-0"),
                json!("True"),
                json!(6379),
                json!("60m")
            ]
        );
        let bare = json!({"metadata": {"name": "b"}});
        assert_eq!(cells(&types[0], &bare, now)[1], Value::Null);
    }
}
