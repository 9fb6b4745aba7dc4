//! `depot log ...`: send records, tail and replay streams, list streams.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use depot_logd::client::{AckedSender, PrefixSubscription, Received, Subscription};
use depot_logd::protocol;

/// Where the running appliance's log service listens.
pub struct Endpoints {
    /// Acked ROUTER.
    pub acked: String,
    /// Live XPUB.
    pub live: String,
    /// Replay XPUB.
    pub replay: String,
    /// Replay API ROUTER.
    pub replay_api: String,
    /// Admin HTTP, for the stream list.
    pub admin: String,
}

/// Options of `depot log send`.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Stream to append to.
    #[arg(long, short)]
    stream: String,
    /// Level: a name (info, warn, error, ...) or a syslog number 0-7.
    #[arg(long, short, default_value = "info")]
    level: String,
    /// Source recorded with each record (default: this host's name).
    #[arg(long)]
    source: Option<String>,
    /// The message; without it, each line of standard input is one record.
    message: Vec<String>,
}

/// Options of `depot log tail`.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Keep following new records.
    #[arg(long, short)]
    follow: bool,
    /// Only this stream (default: every stream).
    #[arg(long, short)]
    stream: Option<String>,
    /// Start this long ago, e.g. 10m, 2h.
    #[arg(long, conflicts_with = "from")]
    since: Option<String>,
    /// Start at this sequence.
    #[arg(long)]
    from: Option<u64>,
    /// Only records at this level or more severe.
    #[arg(long, short)]
    level: Option<String>,
    /// Only records whose body contains this text.
    #[arg(long)]
    grep: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);
/// Lines per acked batch when reading standard input.
const LINES_PER_BATCH: usize = 1_000;
/// Batches in flight before waiting for acks.
const WINDOW: usize = 8;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `depot log send`: exits successfully only once every record is durable.
pub fn send(endpoints: &Endpoints, args: &SendArgs) -> anyhow::Result<()> {
    protocol::check_stream(args.stream.as_bytes())?;
    let level = protocol::parse_level(args.level.as_bytes())
        .with_context(|| format!("unknown level {:?}", args.level))?;
    let source = args.source.clone().unwrap_or_else(hostname);
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect(&ctx, &endpoints.acked)?;
    let mut in_flight = 0usize;
    let (mut sent, mut first, mut last) = (0u64, None, 0u64);
    let wait_one =
        |sender: &mut AckedSender, first: &mut Option<u64>, last: &mut u64| -> anyhow::Result<()> {
            let ack = sender
                .recv_ack(TIMEOUT)
                .with_context(|| format!("waiting for the appliance at {}", endpoints.acked))?;
            let (a, b) = ack
                .result
                .map_err(|reason| anyhow::anyhow!("the appliance refused a batch: {reason}"))?;
            first.get_or_insert(a);
            *last = b;
            Ok(())
        };
    if !args.message.is_empty() {
        let message = args.message.join(" ");
        sender.send(&args.stream, level, &source, &[message.as_bytes()])?;
        wait_one(&mut sender, &mut first, &mut last)?;
        sent = 1;
    } else {
        let stdin = std::io::stdin().lock();
        let mut lines = stdin.lines();
        loop {
            let batch: Vec<String> = lines
                .by_ref()
                .take(LINES_PER_BATCH)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            let bodies: Vec<&[u8]> = batch.iter().map(|l| l.as_bytes()).collect();
            sender.send(&args.stream, level, &source, &bodies)?;
            sent += batch.len() as u64;
            in_flight += 1;
            if in_flight >= WINDOW {
                wait_one(&mut sender, &mut first, &mut last)?;
                in_flight -= 1;
            }
        }
        while in_flight > 0 {
            wait_one(&mut sender, &mut first, &mut last)?;
            in_flight -= 1;
        }
    }
    match first {
        Some(first) => eprintln!(
            "{sent} record(s) durable in {} (seq {first}..={last})",
            args.stream
        ),
        None => eprintln!("nothing to send"),
    }
    Ok(())
}

fn format_ts(ts_ns: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(ts_ns);
    humantime::format_rfc3339_millis(time).to_string()
}

struct Filter {
    max_level: u8,
    grep: Option<String>,
    json: bool,
}

impl Filter {
    fn print(&self, out: &mut impl Write, record: &Received) -> std::io::Result<()> {
        if record.header.level > self.max_level {
            return Ok(());
        }
        let body = String::from_utf8_lossy(&record.body);
        if let Some(text) = &self.grep {
            if !body.contains(text.as_str()) {
                return Ok(());
            }
        }
        let h = &record.header;
        if self.json {
            let line = serde_json::json!({
                "stream": h.stream,
                "seq": h.seq,
                "ts": format_ts(h.ts_ns),
                "ts_ns": h.ts_ns,
                "level": protocol::level_name(h.level),
                "source": h.source,
                "body": body,
            });
            writeln!(out, "{line}")
        } else {
            writeln!(
                out,
                "{} {:<6} {}#{} {}: {}",
                format_ts(h.ts_ns),
                protocol::level_name(h.level),
                h.stream,
                h.seq,
                h.source,
                body.trim_end_matches('\n')
            )
        }
    }
}

/// `depot log tail`.
pub fn tail(endpoints: &Endpoints, args: &TailArgs) -> anyhow::Result<()> {
    let filter = Filter {
        max_level: match &args.level {
            Some(level) => protocol::parse_level(level.as_bytes())
                .with_context(|| format!("unknown level {level:?}"))?,
            None => 7,
        },
        grep: args.grep.clone(),
        json: args.json,
    };
    let start = match (&args.since, args.from) {
        (Some(since), _) => {
            let age = depot_common::config::parse_duration(since).map_err(anyhow::Error::msg)?;
            format!("-{}s", age.as_secs())
        }
        (None, Some(from)) => from.to_string(),
        (None, None) if args.follow => "-0s".to_string(),
        (None, None) => "1".to_string(),
    };
    let report = match &args.stream {
        Some(_) if !std::io::IsTerminal::is_terminal(&std::io::stderr()) => None,
        _ => Some(crate::status::fetch(&endpoints.admin)?),
    };
    let streams = match (&args.stream, &report) {
        (Some(stream), _) => vec![stream.clone()],
        (None, Some(report)) => report.streams.iter().map(|s| s.name.clone()).collect(),
        (None, None) => Vec::new(),
    };
    let ctx = zmq::Context::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !args.follow {
        for stream in &streams {
            // A progress bar on a terminal, sized once the first record says where we start.
            let last_seq = report
                .as_ref()
                .and_then(|r| r.streams.iter().find(|s| &s.name == stream))
                .map(|s| s.last_seq);
            let bar = match last_seq {
                Some(_) if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Some(
                    indicatif::ProgressBar::new(0)
                        .with_style(
                            indicatif::ProgressStyle::with_template(
                                "{prefix} [{bar:30}] {human_pos}/{human_len} records, {eta} left",
                            )
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        )
                        .with_prefix(stream.clone())
                        .with_finish(indicatif::ProgressFinish::AndClear),
                ),
                _ => None,
            };
            let mut failed = None;
            depot_logd::client::replay(
                &ctx,
                &endpoints.replay,
                stream,
                &start,
                TIMEOUT,
                |record| {
                    if let (Some(bar), Some(last)) = (&bar, last_seq) {
                        if bar.length() == Some(0) {
                            bar.set_length(last.saturating_sub(record.header.seq) + 1);
                        }
                        bar.inc(1);
                    }
                    match filter.print(&mut out, &record) {
                        Ok(()) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                },
            )
            .with_context(|| format!("replaying {stream} from {}", endpoints.replay))?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if let Some(e) = failed {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        out.flush()?;
        return Ok(());
    }
    // A stream named exactly is followed alone; otherwise every stream, new ones included.
    let follow_endpoints = depot_logd::client::FollowEndpoints {
        live: endpoints.live.clone(),
        replay: endpoints.replay.clone(),
        replay_api: endpoints.replay_api.clone(),
    };
    let mut one = match &args.stream {
        Some(stream) => Some(Subscription::start(
            &ctx,
            &endpoints.live,
            &endpoints.replay,
            stream,
            &start,
        )?),
        None => None,
    };
    let mut all = match &args.stream {
        Some(_) => None,
        None => Some(PrefixSubscription::start(
            &ctx,
            follow_endpoints,
            "",
            &start,
        )?),
    };
    let mut next = |wait: Duration| -> anyhow::Result<Option<Received>> {
        Ok(match (&mut one, &mut all) {
            (Some(one), _) => one.next(wait)?,
            (None, Some(all)) => all.next(wait)?,
            (None, None) => None,
        })
    };
    loop {
        // Print what is there without waiting; flush before waiting, so lines show at once.
        let record = match next(Duration::ZERO)? {
            Some(record) => Some(record),
            None => {
                out.flush()?;
                next(Duration::from_millis(500))?
            }
        };
        if let Some(record) = record {
            filter.print(&mut out, &record)?;
        }
    }
}

/// `depot log streams`.
pub fn streams(endpoints: &Endpoints, json: bool) -> anyhow::Result<()> {
    let report = crate::status::fetch(&endpoints.admin)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.streams)?);
        return Ok(());
    }
    println!(
        "{:<32} {:>12} {:>12} {:>12}",
        "STREAM", "FIRST SEQ", "LAST SEQ", "RECORDS"
    );
    for s in report.streams {
        println!(
            "{:<32} {:>12} {:>12} {:>12}",
            s.name, s.first_seq, s.last_seq, s.records
        );
    }
    Ok(())
}
