//! The Kubernetes layer end to end: Redis pods that are real redis-servers on loopback
//! addresses of their own (127.0.0.2, 127.0.0.3, ...) with Pod objects carrying those IPs, two
//! real `redis-pair controller` processes and real `redis-pair proxy` sidecars against the
//! project's test API server, traffic through the sidecars, and the real kubectl.

// A test crate: a panic is how a test fails (the workspace lints deny these elsewhere).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// `pub` because each test binary uses only part of the shared harness; unused public items
// are not reported as dead code.
pub mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use redis_pair::crd::{
    MASTER_REPLID_ANNOTATION, MASTER_RUN_ID_ANNOTATION, RedisPairSpec, SWITCHOVER_ANNOTATION,
};
use serde_json::json;
use support::cluster::{
    Controller, RedisPod, await_published, event_reasons, kubectl, kubectl_row, pair_status,
    published,
};
use support::kube::{Kube, Sidecar, spec_selecting};
use support::writes::{Writers, assert_none_lost, await_keys};
use support::{Conn, RedisServer, SETTLE_DEADLINE, always, eventually};

const PAIR: &str = "cache";

/// A pair probed every 200 ms; fencing and `downAfter` stay at their defaults (a dead master
/// refuses connections and is failed over at once anyway). The probe timeout is generous: on
/// two cores shared by the whole suite, a 150 ms one saw healthy servers time out.
fn spec_for(pods: &[RedisPod]) -> RedisPairSpec {
    let mut spec = spec_selecting(&[("app", PAIR)]);
    spec.port = i32::from(pods[0].port());
    spec.failover.probe_interval = Duration::from_millis(200).into();
    spec.failover.probe_timeout = Duration::from_secs(1).into();
    spec
}

/// A sidecar for the pair, reading it with exactly what the chart's `sidecarAccess` grants.
async fn sidecar(kube: &Kube) -> Sidecar {
    let kubeconfig = support::cluster::chart_sidecar_kubeconfig(kube).await;
    Sidecar::builder(kube, PAIR)
        .kubeconfig(&kubeconfig)
        .start()
        .await
}

/// The role a server reports (`master`, `slave`), or why it could not tell.
async fn role(server: &RedisServer) -> Result<String, String> {
    let info = server.info("replication").await?;
    info.get("role").cloned().ok_or_else(|| "no role".into())
}

/// Waits until `server` replicates from `master`, caught up.
async fn await_replica_of(server: &RedisServer, master: &RedisServer) {
    server.await_replicating_from(master).await;
}

/// `kubectl get rpair cache` shows this master pod, epoch and phase.
async fn await_kubectl_shows(kube: &Kube, master: &str, epoch: u64, phase: &str) {
    eventually(
        &format!("kubectl get rpair shows {master}, epoch {epoch}, {phase}"),
        SETTLE_DEADLINE,
        async || {
            let row = kubectl_row(kube, PAIR).await?;
            let shown = (
                row.get("MASTER").cloned().unwrap_or_default(),
                row.get("EPOCH").cloned().unwrap_or_default(),
                row.get("PHASE").cloned().unwrap_or_default(),
            );
            if shown == (master.to_owned(), epoch.to_string(), phase.to_owned()) {
                Ok(())
            } else {
                Err(format!("{row:?}"))
            }
        },
    )
    .await;
}

/// SET through a sidecar, on a fresh connection; `Ok` once acknowledged.
async fn set_through(sidecar: &Sidecar, key: &str, value: &str) -> Result<(), String> {
    let mut c = Conn::connect(sidecar.proxy_addr())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let reply = c
        .cmd(&["SET", key, value])
        .await
        .map_err(|e| format!("SET: {e}"))?;
    if reply.is_ok() {
        Ok(())
    } else {
        Err(format!("SET → {}", reply.brief()))
    }
}

/// Which of `pods` answers as master now.
async fn masters(pods: &[RedisPod]) -> Vec<String> {
    let mut masters = Vec::new();
    for pod in pods {
        if role(&pod.server).await.as_deref() == Ok("master") {
            masters.push(pod.name.clone());
        }
    }
    masters
}

/// The identity of the controller that leads, once one does.
async fn leader(controllers: &[Controller]) -> String {
    eventually("one controller leads", SETTLE_DEADLINE, async || {
        for c in controllers {
            if c.is_leader().await {
                return Ok(c.identity.clone());
            }
        }
        Err("none leads yet".to_owned())
    })
    .await
}

/// Pods, a RedisPair over them, `controllers` controllers, and the master published.
async fn cluster(pods: usize, controllers: &[&str]) -> (Kube, Vec<RedisPod>, Vec<Controller>, u64) {
    let kube = Kube::start().await;
    let pods = RedisPod::start_group(&kube, PAIR, pods).await;
    // The first pod is made the master before any controller runs, so the controller keeps
    // the existing topology. Left as empty masters, which one it keeps is its choice (the
    // address order of equal servers: 127.0.0.10 sorts before 127.0.0.9), and the tests
    // below must not depend on it.
    for pod in &pods[1..] {
        let master = pods[0].server.addr();
        let (host, port) = master.rsplit_once(':').expect("host:port");
        pod.server
            .cmd(&["REPLICAOF", host, port])
            .await
            .expect("REPLICAOF the first pod");
        await_replica_of(&pod.server, &pods[0].server).await;
    }
    kube.create_pair(PAIR, spec_for(&pods)).await;
    let mut started = Vec::new();
    for identity in controllers {
        started.push(Controller::start(&kube, identity).await);
    }
    let epoch = await_published(&kube, PAIR, &pods[0].endpoint(), 0).await;
    for pod in &pods[1..] {
        await_replica_of(&pod.server, &pods[0].server).await;
    }
    (kube, pods, started, epoch)
}

#[tokio::test]
async fn master_killed_is_failed_over_every_sidecar_follows_and_it_rejoins_as_a_replica() {
    let (kube, mut pods, _controllers, epoch) = cluster(2, &["a", "b"]).await;
    await_kubectl_shows(&kube, "cache-0", epoch, "Healthy").await;
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        let sidecar = sidecar(&kube).await;
        sidecar.await_ready(SETTLE_DEADLINE).await;
        sidecars.push(sidecar);
    }
    for (i, s) in sidecars.iter().enumerate() {
        set_through(s, &format!("before-{i}"), "1")
            .await
            .expect("a write");
    }
    // Replication is asynchronous: what kill -9 may lose is what the replica has not got yet.
    eventually(
        "the writes replicated",
        SETTLE_DEADLINE,
        async || match pods[1].server.get("before-2").await? {
            Some(_) => Ok(()),
            None => Err("not yet".to_owned()),
        },
    )
    .await;

    pods[0].server.kill();
    let new_epoch = await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    assert_eq!(new_epoch, epoch + 1, "one failover, one epoch");
    for (i, s) in sidecars.iter().enumerate() {
        let key = format!("after-{i}");
        eventually(
            &format!("sidecar {i} takes writes on the new master"),
            SETTLE_DEADLINE,
            async || set_through(s, &key, "2").await,
        )
        .await;
        assert_eq!(pods[1].server.get(&key).await, Ok(Some("2".into())));
        assert_eq!(
            pods[1].server.get(&format!("before-{i}")).await,
            Ok(Some("1".into()))
        );
    }
    await_kubectl_shows(&kube, "cache-1", new_epoch, "Degraded").await;
    assert_eq!(masters(&pods).await, ["cache-1"]);

    // The old master comes back empty: the controller makes it a replica of the new one
    // before anything could route to it, and it gets the writes made meanwhile.
    pods[0].server.restart().await;
    await_replica_of(&pods[0].server, &pods[1].server).await;
    eventually(
        "the old master has the new data",
        SETTLE_DEADLINE,
        async || match pods[0].server.get("after-0").await? {
            Some(v) if v == "2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    await_kubectl_shows(&kube, "cache-1", new_epoch, "Healthy").await;
    eventually("role labels follow", SETTLE_DEADLINE, async || {
        let labels = (pods[0].role_label().await, pods[1].role_label().await);
        if labels == (Some("replica".into()), Some("master".into())) {
            Ok(())
        } else {
            Err(format!("{labels:?}"))
        }
    })
    .await;
    let events = event_reasons(&kube, PAIR).await;
    assert!(events.contains(&"Promoted".to_owned()), "{events:?}");
    assert!(events.contains(&"Demoted".to_owned()), "{events:?}");
}

#[tokio::test]
async fn master_pod_deleted_is_handed_over_before_it_stops_and_no_acknowledged_write_is_lost() {
    let (kube, mut pods, _controllers, epoch) = cluster(2, &["a"]).await;
    let sidecar = sidecar(&kube).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    let writers = Writers::start(sidecar.proxy_addr(), "w", 4);
    await_keys(&pods[0].server, 200).await;

    // What `kubectl delete pod` does; the pod's preStop hook (5 s here) keeps Redis serving
    // until the kubelet stops it.
    pods[0].delete().await;
    let handed_over = tokio::time::timeout(
        Duration::from_secs(5),
        await_published(&kube, PAIR, &pods[1].endpoint(), epoch),
    )
    .await;
    pods[0].stop_as_kubelet().await;
    let new_epoch = handed_over.expect("handed over within the preStop delay");
    assert_eq!(new_epoch, epoch + 1);

    let keys_at_switch = pods[1].server.dbsize().await.expect("dbsize");
    await_keys(&pods[1].server, keys_at_switch + 200).await;
    let acked = writers.stop().await;
    assert_none_lost(&pods[1].server, &acked).await;

    let status = pair_status(&kube, PAIR).await.expect("status");
    assert_eq!(
        status["lastFailover"]["reason"], "master-leaving",
        "{status}"
    );
    assert_eq!(status["lastFailover"]["from"], "cache-0", "{status}");
    let events = event_reasons(&kube, PAIR).await;
    for reason in ["SwitchoverStarted", "SwitchoverCompleted"] {
        assert!(
            events.contains(&reason.to_owned()),
            "{reason} in {events:?}"
        );
    }
}

#[tokio::test]
async fn leader_killed_mid_failover_is_finished_by_the_other_with_one_master_and_one_epoch() {
    let (kube, mut pods, mut controllers, epoch) = cluster(3, &["a", "b"]).await;
    let leader_identity = leader(&controllers).await;

    // Every answer of the API server takes a second: the leader's failover (retract the label,
    // promote, publish) stretches out, and it is killed right after it promoted.
    kube.server().set_delay(Duration::from_secs(1));
    pods[0].server.kill();
    let promoted = eventually("a replica promoted", SETTLE_DEADLINE, async || {
        for pod in &pods[1..] {
            if role(&pod.server).await.as_deref() == Ok("master") {
                return Ok(pod.name.clone());
            }
        }
        Err("no replica is master yet".to_owned())
    })
    .await;
    let leader = controllers
        .iter_mut()
        .find(|c| c.identity == leader_identity)
        .expect("the leader");
    leader.kill();
    kube.server().set_delay(Duration::ZERO);

    let promoted_pod = pods.iter().find(|p| p.name == promoted).expect("a pod");
    let new_epoch = await_published(&kube, PAIR, &promoted_pod.endpoint(), epoch).await;
    assert_eq!(
        new_epoch,
        epoch + 1,
        "the next epoch, none skipped and none reused"
    );
    let survivor = controllers
        .iter()
        .find(|c| c.identity != leader_identity)
        .expect("the other controller");
    assert!(survivor.is_leader().await, "the other controller took over");
    // The promoted replica was kept: no second promotion, and the third pod follows it.
    always(
        "exactly one master",
        Duration::from_secs(2),
        async || match masters(&pods).await.as_slice() {
            [only] if *only == promoted => Ok(()),
            other => Err(format!("masters: {other:?}")),
        },
    )
    .await;
    for pod in pods
        .iter()
        .filter(|p| p.name != promoted && p.name != "cache-0")
    {
        await_replica_of(&pod.server, &promoted_pod.server).await;
    }
}

#[tokio::test]
async fn a_master_a_dead_leader_promoted_but_never_published_is_kept() {
    let (kube, mut pods, mut controllers, epoch) = cluster(3, &["a", "b"]).await;
    // The state a leader leaves that died between REPLICAOF NO ONE and the annotation write:
    // the master gone, a replica promoted, nothing published. Made by hand while no
    // controller acts.
    for c in &mut controllers {
        c.kill();
    }
    pods[0].server.kill();
    let mut c = pods[2].server.conn().await.expect("connect");
    assert!(
        c.cmd(&["REPLICAOF", "NO", "ONE"])
            .await
            .expect("promote")
            .is_ok()
    );
    let fresh = Controller::start(&kube, "c").await;
    let new_epoch = await_published(&kube, PAIR, &pods[2].endpoint(), epoch).await;
    assert_eq!(new_epoch, epoch + 1);
    await_replica_of(&pods[1].server, &pods[2].server).await;
    assert_eq!(masters(&pods).await, ["cache-2"]);
    assert!(fresh.is_leader().await);
}

#[tokio::test]
async fn an_api_server_outage_of_30s_keeps_traffic_flowing_and_failover_works_after_it() {
    let (kube, mut pods, _controllers, epoch) = cluster(2, &["a", "b"]).await;
    let sidecar = sidecar(&kube).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;

    kube.refuse_connections_for(Duration::from_secs(30)).await;
    let mut n = 0u64;
    always(
        "writes through the sidecar go on while the API server is down",
        Duration::from_secs(28),
        async || {
            n += 1;
            set_through(&sidecar, &format!("during-{n}"), "x").await
        },
    )
    .await;

    // After the outage the watches and the lease are back: a failover works.
    eventually(
        "the sidecar ready again",
        SETTLE_DEADLINE,
        async || match sidecar.readyz().await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    pods[0].server.kill();
    let new_epoch = await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    eventually(
        "writes through the sidecar reach the new master",
        SETTLE_DEADLINE,
        async || set_through(&sidecar, "after-outage", "y").await,
    )
    .await;
    assert_eq!(
        pods[1].server.get("after-outage").await,
        Ok(Some("y".into()))
    );
    await_kubectl_shows(&kube, "cache-1", new_epoch, "Degraded").await;
}

#[tokio::test]
async fn switchover_annotation_under_concurrent_writes_loses_no_acknowledged_write() {
    let (kube, pods, _controllers, epoch) = cluster(2, &["a", "b"]).await;
    let sidecar = sidecar(&kube).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    let writers = Writers::start(sidecar.proxy_addr(), "w", 4);
    await_keys(&pods[0].server, 200).await;

    kubectl(
        &kube,
        &[
            "annotate",
            "rpair",
            PAIR,
            &format!("{SWITCHOVER_ANNOTATION}=cache-1"),
        ],
    )
    .await
    .expect("kubectl annotate");
    let new_epoch = await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    assert_eq!(new_epoch, epoch + 1);
    let keys_at_switch = pods[1].server.dbsize().await.expect("dbsize");
    await_keys(&pods[1].server, keys_at_switch + 200).await;
    let acked = writers.stop().await;
    assert_none_lost(&pods[1].server, &acked).await;

    eventually(
        "the request is answered and removed",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            let pair = kube.get_pair(PAIR).await;
            let pending = pair
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key(SWITCHOVER_ANNOTATION);
            if status["lastSwitchover"]["succeeded"] == true && !pending {
                Ok(())
            } else {
                Err(format!("pending {pending}, status {status}"))
            }
        },
    )
    .await;
    await_kubectl_shows(&kube, "cache-1", new_epoch, "Healthy").await;
    await_replica_of(&pods[0].server, &pods[1].server).await;
    let events = event_reasons(&kube, PAIR).await;
    assert!(
        events.contains(&"SwitchoverCompleted".to_owned()),
        "{events:?}"
    );

    // A request naming no member is refused, said so, and removed.
    kubectl(
        &kube,
        &[
            "annotate",
            "rpair",
            PAIR,
            &format!("{SWITCHOVER_ANNOTATION}=nosuchpod"),
        ],
    )
    .await
    .expect("kubectl annotate");
    eventually("the refusal is recorded", SETTLE_DEADLINE, async || {
        let status = pair_status(&kube, PAIR).await?;
        let message = status["lastSwitchover"]["message"].as_str().unwrap_or("");
        if status["lastSwitchover"]["succeeded"] == false && message.contains("nosuchpod") {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_eq!(published(&kube, PAIR).await.map(|p| p.1), Ok(new_epoch));
}

/// Failure 1 of issue 14: the switchover's publication is applied at once but answered only
/// after the controller's write timeout (5 s). Its outcome is unknown, not failed: the
/// controller reads it back and keeps the target, which the sidecars already route to. On
/// 82a375c it undid the switchover at the timeout and demoted the target: every write
/// acknowledged there was lost.
#[tokio::test]
async fn a_switchover_whose_publication_is_answered_after_the_timeout_loses_no_write() {
    let (kube, pods, _controllers, epoch) = cluster(2, &["a"]).await;
    let sidecar = sidecar(&kube).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;
    let writers = Writers::start(sidecar.proxy_addr(), "w", 4);
    await_keys(&pods[0].server, 200).await;

    // The publication is the one PATCH that names the epoch annotation as a JSON pointer.
    kube.server().hold_answers(Some((
        "PATCH",
        "redispair.io~1epoch",
        Duration::from_secs(7),
    )));
    kubectl(
        &kube,
        &[
            "annotate",
            "rpair",
            PAIR,
            &format!("{SWITCHOVER_ANNOTATION}=cache-1"),
        ],
    )
    .await
    .expect("kubectl annotate");
    let new_epoch = await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    assert_eq!(new_epoch, epoch + 1);
    // The controller gave up waiting for the answer (5 s) and decided: the request is
    // answered, whichever way.
    let outcome = eventually(
        "the switchover request is answered",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            match status["lastSwitchover"]["succeeded"].as_bool() {
                Some(succeeded) => Ok((succeeded, status["lastSwitchover"].clone())),
                None => Err(status.to_string()),
            }
        },
    )
    .await;
    kube.server().hold_answers(None);
    // Writes acknowledged by the target after that moment are kept too.
    let keys_now = pods[1].server.dbsize().await.expect("dbsize");
    await_keys(&pods[1].server, keys_now + 200).await;
    let acked = writers.stop().await;
    assert_none_lost(&pods[1].server, &acked).await;
    assert!(
        outcome.0,
        "the switchover was reported failed: {}",
        outcome.1
    );
    assert_eq!(
        published(&kube, PAIR).await,
        Ok((Some(pods[1].endpoint()), new_epoch))
    );
    await_replica_of(&pods[0].server, &pods[1].server).await;
    assert_eq!(masters(&pods).await, vec!["cache-1".to_owned()]);
}

/// The publication's identity (the master's run_id and replication ID) is persisted with it,
/// so a controller that takes over judges the master as the one before it did.
#[tokio::test]
async fn the_published_run_id_and_replid_survive_a_controller_restart() {
    let (kube, pods, mut controllers, epoch) = cluster(2, &["a"]).await;
    let info = pods[0].server.info("server").await.expect("INFO server");
    let run_id = info.get("run_id").cloned().expect("a run_id");
    let identity = async || {
        let annotations = kube
            .get_pair(PAIR)
            .await
            .metadata
            .annotations
            .unwrap_or_default();
        (
            annotations.get(MASTER_RUN_ID_ANNOTATION).cloned(),
            annotations.get(MASTER_REPLID_ANNOTATION).cloned(),
        )
    };
    // The replid is published once the master has a replica (Redis renames a master's
    // history when its first replica attaches; until then it is provisional).
    let before = eventually(
        "the master's history is published",
        SETTLE_DEADLINE,
        async || {
            let now = identity().await;
            match &now.1 {
                Some(replid) if !replid.is_empty() => Ok(now),
                _ => Err(format!("{now:?}")),
            }
        },
    )
    .await;
    assert_eq!(before.0.as_deref(), Some(run_id.as_str()));
    controllers[0].kill();
    let _next = Controller::start(&kube, "b").await;
    eventually(
        "the new leader shows the published run_id",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            if status["master"]["runId"] == run_id.as_str() {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    assert_eq!(identity().await, before);
    assert_eq!(published(&kube, PAIR).await.map(|p| p.1), Ok(epoch));
}

/// Failure 9 of issue 14: a master at `maxclients` refuses the controller's new connections
/// with "max number of clients reached". It is alive and keeps its clients: the status says
/// what it is (not a wrong password, as on 82a375c), and it is not failed over. The test holds
/// one connection and lowers `maxclients` to the connections open, as a client leak would.
#[tokio::test]
async fn a_master_at_maxclients_is_reported_as_such_and_kept() {
    let (kube, pods, _controllers, epoch) = cluster(2, &["a"]).await;
    let mut held = pods[0]
        .server
        .conn()
        .await
        .expect("a connection to the master");
    let info = held.cmd(&["INFO", "clients"]).await.expect("INFO clients");
    let connected = info
        .text()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .map(|n| n.trim().to_owned())
        .expect("connected_clients");
    let full = held
        .cmd(&["CONFIG", "SET", "maxclients", &connected])
        .await
        .expect("CONFIG SET maxclients");
    assert!(full.is_ok(), "{}", full.brief());

    let status = eventually("the status names maxclients", SETTLE_DEADLINE, async || {
        let status = pair_status(&kube, PAIR).await?;
        let message = status["message"].as_str().unwrap_or("");
        let available = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "MasterAvailable"))
            .cloned()
            .unwrap_or_default();
        if message.contains("maxclients") && available["reason"] == "MaxClients" {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await;
    let message = status["message"].as_str().unwrap_or("");
    assert!(message.contains("cache-0"), "{message}");
    assert!(!message.contains("password"), "{message}");
    // Alive, so never failed over: the same master under the same epoch.
    assert_eq!(
        published(&kube, PAIR).await,
        Ok((Some(pods[0].endpoint()), epoch))
    );

    let room = held
        .cmd(&["CONFIG", "SET", "maxclients", "10000"])
        .await
        .expect("CONFIG SET maxclients");
    assert!(room.is_ok(), "{}", room.brief());
    await_kubectl_shows(&kube, "cache-0", epoch, "Healthy").await;
}

#[tokio::test]
async fn a_stale_annotation_naming_a_replica_is_refused_by_sidecars_and_corrected() {
    let (kube, pods, _controllers, epoch) = cluster(2, &["a"]).await;
    let sidecar = sidecar(&kube).await;
    sidecar.await_ready(SETTLE_DEADLINE).await;

    // Someone writes the annotations by hand, naming the replica under a higher epoch.
    let stale = epoch + 10;
    kubectl(
        &kube,
        &[
            "annotate",
            "rpair",
            PAIR,
            "--overwrite",
            &format!("redispair.io/active={}", pods[1].endpoint()),
            &format!("redispair.io/epoch={stale}"),
        ],
    )
    .await
    .expect("kubectl annotate");
    // No write through the sidecar ever reaches the replica (it would answer READONLY), and
    // the controller publishes the real master above the stray epoch.
    let corrected = eventually("the controller corrects it", SETTLE_DEADLINE, async || {
        if let Err(error) = set_through(&sidecar, "probe", "1").await
            && error.contains("READONLY")
        {
            panic!("a write reached the replica: {error}");
        }
        match published(&kube, PAIR).await? {
            (Some(active), e) if active == pods[0].endpoint() && e > stale => Ok(e),
            other => Err(format!("published {other:?}")),
        }
    })
    .await;
    assert_eq!(corrected, stale + 1);
    eventually(
        "writes flow to the master again",
        SETTLE_DEADLINE,
        async || set_through(&sidecar, "after", "2").await,
    )
    .await;
    assert_eq!(pods[0].server.get("after").await, Ok(Some("2".into())));
    assert_eq!(role(&pods[1].server).await.as_deref(), Ok("slave"));
    let events = event_reasons(&kube, PAIR).await;
    assert!(
        events.contains(&"PublicationCorrected".to_owned()),
        "{events:?}"
    );
}

#[tokio::test]
async fn two_controllers_elect_one_leader_and_a_clean_shutdown_hands_over_at_once() {
    let (_kube, _pods, mut controllers, _epoch) = cluster(2, &["a", "b"]).await;
    let mut leaders = Vec::new();
    for c in &controllers {
        if c.is_leader().await {
            leaders.push(c.identity.clone());
        }
    }
    assert_eq!(leaders.len(), 1, "exactly one leads: {leaders:?}");
    let metrics = {
        let leader = controllers
            .iter()
            .find(|c| c.identity == leaders[0])
            .expect("the leader");
        leader.metrics().await.expect("metrics")
    };
    assert_eq!(
        support::metric(&metrics, "redispair_controller_leader"),
        Some(1.0)
    );

    let (mut leader, other): (Vec<Controller>, Vec<Controller>) = controllers
        .drain(..)
        .partition(|c| c.identity == leaders[0]);
    let started = Instant::now();
    assert_eq!(leader[0].terminate(Duration::from_secs(10)).await, 0);
    eventually("the other leads", Duration::from_secs(5), async || {
        if other[0].is_leader().await {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    // Released, not expired: well inside the 6 s lease duration.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_epoch_goes_on_from_the_annotation_after_every_controller_restarted() {
    let (kube, mut pods, mut controllers, epoch) = cluster(2, &["a"]).await;
    controllers[0].kill();
    let _next = Controller::start(&kube, "b").await;
    pods[0].server.kill();
    let new_epoch = await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    assert_eq!(new_epoch, epoch + 1, "continued, not restarted from 0");
}

#[tokio::test]
async fn invalid_redispairs_get_phase_invalid_a_condition_and_an_event_and_the_controller_goes_on()
{
    let kube = Kube::start().await;
    let pods = RedisPod::start_group(&kube, PAIR, 2).await;
    let lone = RedisPod::start_group(&kube, "lone", 1).await;
    let controller = Controller::start(&kube, "a").await;
    let mut no_pods = spec_selecting(&[("app", "nothing")]);
    no_pods.port = i32::from(pods[0].port());
    kube.create_pair("nopods", no_pods).await;
    let mut one_pod = spec_selecting(&[("app", "lone")]);
    one_pod.port = i32::from(lone[0].port());
    kube.create_pair("onepod", one_pod).await;
    let mut no_secret = spec_for(&pods);
    no_secret.auth_secret_ref =
        Some(serde_json::from_value(json!({"name": "redis-auth"})).expect("ref"));
    kube.create_pair("nosecret", no_secret.clone()).await;
    let mut overlapping = spec_selecting(&[("app", PAIR)]);
    overlapping.port = no_secret.port;
    kube.create_pair("overlap", overlapping).await;

    for (name, reason) in [
        ("nopods", "NoPods"),
        ("onepod", "OnePod"),
        ("nosecret", "SecretMissing"),
        ("overlap", "PodsOfAnotherPair"),
    ] {
        eventually(
            &format!("{name} is Invalid ({reason})"),
            SETTLE_DEADLINE,
            async || {
                let status = pair_status(&kube, name).await?;
                let valid = status["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Valid"))
                    .cloned()
                    .unwrap_or_default();
                if status["phase"] == "Invalid"
                    && valid["status"] == "False"
                    && valid["reason"] == reason
                {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            },
        )
        .await;
        let events = event_reasons(&kube, name).await;
        assert_eq!(events, ["Invalid"], "one Event for {name}");
        let row = kubectl_row(&kube, name).await.expect("kubectl get");
        assert_eq!(row.get("PHASE").map(String::as_str), Some("Invalid"));
    }
    assert!(
        published(&kube, "overlap").await.is_err(),
        "nothing published"
    );

    // An invalid pair waits for a change: while nothing changes it is not looked at again.
    let invalid_reconciles = async || {
        let metrics = controller.metrics().await?;
        support::metric(
            &metrics,
            "redispair_controller_reconciles_total{outcome=\"invalid\"}",
        )
        .ok_or_else(|| "no invalid reconciles counted".to_owned())
    };
    let settled = invalid_reconciles().await.expect("counted");
    always(
        "no retry storm",
        Duration::from_secs(2),
        async || match invalid_reconciles().await? {
            n if n <= settled + 1.0 => Ok(()),
            n => Err(format!(
                "{n} invalid reconciles, {settled} when they settled"
            )),
        },
    )
    .await;

    // Fixing it makes the pair work: the overlapping pair goes, the Secret comes.
    kube.delete_pair("overlap").await;
    let secrets: Api<Secret> = Api::namespaced(kube.client(), kube.namespace());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"}, "stringData": {"password": ""}
    }))
    .expect("a secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    // An empty password is no password: Redis here has none.
    await_published(&kube, "nosecret", &pods[0].endpoint(), 0).await;
    assert!(controller.is_leader().await, "still running and leading");
}

#[tokio::test]
async fn a_paused_pair_is_observed_and_reported_but_never_acted_on() {
    let (kube, mut pods, _controllers, _) = cluster(2, &["a"]).await;
    let (_, epoch) = published(&kube, PAIR).await.expect("published");
    kube.pairs()
        .patch(
            PAIR,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    eventually("Paused", SETTLE_DEADLINE, async || {
        match pair_status(&kube, PAIR).await?["phase"].as_str() {
            Some("Paused") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    pods[0].server.kill();
    always(
        "nothing is promoted or published",
        Duration::from_secs(3),
        async || {
            if role(&pods[1].server).await.as_deref() != Ok("slave") {
                return Err("the replica was promoted".into());
            }
            match published(&kube, PAIR).await? {
                (_, e) if e == epoch => Ok(()),
                other => Err(format!("published {other:?}")),
            }
        },
    )
    .await;
    // Reported, though: what it would do.
    eventually(
        "the status says what it would do",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            let message = status["message"].as_str().unwrap_or("");
            if message.contains(&format!("would promote {}", pods[1].endpoint())) {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    kube.pairs()
        .patch(
            PAIR,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .expect("unpause");
    await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
}

#[tokio::test]
async fn the_old_master_loses_its_master_label_before_anything_is_promoted() {
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{WatchStreamExt, watcher};
    use redis_pair::crd::ROLE_LABEL;

    let (kube, mut pods, _controllers, epoch) = cluster(2, &["a"]).await;
    eventually(
        "cache-0 labelled master",
        SETTLE_DEADLINE,
        async || match pods[0].role_label().await {
            Some(l) if l == "master" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // Record when the old master's pod loses the label, as a Service's endpoints would see it.
    let pod_api: Api<Pod> = Api::namespaced(kube.client(), kube.namespace());
    let (watching, watching_rx) = tokio::sync::oneshot::channel();
    let unlabelled = tokio::spawn(async move {
        let mut pods = std::pin::pin!(
            watcher(
                pod_api,
                watcher::Config::default().fields("metadata.name=cache-0")
            )
            .applied_objects()
        );
        let mut watching = Some(watching);
        while let Some(Ok(pod)) = pods.next().await {
            let label = pod
                .metadata
                .labels
                .unwrap_or_default()
                .get(ROLE_LABEL)
                .cloned();
            if label.as_deref() != Some("master") {
                return Instant::now();
            }
            if let Some(watching) = watching.take() {
                let _ = watching.send(());
            }
        }
        panic!("the pod watch ended");
    });
    // The watch must be listening before the API server slows down.
    watching_rx
        .await
        .expect("the pod watch saw cache-0 as master");
    // Every API answer takes 300 ms, so a promotion before the label is gone would show.
    kube.server().set_delay(Duration::from_millis(300));
    pods[0].server.kill();
    let promoted = eventually("cache-1 promoted", SETTLE_DEADLINE, async || {
        match role(&pods[1].server).await.as_deref() {
            Ok("master") => Ok(Instant::now()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    kube.server().set_delay(Duration::ZERO);
    let unlabelled = unlabelled.await.expect("the pod watch task");
    assert!(
        unlabelled < promoted,
        "cache-1 was promoted {:?} before cache-0 lost its master label",
        unlabelled - promoted
    );
    await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    eventually(
        "cache-1 labelled master",
        SETTLE_DEADLINE,
        async || match pods[1].role_label().await {
            Some(l) if l == "master" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

/// `min-replicas-to-write` of a server.
/// Waits until `server`'s `min-replicas-to-write` is `wanted`.
async fn await_fence(server: &RedisServer, wanted: &str) {
    let what = format!("{} with min-replicas-to-write {wanted}", server.addr());
    eventually(&what, SETTLE_DEADLINE, async || {
        match fence_of(server).await?.as_str() {
            now if now == wanted => Ok(()),
            other => Err(format!("min-replicas-to-write {other}")),
        }
    })
    .await;
}

async fn fence_of(server: &RedisServer) -> Result<String, String> {
    let mut c = server.conn().await.map_err(|e| e.to_string())?;
    let reply = c
        .cmd(&["CONFIG", "GET", "min-replicas-to-write"])
        .await
        .map_err(|e| e.to_string())?;
    reply
        .items()
        .and_then(|items| items.get(1).and_then(|v| v.text()))
        .ok_or_else(|| format!("CONFIG GET → {}", reply.brief()))
}

#[tokio::test]
async fn a_master_cut_off_from_its_replicas_and_the_controller_stops_acknowledging_writes() {
    use support::cluster::Partition;

    // Fencing is on by default: maxLagSeconds 2, downAfter 3 s.
    let (kube, pods, _controllers, epoch) = cluster(2, &["a"]).await;
    await_fence(&pods[0].server, "1").await;
    // A client on the master's side of the partition (its own address, left connected).
    let client_side = "127.0.0.250";
    let mut client = Conn::connect_from(client_side, &pods[0].endpoint())
        .await
        .expect("connect from the client side");
    assert!(
        client
            .cmd(&["SET", "before", "1"])
            .await
            .expect("SET")
            .is_ok()
    );

    // The master loses its replica and the controller (which reaches it from 127.0.0.1).
    let cut = Instant::now();
    let _partition = Partition::isolate(&pods[0].server, &[pods[1].ip(), "127.0.0.1"]);
    let mut n = 0u64;
    let refused_after = eventually(
        "the cut-off master refuses writes",
        Duration::from_secs(10),
        async || {
            n += 1;
            let reply = client
                .cmd(&["SET", &format!("during-{n}"), "x"])
                .await
                .map_err(|e| format!("SET: {e}"))?;
            match reply.brief() {
                brief if brief.contains("NOREPLICAS") => Ok(cut.elapsed()),
                brief => Err(brief),
            }
        },
    )
    .await;
    eprintln!("the cut-off master refused writes {refused_after:?} after the cut");
    // Redis counts a replica's lag in whole seconds and re-checks it once a second: within
    // maxLagSeconds + 2 s of the cut (the slack is this loop's, not Redis's).
    assert!(
        refused_after <= Duration::from_secs(2 + 2) + Duration::from_millis(250),
        "the master took writes for {refused_after:?} after the cut (maxLagSeconds 2)"
    );
    always(
        "and goes on refusing them",
        Duration::from_secs(1),
        async || {
            let reply = client
                .cmd(&["SET", "late", "x"])
                .await
                .map_err(|e| format!("SET: {e}"))?;
            if reply.is_ok() {
                Err("a write was acknowledged".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    // Meanwhile the controller, which cannot reach it, promotes the replica after downAfter:
    // only once the old master has stopped taking writes, so no write is acknowledged by both.
    let promoted = await_published(&kube, PAIR, &pods[1].endpoint(), epoch).await;
    assert_eq!(promoted, epoch + 1);
    let promoted_after = cut.elapsed();
    assert!(
        promoted_after > refused_after,
        "promoted {promoted_after:?} after the cut, while the old master still took writes \
         (until {refused_after:?})"
    );
    assert_eq!(
        fence_of(&pods[1].server).await.as_deref(),
        Ok("0"),
        "alone, unfenced"
    );
    drop(_partition);
    // Healed: the old master is demoted, and holds what the new one has.
    await_replica_of(&pods[0].server, &pods[1].server).await;
}

#[tokio::test]
async fn the_password_comes_from_the_secret_and_a_rotated_one_is_followed() {
    let kube = Kube::start().await;
    let port = std::sync::Arc::new(support::PortLease::take());
    let mut pods = Vec::new();
    for i in 0..2 {
        let server = RedisServer::builder()
            .host(&support::cluster::next_pod_ip())
            .group_port(&port)
            .requirepass("first")
            .masterauth("first")
            .start()
            .await;
        pods.push(RedisPod::adopt(&kube, &format!("cache-{i}"), PAIR, server).await);
    }
    let secrets: Api<Secret> = Api::namespaced(kube.client(), kube.namespace());
    let secret = |password: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "redis-auth"}, "stringData": {"password": password}
        }))
        .expect("a secret")
    };
    secrets
        .create(&PostParams::default(), &secret("first"))
        .await
        .expect("create the Secret");
    let mut spec = spec_for(&pods);
    spec.auth_secret_ref =
        Some(serde_json::from_value(json!({"name": "redis-auth"})).expect("ref"));
    kube.create_pair(PAIR, spec).await;
    let _controller = Controller::start(&kube, "a").await;
    let epoch = await_published(&kube, PAIR, &pods[0].endpoint(), 0).await;

    // A wrong password says so in the status.
    secrets
        .replace("redis-auth", &PostParams::default(), &secret("wrong"))
        .await
        .expect("replace the Secret");
    eventually(
        "the status names the rejected password",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            match status["message"].as_str() {
                Some(m) if m.contains("password") && m.contains("cache-0") => Ok(()),
                _ => Err(status.to_string()),
            }
        },
    )
    .await;

    // Rotated on the servers and in the Secret: the controller follows, and fails over with it.
    for pod in &pods {
        let mut c = pod.server.conn().await.expect("connect");
        for (param, value) in [("masterauth", "second"), ("requirepass", "second")] {
            assert!(
                c.cmd(&["CONFIG", "SET", param, value])
                    .await
                    .expect("CONFIG SET")
                    .is_ok()
            );
        }
    }
    secrets
        .replace("redis-auth", &PostParams::default(), &secret("second"))
        .await
        .expect("replace the Secret");
    eventually(
        "healthy with the new password",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            if status["phase"] == "Healthy" {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    let mut old_master = pods.remove(0);
    old_master.server.kill();
    await_published(&kube, PAIR, &pods[0].endpoint(), epoch).await;
}

/// Whether an allowed request is one a rule of a Role covers, for (group, resource, verb).
fn covers(
    granted: &test_apiserver::Granted,
    group: &str,
    resource: &str,
    verb: &str,
    names: &[String],
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    granted.group == group
        && granted.resource == resource
        && granted.subresource == subresource
        && granted.verb == verb
        && (names.is_empty() || names.contains(&granted.name))
}

#[tokio::test]
async fn every_rule_the_chart_grants_the_controller_is_one_it_needs() {
    use support::cluster::{CONTROLLER_ACCOUNT, rendered_chart};

    // A pair with a Secret, published, labelled, with an Event and a status: every call the
    // controller makes in the life of a pair.
    let kube = Kube::start().await;
    let pods = RedisPod::start_group(&kube, PAIR, 2).await;
    let secrets: Api<Secret> = Api::namespaced(kube.client(), kube.namespace());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"}, "stringData": {"password": ""}
    }))
    .expect("a secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let mut spec = spec_for(&pods);
    spec.auth_secret_ref =
        Some(serde_json::from_value(json!({"name": "redis-auth"})).expect("ref"));
    kube.create_pair(PAIR, spec).await;
    let _controller = Controller::start(&kube, "a").await;
    await_published(&kube, PAIR, &pods[0].endpoint(), 0).await;
    eventually(
        "Healthy, labelled, with an Event",
        SETTLE_DEADLINE,
        async || {
            let status = pair_status(&kube, PAIR).await?;
            let labelled = pods[1].role_label().await.as_deref() == Some("replica");
            let events = event_reasons(&kube, PAIR).await;
            if status["phase"] == "Healthy" && labelled && !events.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "labelled {labelled}, events {events:?}, status {status}"
                ))
            }
        },
    )
    .await;

    let user = format!(
        "system:serviceaccount:{}:{CONTROLLER_ACCOUNT}",
        kube.namespace()
    );
    let rules: Vec<serde_json::Value> = rendered_chart(kube.namespace(), &[])
        .into_iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 5, "the controller's rules: {rules:?}");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    // Renewing the Lease (its update) comes a second in: every rule must be used within the
    // deadline, or the chart grants something the controller does not need.
    eventually(
        "every rule of the chart used",
        SETTLE_DEADLINE,
        async || {
            let granted = kube.server().granted(&user);
            let mut unused = Vec::new();
            for rule in &rules {
                let names = strings(&rule["resourceNames"]);
                for group in strings(&rule["apiGroups"]) {
                    for resource in strings(&rule["resources"]) {
                        for verb in strings(&rule["verbs"]) {
                            if !granted
                                .iter()
                                .any(|g| covers(g, &group, &resource, &verb, &names))
                            {
                                unused.push(format!("{verb} {group}/{resource}"));
                            }
                        }
                    }
                }
            }
            if unused.is_empty() {
                Ok(())
            } else {
                Err(format!("never used: {unused:?}"))
            }
        },
    )
    .await;
}

/// Issue 14, failure 5: only the master's link to its replica is cut; the controller still
/// reaches both. The replica's `master_link_status` stays up for `repl-timeout` (60 s), but the
/// master's own view shows the replica's acknowledgements stop: the fence comes off within
/// maxLagSeconds and a probe, and the master takes writes again. No failover happens.
#[tokio::test]
async fn a_master_that_only_lost_its_replica_is_unfenced_by_its_own_view() {
    use support::cluster::Partition;

    // Fencing is on by default: maxLagSeconds 2, probeInterval 250 ms.
    let (kube, pods, _controllers, epoch) = cluster(2, &["a"]).await;
    await_fence(&pods[0].server, "1").await;
    let client_side = "127.0.0.250";
    let mut client = Conn::connect_from(client_side, &pods[0].endpoint())
        .await
        .expect("connect from the client side");

    // Only the replica loses the master: the controller (127.0.0.1) still reaches it.
    let cut = Instant::now();
    let _partition = Partition::isolate(&pods[0].server, &[pods[1].ip()]);
    // Redis refuses writes itself once the replica's acknowledgement is older than
    // maxLagSeconds; the controller then sees that in the master's INFO and unfences it. On
    // the replica's word (its link still "up" for 60 s) the fence would stay for a minute.
    let mut n = 0u64;
    eventually(
        "the master takes writes again, unfenced",
        Duration::from_secs(2 + 2 + 4),
        async || {
            n += 1;
            let reply = client
                .cmd(&["SET", &format!("after-cut-{n}"), "x"])
                .await
                .map_err(|e| format!("SET: {e}"))?;
            let fence = fence_of(&pods[0].server).await?;
            // Only once the cut has had time to show: before that the old fence still holds.
            if cut.elapsed() > Duration::from_secs(2) && reply.is_ok() && fence == "0" {
                Ok(())
            } else {
                Err(format!(
                    "SET → {}, min-replicas-to-write {fence}",
                    reply.brief()
                ))
            }
        },
    )
    .await;
    eprintln!("the master was unfenced {:?} after the cut", cut.elapsed());
    assert_eq!(
        published(&kube, PAIR).await,
        Ok((Some(pods[0].endpoint()), epoch)),
        "no failover: the controller reaches the master"
    );
    drop(_partition);
    // Healed: the replica catches up and the fence goes back on.
    await_fence(&pods[0].server, "1").await;
}
