//! Depot's clock: precise tick streams on a PUB and persistent timers on a ROUTER.
//!
//! Layout:
//! - `schedule`: tick schedule math (alignment, `seq = time / period`, late and missed ticks), pure.
//! - `protocol`: tick frames, timer requests, replies and firings, pure.
//! - `timers`: the stored timer record and what a firing does to it, pure.
//! - `streams`: what a live reload of `[[clock.ticks]]` adds, removes, keeps or refuses, pure.
//! - `sys`: CLOCK_MONOTONIC/REALTIME, absolute sleeps, timer slack, SCHED_FIFO (the unsafe bits).
//! - `ticker`: the thread owning the PUB: sleeps to deadlines, sends ticks, forwards firings.
//! - `timer_server`: the thread owning the timers ROUTER: requests, store, firing.
//! - `service`: start and shutdown of both threads.
//! - `metrics`: lateness histograms and timer counters.
//! - `config`: `[clock]` settings.
//! - `client`: a Rust client of the timers ROUTER.

pub mod client;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod schedule;
mod service;
pub mod streams;
pub mod sys;
mod ticker;
mod timer_server;
pub mod timers;

pub use config::{ClockConfig, Precision, TickConfig, TimerLimits};
pub use metrics::ClockMetrics;
pub use service::{Clock, ClockEndpoints, ClockError, ClockReconfigurer};
