//! `depot serve`: open the store, start the services and the admin endpoint, run until a
//! signal, then shut down cleanly.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, RetentionSection};
use crate::state::AppState;
use depot_common::security::{Authorizer, KeyFileWatcher, KeyPair, ServerCurve};

/// Name of the file in the data folder that tells clients where the running appliance listens.
pub const RUN_FILE: &str = "run.json";

/// What `run.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Process id of the appliance.
    pub pid: u32,
    /// Address of the admin HTTP endpoint.
    pub admin: String,
    /// Depot's version.
    pub version: String,
    /// Where the log service listens.
    pub logd: depot_logd::LogdEndpoints,
    /// Where the cache listens, if it runs.
    #[serde(default)]
    pub cache: Option<depot_cache::CacheEndpoints>,
    /// Where the queue listens, if it runs.
    #[serde(default)]
    pub queue: Option<depot_queue::QueueEndpoints>,
    /// Where the clock listens, if it runs.
    #[serde(default)]
    pub clock: Option<depot_clock::ClockEndpoints>,
}

/// Where the buses connect: the running services' resolved endpoints.
fn bus_service_endpoints(
    logd: &depot_logd::LogdEndpoints,
    cache: Option<&depot_cache::CacheEndpoints>,
    clock: Option<&depot_clock::ClockEndpoints>,
) -> depot_multicast::ServiceEndpoints {
    let present = |endpoint: &str| (!endpoint.is_empty()).then(|| endpoint.to_string());
    depot_multicast::ServiceEndpoints {
        // In-process: the live XPUB's inproc endpoint spares the bus a TCP hop.
        logd_live: present(&logd.live).map(|_| depot_logd::LIVE_INPROC.to_string()),
        logd_live_packed: present(&logd.live_packed)
            .map(|_| depot_logd::LIVE_PACKED_INPROC.to_string()),
        logd_pull: present(&logd.pull),
        cache_publisher: cache.and_then(|c| present(&c.publisher)),
        cache_collector: cache.and_then(|c| present(&c.collector)),
        // The tick PUB has its own zmq context (kept off the shared I/O thread), so over TCP.
        clock_ticks: clock.and_then(|c| present(&c.publisher)),
    }
}

/// CURVE as `depot serve` runs it: the server's keys, the ZAP handler of the shared context
/// and the watcher of the authorized-keys file.
struct Security {
    curve: ServerCurve,
    _zap: depot_common::security::ZapHandler,
    _watcher: Option<KeyFileWatcher>,
}

/// With `[security] curve = true`: loads (or makes) the server key pair, reads the
/// authorized keys, starts watching them and the ZAP handler in `ctx`.
fn start_security(
    config: &Config,
    data_dir: &Path,
    ctx: &zmq::Context,
) -> anyhow::Result<Option<Security>> {
    if !config.security.curve {
        return Ok(None);
    }
    if zmq::has("curve") != Some(true) {
        anyhow::bail!("[security] curve = true, but this libzmq was built without CURVE");
    }
    let pair = KeyPair::load_or_create_server(data_dir).context("the server's CURVE keys")?;
    let path = config
        .security
        .authorized_keys
        .clone()
        .unwrap_or_else(|| data_dir.join("authorized_keys"));
    let authorizer = Arc::new(Authorizer::new(path, pair.public));
    let watcher = match KeyFileWatcher::start(authorizer.clone()) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            // The ZAP thread still notices changes by their metadata, within a second.
            tracing::warn!(file = %authorizer.path().display(), error = %e, "cannot watch the authorized-keys file; checking it periodically");
            None
        }
    };
    let curve = ServerCurve { pair, authorizer };
    // In-process clients (multicast buses, a Binary Star peer link) use the server's own pair,
    // which the ZAP handler always accepts; a pair of cache servers therefore shares one.
    depot_common::security::set_process_client_keys(curve.own_client());
    let zap = curve
        .start_zap(ctx)
        .context("cannot start the ZAP handler")?;
    tracing::info!(public_key = %curve.pair.public.z85(), authorized_keys = %curve.authorizer.path().display(), "CURVE on every zmq endpoint");
    Ok(Some(Security {
        curve,
        _zap: zap,
        _watcher: watcher,
    }))
}

/// Runs the appliance with `config` and data in `data_dir` until SIGINT or SIGTERM;
/// `config_file`, when given, is watched and reloaded live.
pub fn run(
    mut config: Config,
    data_dir: PathBuf,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    config.check_exposure()?;
    config.multicast.load_keys().map_err(anyhow::Error::msg)?;
    let store = depot_store::Store::open(&data_dir, config.store_config())
        .with_context(|| format!("cannot open the data folder {}", data_dir.display()))?;
    let store = Arc::new(store);
    tracing::info!(
        data = %data_dir.display(),
        durability = ?store.durability(),
        streams = store.log().streams().len(),
        "store opened"
    );
    let state = Arc::new(AppState::new(store.clone(), data_dir.clone()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("depot-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ctx = zmq::Context::new();
    let security = start_security(&config, &data_dir, &ctx)?;
    if let Some(security) = &security {
        let curve = Some(security.curve.clone());
        config.logd.curve = curve.clone();
        config.cache.curve = curve.clone();
        config.queue.curve = curve.clone();
        config.clock.curve = curve;
        state.security.set(security.curve.authorizer.clone()).ok();
    }
    let logd = depot_logd::Logd::start(&ctx, store.clone(), &config.logd, runtime.handle())?;
    state.logd.set(logd.metrics.clone()).ok();
    let cache = if config.cache.snapshot.is_empty() {
        None
    } else {
        match depot_cache::Cache::start(&ctx, store.clone(), &config.cache) {
            Ok(cache) => Some(cache),
            Err(e) => {
                logd.shutdown();
                return Err(e.into());
            }
        }
    };
    if let Some(cache) = &cache {
        state.cache.set(cache.metrics.clone()).ok();
    }
    let cache_endpoints = cache.as_ref().map(|c| c.endpoints.clone());
    let queue = if config.queue.router.is_empty() {
        None
    } else {
        match depot_queue::QueueService::start(&ctx, store.clone(), &config.queue) {
            Ok(queue) => Some(queue),
            Err(e) => {
                if let Some(cache) = cache {
                    cache.shutdown();
                }
                logd.shutdown();
                return Err(e.into());
            }
        }
    };
    let clock = if config.clock.publisher.is_empty() {
        None
    } else {
        match depot_clock::Clock::start(&ctx, store.clone(), &config.clock) {
            Ok(clock) => Some(clock),
            Err(e) => {
                if let Some(queue) = queue {
                    queue.shutdown();
                }
                if let Some(cache) = cache {
                    cache.shutdown();
                }
                logd.shutdown();
                return Err(e.into());
            }
        }
    };
    if let Some(queue) = &queue {
        state.queue.set(queue.metrics.clone()).ok();
    }
    let queue_endpoints = queue.as_ref().map(|q| q.endpoints.clone());
    if let Some(clock) = &clock {
        state.clock.set(clock.metrics.clone()).ok();
    }
    let clock_endpoints = clock.as_ref().map(|c| c.endpoints.clone());
    let multicast = depot_multicast::Multicast::start(
        &ctx,
        &config.multicast,
        &bus_service_endpoints(
            &logd.endpoints,
            cache_endpoints.as_ref(),
            clock_endpoints.as_ref(),
        ),
    );
    state.multicast.set(multicast.buses.clone()).ok();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (retention_updates, retention_thread) =
        start_retention(store.clone(), state.clone(), config.retention.clone())?;
    let reload_watcher = config_file.map(|path| {
        let targets = crate::reload::Targets {
            retention: retention_updates.clone(),
            queue: queue.as_ref().map(|q| q.reconfigurer()),
            clock: clock.as_ref().map(|c| c.reconfigurer()),
        };
        let reload_state = Arc::new(crate::reload::ReloadState::default());
        state.config_reload.set(reload_state.clone()).ok();
        let reloader = crate::reload::Reloader::new(path.clone(), targets, reload_state);
        match crate::reload::watch(reloader) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch the configuration file; changes need a restart");
                None
            }
        }
    });

    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| {
                format!(
                    "admin endpoint http://{}: cannot listen",
                    config.admin.listen
                )
            })?;
        let admin_addr = listener.local_addr().context("admin endpoint address")?;
        let admin = tokio::spawn(crate::admin::serve(
            listener,
            state.clone(),
            shutdown_rx.clone(),
        ));
        // Installed before run.json says we serve, so an early SIGTERM is a clean stop too.
        let signals = install_signals().context("cannot install signal handlers")?;
        tokio::spawn(watch_signals(signals, shutdown_tx));
        write_run_file(
            &data_dir,
            admin_addr,
            &logd.endpoints,
            cache_endpoints.clone(),
            queue_endpoints.clone(),
            clock_endpoints.clone(),
        )?;
        tracing::info!(admin = %format!("http://{admin_addr}"), "depot serving");

        let mut shutdown = shutdown_rx.clone();
        let _ = shutdown.wait_for(|stop| *stop).await;
        tracing::info!("shutting down: draining and flushing");
        let _ = admin.await;
        anyhow::Ok(())
    });

    // No reload may reach a service that is stopping.
    drop(reload_watcher);
    // Buses first: they read from the services' publishers.
    multicast.shutdown();
    if let Some(clock) = clock {
        clock.shutdown();
    }
    if let Some(queue) = queue {
        queue.shutdown();
    }
    if let Some(cache) = cache {
        cache.shutdown();
    }
    logd.shutdown();
    drop(security);
    drop(retention_updates);
    let _ = retention_thread.join();
    runtime.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_file(data_dir.join(RUN_FILE));
    let closed = store.close().context("final flush failed");
    served?;
    closed?;
    tracing::info!(
        commits = store.commit_stats().commits,
        "depot stopped cleanly"
    );
    Ok(())
}

fn write_run_file(
    data_dir: &Path,
    admin: std::net::SocketAddr,
    logd: &depot_logd::LogdEndpoints,
    cache: Option<depot_cache::CacheEndpoints>,
    queue: Option<depot_queue::QueueEndpoints>,
    clock: Option<depot_clock::ClockEndpoints>,
) -> anyhow::Result<()> {
    let info = RunInfo {
        pid: std::process::id(),
        admin: admin.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        logd: logd.clone(),
        cache,
        queue,
        clock,
    };
    let path = data_dir.join(RUN_FILE);
    let tmp = data_dir.join(format!("{RUN_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&info)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The SIGTERM and SIGINT streams.
type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// Registers SIGTERM and SIGINT handlers now (they take effect at once).
fn install_signals() -> std::io::Result<Signals> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok((
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    ))
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once (acknowledged data is durable).
async fn watch_signals((mut term, mut int): Signals, shutdown: watch::Sender<bool>) {
    let mut seen = 0;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        seen += 1;
        if seen == 1 {
            tracing::info!(signal = name, "stopping; send it again to exit at once");
            let _ = shutdown.send(true);
        } else {
            tracing::warn!(signal = name, "second signal: exiting at once");
            std::process::exit(130);
        }
    }
}

/// Runs retention every `interval` on its own thread (it does disk I/O) until the returned
/// sender is dropped; settings sent on it replace the running ones and run a pass at once.
fn start_retention(
    store: Arc<depot_store::Store>,
    state: Arc<AppState>,
    mut retention: RetentionSection,
) -> anyhow::Result<(mpsc::Sender<RetentionSection>, std::thread::JoinHandle<()>)> {
    let (updates_tx, updates) = mpsc::channel::<RetentionSection>();
    let handle = std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || loop {
            match updates.recv_timeout(retention.interval) {
                Ok(new) => retention = new,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            for stream in store.log().streams() {
                // Services manage their own streams (the cache trims what it compacted).
                if depot_store::is_internal_stream(&stream) {
                    continue;
                }
                let policy = retention.policy(&stream);
                if policy.max_age.is_none() && policy.max_bytes.is_none() {
                    continue;
                }
                match store
                    .log()
                    .apply_retention(&stream, policy, depot_store::now_ns())
                {
                    Ok(outcome) => {
                        state
                            .retention_removed
                            .fetch_add(outcome.records, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(stream, error = %e, "retention failed"),
                }
            }
        })
        .context("cannot start the retention thread")?;
    Ok((updates_tx, handle))
}
