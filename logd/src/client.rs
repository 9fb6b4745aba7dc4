//! Rust client of the log service: acked and fire-and-forget sending, and a subscription that
//! joins replay to live with no gap and no duplicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::protocol::{self, Header};

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// libzmq failed.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The server refused a batch.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A record received from the live or replay endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Stream, sequence, time, level, source.
    pub header: Header,
    /// The record's body.
    pub body: Vec<u8>,
}

/// The answer to an acked batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The batch id given when sending.
    pub batch_id: Vec<u8>,
    /// Sequences the batch got, or the server's reason for refusing it.
    pub result: Result<(u64, u64), String>,
}

/// Sends batches on the acked path (DEALER to the acked ROUTER) and reads their acks.
pub struct AckedSender {
    socket: zmq::Socket,
    next_id: u64,
    /// Send each batch as one packed frame (`packed=1`): much cheaper per record.
    packed: bool,
}

/// The frames of a batch: `[prefix...][stream][attributes][body]+`, or one packed body frame.
fn batch_frames<'a>(
    prefix: &[&'a [u8]],
    stream: &'a str,
    attributes: &'a str,
    bodies: &[&'a [u8]],
    packed: &'a Option<Vec<u8>>,
) -> Vec<&'a [u8]> {
    let mut frames: Vec<&[u8]> = prefix.to_vec();
    frames.push(stream.as_bytes());
    frames.push(attributes.as_bytes());
    match packed {
        Some(packed) => frames.push(packed),
        None => frames.extend_from_slice(bodies),
    }
    frames
}

fn attributes(level: u8, source: &str, packed: bool) -> String {
    let mut text = format!("level={level} source={}", source.replace(' ', "_"));
    if packed {
        text.push_str(" packed=1");
    }
    text
}

impl AckedSender {
    /// Connects to the acked endpoint.
    pub fn connect(ctx: &zmq::Context, endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(ctx, endpoint, None)
    }

    /// Connects to the acked endpoint as a CURVE client with `keys` (else the process's keys,
    /// if set).
    pub fn connect_with(
        ctx: &zmq::Context,
        endpoint: &str,
        keys: Option<&depot_common::security::ClientKeys>,
    ) -> Result<Self, ClientError> {
        let socket = ctx.socket(zmq::DEALER)?;
        depot_common::security::apply_process_client(&socket)?;
        depot_common::security::apply_client(&socket, keys)?;
        socket.set_linger(1_000)?;
        socket.connect(endpoint)?;
        Ok(AckedSender {
            socket,
            next_id: 1,
            packed: true,
        })
    }

    /// Whether batches go as one packed frame each (`packed=1`, the default: cheaper on both
    /// sides, and with CURVE, which seals every frame, by far) or as a frame per record.
    pub fn with_packed(mut self, packed: bool) -> Self {
        self.packed = packed;
        self
    }

    /// Sends one batch without waiting; returns its batch id.
    pub fn send(
        &mut self,
        stream: &str,
        level: u8,
        source: &str,
        bodies: &[&[u8]],
    ) -> Result<Vec<u8>, ClientError> {
        let id = self.next_id.to_be_bytes().to_vec();
        self.next_id += 1;
        let attributes = attributes(level, source, self.packed);
        let packed = self.packed.then(|| protocol::pack_bodies(bodies));
        let frames = batch_frames(&[&id], stream, &attributes, bodies, &packed);
        self.socket.send_multipart(frames, 0)?;
        Ok(id)
    }

    /// Waits for the next ack.
    pub fn recv_ack(&mut self, timeout: Duration) -> Result<Ack, ClientError> {
        if self.socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
            return Err(ClientError::Timeout(timeout));
        }
        let frames = self.socket.recv_multipart(0)?;
        match frames.as_slice() {
            [id, marker, reason] if marker.as_slice() == protocol::ERROR_MARKER => Ok(Ack {
                batch_id: id.clone(),
                result: Err(String::from_utf8_lossy(reason).into_owned()),
            }),
            [id, first, last] if first.len() == 8 && last.len() == 8 => Ok(Ack {
                batch_id: id.clone(),
                result: Ok((be_u64(first), be_u64(last))),
            }),
            _ => Err(ClientError::Protocol(format!(
                "unexpected ack of {} frames",
                frames.len()
            ))),
        }
    }

    /// Sends one batch and waits until it is durable; returns its first and last sequence.
    pub fn send_durable(
        &mut self,
        stream: &str,
        level: u8,
        source: &str,
        bodies: &[&[u8]],
        timeout: Duration,
    ) -> Result<(u64, u64), ClientError> {
        let id = self.send(stream, level, source, bodies)?;
        loop {
            let ack = self.recv_ack(timeout)?;
            if ack.batch_id == id {
                return ack.result.map_err(ClientError::Refused);
            }
        }
    }
}

/// Sends records fire-and-forget (PUSH to logd's PULL): durable within one commit interval of
/// arrival, no answer. A full pipe makes `send` wait, so nothing is dropped on this side.
pub struct PushSender {
    socket: zmq::Socket,
    /// Send each batch as one packed frame (`packed=1`).
    packed: bool,
}

impl PushSender {
    /// Connects to the PULL endpoint.
    pub fn connect(ctx: &zmq::Context, endpoint: &str) -> Result<Self, ClientError> {
        let socket = ctx.socket(zmq::PUSH)?;
        depot_common::security::apply_process_client(&socket)?;
        // Queued records still go out when the sender is dropped, for up to 5 s.
        socket.set_linger(5_000)?;
        socket.connect(endpoint)?;
        Ok(PushSender {
            socket,
            packed: true,
        })
    }

    /// Whether batches go as one packed frame each (`packed=1`, the default: cheaper on both
    /// sides, and with CURVE, which seals every frame, by far) or as a frame per record.
    pub fn with_packed(mut self, packed: bool) -> Self {
        self.packed = packed;
        self
    }

    /// Sends records sharing a stream, level and source.
    pub fn send(
        &self,
        stream: &str,
        level: u8,
        source: &str,
        bodies: &[&[u8]],
    ) -> Result<(), ClientError> {
        let attributes = attributes(level, source, self.packed);
        let packed = self.packed.then(|| protocol::pack_bodies(bodies));
        let frames = batch_frames(&[], stream, &attributes, bodies, &packed);
        self.socket.send_multipart(frames, 0)?;
        Ok(())
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

/// One message from the replay endpoint.
enum ReplayEvent {
    Record(Received),
    End(u64),
    Error(String),
}

fn parse_replay_message(frames: Vec<Vec<u8>>) -> Result<ReplayEvent, ClientError> {
    let count = frames.len();
    let Ok([_, second, third]) = <[Vec<u8>; 3]>::try_from(frames) else {
        return Err(ClientError::Protocol(format!(
            "replay message of {count} frames"
        )));
    };
    if second == protocol::END_MARKER && third.len() == 8 {
        return Ok(ReplayEvent::End(be_u64(&third)));
    }
    if second == protocol::ERROR_MARKER {
        return Ok(ReplayEvent::Error(
            String::from_utf8_lossy(&third).into_owned(),
        ));
    }
    record_from(&second, third).map(ReplayEvent::Record)
}

/// A record from its header and body frames.
fn record_from(header: &[u8], body: Vec<u8>) -> Result<Received, ClientError> {
    let header =
        protocol::decode_header(header).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Received { header, body })
}

/// Reads a stream from `from` through replay over SUB, until the end marker.
pub fn replay(
    ctx: &zmq::Context,
    endpoint: &str,
    stream: &str,
    start: &str,
    timeout: Duration,
    mut each: impl FnMut(Received) -> bool,
) -> Result<u64, ClientError> {
    let socket = ctx.socket(zmq::SUB)?;
    depot_common::security::apply_process_client(&socket)?;
    socket.set_linger(0)?;
    socket.set_rcvhwm(100_000)?;
    socket.connect(endpoint)?;
    let topic = format!("{}{stream}/{start}/{}", protocol::REPLAY_PREFIX, nonce());
    socket.set_subscribe(topic.as_bytes())?;
    loop {
        if socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
            return Err(ClientError::Timeout(timeout));
        }
        match parse_replay_message(socket.recv_multipart(0)?)? {
            ReplayEvent::Record(record) => {
                if !each(record) {
                    return Ok(0);
                }
            }
            ReplayEvent::End(last) => return Ok(last),
            ReplayEvent::Error(reason) => return Err(ClientError::Refused(reason)),
        }
    }
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), depot_store::now_ns())
}

/// A stream followed from a start sequence: replay first, then live, joined with no gap and no
/// duplicate. Gaps in live (a slow subscriber loses messages) are filled by replay, and an idle
/// subscription checks once a second that nothing was missed at the seam.
pub struct Subscription {
    live: zmq::Socket,
    replay: zmq::Socket,
    stream: String,
    /// Next sequence to deliver; 0 until the first replay tells where a time-based start is.
    expected: u64,
    /// Start of the first replay (`replay/<stream>/<start>/...`), used once.
    first_start: Option<String>,
    /// The first sequence to deliver when the start is a sequence (past the end of the stream
    /// the replay ends at once, and delivery must still begin there).
    start_seq: u64,
    /// Topic of the replay in progress, if any.
    replaying: Option<Vec<u8>>,
    /// Live records ahead of `expected`, waiting for a replay to fill the gap before them.
    ahead: BTreeMap<u64, Received>,
    last_activity: Instant,
}

/// How long an idle subscription waits before asking replay whether it missed anything.
const IDLE_PROBE: Duration = Duration::from_secs(1);

impl Subscription {
    /// Follows `stream` from `start`, a replay start: a sequence (`1` = everything stored), a
    /// time (`@<unix ms>`) or an age (`-10m`).
    pub fn start(
        ctx: &zmq::Context,
        live_endpoint: &str,
        replay_endpoint: &str,
        stream: &str,
        start: &str,
    ) -> Result<Self, ClientError> {
        let live = ctx.socket(zmq::SUB)?;
        depot_common::security::apply_process_client(&live)?;
        live.set_linger(0)?;
        live.set_rcvhwm(100_000)?;
        live.connect(live_endpoint)?;
        live.set_subscribe(format!("{stream} ").as_bytes())?;
        let replay = ctx.socket(zmq::SUB)?;
        depot_common::security::apply_process_client(&replay)?;
        replay.set_linger(0)?;
        replay.set_rcvhwm(100_000)?;
        replay.connect(replay_endpoint)?;
        let mut subscription = Subscription {
            live,
            replay,
            stream: stream.to_string(),
            expected: 0,
            first_start: Some(start.to_string()),
            start_seq: match protocol::parse_start(start) {
                Ok(protocol::ReplayStart::Seq(seq)) => seq,
                _ => 0,
            },
            replaying: None,
            ahead: BTreeMap::new(),
            last_activity: Instant::now(),
        };
        subscription.start_replay()?;
        Ok(subscription)
    }

    fn start_replay(&mut self) -> Result<(), ClientError> {
        if let Some(old) = self.replaying.take() {
            self.replay.set_unsubscribe(&old)?;
        }
        let start = self
            .first_start
            .take()
            .unwrap_or_else(|| self.expected.to_string());
        let topic = format!(
            "{}{}/{}/{}",
            protocol::REPLAY_PREFIX,
            self.stream,
            start,
            nonce()
        )
        .into_bytes();
        self.replay.set_subscribe(&topic)?;
        self.replaying = Some(topic);
        Ok(())
    }

    /// The next record in sequence order, or `None` if none arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Received>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.take_ahead() {
                return Ok(Some(record));
            }
            let gap_before_ahead = self
                .ahead
                .first_key_value()
                .is_some_and(|(seq, _)| *seq > self.expected);
            if self.replaying.is_none() && gap_before_ahead {
                self.start_replay()?;
            }
            let now = Instant::now();
            if self.replaying.is_none() && now.duration_since(self.last_activity) >= IDLE_PROBE {
                self.last_activity = now;
                self.start_replay()?;
            }
            // A zero timeout still looks at the sockets once before giving up.
            let wait = deadline
                .min(now + IDLE_PROBE)
                .saturating_duration_since(now);
            let mut items = [
                self.replay.as_poll_item(zmq::POLLIN),
                self.live.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, wait.as_millis() as i64)?;
            let (replay_ready, live_ready) = (items[0].is_readable(), items[1].is_readable());
            if !replay_ready && !live_ready && Instant::now() >= deadline {
                return Ok(None);
            }
            if replay_ready {
                let frames = self.replay.recv_multipart(0)?;
                let is_current = self.replaying.as_deref() == frames.first().map(Vec::as_slice);
                if is_current {
                    match parse_replay_message(frames)? {
                        ReplayEvent::Record(record) => {
                            if let Some(record) = self.accept(record) {
                                return Ok(Some(record));
                            }
                        }
                        ReplayEvent::End(last) => {
                            if self.expected == 0 {
                                self.expected = (last + 1).max(self.start_seq);
                            }
                            if let Some(topic) = self.replaying.take() {
                                self.replay.set_unsubscribe(&topic)?;
                            }
                            self.last_activity = Instant::now();
                        }
                        ReplayEvent::Error(reason) => return Err(ClientError::Refused(reason)),
                    }
                }
            }
            if live_ready {
                let frames = self.live.recv_multipart(0)?;
                let count = frames.len();
                let Ok([_, header, body]) = <[Vec<u8>; 3]>::try_from(frames) else {
                    return Err(ClientError::Protocol(format!(
                        "live message of {count} frames"
                    )));
                };
                let record = record_from(&header, body)?;
                self.last_activity = Instant::now();
                if self.replaying.is_some() {
                    if record.header.seq >= self.expected {
                        self.ahead.insert(record.header.seq, record);
                    }
                } else if let Some(record) = self.accept(record) {
                    return Ok(Some(record));
                }
            }
        }
    }

    /// Delivers `record` if it is the expected one; keeps it for later if it is ahead (and asks
    /// replay for the gap); drops it if it was delivered already.
    fn accept(&mut self, record: Received) -> Option<Received> {
        let seq = record.header.seq;
        if self.expected == 0 {
            // The first record of a time-based start fixes where the sequence begins.
            self.expected = seq;
        }
        if seq == self.expected {
            self.expected += 1;
            self.ahead.remove(&seq);
            return Some(record);
        }
        if seq > self.expected {
            self.ahead.insert(seq, record);
            if self.replaying.is_none() {
                if let Err(e) = self.start_replay() {
                    tracing::warn!(error = %e, "log subscription: cannot start gap replay");
                }
            }
        }
        None
    }

    fn take_ahead(&mut self) -> Option<Received> {
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() < self.expected {
                entry.remove();
            } else if *entry.key() == self.expected && self.replaying.is_none() {
                self.expected += 1;
                return Some(entry.remove());
            } else {
                break;
            }
        }
        None
    }

    /// The next sequence this subscription will deliver.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Its sockets, for waiting on several subscriptions at once.
    fn poll_items(&self) -> [zmq::PollItem<'_>; 2] {
        [
            self.replay.as_poll_item(zmq::POLLIN),
            self.live.as_poll_item(zmq::POLLIN),
        ]
    }
}

/// Endpoints a [`PrefixSubscription`] needs.
#[derive(Debug, Clone)]
pub struct FollowEndpoints {
    /// Live XPUB.
    pub live: String,
    /// Replay XPUB.
    pub replay: String,
    /// Replay API ROUTER (lists the streams).
    pub replay_api: String,
}

/// Every stream whose name starts with a prefix, each joined replay-to-live from the start,
/// and streams created later from their first record. Order holds within a stream.
pub struct PrefixSubscription {
    ctx: zmq::Context,
    endpoints: FollowEndpoints,
    prefix: String,
    start: String,
    streams: BTreeMap<String, Subscription>,
    /// Next subscription to look at, so that no stream starves the others.
    turn: usize,
    last_listing: Instant,
}

/// How often a prefix subscription looks for new streams.
const LISTING_INTERVAL: Duration = Duration::from_secs(1);

impl PrefixSubscription {
    /// Follows every stream starting with `prefix` (`""` for all) from `start` (see
    /// [`Subscription::start`]).
    pub fn start(
        ctx: &zmq::Context,
        endpoints: FollowEndpoints,
        prefix: &str,
        start: &str,
    ) -> Result<Self, ClientError> {
        let mut subscription = PrefixSubscription {
            ctx: ctx.clone(),
            endpoints,
            prefix: prefix.to_string(),
            start: start.to_string(),
            streams: BTreeMap::new(),
            turn: 0,
            last_listing: Instant::now(),
        };
        for stream in list_streams(
            ctx,
            &subscription.endpoints.replay_api,
            prefix,
            Duration::from_secs(10),
        )? {
            let start = subscription.start.clone();
            subscription.add(&stream, &start)?;
        }
        Ok(subscription)
    }

    fn add(&mut self, stream: &str, start: &str) -> Result<(), ClientError> {
        let e = &self.endpoints;
        let subscription = Subscription::start(&self.ctx, &e.live, &e.replay, stream, start)?;
        self.streams.insert(stream.to_string(), subscription);
        Ok(())
    }

    /// Streams followed so far.
    pub fn streams(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }

    /// The next record of any followed stream, or `None` if none arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Received>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.streams.len();
            for i in 0..count {
                let index = (self.turn + i) % count;
                if let Some(subscription) = self.streams.values_mut().nth(index) {
                    if let Some(record) = subscription.next(Duration::ZERO)? {
                        self.turn = index;
                        return Ok(Some(record));
                    }
                }
            }
            if self.last_listing.elapsed() >= LISTING_INTERVAL {
                self.last_listing = Instant::now();
                let listed = list_streams(
                    &self.ctx,
                    &self.endpoints.replay_api,
                    &self.prefix,
                    Duration::from_secs(5),
                )?;
                for stream in listed {
                    if !self.streams.contains_key(&stream) {
                        // Created after the start: everything in it is new.
                        self.add(&stream, "1")?;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = deadline.min(now + Duration::from_millis(100)) - now;
            let mut items: Vec<zmq::PollItem<'_>> = self
                .streams
                .values()
                .flat_map(Subscription::poll_items)
                .collect();
            if items.is_empty() {
                std::thread::sleep(wait);
            } else {
                zmq::poll(&mut items, wait.as_millis().max(1) as i64)?;
            }
        }
    }
}

/// Names of the streams starting with `prefix`, through the replay API.
pub fn list_streams(
    ctx: &zmq::Context,
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<String>, ClientError> {
    let socket = ctx.socket(zmq::DEALER)?;
    depot_common::security::apply_process_client(&socket)?;
    socket.set_linger(0)?;
    socket.connect(endpoint)?;
    let id = nonce().into_bytes();
    let request: [&[u8]; 3] = [b"STREAMS", &id, prefix.as_bytes()];
    socket.send_multipart(request, 0)?;
    loop {
        if socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
            return Err(ClientError::Timeout(timeout));
        }
        let frames = socket.recv_multipart(0)?;
        match frames.as_slice() {
            [got, marker, names] if got == &id && marker.as_slice() == protocol::STREAMS_MARKER => {
                let names = String::from_utf8_lossy(names);
                return Ok(names
                    .lines()
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect());
            }
            [got, marker, reason] if got == &id && marker.as_slice() == protocol::ERROR_MARKER => {
                return Err(ClientError::Refused(
                    String::from_utf8_lossy(reason).into_owned(),
                ))
            }
            _ => continue,
        }
    }
}

/// What to read through the replay API.
#[derive(Debug, Clone, Copy)]
pub struct ApiQuery<'a> {
    /// The stream.
    pub stream: &'a str,
    /// A sequence, `@<unix ms>` or an age such as `-10m`.
    pub start: &'a str,
    /// `key=value` lines: `until`, `level`, `grep`; empty for none.
    pub filter: &'a str,
    /// Records of credit granted at a time.
    pub window: u32,
}

/// Reads through the replay API (credit-based), calling `each` per record until it returns
/// false; returns the last sequence the replay covered.
pub fn replay_api(
    ctx: &zmq::Context,
    endpoint: &str,
    query: ApiQuery<'_>,
    timeout: Duration,
    mut each: impl FnMut(Received) -> bool,
) -> Result<u64, ClientError> {
    let ApiQuery {
        stream,
        start,
        filter,
        window,
    } = query;
    let socket = ctx.socket(zmq::DEALER)?;
    depot_common::security::apply_process_client(&socket)?;
    socket.set_linger(0)?;
    socket.connect(endpoint)?;
    let id = nonce().into_bytes();
    let window = window.max(2);
    let request: [&[u8]; 6] = [
        b"REPLAY",
        &id,
        stream.as_bytes(),
        start.as_bytes(),
        &window.to_be_bytes(),
        filter.as_bytes(),
    ];
    socket.send_multipart(request, 0)?;
    let mut since_grant = 0u32;
    loop {
        if socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
            return Err(ClientError::Timeout(timeout));
        }
        let frames = socket.recv_multipart(0)?;
        let count = frames.len();
        let mut frames = frames.into_iter();
        let (Some(got_id), Some(marker)) = (frames.next(), frames.next()) else {
            return Err(ClientError::Protocol(format!(
                "replay api message of {count} frames"
            )));
        };
        if got_id != id {
            continue;
        }
        match (marker.as_slice(), frames.next(), frames.next()) {
            (protocol::RECORDS_MARKER, Some(packed), None) => {
                let records = protocol::unpack_records(&packed)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                for (header, body) in records {
                    if !each(record_from(header, body.to_vec())?) {
                        let cancel: [&[u8]; 2] = [b"CANCEL", &id];
                        socket.send_multipart(cancel, 0)?;
                        return Ok(0);
                    }
                    since_grant += 1;
                }
                if since_grant >= window / 2 {
                    let grant: [&[u8]; 3] = [b"CREDIT", &id, &since_grant.to_be_bytes()];
                    socket.send_multipart(grant, 0)?;
                    since_grant = 0;
                }
            }
            (protocol::END_MARKER, Some(last), None) if last.len() == 8 => {
                return Ok(be_u64(&last))
            }
            (protocol::ERROR_MARKER, Some(reason), None) => {
                return Err(ClientError::Refused(
                    String::from_utf8_lossy(&reason).into_owned(),
                ))
            }
            _ => {
                return Err(ClientError::Protocol(format!(
                    "replay api message of {count} frames"
                )))
            }
        }
    }
}
