//! Multicast buses through a real `depot serve`: EPGM over loopback (log records and cache
//! updates reach a plain SUB on the group, frames as on the TCP publishers), multicast ingest,
//! raw PGM, two network namespaces joined by veth with 1% loss (and a longer outage that PGM
//! cannot repair), and bad configuration.
//!
//! Loopback needs `ip link set lo multicast on` (`make test` does it as root). Each test uses
//! its own group and port, derived from a free port, so tests run in parallel.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{depot, free_port, poll, write_config, Appliance};
use depot_logd::client::{replay_api, ApiQuery, PushSender};
use depot_logd::protocol;
use depot_multicast::seal::BusKey;

/// A group and port of this test's own: `epgm://IFACE;239.192.H.L:PORT`.
fn endpoint(scheme: &str, interface: &str) -> String {
    let port = free_port();
    format!(
        "{scheme}://{interface};239.192.{}.{}:{port}",
        port >> 8,
        port & 0xff
    )
}

/// A plain ZeroMQ SUB joined to the group, as any subscriber would open it.
fn group_subscriber(ctx: &zmq::Context, endpoint: &str, prefix: &[u8]) -> zmq::Socket {
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(1_000_000).unwrap();
    sub.set_subscribe(prefix).unwrap();
    sub.connect(endpoint).unwrap();
    sub
}

fn recv(sub: &zmq::Socket, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    (sub.poll(zmq::POLLIN, timeout.as_millis() as i64).unwrap() > 0)
        .then(|| sub.recv_multipart(0).unwrap())
}

/// Sends warm-up records until one comes back on `sub`: the bridge's subscription to live and
/// the group join are both asynchronous.
fn warm_up(push: &PushSender, sub: &zmq::Socket, stream: &str) {
    let joined = poll(Duration::from_secs(20), || {
        push.send(stream, 6, "test", &[b"warm"]).unwrap();
        recv(sub, Duration::from_millis(100)).filter(|f| f[0].starts_with(stream.as_bytes()))
    });
    assert!(joined.is_some(), "no warm-up record came over the bus");
    while recv(sub, Duration::from_millis(200)).is_some() {}
}

fn log_endpoint(appliance: &Appliance) -> PushSender {
    let ctx = zmq::Context::new();
    PushSender::connect(&ctx, &appliance.logd().pull).unwrap()
}

#[test]
fn loopback_bus_carries_log_records_and_cache_updates_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"lan\"\nendpoint = \"{bus}\"\nrate_kbps = 200000\nrecovery_ms = 2000\nlogs = [\"mc.\"]\ncache = [\"/mc\"]\n"
        ),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let sub = group_subscriber(&ctx, &bus, b"");
    let push = log_endpoint(&appliance);
    warm_up(&push, &sub, "mc.warm");

    // Records of a stream the bus carries, and of one it does not.
    const N: u64 = 3_000;
    for i in 0..N {
        let body = format!("record {i}");
        push.send("mc.app", 3, "web-1", &[body.as_bytes()]).unwrap();
        if i % 500 == 0 {
            push.send("other", 6, "x", &[b"not carried"]).unwrap();
        }
    }
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < N {
        let frames = recv(&sub, Duration::from_secs(10)).expect("records stopped arriving");
        assert!(
            !frames[0].starts_with(b"other"),
            "an uncarried stream was sent"
        );
        if !frames[0].starts_with(b"mc.app") {
            continue;
        }
        // The live XPUB's frames, unchanged.
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], b"mc.app ERROR");
        let header = protocol::decode_header(&frames[1]).unwrap();
        assert_eq!((header.stream.as_str(), header.level), ("mc.app", 3));
        assert_eq!(header.source, "web-1");
        assert_eq!(frames[2], format!("record {}", header.seq - 1).as_bytes());
        seqs.push(header.seq);
    }
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "records missing or out of order"
    );

    // A Clone client's SUB reads KVPUBs from the bus: five frames, increasing sequences.
    let collector = ctx.socket(zmq::PUB).unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(appliance.data.join("run.json")).unwrap())
            .unwrap();
    collector
        .connect(run["cache"]["collector"].as_str().unwrap())
        .unwrap();
    let kv = |key: &str, value: &str| -> Vec<Vec<u8>> {
        vec![key.into(), vec![0; 8], vec![], vec![], value.into()]
    };
    let first = poll(Duration::from_secs(10), || {
        collector.send_multipart(kv("/mc/warm", "1"), 0).unwrap();
        recv(&sub, Duration::from_millis(100)).filter(|f| f[0] == b"/mc/warm")
    })
    .expect("no cache update came over the bus");
    let mut last_seq = u64::from_be_bytes(first[1].as_slice().try_into().unwrap());
    for i in 0..20 {
        collector
            .send_multipart(kv(&format!("/mc/k{i}"), &format!("v{i}")), 0)
            .unwrap();
        collector.send_multipart(kv("/elsewhere", "x"), 0).unwrap();
    }
    let mut keys = BTreeSet::new();
    while keys.len() < 20 {
        let frames = recv(&sub, Duration::from_secs(10)).expect("cache updates stopped");
        if frames[0] == b"HUGZ" || frames[0] == b"/mc/warm" || frames[0].starts_with(b"mc.") {
            continue;
        }
        assert_eq!(frames.len(), 5, "CHP messages have five frames");
        assert!(
            frames[0].starts_with(b"/mc/k"),
            "uncarried key {:?}",
            frames[0]
        );
        let seq = u64::from_be_bytes(frames[1].as_slice().try_into().unwrap());
        assert!(seq > last_seq, "sequence {seq} after {last_seq}");
        last_seq = seq;
        keys.insert(String::from_utf8(frames[0].clone()).unwrap());
    }

    let sent = appliance.metric("depot_multicast_sent_total{bus=\"lan\"}");
    assert!(sent >= (N + 21) as f64, "sent {sent}");
    assert_eq!(
        appliance.metric("depot_multicast_gaps_total{bus=\"lan\"}"),
        0.0
    );
    assert_eq!(appliance.metric("depot_multicast_bus_up{bus=\"lan\"}"), 1.0);
    let (code, health) = appliance.get("/health");
    assert_eq!(code, 200, "{health}");
    assert!(appliance.stop().success());
}

#[test]
fn multicast_ingest_stores_records_like_any_other_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!("[[multicast.bus]]\nname = \"in\"\nendpoint = \"{bus}\"\ningest = true\nrecovery_ms = 2000\n"),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    // A PUB drops silently beyond its HWM, before PGM's rate limit lets messages out.
    publisher.set_sndhwm(100_000).unwrap();
    publisher.set_rate(100_000).unwrap();
    publisher.set_recovery_ivl(2_000).unwrap();
    publisher.set_linger(1_000).unwrap();
    publisher.connect(&bus).unwrap();
    let api = appliance.logd().replay_api;
    let stored = |stream: &str| {
        let (_, text) = appliance.get("/metrics");
        common::metric_value(&text, &format!("depot_log_records{{stream=\"{stream}\"}}"))
    };
    // The group join on both sides is asynchronous: repeat a warm-up until it is stored.
    let warmed = poll(Duration::from_secs(20), || {
        publisher.send_multipart([&b"warm"[..], b"w"], 0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stored("warm")
    });
    assert!(warmed.is_some(), "nothing from the group was stored");

    // A producer's ingest frames, and another Depot's live records (level and source kept).
    const N: u64 = 2_000;
    for i in 0..N {
        let body = format!("pushed {i}");
        publisher
            .send_multipart(
                [&b"mc.push"[..], b"level=warn source=pgm", body.as_bytes()],
                0,
            )
            .unwrap();
        let header = protocol::encode_header(1_000 + i, 1, 2, "mc.fed", "far-host");
        let body = format!("federated {i}");
        publisher
            .send_multipart(
                [
                    &protocol::live_topic("mc.fed", 2)[..],
                    &header,
                    body.as_bytes(),
                ],
                0,
            )
            .unwrap();
    }
    let done = poll(Duration::from_secs(20), || {
        (stored("mc.push") == Some(N as f64) && stored("mc.fed") == Some(N as f64)).then_some(())
    });
    assert!(
        done.is_some(),
        "stored {:?} and {:?} of {N}",
        stored("mc.push"),
        stored("mc.fed")
    );
    for (stream, level, source, prefix) in [
        ("mc.push", 4, "pgm", "pushed"),
        ("mc.fed", 2, "far-host", "federated"),
    ] {
        let mut next = 0u64;
        let query = ApiQuery {
            stream,
            start: "1",
            filter: "",
            window: 1_000,
        };
        replay_api(&ctx, &api, query, Duration::from_secs(10), |r| {
            assert_eq!((r.header.level, r.header.source.as_str()), (level, source));
            assert_eq!(r.body, format!("{prefix} {next}").as_bytes());
            next += 1;
            true
        })
        .unwrap();
        assert_eq!(next, N, "{stream}");
    }
    assert_eq!(
        appliance.metric("depot_multicast_gaps_total{bus=\"in\"}"),
        0.0
    );
    assert!(appliance.metric("depot_multicast_forwarded_total{bus=\"in\"}") >= (2 * N) as f64);

    // What unrecoverable loss looks like to the receiver: the tail of a message whose head
    // was lost (libzmq resumes at the next frame start), then a jump in the stream's sequence.
    // One data-loss event, counted; the fragment is not stored.
    let header = protocol::encode_header(1_000 + N - 1 + 6, 1, 2, "mc.fed", "far-host");
    publisher
        .send_multipart([&header[..], b"tail of a lost message"], 0)
        .unwrap();
    publisher
        .send_multipart(
            [
                &protocol::live_topic("mc.fed", 2)[..],
                &header,
                b"after the loss",
            ],
            0,
        )
        .unwrap();
    let counted = poll(Duration::from_secs(10), || {
        (stored("mc.fed") == Some(N as f64 + 1.0)).then_some(())
    });
    assert!(
        counted.is_some(),
        "the record after the loss was not stored"
    );
    let metric = |name: &str| appliance.metric(&format!("depot_multicast_{name}{{bus=\"in\"}}"));
    assert_eq!(metric("fragments_total"), 1.0);
    assert_eq!(metric("gaps_total"), 1.0);
    assert_eq!(metric("missing_total"), 5.0);
    assert_eq!(metric("data_loss_total"), 1.0);
    assert!(appliance.stop().success());
}

#[test]
fn multicast_ingest_feeds_the_cache_collector_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!("[[multicast.bus]]\nname = \"kv\"\nendpoint = \"{bus}\"\ningest_cache = true\n"),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(appliance.data.join("run.json")).unwrap())
            .unwrap();
    let ctx = zmq::Context::new();
    let updates = ctx.socket(zmq::SUB).unwrap();
    updates.set_subscribe(b"/bus/").unwrap();
    updates
        .connect(run["cache"]["publisher"].as_str().unwrap())
        .unwrap();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_sndhwm(100_000).unwrap();
    publisher.connect(&bus).unwrap();
    // A Clone peer's KVSET on the group becomes a published update with the server's sequence.
    let kvset = |key: &str, value: &str| -> Vec<Vec<u8>> {
        vec![key.into(), vec![0; 8], vec![], vec![], value.into()]
    };
    let published = poll(Duration::from_secs(20), || {
        publisher
            .send_multipart(kvset("/bus/warm", "1"), 0)
            .unwrap();
        recv(&updates, Duration::from_millis(100))
    })
    .expect("a KVSET on the group never reached the cache");
    assert_eq!(published[0], b"/bus/warm");
    for i in 0..50 {
        publisher
            .send_multipart(kvset(&format!("/bus/k{i}"), &format!("v{i}")), 0)
            .unwrap();
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 50 {
        let frames = recv(&updates, Duration::from_secs(10)).expect("updates stopped");
        if frames[0].starts_with(b"/bus/k") {
            let key = String::from_utf8(frames[0].clone()).unwrap();
            assert_eq!(frames[4], format!("v{}", &key[6..]).as_bytes());
            seen.insert(key);
        }
    }
    assert!(appliance.metric("depot_multicast_forwarded_total{bus=\"kv\"}") >= 51.0);
    assert!(appliance.stop().success());
}

/// Whether this process may open raw sockets (raw `pgm://` needs root or CAP_NET_RAW).
fn raw_sockets_permitted() -> Result<(), std::io::Error> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 113) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    unsafe { libc::close(fd) };
    Ok(())
}

#[test]
fn raw_pgm_bus_carries_records() {
    if let Err(e) = raw_sockets_permitted() {
        panic!(
            "raw pgm:// needs root or CAP_NET_RAW and this test runs without ({e}); run `make test` as root"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("pgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!("[[multicast.bus]]\nname = \"raw\"\nendpoint = \"{bus}\"\nlogs = [\"raw.\"]\nrecovery_ms = 2000\n"),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let sub = group_subscriber(&ctx, &bus, b"raw.");
    let push = log_endpoint(&appliance);
    warm_up(&push, &sub, "raw.warm");
    for i in 0..500 {
        push.send("raw.app", 6, "", &[format!("r{i}").as_bytes()])
            .unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 500 {
        let frames = recv(&sub, Duration::from_secs(10)).expect("records stopped arriving");
        if frames[0].starts_with(b"raw.app") {
            seqs.push(protocol::decode_header(&frames[1]).unwrap().seq);
        }
    }
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    assert!(appliance.stop().success());
}

#[test]
fn an_invalid_bus_endpoint_is_a_config_error_naming_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    for (endpoint, why) in [
        ("epgm://lo;239.192.1.1:5555", "interface names such as lo"),
        ("epgm://127.0.0.1;10.0.0.1:5555", "not a multicast address"),
        ("udp://127.0.0.1:5555", "not pgm:// or epgm://"),
    ] {
        let config = write_config(
            dir.path(),
            &format!(
                "[[multicast.bus]]\nname = \"badbus\"\nendpoint = \"{endpoint}\"\nlogs = [\"\"]\n"
            ),
        );
        let output = depot()
            .args(["serve", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!output.status.success(), "started with {endpoint}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("multicast bus \"badbus\"") && stderr.contains(why),
            "{endpoint}: {stderr}"
        );
    }
}

#[test]
fn a_bus_that_cannot_open_is_failed_and_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let good = endpoint("epgm", "127.0.0.1");
    // Well-formed, but 192.0.2.0/24 (TEST-NET-1) is no address of this host.
    let broken = endpoint("epgm", "192.0.2.77");
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"good\"\nendpoint = \"{good}\"\nlogs = [\"ok.\"]\n\n[[multicast.bus]]\nname = \"broken\"\nendpoint = \"{broken}\"\nlogs = [\"\"]\n\n\
             [security]\nallow_insecure = true\n"
        ),
    );
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    assert!(appliance.stderr().contains("multicast bus failed to open"));

    let (code, health) = appliance.get("/health");
    assert_eq!(code, 503, "{health}");
    assert!(
        health.contains("multicast bus \\\"broken\\\" failed"),
        "{health}"
    );
    let (_, status) = appliance.get("/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let states: Vec<(String, String)> = status["buses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("good".into(), "running".into()),
            ("broken".into(), "failed".into())
        ]
    );
    assert_eq!(
        appliance.metric("depot_multicast_bus_up{bus=\"broken\"}"),
        0.0
    );

    // The CLI shows it, and the other services and buses work.
    let cli = |args: &[&str]| {
        let output = depot()
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let table = cli(&["bus", "ls"]);
    assert!(
        table.contains("FAILED") && table.contains("cannot join group"),
        "{table}"
    );
    assert!(
        table.contains("good") && table.contains("running"),
        "{table}"
    );
    assert!(cli(&["status"]).contains("FAILED"));
    let ctx = zmq::Context::new();
    let sub = group_subscriber(&ctx, &good, b"ok.");
    warm_up(&log_endpoint(&appliance), &sub, "ok.warm");
    cli(&["log", "send", "-s", "ok.sent", "still stored"]);
    assert!(appliance.stop().success());
}

#[test]
fn bus_watch_prints_what_the_group_carries() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!("[[multicast.bus]]\nname = \"w\"\nendpoint = \"{bus}\"\nlogs = [\"w.\"]\n"),
    );
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let mut watcher = Watcher::spawn(
        depot()
            .args(["bus", "watch", "w", "--json", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&data),
    );
    let push = log_endpoint(&appliance);
    let joined = poll(Duration::from_secs(20), || {
        push.send("w.warm", 6, "", &[b"warm"]).unwrap();
        watcher.next(Duration::from_millis(100))
    });
    assert!(joined.is_some(), "depot bus watch printed nothing");
    for i in 0..100 {
        push.send("w.app", 4, "h", &[format!("m{i}").as_bytes()])
            .unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 100 {
        let line = watcher
            .next(Duration::from_secs(10))
            .expect("watch stopped");
        if line["stream"] == "w.app" {
            assert_eq!(line["level"], "WARN");
            assert_eq!(line["body"], format!("m{}", seqs.len()));
            seqs.push(line["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert!(appliance.stop().success());
}

/// A bus key made by `depot bus keygen`, as an operator would: a new file of mode 0600.
fn bus_key(dir: &std::path::Path) -> (std::path::PathBuf, BusKey) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("bus.key");
    let output = depot().args(["bus", "keygen"]).arg(&path).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = depot().args(["bus", "keygen"]).arg(&path).output().unwrap();
    assert!(!again.status.success(), "keygen overwrote a key file");
    let key = BusKey::load(&path).unwrap();
    (path, key)
}

#[test]
fn a_sealed_bus_is_readable_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = bus_key(dir.path());
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"sec\"\nendpoint = \"{bus}\"\nlogs = [\"sec.\"]\nkey_file = {:?}\n",
            key_path.display().to_string()
        ),
    );
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    // A plain SUB on the group, as anyone on the network could open one.
    let ctx = zmq::Context::new();
    let sub = group_subscriber(&ctx, &bus, b"sec.app");
    let mut watcher = Watcher::spawn(
        depot()
            .args(["bus", "watch", "sec", "--json", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&data),
    );
    let push = log_endpoint(&appliance);
    let joined = poll(Duration::from_secs(20), || {
        push.send("sec.warm", 6, "", &[b"warm"]).unwrap();
        watcher.next(Duration::from_millis(100))
    });
    assert!(
        joined.is_some(),
        "depot bus watch (with the key) printed nothing"
    );
    const N: u64 = 200;
    let sent = poll(Duration::from_secs(20), || {
        push.send("sec.app", 6, "web", &[b"secret 0"]).unwrap();
        recv(&sub, Duration::from_millis(100))
    })
    .expect("the plain SUB received nothing");
    for i in 1..N {
        push.send("sec.app", 6, "web", &[format!("secret {i}").as_bytes()])
            .unwrap();
    }
    // The plain SUB sees the topic in clear and the rest sealed.
    let mut wire = vec![sent];
    while (wire.len() as u64) < N {
        wire.push(recv(&sub, Duration::from_secs(10)).expect("sealed records stopped"));
    }
    let mut seqs = Vec::new();
    for frames in &wire {
        assert_eq!(frames.len(), 2, "a sealed message is [topic][sealed]");
        assert_eq!(frames[0], b"sec.app INFO");
        assert!(
            !frames[1].windows(6).any(|w| w == b"secret"),
            "a body travelled in clear"
        );
        let rest = key
            .open(frames)
            .expect("the bus key opens what the bus sent");
        let header = protocol::decode_header(&rest[0]).unwrap();
        assert_eq!(rest[1], format!("secret {}", header.seq - 1).as_bytes());
        seqs.push(header.seq);
    }
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    // `depot bus watch` opened them with the configured key_file.
    let mut watched = Vec::new();
    while (watched.len() as u64) < N {
        let line = watcher
            .next(Duration::from_secs(10))
            .expect("watch stopped");
        if line["stream"] == "sec.app" {
            assert_eq!(line["body"], format!("secret {}", watched.len()));
            watched.push(line["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(watched, seqs);
    assert!(appliance.stop().success());
}

#[test]
fn a_sealed_in_bus_stores_what_opens_and_rejects_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = bus_key(dir.path());
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"sin\"\nendpoint = \"{bus}\"\ningest = true\nrecovery_ms = 2000\nkey_file = {:?}\n",
            key_path.display().to_string()
        ),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_sndhwm(100_000).unwrap();
    publisher.set_rate(100_000).unwrap();
    publisher.set_recovery_ivl(2_000).unwrap();
    publisher.set_linger(1_000).unwrap();
    publisher.connect(&bus).unwrap();
    let send = |frames: Vec<Vec<u8>>| publisher.send_multipart(frames, 0).unwrap();
    // logd ingest frames `[stream][body]`, sealed: `[stream][sealed body]`.
    let sealed = |key: &BusKey, stream: &str, body: &str| -> Vec<Vec<u8>> {
        vec![
            stream.into(),
            key.seal(stream.as_bytes(), &[body.as_bytes()]),
        ]
    };
    let stored = |stream: &str| {
        let (_, text) = appliance.get("/metrics");
        common::metric_value(&text, &format!("depot_log_records{{stream=\"{stream}\"}}"))
    };
    let warmed = poll(Duration::from_secs(20), || {
        send(sealed(&key, "sin.warm", "w"));
        std::thread::sleep(Duration::from_millis(50));
        stored("sin.warm")
    });
    assert!(warmed.is_some(), "nothing sealed on the group was stored");

    // Good messages, each followed by a bad one of four kinds.
    let other_key = BusKey::generate();
    const N: usize = 400;
    for i in 0..N {
        send(sealed(&key, "sin.app", &format!("good {i}")));
        let bad = match i % 4 {
            0 => {
                let mut altered = sealed(&key, "sin.app", &format!("forged {i}"));
                let last = altered[1].len() - 20;
                altered[1][last] ^= 0x40;
                altered
            }
            1 => {
                // A topic swapped onto another stream's seal.
                let mut swapped = sealed(&key, "sin.other", &format!("forged {i}"));
                swapped[0] = b"sin.app".to_vec();
                swapped
            }
            2 => sealed(&other_key, "sin.app", &format!("forged {i}")),
            _ => vec![b"sin.app".to_vec(), format!("forged {i}").into_bytes()],
        };
        send(bad);
    }
    let rejected = "depot_multicast_rejected_total{bus=\"sin\",reason=\"seal\"}";
    let counted = poll(Duration::from_secs(20), || {
        (appliance.metric(rejected) >= N as f64 && stored("sin.app") >= Some(N as f64))
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "rejected {}, stored {:?}",
        appliance.metric(rejected),
        stored("sin.app")
    );
    // Every good one stored, no forged one.
    assert_eq!(appliance.metric(rejected), N as f64);
    assert_eq!(stored("sin.app"), Some(N as f64));
    assert_eq!(stored("sin.other"), None);
    let mut bodies = Vec::new();
    let query = ApiQuery {
        stream: "sin.app",
        start: "1",
        filter: "",
        window: 1_000,
    };
    let api = appliance.logd().replay_api;
    replay_api(&ctx, &api, query, Duration::from_secs(10), |r| {
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
        true
    })
    .unwrap();
    assert_eq!(
        bodies,
        (0..N).map(|i| format!("good {i}")).collect::<Vec<_>>()
    );
    assert!(
        appliance
            .stderr()
            .contains("does not open with the bus key"),
        "rejections are logged"
    );
    assert!(appliance.stop().success());
}

#[test]
fn a_bus_key_that_cannot_be_read_stops_the_start_naming_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "0123456789abcdef\n").unwrap();
    for (path, why) in [
        (dir.path().join("missing.key"), "No such file"),
        (short, "16 characters"),
    ] {
        let config = write_config(
            dir.path(),
            &format!(
                "[[multicast.bus]]\nname = \"keyed\"\nendpoint = \"{}\"\nlogs = [\"\"]\nkey_file = {:?}\n",
                endpoint("epgm", "127.0.0.1"),
                path.display().to_string()
            ),
        );
        let output = depot()
            .args(["serve", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!output.status.success(), "started with {}", path.display());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("multicast bus \"keyed\": key_file") && stderr.contains(why),
            "{stderr}"
        );
    }
}

/// A `depot bus watch --json` child whose lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Watcher {
    fn spawn(command: &mut Command) -> Watcher {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str(&line) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        Watcher { child, lines }
    }

    fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Stops it and returns what it wrote on stderr (gaps and the summary).
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two test hosts: network namespaces joined by a veth pair, removed when dropped (also when
/// the test fails).
struct HostPair {
    depot_ns: String,
    subscriber_ns: String,
}

/// Address of the Depot host's and the subscriber host's veth ends.
const DEPOT_IP: &str = "10.77.0.1";
const SUBSCRIBER_IP: &str = "10.77.0.2";

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl HostPair {
    fn create() -> HostPair {
        // Say plainly what is missing rather than fail on the first `ip` call.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "network namespaces need root: run `make test` as root"
        );
        assert!(
            Command::new("nft").arg("--version").output().is_ok(),
            "nft (nftables) is missing: `scripts/setup.sh test` installs it"
        );
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let pair = HostPair {
            depot_ns: format!("dmc{tag}a"),
            subscriber_ns: format!("dmc{tag}b"),
        };
        let (veth_a, veth_b) = (format!("dv{tag}a"), format!("dv{tag}b"));
        ip(&["netns", "add", &pair.depot_ns]);
        ip(&["netns", "add", &pair.subscriber_ns]);
        ip(&[
            "link",
            "add",
            &veth_a,
            "netns",
            &pair.depot_ns,
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
            "netns",
            &pair.subscriber_ns,
        ]);
        for (ns, dev, addr) in [
            (&pair.depot_ns, &veth_a, DEPOT_IP),
            (&pair.subscriber_ns, &veth_b, SUBSCRIBER_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up", "multicast", "on"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// A command run inside `ns`.
    fn exec(ns: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }

    /// Applies nftables `rules` (a whole ruleset text) inside the subscriber's namespace.
    fn nft(&self, rules: &str) {
        common::nft_through(HostPair::exec(&self.subscriber_ns, "nft"), rules);
    }
}

impl HostPair {
    /// Packets the subscriber namespace's `counter` rule dropped.
    fn dropped_packets(&self) -> u64 {
        let output = HostPair::exec(&self.subscriber_ns, "nft")
            .args(["list", "table", "inet", "depot_loss"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }
}

impl Drop for HostPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it (and so the pair).
        for ns in [&self.depot_ns, &self.subscriber_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Sends `bodies` as records of `stream` through `depot log send` inside the Depot's namespace.
fn send_in(
    ns: &str,
    config: &std::path::Path,
    data: &std::path::Path,
    stream: &str,
    bodies: &[String],
) {
    let mut child = HostPair::exec(ns, env!("CARGO_BIN_EXE_depot"))
        .args(["log", "send", "-s", stream, "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for body in bodies {
        writeln!(stdin, "{body}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "depot log send failed");
}

/// Collects the sequences of `stream` from `watcher` until `count` arrived or `timeout`.
fn collect(watcher: &mut Watcher, stream: &str, count: usize, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    let mut seqs = Vec::new();
    while seqs.len() < count && Instant::now() < deadline {
        if let Some(line) = watcher.next(Duration::from_millis(200)) {
            if line["stream"] == stream {
                seqs.push(line["seq"].as_u64().unwrap());
            }
        }
    }
    seqs
}

/// `depot bus ls --json` inside the Depot's namespace: the named bus's `sent`.
fn bus_sent(ns: &str, config: &std::path::Path, data: &std::path::Path, bus: &str) -> u64 {
    let output = HostPair::exec(ns, env!("CARGO_BIN_EXE_depot"))
        .args(["bus", "ls", "--json", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let buses: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    buses
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == bus)
        .and_then(|b| b["sent"].as_u64())
        .unwrap()
}

#[test]
fn two_hosts_pgm_repairs_one_percent_loss_and_counts_an_outage() {
    let hosts = HostPair::create();
    let dir = tempfile::tempdir().unwrap();
    let group = || {
        let port = free_port();
        format!("239.192.{}.{}:{port}", port >> 8, port & 0xff)
    };
    let (lan, slow) = (group(), group());
    // `slow` keeps little for repair: PGM's transmit window is rate x recovery interval
    // (1 Mbit/s x 0.5 s = 62.5 KB), so an outage that outlasts it cannot be repaired.
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"lan\"\nendpoint = \"epgm://{DEPOT_IP};{lan}\"\nrate_kbps = 100000\nrecovery_ms = 2000\nlogs = [\"net.\"]\n\n\
             [[multicast.bus]]\nname = \"slow\"\nendpoint = \"epgm://{DEPOT_IP};{slow}\"\nrate_kbps = 1000\nrecovery_ms = 500\nlogs = [\"lossy.\"]\n\n\
             [security]\nallow_insecure = true\n"
        ),
    );
    let data = dir.path().join("data");
    let depot_ns = hosts.depot_ns.clone();
    let appliance = Appliance::start_with(
        HostPair::exec(&depot_ns, env!("CARGO_BIN_EXE_depot")),
        &data,
        &config,
    );
    let send = |stream: &str, bodies: &[String]| send_in(&depot_ns, &config, &data, stream, bodies);
    let watch = |group: &str| {
        Watcher::spawn(
            HostPair::exec(&hosts.subscriber_ns, env!("CARGO_BIN_EXE_depot")).args([
                "bus",
                "watch",
                &format!("epgm://{SUBSCRIBER_IP};{group}"),
                "--json",
            ]),
        )
    };
    let (mut watcher, mut slow_watcher) = (watch(&lan), watch(&slow));
    for (watcher, stream) in [
        (&mut watcher, "net.warm"),
        (&mut slow_watcher, "lossy.warm"),
    ] {
        let joined = poll(Duration::from_secs(20), || {
            send(stream, &["warm".into()]);
            watcher.next(Duration::from_millis(300))
        });
        assert!(joined.is_some(), "nothing crossed the veth on {stream}");
    }

    // 1% of UDP into the subscriber's host dropped (nftables: this kernel has no netem).
    hosts.nft(
        "table inet depot_loss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  meta l4proto udp numgen random mod 100 0 counter drop\n }\n}\n",
    );
    const N: usize = 20_000;
    let bodies: Vec<String> = (0..N)
        .map(|i| format!("record {i:06} {}", "x".repeat(80)))
        .collect();
    send("net.app", &bodies);
    let seqs = collect(&mut watcher, "net.app", N, Duration::from_secs(30));
    assert_eq!(
        seqs,
        (1..=N as u64).collect::<Vec<_>>(),
        "PGM repair did not deliver every record in order ({} of {N})",
        seqs.len()
    );
    let dropped = hosts.dropped_packets();
    assert!(
        dropped > 0,
        "the 1% rule dropped nothing: the test proved no repair"
    );
    eprintln!("1% loss: {dropped} UDP packets dropped, {N} of {N} records delivered");

    // Every UDP packet dropped while more than the slow bus's window is sent: PGM cannot
    // repair that, and the subscriber sees the gap in the sequence (from the last one it saw).
    const BASELINE: usize = 10;
    send("lossy.app", &vec!["before".to_string(); BASELINE]);
    let mut got = collect(
        &mut slow_watcher,
        "lossy.app",
        BASELINE,
        Duration::from_secs(10),
    );
    assert_eq!(got, (1..=BASELINE as u64).collect::<Vec<_>>());
    hosts.nft("flush table inet depot_loss\ntable inet depot_loss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  meta l4proto udp drop\n }\n}\n");
    let before = bus_sent(&depot_ns, &config, &data, "slow");
    const OUTAGE: usize = 1_500;
    let lost: Vec<String> = (0..OUTAGE)
        .map(|i| format!("lost {i:04} {}", "y".repeat(90)))
        .collect();
    send("lossy.app", &lost);
    let all_sent = poll(Duration::from_secs(20), || {
        (bus_sent(&depot_ns, &config, &data, "slow") >= before + OUTAGE as u64).then_some(())
    });
    assert!(
        all_sent.is_some(),
        "the slow bus did not send the outage's records"
    );
    hosts.nft("delete table inet depot_loss\n");
    // After the outage the receiver asks for repairs the sender can no longer give, declares
    // the loss and rejoins: the records it gets next jump past the hole. (Seen here: in about
    // one run in five it then stalls again on a second hole for 45 s or more, so the test
    // waits for the jump, not for every later record.)
    let unblocked = Instant::now();
    let jumped = poll(Duration::from_secs(30), || {
        send("lossy.app", &["after".into()]);
        got.extend(collect(
            &mut slow_watcher,
            "lossy.app",
            usize::MAX,
            Duration::from_millis(300),
        ));
        got.windows(2).any(|w| w[1] > w[0] + 1).then_some(())
    });
    let stderr = slow_watcher.stop();
    assert!(
        jumped.is_some(),
        "no record arrived after the outage within 30 s: got {:?}; {stderr}",
        got.last()
    );
    eprintln!(
        "outage: {} records arrived, jump seen {:.1} s after unblocking",
        got.len(),
        unblocked.elapsed().as_secs_f64()
    );
    assert!(
        stderr.contains("gap in lossy.app"),
        "the subscriber did not count the gap: {stderr}"
    );
    drop(watcher);
    assert!(appliance.stop().success());
}

#[test]
fn a_bus_carries_the_clocks_ticks_unchanged_with_contiguous_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"ticks\"\nendpoint = \"{bus}\"\nrate_kbps = 10000\nrecovery_ms = 2000\nticks = [\"tick.10ms\"]\n"
        ),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let sub = group_subscriber(&ctx, &bus, b"tick.10ms");
    // The default clock publishes tick.10ms; the bus joins asynchronously, so skip to the first.
    let first = poll(Duration::from_secs(20), || {
        recv(&sub, Duration::from_millis(200))
    })
    .expect("no tick came over the bus");
    let mut previous = depot_clock::protocol::Tick::decode(&first).unwrap();
    for _ in 0..100 {
        let frames = recv(&sub, Duration::from_secs(5)).expect("ticks stopped");
        // The clock PUB's four frames, unchanged.
        let tick = depot_clock::protocol::Tick::decode(&frames).unwrap();
        assert_eq!(tick.topic, "tick.10ms");
        assert_eq!(tick.seq, previous.seq + 1, "a tick went missing on the bus");
        previous = tick;
    }
    assert!(appliance.metric("depot_multicast_sent_total{bus=\"ticks\"}") >= 100.0);
    assert_eq!(appliance.stop().code(), Some(0));
}

/// With CURVE on, a bus reads the tick PUB over TCP with the server's own key pair.
#[test]
fn with_curve_a_bus_still_carries_the_clocks_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    let config = write_config(
        dir.path(),
        &format!(
            "[[multicast.bus]]\nname = \"ticks\"\nendpoint = \"{bus}\"\nrate_kbps = 10000\nrecovery_ms = 2000\nticks = [\"tick.10ms\"]\n\n[security]\ncurve = true\n"
        ),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let sub = group_subscriber(&ctx, &bus, b"tick.10ms");
    let tick = poll(Duration::from_secs(20), || {
        recv(&sub, Duration::from_millis(200))
    })
    .expect("no tick came over the bus with CURVE on");
    assert_eq!(
        depot_clock::protocol::Tick::decode(&tick).unwrap().topic,
        "tick.10ms"
    );
    assert!(appliance.metric("depot_security_accepted_total") >= 1.0);
    assert_eq!(appliance.metric("depot_security_rejected_total"), 0.0);
}

/// A packed bus: logd's packed live messages (many records each, in 9,000-byte PGM packets)
/// reach a plain SUB with the same `max_tpdu`, and a second Depot's in bus stores every record
/// with its level and source.
#[test]
fn packed_bus_carries_batches_that_another_depot_stores_whole() {
    let dir = tempfile::tempdir().unwrap();
    let bus = endpoint("epgm", "127.0.0.1");
    for side in ["out", "in"] {
        std::fs::create_dir_all(dir.path().join(side)).unwrap();
    }
    let out_config = write_config(
        &dir.path().join("out"),
        &format!(
            "[[multicast.bus]]\nname = \"packed\"\nendpoint = \"{bus}\"\nrate_kbps = 200000\nrecovery_ms = 2000\nmax_tpdu = 9000\nlogs = [\"pk.\"]\npacked = true\n"
        ),
    );
    let in_config = write_config(
        &dir.path().join("in"),
        &format!(
            "[[multicast.bus]]\nname = \"in\"\nendpoint = \"{bus}\"\ningest = true\nrecovery_ms = 2000\nmax_tpdu = 9000\n"
        ),
    );
    let sender = Appliance::start(&dir.path().join("out/data"), &out_config);
    let receiver = Appliance::start(&dir.path().join("in/data"), &in_config);
    let ctx = zmq::Context::new();
    let mut sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(1_000_000).unwrap();
    depot_common::sockopt::set_multicast_maxtpdu(&mut sub, 9000).unwrap();
    sub.set_subscribe(b"pk.").unwrap();
    sub.connect(&bus).unwrap();
    let push = log_endpoint(&sender).with_packed(true);
    warm_up(&push, &sub, "pk.warm");

    const BATCHES: u64 = 40;
    const PER_BATCH: u64 = 500;
    for b in 0..BATCHES {
        let bodies: Vec<Vec<u8>> = (0..PER_BATCH)
            .map(|i| format!("packed {}", b * PER_BATCH + i).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        push.send("pk.app", 3, "web-1", &refs).unwrap();
    }
    let total = BATCHES * PER_BATCH;
    let mut next = 1u64;
    while next <= total {
        let frames = recv(&sub, Duration::from_secs(10)).expect("batches stopped arriving");
        if !frames[0].starts_with(b"pk.app") {
            continue;
        }
        assert_eq!(frames.len(), 4, "a packed live message has four frames");
        let batch = protocol::decode_packed_live(&frames).unwrap();
        assert_eq!(batch.header.seq, next, "first sequence of a batch");
        assert_eq!(
            (batch.header.level, batch.header.source.as_str()),
            (3, "web-1")
        );
        for (i, body) in batch.bodies.iter().enumerate() {
            assert_eq!(*body, format!("packed {}", next - 1 + i as u64).as_bytes());
        }
        next += batch.bodies.len() as u64;
    }

    let stored = || {
        let (_, text) = receiver.get("/metrics");
        common::metric_value(&text, "depot_log_records{stream=\"pk.app\"}")
    };
    poll(Duration::from_secs(20), || {
        (stored() == Some(total as f64)).then_some(())
    })
    .unwrap_or_else(|| panic!("the in bus stored {:?} of {total}", stored()));
    let mut seen = 0u64;
    let query = ApiQuery {
        stream: "pk.app",
        start: "1",
        filter: "",
        window: 1_000,
    };
    replay_api(
        &ctx,
        &receiver.logd().replay_api,
        query,
        Duration::from_secs(10),
        |r| {
            assert_eq!((r.header.level, r.header.source.as_str()), (3, "web-1"));
            assert_eq!(r.body, format!("packed {seen}").as_bytes());
            seen += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(seen, total);
    assert_eq!(
        receiver.metric("depot_multicast_gaps_total{bus=\"in\"}"),
        0.0
    );
    assert_eq!(
        sender.metric("depot_multicast_gaps_total{bus=\"packed\"}"),
        0.0
    );
    assert!(sender.metric("depot_multicast_sent_total{bus=\"packed\"}") < total as f64);

    // `depot bus watch` joins with the bus's max_tpdu and prints every record of a batch.
    let mut watcher = Watcher::spawn(
        depot()
            .args(["bus", "watch", "packed", "--json", "--config"])
            .arg(&out_config)
            .arg("--data")
            .arg(dir.path().join("out/data")),
    );
    let joined = poll(Duration::from_secs(20), || {
        push.send("pk.warm", 6, "", &[b"warm"]).unwrap();
        watcher.next(Duration::from_millis(100))
    });
    assert!(joined.is_some(), "depot bus watch printed nothing");
    // A batch of ~10 KB: PGM packets above 1500 bytes, which a receiver left at the default
    // max_tpdu does not take.
    let bodies: Vec<String> = (0..100)
        .map(|i| format!("w{i:03} {}", "x".repeat(95)))
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    push.send("pk.watched", 4, "h", &refs).unwrap();
    let mut seen = Vec::new();
    while seen.len() < bodies.len() {
        let line = watcher
            .next(Duration::from_secs(10))
            .expect("watch stopped");
        if line["stream"] == "pk.watched" {
            assert_eq!(line["seq"].as_u64(), Some(seen.len() as u64 + 1));
            seen.push(line["body"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, bodies);
    assert!(receiver.stop().success());
    assert!(sender.stop().success());
}
