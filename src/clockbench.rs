//! `depot bench clock`: tick lateness at a local subscriber (and the ticker thread's CPU), and
//! timer throughput with many timers pending (add rate, memory, firing rate), against a
//! running appliance.

use std::time::{Duration, Instant};

use anyhow::Context;
use depot_clock::protocol::{AddTimer, Firing, Reply, Request, Target, When};
use depot_clock::{sys, ClockEndpoints};

use crate::clockcmd::{TickStats, TickWatcher};

/// Options of `depot bench clock`.
#[derive(clap::Args, Debug)]
pub struct ClockBenchArgs {
    /// ticks (receive time minus scheduled time of one stream) or timers (COUNT timers
    /// pending, then all firing).
    #[arg(long, value_parser = ["ticks", "timers"])]
    mode: String,
    /// Tick stream to measure (ticks mode); the appliance must publish it.
    #[arg(long, default_value = "1ms")]
    period: String,
    /// How long to measure ticks.
    #[arg(long, default_value = "60s")]
    duration: String,
    /// Timers to add (timers mode).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Timers fire this long after the bench starts; adding must be done by then.
    #[arg(long, default_value = "60s")]
    fire_in: String,
    /// Busy-poll the subscriber socket instead of sleeping (ticks mode).
    #[arg(long)]
    spin: bool,
    /// ADD requests in flight.
    #[arg(long, default_value_t = 10_000)]
    window: u64,
}

/// Runs the benchmark against the clock at `endpoints` (`pid`: the appliance, for CPU and memory).
pub fn run(
    endpoints: &ClockEndpoints,
    pid: Option<u32>,
    args: &ClockBenchArgs,
) -> anyhow::Result<()> {
    let parse = |text: &str| depot_common::config::parse_duration(text).map_err(anyhow::Error::msg);
    match args.mode.as_str() {
        "ticks" => ticks(
            endpoints,
            pid,
            &args.period,
            parse(&args.duration)?,
            args.spin,
        ),
        _ => timers(endpoints, pid, args, parse(&args.fire_in)?),
    }
}

/// CPU seconds used so far by the appliance's thread named `name`.
fn thread_cpu_secs(pid: u32, name: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the parenthesised name; utime and stime are the 14th and 15th fields.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // USER_HZ is 100 on Linux.
        return Some((utime + stime) / 100.0);
    }
    None
}

/// A `/proc/<pid>/status` field in MiB (VmRSS, VmHWM).
fn memory_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn ticks(
    endpoints: &ClockEndpoints,
    pid: Option<u32>,
    period: &str,
    duration: Duration,
    spin: bool,
) -> anyhow::Result<()> {
    // A subscriber under SCHED_FIFO (its zmq I/O thread, created next, inherits it) measures
    // the appliance rather than this process's own wake-ups on a busy machine.
    let subscriber = match sys::set_realtime(10) {
        Ok(()) => "SCHED_FIFO subscriber",
        Err(_) => "normal-priority subscriber",
    };
    let watcher = TickWatcher::open(endpoints, period)?;
    // The first ticks arrive while the connection settles; they are not measured.
    for _ in 0..100 {
        watcher.next()?;
    }
    let cpu_before = pid.and_then(|pid| thread_cpu_secs(pid, "clock-ticker"));
    let started = Instant::now();
    let mut stats = TickStats::default();
    while started.elapsed() < duration {
        let tick = if spin {
            watcher.next_spinning()?
        } else {
            watcher.next()?
        };
        stats.add(&tick);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = pid.and_then(|pid| thread_cpu_secs(pid, "clock-ticker"));
    println!(
        "ticks: {} precision, {elapsed:.0} s, {subscriber}{}",
        watcher.precision.as_deref().unwrap_or("unknown"),
        if spin { ", busy-polling" } else { "" }
    );
    println!("{}", stats.summary(&watcher.topic, false));
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "ticker thread CPU: {:.1}% of a core",
            (after - before) / elapsed * 100.0
        );
    }
    Ok(())
}

fn timers(
    endpoints: &ClockEndpoints,
    pid: Option<u32>,
    args: &ClockBenchArgs,
    fire_in: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(!endpoints.timers.is_empty(), "the appliance runs no timers");
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER)?;
    depot_common::security::apply_process_client(&dealer)?;
    dealer.set_rcvhwm(0)?;
    dealer.set_sndhwm(0)?;
    dealer.connect(&endpoints.timers)?;
    let sub = ctx.socket(zmq::SUB)?;
    depot_common::security::apply_process_client(&sub)?;
    sub.set_rcvhwm(0)?;
    sub.set_subscribe(b"bench.timers")?;
    sub.connect(&endpoints.publisher)?;
    let timeout = Duration::from_secs(30);
    let add = |when: When, topic: &str| {
        Request::Add(AddTimer {
            when,
            every: None,
            count: None,
            target: Target::Topic(topic.into()),
            payload: vec![b'p'; 16],
        })
        .encode()
    };
    let recv = |socket: &zmq::Socket, wait: Duration| -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        if socket.poll(zmq::POLLIN, wait.as_millis() as i64)? == 0 {
            return Ok(None);
        }
        Ok(Some(socket.recv_multipart(0)?))
    };
    // Handshake: warm-up timers until one is seen, so the subscription is in place.
    let joined = (0..100).any(|_| {
        dealer
            .send_multipart(add(When::In(Duration::ZERO), "bench.timers.warm"), 0)
            .is_ok()
            && matches!(recv(&sub, Duration::from_millis(200)), Ok(Some(_)))
    });
    anyhow::ensure!(
        joined,
        "no warm-up firing arrived on {}",
        endpoints.publisher
    );
    while recv(&dealer, Duration::from_millis(200))?.is_some() {}
    while recv(&sub, Duration::from_millis(200))?.is_some() {}

    let rss_before = pid.and_then(|pid| memory_mib(pid, "VmRSS"));
    let fire_at = sys::wall_ns() + fire_in.as_nanos() as u64;
    let started = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < args.count {
        while sent < args.count && sent - acked < args.window {
            dealer.send_multipart(add(When::At(fire_at), "bench.timers"), 0)?;
            sent += 1;
        }
        let frames = recv(&dealer, timeout)?.context("no reply to ADD within 30 s")?;
        match Reply::decode(&frames)? {
            Reply::Added { .. } => acked += 1,
            Reply::Error(reason) => anyhow::bail!("ADD refused: {reason}"),
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }
    let add_secs = started.elapsed().as_secs_f64();
    let rss_pending = pid.and_then(|pid| memory_mib(pid, "VmRSS"));
    anyhow::ensure!(
        sys::wall_ns() < fire_at,
        "adding {} timers took {add_secs:.1} s, longer than --fire-in; raise it",
        args.count
    );
    println!(
        "add: {} timers stored durably in {add_secs:.2} s ({:.0} adds/s, {} in flight)",
        args.count,
        args.count as f64 / add_secs,
        args.window
    );
    if let (Some(before), Some(pending)) = (rss_before, rss_pending) {
        println!(
            "memory: appliance RSS {before:.0} MiB before, {pending:.0} MiB with {} timers pending (+{:.0} MiB)",
            args.count,
            pending - before
        );
    }
    let mut first = None;
    let mut last = Instant::now();
    let (mut fired, mut late) = (0u64, 0u64);
    let wait_first = fire_in + timeout;
    while fired < args.count {
        let wait = if first.is_none() {
            wait_first
        } else {
            Duration::from_secs(10)
        };
        let Some(frames) = recv(&sub, wait)? else {
            break;
        };
        let firing = Firing::decode(frames.get(1..).unwrap_or_default())?;
        last = Instant::now();
        first.get_or_insert(last);
        fired += 1;
        late += u64::from(firing.late);
    }
    let span = first.map_or(0.0, |first| last.duration_since(first).as_secs_f64());
    let lag_ms = (sys::wall_ns().saturating_sub(fire_at)) as f64 / 1e6;
    println!(
        "fire: {fired} of {} firings received in {span:.2} s ({:.0} firings/s), {late} marked late, last {lag_ms:.0} ms after the deadline",
        args.count,
        fired.saturating_sub(1) as f64 / span.max(1e-9)
    );
    if let Some(peak) = pid.and_then(|pid| memory_mib(pid, "VmHWM")) {
        println!("memory: appliance peak RSS {peak:.0} MiB");
    }
    anyhow::ensure!(
        fired == args.count,
        "{} firings missing",
        args.count - fired
    );
    Ok(())
}
