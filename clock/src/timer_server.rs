//! The timers thread: owns the timers ROUTER and the inproc PUSH of topic firings to the
//! ticker. Timers live in the store's `clock` key-value tree (one entry per timer, key = id)
//! and in memory only as `(deadline, id)` in a binary heap, 16 bytes each.
//!
//! - ADD and CANCEL are answered once their write is durable (replies keep request order).
//! - A firing is sent first, then the timer is removed or advanced in the store: a crash in
//!   between fires it again after the restart (at-least-once), it is never lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use depot_common::ratelimit::RateLimited;
use depot_store::{Kv, Store, Ticket};

use crate::metrics::ClockMetrics;
use crate::protocol::{self, Firing, Reply, Request, StreamInfo};
use crate::sys;
use crate::timers::{self, StoredTarget, TimerRecord};

/// Key prefix of stored timers (then the id, big-endian).
const TIMER_PREFIX: u8 = 1;
/// Key of the id ceiling: ids below it may have been handed out.
const ID_CEILING_KEY: &[u8] = &[0, b'i', b'd'];
/// Ids reserved per ceiling write.
const ID_BLOCK: u64 = 10_000;
/// Requests taken per loop turn.
const REQUEST_BUDGET: usize = 4_096;
/// Firings per loop turn, so that requests are served during a burst.
const FIRING_BUDGET: usize = 20_000;
/// Longest poll, so that a stop request is seen promptly.
const MAX_WAIT_MS: i64 = 50;

fn timer_key(id: u64) -> [u8; 9] {
    let mut key = [TIMER_PREFIX; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// A reply waiting for its write to become durable (or for earlier replies).
struct PendingReply {
    ticket: Option<Ticket>,
    envelope: Vec<Vec<u8>>,
    reply: Reply,
    /// Armed once durable: (when to fire, id).
    arm: Option<(u64, u64)>,
}

/// Settings the timers thread needs.
pub(crate) struct TimerSettings {
    pub max_payload: usize,
    pub max_timers: u64,
    pub min_period_ns: u64,
    pub late_after_ns: u64,
    pub restart_grace_ns: u64,
    pub streams: Vec<StreamInfo>,
}

/// The timers thread's state.
pub(crate) struct TimerServer {
    router: zmq::Socket,
    firings: zmq::Socket,
    store: Arc<Store>,
    kv: Kv,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    pending: VecDeque<PendingReply>,
    next_id: u64,
    id_ceiling: u64,
    /// Timers stored (armed or waiting for durability).
    stored: u64,
    /// Wall time at start: deadlines before it were missed while the appliance was down.
    started_ns: u64,
    settings: TimerSettings,
    metrics: Arc<ClockMetrics>,
    bad_input: RateLimited,
}

impl TimerServer {
    /// Loads the stored timers. Overdue ones are armed `restart_grace` after now.
    pub fn load(
        router: zmq::Socket,
        firings: zmq::Socket,
        store: Arc<Store>,
        settings: TimerSettings,
        metrics: Arc<ClockMetrics>,
    ) -> Result<TimerServer, String> {
        let kv = store.kv("clock").map_err(|e| e.to_string())?;
        let started_ns = sys::wall_ns();
        let grace_until = started_ns.saturating_add(settings.restart_grace_ns);
        let mut heap = BinaryHeap::new();
        let mut id_ceiling = 0;
        let mut max_id = 0;
        for entry in kv.entries() {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            if key == ID_CEILING_KEY {
                id_ceiling = <[u8; 8]>::try_from(value.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| "the stored timer id ceiling is damaged".to_string())?;
                continue;
            }
            let Some((&TIMER_PREFIX, id)) = key.split_first() else {
                continue;
            };
            let id = <[u8; 8]>::try_from(id)
                .map(u64::from_be_bytes)
                .map_err(|_| format!("stored timer key {key:?} is damaged"))?;
            let record = TimerRecord::from_bytes(&value).map_err(|e| format!("timer {id}: {e}"))?;
            let at = if record.due_ns < started_ns {
                grace_until
            } else {
                record.due_ns
            };
            heap.push(Reverse((at, id)));
            max_id = max_id.max(id);
        }
        let stored = heap.len() as u64;
        metrics.timers_pending.store(stored, Ordering::Relaxed);
        Ok(TimerServer {
            router,
            firings,
            store,
            kv,
            heap,
            pending: VecDeque::new(),
            next_id: id_ceiling.max(max_id + 1).max(1),
            id_ceiling,
            stored,
            started_ns,
            settings,
            metrics,
            bad_input: RateLimited::default(),
        })
    }

    /// Timers loaded or stored.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Serves until `stop` is set, then answers what becomes durable within a bounded wait.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            let timeout = if !self.pending.is_empty() {
                1
            } else {
                match self.heap.peek() {
                    Some(Reverse((at, _))) => {
                        let wait = at.saturating_sub(sys::wall_ns());
                        (wait.div_ceil(1_000_000) as i64).min(MAX_WAIT_MS)
                    }
                    None => MAX_WAIT_MS,
                }
            };
            if let Err(e) = self.router.poll(zmq::POLLIN, timeout) {
                tracing::warn!(error = %e, "clock: timers poll failed");
            }
            self.take_requests();
            self.fire_due();
            self.answer_durable();
        }
        if let Some(ticket) = self.pending.iter().rev().find_map(|p| p.ticket) {
            let _ = self
                .store
                .wait_durable_timeout(ticket, Duration::from_secs(5));
        }
        self.answer_durable();
    }

    fn reject(&mut self, envelope: &[Vec<u8>], reason: String) {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(%reason, suppressed, "clock: timer request refused");
        }
        self.queue_reply(None, envelope, Reply::Error(reason), None);
    }

    fn queue_reply(
        &mut self,
        ticket: Option<Ticket>,
        envelope: &[Vec<u8>],
        reply: Reply,
        arm: Option<(u64, u64)>,
    ) {
        self.pending.push_back(PendingReply {
            ticket,
            envelope: envelope.to_vec(),
            reply,
            arm,
        });
    }

    fn take_requests(&mut self) {
        for _ in 0..REQUEST_BUDGET {
            let Ok(frames) = self.router.recv_multipart(zmq::DONTWAIT) else {
                break;
            };
            let Some((envelope, body)) = protocol::split_envelope(&frames) else {
                continue;
            };
            match Request::decode(body, self.settings.max_payload) {
                Ok(Request::Add(add)) => self.add(envelope, add),
                Ok(Request::Cancel(id)) => self.cancel(envelope, id),
                Ok(Request::List { after }) => self.list(envelope, after),
                Ok(Request::Streams) => {
                    let reply = Reply::Streams(self.settings.streams.clone());
                    self.queue_reply(None, envelope, reply, None);
                }
                Err(e) => self.reject(envelope, e.to_string()),
            }
        }
    }

    fn allocate_id(&mut self) -> Result<u64, String> {
        if self.next_id >= self.id_ceiling {
            let ceiling = self.next_id + ID_BLOCK;
            // Written before the timer that uses the id, so durable no later than it.
            self.kv
                .put(ID_CEILING_KEY, &ceiling.to_be_bytes())
                .map_err(|e| format!("timer not stored: {e}"))?;
            self.id_ceiling = ceiling;
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    fn add(&mut self, envelope: &[Vec<u8>], add: protocol::AddTimer) {
        if self.stored >= self.settings.max_timers {
            let limit = self.settings.max_timers;
            return self.reject(envelope, format!("too many timers pending (limit {limit})"));
        }
        let now = sys::wall_ns();
        let record = match timers::record_for(add, envelope, now, self.settings.min_period_ns) {
            Ok(record) => record,
            Err(reason) => return self.reject(envelope, reason),
        };
        let stored = self.allocate_id().and_then(|id| {
            self.kv
                .put(&timer_key(id), &record.to_bytes())
                .map(|ticket| (id, ticket))
                .map_err(|e| format!("timer not stored: {e}"))
        });
        match stored {
            Ok((id, ticket)) => {
                self.stored += 1;
                self.metrics.timers_added.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .timers_pending
                    .store(self.stored, Ordering::Relaxed);
                let reply = Reply::Added {
                    id,
                    due_ns: record.due_ns,
                };
                self.queue_reply(Some(ticket), envelope, reply, Some((record.due_ns, id)));
            }
            Err(reason) => {
                tracing::error!(%reason, "clock: timer not stored");
                self.reject(envelope, reason);
            }
        }
    }

    fn cancel(&mut self, envelope: &[Vec<u8>], id: u64) {
        let key = timer_key(id);
        match self.kv.get(&key) {
            Ok(Some(_)) => {}
            Ok(None) => return self.reject(envelope, format!("unknown timer id {id}")),
            Err(e) => return self.reject(envelope, format!("cannot read timer {id}: {e}")),
        }
        match self.kv.remove(&key) {
            Ok(ticket) => {
                self.stored = self.stored.saturating_sub(1);
                self.metrics
                    .timers_cancelled
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .timers_pending
                    .store(self.stored, Ordering::Relaxed);
                // Its heap entry stays and is passed over when it comes up (no record).
                self.queue_reply(Some(ticket), envelope, Reply::Cancelled { id }, None);
            }
            Err(e) => self.reject(envelope, format!("timer {id} not cancelled: {e}")),
        }
    }

    fn list(&mut self, envelope: &[Vec<u8>], after: Option<u64>) {
        let start = timer_key(after.map_or(0, |a| a.saturating_add(1)));
        let mut entries = Vec::new();
        let mut failed = None;
        for entry in self.kv.entries_from(&start) {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let Some((&TIMER_PREFIX, id)) = key.split_first() else {
                break;
            };
            let (Ok(id), Ok(record)) = (
                <[u8; 8]>::try_from(id).map(u64::from_be_bytes),
                TimerRecord::from_bytes(&value),
            ) else {
                continue;
            };
            entries.push(record.info(id));
            if entries.len() == protocol::LIST_PAGE {
                break;
            }
        }
        if let Some(reason) = failed {
            return self.reject(envelope, format!("cannot list timers: {reason}"));
        }
        let next = if entries.len() == protocol::LIST_PAGE {
            entries.last().map(|e| e.id)
        } else {
            None
        };
        self.queue_reply(None, envelope, Reply::Timers { next, entries }, None);
    }

    /// Sends replies in order as their writes become durable; arms added timers.
    fn answer_durable(&mut self) {
        let durable = self.store.watermark().durable;
        while let Some(front) = self.pending.front() {
            if front.ticket.is_some_and(|t| t.get() > durable) {
                break;
            }
            let Some(done) = self.pending.pop_front() else {
                break;
            };
            if let Some(arm) = done.arm {
                self.heap.push(Reverse(arm));
            }
            let mut frames = done.envelope;
            frames.extend(done.reply.encode());
            // The requester may have gone; nothing is lost (the timer is stored either way).
            let _ = self.router.send_multipart(frames, zmq::DONTWAIT);
        }
    }

    /// Fires every timer whose time has come, up to a budget per turn.
    fn fire_due(&mut self) {
        let now = sys::wall_ns();
        for _ in 0..FIRING_BUDGET {
            let Some(&Reverse((at, id))) = self.heap.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.heap.pop();
            let key = timer_key(id);
            let mut record = match self.kv.get(&key) {
                Ok(Some(bytes)) => match TimerRecord::from_bytes(&bytes) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::error!(id, error = %e, "clock: stored timer is damaged; kept, not fired");
                        continue;
                    }
                },
                // Cancelled.
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(id, error = %e, "clock: cannot read a timer; retried in 1 s");
                    self.heap.push(Reverse((now + 1_000_000_000, id)));
                    continue;
                }
            };
            let fired_ns = sys::wall_ns();
            let outcome = record.fire(fired_ns, self.settings.late_after_ns, self.started_ns);
            let firing = Firing {
                id,
                scheduled_ns: outcome.scheduled_ns,
                fired_ns,
                late: outcome.late,
                payload: std::mem::take(&mut record.payload),
            };
            self.deliver(&record.target, firing, &mut record.payload);
            self.metrics.timers_fired.fetch_add(1, Ordering::Relaxed);
            if outcome.late {
                self.metrics.timers_late.fetch_add(1, Ordering::Relaxed);
            }
            if outcome.skipped_periods > 0 {
                self.metrics
                    .timers_skipped_periods
                    .fetch_add(outcome.skipped_periods, Ordering::Relaxed);
            }
            let written = if outcome.done {
                self.stored = self.stored.saturating_sub(1);
                self.kv.remove(&key)
            } else {
                self.heap.push(Reverse((record.due_ns, id)));
                self.kv.put(&key, &record.to_bytes())
            };
            if let Err(e) = written {
                // The store is poisoned or closed: the firing will repeat after a restart.
                tracing::error!(id, error = %e, "clock: fired timer not updated in the store");
            }
        }
        self.metrics
            .timers_pending
            .store(self.stored, Ordering::Relaxed);
    }

    /// Sends a firing to its target; gives the payload back into `payload`.
    fn deliver(&mut self, target: &StoredTarget, firing: Firing, payload: &mut Vec<u8>) {
        match target {
            StoredTarget::Reply(envelope) => {
                let mut frames = envelope.clone();
                frames.extend(firing.encode_after(b"FIRED"));
                // ROUTER_MANDATORY: a requester that is not connected is an error, not a
                // silent drop, so it is counted.
                if self.router.send_multipart(frames, zmq::DONTWAIT).is_err() {
                    self.metrics
                        .timers_undelivered
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            StoredTarget::Topic(topic) => {
                if self
                    .firings
                    .send_multipart(firing.encode_after(topic.as_bytes()), 0)
                    .is_err()
                {
                    self.metrics.publish_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        *payload = firing.payload;
    }
}
