//! The sidecar's one Redis command: `ROLE`, asked of the published master before it gets
//! connections and every second after. It uses the sidecar's own credentials
//! (`--username`, `--password-file` or `REDISPAIR_PASSWORD`) and a fresh connection per check
//! under one deadline, as the engine's probes do, so an answer always reflects the process
//! that listens now. Client traffic never uses these credentials.

use std::time::Duration;

use redis::AsyncConnectionConfig;

use crate::engine::redis_io::Connector;
use crate::engine::{Endpoint, FailureKind, Role};
use crate::metrics::RoleOutcome;

use super::route::RoleAnswer;

/// Deadline of one ROLE check, connect and AUTH included.
pub const ROLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Asks `endpoint` for its role. `master` is the only answer that verifies; any other role
/// (`slave`, or anything a server at that address might be) is a replica for routing.
pub async fn check(connector: &Connector, endpoint: &Endpoint) -> RoleAnswer {
    let deadline = connector.deadline();
    let ask = async {
        let client = connector.client(endpoint).map_err(|e| e.kind)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(deadline))
            .set_response_timeout(Some(deadline));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| crate::engine::redis_io::classify(&e))?;
        let reply: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| crate::engine::redis_io::classify(&e))?;
        Ok(parse_role(&reply))
    };
    tokio::time::timeout(deadline, ask)
        .await
        .unwrap_or(Err(FailureKind::Timeout))
}

/// The first element of a `ROLE` reply: `master`, `slave` (or `replica`), `sentinel`.
fn parse_role(reply: &[redis::Value]) -> Role {
    let role = match reply.first() {
        Some(redis::Value::BulkString(bytes)) => bytes.as_slice(),
        Some(redis::Value::SimpleString(text)) => text.as_bytes(),
        _ => b"",
    };
    if role.eq_ignore_ascii_case(b"master") {
        Role::Master
    } else {
        Role::Replica
    }
}

/// The metric label of an answer.
pub fn outcome(answer: &RoleAnswer) -> RoleOutcome {
    match answer {
        Ok(Role::Master) => RoleOutcome::Master,
        Ok(Role::Replica) => RoleOutcome::Replica,
        Err(FailureKind::Refused) => RoleOutcome::Refused,
        Err(FailureKind::Timeout) => RoleOutcome::Timeout,
        Err(FailureKind::AuthFailed) => RoleOutcome::AuthFailed,
        Err(FailureKind::MaxClients) => RoleOutcome::MaxClients,
        Err(FailureKind::Error) => RoleOutcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn only_a_master_answer_is_a_master() {
        let master = [bulk("master"), Value::Int(0), Value::Array(vec![])];
        assert_eq!(parse_role(&master), Role::Master);
        let replica = [
            bulk("slave"),
            bulk("10.0.0.1"),
            Value::Int(6379),
            bulk("connected"),
            Value::Int(42),
        ];
        assert_eq!(parse_role(&replica), Role::Replica);
        assert_eq!(parse_role(&[bulk("sentinel")]), Role::Replica);
        assert_eq!(parse_role(&[]), Role::Replica);
        assert_eq!(parse_role(&[Value::Int(1)]), Role::Replica);
    }
}
