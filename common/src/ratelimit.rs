//! Rate-limited warnings: bad input is logged at most once a second per kind, with a count of
//! what was suppressed in between, so a flood of garbage cannot flood the log.

use std::time::{Duration, Instant};

/// One kind of warning.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for RateLimited {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl RateLimited {
    /// At most one message per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimited {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed since the last one)` when a message may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_one_per_interval_and_counts_the_rest() {
        let mut limit = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        limit.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(limit.allow(), Some(2));
    }
}
