//! What redis-pair measures, registered once under the `redispair_` prefix.
//!
//! Labels are bounded by construction: a server label takes only the addresses given at
//! start-up, a reason or command label only the values of a fixed enum, never error text.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::engine::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Command {
    Promote,
    Replicate,
    PauseWrites,
    Unpause,
    SetFence,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Success,
    Failure,
    Timeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: Command,
    pub outcome: Outcome,
}

/// The engine's view: failovers and every topology-changing command sent, and (for a single
/// group, as in local mode) the topology per server.
#[derive(Clone, Default)]
pub struct EngineMetrics {
    pub failovers: Family<ReasonLabel, Counter>,
    pub commands: Family<CommandLabels, Counter>,
    /// Times the engine began to hold back although something is wrong, by why (the
    /// `Waiting` kind: bounded).
    pub blocked: Family<ReasonLabel, Counter>,
    /// Per-server gauges: only where one engine runs, so the server label is bounded by the
    /// configured servers. The controller runs an engine per pair and leaves these out.
    pub group: Option<GroupMetrics>,
}

#[derive(Clone, Default)]
pub struct GroupMetrics {
    pub epoch: Gauge,
    /// 1 on the published master, 0 on every other server.
    pub master: Family<ServerLabel, Gauge>,
    pub server_up: Family<ServerLabel, Gauge>,
    pub server_is_master: Family<ServerLabel, Gauge>,
    pub server_offset: Family<ServerLabel, Gauge>,
    pub server_lag_bytes: Family<ServerLabel, Gauge>,
}

impl EngineMetrics {
    /// Registers the engine's metrics; `per_server` adds the per-server gauges.
    pub fn register(registry: &mut Registry, per_server: bool) -> Self {
        let engine = EngineMetrics {
            group: per_server.then(GroupMetrics::default),
            ..EngineMetrics::default()
        };
        registry.register(
            "failovers",
            "Changes of the published master, by reason",
            engine.failovers.clone(),
        );
        registry.register(
            "redis_commands",
            "Topology-changing Redis commands sent, by outcome",
            engine.commands.clone(),
        );
        registry.register(
            "engine_blocked",
            "Times the engine began holding back a failover or hand-over, by reason \
             (no-candidate, no-switchover-target, candidate-behind, publication-unknown)",
            engine.blocked.clone(),
        );
        if let Some(group) = &engine.group {
            registry.register(
                "epoch",
                "Fencing epoch of the published master",
                group.epoch.clone(),
            );
            registry.register("master", "1 for the published master", group.master.clone());
            registry.register(
                "server_up",
                "1 when the last probe of the server succeeded",
                group.server_up.clone(),
            );
            registry.register(
                "server_is_master",
                "1 when the server reports role master",
                group.server_is_master.clone(),
            );
            registry.register(
                "server_repl_offset",
                "Replication offset the server reports",
                group.server_offset.clone(),
            );
            registry.register(
                "server_lag_bytes",
                "Published master's offset minus the replica's",
                group.server_lag_bytes.clone(),
            );
        }
        for reason in Reason::ALL {
            // Present from the start, so a rate() over a first failover is not lost.
            drop(engine.failovers.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            }));
        }
        engine
    }
}

/// The proxy's data path. Counters are single atomics: no lock on the hot path.
#[derive(Clone, Default)]
pub struct ProxyMetrics {
    pub connections_open: Gauge,
    pub connections: Counter,
    pub bytes_client_to_server: Counter,
    pub bytes_server_to_client: Counter,
    pub upstream_connect_failures: Counter,
    /// Client connections closed because a newer epoch named another master.
    pub closed_by_failover: Counter,
    /// Client connections closed because no master was published within the wait.
    pub no_master_timeouts: Counter,
    /// Requests sent on a shared server connection.
    pub shared_requests: Counter,
    /// Shared server connections open now.
    pub shared_connections_open: Gauge,
    /// Client connections moved to a server connection of their own.
    pub pinned: Counter,
    /// Clients closed for not reading their replies (over --max-client-backlog-mib).
    pub closed_slow_clients: Counter,
    /// Request bytes read from shared-path clients, not yet written to the master.
    pub request_backlog_bytes: Gauge,
    /// Times a shared-path client stopped being read because requests waiting for the master
    /// were over --max-request-backlog-mib (its share, or the total).
    pub client_reads_paused: Counter,
}

impl ProxyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let proxy = ProxyMetrics::default();
        registry.register(
            "proxy_connections_open",
            "Client connections open now",
            proxy.connections_open.clone(),
        );
        registry.register(
            "proxy_connections",
            "Client connections accepted",
            proxy.connections.clone(),
        );
        registry.register(
            "proxy_client_to_server_bytes",
            "Bytes forwarded from clients to the master",
            proxy.bytes_client_to_server.clone(),
        );
        registry.register(
            "proxy_server_to_client_bytes",
            "Bytes forwarded from the master to clients",
            proxy.bytes_server_to_client.clone(),
        );
        registry.register(
            "proxy_upstream_connect_failures",
            "Failed connections to the published master",
            proxy.upstream_connect_failures.clone(),
        );
        registry.register(
            "proxy_closed_by_failover",
            "Client connections closed because the master changed or their server connection broke",
            proxy.closed_by_failover.clone(),
        );
        registry.register(
            "proxy_no_master_timeouts",
            "Client connections closed after waiting for a master",
            proxy.no_master_timeouts.clone(),
        );
        registry.register(
            "proxy_shared_requests",
            "Requests sent on a server connection shared by clients",
            proxy.shared_requests.clone(),
        );
        registry.register(
            "proxy_shared_connections_open",
            "Server connections shared by clients, open now",
            proxy.shared_connections_open.clone(),
        );
        registry.register(
            "proxy_pinned_connections",
            "Client connections given a server connection of their own",
            proxy.pinned.clone(),
        );
        registry.register(
            "proxy_closed_slow_clients",
            "Clients closed because more than --max-client-backlog-mib of replies waited for them",
            proxy.closed_slow_clients.clone(),
        );
        registry.register(
            "proxy_request_backlog_bytes",
            "Request bytes read from shared-path clients and not yet written to the master",
            proxy.request_backlog_bytes.clone(),
        );
        registry.register(
            "proxy_client_reads_paused",
            "Times a client stopped being read because requests waiting for the master were over \
             --max-request-backlog-mib",
            proxy.client_reads_paused.clone(),
        );
        proxy
    }
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Every metric prefixed `redispair_`.
pub fn registry() -> Registry {
    Registry::with_prefix("redispair")
}

/// An API write of the controller, for `redispair_controller_api_writes_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ApiWrite {
    /// The master and epoch annotations.
    Publish,
    /// The role label of a pod.
    Label,
    Status,
    Event,
    Lease,
    /// Removing a handled switchover request.
    SwitchoverAnnotation,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum WriteOutcome {
    Success,
    /// Refused because someone else wrote first (409, or a failed JSON-patch test).
    Conflict,
    Failure,
    Timeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiWriteLabels {
    pub kind: ApiWrite,
    pub outcome: WriteOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The controller's own view: leadership, reconciles, pairs by phase, every API write.
#[derive(Clone, Default)]
pub struct ControllerMetrics {
    pub leader: Gauge,
    pub reconciles: Family<OutcomeLabel, Counter>,
    pub pairs: Family<PhaseLabel, Gauge>,
    pub engines: Gauge,
    pub api_writes: Family<ApiWriteLabels, Counter>,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ControllerMetrics::default();
        registry.register(
            "controller_leader",
            "1 while this controller holds the lease and acts",
            metrics.leader.clone(),
        );
        registry.register(
            "controller_reconciles",
            "Reconciles of a RedisPair, by outcome (ok, invalid, error)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "controller_pairs",
            "RedisPairs this controller manages, by phase",
            metrics.pairs.clone(),
        );
        registry.register(
            "controller_engines",
            "Failover engines running (one per managed RedisPair)",
            metrics.engines.clone(),
        );
        registry.register(
            "controller_api_writes",
            "Writes to the Kubernetes API, by kind and outcome",
            metrics.api_writes.clone(),
        );
        for phase in ["Healthy", "Degraded", "NoMaster", "Paused", "Invalid"] {
            drop(metrics.pairs.get_or_create(&PhaseLabel { phase }));
        }
        metrics
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Counts the outcome of one API write.
    pub fn api_write<T>(&self, kind: ApiWrite, result: &Result<T, kube::Error>) {
        let outcome = match result {
            Ok(_) => WriteOutcome::Success,
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => {
                WriteOutcome::Conflict
            }
            Err(_) => WriteOutcome::Failure,
        };
        self.count_write(kind, outcome);
    }

    pub fn count_write(&self, kind: ApiWrite, outcome: WriteOutcome) {
        self.api_writes
            .get_or_create(&ApiWriteLabels { kind, outcome })
            .inc();
    }
}

/// A label value type for the sidecar: a fixed enum (so the label is bounded by construction)
/// written in snake_case, with `ALL` to create every series up front.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant,)+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values! {
    /// Why the sidecar's route changed.
    RouteChange {
        /// New connections go to a published master that answered ROLE `master`.
        Verified => "verified",
        /// A newer publication named another master (or the same one again): no new
        /// connections until it is verified.
        Superseded => "superseded",
        /// The newest publication names no master.
        NoMaster => "no_master",
        /// The routed master answered ROLE `slave`: no new connections to it.
        Replica => "replica",
    }
}

label_values! {
    /// What the sidecar made of the annotations of one RedisPair event.
    PublicationOutcome {
        /// A newer epoch (or the first): followed.
        Followed => "followed",
        /// The epoch it holds, naming the same master (a status update, say): nothing to do.
        Unchanged => "unchanged",
        /// A lower epoch than the one it holds: ignored.
        Stale => "stale",
        /// The epoch it holds, naming another master: ignored, the first one stands.
        Conflict => "conflict",
    }
}

label_values! {
    /// The answer of one ROLE check.
    RoleOutcome {
        Master => "master",
        Replica => "replica",
        Refused => "refused",
        Timeout => "timeout",
        AuthFailed => "auth_failed",
        /// The server refused a new connection: `maxclients` reached.
        MaxClients => "max_clients",
        Error => "error",
    }
}

label_values! {
    /// Why the watch of the RedisPair failed (it is resumed with backoff every time).
    WatchErrorKind {
        /// No answer from the API server: refused, reset, timed out.
        Unreachable => "unreachable",
        /// 401/403: the sidecar's service account may not get/list/watch redispairs.
        Forbidden => "forbidden",
        /// 404: the RedisPair CRD is not installed.
        NotFound => "not_found",
        /// 410: the resourceVersion it resumed from was compacted; it lists again.
        Gone => "gone",
        Other => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteChangeLabel {
    pub reason: RouteChange,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublicationLabel {
    pub outcome: PublicationOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleCheckLabel {
    pub outcome: RoleOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchErrorLabel {
    pub kind: WatchErrorKind,
}

/// The sidecar's own view, next to the proxy's metrics: what it follows and how its checks go.
/// Every label takes only the values of a fixed enum.
#[derive(Clone, Default)]
pub struct SidecarMetrics {
    /// The `redispair.io/epoch` it holds.
    pub cluster_epoch: Gauge,
    /// The route generation the proxy follows (rises on every route change).
    pub route_generation: Gauge,
    /// 1 while new connections go to a master that answered ROLE `master`.
    pub master_verified: Gauge,
    /// 1 while the watched RedisPair exists.
    pub pair_found: Gauge,
    pub route_changes: Family<RouteChangeLabel, Counter>,
    pub publications: Family<PublicationLabel, Counter>,
    pub role_checks: Family<RoleCheckLabel, Counter>,
    pub watch_errors: Family<WatchErrorLabel, Counter>,
    /// Times the annotations turned malformed (each distinct bad value once).
    pub annotation_errors: Counter,
}

impl SidecarMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let sidecar = SidecarMetrics::default();
        registry.register(
            "sidecar_cluster_epoch",
            "The redispair.io/epoch the sidecar follows",
            sidecar.cluster_epoch.clone(),
        );
        registry.register(
            "sidecar_route_generation",
            "Route generation the proxy follows; rises on every route change",
            sidecar.route_generation.clone(),
        );
        registry.register(
            "sidecar_master_verified",
            "1 while new connections go to a published master that answered ROLE master",
            sidecar.master_verified.clone(),
        );
        registry.register(
            "sidecar_pair_found",
            "1 while the watched RedisPair exists",
            sidecar.pair_found.clone(),
        );
        registry.register(
            "sidecar_route_changes",
            "Changes of where new connections go, by reason",
            sidecar.route_changes.clone(),
        );
        registry.register(
            "sidecar_publications",
            "RedisPair events seen, by what their annotations meant",
            sidecar.publications.clone(),
        );
        registry.register(
            "sidecar_role_checks",
            "ROLE checks of the published master, by outcome",
            sidecar.role_checks.clone(),
        );
        registry.register(
            "sidecar_watch_errors",
            "Failures of the RedisPair watch (resumed with backoff), by kind",
            sidecar.watch_errors.clone(),
        );
        registry.register(
            "sidecar_annotation_errors",
            "Times the redispair.io annotations turned malformed",
            sidecar.annotation_errors.clone(),
        );
        // Every series present from the start, so a rate() over the first event is not lost.
        for &reason in RouteChange::ALL {
            drop(
                sidecar
                    .route_changes
                    .get_or_create(&RouteChangeLabel { reason }),
            );
        }
        for &outcome in PublicationOutcome::ALL {
            drop(
                sidecar
                    .publications
                    .get_or_create(&PublicationLabel { outcome }),
            );
        }
        for &outcome in RoleOutcome::ALL {
            drop(
                sidecar
                    .role_checks
                    .get_or_create(&RoleCheckLabel { outcome }),
            );
        }
        for &kind in WatchErrorKind::ALL {
            drop(
                sidecar
                    .watch_errors
                    .get_or_create(&WatchErrorLabel { kind }),
            );
        }
        sidecar
    }
}
