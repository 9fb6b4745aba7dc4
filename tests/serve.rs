//! `depot serve` as a real process: health, metrics, status, signals, and its refusals.

mod common;

use std::path::Path;

use common::{depot, write_config, Appliance};

/// Runs `depot serve` expecting it to refuse to start; returns what it printed.
fn refused_start(data: &Path, config: &Path) -> String {
    let output = depot()
        .args(["serve", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "depot serve should have refused to start"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serves_health_metrics_and_status_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    {
        // Records written by an earlier run show up in the status report.
        let store = depot_store::Store::open(&data, Default::default()).unwrap();
        let body = [b'x'; 100];
        let records = vec![
            depot_store::NewRecord {
                level: 6,
                source: "test",
                body: &body,
            };
            1_000
        ];
        store.log().append("app.web", &records).unwrap();
        store.close().unwrap();
    }
    let appliance = Appliance::start(&data, &config);

    let (code, body) = appliance.get("/health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ok"], true);

    let (code, metrics) = appliance.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE depot_up gauge\ndepot_up 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("depot_store_commits_total"), "{metrics}");
    assert!(
        metrics.contains("depot_log_records{stream=\"app.web\"} 1000\n"),
        "{metrics}"
    );

    let (code, _) = appliance.get("/nope");
    assert_eq!(code, 404);

    let output = depot()
        .args(["status", "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["pid"], appliance.child.id());
    assert_eq!(report["data_dir"], data.display().to_string());
    assert_eq!(report["libzmq"], "4.3.4");
    let streams = report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["name"], "app.web");
    assert_eq!(streams[0]["records"], 1_000);
    assert_eq!(streams[0]["last_seq"], 1_000);
    assert!(streams[0]["stored_bytes"].as_u64().unwrap() > 0);

    let table = depot()
        .args(["status", "--admin", &appliance.admin])
        .output()
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("Depot "), "{table}");
    assert!(table.contains("data folder"), "{table}");
    assert!(table.contains("app.web"), "{table}");

    let status = appliance.stop();
    assert_eq!(status.code(), Some(0));
    assert!(
        !data.join("run.json").exists(),
        "run.json is removed on a clean stop"
    );
}

#[test]
fn second_appliance_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let first = Appliance::start(&data, &config);

    let second = depot()
        .args(["serve", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another Depot process"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert_eq!(first.stop().code(), Some(0));
}

#[test]
fn invalid_config_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("depot.toml");
    std::fs::write(
        &config,
        "[store]\nsync = true\ncommit_intervall = \"2ms\"\n",
    )
    .unwrap();
    let stderr = refused_start(&dir.path().join("data"), &config);
    assert!(stderr.contains("commit_intervall"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn admin_port_in_use_names_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    // Every other endpoint ephemeral, so only the admin endpoint can be in use.
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let stderr = refused_start(&dir.path().join("data"), &config);
    assert!(stderr.contains(&format!("http://{addr}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn damaged_database_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    assert_eq!(Appliance::start(&data, &config).stop().code(), Some(0));

    // Garble sled's data file: sled would open it as an empty database.
    let db = data.join("store").join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0x5a; len.max(4096)]).unwrap();
    let stderr = refused_start(&data, &config);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(stderr.contains("restore"), "{stderr}");
}

#[test]
fn status_without_an_appliance_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    drop(taken);
    let output = depot()
        .args(["status", "--admin", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no Depot answering"), "{stderr}");
}
