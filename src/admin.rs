//! The admin endpoint of every mode, served with hyper over HTTP/1.1: `/healthz`, `/readyz`
//! and `/metrics` always; `/status` where the mode has one; `POST /switchover` in local mode.
//! What "ready" means is the mode's: a published master (local), every watch synced
//! (controller), a verified master and a bound listener (sidecar).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use prometheus_client::registry::Registry;

use crate::engine::Endpoint;
use crate::engine::runner::EngineHandle;

/// `Ok` when ready, else why not (the 503 body).
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;
/// The JSON `/status` serves.
pub type StatusView = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct AdminState {
    pub registry: Registry,
    pub ready: Readiness,
    pub status: Option<StatusView>,
    /// Local mode's engine, for `POST /switchover`.
    pub engine: Option<EngineHandle>,
    /// Cancelled when the process starts shutting down: `/readyz` turns false at once.
    pub draining: CancellationToken,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(error = %error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %error, "admin connection ended with an error");
            }
        });
    }
}

async fn route(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let ready = if state.draining.is_cancelled() {
                Err("shutting down".to_owned())
            } else {
                (state.ready)()
            };
            match ready {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            }
        }
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, crate::metrics::encode(&state.registry));
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/status") if state.status.is_some() => match &state.status {
            Some(status) => json(StatusCode::OK, &status()),
            None => not_found(state),
        },
        (&Method::POST, "/switchover") if state.engine.is_some() => {
            switchover(state, request).await
        }
        (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed(),
        (_, "/status") if state.status.is_some() => method_not_allowed(),
        (_, "/switchover") if state.engine.is_some() => method_not_allowed(),
        _ => not_found(state),
    }
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

fn not_found(state: &AdminState) -> Response<Full<Bytes>> {
    let mut paths = vec!["/healthz", "/readyz", "/metrics"];
    if state.status.is_some() {
        paths.push("/status");
    }
    if state.engine.is_some() {
        paths.push("POST /switchover");
    }
    text(
        StatusCode::NOT_FOUND,
        format!("not found; try {}\n", paths.join(", ")),
    )
}

async fn switchover(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let target = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("target="))
        .map(|raw| {
            raw.replace("%3A", ":")
                .replace("%3a", ":")
                .parse::<Endpoint>()
        });
    // The body is not used; read it so keep-alive connections stay in sync.
    let _ = request.into_body().collect().await;
    let target = match target.transpose() {
        Ok(target) => target,
        Err(error) => return error_json(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let Some(engine) = &state.engine else {
        return not_found(state);
    };
    match engine.switchover(target).await {
        Ok(published) => json(
            StatusCode::OK,
            &serde_json::json!({ "master": published.master, "epoch": published.epoch }),
        ),
        Err(error) => error_json(
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::CONFLICT),
            &error.to_string(),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_json(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}
