//! Rust client of the cache (a Clone-pattern peer): join with a snapshot and follow updates
//! with no update lost in between, read locally, set and delete through the collector, and
//! fail over between the servers of a Binary Star pair.
//!
//! Failover: the client subscribes to every server's publisher and sends each update to every
//! collector (a passive server holds them for takeover). When the server it follows has been
//! silent for [`FAILOVER_AFTER`] (an idle server sends HUGZ every second), it asks the next
//! server for a snapshot — that request is the vote that lets a passive server take over — and
//! resyncs from it. Sequences are per server: after a resync the client's sequence is the new
//! server's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::protocol::{self, ChpError, KvMsg, KTHXBAI};
use crate::state::TTL;

/// Silence of the followed server after which the client moves to the next one.
pub const FAILOVER_AFTER: Duration = Duration::from_secs(5);
/// How long one server gets to answer a snapshot request before the next is tried.
const SNAPSHOT_ATTEMPT: Duration = Duration::from_secs(2);
/// How long a fresh subscription may take to become live before a snapshot is asked for.
const LIVE_WAIT: Duration = Duration::from_millis(1_500);
/// Messages read from one server per poll turn, so a fast publisher cannot hold a poll.
const TURN_BUDGET: usize = 100_000;
/// How often an update is sent again until it is seen published.
const RESEND: Duration = Duration::from_millis(250);

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum CacheClientError {
    /// libzmq failed.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The server sent something that is not CHP.
    #[error("protocol: {0}")]
    Protocol(#[from] ChpError),
    /// No answer in time.
    #[error("no answer from the cache within {0:?}")]
    Timeout(Duration),
    /// No server was given.
    #[error("no cache server given")]
    NoServer,
    /// The server refused the request (the client's key may not read the subtree).
    #[error("refused: {0}")]
    Refused(String),
}

/// The three endpoints of one cache server.
#[derive(Debug, Clone)]
pub struct ServerEndpoints {
    /// Snapshot ROUTER.
    pub snapshot: String,
    /// Publisher PUB.
    pub publisher: String,
    /// Collector SUB.
    pub collector: String,
}

/// One server as the client sees it.
struct Server {
    endpoints: ServerEndpoints,
    /// Subscribed to the subtree and HUGZ.
    updates: zmq::Socket,
    /// When the subscription was made: a young one may not be live yet.
    subscribed: Instant,
}

/// A joined peer: a local copy of a subtree kept current from the active server.
pub struct CacheClient {
    ctx: zmq::Context,
    servers: Vec<Server>,
    /// Connected to every server's collector.
    collector: zmq::Socket,
    /// Index of the server followed.
    current: usize,
    subtree: Vec<u8>,
    /// The local copy.
    entries: BTreeMap<Vec<u8>, KvMsg>,
    /// Sequence of the last applied change, in the current server's numbering.
    seq: u64,
    /// When the current server was last heard (an update or HUGZ).
    last_heard: Instant,
    /// Silence after which the client fails over.
    failover_after: Duration,
    /// Snapshots taken after the first (failovers and resyncs).
    resyncs: u64,
    /// Changes found by a resync, reported by the next poll.
    resync_changes: Vec<KvMsg>,
}

fn new_uuid() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut uuid = (depot_store::now_ns() ^ (u64::from(std::process::id()) << 40))
        .to_be_bytes()
        .to_vec();
    uuid.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    uuid
}

/// A client's KVSET with a fresh uuid.
fn kvset(key: &[u8], value: &[u8], ttl: Option<Duration>) -> KvMsg {
    let mut msg = KvMsg::new(key, value);
    msg.uuid = new_uuid();
    if let Some(ttl) = ttl {
        msg.set_property(TTL, format!("{}", ttl.as_secs_f64()));
    }
    msg
}

/// A server's entries and the sequence they are current to.
type Snapshot = (BTreeMap<Vec<u8>, KvMsg>, u64);

/// Asks `endpoint` for the snapshot of `subtree`; returns its entries and sequence, or None
/// if it did not answer within `wait` (a server that is not active does not answer).
fn take_snapshot(
    ctx: &zmq::Context,
    endpoint: &str,
    subtree: &[u8],
    wait: Duration,
) -> Result<Option<Snapshot>, CacheClientError> {
    let dealer = ctx.socket(zmq::DEALER)?;
    depot_common::security::apply_process_client(&dealer)?;
    dealer.set_linger(0)?;
    dealer.set_rcvhwm(1_000_000)?;
    dealer.connect(endpoint)?;
    // Depot servers answer "packed" with batches; others ignore the frame and send KVSYNCs.
    dealer.send_multipart([protocol::ICANHAZ, subtree, protocol::PACKED], 0)?;
    // Collected in arrival (key) order and built into a map at the end: a bulk build of
    // sorted input is much cheaper than a million inserts.
    let mut entries = Vec::new();
    loop {
        if dealer.poll(zmq::POLLIN, wait.as_millis() as i64)? == 0 {
            return Ok(None);
        }
        let frames = dealer.recv_multipart(0)?;
        if let [kind, batch] = frames.as_slice() {
            if kind.as_slice() == protocol::KVSYNCS {
                entries.extend(
                    protocol::unpack_entries(batch)?
                        .into_iter()
                        .map(|msg| (msg.key.clone(), msg)),
                );
                continue;
            }
        }
        let msg = KvMsg::decode(&frames, usize::MAX)?;
        if msg.key == KTHXBAI {
            if let Some((_, reason)) = msg.properties.iter().find(|(n, _)| n == protocol::DENIED) {
                return Err(CacheClientError::Refused(reason.clone()));
            }
            return Ok(Some((entries.into_iter().collect(), msg.seq)));
        }
        entries.push((msg.key.clone(), msg));
    }
}

impl CacheClient {
    /// Joins the whole cache served by `servers` (one server, or a primary/backup pair).
    pub fn connect(
        ctx: &zmq::Context,
        servers: &[ServerEndpoints],
        timeout: Duration,
    ) -> Result<Self, CacheClientError> {
        Self::watch(ctx, servers, b"", timeout)
    }

    /// Joins `subtree` (a key prefix, empty for everything) with no update lost: subscribes,
    /// lets the subscription become live, then takes the snapshot; updates newer than the
    /// snapshot wait in the socket. [`CacheClient::poll`] then yields the stream of changes.
    pub fn watch(
        ctx: &zmq::Context,
        servers: &[ServerEndpoints],
        subtree: &[u8],
        timeout: Duration,
    ) -> Result<Self, CacheClientError> {
        let mut client = Self::subscribe(ctx, servers, subtree)?;
        client.sync(0, timeout)?;
        client.resync_changes.clear();
        client.resyncs = 0;
        Ok(client)
    }

    /// A client subscribed to every server's publisher and connected to every collector, with
    /// an empty copy.
    fn subscribe(
        ctx: &zmq::Context,
        servers: &[ServerEndpoints],
        subtree: &[u8],
    ) -> Result<Self, CacheClientError> {
        if servers.is_empty() {
            return Err(CacheClientError::NoServer);
        }
        let collector = ctx.socket(zmq::PUB)?;
        depot_common::security::apply_process_client(&collector)?;
        collector.set_linger(1_000)?;
        let mut subscribed = Vec::with_capacity(servers.len());
        for endpoints in servers {
            let updates = ctx.socket(zmq::SUB)?;
            depot_common::security::apply_process_client(&updates)?;
            updates.set_linger(0)?;
            updates.set_rcvhwm(1_000_000)?;
            updates.connect(&endpoints.publisher)?;
            updates.set_subscribe(subtree)?;
            updates.set_subscribe(protocol::HUGZ)?;
            collector.connect(&endpoints.collector)?;
            subscribed.push(Server {
                endpoints: endpoints.clone(),
                updates,
                subscribed: Instant::now(),
            });
        }
        Ok(CacheClient {
            ctx: ctx.clone(),
            servers: subscribed,
            collector,
            current: 0,
            subtree: subtree.to_vec(),
            entries: BTreeMap::new(),
            seq: 0,
            last_heard: Instant::now(),
            failover_after: FAILOVER_AFTER,
            resyncs: 0,
            resync_changes: Vec::new(),
        })
    }

    /// Joins `subtree` of one server.
    pub fn join(
        ctx: &zmq::Context,
        server: &ServerEndpoints,
        subtree: &[u8],
        timeout: Duration,
    ) -> Result<Self, CacheClientError> {
        Self::watch(ctx, std::slice::from_ref(server), subtree, timeout)
    }

    /// The entries of `subtree` from the first of `servers` that answers, without following
    /// updates: a one-off read.
    pub fn snapshot(
        ctx: &zmq::Context,
        servers: &[ServerEndpoints],
        subtree: &[u8],
        timeout: Duration,
    ) -> Result<Vec<KvMsg>, CacheClientError> {
        if servers.is_empty() {
            return Err(CacheClientError::NoServer);
        }
        let deadline = Instant::now() + timeout;
        for server in servers.iter().cycle() {
            let wait = SNAPSHOT_ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
            if let Some((entries, _)) = take_snapshot(ctx, &server.snapshot, subtree, wait)? {
                return Ok(entries.into_values().collect());
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(CacheClientError::Timeout(timeout))
    }

    /// Takes a snapshot of `subtree` from one server without waiting for the update stream
    /// to be live: a one-off read (a later [`CacheClient::poll`] may miss updates published
    /// meanwhile).
    pub fn fetch(
        ctx: &zmq::Context,
        server: &ServerEndpoints,
        subtree: &[u8],
        timeout: Duration,
    ) -> Result<Self, CacheClientError> {
        let mut client = Self::subscribe(ctx, std::slice::from_ref(server), subtree)?;
        match take_snapshot(ctx, &server.snapshot, subtree, timeout)? {
            Some((entries, seq)) => {
                client.entries = entries;
                client.seq = seq;
                Ok(client)
            }
            None => Err(CacheClientError::Timeout(timeout)),
        }
    }

    /// Changes how long the followed server may be silent before the client fails over.
    pub fn set_failover_after(&mut self, silence: Duration) {
        self.failover_after = silence;
    }

    /// Finds a server that answers a snapshot request, starting with server `first`, and makes
    /// its snapshot the local copy; changes against the old copy are kept for the next poll.
    fn sync(&mut self, first: usize, timeout: Duration) -> Result<(), CacheClientError> {
        let deadline = Instant::now() + timeout;
        let count = self.servers.len();
        for attempt in 0.. {
            let index = (first + attempt) % count;
            let server = &self.servers[index];
            let young = server.subscribed.elapsed() < LIVE_WAIT;
            if young {
                // Whatever arrives first is older than the snapshot asked for after it. A
                // server that is not active publishes nothing; the request is its vote anyway.
                let wait = LIVE_WAIT.saturating_sub(server.subscribed.elapsed());
                if server.updates.poll(zmq::POLLIN, wait.as_millis() as i64)? > 0 {
                    server.updates.recv_multipart(0)?;
                }
            }
            let wait = SNAPSHOT_ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
            let endpoint = server.endpoints.snapshot.clone();
            if let Some((entries, seq)) = take_snapshot(&self.ctx, &endpoint, &self.subtree, wait)?
            {
                self.install(index, entries, seq);
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(CacheClientError::Timeout(timeout))
    }

    fn install(&mut self, index: usize, entries: BTreeMap<Vec<u8>, KvMsg>, seq: u64) {
        for key in self.entries.keys() {
            if !entries.contains_key(key) {
                self.resync_changes
                    .push(KvMsg::new(key.clone(), Vec::new()));
            }
        }
        for (key, msg) in &entries {
            if self.entries.get(key) != Some(msg) {
                self.resync_changes.push(msg.clone());
            }
        }
        self.entries = entries;
        self.seq = seq;
        self.current = index;
        self.last_heard = Instant::now();
        self.resyncs += 1;
    }

    /// Moves to the next server and resyncs from it.
    fn fail_over(&mut self) -> Result<(), CacheClientError> {
        let next = (self.current + 1) % self.servers.len();
        tracing::warn!(
            from = %self.servers[self.current].endpoints.snapshot,
            to = %self.servers[next].endpoints.snapshot,
            "cache client: server silent, failing over"
        );
        self.sync(next, SNAPSHOT_ATTEMPT * self.servers.len() as u32 * 2)
    }

    /// Applies the updates that arrived, waiting at most `timeout` for the first; returns the
    /// changes applied (each a KVPUB; an empty body is a delete). Fails over when the followed
    /// server has been silent too long.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<KvMsg>, CacheClientError> {
        let mut applied = std::mem::take(&mut self.resync_changes);
        let deadline = Instant::now() + timeout;
        loop {
            let wait = if applied.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let wait = wait.min(
                self.failover_after
                    .saturating_sub(self.last_heard.elapsed()),
            );
            let mut items: Vec<zmq::PollItem<'_>> = self
                .servers
                .iter()
                .map(|s| s.updates.as_poll_item(zmq::POLLIN))
                .collect();
            zmq::poll(&mut items, wait.as_millis() as i64)?;
            let readable: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
            drop(items);
            for (index, readable) in readable.into_iter().enumerate() {
                if readable {
                    self.take_updates(index, &mut applied)?;
                }
            }
            // Silence counts only once what already arrived has been read.
            if self.last_heard.elapsed() >= self.failover_after {
                if let Err(e) = self.fail_over() {
                    // Nobody answered; try again on the next poll.
                    tracing::warn!(error = %e, "cache client: no server answered");
                    self.last_heard = Instant::now();
                }
                applied.append(&mut self.resync_changes);
            }
            if Instant::now() >= deadline || !applied.is_empty() {
                return Ok(applied);
            }
        }
    }

    /// Applies what server `index` sent, if it is the one followed.
    fn take_updates(
        &mut self,
        index: usize,
        applied: &mut Vec<KvMsg>,
    ) -> Result<(), CacheClientError> {
        for _ in 0..TURN_BUDGET {
            let Ok(frames) = self.servers[index].updates.recv_multipart(zmq::DONTWAIT) else {
                break;
            };
            if index != self.current {
                // Only the followed server's updates count.
                continue;
            }
            self.last_heard = Instant::now();
            let msg = KvMsg::decode(&frames, usize::MAX)?;
            if msg.key == protocol::HUGZ || msg.seq <= self.seq {
                continue;
            }
            self.seq = msg.seq;
            if msg.is_delete() {
                self.entries.remove(&msg.key);
            } else {
                self.entries.insert(msg.key.clone(), msg.clone());
            }
            applied.push(msg);
        }
        Ok(())
    }

    /// The local value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(|m| m.body.as_slice())
    }

    /// The local copy, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &KvMsg> {
        self.entries.values()
    }

    /// Sequence of the last applied change, in the current server's numbering.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Index (in the list given at connect) of the server followed.
    pub fn server(&self) -> usize {
        self.current
    }

    /// Snapshots taken since joining (failovers and resyncs).
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Sets `key` (an empty value deletes it), with a time to live if given, and waits until
    /// the followed server publishes it; returns the published update. The send goes to every
    /// server and is repeated (same uuid) while connections form, as PUB drops until then.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<KvMsg, CacheClientError> {
        let msg = kvset(key, value, ttl);
        let deadline = Instant::now() + timeout;
        let mut resend = Instant::now();
        loop {
            if Instant::now() >= resend {
                msg.send(&self.collector, 0)?;
                resend = Instant::now() + RESEND;
            }
            let resyncs = self.resyncs;
            for update in self.poll(Duration::from_millis(20))? {
                if update.uuid == msg.uuid {
                    return Ok(update);
                }
            }
            if self.resyncs != resyncs {
                // After a failover the new server's snapshot may already hold the update.
                match self.entries.get(key) {
                    Some(entry) if entry.uuid == msg.uuid => return Ok(entry.clone()),
                    None if value.is_empty() => return Ok(msg),
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(CacheClientError::Timeout(timeout));
            }
        }
    }

    /// Sends an update to every server without waiting for it to be published (as a Guide
    /// Clone client does); returns its uuid.
    pub fn send(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Vec<u8>, CacheClientError> {
        let msg = kvset(key, value, ttl);
        msg.send(&self.collector, 0)?;
        Ok(msg.uuid)
    }

    /// Deletes `key` and waits until the delete is published.
    pub fn delete(&mut self, key: &[u8], timeout: Duration) -> Result<KvMsg, CacheClientError> {
        self.set(key, &[], None, timeout)
    }
}
