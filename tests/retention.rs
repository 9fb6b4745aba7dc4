//! Retention from depot.toml, applied while ingest runs: old blocks go, numbering goes on,
//! what is left stays contiguous, and a stream without a policy keeps everything.

mod common;

use std::time::Duration;

use common::{poll, write_config, Appliance};
use depot_logd::client::AckedSender;

#[test]
fn configured_retention_trims_streams_while_ingest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[retention]\ninterval = \"50ms\"\n\n[retention.streams.\"trimmed\"]\nmax_bytes = \"64KiB\"\n",
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked)
        .unwrap()
        .with_packed(true);
    for round in 0..50 {
        let bodies = depot_common::loadgen::lines(round, 100, 1_000);
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        for stream in ["trimmed", "kept"] {
            sender
                .send_durable(stream, 6, "t", &refs, Duration::from_secs(10))
                .unwrap();
        }
    }
    let status = |name: &str| -> serde_json::Value {
        let (_, body) = appliance.get("/status");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        report["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    let trimmed = poll(Duration::from_secs(10), || {
        let s = status("trimmed");
        (s["stored_bytes"].as_u64().unwrap() <= 64 * 1024 + 16 * 1024).then_some(s)
    })
    .expect("retention did not bring the stream under its byte limit");
    let first = trimmed["first_seq"].as_u64().unwrap();
    assert!(first > 1, "old records were removed");
    assert_eq!(trimmed["last_seq"], 50_000, "numbering is untouched");

    // What is left reads back contiguously from the new first sequence.
    let mut next = first;
    depot_logd::client::replay(
        &ctx,
        &logd.replay,
        "trimmed",
        "1",
        Duration::from_secs(10),
        |r| {
            assert_eq!(r.header.seq, next);
            next += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(next, 50_001);

    let kept = status("kept");
    assert_eq!(
        (kept["first_seq"].as_u64(), kept["records"].as_u64()),
        (Some(1), Some(50_000))
    );
    let (_, metrics) = appliance.get("/metrics");
    let removed = common::metric_value(&metrics, "depot_retention_removed_records_total").unwrap();
    assert_eq!(removed as u64, first - 1);

    // Appends continue after retention, numbered on.
    let (a, b) = sender
        .send_durable(
            "trimmed",
            6,
            "t",
            &[b"after".as_slice()],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!((a, b), (50_001, 50_001));
    assert_eq!(appliance.stop().code(), Some(0));
}
