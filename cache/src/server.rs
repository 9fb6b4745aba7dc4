//! The CHP server: one thread owning the snapshot ROUTER, the publisher PUB and the collector
//! SUB. Updates are applied in memory, written to the store, and published only once durable,
//! so every update a peer has seen survives a crash with its sequence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use depot_common::metrics::{Kind, MetricsText};
use depot_common::ratelimit::RateLimited;
use depot_store::{Kv, Store, Ticket};

use crate::config::CacheConfig;
use crate::protocol::{self, KvMsg, KTHXBAI};
use crate::state::CacheState;

/// Prefix of every stored entry.
const ENTRY_PREFIX: u8 = 1;
/// Linger of the cache's sockets.
const LINGER_MS: i32 = 200;
/// Snapshot messages sent per loop turn, so snapshots share the thread with updates.
const SNAPSHOT_BUDGET: usize = 10_000;
/// How often expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);
/// Update uuids remembered to ignore resends (a client repeats a KVSET until it sees it
/// published, since a PUB drops while its connection forms).
const RECENT_UUIDS: usize = 65_536;

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
}

/// The running cache.
pub struct Cache {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
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
) -> Result<zmq::Socket, CacheError> {
    let error = |source| CacheError::Endpoint {
        role,
        endpoint: endpoint.to_string(),
        source,
    };
    let socket = ctx.socket(kind).map_err(error)?;
    socket.set_linger(LINGER_MS).map_err(error)?;
    if kind == zmq::PUB {
        socket.set_sndhwm(100_000).map_err(error)?;
    }
    socket.bind(endpoint).map_err(error)?;
    Ok(socket)
}

fn bound(socket: &zmq::Socket) -> String {
    socket
        .get_last_endpoint()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

impl Cache {
    /// Loads the stored state, binds the three endpoints and starts the server thread.
    pub fn start(
        ctx: &zmq::Context,
        store: Arc<Store>,
        config: &CacheConfig,
    ) -> Result<Cache, CacheError> {
        let kv = store
            .kv("cache")
            .map_err(|e| CacheError::Load(e.to_string()))?;
        let state = load(&kv)?;
        let snapshot = bind(ctx, zmq::ROUTER, "snapshot", &config.snapshot)?;
        snapshot
            .set_router_mandatory(true)
            .map_err(|e| CacheError::Setup(e.to_string()))?;
        let publisher = bind(ctx, zmq::PUB, "publisher", &config.publisher)?;
        let collector = bind(ctx, zmq::SUB, "collector", &config.collector)?;
        collector
            .set_subscribe(b"")
            .map_err(|e| CacheError::Setup(e.to_string()))?;
        let endpoints = CacheEndpoints {
            snapshot: bound(&snapshot),
            publisher: bound(&publisher),
            collector: bound(&collector),
        };
        let metrics = Arc::new(CacheMetrics::default());
        metrics.keys.store(state.len() as u64, Ordering::Relaxed);
        metrics.seq.store(state.seq(), Ordering::Relaxed);
        tracing::info!(keys = state.len(), seq = state.seq(), snapshot = %endpoints.snapshot,
            publisher = %endpoints.publisher, collector = %endpoints.collector, "cache serving");
        let stop = Arc::new(AtomicBool::new(false));
        let server = Server {
            snapshot,
            publisher,
            collector,
            store,
            kv,
            state,
            pending: VecDeque::new(),
            snapshots: VecDeque::new(),
            metrics: metrics.clone(),
            max_value: config.max_value_size,
            hugz_interval: config.hugz_interval,
            last_sent: Instant::now(),
            last_expiry: Instant::now(),
            bad_input: RateLimited::default(),
            recent: VecDeque::new(),
            recent_set: Default::default(),
        };
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("cache".into())
                .spawn(move || server.run(stop))
                .map_err(|e| CacheError::Setup(format!("cannot start the cache thread: {e}")))?
        };
        Ok(Cache {
            stop,
            thread,
            metrics,
            endpoints,
        })
    }

    /// Stops the server after publishing what is durable.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        if self.thread.join().is_err() {
            tracing::error!("cache: the server thread panicked");
        }
    }
}

fn now_ms() -> u64 {
    depot_store::now_ns() / 1_000_000
}

/// Rebuilds the state from the key-value tree: entries and tombstones, the sequence being
/// the highest stored.
fn load(kv: &Kv) -> Result<CacheState, CacheError> {
    let mut state = CacheState::new(0);
    for entry in kv.entries() {
        let (key, value) = entry.map_err(|e| CacheError::Load(e.to_string()))?;
        let msg = KvMsg::from_bytes(&value).map_err(|e| {
            CacheError::Load(format!(
                "entry {:?} is damaged: {e}",
                String::from_utf8_lossy(&key)
            ))
        })?;
        // Expired keys are loaded too: the first sweep deletes and publishes them.
        state.apply_published(msg, 0);
    }
    Ok(state)
}

/// A snapshot being sent, possibly in several turns.
struct SnapshotJob {
    identity: Vec<u8>,
    subtree: Vec<u8>,
    /// The state's sequence when asked: the KTHXBAI carries it.
    seq: u64,
    /// Last key sent.
    after: Option<Vec<u8>>,
}

struct Server {
    snapshot: zmq::Socket,
    publisher: zmq::Socket,
    collector: zmq::Socket,
    store: Arc<Store>,
    kv: Kv,
    state: CacheState,
    /// Applied updates waiting for their commit before they are published.
    pending: VecDeque<(Ticket, KvMsg)>,
    snapshots: VecDeque<SnapshotJob>,
    metrics: Arc<CacheMetrics>,
    max_value: usize,
    hugz_interval: Duration,
    last_sent: Instant,
    last_expiry: Instant,
    bad_input: RateLimited,
    /// Uuids of recent updates, oldest first, and the same as a set.
    recent: VecDeque<Vec<u8>>,
    recent_set: std::collections::HashSet<Vec<u8>>,
}

impl Server {
    /// Remembers `uuid`; false if it was seen already.
    fn first_sight(&mut self, uuid: &[u8]) -> bool {
        if uuid.is_empty() {
            return true;
        }
        if !self.recent_set.insert(uuid.to_vec()) {
            return false;
        }
        self.recent.push_back(uuid.to_vec());
        if self.recent.len() > RECENT_UUIDS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        true
    }

    fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            let timeout = if !self.pending.is_empty() || !self.snapshots.is_empty() {
                1
            } else {
                50
            };
            let mut items = [
                self.snapshot.as_poll_item(zmq::POLLIN),
                self.collector.as_poll_item(zmq::POLLIN),
            ];
            if let Err(e) = zmq::poll(&mut items, timeout) {
                tracing::warn!(error = %e, "cache: poll failed");
            }
            self.take_updates();
            self.take_snapshot_requests();
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
        if let Some((ticket, _)) = self.pending.back() {
            let _ = self
                .store
                .wait_durable_timeout(*ticket, Duration::from_secs(5));
        }
        self.publish_durable();
    }

    fn reject(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_input.allow() {
            tracing::warn!(error = %e, suppressed, "cache: {what} refused");
        }
    }

    fn take_updates(&mut self) {
        for _ in 0..1_024 {
            let Ok(frames) = self.collector.recv_multipart(zmq::DONTWAIT) else {
                break;
            };
            match KvMsg::decode(&frames, self.max_value) {
                Ok(msg) if msg.key == protocol::HUGZ || msg.key == KTHXBAI => {
                    self.reject("update", &"reserved key");
                }
                Ok(msg) if !self.first_sight(&msg.uuid) => {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Ok(msg) => {
                    let published = self.state.apply_set(msg, now_ms());
                    self.persist(published);
                }
                Err(e) => self.reject("update", &e),
            }
        }
    }

    fn expire(&mut self) {
        for delete in self.state.expire(now_ms()) {
            self.metrics.expired.fetch_add(1, Ordering::Relaxed);
            self.persist(delete);
        }
    }

    /// Writes an applied update and queues it for publishing once durable.
    fn persist(&mut self, msg: KvMsg) {
        let mut key = vec![ENTRY_PREFIX];
        key.extend_from_slice(&msg.key);
        // A delete is kept as a tombstone (empty body) so that the highest sequence, deletes
        // included, is found again at start with one write per update.
        let written = self.kv.put(&key, &msg.to_bytes());
        match written {
            Ok(ticket) => self.pending.push_back((ticket, msg)),
            Err(e) => {
                // Not stored, so never published: peers cannot see what a restart would lose.
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cache: update not stored");
            }
        }
        self.metrics
            .keys
            .store(self.state.len() as u64, Ordering::Relaxed);
        self.metrics.seq.store(self.state.seq(), Ordering::Relaxed);
    }

    fn publish_durable(&mut self) {
        let durable = self.store.watermark().durable;
        while let Some((ticket, _)) = self.pending.front() {
            if ticket.get() > durable {
                break;
            }
            if let Some((_, msg)) = self.pending.pop_front() {
                self.send(&msg);
                self.metrics.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send(&mut self, msg: &KvMsg) {
        if let Err(e) = self.publisher.send_multipart(msg.encode(), zmq::DONTWAIT) {
            tracing::warn!(error = %e, "cache: publish failed");
        }
        self.last_sent = Instant::now();
    }

    fn take_snapshot_requests(&mut self) {
        for _ in 0..64 {
            let Ok(frames) = self.snapshot.recv_multipart(zmq::DONTWAIT) else {
                break;
            };
            let Some((identity, request)) = frames.split_first() else {
                continue;
            };
            match protocol::parse_icanhaz(request) {
                Ok(subtree) => self.snapshots.push_back(SnapshotJob {
                    identity: identity.clone(),
                    subtree,
                    seq: self.state.seq(),
                    after: None,
                }),
                Err(e) => self.reject("snapshot request", &e),
            }
        }
    }

    /// Sends snapshot messages until the budget is spent or a client's pipe is full (then the
    /// job waits for the next turn: a ROUTER would otherwise drop them silently).
    fn serve_snapshots(&mut self) {
        let mut budget = SNAPSHOT_BUDGET;
        while let Some(mut job) = self.snapshots.pop_front() {
            let mut blocked = false;
            let mut gone = false;
            for entry in self
                .state
                .snapshot_after(&job.subtree, job.after.as_deref())
            {
                if budget == 0 {
                    blocked = true;
                    break;
                }
                let [key, seq, uuid, properties, body] = entry.msg.encode();
                let message: [&[u8]; 6] = [&job.identity, &key, &seq, &uuid, &properties, &body];
                match self.snapshot.send_multipart(message, zmq::DONTWAIT) {
                    Ok(()) => {
                        budget -= 1;
                        job.after = Some(entry.msg.key.clone());
                    }
                    Err(zmq::Error::EAGAIN) => {
                        blocked = true;
                        break;
                    }
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            if gone {
                continue;
            }
            if blocked {
                self.snapshots.push_front(job);
                return;
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
}
