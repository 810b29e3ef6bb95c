//! The sidecar's route decision: where new client connections go, given what the RedisPair
//! publishes and what the published server says it is. No I/O and no clock: the follower
//! feeds it events and ROLE answers, and hands the proxy what [`Route::published`] says.
//!
//! The rules, each a test below:
//! - A publication is followed only if its epoch is higher than the one held (or it is the
//!   first, or it comes from a RedisPair created anew, whose epochs start over). A lower epoch,
//!   or the held epoch naming another master, is ignored.
//! - A newly published master gets no connection before a ROLE check says `master`. From the
//!   moment a newer publication is followed, the old master gets no new connections either.
//! - A server that says it is a replica gets no new connections, verified before or not; it
//!   is routed again if it says `master` again (the engine promotes a published master back).
//! - A ROLE check that fails (refused, timeout, auth, error) changes nothing: a verified
//!   master stays routed (the controller fails over a dead one and publishes the next), an
//!   unverified one is retried soon.
//! - Nothing the API server says or fails to say (deletion, malformed annotations, outage)
//!   un-routes a verified master.
//!
//! The proxy follows a generation of its own, not the cluster epoch: it rises by one every
//! time the route changes, including changes within one cluster epoch (a master found to be
//! a replica, and back). See docs/DECISIONS.md, "Sidecar".

use std::fmt;
use std::time::Duration;

use crate::crd::AnnotationError;
use crate::engine::{Endpoint, FailureKind, Published, Role};
use crate::metrics::{PublicationOutcome, RouteChange};

/// How often the routed (or refused) master is asked ROLE again.
pub const CHECK_PERIOD: Duration = Duration::from_secs(1);
/// The first retry of an unverified master; doubled after each failure up to [`CHECK_PERIOD`].
pub const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Names one published master: a ROLE answer counts only for the candidate it was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateId(u64);

/// The ROLE check to run: ask `endpoint`, report the answer with `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub id: CandidateId,
    pub endpoint: Endpoint,
}

/// What a ROLE check found: the server's role, or why it gave none.
pub type RoleAnswer = Result<Role, FailureKind>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Verification {
    /// No ROLE check has said `master` yet; `failures` checks failed so far, the last with
    /// `last`.
    Unverified {
        failures: u32,
        last: Option<FailureKind>,
    },
    /// The last ROLE answer was `master` (failed checks since then do not count).
    Verified,
    /// The last ROLE answer was a replica: no new connections.
    Refused,
}

#[derive(Clone, Debug)]
struct Candidate {
    id: CandidateId,
    endpoint: Endpoint,
    verification: Verification,
}

/// The publication followed: the newest epoch accepted and what it names.
#[derive(Clone, Debug)]
struct Held {
    /// The uid of the RedisPair that published it.
    uid: Option<String>,
    epoch: u64,
    master: Option<Candidate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    /// Not listed yet (the first list has not answered).
    Unknown,
    Found,
    Missing,
}

/// What an event's annotations meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Publication(PublicationOutcome),
    /// No epoch annotation (nothing published yet); whatever is held stands.
    Unpublished,
    /// Malformed annotations; whatever is held stands. `first` when this bad value was not
    /// seen just before (warn and count once).
    Malformed {
        first: bool,
    },
}

/// A change of where new connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub reason: RouteChange,
    pub to: Option<Endpoint>,
    pub generation: u64,
}

#[derive(Debug)]
pub struct Route {
    held: Option<Held>,
    presence: Presence,
    malformed: Option<AnnotationError>,
    /// What the proxy was last told, and under which generation.
    routed: Option<Endpoint>,
    generation: u64,
    next_id: u64,
}

impl Default for Route {
    fn default() -> Self {
        Self::new()
    }
}

impl Route {
    pub fn new() -> Self {
        Self {
            held: None,
            presence: Presence::Unknown,
            malformed: None,
            routed: None,
            generation: 0,
            next_id: 0,
        }
    }

    /// The RedisPair (with uid `uid`) was listed or changed; `annotations` is what
    /// `crd::published` made of its annotations.
    pub fn observe_pair(
        &mut self,
        uid: Option<&str>,
        annotations: Result<Option<Published>, AnnotationError>,
    ) -> Observed {
        self.presence = Presence::Found;
        let publication = match annotations {
            Err(error) => {
                let first = self.malformed.as_ref() != Some(&error);
                self.malformed = Some(error);
                return Observed::Malformed { first };
            }
            Ok(None) => {
                self.malformed = None;
                return Observed::Unpublished;
            }
            Ok(Some(publication)) => publication,
        };
        self.malformed = None;
        if let Some(held) = &self.held
            && held.uid.as_deref() == uid
        {
            let held_master = held.master.as_ref().map(|c| &c.endpoint);
            if publication.epoch < held.epoch {
                return Observed::Publication(PublicationOutcome::Stale);
            }
            if publication.epoch == held.epoch {
                return Observed::Publication(if held_master == publication.master.as_ref() {
                    PublicationOutcome::Unchanged
                } else {
                    PublicationOutcome::Conflict
                });
            }
        }
        let master = publication.master.map(|endpoint| {
            self.next_id += 1;
            Candidate {
                id: CandidateId(self.next_id),
                endpoint,
                verification: Verification::Unverified {
                    failures: 0,
                    last: None,
                },
            }
        });
        self.held = Some(Held {
            uid: uid.map(str::to_owned),
            epoch: publication.epoch,
            master,
        });
        Observed::Publication(PublicationOutcome::Followed)
    }

    /// The RedisPair is gone (deleted, or absent from a list). Returns whether that is news.
    /// Whatever is held stands: the servers are still there.
    pub fn pair_missing(&mut self) -> bool {
        let news = self.presence != Presence::Missing;
        self.presence = Presence::Missing;
        news
    }

    /// A ROLE check for candidate `id` answered. Returns how long until the next check of
    /// the same candidate, or `None` if the answer is for a candidate no longer held.
    pub fn role_checked(&mut self, id: CandidateId, answer: RoleAnswer) -> Option<Duration> {
        let candidate = self
            .held
            .as_mut()
            .and_then(|held| held.master.as_mut())
            .filter(|candidate| candidate.id == id)?;
        candidate.verification = match (answer, &candidate.verification) {
            (Ok(Role::Master), _) => Verification::Verified,
            (Ok(Role::Replica), _) => Verification::Refused,
            (Err(kind), Verification::Unverified { failures, .. }) => Verification::Unverified {
                failures: failures.saturating_add(1),
                last: Some(kind),
            },
            (Err(_), settled) => settled.clone(),
        };
        Some(match candidate.verification {
            Verification::Unverified { failures, .. } => retry_after(failures),
            Verification::Verified | Verification::Refused => CHECK_PERIOD,
        })
    }

    /// The check to run next (now, after a new candidate; else after the delay
    /// [`Route::role_checked`] returned), if any server is published.
    pub fn check(&self) -> Option<Check> {
        let candidate = self.held.as_ref()?.master.as_ref()?;
        Some(Check {
            id: candidate.id,
            endpoint: candidate.endpoint.clone(),
        })
    }

    /// Settles the route after an input: if where new connections go changed, the generation
    /// rises and the change is returned (the follower hands [`Route::published`] to the proxy).
    pub fn settle(&mut self) -> Option<Change> {
        let target = self.target();
        if target == self.routed {
            return None;
        }
        let reason = match (&target, &self.held) {
            (Some(_), _) => RouteChange::Verified,
            (None, Some(Held { master: None, .. })) => RouteChange::NoMaster,
            (
                None,
                Some(Held {
                    master: Some(candidate),
                    ..
                }),
            ) if candidate.verification == Verification::Refused => RouteChange::Replica,
            (None, _) => RouteChange::Superseded,
        };
        self.routed = target;
        self.generation += 1;
        Some(Change {
            reason,
            to: self.routed.clone(),
            generation: self.generation,
        })
    }

    /// What the proxy follows: the master new connections go to, under the route generation.
    pub fn published(&self) -> Published {
        Published {
            epoch: self.generation,
            master: self.routed.clone(),
            run_id: None,
            replid: None,
            replid2: None,
        }
    }

    /// The cluster epoch held (`redispair.io/epoch`), if any publication was seen.
    pub fn cluster_epoch(&self) -> Option<u64> {
        self.held.as_ref().map(|held| held.epoch)
    }

    /// Whether new connections go to a verified master.
    pub fn verified(&self) -> bool {
        self.routed.is_some()
    }

    pub fn pair_found(&self) -> bool {
        self.presence == Presence::Found
    }

    /// `Ok` while a verified master is routed, else why not (the `/readyz` body).
    pub fn readiness(&self) -> Result<(), NotReady> {
        let Some(held) = &self.held else {
            return Err(match (self.presence, &self.malformed) {
                (Presence::Missing, _) => NotReady::PairMissing,
                (_, Some(error)) => NotReady::Malformed(error.to_string()),
                _ => NotReady::NothingPublished,
            });
        };
        let Some(candidate) = &held.master else {
            return Err(NotReady::NoMaster { epoch: held.epoch });
        };
        match &candidate.verification {
            Verification::Verified => Ok(()),
            Verification::Unverified { last, .. } => Err(NotReady::Unverified {
                master: candidate.endpoint.clone(),
                epoch: held.epoch,
                last: *last,
            }),
            Verification::Refused => Err(NotReady::Replica {
                master: candidate.endpoint.clone(),
                epoch: held.epoch,
            }),
        }
    }

    /// The verified-master routing target the inputs so far call for.
    fn target(&self) -> Option<Endpoint> {
        let candidate = self.held.as_ref()?.master.as_ref()?;
        (candidate.verification == Verification::Verified).then(|| candidate.endpoint.clone())
    }
}

/// How long to wait before asking an unverified master again after `failures` failed checks:
/// quick at first (a new master usually answers at once), at most [`CHECK_PERIOD`].
fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(CHECK_PERIOD)
}

/// Why the sidecar is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    NothingPublished,
    PairMissing,
    Malformed(String),
    NoMaster {
        epoch: u64,
    },
    Unverified {
        master: Endpoint,
        epoch: u64,
        last: Option<FailureKind>,
    },
    Replica {
        master: Endpoint,
        epoch: u64,
    },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NothingPublished => {
                write!(
                    f,
                    "no master published on the RedisPair yet (is the controller running?)"
                )
            }
            NotReady::PairMissing => write!(f, "the RedisPair does not exist"),
            NotReady::Malformed(error) => write!(f, "{error}"),
            NotReady::NoMaster { epoch } => {
                write!(f, "the RedisPair publishes no master (epoch {epoch})")
            }
            NotReady::Unverified {
                master,
                epoch,
                last: None,
            } => write!(
                f,
                "published master {master} (epoch {epoch}) is being verified"
            ),
            NotReady::Unverified {
                master,
                epoch,
                last: Some(kind),
            } => write!(
                f,
                "published master {master} (epoch {epoch}) is not verified yet: its ROLE check \
                 failed ({})",
                kind.as_str()
            ),
            NotReady::Replica { master, epoch } => write!(
                f,
                "published master {master} (epoch {epoch}) says it is a replica; no connections \
                 go to it"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
