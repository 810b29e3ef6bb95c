//! Writers for "no acknowledged write lost": clients that write as fast as they can through a
//! proxy, reconnecting after any error, and the check of what they were told was stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Conn, RedisServer, SETTLE_DEADLINE, eventually};

/// Writes `SET <name>-<i> <name>-<i>` through `proxy` as fast as it can, reconnecting after
/// any error, and returns the keys whose write was acknowledged with +OK.
pub fn spawn_writer(
    proxy: String,
    name: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut conn: Option<Conn> = None;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if conn.is_none() {
                conn = Conn::connect(&proxy).await.ok();
                if conn.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            let c = conn.as_mut().expect("connected above");
            let key = format!("{name}-{i}");
            match c.cmd(&["SET", key.as_str(), key.as_str()]).await {
                Ok(r) if r.is_ok() => acked.push(key),
                Ok(_) | Err(_) => conn = None, // not acknowledged: may or may not be stored
            }
            i += 1;
        }
        acked
    })
}

/// Several writers through `proxy`, stopped together.
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Writers {
    pub fn start(proxy: &str, prefix: &str, count: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|w| spawn_writer(proxy.to_owned(), format!("{prefix}{w}"), stop.clone()))
            .collect();
        Writers { stop, tasks }
    }

    /// Stops every writer and returns every acknowledged key.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for task in self.tasks {
            acked.extend(task.await.expect("writer task"));
        }
        acked
    }
}

/// Waits until `server` holds at least `keys` keys: writers' writes have reached it.
pub async fn await_keys(server: &RedisServer, keys: i64) {
    eventually(
        &format!("at least {keys} keys on {}", server.addr()),
        SETTLE_DEADLINE,
        async || match server.dbsize().await? {
            n if n >= keys => Ok(()),
            n => Err(format!("{n} keys")),
        },
    )
    .await
}

/// The keys of `acked` that `server` does not hold with their own name as value.
pub async fn missing(server: &RedisServer, acked: &[String]) -> Vec<String> {
    let mut c = server.conn().await.expect("connect to the final master");
    let mut lost = Vec::new();
    for chunk in acked.chunks(500) {
        let mut mget = vec!["MGET".to_string()];
        mget.extend(chunk.iter().cloned());
        let reply = c.cmd(&mget).await.expect("MGET");
        let values = reply
            .items()
            .unwrap_or_else(|| panic!("MGET → {}", reply.brief()))
            .to_vec();
        for (key, v) in chunk.iter().zip(values) {
            if v.text().as_ref() != Some(key) {
                lost.push(key.clone());
            }
        }
    }
    lost
}

/// Panics naming the lost writes, if any.
pub async fn assert_none_lost(server: &RedisServer, acked: &[String]) {
    let lost = missing(server, acked).await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing on {}, e.g. {:?}",
        lost.len(),
        acked.len(),
        server.addr(),
        &lost[..lost.len().min(10)]
    );
}
