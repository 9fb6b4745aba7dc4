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

/// An appliance with CURVE on whose authorized-keys file is `keys_text`.
fn curve_appliance_with(dir: &Path, keys_text: &str) -> (Appliance, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let keys_file = data.join("authorized_keys");
    std::fs::write(&keys_file, keys_text).unwrap();
    let config = write_config(dir, "\n[security]\ncurve = true\n");
    (Appliance::start(&data, &config), keys_file)
}

/// A key pair written as `dir/NAME.key`, returning the pair and the secret file.
fn named_key(dir: &Path, name: &str) -> (KeyPair, PathBuf) {
    let pair = KeyPair::generate().unwrap();
    let stem = dir.join(name);
    pair.write(&stem).unwrap();
    (pair, KeyPair::secret_path(&stem))
}

/// Runs the CLI against `appliance` with `key`; returns (success, stdout, stderr).
fn cli_as(appliance: &Appliance, dir: &Path, key: &Path, args: &[&str]) -> (bool, String, String) {
    let output = depot()
        .args(args)
        .arg("--data")
        .arg(&appliance.data)
        .arg("--config")
        .arg(dir.join("depot.toml"))
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn denied(appliance: &Appliance, service: &str) -> f64 {
    appliance.metric(&format!(
        "depot_security_denied_total{{service=\"{service}\"}}"
    ))
}

#[test]
fn a_key_writes_and_reads_only_its_log_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (app_key, app_file) = named_key(dir.path(), "app");
    let (admin_key, admin_file) = named_key(dir.path(), "admin");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} app logd.write=app. logd.read=app.\n{} admin\n",
            app_key.public.z85(),
            admin_key.public.z85()
        ),
    );
    let cli = |key: &Path, args: &[&str]| cli_as(&appliance, dir.path(), key, args);
    let (ok, _, err) = cli(
        &app_file,
        &["log", "send", "--stream", "app.web", "allowed"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&app_file, &["log", "send", "--stream", "sys.kernel", "no"]);
    assert!(!ok);
    assert!(err.contains("not authorized"), "{err}");
    assert_eq!(
        appliance.metric("depot_log_records{stream=\"app.web\"}"),
        1.0
    );
    let (_, metrics) = appliance.get("/metrics");
    assert!(!metrics.contains("stream=\"sys.kernel\""), "{metrics}");
    assert_eq!(denied(&appliance, "logd"), 1.0);

    // A key without permission words keeps full access.
    let (ok, _, err) = cli(&admin_file, &["log", "send", "--stream", "sys.kernel", "x"]);
    assert!(ok, "{err}");

    let (ok, out, err) = cli(&app_file, &["log", "tail", "--stream", "app.web"]);
    assert!(ok && out.contains("allowed"), "{out}{err}");
    let (ok, out, err) = cli(&app_file, &["log", "tail", "--stream", "sys.kernel"]);
    assert!(!ok && !out.contains('x'), "{out}");
    assert!(err.contains("not authorized"), "{err}");
    assert_eq!(denied(&appliance, "logd"), 2.0);
    let log = appliance.stderr();
    assert!(
        log.contains("operation not authorized") && log.contains("app"),
        "{log}"
    );
}

#[test]
fn a_key_produces_and_consumes_only_its_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (worker, worker_file) = named_key(dir.path(), "worker");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} worker queue.produce=jobs queue.consume=jobs\n",
            worker.public.z85()
        ),
    );
    let cli = |args: &[&str]| cli_as(&appliance, dir.path(), &worker_file, args);
    let (ok, _, err) = cli(&["queue", "push", "jobs", "job-1"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["queue", "push", "payroll", "raise"]);
    assert!(!ok && err.contains("not authorized"), "{err}");
    let (ok, out, err) = cli(&["queue", "pop", "jobs", "--wait", "5s"]);
    assert!(ok && out.contains("job-1"), "{out}{err}");
    let (ok, out, err) = cli(&["queue", "pop", "payroll", "--wait", "1s"]);
    assert!(!ok && !out.contains("raise"), "{out}");
    assert!(err.contains("not authorized"), "{err}");
    assert_eq!(denied(&appliance, "queue"), 2.0);
}

#[test]
fn timers_need_the_timers_permission() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, plain_file) = named_key(dir.path(), "plain");
    let (timed, timed_file) = named_key(dir.path(), "timed");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} plain logd.write\n{} timed clock.timers\n",
            plain.public.z85(),
            timed.public.z85()
        ),
    );
    let add = ["timer", "add", "--in", "1h", "--topic", "t.authz", "p"];
    let (ok, _, err) = cli_as(&appliance, dir.path(), &plain_file, &add);
    assert!(!ok && err.contains("not authorized"), "{err}");
    let (ok, _, err) = cli_as(&appliance, dir.path(), &plain_file, &["timer", "ls"]);
    assert!(!ok && err.contains("not authorized"), "{err}");
    assert_eq!(denied(&appliance, "clock"), 2.0);
    let (ok, _, err) = cli_as(&appliance, dir.path(), &timed_file, &add);
    assert!(ok, "{err}");
    let (ok, out, err) = cli_as(&appliance, dir.path(), &timed_file, &["timer", "ls"]);
    assert!(ok && out.contains("t.authz"), "{out}{err}");
}

#[test]
fn editing_a_keys_permissions_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (app, app_file) = named_key(dir.path(), "app");
    let (appliance, keys_file) = curve_appliance_with(
        dir.path(),
        &format!("{} app logd.write=app.\n", app.public.z85()),
    );
    let send = || {
        cli_as(
            &appliance,
            dir.path(),
            &app_file,
            &["log", "send", "--stream", "ops.deploy", "hello"],
        )
    };
    let (ok, _, err) = send();
    assert!(!ok && err.contains("not authorized"), "{err}");

    // Widened as an editor would: a new file renamed over the old one.
    let tmp = keys_file.with_extension("new");
    std::fs::write(
        &tmp,
        format!("{} app logd.write=app. logd.write=ops.\n", app.public.z85()),
    )
    .unwrap();
    std::fs::rename(&tmp, &keys_file).unwrap();
    assert!(
        poll(Duration::from_secs(10), || send().0.then_some(())).is_some(),
        "the widened permission was not applied without a restart"
    );

    // Narrowed again (an unknown word makes the line bad: the key loses access entirely).
    std::fs::write(
        &keys_file,
        format!("{} app logd.wirte=ops.\n", app.public.z85()),
    )
    .unwrap();
    assert!(
        poll(Duration::from_secs(10), || (!send().0).then_some(())).is_some(),
        "the narrowed permission was not applied without a restart"
    );
    assert_eq!(appliance.metric("depot_security_key_file_bad_lines"), 1.0);
    assert!(appliance.stderr().contains("unknown permission"));
}

#[test]
fn a_key_sets_and_snapshots_only_its_cache_subtrees() {
    let dir = tempfile::tempdir().unwrap();
    let (app, app_file) = named_key(dir.path(), "app");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} app cache.write=/app/ cache.read=/app/\n",
            app.public.z85()
        ),
    );
    let cli = |args: &[&str]| cli_as(&appliance, dir.path(), &app_file, args);
    let (ok, _, err) = cli(&["cache", "set", "/app/a", "one"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["cache", "get", "/app/a"]);
    assert!(ok && out == "one\n", "{out}{err}");
    // A snapshot outside the key's subtrees: refused with the reason.
    let (ok, _, err) = cli(&["cache", "dump", "/"]);
    assert!(!ok && err.contains("not authorized"), "{err}");
    // The snapshot, and the dump's subscription to updates under "/" (not applied).
    let before = denied(&appliance, "cache");
    assert!((1.0..=2.0).contains(&before), "{before}");

    // An update outside them: CHP has no reply, so it is dropped and counted.
    let text = std::fs::read_to_string(appliance.data.join("run.json")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    let collector = info["cache"]["collector"].as_str().unwrap().to_string();
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    client_keys(&appliance, &app).apply(&publisher).unwrap();
    publisher.connect(&collector).unwrap();
    let mut forbidden = depot_cache::protocol::KvMsg::new(&b"/secret/x"[..], &b"no"[..]);
    forbidden.uuid = vec![7; 16];
    // PUB drops until the connection is up: repeated (same uuid) until one is counted.
    let counted = poll(Duration::from_secs(10), || {
        forbidden.send(&publisher, 0).unwrap();
        (denied(&appliance, "cache") > before).then_some(())
    });
    assert!(counted.is_some(), "the forbidden update was not counted");
    assert_eq!(appliance.metric("depot_cache_keys"), 1.0);
}

/// Subscribes as `reader` to `endpoint` with an allowed and a refused prefix (in that order),
/// waits until the refusal is counted for `service` (so the allowed one, read before it, is in
/// place), runs `publish`, and returns the first frame that arrives.
fn first_on_filtered_subscriptions(
    appliance: &Appliance,
    reader: &KeyPair,
    endpoint: &str,
    (allowed, refused): (&[u8], &[u8]),
    service: &str,
    publish: impl FnOnce(),
) -> Vec<u8> {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    client_keys(appliance, reader).apply(&sub).unwrap();
    sub.connect(endpoint).unwrap();
    sub.set_subscribe(allowed).unwrap();
    sub.set_subscribe(refused).unwrap();
    assert!(
        poll(Duration::from_secs(10), || (denied(appliance, service)
            >= 1.0)
            .then_some(()))
        .is_some(),
        "the refused subscription was not counted"
    );
    publish();
    assert_eq!(sub.poll(zmq::POLLIN, 10_000).unwrap(), 1, "nothing arrived");
    sub.recv_bytes(0).unwrap()
}

#[test]
fn live_subscriptions_outside_a_keys_read_prefixes_are_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, _) = named_key(dir.path(), "reader");
    let (admin, admin_file) = named_key(dir.path(), "admin");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} reader logd.read=app.\n{} admin\n",
            reader.public.z85(),
            admin.public.z85()
        ),
    );
    let topic = first_on_filtered_subscriptions(
        &appliance,
        &reader,
        &appliance.logd().live,
        (b"app.", b"sys."),
        "logd",
        || {
            // Both sent in this order: were the refused one applied, its record would come first.
            for stream in ["sys.kernel", "app.web"] {
                let args = ["log", "send", "--stream", stream, "record"];
                let (ok, _, err) = cli_as(&appliance, dir.path(), &admin_file, &args);
                assert!(ok, "{err}");
            }
        },
    );
    assert!(
        topic.starts_with(b"app.web"),
        "{:?}",
        String::from_utf8_lossy(&topic)
    );
    assert_eq!(denied(&appliance, "logd"), 1.0);
}

#[test]
fn the_replay_api_and_fire_and_forget_ingest_follow_a_keys_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = named_key(dir.path(), "app");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!("{} app logd.write=app. logd.read=app.\n", app.public.z85()),
    );
    let keys = client_keys(&appliance, &app);
    let endpoints = appliance.logd();
    let ctx = zmq::Context::new();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.set_linger(1_000).unwrap();
    keys.apply(&push).unwrap();
    push.connect(&endpoints.pull).unwrap();
    push.send_multipart([&b"sys.kernel"[..], b"dropped"], 0)
        .unwrap();
    push.send_multipart([&b"app.web"[..], b"kept"], 0).unwrap();
    assert!(
        poll(Duration::from_secs(10), || {
            let (_, text) = appliance.get("/metrics");
            common::metric_value(&text, "depot_log_records{stream=\"app.web\"}")
        })
        .is_some(),
        "the allowed push was not stored"
    );
    // Sent before it on the same connection: refused by then.
    assert_eq!(denied(&appliance, "logd"), 1.0);

    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    keys.apply(&dealer).unwrap();
    dealer.connect(&endpoints.replay_api).unwrap();
    let credit = 100u32.to_be_bytes();
    let replay = |id: &[u8], stream: &[u8]| {
        dealer
            .send_multipart([&b"REPLAY"[..], id, stream, b"1", &credit], 0)
            .unwrap();
        assert_eq!(dealer.poll(zmq::POLLIN, 10_000).unwrap(), 1, "no answer");
        dealer.recv_multipart(0).unwrap()
    };
    let refused = replay(b"r1", b"sys.kernel");
    assert_eq!(refused[1], b"ERR");
    let reason = String::from_utf8_lossy(&refused[2]).into_owned();
    assert!(reason.contains("not authorized"), "{reason}");
    let allowed = replay(b"r2", b"app.web");
    assert_eq!(
        (allowed[0].as_slice(), allowed[1].as_slice()),
        (&b"r2"[..], &b"RECS"[..])
    );
    assert_eq!(denied(&appliance, "logd"), 2.0);
}

#[test]
fn cache_update_subscriptions_outside_a_keys_subtrees_are_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, _) = named_key(dir.path(), "reader");
    let (admin, admin_file) = named_key(dir.path(), "admin");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} reader cache.read=/app/\n{} admin\n",
            reader.public.z85(),
            admin.public.z85()
        ),
    );
    let key = first_on_filtered_subscriptions(
        &appliance,
        &reader,
        &appliance.cache().publisher,
        (b"/app/", b"/secret/"),
        "cache",
        || {
            // Both set in this order: were the refused one applied, its update would come first.
            for key in ["/secret/k", "/app/k"] {
                let args = ["cache", "set", key, "v"];
                let (ok, _, err) = cli_as(&appliance, dir.path(), &admin_file, &args);
                assert!(ok, "{err}");
            }
        },
    );
    assert_eq!(key, b"/app/k", "{:?}", String::from_utf8_lossy(&key));
    assert_eq!(denied(&appliance, "cache"), 1.0);
}

/// Simple-mode PUSH endpoints cannot refuse a connected consumer, so ZAP checks
/// `queue.consume` for the endpoint's queue at the handshake.
#[test]
fn a_simple_mode_push_endpoint_takes_only_keys_that_may_consume_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (worker, worker_file) = named_key(dir.path(), "worker");
    std::fs::write(
        data.join("authorized_keys"),
        format!(
            "{} worker queue.produce queue.consume=jobs\n",
            worker.public.z85()
        ),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        "\n[security]\ncurve = true\n\n[queue.queues.\"jobs\"]\npush = \"tcp://127.0.0.1:*\"\n\n[queue.queues.\"payroll\"]\npush = \"tcp://127.0.0.1:*\"\n",
    );
    let appliance = Appliance::start(&data, &config);
    for (queue, body) in [("jobs", "job-1"), ("payroll", "raise")] {
        let (ok, _, err) = cli_as(
            &appliance,
            dir.path(),
            &worker_file,
            &["queue", "push", queue, body],
        );
        assert!(ok, "{err}");
    }
    let endpoints = appliance.queue();
    let ctx = zmq::Context::new();
    let pull = |queue: &str| {
        let socket = ctx.socket(zmq::PULL).unwrap();
        socket.set_linger(0).unwrap();
        client_keys(&appliance, &worker).apply(&socket).unwrap();
        socket.connect(&endpoints.push[queue]).unwrap();
        socket
    };
    let payroll = pull("payroll");
    assert!(
        poll(Duration::from_secs(10), || (denied(&appliance, "queue")
            >= 1.0)
            .then_some(()))
        .is_some(),
        "the handshake on payroll's endpoint was not refused"
    );
    let jobs = pull("jobs");
    assert_eq!(
        jobs.poll(zmq::POLLIN, 10_000).unwrap(),
        1,
        "nothing from jobs"
    );
    assert!(jobs.recv_bytes(0).unwrap().ends_with(b"job-1"));
    assert_eq!(
        payroll.poll(zmq::POLLIN, 500).unwrap(),
        0,
        "payroll delivered"
    );
    assert_eq!(denied(&appliance, "queue"), 1.0);
}

#[test]
fn a_key_over_its_log_rate_gets_rate_limit_errors_while_another_key_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (slow, _) = named_key(dir.path(), "slow");
    let (free, _) = named_key(dir.path(), "free");
    let (appliance, keys_file) = curve_appliance_with(
        dir.path(),
        &format!(
            "{} slow logd.write=app. logd.rate=10/s\n{} free\n",
            slow.public.z85(),
            free.public.z85()
        ),
    );
    let ctx = zmq::Context::new();
    let records: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("record {i}").into_bytes())
        .collect();
    let bodies: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    // Four batches of one second's worth each, sent back to back; the answers by batch, in
    // sending order (refusals are answered at once, acks only once durable).
    let send_four = |pair: &KeyPair| -> Vec<Result<(u64, u64), String>> {
        let keys = client_keys(&appliance, pair);
        let mut sender =
            AckedSender::connect_with(&ctx, &appliance.logd().acked, Some(&keys)).unwrap();
        let ids: Vec<Vec<u8>> = (0..4)
            .map(|_| sender.send("app.rate", 6, "test", &bodies).unwrap())
            .collect();
        let mut answers = std::collections::HashMap::new();
        while answers.len() < ids.len() {
            let ack = sender.recv_ack(Duration::from_secs(10)).unwrap();
            answers.insert(ack.batch_id, ack.result);
        }
        ids.iter().map(|id| answers.remove(id).unwrap()).collect()
    };

    // The first batch empties the bucket; the next ones arrive long before it refills.
    let answers = send_four(&slow);
    assert!(answers[0].is_ok(), "{answers:?}");
    for answer in &answers[1..] {
        let reason = answer.as_ref().unwrap_err();
        assert!(
            reason.starts_with("rate limit") && reason.contains("\"slow\""),
            "{reason}"
        );
    }
    let answers = send_four(&free);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(
        appliance.metric("depot_rate_limited_total{service=\"logd\"}"),
        3.0
    );
    assert_eq!(
        appliance.metric("depot_rate_limited_units_total{service=\"logd\"}"),
        30.0
    );
    assert_eq!(
        appliance.metric("depot_log_records{stream=\"app.rate\"}"),
        50.0
    );
    assert_eq!(denied(&appliance, "logd"), 0.0);
    assert!(appliance.stderr().contains("over its rate limit"));

    // The limit goes with the key file's edit: four batches at once all pass.
    std::fs::write(
        &keys_file,
        format!("{} slow logd.write=app.\n", slow.public.z85()),
    )
    .unwrap();
    assert!(
        poll(Duration::from_secs(10), || send_four(&slow)
            .iter()
            .all(Result::is_ok)
            .then_some(()))
        .is_some(),
        "the key's rate limit stayed after it was removed from the file"
    );
}

#[test]
fn a_confirmed_queue_publish_over_its_keys_rate_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (producer, _) = named_key(dir.path(), "producer");
    let (appliance, _) = curve_appliance_with(
        dir.path(),
        &format!("{} producer queue.rate=3/s\n", producer.public.z85()),
    );
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    client_keys(&appliance, &producer).apply(&dealer).unwrap();
    dealer.connect(&appliance.queue().router).unwrap();
    // Three messages in one publish take the whole second's worth; the next two find none.
    dealer
        .send_multipart([&b"PUB"[..], b"t1", b"jobs", b"a", b"b", b"c"], 0)
        .unwrap();
    for tag in [&b"t2"[..], b"t3"] {
        dealer
            .send_multipart([&b"PUB"[..], tag, b"jobs", b"d"], 0)
            .unwrap();
    }
    let mut answers = std::collections::HashMap::new();
    for _ in 0..3 {
        assert_eq!(dealer.poll(zmq::POLLIN, 10_000).unwrap(), 1, "no answer");
        let reply = dealer.recv_multipart(0).unwrap();
        match reply.as_slice() {
            [ok, tag, _, _] if ok == b"OK" => answers.insert(tag.clone(), Ok(())),
            [err, command, tag, reason] if err == b"ERR" && command == b"PUB" => answers.insert(
                tag.clone(),
                Err(String::from_utf8_lossy(reason).into_owned()),
            ),
            other => panic!("unexpected reply {other:?}"),
        };
    }
    assert_eq!(answers[&b"t1".to_vec()], Ok(()));
    for tag in [b"t2".to_vec(), b"t3".to_vec()] {
        let reason = answers[&tag].as_ref().unwrap_err();
        assert!(
            reason.starts_with("rate limit") && reason.contains("3 messages/s to queue"),
            "{reason}"
        );
    }
    assert_eq!(
        appliance.metric("depot_rate_limited_total{service=\"queue\"}"),
        2.0
    );
    assert_eq!(
        appliance.metric("depot_rate_limited_units_total{service=\"queue\"}"),
        2.0
    );
}
