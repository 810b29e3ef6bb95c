//! The shared path: plain data commands of many clients on one server connection. Each test
//! proves one promise of it against a real redis-server and the real binary: every client
//! gets exactly its own replies in order, state-changing commands leave the shared path
//! without reordering anything, and nothing one client does can break another.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use support::{
    Conn, RedisPair, RedisServer, Resp, SETTLE_DEADLINE, always, eventually, metric, proxied_pair,
    resp::encode,
};

fn bulk(bytes: impl AsRef<[u8]>) -> Resp {
    Resp::Bulk(bytes.as_ref().to_vec())
}

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

async fn proxy_metric(pair: &RedisPair, series: &str) -> f64 {
    let text = pair.metrics().await.expect("metrics");
    metric(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Client IDs of the connections the proxy holds to `server`: all but the engine's (short
/// probes running INFO or CONFIG GET, and its pub/sub watch), replicas, and the connection
/// asking.
async fn proxy_connections_on(server: &RedisServer) -> Vec<String> {
    let list = server.cmd(&["CLIENT", "LIST"]).await.expect("CLIENT LIST");
    let text = list.text().expect("CLIENT LIST is text");
    text.lines()
        .filter(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_default()
                    .to_string()
            };
            let cmd = field("cmd");
            let flags = field("flags");
            !matches!(
                cmd.as_str(),
                "client|list" | "info" | "config|get" | "auth" | "NULL"
            ) && !flags.contains('S')
                && !flags.contains('P')
        })
        .map(|line| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn concurrent_pipelining_clients_each_get_exactly_their_own_replies() {
    let (a, _b, pair) = proxied_pair(&[]).await;
    // Values with CRLF and RESP markers inside, and some larger than the proxy's 64 KiB read
    // buffer, so replies straddle reads.
    let clients = 16;
    let mut tasks = Vec::new();
    for id in 0..clients {
        let addr = pair.proxy_addr().to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await.expect("connect");
            for round in 0..20 {
                let mut batch = Vec::new();
                let mut expected = Vec::new();
                for i in 0..25 {
                    let key = format!("c{id}:r{round}:k{i}");
                    let value = if i == 7 {
                        vec![b'x'; 70_000 + id]
                    } else {
                        format!("v{id}\r\n*3\r\n$-1\r\n:{round}:{i}").into_bytes()
                    };
                    batch.extend_from_slice(&encode(&[b"SET".as_slice(), key.as_bytes(), &value]));
                    batch.extend_from_slice(&encode(&[b"GET".as_slice(), key.as_bytes()]));
                    batch.extend_from_slice(&encode(&[b"STRLEN".as_slice(), key.as_bytes()]));
                    expected.push(ok());
                    expected.push(bulk(&value));
                    expected.push(Resp::Int(value.len() as i64));
                }
                conn.send_raw(&batch).await.expect("send");
                for (n, want) in expected.iter().enumerate() {
                    let got = conn
                        .read_within(Duration::from_secs(10))
                        .await
                        .expect("reply");
                    assert_eq!(&got, want, "client {id} round {round} reply {n}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert!(
        proxy_metric(&pair, "redispair_proxy_shared_requests_total").await >= 16.0 * 20.0 * 75.0,
        "the requests went over the shared path"
    );
    assert_eq!(
        proxy_metric(&pair, "redispair_proxy_pinned_connections_total").await,
        0.0
    );
    // Sixteen busy clients and eight more connected, yet the master sees the proxy on at
    // most --shared-connections (default 4) connections.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut conn = pair.proxy_conn().await.unwrap();
        assert_eq!(
            conn.cmd(&["PING"]).await.unwrap(),
            Resp::Simple("PONG".into())
        );
        idle.push(conn);
    }
    let shared = proxy_connections_on(&a).await;
    assert!((1..=4).contains(&shared.len()), "{shared:?}");
    assert_eq!(
        proxy_metric(&pair, "redispair_proxy_shared_connections_open").await,
        shared.len() as f64,
        "the gauge counts the shared connections Redis sees"
    );
}

#[tokio::test]
async fn a_request_arriving_one_byte_at_a_time_is_queued_only_once_complete() {
    let (_a, _b, pair) = proxied_pair(&[]).await;
    let mut slow = pair.proxy_conn().await.unwrap();
    let mut other = pair.proxy_conn().await.unwrap();
    let mut bytes = encode(&["SET", "slow", "a\r\nb"]);
    bytes.extend_from_slice(&encode(&["GET", "slow"]));
    for (n, byte) in bytes.iter().enumerate() {
        slow.send_raw(&[*byte]).await.unwrap();
        if n % 7 == 0 {
            // Another client's request in between must not be mixed into the partial one.
            assert_eq!(
                other.cmd(&["INCR", "between"]).await.unwrap(),
                Resp::Int(n as i64 / 7 + 1)
            );
        }
    }
    assert_eq!(
        slow.read_within(Duration::from_secs(3)).await.unwrap(),
        ok()
    );
    assert_eq!(
        slow.read_within(Duration::from_secs(3)).await.unwrap(),
        bulk("a\r\nb")
    );
}

#[tokio::test]
async fn a_transaction_after_shared_commands_sees_them_and_keeps_reply_order() {
    let (_a, _b, pair) = proxied_pair(&[]).await;
    let mut conn = pair.proxy_conn().await.unwrap();
    let replies = conn
        .pipeline(&[
            vec!["SET".into(), "counter".into(), "1".into()],
            vec!["INCR".into(), "counter".into()],
            vec!["MULTI".into()],
            vec!["INCR".into(), "counter".into()],
            vec!["GET".into(), "counter".into()],
            vec!["EXEC".into()],
            vec!["INCR".into(), "counter".into()],
        ])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![
            ok(),
            Resp::Int(2),
            ok(),
            Resp::Simple("QUEUED".into()),
            Resp::Simple("QUEUED".into()),
            Resp::Array(vec![Resp::Int(3), bulk("3")]),
            Resp::Int(4),
        ]
    );
    assert_eq!(
        proxy_metric(&pair, "redispair_proxy_pinned_connections_total").await,
        1.0
    );
}

#[tokio::test]
async fn select_of_another_database_pins_and_does_not_leak_into_shared_clients() {
    let (_a, _b, pair) = proxied_pair(&[]).await;
    let mut db0 = pair.proxy_conn().await.unwrap();
    assert_eq!(db0.cmd(&["SELECT", "0"]).await.unwrap(), ok());
    let mut db1 = pair.proxy_conn().await.unwrap();
    assert_eq!(db1.cmd(&["SELECT", "1"]).await.unwrap(), ok());
    assert_eq!(db1.cmd(&["SET", "where", "db1"]).await.unwrap(), ok());
    assert_eq!(db0.cmd(&["GET", "where"]).await.unwrap(), Resp::Nil);
    assert_eq!(db0.cmd(&["SET", "where", "db0"]).await.unwrap(), ok());
    assert_eq!(db1.cmd(&["GET", "where"]).await.unwrap(), bulk("db1"));
    let mut fresh = pair.proxy_conn().await.unwrap();
    assert_eq!(fresh.cmd(&["GET", "where"]).await.unwrap(), bulk("db0"));
    // SELECT 0 stayed on the shared path; SELECT 1 did not.
    assert_eq!(
        proxy_metric(&pair, "redispair_proxy_pinned_connections_total").await,
        1.0
    );
}

#[tokio::test]
async fn a_half_closed_client_gets_every_reply_before_the_close() {
    let (_a, _b, pair) = proxied_pair(&[]).await;
    let mut conn = pair.proxy_conn().await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..500 {
        batch.extend_from_slice(&encode(&["INCR", "half-closed"]));
    }
    conn.send_raw(&batch).await.unwrap();
    conn.shutdown_write().await.unwrap();
    for i in 1..=500 {
        assert_eq!(
            conn.read_within(Duration::from_secs(5)).await.unwrap(),
            Resp::Int(i)
        );
    }
    assert!(conn.await_closed(Duration::from_secs(3)).await.is_ok());
}

#[tokio::test]
async fn a_client_that_leaves_with_replies_owed_does_not_disturb_the_others() {
    let (a, _b, pair) = proxied_pair(&["--shared-connections", "1"]).await;
    a.cmd(&["SET", "big", &"y".repeat(100_000)]).await.unwrap();
    let mut steady = pair.proxy_conn().await.unwrap();
    assert_eq!(
        steady.cmd(&["PING"]).await.unwrap(),
        Resp::Simple("PONG".into())
    );
    let shared = proxy_connections_on(&a).await;
    assert_eq!(shared.len(), 1, "{shared:?}");
    for round in 0..5 {
        let mut leaver = pair.proxy_conn().await.unwrap();
        let mut batch = Vec::new();
        for _ in 0..200 {
            batch.extend_from_slice(&encode(&["GET", "big"]));
        }
        leaver.send_raw(&batch).await.unwrap();
        drop(leaver);
        assert_eq!(
            steady.cmd(&["INCR", "steady"]).await.unwrap(),
            Resp::Int(round + 1)
        );
    }
    assert_eq!(
        proxy_connections_on(&a).await,
        shared,
        "one shared connection carried everything: it never got out of step"
    );
}

#[tokio::test]
async fn a_malformed_request_is_answered_by_redis_on_its_own_connection() {
    let (_a, _b, pair) = proxied_pair(&[]).await;
    let mut shared = pair.proxy_conn().await.unwrap();
    assert_eq!(shared.cmd(&["SET", "survivor", "1"]).await.unwrap(), ok());
    let mut inline = pair.proxy_conn().await.unwrap();
    inline.send_raw(b"PING\r\n").await.unwrap();
    assert_eq!(
        inline.read_within(Duration::from_secs(3)).await.unwrap(),
        Resp::Simple("PONG".into())
    );
    let mut broken = pair.proxy_conn().await.unwrap();
    broken.send_raw(b"*1\r\n$abc\r\n").await.unwrap();
    match broken.read_within(Duration::from_secs(3)).await.unwrap() {
        Resp::Error(e) => assert!(e.contains("Protocol error"), "{e}"),
        other => panic!("expected Redis's protocol error, got {other:?}"),
    }
    assert!(broken.await_closed(Duration::from_secs(3)).await.is_ok());
    // The shared connection did not see it, so the other client goes on undisturbed.
    assert_eq!(shared.cmd(&["GET", "survivor"]).await.unwrap(), bulk("1"));
}

#[tokio::test]
async fn a_value_over_the_shared_size_limit_is_streamed_on_its_own_connection() {
    let (a, _b, pair) = proxied_pair(&[]).await;
    let mut conn = pair.proxy_conn().await.unwrap();
    let value = vec![b'z'; 3 * 1024 * 1024];
    conn.send(&[b"SET".as_slice(), b"huge", &value])
        .await
        .unwrap();
    assert_eq!(
        conn.read_within(Duration::from_secs(10)).await.unwrap(),
        ok()
    );
    assert_eq!(
        a.cmd(&["STRLEN", "huge"]).await.unwrap(),
        Resp::Int(value.len() as i64)
    );
    assert_eq!(
        proxy_metric(&pair, "redispair_proxy_pinned_connections_total").await,
        1.0
    );
}

#[tokio::test]
async fn the_shared_connection_is_never_authenticated_for_a_client() {
    let a = RedisServer::builder().requirepass("s3cret").start().await;
    let b = RedisServer::builder()
        .replica_of(&a)
        .requirepass("s3cret")
        .masterauth("s3cret")
        .start()
        .await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .env("REDISPAIR_PASSWORD", "s3cret")
        .start()
        .await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    let mut anonymous = pair.proxy_conn().await.unwrap();
    match anonymous.cmd(&["GET", "secret"]).await.unwrap() {
        Resp::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("an unauthenticated client must get NOAUTH, got {other:?}"),
    }
    let mut authed = Conn::connect_auth(pair.proxy_addr(), Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(authed.cmd(&["SET", "secret", "1"]).await.unwrap(), ok());
    // Still refused after another client authenticated.
    assert!(matches!(
        anonymous.cmd(&["GET", "secret"]).await.unwrap(),
        Resp::Error(_)
    ));
}

#[tokio::test]
async fn no_multiplex_gives_every_client_its_own_connection() {
    let (a, _b, pair) = proxied_pair(&["--no-multiplex"]).await;
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut conn = pair.proxy_conn().await.unwrap();
        assert_eq!(conn.cmd(&["INCR", "n"]).await.unwrap(), Resp::Int(i + 1));
        conns.push(conn);
    }
    assert_eq!(proxy_connections_on(&a).await.len(), 3);
    assert_eq!(
        proxy_metric(&pair, "redispair_proxy_shared_requests_total").await,
        0.0
    );
}

#[tokio::test]
async fn when_the_shared_connection_is_killed_only_clients_owed_replies_are_closed() {
    let (a, _b, pair) = proxied_pair(&[]).await;
    let mut idle = pair.proxy_conn().await.unwrap();
    assert_eq!(idle.cmd(&["SET", "k", "1"]).await.unwrap(), ok());
    let shared = proxy_connections_on(&a).await;
    assert_eq!(shared.len(), 1, "one shared connection: {shared:?}");

    // With writes paused the master holds this SET unanswered: the client is owed a reply
    // when its server connection is killed.
    assert_eq!(
        a.cmd(&["CLIENT", "PAUSE", "5000", "WRITE"]).await.unwrap(),
        ok()
    );
    let mut waiting = pair.proxy_conn().await.unwrap();
    waiting.send(&["SET", "never", "1"]).await.unwrap();
    eventually(
        "the SET to be held by the paused master",
        SETTLE_DEADLINE,
        async || {
            let clients = a.info("clients").await?;
            match clients.get("blocked_clients").map(String::as_str) {
                Some("1") => Ok(()),
                other => Err(format!("blocked_clients {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        a.cmd(&["CLIENT", "KILL", "ID", &shared[0]]).await.unwrap(),
        Resp::Int(1)
    );
    let closed = waiting.await_closed(Duration::from_secs(5)).await;
    assert!(
        closed.is_ok(),
        "the client owed a reply must be closed: {closed:?}"
    );
    assert_eq!(a.cmd(&["CLIENT", "UNPAUSE"]).await.unwrap(), ok());

    assert_eq!(
        idle.cmd(&["GET", "k"]).await.unwrap(),
        bulk("1"),
        "a client owed nothing continues on a new shared connection"
    );
    assert_eq!(
        a.get("never").await.unwrap(),
        None,
        "the killed request never ran"
    );
}

/// A small deterministic generator, so a failing script can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn value(&mut self) -> Vec<u8> {
        let len = match self.below(20) {
            0 => 70_000,
            1 => 0,
            _ => self.below(64) as usize,
        };
        let alphabet = b"ab\r\n*$:+-0123456789";
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize])
            .collect()
    }
}

/// One random command on the keys under `prefix`. Replies never name keys, so the same
/// script on two prefixes must get the same replies.
fn random_command(rng: &mut Rng, prefix: &str) -> Vec<Vec<u8>> {
    let key = |rng: &mut Rng| format!("{prefix}{}", rng.below(4)).into_bytes();
    let words = |ws: &[&str]| ws.iter().map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
    match rng.below(16) {
        0 => vec![b"SET".to_vec(), key(rng), rng.value()],
        1 => vec![b"GET".to_vec(), key(rng)],
        2 => vec![b"APPEND".to_vec(), key(rng), rng.value()],
        3 => vec![b"STRLEN".to_vec(), key(rng)],
        4 => vec![b"DEL".to_vec(), key(rng), key(rng)],
        5 => vec![b"INCR".to_vec(), format!("{prefix}counter").into_bytes()],
        6 => vec![
            b"RPUSH".to_vec(),
            format!("{prefix}list").into_bytes(),
            rng.value(),
        ],
        7 => words(&["LRANGE", &format!("{prefix}list"), "-3", "-1"]),
        8 => vec![
            b"HSET".to_vec(),
            format!("{prefix}hash").into_bytes(),
            format!("field{}", rng.below(4)).into_bytes(),
            rng.value(),
        ],
        9 => vec![b"HGETALL".to_vec(), format!("{prefix}hash").into_bytes()],
        10 => vec![b"MGET".to_vec(), key(rng), key(rng), key(rng)],
        11 => vec![b"ECHO".to_vec(), rng.value()],
        12 => words(&["SELECT", "0"]),
        // Replies with an error; must not desynchronise anything.
        13 => words(&["NO-SUCH-COMMAND", "x"]),
        14 => vec![b"TYPE".to_vec(), key(rng)],
        // Rarely, a transaction: the client is pinned from here on.
        _ if rng.below(8) == 0 => words(&["MULTI"]),
        _ => vec![b"EXISTS".to_vec(), key(rng)],
    }
}

/// Runs the same random script through the proxy and straight to the master, on two key
/// spaces, from several clients at once, with requests split at random byte boundaries; every
/// reply must match. With a Unix socket, odd clients use it and even ones TCP, on the same
/// shared connections.
async fn proxy_replies_match_direct_replies(extra: &[&str]) {
    let (a, _b, pair) = proxied_pair(extra).await;
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let mut proxied = match pair.proxy_unix_path() {
            Some(path) if client % 2 == 1 => Conn::connect_unix(path).await,
            _ => Conn::connect(pair.proxy_addr()).await,
        }
        .expect("connect proxy");
        let direct_addr = a.addr();
        tasks.push(tokio::spawn(async move {
            let seed = 0x9E37_79B9_7F4A_7C15 ^ (client + 1);
            let mut rng = Rng(seed);
            let mut direct = Conn::connect(&direct_addr).await.expect("connect master");
            let mut in_multi = false;
            for batch_no in 0..40 {
                let size = 1 + rng.below(20) as usize;
                let mut via_proxy = Vec::new();
                let mut straight = Vec::new();
                for _ in 0..size {
                    let mut cmd = random_command(&mut rng, &format!("p{client}:"));
                    let twin: Vec<Vec<u8>> = cmd
                        .iter()
                        .map(|arg| {
                            let text = String::from_utf8_lossy(arg);
                            match text.strip_prefix(&format!("p{client}:")) {
                                Some(rest) => format!("d{client}:{rest}").into_bytes(),
                                None => arg.clone(),
                            }
                        })
                        .collect();
                    if cmd[0] == b"MULTI" {
                        if in_multi {
                            cmd = vec![b"EXEC".to_vec()];
                        }
                        in_multi = !in_multi;
                        let twin = cmd.clone();
                        via_proxy.extend_from_slice(&encode(&cmd));
                        straight.extend_from_slice(&encode(&twin));
                        continue;
                    }
                    via_proxy.extend_from_slice(&encode(&cmd));
                    straight.extend_from_slice(&encode(&twin));
                }
                // The proxied copy arrives in random pieces.
                let mut rest = via_proxy.as_slice();
                while !rest.is_empty() {
                    let cut = 1 + rng.below(rest.len() as u64) as usize;
                    proxied.send_raw(&rest[..cut]).await.expect("send");
                    rest = &rest[cut..];
                }
                direct.send_raw(&straight).await.expect("send direct");
                for n in 0..size {
                    let want = direct.read_within(Duration::from_secs(10)).await;
                    let got = proxied.read_within(Duration::from_secs(10)).await;
                    let same = match (&got, &want) {
                        (Ok(got), Ok(want)) => got == want,
                        _ => false,
                    };
                    let brief = |r: &std::io::Result<Resp>| match r {
                        Ok(resp) => resp.brief(),
                        Err(e) => format!("error: {e}"),
                    };
                    assert!(
                        same,
                        "client {client} (seed {seed:#x}) batch {batch_no} reply {n}: proxied {}, direct {}",
                        brief(&got),
                        brief(&want)
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    // Both paths were exercised: shared requests, and clients pinned by their MULTI.
    assert!(proxy_metric(&pair, "redispair_proxy_shared_requests_total").await > 100.0);
    assert!(proxy_metric(&pair, "redispair_proxy_pinned_connections_total").await >= 1.0);
}

#[tokio::test]
async fn random_scripts_get_the_same_replies_through_the_proxy_as_direct() {
    proxy_replies_match_direct_replies(&[]).await;
}

#[tokio::test]
async fn random_scripts_match_direct_on_a_multi_thread_runtime() {
    proxy_replies_match_direct_replies(&["--threads", "2", "--shared-connections", "2"]).await;
}

#[tokio::test]
async fn random_scripts_match_direct_with_tcp_and_unix_socket_clients_mixed() {
    proxy_replies_match_direct_replies(&[support::CLIENTS_OVER_UNIX_SOCKET]).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_the_backlog_limit_and_others_go_on() {
    let (a, _b, pair) = proxied_pair(&["--max-client-backlog-mib", "1"]).await;
    a.cmd(&["SET", "half-mib", &"h".repeat(512 * 1024)])
        .await
        .unwrap();
    let mut steady = pair.proxy_conn().await.unwrap();
    assert_eq!(steady.cmd(&["INCR", "steady"]).await.unwrap(), Resp::Int(1));

    // 50 MB of replies asked for and never read: far more than the socket buffers hold.
    let mut stalled = pair.proxy_conn().await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend_from_slice(&encode(&["GET", "half-mib"]));
    }
    stalled.send_raw(&batch).await.unwrap();
    eventually(
        "the stalled client to be closed for its backlog",
        SETTLE_DEADLINE,
        async || {
            let text = pair.metrics().await?;
            match metric(&text, "redispair_proxy_closed_slow_clients_total") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("closed_slow_clients {other:?}")),
            }
        },
    )
    .await;
    assert!(
        stalled.await_closed(Duration::from_secs(5)).await.is_ok(),
        "the stalled client's connection must be closed"
    );
    assert_eq!(steady.cmd(&["INCR", "steady"]).await.unwrap(), Resp::Int(2));
    assert!(
        pair.log_text().contains("--max-client-backlog-mib"),
        "the log must say why the client was closed"
    );
}

#[tokio::test]
async fn an_idle_shared_connection_closed_by_redis_timeout_is_replaced_without_an_error() {
    let (a, _b, pair) = proxied_pair(&[]).await;
    let mut client = pair.proxy_conn().await.unwrap();
    assert_eq!(client.cmd(&["SET", "k", "1"]).await.unwrap(), ok());
    // One shared connection; a connection of the engine's probe caught mid-flight by CLIENT
    // LIST (seen once under load) is gone a moment later.
    let before = eventually(
        "one shared connection on the master",
        SETTLE_DEADLINE,
        async || {
            let now = proxy_connections_on(&a).await;
            if now.len() == 1 {
                Ok(now)
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;

    // Redis closes connections idle for more than `timeout` seconds, as many deployments
    // configure; the proxy's shared connection is one of them.
    assert_eq!(
        a.cmd(&["CONFIG", "SET", "timeout", "1"]).await.unwrap(),
        ok()
    );
    eventually(
        "Redis to close the idle shared connection",
        SETTLE_DEADLINE,
        async || {
            let now = proxy_connections_on(&a).await;
            if now.iter().any(|id| before.contains(id)) {
                Err(format!("still open: {now:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(
        a.cmd(&["CONFIG", "SET", "timeout", "0"]).await.unwrap(),
        ok()
    );
    eventually(
        "the proxy to notice the close",
        SETTLE_DEADLINE,
        async || match metric(
            &pair.metrics().await?,
            "redispair_proxy_shared_connections_open",
        ) {
            Some(0.0) => Ok(()),
            other => Err(format!("shared_connections_open {other:?}")),
        },
    )
    .await;

    // The client was owed nothing, so it was not closed; its next request takes a new
    // shared connection.
    assert_eq!(client.cmd(&["GET", "k"]).await.unwrap(), bulk("1"));
}

// ---------------------------------------------------------------------------------------------
// Request backpressure (issue 14, failure 6): a master that takes nothing must not grow the
// proxy; the clients sending to it are simply not read, and lose nothing.
// ---------------------------------------------------------------------------------------------

/// Values a flooding client sets: large, as in the reproduction.
const FLOOD_VALUE: usize = 512 * 1024;
/// What a flooding client sends at most (200 MiB): enough to show an unbounded proxy,
/// little enough that one does not exhaust the test machine.
const FLOOD_MAX_REQUESTS: usize = 400;
/// The proxy's resident memory must stay under this while clients flood a stopped master.
/// Debug build, idle: about 15 MiB; the request budget is 8 MiB by default, 4 MiB below.
const FLOOD_RSS_BOUND: u64 = 64 << 20;

/// The `i`th request pair of flooding client `id`: SET of a value that names it, then RPUSH
/// of `i` on the client's order list, whose reply (the list's length, `i + 1`) proves order.
fn flood_request(id: usize, i: usize) -> Vec<u8> {
    let mut value = format!("{id}:{i:08}:").into_bytes();
    value.resize(FLOOD_VALUE, b'v');
    let mut bytes = encode(&[b"SET".as_slice(), format!("f{id}:{i}").as_bytes(), &value]);
    bytes.extend_from_slice(&encode(&["RPUSH", &format!("f{id}:order"), &i.to_string()]));
    bytes
}

/// A client that pipelines `flood_request`s as fast as the proxy takes them, reading
/// nothing, until `stop` (it finishes the request it is writing, which may need the master).
struct Flood {
    id: usize,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<std::io::Result<OwnedWriteHalf>>,
    reader: OwnedReadHalf,
}

impl Flood {
    async fn start(pair: &RedisPair, id: usize) -> Flood {
        let stream = TcpStream::connect(pair.proxy_addr())
            .await
            .expect("connect to the proxy");
        let (reader, mut writer) = stream.into_split();
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (sent_by_task, stop_for_task) = (sent.clone(), stop.clone());
        let writer = tokio::spawn(async move {
            for i in 0..FLOOD_MAX_REQUESTS {
                if stop_for_task.load(Ordering::SeqCst) {
                    break;
                }
                writer.write_all(&flood_request(id, i)).await?;
                sent_by_task.store(i + 1, Ordering::SeqCst);
            }
            Ok(writer)
        });
        Flood {
            id,
            sent,
            stop,
            writer,
            reader,
        }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// After `stop`: the proxy closes the connection without a reply.
    async fn await_closed(mut self) {
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(SETTLE_DEADLINE, self.reader.read(&mut buf)).await;
        self.writer.abort();
        match read {
            Err(_) => panic!("client {} still open", self.id),
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("client {}: {n} bytes of replies", self.id),
        }
    }

    /// After `stop` and the master's return: every request pair sent gets its two replies,
    /// in order, and nothing else; returns how many pairs were sent.
    async fn replies_all_arrive(mut self) -> usize {
        let writer = tokio::time::timeout(SETTLE_DEADLINE, self.writer)
            .await
            .unwrap_or_else(|_| panic!("client {} still sending", self.id))
            .expect("writer task")
            .unwrap_or_else(|e| panic!("client {}: the proxy refused its requests: {e}", self.id));
        let sent = self.sent.load(Ordering::SeqCst);
        let mut expected = Vec::new();
        for i in 0..sent {
            expected.extend_from_slice(format!("+OK\r\n:{}\r\n", i + 1).as_bytes());
        }
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(SETTLE_DEADLINE, self.reader.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("client {}: not every reply arrived", self.id))
            .unwrap_or_else(|e| panic!("client {}: connection closed: {e}", self.id));
        assert!(
            got == expected,
            "client {}: replies out of order or wrong: {:?}",
            self.id,
            String::from_utf8_lossy(&got)
        );
        drop(writer);
        sent
    }
}

/// Every request pair flooding client `id` sent reached the master once, in order.
async fn flood_landed(master: &RedisServer, id: usize, sent: usize) {
    let order = master
        .cmd(&["LRANGE", &format!("f{id}:order"), "0", "-1"])
        .await
        .expect("LRANGE");
    let want: Vec<Resp> = (0..sent).map(|i| bulk(i.to_string())).collect();
    assert_eq!(order, Resp::Array(want), "client {id}'s RPUSHes in order");
    for i in 0..sent {
        let key = format!("f{id}:{i}");
        let prefix = format!("{id}:{i:08}:");
        assert_eq!(
            master
                .cmd(&["GETRANGE", &key, "0", &(prefix.len() - 1).to_string()])
                .await
                .expect("GETRANGE"),
            bulk(&prefix),
            "{key}"
        );
        assert_eq!(
            master.cmd(&["STRLEN", &key]).await.expect("STRLEN"),
            Resp::Int(FLOOD_VALUE as i64),
            "{key}"
        );
    }
}

/// A master, its replica and redis-pair with `extra` flags; down-after is long, so that a
/// stopped master stays published (these tests are about the proxy, not the failover).
async fn pair_that_waits_for_its_master(extra: &[&str]) -> (RedisServer, RedisServer, RedisPair) {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let mut builder = RedisPair::builder()
        .server(&a)
        .server(&b)
        .down_after(Duration::from_secs(300));
    for arg in extra {
        builder = builder.arg(arg);
    }
    let pair = builder.start().await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;
    (a, b, pair)
}

async fn request_backlog(pair: &RedisPair) -> Result<f64, String> {
    let text = pair.metrics().await?;
    metric(&text, "redispair_proxy_request_backlog_bytes")
        .ok_or_else(|| "no redispair_proxy_request_backlog_bytes".to_string())
}

#[tokio::test]
async fn a_client_pipelining_into_a_stopped_master_is_not_read_and_loses_nothing() {
    client_pipelining_into_a_stopped_master(&[]).await;
}

#[tokio::test]
async fn a_client_pipelining_into_a_stopped_master_is_held_on_a_multi_thread_runtime() {
    client_pipelining_into_a_stopped_master(&["--threads", "2", "--shared-connections", "2"]).await;
}

async fn client_pipelining_into_a_stopped_master(extra: &[&str]) {
    let (mut a, _b, pair) = pair_that_waits_for_its_master(extra).await;
    // Default --max-request-backlog-mib 8: a client's share is 2 MiB; with one request in
    // progress and one read on top, 3.1 MiB at most.
    let share_bound = f64::from(2 << 20) + FLOOD_VALUE as f64 * 2.0 + 65536.0;
    let idle_rss = pair.rss_bytes().expect("rss");
    a.stop();
    let flood = Flood::start(&pair, 0).await;
    eventually(
        "the proxy to have taken the client's share of requests",
        SETTLE_DEADLINE,
        async || match request_backlog(&pair).await? {
            n if n >= f64::from(2 << 20) => Ok(()),
            n => Err(format!("request backlog {n} bytes, {} sent", flood.sent())),
        },
    )
    .await;
    // The client keeps sending (its writes wait in the kernel); the proxy stays small.
    let mut peak_rss = 0;
    always(
        "the proxy holds a bounded backlog while the client keeps sending",
        Duration::from_secs(3),
        async || {
            let rss = pair.rss_bytes()?;
            peak_rss = peak_rss.max(rss);
            let backlog = request_backlog(&pair).await?;
            if rss > FLOOD_RSS_BOUND {
                return Err(format!(
                    "proxy RSS {} MiB (idle {} MiB)",
                    rss >> 20,
                    idle_rss >> 20
                ));
            }
            if backlog > share_bound {
                return Err(format!("request backlog {backlog} bytes"));
            }
            if flood.sent() == FLOOD_MAX_REQUESTS {
                return Err("the proxy took all 200 MiB from the client".into());
            }
            Ok(())
        },
    )
    .await;
    assert!(proxy_metric(&pair, "redispair_proxy_client_reads_paused_total").await >= 1.0);

    flood.stop();
    a.cont();
    let sent = flood.replies_all_arrive().await;
    eprintln!(
        "sent {sent} requests of {} KiB; proxy RSS idle {} MiB, peak {} MiB",
        FLOOD_VALUE >> 10,
        idle_rss >> 20,
        peak_rss >> 20
    );
    assert!(
        sent >= 4,
        "the client sent {sent} requests before it was held back"
    );
    flood_landed(&a, 0, sent).await;
    assert_eq!(
        a.cmd(&["DBSIZE"]).await.expect("DBSIZE"),
        Resp::Int(sent as i64 + 1),
        "nothing but the flood's keys and its order list"
    );
    eventually(
        "the request backlog to drain",
        SETTLE_DEADLINE,
        async || match request_backlog(&pair).await? {
            0.0 => Ok(()),
            n => Err(format!("{n} bytes")),
        },
    )
    .await;
}

#[tokio::test]
async fn many_clients_flooding_a_stopped_master_are_held_to_their_share_and_the_total() {
    // 4 MiB in all, 1 MiB per client: six clients need more than the total.
    let (mut a, _b, pair) =
        pair_that_waits_for_its_master(&["--max-request-backlog-mib", "4"]).await;
    let one_read = FLOOD_VALUE as f64 * 2.0 + 65536.0;
    a.stop();
    let mut floods = Vec::new();
    for id in 0..6 {
        floods.push(Flood::start(&pair, id).await);
    }
    eventually(
        "every client to be paused",
        SETTLE_DEADLINE,
        async || match metric(
            &pair.metrics().await?,
            "redispair_proxy_client_reads_paused_total",
        ) {
            Some(n) if n >= 6.0 => Ok(()),
            other => Err(format!("client_reads_paused {other:?}")),
        },
    )
    .await;
    // A client that arrives now, with one small request, is not read either: the total is
    // spent. Its request is answered once the master is back.
    let mut late = pair.proxy_conn().await.expect("connect");
    late.send(&["SET", "late", "1"]).await.expect("send");
    always(
        "the total stays within --max-request-backlog-mib and one read",
        Duration::from_secs(2),
        async || {
            let backlog = request_backlog(&pair).await?;
            let rss = pair.rss_bytes()?;
            if backlog > f64::from(4 << 20) + one_read {
                return Err(format!("request backlog {backlog} bytes"));
            }
            if rss > FLOOD_RSS_BOUND {
                return Err(format!("proxy RSS {} MiB", rss >> 20));
            }
            Ok(())
        },
    )
    .await;

    for flood in &floods {
        flood.stop();
    }
    a.cont();
    let mut total = 0;
    for flood in floods {
        let id = flood.id;
        let sent = flood.replies_all_arrive().await;
        flood_landed(&a, id, sent).await;
        total += sent;
    }
    assert_eq!(
        late.read_within(SETTLE_DEADLINE).await.expect("reply"),
        ok()
    );
    assert_eq!(
        a.cmd(&["DBSIZE"]).await.expect("DBSIZE"),
        Resp::Int(total as i64 + 6 + 1),
        "the floods' keys, their six order lists and the late client's key"
    );
}

#[tokio::test]
async fn a_client_pipelining_while_no_master_is_reachable_is_held_then_closed_at_the_wait() {
    let (mut a, mut b, pair) = pair_that_waits_for_its_master(&["--wait-for-master", "3s"]).await;
    // Both gone (the replica first, so that nothing is promoted): the proxy has no master to
    // connect to. No client has used the proxy yet, so the flood's first request opens the
    // shared connection, which waits for a publication that does not come.
    b.kill();
    a.kill();
    let flood = Flood::start(&pair, 0).await;
    eventually(
        "the proxy to have taken the client's share of requests",
        SETTLE_DEADLINE,
        async || match request_backlog(&pair).await? {
            n if n >= f64::from(2 << 20) => Ok(()),
            n => Err(format!("request backlog {n} bytes, {} sent", flood.sent())),
        },
    )
    .await;
    let share_bound = f64::from(2 << 20) + FLOOD_VALUE as f64 * 2.0 + 65536.0;
    always(
        "the proxy holds a bounded backlog while it waits for a master",
        Duration::from_secs(1),
        async || {
            let backlog = request_backlog(&pair).await?;
            let rss = pair.rss_bytes()?;
            if backlog > share_bound {
                return Err(format!("request backlog {backlog} bytes"));
            }
            if rss > FLOOD_RSS_BOUND {
                return Err(format!("proxy RSS {} MiB", rss >> 20));
            }
            if flood.sent() == FLOOD_MAX_REQUESTS {
                return Err("the proxy took all 200 MiB from the client".into());
            }
            Ok(())
        },
    )
    .await;
    // At --wait-for-master the client is closed, as a direct connection to a dead server
    // would be (none of its requests was answered), and the budget is whole again.
    flood.stop();
    flood.await_closed().await;
    eventually(
        "the request backlog to drain",
        SETTLE_DEADLINE,
        async || match request_backlog(&pair).await? {
            0.0 => Ok(()),
            n => Err(format!("{n} bytes")),
        },
    )
    .await;
    assert!(proxy_metric(&pair, "redispair_proxy_no_master_timeouts_total").await >= 1.0);
}
