//! logd connects out to configured PUB publishers and stores what they publish; the Rust
//! fire-and-forget sender lands records too.

mod common;

use std::time::Duration;

use common::{poll, write_config, Appliance};

fn stored(appliance: &Appliance, stream: &str) -> Vec<(u64, u8, String)> {
    let logd = appliance.logd();
    let ctx = zmq::Context::new();
    let mut out = Vec::new();
    depot_logd::client::replay(
        &ctx,
        &logd.replay,
        stream,
        "1",
        Duration::from_secs(10),
        |r| {
            out.push((
                r.header.seq,
                r.header.level,
                String::from_utf8(r.body).unwrap(),
            ));
            true
        },
    )
    .unwrap();
    out
}

#[test]
fn configured_publishers_are_collected_and_push_sender_lands_records() {
    let ctx = zmq::Context::new();
    // A PUB the appliance connects to (the publisher binds, as a service emitting logs would).
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = publisher.get_last_endpoint().unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // `publishers` belongs to [logd], which write_config already opened: add it there.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[logd]\n",
        &format!("[logd]\npublishers = [\"{endpoint}\"]\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let appliance = Appliance::start(&dir.path().join("data"), &config);

    // PUB/SUB joins asynchronously: publish a warm-up until it is stored, then the real ones.
    let warmed = poll(Duration::from_secs(10), || {
        publisher
            .send_multipart([&b"svc.INFO"[..], b"warm-up"], 0)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        (!stored(&appliance, "svc").is_empty()).then_some(())
    });
    assert!(
        warmed.is_some(),
        "the appliance never collected from {endpoint}"
    );
    let warmups = stored(&appliance, "svc").len();
    for i in 0..100 {
        let body = format!("event {i}");
        publisher
            .send_multipart([&b"svc.ERROR"[..], body.as_bytes()], 0)
            .unwrap();
    }
    let events = poll(Duration::from_secs(10), || {
        let records = stored(&appliance, "svc");
        (records.len() >= warmups + 100).then_some(records)
    })
    .expect("the 100 published records were not all stored");
    let events: Vec<_> = events
        .into_iter()
        .filter(|(_, _, body)| body.starts_with("event "))
        .collect();
    assert_eq!(events.len(), 100);
    for (i, (_, level, body)) in events.iter().enumerate() {
        assert_eq!((*level, body.as_str()), (3, format!("event {i}").as_str()));
    }

    // Fire-and-forget from the Rust client.
    let logd = appliance.logd();
    let push = depot_logd::client::PushSender::connect(&ctx, &logd.pull).unwrap();
    let bodies: Vec<String> = (0..1_000).map(|i| format!("push {i}")).collect();
    for chunk in bodies.chunks(100) {
        let refs: Vec<&[u8]> = chunk.iter().map(|b| b.as_bytes()).collect();
        push.send("pushed", 4, "test host", &refs).unwrap();
    }
    let records = poll(Duration::from_secs(10), || {
        let records = stored(&appliance, "pushed");
        (records.len() == 1_000).then_some(records)
    })
    .expect("pushed records were not all stored");
    for (i, (seq, level, body)) in records.iter().enumerate() {
        assert_eq!(
            (*seq, *level, body.as_str()),
            (i as u64 + 1, 4, bodies[i].as_str())
        );
    }

    // The same records packed into one frame per batch, acked and fire-and-forget.
    let packed = depot_logd::client::PushSender::connect(&ctx, &logd.pull)
        .unwrap()
        .with_packed(true);
    let mut acked = depot_logd::client::AckedSender::connect(&ctx, &logd.acked)
        .unwrap()
        .with_packed(true);
    for chunk in bodies.chunks(100) {
        let refs: Vec<&[u8]> = chunk.iter().map(|b| b.as_bytes()).collect();
        packed.send("packed", 4, "test", &refs).unwrap();
        let (first, last) = acked
            .send_durable("packed-acked", 4, "test", &refs, Duration::from_secs(10))
            .unwrap();
        assert_eq!(last - first + 1, 100);
    }
    for stream in ["packed", "packed-acked"] {
        let records = poll(Duration::from_secs(10), || {
            let records = stored(&appliance, stream);
            (records.len() == 1_000).then_some(records)
        })
        .unwrap_or_else(|| panic!("{stream}: packed records were not all stored"));
        for (i, (seq, _, body)) in records.iter().enumerate() {
            assert_eq!(
                (*seq, body.as_str()),
                (i as u64 + 1, bodies[i].as_str()),
                "{stream}"
            );
        }
    }
    assert_eq!(appliance.stop().code(), Some(0));
}
