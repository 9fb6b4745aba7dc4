//! Out: a bus thread that subscribes to the services' publishers (logd's live XPUB, the cache's
//! PUB, the clock's PUB) and sends every message, frames unchanged, to the group.
//!
//! Loss is counted where it can be seen: a jump in a log stream's sequence (or the cache's, when
//! the whole cache is carried) means the service dropped messages for this bus because it did
//! not keep up. The PGM socket never drops: when the rate limit holds it back, sends wait.

use depot_common::frames::recv_frames;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use depot_common::ratelimit::RateLimited;

use crate::frames;
use crate::gaps::GapTracker;
use crate::metrics::{add, BusEntry};
use crate::seal::BusKey;

/// Messages taken from one source per loop turn, so no source starves the others.
const MESSAGES_PER_TURN: usize = 1024;
/// Messages a source SUB queues before its publisher drops for it.
const SOURCE_HWM: i32 = 100_000;
/// How long one send waits for room before checking for shutdown.
const SEND_TIMEOUT_MS: i32 = 100;

/// Which service a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// logd's live XPUB.
    Logs,
    /// The cache's publisher.
    Cache,
    /// The clock's tick PUB.
    Ticks,
}

/// A publisher the bus carries: its endpoint and the topic prefixes taken from it.
#[derive(Debug, Clone)]
pub struct Source {
    /// Which service.
    pub kind: SourceKind,
    /// Its PUB/XPUB endpoint.
    pub endpoint: String,
    /// Subscriptions (topic prefixes).
    pub prefixes: Vec<Vec<u8>>,
    /// Whether its sequences are whole, so a jump is a loss (not a filtered-out message).
    pub count_gaps: bool,
}

/// One out bus's thread state.
pub struct Bridge {
    entry: Arc<BusEntry>,
    pgm: zmq::Socket,
    sources: Vec<(Source, zmq::Socket)>,
    gaps: GapTracker,
    /// Falling behind is logged at most once a second.
    behind_warning: RateLimited,
    /// A sealed bus's key: each message leaves as `[topic][sealed rest]`.
    key: Option<BusKey>,
}

impl Bridge {
    /// Connects a SUB to every source; `pgm` is the bus's open sender; with `key` every
    /// message is sealed.
    pub fn new(
        ctx: &zmq::Context,
        entry: Arc<BusEntry>,
        pgm: zmq::Socket,
        sources: Vec<Source>,
        key: Option<BusKey>,
    ) -> zmq::Result<Bridge> {
        pgm.set_sndtimeo(SEND_TIMEOUT_MS)?;
        let mut subs = Vec::new();
        for source in sources {
            let sub = ctx.socket(zmq::SUB)?;
            depot_common::security::apply_process_client(&sub)?;
            sub.set_linger(0)?;
            sub.set_rcvhwm(SOURCE_HWM)?;
            for prefix in &source.prefixes {
                sub.set_subscribe(prefix)?;
            }
            sub.connect(&source.endpoint)?;
            subs.push((source, sub));
        }
        Ok(Bridge {
            entry,
            pgm,
            sources: subs,
            gaps: GapTracker::new(),
            behind_warning: RateLimited::default(),
            key,
        })
    }

    /// Forwards until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            let ready: Vec<usize> = {
                let mut items: Vec<zmq::PollItem<'_>> = self
                    .sources
                    .iter()
                    .map(|(_, sub)| sub.as_poll_item(zmq::POLLIN))
                    .collect();
                if items.is_empty() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                if let Err(e) = zmq::poll(&mut items, 100) {
                    tracing::warn!(bus = %self.entry.name, error = %e, "multicast: poll failed");
                    continue;
                }
                (0..items.len())
                    .filter(|&i| items[i].is_readable())
                    .collect()
            };
            for i in ready {
                for _ in 0..MESSAGES_PER_TURN {
                    match recv_frames(&self.sources[i].1) {
                        Ok(frames) => {
                            self.account(i, &frames);
                            if !self.forward(frames, &stop) {
                                return;
                            }
                        }
                        Err(zmq::Error::EAGAIN) => break,
                        Err(e) => {
                            tracing::warn!(bus = %self.entry.name, error = %e, "multicast: receive failed");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn account(&mut self, source: usize, frames: &[zmq::Message]) {
        let m = &self.entry.metrics;
        add(&m.received, 1);
        if !self.sources[source].0.count_gaps {
            return;
        }
        if let Some((stream, first, last)) = frames::sequence(frames) {
            let observed = self.gaps.observe_range(stream, first, last);
            if observed.missing > 0 {
                add(&m.gaps, 1);
                add(&m.missing, observed.missing);
                if let Some(suppressed) = self.behind_warning.allow() {
                    tracing::warn!(bus = %self.entry.name, missing = observed.missing, suppressed, "multicast: the bus fell behind its source, which dropped messages for it (raise rate_kbps or send less)");
                }
            }
        }
    }

    /// Sends one message to the group; false when shutdown interrupted it.
    fn forward(&self, mut frames: Vec<zmq::Message>, stop: &AtomicBool) -> bool {
        let m = &self.entry.metrics;
        if let Some(key) = self.key.as_ref().filter(|_| !frames.is_empty()) {
            let sealed = key.seal(&frames[0], &frames[1..]);
            frames.truncate(1);
            frames.push(zmq::Message::from(sealed));
        }
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        match send_all(&self.pgm, frames, stop) {
            Ok(()) => {
                add(&m.sent, 1);
                add(&m.sent_bytes, bytes as u64);
                true
            }
            Err(e) => {
                add(&m.send_errors, 1);
                tracing::debug!(bus = %self.entry.name, error = %e, "multicast: send stopped");
                false
            }
        }
    }
}

/// Sends a multipart message, waiting for room (a NODROP XPUB or a PUSH at its HWM refuses
/// with EAGAIN after the send timeout) until `stop` is set.
pub fn send_all(
    socket: &zmq::Socket,
    frames: Vec<zmq::Message>,
    stop: &AtomicBool,
) -> zmq::Result<()> {
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.into_iter().enumerate() {
        let flags = if i < last { zmq::SNDMORE } else { 0 };
        if i == 0 {
            // Only a message's first frame can meet a full queue: wait for room, keeping the
            // frame (a refused zmq::Message would be gone).
            loop {
                match socket.send(&frame[..], flags) {
                    Ok(()) => break,
                    Err(zmq::Error::EAGAIN) if !stop.load(Ordering::Acquire) => continue,
                    Err(e) => return Err(e),
                }
            }
        } else {
            socket.send(frame, flags)?;
        }
    }
    Ok(())
}
