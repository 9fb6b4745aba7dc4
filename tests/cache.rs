//! The CHP cache through a real `depot serve`, spoken with raw ZeroMQ sockets as any Clone
//! client would: updates published with increasing sequences, snapshots by subtree, TTL,
//! persistence across SIGKILL, bad input counted.

mod common;

use std::time::{Duration, Instant};

use common::{poll, write_config, write_config_with_cache, Appliance, CACHE_EPHEMERAL};

fn endpoints(appliance: &Appliance) -> (String, String, String) {
    let cache = appliance.cache();
    (cache.snapshot, cache.publisher, cache.collector)
}

fn kvset(key: &str, body: &str, props: &str) -> Vec<Vec<u8>> {
    vec![key.into(), vec![0; 8], vec![], props.into(), body.into()]
}

fn seq_of(frames: &[Vec<u8>]) -> u64 {
    u64::from_be_bytes(frames[1].as_slice().try_into().unwrap())
}

/// A Clone-pattern peer: SUB to the publisher, PUB to the collector.
struct Peer {
    updates: zmq::Socket,
    collector: zmq::Socket,
}

impl Peer {
    fn join(ctx: &zmq::Context, publisher: &str, collector: &str) -> Peer {
        let updates = ctx.socket(zmq::SUB).unwrap();
        updates.connect(publisher).unwrap();
        updates.set_subscribe(b"").unwrap();
        let pub_socket = ctx.socket(zmq::PUB).unwrap();
        pub_socket.connect(collector).unwrap();
        let peer = Peer {
            updates,
            collector: pub_socket,
        };
        // Both directions join asynchronously: repeat a warm-up set until it comes back.
        let joined = poll(Duration::from_secs(10), || {
            peer.collector
                .send_multipart(kvset("/warm", "1", ""), 0)
                .unwrap();
            peer.next_update(Duration::from_millis(50))
                .filter(|f| f[0] == b"/warm")
        });
        assert!(joined.is_some(), "peer never saw its own update");
        peer
    }

    fn next_update(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self
                .updates
                .poll(zmq::POLLIN, left.as_millis() as i64)
                .unwrap()
                == 0
            {
                return None;
            }
            let frames = self.updates.recv_multipart(0).unwrap();
            if frames[0] != b"HUGZ" {
                return Some(frames);
            }
        }
    }

    /// Sets a key and waits for its publication; returns the published frames.
    fn set(&self, key: &str, body: &str, props: &str) -> Vec<Vec<u8>> {
        self.collector
            .send_multipart(kvset(key, body, props), 0)
            .unwrap();
        loop {
            let frames = self
                .next_update(Duration::from_secs(10))
                .expect("update not published");
            if frames[0] == key.as_bytes() {
                return frames;
            }
        }
    }
}

/// Asks for a snapshot: (key, seq, body) per KVSYNC, and the KTHXBAI's sequence.
fn snapshot(
    ctx: &zmq::Context,
    endpoint: &str,
    subtree: &str,
) -> (Vec<(String, u64, String)>, u64) {
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(endpoint).unwrap();
    dealer
        .send_multipart([&b"ICANHAZ?"[..], subtree.as_bytes()], 0)
        .unwrap();
    let mut entries = Vec::new();
    loop {
        assert!(
            dealer.poll(zmq::POLLIN, 10_000).unwrap() > 0,
            "snapshot timed out"
        );
        let frames = dealer.recv_multipart(0).unwrap();
        assert_eq!(frames.len(), 5);
        if frames[0] == b"KTHXBAI" {
            assert_eq!(frames[4], subtree.as_bytes());
            return (entries, seq_of(&frames));
        }
        let key = String::from_utf8(frames[0].clone()).unwrap();
        entries.push((
            key,
            seq_of(&frames),
            String::from_utf8(frames[4].clone()).unwrap(),
        ));
    }
}

#[test]
fn chp_updates_snapshots_ttl_and_persistence_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let (snap, publisher, collector) = endpoints(&appliance);
    let ctx = zmq::Context::new();
    let peer = Peer::join(&ctx, &publisher, &collector);

    let a = peer.set("/app/a", "1", "");
    let b = peer.set("/app/b", "2", "");
    let other = peer.set("/other", "x", "");
    assert!(
        seq_of(&a) < seq_of(&b) && seq_of(&b) < seq_of(&other),
        "sequences increase"
    );

    // A TTL comes back absolute (ms since the epoch), and expiry publishes a delete.
    let temp = peer.set("/tmp/t", "gone soon", "ttl=1\n");
    let ttl: u64 = String::from_utf8(temp[3].clone())
        .unwrap()
        .trim()
        .strip_prefix("ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 1_700_000_000_000, "absolute expiry, got {ttl}");
    let deleted = poll(Duration::from_secs(5), || {
        peer.next_update(Duration::from_millis(100))
            .filter(|f| f[0] == b"/tmp/t")
    })
    .expect("expiry delete not published");
    assert!(deleted[4].is_empty());
    let late_ms = depot_store::now_ns() / 1_000_000 - ttl;
    assert!(
        late_ms <= 1_000,
        "the delete came {late_ms} ms after the deadline"
    );
    assert!(seq_of(&deleted) > seq_of(&temp));

    // Snapshots filter by subtree and end with the current sequence.
    let (entries, seq) = snapshot(&ctx, &snap, "/app/");
    let keys: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["/app/a", "/app/b"]);
    assert_eq!(seq, seq_of(&deleted));

    // Bad input is counted and the service goes on.
    peer.collector
        .send_multipart([&b"/bad"[..], b"short", b"", b"", b"v"], 0)
        .unwrap();
    peer.collector
        .send_multipart([&b"/bad"[..], b"x"], 0)
        .unwrap();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&snap).unwrap();
    dealer.send_multipart([&b"GIMME"[..], b""], 0).unwrap();
    let counted = poll(Duration::from_secs(5), || {
        (appliance.metric("depot_cache_rejected_total") >= 3.0).then_some(())
    });
    assert!(counted.is_some());
    peer.set("/app/c", "3", "");
    // The last change before the crash is a delete: its sequence must survive too.
    let last = peer.set("/other", "", "");
    let last_seq = seq_of(&last);

    // SIGKILL: every published update survives with its sequence.
    appliance.kill();
    let appliance = Appliance::start(&data, &config);
    let (snap, publisher, collector) = endpoints(&appliance);
    let (entries, seq) = snapshot(&ctx, &snap, "");
    assert_eq!(seq, last_seq, "the sequence survives");
    let state: Vec<(&str, &str)> = entries
        .iter()
        .map(|(k, _, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        state,
        vec![
            ("/app/a", "1"),
            ("/app/b", "2"),
            ("/app/c", "3"),
            ("/warm", "1")
        ]
    );
    let peer = Peer::join(&ctx, &publisher, &collector);
    let next = peer.set("/app/d", "4", "");
    assert!(seq_of(&next) > last_seq, "numbering continues");
    assert_eq!(appliance.stop().code(), Some(0));
}

fn server(appliance: &Appliance) -> depot_cache::client::ServerEndpoints {
    let (snapshot, publisher, collector) = endpoints(appliance);
    depot_cache::client::ServerEndpoints {
        snapshot,
        publisher,
        collector,
    }
}

#[test]
fn concurrent_peers_and_a_late_joiner_converge_to_the_servers_state() {
    use depot_cache::client::CacheClient;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let server = server(&appliance);
    let ctx = zmq::Context::new();
    let timeout = Duration::from_secs(10);

    // Three peers set and delete overlapping keys at the same time.
    let writers: Vec<_> = (0..3)
        .map(|peer| {
            let (ctx, server) = (ctx.clone(), server.clone());
            std::thread::spawn(move || {
                let mut client = CacheClient::join(&ctx, &server, b"/shared/", timeout).unwrap();
                for i in 0..200 {
                    let key = format!("/shared/{}", i % 50);
                    if i % 7 == 6 {
                        client.delete(key.as_bytes(), timeout).unwrap();
                    } else {
                        client
                            .set(
                                key.as_bytes(),
                                format!("peer{peer}-{i}").as_bytes(),
                                None,
                                timeout,
                            )
                            .unwrap();
                    }
                }
                client
            })
        })
        .collect();
    let mut clients: Vec<CacheClient> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let late = CacheClient::join(&ctx, &server, b"/shared/", timeout).unwrap();
    let (truth, seq) = snapshot(&ctx, &server.snapshot, "/shared/");
    assert_eq!(late.seq(), seq);
    let dump = |c: &CacheClient| -> Vec<(String, String)> {
        c.entries()
            .map(|m| {
                (
                    String::from_utf8(m.key.clone()).unwrap(),
                    String::from_utf8(m.body.clone()).unwrap(),
                )
            })
            .collect()
    };
    let truth: Vec<(String, String)> = truth.into_iter().map(|(k, _, v)| (k, v)).collect();
    assert_eq!(dump(&late), truth, "the late joiner has the server's state");
    for client in &mut clients {
        // Catch up with what the others published after this one finished.
        let caught_up = poll(Duration::from_secs(10), || {
            client.poll(Duration::from_millis(50)).unwrap();
            (client.seq() >= seq).then_some(())
        });
        assert!(caught_up.is_some());
        assert_eq!(dump(client), truth, "every peer converges");
    }
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn cli_sets_gets_deletes_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let depot = |args: &[&str]| {
        common::depot()
            .arg("cache")
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(depot(&["set", "/cfg/a", "one"]).status.success());
    assert!(depot(&["set", "/cfg/b", "two"]).status.success());
    let got = depot(&["get", "/cfg/a"]);
    assert_eq!(String::from_utf8(got.stdout).unwrap(), "one\n");
    let dump = depot(&["dump", "/cfg/", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[1]["key"].as_str(), lines[1]["value"].as_str()),
        (Some("/cfg/b"), Some("two"))
    );
    assert!(depot(&["del", "/cfg/a"]).status.success());
    let missing = depot(&["get", "/cfg/a"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not set"));
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn an_independent_python_clone_client_interoperates() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let (snap, publisher, collector) = endpoints(&appliance);
    let ctx = zmq::Context::new();
    let rust = Peer::join(&ctx, &publisher, &collector);
    rust.set("/py/a", "from rust", "");
    rust.set("/elsewhere", "not in the subtree", "");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chp_client.py");
    let output = std::process::Command::new("python3")
        .args([
            script,
            &snap,
            &publisher,
            &collector,
            "/py/",
            "/py/b",
            "from python",
        ])
        .output()
        .expect("python3 runs (make test installs pyzmq)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        result["state"],
        serde_json::json!({"/py/a": "from rust", "/py/b": "from python"})
    );

    // The Rust peer sees the Python peer's update, and the server's snapshot agrees.
    let seen = poll(Duration::from_secs(5), || {
        rust.next_update(Duration::from_millis(100))
            .filter(|f| f[0] == b"/py/b")
    })
    .expect("python's update not published to the other peer");
    assert_eq!(seen[4], b"from python");
    assert_eq!(result["seq"].as_u64(), Some(seq_of(&seen)));
    let (entries, _) = snapshot(&ctx, &snap, "/py/");
    let state: Vec<(&str, &str)> = entries
        .iter()
        .map(|(k, _, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        state,
        vec![("/py/a", "from rust"), ("/py/b", "from python")]
    );
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn a_peer_joining_during_a_stream_of_updates_misses_none() {
    use depot_cache::client::CacheClient;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let server = server(&appliance);
    let ctx = zmq::Context::new();
    let timeout = Duration::from_secs(10);

    let writer = {
        let (ctx, server) = (ctx.clone(), server.clone());
        std::thread::spawn(move || {
            let mut client = CacheClient::join(&ctx, &server, b"/stream/", timeout).unwrap();
            for i in 0..3_000 {
                client
                    .set(
                        format!("/stream/{}", i % 500).as_bytes(),
                        format!("v{i}").as_bytes(),
                        None,
                        timeout,
                    )
                    .unwrap();
            }
        })
    };
    // Join once the stream is under way.
    let mut watcher = CacheClient::join(&ctx, &server, b"/stream/", timeout).unwrap();
    let started = poll(Duration::from_secs(10), || {
        watcher.poll(Duration::from_millis(20)).unwrap();
        (watcher.seq() > 300).then_some(())
    });
    assert!(started.is_some());
    let mut joiner = CacheClient::join(&ctx, &server, b"/stream/", timeout).unwrap();
    let joined_at = joiner.seq();
    // Every update after the snapshot arrives, with no sequence skipped.
    let mut next = joined_at + 1;
    let mut applied = 0;
    writer.join().unwrap();
    let (truth, final_seq) = snapshot(&ctx, &server.snapshot, "/stream/");
    while joiner.seq() < final_seq {
        for update in joiner.poll(Duration::from_secs(5)).unwrap() {
            assert_eq!(update.seq, next, "no update lost between snapshot and live");
            next += 1;
            applied += 1;
        }
    }
    assert!(
        applied > 0,
        "the joiner joined mid-stream (at {joined_at} of {final_seq})"
    );
    let state: Vec<(String, String)> = joiner
        .entries()
        .map(|m| {
            (
                String::from_utf8(m.key.clone()).unwrap(),
                String::from_utf8(m.body.clone()).unwrap(),
            )
        })
        .collect();
    let truth: Vec<(String, String)> = truth.into_iter().map(|(k, _, v)| (k, v)).collect();
    assert_eq!(state, truth);
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn big_values_and_compacted_state_survive_sigkill() {
    use depot_cache::client::CacheClient;
    let dir = tempfile::tempdir().unwrap();
    let cache = format!("{CACHE_EPHEMERAL}compaction_interval = \"100ms\"\n");
    let config = write_config_with_cache(dir.path(), &cache, "");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let endpoints = server(&appliance);
    let ctx = zmq::Context::new();
    let timeout = Duration::from_secs(10);
    let mut client = CacheClient::join(&ctx, &endpoints, b"", timeout).unwrap();

    // Values of 300 KiB (stored in pieces), churn on a few keys, deletes.
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    client.set(b"/big/1", &big, None, timeout).unwrap();
    for i in 0..600 {
        let key = format!("/churn/{}", i % 40);
        if i % 9 == 8 {
            client.delete(key.as_bytes(), timeout).unwrap();
        } else {
            client
                .set(key.as_bytes(), format!("v{i}").as_bytes(), None, timeout)
                .unwrap();
        }
    }
    // Let the compactor fold what is there, then leave a tail in the change log.
    let folded = poll(Duration::from_secs(10), || {
        (appliance.metric("depot_cache_compacted_total") >= 600.0).then_some(())
    });
    assert!(folded.is_some(), "the change log was not compacted");
    let smaller = vec![b's'; 20 * 1024];
    client.set(b"/big/1", &smaller, None, timeout).unwrap();
    client.set(b"/big/2", &big, None, timeout).unwrap();
    client.delete(b"/churn/0", timeout).unwrap();
    let before: Vec<(Vec<u8>, Vec<u8>)> = client
        .entries()
        .map(|m| (m.key.clone(), m.body.clone()))
        .collect();
    let seq = client.seq();

    appliance.kill();
    let appliance = Appliance::start(&data, &config);
    let after = CacheClient::fetch(&ctx, &server(&appliance), b"", timeout).unwrap();
    assert_eq!(after.seq(), seq, "the sequence survives");
    let after: Vec<(Vec<u8>, Vec<u8>)> = after
        .entries()
        .map(|m| (m.key.clone(), m.body.clone()))
        .collect();
    assert_eq!(after.len(), before.len());
    assert!(after == before, "the state after the restart differs");
    // Every stored value stays small enough for sled's synced log.
    let blobs = data.join(depot_store::DB_DIR).join("blobs");
    let blob_files = std::fs::read_dir(&blobs).map_or(0, |d| d.count());
    assert_eq!(blob_files, 0, "sled wrote unsynced blob files");
    assert_eq!(appliance.stop().code(), Some(0));
}

#[test]
fn a_key_whose_deadline_passed_while_depot_was_down_is_deleted_and_published_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let (_, publisher, collector) = endpoints(&appliance);
    let ctx = zmq::Context::new();
    let peer = Peer::join(&ctx, &publisher, &collector);
    let kept = peer.set("/session/kept", "x", "ttl=3600\n");
    let short = peer.set("/session/short", "x", "ttl=1\n");
    let deadline_ms: u64 = String::from_utf8_lossy(&short[3])
        .trim()
        .trim_start_matches("ttl=")
        .parse()
        .unwrap();
    appliance.kill();
    // Down until the deadline has passed.
    let passed = poll(Duration::from_secs(5), || {
        (depot_store::now_ns() / 1_000_000 > deadline_ms + 100).then_some(())
    });
    assert!(passed.is_some());

    let appliance = Appliance::start(&data, &config);
    let (snap, publisher, collector) = endpoints(&appliance);
    let (entries, _) = snapshot(&ctx, &snap, "/session/");
    let keys: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        vec!["/session/kept"],
        "the overdue key is gone at start"
    );
    // Its delete took a new sequence (a snapshot asked at the very start may predate it).
    let seq = poll(Duration::from_secs(5), || {
        let (_, seq) = snapshot(&ctx, &snap, "/session/");
        (seq > seq_of(&short)).then_some(seq)
    })
    .expect("the delete of the overdue key took no sequence");
    assert!(seq_of(&kept) < seq_of(&short));
    assert_eq!(appliance.metric("depot_cache_expired_total"), 1.0);
    // Nothing else was published since the start: the delete was.
    assert_eq!(appliance.metric("depot_cache_published_total"), 1.0);
    // A peer that joins later sees the numbering go on from the delete.
    let peer = Peer::join(&ctx, &publisher, &collector);
    assert!(seq_of(&peer.set("/after", "1", "")) > seq);
    assert_eq!(appliance.stop().code(), Some(0));
}
