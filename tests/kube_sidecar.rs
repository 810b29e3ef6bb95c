//! The sidecar (`redis-pair proxy --pair NAME`) end to end: the real binary, real
//! `redis-server` "pods" on loopback addresses of their own (127.0.0.2, 127.0.0.3), and the
//! project's test API server with the real RedisPair CRD. No controller runs: the tests write
//! the annotations the way the controller does (`Kube::publish`) and change the servers' roles
//! themselves.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis_pair::crd::EPOCH_ANNOTATION;
use support::kube::{Kube, Sidecar, SidecarBuilder, spec_selecting};
use support::{Conn, RedisServer, Resp, SETTLE_DEADLINE, always, eventually, free_ports2};

const PAIR: &str = "cache";
/// Clients that find no master wait this long, so a refused route shows as a quick close.
const WAIT_FOR_MASTER: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A master "pod" on 127.0.0.2 and its replica on 127.0.0.3, the replica caught up.
async fn master_and_replica() -> (RedisServer, RedisServer) {
    let a = RedisServer::builder().host("127.0.0.2").start().await;
    let b = RedisServer::builder()
        .host("127.0.0.3")
        .replica_of(&a)
        .start()
        .await;
    b.await_replicating_from(&a).await;
    (a, b)
}

/// Two unrelated masters on 127.0.0.2 and 127.0.0.3: a ROLE check passes for either, so only
/// the epoch rules decide which one is routed.
async fn two_masters() -> (RedisServer, RedisServer) {
    let a = RedisServer::builder().host("127.0.0.2").start().await;
    let b = RedisServer::builder().host("127.0.0.3").start().await;
    (a, b)
}

/// The API server, RedisPair `cache`, and `epoch`/`master` published on it.
async fn published(epoch: u64, master: &RedisServer) -> Kube {
    let kube = Kube::start().await;
    kube.create_pair(PAIR, spec_selecting(&[("app", "redis")]))
        .await;
    kube.publish(PAIR, epoch, Some(&master.addr())).await;
    kube
}

fn sidecar(kube: &Kube) -> SidecarBuilder {
    Sidecar::builder(kube, PAIR).wait_for_master(WAIT_FOR_MASTER)
}

/// A ready sidecar for `cache`.
async fn ready_sidecar(kube: &Kube) -> Sidecar {
    let sidecar = sidecar(kube).start().await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    sidecar
}

/// The port of the server that answers `conn` (`INFO server`); every test server has a port
/// of its own (leased), so the port names the server.
async fn server_port(conn: &mut Conn) -> Result<u16, String> {
    let reply = conn
        .cmd(&["INFO", "server"])
        .await
        .map_err(|e| format!("INFO: {e}"))?;
    let text = match &reply {
        Resp::Error(e) => return Err(format!("INFO: {e}")),
        other => other.text().unwrap_or_default(),
    };
    support::parse_info(&text)
        .get("tcp_port")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no tcp_port in INFO: {}", reply.brief()))
}

/// Which server a new connection through the sidecar reaches.
async fn reached(sidecar: &Sidecar) -> Result<u16, String> {
    let mut conn = sidecar
        .proxy_conn()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    server_port(&mut conn).await
}

async fn await_routed_to(sidecar: &Sidecar, server: &RedisServer) {
    let what = format!("new connections to reach {}", server.addr());
    eventually(&what, SETTLE_DEADLINE, async || {
        match reached(sidecar).await {
            Ok(port) if port == server.port() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Checks for `window` that every new connection reaches `server` and `/readyz` is 200.
async fn always_routed_to(sidecar: &Sidecar, server: &RedisServer, window: Duration) {
    let what = format!("new connections reach {} and /readyz is 200", server.addr());
    always(&what, window, async || {
        match reached(sidecar).await {
            Ok(port) if port == server.port() => {}
            other => return Err(format!("reached {other:?}")),
        }
        match sidecar.readyz().await? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("/readyz {code}: {body}")),
        }
    })
    .await
}

/// A client with a server connection of its own (CLIENT pins), opened through the sidecar;
/// returns it with the port of the server it reached.
async fn pinned_client(sidecar: &Sidecar) -> (Conn, u16) {
    let mut conn = sidecar.proxy_conn().await.expect("connect to the sidecar");
    let id = conn.cmd(&["CLIENT", "ID"]).await.expect("CLIENT ID");
    assert!(matches!(id, Resp::Int(_)), "CLIENT ID → {}", id.brief());
    let port = server_port(&mut conn)
        .await
        .expect("INFO on the pinned client");
    (conn, port)
}

/// How many times `server` ran `command` (INFO commandstats), 0 if never.
async fn calls(server: &RedisServer, command: &str) -> Result<u64, String> {
    let stats = server.info("commandstats").await?;
    Ok(stats
        .get(&format!("cmdstat_{command}"))
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Makes `server` a master (`REPLICAOF NO ONE`), as the controller does before publishing it.
async fn promote(server: &RedisServer) {
    let reply = server
        .cmd(&["REPLICAOF", "NO", "ONE"])
        .await
        .expect("REPLICAOF NO ONE");
    assert!(reply.is_ok(), "REPLICAOF NO ONE → {}", reply.brief());
}

/// Makes `server` a replica of `master`.
async fn demote(server: &RedisServer, master: &RedisServer) {
    let port = master.port().to_string();
    let reply = server
        .cmd(&["REPLICAOF", master.host(), &port])
        .await
        .expect("REPLICAOF");
    assert!(reply.is_ok(), "REPLICAOF → {}", reply.brief());
}

async fn metric(sidecar: &Sidecar, series: &str) -> f64 {
    sidecar
        .metric(series)
        .await
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

async fn await_metric_at_least(sidecar: &Sidecar, series: &str, at_least: f64) {
    let what = format!("{series} >= {at_least}");
    eventually(&what, SETTLE_DEADLINE, async || {
        let value = sidecar.metric(series).await?;
        if value >= at_least {
            Ok(())
        } else {
            Err(format!("{series} = {value}"))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shared_and_pinned_clients_reach_the_published_master() {
    let (a, _b) = master_and_replica().await;
    let kube = published(1, &a).await;
    let sidecar = sidecar(&kube).clients_over_unix_socket().start().await;
    sidecar.await_ready(SETTLE_DEADLINE).await;

    // Shared path, over TCP and over the Unix socket.
    let mut tcp = sidecar.proxy_conn().await.expect("connect over TCP");
    assert!(
        tcp.cmd(&["SET", "greeting", "hello"])
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        tcp.cmd(&["GET", "greeting"])
            .await
            .unwrap()
            .text()
            .as_deref(),
        Some("hello")
    );
    assert_eq!(a.get("greeting").await.unwrap().as_deref(), Some("hello"));
    let mut unix = sidecar
        .proxy_unix_conn()
        .await
        .expect("connect over the socket");
    assert_eq!(
        unix.cmd(&["GET", "greeting"])
            .await
            .unwrap()
            .text()
            .as_deref(),
        Some("hello")
    );

    // Pinned path: a transaction.
    let mut tx = sidecar.proxy_conn().await.expect("connect");
    assert!(tx.cmd(&["MULTI"]).await.unwrap().is_ok());
    assert_eq!(
        tx.cmd(&["SET", "n", "41"]).await.unwrap(),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        tx.cmd(&["INCR", "n"]).await.unwrap(),
        Resp::Simple("QUEUED".into())
    );
    let exec = tx.cmd(&["EXEC"]).await.unwrap();
    assert_eq!(
        exec,
        Resp::Array(vec![Resp::Simple("OK".into()), Resp::Int(42)])
    );
    assert_eq!(a.get("n").await.unwrap().as_deref(), Some("42"));

    let status = sidecar.status().await.expect("/status");
    assert_eq!(status["master"], a.addr().as_str(), "{status}");
    assert_eq!(status["cluster_epoch"], 1, "{status}");
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        1.0
    );
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_master_verified").await,
        1.0
    );
    assert_eq!(metric(&sidecar, "redispair_sidecar_pair_found").await, 1.0);
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_route_generation").await,
        1.0
    );
    assert!(
        metric(
            &sidecar,
            r#"redispair_sidecar_role_checks_total{outcome="master"}"#
        )
        .await
            >= 1.0
    );
    assert!(metric(&sidecar, "redispair_proxy_pinned_connections_total").await >= 1.0);
    assert!(metric(&sidecar, "redispair_proxy_shared_requests_total").await >= 3.0);
}

#[tokio::test]
async fn a_new_publication_moves_every_new_connection_and_closes_pinned_ones() {
    // The old master stays a master (cut off, say): only the publication moves the route.
    let (a, b) = two_masters().await;
    assert!(a.cmd(&["SET", "where", "a"]).await.unwrap().is_ok());
    assert!(b.cmd(&["SET", "where", "b"]).await.unwrap().is_ok());
    let kube = published(1, &a).await;
    let sidecar = ready_sidecar(&kube).await;
    let (mut pinned, port) = pinned_client(&sidecar).await;
    assert_eq!(port, a.port());
    let mut shared = sidecar.proxy_conn().await.expect("connect");
    assert_eq!(
        shared
            .cmd(&["GET", "where"])
            .await
            .unwrap()
            .text()
            .as_deref(),
        Some("a")
    );

    kube.publish(PAIR, 2, Some(&b.addr())).await;
    pinned
        .await_closed(SETTLE_DEADLINE)
        .await
        .expect("the pinned connection to the old master is closed");
    await_routed_to(&sidecar, &b).await;
    // From then on no new connection reaches the old master, and the idle shared client's
    // next request goes to the new one without an error.
    always_routed_to(&sidecar, &b, Duration::from_millis(1500)).await;
    assert_eq!(
        shared
            .cmd(&["GET", "where"])
            .await
            .unwrap()
            .text()
            .as_deref(),
        Some("b")
    );
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        2.0
    );
    assert_eq!(
        metric(
            &sidecar,
            r#"redispair_sidecar_route_changes_total{reason="superseded"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_newer_publication_stops_the_old_master_at_once_and_the_new_one_is_routed_when_it_answers()
 {
    let (a, mut b) = two_masters().await;
    let kube = published(1, &a).await;
    let sidecar = ready_sidecar(&kube).await;
    let (mut pinned, _) = pinned_client(&sidecar).await;

    // The new master does not answer yet (its process is not up).
    b.kill();
    kube.publish(PAIR, 2, Some(&b.addr())).await;
    pinned
        .await_closed(SETTLE_DEADLINE)
        .await
        .expect("the pinned connection to the old master is closed");
    sidecar
        .await_not_ready("not verified yet", SETTLE_DEADLINE)
        .await;
    let echoes = calls(&a, "echo").await.unwrap();
    always(
        "no new connection reaches the superseded master",
        Duration::from_millis(1500),
        async || {
            let mut conn = sidecar
                .proxy_conn()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            conn.send(&["ECHO", "x"])
                .await
                .map_err(|e| format!("send: {e}"))?;
            if let Ok(reply) = conn.read_within(WAIT_FOR_MASTER * 4).await {
                return Err(format!("a reply came: {}", reply.brief()));
            }
            match calls(&a, "echo").await? {
                n if n == echoes => Ok(()),
                n => Err(format!("the old master ran ECHO {} times", n - echoes)),
            }
        },
    )
    .await;

    // Up: retried quickly (at most a check period apart), verified and routed.
    b.restart().await;
    let up = Instant::now();
    sidecar.await_ready(SETTLE_DEADLINE).await;
    assert!(
        up.elapsed() < Duration::from_millis(1500),
        "routed {:?} after the new master came up",
        up.elapsed()
    );
    await_routed_to(&sidecar, &b).await;
    assert!(
        metric(
            &sidecar,
            r#"redispair_sidecar_role_checks_total{outcome="refused"}"#
        )
        .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_publication_with_a_lower_epoch_is_ignored() {
    let (a, b) = two_masters().await;
    let kube = published(5, &a).await;
    let sidecar = ready_sidecar(&kube).await;
    await_routed_to(&sidecar, &a).await;

    kube.publish(PAIR, 3, Some(&b.addr())).await;
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_publications_total{outcome="stale"}"#,
        1.0,
    )
    .await;
    // Left in place while the RedisPair changes otherwise: still ignored, logged once.
    kube.touch(PAIR, "1").await;
    kube.touch(PAIR, "2").await;
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_publications_total{outcome="stale"}"#,
        3.0,
    )
    .await;
    always_routed_to(&sidecar, &a, Duration::from_millis(1500)).await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        5.0
    );
    let warnings = sidecar
        .log_text()
        .lines()
        .filter(|l| l.contains("lower epoch"))
        .count();
    assert_eq!(warnings, 1, "one warning for one stale publication");

    // The watch still follows a newer one.
    kube.publish(PAIR, 6, Some(&b.addr())).await;
    await_routed_to(&sidecar, &b).await;
}

#[tokio::test]
async fn only_its_own_pair_is_followed() {
    let (a, b) = two_masters().await;
    let kube = Kube::start().await;
    kube.create_pair("other", spec_selecting(&[("app", "other")]))
        .await;
    kube.publish("other", 9, Some(&b.addr())).await;
    let sidecar = sidecar(&kube).start().await;
    sidecar
        .await_not_ready("does not exist", SETTLE_DEADLINE)
        .await;

    kube.create_pair(PAIR, spec_selecting(&[("app", "redis")]))
        .await;
    kube.publish(PAIR, 1, Some(&a.addr())).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    // The other pair's publications, newer epochs and all, are not ours.
    kube.publish("other", 10, Some(&b.addr())).await;
    kube.delete_pair("other").await;
    always_routed_to(&sidecar, &a, Duration::from_secs(1)).await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        1.0
    );
    assert_eq!(metric(&sidecar, "redispair_sidecar_pair_found").await, 1.0);
}

#[tokio::test]
async fn get_list_and_watch_on_redispairs_over_tls_are_all_it_needs() {
    let (a, b) = two_masters().await;
    let kube = Kube::start_tls().await;
    kube.create_pair(PAIR, spec_selecting(&[("app", "redis")]))
        .await;
    kube.publish(PAIR, 1, Some(&a.addr())).await;
    let rule = |verbs: &[&str]| {
        serde_json::json!([{
            "apiGroups": ["redispair.io"],
            "resources": ["redispairs"],
            "verbs": verbs,
        }])
    };

    let least = kube
        .service_account_kubeconfig("app", rule(&["get", "list", "watch"]))
        .await;
    let allowed = sidecar(&kube).kubeconfig(&least).start().await;
    allowed.await_ready(SETTLE_DEADLINE).await;
    await_routed_to(&allowed, &a).await;
    kube.publish(PAIR, 2, Some(&b.addr())).await;
    await_routed_to(&allowed, &b).await;
    assert_eq!(
        metric(
            &allowed,
            r#"redispair_sidecar_watch_errors_total{kind="forbidden"}"#
        )
        .await,
        0.0
    );

    // Without list: refused by RBAC, said so with the fix, retried, not ready.
    let no_list = kube
        .service_account_kubeconfig("nolist", rule(&["get", "watch"]))
        .await;
    let denied = sidecar(&kube).kubeconfig(&no_list).start().await;
    await_metric_at_least(
        &denied,
        r#"redispair_sidecar_watch_errors_total{kind="forbidden"}"#,
        1.0,
    )
    .await;
    assert!(denied.readyz().await.expect("/readyz").0 == 503);
    assert!(
        denied
            .log_text()
            .contains("grant the pod's service account get, list and watch"),
        "the warning names the fix"
    );
}

// ---------------------------------------------------------------------------------------------
// Fencing: ROLE before routing and every second after
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stale_publication_naming_a_replica_is_refused() {
    let (a, b) = master_and_replica().await;
    let kube = published(1, &b).await;
    let sidecar = sidecar(&kube).start().await;
    sidecar
        .await_not_ready("says it is a replica", SETTLE_DEADLINE)
        .await;
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_role_checks_total{outcome="replica"}"#,
        1.0,
    )
    .await;

    // Clients wait for a master and are closed; nothing of theirs reaches the replica.
    always(
        "no client request reaches the replica, /readyz 503",
        Duration::from_millis(1500),
        async || {
            let mut conn = sidecar
                .proxy_conn()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            conn.send(&["ECHO", "through-the-sidecar"])
                .await
                .map_err(|e| format!("send: {e}"))?;
            match conn.read_within(WAIT_FOR_MASTER * 4).await {
                Ok(reply) => return Err(format!("a reply came: {}", reply.brief())),
                Err(e) if support::resp::is_close_error(&e) => {}
                Err(e) => return Err(format!("not closed: {e}")),
            }
            match calls(&b, "echo").await? {
                0 => {}
                n => return Err(format!("the replica ran ECHO {n} times")),
            }
            match sidecar.readyz().await? {
                (503, _) => Ok(()),
                (code, body) => Err(format!("/readyz {code}: {body}")),
            }
        },
    )
    .await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_master_verified").await,
        0.0
    );

    // The right publication is followed.
    kube.publish(PAIR, 2, Some(&a.addr())).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    let mut conn = sidecar.proxy_conn().await.expect("connect");
    assert_eq!(
        conn.cmd(&["ECHO", "hi"]).await.unwrap().text().as_deref(),
        Some("hi")
    );
    assert_eq!(calls(&a, "echo").await.unwrap(), 1);
    assert_eq!(calls(&b, "echo").await.unwrap(), 0);
}

#[tokio::test]
async fn a_verified_master_that_turns_replica_is_unrouted_and_routed_again_when_master() {
    let (a, b) = master_and_replica().await;
    let kube = published(1, &a).await;
    let sidecar = ready_sidecar(&kube).await;
    let (mut pinned, port) = pinned_client(&sidecar).await;
    assert_eq!(port, a.port());

    // Demoted behind the controller's back, no new publication: the next ROLE check (within
    // a second) un-routes it and closes the connections to it.
    promote(&b).await;
    demote(&a, &b).await;
    let demoted = Instant::now();
    pinned
        .await_closed(Duration::from_secs(3))
        .await
        .expect("the pinned connection to the demoted master is closed");
    sidecar
        .await_not_ready("says it is a replica", Duration::from_secs(3))
        .await;
    assert!(
        demoted.elapsed() < Duration::from_secs(3),
        "{:?}",
        demoted.elapsed()
    );
    let mut conn = sidecar.proxy_conn().await.expect("connect");
    conn.send(&["ECHO", "x"]).await.expect("send");
    conn.await_closed(WAIT_FOR_MASTER * 4)
        .await
        .expect("a new client finds no master and is closed");
    assert_eq!(calls(&a, "echo").await.unwrap(), 0);

    // Promoted back (the engine does this to a published master found as a replica): routed
    // again under the same cluster epoch.
    promote(&a).await;
    sidecar.await_ready(Duration::from_secs(3)).await;
    await_routed_to(&sidecar, &a).await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        1.0
    );
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_route_generation").await,
        3.0
    );
}

#[tokio::test]
async fn a_role_check_that_gets_no_answer_keeps_the_verified_master() {
    let (a, _b) = two_masters().await;
    let kube = published(1, &a).await;
    let sidecar = ready_sidecar(&kube).await;
    let (mut pinned, _) = pinned_client(&sidecar).await;

    // Hung: the checks time out. The route stands (the controller decides when a hung master
    // is down and publishes another).
    let mut a = a;
    a.stop();
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_role_checks_total{outcome="timeout"}"#,
        2.0,
    )
    .await;
    always(
        "/readyz stays 200 while the master hangs",
        Duration::from_secs(1),
        async || match sidecar.readyz().await? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("/readyz {code}: {body}")),
        },
    )
    .await;
    a.cont();
    assert_eq!(
        pinned
            .cmd(&["PING"])
            .await
            .expect("the pinned connection was kept"),
        Resp::Simple("PONG".into())
    );

    // Gone: the checks are refused. The route stands too, and the restarted server is
    // reached again without any publication.
    a.kill();
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_role_checks_total{outcome="refused"}"#,
        1.0,
    )
    .await;
    always(
        "/readyz stays 200 while the master is down",
        Duration::from_secs(1),
        async || match sidecar.readyz().await? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("/readyz {code}: {body}")),
        },
    )
    .await;
    a.restart().await;
    await_routed_to(&sidecar, &a).await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_route_generation").await,
        1.0
    );
}

#[tokio::test]
async fn role_checks_use_the_sidecars_credentials_and_clients_their_own() {
    let a = RedisServer::builder()
        .host("127.0.0.2")
        .requirepass("s3cret")
        .start()
        .await;
    let kube = published(1, &a).await;

    // Without the password the master cannot be verified.
    let without = sidecar(&kube).start().await;
    without
        .await_not_ready("auth-failed", SETTLE_DEADLINE)
        .await;
    drop(without);

    let sidecar = sidecar(&kube).password_env("s3cret").start().await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    // The sidecar never authenticates for clients.
    let mut conn = sidecar.proxy_conn().await.expect("connect");
    match conn.cmd(&["GET", "k"]).await.unwrap() {
        Resp::Error(e) if e.starts_with("NOAUTH") => {}
        other => panic!("expected NOAUTH, got {}", other.brief()),
    }
    assert!(conn.cmd(&["AUTH", "s3cret"]).await.unwrap().is_ok());
    assert_eq!(conn.cmd(&["GET", "k"]).await.unwrap(), Resp::Nil);
}

#[tokio::test]
async fn a_rotated_password_file_is_read_again() {
    let a = RedisServer::builder()
        .host("127.0.0.2")
        .requirepass("one")
        .start()
        .await;
    let kube = published(1, &a).await;
    let dir = support::TestDir::new("password");
    let file = dir.path().join("password");
    std::fs::write(&file, "one\n").expect("write the password file");
    let sidecar = sidecar(&kube)
        .arg("--password-file")
        .arg(&file.display().to_string())
        .start()
        .await;
    sidecar.await_ready(SETTLE_DEADLINE).await;

    // The Secret is rotated: the server and the mounted file change.
    let mut admin = Conn::connect_auth(&a.addr(), Some("one"))
        .await
        .expect("connect");
    assert!(
        admin
            .cmd(&["CONFIG", "SET", "requirepass", "two"])
            .await
            .unwrap()
            .is_ok()
    );
    std::fs::write(&file, "two\n").expect("rotate the password file");
    // A republication needs a new verification, which works with the new password only.
    kube.publish(PAIR, 2, Some(&a.addr())).await;
    await_metric_at_least(&sidecar, "redispair_sidecar_cluster_epoch", 2.0).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    // Verified under the new epoch: un-routed for it (generation 2), routed again (3).
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_route_generation").await,
        3.0
    );
    assert!(sidecar.log_text().contains("read a new password"));
}

// ---------------------------------------------------------------------------------------------
// The API server: outages, dropped watches, compaction, deletion, bad annotations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_api_server_outage_of_30s_keeps_the_last_master_and_the_watch_resumes() {
    let (a, b) = master_and_replica().await;
    let kube = published(1, &a).await;
    let sidecar = ready_sidecar(&kube).await;

    let outage = Duration::from_secs(30);
    kube.refuse_connections_for(outage).await;
    let started = Instant::now();
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_watch_errors_total{kind="unreachable"}"#,
        1.0,
    )
    .await;
    let mut writes = 0u64;
    let window = outage.saturating_sub(started.elapsed() + Duration::from_secs(1));
    always(
        "writes through the sidecar reach the last master during the outage",
        window,
        async || {
            let mut conn = sidecar
                .proxy_conn()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            writes += 1;
            let n = writes.to_string();
            match conn.cmd(&["SET", "during-outage", &n]).await {
                Ok(reply) if reply.is_ok() => {}
                other => return Err(format!("SET → {other:?}")),
            }
            match sidecar.readyz().await? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("/readyz {code}: {body}")),
            }
        },
    )
    .await;
    assert_eq!(
        a.get("during-outage").await.unwrap(),
        Some(writes.to_string())
    );
    // It retried with backoff (250 ms doubling to 5 s, jittered: at most ~16 tries in 30 s),
    // not in a tight loop.
    let tries = metric(
        &sidecar,
        r#"redispair_sidecar_watch_errors_total{kind="unreachable"}"#,
    )
    .await;
    assert!(
        tries <= 20.0,
        "{tries} failed watch attempts during a 30 s outage"
    );

    // A failover while the API server was down is published once it is back: followed.
    promote(&b).await;
    demote(&a, &b).await;
    eventually("the API server to answer again", outage, async || {
        kube.pairs()
            .get(PAIR)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    let back = Instant::now();
    kube.publish(PAIR, 2, Some(&b.addr())).await;
    await_routed_to(&sidecar, &b).await;
    eprintln!(
        "followed the publication {:?} after the outage",
        back.elapsed()
    );
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        2.0
    );
}

#[tokio::test]
async fn dropped_watch_streams_and_a_compacted_history_are_survived() {
    let (a, b) = two_masters().await;
    let kube = published(1, &a).await;
    let sidecar = ready_sidecar(&kube).await;

    // A dropped stream: the watch resumes from where it was and sees the next publication.
    kube.drop_watches();
    kube.publish(PAIR, 2, Some(&b.addr())).await;
    await_routed_to(&sidecar, &b).await;

    // A resume from a compacted resourceVersion: 410 Gone, a fresh list, and on.
    kube.create_pair("unrelated", spec_selecting(&[("app", "other")]))
        .await;
    kube.touch("unrelated", "1").await;
    kube.compact();
    kube.drop_watches();
    await_metric_at_least(
        &sidecar,
        r#"redispair_sidecar_watch_errors_total{kind="gone"}"#,
        1.0,
    )
    .await;
    kube.publish(PAIR, 3, Some(&a.addr())).await;
    await_routed_to(&sidecar, &a).await;
    always_routed_to(&sidecar, &a, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn an_unreachable_api_server_at_start_up_is_waited_for_with_backoff() {
    let (a, _b) = two_masters().await;
    let kube = published(1, &a).await;
    let outage = Duration::from_secs(8);
    kube.refuse_connections_for(outage).await;
    let down = Instant::now();
    let sidecar = sidecar(&kube).start().await;
    match sidecar.readyz().await.expect("/readyz") {
        (503, _) => {}
        (code, body) => panic!("ready without the API server: {code} {body}"),
    }
    let unreachable = r#"redispair_sidecar_watch_errors_total{kind="unreachable"}"#;
    await_metric_at_least(&sidecar, unreachable, 1.0).await;
    sidecar.await_ready(outage + SETTLE_DEADLINE).await;
    assert!(down.elapsed() >= outage, "ready during the outage");
    await_routed_to(&sidecar, &a).await;
    // Each try lists afresh; the backoff (250 ms doubling to 5 s, jittered) allows at most ~8
    // in 8 s. Without it, a try every ~200 ms: about 40.
    let tries = metric(&sidecar, unreachable).await;
    assert!(
        tries <= 12.0,
        "{tries} failed lists during an {outage:?} outage"
    );
}

#[tokio::test]
async fn a_deleted_pair_keeps_the_route_and_a_recreated_one_is_followed_from_its_first_epoch() {
    let (a, b) = two_masters().await;
    let kube = published(7, &a).await;
    let sidecar = ready_sidecar(&kube).await;

    kube.delete_pair(PAIR).await;
    eventually(
        "the sidecar to see the deletion",
        SETTLE_DEADLINE,
        async || match sidecar.metric("redispair_sidecar_pair_found").await? {
            0.0 => Ok(()),
            v => Err(format!("pair_found {v}")),
        },
    )
    .await;
    always_routed_to(&sidecar, &a, Duration::from_secs(1)).await;

    // Created again: a new object, whose controller starts its epochs over.
    kube.create_pair(PAIR, spec_selecting(&[("app", "redis")]))
        .await;
    kube.publish(PAIR, 1, Some(&b.addr())).await;
    await_routed_to(&sidecar, &b).await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        1.0
    );
}

#[tokio::test]
async fn malformed_annotations_keep_the_route_and_are_counted_once() {
    let (a, b) = two_masters().await;
    let kube = published(2, &a).await;
    let sidecar = ready_sidecar(&kube).await;

    kube.annotate(PAIR, &[(EPOCH_ANNOTATION, Some("three"))])
        .await;
    await_metric_at_least(&sidecar, "redispair_sidecar_annotation_errors_total", 1.0).await;
    // More events with the same bad value: not counted again.
    kube.touch(PAIR, "1").await;
    kube.touch(PAIR, "2").await;
    always_routed_to(&sidecar, &a, Duration::from_secs(1)).await;
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_annotation_errors_total").await,
        1.0
    );
    assert_eq!(
        metric(&sidecar, "redispair_sidecar_cluster_epoch").await,
        2.0
    );
    let warnings = sidecar
        .log_text()
        .lines()
        .filter(|l| l.contains("annotations are malformed"))
        .count();
    assert_eq!(warnings, 1, "one warning for one bad value");

    // Fixed by the next publication.
    kube.publish(PAIR, 3, Some(&b.addr())).await;
    await_routed_to(&sidecar, &b).await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_drains_open_connections_and_exits_0() {
    let (a, _b) = two_masters().await;
    let kube = published(1, &a).await;
    let mut sidecar = sidecar(&kube)
        .drain_timeout(Duration::from_secs(20))
        .start()
        .await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    let (mut pinned, _) = pinned_client(&sidecar).await;
    let mut shared = sidecar.proxy_conn().await.expect("connect");
    assert!(shared.cmd(&["SET", "k", "v"]).await.unwrap().is_ok());

    sidecar.terminate();
    sidecar
        .await_not_ready("shutting down", SETTLE_DEADLINE)
        .await;
    eventually(
        "new connections to be refused",
        SETTLE_DEADLINE,
        async || match sidecar.proxy_conn().await {
            Err(_) => Ok(()),
            Ok(_) => Err("accepted".into()),
        },
    )
    .await;
    // Open connections keep working while draining.
    assert_eq!(
        pinned.cmd(&["PING"]).await.unwrap(),
        Resp::Simple("PONG".into())
    );
    assert_eq!(
        shared.cmd(&["GET", "k"]).await.unwrap().text().as_deref(),
        Some("v")
    );
    drop(pinned);
    drop(shared);
    // Well before the 20s drain timeout: the drain ended because the clients left.
    assert_eq!(sidecar.await_exit(Duration::from_secs(5)).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Configuration mistakes: exit 64, one `error:` line
// ---------------------------------------------------------------------------------------------

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Runs `redis-pair proxy <args>` with `env` (nothing inherited that names a namespace,
/// credentials or a cluster) and waits for it to exit; panics if it still runs after 5s.
fn run_proxy(args: &[String], env: &[(&str, &str)]) -> Outcome {
    let dir = support::TestDir::new("proxy-cli");
    let err_path = dir.path().join("stderr");
    let err_file = std::fs::File::create(&err_path).expect("create stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-pair"));
    cmd.arg("proxy")
        .args(args)
        .env_remove("POD_NAMESPACE")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("REDISPAIR_USERNAME")
        .env_remove("REDISPAIR_PASSWORD")
        // No ~/.kube/config either.
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn redis-pair proxy");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-pair proxy {args:?} still running after 5s; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Exit 64 and exactly one line on stderr (log records aside), `error: ...`, mentioning every
/// one of `all_of` (case-insensitive).
fn assert_config_error(out: &Outcome, all_of: &[&str]) {
    let stderr = &out.stderr;
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert_eq!(out.code, Some(64), "exit code; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with(|c: char| c.is_ascii_digit() || c == '{' || c == '\u{1b}'))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    let lower = lines[0].to_lowercase();
    for s in all_of {
        assert!(
            lower.contains(&s.to_lowercase()),
            "must mention {s:?}: {:?}",
            lines[0]
        );
    }
}

/// `--pair cache --listen ... --admin-listen ...` on free ports.
fn proxy_args() -> Vec<String> {
    let (listen, admin) = free_ports2();
    ["--pair", PAIR, "--listen", &format!("127.0.0.1:{listen}")]
        .into_iter()
        .chain(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .map(str::to_owned)
        .collect()
}

/// A kubeconfig for a server nobody runs: valid credentials, no cluster behind them.
fn kubeconfig(dir: &support::TestDir) -> String {
    let path = dir.path().join("kubeconfig");
    let (port, _) = free_ports2();
    std::fs::write(
        &path,
        test_apiserver::kubeconfig_yaml(&format!("http://127.0.0.1:{port}"), None, "nobody"),
    )
    .expect("write kubeconfig");
    path.display().to_string()
}

#[test]
fn no_namespace_exits_64_naming_the_ways_to_give_one() {
    let dir = support::TestDir::new("no-ns");
    let out = run_proxy(&proxy_args(), &[("KUBECONFIG", &kubeconfig(&dir))]);
    assert_config_error(&out, &["namespace", "--namespace", "POD_NAMESPACE"]);
}

#[test]
fn an_invalid_pair_name_exits_64() {
    let mut args = proxy_args();
    args[1] = "Cache_1".into();
    let out = run_proxy(&args, &[("POD_NAMESPACE", "apps")]);
    assert_config_error(&out, &["--pair", "Cache_1"]);
}

#[test]
fn no_kubernetes_credentials_exits_64_naming_kubeconfig() {
    let mut args = proxy_args();
    args.extend(["--namespace".into(), "apps".into()]);
    let out = run_proxy(&args, &[]);
    assert_config_error(&out, &["kubernetes", "KUBECONFIG"]);
}

#[test]
fn a_busy_listen_port_exits_64_naming_the_address() {
    let dir = support::TestDir::new("busy");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let mut args = proxy_args();
    args[3] = format!("127.0.0.1:{port}");
    let out = run_proxy(
        &args,
        &[("POD_NAMESPACE", "apps"), ("KUBECONFIG", &kubeconfig(&dir))],
    );
    assert_config_error(&out, &["--listen", &port.to_string(), "in use"]);
    let mut args = proxy_args();
    args[5] = format!("127.0.0.1:{port}");
    let out = run_proxy(
        &args,
        &[("POD_NAMESPACE", "apps"), ("KUBECONFIG", &kubeconfig(&dir))],
    );
    assert_config_error(&out, &["--admin-listen", &port.to_string()]);
    drop(busy);
}

#[test]
fn an_unreadable_password_file_exits_64_naming_it() {
    let dir = support::TestDir::new("pwfile");
    let missing = dir.path().join("no-such-password");
    let mut args = proxy_args();
    args.extend(["--password-file".into(), missing.display().to_string()]);
    let out = run_proxy(
        &args,
        &[("POD_NAMESPACE", "apps"), ("KUBECONFIG", &kubeconfig(&dir))],
    );
    assert_config_error(&out, &["--password-file", &missing.display().to_string()]);
}
