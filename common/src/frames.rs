//! Small ZeroMQ helpers every service needs.

/// Receives one multipart message without copying its frames out of libzmq's messages; fails
/// with `EAGAIN` when none is waiting.
pub fn recv_frames(socket: &zmq::Socket) -> zmq::Result<Vec<zmq::Message>> {
    let mut frames = Vec::with_capacity(5);
    loop {
        let mut frame = zmq::Message::new();
        // Only the first frame may be absent; the rest of a message arrives with it.
        let flags = if frames.is_empty() { zmq::DONTWAIT } else { 0 };
        socket.recv(&mut frame, flags)?;
        let more = frame.get_more();
        frames.push(frame);
        if !more {
            return Ok(frames);
        }
    }
}

/// Headroom of [`frame_cap`] over a protocol's limit, for the frames around a payload.
const FRAME_CAP_HEADROOM: usize = 64 * 1024;

/// The largest frame libzmq reads for a service whose protocol refuses messages over `limit`
/// bytes: twice the limit plus headroom. Messages a little over the limit still reach the
/// decoder (refused with a reply where there is one, and counted); a frame beyond this cap makes
/// libzmq drop the sender's connection before it buffers the frame (ZMQ_MAXMSGSIZE), which
/// keeps one peer from making the process allocate gigabytes.
pub fn frame_cap(limit: usize) -> i64 {
    let cap = limit.saturating_mul(2).saturating_add(FRAME_CAP_HEADROOM);
    i64::try_from(cap).unwrap_or(i64::MAX)
}

/// Sets ZMQ_MAXMSGSIZE to [`frame_cap`]`(limit)`. Call it before `bind`: a listener copies the
/// socket's options when it is made.
pub fn set_frame_cap(socket: &zmq::Socket, limit: usize) -> zmq::Result<()> {
    socket.set_maxmsgsize(frame_cap(limit))
}

/// The endpoint a socket bound last, with an ephemeral port resolved; empty if none.
pub fn bound_endpoint(socket: &zmq::Socket) -> String {
    socket
        .get_last_endpoint()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_beyond_the_cap_drops_the_connection_and_the_socket_serves_on() {
        assert_eq!(frame_cap(1024 * 1024), 2 * 1024 * 1024 + 64 * 1024);
        assert_eq!(frame_cap(usize::MAX), i64::MAX);
        let ctx = zmq::Context::new();
        let pull = ctx.socket(zmq::PULL).unwrap();
        set_frame_cap(&pull, 1000).unwrap();
        pull.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = bound_endpoint(&pull);
        let big = ctx.socket(zmq::PUSH).unwrap();
        big.connect(&endpoint).unwrap();
        big.send(vec![0u8; frame_cap(1000) as usize + 1], 0)
            .unwrap();
        let small = ctx.socket(zmq::PUSH).unwrap();
        small.connect(&endpoint).unwrap();
        small.send(&b"fits"[..], 0).unwrap();
        let mut got = Vec::new();
        while pull.poll(zmq::POLLIN, 1_000).unwrap() > 0 {
            got.push(pull.recv_bytes(0).unwrap());
        }
        // The big frame was never delivered (its connection was dropped); the other sender is.
        assert_eq!(got, vec![b"fits".to_vec()]);
    }

    #[test]
    fn frames_of_one_message_come_together_and_ports_resolve() {
        let ctx = zmq::Context::new();
        let pull = ctx.socket(zmq::PULL).unwrap();
        pull.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = bound_endpoint(&pull);
        assert!(endpoint.starts_with("tcp://127.0.0.1:") && !endpoint.ends_with('*'));
        assert!(matches!(recv_frames(&pull), Err(zmq::Error::EAGAIN)));
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.connect(&endpoint).unwrap();
        push.send_multipart([&b"a"[..], b"bc"], 0).unwrap();
        pull.poll(zmq::POLLIN, 5_000).unwrap();
        let frames = recv_frames(&pull).unwrap();
        let bytes: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(bytes, vec![&b"a"[..], b"bc"]);
    }
}
