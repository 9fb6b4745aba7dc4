//! `[queue]` in depot.toml: endpoints, defaults for every queue, and per-queue overrides in
//! `[queue.queues."NAME"]`.

use std::collections::BTreeMap;
use std::time::Duration;

use depot_common::config::{duration, optional_duration, optional_size, size, size_usize};
use serde::Deserialize;

/// What happens when a queue's journal reaches its swap limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Producers wait: confirms are held back and fire-and-forget input is not read.
    Block,
    /// Producers are refused with an error reply (fire-and-forget messages are counted and
    /// logged as refused).
    Reject,
}

/// The queue service. An empty `router` switches the service off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// ROUTER for producers with confirms and consumers with acks.
    pub router: String,
    /// PULL for fire-and-forget producers (empty: off).
    pub pull: String,
    /// Create a queue on first use; when false only configured queues exist.
    pub auto_create: bool,
    /// Largest message accepted.
    #[serde(deserialize_with = "size_usize")]
    pub max_message_size: usize,
    /// How long a consumer may be silent (no request, no heartbeat) before it counts as gone
    /// and its unacknowledged messages go to others.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_timeout: Duration,
    /// Default: messages kept in memory per queue.
    pub hwm: u64,
    /// Default: bytes kept in memory per queue.
    #[serde(deserialize_with = "size")]
    pub hwm_bytes: u64,
    /// Default: journal bytes on disk per queue before the policy applies.
    #[serde(deserialize_with = "size")]
    pub swap_limit: u64,
    /// Default: block or reject when full.
    pub policy: FullPolicy,
    /// Default message lifetime.
    #[serde(deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// Default redeliveries before dead-lettering.
    pub max_redeliveries: Option<u32>,
    /// Default time before an unacknowledged message is delivered again.
    #[serde(deserialize_with = "duration")]
    pub redelivery_timeout: Duration,
    /// Declared queues and their overrides.
    pub queues: BTreeMap<String, QueueOverrides>,
    /// CURVE for the server sockets, set by `depot serve` from `[security]` (not a config key).
    #[serde(skip)]
    pub curve: Option<depot_common::security::ServerCurve>,
}

/// The settings of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Messages kept in memory for fast delivery; later ones live only on disk until read back.
    pub hwm: u64,
    /// Bytes kept in memory, whichever of `hwm` and this is reached first.
    pub hwm_bytes: u64,
    /// Bytes the queue's journal may occupy on disk before `policy` applies.
    pub swap_limit: u64,
    /// What producers get once the swap limit is reached.
    pub policy: FullPolicy,
    /// Messages older than this are dropped undelivered (counted), if set.
    pub ttl: Option<Duration>,
    /// After this many redeliveries a message moves to `<queue>.dead`, if set.
    pub max_redeliveries: Option<u32>,
    /// An unacknowledged message is delivered again after this long.
    pub redelivery_timeout: Duration,
}

/// `[queue.queues."NAME"]`: a declared queue, with settings that differ from the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueOverrides {
    /// Messages kept in memory.
    pub hwm: Option<u64>,
    /// Bytes kept in memory.
    #[serde(deserialize_with = "optional_size")]
    pub hwm_bytes: Option<u64>,
    /// Journal bytes on disk before the policy applies.
    #[serde(deserialize_with = "optional_size")]
    pub swap_limit: Option<u64>,
    /// Block or reject when full.
    pub policy: Option<FullPolicy>,
    /// Message lifetime.
    #[serde(deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// Redeliveries before dead-lettering.
    pub max_redeliveries: Option<u32>,
    /// Time before an unacknowledged message is delivered again.
    #[serde(deserialize_with = "optional_duration")]
    pub redelivery_timeout: Option<Duration>,
    /// Simple mode: a PUSH endpoint that hands this queue's messages to plain PULL sockets
    /// (at most once; see docs/PROTOCOL.md).
    pub push: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            router: "tcp://127.0.0.1:5570".into(),
            pull: "tcp://127.0.0.1:5571".into(),
            auto_create: true,
            max_message_size: 1024 * 1024,
            heartbeat_timeout: Duration::from_secs(10),
            hwm: 100_000,
            hwm_bytes: 64 * 1024 * 1024,
            swap_limit: 16 * 1024 * 1024 * 1024,
            policy: FullPolicy::Block,
            ttl: None,
            max_redeliveries: None,
            redelivery_timeout: Duration::from_secs(30),
            queues: BTreeMap::new(),
            curve: None,
        }
    }
}

impl QueueConfig {
    /// The settings of queue `name`: its overrides over the defaults.
    pub fn settings(&self, name: &str) -> QueueSettings {
        let d = QueueSettings {
            hwm: self.hwm,
            hwm_bytes: self.hwm_bytes,
            swap_limit: self.swap_limit,
            policy: self.policy,
            ttl: self.ttl,
            max_redeliveries: self.max_redeliveries,
            redelivery_timeout: self.redelivery_timeout,
        };
        let Some(o) = self.queues.get(name) else {
            return d;
        };
        QueueSettings {
            hwm: o.hwm.unwrap_or(d.hwm),
            hwm_bytes: o.hwm_bytes.unwrap_or(d.hwm_bytes),
            swap_limit: o.swap_limit.unwrap_or(d.swap_limit),
            policy: o.policy.unwrap_or(d.policy),
            ttl: o.ttl.or(d.ttl),
            max_redeliveries: o.max_redeliveries.or(d.max_redeliveries),
            redelivery_timeout: o.redelivery_timeout.unwrap_or(d.redelivery_timeout),
        }
    }

    /// Checks what serde cannot: names of declared queues.
    pub fn validate(&self) -> Result<(), String> {
        for name in self.queues.keys() {
            crate::protocol::validate_queue_name(name)
                .map_err(|e| format!("[queue.queues.\"{name}\"]: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        queue: QueueConfig,
    }

    fn parse(text: &str) -> Result<QueueConfig, String> {
        toml::from_str::<Doc>(text)
            .map(|d| d.queue)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let config = parse(
            r#"
[queue]
hwm = 10
policy = "reject"
ttl = "1h"
[queue.queues."orders"]
hwm = 1
swap_limit = "1MiB"
max_redeliveries = 3
push = "tcp://127.0.0.1:5572"
"#,
        )
        .unwrap();
        assert!(config.auto_create);
        let orders = config.settings("orders");
        assert_eq!(orders.hwm, 1);
        assert_eq!(orders.swap_limit, 1 << 20);
        assert_eq!(orders.policy, FullPolicy::Reject);
        assert_eq!(orders.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(orders.max_redeliveries, Some(3));
        let other = config.settings("other");
        assert_eq!(other.hwm, 10);
        assert_eq!(other.max_redeliveries, None);
        assert_eq!(
            config.queues["orders"].push.as_deref(),
            Some("tcp://127.0.0.1:5572")
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(parse("[queue]\nhwn = 3\n").unwrap_err().contains("hwn"));
        assert!(parse("[queue.queues.\"q\"]\nhmw = 3\n")
            .unwrap_err()
            .contains("hmw"));
        assert!(parse("[queue]\npolicy = \"drop\"\n").is_err());
        assert!(parse("[queue]\nswap_limit = \"lots\"\n").is_err());
        let config = parse("[queue.queues.\"\"]\n").unwrap();
        assert!(config.validate().is_err());
    }
}
