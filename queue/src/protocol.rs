//! Queue frames: requests to the ROUTER (5570) and the PULL (5571), and the server's replies,
//! encoded and decoded without sockets. docs/PROTOCOL.md describes every frame.
//!
//! Requests (a DEALER sends them; the ROUTER sees the peer's identity in front):
//! - `PUB` tag queue message+ → `OK` tag first-seq last-seq | `ERR` "PUB" tag reason
//! - `SUB` queue group prefetch → `READY` queue group, then `MSG` queue group batch …
//! - `CREDIT` queue group prefetch; `ACK` queue group seqs; `ACKTO` queue group seq
//! - `UNSUB` queue group; `HB` → `HB`; `STATS` queue? → `STATS` json
//!
//! Fire-and-forget (PUSH to the PULL): queue message+.

/// Longest queue name (its dead-letter queue `<name>.dead` and journal `queue/<name>` must fit
/// the store's stream names).
pub const MAX_QUEUE_NAME: usize = 200;
/// Longest subscription (group) name.
pub const MAX_GROUP_NAME: usize = 200;
/// Longest publish tag.
pub const MAX_TAG: usize = 255;
/// Most messages in one `PUB` or push.
pub const MAX_BATCH: usize = 100_000;
/// Most sequences in one `ACK`.
pub const MAX_ACKS: usize = 100_000;
/// Largest prefetch window a consumer may ask for.
pub const MAX_PREFETCH: u32 = 1_000_000;
/// Bytes in front of each message in a `MSG` batch: seq (8), redeliveries (4), length (4).
pub const DELIVERY_HEADER: usize = 16;

/// Command and reply names, the first frame of every message.
pub mod cmd {
    /// Publish with confirms.
    pub const PUB: &[u8] = b"PUB";
    /// Start consuming.
    pub const SUB: &[u8] = b"SUB";
    /// Change the prefetch window.
    pub const CREDIT: &[u8] = b"CREDIT";
    /// Acknowledge single messages.
    pub const ACK: &[u8] = b"ACK";
    /// Acknowledge every message delivered to this consumer up to a sequence.
    pub const ACKTO: &[u8] = b"ACKTO";
    /// Stop consuming; unacknowledged messages go to other consumers.
    pub const UNSUB: &[u8] = b"UNSUB";
    /// Heartbeat (answered with a heartbeat).
    pub const HB: &[u8] = b"HB";
    /// Figures about queues.
    pub const STATS: &[u8] = b"STATS";
    /// Publish confirm.
    pub const OK: &[u8] = b"OK";
    /// Refusal with a reason.
    pub const ERR: &[u8] = b"ERR";
    /// Subscription confirmed.
    pub const READY: &[u8] = b"READY";
    /// Delivered messages.
    pub const MSG: &[u8] = b"MSG";
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Empty message.
    #[error("empty message")]
    Empty,
    /// The first frame names no command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// Wrong number of frames.
    #[error("{command}: expected {expected}, got {got} frame(s)")]
    FrameCount {
        /// The command.
        command: &'static str,
        /// What it takes.
        expected: &'static str,
        /// Frames after the command frame.
        got: usize,
    },
    /// A frame has the wrong size or content.
    #[error("{command}: bad {field}: {reason}")]
    BadField {
        /// The command.
        command: &'static str,
        /// Which frame.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A message exceeds the size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// A parsed request to the ROUTER.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `PUB tag queue message+`
    Publish {
        /// The client's label for the confirm.
        tag: &'a [u8],
        /// Target queue.
        queue: &'a str,
        /// Index of the first message frame in the request's frames.
        first_message: usize,
    },
    /// `SUB queue group prefetch`
    Subscribe {
        /// The queue.
        queue: &'a str,
        /// Named subscription; empty for the queue's shared work queue.
        group: &'a str,
        /// Most unacknowledged messages in flight to this consumer.
        prefetch: u32,
    },
    /// `CREDIT queue group prefetch`
    Credit {
        /// The queue.
        queue: &'a str,
        /// The subscription.
        group: &'a str,
        /// The new window.
        prefetch: u32,
    },
    /// `ACK queue group seqs` (8 bytes each, big-endian, packed in one frame)
    Ack {
        /// The queue.
        queue: &'a str,
        /// The subscription.
        group: &'a str,
        /// Acknowledged sequences.
        seqs: Vec<u64>,
    },
    /// `ACKTO queue group seq`
    AckThrough {
        /// The queue.
        queue: &'a str,
        /// The subscription.
        group: &'a str,
        /// Every message delivered to this consumer up to here is acknowledged.
        seq: u64,
    },
    /// `UNSUB queue group`
    Unsubscribe {
        /// The queue.
        queue: &'a str,
        /// The subscription.
        group: &'a str,
    },
    /// `HB`
    Heartbeat,
    /// `STATS [queue]`
    Stats {
        /// One queue, or every queue when absent or empty.
        queue: Option<&'a str>,
    },
}

impl Request<'_> {
    /// The command's name, for error replies.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Publish { .. } => "PUB",
            Request::Subscribe { .. } => "SUB",
            Request::Credit { .. } => "CREDIT",
            Request::Ack { .. } => "ACK",
            Request::AckThrough { .. } => "ACKTO",
            Request::Unsubscribe { .. } => "UNSUB",
            Request::Heartbeat => "HB",
            Request::Stats { .. } => "STATS",
        }
    }
}

/// Checks a queue name: 1 to 200 bytes, no control characters.
pub fn validate_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name must be 1 to {MAX_QUEUE_NAME} bytes, got {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("queue name must not contain control characters".into());
    }
    Ok(())
}

fn text<'a>(
    command: &'static str,
    field: &'static str,
    frame: &'a [u8],
    max: usize,
) -> Result<&'a str, ProtocolError> {
    let bad = |reason: String| ProtocolError::BadField {
        command,
        field,
        reason,
    };
    if frame.len() > max {
        return Err(bad(format!("longer than {max} bytes")));
    }
    let text = std::str::from_utf8(frame).map_err(|_| bad("not UTF-8".into()))?;
    if text.chars().any(char::is_control) {
        return Err(bad("contains control characters".into()));
    }
    Ok(text)
}

fn queue_name<'a>(command: &'static str, frame: &'a [u8]) -> Result<&'a str, ProtocolError> {
    let name = text(command, "queue", frame, MAX_QUEUE_NAME)?;
    validate_queue_name(name).map_err(|reason| ProtocolError::BadField {
        command,
        field: "queue",
        reason,
    })?;
    Ok(name)
}

fn group_name<'a>(command: &'static str, frame: &'a [u8]) -> Result<&'a str, ProtocolError> {
    text(command, "group", frame, MAX_GROUP_NAME)
}

/// Decodes a big-endian integer of exactly `N` bytes.
fn be<const N: usize>(
    command: &'static str,
    field: &'static str,
    frame: &[u8],
) -> Result<[u8; N], ProtocolError> {
    frame.try_into().map_err(|_| ProtocolError::BadField {
        command,
        field,
        reason: format!("must be {N} bytes big-endian, got {}", frame.len()),
    })
}

fn prefetch(command: &'static str, frame: &[u8]) -> Result<u32, ProtocolError> {
    let n = u32::from_be_bytes(be::<4>(command, "prefetch", frame)?);
    if n > MAX_PREFETCH {
        return Err(ProtocolError::BadField {
            command,
            field: "prefetch",
            reason: format!("at most {MAX_PREFETCH}"),
        });
    }
    Ok(n)
}

fn expect(
    frames: usize,
    command: &'static str,
    expected: &'static str,
    ok: bool,
) -> Result<(), ProtocolError> {
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::FrameCount {
            command,
            expected,
            got: frames.saturating_sub(1),
        })
    }
}

/// Checks every message frame of a publish or push against the limits.
fn check_messages<F: AsRef<[u8]>>(messages: &[F], limit: usize) -> Result<(), ProtocolError> {
    if messages.len() > MAX_BATCH {
        return Err(ProtocolError::BadField {
            command: "PUB",
            field: "batch",
            reason: format!("more than {MAX_BATCH} messages"),
        });
    }
    match messages
        .iter()
        .map(|m| m.as_ref().len())
        .find(|&n| n > limit)
    {
        Some(size) => Err(ProtocolError::TooLarge { size, limit }),
        None => Ok(()),
    }
}

/// Parses a request's frames (the ROUTER's identity frame removed). On failure returns the
/// command (if recognised) and the context (tag or queue) to address an error reply.
pub fn parse_request<F: AsRef<[u8]>>(
    frames: &[F],
    max_message: usize,
) -> Result<Request<'_>, (Option<&'static str>, Vec<u8>, ProtocolError)> {
    let Some(first) = frames.first() else {
        return Err((None, Vec::new(), ProtocolError::Empty));
    };
    let f = |i: usize| frames[i].as_ref();
    let n = frames.len();
    let context = if n > 1 { f(1).to_vec() } else { Vec::new() };
    let fail = |command: &'static str, e| (Some(command), context.clone(), e);
    match first.as_ref() {
        cmd::PUB => {
            let c = "PUB";
            expect(n, c, "tag, queue, message+", n >= 4).map_err(|e| fail(c, e))?;
            if f(1).len() > MAX_TAG {
                return Err(fail(
                    c,
                    ProtocolError::BadField {
                        command: c,
                        field: "tag",
                        reason: format!("longer than {MAX_TAG} bytes"),
                    },
                ));
            }
            let queue = queue_name(c, f(2)).map_err(|e| fail(c, e))?;
            check_messages(&frames[3..], max_message).map_err(|e| fail(c, e))?;
            Ok(Request::Publish {
                tag: f(1),
                queue,
                first_message: 3,
            })
        }
        cmd::SUB | cmd::CREDIT => {
            let c = if first.as_ref() == cmd::SUB {
                "SUB"
            } else {
                "CREDIT"
            };
            expect(n, c, "queue, group, prefetch", n == 4).map_err(|e| fail(c, e))?;
            let queue = queue_name(c, f(1)).map_err(|e| fail(c, e))?;
            let group = group_name(c, f(2)).map_err(|e| fail(c, e))?;
            let prefetch = prefetch(c, f(3)).map_err(|e| fail(c, e))?;
            Ok(if c == "SUB" {
                Request::Subscribe {
                    queue,
                    group,
                    prefetch,
                }
            } else {
                Request::Credit {
                    queue,
                    group,
                    prefetch,
                }
            })
        }
        cmd::ACK => {
            let c = "ACK";
            expect(n, c, "queue, group, seqs", n == 4).map_err(|e| fail(c, e))?;
            let queue = queue_name(c, f(1)).map_err(|e| fail(c, e))?;
            let group = group_name(c, f(2)).map_err(|e| fail(c, e))?;
            let packed = f(3);
            if packed.is_empty() || packed.len() % 8 != 0 || packed.len() / 8 > MAX_ACKS {
                return Err(fail(
                    c,
                    ProtocolError::BadField {
                        command: c,
                        field: "seqs",
                        reason: format!(
                            "must be 1 to {MAX_ACKS} sequences of 8 bytes, got {} bytes",
                            packed.len()
                        ),
                    },
                ));
            }
            let seqs = packed
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                .collect();
            Ok(Request::Ack { queue, group, seqs })
        }
        cmd::ACKTO => {
            let c = "ACKTO";
            expect(n, c, "queue, group, seq", n == 4).map_err(|e| fail(c, e))?;
            let queue = queue_name(c, f(1)).map_err(|e| fail(c, e))?;
            let group = group_name(c, f(2)).map_err(|e| fail(c, e))?;
            let seq = u64::from_be_bytes(be::<8>(c, "seq", f(3)).map_err(|e| fail(c, e))?);
            Ok(Request::AckThrough { queue, group, seq })
        }
        cmd::UNSUB => {
            let c = "UNSUB";
            expect(n, c, "queue, group", n == 3).map_err(|e| fail(c, e))?;
            let queue = queue_name(c, f(1)).map_err(|e| fail(c, e))?;
            let group = group_name(c, f(2)).map_err(|e| fail(c, e))?;
            Ok(Request::Unsubscribe { queue, group })
        }
        cmd::HB => {
            expect(n, "HB", "nothing", n == 1).map_err(|e| fail("HB", e))?;
            Ok(Request::Heartbeat)
        }
        cmd::STATS => {
            let c = "STATS";
            expect(n, c, "an optional queue", n <= 2).map_err(|e| fail(c, e))?;
            let queue = match frames.get(1).map(AsRef::as_ref) {
                None | Some(b"") => None,
                Some(frame) => Some(queue_name(c, frame).map_err(|e| fail(c, e))?),
            };
            Ok(Request::Stats { queue })
        }
        other => Err((
            None,
            context,
            ProtocolError::UnknownCommand(
                String::from_utf8_lossy(&other[..other.len().min(32)]).into(),
            ),
        )),
    }
}

/// Parses a fire-and-forget message from the PULL: `queue message+`. Returns the queue.
pub fn parse_push<F: AsRef<[u8]>>(frames: &[F], max_message: usize) -> Result<&str, ProtocolError> {
    if frames.len() < 2 {
        return Err(ProtocolError::FrameCount {
            command: "push",
            expected: "queue, message+",
            got: frames.len(),
        });
    }
    let queue = queue_name("push", frames[0].as_ref())?;
    check_messages(&frames[1..], max_message)?;
    Ok(queue)
}

/// `OK tag first last`: the confirm of a durable publish.
pub fn ok(tag: &[u8], first: u64, last: u64) -> [Vec<u8>; 4] {
    [
        cmd::OK.to_vec(),
        tag.to_vec(),
        first.to_be_bytes().to_vec(),
        last.to_be_bytes().to_vec(),
    ]
}

/// `ERR command context reason`: context is the publish tag, or the queue of other commands.
pub fn err(command: &str, context: &[u8], reason: &str) -> [Vec<u8>; 4] {
    [
        cmd::ERR.to_vec(),
        command.as_bytes().to_vec(),
        context.to_vec(),
        reason.as_bytes().to_vec(),
    ]
}

/// `READY queue group`: a subscription is in place.
pub fn ready(queue: &str, group: &str) -> [Vec<u8>; 3] {
    [
        cmd::READY.to_vec(),
        queue.as_bytes().to_vec(),
        group.as_bytes().to_vec(),
    ]
}

/// Appends one delivered message to a `MSG` batch frame.
pub fn pack_delivery(batch: &mut Vec<u8>, seq: u64, redeliveries: u32, payload: &[u8]) {
    batch.extend_from_slice(&seq.to_be_bytes());
    batch.extend_from_slice(&redeliveries.to_be_bytes());
    batch.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    batch.extend_from_slice(payload);
}

/// One message of a `MSG` batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef<'a> {
    /// Its sequence in the queue.
    pub seq: u64,
    /// How often it was delivered before (0 on the first delivery).
    pub redeliveries: u32,
    /// The message.
    pub payload: &'a [u8],
}

/// Splits a `MSG` batch frame into its messages; fails on a truncated or overlong entry.
pub fn unpack_deliveries(mut batch: &[u8]) -> Result<Vec<DeliveryRef<'_>>, ProtocolError> {
    let bad = |reason: &str| ProtocolError::BadField {
        command: "MSG",
        field: "batch",
        reason: reason.into(),
    };
    let mut out = Vec::new();
    while !batch.is_empty() {
        if batch.len() < DELIVERY_HEADER {
            return Err(bad("truncated header"));
        }
        let seq = u64::from_be_bytes(batch[..8].try_into().unwrap_or_default());
        let redeliveries = u32::from_be_bytes(batch[8..12].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(batch[12..16].try_into().unwrap_or_default()) as usize;
        let rest = &batch[DELIVERY_HEADER..];
        if rest.len() < len {
            return Err(bad("payload runs past the frame"));
        }
        out.push(DeliveryRef {
            seq,
            redeliveries,
            payload: &rest[..len],
        });
        batch = &rest[len..];
    }
    Ok(out)
}

/// A reply from the server, as a client reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A durable publish: `OK tag first last`.
    Confirm {
        /// The tag of the `PUB`.
        tag: &'a [u8],
        /// First sequence given.
        first: u64,
        /// Last sequence given.
        last: u64,
    },
    /// `ERR command context reason`
    Error {
        /// The refused command.
        command: &'a str,
        /// Publish tag or queue.
        context: &'a [u8],
        /// Why.
        reason: &'a str,
    },
    /// `READY queue group`
    Ready {
        /// The queue.
        queue: &'a str,
        /// The subscription.
        group: &'a str,
    },
    /// `MSG queue group batch`
    Messages {
        /// The queue.
        queue: &'a str,
        /// The subscription.
        group: &'a str,
        /// The messages.
        deliveries: Vec<DeliveryRef<'a>>,
    },
    /// `HB`
    Heartbeat,
    /// `STATS json`
    Stats(&'a [u8]),
}

/// Parses a server reply (as a DEALER receives it).
pub fn parse_reply<'a, F: AsRef<[u8]>>(frames: &'a [F]) -> Result<Reply<'a>, ProtocolError> {
    let f = |i: usize| frames[i].as_ref();
    let n = frames.len();
    let s = |field: &'static str, frame: &'a [u8]| {
        std::str::from_utf8(frame).map_err(|_| ProtocolError::BadField {
            command: "reply",
            field,
            reason: "not UTF-8".into(),
        })
    };
    let count = |ok: bool, expected| expect(n, "reply", expected, ok);
    match frames.first().map(AsRef::as_ref) {
        None => Err(ProtocolError::Empty),
        Some(cmd::OK) => {
            count(n == 4, "OK tag first last")?;
            Ok(Reply::Confirm {
                tag: f(1),
                first: u64::from_be_bytes(be::<8>("OK", "first", f(2))?),
                last: u64::from_be_bytes(be::<8>("OK", "last", f(3))?),
            })
        }
        Some(cmd::ERR) => {
            count(n == 4, "ERR command context reason")?;
            Ok(Reply::Error {
                command: s("command", f(1))?,
                context: f(2),
                reason: s("reason", f(3))?,
            })
        }
        Some(cmd::READY) => {
            count(n == 3, "READY queue group")?;
            Ok(Reply::Ready {
                queue: s("queue", f(1))?,
                group: s("group", f(2))?,
            })
        }
        Some(cmd::MSG) => {
            count(n == 4, "MSG queue group batch")?;
            Ok(Reply::Messages {
                queue: s("queue", f(1))?,
                group: s("group", f(2))?,
                deliveries: unpack_deliveries(f(3))?,
            })
        }
        Some(cmd::HB) => Ok(Reply::Heartbeat),
        Some(cmd::STATS) => {
            count(n == 2, "STATS json")?;
            Ok(Reply::Stats(f(1)))
        }
        Some(other) => Err(ProtocolError::UnknownCommand(
            String::from_utf8_lossy(&other[..other.len().min(32)]).into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn parses_every_request() {
        let f = frames(&[b"PUB", b"t1", b"orders", b"a", b"b"]);
        assert_eq!(
            parse_request(&f, 10).unwrap(),
            Request::Publish {
                tag: b"t1",
                queue: "orders",
                first_message: 3
            }
        );
        let f = frames(&[b"SUB", b"orders", b"", &7u32.to_be_bytes()]);
        assert_eq!(
            parse_request(&f, 10).unwrap(),
            Request::Subscribe {
                queue: "orders",
                group: "",
                prefetch: 7
            }
        );
        let f = frames(&[b"CREDIT", b"orders", b"billing", &0u32.to_be_bytes()]);
        assert!(matches!(
            parse_request(&f, 10).unwrap(),
            Request::Credit {
                prefetch: 0,
                group: "billing",
                ..
            }
        ));
        let mut seqs = 5u64.to_be_bytes().to_vec();
        seqs.extend_from_slice(&9u64.to_be_bytes());
        let f = frames(&[b"ACK", b"orders", b"", &seqs]);
        assert_eq!(
            parse_request(&f, 10).unwrap(),
            Request::Ack {
                queue: "orders",
                group: "",
                seqs: vec![5, 9]
            }
        );
        let f = frames(&[b"ACKTO", b"orders", b"g", &3u64.to_be_bytes()]);
        assert!(matches!(
            parse_request(&f, 10).unwrap(),
            Request::AckThrough { seq: 3, .. }
        ));
        let f = frames(&[b"UNSUB", b"orders", b"g"]);
        assert!(matches!(
            parse_request(&f, 10).unwrap(),
            Request::Unsubscribe { .. }
        ));
        assert_eq!(
            parse_request(&frames(&[b"HB"]), 10).unwrap(),
            Request::Heartbeat
        );
        assert_eq!(
            parse_request(&frames(&[b"STATS"]), 10).unwrap(),
            Request::Stats { queue: None }
        );
        assert_eq!(
            parse_request(&frames(&[b"STATS", b"q"]), 10).unwrap(),
            Request::Stats { queue: Some("q") }
        );
    }

    #[test]
    fn refuses_malformed_requests_with_the_context_for_the_reply() {
        let cases: Vec<(Vec<Vec<u8>>, Option<&str>)> = vec![
            (frames(&[]), None),
            (frames(&[b"NOPE", b"x"]), None),
            (frames(&[b"PUB", b"t", b"q"]), Some("PUB")),
            (frames(&[b"PUB", b"t", b"", b"m"]), Some("PUB")),
            (frames(&[b"PUB", b"t", b"bad\nname", b"m"]), Some("PUB")),
            (frames(&[b"PUB", b"t", &[0xff, 0xfe], b"m"]), Some("PUB")),
            (frames(&[b"PUB", &[b'x'; 256], b"q", b"m"]), Some("PUB")),
            (frames(&[b"SUB", b"q", b"", b"123"]), Some("SUB")),
            (frames(&[b"SUB", b"q", b""]), Some("SUB")),
            (
                frames(&[b"SUB", b"q", b"", &u32::MAX.to_be_bytes()]),
                Some("SUB"),
            ),
            (frames(&[b"ACK", b"q", b"", b"1234567"]), Some("ACK")),
            (frames(&[b"ACK", b"q", b"", b""]), Some("ACK")),
            (frames(&[b"ACKTO", b"q", b"", b"1"]), Some("ACKTO")),
            (frames(&[b"UNSUB", b"q"]), Some("UNSUB")),
            (frames(&[b"HB", b"x"]), Some("HB")),
            (frames(&[b"STATS", b"a", b"b"]), Some("STATS")),
        ];
        for (f, command) in cases {
            let (got, _, e) = parse_request(&f, 10).unwrap_err();
            assert_eq!(got, command, "{f:?}: {e}");
        }
        let f = frames(&[b"PUB", b"tag7", b"q", b"ok", b"much too long"]);
        let (_, context, e) = parse_request(&f, 10).unwrap_err();
        assert_eq!(context, b"tag7");
        assert_eq!(
            e,
            ProtocolError::TooLarge {
                size: 13,
                limit: 10
            }
        );
    }

    #[test]
    fn push_names_its_queue_and_checks_sizes() {
        assert_eq!(parse_push(&frames(&[b"q", b"a", b"b"]), 4).unwrap(), "q");
        assert!(parse_push(&frames(&[b"q"]), 4).is_err());
        assert!(parse_push(&frames(&[b"", b"a"]), 4).is_err());
        assert!(matches!(
            parse_push(&frames(&[b"q", b"abcde"]), 4),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn delivery_batches_round_trip_and_truncation_is_caught() {
        let mut batch = Vec::new();
        pack_delivery(&mut batch, 1, 0, b"one");
        pack_delivery(&mut batch, 7, 2, b"");
        pack_delivery(&mut batch, u64::MAX, 1, &[9; 300]);
        let got = unpack_deliveries(&batch).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            DeliveryRef {
                seq: 1,
                redeliveries: 0,
                payload: b"one"
            }
        );
        assert_eq!(
            (got[1].seq, got[1].redeliveries, got[1].payload.len()),
            (7, 2, 0)
        );
        assert_eq!(got[2].payload, &[9; 300][..]);
        for cut in [1, 15, batch.len() - 1] {
            assert!(unpack_deliveries(&batch[..cut]).is_err(), "cut at {cut}");
        }
        assert!(unpack_deliveries(&[]).unwrap().is_empty());
    }

    #[test]
    fn replies_round_trip() {
        let ok = ok(b"t", 3, 9);
        assert_eq!(
            parse_reply(&ok).unwrap(),
            Reply::Confirm {
                tag: b"t",
                first: 3,
                last: 9
            }
        );
        let e = err("PUB", b"t", "queue q is full");
        assert_eq!(
            parse_reply(&e).unwrap(),
            Reply::Error {
                command: "PUB",
                context: b"t",
                reason: "queue q is full"
            }
        );
        let r = ready("q", "g");
        assert_eq!(
            parse_reply(&r).unwrap(),
            Reply::Ready {
                queue: "q",
                group: "g"
            }
        );
        let mut batch = Vec::new();
        pack_delivery(&mut batch, 4, 1, b"x");
        let m = frames(&[b"MSG", b"q", b"", &batch]);
        assert!(matches!(
            parse_reply(&m).unwrap(),
            Reply::Messages { deliveries, .. } if deliveries[0].seq == 4
        ));
        assert!(parse_reply(&frames(&[b"OK", b"t", b"1"])).is_err());
        assert!(parse_reply(&frames(&[b"WHAT"])).is_err());
    }
}
