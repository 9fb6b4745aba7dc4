//! Following streams by prefix: existing ones from the start, new ones from their first record,
//! every stream contiguous and without duplicates, other prefixes left out.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{write_config, Appliance};
use depot_logd::client::{AckedSender, FollowEndpoints, PrefixSubscription};

#[test]
fn prefix_subscription_follows_existing_and_new_streams_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd = appliance.logd();

    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &logd.acked.clone())
        .unwrap()
        .with_packed(true);
    let send = |sender: &mut AckedSender, stream: &str, from: usize, n: usize| {
        let bodies: Vec<String> = (from..from + n).map(|i| format!("{stream} {i}")).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
        sender
            .send_durable(stream, 6, "t", &refs, Duration::from_secs(10))
            .unwrap();
    };
    send(&mut sender, "app.a", 0, 500);
    send(&mut sender, "app.b", 0, 300);
    send(&mut sender, "other", 0, 100);

    let endpoints = FollowEndpoints {
        live: logd.live.clone(),
        replay: logd.replay.clone(),
        replay_api: logd.replay_api.clone(),
    };
    let mut follow = PrefixSubscription::start(&ctx, endpoints, "app.", "1").unwrap();
    assert_eq!(
        follow.streams(),
        vec!["app.a".to_string(), "app.b".to_string()]
    );

    // More records while following, and a stream created after the start.
    send(&mut sender, "app.a", 500, 500);
    send(&mut sender, "app.c", 0, 200);
    send(&mut sender, "other", 100, 100);

    let expected: BTreeMap<&str, u64> = [("app.a", 1_000), ("app.b", 300), ("app.c", 200)].into();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.values().sum::<u64>() < 1_500 && Instant::now() < deadline {
        let Some(record) = follow.next(Duration::from_millis(200)).unwrap() else {
            continue;
        };
        let stream = record.header.stream.clone();
        assert!(stream.starts_with("app."), "got a record of {stream}");
        let next = seen.entry(stream.clone()).or_insert(0);
        assert_eq!(
            record.header.seq,
            *next + 1,
            "{stream}: contiguous, no duplicate"
        );
        assert_eq!(
            String::from_utf8(record.body).unwrap(),
            format!("{stream} {}", *next)
        );
        *next += 1;
    }
    let seen: BTreeMap<&str, u64> = seen.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(seen, expected);
    // Nothing more arrives: no duplicates after the seam.
    assert!(follow.next(Duration::from_millis(1_500)).unwrap().is_none());
    assert_eq!(appliance.stop().code(), Some(0));
}
