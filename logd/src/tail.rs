//! File tailing: every line appended to a configured file becomes a record.
//!
//! The file position goes into the store with the records it ends (a store cursor), so after
//! a restart or a crash tailing resumes exactly after the last durable line: nothing skipped,
//! nothing repeated. Rotation by rename is followed (the old file is read to its end first,
//! also when the rename happened while Depot was down, if the old file is still in the same
//! folder); truncation restarts from the top. `notify` wakes the thread; a slow poll backs it up.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use depot_store::{NewRecord, Store};
use serde::Deserialize;

use crate::live::{LiveBatch, LiveFeed};
use crate::metrics::{add, LogdMetrics};
use crate::protocol;

/// How often files are checked when no notification arrives.
const POLL: Duration = Duration::from_millis(250);
/// Bytes read from a file at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Longest line kept; a longer one is cut into pieces of this size.
const MAX_LINE: usize = 1024 * 1024;
/// Leading bytes remembered per file, to notice a truncation that was refilled past the
/// old position before we looked.
const HEAD_BYTES: usize = 256;

/// `[[logd.files]]`: files to tail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// A path; `*` and `?` may stand in its last component (`/var/log/app/*.log`). Pick a
    /// pattern that does not also match rotated names (`*.log`, not `*.log*`).
    pub path: String,
    /// Stream of its lines (default: the file name without extension).
    #[serde(default)]
    pub stream: Option<String>,
    /// Level of its lines.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

/// Where tailing of one file stands, as stored in its cursor: inode and offset.
fn encode_cursor(inode: u64, offset: u64) -> Vec<u8> {
    let mut out = inode.to_be_bytes().to_vec();
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

fn decode_cursor(bytes: &[u8]) -> Option<(u64, u64)> {
    let inode = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
    let offset = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((inode, offset))
}

/// Matches a file name against a pattern with `*` (any run) and `?` (any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A configured source, checked.
#[derive(Debug, Clone)]
struct Source {
    dir: PathBuf,
    pattern: String,
    stream: Option<String>,
    level: u8,
}

impl Source {
    fn from_config(config: &FileSource) -> Result<Source, String> {
        let path = Path::new(&config.path);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(format!("file source {:?}: not a file path", config.path));
        };
        if dir.to_string_lossy().contains(['*', '?']) {
            return Err(format!(
                "file source {:?}: wildcards only in the file name",
                config.path
            ));
        }
        let level = protocol::parse_level(config.level.as_bytes()).ok_or_else(|| {
            format!(
                "file source {:?}: unknown level {:?}",
                config.path, config.level
            )
        })?;
        if let Some(stream) = &config.stream {
            protocol::check_stream(stream.as_bytes())
                .map_err(|e| format!("file source {:?}: {e}", config.path))?;
        }
        Ok(Source {
            dir: if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            },
            pattern: name.to_string(),
            stream: config.stream.clone(),
            level,
        })
    }

    fn stream_for(&self, path: &Path) -> String {
        if let Some(stream) = &self.stream {
            return stream.clone();
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("files");
        let name: String = stem
            .chars()
            .map(|c| if c == ' ' || c.is_control() { '_' } else { c })
            .collect();
        if protocol::check_stream(name.as_bytes()).is_ok() {
            name
        } else {
            "files".into()
        }
    }
}

/// One file being followed.
struct Tailed {
    path: PathBuf,
    stream: String,
    level: u8,
    /// Cursor key in the store.
    key: String,
    file: File,
    inode: u64,
    /// Offset just after the last complete line stored.
    offset: u64,
    /// Bytes read after `offset` that do not end in a newline yet.
    partial: Vec<u8>,
    /// The file's first bytes (up to `HEAD_BYTES`) as stored.
    head: Vec<u8>,
}

/// Reads up to `len` bytes from the start of `file`.
fn read_head(file: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.by_ref()
        .take(len.min(HEAD_BYTES as u64))
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Validates the configured sources.
pub fn check_sources(sources: &[FileSource]) -> Result<(), String> {
    sources
        .iter()
        .map(Source::from_config)
        .collect::<Result<Vec<_>, _>>()
        .map(|_| ())
}

/// The tailing thread.
pub struct Tailer {
    sources: Vec<Source>,
    files: HashMap<PathBuf, Tailed>,
    store: Arc<Store>,
    live: LiveFeed,
    metrics: Arc<LogdMetrics>,
}

impl Tailer {
    /// A tailer for `sources` (validated by [`check_sources`]).
    pub fn new(
        sources: &[FileSource],
        store: Arc<Store>,
        live: LiveFeed,
        metrics: Arc<LogdMetrics>,
    ) -> Result<Self, String> {
        let sources = sources
            .iter()
            .map(Source::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tailer {
            sources,
            files: HashMap::new(),
            store,
            live,
            metrics,
        })
    }

    /// Follows the files until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        });
        let mut watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "tail: no file notifications, polling only");
                None
            }
        };
        if let Some(watcher) = watcher.as_mut() {
            use notify::Watcher;
            for source in &self.sources {
                if let Err(e) = watcher.watch(&source.dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %source.dir.display(), error = %e, "tail: cannot watch folder, polling it");
                }
            }
        }
        while !stop.load(Ordering::Acquire) {
            self.scan();
            let _ = rx.recv_timeout(POLL);
            while rx.try_recv().is_ok() {}
        }
        self.scan();
    }

    fn scan(&mut self) {
        for index in 0..self.sources.len() {
            let source = self.sources[index].clone();
            let Ok(entries) = std::fs::read_dir(&source.dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| glob_match(&source.pattern, n))
                })
                .map(|e| e.path())
                .collect();
            names.sort();
            for path in names {
                if !self.files.contains_key(&path) {
                    match self.open(&source, &path) {
                        Ok(tailed) => {
                            self.files.insert(path.clone(), tailed);
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "tail: cannot open");
                            continue;
                        }
                    }
                }
                if let Err(e) = self.follow(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "tail: read failed");
                }
            }
        }
    }

    /// Opens a newly seen file where its cursor says; a rotated-away predecessor in the same
    /// folder is read to its end first.
    fn open(&mut self, source: &Source, path: &Path) -> std::io::Result<Tailed> {
        let stream = source.stream_for(path);
        let key = format!("file:{}", path.display());
        let cursor = self
            .store
            .log()
            .cursor(&stream, &key)
            .ok()
            .flatten()
            .and_then(|c| decode_cursor(&c));
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        let mut tailed = Tailed {
            path: path.to_path_buf(),
            stream,
            level: source.level,
            key,
            file,
            inode,
            offset: 0,
            partial: Vec::new(),
            head: Vec::new(),
        };
        match cursor {
            Some((old_inode, offset)) if old_inode == inode => {
                tailed.offset = offset;
                tailed.head = read_head(&mut tailed.file, offset)?;
            }
            Some((old_inode, offset)) => {
                if let Some(old) = find_inode(&source.dir, old_inode) {
                    tracing::info!(from = %old.display(), "tail: reading the rest of a file rotated while stopped");
                    let mut previous = Tailed {
                        file: File::open(&old)?,
                        inode: old_inode,
                        offset,
                        partial: Vec::new(),
                        head: Vec::new(),
                        path: old,
                        stream: tailed.stream.clone(),
                        level: tailed.level,
                        key: tailed.key.clone(),
                    };
                    self.read_to_end(&mut previous, true)?;
                }
            }
            None => {}
        }
        tracing::info!(path = %path.display(), stream = %tailed.stream, offset = tailed.offset, "tail: following");
        Ok(tailed)
    }

    fn follow(&mut self, path: &Path) -> std::io::Result<()> {
        let Some(mut tailed) = self.files.remove(path) else {
            return Ok(());
        };
        let result = self.follow_file(&mut tailed);
        self.files.insert(path.to_path_buf(), tailed);
        result
    }

    fn follow_file(&mut self, tailed: &mut Tailed) -> std::io::Result<()> {
        let current = match std::fs::metadata(&tailed.path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(meta) = &current {
            if meta.ino() != tailed.inode {
                // Rotated: finish the old file through the handle we hold, then start the new one.
                self.read_to_end(tailed, true)?;
                tailed.file = File::open(&tailed.path)?;
                tailed.inode = tailed.file.metadata()?.ino();
                tailed.offset = 0;
                tailed.partial.clear();
                tailed.head.clear();
            }
        }
        let len = tailed.file.metadata()?.len();
        let shrunk = len < tailed.offset + tailed.partial.len() as u64;
        let rewritten = !shrunk
            && !tailed.head.is_empty()
            && read_head(&mut tailed.file, tailed.head.len() as u64)? != tailed.head;
        if shrunk || rewritten {
            tracing::info!(path = %tailed.path.display(), "tail: file truncated, reading from the top");
            tailed.offset = 0;
            tailed.partial.clear();
            tailed.head.clear();
        }
        self.read_to_end(tailed, false)
    }

    /// Reads from the tracked position to the end of the file, storing complete lines (and the
    /// last incomplete one too when `final_read`, as a rotated file gets no more bytes).
    fn read_to_end(&mut self, tailed: &mut Tailed, final_read: bool) -> std::io::Result<()> {
        tailed
            .file
            .seek(SeekFrom::Start(tailed.offset + tailed.partial.len() as u64))?;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = tailed.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            tailed.partial.extend_from_slice(&buf[..n]);
            self.store_lines(tailed, false);
        }
        if final_read && !tailed.partial.is_empty() {
            self.store_lines(tailed, true);
        }
        Ok(())
    }

    /// Stores the complete lines in `tailed.partial` (all of it when `everything`).
    fn store_lines(&mut self, tailed: &mut Tailed, everything: bool) {
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut consumed = 0;
        let data = &tailed.partial;
        while consumed < data.len() {
            let rest = &data[consumed..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) if end <= MAX_LINE => {
                    let line = &rest[..end];
                    lines.push(line.strip_suffix(b"\r").unwrap_or(line));
                    consumed += end + 1;
                }
                _ if rest.len() > MAX_LINE => {
                    lines.push(&rest[..MAX_LINE]);
                    consumed += MAX_LINE;
                }
                _ if everything => {
                    lines.push(rest);
                    consumed = data.len();
                }
                _ => break,
            }
        }
        if lines.is_empty() {
            return;
        }
        let source = tailed.path.display().to_string();
        let records: Vec<NewRecord<'_>> = lines
            .iter()
            .map(|body| NewRecord {
                level: tailed.level,
                source: &source,
                body,
            })
            .collect();
        let end = tailed.offset + consumed as u64;
        let cursor = encode_cursor(tailed.inode, end);
        match self
            .store
            .log()
            .append_with_cursor(&tailed.stream, &records, &tailed.key, &cursor)
        {
            Ok(appended) => {
                add(&self.metrics.stored_files, records.len() as u64);
                let bodies = lines.iter().map(|l| zmq::Message::from(*l)).collect();
                self.live.send(LiveBatch {
                    stream: tailed.stream.clone(),
                    level: tailed.level,
                    source,
                    first_seq: appended.first,
                    ts_ns: appended.ts_ns,
                    bodies,
                    packed: false,
                });
                if tailed.head.len() < HEAD_BYTES && tailed.offset < HEAD_BYTES as u64 {
                    let take = consumed.min(HEAD_BYTES - tailed.offset as usize);
                    tailed.head.extend_from_slice(&tailed.partial[..take]);
                }
                tailed.offset = end;
                tailed.partial.drain(..consumed);
            }
            Err(e) => {
                // Position unchanged: the same lines are tried again on the next scan.
                add(&self.metrics.store_errors, records.len() as u64);
                tracing::error!(path = %tailed.path.display(), error = %e, "tail: store refused lines");
            }
        }
    }
}

fn find_inode(dir: &Path, inode: u64) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.metadata().is_ok_and(|m| m.is_file() && m.ino() == inode))
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_file_names() {
        assert!(glob_match("*.log", "app.log"));
        assert!(!glob_match("*.log", "app.log.1"));
        assert!(glob_match("app-?.log", "app-1.log"));
        assert!(glob_match("app.log", "app.log"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*b", "ac"));
        assert!(glob_match("a*b*c", "axxbyyc"));
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(7, 99)), Some((7, 99)));
        assert_eq!(decode_cursor(b"short"), None);
    }

    #[test]
    fn sources_are_checked() {
        let ok = FileSource {
            path: "/var/log/*.log".into(),
            stream: None,
            level: "warn".into(),
        };
        assert!(check_sources(std::slice::from_ref(&ok)).is_ok());
        let source = Source::from_config(&ok).unwrap();
        assert_eq!(
            source.stream_for(Path::new("/var/log/my app.log")),
            "my_app"
        );
        let bad_level = FileSource {
            level: "loud".into(),
            ..ok.clone()
        };
        assert!(check_sources(&[bad_level]).is_err());
        let bad_dir = FileSource {
            path: "/var/*/x.log".into(),
            ..ok.clone()
        };
        assert!(check_sources(&[bad_dir]).is_err());
        let bad_stream = FileSource {
            stream: Some("a b".into()),
            ..ok
        };
        assert!(check_sources(&[bad_stream]).is_err());
    }
}
