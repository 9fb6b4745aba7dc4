//! Loss accounting through Depot's own sequence numbers (pure): per stream, the next sequence
//! expected; a jump forward is a gap, and a burst of gaps and fragments with no whole message
//! between them is one data-loss event.

use std::collections::HashMap;

/// What one observation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// Messages missing before this one (0: none).
    pub missing: u64,
    /// A new data-loss event started here.
    pub loss_event: bool,
}

/// Sequence tracking for one bus.
#[derive(Debug, Default)]
pub struct GapTracker {
    /// Last sequence seen per stream key.
    last: HashMap<Vec<u8>, u64>,
    /// Set from a gap or fragment until a whole message follows: one loss, one event.
    in_loss: bool,
}

impl GapTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `seq` of `stream`. The first sequence seen of a stream sets its baseline; a
    /// sequence at or below the last one (a restarted or second publisher) sets it again.
    pub fn observe(&mut self, stream: &[u8], seq: u64) -> Observed {
        self.observe_range(stream, seq, seq)
    }

    /// Records the consecutive sequences `first..=last` of `stream` (a packed message).
    pub fn observe_range(&mut self, stream: &[u8], first: u64, last_seq: u64) -> Observed {
        let missing = match self.last.get_mut(stream) {
            Some(last) => {
                let missing = if first > *last + 1 {
                    first - *last - 1
                } else {
                    0
                };
                *last = last_seq;
                missing
            }
            None => {
                self.last.insert(stream.to_vec(), last_seq);
                0
            }
        };
        let loss_event = missing > 0 && !self.in_loss;
        self.in_loss = false;
        Observed {
            missing,
            loss_event,
        }
    }

    /// Records a whole message that carries no sequence: ends a loss burst.
    pub fn whole(&mut self) {
        self.in_loss = false;
    }

    /// Records a fragment; true when it starts a new data-loss event.
    pub fn fragment(&mut self) -> bool {
        let new_event = !self.in_loss;
        self.in_loss = true;
        new_event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_missing_per_stream() {
        let mut t = GapTracker::new();
        assert_eq!(t.observe(b"a", 10), Observed::default());
        assert_eq!(t.observe(b"a", 11).missing, 0);
        assert_eq!(t.observe(b"b", 1).missing, 0);
        let jump = t.observe(b"a", 15);
        assert_eq!(
            jump,
            Observed {
                missing: 3,
                loss_event: true
            }
        );
        assert_eq!(t.observe(b"b", 2).missing, 0);
        // A restarted publisher starts again lower: a new baseline, not a gap.
        assert_eq!(t.observe(b"a", 1).missing, 0);
        assert_eq!(t.observe(b"a", 2).missing, 0);
    }

    #[test]
    fn packed_ranges_continue_each_other_and_gaps_between_them_count() {
        let mut t = GapTracker::new();
        assert_eq!(t.observe_range(b"a", 1, 100).missing, 0);
        assert_eq!(t.observe_range(b"a", 101, 150).missing, 0);
        assert_eq!(t.observe(b"a", 151).missing, 0);
        assert_eq!(t.observe_range(b"a", 200, 210).missing, 48);
        assert_eq!(t.observe_range(b"a", 211, 211).missing, 0);
    }

    #[test]
    fn a_fragment_and_the_gap_after_it_are_one_event() {
        let mut t = GapTracker::new();
        t.observe(b"a", 1);
        assert!(t.fragment());
        assert!(!t.fragment());
        let after = t.observe(b"a", 5);
        assert_eq!(
            after,
            Observed {
                missing: 3,
                loss_event: false
            }
        );
        // The next loss is a new event.
        assert!(t.observe(b"a", 9).loss_event);
        t.whole();
        assert!(t.fragment());
    }
}
