//! Per-key rate limits: a token bucket per key and service, refilled at the key's rate, holding
//! at most one second's worth (the burst). Pure: the caller passes the time, so tests need no
//! sleeps.

use std::collections::HashMap;
use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `rate` held.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` units a second.
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// The rate it refills at, in units a second.
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }

    /// Changes the rate (the key file was edited), keeping what is held up to the new burst.
    pub fn set_rate(&mut self, rate: u32, now: Instant) {
        self.refill(now);
        self.rate = f64::from(rate);
        self.tokens = self.tokens.min(self.rate);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = self.last.max(now);
    }

    /// Takes `units` if the bucket holds them, else nothing. A message larger than the burst
    /// is taken from a full bucket and leaves it in debt, so a client whose batches exceed one
    /// second's worth is slowed to the rate instead of refused forever.
    pub fn take(&mut self, units: u64, now: Instant) -> bool {
        if units == 0 {
            return true;
        }
        self.refill(now);
        let units = units as f64;
        if self.tokens >= units.min(self.rate) {
            self.tokens -= units;
            true
        } else {
            false
        }
    }
}

/// The buckets of one service thread, by key name.
#[derive(Debug, Default)]
pub struct Buckets {
    by_user: HashMap<String, TokenBucket>,
}

impl Buckets {
    /// Takes `units` from `user`'s bucket at `rate` (None: no limit, and any bucket kept from
    /// an earlier rate is dropped); false when over the limit.
    pub fn take(&mut self, user: &str, rate: Option<u32>, units: u64, now: Instant) -> bool {
        let Some(rate) = rate else {
            if !self.by_user.is_empty() {
                self.by_user.remove(user);
            }
            return true;
        };
        match self.by_user.get_mut(user) {
            Some(bucket) => {
                if bucket.rate() != rate {
                    bucket.set_rate(rate, now);
                }
                bucket.take(units, now)
            }
            None => {
                let mut bucket = TokenBucket::new(rate, now);
                let taken = bucket.take(units, now);
                self.by_user.insert(user.to_string(), bucket);
                taken
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_one_seconds_worth_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        for _ in 0..10 {
            assert!(b.take(1, t0));
        }
        assert!(!b.take(1, t0));
        // 100 ms at 10/s is one token.
        assert!(!b.take(1, t0 + ms(50)));
        assert!(b.take(1, t0 + ms(100)));
        assert!(!b.take(1, t0 + ms(100)));
        // Idle for long: never more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(10, later));
        assert!(!b.take(1, later));
    }

    #[test]
    fn a_refused_take_costs_nothing_and_batches_count_by_units() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, t0);
        assert!(b.take(3, t0));
        assert!(!b.take(3, t0));
        assert!(b.take(2, t0));
        assert!(!b.take(1, t0));
    }

    #[test]
    fn a_batch_beyond_the_burst_passes_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert!(b.take(30, t0));
        // 20 in debt: two seconds until the bucket is back to zero, a third to fill again.
        assert!(!b.take(1, t0 + Duration::from_secs(2)));
        assert!(b.take(1, t0 + ms(2_100)));
        assert!(!b.take(30, t0 + ms(2_500)));
        assert!(b.take(30, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_new_rate_keeps_at_most_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, t0);
        b.set_rate(2, t0);
        assert!(b.take(2, t0));
        assert!(!b.take(1, t0));
        b.set_rate(100, t0 + ms(500));
        // Refilled at the old rate until the change, then at the new one.
        assert!(b.take(1, t0 + ms(500)));
        assert!(b.take(50, t0 + ms(1_000)));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1, t0);
        assert!(b.take(1, t0));
        assert!(!b.take(1, t0 - Duration::from_secs(5)));
        assert!(b.take(1, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn buckets_are_per_key_and_follow_the_rate_they_are_given() {
        let t0 = Instant::now();
        let mut buckets = Buckets::default();
        assert!(buckets.take("a", Some(2), 2, t0));
        assert!(!buckets.take("a", Some(2), 1, t0));
        assert!(buckets.take("b", Some(2), 2, t0));
        // Without a limit everything passes and the old bucket goes.
        assert!(buckets.take("a", None, 1_000, t0));
        assert!(!buckets.by_user.contains_key("a"));
        // Back with a limit: a fresh, full bucket.
        assert!(buckets.take("a", Some(3), 3, t0));
        assert!(!buckets.take("a", Some(3), 1, t0));
        // A changed rate applies to the bucket already there.
        assert!(buckets.take("a", Some(100), 1, t0 + ms(500)));
        assert!(buckets.take("a", Some(100), 50, t0 + ms(1_000)));
        // Nothing to take passes even in debt (a retried message charged already).
        assert!(buckets.take("a", Some(100), 1_000, t0 + ms(5_000)));
        assert!(buckets.take("a", Some(100), 0, t0 + ms(5_000)));
        assert!(!buckets.take("a", Some(100), 1, t0 + ms(5_000)));
    }
}
