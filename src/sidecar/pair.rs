//! The watch of the one RedisPair a sidecar follows: a kube-runtime watcher with a field
//! selector on its name in its namespace (so the sidecar needs only get/list/watch on
//! redispairs there), resumed with a short, jittered backoff after every failure, its events
//! turned into what the route decision needs.

use futures_util::{Stream, StreamExt};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::cluster;
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

/// The events of RedisPair `name` in `namespace`, forever: failures are items, not the end
/// (`cluster::resumed` retries them with backoff).
pub fn events(
    client: Client,
    namespace: &str,
    name: &str,
) -> impl Stream<Item = PairEvent> + use<> {
    let api: Api<RedisPair> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let retrying = cluster::resumed(watcher(api, config));
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

#[cfg(test)]
mod tests {
    use super::*;

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
