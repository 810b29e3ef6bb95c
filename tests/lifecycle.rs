//! Process lifecycle and observability of `redis-pair local`: draining on SIGTERM, and the
//! metrics a failover leaves behind.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::time::{Duration, Instant};

use support::{RedisPair, RedisServer, SETTLE_DEADLINE, eventually, metric};

async fn proxied_pair(drain: Duration) -> (RedisServer, RedisServer, RedisPair) {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .drain_timeout(drain)
        .start()
        .await;
    (a, b, pair)
}

#[tokio::test]
async fn sigterm_stops_accepting_lets_open_connections_finish_then_exits_zero() {
    let (_a, _b, mut pair) = proxied_pair(Duration::from_secs(20)).await;
    let mut open = pair.proxy_conn().await.expect("connect through the proxy");
    assert!(open.cmd(&["SET", "before", "1"]).await.unwrap().is_ok());

    pair.terminate();
    eventually(
        "/readyz to turn 503 while draining",
        SETTLE_DEADLINE,
        async || match pair.readyz().await {
            Ok(503) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    eventually(
        "new connections to be refused",
        SETTLE_DEADLINE,
        async || match pair.proxy_conn().await {
            Err(_) => Ok(()),
            Ok(_) => Err("the proxy still accepts".to_string()),
        },
    )
    .await;
    // The connection that was open keeps working during the drain.
    let reply = open
        .cmd(&["SET", "during-drain", "1"])
        .await
        .expect("still open");
    assert!(reply.is_ok(), "{}", reply.brief());

    let closed_at = Instant::now();
    drop(open);
    let code = pair.await_exit(Duration::from_secs(5)).await;
    assert_eq!(code, 0);
    assert!(
        closed_at.elapsed() < Duration::from_secs(5),
        "exited only {:?} after the last connection closed; the drain should end with it",
        closed_at.elapsed()
    );
}

#[tokio::test]
async fn sigterm_closes_connections_still_open_at_the_drain_timeout() {
    let drain = Duration::from_millis(800);
    let (_a, _b, mut pair) = proxied_pair(drain).await;
    let mut lingering = pair.proxy_conn().await.expect("connect through the proxy");
    let pong = lingering
        .cmd(&["PING"])
        .await
        .expect("PING through the proxy");
    assert_eq!(pong.text().as_deref(), Some("PONG"));

    let signalled = Instant::now();
    pair.terminate();
    lingering
        .await_closed(Duration::from_secs(5))
        .await
        .expect("the proxy closes a lingering connection after the drain timeout");
    assert!(
        signalled.elapsed() >= drain.mul_f32(0.9),
        "closed after {:?}, before the drain timeout {drain:?}",
        signalled.elapsed()
    );
    assert_eq!(pair.await_exit(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn metrics_show_the_failover_epoch_master_and_proxied_traffic() {
    let (mut a, b, pair) = proxied_pair(Duration::from_secs(1)).await;
    let mut client = pair.proxy_conn().await.expect("connect through the proxy");
    assert!(client.cmd(&["SET", "k", "v"]).await.unwrap().is_ok());
    drop(client);

    a.kill();
    pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;
    let text = eventually(
        "metrics to reflect the failover",
        SETTLE_DEADLINE,
        async || {
            let text = pair.metrics().await?;
            let ok = metric(&text, r#"redispair_failovers_total{reason="master-down"}"#)
                == Some(1.0)
                && metric(&text, "redispair_epoch") == Some(2.0)
                && metric(
                    &text,
                    &format!(r#"redispair_master{{server="{}"}}"#, b.addr()),
                ) == Some(1.0)
                && metric(
                    &text,
                    &format!(r#"redispair_server_up{{server="{}"}}"#, a.addr()),
                ) == Some(0.0);
            if ok { Ok(text) } else { Err(text) }
        },
    )
    .await;
    assert!(
        metric(&text, "redispair_proxy_connections_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // Exactly the bytes of one "SET k v" in RESP (27) and its "+OK\r\n" (5): nothing is
    // added, dropped or rewritten on the way.
    assert_eq!(
        metric(&text, "redispair_proxy_client_to_server_bytes_total"),
        Some(27.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "redispair_proxy_server_to_client_bytes_total"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"redispair_redis_commands_total{command="Promote",outcome="Success"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn unix_socket_left_by_a_killed_proxy_is_taken_over_and_removed_on_a_clean_stop() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let dir = support::TestDir::new("unix-stale");
    let path = dir.path().join("proxy.sock");
    // What a process killed with SIGKILL leaves behind: the socket file, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind the stale socket"));
    assert!(path.exists());

    let mut pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .unix_socket_at(&path)
        .start()
        .await;
    let mut conn = pair
        .proxy_conn()
        .await
        .expect("connect over the taken-over socket");
    assert!(conn.cmd(&["SET", "over-unix", "1"]).await.unwrap().is_ok());
    assert_eq!(
        a.cmd(&["GET", "over-unix"]).await.unwrap(),
        support::Resp::Bulk(b"1".to_vec()),
        "the write reached the master"
    );
    drop(conn);
    let meta = std::fs::symlink_metadata(&path).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o666,
        "anyone who can reach the path may connect, as with the loopback port"
    );

    pair.terminate();
    assert_eq!(pair.await_exit(Duration::from_secs(5)).await, 0);
    assert!(
        !path.exists(),
        "a clean stop removes the socket file: {}",
        path.display()
    );
}
