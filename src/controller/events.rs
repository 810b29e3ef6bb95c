//! The controller's Kubernetes Events: what each one says (a pure function of what happened
//! and the pods' names, table-tested), and the queue that records them while this controller
//! leads.
//!
//! The API server refuses an `events.k8s.io` Event whose note is longer than 1024 bytes
//! (422), which would lose exactly the Events with the most to say (a failure with its error
//! embedded): every note is bounded by [`bounded_note`] before it is queued.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::api::timed_write;
use super::lease::Leadership;
use super::view::{self, PodIndex};
use crate::engine::runner::describe_waiting;
use crate::engine::{Endpoint, EngineEvent, Reason, Waiting};
use crate::metrics::{ApiWrite, ControllerMetrics};

/// The longest note the API server accepts (`events.k8s.io/v1`, `note`: 1 KiB).
pub const MAX_NOTE_BYTES: usize = 1024;
const ELLIPSIS: char = '…';

/// One Event, as people read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    /// At most [`MAX_NOTE_BYTES`].
    pub note: String,
}

impl Described {
    fn new(type_: EventType, reason: &'static str, action: &'static str, note: String) -> Self {
        Self {
            type_,
            reason,
            action,
            note: bounded_note(note),
        }
    }

    /// The RedisPair cannot be managed as it is.
    pub fn invalid(message: &str) -> Self {
        Self::new(
            EventType::Warning,
            "Invalid",
            "Validate",
            message.to_owned(),
        )
    }

    /// A switchover request the engine never started (no such pod, not the leader, ...).
    pub fn switchover_refused(requested: &str, why: &str) -> Self {
        Self::new(
            EventType::Warning,
            "SwitchoverFailed",
            "Switchover",
            format!("switchover to {requested} refused: {why}"),
        )
    }
}

/// `note` cut to [`MAX_NOTE_BYTES`] on a character boundary, ending in an ellipsis when cut.
pub fn bounded_note(mut note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES - ELLIPSIS.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push(ELLIPSIS);
    note
}

/// What the Event for an engine event says; `pods` names the servers.
pub fn describe(event: &EngineEvent, pods: &PodIndex) -> Described {
    let name = |endpoint: &Endpoint| view::describe(pods, endpoint);
    let name_or = |endpoint: Option<&Endpoint>, none: &str| endpoint.map_or(none.to_owned(), name);
    match event {
        EngineEvent::Waiting(waiting) => waiting_event(waiting),
        EngineEvent::Published {
            from,
            to,
            epoch,
            reason: Reason::Corrected,
        } => Described::new(
            EventType::Warning,
            "PublicationCorrected",
            "Publish",
            format!(
                "the annotations named {}, which is not the master, under epoch {}; \
                 redis-pair owns them and published {} under epoch {epoch}",
                name_or(from.as_ref(), "no master"),
                epoch.saturating_sub(1),
                name_or(to.as_ref(), "no master"),
            ),
        ),
        EngineEvent::Published {
            from,
            to: Some(to),
            epoch,
            reason,
        } => {
            let was = from
                .as_ref()
                .map_or_else(String::new, |f| format!(", was {}", name(f)));
            let planned = matches!(reason, Reason::Switchover | Reason::MasterLeaving);
            let type_ = match reason {
                Reason::MasterDown | Reason::MasterRestarted => EventType::Warning,
                _ => EventType::Normal,
            };
            let (reason_, action) = if planned {
                ("SwitchoverCompleted", "Switchover")
            } else {
                ("Promoted", "Failover")
            };
            Described::new(
                type_,
                reason_,
                action,
                format!(
                    "{} is the master, epoch {epoch}{was} ({})",
                    name(to),
                    reason.as_str()
                ),
            )
        }
        EngineEvent::Published {
            from,
            to: None,
            epoch,
            reason,
        } => Described::new(
            EventType::Warning,
            "NoMaster",
            "Failover",
            format!(
                "no master is published (epoch {epoch}, {}): {} is gone and no replica can \
                 take over; clients wait",
                reason.as_str(),
                name_or(from.as_ref(), "the master"),
            ),
        ),
        EngineEvent::Repointed {
            server,
            master,
            was_master,
        } => Described::new(
            EventType::Normal,
            if *was_master { "Demoted" } else { "Reattached" },
            "Replicate",
            format!("{} replicates from {} now", name(server), name(master)),
        ),
        EngineEvent::SwitchoverStarted { from, to } => Described::new(
            EventType::Normal,
            "SwitchoverStarted",
            "Switchover",
            format!(
                "handing the master over from {} to {}: writes paused until it has caught up",
                name(from),
                name(to)
            ),
        ),
        EngineEvent::SwitchoverFailed { from, to, error } => Described::new(
            EventType::Warning,
            "SwitchoverFailed",
            "Switchover",
            format!(
                "switchover from {} to {} failed: {error}",
                name(from),
                name(to)
            ),
        ),
    }
}

/// A blocked engine: each reason it reports has a reason of its own, so people (and alerts
/// on Events) can tell "no replica can take the handover" from "no server holds the data".
fn waiting_event(waiting: &Waiting) -> Described {
    let (type_, reason, action) = match waiting {
        Waiting::NoSwitchoverTarget { .. } => (EventType::Warning, "HandoverBlocked", "Switchover"),
        Waiting::NoCandidate { .. } => (EventType::Warning, "NoCandidate", "Failover"),
        Waiting::CandidateBehind { .. } => (EventType::Warning, "CandidateBehind", "Failover"),
        Waiting::PublicationUnknown => (EventType::Warning, "PublicationUnknown", "Publish"),
        // The ordinary waits of a failover in progress; the engine does not report them, but
        // if it ever does they are not alarms.
        Waiting::MasterFailing { .. } | Waiting::ServersFailing | Waiting::NothingUp => {
            (EventType::Normal, "Waiting", "Failover")
        }
    };
    Described::new(type_, reason, action, describe_waiting(waiting))
}

/// Where Events go: a queue in front of kube-runtime's Recorder, so the engine never waits
/// for the API server to record something.
#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::Sender<(ObjectReference, Event)>,
}

impl EventSink {
    pub fn new() -> (Self, mpsc::Receiver<(ObjectReference, Event)>) {
        let (queue, events) = mpsc::channel(256);
        (Self { queue }, events)
    }

    pub fn send(&self, regarding: &ObjectReference, described: Described) {
        let event = Event {
            type_: described.type_,
            reason: described.reason.to_owned(),
            // Bounded again: a `Described` is bounded when built, this keeps it so if a field
            // is ever set by hand.
            note: Some(bounded_note(described.note)),
            action: described.action.to_owned(),
            secondary: None,
        };
        if self.queue.try_send((regarding.clone(), event)).is_err() {
            debug!(reason = described.reason, "event queue full; event dropped");
        }
    }
}

/// Records queued Events while this controller is the leader.
///
/// A Recorder per Event: kube-runtime's Recorder folds an Event into an earlier one of the
/// same reason and object (an EventSeries) without comparing the notes, so a second
/// "Demoted" within minutes would only bump the count of the first and keep its message,
/// naming the wrong pods. A failover's Events are few; each keeps its own message.
pub async fn record_events(
    client: kube::Client,
    reporter: Reporter,
    mut events: mpsc::Receiver<(ObjectReference, Event)>,
    leadership: Leadership,
    metrics: ControllerMetrics,
) {
    while let Some((regarding, event)) = events.recv().await {
        if !leadership.is_leader() {
            continue;
        }
        let recorder = Recorder::new(client.clone(), reporter.clone());
        let result = timed_write(
            ApiWrite::Event,
            &metrics,
            recorder.publish(&event, &regarding),
        )
        .await;
        if let Err(error) = result {
            warn!(reason = %event.reason, error = %error, "recording an event failed");
        }
    }
}

#[cfg(test)]
mod tests;
