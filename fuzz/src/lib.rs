//! Fuzz targets for every decoder of outside bytes in Depot, the seeds of their corpus, and a
//! coverage-free mutation engine that drives them on the stable toolchain. `cargo test` replays
//! the corpus in `fuzz/corpus/` through every target; `cargo run -p depot-fuzz --release --
//! <target> --seconds N` fuzzes one.

pub mod frames;
pub mod mutate;
pub mod seeds;
pub mod targets;

use std::path::{Path, PathBuf};

/// The corpus folder of this crate.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every file of the corpus of `target`, sorted by name.
pub fn corpus_files(target: &str) -> std::io::Result<Vec<PathBuf>> {
    let dir = corpus_root().join(target);
    let mut files = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if path.is_file() {
                    files.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    Ok(files)
}

/// A short stable name for an input (FNV-1a, hex).
pub fn input_name(data: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
