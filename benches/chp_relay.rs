//! The messaging floor under the cache's update benchmark: what libzmq alone costs to carry
//! CHP updates through a server on this machine, with no state, storage or checks.
//!
//! A PUB sends `--count` five-frame KVSETs (100-byte values) to a relay thread (SUB in, PUB out,
//! each update renumbered, as the cache server's sockets are), and a SUB reads every relayed
//! update; client and relay have their own zmq contexts, as two processes would. Prints the
//! rate and the CPU the whole process used per update: the budget `depot bench cache --mode
//! updates` has to share with applying, storing and compacting.
//!
//! Run: `cargo bench --bench chp_relay [-- COUNT]`. Figures go to BENCHMARKS.md.

use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let relay_ctx = zmq::Context::new();
    let inbound = relay_ctx.socket(zmq::SUB)?;
    inbound.set_subscribe(b"")?;
    inbound.set_rcvhwm(0)?;
    inbound.bind("tcp://127.0.0.1:*")?;
    let outbound = relay_ctx.socket(zmq::PUB)?;
    outbound.set_sndhwm(0)?;
    outbound.bind("tcp://127.0.0.1:*")?;
    let inbound_at = endpoint(&inbound)?;
    let outbound_at = endpoint(&outbound)?;

    let ctx = zmq::Context::new();
    let watcher = ctx.socket(zmq::SUB)?;
    watcher.set_subscribe(b"")?;
    watcher.set_rcvhwm(0)?;
    watcher.connect(&outbound_at)?;
    let sender = ctx.socket(zmq::PUB)?;
    sender.set_sndhwm(0)?;
    sender.connect(&inbound_at)?;
    for socket in [&inbound, &outbound, &watcher, &sender] {
        socket.set_linger(100)?;
    }

    // The relay stops after the update whose key is `stop`, the flood's last, and hands its
    // sockets back: closed there, their bounded linger would drop what is not yet written.
    let relay = std::thread::spawn(move || -> zmq::Result<(zmq::Socket, zmq::Socket)> {
        let mut frames: Vec<zmq::Message> = (0..5).map(|_| zmq::Message::new()).collect();
        let mut seq = 0u64;
        loop {
            for frame in frames.iter_mut() {
                inbound.recv(frame, 0)?;
            }
            seq += 1;
            let seq_frame = seq.to_be_bytes();
            let parts: [&[u8]; 5] = [&frames[0], &seq_frame, &frames[2], &frames[3], &frames[4]];
            outbound.send_multipart(parts, 0)?;
            if &frames[0][..] == b"stop" {
                return Ok((inbound, outbound));
            }
        }
    });

    // A PUB drops until connected: repeat a warm-up update until the watcher sees one.
    let empty: &[u8] = &[];
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.poll(zmq::POLLIN, 100)? == 0 {
        if Instant::now() > deadline {
            return Err("the relay does not answer".into());
        }
        sender.send_multipart([&b"warm"[..], &[0; 8], &[0; 16], empty, b"1"], 0)?;
    }
    while watcher.poll(zmq::POLLIN, 200)? > 0 {
        watcher.recv_multipart(0)?;
    }

    let cpu_before = process_cpu_seconds()?;
    let started = Instant::now();
    // The sender is handed back too, for the same reason as the relay's sockets.
    let flood = std::thread::spawn(move || -> zmq::Result<zmq::Socket> {
        let value = vec![b'v'; VALUE_BYTES];
        let mut key = String::new();
        for n in 0..count {
            use std::fmt::Write;
            key.clear();
            if n + 1 == count {
                key.push_str("stop");
            } else {
                let _ = write!(key, "/bench/u/{}", n % 1_000_000);
            }
            let uuid = [n.to_be_bytes(), n.to_be_bytes()].concat();
            sender.send_multipart([key.as_bytes(), &[0; 8], &uuid, empty, &value], 0)?;
        }
        Ok(sender)
    });
    let mut frames: Vec<zmq::Message> = (0..5).map(|_| zmq::Message::new()).collect();
    for _ in 0..count {
        for frame in frames.iter_mut() {
            watcher.recv(frame, 0)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()? - cpu_before;
    let _sender = flood.join().map_err(|_| "the sender panicked")??;
    let _relay_sockets = relay.join().map_err(|_| "the relay panicked")??;
    println!(
        "chp relay floor: {count} updates relayed in {secs:.2} s = {:.0} updates/s; \
         CPU {cpu:.2} s = {:.2} us per update (sender, relay, watcher and their I/O threads)",
        count as f64 / secs,
        cpu * 1e6 / count as f64
    );
    Ok(())
}

fn endpoint(socket: &zmq::Socket) -> Result<String, Box<dyn std::error::Error>> {
    socket
        .get_last_endpoint()?
        .map_err(|_| "endpoint is not UTF-8".into())
}

/// User plus system CPU time of this process so far, from /proc/self/stat.
fn process_cpu_seconds() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("unreadable /proc/self/stat")?
        .1
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}
