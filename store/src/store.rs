//! The store: one sled database in the data folder, a lock that keeps other processes out, and
//! the committer thread that makes writes durable in groups.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::durability::{CommitState, Durability, Ticket, Watermark};
use crate::error::{Result, StoreError};
use crate::log::Log;
use crate::space::SpaceGuard;

/// How the store commits.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Shortest time between two commits; writes arriving meanwhile share the next one.
    pub commit_interval: Duration,
    /// `fdatasync` sled's data file after each flush, making commits survive a power loss.
    pub sync: bool,
    /// Memory sled may use for its page cache.
    pub cache_bytes: u64,
    /// Free space the data folder's filesystem keeps: below it, writes that grow the store are
    /// refused with [`StoreError::DiskFull`] (0 turns the check off).
    pub min_free: u64,
    /// Age at which a stream's open block is sealed at the next commit however small it is,
    /// so retention and trimming do not wait long for a slow or quiet stream's records.
    pub max_open_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            commit_interval: Duration::from_millis(2),
            sync: true,
            cache_bytes: 8 * 1024 * 1024,
            min_free: 64 * 1024 * 1024,
            max_open_age: Duration::from_secs(60),
        }
    }
}

/// Counters about commits.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct CommitStats {
    /// Commits completed.
    pub commits: u64,
    /// Duration of the last commit (seal, flush, sync), microseconds.
    pub last_commit_us: u64,
    /// Highest durable ticket.
    pub durable_ticket: u64,
    /// Tickets issued.
    pub issued_ticket: u64,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    /// sled's data file, synced after each flush because sled's flush does not fsync.
    db_file: File,
    config: StoreConfig,
    commit: Arc<CommitState>,
    log: Log,
    commits: AtomicU64,
    last_commit_us: AtomicU64,
    /// Held for the store's lifetime; the OS releases it if the process dies.
    _lock: File,
}

/// Depot's durable storage in one data folder.
pub struct Store {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

/// Name of the lock file in the data folder.
pub const LOCK_FILE: &str = "depot.lock";
/// Name of sled's folder inside the data folder.
pub const DB_DIR: &str = "store";

/// Opens sled in `db_dir` as the store uses it (no background flushes: the committer flushes).
pub(crate) fn open_db(db_dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
    sled::Config::new()
        .path(db_dir)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            // sled's own lock on its files: another holder, not damage. sled reports it as an
            // error of kind Other whose text names the lock (seen right after a close in the
            // same process, while sled's threads still hold it).
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::Locked {
                    path: db_dir.to_path_buf(),
                    holder: " (the database files are locked)".into(),
                }
            }
            e => StoreError::corrupt(format!(
                "cannot open the database in {}: {e}. If it is damaged, move the folder aside \
                 and restore it from a backup",
                db_dir.display()
            )),
        })
}

/// Takes the data folder's lock, naming the holder if another process has it.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StoreError::Locked {
                path: dir.to_path_buf(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(|e| StoreError::io(&path, e))?;
    Ok(file)
}

/// Name of the file beside the database that remembers which database belongs here.
pub const IDENTITY_FILE: &str = "store.id";
/// Key of the identity inside the database.
const IDENTITY_KEY: &[u8] = b"depot.store.id";

/// Makes sure the database is the one this folder had: sled opens a truncated or garbled
/// database as an empty one, and an empty store must not be mistaken for a healthy one.
fn check_identity(dir: &Path, db: &sled::Db) -> Result<()> {
    let path = dir.join(IDENTITY_FILE);
    let on_file = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let in_db = db
        .get(IDENTITY_KEY)?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let write_file = |id: &str| -> Result<()> {
        let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let mut file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        writeln!(file, "{id}")
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| File::open(dir)?.sync_all())
            .map_err(|e| StoreError::io(&path, e))
    };
    match (on_file, in_db) {
        (None, None) => {
            let id = format!("{:032x}", now_ns_u128() ^ (u128::from(std::process::id()) << 64));
            db.insert(IDENTITY_KEY, id.as_bytes())?;
            db.flush()?;
            write_file(&id)
        }
        (Some(file_id), Some(db_id)) if file_id == db_id => Ok(()),
        (Some(file_id), None) => Err(StoreError::corrupt(format!(
            "the database in {} has lost its contents (this folder held store {file_id}, the database \
             opens empty): it is damaged. Stop, move {} aside, and restore the data folder from a backup",
            dir.join(DB_DIR).display(),
            dir.join(DB_DIR).display()
        ))),
        (Some(file_id), Some(db_id)) => Err(StoreError::corrupt(format!(
            "{} names store {file_id} but the database is store {db_id}: the folder mixes two stores; \
             restore it from one backup",
            path.display()
        ))),
        (None, Some(db_id)) => {
            tracing::warn!(file = %path.display(), "identity file missing: writing it again");
            write_file(&db_id)
        }
    }
}

fn now_ns_u128() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovers it and starts the committer.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let lock = lock_data_dir(&dir)?;
        let db_dir = dir.join(DB_DIR);
        let db = open_db(&db_dir, config.cache_bytes)?;
        check_identity(&dir, &db)?;
        let db_path = db_dir.join("db");
        let db_file = File::open(&db_path).map_err(|e| StoreError::io(&db_path, e))?;
        let commit = Arc::new(CommitState::new(SpaceGuard::new(&dir, config.min_free)));
        let log = Log::open(&db, commit.clone(), config.max_open_age)?;
        db.flush()?;
        let inner = Arc::new(Inner {
            dir,
            db,
            db_file,
            config,
            commit,
            log,
            commits: AtomicU64::new(0),
            last_commit_us: AtomicU64::new(0),
            _lock: lock,
        });
        let committer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("store-commit".into())
                .spawn(move || inner.run_committer())
                .map_err(|e| StoreError::io("committer thread", e))?
        };
        Ok(Store {
            inner,
            committer: Mutex::new(Some(committer)),
        })
    }

    /// The log streams.
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// The key-value tree `name` (created on first use), under the same group commit.
    pub fn kv(&self, name: &str) -> Result<crate::Kv> {
        let tree = self.inner.db.open_tree(format!("kv.{name}"))?;
        Ok(crate::Kv::new(tree, self.inner.commit.clone()))
    }

    /// Writes a consistent copy of the store to `dir/depot.backup` while it runs (`dir` is
    /// created; an existing backup there is never overwritten). Writes wait while the trees
    /// are copied; every write acknowledged before the call is in the copy.
    pub fn backup(&self, dir: &Path) -> Result<crate::BackupStats> {
        crate::backup::write_backup(&self.inner.db, &self.inner.commit, dir)
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What a durable write survives with this configuration.
    pub fn durability(&self) -> Durability {
        if self.inner.config.sync {
            Durability::PowerLoss
        } else {
            Durability::ProcessCrash
        }
    }

    /// How far `ticket` has come.
    pub fn durability_of(&self, ticket: Ticket) -> Durability {
        if self.inner.commit.check_ticket(ticket).is_ok()
            && self.inner.commit.watermark().durable >= ticket.n
        {
            self.durability()
        } else {
            Durability::Buffered
        }
    }

    /// Blocks until `ticket` is durable; fails if the store is poisoned or closed first.
    pub fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        self.inner.commit.wait(ticket, None).map(|_| ())
    }

    /// Like [`Store::wait_durable`], giving up after `timeout` (then `Ok(false)`).
    pub fn wait_durable_timeout(&self, ticket: Ticket, timeout: Duration) -> Result<bool> {
        self.inner.commit.wait(ticket, Some(timeout))
    }

    /// Waits asynchronously until `ticket` is durable; fails if poisoned or closed first.
    pub async fn durable(&self, ticket: Ticket) -> Result<()> {
        self.inner.commit.wait_async(ticket).await
    }

    /// A descriptor that becomes readable whenever the durable watermark moves.
    pub fn durable_notifier(&self) -> std::io::Result<crate::DurableNotifier> {
        self.inner.commit.notifier()
    }

    /// Refuses as a growing write would now (poisoned, closed, or disk full), writing nothing:
    /// for services that must decide before they change their own state.
    pub fn check_writable(&self) -> Result<()> {
        self.inner.commit.check_growth()
    }

    /// True while growing writes are refused for lack of disk space (last measurement).
    pub fn disk_full(&self) -> bool {
        self.inner.commit.disk_full()
    }

    /// The committer's watermark now.
    pub fn watermark(&self) -> Watermark {
        self.inner.commit.watermark()
    }

    /// Commit counters.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            last_commit_us: self.inner.last_commit_us.load(Ordering::Relaxed),
            durable_ticket: self.inner.commit.watermark().durable,
            issued_ticket: self.inner.commit.issued(),
        }
    }

    /// Bytes the database occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Stops accepting writes, commits everything written, and stops the committer.
    pub fn close(&self) -> Result<()> {
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(handle) = handle else {
            return Ok(());
        };
        self.inner.commit.begin_shutdown();
        if handle.join().is_err() {
            self.inner.commit.poison("committer thread panicked".into());
        }
        let result = match self.inner.commit.watermark().poisoned {
            Some(reason) => Err(StoreError::Poisoned(reason.to_string())),
            None => Ok(()),
        };
        self.inner.commit.mark_closed();
        result
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the store");
        }
    }
}

impl Inner {
    fn run_committer(&self) {
        let interval = self.config.commit_interval;
        let mut last_start = Instant::now() - interval;
        while self.commit.wait_for_work() {
            let since = last_start.elapsed();
            if since < interval {
                std::thread::sleep(interval - since);
            }
            last_start = Instant::now();
            self.commit_once();
        }
        // Shutdown: every open block sealed (a clean stop leaves no tail pieces to load at the
        // next start) and one last commit for everything issued before it.
        let sealed = self.log.seal_all_open_blocks();
        if sealed.unwrap_or(false) || self.commit.issued() > self.commit.watermark().durable {
            self.commit_once();
        }
    }

    fn commit_once(&self) {
        if self.commit.watermark().poisoned.is_some() {
            return;
        }
        let started = Instant::now();
        let upto = self.commit.issued();
        let result = self
            .log
            .write_open_blocks()
            .and_then(|()| self.db.flush().map(|_| ()).map_err(StoreError::from))
            .and_then(|()| {
                if self.config.sync {
                    self.db_file
                        .sync_data()
                        .map_err(|e| StoreError::io(self.dir.join(DB_DIR).join("db"), e))
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.last_commit_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.commit.publish_durable(upto);
            }
            Err(e) if is_disk_full(&e) => self.commit.poison(format!(
                "commit failed: {e}: the disk filled up past the free-space reserve \
                 (raise [store] min_free)"
            )),
            Err(e) => self.commit.poison(format!("commit failed: {e}")),
        }
    }
}

/// ENOSPC or EDQUOT, from sled or from the sync.
fn is_disk_full(e: &StoreError) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let io = match e {
        StoreError::Io { source, .. } => source,
        StoreError::Engine(sled::Error::Io(source)) => source,
        _ => return false,
    };
    matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewRecord;

    /// sled's own file lock, held by another open of the same folder, is reported as a lock,
    /// not as damage (whose message tells the operator to move the folder aside).
    #[test]
    fn a_database_locked_by_another_open_is_reported_as_locked_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open_db(dir.path(), 1 << 20).unwrap();
        match open_db(dir.path(), 1 << 20) {
            Err(StoreError::Locked { .. }) => {}
            Err(e) => panic!("a lock reported as {e:?}"),
            Ok(_) => panic!("sled opened a folder it holds already"),
        }
    }

    /// What a failed flush does (the commit path calls `poison`): nothing after it is
    /// acknowledged, writes are refused with the reason, and what was durable stays readable.
    #[test]
    fn a_poisoned_store_refuses_writes_and_never_acknowledges_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let record = NewRecord {
            level: 6,
            source: "t",
            body: b"durable",
        };
        let durable = store.log().append("s", &[record]).unwrap();
        store.wait_durable(durable.ticket).unwrap();

        store.inner.commit.poison("disk gone".into());
        let refused = store.log().append("s", &[record]).unwrap_err();
        assert!(
            matches!(&refused, StoreError::Poisoned(reason) if reason.contains("disk gone")),
            "{refused}"
        );
        assert!(store.kv("k").unwrap().put(b"a", b"b").is_err());
        assert!(store.watermark().poisoned.is_some());
        assert_eq!(store.durability_of(durable.ticket), Durability::PowerLoss);
        assert_eq!(store.log().read("s", 1, u64::MAX, 10).unwrap().len(), 1);
        assert!(store.close().is_err(), "closing reports the poisoning");
    }

    /// Below the free-space reserve, growing writes are refused with `DiskFull` and nothing is
    /// poisoned: reads, removals and commits go on, and writes resume once space is back.
    #[test]
    fn below_the_reserve_growing_writes_are_refused_without_poisoning_and_resume_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let record = NewRecord {
            level: 6,
            source: "t",
            body: b"before",
        };
        let kv = store.kv("k").unwrap();
        let before = store.log().append("s", &[record]).unwrap();
        kv.put(b"a", b"1").unwrap();
        store.wait_durable(before.ticket).unwrap();

        store.inner.commit.space().set_min_free(u64::MAX);
        let refused = store.log().append("s", &[record]).unwrap_err();
        assert!(matches!(refused, StoreError::DiskFull { .. }), "{refused}");
        assert!(matches!(
            kv.put(b"b", b"2").unwrap_err(),
            StoreError::DiskFull { .. }
        ));
        assert!(store.check_writable().is_err());
        assert!(store.disk_full());
        // Removals free space, so they go ahead and become durable.
        let removed = kv.remove(b"a").unwrap();
        store.wait_durable(removed).unwrap();
        assert!(store.watermark().poisoned.is_none());
        assert_eq!(store.log().read("s", 1, u64::MAX, 10).unwrap().len(), 1);

        store.inner.commit.space().set_min_free(1);
        store.check_writable().unwrap();
        let after = store.log().append("s", &[record]).unwrap();
        store.wait_durable(after.ticket).unwrap();
        assert_eq!(
            after.first,
            before.first + 1,
            "no sequence lost to the refusal"
        );
        assert!(!store.disk_full());
        store.close().unwrap();
    }

    #[test]
    fn a_notifier_becomes_readable_when_a_write_is_durable() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let notifier = store.durable_notifier().unwrap();
        let mut byte = [0u8; 1];
        assert!((&notifier.reader).read(&mut byte).is_err(), "nothing yet");
        let ticket = store.kv("k").unwrap().put(b"a", b"b").unwrap();
        store.wait_durable(ticket).unwrap();
        // The byte follows the watermark: wait for it with a bounded blocking read.
        notifier.reader.set_nonblocking(false).unwrap();
        notifier
            .reader
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!((&notifier.reader).read(&mut byte).unwrap(), 1);
        notifier.reader.set_nonblocking(true).unwrap();
        notifier.drain();
        assert!((&notifier.reader).read(&mut byte).is_err(), "drained");
    }

    /// A ticket issued before the poisoning but not yet committed is answered with an error,
    /// not left waiting.
    #[test]
    fn waiters_for_uncommitted_tickets_get_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            commit_interval: Duration::from_secs(1),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        let record = NewRecord {
            level: 6,
            source: "t",
            body: b"x",
        };
        // The committer commits once at once, then waits its interval: the second append is
        // still pending when the poison comes.
        let first = store.log().append("s", &[record]).unwrap();
        store.wait_durable(first.ticket).unwrap();
        let pending = store.log().append("s", &[record]).unwrap();
        store.inner.commit.poison("flush failed".into());
        let err = store.wait_durable(pending.ticket).unwrap_err();
        assert!(matches!(err, StoreError::Poisoned(_)), "{err}");
    }
}
