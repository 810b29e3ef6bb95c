//! kube-rs against the server: every call redis-pair's controller and sidecar make.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::json;

use crate::support::{
    RedisPair, RedisPairSpec, RedisPairStatus, client, eventually, install_crd, server,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn pair(name: &str, port: i64) -> RedisPair {
    RedisPair::new(
        name,
        RedisPairSpec {
            port,
            replicas: None,
        },
    )
}

fn api_error(error: kube::Error) -> (u16, String, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "redis"}},
        "spec": {"nodeName": node, "containers": [{"name": "redis", "image": "redis:7"}]}
    }))
    .expect("pod")
}

async fn setup() -> (test_apiserver::ApiServer, Client, Api<RedisPair>) {
    let server = server().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let pairs: Api<RedisPair> = Api::namespaced(client.clone(), "default");
    (server, client, pairs)
}

#[tokio::test]
async fn a_crd_is_served_as_soon_as_it_is_created_and_gone_when_deleted() {
    let server = server().await;
    let client = client(&server).await;
    let pairs: Api<RedisPair> = Api::namespaced(client.clone(), "default");
    let (code, _, _) = api_error(
        pairs
            .list(&ListParams::default())
            .await
            .expect_err("no CRD yet"),
    );
    assert_eq!(code, 404);
    install_crd(&client).await;
    pairs
        .create(&PostParams::default(), &pair("a", 6379))
        .await
        .expect("served at once");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get("redispairs.redispair.io").await.expect("CRD");
    let established = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    crds.delete("redispairs.redispair.io", &DeleteParams::default())
        .await
        .expect("CRD deleted");
    let (code, _, _) = api_error(pairs.get("a").await.expect_err("resource gone"));
    assert_eq!(code, 404);
}

#[tokio::test]
async fn get_list_create_and_replace_with_a_stale_version_conflicts() {
    let (_server, _client, pairs) = setup().await;
    let created = pairs
        .create(&PostParams::default(), &pair("a", 6379))
        .await
        .expect("created");
    assert_eq!(created.spec.replicas, Some(2), "structural default applied");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let (code, reason, message) = api_error(
        pairs
            .create(&PostParams::default(), &pair("a", 6379))
            .await
            .expect_err("exists"),
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (
            409,
            "AlreadyExists",
            "redispairs.redispair.io \"a\" already exists"
        )
    );
    pairs
        .create(&PostParams::default(), &pair("b", 6380))
        .await
        .expect("created");
    let list = pairs.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let mut fresh = pairs.get("a").await.expect("get");
    fresh.spec.replicas = Some(3);
    let replaced = pairs
        .replace("a", &PostParams::default(), &fresh)
        .await
        .expect("replace with the current version");
    assert_eq!(replaced.metadata.generation, Some(2));
    fresh.spec.replicas = Some(4);
    let (code, reason, message) = api_error(
        pairs
            .replace("a", &PostParams::default(), &fresh)
            .await
            .expect_err("stale"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Operation cannot be fulfilled on redispairs.redispair.io \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (code, _, message) = api_error(pairs.get("missing").await.expect_err("missing"));
    assert_eq!(
        (code, message.as_str()),
        (404, "redispairs.redispair.io \"missing\" not found")
    );
}

#[tokio::test]
async fn schema_and_cel_rules_reject_bad_objects_with_the_real_messages() {
    let (_server, _client, pairs) = setup().await;
    let (code, reason, message) = api_error(
        pairs
            .create(&PostParams::default(), &pair("a", 70000))
            .await
            .expect_err("port range"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        "RedisPair.redispair.io \"a\" is invalid: spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535"
    );
    let zero = RedisPair::new(
        "a",
        RedisPairSpec {
            port: 1,
            replicas: Some(0),
        },
    );
    let (_, _, message) = api_error(
        pairs
            .create(&PostParams::default(), &zero)
            .await
            .expect_err("CEL"),
    );
    assert_eq!(
        message,
        "RedisPair.redispair.io \"a\" is invalid: spec: Invalid value: \"object\": replicas must be at least 1"
    );
    pairs
        .create(&PostParams::default(), &pair("a", 6379))
        .await
        .expect("valid");
    let moved = pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"port": 6380}})),
        )
        .await;
    let (_, _, message) = api_error(moved.expect_err("transition rule"));
    assert_eq!(
        message,
        "RedisPair.redispair.io \"a\" is invalid: spec: Invalid value: \"object\": port is immutable"
    );
    let bad_name = pair("Bad_Name", 1);
    let (code, _, message) = api_error(
        pairs
            .create(&PostParams::default(), &bad_name)
            .await
            .expect_err("name"),
    );
    assert_eq!(code, 422);
    assert!(message.starts_with("RedisPair.redispair.io \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{message}");
}

#[tokio::test]
async fn merge_and_json_patches_with_a_failing_test_op() {
    let (_server, _client, pairs) = setup().await;
    pairs
        .create(&PostParams::default(), &pair("a", 6379))
        .await
        .expect("created");
    let annotated = pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"redispair.io/epoch": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        annotated
            .annotations()
            .get("redispair.io/epoch")
            .map(String::as_str),
        Some("1")
    );
    let rv = annotated.resource_version().expect("rv");
    let publish = |expected_epoch: &str, expected_rv: &str| {
        serde_json::from_value::<json_patch::Patch>(json!([
            {"op": "test", "path": "/metadata/annotations/redispair.io~1epoch", "value": expected_epoch},
            {"op": "test", "path": "/metadata/resourceVersion", "value": expected_rv},
            {"op": "replace", "path": "/metadata/annotations/redispair.io~1epoch", "value": "2"}
        ]))
        .expect("patch")
    };
    let published = pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(publish("1", &rv)),
        )
        .await
        .expect("tests pass");
    assert_eq!(
        published
            .annotations()
            .get("redispair.io/epoch")
            .map(String::as_str),
        Some("2")
    );
    for stale in [
        publish("1", &published.resource_version().expect("rv")),
        publish("2", &rv),
    ] {
        let (code, reason, message) = api_error(
            pairs
                .patch("a", &PatchParams::default(), &Patch::Json::<()>(stale))
                .await
                .expect_err("test fails"),
        );
        assert_eq!(
            (code, reason.as_str(), message.as_str()),
            (
                422,
                "Invalid",
                "the server rejected our request due to an error in our request"
            )
        );
    }
    assert_eq!(
        pairs
            .get("a")
            .await
            .expect("get")
            .annotations()
            .get("redispair.io/epoch")
            .map(String::as_str),
        Some("2")
    );
}

#[tokio::test]
async fn the_status_subresource_splits_spec_and_status_writes() {
    let (_server, _client, pairs) = setup().await;
    let mut with_status = pair("a", 6379);
    with_status.status = Some(RedisPairStatus {
        master: Some("ignored".into()),
    });
    let created = pairs
        .create(&PostParams::default(), &with_status)
        .await
        .expect("created");
    assert_eq!(
        created.status, None,
        "create drops status when the kind has a status subresource"
    );
    let status = pairs
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"master": "a-0"}, "spec": {"replicas": 5}})),
        )
        .await
        .expect("status patch");
    assert_eq!(status.status.and_then(|s| s.master).as_deref(), Some("a-0"));
    assert_eq!(
        status.spec.replicas,
        Some(2),
        "a status write leaves spec alone"
    );
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "status writes keep generation"
    );
    let main = pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"master": "other"}, "spec": {"replicas": 3}})),
        )
        .await
        .expect("main patch");
    assert_eq!(
        main.status.as_ref().and_then(|s| s.master.as_deref()),
        Some("a-0"),
        "a main write leaves status alone"
    );
    assert_eq!(
        main.metadata.generation,
        Some(2),
        "a spec change raises generation"
    );
    let again = pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("no-op");
    assert_eq!(
        again.resource_version(),
        main.resource_version(),
        "a no-op write is not written"
    );
}

/// The annotation values a watcher has seen for one object, in order.
fn epochs(events: &[watcher::Event<RedisPair>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                p.annotations().get("n").cloned()
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_watcher_sees_every_change_across_dropped_streams() {
    let (server, _client, pairs) = setup().await;
    pairs
        .create(&PostParams::default(), &pair("a", 6379))
        .await
        .expect("created");
    let mut stream = watcher(pairs.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let annotate = |n: usize| {
        let pairs = pairs.clone();
        async move {
            pairs
                .patch(
                    "a",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"n": n.to_string()}}})),
                )
                .await
                .expect("patched");
        }
    };
    for n in 1..=6 {
        annotate(n).await;
        if n % 2 == 0 {
            server.drop_watches();
        }
        let want = n.to_string();
        tokio::time::timeout(DEADLINE, async {
            while epochs(&seen).last() != Some(&want) {
                match stream.next().await {
                    Some(Ok(event)) => seen.push(event),
                    Some(Err(_)) => {}
                    None => panic!("watcher ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("watcher never saw n={n}; saw {:?}", epochs(&seen)));
    }
    assert_eq!(
        epochs(&seen),
        (1..=6).map(|n| n.to_string()).collect::<Vec<_>>(),
        "every change once, in order"
    );
    let relists = seen
        .iter()
        .filter(|e| matches!(e, watcher::Event::Init))
        .count();
    assert_eq!(
        relists, 1,
        "a dropped stream resumes from its resourceVersion without a relist"
    );
}

#[tokio::test]
async fn a_reflector_converges_across_a_forced_410() {
    let (server, client, pairs) = setup().await;
    for name in ["a", "b", "c"] {
        pairs
            .create(&PostParams::default(), &pair(name, 6379))
            .await
            .expect("created");
    }
    let (reader, writer) = reflector::store::<RedisPair>();
    let mut stream = reflector(writer, watcher(pairs.clone(), watcher::Config::default())).boxed();
    let mut inits = 0;
    let pump = async |stream: &mut futures::stream::BoxStream<
        '_,
        Result<watcher::Event<RedisPair>, watcher::Error>,
    >,
                      inits: &mut usize,
                      until: &dyn Fn() -> bool| {
        tokio::time::timeout(DEADLINE, async {
            while !until() {
                if let Some(Ok(watcher::Event::Init)) = stream.next().await {
                    *inits += 1;
                }
            }
        })
        .await
        .expect("the store converges");
    };
    pump(&mut stream, &mut inits, &|| reader.state().len() == 3).await;
    // While the watcher is not polled: delete one, change another, write elsewhere, compact,
    // and cut the stream. Its resume is now older than the history: 410, relist.
    pairs
        .delete("b", &DeleteParams::default())
        .await
        .expect("deleted");
    pairs
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("patched");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}})).expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    server.compact();
    server.drop_watches();
    let converged = || {
        let mut names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        names == ["a", "c"] && reader.state().iter().any(|p| p.labels().get("x").is_some())
    };
    pump(&mut stream, &mut inits, &converged).await;
    assert_eq!(inits, 2, "the 410 made the watcher relist");
    pairs
        .create(&PostParams::default(), &pair("d", 1))
        .await
        .expect("created after the relist");
    pump(&mut stream, &mut inits, &|| reader.state().len() == 3).await;
}

#[tokio::test]
async fn selectors_apply_to_watch_events() {
    let (_server, _client, pairs) = setup().await;
    let mut labelled = pair("a", 6379);
    labelled.metadata.labels = Some(BTreeMap::from([("role".to_string(), "master".to_string())]));
    pairs
        .create(&PostParams::default(), &labelled)
        .await
        .expect("created");
    pairs
        .create(&PostParams::default(), &pair("b", 6379))
        .await
        .expect("created");
    let by_label = watcher(
        pairs.clone(),
        watcher::Config::default().labels("role=master"),
    );
    let by_name = watcher(
        pairs.clone(),
        watcher::Config::default().fields("metadata.name=b"),
    );
    let mut by_label = by_label.boxed();
    let mut by_name = by_name.boxed();
    async fn next_change(
        stream: &mut futures::stream::BoxStream<
            '_,
            Result<watcher::Event<RedisPair>, watcher::Error>,
        >,
    ) -> watcher::Event<RedisPair> {
        loop {
            let event = tokio::time::timeout(DEADLINE, stream.try_next())
                .await
                .expect("an event")
                .expect("no error")
                .expect("open");
            if !matches!(event, watcher::Event::Init | watcher::Event::InitDone) {
                return event;
            }
        }
    }
    assert!(
        matches!(next_change(&mut by_label).await, watcher::Event::InitApply(p) if p.name_any() == "a")
    );
    assert!(
        matches!(next_change(&mut by_name).await, watcher::Event::InitApply(p) if p.name_any() == "b")
    );
    // a stops matching: DELETED; b starts matching: ADDED. Changes to others are not sent.
    pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "replica"}}})),
        )
        .await
        .expect("patched");
    pairs
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "master"}}})),
        )
        .await
        .expect("patched");
    assert!(
        matches!(next_change(&mut by_label).await, watcher::Event::Delete(p) if p.name_any() == "a")
    );
    assert!(
        matches!(next_change(&mut by_label).await, watcher::Event::Apply(p) if p.name_any() == "b")
    );
    assert!(
        matches!(next_change(&mut by_name).await, watcher::Event::Apply(p) if p.name_any() == "b" && p.labels().contains_key("role"))
    );
}

#[tokio::test]
async fn a_metadata_watcher_on_secrets_gets_partial_objects() {
    let server = server().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "auth", "labels": {"a": "b"}}, "stringData": {"password": "hunter2"}})).expect("secret");
    let stored = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("created");
    assert_eq!(
        stored
            .data
            .as_ref()
            .and_then(|d| d.get("password"))
            .map(|b| b.0.as_slice()),
        Some(&b"hunter2"[..]),
        "stringData lands in data"
    );
    assert!(stored.string_data.is_none());
    let metadata: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(metadata, watcher::Config::default())).applied_objects();
    let mut stream = stream.boxed();
    let first = tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .expect("event")
        .expect("ok")
        .expect("open");
    assert_eq!(first.metadata.name.as_deref(), Some("auth"));
    assert_eq!(
        first.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    secrets
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "c"}}})),
        )
        .await
        .expect("patched");
    let changed = tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .expect("event")
        .expect("ok")
        .expect("open");
    assert_eq!(
        changed
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("a"))
            .map(String::as_str),
        Some("c")
    );
    assert_eq!(
        changed
            .types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str())),
        Some(("meta.k8s.io/v1", "PartialObjectMetadata")),
        "watch events carry metadata only too"
    );
    assert_eq!(reader.state().len(), 1);
    let listed = secrets
        .list_metadata(&ListParams::default())
        .await
        .expect("metadata list");
    assert_eq!(listed.items.len(), 1);
}

#[tokio::test]
async fn a_pod_bound_to_a_node_is_deleted_gracefully() {
    let server = server().await;
    let client = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("bound", Some("node-1")))
        .await
        .expect("created");
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.2", "podIPs": [{"ip": "127.0.0.2"}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    let running = pods
        .patch_status("bound", &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("status");
    assert_eq!(
        running.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("127.0.0.2")
    );
    let labelled = pods
        .patch(
            "bound",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"redispair.io/role": "master"}}})),
        )
        .await
        .expect("label");
    assert_eq!(
        labelled.labels().get("app").map(String::as_str),
        Some("redis")
    );
    let everywhere: Api<Pod> = Api::all(client.clone());
    let listed = everywhere
        .list(&ListParams::default().fields("spec.nodeName=node-1"))
        .await
        .expect("cluster-wide list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>(),
        vec!["bound"]
    );
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    while !matches!(
        tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .expect("synced")
            .expect("watch"),
        Some(watcher::Event::InitDone)
    ) {}
    let deleting = pods
        .delete("bound", &DeleteParams::default())
        .await
        .expect("delete");
    let deleting = deleting
        .left()
        .expect("the pod is returned while it terminates");
    assert_eq!(deleting.metadata.deletion_grace_period_seconds, Some(30));
    let deadline = deleting
        .metadata
        .deletion_timestamp
        .as_ref()
        .expect("deletionTimestamp")
        .0;
    let seconds = deadline.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((25..=31).contains(&seconds), "now + 30s, got {seconds}s");
    assert!(
        pods.get("bound").await.is_ok(),
        "still there until the kubelet finishes"
    );
    // The kubelet's final delete.
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("final delete");
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.try_next().await.expect("watch") {
            if matches!(event, watcher::Event::Delete(ref p) if p.name_any() == "bound") {
                return;
            }
        }
    })
    .await
    .expect("DELETED arrives");
    assert_eq!(api_error(pods.get("bound").await.expect_err("gone")).0, 404);
    pods.create(&PostParams::default(), &pod("unbound", None))
        .await
        .expect("created");
    let gone = pods
        .delete("unbound", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        gone.left()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "an unbound pod goes at once"
    );
    assert_eq!(
        api_error(pods.get("unbound").await.expect_err("gone")).0,
        404
    );
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let (_server, _client, pairs) = setup().await;
    let mut held = pair("a", 6379);
    held.metadata.finalizers = Some(vec!["redispair.io/cleanup".into()]);
    pairs
        .create(&PostParams::default(), &held)
        .await
        .expect("created");
    pairs
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let deleting = pairs.get("a").await.expect("still there");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        deleting.metadata.generation,
        Some(2),
        "setting deletionTimestamp raises generation"
    );
    let added = pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["redispair.io/cleanup", "other.io/x"]}}),
            ),
        )
        .await;
    assert_eq!(api_error(added.expect_err("no new finalizers")).0, 422);
    pairs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("finalizer removed");
    eventually("the object to go", DEADLINE, || async {
        pairs
            .get_opt("a")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn lease_election_is_get_then_put_with_conflicts() {
    let server = server().await;
    let client = client(&server).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "redis-pair"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("created");
    let mut mine = leases.get("redis-pair").await.expect("get");
    let mut theirs = mine.clone();
    if let Some(spec) = theirs.spec.as_mut() {
        spec.holder_identity = Some("b".into());
    }
    leases
        .replace("redis-pair", &PostParams::default(), &theirs)
        .await
        .expect("b takes it first");
    if let Some(spec) = mine.spec.as_mut() {
        spec.holder_identity = Some("a".into());
    }
    let (code, reason, _) = api_error(
        leases
            .replace("redis-pair", &PostParams::default(), &mine)
            .await
            .expect_err("stale"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        leases
            .get("redis-pair")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.holder_identity)
            .as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn the_event_recorder_creates_then_patches_a_repeated_event() {
    use k8s_openapi::api::events::v1::Event;
    use kube::runtime::events::{Event as Published, EventType, Recorder, Reporter};
    let (server, client, pairs) = setup().await;
    let created = pairs
        .create(&PostParams::default(), &pair("a", 6379))
        .await
        .expect("created");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "redis-pair".into(),
            instance: Some("test".into()),
        },
    );
    let reference = kube::Resource::object_ref(&created, &());
    let event = Published {
        type_: EventType::Normal,
        reason: "Promoted".into(),
        note: Some("a-0 is master".into()),
        action: "Failover".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &reference)
        .await
        .expect("first event");
    recorder.publish(&event, &reference).await.expect("repeat");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let listed = events.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1, "the repeat patched the same event");
    assert_eq!(listed.items[0].series.as_ref().map(|s| s.count), Some(2));
    // The same object through the core API, as kubectl get events and describe read it.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let selector = format!(
        "involvedObject.name=a,involvedObject.kind=RedisPair,involvedObject.uid={}",
        created.uid().unwrap_or_default()
    );
    let seen = core
        .list(&ListParams::default().fields(&selector))
        .await
        .expect("core list");
    assert_eq!(seen.items.len(), 1);
    assert_eq!(seen.items[0].message.as_deref(), Some("a-0 is master"));
    assert_eq!(
        seen.items[0].reporting_component.as_deref(),
        Some("redis-pair")
    );
    let printed = crate::support::Kubectl::new(&server)
        .ok(&["get", "events"])
        .await;
    let rows: Vec<Vec<&str>> = printed
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert_eq!(
        rows[1][1..],
        ["Normal", "Promoted", "redispair/a", "a-0 is master"]
    );
}

#[tokio::test]
async fn list_pages_with_continue_and_an_expired_token_is_410() {
    let (server, _client, pairs) = setup().await;
    for i in 0..5 {
        pairs
            .create(&PostParams::default(), &pair(&format!("p{i}"), 6379))
            .await
            .expect("created");
    }
    let first = pairs
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    let token = first.metadata.continue_.clone().expect("continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    pairs
        .create(&PostParams::default(), &pair("p9", 6379))
        .await
        .expect("created between pages");
    let second = pairs
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .expect("page 2");
    let names: Vec<String> = second.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(
        names,
        vec!["p2", "p3", "p4"],
        "later pages come from the first page's snapshot"
    );
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    server.compact();
    let (code, reason, _) = api_error(
        pairs
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .expect_err("expired"),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    let all: Vec<RedisPair> = watcher(pairs.clone(), watcher::Config::default().page_size(2))
        .default_backoff()
        .applied_objects()
        .take(6)
        .try_collect()
        .await
        .expect("a paginated initial list");
    assert_eq!(all.len(), 6);
}
