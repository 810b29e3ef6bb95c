//! Label and field selectors as the real server parses and applies them
//! (k8s.io/apimachinery/pkg/labels and pkg/fields).

use serde_json::Value;

use crate::resources::{Behaviour, ResourceType};
use crate::status::Status;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn bad_selector(selector: &str, why: &str) -> Status {
    Status::bad_request(format!(
        "unable to parse requirement: {why} (in selector {selector:?})"
    ))
}

/// Splits at commas that are not inside `( )`.
fn split_requirements(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    name_ok && prefix_ok
}

fn valid_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn parse_set(selector: &str, rest: &str) -> Result<Vec<String>, Status> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad_selector(selector, "expected a parenthesised set of values"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(bad_selector(
            selector,
            &format!("invalid label value: {bad:?}"),
        ));
    }
    Ok(values)
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, Status> {
        let mut requirements = Vec::new();
        if selector.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for part in split_requirements(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad_selector(selector, "found '', expected: identifier"));
            }
            let (key, op) = if let Some(key) = part.strip_prefix('!') {
                (key.trim().to_string(), Op::DoesNotExist)
            } else if let Some((key, value)) = part.split_once("!=") {
                (
                    key.trim().to_string(),
                    Op::NotEquals(value.trim().to_string()),
                )
            } else if let Some((key, value)) = part.split_once("==") {
                (key.trim().to_string(), Op::Equals(value.trim().to_string()))
            } else if let Some((key, value)) = part.split_once('=') {
                (key.trim().to_string(), Op::Equals(value.trim().to_string()))
            } else if let Some((key, value)) = part.split_once('>') {
                let n = value.trim().parse().map_err(|_| {
                    bad_selector(
                        selector,
                        "for 'gt', 'lt' operators, exactly one value is required",
                    )
                })?;
                (key.trim().to_string(), Op::GreaterThan(n))
            } else if let Some((key, value)) = part.split_once('<') {
                let n = value.trim().parse().map_err(|_| {
                    bad_selector(
                        selector,
                        "for 'gt', 'lt' operators, exactly one value is required",
                    )
                })?;
                (key.trim().to_string(), Op::LessThan(n))
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                (
                    key.trim().to_string(),
                    Op::NotIn(parse_set(selector, rest)?),
                )
            } else if let Some((key, rest)) = part.split_once(" in ") {
                (key.trim().to_string(), Op::In(parse_set(selector, rest)?))
            } else {
                (part.to_string(), Op::Exists)
            };
            if !valid_key(&key) {
                return Err(bad_selector(
                    selector,
                    &format!("invalid label key {key:?}"),
                ));
            }
            if let Op::Equals(v) | Op::NotEquals(v) = &op
                && !valid_value(v)
            {
                return Err(bad_selector(
                    selector,
                    &format!("invalid label value: {v:?}"),
                ));
            }
            requirements.push(Requirement { key, op });
        }
        Ok(LabelSelector { requirements })
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match (&r.op, value) {
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
                (Op::Equals(want), v) => v == Some(want.as_str()),
                (Op::NotEquals(want), v) => v != Some(want.as_str()),
                (Op::In(set), v) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                (Op::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                (Op::GreaterThan(n), v) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                (Op::LessThan(n), v) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed `fieldSelector`, limited to the fields the real server supports for the kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// The selectable fields of a kind and where they live in the object.
fn field_pointer(kind: &ResourceType, field: &str) -> Option<&'static str> {
    let common = match field {
        "metadata.name" => Some("/metadata/name"),
        "metadata.namespace" => Some("/metadata/namespace"),
        _ => None,
    };
    let specific = match (kind.behaviour, kind.group.as_str(), kind.plural.as_str()) {
        (Behaviour::Pod, _, _) => match field {
            "spec.nodeName" => Some("/spec/nodeName"),
            "spec.restartPolicy" => Some("/spec/restartPolicy"),
            "spec.schedulerName" => Some("/spec/schedulerName"),
            "spec.serviceAccountName" => Some("/spec/serviceAccountName"),
            "spec.hostNetwork" => Some("/spec/hostNetwork"),
            "status.phase" => Some("/status/phase"),
            "status.podIP" => Some("/status/podIP"),
            "status.nominatedNodeName" => Some("/status/nominatedNodeName"),
            _ => None,
        },
        (Behaviour::Secret, _, _) => match field {
            "type" => Some("/type"),
            _ => None,
        },
        (Behaviour::Namespace, _, _) => match field {
            "status.phase" => Some("/status/phase"),
            _ => None,
        },
        (_, "", "events") => match field {
            "involvedObject.kind" => Some("/involvedObject/kind"),
            "involvedObject.namespace" => Some("/involvedObject/namespace"),
            "involvedObject.name" => Some("/involvedObject/name"),
            "involvedObject.uid" => Some("/involvedObject/uid"),
            "involvedObject.apiVersion" => Some("/involvedObject/apiVersion"),
            "involvedObject.resourceVersion" => Some("/involvedObject/resourceVersion"),
            "involvedObject.fieldPath" => Some("/involvedObject/fieldPath"),
            "reason" => Some("/reason"),
            "reportingComponent" => Some("/reportingComponent"),
            "source" => Some("/source/component"),
            "type" => Some("/type"),
            _ => None,
        },
        // Matched against the stored core v1 Event (see `ResourceType::storage_resource`).
        (_, "events.k8s.io", "events") => match field {
            "regarding.kind" => Some("/involvedObject/kind"),
            "regarding.namespace" => Some("/involvedObject/namespace"),
            "regarding.name" => Some("/involvedObject/name"),
            "regarding.uid" => Some("/involvedObject/uid"),
            "regarding.apiVersion" => Some("/involvedObject/apiVersion"),
            "regarding.resourceVersion" => Some("/involvedObject/resourceVersion"),
            "regarding.fieldPath" => Some("/involvedObject/fieldPath"),
            "reason" => Some("/reason"),
            "reportingController" => Some("/reportingComponent"),
            "type" => Some("/type"),
            _ => None,
        },
        _ => None,
    };
    common.or(specific)
}

impl FieldSelector {
    pub fn parse(selector: &str, kind: &ResourceType) -> Result<Self, Status> {
        let mut requirements = Vec::new();
        if selector.trim().is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for part in selector.split(',') {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(Status::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if field_pointer(kind, field).is_none() {
                return Err(Status::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn matches(&self, kind: &ResourceType, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_pointer(kind, &r.field)
                .and_then(|p| object.pointer(p))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (actual == r.value) == r.equal
        })
    }

    /// The one `metadata.name=X` the selector pins, if it does.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_operator_matches_as_the_real_server() {
        let l = labels(json!({"app": "redis", "role": "master", "tier": "3"}));
        let cases = [
            ("", true),
            ("app=redis", true),
            ("app==redis", true),
            ("app!=redis", false),
            ("app!=web", true),
            ("missing!=x", true),
            ("role in (master,replica)", true),
            ("role notin (master)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=redis,role=replica", false),
            ("app=redis, role in (master, x)", true),
            ("tier>2", true),
            ("tier<2", false),
            ("redispair.io/pair", false),
        ];
        for (selector, want) in cases {
            let parsed =
                LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(parsed.matches(Some(&l)), want, "{selector}");
        }
        assert!(LabelSelector::parse("!app").expect("parses").matches(None));
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for selector in [
            "app=(",
            "a b c",
            "x in y",
            "=x",
            "app=bad value",
            ",",
            "tier>x",
            "in (a)",
        ] {
            let error = LabelSelector::parse(selector).expect_err(selector);
            assert_eq!(error.code, 400, "{selector}");
        }
    }

    #[test]
    fn field_selectors_know_the_kind_fields() {
        let registry = crate::resources::Registry::default();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let secrets = registry.find("", "v1", "secrets").expect("secrets");
        let pod = json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"nodeName": "node1"}, "status": {"phase": "Running"}});
        let yes =
            FieldSelector::parse("metadata.name=a,status.phase=Running", &pods).expect("parses");
        assert!(yes.matches(&pods, &pod));
        let no = FieldSelector::parse("spec.nodeName!=node1", &pods).expect("parses");
        assert!(!no.matches(&pods, &pod));
        assert!(FieldSelector::parse("spec.nodeName=x", &secrets).is_err());
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &pods)
                .expect_err("unsupported")
                .message,
            "field label not supported: spec.foo"
        );
    }
}
