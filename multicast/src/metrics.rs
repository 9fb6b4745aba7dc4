//! Per-bus counters and the status each bus reports to `/metrics`, `/status` and `depot bus ls`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use depot_common::metrics::{Kind, MetricsText};
use serde::{Deserialize, Serialize};

use crate::config::Direction;

/// Counters of one bus. Out buses count what they forward to the group; in buses what they
/// receive from it.
#[derive(Debug, Default)]
pub struct BusMetrics {
    /// Messages sent to the group.
    pub sent: AtomicU64,
    /// Bytes (all frames) sent to the group.
    pub sent_bytes: AtomicU64,
    /// Messages received: from the services' publishers (out) or from the group (in).
    pub received: AtomicU64,
    /// Bytes received.
    pub received_bytes: AtomicU64,
    /// Jumps in a Depot sequence (a log stream's, or the cache's when all of it is carried).
    pub gaps: AtomicU64,
    /// Messages missing in those jumps.
    pub missing: AtomicU64,
    /// Unrecoverable-loss events: a burst of gaps and fragments with no whole message between.
    pub data_loss: AtomicU64,
    /// Partial messages (the tail of a multipart whose head was lost), dropped.
    pub fragments: AtomicU64,
    /// Records and updates handed to logd or the cache collector (in buses).
    pub forwarded: AtomicU64,
    /// Messages an in bus cannot use (not log records, ingest frames or cache updates).
    pub ignored: AtomicU64,
    /// Sends that failed (the socket closing), messages lost with them.
    pub send_errors: AtomicU64,
    /// Messages on a sealed bus that did not open (other key, altered, forged, plain), dropped.
    pub rejected: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// How a bus is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum BusState {
    /// Sending or receiving.
    Running,
    /// Could not be opened; the rest of the appliance runs on.
    Failed(String),
}

/// One bus as `/status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusStatus {
    /// Its name.
    pub name: String,
    /// Its endpoint.
    pub endpoint: String,
    /// Out or in.
    pub direction: Direction,
    /// What it carries or ingests.
    pub carries: String,
    /// Running or failed (with why).
    #[serde(flatten)]
    pub state: BusState,
    /// See [`BusMetrics`].
    pub sent: u64,
    /// See [`BusMetrics`].
    pub sent_bytes: u64,
    /// See [`BusMetrics`].
    pub received: u64,
    /// See [`BusMetrics`].
    pub gaps: u64,
    /// See [`BusMetrics`].
    pub missing: u64,
    /// See [`BusMetrics`].
    pub data_loss: u64,
    /// See [`BusMetrics`].
    pub fragments: u64,
    /// See [`BusMetrics`].
    pub forwarded: u64,
    /// See [`BusMetrics`].
    pub ignored: u64,
    /// See [`BusMetrics`].
    #[serde(default)]
    pub rejected: u64,
}

/// A bus as the appliance knows it: its description, state and counters.
#[derive(Debug)]
pub struct BusEntry {
    /// Name.
    pub name: String,
    /// Endpoint.
    pub endpoint: String,
    /// Out or in.
    pub direction: Direction,
    /// What it carries.
    pub carries: String,
    /// Running or failed.
    pub state: Mutex<BusState>,
    /// Counters.
    pub metrics: BusMetrics,
}

impl BusEntry {
    /// The status snapshot.
    pub fn status(&self) -> BusStatus {
        let m = &self.metrics;
        BusStatus {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            direction: self.direction,
            carries: self.carries.clone(),
            state: self
                .state
                .lock()
                .map(|s| s.clone())
                .unwrap_or(BusState::Running),
            sent: get(&m.sent),
            sent_bytes: get(&m.sent_bytes),
            received: get(&m.received),
            gaps: get(&m.gaps),
            missing: get(&m.missing),
            data_loss: get(&m.data_loss),
            fragments: get(&m.fragments),
            forwarded: get(&m.forwarded),
            ignored: get(&m.ignored),
            rejected: get(&m.rejected),
        }
    }
}

/// Writes every bus's metrics, labelled `bus="NAME"`.
pub fn render(buses: &[&BusEntry], m: &mut MetricsText) {
    if buses.is_empty() {
        return;
    }
    let statuses: Vec<BusStatus> = buses.iter().map(|b| b.status()).collect();
    let up = |s: &BusStatus| u64::from(s.state == BusState::Running);
    type Field = fn(&BusStatus) -> u64;
    let families: [(&str, Kind, &str, Field); 10] = [
        (
            "depot_multicast_bus_up",
            Kind::Gauge,
            "1 while the bus runs, 0 when it could not be opened",
            up,
        ),
        (
            "depot_multicast_sent_total",
            Kind::Counter,
            "Messages sent to the bus's group",
            |s| s.sent,
        ),
        (
            "depot_multicast_sent_bytes_total",
            Kind::Counter,
            "Bytes sent to the bus's group",
            |s| s.sent_bytes,
        ),
        (
            "depot_multicast_received_total",
            Kind::Counter,
            "Messages received (from the services for an out bus, from the group for an in bus)",
            |s| s.received,
        ),
        (
            "depot_multicast_gaps_total",
            Kind::Counter,
            "Jumps in Depot sequences seen on the bus",
            |s| s.gaps,
        ),
        (
            "depot_multicast_missing_total",
            Kind::Counter,
            "Messages missing in those jumps",
            |s| s.missing,
        ),
        (
            "depot_multicast_data_loss_total",
            Kind::Counter,
            "Unrecoverable data-loss events (PGM could not repair)",
            |s| s.data_loss,
        ),
        (
            "depot_multicast_fragments_total",
            Kind::Counter,
            "Partial messages dropped after a PGM rejoin",
            |s| s.fragments,
        ),
        (
            "depot_multicast_forwarded_total",
            Kind::Counter,
            "Records and updates an in bus handed to logd or the cache",
            |s| s.forwarded,
        ),
        (
            "depot_multicast_ignored_total",
            Kind::Counter,
            "Messages an in bus could not use",
            |s| s.ignored,
        ),
    ];
    for (name, kind, help, value) in families {
        m.family(name, kind, help);
        for s in &statuses {
            m.sample(name, &[("bus", &s.name)], value(s) as f64);
        }
    }
    let name = "depot_multicast_rejected_total";
    m.family(
        name,
        Kind::Counter,
        "Messages dropped by an in bus, by reason (seal: did not open with the bus key)",
    );
    for s in &statuses {
        m.sample(
            name,
            &[("bus", &s.name), ("reason", "seal")],
            s.rejected as f64,
        );
    }
}
