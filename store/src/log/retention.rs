//! Retention: removing a stream's oldest blocks by age, by size or below a sequence while
//! appends go on.

use std::time::Duration;

use super::{lock, recovery, Log};
use crate::block::{self, BlockMeta};
use crate::error::Result;
use crate::log::stream::StreamInfo;
use crate::record::Seq;

/// How much of a stream to keep. Only whole sealed blocks are removed, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    /// Remove blocks whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Remove the oldest blocks while the stream's stored bytes exceed this.
    pub max_bytes: Option<u64>,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Blocks removed.
    pub blocks: u64,
    /// Records removed.
    pub records: u64,
    /// Stored bytes freed.
    pub bytes: u64,
}

/// Blocks removed per hold of the stream's lock, so appends are never held up for long.
const BLOCKS_PER_STEP: usize = 64;

impl Log {
    /// Applies `policy` to `stream` as of `now_ns`.
    pub fn apply_retention(
        &self,
        stream: &str,
        policy: Retention,
        now_ns: u64,
    ) -> Result<RetentionOutcome> {
        let cutoff = policy
            .max_age
            .map(|age| now_ns.saturating_sub(age.as_nanos() as u64));
        self.remove_head_blocks(stream, |head, stored_bytes| {
            let too_old = cutoff.is_some_and(|cutoff| head.last_ts < cutoff);
            let too_big = policy.max_bytes.is_some_and(|max| stored_bytes > max);
            too_old || too_big
        })
    }

    /// Removes the sealed blocks of `stream` whose every record has a sequence of at most
    /// `seq` (a consumer's acknowledged floor, say); numbering continues after them.
    pub fn trim_through(&self, stream: &str, seq: Seq) -> Result<RetentionOutcome> {
        self.remove_head_blocks(stream, |head, _| head.last_seq <= seq)
    }

    /// Removes the oldest sealed blocks while `remove(block, stored bytes of the stream)` holds.
    fn remove_head_blocks(
        &self,
        stream: &str,
        mut remove: impl FnMut(&BlockMeta, u64) -> bool,
    ) -> Result<RetentionOutcome> {
        let mut outcome = RetentionOutcome::default();
        let Some(handle) = self.stream_handle(stream) else {
            return Ok(outcome);
        };
        loop {
            let _gate = self.commit.begin_write(false)?;
            let mut s = lock(&handle);
            let mut removed = 0;
            while removed < BLOCKS_PER_STEP {
                let Some(head) = s.blocks.front().copied() else {
                    break;
                };
                if !remove(&head, s.stored_bytes) {
                    break;
                }
                recovery::remove_block(&self.trees, s.id, &head)?;
                s.blocks.pop_front();
                s.stored_bytes -= u64::from(head.stored_bytes);
                s.raw_bytes -= u64::from(head.raw_bytes);
                s.deleted_through = head.last_seq;
                s.deleted_last_ts = head.last_ts;
                outcome.blocks += 1;
                outcome.records += head.last_seq - head.first_seq + 1;
                outcome.bytes += u64::from(head.stored_bytes);
                removed += 1;
            }
            if removed == 0 {
                break;
            }
            let info = StreamInfo {
                id: s.id,
                deleted_through: s.deleted_through,
                deleted_last_ts: s.deleted_last_ts,
            };
            self.trees
                .streams
                .insert(s.name.as_bytes(), block::encode_versioned(&info)?)?;
        }
        if outcome.blocks > 0 {
            tracing::debug!(
                stream,
                blocks = outcome.blocks,
                records = outcome.records,
                "retention removed blocks"
            );
        }
        Ok(outcome)
    }
}
