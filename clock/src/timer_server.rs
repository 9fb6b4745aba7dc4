//! The timers thread: owns the timers ROUTER and the inproc PUSH of topic firings to the
//! ticker. Timers live in the store's `clock` key-value tree in batches (the ADDs of one loop
//! turn share an entry of at most 8 KiB; see [`timers::Batch`]) and in memory only as
//! `(deadline, id)` in a binary heap, 16 bytes each.
//!
//! - ADD and CANCEL are answered once their write is durable (replies keep request order).
//! - Firings are sent first, then their batches are rewritten (fired one-shots removed,
//!   periodic timers advanced): a crash in between fires them again after the restart
//!   (at-least-once); a timer is never lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use depot_common::ratelimit::RateLimited;
use depot_store::{Kv, Store, Ticket, MAX_KV_VALUE};

use crate::config::TimerLimits;
use crate::metrics::ClockMetrics;
use crate::protocol::{self, Firing, Reply, Request};
use crate::sys;
use crate::timers::{self, Batch, StoredTarget};

/// Key prefix of stored batches (then the batch number, big-endian).
const BATCH_PREFIX: u8 = 1;
/// Key of the batch ceiling: batch numbers below it may have been handed out.
const BATCH_CEILING_KEY: &[u8] = &[0, b'b', b'a', b't', b'c', b'h'];
/// Batch numbers reserved per ceiling write.
const BATCH_BLOCK: u64 = 1_000;
/// Most bytes of timers in one stored batch (the store's value limit, with room to spare).
const BATCH_BYTES: usize = MAX_KV_VALUE - 64;
/// Requests taken per loop turn.
const REQUEST_BUDGET: usize = 4_096;
/// Firings per loop turn, so that requests are served during a burst.
const FIRING_BUDGET: usize = 20_000;
/// Longest poll, so that a stop request is seen promptly.
const MAX_WAIT_MS: i64 = 50;

fn batch_key(batch: u64) -> [u8; 9] {
    let mut key = [BATCH_PREFIX; 9];
    key[1..].copy_from_slice(&batch.to_be_bytes());
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

/// The batch being filled by this turn's ADDs, written at the end of the turn.
struct OpenBatch {
    number: u64,
    timers: Batch,
    bytes: usize,
    /// (envelope, id, due) of each ADD, answered once the batch is durable.
    added: Vec<(Vec<Vec<u8>>, u64, u64)>,
}

/// Settings the timers thread needs.
pub(crate) struct TimerSettings {
    pub max_payload: usize,
    pub max_timers: u64,
    pub min_period_ns: u64,
    pub late_after_ns: u64,
    pub restart_grace_ns: u64,
    /// The running tick streams, kept up to date by the ticker.
    pub streams: crate::ticker::SharedStreams,
    /// The `timers` permission of the sender's key (CURVE only).
    pub guard: depot_common::authz::Guard,
    /// New limits from a live reload.
    pub updates: mpsc::Receiver<TimerLimits>,
}

/// The timers thread's state.
pub(crate) struct TimerServer {
    router: zmq::Socket,
    firings: zmq::Socket,
    store: Arc<Store>,
    kv: Kv,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    pending: VecDeque<PendingReply>,
    open: Option<OpenBatch>,
    next_batch: u64,
    batch_ceiling: u64,
    /// Timers stored (armed or waiting for durability).
    stored: u64,
    /// Wall time at start: deadlines before it were missed while the appliance was down.
    started_ns: u64,
    settings: TimerSettings,
    metrics: Arc<ClockMetrics>,
    bad_input: RateLimited,
}

impl TimerServer {
    /// Loads the stored timers. Those due before `restart_grace` after now are armed then.
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
        let mut batch_ceiling = 0;
        let mut max_batch = 0;
        for entry in kv.entries() {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            if key == BATCH_CEILING_KEY {
                batch_ceiling = <[u8; 8]>::try_from(value.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| "the stored timer batch ceiling is damaged".to_string())?;
                continue;
            }
            let Some((&BATCH_PREFIX, number)) = key.split_first() else {
                continue;
            };
            let number = <[u8; 8]>::try_from(number)
                .map(u64::from_be_bytes)
                .map_err(|_| format!("stored timer key {key:?} is damaged"))?;
            let batch =
                timers::decode_batch(&value).map_err(|e| format!("timer batch {number}: {e}"))?;
            for (index, record) in batch {
                // Due within the grace too, not only overdue: a timer due just after the
                // start would fire before a subscriber could reconnect (found by the soak).
                let at = record.due_ns.max(grace_until);
                heap.push(Reverse((at, timers::timer_id(number, index))));
            }
            max_batch = max_batch.max(number);
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
            open: None,
            next_batch: batch_ceiling.max(max_batch + 1).max(1),
            batch_ceiling,
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
            self.take_limits();
            self.take_requests();
            self.fire_due();
            self.answer_durable();
        }
        self.seal_open();
        if let Some(ticket) = self.pending.iter().rev().find_map(|p| p.ticket) {
            let _ = self
                .store
                .wait_durable_timeout(ticket, Duration::from_secs(5));
        }
        self.answer_durable();
    }

    /// Takes the newest limits of a live reload, if any.
    fn take_limits(&mut self) {
        let Some(limits) = self.settings.updates.try_iter().last() else {
            return;
        };
        self.settings.max_payload = limits.max_payload;
        self.settings.max_timers = limits.max_timers;
        self.settings.late_after_ns =
            u64::try_from(limits.late_after.as_nanos()).unwrap_or(u64::MAX);
        tracing::info!(
            max_payload = limits.max_payload,
            max_timers = limits.max_timers,
            late_after = ?limits.late_after,
            "clock: timer limits reconfigured live"
        );
    }

    fn reject(&mut self, envelope: &[Vec<u8>], reason: String) {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(%reason, suppressed, "clock: timer request refused");
        }
        self.queue_reply(None, envelope, Reply::Error(reason));
    }

    /// Queues a reply after every earlier one (the open batch's ADDs included).
    fn queue_reply(&mut self, ticket: Option<Ticket>, envelope: &[Vec<u8>], reply: Reply) {
        self.seal_open();
        self.pending.push_back(PendingReply {
            ticket,
            envelope: envelope.to_vec(),
            reply,
            arm: None,
        });
    }

    fn take_requests(&mut self) {
        for _ in 0..REQUEST_BUDGET {
            let Ok(mut frames) = depot_common::frames::recv_frames(&self.router) else {
                break;
            };
            let user = match frames.last_mut() {
                Some(last) if self.settings.guard.active() => depot_common::authz::user_id(last),
                _ => String::new(),
            };
            let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
            let Some((envelope, body)) = protocol::split_envelope(&frames) else {
                continue;
            };
            let request = Request::decode(body, self.settings.max_payload);
            if matches!(
                request,
                Ok(Request::Add(_) | Request::Cancel(_) | Request::List { .. })
            ) {
                let op = depot_common::authz::Op::Timers;
                if let Err(reason) = self.settings.guard.check(&user, op) {
                    self.queue_reply(None, envelope, Reply::Error(reason));
                    continue;
                }
            }
            match request {
                Ok(Request::Add(add)) => self.add(envelope, add),
                Ok(Request::Cancel(id)) => self.cancel(envelope, id),
                Ok(Request::List { after }) => self.list(envelope, after),
                Ok(Request::Streams) => {
                    let streams = self.settings.streams.lock();
                    let reply = Reply::Streams(streams.unwrap_or_else(|e| e.into_inner()).clone());
                    self.queue_reply(None, envelope, reply);
                }
                Err(e) => self.reject(envelope, e.to_string()),
            }
        }
        self.seal_open();
    }

    fn allocate_batch(&mut self) -> Result<u64, String> {
        if self.next_batch >= self.batch_ceiling {
            let ceiling = self.next_batch + BATCH_BLOCK;
            // Written before the batch that uses the number, so durable no later than it.
            self.kv
                .put(BATCH_CEILING_KEY, &ceiling.to_be_bytes())
                .map_err(|e| format!("timer not stored: {e}"))?;
            self.batch_ceiling = ceiling;
        }
        let number = self.next_batch;
        self.next_batch += 1;
        Ok(number)
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
        let size = record.stored_size();
        if size > BATCH_BYTES {
            return self.reject(
                envelope,
                format!("timer of {size} bytes is too large to store"),
            );
        }
        let full = self.open.as_ref().is_some_and(|open| {
            open.bytes + size > BATCH_BYTES || open.timers.len() > usize::from(u16::MAX)
        });
        if full {
            self.seal_open();
        }
        if self.open.is_none() {
            match self.allocate_batch() {
                Ok(number) => {
                    self.open = Some(OpenBatch {
                        number,
                        timers: Vec::new(),
                        bytes: 0,
                        added: Vec::new(),
                    })
                }
                Err(reason) => {
                    tracing::error!(%reason, "clock: timer not stored");
                    return self.reject(envelope, reason);
                }
            }
        }
        if let Some(open) = &mut self.open {
            let index = open.timers.len() as u16;
            let id = timers::timer_id(open.number, index);
            open.added.push((envelope.to_vec(), id, record.due_ns));
            open.bytes += size;
            open.timers.push((index, record));
            self.stored += 1;
        }
    }

    /// Writes the open batch and queues its ADDs' replies for when it is durable.
    fn seal_open(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        match self
            .kv
            .put(&batch_key(open.number), &timers::encode_batch(&open.timers))
        {
            Ok(ticket) => {
                let added = open.added.len() as u64;
                self.metrics
                    .timers_added
                    .fetch_add(added, Ordering::Relaxed);
                self.metrics
                    .timers_pending
                    .store(self.stored, Ordering::Relaxed);
                for (envelope, id, due_ns) in open.added {
                    self.pending.push_back(PendingReply {
                        ticket: Some(ticket),
                        envelope,
                        reply: Reply::Added { id, due_ns },
                        arm: Some((due_ns, id)),
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "clock: timers not stored");
                self.stored = self.stored.saturating_sub(open.added.len() as u64);
                for (envelope, _, _) in open.added {
                    self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    self.pending.push_back(PendingReply {
                        ticket: None,
                        envelope,
                        reply: Reply::Error(format!("timer not stored: {e}")),
                        arm: None,
                    });
                }
            }
        }
    }

    /// The stored batch `number` (None if it does not exist).
    fn read_batch(&self, number: u64) -> Result<Option<Batch>, String> {
        match self.kv.get(&batch_key(number)) {
            Ok(Some(bytes)) => timers::decode_batch(&bytes).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stores `batch` as `number`, removing the entry when it is empty.
    fn write_batch(&self, number: u64, batch: &Batch) -> depot_store::Result<Ticket> {
        if batch.is_empty() {
            self.kv.remove(&batch_key(number))
        } else {
            self.kv
                .put(&batch_key(number), &timers::encode_batch(batch))
        }
    }

    fn cancel(&mut self, envelope: &[Vec<u8>], id: u64) {
        // A timer of this turn's batch must be in the store to be found.
        self.seal_open();
        let (number, index) = timers::split_id(id);
        let mut batch = match self.read_batch(number) {
            Ok(Some(batch)) => batch,
            Ok(None) => return self.reject(envelope, format!("unknown timer id {id}")),
            Err(e) => return self.reject(envelope, format!("cannot read timer {id}: {e}")),
        };
        let Some(position) = batch.iter().position(|(i, _)| *i == index) else {
            return self.reject(envelope, format!("unknown timer id {id}"));
        };
        batch.remove(position);
        match self.write_batch(number, &batch) {
            Ok(ticket) => {
                self.stored = self.stored.saturating_sub(1);
                self.metrics
                    .timers_cancelled
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .timers_pending
                    .store(self.stored, Ordering::Relaxed);
                // Its heap entry stays and is passed over when it comes up (no record).
                self.queue_reply(Some(ticket), envelope, Reply::Cancelled { id });
            }
            Err(e) => self.reject(envelope, format!("timer {id} not cancelled: {e}")),
        }
    }

    fn list(&mut self, envelope: &[Vec<u8>], after: Option<u64>) {
        self.seal_open();
        let first = after.map_or(0, |after| timers::split_id(after).0);
        let mut entries = Vec::new();
        let mut failed = None;
        'batches: for entry in self.kv.entries_from(&batch_key(first)) {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let Some((&BATCH_PREFIX, number)) = key.split_first() else {
                break;
            };
            let (Ok(number), Ok(batch)) = (
                <[u8; 8]>::try_from(number).map(u64::from_be_bytes),
                timers::decode_batch(&value),
            ) else {
                continue;
            };
            for (index, record) in batch {
                let id = timers::timer_id(number, index);
                if after.is_some_and(|after| id <= after) {
                    continue;
                }
                entries.push(record.info(id));
                if entries.len() == protocol::LIST_PAGE {
                    break 'batches;
                }
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
        self.queue_reply(None, envelope, Reply::Timers { next, entries });
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

    /// Fires every timer whose time has come, up to a budget per turn, then rewrites each
    /// batch it touched once.
    fn fire_due(&mut self) {
        let now = sys::wall_ns();
        // Batches read this turn (None: gone, its timers cancelled, or unreadable), and
        // whether a firing changed them.
        let mut touched: HashMap<u64, (Option<Batch>, bool)> = HashMap::new();
        for _ in 0..FIRING_BUDGET {
            let Some(&Reverse((at, id))) = self.heap.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.heap.pop();
            let (number, index) = timers::split_id(id);
            let (batch, changed) = touched.entry(number).or_insert_with(|| {
                let batch = self
                    .kv
                    .get(&batch_key(number))
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| bytes.map(|b| timers::decode_batch(&b)).transpose())
                    .unwrap_or_else(|e| {
                        tracing::error!(batch = number, error = %e, "clock: stored timers unreadable; kept, not fired");
                        None
                    });
                (batch, false)
            });
            let Some(batch) = batch else {
                continue;
            };
            // Not found: cancelled.
            let Some(position) = batch.iter().position(|(i, _)| *i == index) else {
                continue;
            };
            let record = &mut batch[position].1;
            let fired_ns = sys::wall_ns();
            let outcome = record.fire(fired_ns, self.settings.late_after_ns, self.started_ns);
            let firing = Firing {
                id,
                scheduled_ns: outcome.scheduled_ns,
                fired_ns,
                late: outcome.late,
                payload: record.payload.clone(),
            };
            let target = record.target.clone();
            if outcome.done {
                batch.remove(position);
                self.stored = self.stored.saturating_sub(1);
            } else {
                self.heap.push(Reverse((record.due_ns, id)));
            }
            *changed = true;
            self.deliver(&target, firing);
            self.metrics.timers_fired.fetch_add(1, Ordering::Relaxed);
            if outcome.late {
                self.metrics.timers_late.fetch_add(1, Ordering::Relaxed);
            }
            if outcome.skipped_periods > 0 {
                self.metrics
                    .timers_skipped_periods
                    .fetch_add(outcome.skipped_periods, Ordering::Relaxed);
            }
        }
        for (number, (batch, changed)) in touched {
            let (Some(batch), true) = (batch, changed) else {
                continue;
            };
            if let Err(e) = self.write_batch(number, &batch) {
                // The store is poisoned or closed: the firings will repeat after a restart.
                tracing::error!(batch = number, error = %e, "clock: fired timers not updated in the store");
            }
        }
        self.metrics
            .timers_pending
            .store(self.stored, Ordering::Relaxed);
    }

    /// Sends a firing to its target.
    fn deliver(&mut self, target: &StoredTarget, firing: Firing) {
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
    }
}
