//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it: read the
//! Lease, then write it back with the resourceVersion read, so that of two controllers writing
//! at once one gets 409 Conflict. Only the holder acts; it renews every sixth of the lease
//! duration and stops acting two thirds of a duration after its last renewal, so it has
//! stopped well before another controller may take over (one duration after the Lease last
//! changed, by that controller's own clock). A clean shutdown hands the Lease over at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::{timed_read, timed_write};
use crate::metrics::{ApiWrite, ControllerMetrics};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaseConfig {
    fn retry_every(&self) -> Duration {
        self.duration / 6
    }

    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// One stretch of leadership: the number of times this process has become the leader. What
/// was started in a term that ended must not run on into the next (see `pairs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Term(u64);

/// Whether this controller may act now. Cheap to clone and to ask, from any task.
#[derive(Clone)]
pub struct Leadership {
    /// Until when the last renewal lets this controller act.
    acting_until: Arc<Mutex<Option<Instant>>>,
    /// The current (or, while not leading, the last) term; raised before `changes` says
    /// "leader", so whoever is woken by the change sees the new term.
    term: Arc<AtomicU64>,
    changes: watch::Receiver<bool>,
}

impl Leadership {
    /// True while the Lease is held and was renewed recently enough to act on. Checked before
    /// every Redis command and every API write.
    pub fn is_leader(&self) -> bool {
        self.acting_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    /// Turns true when this controller becomes the leader, false when it stops being one.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.changes.clone()
    }

    /// The term this controller leads in now, or led in last.
    pub fn term(&self) -> Term {
        Term(self.term.load(Ordering::SeqCst))
    }

    /// A leadership that a test turns on and off by hand: what the Elector does on winning
    /// and losing the Lease, without one.
    #[cfg(test)]
    pub fn by_hand() -> (Self, impl Fn(bool)) {
        let acting_until = Arc::new(Mutex::new(None));
        let term = Arc::new(AtomicU64::new(0));
        let (changes, changes_rx) = watch::channel(false);
        let leadership = Self {
            acting_until: acting_until.clone(),
            term: term.clone(),
            changes: changes_rx,
        };
        let set = move |leader: bool| {
            let until = leader.then(|| Instant::now() + Duration::from_secs(3600));
            set_acting(&acting_until, &term, &changes, until);
        };
        (leadership, set)
    }
}

/// Acting until `until` (or not at all): a new term starts when leadership is gained, before
/// anyone is told.
fn set_acting(
    acting_until: &Mutex<Option<Instant>>,
    term: &AtomicU64,
    changes: &watch::Sender<bool>,
    until: Option<Instant>,
) {
    let leader = until.is_some();
    if let Ok(mut current) = acting_until.lock() {
        *current = until;
    }
    if leader && !*changes.borrow() {
        term.fetch_add(1, Ordering::SeqCst);
    }
    changes.send_if_modified(|was| {
        let changed = *was != leader;
        *was = leader;
        changed
    });
}

/// The part of the election that writes the Lease; one per process.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    acting_until: Arc<Mutex<Option<Instant>>>,
    term: Arc<AtomicU64>,
    changes: watch::Sender<bool>,
    metrics: ControllerMetrics,
    /// The Lease's resourceVersion when last read, and when (by our clock) it was first seen:
    /// a holder that renews changes it, one that died leaves it.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(
        api: Api<Lease>,
        config: LeaseConfig,
        metrics: ControllerMetrics,
    ) -> (Self, Leadership) {
        let acting_until = Arc::new(Mutex::new(None));
        let term = Arc::new(AtomicU64::new(0));
        let (changes, changes_rx) = watch::channel(false);
        let leadership = Leadership {
            acting_until: acting_until.clone(),
            term: term.clone(),
            changes: changes_rx,
        };
        let elector = Self {
            api,
            config,
            acting_until,
            term,
            changes,
            metrics,
            observed: None,
        };
        (elector, leadership)
    }

    /// Campaigns and renews until `shutdown`; then stops acting (the caller stops what acts,
    /// then calls [`Elector::release`]).
    pub async fn run(&mut self, shutdown: CancellationToken) {
        loop {
            let attempt = Instant::now();
            match tokio::time::timeout(self.config.renew_deadline(), self.try_acquire_or_renew())
                .await
            {
                Ok(Ok(Some(holder))) if holder == self.config.identity => {
                    self.acting(Some(attempt + self.config.renew_deadline()));
                }
                Ok(Ok(holder)) => {
                    if self.is_acting() {
                        warn!(
                            holder = holder.as_deref().unwrap_or("none"),
                            "lost the lease"
                        );
                    }
                    self.acting(None);
                }
                Ok(Err(error)) => {
                    warn!(error = %error, "lease: reading or writing the Lease failed")
                }
                Err(_) => warn!("lease: the API server did not answer in time"),
            }
            let next = attempt + self.config.retry_every();
            let until = self.acting_until();
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.acting(None);
                    return;
                }
                () = tokio::time::sleep_until(until.map_or(next, |u| u.min(next))) => {}
            }
            if let Some(until) = self.acting_until()
                && Instant::now() >= until
            {
                warn!("lease: not renewed in time; stopping to act");
                self.acting(None);
            }
        }
    }

    /// Hands the Lease over at once (client-go's release: no holder, a one-second duration),
    /// so the other controller need not wait for it to expire.
    pub async fn release(&mut self) {
        // Bounded like every other call: shutting down must not hang on the API server.
        let Ok(Some(mut lease)) = timed_read(self.api.get_opt(&self.config.name)).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let result = timed_write(
            ApiWrite::Lease,
            &self.metrics,
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease),
        )
        .await;
        match result {
            Ok(_) => info!("released the lease"),
            Err(error) => warn!(error = %error, "releasing the lease failed; it expires by itself"),
        }
    }

    fn is_acting(&self) -> bool {
        self.acting_until().is_some()
    }

    fn acting_until(&self) -> Option<Instant> {
        self.acting_until.lock().map(|until| *until).unwrap_or(None)
    }

    fn acting(&self, until: Option<Instant>) {
        let leader = until.is_some();
        set_acting(&self.acting_until, &self.term, &self.changes, until);
        if leader && !self.metrics.is_leader() {
            info!(identity = %self.config.identity, "became the leader");
        }
        self.metrics.leader.set(i64::from(leader));
    }

    /// One step of client-go's algorithm; returns who holds the Lease afterwards. Its calls
    /// carry no deadline of their own: `run` bounds the whole step by the renew deadline.
    async fn try_acquire_or_renew(&mut self) -> Result<Option<String>, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.config.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let created = self.api.create(&PostParams::default(), &lease).await;
            self.metrics.api_write(ApiWrite::Lease, &created);
            return match created {
                Ok(_) => Ok(Some(self.config.identity.clone())),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
                Err(error) => Err(error),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => Instant::now(),
        };
        self.observed = Some((version, first_seen));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        if !mine {
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            if holder.is_some() && first_seen.elapsed() < held_for {
                return Ok(holder);
            }
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.holder_identity = Some(self.config.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.config.duration_seconds());
        let written = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await;
        self.metrics.api_write(ApiWrite::Lease, &written);
        match written {
            Ok(_) => {
                if !mine {
                    info!(
                        previous = holder.as_deref().unwrap_or("none"),
                        "acquired the lease"
                    );
                }
                Ok(Some(self.config.identity.clone()))
            }
            // Someone wrote in between: whoever it was holds it now.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(holder.filter(|_| !mine)),
            Err(error) => Err(error),
        }
    }
}
