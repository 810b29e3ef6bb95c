use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::engine::model::ReplicaLink;

const DOWN_AFTER: Duration = Duration::from_secs(2);
const POLICY: Policy = Policy {
    down_after: DOWN_AFTER,
    fencing: Fencing::Unmanaged,
};

fn ep(port: u16) -> Endpoint {
    Endpoint::new("127.0.0.1", port)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The replication history every fixture server shares unless a test says otherwise.
const HISTORY: &str = "history-1";

/// A server as a probe saw it; starts as a healthy master with some data. The second field
/// is a master's own view of its replicas, when a test sets it; otherwise `world` derives it
/// from the replicas that name the master with their link up.
#[derive(Clone)]
struct Server(ServerState, Option<Vec<ReplicaLink>>);

/// Shadows the engine's `decide` for the table tests: a settled publication.
fn decide(servers: &[ServerState], published: &Published, policy: &Policy, now: Duration) -> Plan {
    super::decide(
        servers,
        &Publication::Settled(published.clone()),
        policy,
        now,
    )
}

fn master(port: u16) -> Server {
    Server(
        ServerState {
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
                min_replicas: None,
                replid: HISTORY.into(),
                replid2: None,
                sync_in_progress: false,
                replicas: Vec::new(),
            }),
            leaving: false,
            last_seen: None,
            furthest: None,
        },
        None,
    )
}

fn replica(port: u16, of: u16) -> Server {
    master(port).replica_of(Some(of))
}

fn refused(port: u16) -> Server {
    failed(port, FailureKind::Refused, 0.0)
}

fn failed(port: u16, kind: FailureKind, since: f64) -> Server {
    Server(
        ServerState {
            endpoint: ep(port),
            probe: Probe::Failed {
                kind,
                since: secs(since),
            },
            leaving: false,
            last_seen: None,
            furthest: None,
        },
        None,
    )
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
    fn leaving(mut self) -> Self {
        self.0.leaving = true;
        self
    }
    fn fence(mut self, to_write: u32, max_lag_secs: u32) -> Self {
        self.info().min_replicas = Some(MinReplicas {
            to_write,
            max_lag_secs,
        });
        self
    }
}

impl Server {
    /// A replica that is mid-way through a full sync.
    fn syncing(mut self) -> Self {
        self.info().sync_in_progress = true;
        self
    }
    /// Of another replication history (restarted empty, or another group's data).
    fn history(mut self, replid: &str) -> Self {
        self.info().replid = replid.to_owned();
        self
    }
    /// A master promoted from a replica of `replid2`'s history.
    fn promoted_from(mut self, replid2: &str) -> Self {
        let info = self.info();
        info.replid = format!("{replid2}-promoted");
        info.replid2 = Some(replid2.to_owned());
        self
    }
    /// A master's own view of its replicas: (port, online, acknowledged offset, lag seconds).
    fn sees(mut self, replicas: &[(u16, bool, u64, u64)]) -> Self {
        self.1 = Some(
            replicas
                .iter()
                .map(|&(port, online, offset, lag_secs)| ReplicaLink {
                    endpoint: ep(port),
                    online,
                    offset,
                    lag_secs,
                })
                .collect(),
        );
        self
    }
    /// The furthest offset an earlier process at this address was seen at.
    fn held(mut self, (run_id, offset): (&str, u64)) -> Self {
        self.0.furthest = Some(crate::engine::model::Furthest {
            run_id: run_id.to_owned(),
            replid: HISTORY.to_owned(),
            offset,
        });
        self
    }
    /// What a failed server said when it last answered.
    fn was(mut self, before: Server) -> Self {
        self.0.last_seen = before.0.info().cloned().map(|mut info| {
            if let Some(view) = before.1 {
                info.replicas = view;
            }
            info
        });
        self
    }
}

fn world(servers: &[Server]) -> Vec<ServerState> {
    let derived_view = |master: &Endpoint| -> Vec<ReplicaLink> {
        servers
            .iter()
            .filter_map(|s| {
                s.0.info()
                    .filter(|i| {
                        i.role == Role::Replica && i.link_up && i.master.as_ref() == Some(master)
                    })
                    .map(|i| ReplicaLink {
                        endpoint: s.0.endpoint.clone(),
                        online: true,
                        offset: i.offset,
                        lag_secs: 0,
                    })
            })
            .collect()
    };
    servers
        .iter()
        .map(|Server(state, view)| {
            let mut state = state.clone();
            let endpoint = state.endpoint.clone();
            if let Probe::Up(info) = &mut state.probe {
                if info.role == Role::Master {
                    info.replicas = view.clone().unwrap_or_else(|| derived_view(&endpoint));
                }
                if state.last_seen.is_none() {
                    state.last_seen = Some(info.clone());
                }
            }
            state
        })
        .collect()
}

fn published(epoch: u64, master: Option<u16>) -> Published {
    Published {
        epoch,
        master: master.map(ep),
        run_id: master.map(|port| format!("run-{port}")),
        replid: Some(HISTORY.into()),
        replid2: None,
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

const FENCED: Policy = Policy {
    down_after: DOWN_AFTER,
    fencing: Fencing::On { max_lag_secs: 5 },
};

fn decide_fenced(servers: &[Server], published: &Published) -> Plan {
    decide(&world(servers), published, &FENCED, secs(10.0))
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
    assert!(matches!(plan.waiting, Some(Waiting::NoCandidate { .. })));
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
    assert!(matches!(plan.waiting, Some(Waiting::NoCandidate { .. })));
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
        &[
            master(1).run_id("fresh").history("empty").keys(0).offset(0),
            replica(2, 1).keys(1000),
        ],
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

// ---- a master nobody published (rule 5) ---------------------------------------------------

#[test]
fn master_nobody_published_is_kept_when_the_published_master_is_down() {
    // An engine promoted 2 and died before publishing it; 3 still follows the dead 1.
    let plan = decide_at(
        &[
            refused(1),
            master(2).offset(1000),
            replica(3, 1).offset(900),
        ],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.promote, None, "{plan:?}");
    assert_eq!(publishes(&plan), Some((Some(2), 6, Reason::MasterDown)));
    assert_eq!(plan.replicate, vec![(ep(3), ep(2))]);
}

#[test]
fn master_nobody_published_wins_a_tie_with_a_replica() {
    let plan = decide_at(
        &[
            refused(1),
            replica(2, 1).offset(1000),
            master(3).offset(1000),
        ],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.promote, None, "{plan:?}");
    assert_eq!(publishes(&plan), Some((Some(3), 6, Reason::MasterDown)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(3))]);
}

#[test]
fn replica_further_ahead_than_a_master_nobody_published_is_promoted_over_it() {
    // A stale master from an older epoch that came back while the published one was down.
    let plan = decide_at(
        &[refused(1), master(2).offset(500), replica(3, 1).offset(900)],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.promote, Some(ep(3)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(3))]);
}

#[test]
fn master_nobody_published_is_demoted_while_the_published_master_is_up() {
    let plan = decide_at(
        &[master(1), master(2).offset(5000), replica(3, 1)],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.publish, None);
    assert_eq!(plan.replicate, vec![(ep(2), ep(1))]);
}

// ---- leaving servers (rule 6) -------------------------------------------------------------

#[test]
fn leaving_master_is_handed_over_to_the_most_caught_up_replica_in_sync() {
    let plan = decide_at(
        &[
            master(1).leaving(),
            replica(2, 1).offset(900),
            replica(3, 1).offset(1000),
        ],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.switch_over, Some(ep(3)), "{plan:?}");
    assert_eq!(plan.promote, None);
    assert_eq!(plan.publish, None);
    assert_eq!(plan.waiting, None);
}

#[test]
fn leaving_master_is_not_handed_over_to_a_leaving_or_unsynced_replica() {
    let mut unlinked = replica(3, 1);
    unlinked.info().link_up = false;
    let plan = decide_at(
        &[master(1).leaving(), replica(2, 1).leaving(), unlinked],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.switch_over, None, "{plan:?}");
    assert_eq!(
        plan.waiting,
        Some(Waiting::NoSwitchoverTarget {
            master: ep(1),
            unfit: vec![(ep(2), Unfit::Leaving), (ep(3), Unfit::NotReplicating)]
        })
    );
}

#[test]
fn leaving_replica_is_never_promoted() {
    let plan = decide_at(
        &[
            refused(1),
            replica(2, 1).offset(2000).leaving(),
            replica(3, 1).offset(900),
        ],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.promote, Some(ep(3)));
}

#[test]
fn leaving_master_that_went_down_is_failed_over_as_any_other() {
    let plan = decide_at(
        &[refused(1).leaving(), replica(2, 1)],
        &published(5, Some(1)),
        10.0,
    );
    assert_eq!(plan.promote, Some(ep(2)));
    assert_eq!(publishes(&plan), Some((Some(2), 6, Reason::MasterDown)));
}

// ---- write fencing (rule 7) ---------------------------------------------------------------

#[test]
fn fencing_on_sets_one_replica_to_write_while_a_replica_is_in_sync() {
    let plan = decide_fenced(
        &[master(1).fence(0, 10), replica(2, 1).fence(0, 10)],
        &published(5, Some(1)),
    );
    let want = MinReplicas {
        to_write: 1,
        max_lag_secs: 5,
    };
    assert_eq!(plan.fence, Some((ep(1), want)));
    assert_eq!(plan.publish, None);
}

#[test]
fn fence_is_lowered_when_the_master_is_reachable_and_no_replica_is_in_sync() {
    let mut unlinked = replica(2, 1).fence(0, 5);
    unlinked.info().link_up = false;
    for others in [vec![refused(2)], vec![unlinked]] {
        let mut servers = vec![master(1).fence(1, 5)];
        servers.extend(others);
        let plan = decide_fenced(&servers, &published(5, Some(1)));
        let want = MinReplicas {
            to_write: 0,
            max_lag_secs: 5,
        };
        assert_eq!(plan.fence, Some((ep(1), want)), "{plan:?}");
    }
}

#[test]
fn fence_that_is_right_is_left_alone() {
    let plan = decide_fenced(
        &[master(1).fence(1, 5), replica(2, 1)],
        &published(5, Some(1)),
    );
    assert!(plan.is_noop(), "{plan:?}");
}

#[test]
fn promoted_replica_gets_no_fence_until_a_replica_follows_it() {
    // 2 carries a fence from a time it was master; as the new master it has no replica yet.
    let plan = decide_fenced(
        &[refused(1), replica(2, 1).fence(1, 5)],
        &published(5, Some(1)),
    );
    assert_eq!(plan.promote, Some(ep(2)));
    let want = MinReplicas {
        to_write: 0,
        max_lag_secs: 5,
    };
    assert_eq!(plan.fence, Some((ep(2), want)));
}

#[test]
fn fencing_off_clears_a_fence_and_unmanaged_never_touches_it() {
    let off = Policy {
        fencing: Fencing::Off,
        ..FENCED
    };
    let servers = world(&[master(1).fence(1, 7), replica(2, 1)]);
    let plan = decide(&servers, &published(5, Some(1)), &off, secs(10.0));
    let want = MinReplicas {
        to_write: 0,
        max_lag_secs: 7,
    };
    assert_eq!(plan.fence, Some((ep(1), want)));
    let plan = decide(&servers, &published(5, Some(1)), &POLICY, secs(10.0));
    assert_eq!(plan.fence, None);
}

#[test]
fn fence_that_could_not_be_read_is_left_alone() {
    let plan = decide_fenced(&[master(1), replica(2, 1)], &published(5, Some(1)));
    assert_eq!(plan.fence, None);
}

// ---- publications not made by this engine -------------------------------------------------

fn judge(servers: &[Server], own: &Published, seen: &Published) -> Foreign {
    judge_foreign(&world(servers), own, seen)
}

#[test]
fn an_older_or_identical_publication_is_a_lagging_cache() {
    let servers = [master(1), replica(2, 1)];
    assert_eq!(
        judge(&servers, &published(5, Some(1)), &published(4, Some(2))),
        Foreign::Ignore
    );
    assert_eq!(
        judge(&servers, &published(5, Some(1)), &published(5, Some(1))),
        Foreign::Ignore
    );
}

#[test]
fn a_newer_publication_of_an_answering_master_is_followed() {
    // Another engine failed over to 2, which answers as master now.
    let servers = [refused(1), master(2)];
    assert_eq!(
        judge(&servers, &published(5, Some(1)), &published(6, Some(2))),
        Foreign::Adopt
    );
}

#[test]
fn a_publication_naming_a_replica_is_corrected_above_it() {
    let servers = [master(1), replica(2, 1)];
    let verdict = judge(&servers, &published(5, Some(1)), &published(9, Some(2)));
    assert_eq!(verdict, Foreign::Correct(published(10, Some(1))));
    // The same epoch naming another server is no lagging cache either.
    let verdict = judge(&servers, &published(5, Some(1)), &published(5, Some(2)));
    assert_eq!(verdict, Foreign::Correct(published(6, Some(1))));
}

#[test]
fn a_reused_epoch_is_never_followed_as_it_is() {
    // 2 does answer as master (someone ran REPLICAOF NO ONE and wrote the annotation), but
    // under the engine's own epoch: the engine's master, where the clients are, above it.
    let servers = [master(1), master(2)];
    let verdict = judge(&servers, &published(5, Some(1)), &published(5, Some(2)));
    assert_eq!(verdict, Foreign::Correct(published(6, Some(1))));
    // With the engine's master gone, the one that answers.
    let servers = [refused(1), master(2)];
    let verdict = judge(&servers, &published(5, Some(1)), &published(5, Some(2)));
    let Foreign::Correct(next) = verdict else {
        panic!("{verdict:?}");
    };
    assert_eq!((next.epoch, next.master), (6, Some(ep(2))));
}

#[test]
fn a_publication_of_no_master_while_ours_answers_is_corrected() {
    let servers = [master(1), replica(2, 1)];
    let verdict = judge(&servers, &published(5, Some(1)), &published(7, None));
    assert_eq!(verdict, Foreign::Correct(published(8, Some(1))));
    // With ours gone too, "no master" is the truth.
    let gone = [refused(1), replica(2, 1)];
    assert_eq!(
        judge(&gone, &published(5, Some(1)), &published(7, None)),
        Foreign::Adopt
    );
}

#[test]
fn a_publication_naming_a_non_master_when_ours_is_gone_too_becomes_no_master() {
    let servers = [refused(1), replica(2, 1)];
    let verdict = judge(&servers, &published(5, Some(1)), &published(7, Some(2)));
    assert_eq!(verdict, Foreign::Correct(published(8, None)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever is found, the engine never follows a publication naming a server that does not
    /// answer as master, and a correction always goes above what it corrects.
    #[test]
    fn a_publication_is_followed_only_if_it_could_be_right(
        (servers, own, _policy) in arb_world(),
        (epoch, named) in (0u64..8, proptest::option::of(proptest::sample::select(PORTS.collect::<Vec<_>>()))),
    ) {
        let seen = Published { epoch, master: named.map(ep), run_id: None, replid: None, replid2: None };
        match judge_foreign(&servers, &own, &seen) {
            Foreign::Ignore => prop_assert!(
                seen.epoch < own.epoch || (seen.epoch == own.epoch && seen.master == own.master)
            ),
            Foreign::Adopt => {
                prop_assert!(seen.epoch > own.epoch);
                if let Some(named) = &seen.master {
                    prop_assert!(info_of(&servers, named).is_some_and(|i| i.role == Role::Master));
                }
            }
            Foreign::Correct(next) => {
                prop_assert_eq!(next.epoch, seen.epoch + 1);
                prop_assert!(seen.epoch >= own.epoch);
                if let Some(named) = &next.master {
                    prop_assert!(info_of(&servers, named).is_some_and(|i| i.role == Role::Master));
                }
            }
        }
    }
}

// ---- properties ---------------------------------------------------------------------------

const PORTS: std::ops::Range<u16> = 1..6;

fn arb_fence() -> impl Strategy<Value = Option<MinReplicas>> {
    proptest::option::of((0u32..2, prop_oneof![Just(5u32), Just(10)]).prop_map(
        |(to_write, max_lag_secs)| MinReplicas {
            to_write,
            max_lag_secs,
        },
    ))
}

fn arb_probe(ports: Vec<u16>) -> impl Strategy<Value = Probe> {
    let up = (
        any::<bool>(),
        proptest::option::of(proptest::sample::select(ports)),
        (any::<bool>(), any::<bool>()),
        0u64..4,
        prop_oneof![Just(0u32), Just(1), Just(100)],
        0u64..3,
        (0u8..3, arb_fence(), 0u8..4),
    )
        .prop_map(
            |(
                is_master,
                master,
                (link_up, synced),
                offset,
                priority,
                keys,
                (run, fence, history),
            )| {
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
                    min_replicas: fence,
                    // 0, 1: the published history; 2: promoted from it; 3: another one.
                    replid: if history < 2 {
                        HISTORY.into()
                    } else {
                        format!("other-{history}")
                    },
                    replid2: (history == 2).then(|| HISTORY.to_owned()),
                    sync_in_progress: !is_master && history == 1 && !link_up,
                    replicas: Vec::new(),
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

const POLICIES: [Policy; 3] = [
    POLICY,
    Policy {
        fencing: Fencing::Off,
        ..POLICY
    },
    FENCED,
];

fn arb_world() -> impl Strategy<Value = (Vec<ServerState>, Published, Policy)> {
    proptest::sample::subsequence(PORTS.collect::<Vec<_>>(), 1..=5)
        .prop_flat_map(|ports| {
            let probes = ports
                .iter()
                .map(|_| {
                    (
                        arb_probe(PORTS.collect()),
                        proptest::bool::weighted(0.25),
                        arb_probe(PORTS.collect()),
                    )
                })
                .collect::<Vec<_>>();
            let published = (
                0u64..5,
                proptest::option::of(proptest::sample::select(PORTS.collect::<Vec<_>>())),
                0u8..4,
            )
                .prop_map(|(epoch, master, run)| Published {
                    epoch,
                    master: master.map(ep),
                    // 3: a run not known, as after a controller restart.
                    run_id: master.filter(|_| run < 3).map(|_| format!("run-{run}")),
                    // 0: published by an older version, the history not known.
                    replid: (run > 0 && epoch > 0).then(|| HISTORY.to_owned()),
                    replid2: None,
                });
            (
                Just(ports),
                probes,
                published,
                proptest::sample::select(POLICIES.to_vec()),
            )
        })
        .prop_map(|(ports, probes, published, policy)| {
            let servers = ports
                .into_iter()
                .zip(probes)
                .map(|(port, (probe, leaving, before))| ServerState {
                    endpoint: ep(port),
                    probe,
                    leaving,
                    // What a failed server said when it last answered, if it ever did.
                    last_seen: match before {
                        Probe::Up(info) => Some(info),
                        Probe::Failed { .. } => None,
                    },
                    furthest: None,
                })
                .collect::<Vec<_>>();
            (with_views(servers), published, policy)
        })
}

const NOW: Duration = Duration::from_secs(5);

/// Gives every answering master its own view of its replicas (those that name it with the
/// link up, at their own offsets) and every answering server its last answer, as the runner
/// would.
fn with_views(mut servers: Vec<ServerState>) -> Vec<ServerState> {
    let snapshot = servers.clone();
    for server in &mut servers {
        let endpoint = server.endpoint.clone();
        if let Probe::Up(info) = &mut server.probe {
            if info.role == Role::Master {
                info.replicas = snapshot
                    .iter()
                    .filter_map(|s| {
                        s.info()
                            .filter(|i| {
                                i.role == Role::Replica
                                    && i.link_up
                                    && i.master.as_ref() == Some(&endpoint)
                            })
                            .map(|i| ReplicaLink {
                                endpoint: s.endpoint.clone(),
                                online: true,
                                offset: i.offset,
                                lag_secs: 0,
                            })
                    })
                    .collect();
            }
            server.last_seen = Some(info.clone());
        }
    }
    servers
}

/// The ranking of rule 4 when every master's view agrees with its replicas' own offsets (as
/// `with_views` makes it): offset, then an existing master, then priority, then address.
fn more_caught_up(a: &(&Endpoint, &RedisInfo), b: &(&Endpoint, &RedisInfo)) -> Ordering {
    a.1.offset
        .cmp(&b.1.offset)
        .then((a.1.role == Role::Master).cmp(&(b.1.role == Role::Master)))
        .then(b.1.priority.cmp(&a.1.priority))
        .then(b.0.cmp(a.0))
}

fn info_of<'a>(servers: &'a [ServerState], endpoint: &Endpoint) -> Option<&'a RedisInfo> {
    servers
        .iter()
        .find(|s| &s.endpoint == endpoint)
        .and_then(ServerState::info)
}

/// The published master's process is the one that was published (or its run is not known, as
/// after a controller restart).
fn same_run(published: &Published, info: &RedisInfo) -> bool {
    published
        .run_id
        .as_ref()
        .is_none_or(|run| *run == info.run_id)
}

fn is_leaving(servers: &[ServerState], endpoint: &Endpoint) -> bool {
    servers.iter().any(|s| &s.endpoint == endpoint && s.leaving)
}

/// The master after the plan: the one it publishes, or the one already published.
fn master_of_the_plan<'a>(published: &'a Published, plan: &'a Plan) -> Option<&'a Endpoint> {
    plan.publish
        .as_ref()
        .map_or(published.master.as_ref(), |(next, _)| next.master.as_ref())
}

/// Whether `master` has a replica in sync, the way `with_views` builds the master's own view:
/// a replica naming it with its link up. A server that is not a master yet (one the plan
/// promotes) has none.
fn has_replica_in_sync(servers: &[ServerState], master: &Endpoint) -> bool {
    info_of(servers, master).is_some_and(|m| m.role == Role::Master)
        && servers.iter().filter_map(ServerState::info).any(|info| {
            info.role == Role::Replica && info.link_up && info.master.as_ref() == Some(master)
        })
}

// Each property is a plain function over (world, publication, policy, plan) so that the
// proptests (random worlds of up to five servers) and the exhaustive tests (every world of two
// and three servers over a small domain) check exactly the same thing.

type Property = fn(&[ServerState], &Published, &Policy, &Plan) -> Result<(), TestCaseError>;

const PROPERTIES: [(&str, Property); 10] = [
    (
        "a new master holds the published history while any answering server holds it",
        new_master_keeps_the_published_history,
    ),
    (
        "nothing is promoted or published over a failing server known to be further along",
        failing_server_further_along_is_waited_for,
    ),
    (
        "a publication names one answering master under the next epoch",
        publication_names_one_answering_master,
    ),
    (
        "a promotion is the most caught-up candidate, masters nobody published included",
        promotion_is_the_most_caught_up_candidate,
    ),
    (
        "every repointed server follows the master of the plan",
        repointed_servers_follow_the_master_of_the_plan,
    ),
    (
        "a healthy published master is never replaced",
        healthy_published_master_is_kept,
    ),
    (
        "a leaving server is never made the master",
        leaving_server_is_never_made_master,
    ),
    (
        "a leaving master is handed over to the best replica in sync, and only then",
        leaving_master_is_handed_over_to_the_best_replica_in_sync,
    ),
    (
        "a fence of one replica to write is only set while a replica is in sync",
        fence_follows_the_replicas_in_sync,
    ),
    (
        "a healthy master with fencing on gets the fence it should have",
        healthy_master_gets_the_fence_it_should_have,
    ),
];

fn publication_names_one_answering_master(
    servers: &[ServerState],
    published: &Published,
    _policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    if let Some((next, Reason::Refreshed)) = &plan.publish {
        // The same master and epoch, renaming the history to what that master reports.
        prop_assert_eq!(next.epoch, published.epoch);
        prop_assert_eq!(&next.master, &published.master);
        prop_assert_eq!(&next.run_id, &published.run_id);
        let master = published.master.as_ref().and_then(|m| info_of(servers, m));
        prop_assert_eq!(next.replid.as_deref(), master.map(|i| i.replid.as_str()));
        return Ok(());
    }
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

fn new_master_keeps_the_published_history(
    servers: &[ServerState],
    published: &Published,
    _policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Some((next, _)) = &plan.publish else {
        return Ok(());
    };
    let Some(new) = next
        .master
        .as_ref()
        .filter(|m| Some(*m) != published.master.as_ref())
    else {
        return Ok(());
    };
    let holders: Vec<&Endpoint> = servers
        .iter()
        .filter(|s| {
            s.info()
                .is_some_and(|i| holds_published_data(servers, published, i))
        })
        .map(|s| &s.endpoint)
        .collect();
    let info = info_of(servers, new);
    prop_assert!(
        holders.is_empty() || info.is_some_and(|i| holds_published_data(servers, published, i)),
        "published {} although {:?} hold the published history",
        new,
        holders
    );
    Ok(())
}

fn failing_server_further_along_is_waited_for(
    servers: &[ServerState],
    published: &Published,
    policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let new = plan
        .publish
        .as_ref()
        .and_then(|(next, _)| next.master.as_ref())
        .filter(|m| Some(*m) != published.master.as_ref());
    let (Some(new), Some(_)) = (new, &published.replid) else {
        return Ok(());
    };
    let Some(new_info) = info_of(servers, new) else {
        return Ok(());
    };
    for s in servers {
        let failing = matches!(s.probe, Probe::Failed { .. }) && !is_down(&s.probe, policy, NOW);
        let ahead = s.last_seen.as_ref().is_some_and(|seen| {
            seen.priority > 0
                && holds_published_data(servers, published, seen)
                && seen.offset > new_info.offset
        });
        prop_assert!(
            !(failing && ahead && Some(&s.endpoint) != published.master.as_ref()),
            "made {} the master while {}, further along, is only failing",
            new,
            s.endpoint
        );
    }
    Ok(())
}

fn promotion_is_the_most_caught_up_candidate(
    servers: &[ServerState],
    published: &Published,
    _policy: &Policy,
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
    prop_assert!(!info.sync_in_progress, "promoted a replica in a full sync");
    // Unless the history is gone from every member (all answer, none holds it): then what
    // exists is all there is.
    let all_answer = servers.iter().all(|s| s.info().is_some());
    let history_survives = servers
        .iter()
        .filter_map(ServerState::info)
        .any(|i| holds_published_data(servers, published, i));
    prop_assert!(
        !history_survives || holds_published_data(servers, published, info),
        "promoted {} over the published history, which a server still holds",
        promoted
    );
    prop_assert!(
        holds_published_data(servers, published, info) || (all_answer && !history_survives),
        "promoted {}, which does not hold the published history",
        promoted
    );
    for s in servers {
        let Some(other) = s.info() else { continue };
        let eligible = other.priority > 0
            && (other.synced || other.role != Role::Replica)
            && !other.sync_in_progress
            && holds_published_data(servers, published, other)
            && !s.leaving
            && Some(&s.endpoint) != published.master.as_ref();
        prop_assert!(
            !eligible || more_caught_up(&(promoted, info), &(&s.endpoint, other)) != Ordering::Less,
            "{} is more caught up than the promoted {}",
            s.endpoint,
            promoted
        );
        // A master nobody published wins a tie (rule 4): a replica promoted over it is ahead.
        prop_assert!(
            !eligible || other.role != Role::Master || info.offset > other.offset,
            "promoted {} over {}, a master nobody published that is as caught up",
            promoted,
            s.endpoint
        );
    }
    Ok(())
}

/// Rule 3 stated independently: of the published history (its replid, or promoted from it),
/// or, with the history not known, a synced replica of the published master.
fn holds_published_data(servers: &[ServerState], published: &Published, info: &RedisInfo) -> bool {
    // The published history and the one it continues, and the published master's own when it
    // is the published process and has had a replica (after its promotion, or its first
    // replica, its replicas carry its current replid).
    let mut ids: Vec<String> = published
        .replid
        .iter()
        .chain(&published.replid2)
        .cloned()
        .collect();
    if let Some(seen) = published
        .master
        .as_ref()
        .and_then(|m| servers.iter().find(|s| &s.endpoint == m))
        .and_then(|s| s.last_seen.as_ref())
        .filter(|seen| {
            seen.role == Role::Master
                && published.run_id.as_deref() == Some(seen.run_id.as_str())
                && !(seen.offset == 0 && seen.replicas.is_empty())
        })
    {
        ids.push(seen.replid.clone());
        ids.extend(seen.replid2.clone());
    }
    let of_master = |i: &RedisInfo| {
        i.role == Role::Replica && i.synced && i.master.is_some() && i.master == published.master
    };
    if ids.is_empty() {
        // Nothing known to compare with at start-up: any data is the data; else what the
        // synced replicas of the published master carry.
        if published.master.is_none() || of_master(info) {
            return true;
        }
        ids = servers
            .iter()
            .filter_map(ServerState::info)
            .filter(|i| of_master(i))
            .map(|i| i.replid.clone())
            .collect();
        if ids.is_empty() {
            return false;
        }
    }
    let of_history =
        ids.contains(&info.replid) || info.replid2.as_ref().is_some_and(|r| ids.contains(r));
    match info.role {
        Role::Replica => info.synced && of_history,
        Role::Master => of_history || published.run_id.as_deref() == Some(info.run_id.as_str()),
    }
}

fn repointed_servers_follow_the_master_of_the_plan(
    servers: &[ServerState],
    published: &Published,
    _policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let master = master_of_the_plan(published, plan);
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
    _policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Some(master) = &published.master else {
        return Ok(());
    };
    let Some(info) = info_of(servers, master) else {
        return Ok(());
    };
    if info.role == Role::Master && published.run_id.as_deref() == Some(info.run_id.as_str()) {
        let refreshed_only = plan.publish.as_ref().is_none_or(|(next, reason)| {
            *reason == Reason::Refreshed && next.master == published.master
        });
        prop_assert!(
            refreshed_only,
            "replaced a healthy master: {:?}",
            plan.publish
        );
        prop_assert_eq!(&plan.promote, &None);
    }
    Ok(())
}

fn leaving_server_is_never_made_master(
    servers: &[ServerState],
    published: &Published,
    _policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    if let Some(promoted) = &plan.promote
        && published.master.as_ref() != Some(promoted)
    {
        prop_assert!(
            !is_leaving(servers, promoted),
            "promoted leaving {}",
            promoted
        );
    }
    // With a master published, a new one is never a leaving server. (With none published, an
    // existing leaving master is still published: it has the data, and is handed over next.)
    if let (Some(old), Some((next, _))) = (&published.master, &plan.publish)
        && let Some(new) = &next.master
        && new != old
    {
        prop_assert!(!is_leaving(servers, new), "published leaving {}", new);
    }
    if let Some(target) = &plan.switch_over {
        prop_assert!(
            !is_leaving(servers, target),
            "handed over to leaving {}",
            target
        );
    }
    Ok(())
}

fn leaving_master_is_handed_over_to_the_best_replica_in_sync(
    servers: &[ServerState],
    published: &Published,
    _policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let ready = |master: &Endpoint| {
        servers
            .iter()
            .filter(|s| !s.leaving)
            .filter_map(|s| s.info().map(|info| (&s.endpoint, info)))
            .filter(|(_, info)| {
                is_promotable(info)
                    && info.link_up
                    && info.master.as_ref() == Some(master)
                    && !info.sync_in_progress
                    && holds_published_data(servers, published, info)
            })
            .collect::<Vec<_>>()
    };
    let healthy_leaving_master = published.master.as_ref().filter(|master| {
        is_leaving(servers, master)
            && info_of(servers, master)
                .is_some_and(|info| info.role == Role::Master && same_run(published, info))
    });
    match (&plan.switch_over, healthy_leaving_master) {
        (Some(target), Some(master)) => {
            let candidates = ready(master);
            let chosen = candidates.iter().find(|(e, _)| *e == target);
            prop_assert!(chosen.is_some(), "{} is not a replica in sync", target);
            let chosen = chosen.unwrap();
            for other in &candidates {
                prop_assert!(more_caught_up(chosen, other) != Ordering::Less);
            }
            let refresh_only = plan
                .publish
                .as_ref()
                .is_none_or(|(_, reason)| *reason == Reason::Refreshed);
            prop_assert!(refresh_only && plan.promote.is_none());
        }
        (Some(target), None) => {
            prop_assert!(
                false,
                "handed over to {} though no healthy master is leaving",
                target
            );
        }
        (None, Some(master)) => {
            prop_assert!(
                ready(master).is_empty(),
                "a leaving master was not handed over"
            );
        }
        (None, None) => {}
    }
    Ok(())
}

fn fence_follows_the_replicas_in_sync(
    servers: &[ServerState],
    published: &Published,
    policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Some((server, fence)) = &plan.fence else {
        return Ok(());
    };
    prop_assert!(
        policy.fencing != Fencing::Unmanaged,
        "touched an unmanaged fence"
    );
    prop_assert_eq!(Some(server), master_of_the_plan(published, plan));
    let in_sync = has_replica_in_sync(servers, server);
    match policy.fencing {
        Fencing::On { max_lag_secs } => {
            prop_assert_eq!(fence.to_write, u32::from(in_sync));
            prop_assert_eq!(fence.max_lag_secs, max_lag_secs);
        }
        Fencing::Off | Fencing::Unmanaged => prop_assert_eq!(fence.to_write, 0),
    }
    Ok(())
}

fn healthy_master_gets_the_fence_it_should_have(
    servers: &[ServerState],
    published: &Published,
    policy: &Policy,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Fencing::On { max_lag_secs } = policy.fencing else {
        return Ok(());
    };
    let Some(master) = &published.master else {
        return Ok(());
    };
    let Some(info) = info_of(servers, master) else {
        return Ok(());
    };
    let healthy = info.role == Role::Master && same_run(published, info);
    let Some(current) = info.min_replicas.filter(|_| healthy) else {
        return Ok(());
    };
    let wanted = MinReplicas {
        to_write: u32::from(has_replica_in_sync(servers, master)),
        max_lag_secs,
    };
    let expected = (current != wanted).then(|| (master.clone(), wanted));
    prop_assert_eq!(&plan.fence, &expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn same_world_in_any_order_gives_the_same_plan(
        (servers, published, policy) in arb_world(),
        seed in any::<u64>(),
    ) {
        let plan = decide(&servers, &published, &policy, NOW);
        prop_assert_eq!(&plan, &decide(&servers, &published, &policy, NOW));
        let mut shuffled = servers.clone();
        let len = shuffled.len();
        shuffled.rotate_left((seed as usize) % len);
        if seed % 2 == 0 { shuffled.reverse(); }
        prop_assert_eq!(plan, decide(&shuffled, &published, &policy, NOW));
    }

    #[test]
    fn every_property_holds_on_random_worlds_of_up_to_five_servers(
        (servers, published, policy) in arb_world(),
    ) {
        let plan = decide(&servers, &published, &policy, NOW);
        for (name, property) in PROPERTIES {
            property(&servers, &published, &policy, &plan)
                .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        }
    }
}

/// Every probe a server of `ports` can show in the exhaustive domain: refused, failing, down,
/// two masters (with and without data), and replicas of every other member or of none, with
/// the link up, down after a sync, or never synced, priority 0 or 100, offset 0 or 1; each
/// answering one with every fence in `fences`.
fn every_probe(me: u16, ports: &[u16], fences: &[Option<MinReplicas>]) -> Vec<Probe> {
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
        min_replicas: None,
        replid: HISTORY.into(),
        replid2: None,
        sync_in_progress: false,
        replicas: Vec::new(),
    };
    let mut up = Vec::new();
    up.extend((0..2).map(|keys| base(Role::Master, keys)));
    let masters =
        std::iter::once(None).chain(ports.iter().filter(|p| **p != me).map(|p| Some(ep(*p))));
    for master in masters {
        for (link_up, synced) in [(true, true), (false, true), (false, false)] {
            for priority in [0, 100] {
                for offset in [0, 1] {
                    up.push(RedisInfo {
                        master: master.clone(),
                        link_up: link_up && master.is_some(),
                        synced,
                        priority,
                        offset,
                        ..base(Role::Replica, offset)
                    });
                }
            }
        }
    }
    for info in up {
        for fence in fences {
            probes.push(Probe::Up(RedisInfo {
                min_replicas: *fence,
                ..info.clone()
            }));
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
            replid: Some(HISTORY.into()),
            replid2: None,
        },
    ];
    for port in ports {
        for run_id in [format!("run-{port}"), "an-older-run".to_owned()] {
            all.push(Published {
                epoch: 3,
                master: Some(ep(*port)),
                run_id: Some(run_id),
                replid: Some(HISTORY.into()),
                replid2: None,
            });
        }
    }
    all
}

/// Checks every property on every world over `ports`: every combination of the servers'
/// probes (with `fences`), each leaving set in `leaving`, each publication and each policy.
/// Returns how many worlds were checked.
fn check_every_world(
    ports: &[u16],
    fences: &[Option<MinReplicas>],
    leaving: &[Vec<bool>],
    policies: &[Policy],
) -> usize {
    let mut worlds = 0usize;
    let per_server: Vec<Vec<Probe>> = ports
        .iter()
        .map(|p| every_probe(*p, ports, fences))
        .collect();
    let publications = every_publication(ports);
    let mut choice = vec![0usize; ports.len()];
    loop {
        for leaving in leaving {
            let servers: Vec<ServerState> = ports
                .iter()
                .zip(&choice)
                .zip(&per_server)
                .zip(leaving)
                .map(|(((port, i), probes), leaving)| ServerState {
                    endpoint: ep(*port),
                    probe: probes[*i].clone(),
                    leaving: *leaving,
                    last_seen: None,
                    furthest: None,
                })
                .collect();
            let servers = with_views(servers);
            for published in &publications {
                for policy in policies {
                    let plan = decide(&servers, published, policy, NOW);
                    for (name, property) in PROPERTIES {
                        if let Err(failure) = property(&servers, published, policy, &plan) {
                            panic!(
                                "{name}: {failure}\nworld: {servers:#?}\npublished: \
                                 {published:?}\npolicy: {policy:?}\nplan: {plan:#?}"
                            );
                        }
                    }
                    worlds += 1;
                }
            }
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
            return worlds;
        }
    }
}

/// No server leaving, and each one alone.
fn at_most_one_leaving(servers: usize) -> Vec<Vec<bool>> {
    std::iter::once(vec![false; servers])
        .chain((0..servers).map(|i| (0..servers).map(|j| i == j).collect()))
        .collect()
}

#[test]
fn every_property_holds_on_every_world_of_two_and_three_servers() {
    let mut worlds = 0;
    for ports in [&[1u16, 2][..], &[1, 2, 3][..]] {
        worlds += check_every_world(ports, &[None], &at_most_one_leaving(ports.len()), &[POLICY]);
    }
    assert!(worlds > 1_000_000, "the domain shrank to {worlds} worlds");
}

#[test]
fn every_fencing_property_holds_on_every_world_of_two_servers() {
    let fences = [
        None,
        Some(MinReplicas {
            to_write: 0,
            max_lag_secs: 5,
        }),
        Some(MinReplicas {
            to_write: 1,
            max_lag_secs: 5,
        }),
        Some(MinReplicas {
            to_write: 1,
            max_lag_secs: 10,
        }),
    ];
    let every_leaving = [
        vec![false, false],
        vec![true, false],
        vec![false, true],
        vec![true, true],
    ];
    let worlds = check_every_world(&[1, 2], &fences, &every_leaving, &POLICIES);
    assert!(worlds > 100_000, "the domain shrank to {worlds} worlds");
}

// ---- issue 14: the failures found by fault injection --------------------------------------

#[test]
fn an_unknown_publication_is_read_back_before_anything_else() {
    // Rule 0: even with the master gone and a perfect candidate, nothing moves on a guess.
    let plan = super::decide(
        &world(&[refused(1), replica(2, 1)]),
        &Publication::Unsettled,
        &POLICY,
        secs(10.0),
    );
    assert!(plan.reread);
    assert_eq!(plan.promote, None);
    assert_eq!(plan.publish, None);
    assert!(plan.replicate.is_empty());
    assert_eq!(plan.waiting, Some(Waiting::PublicationUnknown));
}

#[test]
fn a_replica_restarted_empty_as_a_master_is_never_promoted_over_a_hung_master() {
    // Failure 3: the master hangs; its only replica restarts without data and comes back as
    // a master of a new, empty history. Once the master is down, nothing may take over.
    let plan = decide_at(
        &[
            failed(1, FailureKind::Timeout, 0.0).was(master(1)),
            master(2)
                .run_id("restarted")
                .history("empty")
                .offset(0)
                .keys(0),
        ],
        &published(4, Some(1)),
        5.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(publishes(&plan), Some((None, 5, Reason::NoMasterReachable)));
    assert!(plan.replicate.is_empty(), "{plan:?}");
    let (no_master, _) = plan.publish.as_ref().expect("publishes no master");
    assert_eq!(
        no_master.replid.as_deref(),
        Some(HISTORY),
        "the data waited for is named"
    );
    assert_eq!(
        plan.waiting,
        Some(Waiting::NoCandidate {
            unfit: vec![(ep(2), Unfit::OtherHistory)]
        })
    );
}

#[test]
fn when_the_hung_master_answers_again_it_is_republished_and_the_empty_one_repointed() {
    // Failure 3, continued: "no master" published, the old master answers again.
    let mut no_master = published(5, None);
    no_master.run_id = Some("run-1".into());
    let plan = decide_at(
        &[
            master(1),
            master(2)
                .run_id("restarted")
                .history("empty")
                .offset(0)
                .keys(0),
        ],
        &no_master,
        30.0,
    );
    assert_eq!(publishes(&plan), Some((Some(1), 6, Reason::Recovered)));
    assert_eq!(plan.replicate, vec![(ep(2), ep(1))]);
}

#[test]
fn a_master_promoted_from_the_history_is_kept_over_promoting_another() {
    // Rule 3's other half: an engine promoted a replica and died before publishing; that
    // master holds the history (replid2) and is the most caught up.
    let plan = decide_at(
        &[
            refused(1),
            master(2).promoted_from(HISTORY).offset(1200),
            replica(3, 1).offset(1100),
        ],
        &published(4, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(publishes(&plan), Some((Some(2), 5, Reason::MasterDown)));
}

#[test]
fn a_stale_replica_is_not_promoted_while_the_caught_up_one_is_only_slow() {
    // Failure 4: C (3) was silently cut off; 5000 writes reached B (2) only; B stalls, the
    // master is killed. C may not take over while B is failing but not down.
    let servers = [
        refused(1).was(
            master(1)
                .offset(6000)
                .sees(&[(2, true, 6000, 0), (3, true, 1000, 0)]),
        ),
        failed(2, FailureKind::Timeout, 4.5).was(replica(2, 1).offset(6000)),
        replica(3, 1).offset(1000),
    ];
    let plan = decide_at(&servers, &published(4, Some(1)), 5.0);
    assert!(plan.is_noop(), "{plan:?}");
    assert_eq!(
        plan.waiting,
        Some(Waiting::CandidateBehind {
            candidate: ep(3),
            ahead: ep(2)
        })
    );
    // Once B is down for down_after, C is all there is.
    let later = decide_at(
        &servers,
        &published(4, Some(1)),
        4.5 + DOWN_AFTER.as_secs_f64(),
    );
    assert_eq!(later.promote, Some(ep(3)));
}

#[test]
fn the_masters_last_word_ranks_candidates_above_their_own() {
    // Failure 4, second half: 2's own last report (500) is older than the master's last word
    // on it (900); 3 is at 700. 2 is only failing: wait for it.
    let plan = decide_at(
        &[
            refused(1).was(master(1).sees(&[(2, true, 900, 0), (3, true, 700, 0)])),
            failed(2, FailureKind::Timeout, 4.5).was(replica(2, 1).offset(500)),
            replica(3, 1).offset(700),
        ],
        &published(4, Some(1)),
        5.0,
    );
    assert_eq!(
        plan.waiting,
        Some(Waiting::CandidateBehind {
            candidate: ep(3),
            ahead: ep(2)
        }),
        "{plan:?}"
    );
}

#[test]
fn a_replica_reporting_less_than_its_master_saw_it_acknowledge_is_rewound() {
    let plan = decide_at(
        &[
            refused(1).was(master(1).sees(&[(2, true, 900, 0), (3, true, 600, 0)])),
            replica(2, 1).offset(100).run_id("restarted"),
            replica(3, 1).offset(650),
        ],
        &published(4, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, Some(ep(3)));
}

#[test]
fn the_fence_follows_the_masters_view_not_the_replicas_link() {
    // Failure 5: the replica's link still looks up (repl-timeout), but the master has not
    // heard from it for longer than max_lag: the fence comes off.
    let plan = decide_fenced(
        &[
            master(1).fence(1, 5).sees(&[(2, true, 1000, 9)]),
            replica(2, 1),
        ],
        &published(3, Some(1)),
    );
    assert_eq!(
        plan.fence,
        Some((
            ep(1),
            MinReplicas {
                to_write: 0,
                max_lag_secs: 5
            }
        ))
    );
    // And it goes on again when the master hears from a replica within max_lag.
    let plan = decide_fenced(
        &[
            master(1).fence(0, 5).sees(&[(2, true, 1000, 1)]),
            replica(2, 1),
        ],
        &published(3, Some(1)),
    );
    assert_eq!(plan.fence.map(|(_, f)| f.to_write), Some(1));
}

#[test]
fn a_master_at_maxclients_is_never_down() {
    // Failure 9: it answers new connections with "max number of clients reached"; its old
    // clients may still write to it, so failing it over would make two masters.
    let full = failed(1, FailureKind::MaxClients, 0.0);
    assert!(!is_down(&full.0.probe, &POLICY, secs(3600.0)));
    let plan = decide_at(&[full, replica(2, 1)], &published(3, Some(1)), 3600.0);
    assert_eq!(plan.promote, None);
    assert_eq!(plan.publish, None);
    assert_eq!(plan.waiting, Some(Waiting::MasterFailing { master: ep(1) }));
}

#[test]
fn a_replica_in_a_full_sync_is_neither_promoted_nor_handed_the_master() {
    // Failure 10: the replacement replica is Ready before its sync is done.
    let plan = decide_at(
        &[refused(1), replica(2, 1).syncing()],
        &published(3, Some(1)),
        0.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(
        plan.waiting,
        Some(Waiting::NoCandidate {
            unfit: vec![(ep(2), Unfit::Syncing)]
        })
    );
    let plan = decide_at(
        &[master(1).leaving(), replica(2, 1).syncing()],
        &published(3, Some(1)),
        0.0,
    );
    assert_eq!(plan.switch_over, None);
    assert_eq!(
        plan.waiting,
        Some(Waiting::NoSwitchoverTarget {
            master: ep(1),
            unfit: vec![(ep(2), Unfit::Syncing)]
        })
    );
}

#[test]
fn a_switchover_target_the_master_does_not_see_is_not_ready() {
    // The replica's link looks up, the master's view says otherwise (a silent cut).
    let servers = world(&[master(1).sees(&[(2, false, 0, 40)]), replica(2, 1)]);
    assert_eq!(
        switchover_target(&servers, &published(3, Some(1)), &ep(1), None),
        Err(vec![(ep(2), Unfit::NotOnline)])
    );
    let servers = world(&[master(1), replica(2, 1)]);
    assert_eq!(
        switchover_target(&servers, &published(3, Some(1)), &ep(1), Some(&ep(2))),
        Ok(ep(2))
    );
}

#[test]
fn the_switchover_pause_outlasts_every_step_at_its_deadline() {
    // Failure 2: the steps after the catch-up may each take their deadline.
    let (catch_up, redis, api) = (secs(5.0), secs(1.0), secs(5.0));
    let pause = pause_length(catch_up, redis, api);
    let every_step = catch_up + redis * 5 + api * 3;
    assert!(pause > every_step, "{pause:?} <= {every_step:?}");
    // The check before the promotion: whatever is left must cover the remaining steps.
    let remaining = api * 3 + redis * 3;
    assert!(pause_holds(pause, catch_up, remaining));
    assert!(!pause_holds(pause, pause - remaining, remaining));
}

#[test]
fn a_server_restarted_from_an_older_snapshot_of_the_history_is_not_promoted() {
    // Found by the real-Redis test of failure 3: a replica's sync file survives its restart,
    // so it comes back as a master whose replid2 is the history, at the offset of that old
    // sync; the master last saw it acknowledge far more.
    let plan = decide_at(
        &[
            failed(1, FailureKind::Timeout, 0.0)
                .was(master(1).offset(9000).sees(&[(2, true, 9000, 0)])),
            master(2)
                .run_id("restarted")
                .promoted_from(HISTORY)
                .offset(100)
                .keys(0),
        ],
        &published(4, Some(1)),
        5.0,
    );
    assert_eq!(publishes(&plan), Some((None, 5, Reason::NoMasterReachable)));
    assert_eq!(
        plan.waiting,
        Some(Waiting::NoCandidate {
            unfit: vec![(ep(2), Unfit::Rewound)]
        })
    );
    // The same from the engine's own memory of the address: an earlier process was seen at
    // 9000, the new one reports 100 (the master's view had not caught up with it).
    let plan = decide_at(
        &[
            failed(1, FailureKind::Timeout, 0.0).was(master(1).offset(9000).sees(&[])),
            master(2)
                .run_id("restarted")
                .promoted_from(HISTORY)
                .offset(100)
                .held(("run-2", 9000)),
        ],
        &published(4, Some(1)),
        5.0,
    );
    assert_eq!(plan.promote, None);
    assert_eq!(publishes(&plan), Some((None, 5, Reason::NoMasterReachable)));
}

#[test]
fn a_master_whose_first_replica_renamed_its_history_is_republished_under_the_same_epoch() {
    // Redis starts a new replid when a master's first replica creates its backlog.
    let mut fresh = published(1, Some(1));
    fresh.replid = Some("before-the-first-replica".into());
    let plan = decide_at(&[master(1), replica(2, 1)], &fresh, 0.0);
    let (next, reason) = plan.publish.expect("the renamed history is published");
    assert_eq!(reason, Reason::Refreshed);
    assert_eq!((next.epoch, next.master), (1, Some(ep(1))));
    assert_eq!(next.replid.as_deref(), Some(HISTORY));
    // And nothing once it is what the master reports.
    assert!(decide_at(&[master(1), replica(2, 1)], &published(1, Some(1)), 0.0).is_noop());
}
