//! Starting and stopping the buses. A bus that cannot be opened is marked failed and logged;
//! the other buses and services run on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::bridge::{Bridge, Source, SourceKind};
use crate::config::{BusConfig, Direction, MulticastConfig};
use crate::ingest::{BusIngest, Targets};
use crate::metrics::{BusEntry, BusMetrics, BusState, BusStatus};
use crate::open;
use crate::seal::BusKey;

/// The appliance's endpoints buses connect to; `None` where a service does not run.
#[derive(Debug, Clone, Default)]
pub struct ServiceEndpoints {
    /// logd's live XPUB (out buses carrying `logs`).
    pub logd_live: Option<String>,
    /// logd's packed live XPUB (out buses carrying `logs` with `packed`).
    pub logd_live_packed: Option<String>,
    /// logd's PULL (in buses with `ingest`).
    pub logd_pull: Option<String>,
    /// The cache's publisher PUB (out buses carrying `cache`).
    pub cache_publisher: Option<String>,
    /// The cache's collector SUB (in buses with `ingest_cache`).
    pub cache_collector: Option<String>,
    /// The clock's tick PUB (out buses carrying `ticks`). The clock service is not part of this
    /// build yet: serve.rs passes `None` until it is (see the hook there).
    pub clock_ticks: Option<String>,
}

/// The running buses.
pub struct Multicast {
    /// Every configured bus, running or failed, for metrics and status.
    pub buses: Arc<Vec<Arc<BusEntry>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What a bus thread runs.
enum Worker {
    Out(Bridge),
    In(BusIngest),
}

impl Multicast {
    /// Opens every bus in `config` (already validated). Never fails as a whole: a bus that
    /// cannot be opened is reported as failed.
    pub fn start(
        ctx: &zmq::Context,
        config: &MulticastConfig,
        services: &ServiceEndpoints,
    ) -> Multicast {
        let stop = Arc::new(AtomicBool::new(false));
        let mut buses = Vec::new();
        let mut threads = Vec::new();
        for bus in &config.bus {
            let entry = Arc::new(BusEntry {
                name: bus.name.clone(),
                endpoint: bus.endpoint.clone(),
                direction: bus.direction(),
                carries: bus.describe(),
                state: Mutex::new(BusState::Running),
                metrics: BusMetrics::default(),
            });
            let started = open_bus(ctx, bus, services, entry.clone()).and_then(|worker| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("bus-{}", bus.name))
                    .spawn(move || match worker {
                        Worker::Out(bridge) => bridge.run(stop),
                        Worker::In(ingest) => ingest.run(stop),
                    })
                    .map_err(|e| format!("cannot start its thread: {e}"))
            });
            match started {
                Ok(thread) => {
                    tracing::info!(bus = %bus.name, endpoint = %bus.endpoint, carries = %entry.carries, "multicast bus running");
                    threads.push(thread);
                }
                Err(reason) => {
                    tracing::error!(bus = %bus.name, endpoint = %bus.endpoint, %reason, "multicast bus failed to open; the other services keep running");
                    if let Ok(mut state) = entry.state.lock() {
                        *state = BusState::Failed(reason);
                    }
                }
            }
            buses.push(entry);
        }
        Multicast {
            buses: Arc::new(buses),
            stop,
            threads,
        }
    }

    /// Every bus's status.
    pub fn statuses(&self) -> Vec<BusStatus> {
        self.buses.iter().map(|b| b.status()).collect()
    }

    /// Stops every bus thread (sends in progress give up within their timeout).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("multicast: a bus thread panicked");
            }
        }
    }
}

fn open_bus(
    ctx: &zmq::Context,
    bus: &BusConfig,
    services: &ServiceEndpoints,
    entry: Arc<BusEntry>,
) -> Result<Worker, String> {
    let zmq_error = |e: zmq::Error| e.to_string();
    match bus.direction() {
        Direction::Out => {
            let sources = out_sources(bus, services)?;
            let pgm = open::sender(ctx, bus).map_err(|e| e.to_string())?;
            Bridge::new(ctx, entry, pgm, sources, bus_key(bus)?)
                .map(Worker::Out)
                .map_err(zmq_error)
        }
        Direction::In => {
            let logd = match (bus.ingest, &services.logd_pull) {
                (false, _) => None,
                (true, Some(pull)) => Some(connect(ctx, zmq::PUSH, pull).map_err(zmq_error)?),
                (true, None) => return Err("ingest = true but logd's pull endpoint is off".into()),
            };
            let cache = match (bus.ingest_cache, &services.cache_collector) {
                (false, _) => None,
                (true, Some(collector)) => {
                    Some(connect(ctx, zmq::PUB, collector).map_err(zmq_error)?)
                }
                (true, None) => return Err("ingest_cache = true but the cache is off".into()),
            };
            let pgm = open::receiver(ctx, bus, &[b""]).map_err(|e| e.to_string())?;
            BusIngest::new(entry, pgm, Targets { logd, cache }, bus_key(bus)?)
                .map(Worker::In)
                .map_err(zmq_error)
        }
    }
}

/// The key of a sealed bus, read now if `load_keys` was not called first.
fn bus_key(bus: &BusConfig) -> Result<Option<BusKey>, String> {
    match (&bus.key, &bus.key_file) {
        (Some(key), _) => Ok(Some(key.clone())),
        (None, Some(path)) => BusKey::load(path)
            .map(Some)
            .map_err(|e| format!("key_file {e}")),
        (None, None) => Ok(None),
    }
}

fn connect(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Result<zmq::Socket> {
    let socket = ctx.socket(kind)?;
    depot_common::security::apply_process_client(&socket)?;
    socket.set_linger(500)?;
    socket.set_sndhwm(100_000)?;
    socket.connect(endpoint)?;
    Ok(socket)
}

/// The publishers an out bus subscribes to.
fn out_sources(bus: &BusConfig, services: &ServiceEndpoints) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    if !bus.logs.is_empty() {
        let endpoint = if bus.packed {
            services
                .logd_live_packed
                .clone()
                .ok_or("carries packed logs but logd's live_packed endpoint is off")?
        } else {
            services
                .logd_live
                .clone()
                .ok_or("carries logs but logd's live endpoint is off")?
        };
        // A prefix with a level (`"app ERROR"`) leaves holes in the stream's sequence.
        let whole = bus.logs.iter().all(|p| !p.contains(' '));
        sources.push(Source {
            kind: SourceKind::Logs,
            endpoint,
            prefixes: bus.logs.iter().map(|p| p.as_bytes().to_vec()).collect(),
            count_gaps: whole,
        });
    }
    let cache = bus.cache.subscriptions();
    if !cache.is_empty() {
        let endpoint = services
            .cache_publisher
            .clone()
            .ok_or("carries cache updates but the cache is off")?;
        sources.push(Source {
            kind: SourceKind::Cache,
            endpoint,
            prefixes: cache,
            count_gaps: bus.cache.is_whole(),
        });
    }
    if !bus.ticks.is_empty() {
        match &services.clock_ticks {
            Some(endpoint) => sources.push(Source {
                kind: SourceKind::Ticks,
                endpoint: endpoint.clone(),
                prefixes: bus.ticks.iter().map(|p| p.as_bytes().to_vec()).collect(),
                count_gaps: false,
            }),
            None => tracing::warn!(
                bus = %bus.name,
                "carries ticks, but no clock tick endpoint is known to this build: ticks are not carried until the clock service is wired in"
            ),
        }
    }
    Ok(sources)
}
