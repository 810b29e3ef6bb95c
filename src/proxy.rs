//! The L4 proxy: accept a client, connect it to the published master, copy bytes both ways
//! until either side closes or a newer epoch names another master.
//!
//! It never parses Redis traffic, which is why every command works through it (pipelining,
//! MULTI, pub/sub, blocking pops, MONITOR, RESP3). The data path is a read into a per-thread
//! scratch buffer and a write of the same bytes, with TCP_NODELAY on both sides; a connection
//! owns a buffer only while its destination applies backpressure. The only shared state it
//! touches per read is one relaxed atomic add for the byte counter.

use std::io;
use std::time::Duration;

use std::cell::RefCell;

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

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
}

/// Serves `listener` until `shutdown` is cancelled, then drains: no new connections, open ones
/// get `drain_timeout` to finish and are closed after that.
pub async fn serve(
    listener: TcpListener,
    published: watch::Receiver<Published>,
    metrics: ProxyMetrics,
    config: ProxyConfig,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        metrics.connections.inc();
        metrics.connections_open.inc();
        let connection = Connection {
            published: published.clone(),
            metrics: metrics.clone(),
            config: config.clone(),
        };
        let stop = hard_stop.clone();
        connections.spawn(async move {
            tokio::select! {
                () = connection.run(client) => {}
                () = stop.cancelled() => {}
            }
            connection.metrics.connections_open.dec();
        });
    }
    drop(listener);
    connections.close();
    let open = connections.len();
    if open > 0 {
        info!(open, drain_timeout = ?config.drain_timeout, "draining client connections");
    }
    if tokio::time::timeout(config.drain_timeout, connections.wait())
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

struct Connection {
    published: watch::Receiver<Published>,
    metrics: ProxyMetrics,
    config: ProxyConfig,
}

impl Connection {
    async fn run(&self, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let Some((epoch, upstream)) = self.connect_to_master().await else {
            return;
        };
        let _ = upstream.set_nodelay(true);
        let mut published = self.published.clone();
        tokio::select! {
            result = self.copy_both_ways(&client, &upstream) => {
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

    async fn copy_both_ways(&self, client: &TcpStream, upstream: &TcpStream) -> io::Result<()> {
        tokio::try_join!(
            copy_one_way(client, upstream, &self.metrics.bytes_client_to_server),
            copy_one_way(upstream, client, &self.metrics.bytes_server_to_client),
        )?;
        Ok(())
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
async fn copy_one_way(from: &TcpStream, to: &TcpStream, bytes: &Counter) -> io::Result<()> {
    let mut backlog = Vec::new();
    loop {
        from.readable().await?;
        let read = SCRATCH.with_borrow_mut(|scratch| forward(from, to, scratch, &mut backlog))?;
        match read {
            Read::Eof => {
                return socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            Read::Nothing => {}
            Read::Forwarded(n) => {
                bytes.inc_by(n as u64);
            }
            Read::Backlogged(n) => {
                bytes.inc_by(n as u64);
                while !backlog.is_empty() {
                    to.writable().await?;
                    match to.try_write(&backlog) {
                        Ok(n) => {
                            backlog.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                backlog = Vec::new();
            }
        }
    }
}

/// One read and as much of its write as the destination takes now; no await inside, so the
/// thread-local scratch buffer is never held across a suspension.
fn forward(
    from: &TcpStream,
    to: &TcpStream,
    scratch: &mut [u8],
    backlog: &mut Vec<u8>,
) -> io::Result<Read> {
    let n = match from.try_read(scratch) {
        Ok(0) => return Ok(Read::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Nothing),
        Err(e) => return Err(e),
    };
    if n < scratch.len() {
        // A short read drained the socket (epoll is edge-triggered). Tell tokio, so the next
        // readable() waits for an event instead of costing a recv that returns EAGAIN: the
        // same shortcut tokio's own poll_read takes. The closure makes no syscall.
        let _ = from.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }
    let mut written = 0;
    while written < n {
        match to.try_write(&scratch[written..n]) {
            Ok(w) => written += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
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
