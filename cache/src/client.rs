//! Rust client of the cache (a Clone-pattern peer): join with a snapshot and follow updates
//! with no update lost in between, read locally, set and delete through the collector.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::protocol::{self, ChpError, KvMsg, KTHXBAI};
use crate::state::TTL;

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

/// A joined peer: a local copy of a subtree kept current from the publisher.
pub struct CacheClient {
    updates: zmq::Socket,
    collector: zmq::Socket,
    subtree: Vec<u8>,
    /// The local copy.
    entries: BTreeMap<Vec<u8>, KvMsg>,
    /// Sequence of the last applied change; older updates are ignored.
    seq: u64,
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

impl CacheClient {
    /// Joins `subtree` (empty for everything) with no update lost: subscribes, waits until the
    /// subscription is live (the first update or HUGZ arrives, at most one HUGZ interval on an
    /// idle cache), then takes the snapshot; updates newer than the snapshot wait in the socket.
    pub fn join(
        ctx: &zmq::Context,
        server: &ServerEndpoints,
        subtree: &[u8],
        timeout: Duration,
    ) -> Result<Self, CacheClientError> {
        Self::connect(ctx, server, subtree, timeout, true)
    }

    /// Takes a snapshot of `subtree` without waiting for the update stream to be live: for a
    /// one-off read (a later [`CacheClient::poll`] may miss updates published meanwhile).
    pub fn fetch(
        ctx: &zmq::Context,
        server: &ServerEndpoints,
        subtree: &[u8],
        timeout: Duration,
    ) -> Result<Self, CacheClientError> {
        Self::connect(ctx, server, subtree, timeout, false)
    }

    fn connect(
        ctx: &zmq::Context,
        server: &ServerEndpoints,
        subtree: &[u8],
        timeout: Duration,
        wait_live: bool,
    ) -> Result<Self, CacheClientError> {
        let updates = ctx.socket(zmq::SUB)?;
        updates.set_linger(0)?;
        updates.set_rcvhwm(1_000_000)?;
        updates.connect(&server.publisher)?;
        updates.set_subscribe(subtree)?;
        updates.set_subscribe(protocol::HUGZ)?;
        let collector = ctx.socket(zmq::PUB)?;
        collector.set_linger(1_000)?;
        collector.connect(&server.collector)?;
        if wait_live {
            // Whatever arrives first is older than the snapshot asked for after it.
            if updates.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
                return Err(CacheClientError::Timeout(timeout));
            }
            updates.recv_multipart(0)?;
        }
        let mut client = CacheClient {
            updates,
            collector,
            subtree: subtree.to_vec(),
            entries: BTreeMap::new(),
            seq: 0,
        };
        client.snapshot(ctx, &server.snapshot, timeout)?;
        Ok(client)
    }

    fn snapshot(
        &mut self,
        ctx: &zmq::Context,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<(), CacheClientError> {
        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_linger(0)?;
        dealer.set_rcvhwm(1_000_000)?;
        dealer.connect(endpoint)?;
        dealer.send_multipart([protocol::ICANHAZ, &self.subtree], 0)?;
        loop {
            if dealer.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
                return Err(CacheClientError::Timeout(timeout));
            }
            let msg = KvMsg::decode(&dealer.recv_multipart(0)?, usize::MAX)?;
            if msg.key == KTHXBAI {
                self.seq = msg.seq;
                return Ok(());
            }
            self.entries.insert(msg.key.clone(), msg);
        }
    }

    /// Applies the updates that arrived, waiting at most `timeout` for the first; returns the
    /// changes applied (each a KVPUB; an empty body is a delete).
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<KvMsg>, CacheClientError> {
        let mut applied = Vec::new();
        let mut wait = timeout;
        loop {
            if self.updates.poll(zmq::POLLIN, wait.as_millis() as i64)? == 0 {
                return Ok(applied);
            }
            wait = Duration::ZERO;
            let msg = KvMsg::decode(&self.updates.recv_multipart(0)?, usize::MAX)?;
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
    }

    /// The local value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(|m| m.body.as_slice())
    }

    /// The local copy, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &KvMsg> {
        self.entries.values()
    }

    /// Sequence of the last applied change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Sets `key` (an empty value deletes it), with a time to live if given, and waits until
    /// the server publishes it; returns the published update. The send is repeated (same uuid)
    /// while the collector connection is still forming, as PUB drops until it is up.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<KvMsg, CacheClientError> {
        let mut msg = KvMsg::new(key, value);
        msg.uuid = new_uuid();
        if let Some(ttl) = ttl {
            msg.set_property(TTL, format!("{}", ttl.as_secs_f64()));
        }
        let deadline = Instant::now() + timeout;
        let mut resend = Instant::now();
        loop {
            if Instant::now() >= resend {
                self.collector.send_multipart(msg.encode(), 0)?;
                resend = Instant::now() + Duration::from_millis(250);
            }
            for update in self.poll(Duration::from_millis(20))? {
                if update.uuid == msg.uuid {
                    return Ok(update);
                }
            }
            if Instant::now() >= deadline {
                return Err(CacheClientError::Timeout(timeout));
            }
        }
    }

    /// Deletes `key` and waits until the delete is published.
    pub fn delete(&mut self, key: &[u8], timeout: Duration) -> Result<KvMsg, CacheClientError> {
        self.set(key, &[], None, timeout)
    }
}
