//! The uuids of the last updates taken, so that a client's resend of one already applied is
//! dropped instead of applied twice.

use std::collections::HashSet;

/// The last `capacity` uuids remembered, the oldest forgotten first.
///
/// All its memory is taken and written when it is made. Filled lazily, a window of 65,536
/// uuids grew the appliance's RSS for minutes at a slow update rate (16 bytes per update into
/// a ring of fresh pages), which looked like a leak in the memory soak.
pub struct RecentUuids {
    /// Uuids in arrival order, wrapping around; only the first `len` slots are in use.
    ring: Vec<u128>,
    /// Slot of the next uuid.
    next: usize,
    len: usize,
    set: HashSet<u128>,
}

impl RecentUuids {
    /// An empty window of `capacity` uuids (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let ring = vec![u128::MAX; capacity];
        let mut set = HashSet::with_capacity(capacity);
        // Touches the table's memory now rather than as it fills; clear keeps the allocation.
        set.extend((0..capacity as u128).map(|i| u128::MAX - i));
        set.clear();
        RecentUuids {
            ring,
            next: 0,
            len: 0,
            set,
        }
    }

    /// Remembers `uuid`; false if it is remembered already.
    pub fn insert(&mut self, uuid: u128) -> bool {
        if !self.set.insert(uuid) {
            return false;
        }
        if self.len == self.ring.len() {
            self.set.remove(&self.ring[self.next]);
        } else {
            self.len += 1;
        }
        self.ring[self.next] = uuid;
        self.next = (self.next + 1) % self.ring.len();
        true
    }

    /// Whether `uuid` is remembered.
    pub fn contains(&self, uuid: u128) -> bool {
        self.set.contains(&uuid)
    }

    /// How many uuids are remembered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_is_taken_once() {
        let mut recent = RecentUuids::new(4);
        assert!(recent.insert(7));
        assert!(!recent.insert(7));
        assert!(recent.contains(7));
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn the_oldest_is_forgotten_when_full() {
        let mut recent = RecentUuids::new(3);
        for uuid in 1..=3 {
            assert!(recent.insert(uuid));
        }
        assert!(recent.insert(4));
        assert!(!recent.contains(1), "the oldest went");
        assert!((2..=4).all(|uuid| recent.contains(uuid)));
        assert_eq!(recent.len(), 3);
        // Forgotten, so taken again (and it pushes out the next oldest).
        assert!(recent.insert(1));
        assert!(!recent.contains(2));
    }

    #[test]
    fn the_window_stays_exact_over_many_wraps() {
        let mut recent = RecentUuids::new(100);
        for uuid in 0..10_000u128 {
            assert!(recent.insert(uuid));
            assert!(!recent.insert(uuid));
        }
        assert_eq!(recent.len(), 100);
        assert!((9_900..10_000).all(|uuid| recent.contains(uuid)));
        assert!(!recent.contains(9_899));
    }

    #[test]
    fn uuids_equal_to_the_fill_value_are_remembered_like_any_other() {
        let mut recent = RecentUuids::new(2);
        assert!(recent.insert(u128::MAX));
        assert!(!recent.insert(u128::MAX));
        assert!(recent.insert(1));
        assert!(recent.insert(2));
        assert!(!recent.contains(u128::MAX));
    }
}
