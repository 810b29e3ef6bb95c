//! The follower: one task that feeds the route decision what the watch and the ROLE checks
//! find, and hands its outcome on: the route to the proxy (a watch channel of
//! [`Published`]), readiness and `/status` to the admin endpoint, and the metrics. It also
//! logs, once per change rather than once per event.

use std::future::Future;
use std::path::PathBuf;
use std::pin::{Pin, pin};

use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::redis_io::{Connector, Credentials};
use crate::engine::{Endpoint, FailureKind, Published, Role};
use crate::metrics::{
    PublicationLabel, PublicationOutcome, RoleCheckLabel, RouteChange, RouteChangeLabel,
    SidecarMetrics, WatchErrorKind, WatchErrorLabel,
};

use super::pair::PairEvent;
use super::role;
use super::route::{CandidateId, Check, Observed, RoleAnswer, Route};

/// What `/status` shows and `/readyz` answers from.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub pair: String,
    pub namespace: String,
    /// The `redispair.io/epoch` held.
    pub cluster_epoch: Option<u64>,
    /// Where new connections go (a verified master), if anywhere.
    pub master: Option<Endpoint>,
    pub route_generation: u64,
    /// Why not ready; `None` when ready.
    pub not_ready: Option<String>,
    /// Whether the RedisPair watch works now (false during an API server outage: the route
    /// stands meanwhile).
    pub watching: bool,
}

/// Where the follower sends what it decides.
pub struct Outputs {
    pub route: watch::Sender<Published>,
    pub view: watch::Sender<View>,
    pub metrics: SidecarMetrics,
}

type RoleCheck = Pin<Box<dyn Future<Output = (CandidateId, RoleAnswer)> + Send>>;

/// The ROLE checks' credentials: a `--password-file` is read again when a server rejects them
/// (a rotated Secret), since a new master could otherwise never be verified.
pub struct RoleCredentials {
    pub credentials: Credentials,
    pub password_file: Option<PathBuf>,
}

pub struct Follower {
    route: Route,
    credentials: RoleCredentials,
    connector: Connector,
    outputs: Outputs,
    /// The last ROLE answer kind logged for the current candidate, so a server that keeps
    /// failing is logged once.
    logged_answer: Option<(CandidateId, RoleAnswer)>,
    /// The last ignored (stale or conflicting) publication logged, so that one left in place
    /// is logged once and not at every status update of the RedisPair.
    logged_ignored: Option<Published>,
    /// The watch failure being reported, while the watch is down.
    watch_down: Option<WatchErrorKind>,
    /// Whether the watch has delivered anything yet.
    watch_started: bool,
}

impl Follower {
    pub fn new(credentials: RoleCredentials, outputs: Outputs) -> Self {
        Self {
            route: Route::new(),
            connector: Connector::new(credentials.credentials.clone(), role::ROLE_TIMEOUT),
            credentials,
            outputs,
            logged_answer: None,
            logged_ignored: None,
            watch_down: None,
            watch_started: false,
        }
    }

    /// Runs until `stop` is cancelled. The watch stream never ends by itself (it resumes
    /// after failures); if it did, the route would stand and the checks go on.
    pub async fn run(mut self, events: impl Stream<Item = PairEvent>, stop: CancellationToken) {
        let mut events = pin!(events.fuse());
        let mut watch_open = true;
        // The check in flight, or the time the next one is due, for the current candidate.
        let mut in_flight: Option<(CandidateId, RoleCheck)> = None;
        let mut next_due: Option<(CandidateId, Instant)> = None;
        self.publish_view();
        loop {
            let due = next_due.filter(|_| in_flight.is_none());
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.next(), if watch_open => match event {
                    Some(event) => self.on_event(event),
                    None => watch_open = false,
                },
                (id, answer) = async {
                    match in_flight.as_mut() {
                        Some((_, check)) => check.await,
                        None => std::future::pending().await,
                    }
                } => {
                    in_flight = None;
                    next_due = self.on_answer(id, answer).map(|after| (id, Instant::now() + after));
                }
                () = async {
                    match due {
                        Some((_, at)) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    next_due = None;
                    if let Some(check) = self.route.check() {
                        in_flight = Some((check.id, self.start_check(check)));
                    }
                }
            }
            // A new candidate (or none) replaces whatever was checked or scheduled before.
            let current = self.route.check().map(|c| c.id);
            let scheduled = in_flight
                .as_ref()
                .map(|(id, _)| *id)
                .or(next_due.map(|(id, _)| id));
            if scheduled != current {
                in_flight = None;
                next_due = None;
                if let Some(check) = self.route.check() {
                    in_flight = Some((check.id, self.start_check(check)));
                }
            }
            self.settle();
        }
    }

    fn start_check(&self, check: Check) -> RoleCheck {
        let connector = self.connector.clone();
        Box::pin(async move {
            let answer = role::check(&connector, &check.endpoint).await;
            (check.id, answer)
        })
    }

    fn on_event(&mut self, event: PairEvent) {
        match event {
            PairEvent::Seen { uid, annotations } => {
                self.watch_resumed();
                let published = annotations.as_ref().ok().cloned().flatten();
                let error = annotations.as_ref().err().map(ToString::to_string);
                match self.route.observe_pair(uid.as_deref(), annotations) {
                    Observed::Publication(outcome) => {
                        self.count_publication(outcome);
                        if let Some(published) = &published {
                            self.log_publication(outcome, published);
                        }
                    }
                    Observed::Unpublished => {
                        debug!("the RedisPair carries no publication yet");
                    }
                    Observed::Malformed { first: true } => {
                        self.outputs.metrics.annotation_errors.inc();
                        warn!(
                            error = error.unwrap_or_default(),
                            master = ?self.route.published().master.map(|m| m.to_string()),
                            "the RedisPair's annotations are malformed; ignoring them and \
                             keeping the current route"
                        );
                    }
                    Observed::Malformed { first: false } => {}
                }
            }
            PairEvent::Missing => {
                self.watch_resumed();
                if self.route.pair_missing() {
                    warn!(
                        master = ?self.route.published().master.map(|m| m.to_string()),
                        "the RedisPair does not exist (deleted?); keeping the current route \
                         until it is published again"
                    );
                }
            }
            PairEvent::Failed { kind, error } => {
                self.outputs
                    .metrics
                    .watch_errors
                    .get_or_create(&WatchErrorLabel { kind })
                    .inc();
                let master = self.route.published().master.map(|m| m.to_string());
                if self.watch_down == Some(kind) {
                    debug!(error = %error, "the RedisPair watch failed again");
                } else if kind == WatchErrorKind::Gone {
                    // Routine: the history it would resume from was compacted; it lists again.
                    info!(error = %error, "the RedisPair watch expired; listing again");
                } else {
                    warn!(
                        error = %error,
                        hint = hint(kind),
                        master = ?master,
                        "the RedisPair watch failed; keeping the current route and retrying \
                         with backoff"
                    );
                }
                self.watch_down = Some(kind);
            }
        }
    }

    fn watch_resumed(&mut self) {
        self.watch_started = true;
        if let Some(kind) = self.watch_down.take()
            && kind != WatchErrorKind::Gone
        {
            info!("the RedisPair watch works again");
        }
    }

    fn count_publication(&self, outcome: PublicationOutcome) {
        self.outputs
            .metrics
            .publications
            .get_or_create(&PublicationLabel { outcome })
            .inc();
    }

    fn log_publication(&mut self, outcome: PublicationOutcome, published: &Published) {
        let master = published.master.as_ref().map(ToString::to_string);
        let held = self.route.cluster_epoch();
        let ignored = matches!(
            outcome,
            PublicationOutcome::Stale | PublicationOutcome::Conflict
        );
        if ignored && self.logged_ignored.as_ref() == Some(published) {
            return;
        }
        self.logged_ignored = ignored.then(|| published.clone());
        match outcome {
            PublicationOutcome::Followed => match &master {
                Some(master) => info!(
                    epoch = published.epoch,
                    master, "new publication; verifying the master before routing to it"
                ),
                None => info!(epoch = published.epoch, "new publication: no master"),
            },
            PublicationOutcome::Unchanged => {}
            PublicationOutcome::Stale => warn!(
                epoch = published.epoch,
                held = ?held,
                master = ?master,
                "ignoring a publication with a lower epoch than the one followed"
            ),
            PublicationOutcome::Conflict => warn!(
                epoch = published.epoch,
                master = ?master,
                "ignoring a publication that names another master under the epoch followed"
            ),
        }
    }

    /// Records an answer; returns when to ask again, if the candidate is still held.
    fn on_answer(&mut self, id: CandidateId, answer: RoleAnswer) -> Option<std::time::Duration> {
        self.outputs
            .metrics
            .role_checks
            .get_or_create(&RoleCheckLabel {
                outcome: role::outcome(&answer),
            })
            .inc();
        if answer == Err(FailureKind::AuthFailed) {
            self.reread_password();
        }
        let endpoint = self
            .route
            .check()
            .filter(|c| c.id == id)
            .map(|c| c.endpoint);
        let after = self.route.role_checked(id, answer)?;
        if self.logged_answer != Some((id, answer))
            && let Some(endpoint) = endpoint
        {
            let master = endpoint.to_string();
            match answer {
                Ok(Role::Master) => debug!(master, "ROLE check: master"),
                Ok(Role::Replica) => warn!(
                    server = master,
                    "the published master says it is a replica (a stale publication, or \
                     demoted); no new connections go to it"
                ),
                Err(FailureKind::AuthFailed) => warn!(
                    server = master,
                    "the ROLE check was refused for credentials; set --password-file or \
                     REDISPAIR_PASSWORD (and --username for an ACL user) to what the server \
                     requires"
                ),
                Err(kind) if self.route.verified() => info!(
                    server = master,
                    failure = kind.as_str(),
                    "the ROLE check got no answer; the verified master stays routed"
                ),
                Err(kind) => info!(
                    server = master,
                    failure = kind.as_str(),
                    "the published master does not answer ROLE yet; asking again soon"
                ),
            }
            self.logged_answer = Some((id, answer));
        }
        Some(after)
    }

    /// Reads `--password-file` again; a changed password is used from the next check on.
    fn reread_password(&mut self) {
        let Some(path) = &self.credentials.password_file else {
            return;
        };
        match super::password(Some(path)) {
            Ok(password) if password != self.credentials.credentials.password => {
                info!(file = %path.display(), "read a new password from --password-file");
                self.credentials.credentials.password = password;
                self.connector =
                    Connector::new(self.credentials.credentials.clone(), role::ROLE_TIMEOUT);
            }
            Ok(_) => {}
            Err(error) => {
                warn!(error = %error, "cannot read --password-file again; keeping the password read before")
            }
        }
    }

    /// Hands a changed route to the proxy and refreshes what the admin endpoint shows.
    fn settle(&mut self) {
        if let Some(change) = self.route.settle() {
            self.outputs
                .metrics
                .route_changes
                .get_or_create(&RouteChangeLabel {
                    reason: change.reason,
                })
                .inc();
            let to = change.to.as_ref().map(ToString::to_string);
            match change.reason {
                RouteChange::Verified => info!(
                    master = ?to,
                    generation = change.generation,
                    "routing new connections to the verified master"
                ),
                reason => info!(
                    reason = reason.as_str(),
                    generation = change.generation,
                    "no new connections until a master is verified; open ones to the old \
                     route are closed"
                ),
            }
            self.outputs.route.send_replace(self.route.published());
        }
        self.publish_view();
    }

    fn publish_view(&self) {
        let metrics = &self.outputs.metrics;
        let published = self.route.published();
        metrics
            .cluster_epoch
            .set(gauge(self.route.cluster_epoch().unwrap_or(0)));
        metrics.route_generation.set(gauge(published.epoch));
        metrics
            .master_verified
            .set(i64::from(self.route.verified()));
        metrics.pair_found.set(i64::from(self.route.pair_found()));
        let not_ready = self.route.readiness().err().map(|why| why.to_string());
        let watching = self.watch_started && self.watch_down.is_none();
        self.outputs.view.send_if_modified(|view| {
            let changed = view.cluster_epoch != self.route.cluster_epoch()
                || view.master != published.master
                || view.route_generation != published.epoch
                || view.not_ready != not_ready
                || view.watching != watching;
            view.cluster_epoch = self.route.cluster_epoch();
            view.master = published.master.clone();
            view.route_generation = published.epoch;
            view.not_ready = not_ready;
            view.watching = watching;
            changed
        });
    }
}

/// What to fix, for the failures a person must fix.
fn hint(kind: WatchErrorKind) -> &'static str {
    match kind {
        WatchErrorKind::Forbidden => {
            "grant the pod's service account get, list and watch on redispairs.redispair.io in \
             this namespace"
        }
        WatchErrorKind::NotFound => "install the RedisPair CRD (crds/redispair.yaml)",
        WatchErrorKind::Unreachable => "the API server does not answer",
        WatchErrorKind::Gone | WatchErrorKind::Other => "",
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
