//! The proxy: accept a client and carry its requests to the published master, and the
//! replies back, until either side closes or a newer epoch names another master.
//!
//! Two paths, and no byte is ever changed on either:
//! - **shared** (`mux`, the default): plain data commands of all clients travel on one server
//!   connection, so Redis and the proxy pay their socket calls per batch rather than per
//!   request. Only frame boundaries and command names are read (`resp`).
//! - **pinned**: at its first command that needs a connection of its own (MULTI, SUBSCRIBE,
//!   BLPOP, AUTH, SELECT n, MONITOR, anything unknown), and from the start with
//!   `--no-multiplex`, a client gets its own server connection and its bytes are copied both
//!   ways as they come. This is why every command works through the proxy.
//!
//! The copy path reads into a per-thread scratch buffer and writes the same bytes on, with
//! TCP_NODELAY on both sides; a connection owns a buffer only while its destination applies
//! backpressure.

mod mux;
mod resp;
mod socket;

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use self::mux::{Client, CloseOnDrop, Mux, SharedEnd, serve_shared};
use self::socket::{ClientSocket, Socket, shutdown, write_now};
pub use self::socket::{UnixListenError, UnixSocketListener};
use crate::engine::{Endpoint, Published};
use crate::metrics::ProxyMetrics;
use prometheus_client::metrics::counter::Counter;

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long a client connecting while no master is published may wait for one.
    pub wait_for_master: Duration,
    /// Deadline for connecting to the master.
    pub connect_timeout: Duration,
    /// On shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Share server connections between clients for plain data commands (see `mux`).
    pub multiplex: bool,
    /// How many server connections the clients share at most.
    pub shared_connections: usize,
    /// A client on the shared path with more replies than this waiting for it is closed.
    pub max_client_backlog: usize,
    /// Request bytes the shared path holds for the master, in all; a quarter of it per
    /// client (`mux::RequestBudget`).
    pub max_request_backlog: usize,
}

/// Where clients connect: a TCP address, and optionally a Unix socket as well.
pub struct Listeners {
    pub tcp: TcpListener,
    pub unix: Option<UnixSocketListener>,
}

impl Listeners {
    async fn accept(&self) -> io::Result<ClientSocket> {
        let unix = async {
            match &self.unix {
                Some(unix) => unix.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = self.tcp.accept() => accepted.map(|(stream, _)| ClientSocket::Tcp(stream)),
            accepted = unix => accepted.map(ClientSocket::Unix),
        }
    }
}

/// Serves `listeners` until `shutdown` is cancelled, then drains: no new connections, open ones
/// get `drain_timeout` to finish and are closed after that.
pub async fn serve(
    listeners: Listeners,
    published: watch::Receiver<Published>,
    metrics: ProxyMetrics,
    config: ProxyConfig,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let connector = Connector {
        published,
        metrics,
        config,
        single_thread: matches!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        ),
    };
    let mux = connector
        .config
        .multiplex
        .then(|| Mux::new(connector.clone()));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listeners.accept() => accepted,
        };
        let client = match accepted {
            Ok(client) => client,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        connector.metrics.connections.inc();
        connector.metrics.connections_open.inc();
        let connector = connector.clone();
        let mux = mux.clone();
        let stop = hard_stop.clone();
        connections.spawn(async move {
            tokio::select! {
                () = serve_client(&connector, mux.as_ref(), client) => {}
                () = stop.cancelled() => {}
            }
            connector.metrics.connections_open.dec();
        });
    }
    drop(listeners);
    connections.close();
    let open = connections.len();
    if open > 0 {
        info!(open, drain_timeout = ?connector.config.drain_timeout, "draining client connections");
    }
    if tokio::time::timeout(connector.config.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "drain timeout reached; closing the remaining connections"
        );
        hard_stop.cancel();
        connections.wait().await;
    }
}

async fn serve_client(connector: &Connector, mux: Option<&Arc<Mux>>, stream: ClientSocket) {
    if let ClientSocket::Tcp(tcp) = &stream {
        let _ = tcp.set_nodelay(true);
    }
    let Some(mux) = mux else {
        connector.pinned(&stream, &[]).await;
        return;
    };
    let client = Client::new(stream);
    let _close = CloseOnDrop(client.clone());
    if let SharedEnd::Pin(first) = serve_shared(&client, mux).await {
        connector.metrics.pinned.inc();
        connector.pinned(client.stream(), &first).await;
    }
}

/// Reaches the published master for a client; shared by both paths.
#[derive(Clone)]
struct Connector {
    published: watch::Receiver<Published>,
    metrics: ProxyMetrics,
    config: ProxyConfig,
    /// On a current-thread runtime a short read may clear the socket's readiness
    /// (`after_short_read`); on a multi-thread one that would race with the I/O driver.
    single_thread: bool,
}

impl Connector {
    /// Gives the client a server connection of its own: sends `first` (bytes already read
    /// from the client), then copies both ways.
    async fn pinned(&self, client: &ClientSocket, first: &[u8]) {
        let Some((epoch, upstream)) = self.connect_to_master().await else {
            return;
        };
        let _ = upstream.set_nodelay(true);
        let mut published = self.published.clone();
        tokio::select! {
            result = async {
                write_all(&upstream, first).await?;
                self.copy_both_ways(client, &upstream).await
            } => {
                if let Err(error) = result {
                    debug!(error = %error, "proxied connection ended with an error");
                }
            }
            () = newer_epoch(&mut published, epoch) => {
                // Dropping both sockets closes them: the client reconnects to the new master.
                self.metrics.closed_by_failover.inc();
            }
        }
    }

    /// Connects to the published master. With none published, or when the connection fails
    /// (the master just died and the failover is under way), waits for a newer publication,
    /// all within `wait_for_master` of the client's arrival; then gives up and the client is
    /// closed. It never connects anywhere but the published master.
    async fn connect_to_master(&self) -> Option<(u64, TcpStream)> {
        let deadline = Instant::now() + self.config.wait_for_master;
        let mut published = self.published.clone();
        loop {
            let (epoch, master) = {
                let current = published.borrow_and_update();
                (current.epoch, current.master.clone())
            };
            if let Some(master) = master {
                match self.connect(&master).await {
                    Ok(stream) => return Some((epoch, stream)),
                    Err(error) => {
                        self.metrics.upstream_connect_failures.inc();
                        debug!(master = %master, error = %error, "connecting to the master failed");
                    }
                }
            }
            let changed = tokio::time::timeout_at(deadline, newer_epoch(&mut published, epoch));
            if changed.await.is_err() {
                self.metrics.no_master_timeouts.inc();
                return None;
            }
        }
    }

    async fn connect(&self, master: &Endpoint) -> io::Result<TcpStream> {
        let connect = TcpStream::connect((master.host(), master.port()));
        tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    async fn copy_both_ways(&self, client: &ClientSocket, upstream: &TcpStream) -> io::Result<()> {
        tokio::try_join!(
            copy_one_way(
                client,
                upstream,
                &self.metrics.bytes_client_to_server,
                self.single_thread
            ),
            copy_one_way(
                upstream,
                client,
                &self.metrics.bytes_server_to_client,
                self.single_thread
            ),
        )?;
        Ok(())
    }
}

async fn write_all(stream: &impl Socket, mut bytes: &[u8]) -> io::Result<()> {
    loop {
        bytes = &bytes[write_now(stream, bytes)?..];
        if bytes.is_empty() {
            return Ok(());
        }
        stream.writable().await?;
    }
}

/// Bytes are read into this per-thread buffer and written straight on, so an idle or
/// request/response connection holds no buffer of its own; 64 KiB measured +11% ops/s and
/// -18% CPU over 16 KiB on `-P 16` 4 KiB SETs (docs/PERFORMANCE.md).
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

enum Read {
    /// This many bytes were read and all written on.
    Forwarded(usize),
    /// This many were read; the destination took only part, the rest is in the backlog.
    Backlogged(usize),
    Eof,
    /// Readiness was stale: nothing to read after all.
    Nothing,
}

/// Copies from `from` to `to` until end of stream, then half-closes `to`, so that a client's
/// FIN reaches Redis (and Redis's reaches the client) while the other direction finishes.
///
/// Per read: one recv into the thread's scratch buffer and one send of the same bytes. Only
/// when the destination cannot take them all does the remainder go to a per-connection
/// backlog, which is freed once written.
async fn copy_one_way(
    from: &impl Socket,
    to: &impl Socket,
    bytes: &Counter,
    single_thread: bool,
) -> io::Result<()> {
    let mut backlog = Vec::new();
    loop {
        from.readable().await?;
        let read = SCRATCH
            .with_borrow_mut(|scratch| forward(from, to, scratch, &mut backlog, single_thread))?;
        match read {
            Read::Eof => {
                return shutdown(to, std::net::Shutdown::Write);
            }
            Read::Nothing => {}
            Read::Forwarded(n) => {
                bytes.inc_by(n as u64);
            }
            Read::Backlogged(n) => {
                bytes.inc_by(n as u64);
                write_all(to, &backlog).await?;
                backlog = Vec::new();
            }
        }
    }
}

/// One read and as much of its write as the destination takes now; no await inside, so the
/// thread-local scratch buffer is never held across a suspension.
fn forward(
    from: &impl Socket,
    to: &impl Socket,
    scratch: &mut [u8],
    backlog: &mut Vec<u8>,
    single_thread: bool,
) -> io::Result<Read> {
    let n = match from.try_read(scratch) {
        Ok(0) => return Ok(Read::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Nothing),
        Err(e) => return Err(e),
    };
    if n < scratch.len() {
        mux::after_short_read(from, single_thread);
    }
    let written = write_now(to, &scratch[..n])?;
    if written == n {
        return Ok(Read::Forwarded(n));
    }
    backlog.extend_from_slice(&scratch[written..n]);
    Ok(Read::Backlogged(n))
}

/// Resolves once a publication newer than `epoch` is seen. If the engine is gone no newer one
/// can come, so it never resolves.
async fn newer_epoch(published: &mut watch::Receiver<Published>, epoch: u64) {
    loop {
        if published.borrow_and_update().epoch > epoch {
            return;
        }
        if published.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
