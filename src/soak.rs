//! `depot bench soak`: the crash soak. Runs `depot serve` (this same binary) as a child on its
//! own data folder and loopback ports, drives acked log ingest, confirmed cache sets and
//! confirmed queue publishes with an acking consumer against it, SIGKILLs it at seeded random
//! moments and restarts it. After every start it checks what was acknowledged before:
//!
//! - log: the stream replays with sequences 1, 2, 3, ... without a gap, in the order sent, each
//!   record once, and every acked record at the sequence its ack named (with `--retention`,
//!   from the oldest record kept);
//! - cache: every key holds its last confirmed value or a later one, and the cache's sequence
//!   is not below the highest one a confirmed update got;
//! - queue: every confirmed message is delivered (at least once) with its payload at the
//!   sequence its confirm named; a message comes again only in a later lifetime of the
//!   appliance (it was unacknowledged, or its ack not yet stored, at the kill) and then marked
//!   as redelivered; first deliveries come in sequence order;
//! - clock timers: see [`timers`].
//!
//! With `--no-kill` there is one long lifetime, ended by SIGTERM, and the appliance's resident
//! memory is sampled for a trend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use depot_cache::client::{CacheClient, ServerEndpoints};
use depot_logd::client::{replay_api, AckedSender, ApiQuery, ClientError};
use depot_queue::client::{Consumer, Producer};

use crate::serve::{RunInfo, RUN_FILE};

mod timers;

/// Arguments of `depot bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Stop after this many minutes (the round under way finishes first).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Stop after this many kill rounds (default: as many as fit in --minutes).
    #[arg(long)]
    rounds: Option<u64>,
    /// Folder for the appliance's data, config and log (must not hold data yet; default: a
    /// fresh temporary folder, removed after a run without violations).
    #[arg(long = "data")]
    dir: Option<PathBuf>,
    /// Seed of the kill moments and the cache keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shortest time the load runs before a kill.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    min_round: Duration,
    /// Longest time the load runs before a kill.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    max_round: Duration,
    /// One lifetime of --minutes ended by SIGTERM, sampling the appliance's memory.
    #[arg(long)]
    no_kill: bool,
    /// How often the memory is sampled with --no-kill.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    rss_every: Duration,
    /// Acked log records per second; 0 for none.
    #[arg(long, default_value_t = 2_000)]
    log_rate: u64,
    /// Confirmed queue messages per second; 0 for none.
    #[arg(long, default_value_t = 2_000)]
    queue_rate: u64,
    /// Confirmed cache sets per second (each waits for its publication); 0 for none.
    #[arg(long, default_value_t = 200)]
    cache_rate: u64,
    /// Confirmed clock timers added per second (one-shot, due 0.2-3 s later); 0 for none.
    #[arg(long, default_value_t = 100)]
    timer_rate: u64,
    /// The appliance's storage engine cache (`[store] cache_size`, e.g. "8MiB"; default: the
    /// configuration's default).
    #[arg(long)]
    store_cache: Option<String>,
    /// Log retention by size (`[retention] max_bytes`, e.g. "16MiB", applied every 5 s):
    /// the check then starts at the oldest record kept. Default: none, every record is kept.
    #[arg(long)]
    retention: Option<String>,
}

const STREAM: &str = "soak";
const QUEUE: &str = "soak";
const CACHE_PREFIX: &str = "/soak/";
const CACHE_KEYS: u64 = 100;
/// Records or messages per acked batch or publish.
const BATCH: u64 = 10;
/// Batches or publishes sent before waiting for an answer.
const WINDOW: usize = 8;
/// How long a client waits for one answer before it looks at the stop flag again.
const TURN: Duration = Duration::from_millis(100);
/// How long a check after a restart may wait for the appliance.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Violations printed in full; the rest are counted.
const SHOWN_VIOLATIONS: usize = 30;

/// The appliance's configuration: every endpoint on an ephemeral loopback port; the clock
/// ticks but leaves the machine's scheduling and idle states alone; overdue timers fire
/// [`timers::RESTART_GRACE`] after a start.
const CONFIG: &str = r#"[admin]
listen = "127.0.0.1:0"

[cache]
snapshot = "tcp://127.0.0.1:*"
publisher = "tcp://127.0.0.1:*"
collector = "tcp://127.0.0.1:*"

[clock]
publisher = "tcp://127.0.0.1:*"
timers = "tcp://127.0.0.1:*"
realtime = false
idle_poll = false
restart_grace = "2s"

[logd]
pull = "tcp://127.0.0.1:*"
sub = "tcp://127.0.0.1:*"
acked = "tcp://127.0.0.1:*"
live = "tcp://127.0.0.1:*"
live_packed = "tcp://127.0.0.1:*"
replay = "tcp://127.0.0.1:*"
replay_api = "tcp://127.0.0.1:*"
syslog_udp = "127.0.0.1:0"
syslog_tcp = "127.0.0.1:0"

[queue]
router = "tcp://127.0.0.1:*"
pull = "tcp://127.0.0.1:*"

[queue.queues."soak"]
"#;

/// A small seeded generator (splitmix64): the run is repeatable from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.below(span + 1))
    }
}

/// Broken invariants: counted, the first few kept for the report.
#[derive(Default)]
struct Violations {
    count: u64,
}

impl Violations {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.count as usize <= SHOWN_VIOLATIONS {
            eprintln!("VIOLATION: {what}");
        } else if self.count as usize == SHOWN_VIOLATIONS + 1 {
            eprintln!("VIOLATION: (more follow, only counted)");
        }
    }
}

/// A log body: the sender's counter, padded to about 100 bytes.
fn log_body(counter: u64) -> Vec<u8> {
    let mut body = format!("soak-log {counter:020} ").into_bytes();
    body.resize(100, b'x');
    body
}

/// A queue payload: the producer's counter, padded to about 100 bytes.
fn queue_body(counter: u64) -> Vec<u8> {
    let mut body = format!("soak-queue {counter:020} ").into_bytes();
    body.resize(100, b'q');
    body
}

fn counter_of(body: &[u8], prefix: &str) -> Option<u64> {
    let rest = body.strip_prefix(prefix.as_bytes())?;
    std::str::from_utf8(rest.get(..20)?).ok()?.parse().ok()
}

/// What was acknowledged over all lifetimes, and what the checks found.
#[derive(Default)]
struct Model {
    violations: Violations,
    /// Log counters handed out so far (each record's body carries one).
    log_next: u64,
    /// Acked batches: first sequence -> (last sequence, counter of the first record).
    log_acked: BTreeMap<u64, (u64, u64)>,
    log_acked_records: u64,
    cache_next: u64,
    /// Key -> last confirmed counter.
    cache_confirmed: BTreeMap<String, u64>,
    cache_confirmed_updates: u64,
    /// Highest sequence a confirmed update was published with.
    cache_max_seq: u64,
    queue_next: u64,
    /// Confirmed messages: sequence -> counter.
    queue_confirmed: HashMap<u64, u64>,
    /// Confirmed and not yet delivered.
    queue_outstanding: BTreeSet<u64>,
    /// Delivered messages: sequence -> (counter, lifetime of the last delivery).
    queue_delivered: HashMap<u64, (u64, u64)>,
    /// Highest first delivery (not marked redelivered) of the current lifetime.
    queue_last_fresh: (u64, u64),
    queue_redelivered: u64,
    /// Repeats after a kill that came without the redelivered mark.
    queue_unmarked: u64,
    queue_deliveries: u64,
    /// Figures of the checks (records, updates, messages checked).
    checked_records: u64,
    checked_updates: u64,
    checked_messages: u64,
}

impl Model {
    fn log_acked(&mut self, first: u64, last: u64, first_counter: u64, count: u64) {
        if last + 1 - first != count {
            self.violations.add(format!(
                "log: a batch of {count} records was acked as sequences {first}..={last}"
            ));
        }
        self.log_acked.insert(first, (last, first_counter));
        self.log_acked_records += count;
    }

    fn queue_confirmed(&mut self, first: u64, last: u64, first_counter: u64, count: u64) {
        if last + 1 - first != count {
            self.violations.add(format!(
                "queue: a publish of {count} messages was confirmed as sequences {first}..={last}"
            ));
        }
        for seq in first..=last {
            let counter = first_counter + (seq - first);
            if let Some(&(got, _)) = self.queue_delivered.get(&seq) {
                if got != counter {
                    self.violations.add(format!(
                        "queue: sequence {seq} was confirmed for message {counter} but delivered \
                         message {got}"
                    ));
                }
            } else {
                self.queue_outstanding.insert(seq);
            }
            self.queue_confirmed.insert(seq, counter);
        }
    }

    fn queue_delivered(&mut self, seq: u64, redeliveries: u32, payload: &[u8], lifetime: u64) {
        self.queue_deliveries += 1;
        let Some(counter) = counter_of(payload, "soak-queue ").filter(|c| *c < self.queue_next)
        else {
            self.violations.add(format!(
                "queue: sequence {seq} delivered a message never sent ({} bytes)",
                payload.len()
            ));
            return;
        };
        if let Some(&expected) = self.queue_confirmed.get(&seq) {
            if expected != counter {
                self.violations.add(format!(
                    "queue: sequence {seq} was confirmed for message {expected} but delivered \
                     message {counter}"
                ));
            }
        }
        if let Some(&(before, before_lifetime)) = self.queue_delivered.get(&seq) {
            if before != counter {
                self.violations.add(format!(
                    "queue: sequence {seq} delivered message {before}, later message {counter}"
                ));
            }
            if before_lifetime == lifetime {
                self.violations.add(format!(
                    "queue: sequence {seq} delivered twice in one lifetime of the appliance"
                ));
            }
            // The queue stores a delivery horizon before it delivers past it, so a repeat
            // after a kill must carry the mark (docs/PROTOCOL.md).
            if redeliveries == 0 {
                self.queue_unmarked += 1;
                self.violations.add(format!(
                    "queue: sequence {seq} delivered in an earlier lifetime came again with \
                     redeliveries 0"
                ));
            }
            self.queue_redelivered += 1;
        }
        if redeliveries == 0 {
            let (last_lifetime, last_seq) = self.queue_last_fresh;
            if last_lifetime == lifetime && seq <= last_seq {
                self.violations.add(format!(
                    "queue: first delivery of sequence {seq} after sequence {last_seq}"
                ));
            }
            self.queue_last_fresh = (lifetime, seq);
        }
        self.queue_delivered.insert(seq, (counter, lifetime));
        self.queue_outstanding.remove(&seq);
    }
}

/// The appliance as a child process.
struct Appliance {
    child: Child,
    run: RunInfo,
}

impl Appliance {
    /// Starts `depot serve` and waits until it has written its run.json.
    fn start(exe: &Path, dir: &Path) -> anyhow::Result<Appliance> {
        let data = dir.join("data");
        let _ = std::fs::remove_file(data.join(RUN_FILE));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("appliance.log"))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(dir.join("depot.toml"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let deadline = Instant::now() + CHECK_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "depot serve exited at start with {status}; see {}",
                    dir.join("appliance.log").display()
                );
            }
            let run = std::fs::read(data.join(RUN_FILE))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<RunInfo>(&bytes).ok())
                .filter(|run| run.pid == child.id());
            if let Some(run) = run {
                return Ok(Appliance { child, run });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("depot serve did not start within {CHECK_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn cache(&self) -> anyhow::Result<ServerEndpoints> {
        let c = self
            .run
            .cache
            .as_ref()
            .context("the appliance runs no cache")?;
        Ok(ServerEndpoints {
            snapshot: c.snapshot.clone(),
            publisher: c.publisher.clone(),
            collector: c.collector.clone(),
        })
    }

    fn queue(&self) -> anyhow::Result<String> {
        Ok(self
            .run
            .queue
            .as_ref()
            .context("the appliance runs no queue")?
            .router
            .clone())
    }

    fn clock(&self) -> anyhow::Result<&depot_clock::ClockEndpoints> {
        self.run
            .clock
            .as_ref()
            .filter(|c| !c.timers.is_empty())
            .context("the appliance runs no clock timers")
    }

    /// Resident memory in KiB, None once the process is gone.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Whether the process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) with the pid of our own child, which is not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        anyhow::ensure!(rc == 0, "cannot signal the appliance");
        let deadline = Instant::now() + CHECK_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "the appliance exited with {status}");
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the appliance did not stop within {CHECK_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        // Never leave an appliance behind (an error return, a panic).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Replays the whole log stream and checks it against the acked batches; returns the acked
/// records checked. With `retention`, the replay may begin after sequence 1 (what retention
/// removed), and contiguity is checked from there.
fn check_log(ctx: &zmq::Context, endpoint: &str, model: &mut Model, retention: bool) -> u64 {
    let Model {
        violations,
        log_acked,
        log_next,
        ..
    } = model;
    let mut expected_seq = 1u64;
    let mut last_counter: Option<u64> = None;
    let mut checked = 0u64;
    let mut batches = log_acked.iter().peekable();
    let query = ApiQuery {
        stream: STREAM,
        start: "1",
        filter: "",
        window: 10_000,
    };
    let result = replay_api(ctx, endpoint, query, CHECK_TIMEOUT, |record| {
        let seq = record.header.seq;
        if retention && last_counter.is_none() {
            expected_seq = seq;
        }
        if seq != expected_seq {
            violations.add(format!(
                "log: sequence {seq} where {expected_seq} was next (not contiguous)"
            ));
        }
        expected_seq = seq + 1;
        let Some(counter) = counter_of(&record.body, "soak-log ").filter(|c| c < log_next) else {
            violations.add(format!("log: sequence {seq} holds a record never sent"));
            return true;
        };
        if let Some(last) = last_counter.filter(|last| counter <= *last) {
            violations.add(format!(
                "log: sequence {seq} holds record {counter} after record {last} (order or \
                 duplicate)"
            ));
        }
        last_counter = Some(counter);
        while batches.peek().is_some_and(|(_, (last, _))| *last < seq) {
            batches.next();
        }
        if let Some((&first, &(_, first_counter))) = batches.peek() {
            if first <= seq {
                let expected = first_counter + (seq - first);
                if counter != expected {
                    violations.add(format!(
                        "log: sequence {seq} holds record {counter}, its ack said {expected}"
                    ));
                }
                checked += 1;
            }
        }
        true
    });
    let acked_end = log_acked.values().map(|(last, _)| *last).max().unwrap_or(0);
    match result {
        Ok(_) => {}
        // Before the first acked batch the stream may not exist yet.
        Err(ClientError::Refused(_)) if acked_end == 0 => {}
        Err(e) => violations.add(format!("log: the replay failed: {e}")),
    }
    if expected_seq <= acked_end {
        violations.add(format!(
            "log: acked sequences {expected_seq}..={acked_end} are missing"
        ));
    }
    checked
}

/// Joins the cache (its snapshot) and checks it; returns the client for the load.
fn check_cache(
    ctx: &zmq::Context,
    server: &ServerEndpoints,
    model: &mut Model,
) -> anyhow::Result<CacheClient> {
    let client = CacheClient::connect(ctx, std::slice::from_ref(server), CHECK_TIMEOUT)
        .context("cache: no snapshot after the restart")?;
    if client.seq() < model.cache_max_seq {
        model.violations.add(format!(
            "cache: sequence {} after the restart, a confirmed update had {}",
            client.seq(),
            model.cache_max_seq
        ));
    }
    for (key, &confirmed) in &model.cache_confirmed {
        let value = client.get(key.as_bytes());
        let counter = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok());
        match counter {
            Some(c) if c >= confirmed && c < model.cache_next => {}
            _ => model.violations.add(format!(
                "cache: {key} holds {:?}, its last confirmed value was {confirmed}",
                value.map(String::from_utf8_lossy)
            )),
        }
    }
    model.checked_updates += model.cache_confirmed.len() as u64;
    Ok(client)
}

/// Subscribes the consumer and takes deliveries until every confirmed message has been
/// delivered; returns the consumer for the load.
fn check_queue(
    ctx: &zmq::Context,
    router: &str,
    model: &mut Model,
    lifetime: u64,
) -> anyhow::Result<Consumer> {
    let mut consumer = Consumer::subscribe(ctx, router, QUEUE, "", 1_000, CHECK_TIMEOUT)
        .context("queue: cannot subscribe after the restart")?;
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let mut acks = Vec::new();
    while !model.queue_outstanding.is_empty() && Instant::now() < deadline {
        if let Some(d) = consumer.recv(TURN)? {
            model.queue_delivered(d.seq, d.redeliveries, &d.payload, lifetime);
            acks.push(d.seq);
        }
        if !acks.is_empty() && (consumer.buffered() == 0 || acks.len() >= 500) {
            consumer.ack(&acks)?;
            acks.clear();
        }
    }
    if !acks.is_empty() {
        consumer.ack(&acks)?;
    }
    if let Some(first) = model.queue_outstanding.first() {
        model.violations.add(format!(
            "queue: {} confirmed messages not delivered within {CHECK_TIMEOUT:?} of the \
             restart (first: sequence {first})",
            model.queue_outstanding.len()
        ));
        model.queue_outstanding.clear();
    }
    model.checked_messages = model.queue_confirmed.len() as u64;
    Ok(consumer)
}

/// What one lifetime's load threads report.
#[derive(Default)]
struct LoadReport {
    /// (first seq, last seq, first counter, records) per acked batch.
    log_acks: Vec<(u64, u64, u64, u64)>,
    log_next: u64,
    /// (key, counter, seq) per confirmed set.
    cache_sets: Vec<(String, u64, u64)>,
    cache_next: u64,
    /// (first seq, last seq, first counter, messages) per confirmed publish.
    queue_confirms: Vec<(u64, u64, u64, u64)>,
    queue_next: u64,
    /// (seq, redeliveries, payload) per delivery.
    deliveries: Vec<(u64, u32, Vec<u8>)>,
    /// Refusals, wrong answers and client failures.
    errors: Vec<String>,
    /// Cache sets not confirmed within their timeout while the appliance ran.
    timeouts: u64,
}

/// Waits until `done` units are due at `rate` per second since `started`.
fn pace(started: Instant, done: u64, rate: u64) {
    if rate == 0 {
        std::thread::sleep(TURN);
        return;
    }
    let due = started + Duration::from_secs_f64(done as f64 / rate.max(1) as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep((due - now).min(TURN));
    }
}

fn log_load(
    ctx: zmq::Context,
    endpoint: String,
    rate: u64,
    mut next: u64,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender = match AckedSender::connect(&ctx, &endpoint) {
        Ok(s) => s.with_packed(true),
        Err(e) => {
            report.errors.push(format!("log: connect: {e}"));
            report.log_next = next;
            return report;
        }
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pending: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if pending.len() < WINDOW && sent < due {
            let bodies: Vec<Vec<u8>> = (next..next + BATCH).map(log_body).collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            match sender.send(STREAM, 6, "soak", &refs) {
                Ok(id) => {
                    pending.insert(id, (next, BATCH));
                    next += BATCH;
                    sent += BATCH;
                }
                Err(e) => report.errors.push(format!("log: send: {e}")),
            }
            continue;
        }
        if pending.is_empty() {
            pace(started, sent, rate);
            continue;
        }
        match sender.recv_ack(TURN) {
            Ok(ack) => {
                let Some((counter, count)) = pending.remove(&ack.batch_id) else {
                    report.errors.push("log: an ack for no batch sent".into());
                    continue;
                };
                match ack.result {
                    Ok((first, last)) => report.log_acks.push((first, last, counter, count)),
                    Err(reason) => report.errors.push(format!("log: batch refused: {reason}")),
                }
            }
            Err(ClientError::Timeout(_)) => {}
            Err(e) => report.errors.push(format!("log: {e}")),
        }
    }
    report.log_next = next;
    report
}

fn cache_load(
    mut client: CacheClient,
    rate: u64,
    mut next: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut done = 0u64;
    while rate > 0 && !stop.load(Ordering::Relaxed) {
        let key = format!("{CACHE_PREFIX}k{}", rng.below(CACHE_KEYS));
        let counter = next;
        next += 1;
        match client.set(
            key.as_bytes(),
            counter.to_string().as_bytes(),
            None,
            Duration::from_secs(1),
        ) {
            Ok(update) if update.body == counter.to_string().as_bytes() => {
                report.cache_sets.push((key, counter, update.seq));
            }
            Ok(update) => report.errors.push(format!(
                "cache: set {key}={counter} was published as {:?}",
                String::from_utf8_lossy(&update.body)
            )),
            // Unconfirmed, so not checked: slow (counted) or cut off by the kill.
            Err(depot_cache::client::CacheClientError::Timeout(_)) => {
                if !stop.load(Ordering::Relaxed) {
                    report.timeouts += 1;
                }
            }
            Err(e) => report.errors.push(format!("cache: set {key}: {e}")),
        }
        done += 1;
        pace(started, done, rate);
    }
    report.cache_next = next;
    report
}

fn queue_producer(
    ctx: zmq::Context,
    router: String,
    rate: u64,
    mut next: u64,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut producer = match Producer::connect(&ctx, &router) {
        Ok(p) => p,
        Err(e) => {
            report.errors.push(format!("queue: connect: {e}"));
            report.queue_next = next;
            return report;
        }
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pending: HashMap<u64, (u64, u64)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if pending.len() < WINDOW && sent < due {
            let bodies: Vec<Vec<u8>> = (next..next + BATCH).map(queue_body).collect();
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            match producer.publish(QUEUE, &refs) {
                Ok(tag) => {
                    pending.insert(tag, (next, BATCH));
                    next += BATCH;
                    sent += BATCH;
                }
                Err(e) => report.errors.push(format!("queue: publish: {e}")),
            }
            continue;
        }
        if pending.is_empty() {
            pace(started, sent, rate);
            continue;
        }
        match producer.recv_confirm(TURN) {
            Ok(confirm) => {
                let Some((counter, count)) = pending.remove(&confirm.tag) else {
                    report.errors.push("queue: a confirm for no publish".into());
                    continue;
                };
                match confirm.result {
                    Ok((first, last)) => report.queue_confirms.push((first, last, counter, count)),
                    Err(reason) => report
                        .errors
                        .push(format!("queue: publish refused: {reason}")),
                }
            }
            Err(depot_queue::client::ClientError::Timeout(_)) => {}
            Err(e) => report.errors.push(format!("queue: {e}")),
        }
    }
    report.queue_next = next;
    report
}

fn queue_consumer(mut consumer: Consumer, stop: Arc<AtomicBool>) -> LoadReport {
    let mut report = LoadReport::default();
    let mut acks = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match consumer.recv(TURN) {
            Ok(Some(d)) => {
                acks.push(d.seq);
                report.deliveries.push((d.seq, d.redeliveries, d.payload));
            }
            Ok(None) => {}
            Err(e) => report.errors.push(format!("queue consumer: {e}")),
        }
        if !acks.is_empty() && (consumer.buffered() == 0 || acks.len() >= 500) {
            if let Err(e) = consumer.ack(&acks) {
                report.errors.push(format!("queue consumer: ack: {e}"));
            }
            acks.clear();
        }
    }
    report
}

/// Resident memory samples: (seconds since the start, KiB).
struct RssTrend(Vec<(f64, u64)>);

impl RssTrend {
    /// Least-squares slope in KiB per minute.
    fn slope_kib_per_min(&self) -> f64 {
        let n = self.0.len() as f64;
        if self.0.len() < 2 {
            return 0.0;
        }
        let mean_t = self.0.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_r = self.0.iter().map(|(_, r)| *r as f64).sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (t, r) in &self.0 {
            num += (t - mean_t) * (*r as f64 - mean_r);
            den += (t - mean_t) * (t - mean_t);
        }
        if den == 0.0 {
            0.0
        } else {
            num / den * 60.0
        }
    }

    fn summary(&self) -> String {
        let (Some(first), Some(last)) = (self.0.first(), self.0.last()) else {
            return "rss: no samples".into();
        };
        let max = self.0.iter().map(|(_, r)| *r).max().unwrap_or(0);
        let mib = |kib: u64| kib as f64 / 1024.0;
        // Caches fill during the first minutes; the second half shows the trend after that.
        let middle = (first.0 + last.0) / 2.0;
        let second_half = RssTrend(
            self.0
                .iter()
                .filter(|(t, _)| *t >= middle)
                .copied()
                .collect(),
        );
        format!(
            "rss: {} samples over {:.0} s: first {:.1} MiB, last {:.1} MiB, max {:.1} MiB, \
             slope {:+.1} KiB/min (least squares), {:+.1} KiB/min over the second half",
            self.0.len(),
            last.0 - first.0,
            mib(first.1),
            mib(last.1),
            mib(max),
            self.slope_kib_per_min(),
            second_half.slope_kib_per_min()
        )
    }
}

/// `depot bench soak`.
pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.min_round <= args.max_round,
        "--min-round > --max-round"
    );
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "depot-soak-{}-{}",
                std::process::id(),
                depot_store::now_ns()
            )),
            true,
        ),
    };
    let data = dir.join("data");
    if data.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} already holds data: the soak needs an empty folder",
            data.display()
        );
    }
    std::fs::create_dir_all(&data)?;
    let mut config = CONFIG.to_string();
    if let Some(size) = &args.store_cache {
        config.push_str(&format!("\n[store]\ncache_size = {size:?}\n"));
    }
    if let Some(size) = &args.retention {
        // Every 5 s: the first pass after a start comes once the check's replay is done, so
        // that the replay never sees records removed under it as a gap.
        config.push_str(&format!(
            "\n[retention]\nmax_bytes = {size:?}\ninterval = \"5s\"\n"
        ));
    }
    std::fs::write(dir.join("depot.toml"), config)?;
    let exe = std::env::current_exe().context("cannot find the depot binary")?;
    let budget = Duration::from_secs_f64(args.minutes * 60.0);
    let max_rounds = if args.no_kill {
        1
    } else {
        args.rounds.unwrap_or(u64::MAX)
    };
    println!(
        "soak: folder {}, seed {}, {}",
        dir.display(),
        args.seed,
        if args.no_kill {
            format!("one lifetime of {:.1} min ended by SIGTERM", args.minutes)
        } else {
            format!(
                "kills after {:?}..{:?} of load, up to {} rounds or {:.1} min",
                args.min_round,
                args.max_round,
                args.rounds.map_or("unlimited".into(), |r| r.to_string()),
                args.minutes
            )
        }
    );
    let mut rng = Rng(args.seed);
    let mut model = Model::default();
    let mut timer_model = timers::TimerModel::default();
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut trend = RssTrend(Vec::new());
    for lifetime in 1.. {
        let ctx = zmq::Context::new();
        let start_ns = depot_clock::sys::wall_ns();
        timer_model.started(lifetime, start_ns);
        let mut appliance = Appliance::start(&exe, &dir)?;
        let up = Instant::now();
        // First, before overdue timers fire: their receiver, and what is still stored.
        let receiver = timers::Receiver::start(&ctx, &appliance.clock()?.publisher)?;
        let stored = timers::list_stored(
            &ctx,
            &appliance.clock()?.timers,
            start_ns,
            &mut model.violations,
        );
        let checked_before = model.checked_records;
        model.checked_records = check_log(
            &ctx,
            &appliance.run.logd.replay_api,
            &mut model,
            args.retention.is_some(),
        );
        let cache_client = check_cache(&ctx, &appliance.cache()?, &mut model)?;
        let cache_seq = cache_client.seq();
        // Before the queue's consumer subscribes: a long wait here must not make it silent.
        timers::check(
            &receiver,
            &mut timer_model,
            &mut model.violations,
            lifetime,
            stored.as_ref(),
        );
        let consumer = check_queue(&ctx, &appliance.queue()?, &mut model, lifetime)?;
        if lifetime > 1 {
            println!(
                "round {rounds}: checked after the restart in {:.1} s: {} log records (+{}), {} \
                 cache keys (sequence {} >= {}), {} queue messages, {} redelivered so far ({} \
                 unmarked); violations {}",
                up.elapsed().as_secs_f64(),
                model.checked_records,
                model.checked_records.saturating_sub(checked_before),
                model.cache_confirmed.len(),
                cache_seq,
                model.cache_max_seq,
                model.checked_messages,
                model.queue_redelivered,
                model.queue_unmarked,
                model.violations.count
            );
            println!(
                "round {rounds}: timers after the restart: {} of {} confirmed fired, {} of them \
                 due while the appliance was down, {} fired again after a kill, {} lost in \
                 flight at a kill, {} due later",
                timer_model.fired,
                timer_model.confirmed_count(),
                timer_model.overdue,
                timer_model.repeated,
                timer_model.lost_in_flight,
                timer_model.pending_count()
            );
        }
        if rounds >= max_rounds || started.elapsed() >= budget {
            // Timers added before the last kill and due after this check: waited for too.
            if let Some(due_ns) = timer_model.latest_pending_due() {
                let wait = due_ns.saturating_sub(depot_clock::sys::wall_ns());
                std::thread::sleep(Duration::from_nanos(wait) + Duration::from_millis(100));
                timers::check(
                    &receiver,
                    &mut timer_model,
                    &mut model.violations,
                    lifetime,
                    stored.as_ref(),
                );
            }
            drop((cache_client, consumer));
            appliance.stop()?;
            let (firings, errors) = receiver.finish();
            timer_model.ended(lifetime, depot_clock::sys::wall_ns());
            for error in errors {
                model.violations.add(error);
            }
            for (firing, received_ns) in firings {
                timer_model.fired(&firing, received_ns, lifetime, &mut model.violations);
            }
            break;
        }
        rounds += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let queue = appliance.queue()?;
        let threads: Vec<JoinHandle<LoadReport>> = vec![
            {
                let (ctx, endpoint, stop) =
                    (ctx.clone(), appliance.run.logd.acked.clone(), stop.clone());
                let (rate, next) = (args.log_rate, model.log_next);
                std::thread::spawn(move || log_load(ctx, endpoint, rate, next, stop))
            },
            {
                let (rate, next, seed, stop) =
                    (args.cache_rate, model.cache_next, rng.next(), stop.clone());
                std::thread::spawn(move || cache_load(cache_client, rate, next, seed, stop))
            },
            {
                let (ctx, router, stop) = (ctx.clone(), queue.clone(), stop.clone());
                let (rate, next) = (args.queue_rate, model.queue_next);
                std::thread::spawn(move || queue_producer(ctx, router, rate, next, stop))
            },
            {
                let stop = stop.clone();
                std::thread::spawn(move || queue_consumer(consumer, stop))
            },
        ];
        let timer_thread = {
            let (ctx, endpoint, stop) =
                (ctx.clone(), appliance.clock()?.timers.clone(), stop.clone());
            let (rate, next, seed) = (args.timer_rate, timer_model.next, rng.next());
            std::thread::spawn(move || timers::load(ctx, endpoint, rate, next, seed, stop))
        };
        let load_for = if args.no_kill {
            budget.saturating_sub(started.elapsed())
        } else {
            rng.between(args.min_round, args.max_round)
        };
        let load_started = Instant::now();
        if args.no_kill {
            while load_started.elapsed() < load_for {
                if let Some(kib) = appliance.rss_kib() {
                    let t = load_started.elapsed().as_secs_f64();
                    println!("rss at {t:.0} s: {:.1} MiB", kib as f64 / 1024.0);
                    trend.0.push((t, kib));
                }
                let next = (args.rss_every * trend.0.len() as u32).min(load_for);
                std::thread::sleep(next.saturating_sub(load_started.elapsed()));
            }
        } else {
            std::thread::sleep(load_for);
        }
        if !appliance.alive() {
            model
                .violations
                .add("the appliance died on its own under load".into());
        }
        if args.no_kill {
            stop.store(true, Ordering::Relaxed);
        } else {
            appliance.kill()?;
            timer_model.ended(lifetime, depot_clock::sys::wall_ns());
            stop.store(true, Ordering::Relaxed);
        }
        let mut reports = Vec::new();
        for thread in threads {
            reports.push(
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))?,
            );
        }
        let timer_report = timer_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the timer load thread panicked"))?;
        if args.no_kill {
            appliance.stop()?;
            timer_model.ended(lifetime, depot_clock::sys::wall_ns());
        }
        let (firings, receiver_errors) = receiver.finish();
        // Sockets of the dead appliance's lifetime go before the next one binds ports.
        drop(ctx);
        let (mut logged, mut set, mut published, mut delivered) = (0u64, 0u64, 0u64, 0u64);
        let timeouts: u64 = reports.iter().map(|r| r.timeouts).sum();
        for report in &reports {
            for error in &report.errors {
                model.violations.add(error.clone());
            }
        }
        for report in &mut reports {
            model.log_next = model.log_next.max(report.log_next);
            model.cache_next = model.cache_next.max(report.cache_next);
            model.queue_next = model.queue_next.max(report.queue_next);
            for &(first, last, counter, count) in &report.log_acks {
                model.log_acked(first, last, counter, count);
                logged += count;
            }
            for (key, counter, seq) in report.cache_sets.drain(..) {
                model.cache_max_seq = model.cache_max_seq.max(seq);
                model.cache_confirmed.insert(key, counter);
                model.cache_confirmed_updates += 1;
                set += 1;
            }
            for &(first, last, counter, count) in &report.queue_confirms {
                model.queue_confirmed(first, last, counter, count);
                published += count;
            }
        }
        for report in &reports {
            for (seq, redeliveries, payload) in &report.deliveries {
                model.queue_delivered(*seq, *redeliveries, payload, lifetime);
                delivered += 1;
            }
        }
        for error in timer_report.errors.iter().chain(&receiver_errors) {
            model.violations.add(error.clone());
        }
        timer_model.next = timer_model.next.max(timer_report.next);
        for &(counter, id, due_ns, confirmed_ns) in &timer_report.confirms {
            timer_model.confirmed(counter, id, due_ns, confirmed_ns);
        }
        let fired_before = timer_model.firings;
        for (firing, received_ns) in &firings {
            timer_model.fired(firing, *received_ns, lifetime, &mut model.violations);
        }
        println!(
            "round {rounds}: {} after {:.1} s of load: {logged} log records acked, {set} cache \
             sets confirmed ({timeouts} timed out), {published} queue messages confirmed, \
             {delivered} delivered, {} timers confirmed, {} fired",
            if args.no_kill { "SIGTERM" } else { "SIGKILL" },
            load_for.as_secs_f64(),
            timer_report.confirms.len(),
            timer_model.firings - fired_before
        );
    }
    if args.no_kill {
        println!("{}", trend.summary());
    }
    // Before the summary, which stays the last line.
    if timer_model.lost_in_flight > 0 {
        println!(
            "soak: timers lost in flight were due at most {:.3} s before their kill",
            timer_model.lost_before_kill_ns as f64 / 1e9
        );
    }
    let violations = model.violations.count;
    println!(
        "soak: {rounds} rounds{} in {:.0} s, checked {} log records{}, {} cache updates ({} \
         keys), {} queue messages ({} redelivered after a kill, {} of them unmarked), {} \
         timers ({} fired, {} of them due while the appliance was down; {} fired again after \
         a kill, {} lost in flight at a kill); violations = {violations}",
        if args.no_kill { " (no kill)" } else { "" },
        started.elapsed().as_secs_f64(),
        model.log_acked_records,
        if args.retention.is_some() {
            format!(
                " (the last check {}, the older ones removed by retention)",
                model.checked_records
            )
        } else {
            String::new()
        },
        model.cache_confirmed_updates,
        model.cache_confirmed.len(),
        model.checked_messages,
        model.queue_redelivered,
        model.queue_unmarked,
        timer_model.confirmed_count(),
        timer_model.fired,
        timer_model.overdue,
        timer_model.repeated,
        timer_model.lost_in_flight
    );
    if violations > 0 {
        bail!(
            "{violations} violations; the appliance's log is {}",
            dir.join("appliance.log").display()
        );
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rss_slope_is_kib_per_minute() {
        let flat = RssTrend(vec![(0.0, 100), (60.0, 100), (120.0, 100)]);
        assert_eq!(flat.slope_kib_per_min(), 0.0);
        let growing = RssTrend(vec![(0.0, 100), (30.0, 110), (60.0, 120)]);
        assert!((growing.slope_kib_per_min() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn queue_checks_catch_a_loss_a_wrong_payload_and_a_duplicate_in_one_lifetime() {
        let mut model = Model {
            queue_next: 10,
            ..Model::default()
        };
        model.queue_confirmed(1, 3, 0, 3);
        model.queue_delivered(1, 0, &queue_body(0), 1);
        model.queue_delivered(2, 0, &queue_body(5), 1);
        assert_eq!(model.violations.count, 1, "wrong payload");
        model.queue_delivered(1, 1, &queue_body(0), 1);
        assert_eq!(model.violations.count, 2, "again in the same lifetime");
        model.queue_delivered(1, 1, &queue_body(0), 2);
        assert_eq!(
            model.violations.count, 2,
            "again after a restart is fine, marked"
        );
        model.queue_delivered(1, 0, &queue_body(0), 3);
        assert_eq!(model.violations.count, 3, "but not without the mark");
        assert_eq!(model.queue_unmarked, 1);
        model.queue_delivered(3, 0, &queue_body(11), 3);
        assert_eq!(model.violations.count, 4, "a message never sent");
        assert_eq!(
            model.queue_outstanding.iter().copied().collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn bodies_carry_their_counter() {
        assert_eq!(counter_of(&log_body(42), "soak-log "), Some(42));
        assert_eq!(counter_of(&queue_body(7), "soak-queue "), Some(7));
        assert_eq!(counter_of(b"soak-log 12", "soak-log "), None);
    }
}
