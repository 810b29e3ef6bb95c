//! Discovery as a 1.33 server answers it: `/version`, the legacy `/api`, `/apis`,
//! `/apis/G[/V]` documents, aggregated discovery (apidiscovery.k8s.io/v2, which kubectl asks
//! for first), and the OpenAPI v3 documents kubectl reads to decide whether it can leave
//! validation to the server (`fieldValidation` on the PATCH operation of each kind) and which
//! patch type `apply` sends.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType};

/// The Kubernetes version the server claims.
pub const GIT_VERSION: &str = "v1.33.4";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "74cdb426e7f3e8b1e2a1b8a0e32a7bb2c8f0bf8d",
        "gitTreeState": "clean",
        "buildDate": "2025-08-12T10:00:00Z",
        "goVersion": "go1.24.5",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub fn api_versions(address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]
    })
}

fn group_document(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| group_document(g, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    let (_, versions) = registry
        .groups()
        .into_iter()
        .find(|(g, _)| g == group && !g.is_empty())?;
    let mut document = group_document(group, &versions);
    if let Some(object) = document.as_object_mut() {
        object.insert("kind".into(), "APIGroup".into());
        object.insert("apiVersion".into(), "v1".into());
    }
    Some(document)
}

fn status_verbs() -> Vec<&'static str> {
    vec!["get", "patch", "update"]
}

pub fn api_resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    if !registry.group_served(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for t in registry.types_of(group, version) {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
            "shortNames": t.short_names,
            "categories": t.categories,
            "storageVersionHash": storage_version_hash(&t),
        }));
        if t.has_token_subresource() {
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": status_verbs(),
            }));
        }
    }
    for r in &mut resources {
        // The real documents omit empty shortNames and categories.
        if let Some(object) = r.as_object_mut() {
            object.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// A stable short hash (the real one is of the storage version; clients only compare it).
fn storage_version_hash(t: &ResourceType) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in format!("{}/{}/{}", t.group, t.storage_version, t.kind).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    let bytes = hash.to_be_bytes();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes[..8])[..11]
        .to_string()
}

fn discovery_resource(t: &ResourceType) -> Value {
    let mut resource = json!({
        "resource": t.plural,
        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": t.verbs(),
    });
    if let Some(object) = resource.as_object_mut() {
        if !t.short_names.is_empty() {
            object.insert("shortNames".into(), json!(t.short_names));
        }
        if !t.categories.is_empty() {
            object.insert("categories".into(), json!(t.categories));
        }
        if t.has_token_subresource() {
            object.insert(
                "subresources".into(),
                json!([{"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}]),
            );
        }
        if t.status_subresource {
            object.insert(
                "subresources".into(),
                json!([{"subresource": "status", "responseKind": {"group": t.group, "version": t.version, "kind": t.kind}, "verbs": status_verbs()}]),
            );
        }
    }
    resource
}

/// The `APIGroupDiscoveryList` of `/api` (legacy: true) or `/apis`.
pub fn aggregated(registry: &Registry, legacy: bool) -> Value {
    let items: Vec<Value> = registry
        .groups()
        .iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .types_of(group, v)
                        .iter()
                        .map(|t| discovery_resource(t))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if group.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": group, "creationTimestamp": null})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is.
pub fn openapi_root(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let path = gv_path(&group, &version);
            let hash = storage_version_hash_of(&path, registry);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

fn storage_version_hash_of(path: &str, registry: &Registry) -> String {
    // The hash changes when the group version's types do, so clients refetch after a CRD change.
    let mut text = path.to_string();
    for t in registry.all() {
        if gv_path(&t.group, &t.version) == path {
            text.push_str(&t.kind);
            text.push_str(
                &t.openapi_schema
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default(),
            );
        }
    }
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{hash:016X}{:016X}", hash.rotate_left(17))
}

fn schema_name(t: &ResourceType) -> String {
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    if t.group.is_empty() {
        format!("io.k8s.api.core.{}.{}", t.version, t.kind)
    } else {
        format!("{}.{}.{}", reversed.join("."), t.version, t.kind)
    }
}

/// The OpenAPI v3 document of one group version: a path per resource with its operations
/// (the PATCH one carrying `fieldValidation` and the patch types the kind accepts), and a
/// schema per kind (the CRD's openAPIV3Schema for custom resources).
pub fn openapi_group_version(registry: &Registry, path: &str) -> Option<Value> {
    let types: Vec<_> = registry
        .all()
        .filter(|t| gv_path(&t.group, &t.version) == path)
        .cloned()
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    schemas.insert("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(), json!({"type": "object", "description": "ObjectMeta is metadata that all persisted resources must have."}));
    schemas.insert("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(), json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}));
    for t in &types {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let name = schema_name(t);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let mut content = serde_json::Map::new();
        let mut patch_types = vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ];
        if t.behaviour != crate::resources::Behaviour::Custom {
            patch_types.push("application/strategic-merge-patch+json");
        }
        for media in patch_types {
            content.insert(media.into(), json!({"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}));
        }
        let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let prefix = format!(
            "/{}{}",
            gv_path(&t.group, &t.version),
            if t.namespaced {
                "/namespaces/{namespace}"
            } else {
                ""
            }
        );
        let item_path = format!("{prefix}/{}/{{name}}", t.plural);
        let responses = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        paths.insert(
            item_path,
            json!({
                "get": {"operationId": format!("read{}", t.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": responses},
                "put": {"operationId": format!("replace{}", t.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk,
                        "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
                        "requestBody": {"content": {"application/json": {"schema": reference}}, "required": true}, "responses": responses},
                "patch": {"operationId": format!("patch{}", t.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                          "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation"), query("force")],
                          "requestBody": {"content": content, "required": true}, "responses": responses},
                "delete": {"operationId": format!("delete{}", t.kind), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk, "responses": responses},
            }),
        );
        paths.insert(
            format!("{prefix}/{}", t.plural),
            json!({
                "get": {"operationId": format!("list{}", t.kind), "x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": responses},
                "post": {"operationId": format!("create{}", t.kind), "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk,
                         "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
                         "requestBody": {"content": {"application/json": {"schema": reference}}, "required": true}, "responses": responses},
            }),
        );
        // Built-in kinds get a bare schema without the GVK extension: kubectl then computes
        // strategic merge patches from its compiled-in types, as it does when a schema lacks
        // patch metadata, rather than from a schema that has none.
        let schema = match &t.openapi_schema {
            Some(s) => {
                let mut schema = crate::schema::published(s);
                if let Some(object) = schema.as_object_mut() {
                    object.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
                }
                schema
            }
            None => {
                json!({"type": "object", "description": format!("{} of the {} API.", t.kind, if t.group.is_empty() { "core" } else { &t.group })})
            }
        };
        schemas.insert(name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
