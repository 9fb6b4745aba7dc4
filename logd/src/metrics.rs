//! logd's counters, exported on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use depot_common::metrics::{Kind, MetricsText};

/// Counters of the log service; every one only goes up, except the two gauges
/// (`live_subscriptions`, `api_replays_active`).
#[derive(Debug, Default)]
pub struct LogdMetrics {
    /// Records stored, by ingest path.
    pub stored_pull: AtomicU64,
    /// Records stored from PUB publishers.
    pub stored_pub: AtomicU64,
    /// Records stored from the acked path.
    pub stored_acked: AtomicU64,
    /// Records stored from syslog.
    pub stored_syslog: AtomicU64,
    /// Records stored from tailed files.
    pub stored_files: AtomicU64,
    /// Messages refused as malformed (frames, names, attributes), all paths.
    pub rejected_malformed: AtomicU64,
    /// Messages refused as larger than the limit.
    pub rejected_oversize: AtomicU64,
    /// Records the store refused (poisoned, closed).
    pub store_errors: AtomicU64,
    /// Acked batches answered with their sequences.
    pub acks_sent: AtomicU64,
    /// Acked batches answered with an error.
    pub ack_errors: AtomicU64,
    /// Acks dropped because their client did not read them (beyond `max_unread_acks`).
    pub acks_dropped: AtomicU64,
    /// Syslog messages whose body was not UTF-8 (kept as bytes).
    pub syslog_invalid_utf8: AtomicU64,
    /// Syslog datagrams dropped because ingest was saturated.
    pub syslog_dropped: AtomicU64,
    /// Records published live.
    pub live_published: AtomicU64,
    /// Packed messages published on the packed live XPUB.
    pub live_packed_published: AtomicU64,
    /// Batches not published live because the live thread fell behind.
    pub live_dropped: AtomicU64,
    /// Replays started over SUB.
    pub replays_started: AtomicU64,
    /// Replays finished with their end marker.
    pub replays_finished: AtomicU64,
    /// Records sent by replays.
    pub replay_records: AtomicU64,
    /// Replay subscriptions refused.
    pub replay_rejected: AtomicU64,
    /// Topic prefixes live subscribers hold now, both live endpoints (a gauge: it falls when
    /// subscribers leave, also when a vanished one is dropped by its missed heartbeats).
    pub live_subscriptions: AtomicU64,
    /// Replays in progress on the replay API (a gauge, set by its thread).
    pub api_replays_active: AtomicU64,
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl LogdMetrics {
    /// Writes the counters as Prometheus text.
    pub fn render(&self, m: &mut MetricsText) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        m.family(
            "depot_logd_stored_records_total",
            Kind::Counter,
            "Records stored, by ingest path",
        )
        .sample(
            "depot_logd_stored_records_total",
            &[("path", "pull")],
            get(&self.stored_pull),
        )
        .sample(
            "depot_logd_stored_records_total",
            &[("path", "pub")],
            get(&self.stored_pub),
        )
        .sample(
            "depot_logd_stored_records_total",
            &[("path", "acked")],
            get(&self.stored_acked),
        )
        .sample(
            "depot_logd_stored_records_total",
            &[("path", "syslog")],
            get(&self.stored_syslog),
        );
        m.family(
            "depot_logd_rejected_total",
            Kind::Counter,
            "Messages refused, by reason",
        )
        .sample(
            "depot_logd_rejected_total",
            &[("reason", "malformed")],
            get(&self.rejected_malformed),
        )
        .sample(
            "depot_logd_rejected_total",
            &[("reason", "oversize")],
            get(&self.rejected_oversize),
        )
        .sample(
            "depot_logd_rejected_total",
            &[("reason", "store")],
            get(&self.store_errors),
        );
        let singles: [(&str, &str, &AtomicU64); 12] = [
            (
                "depot_logd_acks_sent_total",
                "Acked batches confirmed once durable",
                &self.acks_sent,
            ),
            (
                "depot_logd_ack_errors_total",
                "Acked batches answered with an error",
                &self.ack_errors,
            ),
            (
                "depot_logd_acks_dropped_total",
                "Acks dropped because their client did not read them (max_unread_acks)",
                &self.acks_dropped,
            ),
            (
                "depot_logd_syslog_invalid_utf8_total",
                "Syslog messages with a non-UTF-8 body",
                &self.syslog_invalid_utf8,
            ),
            (
                "depot_logd_syslog_dropped_total",
                "Syslog datagrams dropped under overload",
                &self.syslog_dropped,
            ),
            (
                "depot_logd_live_published_total",
                "Records published live (batches nobody subscribes to are skipped)",
                &self.live_published,
            ),
            (
                "depot_logd_live_packed_published_total",
                "Packed messages published on the packed live endpoint",
                &self.live_packed_published,
            ),
            (
                "depot_logd_live_dropped_batches_total",
                "Batches not published live (live thread behind)",
                &self.live_dropped,
            ),
            (
                "depot_logd_replays_started_total",
                "Replays started over SUB",
                &self.replays_started,
            ),
            (
                "depot_logd_replays_finished_total",
                "Replays finished with their end marker",
                &self.replays_finished,
            ),
            (
                "depot_logd_replay_records_total",
                "Records sent by replays",
                &self.replay_records,
            ),
            (
                "depot_logd_replay_rejected_total",
                "Replay subscriptions refused",
                &self.replay_rejected,
            ),
        ];
        for (name, help, counter) in singles {
            m.single(name, Kind::Counter, help, get(counter));
        }
        m.single(
            "depot_logd_live_subscriptions",
            Kind::Gauge,
            "Topic prefixes live subscribers hold now",
            get(&self.live_subscriptions),
        );
        m.family(
            "depot_logd_replays_active",
            Kind::Gauge,
            "Replays in progress, by endpoint",
        )
        .sample(
            "depot_logd_replays_active",
            &[("path", "api")],
            get(&self.api_replays_active),
        );
    }
}
