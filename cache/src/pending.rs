//! The passive server's pending list: client KVSETs it received but has not yet seen the
//! active server publish, matched by uuid. On takeover they are applied and published, so an
//! update a client sent while the active server was dying is not lost. Pure code.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::KvMsg;
use crate::state::{expiry_ms, TTL};

/// One KVSET waiting for the active server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingSet {
    msg: KvMsg,
    /// Absolute expiry (ms since the epoch), kept so a takeover does not restart the ttl.
    expires_ms: Option<u64>,
}

/// Why a KVSET was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Without a uuid it could never be matched, and would be applied twice on takeover.
    NoUuid,
    /// The list is at its limit.
    Full,
}

/// KVSETs in arrival order, with an index by uuid.
#[derive(Debug, Default)]
pub struct Pending {
    by_arrival: BTreeMap<u64, PendingSet>,
    by_uuid: HashMap<Vec<u8>, u64>,
    next: u64,
    limit: usize,
}

impl Pending {
    /// An empty list holding at most `limit` updates.
    pub fn new(limit: usize) -> Self {
        Pending {
            limit,
            ..Default::default()
        }
    }

    /// Updates waiting.
    pub fn len(&self) -> usize {
        self.by_arrival.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_arrival.is_empty()
    }

    /// Adds a client's KVSET received at `now_ms`; a relative `ttl` becomes absolute now.
    pub fn add(&mut self, mut msg: KvMsg, now_ms: u64) -> Result<(), Refused> {
        if msg.uuid.is_empty() {
            return Err(Refused::NoUuid);
        }
        if self.by_uuid.contains_key(&msg.uuid) {
            return Ok(());
        }
        if self.by_arrival.len() >= self.limit {
            return Err(Refused::Full);
        }
        let expires_ms = expiry_ms(&msg, now_ms);
        if let Some(at) = expires_ms {
            msg.set_property(TTL, at.to_string());
        }
        let n = self.next;
        self.next += 1;
        self.by_uuid.insert(msg.uuid.clone(), n);
        self.by_arrival.insert(n, PendingSet { msg, expires_ms });
        Ok(())
    }

    /// The active server published the update with `uuid`: it is no longer pending.
    pub fn confirm(&mut self, uuid: &[u8]) -> bool {
        match self.by_uuid.remove(uuid) {
            Some(n) => self.by_arrival.remove(&n).is_some(),
            None => false,
        }
    }

    /// A mark of the arrivals so far, for [`Pending::drop_before`].
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// Drops what arrived before `mark`: a snapshot asked for after those arrivals already
    /// holds their effect (clients send each KVSET to both servers at once), and applying them
    /// again on takeover could put back a value that was overwritten since.
    pub fn drop_before(&mut self, mark: u64) -> usize {
        let keep = self.by_arrival.split_off(&mark);
        let dropped = std::mem::replace(&mut self.by_arrival, keep);
        for set in dropped.values() {
            self.by_uuid.remove(&set.msg.uuid);
        }
        dropped.len()
    }

    /// Takes every update in arrival order, leaving out those whose ttl passed by `now_ms`.
    pub fn drain(&mut self, now_ms: u64) -> Vec<KvMsg> {
        self.by_uuid.clear();
        std::mem::take(&mut self.by_arrival)
            .into_values()
            .filter(|set| set.expires_ms.is_none_or(|at| at > now_ms))
            .map(|set| set.msg)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, uuid: u8) -> KvMsg {
        let mut msg = KvMsg::new(key, "v");
        msg.uuid = vec![uuid; 16];
        msg
    }

    #[test]
    fn confirmed_updates_leave_and_the_rest_drain_in_arrival_order() {
        let mut pending = Pending::new(10);
        pending.add(set("/b", 1), 0).unwrap();
        pending.add(set("/a", 2), 0).unwrap();
        pending.add(set("/c", 3), 0).unwrap();
        assert!(pending.confirm(&[2; 16]));
        assert!(!pending.confirm(&[9; 16]));
        let keys: Vec<Vec<u8>> = pending.drain(0).into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec![b"/b".to_vec(), b"/c".to_vec()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_relative_ttl_becomes_absolute_at_arrival_and_expired_updates_are_left_out() {
        let mut pending = Pending::new(10);
        let mut short = set("/short", 1);
        short.set_property(TTL, "2");
        let mut long = set("/long", 2);
        long.set_property(TTL, "60");
        pending.add(short, 1_000_000_000_000).unwrap();
        pending.add(long, 1_000_000_000_000).unwrap();
        // Takeover 5 s later: the 2 s update has expired, the 60 s one keeps its deadline.
        let drained = pending.drain(1_000_000_005_000);
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].key, b"/long");
        assert_eq!(drained[0].property(TTL), Some("1000000060000"));
    }

    #[test]
    fn updates_without_uuid_and_beyond_the_limit_are_refused() {
        let mut pending = Pending::new(1);
        assert_eq!(pending.add(KvMsg::new("/k", "v"), 0), Err(Refused::NoUuid));
        pending.add(set("/a", 1), 0).unwrap();
        // A resend of the same uuid is not a second entry.
        pending.add(set("/a", 1), 0).unwrap();
        assert_eq!(pending.add(set("/b", 2), 0), Err(Refused::Full));
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_resync_drops_what_arrived_before_it() {
        let mut pending = Pending::new(10);
        pending.add(set("/old", 1), 0).unwrap();
        let mark = pending.mark();
        pending.add(set("/new", 2), 0).unwrap();
        assert_eq!(pending.drop_before(mark), 1);
        assert!(!pending.confirm(&[1; 16]));
        let keys: Vec<Vec<u8>> = pending.drain(0).into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec![b"/new".to_vec()]);
    }
}
