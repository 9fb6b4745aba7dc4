//! Slow and vanished consumers (issue 9, item 4), per fan-out: next to a consumer that reads,
//! one that stops reading and one that vanishes (its zmq context dropped with linger 0, never
//! unsubscribing). The reader sees everything with no stall beyond the bound, the appliance's
//! memory stays within what the fan-out's high-water mark allows, and the appliance serves on.
//! Also the replay API's replayers and the acks of a client that never reads them (bounded by
//! `max_unread_acks`). The bounds are in RELIABILITY.md. Also covered elsewhere: a stalled replayer
//! (`tests/logd.rs`, `stalled_replayer_blocks_neither_ingest_nor_live`) and a killed queue
//! consumer's unacked messages redelivered after the heartbeat timeout (`tests/queue.rs`,
//! `a_killed_consumers_unacked_messages_go_to_another_and_timeouts_redeliver`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{poll, write_config, Appliance, NftTable};
use depot_cache::client::CacheClient;
use depot_logd::client::AckedSender;
use depot_queue::client::{Consumer, Producer};

const WAIT: Duration = Duration::from_secs(10);
/// The longest the reading consumer may wait for anything while the others misbehave.
const STALL_BOUND: Duration = Duration::from_secs(2);

/// A config with small engine cache (so RSS moves with what the fan-out holds, not with
/// sled's cache) and `logd` keys added to `[logd]`.
fn config(dir: &Path, logd: &str, extra: &str) -> PathBuf {
    let path = write_config(dir, &format!("\n[store]\ncache_size = \"8MiB\"\n{extra}"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("[logd]\n", &format!("[logd]\n{logd}"), 1),
    )
    .unwrap();
    path
}

/// A subscriber that never reads: its receive buffer is one message, so what it does not
/// take stays queued in the appliance, up to the fan-out's HWM.
fn stalled(ctx: &zmq::Context, endpoint: &str, topic: &[u8]) -> zmq::Socket {
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(1).unwrap();
    sub.set_rcvbuf(4096).unwrap();
    sub.set_subscribe(topic).unwrap();
    sub.connect(endpoint).unwrap();
    sub
}

/// A subscriber in its own context, dropped with linger 0 and no unsubscribe once `connected`
/// says it was connected: the appliance must notice and free its pipe.
fn vanish(endpoint: &str, topic: &[u8], mut connected: impl FnMut(&zmq::Socket) -> bool) {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.set_subscribe(topic).unwrap();
    sub.connect(endpoint).unwrap();
    poll(WAIT, || connected(&sub).then_some(())).expect("vanishing subscriber never connected");
    drop(sub);
    drop(ctx);
}

/// RSS growth allowed on top of the start (kB): sled, allocator and the fan-outs' HWMs.
fn assert_rss_bounded(appliance: &Appliance, before_kb: u64, allowed_mb: u64, what: &str) {
    let after = appliance.rss_kb();
    eprintln!("{what}: RSS {before_kb} kB -> {after} kB");
    assert!(
        after <= before_kb + allowed_mb * 1024,
        "{what}: RSS grew from {before_kb} kB to {after} kB (allowed {allowed_mb} MiB)"
    );
}

#[test]
fn live_logs_a_stalled_and_a_vanished_subscriber_neither_stall_the_reader_nor_grow_memory() {
    const RECORDS: u64 = 40_000;
    const BATCH: u64 = 500;
    // Above the largest burst the live thread may publish at once (4 packed batches of 500 in
    // flight): a PUB pipe counts messages not yet written to TCP, so a burst beyond the HWM
    // would drop records for the reader too, not only for the stalled subscriber.
    const LIVE_HWM: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &format!("live_hwm = {LIVE_HWM}\n"), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    let body = vec![b'x'; 2048];

    // The reader, and a probe record to know its subscription is live.
    let reader = ctx.socket(zmq::SUB).unwrap();
    reader.set_rcvhwm(0).unwrap();
    reader.set_subscribe(b"big ").unwrap();
    reader.connect(&logd.live).unwrap();
    let _stalled = stalled(&ctx, &logd.live, b"big ");
    poll(WAIT, || {
        sender.send_durable("big", 6, "t", &[&body], WAIT).unwrap();
        (reader.poll(zmq::POLLIN, 50).unwrap() > 0).then_some(())
    })
    .expect("live subscription never took effect");
    vanish(&logd.live, b"big ", |sub| {
        sender.send_durable("big", 6, "t", &[&body], WAIT).unwrap();
        sub.poll(zmq::POLLIN, 50).unwrap() > 0
    });
    let rss_before = appliance.rss_kb();

    let last_seen = Arc::new(AtomicU64::new(0));
    let worst_gap_ms = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let (last_seen, worst_gap_ms, stop) =
            (last_seen.clone(), worst_gap_ms.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !stop.load(Ordering::Acquire) {
                if reader.poll(zmq::POLLIN, 20).unwrap() == 0 {
                    continue;
                }
                while let Ok(frames) = reader.recv_multipart(zmq::DONTWAIT) {
                    let header = depot_logd::protocol::decode_header(&frames[1]).unwrap();
                    last_seen.fetch_max(header.seq, Ordering::AcqRel);
                }
                let now = Instant::now();
                worst_gap_ms.fetch_max((now - last).as_millis() as u64, Ordering::AcqRel);
                last = now;
            }
        })
    };
    // Pipelined acked ingest: 80 MiB of records, far beyond what the HWM lets the stalled
    // subscriber hold. At most half the HWM is ever unseen by the reader: a burst beyond the
    // HWM (the live thread starved while ingest goes on) would drop records for the reader
    // too, since a PUB pipe counts messages not yet written to TCP.
    let bodies: Vec<&[u8]> = (0..BATCH).map(|_| body.as_slice()).collect();
    let (mut sent, mut in_flight, mut last_acked) = (0, 0, 0);
    let unseen = |last_acked: u64, in_flight: u64| {
        last_acked.saturating_sub(last_seen.load(Ordering::Acquire)) + in_flight * BATCH
    };
    while sent < RECORDS || in_flight > 0 {
        while sent < RECORDS && in_flight < 4 && unseen(last_acked, in_flight + 1) <= LIVE_HWM / 2 {
            sender.send("big", 6, "t", &bodies).unwrap();
            sent += BATCH;
            in_flight += 1;
        }
        if in_flight == 0 {
            poll(WAIT, || {
                (unseen(last_acked, 1) <= LIVE_HWM / 2).then_some(())
            })
            .expect("the reader stopped taking live records");
            continue;
        }
        let ack = sender.recv_ack(WAIT).expect("ingest stalled");
        last_acked = ack.result.expect("batch refused").1;
        in_flight -= 1;
    }
    let caught_up = poll(STALL_BOUND, || {
        (last_seen.load(Ordering::Acquire) >= last_acked).then_some(())
    });
    stop.store(true, Ordering::Release);
    reading.join().unwrap();
    assert!(
        caught_up.is_some(),
        "the reader saw up to {} of {last_acked} within {STALL_BOUND:?} of the last ack",
        last_seen.load(Ordering::Acquire)
    );
    let worst = worst_gap_ms.load(Ordering::Acquire);
    assert!(
        worst < STALL_BOUND.as_millis() as u64,
        "the reader waited {worst} ms between messages"
    );
    // 80 MiB went through; the stalled subscriber may hold 5,000 records (10 MiB) plus socket
    // buffers.
    assert_rss_bounded(&appliance, rss_before, 48, "live logs");
    assert!(appliance.stop().success());
}

#[test]
fn cache_updates_a_stalled_and_a_vanished_subscriber_do_not_hold_back_the_others() {
    const UPDATES: usize = 40_000;
    const ROUND: usize = 500;
    // Above the largest burst the cache publishes (one round): a PUB pipe counts messages not
    // yet written to TCP, so an HWM below a burst drops for a reading subscriber too.
    const PUBLISHER_HWM: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config_with_cache(
        dir.path(),
        &format!(
            "{}publisher_hwm = {PUBLISHER_HWM}\n",
            common::CACHE_EPHEMERAL
        ),
        "\n[store]\ncache_size = \"8MiB\"\n",
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let endpoints = appliance.cache();
    let mut writer = CacheClient::connect(&ctx, std::slice::from_ref(&endpoints), WAIT).unwrap();
    let _stalled = stalled(&ctx, &endpoints.publisher, b"");
    vanish(&endpoints.publisher, b"", |sub| {
        writer.send(b"/probe", b"p", None).unwrap();
        sub.poll(zmq::POLLIN, 50).unwrap() > 0
    });
    let mut reader = CacheClient::connect(&ctx, std::slice::from_ref(&endpoints), WAIT).unwrap();
    let rss_before = appliance.rss_kb();

    let value = vec![b'v'; 1024];
    let mut worst = Duration::ZERO;
    for round in 0..UPDATES / ROUND {
        for i in 0..ROUND {
            let key = format!("/slow/{}", (round * ROUND + i) % 5_000);
            writer.send(key.as_bytes(), &value, None).unwrap();
        }
        // The last of the round, set with a wait, is published in order after the others.
        let started = Instant::now();
        let last = writer
            .set(b"/slow/mark", round.to_string().as_bytes(), None, WAIT)
            .expect("the cache stalled");
        let seq = last.seq;
        poll(WAIT, || {
            reader.poll(Duration::from_millis(10)).unwrap();
            (reader.seq() >= seq).then_some(())
        })
        .expect("the reader did not catch up");
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < STALL_BOUND,
        "a round took {worst:?} to reach the reader"
    );
    assert_eq!(
        reader.get(b"/slow/mark"),
        Some((UPDATES / ROUND - 1).to_string().as_bytes())
    );
    // 40 MiB of updates went out (about 120 MiB of RSS if the stalled subscriber held them
    // all); it may hold 5,000 of them plus socket buffers.
    assert_rss_bounded(&appliance, rss_before, 64, "cache updates");
    drop((writer, reader));
    assert!(appliance.stop().success());
}

#[test]
fn clock_ticks_a_stalled_and_a_vanished_subscriber_leave_the_reader_contiguous_and_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config_sections(
        dir.path(),
        common::CACHE_EPHEMERAL,
        "[[clock.ticks]]\nperiod = \"1ms\"\n",
        "",
    );
    let appliance = Appliance::start(&dir.path().join("data"), &path);
    let ctx = zmq::Context::new();
    let publisher = appliance.clock().publisher;
    let _stalled = stalled(&ctx, &publisher, b"tick.1ms");
    vanish(&publisher, b"tick.1ms", |sub| {
        sub.poll(zmq::POLLIN, 50).unwrap() > 0
    });
    let reader = ctx.socket(zmq::SUB).unwrap();
    reader.set_rcvhwm(0).unwrap();
    reader.set_subscribe(b"tick.1ms").unwrap();
    reader.connect(&publisher).unwrap();
    let rss_before = appliance.rss_kb();

    let seq_of = |frames: &[Vec<u8>]| depot_clock::protocol::Tick::decode(frames).unwrap().seq;
    assert!(reader.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0);
    let mut last = seq_of(&reader.recv_multipart(0).unwrap());
    let started = Instant::now();
    let mut ticks = 0;
    while started.elapsed() < Duration::from_secs(5) {
        assert!(
            reader
                .poll(zmq::POLLIN, STALL_BOUND.as_millis() as i64)
                .unwrap()
                > 0,
            "no tick for {STALL_BOUND:?}"
        );
        let seq = seq_of(&reader.recv_multipart(0).unwrap());
        assert_eq!(seq, last + 1, "gap or repeat after tick {last}");
        last = seq;
        ticks += 1;
    }
    assert!(ticks >= 4_500, "only {ticks} ticks in 5 s");
    // 5,000 small ticks held for the stalled subscriber at most.
    assert_rss_bounded(&appliance, rss_before, 16, "clock ticks");
    assert!(appliance.stop().success());
}

#[test]
fn queue_a_consumer_that_stops_reading_holds_only_its_window_the_other_gets_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let router = appliance.queue().router;
    let ctx = zmq::Context::new();
    // Subscribed and then never read again: at most its prefetch window is in flight to it.
    let _stuck = Consumer::subscribe(&ctx, &router, "work", "g", 10, WAIT).unwrap();
    let mut worker = Consumer::subscribe(&ctx, &router, "work", "g", 100, WAIT).unwrap();
    let mut producer = Producer::connect(&ctx, &router).unwrap();
    let bodies: Vec<Vec<u8>> = (0..2_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    for chunk in bodies.chunks(100) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        producer.publish_durable("work", &refs, WAIT).unwrap();
    }
    let mut got = 0;
    while got < 2_000 - 10 {
        let delivery = worker
            .recv(STALL_BOUND)
            .unwrap()
            .unwrap_or_else(|| panic!("the worker stalled after {got} messages"));
        worker.ack(&[delivery.seq]).unwrap();
        got += 1;
    }
    // What is left is the stuck consumer's window.
    assert!(worker.recv(Duration::from_millis(300)).unwrap().is_none());
    assert!(appliance.stop().success());
}

/// A DEALER that sends acked batches and never reads its acks (receive buffer of one message
/// and a small kernel buffer, as `stalled`).
fn deaf_sender(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_rcvhwm(1).unwrap();
    dealer.set_rcvbuf(4096).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(endpoint).unwrap();
    dealer
}

#[test]
fn acked_ingest_acks_a_client_never_reads_are_bounded_and_others_get_theirs_promptly() {
    const MAX_UNREAD: u64 = 100;
    const DEAF_BATCHES: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &format!("max_unread_acks = {MAX_UNREAD}\n"), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    sender.send_durable("ok", 6, "t", &[b"warm"], WAIT).unwrap();
    let rss_before = appliance.rss_kb();

    // The deaf client floods from its own thread while this one times its acks.
    let deaf_done = Arc::new(AtomicBool::new(false));
    let deaf = {
        let (ctx, endpoint, done) = (ctx.clone(), logd.acked.clone(), deaf_done.clone());
        std::thread::spawn(move || {
            let dealer = deaf_sender(&ctx, &endpoint);
            let body = vec![b'd'; 256];
            for n in 0..DEAF_BATCHES {
                let id = n.to_be_bytes();
                let frames: [&[u8]; 4] = [&id, b"deaf", b"level=6 source=t", &body];
                dealer.send_multipart(frames, 0).unwrap();
            }
            done.store(true, Ordering::Release);
            dealer
        })
    };
    let (mut worst, mut mine) = (Duration::ZERO, 0u64);
    while !deaf_done.load(Ordering::Acquire) || mine < 200 {
        let started = Instant::now();
        sender
            .send_durable("ok", 6, "t", &[b"mine"], WAIT)
            .expect("the reading client's ack did not come");
        worst = worst.max(started.elapsed());
        mine += 1;
    }
    let _deaf = deaf.join().unwrap();
    assert!(
        worst < STALL_BOUND,
        "the reading client waited {worst:?} for an ack"
    );
    // Every batch is stored; each ack was sent, dropped, or is among the last MAX_UNREAD kept.
    let total = DEAF_BATCHES + mine + 1;
    poll(WAIT, || {
        let stored = appliance.metric("depot_logd_stored_records_total{path=\"acked\"}");
        let sent = appliance.metric("depot_logd_acks_sent_total");
        let dropped = appliance.metric("depot_logd_acks_dropped_total");
        (stored as u64 == total && (sent + dropped) as u64 + MAX_UNREAD >= total).then_some(())
    })
    .expect("acks neither sent nor dropped, or batches not stored");
    let dropped = appliance.metric("depot_logd_acks_dropped_total") as u64;
    eprintln!("acks dropped: {dropped} of {DEAF_BATCHES}; {mine} acks, worst wait {worst:?}");
    assert!(dropped > 0, "no ack was dropped");
    assert!(
        appliance
            .stderr()
            .contains("acks of a client that does not read them dropped"),
        "no warning about dropped acks"
    );
    // Waiting acks are retried at a bounded cost: the appliance is nearly idle now.
    let cpu_before = appliance.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = appliance.cpu_ticks() - cpu_before;
    eprintln!("unread acks: {cpu} CPU ticks in 2 s with acks waiting");
    assert!(
        cpu < 50,
        "the appliance used {cpu} ticks in 2 s with acks waiting"
    );
    assert_rss_bounded(&appliance, rss_before, 32, "unread acks");
    assert!(appliance.stop().success());
}

/// Starts a replay of all of `stream` over the replay API with `credit`.
fn request_replay(dealer: &zmq::Socket, id: &[u8], stream: &str, credit: u32) {
    let request: [&[u8]; 5] = [
        b"REPLAY",
        id,
        stream.as_bytes(),
        b"1",
        &credit.to_be_bytes(),
    ];
    dealer.send_multipart(request, 0).unwrap();
}

#[test]
fn replay_api_a_stalled_and_a_vanished_replayer_hold_back_neither_replays_nor_live() {
    const RECORDS: u64 = 40_000;
    const BATCH: u64 = 500;
    let active = "depot_logd_replays_active{path=\"api\"}";
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    // 80 MiB to replay: far more than one stalled replayer may hold.
    let body = vec![b'r'; 2048];
    let bodies: Vec<&[u8]> = (0..BATCH).map(|_| body.as_slice()).collect();
    for _ in 0..RECORDS / BATCH {
        sender.send_durable("long", 6, "t", &bodies, WAIT).unwrap();
    }
    let rss_before = appliance.rss_kb();

    // Asks for everything, takes one message, then never reads again.
    let stalled = ctx.socket(zmq::DEALER).unwrap();
    stalled.set_rcvhwm(1).unwrap();
    stalled.set_rcvbuf(4096).unwrap();
    stalled.set_linger(0).unwrap();
    stalled.connect(&logd.replay_api).unwrap();
    request_replay(&stalled, b"stalled", "long", 1_000_000);
    assert!(stalled.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0);
    // Vanish mid-replay: one with its credit used up by the one message it took (nothing more
    // is sent to it), one with much credit left (its pipe is full).
    for (id, credit) in [(&b"small"[..], 10u32), (&b"large"[..], 1_000_000)] {
        let own = zmq::Context::new();
        let dealer = own.socket(zmq::DEALER).unwrap();
        dealer.set_linger(0).unwrap();
        dealer.set_rcvhwm(1).unwrap();
        dealer.connect(&logd.replay_api).unwrap();
        request_replay(&dealer, id, "long", credit);
        assert!(dealer.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0);
        dealer.recv_multipart(0).unwrap();
        drop(dealer);
        drop(own);
    }

    // A reader replays everything while live records flow to a subscriber.
    let reading = {
        let (ctx, endpoint) = (ctx.clone(), logd.replay_api.clone());
        std::thread::spawn(move || {
            let (mut next, mut worst, mut last) = (1, Duration::ZERO, Instant::now());
            let query = depot_logd::client::ApiQuery {
                stream: "long",
                start: "1",
                filter: "",
                window: 2_000,
            };
            depot_logd::client::replay_api(&ctx, &endpoint, query, WAIT, |record| {
                assert_eq!(record.header.seq, next);
                next += 1;
                worst = worst.max(last.elapsed());
                last = Instant::now();
                true
            })
            .unwrap();
            (next - 1, worst)
        })
    };
    let live = ctx.socket(zmq::SUB).unwrap();
    live.set_subscribe(b"fresh ").unwrap();
    live.connect(&logd.live).unwrap();
    poll(WAIT, || {
        sender
            .send_durable("fresh", 6, "t", &[b"probe"], WAIT)
            .unwrap();
        (live.poll(zmq::POLLIN, 50).unwrap() > 0).then_some(())
    })
    .expect("live subscription never took effect");
    let mut worst_live = Duration::ZERO;
    while !reading.is_finished() {
        while live.recv_multipart(zmq::DONTWAIT).is_ok() {}
        let started = Instant::now();
        sender.send_durable("fresh", 6, "t", &[b"x"], WAIT).unwrap();
        assert!(
            live.poll(zmq::POLLIN, STALL_BOUND.as_millis() as i64)
                .unwrap()
                > 0,
            "a live record did not arrive within {STALL_BOUND:?}"
        );
        worst_live = worst_live.max(started.elapsed());
    }
    let (replayed, worst_replay) = reading.join().unwrap();
    assert_eq!(replayed, RECORDS);
    assert!(
        worst_replay < STALL_BOUND,
        "the reading replayer waited {worst_replay:?}"
    );
    assert!(worst_live < STALL_BOUND, "live waited {worst_live:?}");
    eprintln!("replay api: worst wait {worst_replay:?} (replay), {worst_live:?} (live)");

    // The vanished ones are released; the stalled one stays until it goes too.
    poll(WAIT, || (appliance.metric(active) == 1.0).then_some(()))
        .unwrap_or_else(|| panic!("{} replays active, expected 1", appliance.metric(active)));
    assert_rss_bounded(&appliance, rss_before, 48, "replay api");
    drop(stalled);
    poll(WAIT, || (appliance.metric(active) == 0.0).then_some(()))
        .unwrap_or_else(|| panic!("{} replays active after all left", appliance.metric(active)));
    assert!(appliance.stop().success());
}

/// Drops every packet from and to `addr` on this host while it lives: a peer gone without
/// closing (a cut cable, a frozen host), no FIN, no RST.
fn unreachable(addr: &str, tag: u16) -> NftTable {
    NftTable::load(
        "ip",
        &format!("depot_unreachable_{tag}"),
        &format!(" chain input {{\n  type filter hook input priority -10; policy accept;\n  ip saddr {addr} drop\n  ip daddr {addr} drop\n }}\n"),
    )
}

/// A live subscriber that vanishes without closing (its packets dropped from then on, so the
/// appliance hears nothing, not even a FIN) is dropped by the live XPUB when its heartbeats
/// go unanswered: its subscription goes (and with it the pipe and what was queued in it)
/// within the heartbeat timeout, not when TCP gives up many minutes later.
#[test]
fn a_live_subscriber_gone_without_closing_is_dropped_by_missed_heartbeats() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("a_live_subscriber_gone...: skipped, nftables needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    let port: u16 = logd.live.rsplit(':').next().unwrap().parse().unwrap();
    // The subscriber connects from its own loopback address, so that only its packets drop.
    let source = format!("127.0.{}.{}", 1 + port / 256 % 250, 2 + port % 250);
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.set_subscribe(b"cut ").unwrap();
    let from = logd
        .live
        .replacen("tcp://", &format!("tcp://{source}:0;"), 1);
    sub.connect(&from).unwrap();
    poll(WAIT, || {
        sender
            .send_durable("cut", 6, "t", &[b"probe"], WAIT)
            .unwrap();
        (sub.poll(zmq::POLLIN, 50).unwrap() > 0).then_some(())
    })
    .expect("live subscription never took effect");
    assert_eq!(appliance.metric("depot_logd_live_subscriptions"), 1.0);

    let _cut = unreachable(&source, port);
    let started = Instant::now();
    let dropped = poll(Duration::from_secs(30), || {
        (appliance.metric("depot_logd_live_subscriptions") == 0.0).then_some(())
    });
    let took = started.elapsed();
    assert!(
        dropped.is_some(),
        "the vanished subscriber still holds its subscription after {took:?}"
    );
    eprintln!("vanished live subscriber dropped after {took:?}");
    let timeout = Duration::from_millis(depot_common::security::PEER_HEARTBEAT_TIMEOUT_MS as u64);
    assert!(
        took <= timeout + Duration::from_secs(3),
        "dropped after {took:?}, heartbeat timeout {timeout:?}"
    );
    // The appliance serves on.
    sender
        .send_durable("cut", 6, "t", &[b"after"], WAIT)
        .unwrap();
    drop(sub);
    assert!(appliance.stop().success());
}
