//! Live fan-out: every stored record, published on an XPUB as `[topic][header][body]`, and
//! on a second XPUB (`live_packed`) as packed messages of consecutive records, for consumers
//! that take hundreds of thousands of records a second (multicast buses).
//!
//! Appending threads hand batches to the live thread through a bounded channel and ring an
//! inproc doorbell. The XPUB drops messages for a subscriber that does not keep up (that
//! subscriber alone sees a gap in the sequence and fills it by replay); nothing here ever
//! waits for a subscriber.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use depot_common::authz::{user_id, Guard, Op};

use crate::metrics::{add, inc, LogdMetrics};
use crate::protocol;

/// Where appenders ring the live thread.
const DOORBELL: &str = "inproc://depot-logd-live";
/// Batches waiting for the live thread before new ones are dropped from live.
pub const LIVE_QUEUE: usize = 4096;

/// Records just stored, in sequence order, for the live thread.
#[derive(Debug)]
pub struct LiveBatch {
    /// Stream of every record.
    pub stream: String,
    /// Level of every record.
    pub level: u8,
    /// Sender of every record.
    pub source: String,
    /// Sequence of the first body.
    pub first_seq: u64,
    /// Receive timestamp of every record.
    pub ts_ns: u64,
    /// The records' bodies, as received: published without another copy.
    pub bodies: Vec<zmq::Message>,
    /// Each of `bodies` holds several records (`packed=1`), split only when published.
    pub packed: bool,
}

/// An appending thread's way to the live thread; one per thread, as it owns a zmq socket.
pub struct LiveFeed {
    tx: SyncSender<LiveBatch>,
    doorbell: zmq::Socket,
    metrics: Arc<LogdMetrics>,
}

impl LiveFeed {
    /// Connects a new feed.
    pub fn connect(
        ctx: &zmq::Context,
        tx: SyncSender<LiveBatch>,
        metrics: Arc<LogdMetrics>,
    ) -> zmq::Result<LiveFeed> {
        let doorbell = ctx.socket(zmq::PUSH)?;
        doorbell.set_linger(0)?;
        doorbell.set_sndhwm(16)?;
        doorbell.connect(DOORBELL)?;
        Ok(LiveFeed {
            tx,
            doorbell,
            metrics,
        })
    }

    /// Hands a batch to the live thread; drops it from live (counted) if the thread is behind.
    pub fn send(&self, batch: LiveBatch) {
        match self.tx.try_send(batch) {
            // A full doorbell queue already guarantees a wake-up, so EAGAIN is fine.
            Ok(()) => {
                let _ = self.doorbell.send(&b""[..], zmq::DONTWAIT);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                inc(&self.metrics.live_dropped)
            }
        }
    }
}

/// One live XPUB and what its subscribers want.
struct LiveSocket {
    xpub: zmq::Socket,
    /// Topic prefixes someone subscribes to, with a count (XPUB reports each one's first
    /// subscribe and last unsubscribe; in manual mode, every one): batches nobody wants are not
    /// published at all. Refused subscriptions count too (their unsubscribes on disconnect
    /// cannot be told apart), which only costs a send libzmq then filters.
    subscriptions: std::collections::HashMap<Vec<u8>, u64>,
}

impl LiveSocket {
    /// With CURVE (`guard` active) the XPUB is manual: a subscription is applied only when the
    /// subscriber's key may read every stream its prefix covers.
    fn new(mut xpub: zmq::Socket, guard: &Guard) -> zmq::Result<LiveSocket> {
        if guard.active() {
            depot_common::sockopt::set_xpub_manual(&mut xpub, true)?;
        }
        Ok(LiveSocket {
            xpub,
            subscriptions: Default::default(),
        })
    }

    /// Takes the subscription changes XPUB reports, applying the allowed ones in manual mode.
    fn take_subscriptions(&mut self, guard: &mut Guard) {
        loop {
            let mut message = zmq::Message::new();
            if self.xpub.recv(&mut message, zmq::DONTWAIT).is_err() {
                return;
            }
            let manual = guard.active();
            let user = if manual {
                user_id(&mut message)
            } else {
                String::new()
            };
            match message.split_first() {
                Some((1, prefix)) => {
                    *self.subscriptions.entry(prefix.to_vec()).or_default() += 1;
                    if manual {
                        let text = String::from_utf8_lossy(prefix);
                        // A topic is `stream level`: a prefix covers every stream it starts.
                        let stream = text.split(' ').next().unwrap_or_default();
                        let whole = text.contains(' ');
                        let allowed = guard.decide(&user, Op::LogRead(stream), |p| {
                            if whole {
                                p.allows(&Op::LogRead(stream))
                            } else {
                                p.allows_read_prefix(stream)
                            }
                        });
                        // In manual mode this applies to the pipe whose message was just read.
                        if allowed.is_ok() {
                            if let Err(e) = self.xpub.set_subscribe(prefix) {
                                tracing::warn!(error = %e, "live: cannot apply subscription");
                            }
                        }
                    }
                }
                Some((0, prefix)) => {
                    if let Some(count) = self.subscriptions.get_mut(prefix) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.subscriptions.remove(prefix);
                        }
                    }
                    if manual {
                        let _ = self.xpub.set_unsubscribe(prefix);
                    }
                }
                _ => {}
            }
        }
    }

    fn wanted(&self, topic: &[u8]) -> bool {
        self.subscriptions
            .keys()
            .any(|prefix| topic.starts_with(prefix))
    }
}

/// The live thread's sockets: the XPUBs and the doorbell.
pub struct LivePublisher {
    /// One message per record.
    plain: Option<LiveSocket>,
    /// Packed messages.
    packed: Option<LiveSocket>,
    /// Decides subscriptions with CURVE on.
    guard: Guard,
    doorbell: zmq::Socket,
    rx: Receiver<LiveBatch>,
    metrics: Arc<LogdMetrics>,
}

impl LivePublisher {
    /// Takes the bound live XPUBs (plain and packed; at least one) and binds the doorbell.
    pub fn bind(
        ctx: &zmq::Context,
        plain: Option<zmq::Socket>,
        packed: Option<zmq::Socket>,
        rx: Receiver<LiveBatch>,
        metrics: Arc<LogdMetrics>,
        guard: Guard,
    ) -> zmq::Result<LivePublisher> {
        let plain = plain
            .map(|xpub| LiveSocket::new(xpub, &guard))
            .transpose()?;
        let packed = packed
            .map(|xpub| LiveSocket::new(xpub, &guard))
            .transpose()?;
        let doorbell = ctx.socket(zmq::PULL)?;
        doorbell.set_linger(0)?;
        doorbell.bind(DOORBELL)?;
        Ok(LivePublisher {
            plain,
            packed,
            doorbell,
            rx,
            metrics,
            guard,
        })
    }

    /// Publishes until `stop` is set, then publishes what is still queued.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        loop {
            {
                let mut items = vec![self.doorbell.as_poll_item(zmq::POLLIN)];
                items.extend(
                    [&self.plain, &self.packed]
                        .into_iter()
                        .flatten()
                        .map(|live| live.xpub.as_poll_item(zmq::POLLIN)),
                );
                if let Err(e) = zmq::poll(&mut items, 100) {
                    tracing::warn!(error = %e, "live: poll failed");
                }
            }
            while self.doorbell.recv_bytes(zmq::DONTWAIT).is_ok() {}
            for live in [&mut self.plain, &mut self.packed].into_iter().flatten() {
                live.take_subscriptions(&mut self.guard);
            }
            let held = [&self.plain, &self.packed]
                .into_iter()
                .flatten()
                .map(|live| live.subscriptions.len() as u64)
                .sum();
            self.metrics
                .live_subscriptions
                .store(held, Ordering::Relaxed);
            while let Ok(batch) = self.rx.try_recv() {
                self.publish(batch);
            }
            if stop.load(Ordering::Acquire) {
                while let Ok(batch) = self.rx.try_recv() {
                    self.publish(batch);
                }
                break;
            }
        }
    }

    fn publish(&self, batch: LiveBatch) {
        let topic = protocol::live_topic(&batch.stream, batch.level);
        if let Some(packed) = self.packed.as_ref().filter(|live| live.wanted(&topic)) {
            self.publish_packed(&packed.xpub, &topic, &batch);
        }
        if let Some(plain) = self.plain.as_ref().filter(|live| live.wanted(&topic)) {
            self.publish_plain(&plain.xpub, topic, batch);
        }
    }

    /// Packed messages of at most [`protocol::PACKED_LIVE_BYTES`] of bodies; a packed ingest
    /// frame within that size is sent as it came.
    fn publish_packed(&self, xpub: &zmq::Socket, topic: &[u8], batch: &LiveBatch) {
        let mut seq = batch.first_seq;
        let mut send = |bodies: &[u8], count: usize| -> bool {
            let header = protocol::encode_header(
                seq,
                batch.ts_ns,
                batch.level,
                &batch.stream,
                &batch.source,
            );
            seq += count as u64;
            let frames: [&[u8]; 4] = [topic, &header, &(count as u32).to_be_bytes(), bodies];
            match xpub.send_multipart(frames, zmq::DONTWAIT) {
                Ok(()) => {
                    add(&self.metrics.live_packed_published, 1);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live: packed publish failed");
                    false
                }
            }
        };
        if batch.packed {
            for frame in &batch.bodies {
                let bodies = protocol::unpack_bodies(frame).unwrap_or_default();
                if frame.len() <= protocol::PACKED_LIVE_BYTES {
                    if !send(frame, bodies.len()) {
                        return;
                    }
                } else if !pack_in_pieces(&bodies, &mut send) {
                    return;
                }
            }
        } else {
            let bodies: Vec<&[u8]> = batch.bodies.iter().map(|b| &b[..]).collect();
            pack_in_pieces(&bodies, &mut send);
        }
    }

    fn publish_plain(&self, xpub: &zmq::Socket, topic: Vec<u8>, batch: LiveBatch) {
        let bodies: Vec<zmq::Message> = if batch.packed {
            batch
                .bodies
                .iter()
                .flat_map(|frame| protocol::unpack_bodies(frame).unwrap_or_default())
                .map(zmq::Message::from)
                .collect()
        } else {
            batch.bodies
        };
        let count = bodies.len() as u64;
        for (i, body) in bodies.into_iter().enumerate() {
            let header = protocol::encode_header(
                batch.first_seq + i as u64,
                batch.ts_ns,
                batch.level,
                &batch.stream,
                &batch.source,
            );
            // Without NODROP an XPUB drops for a full subscriber instead of failing, so these
            // sends do not block and fail only when the socket is closing.
            let sent = xpub
                .send(&topic, zmq::SNDMORE | zmq::DONTWAIT)
                .and_then(|()| xpub.send(header, zmq::SNDMORE | zmq::DONTWAIT))
                .and_then(|()| xpub.send(body, zmq::DONTWAIT));
            if let Err(e) = sent {
                tracing::warn!(error = %e, "live: publish failed");
                return;
            }
        }
        add(&self.metrics.live_published, count);
    }
}

/// Packs `bodies` into frames of at most [`protocol::PACKED_LIVE_BYTES`] (a bigger body goes
/// alone) and hands each with its record count to `send`; false when a send failed.
fn pack_in_pieces(bodies: &[&[u8]], send: &mut impl FnMut(&[u8], usize) -> bool) -> bool {
    let mut start = 0;
    while start < bodies.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < bodies.len()
            && (end == start || bytes + 4 + bodies[end].len() <= protocol::PACKED_LIVE_BYTES)
        {
            bytes += 4 + bodies[end].len();
            end += 1;
        }
        if !send(&protocol::pack_bodies(&bodies[start..end]), end - start) {
            return false;
        }
        start = end;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_stay_within_the_limit_keep_order_and_count_every_record() {
        let big = vec![7u8; protocol::PACKED_LIVE_BYTES + 10];
        let small = vec![1u8; 1000];
        let bodies: Vec<&[u8]> = (0..200)
            .map(|i| if i == 70 { &big[..] } else { &small[..] })
            .collect();
        let mut pieces: Vec<(Vec<u8>, usize)> = Vec::new();
        assert!(pack_in_pieces(&bodies, &mut |frame, count| {
            pieces.push((frame.to_vec(), count));
            true
        }));
        let mut unpacked = Vec::new();
        for (frame, count) in &pieces {
            let inner = protocol::unpack_bodies(frame).unwrap();
            assert_eq!(inner.len(), *count);
            assert!(frame.len() <= protocol::PACKED_LIVE_BYTES || *count == 1);
            unpacked.extend(inner.into_iter().map(<[u8]>::len));
        }
        let expected: Vec<usize> = bodies.iter().map(|b| b.len()).collect();
        assert_eq!(unpacked, expected);
        assert!(pieces.len() >= 4, "{}", pieces.len());
    }
}
