//! What neither kubectl nor kube-rs sends on its own: malformed input (never a panic or a hung
//! connection), the watch protocol's edges (410, bookmarks, timeouts, resume), error bodies,
//! discovery documents and the injected faults.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use test_apiserver::{ApiServer, Options};

use crate::support::{client, http, http_json, install_crd, server};

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .expect("configmap")
}

#[tokio::test]
async fn malformed_requests_get_status_errors_and_never_hang() {
    let server = server().await;
    install_crd(&client(&server).await).await;
    let (code, _) = http_json(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        r#"{"metadata":{"name":"c"}}"#,
    )
    .await;
    assert_eq!(code, 201);
    let pairs = "/apis/redispair.io/v1/namespaces/default/redispairs";
    let deep = format!("{}{}", "[".repeat(10000), "]".repeat(10000));
    let cases: Vec<(&str, String, &str, String, u16)> = vec![
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", "{not json".into(), 400),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", "[1,2]".into(), 400),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", deep.clone(), 400),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", r#"{"metadata":{"name":"x","resourceVersion":"5"}}"#.into(), 400),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", r#"{"metadata":{"name":"x","namespace":"other"}}"#.into(), 400),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", r#"{"kind":"Pod","metadata":{"name":"x"}}"#.into(), 400),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", r#"{"metadata":{}}"#.into(), 422),
        ("POST", "/api/v1/namespaces/default/configmaps".into(), "application/json", r#"{"metadata":"nope"}"#.into(), 422),
        ("POST", "/api/v1/namespaces/missing/configmaps".into(), "application/json", r#"{"metadata":{"name":"x"}}"#.into(), 404),
        ("POST", "/api/v1/configmaps".into(), "application/json", r#"{"metadata":{"name":"x"}}"#.into(), 405),
        ("PUT", "/api/v1/namespaces/default/configmaps/c".into(), "application/json", r#"{"metadata":{"name":"other"}}"#.into(), 400),
        ("PUT", "/api/v1/namespaces/default/configmaps/c".into(), "application/json", "null".into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/merge-patch+json", "{oops".into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/merge-patch+json", "\"string\"".into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/json-patch+json", r#"{"op":"add"}"#.into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/json-patch+json", r#"[{"op":"bogus","path":"/x"}]"#.into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/json-patch+json", r#"[{"op":"remove","path":"/nope/deeper"}]"#.into(), 422),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/json-patch+json", r#"[{"op":"replace","path":"","value":7}]"#.into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/strategic-merge-patch+json", r#"{"$patch":"bogus"}"#.into(), 400),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "text/plain", "{}".into(), 415),
        ("PATCH", "/api/v1/namespaces/default/configmaps/c".into(), "application/merge-patch+json", r#"{"metadata":{"name":"renamed"}}"#.into(), 400),
        ("PATCH", format!("{pairs}/none"), "application/strategic-merge-patch+json", "{}".into(), 415),
        ("PATCH", "/api/v1/namespaces/default/configmaps/missing".into(), "application/merge-patch+json", "{}".into(), 404),
        ("DELETE", "/api/v1/namespaces/default/configmaps/c".into(), "application/json", "{broken".into(), 400),
        ("DELETE", "/api/v1/namespaces/default".into(), "application/json", "".into(), 403),
        ("GET", "/api/v1/namespaces/default/configmaps?labelSelector=((".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?fieldSelector=spec.x%3Dy".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?limit=abc".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?continue=%%%".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?continue=e30%3D".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?resourceVersion=1&resourceVersionMatch=Bogus".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=abc".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=x".into(), "", "".into(), 400),
        ("GET", "/api/v1/namespaces/default/configmaps?fieldValidation=Sometimes".into(), "", "".into(), 200),
        ("POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Sometimes".into(), "application/json", r#"{"metadata":{"name":"y"}}"#.into(), 400),
        ("GET", "/api/v1/nothings".into(), "", "".into(), 404),
        ("GET", "/apis/nope.io/v1".into(), "", "".into(), 404),
        ("GET", "/api/v1/namespaces/default/configmaps/c/status".into(), "", "".into(), 404),
        ("GET", "/api/v1/namespaces/default/configmaps/c/x/y".into(), "", "".into(), 404),
        ("GET", "/%ff%fe".into(), "", "".into(), 404),
        ("POST", "/version".into(), "application/json", "{}".into(), 405),
        ("PUT", format!("{pairs}/none"), "application/json", r#"{"apiVersion":"redispair.io/v1","kind":"RedisPair","metadata":{"name":"none"},"spec":{"port":1}}"#.into(), 422),
        ("POST", pairs.to_string(), "application/json", r#"{"apiVersion":"redispair.io/v1","kind":"RedisPair","metadata":{"name":"p"},"spec":{"port":"x"}}"#.into(), 422),
        ("POST", pairs.to_string(), "application/json", r#"{"apiVersion":"redispair.io/v1","kind":"RedisPair","metadata":{"name":"p"},"spec":[]}"#.into(), 422),
        ("POST", format!("{pairs}?fieldValidation=Strict"), "application/json", r#"{"apiVersion":"redispair.io/v1","kind":"RedisPair","metadata":{"name":"p"},"spec":{"port":1,"x":1}}"#.into(), 400),
    ];
    for (method, path, content_type, body, want) in cases {
        let (code, text) = http(
            &server,
            method,
            &path,
            &[("Content-Type", content_type)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(code, want, "{method} {path} {body:.80}: {text}");
        if code >= 400 {
            let status: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not a Status ({e}): {text}"));
            assert_eq!(
                (status["kind"].as_str(), status["code"].as_u64()),
                (Some("Status"), Some(u64::from(code))),
                "{method} {path}"
            );
            assert!(
                !status["reason"].as_str().unwrap_or("").is_empty(),
                "{method} {path}: {text}"
            );
        }
    }
    // Not HTTP at all: the connection is answered or closed, never left hanging.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(server.addr())
            .await
            .expect("connects");
        stream.write_all(garbage).await.expect("writes");
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
            .await
            .expect("closed in time")
            .ok();
    }
    let (code, _) = http(&server, "GET", "/version", &[], b"").await;
    assert_eq!(code, 200, "still serving");
}

#[tokio::test]
async fn error_bodies_are_the_real_status_objects() {
    let server = server().await;
    let (code, status) = http_json(
        &server,
        "GET",
        "/api/v1/namespaces/default/pods/nope",
        "",
        "",
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        status,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "pods \"nope\" not found",
               "reason": "NotFound", "details": {"name": "nope", "kind": "pods"}, "code": 404})
    );
    let (_, status) = http_json(&server, "GET", "/api/v1/nothings", "", "").await;
    assert_eq!(
        status["message"],
        "the server could not find the requested resource"
    );
    let (code, status) = http_json(
        &server,
        "DELETE",
        "/api/v1/namespaces/default/configmaps",
        "",
        "",
    )
    .await;
    assert_eq!(
        (code, status["kind"].as_str()),
        (200, Some("ConfigMapList")),
        "deletecollection"
    );
    let (code, status) = http_json(
        &server,
        "PUT",
        "/api/v1/namespaces/default",
        "application/json",
        r#"{"metadata":{"name":"default","resourceVersion":"1"}}"#,
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
}

#[tokio::test]
async fn a_yaml_body_is_taken_as_the_real_server_takes_it() {
    let server = server().await;
    let (code, created) = http_json(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  key: value\n",
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["data"]["key"], "value");
    let (code, status) = http_json(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/yaml",
        "metadata: [unclosed",
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (400, Some("BadRequest")),
        "{status}"
    );
    let (code, status) = http_json(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "text/plain",
        "hello",
    )
    .await;
    assert_eq!(code, 415, "{status}");
}

#[tokio::test]
async fn discovery_answers_as_a_1_33_server() {
    let server = server().await;
    let (_, version) = http_json(&server, "GET", "/version", "", "").await;
    assert_eq!(
        (version["major"].as_str(), version["minor"].as_str()),
        (Some("1"), Some("33"))
    );
    let (_, api) = http_json(&server, "GET", "/api", "", "").await;
    assert_eq!(api["versions"], json!(["v1"]));
    let (_, core) = http_json(&server, "GET", "/api/v1", "", "").await;
    let pods = core["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "pods")
        .expect("pods")
        .clone();
    assert_eq!(
        (
            pods["kind"].as_str(),
            pods["namespaced"].as_bool(),
            pods["shortNames"].clone()
        ),
        (Some("Pod"), Some(true), json!(["po"]))
    );
    assert!(
        core["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["name"] == "pods/status")
    );
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connects");
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(
            format!(
                "GET /apis HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: {accept}\r\nAuthorization: Bearer {}\r\n\r\n",
                server.admin_token()
            )
            .as_bytes(),
        )
        .await
        .expect("writes");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("reads");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains(
            "Content-Type: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ) || text.contains(
            "content-type: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ),
        "{text:.400}"
    );
    let (_, body) = crate::support::parse_response(&raw);
    let aggregated: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(aggregated["kind"], "APIGroupDiscoveryList");
    assert!(
        aggregated["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|g| g["metadata"]["name"] == "coordination.k8s.io")
    );
    let (_, openapi) = http_json(&server, "GET", "/openapi/v3", "", "").await;
    let url = openapi["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .expect("api/v1 document")
        .to_string();
    let (code, document) = http_json(&server, "GET", &url, "", "").await;
    assert_eq!(code, 200);
    let patch = &document["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "", "version": "v1", "kind": "Pod"})
    );
    assert!(
        patch["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
}

#[tokio::test]
async fn watches_resume_send_bookmarks_time_out_and_expire() {
    let server = ApiServer::start(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .await
    .expect("starts");
    let client = client(&server).await;
    let maps: Api<ConfigMap> = Api::default_namespaced(client);
    let first = maps
        .create(&PostParams::default(), &config_map("a"))
        .await
        .expect("created");
    let from = first.metadata.resource_version.clone().expect("rv");
    maps.create(&PostParams::default(), &config_map("b"))
        .await
        .expect("created");
    maps.create(&PostParams::default(), &config_map("c"))
        .await
        .expect("created");
    // Resume: only what came after `from`, then bookmarks at the newest version.
    let params = WatchParams::default().timeout(2);
    let started = Instant::now();
    let events: Vec<WatchEvent<ConfigMap>> = maps
        .watch(&params, &from)
        .await
        .expect("watch")
        .try_collect()
        .await
        .expect("stream");
    let elapsed = started.elapsed();
    let added: Vec<String> = events
        .iter()
        .filter_map(|e| {
            if let WatchEvent::Added(c) = e {
                c.metadata.name.clone()
            } else {
                None
            }
        })
        .collect();
    assert_eq!(added, vec!["b", "c"]);
    let bookmark = events.iter().find_map(|e| {
        if let WatchEvent::Bookmark(b) = e {
            Some(b.metadata.resource_version.clone())
        } else {
            None
        }
    });
    assert_eq!(bookmark, Some(server.resource_version().to_string()));
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "timeoutSeconds=2 ended it after {elapsed:?}"
    );
    // "0": every current object as ADDED first.
    let mut stream = maps
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .expect("watch")
        .boxed();
    let mut initial = Vec::new();
    for _ in 0..3 {
        if let Some(Ok(WatchEvent::Added(c))) = stream.next().await {
            initial.extend(c.metadata.name);
        }
    }
    assert_eq!(initial, vec!["a", "b", "c"]);
    // Older than the history: an ERROR event with a 410 Status.
    server.compact();
    let events: Vec<WatchEvent<ConfigMap>> = maps
        .watch(&WatchParams::default(), &from)
        .await
        .expect("watch")
        .try_collect()
        .await
        .expect("stream");
    match events.as_slice() {
        [WatchEvent::Error(error)] => {
            assert_eq!((error.code, error.reason.as_str()), (410, "Expired"));
            assert!(
                error
                    .message
                    .starts_with(&format!("too old resource version: {from} (")),
                "{}",
                error.message
            );
        }
        other => panic!("expected one ERROR event, got {other:?}"),
    }
    let list = maps.list(&ListParams::default()).await.expect("list");
    let exact = maps
        .list(
            &ListParams::default()
                .at(&from)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await;
    assert!(
        matches!(exact, Err(kube::Error::Api(s)) if s.code == 410),
        "an exact read older than the history"
    );
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
}

#[tokio::test]
async fn an_outage_refuses_connections_then_serves_the_same_state() {
    let server = server().await;
    let client = client(&server).await;
    let maps: Api<ConfigMap> = Api::default_namespaced(client);
    maps.create(&PostParams::default(), &config_map("kept"))
        .await
        .expect("created");
    let mut watch = maps
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Added(_)))));
    server
        .refuse_connections_for(Duration::from_millis(500))
        .await;
    let refused = tokio::net::TcpStream::connect(server.addr()).await;
    assert!(
        refused.is_err(),
        "the port refuses connections during the outage"
    );
    let cut = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the open watch is cut");
    assert!(
        !matches!(cut, Some(Ok(_))),
        "no more events on a cut watch: {cut:?}"
    );
    let back = crate::support::eventually(
        "the port to serve again",
        Duration::from_secs(5),
        || async { maps.get("kept").await.ok() },
    )
    .await;
    assert_eq!(
        back.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    maps.get("kept").await.expect("slow get");
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);
}

#[tokio::test]
async fn dropping_watches_cuts_every_open_stream() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = server().await;
    let maps: Api<ConfigMap> = Api::default_namespaced(client(&server).await);
    maps.create(&PostParams::default(), &config_map("a"))
        .await
        .expect("created");
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(server.addr())
            .await
            .expect("connects");
        let request = format!(
            "GET /api/v1/namespaces/default/configmaps?watch=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            server.admin_token()
        );
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("\"ADDED\"") {
            let mut buffer = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("an event")
                .expect("reads");
            assert!(n > 0, "the watch ended early");
            seen.extend_from_slice(&buffer[..n]);
        }
        streams.push((stream, seen));
    }
    server.drop_watches();
    for (mut stream, mut seen) in streams {
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut seen))
            .await
            .expect("the stream is cut at once")
            .ok();
        let text = String::from_utf8_lossy(&seen);
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "an abrupt end (no last chunk), not a clean one: {text}"
        );
    }
    let (code, status) = crate::support::http_json(
        &server,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true",
        "",
        "",
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "streaming lists are not served: {status}"
    );
}
