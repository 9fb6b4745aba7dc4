//! Live reload of `depot.toml`: the file's folder is watched; a changed file is parsed and
//! validated exactly as at start, compared key by key with the running one, and the keys that
//! are safe to change in a running appliance (retention, queue limits and declared queues, the
//! clock's tick streams and timer limits) are handed to their services over channels. Everything else is logged as needing a restart.
//! An invalid file is refused with its reason and the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use depot_common::metrics::{Kind, MetricsText};
use serde::{Deserialize, Serialize};

use crate::config::{Config, RetentionSection};

/// Quiet time after the last file event before the file is read: an editor's save is a
/// burst of events (write, rename, attributes).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Queue keys the queue thread reads at run time (the rest are sockets bound at start).
const LIVE_QUEUE_KEYS: &[&str] = &[
    "auto_create",
    "max_message_size",
    "heartbeat_timeout",
    "hwm",
    "hwm_bytes",
    "swap_limit",
    "policy",
    "ttl",
    "max_redeliveries",
    "redelivery_timeout",
];

/// Clock keys the timers thread reads per request or firing (`depot_clock::TimerLimits`).
const LIVE_TIMER_KEYS: &[&str] = &["max_payload", "max_timers", "late_after"];

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Apply {
    /// At once, in the running appliance.
    Live,
    /// Only after `depot serve` is restarted.
    Restart,
}

/// One changed key of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted path, e.g. `queue.queues.orders.hwm`.
    pub key: String,
    /// When it takes effect.
    pub apply: Apply,
}

/// The keys that differ between two configuration files, each classified. Tables are
/// compared key by key; a table added or removed with nothing in it counts as one key (a
/// declared queue without overrides); arrays count as one key.
pub fn diff(old: &toml::Table, new: &toml::Table) -> Vec<Change> {
    let mut keys = Vec::new();
    walk_tables(&mut Vec::new(), old, new, &mut keys);
    keys.into_iter()
        .map(|path| Change {
            apply: classify(&path),
            key: dotted(&path),
        })
        .collect()
}

fn walk_tables(
    path: &mut Vec<String>,
    old: &toml::Table,
    new: &toml::Table,
    out: &mut Vec<Vec<String>>,
) {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        path.push(name.clone());
        walk(path, old.get(name), new.get(name), out);
        path.pop();
    }
}

fn walk(
    path: &mut Vec<String>,
    old: Option<&toml::Value>,
    new: Option<&toml::Value>,
    out: &mut Vec<Vec<String>>,
) {
    let empty = toml::Table::new();
    match (old, new) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => walk_tables(path, a, b, out),
        (Some(toml::Value::Table(t)), None) | (None, Some(toml::Value::Table(t))) => {
            if t.is_empty() {
                out.push(path.clone());
            } else {
                walk_tables(path, t, &empty, out);
            }
        }
        (a, b) if a != b => out.push(path.clone()),
        _ => {}
    }
}

/// Whether a change of the key at `path` can apply to the running appliance.
pub fn classify(path: &[String]) -> Apply {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["retention", ..] => Apply::Live,
        ["queue", key] if LIVE_QUEUE_KEYS.contains(key) => Apply::Live,
        ["queue", "queues", _] => Apply::Live,
        ["queue", "queues", _, key] if LIVE_QUEUE_KEYS.contains(key) => Apply::Live,
        // The ticker takes a new set of streams between two sends, the timers thread new
        // limits between two turns; the sockets, the scheduling (catch_up, min_period), the
        // raised threads, the idle-poll hold and the restart grace are set at start.
        ["clock", "ticks"] => Apply::Live,
        ["clock", key] if LIVE_TIMER_KEYS.contains(key) => Apply::Live,
        _ => Apply::Restart,
    }
}

fn dotted(path: &[String]) -> String {
    let bare = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    path.iter()
        .map(|s| if bare(s) { s.clone() } else { format!("{s:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

/// What the last reload did, for `/status` and `/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    /// False when the file was refused (the running configuration stays).
    pub ok: bool,
    /// Unix time of the reload, in seconds.
    pub at_unix_secs: u64,
    /// Why the file was refused, when it was.
    #[serde(default)]
    pub error: Option<String>,
    /// Keys changed by this reload and applied.
    #[serde(default)]
    pub applied: Vec<String>,
    /// Keys that differ from the file the appliance started with and need a restart.
    #[serde(default)]
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    /// One line: "ok", "ok; needs a restart: KEYS" or "refused: WHY".
    pub fn summary(&self) -> String {
        match &self.error {
            Some(error) => format!("refused: {error}"),
            None if self.restart_needed.is_empty() => "ok".into(),
            None => format!("ok; needs a restart: {}", self.restart_needed.join(", ")),
        }
    }
}

/// Counters and the last result, shared with the admin endpoint.
#[derive(Debug, Default)]
pub struct ReloadState {
    /// Valid files taken.
    pub reloads: AtomicU64,
    /// Files refused.
    pub failed: AtomicU64,
    /// Keys that differ from the started configuration and wait for a restart.
    pub restart_needed: AtomicU64,
    /// The last reload's result.
    pub last: Mutex<Option<ReloadReport>>,
}

impl ReloadState {
    /// The last reload's result, if there was one.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Appends the `depot_config_*` families.
    pub fn render(&self, m: &mut MetricsText) {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
        m.single(
            "depot_config_reloads_total",
            Kind::Counter,
            "Configuration files taken by a live reload",
            get(&self.reloads),
        );
        m.single(
            "depot_config_reload_failed_total",
            Kind::Counter,
            "Configuration files refused by a live reload (the running one stays)",
            get(&self.failed),
        );
        m.single(
            "depot_config_restart_needed",
            Kind::Gauge,
            "Changed configuration keys that take effect only after a restart",
            get(&self.restart_needed),
        );
    }
}

/// Where live changes go: one channel per service that takes them.
pub struct Targets {
    /// The retention thread.
    pub retention: mpsc::Sender<RetentionSection>,
    /// The queue thread, when the queue runs.
    pub queue: Option<mpsc::Sender<depot_queue::QueueConfig>>,
    /// The clock's ticker and timers threads, when the clock runs.
    pub clock: Option<depot_clock::ClockReconfigurer>,
}

/// Reads the file on change and applies what it can.
pub struct Reloader {
    path: PathBuf,
    /// The file as the appliance started with it: what restart-only keys are compared with.
    started: toml::Table,
    /// The last file taken: what live keys are compared with.
    applied: toml::Table,
    targets: Targets,
    state: Arc<ReloadState>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses and validates `text` as `depot serve` does at start.
fn validate(text: &str, path: &Path) -> anyhow::Result<(Config, toml::Table)> {
    let config = Config::parse(text, path)?;
    config.check_exposure()?;
    let table: toml::Table = toml::from_str(text)?;
    Ok((config, table))
}

impl Reloader {
    /// A reloader for `path`, whose current content is what the appliance runs with (a
    /// missing file counts as empty: the built-in defaults).
    pub fn new(path: PathBuf, targets: Targets, state: Arc<ReloadState>) -> Reloader {
        let started: toml::Table = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default();
        Reloader {
            path,
            applied: started.clone(),
            started,
            targets,
            state,
        }
    }

    /// Reads the file again: refuses it with a warning if invalid, else applies its live
    /// changes and reports the rest.
    pub fn reload(&mut self) {
        let read = std::fs::read_to_string(&self.path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.path.display()))
            .and_then(|text| validate(&text, &self.path));
        let (config, table) = match read {
            Ok(parsed) => parsed,
            Err(e) => {
                self.state.failed.fetch_add(1, Ordering::Relaxed);
                let error = format!("{e:#}");
                tracing::warn!(file = %self.path.display(), error, "configuration refused; still running on the previous one");
                let mut last = self.state.last.lock().unwrap_or_else(|e| e.into_inner());
                let restart_needed = last
                    .as_ref()
                    .map(|l| l.restart_needed.clone())
                    .unwrap_or_default();
                *last = Some(ReloadReport {
                    ok: false,
                    at_unix_secs: unix_now(),
                    error: Some(error),
                    applied: Vec::new(),
                    restart_needed,
                });
                return;
            }
        };
        let changes = diff(&self.applied, &table);
        let live: Vec<String> = changes
            .iter()
            .filter(|c| c.apply == Apply::Live)
            .map(|c| c.key.clone())
            .collect();
        if changes.iter().any(|c| c.key.starts_with("retention")) {
            let _ = self.targets.retention.send(config.retention.clone());
        }
        if changes.iter().any(|c| c.key.starts_with("queue")) {
            if let Some(queue) = &self.targets.queue {
                let _ = queue.send(config.queue.clone());
            }
        }
        if let Some(clock) = &self.targets.clock {
            if changes.iter().any(|c| c.key == "clock.ticks") {
                clock.ticks(config.clock.ticks.clone());
            }
            if changes.iter().any(|c| {
                LIVE_TIMER_KEYS
                    .iter()
                    .any(|k| c.key == format!("clock.{k}"))
            }) {
                clock.timer_limits(config.clock.timer_limits());
            }
        }
        for key in &live {
            tracing::info!(key, "configuration: applied live");
        }
        let restart_needed: Vec<String> = diff(&self.started, &table)
            .into_iter()
            .filter(|c| c.apply == Apply::Restart)
            .map(|c| c.key)
            .collect();
        for key in &restart_needed {
            tracing::warn!(key, "configuration: needs a restart: {key}");
        }
        self.applied = table;
        self.state
            .restart_needed
            .store(restart_needed.len() as u64, Ordering::Relaxed);
        self.state.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file = %self.path.display(), applied = live.len(), restart_needed = restart_needed.len(), "configuration reloaded");
        *self.state.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadReport {
            ok: true,
            at_unix_secs: unix_now(),
            error: None,
            applied: live,
            restart_needed,
        });
    }
}

/// Watches `path` and reloads on change until the returned watcher is dropped.
pub fn watch(reloader: Reloader) -> anyhow::Result<depot_common::watch::FileWatcher> {
    let path = reloader.path.clone();
    let reloader = Mutex::new(reloader);
    let watcher = depot_common::watch::FileWatcher::start(&path, DEBOUNCE, move || {
        reloader.lock().unwrap_or_else(|e| e.into_inner()).reload();
    })?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn changes(old: &str, new: &str) -> Vec<(String, Apply)> {
        diff(&table(old), &table(new))
            .into_iter()
            .map(|c| (c.key, c.apply))
            .collect()
    }

    #[test]
    fn equal_files_have_no_changes() {
        let text = "[queue]\nhwm = 3\n[queue.queues.\"a\"]\n";
        assert!(changes(text, text).is_empty());
    }

    #[test]
    fn queue_limits_and_declared_queues_are_live_endpoints_are_not() {
        let old = "[queue]\nrouter = \"tcp://127.0.0.1:1\"\nhwm = 3\n[queue.queues.a]\nswap_limit = \"1MiB\"\n";
        let new = "[queue]\nrouter = \"tcp://127.0.0.1:2\"\nhwm = 4\n[queue.queues.a]\nswap_limit = \"2MiB\"\npush = \"tcp://127.0.0.1:3\"\n[queue.queues.b]\n";
        assert_eq!(
            changes(old, new),
            vec![
                ("queue.hwm".into(), Apply::Live),
                ("queue.queues.a.push".into(), Apply::Restart),
                ("queue.queues.a.swap_limit".into(), Apply::Live),
                ("queue.queues.b".into(), Apply::Live),
                ("queue.router".into(), Apply::Restart),
            ]
        );
    }

    #[test]
    fn retention_is_live_and_other_sections_need_a_restart() {
        let old = "[store]\ncommit_interval = \"2ms\"\n";
        let new = "[store]\ncommit_interval = \"5ms\"\n[retention]\nmax_age = \"1d\"\n[retention.streams.\"app.x\"]\nmax_bytes = \"1MiB\"\n[[clock.ticks]]\nperiod = \"1s\"\n[admin]\nlisten = \"127.0.0.1:1\"\n";
        assert_eq!(
            changes(old, new),
            vec![
                ("admin.listen".into(), Apply::Restart),
                ("clock.ticks".into(), Apply::Live),
                ("retention.max_age".into(), Apply::Live),
                ("retention.streams.\"app.x\".max_bytes".into(), Apply::Live),
                ("store.commit_interval".into(), Apply::Restart),
            ]
        );
    }

    #[test]
    fn only_the_clock_tick_streams_and_timer_limits_are_live() {
        let path = |key: &str| -> Vec<String> { key.split('.').map(String::from).collect() };
        for key in [
            "clock.ticks",
            "clock.max_payload",
            "clock.max_timers",
            "clock.late_after",
        ] {
            assert_eq!(classify(&path(key)), Apply::Live, "{key}");
        }
        for key in [
            "clock.publisher",
            "clock.publisher_extra",
            "clock.timers",
            "clock.min_period",
            "clock.catch_up",
            "clock.realtime",
            "clock.idle_poll",
            "clock.restart_grace",
            "clock.unknown",
            "clock",
        ] {
            assert_eq!(classify(&path(key)), Apply::Restart, "{key}");
        }
        // A stream's period or precision edited in place is a change of the one array.
        let old = "[clock]\nrealtime = true\n[[clock.ticks]]\nperiod = \"1s\"\n";
        let new = "[clock]\nrealtime = false\n[[clock.ticks]]\nperiod = \"1s\"\nprecision = \"high\"\n[[clock.ticks]]\nperiod = \"5ms\"\n";
        assert_eq!(
            changes(old, new),
            vec![
                ("clock.realtime".into(), Apply::Restart),
                ("clock.ticks".into(), Apply::Live),
            ]
        );
        // Removing the whole array brings back the defaults: still a live change.
        assert_eq!(
            changes(old, "[clock]\nrealtime = true\n"),
            vec![("clock.ticks".into(), Apply::Live)]
        );
    }

    #[test]
    fn clock_edits_reach_the_ticker_and_the_timers_thread_only_when_their_keys_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depot.toml");
        std::fs::write(&path, "[[clock.ticks]]\nperiod = \"1s\"\n").unwrap();
        let (retention, _retention_rx) = mpsc::channel();
        let (ticks, ticks_rx) = mpsc::channel();
        let (limits, limits_rx) = mpsc::channel();
        let state = Arc::new(ReloadState::default());
        let targets = Targets {
            retention,
            queue: None,
            clock: Some(depot_clock::ClockReconfigurer::new(ticks, Some(limits))),
        };
        let mut reloader = Reloader::new(path.clone(), targets, state.clone());
        std::fs::write(
            &path,
            "[[clock.ticks]]\nperiod = \"1s\"\n[[clock.ticks]]\nperiod = \"5ms\"\n",
        )
        .unwrap();
        reloader.reload();
        let sent = ticks_rx.try_recv().unwrap();
        let periods: Vec<Duration> = sent.iter().map(|t| t.period).collect();
        assert_eq!(periods, [Duration::from_secs(1), Duration::from_millis(5)]);
        assert_eq!(
            state.last().unwrap().applied,
            vec!["clock.ticks".to_string()]
        );

        // Restart-only clock keys reach nobody.
        std::fs::write(
            &path,
            "[clock]\ncatch_up = \"2s\"\n[[clock.ticks]]\nperiod = \"1s\"\n[[clock.ticks]]\nperiod = \"5ms\"\n",
        )
        .unwrap();
        reloader.reload();
        assert!(ticks_rx.try_recv().is_err());
        assert_eq!(
            state.last().unwrap().restart_needed,
            vec!["clock.catch_up".to_string()]
        );

        // No array at all: the built-in streams; a new timer limit with it.
        std::fs::write(&path, "[clock]\ncatch_up = \"2s\"\nmax_timers = 7\n").unwrap();
        reloader.reload();
        let sent = ticks_rx.try_recv().unwrap();
        assert_eq!(sent, depot_clock::ClockConfig::default().ticks);
        let limits = limits_rx.try_recv().unwrap();
        assert_eq!(limits.max_timers, 7);
        assert_eq!(limits.late_after, Duration::from_millis(100), "the default");
    }

    #[test]
    fn removed_keys_count_as_changes() {
        assert_eq!(
            changes("[queue]\nhwm = 3\npull = \"\"\n", "[queue]\n"),
            vec![
                ("queue.hwm".into(), Apply::Live),
                ("queue.pull".into(), Apply::Restart),
            ]
        );
        assert_eq!(
            changes("[queue.queues.gone]\n", ""),
            vec![("queue.queues.gone".into(), Apply::Live)]
        );
    }

    #[test]
    fn an_invalid_file_is_refused_and_the_applied_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depot.toml");
        std::fs::write(&path, "[queue]\nhwm = 3\n").unwrap();
        let (retention, _retention_rx) = mpsc::channel();
        let (queue, queue_rx) = mpsc::channel();
        let state = Arc::new(ReloadState::default());
        let targets = Targets {
            retention,
            queue: Some(queue),
            clock: None,
        };
        let mut reloader = Reloader::new(path.clone(), targets, state.clone());
        std::fs::write(&path, "[queue]\nhwm = \"many\"\n").unwrap();
        reloader.reload();
        assert_eq!(state.failed.load(Ordering::Relaxed), 1);
        let last = state.last().unwrap();
        assert!(!last.ok && last.error.unwrap().contains("hwm"));
        assert!(queue_rx.try_recv().is_err());

        std::fs::write(&path, "[queue]\nhwm = 5\n[store]\nsync = false\n").unwrap();
        reloader.reload();
        assert_eq!(state.reloads.load(Ordering::Relaxed), 1);
        assert_eq!(queue_rx.try_recv().unwrap().hwm, 5);
        assert_eq!(state.restart_needed.load(Ordering::Relaxed), 1);
        let last = state.last().unwrap();
        assert_eq!(last.applied, vec!["queue.hwm".to_string()]);
        assert_eq!(last.restart_needed, vec!["store.sync".to_string()]);

        // Back to the started value: nothing waits for a restart any more.
        std::fs::write(&path, "[queue]\nhwm = 5\n").unwrap();
        reloader.reload();
        assert_eq!(state.restart_needed.load(Ordering::Relaxed), 0);
        assert!(queue_rx.try_recv().is_err(), "no queue key changed");
    }
}
