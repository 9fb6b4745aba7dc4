//! File tailing through a real `depot serve`: appended, rotated and truncated files yield each
//! line once, also across a clean restart and a SIGKILL.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{poll, write_config, Appliance};

fn config(dir: &Path, logs: &Path) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[[logd.files]]
path = "{}/*.log"
stream = "files"
level = "warn"
"#,
            logs.display()
        ),
    )
}

/// Every body in stream `files`, in sequence order, checking sequences are contiguous.
fn stored_lines(appliance: &Appliance) -> Vec<String> {
    let replay = appliance.logd().replay;
    let ctx = zmq::Context::new();
    let mut lines = Vec::new();
    let mut next = 1;
    depot_logd::client::replay(
        &ctx,
        &replay,
        "files",
        "1",
        Duration::from_secs(10),
        |record| {
            assert_eq!(record.header.seq, next, "sequences must be contiguous");
            assert_eq!(record.header.level, 4);
            next += 1;
            lines.push(String::from_utf8(record.body).unwrap());
            true
        },
    )
    .unwrap();
    lines
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Waits until the stored lines are exactly `expected`.
fn wait_for(appliance: &Appliance, expected: &[&str]) {
    let got = poll(Duration::from_secs(10), || {
        let lines = stored_lines(appliance);
        (lines == expected).then_some(lines)
    });
    assert!(
        got.is_some(),
        "expected {expected:?}, stored {:?}",
        stored_lines(appliance)
    );
}

#[test]
fn appended_rotated_and_truncated_lines_are_stored_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    let data = dir.path().join("data");
    let config = config(dir.path(), &logs);

    append(&app, "one\ntwo\n");
    let appliance = Appliance::start(&data, &config);
    wait_for(&appliance, &["one", "two"]);

    // A line written in two parts is one record.
    append(&app, "thr");
    append(&app, "ee\n");
    wait_for(&appliance, &["one", "two", "three"]);

    // Rotation: the old file gets a last line after the rename, then a new file appears.
    std::fs::rename(&app, logs.join("app.log.1")).unwrap();
    append(&logs.join("app.log.1"), "four\n");
    append(&app, "five\n");
    wait_for(&appliance, &["one", "two", "three", "four", "five"]);

    // Truncation, refilled before tailing looks again.
    std::fs::write(&app, "").unwrap();
    append(&app, "six\n");
    wait_for(&appliance, &["one", "two", "three", "four", "five", "six"]);
    assert_eq!(appliance.stop().code(), Some(0));

    // Written while Depot is stopped, including a rotation: nothing skipped, nothing repeated.
    append(&app, "seven\n");
    std::fs::rename(&app, logs.join("app.log.2")).unwrap();
    append(&logs.join("app.log.2"), "eight\n");
    append(&app, "nine\n");
    let appliance = Appliance::start(&data, &config);
    let all = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    wait_for(&appliance, &all);

    // SIGKILL: the position is stored with the lines, so the restart neither skips nor repeats.
    append(&app, "ten\n");
    wait_for(&appliance, &[&all[..], &["ten"]].concat());
    appliance.kill();
    append(&app, "eleven\n");
    let appliance = Appliance::start(&data, &config);
    wait_for(&appliance, &[&all[..], &["ten", "eleven"]].concat());
    assert_eq!(appliance.stop().code(), Some(0));
}
