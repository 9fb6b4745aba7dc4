//! The store's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process holds the data folder.
    #[error("data folder {path} is in use by another Depot process{holder}; stop it first or choose another --data folder")]
    Locked {
        /// The data folder.
        path: PathBuf,
        /// " (pid N)" when the holder wrote its pid, else empty.
        holder: String,
    },
    /// sled reported an error.
    #[error("storage engine error: {0}")]
    Engine(#[from] sled::Error),
    /// Stored bytes do not decode or fail their checksum.
    #[error("corrupt data: {what}")]
    Corrupt {
        /// Which item is damaged, and how.
        what: String,
    },
    /// A flush or sync failed earlier; the store refuses writes from then on.
    #[error("store poisoned after a failed flush ({0}); restart Depot once the disk is healthy: nothing acknowledged was lost")]
    Poisoned(String),
    /// The data folder's filesystem is below the free-space reserve; growing writes are
    /// refused until space is freed (nothing is poisoned: they resume by themselves).
    #[error("disk full: {free} bytes free in {path}, below the reserve of {min_free} ([store] min_free); writes are refused until space is freed")]
    DiskFull {
        /// The data folder.
        path: PathBuf,
        /// Free bytes at the last measurement.
        free: u64,
        /// The reserve.
        min_free: u64,
    },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// A caller passed something the store does not accept.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// A corruption error saying what is damaged.
    pub fn corrupt(what: impl Into<String>) -> Self {
        StoreError::Corrupt { what: what.into() }
    }
}
