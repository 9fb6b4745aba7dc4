//! Depot's multicast buses: PGM/EPGM groups that carry the appliance's streams (log records,
//! cache updates, clock ticks) with frames unchanged, or ingest a group's messages into logd.
//! With PGM the network switch is the forwarder: one send reaches every subscriber on the LAN.
//!
//! Layout:
//! - `endpoint`: `epgm://IP;GROUP:PORT` / `pgm://...`, parsed and checked (pure).
//! - `config`: `[multicast]` with `[[multicast.bus]]`, validated naming the bus (pure).
//! - `frames`: what a bus message is (live record, CHP update, fragment...) (pure).
//! - `seal`: sealed buses: XChaCha20-Poly1305 over each message, the key file (pure).
//! - `gaps`: loss accounting through Depot's sequence numbers (pure).
//! - `open`: the checks libzmq would assert on, and the PGM sockets with rate/recovery/hops.
//! - `bridge`: out buses (service publishers → group).
//! - `ingest`: in buses (group → logd PULL, cache collector).
//! - `metrics`: per-bus counters, state and status.
//! - `service`: starting and stopping the buses; a failed bus does not stop the rest.
//!
//! One record's path out: logd live XPUB → `Bridge::run` (SUB) → `send_all` → PGM XPUB → group;
//! and in: group → `BusIngest::handle` → `flush` → logd PULL → store.

pub mod bridge;
pub mod config;
pub mod endpoint;
pub mod frames;
pub mod gaps;
pub mod ingest;
pub mod metrics;
pub mod open;
pub mod seal;
mod service;

pub use config::{BusConfig, MulticastConfig};
pub use metrics::{BusState, BusStatus};
pub use service::{Multicast, ServiceEndpoints};
