//! `depot status`: ask the running appliance over its admin endpoint and print a table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::state::StatusReport;

/// Fetches `path` from the admin endpoint at `addr`; returns the body of a 200 response.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    http_request(addr, "GET", path, Duration::from_secs(10))
}

/// Sends `method path` to the admin endpoint at `addr`, waiting at most `wait` for the answer;
/// returns the body of a 200 response.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    wait: Duration,
) -> anyhow::Result<String> {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("invalid admin address {addr}"))?
        .next()
        .with_context(|| format!("admin address {addr} resolves to nothing"))?;
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(3)).with_context(|| {
            format!("no Depot answering at http://{addr} (is `depot serve` running?)")
        })?;
    stream.set_read_timeout(Some(wait))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the answer of http://{addr}{path}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed answer from http://{addr}{path}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 200") {
        bail!("http://{addr}{path} answered {status_line}: {body}");
    }
    Ok(body.to_string())
}

/// Fetches the status report of the appliance at `addr`.
pub fn fetch(addr: &str) -> anyhow::Result<StatusReport> {
    let body = http_get(addr, "/status")?;
    serde_json::from_str(&body).context("the appliance's status report does not parse")
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Renders the report as the table `depot status` prints.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Depot {}  pid {}  up {}\n",
        report.version,
        report.pid,
        human_duration(report.uptime_secs)
    ));
    out.push_str(&format!("data folder  {}\n", report.data_dir));
    out.push_str(&format!(
        "disk         {}\n",
        human_bytes(report.disk_bytes)
    ));
    let health = match &report.poisoned {
        None => "ok".to_string(),
        Some(reason) => format!("POISONED: {reason}"),
    };
    out.push_str(&format!(
        "store        {health}; durability {:?}; {} commits, last {:.2} ms\n",
        report.durability,
        report.commits.commits,
        report.commits.last_commit_us as f64 / 1000.0
    ));
    out.push_str(&format!(
        "libzmq       {} ({})\n",
        report.libzmq,
        report.libzmq_capabilities.join(", ")
    ));
    out.push_str(&format!(
        "curve        {}\n",
        report
            .curve_public_key
            .as_deref()
            .map_or("off".to_string(), |key| format!("on, server key {key}"))
    ));
    if let Some(reload) = &report.config_reload {
        out.push_str(&format!("config       last reload {}\n", reload.summary()));
    }
    if !report.buses.is_empty() {
        out.push('\n');
        out.push_str(&crate::buscmd::render(&report.buses));
    }
    if report.streams.is_empty() {
        out.push_str("streams      none yet\n");
        return out;
    }
    let width = report
        .streams
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "\n{:<width$}  {:>12}  {:>12}  {:>12}  {:>10}  {:>10}\n",
        "STREAM", "FIRST SEQ", "LAST SEQ", "RECORDS", "STORED", "RAW"
    ));
    for s in &report.streams {
        out.push_str(&format!(
            "{:<width$}  {:>12}  {:>12}  {:>12}  {:>10}  {:>10}\n",
            s.name,
            s.first_seq,
            s.last_seq,
            s.records,
            human_bytes(s.stored_bytes),
            human_bytes(s.raw_bytes)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanises_sizes_and_durations() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3_661), "1h 1m");
        assert_eq!(human_duration(90_000), "1d 1h");
    }

    #[test]
    fn connection_refused_says_what_to_do() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = format!("{:#}", fetch(&addr).unwrap_err());
        assert!(err.contains("no Depot answering"), "{err}");
    }
}
