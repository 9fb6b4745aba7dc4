//! Tick schedule math, pure: names of periods, the aligned schedule (`seq = time / period`), and
//! what to send when the ticker wakes up (catch-up within a window, older ticks skipped).
//!
//! Tick `seq` of a stream is scheduled at `seq * period` nanoseconds since the Unix epoch. The
//! schedule is therefore aligned to multiples of the period since the epoch: a period that
//! divides a second (1ms, 10ms, 250ms) ticks on second boundaries, one that divides a minute
//! (1s, 15s, 1m) on minute boundaries. A restart neither resets nor repeats a sequence.

use std::time::Duration;

/// The topic of a stream: `tick.<period>`, e.g. `tick.1ms`, `tick.10ms`, `tick.1s`, `tick.1m`.
pub fn topic(period: Duration) -> String {
    format!("tick.{}", period_name(period))
}

/// A period in the largest unit that divides it: `100us`, `1ms`, `1s`, `1m`, `1h`, `1500us`.
pub fn period_name(period: Duration) -> String {
    let ns = period.as_nanos();
    const UNITS: [(u128, &str); 5] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    for (size, unit) in UNITS {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

/// What the ticker does on waking: send `first..=last` (empty when `first > last`) and count
/// `skipped` ticks that were too old to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// First sequence to send now.
    pub first: u64,
    /// Last sequence to send now.
    pub last: u64,
    /// Ticks given up: older than the catch-up window.
    pub skipped: u64,
}

impl Due {
    /// Ticks to send now.
    pub fn count(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }
}

/// One stream's schedule and where it stands.
#[derive(Debug, Clone)]
pub struct Schedule {
    period_ns: u64,
    /// The next sequence to send; never goes back, so no tick is ever sent twice.
    next_seq: u64,
}

impl Schedule {
    /// A schedule whose first tick is the first boundary at or after `now_ns` (wall time).
    pub fn starting_at(period: Duration, now_ns: u64) -> Schedule {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        Schedule {
            period_ns,
            next_seq: now_ns.div_ceil(period_ns),
        }
    }

    /// The period in nanoseconds.
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// The next sequence to send.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Wall time (ns since the epoch) at which `seq` is scheduled.
    pub fn scheduled_ns(&self, seq: u64) -> u64 {
        seq.saturating_mul(self.period_ns)
    }

    /// Wall time of the next tick to send.
    pub fn next_deadline_ns(&self) -> u64 {
        self.scheduled_ns(self.next_seq)
    }

    /// What is due at wall time `now_ns`, and advances past it. Every tick due is sent late
    /// (its send time shows by how much) as long as it is at most `catch_up_ns` old; older
    /// ones (a suspended process, a wall clock stepped forward) are skipped and counted, and
    /// subscribers see the gap in the sequence. A wall clock stepped back sends nothing until
    /// the schedule is reached again: a sequence is never sent twice.
    pub fn take_due(&mut self, now_ns: u64, catch_up_ns: u64) -> Due {
        let newest = now_ns / self.period_ns;
        if newest < self.next_seq {
            return Due {
                first: self.next_seq,
                last: self.next_seq.wrapping_sub(1),
                skipped: 0,
            };
        }
        let oldest_in_window = now_ns.saturating_sub(catch_up_ns).div_ceil(self.period_ns);
        // The newest due tick is always sent, however far behind.
        let first = self.next_seq.max(oldest_in_window.min(newest));
        let due = Due {
            first,
            last: newest,
            skipped: first - self.next_seq,
        };
        self.next_seq = newest + 1;
        due
    }
}

/// Longest head start a normal-precision sleep takes: beyond it, spinning costs more than the
/// lateness it saves.
pub const MAX_WAKE_EARLY_NS: u64 = 50_000;

/// How late this thread wakes from an absolute sleep, learned as a moving average (1/16 weight
/// per sample, capped at [`MAX_WAKE_EARLY_NS`]): normal precision sleeps that much before the
/// deadline and spins the rest, so the typical wake-up cost (~15 µs on this VM) is not added to
/// every tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct WakeEstimate {
    average_ns: u64,
}

impl WakeEstimate {
    /// How long before a deadline to wake.
    pub fn early_ns(&self) -> u64 {
        self.average_ns.min(MAX_WAKE_EARLY_NS)
    }

    /// Records a sleep to `target_ns` that returned at `woke_ns`.
    pub fn observe(&mut self, target_ns: u64, woke_ns: u64) {
        let late = woke_ns.saturating_sub(target_ns).min(4 * MAX_WAKE_EARLY_NS);
        self.average_ns = self.average_ns - self.average_ns / 16 + late / 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn names_periods_in_their_largest_unit() {
        assert_eq!(topic(Duration::from_millis(1)), "tick.1ms");
        assert_eq!(topic(Duration::from_millis(10)), "tick.10ms");
        assert_eq!(topic(Duration::from_secs(1)), "tick.1s");
        assert_eq!(topic(Duration::from_secs(60)), "tick.1m");
        assert_eq!(topic(Duration::from_secs(7200)), "tick.2h");
        assert_eq!(topic(Duration::from_micros(100)), "tick.100us");
        assert_eq!(topic(Duration::from_micros(1500)), "tick.1500us");
        assert_eq!(topic(Duration::from_secs(90)), "tick.90s");
        assert_eq!(topic(Duration::from_nanos(1_500)), "tick.1500ns");
    }

    #[test]
    fn sequence_is_time_over_period_and_aligned() {
        // 12:00:00.0004 → the first 1 ms tick is at 12:00:00.001.
        let now = 1_700_000_000_000 * MS + 400_000;
        let s = Schedule::starting_at(Duration::from_millis(1), now);
        assert_eq!(s.next_seq(), 1_700_000_000_001);
        assert_eq!(s.next_deadline_ns(), 1_700_000_000_001 * MS);
        // Exactly on a boundary: that tick is still to send.
        let s = Schedule::starting_at(Duration::from_secs(1), 1_700_000_000 * 1_000 * MS);
        assert_eq!(s.next_seq(), 1_700_000_000);
        // A restart later continues by time, not from zero.
        let later = Schedule::starting_at(Duration::from_secs(1), 1_700_000_005 * 1_000 * MS + 1);
        assert_eq!(later.next_seq(), 1_700_000_006);
    }

    #[test]
    fn on_time_wake_sends_exactly_one_tick() {
        let mut s = Schedule::starting_at(Duration::from_millis(1), 10 * MS);
        let due = s.take_due(10 * MS + 3_000, 100 * MS);
        assert_eq!(
            due,
            Due {
                first: 10,
                last: 10,
                skipped: 0
            }
        );
        assert_eq!(s.next_seq(), 11);
        // Woken early (spurious): nothing, and the schedule does not move.
        let due = s.take_due(10 * MS + 900_000, 100 * MS);
        assert_eq!(due.count(), 0);
        assert_eq!(s.next_seq(), 11);
    }

    #[test]
    fn late_ticks_within_the_window_are_all_sent_late() {
        let mut s = Schedule::starting_at(Duration::from_millis(1), 10 * MS);
        let due = s.take_due(14 * MS + 500, 100 * MS);
        assert_eq!((due.first, due.last, due.skipped), (10, 14, 0));
        assert_eq!(due.count(), 5);
        assert_eq!(s.next_seq(), 15);
    }

    #[test]
    fn ticks_older_than_the_window_are_skipped_and_counted() {
        let mut s = Schedule::starting_at(Duration::from_millis(1), 10 * MS);
        // Suspended for a second: only the last 100 ms are sent.
        let due = s.take_due(1_010 * MS, 100 * MS);
        assert_eq!((due.first, due.last), (910, 1_010));
        assert_eq!(due.skipped, 900);
        // Window of zero: only the newest tick.
        let mut s = Schedule::starting_at(Duration::from_secs(1), 0);
        let due = s.take_due(5_000 * MS + 10, 0);
        assert_eq!((due.first, due.last, due.skipped), (5, 5, 5));
    }

    #[test]
    fn wall_clock_stepped_back_never_doubles_a_tick() {
        let mut s = Schedule::starting_at(Duration::from_millis(10), 100 * MS);
        let due = s.take_due(100 * MS, 1_000 * MS);
        assert_eq!((due.first, due.last), (10, 10));
        // The clock jumps back 50 ms: ticks 6..=10 are not sent again.
        for now in [50 * MS, 60 * MS, 100 * MS, 109 * MS] {
            assert_eq!(s.take_due(now, 1_000 * MS).count(), 0, "at {now}");
        }
        let due = s.take_due(110 * MS, 1_000 * MS);
        assert_eq!((due.first, due.last, due.skipped), (11, 11, 0));
    }

    #[test]
    fn no_drift_over_hours() {
        // Waking exactly at each deadline for 3 hours of 1 s ticks lands on the boundaries.
        let mut s = Schedule::starting_at(Duration::from_secs(1), 7 * MS);
        for _ in 0..3 * 3600 {
            let deadline = s.next_deadline_ns();
            assert_eq!(deadline % (1_000 * MS), 0);
            assert_eq!(s.take_due(deadline, 0).count(), 1);
        }
        assert_eq!(s.next_seq(), 3 * 3600 + 1);
    }

    #[test]
    fn wake_estimate_follows_the_typical_lateness_and_is_capped() {
        let mut wake = WakeEstimate::default();
        assert_eq!(wake.early_ns(), 0);
        for i in 0..200u64 {
            wake.observe(i * 1_000_000, i * 1_000_000 + 16_000);
        }
        assert!(
            (14_000..=16_000).contains(&wake.early_ns()),
            "{}",
            wake.early_ns()
        );
        // One very late wake-up (a preempted thread) moves it a little, not to the outlier.
        wake.observe(0, 10_000_000);
        assert!(wake.early_ns() <= MAX_WAKE_EARLY_NS);
        for i in 0..400u64 {
            wake.observe(i, i + 1_000_000);
        }
        assert_eq!(wake.early_ns(), MAX_WAKE_EARLY_NS);
        // Woken early (spurious): counts as no lateness.
        for i in 0..400u64 {
            wake.observe(i + 10, i);
        }
        assert!(wake.early_ns() < 1_000, "{}", wake.early_ns());
    }
}
