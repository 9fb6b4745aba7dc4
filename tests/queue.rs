//! The queue service end to end: a real `depot serve` process on ephemeral ports, talked to
//! by the Rust client library, raw zmq sockets and the `depot queue` command line.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{depot, poll, write_config, Appliance};
use depot_queue::client::{Consumer, Delivery, Producer, Pusher};
use depot_queue::QueueStats;

/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(15);

fn start(dir: &Path, extra: &str) -> (Appliance, PathBuf) {
    let config = write_config(dir, extra);
    (Appliance::start(&dir.join("data"), &config), config)
}

fn stats(ctx: &zmq::Context, router: &str, queue: &str) -> QueueStats {
    depot_queue::client::stats(ctx, router, Some(queue), WAIT)
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

/// Receives `n` messages (or fewer if none comes within `WAIT`), acking each batch received.
fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        match consumer.recv(WAIT).unwrap() {
            Some(d) => {
                let last = consumer.buffered() == 0;
                let seq = d.seq;
                got.push(d);
                if last || got.len() == n {
                    consumer.ack_through(seq).unwrap();
                }
            }
            None => break,
        }
    }
    got
}

fn id_of(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

fn message(id: u64) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(format!(" message {id}").as_bytes());
    m
}

// ---------------------------------------------------------------------------------------------
// Confirms, acks and SIGKILL.

/// What the producer thread knows: confirmed ids and the round each id was first sent in.
#[derive(Default)]
struct Produced {
    confirmed: HashSet<u64>,
    /// Confirmed id → (round, seq).
    placed: HashMap<u64, (usize, u64)>,
}

/// Publishes batches of ids from `next` on, re-sending unconfirmed ones first, until `stop`.
fn produce_until(
    ctx: &zmq::Context,
    router: &str,
    round: usize,
    resend: Vec<u64>,
    next: &mut u64,
    produced: &Mutex<Produced>,
    stop: &AtomicBool,
) -> Vec<u64> {
    let mut producer = Producer::connect(ctx, router).unwrap();
    let mut pending: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut queue_ids: Vec<u64> = resend;
    while !stop.load(Ordering::Acquire) {
        while pending.len() < 8 {
            let mut ids: Vec<u64> = queue_ids.drain(..queue_ids.len().min(100)).collect();
            while ids.len() < 100 {
                ids.push(*next);
                *next += 1;
            }
            let bodies: Vec<Vec<u8>> = ids.iter().map(|&id| message(id)).collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            let tag = producer.publish("durable", &refs).unwrap();
            pending.insert(tag, ids);
        }
        match producer.recv_confirm(Duration::from_millis(200)) {
            Ok(c) => {
                let ids = pending.remove(&c.tag).expect("confirm of an unknown tag");
                let (first, last) = c.result.expect("publish refused");
                assert_eq!(last - first + 1, ids.len() as u64);
                let mut p = produced.lock().unwrap();
                for (i, id) in ids.into_iter().enumerate() {
                    p.confirmed.insert(id);
                    p.placed.insert(id, (round, first + i as u64));
                }
            }
            Err(_) => continue,
        }
    }
    // After the kill: confirms already on their way count; the rest is sent again.
    while let Ok(c) = producer.recv_confirm(Duration::from_millis(100)) {
        if let (Some(ids), Ok((first, _))) = (pending.remove(&c.tag), c.result) {
            let mut p = produced.lock().unwrap();
            for (i, id) in ids.into_iter().enumerate() {
                p.confirmed.insert(id);
                p.placed.insert(id, (round, first + i as u64));
            }
        }
    }
    let mut unconfirmed: Vec<u64> = pending.into_values().flatten().collect();
    unconfirmed.extend(queue_ids);
    unconfirmed.sort_unstable();
    unconfirmed
}

#[test]
fn confirmed_messages_survive_sigkill_at_random_moments_at_least_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "redelivery_timeout = \"60s\"\n");
    let data = dir.path().join("data");
    let ctx = zmq::Context::new();
    let produced = Arc::new(Mutex::new(Produced::default()));
    // seq → id, from every delivery: a delivered sequence never changes its message.
    let mut delivered: BTreeMap<u64, u64> = BTreeMap::new();
    let mut received_ids: HashSet<u64> = HashSet::new();
    let mut next_id = 0u64;
    let mut resend = Vec::new();
    // Pseudo-random kill moments (deliveries seen before the kill), fixed seed.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let kills: Vec<usize> = (0..3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            2_000 + (x % 20_000) as usize
        })
        .collect();
    for round in 0..=kills.len() {
        let appliance = Appliance::start(&data, &config);
        let router = appliance.queue().router;
        let last_round = round == kills.len();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = (!last_round).then(|| {
            let (ctx, router, produced, stop) =
                (ctx.clone(), router.clone(), produced.clone(), stop.clone());
            let mut next = next_id;
            let resend = std::mem::take(&mut resend);
            std::thread::spawn(move || {
                let left = produce_until(&ctx, &router, round, resend, &mut next, &produced, &stop);
                (left, next)
            })
        });
        let mut consumer = Consumer::subscribe(&ctx, &router, "durable", "", 2_000, WAIT).unwrap();
        let mut last_seq = 0;
        let mut seen = 0;
        loop {
            if !last_round && seen >= kills[round] {
                break;
            }
            if last_round && received_ids.is_superset(&produced.lock().unwrap().confirmed) {
                break;
            }
            let d = consumer.recv(WAIT).unwrap();
            let Some(d) = d else {
                assert!(last_round, "round {round}: no delivery within {WAIT:?}");
                break;
            };
            assert!(
                d.seq > last_seq,
                "round {round}: seq {} after {last_seq}: a single consumer sees the queue's order",
                d.seq
            );
            last_seq = d.seq;
            let id = id_of(&d.payload);
            if let Some(previous) = delivered.insert(d.seq, id) {
                assert_eq!(previous, id, "seq {} changed its message", d.seq);
            }
            received_ids.insert(id);
            seen += 1;
            if consumer.buffered() == 0 {
                consumer.ack_through(d.seq).unwrap();
            }
            if last_round && received_ids.is_superset(&produced.lock().unwrap().confirmed) {
                break;
            }
        }
        if last_round {
            assert_eq!(appliance.stop().code(), Some(0));
            break;
        }
        appliance.kill();
        stop.store(true, Ordering::Release);
        let (left, next) = producer.unwrap().join().unwrap();
        resend = left;
        next_id = next;
    }
    let produced = produced.lock().unwrap();
    assert!(
        produced.confirmed.len() > 10_000,
        "too few confirmed: {}",
        produced.confirmed.len()
    );
    let lost: Vec<_> = produced
        .confirmed
        .difference(&received_ids)
        .take(10)
        .collect();
    assert!(lost.is_empty(), "confirmed but never delivered: {lost:?}");
    // Each producer round's order holds in the queue: within a round, ids grow with seq.
    let mut by_round: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    for (&id, &(round, seq)) in &produced.placed {
        by_round.entry(round).or_default().push((seq, id));
    }
    // A round sends the re-sent ids (sorted) and then new ones: increasing all along.
    for (round, mut placed) in by_round {
        placed.sort_unstable();
        assert!(
            placed.windows(2).all(|w| w[0].1 < w[1].1),
            "round {round}: the queue does not keep the producer's order"
        );
    }
    assert_eq!(
        delivered.values().copied().collect::<HashSet<_>>(),
        received_ids
    );
}

#[test]
fn without_restarts_every_message_is_delivered_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = start(dir.path(), "");
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    const N: u64 = 200_000;
    let consumer = {
        let (ctx, router) = (ctx.clone(), router.clone());
        std::thread::spawn(move || {
            let mut consumer = Consumer::subscribe(&ctx, &router, "once", "", 5_000, WAIT).unwrap();
            let got = take(&mut consumer, N as usize);
            // Nothing more arrives: no duplicate.
            let extra = consumer.recv(Duration::from_millis(300)).unwrap();
            consumer.sync(WAIT).unwrap();
            (got, extra, consumer.errors.clone())
        })
    };
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    let mut tags = Vec::new();
    for batch in 0..N / 1_000 {
        let bodies: Vec<Vec<u8>> = (batch * 1_000..(batch + 1) * 1_000).map(message).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        tags.push(producer.publish("once", &refs).unwrap());
    }
    let mut confirmed = 0;
    for _ in &tags {
        let c = producer.recv_confirm(WAIT).unwrap();
        let (first, last) = c.result.unwrap();
        confirmed += last - first + 1;
    }
    assert_eq!(confirmed, N);
    let (got, extra, errors) = consumer.join().unwrap();
    assert_eq!(got.len() as u64, N);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(id_of(&d.payload), i as u64, "order");
        assert_eq!(d.seq, i as u64 + 1);
        assert_eq!(d.redeliveries, 0);
    }
    assert!(extra.is_none(), "a message came twice: {extra:?}");
    assert!(errors.is_empty(), "{errors:?}");
    let s = stats(&ctx, &router, "once");
    assert_eq!((s.depth, s.acked, s.redelivered), (0, N, 0));
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// HWM and SWAP.

#[test]
fn hwm_of_one_with_a_million_queued_keeps_memory_bounded_and_delivers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = start(dir.path(), "hwm = 1\n");
    let endpoints = appliance.queue();
    let ctx = zmq::Context::new();
    let baseline = appliance.rss_kb();
    const N: u64 = 1_000_000;
    let mut pusher = Pusher::connect(&ctx, &endpoints.pull).unwrap();
    for batch in 0..N / 1_000 {
        let bodies: Vec<Vec<u8>> = (batch * 1_000..(batch + 1) * 1_000)
            .map(|i| {
                let mut m = message(i);
                m.resize(100, b'.');
                m
            })
            .collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        pusher.send("swapped", &refs).unwrap();
    }
    let queued = poll(Duration::from_secs(60), || {
        let s = stats(&ctx, &endpoints.router, "swapped");
        (s.last_seq == N).then_some(s)
    })
    .expect("the million messages were not stored");
    assert!(queued.in_memory <= 1, "{queued:?}");
    let rss = appliance.rss_kb();
    eprintln!(
        "RSS {} MB with 1M queued beyond an HWM of 1 (baseline {} MB)",
        rss / 1024,
        baseline / 1024
    );
    // 1M messages of 100 bytes are 100 MB: they must be on disk, not in memory.
    assert!(
        rss < 200 * 1024 && rss < baseline + 60 * 1024,
        "RSS {} MB (baseline {} MB) with 1M messages queued beyond an HWM of 1",
        rss / 1024,
        baseline / 1024
    );
    let mut consumer =
        Consumer::subscribe(&ctx, &endpoints.router, "swapped", "", 10_000, WAIT).unwrap();
    let mut expected = 0u64;
    while expected < N {
        let d = consumer
            .recv(WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("stalled after {expected}"));
        assert_eq!(id_of(&d.payload), expected, "order");
        expected += 1;
        if consumer.buffered() == 0 {
            consumer.ack_through(d.seq).unwrap();
        }
    }
    consumer.sync(WAIT).unwrap();
    let rss_after = appliance.rss_kb();
    assert!(
        rss_after < 200 * 1024,
        "RSS {} MB after draining",
        rss_after / 1024
    );
    let s = stats(&ctx, &endpoints.router, "swapped");
    assert_eq!(s.depth, 0);
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn at_the_swap_limit_reject_refuses_with_a_reason_and_block_holds_the_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[queue.queues."small"]
swap_limit = "64KiB"
policy = "reject"
[queue.queues."held"]
swap_limit = "64KiB"
policy = "block"
"#;
    let (appliance, _) = start(dir.path(), extra);
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    let body = vec![b'x'; 1_000];
    // Incompressible bodies, so the journal's size on disk grows as they come.
    let noise: Vec<Vec<u8>> = (0..16).map(|i| common::incompressible(i, 1_000)).collect();
    let batch: Vec<&[u8]> = noise.iter().map(Vec::as_slice).collect();
    let mut accepted = 0;
    let refusal = loop {
        match producer.publish_durable("small", &batch, WAIT) {
            Ok((_, last)) => accepted = last,
            Err(e) => break e.to_string(),
        }
        assert!(accepted < 10_000, "never refused");
    };
    assert!(
        refusal.contains("full") && refusal.contains("swap limit"),
        "{refusal}"
    );
    assert_eq!(
        appliance.metric("depot_queue_rejected_total{reason=\"full\"}"),
        1.0
    );
    // Nothing was dropped silently: every accepted message is there.
    let mut consumer = Consumer::subscribe(&ctx, &router, "small", "", 100_000, WAIT).unwrap();
    assert_eq!(
        take(&mut consumer, accepted as usize).len() as u64,
        accepted
    );
    consumer.sync(WAIT).unwrap();
    // Once acknowledged, the journal is trimmed and publishes are accepted again.
    poll(WAIT, || {
        producer.publish_durable("small", &[&body], WAIT).ok()
    })
    .expect("still refused after the queue was drained");

    // Block: the confirm waits until consumers make room.
    let mut filled = 0;
    let tag = loop {
        let tag = producer.publish("held", &batch).unwrap();
        match producer.recv_confirm(Duration::from_millis(500)) {
            Ok(c) => {
                assert_eq!(c.tag, tag);
                filled = c.result.unwrap().1;
            }
            Err(_) => break tag,
        }
        assert!(filled < 10_000, "never held back");
    };
    let mut consumer = Consumer::subscribe(&ctx, &router, "held", "", 100_000, WAIT).unwrap();
    take(&mut consumer, filled as usize);
    let c = producer
        .recv_confirm(WAIT)
        .expect("the held publish was never confirmed");
    assert_eq!(c.tag, tag);
    let (first, last) = c.result.unwrap();
    assert_eq!((first, last), (filled + 1, filled + 16));
    let rest = take(&mut consumer, 16);
    assert_eq!(rest.len(), 16);
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Durable consumer identities and redelivery.

#[test]
fn a_named_consumer_away_gets_everything_on_return_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, config) = start(dir.path(), "");
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    // The subscription exists from the first SUB on.
    Consumer::subscribe(&ctx, &router, "events", "audit", 100, WAIT)
        .unwrap()
        .close()
        .unwrap();
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    const N: u64 = 5_000;
    for batch in 0..5 {
        let bodies: Vec<Vec<u8>> = (batch * 1_000..(batch + 1) * 1_000).map(message).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        producer.publish_durable("events", &refs, WAIT).unwrap();
    }
    // The work queue consumes everything meanwhile: the subscription keeps its own copy.
    let mut worker = Consumer::subscribe(&ctx, &router, "events", "", 10_000, WAIT).unwrap();
    assert_eq!(take(&mut worker, N as usize).len() as u64, N);
    worker.sync(WAIT).unwrap();
    drop(worker);
    // Back without a restart: all N; acknowledge the first half only.
    let mut audit = Consumer::subscribe(&ctx, &router, "events", "audit", 10_000, WAIT).unwrap();
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        got.push(audit.recv(WAIT).unwrap().expect("missing messages"));
    }
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, d)| id_of(&d.payload) == i as u64));
    audit.ack_through(got[N as usize / 2 - 1].seq).unwrap();
    audit.sync(WAIT).unwrap();
    drop(audit);
    assert_eq!(appliance.stop().code(), Some(0));
    // More messages arrive after the restart while the consumer is away.
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let router = appliance.queue().router;
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    let bodies: Vec<Vec<u8>> = (N..N + 100).map(message).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    producer.publish_durable("events", &refs, WAIT).unwrap();
    let mut audit = Consumer::subscribe(&ctx, &router, "events", "audit", 10_000, WAIT).unwrap();
    let rest = take(&mut audit, (N / 2 + 100) as usize);
    let ids: Vec<u64> = rest.iter().map(|d| id_of(&d.payload)).collect();
    assert_eq!(ids, (N / 2..N + 100).collect::<Vec<_>>());
    assert!(
        rest[0].redeliveries >= 1,
        "delivered before the restart: marked"
    );
    assert_eq!(rest.last().unwrap().redeliveries, 0);
    assert!(audit.recv(Duration::from_millis(200)).unwrap().is_none());
    // The work queue did not get its 5000 again.
    let mut worker = Consumer::subscribe(&ctx, &router, "events", "", 10_000, WAIT).unwrap();
    let again = take(&mut worker, 100);
    let ids: Vec<u64> = again.iter().map(|d| id_of(&d.payload)).collect();
    assert_eq!(
        ids,
        (N..N + 100).collect::<Vec<_>>(),
        "only the 100 new ones"
    );
    assert!(worker.recv(Duration::from_millis(200)).unwrap().is_none());
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn after_a_sigkill_every_message_delivered_again_is_marked_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, config) = start(dir.path(), "redelivery_timeout = \"60s\"\n");
    let data = dir.path().join("data");
    let ctx = zmq::Context::new();
    const N: u64 = 20_000;
    let router = appliance.queue().router;
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    for batch in 0..N / 1_000 {
        let bodies: Vec<Vec<u8>> = (batch * 1_000..(batch + 1) * 1_000).map(message).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        producer.publish_durable("marks", &refs, WAIT).unwrap();
    }
    drop(producer);
    // Two lifetimes end with a SIGKILL while deliveries are under way and about 100 messages
    // are in flight (received, acks trailing 100 behind): the messages delivered in the last
    // milliseconds before a kill are the ones a periodic store of "delivered" misses.
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut appliance = Some(appliance);
    let mut repeats = 0;
    for lifetime in 0..3 {
        let running = appliance
            .take()
            .unwrap_or_else(|| Appliance::start(&data, &config));
        let router = running.queue().router;
        let mut consumer = Consumer::subscribe(&ctx, &router, "marks", "", 200, WAIT).unwrap();
        let mut received: Vec<u64> = Vec::new();
        let last = lifetime == 2;
        while if last {
            (seen.len() as u64) < N
        } else {
            received.len() < 7_000
        } {
            let d = consumer.recv(WAIT).unwrap().unwrap_or_else(|| {
                panic!(
                    "lifetime {lifetime}: stalled after {} deliveries, {} of {N} seen",
                    received.len(),
                    seen.len()
                )
            });
            let id = id_of(&d.payload);
            match seen.insert(d.seq, id) {
                Some(before) => {
                    assert_eq!(before, id, "seq {} changed its message", d.seq);
                    assert!(
                        d.redeliveries >= 1,
                        "lifetime {lifetime}: seq {} delivered before a kill came again with \
                         redeliveries 0",
                        d.seq
                    );
                    repeats += 1;
                }
                None if lifetime == 0 => assert_eq!(d.redeliveries, 0),
                None => {}
            }
            received.push(d.seq);
            if last && consumer.buffered() == 0 {
                consumer.ack_through(d.seq).unwrap();
            } else if received.len().is_multiple_of(50) && received.len() > 100 {
                consumer
                    .ack_through(received[received.len() - 100])
                    .unwrap();
            }
        }
        if last {
            assert_eq!(running.stop().code(), Some(0));
        } else {
            running.kill();
        }
    }
    assert_eq!(
        seen.values().copied().collect::<HashSet<_>>().len() as u64,
        N
    );
    assert!(
        repeats >= 200,
        "about 100 in flight at each kill, so delivered again: {repeats}"
    );
}

#[test]
fn a_killed_consumers_unacked_messages_go_to_another_and_timeouts_redeliver() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "heartbeat_timeout = \"1s\"\n[queue.queues.\"slow\"]\nredelivery_timeout = \"300ms\"\n";
    let (appliance, _) = start(dir.path(), extra);
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    let bodies: Vec<Vec<u8>> = (0..100).map(message).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    producer.publish_durable("jobs", &refs, WAIT).unwrap();

    // A consumer process takes all 100 messages and is killed while it waits for more,
    // before it acknowledges anything.
    let child = depot()
        .args([
            "queue", "pop", "jobs", "--count", "1000", "--wait", "20s", "--config",
        ])
        .arg(dir.path().join("depot.toml"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = {
        use std::io::BufRead;
        let mut child = child;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..100 {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            lines.push(line);
        }
        let s = stats(&ctx, &router, "jobs");
        assert_eq!(s.groups[0].in_flight, 100, "{s:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        lines
    };
    assert!(first[0].contains("message 0"), "{first:?}");
    let mut other = Consumer::subscribe(&ctx, &router, "jobs", "", 1_000, WAIT).unwrap();
    let got = take(&mut other, 100);
    assert_eq!(got.len(), 100, "all 100 reach the other consumer");
    let redelivered: Vec<u64> = got
        .iter()
        .filter(|d| d.redeliveries > 0)
        .map(|d| id_of(&d.payload))
        .collect();
    assert_eq!(redelivered, (0..100).collect::<Vec<_>>());
    assert!(appliance.metric("depot_queue_consumers_lost_total") >= 1.0);

    // A live consumer that does not ack in time: its messages go to another.
    producer.publish_durable("slow", &refs[..5], WAIT).unwrap();
    let mut holder = Consumer::subscribe(&ctx, &router, "slow", "", 5, WAIT).unwrap();
    let held: Vec<_> = (0..5)
        .map(|_| holder.recv(WAIT).unwrap().unwrap())
        .collect();
    // It takes nothing more, so what times out goes to the other consumer.
    holder.set_prefetch(0).unwrap();
    holder.sync(WAIT).unwrap();
    let mut taker = Consumer::subscribe(&ctx, &router, "slow", "", 5, WAIT).unwrap();
    let again = take(&mut taker, 5);
    assert_eq!(
        again.iter().map(|d| d.seq).collect::<Vec<_>>(),
        held.iter().map(|d| d.seq).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|d| d.redeliveries == 1));
    // The late ack of the first holder is refused: the messages belong to another now.
    holder.ack_through(held[4].seq).unwrap();
    holder.ack(&[held[0].seq]).unwrap();
    holder.sync(WAIT).unwrap();
    // (Both acks are refused if the holder, silent while the other consumer worked, was
    // already dropped by the 1 s heartbeat timeout.)
    assert!(
        holder.errors.iter().any(|e| e.starts_with("ACK:")),
        "{:?}",
        holder.errors
    );
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn ttl_drops_old_messages_and_too_many_redeliveries_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[queue.queues."short"]
ttl = "1s"
[queue.queues."fragile"]
max_redeliveries = 1
redelivery_timeout = "200ms"
"#;
    let (appliance, _) = start(dir.path(), extra);
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    let bodies: Vec<Vec<u8>> = (0..10).map(message).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    producer.publish_durable("short", &refs, WAIT).unwrap();
    // The lifetime is what is under test here: let it pass.
    std::thread::sleep(Duration::from_millis(1_500));
    producer
        .publish_durable("short", &[b"fresh"], WAIT)
        .unwrap();
    let mut consumer = Consumer::subscribe(&ctx, &router, "short", "", 100, WAIT).unwrap();
    let got = take(&mut consumer, 1);
    assert!(consumer.recv(Duration::from_millis(300)).unwrap().is_none());
    assert_eq!(got[0].payload, b"fresh");
    let s = stats(&ctx, &router, "short");
    assert_eq!((s.expired, s.depth), (10, 0));

    producer
        .publish_durable("fragile", &[b"poison"], WAIT)
        .unwrap();
    let mut consumer = Consumer::subscribe(&ctx, &router, "fragile", "", 10, WAIT).unwrap();
    let first = consumer.recv(WAIT).unwrap().unwrap();
    let second = consumer.recv(WAIT).unwrap().unwrap();
    assert_eq!((first.seq, first.redeliveries), (second.seq, 0));
    assert_eq!(second.redeliveries, 1);
    let mut dead = Consumer::subscribe(&ctx, &router, "fragile.dead", "", 10, WAIT).unwrap();
    let d = dead.recv(WAIT).unwrap().expect("nothing dead-lettered");
    assert_eq!(d.payload, b"poison");
    dead.ack(&[d.seq]).unwrap();
    assert!(consumer.recv(Duration::from_millis(500)).unwrap().is_none());
    let s = stats(&ctx, &router, "fragile");
    assert_eq!((s.dead_lettered, s.depth), (1, 0));
    // Per-queue figures in /metrics are refreshed about once a second.
    poll(WAIT, || {
        (appliance.metric("depot_queue_dead_lettered_total{queue=\"fragile\"}") == 1.0)
            .then_some(())
    })
    .expect("the dead letter is not in /metrics");
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Bad input.

fn raw(ctx: &zmq::Context, router: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(WAIT.as_millis() as i32).unwrap();
    s.connect(router).unwrap();
    s
}

fn ask(socket: &zmq::Socket, frames: &[&[u8]]) -> Vec<Vec<u8>> {
    socket.send_multipart(frames, 0).unwrap();
    socket.recv_multipart(0).unwrap()
}

#[test]
fn bad_input_gets_an_error_reply_or_a_counter_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "auto_create = false\nmax_message_size = \"1KiB\"\n[queue.queues.\"declared\"]\n";
    let (appliance, _) = start(dir.path(), extra);
    let endpoints = appliance.queue();
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &endpoints.router).unwrap();
    producer
        .publish_durable("declared", &[b"before"], WAIT)
        .unwrap();
    let socket = raw(&ctx, &endpoints.router);
    let err = |reply: &[Vec<u8>]| {
        assert_eq!(reply[0], b"ERR", "{reply:?}");
        String::from_utf8_lossy(&reply[3]).into_owned()
    };
    let reason = err(&ask(&socket, &[b"PUB", b"t", b"nowhere", b"m"]));
    assert!(reason.contains("unknown queue"), "{reason}");
    let reason = err(&ask(
        &socket,
        &[b"SUB", b"nowhere", b"", &1u32.to_be_bytes()],
    ));
    assert!(reason.contains("unknown queue"), "{reason}");
    let reason = err(&ask(&socket, &[b"FROB", b"x"]));
    assert!(reason.contains("unknown command"), "{reason}");
    let reason = err(&ask(&socket, &[b"PUB", b"t"]));
    assert!(reason.contains("frame"), "{reason}");
    let reason = err(&ask(&socket, &[b"ACKTO", b"declared", b"", b"123"]));
    assert!(reason.contains("8 bytes"), "{reason}");
    let big = vec![0u8; 2_000];
    let reply = ask(&socket, &[b"PUB", b"t9", b"declared", b"ok", &big]);
    assert_eq!(reply[2], b"t9", "the refusal names the publish");
    assert!(err(&reply).contains("exceeds the limit"));
    // Acks of sequences never delivered to this consumer.
    let reason = err(&ask(
        &socket,
        &[b"ACK", b"declared", b"", &7u64.to_be_bytes()],
    ));
    assert!(reason.contains("not in flight"), "{reason}");
    let mut a = Consumer::subscribe(&ctx, &endpoints.router, "declared", "", 10, WAIT).unwrap();
    let d = a.recv(WAIT).unwrap().unwrap();
    let mut b = Consumer::subscribe(&ctx, &endpoints.router, "declared", "", 10, WAIT).unwrap();
    b.ack(&[d.seq]).unwrap();
    b.ack(&[999]).unwrap();
    b.sync(WAIT).unwrap();
    assert_eq!(b.errors.len(), 2, "{:?}", b.errors);
    b.close().unwrap();
    // Garbage on the PULL: counted, never fatal.
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(1_000).unwrap();
    push.connect(&endpoints.pull).unwrap();
    push.send_multipart([&b"nowhere"[..], b"m"], 0).unwrap();
    push.send(&b"only a queue name"[..], 0).unwrap();
    push.send_multipart([&b"declared"[..], &big], 0).unwrap();
    push.send_multipart([&b"declared"[..], b"after"], 0)
        .unwrap();
    // Everything valid arrives, nothing more.
    let mut got = vec![d];
    while let Some(next) = a.recv(Duration::from_secs(2)).unwrap() {
        got.push(next);
        if got.len() == 2 {
            break;
        }
    }
    let payloads: Vec<&[u8]> = got.iter().map(|d| &d.payload[..]).collect();
    assert_eq!(payloads, [&b"before"[..], b"after"]);
    poll(WAIT, || {
        (appliance.metric("depot_queue_rejected_total{reason=\"oversize\"}") == 2.0).then_some(())
    })
    .expect("oversize count");
    assert_eq!(
        appliance.metric("depot_queue_rejected_total{reason=\"unknown_queue\"}"),
        3.0
    );
    assert!(appliance.metric("depot_queue_rejected_total{reason=\"malformed\"}") >= 3.0);
    assert_eq!(
        appliance.metric("depot_queue_rejected_total{reason=\"bad_ack\"}"),
        3.0
    );
    assert_eq!(appliance.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Simple mode and the command line.

#[test]
fn simple_mode_hands_messages_to_a_plain_pull_socket() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[queue.queues.\"plain\"]\npush = \"tcp://127.0.0.1:*\"\n";
    let (appliance, _) = start(dir.path(), extra);
    let endpoints = appliance.queue();
    let ctx = zmq::Context::new();
    let mut pusher = Pusher::connect(&ctx, &endpoints.pull).unwrap();
    let bodies: Vec<Vec<u8>> = (0..1_000).map(message).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    pusher.send("plain", &refs).unwrap();
    poll(WAIT, || {
        (stats(&ctx, &endpoints.router, "plain").last_seq == 1_000).then_some(())
    })
    .expect("stored");
    // No PULL connected: the messages wait, and the service does not spin retrying.
    let cpu_before = appliance.cpu_ticks();
    std::thread::sleep(Duration::from_millis(1_000));
    let busy = appliance.cpu_ticks() - cpu_before;
    assert!(
        busy < 30,
        "the appliance used {busy} of 100 CPU ticks while idle"
    );
    assert_eq!(stats(&ctx, &endpoints.router, "plain").depth, 1_000);
    let pull = ctx.socket(zmq::PULL).unwrap();
    pull.set_rcvtimeo(WAIT.as_millis() as i32).unwrap();
    pull.connect(&endpoints.push["plain"]).unwrap();
    for i in 0..1_000 {
        let frame = pull.recv_bytes(0).unwrap();
        assert_eq!(id_of(&frame), i);
    }
    let s = poll(WAIT, || {
        let s = stats(&ctx, &endpoints.router, "plain");
        (s.depth == 0).then_some(s)
    })
    .expect("simple-mode deliveries count as acknowledged");
    assert_eq!(s.acked, 1_000);
    assert_eq!(appliance.stop().code(), Some(0));
}

fn depot_queue_cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = depot()
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(dir.join("depot.toml"))
        .arg("--data")
        .arg(dir.join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn cli_pushes_pops_with_acks_and_reports_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = start(dir.path(), "");
    let lines: String = (0..2_500).map(|i| format!("line {i}\n")).collect();
    let out = depot_queue_cli(dir.path(), &["push", "cli"], Some(&lines));
    assert!(out.status.success(), "{out:?}");
    let out = depot_queue_cli(dir.path(), &["push", "cli", "single"], None);
    assert!(out.status.success(), "{out:?}");
    let out = depot_queue_cli(dir.path(), &["pop", "cli", "--count", "3"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 0\nline 1\nline 2\n"
    );
    let out = depot_queue_cli(dir.path(), &["pop", "cli", "--count", "2", "--json"], None);
    let json: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json[0]["message"], "line 3");
    assert_eq!(json[1]["seq"], 5);
    assert_eq!(json[1]["redeliveries"], 0);
    let out = depot_queue_cli(dir.path(), &["stats", "cli", "--json"], None);
    assert!(out.status.success(), "{out:?}");
    let stats: Vec<QueueStats> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stats[0].depth,
        2_501 - 5,
        "what was printed was acknowledged"
    );
    let out = depot_queue_cli(dir.path(), &["stats"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DEPTH") && text.contains("cli"), "{text}");
    // A named subscription popped from the CLI keeps its position.
    let out = depot_queue_cli(
        dir.path(),
        &["pop", "cli", "--name", "tap", "--wait", "200ms"],
        None,
    );
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    depot_queue_cli(dir.path(), &["push", "cli", "after tap"], None);
    let out = depot_queue_cli(dir.path(), &["pop", "cli", "--name", "tap"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after tap\n");
    assert_eq!(appliance.stop().code(), Some(0));
}

/// Incompressible 1,000-byte messages whose first 8 bytes are their id.
fn noisy(id: u64) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend(common::incompressible(id, 992));
    m
}

#[test]
fn pushes_to_a_full_queue_are_held_back_with_block_and_counted_with_reject() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[queue.queues."pushed-reject"]
swap_limit = "64KiB"
policy = "reject"
[queue.queues."pushed-block"]
swap_limit = "64KiB"
policy = "block"
"#;
    let (appliance, _) = start(dir.path(), extra);
    let endpoints = appliance.queue();
    let ctx = zmq::Context::new();
    let mut pusher = Pusher::connect(&ctx, &endpoints.pull).unwrap();
    const N: u64 = 300;
    for batch in 0..N / 10 {
        let bodies: Vec<Vec<u8>> = (batch * 10..(batch + 1) * 10).map(noisy).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        pusher.send("pushed-reject", &refs).unwrap();
    }
    // Every pushed message is either stored or counted as refused: none vanishes.
    let (stored, refused) = poll(WAIT, || {
        let stored = stats(&ctx, &endpoints.router, "pushed-reject").last_seq;
        let refused = appliance.metric("depot_queue_rejected_total{reason=\"full\"}") as u64;
        (stored + refused == N).then_some((stored, refused))
    })
    .expect("pushed messages neither stored nor counted");
    assert!(
        stored > 0 && refused > 0,
        "stored {stored}, refused {refused}"
    );

    // Block: the PULL is not read while the queue is full; a consumer's acks make room.
    let producer = {
        let (ctx, pull) = (ctx.clone(), endpoints.pull.clone());
        std::thread::spawn(move || {
            let mut pusher = Pusher::connect(&ctx, &pull).unwrap();
            for batch in 0..N / 10 {
                let bodies: Vec<Vec<u8>> = (batch * 10..(batch + 1) * 10).map(noisy).collect();
                let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
                pusher.send("pushed-block", &refs).unwrap();
            }
        })
    };
    let held = poll(WAIT, || {
        let s = stats(&ctx, &endpoints.router, "pushed-block");
        s.full.then_some(s.last_seq)
    })
    .expect("the queue never filled");
    assert!(held < N, "everything was stored beyond the swap limit");
    let mut consumer =
        Consumer::subscribe(&ctx, &endpoints.router, "pushed-block", "", 1_000, WAIT).unwrap();
    let got = take(&mut consumer, N as usize);
    let ids: Vec<u64> = got.iter().map(|d| id_of(&d.payload)).collect();
    assert_eq!(
        ids,
        (0..N).collect::<Vec<_>>(),
        "all, in order, none dropped"
    );
    producer.join().unwrap();
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn a_consumer_subscribes_again_by_itself_after_the_appliance_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, so the consumer's socket reconnects to the restarted appliance.
    let port = common::free_port();
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "router = \"tcp://127.0.0.1:*\"",
        &format!("router = \"tcp://127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    let publish = |from: u64, to: u64| {
        let mut producer = Producer::connect(&ctx, &router).unwrap();
        let bodies: Vec<Vec<u8>> = (from..to).map(message).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        producer.publish_durable("restarts", &refs, WAIT).unwrap();
    };
    publish(0, 100);
    let mut consumer = Consumer::subscribe(&ctx, &router, "restarts", "", 1_000, WAIT).unwrap();
    let first = take(&mut consumer, 50);
    assert_eq!(first.len(), 50);
    consumer.sync(WAIT).unwrap();
    appliance.kill();
    let appliance = Appliance::start(&data, &config);
    assert_eq!(appliance.queue().router, router);
    publish(100, 200);
    let mut seen: HashSet<u64> = first.iter().map(|d| id_of(&d.payload)).collect();
    while seen.len() < 200 {
        let d = consumer.recv(WAIT).unwrap().unwrap_or_else(|| {
            panic!(
                "stalled with {} of 200 seen: {:?}",
                seen.len(),
                stats(&ctx, &router, "restarts")
            )
        });
        seen.insert(id_of(&d.payload));
        if consumer.buffered() == 0 {
            consumer.ack_through(d.seq).unwrap();
        }
    }
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn an_independent_python_client_publishes_consumes_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = start(dir.path(), "");
    let endpoints = appliance.queue();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/queue_client.py");
    let output = std::process::Command::new("python3")
        .args([script, &endpoints.router, &endpoints.pull, "py"])
        .output()
        .expect("python3 runs (make test installs pyzmq)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let bodies: HashSet<&str> = result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        HashSet::from(["pushed from python", "first", "second"])
    );
    let (first, last) = (result["confirm"][0].as_u64(), result["confirm"][1].as_u64());
    assert_eq!(last.unwrap() - first.unwrap(), 1);
    assert_eq!(
        result["stats"][0]["depth"], 0,
        "the cumulative ack took all three"
    );
    assert_eq!(appliance.stop().code(), Some(0));
}
