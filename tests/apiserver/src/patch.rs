//! The patch types the server accepts: JSON merge patch (RFC 7386) and JSON patch (RFC 6902)
//! through the `json-patch` crate kube already uses, and strategic merge patch for built-in
//! kinds, with the merge keys kubectl's patches rely on and the `$patch`, `$retainKeys`,
//! `$setElementOrder` and `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

use crate::status::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    StrategicMerge,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch to the current object's JSON.
pub fn apply(patch_type: PatchType, current: &Value, body: &[u8]) -> Result<Value, Status> {
    match patch_type {
        PatchType::Merge => {
            let patch = decode_object_patch(body)?;
            let mut patched = current.clone();
            json_patch::merge(&mut patched, &patch);
            Ok(patched)
        }
        PatchType::Json => {
            let patch: json_patch::Patch =
                serde_json::from_slice(body).map_err(|e| Status::bad_request(e.to_string()))?;
            if patch.0.len() > 10000 {
                return Err(Status {
                    code: 413,
                    reason: "RequestEntityTooLarge",
                    message: format!(
                        "The allowed maximum operations in a JSON patch is 10000, got {}",
                        patch.0.len()
                    ),
                    details: None,
                });
            }
            let mut patched = current.clone();
            json_patch::patch(&mut patched, &patch).map_err(|_| Status::unprocessable())?;
            Ok(patched)
        }
        PatchType::StrategicMerge => {
            let patch = decode_object_patch(body)?;
            let mut patched = current.clone();
            strategic_merge(&mut patched, &patch).map_err(Status::bad_request)?;
            Ok(patched)
        }
        PatchType::Apply => Err(Status::unsupported_media_type(
            "application/apply-patch+yaml",
        )),
    }
}

fn decode_object_patch(body: &[u8]) -> Result<Value, Status> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
    if !patch.is_object() {
        return Err(Status::bad_request(format!(
            "error decoding patch: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            json_type(&patch)
        )));
    }
    Ok(patch)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The merge key of a list field of the built-in types, by field name (and, for `ports`, by
/// what the items carry: container ports merge on `containerPort`, service ports on `port`).
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "ephemeralContainerStatuses"
        | "containerStatuses"
        | "initContainerStatuses" => Some("name"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "podIPs" | "hostIPs" => Some("ip"),
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        _ => None,
    }
}

/// Primitive lists that merge as sets rather than being replaced.
fn merges_as_set(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies a strategic merge patch to `target` in place.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch_map.clone();
            replacement.remove("$patch");
            *target = Value::Object(replacement);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?} in map: {patch}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return Ok(());
    };
    if let Some(retain) = patch_map.get("$retainKeys") {
        let keys: Vec<&str> = retain
            .as_array()
            .ok_or("invalid patch: $retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        target_map.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = target_map.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(format!("unknown patch directive: {key}"));
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value)?;
            }
            Value::Array(items) => {
                let current = target_map.remove(key);
                let merged = merge_list(key, current, items)?;
                target_map.insert(key.clone(), merged);
            }
            other => {
                target_map.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(field: &str, current: Option<Value>, patch_items: &[Value]) -> Result<Value, String> {
    let mut list = match current {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    if let Some(replace) = patch_items
        .iter()
        .find(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let _ = replace;
        return Ok(Value::Array(
            patch_items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        ));
    }
    let mut keyed_items = list.clone();
    keyed_items.extend(patch_items.iter().cloned());
    match merge_key(field, &keyed_items) {
        Some(key) if patch_items.iter().all(Value::is_object) => {
            for item in patch_items {
                let id = item.get(key);
                let position = list
                    .iter()
                    .position(|existing| id.is_some() && existing.get(key) == id);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        list.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_merge(&mut list[i], item)?,
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_merge(&mut fresh, item)?;
                        list.push(fresh);
                    }
                }
            }
            Ok(Value::Array(list))
        }
        _ if merges_as_set(field) => {
            for item in patch_items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
            Ok(Value::Array(list))
        }
        _ => Ok(Value::Array(patch_items.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes() {
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        let patched = apply(
            PatchType::Merge,
            &current,
            br#"{"metadata":{"labels":{"a":null,"c":"3"}}}"#,
        )
        .expect("applies");
        assert_eq!(patched["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(
            apply(PatchType::Merge, &current, b"[1]")
                .expect_err("array")
                .code,
            400
        );
        assert_eq!(
            apply(PatchType::Merge, &current, b"{nope")
                .expect_err("bad json")
                .code,
            400
        );
    }

    #[test]
    fn json_patch_test_failure_is_the_real_422() {
        let current = json!({"metadata": {"resourceVersion": "5", "annotations": {"a": "1"}}});
        let ok = br#"[{"op":"test","path":"/metadata/resourceVersion","value":"5"},{"op":"replace","path":"/metadata/annotations/a","value":"2"}]"#;
        assert_eq!(
            apply(PatchType::Json, &current, ok).expect("applies")["metadata"]["annotations"]["a"],
            "2"
        );
        let stale = br#"[{"op":"test","path":"/metadata/resourceVersion","value":"4"},{"op":"replace","path":"/metadata/annotations/a","value":"2"}]"#;
        let error = apply(PatchType::Json, &current, stale).expect_err("test fails");
        assert_eq!((error.code, error.reason), (422, "Invalid"));
        assert_eq!(
            error.message,
            "the server rejected our request due to an error in our request"
        );
        assert_eq!(
            apply(PatchType::Json, &current, br#"{"op":"add"}"#)
                .expect_err("not a list")
                .code,
            400
        );
        assert_eq!(
            apply(
                PatchType::Json,
                &current,
                br#"[{"op":"remove","path":"/nope"}]"#
            )
            .expect_err("missing")
            .code,
            422
        );
    }

    #[test]
    fn strategic_merge_uses_merge_keys_and_directives() {
        let current = json!({"spec": {
            "containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "b:1"}],
            "tolerations": [{"key": "t1"}],
        }, "metadata": {"finalizers": ["f1"]}});
        let patch = json!({
            "spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}, {"name": "b", "$patch": "delete"}],
                "tolerations": [{"key": "t2"}],
            },
            "metadata": {"finalizers": ["f2"]},
        });
        let mut patched = current.clone();
        strategic_merge(&mut patched, &patch).expect("applies");
        assert_eq!(
            patched["spec"]["containers"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(patched["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(
            patched["spec"]["containers"][0]["env"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(
            patched["spec"]["tolerations"],
            json!([{"key": "t2"}]),
            "lists without a merge key are replaced"
        );
        assert_eq!(patched["metadata"]["finalizers"], json!(["f1", "f2"]));
        let mut replaced = current.clone();
        strategic_merge(
            &mut replaced,
            &json!({"spec": {"$patch": "replace", "x": 1}}),
        )
        .expect("applies");
        assert_eq!(replaced["spec"], json!({"x": 1}));
        let mut retained = json!({"a": 1, "b": 2});
        strategic_merge(&mut retained, &json!({"$retainKeys": ["b", "c"], "c": 3}))
            .expect("applies");
        assert_eq!(retained, json!({"b": 2, "c": 3}));
        assert!(strategic_merge(&mut json!({}), &json!({"$bogus": 1})).is_err());
    }
}
