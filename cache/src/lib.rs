//! Depot's state cache in the ZeroMQ Clone pattern (CHP, RFC 12).
//!
//! Layout:
//! - `protocol`: CHP messages (KVSYNC, KVPUB, KVSET, ICANHAZ?, KTHXBAI, HUGZ) and their
//!   properties, encoded and decoded without sockets.
//!
//! The server, persistence, TTL sweep, subtrees and Binary Star failover come next (issue 4).

pub mod protocol;
