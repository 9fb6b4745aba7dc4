//! The short crash soak of `make test`: `depot bench soak` kills and restarts its child
//! appliance a few times under mixed load and must find every acknowledged log record, cache
//! update and queue message, and every confirmed clock timer fired, after each restart (it
//! exits non-zero on any violation).

mod common;

use std::time::{Duration, Instant};

use common::depot;

#[test]
fn a_short_crash_soak_finds_everything_acknowledged_after_every_kill() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = depot()
        .args([
            "bench",
            "soak",
            "--rounds",
            "4",
            "--minutes",
            "5",
            "--min-round",
            "500ms",
            "--max-round",
            "2s",
            "--seed",
            "3",
            "--data",
        ])
        .arg(dir.path().join("soak"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "soak failed ({}):\n{stdout}\n{stderr}\nappliance log:\n{}",
        output.status,
        std::fs::read_to_string(dir.path().join("soak/appliance.log")).unwrap_or_default()
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("soak: 4 rounds"), "{stdout}");
    assert!(last.ends_with("violations = 0"), "{stdout}");
    // Each round checked something of every service after its restart.
    assert_eq!(stdout.matches("SIGKILL after").count(), 4, "{stdout}");
    for line in stdout.lines().filter(|l| l.contains("SIGKILL after")) {
        assert!(!line.contains(": 0 log records acked"), "{line}");
        assert!(!line.contains(", 0 queue messages confirmed"), "{line}");
        assert!(!line.contains(", 0 cache sets confirmed"), "{line}");
        assert!(!line.contains(", 0 timers confirmed"), "{line}");
    }
    // Timers were due across the kills and fired after the restarts.
    let numbers = |text: &str| -> Vec<u64> {
        text.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let (head, tail) = last.split_once(" timers (").unwrap_or_default();
    let figures: Vec<u64> = numbers(head)
        .last()
        .into_iter()
        .copied()
        .chain(numbers(tail))
        .collect();
    let [confirmed, fired, overdue, ..] = figures[..] else {
        panic!("no timer figures in {last:?}");
    };
    assert!(confirmed > 0 && fired > 0, "{last}");
    assert!(
        overdue > 0,
        "no timer was due while the appliance was down: {last}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// `--no-kill` with `--retention`: one lifetime under load while retention removes the oldest
/// log records; the check after the restart starts at the oldest record kept and still finds
/// every later acked record in order and without a gap.
#[test]
fn a_soak_with_retention_checks_from_the_oldest_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    let output = depot()
        .args([
            "bench",
            "soak",
            "--no-kill",
            "--minutes",
            "0.25",
            "--rss-every",
            "5s",
            "--retention",
            "64KiB",
            "--timer-rate",
            "0",
            "--seed",
            "5",
            "--data",
        ])
        .arg(dir.path().join("soak"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "soak failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with("violations = 0"), "{stdout}");
    assert!(stdout.contains("\nrss: "), "memory was sampled: {stdout}");
    // "checked A log records (the last check B, ...)": retention removed some, not all.
    let (acked, rest) = last
        .split_once(" s, checked ")
        .and_then(|(_, rest)| rest.split_once(" log records (the last check "))
        .unwrap_or_else(|| panic!("no log figures in {last:?}"));
    let acked: u64 = acked.parse().unwrap();
    let checked: u64 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checked figure in {last:?}"));
    assert!(
        0 < checked && checked < acked,
        "retention removed none or all: {last}"
    );
}
