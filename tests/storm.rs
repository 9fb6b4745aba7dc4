//! Malformed-input storm: while valid traffic flows (acked log records, cache sets, queue
//! publishes with confirms and a consumer), every zmq endpoint of one appliance gets 100,000
//! random multipart messages and syslog gets random bytes over UDP and TCP. Afterwards every
//! valid record, update and message is there, every service answers, and the reject counters
//! account for the garbage (see RELIABILITY.md for what each assertion can rely on).

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{poll, write_config, Appliance};
use depot_cache::client::{CacheClient, ServerEndpoints};
use depot_cache::protocol::{parse_icanhaz, KvMsg};
use depot_logd::protocol as logd;
use depot_queue::client::{Consumer, Producer};

/// Random messages per zmq endpoint.
const GARBAGE: usize = 100_000;
/// Valid messages per service.
const VALID: u64 = 2_000;
const WAIT: Duration = Duration::from_secs(30);
/// The appliance's default limits on one message, as the decoders are given them.
const LOGD_LIMIT: usize = 1024 * 1024;
const QUEUE_LIMIT: usize = 1024 * 1024;
const CACHE_LIMIT: usize = 1024 * 1024;

/// xorshift64*: reproducible garbage from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }

    fn bytes(&mut self) -> Vec<u8> {
        // Mostly small, sometimes up to 2 KiB.
        let size = match self.below(16) {
            0 => self.below(2048),
            1..=3 => self.below(256),
            _ => self.below(24),
        };
        (0..size).map(|_| self.next() as u8).collect()
    }

    /// A random multipart message of 1 to 8 frames (zmq cannot send one of 0).
    fn message(&mut self) -> Vec<Vec<u8>> {
        (0..1 + self.below(8)).map(|_| self.bytes()).collect()
    }
}

/// The garbage sent to one endpoint, made before the storm so that the test can ask the pure
/// decoders how much of it the service must refuse.
fn garbage(seed: u64) -> Vec<Vec<Vec<u8>>> {
    let mut rng = Rng(seed);
    (0..GARBAGE).map(|_| rng.message()).collect()
}

/// Sends every message on `socket` (non-blocking, retrying while the socket is at its HWM).
fn flood(socket: zmq::Socket, messages: Vec<Vec<Vec<u8>>>) -> JoinHandle<zmq::Socket> {
    std::thread::spawn(move || {
        for message in &messages {
            loop {
                match socket.send_multipart(message, zmq::DONTWAIT) {
                    Ok(()) => break,
                    Err(zmq::Error::EAGAIN) => {
                        socket.poll(zmq::POLLOUT, 10).unwrap();
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
        }
        // Returned, so that the test keeps it open until the service has read everything:
        // a service may drop what is still queued from a peer that disconnects.
        socket
    })
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Socket {
    // A publisher is an XPUB, so that it can wait for the service's subscription: a PUB drops
    // everything sent before it arrives, which the counters could not show.
    let publisher = kind == zmq::PUB;
    let socket = ctx
        .socket(if publisher { zmq::XPUB } else { kind })
        .unwrap();
    socket.set_linger(30_000).unwrap();
    // No HWM: a PUB would otherwise drop garbage silently at its limit too.
    socket.set_sndhwm(0).unwrap();
    socket.connect(endpoint).unwrap();
    if publisher {
        socket.set_rcvtimeo(WAIT.as_millis() as i32).unwrap();
        let subscription = socket.recv_bytes(0).expect("the service never subscribed");
        assert_eq!(subscription.first(), Some(&1), "not a subscription");
    }
    socket
}

fn run_json(appliance: &Appliance) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(appliance.data.join("run.json")).unwrap())
        .unwrap()
}

fn rejected(appliance: &Appliance, samples: &[&str]) -> f64 {
    samples.iter().map(|s| appliance.metric(s)).sum()
}

#[test]
fn a_storm_of_malformed_input_loses_no_valid_traffic_and_every_service_answers() {
    let dir = tempfile::tempdir().unwrap();
    // Garbage that happens to be a valid push names random queues (about 1,000 of them): with
    // auto-create off they are refused and counted instead of created.
    let config = write_config(
        dir.path(),
        "auto_create = false\n[queue.queues.\"storm\"]\n",
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let logd_ends = appliance.logd();
    let queue_ends = appliance.queue();
    let clock_ends = appliance.clock();
    let run = run_json(&appliance);
    let cache_end = |name: &str| run["cache"][name].as_str().unwrap().to_string();
    let cache_ends = ServerEndpoints {
        snapshot: cache_end("snapshot"),
        publisher: cache_end("publisher"),
        collector: cache_end("collector"),
    };
    let syslog_udp = run["logd"]["syslog_udp"]
        .as_str()
        .expect("syslog UDP")
        .to_string();
    let syslog_tcp = run["logd"]["syslog_tcp"]
        .as_str()
        .expect("syslog TCP")
        .to_string();
    let ctx = zmq::Context::new();

    let logd_malformed = [
        "depot_logd_rejected_total{reason=\"malformed\"}",
        "depot_logd_rejected_total{reason=\"oversize\"}",
    ];
    let queue_refused = [
        "depot_queue_rejected_total{reason=\"malformed\"}",
        "depot_queue_rejected_total{reason=\"oversize\"}",
        "depot_queue_rejected_total{reason=\"unknown_queue\"}",
        "depot_queue_rejected_total{reason=\"bad_ack\"}",
    ];
    let before_logd = rejected(&appliance, &logd_malformed);
    let before_cache = appliance.metric("depot_cache_rejected_total");
    let before_queue = rejected(&appliance, &queue_refused);
    let before_clock = appliance.metric("depot_clock_rejected_total");
    let before_replay = appliance.metric("depot_logd_replay_rejected_total");

    // The consumer and the cache client join before the storm.
    let mut cache = CacheClient::connect(&ctx, std::slice::from_ref(&cache_ends), WAIT).unwrap();
    let consumer = {
        let (ctx, router) = (ctx.clone(), queue_ends.router.clone());
        std::thread::spawn(move || {
            let mut consumer = Consumer::subscribe(&ctx, &router, "storm", "", 500, WAIT).unwrap();
            let mut ids = Vec::new();
            while (ids.len() as u64) < VALID {
                let Some(d) = consumer.recv(WAIT).unwrap() else {
                    break;
                };
                ids.push(u64::from_be_bytes(d.payload[..8].try_into().unwrap()));
                if consumer.buffered() == 0 {
                    consumer.ack_through(d.seq).unwrap();
                }
            }
            ids
        })
    };

    // The garbage, and how much of it the decoders refuse.
    let pull = garbage(1);
    let sub = garbage(2);
    let acked = garbage(3);
    let api = garbage(4);
    let live = garbage(5);
    let replay = garbage(6);
    let snapshot = garbage(7);
    let collector = garbage(8);
    let queue_router = garbage(9);
    let queue_pull = garbage(10);
    let timers = garbage(11);
    let logd_refusals = pull
        .iter()
        .filter(|m| logd::parse_push(m, LOGD_LIMIT).is_err())
        .count()
        + sub
            .iter()
            .filter(|m| logd::parse_pub(m, LOGD_LIMIT).is_err())
            .count()
        + acked
            .iter()
            .filter(|m| logd::parse_acked(m, LOGD_LIMIT).is_err())
            .count();
    let replay_refusals = api
        .iter()
        .filter(|m| logd::parse_api_request(m).is_err())
        .count();
    let cache_refusals = snapshot
        .iter()
        .filter(|m| parse_icanhaz(m).is_err())
        .count()
        + collector
            .iter()
            .filter(|m| KvMsg::decode(m, CACHE_LIMIT).is_err())
            .count();
    let queue_refusals = queue_router
        .iter()
        .filter(|m| depot_queue::protocol::parse_request(m, QUEUE_LIMIT).is_err())
        .count()
        + queue_pull
            .iter()
            .filter(|m| depot_queue::protocol::parse_push(m, QUEUE_LIMIT).is_err())
            .count();
    // A first empty frame is taken for a REQ client's delimiter; what follows is the request.
    let clock_refusals = timers
        .iter()
        .filter(|m| {
            let body = if m.len() > 1 && m[0].is_empty() {
                &m[1..]
            } else {
                &m[..]
            };
            depot_clock::protocol::Request::decode(body, 64 * 1024).is_err()
        })
        .count();

    let floods = vec![
        flood(socket(&ctx, zmq::PUSH, &logd_ends.pull), pull),
        flood(socket(&ctx, zmq::PUB, &logd_ends.sub), sub),
        flood(socket(&ctx, zmq::DEALER, &logd_ends.acked), acked),
        flood(socket(&ctx, zmq::DEALER, &logd_ends.replay_api), api),
        flood(socket(&ctx, zmq::XSUB, &logd_ends.live), live),
        flood(socket(&ctx, zmq::XSUB, &logd_ends.replay), replay),
        flood(socket(&ctx, zmq::DEALER, &cache_ends.snapshot), snapshot),
        flood(socket(&ctx, zmq::PUB, &cache_ends.collector), collector),
        flood(socket(&ctx, zmq::DEALER, &queue_ends.router), queue_router),
        flood(socket(&ctx, zmq::PUSH, &queue_ends.pull), queue_pull),
        flood(socket(&ctx, zmq::DEALER, &clock_ends.timers), timers),
    ];
    let syslog = std::thread::spawn(move || {
        let mut rng = Rng(12);
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut tcp = TcpStream::connect(&syslog_tcp).unwrap();
        for i in 0..GARBAGE {
            let bytes = rng.bytes();
            // Paced a little: UDP has no flow control, and lost datagrams prove nothing.
            let _ = udp.send_to(&bytes, &syslog_udp);
            tcp.write_all(&bytes).unwrap();
            if i % 256 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });

    // Valid traffic while the storm blows.
    let mut sender = depot_logd::client::AckedSender::connect(&ctx, &logd_ends.acked).unwrap();
    let mut producer = Producer::connect(&ctx, &queue_ends.router).unwrap();
    for batch in 0..VALID / 100 {
        let bodies: Vec<Vec<u8>> = (batch * 100..(batch + 1) * 100)
            .map(|i| format!("valid record {i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        sender
            .send_durable("storm.valid", 6, "storm", &refs, WAIT)
            .unwrap();
        let messages: Vec<Vec<u8>> = (batch * 100..(batch + 1) * 100)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let tag = producer.publish("storm", &refs).unwrap();
        let confirm = producer.recv_confirm(WAIT).unwrap();
        assert_eq!(confirm.tag, tag);
        let (first, last) = confirm.result.unwrap();
        assert_eq!(last - first + 1, 100);
        for i in batch * 10..(batch + 1) * 10 {
            let key = format!("/storm/{i}");
            cache
                .set(key.as_bytes(), format!("v{i}").as_bytes(), None, WAIT)
                .unwrap();
        }
    }
    let _garbage_sockets: Vec<zmq::Socket> =
        floods.into_iter().map(|f| f.join().unwrap()).collect();
    syslog.join().unwrap();

    // Every valid record, update and message is there.
    let mut bodies = Vec::new();
    depot_logd::client::replay(&ctx, &logd_ends.replay, "storm.valid", "1", WAIT, |r| {
        bodies.push(String::from_utf8(r.body).unwrap());
        (bodies.len() as u64) < VALID
    })
    .unwrap();
    let expected: Vec<String> = (0..VALID).map(|i| format!("valid record {i}")).collect();
    assert_eq!(bodies, expected, "acked records lost or reordered");
    let fetched = CacheClient::fetch(&ctx, &cache_ends, b"/storm/", WAIT).unwrap();
    for i in 0..VALID / 10 {
        let key = format!("/storm/{i}");
        assert_eq!(
            fetched.get(key.as_bytes()),
            Some(format!("v{i}").as_bytes()),
            "{key}"
        );
    }
    let ids = consumer.join().unwrap();
    assert_eq!(ids, (0..VALID).collect::<Vec<_>>(), "queue messages lost");

    // Every service answers a fresh request.
    let mut fresh = depot_logd::client::AckedSender::connect(&ctx, &logd_ends.acked).unwrap();
    fresh
        .send_durable("storm.after", 6, "storm", &[b"still here"], WAIT)
        .unwrap();
    assert!(CacheClient::fetch(&ctx, &cache_ends, b"", WAIT).is_ok());
    let stats = depot_queue::client::stats(&ctx, &queue_ends.router, Some("storm"), WAIT).unwrap();
    assert_eq!(stats[0].depth, 0);
    let mut timer =
        depot_clock::client::TimerClient::connect(&ctx, &clock_ends.timers, WAIT).unwrap();
    timer.streams().unwrap();
    let streams =
        depot_logd::client::list_streams(&ctx, &logd_ends.replay_api, "storm.", WAIT).unwrap();
    assert!(streams.iter().any(|s| s == "storm.valid"), "{streams:?}");

    // The reject counters account for the garbage. logd's also count syslog's refusals, so the
    // zmq endpoints' refusals are a lower bound there; each must move by at least what the
    // decoders refuse (the services check more than the decoders, e.g. queue names), and by
    // no more than was sent.
    let settle = |samples: &[&str], before: f64, at_least: usize, at_most: usize, what: &str| {
        let reached = poll(WAIT, || {
            let moved = rejected(&appliance, samples) - before;
            (moved >= at_least as f64).then_some(moved)
        });
        let moved = rejected(&appliance, samples) - before;
        if reached.is_none() {
            let log = appliance.stderr();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("queue created"))
                .collect();
            eprintln!(
                "{} queues created; log tail:\n{}",
                log.matches("queue created").count(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        assert!(
            reached.is_some() && moved <= at_most as f64,
            "{what}: counters moved by {moved}, expected {at_least}..={at_most}; now {:?}",
            samples
                .iter()
                .map(|s| (s, appliance.metric(s)))
                .collect::<Vec<_>>()
        );
        moved
    };
    let logd_moved = settle(
        &logd_malformed,
        before_logd,
        logd_refusals,
        3 * GARBAGE + 2 * GARBAGE * 2048,
        "logd",
    );
    assert!(
        logd_moved > logd_refusals as f64,
        "syslog garbage was not counted: {logd_moved} vs {logd_refusals} from zmq"
    );
    settle(
        &["depot_cache_rejected_total"],
        before_cache,
        cache_refusals,
        2 * GARBAGE,
        "cache",
    );
    settle(
        &queue_refused,
        before_queue,
        queue_refusals,
        2 * GARBAGE,
        "queue",
    );
    settle(
        &["depot_clock_rejected_total"],
        before_clock,
        clock_refusals,
        GARBAGE,
        "clock",
    );
    // The replay API's refusals and the replay XPUB's refused subscriptions share a counter.
    let replay_moved = settle(
        &["depot_logd_replay_rejected_total"],
        before_replay,
        replay_refusals,
        2 * GARBAGE,
        "replay",
    );
    assert!(
        replay_moved > replay_refusals as f64,
        "random replay subscriptions were not counted: {replay_moved} vs {replay_refusals} from the API"
    );
    eprintln!(
        "storm: logd refused {logd_moved} (zmq decoders: {logd_refusals}), cache {cache_refusals}+, queue {queue_refusals}+, clock {clock_refusals}+, replay {replay_moved} (API decoder: {replay_refusals})"
    );
    assert_eq!(appliance.stop().code(), Some(0));
}
