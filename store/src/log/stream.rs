//! One stream's in-memory state: its sequence counter, the index of its sealed blocks and the
//! records not yet sealed.

use std::collections::VecDeque;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::block::{BlockMeta, OpenBlock};
use crate::record::Seq;

/// What the `streams` tree keeps per stream name.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct StreamInfo {
    pub id: u32,
    /// Every sequence up to here was removed by retention; numbering continues after it.
    pub deleted_through: Seq,
    /// Timestamp of the last record removed by retention: later records never get an earlier one.
    pub deleted_last_ts: u64,
}

/// A stream's state, guarded by its own mutex.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u32,
    pub name: String,
    /// Sequence the next appended record gets.
    pub next_seq: Seq,
    pub deleted_through: Seq,
    /// Timestamp of the last record retention removed.
    pub deleted_last_ts: u64,
    /// Timestamp of the last record; later records never get an earlier one.
    pub last_ts: u64,
    /// Sealed blocks in sequence order, mirrored in the meta tree.
    pub blocks: VecDeque<BlockMeta>,
    /// Records appended since the last seal.
    pub open: OpenBlock,
    /// Tail pieces holding the front of `open`, in order, mirrored under the stream's tail key
    /// space; removed when the open block is sealed.
    pub tail: Vec<BlockMeta>,
    /// When the open block got its first record: a slow stream's block is sealed when it is
    /// this old, so retention and trimming can remove its records in time.
    pub open_since: Option<Instant>,
    /// Bytes of the sealed blocks' values.
    pub stored_bytes: u64,
    /// Bytes of the sealed blocks' records before compression.
    pub raw_bytes: u64,
    /// Raw size at which the open block is sealed, adapted to the compression ratio.
    pub raw_target: usize,
    /// Cursors appended with records of the open block: key → (last seq, cursor). Written
    /// when that block is sealed.
    pub pending_cursors: std::collections::HashMap<String, (Seq, Vec<u8>)>,
}

impl Stream {
    /// First sequence still stored (equals `next_seq` when the stream is empty).
    pub fn first_seq(&self) -> Seq {
        if let Some(block) = self.blocks.front() {
            block.first_seq
        } else if !self.open.is_empty() {
            self.open.first_seq
        } else {
            self.next_seq
        }
    }

    /// Last sequence assigned, 0 if none ever was.
    pub fn last_seq(&self) -> Seq {
        self.next_seq - 1
    }

    /// Index of the first sealed block that may hold `seq` or a later record.
    pub fn block_index_for_seq(&self, seq: Seq) -> usize {
        self.blocks.partition_point(|b| b.last_seq < seq)
    }

    /// Index of the first sealed block that may hold a record stamped `ts` or later.
    pub fn block_index_for_time(&self, ts: u64) -> usize {
        self.blocks.partition_point(|b| b.last_ts < ts)
    }
}

/// Figures about one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// The stream's name.
    pub name: String,
    /// First stored sequence (greater than `last_seq` when nothing is stored).
    pub first_seq: Seq,
    /// Last assigned sequence, 0 if none.
    pub last_seq: Seq,
    /// Records stored.
    pub records: u64,
    /// Bytes on disk for the stream's sealed blocks plus its unsealed records.
    pub stored_bytes: u64,
    /// The records' bytes before compression.
    pub raw_bytes: u64,
    /// Sealed blocks.
    pub blocks: u64,
}

impl From<&Stream> for StreamStats {
    fn from(s: &Stream) -> Self {
        let first_seq = s.first_seq();
        StreamStats {
            name: s.name.clone(),
            first_seq,
            last_seq: s.last_seq(),
            records: s.next_seq - first_seq,
            stored_bytes: s.stored_bytes + s.open.raw.len() as u64,
            raw_bytes: s.raw_bytes + s.open.raw.len() as u64,
            blocks: s.blocks.len() as u64,
        }
    }
}
