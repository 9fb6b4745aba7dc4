//! The free-space reserve: writes that would grow the store are refused while the data folder's
//! filesystem has less than the reserve free, so the storage engine itself never meets a full
//! disk.
//!
//! Why refuse early rather than handle ENOSPC: sled 0.34 records a failed write of its log as a
//! global error and returns it from every later operation until the database is opened again
//! (`Config::set_global_error`, reset only in `PageCache::start`). A full disk reaching sled
//! therefore costs a restart; one refused at the door costs nothing, and ingest resumes by
//! itself once space is back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{Result, StoreError};

/// How often the free space is measured while writes are accepted. Between two measurements
/// the store can grow by what is written in this time; the reserve must cover that.
const CHECK_EVERY_NS: u64 = 10_000_000;

/// Measures the free space of the data folder's filesystem, in bytes.
pub(crate) type Probe = Box<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// Decides whether a growing write may go ahead.
pub(crate) struct SpaceGuard {
    dir: PathBuf,
    /// The reserve (atomic only so that tests can move it).
    min_free: AtomicU64,
    probe: Probe,
    epoch: Instant,
    /// When the space was last measured, ns after `epoch` (0: never).
    checked_at: AtomicU64,
    /// Free bytes at the last measurement.
    free: AtomicU64,
    /// True while the last measurement was below the reserve.
    full: AtomicBool,
}

impl SpaceGuard {
    /// A guard for `dir` measuring with statvfs (the space an unprivileged user may use).
    pub(crate) fn new(dir: &Path, min_free: u64) -> Self {
        Self::with_probe(dir, min_free, Box::new(|dir| fs2::available_space(dir)))
    }

    pub(crate) fn with_probe(dir: &Path, min_free: u64, probe: Probe) -> Self {
        SpaceGuard {
            dir: dir.to_path_buf(),
            min_free: AtomicU64::new(min_free),
            probe,
            epoch: Instant::now(),
            checked_at: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
        }
    }

    /// Refuses with [`StoreError::DiskFull`] while free space is below the reserve. Measures
    /// at most every 10 ms while there is room, and on every call while there is not, so
    /// writes resume as soon as space returns.
    pub(crate) fn check(&self) -> Result<()> {
        let min_free = self.min_free.load(Ordering::Relaxed);
        if min_free == 0 {
            return Ok(());
        }
        let now = (self.epoch.elapsed().as_nanos() as u64).max(1);
        let last = self.checked_at.load(Ordering::Acquire);
        let full = self.full.load(Ordering::Acquire);
        let due = full || last == 0 || now.saturating_sub(last) >= CHECK_EVERY_NS;
        // One writer measures; the others use the last measurement meanwhile.
        if due
            && self
                .checked_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            match (self.probe)(&self.dir) {
                Ok(free) => {
                    self.free.store(free, Ordering::Release);
                    let now_full = free < min_free;
                    let was_full = self.full.swap(now_full, Ordering::AcqRel);
                    if now_full && !was_full {
                        tracing::error!(
                            dir = %self.dir.display(), free, min_free,
                            "disk full: free space below the store's reserve; writes are refused until space is freed"
                        );
                    } else if was_full && !now_full {
                        tracing::info!(dir = %self.dir.display(), free, "disk space is back: writes are accepted again");
                    }
                }
                // Not knowing is no reason to refuse: the commit path still catches a real failure.
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure free space")
                }
            }
        }
        if self.full.load(Ordering::Acquire) {
            return Err(StoreError::DiskFull {
                path: self.dir.clone(),
                free: self.free.load(Ordering::Acquire),
                min_free,
            });
        }
        Ok(())
    }

    /// Moves the reserve, for tests that fill or free a disk without touching one.
    #[cfg(test)]
    pub(crate) fn set_min_free(&self, min_free: u64) {
        self.min_free.store(min_free, Ordering::Relaxed);
        self.checked_at.store(0, Ordering::Release);
    }

    /// True while writes are refused for lack of space (as of the last measurement).
    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn guard(min_free: u64) -> (SpaceGuard, Arc<AtomicU64>) {
        let free = Arc::new(AtomicU64::new(1_000));
        let probe_free = free.clone();
        let guard = SpaceGuard::with_probe(
            Path::new("/data"),
            min_free,
            Box::new(move |_| Ok(probe_free.load(Ordering::SeqCst))),
        );
        (guard, free)
    }

    #[test]
    fn writes_are_refused_below_the_reserve_and_accepted_again_as_soon_as_space_returns() {
        let (guard, free) = guard(500);
        assert!(guard.check().is_ok());
        free.store(499, Ordering::SeqCst);
        // Within 10 ms of the last measurement there may be no new one; within a second there is.
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let err = loop {
            match guard.check() {
                Err(e) => break e,
                Ok(()) if Instant::now() < deadline => std::thread::yield_now(),
                Ok(()) => panic!("never refused"),
            }
        };
        assert!(
            matches!(
                err,
                StoreError::DiskFull {
                    free: 499,
                    min_free: 500,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(guard.is_full());
        // While full, every call measures: the first call after space returns succeeds.
        free.store(500, Ordering::SeqCst);
        assert!(guard.check().is_ok());
        assert!(!guard.is_full());
    }

    #[test]
    fn a_zero_reserve_never_measures_and_a_failed_measurement_does_not_refuse() {
        let guard = SpaceGuard::with_probe(
            Path::new("/data"),
            0,
            Box::new(|_| panic!("measured with a zero reserve")),
        );
        assert!(guard.check().is_ok());
        let guard = SpaceGuard::with_probe(
            Path::new("/data"),
            10,
            Box::new(|_| Err(std::io::Error::other("statvfs failed"))),
        );
        assert!(guard.check().is_ok());
    }
}
