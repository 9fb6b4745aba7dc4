//! The replay API: a ROUTER for large catch-ups with credit-based flow control. The client
//! grants credit, the server sends at most that many records, so neither side's queues grow;
//! a client whose pipe is full anyway is parked and retried, never silently dropped
//! (`ZMQ_ROUTER_MANDATORY`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use depot_common::ratelimit::RateLimited;
use depot_store::Store;

use crate::metrics::{add, inc, LogdMetrics};
use crate::protocol::{self, ApiRequest, Filter, ReplayStart};

/// Records read from the store at a time.
const READ_BATCH: usize = 1_000;
/// Records one replay may send per loop turn.
const SEND_BUDGET: u64 = 2_000;

/// One replay in progress.
struct ApiReplay {
    stream: String,
    /// Next sequence to read.
    next: u64,
    /// Records the client still accepts.
    credit: u64,
    filter: Filter,
    /// Set when the socket refused a send; cleared when retried.
    blocked: bool,
}

/// The replay API thread.
pub struct ReplayApi {
    router: zmq::Socket,
    store: Arc<Store>,
    metrics: Arc<LogdMetrics>,
    /// Keyed by (client identity, request id).
    replays: HashMap<(Vec<u8>, Vec<u8>), ApiReplay>,
    bad_request: RateLimited,
}

enum Outcome {
    Continue,
    Blocked,
    Done,
}

impl ReplayApi {
    /// A replay API on a ROUTER that is bound already.
    pub fn new(
        router: zmq::Socket,
        store: Arc<Store>,
        metrics: Arc<LogdMetrics>,
    ) -> zmq::Result<Self> {
        router.set_router_mandatory(true)?;
        Ok(ReplayApi {
            router,
            store,
            metrics,
            replays: HashMap::new(),
            bad_request: RateLimited::default(),
        })
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            let sendable = self.replays.values().any(|r| r.credit > 0 && !r.blocked);
            let blocked = self.replays.values().any(|r| r.credit > 0 && r.blocked);
            let timeout = if sendable {
                0
            } else if blocked {
                1
            } else {
                100
            };
            let mut items = [self.router.as_poll_item(zmq::POLLIN)];
            if let Err(e) = zmq::poll(&mut items, timeout) {
                tracing::warn!(error = %e, "replay api: poll failed");
            }
            for _ in 0..256 {
                match self.router.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => self.handle(frames),
                    Err(_) => break,
                }
            }
            for replay in self.replays.values_mut() {
                replay.blocked = false;
            }
            let keys: Vec<_> = self.replays.keys().cloned().collect();
            for key in keys {
                match self.advance(&key) {
                    Outcome::Continue => {}
                    Outcome::Blocked => {
                        if let Some(replay) = self.replays.get_mut(&key) {
                            replay.blocked = true;
                        }
                    }
                    Outcome::Done => {
                        self.replays.remove(&key);
                    }
                }
            }
        }
    }

    fn reply(&self, identity: &[u8], id: &[u8], marker: &[u8], payload: &[u8]) -> zmq::Result<()> {
        let message: [&[u8]; 4] = [identity, id, marker, payload];
        self.router.send_multipart(message, zmq::DONTWAIT)
    }

    fn handle(&mut self, frames: Vec<Vec<u8>>) {
        let Some((identity, request)) = frames.split_first() else {
            return;
        };
        match protocol::parse_api_request(request) {
            Ok(ApiRequest::Replay {
                id,
                stream,
                start,
                credit,
                filter,
            }) => {
                let log = self.store.log();
                let next = match start {
                    ReplayStart::Seq(seq) => Ok(seq.max(1)),
                    ReplayStart::Time(ts) => log.seq_at_time(&stream, ts),
                    ReplayStart::Ago(age) => log.seq_at_time(
                        &stream,
                        depot_store::now_ns().saturating_sub(age.as_nanos() as u64),
                    ),
                };
                match next {
                    Ok(next) => {
                        inc(&self.metrics.replays_started);
                        let replay = ApiReplay {
                            stream,
                            next,
                            credit: u64::from(credit),
                            filter,
                            blocked: false,
                        };
                        self.replays.insert((identity.clone(), id), replay);
                    }
                    Err(e) => {
                        let _ = self.reply(
                            identity,
                            &id,
                            protocol::ERROR_MARKER,
                            e.to_string().as_bytes(),
                        );
                    }
                }
            }
            Ok(ApiRequest::Credit { id, n }) => {
                if let Some(replay) = self.replays.get_mut(&(identity.clone(), id)) {
                    replay.credit = replay.credit.saturating_add(u64::from(n));
                }
            }
            Ok(ApiRequest::Cancel { id }) => {
                self.replays.remove(&(identity.clone(), id));
            }
            Err((id, e)) => {
                inc(&self.metrics.replay_rejected);
                if let Some(suppressed) = self.bad_request.allow() {
                    tracing::warn!(error = %e, suppressed, "replay api: request refused");
                }
                if let Some(id) = id {
                    let _ = self.reply(
                        identity,
                        &id,
                        protocol::ERROR_MARKER,
                        e.to_string().as_bytes(),
                    );
                }
            }
        }
    }

    fn advance(&mut self, key: &(Vec<u8>, Vec<u8>)) -> Outcome {
        let (identity, id) = key;
        let Some(replay) = self.replays.get_mut(key) else {
            return Outcome::Done;
        };
        let mut sent = 0u64;
        while replay.credit > 0 && sent < SEND_BUDGET {
            let want = READ_BATCH.min(replay.credit as usize);
            let to = replay.filter.until_seq.unwrap_or(u64::MAX);
            let records = match self.store.log().read(&replay.stream, replay.next, to, want) {
                Ok(records) => records,
                Err(e) => {
                    let reason = e.to_string();
                    let message: [&[u8]; 4] =
                        [identity, id, protocol::ERROR_MARKER, reason.as_bytes()];
                    let _ = self.router.send_multipart(message, zmq::DONTWAIT);
                    return Outcome::Done;
                }
            };
            let past_until = |ts: u64| replay.filter.until_ts.is_some_and(|until| ts > until);
            let ended = records.is_empty() || records.first().is_some_and(|r| past_until(r.ts_ns));
            if ended {
                let last = (replay.next - 1).min(self.store.log().last_seq(&replay.stream));
                let message: [&[u8]; 4] = [identity, id, protocol::END_MARKER, &last.to_be_bytes()];
                return match self.router.send_multipart(message, zmq::DONTWAIT) {
                    Ok(()) => {
                        inc(&self.metrics.replays_finished);
                        Outcome::Done
                    }
                    Err(zmq::Error::EAGAIN) => Outcome::Blocked,
                    Err(_) => Outcome::Done,
                };
            }
            for record in records {
                if past_until(record.ts_ns) {
                    break;
                }
                if replay.filter.accepts(record.level, &record.body) {
                    let header = protocol::encode_header(
                        record.seq,
                        record.ts_ns,
                        record.level,
                        &replay.stream,
                        &record.source,
                    );
                    let message: [&[u8]; 5] =
                        [identity, id, protocol::RECORD_MARKER, &header, &record.body];
                    match self.router.send_multipart(message, zmq::DONTWAIT) {
                        Ok(()) => {
                            replay.credit -= 1;
                            sent += 1;
                        }
                        Err(zmq::Error::EAGAIN) => {
                            add(&self.metrics.replay_records, sent);
                            return Outcome::Blocked;
                        }
                        // EHOSTUNREACH: the client is gone.
                        Err(_) => return Outcome::Done,
                    }
                }
                replay.next = record.seq + 1;
                if replay.credit == 0 {
                    break;
                }
            }
        }
        add(&self.metrics.replay_records, sent);
        Outcome::Continue
    }
}
