//! The clock through a real `depot serve`: tick streams with contiguous, time-derived
//! sequences (also across a restart), persistent timers that survive SIGKILL, cancel and
//! periodic counts, the CLI, and bad input answered with clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{depot, poll, Appliance, CACHE_EPHEMERAL};
use depot_clock::client::{ClientError, TimerClient};
use depot_clock::protocol::{AddTimer, Firing, Target, Tick, When};

const MS: u64 = 1_000_000;

/// A config with every endpoint ephemeral and `clock` appended to the `[clock]` section.
fn write_clock_config(dir: &Path, clock: &str) -> PathBuf {
    common::write_config_sections(dir, CACHE_EPHEMERAL, clock, "")
}

fn now_ns() -> u64 {
    depot_clock::sys::wall_ns()
}

fn subscribe(ctx: &zmq::Context, endpoint: &str, topic: &str) -> zmq::Socket {
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(0).unwrap();
    sub.set_subscribe(topic.as_bytes()).unwrap();
    sub.connect(endpoint).unwrap();
    sub
}

fn recv(socket: &zmq::Socket, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    if socket
        .poll(zmq::POLLIN, timeout.as_millis() as i64)
        .unwrap()
        == 0
    {
        return None;
    }
    Some(socket.recv_multipart(0).unwrap())
}

/// The next tick whose topic is exactly `topic` (`tick.1m` is a prefix of `tick.1ms`).
fn next_tick(sub: &zmq::Socket, topic: &str) -> Tick {
    loop {
        let frames = recv(sub, Duration::from_secs(10)).expect("no tick within 10 s");
        let tick = Tick::decode(&frames).unwrap();
        if tick.topic == topic {
            return tick;
        }
    }
}

/// A firing published on `topic`.
fn next_published(sub: &zmq::Socket, timeout: Duration) -> Option<Firing> {
    let frames = recv(sub, timeout)?;
    Some(Firing::decode(&frames[1..]).unwrap())
}

fn timers(ctx: &zmq::Context, appliance: &Appliance) -> TimerClient {
    TimerClient::connect(ctx, &appliance.clock().timers, Duration::from_secs(10)).unwrap()
}

fn add(
    when: When,
    every: Option<Duration>,
    count: Option<u64>,
    target: Target,
    payload: &str,
) -> AddTimer {
    AddTimer {
        when,
        every,
        count,
        target,
        payload: payload.as_bytes().to_vec(),
    }
}

#[test]
fn one_millisecond_ticks_for_ten_seconds_have_contiguous_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "[[clock.ticks]]\nperiod = \"1ms\"\n");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let sub = subscribe(&ctx, &appliance.clock().publisher, "tick.1ms");
    let first = next_tick(&sub, "tick.1ms");
    let started = Instant::now();
    let mut last = first.clone();
    let mut received = 1u64;
    while started.elapsed() < Duration::from_secs(10) {
        let tick = next_tick(&sub, "tick.1ms");
        assert_eq!(tick.seq, last.seq + 1, "gap or repeat after #{}", last.seq);
        assert_eq!(tick.scheduled_ns, tick.seq * MS, "scheduled = seq x period");
        assert!(tick.sent_ns >= tick.scheduled_ns, "sent before its time");
        last = tick;
        received += 1;
    }
    assert!(received >= 9_900, "only {received} ticks in 10 s");
    // The sequence is the time: within a second of the wall clock.
    assert!(last.scheduled_ns.abs_diff(now_ns()) < 1_000_000_000);
    let sent = appliance.metric("depot_clock_ticks_sent_total{stream=\"tick.1ms\"}");
    assert!(sent >= received as f64, "{sent} sent, {received} received");
    let histogram = appliance
        .metric("depot_clock_tick_lateness_seconds_bucket{stream=\"tick.1ms\",le=\"+Inf\"}");
    assert!(histogram >= received as f64);
    assert_eq!(
        appliance.metric("depot_clock_ticks_skipped_total{stream=\"tick.1ms\"}"),
        0.0
    );
    assert!(appliance.stop().success());
}

#[test]
fn default_streams_continue_their_sequence_by_time_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let ctx = zmq::Context::new();
    let sub = subscribe(&ctx, &appliance.clock().publisher, "tick.");
    // Both default streams publish.
    let second = next_tick(&sub, "tick.1s");
    let before = next_tick(&sub, "tick.10ms");
    appliance.kill();
    let appliance = Appliance::start(&data, &config);
    let sub = subscribe(&ctx, &appliance.clock().publisher, "tick.10ms");
    let after = next_tick(&sub, "tick.10ms");
    assert!(after.seq > before.seq, "{} then {}", before.seq, after.seq);
    assert_eq!(after.scheduled_ns, after.seq * 10 * MS);
    assert!(
        after.scheduled_ns.abs_diff(now_ns()) < 1_000_000_000,
        "sequence follows the clock, not a counter from zero"
    );
    // The gap in sequence is the time the appliance was away.
    let away = (after.scheduled_ns - before.scheduled_ns) / (10 * MS);
    assert_eq!(after.seq - before.seq, away);
    assert_eq!(
        second.scheduled_ns % 1_000_000_000,
        0,
        "1 s ticks on second boundaries"
    );
    assert!(appliance.stop().success());
}

#[test]
fn persistent_timer_fires_late_after_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "restart_grace = \"3s\"\n");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let ctx = zmq::Context::new();
    let mut client = timers(&ctx, &appliance);
    let (id, due) = client
        .add(add(
            When::In(Duration::from_millis(1_500)),
            None,
            None,
            Target::Topic("jobs.restart".into()),
            "survive",
        ))
        .unwrap();
    // OK means durable: kill at once.
    appliance.kill();
    drop(client);
    // Let the deadline pass while the appliance is down.
    poll(Duration::from_secs(10), || {
        (now_ns() > due + 500 * MS).then_some(())
    });
    let appliance = Appliance::start(&data, &config);
    let sub = subscribe(&ctx, &appliance.clock().publisher, "jobs.restart");
    let firing = next_published(&sub, Duration::from_secs(15))
        .expect("timer did not fire after the restart");
    assert_eq!(firing.id, id);
    assert_eq!(firing.scheduled_ns, due);
    assert!(firing.late, "an overdue timer fires marked late");
    assert!(firing.fired_ns > due + 500 * MS);
    assert_eq!(firing.payload, b"survive");
    assert_eq!(appliance.metric("depot_clock_timers_late_total"), 1.0);
    assert_eq!(appliance.metric("depot_clock_timers_pending"), 0.0);
    // Fired and done: gone from the list, also after another restart.
    let mut client = timers(&ctx, &appliance);
    assert!(client.list().unwrap().is_empty());
    assert!(appliance.stop().success());
    let appliance = Appliance::start(&data, &config);
    let mut client = timers(&ctx, &appliance);
    assert!(client.list().unwrap().is_empty());
    assert!(appliance.stop().success());
}

#[test]
fn a_stored_timer_due_within_the_restart_grace_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "restart_grace = \"5s\"\n");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let ctx = zmq::Context::new();
    let mut client = timers(&ctx, &appliance);
    let (id, due) = client
        .add(add(
            When::In(Duration::from_millis(2_500)),
            None,
            None,
            Target::Topic("jobs.soon".into()),
            "soon",
        ))
        .unwrap();
    appliance.kill();
    drop(client);
    let restarted = now_ns();
    let appliance = Appliance::start(&data, &config);
    assert!(now_ns() < due, "the restart took too long for this test");
    // A subscriber back within the grace but after the deadline (fired on time, it was lost).
    poll(Duration::from_secs(10), || {
        (now_ns() > due + 500 * MS).then_some(())
    });
    let sub = subscribe(&ctx, &appliance.clock().publisher, "jobs.soon");
    let firing = next_published(&sub, Duration::from_secs(15))
        .expect("the timer fired before the subscriber could reconnect");
    assert_eq!((firing.id, firing.scheduled_ns), (id, due));
    assert!(firing.fired_ns >= restarted + 5_000 * MS);
    assert!(firing.late, "fired well after its deadline");
    assert!(appliance.stop().success());
}

#[test]
fn cancel_prevents_firing_and_a_periodic_timer_fires_its_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let mut client = timers(&ctx, &appliance);
    let reply = |when, every, count, payload| add(when, every, count, Target::Reply, payload);
    let (cancelled, _) = client
        .add(reply(
            When::In(Duration::from_millis(400)),
            None,
            None,
            "never",
        ))
        .unwrap();
    let (periodic, first_due) = client
        .add(reply(
            When::In(Duration::from_millis(200)),
            Some(Duration::from_millis(400)),
            Some(5),
            "tick-tock",
        ))
        .unwrap();
    let (endless, _) = client
        .add(reply(
            When::In(Duration::from_millis(100)),
            Some(Duration::from_millis(500)),
            None,
            "endless",
        ))
        .unwrap();
    client.cancel(cancelled).unwrap();
    let listed: Vec<u64> = client.list().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(listed, [periodic, endless]);
    let mut periodic_deadlines = vec![];
    let mut endless_fired = 0;
    let mut marker = None;
    loop {
        let firing = client
            .next_firing(Duration::from_secs(10))
            .unwrap()
            .expect("firings stopped");
        assert_ne!(firing.id, cancelled, "a cancelled timer fired");
        if firing.id == periodic {
            assert_eq!(firing.payload, b"tick-tock");
            periodic_deadlines.push(firing.scheduled_ns);
        } else if firing.id == endless {
            endless_fired += 1;
            if endless_fired == 3 {
                client.cancel(endless).unwrap();
                // Fires after everything else due: when it comes, nothing more may.
                let (id, _) = client
                    .add(reply(
                        When::In(Duration::from_millis(1_200)),
                        None,
                        None,
                        "marker",
                    ))
                    .unwrap();
                marker = Some(id);
            }
        } else if Some(firing.id) == marker {
            break;
        }
    }
    assert_eq!(endless_fired, 3, "the cancelled periodic timer stopped");
    let expected: Vec<u64> = (0..5).map(|i| first_due + i * 400 * MS).collect();
    assert_eq!(
        periodic_deadlines, expected,
        "five firings on the absolute schedule"
    );
    assert!(client.list().unwrap().is_empty());
    let err = client.cancel(periodic).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if r == &format!("unknown timer id {periodic}")),
        "{err}"
    );
    assert_eq!(appliance.metric("depot_clock_timers_cancelled_total"), 2.0);
    assert_eq!(appliance.metric("depot_clock_timers_fired_total"), 9.0);
    assert!(appliance.stop().success());
}

fn cli(config: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    depot()
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

#[test]
fn cli_adds_lists_cancels_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let ctx = zmq::Context::new();
    let sub = subscribe(&ctx, &appliance.clock().publisher, "cli.jobs");
    // The subscription is in place once a first firing comes through.
    let warm = poll(Duration::from_secs(10), || {
        let out = cli(
            &config,
            &data,
            &["timer", "add", "--in", "0s", "--topic", "cli.jobs", "warm"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        next_published(&sub, Duration::from_millis(300))
    });
    assert_eq!(warm.unwrap().payload, b"warm");
    while next_published(&sub, Duration::from_millis(300)).is_some() {}

    let out = cli(
        &config,
        &data,
        &[
            "timer", "add", "--in", "200ms", "--every", "100ms", "--count", "3", "--topic",
            "cli.jobs", "hello",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for _ in 0..3 {
        let firing = next_published(&sub, Duration::from_secs(10)).expect("periodic firing");
        assert_eq!((firing.id, &firing.payload[..]), (id, &b"hello"[..]));
    }

    let later = cli(
        &config,
        &data,
        &["timer", "add", "--in", "1h", "--topic", "cli.jobs", "later"],
    );
    let later_id = String::from_utf8(later.stdout).unwrap().trim().to_string();
    let ls = cli(&config, &data, &["timer", "ls", "--json"]);
    let listed = String::from_utf8(ls.stdout).unwrap();
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert_eq!(lines[0]["id"].to_string(), later_id);
    assert_eq!(lines[0]["target"], "topic:cli.jobs");
    let cancel = cli(&config, &data, &["timer", "cancel", &later_id]);
    assert!(cancel.status.success());
    let again = cli(&config, &data, &["timer", "cancel", &later_id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("unknown timer id"));
    let ls = cli(&config, &data, &["timer", "ls"]);
    assert!(
        ls.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );

    let watch = cli(
        &config,
        &data,
        &[
            "clock", "watch", "--period", "10ms", "--count", "30", "--stats", "--json",
        ],
    );
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    let text = String::from_utf8(watch.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(summary["topic"], "tick.10ms");
    assert_eq!(summary["ticks"], 30);
    assert_eq!(summary["missing"], 0);
    assert!(summary["received_late_us"]["p50"].as_f64().unwrap() >= 0.0);
    let watch = cli(
        &config,
        &data,
        &["clock", "watch", "--period", "1s", "--count", "1"],
    );
    assert!(String::from_utf8(watch.stdout)
        .unwrap()
        .starts_with("tick.1s #"));
    let missing = cli(
        &config,
        &data,
        &["clock", "watch", "--period", "1ms", "--count", "1"],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("no tick.1ms") && err.contains("tick.1s, tick.10ms"),
        "{err}"
    );
    let bad = cli(
        &config,
        &data,
        &["timer", "add", "--in", "later", "--topic", "x", "p"],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid duration"));
    assert!(appliance.stop().success());
}

#[test]
fn bad_timer_requests_get_clear_errors_and_the_service_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "max_payload = 1024\n");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&appliance.clock().timers).unwrap();
    let ask = |frames: &[&[u8]]| -> Vec<Vec<u8>> {
        dealer.send_multipart(frames, 0).unwrap();
        recv(&dealer, Duration::from_secs(10)).expect("no reply")
    };
    // An empty first frame is a REQ client's delimiter, echoed in the reply.
    let reply = ask(&[b""]);
    assert_eq!(reply, [&b""[..], b"ERR", b"empty request"]);
    let cases: [(&[&[u8]], &str); 13] = [
        (&[b"FROB"], "unknown command \"FROB\""),
        (&[b"ADD", b"in=1s"], "ADD takes 2"),
        (&[b"ADD", b"in=soon", b"p"], "invalid duration"),
        (&[b"ADD", b"at=tomorrow-ish", b"p"], "invalid time"),
        (
            &[b"ADD", b"in=1s\nevery=10us", b"p"],
            "below the minimum period of 100us",
        ),
        (
            &[b"ADD", b"in=1s", &[0; 2048]],
            "payload of 2048 bytes exceeds the limit of 1024",
        ),
        (
            &[b"ADD", b"in=1s\nqueue=jobs", b"p"],
            "queue service, which does not exist yet",
        ),
        (
            &[b"ADD", b"in=1s\ntopic=tick.1s", b"p"],
            "belong to tick streams",
        ),
        (
            &[b"ADD", b"in=1s\nflavour=mint", b"p"],
            "unknown attribute \"flavour\"",
        ),
        (&[b"ADD", &[0xff, 0x00], b"p"], "not UTF-8"),
        (&[b"CANCEL", &77u64.to_be_bytes()], "unknown timer id 77"),
        (&[b"CANCEL", b"77"], "8 bytes"),
        (&[b"LIST", b"a", b"b"], "LIST takes 0 or 1"),
    ];
    for (request, expected) in cases {
        let reply = ask(request);
        assert_eq!(reply[0], b"ERR", "{request:?}: {reply:?}");
        let reason = String::from_utf8_lossy(&reply[1]);
        assert!(
            reason.contains(expected),
            "{request:?}: {reason:?} lacks {expected:?}"
        );
    }
    // Still serving: a valid ADD, STREAMS, and a REQ client (envelope with delimiter).
    let reply = ask(&[b"ADD", b"in=1h\ntopic=later", b"p"]);
    assert_eq!(reply[0], b"OK");
    assert_eq!(reply.len(), 3);
    let reply = ask(&[b"STREAMS"]);
    assert_eq!(
        String::from_utf8_lossy(&reply[1]),
        "tick.1s 1000000000 normal\ntick.10ms 10000000 normal\n"
    );
    let req = ctx.socket(zmq::REQ).unwrap();
    req.connect(&appliance.clock().timers).unwrap();
    req.send("LIST", 0).unwrap();
    let reply = recv(&req, Duration::from_secs(10)).unwrap();
    assert_eq!(reply[0], b"TIMERS");
    assert_eq!(reply.len(), 3, "one timer listed");
    assert_eq!(appliance.metric("depot_clock_rejected_total"), 14.0);
    assert!(appliance.stop().success());
}

#[test]
fn a_tick_period_below_the_minimum_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "[[clock.ticks]]\nperiod = \"50us\"\n");
    let out = depot()
        .args(["serve", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("period 50us is below min_period 100us"),
        "{err}"
    );
}

#[test]
fn high_precision_ticks_and_topic_firings_also_reach_an_ipc_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let ipc = format!("ipc://{}/clock.ipc", dir.path().display());
    let config = write_clock_config(
        dir.path(),
        &format!("publisher_extra = [\"{ipc}\"]\n[[clock.ticks]]\nperiod = \"5ms\"\nprecision = \"high\"\n"),
    );
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let endpoints = appliance.clock();
    assert_eq!(endpoints.publisher_extra, std::slice::from_ref(&ipc));
    let ctx = zmq::Context::new();
    // A high-precision stream (spin, SCHED_FIFO where permitted, its own I/O thread).
    let sub = subscribe(&ctx, &ipc, "tick.5ms");
    let first = next_tick(&sub, "tick.5ms");
    for n in 1..200 {
        let tick = next_tick(&sub, "tick.5ms");
        assert_eq!(tick.seq, first.seq + n);
        assert_eq!(tick.scheduled_ns, tick.seq * 5 * MS);
    }
    let sub = subscribe(&ctx, &ipc, "ipc.jobs");
    let mut client = timers(&ctx, &appliance);
    let streams = client.streams().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        (streams[0].topic.as_str(), streams[0].precision.as_str()),
        ("tick.5ms", "high")
    );
    let firing = poll(Duration::from_secs(10), || {
        client
            .add(add(
                When::In(Duration::ZERO),
                None,
                None,
                Target::Topic("ipc.jobs".into()),
                "x",
            ))
            .unwrap();
        next_published(&sub, Duration::from_millis(300))
    });
    assert_eq!(firing.expect("no firing over ipc").payload, b"x");
    assert!(appliance.stop().success());
}

#[test]
fn a_reply_timer_reaches_its_requester_reconnecting_with_the_same_identity_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "restart_grace = \"3s\"\n");
    let data = dir.path().join("data");
    let appliance = Appliance::start(&data, &config);
    let ctx = zmq::Context::new();
    let connect = |appliance: &Appliance| {
        TimerClient::connect_as(
            &ctx,
            &appliance.clock().timers,
            b"worker-1",
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let mut client = connect(&appliance);
    let (id, due) = client
        .add(add(
            When::In(Duration::from_millis(500)),
            None,
            None,
            Target::Reply,
            "for me",
        ))
        .unwrap();
    appliance.kill();
    drop(client);
    poll(Duration::from_secs(10), || {
        (now_ns() > due + 200 * MS).then_some(())
    });
    let appliance = Appliance::start(&data, &config);
    let mut client = connect(&appliance);
    let firing = client
        .next_firing(Duration::from_secs(15))
        .unwrap()
        .expect("no FIRED after the restart");
    assert_eq!(
        (firing.id, firing.scheduled_ns, firing.late),
        (id, due, true)
    );
    assert_eq!(firing.payload, b"for me");
    assert_eq!(
        appliance.metric("depot_clock_timers_undelivered_total"),
        0.0
    );
    assert!(appliance.stop().success());
}

#[test]
fn a_reply_firing_for_a_requester_that_left_is_counted_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_clock_config(dir.path(), "");
    let appliance = Appliance::start(&dir.path().join("data"), &config);
    let ctx = zmq::Context::new();
    let mut gone = timers(&ctx, &appliance);
    gone.add(add(
        When::In(Duration::from_millis(200)),
        None,
        None,
        Target::Reply,
        "lost",
    ))
    .unwrap();
    drop(gone);
    let counted = poll(Duration::from_secs(10), || {
        (appliance.metric("depot_clock_timers_undelivered_total") == 1.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "the undeliverable firing was not counted"
    );
    let mut client = timers(&ctx, &appliance);
    assert!(
        client.list().unwrap().is_empty(),
        "fired and done all the same"
    );
    let (id, _) = client
        .add(add(
            When::In(Duration::ZERO),
            None,
            None,
            Target::Reply,
            "here",
        ))
        .unwrap();
    let firing = client
        .next_firing(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(firing.id, id);
    assert!(appliance.stop().success());
}
