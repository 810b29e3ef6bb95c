//! What the RedisPair's status and its pods' role labels should say, from what the engine
//! reports. Pure: the pair's status task writes what this builds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::validate::Invalid;
use super::view::PairView;
pub use super::view::PodIndex;
use crate::crd::{FailoverStatus, MasterStatus, Phase, RedisPairStatus, ReplicaStatus};
use crate::engine::runner::{Health, ServerStatus, Status};
use crate::engine::{Endpoint, FailureKind, Published, Role};

pub const VALID: &str = "Valid";
pub const MASTER_AVAILABLE: &str = "MasterAvailable";
pub const REPLICAS_IN_SYNC: &str = "ReplicasInSync";

/// How a server's last probe failed, if it did.
fn failure_of(server: &ServerStatus) -> Option<FailureKind> {
    server.failure
}

/// The status of a pair whose engine runs; `published` is what the engine last published
/// (the master's run_id shown is the published one, never a later probe's).
pub fn running(
    engine: &Status,
    view: &PairView,
    published: &Published,
    previous: &RedisPairStatus,
    now: Timestamp,
) -> RedisPairStatus {
    let pods = &view.pods;
    let generation = view.generation;
    let last_switchover = view.last_switchover.as_ref();
    let pod_of = |endpoint: &Endpoint| {
        pods.get(endpoint)
            .cloned()
            .unwrap_or_else(|| endpoint.to_string())
    };
    let master = engine.master.as_ref();
    let master_server = master.and_then(|m| engine.servers.iter().find(|s| &s.address == m));
    let master_up =
        master_server.is_some_and(|s| s.health == Health::Up && s.role == Some(Role::Master));
    let replicas: Vec<ReplicaStatus> = engine
        .servers
        .iter()
        .filter(|s| Some(&s.address) != master)
        .map(|s| ReplicaStatus {
            pod: pod_of(&s.address),
            endpoint: s.address.to_string(),
            link_up: s.health == Health::Up
                && s.role == Some(Role::Replica)
                && s.master.as_ref() == master
                && s.link_up == Some(true),
            lag_bytes: s.lag_bytes.and_then(|l| i64::try_from(l).ok()),
        })
        .collect();
    let in_sync = replicas.iter().filter(|r| r.link_up).count();
    let phase = if engine.paused {
        Phase::Paused
    } else if master.is_none() {
        Phase::NoMaster
    } else if master_up && !replicas.is_empty() && in_sync == replicas.len() {
        Phase::Healthy
    } else {
        Phase::Degraded
    };
    let failing_with = |kind: FailureKind| -> Vec<String> {
        engine
            .servers
            .iter()
            .filter(|s| failure_of(s) == Some(kind))
            .map(|s| pod_of(&s.address))
            .collect()
    };
    let rejected = failing_with(FailureKind::AuthFailed);
    let full = failing_with(FailureKind::MaxClients);
    let master_full = master_server.is_some_and(|s| failure_of(s) == Some(FailureKind::MaxClients));
    let password_rejected = (!rejected.is_empty()).then(|| {
        format!(
            "the password redis-pair uses is rejected by {}: make the Secret of \
             spec.authSecretRef hold the requirepass of the Redis pods (or remove \
             authSecretRef if they have none)",
            rejected.join(", ")
        )
    });
    // A server at maxclients is alive and may still take writes from the clients it has:
    // never failed over, and never a password problem. Only a person can make room.
    let at_max_clients = (!full.is_empty()).then(|| {
        format!(
            "{} refuse new connections: maxclients is reached, so redis-pair cannot probe or \
             manage them (a master is not failed over while it is alive); raise maxclients or \
             close the clients that hold too many connections",
            full.join(", ")
        )
    });
    let message = password_rejected
        .or(at_max_clients)
        .or_else(|| engine.waiting.clone())
        .or_else(|| {
            let warnings: Vec<String> = engine
                .servers
                .iter()
                .flat_map(|s| {
                    s.warnings
                        .iter()
                        .map(move |w| format!("{}: {w}", pod_of(&s.address)))
                })
                .collect();
            (!warnings.is_empty()).then(|| warnings.join("; "))
        });
    let last_failover = engine
        .last_failover
        .as_ref()
        .map(|f| {
            let epoch = i64::try_from(f.epoch).unwrap_or(i64::MAX);
            // The pod that was master may be gone by now (deleted): the name written when it
            // was still there stays.
            let before = previous.last_failover.as_ref().filter(|p| p.epoch == epoch);
            let named = |endpoint: &Endpoint, earlier: Option<&String>| {
                pods.get(endpoint)
                    .or(earlier)
                    .cloned()
                    .unwrap_or_else(|| endpoint.to_string())
            };
            FailoverStatus {
                time: Time(
                    Timestamp::from_millisecond(i64::try_from(f.unix_ms).unwrap_or(i64::MAX))
                        .unwrap_or(now),
                ),
                from: f
                    .from
                    .as_ref()
                    .map(|e| named(e, before.and_then(|b| b.from.as_ref()))),
                to: f
                    .to
                    .as_ref()
                    .map(|e| named(e, before.and_then(|b| b.to.as_ref()))),
                reason: f.reason.as_str().to_owned(),
                epoch,
            }
        })
        // A restarted engine forgets; the status remembers.
        .or_else(|| previous.last_failover.clone());
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(previous, type_, ok, reason, message, generation, now)
    };
    let conditions = vec![
        condition(VALID, true, "Valid", "the RedisPair can be managed".into()),
        match (master, master_up) {
            (Some(m), true) => condition(
                MASTER_AVAILABLE,
                true,
                "Published",
                format!("{} ({m}) is the master, epoch {}", pod_of(m), engine.epoch),
            ),
            (Some(m), false) if master_full => condition(
                MASTER_AVAILABLE,
                false,
                "MaxClients",
                format!(
                    "the published master {} ({m}) refuses new connections: maxclients is \
                     reached; it is alive and keeps its master role",
                    pod_of(m)
                ),
            ),
            (Some(m), false) => condition(
                MASTER_AVAILABLE,
                false,
                "MasterNotAnswering",
                format!("the published master {} ({m}) is not answering", pod_of(m)),
            ),
            (None, _) => condition(
                MASTER_AVAILABLE,
                false,
                "NoMaster",
                engine
                    .waiting
                    .clone()
                    .unwrap_or_else(|| "no master is published".into()),
            ),
        },
        if replicas.is_empty() {
            condition(
                REPLICAS_IN_SYNC,
                false,
                "NoReplica",
                "there is no replica: a failure of the master loses the pair".into(),
            )
        } else if in_sync == replicas.len() {
            condition(
                REPLICAS_IN_SYNC,
                true,
                "InSync",
                format!("{in_sync} of {} replicas in sync", replicas.len()),
            )
        } else {
            condition(
                REPLICAS_IN_SYNC,
                false,
                "NotInSync",
                format!("{in_sync} of {} replicas in sync", replicas.len()),
            )
        },
    ];
    RedisPairStatus {
        phase: Some(phase),
        message,
        master: master.map(|m| MasterStatus {
            pod: pod_of(m),
            endpoint: m.to_string(),
            // The published identity (the annotation), the one a restart is judged against.
            run_id: published
                .run_id
                .clone()
                .filter(|_| published.master.as_ref() == Some(m)),
        }),
        replicas_in_sync: Some(format!("{in_sync}/{}", replicas.len())),
        replicas,
        epoch: Some(i64::try_from(engine.epoch).unwrap_or(i64::MAX)),
        last_failover,
        last_switchover: last_switchover
            .cloned()
            .or_else(|| previous.last_switchover.clone()),
        conditions,
        observed_generation: generation,
    }
}

/// The status of a pair that cannot be managed: what was published stays as it was.
pub fn invalid(
    invalid: &Invalid,
    generation: Option<i64>,
    previous: &RedisPairStatus,
    now: Timestamp,
) -> RedisPairStatus {
    RedisPairStatus {
        phase: Some(Phase::Invalid),
        message: Some(invalid.message.clone()),
        conditions: vec![condition(
            previous,
            VALID,
            false,
            invalid.reason.as_str(),
            invalid.message.clone(),
            generation,
            now,
        )],
        observed_generation: generation,
        ..previous.clone()
    }
}

/// A condition, keeping its last transition time while its status does not change.
fn condition(
    previous: &RedisPairStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The role label every member pod should carry: `master` on the published master, `replica`
/// on an answering replica of it, none on anything else (down, or not yet repointed), so a
/// Service selecting a role only routes to a pod in it.
pub fn role_labels(engine: &Status, pods: &PodIndex) -> BTreeMap<String, Option<&'static str>> {
    pods.iter()
        .map(|(endpoint, pod)| {
            let server = engine.servers.iter().find(|s| &s.address == endpoint);
            let role = match server {
                Some(_) if engine.master.as_ref() == Some(endpoint) => Some("master"),
                Some(s)
                    if s.health == Health::Up
                        && s.role == Some(Role::Replica)
                        && s.master.is_some()
                        && s.master == engine.master =>
                {
                    Some("replica")
                }
                _ => None,
            };
            (pod.clone(), role)
        })
        .collect()
}

#[cfg(test)]
mod tests;
