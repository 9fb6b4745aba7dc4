//! `depot clock watch` and `depot timer add|ls|cancel`: the command-line clock client.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use depot_clock::client::TimerClient;
use depot_clock::protocol::{self, AddTimer, Target, Tick, When};
use depot_clock::{schedule, sys, ClockEndpoints};

/// How long a timer request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `depot clock` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ClockCommand {
    /// Print the ticks of one stream as they arrive, with their lateness.
    Watch(WatchArgs),
}

/// Options of `depot clock watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Period of the stream, e.g. 1ms, 10ms, 1s.
    #[arg(long, default_value = "1s")]
    pub period: String,
    /// Stop after this many ticks.
    #[arg(long)]
    pub count: Option<u64>,
    /// Print lateness statistics once a second and at the end instead of every tick.
    #[arg(long)]
    pub stats: bool,
    /// Print JSON objects, one per line.
    #[arg(long)]
    pub json: bool,
}

/// `depot timer` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TimerCommand {
    /// Add a timer that publishes PAYLOAD on a topic of the clock PUB; prints its id.
    Add(AddArgs),
    /// List pending timers.
    Ls {
        /// Print JSON objects, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a timer by id.
    Cancel {
        /// The id `depot timer add` printed.
        id: u64,
    },
}

/// Options of `depot timer add`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["after", "at"])))]
pub struct AddArgs {
    /// Fire after this long, e.g. 30s, 5m.
    #[arg(long = "in", value_name = "DURATION")]
    pub after: Option<String>,
    /// Fire at this time: RFC 3339 (2026-11-24T23:00:00Z) or ns since the epoch.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Fire again every DURATION.
    #[arg(long, value_name = "DURATION")]
    pub every: Option<String>,
    /// Fire this many times in all (periodic timers).
    #[arg(long)]
    pub count: Option<u64>,
    /// Topic on the clock PUB.
    #[arg(long)]
    pub topic: String,
    /// Delivered with every firing.
    pub payload: String,
}

fn connect(endpoints: &ClockEndpoints) -> anyhow::Result<(zmq::Context, TimerClient)> {
    anyhow::ensure!(
        !endpoints.timers.is_empty(),
        "the appliance runs no timers ([clock] timers is empty)"
    );
    let ctx = zmq::Context::new();
    let client = TimerClient::connect(&ctx, &endpoints.timers, TIMEOUT)?;
    Ok((ctx, client))
}

/// Runs `depot timer ...` against the clock at `endpoints`.
pub fn timer(endpoints: &ClockEndpoints, command: &TimerCommand) -> anyhow::Result<()> {
    let (_ctx, mut client) = connect(endpoints)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        TimerCommand::Add(args) => {
            let parse =
                |text: &str| depot_common::config::parse_duration(text).map_err(anyhow::Error::msg);
            let when = match (&args.after, &args.at) {
                (Some(after), None) => When::In(parse(after)?),
                (None, Some(at)) => When::At(protocol::parse_time(at).map_err(anyhow::Error::msg)?),
                _ => anyhow::bail!("give one of --in and --at"),
            };
            let add = AddTimer {
                when,
                every: args.every.as_deref().map(parse).transpose()?,
                count: args.count,
                target: Target::Topic(args.topic.clone()),
                payload: args.payload.clone().into_bytes(),
            };
            let (id, due) = client.add(add).context("timer not added")?;
            writeln!(out, "{id}")?;
            eprintln!("timer {id} due {}", format_time(due));
        }
        TimerCommand::Ls { json } => {
            for timer in client.list()? {
                if *json {
                    let line = serde_json::json!({
                        "id": timer.id, "due_ns": timer.due_ns, "every_ns": timer.every_ns,
                        "remaining": timer.remaining, "fired": timer.fired,
                        "target": timer.target, "payload_bytes": timer.payload_bytes,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    let every = if timer.every_ns == 0 {
                        "once".to_string()
                    } else {
                        format!(
                            "every {}",
                            schedule::period_name(Duration::from_nanos(timer.every_ns))
                        )
                    };
                    writeln!(
                        out,
                        "{:>8}  {}  {every}  fired {}  {}  {} B",
                        timer.id,
                        format_time(timer.due_ns),
                        timer.fired,
                        timer.target,
                        timer.payload_bytes
                    )?;
                }
            }
        }
        TimerCommand::Cancel { id } => {
            client.cancel(*id).context("timer not cancelled")?;
            eprintln!("timer {id} cancelled");
        }
    }
    Ok(())
}

fn format_time(ns: u64) -> String {
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// A tick as received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Its sequence.
    pub seq: u64,
    /// Scheduled time, ns since the epoch.
    pub scheduled_ns: u64,
    /// Server's send time.
    pub sent_ns: u64,
    /// Local receive time.
    pub received_ns: u64,
}

/// Lateness statistics over received ticks.
#[derive(Debug, Default)]
pub struct TickStats {
    /// Receive time minus scheduled time, ns.
    pub received_late: Vec<i64>,
    /// Send time minus scheduled time, ns.
    pub sent_late: Vec<i64>,
    /// Sequences missing between received ticks.
    pub missing: u64,
    last_seq: Option<u64>,
}

impl TickStats {
    /// Takes one tick into account.
    pub fn add(&mut self, tick: &Received) {
        if let Some(last) = self.last_seq {
            self.missing += tick.seq.saturating_sub(last + 1);
        }
        self.last_seq = Some(tick.seq);
        self.received_late
            .push(tick.received_ns as i64 - tick.scheduled_ns as i64);
        self.sent_late
            .push(tick.sent_ns as i64 - tick.scheduled_ns as i64);
    }

    /// Quantile `q` of `values` in µs (sorting a copy).
    pub fn quantile_us(values: &[i64], q: f64) -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1e3
    }

    /// A one-line summary or JSON object.
    pub fn summary(&self, topic: &str, json: bool) -> String {
        let q = |values: &[i64], q| Self::quantile_us(values, q);
        let (r, s) = (&self.received_late, &self.sent_late);
        if json {
            serde_json::json!({
                "topic": topic, "ticks": r.len(), "missing": self.missing,
                "received_late_us": {"p50": q(r, 0.5), "p99": q(r, 0.99), "p999": q(r, 0.999), "max": q(r, 1.0)},
                "sent_late_us": {"p50": q(s, 0.5), "p99": q(s, 0.99), "p999": q(s, 0.999), "max": q(s, 1.0)},
            })
            .to_string()
        } else {
            format!(
                "{topic}: {} ticks, {} missing; received - scheduled: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us; sent - scheduled: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
                r.len(),
                self.missing,
                q(r, 0.5),
                q(r, 0.99),
                q(r, 0.999),
                q(r, 1.0),
                q(s, 0.5),
                q(s, 0.99),
                q(s, 1.0)
            )
        }
    }
}

/// A subscriber to one tick stream.
pub struct TickWatcher {
    _ctx: zmq::Context,
    socket: zmq::Socket,
    /// `tick.<period>`.
    pub topic: String,
    /// Precision the appliance reports for the stream, when it could be asked.
    pub precision: Option<String>,
    silence: Duration,
}

impl TickWatcher {
    /// Checks that the stream exists (when the timers endpoint answers STREAMS) and subscribes.
    pub fn open(endpoints: &ClockEndpoints, period: &str) -> anyhow::Result<TickWatcher> {
        let period = depot_common::config::parse_duration(period).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!period.is_zero(), "the period must be above zero");
        let topic = schedule::topic(period);
        let ctx = zmq::Context::new();
        let mut precision = None;
        if !endpoints.timers.is_empty() {
            let mut client = TimerClient::connect(&ctx, &endpoints.timers, Duration::from_secs(3))?;
            if let Ok(streams) = client.streams() {
                let Some(stream) = streams.iter().find(|s| s.topic == topic) else {
                    let names: Vec<_> = streams.iter().map(|s| s.topic.as_str()).collect();
                    anyhow::bail!(
                        "the appliance publishes no {topic}; its tick streams: {} (add a [[clock.ticks]] period = \"{}\")",
                        if names.is_empty() { "none".to_string() } else { names.join(", ") },
                        schedule::period_name(period)
                    );
                };
                precision = Some(stream.precision.clone());
            }
        }
        let socket = ctx.socket(zmq::SUB)?;
        depot_common::security::apply_process_client(&socket)?;
        socket.set_linger(0)?;
        socket.set_rcvhwm(0)?;
        socket.set_subscribe(topic.as_bytes())?;
        socket
            .connect(&endpoints.publisher)
            .with_context(|| format!("connecting to {}", endpoints.publisher))?;
        Ok(TickWatcher {
            _ctx: ctx,
            socket,
            topic,
            precision,
            silence: (period * 3).max(Duration::from_secs(5)),
        })
    }

    /// The next tick of the stream (other topics sharing the prefix are passed over).
    pub fn next(&self) -> anyhow::Result<Received> {
        self.receive(false)
    }

    /// Like [`TickWatcher::next`], busy-polling instead of sleeping in the kernel (a
    /// benchmark's way to leave its own wake-up out of the measurement).
    pub fn next_spinning(&self) -> anyhow::Result<Received> {
        self.receive(true)
    }

    fn receive(&self, spin: bool) -> anyhow::Result<Received> {
        let deadline = Instant::now() + self.silence;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = if spin { 0 } else { left.as_millis() as i64 };
            if self.socket.poll(zmq::POLLIN, timeout)? == 0 {
                anyhow::ensure!(
                    !left.is_zero(),
                    "no {} tick within {:?}",
                    self.topic,
                    self.silence
                );
                continue;
            }
            let frames = self.socket.recv_multipart(0)?;
            let received_ns = sys::wall_ns();
            let tick = Tick::decode(&frames).context("malformed tick")?;
            if tick.topic != self.topic {
                continue;
            }
            return Ok(Received {
                seq: tick.seq,
                scheduled_ns: tick.scheduled_ns,
                sent_ns: tick.sent_ns,
                received_ns,
            });
        }
    }
}

/// Runs `depot clock watch`.
pub fn watch(endpoints: &ClockEndpoints, args: &WatchArgs) -> anyhow::Result<()> {
    let watcher = TickWatcher::open(endpoints, &args.period)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut total = TickStats::default();
    let mut second = TickStats::default();
    let mut last_report = Instant::now();
    let mut seen = 0u64;
    while args.count.is_none_or(|count| seen < count) {
        let tick = watcher.next()?;
        seen += 1;
        total.add(&tick);
        if args.stats {
            second.add(&tick);
            if last_report.elapsed() >= Duration::from_secs(1) {
                writeln!(out, "{}", second.summary(&watcher.topic, args.json))?;
                out.flush()?;
                second = TickStats::default();
                last_report = Instant::now();
            }
        } else if args.json {
            let line = serde_json::json!({
                "topic": watcher.topic, "seq": tick.seq, "scheduled_ns": tick.scheduled_ns,
                "sent_ns": tick.sent_ns, "received_ns": tick.received_ns,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{} #{} {} sent +{:.1} us received +{:.1} us",
                watcher.topic,
                tick.seq,
                format_time(tick.scheduled_ns),
                (tick.sent_ns as i64 - tick.scheduled_ns as i64) as f64 / 1e3,
                (tick.received_ns as i64 - tick.scheduled_ns as i64) as f64 / 1e3
            )?;
        }
    }
    if args.stats {
        writeln!(out, "{}", total.summary(&watcher.topic, args.json))?;
    }
    Ok(())
}
