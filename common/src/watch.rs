//! Watching one file for changes: the folder is watched, since editors replace a file by
//! writing a temporary one and renaming it over the original, which a watch on the file itself
//! would lose.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Calls a function after changes to one file, once a burst of events has gone quiet.
/// Dropping it stops watching (and joins its thread).
pub struct FileWatcher {
    /// Dropped first: closes the channel, which ends the thread.
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
}

/// The folder that holds `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl FileWatcher {
    /// Watches `path`'s folder and calls `on_change` on its own thread after events that name
    /// the file, once no further event came for `debounce` (an editor's save is several
    /// events: write, rename, attribute changes).
    pub fn start(
        path: &Path,
        debounce: Duration,
        on_change: impl Fn() + Send + 'static,
    ) -> Result<FileWatcher, notify::Error> {
        use notify::Watcher;
        let dir = folder_of(path);
        let name: Option<OsString> = path.file_name().map(|n| n.to_os_string());
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
                if ours && !event.kind.is_access() {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let thread = std::thread::Builder::new()
            .name("file-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Wait for the burst to end; a closed channel ends the watch.
                    loop {
                        match rx.recv_timeout(debounce) {
                            Ok(()) => continue,
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    on_change();
                }
            })
            .map_err(notify::Error::io)?;
        Ok(FileWatcher {
            watcher: Some(watcher),
            thread: Some(thread),
        })
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn wait_for(count: &AtomicU64, at_least: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if count.load(Ordering::SeqCst) >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_write_and_a_replace_by_rename_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watched.toml");
        std::fs::write(&path, "a").unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        let watcher = FileWatcher::start(&path, Duration::from_millis(50), move || {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        std::fs::write(dir.path().join("other"), "x").unwrap();
        std::fs::write(&path, "b").unwrap();
        assert!(wait_for(&count, 1), "a write was not seen");
        let before = count.load(Ordering::SeqCst);
        let tmp = dir.path().join(".watched.toml.swp");
        std::fs::write(&tmp, "c").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(wait_for(&count, before + 1), "a replace was not seen");
        drop(watcher);
    }
}
