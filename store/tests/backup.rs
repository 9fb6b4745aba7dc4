//! Backup while writes go on, restore into a new folder: a consistent cut.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use depot_store::{restore, NewRecord, Store, StoreConfig};

fn record(body: &[u8]) -> NewRecord<'_> {
    NewRecord {
        level: 6,
        source: "writer",
        body,
    }
}

#[test]
fn a_backup_taken_during_writes_restores_a_contiguous_prefix_with_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("data"), StoreConfig::default()).unwrap());
    let kv = store.kv("state").unwrap();
    let big = vec![b'x'; 6_000];
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let bodies: Vec<String> = (n + 1..=n + 50).map(|i| format!("r{i}")).collect();
                let records: Vec<NewRecord<'_>> =
                    bodies.iter().map(|b| record(b.as_bytes())).collect();
                let appended = store.log().append("s", &records).unwrap();
                store.wait_durable(appended.ticket).unwrap();
                n = appended.last;
                acked.store(n, Ordering::Release);
            }
        })
    };
    for i in 0..200u32 {
        let ticket = kv.put(&i.to_be_bytes(), &big).unwrap();
        store.wait_durable(ticket).unwrap();
    }
    // Let the writer get going, then cut.
    while acked.load(Ordering::Acquire) < 2_000 {
        std::thread::yield_now();
    }
    let acked_before = acked.load(Ordering::Acquire);
    let stats = store.backup(&dir.path().join("backup")).unwrap();
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    assert!(stats.entries > 200);

    let restored_dir = dir.path().join("restored");
    let restored_stats = restore(&dir.path().join("backup"), &restored_dir).unwrap();
    assert_eq!(restored_stats.entries, stats.entries);
    let restored = Store::open(&restored_dir, StoreConfig::default()).unwrap();
    let last = restored.log().last_seq("s");
    assert!(
        last >= acked_before,
        "acknowledged before the backup: {acked_before}, restored: {last}"
    );
    let records = restored.log().read("s", 1, u64::MAX, usize::MAX).unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "a contiguous prefix");
    for r in &records {
        assert_eq!(r.body, format!("r{}", r.seq).as_bytes());
    }
    let state = restored.kv("state").unwrap();
    assert_eq!(state.entries().count(), 200);
    assert_eq!(state.get(&7u32.to_be_bytes()).unwrap().unwrap(), big);
    // The restored store takes writes and numbering continues.
    let next = restored.log().append("s", &[record(b"after")]).unwrap();
    assert_eq!(next.first, last + 1);
}
