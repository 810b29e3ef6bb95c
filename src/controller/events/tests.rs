use super::*;
use crate::engine::Unfit;

fn ep(last: u8) -> Endpoint {
    Endpoint::new(format!("10.0.0.{last}"), 6379)
}

fn pods() -> PodIndex {
    PodIndex::from([(ep(1), "redis-0".to_owned()), (ep(2), "redis-1".to_owned())])
}

/// Each engine event, the Event it becomes: type, reason, action, and a part of the note.
#[test]
fn every_engine_event_has_its_type_reason_action_and_a_note_naming_pods() {
    use EventType::{Normal, Warning};
    let cases: Vec<(EngineEvent, EventType, &str, &str, &str)> = vec![
        (
            EngineEvent::Published {
                from: Some(ep(1)),
                to: Some(ep(2)),
                epoch: 5,
                reason: Reason::MasterDown,
            },
            Warning,
            "Promoted",
            "Failover",
            "redis-1 (10.0.0.2:6379) is the master, epoch 5, was redis-0 (10.0.0.1:6379) (master-down)",
        ),
        (
            EngineEvent::Published {
                from: Some(ep(1)),
                to: Some(ep(2)),
                epoch: 5,
                reason: Reason::Switchover,
            },
            Normal,
            "SwitchoverCompleted",
            "Switchover",
            "redis-1 (10.0.0.2:6379) is the master, epoch 5",
        ),
        (
            EngineEvent::Published {
                from: Some(ep(1)),
                to: Some(ep(2)),
                epoch: 6,
                reason: Reason::MasterLeaving,
            },
            Normal,
            "SwitchoverCompleted",
            "Switchover",
            "(master-leaving)",
        ),
        (
            EngineEvent::Published {
                from: None,
                to: Some(ep(1)),
                epoch: 1,
                reason: Reason::Initial,
            },
            Normal,
            "Promoted",
            "Failover",
            "redis-0 (10.0.0.1:6379) is the master, epoch 1 (initial)",
        ),
        (
            EngineEvent::Published {
                from: Some(ep(1)),
                to: None,
                epoch: 7,
                reason: Reason::NoMasterReachable,
            },
            Warning,
            "NoMaster",
            "Failover",
            "no master is published (epoch 7, no-master-reachable): redis-0 (10.0.0.1:6379) is gone",
        ),
        (
            EngineEvent::Published {
                from: Some(ep(2)),
                to: Some(ep(1)),
                epoch: 12,
                reason: Reason::Corrected,
            },
            Warning,
            "PublicationCorrected",
            "Publish",
            "the annotations named redis-1 (10.0.0.2:6379), which is not the master, under epoch \
             11; redis-pair owns them and published redis-0 (10.0.0.1:6379) under epoch 12",
        ),
        (
            EngineEvent::Repointed {
                server: ep(1),
                master: ep(2),
                was_master: true,
            },
            Normal,
            "Demoted",
            "Replicate",
            "redis-0 (10.0.0.1:6379) replicates from redis-1 (10.0.0.2:6379) now",
        ),
        (
            EngineEvent::Repointed {
                server: ep(3),
                master: ep(2),
                was_master: false,
            },
            Normal,
            "Reattached",
            "Replicate",
            "10.0.0.3:6379 replicates from",
        ),
        (
            EngineEvent::SwitchoverStarted {
                from: ep(1),
                to: ep(2),
            },
            Normal,
            "SwitchoverStarted",
            "Switchover",
            "from redis-0 (10.0.0.1:6379) to redis-1 (10.0.0.2:6379)",
        ),
        (
            EngineEvent::SwitchoverFailed {
                from: ep(1),
                to: ep(2),
                error: "it did not catch up".into(),
            },
            Warning,
            "SwitchoverFailed",
            "Switchover",
            "failed: it did not catch up",
        ),
        (
            EngineEvent::Waiting(Waiting::NoSwitchoverTarget {
                master: ep(1),
                unfit: vec![(ep(2), Unfit::Syncing)],
            }),
            Warning,
            "HandoverBlocked",
            "Switchover",
            "a full sync is still in progress",
        ),
        (
            EngineEvent::Waiting(Waiting::NoCandidate {
                unfit: vec![(ep(2), Unfit::OtherHistory)],
            }),
            Warning,
            "NoCandidate",
            "Failover",
            "holds another replication history",
        ),
        (
            EngineEvent::Waiting(Waiting::CandidateBehind {
                candidate: ep(2),
                ahead: ep(3),
            }),
            Warning,
            "CandidateBehind",
            "Failover",
            "10.0.0.3:6379",
        ),
        (
            EngineEvent::Waiting(Waiting::PublicationUnknown),
            Warning,
            "PublicationUnknown",
            "Publish",
            "reading it back",
        ),
        (
            EngineEvent::Waiting(Waiting::MasterFailing { master: ep(1) }),
            Normal,
            "Waiting",
            "Failover",
            "not answering",
        ),
    ];
    for (event, type_, reason, action, note) in cases {
        let described = describe(&event, &pods());
        assert_eq!(
            (described.type_, described.reason, described.action),
            (type_, reason, action),
            "{event:?}"
        );
        assert!(
            described.note.contains(note),
            "{event:?}: {:?} does not contain {note:?}",
            described.note
        );
        assert!(
            !described.note.contains("  "),
            "{event:?}: a run of spaces in {:?}",
            described.note
        );
    }
}

#[test]
fn a_note_over_1024_bytes_is_cut_on_a_char_boundary_with_an_ellipsis() {
    let short = "x".repeat(MAX_NOTE_BYTES);
    assert_eq!(bounded_note(short.clone()), short);
    // 'é' is two bytes: the cut point falls inside one.
    let long = format!("{}{}", "x".repeat(3), "é".repeat(1000));
    let cut = bounded_note(long.clone());
    assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
    assert!(cut.ends_with(ELLIPSIS));
    assert!(long.starts_with(cut.trim_end_matches(ELLIPSIS)));
    assert!(
        cut.len() > MAX_NOTE_BYTES - 8,
        "cut far too short: {}",
        cut.len()
    );
}

#[test]
fn a_switchover_failure_with_a_huge_error_still_fits() {
    let event = EngineEvent::SwitchoverFailed {
        from: ep(1),
        to: ep(2),
        error: "e".repeat(5000),
    };
    let described = describe(&event, &pods());
    assert!(described.note.len() <= MAX_NOTE_BYTES);
    assert!(described.note.starts_with("switchover from redis-0"));
    let refused = Described::switchover_refused("redis-9", &"why ".repeat(400));
    assert!(refused.note.len() <= MAX_NOTE_BYTES);
}
