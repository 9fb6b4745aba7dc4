//! What survives what: the durability vocabulary, tickets and the durable watermark.

use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::error::{Result, StoreError};
use crate::space::SpaceGuard;

/// How far a write has come, from weakest to strongest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Accepted and visible to readers of this process; lost if the process dies.
    Buffered,
    /// Flushed to the operating system: survives a crash or `kill -9` of Depot, not a power loss.
    ProcessCrash,
    /// Flushed and `fdatasync`ed: survives a power loss of the machine.
    PowerLoss,
}

/// A write's place in the commit order; durable once the watermark reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// Which opened store issued it: a ticket means nothing to another instance.
    pub(crate) store: u64,
    pub(crate) n: u64,
}

impl Ticket {
    /// The ticket's position in the commit order.
    pub fn get(self) -> u64 {
        self.n
    }
}

/// The committer's published state: every ticket up to `durable` is durable.
#[derive(Debug, Clone, Default)]
pub struct Watermark {
    /// Highest ticket covered by a completed commit.
    pub durable: u64,
    /// Set once a flush failed; no ticket after `durable` will ever become durable.
    pub poisoned: Option<Arc<str>>,
    /// Set after the final commit of a closing store; later tickets never become durable.
    pub closed: bool,
}

/// Shared between writers, waiters and the committer thread.
pub(crate) struct CommitState {
    /// Last ticket handed out.
    issued: AtomicU64,
    /// This instance's identity, stamped on its tickets.
    instance: u64,
    /// True while the committer sleeps waiting for work; writers wake it only then.
    committer_idle: AtomicBool,
    /// Fast-path copy of `watermark.poisoned.is_some()`, checked on every write.
    poisoned: AtomicBool,
    shutdown: AtomicBool,
    watermark: Mutex<Watermark>,
    /// Signals waiters when the watermark moves.
    durable_moved: Condvar,
    /// Signals the idle committer that work arrived.
    work_arrived: Condvar,
    /// The same watermark for async waiters.
    watch: tokio::sync::watch::Sender<Watermark>,
    /// Write ends of [`DurableNotifier`]s: a byte each time the watermark moves, for threads
    /// that wait in a poll loop rather than on a condition variable.
    notifiers: Mutex<Vec<UnixStream>>,
    /// Writers hold it shared while they write; a backup holds it exclusively.
    gate: RwLock<()>,
    /// Refuses growing writes while the disk is below the free-space reserve.
    space: SpaceGuard,
}

/// A file descriptor that becomes readable when the durable watermark moves, for a service's
/// poll loop (e.g. `zmq::poll` with a raw fd item). Read it empty with [`DurableNotifier::drain`].
pub struct DurableNotifier {
    pub(crate) reader: UnixStream,
}

impl DurableNotifier {
    /// The descriptor to poll for reading.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Consumes the pending wake-ups.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while matches!((&self.reader).read(&mut buf), Ok(n) if n > 0) {}
    }
}

fn next_instance() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl CommitState {
    pub(crate) fn new(space: SpaceGuard) -> Self {
        CommitState {
            issued: AtomicU64::new(0),
            instance: next_instance(),
            committer_idle: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            watermark: Mutex::new(Watermark::default()),
            durable_moved: Condvar::new(),
            work_arrived: Condvar::new(),
            watch: tokio::sync::watch::channel(Watermark::default()).0,
            notifiers: Mutex::new(Vec::new()),
            gate: RwLock::new(()),
            space,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Watermark> {
        // A panic while holding this lock cannot leave the watermark half-written
        // (it is assigned whole), so a poisoned mutex is still consistent.
        self.watermark.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a write: refuses once poisoned or closed, or when it `grows` the store while the
    /// disk is below the free-space reserve (removals go ahead: they are how space comes back),
    /// and otherwise returns a guard to hold until the write is in place, so a backup (which
    /// takes the gate exclusively) sees either all of a write or none of it.
    pub(crate) fn begin_write(&self, grows: bool) -> Result<RwLockReadGuard<'_, ()>> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.check_writable()?;
        if grows {
            self.space.check()?;
        }
        Ok(gate)
    }

    /// Whether a growing write would be accepted now, without writing.
    pub(crate) fn check_growth(&self) -> Result<()> {
        self.check_writable()?;
        self.space.check()
    }

    /// True while growing writes are refused for lack of disk space.
    pub(crate) fn disk_full(&self) -> bool {
        self.space.is_full()
    }

    #[cfg(test)]
    pub(crate) fn space(&self) -> &SpaceGuard {
        &self.space
    }

    /// Holds every write off until the guard is dropped.
    pub(crate) fn hold_writes(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses writes once poisoned or closed.
    fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let reason = self
                .lock()
                .poisoned
                .clone()
                .unwrap_or_else(|| "unknown".into());
            return Err(StoreError::Poisoned(reason.to_string()));
        }
        if self.shutdown.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Hands out the next ticket; call after the write is in place (visible to the committer).
    pub(crate) fn issue(&self) -> Ticket {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        if self.committer_idle.load(Ordering::SeqCst) {
            let _guard = self.lock();
            self.work_arrived.notify_one();
        }
        Ticket {
            store: self.instance,
            n: ticket,
        }
    }

    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    pub(crate) fn watermark(&self) -> Watermark {
        self.lock().clone()
    }

    /// Blocks the committer until a ticket is pending or shutdown is asked. Returns false on shutdown.
    pub(crate) fn wait_for_work(&self) -> bool {
        let mut guard = self.lock();
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return false;
            }
            self.committer_idle.store(true, Ordering::SeqCst);
            if self.issued.load(Ordering::SeqCst) > guard.durable && guard.poisoned.is_none() {
                self.committer_idle.store(false, Ordering::SeqCst);
                return true;
            }
            guard = self
                .work_arrived
                .wait(guard)
                .unwrap_or_else(|e| e.into_inner());
            self.committer_idle.store(false, Ordering::SeqCst);
        }
    }

    pub(crate) fn publish_durable(&self, upto: u64) {
        let mut guard = self.lock();
        if upto > guard.durable {
            guard.durable = upto;
            let snapshot = guard.clone();
            drop(guard);
            self.durable_moved.notify_all();
            self.watch.send_replace(snapshot);
            self.notify();
        }
    }

    /// A new notifier, woken on every move of the watermark.
    pub(crate) fn notifier(&self) -> std::io::Result<DurableNotifier> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        self.notifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(writer);
        Ok(DurableNotifier { reader })
    }

    fn notify(&self) {
        let mut notifiers = self.notifiers.lock().unwrap_or_else(|e| e.into_inner());
        // A full socket already holds a wake-up; a closed one belongs to a dropped notifier.
        notifiers.retain(|writer| match (&*writer).write(&[1]) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
    }

    pub(crate) fn poison(&self, reason: String) {
        let mut guard = self.lock();
        if guard.poisoned.is_none() {
            tracing::error!(%reason, "store poisoned: writes are refused from now on");
            guard.poisoned = Some(reason.into());
        }
        self.poisoned.store(true, Ordering::Release);
        let snapshot = guard.clone();
        drop(guard);
        self.durable_moved.notify_all();
        self.watch.send_replace(snapshot);
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _guard = self.lock();
        self.work_arrived.notify_all();
    }

    fn outcome(ticket: Ticket, mark: &Watermark) -> Option<Result<()>> {
        if mark.durable >= ticket.n {
            Some(Ok(()))
        } else if let Some(reason) = &mark.poisoned {
            Some(Err(StoreError::Poisoned(reason.to_string())))
        } else if mark.closed {
            Some(Err(StoreError::Closed))
        } else {
            None
        }
    }

    /// Marks the store closed after its final commit and releases every remaining waiter.
    pub(crate) fn mark_closed(&self) {
        let mut guard = self.lock();
        guard.closed = true;
        let snapshot = guard.clone();
        drop(guard);
        self.durable_moved.notify_all();
        self.watch.send_replace(snapshot);
    }

    /// Refuses a ticket another store instance issued (it would never become durable here).
    pub(crate) fn check_ticket(&self, ticket: Ticket) -> Result<()> {
        if ticket.store == self.instance {
            Ok(())
        } else {
            Err(StoreError::Invalid(
                "ticket was issued by another opening of the store".into(),
            ))
        }
    }

    /// Blocks until `ticket` is durable, the store is poisoned, or `timeout` passes (Ok(false)).
    pub(crate) fn wait(&self, ticket: Ticket, timeout: Option<Duration>) -> Result<bool> {
        self.check_ticket(ticket)?;
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut guard = self.lock();
        loop {
            if let Some(outcome) = Self::outcome(ticket, &guard) {
                return outcome.map(|()| true);
            }
            guard = match deadline {
                None => self
                    .durable_moved
                    .wait(guard)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Ok(false);
                    }
                    self.durable_moved
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Blocks until every ticket up to `n` is durable, or the store is poisoned or closed.
    pub(crate) fn wait_upto(&self, n: u64) -> Result<()> {
        let ticket = Ticket {
            store: self.instance,
            n,
        };
        self.wait(ticket, None).map(|_| ())
    }

    /// Waits asynchronously until `ticket` is durable or the store is poisoned.
    pub(crate) async fn wait_async(&self, ticket: Ticket) -> Result<()> {
        self.check_ticket(ticket)?;
        let mut rx = self.watch.subscribe();
        let mark = rx
            .wait_for(|mark| Self::outcome(ticket, mark).is_some())
            .await
            .map_err(|_| StoreError::Closed)?
            .clone();
        Self::outcome(ticket, &mark).unwrap_or(Err(StoreError::Closed))
    }
}
