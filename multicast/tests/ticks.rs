//! A bus carries any PUB's topics unchanged: here a stand-in for the clock's tick PUB, as
//! `depot serve` will pass it once the clock service runs (`ServiceEndpoints::clock_ticks`).
//! Needs multicast on `lo` (`make test` enables it as root).

use std::time::{Duration, Instant};

use depot_multicast::{BusState, Multicast, MulticastConfig, ServiceEndpoints};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_bus_carries_tick_topics_from_a_pub_unchanged() {
    let ctx = zmq::Context::new();
    let ticks = ctx.socket(zmq::PUB).unwrap();
    ticks.bind("tcp://127.0.0.1:*").unwrap();
    let tick_endpoint = ticks.get_last_endpoint().unwrap().unwrap();
    let port = free_port();
    let bus = format!(
        "epgm://127.0.0.1;239.192.{}.{}:{port}",
        port >> 8,
        port & 0xff
    );
    let config: MulticastConfig = toml::from_str(&format!(
        "[[bus]]\nname = \"clock\"\nendpoint = \"{bus}\"\nticks = [\"tick.1s\"]\n"
    ))
    .unwrap();
    config.validate().unwrap();
    let services = ServiceEndpoints {
        clock_ticks: Some(tick_endpoint),
        ..Default::default()
    };
    let multicast = Multicast::start(&ctx, &config, &services);
    assert_eq!(multicast.statuses()[0].state, BusState::Running);

    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(&bus).unwrap();
    let tick = |seq: u64| -> Vec<Vec<u8>> {
        vec![
            b"tick.1s".to_vec(),
            seq.to_be_bytes().to_vec(),
            b"payload".to_vec(),
        ]
    };
    // Both subscriptions (bus → PUB, SUB → group) join asynchronously: tick until one arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 0;
    let first = loop {
        assert!(Instant::now() < deadline, "no tick came over the bus");
        seq += 1;
        ticks.send_multipart(tick(seq), 0).unwrap();
        ticks
            .send_multipart([&b"tick.1m"[..], b"not carried"], 0)
            .unwrap();
        if sub.poll(zmq::POLLIN, 100).unwrap() > 0 {
            break sub.recv_multipart(0).unwrap();
        }
    };
    assert_eq!(first[0], b"tick.1s");
    for _ in 0..100 {
        seq += 1;
        ticks.send_multipart(tick(seq), 0).unwrap();
        ticks
            .send_multipart([&b"tick.1m"[..], b"not carried"], 0)
            .unwrap();
    }
    let mut last = u64::from_be_bytes(first[1].as_slice().try_into().unwrap());
    while last < seq {
        assert!(
            sub.poll(zmq::POLLIN, 10_000).unwrap() > 0,
            "ticks stopped at {last}"
        );
        let frames = sub.recv_multipart(0).unwrap();
        assert_eq!(frames.len(), 3, "frames changed: {frames:?}");
        assert_eq!(frames[0], b"tick.1s");
        assert_eq!(frames[2], b"payload");
        let got = u64::from_be_bytes(frames[1].as_slice().try_into().unwrap());
        assert_eq!(got, last + 1, "tick missing");
        last = got;
    }
    let status = &multicast.statuses()[0];
    assert!(status.sent >= 101, "{status:?}");
    multicast.shutdown();
}
