//! The ticker: one dedicated thread that owns the clock PUB. It sleeps to each stream's next
//! absolute deadline on CLOCK_MONOTONIC (timer slack reduced to 1 ns), finishing with a short
//! spin: 200 µs for high-precision streams, the thread's learned wake-up lateness (≤ 50 µs) for
//! normal ones. Then it sends the due ticks. Between deadlines it forwards the
//! timers' topic firings (from an inproc PULL) to the same PUB, never past a deadline's margin.
//! A new set of streams (a live reload) arrives over a channel and is applied between sends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::config::{Precision, TickConfig};
use crate::metrics::{ClockMetrics, StreamMetrics};
use crate::protocol::StreamInfo;
use crate::schedule::{self, Schedule, WakeEstimate};
use crate::streams;
use crate::sys::{self, ClockMap};

/// High precision: sleep until this long before the deadline, then spin.
const SPIN_NS: u64 = 200_000;
/// A deadline further than this away is waited for in zmq::poll (forwarding firings).
const POLL_HORIZON_NS: u64 = 3_000_000;
/// Longest single wait, so that a stop request is seen promptly.
const MAX_WAIT_MS: i64 = 50;
/// Firings are forwarded only until this long before the next deadline.
const FORWARD_MARGIN_NS: u64 = 300_000;
/// How often the monotonic-to-wall mapping is checked.
const REMAP_EVERY_NS: u64 = 1_000_000_000;
/// A change of the mapping above this is a stepped wall clock: renew it.
const REMAP_THRESHOLD_NS: u64 = 100_000;
/// How the ticker and the tick publisher's I/O thread are raised. Normal precision too: under
/// nice -10 the I/O thread's wake-up added ~10 µs to the p99 at a subscriber (idle machine).
pub(crate) const BOOST: sys::Boost = sys::Boost::Fifo(10);

/// The running streams as STREAMS reports them, kept by the ticker for the timers thread.
pub(crate) type SharedStreams = Arc<Mutex<Vec<StreamInfo>>>;

/// One tick stream being served.
struct Stream {
    topic: Vec<u8>,
    schedule: Schedule,
    tick: TickConfig,
    metrics: Arc<StreamMetrics>,
}

impl Stream {
    fn new(tick: &TickConfig, now_wall_ns: u64) -> Stream {
        let topic = schedule::topic(tick.period);
        Stream {
            topic: topic.clone().into_bytes(),
            schedule: Schedule::starting_at(tick.period, now_wall_ns),
            tick: tick.clone(),
            metrics: Arc::new(StreamMetrics::new(topic)),
        }
    }
}

/// How STREAMS reports `tick`.
pub(crate) fn stream_info(tick: &TickConfig) -> StreamInfo {
    StreamInfo {
        topic: schedule::topic(tick.period),
        period_ns: u64::try_from(tick.period.as_nanos()).unwrap_or(u64::MAX),
        precision: tick.precision.name().into(),
    }
}

/// What the ticker needs to take new sets of streams while it runs.
pub(crate) struct Reconfigure {
    /// New sets of streams, each the whole `[[clock.ticks]]` of a reloaded file.
    pub updates: mpsc::Receiver<Vec<TickConfig>>,
    /// The running clock's shortest period: new streams below it are refused.
    pub min_period: Duration,
    /// Where the running streams are published for STREAMS.
    pub infos: SharedStreams,
    /// The clock started without streams although it would raise its threads (realtime) or
    /// hold idle CPUs polling for them: streams added live run without either until a restart.
    pub unraised: bool,
}

/// The ticker thread's state.
pub(crate) struct Ticker {
    /// The clock PUB (ticks and topic firings).
    pub publisher: zmq::Socket,
    /// Topic firings from the timers thread, already framed.
    pub firings: zmq::Socket,
    streams: Vec<Stream>,
    metrics: Arc<ClockMetrics>,
    reconfigure: Reconfigure,
    catch_up_ns: u64,
    boost: Option<sys::Boost>,
    map: ClockMap,
    last_remap: u64,
    wake: WakeEstimate,
}

impl Ticker {
    /// A ticker for `ticks`; it publishes their counters in `metrics` and their list in
    /// `reconfigure.infos`.
    pub fn new(
        publisher: zmq::Socket,
        firings: zmq::Socket,
        ticks: &[TickConfig],
        metrics: Arc<ClockMetrics>,
        catch_up: std::time::Duration,
        boost: Option<sys::Boost>,
        reconfigure: Reconfigure,
    ) -> Ticker {
        let map = ClockMap::sample();
        let now = map.wall(sys::mono_ns());
        let ticker = Ticker {
            publisher,
            firings,
            streams: ticks.iter().map(|tick| Stream::new(tick, now)).collect(),
            metrics,
            reconfigure,
            catch_up_ns: u64::try_from(catch_up.as_nanos()).unwrap_or(u64::MAX),
            boost,
            map,
            last_remap: sys::mono_ns(),
            wake: WakeEstimate::default(),
        };
        ticker.publish_streams();
        ticker
    }

    /// Makes the running streams visible to `/metrics` and STREAMS.
    fn publish_streams(&self) {
        self.metrics
            .set_streams(self.streams.iter().map(|s| s.metrics.clone()).collect());
        *self
            .reconfigure
            .infos
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            self.streams.iter().map(|s| stream_info(&s.tick)).collect();
    }

    /// Takes the newest set of streams waiting, if any: kept streams keep their schedule (no
    /// gap, no repeat), new ones start at their next boundary, refused ones are logged and
    /// counted while the rest applies.
    fn take_updates(&mut self) {
        let Some(ticks) = self.reconfigure.updates.try_iter().last() else {
            return;
        };
        let running: Vec<TickConfig> = self.streams.iter().map(|s| s.tick.clone()).collect();
        let plan = streams::plan(&running, &ticks, self.reconfigure.min_period);
        for (tick, reason) in &plan.refused {
            self.metrics.streams_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = schedule::topic(tick.period),
                reason,
                "clock: tick stream of the reloaded configuration refused; the others run"
            );
        }
        if plan.added.is_empty() && plan.removed.is_empty() && plan.changed.is_empty() {
            return;
        }
        let now = self.map.wall(sys::mono_ns());
        let mut old = std::mem::take(&mut self.streams);
        for tick in &plan.streams {
            let stream = match old.iter().position(|s| s.tick.period == tick.period) {
                Some(i) => {
                    let mut kept = old.swap_remove(i);
                    kept.tick = tick.clone();
                    kept
                }
                None => Stream::new(tick, now),
            };
            self.streams.push(stream);
        }
        self.publish_streams();
        let topics = |ticks: &[TickConfig]| -> Vec<String> {
            ticks.iter().map(|t| schedule::topic(t.period)).collect()
        };
        let removed: Vec<String> = plan.removed.iter().map(|p| schedule::topic(*p)).collect();
        tracing::info!(
            added = ?topics(&plan.added),
            ?removed,
            precision_changed = ?topics(&plan.changed),
            "clock: tick streams reconfigured live"
        );
        if self.reconfigure.unraised && !self.streams.is_empty() {
            self.reconfigure.unraised = false;
            tracing::warn!("clock: started without tick streams, so the ticker is not raised and idle CPUs do not poll; ticks added live may be later until a restart");
        }
    }

    fn prepare_thread(&self) {
        if let Err(e) = sys::set_timer_slack(1) {
            tracing::warn!(error = %e, "clock: cannot reduce timer slack; ticks may be later");
        }
        if let Some(boost) = self.boost {
            match boost.apply() {
                Ok(()) => tracing::info!(?boost, "clock: ticker thread raised"),
                Err(e) => tracing::info!(
                    error = %e,
                    ?boost,
                    "clock: not permitted to raise the ticker thread; it runs at normal priority"
                ),
            }
        }
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        self.prepare_thread();
        while !stop.load(Ordering::Acquire) {
            self.take_updates();
            let now = sys::mono_ns();
            if now.saturating_sub(self.last_remap) >= REMAP_EVERY_NS {
                self.remap(now);
            }
            let Some(deadline_wall) = self
                .streams
                .iter()
                .map(|s| s.schedule.next_deadline_ns())
                .min()
            else {
                self.wait_for_firings(MAX_WAIT_MS);
                self.forward_firings(u64::MAX);
                continue;
            };
            let deadline = self.map.mono(deadline_wall);
            if deadline > now + POLL_HORIZON_NS {
                let wait_ms = ((deadline - now - POLL_HORIZON_NS / 2) / 1_000_000) as i64;
                self.wait_for_firings(wait_ms.clamp(0, MAX_WAIT_MS));
                self.forward_firings(deadline.saturating_sub(FORWARD_MARGIN_NS));
                continue;
            }
            self.forward_firings(deadline.saturating_sub(FORWARD_MARGIN_NS));
            let high = self.streams.iter().any(|s| {
                s.tick.precision == Precision::High
                    && s.schedule.next_deadline_ns() == deadline_wall
            });
            if high {
                sys::sleep_until_mono(deadline.saturating_sub(SPIN_NS));
                sys::spin_until_mono(deadline);
            } else {
                let target = deadline.saturating_sub(self.wake.early_ns());
                sys::sleep_until_mono(target);
                self.wake.observe(target, sys::mono_ns());
                sys::spin_until_mono(deadline);
            }
            self.send_due();
        }
    }

    /// Renews the mapping if the wall clock was stepped; the schedules then follow wall time
    /// (forward: older ticks skipped and counted; back: nothing sent twice).
    fn remap(&mut self, now: u64) {
        self.last_remap = now;
        let fresh = ClockMap::sample();
        let moved = self.map.distance(&fresh);
        if moved > REMAP_THRESHOLD_NS {
            if moved > 1_000_000 {
                tracing::warn!(
                    moved_us = moved / 1_000,
                    "clock: the wall clock was stepped; tick deadlines follow it"
                );
            }
            self.map = fresh;
        }
    }

    fn send_due(&mut self) {
        let now = self.map.wall(sys::mono_ns());
        for stream in &mut self.streams {
            let metrics = &stream.metrics;
            let due = stream.schedule.take_due(now, self.catch_up_ns);
            if due.skipped > 0 {
                metrics.skipped.fetch_add(due.skipped, Ordering::Relaxed);
            }
            for seq in due.first..=due.last {
                let scheduled = stream.schedule.scheduled_ns(seq);
                let sent = self.map.wall(sys::mono_ns());
                let frames: [&[u8]; 4] = [
                    &stream.topic,
                    &seq.to_be_bytes(),
                    &scheduled.to_be_bytes(),
                    &sent.to_be_bytes(),
                ];
                // A PUB never blocks; at its HWM it drops for the slow subscriber only.
                if let Err(e) = self.publisher.send_multipart(frames, zmq::DONTWAIT) {
                    tracing::warn!(error = %e, "clock: tick not sent");
                    continue;
                }
                metrics.sent.fetch_add(1, Ordering::Relaxed);
                metrics.lateness.observe(sent.saturating_sub(scheduled));
            }
        }
    }

    fn wait_for_firings(&self, timeout_ms: i64) {
        if let Err(e) = self.firings.poll(zmq::POLLIN, timeout_ms) {
            tracing::warn!(error = %e, "clock: poll failed");
            std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(1) as u64));
        }
    }

    /// Forwards waiting topic firings to the PUB until there are none or `until` (monotonic
    /// ns) is near.
    fn forward_firings(&mut self, until: u64) {
        let mut sent = 0u32;
        loop {
            if sent.is_multiple_of(64) && sys::mono_ns() >= until {
                return;
            }
            let Ok(frames) = self.firings.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            if self
                .publisher
                .send_multipart(frames, zmq::DONTWAIT)
                .is_err()
            {
                self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
            }
            sent = sent.wrapping_add(1);
        }
    }
}
