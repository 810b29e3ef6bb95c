use super::*;

const UID: Option<&str> = Some("uid-1");

fn ep(text: &str) -> Endpoint {
    text.parse().expect("an endpoint")
}

fn publication(epoch: u64, master: Option<&str>) -> Result<Option<Published>, AnnotationError> {
    Ok(Some(Published {
        epoch,
        master: master.map(ep),
        run_id: None,
        replid: None,
        replid2: None,
    }))
}

/// A route that followed `master` at `epoch` and whose ROLE check said `master`.
fn verified(epoch: u64, master: &str) -> Route {
    let mut route = Route::new();
    route.observe_pair(UID, publication(epoch, Some(master)));
    answer(&mut route, Ok(Role::Master));
    route.settle();
    route
}

/// Answers the check `route` asks for with `answer`.
fn answer(route: &mut Route, answer: RoleAnswer) -> Option<Duration> {
    let check = route.check().expect("a check to run");
    route.role_checked(check.id, answer)
}

fn routed(route: &Route) -> Option<String> {
    route.published().master.map(|m| m.to_string())
}

#[test]
fn nothing_is_routed_before_a_publication() {
    let mut route = Route::new();
    assert_eq!(route.settle(), None);
    assert_eq!(route.published(), Published::default());
    assert_eq!(route.check(), None);
    assert_eq!(route.readiness(), Err(NotReady::NothingPublished));
    assert_eq!(route.observe_pair(UID, Ok(None)), Observed::Unpublished);
    assert_eq!(route.settle(), None);
    assert_eq!(route.readiness(), Err(NotReady::NothingPublished));
}

#[test]
fn a_published_master_is_routed_only_once_role_says_master() {
    let mut route = Route::new();
    assert_eq!(
        route.observe_pair(UID, publication(3, Some("10.0.0.1:6379"))),
        Observed::Publication(PublicationOutcome::Followed)
    );
    assert_eq!(route.settle(), None, "not routed before its ROLE check");
    assert!(matches!(
        route.readiness(),
        Err(NotReady::Unverified { last: None, .. })
    ));
    let check = route.check().expect("a check");
    assert_eq!(check.endpoint, ep("10.0.0.1:6379"));
    assert_eq!(
        route.role_checked(check.id, Ok(Role::Master)),
        Some(CHECK_PERIOD)
    );
    assert_eq!(
        route.settle(),
        Some(Change {
            reason: RouteChange::Verified,
            to: Some(ep("10.0.0.1:6379")),
            generation: 1
        })
    );
    assert_eq!(route.readiness(), Ok(()));
    assert!(route.verified());
    assert_eq!(route.cluster_epoch(), Some(3));
    assert_eq!(
        route.published(),
        Published {
            epoch: 1,
            master: Some(ep("10.0.0.1:6379")),
            run_id: None,
            replid: None,
            replid2: None,
        }
    );
    assert_eq!(
        route.settle(),
        None,
        "a settled route does not change again"
    );
}

#[test]
fn a_newer_epoch_unroutes_the_old_master_at_once_and_routes_the_new_once_verified() {
    let mut route = verified(3, "10.0.0.1:6379");
    assert_eq!(
        route.observe_pair(UID, publication(4, Some("10.0.0.2:6379"))),
        Observed::Publication(PublicationOutcome::Followed)
    );
    assert_eq!(
        route.settle(),
        Some(Change {
            reason: RouteChange::Superseded,
            to: None,
            generation: 2
        })
    );
    let check = route.check().expect("a check");
    assert_eq!(check.endpoint, ep("10.0.0.2:6379"));
    route.role_checked(check.id, Ok(Role::Master));
    assert_eq!(
        route.settle().map(|c| (c.reason, c.generation)),
        Some((RouteChange::Verified, 3))
    );
    assert_eq!(routed(&route).as_deref(), Some("10.0.0.2:6379"));
    assert_eq!(route.cluster_epoch(), Some(4));
}

#[test]
fn the_same_master_republished_under_a_newer_epoch_is_a_new_route() {
    // A restarted master republished (a new incarnation): pinned connections to the old one
    // must close, as in local mode, so the generation rises twice.
    let mut route = verified(3, "10.0.0.1:6379");
    route.observe_pair(UID, publication(4, Some("10.0.0.1:6379")));
    assert_eq!(route.settle().map(|c| c.generation), Some(2));
    answer(&mut route, Ok(Role::Master));
    assert_eq!(route.settle().map(|c| c.generation), Some(3));
}

#[test]
fn a_lower_epoch_is_ignored() {
    let mut route = verified(5, "10.0.0.1:6379");
    assert_eq!(
        route.observe_pair(UID, publication(4, Some("10.0.0.2:6379"))),
        Observed::Publication(PublicationOutcome::Stale)
    );
    assert_eq!(route.settle(), None);
    assert_eq!(routed(&route).as_deref(), Some("10.0.0.1:6379"));
    assert_eq!(route.cluster_epoch(), Some(5));
    assert_eq!(route.check().map(|c| c.endpoint), Some(ep("10.0.0.1:6379")));
    // A lower epoch naming no master is ignored just the same.
    assert_eq!(
        route.observe_pair(UID, publication(1, None)),
        Observed::Publication(PublicationOutcome::Stale)
    );
    assert_eq!(route.settle(), None);
}

#[test]
fn the_held_epoch_is_unchanged_with_the_same_master_and_a_conflict_with_another() {
    let mut route = verified(5, "10.0.0.1:6379");
    assert_eq!(
        route.observe_pair(UID, publication(5, Some("10.0.0.1:6379"))),
        Observed::Publication(PublicationOutcome::Unchanged)
    );
    assert_eq!(
        route.observe_pair(UID, publication(5, Some("10.0.0.2:6379"))),
        Observed::Publication(PublicationOutcome::Conflict)
    );
    assert_eq!(
        route.observe_pair(UID, publication(5, None)),
        Observed::Publication(PublicationOutcome::Conflict)
    );
    assert_eq!(route.settle(), None);
    assert_eq!(routed(&route).as_deref(), Some("10.0.0.1:6379"));
}

#[test]
fn an_empty_active_annotation_means_no_master() {
    let mut route = verified(5, "10.0.0.1:6379");
    route.observe_pair(UID, publication(6, None));
    assert_eq!(
        route.settle(),
        Some(Change {
            reason: RouteChange::NoMaster,
            to: None,
            generation: 2
        })
    );
    assert_eq!(route.check(), None, "nothing to check");
    assert_eq!(route.readiness(), Err(NotReady::NoMaster { epoch: 6 }));
    assert_eq!(route.cluster_epoch(), Some(6));
}

#[test]
fn a_replica_is_refused_whether_new_or_verified_and_routed_again_when_master() {
    // Published, but it says replica (a stale annotation naming a replica).
    let mut route = Route::new();
    route.observe_pair(UID, publication(2, Some("10.0.0.2:6379")));
    assert_eq!(answer(&mut route, Ok(Role::Replica)), Some(CHECK_PERIOD));
    assert_eq!(route.settle(), None, "never routed");
    assert_eq!(
        route.readiness(),
        Err(NotReady::Replica {
            master: ep("10.0.0.2:6379"),
            epoch: 2
        })
    );
    assert!(route.check().is_some(), "it is asked again");

    // Verified, then demoted without a new publication.
    let mut route = verified(2, "10.0.0.1:6379");
    answer(&mut route, Ok(Role::Replica));
    assert_eq!(
        route.settle(),
        Some(Change {
            reason: RouteChange::Replica,
            to: None,
            generation: 2
        })
    );
    assert!(!route.verified());
    // The engine promotes a published master it finds as a replica back: same epoch, routed
    // again, under a new generation.
    answer(&mut route, Ok(Role::Master));
    assert_eq!(
        route.settle(),
        Some(Change {
            reason: RouteChange::Verified,
            to: Some(ep("10.0.0.1:6379")),
            generation: 3
        })
    );
}

#[test]
fn a_failed_check_keeps_a_verified_master_routed() {
    for kind in [
        FailureKind::Refused,
        FailureKind::Timeout,
        FailureKind::AuthFailed,
        FailureKind::Error,
    ] {
        let mut route = verified(2, "10.0.0.1:6379");
        assert_eq!(answer(&mut route, Err(kind)), Some(CHECK_PERIOD));
        assert_eq!(route.settle(), None, "{kind:?}");
        assert_eq!(routed(&route).as_deref(), Some("10.0.0.1:6379"));
        assert_eq!(route.readiness(), Ok(()));
    }
}

#[test]
fn a_failed_check_keeps_a_refused_server_refused() {
    let mut route = verified(2, "10.0.0.1:6379");
    answer(&mut route, Ok(Role::Replica));
    route.settle();
    answer(&mut route, Err(FailureKind::Refused));
    assert_eq!(route.settle(), None);
    assert!(matches!(route.readiness(), Err(NotReady::Replica { .. })));
}

#[test]
fn an_unverified_master_is_retried_quickly_then_every_period() {
    let mut route = Route::new();
    route.observe_pair(UID, publication(1, Some("10.0.0.1:6379")));
    let delays: Vec<Duration> = (0..8)
        .map(|_| answer(&mut route, Err(FailureKind::Refused)).expect("held"))
        .collect();
    assert_eq!(
        delays,
        [50, 100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis)
    );
    assert_eq!(route.settle(), None);
    assert_eq!(
        route.readiness(),
        Err(NotReady::Unverified {
            master: ep("10.0.0.1:6379"),
            epoch: 1,
            last: Some(FailureKind::Refused)
        })
    );
    // Many failures later a master answer still routes it.
    for _ in 0..100 {
        answer(&mut route, Err(FailureKind::Timeout));
    }
    answer(&mut route, Ok(Role::Master));
    assert_eq!(
        route.settle().map(|c| c.reason),
        Some(RouteChange::Verified)
    );
}

#[test]
fn an_answer_for_a_superseded_candidate_is_ignored() {
    let mut route = Route::new();
    route.observe_pair(UID, publication(1, Some("10.0.0.1:6379")));
    let old = route.check().expect("a check");
    route.observe_pair(UID, publication(2, Some("10.0.0.2:6379")));
    assert_eq!(route.role_checked(old.id, Ok(Role::Master)), None);
    assert_eq!(
        route.settle(),
        None,
        "the old master's answer must not route anything"
    );

    // Even for the same server republished: the answer was about the old incarnation.
    let mut route = Route::new();
    route.observe_pair(UID, publication(1, Some("10.0.0.1:6379")));
    let old = route.check().expect("a check");
    route.observe_pair(UID, publication(2, Some("10.0.0.1:6379")));
    assert_ne!(route.check().map(|c| c.id), Some(old.id));
    assert_eq!(route.role_checked(old.id, Ok(Role::Master)), None);
    assert_eq!(route.settle(), None);
}

#[test]
fn malformed_annotations_keep_the_route_and_are_reported_once_per_value() {
    let mut route = verified(3, "10.0.0.1:6379");
    let bad = || Err(AnnotationError::Epoch("three".into()));
    assert_eq!(
        route.observe_pair(UID, bad()),
        Observed::Malformed { first: true }
    );
    assert_eq!(
        route.observe_pair(UID, bad()),
        Observed::Malformed { first: false }
    );
    assert_eq!(
        route.observe_pair(UID, Err(AnnotationError::Active("nowhere".into()))),
        Observed::Malformed { first: true }
    );
    assert_eq!(route.settle(), None);
    assert_eq!(routed(&route).as_deref(), Some("10.0.0.1:6379"));
    assert_eq!(route.readiness(), Ok(()));
    // Good again, then bad again: reported again.
    route.observe_pair(UID, publication(3, Some("10.0.0.1:6379")));
    assert_eq!(
        route.observe_pair(UID, bad()),
        Observed::Malformed { first: true }
    );

    // Before anything was held, readiness says what is wrong.
    let mut route = Route::new();
    route.observe_pair(UID, bad());
    assert_eq!(
        route.readiness(),
        Err(NotReady::Malformed(
            AnnotationError::Epoch("three".into()).to_string()
        ))
    );
}

#[test]
fn a_deleted_pair_keeps_the_route_and_a_recreated_one_starts_its_epochs_over() {
    let mut route = verified(7, "10.0.0.1:6379");
    assert!(route.pair_missing());
    assert!(!route.pair_missing(), "reported once");
    assert!(!route.pair_found());
    assert_eq!(route.settle(), None);
    assert_eq!(route.readiness(), Ok(()));
    assert_eq!(routed(&route).as_deref(), Some("10.0.0.1:6379"));

    // Created again (a new uid), nothing published yet: the old route stands.
    assert_eq!(
        route.observe_pair(Some("uid-2"), Ok(None)),
        Observed::Unpublished
    );
    assert!(route.pair_found());
    assert_eq!(route.settle(), None);
    // Its controller starts from epoch 1: followed, although lower than 7.
    assert_eq!(
        route.observe_pair(Some("uid-2"), publication(1, Some("10.0.0.2:6379"))),
        Observed::Publication(PublicationOutcome::Followed)
    );
    assert_eq!(
        route.settle().map(|c| c.reason),
        Some(RouteChange::Superseded)
    );
    assert_eq!(route.cluster_epoch(), Some(1));
    // And from then on its epochs bind.
    answer(&mut route, Ok(Role::Master));
    route.settle();
    assert_eq!(
        route.observe_pair(Some("uid-2"), publication(0, Some("10.0.0.1:6379"))),
        Observed::Publication(PublicationOutcome::Stale)
    );
}

#[test]
fn a_pair_missing_before_anything_was_held_is_not_ready() {
    let mut route = Route::new();
    assert!(route.pair_missing());
    assert_eq!(route.readiness(), Err(NotReady::PairMissing));
}

#[test]
fn the_generation_rises_with_every_route_change_and_only_then() {
    // A scripted history; the generation must count the changes of the routed master exactly.
    let mut route = Route::new();
    let mut last_routed = None;
    let mut changes = 0;
    let mut step = |route: &mut Route| {
        let change = route.settle();
        let now = route.published();
        if now.master != last_routed {
            changes += 1;
            last_routed = now.master.clone();
            assert_eq!(change.map(|c| c.generation), Some(changes));
        } else {
            assert_eq!(change, None);
        }
        assert_eq!(now.epoch, changes);
    };
    route.observe_pair(UID, publication(1, Some("10.0.0.1:6379")));
    step(&mut route);
    answer(&mut route, Err(FailureKind::Refused));
    step(&mut route);
    answer(&mut route, Ok(Role::Master));
    step(&mut route);
    answer(&mut route, Ok(Role::Master));
    step(&mut route);
    route.observe_pair(UID, publication(2, Some("10.0.0.2:6379")));
    step(&mut route);
    answer(&mut route, Ok(Role::Replica));
    step(&mut route);
    answer(&mut route, Ok(Role::Master));
    step(&mut route);
    route.observe_pair(UID, publication(3, None));
    step(&mut route);
    route.observe_pair(UID, publication(4, Some("10.0.0.1:6379")));
    step(&mut route);
    answer(&mut route, Ok(Role::Master));
    step(&mut route);
    assert_eq!(route.published().epoch, 5);
}

#[test]
fn retries_never_overflow() {
    assert_eq!(retry_after(0), FIRST_RETRY);
    assert_eq!(retry_after(1), FIRST_RETRY);
    assert_eq!(retry_after(u32::MAX), CHECK_PERIOD);
}
