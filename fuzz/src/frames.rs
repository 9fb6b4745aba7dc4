//! How one fuzz input (a byte string) stands for a multipart message, so that byte-level
//! mutation also changes frame counts and sizes.

/// Splits `data` into frames: each is a length byte (`0xff` means "a u16 LE length follows")
/// and that many bytes; a cut-short last frame keeps what is there.
pub fn split(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some((&first, rest)) = data.split_first() {
        let (len, rest) = match (first, rest) {
            (0xff, [lo, hi, rest @ ..]) => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
            (0xff, rest) => (0, &rest[rest.len()..]),
            (len, rest) => (usize::from(len), rest),
        };
        let take = len.min(rest.len());
        frames.push(rest[..take].to_vec());
        data = &rest[take..];
    }
    frames
}

/// The input that [`split`] turns back into `frames` (frames over 64 KiB are cut).
pub fn join<F: AsRef<[u8]>>(frames: &[F]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let frame = frame.as_ref();
        let frame = &frame[..frame.len().min(usize::from(u16::MAX))];
        if frame.len() < 0xff {
            out.push(frame.len() as u8);
        } else {
            out.push(0xff);
            out.extend_from_slice(&(frame.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_then_split_gives_the_frames_back() {
        let frames: Vec<Vec<u8>> = vec![
            vec![],
            b"a".to_vec(),
            vec![7; 254],
            vec![9; 255],
            vec![1; 3000],
        ];
        assert_eq!(split(&join(&frames)), frames);
    }

    #[test]
    fn split_keeps_a_cut_short_frame() {
        assert_eq!(split(&[5, 1, 2]), vec![vec![1, 2]]);
        assert_eq!(split(&[0xff, 1]), vec![Vec::<u8>::new()]);
        assert!(split(&[]).is_empty());
    }
}
