//! Failover benchmark writer (issue 3, used by `bench/failover.sh`).
//!
//! Sends one acknowledged `SET <prefix><seq> <unix_ns>` every `--interval` (default 10 ms) and
//! logs every attempt with wall-clock timestamps, so the script can compute, against the time
//! it injected a fault, when writes flowed again and which acknowledged writes were lost.
//!
//! Two ways to find the master:
//! * `--addr HOST:PORT`: a fixed address (a proxy such as `redis-pair local`, or a server);
//! * `--sentinel HOST:PORT[,HOST:PORT...] --master-name NAME`: on every (re)connect ask the
//!   Sentinels in turn `SENTINEL get-master-addr-by-name NAME`, connect there and check `ROLE`
//!   is `master` (what the Sentinel client guidelines ask of a client).
//!
//! On any error or timeout the connection is dropped and the next tick reconnects. Attempts are
//! never retried: every attempt has its own sequence number, and only acknowledged ones count.
//!
//! Log lines (one per event, flushed at once; times are unix nanoseconds):
//! ```text
//! start <t>
//! conn <t> <addr>            connected (sentinel mode: to the master Sentinel named)
//! ack <seq> <t_sent> <t_ack>
//! err <seq> <t> <message>    the attempt failed or timed out (not acknowledged)
//! cerr <t> <message>         could not connect
//! stop <t> <acked> <failed>
//! ```
//! Runs until `--duration` elapses or it gets SIGTERM/SIGINT.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::time::{MissedTickBehavior, timeout};

struct Args {
    addr: Option<String>,
    sentinels: Vec<String>,
    master_name: String,
    prefix: String,
    interval: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    duration: Duration,
    log: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: failover_writer (--addr HOST:PORT | --sentinel HOST:PORT[,..] --master-name NAME)\n\
         \t[--prefix fo:] [--interval-ms 10] [--connect-timeout-ms 200]\n\
         \t[--response-timeout-ms 300] [--duration-s 60] [--log FILE]"
    );
    std::process::exit(64)
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: None,
        sentinels: Vec::new(),
        master_name: "mymaster".into(),
        prefix: "fo:".into(),
        interval: Duration::from_millis(10),
        connect_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_millis(300),
        duration: Duration::from_secs(60),
        log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        let ms = |s: String| Duration::from_millis(s.parse().unwrap_or_else(|_| usage()));
        match flag.as_str() {
            "--addr" => a.addr = Some(val()),
            "--sentinel" => a.sentinels = val().split(',').map(str::to_owned).collect(),
            "--master-name" => a.master_name = val(),
            "--prefix" => a.prefix = val(),
            "--interval-ms" => a.interval = ms(val()),
            "--connect-timeout-ms" => a.connect_timeout = ms(val()),
            "--response-timeout-ms" => a.response_timeout = ms(val()),
            "--duration-s" => {
                a.duration = Duration::from_secs(val().parse().unwrap_or_else(|_| usage()))
            }
            "--log" => a.log = Some(val()),
            _ => usage(),
        }
    }
    if a.addr.is_none() == a.sentinels.is_empty() {
        usage()
    }
    a
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

async fn connect(addr: &str, a: &Args) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(format!("redis://{addr}/")).map_err(one_line)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(a.connect_timeout))
        .set_response_timeout(Some(a.response_timeout));
    // The crate applies the connection timeout to the TCP connect and handshake; wrap the whole
    // thing as well so a proxy that accepts but never answers cannot stall us.
    match timeout(
        a.connect_timeout + a.response_timeout,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    {
        Ok(r) => r.map_err(one_line),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Sentinel discovery: first Sentinel that answers names the master; verify with ROLE.
async fn connect_via_sentinel(a: &Args) -> Result<(MultiplexedConnection, String), String> {
    let mut last = String::from("no sentinel answered");
    for s in &a.sentinels {
        let mut sc = match connect(s, a).await {
            Ok(c) => c,
            Err(e) => {
                last = format!("sentinel {s}: {e}");
                continue;
            }
        };
        let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&a.master_name)
            .query_async(&mut sc)
            .await;
        let (host, port) = match r {
            Ok(Some(hp)) => hp,
            Ok(None) => {
                last = format!("sentinel {s}: master unknown");
                continue;
            }
            Err(e) => {
                last = format!("sentinel {s}: {}", one_line(e));
                continue;
            }
        };
        let addr = format!("{host}:{port}");
        let mut c = connect(&addr, a)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(&mut c)
            .await
            .map_err(|e| format!("{addr} ROLE: {}", one_line(e)))?;
        let is_master = match &role {
            redis::Value::Array(v) => matches!(v.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"),
            _ => false,
        };
        if !is_master {
            return Err(format!("{addr}: ROLE is not master"));
        }
        return Ok((c, addr));
    }
    Err(last)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let a = parse_args();
    let mut out: Box<dyn Write> = match &a.log {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout()),
    };
    let mut log = |line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = tokio::time::sleep(a.duration);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(a.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    log(format!("start {}", now_ns()));
    let mut conn: Option<MultiplexedConnection> = None;
    let (mut seq, mut acked, mut failed) = (0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            let r = match &a.addr {
                Some(addr) => connect(addr, &a).await.map(|c| (c, addr.clone())),
                None => connect_via_sentinel(&a).await,
            };
            match r {
                Ok((c, addr)) => {
                    log(format!("conn {} {addr}", now_ns()));
                    conn = Some(c);
                }
                Err(e) => {
                    log(format!("cerr {} {e}", now_ns()));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        seq += 1;
        let sent = now_ns();
        let r: Result<redis::RedisResult<()>, _> = timeout(
            a.response_timeout,
            redis::cmd("SET")
                .arg(format!("{}{seq}", a.prefix))
                .arg(sent.to_string())
                .query_async(c),
        )
        .await;
        match r {
            Ok(Ok(())) => {
                acked += 1;
                log(format!("ack {seq} {sent} {}", now_ns()));
            }
            Ok(Err(e)) => {
                failed += 1;
                log(format!("err {seq} {} {}", now_ns(), one_line(e)));
                conn = None;
            }
            Err(_) => {
                failed += 1;
                log(format!("err {seq} {} response timed out", now_ns()));
                conn = None;
            }
        }
    }
    log(format!("stop {} {acked} {failed}", now_ns()));
    Ok(())
}
