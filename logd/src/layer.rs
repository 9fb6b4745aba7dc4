//! A `tracing_subscriber::Layer` that ships an application's tracing events to Depot's PULL
//! endpoint. Logging never blocks the application: events go through a bounded queue to a
//! sender thread, and when the queue is full the event is dropped and counted.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Events sent per message at most.
const BATCH: usize = 256;

/// Counters of a [`DepotLayer`].
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Events handed to the sender thread.
    pub queued: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events sent to Depot.
    pub sent: AtomicU64,
}

/// One formatted event.
struct Line {
    level: u8,
    target: String,
    body: String,
}

/// Ships tracing events to a Depot stream.
pub struct DepotLayer {
    tx: SyncSender<Line>,
    stats: Arc<LayerStats>,
}

fn syslog_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl DepotLayer {
    /// Connects to Depot's PULL `endpoint`; events go to `stream`, at most `queue` wait.
    pub fn connect(endpoint: &str, stream: &str, queue: usize) -> Result<Self, zmq::Error> {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PUSH)?;
        socket.set_linger(1_000)?;
        socket.set_sndhwm(1_000)?;
        socket.connect(endpoint)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let stats = Arc::new(LayerStats::default());
        let (stream, thread_stats) = (stream.to_string(), stats.clone());
        std::thread::Builder::new()
            .name("depot-log-layer".into())
            .spawn(move || send_loop(ctx, socket, rx, stream, thread_stats))
            .map_err(|_| zmq::Error::EMFILE)?;
        Ok(DepotLayer { tx, stats })
    }

    /// The layer's counters.
    pub fn stats(&self) -> Arc<LayerStats> {
        self.stats.clone()
    }
}

/// Sends queued events in batches until every layer handle is gone.
fn send_loop(
    _ctx: zmq::Context,
    socket: zmq::Socket,
    rx: Receiver<Line>,
    stream: String,
    stats: Arc<LayerStats>,
) {
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first];
        while lines.len() < BATCH {
            match rx.try_recv() {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        // Consecutive events of one level and target share a message.
        let mut start = 0;
        while start < lines.len() {
            let (level, target) = (lines[start].level, &lines[start].target);
            let end = start
                + lines[start..]
                    .iter()
                    .take_while(|l| l.level == level && &l.target == target)
                    .count();
            let attributes = format!("level={level} source={}", target.replace(' ', "_"));
            let mut frames: Vec<&[u8]> = vec![stream.as_bytes(), attributes.as_bytes()];
            frames.extend(lines[start..end].iter().map(|l| l.body.as_bytes()));
            // A blocking send here only holds up this thread; the application sees a full
            // queue and drops instead.
            if socket.send_multipart(frames, 0).is_ok() {
                stats
                    .sent
                    .fetch_add((end - start) as u64, Ordering::Relaxed);
            }
            start = end;
        }
    }
}

/// Collects an event's message and fields as `message key=value ...`.
struct Collect(String);

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for DepotLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut body = Collect(String::new());
        event.record(&mut body);
        let meta = event.metadata();
        let line = Line {
            level: syslog_level(meta.level()),
            target: meta.target().to_string(),
            body: body.0.trim_start().to_string(),
        };
        match self.tx.try_send(line) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_arrive_as_push_frames_with_level_and_target() {
        let ctx = zmq::Context::new();
        let pull = ctx.socket(zmq::PULL).unwrap();
        pull.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = pull.get_last_endpoint().unwrap().unwrap();
        let layer = DepotLayer::connect(&endpoint, "app", 1_000).unwrap();
        let stats = layer.stats();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(user = "ann", "disk {} low", 93);
        });
        assert!(pull.poll(zmq::POLLIN, 5_000).unwrap() > 0);
        let frames = pull.recv_multipart(0).unwrap();
        assert_eq!(frames[0], b"app");
        let attributes = String::from_utf8(frames[1].clone()).unwrap();
        assert!(attributes.starts_with("level=4 source="), "{attributes}");
        assert_eq!(frames[2], b"disk 93 low user=ann");
        let batch = crate::protocol::parse_push(&frames, 1 << 20).unwrap();
        assert_eq!((batch.stream, batch.level), ("app", 4));
        assert_eq!(stats.queued.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        // Nobody listens: the sender thread blocks at its HWM, the queue fills, events drop.
        let layer = DepotLayer::connect("tcp://127.0.0.1:9", "app", 4).unwrap();
        let stats = layer.stats();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..20_000 {
                tracing::info!(i, "event");
            }
        });
        let (queued, dropped) = (
            stats.queued.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed),
        );
        assert_eq!(queued + dropped, 20_000);
        assert!(dropped > 0, "queued {queued}, dropped {dropped}");
    }
}
