//! How the cache keeps its state on disk. Every applied change is appended to a change log (a
//! store log stream: records packed in compressed blocks, under the store's group commit, so
//! an update costs a fraction of a sled write). A compactor thread folds the durable part of
//! the log into a key-value tree in the background — one write per key however often it
//! changed — and then trims what it folded. At start: the tree, then the log's tail.
//!
//! The tree: `\0compacted` → (log sequence folded through, cache sequence) as two u64 BE;
//! `\x01<key>` → the entry (`KvMsg::to_bytes`), or for a value too big for one sled value a
//! marker `\xB1` + piece count (u32 BE) with the pieces at `\x02<key><piece u32 BE>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_common::thread::Worker;
use depot_store::{Kv, NewRecord, Store, StoreError, Ticket, MAX_KV_VALUE};

use crate::protocol::KvMsg;
use crate::server::CacheMetrics;
use crate::state::CacheState;

/// The change log's stream. `$` names are internal: logd refuses them from clients.
pub const CHANGE_LOG: &str = "$cache";
/// Key of the compaction mark.
const COMPACTED_KEY: &[u8] = b"\0compacted";
const ENTRY: u8 = 1;
const PIECE: u8 = 2;
/// First byte of an entry stored in pieces (a plain entry starts with a zero length byte).
const PIECES_MARKER: u8 = 0xB1;
/// Bytes per piece of a big value.
const PIECE_BYTES: usize = MAX_KV_VALUE - 64;
/// Change-log records folded per compaction pass.
const COMPACTION_BATCH: u64 = 200_000;
/// Changes waiting in the log that start a compaction before its interval: every pass costs
/// the next commits some time (latency), so passes are rare while few changes wait.
const COMPACTION_BACKLOG: u64 = 100_000;
/// How often the compactor looks at the backlog (and at a stop request).
const BACKLOG_CHECK: Duration = Duration::from_millis(50);
/// Key-value writes of a compaction per store commit, at least (a pass takes at most
/// `COMPACTION_SLICES` commits, so a backlog of distinct keys still folds quickly).
const COMPACTION_SLICE: usize = 128;
/// Most commits one compaction pass spreads its writes over.
const COMPACTION_SLICES: usize = 64;

/// Why stored state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored entry or change does not decode.
    #[error("damaged {what}: {detail}")]
    Damaged {
        /// What was being read.
        what: String,
        /// Why it does not decode.
        detail: String,
    },
}

/// One change-log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A published update (an empty body deletes), with its sequence.
    Update(KvMsg),
    /// The sequence becomes this (a passive server took the active one's numbering).
    Renumber(u64),
}

const UPDATE: u8 = 1;
const RENUMBER: u8 = 2;

impl Change {
    /// The record body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Change::Update(msg) => {
                let mut out = vec![UPDATE];
                out.extend_from_slice(&msg.to_bytes());
                out
            }
            Change::Renumber(seq) => {
                let mut out = vec![RENUMBER];
                out.extend_from_slice(&seq.to_be_bytes());
                out
            }
        }
    }

    /// Reads a record body.
    pub fn decode(body: &[u8]) -> Result<Change, String> {
        match body.split_first() {
            Some((&UPDATE, rest)) => KvMsg::from_bytes(rest)
                .map(Change::Update)
                .map_err(|e| e.to_string()),
            Some((&RENUMBER, rest)) => <[u8; 8]>::try_from(rest)
                .map(|b| Change::Renumber(u64::from_be_bytes(b)))
                .map_err(|_| "renumber record is not 8 bytes".to_string()),
            _ => Err("unknown change kind".to_string()),
        }
    }
}

fn entry_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(ENTRY);
    out.extend_from_slice(key);
    out
}

fn piece_key(key: &[u8], piece: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 5);
    out.push(PIECE);
    out.extend_from_slice(key);
    out.extend_from_slice(&piece.to_be_bytes());
    out
}

/// The compaction mark: log sequence folded through and the cache sequence then; None
/// before the first compaction.
fn read_mark(kv: &Kv) -> Result<Option<(u64, u64)>, PersistError> {
    match kv.get(COMPACTED_KEY)? {
        None => Ok(None),
        Some(value) if value.len() == 16 => {
            let log_seq = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(value[8..].try_into().unwrap_or_default());
            Ok(Some((log_seq, seq)))
        }
        Some(_) => Err(PersistError::Damaged {
            what: "compaction mark".into(),
            detail: "not 16 bytes".into(),
        }),
    }
}

/// Piece count of a stored entry value, if it is stored in pieces.
fn pieces_of(value: &[u8]) -> Option<u32> {
    match value.split_first() {
        Some((&PIECES_MARKER, count)) => <[u8; 4]>::try_from(count).ok().map(u32::from_be_bytes),
        _ => None,
    }
}

/// The cache's disk side: the change log and the compacted tree.
#[derive(Clone)]
pub struct Persist {
    store: Arc<Store>,
    kv: Kv,
    /// Whether any entry may be stored in pieces (seen by `load` or written since); while none
    /// is, replacing an entry needs no read of the old one.
    pieces: Arc<AtomicBool>,
}

impl Persist {
    /// Opens the tree.
    pub fn open(store: Arc<Store>) -> Result<Persist, PersistError> {
        let kv = store.kv("cache")?;
        Ok(Persist {
            store,
            kv,
            pieces: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Rebuilds the state: the compacted tree, then the change log after it.
    pub fn load(&self, now_ms: u64) -> Result<CacheState, PersistError> {
        let mark = read_mark(&self.kv)?;
        let mut state = CacheState::new(0);
        for entry in self.kv.entries() {
            let (key, value) = entry?;
            if key.first() != Some(&ENTRY) {
                continue;
            }
            let bytes = match pieces_of(&value) {
                Some(count) => {
                    self.pieces.store(true, Ordering::Relaxed);
                    self.assemble(&key[1..], count)?
                }
                None => value,
            };
            let msg = KvMsg::from_bytes(&bytes).map_err(|e| PersistError::Damaged {
                what: format!("entry {:?}", String::from_utf8_lossy(&key[1..])),
                detail: e.to_string(),
            })?;
            // Expired keys are loaded too: the first sweep deletes and publishes them.
            state.apply_published(msg, now_ms);
        }
        // The mark's sequence is the compacted one, renumbering included.
        let log_from = match mark {
            Some((log_seq, seq)) => {
                state.set_seq(seq);
                log_seq
            }
            None => 0,
        };
        let last = self.store.log().last_seq(CHANGE_LOG);
        self.replay(log_from + 1, last, |change| match change {
            Change::Update(msg) => state.apply_published(msg, now_ms),
            Change::Renumber(seq) => state.set_seq(seq),
        })?;
        Ok(state)
    }

    /// Calls `apply` with each change of the log in `from..=to`, in order; returns how many.
    fn replay(
        &self,
        from: u64,
        to: u64,
        mut apply: impl FnMut(Change),
    ) -> Result<u64, PersistError> {
        let mut damaged = None;
        let mut count = 0;
        self.store.log().visit(
            CHANGE_LOG,
            from,
            to,
            usize::MAX,
            |record| match Change::decode(record.body) {
                Ok(change) => {
                    count += 1;
                    apply(change);
                    true
                }
                Err(e) => {
                    damaged = Some(PersistError::Damaged {
                        what: format!("change log record {}", record.seq),
                        detail: e,
                    });
                    false
                }
            },
        )?;
        match damaged {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    fn assemble(&self, key: &[u8], count: u32) -> Result<Vec<u8>, PersistError> {
        let mut bytes = Vec::new();
        for piece in 0..count {
            match self.kv.get(&piece_key(key, piece))? {
                Some(part) => bytes.extend_from_slice(&part),
                None => {
                    return Err(PersistError::Damaged {
                        what: format!("entry {:?}", String::from_utf8_lossy(key)),
                        detail: format!("piece {piece} of {count} is missing"),
                    })
                }
            }
        }
        Ok(bytes)
    }

    /// Appends changes to the log; returns the ticket and the log sequence of the last one.
    pub fn append(&self, changes: &[Change]) -> Result<(Ticket, u64), PersistError> {
        let bodies: Vec<Vec<u8>> = changes.iter().map(Change::encode).collect();
        let records: Vec<NewRecord<'_>> = bodies
            .iter()
            .map(|body| NewRecord {
                level: 0,
                source: "",
                body,
            })
            .collect();
        let appended = self.store.log().append(CHANGE_LOG, &records)?;
        Ok((appended.ticket, appended.last))
    }

    /// Folds the change log up to `durable_log_seq` (at most one batch) into the tree, waits
    /// until that is durable, then trims the folded log. Returns the records folded.
    pub fn compact(&self, durable_log_seq: u64) -> Result<u64, PersistError> {
        let (from, mut seq) = read_mark(&self.kv)?.unwrap_or((0, 0));
        let upto = durable_log_seq
            .min(self.store.log().last_seq(CHANGE_LOG))
            .min(from + COMPACTION_BATCH);
        if upto <= from {
            return Ok(0);
        }
        let mut latest: BTreeMap<Vec<u8>, KvMsg> = BTreeMap::new();
        let folded = self.replay(from + 1, upto, |change| match change {
            Change::Update(msg) => {
                seq = seq.max(msg.seq);
                latest.insert(msg.key.clone(), msg);
            }
            Change::Renumber(to) => seq = to,
        })?;
        let mut writes = Vec::with_capacity(latest.len() + 1);
        for (key, msg) in &latest {
            self.entry_writes(key, msg, &mut writes)?;
        }
        // One write at a time: measured, sled batches were no cheaper here, and a batch of
        // pieces could make sled write an oversized node to its never-synced blob files.
        // Slices, each made durable before the next: measured at 10 k updates/s with 1,000 keys,
        // folding all at once made the next commit's sled flush take ms every second (set to
        // seen p99 2.7 ms; 1.6 ms with compaction off).
        let slice = COMPACTION_SLICE.max(writes.len() / COMPACTION_SLICES);
        let mut last_ticket = None;
        for (i, (key, value)) in writes.iter().enumerate() {
            if i > 0 && i % slice == 0 {
                if let Some(ticket) = last_ticket {
                    self.store.wait_durable(ticket)?;
                }
            }
            last_ticket = Some(match value {
                Some(value) => self.kv.put(key, value)?,
                None => self.kv.remove(key)?,
            });
        }
        if let Some(ticket) = last_ticket {
            self.store.wait_durable(ticket)?;
        }
        // The mark only once the entries are durable: a crash in between replays the log again.
        let mut mark = upto.to_be_bytes().to_vec();
        mark.extend_from_slice(&seq.to_be_bytes());
        let ticket = self.kv.put(COMPACTED_KEY, &mark)?;
        self.store.wait_durable(ticket)?;
        self.store.log().trim_through(CHANGE_LOG, upto)?;
        Ok(folded)
    }

    /// The writes that store (or remove, for a delete) one compacted entry, in pieces when it
    /// is big, removing pieces of an older big value.
    fn entry_writes(
        &self,
        key: &[u8],
        msg: &KvMsg,
        writes: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), PersistError> {
        let stored = entry_key(key);
        let old_pieces = if self.pieces.load(Ordering::Relaxed) {
            match self.kv.get(&stored)? {
                Some(old) => pieces_of(&old).unwrap_or(0),
                None => 0,
            }
        } else {
            0
        };
        let mut new_pieces: u32 = 0;
        if msg.is_delete() {
            writes.push((stored, None));
        } else {
            let bytes = msg.to_bytes();
            if bytes.len() <= MAX_KV_VALUE {
                writes.push((stored, Some(bytes)));
            } else {
                self.pieces.store(true, Ordering::Relaxed);
                for (i, part) in bytes.chunks(PIECE_BYTES).enumerate() {
                    writes.push((piece_key(key, i as u32), Some(part.to_vec())));
                    new_pieces += 1;
                }
                let mut marker = vec![PIECES_MARKER];
                marker.extend_from_slice(&new_pieces.to_be_bytes());
                writes.push((stored, Some(marker)));
            }
        }
        for piece in new_pieces..old_pieces {
            writes.push((piece_key(key, piece), None));
        }
        Ok(())
    }
}

/// The background thread folding the change log into the tree.
pub struct Compactor {
    worker: Worker,
}

impl Compactor {
    /// Starts compacting every `interval` what `durable_log_seq` says is durable.
    pub fn start(
        persist: Persist,
        durable_log_seq: Arc<AtomicU64>,
        interval: Duration,
        metrics: Arc<CacheMetrics>,
    ) -> std::io::Result<Compactor> {
        let worker = Worker::spawn("cache-compactor", move |stop| {
            // Compaction may lag behind a burst; serving clients may not.
            if !depot_common::thread::lower_priority() {
                tracing::debug!("cache: compactor runs at normal priority");
            }
            let mut failures = 0u32;
            // Where the last pass started, and when.
            let mut passed_at = 0u64;
            let mut last_pass: Option<Instant> = None;
            while !stop.load(Ordering::Acquire) {
                let durable = durable_log_seq.load(Ordering::Acquire);
                let due = last_pass.is_none_or(|at| at.elapsed() >= interval)
                    || durable.saturating_sub(passed_at) >= COMPACTION_BACKLOG;
                if !due {
                    std::thread::sleep(BACKLOG_CHECK);
                    continue;
                }
                passed_at = durable;
                last_pass = Some(Instant::now());
                match persist.compact(durable) {
                    Ok(folded) => {
                        failures = 0;
                        metrics.compacted.fetch_add(folded, Ordering::Relaxed);
                        if folded >= COMPACTION_BATCH {
                            continue;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::error!(error = %e, failures, "cache: compaction failed");
                        }
                    }
                }
            }
        })?;
        Ok(Compactor { worker })
    }

    /// Stops the thread after its current pass.
    pub fn stop(self) {
        self.worker.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        (dir, Arc::new(store))
    }

    fn update(key: &str, body: &[u8], seq: u64) -> Change {
        let mut msg = KvMsg::new(key, body);
        msg.seq = seq;
        Change::Update(msg)
    }

    #[test]
    fn changes_round_trip() {
        for change in [
            update("/k", b"v", 7),
            update("/k", b"", 8),
            Change::Renumber(3),
        ] {
            assert_eq!(Change::decode(&change.encode()), Ok(change));
        }
        assert!(Change::decode(&[9, 1]).is_err());
        assert!(Change::decode(&[RENUMBER, 1]).is_err());
    }

    #[test]
    fn compaction_keeps_the_state_folds_deletes_and_trims_the_log() {
        let (_dir, store) = store();
        let persist = Persist::open(store.clone()).unwrap();
        let big = vec![b'x'; 3 * MAX_KV_VALUE];
        let mut changes = vec![
            update("/a", b"1", 1),
            update("/b", &big, 2),
            update("/c", b"3", 3),
        ];
        // Enough records to seal several blocks, so trimming has whole blocks to remove.
        for i in 0..5_000u64 {
            changes.push(update("/churn", format!("{i}").as_bytes(), 4 + i));
        }
        changes.push(update("/c", b"", 5_004));
        let (ticket, last) = persist.append(&changes).unwrap();
        store.wait_durable(ticket).unwrap();
        let before = persist.load(0).unwrap();
        assert_eq!(persist.compact(last).unwrap(), last);
        assert!(
            store.log().first_seq(CHANGE_LOG) > 1,
            "the folded log was trimmed"
        );
        let after = persist.load(0).unwrap();
        assert_eq!(after.seq(), 5_004);
        assert_eq!(after.len(), 3);
        assert_eq!(after.get(b"/b").unwrap().msg.body, big);
        assert!(after.get(b"/c").is_none());
        assert_eq!(after.get(b"/churn").unwrap().msg.body, b"4999");
        let dump =
            |s: &CacheState| -> Vec<KvMsg> { s.snapshot(b"").map(|e| e.msg.clone()).collect() };
        assert_eq!(dump(&before), dump(&after));

        // A smaller value replaces the big one and its pieces go.
        let (ticket, last) = persist.append(&[update("/b", b"small", 5_005)]).unwrap();
        store.wait_durable(ticket).unwrap();
        persist.compact(last).unwrap();
        assert_eq!(persist.kv.get(&piece_key(b"/b", 0)).unwrap(), None);
        assert_eq!(
            persist.load(0).unwrap().get(b"/b").unwrap().msg.body,
            b"small"
        );
    }

    #[test]
    fn a_renumbering_is_kept_through_compaction() {
        let (_dir, store) = store();
        let persist = Persist::open(store.clone()).unwrap();
        let (ticket, last) = persist
            .append(&[
                update("/a", b"1", 90),
                update("/gone", b"", 40),
                Change::Renumber(40),
            ])
            .unwrap();
        store.wait_durable(ticket).unwrap();
        assert_eq!(persist.load(0).unwrap().seq(), 40);
        persist.compact(last).unwrap();
        assert_eq!(persist.load(0).unwrap().seq(), 40);
    }

    #[test]
    fn only_what_is_durable_is_compacted() {
        let (_dir, store) = store();
        let persist = Persist::open(store.clone()).unwrap();
        persist.append(&[update("/a", b"1", 1)]).unwrap();
        assert_eq!(persist.compact(0).unwrap(), 0);
    }
}
