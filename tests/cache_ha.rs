//! End-to-end: a Binary Star pair of real `depot serve` processes (primary and backup) with a
//! client that fails over between them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, poll, write_config_with_cache, Appliance, NftTable};
use depot_cache::client::{CacheClient, ServerEndpoints};

const ACTIVE: f64 = 3.0;
const PASSIVE: f64 = 4.0;

/// The four ports of one server of the pair.
struct Ports {
    snapshot: u16,
    publisher: u16,
    collector: u16,
    state: u16,
}

fn ports() -> Ports {
    Ports {
        snapshot: free_port(),
        publisher: free_port(),
        collector: free_port(),
        state: free_port(),
    }
}

fn endpoints(p: &Ports) -> ServerEndpoints {
    ServerEndpoints {
        snapshot: format!("tcp://127.0.0.1:{}", p.snapshot),
        publisher: format!("tcp://127.0.0.1:{}", p.publisher),
        collector: format!("tcp://127.0.0.1:{}", p.collector),
    }
}

fn cache_section(role: &str, own: &Ports, peer: &Ports) -> String {
    format!(
        r#"[cache]
snapshot = "tcp://127.0.0.1:{}"
publisher = "tcp://127.0.0.1:{}"
collector = "tcp://127.0.0.1:{}"

[cache.ha]
role = "{role}"
state = "tcp://127.0.0.1:{}"
peer_state = "tcp://127.0.0.1:{}"
peer_snapshot = "tcp://127.0.0.1:{}"
peer_publisher = "tcp://127.0.0.1:{}"
"#,
        own.snapshot,
        own.publisher,
        own.collector,
        own.state,
        peer.state,
        peer.snapshot,
        peer.publisher
    )
}

/// Ports and configs of a primary and a backup naming each other, under `dir`.
struct Pair {
    primary: Ports,
    backup: Ports,
    primary_config: PathBuf,
    backup_config: PathBuf,
}

fn pair(dir: &Path) -> Pair {
    let (primary, backup) = (ports(), ports());
    let primary_config = write_config_with_cache(
        &dir.join("primary"),
        &cache_section("primary", &primary, &backup),
        "",
    );
    let backup_config = write_config_with_cache(
        &dir.join("backup"),
        &cache_section("backup", &backup, &primary),
        "",
    );
    Pair {
        primary,
        backup,
        primary_config,
        backup_config,
    }
}

/// Starts the primary and the backup (data folder, config) and waits until the primary is
/// active and the backup passive.
fn start_settled(primary: (&Path, &Path), backup: (&Path, &Path)) -> (Appliance, Appliance) {
    let primary = Appliance::start(primary.0, primary.1);
    let backup = Appliance::start(backup.0, backup.1);
    wait_metric(
        &primary,
        "depot_cache_ha_state",
        ACTIVE,
        Duration::from_secs(10),
    );
    wait_metric(
        &backup,
        "depot_cache_ha_state",
        PASSIVE,
        Duration::from_secs(10),
    );
    (primary, backup)
}

fn wait_metric(appliance: &Appliance, sample: &str, want: f64, within: Duration) {
    poll(within, || (appliance.metric(sample) == want).then_some(())).unwrap_or_else(|| {
        panic!(
            "{sample} stayed {} (wanted {want}):\n{}",
            appliance.metric(sample),
            appliance.stderr()
        )
    });
}

fn dump(
    entries: impl IntoIterator<Item = depot_cache::protocol::KvMsg>,
) -> BTreeMap<String, String> {
    entries
        .into_iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.key).into_owned(),
                String::from_utf8_lossy(&m.body).into_owned(),
            )
        })
        .collect()
}

/// Compares two dumps, naming the keys that differ rather than printing both whole.
fn assert_same(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>, what: &str) {
    let missing: Vec<&String> = want
        .keys()
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing or different {missing:?}, unexpected {extra:?}"
    );
}

#[test]
fn the_backup_takes_over_without_losing_updates_and_a_restarted_primary_goes_passive() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        primary: p,
        backup: b,
        primary_config,
        backup_config,
    } = pair(dir.path());
    let primary_data = dir.path().join("primary/data");
    let (primary, backup) = start_settled(
        (&primary_data, &primary_config),
        (&dir.path().join("backup/data"), &backup_config),
    );

    let ctx = zmq::Context::new();
    let timeout = Duration::from_secs(10);
    let servers = [endpoints(&p), endpoints(&b)];
    let mut client = CacheClient::connect(&ctx, &servers, timeout).unwrap();
    assert_eq!(client.server(), 0, "the client follows the active primary");
    let mut expected = BTreeMap::new();
    for i in 0..100 {
        let (key, value) = (format!("/ha/confirmed/{i:03}"), format!("v{i}"));
        client
            .set(key.as_bytes(), value.as_bytes(), None, timeout)
            .unwrap();
        expected.insert(key, value);
    }
    // The passive backup mirrors the primary.
    let primary_seq = primary.metric("depot_cache_seq");
    wait_metric(
        &backup,
        "depot_cache_seq",
        primary_seq,
        Duration::from_secs(10),
    );
    assert_eq!(backup.metric("depot_cache_published_total"), 0.0);

    // Updates sent fire-and-forget right before the primary dies: whether the primary got to
    // publish them or not, the backup has them (mirrored, or pending).
    for i in 0..50 {
        let (key, value) = (format!("/ha/burst/{i:03}"), format!("b{i}"));
        client.send(key.as_bytes(), value.as_bytes(), None).unwrap();
        expected.insert(key, value);
    }
    let seq_before = client.seq();
    primary.kill();
    let killed = Instant::now();

    // Sent while no server is active: the backup holds it until the client's vote makes it
    // take over, then publishes it.
    client
        .set(b"/ha/during", b"x", None, Duration::from_secs(20))
        .unwrap();
    expected.insert("/ha/during".into(), "x".into());
    let moved = killed.elapsed();
    eprintln!("the client moved to the backup {moved:?} after the kill");
    assert_eq!(client.server(), 1, "the client follows the backup");
    assert!(
        moved <= Duration::from_secs(6),
        "the client moved after {moved:?}"
    );
    assert!(client.resyncs() >= 1);
    assert_eq!(backup.metric("depot_cache_ha_state"), ACTIVE);
    assert!(
        client.seq() > seq_before,
        "the backup continues the primary's numbering ({} after {seq_before})",
        client.seq()
    );

    let on_backup = dump(CacheClient::snapshot(&ctx, &servers[1..], b"/ha/", timeout).unwrap());
    assert_same(&on_backup, &expected, "every update survived the failover");
    assert_same(
        &dump(client.entries().cloned()),
        &expected,
        "the client's copy equals the server's",
    );

    // The old primary comes back: it hears the active backup and goes passive.
    let primary = Appliance::start(&primary_data, &primary_config);
    wait_metric(
        &primary,
        "depot_cache_ha_state",
        PASSIVE,
        Duration::from_secs(10),
    );
    assert_eq!(primary.metric("depot_cache_takeovers_total"), 0.0);
    client.set(b"/ha/after", b"y", None, timeout).unwrap();
    let backup_seq = backup.metric("depot_cache_seq");
    wait_metric(
        &primary,
        "depot_cache_seq",
        backup_seq,
        Duration::from_secs(10),
    );
    assert_eq!(
        primary.metric("depot_cache_keys"),
        backup.metric("depot_cache_keys")
    );
    assert_eq!(backup.metric("depot_cache_ha_state"), ACTIVE);
    assert_eq!(primary.stop().code(), Some(0));
    assert_eq!(backup.stop().code(), Some(0));
}

#[test]
fn a_primary_alone_serves_after_waiting_for_its_peer_and_a_backup_alone_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        primary: p,
        backup: b,
        primary_config,
        backup_config,
    } = pair(dir.path());
    let ctx = zmq::Context::new();

    // A backup that never heard an active primary refuses every vote.
    let backup = Appliance::start(&dir.path().join("backup/data"), &backup_config);
    let refused = CacheClient::snapshot(&ctx, &[endpoints(&b)], b"", Duration::from_secs(3));
    assert!(refused.is_err(), "a lone backup served a snapshot");
    assert!(backup.metric("depot_cache_votes_refused_total") >= 1.0);
    assert_eq!(backup.metric("depot_cache_ha_state"), 2.0);
    backup.kill();

    // A primary alone becomes active on a vote once its peer timeout passed unheard.
    let primary = Appliance::start(&dir.path().join("primary/data"), &primary_config);
    let mut client = CacheClient::connect(
        &ctx,
        &[endpoints(&p), endpoints(&b)],
        Duration::from_secs(15),
    )
    .unwrap();
    assert_eq!(client.server(), 0);
    assert_eq!(primary.metric("depot_cache_ha_state"), ACTIVE);
    client
        .set(b"/alone", b"1", None, Duration::from_secs(10))
        .unwrap();
    assert_eq!(primary.stop().code(), Some(0));
}

/// With CURVE on, the pair shares one server key pair: the state link and the passive
/// server's mirror are CURVE clients of the peer with it.
#[test]
fn a_curve_pair_agrees_on_roles_and_the_backup_mirrors() {
    use depot_common::security::KeyPair;
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (ports(), ports());
    let security = "\n[security]\ncurve = true\n";
    let primary_config = write_config_with_cache(
        &dir.path().join("primary"),
        &cache_section("primary", &p, &b),
        security,
    );
    let backup_config = write_config_with_cache(
        &dir.path().join("backup"),
        &cache_section("backup", &b, &p),
        security,
    );
    let server = KeyPair::generate().unwrap();
    let client = KeyPair::generate().unwrap();
    let client_stem = dir.path().join("client");
    client.write(&client_stem).unwrap();
    let mut data = Vec::new();
    for side in ["primary", "backup"] {
        let side_data = dir.path().join(side).join("data");
        std::fs::create_dir_all(&side_data).unwrap();
        server.write(&side_data.join("server")).unwrap();
        std::fs::write(
            side_data.join("authorized_keys"),
            format!("{}\n", client.public.z85()),
        )
        .unwrap();
        data.push(side_data);
    }
    let (primary, backup) = start_settled((&data[0], &primary_config), (&data[1], &backup_config));
    for i in 0..3 {
        let output = common::depot()
            .args(["cache", "set", &format!("/curve/{i}"), "v"])
            .arg("--data")
            .arg(&data[0])
            .arg("--config")
            .arg(&primary_config)
            .arg("--key")
            .arg(KeyPair::secret_path(&client_stem))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let primary_seq = primary.metric("depot_cache_seq");
    assert!(primary_seq >= 3.0);
    wait_metric(
        &backup,
        "depot_cache_seq",
        primary_seq,
        Duration::from_secs(10),
    );
    assert_eq!(primary.metric("depot_security_rejected_total"), 0.0);
}

/// Drops TCP to and from `ports` on this host while it lives (the pair's state link, cut as a
/// network partition would).
fn partition(ports: &[u16]) -> NftTable {
    let set = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    NftTable::load(
        "inet",
        &format!("depot_partition_{}", ports[0]),
        &format!(" chain input {{\n  type filter hook input priority -10; policy accept;\n  tcp dport {{ {set} }} drop\n  tcp sport {{ {set} }} drop\n }}\n"),
    )
}

/// Split brain: with the state link cut, a client's vote makes the backup active beside the
/// active primary; when the link returns, the backup yields, goes passive and mirrors the
/// primary again.
#[test]
fn after_a_partition_heals_the_backup_yields_to_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        primary: p,
        backup: b,
        primary_config,
        backup_config,
    } = pair(dir.path());
    let (primary, backup) = start_settled(
        (&dir.path().join("primary/data"), &primary_config),
        (&dir.path().join("backup/data"), &backup_config),
    );
    let ctx = zmq::Context::new();
    let mut client = CacheClient::connect(&ctx, &[endpoints(&p)], Duration::from_secs(10)).unwrap();
    client
        .set(b"/before", b"1", None, Duration::from_secs(10))
        .unwrap();

    {
        let _cut = partition(&[p.state, b.state]);
        // The backup sees its peer die (2 s), then a client's snapshot request is a vote.
        let voted = poll(Duration::from_secs(15), || {
            CacheClient::snapshot(&ctx, &[endpoints(&b)], b"", Duration::from_millis(500)).ok()
        });
        assert!(voted.is_some(), "the cut-off backup never took a vote");
        assert_eq!(backup.metric("depot_cache_ha_state"), ACTIVE);
        assert_eq!(primary.metric("depot_cache_ha_state"), ACTIVE);
        client
            .set(b"/during", b"2", None, Duration::from_secs(10))
            .unwrap();
    }

    wait_metric(
        &backup,
        "depot_cache_ha_state",
        PASSIVE,
        Duration::from_secs(15),
    );
    assert_eq!(primary.metric("depot_cache_ha_state"), ACTIVE);
    client
        .set(b"/after", b"3", None, Duration::from_secs(10))
        .unwrap();
    // The passive backup mirrors the primary's state, including what it missed while cut off.
    let want =
        dump(CacheClient::snapshot(&ctx, &[endpoints(&p)], b"", Duration::from_secs(10)).unwrap());
    let mirrored = poll(Duration::from_secs(15), || {
        let seq = primary.metric("depot_cache_seq");
        (backup.metric("depot_cache_seq") == seq).then_some(())
    });
    assert!(
        mirrored.is_some(),
        "the backup did not catch up:\n{}",
        backup.stderr()
    );
    assert_eq!(want.get("/during").map(String::as_str), Some("2"));
    assert_eq!(want.get("/after").map(String::as_str), Some("3"));
    assert!(primary.stop().success());
    assert!(backup.stop().success());
}
