//! Errors as the API server returns them: `Status` objects with the real reasons, codes and
//! messages (k8s.io/apimachinery/pkg/api/errors), and field errors whose text follows
//! k8s.io/apimachinery/pkg/util/validation/field.

use serde_json::{Map, Value, json};

use crate::resources::GroupResource;

/// A failed request: becomes a `Status` body with `code` as the HTTP status.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details`, when the real server sends them (`name`, `group`, `kind`, `causes`).
    pub details: Option<Value>,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for Status {}

pub type ApiResult<T> = Result<T, Status>;

fn details(name: &str, resource: &GroupResource) -> Value {
    let mut details = Map::new();
    if !name.is_empty() {
        details.insert("name".into(), name.into());
    }
    if !resource.group.is_empty() {
        details.insert("group".into(), resource.group.clone().into());
    }
    details.insert("kind".into(), resource.resource.clone().into());
    Value::Object(details)
}

impl Status {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(resource: &GroupResource, name: &str) -> Self {
        Status {
            details: Some(details(name, resource)),
            ..Status::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
        }
    }

    pub fn already_exists(resource: &GroupResource, name: &str) -> Self {
        Status {
            details: Some(details(name, resource)),
            ..Status::new(
                409,
                "AlreadyExists",
                format!("{resource} \"{name}\" already exists"),
            )
        }
    }

    /// A write carrying a resourceVersion that is no longer the object's.
    pub fn conflict_modified(resource: &GroupResource, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict(resource: &GroupResource, name: &str, why: &str) -> Self {
        Status {
            details: Some(details(name, resource)),
            ..Status::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
            )
        }
    }

    /// `kind` is the qualified kind (`RedisPair.redispair.io`, `Pod`).
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.kind.code(), "message": e.body(), "field": e.field}))
            .collect();
        let mut details = Map::new();
        if !name.is_empty() {
            details.insert("name".into(), name.into());
        }
        if !group.is_empty() {
            details.insert("group".into(), group.into());
        }
        details.insert("kind".into(), kind.split('.').next().unwrap_or(kind).into());
        details.insert("causes".into(), Value::Array(causes));
        let message = match aggregate(errors) {
            Some(all) => format!("{kind} {} is invalid: {all}", go_quote(name)),
            None => format!("{kind} {} is invalid", go_quote(name)),
        };
        Status {
            details: Some(Value::Object(details)),
            ..Status::new(422, "Invalid", message)
        }
    }

    /// What `NewGenericServerResponse(422, ...)` gives: a JSON patch that does not apply
    /// (a failed `test` included) gets exactly this from the real server.
    pub fn unprocessable() -> Self {
        Status {
            details: Some(json!({})),
            ..Status::new(
                422,
                "Invalid",
                "the server rejected our request due to an error in our request",
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Status::new(400, "BadRequest", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Status::new(410, "Expired", message)
    }

    pub fn method_not_allowed() -> Self {
        Status::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// A path that names no resource (`the server could not find the requested resource`).
    pub fn no_route() -> Self {
        Status {
            details: Some(json!({})),
            ..Status::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type})"
            ),
        )
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Status::new(406, "NotAcceptable", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Status::new(403, "Forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Status::new(500, "InternalError", message)
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Some(object)) = (&self.details, status.as_object_mut()) {
            object.insert("details".into(), details.clone());
        }
        status
    }
}

/// `Status` of a successful delete that removed the object at once, for kinds whose registry
/// does not return the deleted object.
pub fn success_deleted(resource: &GroupResource, name: &str, uid: &str) -> Value {
    let mut details = details(name, resource);
    if let Some(object) = details.as_object_mut() {
        object.insert("uid".into(), uid.into());
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// The field error types of k8s.io/apimachinery/pkg/util/validation/field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    TypeInvalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    Duplicate,
}

impl FieldErrorKind {
    fn code(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::TypeInvalid => "FieldValueTypeInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
        }
    }

    fn text(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid | FieldErrorKind::TypeInvalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::TooMany => "Too many",
            FieldErrorKind::Duplicate => "Duplicate value",
        }
    }
}

/// One field error: `spec.port: Invalid value: 70000: spec.port in body should be ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    /// The offending value; `None` where the real server prints none.
    pub value: Option<Value>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: FieldErrorKind::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        FieldError {
            kind: FieldErrorKind::Invalid,
            field: field.into(),
            value: Some(value),
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: Value, allowed: &[String]) -> Self {
        let quoted: Vec<String> = allowed.iter().map(|v| go_quote(v)).collect();
        let detail = if quoted.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", quoted.join(", "))
        };
        FieldError {
            kind: FieldErrorKind::NotSupported,
            field: field.into(),
            value: Some(value),
            detail,
        }
    }

    /// `ErrorBody()`: the message without the field name.
    pub fn body(&self) -> String {
        let mut body = match (self.kind, &self.value) {
            (FieldErrorKind::Required | FieldErrorKind::Forbidden | FieldErrorKind::TooLong, _)
            | (_, None) => self.kind.text().to_string(),
            (_, Some(value)) => format!("{}: {}", self.kind.text(), go_value(value)),
        };
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// `ToAggregate().Error()`: one message alone, several as `[a, b]` without duplicates.
fn aggregate(errors: &[FieldError]) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for message in errors.iter().map(ToString::to_string) {
        if !seen.contains(&message) {
            seen.push(message);
        }
    }
    match seen.len() {
        0 => None,
        1 => seen.pop(),
        _ => Some(format!("[{}]", seen.join(", "))),
    }
}

/// A value as Go's `%v`/`%q` prints it in field errors: strings quoted, numbers and booleans
/// bare, anything else as JSON.
pub fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => go_quote(s),
        other => other.to_string(),
    }
}

/// Go's `%q` of a string (close enough: JSON string escaping).
pub fn go_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_matches_the_real_format() {
        let error = FieldError::invalid(
            "spec.port",
            json!(70000),
            "spec.port in body should be less than or equal to 65535",
        );
        let status = Status::invalid("RedisPair.redispair.io", "redispair.io", "x", &[error]);
        assert_eq!(
            status.message,
            "RedisPair.redispair.io \"x\" is invalid: spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535"
        );
        assert_eq!(status.to_json()["details"]["kind"], "RedisPair");
        assert_eq!(
            status.to_json()["details"]["causes"][0]["reason"],
            "FieldValueInvalid"
        );
    }

    #[test]
    fn several_errors_are_bracketed_and_deduplicated() {
        let errors = [
            FieldError::required("spec.a", ""),
            FieldError::required("spec.a", ""),
            FieldError::not_supported("spec.mode", json!("x"), &["a".into(), "b".into()]),
        ];
        let status = Status::invalid("Pod", "", "p", &errors);
        assert_eq!(
            status.message,
            "Pod \"p\" is invalid: [spec.a: Required value, spec.mode: Unsupported value: \"x\": supported values: \"a\", \"b\"]"
        );
    }

    #[test]
    fn conflict_and_not_found_texts() {
        let pods = GroupResource::new("", "pods");
        assert_eq!(
            Status::not_found(&pods, "a").message,
            "pods \"a\" not found"
        );
        let pairs = GroupResource::new("redispair.io", "redispairs");
        assert_eq!(
            Status::conflict_modified(&pairs, "a").message,
            "Operation cannot be fulfilled on redispairs.redispair.io \"a\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }
}
