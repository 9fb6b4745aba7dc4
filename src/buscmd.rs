//! `depot bus ...`: list the appliance's multicast buses, or join one and print what it carries.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use depot_multicast::config::BusConfig;
use depot_multicast::frames::{classify, BusMessage};
use depot_multicast::gaps::GapTracker;
use depot_multicast::{BusState, BusStatus};

/// `depot bus` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BusCommand {
    /// List the running appliance's buses: endpoint, state and loss counters.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a bus's group directly and print its messages.
    Watch(WatchArgs),
    /// Make a key for a sealed bus: 32 random bytes as 64 hex digits, in a new file of mode
    /// 0600. Give the same file to every member of the bus as its `key_file`.
    Keygen {
        /// The key file to create (never overwritten).
        out: std::path::PathBuf,
    },
}

/// Options of `depot bus watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// A bus name from the configuration (or the running appliance), or an endpoint such as
    /// `epgm://127.0.0.1;239.192.1.1:5555`.
    pub bus: String,
    /// Only messages whose first frame starts with this prefix (default: all).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Exit after this many messages (HUGZ not counted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Give up (exit 1) when `--count` is not reached within this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Open sealed messages with this key file (default: the configured bus's `key_file`).
    #[arg(long)]
    pub key_file: Option<std::path::PathBuf>,
}

/// `depot bus keygen FILE`.
pub fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    depot_multicast::seal::BusKey::generate().write_new(out)?;
    eprintln!(
        "wrote {} (mode 0600); set key_file = {:?} in the bus's [[multicast.bus]] on every member",
        out.display(),
        out.display().to_string()
    );
    Ok(())
}

/// Prints the bus table of `buses`.
pub fn render(buses: &[BusStatus]) -> String {
    if buses.is_empty() {
        return "no multicast buses configured\n".into();
    }
    let width = buses.iter().map(|b| b.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<width$}  {:<3}  {:<7}  {:>10}  {:>10}  {:>6}  {:>8}  {:>6}  ENDPOINT / CARRIES\n",
        "BUS", "DIR", "STATE", "SENT", "RECEIVED", "GAPS", "MISSING", "LOSS"
    );
    for b in buses {
        let (state, reason) = match &b.state {
            BusState::Running => ("running", None),
            BusState::Failed(reason) => ("FAILED", Some(reason)),
        };
        let dir = match b.direction {
            depot_multicast::config::Direction::Out => "out",
            depot_multicast::config::Direction::In => "in",
        };
        out.push_str(&format!(
            "{:<width$}  {:<3}  {:<7}  {:>10}  {:>10}  {:>6}  {:>8}  {:>6}  {}\n",
            b.name, dir, state, b.sent, b.received, b.gaps, b.missing, b.data_loss, b.endpoint
        ));
        out.push_str(&format!("{:<width$}  {}\n", "", b.carries));
        if let Some(reason) = reason {
            out.push_str(&format!("{:<width$}  failed: {reason}\n", ""));
        }
    }
    out
}

/// `depot bus ls` against the appliance whose admin endpoint is `admin`.
pub fn ls(admin: &str, json: bool) -> anyhow::Result<()> {
    let report = crate::status::fetch(admin)?;
    let text = if json {
        serde_json::to_string_pretty(&report.buses)? + "\n"
    } else {
        render(&report.buses)
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// Finds the bus to watch: an endpoint as given, a bus of `config`, or one the appliance at
/// `admin` reports.
fn find_bus(
    name: &str,
    config: &depot_multicast::MulticastConfig,
    admin: &str,
) -> anyhow::Result<BusConfig> {
    if name.starts_with("epgm://") || name.starts_with("pgm://") {
        depot_multicast::endpoint::PgmEndpoint::parse(name).map_err(anyhow::Error::msg)?;
        return Ok(BusConfig::receiver(name, name.to_string()));
    }
    if let Some(bus) = config.bus.iter().find(|b| b.name == name) {
        // The configured options, joined as a receiver (a packed bus's TPDU included).
        return Ok(BusConfig {
            rate_kbps: bus.rate_kbps,
            recovery_ms: bus.recovery_ms,
            max_tpdu: bus.max_tpdu,
            key_file: bus.key_file.clone(),
            ..BusConfig::receiver(name, bus.endpoint.clone())
        });
    }
    let report = crate::status::fetch(admin)
        .with_context(|| format!("no bus {name:?} in the configuration"))?;
    match report.buses.into_iter().find(|b| b.name == name) {
        Some(bus) => Ok(BusConfig::receiver(name, bus.endpoint)),
        None => bail!("no bus {name:?} in the configuration or the running appliance"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `depot bus watch`.
pub fn watch(
    args: &WatchArgs,
    config: &depot_multicast::MulticastConfig,
    admin: &str,
) -> anyhow::Result<()> {
    let bus = find_bus(&args.bus, config, admin)?;
    let key = match args.key_file.as_ref().or(bus.key_file.as_ref()) {
        Some(path) => Some(
            depot_multicast::seal::BusKey::load(path)
                .with_context(|| format!("bus {}: key_file", bus.name))?,
        ),
        None => None,
    };
    let mut rejects = depot_common::ratelimit::RateLimited::default();
    let mut rejected = 0u64;
    let ctx = zmq::Context::new();
    let prefix = args.prefix.clone().unwrap_or_default();
    let socket = depot_multicast::open::receiver(&ctx, &bus, &[prefix.as_bytes()])
        .with_context(|| format!("joining {}", bus.endpoint))?;
    eprintln!("watching {} ({})", bus.name, bus.endpoint);
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut gaps = GapTracker::new();
    let (mut seen, mut gap_count, mut missing, mut losses) = (0u64, 0u64, 0u64, 0u64);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while args.count.is_none_or(|count| seen < count) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            out.flush()?;
            bail!(
                "timed out after {seen} of {} messages ({gap_count} gaps, {missing} missing)",
                args.count.unwrap_or(0)
            );
        }
        if socket.poll(zmq::POLLIN, 200)? == 0 {
            out.flush()?;
            continue;
        }
        let mut frames = socket.recv_multipart(0)?;
        if let Some(key) = &key {
            match key.open(&frames) {
                Ok(rest) => {
                    frames.truncate(1);
                    frames.extend(rest);
                }
                Err(why) => {
                    rejected += 1;
                    if let Some(suppressed) = rejects.allow() {
                        eprintln!("dropped a message that does not open: {why} ({suppressed} more not shown)");
                    }
                    continue;
                }
            }
        }
        let message = classify(&frames);
        // Gaps in a log stream's sequence before records `h.seq..=last`.
        let mut note_gap = |h: &depot_logd::protocol::Header, last: u64| {
            let observed = gaps.observe_range(h.stream.as_bytes(), h.seq, last);
            if observed.missing > 0 {
                gap_count += 1;
                missing += observed.missing;
                eprintln!(
                    "gap in {}: {} missing before #{}",
                    h.stream, observed.missing, h.seq
                );
            }
            losses += u64::from(observed.loss_event);
        };
        let line = match &message {
            BusMessage::LogRecord(h) => {
                note_gap(h, h.seq);
                let body = text(frames.last().map_or(&[][..], |f| &f[..]));
                let level = depot_logd::protocol::level_name(h.level);
                if args.json {
                    serde_json::json!({"kind": "log", "stream": h.stream, "seq": h.seq, "level": level, "source": h.source, "ts_ns": h.ts_ns, "body": body}).to_string()
                } else {
                    format!("{} #{} {level} {}: {body}", h.stream, h.seq, h.source)
                }
            }
            BusMessage::LogBatch { header: h, count } => {
                note_gap(h, h.seq.saturating_add(u64::from(*count).saturating_sub(1)));
                let level = depot_logd::protocol::level_name(h.level);
                let Ok(batch) = depot_logd::protocol::decode_packed_live(&frames) else {
                    eprintln!("a packed message of {} that does not decode", h.stream);
                    continue;
                };
                let lines: Vec<String> = batch
                    .bodies
                    .iter()
                    .enumerate()
                    .map(|(i, body)| {
                        let (seq, body) = (h.seq + i as u64, text(body));
                        if args.json {
                            serde_json::json!({"kind": "log", "stream": h.stream, "seq": seq, "level": level, "source": h.source, "ts_ns": h.ts_ns, "body": body}).to_string()
                        } else {
                            format!("{} #{seq} {level} {}: {body}", h.stream, h.source)
                        }
                    })
                    .collect();
                // Counted per record, as --count means records for log streams.
                seen += lines.len().saturating_sub(1) as u64;
                lines.join("\n")
            }
            BusMessage::CacheUpdate { key, seq } => {
                gaps.whole();
                let (key, value) = (text(key), text(&frames[4]));
                if args.json {
                    serde_json::json!({"kind": "cache", "key": key, "seq": seq, "value": value, "properties": text(&frames[3])}).to_string()
                } else if value.is_empty() {
                    format!("{key} (deleted) #{seq}")
                } else {
                    format!("{key} = {value} #{seq}")
                }
            }
            BusMessage::Hugz => {
                gaps.whole();
                continue;
            }
            BusMessage::Fragment => {
                losses += u64::from(gaps.fragment());
                eprintln!(
                    "fragment of {} frame(s) dropped: PGM could not repair a loss",
                    frames.len()
                );
                continue;
            }
            BusMessage::Other => {
                gaps.whole();
                let parts: Vec<String> = frames.iter().map(|f| text(f)).collect();
                if args.json {
                    serde_json::json!({"kind": "other", "frames": parts}).to_string()
                } else {
                    parts.join(" | ")
                }
            }
        };
        seen += 1;
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    eprintln!("{seen} messages; {gap_count} gaps ({missing} missing); {losses} data-loss events");
    if key.is_some() {
        eprintln!("{rejected} messages did not open with the bus key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_failed_buses_with_reason() {
        let bus = |name: &str, state| BusStatus {
            name: name.into(),
            endpoint: "epgm://127.0.0.1;239.192.1.1:5555".into(),
            direction: depot_multicast::config::Direction::Out,
            carries: "logs \"app\"".into(),
            state,
            sent: 12,
            sent_bytes: 1200,
            received: 12,
            gaps: 1,
            missing: 3,
            data_loss: 0,
            fragments: 0,
            forwarded: 0,
            ignored: 0,
            rejected: 0,
        };
        let text = render(&[
            bus("lan", BusState::Running),
            bus("wan", BusState::Failed("cannot join".into())),
        ]);
        assert!(text.contains("lan") && text.contains("running"), "{text}");
        assert!(
            text.contains("FAILED") && text.contains("failed: cannot join"),
            "{text}"
        );
        assert_eq!(render(&[]), "no multicast buses configured\n");
    }
}
