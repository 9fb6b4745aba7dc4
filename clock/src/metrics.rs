//! Counters of the clock: a lateness histogram per tick stream, and the timers' counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use depot_common::metrics::{Kind, MetricsText};

/// Upper bounds of the lateness buckets, in microseconds.
pub const LATENESS_BUCKETS_US: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 100_000,
];

/// A histogram of tick lateness (send time minus scheduled time).
#[derive(Debug, Default)]
pub struct Lateness {
    /// Counts per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENESS_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Lateness {
    /// Records one tick `late_ns` after its schedule.
    pub fn observe(&self, late_ns: u64) {
        let bucket = LATENESS_BUCKETS_US
            .iter()
            .position(|&us| late_ns <= us * 1_000)
            .unwrap_or(LATENESS_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(late_ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Ticks observed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Cumulative counts per bound (`None` = +Inf).
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, bucket)| {
                total += bucket.load(Ordering::Relaxed);
                (LATENESS_BUCKETS_US.get(i).copied(), total)
            })
            .collect()
    }
}

/// Counters of one tick stream.
#[derive(Debug)]
pub struct StreamMetrics {
    /// `tick.<period>`.
    pub topic: String,
    /// Ticks sent.
    pub sent: AtomicU64,
    /// Ticks skipped (older than the catch-up window).
    pub skipped: AtomicU64,
    /// Send time minus scheduled time.
    pub lateness: Lateness,
}

impl StreamMetrics {
    /// Zeroed counters for `topic`.
    pub fn new(topic: String) -> Self {
        StreamMetrics {
            topic,
            sent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            lateness: Lateness::default(),
        }
    }
}

/// Counters of the clock.
#[derive(Debug, Default)]
pub struct ClockMetrics {
    /// One per running tick stream, in configuration order; the ticker replaces the list when
    /// a live reload adds or removes streams (a removed stream's counters go with it).
    pub streams: Mutex<Vec<Arc<StreamMetrics>>>,
    /// Tick streams of a live reload that were refused (the running ones go on).
    pub streams_refused: AtomicU64,
    /// Timers stored and not yet done.
    pub timers_pending: AtomicU64,
    /// Timers added.
    pub timers_added: AtomicU64,
    /// Firings sent.
    pub timers_fired: AtomicU64,
    /// Firings marked late.
    pub timers_late: AtomicU64,
    /// Timers cancelled.
    pub timers_cancelled: AtomicU64,
    /// Firings to a requester that was not connected (or whose pipe was full).
    pub timers_undelivered: AtomicU64,
    /// Periods of periodic timers skipped after downtime.
    pub timers_skipped_periods: AtomicU64,
    /// Timer requests refused (malformed, unknown id, limits).
    pub rejected: AtomicU64,
    /// Topic firings that could not be handed to the publisher.
    pub publish_failed: AtomicU64,
}

impl ClockMetrics {
    /// Counters for streams named `topics`.
    pub fn new(topics: impl IntoIterator<Item = String>) -> Self {
        ClockMetrics {
            streams: Mutex::new(
                topics
                    .into_iter()
                    .map(|topic| Arc::new(StreamMetrics::new(topic)))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// The running streams' counters.
    pub fn streams(&self) -> Vec<Arc<StreamMetrics>> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the running streams' counters.
    pub(crate) fn set_streams(&self, streams: Vec<Arc<StreamMetrics>>) {
        *self.streams.lock().unwrap_or_else(|e| e.into_inner()) = streams;
    }

    /// Writes the counters as Prometheus text.
    pub fn render(&self, m: &mut MetricsText) {
        let streams = self.streams();
        let name = "depot_clock_tick_lateness_seconds";
        m.family(
            name,
            Kind::Histogram,
            "Tick send time minus scheduled time, per stream",
        );
        for stream in &streams {
            let bucket = format!("{name}_bucket");
            for (bound, count) in stream.lateness.cumulative() {
                let le =
                    bound.map_or_else(|| "+Inf".to_string(), |us| (us as f64 / 1e6).to_string());
                m.sample(
                    &bucket,
                    &[("stream", &stream.topic), ("le", &le)],
                    count as f64,
                );
            }
            m.sample(
                &format!("{name}_sum"),
                &[("stream", &stream.topic)],
                stream.lateness.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            );
            m.sample(
                &format!("{name}_count"),
                &[("stream", &stream.topic)],
                stream.lateness.count() as f64,
            );
        }
        type Field = fn(&StreamMetrics) -> &AtomicU64;
        let families: [(&str, &str, Field); 2] = [
            (
                "depot_clock_ticks_sent_total",
                "Ticks sent per stream",
                |s| &s.sent,
            ),
            (
                "depot_clock_ticks_skipped_total",
                "Ticks skipped per stream (older than the catch-up window)",
                |s| &s.skipped,
            ),
        ];
        for (name, help, field) in families {
            m.family(name, Kind::Counter, help);
            for stream in &streams {
                m.sample(
                    name,
                    &[("stream", &stream.topic)],
                    field(stream).load(Ordering::Relaxed) as f64,
                );
            }
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        m.single(
            "depot_clock_timers_pending",
            Kind::Gauge,
            "Timers stored and waiting to fire",
            get(&self.timers_pending),
        );
        m.single(
            "depot_clock_tick_streams",
            Kind::Gauge,
            "Tick streams running",
            streams.len() as f64,
        );
        let counters = [
            (
                "depot_clock_tick_streams_refused_total",
                "Tick streams of a live reload refused (the running ones go on)",
                &self.streams_refused,
            ),
            (
                "depot_clock_timers_added_total",
                "Timers added",
                &self.timers_added,
            ),
            (
                "depot_clock_timers_fired_total",
                "Timer firings sent",
                &self.timers_fired,
            ),
            (
                "depot_clock_timers_late_total",
                "Timer firings marked late",
                &self.timers_late,
            ),
            (
                "depot_clock_timers_cancelled_total",
                "Timers cancelled",
                &self.timers_cancelled,
            ),
            (
                "depot_clock_timers_undelivered_total",
                "Reply firings whose requester was not connected",
                &self.timers_undelivered,
            ),
            (
                "depot_clock_timers_skipped_periods_total",
                "Periods of periodic timers skipped after downtime",
                &self.timers_skipped_periods,
            ),
            (
                "depot_clock_rejected_total",
                "Timer requests refused",
                &self.rejected,
            ),
            (
                "depot_clock_publish_failed_total",
                "Topic firings not handed to the publisher",
                &self.publish_failed,
            ),
        ];
        for (name, help, counter) in counters {
            m.single(name, Kind::Counter, help, get(counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_lands_in_cumulative_buckets() {
        let metrics = ClockMetrics::new(["tick.1ms".to_string()]);
        let streams = metrics.streams();
        let lateness = &streams[0].lateness;
        lateness.observe(500); // 0.5 us
        lateness.observe(4_000); // 4 us
        lateness.observe(30_000_000); // 30 ms
        lateness.observe(999_000_000_000); // beyond every bound
        let cumulative = lateness.cumulative();
        assert_eq!(cumulative[0], (Some(1), 1));
        assert_eq!(cumulative[2], (Some(5), 2));
        assert_eq!(cumulative[13], (Some(100_000), 3));
        assert_eq!(cumulative[14], (None, 4));
        let mut text = MetricsText::new();
        metrics.render(&mut text);
        let text = text.finish();
        assert!(
            text.contains("# TYPE depot_clock_tick_lateness_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "depot_clock_tick_lateness_seconds_bucket{stream=\"tick.1ms\",le=\"0.000005\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "depot_clock_tick_lateness_seconds_bucket{stream=\"tick.1ms\",le=\"+Inf\"} 4"
            ),
            "{text}"
        );
        assert!(text.contains("depot_clock_tick_lateness_seconds_count{stream=\"tick.1ms\"} 4"));
        assert!(text.contains("depot_clock_timers_pending 0"));
    }
}
