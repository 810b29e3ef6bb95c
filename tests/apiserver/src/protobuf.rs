//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`): client-go's
//! typed clients send built-in objects that way (`kubectl create namespace|secret|configmap
//! |serviceaccount|role...`, helm's release Secrets), so the server decodes them to JSON.
//! Only the kinds below are known, from their generated.proto field numbers; another kind is a
//! 415. Responses stay JSON, which every such client also accepts.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::status::Status;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\x00";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Time,
    StrMap,
    BytesMap,
    Msg(&'static [Field]),
}

#[derive(Clone, Copy)]
struct Field {
    number: u64,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

const fn f(number: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: false,
    }
}

const fn list(number: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[Field] = &[
    f(5, "apiVersion", Kind::Str),
    f(1, "kind", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "uid", Kind::Str),
    f(6, "controller", Kind::Bool),
    f(7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Kind::Str),
    f(2, "generateName", Kind::Str),
    f(3, "namespace", Kind::Str),
    f(4, "selfLink", Kind::Str),
    f(5, "uid", Kind::Str),
    f(6, "resourceVersion", Kind::Str),
    f(7, "generation", Kind::Int),
    f(8, "creationTimestamp", Kind::Time),
    f(9, "deletionTimestamp", Kind::Time),
    f(10, "deletionGracePeriodSeconds", Kind::Int),
    f(11, "labels", Kind::StrMap),
    f(12, "annotations", Kind::StrMap),
    list(13, "ownerReferences", Kind::Msg(OWNER_REFERENCE)),
    list(14, "finalizers", Kind::Str),
];

const METADATA: Field = f(1, "metadata", Kind::Msg(OBJECT_META));

const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Kind::Str),
    f(2, "namespace", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "uid", Kind::Str),
    f(5, "apiVersion", Kind::Str),
    f(6, "resourceVersion", Kind::Str),
    f(7, "fieldPath", Kind::Str),
];

const NAMESPACE: &[Field] = &[
    METADATA,
    f(2, "spec", Kind::Msg(&[list(1, "finalizers", Kind::Str)])),
    f(3, "status", Kind::Msg(&[f(1, "phase", Kind::Str)])),
];

const SECRET: &[Field] = &[
    METADATA,
    f(2, "data", Kind::BytesMap),
    f(3, "type", Kind::Str),
    f(4, "stringData", Kind::StrMap),
    f(5, "immutable", Kind::Bool),
];

const CONFIG_MAP: &[Field] = &[
    METADATA,
    f(2, "data", Kind::StrMap),
    f(3, "binaryData", Kind::BytesMap),
    f(4, "immutable", Kind::Bool),
];

const SERVICE_ACCOUNT: &[Field] = &[
    METADATA,
    list(2, "secrets", Kind::Msg(OBJECT_REFERENCE)),
    list(3, "imagePullSecrets", Kind::Msg(&[f(1, "name", Kind::Str)])),
    f(4, "automountServiceAccountToken", Kind::Bool),
];

const POLICY_RULE: &[Field] = &[
    list(1, "verbs", Kind::Str),
    list(2, "apiGroups", Kind::Str),
    list(3, "resources", Kind::Str),
    list(4, "resourceNames", Kind::Str),
    list(5, "nonResourceURLs", Kind::Str),
];

const ROLE: &[Field] = &[METADATA, list(2, "rules", Kind::Msg(POLICY_RULE))];

const BINDING: &[Field] = &[
    METADATA,
    list(
        2,
        "subjects",
        Kind::Msg(&[
            f(1, "kind", Kind::Str),
            f(2, "apiGroup", Kind::Str),
            f(3, "name", Kind::Str),
            f(4, "namespace", Kind::Str),
        ]),
    ),
    f(
        3,
        "roleRef",
        Kind::Msg(&[
            f(1, "apiGroup", Kind::Str),
            f(2, "kind", Kind::Str),
            f(3, "name", Kind::Str),
        ]),
    ),
];

const DELETE_OPTIONS: &[Field] = &[
    f(1, "gracePeriodSeconds", Kind::Int),
    f(
        2,
        "preconditions",
        Kind::Msg(&[f(1, "uid", Kind::Str), f(2, "resourceVersion", Kind::Str)]),
    ),
    f(3, "orphanDependents", Kind::Bool),
    f(4, "propagationPolicy", Kind::Str),
    list(5, "dryRun", Kind::Str),
];

const TOKEN_REQUEST: &[Field] = &[
    METADATA,
    f(
        2,
        "spec",
        Kind::Msg(&[
            list(1, "audiences", Kind::Str),
            f(4, "expirationSeconds", Kind::Int),
            f(
                3,
                "boundObjectRef",
                Kind::Msg(&[
                    f(1, "kind", Kind::Str),
                    f(2, "apiVersion", Kind::Str),
                    f(3, "name", Kind::Str),
                    f(4, "uid", Kind::Str),
                ]),
            ),
        ]),
    ),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    METADATA,
    f(
        2,
        "spec",
        Kind::Msg(&[
            f(
                1,
                "resourceAttributes",
                Kind::Msg(&[
                    f(1, "namespace", Kind::Str),
                    f(2, "verb", Kind::Str),
                    f(3, "group", Kind::Str),
                    f(4, "version", Kind::Str),
                    f(5, "resource", Kind::Str),
                    f(6, "subresource", Kind::Str),
                    f(7, "name", Kind::Str),
                ]),
            ),
            f(
                2,
                "nonResourceAttributes",
                Kind::Msg(&[f(1, "path", Kind::Str), f(2, "verb", Kind::Str)]),
            ),
        ]),
    ),
];

fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => BINDING,
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => DELETE_OPTIONS,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &[METADATA],
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        _ => return None,
    })
}

fn malformed() -> Status {
    Status::bad_request("unable to decode the protobuf body")
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Status> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or_else(malformed)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Status> {
        if n > self.bytes.len() {
            return Err(malformed());
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    /// The next field: its number, wire type and payload (varint value or bytes).
    fn field(&mut self) -> Result<(u64, Payload<'a>), Status> {
        let key = self.varint()?;
        let payload = match key & 7 {
            0 => Payload::Varint(self.varint()?),
            1 => Payload::Bytes(self.take(8)?),
            2 => {
                let length = usize::try_from(self.varint()?).map_err(|_| malformed())?;
                Payload::Bytes(self.take(length)?)
            }
            5 => Payload::Bytes(self.take(4)?),
            _ => return Err(malformed()),
        };
        Ok((key >> 3, payload))
    }
}

enum Payload<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn text(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

fn map_entry(bytes: &[u8], value_as_bytes: bool) -> Result<(String, Value), Status> {
    let mut reader = Reader { bytes };
    let (mut key, mut value) = (String::new(), Value::String(String::new()));
    while !reader.bytes.is_empty() {
        match reader.field()? {
            (1, Payload::Bytes(b)) => key = text(b)?,
            (2, Payload::Bytes(b)) if value_as_bytes => {
                value = base64::engine::general_purpose::STANDARD.encode(b).into()
            }
            (2, Payload::Bytes(b)) => value = text(b)?.into(),
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(bytes: &[u8]) -> Result<Value, Status> {
    let mut reader = Reader { bytes };
    let mut seconds = 0i64;
    while !reader.bytes.is_empty() {
        if let (1, Payload::Varint(v)) = reader.field()? {
            seconds = v as i64;
        }
    }
    let timestamp = jiff::Timestamp::from_second(seconds).map_err(|_| malformed())?;
    Ok(timestamp.to_string().into())
}

fn message(bytes: &[u8], fields: &[Field], depth: usize) -> Result<Map<String, Value>, Status> {
    if depth > 32 {
        return Err(malformed());
    }
    let mut object = Map::new();
    let mut reader = Reader { bytes };
    while !reader.bytes.is_empty() {
        let (number, payload) = reader.field()?;
        let Some(field) = fields.iter().find(|f| f.number == number) else {
            continue;
        };
        // Go writes every non-pointer field, zero values included; the JSON encoding omits
        // them (omitempty), so they are dropped here.
        let value = match (field.kind, payload) {
            (Kind::Str, Payload::Bytes([])) | (Kind::Int, Payload::Varint(0))
                if !field.repeated && field.name != "gracePeriodSeconds" =>
            {
                continue;
            }
            (Kind::Time, Payload::Bytes([])) => continue,
            (Kind::Str, Payload::Bytes(b)) => text(b)?.into(),
            (Kind::Int, Payload::Varint(v)) => (v as i64).into(),
            (Kind::Bool, Payload::Varint(v)) => (v != 0).into(),
            (Kind::Time, Payload::Bytes(b)) => time(b)?,
            (Kind::Msg(inner), Payload::Bytes(b)) => Value::Object(message(b, inner, depth + 1)?),
            (Kind::StrMap | Kind::BytesMap, Payload::Bytes(b)) => {
                let (key, value) = map_entry(b, matches!(field.kind, Kind::BytesMap))?;
                let entry = object
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(map) = entry.as_object_mut() {
                    map.insert(key, value);
                }
                continue;
            }
            _ => return Err(malformed()),
        };
        if field.repeated {
            let entry = object
                .entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(items) = entry.as_array_mut() {
                items.push(value);
            }
        } else {
            object.insert(field.name.to_string(), value);
        }
    }
    Ok(object)
}

/// Decodes a protobuf request body (the `k8s\0` envelope around a runtime.Unknown) to JSON.
pub fn decode(body: &[u8]) -> Result<Value, Status> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Status::bad_request("the protobuf body lacks the k8s envelope"))?;
    let mut reader = Reader { bytes: unknown };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !reader.bytes.is_empty() {
        match reader.field()? {
            (1, Payload::Bytes(type_meta)) => {
                // runtime.TypeMeta: apiVersion = 1, kind = 2 (unlike meta/v1's TypeMeta).
                let meta = message(
                    type_meta,
                    &[f(1, "apiVersion", Kind::Str), f(2, "kind", Kind::Str)],
                    0,
                )?;
                kind = meta
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                api_version = meta
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
            }
            (2, Payload::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let fields = schema(&api_version, &kind).ok_or_else(|| Status {
        code: 415,
        reason: "UnsupportedMediaType",
        message: format!(
            "this test API server cannot decode {kind} ({api_version}) from protobuf; send JSON"
        ),
        details: None,
    })?;
    let mut object = message(raw, fields, 0)?;
    object.insert("apiVersion".into(), api_version.into());
    object.insert("kind".into(), kind.into());
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(number: u64, wire: u64) -> u8 {
        (number << 3 | wire) as u8
    }

    fn bytes_field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![key(number, 2), payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_secret_as_kubectl_sends_it() {
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, b"Secret")].concat();
        let labels = [bytes_field(1, b"app"), bytes_field(2, b"redis")].concat();
        let meta = [
            bytes_field(1, b"auth"),
            bytes_field(11, &labels),
            vec![key(7, 0), 3],
        ]
        .concat();
        let data = [bytes_field(1, b"password"), bytes_field(2, b"x")].concat();
        let secret = [
            bytes_field(1, &meta),
            bytes_field(2, &data),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let body = [
            MAGIC.to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, &secret),
        ]
        .concat();
        assert_eq!(
            decode(&body).expect("decodes"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"password": "eA=="},
                   "metadata": {"name": "auth", "labels": {"app": "redis"}, "generation": 3}})
        );
    }

    #[test]
    fn truncated_or_unknown_bodies_are_errors_not_panics() {
        assert_eq!(decode(b"nope").expect_err("no envelope").code, 400);
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), bytes_field(1, &type_meta)].concat();
        assert_eq!(decode(&body).expect_err("unknown kind").code, 415);
        for cut in 0..body.len() {
            let _ = decode(&body[..cut]);
        }
        let _ = decode(
            &[
                MAGIC,
                &[
                    0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ][..],
            ]
            .concat(),
        );
    }
}
