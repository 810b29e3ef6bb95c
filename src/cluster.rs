//! Reaching Kubernetes, for the controller and the sidecar: the client (from `KUBECONFIG` or
//! in-cluster, kube's usual inference) and the namespace this process runs in.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kube::runtime::watcher;

/// Where Kubernetes mounts the namespace of a pod's service account.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot find Kubernetes credentials ({0}); set KUBECONFIG to a kubeconfig file, or run \
         in a pod with a service account"
    )]
    Config(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client from the configuration: {0}")]
    Client(#[source] kube::Error),
}

/// A client and the namespace its configuration names (the kubeconfig context's, or the
/// service account's in a pod).
pub struct Cluster {
    pub client: kube::Client,
    pub default_namespace: String,
}

pub async fn connect() -> Result<Cluster, ClusterError> {
    let config = kube::Config::infer().await.map_err(ClusterError::Config)?;
    let default_namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config).map_err(ClusterError::Client)?;
    Ok(Cluster {
        client,
        default_namespace,
    })
}

/// A watcher's events, forever, with failures as items: after one, the watcher is not polled
/// again (polling is what retries) until a [`WatchBackoff`] delay has passed. The backoff is
/// reset by an event that shows the API server answered, not by the watcher's `Init` marker,
/// which it sends before every list attempt, including those that fail (so kube-runtime's
/// `StreamBackoff`, which resets on any `Ok`, retries at its shortest delay throughout an
/// outage).
pub fn resumed<K, S>(watch: S) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    futures_util::stream::unfold(
        (Box::pin(watch), WatchBackoff::default(), None),
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
    )
}

/// Exponential backoff from [`WatchBackoff::MIN`] to [`WatchBackoff::MAX`], with jitter so
/// that the sidecars of many pods do not all return at once after an API server outage.
///
/// Shorter than client-go's (0.8 s to 30 s): a sidecar that resumes late follows a failover
/// late, and a controller that resumes late sees a pod deletion late.
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

/// The namespace of the pod this process runs in: `POD_NAMESPACE` (the downward API), else
/// the service account's; `None` outside a pod.
pub fn pod_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|ns| !ns.trim().is_empty())
        .or_else(|| read_namespace(Path::new(SERVICE_ACCOUNT_NAMESPACE)))
}

fn read_namespace(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|ns| !ns.is_empty())
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
    fn a_service_account_namespace_file_is_read_trimmed() {
        let dir = std::env::temp_dir().join(format!("redis-pair-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("namespace");
        std::fs::write(&file, "apps\n").expect("write");
        assert_eq!(read_namespace(&file).as_deref(), Some("apps"));
        std::fs::write(&file, "  \n").expect("write");
        assert_eq!(read_namespace(&file), None);
        assert_eq!(read_namespace(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
