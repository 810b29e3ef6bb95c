//! Who is asking and may they: bearer tokens (the admin's, ServiceAccounts', test users'),
//! impersonation headers, and RBAC over the Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding objects the server holds, with the bootstrap policy of a fresh cluster
//! and the real 401/403 answers (k8s.io/apiserver endpoints/filters and plugin/pkg/auth/
//! authorizer/rbac).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::resources::GroupResource;
use crate::status::Status;
use crate::store::State;

/// An authenticated (or anonymous) user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn anonymous() -> Self {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    pub fn admin() -> Self {
        User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub fn service_account(namespace: &str, name: &str) -> Self {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    pub fn named(name: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User {
            name: name.into(),
            groups,
        }
    }

    /// `system:serviceaccount:NS:NAME` split, for ServiceAccount users.
    pub fn service_account_parts(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')
    }
}

/// What a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The kubeconfig's cluster admin (`system:masters`).
    Admin,
    /// A ServiceAccount's token: valid while the ServiceAccount exists.
    ServiceAccount {
        namespace: String,
        name: String,
    },
    User(User),
}

/// The tokens the server has issued.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: HashMap<String, Identity>,
}

impl Tokens {
    pub fn issue(&mut self, identity: Identity) -> String {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.issued.insert(token.clone(), identity);
        token
    }

    pub fn identity(&self, token: &str) -> Option<&Identity> {
        self.issued.get(token)
    }
}

pub fn unauthorized() -> Status {
    Status {
        code: 401,
        reason: "Unauthorized",
        message: "Unauthorized".into(),
        details: None,
    }
}

/// What a request asks to do, as the authorizer sees it (`authorizer.Attributes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

/// The real `forbiddenMessage` wrapped by `NewForbidden`.
pub fn forbidden(user: &User, attributes: &Attributes) -> Status {
    match attributes {
        Attributes::NonResource { verb, path } => Status::forbidden(format!(
            "forbidden: User {:?} cannot {verb} path {path:?}",
            user.name
        )),
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {namespace:?}")
            };
            let why = format!(
                "User {:?} cannot {verb} resource {full:?} in API group {group:?} {scope}",
                user.name
            );
            let qualified = GroupResource::new(group, resource);
            let message = if name.is_empty() {
                format!("{qualified} is forbidden: {why}")
            } else {
                format!("{qualified} {name:?} is forbidden: {why}")
            };
            let mut details = json!({"kind": resource});
            if let Some(d) = details.as_object_mut() {
                if !name.is_empty() {
                    d.insert("name".into(), name.clone().into());
                }
                if !group.is_empty() {
                    d.insert("group".into(), group.clone().into());
                }
            }
            Status {
                details: Some(details),
                ..Status::forbidden(message)
            }
        }
    }
}

fn strings(value: &Value, key: &str) -> Vec<String> {
    value[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, attributes: &Attributes) -> bool {
    let verbs = strings(rule, "verbs");
    let any = |list: &[String], want: &str| list.iter().any(|v| v == "*" || v == want);
    match attributes {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let resources = strings(rule, "resources");
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let resource_ok = resources.iter().any(|r| {
                r == "*"
                    || *r == full
                    || (!subresource.is_empty() && *r == format!("*/{subresource}"))
            });
            let names = strings(rule, "resourceNames");
            any(&verbs, verb)
                && any(&strings(rule, "apiGroups"), group)
                && resource_ok
                && (names.is_empty() || names.iter().any(|n| n == name))
        }
        Attributes::NonResource { verb, path } => {
            any(&verbs, verb)
                && strings(rule, "nonResourceURLs").iter().any(|url| {
                    url == "*"
                        || url == path
                        || url
                            .strip_suffix('*')
                            .is_some_and(|prefix| path.starts_with(prefix))
                })
        }
    }
}

fn subject_matches(subject: &Value, user: &User, binding_namespace: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" => name == user.name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let namespace = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            user.name == format!("system:serviceaccount:{namespace}:{name}")
        }
        _ => false,
    }
}

fn role_rules(state: &State, role_ref: &Value, binding_namespace: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or("");
    let role = match role_ref["kind"].as_str().unwrap_or("") {
        "ClusterRole" => state.get(
            &GroupResource::new("rbac.authorization.k8s.io", "clusterroles"),
            "",
            name,
        ),
        "Role" => state.get(
            &GroupResource::new("rbac.authorization.k8s.io", "roles"),
            binding_namespace,
            name,
        ),
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array().cloned())
        .unwrap_or_default()
}

/// RBAC: allowed when a ClusterRoleBinding, or a RoleBinding of the request's namespace, binds
/// the user (or one of its groups) to a role with a rule that covers the request.
pub fn authorize(state: &State, user: &User, attributes: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let bound = |binding: &Value, binding_namespace: &str| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, binding_namespace))
    };
    let rbac = |resource: &str| GroupResource::new("rbac.authorization.k8s.io", resource);
    for binding in state.list(&rbac("clusterrolebindings"), None) {
        if bound(&binding, "")
            && role_rules(state, &binding["roleRef"], "")
                .iter()
                .any(|r| rule_allows(r, attributes))
        {
            return true;
        }
    }
    if let Attributes::Resource { namespace, .. } = attributes
        && !namespace.is_empty()
    {
        for binding in state.list(&rbac("rolebindings"), Some(namespace)) {
            if bound(&binding, namespace)
                && role_rules(state, &binding["roleRef"], namespace)
                    .iter()
                    .any(|r| rule_allows(r, attributes))
            {
                return true;
            }
        }
    }
    false
}

/// The bootstrap policy a fresh cluster has (the parts that decide what a plain user may do).
pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    let role = |name: &str, rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
               "rules": rules})
    };
    let binding = |name: &str, role: &str, groups: &[&str]| {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
            .collect();
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": subjects})
    };
    vec![
        (
            "clusterroles",
            role(
                "cluster-admin",
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:discovery",
                json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:public-info-viewer",
                json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            "clusterroles",
            role(
                "system:basic-user",
                json!([
                    {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                    {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}
                ]),
            ),
        ),
        (
            "clusterrolebindings",
            binding("cluster-admin", "cluster-admin", &["system:masters"]),
        ),
        (
            "clusterrolebindings",
            binding(
                "system:discovery",
                "system:discovery",
                &["system:authenticated"],
            ),
        ),
        (
            "clusterrolebindings",
            binding(
                "system:public-info-viewer",
                "system:public-info-viewer",
                &["system:authenticated", "system:unauthenticated"],
            ),
        ),
        (
            "clusterrolebindings",
            binding(
                "system:basic-user",
                "system:basic-user",
                &["system:authenticated"],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(objects: Vec<(&str, Value)>) -> State {
        let mut state = State::default();
        for (resource, object) in objects {
            state.create(
                &GroupResource::new("rbac.authorization.k8s.io", resource),
                object,
            );
        }
        state
    }

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn rules_bindings_and_the_real_forbidden_message() {
        let mut objects = bootstrap_policy();
        objects.push(("roles", json!({"metadata": {"name": "pairs", "namespace": "ns"}, "rules": [
            {"apiGroups": ["redispair.io"], "resources": ["redispairs"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["redispair.io"], "resources": ["redispairs/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["auth"]}
        ]})));
        objects.push(("rolebindings", json!({"metadata": {"name": "pairs", "namespace": "ns"},
            "roleRef": {"kind": "Role", "name": "pairs"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]})));
        objects.push(("clusterroles", json!({"metadata": {"name": "lease-writer"}, "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"]}
        ]})));
        objects.push(("rolebindings", json!({"metadata": {"name": "leases", "namespace": "ns"},
            "roleRef": {"kind": "ClusterRole", "name": "lease-writer"}, "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]})));
        let state = state_with(objects);
        let sa = User::service_account("ns", "sa");
        // A RoleBinding to a ClusterRole grants its rules in the binding's namespace only.
        assert!(authorize(
            &state,
            &sa,
            &attrs("update", "coordination.k8s.io", "leases", "", "ns", "l")
        ));
        assert!(!authorize(
            &state,
            &sa,
            &attrs("update", "coordination.k8s.io", "leases", "", "other", "l")
        ));
        // A rule for a resource does not cover its subresources.
        assert!(authorize(
            &state,
            &sa,
            &attrs("get", "redispair.io", "redispairs", "", "ns", "a")
        ));
        assert!(!authorize(
            &state,
            &sa,
            &attrs("get", "redispair.io", "redispairs", "status", "ns", "a")
        ));
        assert!(authorize(
            &state,
            &sa,
            &attrs("watch", "redispair.io", "redispairs", "", "ns", "")
        ));
        assert!(authorize(
            &state,
            &sa,
            &attrs("patch", "redispair.io", "redispairs", "status", "ns", "a")
        ));
        assert!(
            !authorize(
                &state,
                &sa,
                &attrs("patch", "redispair.io", "redispairs", "", "ns", "a")
            ),
            "status only through /status"
        );
        assert!(
            !authorize(
                &state,
                &sa,
                &attrs("list", "redispair.io", "redispairs", "", "other", "")
            ),
            "a Role binds in its namespace only"
        );
        assert!(authorize(
            &state,
            &sa,
            &attrs("get", "", "secrets", "", "ns", "auth")
        ));
        assert!(
            !authorize(&state, &sa, &attrs("get", "", "secrets", "", "ns", "other")),
            "resourceNames"
        );
        assert!(authorize(
            &state,
            &sa,
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/apis/redispair.io/v1".into()
            }
        ));
        assert!(!authorize(
            &state,
            &User::anonymous(),
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/api".into()
            }
        ));
        assert!(authorize(
            &state,
            &User::anonymous(),
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/version".into()
            }
        ));
        assert!(authorize(
            &state,
            &User::admin(),
            &attrs("delete", "", "nodes", "", "", "n")
        ));
        let denied = forbidden(&sa, &attrs("list", "", "pods", "", "ns", ""));
        assert_eq!(
            denied.message,
            "pods is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"ns\""
        );
        let named = forbidden(
            &sa,
            &attrs("update", "coordination.k8s.io", "leases", "", "", "l"),
        );
        assert_eq!(
            named.message,
            "leases.coordination.k8s.io \"l\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot update resource \"leases\" in API group \"coordination.k8s.io\" at the cluster scope"
        );
    }
}
