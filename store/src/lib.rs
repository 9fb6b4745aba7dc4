//! Depot's disk core, on sled. No zmq here: services feed it and read from it.
//!
//! Layout:
//! - `store`: the data folder, its lock, and the committer thread (group commit).
//! - `durability`: what survives what ([`Durability`]), tickets and the durable watermark.
//! - `log`: named streams of records with per-stream sequences, reads, retention, recovery.
//! - `block`: how records are packed, compressed and checksummed into blocks (pure code).
//! - `kv`: named key-value trees under the same group commit.
//! - `backup`: a consistent copy of the whole store while it runs, and restoring one.
//! - `space`: the free-space reserve that refuses growing writes before the disk is full.
//! - `keys`: big-endian key layout.
//! - `record`: the record types.
//! - `error`: [`StoreError`].
//!
//! A write's life: [`Log::append`] puts records in the stream's open block and returns a
//! [`Ticket`]; the committer seals open blocks, flushes sled and `fdatasync`s its file, then
//! moves the watermark; [`Store::wait_durable`] (or [`Store::durable`]) returns once the
//! watermark covers the ticket. Acknowledge to a client only then.

mod backup;
mod block;
mod durability;
mod error;
mod keys;
mod kv;
pub mod log;
mod record;
mod space;
mod store;

pub use backup::{restore, BackupStats, BACKUP_FILE};
pub use block::{check_block_index_entry, decode_log_block, encode_log_block};
pub use durability::{Durability, DurableNotifier, Ticket, Watermark};
pub use error::{Result, StoreError};
pub use kv::{Kv, MAX_KV_VALUE};
pub use log::{now_ns, Appended, Log, Retention, RetentionOutcome, StreamStats};
pub use record::{
    is_internal_stream, validate_stream_name, NewRecord, Record, RecordRef, Seq,
    INTERNAL_STREAM_PREFIX, MAX_RECORD_BYTES, MAX_STREAM_NAME,
};
pub use store::{CommitStats, Store, StoreConfig, DB_DIR, IDENTITY_FILE, LOCK_FILE};
