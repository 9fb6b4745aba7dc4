//! Depot's state cache in the ZeroMQ Clone pattern (CHP, RFC 12).
//!
//! Layout:
//! - `protocol`: CHP messages (KVSYNC, KVPUB, KVSET, ICANHAZ?, KTHXBAI, HUGZ) and their
//!   properties, encoded and decoded without sockets.
//! - `state`: the ordered map, its sequence and TTL expiry (pure).
//!
//! The server, persistence, TTL sweep, subtrees and Binary Star failover come next (issue 4).

pub mod protocol;
pub mod state;
