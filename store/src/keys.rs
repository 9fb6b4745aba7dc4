//! Big-endian keys, so that sled's byte order is the natural (stream, sequence) order.

/// Key of a block's metadata: stream id, first sequence.
pub(crate) fn block_key(stream: u32, first_seq: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&stream.to_be_bytes());
    key[4..].copy_from_slice(&first_seq.to_be_bytes());
    key
}

/// Key of one fragment of a block's bytes: stream id, first sequence, fragment number.
pub(crate) fn fragment_key(stream: u32, first_seq: u64, fragment: u16) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[..12].copy_from_slice(&block_key(stream, first_seq));
    key[12..].copy_from_slice(&fragment.to_be_bytes());
    key
}

/// Key of a writer's cursor in a stream: stream id, then the cursor's name.
pub(crate) fn cursor_key(stream: u32, name: &str) -> Vec<u8> {
    let mut key = stream.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Set in a stream id to name the key space of the stream's tail pieces (records written at a
/// commit before their block is full), apart from its sealed blocks. Stream ids stay below it.
pub(crate) const TAIL_BIT: u32 = 1 << 31;

/// The id under which `stream`'s tail pieces are keyed, like blocks (meta and fragments).
pub(crate) fn tail_stream(stream: u32) -> u32 {
    stream | TAIL_BIT
}

/// Prefix of every key of one stream.
pub(crate) fn stream_prefix(stream: u32) -> [u8; 4] {
    stream.to_be_bytes()
}

/// The first sequence in a block or fragment key.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_stream_then_sequence_then_fragment() {
        let mut keys = [
            fragment_key(2, 1, 0).to_vec(),
            fragment_key(1, 256, 0).to_vec(),
            fragment_key(1, 255, 1).to_vec(),
            fragment_key(1, 255, 0).to_vec(),
        ];
        keys.sort();
        assert_eq!(keys[0], fragment_key(1, 255, 0));
        assert_eq!(keys[1], fragment_key(1, 255, 1));
        assert_eq!(keys[2], fragment_key(1, 256, 0));
        assert_eq!(keys[3], fragment_key(2, 1, 0));
        assert_eq!(seq_of(&keys[2]), Some(256));
        assert!(keys[3].starts_with(&stream_prefix(2)));
    }
}
