//! CURVE and ZAP for every Depot endpoint: key files, the authorized-keys file (reloaded when
//! it changes), the ZAP handler thread that enforces it, the client side's keys, and the
//! "is this bind loopback" test behind the secure default.
//!
//! Key files are text: `NAME.key` holds `public-key = Z85` and `secret-key = Z85` lines and is
//! mode 0600; `NAME.pub` holds the public key alone, ready to append to `authorized_keys`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::authz::{Permissions, Service};
use crate::metrics::{Kind, MetricsText};
use crate::ratelimit::RateLimited;

/// The ZAP domain every Depot server socket announces.
pub const ZAP_DOMAIN: &str = "depot";
/// The ZAP domain of a simple-mode queue PUSH endpoint, followed by the queue's name: a key
/// connects there only with `queue.consume` for that queue (the socket has no other place to
/// refuse a consumer).
pub const ZAP_QUEUE_CONSUME: &str = "depot/queue.consume/";
/// Where libzmq looks for the ZAP handler in a context (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// How often the ZAP loop looks at its stop flag and at the key file's metadata.
const ZAP_POLL_MS: i64 = 200;
/// The server key pair's files in the data folder.
pub const SERVER_KEY_STEM: &str = "server";
/// The ZAP user id of the server's own key (in-process clients): it may do everything.
pub const SERVER_USER: &str = "depot-server";

/// Why a key or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not a 40-character Z85 CURVE key.
    #[error("{0}")]
    Invalid(String),
    /// libzmq could not make a key pair (built without CURVE?).
    #[error("cannot generate a CURVE key pair: {0}")]
    Generate(zmq::Error),
}

/// A 32-byte CURVE key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Reads a 40-character Z85 key.
    pub fn from_z85(text: &str) -> Result<Key, KeyError> {
        let text = text.trim();
        if text.len() != 40 {
            return Err(KeyError::Invalid(format!(
                "a CURVE key is 40 Z85 characters, got {} in {text:?}",
                text.len()
            )));
        }
        let bytes = zmq::z85_decode(text)
            .map_err(|e| KeyError::Invalid(format!("not a Z85 key {text:?}: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Invalid(format!("not a 32-byte key: {text:?}")))?;
        Ok(Key(bytes))
    }

    /// The key as 40 Z85 characters.
    pub fn z85(&self) -> String {
        // 32 bytes are a multiple of 4: encoding cannot fail.
        zmq::z85_encode(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.z85())
    }
}

/// A public and secret key.
#[derive(Clone)]
pub struct KeyPair {
    /// Shared with peers.
    pub public: Key,
    /// Never leaves its file and the process.
    pub secret: Key,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({}, secret hidden)", self.public.z85())
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Result<KeyPair, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(KeyError::Generate)?;
        Ok(KeyPair {
            public: Key(pair.public_key),
            secret: Key(pair.secret_key),
        })
    }

    /// The secret file of the pair whose files start with `stem` (`stem.key`).
    pub fn secret_path(stem: &Path) -> PathBuf {
        with_suffix(stem, "key")
    }

    /// The public file of the pair whose files start with `stem` (`stem.pub`).
    pub fn public_path(stem: &Path) -> PathBuf {
        with_suffix(stem, "pub")
    }

    /// Writes `stem.key` (mode 0600, created new) and `stem.pub`.
    pub fn write(&self, stem: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let secret = Self::secret_path(stem);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(io_error(&secret))?;
        write!(
            file,
            "# Depot CURVE key pair: keep this file private.\npublic-key = {}\nsecret-key = {}\n",
            self.public.z85(),
            self.secret.z85()
        )
        .and_then(|()| file.sync_all())
        .map_err(io_error(&secret))?;
        let public = Self::public_path(stem);
        std::fs::write(&public, format!("{}\n", self.public.z85())).map_err(io_error(&public))
    }

    /// Reads a `NAME.key` file.
    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse(&text).map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses the text of a `NAME.key` file.
    pub fn parse(text: &str) -> Result<KeyPair, KeyError> {
        let (mut public, mut secret) = (None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(KeyError::Invalid(format!("unexpected line {line:?}")));
            };
            let value = value.trim().trim_matches('"');
            match name.trim() {
                "public-key" => public = Some(Key::from_z85(value)?),
                "secret-key" => secret = Some(Key::from_z85(value)?),
                other => return Err(KeyError::Invalid(format!("unknown field {other:?}"))),
            }
        }
        match (public, secret) {
            (Some(public), Some(secret)) => Ok(KeyPair { public, secret }),
            _ => Err(KeyError::Invalid(
                "a key file needs public-key and secret-key lines".into(),
            )),
        }
    }

    /// The server's pair in `data_dir` (`server.key`, `server.pub`), made on first use.
    pub fn load_or_create_server(data_dir: &Path) -> Result<KeyPair, KeyError> {
        let stem = data_dir.join(SERVER_KEY_STEM);
        let secret = Self::secret_path(&stem);
        if secret.exists() {
            let mode = std::fs::metadata(&secret).map_err(io_error(&secret))?;
            use std::os::unix::fs::PermissionsExt;
            if mode.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %secret.display(), "the server's secret key is readable by others; chmod 600 it");
            }
            return Self::load(&secret);
        }
        let pair = Self::generate()?;
        pair.write(&stem)?;
        tracing::info!(public_key = %pair.public.z85(), file = %secret.display(), "created the server's CURVE key pair");
        Ok(pair)
    }
}

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut name = stem.as_os_str().to_os_string();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// What a client needs to talk to a CURVE server.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    /// The server's public key (`server.pub` in its data folder).
    pub server_public: Key,
    /// The client's own pair (made by `depot keygen`).
    pub pair: KeyPair,
}

impl ClientKeys {
    /// Makes `socket` a CURVE client; call before `connect`.
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_serverkey(&self.server_public.0)?;
        socket.set_curve_publickey(&self.pair.public.0)?;
        socket.set_curve_secretkey(&self.pair.secret.0)
    }
}

/// Applies `keys`, when given, to a client socket before it connects.
pub fn apply_client(socket: &zmq::Socket, keys: Option<&ClientKeys>) -> zmq::Result<()> {
    match keys {
        Some(keys) => keys.apply(socket),
        None => Ok(()),
    }
}

/// This process's client keys, used by every Depot client socket it makes (set once by the CLI
/// from `--key`, and by `depot serve` to its own pair for in-process clients such as buses).
static PROCESS_CLIENT_KEYS: std::sync::OnceLock<ClientKeys> = std::sync::OnceLock::new();

/// Sets the process's client keys; false when they were already set.
pub fn set_process_client_keys(keys: ClientKeys) -> bool {
    PROCESS_CLIENT_KEYS.set(keys).is_ok()
}

/// Applies the process's client keys, if any, to a client socket before it connects.
pub fn apply_process_client(socket: &zmq::Socket) -> zmq::Result<()> {
    apply_client(socket, PROCESS_CLIENT_KEYS.get())
}

/// One line of the authorized-keys file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The client's public key.
    pub key: Key,
    /// A name for logs and the ZAP user id (empty when not given).
    pub name: String,
    /// Permission words after the name (`logd.write=app.` …), as written.
    pub permissions: Vec<String>,
    /// What the words allow (everything when there are none; see `authz`).
    pub grants: Permissions,
}

/// Parses the authorized-keys file: one Z85 key per line, then an optional name and optional
/// permission words; `#` at the start of a line or after whitespace starts a comment. Bad lines
/// (not a key, an unknown permission word, a name used twice, permission words without a name
/// before them) are returned as errors with their number and skipped; the good ones still count.
pub fn parse_authorized_keys(text: &str) -> (Vec<AuthorizedKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        // Z85 has `#` in its alphabet: a comment starts a line or follows whitespace.
        let line = line.trim();
        let line = match line.find(" #").or_else(|| line.find("\t#")) {
            Some(at) => line[..at].trim(),
            None => line,
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key_text = words.next().unwrap_or_default();
        let name = words.next().unwrap_or_default().to_string();
        let permissions: Vec<String> = words.map(String::from).collect();
        let parsed = Key::from_z85(key_text)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                if name.contains('=') {
                    return Err(format!(
                        "{name:?} is not a name: permission words need a name before them"
                    ));
                }
                // Names are how services find a sender's permissions: one name, one key.
                if !name.is_empty() && keys.iter().any(|k: &AuthorizedKey| k.name == name) {
                    return Err(format!("the name {name:?} is used by an earlier key"));
                }
                if name == SERVER_USER {
                    return Err(format!(
                        "the name {SERVER_USER:?} is reserved for the server"
                    ));
                }
                let grants = Permissions::parse(&permissions)?;
                Ok(AuthorizedKey {
                    key,
                    name: name.clone(),
                    permissions: permissions.clone(),
                    grants,
                })
            });
        match parsed {
            Ok(key) => keys.push(key),
            Err(e) => errors.push(format!("line {}: {e}", index + 1)),
        }
    }
    (keys, errors)
}

/// Counters of the ZAP handler, for `/metrics`.
#[derive(Debug, Default)]
pub struct SecurityMetrics {
    /// CURVE handshakes accepted.
    pub accepted: AtomicU64,
    /// Handshakes refused (unknown key, other mechanism).
    pub rejected: AtomicU64,
    /// Keys currently authorized.
    pub authorized_keys: AtomicU64,
    /// Times the authorized-keys file was (re)read.
    pub reloads: AtomicU64,
    /// Lines of the authorized-keys file that were not a key.
    pub bad_lines: AtomicU64,
    /// Operations refused by authorization, per `authz::Service`.
    pub denied: [AtomicU64; 4],
    /// Messages refused or dropped over their key's rate limit, per `authz::Service`.
    pub rate_limited: [AtomicU64; 4],
    /// Records, messages or updates those messages held, per `authz::Service`.
    pub rate_limited_units: [AtomicU64; 4],
}

impl SecurityMetrics {
    /// Appends the `depot_security_*` families.
    pub fn render(&self, m: &mut MetricsText) {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
        m.single(
            "depot_security_accepted_total",
            Kind::Counter,
            "CURVE connections accepted by the ZAP handler",
            get(&self.accepted),
        );
        m.single(
            "depot_security_rejected_total",
            Kind::Counter,
            "Connections refused by the ZAP handler (unknown key or mechanism)",
            get(&self.rejected),
        );
        m.single(
            "depot_security_authorized_keys",
            Kind::Gauge,
            "Client keys in the authorized-keys file",
            get(&self.authorized_keys),
        );
        m.single(
            "depot_security_key_reloads_total",
            Kind::Counter,
            "Times the authorized-keys file was read",
            get(&self.reloads),
        );
        m.single(
            "depot_security_key_file_bad_lines",
            Kind::Gauge,
            "Lines of the authorized-keys file that are not a key (skipped)",
            get(&self.bad_lines),
        );
        let name = "depot_security_denied_total";
        m.family(
            name,
            Kind::Counter,
            "Operations refused because the sender's key lacks the permission",
        );
        for service in Service::ALL {
            m.sample(
                name,
                &[("service", service.name())],
                get(&self.denied[service as usize]),
            );
        }
        for (name, help, counts) in [
            (
                "depot_rate_limited_total",
                "Messages (acked batches, pushes, publishes, KVSETs) refused or dropped because \
                 their key is over its rate limit",
                &self.rate_limited,
            ),
            (
                "depot_rate_limited_units_total",
                "Records, queue messages or cache updates in those messages",
                &self.rate_limited_units,
            ),
        ] {
            m.family(name, Kind::Counter, help);
            for service in [Service::Logd, Service::Cache, Service::Queue] {
                m.sample(
                    name,
                    &[("service", service.name())],
                    get(&counts[service as usize]),
                );
            }
        }
    }
}

/// Who may connect: the authorized-keys file's content, reloaded when it changes.
#[derive(Debug)]
pub struct Authorizer {
    path: PathBuf,
    server_public: Key,
    keys: RwLock<KeyTable>,
    signature: std::sync::Mutex<Option<FileSignature>>,
    /// Its counters.
    pub metrics: SecurityMetrics,
}

/// The keys, and their permissions by name (the ZAP user id services see).
#[derive(Debug, Default)]
struct KeyTable {
    by_key: HashMap<Key, AuthorizedKey>,
    by_name: HashMap<String, Arc<Permissions>>,
}

/// What tells a changed file apart without reading it.
type FileSignature = (std::time::SystemTime, u64, u64);

fn signature(path: &Path) -> Option<FileSignature> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

impl Authorizer {
    /// Reads `path` (a missing file authorizes nobody but the server's own key).
    pub fn new(path: PathBuf, server_public: Key) -> Authorizer {
        let authorizer = Authorizer {
            path,
            server_public,
            keys: RwLock::new(KeyTable::default()),
            signature: std::sync::Mutex::new(None),
            metrics: SecurityMetrics::default(),
        };
        authorizer.reload();
        authorizer
    }

    /// The server's public key (always accepted).
    pub fn server_public(&self) -> Key {
        self.server_public
    }

    /// The authorized-keys file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again and replaces the key set.
    pub fn reload(&self) {
        let seen = signature(&self.path);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %self.path.display(), "no authorized-keys file: only the server's own key may connect");
                String::new()
            }
            Err(e) => {
                // Keep what we had: a transient read error must not lock everyone out.
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the authorized-keys file; keeping the previous keys");
                return;
            }
        };
        let (keys, errors) = parse_authorized_keys(&text);
        for error in &errors {
            tracing::warn!(file = %self.path.display(), "authorized keys: {error}; line skipped");
        }
        let count = keys.len();
        let by_name = keys
            .iter()
            .filter(|k| !k.name.is_empty())
            .map(|k| (k.name.clone(), Arc::new(k.grants.clone())))
            .collect();
        let by_key = keys.into_iter().map(|k| (k.key, k)).collect();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = KeyTable { by_key, by_name };
        *self.signature.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        self.metrics
            .authorized_keys
            .store(count as u64, Ordering::Relaxed);
        self.metrics
            .bad_lines
            .store(errors.len() as u64, Ordering::Relaxed);
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file = %self.path.display(), keys = count, "authorized keys loaded");
    }

    /// Reloads when the file's metadata changed (a fallback for a missed notification).
    pub fn reload_if_changed(&self) {
        let now = signature(&self.path);
        let changed = *self.signature.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            self.reload();
        }
    }

    /// The ZAP user id for `key`, or None when it may not connect.
    pub fn check(&self, key: &Key) -> Option<String> {
        if *key == self.server_public {
            return Some(SERVER_USER.into());
        }
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .get(key)
            .map(|k| k.name.clone())
    }

    /// The permissions of the key named `user` (a ZAP user id), as the file says now; None
    /// when no key has that name any more. The server's own key has everything.
    pub fn permissions(&self, user: &str) -> Option<Arc<Permissions>> {
        if user == SERVER_USER {
            return Some(Arc::new(Permissions::everything()));
        }
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(user)
            .cloned()
    }
}

/// The server side of CURVE: this server's key pair and who may connect.
#[derive(Clone)]
pub struct ServerCurve {
    /// The server's pair (`server.key` in the data folder).
    pub pair: KeyPair,
    /// The authorized-keys file's content.
    pub authorizer: Arc<Authorizer>,
}

impl std::fmt::Debug for ServerCurve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCurve")
            .field("public", &self.pair.public)
            .field("authorized_keys", &self.authorizer.path())
            .finish()
    }
}

impl ServerCurve {
    /// Makes `socket` a CURVE server checked by the ZAP handler; call before `bind`.
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        socket.set_curve_server(true)?;
        socket.set_curve_secretkey(&self.pair.secret.0)?;
        socket.set_zap_domain(ZAP_DOMAIN)
    }

    /// Client keys for in-process clients of this server (e.g. multicast bridges), which use
    /// the server's own pair; the ZAP handler always accepts it.
    pub fn own_client(&self) -> ClientKeys {
        ClientKeys {
            server_public: self.pair.public,
            pair: self.pair.clone(),
        }
    }

    /// Starts a ZAP handler in `ctx` (one per zmq context whose sockets use CURVE).
    pub fn start_zap(&self, ctx: &zmq::Context) -> Result<ZapHandler, zmq::Error> {
        ZapHandler::start(ctx, self.authorizer.clone())
    }
}

/// How often a server socket pings a peer that sent nothing (ZMTP heartbeats).
pub const PEER_HEARTBEAT_IVL_MS: i32 = 1_000;
/// How long a server socket waits for any traffic from a peer after a ping before it drops
/// the connection: a peer gone without closing (a cut network, a frozen host) would otherwise
/// keep its pipe, and what is queued in it, until TCP gives up after many minutes.
pub const PEER_HEARTBEAT_TIMEOUT_MS: i32 = 5_000;

/// Applies `curve`, when given, to a server socket before it binds, and ZMTP heartbeats (a
/// listener keeps the options it was bound with).
pub fn apply_server(socket: &zmq::Socket, curve: Option<&ServerCurve>) -> zmq::Result<()> {
    socket.set_heartbeat_ivl(PEER_HEARTBEAT_IVL_MS)?;
    socket.set_heartbeat_timeout(PEER_HEARTBEAT_TIMEOUT_MS)?;
    // What the peer should wait for us: the same.
    socket.set_heartbeat_ttl(PEER_HEARTBEAT_TIMEOUT_MS)?;
    match curve {
        Some(curve) => curve.apply(socket),
        None => Ok(()),
    }
}

/// A ZAP reply: status code, status text and user id.
#[derive(Debug, PartialEq, Eq)]
pub struct ZapDecision {
    /// "200", "400" or "500".
    pub code: &'static str,
    /// Why.
    pub text: String,
    /// Who, when accepted.
    pub user: String,
}

/// The fields of a ZAP request (RFC 27) needed to decide it.
#[derive(Debug)]
pub struct ZapRequest<'a> {
    /// Request id, echoed.
    pub request_id: &'a [u8],
    /// The ZAP domain of the socket connected to.
    pub domain: String,
    /// The peer's address.
    pub address: String,
    /// "NULL", "PLAIN" or "CURVE".
    pub mechanism: &'a [u8],
    /// The peer's CURVE public key, if any.
    pub client_key: Option<Key>,
}

/// Reads a ZAP request; None when it is not one.
pub fn parse_zap_request(frames: &[Vec<u8>]) -> Option<ZapRequest<'_>> {
    if frames.len() < 6 || frames[0] != b"1.0" {
        return None;
    }
    let client_key = frames
        .get(6)
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .map(Key);
    Some(ZapRequest {
        request_id: &frames[1],
        domain: String::from_utf8_lossy(&frames[2]).into_owned(),
        address: String::from_utf8_lossy(&frames[3]).into_owned(),
        mechanism: &frames[5],
        client_key,
    })
}

/// Decides a ZAP request: CURVE clients must hold an authorized key; NULL connections reach
/// the handler only from sockets Depot did not make CURVE servers (clients, inproc), which
/// carry no credentials to check; anything else is refused.
pub fn decide(request: &ZapRequest<'_>, authorizer: &Authorizer) -> ZapDecision {
    match request.mechanism {
        b"CURVE" => match request.client_key.and_then(|key| authorizer.check(&key)) {
            Some(user) => {
                if let Some(queue) = request.domain.strip_prefix(ZAP_QUEUE_CONSUME) {
                    let op = crate::authz::Op::QueueConsume(queue);
                    let allowed = authorizer
                        .permissions(&user)
                        .is_none_or(|grants| grants.allows(&op));
                    if !allowed {
                        authorizer.metrics.denied[Service::Queue as usize]
                            .fetch_add(1, Ordering::Relaxed);
                        return ZapDecision {
                            code: "400",
                            text: format!("not authorized: key {user:?} may not {op}"),
                            user: String::new(),
                        };
                    }
                }
                ZapDecision {
                    code: "200",
                    text: "OK".into(),
                    user,
                }
            }
            None => ZapDecision {
                code: "400",
                text: "unknown client key".into(),
                user: String::new(),
            },
        },
        b"NULL" => ZapDecision {
            code: "200",
            text: "OK".into(),
            user: String::new(),
        },
        _ => ZapDecision {
            code: "400",
            text: "mechanism not allowed".into(),
            user: String::new(),
        },
    }
}

/// The thread answering libzmq's ZAP requests for one context.
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandler {
    fn start(ctx: &zmq::Context, authorizer: Arc<Authorizer>) -> Result<ZapHandler, zmq::Error> {
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        // Bound here, before any CURVE socket binds, so no handshake finds it missing.
        socket.bind(ZAP_ENDPOINT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("zap".into())
                .spawn(move || run_zap(socket, authorizer, stop))
                .map_err(|_| zmq::Error::EMFILE)?
        };
        Ok(ZapHandler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_zap(socket: zmq::Socket, authorizer: Arc<Authorizer>, stop: Arc<AtomicBool>) {
    let mut rejected_log = RateLimited::default();
    while !stop.load(Ordering::Acquire) {
        match socket.poll(zmq::POLLIN, ZAP_POLL_MS) {
            Ok(0) => {
                authorizer.reload_if_changed();
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "zap: poll failed");
                std::thread::sleep(Duration::from_millis(ZAP_POLL_MS as u64));
                continue;
            }
        }
        let frames = match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => frames,
            Err(_) => continue,
        };
        let (request_id, decision, request) = match parse_zap_request(&frames) {
            Some(request) => {
                let decision = decide(&request, &authorizer);
                (request.request_id.to_vec(), decision, Some(request))
            }
            None => (
                frames.get(1).cloned().unwrap_or_default(),
                ZapDecision {
                    code: "500",
                    text: "malformed ZAP request".into(),
                    user: String::new(),
                },
                None,
            ),
        };
        let is_curve = request.as_ref().is_some_and(|r| r.mechanism == b"CURVE");
        if decision.code == "200" {
            if is_curve {
                authorizer.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            authorizer.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = rejected_log.allow() {
                let peer = request.as_ref().map(|r| r.address.as_str()).unwrap_or("?");
                let key = request
                    .as_ref()
                    .and_then(|r| r.client_key)
                    .map(|k| k.z85())
                    .unwrap_or_default();
                tracing::warn!(peer, key, reason = %decision.text, suppressed, "security: connection rejected");
            }
        }
        let reply: [&[u8]; 6] = [
            b"1.0",
            &request_id,
            decision.code.as_bytes(),
            decision.text.as_bytes(),
            decision.user.as_bytes(),
            b"",
        ];
        if let Err(e) = socket.send_multipart(reply, 0) {
            tracing::warn!(error = %e, "zap: cannot reply");
        }
    }
}

/// Watches the authorized-keys file's folder (editors replace files by rename) and reloads
/// the keys on any change to it. Dropping it stops watching.
pub struct KeyFileWatcher {
    _watcher: crate::watch::FileWatcher,
}

impl KeyFileWatcher {
    /// Starts watching `authorizer`'s file.
    pub fn start(authorizer: Arc<Authorizer>) -> Result<KeyFileWatcher, notify::Error> {
        let path = authorizer.path().to_path_buf();
        // No debounce: a key file is small, and a revoked key should stop working at once.
        let watcher =
            crate::watch::FileWatcher::start(&path, Duration::ZERO, move || authorizer.reload())?;
        Ok(KeyFileWatcher { _watcher: watcher })
    }
}

/// Whether a zmq endpoint only listens on this machine: `inproc://`, `ipc://`, and `tcp://`
/// or `ws://` on 127.0.0.0/8, ::1 or `localhost`. Wildcards (`*`, `0.0.0.0`) and interface
/// names other than `lo` are not; `pgm`/`epgm` are judged by their interface.
pub fn endpoint_is_local(endpoint: &str) -> bool {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return false;
    };
    match scheme {
        "inproc" | "ipc" => true,
        "pgm" | "epgm" | "norm" => {
            let interface = rest.split(';').next().unwrap_or_default();
            host_is_local(interface) || interface == "lo"
        }
        _ => {
            // tcp://[src;]host:port — a source address before `;` is where we bind.
            let host_port = rest.rsplit(';').next().unwrap_or_default();
            let host = match host_port.rsplit_once(':') {
                Some((host, _)) => host,
                None => host_port,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "lo" || host_is_local(host)
        }
    }
}

/// Whether `host` (an address or `localhost`) is a loopback address.
pub fn host_is_local(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("client");
        let pair = KeyPair::generate().unwrap();
        pair.write(&stem).unwrap();
        let loaded = KeyPair::load(&KeyPair::secret_path(&stem)).unwrap();
        assert_eq!(loaded.public, pair.public);
        assert_eq!(loaded.secret, pair.secret);
        let public = std::fs::read_to_string(KeyPair::public_path(&stem)).unwrap();
        assert_eq!(Key::from_z85(&public).unwrap(), pair.public);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(KeyPair::secret_path(&stem))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwritten.
        assert!(pair.write(&stem).is_err());
    }

    #[test]
    fn the_server_pair_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyPair::load_or_create_server(dir.path()).unwrap();
        let second = KeyPair::load_or_create_server(dir.path()).unwrap();
        assert_eq!(first.public, second.public);
        assert!(dir.path().join("server.pub").exists());
    }

    #[test]
    fn authorized_keys_take_comments_names_and_permissions_and_skip_bad_lines() {
        let a = KeyPair::generate().unwrap().public;
        let b = KeyPair::generate().unwrap().public;
        let text = format!(
            "# clients\n{}\n\n  {} app-1 logd.write=app. # the app\nnot-a-key\n",
            a.z85(),
            b.z85()
        );
        let (keys, errors) = parse_authorized_keys(&text);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key, a);
        assert_eq!(keys[0].name, "");
        assert_eq!(keys[1].name, "app-1");
        assert_eq!(keys[1].permissions, vec!["logd.write=app.".to_string()]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("line 5"), "{errors:?}");
        // `#` is a Z85 character: inside a key it is not a comment.
        let hashed = "0000000000000000000000000000000000000#00";
        let (keys, errors) = parse_authorized_keys(&format!("{hashed} bob # a comment\n"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(keys[0].key.z85(), hashed);
        assert_eq!(keys[0].name, "bob");
    }

    #[test]
    fn duplicate_names_bad_permission_words_and_nameless_words_are_bad_lines() {
        let k: Vec<Key> = (0..5)
            .map(|_| KeyPair::generate().unwrap().public)
            .collect();
        let text = format!(
            "{} alice timers\n{} alice all\n{} bob logd.wirte=x\n{} logd.write=x\n{} carol\n",
            k[0].z85(),
            k[1].z85(),
            k[2].z85(),
            k[3].z85(),
            k[4].z85()
        );
        let (keys, errors) = parse_authorized_keys(&text);
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, vec!["alice", "carol"]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("line 2") && errors[0].contains("earlier key"));
        assert!(errors[1].starts_with("line 3") && errors[1].contains("unknown permission"));
        assert!(errors[2].starts_with("line 4") && errors[2].contains("need a name"));
        assert!(keys[0].grants.allows(&crate::authz::Op::Timers));
        assert!(!keys[0].grants.allows(&crate::authz::Op::LogWrite("a")));
        // No words: everything, as before permissions were enforced.
        assert_eq!(keys[1].grants, Permissions::everything());
    }

    fn request<'a>(mechanism: &'a [u8], key: Option<Key>) -> ZapRequest<'a> {
        ZapRequest {
            request_id: b"1",
            domain: ZAP_DOMAIN.into(),
            address: "127.0.0.1".into(),
            mechanism,
            client_key: key,
        }
    }

    #[test]
    fn zap_decisions_follow_the_key_file_and_its_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let server = KeyPair::generate().unwrap();
        let known = KeyPair::generate().unwrap().public;
        let authorizer = Authorizer::new(path.clone(), server.public);
        assert_eq!(
            decide(&request(b"CURVE", Some(known)), &authorizer).code,
            "400"
        );
        assert_eq!(decide(&request(b"CURVE", None), &authorizer).code, "400");
        assert_eq!(
            decide(&request(b"CURVE", Some(server.public)), &authorizer).code,
            "200"
        );
        assert_eq!(decide(&request(b"PLAIN", None), &authorizer).code, "400");
        std::fs::write(&path, format!("{} alice\n", known.z85())).unwrap();
        authorizer.reload_if_changed();
        let decision = decide(&request(b"CURVE", Some(known)), &authorizer);
        assert_eq!((decision.code, decision.user.as_str()), ("200", "alice"));
        std::fs::write(&path, "# nobody\n").unwrap();
        authorizer.reload();
        assert_eq!(
            decide(&request(b"CURVE", Some(known)), &authorizer).code,
            "400"
        );
    }

    #[test]
    fn zap_requests_are_parsed_per_rfc_27() {
        let key = KeyPair::generate().unwrap().public;
        let frames: Vec<Vec<u8>> = vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            b"depot".to_vec(),
            b"10.0.0.1".to_vec(),
            Vec::new(),
            b"CURVE".to_vec(),
            key.0.to_vec(),
        ];
        let request = parse_zap_request(&frames).unwrap();
        assert_eq!(request.client_key, Some(key));
        assert_eq!(request.address, "10.0.0.1");
        assert!(parse_zap_request(&frames[..5]).is_none());
        let mut wrong_version = frames.clone();
        wrong_version[0] = b"2.0".to_vec();
        assert!(parse_zap_request(&wrong_version).is_none());
    }

    #[test]
    fn loopback_endpoints_are_told_apart() {
        for local in [
            "tcp://127.0.0.1:5560",
            "tcp://127.0.0.1:*",
            "tcp://localhost:5560",
            "tcp://[::1]:5560",
            "tcp://lo:5560",
            "ipc:///run/depot/clock",
            "inproc://x",
            "epgm://lo;239.192.1.1:5555",
            "epgm://127.0.0.1;239.192.1.1:5555",
        ] {
            assert!(endpoint_is_local(local), "{local}");
        }
        for remote in [
            "tcp://0.0.0.0:5560",
            "tcp://*:5560",
            "tcp://10.1.2.3:5560",
            "tcp://eth0:5560",
            "tcp://[::]:5560",
            "epgm://eth0;239.192.1.1:5555",
            "garbage",
        ] {
            assert!(!endpoint_is_local(remote), "{remote}");
        }
    }

    #[test]
    fn curve_sockets_talk_only_with_an_authorized_key() {
        let dir = tempfile::tempdir().unwrap();
        let server = KeyPair::generate().unwrap();
        let client = KeyPair::generate().unwrap();
        let curve = ServerCurve {
            pair: server.clone(),
            authorizer: Arc::new(Authorizer::new(
                dir.path().join("authorized_keys"),
                server.public,
            )),
        };
        let ctx = zmq::Context::new();
        let _zap = curve.start_zap(&ctx).unwrap();
        let rep = ctx.socket(zmq::REP).unwrap();
        curve.apply(&rep).unwrap();
        rep.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = rep.get_last_endpoint().unwrap().unwrap();
        let keys = ClientKeys {
            server_public: server.public,
            pair: client.clone(),
        };
        let try_once = || {
            let req = ctx.socket(zmq::REQ).unwrap();
            req.set_linger(0).unwrap();
            keys.apply(&req).unwrap();
            req.connect(&endpoint).unwrap();
            req.send("ping", 0).unwrap();
            if rep.poll(zmq::POLLIN, 500).unwrap() == 0 {
                return false;
            }
            rep.recv_bytes(0).unwrap();
            rep.send("pong", 0).unwrap();
            req.recv_bytes(0).unwrap() == b"pong"
        };
        assert!(!try_once(), "an unknown key got through");
        assert!(curve.authorizer.metrics.rejected.load(Ordering::Relaxed) >= 1);
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n", client.public.z85()),
        )
        .unwrap();
        curve.authorizer.reload();
        assert!(try_once(), "an authorized key was refused");
        assert!(curve.authorizer.metrics.accepted.load(Ordering::Relaxed) >= 1);
    }
}
