//! Which messages a subscription has acknowledged: a floor (everything up to it) and the
//! sparse set above it, and how that is stored in one small value. Pure code.

use std::collections::BTreeSet;

/// Format version of a stored [`AckSet`].
const VERSION: u8 = 1;
/// Acknowledged ranges above the floor kept in a stored value; with 16 bytes each they stay
/// well under the store's 8 KiB value limit. Ranges beyond are not stored: after a restart
/// those messages are delivered again (at least once, never lost).
pub const MAX_STORED_RANGES: usize = 400;

/// Acknowledgements of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckSet {
    /// Every sequence up to here is acknowledged.
    floor: u64,
    /// Acknowledged sequences above `floor + 1`.
    above: BTreeSet<u64>,
}

impl AckSet {
    /// Everything up to `floor` acknowledged, nothing above.
    pub fn new(floor: u64) -> Self {
        AckSet {
            floor,
            above: BTreeSet::new(),
        }
    }

    /// Highest sequence below which everything is acknowledged.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Acknowledged sequences above the floor.
    pub fn sparse(&self) -> usize {
        self.above.len()
    }

    /// Whether `seq` is acknowledged.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    /// Acknowledges `seq`; false if it was already.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq <= self.floor {
            return false;
        }
        if seq != self.floor + 1 {
            return self.above.insert(seq);
        }
        self.floor = seq;
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
        true
    }

    /// Raises the floor to `seq` (messages below it were removed or expired for good).
    pub fn raise_floor(&mut self, seq: u64) {
        if seq <= self.floor {
            return;
        }
        self.floor = seq;
        self.above = self.above.split_off(&(seq + 1));
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
    }

    /// Acknowledged sequences in `from..=to` above the floor, counted.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        self.above.range(from..=to).count() as u64
    }

    /// The first sequence at or after `seq` that is not acknowledged.
    pub fn next_unacked(&self, mut seq: u64) -> u64 {
        seq = seq.max(self.floor + 1);
        for &acked in self.above.range(seq..) {
            if acked != seq {
                break;
            }
            seq += 1;
        }
        seq
    }

    /// The stored form: version, floor, `delivered` (how far deliveries may have gone: the
    /// delivery horizon while running, see `crate::horizon`, or how far they went at a clean
    /// stop; a restart marks unacknowledged messages up to it as redelivered), then runs of
    /// acknowledged sequences.
    pub fn encode(&self, delivered: u64) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.floor.to_be_bytes());
        out.extend_from_slice(&delivered.to_be_bytes());
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &seq in &self.above {
            let full = runs.len() == MAX_STORED_RANGES;
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == seq => *end = seq,
                _ if full => break,
                _ => runs.push((seq, seq)),
            }
        }
        for (start, end) in runs {
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
        }
        out
    }

    /// Reads the stored form back: the set and how far deliveries had gone.
    pub fn decode(bytes: &[u8]) -> Result<(AckSet, u64), String> {
        let Some((&VERSION, rest)) = bytes.split_first() else {
            return Err("unknown format version of a subscription's acknowledgements".into());
        };
        if rest.len() < 16 || (rest.len() - 16) % 16 != 0 {
            return Err(format!(
                "subscription acknowledgements of {} bytes are damaged",
                bytes.len()
            ));
        }
        let word =
            |i: usize| u64::from_be_bytes(rest[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let mut set = AckSet::new(word(0));
        let delivered = word(1);
        for run in 0..(rest.len() - 16) / 16 {
            let (start, end) = (word(2 + run * 2), word(3 + run * 2));
            if start > end || end - start > 10_000_000 {
                return Err("subscription acknowledgements hold a bad range".into());
            }
            for seq in start..=end {
                set.insert(seq);
            }
        }
        Ok((set, delivered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_move_the_floor() {
        let mut set = AckSet::new(0);
        for seq in 1..=5 {
            assert!(set.insert(seq));
        }
        assert_eq!((set.floor(), set.sparse()), (5, 0));
        assert!(!set.insert(3), "twice");
    }

    #[test]
    fn out_of_order_acks_fill_in_and_the_floor_catches_up() {
        let mut set = AckSet::new(10);
        assert!(set.insert(13));
        assert!(set.insert(12));
        assert_eq!(set.floor(), 10);
        assert!(set.contains(12) && !set.contains(11) && set.contains(9));
        assert_eq!(set.next_unacked(1), 11);
        assert_eq!(set.next_unacked(12), 14);
        assert_eq!(set.count_in(11, 20), 2);
        set.insert(11);
        assert_eq!((set.floor(), set.sparse()), (13, 0));
    }

    #[test]
    fn raising_the_floor_drops_what_is_below_and_absorbs_runs() {
        let mut set = AckSet::new(0);
        for seq in [3, 5, 6, 9] {
            set.insert(seq);
        }
        set.raise_floor(4);
        assert_eq!((set.floor(), set.sparse()), (6, 1));
        set.raise_floor(2);
        assert_eq!(set.floor(), 6);
    }

    #[test]
    fn stored_form_round_trips_and_damage_is_reported() {
        let mut set = AckSet::new(100);
        for seq in [102, 103, 104, 110, 200] {
            set.insert(seq);
        }
        let bytes = set.encode(250);
        assert_eq!(AckSet::decode(&bytes).unwrap(), (set, 250));
        assert!(AckSet::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(AckSet::decode(&[]).is_err());
        assert!(AckSet::decode(&[9; 17]).is_err());
    }

    #[test]
    fn stored_form_is_bounded_and_keeps_the_lowest_ranges() {
        let mut set = AckSet::new(0);
        for i in 0..5_000u64 {
            set.insert(2 + i * 2);
        }
        let bytes = set.encode(0);
        assert!(bytes.len() <= 17 + MAX_STORED_RANGES * 16);
        assert!(bytes.len() < depot_store::MAX_KV_VALUE);
        let (back, _) = AckSet::decode(&bytes).unwrap();
        assert!(back.contains(2) && back.contains(2 * MAX_STORED_RANGES as u64));
        assert!(!back.contains(4 + 2 * MAX_STORED_RANGES as u64));
    }
}
