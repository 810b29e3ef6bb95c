//! Reaching Kubernetes, for the controller and the sidecar: the client (from `KUBECONFIG` or
//! in-cluster, kube's usual inference) and the namespace this process runs in.

use std::path::Path;
use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;

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

/// How a watch that failed is retried: after 100 ms, doubling to at most 2 s, back to 100 ms
/// once it has held for 30 s. kube's default (client-go's) grows to 30 s, so after an API
/// server outage of that length a watch could resume half a minute late: a failover, or a
/// sidecar following one, would wait that long.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(builder), Duration::from_secs(30))
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
