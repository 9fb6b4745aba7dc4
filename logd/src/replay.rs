//! Replay over a plain SUB: a subscriber subscribes to `replay/<stream>/<start>/<nonce>` on the
//! replay XPUB and receives the stored records from there, then an end marker.
//!
//! The XPUB runs with `ZMQ_XPUB_MANUAL` (only well-formed replay topics are applied, so a bare
//! prefix or `""` gets nothing) and `ZMQ_XPUB_NODROP` (a full subscriber makes the send fail
//! instead of losing records). libzmq refuses a send when any matching pipe is full, so every
//! replay has its own topic, and a refused replay is parked and retried ~1 ms later while the
//! others go on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use depot_common::authz::{user_id, Guard, Op};
use depot_common::ratelimit::RateLimited;
use depot_store::{Record, Store};

use crate::metrics::{add, inc, LogdMetrics};
use crate::protocol::{self, ReplayStart};

/// Records read from the store at a time for one replay.
const READ_BATCH: usize = 1_000;
/// Messages one replay may send per loop turn, so replays share the thread fairly.
const SEND_BUDGET: usize = 2_000;

/// One replay in progress.
struct Replay {
    topic: Vec<u8>,
    stream: String,
    /// Next sequence to read from the store.
    next: u64,
    /// Records read but not yet accepted by the socket.
    parked: VecDeque<Record>,
    /// Set when the store has nothing after `next`: only the end marker is left.
    caught_up: bool,
}

/// The replay thread.
pub struct ReplayServer {
    xpub: zmq::Socket,
    store: Arc<Store>,
    metrics: Arc<LogdMetrics>,
    replays: Vec<Replay>,
    bad_topic: RateLimited,
    guard: Guard,
}

/// What one replay did in a turn.
enum Progress {
    /// It sent its whole budget or parked records: more to do.
    Busy,
    /// The socket refused a send: retry after a pause.
    Blocked,
    /// End marker sent.
    Finished,
}

impl ReplayServer {
    /// A replay server on an XPUB that is bound already.
    pub fn new(
        mut xpub: zmq::Socket,
        store: Arc<Store>,
        metrics: Arc<LogdMetrics>,
        guard: Guard,
    ) -> zmq::Result<Self> {
        depot_common::sockopt::set_xpub_manual(&mut xpub, true)?;
        depot_common::sockopt::set_xpub_nodrop(&mut xpub, true)?;
        Ok(ReplayServer {
            xpub,
            store,
            metrics,
            replays: Vec::new(),
            bad_topic: RateLimited::default(),
            guard,
        })
    }

    /// Serves replays until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let mut all_blocked = false;
        while !stop.load(Ordering::Acquire) {
            let timeout = match (self.replays.is_empty(), all_blocked) {
                (true, _) => 100,
                (false, true) => RETRY_INTERVAL.as_millis() as i64,
                (false, false) => 0,
            };
            let mut items = [self.xpub.as_poll_item(zmq::POLLIN)];
            if let Err(e) = zmq::poll(&mut items, timeout) {
                tracing::warn!(error = %e, "replay: poll failed");
            }
            self.take_subscriptions();
            all_blocked = self.pump();
        }
    }

    fn take_subscriptions(&mut self) {
        loop {
            let mut message = zmq::Message::new();
            if self.xpub.recv(&mut message, zmq::DONTWAIT).is_err() {
                break;
            }
            // The subscriber's key name travels with its subscription message.
            let user = if self.guard.active() {
                user_id(&mut message)
            } else {
                String::new()
            };
            let Some((&kind, topic)) = message.split_first() else {
                continue;
            };
            match kind {
                1 => self.subscribe(topic, &user),
                0 => self.unsubscribe(topic),
                _ => {}
            }
        }
    }

    fn subscribe(&mut self, topic: &[u8], user: &str) {
        let request = match protocol::parse_replay_topic(topic) {
            Ok(request) => request,
            Err(e) => {
                inc(&self.metrics.replay_rejected);
                if let Some(suppressed) = self.bad_topic.allow() {
                    tracing::warn!(error = %e, topic = %String::from_utf8_lossy(topic), suppressed,
                        "replay: subscription ignored (expected replay/<stream>/<start>/<nonce>)");
                }
                return;
            }
        };
        if self.replays.iter().any(|r| r.topic == topic) {
            return;
        }
        // In manual mode this applies to the pipe whose message was just read: the subscriber.
        if let Err(e) = self.xpub.set_subscribe(topic) {
            tracing::warn!(error = %e, "replay: cannot apply subscription");
            return;
        }
        if let Err(reason) = self.guard.check(user, Op::LogRead(&request.stream)) {
            // Applied above so the refusal reaches the subscriber, then taken back.
            let message: [&[u8]; 3] = [topic, protocol::ERROR_MARKER, reason.as_bytes()];
            let _ = self.xpub.send_multipart(message, zmq::DONTWAIT);
            let _ = self.xpub.set_unsubscribe(topic);
            return;
        }
        let log = self.store.log();
        let start = match request.start {
            ReplayStart::Seq(seq) => Ok(seq),
            ReplayStart::Time(ts) => log.seq_at_time(&request.stream, ts),
            ReplayStart::Ago(age) => log.seq_at_time(
                &request.stream,
                depot_store::now_ns().saturating_sub(age.as_nanos() as u64),
            ),
        };
        match start {
            Ok(next) => {
                inc(&self.metrics.replays_started);
                tracing::debug!(stream = %request.stream, from = next, "replay: started");
                self.replays.push(Replay {
                    topic: topic.to_vec(),
                    stream: request.stream,
                    next: next.max(1),
                    parked: VecDeque::new(),
                    caught_up: false,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay: cannot find the start");
                let reason = e.to_string();
                let message: [&[u8]; 3] = [topic, protocol::ERROR_MARKER, reason.as_bytes()];
                let _ = self.xpub.send_multipart(message, zmq::DONTWAIT);
            }
        }
    }

    fn unsubscribe(&mut self, topic: &[u8]) {
        self.replays.retain(|r| r.topic != topic);
        let _ = self.xpub.set_unsubscribe(topic);
    }

    /// Advances every replay; returns true when all of them are blocked by full subscribers.
    fn pump(&mut self) -> bool {
        let mut blocked = 0;
        let mut index = 0;
        while index < self.replays.len() {
            match self.advance(index) {
                Progress::Finished => {
                    inc(&self.metrics.replays_finished);
                    self.replays.swap_remove(index);
                    continue;
                }
                Progress::Blocked => blocked += 1,
                Progress::Busy => {}
            }
            index += 1;
        }
        blocked > 0 && blocked == self.replays.len()
    }

    fn advance(&mut self, index: usize) -> Progress {
        let replay = &mut self.replays[index];
        let mut sent = 0;
        while sent < SEND_BUDGET {
            if replay.parked.is_empty() && !replay.caught_up {
                match self
                    .store
                    .log()
                    .read(&replay.stream, replay.next, u64::MAX, READ_BATCH)
                {
                    Ok(records) if records.is_empty() => replay.caught_up = true,
                    Ok(records) => {
                        replay.next = records.last().map_or(replay.next, |r| r.seq + 1);
                        replay.parked.extend(records);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, stream = %replay.stream, "replay: read failed");
                        let reason = e.to_string();
                        let message: [&[u8]; 3] =
                            [&replay.topic, protocol::ERROR_MARKER, reason.as_bytes()];
                        let _ = self.xpub.send_multipart(message, zmq::DONTWAIT);
                        return Progress::Finished;
                    }
                }
            }
            let Some(record) = replay.parked.front() else {
                // Caught up: the end marker carries the last sequence sent.
                let last = (replay.next - 1).min(self.store.log().last_seq(&replay.stream));
                let message: [&[u8]; 3] =
                    [&replay.topic, protocol::END_MARKER, &last.to_be_bytes()];
                return match self.xpub.send_multipart(message, zmq::DONTWAIT) {
                    Ok(()) => Progress::Finished,
                    Err(_) => Progress::Blocked,
                };
            };
            let header = protocol::encode_header(
                record.seq,
                record.ts_ns,
                record.level,
                &replay.stream,
                &record.source,
            );
            let message: [&[u8]; 3] = [&replay.topic, &header, &record.body];
            match self.xpub.send_multipart(message, zmq::DONTWAIT) {
                Ok(()) => {
                    replay.parked.pop_front();
                    sent += 1;
                }
                Err(zmq::Error::EAGAIN) => {
                    add(&self.metrics.replay_records, sent as u64);
                    return Progress::Blocked;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay: send failed");
                    return Progress::Finished;
                }
            }
        }
        add(&self.metrics.replay_records, sent as u64);
        Progress::Busy
    }
}

/// How long a blocked replay waits before it is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(1);
