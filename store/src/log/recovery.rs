//! Rebuilding the streams' state at open, and cutting a torn tail.
//!
//! Blocks are written fragments first, metadata last, and acknowledged only after a flush that
//! covers every earlier write. So after a crash only the newest blocks of a stream can be
//! incomplete, and none of them was acknowledged: they are removed. Anything damaged before the
//! tail is real corruption and stops the open with an error naming it.

use std::collections::VecDeque;
use std::time::Instant;

use super::stream::{Stream, StreamInfo};
use super::Trees;
use crate::block::{self, BlockMeta, OpenBlock};
use crate::error::{Result, StoreError};
use crate::keys;
use crate::record::NewRecord;

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

    let sealed_through = blocks
        .back()
        .map_or(0, |b| b.last_seq)
        .max(info.deleted_through);
    let sealed_last_ts = blocks
        .back()
        .map_or(0, |b| b.last_ts)
        .max(info.deleted_last_ts);
    let (tail, open) = recover_tail(trees, &name, info.id, sealed_through)?;
    let stream = Stream {
        id: info.id,
        name,
        next_seq: tail.last().map_or(sealed_through, |p| p.last_seq) + 1,
        deleted_through: info.deleted_through,
        deleted_last_ts: info.deleted_last_ts,
        last_ts: tail.last().map_or(sealed_last_ts, |p| p.last_ts),
        stored_bytes: blocks.iter().map(|b| u64::from(b.stored_bytes)).sum(),
        raw_bytes: blocks.iter().map(|b| u64::from(b.raw_bytes)).sum(),
        raw_target: block::raw_target(blocks.back()),
        blocks,
        open_since: (!open.is_empty()).then(Instant::now),
        open,
        tail,
        pending_cursors: Default::default(),
    };
    Ok(stream)
}

/// Loads the stream's tail pieces (records committed after its last sealed block) back into an
/// open block. Pieces a sealed block covers are leftovers of a crash between the seal and their
/// removal; pieces after a gap or a torn last one were never acknowledged. All are removed.
fn recover_tail(
    trees: &Trees,
    name: &str,
    id: u32,
    sealed_through: u64,
) -> Result<(Vec<BlockMeta>, OpenBlock)> {
    let tail_id = keys::tail_stream(id);
    let mut pieces = Vec::from(load_metas(trees, name, tail_id)?);
    let mut kept = Vec::with_capacity(pieces.len());
    let mut open = OpenBlock::default();
    let mut next = sealed_through + 1;
    let last_index = pieces.len().saturating_sub(1);
    for (index, piece) in pieces.drain(..).enumerate() {
        if piece.last_seq < next {
            remove_block(trees, tail_id, &piece)?;
            continue;
        }
        if piece.first_seq != next {
            tracing::warn!(
                stream = name,
                expected = next,
                found = piece.first_seq,
                "unacknowledged tail piece after a gap in the log: removing it"
            );
            remove_block(trees, tail_id, &piece)?;
            continue;
        }
        match load_piece(trees, tail_id, &piece, &mut open) {
            Ok(()) => {
                next = piece.last_seq + 1;
                kept.push(piece);
            }
            Err(e) if index == last_index => {
                tracing::warn!(stream = name, first_seq = piece.first_seq, error = %e,
                    "torn tail piece at the end of the log (never acknowledged): removing it");
                remove_block(trees, tail_id, &piece)?;
            }
            Err(e) => {
                return Err(StoreError::corrupt(format!(
                    "log stream {name}: tail piece of sequences {}..={} is damaged ({e}); \
                     restore the data folder from a backup",
                    piece.first_seq, piece.last_seq
                )))
            }
        }
    }
    remove_orphan_fragments(trees, tail_id, kept.first(), kept.last())?;
    open.written_count = open.count;
    open.written_raw = open.raw.len();
    Ok((kept, open))
}

/// Decodes one tail piece into `open`; on failure `open` is as before.
fn load_piece(trees: &Trees, tail_id: u32, piece: &BlockMeta, open: &mut OpenBlock) -> Result<()> {
    let value = read_value(trees, tail_id, piece)?;
    let mut records = Vec::new();
    block::decode_block(&value, piece.first_seq, 0, u64::MAX, &mut |r| {
        records.push(r.to_record());
        true
    })?;
    if records.len() as u64 != piece.last_seq - piece.first_seq + 1 {
        return Err(StoreError::corrupt("record count differs from the index"));
    }
    for r in &records {
        let record = NewRecord {
            level: r.level,
            source: &r.source,
            body: &r.body,
        };
        open.push(r.seq, r.ts_ns, &record)?;
    }
    Ok(())
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

/// A block's (or piece's) value, its fragments joined.
fn read_value(trees: &Trees, id: u32, meta: &BlockMeta) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    for i in 0..meta.fragments {
        let fragment = trees
            .blocks
            .get(keys::fragment_key(id, meta.first_seq, i))?
            .ok_or_else(|| StoreError::corrupt(format!("fragment {i} missing")))?;
        value.extend_from_slice(&fragment);
    }
    Ok(value)
}

fn check_block(trees: &Trees, id: u32, meta: &BlockMeta) -> Result<()> {
    let value = read_value(trees, id, meta)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::FRAGMENT_BYTES;

    fn trees(db: &sled::Db) -> Trees {
        Trees {
            streams: db.open_tree("log.streams").unwrap(),
            meta: db.open_tree("log.meta").unwrap(),
            blocks: db.open_tree("log.blocks").unwrap(),
            cursors: db.open_tree("log.cursors").unwrap(),
        }
    }

    fn put(trees: &Trees, id: u32, meta: &BlockMeta, value: &[u8]) {
        for (i, fragment) in value.chunks(FRAGMENT_BYTES).enumerate() {
            let key = keys::fragment_key(id, meta.first_seq, i as u16);
            trees.blocks.insert(key, fragment).unwrap();
        }
        let key = keys::block_key(id, meta.first_seq);
        trees.meta.insert(key, meta.encode().unwrap()).unwrap();
    }

    fn push(open: &mut OpenBlock, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let body = format!("record {seq}");
            let record = NewRecord {
                level: 6,
                source: "t",
                body: body.as_bytes(),
            };
            open.push(seq, 1_000 + seq, &record).unwrap();
        }
    }

    /// A crash after a block was sealed but before its tail pieces were removed leaves both;
    /// a torn last piece was never acknowledged. Recovery keeps the block, drops the pieces
    /// it covers and the torn one, and loads the rest into the open block.
    #[test]
    fn pieces_covered_by_a_sealed_block_and_a_torn_last_piece_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let trees = trees(&db);
        let id = 1;
        let tail = keys::tail_stream(id);
        let info = StreamInfo {
            id,
            deleted_through: 0,
            deleted_last_ts: 0,
        };
        trees
            .streams
            .insert("s", block::encode_versioned(&info).unwrap())
            .unwrap();

        let mut open = OpenBlock::default();
        push(&mut open, 1..=5);
        let (first_piece, value) = open.seal_piece().unwrap();
        put(&trees, tail, &first_piece, &value);
        push(&mut open, 6..=10);
        let (piece, value) = open.seal_piece().unwrap();
        put(&trees, tail, &piece, &value);
        let (sealed, value) = open.seal();
        put(&trees, id, &sealed, &value);

        push(&mut open, 11..=12);
        let (piece, value) = open.seal_piece().unwrap();
        put(&trees, tail, &piece, &value);
        push(&mut open, 13..=14);
        let (torn, mut value) = open.seal_piece().unwrap();
        let last = value.len() - 1;
        value[last] ^= 0xFF;
        put(&trees, tail, &torn, &value);

        let streams = recover(&trees).unwrap();
        let s = &streams[0];
        assert_eq!(s.blocks.len(), 1);
        assert_eq!(s.tail.len(), 1);
        assert_eq!(
            s.next_seq, 13,
            "the torn piece's records were never acknowledged"
        );
        let mut records = Vec::new();
        s.open.records(0, u64::MAX, &mut records).unwrap();
        assert_eq!(
            records.iter().map(|r| (r.seq, r.ts_ns)).collect::<Vec<_>>(),
            vec![(11, 1_011), (12, 1_012)]
        );
        assert_eq!(records[1].body, b"record 12");
        assert!(!s.open.has_unwritten(), "loaded records are stored already");
        let left: Vec<_> = trees
            .meta
            .scan_prefix(keys::stream_prefix(tail))
            .keys()
            .map(|k| keys::seq_of(&k.unwrap()))
            .collect();
        assert_eq!(left, vec![Some(11)], "covered and torn pieces removed");
        let fragments = trees.blocks.scan_prefix(keys::stream_prefix(tail)).count();
        assert_eq!(fragments, 1);
    }
}
