//! `[logd]` in depot.toml.

use std::net::SocketAddr;

use depot_common::config::size_usize;
use serde::Deserialize;

/// Endpoints and limits of the log service. An empty endpoint string switches that path off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogdConfig {
    /// PULL endpoint for fire-and-forget ingest.
    pub pull: String,
    /// Bound SUB endpoint that PUB publishers connect to.
    pub sub: String,
    /// PUB endpoints the collector connects its SUB to.
    pub publishers: Vec<String>,
    /// ROUTER endpoint for acked ingest.
    pub acked: String,
    /// XPUB endpoint for live records.
    pub live: String,
    /// XPUB endpoint for live records packed many to a message (empty: off).
    pub live_packed: String,
    /// XPUB endpoint for replay over a plain SUB.
    pub replay: String,
    /// ROUTER endpoint of the credit-based replay API.
    pub replay_api: String,
    /// Syslog over UDP (empty: off).
    pub syslog_udp: Option<SocketAddr>,
    /// Syslog over TCP (empty: off).
    pub syslog_tcp: Option<SocketAddr>,
    /// Largest accepted message (all frames), bytes.
    #[serde(deserialize_with = "size_usize")]
    pub max_message_size: usize,
    /// Most frames in one ingest message (a frame per body, unless packed): a message of many
    /// empty frames is small in bytes but would store that many records.
    pub max_frames: usize,
    /// Records a live subscriber may lag before it loses messages.
    pub live_hwm: i32,
    /// Acks kept for clients that do not read them; beyond it the oldest are dropped.
    pub max_unread_acks: usize,
    /// Files to tail.
    pub files: Vec<crate::tail::FileSource>,
    /// CURVE for the server sockets, set by `depot serve` from `[security]` (not a config key).
    #[serde(skip)]
    pub curve: Option<depot_common::security::ServerCurve>,
}

impl LogdConfig {
    /// Checks the limits that have no usable zero or negative value.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_unread_acks == 0 {
            return Err("logd.max_unread_acks must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for LogdConfig {
    fn default() -> Self {
        LogdConfig {
            pull: "tcp://127.0.0.1:5560".into(),
            sub: "tcp://127.0.0.1:5561".into(),
            publishers: Vec::new(),
            acked: "tcp://127.0.0.1:5562".into(),
            live: "tcp://127.0.0.1:5563".into(),
            live_packed: "tcp://127.0.0.1:5566".into(),
            replay: "tcp://127.0.0.1:5565".into(),
            replay_api: "tcp://127.0.0.1:5564".into(),
            syslog_udp: Some(SocketAddr::from(([127, 0, 0, 1], 5514))),
            syslog_tcp: Some(SocketAddr::from(([127, 0, 0, 1], 5514))),
            max_message_size: 1024 * 1024,
            max_frames: 100_000,
            live_hwm: 100_000,
            max_unread_acks: 100_000,
            files: Vec::new(),
            curve: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unread_acks_must_keep_at_least_one() {
        assert!(LogdConfig::default().validate().is_ok());
        let zero = LogdConfig {
            max_unread_acks: 0,
            ..LogdConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("max_unread_acks"));
    }
}
