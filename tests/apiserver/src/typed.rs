//! The fields of the built-in kinds, from k8s-openapi's 1.33 types: a body decoded into the
//! typed object and encoded again loses exactly the fields the real server's decoder does not
//! know, so comparing the two finds the unknown fields to prune (or, with
//! `fieldValidation=Strict`, to reject), and a body the type cannot hold is the real 400.
//! The stored object stays the body itself, minus the unknown fields.

use k8s_openapi::api::{apps, coordination, core, events, networking, policy, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// The body as its typed form encodes it, or None for kinds without a compiled-in type.
fn encoded(group: &str, kind: &str, object: &Value) -> Option<Result<Value, String>> {
    Some(match (group, kind) {
        ("", "Pod") => round_trip::<core::v1::Pod>(object),
        ("", "Service") => round_trip::<core::v1::Service>(object),
        ("", "Secret") => round_trip::<core::v1::Secret>(object),
        ("", "ConfigMap") => round_trip::<core::v1::ConfigMap>(object),
        ("", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(object),
        ("", "Namespace") => round_trip::<core::v1::Namespace>(object),
        ("", "Event") => round_trip::<core::v1::Event>(object),
        ("events.k8s.io", "Event") => round_trip::<events::v1::Event>(object),
        ("coordination.k8s.io", "Lease") => round_trip::<coordination::v1::Lease>(object),
        ("apps", "Deployment") => round_trip::<apps::v1::Deployment>(object),
        ("apps", "StatefulSet") => round_trip::<apps::v1::StatefulSet>(object),
        ("policy", "PodDisruptionBudget") => round_trip::<policy::v1::PodDisruptionBudget>(object),
        ("networking.k8s.io", "NetworkPolicy") => {
            round_trip::<networking::v1::NetworkPolicy>(object)
        }
        ("rbac.authorization.k8s.io", "Role") => round_trip::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io", "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(object),
        ("rbac.authorization.k8s.io", "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(object),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            round_trip::<rbac::v1::ClusterRoleBinding>(object)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(object)
        }
        _ => return None,
    })
}

/// Removes from `input` what `known` lacks, recording the paths (`spec.containers[0].x`).
fn prune_against(input: &mut Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(map), Value::Object(known_map)) => {
            map.retain(|key, value| {
                let keep = value.is_null() || known_map.contains_key(key);
                if !keep {
                    unknown.push(if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    });
                }
                keep
            });
            for (key, value) in map.iter_mut() {
                if let Some(known_value) = known_map.get(key) {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    prune_against(value, known_value, &child, unknown);
                }
            }
        }
        (Value::Array(items), Value::Array(known_items)) => {
            for (i, (item, known_item)) in items.iter_mut().zip(known_items).enumerate() {
                prune_against(item, known_item, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Prunes the fields a built-in kind does not have; returns their paths, or the decode error
/// for a body its type cannot hold. Kinds without a type are left alone.
pub fn prune_unknown(
    group: &str,
    kind: &str,
    api_version: &str,
    object: &mut Value,
) -> Result<Vec<String>, String> {
    let mut typed_input = object.clone();
    if let Some(map) = typed_input.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    let Some(known) = encoded(group, kind, &typed_input) else {
        return Ok(Vec::new());
    };
    let known = known?;
    let mut unknown = Vec::new();
    prune_against(object, &known, "", &mut unknown);
    Ok(unknown)
}

/// Prunes unknown fields of a custom resource's metadata (the schema prunes the rest).
pub fn prune_unknown_metadata(object: &mut Value) -> Result<Vec<String>, String> {
    let Some(metadata) = object.get_mut("metadata") else {
        return Ok(Vec::new());
    };
    let known = round_trip::<ObjectMeta>(metadata)?;
    let mut unknown = Vec::new();
    prune_against(metadata, &known, "metadata", &mut unknown);
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_of_built_in_kinds_are_found_and_pruned() {
        let mut pod = json!({"metadata": {"name": "p", "lables": {"a": "b"}}, "spec": {
            "containers": [{"name": "c", "image": "i", "imagee": "typo", "resources": {"limits": {"cpu": "1"}}}],
            "nodeName": "n", "bogus": null}});
        let unknown = prune_unknown("", "Pod", "v1", &mut pod).expect("decodes");
        assert_eq!(
            unknown,
            vec![
                "metadata.lables".to_string(),
                "spec.containers[0].imagee".to_string()
            ]
        );
        assert!(pod["spec"]["containers"][0].get("imagee").is_none());
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"], "1",
            "kept as sent"
        );
        let mut bad = json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        assert!(prune_unknown("", "Pod", "v1", &mut bad).is_err());
        let mut custom = json!({"metadata": {"name": "x", "nmae": "y"}});
        assert_eq!(
            prune_unknown_metadata(&mut custom).expect("decodes"),
            vec!["metadata.nmae".to_string()]
        );
    }
}
