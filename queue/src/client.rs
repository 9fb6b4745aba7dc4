//! The Rust client library: producers with confirms ([`Producer`]) or fire-and-forget
//! ([`Pusher`]), consumers with prefetch and acks ([`Consumer`]), and [`stats`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::{self, cmd, Reply};
use crate::queue::QueueStats;

/// How often a consumer says it is alive while it waits. Its heartbeat is its `SUB` again:
/// harmless to a service that knows it, and after an appliance restart (libzmq reconnects the
/// socket; the new process knows nothing of it) it subscribes anew.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// What can go wrong talking to the queue service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// libzmq failed.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// No answer in time.
    #[error("no answer from the queue service within {0:?}")]
    Timeout(Duration),
    /// The service refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// The service's answer could not be read.
    #[error("unreadable answer: {0}")]
    Protocol(String),
}

/// A publish's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// The tag [`Producer::publish`] returned.
    pub tag: u64,
    /// The sequences given to the messages once durable, or why they were refused.
    pub result: Result<(u64, u64), String>,
}

fn dealer(ctx: &zmq::Context, endpoint: &str) -> Result<zmq::Socket, ClientError> {
    let socket = ctx.socket(zmq::DEALER)?;
    depot_common::security::apply_process_client(&socket)?;
    socket.set_linger(1_000)?;
    socket.set_rcvhwm(0)?;
    socket.set_sndhwm(0)?;
    socket.connect(endpoint)?;
    Ok(socket)
}

fn recv_timeout(
    socket: &zmq::Socket,
    timeout: Duration,
) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
    let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
    if socket.poll(zmq::POLLIN, ms)? == 0 {
        return Ok(None);
    }
    Ok(Some(socket.recv_multipart(0)?))
}

/// A producer with publish confirms (DEALER to the ROUTER).
pub struct Producer {
    socket: zmq::Socket,
    next_tag: u64,
}

impl Producer {
    /// Connects to the queue ROUTER.
    pub fn connect(ctx: &zmq::Context, endpoint: &str) -> Result<Producer, ClientError> {
        Ok(Producer {
            socket: dealer(ctx, endpoint)?,
            next_tag: 1,
        })
    }

    /// Sends `messages` to `queue` in one request; returns the tag its confirm will carry.
    pub fn publish(&mut self, queue: &str, messages: &[&[u8]]) -> Result<u64, ClientError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let tag_bytes = tag.to_be_bytes();
        let mut frames: Vec<&[u8]> = vec![cmd::PUB, &tag_bytes, queue.as_bytes()];
        frames.extend_from_slice(messages);
        self.socket.send_multipart(frames, 0)?;
        Ok(tag)
    }

    /// The next confirm or refusal of a publish.
    pub fn recv_confirm(&mut self, timeout: Duration) -> Result<Confirm, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frames) = recv_timeout(&self.socket, left)? else {
                return Err(ClientError::Timeout(timeout));
            };
            let tag_of = |bytes: &[u8]| bytes.try_into().map(u64::from_be_bytes).unwrap_or(0);
            match protocol::parse_reply(&frames) {
                Ok(Reply::Confirm { tag, first, last }) => {
                    return Ok(Confirm {
                        tag: tag_of(tag),
                        result: Ok((first, last)),
                    })
                }
                Ok(Reply::Error {
                    command: "PUB",
                    context,
                    reason,
                }) => {
                    return Ok(Confirm {
                        tag: tag_of(context),
                        result: Err(reason.to_owned()),
                    })
                }
                Ok(Reply::Error {
                    command, reason, ..
                }) => return Err(ClientError::Refused(format!("{command}: {reason}"))),
                Ok(_) => continue,
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    }

    /// Publishes and waits for the confirm: the messages' sequences once durable.
    pub fn publish_durable(
        &mut self,
        queue: &str,
        messages: &[&[u8]],
        timeout: Duration,
    ) -> Result<(u64, u64), ClientError> {
        let tag = self.publish(queue, messages)?;
        loop {
            let confirm = self.recv_confirm(timeout)?;
            if confirm.tag == tag {
                return confirm.result.map_err(ClientError::Refused);
            }
        }
    }
}

/// A fire-and-forget producer (PUSH to the PULL): durable within one commit interval.
pub struct Pusher {
    socket: zmq::Socket,
}

impl Pusher {
    /// Connects to the queue PULL.
    pub fn connect(ctx: &zmq::Context, endpoint: &str) -> Result<Pusher, ClientError> {
        let socket = ctx.socket(zmq::PUSH)?;
        depot_common::security::apply_process_client(&socket)?;
        socket.set_linger(5_000)?;
        socket.set_sndhwm(10_000)?;
        socket.connect(endpoint)?;
        Ok(Pusher { socket })
    }

    /// Sends `messages` to `queue` as one message (blocks while the pipe is full).
    pub fn send(&mut self, queue: &str, messages: &[&[u8]]) -> Result<(), ClientError> {
        let mut frames: Vec<&[u8]> = vec![queue.as_bytes()];
        frames.extend_from_slice(messages);
        self.socket.send_multipart(frames, 0)?;
        Ok(())
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its sequence in the queue: acknowledge it with this.
    pub seq: u64,
    /// How often it was delivered before (0 the first time).
    pub redeliveries: u32,
    /// The message.
    pub payload: Vec<u8>,
}

/// A consumer with a prefetch window and explicit acks (DEALER to the ROUTER).
pub struct Consumer {
    socket: zmq::Socket,
    queue: String,
    group: String,
    prefetch: u32,
    buffered: VecDeque<Delivery>,
    last_sent: Instant,
    /// Refusals the service sent (bad acks and the like), oldest first.
    pub errors: Vec<String>,
}

impl Consumer {
    /// Subscribes to `queue` — its work queue when `group` is empty, else the named
    /// subscription `group` — with at most `prefetch` unacknowledged messages in flight, and
    /// waits for the service to confirm. If the service goes silent (an appliance restart),
    /// [`Consumer::recv`] subscribes again; messages it had delivered and were not acknowledged
    /// come again, marked as redelivered.
    pub fn subscribe(
        ctx: &zmq::Context,
        endpoint: &str,
        queue: &str,
        group: &str,
        prefetch: u32,
        timeout: Duration,
    ) -> Result<Consumer, ClientError> {
        let socket = dealer(ctx, endpoint)?;
        socket.set_linger(0)?;
        let mut consumer = Consumer {
            socket,
            queue: queue.to_owned(),
            group: group.to_owned(),
            prefetch,
            buffered: VecDeque::new(),
            last_sent: Instant::now(),
            errors: Vec::new(),
        };
        consumer.send_subscribe()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frames) = recv_timeout(&consumer.socket, left)? else {
                return Err(ClientError::Timeout(timeout));
            };
            match protocol::parse_reply(&frames) {
                Ok(Reply::Ready { .. }) => return Ok(consumer),
                Ok(Reply::Error { reason, .. }) => {
                    return Err(ClientError::Refused(reason.to_owned()))
                }
                Ok(_) => consumer.absorb(&frames)?,
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    }

    fn send_subscribe(&mut self) -> Result<(), ClientError> {
        let (queue, group) = (self.queue.clone(), self.group.clone());
        let prefetch = self.prefetch.to_be_bytes();
        self.send(&[cmd::SUB, queue.as_bytes(), group.as_bytes(), &prefetch])
    }

    fn absorb(&mut self, frames: &[Vec<u8>]) -> Result<(), ClientError> {
        match protocol::parse_reply(frames) {
            Ok(Reply::Messages { deliveries, .. }) => {
                self.buffered
                    .extend(deliveries.into_iter().map(|d| Delivery {
                        seq: d.seq,
                        redeliveries: d.redeliveries,
                        payload: d.payload.to_vec(),
                    }));
                Ok(())
            }
            Ok(Reply::Error {
                command, reason, ..
            }) => {
                self.errors.push(format!("{command}: {reason}"));
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<(), ClientError> {
        self.socket.send_multipart(frames, 0)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    fn heartbeat_if_due(&mut self) -> Result<(), ClientError> {
        if self.last_sent.elapsed() >= HEARTBEAT_INTERVAL {
            self.send_subscribe()?;
        }
        Ok(())
    }

    /// The next message, waiting at most `timeout`; sends heartbeats while it waits.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.buffered.pop_front() {
                return Ok(Some(d));
            }
            self.heartbeat_if_due()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some(frames) = recv_timeout(&self.socket, left.min(HEARTBEAT_INTERVAL))? else {
                continue;
            };
            self.absorb(&frames)?;
        }
    }

    /// Messages already received and not yet returned by [`Consumer::recv`].
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// Acknowledges single messages.
    pub fn ack(&mut self, seqs: &[u64]) -> Result<(), ClientError> {
        let packed: Vec<u8> = seqs.iter().flat_map(|s| s.to_be_bytes()).collect();
        let (queue, group) = (self.queue.clone(), self.group.clone());
        self.send(&[cmd::ACK, queue.as_bytes(), group.as_bytes(), &packed])
    }

    /// Acknowledges every message delivered to this consumer up to `seq`.
    pub fn ack_through(&mut self, seq: u64) -> Result<(), ClientError> {
        let (queue, group) = (self.queue.clone(), self.group.clone());
        self.send(&[
            cmd::ACKTO,
            queue.as_bytes(),
            group.as_bytes(),
            &seq.to_be_bytes(),
        ])
    }

    /// Changes the prefetch window (0 pauses delivery).
    pub fn set_prefetch(&mut self, prefetch: u32) -> Result<(), ClientError> {
        self.prefetch = prefetch;
        let (queue, group) = (self.queue.clone(), self.group.clone());
        self.send(&[
            cmd::CREDIT,
            queue.as_bytes(),
            group.as_bytes(),
            &prefetch.to_be_bytes(),
        ])
    }

    /// Collects replies already waiting (refusals land in [`Consumer::errors`]).
    pub fn drain(&mut self, wait: Duration) -> Result<(), ClientError> {
        while let Some(frames) = recv_timeout(&self.socket, wait)? {
            self.absorb(&frames)?;
        }
        Ok(())
    }

    /// Waits until the service has handled everything sent so far (a heartbeat round trip on
    /// the same connection), keeping messages that arrive meanwhile.
    pub fn sync(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.send(&[cmd::HB])?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frames) = recv_timeout(&self.socket, left)? else {
                return Err(ClientError::Timeout(timeout));
            };
            if matches!(protocol::parse_reply(&frames), Ok(Reply::Heartbeat)) {
                return Ok(());
            }
            self.absorb(&frames)?;
        }
    }

    /// Leaves: messages in flight and unacknowledged go to other consumers at once.
    pub fn close(mut self) -> Result<(), ClientError> {
        let (queue, group) = (self.queue.clone(), self.group.clone());
        self.socket.set_linger(1_000)?;
        self.send(&[cmd::UNSUB, queue.as_bytes(), group.as_bytes()])
    }
}

/// Figures about `queue`, or every queue.
pub fn stats(
    ctx: &zmq::Context,
    endpoint: &str,
    queue: Option<&str>,
    timeout: Duration,
) -> Result<Vec<QueueStats>, ClientError> {
    let socket = dealer(ctx, endpoint)?;
    socket.set_linger(0)?;
    let frames: [&[u8]; 2] = [cmd::STATS, queue.unwrap_or("").as_bytes()];
    socket.send_multipart(frames, 0)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frames) = recv_timeout(&socket, left)? else {
            return Err(ClientError::Timeout(timeout));
        };
        match protocol::parse_reply(&frames) {
            Ok(Reply::Stats(json)) => {
                return serde_json::from_slice(json)
                    .map_err(|e| ClientError::Protocol(e.to_string()))
            }
            Ok(Reply::Error { reason, .. }) => return Err(ClientError::Refused(reason.to_owned())),
            Ok(_) => continue,
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
    }
}
