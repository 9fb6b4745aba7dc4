//! Syslog parsing (RFC 5424 and lenient RFC 3164) and TCP framing (RFC 6587), with no I/O.
//!
//! Everything here is total: any byte sequence yields a value or a [`SyslogError`], never a
//! panic, in time linear in the input and with allocations bounded by a small multiple of it.
//!
//! A message is read as RFC 5424 when `<PRI>` is followed by `1 ` and a valid RFC 3339
//! timestamp or `-`; from then on the header is strict. Anything else after a valid `<PRI>` is
//! read as RFC 3164, which never fails: at worst the whole rest becomes the message.
//!
//! [`TcpFramer`] skips LF, CR and NUL between frames and drops a CR before a frame's LF. It
//! buffers at most about `max_frame` bytes plus the last push, provided the caller calls
//! `next_frame` until `Ok(None)` after each push; bytes of a rejected frame are dropped as they
//! arrive. An unterminated LF frame still pending when the connection closes is never returned.

// A malformed datagram must cost one error counter increment, never the listener task.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// Which syslog format a message was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyslogFormat {
    /// RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`.
    Rfc5424,
    /// BSD syslog (RFC 3164 and its common variants), including a bare `<PRI>text`.
    Rfc3164,
}

/// A parsed syslog message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogMessage {
    /// Facility, 0..=23 (PRI / 8).
    pub facility: u8,
    /// Severity, 0..=7 (PRI % 8; 0 is emergency, 7 is debug).
    pub severity: u8,
    /// Which format the message was in.
    pub format: SyslogFormat,
    /// Timestamp as sent (RFC 3339, or `Mmm dd hh:mm:ss` for RFC 3164); None for `-` or absent.
    pub timestamp: Option<String>,
    /// HOSTNAME; None for `-` or absent.
    pub hostname: Option<String>,
    /// RFC 5424 APP-NAME, or the RFC 3164 TAG without `[pid]:`.
    pub app_name: Option<String>,
    /// RFC 5424 PROCID, or the pid in an RFC 3164 `TAG[pid]`.
    pub procid: Option<String>,
    /// RFC 5424 MSGID; always None for RFC 3164.
    pub msgid: Option<String>,
    /// RFC 5424 STRUCTURED-DATA as raw text (all elements, escapes kept); None for `-`.
    pub structured_data: Option<String>,
    /// MSG bytes, UTF-8 BOM stripped, trailing LF, CR and NUL trimmed.
    pub message: Vec<u8>,
    /// Whether `message` is valid UTF-8 (the bytes are kept either way).
    pub valid_utf8: bool,
}

/// Why a datagram or a TCP frame could not be read as syslog.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SyslogError {
    /// The message had no bytes (or only line terminators).
    #[error("empty syslog message")]
    Empty,
    /// The message does not start with `<`.
    #[error("missing PRI: a syslog message must start with '<'")]
    MissingPri,
    /// `<` is not followed by digits and `>`.
    #[error("malformed PRI: expected '<', 1 to 3 digits, '>'")]
    BadPri,
    /// PRI is above 191 (saturated at `u32::MAX`).
    #[error("PRI {0} out of range 0..=191")]
    PriOutOfRange(u32),
    /// An RFC 5424 message ended before the named header field.
    #[error("truncated RFC 5424 header: missing {0}")]
    TruncatedHeader(&'static str),
    /// The named RFC 5424 header field is empty (two spaces in a row).
    #[error("empty RFC 5424 {0} field")]
    EmptyField(&'static str),
    /// RFC 5424 STRUCTURED-DATA is malformed, for the given reason.
    #[error("malformed RFC 5424 structured data: {0}")]
    BadStructuredData(&'static str),
    /// A TCP frame is longer than the framer's limit.
    #[error("syslog frame too large: {len} bytes, limit is {max}")]
    FrameTooLarge {
        /// The declared MSG-LEN, or for LF framing the bytes seen before giving up.
        len: usize,
        /// The framer's limit.
        max: usize,
    },
    /// An octet-counted TCP frame has an unusable MSG-LEN, for the given reason.
    #[error("bad octet count: {0}")]
    BadOctetCount(&'static str),
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses one syslog message (a UDP datagram or a frame from [`TcpFramer`]).
pub fn parse(datagram: &[u8]) -> Result<SyslogMessage, SyslogError> {
    // Trimming up front lets a header that ends right before a trailing LF still parse.
    let data = trim_trailing(datagram);
    if data.is_empty() {
        return Err(SyslogError::Empty);
    }
    let (pri, rest) = parse_pri(data)?;
    // pri <= 191, so both fit in u8.
    let facility = (pri / 8) as u8;
    let severity = (pri % 8) as u8;
    if let Some(header) = rest.strip_prefix(b"1 ") {
        let (ts, _) = split_token(header);
        if ts == b"-" || is_rfc3339(ts) {
            return parse_5424(facility, severity, header);
        }
    }
    Ok(parse_3164(facility, severity, rest))
}

fn trim_trailing(mut s: &[u8]) -> &[u8] {
    while let [head @ .., b'\n' | b'\r' | b'\0'] = s {
        s = head;
    }
    s
}

fn parse_pri(data: &[u8]) -> Result<(u32, &[u8]), SyslogError> {
    let Some(after_lt) = data.strip_prefix(b"<") else {
        return Err(SyslogError::MissingPri);
    };
    let digits = after_lt.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = after_lt.split_at(digits);
    let Some(rest) = rest.strip_prefix(b">") else {
        return Err(SyslogError::BadPri);
    };
    if digits == 0 {
        return Err(SyslogError::BadPri);
    }
    let pri = number.iter().fold(0u32, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    });
    if pri > 191 {
        return Err(SyslogError::PriOutOfRange(pri));
    }
    Ok((pri, rest))
}

/// Splits at the first SP: the token, then the rest starting with that SP (or empty).
fn split_token(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    s.split_at(end)
}

fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    s.get(n..).unwrap_or_default()
}

fn text(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

fn nil_or_text(s: &[u8]) -> Option<String> {
    (s != b"-").then(|| text(s))
}

fn finish(facility: u8, severity: u8, format: SyslogFormat, message: &[u8]) -> SyslogMessage {
    let message = message.strip_prefix(BOM).unwrap_or(message).to_vec();
    let valid_utf8 = std::str::from_utf8(&message).is_ok();
    SyslogMessage {
        facility,
        severity,
        format,
        timestamp: None,
        hostname: None,
        app_name: None,
        procid: None,
        msgid: None,
        structured_data: None,
        message,
        valid_utf8,
    }
}

/// `header` starts at TIMESTAMP, right after `<PRI>1 `.
fn parse_5424(facility: u8, severity: u8, header: &[u8]) -> Result<SyslogMessage, SyslogError> {
    let (timestamp, s) = header_field(header, "TIMESTAMP", "HOSTNAME")?;
    let (hostname, s) = header_field(s, "HOSTNAME", "APP-NAME")?;
    let (app_name, s) = header_field(s, "APP-NAME", "PROCID")?;
    let (procid, s) = header_field(s, "PROCID", "MSGID")?;
    let (msgid, s) = header_field(s, "MSGID", "STRUCTURED-DATA")?;
    let (structured_data, s) = match s.first() {
        None => return Err(SyslogError::TruncatedHeader("STRUCTURED-DATA")),
        Some(b'-') => (None, s.get(1..).unwrap_or_default()),
        Some(b'[') => {
            let (sd, rest) = s.split_at(sd_len(s)?);
            (Some(sd), rest)
        }
        Some(b' ') => return Err(SyslogError::EmptyField("STRUCTURED-DATA")),
        Some(_) => return Err(SyslogError::BadStructuredData("expected '-' or '['")),
    };
    let message = match s {
        [] => &[][..],
        [b' ', msg @ ..] => msg,
        _ => {
            return Err(SyslogError::BadStructuredData(
                "expected SP or end of message after structured data",
            ))
        }
    };
    let mut out = finish(facility, severity, SyslogFormat::Rfc5424, message);
    out.timestamp = nil_or_text(timestamp);
    out.hostname = nil_or_text(hostname);
    out.app_name = nil_or_text(app_name);
    out.procid = nil_or_text(procid);
    out.msgid = nil_or_text(msgid);
    out.structured_data = structured_data.map(text);
    Ok(out)
}

/// One space-terminated RFC 5424 header field; returns it and the rest after its SP.
fn header_field<'a>(
    s: &'a [u8],
    name: &'static str,
    next: &'static str,
) -> Result<(&'a [u8], &'a [u8]), SyslogError> {
    if s.is_empty() {
        return Err(SyslogError::TruncatedHeader(name));
    }
    let (token, rest) = split_token(s);
    if token.is_empty() {
        return Err(SyslogError::EmptyField(name));
    }
    match rest.strip_prefix(b" ") {
        Some(rest) => Ok((token, rest)),
        None => Err(SyslogError::TruncatedHeader(next)),
    }
}

fn is_sd_name_byte(b: u8) -> bool {
    (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"')
}

/// Length of the SD-ELEMENTs at the start of `s` (which starts with `[`).
fn sd_len(s: &[u8]) -> Result<usize, SyslogError> {
    let at = |i: usize| s.get(i).copied();
    let name_end = |start: usize| {
        let len = s
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| is_sd_name_byte(b))
            .count();
        (len > 0).then_some(start + len)
    };
    let mut i = 0;
    while at(i) == Some(b'[') {
        i = name_end(i + 1).ok_or(SyslogError::BadStructuredData("empty or invalid SD-ID"))?;
        loop {
            match at(i) {
                Some(b']') => {
                    i += 1;
                    break;
                }
                Some(b' ') => {
                    i = name_end(i + 1).ok_or(SyslogError::BadStructuredData(
                        "empty or invalid PARAM-NAME",
                    ))?;
                    if at(i) != Some(b'=') {
                        return Err(SyslogError::BadStructuredData(
                            "expected '=' after PARAM-NAME",
                        ));
                    }
                    if at(i + 1) != Some(b'"') {
                        return Err(SyslogError::BadStructuredData(
                            "expected '\"' to open PARAM-VALUE",
                        ));
                    }
                    i += 2;
                    loop {
                        match at(i) {
                            None => {
                                return Err(SyslogError::BadStructuredData(
                                    "unterminated PARAM-VALUE",
                                ))
                            }
                            // Skipping the escaped byte keeps `\"` and `\]` inside the value.
                            Some(b'\\') => i += 2,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                None => return Err(SyslogError::BadStructuredData("unterminated SD-ELEMENT")),
                Some(_) => {
                    return Err(SyslogError::BadStructuredData(
                        "expected SP or ']' in SD-ELEMENT",
                    ))
                }
            }
        }
    }
    Ok(i)
}

/// Matches `s` against `pattern`, where `D` stands for any ASCII digit.
fn matches_pattern(s: &[u8], pattern: &[u8]) -> bool {
    s.len() == pattern.len()
        && s.iter().zip(pattern).all(|(&b, &p)| {
            if p == b'D' {
                b.is_ascii_digit()
            } else {
                b == p
            }
        })
}

/// Digits of an optional `.fraction` at the start of `s`, including the dot (0 if none).
fn fraction_len(s: &[u8]) -> usize {
    match s.strip_prefix(b".") {
        Some(rest) => match rest.iter().take_while(|b| b.is_ascii_digit()).count() {
            0 => 0,
            n => n + 1,
        },
        None => 0,
    }
}

/// RFC 3339 date-time as RFC 5424 uses it: `YYYY-MM-DDThh:mm:ss[.frac](Z|+hh:mm|-hh:mm)`.
fn is_rfc3339(s: &[u8]) -> bool {
    let (Some(date), Some(t), Some(time), Some(rest)) =
        (s.get(..10), s.get(10), s.get(11..19), s.get(19..))
    else {
        return false;
    };
    if !matches_pattern(date, b"DDDD-DD-DD")
        || !matches!(t, b'T' | b't')
        || !matches_pattern(time, b"DD:DD:DD")
    {
        return false;
    }
    let zone = rest.get(fraction_len(rest)..).unwrap_or_default();
    matches!(zone, b"Z" | b"z")
        || matches_pattern(zone, b"+DD:DD")
        || matches_pattern(zone, b"-DD:DD")
}

const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// A BSD timestamp at the start of `s`: `Mmm dd hh:mm:ss`, where dd may be ` d`, `dd` or `d`,
/// optionally with a year before the time (Cisco) and a fraction after it.
fn bsd_timestamp_len(s: &[u8]) -> Option<usize> {
    let month = s.get(..3)?;
    if !MONTHS.iter().any(|m| m.eq_ignore_ascii_case(month)) || s.get(3) != Some(&b' ') {
        return None;
    }
    let digit = |i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let mut i = match (s.get(4), digit(5)) {
        (Some(b' '), true) => 6,
        (Some(d), true) if d.is_ascii_digit() => 6,
        (Some(d), false) if d.is_ascii_digit() => 5,
        _ => return None,
    };
    if s.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    if matches_pattern(s.get(i..i + 5)?, b"DDDD ") {
        i += 5;
    }
    if !matches_pattern(s.get(i..i + 8)?, b"DD:DD:DD") {
        return None;
    }
    i += 8;
    i += fraction_len(s.get(i..).unwrap_or_default());
    matches!(s.get(i), None | Some(b' ')).then_some(i)
}

/// A TAG token: `name:`, `name[pid]:` or `name[pid]`; returns the name and the pid.
fn parse_tag(token: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let name_end = token
        .iter()
        .position(|&b| matches!(b, b'[' | b']' | b':'))?;
    let (name, tail) = token.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let pid = match tail {
        [b':'] => return Some((name, None)),
        [b'[', pid @ .., b']'] | [b'[', pid @ .., b']', b':'] => pid,
        _ => return None,
    };
    if pid.iter().any(|&b| matches!(b, b'[' | b']')) {
        return None;
    }
    Some((name, (!pid.is_empty()).then_some(pid)))
}

/// A host name or IPv4 address, or an IPv6 address (which is why ':' is only allowed with hex).
fn is_hostname(token: &[u8]) -> bool {
    let name = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    let ipv6 = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
    // Past 255 bytes (the DNS limit) a first word is message text, not a host.
    (1..=255).contains(&token.len()) && (token.iter().all(name) || token.iter().all(ipv6))
}

/// `s` is everything after `<PRI>`; this never fails, at worst `s` is all message.
fn parse_3164(facility: u8, severity: u8, s: &[u8]) -> SyslogMessage {
    // RFC 3339 here comes from rsyslog's RSYSLOG_ForwardFormat and syslog-ng's ts-format(iso).
    let ts_len = bsd_timestamp_len(s).or_else(|| {
        let (token, _) = split_token(s);
        is_rfc3339(token).then_some(token.len())
    });
    let Some(ts_len) = ts_len else {
        return finish(facility, severity, SyslogFormat::Rfc3164, s);
    };
    let (timestamp, rest) = s.split_at(ts_len);
    let rest = skip_spaces(rest);

    let (first, after_first) = split_token(rest);
    let mut hostname = None;
    let mut tag = parse_tag(first);
    let mut body = after_first;
    if tag.is_none() {
        // logger writes "-" when it cannot get the host name.
        if first == b"-" || is_hostname(first) {
            hostname = nil_or_text(first);
            let after_host = after_first.strip_prefix(b" ").unwrap_or(after_first);
            let (second, after_second) = split_token(after_host);
            tag = parse_tag(second);
            body = if tag.is_some() {
                after_second
            } else {
                after_host
            };
        } else {
            body = rest;
        }
    }
    if tag.is_some() {
        body = body.strip_prefix(b" ").unwrap_or(body);
    }

    let mut out = finish(facility, severity, SyslogFormat::Rfc3164, body);
    out.timestamp = Some(text(timestamp));
    out.hostname = hostname;
    if let Some((name, pid)) = tag {
        out.app_name = Some(text(name));
        out.procid = pid.map(text);
    }
    out
}

/// Most MSG-LEN digits worth reading: `u64::MAX` has 20, so a longer count cannot be a length.
const MAX_LEN_DIGITS: usize = 20;

fn is_terminator(b: u8) -> bool {
    b == b'\n' || b == b'\0'
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    /// Rest of an oversize octet-counted frame.
    Bytes(usize),
    /// Rest of an oversize or unreadable frame, through its LF or NUL.
    ToTerminator,
}

impl Skip {
    /// How many leading bytes of `data` to drop, updating what is left to skip.
    fn consume(&mut self, data: &[u8]) -> usize {
        match *self {
            Skip::Nothing => 0,
            Skip::Bytes(n) => {
                let k = n.min(data.len());
                *self = if k == n {
                    Skip::Nothing
                } else {
                    Skip::Bytes(n - k)
                };
                k
            }
            Skip::ToTerminator => match data.iter().position(|&b| is_terminator(b)) {
                Some(i) => {
                    *self = Skip::Nothing;
                    i + 1
                }
                None => data.len(),
            },
        }
    }
}

/// Splits a TCP byte stream into syslog messages: octet-counting (RFC 6587 3.4.1: "LEN SP MSG") when a frame starts with a digit, else non-transparent framing ending at LF (also accept NUL as terminator).
#[derive(Debug)]
pub struct TcpFramer {
    buf: Vec<u8>,
    /// Bytes of `buf` before this are consumed.
    start: usize,
    /// Bytes after `start` already searched for a terminator, so slow senders stay O(n).
    scanned: usize,
    max_frame: usize,
    skip: Skip,
}

impl TcpFramer {
    /// A framer that rejects frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_frame,
            skip: Skip::Nothing,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        // Moving at most as many bytes as were consumed keeps compaction amortized O(n).
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut bytes = bytes;
        if self.start == self.buf.len() {
            // Dropping skipped bytes here keeps a huge discarded frame out of the buffer.
            let k = self.skip.consume(bytes);
            bytes = bytes.get(k..).unwrap_or_default();
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete frame, Ok(None) when more bytes are needed, Err for a frame that can never be valid (then the framer has skipped past it so the caller can continue: e.g. an oversize LF frame is discarded up to its LF; a bad octet count skips to the next LF).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, SyslogError> {
        let k = self
            .skip
            .consume(self.buf.get(self.start..).unwrap_or_default());
        if k > 0 {
            self.start += k;
            self.scanned = 0;
        }
        if self.skip != Skip::Nothing {
            return Ok(None);
        }
        let separators = self
            .pending()
            .iter()
            .take_while(|&&b| matches!(b, b'\n' | b'\r' | b'\0'))
            .count();
        if separators > 0 {
            self.start += separators;
            self.scanned = 0;
        }
        match self.pending().first() {
            None => {
                self.buf.clear();
                self.start = 0;
                self.scanned = 0;
                Ok(None)
            }
            Some(b) if b.is_ascii_digit() => self.octet_counted(),
            Some(_) => self.lf_terminated(),
        }
    }

    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    fn bad_count(&mut self, consumed: usize, why: &'static str) -> SyslogError {
        self.start += consumed;
        self.skip = Skip::ToTerminator;
        SyslogError::BadOctetCount(why)
    }

    fn octet_counted(&mut self) -> Result<Option<Vec<u8>>, SyslogError> {
        let pending = self.pending();
        let digits = pending
            .iter()
            .take(MAX_LEN_DIGITS + 1)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > MAX_LEN_DIGITS {
            return Err(self.bad_count(digits, "MSG-LEN has too many digits"));
        }
        match pending.get(digits) {
            None => return Ok(None),
            Some(b' ') => {}
            // Not consuming the byte lets an LF right after the digits end the bad frame.
            Some(_) => return Err(self.bad_count(digits, "expected SP after MSG-LEN")),
        }
        if pending.first() == Some(&b'0') {
            return Err(self.bad_count(digits + 1, "MSG-LEN must start with 1-9"));
        }
        let len = pending
            .get(..digits)
            .unwrap_or_default()
            .iter()
            .try_fold(0usize, |acc, &d| {
                acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
            });
        let Some(len) = len else {
            return Err(self.bad_count(digits + 1, "MSG-LEN overflows"));
        };
        let body = digits + 1;
        if len > self.max_frame {
            self.start += body;
            self.skip = Skip::Bytes(len);
            return Err(SyslogError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        // Saturating: with max_frame == usize::MAX the sum could otherwise wrap.
        let Some(frame) = pending.get(body..body.saturating_add(len)) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.start += body + len;
        Ok(Some(frame))
    }

    fn lf_terminated(&mut self) -> Result<Option<Vec<u8>>, SyslogError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let from = self.scanned.min(pending.len());
        let found = pending
            .get(from..)
            .unwrap_or_default()
            .iter()
            .position(|&b| is_terminator(b));
        let Some(offset) = found else {
            let seen = pending.len();
            if seen > self.max_frame {
                self.start += seen;
                self.scanned = 0;
                self.skip = Skip::ToTerminator;
                return Err(SyslogError::FrameTooLarge {
                    len: seen,
                    max: self.max_frame,
                });
            }
            self.scanned = seen;
            return Ok(None);
        };
        let end = from + offset;
        self.scanned = 0;
        if end > self.max_frame {
            self.start += end + 1;
            return Err(SyslogError::FrameTooLarge {
                len: end,
                max: self.max_frame,
            });
        }
        let frame = pending.get(..end).unwrap_or_default();
        let frame = frame.strip_suffix(b"\r").unwrap_or(frame).to_vec();
        self.start += end + 1;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    fn ok(input: &[u8]) -> SyslogMessage {
        match parse(input) {
            Ok(m) => m,
            Err(e) => panic!("{:?} failed: {e}", String::from_utf8_lossy(input)),
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    /// Drains every result the framer has ready.
    fn drain(framer: &mut TcpFramer) -> Vec<Result<Vec<u8>, SyslogError>> {
        let mut out = Vec::new();
        loop {
            match framer.next_frame() {
                Ok(None) => return out,
                Ok(Some(frame)) => out.push(Ok(frame)),
                Err(e) => out.push(Err(e)),
            }
        }
    }

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, SyslogError>> {
        let mut framer = TcpFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            out.extend(drain(&mut framer));
        }
        out
    }

    // util-linux logger -n HOST -P 5514 (default and --rfc5424).

    #[test]
    fn logger_rfc5424_with_pid_and_time_quality() {
        let m = ok(br#"<13>1 2026-11-24T20:00:00.123456+00:00 myhost myapp 1234 - [timeQuality tzKnown="1" isSynced="0"] hello world"#);
        assert_eq!(m.facility, 1);
        assert_eq!(m.severity, 5);
        assert_eq!(m.format, SyslogFormat::Rfc5424);
        assert_eq!(m.timestamp, s("2026-11-24T20:00:00.123456+00:00"));
        assert_eq!(m.hostname, s("myhost"));
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.procid, s("1234"));
        assert_eq!(m.msgid, None);
        assert_eq!(
            m.structured_data,
            s(r#"[timeQuality tzKnown="1" isSynced="0"]"#)
        );
        assert_eq!(m.message, b"hello world");
        assert!(m.valid_utf8);
    }

    #[test]
    fn logger_rfc5424_synced_without_pid() {
        let m = ok(br#"<14>1 2026-11-24T21:00:00.000001+01:00 web-1.example.org root - - [timeQuality tzKnown="1" isSynced="1" syncAccuracy="120500"] disk almost full"#);
        assert_eq!((m.facility, m.severity), (1, 6));
        assert_eq!(m.hostname, s("web-1.example.org"));
        assert_eq!(m.app_name, s("root"));
        assert_eq!(m.procid, None);
        assert_eq!(
            m.structured_data,
            s(r#"[timeQuality tzKnown="1" isSynced="1" syncAccuracy="120500"]"#)
        );
        assert_eq!(m.message, b"disk almost full");
    }

    #[test]
    fn logger_rfc5424_empty_message_has_trailing_space() {
        let m = ok(br#"<13>1 2026-11-24T20:00:00.123456+00:00 myhost myapp - - [timeQuality tzKnown="1" isSynced="0"] "#);
        assert_eq!(m.message, b"");
        assert!(m.structured_data.is_some());
    }

    #[test]
    fn logger_rfc5424_notime_nohost_notq_msgid_user_sd() {
        let m = ok(
            br#"<165>1 - - myapp 99 ID7 [meta@32473 sequenceId="1" note="a \"quoted\\ \] b"] text"#,
        );
        assert_eq!((m.facility, m.severity), (20, 5));
        assert_eq!(m.timestamp, None);
        assert_eq!(m.hostname, None);
        assert_eq!(m.msgid, s("ID7"));
        assert_eq!(
            m.structured_data,
            s(r#"[meta@32473 sequenceId="1" note="a \"quoted\\ \] b"]"#)
        );
        assert_eq!(m.message, b"text");
    }

    // util-linux logger --rfc3164 and the local (/dev/log, glibc syslog()) format.

    #[test]
    fn logger_rfc3164_with_hostname_and_pid() {
        let m = ok(b"<13>Nov 24 20:00:00 myhost myapp[1234]: hello");
        assert_eq!(m.format, SyslogFormat::Rfc3164);
        assert_eq!((m.facility, m.severity), (1, 5));
        assert_eq!(m.timestamp, s("Nov 24 20:00:00"));
        assert_eq!(m.hostname, s("myhost"));
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.procid, s("1234"));
        assert_eq!(m.msgid, None);
        assert_eq!(m.structured_data, None);
        assert_eq!(m.message, b"hello");
    }

    #[test]
    fn logger_rfc3164_without_pid_and_padded_day() {
        let m = ok(b"<13>Nov  4 09:05:00 myhost myapp: hello there");
        assert_eq!(m.timestamp, s("Nov  4 09:05:00"));
        assert_eq!(m.hostname, s("myhost"));
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.procid, None);
        assert_eq!(m.message, b"hello there");
    }

    #[test]
    fn logger_rfc3164_unknown_hostname_is_nil() {
        let m = ok(b"<13>Nov 24 20:00:00 - myapp: hello");
        assert_eq!(m.hostname, None);
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.message, b"hello");
    }

    #[test]
    fn local_format_without_hostname() {
        let m = ok(b"<13>Nov 24 20:00:00 myapp: hello");
        assert_eq!(m.hostname, None);
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.procid, None);
        assert_eq!(m.message, b"hello");

        let m = ok(b"<86>Nov  4 20:00:00 sshd[812]: Accepted publickey for root");
        assert_eq!((m.facility, m.severity), (10, 6));
        assert_eq!(m.hostname, None);
        assert_eq!(m.app_name, s("sshd"));
        assert_eq!(m.procid, s("812"));
        assert_eq!(m.message, b"Accepted publickey for root");
    }

    // RFC 5424 section 6.5 examples.

    #[test]
    fn rfc5424_example_1_bom_and_nilvalues() {
        let m = ok(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' failed for lonvick on /dev/pts/8");
        assert_eq!((m.facility, m.severity), (4, 2));
        assert_eq!(m.timestamp, s("2003-10-11T22:14:15.003Z"));
        assert_eq!(m.hostname, s("mymachine.example.com"));
        assert_eq!(m.app_name, s("su"));
        assert_eq!(m.procid, None);
        assert_eq!(m.msgid, s("ID47"));
        assert_eq!(m.structured_data, None);
        assert_eq!(m.message, b"'su root' failed for lonvick on /dev/pts/8");
        assert!(m.valid_utf8);
    }

    #[test]
    fn rfc5424_example_2_no_bom() {
        let m = ok(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.");
        assert_eq!((m.facility, m.severity), (20, 5));
        assert_eq!(m.timestamp, s("2003-08-24T05:14:15.000003-07:00"));
        assert_eq!(m.hostname, s("192.0.2.1"));
        assert_eq!(m.app_name, s("myproc"));
        assert_eq!(m.procid, s("8710"));
        assert_eq!(m.msgid, None);
        assert_eq!(m.message, b"%% It's time to make the do-nuts.");
    }

    #[test]
    fn rfc5424_example_3_sd_and_bom_message() {
        let m = ok(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \xEF\xBB\xBFAn application event log entry...");
        assert_eq!(m.app_name, s("evntslog"));
        assert_eq!(
            m.structured_data,
            s(r#"[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]"#)
        );
        assert_eq!(m.message, b"An application event log entry...");
    }

    #[test]
    fn rfc5424_example_4_two_sd_elements_no_msg() {
        let m = ok(br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]"#);
        assert_eq!(
            m.structured_data,
            s(
                r#"[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]"#
            )
        );
        assert_eq!(m.message, b"");
    }

    #[test]
    fn rfc5424_all_nil_and_bare_sd_id() {
        let m = ok(b"<0>1 - - - - - -");
        assert_eq!((m.facility, m.severity), (0, 0));
        assert_eq!(m.format, SyslogFormat::Rfc5424);
        assert_eq!(
            (&m.timestamp, &m.hostname, &m.app_name, &m.procid, &m.msgid),
            (&None, &None, &None, &None, &None)
        );
        assert_eq!(m.structured_data, None);
        assert_eq!(m.message, b"");

        let m = ok(b"<191>1 - - - - - [origin] x");
        assert_eq!((m.facility, m.severity), (23, 7));
        assert_eq!(m.structured_data, s("[origin]"));
        assert_eq!(m.message, b"x");
    }

    #[test]
    fn rfc5424_message_keeps_inner_spaces_and_brackets() {
        let m = ok(b"<13>1 2026-11-24T20:00:00Z h a p m -  two [not sd] spaces ");
        assert_eq!(m.message, b" two [not sd] spaces ");
    }

    #[test]
    fn rfc5424_unescaped_bracket_inside_quotes_is_tolerated() {
        let m = ok(br#"<13>1 2026-11-24T20:00:00Z h a p m [x@1 v="a]b"] msg"#);
        assert_eq!(m.structured_data, s(r#"[x@1 v="a]b"]"#));
        assert_eq!(m.message, b"msg");
    }

    #[test]
    fn rfc5424_header_errors() {
        use SyslogError::*;
        let cases: &[(&[u8], SyslogError)] = &[
            (b"<13>1 2026-11-24T20:00:00Z", TruncatedHeader("HOSTNAME")),
            (b"<13>1 2026-11-24T20:00:00Z ", TruncatedHeader("HOSTNAME")),
            (b"<13>1 - host", TruncatedHeader("APP-NAME")),
            (b"<13>1 - host app", TruncatedHeader("PROCID")),
            (b"<13>1 - host app 1", TruncatedHeader("MSGID")),
            (b"<13>1 - host app 1 id", TruncatedHeader("STRUCTURED-DATA")),
            (
                b"<13>1 - host app 1 id ",
                TruncatedHeader("STRUCTURED-DATA"),
            ),
            (b"<13>1 -  app 1 id -", EmptyField("HOSTNAME")),
            (b"<13>1 - h a p m  msg", EmptyField("STRUCTURED-DATA")),
            (
                b"<13>1 - h a p m x",
                BadStructuredData("expected '-' or '['"),
            ),
            (
                b"<13>1 - h a p m -x",
                BadStructuredData("expected SP or end of message after structured data"),
            ),
            (
                b"<13>1 - h a p m []",
                BadStructuredData("empty or invalid SD-ID"),
            ),
            (
                b"<13>1 - h a p m [id",
                BadStructuredData("unterminated SD-ELEMENT"),
            ),
            (
                b"<13>1 - h a p m [id k]",
                BadStructuredData("expected '=' after PARAM-NAME"),
            ),
            (
                b"<13>1 - h a p m [id k=v]",
                BadStructuredData("expected '\"' to open PARAM-VALUE"),
            ),
            (
                b"<13>1 - h a p m [id k=\"v]",
                BadStructuredData("unterminated PARAM-VALUE"),
            ),
            (
                b"<13>1 - h a p m [id k=\"v\\\"]",
                BadStructuredData("unterminated PARAM-VALUE"),
            ),
            (
                b"<13>1 - h a p m [id  k=\"v\"]",
                BadStructuredData("empty or invalid PARAM-NAME"),
            ),
            (
                b"<13>1 - h a p m [id k=\"v\"x]",
                BadStructuredData("expected SP or ']' in SD-ELEMENT"),
            ),
            (
                b"<13>1 - h a p m [id k=\"v\"]x",
                BadStructuredData("expected SP or end of message after structured data"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn version_1_without_timestamp_is_3164_free_text() {
        let m = ok(b"<13>1 thing happened");
        assert_eq!(m.format, SyslogFormat::Rfc3164);
        assert_eq!(m.timestamp, None);
        assert_eq!(m.message, b"1 thing happened");
    }

    // RFC 3164 and what rsyslog / syslog-ng forward.

    #[test]
    fn rfc3164_examples() {
        let m = ok(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8");
        assert_eq!((m.facility, m.severity), (4, 2));
        assert_eq!(m.hostname, s("mymachine"));
        assert_eq!(m.app_name, s("su"));
        assert_eq!(m.message, b"'su root' failed for lonvick on /dev/pts/8");

        // No TAG: the hostname is followed directly by the content.
        let m = ok(b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!");
        assert_eq!(m.hostname, s("10.0.0.99"));
        assert_eq!(m.app_name, None);
        assert_eq!(m.message, b"Use the BFG!");
    }

    #[test]
    fn rfc3164_pri_and_free_text_only() {
        let m = ok(b"<13>hello world: this is free text");
        assert_eq!(m.format, SyslogFormat::Rfc3164);
        assert_eq!((m.timestamp, m.hostname, m.app_name), (None, None, None));
        assert_eq!(m.message, b"hello world: this is free text");

        let m = ok(b"<13>");
        assert_eq!(m.message, b"");
        assert_eq!(m.timestamp, None);

        let m = ok(b"<7>Novel idea");
        assert_eq!((m.facility, m.severity), (0, 7));
        assert_eq!(m.timestamp, None);
        assert_eq!(m.message, b"Novel idea");
    }

    #[test]
    fn rfc3164_timestamp_only_or_host_only() {
        let m = ok(b"<13>Nov 24 20:00:00");
        assert_eq!(m.timestamp, s("Nov 24 20:00:00"));
        assert_eq!(m.hostname, None);
        assert_eq!(m.message, b"");

        let m = ok(b"<13>Nov 24 20:00:00 myhost myapp:");
        assert_eq!(m.hostname, s("myhost"));
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.message, b"");
    }

    #[test]
    fn rfc3164_variants() {
        // rsyslog RSYSLOG_ForwardFormat / syslog-ng ts-format(iso).
        let m = ok(b"<13>2026-11-24T20:00:00.123456+00:00 myhost myapp[1234]: hello");
        assert_eq!(m.format, SyslogFormat::Rfc3164);
        assert_eq!(m.timestamp, s("2026-11-24T20:00:00.123456+00:00"));
        assert_eq!(m.hostname, s("myhost"));
        assert_eq!(m.app_name, s("myapp"));
        assert_eq!(m.procid, s("1234"));

        // Single-space single-digit day, year, and fractional seconds.
        assert_eq!(
            ok(b"<13>Nov 4 20:00:00 h a: x").timestamp,
            s("Nov 4 20:00:00")
        );
        let m = ok(b"<13>Nov 24 2026 20:00:00.123 router app: x");
        assert_eq!(m.timestamp, s("Nov 24 2026 20:00:00.123"));
        assert_eq!(m.hostname, s("router"));

        // Tags with '/' and without ':' after [pid]; IPv6 hostname.
        let m = ok(b"<22>Nov 24 20:00:00 mx postfix/smtpd[4321]: connect from x");
        assert_eq!(m.app_name, s("postfix/smtpd"));
        assert_eq!(m.procid, s("4321"));
        let m = ok(b"<13>Nov 24 20:00:00 fe80::1 app[7] started");
        assert_eq!(m.hostname, s("fe80::1"));
        assert_eq!(m.app_name, s("app"));
        assert_eq!(m.procid, s("7"));
        assert_eq!(m.message, b"started");
        let m = ok(b"<13>Nov 24 20:00:00 host app[]: x");
        assert_eq!((m.app_name, m.procid), (s("app"), None));

        // A first word that can be neither host nor tag starts the message.
        let m = ok(b"<13>Nov 24 20:00:00 hello, world");
        assert_eq!((m.hostname, m.app_name), (None, None));
        assert_eq!(m.message, b"hello, world");
        let m = ok(b"<13>Nov 24 20:00:00 host app:no-space");
        assert_eq!(m.hostname, s("host"));
        assert_eq!(m.app_name, None);
        assert_eq!(m.message, b"app:no-space");

        let long = format!("<13>Nov 24 20:00:00 {} rest", "a".repeat(256));
        let m = ok(long.as_bytes());
        assert_eq!(m.hostname, None);
        assert_eq!(m.message.len(), 256 + 5);

        // Invalid month or time: no timestamp, the whole rest is the message.
        let m = ok(b"<13>Foo 24 20:00:00 host app: x");
        assert_eq!(m.timestamp, None);
        assert_eq!(m.message, b"Foo 24 20:00:00 host app: x");
        assert_eq!(ok(b"<13>Nov 24 20:0:00 h a: x").timestamp, None);
    }

    #[test]
    fn trailing_terminators_trimmed_and_bom_stripped() {
        assert_eq!(ok(b"<13>Nov 24 20:00:00 h a: hi\r\n").message, b"hi");
        assert_eq!(ok(b"<13>Nov 24 20:00:00 h a: hi\n\0\0").message, b"hi");
        assert_eq!(ok(b"<13>1 - - - - - -\n").message, b"");
        assert_eq!(ok(b"<13>1 - - - - - - \xEF\xBB\xBFhi\n").message, b"hi");
        assert_eq!(
            ok(b"<13>Nov 24 20:00:00 h a: \xEF\xBB\xBFhi").message,
            b"hi"
        );
        // Only a leading BOM is the RFC 5424 marker; others are content.
        assert_eq!(
            ok(b"<13>1 - - - - - - a\xEF\xBB\xBF").message,
            b"a\xEF\xBB\xBF"
        );
    }

    #[test]
    fn invalid_utf8_body_is_kept() {
        let m = ok(b"<13>1 - host app - - - caf\xE9 \xFF\xFE");
        assert!(!m.valid_utf8);
        assert_eq!(m.message, b"caf\xE9 \xFF\xFE");
        let m = ok(b"<13>Nov 24 20:00:00 host app: \xC3\x28");
        assert!(!m.valid_utf8);
        assert_eq!(m.message, b"\xC3\x28");
        // Invalid bytes in header fields are replaced, not rejected.
        let m = ok(b"<13>1 - h\xFFst app - - - ok");
        assert_eq!(m.hostname, s("h\u{FFFD}st"));
        assert!(m.valid_utf8);
    }

    #[test]
    fn pri_errors_and_bounds() {
        use SyslogError::*;
        let cases: &[(&[u8], SyslogError)] = &[
            (b"", Empty),
            (b"\n", Empty),
            (b"<", BadPri),
            (b"<12", BadPri),
            (b"<>", BadPri),
            (b"<a>", BadPri),
            (b"<1a>", BadPri),
            (b"< 13>x", BadPri),
            (b"<999>x", PriOutOfRange(999)),
            (b"<192>x", PriOutOfRange(192)),
            (b"<1000>x", PriOutOfRange(1000)),
            (b"<99999999999999999999>", PriOutOfRange(u32::MAX)),
            (b"hello", MissingPri),
            (b" <13>x", MissingPri),
            (b"\xFF\xFE\x00\x01", MissingPri),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(ok(b"<191>x").facility, 23);
        assert_eq!(ok(b"<191>x").severity, 7);
        assert_eq!(ok(b"<007>x").severity, 7);
    }

    #[test]
    fn errors_have_clear_messages() {
        assert_eq!(
            SyslogError::PriOutOfRange(999).to_string(),
            "PRI 999 out of range 0..=191"
        );
        assert_eq!(
            SyslogError::FrameTooLarge { len: 10, max: 4 }.to_string(),
            "syslog frame too large: 10 bytes, limit is 4"
        );
        assert_eq!(
            SyslogError::TruncatedHeader("MSGID").to_string(),
            "truncated RFC 5424 header: missing MSGID"
        );
    }

    // TCP framing.

    #[test]
    fn framer_octet_counting_as_logger_sends() {
        let m1 = b"<13>1 2026-11-24T20:00:00.123456+00:00 myhost myapp - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] one";
        let m2 = b"<13>1 - myhost myapp - - - two\nlines";
        let mut stream = format!("{} ", m1.len()).into_bytes();
        stream.extend_from_slice(m1);
        stream.extend_from_slice(format!("{} ", m2.len()).as_bytes());
        stream.extend_from_slice(m2);
        let got = frames(1024, &[&stream]);
        assert_eq!(got, vec![Ok(m1.to_vec()), Ok(m2.to_vec())]);
        assert_eq!(ok(got[0].as_ref().unwrap()).message, b"one");
        assert_eq!(ok(got[1].as_ref().unwrap()).message, b"two\nlines");
    }

    #[test]
    fn framer_lf_crlf_and_nul() {
        let got = frames(1024, &[b"<13>a\n<13>b\r\n<13>c\0\n\n<13>d\n"]);
        assert_eq!(
            got,
            vec![
                Ok(b"<13>a".to_vec()),
                Ok(b"<13>b".to_vec()),
                Ok(b"<13>c".to_vec()),
                Ok(b"<13>d".to_vec())
            ]
        );
        // An unterminated frame waits.
        assert_eq!(frames(1024, &[b"<13>partial"]), vec![]);
    }

    #[test]
    fn framer_mixed_and_byte_by_byte() {
        let stream = b"5 <13>a<13>b\n3 <1>\n\n<13>c\n4 <2>x";
        let want = vec![
            Ok(b"<13>a".to_vec()),
            Ok(b"<13>b".to_vec()),
            Ok(b"<1>".to_vec()),
            Ok(b"<13>c".to_vec()),
            Ok(b"<2>x".to_vec()),
        ];
        assert_eq!(frames(1024, &[stream]), want);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(1024, &bytes), want);
    }

    #[test]
    fn framer_oversize_lf_frame_is_skipped() {
        let big = [b'x'; 20];
        let mut stream = b"<13>".to_vec();
        stream.extend_from_slice(&big);
        stream.extend_from_slice(b"\n<13>ok\n");
        let too_large = Err(SyslogError::FrameTooLarge { len: 24, max: 10 });
        assert_eq!(
            frames(10, &[&stream]),
            vec![too_large.clone(), Ok(b"<13>ok".to_vec())]
        );

        // Seen before its LF arrives: rejected early, the rest is dropped without buffering.
        let mut framer = TcpFramer::new(10);
        framer.push(b"<13>0123456789");
        assert_eq!(
            drain(&mut framer),
            vec![Err(SyslogError::FrameTooLarge { len: 14, max: 10 })]
        );
        for _ in 0..1000 {
            framer.push(&[b'y'; 100]);
            assert_eq!(drain(&mut framer), vec![]);
            assert!(framer.buf.len() <= 200);
        }
        framer.push(b"tail\n<13>next\n");
        assert_eq!(drain(&mut framer), vec![Ok(b"<13>next".to_vec())]);

        // Exactly max_frame bytes is accepted.
        assert_eq!(frames(5, &[b"<13>x\n"]), vec![Ok(b"<13>x".to_vec())]);
        assert_eq!(frames(5, &[b"5 <13>x"]), vec![Ok(b"<13>x".to_vec())]);
    }

    #[test]
    fn framer_oversize_octet_frame_is_skipped_by_count() {
        // The skipped body contains an LF, which must not resynchronise early.
        let got = frames(10, &[b"15 <13>abc\ndefg", b"hij3 <1>"]);
        assert_eq!(
            got,
            vec![
                Err(SyslogError::FrameTooLarge { len: 15, max: 10 }),
                Ok(b"<1>".to_vec())
            ]
        );
        let mut framer = TcpFramer::new(10);
        framer.push(b"1000000 ");
        assert_eq!(
            drain(&mut framer),
            vec![Err(SyslogError::FrameTooLarge {
                len: 1_000_000,
                max: 10
            })]
        );
        for _ in 0..1000 {
            framer.push(&[b'z'; 1000]);
            assert_eq!(drain(&mut framer), vec![]);
            assert!(framer.buf.len() <= 1000);
        }
        framer.push(b"3 <1>");
        assert_eq!(drain(&mut framer), vec![Ok(b"<1>".to_vec())]);
    }

    #[test]
    fn framer_bad_octet_counts_skip_to_lf() {
        use SyslogError::BadOctetCount;
        let cases: &[(&[u8], SyslogError)] = &[
            (
                b"12x<13>junk\n<13>ok\n",
                BadOctetCount("expected SP after MSG-LEN"),
            ),
            (b"12\n<13>ok\n", BadOctetCount("expected SP after MSG-LEN")),
            (
                b"0 <13>junk\n<13>ok\n",
                BadOctetCount("MSG-LEN must start with 1-9"),
            ),
            (
                b"007 <13>abc\n<13>ok\n",
                BadOctetCount("MSG-LEN must start with 1-9"),
            ),
            (
                b"123456789012345678901234 x\n<13>ok\n",
                BadOctetCount("MSG-LEN has too many digits"),
            ),
            (
                b"99999999999999999999 x\n<13>ok\n",
                BadOctetCount("MSG-LEN overflows"),
            ),
        ];
        for (input, want) in cases {
            let want = vec![Err(want.clone()), Ok(b"<13>ok".to_vec())];
            assert_eq!(
                frames(100, &[input]),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                frames(100, &bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn framer_zero_limit_rejects_everything_without_panicking() {
        let got = frames(0, &[b"<1>\n3 <1>x\n"]);
        assert_eq!(
            got,
            vec![
                Err(SyslogError::FrameTooLarge { len: 3, max: 0 }),
                Err(SyslogError::FrameTooLarge { len: 3, max: 0 }),
                Err(SyslogError::FrameTooLarge { len: 1, max: 0 }),
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Frame {
        Octet(Vec<u8>),
        Line(Vec<u8>),
    }

    const PROP_MAX: usize = 64;

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 1..PROP_MAX + 20).prop_map(Frame::Octet),
            // LF frames start with '<' (never a digit or separator) and hold no LF, NUL or final CR.
            prop::collection::vec(
                any::<u8>().prop_filter("no terminator", |b| !is_terminator(*b)),
                0..PROP_MAX + 20
            )
            .prop_map(|mut body| {
                while body.last() == Some(&b'\r') {
                    body.pop();
                }
                let mut line = b"<".to_vec();
                line.extend(body);
                Frame::Line(line)
            }),
        ]
    }

    fn encode(frames: &[Frame]) -> (Vec<u8>, Vec<Result<Vec<u8>, SyslogError>>) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for frame in frames {
            match frame {
                Frame::Octet(body) => {
                    stream.extend_from_slice(format!("{} ", body.len()).as_bytes());
                    stream.extend_from_slice(body);
                    if body.len() > PROP_MAX {
                        want.push(Err(SyslogError::FrameTooLarge {
                            len: body.len(),
                            max: PROP_MAX,
                        }));
                    } else {
                        want.push(Ok(body.clone()));
                    }
                }
                Frame::Line(line) => {
                    stream.extend_from_slice(line);
                    stream.push(b'\n');
                    if line.len() > PROP_MAX {
                        want.push(Err(SyslogError::FrameTooLarge {
                            len: 0,
                            max: PROP_MAX,
                        }));
                    } else {
                        want.push(Ok(line.clone()));
                    }
                }
            }
        }
        (stream, want)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_past_the_pri(
            prefix in prop::sample::select(vec![
                &b"<13>1 "[..], b"<13>1 - ", b"<13>1 - h a p m ", b"<13>1 - h a p m [",
                b"<13>1 - h a p m [i k=\"", b"<13>Nov ", b"<13>Nov 24 20:00:00 ",
                b"<13>Nov  4 2026 20:00:00.", b"<13>2026-11-24T20:00:00", b"<0>",
            ]),
            tail in prop::collection::vec(
                prop::sample::select(b" -[]=\"\\:.0123456789<>TZ+a\xEF\xBB\xBF\n\r\0\xFF".to_vec()),
                0..80,
            ),
        ) {
            let mut input = prefix.to_vec();
            input.extend(&tail);
            if let Ok(m) = parse(&input) {
                // Lossy conversion can grow a field at most threefold.
                let size = m.message.len()
                    + [&m.timestamp, &m.hostname, &m.app_name, &m.procid, &m.msgid, &m.structured_data]
                        .iter()
                        .map(|f| f.as_ref().map_or(0, String::len))
                        .sum::<usize>();
                prop_assert!(size <= 3 * input.len());
                prop_assert!(m.facility <= 23 && m.severity <= 7);
                prop_assert_eq!(m.valid_utf8, std::str::from_utf8(&m.message).is_ok());
            }
        }

        #[test]
        fn rfc5424_fields_round_trip(
            pri in 0u32..=191,
            host in "[!-~]{1,20}",
            app in "[!-~]{1,20}",
            procid in "[0-9]{1,6}",
            msgid in "[A-Za-z0-9]{1,10}",
            value in "[ -~]{0,20}",
            msg in prop::collection::vec(any::<u8>(), 0..60),
        ) {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
            let sd = format!("[id@1 k=\"{escaped}\"][b]");
            let mut input = format!(
                "<{pri}>1 2026-01-02T03:04:05.6Z {host} {app} {procid} {msgid} {sd} "
            ).into_bytes();
            input.extend(&msg);
            let m = parse(&input).unwrap();
            prop_assert_eq!(m.format, SyslogFormat::Rfc5424);
            prop_assert_eq!(u32::from(m.facility) * 8 + u32::from(m.severity), pri);
            prop_assert_eq!(m.hostname, nil_or_text(host.as_bytes()));
            prop_assert_eq!(m.app_name, nil_or_text(app.as_bytes()));
            prop_assert_eq!(m.procid, Some(procid));
            prop_assert_eq!(m.msgid, Some(msgid));
            prop_assert_eq!(m.structured_data, Some(sd));
            let mut want = trim_trailing(&msg);
            want = want.strip_prefix(BOM).unwrap_or(want);
            prop_assert_eq!(m.message, want.to_vec());
        }

        #[test]
        fn framer_returns_same_frames_for_any_split(
            frames in prop::collection::vec(frame_strategy(), 0..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let (stream, want) = encode(&frames);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut framer = TcpFramer::new(PROP_MAX);
            let mut got = Vec::new();
            for pair in cuts.windows(2) {
                framer.push(&stream[pair[0]..pair[1]]);
                got.extend(drain(&mut framer));
                // Buffer stays near one frame even though oversize frames stream through.
                prop_assert!(framer.pending().len() <= PROP_MAX + MAX_LEN_DIGITS + 1);
            }
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                match (g, w) {
                    // An oversize LF frame reports what was seen, which depends on the split.
                    (Err(SyslogError::FrameTooLarge { len, max }), Err(SyslogError::FrameTooLarge { len: 0, .. })) => {
                        prop_assert!(*len > PROP_MAX);
                        prop_assert_eq!(*max, PROP_MAX);
                    }
                    _ => prop_assert_eq!(g, w),
                }
            }
        }

        #[test]
        fn framer_never_panics_on_garbage(
            bytes in prop::collection::vec(
                prop_oneof![any::<u8>(), prop::sample::select(b"0123456789 \n\0<".to_vec())],
                0..400,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            max in 0usize..80,
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut framer = TcpFramer::new(max);
            for pair in cuts.windows(2) {
                framer.push(&bytes[pair[0]..pair[1]]);
                for frame in drain(&mut framer).into_iter().flatten() {
                    prop_assert!(frame.len() <= max);
                }
                prop_assert!(framer.pending().len() <= max + MAX_LEN_DIGITS + 1);
            }
        }
    }
}
