//! Blocks: many consecutive records of one stream, encoded, compressed and checksummed as one
//! value. Pure code, no I/O.
//!
//! A block's value is `[FORMAT_VERSION][bincode BlockHeader][lz4 of the records]`; it is stored
//! in fragments of at most [`FRAGMENT_BYTES`] because sled writes larger values to separate
//! `blobs/` files that it never fsyncs.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::record::{NewRecord, Record, RecordRef};

/// Version byte in front of every stored value; bump when a layout changes.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Largest sled value the store writes (sled keeps values of 12 KiB and below in its log).
pub(crate) const FRAGMENT_BYTES: usize = 8 * 1024;
/// Raw bytes a block may hold before it is sealed, whatever the compression ratio.
pub(crate) const MAX_RAW_BYTES: usize = 64 * 1024;
/// Raw bytes at which a block is sealed before compression has been measured.
pub(crate) const MIN_RAW_BYTES: usize = 6 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 16 * 1024 * 1024 }>()
}

/// Encodes a versioned bincode value.
pub(crate) fn encode_versioned<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode_config())
        .map_err(|e| StoreError::Invalid(format!("encode: {e}")))?;
    Ok(out)
}

/// Decodes a versioned bincode value; `what` names it in errors.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::serde::decode_from_slice(rest, bincode_config())
            .map(|(value, _)| value)
            .map_err(|e| StoreError::corrupt(format!("{what}: {e}"))),
        Some((version, _)) => Err(StoreError::corrupt(format!(
            "{what}: unknown format version {version}"
        ))),
        None => Err(StoreError::corrupt(format!("{what}: empty value"))),
    }
}

/// One record as laid out inside a block; its sequence is implied by its position.
#[derive(Serialize, Deserialize)]
struct StoredRecord<'a> {
    ts_delta: u64,
    level: u8,
    #[serde(borrow)]
    source: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    body: &'a [u8],
}

/// Header in front of a block's compressed records.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct BlockHeader {
    count: u32,
    raw_len: u32,
    first_ts: u64,
    crc32: u32,
}

impl BlockHeader {
    /// CRC-32 over the header's other fields and the compressed records, so a flipped bit in
    /// the count or the timestamp is caught like one in the data.
    fn checksum(&self, compressed: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.count.to_be_bytes());
        hasher.update(&self.raw_len.to_be_bytes());
        hasher.update(&self.first_ts.to_be_bytes());
        hasher.update(compressed);
        hasher.finalize()
    }
}

/// What the store keeps in memory (and in the meta tree) about a sealed block.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockMeta {
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    /// Bytes of the block's value in sled.
    pub stored_bytes: u32,
    /// Bytes of its records before compression.
    pub raw_bytes: u32,
    pub fragments: u16,
}

impl BlockMeta {
    /// Encodes the index entry with a checksum of its own.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let body = encode_versioned(self)?;
        let crc = crc32fast::hash(&body);
        let mut out = body;
        out.extend_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Decodes an index entry, checking its checksum.
    pub(crate) fn decode(bytes: &[u8]) -> Result<BlockMeta> {
        let split = bytes
            .len()
            .checked_sub(4)
            .ok_or_else(|| StoreError::corrupt("block index entry: too short"))?;
        let (body, crc) = bytes.split_at(split);
        let crc = u32::from_be_bytes(
            crc.try_into()
                .map_err(|_| StoreError::corrupt("block index entry: checksum"))?,
        );
        if crc32fast::hash(body) != crc {
            return Err(StoreError::corrupt("block index entry: checksum mismatch"));
        }
        decode_versioned(body, "block index entry")
    }
}

/// Records appended to a stream but not yet sealed into a block. The front of it may be
/// stored already as tail pieces (see [`OpenBlock::seal_piece`]).
#[derive(Debug, Default)]
pub(crate) struct OpenBlock {
    pub first_seq: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    pub count: u32,
    pub raw: Vec<u8>,
    /// Records at the front already written as tail pieces, and their raw bytes.
    pub written_count: u32,
    pub written_raw: usize,
    /// Timestamp of the first record not yet written as a piece.
    pub unwritten_first_ts: u64,
}

impl OpenBlock {
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }

    /// Adds a record with sequence `seq` and timestamp `ts` (not below the block's last).
    pub(crate) fn push(&mut self, seq: u64, ts: u64, record: &NewRecord<'_>) -> Result<()> {
        if self.count == 0 {
            self.first_seq = seq;
            self.first_ts = ts;
        }
        if self.count == self.written_count {
            self.unwritten_first_ts = ts;
        }
        let stored = StoredRecord {
            ts_delta: ts - self.first_ts,
            level: record.level,
            source: record.source,
            body: record.body,
        };
        bincode::serde::encode_into_std_write(&stored, &mut self.raw, bincode::config::standard())
            .map_err(|e| StoreError::Invalid(format!("encode record: {e}")))?;
        self.last_ts = ts;
        self.count += 1;
        Ok(())
    }

    /// Compresses the records into a block value and empties the open block.
    pub(crate) fn seal(&mut self) -> (BlockMeta, Vec<u8>) {
        let value = block_value(&self.raw, self.count, self.first_ts);
        let meta = BlockMeta {
            first_seq: self.first_seq,
            last_seq: self.last_seq(),
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            stored_bytes: value.len() as u32,
            raw_bytes: self.raw.len() as u32,
            fragments: value.len().div_ceil(FRAGMENT_BYTES) as u16,
        };
        self.count = 0;
        self.raw.clear();
        self.written_count = 0;
        self.written_raw = 0;
        (meta, value)
    }

    /// Whether records were added since the last piece (or seal).
    pub(crate) fn has_unwritten(&self) -> bool {
        self.count > self.written_count
    }

    /// Compresses the records added since the last piece into a tail piece, a block value of
    /// its own, and keeps them open: a commit makes a slow stream's records durable without
    /// sealing a block of a few records each time. Its timestamps count from the open block's
    /// first, like the records in memory. `None` when nothing was added.
    pub(crate) fn seal_piece(&mut self) -> Option<(BlockMeta, Vec<u8>)> {
        if !self.has_unwritten() {
            return None;
        }
        let raw = &self.raw[self.written_raw..];
        let count = self.count - self.written_count;
        let value = block_value(raw, count, self.first_ts);
        let meta = BlockMeta {
            first_seq: self.first_seq + u64::from(self.written_count),
            last_seq: self.last_seq(),
            first_ts: self.unwritten_first_ts,
            last_ts: self.last_ts,
            stored_bytes: value.len() as u32,
            raw_bytes: raw.len() as u32,
            fragments: value.len().div_ceil(FRAGMENT_BYTES) as u16,
        };
        self.written_count = self.count;
        self.written_raw = self.raw.len();
        Some((meta, value))
    }

    /// Decodes the open records with sequence in `from..=to`.
    pub(crate) fn records(&self, from: u64, to: u64, out: &mut Vec<Record>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let span = RecordSpan {
            first_seq: self.first_seq,
            first_ts: self.first_ts,
            count: self.count,
        };
        visit_records(&self.raw, span, from, to, &mut |r| {
            out.push(r.to_record());
            true
        })
        .map_err(|e| StoreError::corrupt(format!("open block: {e}")))
    }
}

/// A block value: `count` encoded records (timestamps counted from `first_ts`), compressed and
/// checksummed.
fn block_value(raw: &[u8], count: u32, first_ts: u64) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(raw);
    let header = BlockHeader {
        count,
        raw_len: raw.len() as u32,
        first_ts,
        crc32: 0,
    };
    let header = BlockHeader {
        crc32: header.checksum(&compressed),
        ..header
    };
    let mut value = vec![FORMAT_VERSION];
    // A fixed-size header of plain integers cannot fail to encode into a Vec.
    let _ = bincode::serde::encode_into_std_write(header, &mut value, bincode::config::standard());
    value.extend_from_slice(&compressed);
    value
}

/// Decodes a whole block value; records with sequence in `from..=to` are pushed to `out`.
/// Returns how many records the block holds.
pub(crate) fn decode_block(
    value: &[u8],
    first_seq: u64,
    from: u64,
    to: u64,
    visit: &mut dyn FnMut(RecordRef<'_>) -> bool,
) -> Result<u32> {
    let (version, rest) = value
        .split_first()
        .ok_or_else(|| StoreError::corrupt("empty block"))?;
    if *version != FORMAT_VERSION {
        return Err(StoreError::corrupt(format!(
            "unknown block format version {version}"
        )));
    }
    let (header, used): (BlockHeader, usize) =
        bincode::serde::decode_from_slice(rest, bincode::config::standard().with_limit::<64>())
            .map_err(|e| StoreError::corrupt(format!("block header: {e}")))?;
    let compressed = &rest[used..];
    if header.checksum(compressed) != header.crc32 {
        return Err(StoreError::corrupt("block checksum mismatch"));
    }
    if header.raw_len as usize > MAX_RAW_BYTES + crate::record::MAX_RECORD_BYTES + 1024 {
        return Err(StoreError::corrupt("block raw length out of range"));
    }
    let raw = lz4_flex::block::decompress(compressed, header.raw_len as usize)
        .map_err(|e| StoreError::corrupt(format!("block decompression: {e}")))?;
    let span = RecordSpan {
        first_seq,
        first_ts: header.first_ts,
        count: header.count,
    };
    visit_records(&raw, span, from, to, visit)?;
    Ok(header.count)
}

/// Decodes a stored log block value whose first record has sequence `first_seq`, visiting every
/// record: the on-disk decoder as the log uses it, open to fuzzing and offline checks. Corrupt
/// input is an error, never a panic.
pub fn decode_log_block(
    value: &[u8],
    first_seq: u64,
    visit: &mut dyn FnMut(RecordRef<'_>) -> bool,
) -> Result<u32> {
    decode_block(value, first_seq, first_seq, u64::MAX, visit)
}

/// Seals `records` (timestamp, record; timestamps not decreasing) into one block value as the
/// log stores it: seeds for the block decoder's fuzz target and its tests.
pub fn encode_log_block(first_seq: u64, records: &[(u64, NewRecord<'_>)]) -> Result<Vec<u8>> {
    let mut block = OpenBlock::default();
    for (index, (ts, record)) in records.iter().enumerate() {
        if block.count > 0 && *ts < block.last_ts {
            return Err(StoreError::Invalid(
                "block timestamps must not decrease".into(),
            ));
        }
        block.push(first_seq + index as u64, *ts, record)?;
    }
    Ok(block.seal().1)
}

/// Decodes a block index entry (the meta tree's value), checking its checksum.
pub fn check_block_index_entry(bytes: &[u8]) -> Result<()> {
    BlockMeta::decode(bytes).map(|_| ())
}

/// Where a run of encoded records sits in its stream.
#[derive(Clone, Copy)]
struct RecordSpan {
    first_seq: u64,
    first_ts: u64,
    count: u32,
}

/// Calls `visit` for each record with sequence in `from..=to` until it returns false.
fn visit_records(
    raw: &[u8],
    span: RecordSpan,
    from: u64,
    to: u64,
    visit: &mut dyn FnMut(RecordRef<'_>) -> bool,
) -> Result<()> {
    let mut pos = 0;
    for index in 0..u64::from(span.count) {
        let (stored, used): (StoredRecord<'_>, usize) =
            bincode::serde::borrow_decode_from_slice(&raw[pos..], bincode::config::standard())
                .map_err(|e| StoreError::corrupt(format!("record {index} of block: {e}")))?;
        pos += used;
        let seq = span.first_seq + index;
        if seq > to {
            break;
        }
        if seq >= from {
            let record = RecordRef {
                seq,
                ts_ns: span.first_ts + stored.ts_delta,
                level: stored.level,
                source: stored.source,
                body: stored.body,
            };
            if !visit(record) {
                break;
            }
        }
    }
    Ok(())
}

/// Decodes records of a block into owned records (for tests and recovery checks).
#[cfg(test)]
fn decode_block_owned(
    value: &[u8],
    first_seq: u64,
    from: u64,
    to: u64,
    out: &mut Vec<Record>,
) -> Result<u32> {
    decode_block(value, first_seq, from, to, &mut |r| {
        out.push(r.to_record());
        true
    })
}

/// The raw-size goal for the next block, from the compression ratio of the last one, so that
/// the sealed value fits one fragment.
pub(crate) fn raw_target(last: Option<&BlockMeta>) -> usize {
    let Some(meta) = last else {
        return MIN_RAW_BYTES;
    };
    if meta.stored_bytes == 0 {
        return MIN_RAW_BYTES;
    }
    let goal = FRAGMENT_BYTES * 15 / 16;
    let target = goal as u64 * u64::from(meta.raw_bytes) / u64::from(meta.stored_bytes);
    (target as usize).clamp(MIN_RAW_BYTES, MAX_RAW_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_block_codec_round_trips_and_refuses_damage_without_panicking() {
        let record = |body: &'static [u8]| NewRecord {
            level: 3,
            source: "host",
            body,
        };
        let value = encode_log_block(7, &[(100, record(b"a")), (105, record(b"bc"))]).unwrap();
        let mut seen = Vec::new();
        let count = decode_log_block(&value, 7, &mut |r| {
            seen.push((r.seq, r.ts_ns, r.body.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            seen,
            vec![(7, 100, b"a".to_vec()), (8, 105, b"bc".to_vec())]
        );
        for i in 0..value.len() {
            let mut damaged = value.clone();
            damaged[i] ^= 0x40;
            assert!(
                decode_log_block(&damaged, 7, &mut |_| true).is_err(),
                "byte {i}"
            );
        }
        assert!(encode_log_block(1, &[(5, record(b"x")), (4, record(b"y"))]).is_err());
    }

    fn record(body: &[u8]) -> NewRecord<'_> {
        NewRecord {
            level: 6,
            source: "host-a",
            body,
        }
    }

    #[test]
    fn sealed_block_decodes_to_what_was_pushed() {
        let mut open = OpenBlock::default();
        for i in 0..100u64 {
            let body = format!("line {i}");
            open.push(10 + i, 1_000 + i * 3, &record(body.as_bytes()))
                .unwrap();
        }
        let (meta, value) = open.seal();
        assert!(open.is_empty());
        assert_eq!((meta.first_seq, meta.last_seq), (10, 109));
        assert_eq!((meta.first_ts, meta.last_ts), (1_000, 1_297));
        let mut out = Vec::new();
        decode_block_owned(&value, 10, 20, 29, &mut out).unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(out[0].seq, 20);
        assert_eq!(out[0].ts_ns, 1_030);
        assert_eq!(out[0].body, b"line 10");
        assert_eq!(out[9].source, "host-a");
    }

    #[test]
    fn pieces_hold_each_records_once_and_the_seal_holds_them_all() {
        let mut open = OpenBlock::default();
        assert!(open.seal_piece().is_none());
        let mut pieces = Vec::new();
        for i in 0..30u64 {
            let body = format!("line {i}");
            open.push(1 + i, 500 + i * 7, &record(body.as_bytes()))
                .unwrap();
            if i % 10 == 9 {
                pieces.push(open.seal_piece().unwrap());
                assert!(open.seal_piece().is_none(), "nothing new, no piece");
            }
        }
        let mut seen = Vec::new();
        for (meta, value) in &pieces {
            let before = seen.len();
            decode_block_owned(value, meta.first_seq, 0, u64::MAX, &mut seen).unwrap();
            assert_eq!(seen.len() - before, 10);
            assert_eq!(meta.first_ts, seen[before].ts_ns);
            assert_eq!(meta.last_ts, seen.last().unwrap().ts_ns);
        }
        assert_eq!(
            seen.iter().map(|r| (r.seq, r.ts_ns)).collect::<Vec<_>>(),
            (0..30u64).map(|i| (1 + i, 500 + i * 7)).collect::<Vec<_>>()
        );
        assert_eq!(seen[29].body, b"line 29");
        let (meta, value) = open.seal();
        assert_eq!((meta.first_seq, meta.last_seq), (1, 30));
        let mut all = Vec::new();
        decode_block_owned(&value, 1, 0, u64::MAX, &mut all).unwrap();
        assert_eq!(all, seen);
        open.push(31, 900, &record(b"next")).unwrap();
        let (meta, _) = open.seal_piece().unwrap();
        assert_eq!(
            (meta.first_seq, meta.last_seq, meta.first_ts),
            (31, 31, 900)
        );
    }

    #[test]
    fn flipped_byte_is_reported_as_corruption() {
        let mut open = OpenBlock::default();
        open.push(1, 5, &record(b"hello world")).unwrap();
        let (_, mut value) = open.seal();
        let last = value.len() - 1;
        value[last] ^= 0x40;
        let err = decode_block_owned(&value, 1, 1, 1, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64usize {
            let value: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode_block_owned(&value, 1, 0, u64::MAX, &mut Vec::new());
            let mut with_version = vec![FORMAT_VERSION];
            with_version.extend_from_slice(&value);
            let _ = decode_block_owned(&with_version, 1, 0, u64::MAX, &mut Vec::new());
        }
    }

    #[test]
    fn raw_target_follows_compression_ratio() {
        assert_eq!(raw_target(None), MIN_RAW_BYTES);
        let mut meta = BlockMeta {
            first_seq: 1,
            last_seq: 1,
            first_ts: 0,
            last_ts: 0,
            stored_bytes: 2_000,
            raw_bytes: 8_000,
            fragments: 1,
        };
        assert_eq!(raw_target(Some(&meta)), FRAGMENT_BYTES * 15 / 16 * 4);
        meta.raw_bytes = 1_000_000;
        assert_eq!(raw_target(Some(&meta)), MAX_RAW_BYTES);
    }

    #[test]
    fn versioned_values_round_trip_and_reject_other_versions() {
        let bytes = encode_versioned(&(7u32, "x".to_string())).unwrap();
        let back: (u32, String) = decode_versioned(&bytes, "test").unwrap();
        assert_eq!(back, (7, "x".to_string()));
        let mut other = bytes.clone();
        other[0] = 99;
        assert!(decode_versioned::<(u32, String)>(&other, "test").is_err());
    }
}
