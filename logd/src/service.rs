//! Starting and stopping the log service: binds every endpoint (so a port in use is reported
//! at start), then runs the ingest, live, replay and syslog-bridge threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use depot_common::security::apply_server;
use depot_store::Store;

use crate::config::LogdConfig;
use crate::ingest::{Ingest, IngestSockets};
use crate::live::{LiveFeed, LivePublisher, LIVE_QUEUE};
use crate::metrics::LogdMetrics;
use crate::replay::ReplayServer;
use crate::syslog_server;

/// Messages a replay subscriber's pipe holds before its replay is parked.
const REPLAY_HWM: i32 = 10_000;
/// The live XPUB is also bound here, so in-process readers (multicast buses) skip TCP and the
/// I/O thread.
pub const LIVE_INPROC: &str = "inproc://depot-logd-live-xpub";
/// The packed live XPUB's in-process endpoint, for the same reason.
pub const LIVE_PACKED_INPROC: &str = "inproc://depot-logd-live-packed-xpub";
/// Linger of every logd socket: bounded, so shutdown never hangs on a vanished peer.
const LINGER_MS: i32 = 200;

/// Why the log service could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogdError {
    /// An endpoint could not be bound or connected.
    #[error("logd {role} endpoint {endpoint}: {source}")]
    Endpoint {
        /// Which endpoint.
        role: &'static str,
        /// Its address.
        endpoint: String,
        /// What libzmq said.
        source: zmq::Error,
    },
    /// A syslog listener could not be bound.
    #[error("logd {0}")]
    Syslog(std::io::Error),
    /// A socket or thread could not be created.
    #[error("logd: {0}")]
    Setup(String),
}

/// Where the running service listens, with ephemeral ports (`:*`, `:0`) resolved.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LogdEndpoints {
    /// Fire-and-forget PULL.
    pub pull: String,
    /// SUB for PUB publishers.
    pub sub: String,
    /// Acked ROUTER.
    pub acked: String,
    /// Live XPUB.
    pub live: String,
    /// Packed live XPUB.
    #[serde(default)]
    pub live_packed: String,
    /// Replay XPUB.
    pub replay: String,
    /// Replay API ROUTER.
    #[serde(default)]
    pub replay_api: String,
    /// Syslog UDP address.
    pub syslog_udp: Option<String>,
    /// Syslog TCP address.
    pub syslog_tcp: Option<String>,
}

fn bound_endpoint(socket: &Option<zmq::Socket>) -> String {
    socket
        .as_ref()
        .map(depot_common::frames::bound_endpoint)
        .unwrap_or_default()
}

/// The running log service.
pub struct Logd {
    /// Where it listens.
    pub endpoints: LogdEndpoints,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    syslog_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Its counters, for `/metrics`.
    pub metrics: Arc<LogdMetrics>,
}

/// Creates and binds a socket; `sndhwm` is set first, as libzmq applies it to pipes made at bind.
fn socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &'static str,
    endpoint: &str,
    sndhwm: Option<i32>,
    config: &LogdConfig,
) -> Result<Option<zmq::Socket>, LogdError> {
    if endpoint.is_empty() {
        return Ok(None);
    }
    let error = |source| LogdError::Endpoint {
        role,
        endpoint: endpoint.to_string(),
        source,
    };
    let socket = ctx.socket(kind).map_err(error)?;
    socket.set_linger(LINGER_MS).map_err(error)?;
    if let Some(hwm) = sndhwm {
        socket.set_sndhwm(hwm).map_err(error)?;
    }
    depot_common::frames::set_frame_cap(&socket, config.max_message_size).map_err(error)?;
    apply_server(&socket, config.curve.as_ref()).map_err(error)?;
    socket.bind(endpoint).map_err(error)?;
    Ok(Some(socket))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, LogdError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| LogdError::Setup(format!("cannot start thread {name}: {e}")))
}

impl Logd {
    /// Binds every configured endpoint and starts the service; syslog listeners run on `runtime`.
    pub fn start(
        ctx: &zmq::Context,
        store: Arc<Store>,
        config: &LogdConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Logd, LogdError> {
        crate::tail::check_sources(&config.files).map_err(LogdError::Setup)?;
        let metrics = Arc::new(LogdMetrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let setup = |e: zmq::Error| LogdError::Setup(e.to_string());

        let curve = config.curve.as_ref();
        // One guard per thread that serves clients (a guard logs with its own rate limit).
        let guard = || {
            depot_common::authz::Guard::new(
                curve.map(|c| c.authorizer.clone()),
                depot_common::authz::Service::Logd,
            )
        };
        let pull = socket(ctx, zmq::PULL, "pull", &config.pull, None, config)?;
        let sub = socket(ctx, zmq::SUB, "sub", &config.sub, None, config)?;
        if let Some(sub) = &sub {
            sub.set_subscribe(b"").map_err(setup)?;
            for publisher in &config.publishers {
                sub.connect(publisher)
                    .map_err(|source| LogdError::Endpoint {
                        role: "publisher",
                        endpoint: publisher.clone(),
                        source,
                    })?;
            }
        }
        let acked = socket(ctx, zmq::ROUTER, "acked", &config.acked, None, config)?;
        if let Some(acked) = &acked {
            acked.set_router_mandatory(true).map_err(setup)?;
        }
        let live = socket(
            ctx,
            zmq::XPUB,
            "live",
            &config.live,
            Some(config.live_hwm),
            config,
        )?;
        let live_packed = socket(
            ctx,
            zmq::XPUB,
            "live packed",
            &config.live_packed,
            Some(config.live_hwm),
            config,
        )?;
        let replay = socket(
            ctx,
            zmq::XPUB,
            "replay",
            &config.replay,
            Some(REPLAY_HWM),
            config,
        )?;
        let replay_api = socket(
            ctx,
            zmq::ROUTER,
            "replay api",
            &config.replay_api,
            Some(crate::replay_api::SNDHWM),
            config,
        )?;
        let mut endpoints = LogdEndpoints {
            pull: bound_endpoint(&pull),
            sub: bound_endpoint(&sub),
            acked: bound_endpoint(&acked),
            live: bound_endpoint(&live),
            live_packed: bound_endpoint(&live_packed),
            replay: bound_endpoint(&replay),
            replay_api: bound_endpoint(&replay_api),
            syslog_udp: None,
            syslog_tcp: None,
        };

        let (live_tx, live_rx) = std::sync::mpsc::sync_channel(LIVE_QUEUE);
        let mut threads = Vec::new();
        if let Some(xpub) = &live {
            xpub.bind(LIVE_INPROC).map_err(setup)?;
        }
        if let Some(xpub) = &live_packed {
            xpub.bind(LIVE_PACKED_INPROC).map_err(setup)?;
        }
        let live_publisher = if live.is_some() || live_packed.is_some() {
            Some(
                LivePublisher::bind(ctx, live, live_packed, live_rx, metrics.clone(), guard())
                    .map_err(setup)?,
            )
        } else {
            None
        };
        if let Some(publisher) = live_publisher {
            let stop = stop.clone();
            threads.push(spawn("logd-live", move || publisher.run(stop))?);
        }

        let ingest_feed =
            LiveFeed::connect(ctx, live_tx.clone(), metrics.clone()).map_err(setup)?;
        let ingest = Ingest::new(
            IngestSockets { pull, sub, acked },
            store.clone(),
            ingest_feed,
            metrics.clone(),
            config.max_message_size,
            config.max_frames,
            config.max_unread_acks,
            guard(),
        );
        {
            let stop = stop.clone();
            threads.push(spawn("logd-ingest", move || ingest.run(stop))?);
        }

        if let Some(xpub) = replay {
            let server =
                ReplayServer::new(xpub, store.clone(), metrics.clone(), guard()).map_err(setup)?;
            let stop = stop.clone();
            threads.push(spawn("logd-replay", move || server.run(stop))?);
        }

        if let Some(router) = replay_api {
            let api =
                crate::replay_api::ReplayApi::new(router, store.clone(), metrics.clone(), guard())
                    .map_err(setup)?;
            let stop = stop.clone();
            threads.push(spawn("logd-replay-api", move || api.run(stop))?);
        }

        let (syslog_tx, syslog_rx) = syslog_server::channel();
        let syslog_tasks = runtime
            .block_on(syslog_server::start_listeners(
                config.syslog_udp,
                config.syslog_tcp,
                config.max_message_size,
                syslog_tx,
                metrics.clone(),
            ))
            .map_err(LogdError::Syslog);
        let syslog_tasks = match syslog_tasks {
            Ok((tasks, udp, tcp)) => {
                endpoints.syslog_udp = udp.map(|a| a.to_string());
                endpoints.syslog_tcp = tcp.map(|a| a.to_string());
                tasks
            }
            Err(e) => {
                stop.store(true, Ordering::Release);
                for thread in threads {
                    let _ = thread.join();
                }
                return Err(e);
            }
        };
        if !config.files.is_empty() {
            let feed = LiveFeed::connect(ctx, live_tx.clone(), metrics.clone()).map_err(setup)?;
            let tailer =
                crate::tail::Tailer::new(&config.files, store.clone(), feed, metrics.clone())
                    .map_err(LogdError::Setup)?;
            let stop = stop.clone();
            threads.push(spawn("logd-tail", move || tailer.run(stop))?);
        }
        let bridge_feed = LiveFeed::connect(ctx, live_tx, metrics.clone()).map_err(setup)?;
        {
            let (store, metrics) = (store.clone(), metrics.clone());
            threads.push(spawn("logd-syslog", move || {
                syslog_server::run_bridge(syslog_rx, store, bridge_feed, metrics)
            })?);
        }
        tracing::info!(
            pull = %endpoints.pull, sub = %endpoints.sub, acked = %endpoints.acked, live = %endpoints.live,
            replay = %endpoints.replay, syslog_udp = ?endpoints.syslog_udp, syslog_tcp = ?endpoints.syslog_tcp,
            "logd serving"
        );
        Ok(Logd {
            endpoints,
            stop,
            threads,
            syslog_tasks,
            metrics,
        })
    }

    /// Stops accepting, stores and acknowledges what was received, and joins every thread.
    pub fn shutdown(self) {
        for task in &self.syslog_tasks {
            task.abort();
        }
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("logd: a service thread panicked");
            }
        }
    }
}
