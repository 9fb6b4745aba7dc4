#![allow(clippy::unwrap_used)]
//! Property test: random operations on a few streams (append, read, retention, commit, reopen)
//! against a model of what each stream must hold.

use std::collections::VecDeque;
use std::path::Path;

use depot_store::{NewRecord, Record, Retention, Seq, Store, StoreConfig, StreamStats, Ticket};
use proptest::prelude::*;
use proptest::test_runner::Config;

const STREAMS: [&str; 3] = ["s0", "s1", "stream-two"];
const SOURCES: [&str; 3] = ["", "host-a", "hôte-β"];
/// Requested timestamps start here and move by each append's step.
const BASE_TS: u64 = 1_700_000_000_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        /// (level, source index, body) per record.
        records: Vec<(u8, usize, Vec<u8>)>,
        /// Added to the stream's last requested timestamp; negative steps go back in time.
        ts_step: i64,
    },
    Read {
        stream: usize,
        from: Seq,
        to: Seq,
        limit: usize,
    },
    Retention {
        stream: usize,
        max_bytes: u64,
    },
    Commit,
    Reopen,
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Random bytes: compress badly.
        3 => proptest::collection::vec(any::<u8>(), 0..160),
        // Repetitive text: compresses well.
        2 => (0usize..400, any::<u8>()).prop_map(|(n, c)| vec![b'a' + c % 4; n]),
        1 => Just(Vec::new()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let record = (0u8..8, 0usize..SOURCES.len(), body());
    prop_oneof![
        8 => (0usize..STREAMS.len(), proptest::collection::vec(record, 1..40), -2_000i64..10_000)
            .prop_map(|(stream, records, ts_step)| Op::Append { stream, records, ts_step }),
        4 => (
            0usize..STREAMS.len(),
            0u64..400,
            prop_oneof![3 => 0u64..420, 1 => Just(Seq::MAX)],
            prop_oneof![3 => 0usize..60, 1 => Just(usize::MAX)],
        )
            .prop_map(|(stream, from, to, limit)| Op::Read { stream, from, to, limit }),
        2 => (0usize..STREAMS.len(), prop_oneof![1 => Just(0u64), 4 => 0u64..30_000])
            .prop_map(|(stream, max_bytes)| Op::Retention { stream, max_bytes }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelRecord {
    seq: Seq,
    ts: u64,
    level: u8,
    source: String,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
struct ModelStream {
    /// Records still stored, oldest first.
    records: VecDeque<ModelRecord>,
    /// Sequence the next record gets.
    next: Seq,
    /// Timestamp floor for the next append; `None` when the store may have forgotten it (the
    /// stream was emptied by retention and reopened).
    last_ts: Option<u64>,
    /// Timestamp of the last record ever appended.
    max_ts_seen: u64,
    /// Last requested timestamp.
    requested: u64,
    /// True when the stream's open block is known to be empty (after a commit or reopen with
    /// no append since), so stats count sealed blocks only.
    sealed: bool,
    /// Highest first_seq seen.
    first_seen: Seq,
}

impl ModelStream {
    fn new() -> Self {
        ModelStream {
            next: 1,
            last_ts: Some(0),
            requested: BASE_TS,
            sealed: true,
            first_seen: 1,
            ..Default::default()
        }
    }

    fn first(&self) -> Seq {
        self.next - self.records.len() as u64
    }
}

/// Opens the store, retrying while sled still holds its file lock from the close just before
/// (sled's pool threads may keep the closed database's file open a moment longer).
fn open(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir, StoreConfig::default()) {
            Ok(store) => return store,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("opening the store in {}: {e}", dir.display()),
        }
    }
}

fn stats_of(store: &Store, stream: &str) -> Option<StreamStats> {
    store.log().stats().into_iter().find(|s| s.name == stream)
}

fn check_records(
    got: &[Record],
    expected: &[&ModelRecord],
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), expected.len(), "{}: count", what);
    for (r, m) in got.iter().zip(expected) {
        prop_assert_eq!(r.seq, m.seq, "{}", what);
        prop_assert_eq!(r.ts_ns, m.ts, "{}: ts of {}", what, m.seq);
        prop_assert_eq!(r.level, m.level, "{}: level of {}", what, m.seq);
        prop_assert_eq!(&r.source, &m.source, "{}: source of {}", what, m.seq);
        prop_assert!(r.body == m.body, "{}: body of {}", what, m.seq);
    }
    Ok(())
}

fn expected_read(model: &ModelStream, from: Seq, to: Seq, limit: usize) -> Vec<&ModelRecord> {
    model
        .records
        .iter()
        .filter(|r| r.seq >= from && r.seq <= to)
        .take(limit)
        .collect()
}

/// Invariants checked after every operation, for every stream.
fn check_all(store: &Store, models: &mut [ModelStream], step: usize) -> Result<(), TestCaseError> {
    for (i, model) in models.iter_mut().enumerate() {
        let name = STREAMS[i];
        let what = format!("step {step}, stream {name}");
        let first = store.log().first_seq(name);
        let last = store.log().last_seq(name);
        prop_assert_eq!(last, model.next - 1, "{}: last_seq", what);
        prop_assert_eq!(first, model.first(), "{}: first_seq", what);
        prop_assert!(first >= model.first_seen, "{}: first_seq went back", what);
        prop_assert!(
            first <= last + 1,
            "{}: first_seq {} > last_seq {} + 1",
            what,
            first,
            last
        );
        model.first_seen = first;
        let all = store.log().read(name, 0, Seq::MAX, usize::MAX).unwrap();
        check_records(&all, &expected_read(model, 0, Seq::MAX, usize::MAX), &what)?;
        if let Some(stats) = stats_of(store, name) {
            prop_assert_eq!(
                (stats.first_seq, stats.last_seq),
                (first, last),
                "{}: stats",
                what
            );
            prop_assert_eq!(
                stats.records,
                model.records.len() as u64,
                "{}: stats records",
                what
            );
        } else {
            prop_assert_eq!(model.next, 1, "{}: stream missing from stats", what);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Some(open(dir.path()));
    let mut models: Vec<ModelStream> = STREAMS.iter().map(|_| ModelStream::new()).collect();
    let mut last_ticket: Option<Ticket> = None;
    for (step, op) in ops.into_iter().enumerate() {
        let s = store.as_ref().unwrap();
        match op {
            Op::Append {
                stream,
                records,
                ts_step,
            } => {
                let name = STREAMS[stream];
                let model = &mut models[stream];
                model.requested = model.requested.saturating_add_signed(ts_step);
                let batch: Vec<NewRecord<'_>> = records
                    .iter()
                    .map(|(level, source, body)| NewRecord {
                        level: *level,
                        source: SOURCES[*source],
                        body,
                    })
                    .collect();
                let done = s.log().append_at(name, model.requested, &batch).unwrap();
                prop_assert_eq!(done.first, model.next, "step {}: first of batch", step);
                prop_assert_eq!(done.last, model.next + records.len() as u64 - 1);
                let ts = match model.last_ts {
                    Some(floor) => model.requested.max(floor),
                    None => {
                        // The floor may have been forgotten; the store stamps something between
                        // the request and the old floor.
                        let got = s.log().read(name, done.first, done.first, 1).unwrap();
                        let ts = got[0].ts_ns;
                        prop_assert!(
                            ts >= model.requested && ts <= model.requested.max(model.max_ts_seen),
                            "step {}: ts {} outside [{}, {}]",
                            step,
                            ts,
                            model.requested,
                            model.max_ts_seen
                        );
                        ts
                    }
                };
                for (i, (level, source, body)) in records.into_iter().enumerate() {
                    model.records.push_back(ModelRecord {
                        seq: done.first + i as u64,
                        ts,
                        level,
                        source: SOURCES[source].to_owned(),
                        body,
                    });
                }
                model.next = done.last + 1;
                model.last_ts = Some(ts);
                model.max_ts_seen = model.max_ts_seen.max(ts);
                model.sealed = false;
                last_ticket = Some(done.ticket);
            }
            Op::Read {
                stream,
                from,
                to,
                limit,
            } => {
                let got = s.log().read(STREAMS[stream], from, to, limit).unwrap();
                let expected = expected_read(&models[stream], from, to, limit);
                check_records(
                    &got,
                    &expected,
                    &format!("step {step}: read({from}, {to}, {limit})"),
                )?;
            }
            Op::Retention { stream, max_bytes } => {
                let name = STREAMS[stream];
                let before = stats_of(s, name);
                let policy = Retention {
                    max_age: None,
                    max_bytes: Some(max_bytes),
                };
                let outcome = s
                    .log()
                    .apply_retention(name, policy, depot_store::now_ns())
                    .unwrap();
                let after = stats_of(s, name);
                let model = &mut models[stream];
                let (Some(before), Some(after)) = (before, after) else {
                    prop_assert_eq!(outcome.blocks, 0);
                    continue;
                };
                let what =
                    format!("step {step}: retention of {name} to {max_bytes} bytes: {outcome:?}");
                // Only whole blocks, oldest first: first_seq moves by the records removed.
                prop_assert_eq!(
                    after.first_seq,
                    before.first_seq + outcome.records,
                    "{}",
                    what
                );
                prop_assert!(outcome.records <= model.records.len() as u64, "{}", what);
                prop_assert_eq!(outcome.blocks == 0, outcome.records == 0, "{}", what);
                // Nothing is removed from a stream within its limit.
                if before.stored_bytes <= max_bytes {
                    prop_assert_eq!(outcome.blocks, 0, "{}: stream was within the limit", what);
                }
                if model.sealed {
                    // No unsealed records: stats count exactly the sealed blocks.
                    prop_assert_eq!(
                        after.stored_bytes,
                        before.stored_bytes - outcome.bytes,
                        "{}",
                        what
                    );
                    prop_assert!(
                        after.stored_bytes <= max_bytes,
                        "{}: still over the limit",
                        what
                    );
                    prop_assert_eq!(after.blocks, before.blocks - outcome.blocks, "{}", what);
                    if outcome.blocks == 1 {
                        prop_assert!(before.stored_bytes > max_bytes, "{}", what);
                    }
                }
                for _ in 0..outcome.records {
                    model.records.pop_front();
                }
            }
            Op::Commit => {
                if let Some(ticket) = last_ticket {
                    s.wait_durable(ticket).unwrap();
                    prop_assert!(s.durability_of(ticket) > depot_store::Durability::Buffered);
                }
                // Committed records stay in the open block (as tail pieces) until it is
                // full or old; seal them so the model's "sealed" holds.
                for name in STREAMS {
                    let sealed = s.log().seal_open_block(name).unwrap();
                    s.wait_durable(sealed).unwrap();
                }
                for model in &mut models {
                    model.sealed = true;
                }
            }
            Op::Reopen => {
                let old = store.take().unwrap();
                old.close().unwrap();
                drop(old);
                store = Some(open(dir.path()));
                // Tickets belong to one store instance.
                last_ticket = None;
                for model in &mut models {
                    model.sealed = true;
                    if model.records.is_empty() && model.next > 1 {
                        model.last_ts = None;
                    }
                }
            }
        }
        check_all(store.as_ref().unwrap(), &mut models, step)?;
    }
    // Finally everything survives a reopen.
    let old = store.take().unwrap();
    old.close().unwrap();
    drop(old);
    let store = open(dir.path());
    check_all(&store, &mut models, usize::MAX)?;
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        // PROPTEST_CASES=1000 for a longer search.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
        max_shrink_iters: 300,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
