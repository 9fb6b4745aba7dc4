//! Binary Star: which server of a primary/backup pair is active. Pure code: the server feeds
//! it the peer's state messages, client votes (snapshot requests) and the clock, and acts on
//! the transitions it returns.
//!
//! Rules (ZeroMQ Guide, Binary Star, with its fatal cases made recoverable):
//! - A starting primary waits to hear its peer: a backup (or passive peer) makes it active, an
//!   active peer makes it passive. Only after a full peer timeout without hearing anything does
//!   a client vote make it active alone, so a restarted primary never takes over from an
//!   active backup it simply has not heard yet.
//! - A starting backup goes passive once it hears an active primary and refuses votes before.
//! - A passive server becomes active when its peer restarts (says primary or backup), or when a
//!   client votes after the peer has been silent for the peer timeout.
//! - Two actives (split brain): the backup yields and goes passive (then resyncs from the
//!   primary). Two passives: the primary takes over.

/// Which side of the pair this server is, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Preferred active server.
    Primary,
    /// Takes over when the primary fails.
    Backup,
}

/// A server's state, as it tells its peer once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A primary that started and has not decided yet.
    Primary,
    /// A backup that started and has not decided yet.
    Backup,
    /// Serving clients and publishing.
    Active,
    /// Mirroring the active server; neither publishes nor expires keys.
    Passive,
}

impl State {
    /// The state's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            State::Primary => "PRIMARY",
            State::Backup => "BACKUP",
            State::Active => "ACTIVE",
            State::Passive => "PASSIVE",
        }
    }

    /// Reads a state name.
    pub fn parse(name: &[u8]) -> Option<State> {
        match name {
            b"PRIMARY" => Some(State::Primary),
            b"BACKUP" => Some(State::Backup),
            b"ACTIVE" => Some(State::Active),
            b"PASSIVE" => Some(State::Passive),
            _ => None,
        }
    }

    /// A number for metrics: 1 primary, 2 backup, 3 active, 4 passive.
    pub fn code(self) -> u64 {
        match self {
            State::Primary => 1,
            State::Backup => 2,
            State::Active => 3,
            State::Passive => 4,
        }
    }
}

/// What a transition asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changes.
    Stay,
    /// Became active: publish what is pending, start expiry and HUGZ.
    BecameActive,
    /// Became passive: stop publishing, mirror the active peer (after a snapshot).
    BecamePassive,
}

/// The pair's state machine for one server.
#[derive(Debug, Clone)]
pub struct BinaryStar {
    role: Role,
    state: State,
    /// Peer silence after which it counts as dead, in ms.
    peer_timeout_ms: u64,
    /// When the peer counts as dead unless heard again (ms, the caller's clock).
    peer_expiry_ms: u64,
    /// Whether the peer was ever heard since start.
    heard_peer: bool,
}

impl BinaryStar {
    /// A server of `role` starting at `now_ms`.
    pub fn new(role: Role, peer_timeout_ms: u64, now_ms: u64) -> Self {
        BinaryStar {
            role,
            state: match role {
                Role::Primary => State::Primary,
                Role::Backup => State::Backup,
            },
            peer_timeout_ms,
            peer_expiry_ms: now_ms + peer_timeout_ms,
            heard_peer: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// This server's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer has been silent past its timeout at `now_ms`.
    pub fn peer_dead(&self, now_ms: u64) -> bool {
        now_ms >= self.peer_expiry_ms
    }

    fn become_state(&mut self, state: State) -> Transition {
        if self.state == state {
            return Transition::Stay;
        }
        self.state = state;
        match state {
            State::Active => Transition::BecameActive,
            State::Passive => Transition::BecamePassive,
            State::Primary | State::Backup => Transition::Stay,
        }
    }

    /// The peer said it is in `peer` at `now_ms`.
    pub fn on_peer_state(&mut self, peer: State, now_ms: u64) -> Transition {
        self.peer_expiry_ms = now_ms + self.peer_timeout_ms;
        self.heard_peer = true;
        match (self.state, peer) {
            (State::Primary, State::Backup | State::Passive) => self.become_state(State::Active),
            (State::Primary, State::Active) => self.become_state(State::Passive),
            (State::Backup, State::Active) => self.become_state(State::Passive),
            // The peer restarted: it will see us active and go passive.
            (State::Passive, State::Primary | State::Backup) => self.become_state(State::Active),
            (State::Passive, State::Passive) if self.role == Role::Primary => {
                self.become_state(State::Active)
            }
            (State::Active, State::Active) if self.role == Role::Backup => {
                self.become_state(State::Passive)
            }
            _ => Transition::Stay,
        }
    }

    /// A client asked for a snapshot at `now_ms`: returns whether to serve it, and the
    /// transition the vote caused.
    pub fn on_client_vote(&mut self, now_ms: u64) -> (bool, Transition) {
        match self.state {
            State::Active => (true, Transition::Stay),
            State::Primary if !self.heard_peer && self.peer_dead(now_ms) => {
                (true, self.become_state(State::Active))
            }
            State::Passive if self.peer_dead(now_ms) => (true, self.become_state(State::Active)),
            State::Primary | State::Backup | State::Passive => (false, Transition::Stay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 2_000;

    #[test]
    fn a_pair_settles_with_the_primary_active_and_the_backup_passive() {
        let mut primary = BinaryStar::new(Role::Primary, T, 0);
        let mut backup = BinaryStar::new(Role::Backup, T, 0);
        assert_eq!(backup.on_peer_state(primary.state(), 100), Transition::Stay);
        assert_eq!(
            primary.on_peer_state(backup.state(), 150),
            Transition::BecameActive
        );
        assert_eq!(
            backup.on_peer_state(primary.state(), 1_100),
            Transition::BecamePassive
        );
        assert_eq!(primary.on_client_vote(1_200), (true, Transition::Stay));
        assert_eq!(backup.on_client_vote(1_200), (false, Transition::Stay));
    }

    #[test]
    fn the_passive_takes_over_only_on_a_vote_after_the_peer_timeout() {
        let mut backup = BinaryStar::new(Role::Backup, T, 0);
        backup.on_peer_state(State::Active, 1_000);
        assert_eq!(backup.state(), State::Passive);
        // The primary's last heartbeat was at 1 s; a vote at 2.9 s is too early.
        assert_eq!(backup.on_client_vote(2_900), (false, Transition::Stay));
        assert_eq!(
            backup.on_client_vote(3_000),
            (true, Transition::BecameActive)
        );
        assert_eq!(backup.state(), State::Active);
    }

    #[test]
    fn a_restarted_primary_waits_and_goes_passive_under_an_active_backup() {
        let mut primary = BinaryStar::new(Role::Primary, T, 10_000);
        // Votes before the peer timeout are refused: the backup may be active.
        assert_eq!(primary.on_client_vote(10_500), (false, Transition::Stay));
        assert_eq!(
            primary.on_peer_state(State::Active, 10_900),
            Transition::BecamePassive
        );
        // The backup (active) hears the restarted primary and stays active.
        let mut backup = BinaryStar::new(Role::Backup, T, 0);
        backup.on_peer_state(State::Active, 1_000);
        backup.on_client_vote(5_000);
        assert_eq!(backup.state(), State::Active);
        assert_eq!(
            backup.on_peer_state(State::Primary, 10_900),
            Transition::Stay
        );
    }

    #[test]
    fn a_primary_alone_serves_after_the_peer_timeout() {
        let mut primary = BinaryStar::new(Role::Primary, T, 0);
        assert_eq!(primary.on_client_vote(1_999), (false, Transition::Stay));
        assert_eq!(
            primary.on_client_vote(2_000),
            (true, Transition::BecameActive)
        );
    }

    #[test]
    fn a_backup_alone_never_serves() {
        let mut backup = BinaryStar::new(Role::Backup, T, 0);
        assert_eq!(backup.on_client_vote(60_000), (false, Transition::Stay));
        assert_eq!(backup.state(), State::Backup);
    }

    #[test]
    fn a_passive_becomes_active_when_its_peer_restarts() {
        let mut primary = BinaryStar::new(Role::Primary, T, 0);
        primary.on_peer_state(State::Active, 100);
        assert_eq!(primary.state(), State::Passive);
        assert_eq!(
            primary.on_peer_state(State::Backup, 5_000),
            Transition::BecameActive
        );
    }

    #[test]
    fn split_brain_resolves_with_the_primary_active() {
        let mut primary = BinaryStar::new(Role::Primary, T, 0);
        let mut backup = BinaryStar::new(Role::Backup, T, 0);
        primary.on_client_vote(3_000);
        backup.on_peer_state(State::Active, 3_100);
        backup.on_client_vote(9_000);
        assert_eq!(
            (primary.state(), backup.state()),
            (State::Active, State::Active)
        );
        assert_eq!(
            primary.on_peer_state(State::Active, 9_500),
            Transition::Stay
        );
        assert_eq!(
            backup.on_peer_state(State::Active, 9_500),
            Transition::BecamePassive
        );
    }

    #[test]
    fn two_passives_resolve_with_the_primary_active() {
        let mut primary = BinaryStar::new(Role::Primary, T, 0);
        primary.on_peer_state(State::Active, 100);
        assert_eq!(
            primary.on_peer_state(State::Passive, 200),
            Transition::BecameActive
        );
        let mut backup = BinaryStar::new(Role::Backup, T, 0);
        backup.on_peer_state(State::Active, 100);
        assert_eq!(backup.on_peer_state(State::Passive, 200), Transition::Stay);
    }

    #[test]
    fn state_names_round_trip() {
        for state in [State::Primary, State::Backup, State::Active, State::Passive] {
            assert_eq!(State::parse(state.name().as_bytes()), Some(state));
        }
        assert_eq!(State::parse(b"LEADER"), None);
    }
}
