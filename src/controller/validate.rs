//! Is a RedisPair manageable as it is, and if so, what the engine gets: the members (one per
//! selected pod with an IP) and the settings. Pure: the reconciler fetches, this decides.
//!
//! A bad RedisPair is a different thing from a transient failure: it gets phase `Invalid`, a
//! condition and an Event naming the fix, and waits for a change instead of retrying.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::crd::{self, RedisPair};
use crate::engine::runner::Member;
use crate::engine::{Fencing, Policy, Published};

/// What the engine of a valid pair runs with; a change of any of it restarts the engine
/// (members change in place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub policy: Policy,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub switchover_timeout: Duration,
    pub paused: bool,
    /// From `spec.authSecretRef`.
    pub password: Option<String>,
}

/// A selected pod the engine can reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMember {
    pub pod: String,
    pub member: Member,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub members: Vec<PodMember>,
    pub settings: Settings,
    /// What the annotations already publish (`None`: nothing yet).
    pub published: Option<Published>,
}

/// Why a RedisPair cannot be managed; a fixed set, used as the condition reason, the Event
/// reason and a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    BadSelector,
    BadTiming,
    BadAnnotation,
    NoPods,
    OnePod,
    PodWithoutIP,
    PodsOfAnotherPair,
    SecretMissing,
    SecretKeyMissing,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::BadSelector => "BadSelector",
            InvalidReason::BadTiming => "BadTiming",
            InvalidReason::BadAnnotation => "BadAnnotation",
            InvalidReason::NoPods => "NoPods",
            InvalidReason::OnePod => "OnePod",
            InvalidReason::PodWithoutIP => "PodWithoutIP",
            InvalidReason::PodsOfAnotherPair => "PodsOfAnotherPair",
            InvalidReason::SecretMissing => "SecretMissing",
            InvalidReason::SecretKeyMissing => "SecretKeyMissing",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub reason: InvalidReason,
    /// Names the problem and the fix.
    pub message: String,
}

/// What the reconciler found of `spec.authSecretRef`.
#[derive(Clone, Copy, Debug)]
pub enum SecretLookup<'a> {
    NotReferenced,
    Missing,
    Found(&'a Secret),
}

/// Everything the decision looks at.
pub struct Observed<'a> {
    pub pair: &'a RedisPair,
    /// Every pod of the pair's namespace.
    pub pods: &'a [&'a Pod],
    /// Every other RedisPair of the namespace.
    pub others: &'a [&'a RedisPair],
    pub secret: SecretLookup<'a>,
    /// The pair's engine is running: the pod count and IP rules only hold at the start, so a
    /// rolling restart (one pod gone, one without an IP for a moment) is a membership change
    /// for a running engine, not a reason to stop it.
    pub running: bool,
}

pub fn validate(observed: &Observed<'_>) -> Result<Desired, Invalid> {
    let pair = observed.pair;
    let spec = &pair.spec;
    let invalid = |reason, message: String| Invalid { reason, message };

    let selector = selector_of(pair).map_err(|why| invalid(InvalidReason::BadSelector, why))?;
    let settings = settings(pair, observed.secret)?;
    let published = crd::published(pair).map_err(|e| {
        invalid(
            InvalidReason::BadAnnotation,
            format!(
                "{e}; the epoch must only rise, so set it to a decimal above every epoch used \
                 before (sidecars ignore lower ones)"
            ),
        )
    })?;

    let namespace = pair.namespace();
    let mut selected: Vec<&Pod> = observed
        .pods
        .iter()
        .copied()
        .filter(|pod| pod.namespace() == namespace && selector.matches(pod.labels()))
        .collect();
    selected.sort_by_key(|pod| pod.name_any());

    for other in observed.others {
        if other.namespace() != namespace || other.name_any() == pair.name_any() {
            continue;
        }
        let Ok(theirs) = selector_of(other) else {
            continue;
        };
        if let Some(shared) = selected.iter().find(|pod| theirs.matches(pod.labels())) {
            return Err(invalid(
                InvalidReason::PodsOfAnotherPair,
                format!(
                    "pod {} is also selected by RedisPair {}; a pod may belong to one RedisPair \
                     only: give each RedisPair a selector of its own",
                    shared.name_any(),
                    other.name_any()
                ),
            ));
        }
    }

    let live: Vec<&Pod> = selected
        .iter()
        .copied()
        .filter(|pod| !has_ended(pod))
        .collect();
    if !observed.running {
        match live.len() {
            0 => {
                return Err(invalid(
                    InvalidReason::NoPods,
                    format!(
                        "no running pod in namespace {} matches spec.selector ({selector}); \
                         label the Redis pods or fix the selector",
                        namespace.as_deref().unwrap_or("default")
                    ),
                ));
            }
            1 => {
                return Err(invalid(
                    InvalidReason::OnePod,
                    format!(
                        "only pod {} matches spec.selector ({selector}); a RedisPair needs a \
                         master and at least one replica: run two or more Redis pods",
                        live[0].name_any()
                    ),
                ));
            }
            _ => {}
        }
        if let Some(pod) = live.iter().find(|pod| pod_ip(pod).is_none()) {
            return Err(invalid(
                InvalidReason::PodWithoutIP,
                format!(
                    "pod {} has no IP yet (phase {}); the pair is taken on once every selected \
                     pod has one",
                    pod.name_any(),
                    pod.status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .unwrap_or("unknown")
                ),
            ));
        }
    }
    let port = u16::try_from(spec.port).map_err(|_| {
        invalid(
            InvalidReason::BadTiming,
            format!("spec.port {} is not a port (1-65535)", spec.port),
        )
    })?;
    let members = live
        .iter()
        .filter_map(|pod| {
            let ip = pod_ip(pod)?;
            let mut member = Member::at(SocketAddr::new(ip, port));
            member.leaving = pod.metadata.deletion_timestamp.is_some();
            Some(PodMember {
                pod: pod.name_any(),
                member,
            })
        })
        .collect();
    Ok(Desired {
        members,
        settings,
        published,
    })
}

/// The pair's selector; an empty one is refused, as it would take every pod of the namespace.
pub fn selector_of(pair: &RedisPair) -> Result<Selector, String> {
    let selector = Selector::try_from(pair.spec.selector.clone())
        .map_err(|e| format!("spec.selector is not a valid label selector: {e}"))?;
    if selector.selects_all() {
        return Err(
            "spec.selector is empty and would select every pod in the namespace; select the \
             Redis pods by their labels"
                .into(),
        );
    }
    Ok(selector)
}

fn settings(pair: &RedisPair, secret: SecretLookup<'_>) -> Result<Settings, Invalid> {
    let spec = &pair.spec;
    let failover = &spec.failover;
    let timing = |message: String| Invalid {
        reason: InvalidReason::BadTiming,
        message,
    };
    let (probe_interval, probe_timeout, down_after) = (
        failover.probe_interval(),
        failover.probe_timeout(),
        failover.down_after(),
    );
    if probe_interval.is_zero() || failover.switchover_timeout().is_zero() {
        return Err(timing(
            "spec.failover.probeInterval and switchoverTimeout must be greater than zero".into(),
        ));
    }
    if probe_timeout >= down_after {
        return Err(timing(format!(
            "spec.failover.probeTimeout ({}) must be shorter than downAfter ({}), or a hung \
             master is never seen failing before it is down",
            failover.probe_timeout, failover.down_after
        )));
    }
    let fencing = if spec.fencing.enabled {
        let max_lag_secs = u32::try_from(spec.fencing.max_lag_seconds)
            .ok()
            .filter(|lag| *lag > 0)
            .ok_or_else(|| timing("spec.fencing.maxLagSeconds must be at least 1".into()))?;
        // Redis counts a replica's lag in whole seconds and re-checks it once a second, so a
        // master cut off at once stops taking writes within maxLagSeconds + 2 s; the engine's
        // down-after clock starts at the last answer, up to one probe interval before the cut.
        let fenced_within = Duration::from_secs(u64::from(max_lag_secs) + 2) + probe_interval;
        if down_after < fenced_within {
            return Err(timing(format!(
                "spec.failover.downAfter ({}) must be at least fencing.maxLagSeconds + 2s + \
                 failover.probeInterval ({}): a master cut off from its replicas may take \
                 writes for up to maxLagSeconds + 2s, and no replica may be promoted before it \
                 stops",
                failover.down_after,
                humantime::format_duration(fenced_within)
            )));
        }
        Fencing::On { max_lag_secs }
    } else {
        Fencing::Off
    };
    let password = match (&spec.auth_secret_ref, secret) {
        (None, _) | (Some(_), SecretLookup::NotReferenced) => None,
        (Some(reference), SecretLookup::Missing) => {
            return Err(Invalid {
                reason: InvalidReason::SecretMissing,
                message: format!(
                    "Secret {} (spec.authSecretRef) does not exist in namespace {}; create it \
                     with the Redis password under key {:?}, or fix spec.authSecretRef",
                    reference.name,
                    pair.namespace().as_deref().unwrap_or("default"),
                    reference.key
                ),
            });
        }
        (Some(reference), SecretLookup::Found(secret)) => {
            let password = password_in(secret, &reference.key).ok_or_else(|| Invalid {
                reason: InvalidReason::SecretKeyMissing,
                message: format!(
                    "Secret {} has no key {:?} holding a UTF-8 password (spec.authSecretRef.key); \
                     add it, or name the key that holds the password",
                    reference.name, reference.key
                ),
            })?;
            Some(password).filter(|p| !p.is_empty())
        }
    };
    Ok(Settings {
        policy: Policy {
            down_after,
            fencing,
        },
        probe_interval,
        probe_timeout,
        switchover_timeout: failover.switchover_timeout(),
        paused: spec.paused,
        password,
    })
}

/// The password under `key`, without the line end a file-made Secret carries. An empty one is
/// no password (as an empty REDISPAIR_PASSWORD is in local mode): Redis refuses `AUTH ""`.
fn password_in(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok());
    let from_string_data = || {
        secret
            .string_data
            .as_ref()
            .and_then(|data: &BTreeMap<String, String>| data.get(key).cloned())
    };
    from_data
        .or_else(from_string_data)
        .map(|password| password.trim_end_matches(['\r', '\n']).to_owned())
}

/// A pod that finished (Succeeded, Failed) keeps its IP in status, but nothing listens.
fn has_ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests;
