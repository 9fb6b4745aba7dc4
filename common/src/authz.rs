//! Authorization per CURVE key: the permission words of the authorized-keys file, what they
//! allow, and the per-thread guard services ask before serving a message.
//!
//! Grammar (words after a key's name, any order, repeatable):
//!
//! | word                      | allows                                                     |
//! |---------------------------|------------------------------------------------------------|
//! | `all`                     | everything                                                 |
//! | `logd.write[=PREFIX]`     | appending to streams whose name starts with PREFIX        |
//! | `logd.read[=PREFIX]`      | replaying (and listing) streams starting with PREFIX       |
//! | `cache.write[=SUBTREE]`   | setting and deleting keys starting with SUBTREE            |
//! | `cache.read[=SUBTREE]`    | snapshots of subtrees inside SUBTREE                       |
//! | `queue.produce[=QUEUE]`   | publishing to QUEUE (`NAME*`: every queue starting NAME)   |
//! | `queue.consume[=QUEUE]`   | subscribing to QUEUE (same forms)                          |
//! | `timers` / `clock.timers` | adding, cancelling and listing clock timers                |
//!
//! A word without `=VALUE` (or with `=*`) covers every stream, subtree or queue. A key with
//! no words at all keeps full access, as before permissions were enforced.
//!
//! Rate words limit instead of allow (each at most once per key; a key with only rate words
//! keeps full access):
//!
//! | word               | limits the key to                                       |
//! |--------------------|---------------------------------------------------------|
//! | `logd.rate=N/s`    | N records a second into logd (acked, PULL and SUB)      |
//! | `queue.rate=N/s`   | N messages a second published (router `PUB` and PULL)   |
//! | `cache.rate=N/s`   | N updates (KVSETs) a second                             |
//!
//! Each service thread keeps a token bucket per key holding at most one second's worth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::rate::Buckets;
use crate::ratelimit::RateLimited;
use crate::security::{Authorizer, SERVER_USER};

/// An operation a client asks for, with the name it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Append records to a log stream.
    LogWrite(&'a str),
    /// Replay or subscribe to a log stream (a stream prefix for subscriptions and listings).
    LogRead(&'a str),
    /// Set or delete a cache key.
    CacheWrite(&'a str),
    /// Snapshot a cache subtree.
    CacheRead(&'a str),
    /// Publish to a queue.
    QueueProduce(&'a str),
    /// Subscribe to a queue.
    QueueConsume(&'a str),
    /// Add, cancel or list clock timers.
    Timers,
}

impl std::fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::LogWrite(s) => write!(f, "write stream {s:?}"),
            Op::LogRead(s) => write!(f, "read stream {s:?}"),
            Op::CacheWrite(s) => write!(f, "write cache key {s:?}"),
            Op::CacheRead(s) => write!(f, "read cache subtree {s:?}"),
            Op::QueueProduce(s) => write!(f, "publish to queue {s:?}"),
            Op::QueueConsume(s) => write!(f, "consume from queue {s:?}"),
            Op::Timers => write!(f, "use clock timers"),
        }
    }
}

/// A name pattern: a prefix, or (queues) an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    prefix: bool,
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.text)
        } else {
            name == self.text
        }
    }

    /// Whether every name starting with `prefix` matches (subscriptions and listings ask for
    /// a prefix, not a name).
    fn covers_prefix(&self, prefix: &str) -> bool {
        self.prefix && prefix.starts_with(&self.text)
    }
}

/// What one key may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    all: bool,
    log_write: Vec<Pattern>,
    log_read: Vec<Pattern>,
    cache_write: Vec<Pattern>,
    cache_read: Vec<Pattern>,
    queue_produce: Vec<Pattern>,
    queue_consume: Vec<Pattern>,
    timers: bool,
    /// Units a second per `Service` (`logd.rate=N/s` …); None: unlimited.
    rates: [Option<u32>; 4],
}

/// Reads the value of a rate word: a whole number a second, `N/s` (or plain `N`), at least 1.
pub fn parse_rate(value: &str) -> Result<u32, String> {
    let number = value.strip_suffix("/s").unwrap_or(value);
    match number.parse::<u32>() {
        Ok(0) => Err(
            "a rate must be at least 1/s (leave out the write permission to forbid \
                     writing)"
                .into(),
        ),
        Ok(rate) => Ok(rate),
        Err(_) => Err(format!(
            "{value:?} is not a rate: write a whole number per second such as 5000/s"
        )),
    }
}

impl Permissions {
    /// Full access (the server's own key, keys listed without permission words).
    pub fn everything() -> Permissions {
        Permissions {
            all: true,
            ..Permissions::default()
        }
    }

    /// Parses a key's permission words; no words means everything.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Permissions, String> {
        if words.is_empty() {
            return Ok(Permissions::everything());
        }
        let mut p = Permissions::default();
        let mut rate_words = 0;
        for word in words {
            let word = word.as_ref();
            let (verb, value) = match word.split_once('=') {
                Some((verb, value)) => {
                    if value.is_empty() {
                        return Err(format!(
                            "{word:?} has an empty value (leave out `=` to allow every name)"
                        ));
                    }
                    (verb, Some(value))
                }
                None => (word, None),
            };
            // Streams and cache keys are matched by prefix; queues by name unless `NAME*`.
            let prefix = |value: Option<&str>| Pattern {
                text: value.unwrap_or("").trim_end_matches('*').to_string(),
                prefix: true,
            };
            let queue = |value: Option<&str>| match value {
                None | Some("*") => Pattern {
                    text: String::new(),
                    prefix: true,
                },
                Some(v) => match v.strip_suffix('*') {
                    Some(stem) => Pattern {
                        text: stem.to_string(),
                        prefix: true,
                    },
                    None => Pattern {
                        text: v.to_string(),
                        prefix: false,
                    },
                },
            };
            let rated = match verb {
                "logd.rate" => Some(Service::Logd),
                "queue.rate" => Some(Service::Queue),
                "cache.rate" => Some(Service::Cache),
                _ => None,
            };
            if let Some(service) = rated {
                let Some(value) = value else {
                    return Err(format!("{word:?} needs a rate, e.g. {verb}=1000/s"));
                };
                let slot = &mut p.rates[service as usize];
                if slot.is_some() {
                    return Err(format!("{verb:?} is given twice"));
                }
                *slot = Some(parse_rate(value).map_err(|e| format!("{word:?}: {e}"))?);
                rate_words += 1;
                continue;
            }
            match (verb, value) {
                ("all", None) => p.all = true,
                ("timers" | "clock.timers", None) => p.timers = true,
                ("logd.write", v) => p.log_write.push(prefix(v)),
                ("logd.read", v) => p.log_read.push(prefix(v)),
                ("cache.write", v) => p.cache_write.push(prefix(v)),
                ("cache.read", v) => p.cache_read.push(prefix(v)),
                ("queue.produce", v) => p.queue_produce.push(queue(v)),
                ("queue.consume", v) => p.queue_consume.push(queue(v)),
                ("all" | "timers" | "clock.timers", Some(_)) => {
                    return Err(format!("{verb:?} takes no value, got {word:?}"))
                }
                _ => return Err(format!("unknown permission {word:?}")),
            }
        }
        // Rate words alone limit a key that otherwise has everything.
        if rate_words == words.len() {
            p.all = true;
        }
        Ok(p)
    }

    /// The key's rate limit on `service`, in units a second (None: unlimited).
    pub fn rate(&self, service: Service) -> Option<u32> {
        self.rates[service as usize]
    }

    /// Whether these permissions allow `op`.
    pub fn allows(&self, op: &Op<'_>) -> bool {
        if self.all {
            return true;
        }
        let any = |patterns: &[Pattern], name: &str| patterns.iter().any(|p| p.matches(name));
        match op {
            Op::LogWrite(s) => any(&self.log_write, s),
            Op::LogRead(s) => any(&self.log_read, s),
            Op::CacheWrite(k) => any(&self.cache_write, k),
            Op::CacheRead(k) => any(&self.cache_read, k),
            Op::QueueProduce(q) => any(&self.queue_produce, q),
            Op::QueueConsume(q) => any(&self.queue_consume, q),
            Op::Timers => self.timers,
        }
    }

    /// Whether every stream starting with `prefix` may be read (a live subscription, a
    /// stream listing).
    pub fn allows_read_prefix(&self, prefix: &str) -> bool {
        self.all || self.log_read.iter().any(|p| p.covers_prefix(prefix))
    }

    /// Whether every cache key starting with `subtree` may be read (a snapshot).
    pub fn allows_cache_subtree(&self, subtree: &str) -> bool {
        self.all || self.cache_read.iter().any(|p| p.covers_prefix(subtree))
    }
}

/// Which service refused, for `depot_security_denied_total{service}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Log ingest, replay and live.
    Logd = 0,
    /// The cache.
    Cache = 1,
    /// Queues.
    Queue = 2,
    /// Clock timers.
    Clock = 3,
}

impl Service {
    /// Every service, in counter order.
    pub const ALL: [Service; 4] = [
        Service::Logd,
        Service::Cache,
        Service::Queue,
        Service::Clock,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Service::Logd => "logd",
            Service::Cache => "cache",
            Service::Queue => "queue",
            Service::Clock => "clock",
        }
    }

    /// What a rate limit on this service counts.
    fn unit(self) -> &'static str {
        match self {
            Service::Logd => "records",
            Service::Cache => "updates",
            Service::Queue => "messages",
            Service::Clock => "requests",
        }
    }
}

/// The ZAP user id libzmq attached to a received frame (any frame of a message carries the
/// connection's metadata); empty when the connection has none (no CURVE, a key without name).
pub fn user_id(frame: &mut zmq::Message) -> String {
    frame.gets("User-Id").unwrap_or_default().to_string()
}

/// One service thread's way to ask the authorizer (None without CURVE: everything allowed).
#[derive(Debug)]
pub struct Guard {
    authorizer: Option<Arc<Authorizer>>,
    service: Service,
    log: RateLimited,
    /// Token buckets of the keys with a rate limit on this service (this thread's share).
    buckets: Buckets,
    /// Warnings about rate-limited keys, apart from refusals so neither hides the other.
    rate_log: RateLimited,
}

impl Guard {
    /// A guard for `service`; `authorizer` is None when CURVE is off.
    pub fn new(authorizer: Option<Arc<Authorizer>>, service: Service) -> Guard {
        Guard {
            authorizer,
            service,
            log: RateLimited::default(),
            buckets: Buckets::default(),
            rate_log: RateLimited::default(),
        }
    }

    /// Whether authorization is enforced at all (CURVE on): lets hot paths skip reading the
    /// user id.
    pub fn active(&self) -> bool {
        self.authorizer.is_some()
    }

    /// What `user` may do: everything without CURVE, for the server's key and for keys
    /// without a name; nothing for a name no longer in the file.
    pub fn grants(&self, user: &str) -> Arc<Permissions> {
        match &self.authorizer {
            Some(authorizer) if !user.is_empty() => {
                authorizer.permissions(user).unwrap_or_default()
            }
            _ => Arc::new(Permissions::everything()),
        }
    }

    /// Counts and logs a refusal decided elsewhere (e.g. with `grants`); returns the reason.
    pub fn refused(&mut self, user: &str, op: Op<'_>) -> String {
        if let Some(authorizer) = &self.authorizer {
            authorizer.metrics.denied[self.service as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(user, service = self.service.name(), %op, suppressed, "security: operation not authorized");
        }
        format!("not authorized: key {user:?} may not {op}")
    }

    /// Asks whether `user` may do `op`: on refusal counts it, logs it (rate-limited) and
    /// returns the reason for an error reply.
    pub fn check(&mut self, user: &str, op: Op<'_>) -> Result<(), String> {
        self.decide(user, op, |p| p.allows(&op))
    }

    /// As `check`, with the decision taken by `allowed` on the user's permissions.
    pub fn decide(
        &mut self,
        user: &str,
        op: Op<'_>,
        allowed: impl FnOnce(&Permissions) -> bool,
    ) -> Result<(), String> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(());
        };
        if user.is_empty() || user == SERVER_USER {
            return Ok(());
        }
        if authorizer.permissions(user).is_some_and(|p| allowed(&p)) {
            return Ok(());
        }
        Err(self.refused(user, op))
    }

    /// `check` for the sender of `frame`.
    pub fn check_frame(&mut self, frame: &mut zmq::Message, op: Op<'_>) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        let user = user_id(frame);
        self.check(&user, op)
    }

    /// `check`, then takes `units` (records, messages or updates) from the key's rate limit on
    /// this service: over it, the refusal is counted, logged (rate-limited) and explained.
    pub fn check_admit(&mut self, user: &str, op: Op<'_>, units: u64) -> Result<(), String> {
        self.check_admit_at(user, op, units, Instant::now())
    }

    /// `check_admit` for the sender of `frame`.
    pub fn check_frame_admit(
        &mut self,
        frame: &mut zmq::Message,
        op: Op<'_>,
        units: u64,
    ) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        let user = user_id(frame);
        self.check_admit(&user, op, units)
    }

    fn check_admit_at(
        &mut self,
        user: &str,
        op: Op<'_>,
        units: u64,
        now: Instant,
    ) -> Result<(), String> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(());
        };
        if user.is_empty() || user == SERVER_USER {
            return Ok(());
        }
        let Some(grants) = authorizer.permissions(user).filter(|p| p.allows(&op)) else {
            return Err(self.refused(user, op));
        };
        let rate = grants.rate(self.service);
        if self.buckets.take(user, rate, units, now) {
            return Ok(());
        }
        Err(self.rate_limited(user, rate.unwrap_or_default(), units))
    }

    /// Counts and logs a message over its key's rate; returns the reason.
    fn rate_limited(&mut self, user: &str, rate: u32, units: u64) -> String {
        let (service, unit) = (self.service.name(), self.service.unit());
        if let Some(authorizer) = &self.authorizer {
            let metrics = &authorizer.metrics;
            metrics.rate_limited[self.service as usize].fetch_add(1, Ordering::Relaxed);
            metrics.rate_limited_units[self.service as usize].fetch_add(units, Ordering::Relaxed);
        }
        if let Some(suppressed) = self.rate_log.allow() {
            tracing::warn!(
                user,
                service,
                rate,
                units,
                suppressed,
                "security: key over its rate limit"
            );
        }
        format!("rate limit: key {user:?} may send {rate} {unit}/s to {service}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(words: &[&str]) -> Permissions {
        Permissions::parse(words).unwrap()
    }

    #[test]
    fn no_words_and_all_allow_everything() {
        for p in [perms(&[]), perms(&["all"])] {
            assert!(p.allows(&Op::LogWrite("x")));
            assert!(p.allows(&Op::CacheRead("a/b")));
            assert!(p.allows(&Op::QueueConsume("jobs")));
            assert!(p.allows(&Op::Timers));
            assert!(p.allows_read_prefix(""));
        }
    }

    #[test]
    fn log_and_cache_words_match_by_prefix() {
        let p = perms(&["logd.write=app.", "logd.read=app.", "cache.write=/cfg/"]);
        assert!(p.allows(&Op::LogWrite("app.web")));
        assert!(!p.allows(&Op::LogWrite("sys.kernel")));
        assert!(p.allows(&Op::LogRead("app.web")));
        assert!(p.allows(&Op::CacheWrite("/cfg/a")));
        assert!(!p.allows(&Op::CacheWrite("/secret/a")));
        assert!(!p.allows(&Op::CacheRead("/cfg/a")));
        assert!(!p.allows(&Op::Timers));
        assert!(!p.allows(&Op::QueueProduce("jobs")));
        // Prefixes asked for as a whole: only when inside a granted prefix.
        assert!(p.allows_read_prefix("app.web"));
        assert!(!p.allows_read_prefix("app"));
        assert!(!p.allows_read_prefix(""));
        let star = perms(&["logd.read=*", "cache.read=/a*"]);
        assert!(star.allows_read_prefix(""));
        assert!(star.allows_cache_subtree("/a/b"));
        assert!(!star.allows_cache_subtree("/"));
        assert!(perms(&["logd.write"]).allows(&Op::LogWrite("anything")));
    }

    #[test]
    fn queue_words_match_a_name_or_a_starred_prefix() {
        let p = perms(&["queue.produce=jobs", "queue.consume=work.*"]);
        assert!(p.allows(&Op::QueueProduce("jobs")));
        assert!(!p.allows(&Op::QueueProduce("jobs2")));
        assert!(!p.allows(&Op::QueueConsume("jobs")));
        assert!(p.allows(&Op::QueueConsume("work.a")));
        assert!(perms(&["queue.consume"]).allows(&Op::QueueConsume("any")));
        assert!(perms(&["queue.produce=*"]).allows(&Op::QueueProduce("any")));
    }

    #[test]
    fn timers_have_two_spellings() {
        assert!(perms(&["timers"]).allows(&Op::Timers));
        assert!(perms(&["clock.timers"]).allows(&Op::Timers));
    }

    #[test]
    fn bad_words_are_refused_with_the_word() {
        for (words, needle) in [
            (&["logd.wirte=a"][..], "unknown permission"),
            (&["logd.write="][..], "empty value"),
            (&["timers=x"][..], "takes no value"),
            (&["all=1"][..], "takes no value"),
            (&["cache"][..], "unknown permission"),
        ] {
            let e = Permissions::parse(words).unwrap_err();
            assert!(e.contains(needle), "{words:?}: {e}");
        }
    }

    #[test]
    fn rate_words_parse_per_service_and_alone_keep_full_access() {
        let p = perms(&["logd.write=app.", "logd.rate=5000/s", "cache.rate=20"]);
        assert_eq!(p.rate(Service::Logd), Some(5000));
        assert_eq!(p.rate(Service::Cache), Some(20));
        assert_eq!(p.rate(Service::Queue), None);
        assert!(p.allows(&Op::LogWrite("app.x")));
        assert!(!p.allows(&Op::Timers));
        let only = perms(&["queue.rate=7/s"]);
        assert_eq!(only.rate(Service::Queue), Some(7));
        assert!(only.allows(&Op::Timers) && only.allows(&Op::LogWrite("any")));
        assert_eq!(Permissions::everything().rate(Service::Logd), None);
    }

    #[test]
    fn bad_rate_words_are_refused_with_the_reason() {
        for (word, needle) in [
            ("logd.rate", "needs a rate"),
            ("logd.rate=", "empty value"),
            ("logd.rate=0/s", "at least 1/s"),
            ("logd.rate=fast", "not a rate"),
            ("logd.rate=5/min", "not a rate"),
            ("cache.rate=-3/s", "not a rate"),
            ("queue.rate=99999999999/s", "not a rate"),
            ("clock.rate=5/s", "unknown permission"),
        ] {
            let e = Permissions::parse(&[word]).unwrap_err();
            assert!(e.contains(needle), "{word}: {e}");
        }
        let e = Permissions::parse(&["logd.rate=1/s", "logd.rate=2/s"]).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn a_guard_limits_each_key_at_its_rate_and_counts_what_it_refuses() {
        use crate::security::KeyPair;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let server = KeyPair::generate().unwrap();
        let (slow, fast) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        std::fs::write(
            &path,
            format!(
                "{} slow logd.write=app. logd.rate=10/s\n{} fast\n",
                slow.public.z85(),
                fast.public.z85()
            ),
        )
        .unwrap();
        let authorizer = Arc::new(Authorizer::new(path.clone(), server.public));
        let mut guard = Guard::new(Some(authorizer.clone()), Service::Logd);
        let op = Op::LogWrite("app.x");
        let t0 = Instant::now();
        assert!(guard.check_admit_at("slow", op, 6, t0).is_ok());
        let e = guard.check_admit_at("slow", op, 6, t0).unwrap_err();
        assert!(
            e.starts_with("rate limit") && e.contains("10 records/s"),
            "{e}"
        );
        assert!(guard.check_admit_at("slow", op, 4, t0).is_ok());
        for _ in 0..100 {
            assert!(guard.check_admit_at("fast", op, 1_000, t0).is_ok());
        }
        // Half a second later: five more.
        let later = t0 + std::time::Duration::from_millis(500);
        assert!(guard.check_admit_at("slow", op, 5, later).is_ok());
        assert!(guard.check_admit_at("slow", op, 1, later).is_err());
        // Authorization comes first, and is counted as a denial, not a rate refusal.
        let e = guard
            .check_admit_at("slow", Op::LogWrite("sys"), 1, later)
            .unwrap_err();
        assert!(e.starts_with("not authorized"), "{e}");
        let m = &authorizer.metrics;
        assert_eq!(
            m.rate_limited[Service::Logd as usize].load(Ordering::Relaxed),
            2
        );
        assert_eq!(
            m.rate_limited_units[Service::Logd as usize].load(Ordering::Relaxed),
            7
        );
        assert_eq!(m.denied[Service::Logd as usize].load(Ordering::Relaxed), 1);
        // The limit follows the key file.
        std::fs::write(
            &path,
            format!("{} slow logd.write=app.\n", slow.public.z85()),
        )
        .unwrap();
        authorizer.reload();
        assert!(guard.check_admit_at("slow", op, 1_000, later).is_ok());
        // A guard without CURVE limits nobody.
        let mut open = Guard::new(None, Service::Logd);
        assert!(open.check_admit_at("slow", op, u64::MAX, t0).is_ok());
    }

    #[test]
    fn a_guard_without_curve_allows_everything_and_counts_nothing() {
        let mut guard = Guard::new(None, Service::Logd);
        assert!(guard.check("mallory", Op::Timers).is_ok());
    }

    #[test]
    fn a_guard_follows_the_key_file_counts_and_explains_refusals() {
        use crate::security::KeyPair;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let server = KeyPair::generate().unwrap();
        let alice = KeyPair::generate().unwrap().public;
        std::fs::write(&path, format!("{} alice logd.write=app.\n", alice.z85())).unwrap();
        let authorizer = Arc::new(Authorizer::new(path.clone(), server.public));
        let mut guard = Guard::new(Some(authorizer.clone()), Service::Clock);
        assert!(guard.check("alice", Op::LogWrite("app.x")).is_ok());
        let e = guard.check("alice", Op::Timers).unwrap_err();
        assert!(
            e.starts_with("not authorized") && e.contains("alice"),
            "{e}"
        );
        // The server's own key, and connections without a user id, have everything.
        assert!(guard.check(SERVER_USER, Op::Timers).is_ok());
        assert!(guard.check("", Op::Timers).is_ok());
        // A name no longer in the file has nothing.
        assert!(guard.check("bob", Op::LogWrite("app.x")).is_err());
        assert_eq!(
            authorizer.metrics.denied[Service::Clock as usize].load(Ordering::Relaxed),
            2
        );
        std::fs::write(&path, format!("{} alice timers\n", alice.z85())).unwrap();
        authorizer.reload();
        assert!(guard.check("alice", Op::Timers).is_ok());
        assert!(guard.check("alice", Op::LogWrite("app.x")).is_err());
    }
}
