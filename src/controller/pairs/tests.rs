//! Engines and leadership terms, against the project's test API server (the engines' members
//! are an address where nothing listens: these tests are about which engines run, not about
//! Redis).

use std::time::Duration;

use super::*;
use crate::controller::test_api::{PAIR, api_server};
use crate::engine::runner::Member;
use crate::engine::{Fencing, Policy};

fn desired() -> Desired {
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    Desired {
        members: vec![super::super::validate::PodMember {
            pod: "cache-0".into(),
            member: Member::at(nowhere),
        }],
        settings: Settings {
            policy: Policy {
                down_after: Duration::from_secs(5),
                fencing: Fencing::Off,
            },
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            switchover_timeout: Duration::from_secs(5),
            paused: false,
            password: None,
        },
        published: None,
    }
}

fn pairs(client: Client, leadership: Leadership) -> (Pairs, impl Sized) {
    let (events, queued) = EventSink::new();
    let pairs = Pairs::new(Shared {
        client,
        leadership,
        events,
        engine_metrics: EngineMetrics::register(&mut crate::metrics::registry(), false),
        metrics: ControllerMetrics::default(),
    });
    (pairs, queued)
}

/// Failure 8: the lease is lost and comes back while the engines of the ended term are still
/// being stopped; the reconcile of the new term gets to this pair first. Its engine must run
/// at the end, not wait for the 30 s resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_of_the_new_term_survives_the_stop_of_the_term_that_ended() {
    let (_server, client, pair) = api_server().await.unwrap_or_else(|e| panic!("{e}"));
    let (leadership, set_leader) = Leadership::by_hand();
    let (pairs, _events) = pairs(client, leadership.clone());
    let key = PairKey::of(&pair);
    set_leader(true);
    pairs
        .apply(&pair, desired(), &[])
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(pairs.is_running(&key).await);

    set_leader(false);
    let ended = leadership.term();
    set_leader(true);
    assert!(leadership.term() > ended, "a new term");
    // The new term's reconcile reaches the pair before the stop of the ended one does.
    pairs
        .apply(&pair, desired(), &[])
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    pairs.stop_term(ended).await;
    assert!(
        pairs.is_running(&key).await,
        "the pair was left without an engine"
    );
    pairs.stop_all().await;
    assert!(!pairs.is_running(&key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_stops_the_engines_of_that_term_and_the_next_reconcile_starts_one() {
    let (_server, client, pair) = api_server().await.unwrap_or_else(|e| panic!("{e}"));
    let (leadership, set_leader) = Leadership::by_hand();
    let (pairs, _events) = pairs(client, leadership.clone());
    let key = PairKey::of(&pair);
    set_leader(true);
    pairs
        .apply(&pair, desired(), &[])
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    set_leader(false);
    pairs.stop_term(leadership.term()).await;
    assert!(!pairs.is_running(&key).await, "outlived its term");
    set_leader(true);
    pairs
        .apply(&pair, desired(), &[])
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    assert!(pairs.is_running(&key).await);
    pairs.stop_all().await;
}

/// A new leader starts its engine from the publication's persisted identity, not from a
/// probe (the first thing a restarted master would fool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_starts_from_the_published_run_id_and_replid() {
    let (_server, client, pair) = api_server().await.unwrap_or_else(|e| panic!("{e}"));
    let api: Api<RedisPair> = Api::namespaced(client.clone(), "default");
    let patch = json!({"metadata": {"annotations": {
        crd::EPOCH_ANNOTATION: "7",
        crd::ACTIVE_ANNOTATION: "127.0.0.1:1",
        crd::MASTER_RUN_ID_ANNOTATION: "run-of-the-published-master",
        crd::MASTER_REPLID_ANNOTATION: "its-history",
    }}});
    api.patch(
        PAIR,
        &PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("annotate: {e}"));
    let (leadership, set_leader) = Leadership::by_hand();
    let (pairs, _events) = pairs(client, leadership);
    set_leader(true);
    pairs
        .apply(&pair, desired(), &[])
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let slot = pairs.slot(&PairKey::of(&pair));
    let published = slot
        .lock()
        .await
        .as_ref()
        .map(|runtime| runtime.handle.published.borrow().clone());
    let published = published.unwrap_or_else(|| panic!("no engine"));
    assert_eq!(published.epoch, 7);
    assert_eq!(
        published.run_id.as_deref(),
        Some("run-of-the-published-master")
    );
    assert_eq!(published.replid.as_deref(), Some("its-history"));
    pairs.stop_all().await;
}
