//! Log records as callers give them and get them back.

use serde::Serialize;

/// Largest record (source plus body) the store accepts; services enforce smaller limits.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Longest stream name.
pub const MAX_STREAM_NAME: usize = 255;

/// A per-stream sequence number; the first record of a stream is 1.
pub type Seq = u64;

/// A record to append; the store assigns its sequence and receive timestamp.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// Severity, syslog numbering (0 emergency … 7 debug).
    pub level: u8,
    /// Who sent it (host, application, peer).
    pub source: &'a str,
    /// The message itself.
    pub body: &'a [u8],
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Position in its stream.
    pub seq: Seq,
    /// Receive time, nanoseconds since the Unix epoch; never decreases within a stream.
    pub ts_ns: u64,
    /// Severity, syslog numbering.
    pub level: u8,
    /// Who sent it.
    pub source: String,
    /// The message itself.
    pub body: Vec<u8>,
}

/// A stored record borrowed from a decoded block: no allocation per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Position in its stream.
    pub seq: Seq,
    /// Receive time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Severity, syslog numbering.
    pub level: u8,
    /// Who sent it.
    pub source: &'a str,
    /// The message itself.
    pub body: &'a [u8],
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record {
            seq: self.seq,
            ts_ns: self.ts_ns,
            level: self.level,
            source: self.source.to_owned(),
            body: self.body.to_vec(),
        }
    }
}

impl Record {
    /// A borrowed view.
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            ts_ns: self.ts_ns,
            level: self.level,
            source: &self.source,
            body: &self.body,
        }
    }
}

/// First character of the streams services keep for themselves (the cache's change log,
/// queue journals): logd neither takes records for them nor replays them.
pub const INTERNAL_STREAM_PREFIX: char = '$';

/// Whether `name` is a service's internal stream.
pub fn is_internal_stream(name: &str) -> bool {
    name.starts_with(INTERNAL_STREAM_PREFIX)
}

/// Checks a stream name: 1 to 255 bytes, no control characters.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_STREAM_NAME {
        return Err(format!(
            "stream name must be 1 to {MAX_STREAM_NAME} bytes, got {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("stream name must not contain control characters".into());
    }
    Ok(())
}
