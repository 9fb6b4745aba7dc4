//! Depot's log service: records come in over ZeroMQ (PULL, SUB, acked ROUTER) and syslog, are
//! stored in the store's log streams, published live, and replayed on request.
//!
//! Layout:
//! - `protocol`: ingest, live and replay frames (pure).
//! - `syslog`: RFC 5424 / RFC 3164 parsing and TCP framing (pure).
//! - `ingest`: the ingest thread (PULL, SUB, acked ROUTER) and durable acks.
//! - `live`: the live XPUB thread and the feed appenders use to reach it.
//! - `replay`: replay over a plain SUB on its own XPUB.
//! - `replay_api`: the credit-based replay ROUTER for large catch-ups, with filters.
//! - `syslog_server`: UDP/TCP listeners on tokio and the thread that stores their records.
//! - `tail`: following files (`notify`), with positions stored atomically with the lines.
//! - `service`: binding, starting and stopping it all.
//! - `client`: the Rust client library (acked sending, replay, subscriptions).
//! - `layer`: a `tracing` layer that ships an application's events to Depot.
//! - `config`, `metrics`: settings and counters.
//!
//! One record's path: `Ingest::handle` → `Log::append` (store) → `LiveFeed::send` →
//! `LivePublisher::publish`; later `ReplayServer::advance` reads it back with `Log::read`.

pub mod client;
pub mod config;
pub mod ingest;
pub mod layer;
pub mod live;
pub mod metrics;
pub mod protocol;
pub mod replay;
pub mod replay_api;
mod service;
pub mod syslog;
pub mod syslog_server;
pub mod tail;
pub mod unread_acks;

pub use config::LogdConfig;
pub use metrics::LogdMetrics;
pub use service::{Logd, LogdEndpoints, LogdError, LIVE_INPROC, LIVE_PACKED_INPROC};
