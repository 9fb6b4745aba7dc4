//! `depot backup` while the appliance runs and takes writes, `depot restore` into a new data
//! folder, and a new appliance on it serving logs, cache and queues from the backup.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{depot, write_config, Appliance};
use depot_cache::client::{CacheClient, ServerEndpoints};
use depot_logd::client::{self, AckedSender};
use depot_queue::client::{Consumer, Producer};

const WAIT: Duration = Duration::from_secs(10);

fn cache_server(appliance: &Appliance) -> ServerEndpoints {
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(appliance.data.join("run.json")).unwrap())
            .unwrap();
    let endpoint = |name: &str| run["cache"][name].as_str().unwrap().to_string();
    ServerEndpoints {
        snapshot: endpoint("snapshot"),
        publisher: endpoint("publisher"),
        collector: endpoint("collector"),
    }
}

fn replay_seqs(ctx: &zmq::Context, appliance: &Appliance, stream: &str) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    client::replay(ctx, &appliance.logd().replay, stream, "1", WAIT, |r| {
        got.push((r.header.seq, r.body));
        true
    })
    .unwrap();
    got
}

#[test]
fn a_backup_taken_under_load_restores_logs_cache_and_queues() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();

    let mut logs = AckedSender::connect(&ctx, &appliance.logd().acked).unwrap();
    for i in 0..10 {
        let bodies: Vec<String> = (i * 100..(i + 1) * 100)
            .map(|n| format!("app {n}"))
            .collect();
        let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
        logs.send_durable("app", 6, "test", &refs, WAIT).unwrap();
    }
    let mut cache = CacheClient::join(&ctx, &cache_server(&appliance), b"", WAIT).unwrap();
    for i in 0..50 {
        cache
            .set(
                format!("/cfg/{i}").as_bytes(),
                format!("v{i}").as_bytes(),
                None,
                WAIT,
            )
            .unwrap();
    }
    let mut producer = Producer::connect(&ctx, &appliance.queue().router).unwrap();
    let jobs: Vec<Vec<u8>> = (0..100).map(|i| format!("job {i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = jobs.iter().map(Vec::as_slice).collect();
    producer.publish_durable("jobs", &refs, WAIT).unwrap();

    // A writer keeps ingesting while the backup is taken.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, endpoint) = (acked.clone(), stop.clone(), appliance.logd().acked);
        std::thread::spawn(move || {
            let ctx = zmq::Context::new();
            let mut sender = AckedSender::connect(&ctx, &endpoint).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let body = format!("busy {}", n + 1);
                let (_, last) = sender
                    .send_durable("busy", 6, "w", &[body.as_bytes()], WAIT)
                    .unwrap();
                n = last;
                acked.store(n, Ordering::Release);
            }
        })
    };
    while acked.load(Ordering::Acquire) < 200 {
        std::thread::yield_now();
    }
    let acked_before = acked.load(Ordering::Acquire);
    let backup_dir = dir.path().join("backup");
    let out = depot()
        .args(["backup", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&appliance.data)
        .arg(&backup_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    assert_eq!(appliance.stop().code(), Some(0));

    // Restoring over a folder that holds a database is refused, naming the folder.
    let refused = depot()
        .args(["restore", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg(&backup_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("holds a database already"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let restored = dir.path().join("restored");
    let out = depot()
        .args(["restore", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&restored)
        .arg(&backup_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let appliance = Appliance::start(&restored, &config);
    let app = replay_seqs(&ctx, &appliance, "app");
    assert_eq!(app.len(), 1_000);
    assert!(app
        .iter()
        .enumerate()
        .all(|(i, (seq, body))| *seq == i as u64 + 1 && body == format!("app {i}").as_bytes()));
    // The busy stream is a contiguous prefix holding everything acknowledged before the backup.
    let busy = replay_seqs(&ctx, &appliance, "busy");
    assert!(
        busy.len() as u64 >= acked_before,
        "{} < {acked_before}",
        busy.len()
    );
    assert!(busy
        .iter()
        .enumerate()
        .all(|(i, (seq, body))| *seq == i as u64 + 1 && body == format!("busy {seq}").as_bytes()));
    let snapshot =
        CacheClient::snapshot(&ctx, &[cache_server(&appliance)], b"/cfg/", WAIT).unwrap();
    assert_eq!(snapshot.len(), 50);
    assert!(snapshot
        .iter()
        .all(|m| m.body == format!("v{}", &String::from_utf8_lossy(&m.key)[5..]).as_bytes()));
    let mut consumer =
        Consumer::subscribe(&ctx, &appliance.queue().router, "jobs", "", 100, WAIT).unwrap();
    for i in 0..100 {
        let delivery = consumer
            .recv(WAIT)
            .unwrap()
            .expect("a queued job is missing");
        assert_eq!(delivery.payload, format!("job {i}").into_bytes());
        consumer.ack(&[delivery.seq]).unwrap();
    }
    consumer.sync(WAIT).unwrap();
    assert_eq!(appliance.stop().code(), Some(0));
}
