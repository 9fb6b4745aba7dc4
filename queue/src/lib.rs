//! Depot's persistent queue: 0MQ 2.x's HWM and SWAP done above 0MQ, with publish confirms,
//! acks, redelivery, durable consumer identities, TTL and dead-lettering.
//!
//! Layout:
//! - `protocol`: request and reply frames (pure).
//! - `acks`: a subscription's acknowledged set and its stored form (pure).
//! - `horizon`: how far a subscription may deliver for the first time (pure).
//! - `queue`: one queue: journal, memory window, subscriptions, consumers, messages in flight.
//! - `server`: the thread owning the ROUTER, PULL and simple-mode PUSH sockets: its loop,
//!   confirms and periodic work; `server::requests` handles what arrives.
//! - `delivery`: sending messages to consumers (parking on a full pipe).
//! - `service`: loading, binding, starting and stopping.
//! - `client`: the Rust client library (producers, consumers, stats).
//! - `config`, `metrics`: `[queue]` settings and counters.
//!
//! A message's path: `Server::publish` → `Queue::append` (store journal `queue/<name>`) →
//! confirm once durable (`Server::send_due_confirms`) → `Queue::take` (memory window or read
//! back from the journal) → `MSG` to a consumer → `Queue::ack` → acks stored in the `queue`
//! key-value tree → `Queue::trim` removes journal blocks every subscription acknowledged.

pub mod acks;
pub mod client;
pub mod config;
mod delivery;
pub mod horizon;
pub mod metrics;
pub mod protocol;
pub mod queue;
mod server;
mod service;

pub use config::{FullPolicy, QueueConfig, QueueSettings};
pub use metrics::QueueMetrics;
pub use queue::{GroupStats, QueueStats};
pub use service::{QueueEndpoints, QueueError, QueueService};
