use super::*;
use crate::controller::validate::InvalidReason;
use crate::engine::Reason;
use crate::engine::runner::{FailoverRecord, Health, ServerStatus};

fn ep(last: u8) -> Endpoint {
    Endpoint::new(format!("10.0.0.{last}"), 6379)
}

fn server(last: u8, role: Option<Role>, master: Option<u8>, link_up: bool) -> ServerStatus {
    ServerStatus {
        address: ep(last),
        health: if role.is_some() {
            Health::Up
        } else {
            Health::Down
        },
        role,
        master: master.map(ep),
        link_up: role.filter(|r| *r == Role::Replica).map(|_| link_up),
        offset: role.map(|_| 100),
        lag_bytes: (role == Some(Role::Replica)).then_some(7),
        priority: role.map(|_| 100),
        keys: role.map(|_| 1),
        run_id: role.map(|_| format!("run-{last}")),
        failure: None,
        error: None,
        warnings: Vec::new(),
    }
}

fn engine(master: Option<u8>, servers: Vec<ServerStatus>) -> Status {
    Status {
        master: master.map(ep),
        epoch: 4,
        servers,
        last_failover: None,
        waiting: None,
        paused: false,
    }
}

fn pods() -> PodIndex {
    PodIndex::from([
        (ep(1), "redis-0".to_owned()),
        (ep(2), "redis-1".to_owned()),
        (ep(3), "redis-2".to_owned()),
    ])
}

fn view(pods: PodIndex) -> PairView {
    PairView {
        pods,
        generation: Some(3),
        ..PairView::default()
    }
}

/// What the engine published: its master, with the identity it had then.
fn published_of(engine: &Status) -> Published {
    Published {
        epoch: engine.epoch,
        master: engine.master.clone(),
        run_id: Some("published-run".into()),
        replid: Some("published-replid".into()),
        replid2: None,
    }
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("a time")
}

fn healthy() -> Status {
    engine(
        Some(1),
        vec![
            server(1, Some(Role::Master), None, false),
            server(2, Some(Role::Replica), Some(1), true),
        ],
    )
}

fn build(engine: &Status, previous: &RedisPairStatus, now: i64) -> RedisPairStatus {
    running(
        engine,
        &view(pods()),
        &published_of(engine),
        previous,
        at(now),
    )
}

fn condition_of<'a>(status: &'a RedisPairStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {status:?}"))
}

#[test]
fn a_master_with_every_replica_in_sync_is_healthy_and_named_by_pod() {
    let status = build(&healthy(), &RedisPairStatus::default(), 100);
    assert_eq!(status.phase, Some(Phase::Healthy));
    let master = status.master.as_ref().expect("master");
    assert_eq!(
        (master.pod.as_str(), master.endpoint.as_str()),
        ("redis-0", "10.0.0.1:6379")
    );
    // The published identity, not the probe's (`run-1`): a restart is judged against it.
    assert_eq!(master.run_id.as_deref(), Some("published-run"));
    assert_eq!(status.replicas.len(), 1);
    assert_eq!(status.replicas[0].pod, "redis-1");
    assert!(status.replicas[0].link_up);
    assert_eq!(status.replicas[0].lag_bytes, Some(7));
    assert_eq!(status.replicas_in_sync.as_deref(), Some("1/1"));
    assert_eq!(status.epoch, Some(4));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(condition_of(&status, MASTER_AVAILABLE).status, "True");
    assert_eq!(condition_of(&status, REPLICAS_IN_SYNC).status, "True");
    assert_eq!(condition_of(&status, VALID).status, "True");
}

#[test]
fn a_replica_down_or_out_of_sync_makes_the_pair_degraded() {
    let down = engine(
        Some(1),
        vec![
            server(1, Some(Role::Master), None, false),
            server(2, None, None, false),
        ],
    );
    let status = build(&down, &RedisPairStatus::default(), 100);
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(status.replicas_in_sync.as_deref(), Some("0/1"));
    assert_eq!(condition_of(&status, REPLICAS_IN_SYNC).reason, "NotInSync");
    let lonely = engine(Some(1), vec![server(1, Some(Role::Master), None, false)]);
    let status = build(&lonely, &RedisPairStatus::default(), 100);
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(condition_of(&status, REPLICAS_IN_SYNC).reason, "NoReplica");
}

#[test]
fn no_master_and_paused_are_phases_of_their_own() {
    let mut none = engine(None, vec![server(1, None, None, false)]);
    none.waiting = Some("no server is answering".into());
    let status = build(&none, &RedisPairStatus::default(), 100);
    assert_eq!(status.phase, Some(Phase::NoMaster));
    assert_eq!(status.message.as_deref(), Some("no server is answering"));
    assert_eq!(status.master, None);
    let mut paused = healthy();
    paused.paused = true;
    assert_eq!(
        build(&paused, &RedisPairStatus::default(), 100).phase,
        Some(Phase::Paused)
    );
}

#[test]
fn a_rejected_password_is_said_plainly_and_names_the_pods() {
    let mut world = healthy();
    world.servers[1] = server(2, None, None, false);
    world.servers[1].failure = Some(FailureKind::AuthFailed);
    world.servers[1].error = Some("auth-failed: WRONGPASS invalid username-password pair".into());
    world.waiting = Some("something else".into());
    let status = build(&world, &RedisPairStatus::default(), 100);
    let message = status.message.unwrap_or_default();
    assert!(message.contains("redis-1"), "{message}");
    assert!(message.contains("spec.authSecretRef"), "{message}");
}

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_changes() {
    let first = build(&healthy(), &RedisPairStatus::default(), 100);
    let again = build(&healthy(), &first, 200);
    assert_eq!(
        condition_of(&again, MASTER_AVAILABLE).last_transition_time,
        Time(at(100))
    );
    assert_eq!(first, again, "nothing changed, nothing to write");
    let down = engine(
        Some(1),
        vec![
            server(1, None, None, false),
            server(2, Some(Role::Replica), Some(1), false),
        ],
    );
    let later = build(&down, &again, 300);
    let available = condition_of(&later, MASTER_AVAILABLE);
    assert_eq!(available.status, "False");
    assert_eq!(available.last_transition_time, Time(at(300)));
    assert_eq!(
        condition_of(&later, VALID).last_transition_time,
        Time(at(100))
    );
}

#[test]
fn the_last_failover_names_pods_and_survives_an_engine_restart() {
    let mut failed_over = healthy();
    failed_over.last_failover = Some(FailoverRecord {
        from: Some(ep(2)),
        to: Some(ep(1)),
        reason: Reason::MasterDown,
        epoch: 4,
        unix_ms: 1_700_000_000_000,
    });
    let status = build(&failed_over, &RedisPairStatus::default(), 100);
    let last = status.last_failover.clone().expect("a failover");
    assert_eq!(
        (
            last.from.as_deref(),
            last.to.as_deref(),
            last.reason.as_str()
        ),
        (Some("redis-1"), Some("redis-0"), "master-down")
    );
    assert_eq!(last.time, Time(at(1_700_000_000)));
    let restarted = build(&healthy(), &status, 200);
    assert_eq!(restarted.last_failover, Some(last.clone()));
    // The old master's pod deleted: the name written while it was there stays.
    let mut without_it = pods();
    without_it.remove(&ep(2));
    let later = running(
        &failed_over,
        &view(without_it),
        &published_of(&failed_over),
        &status,
        at(300),
    );
    assert_eq!(later.last_failover, Some(last));
}

#[test]
fn an_invalid_pair_keeps_what_was_published_and_says_why() {
    let before = build(&healthy(), &RedisPairStatus::default(), 100);
    let problem = Invalid {
        reason: InvalidReason::SecretMissing,
        message: "Secret redis-auth does not exist".into(),
    };
    let status = invalid(&problem, Some(5), &before, at(200));
    assert_eq!(status.phase, Some(Phase::Invalid));
    assert_eq!(status.master, before.master);
    assert_eq!(status.epoch, before.epoch);
    assert_eq!(status.observed_generation, Some(5));
    let valid = condition_of(&status, VALID);
    assert_eq!(
        (valid.status.as_str(), valid.reason.as_str()),
        ("False", "SecretMissing")
    );
    assert_eq!(valid.last_transition_time, Time(at(200)));
}

#[test]
fn labels_mark_the_master_and_its_answering_replicas_only() {
    let world = engine(
        Some(1),
        vec![
            server(1, Some(Role::Master), None, false),
            server(2, Some(Role::Replica), Some(1), true),
            server(3, None, None, false),
        ],
    );
    let labels = role_labels(&world, &pods());
    assert_eq!(labels["redis-0"], Some("master"));
    assert_eq!(labels["redis-1"], Some("replica"));
    assert_eq!(labels["redis-2"], None);
    let no_master = engine(
        None,
        vec![
            server(1, Some(Role::Master), None, false),
            server(2, Some(Role::Replica), Some(1), true),
        ],
    );
    let labels = role_labels(&no_master, &pods());
    assert_eq!(
        labels["redis-0"], None,
        "an unpublished master is no master"
    );
    assert_eq!(labels["redis-1"], None);
}

#[test]
fn a_master_at_maxclients_is_reported_as_such_never_as_a_wrong_password() {
    let mut full = healthy();
    full.servers[0].health = Health::Failing;
    full.servers[0].role = None;
    full.servers[0].failure = Some(FailureKind::MaxClients);
    full.servers[0].error = Some(
        "max-clients: ERR max number of clients reached: it refuses new connections \
         (maxclients); redis-pair cannot manage it"
            .into(),
    );
    let status = build(&full, &RedisPairStatus::default(), 100);
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("redis-0") && message.contains("maxclients"),
        "{message}"
    );
    assert!(!message.contains("password"), "{message}");
    let available = condition_of(&status, MASTER_AVAILABLE);
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "MaxClients")
    );
    assert!(
        available.message.contains("maxclients"),
        "{}",
        available.message
    );
    // Still the published master: nothing was failed over.
    assert_eq!(status.master.map(|m| m.pod), Some("redis-0".into()));
}

#[test]
fn a_wrong_password_is_still_told_apart() {
    let mut rejected = healthy();
    rejected.servers[1].health = Health::Failing;
    rejected.servers[1].role = None;
    rejected.servers[1].failure = Some(FailureKind::AuthFailed);
    rejected.servers[1].error = Some("auth-failed: WRONGPASS invalid password".into());
    let status = build(&rejected, &RedisPairStatus::default(), 100);
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("password") && message.contains("redis-1"),
        "{message}"
    );
    assert!(!message.contains("maxclients"), "{message}");
}
