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

/// Writes a config with the admin and log endpoints on ephemeral ports plus `extra` TOML
/// (which may add to `[logd]` through `[[logd.files]]`, but not open `[logd]` again).
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("depot.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{CACHE_EPHEMERAL}\n{LOGD_EPHEMERAL}\n{extra}\n"
        ),
    )
    .unwrap();
    path
}

/// Like [`write_config`], with `cache` as the whole `[cache]` section (e.g. a Binary Star pair
/// whose endpoints each server must know before the other starts).
pub fn write_config_with_cache(dir: &Path, cache: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("depot.toml");
    std::fs::write(
        &path,
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n{cache}\n{LOGD_EPHEMERAL}\n{extra}\n"),
    )
    .unwrap();
    path
}

/// A loopback TCP port that was free a moment ago, for configs that must name a port before
/// the process that binds it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// `[logd]` with every endpoint on an ephemeral loopback port, so tests run in parallel.
pub const LOGD_EPHEMERAL: &str = r#"[logd]
pull = "tcp://127.0.0.1:*"
sub = "tcp://127.0.0.1:*"
acked = "tcp://127.0.0.1:*"
live = "tcp://127.0.0.1:*"
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

    /// One sample from `/metrics`; panics if it is missing.
    pub fn metric(&self, sample: &str) -> f64 {
        let (code, text) = self.get("/metrics");
        assert_eq!(code, 200, "{text}");
        metric_value(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }
}
