//! The credit-based replay API through a real `depot serve`: order, filters, resumption,
//! credit respected, bad requests answered.

mod common;

use std::time::Duration;

use common::{write_config, Appliance};
use depot_logd::client::{replay_api, AckedSender, ApiQuery};

fn query<'a>(start: &'a str, filter: &'a str, window: u32) -> ApiQuery<'a> {
    ApiQuery {
        stream: "api",
        start,
        filter,
        window,
    }
}

#[test]
fn replay_api_serves_in_order_with_filters_credit_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let api = appliance.logd().replay_api;
    let ctx = zmq::Context::new();

    // 20,000 records; every tenth is an ERROR mentioning a disk.
    let mut sender = AckedSender::connect(&ctx, &appliance.logd().acked).unwrap();
    for batch in 0..20u64 {
        for level in [6u8, 3] {
            let bodies: Vec<String> = (0..500u64)
                .map(|i| {
                    let n = batch * 1000 + i * 2 + u64::from(level == 3);
                    if level == 3 {
                        format!("disk error {n}")
                    } else {
                        format!("request {n}")
                    }
                })
                .collect();
            let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
            sender
                .send_durable("api", level, "test", &refs, Duration::from_secs(10))
                .unwrap();
        }
    }

    // Everything, in order, with a small window: many credit round trips.
    let mut next = 1;
    let last = replay_api(
        &ctx,
        &api,
        query("1", "", 64),
        Duration::from_secs(10),
        |r| {
            assert_eq!(r.header.seq, next);
            next += 1;
            true
        },
    )
    .unwrap();
    assert_eq!((next - 1, last), (20_000, 20_000));

    // Level and text filters, and a stop sequence.
    let mut errors = 0;
    let last = replay_api(
        &ctx,
        &api,
        query("1", "level=error\ngrep=disk\nuntil=10000\n", 1000),
        Duration::from_secs(10),
        |r| {
            assert_eq!(r.header.level, 3);
            assert!(r.body.starts_with(b"disk error"));
            assert!(r.header.seq <= 10_000);
            errors += 1;
            true
        },
    )
    .unwrap();
    assert_eq!((errors, last), (5_000, 10_000));

    // Resuming from the middle.
    let mut first = None;
    let mut count = 0;
    replay_api(
        &ctx,
        &api,
        query("15001", "", 500),
        Duration::from_secs(10),
        |r| {
            first.get_or_insert(r.header.seq);
            count += 1;
            true
        },
    )
    .unwrap();
    assert_eq!((first, count), (Some(15_001), 5_000));

    // The server sends no more than the credit granted.
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&api).unwrap();
    let request: [&[u8]; 5] = [b"REPLAY", b"tight", b"api", b"1", &10u32.to_be_bytes()];
    dealer.send_multipart(request, 0).unwrap();
    let mut seqs = Vec::new();
    let take = |dealer: &zmq::Socket, seqs: &mut Vec<u64>| {
        while dealer.poll(zmq::POLLIN, 300).unwrap() > 0 {
            let frames = dealer.recv_multipart(0).unwrap();
            assert_eq!(frames[1], b"RECS");
            for (header, _) in depot_logd::protocol::unpack_records(&frames[2]).unwrap() {
                seqs.push(depot_logd::protocol::decode_header(header).unwrap().seq);
            }
        }
    };
    take(&dealer, &mut seqs);
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "exactly the credit granted"
    );
    let grant: [&[u8]; 3] = [b"CREDIT", b"tight", &5u32.to_be_bytes()];
    dealer.send_multipart(grant, 0).unwrap();
    take(&dealer, &mut seqs);
    let received = seqs.len();
    assert_eq!(received, 15);

    // Bad requests get an error naming the problem; the service goes on.
    let bad: [&[u8]; 5] = [
        b"REPLAY",
        b"bad",
        b"no such name",
        b"1",
        &10u32.to_be_bytes(),
    ];
    dealer.send_multipart(bad, 0).unwrap();
    assert!(dealer.poll(zmq::POLLIN, 5_000).unwrap() > 0);
    let frames = dealer.recv_multipart(0).unwrap();
    assert_eq!(
        (frames[0].as_slice(), frames[1].as_slice()),
        (&b"bad"[..], &b"ERR"[..])
    );
    let unknown: [&[u8]; 2] = [b"FETCH", b"x"];
    dealer.send_multipart(unknown, 0).unwrap();
    assert!(dealer.poll(zmq::POLLIN, 5_000).unwrap() > 0);
    let frames = dealer.recv_multipart(0).unwrap();
    assert_eq!(frames[1], b"ERR");
    assert!(String::from_utf8_lossy(&frames[2]).contains("unknown command"));
    let mut count = 0;
    replay_api(
        &ctx,
        &api,
        query("19991", "", 100),
        Duration::from_secs(10),
        |_| {
            count += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(count, 10);
    let (_, metrics) = appliance.get("/metrics");
    assert!(
        metrics.contains("depot_logd_replay_rejected_total 2"),
        "{metrics}"
    );
    assert_eq!(appliance.stop().code(), Some(0));
}
