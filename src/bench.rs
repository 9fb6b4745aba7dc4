//! `depot bench store`: a load tool for the disk core — durable appends from several producers,
//! then a sequential read-back, with the on-disk size against the raw record bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use depot_common::loadgen::LogLines;
use depot_store::{NewRecord, Store, StoreConfig};

/// Options of `depot bench store`.
#[derive(clap::Args, Debug)]
pub struct StoreBenchArgs {
    /// Records in all.
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Body bytes per record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Producer threads, each appending to its own stream.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Records per append call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Data folder (default: a fresh folder under the system temp folder, removed afterwards).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn folder_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the store benchmark and prints its figures.
pub fn store(args: &StoreBenchArgs) -> anyhow::Result<()> {
    let temp;
    let data = match &args.data {
        Some(path) => path.clone(),
        None => {
            temp = tempfile::tempdir().context("temp folder")?;
            temp.path().to_path_buf()
        }
    };
    let store = Arc::new(Store::open(&data, StoreConfig::default())?);
    let per_producer = args.records / args.producers as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let store = store.clone();
            let (size, batch) = (args.size, args.batch);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut gen = LogLines::new(p as u64 + 1);
                let bodies: Vec<Vec<u8>> = (0..batch * 16)
                    .map(|_| {
                        let mut line = Vec::new();
                        gen.next_line(size, &mut line);
                        line
                    })
                    .collect();
                let stream = format!("bench-{p}");
                let mut sent = 0u64;
                let mut last = None;
                while sent < per_producer {
                    let n = (per_producer - sent).min(batch as u64) as usize;
                    let offset = (sent as usize / batch % 16) * batch;
                    let records: Vec<NewRecord<'_>> = bodies[offset..offset + n]
                        .iter()
                        .map(|body| NewRecord {
                            level: 6,
                            source: "web-1",
                            body,
                        })
                        .collect();
                    last = Some(store.log().append(&stream, &records)?);
                    sent += n as u64;
                }
                if let Some(appended) = last {
                    store.wait_durable(appended.ticket)?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    let append_secs = started.elapsed().as_secs_f64();
    let total = per_producer * args.producers as u64;

    let started = Instant::now();
    let mut read = 0u64;
    for p in 0..args.producers {
        let stream = format!("bench-{p}");
        let mut next = 1;
        loop {
            let records = store.log().read(&stream, next, u64::MAX, 10_000)?;
            let Some(last) = records.last() else { break };
            next = last.seq + 1;
            read += records.len() as u64;
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    let commits = store.commit_stats().commits;
    store.close()?;
    drop(store);
    let raw = total * (args.size as u64 + "web-1".len() as u64);
    let disk = folder_bytes(&data.join(depot_store::DB_DIR));
    let blobs = std::fs::read_dir(data.join(depot_store::DB_DIR).join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "append: {total} records of {} B, {} producers, batch {}: {:.2} s, {:.0} records/s durable ({commits} commits)",
        args.size,
        args.producers,
        args.batch,
        append_secs,
        total as f64 / append_secs
    );
    println!(
        "read:   {read} records: {:.2} s, {:.0} records/s",
        read_secs,
        read as f64 / read_secs
    );
    println!(
        "disk:   {disk} bytes for {raw} raw bytes (body + source): {:.2}x; blob files: {blobs}",
        disk as f64 / raw as f64
    );
    anyhow::ensure!(read == total, "read back {read} of {total} records");
    Ok(())
}
