//! Threads of services: a named thread with a stop flag, and scheduling helpers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A named thread that runs until its stop flag is set: the shape of every service loop.
pub struct Worker {
    name: String,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Worker {
    /// Starts `run` on a thread called `name`; `run` gets the flag to watch.
    pub fn spawn(
        name: &str,
        run: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(flag))?;
        Ok(Worker {
            name: name.to_string(),
            stop,
            handle,
        })
    }

    /// Sets the stop flag and waits for the thread; a panic in it is logged, not raised.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        if self.handle.join().is_err() {
            tracing::error!(thread = %self.name, "a service thread panicked");
        }
    }
}

/// Lowers the calling thread's scheduling priority to the lowest (nice 19), for background
/// work such as compaction that must not take CPU from the threads serving clients. Returns
/// false (and changes nothing) if the system refuses.
pub fn lower_priority() -> bool {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread id
    // changes only that thread's nice value on Linux and reads no memory of ours.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_runs_until_stopped() {
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = Worker::spawn("test-worker", move |stop| {
            let mut turns = 0u64;
            while !stop.load(Ordering::Acquire) {
                turns += 1;
                std::thread::yield_now();
            }
            tx.send(turns).unwrap();
        })
        .unwrap();
        worker.stop();
        assert!(rx.recv().is_ok(), "the loop ended and reported");
    }
    #[test]
    fn a_thread_can_lower_its_own_priority() {
        let lowered = std::thread::spawn(lower_priority).join().unwrap();
        assert!(lowered);
    }
}
