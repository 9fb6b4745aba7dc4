//! `depot bench store`: a load tool for the disk core — durable appends from several producers,
//! then a sequential read-back, with the on-disk size against the raw record bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use depot_common::loadgen;
use depot_store::{NewRecord, Store, StoreConfig};

/// Options of `depot bench store`.
#[derive(clap::Args, Debug)]
pub struct StoreBenchArgs {
    /// Records in all.
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Body bytes per record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Producer threads, each appending to its own stream.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Records per append call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Data folder (default: a fresh folder under the system temp folder, removed afterwards).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn folder_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Waits for every producer thread and returns the first error.
fn join_producers(handles: Vec<std::thread::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    Ok(())
}

/// Runs the store benchmark and prints its figures.
pub fn store(args: &StoreBenchArgs) -> anyhow::Result<()> {
    let temp;
    let data = match &args.data {
        Some(path) => path.clone(),
        None => {
            temp = tempfile::tempdir().context("temp folder")?;
            temp.path().to_path_buf()
        }
    };
    let store = Arc::new(Store::open(&data, StoreConfig::default())?);
    let per_producer = args.records / args.producers as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let store = store.clone();
            let (size, batch) = (args.size, args.batch);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let bodies = loadgen::lines(p as u64 + 1, size, batch * 16);
                let stream = format!("bench-{p}");
                let mut sent = 0u64;
                let mut last = None;
                while sent < per_producer {
                    let n = (per_producer - sent).min(batch as u64) as usize;
                    let offset = (sent as usize / batch % 16) * batch;
                    let records: Vec<NewRecord<'_>> = bodies[offset..offset + n]
                        .iter()
                        .map(|body| NewRecord {
                            level: 6,
                            source: "web-1",
                            body,
                        })
                        .collect();
                    last = Some(store.log().append(&stream, &records)?);
                    sent += n as u64;
                }
                if let Some(appended) = last {
                    store.wait_durable(appended.ticket)?;
                }
                Ok(())
            })
        })
        .collect();
    join_producers(handles)?;
    let append_secs = started.elapsed().as_secs_f64();
    let total = per_producer * args.producers as u64;

    let started = Instant::now();
    let mut read = 0u64;
    for p in 0..args.producers {
        let stream = format!("bench-{p}");
        let mut next = 1;
        loop {
            let records = store.log().read(&stream, next, u64::MAX, 10_000)?;
            let Some(last) = records.last() else { break };
            next = last.seq + 1;
            read += records.len() as u64;
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    let commits = store.commit_stats().commits;
    store.close()?;
    drop(store);
    let raw = total * (args.size as u64 + "web-1".len() as u64);
    let disk = folder_bytes(&data.join(depot_store::DB_DIR));
    let blobs = std::fs::read_dir(data.join(depot_store::DB_DIR).join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "append: {total} records of {} B, {} producers, batch {}: {:.2} s, {:.0} records/s durable ({commits} commits)",
        args.size,
        args.producers,
        args.batch,
        append_secs,
        total as f64 / append_secs
    );
    println!(
        "read:   {read} records: {:.2} s, {:.0} records/s",
        read_secs,
        read as f64 / read_secs
    );
    println!(
        "disk:   {disk} bytes for {raw} raw bytes (body + source): {:.2}x; blob files: {blobs}",
        disk as f64 / raw as f64
    );
    anyhow::ensure!(read == total, "read back {read} of {total} records");
    Ok(())
}

/// Options of `depot bench logd` (against a running appliance).
#[derive(clap::Args, Debug)]
pub struct LogdBenchArgs {
    /// acked (durable acks), push (fire-and-forget, then checks nothing was lost), replay (reads
    /// a stream back over a plain SUB), replay-api (the same through the credit-based replay
    /// API), latency (ingest to live subscriber at a fixed rate).
    #[arg(long, value_parser = ["acked", "push", "replay", "replay-api", "latency"])]
    mode: String,
    /// Records in all.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Body bytes per record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Producer threads (acked, push).
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Records per message.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Stream to write or read (default: bench-<mode>).
    #[arg(long)]
    stream: Option<String>,
    /// Records per second (latency mode).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Send a frame per record instead of each batch as one packed frame (`packed=1`, the
    /// Rust client's default).
    #[arg(long)]
    frame_per_record: bool,
}

/// Runs one logd benchmark against the appliance at `endpoints` and prints its figures.
pub fn logd(
    endpoints: &depot_logd::LogdEndpoints,
    admin: &str,
    args: &LogdBenchArgs,
) -> anyhow::Result<()> {
    let stream = args
        .stream
        .clone()
        .unwrap_or_else(|| format!("bench-{}", args.mode));
    match args.mode.as_str() {
        "acked" => logd_acked(endpoints, &stream, args),
        "push" => logd_push(endpoints, admin, &stream, args),
        "replay" => logd_replay(endpoints, &stream, false),
        "replay-api" => logd_replay(endpoints, &stream, true),
        _ => logd_latency(endpoints, &stream, args),
    }
}

fn logd_acked(
    endpoints: &depot_logd::LogdEndpoints,
    stream: &str,
    args: &LogdBenchArgs,
) -> anyhow::Result<()> {
    const WINDOW: usize = 16;
    let per_producer = args.records / args.producers as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let (endpoint, stream) = (endpoints.acked.clone(), stream.to_string());
            let (size, batch, packed) = (args.size, args.batch, !args.frame_per_record);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let ctx = zmq::Context::new();
                let mut sender =
                    depot_logd::client::AckedSender::connect(&ctx, &endpoint)?.with_packed(packed);
                let pool = loadgen::lines(p as u64 + 1, size, batch * 4);
                let (mut sent, mut in_flight) = (0u64, 0usize);
                while sent < per_producer {
                    let n = (per_producer - sent).min(batch as u64) as usize;
                    let offset = (sent as usize / batch % 4) * batch;
                    let refs: Vec<&[u8]> =
                        pool[offset..offset + n].iter().map(Vec::as_slice).collect();
                    sender.send(&stream, 6, "bench", &refs)?;
                    sent += n as u64;
                    in_flight += 1;
                    if in_flight >= WINDOW {
                        sender
                            .recv_ack(std::time::Duration::from_secs(30))?
                            .result
                            .map_err(anyhow::Error::msg)?;
                        in_flight -= 1;
                    }
                }
                for _ in 0..in_flight {
                    sender
                        .recv_ack(std::time::Duration::from_secs(30))?
                        .result
                        .map_err(anyhow::Error::msg)?;
                }
                Ok(())
            })
        })
        .collect();
    join_producers(handles)?;
    let secs = started.elapsed().as_secs_f64();
    let total = per_producer * args.producers as u64;
    println!(
        "acked{}: {total} records of {} B, {} producers, {} per batch: {secs:.2} s, {:.0} records/s durable",
        if args.frame_per_record { " (a frame per record)" } else { " (packed)" },
        args.size,
        args.producers,
        args.batch,
        total as f64 / secs
    );
    Ok(())
}

fn stored_records(admin: &str, stream: &str) -> anyhow::Result<u64> {
    let report = crate::status::fetch(admin)?;
    Ok(report
        .streams
        .iter()
        .find(|s| s.name == stream)
        .map_or(0, |s| s.last_seq))
}

fn logd_push(
    endpoints: &depot_logd::LogdEndpoints,
    admin: &str,
    stream: &str,
    args: &LogdBenchArgs,
) -> anyhow::Result<()> {
    let before = stored_records(admin, stream)?;
    let per_producer = args.records / args.producers as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let (endpoint, stream) = (endpoints.pull.clone(), stream.to_string());
            let (size, batch, packed) = (args.size, args.batch, !args.frame_per_record);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let ctx = zmq::Context::new();
                let sender =
                    depot_logd::client::PushSender::connect(&ctx, &endpoint)?.with_packed(packed);
                let pool = loadgen::lines(p as u64 + 1, size, batch * 4);
                let mut sent = 0u64;
                while sent < per_producer {
                    let n = (per_producer - sent).min(batch as u64) as usize;
                    let offset = (sent as usize / batch % 4) * batch;
                    let refs: Vec<&[u8]> =
                        pool[offset..offset + n].iter().map(Vec::as_slice).collect();
                    sender.send(&stream, 6, "bench", &refs)?;
                    sent += n as u64;
                }
                Ok(())
            })
        })
        .collect();
    join_producers(handles)?;
    let sent_secs = started.elapsed().as_secs_f64();
    let total = per_producer * args.producers as u64;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = stored_records(admin, stream)? - before;
        if stored >= total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "push{}: {total} records of {} B, {} producers, {} per message: sent in {sent_secs:.2} s, all stored after {secs:.2} s: {:.0} records/s; stored {stored} of {total}",
        if args.frame_per_record { " (a frame per record)" } else { " (packed)" },
        args.size,
        args.producers,
        args.batch,
        total as f64 / secs
    );
    anyhow::ensure!(stored == total, "lost {} records", total - stored);
    Ok(())
}

fn logd_replay(
    endpoints: &depot_logd::LogdEndpoints,
    stream: &str,
    api: bool,
) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let started = Instant::now();
    let mut count = 0u64;
    let mut expected = None;
    let mut gaps = 0u64;
    let mut check = |r: depot_logd::client::Received| {
        if let Some(expected) = expected {
            if r.header.seq != expected {
                gaps += 1;
            }
        }
        expected = Some(r.header.seq + 1);
        count += 1;
        true
    };
    let timeout = std::time::Duration::from_secs(30);
    let last = if api {
        let query = depot_logd::client::ApiQuery {
            stream,
            start: "1",
            filter: "",
            window: 100_000,
        };
        depot_logd::client::replay_api(&ctx, &endpoints.replay_api, query, timeout, &mut check)?
    } else {
        depot_logd::client::replay(&ctx, &endpoints.replay, stream, "1", timeout, &mut check)?
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replay: {count} records of stream {stream} (last seq {last}) over {}: {secs:.2} s, {:.0} records/s, {gaps} gaps",
        if api { "the replay API" } else { "SUB" },
        count as f64 / secs
    );
    Ok(())
}

fn logd_latency(
    endpoints: &depot_logd::LogdEndpoints,
    stream: &str,
    args: &LogdBenchArgs,
) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let live = ctx.socket(zmq::SUB)?;
    depot_common::security::apply_process_client(&live)?;
    live.set_rcvhwm(1_000_000)?;
    live.connect(&endpoints.live)?;
    live.set_subscribe(format!("{stream} ").as_bytes())?;
    // Let the subscription reach the server before measuring.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let total = args.records.min(args.rate * 30);
    let (endpoint, stream_name, rate) = (endpoints.pull.clone(), stream.to_string(), args.rate);
    let producer = std::thread::spawn(move || -> anyhow::Result<()> {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PUSH)?;
        depot_common::security::apply_process_client(&socket)?;
        socket.set_linger(-1)?;
        socket.connect(&endpoint)?;
        // Bursts every millisecond, sleeping in between: a spinning producer would take the
        // core the appliance needs on this 2-core machine and measure scheduling instead.
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let due =
                (started.elapsed().as_nanos() as u64).saturating_mul(rate) / 1_000_000_000 + 1;
            while sent < due.min(total) {
                let body = depot_store::now_ns().to_be_bytes();
                socket.send_multipart([stream_name.as_bytes(), &body[..]], 0)?;
                sent += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    });
    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        if live.poll(zmq::POLLIN, 5_000)? == 0 {
            break;
        }
        let frames = live.recv_multipart(0)?;
        let now = depot_store::now_ns();
        if let Some(body) = frames.get(2).filter(|b| b.len() == 8) {
            let sent = u64::from_be_bytes(body[..8].try_into()?);
            latencies.push(now.saturating_sub(sent));
        }
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    println!(
        "latency: {} of {total} records at {} records/s, ingest to live subscriber: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        latencies.len(),
        args.rate,
        pick(0.5),
        pick(0.99),
        pick(0.999),
        pick(1.0)
    );
    Ok(())
}

/// Options of `depot bench cache` (against a running appliance).
#[derive(clap::Args, Debug)]
pub struct CacheBenchArgs {
    /// updates (KVSETs through the collector until all are published), snapshot (a joining
    /// client takes the whole state), latency (set on one peer, seen on another, at a rate).
    #[arg(long, value_parser = ["updates", "snapshot", "latency"])]
    mode: String,
    /// Updates to send (updates, latency) or keys to load first (snapshot).
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Value bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys the updates cycle through (updates mode; snapshot mode loads `--count`).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Updates per second (latency mode).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
}

/// Runs one cache benchmark against `server` and prints its figures.
pub fn cache(
    server: &depot_cache::client::ServerEndpoints,
    args: &CacheBenchArgs,
) -> anyhow::Result<()> {
    use depot_cache::client::CacheClient;
    use depot_cache::protocol::KvMsg;
    let ctx = zmq::Context::new();
    let timeout = std::time::Duration::from_secs(30);
    let value = vec![b'v'; args.size];
    match args.mode.as_str() {
        "updates" => {
            let secs = flood(&ctx, server, "/bench/u/", args.count, args.keys, &value)?;
            println!(
                "updates: {} KVSETs of {} B over {} keys applied, persisted (group commit) and published: {secs:.2} s, {:.0} updates/s",
                args.count,
                args.size,
                args.keys.min(args.count),
                args.count as f64 / secs
            );
        }
        "snapshot" => {
            let loaded = CacheClient::fetch(&ctx, server, b"/bench/s/", timeout)?;
            if (loaded.entries().count() as u64) < args.count {
                flood(&ctx, server, "/bench/s/", args.count, args.count, &value)?;
            }
            let started = Instant::now();
            let client = CacheClient::fetch(&ctx, server, b"/bench/s/", timeout)?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "snapshot: {} keys of {} B to a joining Rust client: {secs:.2} s ({:.0} keys/s)",
                client.entries().count(),
                args.size,
                client.entries().count() as f64 / secs
            );
        }
        _ => {
            let mut watcher = CacheClient::join(&ctx, server, b"/bench/l/", timeout)?;
            let collector = ctx.socket(zmq::PUB)?;
            depot_common::security::apply_process_client(&collector)?;
            collector.connect(&server.collector)?;
            watcher.set(b"/bench/l/warm", b"1", None, timeout)?;
            let total = args.count.min(args.rate * 30);
            let rate = args.rate.max(1);
            // The sender keeps its own schedule on its own thread: paced from the receiving
            // loop, sends would follow the bursts of publications (one per group commit) and
            // every update would wait a whole commit interval, which independent peers do not.
            // It hands its socket back, as in `flood`.
            let sender = std::thread::spawn(move || -> anyhow::Result<zmq::Socket> {
                let started = Instant::now();
                for sent in 0..total {
                    let due = std::time::Duration::from_nanos(sent * 1_000_000_000 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let body = depot_store::now_ns().to_be_bytes().to_vec();
                    collector.send_multipart(
                        KvMsg::new(format!("/bench/l/{}", sent % 1000), body).encode(),
                        0,
                    )?;
                }
                Ok(collector)
            });
            let started = Instant::now();
            let mut latencies = Vec::with_capacity(total as usize);
            while (latencies.len() as u64) < total {
                for update in watcher.poll(std::time::Duration::from_millis(10))? {
                    if let Ok(bytes) = <[u8; 8]>::try_from(update.body.as_slice()) {
                        latencies
                            .push(depot_store::now_ns().saturating_sub(u64::from_be_bytes(bytes)));
                    }
                }
                anyhow::ensure!(
                    started.elapsed() < std::time::Duration::from_secs(60),
                    "latency run took too long"
                );
            }
            let _collector = sender
                .join()
                .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
            latencies.sort_unstable();
            let pick = |q: f64| {
                latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64
                    / 1e6
            };
            println!(
                "latency: {total} sets at {} updates/s, set to seen on another peer: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                args.rate,
                pick(0.5),
                pick(0.99),
                pick(1.0)
            );
        }
    }
    Ok(())
}

/// Floods the collector with `count` KVSETs (keys `prefix` + 0..`keys`, each with its own uuid) from a sender thread while a plain SUB, as a CHP peer in any language would, reads the
/// publications and checks that their sequences are contiguous. Returns the seconds from the
/// first send to the last publication. The load tool shares the machine's cores with the
/// appliance, so it keeps its own cost low: reused buffers, no state kept per key.
fn flood(
    ctx: &zmq::Context,
    server: &depot_cache::client::ServerEndpoints,
    prefix: &str,
    count: u64,
    keys: u64,
    value: &[u8],
) -> anyhow::Result<f64> {
    use std::time::Duration;
    const SILENCE: Duration = Duration::from_secs(10);
    anyhow::ensure!(
        count > 0 && keys > 0,
        "--count and --keys must be at least 1"
    );
    let watcher = ctx.socket(zmq::SUB)?;
    depot_common::security::apply_process_client(&watcher)?;
    watcher.set_rcvhwm(0)?;
    watcher.set_subscribe(prefix.as_bytes())?;
    watcher.connect(&server.publisher)?;
    let collector = ctx.socket(zmq::PUB)?;
    depot_common::security::apply_process_client(&collector)?;
    collector.set_sndhwm(0)?;
    collector.connect(&server.collector)?;
    // A run id in every uuid: the server drops a uuid it has seen as a resend.
    let run = depot_store::now_ns();
    let uuid = move |n: u64| [run.to_be_bytes(), n.to_be_bytes()].concat();
    // Handshake: a PUB drops until its connection is up, so the first update is repeated (same
    // uuid) until the watcher sees it published; its sequence is where the flood's begin.
    let warm_key = format!("{prefix}warm");
    let warm_uuid = uuid(u64::MAX);
    let mut frames: Vec<zmq::Message> = (0..5).map(|_| zmq::Message::new()).collect();
    let recv_update = |frames: &mut Vec<zmq::Message>| -> anyhow::Result<Option<u64>> {
        for (i, frame) in frames.iter_mut().enumerate() {
            watcher.recv(frame, 0)?;
            if !frame.get_more() {
                anyhow::ensure!(i == 4, "a publication of {} frames, not 5", i + 1);
                break;
            }
        }
        if frames[0][..] == *depot_cache::protocol::HUGZ {
            return Ok(None);
        }
        Ok(<[u8; 8]>::try_from(&frames[1][..])
            .ok()
            .map(u64::from_be_bytes))
    };
    let deadline = Instant::now() + SILENCE;
    let mut seq = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the collector's updates are not published"
        );
        let empty: &[u8] = &[];
        collector.send_multipart([warm_key.as_bytes(), &[0; 8], &warm_uuid, empty, b"1"], 0)?;
        if watcher.poll(zmq::POLLIN, 100)? > 0 {
            if let Some(seq) = recv_update(&mut frames)? {
                if frames[0][..] == *warm_key.as_bytes() {
                    break seq;
                }
            }
        }
    };
    // Drain further copies of the warm-up update (each was published once, or dropped).
    while watcher.poll(zmq::POLLIN, 200)? > 0 {
        if let Some(next) = recv_update(&mut frames)? {
            seq = seq.max(next);
        }
    }
    let started = Instant::now();
    let sender = {
        let prefix = prefix.to_string();
        let value = value.to_vec();
        // The sender hands its socket back: closed when the thread ends, it went away with
        // thousands of KVSETs still queued (2 floods in 20 lost 15,000 of 1 M that way).
        std::thread::spawn(move || -> anyhow::Result<zmq::Socket> {
            let mut key = String::with_capacity(prefix.len() + 8);
            for n in 0..count {
                use std::fmt::Write;
                key.clear();
                key.push_str(&prefix);
                write!(key, "{}", n % keys)?;
                let empty: &[u8] = &[];
                collector.send_multipart([key.as_bytes(), &[0; 8], &uuid(n), empty, &value], 0)?;
            }
            Ok(collector)
        })
    };
    let mut seen = 0;
    while seen < count {
        anyhow::ensure!(
            watcher.poll(zmq::POLLIN, SILENCE.as_millis() as i64)? > 0,
            "saw {seen} of {count} updates published, then nothing for {SILENCE:?}"
        );
        let Some(next) = recv_update(&mut frames)? else {
            continue; // a HUGZ
        };
        anyhow::ensure!(
            next == seq + 1,
            "publications jumped from sequence {seq} to {next}: updates were lost"
        );
        seq = next;
        seen += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let _collector = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    Ok(secs)
}
