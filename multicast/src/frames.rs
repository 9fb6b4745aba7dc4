//! What a bus message is, told from its frames alone (pure): a logd live record, a CHP cache
//! update or HUGZ, the fragment a PGM rejoin leaves, or anything else.

use depot_logd::protocol::{self, Header};

/// A bus message, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// `[topic "<stream> <LEVEL>"][header][body]`, as logd's live XPUB publishes it.
    LogRecord(Header),
    /// `[topic][header of the first][count u32 BE][packed bodies]`, as logd's packed live XPUB
    /// publishes consecutive records.
    LogBatch {
        /// The first record's header.
        header: Header,
        /// Records in the message.
        count: u32,
    },
    /// A CHP KVPUB/KVSET: `[key][seq u64 BE][uuid][properties][body]`.
    CacheUpdate {
        /// The key.
        key: Vec<u8>,
        /// The cache's sequence.
        seq: u64,
    },
    /// CHP's heartbeat.
    Hugz,
    /// The tail of a multipart message whose head was lost: after unrecoverable loss libzmq's
    /// PGM receiver resumes at the next frame start, which may be inside a message.
    Fragment,
    /// Anything else: a producer's logd ingest frames, clock ticks, other applications.
    Other,
}

/// Classifies `frames`.
pub fn classify<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> BusMessage {
    match frames {
        [topic, header, _body] => {
            if let Some(header) = live_header(topic, header) {
                return BusMessage::LogRecord(header);
            }
            BusMessage::Other
        }
        [topic, header, count, _packed] if count.len() == 4 => match live_header(topic, header) {
            Some(header) => BusMessage::LogBatch {
                header,
                count: u32::from_be_bytes(count[..].try_into().unwrap_or_default()),
            },
            None => BusMessage::Other,
        },
        [key, seq, uuid, properties, _body]
            if seq.len() == 8
                && (uuid.is_empty() || uuid.len() == 16)
                && properties_ok(properties) =>
        {
            if &key[..] == b"HUGZ" {
                return BusMessage::Hugz;
            }
            let seq = u64::from_be_bytes(seq[..].try_into().unwrap_or_default());
            BusMessage::CacheUpdate {
                key: key.to_vec(),
                seq,
            }
        }
        // A live record without its topic. (A lone body frame cannot be told from a
        // single-frame application message; the sequence jump after it still shows the loss.)
        [header, _body] if looks_like_header(header) => BusMessage::Fragment,
        _ => BusMessage::Other,
    }
}

/// Which Depot sequences a message carries, read in place (the bridge's hot path): a live
/// record's `(stream, seq, seq)`, a packed live message's `(stream, first, last)`, or a CHP
/// update's `("", seq, seq)` (the cache has one sequence). HUGZ (sequence 0) and anything else
/// carry none.
pub fn sequence<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Option<(&[u8], u64, u64)> {
    match frames {
        [_topic, header, _body] => {
            let (stream, seq) = live_sequence(header)?;
            Some((stream, seq, seq))
        }
        [_topic, header, count, _packed] if count.len() == 4 => {
            let (stream, first) = live_sequence(header)?;
            let count = u32::from_be_bytes(count[..].try_into().ok()?);
            (count > 0).then(|| (stream, first, first.saturating_add(u64::from(count) - 1)))
        }
        [_key, seq, _uuid, _properties, _body] if seq.len() == 8 => {
            let seq = u64::from_be_bytes(seq[..].try_into().ok()?);
            (seq != 0).then_some((&b""[..], seq, seq))
        }
        _ => None,
    }
}

/// A live header's `(stream, seq)`, read in place.
fn live_sequence(header: &[u8]) -> Option<(&[u8], u64)> {
    let seq = u64::from_be_bytes(header.get(0..8)?.try_into().ok()?);
    let stream = header.get(18..18 + *header.get(17)? as usize)?;
    Some((stream, seq))
}

/// The header of a live record, when `topic` is `"<stream> <LEVEL>"` and `header` agrees.
fn live_header(topic: &[u8], header: &[u8]) -> Option<Header> {
    let space = topic.iter().position(|&b| b == b' ')?;
    let header = protocol::decode_header(header).ok()?;
    (header.stream.as_bytes() == &topic[..space]).then_some(header)
}

/// A frame that decodes as a live header with a plausible stream name.
fn looks_like_header(frame: &[u8]) -> bool {
    protocol::decode_header(frame)
        .is_ok_and(|h| protocol::check_stream(h.stream.as_bytes()).is_ok())
}

/// CHP properties: empty or `name=value` lines.
fn properties_ok(frame: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(frame) else {
        return false;
    };
    text.lines()
        .all(|line| line.is_empty() || line.contains('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(stream: &str, seq: u64) -> Vec<Vec<u8>> {
        vec![
            protocol::live_topic(stream, 6),
            protocol::encode_header(seq, 1, 6, stream, "src"),
            b"body".to_vec(),
        ]
    }

    fn kv(key: &str, seq: u64) -> Vec<Vec<u8>> {
        vec![
            key.into(),
            seq.to_be_bytes().to_vec(),
            vec![7; 16],
            b"ttl=1\n".to_vec(),
            b"v".to_vec(),
        ]
    }

    #[test]
    fn tells_live_records_cache_updates_and_hugz() {
        match classify(&live("app.web", 42)) {
            BusMessage::LogRecord(h) => assert_eq!((h.stream.as_str(), h.seq), ("app.web", 42)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            classify(&kv("/config/a", 9)),
            BusMessage::CacheUpdate {
                key: b"/config/a".to_vec(),
                seq: 9
            }
        );
        assert_eq!(classify(&kv("HUGZ", 0)), BusMessage::Hugz);
    }

    fn packed(stream: &str, first: u64, bodies: &[&[u8]]) -> Vec<Vec<u8>> {
        vec![
            protocol::live_topic(stream, 6),
            protocol::encode_header(first, 1, 6, stream, "src"),
            (bodies.len() as u32).to_be_bytes().to_vec(),
            protocol::pack_bodies(bodies),
        ]
    }

    #[test]
    fn tells_packed_live_messages_and_their_sequence_range() {
        let message = packed("app.web", 10, &[b"a", b"b", b"c"]);
        match classify(&message) {
            BusMessage::LogBatch { header, count } => {
                assert_eq!(
                    (header.stream.as_str(), header.seq, count),
                    ("app.web", 10, 3)
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sequence(&message), Some((&b"app.web"[..], 10, 12)));
        let decoded = protocol::decode_packed_live(&message).unwrap();
        assert_eq!(decoded.bodies, vec![&b"a"[..], b"b", b"c"]);
        // A clock tick also has four frames, and is no batch.
        let tick: [&[u8]; 4] = [b"tick.1s", &[0; 8], &[0; 8], &[0; 8]];
        assert_eq!(classify(&tick), BusMessage::Other);
        assert_eq!(sequence(&tick), None);
    }

    #[test]
    fn reads_sequences_in_place() {
        let record = live("app.web", 42);
        assert_eq!(sequence(&record), Some((&b"app.web"[..], 42, 42)));
        assert_eq!(sequence(&kv("/k", 7)), Some((&b""[..], 7, 7)));
        assert_eq!(sequence(&kv("HUGZ", 0)), None);
        let push: [&[u8]; 2] = [b"app", b"hello"];
        assert_eq!(sequence(&push), None);
    }

    #[test]
    fn a_message_without_its_head_is_a_fragment() {
        let record = live("app", 3);
        assert_eq!(classify(&record[1..]), BusMessage::Fragment);
        // A lone frame may be an application's own message.
        assert_eq!(classify(&record[2..]), BusMessage::Other);
    }

    #[test]
    fn ingest_frames_and_mismatched_topics_are_other() {
        let push: [&[u8]; 2] = [b"app", b"hello"];
        assert_eq!(classify(&push), BusMessage::Other);
        let attrs: [&[u8]; 3] = [b"app", b"level=warn", b"hello"];
        assert_eq!(classify(&attrs), BusMessage::Other);
        let mut wrong = live("app", 1);
        wrong[0] = b"other INFO".to_vec();
        assert_eq!(classify(&wrong), BusMessage::Other);
        let mut bad_props = kv("/k", 1);
        bad_props[3] = b"no equals".to_vec();
        assert_eq!(classify(&bad_props), BusMessage::Other);
    }
}
