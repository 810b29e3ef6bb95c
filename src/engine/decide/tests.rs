use std::time::Duration;

use proptest::prelude::*;

use super::*;

const DOWN_AFTER: Duration = Duration::from_secs(2);
const POLICY: Policy = Policy {
    down_after: DOWN_AFTER,
};

fn ep(port: u16) -> Endpoint {
    Endpoint::new("127.0.0.1", port)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A server as a probe saw it; starts as a healthy master with some data.
#[derive(Clone)]
struct Server(ServerState);

fn master(port: u16) -> Server {
    Server(ServerState {
        endpoint: ep(port),
        probe: Probe::Up(RedisInfo {
            role: Role::Master,
            run_id: format!("run-{port}"),
            master: None,
            link_up: false,
            synced: true,
            offset: 1000,
            priority: 100,
            keys: 10,
        }),
    })
}

fn replica(port: u16, of: u16) -> Server {
    master(port).replica_of(Some(of))
}

fn refused(port: u16) -> Server {
    failed(port, FailureKind::Refused, 0.0)
}

fn failed(port: u16, kind: FailureKind, since: f64) -> Server {
    Server(ServerState {
        endpoint: ep(port),
        probe: Probe::Failed {
            kind,
            since: secs(since),
        },
    })
}

impl Server {
    fn info(&mut self) -> &mut RedisInfo {
        match &mut self.0.probe {
            Probe::Up(info) => info,
            Probe::Failed { .. } => panic!("builder used on a failed server"),
        }
    }
    fn replica_of(mut self, of: Option<u16>) -> Self {
        let info = self.info();
        info.role = Role::Replica;
        info.master = of.map(ep);
        info.link_up = of.is_some();
        self
    }
    fn offset(mut self, offset: u64) -> Self {
        self.info().offset = offset;
        self
    }
    fn priority(mut self, priority: u32) -> Self {
        self.info().priority = priority;
        self
    }
    fn never_synced(mut self) -> Self {
        let info = self.info();
        info.link_up = false;
        info.synced = false;
        self
    }
    fn keys(mut self, keys: u64) -> Self {
        self.info().keys = keys;
        self
    }
    fn run_id(mut self, run_id: &str) -> Self {
        self.info().run_id = run_id.to_owned();
        self
    }
}

fn world(servers: &[Server]) -> Vec<ServerState> {
    servers.iter().map(|s| s.0.clone()).collect()
}

fn published(epoch: u64, master: Option<u16>) -> Published {
    Published {
        epoch,
        master: master.map(ep),
        run_id: master.map(|port| format!("run-{port}")),
    }
}

fn publishes(plan: &Plan) -> Option<(Option<u16>, u64, Reason)> {
    plan.publish
        .as_ref()
        .map(|(p, reason)| (p.master.as_ref().map(Endpoint::port), p.epoch, *reason))
}

fn decide_at(servers: &[Server], published: &Published, now: f64) -> Plan {
    decide(&world(servers), published, &POLICY, secs(now))
}

// ---- steady state -------------------------------------------------------------------------

#[test]
fn healthy_master_with_its_replica_needs_nothing() {
    let plan = decide_at(&[master(1), replica(2, 1)], &published(3, Some(1)), 10.0);
    assert!(plan.is_noop(), "{plan:?}");
    assert_eq!(plan.waiting, None);
}

#[test]
fn replica_with_broken_link_to_the_master_is_left_alone() {
    let mut lagging = replica(2, 1);
    lagging.info().link_up = false;
    let plan = decide_at(&[master(1), lagging], &published(3, Some(1)), 10.0);
    assert!(plan.is_noop(), "{plan:?}");
}

#[test]
fn returning_old_master_is_made_a_replica_of_the_published_master() {
    let plan = decide_at(
        &[master(1), replica(2, 1), master(3)],
        &published(4, Some(1)),
        10.0,
    );
    assert_eq!(plan.replicate, vec![(ep(3), ep(1))]);
    assert_eq!(plan.publish, None, "the published master does not change");
    assert_eq!(plan.promote, None);
}

#[test]
fn replica_of_a_foreign_master_is_repointed() {
    let plan = decide_at(
        &[master(1), replica(2, 1), master(3).replica_of(None)],
        &published(4, Some(1)),
        10.0,
    );
    assert_eq!(plan.replicate, vec![(ep(3), ep(1))]);
}

#[test]
fn published_master_found_as_replica_is_promoted_back() {
    let plan = decide_at(&[replica(1, 2), master(2)], &published(4, Some(1)), 10.0);
    assert_eq!(plan.promote, Some(ep(1)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(1))]);
    assert_eq!(plan.publish, None);
}

// ---- start-up -----------------------------------------------------------------------------

#[test]
fn start_up_publishes_the_existing_master_without_touching_anything() {
    let plan = decide_at(&[replica(1, 2), master(2)], &Published::default(), 0.0);
    assert_eq!(publishes(&plan), Some((Some(2), 1, Reason::Initial)));
    assert_eq!(plan.promote, None);
    assert!(plan.replicate.is_empty(), "{plan:?}");
    let (p, _) = plan.publish.as_ref().expect("published");
    assert_eq!(p.run_id.as_deref(), Some("run-2"));
}

#[test]
fn start_up_with_two_masters_keeps_the_one_with_more_keys() {
    let plan = decide_at(
        &[master(1).keys(5).offset(9000), master(2).keys(50).offset(0)],
        &Published::default(),
        0.0,
    );
    assert_eq!(publishes(&plan), Some((Some(2), 1, Reason::Initial)));
    assert_eq!(plan.replicate, vec![(ep(1), ep(2))]);
}

#[test]
fn start_up_with_two_equal_masters_breaks_the_tie_by_offset_then_address() {
    let by_offset = decide_at(
        &[master(1).offset(5), master(2).offset(6)],
        &Published::default(),
        0.0,
    );
    assert_eq!(publishes(&by_offset), Some((Some(2), 1, Reason::Initial)));
    let by_address = decide_at(&[master(2), master(1)], &Published::default(), 0.0);
    assert_eq!(publishes(&by_address), Some((Some(1), 1, Reason::Initial)));
}

#[test]
fn start_up_with_only_replicas_promotes_the_most_caught_up() {
    let plan = decide_at(
        &[
            refused(1),
            replica(2, 1).offset(10),
            replica(3, 1).offset(20),
        ],
        &Published::default(),
        0.0,
    );
    assert_eq!(plan.promote, Some(ep(3)));
    assert_eq!(publishes(&plan), Some((Some(3), 1, Reason::Initial)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(3))]);
}

#[test]
fn start_up_waits_for_a_server_that_is_not_answering_yet() {
    let servers = [failed(1, FailureKind::Timeout, 0.0), replica(2, 1)];
    let early = decide_at(&servers, &Published::default(), 1.0);
    assert!(early.is_noop());
    assert_eq!(early.waiting, Some(Waiting::ServersFailing));
    let late = decide_at(&servers, &Published::default(), 2.0);
    assert_eq!(late.promote, Some(ep(2)));
}

#[test]
fn start_up_with_nothing_up_waits_and_says_so() {
    let plan = decide_at(&[refused(1), refused(2)], &Published::default(), 0.0);
    assert!(plan.is_noop());
    assert_eq!(plan.waiting, Some(Waiting::NothingUp));
}

#[test]
fn start_up_with_only_priority_zero_replicas_promotes_nothing() {
    let plan = decide_at(
        &[refused(1), replica(2, 1).priority(0)],
        &Published::default(),
        0.0,
    );
    assert!(plan.is_noop());
    assert_eq!(plan.waiting, Some(Waiting::NoCandidate));
}

// ---- failure ------------------------------------------------------------------------------

#[test]
fn master_refusing_connections_is_down_at_once() {
    let plan = decide_at(&[refused(1), replica(2, 1)], &published(1, Some(1)), 0.0);
    assert_eq!(plan.promote, Some(ep(2)));
    assert_eq!(publishes(&plan), Some((Some(2), 2, Reason::MasterDown)));
}

#[test]
fn master_not_answering_is_down_only_after_down_after() {
    let servers = [failed(1, FailureKind::Timeout, 5.0), replica(2, 1)];
    let before = decide_at(&servers, &published(1, Some(1)), 6.99);
    assert!(before.is_noop(), "{before:?}");
    assert_eq!(
        before.waiting,
        Some(Waiting::MasterFailing { master: ep(1) })
    );
    let after = decide_at(&servers, &published(1, Some(1)), 7.0);
    assert_eq!(after.promote, Some(ep(2)));
    assert_eq!(publishes(&after), Some((Some(2), 2, Reason::MasterDown)));
}

#[test]
fn master_rejecting_our_password_is_down_after_down_after() {
    let servers = [failed(1, FailureKind::AuthFailed, 0.0), replica(2, 1)];
    assert!(decide_at(&servers, &published(1, Some(1)), 1.0).is_noop());
    assert_eq!(
        decide_at(&servers, &published(1, Some(1)), 2.0).promote,
        Some(ep(2))
    );
}

#[test]
fn failover_promotes_the_replica_with_the_highest_offset() {
    let plan = decide_at(
        &[
            refused(1),
            replica(2, 1).offset(500),
            replica(3, 1).offset(900).priority(200),
            replica(4, 1).offset(700).priority(1),
        ],
        &published(7, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, Some(ep(3)));
    assert_eq!(publishes(&plan), Some((Some(3), 8, Reason::MasterDown)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(3)), (ep(4), ep(3))]);
}

#[test]
fn equal_offsets_prefer_the_lower_priority_value_then_the_lower_address() {
    let by_priority = decide_at(
        &[
            refused(1),
            replica(2, 1).priority(50),
            replica(3, 1).priority(10),
        ],
        &published(1, Some(1)),
        0.0,
    );
    assert_eq!(by_priority.promote, Some(ep(3)));
    let by_address = decide_at(
        &[refused(1), replica(3, 1), replica(2, 1)],
        &published(1, Some(1)),
        0.0,
    );
    assert_eq!(by_address.promote, Some(ep(2)));
}

#[test]
fn priority_zero_replica_is_never_promoted() {
    let plan = decide_at(
        &[
            refused(1),
            replica(2, 1).priority(0).offset(9999),
            replica(3, 1).offset(1),
        ],
        &published(1, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, Some(ep(3)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(3))]);
}

#[test]
fn replica_that_never_completed_a_sync_is_never_promoted() {
    // A restarted, empty old master made a replica is still waiting for its first sync when
    // the current master hangs: promoting it would wipe the data everywhere.
    let plan = decide_at(
        &[
            failed(1, FailureKind::Timeout, 0.0),
            replica(2, 1).never_synced().keys(0),
        ],
        &published(3, Some(1)),
        5.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(publishes(&plan), Some((None, 4, Reason::NoMasterReachable)));
    let with_peer = decide_at(
        &[
            refused(1),
            replica(2, 1).never_synced().offset(5000),
            replica(3, 1).offset(1),
        ],
        &published(3, Some(1)),
        0.0,
    );
    assert_eq!(with_peer.promote, Some(ep(3)));
}

#[test]
fn master_down_with_no_candidate_publishes_no_master() {
    let plan = decide_at(
        &[refused(1), replica(2, 1).priority(0)],
        &published(1, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(publishes(&plan), Some((None, 2, Reason::NoMasterReachable)));
    assert_eq!(plan.waiting, Some(Waiting::NoCandidate));
}

#[test]
fn no_master_is_not_republished_while_nothing_changes() {
    let plan = decide_at(&[refused(1), refused(2)], &published(2, None), 30.0);
    assert!(plan.is_noop());
    assert_eq!(plan.waiting, Some(Waiting::NothingUp));
}

#[test]
fn first_server_back_after_all_were_down_is_published_as_recovered() {
    let plan = decide_at(&[refused(1), master(2)], &published(5, None), 30.0);
    assert_eq!(publishes(&plan), Some((Some(2), 6, Reason::Recovered)));
}

#[test]
fn published_master_missing_from_the_group_is_replaced() {
    let plan = decide_at(&[replica(2, 1), replica(3, 1)], &published(1, Some(1)), 0.0);
    assert_eq!(plan.promote, Some(ep(2)));
    assert_eq!(publishes(&plan), Some((Some(2), 2, Reason::MasterDown)));
}

#[test]
fn master_that_restarted_is_failed_over_so_its_replicas_keep_their_data() {
    let plan = decide_at(
        &[master(1).run_id("fresh").keys(0), replica(2, 1).keys(1000)],
        &published(1, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, Some(ep(2)));
    assert_eq!(
        publishes(&plan),
        Some((Some(2), 2, Reason::MasterRestarted))
    );
    assert_eq!(plan.replicate, vec![(ep(1), ep(2))]);
}

#[test]
fn master_that_restarted_with_no_replica_to_take_over_is_republished() {
    let plan = decide_at(
        &[master(1).run_id("fresh"), refused(2)],
        &published(1, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(
        publishes(&plan),
        Some((Some(1), 2, Reason::MasterRestarted))
    );
    let (p, _) = plan.publish.as_ref().expect("published");
    assert_eq!(p.run_id.as_deref(), Some("fresh"));
}

// ---- properties ---------------------------------------------------------------------------

const PORTS: std::ops::Range<u16> = 1..6;

fn arb_probe(ports: Vec<u16>) -> impl Strategy<Value = Probe> {
    let up = (
        any::<bool>(),
        proptest::option::of(proptest::sample::select(ports)),
        (any::<bool>(), any::<bool>()),
        0u64..4,
        prop_oneof![Just(0u32), Just(1), Just(100)],
        0u64..3,
        0u8..3,
    )
        .prop_map(
            |(is_master, master, (link_up, synced), offset, priority, keys, run)| {
                Probe::Up(RedisInfo {
                    role: if is_master {
                        Role::Master
                    } else {
                        Role::Replica
                    },
                    run_id: format!("run-{run}"),
                    master: if is_master { None } else { master.map(ep) },
                    link_up,
                    synced: is_master || link_up || synced,
                    offset,
                    priority,
                    keys,
                })
            },
        );
    let failed = (
        prop_oneof![
            Just(FailureKind::Refused),
            Just(FailureKind::Timeout),
            Just(FailureKind::AuthFailed),
            Just(FailureKind::Error),
        ],
        0u64..5,
    )
        .prop_map(|(kind, since)| Probe::Failed {
            kind,
            since: Duration::from_secs(since),
        });
    prop_oneof![3 => up, 1 => failed]
}

fn arb_world() -> impl Strategy<Value = (Vec<ServerState>, Published)> {
    proptest::sample::subsequence(PORTS.collect::<Vec<_>>(), 1..=5)
        .prop_flat_map(|ports| {
            let probes = ports
                .iter()
                .map(|_| arb_probe(PORTS.collect()))
                .collect::<Vec<_>>();
            let published = (
                0u64..5,
                proptest::option::of(proptest::sample::select(PORTS.collect::<Vec<_>>())),
                0u8..3,
            )
                .prop_map(|(epoch, master, run)| Published {
                    epoch,
                    master: master.map(ep),
                    run_id: master.map(|_| format!("run-{run}")),
                });
            (Just(ports), probes, published)
        })
        .prop_map(|(ports, probes, published)| {
            let servers = ports
                .into_iter()
                .zip(probes)
                .map(|(port, probe)| ServerState {
                    endpoint: ep(port),
                    probe,
                })
                .collect();
            (servers, published)
        })
}

const NOW: Duration = Duration::from_secs(5);

fn info_of<'a>(servers: &'a [ServerState], endpoint: &Endpoint) -> Option<&'a RedisInfo> {
    servers
        .iter()
        .find(|s| &s.endpoint == endpoint)
        .and_then(ServerState::info)
}

// Each property is a plain function over (world, publication, plan) so that the proptests
// (random worlds of up to five servers) and the exhaustive test (every world of two and three
// servers over a small domain) check exactly the same thing.

type Property = fn(&[ServerState], &Published, &Plan) -> Result<(), TestCaseError>;

const PROPERTIES: [(&str, Property); 4] = [
    (
        "a publication names one answering master under the next epoch",
        publication_names_one_answering_master,
    ),
    (
        "a promotion is the most caught-up eligible replica",
        promotion_is_the_most_caught_up_eligible_replica,
    ),
    (
        "every repointed server follows the master of the plan",
        repointed_servers_follow_the_master_of_the_plan,
    ),
    (
        "a healthy published master is never replaced",
        healthy_published_master_is_kept,
    ),
];

fn publication_names_one_answering_master(
    servers: &[ServerState],
    published: &Published,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    if let Some((next, _)) = &plan.publish {
        prop_assert_eq!(next.epoch, published.epoch + 1);
        match &next.master {
            Some(master) => {
                let info = info_of(servers, master);
                prop_assert!(info.is_some(), "published a server that is not up");
                let info = info.unwrap();
                prop_assert_eq!(next.run_id.as_deref(), Some(info.run_id.as_str()));
                // After the plan it is a master: it was one, or the plan promotes it.
                prop_assert!(info.role == Role::Master || plan.promote.as_ref() == Some(master));
            }
            None => {
                prop_assert!(published.master.is_some(), "'no master' republished");
                prop_assert!(plan.promote.is_none());
            }
        }
    }
    Ok(())
}

fn promotion_is_the_most_caught_up_eligible_replica(
    servers: &[ServerState],
    published: &Published,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Some(promoted) = &plan.promote else {
        return Ok(());
    };
    let info = info_of(servers, promoted);
    prop_assert!(info.is_some(), "promoted a server that is not up");
    let info = info.unwrap();
    prop_assert_eq!(info.role, Role::Replica);
    if published.master.as_ref() == Some(promoted) {
        return Ok(()); // re-asserting the published master, not a failover
    }
    prop_assert!(info.priority > 0, "promoted a priority-0 replica");
    prop_assert!(info.synced, "promoted a replica that never synced");
    let view = View {
        servers,
        policy: &POLICY,
        now: NOW,
    };
    for (endpoint, other) in view.up() {
        let eligible = is_promotable(other) && Some(endpoint) != published.master.as_ref();
        prop_assert!(
            !eligible || more_caught_up(&(promoted, info), &(endpoint, other)) != Ordering::Less,
            "{} is more caught up than the promoted {}",
            endpoint,
            promoted
        );
    }
    Ok(())
}

fn repointed_servers_follow_the_master_of_the_plan(
    servers: &[ServerState],
    published: &Published,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let master = plan
        .publish
        .as_ref()
        .map_or(published.master.as_ref(), |(next, _)| next.master.as_ref());
    for (server, target) in &plan.replicate {
        prop_assert_eq!(Some(target), master);
        prop_assert_ne!(server, target);
        prop_assert!(info_of(servers, server).is_some());
    }
    let mut unique = plan.replicate.clone();
    unique.dedup();
    prop_assert_eq!(unique.len(), plan.replicate.len());
    // And after the plan no other answering server is left as a master (unless the plan is to
    // wait: while the master is merely failing, nothing is touched).
    if let (Some(master), None) = (master, &plan.waiting) {
        for s in servers {
            if let Some(info) = s.info()
                && &s.endpoint != master
                && info.role == Role::Master
            {
                prop_assert!(
                    plan.replicate
                        .iter()
                        .any(|(server, _)| server == &s.endpoint)
                );
            }
        }
    }
    Ok(())
}

fn healthy_published_master_is_kept(
    servers: &[ServerState],
    published: &Published,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Some(master) = &published.master else {
        return Ok(());
    };
    let Some(info) = info_of(servers, master) else {
        return Ok(());
    };
    if info.role == Role::Master && published.run_id.as_deref() == Some(info.run_id.as_str()) {
        prop_assert_eq!(&plan.publish, &None);
        prop_assert_eq!(&plan.promote, &None);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn same_world_in_any_order_gives_the_same_plan(
        (servers, published) in arb_world(),
        seed in any::<u64>(),
    ) {
        let plan = decide(&servers, &published, &POLICY, NOW);
        prop_assert_eq!(&plan, &decide(&servers, &published, &POLICY, NOW));
        let mut shuffled = servers.clone();
        let len = shuffled.len();
        shuffled.rotate_left((seed as usize) % len);
        if seed % 2 == 0 { shuffled.reverse(); }
        prop_assert_eq!(plan, decide(&shuffled, &published, &POLICY, NOW));
    }

    #[test]
    fn a_publication_names_one_answering_master_under_the_next_epoch(
        (servers, published) in arb_world(),
    ) {
        let plan = decide(&servers, &published, &POLICY, NOW);
        publication_names_one_answering_master(&servers, &published, &plan)?;
    }

    #[test]
    fn a_promotion_is_the_most_caught_up_eligible_replica(
        (servers, published) in arb_world(),
    ) {
        let plan = decide(&servers, &published, &POLICY, NOW);
        promotion_is_the_most_caught_up_eligible_replica(&servers, &published, &plan)?;
    }

    #[test]
    fn every_repointed_server_follows_the_master_of_the_plan(
        (servers, published) in arb_world(),
    ) {
        let plan = decide(&servers, &published, &POLICY, NOW);
        repointed_servers_follow_the_master_of_the_plan(&servers, &published, &plan)?;
    }

    #[test]
    fn a_healthy_published_master_is_never_replaced(
        (servers, published) in arb_world(),
    ) {
        let plan = decide(&servers, &published, &POLICY, NOW);
        healthy_published_master_is_kept(&servers, &published, &plan)?;
    }
}

/// Every probe a server of `ports` can show in the exhaustive domain: refused, failing, down,
/// two masters (with and without data), and replicas of every other member or of none, with
/// the link up, down after a sync, or never synced, priority 0 or 100, offset 0 or 1.
fn every_probe(me: u16, ports: &[u16]) -> Vec<Probe> {
    let mut probes = vec![
        Probe::Failed {
            kind: FailureKind::Refused,
            since: NOW,
        },
        Probe::Failed {
            kind: FailureKind::Timeout,
            since: NOW - DOWN_AFTER / 2,
        },
        Probe::Failed {
            kind: FailureKind::Timeout,
            since: NOW - DOWN_AFTER,
        },
    ];
    let base = |role, keys| RedisInfo {
        role,
        run_id: format!("run-{me}"),
        master: None,
        link_up: false,
        synced: true,
        offset: keys,
        priority: 100,
        keys,
    };
    probes.extend((0..2).map(|keys| Probe::Up(base(Role::Master, keys))));
    let masters =
        std::iter::once(None).chain(ports.iter().filter(|p| **p != me).map(|p| Some(ep(*p))));
    for master in masters {
        for (link_up, synced) in [(true, true), (false, true), (false, false)] {
            for priority in [0, 100] {
                for offset in [0, 1] {
                    probes.push(Probe::Up(RedisInfo {
                        master: master.clone(),
                        link_up: link_up && master.is_some(),
                        synced,
                        priority,
                        offset,
                        ..base(Role::Replica, offset)
                    }));
                }
            }
        }
    }
    probes
}

fn every_publication(ports: &[u16]) -> Vec<Published> {
    let mut all = vec![
        Published::default(),
        Published {
            epoch: 3,
            master: None,
            run_id: None,
        },
    ];
    for port in ports {
        for run_id in [format!("run-{port}"), "an-older-run".to_owned()] {
            all.push(Published {
                epoch: 3,
                master: Some(ep(*port)),
                run_id: Some(run_id),
            });
        }
    }
    all
}

#[test]
fn every_property_holds_on_every_world_of_two_and_three_servers() {
    let mut worlds = 0usize;
    for ports in [&[1u16, 2][..], &[1, 2, 3][..]] {
        let per_server: Vec<Vec<Probe>> = ports.iter().map(|p| every_probe(*p, ports)).collect();
        let publications = every_publication(ports);
        let mut choice = vec![0usize; ports.len()];
        loop {
            let servers: Vec<ServerState> = ports
                .iter()
                .zip(&choice)
                .zip(&per_server)
                .map(|((port, i), probes)| ServerState {
                    endpoint: ep(*port),
                    probe: probes[*i].clone(),
                })
                .collect();
            for published in &publications {
                let plan = decide(&servers, published, &POLICY, NOW);
                for (name, property) in PROPERTIES {
                    if let Err(failure) = property(&servers, published, &plan) {
                        panic!(
                            "{name}: {failure}\nworld: {servers:#?}\npublished: {published:?}\nplan: {plan:#?}"
                        );
                    }
                }
                worlds += 1;
            }
            // Next combination, odometer style.
            let mut digit = 0;
            loop {
                if digit == choice.len() {
                    break;
                }
                choice[digit] += 1;
                if choice[digit] < per_server[digit].len() {
                    break;
                }
                choice[digit] = 0;
                digit += 1;
            }
            if digit == choice.len() {
                break;
            }
        }
    }
    assert!(worlds > 100_000, "the domain shrank to {worlds} worlds");
}
