//! The L4 proxy: accept a client, connect it to the published master, copy bytes both ways
//! until either side closes or a newer epoch names another master.
//!
//! It never parses Redis traffic, which is why every command works through it (pipelining,
//! MULTI, pub/sub, blocking pops, MONITOR, RESP3). The data path is a read into a buffer
//! allocated once per connection and a write of the same bytes, with TCP_NODELAY on both sides;
//! the only shared state it touches per read is one relaxed atomic add for the byte counter.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Per direction, per connection.
    pub buffer_size: usize,
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
    async fn run(&self, mut client: TcpStream) {
        let _ = client.set_nodelay(true);
        let Some((epoch, mut upstream)) = self.connect_to_master().await else {
            return;
        };
        let _ = upstream.set_nodelay(true);
        let mut published = self.published.clone();
        tokio::select! {
            result = self.copy_both_ways(&mut client, &mut upstream) => {
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

    async fn copy_both_ways(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
    ) -> io::Result<()> {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let size = self.config.buffer_size;
        tokio::try_join!(
            copy_one_way(
                &mut client_read,
                &mut upstream_write,
                size,
                &self.metrics.bytes_client_to_server
            ),
            copy_one_way(
                &mut upstream_read,
                &mut client_write,
                size,
                &self.metrics.bytes_server_to_client
            ),
        )?;
        Ok(())
    }
}

/// Copies until end of stream, then half-closes the other side so that a client's FIN reaches
/// Redis (and Redis's reaches the client) while the other direction finishes.
async fn copy_one_way<R, W>(
    from: &mut R,
    to: &mut W,
    buffer_size: usize,
    bytes: &Counter,
) -> io::Result<()>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buffer = vec![0u8; buffer_size];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
        bytes.inc_by(n as u64);
    }
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
