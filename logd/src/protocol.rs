//! logd's wire format: ingest messages in, live and replay messages out. Pure code, no sockets.
//! docs/PROTOCOL.md describes the same frames for client authors.

use std::time::Duration;

/// Stream of records whose sender named none (pyzmq `PUBHandler` without a root topic).
pub const DEFAULT_STREAM: &str = "default";
/// Marker frame of the replay end message.
pub const END_MARKER: &[u8] = b"END";
/// Marker frame of an error message on the replay and acked paths.
pub const ERROR_MARKER: &[u8] = b"ERR";
/// Prefix of every replay topic on the replay XPUB.
pub const REPLAY_PREFIX: &str = "replay/";
/// Longest batch id on the acked path.
pub const MAX_BATCH_ID: usize = 255;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The message has a frame count the endpoint does not accept.
    #[error("wrong frame count {got}: {expected}")]
    FrameCount {
        /// Frames received.
        got: usize,
        /// What the endpoint expects.
        expected: &'static str,
    },
    /// A stream name that is empty, too long, or has spaces or control characters.
    #[error("invalid stream name: {0}")]
    Stream(String),
    /// The attributes frame does not parse.
    #[error("invalid attributes: {0}")]
    Attributes(String),
    /// The message is larger than the endpoint's limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// More frames than the endpoint's `max_frames`.
    #[error("message of {got} frames exceeds the limit of {limit}")]
    TooManyFrames {
        /// Frames received.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch id that is empty or too long.
    #[error("batch id must be 1 to 255 bytes")]
    BatchId,
    /// A replay subscription that does not parse.
    #[error("invalid replay topic: {0}")]
    ReplayTopic(String),
    /// A header frame that does not decode.
    #[error("invalid record header: {0}")]
    Header(String),
}

/// Severity names, syslog numbering: index = level.
const LEVEL_NAMES: [&str; 8] = [
    "EMERG", "ALERT", "CRIT", "ERROR", "WARN", "NOTICE", "INFO", "DEBUG",
];
/// Level of records that name none.
pub const DEFAULT_LEVEL: u8 = 6;

/// The level's name as used in topics and output (`INFO`, `WARN`, ...).
pub fn level_name(level: u8) -> &'static str {
    LEVEL_NAMES.get(level as usize).copied().unwrap_or("DEBUG")
}

/// Parses a level: a syslog number 0-7 or a name from syslog, Python logging or tracing.
pub fn parse_level(text: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if let Ok(n) = text.parse::<u8>() {
        return (n <= 7).then_some(n);
    }
    let level = match text.to_ascii_uppercase().as_str() {
        "EMERG" | "EMERGENCY" | "PANIC" => 0,
        "ALERT" => 1,
        "CRIT" | "CRITICAL" | "FATAL" => 2,
        "ERR" | "ERROR" => 3,
        "WARN" | "WARNING" => 4,
        "NOTICE" => 5,
        "INFO" | "INFORMATIONAL" => 6,
        "DEBUG" | "TRACE" => 7,
        _ => return None,
    };
    Some(level)
}

/// Checks a stream name for logd: the store's rules, and no spaces (topics use one as separator).
pub fn check_stream(name: &[u8]) -> Result<&str, ProtocolError> {
    let name = std::str::from_utf8(name).map_err(|_| ProtocolError::Stream("not UTF-8".into()))?;
    depot_store::validate_stream_name(name).map_err(ProtocolError::Stream)?;
    if name.contains(' ') {
        return Err(ProtocolError::Stream("must not contain spaces".into()));
    }
    if depot_store::is_internal_stream(name) {
        return Err(ProtocolError::Stream(format!(
            "names starting with {:?} are reserved for Depot's services",
            depot_store::INTERNAL_STREAM_PREFIX
        )));
    }
    Ok(name)
}

/// Records to store, as one ingest message carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestBatch<'a> {
    /// Target stream.
    pub stream: &'a str,
    /// Level of every record in the batch.
    pub level: u8,
    /// Sender, as it names itself.
    pub source: &'a str,
    /// One body per record.
    pub bodies: Vec<&'a [u8]>,
    /// How many trailing frames of the message hold the bodies.
    pub body_frames: usize,
    /// The body frames are packed: each holds several records (`packed=1`).
    pub packed: bool,
}

/// Takes one `length u32 BE | bytes` item off the front of `data`; `None` if it is cut short.
fn take_prefixed<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let item = data.get(4..4 + len)?;
    *data = &data[4 + len..];
    Some(item)
}

/// Appends one `length u32 BE | bytes` item.
fn put_prefixed(out: &mut Vec<u8>, item: &[u8]) {
    out.extend_from_slice(&(item.len() as u32).to_be_bytes());
    out.extend_from_slice(item);
}

/// Splits a packed body frame (`packed=1`): records as `length u32 BE | bytes`, repeated.
pub fn unpack_bodies(mut frame: &[u8]) -> Result<Vec<&[u8]>, ProtocolError> {
    let mut bodies = Vec::new();
    while !frame.is_empty() {
        let body = take_prefixed(&mut frame)
            .ok_or_else(|| ProtocolError::Attributes("packed frame cut short".into()))?;
        bodies.push(body);
    }
    Ok(bodies)
}

/// Counts the records of a packed body frame without splitting it.
pub fn count_packed(mut frame: &[u8]) -> Result<usize, ProtocolError> {
    let mut count = 0;
    while !frame.is_empty() {
        take_prefixed(&mut frame)
            .ok_or_else(|| ProtocolError::Attributes("packed frame cut short".into()))?;
        count += 1;
    }
    Ok(count)
}

/// Packs bodies into one frame for `packed=1`.
pub fn pack_bodies(bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 4).sum());
    for body in bodies {
        put_prefixed(&mut out, body);
    }
    out
}

/// The records of the body frames, unpacked if `packed`.
fn bodies_of<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
    packed: bool,
) -> Result<Vec<&[u8]>, ProtocolError> {
    if !packed {
        return Ok(frames.iter().map(|f| &f[..]).collect());
    }
    let mut bodies = Vec::new();
    for frame in frames {
        bodies.extend(unpack_bodies(frame)?);
    }
    if bodies.is_empty() {
        return Err(ProtocolError::Attributes(
            "packed frames hold no record".into(),
        ));
    }
    Ok(bodies)
}

/// The attributes of an ingest message.
struct Attributes<'a> {
    level: u8,
    source: &'a str,
    packed: bool,
}

/// Parses the attributes frame: space-separated `key=value` (`level`, `source`, `packed`);
/// empty is fine.
fn parse_attributes(frame: &[u8]) -> Result<Attributes<'_>, ProtocolError> {
    let text =
        std::str::from_utf8(frame).map_err(|_| ProtocolError::Attributes("not UTF-8".into()))?;
    let (mut level, mut source, mut packed) = (DEFAULT_LEVEL, "", false);
    for pair in text.split_ascii_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ProtocolError::Attributes(format!("{pair:?} is not key=value")))?;
        match key {
            "level" => {
                level = parse_level(value.as_bytes())
                    .ok_or_else(|| ProtocolError::Attributes(format!("unknown level {value:?}")))?
            }
            "source" => source = value,
            "packed" => packed = value == "1",
            // Unknown keys are allowed, so newer clients keep working against older servers.
            _ => {}
        }
    }
    Ok(Attributes {
        level,
        source,
        packed,
    })
}

fn total_size<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> usize {
    frames.iter().map(|f| f.len()).sum()
}

fn check_size<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
    limit: usize,
) -> Result<(), ProtocolError> {
    let size = total_size(frames);
    if size > limit {
        return Err(ProtocolError::TooLarge { size, limit });
    }
    Ok(())
}

/// Parses a fire-and-forget message (PULL): `[stream][body]` or `[stream][attributes][body]+`.
pub fn parse_push<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
    limit: usize,
) -> Result<IngestBatch<'_>, ProtocolError> {
    check_size(frames, limit)?;
    match frames {
        [stream, body] => Ok(IngestBatch {
            stream: check_stream(&stream[..])?,
            level: DEFAULT_LEVEL,
            source: "",
            bodies: vec![&body[..]],
            body_frames: 1,
            packed: false,
        }),
        [stream, attributes, bodies @ ..] if !bodies.is_empty() => {
            let attributes = parse_attributes(&attributes[..])?;
            Ok(IngestBatch {
                stream: check_stream(&stream[..])?,
                level: attributes.level,
                source: attributes.source,
                bodies: bodies_of(bodies, attributes.packed)?,
                body_frames: bodies.len(),
                packed: attributes.packed,
            })
        }
        _ => Err(ProtocolError::FrameCount {
            got: frames.len(),
            expected: "[stream][body] or [stream][attributes][body]+",
        }),
    }
}

/// Parses a message from a PUB publisher: `[topic][message]`, pyzmq `PUBHandler` style.
/// The topic is `<root>.<LEVEL>[.<sub>]`: the stream is the part before the level name, the
/// sub-topic becomes the source. A topic without a level name is the stream itself, at INFO.
pub fn parse_pub<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
    limit: usize,
) -> Result<IngestBatch<'_>, ProtocolError> {
    check_size(frames, limit)?;
    let [topic, body] = frames else {
        return Err(ProtocolError::FrameCount {
            got: frames.len(),
            expected: "[topic][message]",
        });
    };
    let topic = std::str::from_utf8(&topic[..])
        .map_err(|_| ProtocolError::Stream("topic is not UTF-8".into()))?;
    let segments: Vec<&str> = topic.split('.').collect();
    let level_at = segments
        .iter()
        .position(|s| parse_level(s.as_bytes()).is_some() && s.parse::<u8>().is_err());
    let (stream, level, source) = match level_at {
        Some(0) => (
            DEFAULT_STREAM,
            segments[0],
            topic.get(segments[0].len() + 1..).unwrap_or(""),
        ),
        Some(i) => {
            let stream_len = segments[..i].iter().map(|s| s.len() + 1).sum::<usize>() - 1;
            let rest = stream_len + 1 + segments[i].len() + 1;
            (
                &topic[..stream_len],
                segments[i],
                topic.get(rest..).unwrap_or(""),
            )
        }
        None => (topic, "INFO", ""),
    };
    Ok(IngestBatch {
        stream: check_stream(stream.as_bytes())?,
        level: parse_level(level.as_bytes()).unwrap_or(DEFAULT_LEVEL),
        source,
        bodies: vec![&body[..]],
        body_frames: 1,
        packed: false,
    })
}

/// An acked batch (its id and records), or the refusal with the batch id when there is one.
pub type AckedParse<'a> = Result<(&'a [u8], IngestBatch<'a>), (Option<&'a [u8]>, ProtocolError)>;

/// Parses an acked message (what follows the ROUTER's identity frame):
/// `[batch id][stream][attributes][body]+`. The error carries the batch id when there is one,
/// so the refusal can be answered.
pub fn parse_acked<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
    limit: usize,
) -> AckedParse<'_> {
    let Some((batch_id, rest)) = frames.split_first() else {
        return Err((
            None,
            ProtocolError::FrameCount {
                got: 0,
                expected: "[batch id][stream][attributes][body]+",
            },
        ));
    };
    let id = &batch_id[..];
    if id.is_empty() || id.len() > MAX_BATCH_ID {
        return Err((None, ProtocolError::BatchId));
    }
    check_size(rest, limit).map_err(|e| (Some(id), e))?;
    let [stream, attributes, bodies @ ..] = rest else {
        return Err((
            Some(id),
            ProtocolError::FrameCount {
                got: frames.len(),
                expected: "[batch id][stream][attributes][body]+",
            },
        ));
    };
    if bodies.is_empty() {
        return Err((
            Some(id),
            ProtocolError::FrameCount {
                got: frames.len(),
                expected: "[batch id][stream][attributes][body]+",
            },
        ));
    }
    let attributes = parse_attributes(&attributes[..]).map_err(|e| (Some(id), e))?;
    let stream = check_stream(&stream[..]).map_err(|e| (Some(id), e))?;
    Ok((
        id,
        IngestBatch {
            stream,
            level: attributes.level,
            source: attributes.source,
            bodies: bodies_of(bodies, attributes.packed).map_err(|e| (Some(id), e))?,
            body_frames: bodies.len(),
            packed: attributes.packed,
        },
    ))
}

/// Body bytes a packed live message carries at most (a batch above it is split).
pub const PACKED_LIVE_BYTES: usize = 64 * 1024;

/// A packed live message: consecutive records of one stream, level, source and receive time,
/// as `[topic][header of the first][count u32 BE][bodies packed as for packed=1]`. Record `i`
/// has sequence `header.seq + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLive<'a> {
    /// The first record's header.
    pub header: Header,
    /// The records' bodies, in sequence order.
    pub bodies: Vec<&'a [u8]>,
}

/// Decodes the frames of a packed live message (the topic is not checked).
pub fn decode_packed_live<F: std::ops::Deref<Target = [u8]>>(
    frames: &[F],
) -> Result<PackedLive<'_>, ProtocolError> {
    let [_topic, header, count, packed] = frames else {
        return Err(ProtocolError::Header(format!(
            "a packed live message has 4 frames, not {}",
            frames.len()
        )));
    };
    let header = decode_header(header)?;
    let count: [u8; 4] = count[..]
        .try_into()
        .map_err(|_| ProtocolError::Header("the count frame is not 4 bytes".into()))?;
    let bodies = unpack_bodies(packed)?;
    if bodies.len() != u32::from_be_bytes(count) as usize {
        return Err(ProtocolError::Header(format!(
            "the count frame says {} records, the packed frame holds {}",
            u32::from_be_bytes(count),
            bodies.len()
        )));
    }
    Ok(PackedLive { header, bodies })
}

/// Topic of a live record: `<stream> <LEVEL>`, so that a prefix selects streams by hierarchy
/// (`app.`), one stream exactly (`app.web `), or one stream at one level (`app.web ERROR`).
pub fn live_topic(stream: &str, level: u8) -> Vec<u8> {
    format!("{stream} {}", level_name(level)).into_bytes()
}

/// The header frame of a live or replayed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Sequence in the stream.
    pub seq: u64,
    /// Receive time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Level, syslog numbering.
    pub level: u8,
    /// Stream name.
    pub stream: String,
    /// Sender.
    pub source: String,
}

/// Encodes a header: `seq u64 BE | ts_ns u64 BE | level u8 | stream length u8 | stream | source`.
pub fn encode_header(seq: u64, ts_ns: u64, level: u8, stream: &str, source: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(stream, source));
    encode_header_into(&mut out, seq, ts_ns, level, stream, source);
    out
}

/// Length of the header [`encode_header`] makes.
pub fn header_len(stream: &str, source: &str) -> usize {
    18 + stream.len().min(255) + source.len()
}

/// Appends a header to `out`.
pub fn encode_header_into(
    out: &mut Vec<u8>,
    seq: u64,
    ts_ns: u64,
    level: u8,
    stream: &str,
    source: &str,
) {
    let stream = &stream.as_bytes()[..stream.len().min(255)];
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts_ns.to_be_bytes());
    out.push(level);
    out.push(stream.len() as u8);
    out.extend_from_slice(stream);
    out.extend_from_slice(source.as_bytes());
}

/// Marker frame of a batch of records on the replay API.
pub const RECORDS_MARKER: &[u8] = b"RECS";

/// Appends one record to a replay API batch: `header length u32 BE | header | body length u32
/// BE | body`.
pub fn pack_record(
    out: &mut Vec<u8>,
    seq: u64,
    ts_ns: u64,
    level: u8,
    stream: &str,
    source: &str,
    body: &[u8],
) {
    out.extend_from_slice(&(header_len(stream, source) as u32).to_be_bytes());
    encode_header_into(out, seq, ts_ns, level, stream, source);
    put_prefixed(out, body);
}

/// A packed record's header and body frames.
pub type PackedRecord<'a> = (&'a [u8], &'a [u8]);

/// Splits a replay API batch into (header, body) pairs.
pub fn unpack_records(mut packed: &[u8]) -> Result<Vec<PackedRecord<'_>>, ProtocolError> {
    let mut records = Vec::new();
    while !packed.is_empty() {
        let header = take_prefixed(&mut packed);
        let body = take_prefixed(&mut packed);
        let (Some(header), Some(body)) = (header, body) else {
            return Err(ProtocolError::Header("record batch cut short".into()));
        };
        records.push((header, body));
    }
    Ok(records)
}

/// Decodes a header frame.
pub fn decode_header(frame: &[u8]) -> Result<Header, ProtocolError> {
    let bad = |why: &str| ProtocolError::Header(why.into());
    if frame.len() < 18 {
        return Err(bad("shorter than 18 bytes"));
    }
    let seq = u64::from_be_bytes(frame[0..8].try_into().map_err(|_| bad("seq"))?);
    let ts_ns = u64::from_be_bytes(frame[8..16].try_into().map_err(|_| bad("timestamp"))?);
    let level = frame[16];
    let stream_len = frame[17] as usize;
    let stream = frame
        .get(18..18 + stream_len)
        .ok_or_else(|| bad("stream name cut short"))?;
    let source = &frame[18 + stream_len..];
    Ok(Header {
        seq,
        ts_ns,
        level,
        stream: String::from_utf8(stream.to_vec()).map_err(|_| bad("stream name not UTF-8"))?,
        source: String::from_utf8_lossy(source).into_owned(),
    })
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStart {
    /// At this sequence (or the first stored one after it).
    Seq(u64),
    /// At the first record received at or after this time, ns since the Unix epoch.
    Time(u64),
    /// At the first record received within this long before the request.
    Ago(Duration),
}

/// A replay asked for by subscribing to `replay/<stream>/<start>/<nonce>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The stream.
    pub stream: String,
    /// Where to start.
    pub start: ReplayStart,
}

/// Parses a replay topic `replay/<stream>/<start>/<nonce>`; `<start>` is a sequence (`1`), a
/// time in Unix milliseconds (`@1764014400000`) or an age (`-10m`, units s, m, h, d); the nonce
/// is any non-empty text that makes the topic unique to one subscriber.
pub fn parse_replay_topic(topic: &[u8]) -> Result<ReplayRequest, ProtocolError> {
    let bad = |why: String| ProtocolError::ReplayTopic(why);
    let text = std::str::from_utf8(topic).map_err(|_| bad("not UTF-8".into()))?;
    let rest = text
        .strip_prefix(REPLAY_PREFIX)
        .ok_or_else(|| bad(format!("must start with {REPLAY_PREFIX:?}")))?;
    let (rest, nonce) = rest
        .rsplit_once('/')
        .ok_or_else(|| bad("expected replay/<stream>/<start>/<nonce>".into()))?;
    let (stream, start) = rest
        .rsplit_once('/')
        .ok_or_else(|| bad("expected replay/<stream>/<start>/<nonce>".into()))?;
    if nonce.is_empty() {
        return Err(bad("the nonce must not be empty".into()));
    }
    let stream = check_stream(stream.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let start = parse_start(start).map_err(bad)?;
    Ok(ReplayRequest {
        stream: stream.to_string(),
        start,
    })
}

/// Parses a replay start: a sequence (`1`), a time in Unix milliseconds (`@1764014400000`) or an
/// age (`-10m`).
pub fn parse_start(start: &str) -> Result<ReplayStart, String> {
    if let Some(ms) = start.strip_prefix('@') {
        let ms: u64 = ms.parse().map_err(|_| format!("invalid time {start:?}"))?;
        Ok(ReplayStart::Time(ms.saturating_mul(1_000_000)))
    } else if let Some(age) = start.strip_prefix('-') {
        Ok(ReplayStart::Ago(
            parse_age(age).ok_or_else(|| format!("invalid age {start:?}"))?,
        ))
    } else {
        Ok(ReplayStart::Seq(
            start
                .parse()
                .map_err(|_| format!("invalid start {start:?}"))?,
        ))
    }
}

/// Which records a replay API request wants, besides its stream and start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Stop after this sequence.
    pub until_seq: Option<u64>,
    /// Stop at the first record received after this time, ns since the Unix epoch.
    pub until_ts: Option<u64>,
    /// Only records at this level or more severe (lower number).
    pub max_level: Option<u8>,
    /// Only records whose body contains these bytes.
    pub grep: Option<Vec<u8>>,
}

impl Filter {
    /// Whether `level` and `body` pass the level and text filters.
    pub fn accepts(&self, level: u8, body: &[u8]) -> bool {
        self.max_level.is_none_or(|max| level <= max)
            && self.grep.as_ref().is_none_or(|needle| {
                needle.is_empty() || body.windows(needle.len()).any(|w| w == needle.as_slice())
            })
    }
}

/// Parses a filter frame: `key=value` lines (`until=<seq>` or `until=@<unix ms>`, `level=<name
/// or 0-7>`, `grep=<text to the end of the line>`); empty means no filter.
pub fn parse_filter(frame: &[u8]) -> Result<Filter, ProtocolError> {
    let bad = |why: String| ProtocolError::Attributes(why);
    let text = std::str::from_utf8(frame).map_err(|_| bad("filter is not UTF-8".into()))?;
    let mut filter = Filter::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("{line:?} is not key=value")))?;
        match key.trim() {
            "until" => match parse_start(value.trim()).map_err(bad)? {
                ReplayStart::Seq(seq) => filter.until_seq = Some(seq),
                ReplayStart::Time(ts) => filter.until_ts = Some(ts),
                ReplayStart::Ago(_) => {
                    return Err(bad("until takes a sequence or @<unix ms>".into()))
                }
            },
            "level" => {
                filter.max_level = Some(
                    parse_level(value.as_bytes())
                        .ok_or_else(|| bad(format!("unknown level {value:?}")))?,
                )
            }
            "grep" => filter.grep = Some(value.as_bytes().to_vec()),
            other => return Err(bad(format!("unknown filter {other:?}"))),
        }
    }
    Ok(filter)
}

/// A request on the replay API (after the ROUTER's identity frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `["REPLAY"][id][stream][start][credit u32 BE]([filter])`: start a replay.
    Replay {
        /// The client's id for this replay.
        id: Vec<u8>,
        /// Stream to read.
        stream: String,
        /// Where to start.
        start: ReplayStart,
        /// Records the server may send before more credit comes.
        credit: u32,
        /// What to leave out and where to stop.
        filter: Filter,
    },
    /// `["CREDIT"][id][n u32 BE]`: the client can take `n` more records.
    Credit {
        /// The replay.
        id: Vec<u8>,
        /// More records allowed.
        n: u32,
    },
    /// `["CANCEL"][id]`: stop the replay.
    Cancel {
        /// The replay.
        id: Vec<u8>,
    },
    /// `["STREAMS"][id][prefix]`: names of the streams starting with `prefix`.
    Streams {
        /// The request.
        id: Vec<u8>,
        /// Name prefix (empty: all).
        prefix: String,
    },
}

/// Marker frame of the answer to `STREAMS`: `[id]["STREAMS"][names, one per line]`.
pub const STREAMS_MARKER: &[u8] = b"STREAMS";

/// Parses a replay API request; errors carry the request id when there is one.
pub fn parse_api_request(
    frames: &[Vec<u8>],
) -> Result<ApiRequest, (Option<Vec<u8>>, ProtocolError)> {
    let count = |expected| {
        (
            None,
            ProtocolError::FrameCount {
                got: frames.len(),
                expected,
            },
        )
    };
    let (command, rest) = frames
        .split_first()
        .ok_or_else(|| count("[command][id]..."))?;
    let (id, rest) = rest
        .split_first()
        .ok_or_else(|| count("[command][id]..."))?;
    if id.is_empty() || id.len() > MAX_BATCH_ID {
        return Err((None, ProtocolError::BatchId));
    }
    let with_id = |e| (Some(id.clone()), e);
    let u32_of = |frame: &[u8]| -> Result<u32, (Option<Vec<u8>>, ProtocolError)> {
        let bytes: [u8; 4] = frame.try_into().map_err(|_| {
            with_id(ProtocolError::Attributes(
                "credit must be 4 bytes, big-endian".into(),
            ))
        })?;
        Ok(u32::from_be_bytes(bytes))
    };
    match (command.as_slice(), rest) {
        (b"REPLAY", [stream, start, credit, filter @ ..]) if filter.len() <= 1 => {
            let stream = check_stream(stream).map_err(with_id)?.to_string();
            let start = std::str::from_utf8(start)
                .map_err(|_| ProtocolError::ReplayTopic("start is not UTF-8".into()))
                .and_then(|s| parse_start(s).map_err(ProtocolError::ReplayTopic))
                .map_err(with_id)?;
            let credit = u32_of(credit)?;
            let filter = filter
                .first()
                .map(|f| parse_filter(f))
                .transpose()
                .map_err(with_id)?
                .unwrap_or_default();
            Ok(ApiRequest::Replay {
                id: id.clone(),
                stream,
                start,
                credit,
                filter,
            })
        }
        (b"CREDIT", [n]) => Ok(ApiRequest::Credit {
            id: id.clone(),
            n: u32_of(n)?,
        }),
        (b"CANCEL", []) => Ok(ApiRequest::Cancel { id: id.clone() }),
        (b"STREAMS", [prefix]) => Ok(ApiRequest::Streams {
            id: id.clone(),
            prefix: String::from_utf8(prefix.clone())
                .map_err(|_| with_id(ProtocolError::Stream("prefix is not UTF-8".into())))?,
        }),
        (b"REPLAY" | b"CREDIT" | b"CANCEL" | b"STREAMS", _) => Err(with_id(ProtocolError::FrameCount {
            got: frames.len(),
            expected: "REPLAY id stream start credit [filter] | CREDIT id n | CANCEL id | STREAMS id prefix",
        })),
        (other, _) => Err(with_id(ProtocolError::Attributes(format!(
            "unknown command {:?}",
            String::from_utf8_lossy(other)
        )))),
    }
}

fn parse_age(text: &str) -> Option<Duration> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3_600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn internal_stream_names_are_refused() {
        assert!(matches!(
            check_stream(b"$cache"),
            Err(ProtocolError::Stream(_))
        ));
        assert!(check_stream(b"app$1").is_ok());
    }

    #[test]
    fn push_accepts_short_and_attributed_forms() {
        let short = frames(&[b"app", b"hello"]);
        let batch = parse_push(&short, 1024).unwrap();
        assert_eq!(
            (batch.stream, batch.level, batch.source),
            ("app", DEFAULT_LEVEL, "")
        );
        assert_eq!(batch.bodies, vec![b"hello".as_slice()]);

        let long = frames(&[b"app.web", b"level=warn source=web-1 future=x", b"a", b"b"]);
        let batch = parse_push(&long, 1024).unwrap();
        assert_eq!(
            (batch.stream, batch.level, batch.source),
            ("app.web", 4, "web-1")
        );
        assert_eq!(batch.bodies.len(), 2);
    }

    #[test]
    fn push_refuses_bad_messages() {
        assert!(matches!(
            parse_push(&frames(&[b"app"]), 1024),
            Err(ProtocolError::FrameCount { .. })
        ));
        assert!(matches!(
            parse_push(&frames(&[]), 1024),
            Err(ProtocolError::FrameCount { .. })
        ));
        assert!(matches!(
            parse_push(&frames(&[b"", b"x"]), 1024),
            Err(ProtocolError::Stream(_))
        ));
        assert!(matches!(
            parse_push(&frames(&[b"a b", b"x"]), 1024),
            Err(ProtocolError::Stream(_))
        ));
        assert!(matches!(
            parse_push(&frames(&[b"\xff", b"x"]), 1024),
            Err(ProtocolError::Stream(_))
        ));
        assert!(matches!(
            parse_push(&frames(&[b"app", b"level=loud", b"x"]), 1024),
            Err(ProtocolError::Attributes(_))
        ));
        assert!(matches!(
            parse_push(&frames(&[b"app", b"levelwarn", b"x"]), 1024),
            Err(ProtocolError::Attributes(_))
        ));
        assert!(matches!(
            parse_push(&frames(&[b"app", &[0u8; 2000]]), 1024),
            Err(ProtocolError::TooLarge {
                size: 2003,
                limit: 1024
            })
        ));
    }

    #[test]
    fn packed_bodies_carry_many_records_per_frame() {
        let packed = pack_bodies(&[b"one", b"", b"three"]);
        let message = frames(&[
            b"app",
            b"packed=1 level=error",
            &packed,
            &pack_bodies(&[b"four"]),
        ]);
        let batch = parse_push(&message, 1024).unwrap();
        assert_eq!(batch.bodies, vec![&b"one"[..], b"", b"three", b"four"]);
        assert_eq!((batch.body_frames, batch.packed, batch.level), (2, true, 3));
        let cut = frames(&[b"app", b"packed=1", &packed[..packed.len() - 1]]);
        assert!(matches!(
            parse_push(&cut, 1024),
            Err(ProtocolError::Attributes(_))
        ));
        let empty = frames(&[b"app", b"packed=1", b""]);
        assert!(parse_push(&empty, 1024).is_err());
        let acked = frames(&[b"b1", b"app", b"packed=1", &packed]);
        let (_, batch) = parse_acked(&acked, 1024).unwrap();
        assert_eq!((batch.bodies.len(), batch.body_frames), (3, 1));
    }

    #[test]
    fn pub_handler_topics_give_stream_level_and_source() {
        let cases: [(&[u8], &str, u8, &str); 5] = [
            (b"myapp.WARNING", "myapp", 4, ""),
            (b"svc.api.ERROR.db.pool", "svc.api", 3, "db.pool"),
            (b"INFO", DEFAULT_STREAM, 6, ""),
            (b"DEBUG.sub", DEFAULT_STREAM, 7, "sub"),
            (b"metrics.cpu", "metrics.cpu", 6, ""),
        ];
        for (topic, stream, level, source) in cases {
            let message = frames(&[topic, b"disk low\n"]);
            let batch = parse_pub(&message, 1024).unwrap();
            assert_eq!(
                (batch.stream, batch.level, batch.source),
                (stream, level, source)
            );
        }
        assert!(parse_pub(&frames(&[b"a", b"b", b"c"]), 1024).is_err());
    }

    #[test]
    fn acked_messages_carry_their_batch_id_into_errors() {
        let ok = frames(&[b"b1", b"app", b"", b"x", b"y"]);
        let (id, batch) = parse_acked(&ok, 1024).unwrap();
        assert_eq!(id, b"b1");
        assert_eq!(batch.bodies.len(), 2);
        let short = frames(&[b"b2", b"app", b""]);
        let (id, err) = parse_acked(&short, 1024).unwrap_err();
        assert_eq!(id, Some(b"b2".as_slice()));
        assert!(matches!(err, ProtocolError::FrameCount { .. }));
        let no_id = frames(&[b"", b"app", b"", b"x"]);
        let (id, _) = parse_acked(&no_id, 1024).unwrap_err();
        assert_eq!(id, None);
        let bad_stream = frames(&[b"b3", b"bad name", b"", b"x"]);
        let (id, err) = parse_acked(&bad_stream, 1024).unwrap_err();
        assert_eq!(id, Some(b"b3".as_slice()));
        assert!(matches!(err, ProtocolError::Stream(_)));
    }

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let frame = encode_header(42, 1_700_000_000_000_000_000, 3, "app.web", "host-1");
        let header = decode_header(&frame).unwrap();
        assert_eq!(header.seq, 42);
        assert_eq!(header.level, 3);
        assert_eq!(header.stream, "app.web");
        assert_eq!(header.source, "host-1");
        assert!(decode_header(&frame[..10]).is_err());
        let mut cut = frame.clone();
        cut[17] = 200;
        assert!(decode_header(&cut).is_err());
    }

    #[test]
    fn record_batches_round_trip_and_cut_batches_are_refused() {
        let mut packed = Vec::new();
        pack_record(&mut packed, 7, 100, 3, "app", "host", b"first");
        pack_record(&mut packed, 8, 101, 6, "app", "", b"");
        let records = unpack_records(&packed).unwrap();
        assert_eq!(records.len(), 2);
        let header = decode_header(records[0].0).unwrap();
        assert_eq!(
            (header.seq, header.level, header.source.as_str()),
            (7, 3, "host")
        );
        assert_eq!(records[0].1, b"first");
        assert_eq!(decode_header(records[1].0).unwrap().seq, 8);
        assert!(records[1].1.is_empty());
        for cut in 1..packed.len() {
            if unpack_records(&packed[..cut]).is_ok() {
                // Only a cut exactly between two records parses.
                assert_eq!(cut, 4 + header_len("app", "host") + 4 + 5);
            }
        }
        assert!(unpack_records(&[]).unwrap().is_empty());
    }

    #[test]
    fn live_topics_support_prefix_selection() {
        let topic = live_topic("app.web", 3);
        assert_eq!(topic, b"app.web ERROR");
        assert!(topic.starts_with(b"app."));
        assert!(topic.starts_with(b"app.web "));
        assert!(!live_topic("app.webhooks", 6).starts_with(b"app.web "));
    }

    #[test]
    fn replay_topics_parse_every_start_form() {
        let r = parse_replay_topic(b"replay/app.web/1/n1").unwrap();
        assert_eq!(
            (r.stream.as_str(), r.start),
            ("app.web", ReplayStart::Seq(1))
        );
        let r = parse_replay_topic(b"replay/a/b/@1764014400000/x").unwrap();
        assert_eq!(
            (r.stream.as_str(), r.start),
            ("a/b", ReplayStart::Time(1_764_014_400_000_000_000))
        );
        let r = parse_replay_topic(b"replay/s/-10m/x").unwrap();
        assert_eq!(r.start, ReplayStart::Ago(Duration::from_secs(600)));
        for bad in [
            &b""[..],
            b"replay/",
            b"replay/s/1/",
            b"replay/s/x/n",
            b"replay//1/n",
            b"replay/s/-10y/n",
            b"other/s/1/n",
            b"replay/s/1",
        ] {
            assert!(
                parse_replay_topic(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn api_requests_parse_and_errors_keep_the_id() {
        let replay = frames(&[
            b"REPLAY",
            b"r1",
            b"app",
            b"-10m",
            &7u32.to_be_bytes(),
            b"level=warn\ngrep=disk full\nuntil=@1000\n",
        ]);
        match parse_api_request(&replay).unwrap() {
            ApiRequest::Replay {
                id,
                stream,
                start,
                credit,
                filter,
            } => {
                assert_eq!(
                    (id.as_slice(), stream.as_str(), credit),
                    (&b"r1"[..], "app", 7)
                );
                assert_eq!(start, ReplayStart::Ago(Duration::from_secs(600)));
                assert_eq!(filter.max_level, Some(4));
                assert_eq!(filter.grep.as_deref(), Some(&b"disk full"[..]));
                assert_eq!(filter.until_ts, Some(1_000_000_000));
                assert!(filter.accepts(3, b"the disk full again"));
                assert!(!filter.accepts(6, b"disk full"));
                assert!(!filter.accepts(3, b"fine"));
            }
            other => panic!("{other:?}"),
        }
        let credit = frames(&[b"CREDIT", b"r1", &5u32.to_be_bytes()]);
        assert_eq!(
            parse_api_request(&credit).unwrap(),
            ApiRequest::Credit {
                id: b"r1".to_vec(),
                n: 5
            }
        );
        let cancel = frames(&[b"CANCEL", b"r1"]);
        assert_eq!(
            parse_api_request(&cancel).unwrap(),
            ApiRequest::Cancel { id: b"r1".to_vec() }
        );
        for bad in [
            frames(&[b"REPLAY", b"r2", b"app", b"1"]),
            frames(&[b"REPLAY", b"r2", b"app", b"x", &1u32.to_be_bytes()]),
            frames(&[b"REPLAY", b"r2", b"app", b"1", b"12"]),
            frames(&[
                b"REPLAY",
                b"r2",
                b"app",
                b"1",
                &1u32.to_be_bytes(),
                b"colour=red",
            ]),
            frames(&[b"FETCH", b"r2"]),
        ] {
            let (id, _) = parse_api_request(&bad).unwrap_err();
            assert_eq!(id.as_deref(), Some(&b"r2"[..]));
        }
        assert_eq!(
            parse_api_request(&frames(&[b"REPLAY"])).unwrap_err().0,
            None
        );
        assert_eq!(parse_api_request(&frames(&[])).unwrap_err().0, None);
    }

    #[test]
    fn levels_parse_from_names_and_numbers() {
        assert_eq!(parse_level(b"WARNING"), Some(4));
        assert_eq!(parse_level(b"critical"), Some(2));
        assert_eq!(parse_level(b"7"), Some(7));
        assert_eq!(parse_level(b"8"), None);
        assert_eq!(parse_level(b"loud"), None);
        assert_eq!(level_name(3), "ERROR");
    }
}
