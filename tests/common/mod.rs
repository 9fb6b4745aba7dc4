//! Starting a real `depot serve` process for end-to-end tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The depot binary under test.
pub fn depot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_depot"))
}

/// A running appliance on a temporary data folder, with its admin endpoint on a free port.
pub struct Appliance {
    pub child: Child,
    pub data: PathBuf,
    pub admin: String,
    pub stderr_path: PathBuf,
}

/// Polls `check` every few milliseconds until it returns Some or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a config with the admin, log, cache, queue and clock endpoints on ephemeral ports
/// plus `extra` TOML. `[queue]` comes last, so keys at the very start of `extra` (before any
/// header) add to it; `extra` may add to `[logd]` through `[[logd.files]]`, to `[clock]`
/// through `[[clock.ticks]]` and declare queues with `[queue.queues."NAME"]`, but not open
/// `[logd]`, `[clock]` or `[queue]` again.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    write_config_with_cache(dir, CACHE_EPHEMERAL, extra)
}

/// Like [`write_config`], with `cache` as the whole `[cache]` section (e.g. a Binary Star pair
/// whose endpoints each server must know before the other starts).
pub fn write_config_with_cache(dir: &Path, cache: &str, extra: &str) -> PathBuf {
    write_config_sections(dir, cache, "", extra)
}

/// The most general form: `cache` as the whole `[cache]` section, `clock` keys added to the
/// ephemeral `[clock]` section, then `extra` (see [`write_config`]).
pub fn write_config_sections(dir: &Path, cache: &str, clock: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("depot.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{cache}\n{CLOCK_EPHEMERAL}{clock}\n{LOGD_EPHEMERAL}\n{QUEUE_EPHEMERAL}{extra}\n"
        ),
    )
    .unwrap();
    path
}

/// A free loopback TCP port below the kernel's ephemeral range (32768 and up), for configs
/// that must name a port before the process that binds it starts: the ephemeral binds of tests
/// running in parallel never take it, also while its appliance restarts.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries are separate processes: spread them apart by pid.
    let start = std::process::id().wrapping_mul(7_919) % 12_000;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(step < 12_000, "no free port below the ephemeral range");
        let port = 20_000 + ((start + step) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Appliance {
    /// Starts `depot serve` on `data` with `config` and waits until it serves.
    pub fn start(data: &Path, config: &Path) -> Appliance {
        Appliance::start_with(depot(), data, config)
    }

    /// Like [`Appliance::start`], with `command` as the depot binary (e.g. run through
    /// `ip netns exec NS`); `serve` and its arguments are appended.
    pub fn start_with(mut command: Command, data: &Path, config: &Path) -> Appliance {
        let _ = std::fs::remove_file(data.join("run.json"));
        std::fs::create_dir_all(data).unwrap();
        let stderr_path = data.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = command
            .args(["serve", "--data"])
            .arg(data)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let run_file = data.join("run.json");
        let admin = poll(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "depot serve exited early with {status}: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(&run_file).ok()?;
            let info: serde_json::Value = serde_json::from_str(&text).ok()?;
            info["admin"].as_str().map(String::from)
        })
        .expect("depot serve did not write run.json within 20 s");
        Appliance {
            child,
            data: data.to_path_buf(),
            admin,
            stderr_path,
        }
    }

    /// `GET path` on the admin endpoint: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    /// Sends `signal` to the appliance.
    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        poll(timeout, || self.child.try_wait().unwrap())
            .unwrap_or_else(|| panic!("depot did not exit within {timeout:?}"))
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let status = self.wait(Duration::from_secs(20));
        std::mem::forget(self);
        status
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// What the appliance logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// `len` pseudo-random bytes from `seed` (xorshift): bodies that do not compress, so what is
/// stored grows as they come; the same for the same seed.
pub fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `[logd]` with every endpoint on an ephemeral loopback port, so tests run in parallel.
pub const LOGD_EPHEMERAL: &str = r#"[logd]
pull = "tcp://127.0.0.1:*"
sub = "tcp://127.0.0.1:*"
acked = "tcp://127.0.0.1:*"
live = "tcp://127.0.0.1:*"
live_packed = "tcp://127.0.0.1:*"
replay = "tcp://127.0.0.1:*"
replay_api = "tcp://127.0.0.1:*"
syslog_udp = "127.0.0.1:0"
syslog_tcp = "127.0.0.1:0"
"#;

/// A `[cache]` section with every endpoint on an ephemeral port.
pub const CACHE_EPHEMERAL: &str = r#"[cache]
snapshot = "tcp://127.0.0.1:*"
publisher = "tcp://127.0.0.1:*"
collector = "tcp://127.0.0.1:*"
"#;

/// A `[queue]` section with its endpoints on ephemeral ports (keys may follow it).
pub const QUEUE_EPHEMERAL: &str = r#"[queue]
router = "tcp://127.0.0.1:*"
pull = "tcp://127.0.0.1:*"
"#;

/// A `[clock]` section with its PUB and timers ROUTER on ephemeral ports.
pub const CLOCK_EPHEMERAL: &str = r#"[clock]
publisher = "tcp://127.0.0.1:*"
timers = "tcp://127.0.0.1:*"
"#;

/// The value of one sample in Prometheus text, e.g. `name{label="x"}` or `name`.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

impl Appliance {
    /// Where the log service listens, as `run.json` reports it (ephemeral ports resolved).
    pub fn logd(&self) -> depot_logd::LogdEndpoints {
        let text = std::fs::read_to_string(self.data.join("run.json")).unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(info["logd"].clone())
            .unwrap_or_else(|e| panic!("run.json has no usable logd endpoints ({e}): {text}"))
    }

    /// Where the cache serves, as `run.json` reports it.
    pub fn cache(&self) -> depot_cache::client::ServerEndpoints {
        let text = std::fs::read_to_string(self.data.join("run.json")).unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        let get = |name: &str| {
            info["cache"][name]
                .as_str()
                .unwrap_or_else(|| panic!("run.json has no cache {name} endpoint: {text}"))
                .to_string()
        };
        depot_cache::client::ServerEndpoints {
            snapshot: get("snapshot"),
            publisher: get("publisher"),
            collector: get("collector"),
        }
    }

    /// Where the queue service listens, as `run.json` reports it.
    pub fn queue(&self) -> depot_queue::QueueEndpoints {
        let text = std::fs::read_to_string(self.data.join("run.json")).unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(info["queue"].clone())
            .unwrap_or_else(|e| panic!("run.json has no usable queue endpoints ({e}): {text}"))
    }

    /// The appliance's resident memory now, from /proc (kB).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// CPU time the appliance has used (user + system), in clock ticks (1/100 s here).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name, which ends with ')': utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Where the clock listens, as `run.json` reports it.
    pub fn clock(&self) -> depot_clock::ClockEndpoints {
        let text = std::fs::read_to_string(self.data.join("run.json")).unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(info["clock"].clone())
            .unwrap_or_else(|e| panic!("run.json has no usable clock endpoints ({e}): {text}"))
    }

    /// One sample from `/metrics`; panics if it is missing.
    pub fn metric(&self, sample: &str) -> f64 {
        let (code, text) = self.get("/metrics");
        assert_eq!(code, 200, "{text}");
        metric_value(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }
}

/// Runs `nft -f -` through `command` (`nft` itself, or `ip netns exec NS nft`) with `rules`.
pub fn nft_through(mut command: Command, rules: &str) {
    let mut child = command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (nftables) is missing: `scripts/setup.sh test` installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft refused:\n{rules}");
}

/// An nftables table on this host that exists while this value lives (deleted on drop, also
/// when the test fails): for cutting connections as a network fault would.
pub struct NftTable {
    family_and_name: String,
}

impl NftTable {
    /// Loads `table FAMILY NAME { BODY }`.
    pub fn load(family: &str, name: &str, body: &str) -> NftTable {
        nft_through(
            Command::new("nft"),
            &format!("table {family} {name} {{\n{body}}}\n"),
        );
        NftTable {
            family_and_name: format!("{family} {name}"),
        }
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let rules = format!("delete table {}\n", self.family_and_name);
        nft_through(Command::new("nft"), &rules);
    }
}
