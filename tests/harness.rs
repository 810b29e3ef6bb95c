//! Self-checks of the end-to-end fixtures in tests/support, against redis-server alone, so a
//! failover test that fails points at redis-pair and not at the harness.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::time::Duration;

use support::{PortLease, RedisPair, RedisServer, Resp, always, eventually};

#[tokio::test]
async fn replica_fixture_returns_once_the_replica_is_caught_up() {
    let a = RedisServer::master().await;
    a.fill("k", 100).await;
    let b = RedisServer::replica(&a).await;
    assert_eq!(b.dbsize().await.unwrap(), 100);
    let r = b.replication().await.unwrap();
    assert_eq!(
        (r.role.as_str(), r.master, r.link_up),
        ("slave", Some(a.addr()), true)
    );
}

#[test]
fn a_leased_port_is_not_leased_again_until_released() {
    let lease = PortLease::take();
    let port = lease.port();
    assert!(
        PortLease::try_take(port).is_none(),
        "port {port} leased twice"
    );
    drop(lease);
    assert!(
        PortLease::try_take(port).is_some(),
        "port {port} not released"
    );
}

/// A fixture's port is free only a moment before its server binds it: a process outside the
/// tests' port leases can take it first and then answers PING in its place. Here the port is
/// taken for sure (by a server whose lease the fixture bypasses).
#[tokio::test]
async fn server_fixture_moves_to_another_port_when_its_port_is_answered_by_another_server() {
    let other = RedisServer::master().await;
    other.cmd(&["SET", "owner", "other"]).await.unwrap();
    let ours = RedisServer::builder()
        .first_port(other.port())
        .start()
        .await;
    assert_ne!(ours.port(), other.port());
    assert_eq!(ours.cmd(&["GET", "owner"]).await.unwrap(), Resp::Nil);
}

#[tokio::test]
async fn pair_fixture_moves_to_other_ports_when_its_ports_are_answered_by_another_pair() {
    let a = RedisServer::master().await;
    let a2 = RedisServer::replica(&a).await;
    let b = RedisServer::master().await;
    let b2 = RedisServer::replica(&b).await;
    let other = RedisPair::builder().server(&a).server(&a2).start().await;
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
    };
    let (listen, admin) = (
        port(other.proxy_addr()).unwrap(),
        port(other.admin_addr()).unwrap(),
    );
    let ours = RedisPair::builder()
        .server(&b)
        .server(&b2)
        .first_ports(listen, admin)
        .start()
        .await;
    assert_ne!(ours.admin_addr(), other.admin_addr());
    assert_eq!(
        ours.status().await.unwrap().master(),
        Some(b.addr().as_str())
    );
}

#[tokio::test]
async fn restart_comes_back_empty_on_the_same_port() {
    let mut a = RedisServer::master().await;
    a.fill("k", 10).await;
    let port = a.port();
    a.kill();
    assert!(
        a.conn().await.is_err(),
        "a killed server refuses connections"
    );
    a.restart().await;
    assert_eq!(a.port(), port);
    assert_eq!(
        a.dbsize().await.unwrap(),
        0,
        "no persistence: data is gone after a restart"
    );
}

#[tokio::test]
async fn stopped_server_answers_nothing_until_continued() {
    let mut a = RedisServer::master().await;
    a.stop();
    let mut c = a
        .conn()
        .await
        .expect("the kernel still accepts connections");
    c.send(&["PING"]).await.unwrap();
    assert!(
        c.read_within(Duration::from_millis(300)).await.is_err(),
        "no reply while stopped"
    );
    a.cont();
    assert_eq!(
        c.read_within(Duration::from_secs(2)).await.unwrap(),
        Resp::Simple("PONG".into())
    );
}

#[tokio::test]
async fn password_fixture_authenticates_its_own_connections() {
    let a = RedisServer::builder().requirepass("pw").start().await;
    assert_eq!(a.dbsize().await.unwrap(), 0);
    let mut anon = support::Conn::connect(&a.addr()).await.unwrap();
    assert!(
        matches!(anon.cmd(&["DBSIZE"]).await.unwrap(), Resp::Error(e) if e.starts_with("NOAUTH"))
    );
}

#[tokio::test]
#[should_panic(expected = "timed out")]
async fn eventually_panics_with_the_last_observation_at_its_deadline() {
    eventually("never", Duration::from_millis(100), async || {
        Err::<(), _>("still false".to_string())
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "invariant broken")]
async fn always_panics_when_the_invariant_breaks_inside_the_window() {
    let start = std::time::Instant::now();
    always(
        "holds for 50ms only",
        Duration::from_millis(300),
        async || {
            if start.elapsed() < Duration::from_millis(50) {
                Ok(())
            } else {
                Err("broke".into())
            }
        },
    )
    .await;
}

#[test]
fn http_parser_reads_plain_and_chunked_bodies() {
    let plain = b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno";
    assert_eq!(
        support::parse_http_response(plain).unwrap(),
        (503, "no".to_string())
    );
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
    assert_eq!(
        support::parse_http_response(chunked).unwrap(),
        (200, "{\"a\":1}".to_string())
    );
}
