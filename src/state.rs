//! What the running appliance knows about itself: the shared state behind `/health`,
//! `/metrics` and `/status`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use depot_common::metrics::{Kind, MetricsText};
use depot_store::{CommitStats, Durability, Store, StreamStats};
use serde::{Deserialize, Serialize};

/// Shared by the admin endpoint and the background tasks.
pub struct AppState {
    /// The disk core.
    pub store: Arc<Store>,
    /// When serving started, for uptime.
    pub started: Instant,
    /// The data folder as given.
    pub data_dir: PathBuf,
    /// Records removed by retention since start.
    pub retention_removed: AtomicU64,
    /// Admin HTTP requests answered.
    pub http_requests: AtomicU64,
    /// The log service's counters, once it runs.
    pub logd: std::sync::OnceLock<Arc<depot_logd::LogdMetrics>>,
    /// The cache's counters, once it runs.
    pub cache: std::sync::OnceLock<Arc<depot_cache::CacheMetrics>>,
    /// The queue's counters and per-queue figures, once it runs.
    pub queue: std::sync::OnceLock<Arc<depot_queue::QueueMetrics>>,
    /// The clock's counters, once it runs.
    pub clock: std::sync::OnceLock<Arc<depot_clock::ClockMetrics>>,
    /// The multicast buses (running or failed), once started.
    pub multicast: std::sync::OnceLock<Arc<Vec<Arc<depot_multicast::metrics::BusEntry>>>>,
    /// Who may connect, when CURVE is on.
    pub security: std::sync::OnceLock<Arc<depot_common::security::Authorizer>>,
    /// Live reloads of the configuration file, when it is watched.
    pub config_reload: std::sync::OnceLock<Arc<crate::reload::ReloadState>>,
}

/// `/health` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    /// True while every part works.
    pub ok: bool,
    /// "ok", or what is wrong.
    pub status: String,
    /// The last live reload of the configuration, when there was one ("ok", or why the
    /// file was refused); a refused file does not make the appliance unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_reload: Option<String>,
}

/// `/status` body, printed by `depot status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// Depot's version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The data folder.
    pub data_dir: String,
    /// What an acknowledged write survives.
    pub durability: Durability,
    /// Set when the store refuses writes after a failed flush.
    pub poisoned: Option<String>,
    /// Group commit counters.
    pub commits: CommitStats,
    /// Bytes of the database on disk.
    pub disk_bytes: u64,
    /// libzmq version, e.g. "4.3.4".
    pub libzmq: String,
    /// libzmq capabilities of interest (curve, pgm, norm).
    pub libzmq_capabilities: Vec<String>,
    /// Log streams.
    pub streams: Vec<StreamStats>,
    /// Multicast buses.
    #[serde(default)]
    pub buses: Vec<depot_multicast::BusStatus>,
    /// The server's CURVE public key (Z85) when CURVE is on.
    #[serde(default)]
    pub curve_public_key: Option<String>,
    /// The last live reload of the configuration, when there was one.
    #[serde(default)]
    pub config_reload: Option<crate::reload::ReloadReport>,
}

impl AppState {
    /// State for a freshly started appliance.
    pub fn new(store: Arc<Store>, data_dir: PathBuf) -> Self {
        AppState {
            store,
            started: Instant::now(),
            data_dir,
            retention_removed: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            logd: std::sync::OnceLock::new(),
            cache: std::sync::OnceLock::new(),
            queue: std::sync::OnceLock::new(),
            clock: std::sync::OnceLock::new(),
            multicast: std::sync::OnceLock::new(),
            security: std::sync::OnceLock::new(),
            config_reload: std::sync::OnceLock::new(),
        }
    }

    /// Counts one answered admin request.
    pub fn count_http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the appliance can take writes and every configured bus runs.
    pub fn health(&self) -> Health {
        let (ok, status) = self.health_status();
        Health {
            ok,
            status,
            config_reload: self
                .config_reload
                .get()
                .and_then(|r| r.last())
                .map(|r| r.summary()),
        }
    }

    fn health_status(&self) -> (bool, String) {
        if let Some(reason) = self.store.watermark().poisoned {
            return (false, format!("store poisoned: {reason}"));
        }
        if let Err(e @ depot_store::StoreError::DiskFull { .. }) = self.store.check_writable() {
            return (false, e.to_string());
        }
        let failed: Vec<String> = self
            .bus_statuses()
            .into_iter()
            .filter_map(|bus| match bus.state {
                depot_multicast::BusState::Failed(reason) => {
                    Some(format!("multicast bus {:?} failed: {reason}", bus.name))
                }
                depot_multicast::BusState::Running => None,
            })
            .collect();
        if failed.is_empty() {
            (true, "ok".into())
        } else {
            (false, failed.join("; "))
        }
    }

    fn bus_statuses(&self) -> Vec<depot_multicast::BusStatus> {
        self.multicast
            .get()
            .map(|buses| buses.iter().map(|b| b.status()).collect())
            .unwrap_or_default()
    }

    /// The status report.
    pub fn status(&self) -> StatusReport {
        let (major, minor, patch) = zmq::version();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            data_dir: self.data_dir.display().to_string(),
            durability: self.store.durability(),
            poisoned: self.store.watermark().poisoned.map(|r| r.to_string()),
            commits: self.store.commit_stats(),
            disk_bytes: self.store.disk_bytes(),
            libzmq: format!("{major}.{minor}.{patch}"),
            libzmq_capabilities: ["curve", "pgm", "norm", "ipc"]
                .into_iter()
                .filter(|cap| zmq::has(cap).unwrap_or(false))
                .map(String::from)
                .collect(),
            streams: self.store.log().stats(),
            buses: self.bus_statuses(),
            curve_public_key: self.security.get().map(|a| a.server_public().z85()),
            config_reload: self.config_reload.get().and_then(|r| r.last()),
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let status = self.status();
        let mut m = MetricsText::new();
        m.single("depot_up", Kind::Gauge, "1 while the appliance serves", 1.0);
        m.single(
            "depot_uptime_seconds",
            Kind::Gauge,
            "Seconds since the appliance started",
            self.started.elapsed().as_secs_f64(),
        );
        m.single(
            "depot_store_poisoned",
            Kind::Gauge,
            "1 once a failed flush made the store refuse writes",
            f64::from(u8::from(status.poisoned.is_some())),
        );
        m.single(
            "depot_store_disk_full",
            Kind::Gauge,
            "1 while free space is below [store] min_free and writes are refused",
            f64::from(u8::from(self.store.disk_full())),
        );
        m.single(
            "depot_store_commits_total",
            Kind::Counter,
            "Group commits completed",
            status.commits.commits as f64,
        );
        m.single(
            "depot_store_last_commit_seconds",
            Kind::Gauge,
            "Duration of the last group commit (seal, flush, fdatasync)",
            status.commits.last_commit_us as f64 / 1e6,
        );
        m.single(
            "depot_store_disk_bytes",
            Kind::Gauge,
            "Bytes of the database on disk",
            status.disk_bytes as f64,
        );
        m.single(
            "depot_retention_removed_records_total",
            Kind::Counter,
            "Records removed by retention since start",
            self.retention_removed.load(Ordering::Relaxed) as f64,
        );
        m.single(
            "depot_admin_requests_total",
            Kind::Counter,
            "Admin HTTP requests answered",
            self.http_requests.load(Ordering::Relaxed) as f64,
        );
        type Field = fn(&StreamStats) -> u64;
        let families: [(&str, &str, Field); 3] = [
            ("depot_log_records", "Records stored per stream", |s| {
                s.records
            }),
            ("depot_log_last_seq", "Last sequence per stream", |s| {
                s.last_seq
            }),
            ("depot_log_stored_bytes", "Stored bytes per stream", |s| {
                s.stored_bytes
            }),
        ];
        for (name, help, value) in families {
            m.family(name, Kind::Gauge, help);
            for stream in &status.streams {
                m.sample(name, &[("stream", &stream.name)], value(stream) as f64);
            }
        }
        if let Some(logd) = self.logd.get() {
            logd.render(&mut m);
        }
        if let Some(cache) = self.cache.get() {
            cache.render(&mut m);
        }
        if let Some(queue) = self.queue.get() {
            queue.render(&mut m);
        }
        if let Some(clock) = self.clock.get() {
            clock.render(&mut m);
        }
        if let Some(buses) = self.multicast.get() {
            let entries: Vec<&depot_multicast::metrics::BusEntry> =
                buses.iter().map(|b| b.as_ref()).collect();
            depot_multicast::metrics::render(&entries, &mut m);
        }
        if let Some(security) = self.security.get() {
            security.metrics.render(&mut m);
        }
        if let Some(reload) = self.config_reload.get() {
            reload.render(&mut m);
        }
        m.finish()
    }
}
