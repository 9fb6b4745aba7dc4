//! The CHP server: one thread owning the snapshot ROUTER, the publisher PUB and the collector
//! SUB. Updates are applied in memory, written to the store, and published only once durable,
//! so every update a peer has seen survives a crash with its sequence.

use depot_common::frames::bound_endpoint;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_common::authz::{user_id, Guard, Op, Service};
use depot_common::metrics::{Kind, MetricsText};
use depot_common::ratelimit::RateLimited;
use depot_common::thread::Worker;
use depot_store::{DurableNotifier, Store, Ticket};

use crate::bstar::Transition;
use crate::config::CacheConfig;
use crate::ha::Ha;
use crate::mirror::MirrorEvent;
use crate::pending::Refused;
use crate::persist::{Change, Compactor, Persist};
use crate::protocol::{self, KvMsg, KTHXBAI};
use crate::recent::RecentUuids;
use crate::state::CacheState;

/// Linger of the cache's sockets.
const LINGER_MS: i32 = 200;
/// Snapshot entries sent per loop turn, so snapshots share the thread with updates.
const SNAPSHOT_BUDGET: usize = 20_000;
/// Updates published per loop turn at most. A commit can make a large backlog durable at once;
/// sent in one go it would overflow the publisher's pipes (`publisher_hwm`) before the I/O
/// thread writes them out, and subscribers that do keep up would lose the burst's tail.
const PUBLISH_BUDGET: usize = 4_096;
/// Bytes of a packed snapshot batch.
const PACKED_BATCH: usize = 256 * 1024;
/// How often expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);
/// Update uuids remembered to ignore resends (a client repeats a KVSET until it sees it
/// published, since a PUB drops while its connection forms).
const RECENT_UUIDS: usize = 65_536;

/// A uuid frame as a number (the decoder admits only empty or 16-byte frames): 65,536 of them
/// kept twice as `Vec`s cost ~9 MB of small allocations, as numbers ~2 MB.
fn uuid_key(uuid: &[u8]) -> Option<u128> {
    <[u8; 16]>::try_from(uuid).ok().map(u128::from_be_bytes)
}

/// Why the cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An endpoint could not be bound.
    #[error("cache {role} endpoint {endpoint}: {source}")]
    Endpoint {
        /// Which endpoint.
        role: &'static str,
        /// Its address.
        endpoint: String,
        /// What libzmq said.
        source: zmq::Error,
    },
    /// The stored state could not be loaded.
    #[error("cache: loading the stored state: {0}")]
    Load(String),
    /// A socket or thread could not be set up.
    #[error("cache: {0}")]
    Setup(String),
}

/// Counters of the cache.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Updates applied and published.
    pub published: AtomicU64,
    /// Keys removed by expiry.
    pub expired: AtomicU64,
    /// Snapshots served to the end.
    pub snapshots: AtomicU64,
    /// Messages refused (frames, sequence, uuid, properties, size, unknown command).
    pub rejected: AtomicU64,
    /// KVSETs ignored because their uuid was applied already (a client's resend).
    pub duplicates: AtomicU64,
    /// Keys stored now.
    pub keys: AtomicU64,
    /// Last sequence.
    pub seq: AtomicU64,
    /// Binary Star state: 0 single server, 1 primary, 2 backup, 3 active, 4 passive.
    pub ha_state: AtomicU64,
    /// Times this server became active in a pair.
    pub takeovers: AtomicU64,
    /// Snapshot requests refused because this server is not active.
    pub votes_refused: AtomicU64,
    /// Client updates held for takeover (passive server).
    pub pending: AtomicU64,
    /// Pending client updates applied on takeover.
    pub pending_applied: AtomicU64,
    /// Updates mirrored from the active peer.
    pub mirrored: AtomicU64,
    /// Snapshots installed from the active peer.
    pub resyncs: AtomicU64,
    /// Change-log records folded into the compacted tree.
    pub compacted: AtomicU64,
    /// Client updates refused because the store refuses writes (disk full, store failed).
    pub unstored: AtomicU64,
}

impl CacheMetrics {
    /// Writes the counters as Prometheus text.
    pub fn render(&self, m: &mut MetricsText) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        m.single(
            "depot_cache_published_total",
            Kind::Counter,
            "Updates published",
            get(&self.published),
        );
        m.single(
            "depot_cache_expired_total",
            Kind::Counter,
            "Keys removed by TTL",
            get(&self.expired),
        );
        m.single(
            "depot_cache_snapshots_total",
            Kind::Counter,
            "Snapshots served",
            get(&self.snapshots),
        );
        m.single(
            "depot_cache_rejected_total",
            Kind::Counter,
            "Messages refused",
            get(&self.rejected),
        );
        m.single(
            "depot_cache_unstored_total",
            Kind::Counter,
            "Client updates refused because the store refuses writes (disk full)",
            get(&self.unstored),
        );
        m.single(
            "depot_cache_keys",
            Kind::Gauge,
            "Keys stored",
            get(&self.keys),
        );
        m.single(
            "depot_cache_seq",
            Kind::Gauge,
            "Last sequence",
            get(&self.seq),
        );
        m.single(
            "depot_cache_duplicates_total",
            Kind::Counter,
            "Resent updates ignored",
            get(&self.duplicates),
        );
        m.single(
            "depot_cache_ha_state",
            Kind::Gauge,
            "Binary Star state: 0 single, 1 primary, 2 backup, 3 active, 4 passive",
            get(&self.ha_state),
        );
        m.single(
            "depot_cache_takeovers_total",
            Kind::Counter,
            "Times this server became active in a pair",
            get(&self.takeovers),
        );
        m.single(
            "depot_cache_votes_refused_total",
            Kind::Counter,
            "Snapshot requests refused while not active",
            get(&self.votes_refused),
        );
        m.single(
            "depot_cache_pending",
            Kind::Gauge,
            "Client updates held for takeover",
            get(&self.pending),
        );
        m.single(
            "depot_cache_pending_applied_total",
            Kind::Counter,
            "Pending client updates applied on takeover",
            get(&self.pending_applied),
        );
        m.single(
            "depot_cache_mirrored_total",
            Kind::Counter,
            "Updates mirrored from the active peer",
            get(&self.mirrored),
        );
        m.single(
            "depot_cache_compacted_total",
            Kind::Counter,
            "Change-log records folded into the compacted tree",
            get(&self.compacted),
        );
        m.single(
            "depot_cache_resyncs_total",
            Kind::Counter,
            "Snapshots installed from the active peer",
            get(&self.resyncs),
        );
    }
}

/// Where the cache listens, ephemeral ports resolved.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheEndpoints {
    /// Snapshot ROUTER.
    pub snapshot: String,
    /// Publisher PUB.
    pub publisher: String,
    /// Collector SUB.
    pub collector: String,
    /// State PUB of a Binary Star pair, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The running cache.
pub struct Cache {
    worker: Worker,
    compactor: Compactor,
    /// Its counters.
    pub metrics: Arc<CacheMetrics>,
    /// Where it listens.
    pub endpoints: CacheEndpoints,
}

fn bind(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &'static str,
    endpoint: &str,
    config: &CacheConfig,
) -> Result<zmq::Socket, CacheError> {
    let error = |source| CacheError::Endpoint {
        role,
        endpoint: endpoint.to_string(),
        source,
    };
    let socket = ctx.socket(kind).map_err(error)?;
    socket.set_linger(LINGER_MS).map_err(error)?;
    if kind == zmq::XPUB {
        socket.set_sndhwm(config.publisher_hwm).map_err(error)?;
    }
    // A value over max_value_size is refused by the decoder; far over it, by libzmq.
    depot_common::frames::set_frame_cap(&socket, config.max_value_size).map_err(error)?;
    depot_common::security::apply_server(&socket, config.curve.as_ref()).map_err(error)?;
    socket.bind(endpoint).map_err(error)?;
    Ok(socket)
}

impl Cache {
    /// Loads the stored state, binds the three endpoints and starts the server thread.
    pub fn start(
        ctx: &zmq::Context,
        store: Arc<Store>,
        config: &CacheConfig,
    ) -> Result<Cache, CacheError> {
        let persist = Persist::open(store.clone()).map_err(|e| CacheError::Load(e.to_string()))?;
        let state = persist
            .load(now_ms())
            .map_err(|e| CacheError::Load(e.to_string()))?;
        let durable_log_seq = Arc::new(AtomicU64::new(0));
        let durable = store
            .durable_notifier()
            .map_err(|e| CacheError::Setup(format!("cannot watch the store's commits: {e}")))?;
        let snapshot = bind(ctx, zmq::ROUTER, "snapshot", &config.snapshot, config)?;
        snapshot
            .set_router_mandatory(true)
            .map_err(|e| CacheError::Setup(e.to_string()))?;
        // An XPUB so that, with CURVE, subscriptions are applied only within the subscriber's
        // cache.read subtrees (manual mode); without CURVE it behaves as a PUB.
        let mut publisher = bind(ctx, zmq::XPUB, "publisher", &config.publisher, config)?;
        if config.curve.is_some() {
            depot_common::sockopt::set_xpub_manual(&mut publisher, true)
                .map_err(|e| CacheError::Setup(e.to_string()))?;
        }
        let collector = bind(ctx, zmq::SUB, "collector", &config.collector, config)?;
        collector
            .set_subscribe(b"")
            .map_err(|e| CacheError::Setup(e.to_string()))?;
        let ha = match &config.ha {
            Some(ha) => Some(Ha::start(ctx, ha, config.curve.as_ref()).map_err(|source| {
                CacheError::Endpoint {
                    role: "ha state",
                    endpoint: ha.state.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let endpoints = CacheEndpoints {
            snapshot: bound_endpoint(&snapshot),
            publisher: bound_endpoint(&publisher),
            collector: bound_endpoint(&collector),
            state: ha.as_ref().map(Ha::state_endpoint),
        };
        let metrics = Arc::new(CacheMetrics::default());
        if let Some(ha) = &ha {
            metrics
                .ha_state
                .store(ha.fsm.state().code(), Ordering::Relaxed);
        }
        metrics.keys.store(state.len() as u64, Ordering::Relaxed);
        metrics.seq.store(state.seq(), Ordering::Relaxed);
        tracing::info!(keys = state.len(), seq = state.seq(), snapshot = %endpoints.snapshot,
            publisher = %endpoints.publisher, collector = %endpoints.collector, "cache serving");
        let server = Server {
            snapshot,
            publisher,
            collector,
            store,
            persist: persist.clone(),
            durable_log_seq: durable_log_seq.clone(),
            appends: VecDeque::new(),
            durable,
            state,
            unpublished: VecDeque::new(),
            snapshots: VecDeque::new(),
            metrics: metrics.clone(),
            max_value: config.max_value_size,
            hugz_interval: config.hugz_interval,
            last_sent: Instant::now(),
            // The first turn sweeps: keys whose deadline passed while Depot was down go at once.
            last_expiry: Instant::now() - EXPIRY_CHECK,
            bad_input: RateLimited::default(),
            store_refusals: RateLimited::default(),
            recent: RecentUuids::new(RECENT_UUIDS),
            published_seq: 0,
            ha,
            guard: Guard::new(
                config.curve.as_ref().map(|c| c.authorizer.clone()),
                Service::Cache,
            ),
        };
        let compactor = Compactor::start(
            persist.clone(),
            durable_log_seq.clone(),
            config.compaction_interval,
            metrics.clone(),
        )
        .map_err(|e| CacheError::Setup(format!("cannot start the compactor: {e}")))?;
        let worker = Worker::spawn("cache", move |stop| server.run(stop))
            .map_err(|e| CacheError::Setup(format!("cannot start the cache thread: {e}")))?;
        Ok(Cache {
            worker,
            compactor,
            metrics,
            endpoints,
        })
    }

    /// Stops the server after publishing what is durable.
    pub fn shutdown(self) {
        self.worker.stop();
        self.compactor.stop();
    }
}

fn now_ms() -> u64 {
    depot_store::now_ns() / 1_000_000
}

/// A snapshot being sent, possibly in several turns.
struct SnapshotJob {
    identity: Vec<u8>,
    subtree: Vec<u8>,
    /// The state's sequence when asked: the KTHXBAI carries it.
    seq: u64,
    /// Last key sent.
    after: Option<Vec<u8>>,
    /// Packed batches instead of one message per key (a Depot client asked).
    packed: bool,
    /// A packed batch refused by a full pipe, to send again: (batch, its last key, entries).
    parked: Option<(Vec<u8>, Vec<u8>, usize)>,
}

/// How far a snapshot job got in one turn.
enum JobProgress {
    /// Every entry went out; the KTHXBAI is next.
    Entries,
    /// The client's pipe is full or the turn's budget is spent.
    Blocked,
    /// The client is gone.
    Gone,
}

struct Server {
    snapshot: zmq::Socket,
    publisher: zmq::Socket,
    collector: zmq::Socket,
    store: Arc<Store>,
    /// The change log and compacted tree.
    persist: Persist,
    /// Highest change-log sequence known durable, for the compactor.
    durable_log_seq: Arc<AtomicU64>,
    /// Readable when the store's durable watermark moves.
    durable: DurableNotifier,
    /// Change-log appends waiting for their commit: (ticket, last log sequence).
    appends: VecDeque<(Ticket, u64)>,
    state: CacheState,
    /// Applied updates waiting for their commit before they are published.
    unpublished: VecDeque<(Ticket, KvMsg)>,
    snapshots: VecDeque<SnapshotJob>,
    metrics: Arc<CacheMetrics>,
    max_value: usize,
    hugz_interval: Duration,
    last_sent: Instant,
    last_expiry: Instant,
    bad_input: RateLimited,
    /// Rate limit of the log lines about updates the store refused.
    store_refusals: RateLimited,
    /// Uuids of recent updates, to drop resends.
    recent: RecentUuids,
    /// Sequence of the last update published: snapshots wait until it covers their sequence,
    /// so a snapshot never shows what is not durable yet.
    published_seq: u64,
    /// The pair link, when this server is one of a Binary Star pair.
    ha: Option<Ha>,
    /// Read/write permissions of the sender's key (CURVE only).
    guard: Guard,
}

impl Server {
    /// Remembers `uuid`; false if it was seen already.
    fn first_sight(&mut self, uuid: &[u8]) -> bool {
        let Some(uuid) = uuid_key(uuid) else {
            return true;
        };
        self.recent.insert(uuid)
    }

    /// Whether this server serves and publishes: always alone, only when active in a pair.
    fn active(&self) -> bool {
        self.ha.as_ref().is_none_or(Ha::active)
    }

    fn run(mut self, stop: Arc<AtomicBool>) {
        self.published_seq = self.state.seq();
        while !stop.load(Ordering::Acquire) {
            // Parked snapshots retry on a short timer; updates waiting for their commit are
            // woken by the durable notifier.
            let timeout = if self.publishable() {
                0
            } else if self.snapshots.is_empty() {
                50
            } else {
                1
            };
            let timeout = match &self.ha {
                Some(ha) => timeout.min(ha.next_beat_in().as_millis() as i64 + 1),
                None => timeout,
            };
            {
                let mut items = vec![
                    self.snapshot.as_poll_item(zmq::POLLIN),
                    self.collector.as_poll_item(zmq::POLLIN),
                    self.publisher.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.durable.fd(), zmq::POLLIN),
                ];
                if let Some(ha) = &self.ha {
                    items.extend(ha.poll_items());
                }
                if let Err(e) = zmq::poll(&mut items, timeout) {
                    tracing::warn!(error = %e, "cache: poll failed");
                }
            }
            self.durable.drain();
            self.pair_turn();
            self.take_subscriptions();
            self.take_updates();
            self.take_snapshot_requests();
            self.note_durable();
            if !self.active() {
                continue;
            }
            if self.last_expiry.elapsed() >= EXPIRY_CHECK {
                self.last_expiry = Instant::now();
                self.expire();
            }
            self.publish_durable();
            self.serve_snapshots();
            if self.last_sent.elapsed() >= self.hugz_interval {
                self.send(&protocol::hugz());
            }
        }
        // What was applied is stored; publish what becomes durable within a bounded wait.
        if let Some((ticket, _)) = self.unpublished.back() {
            let _ = self
                .store
                .wait_durable_timeout(*ticket, Duration::from_secs(5));
        }
        while self.publishable() {
            self.publish_durable();
        }
    }

    fn reject(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(error = %e, suppressed, "cache: {what} refused");
        }
    }

    fn take_updates(&mut self) {
        let mut applied = Vec::new();
        for _ in 0..1_024 {
            let Ok(mut frames) = depot_common::frames::recv_frames(&self.collector) else {
                break;
            };
            let user = match frames.last_mut() {
                Some(last) if self.guard.active() => user_id(last),
                _ => String::new(),
            };
            let frames = frames.iter().map(|f| f.to_vec()).collect();
            let decoded = KvMsg::decode_owned(frames, self.max_value);
            // No reply path on the collector: a refused update, or one over its key's rate, is
            // dropped, counted by the guard.
            if let Ok(msg) = &decoded {
                let key = String::from_utf8_lossy(&msg.key);
                if self
                    .guard
                    .check_admit(&user, Op::CacheWrite(&key), 1)
                    .is_err()
                {
                    continue;
                }
            }
            match decoded {
                Ok(msg) if msg.key == protocol::HUGZ || msg.key == KTHXBAI => {
                    self.reject("update", &"reserved key");
                }
                Ok(msg) if self.active() => {
                    // Checked before applying: an update the store cannot keep must not reach
                    // the state, the snapshots or the subscribers (nor count as seen, so that
                    // the client's resend is taken once space is back).
                    if let Err(e) = self.store.check_writable() {
                        self.metrics.unstored.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = self.store_refusals.allow() {
                            tracing::error!(error = %e, suppressed, "cache: update refused, the store refuses writes");
                        }
                    } else if self.first_sight(&msg.uuid) {
                        applied.push(self.state.apply_set(msg, now_ms()));
                    } else {
                        self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(msg) => self.hold(msg),
                Err(e) => self.reject("update", &e),
            }
        }
        self.log_updates(applied, true);
    }

    /// Keeps a client update for takeover, unless the active server already published it.
    fn hold(&mut self, msg: KvMsg) {
        if uuid_key(&msg.uuid).is_some_and(|uuid| self.recent.contains(uuid)) {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        match ha.pending.add(msg, now_ms()) {
            Ok(()) => {}
            Err(Refused::NoUuid) => self.reject("update", &"no uuid: cannot be held for failover"),
            Err(Refused::Full) => self.reject("update", &"the pending list is full"),
        }
        self.update_pending_gauge();
    }

    fn update_pending_gauge(&self) {
        let pending = self.ha.as_ref().map_or(0, |ha| ha.pending.len());
        self.metrics
            .pending
            .store(pending as u64, Ordering::Relaxed);
    }

    /// Heartbeats, the peer's state, and mirroring while passive.
    fn pair_turn(&mut self) {
        let seq = self.state.seq();
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        ha.beat(seq);
        let (transitions, errors) = ha.take_peer_states();
        for e in errors {
            self.reject("peer state", &e);
        }
        for transition in transitions {
            self.transition(transition);
        }
        self.mirror_turn();
    }

    fn transition(&mut self, transition: Transition) {
        if let Some(ha) = &self.ha {
            self.metrics
                .ha_state
                .store(ha.fsm.state().code(), Ordering::Relaxed);
        }
        match transition {
            Transition::BecameActive => self.take_over(),
            Transition::BecamePassive => {
                tracing::info!(
                    seq = self.state.seq(),
                    "cache: passive, mirroring the active peer"
                );
                // A passive server publishes nothing; what it stored stays stored.
                self.unpublished.clear();
                self.snapshots.clear();
            }
            Transition::Stay => {}
        }
    }

    /// Becomes the active server: applies and publishes the client updates still pending.
    fn take_over(&mut self) {
        self.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
        let held = match self.ha.as_mut() {
            Some(ha) => ha.pending.drain(now_ms()),
            None => Vec::new(),
        };
        tracing::info!(
            seq = self.state.seq(),
            pending = held.len(),
            "cache: active"
        );
        self.published_seq = self.state.seq();
        let mut applied = Vec::with_capacity(held.len());
        for msg in held {
            if self.first_sight(&msg.uuid) {
                applied.push(self.state.apply_set(msg, now_ms()));
            }
        }
        self.metrics
            .pending_applied
            .fetch_add(applied.len() as u64, Ordering::Relaxed);
        self.log_updates(applied, true);
        self.update_pending_gauge();
        self.last_expiry = Instant::now() - EXPIRY_CHECK;
    }

    fn mirror_turn(&mut self) {
        let seq = self.state.seq();
        let events = match self.ha.as_mut().and_then(|ha| ha.mirror.as_mut()) {
            Some(mirror) => mirror.turn(seq),
            None => return,
        };
        let mut mirrored = Vec::new();
        for event in events {
            match event {
                MirrorEvent::Asked => {
                    if let Some(ha) = self.ha.as_mut() {
                        ha.resync_mark = ha.pending.mark();
                    }
                }
                MirrorEvent::Snapshot { entries, seq } => {
                    self.log_updates(std::mem::take(&mut mirrored), false);
                    self.install(entries, seq);
                }
                MirrorEvent::Update(msg) => {
                    if let Some(ha) = self.ha.as_mut() {
                        ha.pending.confirm(&msg.uuid);
                    }
                    self.first_sight(&msg.uuid);
                    self.state.apply_published(msg.clone(), now_ms());
                    mirrored.push(msg);
                    self.metrics.mirrored.fetch_add(1, Ordering::Relaxed);
                }
                MirrorEvent::Gap { expected, got } => {
                    tracing::warn!(expected, got, "cache: mirrored updates lost; resyncing");
                }
                MirrorEvent::Invalid(e) => self.reject("mirrored message", &e),
            }
        }
        self.log_updates(mirrored, false);
        self.update_pending_gauge();
    }

    /// Takes the active server's snapshot as this server's state, in memory and on disk.
    fn install(&mut self, entries: Vec<KvMsg>, seq: u64) {
        if let Some(ha) = self.ha.as_mut() {
            let mark = ha.resync_mark;
            ha.pending.drop_before(mark);
            for msg in &entries {
                ha.pending.confirm(&msg.uuid);
            }
        }
        for msg in &entries {
            self.first_sight(&msg.uuid);
        }
        let installed = self.state.install_snapshot(entries, seq, now_ms());
        let mut changes: Vec<Change> = installed
            .removed
            .iter()
            .map(|key| {
                let mut delete = KvMsg::new(key.clone(), Vec::new());
                delete.seq = seq;
                Change::Update(delete)
            })
            .chain(installed.changed.iter().cloned().map(Change::Update))
            .collect();
        changes.push(Change::Renumber(seq));
        self.log_changes(&changes);
        self.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
        self.update_gauges();
        tracing::info!(
            seq,
            keys = self.state.len(),
            removed = installed.removed.len(),
            changed = installed.changed.len(),
            "cache: mirrored the active peer's snapshot"
        );
    }

    fn expire(&mut self) {
        let deletes = self.state.expire(now_ms());
        self.metrics
            .expired
            .fetch_add(deletes.len() as u64, Ordering::Relaxed);
        self.log_updates(deletes, true);
    }

    fn update_gauges(&self) {
        self.metrics
            .keys
            .store(self.state.len() as u64, Ordering::Relaxed);
        self.metrics.seq.store(self.state.seq(), Ordering::Relaxed);
    }

    /// Appends changes to the change log; the ticket tells when they are durable.
    fn log_changes(&mut self, changes: &[Change]) -> Option<Ticket> {
        self.update_gauges();
        if changes.is_empty() {
            return None;
        }
        match self.persist.append(changes) {
            Ok((ticket, log_seq)) => {
                self.appends.push_back((ticket, log_seq));
                Some(ticket)
            }
            Err(e) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cache: updates not stored");
                None
            }
        }
    }

    /// Stores applied updates and, when `publish`, queues them for publishing once durable.
    /// What cannot be stored is never published: peers cannot see what a restart would lose.
    fn log_updates(&mut self, updates: Vec<KvMsg>, publish: bool) {
        if updates.is_empty() {
            return;
        }
        let changes: Vec<Change> = updates.into_iter().map(Change::Update).collect();
        let Some(ticket) = self.log_changes(&changes) else {
            return;
        };
        if publish {
            self.unpublished
                .extend(changes.into_iter().filter_map(|change| match change {
                    Change::Update(msg) => Some((ticket, msg)),
                    Change::Renumber(_) => None,
                }));
        }
    }

    /// Tells the compactor how far the change log is durable.
    fn note_durable(&mut self) {
        let durable = self.store.watermark().durable;
        while let Some(&(ticket, log_seq)) = self.appends.front() {
            if ticket.get() > durable {
                break;
            }
            self.durable_log_seq.store(log_seq, Ordering::Release);
            self.appends.pop_front();
        }
    }

    /// Whether an applied update is durable and waits to be published.
    fn publishable(&self) -> bool {
        self.active()
            && self
                .unpublished
                .front()
                .is_some_and(|(ticket, _)| ticket.get() <= self.store.watermark().durable)
    }

    /// Publishes the updates that became durable, at most `PUBLISH_BUDGET` in one turn.
    fn publish_durable(&mut self) {
        let durable = self.store.watermark().durable;
        for _ in 0..PUBLISH_BUDGET {
            match self.unpublished.front() {
                Some((ticket, _)) if ticket.get() <= durable => {}
                _ => break,
            }
            if let Some((_, msg)) = self.unpublished.pop_front() {
                self.send(&msg);
                self.published_seq = msg.seq;
                self.metrics.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send(&mut self, msg: &KvMsg) {
        if let Err(e) = msg.send(&self.publisher, zmq::DONTWAIT) {
            tracing::warn!(error = %e, "cache: publish failed");
        }
        self.last_sent = Instant::now();
    }

    /// Subscriptions to the publisher: without CURVE only drained (libzmq applies them);
    /// with CURVE applied when the key may read the subtree (HUGZ is everyone's), otherwise
    /// refused and counted.
    fn take_subscriptions(&mut self) {
        loop {
            let mut message = zmq::Message::new();
            if self.publisher.recv(&mut message, zmq::DONTWAIT).is_err() {
                return;
            }
            if !self.guard.active() {
                continue;
            }
            let user = user_id(&mut message);
            match message.split_first() {
                Some((1, prefix)) => {
                    let subtree = String::from_utf8_lossy(prefix).into_owned();
                    let allowed = prefix == protocol::HUGZ
                        || self
                            .guard
                            .decide(&user, Op::CacheRead(&subtree), |p| {
                                p.allows_cache_subtree(&subtree)
                            })
                            .is_ok();
                    // In manual mode this applies to the pipe whose message was just read.
                    if allowed {
                        if let Err(e) = self.publisher.set_subscribe(prefix) {
                            tracing::warn!(error = %e, "cache: cannot apply a subscription");
                        }
                    }
                }
                Some((0, prefix)) => {
                    let _ = self.publisher.set_unsubscribe(prefix);
                }
                _ => {}
            }
        }
    }

    fn take_snapshot_requests(&mut self) {
        for _ in 0..64 {
            let Ok(mut frames) = depot_common::frames::recv_frames(&self.snapshot) else {
                break;
            };
            let user = match frames.last_mut() {
                Some(last) if self.guard.active() => user_id(last),
                _ => String::new(),
            };
            let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
            let Some((identity, request)) = frames.split_first() else {
                continue;
            };
            let request = match protocol::parse_icanhaz(request) {
                Ok(request) => request,
                Err(e) => {
                    self.reject("snapshot request", &e);
                    continue;
                }
            };
            let subtree = String::from_utf8_lossy(&request.subtree).into_owned();
            let op = Op::CacheRead(&subtree);
            if let Err(reason) = self
                .guard
                .decide(&user, op, |p| p.allows_cache_subtree(&subtree))
            {
                // CHP has no error reply: an empty snapshot whose KTHXBAI says why.
                let mut end = protocol::kthxbai(self.state.seq(), &request.subtree);
                end.properties.push((protocol::DENIED.into(), reason));
                let [key, seq, uuid, properties, body] = end.encode();
                let message: [&[u8]; 6] = [identity, &key, &seq, &uuid, &properties, &body];
                let _ = self.snapshot.send_multipart(message, zmq::DONTWAIT);
                continue;
            }
            // A snapshot request is a client's vote for this server.
            if let Some(ha) = self.ha.as_mut() {
                let (serve, transition) = ha.vote();
                self.transition(transition);
                if !serve {
                    self.metrics.votes_refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            self.snapshots.push_back(SnapshotJob {
                identity: identity.clone(),
                subtree: request.subtree,
                packed: request.packed,
                parked: None,
                seq: self.state.seq(),
                after: None,
            });
        }
    }

    /// Sends snapshot messages until the budget is spent or a client's pipe is full (then the
    /// job waits for the next turn: a ROUTER would otherwise drop them silently).
    fn serve_snapshots(&mut self) {
        let mut budget = SNAPSHOT_BUDGET;
        while let Some(mut job) = self.snapshots.pop_front() {
            if job.after.is_none() && job.seq > self.published_seq {
                // Not everything it would show is durable and published yet.
                self.snapshots.push_front(job);
                return;
            }
            let progress = if job.packed {
                self.send_packed(&mut job, &mut budget)
            } else {
                self.send_entries(&mut job, &mut budget)
            };
            match progress {
                JobProgress::Gone => continue,
                JobProgress::Blocked => {
                    self.snapshots.push_front(job);
                    return;
                }
                JobProgress::Entries => {}
            }
            let [key, seq, uuid, properties, body] =
                protocol::kthxbai(job.seq, &job.subtree).encode();
            let message: [&[u8]; 6] = [&job.identity, &key, &seq, &uuid, &properties, &body];
            match self.snapshot.send_multipart(message, zmq::DONTWAIT) {
                Ok(()) => {
                    self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
                }
                Err(zmq::Error::EAGAIN) => {
                    self.snapshots.push_front(job);
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// One KVSYNC per key, as CHP has it.
    fn send_entries(&mut self, job: &mut SnapshotJob, budget: &mut usize) -> JobProgress {
        for entry in self
            .state
            .snapshot_after(&job.subtree, job.after.as_deref())
        {
            if *budget == 0 {
                return JobProgress::Blocked;
            }
            let [key, seq, uuid, properties, body] = entry.msg.encode();
            let message: [&[u8]; 6] = [&job.identity, &key, &seq, &uuid, &properties, &body];
            match self.snapshot.send_multipart(message, zmq::DONTWAIT) {
                Ok(()) => {
                    *budget -= 1;
                    job.after = Some(entry.msg.key.clone());
                }
                Err(zmq::Error::EAGAIN) => return JobProgress::Blocked,
                Err(_) => return JobProgress::Gone,
            }
        }
        JobProgress::Entries
    }

    /// Batches of packed KVSYNCs: far fewer messages for a big snapshot.
    fn send_packed(&mut self, job: &mut SnapshotJob, budget: &mut usize) -> JobProgress {
        loop {
            if *budget == 0 {
                return JobProgress::Blocked;
            }
            let (batch, last, count) = match job.parked.take() {
                Some(parked) => parked,
                None => {
                    let mut batch = Vec::with_capacity(PACKED_BATCH + 1024);
                    let mut last = None;
                    let mut count = 0;
                    for entry in self
                        .state
                        .snapshot_after(&job.subtree, job.after.as_deref())
                    {
                        protocol::pack_entry(&mut batch, &entry.msg);
                        last = Some(&entry.msg.key);
                        count += 1;
                        if batch.len() >= PACKED_BATCH {
                            break;
                        }
                    }
                    match last {
                        Some(last) => (batch, last.clone(), count),
                        None => return JobProgress::Entries,
                    }
                }
            };
            let message: [&[u8]; 3] = [&job.identity, protocol::KVSYNCS, &batch];
            match self.snapshot.send_multipart(message, zmq::DONTWAIT) {
                Ok(()) => {
                    *budget = budget.saturating_sub(count);
                    job.after = Some(last);
                }
                Err(zmq::Error::EAGAIN) => {
                    job.parked = Some((batch, last, count));
                    return JobProgress::Blocked;
                }
                Err(_) => return JobProgress::Gone,
            }
        }
    }
}
