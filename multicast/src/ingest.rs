//! In: a bus thread that receives the group's messages and hands them on: log records to
//! logd's PULL (stored like any other ingest), CHP updates to the cache collector if asked.
//!
//! Accepted on the group:
//! - logd live records `[topic][header][body]` (another Depot's bus): stored under the header's
//!   stream, level and source; consecutive records of one stream go to logd as one batch.
//! - logd ingest frames `[stream][body]` or `[stream][attributes][body]+` from producers with a
//!   PGM PUB: passed to the PULL unchanged (logd checks and counts them as for any PUSH).
//! - CHP KVPUB/KVSET (5 frames): to the cache collector with `ingest_cache = true`.
//!
//! On a sealed bus (`key_file`) every message is opened first; one that does not open is
//! counted as rejected and dropped, and a lone sealed frame is a fragment.
//!
//! Loss: a jump in a stream's sequence, or a fragment (what libzmq 4.3.4's PGM receiver
//! delivers after unrecoverable loss: it resumes at the next frame start, which can be inside a
//! multipart message), is counted; a burst of them is one data-loss event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use depot_common::ratelimit::RateLimited;
use depot_logd::protocol::Header;

use crate::bridge::send_all;
use crate::frames::{classify, BusMessage};
use crate::gaps::GapTracker;
use crate::metrics::{add, BusEntry};
use crate::seal::{BusKey, OpenError};
use depot_common::frames::recv_frames;

/// Messages taken from the group per loop turn.
const MESSAGES_PER_TURN: usize = 1024;
/// Most records in one batch handed to logd.
const BATCH_RECORDS: usize = 256;
/// How long one hand-over waits for logd before checking for shutdown.
const SEND_TIMEOUT_MS: i32 = 100;

/// Where an in bus delivers.
pub struct Targets {
    /// PUSH connected to logd's PULL (with `ingest = true`).
    pub logd: Option<zmq::Socket>,
    /// PUB connected to the cache collector (with `ingest_cache = true`).
    pub cache: Option<zmq::Socket>,
}

/// Consecutive records of one stream, level and source, sent to logd as one message.
struct Batch {
    stream: String,
    attributes: String,
    bodies: Vec<zmq::Message>,
}

/// One in bus's thread state.
pub struct BusIngest {
    entry: Arc<BusEntry>,
    pgm: zmq::Socket,
    targets: Targets,
    gaps: GapTracker,
    batch: Option<Batch>,
    /// Loss is logged at most once a second.
    loss_warning: RateLimited,
    /// A sealed bus's key: messages are opened before anything else looks at them.
    key: Option<BusKey>,
    /// Messages that do not open are logged at most once a second.
    reject_warning: RateLimited,
}

impl BusIngest {
    /// Ingest from the open receiver `pgm` into `targets`, opening each message with `key`.
    pub fn new(
        entry: Arc<BusEntry>,
        pgm: zmq::Socket,
        targets: Targets,
        key: Option<BusKey>,
    ) -> zmq::Result<Self> {
        for socket in [&targets.logd, &targets.cache].into_iter().flatten() {
            socket.set_sndtimeo(SEND_TIMEOUT_MS)?;
        }
        Ok(BusIngest {
            entry,
            pgm,
            targets,
            gaps: GapTracker::new(),
            batch: None,
            loss_warning: RateLimited::default(),
            key,
            reject_warning: RateLimited::default(),
        })
    }

    /// Receives until `stop` is set, then hands over what it holds.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            match self.pgm.poll(zmq::POLLIN, 100) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(bus = %self.entry.name, error = %e, "multicast: poll failed");
                    continue;
                }
            }
            for _ in 0..MESSAGES_PER_TURN {
                match recv_frames(&self.pgm) {
                    Ok(frames) => self.handle(frames, &stop),
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        tracing::warn!(bus = %self.entry.name, error = %e, "multicast: receive failed");
                        break;
                    }
                }
            }
            self.flush(&stop);
        }
        self.flush(&stop);
    }

    fn handle(&mut self, frames: Vec<zmq::Message>, stop: &AtomicBool) {
        let m = &self.entry.metrics;
        add(&m.received, 1);
        add(
            &m.received_bytes,
            frames.iter().map(|f| f.len() as u64).sum(),
        );
        let mut frames = match &self.key {
            None => frames,
            Some(key) => match key.open(&frames) {
                Ok(rest) => {
                    let mut opened = Vec::with_capacity(rest.len() + 1);
                    opened.extend(frames.into_iter().take(1));
                    opened.extend(rest.into_iter().map(zmq::Message::from));
                    opened
                }
                // The sealed frame without its topic: what a PGM rejoin leaves.
                Err(OpenError::Frames(1)) => {
                    add(&m.fragments, 1);
                    if self.gaps.fragment() {
                        add(&m.data_loss, 1);
                    }
                    return;
                }
                Err(why) => {
                    add(&m.rejected, 1);
                    if let Some(suppressed) = self.reject_warning.allow() {
                        let topic =
                            String::from_utf8_lossy(frames.first().map_or(&[][..], |f| &f[..]));
                        tracing::warn!(bus = %self.entry.name, %topic, reason = %why, suppressed, "multicast: dropped a message that does not open with the bus key");
                    }
                    return;
                }
            },
        };
        match classify(&frames) {
            BusMessage::LogRecord(header) => {
                self.account_records(&header, header.seq);
                if self.targets.logd.is_some() {
                    let body = frames.pop().unwrap_or_else(zmq::Message::new);
                    self.batch_record(&header, body, stop);
                } else {
                    add(&self.entry.metrics.ignored, 1);
                }
            }
            BusMessage::LogBatch { header, count } => {
                let last = header
                    .seq
                    .saturating_add(u64::from(count).saturating_sub(1));
                self.account_records(&header, last);
                self.flush(stop);
                match &self.targets.logd {
                    // Already packed as logd ingest takes it: one message, no copy.
                    Some(pull) => {
                        let packed = frames.pop().unwrap_or_else(zmq::Message::new);
                        let frames = vec![
                            zmq::Message::from(header.stream.as_bytes()),
                            zmq::Message::from(
                                format!("{} packed=1", attributes(&header)).as_bytes(),
                            ),
                            packed,
                        ];
                        if hand_over(pull, frames, stop) {
                            add(&self.entry.metrics.forwarded, u64::from(count));
                        }
                    }
                    None => add(&self.entry.metrics.ignored, 1),
                }
            }
            BusMessage::CacheUpdate { .. } => {
                self.gaps.whole();
                self.flush(stop);
                match &self.targets.cache {
                    Some(collector) => {
                        if hand_over(collector, frames, stop) {
                            add(&self.entry.metrics.forwarded, 1);
                        }
                    }
                    None => add(&self.entry.metrics.ignored, 1),
                }
            }
            BusMessage::Hugz => self.gaps.whole(),
            BusMessage::Fragment => {
                add(&m.fragments, 1);
                if self.gaps.fragment() {
                    add(&m.data_loss, 1);
                }
            }
            BusMessage::Other => {
                self.gaps.whole();
                self.flush(stop);
                match &self.targets.logd {
                    // logd ingest frames have a stream and at least one body.
                    Some(pull) if frames.len() >= 2 => {
                        if hand_over(pull, frames, stop) {
                            add(&self.entry.metrics.forwarded, 1);
                        }
                    }
                    _ => add(&self.entry.metrics.ignored, 1),
                }
            }
        }
    }

    /// Counts the gap (and loss event) before records `header.seq..=last` of the stream.
    fn account_records(&mut self, header: &Header, last: u64) {
        let m = &self.entry.metrics;
        let observed = self
            .gaps
            .observe_range(header.stream.as_bytes(), header.seq, last);
        if observed.missing > 0 {
            add(&m.gaps, 1);
            add(&m.missing, observed.missing);
            if let Some(suppressed) = self.loss_warning.allow() {
                tracing::warn!(bus = %self.entry.name, stream = %header.stream, missing = observed.missing, before_seq = header.seq, suppressed, "multicast: records lost on the bus (PGM could not repair)");
            }
        }
        if observed.loss_event {
            add(&m.data_loss, 1);
        }
    }

    fn batch_record(&mut self, header: &Header, body: zmq::Message, stop: &AtomicBool) {
        let attributes = attributes(header);
        let same = self
            .batch
            .as_ref()
            .is_some_and(|b| b.stream == header.stream && b.attributes == attributes);
        if !same {
            self.flush(stop);
            self.batch = Some(Batch {
                stream: header.stream.clone(),
                attributes,
                bodies: Vec::new(),
            });
        }
        let full = match &mut self.batch {
            Some(batch) => {
                batch.bodies.push(body);
                batch.bodies.len() >= BATCH_RECORDS
            }
            None => false,
        };
        if full {
            self.flush(stop);
        }
    }

    /// Hands the pending batch to logd.
    fn flush(&mut self, stop: &AtomicBool) {
        let (Some(batch), Some(pull)) = (self.batch.take(), &self.targets.logd) else {
            return;
        };
        let n = batch.bodies.len() as u64;
        let mut frames = Vec::with_capacity(batch.bodies.len() + 2);
        frames.push(zmq::Message::from(batch.stream.as_bytes()));
        frames.push(zmq::Message::from(batch.attributes.as_bytes()));
        frames.extend(batch.bodies);
        if hand_over(pull, frames, stop) {
            add(&self.entry.metrics.forwarded, n);
        }
    }
}

/// logd ingest attributes that keep a live record's level and source.
fn attributes(header: &Header) -> String {
    let source: String = header
        .source
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if source.is_empty() {
        format!("level={}", header.level)
    } else {
        format!("level={} source={source}", header.level)
    }
}

/// Hands a message on; false (logged) if it could not be sent.
fn hand_over(socket: &zmq::Socket, frames: Vec<zmq::Message>, stop: &AtomicBool) -> bool {
    match send_all(socket, frames, stop) {
        Ok(()) => true,
        Err(e) => {
            if !stop.load(Ordering::Acquire) {
                tracing::warn!(error = %e, "multicast: hand-over failed");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_keep_level_and_source_without_spaces() {
        let header = |source: &str| Header {
            seq: 1,
            ts_ns: 0,
            level: 3,
            stream: "app".into(),
            source: source.into(),
        };
        assert_eq!(attributes(&header("web 1")), "level=3 source=web_1");
        assert_eq!(attributes(&header("")), "level=3");
    }
}
