//! natscope's ICE agent (RFC 8445), with trickle ICE (RFC 8838), consent freshness (RFC 7675)
//! and the SDP attribute codec (RFC 8839).
//!
//! # The drive loop
//!
//! [`Agent`] is sans-IO: it never reads the clock, touches a socket or draws entropy of its
//! own (credentials, tie-breaker and transaction IDs come from `Config::seed`). Drain the polls
//! after every call:
//!
//! ```text
//! let mut agent = Agent::new(config)?;
//! agent.add_host(now, socket.local_addr())?;       // one per local address (driver enumerates)
//! agent.gather(now);                                // srflx via STUN, relay via TURN
//! signal(agent.local_credentials(), candidates from Event::LocalCandidate);
//! agent.set_remote_credentials(now, ufrag, pwd)?;   // from the peer's description
//! agent.add_remote_candidate(now, cand)?;           // any time (trickle)
//! agent.end_of_remote_candidates(now);
//! loop {
//!     while let Some(t) = agent.poll_transmit() { send t.payload to t.destination via t.via }
//!     while let Some(e) = agent.poll_event()    { LocalCandidate, StateChanged, Data... }
//!     wait until agent.poll_timeout(), a datagram, or a command:
//!         datagram on a host socket -> agent.handle_packet(now, local, from, bytes)
//!         bytes from TURN server i  -> agent.handle_turn_input(now, i, bytes)
//!         timer                     -> agent.handle_timeout(now)
//!         application data          -> agent.send(now, bytes)
//! }
//! ```
//!
//! Two agents wired back to back (a "network" that delivers every datagram at once):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ice::{Agent, Config, Event, Via};
//!
//! let mut now = Instant::now();
//! let mut a = Agent::new(Config { controlling: true, seed: 1, ..Config::default() }).unwrap();
//! let mut b = Agent::new(Config { controlling: false, seed: 2, ..Config::default() }).unwrap();
//! a.add_host(now, "192.0.2.1:5000".parse().unwrap()).unwrap();
//! b.add_host(now, "192.0.2.2:5000".parse().unwrap()).unwrap();
//! a.gather(now);
//! b.gather(now);
//! // Signaling: credentials and candidates both ways.
//! let (ca, cb) = (a.local_credentials().clone(), b.local_credentials().clone());
//! a.set_remote_credentials(now, &cb.ufrag, &cb.pwd).unwrap();
//! b.set_remote_credentials(now, &ca.ufrag, &ca.pwd).unwrap();
//! for c in b.local_candidates() { a.add_remote_candidate(now, c).unwrap(); }
//! for c in a.local_candidates() { b.add_remote_candidate(now, c).unwrap(); }
//! fn deliver(now: Instant, from: &mut Agent, to: &mut Agent) {
//!     while let Some(t) = from.poll_transmit() {
//!         let Via::Host(src) = t.via else { continue };
//!         to.handle_packet(now, t.destination, src, &t.payload);
//!     }
//! }
//! for _ in 0..100 {
//!     deliver(now, &mut a, &mut b);
//!     deliver(now, &mut b, &mut a);
//!     deliver(now, &mut a, &mut b);
//!     if a.state().is_connected() && b.state().is_connected() { break; }
//!     now += Duration::from_millis(10);
//!     a.handle_timeout(now);
//!     b.handle_timeout(now);
//! }
//! assert!(a.state().is_connected() && b.state().is_connected());
//! a.send(now, b"\x80hello").unwrap();
//! let t = a.poll_transmit().unwrap();
//! let Via::Host(src) = t.via else { unreachable!() };
//! b.handle_packet(now, t.destination, src, &t.payload);
//! assert!(std::iter::from_fn(|| b.poll_event())
//!     .any(|e| matches!(e, Event::Data { ref data, .. } if data == b"\x80hello")));
//! ```
//!
//! [`driver`] runs an agent on tokio: one UDP socket per local address, one connection per
//! TURN server (UDP, TCP or TLS), application datagrams demultiplexed from STUN by their first
//! byte (RFC 7983).
//!
//! # What it does
//!
//! - Candidates (RFC 8445 §5.1): host (addresses are the driver's input), server-reflexive
//!   (Binding to STUN servers), relayed (TURN allocations through `turn::client`, over UDP, TCP
//!   or TLS); priorities (§5.1.2, RFC 8421 ordering for dual stack), foundations (§5.1.1.3);
//!   gathering state and end of candidates.
//! - Pairing and pruning (§6.1.2), frozen/waiting by foundation, checks paced by Ta (§6.1.4),
//!   triggered checks (§7.3.1.4), peer-reflexive candidates from requests (§7.3.1.3) and
//!   responses (§7.2.5.3.1), symmetric-address check on responses, short-term credentials with
//!   MESSAGE-INTEGRITY and FINGERPRINT.
//! - Roles with role-conflict resolution (§7.3.1.1, 487 handling §7.2.5.1); regular and
//!   aggressive nomination; ICE-lite (an agent that answers checks and selects on
//!   USE-CANDIDATE, and a full agent that is controlling towards a lite peer).
//! - Consent freshness (RFC 7675): a check on the selected pair every ~5 s, `disconnected`
//!   without answers, `failed` after 30 s; ICE restart (§9); failure after a bounded time with a
//!   [`FailReason`].
//!
//! Out of scope: several components or data streams, ICE-TCP (RFC 6544: TCP candidates are
//! parsed and ignored), mDNS candidates (host names are reported by the parser, not resolved).

#![deny(unsafe_code)]

mod agent;
pub mod candidate;
pub mod cli;
mod config;
pub mod driver;
mod message;
mod pair;
pub mod sdp;
pub mod signal;

use std::net::SocketAddr;
use std::time::Duration;

pub use agent::{Agent, Credentials};
pub use candidate::{Candidate, CandidateKind};
pub use config::{Config, Nomination, Policy, TurnServer};
pub use message::is_stun;
pub use pair::{PairState, pair_priority};

/// Where a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The host socket bound to this local address.
    Host(SocketAddr),
    /// The connection to TURN server number `n` (index in `Config::turn_servers`); the
    /// destination is then the server itself.
    Turn(usize),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Which socket.
    pub via: Via,
    /// Destination.
    pub destination: SocketAddr,
    /// Payload (for a TCP/TLS TURN connection: one whole frame).
    pub payload: Vec<u8>,
}

/// Connection state (the names of WebRTC's `iceConnectionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IceState {
    /// Waiting for the peer's credentials.
    New,
    /// Checks are running.
    Checking,
    /// A pair is selected; data can flow.
    Connected,
    /// Selected and no checks left.
    Completed,
    /// Consent answers stopped coming (may come back).
    Disconnected,
    /// Gave up; see [`Agent::failure`].
    Failed,
    /// Closed by [`Agent::close`].
    Closed,
}

impl IceState {
    /// Lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            IceState::New => "new",
            IceState::Checking => "checking",
            IceState::Connected => "connected",
            IceState::Completed => "completed",
            IceState::Disconnected => "disconnected",
            IceState::Failed => "failed",
            IceState::Closed => "closed",
        }
    }

    /// Connected or completed.
    pub const fn is_connected(self) -> bool {
        matches!(self, IceState::Connected | IceState::Completed)
    }
}

/// Gathering state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatheringState {
    /// [`Agent::gather`] not called yet.
    New,
    /// STUN/TURN requests outstanding.
    Gathering,
    /// Every server answered or timed out.
    Complete,
}

/// Why the agent failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// Every pair failed and no candidates can come any more.
    NoValidPair,
    /// Not connected within `Config::connect_timeout`.
    Timeout,
    /// Consent expired (RFC 7675 §5.1): the peer stopped answering.
    ConsentExpired,
    /// The TURN allocation of the selected pair was lost.
    RelayLost,
}

impl FailReason {
    /// Kebab-case name for output.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailReason::NoValidPair => "no-valid-pair",
            FailReason::Timeout => "timeout",
            FailReason::ConsentExpired => "consent-expired",
            FailReason::RelayLost => "relay-lost",
        }
    }
}

/// Something that happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A local candidate to signal to the peer (trickle it, or collect it for vanilla ICE).
    LocalCandidate(Candidate),
    /// Gathering finished: signal `a=end-of-candidates`.
    GatheringComplete,
    /// The connection state changed.
    StateChanged(IceState),
    /// A new pair carries data.
    SelectedPairChanged {
        /// Our candidate.
        local: Candidate,
        /// The peer's candidate.
        remote: Candidate,
    },
    /// Application data arrived.
    Data {
        /// Sender.
        from: SocketAddr,
        /// Payload.
        data: Vec<u8>,
    },
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connectivity-check and consent requests sent, retransmissions included.
    pub checks_sent: u64,
    /// Authenticated check requests received.
    pub checks_received: u64,
    /// Success responses sent.
    pub responses_sent: u64,
    /// Responses to our checks received (success or error).
    pub responses_received: u64,
    /// STUN transactions started: gathering, checks, consent.
    pub stun_transactions: u64,
    /// Binding requests to STUN servers, retransmissions included.
    pub gather_requests_sent: u64,
    /// Consent-freshness transactions.
    pub consent_requests: u64,
    /// Latest round-trip time of a check (Karn's rule).
    pub rtt: Option<Duration>,
    /// Role switches after conflicts.
    pub role_switches: u64,
    /// ICE restarts.
    pub restarts: u64,
    /// Application datagrams sent and received.
    pub data_sent: u64,
    /// Application datagrams received.
    pub data_received: u64,
    /// Candidate pairs.
    pub pairs: usize,
}

/// Errors of the agent API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a usable local address (wildcard or port 0).
    #[error("not a usable local address: {0}")]
    BadAddress(SocketAddr),
    /// A malformed ufrag, password or candidate.
    #[error(transparent)]
    Sdp(#[from] sdp::SdpError),
    /// Credentials the STUN layer refuses.
    #[error(transparent)]
    Credentials(#[from] stun::credentials::CredentialError),
    /// More remote candidates than we keep.
    #[error("too many remote candidates")]
    TooManyCandidates,
    /// No pair is selected.
    #[error("not connected")]
    NotConnected,
}
