//! Multiplexing: the requests of many clients on a few shared server connections, each
//! client's replies handed back to it in order.
//!
//! Why: on a request/response workload every request crossing an L4 proxy costs four socket
//! calls in the proxy on top of the two in Redis, and that kernel work is what the proxy
//! costs (docs/PERFORMANCE.md). Queued on one connection, the requests of all clients that
//! were ready together reach Redis in one write and come back in one read, so Redis and the
//! proxy's server side pay per batch, not per request.
//!
//! A client starts on the shared connection and stays there while it sends only commands
//! that `resp::scan_request` calls shareable (plain data commands with one reply each). At the
//! first other command (MULTI, SUBSCRIBE, BLPOP, AUTH, SELECT 1, anything unknown or odd) it is
//! *pinned*: once every reply it is owed has been delivered, it gets a connection of its own
//! and from then on its bytes are copied as they are (`super::Connector::pinned`). Bytes are
//! never changed on either path.
//!
//! Ordering: a server connection answers in order, so each shared connection (`Upstream`)
//! keeps a queue of (client, replies owed) in the order requests were queued, and its reader
//! walks it. A client moves to another shared connection only when it is owed nothing.
//! Failure: when the server connection ends or a newer epoch is published, every client that
//! is owed a reply on it is closed (its requests may or may not have run, exactly as when a
//! direct connection breaks); clients owed nothing stay open and use the next connection.
//!
//! Memory: requests wait in a connection's `outgoing` only until the server socket takes
//! them, and a `RequestBudget` bounds those bytes per client and in all; a client over it is
//! simply not read (backpressure through TCP to the application) until the server drains
//! them, so a stalled master or a wait for one cannot grow the proxy. Replies are bounded per
//! client by `--max-client-backlog-mib` (`Client::deliver`), and a client owes at most
//! `MAX_OWED_REPLIES`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::resp::{self, Reply, Request};
use super::socket::{ClientSocket, Socket, shutdown, write_now};
use super::{Connector, SCRATCH, newer_epoch};
use crate::metrics::ProxyMetrics;
use prometheus_client::metrics::gauge::Gauge;

/// A client owed more than this many replies stops being read until some arrive, so a client
/// that pipelines without reading cannot grow the proxy's queues without bound.
const MAX_OWED_REPLIES: usize = 16 * 1024;

/// Replies outstanding on a shared connection before the next client is sent to another.
const SPREAD_AT: usize = 64;

/// The shared server connections of this proxy: up to `size`, each created when first
/// needed and replaced when it fails or the master changes.
pub(super) struct Mux {
    connector: Connector,
    pool: Mutex<Vec<Option<Arc<Upstream>>>>,
    budget: Arc<RequestBudget>,
}

impl Mux {
    pub(super) fn new(connector: Connector) -> Arc<Self> {
        let size = connector.config.shared_connections.max(1);
        let budget = Arc::new(RequestBudget::new(
            connector.config.max_request_backlog,
            connector.metrics.request_backlog_bytes.clone(),
        ));
        Arc::new(Self {
            connector,
            pool: Mutex::new(vec![None; size]),
            budget,
        })
    }

    /// The shared connection for a client that is owed nothing (so it may move): the first
    /// one with fewer than `SPREAD_AT` replies outstanding, else a new one in a free slot,
    /// else the least loaded. Filling one connection first keeps batches large (fewer socket
    /// calls on both sides); spreading a heavy load matters for large requests, as Redis
    /// reads at most 16 KiB per connection per turn of its event loop.
    fn upstream(self: &Arc<Self>) -> Arc<Upstream> {
        let mut pool = lock(&self.pool);
        let mut least: Option<(usize, &Arc<Upstream>)> = None;
        let mut free = None;
        for (index, slot) in pool.iter().enumerate() {
            match slot {
                Some(upstream) if !upstream.closed.load(Ordering::Relaxed) => {
                    let load = upstream.load.load(Ordering::Relaxed);
                    if load < SPREAD_AT {
                        return upstream.clone();
                    }
                    if least.is_none_or(|(l, _)| load < l) {
                        least = Some((load, upstream));
                    }
                }
                _ => {
                    free.get_or_insert(index);
                }
            }
        }
        if let (Some((_, upstream)), None) = (least, free) {
            return upstream.clone();
        }
        let upstream = Arc::new(Upstream::new(self.budget.clone()));
        if let Some(slot) = pool.get_mut(free.unwrap_or(0)) {
            *slot = Some(upstream.clone());
        }
        tokio::spawn(upstream.clone().run(self.connector.clone()));
        upstream
    }
}

/// Request bytes read from clients and not yet written to a server socket, bounded in all
/// (`limit`, --max-request-backlog-mib) and per client (`client_limit`, a quarter of it, so
/// that one client pipelining into a stalled master leaves room for the others).
///
/// The bound is checked before each read of a client, so it is exceeded by at most what one
/// read completes: the rest of a request already partly read (up to `MAX_SHARED_REQUEST`)
/// plus one read, per thread. A client over its share is woken when its bytes fall to half
/// of it, so that the writer moves a batch before the client is read again (its bytes are all
/// on one connection: it moves only when owed nothing). Clients waiting for the total are
/// woken as soon as it is back under the limit: bytes stuck on one stalled connection must
/// not keep the clients of the others waiting for a lower mark.
struct RequestBudget {
    total: AtomicUsize,
    limit: usize,
    client_limit: usize,
    /// Wakes every client waiting for the total to fall (`notify_waiters`: no permit is
    /// stored, so a client creates its `notified()` before it checks the total).
    drained: Notify,
    /// The same total, for /metrics.
    gauge: Gauge,
}

impl RequestBudget {
    fn new(limit: usize, gauge: Gauge) -> Self {
        let limit = limit.max(1);
        Self {
            total: AtomicUsize::new(0),
            limit,
            client_limit: (limit / 4).max(1),
            drained: Notify::new(),
            gauge,
        }
    }

    /// `client` queued `bytes` toward a server; called under the upstream's `state` lock,
    /// with the entry added to its `unsent` ledger.
    fn take(&self, client: &Client, bytes: usize) {
        client.unsent.fetch_add(bytes, Ordering::Relaxed);
        self.total.fetch_add(bytes, Ordering::Relaxed);
        self.gauge.inc_by(to_i64(bytes));
    }

    /// `bytes` of `client`'s requests were written to the server, or dropped with the
    /// connection; called under the upstream's `state` lock. Wakes the client when its own
    /// bytes fall to half its limit.
    fn give_back_client(&self, client: &Client, bytes: usize) {
        let low = self.client_limit / 2;
        let before = client.unsent.fetch_sub(bytes, Ordering::Relaxed);
        if before > low && before - bytes <= low {
            client.wake.notify_one();
        }
    }

    /// Completes `give_back_client` for `bytes` in all; wakes every client waiting for the
    /// total when it is back under the limit.
    fn give_back_total(&self, bytes: usize) {
        let before = self.total.fetch_sub(bytes, Ordering::Relaxed);
        self.gauge.dec_by(to_i64(bytes));
        if before > self.limit && before - bytes <= self.limit {
            self.drained.notify_waiters();
        }
    }

    fn client_over(&self, client: &Client) -> bool {
        client.unsent.load(Ordering::Relaxed) > self.client_limit
    }

    fn total_over(&self) -> bool {
        self.total.load(Ordering::Relaxed) > self.limit
    }
}

fn to_i64(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// One shared server connection.
struct Upstream {
    state: Mutex<UpstreamState>,
    budget: Arc<RequestBudget>,
    /// Replies owed on this connection, for choosing the least loaded one.
    load: AtomicUsize,
    /// Set once, under the `state` lock (so `submit` never queues on a closed connection);
    /// atomic so that choosing a connection need not take that lock.
    closed: AtomicBool,
    /// Wakes the writer when requests are queued on an empty queue.
    queued: Notify,
}

#[derive(Default)]
struct UpstreamState {
    /// Requests not yet handed to the writer.
    outgoing: Vec<u8>,
    /// Whose bytes are not yet written to the server, in order: first the rest of the
    /// writer's current batch, then `outgoing`. The writer gives them back to the budget as
    /// the socket takes them; `close` gives back the rest.
    unsent: VecDeque<Unsent>,
    /// Who is owed the next replies, in order.
    owed: VecDeque<Owed>,
}

struct Owed {
    client: Arc<Client>,
    replies: usize,
}

struct Unsent {
    client: Arc<Client>,
    bytes: usize,
}

impl Upstream {
    fn new(budget: Arc<RequestBudget>) -> Self {
        Self {
            state: Mutex::default(),
            budget,
            load: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            queued: Notify::new(),
        }
    }

    /// Queues complete, shareable requests of `client`. False if this connection has closed
    /// (the caller gets a new one and retries).
    fn submit(&self, client: &Arc<Client>, requests: &[u8], count: usize) -> bool {
        let mut state = lock(&self.state);
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        client.owed.fetch_add(count, Ordering::Relaxed);
        self.load.fetch_add(count, Ordering::Relaxed);
        match state.owed.back_mut() {
            Some(last) if Arc::ptr_eq(&last.client, client) => last.replies += count,
            _ => state.owed.push_back(Owed {
                client: client.clone(),
                replies: count,
            }),
        }
        match state.unsent.back_mut() {
            Some(last) if Arc::ptr_eq(&last.client, client) => last.bytes += requests.len(),
            _ => state.unsent.push_back(Unsent {
                client: client.clone(),
                bytes: requests.len(),
            }),
        }
        self.budget.take(client, requests.len());
        let was_empty = state.outgoing.is_empty();
        state.outgoing.extend_from_slice(requests);
        drop(state);
        if was_empty {
            // Not written here: the writer runs after every client that became readable in
            // the same turn of the event loop, so their requests leave in one write.
            self.queued.notify_one();
        }
        true
    }

    async fn run(self: Arc<Self>, connector: Connector) {
        if let Some((epoch, stream)) = connector.connect_to_master().await {
            let _ = stream.set_nodelay(true);
            let mut published = connector.published.clone();
            connector.metrics.shared_connections_open.inc();
            let ended = tokio::select! {
                result = self.write_requests(&stream) => result,
                result = self.read_replies(&stream, &connector) => result,
                () = newer_epoch(&mut published, epoch) => Ok(()),
            };
            connector.metrics.shared_connections_open.dec();
            if let Err(error) = ended {
                debug!(error = %error, "shared server connection ended");
            }
        }
        self.close(&connector.metrics);
    }

    /// Marks the connection closed and closes every client still owed a reply on it.
    fn close(&self, metrics: &ProxyMetrics) {
        let owed = {
            let mut state = lock(&self.state);
            self.closed.store(true, Ordering::Relaxed);
            state.outgoing = Vec::new();
            // The writer is gone (or never ran): what it had not written is dropped, and
            // the clients waiting on it may be read again (those owed replies are closed
            // below).
            let mut dropped = 0;
            for Unsent { client, bytes } in std::mem::take(&mut state.unsent) {
                self.budget.give_back_client(&client, bytes);
                dropped += bytes;
            }
            self.budget.give_back_total(dropped);
            std::mem::take(&mut state.owed)
        };
        for Owed { client, .. } in owed {
            if client.fail() {
                metrics.closed_by_failover.inc();
            }
        }
    }

    async fn write_requests(&self, stream: &TcpStream) -> io::Result<()> {
        let mut writing = Vec::new();
        loop {
            {
                let mut state = lock(&self.state);
                std::mem::swap(&mut state.outgoing, &mut writing);
            }
            if writing.is_empty() {
                self.queued.notified().await;
                continue;
            }
            // As `write_all`, but each write gives its bytes back to the budget at once, so
            // clients waiting on it are read again while the rest of a large batch is sent.
            let mut rest = &writing[..];
            loop {
                let written = write_now(stream, rest)?;
                if written > 0 {
                    self.sent(written);
                    rest = &rest[written..];
                }
                if rest.is_empty() {
                    break;
                }
                stream.writable().await?;
            }
            writing.clear();
            if writing.capacity() > 4 * resp::MAX_SHARED_REQUEST {
                writing = Vec::new();
            }
        }
    }

    /// The server socket took the next `bytes` of the writer's batch.
    fn sent(&self, bytes: usize) {
        let mut state = lock(&self.state);
        let mut left = bytes;
        while left > 0 {
            let Some(front) = state.unsent.front_mut() else {
                break;
            };
            let done = front.bytes.min(left);
            front.bytes -= done;
            left -= done;
            self.budget.give_back_client(&front.client, done);
            if front.bytes == 0 {
                state.unsent.pop_front();
            }
        }
        drop(state);
        self.budget.give_back_total(bytes - left);
    }

    async fn read_replies(&self, stream: &TcpStream, connector: &Connector) -> io::Result<()> {
        const READ_SIZE: usize = 64 * 1024;
        let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
        // Replies before `start` have been delivered.
        let mut start = 0;
        loop {
            stream.readable().await?;
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.drain(..start);
                start = 0;
                buf.reserve(READ_SIZE);
            }
            let space = buf.capacity() - buf.len();
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    if n < space {
                        after_short_read(stream, connector.single_thread);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            start = self.deliver(&buf, start, connector)?;
            if start == buf.len() {
                buf.clear();
                start = 0;
                if buf.capacity() > 4 * READ_SIZE {
                    buf = Vec::with_capacity(READ_SIZE);
                }
            }
        }
    }

    /// Hands the complete replies in `buf[start..]` to the clients owed them; returns where
    /// the undelivered rest starts.
    fn deliver(&self, buf: &[u8], mut start: usize, connector: &Connector) -> io::Result<usize> {
        let metrics = &connector.metrics;
        while start < buf.len() {
            // One lock per run of replies: find who is owed them, count the complete ones
            // (a fast scan of headers), and take them off the queue.
            let mut state = lock(&self.state);
            let Some(front) = state.owed.front_mut() else {
                return Err(out_of_step("a reply nobody asked for"));
            };
            let wanted = front.replies;
            let mut end = start;
            let mut count = 0;
            while count < wanted {
                match resp::scan_reply(&buf[end..]) {
                    Reply::Complete(len) => {
                        end += len;
                        count += 1;
                    }
                    Reply::Incomplete => break,
                    Reply::Invalid => return Err(out_of_step("a reply that is not RESP")),
                }
            }
            if count == 0 {
                break;
            }
            front.replies -= count;
            let client = front.client.clone();
            if front.replies == 0 {
                state.owed.pop_front();
            }
            drop(state);
            self.load.fetch_sub(count, Ordering::Relaxed);
            if client.deliver(&buf[start..end], count, connector.config.max_client_backlog) {
                metrics.closed_slow_clients.inc();
                warn!(
                    limit_bytes = connector.config.max_client_backlog,
                    "closed a client that is not reading its replies: more than \
                     --max-client-backlog-mib waiting for it"
                );
            }
            metrics.bytes_server_to_client.inc_by((end - start) as u64);
            start = end;
            if count < wanted {
                break;
            }
        }
        Ok(start)
    }
}

fn out_of_step(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("shared server connection out of step: {what}"),
    )
}

/// A client on the shared path, as the upstream's reader sees it: where its replies go.
pub(super) struct Client {
    stream: ClientSocket,
    /// Replies owed to this client on the shared connection.
    owed: AtomicUsize,
    /// Bytes of its requests queued and not yet written to the server (`RequestBudget`).
    unsent: AtomicUsize,
    out: Mutex<ClientOut>,
    /// Wakes the client's task: a backlog to flush, the last owed reply delivered while it
    /// waits for that, its unsent requests down to half its share of the budget, or a
    /// failure.
    wake: Notify,
}

#[derive(Default)]
struct ClientOut {
    /// Replies the client's socket did not take yet.
    backlog: Vec<u8>,
    /// The client's task waits for `owed` to fall to this.
    wake_at_owed: Option<usize>,
    /// The shared connection failed while replies were owed: the client must be closed.
    failed: bool,
    /// The client's task has ended: replies are dropped.
    gone: bool,
}

impl Client {
    pub(super) fn new(stream: ClientSocket) -> Arc<Self> {
        Arc::new(Self {
            stream,
            owed: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            out: Mutex::new(ClientOut::default()),
            wake: Notify::new(),
        })
    }

    pub(super) fn stream(&self) -> &ClientSocket {
        &self.stream
    }

    /// Writes replies straight to the client's socket from the reader (no task switch on the
    /// common path); what the socket does not take waits in the backlog for the client's task.
    ///
    /// The reader cannot wait for one slow client without stalling every other client on the
    /// connection, so a backlog over `backlog_limit` closes the client instead, as Redis's
    /// `client-output-buffer-limit` would; otherwise a client that stops reading could grow the
    /// proxy (a sidecar in the application's pod) until it is killed for memory. Returns true
    /// if that happened.
    fn deliver(&self, replies: &[u8], count: usize, backlog_limit: usize) -> bool {
        let mut out = lock(&self.out);
        let mut wake = false;
        let mut over_limit = false;
        if out.gone || out.failed {
            // Nobody to hand them to: dropped.
        } else if out.backlog.len() + replies.len() > backlog_limit {
            out.failed = true;
            out.backlog = Vec::new();
            over_limit = true;
            wake = true;
        } else if out.backlog.is_empty() {
            // On an error the client's own task sees the broken socket too and ends.
            let written = write_now(&self.stream, replies).unwrap_or(replies.len());
            if written < replies.len() {
                out.backlog.extend_from_slice(&replies[written..]);
                wake = true;
            }
        } else {
            out.backlog.extend_from_slice(replies);
        }
        let owed = self.owed.fetch_sub(count, Ordering::Relaxed) - count;
        if out.wake_at_owed.is_some_and(|at| owed <= at) {
            wake = true;
        }
        drop(out);
        if wake {
            self.wake.notify_one();
        }
        over_limit
    }

    /// Returns true if this closed a client that was still open.
    fn fail(&self) -> bool {
        let mut out = lock(&self.out);
        let first = !out.failed && !out.gone;
        out.failed = true;
        out.backlog = Vec::new();
        drop(out);
        self.wake.notify_one();
        first
    }

    /// Writes what the backlog holds; Ok(true) once it is empty.
    fn flush(&self) -> io::Result<bool> {
        let mut out = lock(&self.out);
        let written = write_now(&self.stream, &out.backlog)?;
        out.backlog.drain(..written);
        if !out.backlog.is_empty() {
            return Ok(false);
        }
        out.backlog = Vec::new();
        Ok(true)
    }
}

/// How a client's time on the shared path ended.
pub(super) enum SharedEnd {
    /// It closed, or its connection broke: nothing more to do.
    Closed,
    /// It sent a command that needs its own connection; these bytes (that command onwards)
    /// must be sent there first. Every reply owed on the shared path has been delivered.
    Pin(Vec<u8>),
}

/// Serves `client` on the shared path until it closes or must be pinned.
pub(super) async fn serve_shared(client: &Arc<Client>, mux: &Arc<Mux>) -> SharedEnd {
    match serve_shared_inner(client, mux).await {
        Ok(end) => end,
        Err(error) => {
            debug!(error = %error, "client connection ended with an error");
            SharedEnd::Closed
        }
    }
}

/// Held by the client's task: when the task ends, however it ends, replies still on their
/// way are dropped and the socket is closed now, not when the last queued reference goes.
pub(super) struct CloseOnDrop(pub(super) Arc<Client>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        lock(&self.0.out).gone = true;
        let _ = shutdown(&self.0.stream, std::net::Shutdown::Both);
    }
}

async fn serve_shared_inner(client: &Arc<Client>, mux: &Arc<Mux>) -> io::Result<SharedEnd> {
    let metrics = &mux.connector.metrics;
    // Bytes of a request that has not fully arrived yet.
    let mut partial: Vec<u8> = Vec::new();
    // Taken at the first request, so a client that connects and says nothing costs no
    // server connection.
    let mut upstream: Option<Arc<Upstream>> = None;
    let budget = &mux.budget;
    let mut paused = false;
    loop {
        // Replies first: a client that is not reading them is not read either.
        if !client.flush()? {
            if is_failed(client) {
                return Ok(SharedEnd::Closed);
            }
            tokio::select! {
                ready = client.stream.writable() => ready?,
                () = client.wake.notified() => {}
            }
            continue;
        }
        if is_failed(client) {
            return Ok(SharedEnd::Closed);
        }
        if client.owed.load(Ordering::Relaxed) > MAX_OWED_REPLIES {
            wait_for_owed(client, MAX_OWED_REPLIES / 2).await;
            continue;
        }
        // Then requests: while the server is not taking them (stalled, slow, or no master to
        // connect to yet), a client over its share of the budget, or any client while the
        // total is over, is not read; TCP makes the application wait. Replies and failures
        // still wake it through `wake`.
        if budget.client_over(client) {
            note_pause(&mut paused, metrics);
            client.wake.notified().await;
            continue;
        }
        if budget.total_over() {
            let drained = budget.drained.notified();
            if budget.total_over() {
                note_pause(&mut paused, metrics);
                tokio::select! {
                    () = drained => {}
                    () = client.wake.notified() => {}
                }
            }
            continue;
        }
        paused = false;
        tokio::select! {
            ready = client.stream.readable() => ready?,
            () = client.wake.notified() => continue,
        }
        let read = SCRATCH.with_borrow_mut(|scratch| -> io::Result<Option<Read>> {
            let n = match client.stream.try_read(scratch) {
                Ok(0) => return Ok(Some(Read::Eof)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            if n < scratch.len() {
                after_short_read(&client.stream, mux.connector.single_thread);
            }
            metrics.bytes_client_to_server.inc_by(n as u64);
            if partial.is_empty() {
                let (used, read) = queue_requests(client, mux, &mut upstream, &scratch[..n]);
                partial.extend_from_slice(&scratch[used..n]);
                Ok(Some(read))
            } else {
                partial.extend_from_slice(&scratch[..n]);
                let (used, read) = queue_requests(client, mux, &mut upstream, &partial);
                partial.drain(..used);
                Ok(Some(read))
            }
        })?;
        match read {
            None | Some(Read::Queued) => {
                if partial.capacity() > resp::MAX_SHARED_REQUEST && partial.len() < 1024 {
                    partial.shrink_to(4096);
                }
            }
            Some(Read::Pin) => {
                wait_for_owed(client, 0).await;
                if is_failed(client) {
                    return Ok(SharedEnd::Closed);
                }
                while !client.flush()? {
                    client.stream.writable().await?;
                }
                return Ok(SharedEnd::Pin(partial));
            }
            Some(Read::Eof) => {
                // Half-closed: answer what was asked, then pass the FIN on. A trailing
                // incomplete request is dropped, as Redis drops it when the client closes.
                wait_for_owed(client, 0).await;
                while !is_failed(client) && !client.flush()? {
                    client.stream.writable().await?;
                }
                let _ = shutdown(&client.stream, std::net::Shutdown::Write);
                return Ok(SharedEnd::Closed);
            }
        }
    }
}

/// Counts a pause once, not at every wake-up during it.
fn note_pause(paused: &mut bool, metrics: &ProxyMetrics) {
    if !*paused {
        *paused = true;
        metrics.client_reads_paused.inc();
    }
}

enum Read {
    /// Complete shareable requests were queued; any incomplete rest was kept.
    Queued,
    /// A request that needs its own connection: it and everything after it were kept.
    Pin,
    Eof,
}

/// Queues the complete shareable requests at the front of `bytes` and returns how many bytes
/// that used.
fn queue_requests(
    client: &Arc<Client>,
    mux: &Arc<Mux>,
    upstream: &mut Option<Arc<Upstream>>,
    bytes: &[u8],
) -> (usize, Read) {
    let mut end = 0;
    let mut count = 0;
    let read = loop {
        match resp::scan_request(&bytes[end..]) {
            Request::Shared(len) => {
                end += len;
                count += 1;
            }
            Request::Incomplete => break Read::Queued,
            Request::Pin => break Read::Pin,
        }
    };
    // A client closed by a failure sends nothing more: its task is about to close it.
    if count > 0 && !is_failed(client) {
        if client.owed.load(Ordering::Relaxed) == 0 {
            // Owed nothing, so free to move to the least loaded connection.
            *upstream = None;
        }
        loop {
            let shared = upstream.get_or_insert_with(|| mux.upstream());
            if shared.submit(client, &bytes[..end], count) {
                break;
            }
            // That connection has closed since; the next one is a new one.
            *upstream = None;
        }
        mux.connector.metrics.shared_requests.inc_by(count as u64);
    }
    (end, read)
}

fn is_failed(client: &Client) -> bool {
    lock(&client.out).failed
}

/// Waits until at most `at` replies are owed, or the client has failed, flushing the replies
/// that arrive meanwhile.
async fn wait_for_owed(client: &Client, at: usize) {
    loop {
        {
            let mut out = lock(&client.out);
            if client.owed.load(Ordering::Relaxed) <= at || out.failed {
                out.wake_at_owed = None;
                return;
            }
            out.wake_at_owed = Some(at);
        }
        // Woken when the count falls to `at`, and when replies start to back up.
        client.wake.notified().await;
        if !client.flush().unwrap_or(true) {
            let _ = client.stream.writable().await;
        }
    }
}

/// After a short read the socket is drained: on a current-thread runtime, tell tokio, so the
/// next readiness wait does not cost a recv that returns EAGAIN (the closure makes no
/// syscall). Only there: `try_io` clears the readiness it sees *now*, and on a multi-thread
/// runtime the I/O driver may have recorded new data since the read, on another thread. That
/// wakeup would be lost and the connection would hang with data waiting (found by
/// `random_scripts_match_direct_on_a_multi_thread_runtime`, 2 runs in 15).
pub(super) fn after_short_read(stream: &impl Socket, single_thread: bool) {
    if single_thread {
        stream.clear_read_readiness();
    }
}

/// A poisoned lock only means another task panicked while holding it; the data (buffers and
/// counters) is still consistent enough to go on, and the proxy must not stop for it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
