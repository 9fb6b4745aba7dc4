//! The ingest thread: owns the PULL, SUB and acked ROUTER sockets, stores what they receive,
//! hands it to the live thread, and confirms acked batches once the store says durable.

use depot_common::frames::recv_frames;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use depot_common::authz::{Guard, Op};
use depot_common::ratelimit::RateLimited;
use depot_store::{NewRecord, Store, Ticket};

use crate::live::{LiveBatch, LiveFeed};
use crate::metrics::{add, inc, LogdMetrics};
use crate::protocol::{self, IngestBatch, ProtocolError};
use crate::unread_acks::{Sent, UnreadAcks};

/// Messages taken from one socket per loop turn, so no socket starves the others.
const MESSAGES_PER_TURN: usize = 512;
/// Clients with unread acks retried per loop turn, and ack sends tried for them: a turn's
/// cost stays bounded however many acks wait.
const RETRY_CLIENTS_PER_TURN: usize = 64;
const RETRY_SENDS_PER_TURN: usize = 4_096;

/// An acked batch waiting for its commit.
struct PendingAck {
    ticket: Ticket,
    identity: Vec<u8>,
    batch_id: Vec<u8>,
    first: u64,
    last: u64,
}

/// Which path a message came in on.
#[derive(Clone, Copy)]
enum Path {
    Pull,
    Pub,
    Acked,
}

/// The ingest sockets (each optional: an empty endpoint switches it off).
pub struct IngestSockets {
    /// Fire-and-forget PULL.
    pub pull: Option<zmq::Socket>,
    /// SUB for PUB publishers (bound and connected).
    pub sub: Option<zmq::Socket>,
    /// Acked ROUTER.
    pub acked: Option<zmq::Socket>,
}

/// The ingest thread's state.
pub struct Ingest {
    sockets: IngestSockets,
    store: Arc<Store>,
    live: LiveFeed,
    metrics: Arc<LogdMetrics>,
    max_message_size: usize,
    max_frames: usize,
    pending: VecDeque<PendingAck>,
    /// Durable acks whose client's pipe was full, bounded by `max_unread_acks`.
    unread: UnreadAcks<PendingAck>,
    bad_input: RateLimited,
    store_failure: RateLimited,
    acks_dropped: RateLimited,
    guard: Guard,
}

impl Ingest {
    /// Ingest over `sockets` into `store`, feeding `live`; messages over `max_message_size`
    /// bytes or `max_frames` frames are refused; beyond `max_unread_acks` acks that clients
    /// do not read, the oldest are dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sockets: IngestSockets,
        store: Arc<Store>,
        live: LiveFeed,
        metrics: Arc<LogdMetrics>,
        max_message_size: usize,
        max_frames: usize,
        max_unread_acks: usize,
        guard: Guard,
    ) -> Self {
        Ingest {
            sockets,
            store,
            live,
            metrics,
            max_message_size,
            max_frames,
            pending: VecDeque::new(),
            unread: UnreadAcks::new(max_unread_acks),
            bad_input: RateLimited::default(),
            store_failure: RateLimited::default(),
            acks_dropped: RateLimited::default(),
            guard,
        }
    }

    /// Runs until `stop` is set; then takes what is already queued, waits for its commit and
    /// answers every acked batch before returning.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let timeout = if stopping {
                0
            } else if !self.pending.is_empty() {
                1
            } else if !self.unread.is_empty() {
                // Clients not reading their acks: look again soon, not in a busy loop.
                10
            } else {
                100
            };
            let received = self.poll_and_receive(timeout);
            self.send_due_acks();
            if stopping && received == 0 {
                break;
            }
        }
        // Everything received is stored; answer what becomes durable within a bounded wait.
        if let Some(last) = self.pending.back().map(|p| p.ticket) {
            let _ = self
                .store
                .wait_durable_timeout(last, std::time::Duration::from_secs(5));
        }
        self.send_due_acks();
    }

    fn poll_and_receive(&mut self, timeout: i64) -> usize {
        let sockets = [
            (self.sockets.pull.as_ref(), Path::Pull),
            (self.sockets.sub.as_ref(), Path::Pub),
            (self.sockets.acked.as_ref(), Path::Acked),
        ];
        let mut items: Vec<zmq::PollItem<'_>> = Vec::new();
        let mut paths = Vec::new();
        for (socket, path) in sockets {
            if let Some(socket) = socket {
                items.push(socket.as_poll_item(zmq::POLLIN));
                paths.push(path);
            }
        }
        if let Err(e) = zmq::poll(&mut items, timeout) {
            tracing::warn!(error = %e, "ingest: poll failed");
            return 0;
        }
        let ready: Vec<Path> = items
            .iter()
            .zip(paths)
            .filter(|(item, _)| item.is_readable())
            .map(|(_, path)| path)
            .collect();
        drop(items);
        let mut received = 0;
        for path in ready {
            for _ in 0..MESSAGES_PER_TURN {
                let socket = match path {
                    Path::Pull => self.sockets.pull.as_ref(),
                    Path::Pub => self.sockets.sub.as_ref(),
                    Path::Acked => self.sockets.acked.as_ref(),
                };
                let Some(socket) = socket else { break };
                match recv_frames(socket) {
                    Ok(frames) => {
                        received += 1;
                        self.handle(path, frames);
                    }
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "ingest: receive failed");
                        break;
                    }
                }
            }
        }
        received
    }

    fn handle(&mut self, path: Path, mut frames: Vec<zmq::Message>) {
        let limit = self.max_message_size;
        // The acked ROUTER adds the peer's identity frame.
        let own = usize::from(matches!(path, Path::Acked));
        if frames.len() - own > self.max_frames {
            let e = ProtocolError::TooManyFrames {
                got: frames.len() - own,
                limit: self.max_frames,
            };
            self.reject(&e);
            if let (Path::Acked, [identity, batch_id, ..]) = (path, &frames[..]) {
                if (1..=255).contains(&batch_id.len()) {
                    let (identity, batch_id) = (identity.to_vec(), batch_id.to_vec());
                    self.reply_error(&identity, &batch_id, &e.to_string());
                }
            }
            return;
        }
        match path {
            Path::Pull | Path::Pub => {
                let parsed = match path {
                    Path::Pull => protocol::parse_push(&frames, limit),
                    _ => protocol::parse_pub(&frames, limit),
                };
                match parsed.map(|batch| Owned::from(&batch, frames.len())) {
                    Ok(owned) => {
                        // No reply path: a refused batch, or one over its key's rate, is
                        // dropped (counted by the guard).
                        if self.guard.active() {
                            let last = frames.len() - 1;
                            let op = Op::LogWrite(&owned.stream);
                            if self
                                .guard
                                .check_frame_admit(&mut frames[last], op, owned.records)
                                .is_err()
                            {
                                return;
                            }
                        }
                        let bodies = frames.split_off(owned.body_index);
                        let stored = self.store_batch(&owned, bodies);
                        if let Ok((_, n)) = stored {
                            match path {
                                Path::Pull => add(&self.metrics.stored_pull, n),
                                _ => add(&self.metrics.stored_pub, n),
                            }
                        }
                    }
                    Err(e) => self.reject(&e),
                }
            }
            Path::Acked => self.handle_acked(frames),
        }
    }

    fn handle_acked(&mut self, mut frames: Vec<zmq::Message>) {
        if frames.len() < 2 {
            self.reject(&ProtocolError::FrameCount {
                got: frames.len().saturating_sub(1),
                expected: "[batch id][stream][attributes][body]+",
            });
            return;
        }
        let parsed = protocol::parse_acked(&frames[1..], self.max_message_size)
            .map(|(id, batch)| (id.to_vec(), Owned::from(&batch, frames.len())))
            .map_err(|(id, e)| (id.map(<[u8]>::to_vec), e));
        let identity = frames[0].to_vec();
        match parsed {
            Ok((batch_id, owned)) => {
                if self.guard.active() {
                    let last = frames.len() - 1;
                    let op = Op::LogWrite(&owned.stream);
                    if let Err(reason) =
                        self.guard
                            .check_frame_admit(&mut frames[last], op, owned.records)
                    {
                        self.reply_error(&identity, &batch_id, &reason);
                        return;
                    }
                }
                let bodies = frames.split_off(owned.body_index);
                match self.store_batch(&owned, bodies) {
                    Ok((appended, n)) => {
                        add(&self.metrics.stored_acked, n);
                        self.pending.push_back(PendingAck {
                            ticket: appended.ticket,
                            identity,
                            batch_id,
                            first: appended.first,
                            last: appended.last,
                        });
                    }
                    Err(e) => {
                        let reason = format!("not stored: {e}");
                        self.reply_error(&identity, &batch_id, &reason);
                    }
                }
            }
            Err((batch_id, e)) => {
                self.reject(&e);
                if let Some(batch_id) = batch_id {
                    self.reply_error(&identity, &batch_id, &e.to_string());
                }
            }
        }
    }

    /// Appends a parsed batch and hands it to live. Returns the placement and record count.
    fn store_batch(
        &mut self,
        owned: &Owned,
        bodies: Vec<zmq::Message>,
    ) -> Result<(depot_store::Appended, u64), depot_store::StoreError> {
        let slices: Vec<&[u8]> = if owned.packed {
            // Checked when the message was parsed.
            bodies
                .iter()
                .flat_map(|frame| protocol::unpack_bodies(frame).unwrap_or_default())
                .collect()
        } else {
            bodies.iter().map(|frame| &frame[..]).collect()
        };
        let records: Vec<NewRecord<'_>> = slices
            .iter()
            .map(|body| NewRecord {
                level: owned.level,
                source: &owned.source,
                body,
            })
            .collect();
        match self.store.log().append(&owned.stream, &records) {
            Ok(appended) => {
                let n = records.len() as u64;
                drop(records);
                drop(slices);
                self.live.send(LiveBatch {
                    stream: owned.stream.clone(),
                    level: owned.level,
                    source: owned.source.clone(),
                    first_seq: appended.first,
                    ts_ns: appended.ts_ns,
                    bodies,
                    packed: owned.packed,
                });
                Ok((appended, n))
            }
            Err(e) => {
                inc(&self.metrics.store_errors);
                if let Some(suppressed) = self.store_failure.allow() {
                    tracing::error!(error = %e, stream = %owned.stream, suppressed, "ingest: store refused records");
                }
                Err(e)
            }
        }
    }

    fn reject(&mut self, e: &ProtocolError) {
        match e {
            ProtocolError::TooLarge { .. } | ProtocolError::TooManyFrames { .. } => {
                inc(&self.metrics.rejected_oversize)
            }
            _ => inc(&self.metrics.rejected_malformed),
        }
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(error = %e, suppressed, "ingest: message refused");
        }
    }

    fn reply_error(&mut self, identity: &[u8], batch_id: &[u8], reason: &str) {
        inc(&self.metrics.ack_errors);
        if let Some(router) = &self.sockets.acked {
            let reply: [&[u8]; 4] = [
                identity,
                batch_id,
                protocol::ERROR_MARKER,
                reason.as_bytes(),
            ];
            let _ = router.send_multipart(reply, zmq::DONTWAIT);
        }
    }

    /// Confirms every pending batch the durable watermark covers, in order; acks a client's
    /// full pipe refuses wait in `unread` (found by the malformed-input storm: a sender that
    /// never reads stalled every acked client) and are retried a bounded number per turn.
    fn send_due_acks(&mut self) {
        self.retry_unread();
        if self.pending.is_empty() {
            return;
        }
        let mark = self.store.watermark();
        while let Some(front) = self.pending.front() {
            if front.ticket.get() > mark.durable {
                if mark.poisoned.is_some() || mark.closed {
                    let failed = self.pending.pop_front().map(|p| (p.identity, p.batch_id));
                    if let Some((identity, batch_id)) = failed {
                        self.reply_error(
                            &identity,
                            &batch_id,
                            "not durable: the store failed; retry after the appliance recovers",
                        );
                    }
                    continue;
                }
                break;
            }
            if self.sockets.acked.is_none() {
                break;
            }
            let Some(ack) = self.pending.pop_front() else {
                break;
            };
            // Behind the client's unread acks, in order; no send that would fail anyway.
            if self.unread.holds(&ack.identity) {
                self.keep_unread(ack);
                continue;
            }
            let Some(router) = &self.sockets.acked else {
                break;
            };
            match send_ack(router, &ack) {
                Sent::Delivered => inc(&self.metrics.acks_sent),
                Sent::Full => self.keep_unread(ack),
                Sent::Gone => {}
            }
        }
    }

    fn keep_unread(&mut self, ack: PendingAck) {
        let dropped = self.unread.push(ack.identity.clone(), ack);
        if dropped.is_empty() {
            return;
        }
        add(&self.metrics.acks_dropped, dropped.len() as u64);
        if let Some(suppressed) = self.acks_dropped.allow() {
            tracing::warn!(
                dropped = dropped.len(),
                suppressed,
                "ingest: acks of a client that does not read them dropped (their batches are \
                 stored; the client will time out and resend)"
            );
        }
    }

    fn retry_unread(&mut self) {
        let (Some(router), false) = (&self.sockets.acked, self.unread.is_empty()) else {
            return;
        };
        let metrics = &self.metrics;
        self.unread
            .retry(RETRY_CLIENTS_PER_TURN, RETRY_SENDS_PER_TURN, |_, ack| {
                let sent = send_ack(router, ack);
                if sent == Sent::Delivered {
                    inc(&metrics.acks_sent);
                }
                sent
            });
    }
}

/// Sends one ack without waiting.
fn send_ack(router: &zmq::Socket, ack: &PendingAck) -> Sent {
    let reply: [&[u8]; 4] = [
        &ack.identity,
        &ack.batch_id,
        &ack.first.to_be_bytes(),
        &ack.last.to_be_bytes(),
    ];
    match router.send_multipart(reply, zmq::DONTWAIT) {
        Ok(()) => Sent::Delivered,
        Err(zmq::Error::EAGAIN) => Sent::Full,
        // The client went away; its batch is stored all the same.
        Err(e) => {
            tracing::debug!(error = %e, "ingest: ack undeliverable");
            Sent::Gone
        }
    }
}

/// What a parsed batch needs once its frames are split: owned names, and where bodies start.
struct Owned {
    stream: String,
    level: u8,
    source: String,
    body_index: usize,
    packed: bool,
    /// Records in the batch (packed frames hold several), for the key's rate limit.
    records: u64,
}

impl Owned {
    fn from(batch: &IngestBatch<'_>, frame_count: usize) -> Self {
        Owned {
            stream: batch.stream.to_owned(),
            level: batch.level,
            source: batch.source.to_owned(),
            body_index: frame_count - batch.body_frames,
            packed: batch.packed,
            records: batch.bodies.len() as u64,
        }
    }
}
