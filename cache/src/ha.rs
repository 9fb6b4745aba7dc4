//! The pair link of a Binary Star server: its state PUB (bound), a SUB on the peer's state
//! PUB, the state machine, the mirror while passive and the pending list. The server asks it
//! what to do; the state and the store stay with the server.
//!
//! A state message is three frames: the state name (`PRIMARY`, `BACKUP`, `ACTIVE`,
//! `PASSIVE`), the sender's role (`primary` or `backup`) and its sequence (8 bytes big-endian).

use std::time::{Duration, Instant};

use crate::bstar::{BinaryStar, Role, State, Transition};
use crate::config::HaConfig;
use crate::mirror::Mirror;
use crate::pending::Pending;

/// A state message from the peer that does not fit the protocol.
#[derive(Debug, thiserror::Error)]
pub enum PeerMessageError {
    /// Not three frames, an unknown state, or a bad sequence.
    #[error("malformed peer state message")]
    Malformed,
    /// Both servers are configured with the same role.
    #[error("the peer is also configured as {0:?}; fix [cache.ha] role on one of them")]
    SameRole(Role),
}

/// Reads a peer's state message.
pub fn parse_state(frames: &[Vec<u8>], own: Role) -> Result<(State, u64), PeerMessageError> {
    let [state, role, seq] = frames else {
        return Err(PeerMessageError::Malformed);
    };
    let state = State::parse(state).ok_or(PeerMessageError::Malformed)?;
    let role = match role.as_slice() {
        b"primary" => Role::Primary,
        b"backup" => Role::Backup,
        _ => return Err(PeerMessageError::Malformed),
    };
    let seq: [u8; 8] = seq
        .as_slice()
        .try_into()
        .map_err(|_| PeerMessageError::Malformed)?;
    if role == own {
        return Err(PeerMessageError::SameRole(role));
    }
    Ok((state, u64::from_be_bytes(seq)))
}

/// Encodes this server's state message.
pub fn encode_state(state: State, role: Role, seq: u64) -> [Vec<u8>; 3] {
    let role: &[u8] = match role {
        Role::Primary => b"primary",
        Role::Backup => b"backup",
    };
    [
        state.name().as_bytes().to_vec(),
        role.to_vec(),
        seq.to_be_bytes().to_vec(),
    ]
}

/// One server's side of the pair.
pub struct Ha {
    /// Decides active and passive.
    pub fsm: BinaryStar,
    state_pub: zmq::Socket,
    state_sub: zmq::Socket,
    /// Following the active peer while passive.
    pub mirror: Option<Mirror>,
    /// Client updates the active peer has not published yet.
    pub pending: Pending,
    /// Pending arrivals before this mark are covered by the snapshot being taken.
    pub resync_mark: u64,
    config: HaConfig,
    ctx: zmq::Context,
    last_beat: Instant,
    started: Instant,
}

impl Ha {
    /// Binds the state PUB and connects to the peer's.
    pub fn start(
        ctx: &zmq::Context,
        config: &HaConfig,
        curve: Option<&depot_common::security::ServerCurve>,
    ) -> Result<Ha, zmq::Error> {
        let state_pub = ctx.socket(zmq::PUB)?;
        state_pub.set_linger(0)?;
        depot_common::security::apply_server(&state_pub, curve)?;
        state_pub.bind(&config.state)?;
        let state_sub = ctx.socket(zmq::SUB)?;
        depot_common::security::apply_process_client(&state_sub)?;
        state_sub.set_linger(0)?;
        state_sub.set_subscribe(b"")?;
        state_sub.connect(&config.peer_state)?;
        Ok(Ha {
            fsm: BinaryStar::new(config.role, config.peer_timeout.as_millis() as u64, 0),
            state_pub,
            state_sub,
            mirror: None,
            pending: Pending::new(config.pending_limit),
            resync_mark: 0,
            config: config.clone(),
            ctx: ctx.clone(),
            last_beat: Instant::now() - config.heartbeat,
            started: Instant::now(),
        })
    }

    /// Milliseconds since start: the state machine's clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Where the state PUB listens.
    pub fn state_endpoint(&self) -> String {
        depot_common::frames::bound_endpoint(&self.state_pub)
    }

    /// The sockets to wake the server loop.
    pub fn poll_items(&self) -> Vec<zmq::PollItem<'_>> {
        let mut items = vec![self.state_sub.as_poll_item(zmq::POLLIN)];
        if let Some(mirror) = &self.mirror {
            items.extend(mirror.poll_items());
        }
        items
    }

    /// Time until the next heartbeat is due.
    pub fn next_beat_in(&self) -> Duration {
        self.config
            .heartbeat
            .saturating_sub(self.last_beat.elapsed())
    }

    /// Sends the state if a heartbeat is due.
    pub fn beat(&mut self, seq: u64) {
        if self.last_beat.elapsed() < self.config.heartbeat {
            return;
        }
        self.last_beat = Instant::now();
        let message = encode_state(self.fsm.state(), self.fsm.role(), seq);
        if let Err(e) = self.state_pub.send_multipart(message, zmq::DONTWAIT) {
            tracing::warn!(error = %e, "cache: sending the pair state failed");
        }
    }

    /// Reads the peer's state messages; returns the transitions they caused, and the errors.
    pub fn take_peer_states(&mut self) -> (Vec<Transition>, Vec<PeerMessageError>) {
        let mut transitions = Vec::new();
        let mut errors = Vec::new();
        while let Ok(frames) = self.state_sub.recv_multipart(zmq::DONTWAIT) {
            match parse_state(&frames, self.fsm.role()) {
                Ok((peer, _seq)) => {
                    let now = self.now_ms();
                    let transition = self.fsm.on_peer_state(peer, now);
                    if transition != Transition::Stay {
                        self.enter(transition);
                        transitions.push(transition);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (transitions, errors)
    }

    /// A client's snapshot request: whether to serve it, and the transition it caused.
    pub fn vote(&mut self) -> (bool, Transition) {
        let now = self.now_ms();
        let (serve, transition) = self.fsm.on_client_vote(now);
        if transition != Transition::Stay {
            self.enter(transition);
        }
        (serve, transition)
    }

    /// Sets up or tears down the mirror for a new state.
    fn enter(&mut self, transition: Transition) {
        match transition {
            Transition::BecamePassive => {
                match Mirror::start(
                    &self.ctx,
                    &self.config.peer_publisher,
                    &self.config.peer_snapshot,
                ) {
                    Ok(mirror) => self.mirror = Some(mirror),
                    Err(e) => tracing::error!(error = %e, "cache: cannot mirror the active peer"),
                }
            }
            Transition::BecameActive => self.mirror = None,
            Transition::Stay => {}
        }
    }

    /// Whether this server serves clients and publishes.
    pub fn active(&self) -> bool {
        self.fsm.state() == State::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_messages_round_trip_and_refuse_the_same_role() {
        let frames = encode_state(State::Active, Role::Primary, 42);
        let frames: Vec<Vec<u8>> = frames.into();
        assert_eq!(
            parse_state(&frames, Role::Backup).unwrap(),
            (State::Active, 42)
        );
        assert!(matches!(
            parse_state(&frames, Role::Primary),
            Err(PeerMessageError::SameRole(Role::Primary))
        ));
        let mut short = frames.clone();
        short[2] = vec![1, 2, 3];
        assert!(matches!(
            parse_state(&short, Role::Backup),
            Err(PeerMessageError::Malformed)
        ));
        assert!(matches!(
            parse_state(&frames[..2], Role::Backup),
            Err(PeerMessageError::Malformed)
        ));
    }
}
