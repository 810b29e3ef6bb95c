use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::crd::{ACTIVE_ANNOTATION, EPOCH_ANNOTATION, RedisPairSpec};
use crate::engine::Endpoint;

fn pair(name: &str, spec: serde_json::Value) -> RedisPair {
    let spec: RedisPairSpec = serde_json::from_value(spec).expect("a spec");
    let mut pair = RedisPair::new(name, spec);
    pair.metadata.namespace = Some("apps".into());
    pair
}

fn cache_pair() -> RedisPair {
    pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}}}),
    )
}

fn pod(name: &str, app: &str, ip: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            labels: Some(BTreeMap::from([("app".into(), app.into())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some(if ip.is_some() { "Running" } else { "Pending" }.into()),
            pod_ip: ip.map(str::to_owned),
            ..PodStatus::default()
        }),
    }
}

fn check(pair: &RedisPair, pods: &[Pod], others: &[RedisPair]) -> Result<Desired, Invalid> {
    check_with(pair, pods, others, SecretLookup::NotReferenced, false)
}

fn check_with(
    pair: &RedisPair,
    pods: &[Pod],
    others: &[RedisPair],
    secret: SecretLookup<'_>,
    running: bool,
) -> Result<Desired, Invalid> {
    let pods: Vec<&Pod> = pods.iter().collect();
    let others: Vec<&RedisPair> = others.iter().collect();
    validate(&Observed {
        pair,
        pods: &pods,
        others: &others,
        secret,
        running,
    })
}

fn reason(result: Result<Desired, Invalid>) -> InvalidReason {
    match result {
        Ok(desired) => panic!("expected invalid, got {desired:?}"),
        Err(invalid) => invalid.reason,
    }
}

fn two_pods() -> Vec<Pod> {
    vec![
        pod("cache-0", "cache", Some("10.0.0.1")),
        pod("cache-1", "cache", Some("10.0.0.2")),
    ]
}

#[test]
fn pods_matching_the_selector_become_members_at_their_ip_and_port() {
    let mut pods = two_pods();
    pods.push(pod("web-0", "web", Some("10.0.0.9")));
    let desired = check(&cache_pair(), &pods, &[]).expect("valid");
    let members: Vec<(String, String)> = desired
        .members
        .iter()
        .map(|m| (m.pod.clone(), m.member.endpoint.to_string()))
        .collect();
    assert_eq!(
        members,
        [
            ("cache-0".to_owned(), "10.0.0.1:6379".to_owned()),
            ("cache-1".to_owned(), "10.0.0.2:6379".to_owned())
        ]
    );
    assert!(desired.members.iter().all(|m| !m.member.leaving));
    assert_eq!(desired.published, None);
    assert_eq!(
        desired.settings.policy.fencing,
        Fencing::On { max_lag_secs: 2 }
    );
    assert_eq!(desired.settings.policy.down_after, Duration::from_secs(5));
}

#[test]
fn a_pod_being_deleted_is_a_leaving_member() {
    let mut pods = two_pods();
    pods[1].metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let desired = check(&cache_pair(), &pods, &[]).expect("valid");
    assert!(!desired.members[0].member.leaving);
    assert!(desired.members[1].member.leaving);
}

#[test]
fn no_pod_and_one_pod_are_invalid_and_name_the_selector() {
    let none = check(&cache_pair(), &[], &[]);
    let message = none.clone().err().map(|e| e.message).unwrap_or_default();
    assert!(message.contains("app=cache"), "{message}");
    assert_eq!(reason(none), InvalidReason::NoPods);
    let one = [pod("cache-0", "cache", Some("10.0.0.1"))];
    assert_eq!(
        reason(check(&cache_pair(), &one, &[])),
        InvalidReason::OnePod
    );
}

#[test]
fn a_pod_without_an_ip_holds_the_start_but_not_a_running_pair() {
    let pods = [
        pod("cache-0", "cache", Some("10.0.0.1")),
        pod("cache-1", "cache", None),
    ];
    assert_eq!(
        reason(check(&cache_pair(), &pods, &[])),
        InvalidReason::PodWithoutIP
    );
    // Running, a pod restarting (no IP yet) or gone is a membership change.
    let desired = check_with(&cache_pair(), &pods, &[], SecretLookup::NotReferenced, true)
        .expect("a running pair stays valid");
    assert_eq!(desired.members.len(), 1);
    let alone = check_with(
        &cache_pair(),
        &pods[..1],
        &[],
        SecretLookup::NotReferenced,
        true,
    );
    assert_eq!(alone.map(|d| d.members.len()), Ok(1));
}

#[test]
fn finished_pods_are_not_members() {
    let mut pods = two_pods();
    pods.push(pod("cache-2", "cache", Some("10.0.0.3")));
    if let Some(status) = pods[2].status.as_mut() {
        status.phase = Some("Failed".into());
    }
    let desired = check(&cache_pair(), &pods, &[]).expect("valid");
    assert_eq!(desired.members.len(), 2);
}

#[test]
fn pods_selected_by_another_pair_make_the_pair_invalid() {
    let other = pair(
        "sessions",
        serde_json::json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["cache", "sessions"]}
        ]}}),
    );
    let result = check(&cache_pair(), &two_pods(), &[other]);
    let message = result.clone().err().map(|e| e.message).unwrap_or_default();
    assert!(message.contains("sessions"), "{message}");
    assert_eq!(reason(result), InvalidReason::PodsOfAnotherPair);
}

#[test]
fn a_pair_in_another_namespace_selecting_the_same_labels_is_no_conflict() {
    let mut other = cache_pair();
    other.metadata.name = Some("elsewhere".into());
    other.metadata.namespace = Some("other".into());
    assert!(check(&cache_pair(), &two_pods(), &[other]).is_ok());
}

#[test]
fn an_empty_or_malformed_selector_is_invalid() {
    let empty = pair("cache", serde_json::json!({"selector": {}}));
    assert_eq!(
        reason(check(&empty, &two_pods(), &[])),
        InvalidReason::BadSelector
    );
    let bad = pair(
        "cache",
        serde_json::json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "Near", "values": ["cache"]}
        ]}}),
    );
    assert_eq!(
        reason(check(&bad, &two_pods(), &[])),
        InvalidReason::BadSelector
    );
}

#[test]
fn timings_that_cannot_work_are_invalid() {
    let slow_probe = pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}},
            "failover": {"probeTimeout": "6s", "downAfter": "5s"}}),
    );
    assert_eq!(
        reason(check(&slow_probe, &two_pods(), &[])),
        InvalidReason::BadTiming
    );
    // maxLagSeconds 2 + 2 s + probeInterval 500 ms = 4.5 s.
    let fence_outlasts = pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}},
            "failover": {"downAfter": "4s"}}),
    );
    let result = check(&fence_outlasts, &two_pods(), &[]);
    let message = result.clone().err().map(|e| e.message).unwrap_or_default();
    assert!(message.contains("maxLagSeconds"), "{message}");
    assert_eq!(reason(result), InvalidReason::BadTiming);
    let just_enough = pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}},
            "failover": {"downAfter": "4500ms"}}),
    );
    assert!(check(&just_enough, &two_pods(), &[]).is_ok());
    let fencing_off = pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}},
            "failover": {"downAfter": "2s"}, "fencing": {"enabled": false, "maxLagSeconds": 5}}),
    );
    let desired = check(&fencing_off, &two_pods(), &[]).expect("no fence, no rule");
    assert_eq!(desired.settings.policy.fencing, Fencing::Off);
}

fn secured_pair() -> RedisPair {
    pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}},
            "authSecretRef": {"name": "redis-auth"}}),
    )
}

fn secret(data: &[(&str, &[u8])]) -> Secret {
    Secret {
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[test]
fn the_password_comes_from_the_secret_key_without_its_line_end() {
    let s = secret(&[("password", b"s3cret\n")]);
    let desired = check_with(
        &secured_pair(),
        &two_pods(),
        &[],
        SecretLookup::Found(&s),
        false,
    )
    .expect("valid");
    assert_eq!(desired.settings.password.as_deref(), Some("s3cret"));
    let empty = secret(&[("password", b"\n")]);
    let desired = check_with(
        &secured_pair(),
        &two_pods(),
        &[],
        SecretLookup::Found(&empty),
        false,
    )
    .expect("valid");
    assert_eq!(desired.settings.password, None, "an empty password is none");
}

#[test]
fn a_missing_secret_or_key_is_invalid_and_says_which() {
    let missing = check_with(
        &secured_pair(),
        &two_pods(),
        &[],
        SecretLookup::Missing,
        true,
    );
    let message = missing.clone().err().map(|e| e.message).unwrap_or_default();
    assert!(message.contains("redis-auth"), "{message}");
    assert_eq!(reason(missing), InvalidReason::SecretMissing);
    let s = secret(&[("pass", b"s3cret")]);
    let no_key = check_with(
        &secured_pair(),
        &two_pods(),
        &[],
        SecretLookup::Found(&s),
        true,
    );
    assert_eq!(reason(no_key), InvalidReason::SecretKeyMissing);
    let binary = secret(&[("password", &[0xff, 0xfe])]);
    let not_utf8 = check_with(
        &secured_pair(),
        &two_pods(),
        &[],
        SecretLookup::Found(&binary),
        true,
    );
    assert_eq!(reason(not_utf8), InvalidReason::SecretKeyMissing);
}

#[test]
fn the_published_master_and_epoch_come_from_the_annotations() {
    let mut p = cache_pair();
    p.metadata.annotations = Some(BTreeMap::from([
        (EPOCH_ANNOTATION.to_owned(), "12".to_owned()),
        (ACTIVE_ANNOTATION.to_owned(), "10.0.0.2:6379".to_owned()),
    ]));
    let desired = check(&p, &two_pods(), &[]).expect("valid");
    let published = desired.published.expect("published");
    assert_eq!(published.epoch, 12);
    assert_eq!(published.master, Some(Endpoint::new("10.0.0.2", 6379)));
    p.metadata.annotations = Some(BTreeMap::from([(
        EPOCH_ANNOTATION.to_owned(),
        "twelve".to_owned(),
    )]));
    assert_eq!(
        reason(check(&p, &two_pods(), &[])),
        InvalidReason::BadAnnotation
    );
}

#[test]
fn the_port_of_the_spec_is_the_members_port() {
    let p = pair(
        "cache",
        serde_json::json!({"selector": {"matchLabels": {"app": "cache"}}, "port": 7000}),
    );
    let desired = check(&p, &two_pods(), &[]).expect("valid");
    assert_eq!(desired.members[0].member.endpoint.port(), 7000);
}
