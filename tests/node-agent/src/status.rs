//! The pod status as a kubelet writes it (pure): phase, IPs, the five conditions with stable
//! transition times, and one status per container (init and sidecar containers under
//! `initContainerStatuses`). Not `qosClass`: the API server sets it at creation and it is
//! immutable.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

impl State {
    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                json!({ "waiting": { "reason": reason, "message": message } })
            }
            State::Running { started_at } => {
                json!({ "running": { "startedAt": crate::time(*started_at) } })
            }
            State::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
            } => json!({
                "terminated": {
                    "exitCode": exit_code, "signal": signal, "reason": reason,
                    "startedAt": crate::time(*started_at), "finishedAt": crate::time(*finished_at),
                }
            }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub init: bool,
    pub state: State,
    pub last_state: Option<State>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: i32,
    pub pid: Option<u32>,
}

/// What the agent knows of a pod; [`PodView::render`] turns it into the status it writes.
#[derive(Clone, Debug)]
pub struct PodView {
    pub phase: Phase,
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    pub containers: Vec<ContainerView>,
    /// Condition type → (status, last transition).
    conditions: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl PodView {
    pub fn new(host_ip: Ipv4Addr, containers: Vec<ContainerView>) -> Self {
        Self {
            phase: Phase::Pending,
            pod_ip: None,
            host_ip,
            start_time: Timestamp::now(),
            containers,
            conditions: BTreeMap::new(),
        }
    }

    /// Sets the conditions from the containers' states, keeping transition times of those that
    /// did not change.
    pub fn settle(&mut self, now: Timestamp) {
        let sandbox =
            self.pod_ip.is_some() && matches!(self.phase, Phase::Pending | Phase::Running);
        let initialized = self
            .containers
            .iter()
            .filter(|c| c.init)
            .all(|c| c.started || matches!(c.state, State::Terminated { exit_code: 0, .. }));
        let running = matches!(self.phase, Phase::Running);
        let containers_ready = running
            && self
                .containers
                .iter()
                .all(|c| c.ready || (c.init && !c.started));
        for (kind, value) in [
            ("PodScheduled", true),
            ("PodReadyToStartContainers", sandbox),
            ("Initialized", initialized),
            ("ContainersReady", containers_ready),
            ("Ready", containers_ready),
        ] {
            let entry = self.conditions.entry(kind).or_insert((value, now));
            if entry.0 != value {
                *entry = (value, now);
            }
        }
    }

    pub fn render(&self) -> Value {
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(kind, (value, since))| {
                json!({
                    "type": kind,
                    "status": if *value { "True" } else { "False" },
                    "lastTransitionTime": crate::time(*since),
                    "lastProbeTime": null,
                })
            })
            .collect();
        let statuses = |init: bool| -> Vec<Value> {
            self.containers
                .iter()
                .filter(|c| c.init == init)
                .map(|c| {
                    json!({
                        "name": c.name,
                        "image": c.image,
                        "imageID": format!("node-agent://{}", c.image),
                        "containerID": c.pid.map(|p| format!("node-agent://{p}")),
                        "ready": c.ready,
                        "started": c.started,
                        "restartCount": c.restart_count,
                        "state": c.state.to_json(),
                        "lastState": c.last_state.as_ref().map(State::to_json).unwrap_or(json!({})),
                    })
                })
                .collect()
        };
        let ip = self.pod_ip.map(|ip| ip.to_string());
        json!({
            "status": {
                "phase": self.phase.as_str(),
                "hostIP": self.host_ip.to_string(),
                "hostIPs": [{ "ip": self.host_ip.to_string() }],
                "podIP": ip,
                "podIPs": ip.iter().map(|ip| json!({ "ip": ip })).collect::<Vec<_>>(),
                "startTime": crate::time(self.start_time),
                "conditions": conditions,
                "initContainerStatuses": statuses(true),
                "containerStatuses": statuses(false),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(init: bool, ready: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "redis".into(),
            init,
            state: State::Running {
                started_at: Timestamp::UNIX_EPOCH,
            },
            last_state: None,
            ready,
            started: true,
            restart_count: 0,
            pid: Some(7),
        }
    }

    #[test]
    fn ready_follows_every_container_and_keeps_its_transition_time() {
        let mut view = PodView::new(
            Ipv4Addr::new(10, 0, 0, 1),
            vec![container(true, true), container(false, false)],
        );
        view.pod_ip = Some(Ipv4Addr::new(10, 0, 0, 2));
        view.phase = Phase::Running;
        let t0 = Timestamp::from_second(100).unwrap();
        view.settle(t0);
        assert_eq!(view.conditions["Ready"], (false, t0));
        view.containers[1].ready = true;
        let t1 = Timestamp::from_second(200).unwrap();
        view.settle(t1);
        view.settle(Timestamp::from_second(300).unwrap());
        assert_eq!(view.conditions["Ready"], (true, t1));
        assert_eq!(view.conditions["PodScheduled"], (true, t0));
        let status = view.render();
        assert_eq!(status["status"]["podIP"], "10.0.0.2");
        assert_eq!(
            status["status"]["initContainerStatuses"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
