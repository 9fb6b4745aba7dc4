//! The replay API: a ROUTER for large catch-ups with credit-based flow control. The client
//! grants credit, the server sends at most that many records, so neither side's queues grow;
//! a client whose pipe is full anyway is parked and retried, never silently dropped
//! (`ZMQ_ROUTER_MANDATORY`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_common::authz::{user_id, Guard, Op};
use depot_common::ratelimit::RateLimited;
use depot_store::Store;

use crate::metrics::{add, inc, LogdMetrics};
use crate::protocol::{self, ApiRequest, Filter, ReplayStart};

/// Records looked at per batch (matching the filter or not), bounding one turn's work.
const SCAN_BATCH: usize = 4_096;
/// Bytes of records packed into one message.
const BATCH_BYTES: usize = 64 * 1024;
/// Records one replay may send per loop turn, so replays share the thread fairly.
const SEND_BUDGET: u64 = 16_384;
/// How long a replay may go without credit before the server checks that its client is still
/// there (an empty batch: sending to a vanished client fails, and its replay is released).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Messages queued per client: credit bounds a replay already, this bounds what one that
/// granted much and then stopped reading holds in the appliance (64 batches of 64 KiB).
pub const SNDHWM: i32 = 64;

/// A message built but not yet accepted by the socket.
struct Pending {
    /// Packed records (empty when only the end marker is left).
    packed: Vec<u8>,
    /// Records in `packed`.
    records: u64,
    /// Where reading goes on once it is sent.
    next: u64,
    /// Send the end marker after it.
    then_end: bool,
}

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
    /// The next message, kept when the socket refused it.
    pending: Option<Pending>,
    /// When the client was last heard from or a message last reached its pipe.
    contact: Instant,
}

/// The replay API thread.
pub struct ReplayApi {
    router: zmq::Socket,
    store: Arc<Store>,
    metrics: Arc<LogdMetrics>,
    /// Keyed by (client identity, request id).
    replays: HashMap<(Vec<u8>, Vec<u8>), ApiReplay>,
    bad_request: RateLimited,
    guard: Guard,
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
        guard: Guard,
    ) -> zmq::Result<Self> {
        router.set_router_mandatory(true)?;
        Ok(ReplayApi {
            router,
            store,
            metrics,
            replays: HashMap::new(),
            bad_request: RateLimited::default(),
            guard,
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
                match depot_common::frames::recv_frames(&self.router) {
                    Ok(mut frames) => {
                        // The sender's key name, for read permissions (CURVE only).
                        let user = match frames.last_mut() {
                            Some(last) if self.guard.active() => user_id(last),
                            _ => String::new(),
                        };
                        let frames = frames.iter().map(|f| f.to_vec()).collect();
                        self.handle(frames, &user)
                    }
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
            self.probe_idle();
            let active = self.replays.len() as u64;
            self.metrics
                .api_replays_active
                .store(active, Ordering::Relaxed);
        }
    }

    /// Releases the replays without credit whose client is gone: with no credit nothing is
    /// sent, so nothing else would notice (found by `tests/slow_consumers.rs`).
    fn probe_idle(&mut self) {
        let now = Instant::now();
        let router = &self.router;
        self.replays.retain(|(identity, id), replay| {
            if replay.credit > 0 || replay.pending.is_some() {
                return true;
            }
            if now.duration_since(replay.contact) < PROBE_INTERVAL {
                return true;
            }
            let probe: [&[u8]; 4] = [identity, id, protocol::RECORDS_MARKER, b""];
            match router.send_multipart(probe, zmq::DONTWAIT) {
                // Its pipe is there (full or not): connected, only not granting credit.
                Ok(()) | Err(zmq::Error::EAGAIN) => {
                    replay.contact = now;
                    true
                }
                // EHOSTUNREACH: gone.
                Err(_) => false,
            }
        });
    }

    fn reply(&self, identity: &[u8], id: &[u8], marker: &[u8], payload: &[u8]) -> zmq::Result<()> {
        let message: [&[u8]; 4] = [identity, id, marker, payload];
        self.router.send_multipart(message, zmq::DONTWAIT)
    }

    fn handle(&mut self, frames: Vec<Vec<u8>>, user: &str) {
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
                if let Err(reason) = self.guard.check(user, Op::LogRead(&stream)) {
                    let _ = self.reply(identity, &id, protocol::ERROR_MARKER, reason.as_bytes());
                    return;
                }
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
                            pending: None,
                            contact: Instant::now(),
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
                    replay.contact = Instant::now();
                }
            }
            Ok(ApiRequest::Cancel { id }) => {
                self.replays.remove(&(identity.clone(), id));
            }
            Ok(ApiRequest::Streams { id, prefix }) => {
                // A key lists only the streams it may read.
                let grants = self.guard.grants(user);
                let names: Vec<String> = self
                    .store
                    .log()
                    .streams()
                    .into_iter()
                    .filter(|s| s.starts_with(&prefix) && !depot_store::is_internal_stream(s))
                    .filter(|s| grants.allows(&Op::LogRead(s)))
                    .collect();
                let _ = self.reply(
                    identity,
                    &id,
                    protocol::STREAMS_MARKER,
                    names.join("\n").as_bytes(),
                );
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
        let mut packs = 0;
        let outcome = loop {
            if let Some(pending) = replay.pending.take() {
                if pending.records > 0 {
                    let message: [&[u8]; 4] =
                        [identity, id, protocol::RECORDS_MARKER, &pending.packed];
                    match self.router.send_multipart(message, zmq::DONTWAIT) {
                        Ok(()) => {
                            replay.credit -= pending.records;
                            sent += pending.records;
                            replay.contact = Instant::now();
                        }
                        Err(zmq::Error::EAGAIN) => {
                            replay.pending = Some(pending);
                            break Outcome::Blocked;
                        }
                        // EHOSTUNREACH: the client is gone.
                        Err(_) => break Outcome::Done,
                    }
                }
                replay.next = pending.next;
                if pending.then_end {
                    let last = (replay.next - 1).min(self.store.log().last_seq(&replay.stream));
                    let message: [&[u8]; 4] =
                        [identity, id, protocol::END_MARKER, &last.to_be_bytes()];
                    match self.router.send_multipart(message, zmq::DONTWAIT) {
                        Ok(()) => {
                            inc(&self.metrics.replays_finished);
                            break Outcome::Done;
                        }
                        Err(zmq::Error::EAGAIN) => {
                            replay.pending = Some(Pending {
                                packed: Vec::new(),
                                records: 0,
                                next: replay.next,
                                then_end: true,
                            });
                            break Outcome::Blocked;
                        }
                        Err(_) => break Outcome::Done,
                    }
                }
            }
            // Also bounded by packs: a filter that matches nothing must not hold the thread.
            if replay.credit == 0 || sent >= SEND_BUDGET || packs >= 16 {
                break Outcome::Continue;
            }
            packs += 1;
            match Self::pack(&self.store, replay) {
                Ok(pending) => replay.pending = Some(pending),
                Err(e) => {
                    let reason = e.to_string();
                    let message: [&[u8]; 4] =
                        [identity, id, protocol::ERROR_MARKER, reason.as_bytes()];
                    let _ = self.router.send_multipart(message, zmq::DONTWAIT);
                    break Outcome::Done;
                }
            }
        };
        add(&self.metrics.replay_records, sent);
        outcome
    }

    /// Reads the next records from the store straight into one message, up to the credit, the
    /// message size and the scan bound.
    fn pack(store: &Store, replay: &ApiReplay) -> Result<Pending, depot_store::StoreError> {
        let to = replay.filter.until_seq.unwrap_or(u64::MAX);
        let (credit, filter, stream) = (replay.credit, &replay.filter, replay.stream.as_str());
        let mut packed = Vec::with_capacity(BATCH_BYTES + 1024);
        let (mut records, mut last, mut until_reached) = (0u64, None, false);
        let visited = store
            .log()
            .visit(stream, replay.next, to, SCAN_BATCH, |r| {
                if filter.until_ts.is_some_and(|until| r.ts_ns > until) {
                    until_reached = true;
                    return false;
                }
                last = Some(r.seq);
                if filter.accepts(r.level, r.body) {
                    protocol::pack_record(
                        &mut packed,
                        r.seq,
                        r.ts_ns,
                        r.level,
                        stream,
                        r.source,
                        r.body,
                    );
                    records += 1;
                }
                records < credit && packed.len() < BATCH_BYTES
            })?;
        let next = last.map_or(replay.next, |seq| seq + 1);
        Ok(Pending {
            packed,
            records,
            next,
            then_end: visited == 0 || until_reached || next > to,
        })
    }
}
