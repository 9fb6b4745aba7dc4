//! What several Depot services share.
//!
//! Layout:
//! - `metrics`: writing Prometheus text exposition.
//! - `size`: parsing byte sizes such as `512MiB` in configuration.
//! - `loadgen`: synthetic log lines for benchmarks and load tools.

pub mod loadgen;
pub mod metrics;
pub mod size;
