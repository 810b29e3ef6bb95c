//! End-to-end failover behaviour of `redis-pair local` against real redis-server processes:
//! crashes, hangs, restarts, startup topologies, planned switchovers and what clients of the
//! proxy see while that happens. The contract is docs/INTERFACE.md.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::time::{Duration, Instant};

use support::writes::{Writers, assert_none_lost, await_keys};
use support::{Conn, RedisPair, RedisServer, Resp, SETTLE_DEADLINE, always, eventually};

/// A master with one caught-up replica.
async fn master_and_replica() -> (RedisServer, RedisServer) {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    (a, b)
}

/// Waits until `server` is a replica of `master` according to redis itself (link up).
async fn await_follows(server: &RedisServer, master: &RedisServer) {
    let what = format!(
        "{} to replicate from {} with its link up",
        server.addr(),
        master.addr()
    );
    eventually(&what, SETTLE_DEADLINE, async || {
        let r = server.replication().await?;
        if r.role == "slave" && r.master.as_deref() == Some(&master.addr()) && r.link_up {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await
}

/// Waits until `/status` reports `server` as a replica of `master`.
async fn await_status_replica(pair: &RedisPair, server: &RedisServer, master: &RedisServer) {
    let what = format!(
        "/status to show {} as a replica of {}",
        server.addr(),
        master.addr()
    );
    eventually(&what, SETTLE_DEADLINE, async || {
        let s = pair.status().await?;
        let entry = s.server(&server.addr());
        if entry["role"] == "replica" && entry["master"].as_str() == Some(&master.addr()) {
            Ok(())
        } else {
            Err(entry.to_string())
        }
    })
    .await
}

fn assert_failover(status: &support::Status, from: &str, to: &str, reason: &str, epoch: u64) {
    let lf = status.last_failover();
    assert_eq!(
        lf["from"].as_str(),
        Some(from),
        "last_failover.from in {status}"
    );
    assert_eq!(lf["to"].as_str(), Some(to), "last_failover.to in {status}");
    assert_eq!(
        lf["reason"].as_str(),
        Some(reason),
        "last_failover.reason in {status}"
    );
    assert_eq!(
        lf["epoch"].as_u64(),
        Some(epoch),
        "last_failover.epoch in {status}"
    );
    assert_eq!(status.epoch(), epoch, "epoch in {status}");
}

/// A proxied client pinned to a server connection of its own by a command that changes
/// connection state (the shared path would keep it open through a failover).
async fn pinned_client(pair: &RedisPair) -> Conn {
    let mut pinned = pair.proxy_conn().await.unwrap();
    assert!(
        pinned
            .cmd(&["CLIENT", "SETNAME", "pinned"])
            .await
            .unwrap()
            .is_ok()
    );
    pinned
}

#[tokio::test]
async fn master_sigkill_promotes_replica_and_proxy_writes_land_on_it() {
    let (mut a, b) = master_and_replica().await;
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    let before = pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;
    let epoch = before.epoch();
    // A client on the shared path, and one pinned to a connection of its own by a command
    // that changes connection state.
    let mut shared = pair.proxy_conn().await.unwrap();
    assert_eq!(
        shared.cmd(&["PING"]).await.unwrap(),
        Resp::Simple("PONG".into())
    );
    let mut pinned = pinned_client(&pair).await;

    a.kill();

    let after = pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;
    assert_failover(&after, &a.addr(), &b.addr(), "master-down", epoch + 1);
    let closed = pinned.await_closed(Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "the pinned client of the killed master must see the close: {closed:?}"
    );
    assert_eq!(
        b.replication().await.unwrap().role,
        "master",
        "redis itself must say B is master"
    );

    // The idle shared client was owed nothing, so it was not closed: its next command goes to
    // the new master on the same client connection.
    let reply = shared.cmd(&["SET", "after-failover", "v1"]).await;
    assert!(
        matches!(reply, Ok(Resp::Simple(ref ok)) if ok == "OK"),
        "SET on the shared client after the failover: {reply:?}"
    );
    assert_eq!(
        b.get("after-failover").await.unwrap().as_deref(),
        Some("v1"),
        "the write must be on B"
    );
    let reply = pair
        .proxy_cmd_eventually(&["SET", "new-client", "v2"], Duration::from_secs(3))
        .await;
    assert!(reply.is_ok(), "SET through the proxy: {reply:?}");
    assert_eq!(b.get("new-client").await.unwrap().as_deref(), Some("v2"));
}

#[tokio::test]
async fn master_sigstop_is_promoted_away_only_after_down_after_and_rejoins_as_replica() {
    let down_after = Duration::from_secs(2);
    let (mut a, b) = master_and_replica().await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .down_after(down_after)
        .start()
        .await;
    let epoch = pair
        .await_master(Some(&a.addr()), SETTLE_DEADLINE)
        .await
        .epoch();

    a.stop();
    let stopped_at = Instant::now();

    // A hung master is not down until down-after has passed: no failover in the first half.
    always(
        "A stays the published master for 0.5 × down-after",
        down_after / 2,
        async || {
            let s = pair.status().await?;
            if s.master() == Some(&a.addr()) && s.epoch() == epoch {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;

    let after = pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;
    let promoted_after = stopped_at.elapsed();
    // The last successful probe can precede the SIGSTOP by up to one probe interval.
    let earliest = down_after - pair.probe_interval - Duration::from_millis(100);
    assert!(
        promoted_after >= earliest,
        "B was published {promoted_after:?} after SIGSTOP; down-after is {down_after:?}"
    );
    assert_failover(&after, &a.addr(), &b.addr(), "master-down", epoch + 1);

    a.cont();

    await_follows(&a, &b).await;
    await_status_replica(&pair, &a, &b).await;
    let s = pair.status().await.unwrap();
    assert_eq!(
        s.master(),
        Some(b.addr().as_str()),
        "B stays master after A wakes up: {s}"
    );
    assert_eq!(
        s.epoch(),
        epoch + 1,
        "waking A must not change the epoch again: {s}"
    );
}

#[tokio::test]
async fn restarted_old_master_rejoins_as_replica_and_receives_writes_made_after_failover() {
    let (mut a, b) = master_and_replica().await;
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    a.kill();
    pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;

    let mut c = eventually("a proxy connection", Duration::from_secs(3), async || {
        pair.proxy_conn().await.map_err(|e| e.to_string())
    })
    .await;
    let cmds: Vec<Vec<String>> = (0..100)
        .map(|i| vec!["SET".into(), format!("post-failover-{i}"), i.to_string()])
        .collect();
    let replies = c.pipeline(&cmds).await.expect("writes through the proxy");
    assert!(
        replies.iter().all(Resp::is_ok),
        "writes through the proxy: {:?}",
        &replies[..3]
    );

    a.restart().await;

    await_follows(&a, &b).await;
    await_status_replica(&pair, &a, &b).await;
    eventually(
        "A to receive the 100 keys written after the failover",
        SETTLE_DEADLINE,
        async || match a.dbsize().await? {
            100 => Ok(()),
            n => Err(format!("A has {n} keys")),
        },
    )
    .await;
    assert_eq!(
        a.get("post-failover-99").await.unwrap().as_deref(),
        Some("99")
    );
    assert_eq!(
        pair.status().await.unwrap().master(),
        Some(b.addr().as_str())
    );
}

#[tokio::test]
async fn master_restarted_empty_does_not_wipe_the_replica() {
    const KEYS: i64 = 1000;
    let (mut a, b) = master_and_replica().await;
    a.fill("before-", KEYS as usize).await;
    b.await_replicating_from(&a).await;
    assert_eq!(b.dbsize().await.unwrap(), KEYS);
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    // Crash and come straight back, empty, on the same port: faster than down-after.
    a.kill();
    a.restart().await;

    let s = pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;
    assert_eq!(
        s.last_failover()["to"].as_str(),
        Some(b.addr().as_str()),
        "{s}"
    );
    await_follows(&a, &b).await;
    eventually(
        "B (new master) and A (restarted) to both hold every key",
        SETTLE_DEADLINE,
        async || {
            let (nb, na) = (b.dbsize().await?, a.dbsize().await?);
            if nb == KEYS && na == KEYS {
                Ok(())
            } else {
                Err(format!("B has {nb} keys, A has {na}"))
            }
        },
    )
    .await;
    assert_eq!(b.get("before-999").await.unwrap().as_deref(), Some("999"));
    assert_eq!(a.get("before-0").await.unwrap().as_deref(), Some("0"));
}

#[tokio::test]
async fn with_every_server_down_new_clients_are_held_for_wait_for_master_then_closed_and_recovery_follows()
 {
    let wait = Duration::from_secs(1);
    let (mut a, mut b) = master_and_replica().await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .wait_for_master(wait)
        .start()
        .await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    b.kill();
    a.kill();

    let s = pair.await_master(None, SETTLE_DEADLINE).await;
    assert_eq!(s.reason(), Some("no-master-reachable"), "{s}");
    assert_eq!(
        pair.readyz().await.unwrap(),
        503,
        "/readyz without a master"
    );

    let mut held = pair
        .proxy_conn()
        .await
        .expect("the proxy accepts while no master is published");
    // The wait starts with the first request (a client that asks nothing is not held).
    let started = Instant::now();
    held.send(&["GET", "k"]).await.unwrap();
    let closed = held.await_closed(wait + Duration::from_secs(3)).await;
    let after = started.elapsed();
    assert!(
        closed.is_ok(),
        "client connection was not closed: {closed:?}"
    );
    assert!(
        after >= wait - Duration::from_millis(100),
        "client was closed after {after:?}, before --wait-for-master {wait:?}"
    );

    // The old master comes back empty (a new replication history) while the replica, which
    // held the data, is still away: publishing it would wipe the replica when it returns, so
    // the pair waits and says why (issue 14, failure 3).
    a.restart().await;
    eventually(
        "the pair waits for the server that held the data",
        SETTLE_DEADLINE,
        async || {
            let s = pair.status().await?;
            match s.0["waiting"].as_str() {
                Some(why) if why.contains("no server is known to hold") => Ok(()),
                other => Err(format!("waiting: {other:?} in {s}")),
            }
        },
    )
    .await;
    assert_eq!(pair.status().await.unwrap().master(), None);

    // Every member answers and none holds the data: it is gone from the group, and what
    // exists is published.
    b.restart().await;
    let s = eventually("a master is published again", SETTLE_DEADLINE, async || {
        let s = pair.status().await?;
        match s.master() {
            Some(_) => Ok(s),
            None => Err(format!("no master yet: {s}")),
        }
    })
    .await;
    assert_eq!(s.reason(), Some("recovered"), "{s}");
    let master = if s.master() == Some(a.addr().as_str()) {
        &a
    } else {
        &b
    };
    let reply = pair
        .proxy_cmd_eventually(&["SET", "recovered", "yes"], Duration::from_secs(3))
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(
        master.get("recovered").await.unwrap().as_deref(),
        Some("yes")
    );
}

#[tokio::test]
async fn replica_with_priority_zero_is_never_promoted() {
    let mut a = RedisServer::master().await;
    let b = RedisServer::builder()
        .replica_of(&a)
        .priority(0)
        .start()
        .await;
    b.await_replicating_from(&a).await;
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    a.kill();

    // Long enough for down-after plus many probe rounds: a promotion would have happened.
    let window = pair.down_after + pair.probe_interval * 10 + Duration::from_millis(500);
    always(
        "the priority-0 replica B is never published as master",
        window,
        async || {
            let s = pair.status().await?;
            if s.master() == Some(&b.addr()) {
                Err(s.to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let r = b.replication().await.unwrap();
    assert_eq!(
        r.role, "slave",
        "B must still be a replica in redis itself: {r:?}"
    );
    let s = pair.status().await.unwrap();
    assert_eq!(
        s.master(),
        None,
        "with A dead and B priority 0 there is no master: {s}"
    );
}

#[tokio::test]
async fn priority_zero_replica_is_skipped_for_a_normal_replica() {
    let mut a = RedisServer::master().await;
    let b = RedisServer::builder()
        .replica_of(&a)
        .priority(0)
        .start()
        .await;
    let c = RedisServer::replica(&a).await;
    b.await_replicating_from(&a).await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .server(&c)
        .start()
        .await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    a.kill();

    let s = pair.await_master(Some(&c.addr()), SETTLE_DEADLINE).await;
    assert_eq!(s.reason(), Some("master-down"), "{s}");
    assert_eq!(c.replication().await.unwrap().role, "master");
    assert_eq!(
        b.replication().await.unwrap().role,
        "slave",
        "B (priority 0) must stay a replica"
    );
}

#[tokio::test]
async fn startup_keeps_existing_topology_without_replicaof_or_resync() {
    let (a, b) = master_and_replica().await;
    let syncs_before = a.info("stats").await.unwrap()["sync_full"].clone();

    // A is listed second on purpose: the order of --server must not decide who is master.
    let pair = RedisPair::builder().server(&b).server(&a).start().await;
    let s = pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;
    assert_eq!(s.epoch(), 1, "first publication is epoch 1: {s}");

    always(
        "B keeps replicating from A with its link up",
        Duration::from_secs(1),
        async || {
            let r = b.replication().await?;
            if r.role == "slave" && r.master.as_deref() == Some(&a.addr()) && r.link_up {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;

    let s = pair.status().await.unwrap();
    assert_eq!(s.master(), Some(a.addr().as_str()), "{s}");
    assert_eq!(s.epoch(), 1, "no failover may happen at startup: {s}");
    assert_eq!(
        a.info("stats").await.unwrap()["sync_full"],
        syncs_before,
        "no new full resync on A"
    );
    for server in [&a, &b] {
        let stats = server.info("commandstats").await.unwrap();
        for cmd in ["cmdstat_replicaof", "cmdstat_slaveof"] {
            assert!(
                !stats.contains_key(cmd),
                "{} received {cmd}: {:?}",
                server.addr(),
                stats.get(cmd)
            );
        }
    }
}

#[tokio::test]
async fn two_masters_at_startup_keep_the_one_with_more_keys() {
    let a = RedisServer::master().await;
    let b = RedisServer::master().await;
    a.fill("a-", 5).await;
    b.fill("b-", 50).await;

    // A is listed first, so "first listed wins" would pick the wrong one.
    let pair = RedisPair::builder().server(&a).server(&b).start().await;

    pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;
    await_follows(&a, &b).await;
    await_status_replica(&pair, &a, &b).await;
    eventually("A to hold B's 50 keys", SETTLE_DEADLINE, async || {
        match a.dbsize().await? {
            50 => Ok(()),
            n => Err(format!("A has {n} keys")),
        }
    })
    .await;
    assert_eq!(a.get("b-49").await.unwrap().as_deref(), Some("49"));
    assert_eq!(b.dbsize().await.unwrap(), 50, "B's data is kept");
}

#[tokio::test]
async fn switchover_under_concurrent_writes_loses_no_acknowledged_write() {
    let (a, b) = master_and_replica().await;
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    let epoch = pair
        .await_master(Some(&a.addr()), SETTLE_DEADLINE)
        .await
        .epoch();

    // Several writers keep more writes in flight at the moment of the switch, which is where
    // an unsafe switchover (no pause, no catch-up) loses acknowledged writes.
    let writers = Writers::start(pair.proxy_addr(), "w", 4);
    await_keys(&a, 200).await;

    let (code, body) = pair.switchover(None).await;
    assert_eq!(code, 200, "POST /switchover: {body}");
    assert_eq!(body["master"].as_str(), Some(b.addr().as_str()), "{body}");
    assert_eq!(body["epoch"].as_u64(), Some(epoch + 1), "{body}");

    let keys_at_switch = b.dbsize().await.unwrap();
    await_keys(&b, keys_at_switch + 200).await; // the writers go on against B
    let acked = writers.stop().await;
    assert_none_lost(&b, &acked).await;

    let s = pair.status().await.unwrap();
    assert_failover(&s, &a.addr(), &b.addr(), "switchover", epoch + 1);
    await_follows(&a, &b).await;
    await_status_replica(&pair, &a, &b).await;
}

#[tokio::test]
async fn switchover_to_a_named_target_promotes_that_replica() {
    let a = RedisServer::master().await;
    let b = RedisServer::replica(&a).await;
    let c = RedisServer::replica(&a).await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .server(&c)
        .start()
        .await;
    let epoch = pair
        .await_master(Some(&a.addr()), SETTLE_DEADLINE)
        .await
        .epoch();

    let (code, body) = pair.switchover(Some(&c.addr())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["master"].as_str(), Some(c.addr().as_str()), "{body}");

    let s = pair
        .await_master(Some(&c.addr()), Duration::from_secs(1))
        .await;
    assert_failover(&s, &a.addr(), &c.addr(), "switchover", epoch + 1);
    assert_eq!(c.replication().await.unwrap().role, "master");
    await_follows(&a, &c).await;
}

#[tokio::test]
async fn switchover_to_an_unknown_target_is_refused_with_409() {
    let (a, b) = master_and_replica().await;
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    let epoch = pair
        .await_master(Some(&a.addr()), SETTLE_DEADLINE)
        .await
        .epoch();

    let (code, body) = pair.switchover(Some("127.0.0.1:1")).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "409 body needs an error: {body}"
    );

    let s = pair.status().await.unwrap();
    assert_eq!(s.master(), Some(a.addr().as_str()), "{s}");
    assert_eq!(
        s.epoch(),
        epoch,
        "a refused switchover must not change the epoch: {s}"
    );
    assert_eq!(a.replication().await.unwrap().role, "master");
}

#[tokio::test]
async fn failover_closes_client_connections_to_the_old_master() {
    let (mut a, b) = master_and_replica().await;
    let pair = RedisPair::builder().server(&a).server(&b).start().await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    let mut pinned = pinned_client(&pair).await;
    let mut idle_shared = pair.proxy_conn().await.unwrap();
    assert_eq!(
        idle_shared.cmd(&["PING"]).await.unwrap(),
        Resp::Simple("PONG".into())
    );
    let mut waiting_shared = pair.proxy_conn().await.unwrap();
    assert_eq!(
        waiting_shared.cmd(&["PING"]).await.unwrap(),
        Resp::Simple("PONG".into())
    );

    // SIGSTOP rather than SIGKILL: a killed master closes its sockets itself, a hung one does
    // not, so only this proves that the proxy closes connections on a failover.
    a.stop();
    // Asked of the hung master, so never answered: this client must be closed, not left
    // waiting or answered by the new master.
    waiting_shared
        .send(&["SET", "sent-to-hung-master", "1"])
        .await
        .unwrap();
    pair.await_master(Some(&b.addr()), SETTLE_DEADLINE).await;

    let closed = pinned.await_closed(Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "the pinned connection to the old master must be closed: {closed:?}"
    );
    let closed = waiting_shared.await_closed(Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "a shared client owed a reply by the old master must be closed: {closed:?}"
    );
    let reply = idle_shared.cmd(&["SET", "idle-client", "1"]).await;
    assert!(
        matches!(reply, Ok(Resp::Simple(ref ok)) if ok == "OK"),
        "an idle shared client goes on with the new master: {reply:?}"
    );
    assert_eq!(b.get("idle-client").await.unwrap().as_deref(), Some("1"));
    assert_eq!(
        b.get("sent-to-hung-master").await.unwrap(),
        None,
        "the request sent to the hung master must not be replayed on the new one"
    );

    let reply = pair
        .proxy_cmd_eventually(&["SET", "after-close", "1"], Duration::from_secs(3))
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(b.get("after-close").await.unwrap().as_deref(), Some("1"));
}

#[tokio::test]
async fn replica_without_masterauth_gets_a_warning_in_status() {
    let a = RedisServer::builder().requirepass("s3cret").start().await;
    let b = RedisServer::builder()
        .replica_of(&a)
        .requirepass("s3cret")
        .start()
        .await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .env("REDISPAIR_PASSWORD", "s3cret")
        .start()
        .await;

    eventually(
        "a masterauth warning on B in /status",
        SETTLE_DEADLINE,
        async || {
            let s = pair.status().await?;
            let warnings = s.server(&b.addr())["warnings"].clone();
            let mentions = warnings.as_array().is_some_and(|w| {
                w.iter()
                    .any(|x| x.as_str().is_some_and(|t| t.contains("masterauth")))
            });
            if mentions { Ok(()) } else { Err(s.to_string()) }
        },
    )
    .await;
    let s = pair.status().await.unwrap();
    assert_eq!(s.master(), Some(a.addr().as_str()), "{s}");
    assert_eq!(
        s.server(&b.addr())["link_up"],
        false,
        "B cannot authenticate to A: {s}"
    );
}

#[tokio::test]
async fn switchover_whose_target_cannot_catch_up_in_time_is_aborted_and_the_master_unpaused() {
    let (a, b) = master_and_replica().await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .switchover_timeout(Duration::from_millis(1))
        .start()
        .await;
    let epoch = pair
        .await_master(Some(&a.addr()), SETTLE_DEADLINE)
        .await
        .epoch();

    // A 64 MiB write takes the replica tens of milliseconds to receive and apply: far more
    // than the 1ms the switchover may wait for it.
    let big = "x".repeat(64 << 20);
    let mut writer = a.conn().await.unwrap();
    assert!(writer.cmd(&["SET", "big", &big]).await.unwrap().is_ok());
    let (code, body) = pair.switchover(Some(&b.addr())).await;
    assert_eq!(code, 504, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("catch up"), "{body}");

    // Still the same master and epoch, and it takes writes at once: it was unpaused, not
    // left paused until the pause's own expiry (seconds).
    let s = pair.status().await.unwrap();
    assert_eq!(s.master(), Some(a.addr().as_str()), "{s}");
    assert_eq!(s.epoch(), epoch, "{s}");
    let started = Instant::now();
    let mut client = pair.proxy_conn().await.unwrap();
    let reply = client
        .cmd(&["SET", "after-abort", "1"])
        .await
        .expect("a write right after the aborted switchover");
    assert!(reply.is_ok(), "{}", reply.brief());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the write took {:?}: the master was left paused",
        started.elapsed()
    );
}

/// Issue 14, failure 3: the master hangs, its only replica restarts without data and comes
/// back as an empty master. Nothing may make the empty one the master; when the old master
/// answers again it is published and the empty one becomes its replica.
#[tokio::test]
async fn an_empty_restarted_replica_is_not_promoted_over_a_hung_master() {
    const KEYS: i64 = 1000;
    let down_after = Duration::from_secs(1);
    let (mut a, mut b) = master_and_replica().await;
    a.fill("before-", KEYS as usize).await;
    b.await_replicating_from(&a).await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .down_after(down_after)
        .start()
        .await;
    pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;

    a.stop();
    b.restart_as_empty_master().await;
    assert_eq!(b.dbsize().await.unwrap(), 0);

    // After down-after the hung master is down; the restarted server holds none of its data
    // (it loads the file of its first, empty sync: the history's start, "an older
    // snapshot"; without that file it would be another history altogether).
    let s = pair.await_master(None, SETTLE_DEADLINE).await;
    assert_eq!(s.reason(), Some("no-master-reachable"), "{s}");
    let waiting = s.0["waiting"].as_str().unwrap_or_default().to_owned();
    assert!(
        waiting.contains(&b.addr())
            && (waiting.contains("older snapshot") || waiting.contains("another replication")),
        "status says why {} is not promoted: {s}",
        b.addr()
    );

    a.cont();
    let s = pair.await_master(Some(&a.addr()), SETTLE_DEADLINE).await;
    assert_eq!(s.reason(), Some("recovered"), "{s}");
    await_follows(&b, &a).await;
    eventually("both servers hold every key", SETTLE_DEADLINE, async || {
        let (na, nb) = (a.dbsize().await?, b.dbsize().await?);
        if na == KEYS && nb == KEYS {
            Ok(())
        } else {
            Err(format!("A has {na} keys, B has {nb}"))
        }
    })
    .await;
}

/// Issue 14, failure 9: a master at `maxclients` refuses new connections but is alive, and
/// its clients can still write to it. It is reported as full, never failed over.
#[tokio::test]
async fn a_master_at_maxclients_is_reported_as_full_and_not_failed_over() {
    let down_after = Duration::from_secs(1);
    let a = RedisServer::builder().maxclients(12).start().await;
    let b = RedisServer::builder().replica_of(&a).start().await;
    b.await_replicating_from(&a).await;
    let pair = RedisPair::builder()
        .server(&a)
        .server(&b)
        .down_after(down_after)
        .start()
        .await;
    let epoch = pair
        .await_master(Some(&a.addr()), SETTLE_DEADLINE)
        .await
        .epoch();

    // Take every connection slot that is left.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut conn = a.conn().await.expect("TCP connect");
        match conn.cmd(&["PING"]).await {
            Ok(Resp::Error(_)) => break,
            Ok(_) => held.push(conn),
            Err(_) => break,
        }
    }
    assert!(held.len() < 64, "maxclients did not bite");

    eventually(
        "status reports the master as full",
        SETTLE_DEADLINE,
        async || {
            let s = pair.status().await?;
            let error = s.server(&a.addr())["error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if error.contains("maxclients") {
                Ok(())
            } else {
                Err(format!("error of {}: {error:?}", a.addr()))
            }
        },
    )
    .await;
    always(
        "A stays the published master for twice down-after while full",
        down_after * 2,
        async || {
            let s = pair.status().await?;
            if s.master() == Some(a.addr().as_str()) && s.epoch() == epoch {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;

    drop(held);
    eventually("A answers the engine again", SETTLE_DEADLINE, async || {
        let s = pair.status().await?;
        match s.server(&a.addr())["health"].as_str() {
            Some("up") => Ok(()),
            other => Err(format!("health {other:?}")),
        }
    })
    .await;
    assert_eq!(pair.status().await.unwrap().epoch(), epoch);
}
