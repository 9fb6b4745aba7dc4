//! Clock frames, pure: ticks on the PUB, timer requests and replies on the ROUTER, firings.
//! Every decoder checks frame counts and sizes; nothing here panics on network input.
//! docs/PROTOCOL.md (section clock) describes the same frames for clients in other languages.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest attribute frame of an ADD.
pub const MAX_ATTRS_BYTES: usize = 1024;
/// Longest topic a timer may publish on.
pub const MAX_TOPIC_BYTES: usize = 255;
/// Timers listed per LIST reply; a client asks again from the `next` id for more.
pub const LIST_PAGE: usize = 1_000;
/// Topics starting with this belong to tick streams; timers may not publish on them.
pub const TICK_PREFIX: &str = "tick.";

/// Why a frame sequence was refused. The text is what the client gets in `["ERR"][reason]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// No frames after the envelope.
    #[error("empty request")]
    Empty,
    /// The command frame is not one we know.
    #[error("unknown command {0:?}; expected ADD, CANCEL, LIST or STREAMS")]
    UnknownCommand(String),
    /// Wrong number of frames for the command.
    #[error("{command} takes {expected} frames after the command, got {got}")]
    FrameCount {
        /// The command.
        command: &'static str,
        /// What it takes.
        expected: &'static str,
        /// What came.
        got: usize,
    },
    /// A frame that should hold a u64 does not.
    #[error("{0} must be 8 bytes (u64 big-endian)")]
    NotU64(&'static str),
    /// The attributes of an ADD are wrong.
    #[error("{0}")]
    Attrs(String),
    /// The payload is larger than configured.
    #[error("payload of {size} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A frame of a reply or tick is malformed (client side).
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// One tick as published: `[b"tick.<period>"][seq][scheduled ns][sent ns]`, u64 big-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// `tick.<period>`.
    pub topic: String,
    /// `scheduled_ns / period`: continues across restarts.
    pub seq: u64,
    /// When the tick was due, ns since the Unix epoch.
    pub scheduled_ns: u64,
    /// When the server sent it, ns since the Unix epoch (minus `scheduled_ns` = lateness).
    pub sent_ns: u64,
}

impl Tick {
    /// The four frames.
    pub fn encode(&self) -> [Vec<u8>; 4] {
        [
            self.topic.as_bytes().to_vec(),
            self.seq.to_be_bytes().to_vec(),
            self.scheduled_ns.to_be_bytes().to_vec(),
            self.sent_ns.to_be_bytes().to_vec(),
        ]
    }

    /// Parses the four frames.
    pub fn decode(frames: &[Vec<u8>]) -> Result<Tick, ProtocolError> {
        let [topic, seq, scheduled, sent] = frames else {
            return Err(ProtocolError::Malformed("tick: expected 4 frames"));
        };
        Ok(Tick {
            topic: String::from_utf8(topic.clone())
                .map_err(|_| ProtocolError::Malformed("tick topic"))?,
            seq: u64_frame(seq, "sequence")?,
            scheduled_ns: u64_frame(scheduled, "scheduled time")?,
            sent_ns: u64_frame(sent, "send time")?,
        })
    }
}

fn u64_frame(frame: &[u8], what: &'static str) -> Result<u64, ProtocolError> {
    <[u8; 8]>::try_from(frame)
        .map(u64::from_be_bytes)
        .map_err(|_| ProtocolError::NotU64(what))
}

/// When a timer first fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At this wall time, ns since the Unix epoch.
    At(u64),
    /// This long after the server received the request.
    In(Duration),
}

/// Where a firing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `FIRED` message to the connection that added the timer.
    Reply,
    /// A message on the clock PUB under this topic.
    Topic(String),
}

/// `ADD`: a timer to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddTimer {
    /// First deadline.
    pub when: When,
    /// Period of a periodic timer.
    pub every: Option<Duration>,
    /// How many times it fires (default: once, or forever when periodic).
    pub count: Option<u64>,
    /// Where firings go.
    pub target: Target,
    /// Delivered with every firing.
    pub payload: Vec<u8>,
}

/// A request on the timers ROUTER (after the envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `["ADD"][attrs][payload]`.
    Add(AddTimer),
    /// `["CANCEL"][id]`.
    Cancel(u64),
    /// `["LIST"]` or `["LIST"][after id]`.
    List {
        /// List ids above this one.
        after: Option<u64>,
    },
    /// `["STREAMS"]`: the configured tick streams.
    Streams,
}

impl Request {
    /// Parses a request; `max_payload` bounds an ADD's payload.
    pub fn decode(frames: &[Vec<u8>], max_payload: usize) -> Result<Request, ProtocolError> {
        let (command, rest) = frames.split_first().ok_or(ProtocolError::Empty)?;
        let count = |expected, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ProtocolError::FrameCount {
                    command: match command.as_slice() {
                        b"ADD" => "ADD",
                        b"CANCEL" => "CANCEL",
                        b"LIST" => "LIST",
                        _ => "STREAMS",
                    },
                    expected,
                    got: rest.len(),
                })
            }
        };
        match command.as_slice() {
            b"ADD" => {
                count("2 (attributes, payload)", rest.len() == 2)?;
                if rest[1].len() > max_payload {
                    return Err(ProtocolError::PayloadTooLarge {
                        size: rest[1].len(),
                        max: max_payload,
                    });
                }
                parse_add(&rest[0], rest[1].clone()).map(Request::Add)
            }
            b"CANCEL" => {
                count("1 (id)", rest.len() == 1)?;
                u64_frame(&rest[0], "timer id").map(Request::Cancel)
            }
            b"LIST" => {
                count("0 or 1 (after id)", rest.len() <= 1)?;
                let after = match rest.first() {
                    Some(frame) if !frame.is_empty() => Some(u64_frame(frame, "after id")?),
                    _ => None,
                };
                Ok(Request::List { after })
            }
            b"STREAMS" => {
                count("0", rest.is_empty())?;
                Ok(Request::Streams)
            }
            other => Err(ProtocolError::UnknownCommand(
                String::from_utf8_lossy(&other[..other.len().min(32)]).into_owned(),
            )),
        }
    }

    /// The frames of this request (client side).
    pub fn encode(&self) -> Vec<Vec<u8>> {
        match self {
            Request::Add(add) => {
                let mut attrs = String::new();
                match add.when {
                    When::At(ns) => attrs.push_str(&format!("at={ns}\n")),
                    When::In(d) => attrs.push_str(&format!("in={}ns\n", d.as_nanos())),
                }
                if let Some(every) = add.every {
                    attrs.push_str(&format!("every={}ns\n", every.as_nanos()));
                }
                if let Some(count) = add.count {
                    attrs.push_str(&format!("count={count}\n"));
                }
                match &add.target {
                    Target::Reply => attrs.push_str("target=reply\n"),
                    Target::Topic(topic) => {
                        attrs.push_str(&format!("target=topic\ntopic={topic}\n"))
                    }
                }
                vec![b"ADD".to_vec(), attrs.into_bytes(), add.payload.clone()]
            }
            Request::Cancel(id) => vec![b"CANCEL".to_vec(), id.to_be_bytes().to_vec()],
            Request::List { after } => match after {
                Some(id) => vec![b"LIST".to_vec(), id.to_be_bytes().to_vec()],
                None => vec![b"LIST".to_vec()],
            },
            Request::Streams => vec![b"STREAMS".to_vec()],
        }
    }
}

/// Parses `name=value` lines (no duplicates, bounded size).
pub fn parse_attrs(text: &[u8]) -> Result<BTreeMap<String, String>, ProtocolError> {
    if text.len() > MAX_ATTRS_BYTES {
        return Err(ProtocolError::Attrs(format!(
            "attributes of {} bytes exceed the limit of {MAX_ATTRS_BYTES}",
            text.len()
        )));
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| ProtocolError::Attrs("attributes are not UTF-8".into()))?;
    let mut attrs = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line.split_once('=').ok_or_else(|| {
            ProtocolError::Attrs(format!("attribute line {line:?} is not name=value"))
        })?;
        if attrs
            .insert(name.trim().to_string(), value.trim().to_string())
            .is_some()
        {
            return Err(ProtocolError::Attrs(format!(
                "attribute {name:?} given twice"
            )));
        }
    }
    Ok(attrs)
}

/// Parses a time: ns since the Unix epoch, or RFC 3339 (`2026-11-24T23:00:00Z`).
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ns) = text.parse::<u64>() {
        return Ok(ns);
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("invalid time {text:?} ({e}); write ns since the epoch or RFC 3339 like 2026-11-24T23:00:00Z")
    })?;
    time_ns(time).ok_or_else(|| format!("time {text:?} is out of range"))
}

/// A wall time as ns since the Unix epoch.
pub fn time_ns(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
}

fn parse_add(attrs: &[u8], payload: Vec<u8>) -> Result<AddTimer, ProtocolError> {
    let mut attrs = parse_attrs(attrs)?;
    let bad = ProtocolError::Attrs;
    // Durations travel and are stored as u64 nanoseconds: a longer one (> 584 years) could not
    // be encoded again, so it is refused here rather than deep in the timer store.
    let duration = |name: &str, text: String| {
        let duration =
            depot_common::config::parse_duration(&text).map_err(|e| bad(format!("{name}: {e}")))?;
        if u64::try_from(duration.as_nanos()).is_err() {
            return Err(bad(format!("{name}: {text:?} is too long")));
        }
        Ok(duration)
    };
    let when = match (attrs.remove("at"), attrs.remove("in")) {
        (Some(at), None) => When::At(parse_time(&at).map_err(|e| bad(format!("at: {e}")))?),
        (None, Some(after)) => When::In(duration("in", after)?),
        _ => {
            return Err(bad(
                "give exactly one of at= (a time) and in= (a duration)".into()
            ))
        }
    };
    let every = attrs
        .remove("every")
        .map(|text| duration("every", text))
        .transpose()?;
    let count = attrs
        .remove("count")
        .map(|text| match text.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(bad(format!("count: {text:?} is not a whole number >= 1"))),
        })
        .transpose()?;
    if count.is_some_and(|n| n > 1) && every.is_none() {
        return Err(bad("count above 1 needs every= (a periodic timer)".into()));
    }
    let topic = attrs.remove("topic");
    let queue = attrs.remove("queue");
    let target = match (attrs.remove("target").as_deref(), topic, queue) {
        (None | Some("reply"), None, None) => Target::Reply,
        (None | Some("topic"), Some(topic), None) => {
            if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
                return Err(bad(format!(
                    "topic must be 1 to {MAX_TOPIC_BYTES} bytes"
                )));
            }
            if topic.starts_with(TICK_PREFIX) {
                return Err(bad(format!(
                    "topic {topic:?}: topics starting with {TICK_PREFIX:?} belong to tick streams"
                )));
            }
            Target::Topic(topic)
        }
        (None | Some("queue"), None, Some(_)) | (Some("queue"), None, None) => {
            return Err(bad(
                "queue targets need Depot's queue service, which does not exist yet; use target=reply or topic=".into(),
            ))
        }
        (Some("topic"), None, _) => return Err(bad("target=topic needs topic=".into())),
        (Some(other), _, _) if !["reply", "topic", "queue"].contains(&other) => {
            return Err(bad(format!(
                "unknown target {other:?}; expected reply, topic or queue"
            )))
        }
        _ => return Err(bad("target, topic= and queue= contradict each other".into())),
    };
    if let Some(name) = attrs.keys().next() {
        return Err(bad(format!(
            "unknown attribute {name:?}; expected at, in, every, count, target, topic"
        )));
    }
    Ok(AddTimer {
        when,
        every,
        count,
        target,
        payload,
    })
}

/// A timer firing: `[id][scheduled ns][fired ns][late][payload]`, after `["FIRED"]` on the
/// ROUTER or after the topic on the PUB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The timer.
    pub id: u64,
    /// The deadline this firing is for, ns since the epoch.
    pub scheduled_ns: u64,
    /// When it was sent, ns since the epoch.
    pub fired_ns: u64,
    /// Fired well after its deadline (after a restart, or overload): `late_after` or more.
    pub late: bool,
    /// The timer's payload.
    pub payload: Vec<u8>,
}

impl Firing {
    /// The five frames after the `FIRED` command or topic.
    pub fn encode_after(&self, head: &[u8]) -> [Vec<u8>; 6] {
        [
            head.to_vec(),
            self.id.to_be_bytes().to_vec(),
            self.scheduled_ns.to_be_bytes().to_vec(),
            self.fired_ns.to_be_bytes().to_vec(),
            vec![u8::from(self.late)],
            self.payload.clone(),
        ]
    }

    /// Parses the frames after the `FIRED` command or the topic.
    pub fn decode(frames: &[Vec<u8>]) -> Result<Firing, ProtocolError> {
        let [id, scheduled, fired, late, payload] = frames else {
            return Err(ProtocolError::Malformed("firing: expected 5 frames"));
        };
        let late = match late.as_slice() {
            [0] => false,
            [1] => true,
            _ => return Err(ProtocolError::Malformed("firing late flag")),
        };
        Ok(Firing {
            id: u64_frame(id, "timer id")?,
            scheduled_ns: u64_frame(scheduled, "scheduled time")?,
            fired_ns: u64_frame(fired, "fired time")?,
            late,
            payload: payload.clone(),
        })
    }
}

/// A timer as LIST reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerInfo {
    /// Its id.
    pub id: u64,
    /// Next deadline, ns since the epoch.
    pub due_ns: u64,
    /// Period in ns; 0 for a one-shot.
    pub every_ns: u64,
    /// Firings left; 0 = unlimited.
    pub remaining: u64,
    /// Firings so far.
    pub fired: u64,
    /// `reply` or `topic:<topic>`.
    pub target: String,
    /// Payload bytes.
    pub payload_bytes: u64,
}

impl TimerInfo {
    /// One entry frame: `name=value` lines.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "id={}\ndue={}\nevery={}\nremaining={}\nfired={}\ntarget={}\npayload_bytes={}\n",
            self.id,
            self.due_ns,
            self.every_ns,
            self.remaining,
            self.fired,
            self.target,
            self.payload_bytes
        )
        .into_bytes()
    }

    /// Parses an entry frame.
    pub fn decode(frame: &[u8]) -> Result<TimerInfo, ProtocolError> {
        let attrs = parse_attrs(frame)?;
        let number = |name: &str| {
            attrs
                .get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(ProtocolError::Malformed("timer entry"))
        };
        Ok(TimerInfo {
            id: number("id")?,
            due_ns: number("due")?,
            every_ns: number("every")?,
            remaining: number("remaining")?,
            fired: number("fired")?,
            target: attrs
                .get("target")
                .cloned()
                .ok_or(ProtocolError::Malformed("timer entry"))?,
            payload_bytes: number("payload_bytes")?,
        })
    }
}

/// A tick stream as STREAMS reports it: one `<topic> <period ns> <precision>` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// `tick.<period>`.
    pub topic: String,
    /// Period in ns.
    pub period_ns: u64,
    /// `normal` or `high`.
    pub precision: String,
}

/// A reply on the timers ROUTER (after the envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `["OK"][id][due ns]`: the timer is stored durably and armed.
    Added {
        /// Its id.
        id: u64,
        /// Its first deadline.
        due_ns: u64,
    },
    /// `["OK"][id]`: the timer is removed durably and will not fire.
    Cancelled {
        /// Its id.
        id: u64,
    },
    /// `["ERR"][reason]`.
    Error(String),
    /// `["FIRED"][id][scheduled][fired][late][payload]`.
    Fired(Firing),
    /// `["TIMERS"][next id or empty][entry]...`: a page of LIST.
    Timers {
        /// Ask `LIST next` for the following page; None when this was the last.
        next: Option<u64>,
        /// The timers of this page.
        entries: Vec<TimerInfo>,
    },
    /// `["STREAMS"][lines]`.
    Streams(Vec<StreamInfo>),
}

impl Reply {
    /// The frames of this reply.
    pub fn encode(&self) -> Vec<Vec<u8>> {
        match self {
            Reply::Added { id, due_ns } => vec![
                b"OK".to_vec(),
                id.to_be_bytes().to_vec(),
                due_ns.to_be_bytes().to_vec(),
            ],
            Reply::Cancelled { id } => vec![b"OK".to_vec(), id.to_be_bytes().to_vec()],
            Reply::Error(reason) => vec![b"ERR".to_vec(), reason.as_bytes().to_vec()],
            Reply::Fired(firing) => firing.encode_after(b"FIRED").to_vec(),
            Reply::Timers { next, entries } => {
                let mut frames = vec![
                    b"TIMERS".to_vec(),
                    next.map(|n| n.to_be_bytes().to_vec()).unwrap_or_default(),
                ];
                frames.extend(entries.iter().map(TimerInfo::encode));
                frames
            }
            Reply::Streams(streams) => {
                let text: String = streams
                    .iter()
                    .map(|s| format!("{} {} {}\n", s.topic, s.period_ns, s.precision))
                    .collect();
                vec![b"STREAMS".to_vec(), text.into_bytes()]
            }
        }
    }

    /// Parses a reply (client side).
    pub fn decode(frames: &[Vec<u8>]) -> Result<Reply, ProtocolError> {
        let (head, rest) = frames
            .split_first()
            .ok_or(ProtocolError::Malformed("empty reply"))?;
        match (head.as_slice(), rest) {
            (b"OK", [id, due]) => Ok(Reply::Added {
                id: u64_frame(id, "timer id")?,
                due_ns: u64_frame(due, "due time")?,
            }),
            (b"OK", [id]) => Ok(Reply::Cancelled {
                id: u64_frame(id, "timer id")?,
            }),
            (b"ERR", [reason]) => Ok(Reply::Error(String::from_utf8_lossy(reason).into_owned())),
            (b"FIRED", rest) => Firing::decode(rest).map(Reply::Fired),
            (b"TIMERS", [next, entries @ ..]) => Ok(Reply::Timers {
                next: if next.is_empty() {
                    None
                } else {
                    Some(u64_frame(next, "next id")?)
                },
                entries: entries
                    .iter()
                    .map(|e| TimerInfo::decode(e))
                    .collect::<Result<_, _>>()?,
            }),
            (b"STREAMS", [text]) => {
                let text = std::str::from_utf8(text)
                    .map_err(|_| ProtocolError::Malformed("streams reply"))?;
                text.lines()
                    .map(|line| {
                        let mut parts = line.split(' ');
                        match (parts.next(), parts.next(), parts.next()) {
                            (Some(topic), Some(period), Some(precision)) => Ok(StreamInfo {
                                topic: topic.into(),
                                period_ns: period
                                    .parse()
                                    .map_err(|_| ProtocolError::Malformed("streams reply"))?,
                                precision: precision.into(),
                            }),
                            _ => Err(ProtocolError::Malformed("streams reply")),
                        }
                    })
                    .collect::<Result<_, _>>()
                    .map(Reply::Streams)
            }
            _ => Err(ProtocolError::Malformed("reply")),
        }
    }
}

/// A ROUTER message's envelope frames and request frames.
pub type EnvelopeAndBody<'a> = (&'a [Vec<u8>], &'a [Vec<u8>]);

/// Splits a ROUTER message into its envelope (identity, plus the empty delimiter a REQ
/// client adds) and the request frames.
pub fn split_envelope(frames: &[Vec<u8>]) -> Option<EnvelopeAndBody<'_>> {
    if frames.is_empty() {
        return None;
    }
    let cut = if frames.len() > 1 && frames[1].is_empty() {
        2
    } else {
        1
    };
    Some(frames.split_at(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    fn add(attrs: &str) -> Result<Request, ProtocolError> {
        Request::decode(&frames(&[b"ADD", attrs.as_bytes(), b"hello"]), 4096)
    }

    #[test]
    fn tick_round_trip_and_bad_frames() {
        let tick = Tick {
            topic: "tick.1ms".into(),
            seq: 7,
            scheduled_ns: 7_000_000,
            sent_ns: 7_000_042,
        };
        let encoded = tick.encode();
        assert_eq!(encoded[1], 7u64.to_be_bytes());
        assert_eq!(Tick::decode(&encoded).unwrap(), tick);
        assert!(Tick::decode(&encoded[..3]).is_err());
        let mut short = encoded.to_vec();
        short[2] = vec![1, 2, 3];
        assert!(Tick::decode(&short).is_err());
    }

    #[test]
    fn add_requests_parse_every_form() {
        assert_eq!(
            add("in=1500ms\ntopic=jobs.nightly").unwrap(),
            Request::Add(AddTimer {
                when: When::In(Duration::from_millis(1500)),
                every: None,
                count: None,
                target: Target::Topic("jobs.nightly".into()),
                payload: b"hello".to_vec(),
            })
        );
        let Request::Add(periodic) = add("at=2026-11-24T23:00:00Z\nevery=1s\ncount=5").unwrap()
        else {
            panic!()
        };
        assert_eq!(periodic.when, When::At(1_795_561_200_000_000_000));
        assert_eq!(periodic.every, Some(Duration::from_secs(1)));
        assert_eq!(periodic.count, Some(5));
        assert_eq!(periodic.target, Target::Reply);
        let Request::Add(ns) = add("at=123\ntarget=reply").unwrap() else {
            panic!()
        };
        assert_eq!(ns.when, When::At(123));
        // The client's encoding is what the server parses.
        let request = Request::Add(periodic);
        assert_eq!(Request::decode(&request.encode(), 4096).unwrap(), request);
    }

    #[test]
    fn bad_add_requests_say_why() {
        let error = |attrs: &str| add(attrs).unwrap_err().to_string();
        assert!(
            error("in=soon").contains("invalid duration"),
            "{}",
            error("in=soon")
        );
        assert!(error("at=yesterday").contains("invalid time"));
        assert!(error("").contains("exactly one of at="));
        assert!(error("at=1\nin=1s").contains("exactly one of at="));
        assert!(error("in=1s\nin=2s").contains("given twice"));
        assert!(error("in=1s\ncolour=red").contains("unknown attribute \"colour\""));
        assert!(error("in=1s\ncount=0").contains("count"));
        assert!(error("in=1s\ncount=3").contains("needs every="));
        assert!(error("in=1s\nqueue=jobs").contains("queue service"));
        assert!(error("in=1s\ntarget=queue").contains("queue service"));
        assert!(error("in=1s\ntarget=topic").contains("needs topic="));
        assert!(error("in=1s\ntarget=carrier-pigeon").contains("unknown target"));
        assert!(error("in=1s\ntopic=tick.1ms").contains("tick streams"));
        assert!(error("in=1s\ntarget=reply\ntopic=x").contains("contradict"));
        assert!(error("no equals sign").contains("not name=value"));
        assert!(error(&"x".repeat(2000)).contains("exceed the limit"));
        let big = Request::decode(&frames(&[b"ADD", b"in=1s", &[0; 5000]]), 4096);
        assert!(matches!(
            big,
            Err(ProtocolError::PayloadTooLarge { size: 5000, .. })
        ));
        let invalid = Request::decode(&frames(&[b"ADD", &[0xff, 0xfe], b""]), 4096);
        assert!(invalid.unwrap_err().to_string().contains("UTF-8"));
    }

    /// Found by fuzzing (fuzz/corpus/clock_request/crash-*): `every=11440000000000s` decoded, but
    /// its nanoseconds overflow u64, so `encode` wrote a request that no longer decoded.
    #[test]
    fn durations_beyond_u64_nanoseconds_are_refused_and_requests_round_trip() {
        let error = |attrs: &str| add(attrs).unwrap_err().to_string();
        assert!(error("in=1s\nevery=11440000000000s")
            .contains("every: \"11440000000000s\" is too long"));
        assert!(error("in=600000d").contains("too long"));
        let request = add("at=1764014400000000000\nevery=200000d\ncount=3").unwrap();
        assert_eq!(Request::decode(&request.encode(), 4096).unwrap(), request);
    }

    #[test]
    fn other_requests_and_their_frame_counts() {
        assert_eq!(
            Request::decode(&frames(&[b"CANCEL", &9u64.to_be_bytes()]), 10).unwrap(),
            Request::Cancel(9)
        );
        assert_eq!(
            Request::decode(&frames(&[b"LIST"]), 10).unwrap(),
            Request::List { after: None }
        );
        assert_eq!(
            Request::decode(&frames(&[b"LIST", &3u64.to_be_bytes()]), 10).unwrap(),
            Request::List { after: Some(3) }
        );
        assert_eq!(
            Request::decode(&frames(&[b"STREAMS"]), 10).unwrap(),
            Request::Streams
        );
        let error = |parts: &[&[u8]]| Request::decode(&frames(parts), 10).unwrap_err().to_string();
        assert!(error(&[b"CANCEL", b"12"]).contains("8 bytes"));
        assert!(error(&[b"CANCEL"]).contains("CANCEL takes 1"));
        assert!(error(&[b"ADD", b"in=1s"]).contains("ADD takes 2"));
        assert!(error(&[b"STREAMS", b"x"]).contains("STREAMS takes 0"));
        assert!(error(&[b"FROB"]).contains("unknown command \"FROB\""));
        assert!(matches!(
            Request::decode(&[], 10),
            Err(ProtocolError::Empty)
        ));
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Added { id: 4, due_ns: 99 },
            Reply::Cancelled { id: 4 },
            Reply::Error("unknown timer id 4".into()),
            Reply::Fired(Firing {
                id: 4,
                scheduled_ns: 10,
                fired_ns: 12,
                late: true,
                payload: b"p".to_vec(),
            }),
            Reply::Timers {
                next: Some(4),
                entries: vec![TimerInfo {
                    id: 4,
                    due_ns: 10,
                    every_ns: 0,
                    remaining: 1,
                    fired: 0,
                    target: "topic:jobs".into(),
                    payload_bytes: 1,
                }],
            },
            Reply::Timers {
                next: None,
                entries: vec![],
            },
            Reply::Streams(vec![StreamInfo {
                topic: "tick.1ms".into(),
                period_ns: 1_000_000,
                precision: "high".into(),
            }]),
        ];
        for reply in replies {
            assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        }
        assert!(Reply::decode(&frames(&[b"FIRED", b"x"])).is_err());
        assert!(Reply::decode(&frames(&[b"HUH"])).is_err());
    }

    #[test]
    fn envelopes_of_dealer_and_req_clients() {
        let dealer = frames(&[b"id", b"LIST"]);
        let (envelope, body) = split_envelope(&dealer).unwrap();
        assert_eq!((envelope.len(), body), (1, &dealer[1..]));
        let req = frames(&[b"id", b"", b"LIST"]);
        let (envelope, body) = split_envelope(&req).unwrap();
        assert_eq!((envelope.len(), body), (2, &req[2..]));
        assert!(split_envelope(&[]).is_none());
    }
}
