//! What several Depot services share.
//!
//! Layout:
//! - `metrics`: writing Prometheus text exposition.
//! - `size`: parsing byte sizes such as `512MiB` in configuration.

pub mod metrics;
pub mod size;
