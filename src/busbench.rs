//! `depot bench bus`: throughput and loss of a multicast bus, measured by a subscriber that
//! joins the group and checks every sequence.
//!
//! Modes: `depot` pushes records into the running appliance's logd and receives them from the
//! bus that carries them; `raw` measures libzmq EPGM alone (an XPUB and a SUB in this process);
//! `receive` only receives (the producer runs elsewhere, e.g. in another network namespace).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use depot_common::loadgen;
use depot_multicast::config::BusConfig;
use depot_multicast::gaps::GapTracker;

/// Options of `depot bench bus`.
#[derive(clap::Args, Debug)]
pub struct BusBenchArgs {
    /// depot (records through logd and the bus), raw (libzmq EPGM alone), receive (only join
    /// the group and count), send (only push the records into logd, paced by --rate).
    #[arg(long, value_parser = ["depot", "raw", "receive", "send"], default_value = "depot")]
    mode: String,
    /// Bus name (from the configuration or the running appliance), or an endpoint
    /// `epgm://IP;GROUP:PORT` (needed for raw).
    #[arg(long)]
    bus: String,
    /// Records (messages) in all.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Body bytes per record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Records per message pushed into logd (packed).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Stream the records go to (the bus must carry it).
    #[arg(long, default_value = "bench.bus")]
    stream: String,
    /// Sending rate limit of the raw sender, kbit/s.
    #[arg(long, default_value_t = 1_000_000)]
    rate_kbps: u32,
    /// Recovery interval of the raw sender, ms.
    #[arg(long, default_value_t = 2_000)]
    recovery_ms: u32,
    /// Largest PGM packet of the bench's own sockets (the raw sender, the receiver), bytes.
    #[arg(long, default_value_t = 1500)]
    max_tpdu: u32,
    /// Depot mode: offered load in records/s (0: as fast as logd takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Raw mode: send logd live frames (`[topic][header][body]`, what a bus carries) instead of
    /// one frame per message.
    #[arg(long)]
    live_frames: bool,
    /// The receiver gives up after this long without a record.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

/// What the subscriber saw.
struct Received {
    records: u64,
    gaps: u64,
    missing: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn bus_config(name: &str, endpoint: String, args: &BusBenchArgs) -> BusConfig {
    BusConfig {
        rate_kbps: args.rate_kbps,
        recovery_ms: args.recovery_ms,
        max_tpdu: args.max_tpdu,
        ..BusConfig::receiver(name, endpoint)
    }
}

/// Joins the group and counts records of `stream` (sequence from the live header, or the first
/// 8 bytes of a raw message) until `expected` arrive or nothing comes for `idle`. Sets `warm`
/// at the first warm-up message (another stream under the prefix, or raw sequence 0).
fn receive(
    bus: BusConfig,
    stream: String,
    raw: bool,
    expected: u64,
    idle: Duration,
    warm: Arc<AtomicBool>,
    first_timeout: Duration,
) -> anyhow::Result<Received> {
    let ctx = zmq::Context::new();
    let prefix = if raw {
        Vec::new()
    } else {
        stream.as_bytes().to_vec()
    };
    let socket = depot_multicast::open::receiver(&ctx, &bus, &[&prefix])?;
    let mut gaps = GapTracker::new();
    let mut got = Received {
        records: 0,
        gaps: 0,
        missing: 0,
        first: None,
        last: None,
    };
    let mut frames: Vec<zmq::Message> = (0..3).map(|_| zmq::Message::new()).collect();
    while got.records < expected {
        let wait = if got.first.is_none() {
            first_timeout
        } else {
            idle
        };
        if socket.poll(zmq::POLLIN, wait.as_millis() as i64)? == 0 {
            break;
        }
        loop {
            let mut n = 0;
            let mut more = true;
            while more {
                if n == frames.len() {
                    frames.push(zmq::Message::new());
                }
                let flags = if n == 0 { zmq::DONTWAIT } else { 0 };
                match socket.recv(&mut frames[n], flags) {
                    Ok(()) => {}
                    Err(zmq::Error::EAGAIN) if n == 0 => break,
                    Err(e) => return Err(e.into()),
                }
                more = frames[n].get_more();
                n += 1;
            }
            if n == 0 {
                break;
            }
            let range = if raw {
                (n == 1 && frames[0].len() >= 8)
                    .then(|| u64::from_be_bytes(frames[0][..8].try_into().unwrap_or_default()))
                    .filter(|&seq| seq > 0)
                    .map(|seq| (seq, seq))
            } else if let Some(key) = &bus.key {
                // A sealed bus: a message that does not open is not a record.
                let Ok(rest) = key.open(&frames[..n]) else {
                    continue;
                };
                let opened: Vec<&[u8]> = std::iter::once(&frames[0][..])
                    .chain(rest.iter().map(Vec::as_slice))
                    .collect();
                depot_multicast::frames::sequence(&opened)
                    .filter(|(s, _, _)| *s == stream.as_bytes())
                    .map(|(_, first, last)| (first, last))
            } else {
                depot_multicast::frames::sequence(&frames[..n])
                    .filter(|(s, _, _)| *s == stream.as_bytes())
                    .map(|(_, first, last)| (first, last))
            };
            let Some((first, last)) = range else {
                warm.store(true, Ordering::Release);
                continue;
            };
            let observed = gaps.observe_range(stream.as_bytes(), first, last);
            if observed.missing > 0 {
                got.gaps += 1;
                got.missing += observed.missing;
            }
            let now = Instant::now();
            got.first.get_or_insert(now);
            got.last = Some(now);
            got.records += last - first + 1;
            if got.records >= expected {
                break;
            }
        }
    }
    Ok(got)
}

fn report(label: &str, args: &BusBenchArgs, got: &Received, started: Option<Instant>) {
    let span = match (got.first, got.last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let rate = if span > 0.0 {
        got.records as f64 / span
    } else {
        0.0
    };
    let end_to_end = match (started, got.last) {
        (Some(start), Some(last)) => format!(
            "; {:.0} records/s from the first send",
            got.records as f64 / last.duration_since(start).as_secs_f64()
        ),
        _ => String::new(),
    };
    println!(
        "{label}: {} of {} records of {} B received in {span:.2} s: {rate:.0} records/s{end_to_end}; gaps {} ({} missing)",
        got.records, args.records, args.size, got.gaps, got.missing
    );
}

/// Runs `depot bench bus`. `multicast` is the configuration's `[multicast]`, `logd` the running
/// appliance's endpoints (depot mode).
pub fn run(
    args: &BusBenchArgs,
    multicast: &depot_multicast::MulticastConfig,
    logd: &depot_logd::LogdEndpoints,
) -> anyhow::Result<()> {
    let (endpoint, key_file) = if args.bus.starts_with("epgm://") || args.bus.starts_with("pgm://")
    {
        (args.bus.clone(), None)
    } else {
        multicast
            .bus
            .iter()
            .find(|b| b.name == args.bus)
            .map(|b| (b.endpoint.clone(), b.key_file.clone()))
            .with_context(|| format!("no bus {:?} in the configuration", args.bus))?
    };
    let mut bus = bus_config(&args.bus, endpoint.clone(), args);
    // Raw mode measures libzmq alone: nothing is sealed.
    if let Some(path) = key_file.filter(|_| args.mode != "raw") {
        let key = depot_multicast::seal::BusKey::load(&path)
            .with_context(|| format!("bus {}: key_file", args.bus))?;
        bus.key = Some(key);
    }
    if args.mode == "send" {
        // The subscribers are elsewhere (libzmq's PGM sender does not loop multicast back to
        // its own host except on lo).
        let ctx = zmq::Context::new();
        let sender = depot_logd::client::PushSender::connect(&ctx, &logd.pull)?.with_packed(true);
        let started = Instant::now();
        send_depot(&sender, args)?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "pushed {} records of {} B into logd in {secs:.2} s: {:.0} records/s",
            args.records,
            args.size,
            args.records as f64 / secs
        );
        return Ok(());
    }
    // How the receiver reads sequences: the first 8 bytes of single-frame raw messages, else
    // the live header.
    let raw = args.mode == "raw" && !args.live_frames;
    let warm = Arc::new(AtomicBool::new(false));
    let receiver = {
        let warm = warm.clone();
        let (bus, stream, expected) = (bus.clone(), args.stream.clone(), args.records);
        let idle = Duration::from_secs(args.idle_secs);
        let first_timeout = if args.mode == "receive" {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(30)
        };
        std::thread::spawn(move || receive(bus, stream, raw, expected, idle, warm, first_timeout))
    };
    // The sender stays open until the receiver is done: libzmq's PGM sender does not drain its
    // queue when closed, lingering or not.
    let ctx = zmq::Context::new();
    let mut raw_sender = None;
    let started = match args.mode.as_str() {
        "raw" => {
            let sender = raw_sender.insert(depot_multicast::open::sender(&ctx, &bus)?);
            // The group join is asynchronous on both sides: warm up until one arrives.
            let warm_stream = format!("{}.warm", args.stream);
            warm_up(&warm, || {
                if args.live_frames {
                    let header = depot_logd::protocol::encode_header(1, 0, 6, &warm_stream, "");
                    let topic = depot_logd::protocol::live_topic(&warm_stream, 6);
                    Ok(sender.send_multipart([&topic[..], &header, b"warm"], 0)?)
                } else {
                    Ok(sender.send(&0u64.to_be_bytes()[..], 0)?)
                }
            })?;
            let started = Instant::now();
            send_raw(sender, args)?;
            started
        }
        "depot" => {
            let sender =
                depot_logd::client::PushSender::connect(&ctx, &logd.pull)?.with_packed(true);
            let warm_stream = format!("{}.warm", args.stream);
            warm_up(&warm, || {
                Ok(sender.send(&warm_stream, 6, "bench", &[b"warm"])?)
            })?;
            let started = Instant::now();
            send_depot(&sender, args)?;
            started
        }
        _ => Instant::now(),
    };
    let sent_secs = started.elapsed().as_secs_f64();
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    drop(raw_sender);
    if args.mode != "receive" {
        println!(
            "sent {} records in {sent_secs:.2} s: {:.0} records/s",
            args.records,
            args.records as f64 / sent_secs
        );
    }
    let label = format!("{} {endpoint}", args.mode);
    report(
        &label,
        args,
        &got,
        (args.mode != "receive").then_some(started),
    );
    if got.records < args.records || got.missing > 0 {
        bail!(
            "lost {} records ({} gaps)",
            args.records - got.records.min(args.records),
            got.gaps
        );
    }
    Ok(())
}

/// Sends warm-up messages every 50 ms until the receiver saw one (at most 20 s).
fn warm_up(warm: &AtomicBool, mut send: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !warm.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            bail!("no warm-up message came over the bus within 20 s");
        }
        send()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// libzmq EPGM alone: an XPUB with NODROP (as Depot's bridge sends) at the given rate.
fn send_raw(sender: &zmq::Socket, args: &BusBenchArgs) -> anyhow::Result<()> {
    if args.live_frames {
        let topic = depot_logd::protocol::live_topic(&args.stream, 6);
        let body = vec![b'x'; args.size];
        for seq in 1..=args.records {
            let header = depot_logd::protocol::encode_header(seq, 0, 6, &args.stream, "bench");
            sender.send(&topic[..], zmq::SNDMORE)?;
            sender.send(header, zmq::SNDMORE)?;
            sender.send(&body[..], 0)?;
        }
        return Ok(());
    }
    let mut body = vec![b'x'; args.size.max(8)];
    for seq in 1..=args.records {
        body[..8].copy_from_slice(&seq.to_be_bytes());
        sender.send(&body[..], 0)?;
    }
    Ok(())
}

/// Records pushed into logd (packed batches); the bus carries them from the live XPUB.
fn send_depot(sender: &depot_logd::client::PushSender, args: &BusBenchArgs) -> anyhow::Result<()> {
    let pool = loadgen::lines(1, args.size, args.batch * 4);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.records {
        if args.rate > 0 {
            // Paced to absolute deadlines, a batch at a time.
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let n = (args.records - sent).min(args.batch as u64) as usize;
        let offset = (sent as usize / args.batch % 4) * args.batch;
        let refs: Vec<&[u8]> = pool[offset..offset + n].iter().map(Vec::as_slice).collect();
        sender.send(&args.stream, 6, "bench", &refs)?;
        sent += n as u64;
    }
    Ok(())
}
