#![allow(clippy::unwrap_used)]
//! Crash test: a writer process is killed with SIGKILL at a random moment, 25 times on one data
//! folder; after each kill the store must recover with contiguous sequences and every
//! acknowledged record, from this round and all earlier ones.
//!
//! Run as `crash --writer <DIR> <ROUND>` the binary is the writer (child): three threads append
//! batches to `s0`, `s1` and `shared`, and after each `wait_durable` print
//! `ack <stream> <thread> <round> <last_n> <last_seq>`. Without `--writer` it is the parent
//! (the normal `cargo test` run). `CRASH_SEED=<n>` repeats a run's random choices.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_store::{NewRecord, Seq, Store, StoreConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: u32 = 25;
const THREADS: u32 = 3;
const STREAMS: [&str; 3] = ["s0", "s1", "shared"];

/// The streams thread `w` writes to: its own (threads 0 and 1) and the shared one.
fn streams_of(thread: u32) -> &'static [&'static str] {
    match thread {
        0 => &["s0", "shared"],
        1 => &["s1", "shared"],
        _ => &["shared"],
    }
}

/// Padding byte `i` of record `n` of (round, thread): deterministic, so the parent can check it.
fn pad_byte(round: u32, thread: u32, n: u64, i: usize) -> u8 {
    b'a' + ((n.wrapping_mul(7) + i as u64 * 13 + u64::from(round) * 3 + u64::from(thread)) % 26)
        as u8
}

/// `r{round}-w{thread}-{n}|` padded to `len` bytes.
fn make_body(round: u32, thread: u32, n: u64, len: usize) -> Vec<u8> {
    let mut body = format!("r{round}-w{thread}-{n}|").into_bytes();
    let start = body.len();
    for i in start..len.max(start) {
        body.push(pad_byte(round, thread, n, i));
    }
    body
}

/// Parses and checks a body; returns (round, thread, n).
fn parse_body(body: &[u8]) -> Result<(u32, u32, u64), String> {
    let bar = body
        .iter()
        .position(|&b| b == b'|')
        .ok_or_else(|| format!("body without label: {:?}", String::from_utf8_lossy(body)))?;
    let label = std::str::from_utf8(&body[..bar]).map_err(|_| "label is not UTF-8".to_string())?;
    let parse = || -> Option<(u32, u32, u64)> {
        let mut parts = label.split('-');
        let round = parts.next()?.strip_prefix('r')?.parse().ok()?;
        let thread = parts.next()?.strip_prefix('w')?.parse().ok()?;
        let n = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some((round, thread, n))
    };
    let (round, thread, n) = parse().ok_or_else(|| format!("bad label {label:?}"))?;
    if body.len() < 20 || body.len() >= 400 {
        return Err(format!("{label}: body of {} bytes", body.len()));
    }
    for (i, &b) in body.iter().enumerate().skip(bar + 1) {
        if b != pad_byte(round, thread, n, i) {
            return Err(format!("{label}: padding byte {i} damaged"));
        }
    }
    Ok((round, thread, n))
}

// ---------------------------------------------------------------------------------------------
// Child: the writer.

fn writer(dir: &Path, round: u32) -> ExitCode {
    let store = match Store::open(dir, StoreConfig::default()) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            eprintln!("writer round {round}: cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ready before any thread can ack.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || write_loop(&store, round, thread))
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Appends until killed; prints an ack for each stream after each `wait_durable`.
fn write_loop(store: &Store, round: u32, thread: u32) {
    let mut rng = StdRng::seed_from_u64(u64::from(round) * 1_000 + u64::from(thread));
    let streams = streams_of(thread);
    let mut next_n: HashMap<&str, u64> = streams.iter().map(|s| (*s, 0)).collect();
    // Per stream, the last (n, seq) appended since the last wait.
    let mut pending: BTreeMap<&str, (u64, Seq)> = BTreeMap::new();
    let mut batches_before_wait = rng.gen_range(1..=3);
    loop {
        let stream = streams[rng.gen_range(0..streams.len())];
        let count = rng.gen_range(1..=300u64);
        let first_n = next_n[stream];
        let bodies: Vec<Vec<u8>> = (first_n..first_n + count)
            .map(|n| make_body(round, thread, n, rng.gen_range(20..400)))
            .collect();
        let source = format!("w{thread}");
        let batch: Vec<NewRecord<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| NewRecord {
                level: ((first_n + i as u64) % 8) as u8,
                source: &source,
                body,
            })
            .collect();
        let done = store.log().append(stream, &batch).unwrap();
        assert_eq!(done.last - done.first + 1, count);
        next_n.insert(stream, first_n + count);
        pending.insert(stream, (first_n + count - 1, done.last));
        batches_before_wait -= 1;
        if batches_before_wait == 0 {
            // The last ticket covers every earlier append of this thread.
            store.wait_durable(done.ticket).unwrap();
            let mut out = std::io::stdout().lock();
            for (stream, (n, seq)) in &pending {
                let _ = writeln!(out, "ack {stream} {thread} {round} {n} {seq}");
            }
            let _ = out.flush();
            pending.clear();
            batches_before_wait = rng.gen_range(1..=3);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: kill, recover, verify.

#[derive(Debug, Clone)]
struct Ack {
    stream: String,
    thread: u32,
    round: u32,
    last_n: u64,
    last_seq: Seq,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.split_whitespace();
    if parts.next()? != "ack" {
        return None;
    }
    let ack = Ack {
        stream: parts.next()?.to_owned(),
        thread: parts.next()?.parse().ok()?,
        round: parts.next()?.parse().ok()?,
        last_n: parts.next()?.parse().ok()?,
        last_seq: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(ack)
}

enum Line {
    Ready,
    Ack(Ack),
}

/// Reads the writer's stdout until it closes; only complete lines count (the kill may cut one).
fn read_child(stdout: std::process::ChildStdout, tx: mpsc::Sender<Line>) -> Result<(), String> {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the writer: {e}"))?;
        if read == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text == "ready" {
            let _ = tx.send(Line::Ready);
        } else if let Some(ack) = parse_ack(text) {
            let _ = tx.send(Line::Ack(ack));
        } else {
            return Err(format!("unexpected line from the writer: {text:?}"));
        }
    }
}

struct RoundReport {
    records: u64,
    last_seqs: BTreeMap<String, Seq>,
}

/// Opens the store and checks everything; `acks` holds the acks of this and earlier rounds.
fn verify(dir: &Path, acks: &[Ack], round: u32) -> Result<RoundReport, String> {
    let store =
        Store::open(dir, StoreConfig::default()).map_err(|e| format!("recovery failed: {e}"))?;
    let mut report = RoundReport {
        records: 0,
        last_seqs: BTreeMap::new(),
    };
    let mut acked_seqs: HashMap<&str, HashMap<Seq, &Ack>> = HashMap::new();
    for ack in acks {
        acked_seqs
            .entry(ack.stream.as_str())
            .or_default()
            .insert(ack.last_seq, ack);
    }
    let streams = store.log().streams();
    for stream in &streams {
        if !STREAMS.contains(&stream.as_str()) {
            return Err(format!("unexpected stream {stream:?}"));
        }
    }
    for ack in acks {
        if !streams.contains(&ack.stream) {
            return Err(format!("stream {} with acked records is gone", ack.stream));
        }
    }
    for stream in &streams {
        let first = store.log().first_seq(stream);
        let last = store.log().last_seq(stream);
        report.last_seqs.insert(stream.clone(), last);
        if first != 1 {
            return Err(format!(
                "{stream}: first_seq is {first}, nothing was removed"
            ));
        }
        let acked = acked_seqs.remove(stream.as_str()).unwrap_or_default();
        if let Some(ack) = acked.values().find(|a| a.last_seq > last) {
            return Err(format!(
                "{stream}: acked seq {} (round {}, thread {}, n {}) lost: last_seq is {last}",
                ack.last_seq, ack.round, ack.thread, ack.last_n
            ));
        }
        // Next expected n per (round, thread) in this stream.
        let mut next_n: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        let mut expected_seq = first;
        let mut last_ts = 0;
        let mut last_round = 0;
        while expected_seq <= last {
            let page = store
                .log()
                .read(stream, expected_seq, last, 50_000)
                .map_err(|e| format!("{stream}: read from {expected_seq}: {e}"))?;
            if page.is_empty() {
                return Err(format!(
                    "{stream}: records {expected_seq}..={last} are missing"
                ));
            }
            for record in page {
                if record.seq != expected_seq {
                    return Err(format!(
                        "{stream}: expected seq {expected_seq}, read {}",
                        record.seq
                    ));
                }
                expected_seq += 1;
                let (r, w, n) = parse_body(&record.body)
                    .map_err(|e| format!("{stream}/{}: {e}", record.seq))?;
                if r > round || r < last_round {
                    return Err(format!(
                        "{stream}/{}: round {r} out of order (after {last_round})",
                        record.seq
                    ));
                }
                last_round = r;
                if record.ts_ns < last_ts {
                    return Err(format!("{stream}/{}: timestamp went back", record.seq));
                }
                last_ts = record.ts_ns;
                if record.source != format!("w{w}") || u64::from(record.level) != n % 8 {
                    return Err(format!(
                        "{stream}/{}: source or level do not match its body",
                        record.seq
                    ));
                }
                if !streams_of(w).contains(&stream.as_str()) {
                    return Err(format!(
                        "{stream}/{}: thread {w} never writes here",
                        record.seq
                    ));
                }
                let next = next_n.entry((r, w)).or_insert(0);
                if n != *next {
                    return Err(format!(
                        "{stream}/{}: round {r} thread {w} has n {n} where {} was due (gap or duplicate)",
                        record.seq, *next
                    ));
                }
                *next += 1;
                if let Some(ack) = acked.get(&record.seq) {
                    if (ack.round, ack.thread, ack.last_n) != (r, w, n) {
                        return Err(format!(
                            "{stream}/{}: acked as round {} thread {} n {}, holds round {r} thread {w} n {n}",
                            record.seq, ack.round, ack.thread, ack.last_n
                        ));
                    }
                }
                report.records += 1;
            }
        }
        for ack in acked.values() {
            let reached = next_n.get(&(ack.round, ack.thread)).copied().unwrap_or(0);
            if reached <= ack.last_n {
                return Err(format!(
                    "{stream}: round {} thread {} acked n {} but only n < {reached} survived",
                    ack.round, ack.thread, ack.last_n
                ));
            }
        }
    }
    store.close().map_err(|e| format!("close: {e}"))?;
    Ok(report)
}

/// One round: start a writer, kill it after `run_ms`, collect its acks.
fn run_writer(dir: &Path, round: u32, run_ms: u64) -> Result<Vec<Ack>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .arg("--writer")
        .arg(dir)
        .arg(round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the writer: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || read_child(stdout, tx));
    let mut acks = Vec::new();
    let mut outcome = Ok(());
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Line::Ready) => {
            let deadline = Instant::now() + Duration::from_millis(run_ms);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(Line::Ack(ack)) => acks.push(ack),
                    Ok(Line::Ready) => outcome = Err("writer said ready twice".to_string()),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        outcome = Err("writer stopped before it was killed".to_string());
                        break;
                    }
                }
            }
        }
        Ok(Line::Ack(_)) => outcome = Err("writer acked before ready".to_string()),
        Err(_) => outcome = Err("writer did not get ready within 30 s".to_string()),
    }
    if let Ok(Some(status)) = child.try_wait() {
        outcome = outcome.and(Err(format!("writer exited by itself: {status}")));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    // Acks that were printed before the kill still count.
    acks.extend(rx.try_iter().filter_map(|line| match line {
        Line::Ack(ack) => Some(ack),
        Line::Ready => None,
    }));
    match reader.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => outcome = outcome.and(Err(e)),
        Err(_) => outcome = outcome.and(Err("reader thread panicked".to_string())),
    }
    // Drain what arrived after the join too.
    acks.extend(rx.try_iter().filter_map(|line| match line {
        Line::Ack(ack) => Some(ack),
        Line::Ready => None,
    }));
    outcome.map(|()| acks)
}

fn parent() -> ExitCode {
    let started = Instant::now();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("crash: seed {seed} (CRASH_SEED={seed} repeats the kill times)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut all_acks: Vec<Ack> = Vec::new();
    let (mut passed, mut failed) = (0u32, 0u32);
    for round in 0..ROUNDS {
        let run_ms = rng.gen_range(30..300);
        let result = run_writer(dir.path(), round, run_ms).and_then(|acks| {
            let count = acks.len();
            all_acks.extend(acks);
            verify(dir.path(), &all_acks, round).map(|report| (count, report))
        });
        match result {
            Ok((count, report)) => {
                passed += 1;
                println!(
                    "crash: round {round}: killed after {run_ms} ms, {count} acks, recovered {} records, last seqs {:?}",
                    report.records, report.last_seqs
                );
            }
            Err(e) => {
                failed += 1;
                println!("crash: round {round} FAILED (killed after {run_ms} ms): {e}");
                eprintln!("crash: round {round} FAILED (killed after {run_ms} ms): {e}");
                // A store that does not open makes later rounds meaningless.
                if e.starts_with("recovery failed") {
                    failed += ROUNDS - round - 1;
                    break;
                }
            }
        }
    }
    println!("crash: took {:.1} s", started.elapsed().as_secs_f64());
    println!("crash: {passed} passed, {failed} failed");
    if failed > 0 {
        // Keep the folder for a post-mortem.
        let kept = dir.keep();
        eprintln!("crash: data folder kept at {}", kept.display());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--writer") {
        let (Some(dir), Some(round)) = (
            args.get(at + 1),
            args.get(at + 2).and_then(|r| r.parse().ok()),
        ) else {
            eprintln!("usage: crash --writer <DIR> <ROUND>");
            return ExitCode::FAILURE;
        };
        return writer(Path::new(dir), round);
    }
    // `cargo test -- --list` and similar: nothing to list, this binary is one test.
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    // Other arguments cargo passes (filters, --nocapture, --test-threads) are ignored.
    parent()
}
