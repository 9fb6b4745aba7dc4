//! Depot's state cache in the ZeroMQ Clone pattern (CHP, RFC 12).
//!
//! Layout:
//! - `protocol`: CHP messages (KVSYNC, KVPUB, KVSET, ICANHAZ?, KTHXBAI, HUGZ) and their
//!   properties, encoded and decoded without sockets.
//! - `state`: the ordered map, its sequence and TTL expiry (pure).
//! - `recent`: the window of recent update uuids that drops resends.
//! - `server`: the thread owning the three CHP sockets; persistence in the store.
//! - `config`: `[cache]` settings.
//! - `bstar`: the Binary Star state machine of a primary/backup pair (pure).
//! - `pending`: client updates a passive server holds for takeover (pure).
//! - `ha`: the pair link (state messages), driving `bstar`, the mirror and the pending list.
//! - `mirror`: how a passive server follows the active one (snapshot, then updates).
//! - `client`: a Clone-pattern peer in Rust (join, get, set, delete, watch, failover).

pub mod bstar;
pub mod client;
pub mod config;
pub mod ha;
pub mod mirror;
pub mod pending;
pub mod persist;
pub mod protocol;
pub mod recent;
pub mod server;
pub mod state;

pub use config::CacheConfig;
pub use server::{Cache, CacheEndpoints, CacheError, CacheMetrics};
