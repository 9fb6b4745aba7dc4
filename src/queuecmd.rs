//! `depot queue ...`: publish, consume and inspect queues from the command line.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use depot_queue::client::{Consumer, Producer};
use depot_queue::QueueEndpoints;

/// `depot queue` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Publish MESSAGE (or each line on stdin) to QUEUE; exits 0 once every one is durable.
    Push {
        /// The queue.
        queue: String,
        /// The message; without it, every line on stdin is one message.
        message: Option<String>,
    },
    /// Take up to --count messages from QUEUE, print them, and acknowledge what was printed.
    Pop {
        /// The queue.
        queue: String,
        /// Most messages to take.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// A named subscription (durable position) instead of the queue's work queue.
        #[arg(long)]
        name: Option<String>,
        /// How long to wait for the next message before stopping, e.g. 500ms, 5s.
        #[arg(long, default_value = "1s")]
        wait: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Depth, memory, disk bytes, consumers and rates of QUEUE (default: every queue).
    Stats {
        /// The queue.
        queue: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

const TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of stdin sent per publish.
const PUSH_BATCH: usize = 1_000;
/// Publishes in flight before waiting for a confirm.
const PUSH_WINDOW: usize = 16;

/// Runs a `depot queue` subcommand against the service at `endpoints`.
pub fn run(endpoints: &QueueEndpoints, command: &QueueCommand) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    match command {
        QueueCommand::Push { queue, message } => push(&ctx, &endpoints.router, queue, message),
        QueueCommand::Pop {
            queue,
            count,
            name,
            wait,
            json,
        } => {
            let wait = depot_common::config::parse_duration(wait).map_err(anyhow::Error::msg)?;
            let group = name.as_deref().unwrap_or("");
            pop(&ctx, &endpoints.router, queue, group, *count, wait, *json)
        }
        QueueCommand::Stats { queue, json } => stats(&ctx, &endpoints.router, queue, *json),
    }
}

fn push(
    ctx: &zmq::Context,
    endpoint: &str,
    queue: &str,
    message: &Option<String>,
) -> anyhow::Result<()> {
    let mut producer = Producer::connect(ctx, endpoint)?;
    let mut in_flight = 0usize;
    let mut confirmed = 0u64;
    let await_one = |producer: &mut Producer| -> anyhow::Result<u64> {
        let confirm = producer
            .recv_confirm(TIMEOUT)
            .with_context(|| format!("waiting for confirms from {endpoint}"))?;
        match confirm.result {
            Ok((first, last)) => Ok(last - first + 1),
            Err(reason) => bail!("queue {queue} refused messages: {reason}"),
        }
    };
    if let Some(message) = message {
        producer.publish(queue, &[message.as_bytes()])?;
        confirmed += await_one(&mut producer)?;
    } else {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            let mut batch = Vec::with_capacity(PUSH_BATCH);
            for line in lines.by_ref().take(PUSH_BATCH) {
                batch.push(line.context("reading stdin")?);
            }
            if batch.is_empty() {
                break;
            }
            let refs: Vec<&[u8]> = batch.iter().map(String::as_bytes).collect();
            producer.publish(queue, &refs)?;
            in_flight += 1;
            if in_flight >= PUSH_WINDOW {
                confirmed += await_one(&mut producer)?;
                in_flight -= 1;
            }
        }
        while in_flight > 0 {
            confirmed += await_one(&mut producer)?;
            in_flight -= 1;
        }
    }
    eprintln!("{confirmed} message(s) durable in queue {queue}");
    Ok(())
}

fn pop(
    ctx: &zmq::Context,
    endpoint: &str,
    queue: &str,
    group: &str,
    count: u32,
    wait: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let mut consumer = Consumer::subscribe(ctx, endpoint, queue, group, count, TIMEOUT)
        .with_context(|| format!("subscribing to queue {queue} at {endpoint}"))?;
    let mut printed = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while printed.len() < count as usize {
        let Some(delivery) = consumer.recv(wait)? else {
            break;
        };
        let text = String::from_utf8_lossy(&delivery.payload);
        if json {
            let line = serde_json::json!({
                "queue": queue,
                "seq": delivery.seq,
                "redeliveries": delivery.redeliveries,
                "message": text,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        printed.push(delivery.seq);
    }
    out.flush()?;
    // No more deliveries, then the acks, then leave; the round trip makes sure all arrived.
    consumer.set_prefetch(0)?;
    if !printed.is_empty() {
        consumer.ack(&printed)?;
    }
    consumer.sync(TIMEOUT).context("confirming the acks")?;
    if let Some(error) = consumer.errors.first() {
        bail!("the queue refused an ack: {error}");
    }
    consumer.close()?;
    Ok(())
}

fn stats(
    ctx: &zmq::Context,
    endpoint: &str,
    queue: &Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let stats = depot_queue::client::stats(ctx, endpoint, queue.as_deref(), TIMEOUT)
        .with_context(|| format!("asking {endpoint}"))?;
    if let Some(name) = queue {
        if stats.is_empty() {
            bail!("no queue {name}");
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>12} {:>12} {:>9} {:>10} {:>10} {:>10}",
        "QUEUE",
        "DEPTH",
        "IN MEMORY",
        "MEM BYTES",
        "DISK BYTES",
        "CONSUMERS",
        "PUB/S",
        "DELIVER/S",
        "ACK/S"
    )?;
    for q in &stats {
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>12} {:>12} {:>9} {:>10.0} {:>10.0} {:>10.0}",
            q.name,
            q.depth,
            q.in_memory,
            q.in_memory_bytes,
            q.on_disk_bytes,
            q.consumers,
            q.publish_rate,
            q.deliver_rate,
            q.ack_rate
        )?;
        for g in q.groups.iter().filter(|g| !g.name.is_empty()) {
            writeln!(
                out,
                "  subscription {:<11} {:>10} pending, {} in flight, {} consumer(s)",
                g.name, g.pending, g.in_flight, g.consumers
            )?;
        }
    }
    Ok(())
}
