//! A subscription's delivery horizon: how far it may deliver messages for the first time. Pure
//! code.
//!
//! Why: a restart marks an unacknowledged message as redelivered (`redeliveries` ≥ 1) when it
//! may have been delivered before. Storing how far deliveries had gone *after* delivering (as
//! the acks are, every 20 ms) misses the last deliveries before a SIGKILL or power loss, which
//! then come again unmarked. So a horizon is stored *ahead* of the deliveries: a message
//! beyond the durable horizon is delivered for the first time only once a higher horizon is
//! durable (written with the subscription's acks, under the store's group commit), and a
//! restart takes every unacknowledged message up to the stored horizon as possibly delivered.
//!
//! The horizon moves in windows of [`WINDOW`] messages and is written again while half a
//! window is still left, so deliveries rarely wait for a commit (one commit interval at most,
//! after a burst of more than half a window). The price: after a crash up to a window of
//! messages never delivered come marked as well; a mark means "possibly delivered".
//! The alternative, taking every unacknowledged message as possibly delivered after an
//! unclean stop, needs no write but marks a whole backlog (millions for a consumer that was
//! away), which makes the mark useless for deciding whether to deduplicate.

use std::collections::VecDeque;

/// Messages a new horizon reaches beyond the next first delivery.
pub const WINDOW: u64 = 8_192;

/// The horizon of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Horizon {
    /// Stored and durable: first deliveries up to here are allowed.
    durable: u64,
    /// Highest horizon written, durable or not; every write of the subscription stores it.
    target: u64,
    /// Writes of higher horizons waiting for their commit: (ticket, horizon), both increasing.
    pending: VecDeque<(u64, u64)>,
}

impl Horizon {
    /// The horizon found in the store at start (durable: it was read back from it).
    pub fn new(stored: u64) -> Self {
        Horizon {
            durable: stored,
            target: stored,
            pending: VecDeque::new(),
        }
    }

    /// First deliveries up to here are allowed.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The horizon to store with the subscription's acks.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Whether `seq` may be delivered for the first time now.
    pub fn allows(&self, seq: u64) -> bool {
        seq <= self.durable
    }

    /// A new horizon to write, when `next` (the next first delivery, if `next <= last_seq`
    /// a message waits) comes within half a window of the one written; None while enough is
    /// left or nothing waits.
    pub fn wanted(&self, next: u64, last_seq: u64) -> Option<u64> {
        if next > last_seq || next.saturating_add(WINDOW / 2) <= self.target {
            return None;
        }
        Some(next.saturating_sub(1).saturating_add(WINDOW))
    }

    /// Records that `horizon` was stored by the write with `ticket`.
    pub fn written(&mut self, horizon: u64, ticket: u64) {
        if horizon > self.target {
            self.target = horizon;
            self.pending.push_back((ticket, horizon));
        }
    }

    /// Takes in the store's durable watermark: written horizons it covers become durable.
    pub fn advance(&mut self, durable_ticket: u64) {
        while let Some(&(ticket, horizon)) = self.pending.front() {
            if ticket > durable_ticket {
                break;
            }
            self.durable = self.durable.max(horizon);
            self.pending.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_past_the_stored_horizon_is_delivered_before_a_new_one_is_durable() {
        let mut h = Horizon::new(0);
        assert!(!h.allows(1));
        assert_eq!(h.wanted(1, 0), None, "nothing waits");
        let want = h.wanted(1, 5).unwrap();
        assert_eq!(want, WINDOW);
        h.written(want, 7);
        assert_eq!(h.target(), WINDOW, "stored from now on");
        h.advance(6);
        assert!(!h.allows(1), "written, not durable yet");
        h.advance(7);
        assert!(h.allows(1) && h.allows(WINDOW) && !h.allows(WINDOW + 1));
    }

    #[test]
    fn a_new_horizon_is_written_while_half_a_window_is_left() {
        let mut h = Horizon::new(WINDOW);
        assert_eq!(h.wanted(WINDOW / 2, u64::MAX), None);
        let want = h.wanted(WINDOW / 2 + 1, u64::MAX).unwrap();
        assert_eq!(want, WINDOW / 2 + WINDOW);
        h.written(want, 3);
        // Deliveries go on up to the old durable horizon while the write commits.
        assert!(h.allows(WINDOW) && !h.allows(WINDOW + 1));
        assert_eq!(
            h.wanted(WINDOW, u64::MAX),
            None,
            "no second write meanwhile"
        );
        h.advance(3);
        assert!(h.allows(want));
    }

    #[test]
    fn horizons_become_durable_in_ticket_order_and_never_go_back() {
        let mut h = Horizon::new(100);
        h.written(200, 10);
        h.written(300, 11);
        h.written(250, 12);
        assert_eq!(h.target(), 300, "a lower horizon is never stored");
        h.advance(10);
        assert_eq!(h.durable(), 200);
        h.advance(12);
        assert_eq!(h.durable(), 300);
        h.advance(5);
        assert_eq!(h.durable(), 300);
    }

    #[test]
    fn a_failed_write_leaves_the_horizon_and_is_wanted_again() {
        // A refused write (disk full) records nothing: the same horizon is wanted on the
        // next turn, and deliveries up to the durable one go on.
        let h = Horizon::new(10);
        assert_eq!(h.wanted(11, 20), Some(10 + WINDOW));
        assert_eq!(h.wanted(11, 20), Some(10 + WINDOW));
        assert!(h.allows(10) && !h.allows(11));
    }
}
