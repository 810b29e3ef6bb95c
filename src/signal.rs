//! The signals every mode stops on: SIGTERM (what Kubernetes and systemd send) and SIGINT.

/// Resolves at the first SIGTERM or SIGINT.
pub async fn terminate_or_interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    if let Ok(mut terminate) = signal(SignalKind::terminate()) {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
