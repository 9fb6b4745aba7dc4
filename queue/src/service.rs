//! Starting and stopping the queue service: loads the queues, binds every endpoint (so a port
//! in use is reported at start) and runs the queue thread.

use depot_common::frames::bound_endpoint;
use std::collections::HashMap;
use std::sync::{mpsc, Arc};

use depot_common::thread::Worker;
use depot_store::Store;

use crate::config::QueueConfig;
use crate::metrics::QueueMetrics;
use crate::server::{self, Server, KV_TREE};

/// Linger of every queue socket: bounded, so shutdown never hangs on a vanished peer.
const LINGER_MS: i32 = 200;
/// Messages a simple-mode PUSH endpoint queues per peer: what a vanished peer may lose.
const PUSH_HWM: i32 = 100;
/// Messages the PULL buffers before producers are held back. A push may carry thousands of
/// messages, and libzmq's default of 1,000 let the appliance hold ~170 MB of queued frames
/// under a producer faster than the store (measured with `depot bench queue --mode rss`).
const PULL_RCVHWM: i32 = 64;

/// Why the queue service could not start.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// An endpoint could not be bound.
    #[error("queue {role} endpoint {endpoint}: {source}")]
    Endpoint {
        /// Which endpoint.
        role: String,
        /// Its address.
        endpoint: String,
        /// What libzmq said.
        source: zmq::Error,
    },
    /// The stored state could not be loaded, or the configuration is wrong.
    #[error("queue: {0}")]
    Setup(String),
}

/// Where the running service listens, ephemeral ports resolved.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueEndpoints {
    /// ROUTER for confirmed publishes and consumers.
    pub router: String,
    /// PULL for fire-and-forget producers ("" when off).
    pub pull: String,
    /// Simple-mode PUSH endpoints by queue.
    #[serde(default)]
    pub push: HashMap<String, String>,
}

/// The running queue service.
pub struct QueueService {
    /// Where it listens.
    pub endpoints: QueueEndpoints,
    /// Its counters and figures.
    pub metrics: Arc<QueueMetrics>,
    updates: mpsc::Sender<QueueConfig>,
    worker: Worker,
}

fn bind(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &str,
    endpoint: &str,
    config: &QueueConfig,
    push_queue: Option<&str>,
) -> Result<zmq::Socket, QueueError> {
    let error = |source| QueueError::Endpoint {
        role: role.to_owned(),
        endpoint: endpoint.to_owned(),
        source,
    };
    let socket = ctx.socket(kind).map_err(error)?;
    socket.set_linger(LINGER_MS).map_err(error)?;
    if kind == zmq::ROUTER {
        socket.set_router_mandatory(true).map_err(error)?;
    }
    if kind == zmq::PULL {
        socket.set_rcvhwm(PULL_RCVHWM).map_err(error)?;
    }
    if kind == zmq::PUSH {
        socket.set_sndhwm(PUSH_HWM).map_err(error)?;
        // Nothing is queued for a connection that is not complete.
        socket.set_immediate(true).map_err(error)?;
    }
    depot_common::frames::set_frame_cap(&socket, config.max_message_size).map_err(error)?;
    depot_common::security::apply_server(&socket, config.curve.as_ref()).map_err(error)?;
    if let (Some(queue), Some(_)) = (push_queue, &config.curve) {
        // A PUSH cannot refuse a consumer once connected: ZAP checks `queue.consume` for its
        // queue at the handshake. Set before bind: a listener keeps the options it was bound
        // with.
        let domain = format!("{}{queue}", depot_common::security::ZAP_QUEUE_CONSUME);
        socket.set_zap_domain(&domain).map_err(error)?;
    }
    socket.bind(endpoint).map_err(error)?;
    Ok(socket)
}

impl QueueService {
    /// Loads the stored queues and subscriptions, binds the endpoints and starts the thread.
    pub fn start(
        ctx: &zmq::Context,
        store: Arc<Store>,
        config: &QueueConfig,
    ) -> Result<QueueService, QueueError> {
        config.validate().map_err(QueueError::Setup)?;
        let kv = store
            .kv(KV_TREE)
            .map_err(|e| QueueError::Setup(e.to_string()))?;
        let queues = server::load_queues(&store, &kv, config)
            .map_err(|e| QueueError::Setup(format!("loading the stored queues: {e}")))?;
        let router = bind(ctx, zmq::ROUTER, "router", &config.router, config, None)?;
        let pull = if config.pull.is_empty() {
            None
        } else {
            Some(bind(ctx, zmq::PULL, "pull", &config.pull, config, None)?)
        };
        let mut pushes = HashMap::new();
        for (name, overrides) in &config.queues {
            if let Some(endpoint) = &overrides.push {
                let role = format!("push ({name})");
                let push = bind(ctx, zmq::PUSH, &role, endpoint, config, Some(name))?;
                pushes.insert(name.clone(), push);
            }
        }
        let endpoints = QueueEndpoints {
            router: bound_endpoint(&router),
            pull: pull.as_ref().map(bound_endpoint).unwrap_or_default(),
            push: pushes
                .iter()
                .map(|(name, socket)| (name.clone(), bound_endpoint(socket)))
                .collect(),
        };
        let metrics = Arc::new(QueueMetrics::default());
        let (updates, updates_rx) = mpsc::channel();
        tracing::info!(queues = queues.len(), router = %endpoints.router, pull = %endpoints.pull,
            "queue serving");
        let server = Server::new(
            router,
            pull,
            pushes,
            store,
            kv,
            config.clone(),
            queues,
            metrics.clone(),
            updates_rx,
        );
        let worker = Worker::spawn("queue", move |stop| server.run(stop))
            .map_err(|e| QueueError::Setup(format!("cannot start the queue thread: {e}")))?;
        Ok(QueueService {
            endpoints,
            metrics,
            updates,
            worker,
        })
    }

    /// Where a live reload sends new configurations; the queue thread takes them within a
    /// tick (see `Server::reconfigure` for what applies).
    pub fn reconfigurer(&self) -> mpsc::Sender<QueueConfig> {
        self.updates.clone()
    }

    /// Stops taking requests, stores what was received and confirms what is durable.
    pub fn shutdown(self) {
        self.worker.stop();
    }
}
