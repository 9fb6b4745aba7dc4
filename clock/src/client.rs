//! A Rust client of the timers ROUTER: add, cancel, list, streams, and reply firings.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::{AddTimer, Firing, ProtocolError, Reply, Request, StreamInfo, TimerInfo};

/// What went wrong talking to the clock.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No reply in time.
    #[error("no reply from the clock at {0} in time")]
    Timeout(String),
    /// The clock answered `ERR`.
    #[error("{0}")]
    Refused(String),
    /// The reply was not what the request expects.
    #[error("unexpected reply: {0}")]
    Protocol(#[from] ProtocolError),
    /// A socket error.
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A DEALER connected to the timers ROUTER. Firings of reply-target timers that arrive while
/// waiting for a reply are kept for [`TimerClient::next_firing`].
pub struct TimerClient {
    socket: zmq::Socket,
    endpoint: String,
    timeout: Duration,
    firings: VecDeque<Firing>,
}

impl TimerClient {
    /// Connects to `endpoint`; each request waits at most `timeout`.
    pub fn connect(
        ctx: &zmq::Context,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<TimerClient, ClientError> {
        let socket = ctx.socket(zmq::DEALER)?;
        depot_common::security::apply_process_client(&socket)?;
        socket.set_linger(100)?;
        socket.connect(endpoint)?;
        Ok(TimerClient {
            socket,
            endpoint: endpoint.to_string(),
            timeout,
            firings: VecDeque::new(),
        })
    }

    /// Like [`TimerClient::connect`] with a fixed identity, so that reply firings reach a
    /// reconnecting client too.
    pub fn connect_as(
        ctx: &zmq::Context,
        endpoint: &str,
        identity: &[u8],
        timeout: Duration,
    ) -> Result<TimerClient, ClientError> {
        let socket = ctx.socket(zmq::DEALER)?;
        depot_common::security::apply_process_client(&socket)?;
        socket.set_linger(100)?;
        socket.set_identity(identity)?;
        socket.connect(endpoint)?;
        Ok(TimerClient {
            socket,
            endpoint: endpoint.to_string(),
            timeout,
            firings: VecDeque::new(),
        })
    }

    fn receive(&mut self, deadline: Instant) -> Result<Option<Reply>, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if self.socket.poll(zmq::POLLIN, left.as_millis() as i64)? == 0 {
            return Ok(None);
        }
        let frames = self.socket.recv_multipart(0)?;
        Ok(Some(Reply::decode(&frames)?))
    }

    /// Sends `request` and waits for its reply (ERR becomes [`ClientError::Refused`]).
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.socket.send_multipart(request.encode(), 0)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.receive(deadline)? {
                None => return Err(ClientError::Timeout(self.endpoint.clone())),
                Some(Reply::Fired(firing)) => self.firings.push_back(firing),
                Some(Reply::Error(reason)) => return Err(ClientError::Refused(reason)),
                Some(reply) => return Ok(reply),
            }
        }
    }

    /// Adds a timer: its id and first deadline (ns since the epoch), once stored durably.
    pub fn add(&mut self, add: AddTimer) -> Result<(u64, u64), ClientError> {
        match self.request(&Request::Add(add))? {
            Reply::Added { id, due_ns } => Ok((id, due_ns)),
            _ => Err(ProtocolError::Malformed("reply to ADD").into()),
        }
    }

    /// Cancels timer `id`, once durably.
    pub fn cancel(&mut self, id: u64) -> Result<(), ClientError> {
        match self.request(&Request::Cancel(id))? {
            Reply::Cancelled { id: done } if done == id => Ok(()),
            _ => Err(ProtocolError::Malformed("reply to CANCEL").into()),
        }
    }

    /// Every pending timer, page by page.
    pub fn list(&mut self) -> Result<Vec<TimerInfo>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            match self.request(&Request::List { after })? {
                Reply::Timers { next, entries } => {
                    all.extend(entries);
                    match next {
                        Some(next) => after = Some(next),
                        None => return Ok(all),
                    }
                }
                _ => return Err(ProtocolError::Malformed("reply to LIST").into()),
            }
        }
    }

    /// The configured tick streams.
    pub fn streams(&mut self) -> Result<Vec<StreamInfo>, ClientError> {
        match self.request(&Request::Streams)? {
            Reply::Streams(streams) => Ok(streams),
            _ => Err(ProtocolError::Malformed("reply to STREAMS").into()),
        }
    }

    /// The next firing of a reply-target timer, waiting at most `timeout`.
    pub fn next_firing(&mut self, timeout: Duration) -> Result<Option<Firing>, ClientError> {
        if let Some(firing) = self.firings.pop_front() {
            return Ok(Some(firing));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.receive(deadline)? {
                None => return Ok(None),
                Some(Reply::Fired(firing)) => return Ok(Some(firing)),
                Some(_) => continue,
            }
        }
    }
}
