//! CURVE against a real `depot serve`: clients without a key, with an unknown key and with an
//! authorized one; the authorized-keys file edited while it runs; the secure default that
//! refuses unprotected binds beyond loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{depot, poll, write_config, Appliance, LOGD_EPHEMERAL};
use depot_common::security::{ClientKeys, Key, KeyPair};
use depot_logd::client::AckedSender;

/// An appliance with `[security] curve = true` and `authorized` in its authorized-keys file.
fn curve_appliance(dir: &Path, authorized: &[&KeyPair]) -> (Appliance, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let keys_file = data.join("authorized_keys");
    let lines: String = authorized
        .iter()
        .map(|pair| format!("{} test-client\n", pair.public.z85()))
        .collect();
    std::fs::write(&keys_file, format!("# test clients\n{lines}")).unwrap();
    let config = write_config(dir, "\n[security]\ncurve = true\n");
    (Appliance::start(&data, &config), keys_file)
}

/// The server's public key, as `depot serve` wrote it into the data folder.
fn server_key(appliance: &Appliance) -> Key {
    Key::from_z85(&std::fs::read_to_string(appliance.data.join("server.pub")).unwrap()).unwrap()
}

fn client_keys(appliance: &Appliance, pair: &KeyPair) -> ClientKeys {
    ClientKeys {
        server_public: server_key(appliance),
        pair: pair.clone(),
    }
}

/// One acked record over a fresh connection; true when it was acknowledged within `wait`.
fn acked_once(appliance: &Appliance, keys: Option<&ClientKeys>, wait: Duration) -> bool {
    let ctx = zmq::Context::new();
    let mut sender = AckedSender::connect_with(&ctx, &appliance.logd().acked, keys).unwrap();
    let acked = sender
        .send_durable("secure.test", 6, "test", &[b"hello".as_slice()], wait)
        .is_ok();
    drop(sender);
    acked
}

fn rejected(appliance: &Appliance) -> f64 {
    appliance.metric("depot_security_rejected_total")
}

#[test]
fn the_server_key_pair_is_made_on_first_start_with_a_private_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = curve_appliance(dir.path(), &[]);
    use std::os::unix::fs::PermissionsExt;
    let secret = appliance.data.join("server.key");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = server_key(&appliance);
    let (_, status) = appliance.get("/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["curve_public_key"], first.z85());
    assert!(appliance.stop().success());
    // A restart keeps the same pair: clients' copies of server.pub stay valid.
    let config = dir.path().join("depot.toml");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    assert_eq!(server_key(&appliance), first);
}

#[test]
fn a_client_without_a_key_gets_nothing_through() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = curve_appliance(dir.path(), &[]);
    assert!(!acked_once(&appliance, None, Duration::from_secs(1)));
    // Nothing was stored either.
    let (_, metrics) = appliance.get("/metrics");
    assert!(
        !metrics.contains("depot_log_records{stream=\"secure.test\"}"),
        "{metrics}"
    );
}

#[test]
fn an_unknown_key_is_rejected_counted_and_logged_with_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let known = KeyPair::generate().unwrap();
    let stranger = KeyPair::generate().unwrap();
    let (appliance, _) = curve_appliance(dir.path(), &[&known]);
    let keys = client_keys(&appliance, &stranger);
    assert!(!acked_once(&appliance, Some(&keys), Duration::from_secs(1)));
    assert!(
        poll(Duration::from_secs(5), || (rejected(&appliance) >= 1.0)
            .then_some(()))
        .is_some(),
        "no rejection counted"
    );
    let log = appliance.stderr();
    assert!(
        log.contains("connection rejected") && log.contains("127.0.0.1"),
        "{log}"
    );
    assert!(log.contains(&stranger.public.z85()), "{log}");
}

#[test]
fn a_known_key_works_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let known = KeyPair::generate().unwrap();
    let (appliance, _) = curve_appliance(dir.path(), &[&known]);
    let keys = client_keys(&appliance, &known);
    assert!(acked_once(&appliance, Some(&keys), Duration::from_secs(10)));
    assert!(appliance.metric("depot_security_accepted_total") >= 1.0);
    assert_eq!(appliance.metric("depot_security_authorized_keys"), 1.0);
    assert_eq!(
        appliance.metric("depot_log_records{stream=\"secure.test\"}"),
        1.0
    );
}

#[test]
fn editing_the_key_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, keys_file) = curve_appliance(dir.path(), &[]);
    let client = KeyPair::generate().unwrap();
    let keys = client_keys(&appliance, &client);
    assert!(!acked_once(
        &appliance,
        Some(&keys),
        Duration::from_millis(500)
    ));

    // Appended as an editor would: a new file renamed over the old one.
    let tmp = keys_file.with_extension("new");
    std::fs::write(&tmp, format!("{} added-later\n", client.public.z85())).unwrap();
    std::fs::rename(&tmp, &keys_file).unwrap();
    assert!(
        poll(Duration::from_secs(10), || acked_once(
            &appliance,
            Some(&keys),
            Duration::from_millis(500)
        )
        .then_some(()))
        .is_some(),
        "the added key was not accepted without a restart"
    );

    // Removed: new connections are refused again.
    std::fs::write(&keys_file, "# nobody\n").unwrap();
    assert!(
        poll(Duration::from_secs(10), || (!acked_once(
            &appliance,
            Some(&keys),
            Duration::from_millis(500)
        ))
        .then_some(()))
        .is_some(),
        "the removed key still got in"
    );
    assert_eq!(appliance.metric("depot_security_authorized_keys"), 0.0);
}

#[test]
fn keygen_and_the_cli_send_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, keys_file) = curve_appliance(dir.path(), &[]);
    let stem = dir.path().join("alice");
    let output = depot()
        .arg("keygen")
        .arg("--out")
        .arg(&stem)
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let public = std::fs::read_to_string(dir.path().join("alice.pub")).unwrap();
    assert_eq!(printed.trim(), public.trim());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("alice.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(&keys_file, &public).unwrap();

    let send = |key: Option<&Path>| {
        let mut command = depot();
        command
            .args(["log", "send", "--stream", "cli.secure", "--data"])
            .arg(&appliance.data)
            .arg("--config")
            .arg(dir.path().join("depot.toml"))
            .arg("hello from the cli");
        if let Some(key) = key {
            command.arg("--key").arg(key);
        }
        command.output().unwrap()
    };
    let key_file = dir.path().join("alice.key");
    let sent = poll(Duration::from_secs(10), || {
        let output = send(Some(&key_file));
        output.status.success().then_some(output)
    });
    assert!(sent.is_some(), "depot log send --key never succeeded");
    assert_eq!(
        appliance.metric("depot_log_records{stream=\"cli.secure\"}"),
        1.0
    );
}

/// Writes a config whose log PULL listens on `pull`, with `security` as `[security]`.
fn exposed_config(dir: &Path, pull: &str, security: &str) -> PathBuf {
    let logd = LOGD_EPHEMERAL.replace(
        "pull = \"tcp://127.0.0.1:*\"",
        &format!("pull = \"{pull}\""),
    );
    assert!(logd.contains(pull));
    let path = dir.join("exposed.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[cache]\nsnapshot = \"\"\n[queue]\nrouter = \"\"\n\
             [clock]\npublisher = \"\"\n{logd}\n[security]\n{security}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_bind_beyond_loopback_without_curve_refuses_to_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = exposed_config(dir.path(), "tcp://0.0.0.0:*", "");
    let output = depot()
        .args(["serve", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("logd.pull")
            && stderr.contains("tcp://0.0.0.0:*")
            && stderr.contains("curve = true")
            && stderr.contains("allow_insecure"),
        "{stderr}"
    );

    // Allowed explicitly, or protected by CURVE: it starts.
    for security in ["allow_insecure = true", "curve = true"] {
        let config = exposed_config(dir.path(), "tcp://0.0.0.0:*", security);
        let appliance = Appliance::start(&data, &config);
        assert!(appliance.stop().success(), "{security}");
    }
}

#[test]
fn syslog_beyond_loopback_needs_allow_insecure_even_with_curve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = exposed_config(dir.path(), "tcp://127.0.0.1:*", "curve = true");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("syslog_udp = \"127.0.0.1:0\"", "syslog_udp = \"0.0.0.0:0\"");
    std::fs::write(&config, text).unwrap();
    let output = depot()
        .args(["serve", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("logd.syslog_udp") && stderr.contains("cannot use CURVE"),
        "{stderr}"
    );
}

#[test]
fn the_cache_queue_and_timers_serve_a_known_key_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let alice = KeyPair::generate().unwrap();
    let (appliance, _) = curve_appliance(dir.path(), &[&alice]);
    let stem = dir.path().join("alice");
    alice.write(&stem).unwrap();
    let key_file = KeyPair::secret_path(&stem);
    let cli = |args: &[&str]| {
        let output = depot()
            .args(args)
            .arg("--data")
            .arg(&appliance.data)
            .arg("--config")
            .arg(dir.path().join("depot.toml"))
            .arg("--key")
            .arg(&key_file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    cli(&["cache", "set", "/secure/a", "one"]);
    assert_eq!(cli(&["cache", "get", "/secure/a"]), "one\n");
    cli(&["queue", "push", "jobs", "job-1"]);
    assert!(cli(&["queue", "pop", "jobs", "--wait", "5s"]).contains("job-1"));
    cli(&[
        "timer",
        "add",
        "--in",
        "1h",
        "--topic",
        "secure.timer",
        "payload",
    ]);
    assert!(cli(&["timer", "ls"]).contains("secure.timer"));
    let accepted = appliance.metric("depot_security_accepted_total");
    assert!(accepted >= 6.0, "{accepted}");
}
