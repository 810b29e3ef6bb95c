//! What the controller's per-pair tasks know of a pair besides its engine: its key, its pods
//! by endpoint, their role labels, its generation, the last switchover. Plain data that
//! `pairs` writes and the publisher, the status writer and Event rendering read; it imports
//! nothing above it.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::crd::{RedisPair, SwitchoverStatus};
use crate::engine::Endpoint;

/// Which pod each member endpoint is.
pub type PodIndex = BTreeMap<Endpoint, String>;

/// A RedisPair, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub namespace: String,
    pub name: String,
}

impl PairKey {
    pub fn of(pair: &RedisPair) -> Self {
        Self {
            namespace: pair.namespace().unwrap_or_default(),
            name: pair.name_any(),
        }
    }
}

impl std::fmt::Display for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a pair's tasks know of its pods and spec; every reconcile refreshes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairView {
    pub pods: PodIndex,
    /// Each member pod's role label as the pod watch last saw it.
    pub labels: BTreeMap<String, Option<String>>,
    pub generation: Option<i64>,
    pub last_switchover: Option<SwitchoverStatus>,
}

/// A server named for people: `pod (IP:port)`, or the endpoint alone when no pod is it.
pub fn describe(pods: &PodIndex, endpoint: &Endpoint) -> String {
    match pods.get(endpoint) {
        Some(pod) => format!("{pod} ({endpoint})"),
        None => endpoint.to_string(),
    }
}
