//! The operating system's clocks and scheduler, the only unsafe code of the clock: reading
//! CLOCK_MONOTONIC and CLOCK_REALTIME, sleeping to an absolute monotonic deadline, timer slack,
//! SCHED_FIFO and the CPU wake-up latency request.

/// Nanoseconds of `clock`.
fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in nanoseconds: never steps, the base of every deadline.
pub fn mono_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (an absolute deadline: no drift from
/// the time spent computing it). Returns at once if it has passed.
pub fn sleep_until_mono(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remainder pointer may be null with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Spins until CLOCK_MONOTONIC reaches `deadline_ns`.
pub fn spin_until_mono(deadline_ns: u64) {
    while mono_ns() < deadline_ns {
        std::hint::spin_loop();
    }
}

/// Sets this thread's timer slack (default 50 µs: the kernel may wake a sleeper that much late
/// to batch wake-ups).
pub fn set_timer_slack(ns: u64) -> std::io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long and affects only the calling thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs this thread under SCHED_FIFO at `priority` (1-99); fails without CAP_SYS_NICE or an
/// RLIMIT_RTPRIO that allows it.
pub fn set_realtime(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is valid for the call; pthread_self() is always a valid thread handle.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Gives this thread nice value `nice` (negative: more CPU share and earlier wake-ups under
/// CFS); fails without CAP_SYS_NICE or an RLIMIT_NICE that allows it.
pub fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority on a thread id affects only that thread.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How a time-critical thread is raised above the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boost {
    /// SCHED_FIFO at this priority.
    Fifo(i32),
    /// CFS with this nice value.
    Nice(i32),
}

impl Boost {
    /// Applies it to the calling thread.
    pub fn apply(self) -> std::io::Result<()> {
        match self {
            Boost::Fifo(priority) => set_realtime(priority),
            Boost::Nice(nice) => set_nice(nice),
        }
    }
}

/// The mapping from CLOCK_MONOTONIC to wall time: `wall = mono + offset`. Deadlines are taken
/// on the monotonic clock, which neither steps nor drifts from NTP's slewed rate; the mapping is
/// checked every second and renewed when the wall clock was stepped.
#[derive(Debug, Clone, Copy)]
pub struct ClockMap {
    offset: i128,
}

impl ClockMap {
    /// Samples both clocks; of three tries, the one with the shortest read window wins.
    pub fn sample() -> ClockMap {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..3 {
            let before = wall_ns();
            let mono = mono_ns();
            let after = wall_ns();
            let window = after.saturating_sub(before);
            let offset = i128::from(before / 2 + after / 2) - i128::from(mono);
            if best.is_none_or(|(w, _)| window < w) {
                best = Some((window, offset));
            }
        }
        ClockMap {
            offset: best.map_or(0, |(_, offset)| offset),
        }
    }

    /// How far another mapping's offset is from this one's, in ns.
    pub fn distance(&self, other: &ClockMap) -> u64 {
        (self.offset - other.offset).unsigned_abs() as u64
    }

    /// Wall time for a monotonic reading.
    pub fn wall(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset).max(0) as u64
    }

    /// Monotonic time for a wall time.
    pub fn mono(&self, wall_ns: u64) -> u64 {
        (i128::from(wall_ns) - self.offset).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_to_an_absolute_deadline_wakes_after_it() {
        let deadline = mono_ns() + 2_000_000;
        sleep_until_mono(deadline);
        assert!(mono_ns() >= deadline);
        let deadline = mono_ns() + 100_000;
        spin_until_mono(deadline);
        assert!(mono_ns() >= deadline);
        // A passed deadline returns at once.
        sleep_until_mono(0);
    }

    #[test]
    fn the_mapping_agrees_with_the_wall_clock() {
        let map = ClockMap::sample();
        let mapped = map.wall(mono_ns());
        let wall = wall_ns();
        assert!(mapped.abs_diff(wall) < 50_000_000, "{mapped} vs {wall}");
        assert_eq!(map.mono(map.wall(123_456_789)), 123_456_789);
        assert!(map.distance(&ClockMap::sample()) < 50_000_000);
        set_timer_slack(1).unwrap();
        // Lowering one's own priority is always allowed.
        std::thread::spawn(|| Boost::Nice(5).apply().unwrap())
            .join()
            .unwrap();
    }
}

/// A request to the kernel's PM QoS that idle CPUs wake within 0 µs, held while the value lives
/// (closing `/dev/cpu_dma_latency` withdraws it). Idle CPUs then poll instead of halting: every
/// thread wake-up on a tick's path (ticker, zmq I/O threads, subscriber) is cheaper. On this
/// VM a halted vCPU took ~40 µs to wake.
#[derive(Debug)]
pub struct IdlePoll {
    _device: std::fs::File,
}

impl IdlePoll {
    /// Makes the request; fails without write access to `/dev/cpu_dma_latency` (root).
    pub fn hold() -> std::io::Result<IdlePoll> {
        use std::io::Write;
        let mut device = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")?;
        device.write_all(&0i32.to_ne_bytes())?;
        Ok(IdlePoll { _device: device })
    }
}
