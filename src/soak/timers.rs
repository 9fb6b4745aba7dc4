//! Clock timers in the crash soak: a load that adds one-shot timers with a topic target (each
//! confirmed by `["OK"][id][due]`), a receiver on the clock PUB recording their firings, and
//! the checks of what docs/PROTOCOL.md promises for them across kills:
//!
//! - a confirmed timer fires, never before its deadline, and the firing is for that deadline;
//! - one due while the appliance was down fires after the restart, `restart_grace` after the
//!   start and marked late;
//! - it fires again only after a kill that came right after its firing (the firing is handed to
//!   ZeroMQ first, its removal stored in the next group commit), never twice in one lifetime;
//! - "a firing still in a socket buffer when the process dies is gone": a timer that is no
//!   longer stored after the restart and was never received counts as lost in flight only if
//!   no firing that left after it (firings leave in deadline order, over one FIFO path from
//!   the timers thread through the ticker and the PUB) reached the receiver; otherwise it was
//!   lost while the appliance ran.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use depot_clock::client::TimerClient;
use depot_clock::protocol::{AddTimer, Firing, Reply, Request, Target, When};
use depot_clock::sys::wall_ns;

use super::{counter_of, pace, Rng, Violations, CHECK_TIMEOUT, TURN};

/// The topic timers fire on (the clock PUB).
pub(super) const TOPIC: &str = "soak.timer";
const PREFIX: &str = "soak-timer ";
/// Shortest and longest time from an ADD to its deadline: many timers are due across a kill.
const SHORTEST: Duration = Duration::from_millis(200);
const LONGEST: Duration = Duration::from_secs(3);
/// ADDs sent before waiting for a reply.
const WINDOW: usize = 64;
/// `[clock] restart_grace` in the soak's configuration: longer than the default 1 s, so that
/// the receiver is subscribed and the timer list taken before overdue timers fire.
pub(super) const RESTART_GRACE: Duration = Duration::from_secs(2);
/// `[clock] late_after` (the default).
const LATE_AFTER: Duration = Duration::from_millis(100);
/// A fired timer's removal is written in the same turn and durable at the next group commit;
/// a timer received this long before a kill must not fire again after the restart (generous:
/// a commit on the shared, loaded machine can take long).
pub(super) const REMOVAL_STORED: Duration = Duration::from_secs(2);
/// A firing overtakes a missing timer's only if it was fired this long after that timer's
/// `OK` arrived (so that the missing one was armed, in the timers' heap, before it).
const ARMED_MARGIN: Duration = Duration::from_millis(100);
/// How long the receiver goes on reading, once it has nothing to read, after it is told to stop
/// (the kill's last firings; generous, the shared machine can starve the soak's threads).
const DRAIN: Duration = Duration::from_secs(1);

/// A timer's payload: the load's counter, padded to 40 bytes.
pub(super) fn timer_body(counter: u64) -> Vec<u8> {
    let mut body = format!("{PREFIX}{counter:020} ").into_bytes();
    body.resize(40, b't');
    body
}

fn ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A confirmed timer.
struct Timer {
    id: u64,
    due_ns: u64,
    /// Wall time its `OK` arrived: it was armed before.
    confirmed_ns: u64,
    /// (lifetime, wall time received) per firing received.
    received: Vec<(u64, u64)>,
}

/// What was confirmed and received over all lifetimes, and the figures of the checks.
#[derive(Default)]
pub(super) struct TimerModel {
    /// Counters handed out so far (each timer's payload carries one).
    pub next: u64,
    /// Confirmed timers by counter.
    confirmed: BTreeMap<u64, Timer>,
    /// Confirmed timers neither received nor settled by a check.
    pending: BTreeSet<u64>,
    /// Wall time before each lifetime's start and after its end (the kill or clean stop).
    lifetimes: HashMap<u64, (u64, Option<u64>)>,
    /// (deadline, fired time) of every firing received, per lifetime.
    seen: HashMap<u64, Vec<(u64, u64)>>,
    /// Confirmed timers received at least once.
    pub fired: u64,
    /// Of those, first received after a restart although due while the appliance was down.
    pub overdue: u64,
    /// Firings of a timer received before, in an earlier lifetime.
    pub repeated: u64,
    /// Firings received in all (repeats and unconfirmed timers included).
    pub firings: u64,
    /// Firings of timers whose ADD was not confirmed (the kill took the reply).
    pub unconfirmed_fired: u64,
    /// Timers fired just before a kill and gone with the process (documented).
    pub lost_in_flight: u64,
    /// The most a lost timer's deadline came before its kill.
    pub lost_before_kill_ns: u64,
}

impl TimerModel {
    /// Confirmed timers.
    pub fn confirmed_count(&self) -> usize {
        self.confirmed.len()
    }

    /// Confirmed timers not yet received (due later, or waited for by a check).
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The latest deadline of a confirmed timer not yet received.
    pub fn latest_pending_due(&self) -> Option<u64> {
        self.pending
            .iter()
            .filter_map(|c| self.confirmed.get(c))
            .map(|t| t.due_ns)
            .max()
    }

    /// `lifetime` starts; `now_ns` is before the process is spawned.
    pub fn started(&mut self, lifetime: u64, now_ns: u64) {
        self.lifetimes.insert(lifetime, (now_ns, None));
    }

    /// `lifetime` ended; `now_ns` is after the process is gone.
    pub fn ended(&mut self, lifetime: u64, now_ns: u64) {
        if let Some(times) = self.lifetimes.get_mut(&lifetime) {
            times.1 = Some(now_ns);
        }
    }

    fn start_of(&self, lifetime: u64) -> u64 {
        self.lifetimes.get(&lifetime).map_or(0, |t| t.0)
    }

    /// `["OK"][id][due]` for the timer carrying `counter`.
    pub fn confirmed(&mut self, counter: u64, id: u64, due_ns: u64, confirmed_ns: u64) {
        let received = Vec::new();
        self.confirmed.insert(
            counter,
            Timer {
                id,
                due_ns,
                confirmed_ns,
                received,
            },
        );
        self.pending.insert(counter);
    }

    /// A firing received at `received_ns` (wall time) during `lifetime`.
    pub fn fired(
        &mut self,
        firing: &Firing,
        received_ns: u64,
        lifetime: u64,
        violations: &mut Violations,
    ) {
        self.firings += 1;
        let id = firing.id;
        let Some(counter) = counter_of(&firing.payload, PREFIX).filter(|c| *c < self.next) else {
            violations.add(format!("timers: timer {id} fired a payload never sent"));
            return;
        };
        self.seen
            .entry(lifetime)
            .or_default()
            .push((firing.scheduled_ns, firing.fired_ns));
        if firing.fired_ns < firing.scheduled_ns || received_ns < firing.scheduled_ns {
            violations.add(format!(
                "timers: timer {id} fired {:.3} s and was received {:.3} s before its deadline",
                secs(firing.scheduled_ns.saturating_sub(firing.fired_ns)),
                secs(firing.scheduled_ns.saturating_sub(received_ns))
            ));
        }
        let lateness = firing.fired_ns.saturating_sub(firing.scheduled_ns);
        if lateness >= ns(LATE_AFTER) && !firing.late {
            violations.add(format!(
                "timers: timer {id} fired {:.3} s after its deadline, not marked late",
                secs(lateness)
            ));
        }
        let start = self.start_of(lifetime);
        let previous_end = |lifetime: u64| self.lifetimes.get(&lifetime).and_then(|t| t.1);
        let Some(timer) = self.confirmed.get(&counter) else {
            self.unconfirmed_fired += 1;
            return;
        };
        if timer.id != id || timer.due_ns != firing.scheduled_ns {
            violations.add(format!(
                "timers: timer {counter} was confirmed as id {} due at {}, fired as id {id} for {}",
                timer.id, timer.due_ns, firing.scheduled_ns
            ));
        }
        if timer.due_ns < start {
            // Due while the appliance was down (or before this lifetime).
            if !firing.late {
                violations.add(format!(
                    "timers: timer {id}, due before the restart, fired not marked late"
                ));
            }
            if firing.fired_ns < start + ns(RESTART_GRACE) {
                violations.add(format!(
                    "timers: timer {id}, due before the restart, fired {:.3} s after the start \
                     (restart_grace is {RESTART_GRACE:?})",
                    secs(firing.fired_ns.saturating_sub(start))
                ));
            }
        }
        let before = timer.received.last().copied();
        match before {
            Some((before_lifetime, _)) if before_lifetime == lifetime => {
                violations.add(format!(
                    "timers: timer {id} fired twice in one lifetime of the appliance"
                ));
            }
            Some((before_lifetime, before_ns)) => {
                self.repeated += 1;
                // Again after a restart: its removal was not durable at the kill, so the
                // earlier firing came right before it.
                match previous_end(before_lifetime) {
                    Some(end) if before_ns + ns(REMOVAL_STORED) >= end => {}
                    end => violations.add(format!(
                        "timers: timer {id} fired again after a restart, its earlier firing \
                         came {} before the end of that lifetime (its removal should have been \
                         stored)",
                        end.map_or("long".into(), |end| format!(
                            "{:.3} s",
                            secs(end.saturating_sub(before_ns))
                        ))
                    )),
                }
            }
            None => {
                self.fired += 1;
                if timer.due_ns < start {
                    self.overdue += 1;
                }
            }
        }
        if let Some(timer) = self.confirmed.get_mut(&counter) {
            timer.received.push((lifetime, received_ns));
        }
        self.pending.remove(&counter);
    }

    /// Confirmed timers that a check in `lifetime` waits for: not received, due by `horizon_ns`,
    /// and either still stored after the restart (`stored`: the ids listed before any overdue
    /// timer fired) or due in this lifetime.
    pub fn waiting(&self, lifetime: u64, stored: Option<&HashSet<u64>>, horizon_ns: u64) -> usize {
        let start = self.start_of(lifetime);
        self.pending
            .iter()
            .filter_map(|c| self.confirmed.get(c))
            .filter(|t| t.due_ns <= horizon_ns)
            .filter(|t| t.due_ns >= start || stored.is_none_or(|s| s.contains(&t.id)))
            .count()
    }

    /// After a check's wait in `lifetime`: every confirmed timer due by `horizon_ns` and not
    /// received is lost, unless the previous lifetime fired it last, with nothing after it
    /// received (lost in flight at the kill).
    pub fn settle(
        &mut self,
        lifetime: u64,
        stored: Option<&HashSet<u64>>,
        horizon_ns: u64,
        violations: &mut Violations,
    ) {
        let start = self.start_of(lifetime);
        let kill = lifetime
            .checked_sub(1)
            .and_then(|l| self.lifetimes.get(&l))
            .and_then(|t| t.1);
        let before = lifetime.checked_sub(1).and_then(|l| self.seen.get(&l));
        // A firing received that left after this timer's: due later, fired once it was armed.
        let overtaken = |t: &Timer| {
            before.and_then(|seen| {
                seen.iter()
                    .find(|(due, fired)| {
                        *due > t.due_ns && *fired > t.confirmed_ns + ns(ARMED_MARGIN)
                    })
                    .copied()
            })
        };
        let missing: Vec<u64> = self
            .pending
            .iter()
            .copied()
            .filter(|c| {
                self.confirmed
                    .get(c)
                    .is_some_and(|t| t.due_ns <= horizon_ns)
            })
            .collect();
        for counter in missing {
            self.pending.remove(&counter);
            let Some(timer) = self.confirmed.get(&counter) else {
                continue;
            };
            let (id, due) = (timer.id, timer.due_ns);
            let listed = stored.map(|s| s.contains(&id));
            let later = overtaken(timer);
            match (listed, kill) {
                _ if due >= start => violations.add(format!(
                    "timers: timer {id}, due {:.3} s after the start, did not fire within the \
                     check ({CHECK_TIMEOUT:?})",
                    secs(due - start)
                )),
                (Some(true), _) => violations.add(format!(
                    "timers: timer {id} was still stored after the restart but did not fire \
                     within {CHECK_TIMEOUT:?}"
                )),
                (Some(false), Some(kill)) if due < kill && later.is_none() => {
                    // Fired (it is no longer stored) last before the kill, gone with the process.
                    self.lost_in_flight += 1;
                    self.lost_before_kill_ns = self.lost_before_kill_ns.max(kill - due);
                }
                (Some(false), Some(kill)) if due < kill => {
                    let (later_due, later_fired) = later.unwrap_or_default();
                    violations.add(format!(
                        "timers: timer {id} (due {:.3} s before the kill) never fired at the \
                         receiver, but a firing that left after it did (due {:.3} s later, \
                         fired {:.3} s before the kill)",
                        secs(kill - due),
                        secs(later_due.saturating_sub(due)),
                        secs(kill.saturating_sub(later_fired))
                    ))
                }
                (Some(false), _) => violations.add(format!(
                    "timers: timer {id} (due {}) is not stored after the restart and never fired \
                     at the receiver",
                    kill.map_or("?".into(), |kill| format!(
                        "{:+.3} s from the kill",
                        (due as f64 - kill as f64) / 1e9
                    ))
                )),
                (None, _) => violations.add(format!(
                    "timers: timer {id} never fired at the receiver (the timer list after the \
                     restart was not available to tell whether it was lost in flight)"
                )),
            }
        }
    }
}

/// The clock PUB's subscriber: records firings of the soak's topic as they come.
pub(super) struct Receiver {
    thread: JoinHandle<Vec<String>>,
    firings: Arc<Mutex<Vec<(Firing, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Subscribes to the timers' topic on `publisher` and returns once a tick has shown that
    /// the subscription is in place (a PUB drops what it sends before).
    pub fn start(ctx: &zmq::Context, publisher: &str) -> anyhow::Result<Receiver> {
        let socket = ctx.socket(zmq::SUB)?;
        socket.set_linger(0)?;
        socket.set_subscribe(TOPIC.as_bytes())?;
        socket.set_subscribe(b"tick.")?;
        socket.connect(publisher)?;
        let firings = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, subscribed) = mpsc::channel();
        let thread = {
            let (firings, stop) = (firings.clone(), stop.clone());
            std::thread::spawn(move || receive(socket, firings, stop, ready))
        };
        subscribed
            .recv_timeout(CHECK_TIMEOUT)
            .context("timers: no tick on the clock PUB")?;
        Ok(Receiver {
            thread,
            firings,
            stop,
        })
    }

    /// The firings received since the last call: (firing, wall time received).
    pub fn take(&self) -> Vec<(Firing, u64)> {
        self.firings
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// Stops after a short drain: the firings not yet taken, and the receiver's errors.
    pub fn finish(self) -> (Vec<(Firing, u64)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .thread
            .join()
            .unwrap_or_else(|_| vec!["timers: the receiver panicked".into()]);
        let firings = self
            .firings
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        (firings, errors)
    }
}

fn receive(
    socket: zmq::Socket,
    firings: Arc<Mutex<Vec<(Firing, u64)>>>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut subscribed = false;
    let mut quiet_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= DRAIN {
                return errors;
            }
        }
        match socket.poll(zmq::POLLIN, 20) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                errors.push(format!("timers: receiver: {e}"));
                return errors;
            }
        }
        let frames = match socket.recv_multipart(0) {
            Ok(frames) => frames,
            Err(e) => {
                errors.push(format!("timers: receiver: {e}"));
                return errors;
            }
        };
        let received_ns = wall_ns();
        if stop.load(Ordering::Relaxed) {
            quiet_since = Some(Instant::now());
        }
        let Some((topic, rest)) = frames.split_first() else {
            continue;
        };
        if topic.as_slice() != TOPIC.as_bytes() {
            if !subscribed && topic.starts_with(b"tick.") {
                subscribed = true;
                let _ = ready.send(());
                if let Err(e) = socket.set_unsubscribe(b"tick.") {
                    errors.push(format!("timers: receiver: {e}"));
                }
            }
            continue;
        }
        match Firing::decode(rest) {
            Ok(firing) => {
                if let Ok(mut all) = firings.lock() {
                    all.push((firing, received_ns));
                }
            }
            Err(e) => errors.push(format!("timers: a malformed firing: {e}")),
        }
    }
}

/// The ids of the timers still stored, listed before any overdue timer can fire (None if the
/// list failed or came too late to tell).
pub(super) fn list_stored(
    ctx: &zmq::Context,
    endpoint: &str,
    started_ns: u64,
    violations: &mut Violations,
) -> Option<HashSet<u64>> {
    let listed = TimerClient::connect(ctx, endpoint, CHECK_TIMEOUT).and_then(|mut c| c.list());
    let answered_ns = wall_ns();
    match listed {
        Ok(_) if answered_ns >= started_ns + ns(RESTART_GRACE) => {
            eprintln!(
                "soak: the timer list came {:.1} s after the start, after overdue timers may \
                 have fired: a timer not received is not told from one lost in flight",
                secs(answered_ns - started_ns)
            );
            None
        }
        Ok(timers) => Some(timers.into_iter().map(|t| t.id).collect()),
        Err(e) => {
            violations.add(format!("timers: LIST after the restart failed: {e}"));
            None
        }
    }
}

/// Waits until every confirmed timer due by now that can still fire has been received (at
/// most [`CHECK_TIMEOUT`]), then settles the rest.
pub(super) fn check(
    receiver: &Receiver,
    model: &mut TimerModel,
    violations: &mut Violations,
    lifetime: u64,
    stored: Option<&HashSet<u64>>,
) {
    let horizon = wall_ns();
    let deadline = Instant::now() + CHECK_TIMEOUT;
    loop {
        for (firing, received_ns) in receiver.take() {
            model.fired(&firing, received_ns, lifetime, violations);
        }
        if model.waiting(lifetime, stored, horizon) == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    model.settle(lifetime, stored, horizon, violations);
}

/// What one lifetime's timer load reports.
#[derive(Default)]
pub(super) struct TimerReport {
    /// (counter, id, due ns, wall time the OK arrived) per confirmed ADD.
    pub confirms: Vec<(u64, u64, u64, u64)>,
    pub next: u64,
    pub errors: Vec<String>,
}

/// Adds `rate` timers per second with a topic target, pipelined; replies come in request
/// order.
pub(super) fn load(
    ctx: zmq::Context,
    endpoint: String,
    rate: u64,
    mut next: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> TimerReport {
    let mut report = TimerReport::default();
    let socket = match ctx.socket(zmq::DEALER).and_then(|s| {
        s.set_linger(0)?;
        s.connect(&endpoint)?;
        Ok(s)
    }) {
        Ok(socket) => socket,
        Err(e) => {
            report.errors.push(format!("timers: connect: {e}"));
            report.next = next;
            return report;
        }
    };
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pending: VecDeque<u64> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if pending.len() < WINDOW && sent < due {
            let add = AddTimer {
                when: When::In(rng.between(SHORTEST, LONGEST)),
                every: None,
                count: None,
                target: Target::Topic(TOPIC.into()),
                payload: timer_body(next),
            };
            match socket.send_multipart(Request::Add(add).encode(), zmq::DONTWAIT) {
                Ok(()) => {
                    pending.push_back(next);
                    next += 1;
                    sent += 1;
                }
                // Not connected yet: not sent, tried again.
                Err(zmq::Error::EAGAIN) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => report.errors.push(format!("timers: send: {e}")),
            }
            continue;
        }
        if pending.is_empty() {
            pace(started, sent, rate);
            continue;
        }
        match socket.poll(zmq::POLLIN, TURN.as_millis() as i64) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                report.errors.push(format!("timers: {e}"));
                continue;
            }
        }
        let reply = match socket.recv_multipart(0) {
            Ok(frames) => Reply::decode(&frames),
            Err(e) => {
                report.errors.push(format!("timers: {e}"));
                continue;
            }
        };
        let Some(counter) = pending.pop_front() else {
            report.errors.push("timers: a reply to no request".into());
            continue;
        };
        match reply {
            Ok(Reply::Added { id, due_ns }) => {
                report.confirms.push((counter, id, due_ns, wall_ns()))
            }
            Ok(Reply::Error(reason)) => {
                report.errors.push(format!("timers: ADD refused: {reason}"))
            }
            Ok(other) => report
                .errors
                .push(format!("timers: unexpected reply to ADD: {other:?}")),
            Err(e) => report.errors.push(format!("timers: {e}")),
        }
    }
    report.next = next;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn firing(id: u64, counter: u64, scheduled: u64, fired: u64, late: bool) -> Firing {
        Firing {
            id,
            scheduled_ns: scheduled,
            fired_ns: fired,
            late,
            payload: timer_body(counter),
        }
    }

    /// Lifetime 1 from 100 s to 110 s (killed), lifetime 2 from 111 s.
    fn model() -> TimerModel {
        let mut model = TimerModel {
            next: 10,
            ..TimerModel::default()
        };
        model.started(1, 100 * S);
        model.ended(1, 110 * S);
        model.started(2, 111 * S);
        model
    }

    #[test]
    fn a_confirmed_timer_that_never_fires_is_a_violation() {
        let mut model = model();
        let mut violations = Violations::default();
        model.confirmed(0, 7, 105 * S, 0);
        model.confirmed(1, 8, 106 * S, 0);
        model.fired(
            &firing(8, 1, 106 * S, 106 * S + 1, false),
            106 * S + 2,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 0);
        // Neither received nor stored, due long before the kill: lost.
        let stored = HashSet::new();
        assert_eq!(model.waiting(2, Some(&stored), 120 * S), 0);
        model.settle(2, Some(&stored), 120 * S, &mut violations);
        assert_eq!(violations.count, 1);
        assert_eq!(model.pending_count(), 0);
        // Still stored after the restart and not fired within the check: lost too.
        model.confirmed(2, 9, 107 * S, 0);
        let stored: HashSet<u64> = [9].into();
        assert_eq!(model.waiting(2, Some(&stored), 120 * S), 1);
        model.settle(2, Some(&stored), 120 * S, &mut violations);
        assert_eq!(violations.count, 2);
        // Without the list, a missing timer is a violation as well.
        model.confirmed(3, 10, 109 * S + S / 2, 0);
        model.settle(2, None, 120 * S, &mut violations);
        assert_eq!(violations.count, 3);
        assert_eq!(model.lost_in_flight, 0);
    }

    #[test]
    fn only_the_last_firings_before_a_kill_may_be_lost_in_flight() {
        let mut model = model();
        let mut violations = Violations::default();
        // Fired (no longer stored) and never received, nothing after it received: in flight.
        model.confirmed(0, 7, 109 * S, 0);
        model.confirmed(1, 8, 108 * S, 0);
        model.fired(
            &firing(8, 1, 108 * S, 108 * S, false),
            108 * S + 1,
            1,
            &mut violations,
        );
        // Missing although a firing due after it, fired after it was armed, was received.
        model.confirmed(2, 9, 107 * S, 0);
        // Armed (its OK arrived) only after that later firing left: not overtaken.
        model.confirmed(3, 10, 107 * S + 1, 108 * S);
        model.settle(2, Some(&HashSet::new()), 120 * S, &mut violations);
        assert_eq!(violations.count, 1, "timer 9 was overtaken");
        assert_eq!(model.lost_in_flight, 2);
        assert_eq!(model.lost_before_kill_ns, 3 * S - 1);
    }

    #[test]
    fn an_early_firing_and_a_wrong_deadline_or_id_are_violations() {
        let mut model = model();
        let mut violations = Violations::default();
        model.confirmed(0, 7, 105 * S, 0);
        model.fired(
            &firing(7, 0, 105 * S, 105 * S - 1, false),
            105 * S + 1,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 1, "fired early");
        model.confirmed(1, 8, 105 * S, 0);
        model.fired(
            &firing(8, 1, 105 * S, 105 * S, false),
            105 * S - 1,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 2, "received early");
        model.confirmed(2, 9, 105 * S, 0);
        model.fired(
            &firing(9, 2, 104 * S, 105 * S, true),
            105 * S,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 3, "fired for another deadline");
        model.confirmed(3, 10, 105 * S, 0);
        model.fired(
            &firing(11, 3, 105 * S, 105 * S, false),
            105 * S,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 4, "another id");
        model.fired(
            &firing(12, 99, 105 * S, 105 * S, false),
            105 * S,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 5, "a payload never sent");
        model.confirmed(4, 13, 105 * S, 0);
        model.fired(
            &firing(13, 4, 105 * S, 106 * S, false),
            106 * S,
            1,
            &mut violations,
        );
        assert_eq!(violations.count, 6, "a second late, not marked");
    }

    #[test]
    fn repeats_are_allowed_only_after_a_kill_right_after_the_firing() {
        let mut model = model();
        let mut violations = Violations::default();
        let after_grace = 111 * S + ns(RESTART_GRACE) + 1;
        model.confirmed(0, 7, 110 * S - S / 10, 0);
        model.fired(
            &firing(7, 0, 110 * S - S / 10, 110 * S - S / 10, false),
            110 * S - 1,
            1,
            &mut violations,
        );
        model.fired(
            &firing(7, 0, 110 * S - S / 10, after_grace, true),
            after_grace,
            2,
            &mut violations,
        );
        assert_eq!(violations.count, 0, "again after the kill");
        assert_eq!((model.fired, model.repeated), (1, 1));
        model.fired(
            &firing(7, 0, 110 * S - S / 10, after_grace, true),
            after_grace,
            2,
            &mut violations,
        );
        assert_eq!(violations.count, 1, "twice in one lifetime");
        model.confirmed(1, 8, 105 * S, 0);
        model.fired(
            &firing(8, 1, 105 * S, 105 * S, false),
            105 * S,
            1,
            &mut violations,
        );
        model.fired(
            &firing(8, 1, 105 * S, after_grace, true),
            after_grace,
            2,
            &mut violations,
        );
        assert_eq!(
            violations.count, 2,
            "again, 5 s after its firing was removed"
        );
    }

    #[test]
    fn a_timer_due_while_the_appliance_was_down_fires_late_after_the_grace() {
        let mut model = model();
        let mut violations = Violations::default();
        let after_grace = 111 * S + ns(RESTART_GRACE);
        model.confirmed(0, 7, 110 * S + S / 2, 0);
        model.fired(
            &firing(7, 0, 110 * S + S / 2, after_grace, true),
            after_grace,
            2,
            &mut violations,
        );
        assert_eq!(violations.count, 0);
        assert_eq!(model.overdue, 1);
        model.confirmed(1, 8, 110 * S + S / 2, 0);
        model.fired(
            &firing(8, 1, 110 * S + S / 2, 111 * S + S / 2, true),
            111 * S + S / 2,
            2,
            &mut violations,
        );
        assert_eq!(violations.count, 1, "before the grace");
        model.confirmed(2, 9, 110 * S + S / 2, 0);
        model.fired(
            &firing(9, 2, 110 * S + S / 2, after_grace, false),
            after_grace,
            2,
            &mut violations,
        );
        assert_eq!(violations.count, 3, "not marked late (and over late_after)");
        // One stored across the kill is waited for; one due in the new lifetime too.
        model.confirmed(3, 10, 110 * S + S / 2, 0);
        model.confirmed(4, 11, 112 * S, 0);
        let stored: HashSet<u64> = [10].into();
        assert_eq!(model.waiting(2, Some(&stored), 115 * S), 2);
        assert_eq!(model.waiting(2, Some(&stored), 111 * S), 1);
    }
}
