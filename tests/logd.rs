//! The log service end to end: a real `depot serve` process on ephemeral ports, talked to over
//! real sockets by the Rust client library, raw zmq sockets, pyzmq's `PUBHandler`, util-linux
//! `logger` and the `depot log` command line.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{depot, poll, write_config, Appliance};
use depot_logd::client::{self, AckedSender, Received, Subscription};
use depot_logd::protocol;

/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);

/// Starts an appliance with every logd endpoint on an ephemeral port, data in `dir/data`.
fn start(dir: &Path) -> Appliance {
    let config = write_config(dir, "");
    Appliance::start(&dir.join("data"), &config)
}

/// Every stored record of `stream` (replay over SUB from 1) and the end marker's sequence.
fn replay_all(ctx: &zmq::Context, endpoint: &str, stream: &str) -> (Vec<Received>, u64) {
    let mut records = Vec::new();
    let last = client::replay(ctx, endpoint, stream, "1", WAIT, |record| {
        records.push(record);
        true
    })
    .unwrap_or_else(|e| panic!("replay of {stream} from {endpoint} failed: {e}"));
    (records, last)
}

/// Replays `stream` until `done` holds for its records, at most `WAIT`.
fn wait_records(
    ctx: &zmq::Context,
    endpoint: &str,
    stream: &str,
    what: &str,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let mut seen = Vec::new();
    poll(WAIT, || {
        seen = replay_all(ctx, endpoint, stream).0;
        done(&seen).then(|| seen.clone())
    })
    .unwrap_or_else(|| {
        let bodies: Vec<_> = seen
            .iter()
            .map(|r| (r.header.seq, String::from_utf8_lossy(&r.body).into_owned()))
            .collect();
        panic!("{stream}: {what} not seen within {WAIT:?}; stored: {bodies:?}")
    })
}

fn body_is(record: &Received, text: &str) -> bool {
    record.body == text.as_bytes()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn be_u64(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame.try_into().expect("8-byte frame"))
}

fn output_text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Acked ingest survives SIGKILL.

const KILL_BATCHES: usize = 200;
const KILL_BATCH_SIZE: usize = 100;
/// Batches in flight (sent, not yet acked) while sending.
const KILL_WINDOW: usize = 32;

fn kill_body(round: usize, batch: usize, i: usize) -> Vec<u8> {
    format!("round {round} batch {batch} record {i}").into_bytes()
}

/// Notes an ack: every record of the batch is now promised durable at its sequence.
fn note_ack(
    ack: client::Ack,
    round: usize,
    batch_of: &HashMap<Vec<u8>, usize>,
    acked: &mut BTreeMap<u64, Vec<u8>>,
) {
    let batch = batch_of[&ack.batch_id];
    let (first, last) = ack
        .result
        .unwrap_or_else(|e| panic!("round {round}: batch {batch} refused: {e}"));
    assert_eq!(
        last - first + 1,
        KILL_BATCH_SIZE as u64,
        "round {round}: batch {batch} acked as {first}..={last}"
    );
    for i in 0..KILL_BATCH_SIZE {
        let previous = acked.insert(first + i as u64, kill_body(round, batch, i));
        assert!(
            previous.is_none(),
            "round {round}: sequence {} acked twice",
            first + i as u64
        );
    }
}

/// Replays stream "acked" from 1: contiguous sequences, every acked record with its body,
/// nothing that was never sent, nothing twice.
fn check_acked_records(
    ctx: &zmq::Context,
    replay: &str,
    acked: &BTreeMap<u64, Vec<u8>>,
    sent: &HashSet<Vec<u8>>,
    after: &str,
) {
    let (records, last) = replay_all(ctx, replay, "acked");
    assert_eq!(
        records.len() as u64,
        last,
        "{after}: replay ended at {last} after {} records",
        records.len()
    );
    let mut bodies = HashSet::new();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record.header.seq,
            i as u64 + 1,
            "{after}: sequences are not contiguous from 1"
        );
        assert!(
            sent.contains(&record.body),
            "{after}: seq {} holds a body that was never sent: {:?}",
            record.header.seq,
            String::from_utf8_lossy(&record.body)
        );
        assert!(
            bodies.insert(record.body.clone()),
            "{after}: seq {} stores {:?} a second time",
            record.header.seq,
            String::from_utf8_lossy(&record.body)
        );
    }
    for (&seq, body) in acked {
        let record = records
            .get(seq as usize - 1)
            .unwrap_or_else(|| panic!("{after}: acked seq {seq} is lost (stream ends at {last})"));
        assert_eq!(
            record.body, *body,
            "{after}: acked seq {seq} holds the wrong body"
        );
        assert_eq!(record.header.level, 5, "{after}: seq {seq}");
        assert!(record.header.source.starts_with("round-"), "{after}");
    }
}

#[test]
fn acked_records_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let ctx = zmq::Context::new();
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut sent: HashSet<Vec<u8>> = HashSet::new();
    // Kill after this many acks; the window keeps KILL_WINDOW batches in flight at that moment.
    let kill_after = [25, 90, 150];
    for round in 0..=kill_after.len() {
        let appliance = Appliance::start(&data, &config);
        let logd = appliance.logd();
        let after = format!("restart after {round} kill(s)");
        check_acked_records(&ctx, &logd.replay, &acked, &sent, &after);
        if round == kill_after.len() {
            assert_eq!(appliance.stop().code(), Some(0));
            break;
        }
        let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
        let mut batch_of = HashMap::new();
        let source = format!("round-{round}");
        let (mut sent_batches, mut answered) = (0, 0);
        while answered < kill_after[round] {
            while sent_batches < KILL_BATCHES && sent_batches - answered < KILL_WINDOW {
                let bodies: Vec<Vec<u8>> = (0..KILL_BATCH_SIZE)
                    .map(|i| kill_body(round, sent_batches, i))
                    .collect();
                let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
                let id = sender.send("acked", 5, &source, &refs).unwrap();
                sent.extend(bodies);
                batch_of.insert(id, sent_batches);
                sent_batches += 1;
            }
            let ack = sender
                .recv_ack(WAIT)
                .unwrap_or_else(|e| panic!("round {round}: no ack: {e}"));
            note_ack(ack, round, &batch_of, &mut acked);
            answered += 1;
        }
        assert!(sent_batches > answered, "the kill must come mid-stream");
        appliance.kill();
        // Acks already on their way were sent once their batch was durable: they count too.
        while let Ok(ack) = sender.recv_ack(Duration::from_millis(100)) {
            note_ack(ack, round, &batch_of, &mut acked);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Replay joined to live.

const JOIN_RECORDS: u64 = 60_000;

fn join_body(i: u64) -> Vec<u8> {
    format!("joined record {i:06}").into_bytes()
}

/// Follows "joined" from `from` and expects exactly `from..=JOIN_RECORDS`, in order, once each.
fn follow_joined(ctx: &zmq::Context, live: &str, replay: &str, from: u64) -> Result<(), String> {
    let mut subscription = Subscription::start(ctx, live, replay, "joined", &from.to_string())
        .map_err(|e| format!("start: {e}"))?;
    let mut next = from;
    let deadline = Instant::now() + Duration::from_secs(40);
    while next <= JOIN_RECORDS {
        if Instant::now() > deadline {
            return Err(format!("only reached seq {next} within 40 s"));
        }
        match subscription.next(WAIT) {
            Ok(Some(record)) => {
                let h = &record.header;
                if h.seq != next {
                    return Err(format!("expected seq {next}, got {}", h.seq));
                }
                if record.body != join_body(next) {
                    return Err(format!(
                        "seq {next} has body {:?}",
                        String::from_utf8_lossy(&record.body)
                    ));
                }
                if (h.stream.as_str(), h.level, h.source.as_str()) != ("joined", 4, "producer") {
                    return Err(format!("seq {next} has header {h:?}"));
                }
                next += 1;
            }
            Ok(None) => return Err(format!("nothing for {WAIT:?} while expecting seq {next}")),
            Err(e) => return Err(format!("at seq {next}: {e}")),
        }
    }
    // Idle now: the subscription probes replay after a second; it must not deliver again.
    match subscription.next(Duration::from_millis(1_500)) {
        Ok(None) => Ok(()),
        Ok(Some(record)) => Err(format!(
            "record {} delivered after the last one",
            record.header.seq
        )),
        Err(e) => Err(format!("after the last record: {e}")),
    }
}

#[test]
fn subscription_joins_replay_to_live_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let sent = Arc::new(AtomicU64::new(0));

    let producer = {
        let (ctx, sent, pull) = (ctx.clone(), sent.clone(), logd.pull.clone());
        std::thread::spawn(move || {
            let push = ctx.socket(zmq::PUSH).unwrap();
            push.set_linger(5_000).unwrap();
            push.connect(&pull).unwrap();
            for i in 1..=JOIN_RECORDS {
                let frames: [&[u8]; 3] = [b"joined", b"level=warn source=producer", &join_body(i)];
                push.send_multipart(frames, 0).unwrap();
                sent.store(i, Ordering::Release);
                // Pacing, not synchronisation: keeps records flowing while subscribers join.
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };

    // Subscribers join at different points of the stream, each from the start.
    let subscribers: Vec<_> = [1, 15_000, 35_000]
        .into_iter()
        .map(|join_at| {
            let (ctx, sent) = (ctx.clone(), sent.clone());
            let (live, replay) = (logd.live.clone(), logd.replay.clone());
            std::thread::spawn(move || {
                poll(Duration::from_secs(30), || {
                    (sent.load(Ordering::Acquire) >= join_at).then_some(())
                })
                .ok_or("producer too slow")?;
                let at = sent.load(Ordering::Acquire);
                follow_joined(&ctx, &live, &replay, 1)
                    .map_err(|e| format!("subscriber joined at {at} sent: {e}"))
            })
        })
        .collect();
    producer.join().expect("producer panicked");
    let failures: Vec<String> = subscribers
        .into_iter()
        .filter_map(|s| s.join().expect("subscriber panicked").err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let (records, last) = replay_all(&ctx, &logd.replay, "joined");
    assert_eq!((records.len() as u64, last), (JOIN_RECORDS, JOIN_RECORDS));
    assert_eq!(appliance.stop().code(), Some(0));
}

/// A subscription asked to start at a sequence the stream has not reached yet starts there.
#[test]
fn subscription_from_a_later_sequence_starts_at_that_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    let body = |i: u64| format!("later {i}").into_bytes();
    let send = |sender: &mut AckedSender, range: std::ops::RangeInclusive<u64>| {
        let bodies: Vec<Vec<u8>> = range.map(body).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        sender.send_durable("later", 6, "t", &refs, WAIT).unwrap()
    };
    assert_eq!(send(&mut sender, 1..=100), (1, 100));
    let mut subscription =
        Subscription::start(&ctx, &logd.live, &logd.replay, "later", "500").unwrap();
    // Let the subscription's replay answer (it ends at once: nothing stored from 500 on).
    assert!(subscription
        .next(Duration::from_millis(300))
        .unwrap()
        .is_none());
    assert_eq!(send(&mut sender, 101..=700), (101, 700));
    let first = subscription
        .next(WAIT)
        .unwrap()
        .expect("no record delivered");
    assert_eq!(
        (
            first.header.seq,
            String::from_utf8_lossy(&first.body).into_owned()
        ),
        (500, "later 500".to_string()),
        "a subscription from seq 500 delivered seq {} first",
        first.header.seq
    );
    for seq in 501..=700 {
        let record = subscription.next(WAIT).unwrap().expect("record missing");
        assert_eq!(record.header.seq, seq);
        assert_eq!(record.body, body(seq));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. pyzmq's PUBHandler.

const PUB_HANDLER_SCRIPT: &str = r#"
import logging, subprocess, sys, time
import zmq
from zmq.log.handlers import PUBHandler

endpoint, depot, data = sys.argv[1:4]
ctx = zmq.Context()
sock = ctx.socket(zmq.PUB)
sock.connect(endpoint)
handler = PUBHandler(sock)
handler.root_topic = "pyapp"
log = logging.getLogger("depot-e2e")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(handler)

def stored():
    out = subprocess.run([depot, "log", "--data", data, "tail", "-s", "pyapp"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout

# PUB drops until logd's subscription reaches it: log a warm-up record until one is stored.
deadline = time.monotonic() + 20
while "warmup" not in stored():
    if time.monotonic() > deadline:
        sys.exit("logd never stored the warm-up record")
    log.info("warmup")

levels = [logging.INFO, logging.WARNING, logging.ERROR, logging.DEBUG, logging.CRITICAL]
for i in range(50):
    message = "py record %d" % i
    if i % 10 == 9:
        message = "db.pool::" + message
    log.log(levels[i % 5], message)
sock.close(linger=5000)
ctx.term()
"#;

#[test]
fn pyzmq_pub_handler_records_land_in_their_stream_with_levels() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let script = dir.path().join("pub_handler.py");
    std::fs::write(&script, PUB_HANDLER_SCRIPT).unwrap();
    let output = Command::new("python3")
        .arg(&script)
        .arg(&logd.sub)
        .arg(env!("CARGO_BIN_EXE_depot"))
        .arg(&appliance.data)
        .current_dir(dir.path())
        .output()
        .expect("python3 must be installed (make test installs pyzmq)");
    assert!(output.status.success(), "{}", output_text(&output));

    let ctx = zmq::Context::new();
    let is_warmup = |r: &Received| r.body == b"warmup\n";
    let records = wait_records(&ctx, &logd.replay, "pyapp", "50 records", |records| {
        records.iter().filter(|r| !is_warmup(r)).count() >= 50
    });
    let records: Vec<&Received> = records.iter().filter(|r| !is_warmup(r)).collect();
    assert_eq!(records.len(), 50, "records stored more than once?");
    let names = ["INFO", "WARNING", "ERROR", "DEBUG", "CRITICAL"];
    let levels = [6, 4, 3, 7, 2];
    for (i, record) in records.iter().enumerate() {
        let body = String::from_utf8_lossy(&record.body);
        let message = format!("py record {i}");
        let h = &record.header;
        assert_eq!(h.stream, "pyapp");
        assert_eq!(h.level, levels[i % 5], "record {i}: {body:?}");
        let source = if i % 10 == 9 { "db.pool" } else { "" };
        assert_eq!(h.source, source, "record {i}: {body:?}");
        match names[i % 5] {
            "INFO" => assert_eq!(body, format!("{message}\n")),
            "ERROR" => assert!(
                body.starts_with("ERROR pub_handler.py:")
                    && body.ends_with(&format!(" - {message} - None\n")),
                "record {i}: {body:?}"
            ),
            name => assert!(
                body.starts_with(&format!("{name} pub_handler.py:"))
                    && body.ends_with(&format!(" - {message}\n")),
                "record {i}: {body:?}"
            ),
        }
    }
    // In order of logging, after the warm-up records.
    assert!(records
        .windows(2)
        .all(|w| w[0].header.seq < w[1].header.seq));
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 4. util-linux logger.

#[test]
fn util_linux_logger_over_udp_and_tcp_lands_in_the_app_stream() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let port = |addr: &Option<String>| {
        let addr: SocketAddr = addr.as_deref().expect("syslog endpoint").parse().unwrap();
        assert_ne!(addr.port(), 0);
        addr.port().to_string()
    };
    let (udp, tcp) = (port(&logd.syslog_udp), port(&logd.syslog_tcp));
    let host = hostname();
    let short_host = host.split('.').next().unwrap().to_string();
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["-d", "-P", &udp, "--rfc5424"],
            "udp rfc5424 message",
            &host,
        ),
        (
            &["-d", "-P", &udp, "--rfc3164"],
            "udp rfc3164 message",
            &short_host,
        ),
        (&["-T", "-P", &tcp], "tcp newline-framed message", &host),
        (
            &["-T", "-P", &tcp, "--octet-count"],
            "tcp octet-counted message",
            &host,
        ),
    ];
    for (options, message, _) in &cases {
        let output = Command::new("logger")
            .args(["-n", "127.0.0.1", "-t", "webapp", "-p", "user.err"])
            .args(*options)
            .arg(message)
            .output()
            .expect("util-linux logger must be installed");
        assert!(
            output.status.success(),
            "{options:?}: {}",
            output_text(&output)
        );
    }
    let ctx = zmq::Context::new();
    let records = wait_records(
        &ctx,
        &logd.replay,
        "webapp",
        "4 logger records",
        |records| records.len() >= cases.len(),
    );
    assert_eq!(records.len(), cases.len(), "{records:?}");
    for (options, message, source) in &cases {
        let record = records
            .iter()
            .find(|r| body_is(r, message))
            .unwrap_or_else(|| panic!("{options:?}: {message:?} not stored as-is: {records:?}"));
        assert_eq!(record.header.level, 3, "{options:?}");
        assert_eq!(record.header.source, *source, "{options:?}");
    }
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 5. A stalled replayer blocks neither ingest nor live.

const BIG_RECORDS: u64 = 200_000;
const BIG_BATCH: u64 = 1_000;

fn big_body(seq: u64) -> Vec<u8> {
    format!("big record {seq:07}").into_bytes()
}

/// Sends records `from..=to` of "big" in acked batches, pipelined, and waits for every ack.
fn ingest_big(sender: &mut AckedSender, from: u64, to: u64) {
    let mut batches = (from..=to).step_by(BIG_BATCH as usize);
    let (mut in_flight, mut next_expected) = (0, from);
    loop {
        while in_flight < 8 {
            let Some(first) = batches.next() else { break };
            let bodies: Vec<Vec<u8>> = (first..=(first + BIG_BATCH - 1).min(to))
                .map(big_body)
                .collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            sender.send("big", 6, "loader", &refs).unwrap();
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let ack = sender.recv_ack(WAIT).expect("ingest is blocked");
        let (first, last) = ack.result.expect("batch refused");
        assert_eq!(first, next_expected, "acked batches out of order");
        next_expected = last + 1;
        in_flight -= 1;
    }
    assert_eq!(next_expected, to + 1);
}

/// The live and replay counters, for failure messages.
fn live_metrics(appliance: &Appliance) -> String {
    let (_, text) = appliance.get("/metrics");
    text.lines()
        .filter(|l| l.starts_with("depot_logd_live") || l.starts_with("depot_logd_replay"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn stalled_replayer_blocks_neither_ingest_nor_live() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();

    // Live subscriber, reading all the time. "probe " tells when its subscriptions are applied.
    let live = ctx.socket(zmq::SUB).unwrap();
    live.set_rcvhwm(0).unwrap();
    live.connect(&logd.live).unwrap();
    live.set_subscribe(b"big ").unwrap();
    live.set_subscribe(b"probe ").unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&logd.pull).unwrap();
    poll(WAIT, || {
        push.send_multipart([&b"probe"[..], b"ping"], 0).unwrap();
        (live.poll(zmq::POLLIN, 20).unwrap() > 0).then_some(())
    })
    .expect("live subscription never took effect");
    let live_seen = Arc::new(AtomicU64::new(0));
    let stop_live = Arc::new(AtomicBool::new(false));
    let live_reader = {
        let (live_seen, stop_live) = (live_seen.clone(), stop_live.clone());
        std::thread::spawn(move || {
            let mut seen = vec![false; BIG_RECORDS as usize + 1];
            let mut distinct = 0u64;
            let mut problems = Vec::new();
            while !stop_live.load(Ordering::Acquire) && distinct < BIG_RECORDS {
                if live.poll(zmq::POLLIN, 50).unwrap() == 0 {
                    continue;
                }
                let frames = live.recv_multipart(0).unwrap();
                if !frames[0].starts_with(b"big ") {
                    continue;
                }
                let header = protocol::decode_header(&frames[1]).unwrap();
                let seq = header.seq;
                if seq == 0 || seq > BIG_RECORDS || frames[2] != big_body(seq) {
                    problems.push(format!("bad live record {header:?}"));
                    continue;
                }
                if !std::mem::replace(&mut seen[seq as usize], true) {
                    distinct += 1;
                    live_seen.store(distinct, Ordering::Release);
                }
            }
            if distinct < BIG_RECORDS {
                let mut missing = Vec::new();
                let mut seq = 1;
                while seq <= BIG_RECORDS {
                    if !seen[seq as usize] {
                        let start = seq;
                        while seq <= BIG_RECORDS && !seen[seq as usize] {
                            seq += 1;
                        }
                        missing.push(format!("{start}..{seq}"));
                    }
                    seq += 1;
                }
                let shown = missing.len().min(20);
                problems.push(format!(
                    "live missed {} records in {} ranges, first {:?}",
                    BIG_RECORDS - distinct,
                    missing.len(),
                    &missing[..shown]
                ));
            }
            problems
        })
    };

    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    let half = BIG_RECORDS / 2;
    ingest_big(&mut sender, 1, half);

    // The stalled replayer: subscribes, then reads nothing while the rest is ingested.
    let stalled = ctx.socket(zmq::SUB).unwrap();
    stalled.set_rcvhwm(1_000).unwrap();
    stalled.set_rcvbuf(16 * 1024).unwrap();
    stalled.set_linger(0).unwrap();
    stalled.connect(&logd.replay).unwrap();
    let topic = b"replay/big/1/stall";
    stalled.set_subscribe(topic).unwrap();
    poll(WAIT, || {
        (appliance.metric("depot_logd_replays_started_total") >= 1.0).then_some(())
    })
    .expect("the stalled replay never started");

    let started = Instant::now();
    ingest_big(&mut sender, half + 1, BIG_RECORDS);
    let ingest_time = started.elapsed();
    let all_live = poll(WAIT, || {
        (live_seen.load(Ordering::Acquire) == BIG_RECORDS).then_some(())
    });
    stop_live.store(true, Ordering::Release);
    let live_problems = live_reader.join().unwrap();
    let live_report = format!(
        "live subscriber saw {} of {BIG_RECORDS} records: {live_problems:?}; {}",
        live_seen.load(Ordering::Acquire),
        live_metrics(&appliance)
    );
    // The replay really was held back by its reader, server side.
    let replayed = appliance.metric("depot_logd_replay_records_total");
    assert!(
        replayed < half as f64,
        "the replayer did not stall: {replayed} records replayed"
    );
    assert_eq!(appliance.metric("depot_logd_replays_finished_total"), 0.0);
    eprintln!("second half ingested in {ingest_time:?} next to a stalled replayer");

    // Now the stalled replayer reads: everything, in order, then the end marker.
    let mut expected = 1;
    loop {
        assert!(
            stalled.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0,
            "replay stopped at seq {expected}"
        );
        let frames = stalled.recv_multipart(0).unwrap();
        assert_eq!(frames.len(), 3, "replay message of {} frames", frames.len());
        assert_eq!(frames[0], topic);
        if frames[1] == protocol::END_MARKER {
            assert_eq!(expected, BIG_RECORDS + 1, "end marker before the end");
            assert_eq!(be_u64(&frames[2]), BIG_RECORDS, "end marker's sequence");
            break;
        }
        let header = protocol::decode_header(&frames[1]).unwrap();
        assert_eq!(header.seq, expected, "replay out of sequence");
        assert_eq!(frames[2], big_body(expected));
        expected += 1;
    }
    assert!(
        all_live.is_some() && live_problems.is_empty(),
        "{live_report}"
    );
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input never stops the service.

fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

const MALFORMED: &str = "depot_logd_rejected_total{reason=\"malformed\"}";
const OVERSIZE: &str = "depot_logd_rejected_total{reason=\"oversize\"}";
/// Larger than the default 1 MiB message limit.
const TOO_BIG: usize = 1024 * 1024 + 100;

/// Waits until the metric `sample` reaches `value`; then it must be exactly that.
fn expect_metric(appliance: &Appliance, sample: &str, value: f64, what: &str) {
    let reached = poll(WAIT, || (appliance.metric(sample) >= value).then_some(()));
    let now = appliance.metric(sample);
    assert!(
        reached.is_some() && now == value,
        "{what}: {sample} is {now}, expected {value}"
    );
}

#[test]
fn malformed_input_on_every_endpoint_never_stops_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let stored = |body: &'static str| {
        wait_records(&ctx, &logd.replay, "badinput", body, move |records| {
            records.iter().any(|r| body_is(r, body))
        })
    };

    // PULL.
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&logd.pull).unwrap();
    let bad_pull = [
        frames(&[b"only-a-stream"]),
        frames(&[b"bad name", b"x"]),
        frames(&[b"", b"x"]),
        frames(&[b"\xff\xfe", b"x"]),
        frames(&[&[b's'; 256], b"x"]),
        frames(&[b"bad\ncontrol", b"x"]),
        frames(&[b"badinput", b"level=loud", b"x"]),
        frames(&[b"badinput", b"levelwarn", b"x"]),
        frames(&[b"badinput", b"\xff", b"x"]),
    ];
    let malformed = appliance.metric(MALFORMED);
    for message in &bad_pull {
        push.send_multipart(message, 0).unwrap();
    }
    push.send_multipart(frames(&[b"badinput", &vec![b'x'; TOO_BIG]]), 0)
        .unwrap();
    push.send_multipart(
        frames(&[b"badinput", b"level=info source=pull", b"pull ok"]),
        0,
    )
    .unwrap();
    stored("pull ok");
    let malformed = malformed + bad_pull.len() as f64;
    expect_metric(&appliance, MALFORMED, malformed, "PULL");
    expect_metric(&appliance, OVERSIZE, 1.0, "PULL");

    // SUB (PUB publishers connect to it): warm up until logd's subscription reaches the PUB.
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.connect(&logd.sub).unwrap();
    let mut warm = false;
    wait_records(&ctx, &logd.replay, "badinput", "a PUB record", |records| {
        if !warm {
            publisher
                .send_multipart([&b"badinput.INFO"[..], b"pub warmup"], 0)
                .unwrap();
        }
        warm = records.iter().any(|r| body_is(r, "pub warmup"));
        warm
    });
    let bad_pub = [
        frames(&[b"badinput.INFO", b"a", b"b"]),
        frames(&[b"badinput.INFO"]),
        frames(&[b"\xff.INFO", b"x"]),
        frames(&[b"bad name.INFO", b"x"]),
        frames(&[b"", b"x"]),
    ];
    for message in &bad_pub {
        publisher.send_multipart(message, 0).unwrap();
    }
    publisher
        .send_multipart(frames(&[b"badinput.ERROR", &vec![b'x'; TOO_BIG]]), 0)
        .unwrap();
    publisher
        .send_multipart([&b"badinput.INFO"[..], b"pub ok"], 0)
        .unwrap();
    stored("pub ok");
    let malformed = malformed + bad_pub.len() as f64;
    expect_metric(&appliance, MALFORMED, malformed, "SUB");
    expect_metric(&appliance, OVERSIZE, 2.0, "SUB");

    // Acked ROUTER: refusals name the batch when it has an id; no id, no answer.
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&logd.acked).unwrap();
    let bad_acked = [
        // An empty batch id and nothing else: nothing to answer to.
        frames(&[b""]),
        // A batch id longer than 255 bytes: nothing to answer to either.
        frames(&[&[b'i'; 256], b"badinput", b"", b"x"]),
        // A batch id with no frames after it.
        frames(&[b"id-alone"]),
        frames(&[b"id-bad-stream", b"bad name", b"", b"x"]),
        frames(&[b"id-bad-attributes", b"badinput", b"level=loud", b"x"]),
        frames(&[b"id-no-body", b"badinput", b""]),
    ];
    for message in &bad_acked {
        dealer.send_multipart(message, 0).unwrap();
    }
    dealer
        .send_multipart(
            frames(&[b"id-oversize", b"badinput", b"", &vec![b'x'; TOO_BIG]]),
            0,
        )
        .unwrap();
    dealer
        .send_multipart(
            frames(&[b"id-ok", b"badinput", b"source=acked", b"acked ok"]),
            0,
        )
        .unwrap();
    let mut replies = Vec::new();
    loop {
        assert!(
            dealer.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0,
            "no answer for the valid batch; replies so far: {replies:?}"
        );
        let reply = dealer.recv_multipart(0).unwrap();
        let id = String::from_utf8_lossy(&reply[0]).into_owned();
        let ok = id == "id-ok";
        let text = match reply.as_slice() {
            [_, marker, reason] if marker.as_slice() == protocol::ERROR_MARKER => {
                format!("ERR {}", String::from_utf8_lossy(reason))
            }
            [_, first, last] if first.len() == 8 && last.len() == 8 => {
                format!("OK {}..={}", be_u64(first), be_u64(last))
            }
            _ => panic!("unexpected reply {reply:?}"),
        };
        replies.push((id, text));
        if ok {
            break;
        }
    }
    let ids: Vec<&str> = replies.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "id-alone",
            "id-bad-stream",
            "id-bad-attributes",
            "id-no-body",
            "id-oversize",
            "id-ok"
        ],
        "{replies:#?}"
    );
    let expect_reason = |i: usize, words: &str| {
        assert!(
            replies[i].1.starts_with("ERR ") && replies[i].1.contains(words),
            "{:?} should be an error about {words:?}",
            replies[i]
        )
    };
    expect_reason(0, "frame count");
    expect_reason(1, "invalid stream name");
    expect_reason(2, "invalid attributes");
    expect_reason(3, "frame count");
    expect_reason(4, "exceeds the limit");
    assert!(replies[5].1.starts_with("OK "), "{:?}", replies[5]);
    stored("acked ok");
    let malformed = malformed + bad_acked.len() as f64;
    expect_metric(&appliance, MALFORMED, malformed, "acked");
    expect_metric(&appliance, OVERSIZE, 3.0, "acked");

    // Syslog over UDP.
    let udp_addr: SocketAddr = logd.syslog_udp.as_deref().unwrap().parse().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let bad_udp: [&[u8]; 7] = [
        b"",
        b"no pri at all",
        b"<999>pri out of range",
        b"<abc>bad pri",
        b"<>empty pri",
        b"\x00\xff\xfe binary",
        b"<14>1 - host app - - [unterminated structured data",
    ];
    for datagram in bad_udp {
        udp.send_to(datagram, udp_addr).unwrap();
    }
    udp.send_to(b"<14>1 - testhost badinput - - - udp ok", udp_addr)
        .unwrap();
    let records = stored("udp ok");
    let udp_ok = records.iter().find(|r| body_is(r, "udp ok")).unwrap();
    assert_eq!(
        (udp_ok.header.level, udp_ok.header.source.as_str()),
        (6, "testhost")
    );
    let malformed = malformed + bad_udp.len() as f64;
    expect_metric(&appliance, MALFORMED, malformed, "syslog UDP");

    // Syslog over TCP: garbage, then a valid message on the same connection.
    let tcp_addr = logd.syslog_tcp.as_deref().unwrap();
    let mut tcp = TcpStream::connect(tcp_addr).unwrap();
    tcp.write_all(b"hello garbage\n<999>out of range\n")
        .unwrap();
    tcp.write_all(b"123456789012345678901 too many digits\n")
        .unwrap();
    tcp.write_all(b"0 zero length\n").unwrap();
    tcp.write_all(b"<14>1 - testhost badinput - - - tcp ok\n")
        .unwrap();
    stored("tcp ok");
    let malformed = malformed + 4.0;
    expect_metric(&appliance, MALFORMED, malformed, "syslog TCP");
    let mut tcp2 = TcpStream::connect(tcp_addr).unwrap();
    let again = "<14>Oct 11 22:14:15 testhost badinput: tcp again ok";
    tcp2.write_all(format!("{} {again}", again.len()).as_bytes())
        .unwrap();
    stored("tcp again ok");
    tcp.write_all(b"<14>Oct 11 22:14:15 testhost badinput: tcp still ok\n")
        .unwrap();
    stored("tcp still ok");

    // Replay subscriptions that are not replays: refused, counted, and given nothing.
    let refused = appliance.metric("depot_logd_replay_rejected_total");
    let bad_topics: [&[u8]; 6] = [
        b"",
        b"replay/x",
        b"replay/badinput/1/",
        b"replay/bad name/1/n",
        b"replay/badinput/abc/n",
        b"replay/badinput/-10y/n",
    ];
    let bad_replayer = ctx.socket(zmq::SUB).unwrap();
    bad_replayer.set_linger(0).unwrap();
    bad_replayer.connect(&logd.replay).unwrap();
    for topic in bad_topics {
        bad_replayer.set_subscribe(topic).unwrap();
    }
    expect_metric(
        &appliance,
        "depot_logd_replay_rejected_total",
        refused + bad_topics.len() as f64,
        "replay topics",
    );
    let (records, last) = replay_all(&ctx, &logd.replay, "badinput");
    assert_eq!(records.len() as u64, last);
    assert!(
        bad_replayer.poll(zmq::POLLIN, 300).unwrap() == 0,
        "a refused replay subscription received {:?}",
        bad_replayer.recv_multipart(0)
    );

    // Every path still works, and the process is healthy.
    push.send_multipart(frames(&[b"badinput", b"pull still ok"]), 0)
        .unwrap();
    publisher
        .send_multipart([&b"badinput.WARN"[..], b"pub still ok"], 0)
        .unwrap();
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    sender
        .send_durable("badinput", 6, "t", &[b"acked still ok"], WAIT)
        .unwrap();
    udp.send_to(
        b"<14>Oct 11 22:14:15 testhost badinput: udp still ok",
        udp_addr,
    )
    .unwrap();
    for body in [
        "pull still ok",
        "pub still ok",
        "acked still ok",
        "udp still ok",
    ] {
        stored(body);
    }
    assert_eq!(appliance.get("/health").0, 200);
    assert_eq!(appliance.child.try_wait().unwrap(), None, "depot exited");
    assert!(appliance.metric(MALFORMED) > 0.0);
    assert!(appliance.metric("depot_logd_replay_rejected_total") > 0.0);
    // Open syslog TCP connections keep depot from stopping (see the test after this one).
    drop((tcp, tcp2));
    assert_eq!(appliance.stop().code(), Some(0));
}

/// SIGTERM stops the appliance while a syslog client is still connected over TCP (rsyslog and
/// syslog-ng forwarders keep their connection open for good).
/// `max_frames` and the frame cap (ZMQ_MAXMSGSIZE): a message of too many frames is refused
/// and counted (with an answer on the acked path); a frame far beyond `max_message_size` costs
/// its sender the connection before logd buffers it; logd serves everyone else throughout.
#[test]
fn message_limits_refuse_and_count_and_logd_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[logd]\n",
        "[logd]\nmax_frames = 8\nmax_message_size = \"64KiB\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let stored = |body: &'static str| {
        wait_records(&ctx, &logd.replay, "limits", body, move |records| {
            records.iter().any(|r| body_is(r, body))
        })
    };
    let with_bodies = |head: &[&[u8]], n: usize| -> Vec<Vec<u8>> {
        let mut message = frames(head);
        message.extend((0..n).map(|i| format!("b{i}").into_bytes()));
        message
    };

    // PULL: 9 frames are refused, 7 stored; a frame just over the byte limit reaches
    // the decoder and is counted too.
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&logd.pull).unwrap();
    push.send_multipart(with_bodies(&[b"limits", b""], 7), 0)
        .unwrap();
    push.send_multipart(frames(&[b"limits", &vec![b'x'; 65 * 1024]]), 0)
        .unwrap();
    push.send_multipart(with_bodies(&[b"limits", b""], 5), 0)
        .unwrap();
    push.send_multipart(frames(&[b"limits", b"pull ok"]), 0)
        .unwrap();
    let records = stored("pull ok");
    assert_eq!(
        records.len(),
        6,
        "the message of too many frames was stored"
    );
    expect_metric(&appliance, OVERSIZE, 2.0, "PULL");

    // Acked: the refusal names the batch and the limit.
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&logd.acked).unwrap();
    dealer
        .send_multipart(with_bodies(&[b"id-many", b"limits", b""], 9), 0)
        .unwrap();
    assert!(dealer.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0);
    let reply = dealer.recv_multipart(0).unwrap();
    assert_eq!(reply[0], b"id-many");
    assert_eq!(reply[1], protocol::ERROR_MARKER);
    let reason = String::from_utf8_lossy(&reply[2]);
    assert!(
        reason.contains("12 frames exceeds the limit of 8"),
        "{reason}"
    );
    expect_metric(&appliance, OVERSIZE, 3.0, "acked");

    // A frame beyond the cap (2 x 64 KiB + 64 KiB): libzmq drops that connection unread.
    let big = ctx.socket(zmq::PUSH).unwrap();
    big.set_linger(0).unwrap();
    big.monitor("inproc://limits-big", zmq::SocketEvent::DISCONNECTED as i32)
        .unwrap();
    let events = ctx.socket(zmq::PAIR).unwrap();
    events.connect("inproc://limits-big").unwrap();
    big.connect(&logd.pull).unwrap();
    big.send_multipart(frames(&[b"limits", &vec![b'y'; 200 * 1024]]), 0)
        .unwrap();
    assert!(
        events.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0,
        "logd kept the connection of a frame beyond the cap"
    );
    push.send_multipart(frames(&[b"limits", b"after the big frame"]), 0)
        .unwrap();
    let records = stored("after the big frame");
    assert!(
        records.iter().all(|r| r.body.len() < 1024),
        "a frame beyond the cap was stored"
    );
    assert_eq!(
        appliance.metric(OVERSIZE),
        3.0,
        "the frame beyond the cap reached the decoder"
    );
    assert_eq!(appliance.get("/health").0, 200);
    assert!(appliance.stop().success());
}

#[test]
fn sigterm_stops_depot_while_a_syslog_tcp_client_is_connected() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut tcp = TcpStream::connect(logd.syslog_tcp.as_deref().unwrap()).unwrap();
    tcp.write_all(b"<14>1 - testhost forwarder - - - connected\n")
        .unwrap();
    wait_records(&ctx, &logd.replay, "forwarder", "the record", |records| {
        records.len() == 1
    });
    let mut appliance = appliance;
    appliance.signal(libc::SIGTERM);
    let status = poll(Duration::from_secs(15), || {
        appliance.child.try_wait().unwrap()
    });
    assert!(
        status.is_some(),
        "depot did not exit within 15 s of SIGTERM with a syslog TCP client connected; log:\n{}",
        appliance.stderr()
    );
    assert_eq!(status.unwrap().code(), Some(0), "{}", appliance.stderr());
    drop(tcp);
}

/// A syslog TCP frame over the message limit is refused as oversize, like on the zmq paths.
#[test]
fn oversize_syslog_tcp_frame_is_counted_as_oversize() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut tcp = TcpStream::connect(logd.syslog_tcp.as_deref().unwrap()).unwrap();
    let mut frame = b"<14>1 - testhost big - - - ".to_vec();
    frame.resize(TOO_BIG, b'x');
    frame.push(b'\n');
    tcp.write_all(&frame).unwrap();
    tcp.write_all(b"<14>1 - testhost big - - - after the big one\n")
        .unwrap();
    let records = wait_records(&ctx, &logd.replay, "big", "the next frame", |records| {
        records.iter().any(|r| body_is(r, "after the big one"))
    });
    assert_eq!(records.len(), 1, "the oversize frame was stored");
    let (malformed, oversize) = (appliance.metric(MALFORMED), appliance.metric(OVERSIZE));
    assert_eq!(
        (malformed, oversize),
        (0.0, 1.0),
        "an oversize syslog frame must count as reason=\"oversize\""
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The command line.

fn depot_log(dir: &Path, data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = depot();
    command
        .arg("log")
        .arg("--data")
        .arg(data)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(output.status.success(), "{}", output_text(output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
        })
        .collect()
}

#[test]
fn cli_sends_from_stdin_and_tails_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let data = appliance.data.clone();
    let cli = |args: &[&str], stdin: Option<&str>| depot_log(dir.path(), &data, args, stdin);

    let sent = cli(
        &["send", "-s", "cli.app", "-l", "warn"],
        Some("first line\nsecond line has an error\nthird line\n"),
    );
    assert!(sent.status.success(), "{}", output_text(&sent));
    let sent = cli(
        &["send", "-s", "cli.app", "-l", "error", "disk", "is", "full"],
        None,
    );
    assert!(sent.status.success(), "{}", output_text(&sent));
    let sent = cli(
        &["send", "-s", "cli.app", "--source", "tester", "just info"],
        None,
    );
    assert!(sent.status.success(), "{}", output_text(&sent));
    let refused = cli(&["send", "-s", "bad name", "x"], None);
    assert!(!refused.status.success(), "{}", output_text(&refused));
    let refused = cli(&["send", "-s", "cli.app", "-l", "loud", "x"], None);
    assert!(!refused.status.success(), "{}", output_text(&refused));

    let host = hostname();
    let expected = [
        (1, "WARN", host.as_str(), "first line"),
        (2, "WARN", host.as_str(), "second line has an error"),
        (3, "WARN", host.as_str(), "third line"),
        (4, "ERROR", host.as_str(), "disk is full"),
        (5, "INFO", "tester", "just info"),
    ];
    let lines = json_lines(&cli(&["tail", "--json", "-s", "cli.app"], None));
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    let started = std::time::SystemTime::now() - Duration::from_secs(600);
    for (line, (seq, level, source, body)) in lines.iter().zip(expected) {
        assert_eq!(line["stream"], "cli.app", "{line}");
        assert_eq!(line["seq"], seq, "{line}");
        assert_eq!(line["level"], level, "{line}");
        assert_eq!(line["source"], source, "{line}");
        assert_eq!(line["body"], body, "{line}");
        let ts = line["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts in {line}"));
        let ts = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(ts > started && ts < std::time::SystemTime::now(), "{line}");
    }

    let seqs = |output: Output| -> Vec<u64> {
        json_lines(&output)
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
    };
    let grep = ["tail", "--json", "-s", "cli.app", "--grep", "error"];
    assert_eq!(seqs(cli(&grep, None)), [2]);
    let level = ["tail", "--json", "-s", "cli.app", "--level", "error"];
    assert_eq!(seqs(cli(&level, None)), [4]);
    let level = ["tail", "--json", "-s", "cli.app", "--level", "warn"];
    assert_eq!(seqs(cli(&level, None)), [1, 2, 3, 4]);
    let both = [
        "tail", "--json", "-s", "cli.app", "--level", "warn", "--grep", "line",
    ];
    assert_eq!(seqs(cli(&both, None)), [1, 2, 3]);
    assert_eq!(
        seqs(cli(
            &["tail", "--json", "-s", "cli.app", "--from", "4"],
            None
        )),
        [4, 5]
    );
    let since = ["tail", "--json", "-s", "cli.app", "--since", "10m"];
    assert_eq!(seqs(cli(&since, None)), [1, 2, 3, 4, 5]);
    // Without -s: every stream.
    assert_eq!(seqs(cli(&["tail", "--json"], None)), [1, 2, 3, 4, 5]);

    let text = cli(&["tail", "-s", "cli.app"], None);
    assert!(text.status.success(), "{}", output_text(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.contains("cli.app#4") && text.contains("disk is full"),
        "{text}"
    );

    let streams = cli(&["streams"], None);
    assert!(streams.status.success(), "{}", output_text(&streams));
    let streams = String::from_utf8_lossy(&streams.stdout);
    assert!(
        streams
            .lines()
            .any(|l| l.starts_with("cli.app ") && l.ends_with(" 5")),
        "{streams}"
    );

    // tail -f follows records sent after it started.
    let mut follower = depot()
        .arg("log")
        .arg("--data")
        .arg(&data)
        .args(["tail", "-f", "--json", "-s", "cli.app"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (lines, stdout) = (lines.clone(), follower.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        })
    };
    // It starts at "now": send until one arrives (its subscription is asynchronous).
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &appliance.logd().acked).unwrap();
    let followed = poll(WAIT, || {
        sender
            .send_durable("cli.app", 6, "t", &[b"follow me"], WAIT)
            .unwrap();
        let lines = lines.lock().unwrap();
        (!lines.is_empty()).then(|| lines.clone())
    });
    let followed = followed.expect("tail -f printed nothing");
    let (first, _) = sender
        .send_durable("cli.app", 3, "t", &[b"followed last"], WAIT)
        .unwrap();
    let all = poll(WAIT, || {
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .any(|l| l.contains("followed last"))
            .then(|| lines.clone())
    });
    let _ = follower.kill();
    let _ = follower.wait();
    reader.join().unwrap();
    let all = all.unwrap_or_else(|| panic!("tail -f missed a record; printed {followed:?}"));
    let records: Vec<serde_json::Value> = all
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && *seqs.last().unwrap() == first,
        "tail -f printed {all:#?}"
    );
    assert!(
        seqs[0] > 5,
        "tail -f without --from printed old records: {all:#?}"
    );
    assert_eq!(appliance.stop().code(), Some(0));
}

fn packed_body(i: u64) -> Vec<u8> {
    format!("packed record {i:06} {}", "x".repeat((i % 150) as usize)).into_bytes()
}

/// The packed live endpoint carries every record once, in order, with its body: records sent
/// one per frame, packed ingest frames, and a packed frame above the packed message limit.
#[test]
fn packed_live_carries_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let appliance = start(dir.path());
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(0).unwrap();
    sub.connect(&logd.live_packed).unwrap();
    sub.set_subscribe(b"packed.").unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(5_000).unwrap();
    push.connect(&logd.pull).unwrap();
    // Handshake: probes until one arrives, so the subscription is in place.
    poll(WAIT, || {
        push.send_multipart([&b"packed.probe"[..], b"probe"], 0)
            .unwrap();
        (sub.poll(zmq::POLLIN, 50).unwrap() > 0).then_some(())
    })
    .expect("the packed live subscription never took effect");

    let mut next = 1u64;
    for _ in 0..2_000 {
        push.send_multipart(
            [
                &b"packed.s"[..],
                b"level=warn source=one",
                &packed_body(next),
            ],
            0,
        )
        .unwrap();
        next += 1;
    }
    for size in [100u64, 37, 1, 2_000] {
        // 2,000 records of ~100-250 B pack above the 64 KiB limit of a packed live message.
        let bodies: Vec<Vec<u8>> = (next..next + size).map(packed_body).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let frame = protocol::pack_bodies(&refs);
        push.send_multipart(
            [&b"packed.s"[..], b"level=warn source=one packed=1", &frame],
            0,
        )
        .unwrap();
        next += size;
    }
    let expected = next - 1;

    let mut seen = 0u64;
    let mut messages = 0u64;
    let deadline = Instant::now() + WAIT;
    while seen < expected {
        assert!(
            Instant::now() < deadline,
            "saw {seen} of {expected} records"
        );
        if sub.poll(zmq::POLLIN, 200).unwrap() == 0 {
            continue;
        }
        let frames = sub.recv_multipart(0).unwrap();
        if frames[0].starts_with(b"packed.probe") {
            continue;
        }
        assert_eq!(frames[0], b"packed.s WARN", "topic");
        let batch = protocol::decode_packed_live(&frames).unwrap();
        assert_eq!(
            batch.header.seq,
            seen + 1,
            "first sequence of a packed message"
        );
        assert_eq!(
            (batch.header.stream.as_str(), batch.header.source.as_str()),
            ("packed.s", "one")
        );
        assert!(frames[3].len() <= protocol::PACKED_LIVE_BYTES);
        for (i, body) in batch.bodies.iter().enumerate() {
            let seq = batch.header.seq + i as u64;
            assert_eq!(*body, &packed_body(seq)[..], "body of #{seq}");
        }
        seen += batch.bodies.len() as u64;
        messages += 1;
    }
    // One message per ingest message, the 2,000-record frame split in a few.
    assert!(
        (2_005..2_015).contains(&messages),
        "{messages} messages for {expected} records"
    );
    let published = appliance.metric("depot_logd_live_packed_published_total");
    assert!(published >= messages as f64, "{published} < {messages}");
    assert_eq!(appliance.stop().code(), Some(0));
}
