//! CHP frames (ZeroMQ RFC 12), as the Guide's Clone clients speak them. Pure code.
//!
//! Every message but `ICANHAZ?` is five frames: key, sequence (8 bytes big-endian), uuid (16
//! bytes or empty), properties (`name=value\n` lines), body. An empty body deletes the key.

/// Key of the snapshot request's first frame.
pub const ICANHAZ: &[u8] = b"ICANHAZ?";
/// Key of the message that ends a snapshot.
pub const KTHXBAI: &[u8] = b"KTHXBAI";
/// Key of the heartbeat the publisher sends when idle.
pub const HUGZ: &[u8] = b"HUGZ";
/// Longest key accepted.
pub const MAX_KEY: usize = 1024;
/// Longest properties frame accepted.
pub const MAX_PROPERTIES: usize = 16 * 1024;

/// Why a CHP message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChpError {
    /// Not the frame count the message needs.
    #[error("wrong frame count {got}, expected {expected}")]
    FrameCount {
        /// Frames received.
        got: usize,
        /// Frames expected.
        expected: usize,
    },
    /// The sequence frame is not 8 bytes.
    #[error("sequence frame must be 8 bytes, got {0}")]
    Sequence(usize),
    /// The uuid frame is neither empty nor 16 bytes.
    #[error("uuid frame must be empty or 16 bytes, got {0}")]
    Uuid(usize),
    /// The key is empty or too long.
    #[error("key must be 1 to {MAX_KEY} bytes, got {0}")]
    Key(usize),
    /// A properties line is not `name=value`, or the frame is too large or not UTF-8.
    #[error("invalid properties: {0}")]
    Properties(String),
    /// Not a snapshot request.
    #[error("unknown command {0:?}")]
    Command(String),
}

/// One key-value message: KVSYNC, KVPUB or KVSET.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvMsg {
    /// The key, a path such as `/app/config/x`.
    pub key: Vec<u8>,
    /// Sequence number assigned by the server (0 in a client's KVSET).
    pub seq: u64,
    /// The update's identity (16 bytes) or empty.
    pub uuid: Vec<u8>,
    /// Properties, in the order received.
    pub properties: Vec<(String, String)>,
    /// The value; empty deletes the key.
    pub body: Vec<u8>,
}

impl KvMsg {
    /// A message for `key` with `body`, no sequence, uuid or properties.
    pub fn new(key: impl Into<Vec<u8>>, body: impl Into<Vec<u8>>) -> Self {
        KvMsg {
            key: key.into(),
            body: body.into(),
            ..Default::default()
        }
    }

    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets property `name`, replacing an earlier value.
    pub fn set_property(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.properties.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.properties.push((name.to_string(), value)),
        }
    }

    /// Whether this message deletes its key.
    pub fn is_delete(&self) -> bool {
        self.body.is_empty()
    }

    /// The five frames.
    pub fn encode(&self) -> [Vec<u8>; 5] {
        [
            self.key.clone(),
            self.seq.to_be_bytes().to_vec(),
            self.uuid.clone(),
            encode_properties(&self.properties).into_bytes(),
            self.body.clone(),
        ]
    }

    /// Sends the five frames on `socket` without copying the message first.
    pub fn send(&self, socket: &zmq::Socket, flags: i32) -> zmq::Result<()> {
        self.with_parts(|parts| socket.send_multipart(parts, flags))
    }

    /// Calls `use_parts` with the five frames, borrowed (the sequence and properties encoded).
    fn with_parts<T>(&self, use_parts: impl FnOnce([&[u8]; 5]) -> T) -> T {
        let properties = encode_properties(&self.properties);
        let seq = self.seq.to_be_bytes();
        use_parts([
            &self.key,
            &seq,
            &self.uuid,
            properties.as_bytes(),
            &self.body,
        ])
    }

    /// Decodes five received frames, taking their buffers; `max_body` bounds the value.
    pub fn decode_owned(frames: Vec<Vec<u8>>, max_body: usize) -> Result<KvMsg, ChpError> {
        let got = frames.len();
        let Ok([key, seq, uuid, properties, body]) = <[Vec<u8>; 5]>::try_from(frames) else {
            return Err(ChpError::FrameCount { got, expected: 5 });
        };
        let seq = check_parts(&key, &seq, &uuid, body.len(), max_body)?;
        Ok(KvMsg {
            key,
            seq,
            uuid,
            properties: if properties.is_empty() {
                Vec::new()
            } else {
                decode_properties(&properties)?
            },
            body,
        })
    }

    /// Decodes five frames; `max_body` bounds the value.
    pub fn decode(frames: &[Vec<u8>], max_body: usize) -> Result<KvMsg, ChpError> {
        let [key, seq, uuid, properties, body] = frames else {
            return Err(ChpError::FrameCount {
                got: frames.len(),
                expected: 5,
            });
        };
        Self::decode_parts([key, seq, uuid, properties, body], max_body)
    }

    /// Decodes the five parts of a message, wherever they were read from.
    fn decode_parts(parts: [&[u8]; 5], max_body: usize) -> Result<KvMsg, ChpError> {
        let [key, seq, uuid, properties, body] = parts;
        let seq = check_parts(key, seq, uuid, body.len(), max_body)?;
        Ok(KvMsg {
            key: key.to_vec(),
            seq,
            uuid: uuid.to_vec(),
            properties: if properties.is_empty() {
                Vec::new()
            } else {
                decode_properties(properties)?
            },
            body: body.to_vec(),
        })
    }
}

impl KvMsg {
    /// The five frames, each prefixed with its length (u32 BE), for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.with_parts(|parts| {
            let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
            for part in parts {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
            out
        })
    }

    /// Reads what [`KvMsg::to_bytes`] wrote.
    pub fn from_bytes(mut bytes: &[u8]) -> Result<KvMsg, ChpError> {
        let cut = || ChpError::Properties("stored message cut short".into());
        let mut parts: [&[u8]; 5] = [&[]; 5];
        for part in &mut parts {
            let len = u32::from_be_bytes(
                bytes
                    .get(..4)
                    .ok_or_else(cut)?
                    .try_into()
                    .map_err(|_| cut())?,
            ) as usize;
            *part = bytes.get(4..4 + len).ok_or_else(cut)?;
            bytes = &bytes[4 + len..];
        }
        if !bytes.is_empty() {
            return Err(ChpError::FrameCount {
                got: 6,
                expected: 5,
            });
        }
        KvMsg::decode_parts(parts, usize::MAX)
    }
}

/// Checks the key, sequence, uuid and value size of a message; returns the sequence.
fn check_parts(
    key: &[u8],
    seq: &[u8],
    uuid: &[u8],
    body_len: usize,
    max_body: usize,
) -> Result<u64, ChpError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(ChpError::Key(key.len()));
    }
    let seq: [u8; 8] = seq.try_into().map_err(|_| ChpError::Sequence(seq.len()))?;
    if !(uuid.is_empty() || uuid.len() == 16) {
        return Err(ChpError::Uuid(uuid.len()));
    }
    if body_len > max_body {
        return Err(ChpError::Properties(format!(
            "value of {body_len} bytes exceeds the limit of {max_body}"
        )));
    }
    Ok(u64::from_be_bytes(seq))
}

/// Encodes properties as `name=value\n` lines.
pub fn encode_properties(properties: &[(String, String)]) -> String {
    properties
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect()
}

/// Decodes `name=value\n` lines (a missing final newline is accepted, and so is `\r\n`).
pub fn decode_properties(frame: &[u8]) -> Result<Vec<(String, String)>, ChpError> {
    // The limit holds for the frame as it is sent on, where a last line gets its newline.
    let size = frame.len() + usize::from(!frame.is_empty() && !frame.ends_with(b"\n"));
    if size > MAX_PROPERTIES {
        return Err(ChpError::Properties(format!(
            "{size} bytes exceed the limit of {MAX_PROPERTIES}"
        )));
    }
    let text = std::str::from_utf8(frame).map_err(|_| ChpError::Properties("not UTF-8".into()))?;
    // A CR before the line's end, or at the very end, is part of the line break: `lines()`
    // would keep a final one in the value, which then does not survive re-encoding.
    text.split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once('=')
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .ok_or_else(|| ChpError::Properties(format!("{line:?} is not name=value")))
        })
        .collect()
}

/// Option frame of a snapshot request asking for packed batches (a Depot extension).
pub const PACKED: &[u8] = b"packed";
/// First frame of a packed batch of KVSYNCs.
pub const KVSYNCS: &[u8] = b"KVSYNCS";

/// A snapshot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Key prefix; empty for everything.
    pub subtree: Vec<u8>,
    /// Answer with packed batches ([`pack_entries`]) instead of one message per key.
    pub packed: bool,
}

/// Parses a snapshot request `["ICANHAZ?"][subtree]`, optionally followed by `["packed"]`.
pub fn parse_icanhaz(frames: &[Vec<u8>]) -> Result<SnapshotRequest, ChpError> {
    let request = |subtree: &[u8], packed| SnapshotRequest {
        subtree: subtree.to_vec(),
        packed,
    };
    match frames {
        [command, ..] if command.as_slice() != ICANHAZ => Err(ChpError::Command(
            String::from_utf8_lossy(command).into_owned(),
        )),
        [_, subtree] => Ok(request(subtree, false)),
        // The Guide's first Clone clients send the command alone.
        [_] => Ok(request(b"", false)),
        [_, subtree, option] if option.as_slice() == PACKED => Ok(request(subtree, true)),
        [_, _, option] => Err(ChpError::Command(format!(
            "unknown snapshot option {:?}",
            String::from_utf8_lossy(option)
        ))),
        _ => Err(ChpError::FrameCount {
            got: frames.len(),
            expected: 2,
        }),
    }
}

/// Appends `msg` to a packed batch: its stored form prefixed with its length (u32 BE).
pub fn pack_entry(batch: &mut Vec<u8>, msg: &KvMsg) {
    let bytes = msg.to_bytes();
    batch.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    batch.extend_from_slice(&bytes);
}

/// Reads the messages of a packed batch.
pub fn unpack_entries(mut batch: &[u8]) -> Result<Vec<KvMsg>, ChpError> {
    let mut out = Vec::new();
    while !batch.is_empty() {
        let cut = || ChpError::Properties("packed batch cut short".into());
        let len = u32::from_be_bytes(
            batch
                .get(..4)
                .ok_or_else(cut)?
                .try_into()
                .map_err(|_| cut())?,
        ) as usize;
        let bytes = batch.get(4..4 + len).ok_or_else(cut)?;
        out.push(KvMsg::from_bytes(bytes)?);
        batch = &batch[4 + len..];
    }
    Ok(out)
}

/// The property of a KTHXBAI that ends a refused snapshot (the key may not read the subtree):
/// its value says why, and the snapshot before it is empty.
pub const DENIED: &str = "denied";

/// The message ending a snapshot: key `KTHXBAI`, the snapshot's sequence, the subtree as body.
pub fn kthxbai(seq: u64, subtree: &[u8]) -> KvMsg {
    KvMsg {
        key: KTHXBAI.to_vec(),
        seq,
        body: subtree.to_vec(),
        ..Default::default()
    }
}

/// The idle heartbeat: key `HUGZ`, sequence 0, empty frames.
pub fn hugz() -> KvMsg {
    KvMsg {
        key: HUGZ.to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn messages_round_trip_through_five_frames() {
        let mut msg = KvMsg::new("/app/x", "value");
        msg.seq = 42;
        msg.uuid = vec![7; 16];
        msg.set_property("ttl", "30");
        msg.set_property("ttl", "60");
        let encoded = msg.encode();
        assert_eq!(encoded[1], 42u64.to_be_bytes());
        assert_eq!(encoded[3], b"ttl=60\n");
        let decoded = KvMsg::decode(&encoded, 1024).unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(decoded.property("ttl"), Some("60"));
        assert!(!decoded.is_delete());
        assert!(KvMsg::new("/k", "").is_delete());
    }

    #[test]
    fn stored_form_round_trips_and_cut_bytes_are_refused() {
        let mut msg = KvMsg::new("/a", "b");
        msg.seq = 3;
        msg.set_property("ttl", "1");
        let bytes = msg.to_bytes();
        assert_eq!(KvMsg::from_bytes(&bytes).unwrap(), msg);
        assert!(KvMsg::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let ok: [&[u8]; 5] = [b"/k", &[0; 8], b"", b"", b"v"];
        assert!(KvMsg::decode(&frames(&ok), 1024).is_ok());
        assert_eq!(
            KvMsg::decode(&frames(&ok[..4]), 1024),
            Err(ChpError::FrameCount {
                got: 4,
                expected: 5
            })
        );
        let short_seq: [&[u8]; 5] = [b"/k", &[0; 7], b"", b"", b"v"];
        assert_eq!(
            KvMsg::decode(&frames(&short_seq), 1024),
            Err(ChpError::Sequence(7))
        );
        let bad_uuid: [&[u8]; 5] = [b"/k", &[0; 8], b"abc", b"", b"v"];
        assert_eq!(
            KvMsg::decode(&frames(&bad_uuid), 1024),
            Err(ChpError::Uuid(3))
        );
        let no_key: [&[u8]; 5] = [b"", &[0; 8], b"", b"", b"v"];
        assert_eq!(KvMsg::decode(&frames(&no_key), 1024), Err(ChpError::Key(0)));
        let bad_props: [&[u8]; 5] = [b"/k", &[0; 8], b"", b"ttl\n", b"v"];
        assert!(matches!(
            KvMsg::decode(&frames(&bad_props), 1024),
            Err(ChpError::Properties(_))
        ));
        let big: [&[u8]; 5] = [b"/k", &[0; 8], b"", b"", &[1; 2000]];
        assert!(KvMsg::decode(&frames(&big), 1024).is_err());
    }

    #[test]
    fn properties_accept_a_missing_final_newline_and_values_with_equals() {
        let props = decode_properties(b"ttl=5\nformula=a=b").unwrap();
        assert_eq!(
            props,
            vec![("ttl".into(), "5".into()), ("formula".into(), "a=b".into())]
        );
        assert!(decode_properties(b"=x\n").is_err());
        assert!(decode_properties(b"\xff=1").is_err());
    }

    /// Found by fuzzing (fuzz/corpus/cache_chp/crash-*): a final `\r` stayed in the value,
    /// so the message re-encoded as `ttl=30\r\n` decoded differently on the next hop.
    #[test]
    fn a_carriage_return_ends_a_property_line_and_the_message_round_trips() {
        assert_eq!(
            decode_properties(b"ttl=30\r").unwrap(),
            vec![("ttl".into(), "30".into())]
        );
        assert_eq!(
            decode_properties(b"a=1\r\nb=x\ry\r\n\r\n").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x\ry".into())]
        );
        let received: [&[u8]; 5] = [b"/app/x", &[0; 8], b"", b"ttl=30\r", b"value"];
        let msg = KvMsg::decode(&frames(&received), 1024).unwrap();
        assert_eq!(KvMsg::decode(&msg.encode(), 1024).unwrap(), msg);
    }

    /// Found by fuzzing (fuzz/corpus/cache_chp/crash-5569c9226029e11d): a properties frame of
    /// exactly the limit without a final newline decoded, but re-encoded one byte over it, so
    /// the server would publish an update its subscribers refuse.
    #[test]
    fn the_properties_limit_counts_the_newline_the_message_is_sent_on_with() {
        let mut at_limit = vec![b'a'; MAX_PROPERTIES];
        at_limit[0] = b'k';
        at_limit[1] = b'=';
        assert!(decode_properties(&at_limit).is_err());
        at_limit[MAX_PROPERTIES - 1] = b'\n';
        let props = decode_properties(&at_limit).unwrap();
        assert_eq!(encode_properties(&props).len(), MAX_PROPERTIES);
        let received: [&[u8]; 5] = [b"/k", &[0; 8], b"", &at_limit, b"v"];
        let msg = KvMsg::decode(&frames(&received), 1024).unwrap();
        assert_eq!(KvMsg::decode(&msg.encode(), 1024).unwrap(), msg);
    }

    #[test]
    fn snapshot_requests_and_markers() {
        let plain = parse_icanhaz(&frames(&[b"ICANHAZ?", b"/app/"])).unwrap();
        assert_eq!(
            (plain.subtree.as_slice(), plain.packed),
            (&b"/app/"[..], false)
        );
        assert_eq!(parse_icanhaz(&frames(&[b"ICANHAZ?"])).unwrap().subtree, b"");
        let packed = parse_icanhaz(&frames(&[b"ICANHAZ?", b"/a", b"packed"])).unwrap();
        assert!(packed.packed);
        assert!(matches!(
            parse_icanhaz(&frames(&[b"ICANHAZ?", b"/a", b"zipped"])),
            Err(ChpError::Command(_))
        ));
        assert!(matches!(
            parse_icanhaz(&frames(&[b"GIMME", b""])),
            Err(ChpError::Command(_))
        ));
        assert!(parse_icanhaz(&frames(&[])).is_err());
        let end = kthxbai(99, b"/app/");
        assert_eq!(
            (end.key.as_slice(), end.seq, end.body.as_slice()),
            (KTHXBAI, 99, &b"/app/"[..])
        );
        let beat = hugz().encode();
        assert_eq!(beat[0], HUGZ);
        assert_eq!(beat[1], [0; 8]);
        assert!(beat[2].is_empty() && beat[3].is_empty() && beat[4].is_empty());
    }

    #[test]
    fn packed_batches_round_trip_and_refuse_cut_input() {
        let mut a = KvMsg::new("/a", "1");
        a.seq = 5;
        a.set_property("ttl", "9");
        let b = KvMsg::new("/b", vec![7u8; 300]);
        let mut batch = Vec::new();
        pack_entry(&mut batch, &a);
        pack_entry(&mut batch, &b);
        assert_eq!(unpack_entries(&batch).unwrap(), vec![a, b]);
        assert!(unpack_entries(&batch[..batch.len() - 1]).is_err());
        assert!(unpack_entries(&[0, 0]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..7)) {
            let borrowed = KvMsg::decode(&parts, 64);
            let owned = KvMsg::decode_owned(parts.clone(), 64);
            proptest::prop_assert_eq!(borrowed, owned);
            let _ = parse_icanhaz(&parts);
            let _ = unpack_entries(&parts.concat());
        }
    }
}
