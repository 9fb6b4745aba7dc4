//! `[cache]` in depot.toml.

use std::time::Duration;

use depot_common::config::{duration, size_usize};
use serde::Deserialize;

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
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            snapshot: "tcp://127.0.0.1:5556".into(),
            publisher: "tcp://127.0.0.1:5557".into(),
            collector: "tcp://127.0.0.1:5558".into(),
            max_value_size: 7 * 1024,
            hugz_interval: Duration::from_secs(1),
        }
    }
}
