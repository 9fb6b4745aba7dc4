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
        self.commit.check_writable()?;
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

    /// Applies many puts (`Some`) and removes (`None`) in one sled batch, far cheaper than one
    /// call each; durable once the ticket is.
    pub fn apply(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<Ticket> {
        self.commit.check_writable()?;
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) if value.len() > MAX_KV_VALUE => {
                    return Err(StoreError::Invalid(format!(
                        "value of {} bytes exceeds the limit of {MAX_KV_VALUE}",
                        value.len()
                    )))
                }
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        if let Err(e) = self.tree.apply_batch(batch) {
            self.commit.poison(format!("writing a key-value tree: {e}"));
            return Err(e.into());
        }
        Ok(self.commit.issue())
    }

    /// Removes `key`; durable once the ticket is.
    pub fn remove(&self, key: &[u8]) -> Result<Ticket> {
        self.commit.check_writable()?;
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
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreConfig};

    #[test]
    fn a_batch_puts_and_removes_and_refuses_big_values_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let kv = store.kv("t").unwrap();
        kv.put(b"gone", b"1").unwrap();
        let ticket = kv
            .apply(&[
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"gone".to_vec(), None),
                (b"b".to_vec(), Some(b"2".to_vec())),
            ])
            .unwrap();
        store.wait_durable(ticket).unwrap();
        let all: Vec<(Vec<u8>, Vec<u8>)> = kv.entries().map(Result::unwrap).collect();
        assert_eq!(
            all,
            vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]
        );
        let big = vec![0u8; super::MAX_KV_VALUE + 1];
        assert!(kv
            .apply(&[(b"c".to_vec(), Some(b"3".to_vec())), (b"d".to_vec(), Some(big))])
            .is_err());
        assert_eq!(kv.get(b"c").unwrap(), None, "nothing of a refused batch is written");
    }
}
