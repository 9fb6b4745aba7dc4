//! A full disk (issue 9, item 3): the data folder on a small tmpfs, filled with acked log
//! ingest. Writes that cannot be made durable are refused with a reason, never acknowledged;
//! every service keeps serving reads; nothing acknowledged is lost; and once space returns,
//! ingest resumes without a restart. Needs root (it mounts a tmpfs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{poll, write_config, Appliance};
use depot_cache::client::CacheClient;
use depot_logd::client::{self, AckedSender, ClientError};
use depot_queue::client::{Consumer, Producer};
use depot_queue::horizon::WINDOW;

const WAIT: Duration = Duration::from_secs(10);
/// Size of the filesystem holding the data folder.
const TMPFS: &str = "size=24m";
/// Free space the store keeps; configured as `[store] min_free`.
const MIN_FREE: u64 = 4 << 20;
/// A file taking space on the tmpfs, deleted to give space back.
const BALLAST: usize = 8 << 20;
const RECORD: usize = 1024;
const PER_BATCH: usize = 64;

/// A tmpfs mounted for the test's lifetime, unmounted even when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status();
        if !matches!(ok, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Incompressible bodies (the log compresses blocks), the same for the same index.
fn body(i: u64) -> Vec<u8> {
    let mut out = common::incompressible(i, RECORD);
    out[..8].copy_from_slice(&i.to_be_bytes());
    out
}

fn batch(first: u64) -> Vec<Vec<u8>> {
    (first..first + PER_BATCH as u64).map(body).collect()
}

/// Every record of `stream` replayed from 1: asserts sequences 1.. are contiguous and that
/// record `n` (1-based) holds body `n - 1`. Returns how many there are.
fn check_replay(ctx: &zmq::Context, endpoint: &str, stream: &str, at_least: u64) -> u64 {
    let mut count = 0u64;
    client::replay(ctx, endpoint, stream, "1", WAIT, |record| {
        count += 1;
        assert_eq!(record.header.seq, count, "sequence gap in {stream}");
        assert!(
            record.body == body(count - 1),
            "record {count} of {stream} is damaged"
        );
        true
    })
    .unwrap_or_else(|e| panic!("replay of {stream}: {e}"));
    assert!(
        count >= at_least,
        "{stream}: {count} records replayed, {at_least} were acknowledged"
    );
    count
}

#[test]
fn a_full_disk_refuses_writes_with_a_reason_keeps_reads_and_resumes_when_space_returns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("full_disk: skipped, mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data);
    let ballast = data.join("ballast");
    std::fs::write(&ballast, vec![0x5a; BALLAST]).unwrap();
    let config = write_config(dir.path(), &format!("\n[store]\nmin_free = {MIN_FREE}\n"));
    let appliance = Appliance::start(&data, &config);
    let ctx = zmq::Context::new();
    let logd = appliance.logd();
    let queue = appliance.queue();
    let cache = appliance.cache();

    // Before: a queue message and a cache key, both confirmed.
    // A new subscription starts at the queue's end: subscribe first. With a window of one,
    // the second message is delivered only after the first is acked, on the full disk.
    let mut consumer = Consumer::subscribe(&ctx, &queue.router, "jobs", "g", 1, WAIT).unwrap();
    let mut producer = Producer::connect(&ctx, &queue.router).unwrap();
    producer
        .publish_durable("jobs", &[b"before 1", b"before 2"], WAIT)
        .expect("publish before the fill");
    // More than the delivery horizon stored with the first delivery covers (one window from
    // seq 1): on the full disk, deliveries stop at it until a new horizon can be stored.
    let more: Vec<Vec<u8>> = (0..WINDOW)
        .map(|i| format!("more {i}").into_bytes())
        .collect();
    for chunk in more.chunks(1_024) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        producer.publish_durable("jobs", &refs, WAIT).unwrap();
    }
    let first = consumer.recv(WAIT).unwrap().expect("first message");
    assert_eq!(first.payload, b"before 1");
    let mut peer = CacheClient::connect(&ctx, std::slice::from_ref(&cache), WAIT).unwrap();
    peer.set(b"/disk/before", b"1", None, WAIT)
        .expect("cache set before the fill");

    // Fill with acked batches until the store refuses one.
    let mut sender = AckedSender::connect(&ctx, &logd.acked).unwrap();
    let mut acked = 0u64;
    let reason = loop {
        let bodies = batch(acked);
        let slices: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        match sender.send_durable("fill", 6, "test", &slices, WAIT) {
            Ok((first, last)) => {
                assert_eq!((first, last), (acked + 1, acked + PER_BATCH as u64));
                acked = last;
            }
            Err(ClientError::Refused(reason)) => break reason,
            Err(e) => panic!("after {acked} acked records: {e}"),
        }
        assert!(
            acked < 64 << 10,
            "never refused: the tmpfs is larger than 24 MiB?"
        );
    };
    assert!(reason.contains("disk full"), "refusal reason: {reason}");
    assert!(acked > 0, "nothing was acknowledged before the disk filled");

    // Refused everywhere, with a reason, and nothing poisoned.
    let again = sender.send_durable("fill", 6, "test", &[&body(acked)], WAIT);
    assert!(
        matches!(&again, Err(ClientError::Refused(r)) if r.contains("disk full")),
        "{again:?}"
    );
    let refused = producer.publish_durable("jobs", &[b"during"], WAIT);
    assert!(
        matches!(&refused, Err(depot_queue::client::ClientError::Refused(r)) if r.contains("disk full")),
        "queue publish on a full disk: {refused:?}"
    );
    assert!(
        peer.set(b"/disk/during", b"2", None, Duration::from_secs(1))
            .is_err(),
        "a cache update the store cannot keep was published"
    );
    assert!(appliance.metric("depot_cache_unstored_total") >= 1.0);
    assert_eq!(appliance.metric("depot_store_disk_full"), 1.0);
    assert_eq!(appliance.metric("depot_store_poisoned"), 0.0);
    let (_, health) = appliance.get("/health");
    assert!(health.contains("disk full"), "{health}");

    // Reads go on: replay, cache snapshot, queue delivery.
    check_replay(&ctx, &logd.replay, "fill", acked);
    let reader = CacheClient::connect(&ctx, std::slice::from_ref(&cache), WAIT).unwrap();
    assert_eq!(reader.get(b"/disk/before"), Some(&b"1"[..]));
    assert_eq!(
        reader.get(b"/disk/during"),
        None,
        "refused update in the snapshot"
    );
    consumer.ack(&[first.seq]).unwrap();
    let delivery = consumer.recv(WAIT).unwrap().unwrap_or_else(|| {
        let log = appliance.stderr();
        let tail = &log[log.len().saturating_sub(3000)..];
        panic!("the stored message was not delivered; appliance log ends:\n{tail}")
    });
    assert_eq!(delivery.payload, b"before 2");
    // Up to the stored horizon deliveries go on; beyond it they wait for space.
    consumer.set_prefetch(1_000).unwrap();
    let mut last = delivery.seq;
    while last < WINDOW {
        let d = consumer
            .recv(WAIT)
            .unwrap()
            .expect("a message within the horizon");
        assert_eq!(d.payload, format!("more {}", d.seq - 3).as_bytes());
        last = d.seq;
        if consumer.buffered() == 0 {
            consumer.ack_through(last).unwrap();
        }
    }
    consumer.ack_through(last).unwrap();
    assert_eq!(last, WINDOW);
    let beyond = consumer.recv(Duration::from_millis(500)).unwrap();
    assert!(
        beyond.is_none(),
        "delivered past the stored horizon while no new one can be stored: {beyond:?}"
    );

    // Space returns: ingest resumes without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let resumed = poll(WAIT, || {
        let bodies = batch(acked);
        let slices: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        match sender.send_durable("fill", 6, "test", &slices, WAIT) {
            Ok(placed) => Some(placed),
            Err(ClientError::Refused(r)) if r.contains("disk full") => None,
            Err(e) => panic!("resuming: {e}"),
        }
    })
    .expect("ingest did not resume within 10 s of space returning");
    assert_eq!(resumed.0, acked + 1, "a refused batch took sequences");
    acked = resumed.1;
    // The horizon is stored now: the two messages beyond it come, first deliveries.
    for seq in WINDOW + 1..=WINDOW + 2 {
        let d = consumer
            .recv(WAIT)
            .unwrap()
            .expect("deliveries resume once space returns");
        assert_eq!((d.seq, d.redeliveries), (seq, 0));
        consumer.ack(&[seq]).unwrap();
    }
    producer
        .publish_durable("jobs", &[b"after"], WAIT)
        .expect("queue publish after space returned");
    peer.set(b"/disk/after", b"3", None, WAIT)
        .expect("cache set after space returned");
    assert_eq!(appliance.metric("depot_store_disk_full"), 0.0);
    drop((consumer, reader, peer, producer, sender));

    // Nothing acknowledged was lost or damaged, also across a restart.
    assert!(appliance.stop().success());
    let appliance = Appliance::start(&data, &config);
    let logd = appliance.logd();
    check_replay(&ctx, &logd.replay, "fill", acked);
    let reader = CacheClient::connect(&ctx, &[appliance.cache()], WAIT).unwrap();
    assert_eq!(reader.get(b"/disk/before"), Some(&b"1"[..]));
    assert_eq!(reader.get(b"/disk/after"), Some(&b"3"[..]));
    drop(reader);
    assert!(appliance.stop().success());
}
