//! One queue: its journal (a store log stream), the memory window of at most HWM messages, and
//! its subscriptions with their consumers, acknowledgements and messages in flight.
//!
//! A message's path: [`Queue::append`] writes it to the journal (and to the window while the
//! window has room and reaches the journal's end); once durable, [`Queue::take`] hands it to a
//! consumer from the window, or reads it back from the journal in order (the SWAP); it stays
//! in flight until acknowledged, or is released for redelivery after the timeout or when its
//! consumer goes. Blocks acknowledged by every subscription are trimmed from the journal.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_store::{Appended, Kv, NewRecord, Store, StoreError, Ticket};
use serde::{Deserialize, Serialize};

use crate::acks::AckSet;
use crate::config::QueueSettings;
use crate::horizon::Horizon;

/// A message body in memory, shared by the window, read-ahead and in-flight tables.
pub(crate) type Payload = Arc<[u8]>;

/// Messages read back from the journal at once per subscription.
const READ_BATCH: usize = 2_048;
/// Bytes read back from the journal at once per subscription.
const READ_BYTES: usize = 1024 * 1024;

/// Prefix of every queue's journal stream: internal (`$`), so logd neither writes nor
/// replays it and log retention leaves it alone.
pub const JOURNAL_PREFIX: &str = "$queue/";

/// Journal stream of queue `name`.
pub fn journal(name: &str) -> String {
    format!("{JOURNAL_PREFIX}{name}")
}

/// A message held in memory.
#[derive(Clone)]
pub(crate) struct Held {
    pub seq: u64,
    pub ts_ns: u64,
    pub payload: Payload,
}

/// A message released for delivery again.
struct Released {
    ts_ns: u64,
    payload: Payload,
    redeliveries: u32,
}

/// A message delivered and not yet acknowledged.
struct InFlight {
    consumer: u64,
    ts_ns: u64,
    payload: Payload,
    redeliveries: u32,
    deadline: Instant,
}

/// One consumer attached to a subscription.
pub(crate) struct Consumer {
    /// Unique within the service.
    pub id: u64,
    /// ROUTER identity of its DEALER (empty for a simple-mode PUSH endpoint).
    pub identity: Vec<u8>,
    /// Most messages in flight to it.
    pub prefetch: u32,
    /// Sequences in flight to it.
    pub unacked: BTreeSet<u64>,
    /// A simple-mode PUSH endpoint: a message counts as acknowledged once libzmq takes it.
    pub auto_ack: bool,
    /// A `MSG` batch the socket refused, sent before anything else.
    pub parked: Option<Vec<u8>>,
    /// Its socket refused the last send: retried on the next turn, not in a busy loop.
    pub blocked: bool,
}

impl Consumer {
    fn room(&self) -> usize {
        (self.prefetch as usize).saturating_sub(self.unacked.len())
    }
}

/// A subscription: the queue's shared work queue (name "") or a named one. Each gets every
/// message; its consumers share them.
pub(crate) struct Group {
    acks: AckSet,
    /// Next sequence to deliver for the first time.
    next: u64,
    /// Highest sequence delivered; stored with the acks at a clean stop.
    delivered: u64,
    /// Unacknowledged messages up to here may have been delivered before the last start.
    delivered_before_start: u64,
    /// First deliveries wait for it; stored with the acks while running.
    horizon: Horizon,
    released: BTreeMap<u64, Released>,
    in_flight: HashMap<u64, InFlight>,
    /// Messages read back from the journal, from `next` on.
    read_ahead: VecDeque<Held>,
    pub consumers: Vec<Consumer>,
    /// Round-robin position among the consumers.
    pub turn: usize,
    /// Acks changed since last stored.
    dirty: bool,
}

impl Group {
    /// `delivered`: the stored horizon (or, after a clean stop, how far deliveries went).
    fn new(acks: AckSet, delivered: u64) -> Group {
        Group {
            next: acks.floor() + 1,
            acks,
            delivered,
            delivered_before_start: delivered,
            horizon: Horizon::new(delivered),
            released: BTreeMap::new(),
            in_flight: HashMap::new(),
            read_ahead: VecDeque::new(),
            consumers: Vec::new(),
            turn: 0,
            dirty: false,
        }
    }

    /// Messages not yet acknowledged, up to `last`.
    fn pending(&self, last: u64) -> u64 {
        last.saturating_sub(self.acks.floor())
            .saturating_sub(self.acks.count_in(self.acks.floor() + 1, last))
    }
}

/// Figures about one subscription.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupStats {
    /// "" for the work queue, else the subscription's name.
    pub name: String,
    /// Messages not yet acknowledged.
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Everything up to here is acknowledged.
    pub ack_floor: u64,
    /// Consumers attached.
    pub consumers: u64,
}

/// Figures about one queue (`depot queue stats`, `/metrics`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Messages its work queue has not acknowledged yet.
    pub depth: u64,
    /// Messages in the memory window.
    pub in_memory: u64,
    /// Bytes in the memory window.
    pub in_memory_bytes: u64,
    /// Bytes its journal takes on disk.
    pub on_disk_bytes: u64,
    /// Last sequence given.
    pub last_seq: u64,
    /// Consumers attached, all subscriptions.
    pub consumers: u64,
    /// Messages published since start.
    pub published: u64,
    /// Deliveries since start (redeliveries included).
    pub delivered: u64,
    /// Acknowledgements since start.
    pub acked: u64,
    /// Redeliveries since start.
    pub redelivered: u64,
    /// Messages dropped by TTL since start.
    pub expired: u64,
    /// Messages moved to the dead-letter queue since start.
    pub dead_lettered: u64,
    /// Publishes per second, over the last interval.
    pub publish_rate: f64,
    /// Deliveries per second, over the last interval.
    pub deliver_rate: f64,
    /// Acks per second, over the last interval.
    pub ack_rate: f64,
    /// True while the swap limit is reached.
    pub full: bool,
    /// Its subscriptions.
    pub groups: Vec<GroupStats>,
}

/// Counters of one queue since start.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    published: u64,
    delivered: u64,
    acked: u64,
    redelivered: u64,
    expired: u64,
    dead_lettered: u64,
}

/// A queue and everything it holds in memory.
pub(crate) struct Queue {
    pub name: String,
    stream: String,
    pub settings: QueueSettings,
    /// Dead-letter queues do not dead-letter again.
    is_dead_letter: bool,
    /// Consecutive messages kept in memory: at most `hwm` of them / `hwm_bytes`.
    window: VecDeque<Held>,
    window_bytes: u64,
    pub groups: BTreeMap<String, Group>,
    last_seq: u64,
    /// Messages up to here are durable and may be delivered.
    durable_seq: u64,
    /// Appends not yet durable: (ticket, last sequence).
    unsynced: VecDeque<(Ticket, u64)>,
    journal_bytes: u64,
    counters: Counters,
    /// Counters and time at the last rate computation.
    rate_base: (Counters, Instant),
    rates: (f64, f64, f64),
}

impl Queue {
    /// Opens queue `name` over its journal with the subscriptions' stored acks.
    pub fn open(
        name: &str,
        settings: QueueSettings,
        store: &Store,
        groups: Vec<(String, AckSet, u64)>,
    ) -> Queue {
        let stream = journal(name);
        let last_seq = store.log().last_seq(&stream);
        let first_seq = store.log().first_seq(&stream);
        let mut by_name = BTreeMap::new();
        for (group, mut acks, delivered) in groups {
            // Acks are stored with the journal's appends under one commit, so they never run
            // ahead of it; should they, the journal wins (new messages must not count as
            // acknowledged).
            if acks.floor() > last_seq {
                tracing::warn!(
                    queue = name,
                    group,
                    floor = acks.floor(),
                    last_seq,
                    "stored acks run past the journal: reset to its end"
                );
                acks = AckSet::new(last_seq);
            }
            // Trimmed messages were acknowledged by every subscription.
            acks.raise_floor(first_seq.saturating_sub(1).min(last_seq));
            by_name.insert(group, Group::new(acks, delivered.min(last_seq)));
        }
        by_name
            .entry(String::new())
            .or_insert_with(|| Group::new(AckSet::new(first_seq.saturating_sub(1)), 0));
        let journal_bytes = store
            .log()
            .stream_stats(&stream)
            .map_or(0, |s| s.stored_bytes);
        Queue {
            name: name.to_owned(),
            stream,
            settings,
            is_dead_letter: name.ends_with(".dead"),
            window: VecDeque::new(),
            window_bytes: 0,
            groups: by_name,
            last_seq,
            durable_seq: last_seq,
            unsynced: VecDeque::new(),
            journal_bytes,
            counters: Counters::default(),
            rate_base: (Counters::default(), Instant::now()),
            rates: (0.0, 0.0, 0.0),
        }
    }

    /// Where new messages of a named subscription start: after everything published so far.
    pub fn add_group(&mut self, name: &str) -> bool {
        if self.groups.contains_key(name) {
            return false;
        }
        let mut group = Group::new(AckSet::new(self.last_seq), self.last_seq);
        // Stored by the next `store_acks`, so its position survives a restart.
        group.dirty = true;
        self.groups.insert(name.to_owned(), group);
        true
    }

    /// True once the journal reached the swap limit.
    pub fn is_full(&self) -> bool {
        self.journal_bytes >= self.settings.swap_limit
    }

    /// Appends messages to the journal; the ticket says when they are durable.
    pub fn append(&mut self, store: &Store, bodies: &[&[u8]]) -> Result<Appended, StoreError> {
        let records: Vec<NewRecord<'_>> = bodies
            .iter()
            .map(|body| NewRecord {
                level: 0,
                source: "",
                body,
            })
            .collect();
        let appended = store.log().append(&self.stream, &records)?;
        for (i, body) in bodies.iter().enumerate() {
            let seq = appended.first + i as u64;
            let contiguous = self.window.back().is_none_or(|b| b.seq + 1 == seq);
            let room = (self.window.len() as u64) < self.settings.hwm
                && self.window_bytes + body.len() as u64 <= self.settings.hwm_bytes;
            if contiguous && room {
                self.window_bytes += body.len() as u64;
                self.window.push_back(Held {
                    seq,
                    ts_ns: appended.ts_ns,
                    payload: Payload::from(*body),
                });
            }
        }
        self.last_seq = appended.last;
        self.unsynced.push_back((appended.ticket, appended.last));
        self.counters.published += bodies.len() as u64;
        // Estimated until the next refresh; the journal compresses.
        self.journal_bytes += bodies.iter().map(|b| b.len() as u64 + 8).sum::<u64>();
        Ok(appended)
    }

    /// Makes messages deliverable whose appends the watermark covers, and horizons durable.
    pub fn advance_durable(&mut self, durable: u64) {
        while let Some(&(ticket, last)) = self.unsynced.front() {
            if ticket.get() > durable {
                break;
            }
            self.durable_seq = last;
            self.unsynced.pop_front();
        }
        for group in self.groups.values_mut() {
            group.horizon.advance(durable);
        }
    }

    /// Stores a new delivery horizon (with the acks) for every subscription with consumers
    /// whose next first delivery comes near the one written; returns the last ticket. A
    /// refused write (disk full) is wanted again on the next call; meanwhile deliveries up to
    /// the durable horizon and redeliveries go on.
    pub fn extend_horizons(&mut self, kv: &Kv) -> Result<Option<Ticket>, StoreError> {
        let mut last = None;
        for (name, group) in &mut self.groups {
            if group.consumers.is_empty() {
                continue;
            }
            let next = group.acks.next_unacked(group.next);
            let Some(horizon) = group.horizon.wanted(next, self.last_seq) else {
                continue;
            };
            let ticket = kv.put(&group_key(&self.name, name), &group.acks.encode(horizon))?;
            group.horizon.written(horizon, ticket.get());
            group.dirty = false;
            last = Some(ticket);
        }
        Ok(last)
    }

    /// Re-reads the journal's size from the store.
    pub fn refresh(&mut self, store: &Store) {
        self.journal_bytes = store
            .log()
            .stream_stats(&self.stream)
            .map_or(0, |s| s.stored_bytes);
    }

    /// True if some consumer has room and something may be delivered to it.
    pub fn deliverable(&self) -> bool {
        self.groups.values().any(|g| {
            let has_room = g.consumers.iter().any(|c| !c.blocked && c.room() > 0);
            has_room
                && (!g.released.is_empty()
                    || g.acks.next_unacked(g.next) <= self.durable_seq.min(g.horizon.durable()))
        })
    }

    /// Drops window messages every subscription has taken past.
    fn shrink_window(&mut self) {
        let lowest = self.groups.values().map(|g| g.next).min().unwrap_or(0);
        while let Some(front) = self.window.front() {
            if front.seq >= lowest {
                break;
            }
            self.window_bytes -= front.payload.len() as u64;
            self.window.pop_front();
        }
    }

    /// Hands up to `max_messages` / `max_bytes` of `group`'s messages to its consumer at
    /// `index`, oldest released first, then new ones in order. `sink` gets each message and
    /// returns false if it cannot take it (then it stays for later). Expired messages are
    /// dropped and counted on the way. Returns how many were taken.
    #[allow(clippy::too_many_arguments)]
    pub fn take(
        &mut self,
        store: &Store,
        group_name: &str,
        index: usize,
        max_messages: usize,
        max_bytes: usize,
        now: Instant,
        sink: &mut dyn FnMut(u64, u32, &[u8]) -> bool,
    ) -> Result<usize, StoreError> {
        let ttl_cutoff = self
            .settings
            .ttl
            .map(|ttl| depot_store::now_ns().saturating_sub(ttl.as_nanos() as u64));
        let timeout = self.settings.redelivery_timeout;
        let Some(group) = self.groups.get_mut(group_name) else {
            return Ok(0);
        };
        let Some(consumer) = group.consumers.get(index) else {
            return Ok(0);
        };
        let (consumer_id, auto_ack) = (consumer.id, consumer.auto_ack);
        let limit = consumer.room().min(max_messages);
        let (mut taken, mut bytes) = (0usize, 0usize);
        while taken < limit && bytes < max_bytes {
            // The oldest released message first, so a consumer sees the queue's order.
            let (seq, held, redeliveries, released) =
                if let Some((&seq, r)) = group.released.first_key_value() {
                    let held = Held {
                        seq,
                        ts_ns: r.ts_ns,
                        payload: r.payload.clone(),
                    };
                    (seq, held, r.redeliveries, true)
                } else {
                    let seq = group.acks.next_unacked(group.next);
                    group.next = seq;
                    if seq > self.durable_seq || !group.horizon.allows(seq) {
                        break;
                    }
                    let held = match window_get(&self.window, seq) {
                        Some(held) => held,
                        None => {
                            while group.read_ahead.front().is_some_and(|h| h.seq < seq) {
                                group.read_ahead.pop_front();
                            }
                            if group.read_ahead.is_empty() {
                                let to = match self.window.front() {
                                    Some(front) if front.seq > seq => front.seq - 1,
                                    _ => self.durable_seq,
                                };
                                read_back(store, &self.stream, seq, to, &mut group.read_ahead)?;
                            }
                            match group.read_ahead.front() {
                                Some(h) if h.seq == seq => h.clone(),
                                // Trimmed (acknowledged everywhere) before a restart: skip.
                                Some(h) => {
                                    group.next = h.seq;
                                    continue;
                                }
                                None => break,
                            }
                        }
                    };
                    let again = u32::from(seq <= group.delivered_before_start);
                    (seq, held, again, false)
                };
            let take_out = |group: &mut Group| {
                if released {
                    group.released.remove(&seq);
                } else {
                    group.next = seq + 1;
                    if group.read_ahead.front().is_some_and(|h| h.seq == seq) {
                        group.read_ahead.pop_front();
                    }
                }
            };
            if ttl_cutoff.is_some_and(|cutoff| held.ts_ns < cutoff) {
                take_out(group);
                group.acks.insert(seq);
                group.dirty = true;
                self.counters.expired += 1;
                continue;
            }
            if !sink(seq, redeliveries, &held.payload) {
                break;
            }
            take_out(group);
            taken += 1;
            bytes += held.payload.len();
            group.delivered = group.delivered.max(seq);
            group.dirty = true;
            self.counters.delivered += 1;
            if redeliveries > 0 {
                self.counters.redelivered += 1;
            }
            if auto_ack {
                group.acks.insert(seq);
                self.counters.acked += 1;
                continue;
            }
            if let Some(consumer) = group.consumers.get_mut(index) {
                consumer.unacked.insert(seq);
            }
            group.in_flight.insert(
                seq,
                InFlight {
                    consumer: consumer_id,
                    ts_ns: held.ts_ns,
                    payload: held.payload,
                    redeliveries,
                    deadline: now + timeout,
                },
            );
        }
        self.shrink_window();
        Ok(taken)
    }

    /// Acknowledges `seqs` from consumer `consumer` of `group`; returns how many were not in
    /// flight to it (unknown, acknowledged already, or another consumer's).
    pub fn ack(&mut self, group_name: &str, consumer: u64, seqs: &[u64]) -> usize {
        let Some(group) = self.groups.get_mut(group_name) else {
            return seqs.len();
        };
        let Some(c) = group.consumers.iter_mut().find(|c| c.id == consumer) else {
            return seqs.len();
        };
        let mut bad = 0;
        for &seq in seqs {
            if c.unacked.remove(&seq) {
                group.in_flight.remove(&seq);
                group.acks.insert(seq);
                self.counters.acked += 1;
            } else {
                bad += 1;
            }
        }
        group.dirty = true;
        bad
    }

    /// Acknowledges every message in flight to `consumer` up to `seq`; returns how many.
    pub fn ack_through(&mut self, group_name: &str, consumer: u64, seq: u64) -> usize {
        let Some(group) = self.groups.get_mut(group_name) else {
            return 0;
        };
        let Some(c) = group.consumers.iter_mut().find(|c| c.id == consumer) else {
            return 0;
        };
        let above = c.unacked.split_off(&(seq.saturating_add(1)));
        let acked = std::mem::replace(&mut c.unacked, above);
        for &s in &acked {
            group.in_flight.remove(&s);
            group.acks.insert(s);
        }
        self.counters.acked += acked.len() as u64;
        group.dirty = true;
        acked.len()
    }

    /// Puts an in-flight message back for delivery, or into `dead` once it was redelivered
    /// too often.
    fn release(
        group: &mut Group,
        seq: u64,
        max_redeliveries: Option<u32>,
        counters: &mut Counters,
        dead: &mut Vec<Held>,
    ) {
        let Some(f) = group.in_flight.remove(&seq) else {
            return;
        };
        if let Some(c) = group.consumers.iter_mut().find(|c| c.id == f.consumer) {
            c.unacked.remove(&seq);
        }
        let redeliveries = f.redeliveries.saturating_add(1);
        if max_redeliveries.is_some_and(|max| redeliveries > max) {
            group.acks.insert(seq);
            group.dirty = true;
            counters.dead_lettered += 1;
            dead.push(Held {
                seq,
                ts_ns: f.ts_ns,
                payload: f.payload,
            });
            return;
        }
        group.released.insert(
            seq,
            Released {
                ts_ns: f.ts_ns,
                payload: f.payload,
                redeliveries,
            },
        );
    }

    fn max_redeliveries(&self) -> Option<u32> {
        if self.is_dead_letter {
            None
        } else {
            self.settings.max_redeliveries
        }
    }

    /// Detaches consumer `id` from `group`; its messages in flight go to the others. Returns
    /// the messages to dead-letter.
    pub fn remove_consumer(&mut self, group_name: &str, id: u64) -> Vec<Held> {
        let max = self.max_redeliveries();
        let mut dead = Vec::new();
        let Some(group) = self.groups.get_mut(group_name) else {
            return dead;
        };
        let Some(index) = group.consumers.iter().position(|c| c.id == id) else {
            return dead;
        };
        let seqs: Vec<u64> = group.consumers[index].unacked.iter().copied().collect();
        for seq in seqs {
            Self::release(group, seq, max, &mut self.counters, &mut dead);
        }
        group.consumers.remove(index);
        dead
    }

    /// Releases messages whose redelivery timeout passed. Returns the messages to dead-letter.
    pub fn expire_in_flight(&mut self, now: Instant) -> Vec<Held> {
        let max = self.max_redeliveries();
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            let due: Vec<u64> = group
                .in_flight
                .iter()
                .filter(|(_, f)| f.deadline <= now)
                .map(|(&seq, _)| seq)
                .collect();
            for seq in due {
                Self::release(group, seq, max, &mut self.counters, &mut dead);
            }
        }
        dead
    }

    /// Writes the acks of subscriptions that changed (every one with `all`) with their
    /// horizons; returns the last ticket. `stopped`: no delivery follows, so how far
    /// deliveries went is stored instead of the horizon, and a restart after a clean stop
    /// marks exactly the messages delivered before.
    pub fn store_acks(
        &mut self,
        kv: &Kv,
        all: bool,
        stopped: bool,
    ) -> Result<Option<Ticket>, StoreError> {
        let mut last = None;
        for (name, group) in &mut self.groups {
            if group.dirty || all {
                let reached = if stopped {
                    group.delivered
                } else {
                    group.horizon.target()
                };
                let value = group.acks.encode(reached);
                last = Some(kv.put(&group_key(&self.name, name), &value)?);
                group.dirty = false;
            }
        }
        Ok(last)
    }

    /// Removes journal blocks every subscription acknowledged.
    pub fn trim(&mut self, store: &Store) -> Result<(), StoreError> {
        let floor = self
            .groups
            .values()
            .map(|g| g.acks.floor())
            .min()
            .unwrap_or(0);
        if floor > 0 {
            store.log().trim_through(&self.stream, floor)?;
        }
        self.refresh(store);
        Ok(())
    }

    /// Figures now; `rates_every` is how often rates are recomputed.
    pub fn stats(&mut self, rates_every: Duration) -> QueueStats {
        let (base, at) = self.rate_base;
        let elapsed = at.elapsed();
        if elapsed >= rates_every {
            let secs = elapsed.as_secs_f64();
            let c = self.counters;
            self.rates = (
                (c.published - base.published) as f64 / secs,
                (c.delivered - base.delivered) as f64 / secs,
                (c.acked - base.acked) as f64 / secs,
            );
            self.rate_base = (c, Instant::now());
        }
        let c = self.counters;
        let groups: Vec<GroupStats> = self
            .groups
            .iter()
            .map(|(name, g)| GroupStats {
                name: name.clone(),
                pending: g.pending(self.last_seq),
                in_flight: g.in_flight.len() as u64,
                ack_floor: g.acks.floor(),
                consumers: g.consumers.len() as u64,
            })
            .collect();
        QueueStats {
            name: self.name.clone(),
            depth: groups
                .iter()
                .find(|g| g.name.is_empty())
                .map_or(0, |g| g.pending),
            in_memory: self.window.len() as u64,
            in_memory_bytes: self.window_bytes,
            on_disk_bytes: self.journal_bytes,
            last_seq: self.last_seq,
            consumers: groups.iter().map(|g| g.consumers).sum(),
            published: c.published,
            delivered: c.delivered,
            acked: c.acked,
            redelivered: c.redelivered,
            expired: c.expired,
            dead_lettered: c.dead_lettered,
            publish_rate: self.rates.0,
            deliver_rate: self.rates.1,
            ack_rate: self.rates.2,
            full: self.is_full(),
            groups,
        }
    }
}

/// The message with `seq` if the window holds it (the window is consecutive).
fn window_get(window: &VecDeque<Held>, seq: u64) -> Option<Held> {
    let front = window.front()?.seq;
    let index = usize::try_from(seq.checked_sub(front)?).ok()?;
    window.get(index).cloned()
}

/// Reads messages `from..=to` back from the journal, a batch at a time.
fn read_back(
    store: &Store,
    stream: &str,
    from: u64,
    to: u64,
    out: &mut VecDeque<Held>,
) -> Result<(), StoreError> {
    if from > to {
        return Ok(());
    }
    let mut bytes = 0;
    store.log().visit(stream, from, to, READ_BATCH, |r| {
        bytes += r.body.len();
        out.push_back(Held {
            seq: r.seq,
            ts_ns: r.ts_ns,
            payload: Payload::from(r.body),
        });
        bytes < READ_BYTES
    })?;
    Ok(())
}

/// Key of a subscription's acks in the key-value tree: queue, 0, group.
pub(crate) fn group_key(queue: &str, group: &str) -> Vec<u8> {
    let mut key = queue.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(group.as_bytes());
    key
}

/// Splits a key made by [`group_key`].
pub(crate) fn split_group_key(key: &[u8]) -> Option<(String, String)> {
    let zero = key.iter().position(|&b| b == 0)?;
    let queue = String::from_utf8(key[..zero].to_vec()).ok()?;
    let group = String::from_utf8(key[zero + 1..].to_vec()).ok()?;
    Some((queue, group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FullPolicy, QueueSettings};

    fn settings(hwm: u64) -> QueueSettings {
        QueueSettings {
            hwm,
            hwm_bytes: u64::MAX,
            swap_limit: u64::MAX,
            policy: FullPolicy::Block,
            ttl: None,
            max_redeliveries: Some(1),
            redelivery_timeout: Duration::from_secs(60),
        }
    }

    fn consumer(id: u64, prefetch: u32) -> Consumer {
        Consumer {
            id,
            identity: vec![id as u8],
            prefetch,
            unacked: BTreeSet::new(),
            auto_ack: false,
            parked: None,
            blocked: false,
        }
    }

    fn collect(
        q: &mut Queue,
        store: &Store,
        group: &str,
        index: usize,
        n: usize,
    ) -> Vec<(u64, u32, Vec<u8>)> {
        let kv = store.kv("queue-test").unwrap();
        let mut got = Vec::new();
        loop {
            // First deliveries wait for a durable horizon, written a window at a time.
            if let Some(ticket) = q.extend_horizons(&kv).unwrap() {
                store.wait_durable(ticket).unwrap();
                q.advance_durable(store.watermark().durable);
            }
            let taken = q
                .take(
                    store,
                    group,
                    index,
                    n - got.len(),
                    usize::MAX,
                    Instant::now(),
                    &mut |seq, r, p| {
                        got.push((seq, r, p.to_vec()));
                        true
                    },
                )
                .unwrap();
            if taken == 0 || got.len() == n {
                return got;
            }
        }
    }

    /// Reopens `q` as a restart would, from the acks and horizons stored in `kv`.
    fn reopen(q: &Queue, store: &Store, kv: &Kv) -> Queue {
        let groups = q
            .groups
            .keys()
            .map(|name| {
                let value = kv.get(&group_key(&q.name, name)).unwrap().unwrap();
                let (acks, delivered) = AckSet::decode(&value).unwrap();
                (name.clone(), acks, delivered)
            })
            .collect();
        Queue::open(&q.name, q.settings.clone(), store, groups)
    }

    fn publish(q: &mut Queue, store: &Store, range: std::ops::Range<u32>) {
        let bodies: Vec<Vec<u8>> = range.map(|i| format!("m{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let appended = q.append(store, &refs).unwrap();
        store.wait_durable(appended.ticket).unwrap();
        q.advance_durable(store.watermark().durable);
    }

    #[test]
    fn beyond_the_hwm_messages_are_read_back_from_the_journal_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let mut q = Queue::open("q", settings(3), &store, Vec::new());
        publish(&mut q, &store, 0..10_000);
        assert_eq!(q.window.len(), 3, "the window stops at the HWM");
        q.groups
            .get_mut("")
            .unwrap()
            .consumers
            .push(consumer(1, 100_000));
        let got = collect(&mut q, &store, "", 0, 100_000);
        assert_eq!(got.len(), 10_000);
        for (i, (seq, r, body)) in got.iter().enumerate() {
            assert_eq!((*seq, *r), (i as u64 + 1, 0));
            assert_eq!(body, format!("m{i}").as_bytes());
        }
        assert!(q.window.is_empty(), "delivered messages leave the window");
        // The window starts again at the journal's end.
        publish(&mut q, &store, 10_000..10_002);
        assert_eq!(q.window.len(), 2);
    }

    #[test]
    fn acks_released_messages_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let mut q = Queue::open("q", settings(100), &store, Vec::new());
        publish(&mut q, &store, 0..5);
        let g = q.groups.get_mut("").unwrap();
        g.consumers.push(consumer(1, 3));
        g.consumers.push(consumer(2, 10));
        let first = collect(&mut q, &store, "", 0, 10);
        assert_eq!(
            first.iter().map(|m| m.0).collect::<Vec<_>>(),
            [1, 2, 3],
            "prefetch"
        );
        assert_eq!(
            q.ack("" /* group */, 2, &[1]),
            1,
            "another consumer's ack is refused"
        );
        assert_eq!(q.ack("", 1, &[2, 99]), 1);
        assert_eq!(q.ack_through("", 1, 1), 1);
        // Consumer 1 goes: 3 goes to consumer 2 first, marked redelivered, then 4 and 5.
        assert!(q.remove_consumer("", 1).is_empty());
        let second = collect(&mut q, &store, "", 0, 10);
        assert_eq!(
            second.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            [(3, 1), (4, 0), (5, 0)]
        );
        // Released again: over max_redeliveries = 1, seq 3 is dead-lettered.
        let dead = q.expire_in_flight(Instant::now() + Duration::from_secs(61));
        assert_eq!(dead.iter().map(|h| h.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(q.stats(Duration::from_secs(1)).groups[0].pending, 2);
        let third = collect(&mut q, &store, "", 0, 10);
        assert_eq!(
            third.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            [(4, 1), (5, 1)]
        );
    }

    #[test]
    fn named_subscriptions_get_every_message_and_resume_from_stored_acks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let kv = store.kv("queue-test").unwrap();
        let mut q = Queue::open("q", settings(2), &store, Vec::new());
        assert!(q.add_group("audit"));
        publish(&mut q, &store, 0..6);
        for (id, group) in [(1, ""), (2, "audit")] {
            q.groups
                .get_mut(group)
                .unwrap()
                .consumers
                .push(consumer(id, 100));
        }
        assert_eq!(collect(&mut q, &store, "", 0, 100).len(), 6);
        let audit = collect(&mut q, &store, "audit", 0, 4);
        assert_eq!(audit.len(), 4);
        q.ack_through("audit", 2, 2);
        // As after a clean stop: audit resumes at 3, with 3 and 4 marked as delivered before.
        q.store_acks(&kv, true, true).unwrap();
        let mut q = reopen(&q, &store, &kv);
        q.groups
            .get_mut("audit")
            .unwrap()
            .consumers
            .push(consumer(3, 100));
        let again = collect(&mut q, &store, "audit", 0, 100);
        assert_eq!(
            again.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            [(3, 1), (4, 1), (5, 0), (6, 0)]
        );
    }

    #[test]
    fn expired_messages_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let mut s = settings(100);
        s.ttl = Some(Duration::from_millis(1));
        let mut q = Queue::open("q", s, &store, Vec::new());
        publish(&mut q, &store, 0..3);
        std::thread::sleep(Duration::from_millis(5));
        q.groups
            .get_mut("")
            .unwrap()
            .consumers
            .push(consumer(1, 100));
        assert!(collect(&mut q, &store, "", 0, 100).is_empty());
        let stats = q.stats(Duration::from_secs(1));
        assert_eq!((stats.expired, stats.depth), (3, 0));
    }

    #[test]
    fn messages_are_delivered_only_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let mut q = Queue::open("q", settings(100), &store, Vec::new());
        q.groups
            .get_mut("")
            .unwrap()
            .consumers
            .push(consumer(1, 100));
        // A first message makes a horizon durable, so only durability holds the second.
        publish(&mut q, &store, 0..1);
        assert_eq!(collect(&mut q, &store, "", 0, 100).len(), 1);
        q.append(&store, &[b"x"]).unwrap();
        let taken = q
            .take(
                &store,
                "",
                0,
                100,
                usize::MAX,
                Instant::now(),
                &mut |_, _, _| true,
            )
            .unwrap();
        assert_eq!(taken, 0);
        store.wait_durable(q.unsynced.back().unwrap().0).unwrap();
        q.advance_durable(store.watermark().durable);
        assert_eq!(collect(&mut q, &store, "", 0, 100).len(), 1);
    }

    #[test]
    fn stored_acks_past_the_journal_do_not_swallow_new_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let mut q = Queue::open(
            "q",
            settings(10),
            &store,
            vec![(String::new(), AckSet::new(50), 50)],
        );
        publish(&mut q, &store, 0..3);
        q.groups
            .get_mut("")
            .unwrap()
            .consumers
            .push(consumer(1, 10));
        let got = collect(&mut q, &store, "", 0, 10);
        assert_eq!(
            got.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            [(1, 0), (2, 0), (3, 0)]
        );
    }

    #[test]
    fn after_a_crash_every_message_up_to_the_stored_horizon_comes_marked() {
        use crate::horizon::WINDOW;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let kv = store.kv("queue-test").unwrap();
        let mut q = Queue::open("q", settings(100), &store, Vec::new());
        publish(&mut q, &store, 0..(WINDOW as u32 + 100));
        let g = q.groups.get_mut("").unwrap();
        g.consumers.push(consumer(1, 10));
        assert_eq!(collect(&mut q, &store, "", 0, 10).len(), 10);
        // Nothing is stored after the deliveries (a SIGKILL right after them): the horizon
        // written before them covers them.
        let mut q = reopen(&q, &store, &kv);
        q.groups
            .get_mut("")
            .unwrap()
            .consumers
            .push(consumer(2, u32::MAX));
        let again = collect(&mut q, &store, "", 0, usize::MAX);
        assert_eq!(again.len(), WINDOW as usize + 100);
        let marked = again.iter().take_while(|m| m.1 == 1).count();
        assert_eq!(marked as u64, WINDOW, "up to the horizon, one window");
        assert!(again[marked..].iter().all(|m| m.1 == 0));
        assert_eq!(again[marked].0, WINDOW + 1);
    }

    #[test]
    fn first_deliveries_wait_for_a_durable_horizon_redeliveries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let kv = store.kv("queue-test").unwrap();
        let mut q = Queue::open("q", settings(100), &store, Vec::new());
        publish(&mut q, &store, 0..3);
        q.groups.get_mut("").unwrap().consumers.push(consumer(1, 1));
        let take_one = |q: &mut Queue| {
            let mut got = Vec::new();
            q.take(
                &store,
                "",
                0,
                1,
                usize::MAX,
                Instant::now(),
                &mut |s, r, _| {
                    got.push((s, r));
                    true
                },
            )
            .unwrap();
            got
        };
        assert!(!q.deliverable(), "no horizon stored yet");
        assert!(take_one(&mut q).is_empty());
        let ticket = q.extend_horizons(&kv).unwrap().expect("a horizon write");
        assert!(
            q.extend_horizons(&kv).unwrap().is_none(),
            "one write at a time"
        );
        store.wait_durable(ticket).unwrap();
        q.advance_durable(store.watermark().durable);
        assert!(q.deliverable());
        assert_eq!(take_one(&mut q), [(1, 0)]);
        // Released (delivered before, so within the horizon): delivered again at once.
        assert!(q.remove_consumer("", 1).is_empty());
        q.groups.get_mut("").unwrap().consumers.push(consumer(2, 1));
        assert_eq!(take_one(&mut q), [(1, 1)]);
    }

    #[test]
    fn group_keys_round_trip() {
        assert_eq!(
            split_group_key(&group_key("q.x", "sub")),
            Some(("q.x".into(), "sub".into()))
        );
        assert_eq!(
            split_group_key(&group_key("q", "")),
            Some(("q".into(), String::new()))
        );
    }
}
