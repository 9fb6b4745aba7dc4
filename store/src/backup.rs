//! Backup and restore of a whole store. A backup is taken while the appliance runs: writes are
//! held off, everything written is committed, and every sled tree is copied into one
//! checksummed file — a consistent cut (every acknowledged write before it is in, nothing after
//! it is). A restore reads that file into a new, empty data folder while the appliance is
//! stopped; the next start recovers from it like from any data folder.
//!
//! The file, `depot.backup`: the magic `DEPOTBK1`, then items — a tree (`1`, name length u32
//! BE, name) followed by its entries (`2`, key length u32 BE, key, value length u32 BE,
//! value) — and an end (`0`, entry count u64 BE, CRC-32 of every byte before it, u32 BE).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::durability::CommitState;
use crate::error::{Result, StoreError};
use crate::store::{lock_data_dir, open_db, DB_DIR};

/// Name of the backup file inside a backup folder.
pub const BACKUP_FILE: &str = "depot.backup";
const MAGIC: &[u8; 8] = b"DEPOTBK1";
const END: u8 = 0;
const TREE: u8 = 1;
const ENTRY: u8 = 2;

/// What a backup or restore copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupStats {
    /// Sled trees.
    pub trees: u64,
    /// Keys with their values.
    pub entries: u64,
    /// Size of the backup file.
    pub bytes: u64,
}

/// A writer that checksums what passes through it.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    fn put_sized(&mut self, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
        self.put(&[kind])?;
        for part in parts {
            self.put(&(part.len() as u32).to_be_bytes())?;
            self.put(part)?;
        }
        Ok(())
    }
}

/// Writes a consistent copy of `db` to `dir/depot.backup` (see [`Store::backup`]).
pub(crate) fn write_backup(db: &sled::Db, commit: &CommitState, dir: &Path) -> Result<BackupStats> {
    {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let path = dir.join(BACKUP_FILE);
        if path.exists() {
            return Err(StoreError::Invalid(format!(
                "{} exists already; choose an empty folder",
                path.display()
            )));
        }
        let tmp = dir.join(format!("{BACKUP_FILE}.tmp"));
        let file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let mut out = Summed {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let io = |e| StoreError::io(&tmp, e);
        let mut stats = BackupStats::default();
        {
            let _held = commit.hold_writes();
            // Everything written before the cut becomes durable and sealed into sled.
            commit.wait_upto(commit.issued())?;
            out.put(MAGIC).map_err(io)?;
            for name in db.tree_names() {
                let tree = db.open_tree(&name)?;
                out.put_sized(TREE, &[&name]).map_err(io)?;
                stats.trees += 1;
                for entry in tree.iter() {
                    let (key, value) = entry?;
                    out.put_sized(ENTRY, &[&key, &value]).map_err(io)?;
                    stats.entries += 1;
                }
            }
        }
        out.put(&[END]).map_err(io)?;
        out.put(&stats.entries.to_be_bytes()).map_err(io)?;
        let crc = out.crc.clone().finalize();
        out.inner.write_all(&crc.to_be_bytes()).map_err(io)?;
        stats.bytes = out.bytes + 4;
        let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(dir, e))?;
        Ok(stats)
    }
}

/// A reader of a backup file that checksums what it reads.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
    path: PathBuf,
}

impl<R: Read> Checked<R> {
    fn take(&mut self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.inner.read_exact(&mut buf).map_err(|e| {
            StoreError::corrupt(format!("backup {} is cut short: {e}", self.path.display()))
        })?;
        self.crc.update(&buf);
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn sized(&mut self) -> Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if len > 64 << 20 {
            return Err(StoreError::corrupt(format!(
                "backup {} holds an item of {len} bytes: damaged",
                self.path.display()
            )));
        }
        self.take(len)
    }
}

/// One item of a backup file.
enum Item<'a> {
    /// A tree starts: its name.
    Tree(&'a [u8]),
    /// A key and value of the current tree.
    Entry(&'a [u8], &'a [u8]),
}

/// Reads a backup file, calling `take` with each item; fails on damage, so nothing should be
/// kept from a failed read.
fn read_backup(path: &Path, mut take: impl FnMut(Item<'_>) -> Result<()>) -> Result<BackupStats> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let bytes = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut input = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        path: path.to_path_buf(),
    };
    if input.take(MAGIC.len())? != MAGIC {
        return Err(StoreError::corrupt(format!(
            "{} is not a Depot backup",
            path.display()
        )));
    }
    let mut stats = BackupStats {
        bytes,
        ..Default::default()
    };
    let mut in_tree = false;
    loop {
        match input.take(1)?[0] {
            TREE => {
                take(Item::Tree(&input.sized()?))?;
                stats.trees += 1;
                in_tree = true;
            }
            ENTRY if in_tree => {
                let key = input.sized()?;
                let value = input.sized()?;
                take(Item::Entry(&key, &value))?;
                stats.entries += 1;
            }
            END => break,
            kind => {
                return Err(StoreError::corrupt(format!(
                    "backup {} has an item of unknown kind {kind}: damaged",
                    path.display()
                )))
            }
        }
    }
    let count = u64::from_be_bytes(input.take(8)?.try_into().unwrap_or_default());
    let computed = input.crc.clone().finalize();
    let mut stored = [0u8; 4];
    input
        .inner
        .read_exact(&mut stored)
        .map_err(|e| StoreError::corrupt(format!("backup {} is cut short: {e}", path.display())))?;
    if count != stats.entries || u32::from_be_bytes(stored) != computed {
        return Err(StoreError::corrupt(format!(
            "backup {} fails its checksum: damaged",
            path.display()
        )));
    }
    Ok(stats)
}

/// Restores the backup in `backup_dir` into `data_dir`, which must hold no database (the
/// appliance stopped, the old folder moved aside). The backup is checked whole first.
pub fn restore(backup_dir: &Path, data_dir: &Path) -> Result<BackupStats> {
    let path = backup_dir.join(BACKUP_FILE);
    read_backup(&path, |_| Ok(()))?;
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::io(data_dir, e))?;
    let _lock = lock_data_dir(data_dir)?;
    let db_dir = data_dir.join(DB_DIR);
    let occupied = std::fs::read_dir(&db_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(StoreError::Invalid(format!(
            "{} holds a database already: restore into an empty data folder (move this one aside)",
            db_dir.display()
        )));
    }
    let _ = std::fs::remove_file(data_dir.join(crate::store::IDENTITY_FILE));
    let db = open_db(&db_dir, 64 << 20)?;
    let mut current: Option<sled::Tree> = None;
    let stats = read_backup(&path, |item| {
        match item {
            Item::Tree(name) => current = Some(db.open_tree(name)?),
            Item::Entry(key, value) => {
                if let Some(tree) = &current {
                    tree.insert(key, value)?;
                }
            }
        }
        Ok(())
    })?;
    db.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::{NewRecord, StoreConfig};

    fn record(body: &[u8]) -> NewRecord<'_> {
        NewRecord {
            level: 6,
            source: "t",
            body,
        }
    }

    #[test]
    fn a_backup_refuses_damage_and_an_occupied_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data"), StoreConfig::default()).unwrap();
        let appended = store.log().append("s", &[record(b"one")]).unwrap();
        store.wait_durable(appended.ticket).unwrap();
        let backup = dir.path().join("backup");
        let stats = store.backup(&backup).unwrap();
        assert!(stats.entries > 0 && stats.trees > 0);
        assert!(store.backup(&backup).is_err(), "an existing backup is kept");

        // Restoring over the running store's folder is refused.
        assert!(restore(&backup, &dir.path().join("data")).is_err());
        // A flipped byte is caught before anything is written.
        let path = backup.join(BACKUP_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        let damaged = dir.path().join("damaged");
        std::fs::create_dir_all(&damaged).unwrap();
        std::fs::write(damaged.join(BACKUP_FILE), &bytes).unwrap();
        let target = dir.path().join("target");
        let err = restore(&damaged, &target).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(
            !target.join(DB_DIR).exists(),
            "nothing written from a damaged backup"
        );
        // Cut short, too.
        std::fs::write(damaged.join(BACKUP_FILE), &bytes[..bytes.len() / 3]).unwrap();
        assert!(restore(&damaged, &target).is_err());
    }
}
