//! A CRD version's structural schema, handled as the apiextensions server does: unknown fields
//! pruned (or reported, for `fieldValidation=Strict`), defaults applied, the object validated
//! against the OpenAPI v3 rules and then against its CEL `x-kubernetes-validations`, with the
//! messages of k8s.io/apiextensions-apiserver (kube-openapi's "in body" texts).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::status::{FieldError, FieldErrorKind};

/// One `x-kubernetes-validations` rule, compiled.
pub struct Rule {
    pub rule: String,
    program: cel::Program,
    message: String,
    message_expression: Option<cel::Program>,
    reason: String,
    field_path: String,
    /// A transition rule (mentions `oldSelf`): checked only on updates where an old value exists.
    transition: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

/// A node of a structural schema.
#[derive(Debug, Default)]
pub struct Structural {
    type_: String,
    properties: BTreeMap<String, Structural>,
    additional_properties: Option<Box<Structural>>,
    items: Option<Box<Structural>>,
    required: Vec<String>,
    enum_: Vec<Value>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<(String, regex::Regex)>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    nullable: bool,
    int_or_string: bool,
    preserve_unknown: bool,
    embedded_resource: bool,
    default: Option<Value>,
    rules: Vec<Arc<Rule>>,
}

fn u64_at(schema: &Value, key: &str) -> Option<u64> {
    schema.get(key).and_then(Value::as_u64)
}

impl Structural {
    /// Reads an openAPIV3Schema; the error is why the schema is not usable.
    pub fn from_openapi(schema: &Value) -> Result<Self, String> {
        let object = schema.as_object().ok_or("must be an object")?;
        let mut node = Structural {
            type_: object
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            required: object
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            enum_: object
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            minimum: object.get("minimum").and_then(Value::as_f64),
            maximum: object.get("maximum").and_then(Value::as_f64),
            exclusive_minimum: object
                .get("exclusiveMinimum")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            exclusive_maximum: object
                .get("exclusiveMaximum")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            min_length: u64_at(schema, "minLength"),
            max_length: u64_at(schema, "maxLength"),
            min_items: u64_at(schema, "minItems"),
            max_items: u64_at(schema, "maxItems"),
            min_properties: u64_at(schema, "minProperties"),
            max_properties: u64_at(schema, "maxProperties"),
            nullable: object
                .get("nullable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            int_or_string: object
                .get("x-kubernetes-int-or-string")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            preserve_unknown: object
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            embedded_resource: object
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            default: object.get("default").cloned(),
            ..Structural::default()
        };
        if let Some(pattern) = object.get("pattern").and_then(Value::as_str) {
            let compiled =
                regex::Regex::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
            node.pattern = Some((pattern.to_string(), compiled));
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                node.properties
                    .insert(name.clone(), Structural::from_openapi(property)?);
            }
        }
        if let Some(additional) = object.get("additionalProperties").filter(|a| a.is_object()) {
            node.additional_properties = Some(Box::new(Structural::from_openapi(additional)?));
        }
        if let Some(items) = object.get("items") {
            node.items = Some(Box::new(Structural::from_openapi(items)?));
        }
        for rule in object
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = rule.get("rule").and_then(Value::as_str).unwrap_or("");
            let program =
                cel::Program::compile(text).map_err(|e| format!("compilation failed: {e}"))?;
            let message_expression = match rule.get("messageExpression").and_then(Value::as_str) {
                Some(expression) => Some(
                    cel::Program::compile(expression)
                        .map_err(|e| format!("messageExpression compilation failed: {e}"))?,
                ),
                None => None,
            };
            node.rules.push(Arc::new(Rule {
                rule: text.to_string(),
                transition: program.references().has_variable("oldSelf"),
                program,
                message: rule
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                message_expression,
                reason: rule
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                field_path: rule
                    .get("fieldPath")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            }));
        }
        Ok(node)
    }

    fn child(&self, key: &str) -> Option<&Structural> {
        self.properties
            .get(key)
            .or(self.additional_properties.as_deref())
    }

    /// Removes the fields the schema does not declare and returns their paths
    /// (`spec.foo`, `spec.items[0].bar`), as the strict decoder reports them.
    pub fn prune(&self, object: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        if let Value::Object(map) = object {
            // apiVersion, kind and metadata are never pruned at the root.
            for (key, value) in map.iter_mut() {
                if let Some(schema) = self.properties.get(key)
                    && !matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                {
                    schema.prune_at(value, key, &mut unknown);
                }
            }
            if !self.preserve_unknown {
                map.retain(|key, _| {
                    let keep = self.properties.contains_key(key)
                        || matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                    if !keep {
                        unknown.push(key.clone());
                    }
                    keep
                });
            }
        }
        unknown
    }

    fn prune_at(&self, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if self.properties.is_empty()
                    && self.additional_properties.is_none()
                    && (self.preserve_unknown || self.embedded_resource)
                {
                    return;
                }
                for (key, child) in map.iter_mut() {
                    if let Some(schema) = self.child(key) {
                        schema.prune_at(child, &format!("{path}.{key}"), unknown);
                    }
                }
                if !self.preserve_unknown && self.additional_properties.is_none() {
                    map.retain(|key, _| {
                        let keep = self.properties.contains_key(key)
                            || (self.embedded_resource
                                && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"));
                        if !keep {
                            unknown.push(format!("{path}.{key}"));
                        }
                        keep
                    });
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for (i, item) in items.iter_mut().enumerate() {
                        schema.prune_at(item, &format!("{path}[{i}]"), unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Applies structural defaults: an absent field with a default gets it; a null in a
    /// non-nullable field with a default is replaced, one without a default is dropped.
    pub fn apply_defaults(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, schema) in &self.properties {
                    match map.get(key) {
                        None => {
                            if let Some(default) = &schema.default {
                                map.insert(key.clone(), default.clone());
                            }
                        }
                        Some(Value::Null) if !schema.nullable => match &schema.default {
                            Some(default) => {
                                map.insert(key.clone(), default.clone());
                            }
                            None => {
                                map.remove(key);
                            }
                        },
                        Some(_) => {}
                    }
                }
                for (key, child) in map.iter_mut() {
                    if let Some(schema) = self.child(key) {
                        schema.apply_defaults(child);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for item in items {
                        schema.apply_defaults(item);
                    }
                }
            }
            _ => {}
        }
    }

    /// Validates an object against the OpenAPI rules, then (if no type error blocks them)
    /// its CEL rules; `old` is the stored object on an update.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Value::Object(map) = object {
            for name in &self.required {
                if !map.contains_key(name) {
                    errors.push(FieldError::required(name.clone(), ""));
                }
            }
            for (key, value) in map {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(schema) = self.properties.get(key) {
                    schema.validate_openapi(value, key, &mut errors);
                }
            }
        }
        if errors.iter().any(|e| e.kind == FieldErrorKind::TypeInvalid) {
            errors.push(FieldError::invalid(
                "<nil>",
                Value::Null,
                "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
            ));
            return errors;
        }
        self.validate_rules(object, old, "", &mut errors);
        errors
    }

    fn type_matches(&self, value: &Value) -> Option<&'static str> {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(n)
                if n.as_f64().is_some_and(|f| f.fract() == 0.0) && self.type_ == "integer" =>
            {
                "integer"
            }
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = if self.int_or_string {
            matches!(actual, "integer" | "string")
        } else {
            self.type_.is_empty()
                || self.type_ == actual
                || (self.type_ == "number" && actual == "integer")
        };
        if ok { None } else { Some(actual) }
    }

    fn validate_openapi(&self, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        if value.is_null() {
            if !self.nullable && !self.type_.is_empty() {
                errors.push(FieldError {
                    kind: FieldErrorKind::TypeInvalid,
                    field: path.to_string(),
                    value: Some(Value::String("null".into())),
                    detail: format!("{path} in body must be of type {}: \"null\"", self.type_),
                });
            }
            return;
        }
        if let Some(actual) = self.type_matches(value) {
            let expected = if self.int_or_string {
                "integer,string".to_string()
            } else {
                self.type_.clone()
            };
            errors.push(FieldError {
                kind: FieldErrorKind::TypeInvalid,
                field: path.to_string(),
                value: Some(Value::String(actual.into())),
                detail: format!("{path} in body must be of type {expected}: \"{actual}\""),
            });
            return;
        }
        if !self.enum_.is_empty() && !self.enum_.contains(value) {
            let allowed: Vec<String> = self
                .enum_
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            errors.push(FieldError::not_supported(path, value.clone(), &allowed));
        }
        match value {
            Value::String(s) => {
                let length = s.chars().count() as u64;
                if let Some(max) = self.max_length
                    && length > max
                {
                    errors.push(FieldError {
                        kind: FieldErrorKind::TooLong,
                        field: path.to_string(),
                        value: None,
                        detail: format!(
                            "may not be more than {max} {}",
                            if max == 1 { "byte" } else { "bytes" }
                        ),
                    });
                }
                if let Some(min) = self.min_length
                    && length < min
                {
                    errors.push(FieldError::invalid(
                        path,
                        value.clone(),
                        format!("{path} in body should be at least {min} chars long"),
                    ));
                }
                if let Some((pattern, regex)) = &self.pattern
                    && !regex.is_match(s)
                {
                    errors.push(FieldError::invalid(
                        path,
                        value.clone(),
                        format!("{path} in body should match '{pattern}'"),
                    ));
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                let shown = |bound: f64| {
                    if bound.fract() == 0.0 && bound.abs() < 1e15 {
                        format!("{}", bound as i64)
                    } else {
                        bound.to_string()
                    }
                };
                if let Some(max) = self.maximum {
                    if self.exclusive_maximum && x >= max {
                        errors.push(FieldError::invalid(
                            path,
                            value.clone(),
                            format!("{path} in body should be less than {}", shown(max)),
                        ));
                    } else if x > max {
                        errors.push(FieldError::invalid(
                            path,
                            value.clone(),
                            format!(
                                "{path} in body should be less than or equal to {}",
                                shown(max)
                            ),
                        ));
                    }
                }
                if let Some(min) = self.minimum {
                    if self.exclusive_minimum && x <= min {
                        errors.push(FieldError::invalid(
                            path,
                            value.clone(),
                            format!("{path} in body should be greater than {}", shown(min)),
                        ));
                    } else if x < min {
                        errors.push(FieldError::invalid(
                            path,
                            value.clone(),
                            format!(
                                "{path} in body should be greater than or equal to {}",
                                shown(min)
                            ),
                        ));
                    }
                }
            }
            Value::Array(items) => {
                let count = items.len() as u64;
                if let Some(max) = self.max_items
                    && count > max
                {
                    errors.push(FieldError {
                        kind: FieldErrorKind::TooMany,
                        field: path.to_string(),
                        value: Some(Value::from(count)),
                        detail: format!(
                            "must have at most {max} {}",
                            if max == 1 { "item" } else { "items" }
                        ),
                    });
                }
                if let Some(min) = self.min_items
                    && count < min
                {
                    errors.push(FieldError::invalid(
                        path,
                        Value::from(count),
                        format!("{path} in body should have at least {min} items"),
                    ));
                }
                if let Some(schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        schema.validate_openapi(item, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            Value::Object(map) => {
                let count = map.len() as u64;
                if let Some(max) = self.max_properties
                    && count > max
                {
                    errors.push(FieldError {
                        kind: FieldErrorKind::TooMany,
                        field: path.to_string(),
                        value: Some(Value::from(count)),
                        detail: format!(
                            "must have at most {max} {}",
                            if max == 1 { "item" } else { "items" }
                        ),
                    });
                }
                if let Some(min) = self.min_properties
                    && count < min
                {
                    errors.push(FieldError::invalid(
                        path,
                        Value::from(count),
                        format!("{path} in body should have at least {min} properties"),
                    ));
                }
                for name in &self.required {
                    if !map.contains_key(name) {
                        errors.push(FieldError::required(format!("{path}.{name}"), ""));
                    }
                }
                for (key, child) in map {
                    if let Some(schema) = self.child(key) {
                        schema.validate_openapi(child, &format!("{path}.{key}"), errors);
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn schema_type(&self) -> &str {
        if self.int_or_string {
            "integer-or-string"
        } else if self.type_.is_empty() {
            "object"
        } else {
            &self.type_
        }
    }

    fn validate_rules(
        &self,
        value: &Value,
        old: Option<&Value>,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let field = if path.is_empty() {
            "<nil>".to_string()
        } else {
            path.to_string()
        };
        for rule in &self.rules {
            if rule.transition && old.is_none() {
                continue;
            }
            let outcome = evaluate(&rule.program, value, old);
            let failed_message = match outcome {
                Ok(cel::Value::Bool(true)) => continue,
                Ok(cel::Value::Bool(false)) => rule_message(rule, value, old),
                Ok(other) => format!("rule did not evaluate to a boolean, got {other:?}"),
                Err(error) => format!("{}: {error}", rule.rule),
            };
            let field = if rule.field_path.is_empty() {
                field.clone()
            } else if path.is_empty() {
                rule.field_path.trim_start_matches('.').to_string()
            } else {
                format!("{path}{}", rule.field_path)
            };
            errors.push(match rule.reason.as_str() {
                "FieldValueForbidden" => FieldError::forbidden(field, failed_message),
                "FieldValueRequired" => FieldError::required(field, failed_message),
                "FieldValueDuplicate" => FieldError {
                    kind: FieldErrorKind::Duplicate,
                    field,
                    value: Some(Value::String(self.schema_type().into())),
                    detail: failed_message,
                },
                _ => FieldError::invalid(
                    field,
                    Value::String(self.schema_type().into()),
                    failed_message,
                ),
            });
        }
        let child_path = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        continue;
                    }
                    if let Some(schema) = self.child(key) {
                        let old_child = old.and_then(|o| o.get(key));
                        schema.validate_rules(child, old_child, &child_path(key), errors);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        // Array items correlate with old ones only for map/set lists; plain
                        // lists never run transition rules, as in the real server.
                        schema.validate_rules(item, None, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            _ => {}
        }
    }
}

fn rule_message(rule: &Rule, value: &Value, old: Option<&Value>) -> String {
    if let Some(expression) = &rule.message_expression
        && let Ok(cel::Value::String(message)) = evaluate(expression, value, old)
    {
        return message.to_string();
    }
    if rule.message.is_empty() {
        format!("failed rule: {}", rule.rule)
    } else {
        rule.message.clone()
    }
}

fn evaluate(
    program: &cel::Program,
    value: &Value,
    old: Option<&Value>,
) -> Result<cel::Value, String> {
    let mut context = cel::Context::default();
    context.add_variable_from_value("self", to_cel(value));
    if let Some(old) = old {
        context.add_variable_from_value("oldSelf", to_cel(old));
    }
    program.execute(&context).map_err(|e| e.to_string())
}

/// JSON to CEL: integers stay `int` (as the real server's CEL types do), other numbers `double`.
pub fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => n
                .as_u64()
                .map(cel::Value::UInt)
                .unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let entries: HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map {
                map: Arc::new(entries),
            })
        }
    }
}

/// The openAPIV3Schema of a CRD version as the OpenAPI v3 document publishes it.
pub fn published(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        let properties = object
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(properties) = properties.as_object_mut() {
            properties.insert(
                "metadata".into(),
                serde_json::json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            );
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Structural {
        Structural::from_openapi(&json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["port"],
                    "x-kubernetes-validations": [
                        {"rule": "self.replicas >= 1", "message": "replicas must be positive"},
                        {"rule": "!has(self.mode) || self.mode != 'b' || self.port != 1"},
                        {"rule": "self.port == oldSelf.port", "message": "port is immutable", "fieldPath": ".port"},
                        {"rule": "!has(self.timeout) || duration(self.timeout) < duration('1h')"}
                    ],
                    "properties": {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "replicas": {"type": "integer", "default": 2},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "name": {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"},
                        "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}},
                        "size": {"x-kubernetes-int-or-string": true},
                        "note": {"type": "string", "nullable": true},
                        "timeout": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
            }
        }))
        .expect("schema compiles")
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn openapi_rules_give_the_real_messages() {
        let s = schema();
        let cases = [
            (
                json!({"port": 70000}),
                "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535",
            ),
            (
                json!({"port": 0}),
                "spec.port: Invalid value: 0: spec.port in body should be greater than or equal to 1",
            ),
            (
                json!({"port": "x"}),
                "spec.port: Invalid value: \"string\": spec.port in body must be of type integer: \"string\"",
            ),
            (json!({}), "spec.port: Required value"),
            (
                json!({"port": 1, "mode": "c"}),
                "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            ),
            (
                json!({"port": 1, "name": "abcde"}),
                "spec.name: Too long: may not be more than 4 bytes",
            ),
            (
                json!({"port": 1, "name": "a"}),
                "spec.name: Invalid value: \"a\": spec.name in body should be at least 2 chars long",
            ),
            (
                json!({"port": 1, "name": "AB"}),
                "spec.name: Invalid value: \"AB\": spec.name in body should match '^[a-z]+$'",
            ),
            (
                json!({"port": 1, "tags": ["a", "b", "c"]}),
                "spec.tags: Too many: 3: must have at most 2 items",
            ),
            (
                json!({"port": 1, "tags": []}),
                "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items",
            ),
            (
                json!({"port": 1, "size": true}),
                "spec.size: Invalid value: \"boolean\": spec.size in body must be of type integer,string: \"boolean\"",
            ),
            (
                json!({"port": 1, "labels": {"a": 1}}),
                "spec.labels.a: Invalid value: \"integer\": spec.labels.a in body must be of type string: \"integer\"",
            ),
        ];
        for (spec, want) in cases {
            let mut object = json!({"spec": spec});
            s.apply_defaults(&mut object);
            let errors = s.validate(&object, None);
            assert_eq!(
                messages(&errors).first().map(String::as_str),
                Some(want),
                "{object}"
            );
        }
        let fine = json!({"spec": {"port": 1, "replicas": 1, "size": "50%", "note": null, "free": {"x": 1}}});
        assert_eq!(messages(&s.validate(&fine, None)), Vec::<String>::new());
    }

    #[test]
    fn cel_rules_with_self_old_self_has_and_duration() {
        let s = schema();
        let object = json!({"spec": {"port": 1, "replicas": 0}});
        assert_eq!(
            messages(&s.validate(&object, None)),
            vec!["spec: Invalid value: \"object\": replicas must be positive"]
        );
        let object = json!({"spec": {"port": 1, "replicas": 1, "mode": "b"}});
        assert_eq!(
            messages(&s.validate(&object, None)),
            vec![
                "spec: Invalid value: \"object\": failed rule: !has(self.mode) || self.mode != 'b' || self.port != 1"
            ]
        );
        let old = json!({"spec": {"port": 2, "replicas": 1}});
        let new = json!({"spec": {"port": 3, "replicas": 1}});
        assert_eq!(
            messages(&s.validate(&new, None)),
            Vec::<String>::new(),
            "transition rules skip creates"
        );
        assert_eq!(
            messages(&s.validate(&new, Some(&old))),
            vec!["spec.port: Invalid value: \"object\": port is immutable"]
        );
        let slow = json!({"spec": {"port": 1, "replicas": 1, "timeout": "2h"}});
        assert_eq!(messages(&s.validate(&slow, None)).len(), 1);
        let quick = json!({"spec": {"port": 1, "replicas": 1, "timeout": "30m"}});
        assert_eq!(messages(&s.validate(&quick, None)), Vec::<String>::new());
    }

    #[test]
    fn type_errors_block_the_cel_rules() {
        let s = schema();
        let object = json!({"spec": {"port": "x", "replicas": 0}});
        let errors = messages(&s.validate(&object, None));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[1].contains("some validation rules were not checked"));
    }

    #[test]
    fn pruning_and_defaults() {
        let s = schema();
        let mut object = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"port": 1, "bogus": 1, "free": {"kept": true}, "tags": ["a"], "labels": {"k": "v"}, "replicas": null},
            "extra": {}
        });
        let unknown = s.prune(&mut object);
        assert_eq!(unknown, vec!["spec.bogus".to_string(), "extra".to_string()]);
        s.apply_defaults(&mut object);
        assert_eq!(
            object["spec"]["replicas"], 2,
            "null replaced by the default"
        );
        assert_eq!(object["spec"]["free"]["kept"], true);
        assert_eq!(object["metadata"]["name"], "a");
    }
}
