//! Rebuilding the streams' state at open, and cutting a torn tail.
//!
//! Blocks are written fragments first, metadata last, and acknowledged only after a flush that
//! covers every earlier write. So after a crash only the newest blocks of a stream can be
//! incomplete, and none of them was acknowledged: they are removed. Anything damaged before the
//! tail is real corruption and stops the open with an error naming it.

use std::collections::VecDeque;

use super::stream::{Stream, StreamInfo};
use super::Trees;
use crate::block::{self, BlockMeta};
use crate::error::{Result, StoreError};
use crate::keys;

pub(super) fn recover(trees: &Trees) -> Result<Vec<Stream>> {
    let mut streams = Vec::new();
    for entry in trees.streams.iter() {
        let (name, value) = entry?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| StoreError::corrupt("log stream name is not UTF-8"))?;
        let info: StreamInfo = block::decode_versioned(&value, &format!("log stream {name}"))?;
        streams.push(recover_stream(trees, name, info)?);
    }
    Ok(streams)
}

fn recover_stream(trees: &Trees, name: String, info: StreamInfo) -> Result<Stream> {
    let mut blocks = load_metas(trees, &name, info.id)?;

    // Retention removes blocks oldest first, data before metadata, and records how far it got
    // last; finish whatever a crash interrupted.
    while let Some(head) = blocks.front().copied() {
        let retained_away = head.last_seq <= info.deleted_through;
        let data_gone = trees
            .blocks
            .get(keys::fragment_key(info.id, head.first_seq, 0))?
            .is_none();
        if !(retained_away || data_gone) {
            break;
        }
        remove_block(trees, info.id, &head)?;
        blocks.pop_front();
    }

    if let Some(gap) =
        (1..blocks.len()).find(|&i| blocks[i].first_seq != blocks[i - 1].last_seq + 1)
    {
        tracing::warn!(
            stream = %name,
            after = blocks[gap - 1].last_seq,
            "unacknowledged blocks after a gap in the log: removing them"
        );
        for meta in blocks.drain(gap..) {
            remove_block(trees, info.id, &meta)?;
        }
    }

    while let Some(tail) = blocks.back().copied() {
        match check_block(trees, info.id, &tail) {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(stream = %name, first_seq = tail.first_seq, error = %e,
                    "torn block at the end of the log (never acknowledged): removing it");
                remove_block(trees, info.id, &tail)?;
                blocks.pop_back();
            }
        }
    }

    remove_orphan_fragments(trees, info.id, blocks.front(), blocks.back())?;

    let next_seq = blocks
        .back()
        .map_or(0, |b| b.last_seq)
        .max(info.deleted_through)
        + 1;
    let stream = Stream {
        id: info.id,
        name,
        next_seq,
        deleted_through: info.deleted_through,
        deleted_last_ts: info.deleted_last_ts,
        last_ts: blocks
            .back()
            .map_or(0, |b| b.last_ts)
            .max(info.deleted_last_ts),
        stored_bytes: blocks.iter().map(|b| u64::from(b.stored_bytes)).sum(),
        raw_bytes: blocks.iter().map(|b| u64::from(b.raw_bytes)).sum(),
        raw_target: block::raw_target(blocks.back()),
        blocks,
        open: Default::default(),
        pending_cursors: Default::default(),
    };
    Ok(stream)
}

/// Loads the stream's block index; a damaged entry is tolerated only as the last one.
fn load_metas(trees: &Trees, name: &str, id: u32) -> Result<VecDeque<BlockMeta>> {
    let mut blocks = VecDeque::new();
    let mut damaged: Option<(sled::IVec, StoreError)> = None;
    for entry in trees.meta.scan_prefix(keys::stream_prefix(id)) {
        let (key, value) = entry?;
        if let Some((_, e)) = damaged {
            return Err(StoreError::corrupt(format!(
                "log stream {name}: block index entry before sequence {} is damaged ({e}); \
                 restore the data folder from a backup",
                keys::seq_of(&key).unwrap_or(0)
            )));
        }
        match BlockMeta::decode(&value) {
            Ok(meta) if keys::seq_of(&key) == Some(meta.first_seq) => blocks.push_back(meta),
            Ok(_) => damaged = Some((key, StoreError::corrupt("key and entry disagree"))),
            Err(e) => damaged = Some((key, e)),
        }
    }
    if let Some((key, e)) = damaged {
        tracing::warn!(stream = name, error = %e, "torn block index entry at the end of the log: removing it");
        trees.meta.remove(key)?;
    }
    Ok(blocks)
}

fn check_block(trees: &Trees, id: u32, meta: &BlockMeta) -> Result<()> {
    let mut value = Vec::new();
    for i in 0..meta.fragments {
        let fragment = trees
            .blocks
            .get(keys::fragment_key(id, meta.first_seq, i))?
            .ok_or_else(|| StoreError::corrupt(format!("fragment {i} missing")))?;
        value.extend_from_slice(&fragment);
    }
    let mut records = 0u64;
    block::decode_block(&value, meta.first_seq, 0, u64::MAX, &mut |_| {
        records += 1;
        true
    })?;
    if records != meta.last_seq - meta.first_seq + 1 {
        return Err(StoreError::corrupt("record count differs from the index"));
    }
    Ok(())
}

pub(super) fn remove_block(trees: &Trees, id: u32, meta: &BlockMeta) -> Result<()> {
    let start = keys::fragment_key(id, meta.first_seq, 0);
    let end = keys::fragment_key(id, meta.first_seq, u16::MAX);
    for key in trees.blocks.range(start..=end).keys() {
        trees.blocks.remove(key?)?;
    }
    trees.meta.remove(keys::block_key(id, meta.first_seq))?;
    Ok(())
}

/// Removes fragments outside the indexed blocks: leftovers of retention before the first block
/// and of torn writes after the last.
fn remove_orphan_fragments(
    trees: &Trees,
    id: u32,
    first: Option<&BlockMeta>,
    last: Option<&BlockMeta>,
) -> Result<()> {
    let stream_start = keys::fragment_key(id, 0, 0);
    let stream_end = keys::fragment_key(id, u64::MAX, u16::MAX);
    let mut orphans = Vec::new();
    let before = first.map_or(stream_end, |b| keys::fragment_key(id, b.first_seq, 0));
    for key in trees.blocks.range(stream_start..before).keys() {
        orphans.push(key?);
    }
    if let Some(last) = last {
        let after = keys::fragment_key(id, last.first_seq, u16::MAX);
        for key in trees.blocks.range(after..=stream_end).keys() {
            let key = key?;
            if key.as_ref() != after {
                orphans.push(key);
            }
        }
    }
    if !orphans.is_empty() {
        tracing::warn!(
            stream_id = id,
            count = orphans.len(),
            "removing unreferenced block fragments"
        );
    }
    for key in orphans {
        trees.blocks.remove(key)?;
    }
    Ok(())
}
