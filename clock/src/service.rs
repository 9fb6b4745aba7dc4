//! Starting and stopping the clock: binds the PUB and the timers ROUTER, loads the stored
//! timers, and starts the ticker thread (owner of the PUB) and the timers thread (owner of the
//! ROUTER), joined by an inproc PUSH/PULL that carries topic firings to the PUB. With a
//! high-precision stream the PUB side gets its own zmq context with a SCHED_FIFO I/O thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use depot_store::Store;

use crate::config::{ClockConfig, TickConfig, TimerLimits};
use crate::metrics::ClockMetrics;
use crate::schedule;
use crate::ticker::{Reconfigure, Ticker};
use crate::timer_server::{TimerServer, TimerSettings};

/// Linger of the clock's sockets.
const LINGER_MS: i32 = 200;
/// Messages a subscriber may fall behind before the PUB drops for it.
const PUB_HWM: i32 = 100_000;
/// Largest message the timers ROUTER reads (bigger ones make libzmq drop the peer).
const MAX_REQUEST_BYTES: i64 = 1024 * 1024;

/// Why the clock could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// An endpoint could not be bound.
    #[error("clock {role} endpoint {endpoint}: {source}")]
    Endpoint {
        /// Which endpoint.
        role: &'static str,
        /// Its address.
        endpoint: String,
        /// What libzmq said.
        source: zmq::Error,
    },
    /// The configuration is inconsistent.
    #[error("clock: {0}")]
    Config(String),
    /// The stored timers could not be loaded.
    #[error("clock: loading the stored timers: {0}")]
    Load(String),
    /// A socket or thread could not be set up.
    #[error("clock: {0}")]
    Setup(String),
}

/// Where the clock listens, ephemeral ports resolved.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClockEndpoints {
    /// Tick and topic-firing PUB (tcp).
    pub publisher: String,
    /// Further endpoints of the same PUB (ipc).
    #[serde(default)]
    pub publisher_extra: Vec<String>,
    /// Timers ROUTER; empty when timers are off.
    pub timers: String,
}

/// Where a live reload sends the `[clock]` keys that may change while the clock runs; every
/// other key needs a restart.
#[derive(Clone)]
pub struct ClockReconfigurer {
    /// To the ticker, which applies each set between two sends (see `streams::plan` for what
    /// is kept, added, removed or refused).
    ticks: mpsc::Sender<Vec<TickConfig>>,
    /// To the timers thread, when timers run.
    timer_limits: Option<mpsc::Sender<TimerLimits>>,
}

impl ClockReconfigurer {
    /// One sending to these channels (a test can hold the receivers).
    pub fn new(
        ticks: mpsc::Sender<Vec<TickConfig>>,
        timer_limits: Option<mpsc::Sender<TimerLimits>>,
    ) -> ClockReconfigurer {
        ClockReconfigurer {
            ticks,
            timer_limits,
        }
    }

    /// Hands the ticker a new `[[clock.ticks]]` (the whole set).
    pub fn ticks(&self, ticks: Vec<TickConfig>) {
        // Gone only while the clock stops, when nothing is left to change.
        let _ = self.ticks.send(ticks);
    }

    /// Hands the timers thread new limits (ignored when timers are off).
    pub fn timer_limits(&self, limits: TimerLimits) {
        if let Some(tx) = &self.timer_limits {
            let _ = tx.send(limits);
        }
    }
}

/// The running clock.
pub struct Clock {
    stop_timers: Arc<AtomicBool>,
    stop_ticker: Arc<AtomicBool>,
    timers: Option<JoinHandle<()>>,
    ticker: JoinHandle<()>,
    /// Its counters.
    pub metrics: Arc<ClockMetrics>,
    /// Where it listens.
    pub endpoints: ClockEndpoints,
    /// Where a live reload's changes go.
    reconfigurer: ClockReconfigurer,
    /// The ZAP handler of the tick publisher's own context, when it has one and CURVE is on;
    /// dropped (stopped) after the ticker.
    _zap: Option<depot_common::security::ZapHandler>,
    /// The idle-poll request, withdrawn when the clock stops.
    _idle_poll: Option<crate::sys::IdlePoll>,
}

fn socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &'static str,
    endpoint: &str,
) -> Result<zmq::Socket, ClockError> {
    let error = |source| ClockError::Endpoint {
        role,
        endpoint: endpoint.to_string(),
        source,
    };
    let socket = ctx.socket(kind).map_err(error)?;
    socket.set_linger(LINGER_MS).map_err(error)?;
    Ok(socket)
}

fn bind(socket: &zmq::Socket, role: &'static str, endpoint: &str) -> Result<String, ClockError> {
    socket
        .bind(endpoint)
        .map_err(|source| ClockError::Endpoint {
            role,
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(depot_common::frames::bound_endpoint(socket))
}

impl Clock {
    /// Binds the endpoints, loads the stored timers and starts the threads.
    pub fn start(
        ctx: &zmq::Context,
        store: Arc<Store>,
        config: &ClockConfig,
    ) -> Result<Clock, ClockError> {
        config.validate().map_err(ClockError::Config)?;
        let setup = |e: zmq::Error| ClockError::Setup(e.to_string());
        let boost = (config.realtime && !config.ticks.is_empty()).then_some(crate::ticker::BOOST);
        // Measured on a busy 2-core machine: with the ticker under SCHED_FIFO, ticks still
        // waited for the shared context's I/O thread (p99 40 ms at a subscriber; 0.2 ms with
        // that thread under SCHED_FIFO too). So the tick publisher gets its own context whose
        // I/O thread is raised like the ticker.
        let own = boost.and_then(boosted_context);
        let idle_poll = (config.idle_poll && !config.ticks.is_empty())
            .then(|| match crate::sys::IdlePoll::hold() {
                Ok(hold) => {
                    tracing::info!("clock: idle CPUs poll while the clock runs (cpu_dma_latency 0)");
                    Some(hold)
                }
                Err(e) => {
                    tracing::info!(error = %e, "clock: cannot hold /dev/cpu_dma_latency; idle CPUs may halt and wake ticks late");
                    None
                }
            })
            .flatten();
        let pub_ctx = own.as_ref().unwrap_or(ctx);
        let curve = config.curve.as_ref();
        // ZAP handlers are per context: the tick publisher's own context needs its own.
        let zap = match (&own, curve) {
            (Some(own), Some(curve)) => Some(curve.start_zap(own).map_err(setup)?),
            _ => None,
        };
        let publisher = socket(pub_ctx, zmq::PUB, "publisher", &config.publisher)?;
        publisher.set_sndhwm(PUB_HWM).map_err(setup)?;
        depot_common::security::apply_server(&publisher, curve).map_err(setup)?;
        let mut endpoints = ClockEndpoints {
            publisher: bind(&publisher, "publisher", &config.publisher)?,
            ..Default::default()
        };
        for extra in &config.publisher_extra {
            endpoints
                .publisher_extra
                .push(bind(&publisher, "publisher_extra", extra)?);
        }
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let inproc = format!(
            "inproc://depot-clock-firings-{}",
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let firings_in = socket(pub_ctx, zmq::PULL, "firings", &inproc)?;
        firings_in.set_rcvhwm(PUB_HWM).map_err(setup)?;
        bind(&firings_in, "firings", &inproc)?;
        let firings_out = socket(pub_ctx, zmq::PUSH, "firings", &inproc)?;
        firings_out.set_sndhwm(PUB_HWM).map_err(setup)?;
        // A stuck publisher must not hang the timers thread for ever.
        firings_out.set_sndtimeo(1_000).map_err(setup)?;
        firings_out.connect(&inproc).map_err(setup)?;

        let topics: Vec<String> = config
            .ticks
            .iter()
            .map(|t| schedule::topic(t.period))
            .collect();
        // The streams' counters and list are filled by the ticker, which owns the set of
        // streams (it changes on a live reload).
        let metrics = Arc::new(ClockMetrics::default());
        let infos = Arc::new(Mutex::new(
            config
                .ticks
                .iter()
                .map(crate::ticker::stream_info)
                .collect(),
        ));
        let stop_timers = Arc::new(AtomicBool::new(false));
        let mut limits_tx = None;
        let timers = if config.timers.is_empty() {
            None
        } else {
            let router = socket(ctx, zmq::ROUTER, "timers", &config.timers)?;
            router.set_router_mandatory(true).map_err(setup)?;
            router.set_maxmsgsize(MAX_REQUEST_BYTES).map_err(setup)?;
            router.set_sndhwm(PUB_HWM).map_err(setup)?;
            depot_common::security::apply_server(&router, curve).map_err(setup)?;
            endpoints.timers = bind(&router, "timers", &config.timers)?;
            let settings = TimerSettings {
                max_payload: config.max_payload,
                max_timers: config.max_timers,
                min_period_ns: nanos(config.min_period),
                late_after_ns: nanos(config.late_after),
                restart_grace_ns: nanos(config.restart_grace),
                streams: infos.clone(),
                guard: depot_common::authz::Guard::new(
                    curve.map(|c| c.authorizer.clone()),
                    depot_common::authz::Service::Clock,
                ),
                updates: {
                    let (tx, rx) = mpsc::channel();
                    limits_tx = Some(tx);
                    rx
                },
            };
            let server = TimerServer::load(router, firings_out, store, settings, metrics.clone())
                .map_err(ClockError::Load)?;
            tracing::info!(timers = server.stored(), endpoint = %endpoints.timers, "clock: timers loaded");
            let stop = stop_timers.clone();
            Some(
                std::thread::Builder::new()
                    .name("clock-timers".into())
                    .spawn(move || server.run(stop))
                    .map_err(|e| {
                        ClockError::Setup(format!("cannot start the timers thread: {e}"))
                    })?,
            )
        };
        let (updates, updates_rx) = mpsc::channel();
        let reconfigure = Reconfigure {
            updates: updates_rx,
            min_period: config.min_period,
            infos,
            unraised: config.ticks.is_empty() && (config.realtime || config.idle_poll),
        };
        let ticker = Ticker::new(
            publisher,
            firings_in,
            &config.ticks,
            metrics.clone(),
            config.catch_up,
            boost,
            reconfigure,
        );
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("clock-ticker".into())
                .spawn(move || ticker.run(stop))
        };
        let ticker = match ticker {
            Ok(handle) => handle,
            Err(e) => {
                stop_timers.store(true, Ordering::Release);
                if let Some(timers) = timers {
                    let _ = timers.join();
                }
                return Err(ClockError::Setup(format!(
                    "cannot start the ticker thread: {e}"
                )));
            }
        };
        tracing::info!(streams = ?topics, publisher = %endpoints.publisher, "clock serving");
        Ok(Clock {
            stop_timers,
            stop_ticker,
            timers,
            ticker,
            metrics,
            endpoints,
            reconfigurer: ClockReconfigurer {
                ticks: updates,
                timer_limits: limits_tx,
            },
            _zap: zap,
            _idle_poll: idle_poll,
        })
    }

    /// Where a live reload sends its changes of `[clock]`.
    pub fn reconfigurer(&self) -> ClockReconfigurer {
        self.reconfigurer.clone()
    }

    /// Stops the timers (answering what is durable), then the ticker (forwarding what the
    /// timers fired).
    pub fn shutdown(self) {
        self.stop_timers.store(true, Ordering::Release);
        if let Some(timers) = self.timers {
            if timers.join().is_err() {
                tracing::error!("clock: the timers thread panicked");
            }
        }
        self.stop_ticker.store(true, Ordering::Release);
        if self.ticker.join().is_err() {
            tracing::error!("clock: the ticker thread panicked");
        }
    }
}

/// A zmq context whose I/O thread is raised by `boost`: libzmq starts its threads when the
/// first socket is made, and they inherit the creating thread's policy and nice value. None
/// (logged) when the process may not raise threads.
fn boosted_context(boost: crate::sys::Boost) -> Option<zmq::Context> {
    let made = std::thread::Builder::new()
        .name("clock-setup".into())
        .spawn(move || -> Result<zmq::Context, String> {
            boost.apply().map_err(|e| e.to_string())?;
            let ctx = zmq::Context::new();
            // Starts the I/O thread; the socket itself is not needed.
            ctx.socket(zmq::PUB).map_err(|e| e.to_string())?;
            Ok(ctx)
        })
        .ok()?
        .join()
        .ok()?;
    match made {
        Ok(ctx) => {
            tracing::info!(
                ?boost,
                "clock: the tick publisher has its own raised I/O thread"
            );
            Some(ctx)
        }
        Err(e) => {
            tracing::info!(error = %e, ?boost, "clock: not permitted to raise threads; the tick publisher shares the process's I/O thread");
            None
        }
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
