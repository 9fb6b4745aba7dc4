//! `[multicast]` in depot.toml: the buses, each either carrying streams out or ingesting.

use std::path::PathBuf;

use serde::Deserialize;

use crate::endpoint::PgmEndpoint;
use crate::seal::BusKey;

/// `[multicast]`: zero or more `[[multicast.bus]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MulticastConfig {
    /// The buses.
    pub bus: Vec<BusConfig>,
}

/// `[[multicast.bus]]`: one PGM/EPGM group and what travels on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Unique name, used in metrics, status and `depot bus watch NAME`.
    pub name: String,
    /// `epgm://<interface IPv4>;<group>:<port>` or `pgm://...`.
    pub endpoint: String,
    /// Sending rate limit in kbit/s (ZMQ_RATE); repair traffic shares it.
    #[serde(default = "default_rate")]
    pub rate_kbps: u32,
    /// How long sent data stays available for repair (ZMQ_RECOVERY_IVL), ms.
    #[serde(default = "default_recovery")]
    pub recovery_ms: u32,
    /// Multicast TTL (ZMQ_MULTICAST_HOPS): 1 keeps the bus on the local network.
    #[serde(default = "default_hops")]
    pub hops: u8,
    /// Largest PGM packet (ZMQ_MULTICAST_MAXTPDU), bytes: the link's MTU. 1500 for Ethernet;
    /// loopback and jumbo-frame links take more, and bigger packets cost less CPU per byte.
    #[serde(default = "default_max_tpdu")]
    pub max_tpdu: u32,
    /// Out: log topic prefixes to carry from logd's live XPUB (`""` carries every stream).
    #[serde(default)]
    pub logs: Vec<String>,
    /// Out: carry the logs as logd's packed live messages (many records per message, from the
    /// `live_packed` endpoint) rather than one message per record.
    #[serde(default)]
    pub packed: bool,
    /// Out: cache updates to carry: `true` for all, or a list of subtrees.
    #[serde(default)]
    pub cache: CacheCarry,
    /// Out: clock tick topic prefixes to carry from the clock's PUB.
    #[serde(default)]
    pub ticks: Vec<String>,
    /// In: store log records published to the group (live-format or logd ingest frames).
    #[serde(default)]
    pub ingest: bool,
    /// In: hand CHP updates seen on the group to the cache collector.
    #[serde(default)]
    pub ingest_cache: bool,
    /// A file holding the bus's 32-byte key (`depot bus keygen`): every message on the bus is
    /// sealed with it, and messages that do not open are dropped (see `seal`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key read from `key_file` by [`MulticastConfig::load_keys`].
    #[serde(skip)]
    pub key: Option<BusKey>,
}

/// Which cache updates a bus carries.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CacheCarry {
    /// `true`: every update; `false`: none.
    All(bool),
    /// These subtrees (key prefixes).
    Subtrees(Vec<String>),
}

impl Default for CacheCarry {
    fn default() -> Self {
        CacheCarry::All(false)
    }
}

impl CacheCarry {
    /// The SUB subscriptions on the cache publisher, or none when the cache is not carried.
    pub fn subscriptions(&self) -> Vec<Vec<u8>> {
        match self {
            CacheCarry::All(false) => Vec::new(),
            CacheCarry::Subtrees(subtrees) if subtrees.is_empty() => Vec::new(),
            CacheCarry::All(true) => vec![Vec::new()],
            CacheCarry::Subtrees(subtrees) if subtrees.iter().any(String::is_empty) => {
                vec![Vec::new()]
            }
            CacheCarry::Subtrees(subtrees) => {
                let mut subs: Vec<Vec<u8>> =
                    subtrees.iter().map(|s| s.as_bytes().to_vec()).collect();
                // Clone clients on the bus see the server alive between updates.
                subs.push(b"HUGZ".to_vec());
                subs
            }
        }
    }

    /// True when every update is carried, so the cache's one sequence has no holes.
    pub fn is_whole(&self) -> bool {
        self.subscriptions().first().is_some_and(Vec::is_empty)
    }
}

fn default_rate() -> u32 {
    100_000
}

fn default_recovery() -> u32 {
    10_000
}

fn default_hops() -> u8 {
    1
}

/// Smallest `max_tpdu`: IPv4's minimum datagram every host takes.
const MIN_TPDU: u32 = 576;
/// Largest `max_tpdu`: a UDP datagram (EPGM) must fit in 64 KiB with its headers.
const MAX_TPDU: u32 = 65_000;

fn default_max_tpdu() -> u32 {
    1500
}

/// Which way a bus works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Carries Depot's streams to the group.
    Out,
    /// Ingests the group's messages.
    In,
}

impl BusConfig {
    /// A receiver of the group at `endpoint` with default options, for tools that join a bus
    /// (`depot bus watch`, the bench); set the sender's `max_tpdu` or more.
    pub fn receiver(name: &str, endpoint: String) -> BusConfig {
        BusConfig {
            name: name.into(),
            endpoint,
            rate_kbps: default_rate(),
            recovery_ms: default_recovery(),
            hops: default_hops(),
            max_tpdu: default_max_tpdu(),
            logs: Vec::new(),
            packed: false,
            cache: CacheCarry::default(),
            ticks: Vec::new(),
            ingest: true,
            ingest_cache: false,
            key_file: None,
            key: None,
        }
    }

    /// Out or in.
    pub fn direction(&self) -> Direction {
        if self.ingest || self.ingest_cache {
            Direction::In
        } else {
            Direction::Out
        }
    }

    /// What the bus carries or ingests, in a few words for status tables.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.logs.is_empty() {
            parts.push(format!("logs {}", quoted(&self.logs)));
        }
        match &self.cache {
            CacheCarry::All(true) => parts.push("cache (all)".into()),
            CacheCarry::Subtrees(s) if !s.is_empty() => parts.push(format!("cache {}", quoted(s))),
            _ => {}
        }
        if !self.ticks.is_empty() {
            parts.push(format!("ticks {}", quoted(&self.ticks)));
        }
        if self.ingest {
            parts.push("ingest into logd".into());
        }
        if self.ingest_cache {
            parts.push("ingest into cache".into());
        }
        if self.key_file.is_some() {
            parts.push("sealed".into());
        }
        parts.join(", ")
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl MulticastConfig {
    /// Reads every bus's `key_file`; the error names the bus. `depot serve` calls this before
    /// it starts, so a missing or malformed key stops it instead of leaving a bus open.
    pub fn load_keys(&mut self) -> Result<(), String> {
        for bus in &mut self.bus {
            if let Some(path) = &bus.key_file {
                let key = BusKey::load(path)
                    .map_err(|e| format!("multicast bus {:?}: key_file {e}", bus.name))?;
                bus.key = Some(key);
            }
        }
        Ok(())
    }

    /// Checks every bus; the error names the bus and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        let mut groups = std::collections::HashMap::new();
        for (i, bus) in self.bus.iter().enumerate() {
            let which = if bus.name.is_empty() {
                format!("multicast bus #{}", i + 1)
            } else {
                format!("multicast bus {:?}", bus.name)
            };
            let fail = |why: String| Err(format!("{which}: {why}"));
            if bus.name.is_empty()
                || bus.name.len() > 64
                || !bus
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return fail("name must be 1 to 64 letters, digits, '-', '_' or '.'".into());
            }
            if !names.insert(bus.name.as_str()) {
                return fail("another bus has the same name".into());
            }
            let endpoint = match PgmEndpoint::parse(&bus.endpoint) {
                Ok(endpoint) => endpoint,
                Err(e) => return fail(e),
            };
            if let Some(other) = groups.insert((endpoint.group, endpoint.port), &bus.name) {
                return fail(format!(
                    "group {}:{} is also bus {other:?}'s; give each bus its own group or port",
                    endpoint.group, endpoint.port
                ));
            }
            if bus.rate_kbps == 0 {
                return fail("rate_kbps must be above 0".into());
            }
            if bus.recovery_ms == 0 {
                return fail("recovery_ms must be above 0".into());
            }
            if !(MIN_TPDU..=MAX_TPDU).contains(&bus.max_tpdu) {
                return fail(format!(
                    "max_tpdu must be {MIN_TPDU} to {MAX_TPDU} bytes (the link's MTU), not {}",
                    bus.max_tpdu
                ));
            }
            if bus.hops == 0 {
                return fail("hops must be 1 or more".into());
            }
            let carries = !bus.logs.is_empty()
                || !bus.cache.subscriptions().is_empty()
                || !bus.ticks.is_empty();
            let ingests = bus.ingest || bus.ingest_cache;
            if carries && ingests {
                return fail(
                    "a bus either carries streams out (logs, cache, ticks) or ingests (ingest, ingest_cache), not both: it would ingest what it sends".into(),
                );
            }
            if !carries && !ingests {
                return fail(
                    "carries nothing: set logs, cache or ticks to send, or ingest = true to receive".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MulticastConfig, String> {
        let config: MulticastConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn reads_out_and_in_buses() {
        let config = parse(
            r#"
[[bus]]
name = "lan"
endpoint = "epgm://127.0.0.1;239.192.1.1:5555"
rate_kbps = 1000000
recovery_ms = 2000
logs = ["app", "db"]
cache = ["/config"]
ticks = ["tick.1s"]

[[bus]]
name = "in"
endpoint = "epgm://127.0.0.1;239.192.1.2:5555"
ingest = true
"#,
        )
        .unwrap();
        let lan = &config.bus[0];
        assert_eq!(lan.direction(), Direction::Out);
        assert_eq!(lan.rate_kbps, 1_000_000);
        assert_eq!(lan.hops, 1);
        assert_eq!(
            lan.cache.subscriptions(),
            vec![b"/config".to_vec(), b"HUGZ".to_vec()]
        );
        assert!(!lan.cache.is_whole());
        let inbound = &config.bus[1];
        assert_eq!(inbound.direction(), Direction::In);
        assert_eq!(inbound.rate_kbps, 100_000);
        assert_eq!(inbound.recovery_ms, 10_000);
    }

    #[test]
    fn cache_true_carries_everything() {
        let config = parse(
            "[[bus]]\nname = \"c\"\nendpoint = \"epgm://127.0.0.1;239.192.1.1:5555\"\ncache = true\n",
        )
        .unwrap();
        assert_eq!(config.bus[0].cache.subscriptions(), vec![Vec::<u8>::new()]);
        assert!(config.bus[0].cache.is_whole());
    }

    #[test]
    fn an_empty_subtree_list_carries_no_cache() {
        let carry = CacheCarry::Subtrees(Vec::new());
        assert!(carry.subscriptions().is_empty());
        assert!(!carry.is_whole());
    }

    #[test]
    fn errors_name_the_bus() {
        let bus = |body: &str| format!("[[bus]]\nname = \"b1\"\n{body}\n");
        let cases = [
            (bus("endpoint = \"epgm://lo;239.192.1.1:5555\"\nlogs = [\"\"]"), "interface names"),
            (bus("endpoint = \"epgm://127.0.0.1;10.0.0.1:5555\"\nlogs = [\"\"]"), "not a multicast"),
            (bus("endpoint = \"epgm://127.0.0.1;239.192.1.1:5555\""), "carries nothing"),
            (
                bus("endpoint = \"epgm://127.0.0.1;239.192.1.1:5555\"\nlogs = [\"\"]\ningest = true"),
                "not both",
            ),
            (
                bus("endpoint = \"epgm://127.0.0.1;239.192.1.1:5555\"\nlogs = [\"\"]\nrate_kbps = 0"),
                "rate_kbps",
            ),
        ];
        for (text, why) in cases {
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains("multicast bus \"b1\"") && err.contains(why),
                "{err}"
            );
        }
        let twice = format!(
            "{}{}",
            bus("endpoint = \"epgm://127.0.0.1;239.192.1.1:5555\"\nlogs = [\"\"]"),
            bus("endpoint = \"epgm://127.0.0.1;239.192.1.2:5555\"\nlogs = [\"\"]")
        );
        assert!(parse(&twice).unwrap_err().contains("same name"));
        let unknown = parse(
            "[[bus]]\nname = \"x\"\nendpoint = \"epgm://127.0.0.1;239.192.1.1:1\"\nlog = [\"\"]\n",
        )
        .unwrap_err();
        assert!(unknown.contains("unknown field `log`"), "{unknown}");
    }

    #[test]
    fn a_bad_key_file_is_an_error_naming_the_bus() {
        let dir = std::env::temp_dir().join(format!("depot-mc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, "abcd\n").unwrap();
        let good = dir.join("good.key");
        std::fs::write(&good, BusKey::generate().to_text()).unwrap();
        let with_key = |path: &std::path::Path| {
            parse(&format!(
                "[[bus]]\nname = \"sec\"\nendpoint = \"epgm://127.0.0.1;239.192.1.1:5555\"\nlogs = [\"\"]\nkey_file = {:?}\n",
                path.display().to_string()
            ))
            .unwrap()
        };
        let mut config = with_key(&good);
        config.load_keys().unwrap();
        assert!(config.bus[0].key.is_some());
        assert!(config.bus[0].describe().contains("sealed"));
        for (path, why) in [
            (short, "4 characters"),
            (dir.join("none.key"), "No such file"),
        ] {
            let err = with_key(&path).load_keys().unwrap_err();
            assert!(
                err.starts_with("multicast bus \"sec\": key_file") && err.contains(why),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
