//! What the server serves: the built-in resource types and those that CustomResourceDefinitions
//! add, with what each kind's registry does differently (status subresource, name rules,
//! generation, unconditional updates).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::schema::Structural;
use crate::status::FieldError;

/// A resource independent of its version: the key objects are stored under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        GroupResource {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

impl std::fmt::Display for GroupResource {
    /// `pods`, `redispairs.redispair.io`: how the real server names a resource in messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// The built-in kinds whose registries behave differently from a plain store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Namespace,
    Pod,
    Secret,
    Service,
    CustomResourceDefinition,
    /// An object of a CustomResourceDefinition: schema, defaults, pruning and CEL rules.
    Custom,
    /// Stored as sent (configmaps, events, leases, rbac objects, deployments...).
    Plain,
    /// SelfSubjectAccessReview: create-only, answered from RBAC, never stored.
    Review,
    /// SelfSubjectReview (`kubectl auth whoami`): create-only, never stored.
    WhoAmI,
}

/// The metadata.name rule of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
    /// Any name that is a valid path segment (RBAC objects, events).
    PathSegment,
}

/// One additionalPrinterColumn of a CRD version.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served resource of one group version.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub behaviour: Behaviour,
    pub name_rule: NameRule,
    /// metadata.generation is kept (and rises on spec changes).
    pub has_generation: bool,
    /// A PUT without metadata.resourceVersion is accepted (most built-ins; not CRs or CRDs).
    pub unconditional_update: bool,
    /// DELETE answers with the deleted object rather than a `Status`.
    pub returns_deleted_object: bool,
    /// The version objects are stored in (CRs of several versions share one store).
    pub storage_version: String,
    pub printer_columns: Vec<PrinterColumn>,
    pub schema: Option<Arc<Structural>>,
    /// The raw openAPIV3Schema of a CRD version (served in /openapi/v3).
    pub openapi_schema: Option<Value>,
}

impl ResourceType {
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    /// Where the objects live: events.k8s.io/v1 Events share the core v1 events' storage,
    /// as in the real server (one object seen through both APIs).
    pub fn storage_resource(&self) -> GroupResource {
        if self.is_events_api() {
            GroupResource::new("", "events")
        } else {
            self.group_resource()
        }
    }

    /// The events.k8s.io/v1 Event, served by converting the stored core v1 Event.
    /// ServiceAccounts have the `token` subresource (TokenRequest).
    pub fn has_token_subresource(&self) -> bool {
        self.group.is_empty() && self.plural == "serviceaccounts"
    }

    pub fn is_events_api(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `RedisPair.redispair.io`, `Pod`: the qualified kind of Invalid messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The verbs discovery lists.
    pub fn verbs(&self) -> Vec<&'static str> {
        if matches!(self.behaviour, Behaviour::Review | Behaviour::WhoAmI) {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    namespaced: bool,
    status: bool,
    behaviour: Behaviour,
    name_rule: NameRule,
    generation: bool,
    returns_object: bool,
}

const fn builtin(group: &'static str, kind: &'static str, plural: &'static str) -> Builtin {
    Builtin {
        group,
        version: "v1",
        kind,
        plural,
        short_names: &[],
        categories: &[],
        namespaced: true,
        status: false,
        behaviour: Behaviour::Plain,
        name_rule: NameRule::Dns1123Subdomain,
        generation: false,
        returns_object: false,
    }
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        short_names: &["ns"],
        namespaced: false,
        status: true,
        behaviour: Behaviour::Namespace,
        name_rule: NameRule::Dns1123Label,
        ..builtin("", "Namespace", "namespaces")
    },
    Builtin {
        short_names: &["po"],
        categories: &["all"],
        status: true,
        behaviour: Behaviour::Pod,
        generation: true,
        returns_object: true,
        ..builtin("", "Pod", "pods")
    },
    Builtin {
        behaviour: Behaviour::Secret,
        ..builtin("", "Secret", "secrets")
    },
    Builtin {
        short_names: &["svc"],
        categories: &["all"],
        status: true,
        behaviour: Behaviour::Service,
        name_rule: NameRule::Dns1035Label,
        returns_object: true,
        ..builtin("", "Service", "services")
    },
    Builtin {
        short_names: &["sa"],
        ..builtin("", "ServiceAccount", "serviceaccounts")
    },
    Builtin {
        short_names: &["cm"],
        ..builtin("", "ConfigMap", "configmaps")
    },
    Builtin {
        short_names: &["ev"],
        name_rule: NameRule::PathSegment,
        ..builtin("", "Event", "events")
    },
    Builtin {
        short_names: &["ev"],
        name_rule: NameRule::PathSegment,
        ..builtin("events.k8s.io", "Event", "events")
    },
    builtin("coordination.k8s.io", "Lease", "leases"),
    Builtin {
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        namespaced: false,
        status: true,
        behaviour: Behaviour::CustomResourceDefinition,
        generation: true,
        returns_object: true,
        ..builtin(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        )
    },
    Builtin {
        short_names: &["deploy"],
        categories: &["all"],
        status: true,
        generation: true,
        ..builtin("apps", "Deployment", "deployments")
    },
    Builtin {
        short_names: &["sts"],
        categories: &["all"],
        status: true,
        generation: true,
        ..builtin("apps", "StatefulSet", "statefulsets")
    },
    Builtin {
        short_names: &["pdb"],
        status: true,
        generation: true,
        ..builtin("policy", "PodDisruptionBudget", "poddisruptionbudgets")
    },
    Builtin {
        short_names: &["netpol"],
        generation: true,
        ..builtin("networking.k8s.io", "NetworkPolicy", "networkpolicies")
    },
    Builtin {
        name_rule: NameRule::PathSegment,
        ..builtin("rbac.authorization.k8s.io", "Role", "roles")
    },
    Builtin {
        name_rule: NameRule::PathSegment,
        namespaced: false,
        ..builtin("rbac.authorization.k8s.io", "ClusterRole", "clusterroles")
    },
    Builtin {
        name_rule: NameRule::PathSegment,
        ..builtin("rbac.authorization.k8s.io", "RoleBinding", "rolebindings")
    },
    Builtin {
        name_rule: NameRule::PathSegment,
        namespaced: false,
        ..builtin(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "clusterrolebindings",
        )
    },
    Builtin {
        namespaced: false,
        behaviour: Behaviour::Review,
        ..builtin(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
        )
    },
    Builtin {
        namespaced: false,
        behaviour: Behaviour::WhoAmI,
        ..builtin(
            "authentication.k8s.io",
            "SelfSubjectReview",
            "selfsubjectreviews",
        )
    },
];

/// The group versions in the order discovery lists them (the real server's priority order:
/// the legacy group first, then apps, events, ...).
pub const BUILTIN_GROUP_ORDER: &[&str] = &[
    "",
    "apps",
    "events.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "coordination.k8s.io",
    "apiextensions.k8s.io",
];

fn builtin_types() -> Vec<Arc<ResourceType>> {
    BUILTINS
        .iter()
        .map(|b| {
            Arc::new(ResourceType {
                group: b.group.into(),
                version: b.version.into(),
                kind: b.kind.into(),
                list_kind: format!("{}List", b.kind),
                plural: b.plural.into(),
                singular: b.kind.to_lowercase(),
                short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
                categories: b.categories.iter().map(|s| s.to_string()).collect(),
                namespaced: b.namespaced,
                status_subresource: b.status,
                behaviour: b.behaviour,
                name_rule: b.name_rule,
                has_generation: b.generation,
                unconditional_update: b.behaviour != Behaviour::CustomResourceDefinition,
                returns_deleted_object: b.returns_object,
                storage_version: b.version.into(),
                printer_columns: Vec::new(),
                schema: None,
                openapi_schema: None,
            })
        })
        .collect()
}

/// Every served resource type: the built-ins, then those of established CRDs.
#[derive(Clone, Debug)]
pub struct Registry {
    builtins: Vec<Arc<ResourceType>>,
    /// CRD name -> the types it serves (one per served version).
    custom: BTreeMap<String, Vec<Arc<ResourceType>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            builtins: builtin_types(),
            custom: BTreeMap::new(),
        }
    }
}

impl Registry {
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.builtins.iter().chain(self.custom.values().flatten())
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The type of a group resource in its storage version.
    pub fn storage_type(&self, resource: &GroupResource) -> Option<Arc<ResourceType>> {
        self.all()
            .find(|t| {
                t.group == resource.group
                    && t.plural == resource.resource
                    && t.version == t.storage_version
            })
            .cloned()
    }

    pub fn group_served(&self, group: &str, version: &str) -> bool {
        self.all().any(|t| t.group == group && t.version == version)
    }

    /// Groups in discovery order, each with its versions (the preferred one first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        let mut add = |group: &str, version: &str| match groups.iter_mut().find(|(g, _)| g == group)
        {
            Some((_, versions)) => {
                if !versions.iter().any(|v| v == version) {
                    versions.push(version.to_string());
                }
            }
            None => groups.push((group.to_string(), vec![version.to_string()])),
        };
        for group in BUILTIN_GROUP_ORDER {
            for t in self.builtins.iter().filter(|t| t.group == *group) {
                add(&t.group, &t.version);
            }
        }
        // CRD groups after the built-ins, alphabetically, each version sorted as the
        // Kubernetes version priority (v2 > v1 > v1beta1) sorts them.
        let mut custom: Vec<&Arc<ResourceType>> = self.custom.values().flatten().collect();
        custom.sort_by(|a, b| {
            a.group
                .cmp(&b.group)
                .then(version_priority(&b.version).cmp(&version_priority(&a.version)))
        });
        for t in custom {
            add(&t.group, &t.version);
        }
        groups
    }

    pub fn types_of(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.all()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Serves the resources of an established CRD (replacing what it served before).
    pub fn set_custom(&mut self, crd_name: &str, types: Vec<Arc<ResourceType>>) {
        self.custom.insert(crd_name.to_string(), types);
    }

    pub fn remove_custom(&mut self, crd_name: &str) {
        self.custom.remove(crd_name);
    }
}

/// The ordering Kubernetes gives versions: GA above beta above alpha, higher numbers first.
pub fn version_priority(version: &str) -> (u8, u64, u64) {
    let Some(rest) = version.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<u64>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        return (0, 0, 0);
    };
    (stage, major, minor)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn strings_at(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The resource types a CustomResourceDefinition serves, one per served version, or the
/// field errors that make the CRD invalid.
pub fn custom_types(crd: &Value) -> Result<Vec<Arc<ResourceType>>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = str_at(crd, "/metadata/name");
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let kind = str_at(crd, "/spec/names/kind");
    let scope = str_at(crd, "/spec/scope");
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errors.push(FieldError::invalid(
            "spec.group",
            group.into(),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            name.into(),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if scope != "Namespaced" && scope != "Cluster" {
        errors.push(FieldError::not_supported(
            "spec.scope",
            scope.into(),
            &["Cluster".to_string(), "Namespaced".to_string()],
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::invalid(
            "spec.versions",
            Value::Array(vec![]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            Value::Array(versions.clone()),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage_version = storage
        .first()
        .map(|v| str_at(v, "/name").to_string())
        .unwrap_or_default();
    let mut types = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        let version_name = str_at(version, "/name");
        if version_name.is_empty() {
            errors.push(FieldError::required(format!("spec.versions[{i}].name"), ""));
        }
        let openapi = version.pointer("/schema/openAPIV3Schema").cloned();
        let schema = match &openapi {
            Some(s) => match Structural::from_openapi(s) {
                Ok(s) => Some(Arc::new(s)),
                Err(message) => {
                    errors.push(FieldError::invalid(
                        format!("spec.versions[{i}].schema.openAPIV3Schema"),
                        Value::String(String::new()),
                        message,
                    ));
                    None
                }
            },
            None => None,
        };
        if version["served"].as_bool() != Some(true) {
            continue;
        }
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|columns| {
                columns
                    .iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, "/name").into(),
                        type_: str_at(c, "/type").into(),
                        format: str_at(c, "/format").into(),
                        description: str_at(c, "/description").into(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        json_path: str_at(c, "/jsonPath").into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        types.push(Arc::new(ResourceType {
            group: group.into(),
            version: version_name.into(),
            kind: kind.into(),
            list_kind: match str_at(crd, "/spec/names/listKind") {
                "" => format!("{kind}List"),
                list_kind => list_kind.into(),
            },
            plural: plural.into(),
            singular: match str_at(crd, "/spec/names/singular") {
                "" => kind.to_lowercase(),
                singular => singular.into(),
            },
            short_names: strings_at(crd, "/spec/names/shortNames"),
            categories: strings_at(crd, "/spec/names/categories"),
            namespaced: scope == "Namespaced",
            status_subresource: version.pointer("/subresources/status").is_some(),
            behaviour: Behaviour::Custom,
            name_rule: NameRule::Dns1123Subdomain,
            has_generation: true,
            unconditional_update: false,
            returns_deleted_object: false,
            storage_version: storage_version.clone(),
            printer_columns,
            schema,
            openapi_schema: openapi,
        }));
    }
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(errors)
    }
}

/// Checks a name against its kind's rule; the messages are the real validators'.
pub fn validate_name(rule: NameRule, name: &str) -> Vec<String> {
    const SUBDOMAIN: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
    const LABEL: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
    const DNS1035: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
    let mut errors = Vec::new();
    let matches = |pattern: &str| {
        regex::Regex::new(&format!("^{pattern}$"))
            .map(|r| r.is_match(name))
            .unwrap_or(false)
    };
    match rule {
        NameRule::Dns1123Subdomain => {
            if name.len() > 253 {
                errors.push("must be no more than 253 characters".to_string());
            }
            if !matches(SUBDOMAIN) {
                errors.push(format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{SUBDOMAIN}')"));
            }
        }
        NameRule::Dns1123Label => {
            if name.len() > 63 {
                errors.push("must be no more than 63 characters".to_string());
            }
            if !matches(LABEL) {
                errors.push(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{LABEL}')"));
            }
        }
        NameRule::Dns1035Label => {
            if name.len() > 63 {
                errors.push("must be no more than 63 characters".to_string());
            }
            if !matches(DNS1035) {
                errors.push(format!("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035}')"));
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                errors.push(format!("may not be '{name}'"));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    errors.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_priority_orders_ga_beta_alpha() {
        let mut versions = vec!["v1alpha1", "v1", "v2beta1", "v1beta2", "v2", "foo"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            versions,
            vec!["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn names_follow_the_kind_rule() {
        assert!(validate_name(NameRule::Dns1123Subdomain, "a.b-c").is_empty());
        assert_eq!(
            validate_name(NameRule::Dns1123Subdomain, "Bad_Name").len(),
            1
        );
        assert!(validate_name(NameRule::Dns1123Label, "a.b").len() == 1);
        assert!(validate_name(NameRule::Dns1035Label, "1abc").len() == 1);
        assert!(validate_name(NameRule::PathSegment, "a:b").is_empty());
        assert_eq!(
            validate_name(NameRule::Dns1123Label, &"a".repeat(64))[0],
            "must be no more than 63 characters"
        );
    }
}
