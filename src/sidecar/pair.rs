//! The watch of the one RedisPair a sidecar follows: a kube-runtime watcher with a field
//! selector on its name in its namespace (so the sidecar needs only get/list/watch on
//! redispairs there), resumed with a short, jittered backoff after every failure, its events
//! turned into what the route decision needs.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::crd::{self, AnnotationError, RedisPair};
use crate::engine::Published;
use crate::metrics::WatchErrorKind;

/// What one watch event says about the RedisPair.
#[derive(Debug)]
pub enum PairEvent {
    /// It exists, with this uid and what its annotations publish.
    Seen {
        uid: Option<String>,
        annotations: Result<Option<Published>, AnnotationError>,
    },
    /// It was deleted, or a fresh list does not have it.
    Missing,
    /// The watch failed; it is resumed after a backoff.
    Failed {
        kind: WatchErrorKind,
        error: watcher::Error,
    },
}

/// The events of RedisPair `name` in `namespace`, forever: failures are items, not the end.
///
/// After a failure the watcher is not polled again (polling is what retries) until the
/// backoff has passed. The backoff is reset by an event that shows the API server answered,
/// not by the watcher's `Init` marker, which it sends before every list attempt, including
/// those that fail (so kube-runtime's `StreamBackoff`, which resets on any `Ok`, would retry
/// at its shortest delay throughout an outage).
pub fn events(
    client: Client,
    namespace: &str,
    name: &str,
) -> impl Stream<Item = PairEvent> + use<> {
    let api: Api<RedisPair> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let watch = Box::pin(watcher(api, config));
    let retrying = futures_util::stream::unfold(
        (watch, WatchBackoff::default(), None),
        |(mut watch, mut backoff, pause)| async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let event = watch.next().await?;
            let pause = match &event {
                Err(_) => Some(backoff.next_delay()),
                Ok(watcher::Event::Init) => None,
                Ok(_) => {
                    backoff.reset();
                    None
                }
            };
            Some((event, (watch, backoff, pause)))
        },
    );
    // Whether the current (re)list has shown the object yet.
    let mut listed = false;
    retrying.filter_map(move |event| {
        let event = match event {
            Ok(watcher::Event::Init) => {
                listed = false;
                None
            }
            Ok(watcher::Event::InitApply(pair)) => {
                listed = true;
                Some(seen(&pair))
            }
            Ok(watcher::Event::Apply(pair)) => Some(seen(&pair)),
            Ok(watcher::Event::InitDone) => (!listed).then_some(PairEvent::Missing),
            Ok(watcher::Event::Delete(_)) => Some(PairEvent::Missing),
            Err(error) => Some(PairEvent::Failed {
                kind: classify(&error),
                error,
            }),
        };
        std::future::ready(event)
    })
}

fn seen(pair: &RedisPair) -> PairEvent {
    PairEvent::Seen {
        uid: pair.uid(),
        annotations: crd::published(pair),
    }
}

/// A bounded label for a watch failure.
pub fn classify(error: &watcher::Error) -> WatchErrorKind {
    let status = match error {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some(status.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                return WatchErrorKind::Unreachable;
            }
            _ => None,
        },
        watcher::Error::NoResourceVersion => None,
    };
    match status {
        Some(401 | 403) => WatchErrorKind::Forbidden,
        Some(404) => WatchErrorKind::NotFound,
        Some(410) => WatchErrorKind::Gone,
        _ => WatchErrorKind::Other,
    }
}

/// Exponential backoff from [`WatchBackoff::MIN`] to [`WatchBackoff::MAX`], with jitter so
/// that the sidecars of many pods do not all return at once after an API server outage.
///
/// Shorter than client-go's (0.8 s to 30 s): a sidecar that resumes late follows a failover
/// late. It asks for one object by name, so each retry is cheap for the API server.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
    jitter: RandomState,
    tries: u64,
}

impl WatchBackoff {
    pub const MIN: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Self::MIN,
            jitter: RandomState::new(),
            tries: 0,
        }
    }
}

impl WatchBackoff {
    /// The next delay: between half and all of the current step, which doubles up to `MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(Self::MAX);
        self.tries += 1;
        // A per-process random hasher gives a cheap, uniform-enough fraction in [0, 1).
        let fraction = (self.jitter.hash_one(self.tries) >> 11) as f64 / (1u64 << 53) as f64;
        step.mul_f64(0.5 + fraction / 2.0)
    }

    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut backoff = WatchBackoff::default();
        let steps = [250, 500, 1000, 2000, 4000, 5000, 5000, 5000].map(Duration::from_millis);
        for step in steps {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay <= WatchBackoff::MIN, "{delay:?}");
    }

    #[test]
    fn watch_failures_get_bounded_kinds() {
        let status = |code: u16| kube::core::Status {
            code,
            ..kube::core::Status::default()
        };
        let api =
            |code| watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status(code))));
        assert_eq!(classify(&api(403)), WatchErrorKind::Forbidden);
        assert_eq!(classify(&api(401)), WatchErrorKind::Forbidden);
        assert_eq!(classify(&api(404)), WatchErrorKind::NotFound);
        assert_eq!(classify(&api(500)), WatchErrorKind::Other);
        assert_eq!(
            classify(&watcher::Error::WatchError(Box::new(status(410)))),
            WatchErrorKind::Gone
        );
        let io = watcher::Error::WatchFailed(kube::Error::ReadEvents(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&io), WatchErrorKind::Unreachable);
        assert_eq!(
            classify(&watcher::Error::NoResourceVersion),
            WatchErrorKind::Other
        );
    }
}
