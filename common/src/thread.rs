//! Thread scheduling helpers.

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
    #[test]
    fn a_thread_can_lower_its_own_priority() {
        let lowered = std::thread::spawn(super::lower_priority).join().unwrap();
        assert!(lowered);
    }
}
