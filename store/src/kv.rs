//! Named key-value trees under the store's group commit: a write returns a ticket that becomes
//! durable with the next commit, like a log append.

use std::sync::Arc;

use crate::block::FRAGMENT_BYTES;
use crate::durability::{CommitState, Ticket};
use crate::error::{Result, StoreError};

/// Largest value a key-value tree takes: sled keeps values of this size in its log, which is
/// synced; larger ones would go to its never-synced `blobs/` files.
pub const MAX_KV_VALUE: usize = FRAGMENT_BYTES;

/// One key-value tree.
#[derive(Clone)]
pub struct Kv {
    tree: sled::Tree,
    commit: Arc<CommitState>,
}

impl Kv {
    pub(crate) fn new(tree: sled::Tree, commit: Arc<CommitState>) -> Self {
        Kv { tree, commit }
    }

    /// Sets `key` to `value`; durable once the ticket is.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Ticket> {
        let _gate = self.commit.begin_write(true)?;
        if value.len() > MAX_KV_VALUE {
            return Err(StoreError::Invalid(format!(
                "value of {} bytes exceeds the limit of {MAX_KV_VALUE}",
                value.len()
            )));
        }
        if let Err(e) = self.tree.insert(key, value) {
            self.commit.poison(format!("writing a key-value tree: {e}"));
            return Err(e.into());
        }
        Ok(self.commit.issue())
    }

    /// Removes `key`; durable once the ticket is.
    pub fn remove(&self, key: &[u8]) -> Result<Ticket> {
        let _gate = self.commit.begin_write(false)?;
        if let Err(e) = self.tree.remove(key) {
            self.commit.poison(format!("writing a key-value tree: {e}"));
            return Err(e.into());
        }
        Ok(self.commit.issue())
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        self.tree.iter().map(|entry| {
            entry
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        })
    }

    /// Entries with a key at or after `start`, in key order.
    pub fn entries_from(
        &self,
        start: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        self.tree.range(start.to_vec()..).map(|entry| {
            entry
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        })
    }
}
