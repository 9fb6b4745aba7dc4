//! `depot.toml`: one section per service. A missing file means built-in defaults; unknown keys
//! and bad values are errors naming the key and the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use depot_common::config::{duration, optional_duration, optional_size, size};
use serde::{Deserialize, Deserializer};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The disk core.
    pub store: StoreSection,
    /// The HTTP admin endpoint.
    pub admin: AdminSection,
    /// How long log streams are kept.
    pub retention: RetentionSection,
    /// The log service.
    pub logd: depot_logd::LogdConfig,
    /// The state cache.
    pub cache: depot_cache::CacheConfig,
    /// The persistent queue.
    pub queue: depot_queue::QueueConfig,
    /// Tick streams and timers.
    pub clock: depot_clock::ClockConfig,
    /// Multicast buses.
    pub multicast: depot_multicast::MulticastConfig,
    /// CURVE and the secure default.
    pub security: SecuritySection,
}

/// `[security]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// CURVE on every zmq endpoint, checked against the authorized-keys file.
    pub curve: bool,
    /// Allowed client public keys (default: `authorized_keys` in the data folder).
    pub authorized_keys: Option<PathBuf>,
    /// Permit binds beyond loopback that are not protected (zmq without CURVE, syslog, the
    /// admin HTTP endpoint, multicast buses).
    pub allow_insecure: bool,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Data folder (the `--data` flag wins over it).
    pub data_dir: PathBuf,
    /// Shortest time between group commits.
    #[serde(deserialize_with = "commit_interval")]
    pub commit_interval: Duration,
    /// fdatasync after each commit (power-loss durability).
    pub sync: bool,
    /// Memory for the storage engine's cache.
    #[serde(deserialize_with = "size")]
    pub cache_size: u64,
    /// Free space to keep on the data folder's filesystem: below it, ingest is refused.
    #[serde(deserialize_with = "size")]
    pub min_free: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        let store = depot_store::StoreConfig::default();
        StoreSection {
            data_dir: PathBuf::from("depot-data"),
            commit_interval: store.commit_interval,
            sync: store.sync,
            cache_size: store.cache_bytes,
            min_free: store.min_free,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the HTTP endpoint (`/health`, `/metrics`, `/status`).
    pub listen: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9560)),
        }
    }
}

/// `[retention]`: defaults for every stream, and overrides per stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Remove records older than this.
    #[serde(deserialize_with = "optional_duration")]
    pub max_age: Option<Duration>,
    /// Keep at most this many stored bytes per stream.
    #[serde(deserialize_with = "optional_size")]
    pub max_bytes: Option<u64>,
    /// How often retention runs.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Per-stream overrides, by stream name.
    pub streams: BTreeMap<String, StreamRetention>,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            max_age: None,
            max_bytes: None,
            interval: Duration::from_secs(10),
            streams: BTreeMap::new(),
        }
    }
}

/// `[retention.streams."NAME"]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamRetention {
    /// Remove records older than this.
    #[serde(deserialize_with = "optional_duration")]
    pub max_age: Option<Duration>,
    /// Keep at most this many stored bytes.
    #[serde(deserialize_with = "optional_size")]
    pub max_bytes: Option<u64>,
}

impl RetentionSection {
    /// The policy for `stream`: its own settings, falling back to the defaults.
    pub fn policy(&self, stream: &str) -> depot_store::Retention {
        let own = self.streams.get(stream);
        depot_store::Retention {
            max_age: own.and_then(|s| s.max_age).or(self.max_age),
            max_bytes: own.and_then(|s| s.max_bytes).or(self.max_bytes),
        }
    }
}

impl Config {
    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", origin.display()))?;
        config
            .logd
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", origin.display()))?;
        config
            .queue
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", origin.display()))?;
        config
            .clock
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", origin.display()))?;
        config
            .multicast
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", origin.display()))?;
        Ok(config)
    }

    /// Reads `path`; a missing file gives the defaults only when `required` is false.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot read configuration {}", path.display()))
            }
        }
    }

    /// Refuses binds beyond loopback that nothing protects, unless `allow_insecure` is set:
    /// zmq endpoints without CURVE, and always syslog, the admin endpoint and multicast buses
    /// without a `key_file` (they cannot use CURVE).
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.security.allow_insecure {
            return Ok(());
        }
        use depot_common::security::endpoint_is_local;
        let mut zmq_binds: Vec<(String, &str)> = Vec::new();
        let logd = &self.logd;
        for (key, endpoint) in [
            ("logd.pull", &logd.pull),
            ("logd.sub", &logd.sub),
            ("logd.acked", &logd.acked),
            ("logd.live", &logd.live),
            ("logd.replay", &logd.replay),
            ("logd.replay_api", &logd.replay_api),
        ] {
            zmq_binds.push((key.into(), endpoint));
        }
        if !self.cache.snapshot.is_empty() {
            let cache = &self.cache;
            zmq_binds.push(("cache.snapshot".into(), &cache.snapshot));
            zmq_binds.push(("cache.publisher".into(), &cache.publisher));
            zmq_binds.push(("cache.collector".into(), &cache.collector));
            if let Some(ha) = &cache.ha {
                zmq_binds.push(("cache.ha.state".into(), &ha.state));
            }
        }
        if !self.queue.router.is_empty() {
            zmq_binds.push(("queue.router".into(), &self.queue.router));
            zmq_binds.push(("queue.pull".into(), &self.queue.pull));
            for (name, queue) in &self.queue.queues {
                if let Some(push) = &queue.push {
                    zmq_binds.push((format!("queue.queues.\"{name}\".push"), push));
                }
            }
        }
        if !self.clock.publisher.is_empty() {
            zmq_binds.push(("clock.publisher".into(), &self.clock.publisher));
            for extra in &self.clock.publisher_extra {
                zmq_binds.push(("clock.publisher_extra".into(), extra));
            }
            zmq_binds.push(("clock.timers".into(), &self.clock.timers));
        }
        if !self.security.curve {
            for (key, endpoint) in &zmq_binds {
                if !endpoint.is_empty() && !endpoint_is_local(endpoint) {
                    anyhow::bail!(
                        "{key} = \"{endpoint}\" listens beyond loopback without encryption or \
                         authentication; set [security] curve = true (and list client keys in \
                         authorized_keys), bind a loopback address, or set [security] \
                         allow_insecure = true"
                    );
                }
            }
        }
        let plain = |key: &str, what: &str| {
            anyhow::anyhow!(
                "{key} = \"{what}\" listens beyond loopback and cannot use CURVE; bind a \
                 loopback address or set [security] allow_insecure = true"
            )
        };
        for (key, addr) in [
            ("logd.syslog_udp", self.logd.syslog_udp),
            ("logd.syslog_tcp", self.logd.syslog_tcp),
            ("admin.listen", Some(self.admin.listen)),
        ] {
            if let Some(addr) = addr {
                if !addr.ip().is_loopback() {
                    return Err(plain(key, &addr.to_string()));
                }
            }
        }
        // A sealed bus (key_file) is encrypted and authenticated by its key.
        for bus in self.multicast.bus.iter().filter(|b| b.key_file.is_none()) {
            if !endpoint_is_local(&bus.endpoint) {
                anyhow::bail!(
                    "multicast bus \"{}\" endpoint = \"{}\" reaches beyond loopback in clear; \
                     give the bus a key_file (`depot bus keygen`) to seal its messages, use a \
                     loopback interface or set [security] allow_insecure = true",
                    bus.name,
                    bus.endpoint
                );
            }
        }
        Ok(())
    }

    /// The store's settings.
    pub fn store_config(&self) -> depot_store::StoreConfig {
        depot_store::StoreConfig {
            commit_interval: self.store.commit_interval,
            sync: self.store.sync,
            cache_bytes: self.store.cache_size,
            min_free: self.store.min_free,
            ..depot_store::StoreConfig::default()
        }
    }
}

fn commit_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = duration(d)?;
    if value < Duration::from_micros(100) || value > Duration::from_secs(1) {
        return Err(serde::de::Error::custom(format!(
            "commit_interval must be between 100us and 1s, got {value:?}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("depot.toml"))
    }

    #[test]
    fn empty_text_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9560");
        assert_eq!(config.store.commit_interval, Duration::from_millis(2));
        assert!(config.store.sync);
        assert_eq!(config.store.data_dir, PathBuf::from("depot-data"));
    }

    #[test]
    fn reads_every_section() {
        let config = parse(
            r#"
[store]
data_dir = "/var/lib/depot"
commit_interval = "5ms"
cache_size = "128MiB"
min_free = "16MiB"

[admin]
listen = "127.0.0.1:19560"

[retention]
max_age = "7d"
max_bytes = "10GiB"

[retention.streams."audit"]
max_age = "365d"

[queue]
router = "tcp://127.0.0.1:15570"
hwm = 10
auto_create = false

[queue.queues."orders"]
policy = "reject"
"#,
        )
        .unwrap();
        assert_eq!(config.store.cache_size, 128 << 20);
        assert_eq!(config.store.min_free, 16 << 20);
        assert_eq!(config.store.commit_interval, Duration::from_millis(5));
        let audit = config.retention.policy("audit");
        assert_eq!(audit.max_age, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(audit.max_bytes, Some(10 << 30));
        assert_eq!(
            config.retention.policy("other").max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert!(!config.queue.auto_create);
        let orders = config.queue.settings("orders");
        assert_eq!(orders.hwm, 10);
        assert_eq!(orders.policy, depot_queue::FullPolicy::Reject);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[store]\nsync = true\ncomit_interval = \"2ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("comit_interval"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_is_named_with_its_line_and_reason() {
        let err = parse("[admin]\n\nlisten = \"localhost:http\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        let err = parse("[store]\ncommit_interval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("invalid duration"),
            "{err}"
        );
        let err = parse("[store]\ncommit_interval = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 100us and 1s"), "{err}");
        let err = parse("[retention]\nmax_bytes = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("invalid size"),
            "{err}"
        );
        let err = parse("[queue.queues.\"orders\"]\nhwm = 1\nttl = \"whenever\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("invalid duration"),
            "{err}"
        );
    }

    /// The configuration shown in the README is a valid one.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("```toml\n")
            .expect("a toml block in the README")
            + 8;
        let end = start + readme[start..].find("```").unwrap();
        let config = parse(&readme[start..end]).unwrap();
        assert_eq!(config.queue.settings("orders").hwm, 1000);
    }

    #[test]
    fn clock_section_with_streams_and_its_minimum_period() {
        let config = parse(
            "[clock]\ntimers = \"\"\n[[clock.ticks]]\nperiod = \"1ms\"\nprecision = \"high\"\n",
        )
        .unwrap();
        assert_eq!(config.clock.ticks.len(), 1);
        assert!(config.clock.timers.is_empty());
        assert_eq!(parse("").unwrap().clock.ticks.len(), 2);
        let err = parse("[[clock.ticks]]\nperiod = \"10us\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("below min_period"), "{err}");
    }

    #[test]
    fn the_readme_sample_parses() {
        let readme = include_str!("../README.md");
        let sample = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README has a toml sample");
        let config = parse(sample).unwrap();
        assert_eq!(config.multicast.bus.len(), 2);
        assert_eq!(config.multicast.bus[0].rate_kbps, 100_000);
    }

    #[test]
    fn a_bad_multicast_bus_is_named() {
        let err = parse(
            "[[multicast.bus]]\nname = \"lan\"\nendpoint = \"epgm://lo;239.192.1.1:5555\"\nlogs = [\"\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("multicast bus \"lan\"") && err.contains("lo"),
            "{err}"
        );
    }

    /// The sample `make install` puts in /etc/depot parses and passes the secure default.
    #[test]
    fn the_packaged_sample_parses() {
        let config = parse(include_str!("../packaging/depot.toml")).unwrap();
        assert_eq!(config.store.data_dir, PathBuf::from("/var/lib/depot"));
        assert!(!config.security.curve);
        config.check_exposure().unwrap();
    }

    #[test]
    fn security_section_and_the_secure_default() {
        let config =
            parse("[security]\ncurve = true\nauthorized_keys = \"/etc/depot/keys\"\n").unwrap();
        assert!(config.security.curve);
        assert_eq!(
            config.security.authorized_keys,
            Some(PathBuf::from("/etc/depot/keys"))
        );
        parse("").unwrap().check_exposure().unwrap();
        let err = parse("[queue]\nrouter = \"tcp://*:5570\"\n")
            .unwrap()
            .check_exposure()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("queue.router") && err.contains("allow_insecure"),
            "{err}"
        );
        parse("[queue]\nrouter = \"tcp://*:5570\"\n[security]\ncurve = true\n")
            .unwrap()
            .check_exposure()
            .unwrap();
        let err = parse("[admin]\nlisten = \"0.0.0.0:9560\"\n[security]\ncurve = true\n")
            .unwrap()
            .check_exposure()
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.listen"), "{err}");
        parse("[admin]\nlisten = \"0.0.0.0:9560\"\n[security]\nallow_insecure = true\n")
            .unwrap()
            .check_exposure()
            .unwrap();
        let err = parse("[clock]\npublisher_extra = [\"tcp://10.0.0.1:5590\"]\n")
            .unwrap()
            .check_exposure()
            .unwrap_err()
            .to_string();
        assert!(err.contains("clock.publisher_extra"), "{err}");
    }

    #[test]
    fn a_bus_beyond_loopback_needs_a_key_file() {
        let bus = "[[multicast.bus]]\nname = \"lan\"\nendpoint = \"epgm://10.0.0.5;239.192.1.1:5555\"\nlogs = [\"\"]\n";
        let err = parse(bus)
            .unwrap()
            .check_exposure()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"lan\"") && err.contains("key_file"), "{err}");
        parse(&format!("{bus}key_file = \"/etc/depot/lan.key\"\n"))
            .unwrap()
            .check_exposure()
            .unwrap();
    }

    #[test]
    fn missing_optional_file_gives_defaults_but_required_one_fails() {
        let missing = Path::new("/nonexistent/depot.toml");
        assert!(Config::load(missing, false).is_ok());
        let err = Config::load(missing, true).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/depot.toml"), "{err}");
    }

    #[test]
    fn logd_max_unread_acks_is_read_and_zero_refused() {
        let config = parse("[logd]\nmax_unread_acks = 500\n").unwrap();
        assert_eq!(config.logd.max_unread_acks, 500);
        let err = parse("[logd]\nmax_unread_acks = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_unread_acks"), "{err}");
    }
}
