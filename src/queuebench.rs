//! `depot bench queue`: load against a running appliance's queue service.
//!
//! Modes: `confirms` (producer with confirms and a consumer with acks at the same time),
//! `swap` (everything queued first, then drained from disk), `push` (fire-and-forget
//! produce), `rss` (queue many messages with no consumer, report the appliance's memory).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use depot_queue::client::{Consumer, Producer, Pusher};
use depot_queue::QueueEndpoints;

/// Arguments of `depot bench queue`.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueBenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Confirms)]
    mode: Mode,
    /// Messages to send.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages per publish.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Publishes in flight before waiting for a confirm.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Consumer prefetch window.
    #[arg(long, default_value_t = 20_000)]
    prefetch: u32,
    /// Queue name (default: a fresh one per run).
    #[arg(long)]
    queue: Option<String>,
    /// Drain the queue after `rss` and check the order.
    #[arg(long)]
    drain: bool,
}

/// What `depot bench queue` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Confirms,
    Swap,
    Push,
    Rss,
}

const TIMEOUT: Duration = Duration::from_secs(60);

/// A message whose first 8 bytes are its index, padded to `size`.
fn body(i: u64, size: usize) -> Vec<u8> {
    let mut body = i.to_be_bytes().to_vec();
    body.resize(size.max(8), b'q');
    body
}

fn index_of(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(u64::MAX, u64::from_be_bytes)
}

/// Publishes `count` messages with confirms, `window` publishes in flight.
fn produce_confirmed(
    ctx: &zmq::Context,
    endpoint: &str,
    queue: &str,
    args: &QueueBenchArgs,
) -> anyhow::Result<Duration> {
    let mut producer = Producer::connect(ctx, endpoint)?;
    let started = Instant::now();
    let (mut sent, mut in_flight) = (0u64, 0usize);
    let confirm = |producer: &mut Producer| -> anyhow::Result<()> {
        let c = producer.recv_confirm(TIMEOUT)?;
        if let Err(reason) = c.result {
            bail!("publish refused: {reason}");
        }
        Ok(())
    };
    while sent < args.messages {
        let n = (args.messages - sent).min(args.batch as u64);
        let bodies: Vec<Vec<u8>> = (sent..sent + n).map(|i| body(i, args.size)).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        producer.publish(queue, &refs)?;
        sent += n;
        in_flight += 1;
        if in_flight >= args.window {
            confirm(&mut producer)?;
            in_flight -= 1;
        }
    }
    while in_flight > 0 {
        confirm(&mut producer)?;
        in_flight -= 1;
    }
    Ok(started.elapsed())
}

/// Consumes `count` messages, acking cumulatively, checking the order.
fn consume(
    ctx: &zmq::Context,
    endpoint: &str,
    queue: &str,
    args: &QueueBenchArgs,
) -> anyhow::Result<Duration> {
    let mut consumer = Consumer::subscribe(ctx, endpoint, queue, "", args.prefetch, TIMEOUT)?;
    let started = Instant::now();
    let ack_every = (args.prefetch as u64 / 4).max(1);
    let mut expected = 0u64;
    while expected < args.messages {
        let Some(d) = consumer.recv(TIMEOUT)? else {
            bail!("no message within {TIMEOUT:?} after {expected}");
        };
        let index = index_of(&d.payload);
        if index != expected {
            bail!("out of order: got message {index}, expected {expected}");
        }
        expected += 1;
        if expected.is_multiple_of(ack_every) || expected == args.messages {
            consumer.ack_through(d.seq)?;
        }
    }
    consumer.sync(TIMEOUT)?;
    let elapsed = started.elapsed();
    consumer.close()?;
    Ok(elapsed)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn memory_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Runs the benchmark against `endpoints`; `pid` is the appliance's, for the memory figures.
pub fn run(
    endpoints: &QueueEndpoints,
    pid: Option<u32>,
    args: &QueueBenchArgs,
) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("bench-{:?}-{}", args.mode, std::process::id()).to_lowercase());
    let router = endpoints.router.clone();
    println!(
        "queue {queue}: {} messages of {} bytes, mode {:?}",
        args.messages, args.size, args.mode
    );
    match args.mode {
        Mode::Confirms => {
            // The consumer subscribes first, so the queue stays under its HWM.
            let consumer = {
                let (ctx, router, queue) = (ctx.clone(), router.clone(), queue.clone());
                let args = args.clone();
                std::thread::spawn(move || consume(&ctx, &router, &queue, &args))
            };
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            let produced = produce_confirmed(&ctx, &router, &queue, args)?;
            let consumed = consumer
                .join()
                .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
            let total = started.elapsed();
            println!(
                "confirms: {:.0} msg/s published and confirmed ({produced:.2?})",
                rate(args.messages, produced)
            );
            println!(
                "end to end (confirms + acks, consumer subscribed): {:.0} msg/s ({total:.2?}; consumer {consumed:.2?})",
                rate(args.messages, total)
            );
        }
        Mode::Swap => {
            let produced = produce_confirmed(&ctx, &router, &queue, args)?;
            println!(
                "queued with confirms, no consumer: {:.0} msg/s ({produced:.2?})",
                rate(args.messages, produced)
            );
            if let Some(pid) = pid {
                let (rss, _) = memory_of(pid)?;
                println!("appliance RSS with the queue full: {} MB", rss / 1024);
            }
            let consumed = consume(&ctx, &router, &queue, args)?;
            println!(
                "drained from disk with acks: {:.0} msg/s ({consumed:.2?})",
                rate(args.messages, consumed)
            );
        }
        Mode::Push | Mode::Rss => {
            let mut pusher = Pusher::connect(&ctx, &endpoints.pull)?;
            let started = Instant::now();
            let mut sent = 0u64;
            let mut peak = 0u64;
            while sent < args.messages {
                let n = (args.messages - sent).min(args.batch as u64);
                let bodies: Vec<Vec<u8>> = (sent..sent + n).map(|i| body(i, args.size)).collect();
                let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
                pusher.send(&queue, &refs)?;
                sent += n;
                if args.mode == Mode::Rss && sent % 1_000_000 < args.batch as u64 {
                    if let Some(pid) = pid {
                        let (rss, _) = memory_of(pid)?;
                        peak = peak.max(rss);
                        println!("{sent} pushed, appliance RSS {} MB", rss / 1024);
                    }
                }
            }
            let send_time = started.elapsed();
            // Stored means counted by the service: wait until it has them all.
            loop {
                let stats = depot_queue::client::stats(&ctx, &router, Some(&queue), TIMEOUT)?;
                let last = stats.first().map_or(0, |q| q.last_seq);
                if last >= args.messages {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let stored = started.elapsed();
            println!(
                "fire-and-forget: {:.0} msg/s sent ({send_time:.2?}), {:.0} msg/s stored ({stored:.2?})",
                rate(args.messages, send_time),
                rate(args.messages, stored)
            );
            if let Some(pid) = pid {
                let (rss, hwm) = memory_of(pid)?;
                peak = peak.max(rss);
                println!(
                    "appliance RSS {} MB now, {} MB peak sampled, VmHWM {} MB",
                    rss / 1024,
                    peak / 1024,
                    hwm / 1024
                );
            }
            if args.drain {
                let consumed = consume(&ctx, &router, &queue, args)?;
                println!(
                    "drained in order with acks: {:.0} msg/s ({consumed:.2?})",
                    rate(args.messages, consumed)
                );
            }
        }
    }
    Ok(())
}
