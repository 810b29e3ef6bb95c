//! What each kind's registry strategy does to an object on create and update: the status a
//! create starts with, defaults (pods, services, secrets, namespaces, CRDs), metadata and
//! kind validation, what a status write may change, and when generation rises.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::resources::{Behaviour, ResourceType, validate_name};
use crate::status::{FieldError, Status};

/// Whether a write goes to the main resource or to its `/status` subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// `serviceaccounts/token`: a TokenRequest, answered, never stored.
    Token,
}

fn object_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

/// `value[key]` as an object, created when missing or not an object.
pub fn child<'a>(value: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let slot = object_mut(value)
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    object_mut(slot)
}

/// Sets a default where the field is missing, null or "" (the Go defaulters test `== ""`).
fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map
        .get(key)
        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
    {
        map.insert(key.to_string(), value);
    }
}

/// What a create starts with: the status the real registry gives, and the kind's defaults.
pub fn prepare_create(kind: &ResourceType, object: &mut Value, cluster_ip: &str) {
    if kind.status_subresource {
        object_mut(object).remove("status");
    }
    match kind.behaviour {
        Behaviour::Pod => default_pod(object),
        Behaviour::Service => default_service(object, cluster_ip),
        Behaviour::Secret => {
            set_default(object_mut(object), "type", "Opaque".into());
        }
        Behaviour::Namespace => {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            child(object, "spec").insert("finalizers".into(), json!(["kubernetes"]));
            child(object, "status").insert("phase".into(), "Active".into());
            child(child_value(object, "metadata"), "labels")
                .insert("kubernetes.io/metadata.name".into(), name.into());
        }
        Behaviour::CustomResourceDefinition => default_crd(object),
        Behaviour::Custom | Behaviour::Plain | Behaviour::Review | Behaviour::WhoAmI => {}
    }
}

fn child_value<'a>(value: &'a mut Value, key: &str) -> &'a mut Value {
    object_mut(value)
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
}

fn default_pod(pod: &mut Value) {
    let spec = child(pod, "spec");
    set_default(spec, "restartPolicy", "Always".into());
    set_default(spec, "terminationGracePeriodSeconds", 30.into());
    set_default(spec, "dnsPolicy", "ClusterFirst".into());
    set_default(spec, "schedulerName", "default-scheduler".into());
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "serviceAccountName", "default".into());
    let account = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", account);
    set_default(spec, "enableServiceLinks", true.into());
    set_default(spec, "preemptionPolicy", "PreemptLowerPriority".into());
    set_default(spec, "priority", 0.into());
    let mut requests_everywhere = true;
    let mut any_resources = false;
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = container.as_object_mut() else {
                continue;
            };
            set_default(c, "terminationMessagePath", "/dev/termination-log".into());
            set_default(c, "terminationMessagePolicy", "File".into());
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
                .map(|(_, tag)| tag);
            let policy = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
                "IfNotPresent"
            } else {
                "Always"
            };
            set_default(c, "imagePullPolicy", policy.into());
            set_default(c, "resources", json!({}));
            let resources = &c["resources"];
            let limits = resources
                .get("limits")
                .and_then(Value::as_object)
                .filter(|l| !l.is_empty());
            let requests = resources
                .get("requests")
                .and_then(Value::as_object)
                .filter(|r| !r.is_empty());
            any_resources |= limits.is_some() || requests.is_some();
            let guaranteed = limits.is_some_and(|l| {
                ["cpu", "memory"].iter().all(|r| {
                    l.contains_key(*r)
                        && requests.is_none_or(|q| q.get(*r).is_none_or(|v| Some(v) == l.get(*r)))
                })
            });
            requests_everywhere &= guaranteed;
            for port in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = port.as_object_mut() {
                    set_default(p, "protocol", "TCP".into());
                }
            }
        }
    }
    let qos = match (any_resources, requests_everywhere) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    };
    let status = child(pod, "status");
    status.insert("phase".into(), "Pending".into());
    status.insert("qosClass".into(), qos.into());
}

fn default_service(service: &mut Value, cluster_ip: &str) {
    let spec = child(service, "spec");
    set_default(spec, "type", "ClusterIP".into());
    set_default(spec, "sessionAffinity", "None".into());
    if spec["type"] != "ExternalName" {
        set_default(spec, "clusterIP", cluster_ip.into());
        let ip = spec["clusterIP"].clone();
        set_default(spec, "clusterIPs", json!([ip]));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", "SingleStack".into());
        set_default(spec, "internalTrafficPolicy", "Cluster".into());
    }
    for port in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.as_object_mut() {
            set_default(p, "protocol", "TCP".into());
            let number = p.get("port").cloned().unwrap_or(Value::Null);
            set_default(p, "targetPort", number);
        }
    }
    child(service, "status").insert("loadBalancer".into(), json!({}));
}

fn default_crd(crd: &mut Value) {
    let kind = crd
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let names = child(child_value(crd, "spec"), "names");
    set_default(names, "singular", kind.to_lowercase().into());
    set_default(names, "listKind", format!("{kind}List").into());
    let spec = child(crd, "spec");
    set_default(spec, "conversion", json!({"strategy": "None"}));
    crd_status(crd);
}

/// A CRD's status once established: names accepted, Established, its stored version.
pub fn crd_status(crd: &mut Value) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let now = crd
        .pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or(Value::Null);
    let stored = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut stored_versions = stored;
    for version in storage {
        if !stored_versions.contains(&version) {
            stored_versions.push(version);
        }
    }
    let status = child(crd, "status");
    status.insert("acceptedNames".into(), names);
    status.insert("storedVersions".into(), Value::Array(stored_versions));
    status.insert(
        "conditions".into(),
        json!([
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
        ]),
    );
}

/// Secrets: `stringData` is merged into `data` (base64) and never stored; `data` must be
/// base64, or the request is a 400 as the real decoder makes it.
pub fn normalize_secret(secret: &mut Value) -> Result<(), Status> {
    let engine = base64::engine::general_purpose::STANDARD;
    for (key, value) in secret
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let text = value.as_str().unwrap_or("");
        if engine.decode(text).is_err() {
            return Err(Status::bad_request(format!(
                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0 (data[{key:?}])"
            )));
        }
    }
    if let Some(Value::Object(string_data)) = object_mut(secret).remove("stringData") {
        let data = child(secret, "data");
        for (key, value) in string_data {
            data.insert(key, engine.encode(value.as_str().unwrap_or("")).into());
        }
    }
    Ok(())
}

fn qualified_name_error(key: &str) -> Option<String> {
    const NAME: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if !validate_name(crate::resources::NameRule::Dns1123Subdomain, prefix).is_empty() {
            return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    let ok = regex::Regex::new(&format!("^{NAME}$"))
        .map(|r| r.is_match(name))
        .unwrap_or(false);
    (!ok).then(|| format!("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{NAME}')"))
}

fn label_value_error(value: &str) -> Option<String> {
    const VALUE: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
    if value.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let ok = regex::Regex::new(&format!("^{VALUE}$"))
        .map(|r| r.is_match(value))
        .unwrap_or(false);
    (!ok).then(|| format!("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '{VALUE}')"))
}

/// ObjectMeta validation: name, labels, annotation keys, finalizers.
pub fn validate_metadata(kind: &ResourceType, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let meta = &object["metadata"];
    match meta["name"].as_str().unwrap_or("") {
        "" => errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        name => {
            for message in validate_name(kind.name_rule, name) {
                errors.push(FieldError::invalid("metadata.name", name.into(), message));
            }
        }
    }
    for (key, value) in meta
        .get("labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(message) = qualified_name_error(key) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                key.clone().into(),
                message,
            ));
        }
        match value.as_str() {
            Some(text) => {
                if let Some(message) = label_value_error(text) {
                    errors.push(FieldError::invalid("metadata.labels", text.into(), message));
                }
            }
            None => errors.push(FieldError::invalid(
                "metadata.labels",
                value.clone(),
                "must be a string",
            )),
        }
    }
    for key in meta
        .get("annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|a| a.keys())
    {
        if let Some(message) = qualified_name_error(key) {
            errors.push(FieldError::invalid(
                "metadata.annotations",
                key.clone().into(),
                message,
            ));
        }
    }
    for finalizer in meta
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = finalizer.as_str().unwrap_or("");
        if !text.contains('/') && !matches!(text, "kubernetes" | "orphan" | "foregroundDeletion") {
            errors.push(FieldError::invalid(
                "metadata.finalizers",
                text.into(),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    errors
}

/// Kind-specific create validation for the built-ins that have required fields.
pub fn validate_kind(kind: &ResourceType, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if kind.behaviour == Behaviour::Pod {
        match object.pointer("/spec/containers").and_then(Value::as_array) {
            Some(containers) if !containers.is_empty() => {
                for (i, c) in containers.iter().enumerate() {
                    match c["name"].as_str().unwrap_or("") {
                        "" => errors.push(FieldError::required(
                            format!("spec.containers[{i}].name"),
                            "",
                        )),
                        name => {
                            for message in
                                validate_name(crate::resources::NameRule::Dns1123Label, name)
                            {
                                errors.push(FieldError::invalid(
                                    format!("spec.containers[{i}].name"),
                                    name.into(),
                                    message,
                                ));
                            }
                        }
                    }
                    if c["image"].as_str().unwrap_or("").is_empty() {
                        errors.push(FieldError::required(
                            format!("spec.containers[{i}].image"),
                            "",
                        ));
                    }
                }
            }
            _ => errors.push(FieldError::required("spec.containers", "")),
        }
    }
    errors
}

/// Pod spec fields an update may change (the real `ValidatePodUpdate`); anything else is a
/// 422 with the real message.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let (Some(new_spec), Some(old_spec)) = (new.get("spec"), old.get("spec")) else {
        return Vec::new();
    };
    let mut allowed = old_spec.clone();
    for list in ["containers", "initContainers"] {
        let new_list = new_spec.get(list).and_then(Value::as_array);
        if let (Some(new_list), Some(Value::Array(old_list))) = (new_list, allowed.get_mut(list))
            && new_list.len() == old_list.len()
        {
            for (old_c, new_c) in old_list.iter_mut().zip(new_list) {
                if let (Some(o), Some(image)) = (old_c.as_object_mut(), new_c.get("image")) {
                    o.insert("image".into(), image.clone());
                }
            }
        }
    }
    if let Some(a) = allowed.as_object_mut() {
        for field in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
        ] {
            match new_spec.get(field) {
                Some(v) => a.insert(field.into(), v.clone()),
                None => a.remove(field),
            };
        }
    }
    if &allowed == new_spec {
        return Vec::new();
    }
    vec![FieldError::forbidden(
        "spec",
        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
    )]
}

/// The new object of an update as the strategy keeps it: a main-resource write keeps the old
/// status (when the kind has a status subresource); a status write keeps everything but status.
pub fn merge_for_part(kind: &ResourceType, part: Part, new: Value, old: &Value) -> Value {
    match part {
        Part::Main if kind.status_subresource => {
            let mut merged = new;
            match old.get("status") {
                Some(status) => object_mut(&mut merged).insert("status".into(), status.clone()),
                None => object_mut(&mut merged).remove("status"),
            };
            merged
        }
        Part::Main | Part::Token => new,
        Part::Status => {
            let mut merged = old.clone();
            match new.get("status") {
                Some(status) => object_mut(&mut merged).insert("status".into(), status.clone()),
                None => object_mut(&mut merged).remove("status"),
            };
            // The resourceVersion precondition is the client's.
            if let Some(rv) = new.pointer("/metadata/resourceVersion") {
                child(&mut merged, "metadata").insert("resourceVersion".into(), rv.clone());
            }
            merged
        }
    }
}

/// Whether an update changes what generation counts: the spec (everything outside metadata
/// and, for kinds with a status subresource, status).
pub fn spec_changed(kind: &ResourceType, new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("metadata");
            if kind.status_subresource {
                map.remove("status");
            }
        }
        v
    };
    strip(new) != strip(old)
}

/// events.k8s.io/v1 field names and their core v1 Event names (pkg/apis/events/v1/conversion.go).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename_fields(object: &Value, from_events: bool) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        for (events_name, core_name) in EVENT_FIELDS {
            let (from, to) = if from_events {
                (events_name, core_name)
            } else {
                (core_name, events_name)
            };
            if let Some(value) = map.remove(*from) {
                map.insert(to.to_string(), value);
            }
        }
    }
    object
}

/// An events.k8s.io/v1 Event as the core v1 Event it is stored as.
pub fn event_to_core(event: &Value) -> Value {
    let mut core = rename_fields(event, true);
    if let Some(map) = core.as_object_mut() {
        map.insert("apiVersion".into(), "v1".into());
        map.insert("kind".into(), "Event".into());
    }
    core
}

/// A stored core v1 Event as events.k8s.io/v1 serves it.
pub fn event_from_core(core: &Value) -> Value {
    let mut event = rename_fields(core, false);
    if let Some(map) = event.as_object_mut() {
        map.insert("apiVersion".into(), "events.k8s.io/v1".into());
        map.insert("kind".into(), "Event".into());
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn pods_start_pending_with_defaults() {
        let registry = Registry::default();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "redis:7"}]}, "status": {"phase": "Running"}});
        prepare_create(&pods, &mut pod, "");
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn pod_spec_updates_are_limited() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a"}], "nodeName": "n"}});
        let image = json!({"spec": {"containers": [{"name": "c", "image": "b"}], "nodeName": "n"}});
        assert!(validate_pod_update(&image, &old).is_empty());
        let node = json!({"spec": {"containers": [{"name": "c", "image": "a"}], "nodeName": "m"}});
        assert_eq!(validate_pod_update(&node, &old).len(), 1);
    }

    #[test]
    fn events_convert_both_ways() {
        let event = json!({"regarding": {"kind": "Pod", "name": "p"}, "note": "hi", "reportingController": "c", "reason": "R"});
        let core = event_to_core(&event);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(
            (
                core["message"].as_str(),
                core["reportingComponent"].as_str()
            ),
            (Some("hi"), Some("c"))
        );
        assert_eq!(event_from_core(&core)["note"], "hi");
        assert_eq!(event_from_core(&core)["apiVersion"], "events.k8s.io/v1");
    }

    #[test]
    fn secrets_merge_string_data() {
        let mut secret = json!({"data": {"a": "eA=="}, "stringData": {"b": "y"}});
        normalize_secret(&mut secret).expect("valid");
        assert_eq!(secret, json!({"data": {"a": "eA==", "b": "eQ=="}}));
        assert_eq!(
            normalize_secret(&mut json!({"data": {"a": "!!"}}))
                .expect_err("bad")
                .code,
            400
        );
    }

    #[test]
    fn bad_labels_are_invalid() {
        let registry = Registry::default();
        let secrets = registry.find("", "v1", "secrets").expect("secrets");
        let object = json!({"metadata": {"name": "s", "labels": {"good": "v", "bad key": "v", "k": "bad value"}}});
        assert_eq!(validate_metadata(&secrets, &object).len(), 2);
    }
}
