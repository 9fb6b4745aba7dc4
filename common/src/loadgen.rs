//! Synthetic log lines for benchmarks and load tools: realistic enough that compression
//! behaves as on real logs (timestamps, ids, paths, numbers vary), deterministic per seed.

/// Makes log lines of about a given length.
pub struct LogLines {
    state: u64,
    counter: u64,
}

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const PATHS: [&str; 6] = [
    "/api/v1/items",
    "/api/v1/users",
    "/login",
    "/api/v2/orders",
    "/static/app.js",
    "/health",
];
const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
const WORDS: [&str; 12] = [
    "cache", "miss", "retry", "upstream", "timeout", "session", "renewed", "queue", "depth",
    "slow", "query", "ok",
];

impl LogLines {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        LogLines {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            counter: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*: fast, and good enough for varied text.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// Writes the next line, padded or cut to exactly `len` bytes, into `out` (cleared first).
    pub fn next_line(&mut self, len: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        self.counter += 1;
        let r = self.next_u64();
        let _ = write!(
            out,
            "2026-11-24T20:{:02}:{:02}.{:03}Z {} web-{} {} {}/{} {} {}ms req={:08x}",
            (self.counter / 60_000) % 60,
            (self.counter / 1_000) % 60,
            self.counter % 1_000,
            self.pick(&LEVELS),
            r % 8,
            self.pick(&METHODS),
            self.pick(&PATHS),
            (r >> 8) % 100_000,
            if r.is_multiple_of(10) { 500 } else { 200 },
            (r >> 24) % 900,
            (r >> 32) as u32,
        );
        while out.len() < len {
            out.push(b' ');
            let word = self.pick(&WORDS);
            out.extend_from_slice(word.as_bytes());
        }
        out.truncate(len);
    }
}

/// `count` lines of `len` bytes from a generator seeded with `seed`.
pub fn lines(seed: u64, len: usize, count: usize) -> Vec<Vec<u8>> {
    let mut gen = LogLines::new(seed);
    (0..count)
        .map(|_| {
            let mut line = Vec::new();
            gen.next_line(len, &mut line);
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_asked_length_and_vary() {
        let mut lines = LogLines::new(7);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        lines.next_line(100, &mut a);
        lines.next_line(100, &mut b);
        assert_eq!(a.len(), 100);
        assert_eq!(b.len(), 100);
        assert_ne!(a, b);
        let mut again = LogLines::new(7);
        let mut c = Vec::new();
        again.next_line(100, &mut c);
        assert_eq!(a, c, "deterministic per seed");
    }
}
