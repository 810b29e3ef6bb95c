//! The REST API: routing a request to discovery or to a resource, and the verbs (get, list,
//! create, update, patch, delete, deletecollection; watch lives in `watch`) with the real
//! server's semantics for resourceVersion preconditions, the status subresource, generation,
//! finalizers, graceful pod deletion and CRDs served as soon as they are created.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::auth::{self, Attributes, Identity, Tokens, User};
use crate::discovery;
use crate::objects::{self, Part, child};
use crate::patch::{self, PatchType};
use crate::request::{Method, Output, Query, Request, negotiate};
use crate::resources::{Behaviour, GroupResource, ResourceType, custom_types};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiResult, FieldError, Status, success_deleted};
use crate::store::{State, TooOld, key_of};
use crate::table;
use crate::watch::WatchStream;

/// What a handler answers.
pub enum Body {
    Json(Value),
    Text(String),
    Watch(WatchStream),
}

pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// `Warning` headers (`299 - "..."`), e.g. for pruned unknown fields.
    pub warnings: Vec<String>,
}

impl Reply {
    fn json(code: u16, body: Value) -> Self {
        Reply {
            code,
            content_type: "application/json",
            body: Body::Json(body),
            warnings: Vec::new(),
        }
    }

    pub fn status(status: &Status) -> Self {
        Reply::json(status.code, status.to_json())
    }
}

/// `fieldValidation`: what to do with fields the schema does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    fn parse(query: &Query) -> ApiResult<Self> {
        match query.get("fieldValidation").unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(Status::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// The shared server state: the store under one lock, and the signals watches wait on.
pub struct Api {
    state: Mutex<State>,
    /// The newest resourceVersion, sent after every write.
    pub changes: watch::Sender<u64>,
    /// Bumped to end every open watch stream abruptly.
    pub drops: watch::Sender<u64>,
    pub bookmark_interval: Duration,
    pub address: Mutex<String>,
    pub tokens: Mutex<Tokens>,
    /// The token of the kubeconfig's cluster admin.
    pub admin_token: String,
    /// A request without credentials is the admin (plain HTTP, see `Options::tls`).
    anonymous_is_admin: bool,
    /// Every resource request RBAC allowed, of users who are not cluster admins: what a test
    /// reads to see which rules of a role were needed.
    pub granted: Mutex<Vec<Granted>>,
}

/// A resource request that RBAC allowed (`authorizer.Attributes` of an allowed request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub user: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

/// A resource request after routing.
struct Target {
    kind: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    part: Part,
}

fn now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn meta(object: &mut Value) -> &mut Map<String, Value> {
    child(object, "metadata")
}

fn meta_str<'a>(object: &'a Value, key: &str) -> &'a str {
    object["metadata"][key].as_str().unwrap_or("")
}

/// Empty labels, annotations, finalizers and owner references are not kept (ObjectMeta
/// omits them when empty, so no object comes back with `labels: {}`).
fn normalize_metadata(object: &mut Value) {
    let m = meta(object);
    for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
        let empty = match m.get(field) {
            Some(Value::Object(map)) => map.is_empty(),
            Some(Value::Array(items)) => items.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            m.remove(field);
        }
    }
}

fn finalizers(object: &Value) -> usize {
    object["metadata"]["finalizers"]
        .as_array()
        .map_or(0, Vec::len)
}

fn too_old(rv: u64, error: TooOld) -> Status {
    Status::gone(format!("too old resource version: {rv} ({})", error.oldest))
}

/// The object as a version serves it: with its kind and apiVersion (an events.k8s.io Event
/// converted from the stored core one).
pub fn versioned(kind: &ResourceType, object: &Value) -> Value {
    let mut object = if kind.is_events_api() && object["apiVersion"] == "v1" {
        objects::event_from_core(object)
    } else {
        object.clone()
    };
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), kind.api_version().into());
        map.insert("kind".into(), kind.kind.clone().into());
    }
    object
}

/// The object as it is stored (an events.k8s.io Event as a core v1 Event).
fn stored(kind: &ResourceType, object: &Value) -> Value {
    if kind.is_events_api() {
        objects::event_to_core(object)
    } else {
        versioned(kind, object)
    }
}

pub fn partial_metadata(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

/// One object in the requested output (a Table of one row for `as=Table`).
pub fn render(kind: &ResourceType, object: &Value, output: Output, headers: bool) -> Value {
    match output {
        Output::Full | Output::AggregatedDiscovery => versioned(kind, object),
        Output::Metadata => partial_metadata(object),
        Output::Table(include) => {
            let rv = meta_str(object, "resourceVersion").to_string();
            let rows = vec![table_row(kind, object, include)];
            table_document(kind, rows, json!({"resourceVersion": rv}), headers)
        }
    }
}

fn table_row(kind: &ResourceType, object: &Value, include: crate::request::IncludeObject) -> Value {
    let mut row = json!({"cells": table::cells(kind, object, now())});
    let embedded = match include {
        crate::request::IncludeObject::None => None,
        crate::request::IncludeObject::Metadata => Some(partial_metadata(object)),
        crate::request::IncludeObject::Object => Some(versioned(kind, object)),
    };
    if let (Some(embedded), Some(map)) = (embedded, row.as_object_mut()) {
        map.insert("object".into(), embedded);
    }
    row
}

fn table_document(kind: &ResourceType, rows: Vec<Value>, metadata: Value, headers: bool) -> Value {
    let columns = if headers {
        Value::Array(
            table::columns(kind)
                .iter()
                .map(table::Column::to_json)
                .collect(),
        )
    } else {
        Value::Null
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns, "rows": rows})
}

/// The object a create or update sends, in JSON or (client-go's typed clients) protobuf.
fn decode_body(request: &Request) -> ApiResult<Value> {
    let media = request.content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match media {
        crate::protobuf::CONTENT_TYPE => crate::protobuf::decode(&request.body)?,
        "" | "application/json" | "*/*" => serde_json::from_slice(&request.body).map_err(|e| {
            Status::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        // As the real server: YAML is turned into JSON first.
        "application/yaml" => std::str::from_utf8(&request.body)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string()))
            .map_err(|e| {
                Status::bad_request(format!(
                    "couldn't get version/kind; json parse error: error converting YAML to JSON: {e}"
                ))
            })?,
        other => return Err(Status::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(Status::bad_request(
            "couldn't get version/kind; json parse error: the body is not a JSON object",
        ));
    }
    Ok(value)
}

/// The continue token of a paginated list: the list's resourceVersion and the last key.
fn encode_continue(rv: u64, key: &(String, String)) -> String {
    let token =
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}\u{0}", key.0, key.1)});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(u64, (String, String))> {
    let invalid = |why: String| Status::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|e| invalid(e.to_string()))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let rv = value["rv"]
        .as_u64()
        .ok_or_else(|| invalid("no resource version".into()))?;
    let start = value["start"]
        .as_str()
        .ok_or_else(|| invalid("no start key".into()))?;
    let start = start.trim_end_matches('\u{0}');
    let (ns, name) = start
        .split_once('/')
        .ok_or_else(|| invalid("malformed start key".into()))?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// Options of a DELETE, from its body and its query.
#[derive(Default)]
struct DeleteOptions {
    grace_period: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

impl DeleteOptions {
    fn parse(request: &Request) -> ApiResult<Self> {
        let (body, query) = (&request.body, &request.query);
        let mut options = DeleteOptions::default();
        if !body.iter().all(u8::is_ascii_whitespace) {
            let value: Value = if request
                .content_type
                .starts_with(crate::protobuf::CONTENT_TYPE)
            {
                crate::protobuf::decode(body)?
            } else {
                serde_json::from_slice(body).map_err(|e| {
                    Status::bad_request(format!("error decoding DeleteOptions: {e}"))
                })?
            };
            options.grace_period = value["gracePeriodSeconds"].as_i64();
            options.uid = value
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string);
            options.resource_version = value
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            options.dry_run = value["dryRun"].as_array().is_some_and(|d| !d.is_empty());
        }
        if let Some(grace) = query.integer("gracePeriodSeconds")? {
            options.grace_period = Some(grace);
        }
        options.dry_run |= query.get("dryRun").is_some_and(|d| d == "All");
        Ok(options)
    }
}

impl Api {
    pub fn new(bookmark_interval: Duration, anonymous_is_admin: bool) -> Self {
        let mut state = State::default();
        let now = now().to_string();
        let namespaces = GroupResource::new("", "namespaces");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            if let Some(kind) = state.registry.storage_type(&namespaces) {
                objects::prepare_create(&kind, &mut namespace, "");
            }
            let m = meta(&mut namespace);
            m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            m.insert("creationTimestamp".into(), now.clone().into());
            state.create(&namespaces, namespace);
            default_service_account(&mut state, name);
        }
        for (resource, mut object) in auth::bootstrap_policy() {
            let m = meta(&mut object);
            m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            m.insert("creationTimestamp".into(), now.clone().into());
            state.create(
                &GroupResource::new("rbac.authorization.k8s.io", resource),
                object,
            );
        }
        let rv = state.resource_version();
        let mut tokens = Tokens::default();
        let admin_token = tokens.issue(Identity::Admin);
        Api {
            state: Mutex::new(state),
            changes: watch::channel(rv).0,
            drops: watch::channel(0).0,
            bookmark_interval,
            address: Mutex::new(String::new()),
            tokens: Mutex::new(tokens),
            admin_token,
            anonymous_is_admin,
            granted: Mutex::new(Vec::new()),
        }
    }

    /// Issues a bearer token for an identity.
    pub fn issue_token(&self, identity: Identity) -> String {
        self.tokens
            .lock()
            .map(|mut t| t.issue(identity))
            .unwrap_or_default()
    }

    /// The user a request is made as: its bearer token's (401 for an unknown one, or a
    /// ServiceAccount that no longer exists), anonymous without one, then impersonation.
    fn authenticate(&self, request: &Request) -> ApiResult<User> {
        let header = request.authorization.trim();
        let user = if header.is_empty() && self.anonymous_is_admin {
            User::admin()
        } else if header.is_empty() {
            User::anonymous()
        } else {
            let token = header
                .strip_prefix("Bearer ")
                .ok_or_else(auth::unauthorized)?
                .trim();
            let identity = self
                .tokens
                .lock()
                .ok()
                .and_then(|t| t.identity(token).cloned())
                .ok_or_else(auth::unauthorized)?;
            match identity {
                Identity::Admin => User::admin(),
                Identity::User(user) => user,
                Identity::ServiceAccount { namespace, name } => {
                    let accounts = GroupResource::new("", "serviceaccounts");
                    if self.lock().get(&accounts, &namespace, &name).is_none() {
                        return Err(auth::unauthorized());
                    }
                    User::service_account(&namespace, &name)
                }
            }
        };
        let Some(as_user) = &request.impersonate_user else {
            return Ok(user);
        };
        let state = self.lock();
        let mut impersonated = match User::named(as_user, &[]).service_account_parts() {
            Some((namespace, name)) => {
                let attributes = impersonation("serviceaccounts", namespace, name);
                if !auth::authorize(&state, &user, &attributes) {
                    return Err(auth::forbidden(&user, &attributes));
                }
                User::service_account(namespace, name)
            }
            None => {
                let attributes = impersonation("users", "", as_user);
                if !auth::authorize(&state, &user, &attributes) {
                    return Err(auth::forbidden(&user, &attributes));
                }
                User::named(as_user, &[])
            }
        };
        for group in &request.impersonate_groups {
            let attributes = impersonation("groups", "", group);
            if !auth::authorize(&state, &user, &attributes) {
                return Err(auth::forbidden(&user, &attributes));
            }
            if !impersonated.groups.contains(group) {
                impersonated.groups.push(group.clone());
            }
        }
        Ok(impersonated)
    }

    fn note_granted(&self, user: &User, attributes: &Attributes) {
        let Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } = attributes
        else {
            return;
        };
        if user.groups.iter().any(|g| g == "system:masters") {
            return;
        }
        if let Ok(mut granted) = self.granted.lock() {
            granted.push(Granted {
                user: user.name.clone(),
                verb: verb.clone(),
                group: group.clone(),
                resource: resource.clone(),
                subresource: subresource.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves the state as the last complete write made it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self, state: &State) {
        self.changes.send_replace(state.resource_version());
    }

    /// Forgets the history before now (the next resume from an older version gets 410).
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compact();
    }

    /// Answers one request.
    pub fn handle(self: &Arc<Self>, request: &Request) -> Reply {
        let routed = self
            .authenticate(request)
            .and_then(|user| self.route(request, &user));
        match routed {
            Ok(reply) => reply,
            Err(status) => Reply::status(&status),
        }
    }

    fn route(self: &Arc<Self>, request: &Request, user: &User) -> ApiResult<Reply> {
        let segments: Vec<&str> = request
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let resource_request = matches!(
            segments.as_slice(),
            ["api", _, _, ..] | ["apis", _, _, _, ..]
        );
        if !resource_request {
            let attributes = Attributes::NonResource {
                verb: request.method_name.to_lowercase(),
                path: request.path.clone(),
            };
            if !auth::authorize(&self.lock(), user, &attributes) {
                return Err(auth::forbidden(user, &attributes));
            }
        }
        let discovery_only = |reply: Value| -> ApiResult<Reply> {
            if request.method != Method::Get {
                return Err(Status::method_not_allowed());
            }
            Ok(Reply::json(200, reply))
        };
        match segments.as_slice() {
            ["version"] => discovery_only(discovery::version()),
            ["healthz" | "livez" | "readyz"] => Ok(Reply {
                code: 200,
                content_type: "text/plain; charset=utf-8",
                body: Body::Text("ok".into()),
                warnings: Vec::new(),
            }),
            ["api"] | ["apis"] => {
                let legacy = segments[0] == "api";
                if negotiate(&request.accept, &request.query)? == Output::AggregatedDiscovery {
                    let document = discovery::aggregated(&self.lock().registry, legacy);
                    let mut reply = discovery_only(document)?;
                    reply.content_type = discovery::AGGREGATED_CONTENT_TYPE;
                    return Ok(reply);
                }
                if legacy {
                    let address = self.address.lock().map(|a| a.clone()).unwrap_or_default();
                    discovery_only(discovery::api_versions(&address))
                } else {
                    discovery_only(discovery::api_group_list(&self.lock().registry))
                }
            }
            ["api", version] => discovery::api_resource_list(&self.lock().registry, "", version)
                .map_or_else(|| Err(Status::no_route()), discovery_only),
            ["apis", group] => discovery::api_group(&self.lock().registry, group)
                .map_or_else(|| Err(Status::no_route()), discovery_only),
            ["apis", group, version] => {
                discovery::api_resource_list(&self.lock().registry, group, version)
                    .map_or_else(|| Err(Status::no_route()), discovery_only)
            }
            ["openapi", "v3"] => discovery_only(discovery::openapi_root(&self.lock().registry)),
            ["openapi", "v3", rest @ ..] => {
                discovery::openapi_group_version(&self.lock().registry, &rest.join("/"))
                    .map_or_else(|| Err(Status::no_route()), discovery_only)
            }
            ["api", version, rest @ ..] => self.resource(request, user, "", version, rest),
            ["apis", group, version, rest @ ..] => {
                self.resource(request, user, group, version, rest)
            }
            _ => Err(Status::no_route()),
        }
    }

    fn find_target(&self, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
        let state = self.lock();
        let registry = &state.registry;
        let namespaced = |plural: &str| {
            registry
                .find(group, version, plural)
                .filter(|t| t.namespaced)
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => {
                (Some(ns.to_string()), {
                    let mut v = vec![*plural];
                    v.extend_from_slice(tail);
                    v
                })
            }
            _ => (None, rest.to_vec()),
        };
        let Some(kind) = rest
            .first()
            .and_then(|plural| registry.find(group, version, plural))
        else {
            return Err(Status::no_route());
        };
        if kind.namespaced && namespace.is_none() && rest.len() > 1 {
            return Err(Status::no_route());
        }
        let part = match rest.get(2) {
            None => Part::Main,
            Some(&"status") if kind.status_subresource => Part::Status,
            Some(&"token") if kind.has_token_subresource() => Part::Token,
            Some(_) => return Err(Status::no_route()),
        };
        if rest.len() > 3 {
            return Err(Status::no_route());
        }
        Ok(Target {
            kind,
            namespace,
            name: rest.get(1).map(|s| s.to_string()),
            part,
        })
    }

    fn resource(
        self: &Arc<Self>,
        request: &Request,
        user: &User,
        group: &str,
        version: &str,
        rest: &[&str],
    ) -> ApiResult<Reply> {
        let target = self.find_target(group, version, rest)?;
        let attributes = request_attributes(request, &target);
        if !auth::authorize(&self.lock(), user, &attributes) {
            return Err(auth::forbidden(user, &attributes));
        }
        self.note_granted(user, &attributes);
        let output = negotiate(&request.accept, &request.query)?;
        if target.kind.behaviour == Behaviour::WhoAmI {
            return match (request.method, &target.name) {
                (Method::Post, None) => Ok(Reply::json(
                    201,
                    json!({
                        "kind": "SelfSubjectReview",
                        "apiVersion": "authentication.k8s.io/v1",
                        "metadata": {"creationTimestamp": null},
                        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
                    }),
                )),
                _ => Err(Status::method_not_allowed()),
            };
        }
        if target.kind.behaviour == Behaviour::Review {
            return match (request.method, &target.name) {
                (Method::Post, None) => self.review(request, user),
                _ => Err(Status::method_not_allowed()),
            };
        }
        if target.part == Part::Token {
            return match (request.method, &target.name) {
                (Method::Post, Some(name)) => self.token_request(&target, name, request),
                _ => Err(Status::method_not_allowed()),
            };
        }
        match (request.method, &target.name) {
            (Method::Get, None) if request.query.flag("watch") => crate::watch::start(
                self,
                &target.kind,
                target.namespace.as_deref(),
                &request.query,
                output,
            ),
            (Method::Get, None) => self.list(&target, &request.query, output),
            (Method::Get, Some(name)) => self.get(&target, name, output),
            (Method::Post, None) => {
                if target.kind.namespaced && target.namespace.is_none() {
                    return Err(Status::method_not_allowed());
                }
                self.create(&target, request, output)
            }
            (Method::Put, Some(name)) => self.update(&target, name, request, output),
            (Method::Patch, Some(name)) => self.patch(&target, name, request, output),
            (Method::Delete, Some(name)) if target.part == Part::Main => {
                self.delete(&target, name, request, output)
            }
            (Method::Delete, None) => self.delete_collection(&target, request),
            _ => Err(Status::method_not_allowed()),
        }
    }

    /// SelfSubjectAccessReview (`kubectl auth can-i`): may the requesting user do this?
    fn review(&self, request: &Request, user: &User) -> ApiResult<Reply> {
        let mut review = decode_body(request)?;
        let spec = review["spec"].clone();
        let text = |v: &Value, key: &str| v[key].as_str().unwrap_or("").to_string();
        let attributes = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
            Attributes::Resource {
                verb: text(r, "verb"),
                group: text(r, "group"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                namespace: text(r, "namespace"),
                name: text(r, "name"),
            }
        } else if let Some(n) = spec.get("nonResourceAttributes").filter(|n| n.is_object()) {
            Attributes::NonResource {
                verb: text(n, "verb"),
                path: text(n, "path"),
            }
        } else {
            let error = FieldError::invalid(
                "spec.resourceAttributes",
                Value::Null,
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            );
            return Err(Status::invalid(
                "SelfSubjectAccessReview.authorization.k8s.io",
                "authorization.k8s.io",
                "",
                &[error],
            ));
        };
        let allowed = auth::authorize(&self.lock(), user, &attributes);
        if let Some(map) = review.as_object_mut() {
            map.insert("apiVersion".into(), "authorization.k8s.io/v1".into());
            map.insert("kind".into(), "SelfSubjectAccessReview".into());
            map.insert("metadata".into(), json!({"creationTimestamp": null}));
            map.insert(
                "status".into(),
                if allowed {
                    json!({"allowed": true})
                } else {
                    json!({"allowed": false})
                },
            );
        }
        Ok(Reply::json(201, review))
    }

    /// TokenRequest (`kubectl create token NAME`): a token for an existing ServiceAccount.
    fn token_request(&self, target: &Target, name: &str, request: &Request) -> ApiResult<Reply> {
        let namespace = target.namespace.clone().unwrap_or_default();
        if self
            .lock()
            .get(&target.kind.storage_resource(), &namespace, name)
            .is_none()
        {
            return Err(Status::not_found(&target.kind.group_resource(), name));
        }
        let body = if request.body.is_empty() {
            json!({})
        } else {
            decode_body(request)?
        };
        let seconds = body
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let token = self.issue_token(Identity::ServiceAccount {
            namespace: namespace.clone(),
            name: name.to_string(),
        });
        let expires = now()
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or_else(|_| now());
        let audiences = body
            .pointer("/spec/audiences")
            .cloned()
            .unwrap_or_else(|| json!(["https://kubernetes.default.svc.cluster.local"]));
        Ok(Reply::json(
            201,
            json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
                "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": null},
                "status": {"token": token, "expirationTimestamp": expires.to_string()},
            }),
        ))
    }

    fn get(&self, target: &Target, name: &str, output: Output) -> ApiResult<Reply> {
        let state = self.lock();
        let resource = target.kind.storage_resource();
        let object = state
            .get(&resource, target.namespace.as_deref().unwrap_or(""), name)
            .ok_or_else(|| Status::not_found(&target.kind.group_resource(), name))?;
        Ok(Reply::json(
            200,
            render(&target.kind, &object, output, true),
        ))
    }

    fn list(&self, target: &Target, query: &Query, output: Output) -> ApiResult<Reply> {
        let kind = &target.kind;
        let resource = kind.storage_resource();
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind)?;
        let limit = query
            .integer("limit")?
            .filter(|l| *l > 0)
            .map(|l| l as usize);
        let state = self.lock();
        let (list_rv, objects, start) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (rv, start) = decode_continue(token)?;
                let objects = state
                    .snapshot_at(&resource, rv)
                    .map_err(|_| Status::gone(CONTINUE_EXPIRED))?;
                (rv, objects, Some(start))
            }
            None => {
                let requested = query.get("resourceVersion").unwrap_or("");
                match (query.get("resourceVersionMatch").unwrap_or(""), requested) {
                    ("Exact", rv) => {
                        let rv: u64 = rv.parse().map_err(|_| {
                            Status::bad_request(format!("invalid resourceVersion {rv:?}"))
                        })?;
                        let objects = state
                            .snapshot_at(&resource, rv)
                            .map_err(|e| too_old(rv, e))?;
                        (rv, objects, None)
                    }
                    ("" | "NotOlderThan", _) => {
                        (state.resource_version(), state.list(&resource, None), None)
                    }
                    (other, _) => {
                        return Err(Status::bad_request(format!(
                            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                        )));
                    }
                }
            }
        };
        drop(state);
        let mut matching: Vec<Arc<Value>> = objects
            .into_iter()
            .filter(|o| {
                target
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| meta_str(o, "namespace") == ns)
            })
            .filter(|o| start.as_ref().is_none_or(|s| key_of(o) > *s))
            .filter(|o| labels.matches(o["metadata"]["labels"].as_object()))
            .filter(|o| fields.matches(kind, o))
            .collect();
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if let Some(limit) = limit
            && matching.len() > limit
        {
            let remaining = matching.len() - limit;
            matching.truncate(limit);
            if let (Some(last), Some(m)) = (matching.last(), metadata.as_object_mut()) {
                m.insert(
                    "continue".into(),
                    encode_continue(list_rv, &key_of(last)).into(),
                );
                if labels == LabelSelector::default() && fields.is_empty() {
                    m.insert("remainingItemCount".into(), remaining.into());
                }
            }
        }
        let body = match output {
            Output::Table(include) => {
                let rows = matching
                    .iter()
                    .map(|o| table_row(kind, o, include))
                    .collect();
                table_document(kind, rows, metadata, true)
            }
            Output::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": matching.iter().map(|o| partial_metadata(o)).collect::<Vec<_>>(),
            }),
            Output::Full | Output::AggregatedDiscovery => {
                // Typed lists of built-in kinds carry no kind/apiVersion per item; custom
                // resource lists (unstructured) do.
                let items: Vec<Value> = matching
                    .iter()
                    .map(|o| {
                        if kind.behaviour == Behaviour::Custom {
                            versioned(kind, o)
                        } else {
                            let mut o = versioned(kind, o);
                            if let Some(m) = o.as_object_mut() {
                                m.remove("kind");
                                m.remove("apiVersion");
                            }
                            o
                        }
                    })
                    .collect();
                json!({"kind": kind.list_kind, "apiVersion": kind.api_version(), "metadata": metadata, "items": items})
            }
        };
        Ok(Reply::json(200, body))
    }

    /// Checks kind/apiVersion and namespace of a body against the request.
    fn check_body(&self, target: &Target, object: &mut Value) -> ApiResult<()> {
        let kind = &target.kind;
        let api_version = object["apiVersion"].as_str().unwrap_or("").to_string();
        let object_kind = object["kind"].as_str().unwrap_or("").to_string();
        if !object_kind.is_empty() && object_kind != kind.kind {
            return Err(Status::bad_request(format!(
                "{object_kind} in version {:?} cannot be handled as a {}: the kind in the body does not match the resource of the request",
                api_version.rsplit('/').next().unwrap_or(""),
                kind.kind
            )));
        }
        if !api_version.is_empty() && api_version != kind.api_version() {
            let same_group = api_version.rsplit_once('/').map_or("", |(g, _)| g) == kind.group;
            if !(same_group && kind.behaviour == Behaviour::Custom) {
                return Err(Status::bad_request(format!(
                    "the API version in the data ({api_version}) does not match the expected API version ({})",
                    kind.api_version()
                )));
            }
        }
        let body_namespace = meta_str(object, "namespace").to_string();
        match (&target.namespace, kind.namespaced) {
            (Some(ns), true) => {
                if !body_namespace.is_empty() && body_namespace != *ns {
                    return Err(Status::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta(object).insert("namespace".into(), ns.clone().into());
            }
            _ => {
                meta(object).remove("namespace");
            }
        }
        Ok(())
    }

    /// Unknown fields of a custom resource: pruned, reported as warnings or (Strict) rejected.
    fn prune(
        kind: &ResourceType,
        object: &mut Value,
        validation: FieldValidation,
        patching: bool,
    ) -> ApiResult<Vec<String>> {
        let decoded = match &kind.schema {
            Some(schema) => crate::typed::prune_unknown_metadata(object).map(|mut unknown| {
                unknown.extend(schema.prune(object));
                unknown
            }),
            None if kind.behaviour == Behaviour::Custom => {
                crate::typed::prune_unknown_metadata(object)
            }
            None => {
                crate::typed::prune_unknown(&kind.group, &kind.kind, &kind.api_version(), object)
            }
        };
        let unknown = decoded.map_err(|e| {
            Status::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {e}",
                kind.kind, kind.version, kind.kind
            ))
        })?;
        if unknown.is_empty() || validation == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let listed: Vec<String> = unknown
            .iter()
            .map(|path| format!("unknown field \"{path}\""))
            .collect();
        if validation == FieldValidation::Strict {
            let message = format!("strict decoding error: {}", listed.join(", "));
            return Err(Status::bad_request(if patching {
                message
            } else {
                format!(
                    "{} in version {:?} cannot be handled as a {}: {message}",
                    kind.kind, kind.version, kind.kind
                )
            }));
        }
        Ok(listed)
    }

    fn validate(kind: &ResourceType, object: &Value, old: Option<&Value>) -> ApiResult<()> {
        let mut errors = objects::validate_metadata(kind, object);
        if kind.namespaced && meta_str(object, "namespace").is_empty() {
            errors.push(FieldError::required("metadata.namespace", ""));
        }
        errors.extend(objects::validate_kind(kind, object));
        if let (Behaviour::Pod, Some(old)) = (kind.behaviour, old) {
            errors.extend(objects::validate_pod_update(object, old));
        }
        if let Some(schema) = &kind.schema {
            errors.extend(schema.validate(object, old));
        }
        if let Some(old) = old
            && old["metadata"]["deletionTimestamp"].is_string()
        {
            let before: Vec<&Value> = old["metadata"]["finalizers"]
                .as_array()
                .map(|f| f.iter().collect())
                .unwrap_or_default();
            let added: Vec<String> = object["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !before.contains(f))
                .filter_map(|f| f.as_str().map(|s| format!("{s:?}")))
                .collect();
            if !added.is_empty() {
                errors.push(FieldError::forbidden(
                    "metadata.finalizers",
                    format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}", added.join(", ")),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Status::invalid(
                &kind.qualified_kind(),
                &kind.group,
                meta_str(object, "name"),
                &errors,
            ))
        }
    }

    fn create(&self, target: &Target, request: &Request, output: Output) -> ApiResult<Reply> {
        if target.part != Part::Main {
            return Err(Status::method_not_allowed());
        }
        let object = decode_body(request)?;
        self.create_object(target, object, &request.query, output)
    }

    fn create_object(
        &self,
        target: &Target,
        mut object: Value,
        query: &Query,
        output: Output,
    ) -> ApiResult<Reply> {
        let kind = &target.kind;
        let validation = FieldValidation::parse(query)?;
        self.check_body(target, &mut object)?;
        if !meta_str(&object, "resourceVersion").is_empty() {
            return Err(Status::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if meta_str(&object, "name").is_empty() && !meta_str(&object, "generateName").is_empty() {
            let name = format!("{}{}", meta_str(&object, "generateName"), random_suffix());
            meta(&mut object).insert("name".into(), name.into());
        }
        let warnings = Self::prune(kind, &mut object, validation, false)?;
        if kind.behaviour == Behaviour::Secret {
            objects::normalize_secret(&mut object)?;
        }
        let mut state = self.lock();
        let cluster_ip = format!(
            "10.96.{}.{}",
            (state.resource_version() / 250) % 250,
            state.resource_version() % 250 + 2
        );
        objects::prepare_create(kind, &mut object, &cluster_ip);
        if let Some(schema) = &kind.schema {
            schema.apply_defaults(&mut object);
        }
        let now = now().to_string();
        {
            let m = meta(&mut object);
            for server_managed in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
                "managedFields",
            ] {
                m.remove(server_managed);
            }
            m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            m.insert("creationTimestamp".into(), now.clone().into());
            if kind.has_generation {
                m.insert("generation".into(), 1.into());
            }
        }
        if kind.behaviour == Behaviour::CustomResourceDefinition {
            objects::crd_status(&mut object);
        }
        normalize_metadata(&mut object);
        Self::validate(kind, &object, None)?;
        let types = match kind.behaviour {
            Behaviour::CustomResourceDefinition => {
                Some(custom_types(&object).map_err(|errors| {
                    Status::invalid(
                        &kind.qualified_kind(),
                        &kind.group,
                        meta_str(&object, "name"),
                        &errors,
                    )
                })?)
            }
            _ => None,
        };
        let resource = kind.storage_resource();
        let namespace = meta_str(&object, "namespace").to_string();
        let name = meta_str(&object, "name").to_string();
        if kind.namespaced
            && state
                .get(&GroupResource::new("", "namespaces"), "", &namespace)
                .is_none()
        {
            return Err(Status::not_found(
                &GroupResource::new("", "namespaces"),
                &namespace,
            ));
        }
        if state.get(&resource, &namespace, &name).is_some() {
            return Err(Status::already_exists(&kind.group_resource(), &name));
        }
        if query.get("dryRun") == Some("All") {
            return Ok(Reply {
                warnings,
                ..Reply::json(201, render(kind, &object, output, true))
            });
        }
        let stored = state.create(&resource, stored(kind, &object));
        if let Some(types) = types {
            state.registry.set_custom(&name, types);
        }
        if kind.behaviour == Behaviour::Namespace {
            default_service_account(&mut state, &name);
        }
        self.notify(&state);
        Ok(Reply {
            warnings,
            ..Reply::json(201, render(kind, &stored, output, true))
        })
    }

    fn update(
        &self,
        target: &Target,
        name: &str,
        request: &Request,
        output: Output,
    ) -> ApiResult<Reply> {
        let validation = FieldValidation::parse(&request.query)?;
        let mut object = decode_body(request)?;
        self.check_body(target, &mut object)?;
        let body_name = meta_str(&object, "name").to_string();
        if body_name != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if meta_str(&object, "resourceVersion").is_empty() && !target.kind.unconditional_update {
            let error = FieldError::invalid(
                "metadata.resourceVersion",
                Value::String(String::new()),
                "must be specified for an update",
            );
            return Err(Status::invalid(
                &target.kind.qualified_kind(),
                &target.kind.group,
                name,
                &[error],
            ));
        }
        let warnings = Self::prune(&target.kind, &mut object, validation, false)?;
        let mut state = self.lock();
        let reply = self.write(
            &mut state,
            target,
            name,
            object,
            request.query.get("dryRun") == Some("All"),
            output,
        )?;
        Ok(Reply {
            warnings: [warnings, reply.warnings].concat(),
            ..reply
        })
    }

    fn patch(
        &self,
        target: &Target,
        name: &str,
        request: &Request,
        output: Output,
    ) -> ApiResult<Reply> {
        let kind = &target.kind;
        let validation = FieldValidation::parse(&request.query)?;
        let patch_type = PatchType::from_content_type(&request.content_type)
            .ok_or_else(|| Status::unsupported_media_type(&request.content_type))?;
        if patch_type == PatchType::StrategicMerge && kind.behaviour == Behaviour::Custom {
            return Err(Status {
                code: 415,
                reason: "UnsupportedMediaType",
                message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                details: None,
            });
        }
        if patch_type == PatchType::Apply {
            return self.apply(target, name, request, output);
        }
        let mut state = self.lock();
        let resource = kind.storage_resource();
        let current = state
            .get(&resource, target.namespace.as_deref().unwrap_or(""), name)
            .ok_or_else(|| Status::not_found(&kind.group_resource(), name))?;
        let mut patched = patch::apply(patch_type, &versioned(kind, &current), &request.body)?;
        if !patched.is_object() {
            return Err(Status::bad_request(
                "the patched object is not a JSON object",
            ));
        }
        if meta_str(&patched, "name") != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&patched, "name")
            )));
        }
        self.check_body(target, &mut patched)?;
        let warnings = Self::prune(kind, &mut patched, validation, true)?;
        let reply = self.write(
            &mut state,
            target,
            name,
            patched,
            request.query.get("dryRun") == Some("All"),
            output,
        )?;
        Ok(Reply {
            warnings: [warnings, reply.warnings].concat(),
            ..reply
        })
    }

    /// Server-side apply, kept simple: the applied configuration creates the object or is
    /// merged into it (strategic merge for built-in kinds, merge patch for custom resources).
    /// There are no managedFields: fields a manager stops applying are not removed, and there
    /// are no conflicts between managers.
    fn apply(
        &self,
        target: &Target,
        name: &str,
        request: &Request,
        output: Output,
    ) -> ApiResult<Reply> {
        let kind = &target.kind;
        if request.query.get("fieldManager").unwrap_or("").is_empty() {
            let error = FieldError::required("fieldManager", "is required for apply patch");
            return Err(Status::invalid(
                "PatchOptions.meta.k8s.io",
                "meta.k8s.io",
                "",
                &[error],
            ));
        }
        let text = std::str::from_utf8(&request.body)
            .map_err(|_| Status::bad_request("the apply configuration is not UTF-8"))?;
        let applied: Value = serde_saphyr::from_str(text)
            .map_err(|e| Status::bad_request(format!("error decoding YAML: {e}")))?;
        if !applied.is_object() {
            return Err(Status::bad_request(
                "the apply configuration is not an object",
            ));
        }
        for field in ["apiVersion", "kind"] {
            if applied[field].as_str().unwrap_or("").is_empty() {
                let error =
                    FieldError::required(field, "must be specified in an apply configuration");
                return Err(Status::invalid(
                    &kind.qualified_kind(),
                    &kind.group,
                    name,
                    &[error],
                ));
            }
        }
        if meta_str(&applied, "name") != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&applied, "name")
            )));
        }
        let exists = {
            let state = self.lock();
            state
                .get(
                    &kind.storage_resource(),
                    target.namespace.as_deref().unwrap_or(""),
                    name,
                )
                .is_some()
        };
        if !exists {
            if target.part != Part::Main {
                return Err(Status::not_found(&kind.group_resource(), name));
            }
            return self.create_object(target, applied, &request.query, output);
        }
        let validation = FieldValidation::parse(&request.query)?;
        let mut state = self.lock();
        let current = state
            .get(
                &kind.storage_resource(),
                target.namespace.as_deref().unwrap_or(""),
                name,
            )
            .ok_or_else(|| Status::not_found(&kind.group_resource(), name))?;
        let mut merged = versioned(kind, &current);
        if kind.behaviour == Behaviour::Custom {
            json_patch::merge(&mut merged, &applied);
        } else {
            patch::strategic_merge(&mut merged, &applied).map_err(Status::bad_request)?;
        }
        self.check_body(target, &mut merged)?;
        let warnings = Self::prune(kind, &mut merged, validation, true)?;
        let reply = self.write(
            &mut state,
            target,
            name,
            merged,
            request.query.get("dryRun") == Some("All"),
            output,
        )?;
        Ok(Reply {
            warnings: [warnings, reply.warnings].concat(),
            ..reply
        })
    }

    /// The shared end of update and patch: preconditions, what the part may change,
    /// validation, generation, a no-op left unwritten, and deletion once the last finalizer
    /// of an object being deleted is gone.
    fn write(
        &self,
        state: &mut State,
        target: &Target,
        name: &str,
        object: Value,
        dry_run: bool,
        output: Output,
    ) -> ApiResult<Reply> {
        let kind = &target.kind;
        let resource = kind.storage_resource();
        let namespace = target.namespace.clone().unwrap_or_default();
        let current = state
            .get(&resource, &namespace, name)
            .ok_or_else(|| Status::not_found(&kind.group_resource(), name))?;
        let sent_rv = meta_str(&object, "resourceVersion").to_string();
        if !sent_rv.is_empty() && sent_rv != meta_str(&current, "resourceVersion") {
            return Err(Status::conflict_modified(&kind.group_resource(), name));
        }
        let sent_uid = meta_str(&object, "uid").to_string();
        if !sent_uid.is_empty() && sent_uid != meta_str(&current, "uid") {
            return Err(Status::conflict(
                &kind.group_resource(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {sent_uid}, UID in object meta: {}",
                    meta_str(&current, "uid")
                ),
            ));
        }
        let mut object = objects::merge_for_part(kind, target.part, object, &current);
        if kind.behaviour == Behaviour::Secret {
            objects::normalize_secret(&mut object)?;
        }
        {
            let m = meta(&mut object);
            for kept in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match current["metadata"].get(kept) {
                    Some(v) => m.insert(kept.into(), v.clone()),
                    None => m.remove(kept),
                };
            }
            m.insert(
                "resourceVersion".into(),
                current["metadata"]["resourceVersion"].clone(),
            );
            m.remove("managedFields");
            m.remove("selfLink");
        }
        if let Some(schema) = &kind.schema {
            schema.apply_defaults(&mut object);
        }
        if kind.behaviour == Behaviour::CustomResourceDefinition && target.part == Part::Main {
            objects::crd_status(&mut object);
        }
        if kind.has_generation && objects::spec_changed(kind, &object, &current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta(&mut object).insert("generation".into(), generation.into());
        }
        normalize_metadata(&mut object);
        let object = versioned(kind, &object);
        Self::validate(kind, &object, Some(&current))?;
        let types = match kind.behaviour {
            Behaviour::CustomResourceDefinition => {
                Some(custom_types(&object).map_err(|errors| {
                    Status::invalid(&kind.qualified_kind(), &kind.group, name, &errors)
                })?)
            }
            _ => None,
        };
        // An update that changes nothing is not written: no new resourceVersion, no event.
        if object == versioned(kind, &current) || dry_run {
            return Ok(Reply::json(200, render(kind, &object, output, true)));
        }
        let finishing = finalizers(&object) == 0
            && finalizers(&current) > 0
            && current["metadata"]["deletionTimestamp"].is_string()
            && current["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0);
        let stored = state.update(&resource, stored(kind, &object));
        if finishing {
            let deleted = state.delete(&resource, &namespace, name);
            self.after_delete(state, kind, name);
            self.notify(state);
            return Ok(Reply::json(
                200,
                render(kind, deleted.as_deref().unwrap_or(&stored), output, true),
            ));
        }
        if let Some(types) = types {
            state.registry.set_custom(name, types);
        }
        self.notify(state);
        Ok(Reply::json(200, render(kind, &stored, output, true)))
    }

    fn after_delete(&self, state: &mut State, kind: &ResourceType, name: &str) {
        if kind.behaviour == Behaviour::CustomResourceDefinition {
            let resource = state
                .registry
                .all()
                .find(|t| format!("{}.{}", t.plural, t.group) == name)
                .map(|t| t.group_resource());
            if let Some(resource) = resource {
                state.delete_all(&resource);
            }
            state.registry.remove_custom(name);
        }
    }

    fn delete(
        &self,
        target: &Target,
        name: &str,
        request: &Request,
        output: Output,
    ) -> ApiResult<Reply> {
        let kind = &target.kind;
        let options = DeleteOptions::parse(request)?;
        let resource = kind.storage_resource();
        let namespace = target.namespace.clone().unwrap_or_default();
        let mut state = self.lock();
        let current = state
            .get(&resource, &namespace, name)
            .ok_or_else(|| Status::not_found(&kind.group_resource(), name))?;
        if let Some(uid) = &options.uid
            && uid != meta_str(&current, "uid")
        {
            return Err(Status::conflict(
                &kind.group_resource(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current, "uid")
                ),
            ));
        }
        if let Some(rv) = &options.resource_version
            && rv != meta_str(&current, "resourceVersion")
        {
            return Err(Status::conflict(
                &kind.group_resource(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&current, "resourceVersion")
                ),
            ));
        }
        if kind.behaviour == Behaviour::Namespace
            && matches!(name, "default" | "kube-system" | "kube-public")
        {
            return Err(Status::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if options.dry_run {
            return Ok(Reply::json(200, render(kind, &current, output, true)));
        }
        // Pods bound to a node are deleted gracefully: the kubelet (the tests) finishes with
        // gracePeriodSeconds=0. Unbound or finished pods, and other kinds, go at once.
        let phase = current
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        let graceful = kind.behaviour == Behaviour::Pod
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && !matches!(phase, "Succeeded" | "Failed");
        let grace = if graceful {
            options
                .grace_period
                .or_else(|| {
                    current
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0)
        } else {
            0
        };
        let when = now();
        let deleting = current["metadata"]["deletionTimestamp"].is_string();
        if grace > 0 || finalizers(&current) > 0 {
            let existing_grace = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if deleting && existing_grace.is_some_and(|g| g <= grace) {
                return Ok(Reply::json(200, render(kind, &current, output, true)));
            }
            let mut object = (*current).clone();
            let m = meta(&mut object);
            let deadline = when
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or(when);
            m.insert("deletionTimestamp".into(), deadline.to_string().into());
            m.insert("deletionGracePeriodSeconds".into(), grace.into());
            if kind.has_generation && !deleting {
                let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
                m.insert("generation".into(), generation.into());
            }
            let stored = state.update(&resource, stored(kind, &object));
            self.notify(&state);
            return Ok(Reply::json(200, render(kind, &stored, output, true)));
        }
        if kind.behaviour == Behaviour::Namespace {
            return self.delete_namespace(&mut state, kind, name, output);
        }
        let deleted = state
            .delete(&resource, &namespace, name)
            .ok_or_else(|| Status::not_found(&kind.group_resource(), name))?;
        self.after_delete(&mut state, kind, name);
        self.notify(&state);
        if kind.returns_deleted_object {
            Ok(Reply::json(200, render(kind, &deleted, output, true)))
        } else {
            Ok(Reply::json(
                200,
                success_deleted(&kind.group_resource(), name, meta_str(&deleted, "uid")),
            ))
        }
    }

    /// A namespace goes Terminating, its content is deleted, then it goes (the namespace
    /// controller's work, done at once).
    fn delete_namespace(
        &self,
        state: &mut State,
        kind: &ResourceType,
        name: &str,
        output: Output,
    ) -> ApiResult<Reply> {
        let resource = kind.storage_resource();
        let current = state
            .get(&resource, "", name)
            .ok_or_else(|| Status::not_found(&kind.group_resource(), name))?;
        let mut terminating = (*current).clone();
        meta(&mut terminating).insert("deletionTimestamp".into(), now().to_string().into());
        meta(&mut terminating).insert("deletionGracePeriodSeconds".into(), 0.into());
        child(&mut terminating, "status").insert("phase".into(), "Terminating".into());
        let terminating = state.update(&resource, terminating);
        for contained in state.resources_in_namespace(name) {
            let names: Vec<String> = state
                .list(&contained, Some(name))
                .iter()
                .map(|o| meta_str(o, "name").to_string())
                .collect();
            for object in names {
                state.delete(&contained, name, &object);
            }
        }
        state.delete(&resource, "", name);
        self.notify(state);
        Ok(Reply::json(200, render(kind, &terminating, output, true)))
    }

    fn delete_collection(&self, target: &Target, request: &Request) -> ApiResult<Reply> {
        let kind = &target.kind;
        if target.part != Part::Main {
            return Err(Status::method_not_allowed());
        }
        let labels = LabelSelector::parse(request.query.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(request.query.get("fieldSelector").unwrap_or(""), kind)?;
        let names: Vec<String> = {
            let state = self.lock();
            state
                .list(&kind.storage_resource(), target.namespace.as_deref())
                .iter()
                .filter(|o| {
                    labels.matches(o["metadata"]["labels"].as_object()) && fields.matches(kind, o)
                })
                .map(|o| meta_str(o, "name").to_string())
                .collect()
        };
        let mut items = Vec::new();
        for name in names {
            let reply = self.delete(target, &name, request, Output::Full)?;
            if let Body::Json(object) = reply.body
                && object["kind"] != "Status"
            {
                items.push(object);
            }
        }
        Ok(Reply::json(
            200,
            json!({"kind": kind.list_kind, "apiVersion": kind.api_version(), "metadata": {}, "items": items}),
        ))
    }
}

/// The attributes RBAC decides on: the verb from the method (list/watch for collections),
/// and for a list or watch pinned by `fieldSelector=metadata.name=X`, that name (so
/// `resourceNames` can allow it, as in the real request info).
fn request_attributes(request: &Request, target: &Target) -> Attributes {
    let verb = match (request.method, &target.name) {
        (Method::Get, None) if request.query.flag("watch") => "watch",
        (Method::Get, None) => "list",
        (Method::Get, Some(_)) => "get",
        (Method::Post, _) => "create",
        (Method::Put, _) => "update",
        (Method::Patch, _) => "patch",
        (Method::Delete, None) => "deletecollection",
        (Method::Delete, Some(_)) => "delete",
        (Method::Other, _) => "unknown",
    };
    let name = target.name.clone().unwrap_or_else(|| {
        let pinned = request.query.get("fieldSelector").and_then(|f| {
            let (field, value) = f.split_once('=')?;
            let value = value.strip_prefix('=').unwrap_or(value);
            (field.trim() == "metadata.name" && !f.contains(',') && !field.ends_with('!'))
                .then(|| value.trim().to_string())
        });
        if matches!(verb, "list" | "watch") {
            pinned.unwrap_or_default()
        } else {
            String::new()
        }
    });
    Attributes::Resource {
        verb: verb.into(),
        group: target.kind.group.clone(),
        resource: target.kind.plural.clone(),
        subresource: match target.part {
            Part::Main => String::new(),
            Part::Status => "status".into(),
            Part::Token => "token".into(),
        },
        namespace: target.namespace.clone().unwrap_or_default(),
        name,
    }
}

fn impersonation(resource: &str, namespace: &str, name: &str) -> Attributes {
    Attributes::Resource {
        verb: "impersonate".into(),
        group: String::new(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The `default` ServiceAccount the ServiceAccount controller gives every namespace.
fn default_service_account(state: &mut State, namespace: &str) {
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "default", "namespace": namespace,
        "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now().to_string()}});
    state.create(&GroupResource::new("", "serviceaccounts"), account);
}

/// generateName's five characters (the real alphabet leaves out vowels and look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}
