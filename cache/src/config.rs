//! `[cache]` in depot.toml.

use std::time::Duration;

use depot_common::config::{duration, size_usize};
use serde::Deserialize;

use crate::bstar::Role;

/// Endpoints and limits of the cache. An empty `snapshot` switches the cache off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// ROUTER answering snapshot requests (CHP port P).
    pub snapshot: String,
    /// PUB of updates and HUGZ (P+1).
    pub publisher: String,
    /// SUB collecting peers' KVSETs (P+2).
    pub collector: String,
    /// Largest value accepted; larger updates are counted and dropped.
    #[serde(deserialize_with = "size_usize")]
    pub max_value_size: usize,
    /// Publisher silence after which HUGZ is sent.
    #[serde(deserialize_with = "duration")]
    pub hugz_interval: Duration,
    /// How often the change log is folded into the compacted tree (sooner when
    /// 100,000 changes are waiting).
    #[serde(deserialize_with = "duration")]
    pub compaction_interval: Duration,
    /// Updates queued per subscriber that does not keep up; beyond it, that subscriber loses
    /// updates (the others do not), so it bounds the memory one stalled subscriber costs.
    pub publisher_hwm: i32,
    /// Binary Star failover with a peer server; absent for a single server.
    pub ha: Option<HaConfig>,
    /// CURVE for the server sockets, set by `depot serve` from `[security]` (not a config key).
    #[serde(skip)]
    pub curve: Option<depot_common::security::ServerCurve>,
}

/// `[cache.ha]`: this server's side of a primary/backup pair and where its peer listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// `primary` or `backup`.
    pub role: Role,
    /// PUB this server binds to tell its peer its state.
    #[serde(default = "default_state")]
    pub state: String,
    /// The peer's state endpoint.
    pub peer_state: String,
    /// The peer's snapshot ROUTER (mirrored while passive).
    pub peer_snapshot: String,
    /// The peer's publisher (followed while passive).
    pub peer_publisher: String,
    /// How often the state is sent.
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Peer silence after which it counts as dead.
    #[serde(default = "default_peer_timeout", deserialize_with = "duration")]
    pub peer_timeout: Duration,
    /// Most client updates the passive server holds for takeover.
    #[serde(default = "default_pending_limit")]
    pub pending_limit: usize,
}

fn default_state() -> String {
    "tcp://127.0.0.1:5559".into()
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

fn default_peer_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_pending_limit() -> usize {
    1_000_000
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            snapshot: "tcp://127.0.0.1:5556".into(),
            publisher: "tcp://127.0.0.1:5557".into(),
            collector: "tcp://127.0.0.1:5558".into(),
            max_value_size: 1024 * 1024,
            compaction_interval: Duration::from_secs(10),
            hugz_interval: Duration::from_secs(1),
            publisher_hwm: 100_000,
            ha: None,
            curve: None,
        }
    }
}
