#![allow(clippy::unwrap_used)]
//! Integration tests of the log through the public API: round trips, reads at block edges,
//! reopen, time queries, retention under load, durability reporting, the folder lock, the
//! no-blob rule, torn tails and corruption.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_store::{
    Durability, NewRecord, Record, Retention, Seq, Store, StoreConfig, StoreError, DB_DIR,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// A record as the test keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned {
    level: u8,
    source: String,
    body: Vec<u8>,
}

impl Owned {
    fn new(level: u8, source: &str, body: impl Into<Vec<u8>>) -> Owned {
        Owned {
            level,
            source: source.to_owned(),
            body: body.into(),
        }
    }
}

fn as_new(batch: &[Owned]) -> Vec<NewRecord<'_>> {
    batch
        .iter()
        .map(|r| NewRecord {
            level: r.level,
            source: &r.source,
            body: &r.body,
        })
        .collect()
}

/// Opens the store. Right after a close in this process sled may still hold its own lock on
/// its file for a moment (see `reopen_in_process_after_retention_emptied_the_log`), so that one
/// error is retried here.
fn open(dir: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir, StoreConfig::default()) {
            Ok(store) => return store,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening the store in {}: {e}", dir.display()),
        }
    }
}

fn read_all(store: &Store, stream: &str) -> Vec<Record> {
    store.log().read(stream, 0, Seq::MAX, usize::MAX).unwrap()
}

/// Checks `got` against the model, whose element `i` has sequence `first + i`.
fn assert_matches(got: &[Record], model: &[Owned], first: Seq, what: &str) {
    assert_eq!(got.len(), model.len(), "{what}: record count");
    for (i, (r, m)) in got.iter().zip(model).enumerate() {
        let seq = first + i as u64;
        assert_eq!(r.seq, seq, "{what}: sequence at index {i}");
        assert_eq!(r.level, m.level, "{what}: level of {seq}");
        assert_eq!(r.source, m.source, "{what}: source of {seq}");
        assert!(
            r.body == m.body,
            "{what}: body of {seq} differs ({} vs {} bytes)",
            r.body.len(),
            m.body.len()
        );
    }
    for pair in got.windows(2) {
        assert!(
            pair[0].ts_ns <= pair[1].ts_ns,
            "{what}: timestamps go backwards at {}",
            pair[1].seq
        );
    }
}

/// A text-like body: compresses, like real logs.
fn text_body(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "GET ",
        "/api/v1/items ",
        "200 ",
        "user=alice ",
        "latency_ms=",
        "17 ",
        "ok ",
        "\n",
    ];
    let mut body = Vec::with_capacity(len + 16);
    while body.len() < len {
        body.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
    }
    body.truncate(len);
    body
}

fn random_body(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut body = vec![0u8; len];
    rng.fill_bytes(&mut body);
    body
}

/// Appends `batch` with one `append_at` and waits until it is durable (so it ends a block).
/// Appends a batch as one sealed block and waits until it is durable.
fn append_durable(store: &Store, stream: &str, ts: u64, batch: &[Owned]) -> (Seq, Seq) {
    let done = store.log().append_at(stream, ts, &as_new(batch)).unwrap();
    let sealed = store.log().seal_open_block(stream).unwrap();
    store.wait_durable(sealed).unwrap();
    (done.first, done.last)
}

/// Simple records of about 50 bytes: `"{tag} {i}"` padded.
fn small_batch(tag: &str, start: usize, n: usize) -> Vec<Owned> {
    (start..start + n)
        .map(|i| {
            Owned::new(
                (i % 8) as u8,
                "host-a",
                format!("{tag} record {i:06} padding padding padding"),
            )
        })
        .collect()
}

fn is_corrupt(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupt { .. })
}

/// Opens sled directly on the store's database (the store must be dropped), retrying while
/// sled's own file lock is still being released.
fn open_sled(dir: &Path) -> sled::Db {
    let path = dir.join(DB_DIR);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(&path) {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open sled at {}: {e}", path.display()),
        }
    }
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join(DB_DIR).join("blobs")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading blobs folder: {e}"),
    }
}

#[test]
fn round_trip_across_many_blocks_with_empty_and_huge_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut rng = StdRng::seed_from_u64(1);
    let mut model: Vec<Owned> = Vec::new();
    let total = 3_000;
    let mut last_ticket = None;
    let mut batches = 0u32;
    while model.len() < total {
        let n = rng.gen_range(1..=100).min(total - model.len());
        let start = model.len();
        let batch: Vec<Owned> = (start..start + n)
            .map(|i| {
                let body = if i == 1_500 {
                    random_body(&mut rng, 1024 * 1024)
                } else if i.is_multiple_of(50) {
                    Vec::new()
                } else if i.is_multiple_of(7) {
                    let len = rng.gen_range(1..3_000);
                    random_body(&mut rng, len)
                } else {
                    let len = rng.gen_range(1..600);
                    text_body(&mut rng, len)
                };
                let source = if i.is_multiple_of(3) {
                    String::new()
                } else {
                    format!("host-{}", i % 5)
                };
                Owned {
                    level: (i % 8) as u8,
                    source,
                    body,
                }
            })
            .collect();
        let done = store.log().append("rt", &as_new(&batch)).unwrap();
        assert_eq!(done.first, start as u64 + 1);
        assert_eq!(done.last, (start + n) as u64);
        model.extend(batch);
        batches += 1;
        if batches.is_multiple_of(5) {
            store.wait_durable(done.ticket).unwrap();
        }
        last_ticket = Some(done.ticket);
    }

    // Before everything is durable: what was appended is readable at once.
    assert_matches(&read_all(&store, "rt"), &model, 1, "before commit");
    store.wait_durable(last_ticket.unwrap()).unwrap();
    assert_matches(&read_all(&store, "rt"), &model, 1, "after commit");

    // Paged reads cover the stream exactly.
    let mut paged = Vec::new();
    let mut next = 1;
    loop {
        let page = store.log().read("rt", next, Seq::MAX, 97).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 97);
        next = page.last().unwrap().seq + 1;
        paged.extend(page);
    }
    assert_matches(&paged, &model, 1, "paged");

    let stats = store.log().stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].name, "rt");
    assert_eq!(
        (stats[0].first_seq, stats[0].last_seq, stats[0].records),
        (1, 3_000, 3_000)
    );
    assert!(
        stats[0].blocks >= 20,
        "expected many blocks, got {}",
        stats[0].blocks
    );
    assert!(stats[0].raw_bytes > 1024 * 1024);

    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.log().streams(), vec!["rt".to_string()]);
    assert_eq!(
        (store.log().first_seq("rt"), store.log().last_seq("rt")),
        (1, 3_000)
    );
    assert_matches(&read_all(&store, "rt"), &model, 1, "after reopen");
    let huge = store.log().read("rt", 1_501, 1_501, 10).unwrap();
    assert_eq!(huge.len(), 1);
    assert_eq!(huge[0].body.len(), 1024 * 1024);
    assert!(huge[0].body == model[1_500].body);
}

#[test]
fn reads_with_from_to_limit_at_block_edges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sizes = [1usize, 5, 17, 3, 40, 1, 1, 9];
    let mut model = Vec::new();
    for (b, &n) in sizes.iter().enumerate() {
        let batch = small_batch(&format!("b{b}"), model.len(), n);
        let (first, last) = append_durable(&store, "edges", 1_000 + b as u64, &batch);
        assert_eq!(
            (first, last),
            (model.len() as u64 + 1, (model.len() + n) as u64)
        );
        model.extend(batch);
    }
    // Each durable batch ended a block: the committer seals partial blocks before a flush.
    assert_eq!(store.log().stats()[0].blocks, sizes.len() as u64);
    // One more batch that may stay in the open block.
    let tail = small_batch("open", model.len(), 4);
    store
        .log()
        .append_at("edges", 9_999, &as_new(&tail))
        .unwrap();
    model.extend(tail);

    let n = model.len() as u64;
    let check = |store: &Store, what: &str| {
        for from in 0..=n + 2 {
            for to in from.saturating_sub(1)..=n + 2 {
                for limit in [0usize, 1, 2, 3, 7, usize::MAX] {
                    let got = store.log().read("edges", from, to, limit).unwrap();
                    let lo = from.max(1);
                    let hi = to.min(n);
                    let expected: Vec<Owned> = if lo > hi {
                        Vec::new()
                    } else {
                        model[(lo - 1) as usize..hi as usize]
                            .iter()
                            .take(limit)
                            .cloned()
                            .collect()
                    };
                    assert_matches(
                        &got,
                        &expected,
                        lo,
                        &format!("{what} read({from}, {to}, {limit})"),
                    );
                }
            }
        }
        // Wide bounds.
        let all = store.log().read("edges", 0, Seq::MAX, usize::MAX).unwrap();
        assert_matches(&all, &model, 1, what);
    };
    check(&store, "live");
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    check(&store, "reopened");
    // An unknown stream reads as empty.
    assert!(store
        .log()
        .read("nope", 0, Seq::MAX, 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        (store.log().first_seq("nope"), store.log().last_seq("nope")),
        (1, 0)
    );
}

#[test]
fn sequences_continue_after_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut model_a = Vec::new();
    let mut model_b = Vec::new();
    for cycle in 0..4 {
        let store = open(dir.path());
        assert_eq!(
            store.log().last_seq("a"),
            model_a.len() as u64,
            "cycle {cycle}"
        );
        assert_eq!(
            store.log().last_seq("b"),
            model_b.len() as u64,
            "cycle {cycle}"
        );
        let a = small_batch(&format!("a{cycle}"), model_a.len(), 10 + cycle);
        let done = store.log().append("a", &as_new(&a)).unwrap();
        assert_eq!(done.first, model_a.len() as u64 + 1);
        model_a.extend(a);
        let b = small_batch(&format!("b{cycle}"), model_b.len(), 3);
        let done = store.log().append("b", &as_new(&b)).unwrap();
        assert_eq!(done.first, model_b.len() as u64 + 1);
        model_b.extend(b);
        assert_matches(&read_all(&store, "a"), &model_a, 1, "a");
        assert_matches(&read_all(&store, "b"), &model_b, 1, "b");
        assert_eq!(
            store.log().streams(),
            vec!["a".to_string(), "b".to_string()]
        );
        // Alternate an explicit close with a plain drop (which closes too).
        if cycle.is_multiple_of(2) {
            store.close().unwrap();
            assert!(matches!(
                store.log().append("a", &as_new(&model_a[..1])),
                Err(StoreError::Closed)
            ));
        }
        drop(store);
    }
    let store = open(dir.path());
    assert_matches(&read_all(&store, "a"), &model_a, 1, "a final");
    assert_matches(&read_all(&store, "b"), &model_b, 1, "b final");
}

/// The model of a timestamped stream: (seq, ts) in order.
fn expected_seq_at(model: &[(Seq, u64)], ts: u64, next: Seq) -> Seq {
    model
        .iter()
        .find(|(_, t)| *t >= ts)
        .map_or(next, |(s, _)| *s)
}

#[test]
fn time_range_reads_and_seq_at_time_with_controlled_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // (requested ts, records, wait durable after)
    let plan: [(u64, usize, bool); 9] = [
        (1_000, 3, true),
        (2_000, 2, false),
        (2_000, 1, true),
        (1_500, 2, true), // backwards: clamped to 2_000
        (5_000, 4, false),
        (0, 1, true), // backwards: clamped to 5_000
        (9_000, 2, true),
        (9_000, 30, true),
        (12_000, 5, false),
    ];
    let mut model: Vec<(Seq, u64)> = Vec::new();
    let mut bodies = Vec::new();
    let mut last_ts = 0;
    for (i, &(ts, n, durable)) in plan.iter().enumerate() {
        let batch = small_batch(&format!("t{i}"), bodies.len(), n);
        let done = store.log().append_at("time", ts, &as_new(&batch)).unwrap();
        if durable {
            store.wait_durable(done.ticket).unwrap();
        }
        last_ts = last_ts.max(ts);
        for seq in done.first..=done.last {
            model.push((seq, last_ts));
        }
        bodies.extend(batch);
    }
    let probes = [
        0,
        1,
        999,
        1_000,
        1_001,
        1_500,
        1_999,
        2_000,
        2_001,
        4_999,
        5_000,
        5_001,
        8_999,
        9_000,
        9_001,
        12_000,
        12_001,
        u64::MAX,
    ];
    let check = |store: &Store, what: &str| {
        let all = read_all(store, "time");
        assert_matches(&all, &bodies, 1, what);
        let stamps: Vec<(Seq, u64)> = all.iter().map(|r| (r.seq, r.ts_ns)).collect();
        assert_eq!(stamps, model, "{what}: timestamps (clamped to be monotone)");
        let next = model.len() as u64 + 1;
        for &p in &probes {
            assert_eq!(
                store.log().seq_at_time("time", p).unwrap(),
                expected_seq_at(&model, p, next),
                "{what}: seq_at_time({p})"
            );
            for &q in &probes {
                for limit in [1usize, 2, 5, usize::MAX] {
                    let got = store.log().read_time_range("time", p, q, limit).unwrap();
                    let expected: Vec<(Seq, u64)> = model
                        .iter()
                        .filter(|(_, t)| *t >= p && *t <= q)
                        .take(limit)
                        .copied()
                        .collect();
                    let got: Vec<(Seq, u64)> = got.iter().map(|r| (r.seq, r.ts_ns)).collect();
                    assert_eq!(got, expected, "{what}: read_time_range({p}, {q}, {limit})");
                }
            }
        }
        assert_eq!(store.log().seq_at_time("unknown", 5).unwrap(), 1);
        assert!(store
            .log()
            .read_time_range("unknown", 0, u64::MAX, 10)
            .unwrap()
            .is_empty());
    };
    check(&store, "live");
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    check(&store, "reopened");
    // The last timestamp survives a reopen: an earlier one is still raised to it.
    let done = store
        .log()
        .append_at("time", 100, &as_new(&small_batch("late", 0, 1)))
        .unwrap();
    let got = store.log().read("time", done.first, done.last, 10).unwrap();
    assert_eq!(got[0].ts_ns, 12_000);
}

/// Record timestamps never decrease within a stream (see `Record::ts_ns`), also when
/// retention removed every record and the store was reopened: sequences continue there
/// (`deleted_through`), the timestamp floor must too.
#[test]
fn timestamps_stay_monotone_after_retention_empties_the_stream_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append_durable(&store, "mono", 50_000, &small_batch("m", 0, 3));
    let everything = Retention {
        max_age: None,
        max_bytes: Some(0),
    };
    store.log().apply_retention("mono", everything, 0).unwrap();
    assert_eq!(store.log().first_seq("mono"), 4);
    // Without a reopen the floor holds.
    let (seq, _) = append_durable(&store, "mono", 10, &small_batch("m", 3, 1));
    assert_eq!(
        store.log().read("mono", seq, seq, 1).unwrap()[0].ts_ns,
        50_000
    );
    store.log().apply_retention("mono", everything, 0).unwrap();
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    let (seq, _) = append_durable(&store, "mono", 10, &small_batch("m", 4, 1));
    assert_eq!(seq, 5, "numbering continues");
    assert_eq!(
        store.log().read("mono", seq, seq, 1).unwrap()[0].ts_ns,
        50_000,
        "after a reopen the stream's timestamps went back"
    );
}

/// Deterministic body for the record with sequence `seq` of the retention tests.
fn seq_body(seq: Seq) -> Vec<u8> {
    let mut body = format!("seq={seq};").into_bytes();
    let len = 100 + (seq % 200) as usize;
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while body.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push(b'a' + (x % 16) as u8);
    }
    body
}

/// Reads `first..=last` and checks it is complete, contiguous and has the expected bodies.
fn assert_contiguous(store: &Store, stream: &str, what: &str) {
    let first = store.log().first_seq(stream);
    let last = store.log().last_seq(stream);
    assert!(first <= last + 1, "{what}: first {first} > last {last} + 1");
    let got = store.log().read(stream, first, last, usize::MAX).unwrap();
    assert_eq!(
        got.len() as u64,
        last + 1 - first,
        "{what}: records in {first}..={last}"
    );
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.seq, first + i as u64, "{what}: gap");
        assert!(r.body == seq_body(r.seq), "{what}: body of {}", r.seq);
    }
}

/// Appends records with bodies `seq_body(seq)` to `stream` until `stop`, one writer only.
fn spawn_writer(
    store: Arc<Store>,
    stream: &'static str,
    stop: Arc<AtomicBool>,
    clock: Option<Arc<AtomicU64>>,
) -> std::thread::JoinHandle<Option<depot_store::Ticket>> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(7);
        let mut next: Seq = store.log().last_seq(stream) + 1;
        let mut last_ticket = None;
        let mut batches = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let n = rng.gen_range(1..=40);
            let bodies: Vec<Vec<u8>> = (next..next + n).map(seq_body).collect();
            let batch: Vec<NewRecord<'_>> = bodies
                .iter()
                .map(|b| NewRecord {
                    level: 6,
                    source: "writer",
                    body: b,
                })
                .collect();
            let done = match &clock {
                Some(clock) => {
                    let ts = clock.fetch_add(1_000_000, Ordering::SeqCst);
                    store.log().append_at(stream, ts, &batch).unwrap()
                }
                None => store.log().append(stream, &batch).unwrap(),
            };
            assert_eq!(
                (done.first, done.last),
                (next, next + n - 1),
                "writer's sequences"
            );
            next += n;
            batches += 1;
            if batches.is_multiple_of(8) {
                store.wait_durable(done.ticket).unwrap();
            }
            // A few MB in all: enough blocks for retention to work on.
            std::thread::sleep(Duration::from_micros(500));
            last_ticket = Some(done.ticket);
        }
        last_ticket
    })
}

#[test]
fn retention_by_bytes_while_appending_keeps_sequences_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(store.clone(), "r", stop.clone(), None);
    let max_bytes = 64 * 1024;
    let started = Instant::now();
    let mut first_seen = 1;
    let mut removed = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        let outcome = store
            .log()
            .apply_retention(
                "r",
                Retention {
                    max_age: None,
                    max_bytes: Some(max_bytes),
                },
                depot_store::now_ns(),
            )
            .unwrap();
        removed += outcome.records;
        let first = store.log().first_seq("r");
        assert!(
            first >= first_seen,
            "first_seq went back from {first_seen} to {first}"
        );
        first_seen = first;
        // What is left reads contiguously from first_seq (the writer only adds at the end).
        let got = store.log().read("r", first, Seq::MAX, 2_000).unwrap();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.seq, first + i as u64, "gap after retention");
            assert!(r.body == seq_body(r.seq));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let last_ticket = writer.join().unwrap().unwrap();
    store.wait_durable(last_ticket).unwrap();
    // Quiet now: seal the open block, so retention can remove every record.
    let sealed = store.log().seal_open_block("r").unwrap();
    store.wait_durable(sealed).unwrap();
    assert!(removed > 0, "retention never removed anything");
    assert_eq!(store.log().first_seq("r"), 1 + removed);

    // Quiet now (everything sealed): a pass brings the stream under the limit.
    store
        .log()
        .apply_retention(
            "r",
            Retention {
                max_age: None,
                max_bytes: Some(max_bytes),
            },
            depot_store::now_ns(),
        )
        .unwrap();
    let stats = store.log().stats();
    assert!(stats[0].stored_bytes <= max_bytes, "{stats:?}");
    assert!(
        stats[0].records > 0,
        "the newest blocks within the limit stay: {stats:?}"
    );
    assert_contiguous(&store, "r", "after writer stopped");

    // Removing everything keeps the numbering.
    let last = store.log().last_seq("r");
    let outcome = store
        .log()
        .apply_retention(
            "r",
            Retention {
                max_age: None,
                max_bytes: Some(0),
            },
            depot_store::now_ns(),
        )
        .unwrap();
    assert!(outcome.blocks > 0);
    assert_eq!(
        (store.log().first_seq("r"), store.log().last_seq("r")),
        (last + 1, last)
    );
    assert_eq!(store.log().stats()[0].records, 0);
    assert!(read_all(&store, "r").is_empty());
    let store = Arc::into_inner(store).unwrap();
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(
        (store.log().first_seq("r"), store.log().last_seq("r")),
        (last + 1, last),
        "after reopen"
    );
    let body = seq_body(last + 1);
    let done = store
        .log()
        .append(
            "r",
            &[NewRecord {
                level: 1,
                source: "",
                body: &body,
            }],
        )
        .unwrap();
    assert_eq!((done.first, done.last), (last + 1, last + 1));
    assert_contiguous(&store, "r", "after emptying and appending");
}

#[test]
fn retention_by_age_while_appending_with_a_controlled_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    // Each batch is stamped 1 ms after the previous one.
    let clock = Arc::new(AtomicU64::new(1_000_000_000));
    let writer = spawn_writer(store.clone(), "aged", stop.clone(), Some(clock.clone()));
    let max_age = Duration::from_millis(200);
    let policy = Retention {
        max_age: Some(max_age),
        max_bytes: None,
    };
    let started = Instant::now();
    let mut first_seen = 1;
    let mut removed = 0;
    while started.elapsed() < Duration::from_millis(1_000) {
        let now = clock.load(Ordering::SeqCst);
        let cutoff = now - max_age.as_nanos() as u64;
        // Records stamped at or after the cutoff must all survive the pass.
        let keep_from = store.log().seq_at_time("aged", cutoff).unwrap();
        removed += store
            .log()
            .apply_retention("aged", policy, now)
            .unwrap()
            .records;
        let first = store.log().first_seq("aged");
        assert!(first >= first_seen);
        assert!(
            first <= keep_from,
            "removed records newer than the cutoff: first {first} > {keep_from}"
        );
        first_seen = first;
        let got = store.log().read("aged", first, Seq::MAX, 500).unwrap();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.seq, first + i as u64, "gap after retention");
            assert!(r.body == seq_body(r.seq));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let last_ticket = writer.join().unwrap().unwrap();
    store.wait_durable(last_ticket).unwrap();
    // Quiet now: seal the open block, so retention can remove every record.
    let sealed = store.log().seal_open_block("aged").unwrap();
    store.wait_durable(sealed).unwrap();
    assert!(removed > 0, "age retention never removed anything");
    assert_contiguous(&store, "aged", "after writer stopped");
    // Far in the future everything sealed is older than the limit.
    let later = clock.load(Ordering::SeqCst) + 10 * max_age.as_nanos() as u64;
    store.log().apply_retention("aged", policy, later).unwrap();
    let last = store.log().last_seq("aged");
    assert_eq!(store.log().first_seq("aged"), last + 1);
    let done = store
        .log()
        .append(
            "aged",
            &[NewRecord {
                level: 0,
                source: "",
                body: &seq_body(last + 1),
            }],
        )
        .unwrap();
    assert_eq!(done.first, last + 1);
    assert_contiguous(&store, "aged", "after emptying");
}

#[test]
fn retention_by_age_removes_exactly_the_blocks_older_than_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // One block per durable batch, batch b stamped b seconds.
    let mut firsts = Vec::new();
    for b in 1..=10u64 {
        let (first, _) = append_durable(&store, "age", b * 1_000_000_000, &small_batch("x", 0, 5));
        firsts.push(first);
    }
    let policy = |secs| Retention {
        max_age: Some(Duration::from_secs(secs)),
        max_bytes: None,
    };
    // now = 11 s, max age 5 s: cutoff 6 s; blocks stamped 1..=5 s are older.
    let outcome = store
        .log()
        .apply_retention("age", policy(5), 11_000_000_000)
        .unwrap();
    assert_eq!((outcome.blocks, outcome.records), (5, 25));
    assert_eq!(store.log().first_seq("age"), firsts[5]);
    // A block stamped exactly at the cutoff stays.
    let outcome = store
        .log()
        .apply_retention("age", policy(5), 12_000_000_000)
        .unwrap();
    assert_eq!((outcome.blocks, outcome.records), (1, 5));
    assert_eq!(store.log().first_seq("age"), firsts[6]);
    // Nothing is older: nothing removed; an unknown stream is a no-op.
    assert_eq!(
        store
            .log()
            .apply_retention("age", policy(500), 12_000_000_000)
            .unwrap()
            .blocks,
        0
    );
    assert_eq!(
        store
            .log()
            .apply_retention("none", policy(0), u64::MAX)
            .unwrap()
            .blocks,
        0
    );
    // Bytes: the stream is under a generous limit, nothing removed.
    let stored = store.log().stats()[0].stored_bytes;
    let by_bytes = Retention {
        max_age: None,
        max_bytes: Some(stored),
    };
    assert_eq!(
        store
            .log()
            .apply_retention("age", by_bytes, 0)
            .unwrap()
            .blocks,
        0
    );
    // One byte less removes exactly the oldest block.
    let by_bytes = Retention {
        max_age: None,
        max_bytes: Some(stored - 1),
    };
    let outcome = store.log().apply_retention("age", by_bytes, 0).unwrap();
    assert_eq!((outcome.blocks, outcome.records), (1, 5));
    assert_eq!(store.log().stats()[0].stored_bytes, stored - outcome.bytes);
    assert_eq!(store.log().first_seq("age"), firsts[7]);
}

#[test]
fn wait_durable_and_durability_of() {
    let dir = tempfile::tempdir().unwrap();
    // A long interval keeps the second write buffered long enough to see it.
    let config = StoreConfig {
        commit_interval: Duration::from_millis(1_500),
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    assert_eq!(store.durability(), Durability::PowerLoss);
    let batch = small_batch("d", 0, 3);
    // The first write after a quiet period is committed at once.
    let first = store.log().append("d", &as_new(&batch)).unwrap();
    store.wait_durable(first.ticket).unwrap();
    assert_eq!(store.durability_of(first.ticket), Durability::PowerLoss);
    let second = store.log().append("d", &as_new(&batch)).unwrap();
    assert!(second.ticket > first.ticket);
    assert_eq!(store.durability_of(second.ticket), Durability::Buffered);
    assert!(!store
        .wait_durable_timeout(second.ticket, Duration::from_millis(10))
        .unwrap());
    assert!(store
        .wait_durable_timeout(second.ticket, Duration::from_secs(10))
        .unwrap());
    assert_eq!(store.durability_of(second.ticket), Durability::PowerLoss);
    // Older tickets stay durable.
    assert_eq!(store.durability_of(first.ticket), Durability::PowerLoss);
    let stats = store.commit_stats();
    // (`commits` is counted just after the watermark moves, so it may lag a waiter.)
    assert!(
        stats.durable_ticket >= second.ticket.get() && stats.issued_ticket >= second.ticket.get(),
        "{stats:?}"
    );
    store.close().unwrap();
    assert!(matches!(
        store.log().append("d", &as_new(&batch)),
        Err(StoreError::Closed)
    ));
    store.wait_durable(second.ticket).unwrap();
    drop(store);

    // Without sync, a commit survives a process crash but not a power loss.
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        sync: false,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let done = store.log().append("d", &as_new(&batch)).unwrap();
    store.wait_durable(done.ticket).unwrap();
    assert_eq!(store.durability_of(done.ticket), Durability::ProcessCrash);
}

#[tokio::test]
async fn async_durable_returns() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_interval: Duration::from_millis(300),
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let batch = small_batch("async", 0, 2);
    let mut tickets = Vec::new();
    for _ in 0..5 {
        let done = store.log().append("async", &as_new(&batch)).unwrap();
        tickets.push(done.ticket);
    }
    for ticket in &tickets {
        store.durable(*ticket).await.unwrap();
        assert_eq!(store.durability_of(*ticket), Durability::PowerLoss);
    }
    // An already durable ticket returns at once.
    store.durable(tickets[0]).await.unwrap();
    store.close().unwrap();
}

#[test]
fn second_open_of_the_same_folder_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    match Store::open(dir.path(), StoreConfig::default()) {
        Err(StoreError::Locked { path, holder }) => {
            assert_eq!(path, dir.path());
            assert_eq!(holder, format!(" (pid {})", std::process::id()));
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second store opened the same folder"),
    }
    let done = store
        .log()
        .append("x", &as_new(&small_batch("x", 0, 1)))
        .unwrap();
    store.wait_durable(done.ticket).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.log().last_seq("x"), 1);
}

#[test]
fn no_blob_files_after_50_mib_with_large_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut rng = StdRng::seed_from_u64(50);
    let mut written = 0usize;
    let mut big = Vec::new();
    let mut last = None;
    let mut i = 0u64;
    while written < 50 * 1024 * 1024 {
        let stream = ["big0", "big1", "big2"][(i % 3) as usize];
        let batch: Vec<Owned> = match i % 10 {
            0 => {
                let len = [1024 * 1024, 3 * 1024 * 1024, 200 * 1024][(i / 10 % 3) as usize];
                vec![Owned::new(3, "big", random_body(&mut rng, len))]
            }
            1..=5 => (0..rng.gen_range(1..20))
                .map(|_| {
                    let len = rng.gen_range(1_000..20_000);
                    Owned::new(6, "mid", random_body(&mut rng, len))
                })
                .collect(),
            _ => (0..rng.gen_range(50..400))
                .map(|_| {
                    let len = rng.gen_range(50..2_000);
                    Owned::new(6, "text", text_body(&mut rng, len))
                })
                .collect(),
        };
        written += batch.iter().map(|r| r.body.len()).sum::<usize>();
        let done = store.log().append(stream, &as_new(&batch)).unwrap();
        if i.is_multiple_of(10) {
            big.push((stream, done.first, batch[0].body.clone()));
        }
        if i.is_multiple_of(4) {
            store.wait_durable(done.ticket).unwrap();
        }
        last = Some(done.ticket);
        i += 1;
    }
    store.wait_durable(last.unwrap()).unwrap();
    assert_eq!(
        blob_files(dir.path()),
        Vec::<PathBuf>::new(),
        "sled wrote blob files while open"
    );
    store.close().unwrap();
    drop(store);
    assert_eq!(
        blob_files(dir.path()),
        Vec::<PathBuf>::new(),
        "sled wrote blob files"
    );
    let store = open(dir.path());
    for (stream, seq, body) in &big {
        let got = store.log().read(stream, *seq, *seq, 1).unwrap();
        assert!(
            got.len() == 1 && got[0].body == *body,
            "large record {stream}/{seq}"
        );
    }
}

/// Writes `blocks` durable batches of 20 small records to `stream` (one block each) and an
/// optional last batch; returns the model and each batch's last sequence.
fn write_blocks(
    store: &Store,
    stream: &str,
    blocks: usize,
    last: Option<Vec<Owned>>,
) -> (Vec<Owned>, Vec<Seq>) {
    let mut model = Vec::new();
    let mut ends = Vec::new();
    for b in 0..blocks {
        let batch = small_batch(stream, model.len(), 20);
        let (_, end) = append_durable(store, stream, 1_000 * (b as u64 + 1), &batch);
        model.extend(batch);
        ends.push(end);
    }
    if let Some(batch) = last {
        let (_, end) = append_durable(store, stream, 1_000_000, &batch);
        model.extend(batch);
        ends.push(end);
    }
    (model, ends)
}

#[derive(Debug, Clone, Copy)]
enum Tear {
    RemoveLastKey,
    FlipLastByte,
    TruncateLastValue,
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let cases = [
        (Tear::RemoveLastKey, false),
        (Tear::FlipLastByte, false),
        (Tear::TruncateLastValue, false),
        (Tear::RemoveLastKey, true),
        (Tear::FlipLastByte, true),
        (Tear::TruncateLastValue, true),
    ];
    for (tear, multi_fragment) in cases {
        let what = format!("{tear:?}, last block in several fragments: {multi_fragment}");
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let store = open(dir.path());
        // Another stream first, so that "tail" has the highest id and the last keys.
        write_blocks(&store, "other", 2, None);
        let last_batch = if multi_fragment {
            vec![
                Owned::new(1, "x", b"before the big one".to_vec()),
                Owned::new(2, "x", random_body(&mut rng, 40_000)),
            ]
        } else {
            small_batch("tail-last", 0, 20)
        };
        let (model, ends) = write_blocks(&store, "tail", 5, Some(last_batch));
        assert_eq!(store.log().stats()[1].blocks, 6, "{what}");
        store.close().unwrap();
        drop(store);

        {
            let db = open_sled(dir.path());
            let blocks = db.open_tree("log.blocks").unwrap();
            let (key, value) = blocks.last().unwrap().unwrap();
            if multi_fragment {
                assert!(!key.ends_with(&[0, 0]), "{what}: expected a later fragment");
            }
            match tear {
                Tear::RemoveLastKey => {
                    blocks.remove(&key).unwrap();
                }
                Tear::FlipLastByte => {
                    let mut bytes = value.to_vec();
                    let at = bytes.len() - 1;
                    bytes[at] ^= 0x5a;
                    blocks.insert(&key, bytes).unwrap();
                }
                Tear::TruncateLastValue => {
                    blocks.insert(&key, &value[..value.len() / 2]).unwrap();
                }
            }
            db.flush().unwrap();
        }

        let cut = ends[ends.len() - 2];
        let store = open(dir.path());
        assert_eq!(
            store.log().last_seq("tail"),
            cut,
            "{what}: the torn block is cut"
        );
        assert_matches(&read_all(&store, "tail"), &model[..cut as usize], 1, &what);
        assert_eq!(
            store.log().last_seq("other"),
            40,
            "{what}: other stream untouched"
        );
        let more = small_batch("after", 0, 7);
        let done = store.log().append("tail", &as_new(&more)).unwrap();
        assert_eq!((done.first, done.last), (cut + 1, cut + 7), "{what}");
        store.wait_durable(done.ticket).unwrap();
        store.close().unwrap();
        drop(store);
        let store = open(dir.path());
        let mut expected = model[..cut as usize].to_vec();
        expected.extend(more);
        assert_matches(
            &read_all(&store, "tail"),
            &expected,
            1,
            &format!("{what}, reopened"),
        );
    }
}

#[test]
fn torn_tail_of_the_only_block_empties_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_blocks(&store, "solo", 1, None);
    drop(store);
    {
        let db = open_sled(dir.path());
        let blocks = db.open_tree("log.blocks").unwrap();
        let (key, _) = blocks.last().unwrap().unwrap();
        blocks.remove(key).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.log().last_seq("solo"), 0);
    let done = store
        .log()
        .append("solo", &as_new(&small_batch("again", 0, 2)))
        .unwrap();
    assert_eq!((done.first, done.last), (1, 2));
}

/// Damages the value of the `index`-th key of `log.blocks` with `damage`.
fn damage_fragment(dir: &Path, index: usize, damage: impl FnOnce(&mut Vec<u8>)) {
    let db = open_sled(dir);
    let blocks = db.open_tree("log.blocks").unwrap();
    let (key, value) = blocks.iter().nth(index).unwrap().unwrap();
    let mut bytes = value.to_vec();
    damage(&mut bytes);
    blocks.insert(key, bytes).unwrap();
    db.flush().unwrap();
}

/// Checks reads of a 10-block stream of 20 records each whose 4th block (61..=80) is damaged.
fn assert_fourth_block_is_reported(store: &Store, stream: &str, model: &[Owned], what: &str) {
    let err = store
        .log()
        .read(stream, 0, Seq::MAX, usize::MAX)
        .unwrap_err();
    assert!(is_corrupt(&err), "{what}: expected Corrupt, got {err}");
    assert!(
        err.to_string().contains(stream),
        "{what}: error does not name the stream: {err}"
    );
    let err = store.log().read(stream, 70, 75, 3).unwrap_err();
    assert!(is_corrupt(&err), "{what}: {err}");
    // Everything else still reads.
    assert_matches(
        &store.log().read(stream, 1, 60, usize::MAX).unwrap(),
        &model[..60],
        1,
        what,
    );
    assert_matches(
        &store.log().read(stream, 81, Seq::MAX, usize::MAX).unwrap(),
        &model[80..],
        81,
        what,
    );
    // Time queries over it report it too, never panic.
    let err = store
        .log()
        .read_time_range(stream, 0, u64::MAX, usize::MAX)
        .unwrap_err();
    assert!(is_corrupt(&err), "{what}: {err}");
    match store.log().seq_at_time(stream, 4_000) {
        Err(e) => assert!(is_corrupt(&e), "{what}: {e}"),
        // A block whose data is gone altogether may be skipped.
        Ok(seq) => assert!(
            (61..=81).contains(&seq),
            "{what}: seq_at_time over the damaged block: {seq}"
        ),
    }
    assert_eq!(store.log().seq_at_time(stream, 5_000).unwrap(), 81);
    // Appends go on.
    let done = store
        .log()
        .append(stream, &as_new(&small_batch("more", 0, 2)))
        .unwrap();
    assert_eq!(done.first, 201, "{what}");
}

#[test]
fn corrupt_middle_block_is_reported_by_reads_naming_the_stream() {
    // Flip a byte in the compressed payload, the version byte, and a header byte that changes
    // the header's length.
    for (case, at) in [
        ("payload", None),
        ("version", Some(0usize)),
        ("raw_len marker", Some(2)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (model, _) = write_blocks(&store, "dmg-q", 10, None);
        drop(store);
        damage_fragment(dir.path(), 3, |bytes| {
            let at = at.unwrap_or(bytes.len() - 10);
            bytes[at] ^= 0x41;
        });
        let store = open(dir.path());
        assert_eq!(
            store.log().last_seq("dmg-q"),
            200,
            "{case}: the open keeps the stream"
        );
        assert_fourth_block_is_reported(&store, "dmg-q", &model, case);
    }
}

#[test]
fn missing_middle_block_is_reported_by_reads_naming_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (model, _) = write_blocks(&store, "holey-q", 10, None);
    drop(store);
    {
        let db = open_sled(dir.path());
        let blocks = db.open_tree("log.blocks").unwrap();
        let key = blocks.iter().keys().nth(3).unwrap().unwrap();
        blocks.remove(key).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.log().last_seq("holey-q"), 200);
    assert_fourth_block_is_reported(&store, "holey-q", &model, "missing block");
}

/// Position of each field of a block header: `[version][count][raw_len][first_ts][crc32]`,
/// each a bincode varint.
fn header_field_offsets(value: &[u8]) -> [usize; 4] {
    let mut offsets = [0; 4];
    let mut pos = 1;
    for slot in &mut offsets {
        *slot = pos;
        pos += match value[pos] {
            0..=250 => 1,
            251 => 3,
            252 => 5,
            253 => 9,
            other => panic!("unexpected varint marker {other}"),
        };
    }
    offsets
}

/// Flips a bit in a header field (0 record count, 2 first timestamp) of the 4th of 10 blocks
/// and reads the stream: the damage must be reported, not returned as data.
fn read_after_flipping_header_field(field: usize, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (model, _) = write_blocks(&store, "qhx", 10, None);
    drop(store);
    damage_fragment(dir.path(), 3, |bytes| {
        let at = header_field_offsets(bytes)[field];
        // The count 20 becomes 16; a timestamp's low byte changes by 4.
        let at = if field == 2 { at + 1 } else { at };
        bytes[at] ^= 0x04;
    });
    let store = open(dir.path());
    match store.log().read("qhx", 0, Seq::MAX, usize::MAX) {
        Err(e) => assert!(
            is_corrupt(&e) && e.to_string().contains("qhx"),
            "{name}: {e}"
        ),
        Ok(records) => {
            assert_matches(&records, &model, 1, &format!("damaged {name}"));
            let stamps: Vec<u64> = records.iter().map(|r| r.ts_ns).collect();
            let expected: Vec<u64> = (0..200u64).map(|i| 1_000 * (i / 20 + 1)).collect();
            if let Some(i) = (0..stamps.len()).find(|&i| stamps[i] != expected[i]) {
                panic!(
                    "damaged {name}: record {} read without an error, stamped {} instead of {}",
                    i + 1,
                    stamps[i],
                    expected[i]
                );
            }
        }
    }
}

/// The block header (record count, first timestamp) is outside the block's checksum: a flipped
/// bit in the count makes reads silently return fewer records (a gap in the sequences).
#[test]
fn flipped_bit_in_block_header_record_count_is_reported() {
    read_after_flipping_header_field(0, "record count");
}

/// Same for the header's first timestamp: reads return shifted timestamps without an error.
#[test]
fn flipped_bit_in_block_header_first_timestamp_is_reported() {
    read_after_flipping_header_field(2, "first timestamp");
}

/// A flipped bit in a middle block's index entry must not make the open silently drop
/// acknowledged blocks after it.
#[test]
fn flipped_bit_in_middle_index_entry_does_not_drop_later_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (model, _) = write_blocks(&store, "idx7", 10, None);
    drop(store);
    {
        let db = open_sled(dir.path());
        let meta = db.open_tree("log.meta").unwrap();
        let (key, value) = meta.iter().nth(3).unwrap().unwrap();
        let mut bytes = value.to_vec();
        // [version][first_seq=61][last_seq=80]...: 80 -> 81.
        assert_eq!((bytes[1], bytes[2]), (61, 80));
        bytes[2] ^= 0x01;
        meta.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }
    match Store::open(dir.path(), StoreConfig::default()) {
        Err(e) => assert!(is_corrupt(&e) && e.to_string().contains("idx7"), "{e}"),
        Ok(store) => {
            assert_eq!(
                store.log().last_seq("idx7"),
                200,
                "the open silently dropped acknowledged records after a damaged index entry"
            );
            let _ = store.log().read("idx7", 81, Seq::MAX, usize::MAX).map(|r| {
                assert_matches(&r, &model[80..], 81, "after the damaged entry");
            });
        }
    }
}

/// A block stored in several fragments with a later fragment gone: the read must fail with
/// `Corrupt` naming the stream, like every other damaged block.
#[test]
fn missing_later_fragment_of_a_middle_block_is_reported_naming_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let store = open(dir.path());
    let mut model = Vec::new();
    for b in 0..5 {
        let batch = vec![Owned::new(1, "x", random_body(&mut rng, 30_000))];
        append_durable(&store, "zeta", b, &batch);
        model.extend(batch);
    }
    drop(store);
    {
        let db = open_sled(dir.path());
        let blocks = db.open_tree("log.blocks").unwrap();
        let keys: Vec<sled::IVec> = blocks.iter().keys().map(|k| k.unwrap()).collect();
        assert!(keys.len() >= 15, "30 KB blocks take several fragments");
        // Second fragment of the third block (fragment keys end with the fragment number).
        let third = keys
            .iter()
            .filter(|k| k.ends_with(&[0, 0]))
            .nth(2)
            .unwrap()
            .clone();
        let mut second = third.to_vec();
        let n = second.len();
        second[n - 1] = 1;
        blocks.remove(second).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.log().last_seq("zeta"), 5);
    let err = store
        .log()
        .read("zeta", 0, Seq::MAX, usize::MAX)
        .unwrap_err();
    assert!(is_corrupt(&err), "{err}");
    assert_matches(
        &store.log().read("zeta", 1, 2, 10).unwrap(),
        &model[..2],
        1,
        "before",
    );
    assert_matches(
        &store.log().read("zeta", 4, 5, 10).unwrap(),
        &model[3..],
        4,
        "after",
    );
    assert!(
        err.to_string().contains("zeta"),
        "error does not name the stream: {err}"
    );
}

/// Reads racing retention over blocks of several fragments must skip removed blocks, never
/// report corruption.
#[test]
fn reads_racing_retention_of_multi_fragment_blocks_never_report_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let mut rng = StdRng::seed_from_u64(11);
    // 400 blocks of ~3 fragments each.
    let mut last = None;
    for _ in 0..400 {
        let body = random_body(&mut rng, 20_000);
        let done = store
            .log()
            .append(
                "race",
                &[NewRecord {
                    level: 1,
                    source: "",
                    body: &body,
                }],
            )
            .unwrap();
        last = Some(done.ticket);
    }
    store.wait_durable(last.unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // One reader reads the head, where retention works; one reads everything.
    let readers: Vec<_> = [2usize, usize::MAX]
        .into_iter()
        .map(|limit| {
            let store = store.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = store.log().read("race", 0, Seq::MAX, limit) {
                        errors.push(e.to_string());
                    }
                }
                errors
            })
        })
        .collect();
    // Remove one block at a time.
    loop {
        let stored = store.log().stats()[0].stored_bytes;
        if stored == 0 {
            break;
        }
        let policy = Retention {
            max_age: None,
            max_bytes: Some(stored - 1),
        };
        store.log().apply_retention("race", policy, 0).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "{} reads failed during retention, first: {}",
        errors.len(),
        errors[0]
    );
}

#[test]
fn invalid_input_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let one = small_batch("x", 0, 1);
    let invalid = |r: Result<depot_store::Appended, StoreError>, what: &str| match r {
        Err(StoreError::Invalid(_)) => {}
        Err(e) => panic!("{what}: expected Invalid, got {e}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    invalid(store.log().append("s", &[]), "empty batch");
    invalid(store.log().append("", &as_new(&one)), "empty stream name");
    invalid(
        store.log().append(&"n".repeat(300), &as_new(&one)),
        "300-byte stream name",
    );
    invalid(
        store.log().append(&"n".repeat(256), &as_new(&one)),
        "256-byte stream name",
    );
    invalid(
        store.log().append("a\nb", &as_new(&one)),
        "control character in the name",
    );
    invalid(store.log().append_at("s", 5, &[]), "empty batch at a time");
    let huge = vec![0u8; depot_store::MAX_RECORD_BYTES + 1];
    let big = [NewRecord {
        level: 1,
        source: "",
        body: &huge,
    }];
    invalid(store.log().append("s", &big), "record over the limit");
    assert!(
        store.log().streams().is_empty(),
        "a rejected append created a stream"
    );
    assert_eq!(store.log().last_seq("s"), 0);
    // The longest valid name works, and a failed append leaves numbering untouched.
    let long = "n".repeat(depot_store::MAX_STREAM_NAME);
    assert_eq!(store.log().append(&long, &as_new(&one)).unwrap().first, 1);
    invalid(
        store.log().append(&long, &[]),
        "empty batch to an existing stream",
    );
    assert_eq!(store.log().append(&long, &as_new(&one)).unwrap().first, 2);
}

/// `trim_through` (a queue's acknowledged floor) removes only whole sealed blocks at or below
/// the sequence, keeps everything after it readable, and numbering continues after a reopen.
#[test]
fn trim_through_removes_whole_blocks_up_to_a_sequence_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut last = 0;
    for batch in 0..40u64 {
        let bodies: Vec<Vec<u8>> = (0..250).map(|i| seq_body(batch * 250 + i + 1)).collect();
        let records: Vec<NewRecord<'_>> = bodies
            .iter()
            .map(|b| NewRecord {
                level: 0,
                source: "",
                body: b,
            })
            .collect();
        let appended = store.log().append("trim", &records).unwrap();
        store.wait_durable(appended.ticket).unwrap();
        last = appended.last;
    }
    assert_eq!(last, 10_000);
    let before = store.log().stream_stats("trim").unwrap();
    assert!(before.blocks > 4, "the test needs several blocks");
    let outcome = store.log().trim_through("trim", 5_000).unwrap();
    assert!(outcome.blocks > 0 && outcome.records > 0);
    let first = store.log().first_seq("trim");
    assert!(first <= 5_001, "a block holding sequence 5001 was removed");
    assert_eq!(first, outcome.records + 1, "only head blocks go");
    let after = store.log().stream_stats("trim").unwrap();
    assert_eq!(after.stored_bytes, before.stored_bytes - outcome.bytes);
    let rest = store.log().read("trim", 0, Seq::MAX, usize::MAX).unwrap();
    assert_eq!(rest.len() as u64, 10_000 - first + 1);
    for r in &rest {
        assert_eq!(r.body, seq_body(r.seq), "seq {}", r.seq);
    }
    assert_eq!(store.log().trim_through("trim", 0).unwrap().blocks, 0);
    assert_eq!(store.log().trim_through("nope", 10).unwrap().blocks, 0);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.log().first_seq("trim"), first);
    let appended = store
        .log()
        .append(
            "trim",
            &[NewRecord {
                level: 0,
                source: "",
                body: b"next",
            }],
        )
        .unwrap();
    assert_eq!(appended.first, 10_001);
    // Everything trimmed: numbering still continues.
    let sealed = store.log().seal_open_block("trim").unwrap();
    store.wait_durable(sealed).unwrap();
    store.log().trim_through("trim", u64::MAX).unwrap();
    assert!(store.log().read("trim", 0, 10_000, 10).unwrap().is_empty());
}

/// A slow stream committed record by record gets no block per commit (each would cost memory
/// and sled space for as long as it is kept): its records wait, durable and readable, in tail
/// pieces until the block is full, old, or the store closes.
#[test]
fn commits_of_a_slow_stream_do_not_seal_a_block_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // About 5 KB: below the first block's size goal.
    let model = small_batch("slow", 0, 100);
    for record in &model {
        let done = store
            .log()
            .append("slow", &as_new(std::slice::from_ref(record)))
            .unwrap();
        store.wait_durable(done.ticket).unwrap();
    }
    let stats = store.log().stream_stats("slow").unwrap();
    assert_eq!((stats.blocks, stats.records), (0, 100));
    assert_matches(&read_all(&store, "slow"), &model, 1, "before close");
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    let stats = store.log().stream_stats("slow").unwrap();
    assert_eq!(
        (stats.blocks, stats.records),
        (1, 100),
        "sealed at the clean stop"
    );
    assert_matches(&read_all(&store, "slow"), &model, 1, "after reopen");
    let next = store.log().append("slow", &as_new(&model[..1])).unwrap();
    assert_eq!(next.first, 101);
}

/// A stream gone quiet does not keep its last records out of retention's reach: once its open
/// block is `max_open_age` old, the next commit (any stream's) seals it, though nothing new
/// came to it.
#[test]
fn a_quiet_streams_open_block_is_sealed_once_old() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_open_age: Duration::from_millis(50),
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let quiet = small_batch("quiet", 0, 3);
    let done = store.log().append("quiet", &as_new(&quiet)).unwrap();
    store.wait_durable(done.ticket).unwrap();
    assert_eq!(store.log().stream_stats("quiet").unwrap().blocks, 0);
    let busy = small_batch("busy", 0, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.log().stream_stats("quiet").unwrap().blocks == 0 {
        assert!(
            Instant::now() < deadline,
            "the quiet stream's block was never sealed"
        );
        // Commits happen only when something was written: another stream keeps them going.
        let done = store.log().append("busy", &as_new(&busy)).unwrap();
        store.wait_durable(done.ticket).unwrap();
    }
    let trimmed = store.log().trim_through("quiet", 3).unwrap();
    assert_eq!(trimmed.records, 3, "sealed, so trimming can remove it");
    assert_eq!(store.log().first_seq("quiet"), 4);
}
