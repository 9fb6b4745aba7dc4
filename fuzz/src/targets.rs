//! One fuzz target per decoder of outside bytes. A target takes any bytes, never panics on
//! its own account, and panics when a decoder does or breaks a property (a decoded message that
//! does not re-encode to itself). It returns a short label of the outcome, which the driver
//! uses to keep inputs that reach an outcome not seen before.

use std::path::Path;

use depot_cache::protocol::{self as chp, KvMsg};
use depot_logd::protocol as logd;
use depot_logd::syslog;
use depot_queue::protocol as queue;

use crate::frames;

/// Size limit the targets give to decoders that take one (small, so inputs reach it).
pub const LIMIT: usize = 4096;

/// A fuzz target.
pub struct Target {
    /// Name, also the corpus folder's.
    pub name: &'static str,
    /// Runs the decoders on one input.
    pub run: fn(&[u8]) -> String,
    /// The input stands for a multipart message ([`frames::split`]).
    pub multipart: bool,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "logd_ingest",
        run: logd_ingest,
        multipart: true,
    },
    Target {
        name: "logd_replay",
        run: logd_replay,
        multipart: true,
    },
    Target {
        name: "logd_records",
        run: logd_records,
        multipart: false,
    },
    Target {
        name: "syslog",
        run: syslog_datagram,
        multipart: false,
    },
    Target {
        name: "syslog_tcp",
        run: syslog_tcp,
        multipart: false,
    },
    Target {
        name: "cache_chp",
        run: cache_chp,
        multipart: true,
    },
    Target {
        name: "cache_stored",
        run: cache_stored,
        multipart: false,
    },
    Target {
        name: "queue_request",
        run: queue_request,
        multipart: true,
    },
    Target {
        name: "queue_reply",
        run: queue_reply,
        multipart: true,
    },
    Target {
        name: "clock_request",
        run: clock_request,
        multipart: true,
    },
    Target {
        name: "clock_reply",
        run: clock_reply,
        multipart: true,
    },
    Target {
        name: "multicast_frames",
        run: multicast_frames,
        multipart: true,
    },
    Target {
        name: "config",
        run: config,
        multipart: false,
    },
    Target {
        name: "store_block",
        run: store_block,
        multipart: false,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A label for a result: `ok`, or the start of the error's text, cut before anything quoted
/// from the input and without digits (so that errors differing only in the input's bytes or
/// numbers count as one outcome).
fn label<T, E: std::fmt::Display>(what: &str, result: &Result<T, E>) -> String {
    match result {
        Ok(_) => format!("{what}:ok"),
        Err(e) => format!("{what}:{}", error_kind(&e.to_string())),
    }
}

fn error_kind(text: &str) -> String {
    text.chars()
        .take_while(|c| !matches!(c, '"' | '\'' | '`' | '(' | '{' | '[' | '\n'))
        .filter(|c| !c.is_ascii_digit())
        .take(48)
        .collect()
}

/// logd ingest: PULL `parse_push`, SUB `parse_pub`, acked ROUTER `parse_acked`.
pub fn logd_ingest(data: &[u8]) -> String {
    let frames = frames::split(data);
    let push = logd::parse_push(&frames, LIMIT);
    if let Ok(batch) = &push {
        assert!(batch.body_frames >= 1 && batch.body_frames < frames.len());
        if !batch.packed {
            assert_eq!(batch.bodies.len(), batch.body_frames);
        }
        for body in &batch.bodies {
            assert!(body.len() <= LIMIT);
        }
    }
    let publ = logd::parse_pub(&frames, LIMIT);
    if let Ok(batch) = &publ {
        assert_eq!(batch.bodies.len(), 1);
    }
    let acked = logd::parse_acked(&frames, LIMIT);
    if let Ok((id, batch)) = &acked {
        assert!(!id.is_empty() && id.len() <= logd::MAX_BATCH_ID);
        assert!(!batch.bodies.is_empty());
    }
    let acked = acked.map_err(|(_, e)| e);
    format!(
        "{} {} {}",
        label("push", &push),
        label("pub", &publ),
        label("acked", &acked)
    )
}

/// logd replay: the API ROUTER's requests, XPUB replay subscriptions and filters.
pub fn logd_replay(data: &[u8]) -> String {
    let frames = frames::split(data);
    let api = logd::parse_api_request(&frames).map_err(|(_, e)| e);
    let mut out = label("api", &api);
    for frame in frames.iter().take(4) {
        // An XPUB subscription frame is `\x01` + topic.
        let topic = frame.get(1..).unwrap_or_default();
        let replay = logd::parse_replay_topic(topic);
        if let Ok(request) = &replay {
            assert!(depot_store::validate_stream_name(&request.stream).is_ok());
        }
        out.push(' ');
        out.push_str(&label("topic", &replay));
        out.push(' ');
        out.push_str(&label("filter", &logd::parse_filter(frame)));
    }
    out
}

/// What a logd client decodes from the server: record headers, packed record batches, packed
/// bodies (which must re-pack to the same bytes).
pub fn logd_records(data: &[u8]) -> String {
    let header = logd::decode_header(data);
    if let Ok(h) = &header {
        let again = logd::decode_header(&logd::encode_header(
            h.seq, h.ts_ns, h.level, &h.stream, &h.source,
        ));
        assert_eq!(again.as_ref().ok(), Some(h));
    }
    let records = logd::unpack_records(data);
    let bodies = logd::unpack_bodies(data);
    if let Ok(bodies) = &bodies {
        assert_eq!(logd::pack_bodies(bodies), data);
    }
    format!(
        "{} {} {}",
        label("header", &header),
        label("records", &records),
        label("bodies", &bodies)
    )
}

/// The syslog datagram parser (RFC 5424 and 3164).
pub fn syslog_datagram(data: &[u8]) -> String {
    let parsed = syslog::parse(data);
    if let Ok(message) = &parsed {
        assert!(message.severity <= 7, "severity {}", message.severity);
    }
    label("syslog", &parsed)
}

/// The syslog TCP framer (octet counting and LF/NUL framing), fed in pieces whose sizes the
/// first byte chooses, then every frame parsed.
pub fn syslog_tcp(data: &[u8]) -> String {
    const MAX_FRAME: usize = 512;
    let Some((&piece, stream)) = data.split_first() else {
        return "empty".into();
    };
    let piece = usize::from(piece % 64) + 1;
    let mut framer = syslog::TcpFramer::new(MAX_FRAME);
    let (mut frames, mut errors, mut parsed) = (0, 0, 0);
    let mut drain = |framer: &mut syslog::TcpFramer| {
        // A framer that never runs dry would hang the connection's task: bound it.
        for _ in 0..=data.len() + 1 {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME, "frame of {} bytes", frame.len());
                    frames += 1;
                    parsed += usize::from(syslog::parse(&frame).is_ok());
                }
                Ok(None) => return,
                Err(_) => errors += 1,
            }
        }
        panic!("the framer keeps producing without input");
    };
    for chunk in stream.chunks(piece) {
        framer.push(chunk);
        drain(&mut framer);
    }
    format!("tcp:{} {} {}", frames.min(3), errors.min(3), parsed.min(3))
}

/// CHP messages as the snapshot ROUTER, the collector SUB and clients receive them.
pub fn cache_chp(data: &[u8]) -> String {
    let frames = frames::split(data);
    let decoded = KvMsg::decode(&frames, LIMIT);
    let owned = KvMsg::decode_owned(frames.clone(), LIMIT);
    assert_eq!(decoded.as_ref().ok(), owned.as_ref().ok());
    if let Ok(msg) = &decoded {
        let again = KvMsg::decode(&msg.encode(), LIMIT);
        assert_eq!(again.as_ref().ok(), Some(msg));
        let stored = KvMsg::from_bytes(&msg.to_bytes());
        assert_eq!(stored.as_ref().ok(), Some(msg));
    }
    let icanhaz = chp::parse_icanhaz(&frames);
    format!("{} {}", label("kv", &decoded), label("icanhaz", &icanhaz))
}

/// What the cache reads back from disk and from packed snapshots: a stored message, a packed
/// batch, a change-log record, a properties frame.
pub fn cache_stored(data: &[u8]) -> String {
    let stored = KvMsg::from_bytes(data);
    if let Ok(msg) = &stored {
        let again = KvMsg::from_bytes(&msg.to_bytes());
        assert_eq!(again.as_ref().ok(), Some(msg));
    }
    let packed = chp::unpack_entries(data);
    let change = depot_cache::persist::Change::decode(data);
    if let Ok(change) = &change {
        let again = depot_cache::persist::Change::decode(&change.encode());
        assert_eq!(again.as_ref().ok(), Some(change));
    }
    let properties = chp::decode_properties(data);
    format!(
        "{} {} {} {}",
        label("stored", &stored),
        label("packed", &packed),
        label("change", &change),
        label("props", &properties)
    )
}

/// The queue's ROUTER requests and PULL messages.
pub fn queue_request(data: &[u8]) -> String {
    let frames = frames::split(data);
    let request = queue::parse_request(&frames, LIMIT).map_err(|(_, _, e)| e);
    if let Ok(queue::Request::Publish { first_message, .. }) = &request {
        assert!(*first_message < frames.len());
    }
    let push = queue::parse_push(&frames, LIMIT);
    format!("{} {}", label("req", &request), label("push", &push))
}

/// What a queue client decodes: replies and delivery batches.
pub fn queue_reply(data: &[u8]) -> String {
    let frames = frames::split(data);
    let reply = queue::parse_reply(&frames);
    let mut out = label("reply", &reply);
    for frame in frames.iter().take(4) {
        out.push(' ');
        out.push_str(&label("batch", &queue::unpack_deliveries(frame)));
    }
    out
}

/// The clock's timer requests (after the ROUTER envelope).
pub fn clock_request(data: &[u8]) -> String {
    use depot_clock::protocol::{split_envelope, Request};
    let frames = frames::split(data);
    let request = Request::decode(&frames, LIMIT);
    if let Ok(request) = &request {
        let again = Request::decode(&request.encode(), LIMIT);
        assert_eq!(again.as_ref().ok(), Some(request));
    }
    let enveloped = split_envelope(&frames).map(|(_, body)| Request::decode(body, LIMIT).is_ok());
    let enveloped = match enveloped {
        Some(true) => "ok",
        Some(false) => "err",
        None => "none",
    };
    format!("{} env:{enveloped}", label("req", &request))
}

/// What a clock client decodes: replies, ticks, firings, timer entries, attributes.
pub fn clock_reply(data: &[u8]) -> String {
    use depot_clock::protocol::{parse_attrs, Firing, Reply, Tick, TimerInfo};
    let frames = frames::split(data);
    let reply = Reply::decode(&frames);
    if let Ok(reply) = &reply {
        let again = Reply::decode(&reply.encode());
        assert_eq!(again.as_ref().ok(), Some(reply));
    }
    let tick = Tick::decode(&frames);
    if let Ok(tick) = &tick {
        let encoded: Vec<Vec<u8>> = tick.encode().into_iter().collect();
        assert_eq!(Tick::decode(&encoded).as_ref().ok(), Some(tick));
    }
    let firing = Firing::decode(&frames);
    let mut out = format!(
        "{} {} {}",
        label("reply", &reply),
        label("tick", &tick),
        label("firing", &firing)
    );
    if let Some(frame) = frames.first() {
        let info = TimerInfo::decode(frame);
        if let Ok(info) = &info {
            assert_eq!(TimerInfo::decode(&info.encode()).as_ref().ok(), Some(info));
        }
        out.push(' ');
        out.push_str(&label("info", &info));
        out.push(' ');
        out.push_str(&label("attrs", &parse_attrs(frame)));
    }
    out
}

/// What a multicast in-bus classifies: any application's messages arrive there.
pub fn multicast_frames(data: &[u8]) -> String {
    use depot_multicast::frames::{classify, sequence};
    let frames = frames::split(data);
    let kind = classify(&frames);
    let seq = sequence(&frames);
    // What a subscriber of a packed bus decodes: agrees with the classifier when it succeeds.
    if let Ok(batch) = depot_logd::protocol::decode_packed_live(&frames) {
        if let depot_multicast::frames::BusMessage::LogBatch { header, count } = &kind {
            assert_eq!(batch.bodies.len(), *count as usize);
            assert_eq!(&batch.header, header);
            let last = header
                .seq
                .saturating_add(u64::from(*count).saturating_sub(1));
            if *count > 0 {
                assert_eq!(
                    sequence(&frames),
                    Some((header.stream.as_bytes(), header.seq, last))
                );
            }
        }
    }
    let kind = format!("{kind:?}");
    let kind = kind
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string();
    format!("bus:{kind} seq:{}", seq.is_some())
}

/// `depot.toml`, parsed and validated.
pub fn config(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    match depot::config::Config::parse(&text, Path::new("fuzz.toml")) {
        Ok(_) => "config:ok".into(),
        // TOML errors end with the reason, after lines quoting the input.
        Err(e) => {
            let text = format!("{e:#}");
            let reason = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            format!(
                "config:{}",
                error_kind(reason.trim_start_matches(['|', ' ', '^']))
            )
        }
    }
}

/// The store's on-disk log block decoder, three ways: the bytes as a block value; the bytes as
/// compressed records behind a header with a correct checksum; the bytes as raw records,
/// compressed and sealed correctly (so that the record decoder itself sees them).
pub fn store_block(data: &[u8]) -> String {
    let mut records = 0u64;
    let mut visit = |r: depot_store::RecordRef<'_>| {
        records += 1;
        r.body.len() < usize::MAX
    };
    let as_value = depot_store::decode_log_block(data, 1, &mut visit);
    let (count, raw_len, compressed) = match data {
        [c, l0, l1, rest @ ..] => (
            u32::from(*c),
            u32::from(u16::from_le_bytes([*l0, *l1])),
            rest,
        ),
        _ => (0, 0, data),
    };
    let behind_header =
        depot_store::decode_log_block(&sealed_block(count, raw_len, 0, compressed), 1, &mut visit);
    let raw = compressed;
    let as_records = depot_store::decode_log_block(
        &sealed_block(
            count,
            raw.len() as u32,
            u64::from(count) << 56,
            &lz4_flex::block::compress(raw),
        ),
        1,
        &mut visit,
    );
    let entry = depot_store::check_block_index_entry(data);
    format!(
        "{} {} {} {} n:{}",
        label("value", &as_value),
        label("header", &behind_header),
        label("records", &as_records),
        label("index", &entry),
        records.min(4)
    )
}

/// A block value as the store seals one (format version, bincode header with the checksum,
/// compressed records), with the caller's header fields.
pub fn sealed_block(count: u32, raw_len: u32, first_ts: u64, compressed: &[u8]) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&count.to_be_bytes());
    hasher.update(&raw_len.to_be_bytes());
    hasher.update(&first_ts.to_be_bytes());
    hasher.update(compressed);
    let crc = hasher.finalize();
    let mut value = vec![1u8];
    // Plain integers cannot fail to encode into a Vec.
    let _ = bincode::encode_into_std_write(
        (count, raw_len, first_ts, crc),
        &mut value,
        bincode::config::standard(),
    );
    value.extend_from_slice(compressed);
    value
}
