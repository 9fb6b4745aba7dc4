//! The cache's state machine: the ordered map, the sequence, and TTL expiry. Pure code: the
//! server feeds it collector messages and a clock, and publishes what it returns.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::KvMsg;

/// Property carrying a time to live.
pub const TTL: &str = "ttl";

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The message as last published (sequence, uuid, properties, body).
    pub msg: KvMsg,
    /// Absolute expiry, ms since the Unix epoch.
    pub expires_ms: Option<u64>,
}

/// What installing a snapshot changed, to be written to the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Keys that are gone.
    pub removed: Vec<Vec<u8>>,
    /// Entries that are new or differ.
    pub changed: Vec<KvMsg>,
}

/// The map with its sequence.
#[derive(Debug, Default)]
pub struct CacheState {
    entries: BTreeMap<Vec<u8>, Entry>,
    /// (expiry, key) of every entry with a ttl, soonest first, so a sweep touches only what
    /// is due.
    expiries: BTreeSet<(u64, Vec<u8>)>,
    /// Sequence of the last published change.
    seq: u64,
}

/// Reads a `ttl` property as an absolute expiry in ms since the epoch. Relative values are
/// seconds from `now_ms`; values that can only be absolute times (after the year 2001 in ms
/// or seconds, as the Guide's servers rewrite them) are kept as such.
pub fn expiry_ms(msg: &KvMsg, now_ms: u64) -> Option<u64> {
    let ttl: f64 = msg.property(TTL)?.trim().parse().ok()?;
    if !ttl.is_finite() || ttl <= 0.0 {
        return None;
    }
    const ABSOLUTE_MS: f64 = 978_307_200_000.0; // 2001-01-01 in ms
    const ABSOLUTE_S: f64 = 978_307_200.0; // 2001-01-01 in s
    Some(if ttl >= ABSOLUTE_MS {
        ttl as u64
    } else if ttl >= ABSOLUTE_S {
        (ttl * 1000.0) as u64
    } else {
        now_ms + (ttl * 1000.0) as u64
    })
}

impl CacheState {
    /// An empty cache continuing after sequence `seq`.
    pub fn new(seq: u64) -> Self {
        CacheState {
            entries: BTreeMap::new(),
            expiries: BTreeSet::new(),
            seq,
        }
    }

    /// Sequence of the last change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Sets the sequence to `seq`, even lower (a passive server's renumbering, replayed).
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Raises the sequence to at least `seq` (a stored sequence found at start).
    pub fn raise_seq(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Keys stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Applies a client's KVSET: assigns the next sequence, stores the absolute expiry (so the
    /// published `ttl` is absolute ms and survives restarts and failover), and returns the
    /// KVPUB to publish. A delete of a missing key is still published, so peers converge.
    pub fn apply_set(&mut self, mut msg: KvMsg, now_ms: u64) -> KvMsg {
        self.seq += 1;
        msg.seq = self.seq;
        let expires_ms = expiry_ms(&msg, now_ms);
        if let Some(at) = expires_ms {
            msg.set_property(TTL, at.to_string());
        }
        self.store(msg.clone(), expires_ms);
        msg
    }

    /// Applies a message that already has its sequence (recovery, or mirroring the active
    /// server); the sequence never goes back.
    pub fn apply_published(&mut self, msg: KvMsg, now_ms: u64) {
        self.seq = self.seq.max(msg.seq);
        let expires_ms = expiry_ms(&msg, now_ms);
        self.store(msg, expires_ms);
    }

    fn store(&mut self, msg: KvMsg, expires_ms: Option<u64>) {
        if msg.is_delete() {
            self.remove(&msg.key);
        } else {
            if let Some(at) = expires_ms {
                self.expiries.insert((at, msg.key.clone()));
            }
            let key = msg.key.clone();
            if let Some(old) = self.entries.insert(key, Entry { msg, expires_ms }) {
                self.forget_expiry(&old);
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.entries.remove(key) {
            self.forget_expiry(&old);
        }
    }

    /// Drops the expiry of a replaced or removed entry (unless the new one has the same).
    fn forget_expiry(&mut self, old: &Entry) {
        if let Some(at) = old.expires_ms {
            let current = self.entries.get(&old.msg.key).and_then(|e| e.expires_ms);
            if current != Some(at) {
                self.expiries.remove(&(at, old.msg.key.clone()));
            }
        }
    }

    /// Replaces the state with the active server's snapshot (entries in any order, the
    /// snapshot's sequence `seq`) and returns what changed: keys removed, and entries that are
    /// new or differ. The sequence becomes `seq`, even if lower: a passive server follows the
    /// active server's numbering.
    pub fn install_snapshot(&mut self, entries: Vec<KvMsg>, seq: u64, now_ms: u64) -> Installed {
        let mut incoming: BTreeMap<Vec<u8>, KvMsg> = entries
            .into_iter()
            .filter(|m| !m.is_delete())
            .map(|m| (m.key.clone(), m))
            .collect();
        let removed: Vec<Vec<u8>> = self
            .entries
            .keys()
            .filter(|k| !incoming.contains_key(*k))
            .cloned()
            .collect();
        for key in &removed {
            self.remove(key);
        }
        let mut changed = Vec::new();
        for (key, msg) in std::mem::take(&mut incoming) {
            if self.entries.get(&key).is_some_and(|e| e.msg == msg) {
                continue;
            }
            let expires_ms = expiry_ms(&msg, now_ms);
            self.store(msg.clone(), expires_ms);
            changed.push(msg);
        }
        self.seq = seq;
        Installed { removed, changed }
    }

    /// Removes every key whose expiry has passed and returns the deletes to publish, each with
    /// a new sequence.
    pub fn expire(&mut self, now_ms: u64) -> Vec<KvMsg> {
        let mut deletes = Vec::new();
        while let Some((at, key)) = self.expiries.first().cloned() {
            if at > now_ms {
                break;
            }
            self.expiries.pop_first();
            deletes.push(self.apply_set(KvMsg::new(key, Vec::new()), now_ms));
        }
        deletes
    }

    /// The entries under `subtree` (a key prefix; empty for all), in key order.
    pub fn snapshot<'a>(&'a self, subtree: &'a [u8]) -> impl Iterator<Item = &'a Entry> + 'a {
        self.snapshot_after(subtree, None)
    }

    /// Like [`CacheState::snapshot`], resuming after key `after`, so a snapshot sent in parts
    /// costs no rescans.
    pub fn snapshot_after<'a>(
        &'a self,
        subtree: &'a [u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Included(subtree.to_vec()),
        };
        self.entries
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(subtree))
            .map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_get_increasing_sequences_and_deletes_remove() {
        let mut state = CacheState::new(10);
        let a = state.apply_set(KvMsg::new("/a", "1"), 0);
        let b = state.apply_set(KvMsg::new("/b", "2"), 0);
        assert_eq!((a.seq, b.seq), (11, 12));
        assert_eq!(state.get(b"/a").unwrap().msg.body, b"1");
        let del = state.apply_set(KvMsg::new("/a", ""), 0);
        assert_eq!(del.seq, 13);
        assert!(state.get(b"/a").is_none());
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn ttl_becomes_absolute_and_expiry_publishes_deletes() {
        let mut state = CacheState::new(0);
        let mut msg = KvMsg::new("/session/1", "x");
        msg.set_property(TTL, "2");
        let published = state.apply_set(msg, 1_000_000_000_000);
        assert_eq!(published.property(TTL), Some("1000000002000"));
        assert!(state.expire(1_000_000_001_999).is_empty());
        let deletes = state.expire(1_000_000_002_000);
        assert_eq!(deletes.len(), 1);
        assert!(deletes[0].is_delete());
        assert_eq!(deletes[0].seq, 2);
        assert!(state.get(b"/session/1").is_none());
    }

    #[test]
    fn absolute_ttls_from_other_servers_are_kept() {
        let now = 1_700_000_000_000;
        let mut ms = KvMsg::new("/k", "v");
        ms.set_property(TTL, "1700000005000");
        assert_eq!(expiry_ms(&ms, now), Some(1_700_000_005_000));
        let mut secs = KvMsg::new("/k", "v");
        secs.set_property(TTL, "1700000005");
        assert_eq!(expiry_ms(&secs, now), Some(1_700_000_005_000));
        let mut junk = KvMsg::new("/k", "v");
        junk.set_property(TTL, "soon");
        assert_eq!(expiry_ms(&junk, now), None);
        junk.set_property(TTL, "-3");
        assert_eq!(expiry_ms(&junk, now), None);
    }

    #[test]
    fn snapshots_filter_by_subtree_in_key_order() {
        let mut state = CacheState::new(0);
        for key in ["/b/2", "/a/1", "/b/1", "/c", "/b"] {
            state.apply_set(KvMsg::new(key, "v"), 0);
        }
        let keys: Vec<&[u8]> = state
            .snapshot(b"/b/")
            .map(|e| e.msg.key.as_slice())
            .collect();
        assert_eq!(keys, vec![&b"/b/1"[..], b"/b/2"]);
        assert_eq!(state.snapshot(b"").count(), 5);
        let rest: Vec<&[u8]> = state
            .snapshot_after(b"/b", Some(b"/b/1"))
            .map(|e| e.msg.key.as_slice())
            .collect();
        assert_eq!(rest, vec![&b"/b/2"[..]]);
    }

    #[test]
    fn mirrored_messages_keep_their_sequence_and_never_go_back() {
        let mut state = CacheState::new(0);
        let mut msg = KvMsg::new("/m", "v");
        msg.seq = 50;
        state.apply_published(msg.clone(), 0);
        msg.seq = 40;
        state.apply_published(msg, 0);
        assert_eq!(state.seq(), 50);
        assert_eq!(state.apply_set(KvMsg::new("/n", "v"), 0).seq, 51);
    }

    #[test]
    fn installing_a_snapshot_reports_only_what_changed_and_takes_its_sequence() {
        let mut state = CacheState::new(0);
        for key in ["/same", "/gone", "/changed"] {
            state.apply_set(KvMsg::new(key, "old"), 0);
        }
        let mut same = state.get(b"/same").unwrap().msg.clone();
        same.seq = 1;
        let mut changed = KvMsg::new("/changed", "new");
        changed.seq = 7;
        let mut added = KvMsg::new("/added", "x");
        added.seq = 6;
        let installed = state.install_snapshot(vec![same, changed.clone(), added.clone()], 2, 0);
        assert_eq!(installed.removed, vec![b"/gone".to_vec()]);
        assert_eq!(installed.changed, vec![added, changed]);
        // The active server's numbering wins, even below the old local sequence.
        assert_eq!(state.seq(), 2);
        assert_eq!(state.len(), 3);
        assert_eq!(state.get(b"/changed").unwrap().msg.body, b"new");
    }

    #[test]
    fn a_replaced_or_deleted_key_no_longer_expires() {
        let mut state = CacheState::new(0);
        let mut short = KvMsg::new("/k", "1");
        short.set_property(TTL, "1");
        state.apply_set(short.clone(), 0);
        // Replaced without a ttl: it stays.
        state.apply_set(KvMsg::new("/k", "2"), 0);
        assert!(state.expire(10_000).is_empty());
        assert_eq!(state.get(b"/k").unwrap().msg.body, b"2");
        // Set again with a ttl, then deleted: nothing left to expire.
        state.apply_set(short, 0);
        state.apply_set(KvMsg::new("/k", ""), 0);
        assert!(state.expire(10_000).is_empty());
        // Two keys due at once expire together, in one sweep.
        for key in ["/a", "/b"] {
            let mut msg = KvMsg::new(key, "v");
            msg.set_property(TTL, "1");
            state.apply_set(msg, 0);
        }
        assert_eq!(state.expire(1_000).len(), 2);
        assert!(state.is_empty());
    }
}
