//! What several Depot services share.
//!
//! Layout:
//! - `config`: serde helpers for durations and sizes in configuration.
//! - `frames`: receiving multipart messages without copies, bound endpoints.
//! - `metrics`: writing Prometheus text exposition.
//! - `ratelimit`: warnings at most once a second per kind.
//! - `rate`: token buckets behind the per-key rate limits of the authorized-keys file.
//! - `size`: parsing byte sizes such as `512MiB`.
//! - `sockopt`: socket options the `zmq` 0.9 crate does not wrap (XPUB NODROP and MANUAL).
//! - `thread`: scheduling helpers (background threads at low priority).
//! - `loadgen`: synthetic log lines for benchmarks and load tools.
//! - `authz`: permission words of the authorized-keys file, and the guard services ask.
//! - `security`: CURVE key files, the authorized-keys file, the ZAP handler, loopback checks.
//! - `watch`: calling a function when one file changes (its folder is watched).

pub mod authz;
pub mod config;
pub mod frames;
pub mod loadgen;
pub mod metrics;
pub mod rate;
pub mod ratelimit;
pub mod security;
pub mod size;
pub mod sockopt;
pub mod thread;
pub mod watch;
