//! Every Redis command the engine sends, through redis-rs: the probe that observes a server
//! and the actions that change the topology. Each call opens its own short-lived connection
//! under one deadline, so a probe always reflects the server as it is now (a restarted process
//! is a new connection, a hung one a timeout) and no stale connection state is carried.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
};

use super::model::{Endpoint, FailureKind, MinReplicas, RedisInfo, ReplicaLink, Role};

/// Credentials for the engine's own connections.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A failed Redis call, classified the way the decision needs it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind_text}: {detail}", kind_text = self.kind.as_str())]
pub struct RedisCallError {
    pub kind: FailureKind,
    pub detail: String,
}

impl RedisCallError {
    fn timeout(deadline: Duration) -> Self {
        Self {
            kind: FailureKind::Timeout,
            detail: format!("no answer within {}", humantime::format_duration(deadline)),
        }
    }

    fn from_redis(err: &redis::RedisError) -> Self {
        Self {
            kind: classify(err),
            detail: err.to_string(),
        }
    }
}

/// How a Redis call failed, the way the decision needs it: refused (the process is gone),
/// timed out, credentials rejected, or anything else.
pub fn classify(err: &redis::RedisError) -> FailureKind {
    // Redis answers a connection over `maxclients` with this error and closes it; whatever
    // command we sent first (AUTH included) fails with it. It is the server's wire text, the
    // only place this is said.
    if err.to_string().contains("max number of clients reached") {
        FailureKind::MaxClients
    } else if err.is_connection_refusal() || err.is_connection_dropped() {
        FailureKind::Refused
    } else if err.is_timeout() {
        FailureKind::Timeout
    } else if err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    {
        FailureKind::AuthFailed
    } else {
        FailureKind::Error
    }
}

/// The environment variable holding the password of redis-pair's own Redis connections when
/// no file is given.
pub const PASSWORD_ENV: &str = "REDISPAIR_PASSWORD";

/// The password of redis-pair's own connections: the file's first line (a file made from a
/// Secret may end in a line break), else `REDISPAIR_PASSWORD`; empty is none.
pub fn read_password(file: Option<&std::path::Path>) -> std::io::Result<Option<String>> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim_end_matches(['\r', '\n']).to_owned())),
        None => Ok(std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty())),
    }
}

/// Opens connections to group members with the engine's credentials and deadline.
#[derive(Clone, Debug)]
pub struct Connector {
    credentials: Credentials,
    deadline: Duration,
}

/// What a probe learns beyond [`RedisInfo`]: things only a human can fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub info: RedisInfo,
    pub warnings: Vec<String>,
}

impl Connector {
    pub fn new(credentials: Credentials, deadline: Duration) -> Self {
        Self {
            credentials,
            deadline,
        }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub fn client(&self, endpoint: &Endpoint) -> Result<Client, RedisCallError> {
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = &self.credentials.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.credentials.password {
            settings = settings.set_password(password);
        }
        let info: ConnectionInfo = (endpoint.host().to_owned(), endpoint.port())
            .into_connection_info()
            .map_err(|e| RedisCallError::from_redis(&e))?
            .set_redis_settings(settings);
        Client::open(info).map_err(|e| RedisCallError::from_redis(&e))
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<MultiplexedConnection, RedisCallError> {
        let client = self.client(endpoint)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.deadline))
            .set_response_timeout(Some(self.deadline));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| RedisCallError::from_redis(&e))
    }

    /// Runs `call` on a fresh connection, the whole thing (connect included) under the deadline.
    async fn with_connection<T, F>(&self, endpoint: &Endpoint, call: F) -> Result<T, RedisCallError>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    {
        let work = async {
            let mut conn = self.connect(endpoint).await?;
            call(&mut conn)
                .await
                .map_err(|e| RedisCallError::from_redis(&e))
        };
        tokio::time::timeout(self.deadline, work)
            .await
            .unwrap_or_else(|_| Err(RedisCallError::timeout(self.deadline)))
    }

    /// Reads role, offsets, run_id, priority and key counts, in one round trip. On replicas it
    /// also checks that `masterauth` matches our password, since a replica that cannot
    /// authenticate to its master silently stops replicating; with `read_fence` it reads the
    /// write fence (`min-replicas-*`) too.
    pub async fn probe(
        &self,
        endpoint: &Endpoint,
        known: &(dyn Fn(&str, u16) -> Option<Endpoint> + Sync),
        read_fence: bool,
    ) -> Result<Observation, RedisCallError> {
        match self.observe(endpoint, known, read_fence).await {
            // A server at maxclients writes its error and closes at once; a client that sent
            // AUTH first sees only the broken pipe. Ask the server's greeting.
            Err(error) if error.kind == FailureKind::Refused && self.says_full(endpoint).await => {
                Err(RedisCallError {
                    kind: FailureKind::MaxClients,
                    detail: format!("max number of clients reached ({})", error.detail),
                })
            }
            result => result,
        }
    }

    /// Whether the server greets a new connection with "max number of clients reached"
    /// (Redis sends it unasked and closes). Only asked after a probe lost its connection.
    async fn says_full(&self, endpoint: &Endpoint) -> bool {
        use tokio::io::AsyncReadExt;
        let greeting = async {
            let mut stream =
                tokio::net::TcpStream::connect((endpoint.host(), endpoint.port())).await?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).await?;
            Ok::<_, std::io::Error>(buf[..n].starts_with(b"-ERR max number of clients"))
        };
        matches!(
            tokio::time::timeout(self.deadline.min(Duration::from_millis(300)), greeting).await,
            Ok(Ok(true))
        )
    }

    async fn observe(
        &self,
        endpoint: &Endpoint,
        known: &(dyn Fn(&str, u16) -> Option<Endpoint> + Sync),
        read_fence: bool,
    ) -> Result<Observation, RedisCallError> {
        let check_masterauth = self.credentials.password.is_some();
        let (text, fence, masterauth) = self
            .with_connection(endpoint, async |conn| {
                let mut pipe = redis::pipe();
                // CONFIG may be renamed or forbidden by ACL: then we cannot check, and say
                // nothing rather than guess; only INFO must succeed.
                pipe.ignore_errors();
                pipe.cmd("INFO")
                    .arg("server")
                    .arg("replication")
                    .arg("keyspace");
                if read_fence {
                    pipe.cmd("CONFIG").arg("GET").arg("min-replicas-*");
                }
                if check_masterauth {
                    pipe.cmd("CONFIG").arg("GET").arg("masterauth");
                }
                let mut replies = pipe
                    .query_async::<Vec<redis::RedisResult<redis::Value>>>(conn)
                    .await?
                    .into_iter();
                let text: String = match replies.next() {
                    Some(reply) => redis::FromRedisValue::from_redis_value(reply?)?,
                    None => String::new(),
                };
                let mut config = |wanted: bool| -> Option<HashMap<String, String>> {
                    if !wanted {
                        return None;
                    }
                    let reply = replies.next()?.ok()?;
                    redis::FromRedisValue::from_redis_value(reply).ok()
                };
                let fence = config(read_fence);
                let masterauth = config(check_masterauth).and_then(|mut m| m.remove("masterauth"));
                Ok((text, fence, masterauth))
            })
            .await?;
        let mut info = parse_info(&text, known).map_err(|detail| RedisCallError {
            kind: FailureKind::Error,
            detail,
        })?;
        let mut warnings = Vec::new();
        if read_fence {
            info.min_replicas = fence.as_ref().and_then(parse_min_replicas);
            if info.min_replicas.is_none() {
                warnings.push(
                    "cannot read min-replicas-to-write (CONFIG GET refused?): write fencing \
                     cannot be managed on this server; allow CONFIG for redis-pair's user"
                        .to_owned(),
                );
            }
        }
        let masterauth = masterauth.filter(|_| info.role == Role::Replica);
        if let Some(masterauth) = masterauth
            && Some(masterauth.as_str()) != self.credentials.password.as_deref()
        {
            warnings.push(if masterauth.is_empty() {
                "masterauth is not set: this replica cannot authenticate to a master that \
                 requires a password; set masterauth in its redis.conf"
                    .to_owned()
            } else {
                "masterauth differs from the password redis-pair uses: this replica may fail \
                 to authenticate to its master; make masterauth match requirepass"
                    .to_owned()
            });
        }
        if let Some(master) = info.master.as_ref().filter(|_| !info.link_up) {
            warnings.push(format!("replication link to {master} is down"));
        }
        Ok(Observation { info, warnings })
    }

    /// Sets the write fence: `min-replicas-max-lag` first, so a fence that is switched on
    /// never holds for a moment with the wrong lag.
    pub async fn set_fence(
        &self,
        endpoint: &Endpoint,
        fence: MinReplicas,
    ) -> Result<(), RedisCallError> {
        self.with_connection(endpoint, async |conn| {
            redis::pipe()
                .cmd("CONFIG")
                .arg("SET")
                .arg("min-replicas-max-lag")
                .arg(fence.max_lag_secs)
                .ignore()
                .cmd("CONFIG")
                .arg("SET")
                .arg("min-replicas-to-write")
                .arg(fence.to_write)
                .ignore()
                .query_async::<()>(conn)
                .await
        })
        .await
    }

    /// Sends one command whose reply is a plain `+OK`.
    async fn command(
        &self,
        endpoint: &Endpoint,
        command: &redis::Cmd,
    ) -> Result<(), RedisCallError> {
        self.with_connection(endpoint, async |conn| command.query_async::<()>(conn).await)
            .await
    }

    /// `REPLICAOF NO ONE`: the server stops replicating and accepts writes.
    pub async fn promote(&self, endpoint: &Endpoint) -> Result<(), RedisCallError> {
        self.command(endpoint, redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
            .await
    }

    /// `REPLICAOF host port`: the server becomes a replica of `master`.
    pub async fn replicate(
        &self,
        endpoint: &Endpoint,
        master: &Endpoint,
    ) -> Result<(), RedisCallError> {
        self.command(
            endpoint,
            redis::cmd("REPLICAOF")
                .arg(master.host())
                .arg(master.port()),
        )
        .await
    }

    /// `CLIENT PAUSE ms WRITE` (Redis 6.2+): writes block, reads go on. The pause expires by
    /// itself after `for_at_most`, so a crash of ours cannot leave the master paused.
    pub async fn pause_writes(
        &self,
        endpoint: &Endpoint,
        for_at_most: Duration,
    ) -> Result<(), RedisCallError> {
        let millis = u64::try_from(for_at_most.as_millis()).unwrap_or(u64::MAX);
        self.command(
            endpoint,
            redis::cmd("CLIENT").arg("PAUSE").arg(millis).arg("WRITE"),
        )
        .await
    }

    pub async fn unpause(&self, endpoint: &Endpoint) -> Result<(), RedisCallError> {
        self.command(endpoint, redis::cmd("CLIENT").arg("UNPAUSE"))
            .await
    }

    /// The replication offset alone: `master_repl_offset` of a master, `slave_repl_offset`
    /// of a replica. Used while waiting for a switchover target to catch up.
    pub async fn offset(&self, endpoint: &Endpoint) -> Result<u64, RedisCallError> {
        let text: String = self
            .with_connection(endpoint, async |conn| {
                // `server` too: it carries the run_id that parse_info insists on.
                redis::cmd("INFO")
                    .arg("server")
                    .arg("replication")
                    .query_async(conn)
                    .await
            })
            .await?;
        let info = parse_info(&text, &|_, _| None).map_err(|detail| RedisCallError {
            kind: FailureKind::Error,
            detail,
        })?;
        Ok(info.offset)
    }

    /// Opens the connection a watcher holds on: a RESP2 pub/sub subscription that Redis never
    /// times out, whose end tells us at once that the process died.
    pub async fn subscribe(
        &self,
        endpoint: &Endpoint,
        channel: &str,
    ) -> Result<redis::aio::PubSub, RedisCallError> {
        let client = self.client(endpoint)?;
        let work = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.deadline, work).await {
            Ok(result) => result.map_err(|e| RedisCallError::from_redis(&e)),
            Err(_) => Err(RedisCallError::timeout(self.deadline)),
        }
    }
}

/// Parses the text of `INFO server replication keyspace`.
///
/// `known` maps a replica's `master_host`/`master_port` to the group member it names, so that
/// a replica configured with another spelling of the same address still counts as replicating
/// from that member.
pub fn parse_info(
    text: &str,
    known: &dyn Fn(&str, u16) -> Option<Endpoint>,
) -> Result<RedisInfo, String> {
    let mut fields = HashMap::new();
    let mut keys = 0u64;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.starts_with("db") && name[2..].bytes().all(|b| b.is_ascii_digit()) {
            // db0:keys=1,expires=0,avg_ttl=0
            keys += value
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        } else {
            fields.insert(name, value);
        }
    }
    let field = |name: &str| fields.get(name).copied();
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
    let role = match field("role") {
        Some("master") => Role::Master,
        Some("slave") | Some("replica") => Role::Replica,
        other => return Err(format!("INFO has an unknown role {other:?}")),
    };
    let run_id = field("run_id").ok_or("INFO has no run_id")?.to_owned();
    let replid = field("master_replid").unwrap_or_default().to_owned();
    let replid2 = field("master_replid2")
        .filter(|id| !id.is_empty() && id.bytes().any(|b| b != b'0'))
        .map(str::to_owned);
    let sync_in_progress = role == Role::Replica && number("master_sync_in_progress") == Some(1);
    let replicas = match role {
        Role::Master => fields
            .iter()
            .filter(|(name, _)| {
                name.strip_prefix("slave")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter_map(|(_, value)| parse_replica_link(value, known))
            .collect::<Vec<_>>(),
        Role::Replica => Vec::new(),
    };
    let mut replicas = replicas;
    // INFO's order, not the map's: the decision must not depend on hashing.
    replicas.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    let (master, link_up, synced, offset) = match role {
        Role::Master => (None, false, true, number("master_repl_offset").unwrap_or(0)),
        Role::Replica => {
            let master = match (field("master_host"), number("master_port")) {
                (Some(host), Some(port)) => u16::try_from(port).ok().and_then(|p| known(host, p)),
                _ => None,
            };
            let link_up = field("master_link_status") == Some("up");
            // -1 (not a number here) until the first sync since start-up completes.
            let synced = link_up || number("master_link_down_since_seconds").is_some();
            (
                master,
                link_up,
                synced,
                number("slave_repl_offset")
                    .or_else(|| number("master_repl_offset"))
                    .unwrap_or(0),
            )
        }
    };
    let priority = number("slave_priority")
        .or_else(|| number("replica_priority"))
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(100);
    Ok(RedisInfo {
        role,
        run_id,
        master,
        link_up,
        synced,
        offset,
        priority,
        keys,
        min_replicas: None,
        replid,
        replid2,
        sync_in_progress,
        replicas,
    })
}

/// One `slaveN:ip=10.0.0.2,port=6379,state=online,offset=4242,lag=0` value of a master's
/// INFO, if it names a member.
fn parse_replica_link(
    value: &str,
    known: &dyn Fn(&str, u16) -> Option<Endpoint>,
) -> Option<ReplicaLink> {
    let part = |key: &str| {
        value
            .split(',')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let port = part("port")?.parse::<u16>().ok()?;
    let endpoint = known(part("ip")?, port)?;
    Some(ReplicaLink {
        endpoint,
        online: part("state") == Some("online"),
        offset: part("offset").and_then(|v| v.parse().ok()).unwrap_or(0),
        // Unknown lag counts as "not acknowledging", never as in sync.
        lag_secs: part("lag").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX),
    })
}

/// The reply of `CONFIG GET min-replicas-*`.
fn parse_min_replicas(config: &HashMap<String, String>) -> Option<MinReplicas> {
    let number = |name: &str| config.get(name).and_then(|v| v.parse::<u32>().ok());
    Some(MinReplicas {
        to_write: number("min-replicas-to-write")?,
        max_lag_secs: number("min-replicas-max-lag")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA_INFO: &str = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:7002\r\n\r\n\
        # Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7001\r\n\
        master_link_status:up\r\nslave_read_repl_offset:4242\r\nslave_repl_offset:4242\r\n\
        slave_priority:10\r\nslave_read_only:1\r\nmaster_repl_offset:4242\r\n\
        master_replid:r1\r\nmaster_replid2:0000000000000000000000000000000000000000\r\n\r\n\
        # Keyspace\r\ndb0:keys=7,expires=0,avg_ttl=0\r\ndb3:keys=5,expires=1,avg_ttl=10\r\n";

    const MASTER_INFO: &str = "# Server\r\nrun_id:def456\r\n# Replication\r\nrole:master\r\n\
        connected_slaves:1\r\nslave0:ip=127.0.0.1,port=7002,state=online,offset=4242,lag=0\r\n\
        master_replid:m1\r\nmaster_replid2:m0\r\nmaster_repl_offset:5000\r\n# Keyspace\r\n";

    fn ours(host: &str, port: u16) -> Option<Endpoint> {
        (host == "127.0.0.1" && port == 7001).then(|| Endpoint::new("127.0.0.1", 7001))
    }

    #[test]
    fn replica_info_yields_master_link_offset_priority_and_keys() {
        let info = parse_info(REPLICA_INFO, &ours).expect("parses");
        assert_eq!(
            info,
            RedisInfo {
                role: Role::Replica,
                run_id: "abc123".into(),
                master: Some(Endpoint::new("127.0.0.1", 7001)),
                link_up: true,
                synced: true,
                offset: 4242,
                priority: 10,
                keys: 12,
                min_replicas: None,
                replid: "r1".into(),
                replid2: None,
                sync_in_progress: false,
                replicas: Vec::new(),
            }
        );
    }

    #[test]
    fn master_info_yields_its_own_view_of_the_replicas_it_knows() {
        let text = MASTER_INFO.replace(
            "connected_slaves:1\r\n",
            "connected_slaves:3\r\nslave1:ip=10.9.9.9,port=1,state=online,offset=1,lag=0\r\n\
             slave2:ip=127.0.0.1,port=7001,state=wait_bgsave,offset=0,lag=7\r\n",
        );
        let known =
            |host: &str, port: u16| (host == "127.0.0.1").then(|| Endpoint::new("127.0.0.1", port));
        let info = parse_info(&text, &known).expect("parses");
        assert_eq!(
            info.replicas,
            vec![
                ReplicaLink {
                    endpoint: Endpoint::new("127.0.0.1", 7001),
                    online: false,
                    offset: 0,
                    lag_secs: 7,
                },
                ReplicaLink {
                    endpoint: Endpoint::new("127.0.0.1", 7002),
                    online: true,
                    offset: 4242,
                    lag_secs: 0,
                },
            ],
            "only members are kept, sorted, with their state, offset and lag"
        );
        assert_eq!(info.replid, "m1");
        assert_eq!(info.replid2, Some("m0".to_owned()));
    }

    #[test]
    fn a_replica_in_a_full_sync_says_so() {
        let text = REPLICA_INFO.replace(
            "master_link_status:up",
            "master_link_status:down\r\nmaster_sync_in_progress:1",
        );
        assert!(parse_info(&text, &ours).expect("parses").sync_in_progress);
        assert!(
            !parse_info(REPLICA_INFO, &ours)
                .expect("parses")
                .sync_in_progress
        );
    }

    #[test]
    fn master_info_yields_its_own_offset_and_no_master() {
        let info = parse_info(MASTER_INFO, &ours).expect("parses");
        assert_eq!(info.role, Role::Master);
        assert_eq!(info.offset, 5000);
        assert_eq!(info.master, None);
        assert_eq!(info.keys, 0);
        assert_eq!(info.priority, 100);
    }

    #[test]
    fn replica_of_a_server_outside_the_group_has_no_known_master() {
        let text = REPLICA_INFO.replace("master_port:7001", "master_port:9999");
        assert_eq!(parse_info(&text, &ours).expect("parses").master, None);
    }

    #[test]
    fn replica_that_never_connected_is_not_synced_and_one_that_lost_its_link_is() {
        let never = REPLICA_INFO.replace(
            "master_link_status:up",
            "master_link_status:down\r\nmaster_link_down_since_seconds:-1",
        );
        assert!(!parse_info(&never, &ours).expect("parses").synced);
        let lost = REPLICA_INFO.replace(
            "master_link_status:up",
            "master_link_status:down\r\nmaster_link_down_since_seconds:3",
        );
        let info = parse_info(&lost, &ours).expect("parses");
        assert!(info.synced && !info.link_up);
    }

    #[test]
    fn info_without_role_or_run_id_is_an_error() {
        assert!(parse_info("# Server\r\nrun_id:x\r\n", &ours).is_err());
        assert!(parse_info("role:master\r\n", &ours).is_err());
    }
}
