//! Coverage-free mutation: random inputs, byte-level edits (flip, set to an interesting value,
//! insert, delete, duplicate, splice with another input) and, for multipart targets, frame-level
//! edits (drop, duplicate, swap, empty, grow a frame).

use crate::frames;

/// A small fast PRNG (xorshift64*), seeded by the caller so that runs can be repeated.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `size` random bytes.
    pub fn bytes(&mut self, size: usize) -> Vec<u8> {
        (0..size).map(|_| self.next_u64() as u8).collect()
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, 0xfe, b' ', b'\n', b'\r', b'=', b'/', b'.', b'<', b'>', b'-', b'@',
    b'[', b']', b'"', b'0', b'9', b'1',
];

/// Byte strings that decoders look for, spliced into inputs.
const TOKENS: &[&[u8]] = &[
    b"ICANHAZ?",
    b"KTHXBAI",
    b"HUGZ",
    b"packed",
    b"packed=1",
    b"level=",
    b"source=",
    b"ttl=",
    b"REPLAY",
    b"CREDIT",
    b"CANCEL",
    b"STREAMS",
    b"replay/",
    b"PUB",
    b"SUB",
    b"ACK",
    b"ACKTO",
    b"UNSUB",
    b"HB",
    b"STATS",
    b"ADD",
    b"LIST",
    b"OK",
    b"ERR",
    b"MSG",
    b"READY",
    b"FIRED",
    b"TIMERS",
    b"tick.",
    b"in=",
    b"at=",
    b"every=",
    b"count=",
    b"topic=",
    b"until=",
    b"grep=",
    b"<13>1 ",
    b"<34>",
    b"\xef\xbb\xbf",
    b"[store]",
    b"[queue]",
    b"[clock]",
    b"[multicast]",
    b"[logd]",
    b"[cache]",
    b" = ",
    b"\"1s\"",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x10",
];

/// A new input: fresh random bytes (sometimes), else `base` mutated, possibly spliced with
/// `other`.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8], multipart: bool) -> Vec<u8> {
    if base.is_empty() || rng.below(16) == 0 {
        let size = match rng.below(8) {
            0 => rng.below(4096),
            1..=2 => rng.below(256),
            _ => rng.below(48),
        };
        return rng.bytes(size);
    }
    let mut data = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if multipart && rng.below(3) == 0 {
            data = mutate_frames(rng, &data);
        } else {
            mutate_bytes(rng, &mut data, other);
        }
    }
    data.truncate(64 * 1024);
    data
}

fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let at = rng.below(data.len() + 1);
    match rng.below(9) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => {
            let n = 1 + rng.below(8);
            let bytes = rng.bytes(n);
            data.splice(at..at, bytes);
        }
        3 if !data.is_empty() => {
            let end = (at + 1 + rng.below(16)).min(data.len());
            data.drain(at.min(end)..end);
        }
        4 if !data.is_empty() => {
            let start = rng.below(data.len());
            let end = (start + 1 + rng.below(32)).min(data.len());
            let piece = data[start..end].to_vec();
            data.splice(at..at, piece);
        }
        5 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            data.splice(at..at, token.iter().copied());
        }
        6 if !other.is_empty() => {
            let start = rng.below(other.len());
            let end = (start + 1 + rng.below(64)).min(other.len());
            data.splice(at..at, other[start..end].iter().copied());
        }
        7 => data.truncate(at),
        _ if data.len() >= 4 => {
            // A length-like field: a big or boundary number in 4 bytes.
            let i = rng.below(data.len() - 3);
            let value: u32 = [0, 1, 0xff, 0x100, 0x7fff_ffff, u32::MAX, 4096, 65535][rng.below(8)];
            data[i..i + 4].copy_from_slice(&value.to_be_bytes());
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

fn mutate_frames(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut parts = frames::split(data);
    let n = parts.len();
    match rng.below(6) {
        0 if n > 0 => {
            parts.remove(rng.below(n));
        }
        1 if n > 0 => {
            let frame = parts[rng.below(n)].clone();
            parts.insert(rng.below(n + 1), frame);
        }
        2 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            parts.swap(a, b);
        }
        3 if n > 0 => {
            let i = rng.below(n);
            parts[i].clear();
        }
        4 if n > 0 => {
            let i = rng.below(n);
            let grow = [255, 256, 1024, 4097, 8192][rng.below(5)];
            let byte = rng.next_u64() as u8;
            let len = parts[i].len() + grow;
            parts[i].resize(len, byte);
        }
        _ => {
            let size = rng.below(32);
            let frame = rng.bytes(size);
            parts.insert(rng.below(n + 1), frame);
        }
    }
    frames::join(&parts)
}
