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
