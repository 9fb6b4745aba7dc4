//! Store micro-benchmarks: append with group commit (100 B and 1 KiB records) and read-back.
//! Run: `cargo bench --bench store`. Figures go to BENCHMARKS.md.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use depot_common::loadgen;
use depot_store::{NewRecord, Store, StoreConfig};

/// Records per append call, as an ingest batch would carry them.
const BATCH: usize = 1_000;

/// Appends `records` in batches and waits until the last batch is durable.
fn append_durable(store: &Store, stream: &str, bodies: &[Vec<u8>]) {
    let mut last = None;
    for chunk in bodies.chunks(BATCH) {
        let batch: Vec<NewRecord<'_>> = chunk
            .iter()
            .map(|body| NewRecord {
                level: 6,
                source: "web-1",
                body,
            })
            .collect();
        last = Some(store.log().append(stream, &batch).expect("append"));
    }
    if let Some(appended) = last {
        store.wait_durable(appended.ticket).expect("durable");
    }
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_append_durable");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, len, count) in [("100B", 100, 200_000), ("1KiB", 1024, 50_000)] {
        let bodies = loadgen::lines(42, len, count);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(name, |b| b.iter(|| append_durable(&store, name, &bodies)));
    }
    group.finish();
}

fn bench_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let count = 1_000_000u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    append_durable(&store, "s", &loadgen::lines(42, 100, count as usize));
    group.throughput(Throughput::Elements(count));
    group.bench_function("100B_sequential", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut next = 1;
                let mut total = 0;
                while next <= count {
                    let records = store.log().read("s", next, u64::MAX, 10_000).expect("read");
                    next = records.last().expect("records").seq + 1;
                    total += records.len();
                }
                assert_eq!(total as u64, count);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_read);
criterion_main!(benches);
