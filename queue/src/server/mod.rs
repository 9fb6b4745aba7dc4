//! The queue thread: owns the ROUTER (confirmed publishes, consumers), the PULL
//! (fire-and-forget) and the simple-mode PUSH endpoints; stores publishes, confirms them once
//! durable, and delivers to consumers within their prefetch windows.

use depot_common::frames::recv_frames;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use depot_common::ratelimit::RateLimited;
use depot_store::{Kv, Store, Ticket};

use crate::acks::AckSet;
use crate::config::QueueConfig;
use crate::delivery::{deliver_push, deliver_router};
use crate::metrics::{inc, QueueMetrics};
use crate::protocol::{self, ProtocolError};
use crate::queue::{self, Consumer, Held, Queue};

mod requests;

/// Messages taken from one socket per loop turn, so no socket starves the others.
const MESSAGES_PER_TURN: usize = 512;
/// Bytes of publishes held back by the `block` policy before further ones are refused.
const WAITING_LIMIT: usize = 64 * 1024 * 1024;
/// How often acks are stored, timeouts checked and figures refreshed.
const TICK: Duration = Duration::from_millis(20);
/// How often fully acknowledged journal blocks are removed.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How often per-queue figures are published for `/metrics`.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Name of the key-value tree holding the subscriptions' acks.
pub(crate) const KV_TREE: &str = "queue";

/// A durable publish's confirm, waiting for the watermark.
struct PendingConfirm {
    ticket: Ticket,
    identity: Vec<u8>,
    tag: Vec<u8>,
    first: u64,
    last: u64,
}

/// A confirmed publish held back because its queue is full (`block` policy).
struct Waiting {
    identity: Vec<u8>,
    tag: Vec<u8>,
    frames: Vec<zmq::Message>,
    bytes: usize,
}

/// A DEALER peer and its subscriptions.
struct Peer {
    last_seen: Instant,
    /// (queue, group, consumer id)
    subs: Vec<(String, String, u64)>,
}

/// The queue thread's state.
pub(crate) struct Server {
    pub router: zmq::Socket,
    pub pull: Option<zmq::Socket>,
    /// Simple-mode PUSH endpoints by queue.
    pub pushes: HashMap<String, zmq::Socket>,
    pub store: Arc<Store>,
    pub kv: Kv,
    pub config: QueueConfig,
    pub queues: BTreeMap<String, Queue>,
    pub metrics: Arc<QueueMetrics>,
    /// New configurations from a live reload, taken at the next tick.
    updates: mpsc::Receiver<QueueConfig>,
    peers: HashMap<Vec<u8>, Peer>,
    confirms: VecDeque<PendingConfirm>,
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
    /// A push for a full `block` queue: the PULL is not read until it is stored.
    parked_push: Option<Vec<zmq::Message>>,
    next_consumer: u64,
    bad_input: RateLimited,
    store_failure: RateLimited,
    last_tick: Instant,
    last_trim: Instant,
    last_stats: Instant,
    /// After a refused horizon write (disk full): no new try before then.
    horizon_retry: Option<Instant>,
    /// Produce/consume permissions of the sender's key (CURVE only).
    guard: depot_common::authz::Guard,
}

/// Loads every queue: those with stored acks, those with a journal, those configured.
pub(crate) fn load_queues(
    store: &Store,
    kv: &Kv,
    config: &QueueConfig,
) -> Result<BTreeMap<String, Queue>, String> {
    let mut groups: BTreeMap<String, Vec<(String, AckSet, u64)>> = BTreeMap::new();
    for entry in kv.entries() {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let (queue, group) =
            queue::split_group_key(&key).ok_or("a stored subscription key is damaged")?;
        let (acks, delivered) = AckSet::decode(&value)
            .map_err(|e| format!("queue {queue}, subscription {group:?}: {e}"))?;
        groups
            .entry(queue)
            .or_default()
            .push((group, acks, delivered));
    }
    for stream in store.log().streams() {
        if let Some(name) = stream.strip_prefix(crate::queue::JOURNAL_PREFIX) {
            groups.entry(name.to_owned()).or_default();
        }
    }
    for name in config.queues.keys() {
        groups.entry(name.clone()).or_default();
    }
    Ok(groups
        .into_iter()
        .map(|(name, groups)| {
            let queue = Queue::open(&name, config.settings(&name), store, groups);
            (name, queue)
        })
        .collect())
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        router: zmq::Socket,
        pull: Option<zmq::Socket>,
        pushes: HashMap<String, zmq::Socket>,
        store: Arc<Store>,
        kv: Kv,
        config: QueueConfig,
        queues: BTreeMap<String, Queue>,
        metrics: Arc<QueueMetrics>,
        updates: mpsc::Receiver<QueueConfig>,
    ) -> Server {
        let mut server = Server {
            router,
            pull,
            pushes,
            store,
            kv,
            config: config.clone(),
            queues,
            metrics,
            updates,
            peers: HashMap::new(),
            confirms: VecDeque::new(),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            parked_push: None,
            next_consumer: 1,
            bad_input: RateLimited::default(),
            store_failure: RateLimited::default(),
            last_tick: Instant::now(),
            last_trim: Instant::now(),
            last_stats: Instant::now() - STATS_EVERY,
            horizon_retry: None,
            guard: depot_common::authz::Guard::new(
                config.curve.as_ref().map(|c| c.authorizer.clone()),
                depot_common::authz::Service::Queue,
            ),
        };
        let names: Vec<String> = server.pushes.keys().cloned().collect();
        for name in names {
            let id = server.consumer_id();
            if let Some(q) = server.queues.get_mut(&name) {
                if let Some(group) = q.groups.get_mut("") {
                    group.consumers.push(Consumer {
                        id,
                        identity: Vec::new(),
                        prefetch: u32::MAX,
                        unacked: Default::default(),
                        auto_ack: true,
                        parked: None,
                        blocked: false,
                    });
                }
            }
        }
        server.publish_stats();
        server
    }

    fn consumer_id(&mut self) -> u64 {
        self.next_consumer += 1;
        self.next_consumer
    }

    /// Serves until `stop` is set; then stores what was received, and confirms what becomes
    /// durable within a bounded wait.
    pub(crate) fn run(mut self, stop: Arc<AtomicBool>) {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let busy = self.queues.values().any(Queue::deliverable);
            let waiting = !self.confirms.is_empty()
                || !self.waiting.is_empty()
                || self.parked_push.is_some()
                || self.queues.values().any(|q| {
                    q.groups
                        .values()
                        .any(|g| g.consumers.iter().any(|c| c.blocked))
                });
            let timeout = if stopping || busy {
                0
            } else if waiting
                || self.store.commit_stats().issued_ticket > self.store.watermark().durable
            {
                1
            } else {
                TICK.as_millis() as i64
            };
            let received = self.poll_and_receive(timeout);
            let durable = self.store.watermark().durable;
            for q in self.queues.values_mut() {
                q.advance_durable(durable);
            }
            self.send_due_confirms();
            self.retry_waiting();
            self.extend_horizons();
            self.deliver();
            if self.last_tick.elapsed() >= TICK {
                self.tick();
            }
            if stopping && received == 0 {
                break;
            }
        }
        if let Some(last) = self.confirms.back().map(|p| p.ticket) {
            let _ = self
                .store
                .wait_durable_timeout(last, Duration::from_secs(5));
        }
        self.send_due_confirms();
        for w in std::mem::take(&mut self.waiting) {
            let reason = "not stored: the appliance is stopping (the queue was full)";
            self.reply(&w.identity, protocol::err("PUB", &w.tag, reason));
        }
        // Nothing is delivered any more: store exactly how far deliveries went.
        self.store_acks(true, true);
    }

    fn poll_and_receive(&mut self, timeout: i64) -> usize {
        let read_pull = self.pull.is_some() && self.parked_push.is_none();
        let mut items = vec![self.router.as_poll_item(zmq::POLLIN)];
        if let (true, Some(pull)) = (read_pull, &self.pull) {
            items.push(pull.as_poll_item(zmq::POLLIN));
        }
        if let Err(e) = zmq::poll(&mut items, timeout) {
            tracing::warn!(error = %e, "queue: poll failed");
            return 0;
        }
        let router_ready = items[0].is_readable();
        let pull_ready = items.get(1).is_some_and(|i| i.is_readable());
        drop(items);
        let mut received = 0;
        if router_ready {
            for _ in 0..MESSAGES_PER_TURN {
                match recv_frames(&self.router) {
                    Ok(frames) => {
                        received += 1;
                        self.handle_request(frames);
                    }
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "queue: receive failed");
                        break;
                    }
                }
            }
        }
        if pull_ready {
            for _ in 0..MESSAGES_PER_TURN {
                if self.parked_push.is_some() {
                    break;
                }
                let Some(pull) = &self.pull else { break };
                match recv_frames(pull) {
                    Ok(frames) => {
                        received += 1;
                        self.handle_push(frames);
                    }
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "queue: receive failed");
                        break;
                    }
                }
            }
        }
        received
    }

    fn refuse(&mut self, e: &ProtocolError) {
        match e {
            ProtocolError::TooLarge { .. } => inc(&self.metrics.oversize),
            _ => inc(&self.metrics.malformed),
        }
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(error = %e, suppressed, "queue: request refused");
        }
    }

    fn reply<const N: usize>(&self, identity: &[u8], frames: [Vec<u8>; N]) {
        match self
            .router
            .send_multipart(prefixed(identity, frames), zmq::DONTWAIT)
        {
            Ok(()) => {}
            // A client not reading its replies loses this one; its requests stay served.
            Err(e) => tracing::debug!(error = %e, "queue: reply undeliverable"),
        }
    }

    /// The queue `name`, created if auto-create is on (or `force`).
    fn queue_for(&mut self, name: &str, force: bool) -> Option<&mut Queue> {
        if !self.queues.contains_key(name) {
            if !(self.config.auto_create || force) {
                return None;
            }
            let queue = Queue::open(name, self.config.settings(name), &self.store, Vec::new());
            tracing::info!(queue = name, "queue created");
            self.queues.insert(name.to_owned(), queue);
            if let Some(q) = self.queues.get_mut(name) {
                if let Err(e) = q.store_acks(&self.kv, true, false) {
                    tracing::error!(queue = name, error = %e, "queue: cannot store a new queue");
                }
            }
        }
        self.queues.get_mut(name)
    }

    fn remove_consumer(&mut self, queue: &str, group: &str, id: u64) {
        let dead = match self.queues.get_mut(queue) {
            Some(q) => q.remove_consumer(group, id),
            None => Vec::new(),
        };
        self.dead_letter(queue, dead);
    }

    /// Moves messages to `<queue>.dead` (they were acknowledged in their queue already).
    fn dead_letter(&mut self, queue: &str, dead: Vec<Held>) {
        if dead.is_empty() {
            return;
        }
        let name = format!("{queue}.dead");
        let store = self.store.clone();
        let Some(q) = self.queue_for(&name, true) else {
            return;
        };
        let bodies: Vec<&[u8]> = dead.iter().map(|h| &h.payload[..]).collect();
        if let Err(e) = q.append(&store, &bodies) {
            inc(&self.metrics.store_errors);
            tracing::error!(queue = name, error = %e, "queue: dead letters not stored");
        }
    }

    /// Confirms every publish the durable watermark covers, in order.
    fn send_due_confirms(&mut self) {
        if self.confirms.is_empty() {
            return;
        }
        let mark = self.store.watermark();
        while let Some(front) = self.confirms.front() {
            if front.ticket.get() > mark.durable {
                if mark.poisoned.is_some() || mark.closed {
                    if let Some(p) = self.confirms.pop_front() {
                        let reason =
                            "not durable: the store failed; retry after the appliance recovers";
                        self.reply(&p.identity, protocol::err("PUB", &p.tag, reason));
                    }
                    continue;
                }
                break;
            }
            let message = prefixed(
                &front.identity,
                protocol::ok(&front.tag, front.first, front.last),
            );
            match self.router.send_multipart(message, zmq::DONTWAIT) {
                Ok(()) => inc(&self.metrics.confirms),
                // The producer is not reading its confirms: try again on the next turn.
                Err(zmq::Error::EAGAIN) => break,
                // The producer went away; its messages are stored all the same.
                Err(e) => tracing::debug!(error = %e, "queue: confirm undeliverable"),
            }
            self.confirms.pop_front();
        }
    }

    /// Hands messages to every consumer with room, round-robin within each subscription.
    fn deliver(&mut self) {
        let now = Instant::now();
        // Blocked consumers are retried here once per turn (the loop then polls with a 1 ms
        // timeout instead of spinning).
        let names: Vec<String> = self
            .queues
            .iter_mut()
            .filter_map(|(name, q)| {
                let mut blocked = false;
                for c in q.groups.values_mut().flat_map(|g| g.consumers.iter_mut()) {
                    blocked |= std::mem::take(&mut c.blocked);
                }
                (blocked || q.deliverable()).then(|| name.clone())
            })
            .collect();
        let mut gone = Vec::new();
        for name in names {
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            let groups: Vec<String> = q.groups.keys().cloned().collect();
            for group in groups {
                let (count, start) = match q.groups.get_mut(&group) {
                    Some(g) => {
                        g.turn = g.turn.wrapping_add(1);
                        (g.consumers.len(), g.turn)
                    }
                    None => continue,
                };
                for step in 0..count {
                    let index = (start + step) % count;
                    let Some(c) = q
                        .groups
                        .get_mut(&group)
                        .and_then(|g| g.consumers.get_mut(index))
                    else {
                        break;
                    };
                    let (id, identity, auto_ack) = (c.id, c.identity.clone(), c.auto_ack);
                    let outcome = if auto_ack {
                        let Some(push) = self.pushes.get(&name) else {
                            continue;
                        };
                        deliver_push(q, &self.store, &group, index, push, now)
                    } else {
                        deliver_router(
                            q,
                            &self.store,
                            &self.router,
                            &name,
                            &group,
                            index,
                            &identity,
                            now,
                        )
                    };
                    match outcome {
                        Ok(true) => {}
                        Ok(false) => gone.push((identity, name.clone(), group.clone(), id)),
                        Err(e) => {
                            inc(&self.metrics.store_errors);
                            if let Some(suppressed) = self.store_failure.allow() {
                                tracing::error!(queue = name, error = %e, suppressed, "queue: reading the journal failed");
                            }
                        }
                    }
                }
            }
        }
        for (identity, queue, group, id) in gone {
            inc(&self.metrics.consumers_lost);
            self.remove_consumer(&queue, &group, id);
            if let Some(peer) = self.peers.get_mut(&identity) {
                peer.subs.retain(|(_, _, sub)| *sub != id);
            }
        }
    }

    /// Takes a reloaded configuration: the defaults, every queue's settings, auto-create and
    /// the limits apply from now on, and declared queues that do not exist yet are created.
    /// Endpoints are sockets bound at start: they keep their old values (a restart applies
    /// them).
    fn reconfigure(&mut self, mut config: QueueConfig) {
        config.router.clone_from(&self.config.router);
        config.pull.clone_from(&self.config.pull);
        config.curve = self.config.curve.take();
        for (name, overrides) in config.queues.iter_mut() {
            overrides.push = self.config.queues.get(name).and_then(|q| q.push.clone());
        }
        self.config = config;
        for (name, q) in self.queues.iter_mut() {
            q.settings = self.config.settings(name);
        }
        let declared: Vec<String> = self.config.queues.keys().cloned().collect();
        for name in declared {
            self.queue_for(&name, true);
        }
        tracing::info!(queues = self.queues.len(), "queue: configuration reloaded");
        self.publish_stats();
    }

    /// Periodic work: timeouts, silent peers, stored acks, trimming, figures.
    fn tick(&mut self) {
        let now = Instant::now();
        self.last_tick = now;
        while let Ok(config) = self.updates.try_recv() {
            self.reconfigure(config);
        }
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in &names {
            let dead = match self.queues.get_mut(name) {
                Some(q) => q.expire_in_flight(now),
                None => continue,
            };
            self.dead_letter(name, dead);
        }
        let timeout = self.config.heartbeat_timeout;
        let silent: Vec<Vec<u8>> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for identity in silent {
            if let Some(peer) = self.peers.remove(&identity) {
                for (queue, group, id) in peer.subs {
                    inc(&self.metrics.consumers_lost);
                    tracing::info!(
                        queue,
                        group,
                        "queue: consumer silent for too long; its messages go to others"
                    );
                    self.remove_consumer(&queue, &group, id);
                }
            }
        }
        self.store_acks(false, false);
        if self.last_trim.elapsed() >= TRIM_EVERY {
            self.last_trim = now;
            for q in self.queues.values_mut() {
                if let Err(e) = q.trim(&self.store) {
                    tracing::warn!(queue = q.name, error = %e, "queue: trimming the journal failed");
                }
            }
        }
        if self.last_stats.elapsed() >= STATS_EVERY {
            self.publish_stats();
        }
    }

    fn publish_stats(&mut self) {
        self.last_stats = Instant::now();
        let stats: Vec<_> = self
            .queues
            .values_mut()
            .map(|q| q.stats(STATS_EVERY))
            .collect();
        *self
            .metrics
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// Stores the delivery horizons that deliveries come near (see `crate::horizon`). Runs
    /// every loop turn right after new appends, so a horizon write mostly shares their commit.
    fn extend_horizons(&mut self) {
        if self.horizon_retry.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.horizon_retry = None;
        for q in self.queues.values_mut() {
            if let Err(e) = q.extend_horizons(&self.kv) {
                // Tried again a tick later, not on every loop turn (each try measures the
                // disk while it is full).
                self.horizon_retry = Some(Instant::now() + TICK);
                inc(&self.metrics.store_errors);
                if let Some(suppressed) = self.store_failure.allow() {
                    tracing::error!(queue = q.name, error = %e, suppressed, "queue: storing a delivery horizon failed; new messages wait for it");
                }
            }
        }
    }

    fn store_acks(&mut self, all: bool, stopped: bool) {
        for q in self.queues.values_mut() {
            if let Err(e) = q.store_acks(&self.kv, all, stopped) {
                inc(&self.metrics.store_errors);
                if let Some(suppressed) = self.store_failure.allow() {
                    tracing::error!(queue = q.name, error = %e, suppressed, "queue: storing acks failed");
                }
            }
        }
    }
}

/// `frames` behind a ROUTER identity.
fn prefixed<const N: usize>(identity: &[u8], frames: [Vec<u8>; N]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(N + 1);
    out.push(identity.to_vec());
    out.extend(frames);
    out
}
