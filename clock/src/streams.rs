//! How a running set of tick streams becomes a new one (a live reload of `[[clock.ticks]]`),
//! pure. A stream is named by its period (its topic is `tick.<period>`, one PUB carries them
//! all), so a changed period is one stream removed and another added; a stream whose period
//! stays keeps its schedule, and its sequence goes on without a gap.

use std::time::Duration;

use crate::config::TickConfig;
use crate::schedule::period_name;

/// What applying a new set of streams does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamPlan {
    /// The streams to run afterwards, in the new file's order (refused ones left out).
    pub streams: Vec<TickConfig>,
    /// Periods of running streams to stop.
    pub removed: Vec<Duration>,
    /// Streams to start, aligned to their first boundary from now.
    pub added: Vec<TickConfig>,
    /// Kept streams whose precision changes (how the ticker waits for them).
    pub changed: Vec<TickConfig>,
    /// New streams not started, with why; the running set goes on without them.
    pub refused: Vec<(TickConfig, String)>,
}

impl StreamPlan {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.refused.is_empty()
    }
}

/// The plan that turns `running` into `new`. `min_period` is the running clock's (a file may
/// lower it, but that takes a restart): a new stream below it, or a second stream with the same
/// period, is refused. A running stream below it stays (it was accepted at start).
pub fn plan(running: &[TickConfig], new: &[TickConfig], min_period: Duration) -> StreamPlan {
    let mut out = StreamPlan::default();
    for tick in new {
        if out.streams.iter().any(|t| t.period == tick.period) {
            let why = format!("two tick streams with period {}", period_name(tick.period));
            out.refused.push((tick.clone(), why));
            continue;
        }
        match running.iter().find(|r| r.period == tick.period) {
            Some(old) => {
                if old.precision != tick.precision {
                    out.changed.push(tick.clone());
                }
            }
            None if tick.period < min_period => {
                let why = format!(
                    "period {} is below the running min_period {} (a lower min_period needs a restart)",
                    period_name(tick.period),
                    period_name(min_period)
                );
                out.refused.push((tick.clone(), why));
                continue;
            }
            None => out.added.push(tick.clone()),
        }
        out.streams.push(tick.clone());
    }
    out.removed = running
        .iter()
        .filter(|r| !out.streams.iter().any(|t| t.period == r.period))
        .map(|r| r.period)
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;

    fn tick(ms: u64, precision: Precision) -> TickConfig {
        TickConfig {
            period: Duration::from_millis(ms),
            precision,
        }
    }

    fn normal(ms: u64) -> TickConfig {
        tick(ms, Precision::Normal)
    }

    const MIN: Duration = Duration::from_micros(100);

    #[test]
    fn the_same_set_changes_nothing() {
        let set = [normal(1000), normal(10)];
        let plan = plan(&set, &set, MIN);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.streams, set);
    }

    #[test]
    fn streams_are_added_removed_and_kept_by_period() {
        let plan = plan(&[normal(1000), normal(10)], &[normal(10), normal(5)], MIN);
        assert_eq!(plan.streams, [normal(10), normal(5)]);
        assert_eq!(plan.added, [normal(5)]);
        assert_eq!(plan.removed, [Duration::from_secs(1)]);
        assert!(plan.changed.is_empty() && plan.refused.is_empty());
    }

    #[test]
    fn a_changed_period_is_one_stream_removed_and_another_added() {
        let plan = plan(&[normal(10)], &[normal(20)], MIN);
        assert_eq!(plan.added, [normal(20)]);
        assert_eq!(plan.removed, [Duration::from_millis(10)]);
        assert_eq!(plan.streams, [normal(20)]);
    }

    #[test]
    fn a_changed_precision_keeps_the_stream() {
        let plan = plan(&[normal(1)], &[tick(1, Precision::High), normal(1000)], MIN);
        assert_eq!(plan.changed, [tick(1, Precision::High)]);
        assert_eq!(plan.added, [normal(1000)]);
        assert!(plan.removed.is_empty());
    }

    #[test]
    fn new_streams_below_the_running_minimum_or_duplicated_are_refused_and_the_rest_applies() {
        let fast = TickConfig {
            period: Duration::from_micros(50),
            precision: Precision::Normal,
        };
        let p = plan(
            &[normal(10), fast.clone()],
            &[fast.clone(), normal(5), normal(5), normal(10)],
            Duration::from_micros(100),
        );
        // The running 50us stream was accepted at start (a lower minimum then): it stays.
        assert_eq!(p.streams, [fast.clone(), normal(5), normal(10)]);
        assert_eq!(p.added, [normal(5)]);
        assert_eq!(p.refused.len(), 1);
        assert!(p.refused[0].1.contains("two tick streams with period 5ms"));

        let p = plan(&[normal(10)], &[normal(10), fast.clone()], MIN);
        assert_eq!(p.streams, [normal(10)]);
        assert!(p.added.is_empty() && p.removed.is_empty());
        assert_eq!(p.refused[0].0, fast);
        assert!(
            p.refused[0]
                .1
                .contains("below the running min_period 100us"),
            "{}",
            p.refused[0].1
        );
    }

    #[test]
    fn every_stream_can_go_and_come_back() {
        let plan_out = plan(&[normal(10), normal(1000)], &[], MIN);
        assert!(plan_out.streams.is_empty());
        assert_eq!(plan_out.removed.len(), 2);
        let plan_in = plan(&[], &[normal(10)], MIN);
        assert_eq!(plan_in.added, [normal(10)]);
    }
}
