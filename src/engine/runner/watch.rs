//! The watched connections, one per member, following the members as they change: when one
//! ends, the process behind it most likely died, and the engine probes at once instead of at
//! the next tick.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::model::Endpoint;
use crate::engine::ops::RedisOps;

pub(super) struct Watchers<R> {
    pub redis: R,
    pub retry_every: Duration,
    pub lost: mpsc::Sender<Endpoint>,
    pub shutdown: CancellationToken,
    pub running: HashMap<Endpoint, CancellationToken>,
}

impl<R: RedisOps> Watchers<R> {
    pub fn follow<'a>(&mut self, members: impl Iterator<Item = &'a Endpoint>) {
        let members: Vec<&Endpoint> = members.collect();
        self.running.retain(|endpoint, stop| {
            let keep = members.contains(&endpoint);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for endpoint in members {
            if !self.running.contains_key(endpoint) {
                let stop = self.shutdown.child_token();
                tokio::spawn(watch_connection(
                    self.redis.clone(),
                    endpoint.clone(),
                    self.retry_every,
                    self.lost.clone(),
                    stop.clone(),
                ));
                self.running.insert(endpoint.clone(), stop);
            }
        }
    }
}

/// Holds a watched connection to one server and reports its end; reopens it after
/// `retry_every`.
async fn watch_connection<R: RedisOps>(
    redis: R,
    endpoint: Endpoint,
    retry_every: Duration,
    lost: mpsc::Sender<Endpoint>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            held = redis.watch(&endpoint) => {
                if held {
                    // A full channel means a probe round is already due.
                    let _ = lost.try_send(endpoint.clone());
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retry_every) => {}
        }
    }
}
