//! Live reload of `depot.toml` end to end: a real `depot serve` whose configuration file is
//! edited while it runs (in place and editor-style, by rename).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{metric_value, poll, write_config, Appliance, CACHE_EPHEMERAL};
use depot_clock::client::TimerClient;
use depot_clock::protocol::{AddTimer, Target, Tick, When};
use depot_queue::client::Producer;

/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(15);

/// Queues exist only when declared; "small" refuses publishes beyond 64 KiB of journal.
const QUEUES: &str = r#"auto_create = false
[queue.queues."small"]
swap_limit = "64KiB"
policy = "reject"
"#;

fn start(dir: &Path, extra: &str) -> (Appliance, PathBuf) {
    let config = write_config(dir, extra);
    (Appliance::start(&dir.join("data"), &config), config)
}

/// Replaces the configuration as editors do: a new file renamed over the old one.
fn replace_config(dir: &Path, extra: &str) {
    replace_config_with_clock(dir, "", extra);
}

/// Like [`replace_config`], with `clock` keys in the `[clock]` section.
fn replace_config_with_clock(dir: &Path, clock: &str, extra: &str) {
    let staged = common::write_config_sections(&dir.join("staging"), CACHE_EPHEMERAL, clock, extra);
    std::fs::rename(staged, dir.join("depot.toml")).unwrap();
}

/// Waits until `/metrics` shows `sample` at `at_least` or more.
fn wait_metric(appliance: &Appliance, sample: &str, at_least: f64) {
    poll(WAIT, || {
        let (_, text) = appliance.get("/metrics");
        metric_value(&text, sample).filter(|v| *v >= at_least)
    })
    .unwrap_or_else(|| {
        panic!(
            "{sample} never reached {at_least}; log:\n{}",
            appliance.stderr()
        )
    });
}

/// Publishes one message to `queue`: the confirm's sequence, or the refusal.
fn publish(producer: &mut Producer, queue: &str) -> Result<u64, String> {
    producer
        .publish_durable(queue, &[b"hello".as_slice()], WAIT)
        .map(|(_, last)| last)
        .map_err(|e| e.to_string())
}

#[test]
fn an_invalid_edit_is_refused_with_its_reason_and_the_old_configuration_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, config) = start(dir.path(), QUEUES);
    assert_eq!(appliance.metric("depot_config_reload_failed_total"), 0.0);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[queue.queues.\"broken\"]\nhwm = \"many\"\n");
    std::fs::write(&config, text).unwrap();
    wait_metric(&appliance, "depot_config_reload_failed_total", 1.0);
    assert_eq!(appliance.metric("depot_config_reloads_total"), 0.0);
    let log = appliance.stderr();
    assert!(
        log.contains("configuration refused") && log.contains("hwm"),
        "{log}"
    );
    let (code, health) = appliance.get("/health");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("refused"), "{health}");
    // Still serving, on the old configuration: the broken queue was not declared.
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &appliance.queue().router).unwrap();
    publish(&mut producer, "small").unwrap();
    publish(&mut producer, "broken").unwrap_err();
    assert!(appliance.stop().success());
}

#[test]
fn queue_limits_and_new_queues_apply_live_from_an_editor_style_replace() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = start(dir.path(), QUEUES);
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &appliance.queue().router).unwrap();
    let refusal = publish(&mut producer, "orders").unwrap_err();
    assert!(refusal.contains("orders"), "{refusal}");
    // Fill "small" to its swap limit with incompressible bodies.
    let noise: Vec<Vec<u8>> = (0..16).map(|i| common::incompressible(i, 1_000)).collect();
    let batch: Vec<&[u8]> = noise.iter().map(Vec::as_slice).collect();
    let mut published = 0;
    let refusal = loop {
        match producer.publish_durable("small", &batch, WAIT) {
            Ok(_) => published += 1,
            Err(e) => break e.to_string(),
        }
        assert!(published < 1_000, "never refused");
    };
    assert!(refusal.contains("swap limit"), "{refusal}");

    replace_config(
        dir.path(),
        r#"auto_create = false
[queue.queues."small"]
swap_limit = "64MiB"
policy = "reject"
[queue.queues."orders"]
"#,
    );
    wait_metric(&appliance, "depot_config_reloads_total", 1.0);
    // The queue thread takes the new settings at its next tick.
    poll(WAIT, || publish(&mut producer, "orders").ok()).expect("the new queue never appeared");
    publish(&mut producer, "small").expect("the raised swap limit did not apply");
    assert_eq!(appliance.metric("depot_config_restart_needed"), 0.0);
    assert_eq!(appliance.metric("depot_config_reload_failed_total"), 0.0);
    let log = appliance.stderr();
    assert!(
        log.contains("queue.queues.small.swap_limit") && log.contains("applied live"),
        "{log}"
    );
    assert!(appliance.stop().success());
}

#[test]
fn a_restart_only_edit_is_reported_as_needing_a_restart_and_nothing_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let (appliance, _) = start(dir.path(), QUEUES);
    replace_config(
        dir.path(),
        &format!("{QUEUES}[store]\ncommit_interval = \"5ms\"\n"),
    );
    wait_metric(&appliance, "depot_config_reloads_total", 1.0);
    assert_eq!(appliance.metric("depot_config_restart_needed"), 1.0);
    let log = appliance.stderr();
    assert!(
        log.contains("needs a restart: store.commit_interval"),
        "{log}"
    );
    let (code, status) = appliance.get("/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["config_reload"]["restart_needed"],
        serde_json::json!(["store.commit_interval"]),
        "{status}"
    );
    let (code, health) = appliance.get("/health");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("needs a restart"), "{health}");
    let ctx = zmq::Context::new();
    let mut producer = Producer::connect(&ctx, &appliance.queue().router).unwrap();
    publish(&mut producer, "small").unwrap();
    // Back to the file it started with: nothing waits for a restart any more.
    replace_config(dir.path(), QUEUES);
    wait_metric(&appliance, "depot_config_reloads_total", 2.0);
    assert_eq!(appliance.metric("depot_config_restart_needed"), 0.0);
    assert!(appliance.stop().success());
}

#[test]
fn a_retention_edit_applies_at_once_without_waiting_for_the_old_interval() {
    let dir = tempfile::tempdir().unwrap();
    let before = "[retention]\ninterval = \"1h\"\n";
    let (appliance, _) = start(dir.path(), before);
    let ctx = zmq::Context::new();
    let mut sender = depot_logd::client::AckedSender::connect(&ctx, &appliance.logd().acked)
        .unwrap()
        .with_packed(true);
    for round in 0..50 {
        let bodies = depot_common::loadgen::lines(round, 100, 1_000);
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        sender.send_durable("trimmed", 6, "t", &refs, WAIT).unwrap();
    }
    assert_eq!(
        appliance.metric("depot_retention_removed_records_total"),
        0.0
    );
    replace_config(
        dir.path(),
        &format!("{before}[retention.streams.\"trimmed\"]\nmax_bytes = \"64KiB\"\n"),
    );
    wait_metric(&appliance, "depot_config_reloads_total", 1.0);
    // The interval is still an hour: only the reload can have started this pass.
    wait_metric(&appliance, "depot_retention_removed_records_total", 1.0);
    assert_eq!(appliance.metric("depot_config_restart_needed"), 0.0);
    assert!(appliance.stop().success());
}

/// Ticks received so far, per topic.
type Seen = BTreeMap<String, Vec<Tick>>;

fn count(seen: &Seen, topic: &str) -> usize {
    seen.get(topic).map_or(0, Vec::len)
}

/// Receives ticks on `sub` until `done` holds (at most WAIT), asserting that every stream's
/// sequence goes on without a gap.
fn receive_until(sub: &zmq::Socket, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "ticks never showed up; seen so far: {seen:?}"
        );
        if sub.poll(zmq::POLLIN, left.as_millis() as i64).unwrap() == 0 {
            continue;
        }
        let tick = Tick::decode(&sub.recv_multipart(0).unwrap()).unwrap();
        let ticks = seen.entry(tick.topic.clone()).or_default();
        if let Some(last) = ticks.last() {
            assert_eq!(tick.seq, last.seq + 1, "a gap in {}", tick.topic);
        }
        ticks.push(tick);
    }
}

/// The STREAMS reply: the running streams' topics.
fn streams(timers: &mut TimerClient) -> Vec<String> {
    timers
        .streams()
        .unwrap()
        .into_iter()
        .map(|s| s.topic)
        .collect()
}

#[test]
fn tick_streams_are_added_removed_and_refused_live_and_a_kept_stream_goes_on_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    // Missed ticks are sent late rather than skipped: a loaded machine cannot fake a gap.
    let clock = "catch_up = \"10s\"\n";
    let slow = "[[clock.ticks]]\nperiod = \"100ms\"\n";
    let fast = "[[clock.ticks]]\nperiod = \"30ms\"\n";
    let config = common::write_config_sections(dir.path(), CACHE_EPHEMERAL, clock, slow);
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(0).unwrap();
    sub.set_subscribe(b"tick.").unwrap();
    sub.connect(&appliance.clock().publisher).unwrap();
    let mut timers = TimerClient::connect(&ctx, &appliance.clock().timers, WAIT).unwrap();
    assert_eq!(streams(&mut timers), ["tick.100ms"]);
    let mut seen = Seen::new();
    receive_until(&sub, &mut seen, |s| count(s, "tick.100ms") >= 3);

    // Add a second stream with another period.
    replace_config_with_clock(dir.path(), clock, &format!("{slow}{fast}"));
    wait_metric(&appliance, "depot_config_reloads_total", 1.0);
    let before = count(&seen, "tick.100ms");
    receive_until(&sub, &mut seen, |s| {
        count(s, "tick.30ms") >= 10 && count(s, "tick.100ms") >= before + 3
    });
    let added = &seen["tick.30ms"];
    for pair in added.windows(2) {
        assert_eq!(pair[1].scheduled_ns - pair[0].scheduled_ns, 30_000_000);
    }
    assert_eq!(
        added[0].scheduled_ns % 30_000_000,
        0,
        "aligned to its period"
    );
    assert_eq!(streams(&mut timers), ["tick.100ms", "tick.30ms"]);
    assert_eq!(appliance.metric("depot_clock_tick_streams"), 2.0);
    assert_eq!(appliance.metric("depot_config_restart_needed"), 0.0);

    // Remove the first one: gone from /metrics and STREAMS, the other goes on.
    replace_config_with_clock(dir.path(), clock, fast);
    wait_metric(&appliance, "depot_config_reloads_total", 2.0);
    poll(WAIT, || {
        let (_, text) = appliance.get("/metrics");
        (!text.contains("stream=\"tick.100ms\"")).then_some(())
    })
    .expect("the removed stream stayed in /metrics");
    assert_eq!(appliance.metric("depot_clock_tick_streams"), 1.0);
    assert_eq!(streams(&mut timers), ["tick.30ms"]);
    let before = count(&seen, "tick.30ms");
    receive_until(&sub, &mut seen, |s| count(s, "tick.30ms") >= before + 5);

    // A new stream below the running min_period (lowered in the same edit, which needs a
    // restart) is refused with its reason and counted; the running stream goes on.
    replace_config_with_clock(
        dir.path(),
        &format!("{clock}min_period = \"10us\"\n"),
        &format!("{fast}[[clock.ticks]]\nperiod = \"50us\"\n"),
    );
    wait_metric(&appliance, "depot_config_reloads_total", 3.0);
    wait_metric(&appliance, "depot_clock_tick_streams_refused_total", 1.0);
    let log = appliance.stderr();
    assert!(
        log.contains("tick stream of the reloaded configuration refused")
            && log.contains("below the running min_period 100us"),
        "{log}"
    );
    assert_eq!(appliance.metric("depot_config_restart_needed"), 1.0);
    assert_eq!(appliance.metric("depot_clock_tick_streams"), 1.0);
    assert_eq!(streams(&mut timers), ["tick.30ms"]);
    let before = count(&seen, "tick.30ms");
    receive_until(&sub, &mut seen, |s| count(s, "tick.30ms") >= before + 5);
    assert_eq!(count(&seen, "tick.50us"), 0);
    assert!(appliance.stop().success());
}

#[test]
fn a_raised_timer_payload_limit_applies_live() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        common::write_config_sections(dir.path(), CACHE_EPHEMERAL, "max_payload = 1024\n", "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let mut timers = TimerClient::connect(&ctx, &appliance.clock().timers, WAIT).unwrap();
    let add = || AddTimer {
        when: When::In(Duration::from_secs(3600)),
        every: None,
        count: None,
        target: Target::Topic("later".into()),
        payload: vec![7; 2048],
    };
    let refusal = timers.add(add()).unwrap_err().to_string();
    assert!(refusal.contains("exceeds the limit of 1024"), "{refusal}");
    replace_config_with_clock(dir.path(), "max_payload = 4096\n", "");
    wait_metric(&appliance, "depot_config_reloads_total", 1.0);
    // The timers thread takes the new limits at its next turn.
    poll(WAIT, || timers.add(add()).ok()).expect("the raised max_payload did not apply");
    assert_eq!(appliance.metric("depot_config_restart_needed"), 0.0);
    assert!(appliance.stop().success());
}
