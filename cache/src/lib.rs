//! Depot's state cache in the ZeroMQ Clone pattern (CHP, RFC 12).
//!
//! Layout:
//! - `protocol`: CHP messages (KVSYNC, KVPUB, KVSET, ICANHAZ?, KTHXBAI, HUGZ) and their
//!   properties, encoded and decoded without sockets.
//! - `state`: the ordered map, its sequence and TTL expiry (pure).
//! - `server`: the thread owning the three CHP sockets; persistence in the store.
//! - `config`: `[cache]` settings.
//! - `client`: a Clone-pattern peer in Rust (join, get, set, delete, watch).
//!
//! Binary Star failover and client failover between servers come next (issue 4).

pub mod client;
pub mod config;
pub mod protocol;
pub mod server;
pub mod state;

pub use config::CacheConfig;
pub use server::{Cache, CacheEndpoints, CacheError, CacheMetrics};
