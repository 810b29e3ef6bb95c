//! The controller's API calls, each under a deadline: the API server's own timeouts are
//! minutes, and a failover cannot wait that long. Writes are counted by outcome (success,
//! failure, timeout); a write is either *definite* (refused, so certainly not applied) or
//! not (no answer, a broken connection, a 5xx: it may have been applied, see [`is_definite`]).

use std::time::Duration;

use kube::api::Patch;

use crate::metrics::{ApiWrite, ControllerMetrics, WriteOutcome};

/// A write on the failover path gets this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A read (a quorum GET of the RedisPair, the Secret) gets as long as a write: it is how an
/// unknown write becomes known, and the switchover's pause is sized by it too.
pub const READ_TIMEOUT: Duration = WRITE_TIMEOUT;

/// Runs one API write under [`WRITE_TIMEOUT`] and counts its outcome.
pub async fn timed_write<T>(
    kind: ApiWrite,
    metrics: &ControllerMetrics,
    write: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => {
            metrics.api_write(kind, &result);
            result
        }
        Err(_) => {
            metrics.count_write(kind, WriteOutcome::Timeout);
            Err(timed_out(WRITE_TIMEOUT))
        }
    }
}

/// Runs one API read under [`READ_TIMEOUT`]; a timeout is a `kube::Error::Service`, as a
/// broken connection is.
pub async fn timed_read<T>(
    read: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(timed_out(READ_TIMEOUT)))
}

fn timed_out(after: Duration) -> kube::Error {
    kube::Error::Service(format!("no answer within {after:?}").into())
}

/// Whether a failed write certainly did not happen: the API server answered with a refusal
/// (4xx). A timeout, a broken connection or a 5xx may hide an applied write.
pub fn is_definite(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if (400..500).contains(&status.code))
}

/// A JSON patch (RFC 6902) from its JSON form.
pub fn json_patch(ops: serde_json::Value) -> Result<Patch<()>, kube::Error> {
    serde_json::from_value::<json_patch::Patch>(ops)
        .map(Patch::Json)
        .map_err(kube::Error::SerdeError)
}

/// `/metadata/annotations/<key>` as a JSON pointer (`/` in a key is `~1`).
pub fn annotation_path(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn only_a_refusal_is_definite() {
        assert!(is_definite(&api_error(409)));
        assert!(is_definite(&api_error(422)));
        assert!(!is_definite(&api_error(500)));
        assert!(!is_definite(&api_error(503)));
        assert!(!is_definite(&timed_out(WRITE_TIMEOUT)));
    }

    #[test]
    fn annotation_keys_are_escaped_as_json_pointers() {
        assert_eq!(
            annotation_path("redispair.io/epoch"),
            "/metadata/annotations/redispair.io~1epoch"
        );
    }
}
