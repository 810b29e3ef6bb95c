//! A request as the handlers see it: method, path, query, the media types asked for and sent.

use bytes::Bytes;

use crate::status::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

impl Method {
    pub fn parse(method: &str) -> Self {
        match method {
            "GET" | "HEAD" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// The query string; kube-rs sends `?&a=b`, so empty pairs are skipped.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Query { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// An integer parameter; a malformed one is a 400 as in the real server.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, Status> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Status::bad_request(format!("invalid value for {key}: {v:?}"))),
        }
    }
}

/// What the client asked the response to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The objects themselves.
    Full,
    /// `as=PartialObjectMetadata(List)`: metadata only.
    Metadata,
    /// `as=Table`, with what rows carry (`includeObject`).
    Table(IncludeObject),
    /// `as=APIGroupDiscoveryList`: aggregated discovery.
    AggregatedDiscovery,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// Picks the first media type of `Accept` the server can produce, as the real negotiation does.
pub fn negotiate(accept: &str, query: &Query) -> Result<Output, Status> {
    if accept.trim().is_empty() {
        return Ok(Output::Full);
    }
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let base = parts.next().unwrap_or("");
        let mut as_ = "";
        let mut group = "";
        let mut version = "";
        for param in parts {
            match param.split_once('=') {
                Some(("as", v)) => as_ = v,
                Some(("g", v)) => group = v,
                Some(("v", v)) => version = v,
                _ => {}
            }
        }
        if !matches!(
            base,
            "application/json" | "*/*" | "application/*" | "application/yaml"
        ) {
            continue;
        }
        match (as_, group, version) {
            ("", _, _) => return Ok(Output::Full),
            ("Table", "meta.k8s.io", "v1" | "v1beta1") => {
                let include = match query.get("includeObject") {
                    Some("None") => IncludeObject::None,
                    Some("Object") => IncludeObject::Object,
                    Some("Metadata") | Some("") | None => IncludeObject::Metadata,
                    Some(other) => {
                        return Err(Status::bad_request(format!(
                            "Unable to convert to Table as requested: includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
                        )));
                    }
                };
                return Ok(Output::Table(include));
            }
            (
                "PartialObjectMetadata" | "PartialObjectMetadataList",
                "meta.k8s.io",
                "v1" | "v1beta1",
            ) => {
                return Ok(Output::Metadata);
            }
            ("APIGroupDiscoveryList", "apidiscovery.k8s.io", "v2") => {
                return Ok(Output::AggregatedDiscovery);
            }
            _ => continue,
        }
    }
    Err(Status::not_acceptable(
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    ))
}

/// One request, read whole.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// The HTTP method as sent (non-resource requests are authorized on it, lower-cased).
    pub method_name: String,
    pub path: String,
    pub query: Query,
    pub accept: String,
    pub content_type: String,
    /// The `Authorization` header.
    pub authorization: String,
    /// `Impersonate-User` and `Impersonate-Group` headers.
    pub impersonate_user: Option<String>,
    pub impersonate_groups: Vec<String>,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_first_supported_type() {
        let none = Query::parse(Some("&includeObject=Object"));
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(kubectl, &none).expect("table"),
            Output::Table(IncludeObject::Object)
        );
        assert_eq!(
            negotiate(kubectl, &Query::default()).expect("table"),
            Output::Table(IncludeObject::Metadata)
        );
        let kube_rs = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        assert_eq!(negotiate(kube_rs, &none).expect("meta"), Output::Metadata);
        assert_eq!(
            negotiate(
                "application/vnd.kubernetes.protobuf,application/json",
                &none
            )
            .expect("json"),
            Output::Full
        );
        assert_eq!(
            negotiate("application/vnd.kubernetes.protobuf", &none)
                .expect_err("406")
                .code,
            406
        );
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            negotiate(discovery, &none).expect("aggregated"),
            Output::AggregatedDiscovery
        );
        assert_eq!(
            negotiate(kubectl, &Query::parse(Some("includeObject=Bogus")))
                .expect_err("400")
                .code,
            400
        );
    }

    #[test]
    fn queries_skip_empty_pairs() {
        let q = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&&labelSelector=app%3Dweb",
        ));
        assert!(q.flag("watch"));
        assert_eq!(q.integer("timeoutSeconds").expect("number"), Some(290));
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert_eq!(
            Query::parse(Some("limit=x"))
                .integer("limit")
                .expect_err("bad")
                .code,
            400
        );
    }
}
