//! The HTTP side: a hyper server on loopback that feeds every request to the API, the
//! kubeconfig that points at it, and the faults tests inject (an outage that refuses
//! connections, dropped watch streams, compaction, slow responses, writes applied at once but
//! answered late).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{Api, Body, Reply};
use crate::request::{Method, Query, Request};
use crate::status::Status;

/// The largest request body accepted (the real server's limit is 3 MiB for most writes).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// How a server starts.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How often an idle watch that asked for bookmarks gets one (the real server: about a minute).
    pub bookmark_interval: Duration,
    /// Serve HTTPS with a CA made at start (in the kubeconfig) and authenticate every request:
    /// no credentials is `system:anonymous`. Without TLS (the default) a request without
    /// credentials is the cluster admin, as on the real server's old insecure port, because
    /// kubectl never sends credentials over plain HTTP; bearer tokens are still honoured.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(60),
            tls: false,
        }
    }
}

/// The outage state the accept loop and every connection follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Outage {
    /// Bumped at each outage: connections of an older epoch are closed.
    epoch: u64,
    until: Option<tokio::time::Instant>,
}

/// Requests whose answer is held back after they were handled (see
/// [`ApiServer::hold_answers`]).
#[derive(Clone, Debug)]
struct Hold {
    method: String,
    body_contains: String,
    answer_after: Duration,
}

struct Shared {
    api: Arc<Api>,
    delay: Mutex<Duration>,
    hold: Mutex<Option<Hold>>,
    outage: watch::Sender<Outage>,
    tls: Option<crate::tls::Tls>,
}

/// A running test API server. Dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `options.listen` and serves in the background.
    pub async fn start(options: Options) -> std::io::Result<ApiServer> {
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let tls = if options.tls {
            Some(crate::tls::make()?)
        } else {
            None
        };
        let api = Arc::new(Api::new(options.bookmark_interval, !options.tls));
        if let Ok(mut address) = api.address.lock() {
            *address = addr.to_string();
        }
        let shared = Arc::new(Shared {
            api,
            delay: Mutex::new(Duration::ZERO),
            hold: Mutex::new(None),
            outage: watch::channel(Outage::default()).0,
            tls,
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener, addr));
        Ok(ApiServer {
            shared,
            addr,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_pem(&self) -> Option<String> {
        self.shared.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    /// A kubeconfig whose current context points at this server as the cluster admin,
    /// namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(
            &self.url(),
            self.ca_pem().as_deref(),
            &self.shared.api.admin_token,
        )
    }

    /// A kubeconfig that authenticates with `token` (e.g. a ServiceAccount's).
    pub fn kubeconfig_yaml_with_token(&self, token: &str) -> String {
        kubeconfig_yaml(&self.url(), self.ca_pem().as_deref(), token)
    }

    /// The bearer token of the cluster admin (group `system:masters`).
    pub fn admin_token(&self) -> String {
        self.shared.api.admin_token.clone()
    }

    /// A bearer token for `system:serviceaccount:NAMESPACE:NAME`; it authenticates while that
    /// ServiceAccount exists (create it first), and RBAC decides what it may do.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.shared
            .api
            .issue_token(crate::auth::Identity::ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            })
    }

    /// A bearer token for a plain user in `groups` (and `system:authenticated`).
    pub fn user_token(&self, name: &str, groups: &[&str]) -> String {
        self.shared
            .api
            .issue_token(crate::auth::Identity::User(crate::auth::User::named(
                name, groups,
            )))
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// An outage: the port refuses connections (open ones are cut) for `duration`, then the
    /// same port serves again with the state kept. Returns once the port is closed.
    pub async fn refuse_connections_for(&self, duration: Duration) {
        let until = tokio::time::Instant::now() + duration;
        let epoch = self.shared.outage.borrow().epoch + 1;
        let mut closed = self.shared.outage.subscribe();
        self.shared.outage.send_replace(Outage {
            epoch,
            until: Some(until),
        });
        // The accept loop acknowledges by clearing `until` once it has dropped the listener.
        let _ = closed
            .wait_for(|o| o.epoch == epoch && o.until.is_none())
            .await;
    }

    /// Ends every open watch stream abruptly (as a load balancer cutting connections does).
    pub fn drop_watches(&self) {
        self.shared.api.drops.send_modify(|n| *n += 1);
    }

    /// Forgets the history before now: a watch or continue from an older resourceVersion gets 410.
    pub fn compact(&self) {
        self.shared.api.compact();
    }

    /// Delays every response by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut current) = self.shared.delay.lock() {
            *current = delay;
        }
    }

    /// From now on, a `method` request whose body contains `body_contains` is handled (and a
    /// write applied) at once, but answered only after `answer_after`: the write whose
    /// client gave up waiting although it happened. `None` ends it.
    pub fn hold_answers(&self, rule: Option<(&str, &str, Duration)>) {
        if let Ok(mut hold) = self.shared.hold.lock() {
            *hold = rule.map(|(method, body_contains, answer_after)| Hold {
                method: method.to_owned(),
                body_contains: body_contains.to_owned(),
                answer_after,
            });
        }
    }

    /// The newest resourceVersion (the global counter).
    pub fn resource_version(&self) -> u64 {
        self.shared.api.lock().resource_version()
    }

    /// Every resource request RBAC allowed `user` (e.g.
    /// `system:serviceaccount:NS:NAME`) so far, in order.
    pub fn granted(&self, user: &str) -> Vec<crate::api::Granted> {
        self.shared
            .api
            .granted
            .lock()
            .map(|g| g.iter().filter(|r| r.user == user).cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        // Cut open connections and watches too.
        self.shared.outage.send_modify(|o| o.epoch += 1);
    }
}

/// A kubeconfig for the server at `url` (trusting `ca_pem` for HTTPS), authenticating with a
/// bearer token.
pub fn kubeconfig_yaml(url: &str, ca_pem: Option<&str>, token: &str) -> String {
    use base64::Engine as _;
    let ca = ca_pem
        .map(|pem| {
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test-apiserver
  cluster:
    server: {url}{ca}
contexts:
- name: test-apiserver
  context:
    cluster: test-apiserver
    namespace: default
    user: admin
current-context: test-apiserver
preferences: {{}}
users:
- name: admin
  user:
    token: {token}
"
    )
}

async fn accept_loop(shared: Arc<Shared>, mut listener: TcpListener, addr: SocketAddr) {
    let mut outage = shared.outage.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_stream(shared.clone(), stream));
                }
            }
            changed = outage.changed() => {
                if changed.is_err() {
                    return;
                }
                let Outage { epoch, until } = *outage.borrow_and_update();
                let Some(until) = until else { continue };
                drop(listener);
                shared.outage.send_replace(Outage { epoch, until: None });
                outage.borrow_and_update();
                tokio::time::sleep_until(until).await;
                // Take the same port back; another process may hold it for a moment.
                listener = loop {
                    match TcpListener::bind(addr).await {
                        Ok(listener) => break listener,
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                };
            }
        }
    }
}

/// Serves one accepted connection, after the TLS handshake on a TLS server.
async fn serve_stream(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    match &shared.tls {
        None => serve_connection(shared.clone(), stream).await,
        Some(tls) => {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), tls.acceptor.accept(stream));
            if let Ok(Ok(stream)) = handshake.await {
                serve_connection(shared.clone(), stream).await;
            }
        }
    }
}

async fn serve_connection<S>(shared: Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut outage = shared.outage.subscribe();
    let epoch = outage.borrow_and_update().epoch;
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(respond(&shared, request).await) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = outage.changed() => {
                if changed.is_err() || outage.borrow_and_update().epoch != epoch {
                    return;
                }
            }
        }
    }
}

type ResponseBody = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn status_response(status: &Status) -> hyper::Response<ResponseBody> {
    reply_response(Reply::status(status))
}

async fn respond(
    shared: &Shared,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let delay = shared.delay.lock().map(|d| *d).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let status = if too_large {
                Status {
                    code: 413,
                    reason: "RequestEntityTooLarge",
                    message: "the request body is too large".into(),
                    details: None,
                }
            } else {
                Status::bad_request(format!("error reading the request body: {error}"))
            };
            return status_response(&status);
        }
    };
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let request = Request {
        method: Method::parse(parts.method.as_str()),
        method_name: parts.method.as_str().to_string(),
        path: percent_decode(parts.uri.path()),
        query: Query::parse(parts.uri.query()),
        accept: header(hyper::header::ACCEPT),
        content_type: header(hyper::header::CONTENT_TYPE),
        authorization: header(hyper::header::AUTHORIZATION),
        impersonate_user: parts
            .headers
            .get("impersonate-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        impersonate_groups: parts
            .headers
            .get_all("impersonate-group")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect(),
        body,
    };
    let held = shared
        .hold
        .lock()
        .ok()
        .and_then(|hold| hold.clone())
        .filter(|hold| {
            hold.method.eq_ignore_ascii_case(parts.method.as_str())
                && String::from_utf8_lossy(&request.body).contains(&hold.body_contains)
        });
    // A handler that panicked must not take the connection with it: answer 500.
    let api = shared.api.clone();
    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api.handle(&request)))
        .unwrap_or_else(|_| {
            Reply::status(&Status::internal(
                "the server hit an internal error handling this request",
            ))
        });
    if std::env::var_os("TEST_APISERVER_LOG").is_some() {
        eprintln!(
            "{} {}?{} [{}] -> {}",
            parts.method,
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            request.accept,
            reply.code
        );
    }
    if let Some(hold) = held {
        // Applied already; only the answer is late (a client that stops waiting sees a
        // timeout, never the outcome).
        tokio::time::sleep(hold.answer_after).await;
    }
    reply_response(reply)
}

fn percent_decode(path: &str) -> String {
    form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| path.to_string())
}

fn reply_response(reply: Reply) -> hyper::Response<ResponseBody> {
    let body = match reply.body {
        Body::Json(value) => full(value.to_string()),
        Body::Text(text) => full(text),
        Body::Watch(receiver) => {
            let stream = tokio_stream_from(receiver).map(|item| item.map(Frame::data));
            http_body_util::BodyExt::boxed(StreamBody::new(stream))
        }
    };
    let mut builder = hyper::Response::builder()
        .status(reply.code)
        .header(hyper::header::CONTENT_TYPE, reply.content_type);
    for warning in &reply.warnings {
        builder = builder.header(
            "Warning",
            format!("299 - {}", crate::status::go_quote(warning)),
        );
    }
    builder
        .body(body)
        .unwrap_or_else(|_| hyper::Response::new(full("internal error")))
}

/// An mpsc receiver as a stream (what tokio-stream's wrapper does, without the crate).
fn tokio_stream_from<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
