//! How a passive server follows the active one: subscribe to its publisher, wait until that
//! subscription is live, take a snapshot, then apply every update in sequence. A gap in the
//! sequence (the subscription overflowed) starts a new snapshot. This module owns the sockets
//! and reports events; the server applies them to its state.

use std::time::{Duration, Instant};

use crate::protocol::{self, KvMsg, KTHXBAI};

/// Messages handled per turn, so the server loop stays responsive.
const BUDGET: usize = 10_000;
/// A snapshot that makes no progress for this long is asked for again.
const SNAPSHOT_STALL: Duration = Duration::from_secs(10);

/// What happened while mirroring.
#[derive(Debug)]
pub enum MirrorEvent {
    /// A snapshot was asked for (client updates received before now are in it).
    Asked,
    /// The active server's whole state and its sequence.
    Snapshot {
        /// Every key, as the active server has it.
        entries: Vec<KvMsg>,
        /// The sequence the snapshot is current to.
        seq: u64,
    },
    /// The next update in sequence.
    Update(KvMsg),
    /// Updates were lost on the way; a new snapshot follows.
    Gap {
        /// Sequence expected.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// The peer sent something that is not CHP.
    Invalid(String),
}

enum Phase {
    /// Subscribed; waiting for the first message so no update falls between snapshot and live.
    WaitLive,
    /// Receiving the snapshot.
    Snapshot {
        dealer: zmq::Socket,
        entries: Vec<KvMsg>,
        progress: Instant,
    },
    /// Applying updates in sequence.
    Following,
}

/// The passive server's view of the active one.
pub struct Mirror {
    ctx: zmq::Context,
    sub: zmq::Socket,
    peer_snapshot: String,
    phase: Phase,
}

impl Mirror {
    /// Subscribes to the active server's publisher.
    pub fn start(
        ctx: &zmq::Context,
        peer_publisher: &str,
        peer_snapshot: &str,
    ) -> Result<Mirror, zmq::Error> {
        let sub = ctx.socket(zmq::SUB)?;
        depot_common::security::apply_process_client(&sub)?;
        sub.set_linger(0)?;
        sub.set_rcvhwm(1_000_000)?;
        sub.set_subscribe(b"")?;
        sub.connect(peer_publisher)?;
        Ok(Mirror {
            ctx: ctx.clone(),
            sub,
            peer_snapshot: peer_snapshot.to_string(),
            phase: Phase::WaitLive,
        })
    }

    /// Whether the state is mirrored and current (not waiting for a snapshot).
    pub fn following(&self) -> bool {
        matches!(self.phase, Phase::Following)
    }

    /// The sockets to wake the server loop.
    pub fn poll_items(&self) -> Vec<zmq::PollItem<'_>> {
        let mut items = vec![self.sub.as_poll_item(zmq::POLLIN)];
        if let Phase::Snapshot { dealer, .. } = &self.phase {
            items.push(dealer.as_poll_item(zmq::POLLIN));
        }
        items
    }

    fn ask_snapshot(&mut self, events: &mut Vec<MirrorEvent>) {
        let dealer = match self.snapshot_dealer() {
            Ok(dealer) => dealer,
            Err(e) => {
                tracing::warn!(error = %e, "cache mirror: cannot ask for a snapshot");
                self.phase = Phase::WaitLive;
                return;
            }
        };
        self.phase = Phase::Snapshot {
            dealer,
            entries: Vec::new(),
            progress: Instant::now(),
        };
        events.push(MirrorEvent::Asked);
    }

    fn snapshot_dealer(&self) -> Result<zmq::Socket, zmq::Error> {
        let dealer = self.ctx.socket(zmq::DEALER)?;
        depot_common::security::apply_process_client(&dealer)?;
        dealer.set_linger(0)?;
        dealer.set_rcvhwm(1_000_000)?;
        dealer.connect(&self.peer_snapshot)?;
        dealer.send_multipart([protocol::ICANHAZ, b"", protocol::PACKED], 0)?;
        Ok(dealer)
    }

    /// Handles what arrived; `seq` is the server's current sequence.
    pub fn turn(&mut self, seq: u64) -> Vec<MirrorEvent> {
        let mut events = Vec::new();
        match &mut self.phase {
            Phase::WaitLive => {
                // The first message proves the subscription live: it is older than the
                // snapshot asked for now, so it can be dropped.
                if self.sub.recv_multipart(zmq::DONTWAIT).is_ok() {
                    self.ask_snapshot(&mut events);
                }
            }
            Phase::Snapshot {
                dealer,
                entries,
                progress,
            } => {
                for _ in 0..BUDGET {
                    let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) else {
                        break;
                    };
                    *progress = Instant::now();
                    if let [kind, batch] = frames.as_slice() {
                        if kind.as_slice() == protocol::KVSYNCS {
                            match protocol::unpack_entries(batch) {
                                Ok(batch) => entries.extend(batch),
                                Err(e) => events.push(MirrorEvent::Invalid(e.to_string())),
                            }
                            continue;
                        }
                    }
                    match KvMsg::decode(&frames, usize::MAX) {
                        Ok(msg) if msg.key == KTHXBAI => {
                            let entries = std::mem::take(entries);
                            events.push(MirrorEvent::Snapshot {
                                entries,
                                seq: msg.seq,
                            });
                            self.phase = Phase::Following;
                            return events;
                        }
                        Ok(msg) => entries.push(msg),
                        Err(e) => events.push(MirrorEvent::Invalid(e.to_string())),
                    }
                }
                if progress.elapsed() >= SNAPSHOT_STALL {
                    tracing::warn!("cache mirror: the snapshot stalled; asking again");
                    self.ask_snapshot(&mut events);
                }
            }
            Phase::Following => {
                let mut expected = seq + 1;
                for _ in 0..BUDGET {
                    let Ok(frames) = self.sub.recv_multipart(zmq::DONTWAIT) else {
                        break;
                    };
                    let msg = match KvMsg::decode(&frames, usize::MAX) {
                        Ok(msg) => msg,
                        Err(e) => {
                            events.push(MirrorEvent::Invalid(e.to_string()));
                            continue;
                        }
                    };
                    if msg.key == protocol::HUGZ || msg.seq < expected {
                        continue;
                    }
                    if msg.seq > expected {
                        events.push(MirrorEvent::Gap {
                            expected,
                            got: msg.seq,
                        });
                        self.ask_snapshot(&mut events);
                        return events;
                    }
                    expected += 1;
                    events.push(MirrorEvent::Update(msg));
                }
            }
        }
        events
    }
}
