//! Syslog listeners (UDP and TCP, on tokio) and the bridge thread that stores what they parse.

use std::net::SocketAddr;
use std::sync::Arc;

use depot_common::ratelimit::RateLimited;
use depot_store::{NewRecord, Store};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::live::{LiveBatch, LiveFeed};
use crate::metrics::{add, inc, LogdMetrics};
use crate::syslog::{self, SyslogError, SyslogMessage, TcpFramer};

/// Parsed messages waiting for the bridge; UDP drops (counted) beyond it, TCP waits.
const QUEUE: usize = 16_384;
/// Stream of syslog messages that name no application.
pub const SYSLOG_STREAM: &str = "syslog";

/// A syslog message reduced to a record.
#[derive(Debug)]
pub struct SyslogRecord {
    stream: String,
    level: u8,
    source: String,
    body: Vec<u8>,
}

/// Stream name from an APP-NAME: spaces and control characters become `_`.
fn stream_for(app_name: Option<&str>) -> String {
    match app_name {
        Some(name) if !name.is_empty() => name
            .chars()
            .take(depot_store::MAX_STREAM_NAME)
            .map(|c| if c == ' ' || c.is_control() { '_' } else { c })
            .collect(),
        _ => SYSLOG_STREAM.to_string(),
    }
}

fn to_record(message: SyslogMessage, peer: SocketAddr, rejects: &mut Rejects) -> SyslogRecord {
    if !message.valid_utf8 {
        inc(&rejects.metrics.syslog_invalid_utf8);
        if let Some(suppressed) = rejects.not_utf8.allow() {
            tracing::warn!(%peer, suppressed, "syslog: message body is not UTF-8 (stored as bytes)");
        }
    }
    let mut stream = stream_for(message.app_name.as_deref());
    while stream.len() > depot_store::MAX_STREAM_NAME {
        stream.pop();
    }
    SyslogRecord {
        stream,
        level: message.severity,
        source: message.hostname.unwrap_or_else(|| peer.ip().to_string()),
        body: message.message,
    }
}

/// Tracks bad input from syslog peers.
struct Rejects {
    metrics: Arc<LogdMetrics>,
    warn: RateLimited,
    not_utf8: RateLimited,
}

impl Rejects {
    fn reject(&mut self, peer: SocketAddr, e: &SyslogError) {
        match e {
            SyslogError::FrameTooLarge { .. } => inc(&self.metrics.rejected_oversize),
            _ => inc(&self.metrics.rejected_malformed),
        }
        if let Some(suppressed) = self.warn.allow() {
            tracing::warn!(%peer, error = %e, suppressed, "syslog: message refused");
        }
    }
}

/// Listener tasks and the addresses they are bound to (UDP, TCP).
pub type Listeners = (
    Vec<tokio::task::JoinHandle<()>>,
    Option<SocketAddr>,
    Option<SocketAddr>,
);

/// Binds the configured listeners on the current tokio runtime and starts their tasks.
pub async fn start_listeners(
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    max_message_size: usize,
    tx: mpsc::Sender<SyslogRecord>,
    metrics: Arc<LogdMetrics>,
) -> std::io::Result<Listeners> {
    let mut tasks = Vec::new();
    let (mut udp_bound, mut tcp_bound) = (None, None);
    if let Some(addr) = udp {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("syslog udp://{addr}: {e}")))?;
        udp_bound = socket.local_addr().ok();
        tasks.push(tokio::spawn(serve_udp(socket, tx.clone(), metrics.clone())));
    }
    if let Some(addr) = tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("syslog tcp://{addr}: {e}")))?;
        tcp_bound = listener.local_addr().ok();
        tasks.push(tokio::spawn(serve_tcp(
            listener,
            max_message_size,
            tx,
            metrics,
        )));
    }
    Ok((tasks, udp_bound, tcp_bound))
}

async fn serve_udp(
    socket: tokio::net::UdpSocket,
    tx: mpsc::Sender<SyslogRecord>,
    metrics: Arc<LogdMetrics>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut rejects = Rejects {
        metrics: metrics.clone(),
        warn: RateLimited::default(),
        not_utf8: RateLimited::default(),
    };
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "syslog udp: receive failed");
                continue;
            }
        };
        match syslog::parse(&buf[..n]) {
            Ok(message) => {
                if tx.try_send(to_record(message, peer, &mut rejects)).is_err() {
                    inc(&metrics.syslog_dropped);
                }
            }
            Err(e) => rejects.reject(peer, &e),
        }
    }
}

async fn serve_tcp(
    listener: tokio::net::TcpListener,
    max_message_size: usize,
    tx: mpsc::Sender<SyslogRecord>,
    metrics: Arc<LogdMetrics>,
) {
    // Connections live in this set, so stopping the listener task also ends them and releases
    // their hold on the channel (forwarders such as rsyslog never disconnect by themselves).
    let mut peers = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    peers.spawn(serve_tcp_peer(stream, peer, max_message_size, tx.clone(), metrics.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "syslog tcp: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = peers.join_next() => {}
        }
    }
}

async fn serve_tcp_peer(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    max_message_size: usize,
    tx: mpsc::Sender<SyslogRecord>,
    metrics: Arc<LogdMetrics>,
) {
    let mut framer = TcpFramer::new(max_message_size);
    let mut rejects = Rejects {
        metrics: metrics.clone(),
        warn: RateLimited::default(),
        not_utf8: RateLimited::default(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => match syslog::parse(&frame) {
                    // TCP has flow control: wait for the bridge rather than drop.
                    Ok(message) => {
                        if tx
                            .send(to_record(message, peer, &mut rejects))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => rejects.reject(peer, &e),
                },
                Ok(None) => break,
                Err(e) => rejects.reject(peer, &e),
            }
        }
    }
}

/// Creates the channel between the listeners and the bridge.
pub fn channel() -> (mpsc::Sender<SyslogRecord>, mpsc::Receiver<SyslogRecord>) {
    mpsc::channel(QUEUE)
}

/// The bridge thread: stores syslog records in batches and feeds live, until the listeners
/// are gone.
pub fn run_bridge(
    mut rx: mpsc::Receiver<SyslogRecord>,
    store: Arc<Store>,
    live: LiveFeed,
    metrics: Arc<LogdMetrics>,
) {
    let mut warn = RateLimited::default();
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < 1_000 {
            match rx.try_recv() {
                Ok(record) => group.push(record),
                Err(_) => break,
            }
        }
        // Consecutive records of one stream, level and source go in one append.
        let mut start = 0;
        while start < group.len() {
            let head = &group[start];
            let end = start
                + group[start..]
                    .iter()
                    .take_while(|r| {
                        r.stream == head.stream && r.level == head.level && r.source == head.source
                    })
                    .count();
            let slice = &group[start..end];
            let records: Vec<NewRecord<'_>> = slice
                .iter()
                .map(|r| NewRecord {
                    level: r.level,
                    source: &r.source,
                    body: &r.body,
                })
                .collect();
            match store.log().append(&head.stream, &records) {
                Ok(appended) => {
                    add(&metrics.stored_syslog, records.len() as u64);
                    live.send(LiveBatch {
                        stream: head.stream.clone(),
                        level: head.level,
                        source: head.source.clone(),
                        first_seq: appended.first,
                        ts_ns: appended.ts_ns,
                        bodies: slice
                            .iter()
                            .map(|r| zmq::Message::from(&r.body[..]))
                            .collect(),
                        packed: false,
                    });
                }
                Err(e) => {
                    add(&metrics.store_errors, records.len() as u64);
                    if let Some(suppressed) = warn.allow() {
                        tracing::error!(error = %e, suppressed, "syslog: store refused records");
                    }
                }
            }
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_come_from_the_app_name() {
        assert_eq!(stream_for(Some("nginx")), "nginx");
        assert_eq!(stream_for(Some("my app")), "my_app");
        assert_eq!(stream_for(None), SYSLOG_STREAM);
        assert_eq!(stream_for(Some("")), SYSLOG_STREAM);
    }
}
