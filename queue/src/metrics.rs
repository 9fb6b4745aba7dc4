//! The queue service's counters and per-queue figures for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use depot_common::metrics::{Kind, MetricsText};

use crate::queue::QueueStats;

/// Counters of the queue service, plus the latest per-queue figures.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    /// Messages stored from confirmed publishes.
    pub published_confirmed: AtomicU64,
    /// Messages stored from fire-and-forget pushes.
    pub published_push: AtomicU64,
    /// Confirms sent.
    pub confirms: AtomicU64,
    /// Publishes refused because the queue was full (reject policy, or too much waiting).
    pub rejected_full: AtomicU64,
    /// Requests naming a queue that does not exist (auto-create off).
    pub unknown_queue: AtomicU64,
    /// Malformed requests (frames, names, numbers, unknown commands).
    pub malformed: AtomicU64,
    /// Messages over the size limit.
    pub oversize: AtomicU64,
    /// Acks of sequences not in flight to the consumer that sent them.
    pub bad_acks: AtomicU64,
    /// Consumers dropped after heartbeat silence or a vanished peer.
    pub consumers_lost: AtomicU64,
    /// Store writes that failed.
    pub store_errors: AtomicU64,
    /// Per-queue figures, refreshed about once a second.
    pub queues: Mutex<Vec<QueueStats>>,
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl QueueMetrics {
    /// The latest per-queue figures.
    pub fn snapshot(&self) -> Vec<QueueStats> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes the counters and per-queue gauges as Prometheus text.
    pub fn render(&self, m: &mut MetricsText) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        m.family(
            "depot_queue_published_total",
            Kind::Counter,
            "Messages stored, by producer path",
        )
        .sample(
            "depot_queue_published_total",
            &[("path", "confirmed")],
            get(&self.published_confirmed),
        )
        .sample(
            "depot_queue_published_total",
            &[("path", "push")],
            get(&self.published_push),
        );
        m.single(
            "depot_queue_confirms_total",
            Kind::Counter,
            "Publish confirms sent",
            get(&self.confirms),
        );
        m.family(
            "depot_queue_rejected_total",
            Kind::Counter,
            "Requests refused, by reason",
        );
        for (reason, counter) in [
            ("full", &self.rejected_full),
            ("unknown_queue", &self.unknown_queue),
            ("malformed", &self.malformed),
            ("oversize", &self.oversize),
            ("bad_ack", &self.bad_acks),
            ("store", &self.store_errors),
        ] {
            m.sample(
                "depot_queue_rejected_total",
                &[("reason", reason)],
                get(counter),
            );
        }
        m.single(
            "depot_queue_consumers_lost_total",
            Kind::Counter,
            "Consumers dropped after heartbeat silence or a vanished peer",
            get(&self.consumers_lost),
        );
        let queues = self.snapshot();
        type Field = fn(&QueueStats) -> f64;
        let families: [(&str, Kind, &str, Field); 9] = [
            (
                "depot_queue_depth",
                Kind::Gauge,
                "Messages not yet acknowledged by the work queue",
                |q| q.depth as f64,
            ),
            (
                "depot_queue_in_memory",
                Kind::Gauge,
                "Messages in the memory window",
                |q| q.in_memory as f64,
            ),
            (
                "depot_queue_in_memory_bytes",
                Kind::Gauge,
                "Bytes in the memory window",
                |q| q.in_memory_bytes as f64,
            ),
            (
                "depot_queue_on_disk_bytes",
                Kind::Gauge,
                "Bytes of the journal on disk",
                |q| q.on_disk_bytes as f64,
            ),
            (
                "depot_queue_consumers",
                Kind::Gauge,
                "Consumers attached",
                |q| q.consumers as f64,
            ),
            (
                "depot_queue_delivered_total",
                Kind::Counter,
                "Deliveries, redeliveries included",
                |q| q.delivered as f64,
            ),
            (
                "depot_queue_redelivered_total",
                Kind::Counter,
                "Redeliveries",
                |q| q.redelivered as f64,
            ),
            (
                "depot_queue_expired_total",
                Kind::Counter,
                "Messages dropped by TTL",
                |q| q.expired as f64,
            ),
            (
                "depot_queue_dead_lettered_total",
                Kind::Counter,
                "Messages moved to the dead-letter queue",
                |q| q.dead_lettered as f64,
            ),
        ];
        for (name, kind, help, value) in families {
            m.family(name, kind, help);
            for q in &queues {
                m.sample(name, &[("queue", &q.name)], value(q));
            }
        }
    }
}
