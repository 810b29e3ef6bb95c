//! Redis protocol features that must pass through the `redis-pair local` proxy unchanged:
//! pub/sub, blocking commands, transactions, deep pipelines, large values and RESP3.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::time::Duration;

use support::{Conn, Resp, SETTLE_DEADLINE, eventually, proxied_pair};

fn bulk(s: &str) -> Resp {
    Resp::Bulk(s.as_bytes().to_vec())
}

async fn pubsub_message_published_on_the_master_reaches_a_subscriber_through_the_proxy(
    extra: &[&str],
) {
    let (a, _b, pair) = proxied_pair(extra).await;
    let mut sub = pair.proxy_conn().await.unwrap();
    let confirm = sub.cmd(&["SUBSCRIBE", "news"]).await.unwrap();
    assert_eq!(
        confirm,
        Resp::Array(vec![bulk("subscribe"), bulk("news"), Resp::Int(1)])
    );

    let receivers = a.cmd(&["PUBLISH", "news", "hello"]).await.unwrap();
    assert_eq!(
        receivers,
        Resp::Int(1),
        "the proxied subscriber must be subscribed on the master"
    );

    let msg = sub.read_within(Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        msg,
        Resp::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
}

async fn blpop_through_the_proxy_is_woken_by_a_push_on_the_master(extra: &[&str]) {
    let (a, _b, pair) = proxied_pair(extra).await;
    let mut waiter = pair.proxy_conn().await.unwrap();
    waiter.send(&["BLPOP", "queue", "10"]).await.unwrap();

    eventually(
        "the BLPOP to be blocked on the master",
        SETTLE_DEADLINE,
        async || match a
            .info("clients")
            .await?
            .get("blocked_clients")
            .map(String::as_str)
        {
            Some("1") => Ok(()),
            other => Err(format!("blocked_clients = {other:?}")),
        },
    )
    .await;
    assert_eq!(
        a.cmd(&["LPUSH", "queue", "job-1"]).await.unwrap(),
        Resp::Int(1)
    );

    let popped = waiter.read_within(Duration::from_secs(3)).await.unwrap();
    assert_eq!(popped, Resp::Array(vec![bulk("queue"), bulk("job-1")]));
}

async fn multi_exec_through_the_proxy_runs_the_queued_commands(extra: &[&str]) {
    let (a, _b, pair) = proxied_pair(extra).await;
    let mut c = pair.proxy_conn().await.unwrap();
    assert!(c.cmd(&["MULTI"]).await.unwrap().is_ok());
    assert_eq!(
        c.cmd(&["SET", "tx", "1"]).await.unwrap(),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["INCR", "tx"]).await.unwrap(),
        Resp::Simple("QUEUED".into())
    );
    // Nothing is applied before EXEC.
    assert_eq!(a.get("tx").await.unwrap(), None);
    let exec = c.cmd(&["EXEC"]).await.unwrap();
    assert_eq!(
        exec,
        Resp::Array(vec![Resp::Simple("OK".into()), Resp::Int(2)])
    );
    assert_eq!(a.get("tx").await.unwrap().as_deref(), Some("2"));
}

async fn pipeline_of_1000_commands_through_the_proxy_gets_every_reply_in_order(extra: &[&str]) {
    let (a, _b, pair) = proxied_pair(extra).await;
    let mut c = pair.proxy_conn().await.unwrap();
    let cmds: Vec<Vec<String>> = (0..1000)
        .map(|_| vec!["INCR".into(), "counter".into()])
        .collect();
    let replies = c.pipeline(&cmds).await.unwrap();
    let expected: Vec<Resp> = (1..=1000).map(Resp::Int).collect();
    assert!(
        replies == expected,
        "replies out of order or wrong: first {:?}",
        &replies[..5]
    );
    assert_eq!(a.get("counter").await.unwrap().as_deref(), Some("1000"));
}

async fn four_mib_value_round_trips_through_the_proxy(extra: &[&str]) {
    let (a, _b, pair) = proxied_pair(extra).await;
    // Pseudo-random bytes, so a proxy that drops or reorders a chunk cannot go unnoticed.
    let mut x: u32 = 0x2545_f491;
    let value: Vec<u8> = (0..4 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();

    let mut c = pair.proxy_conn().await.unwrap();
    let set = c.cmd(&[b"SET".as_slice(), b"big", &value]).await.unwrap();
    assert!(set.is_ok(), "{}", set.brief());
    assert_eq!(
        a.cmd(&["STRLEN", "big"]).await.unwrap(),
        Resp::Int(value.len() as i64)
    );
    let got = c.cmd(&["GET", "big"]).await.unwrap();
    assert!(
        got == Resp::Bulk(value),
        "GET returned {} instead of the 4 MiB value",
        got.brief()
    );
}

async fn hello_3_switches_the_proxied_connection_to_resp3(extra: &[&str]) {
    let (_a, _b, pair) = proxied_pair(extra).await;
    let mut c: Conn = pair.proxy_conn().await.unwrap();
    let hello = c.cmd(&["HELLO", "3"]).await.unwrap();
    assert_eq!(
        hello.map_get("proto"),
        Some(&Resp::Int(3)),
        "HELLO 3 reply: {hello:?}"
    );

    assert_eq!(c.cmd(&["HSET", "h", "f", "v"]).await.unwrap(), Resp::Int(1));
    let all = c.cmd(&["HGETALL", "h"]).await.unwrap();
    assert_eq!(
        all,
        Resp::Map(vec![(bulk("f"), bulk("v"))]),
        "HGETALL must be a RESP3 map"
    );
}

async fn monitor_through_the_proxy_streams_commands_run_on_the_master(extra: &[&str]) {
    let (a, _b, pair) = proxied_pair(extra).await;
    let mut monitor = pair.proxy_conn().await.unwrap();
    assert_eq!(
        monitor.cmd(&["MONITOR"]).await.unwrap(),
        Resp::Simple("OK".into())
    );

    assert!(a.cmd(&["SET", "watched-key", "42"]).await.unwrap().is_ok());
    // MONITOR also reports other clients' commands (our probes' INFO): read until ours.
    let line = eventually(
        "MONITOR to report the SET",
        SETTLE_DEADLINE,
        async || match monitor.read_within(Duration::from_millis(500)).await {
            Ok(Resp::Simple(line)) if line.contains("\"SET\" \"watched-key\" \"42\"") => Ok(line),
            Ok(other) => Err(format!("saw {}", other.brief())),
            Err(e) => Err(format!("read: {e}")),
        },
    )
    .await;
    assert!(line.contains("watched-key"), "{line}");
}

/// Every check runs on the default current-thread runtime and on a multi-thread one
/// (`--threads 2`), whose readiness handling differs (see `proxy::mux::after_short_read`),
/// and with the client on the proxy's Unix socket (`--listen-unix`).
macro_rules! on_both_runtimes_and_a_unix_socket {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                use super::support;
                #[tokio::test]
                async fn current_thread() {
                    super::$check(&[]).await;
                }
                #[tokio::test]
                async fn multi_thread() {
                    super::$check(&["--threads", "2"]).await;
                }
                #[tokio::test]
                async fn over_unix_socket() {
                    super::$check(&[support::CLIENTS_OVER_UNIX_SOCKET]).await;
                }
            }
        )*
    };
}

on_both_runtimes_and_a_unix_socket!(
    pubsub_message_published_on_the_master_reaches_a_subscriber_through_the_proxy,
    blpop_through_the_proxy_is_woken_by_a_push_on_the_master,
    multi_exec_through_the_proxy_runs_the_queued_commands,
    pipeline_of_1000_commands_through_the_proxy_gets_every_reply_in_order,
    four_mib_value_round_trips_through_the_proxy,
    hello_3_switches_the_proxied_connection_to_resp3,
    monitor_through_the_proxy_streams_commands_run_on_the_master,
);
