//! Agent configuration.

use std::net::SocketAddr;
use std::time::Duration;

use stun::transaction::RetransmitConfig;

/// How the controlling agent nominates (RFC 8445 §8.1.1; aggressive is RFC 5245's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nomination {
    /// Check first, then repeat the check on the chosen valid pair with USE-CANDIDATE.
    Regular,
    /// Put USE-CANDIDATE on every check: the first pair that works is selected, a better one
    /// that works later replaces it.
    Aggressive,
}

/// Which local candidates are used (like WebRTC's `iceTransportPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Host, server-reflexive and relayed candidates.
    All,
    /// Relayed candidates only: host candidates are neither signalled nor paired.
    RelayOnly,
}

/// A TURN server to allocate a relayed candidate on.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// Server address.
    pub addr: SocketAddr,
    /// Transport to the server (UDP, TCP or TLS). The driver owns the connection.
    pub transport: turn::client::Transport,
    /// Long-term credential username.
    pub username: String,
    /// Long-term credential password (`Debug` hides it).
    pub password: String,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything an [`Agent`](crate::Agent) needs to know up front.
#[derive(Debug, Clone)]
pub struct Config {
    /// Start as the controlling agent (the offerer, by convention).
    pub controlling: bool,
    /// Be an ICE-lite agent (RFC 8445 §2.5): host candidates only, no checks of our own,
    /// always controlled.
    pub lite: bool,
    /// Nomination mode when controlling.
    pub nomination: Nomination,
    /// Candidate policy.
    pub policy: Policy,
    /// STUN servers for server-reflexive candidates.
    pub stun_servers: Vec<SocketAddr>,
    /// TURN servers for relayed candidates.
    pub turn_servers: Vec<TurnServer>,
    /// Pacing of new checks (RFC 8445 §14.2: Ta, 50 ms by default).
    pub ta: Duration,
    /// Retransmission of connectivity checks and consent requests.
    pub check_retransmit: RetransmitConfig,
    /// Retransmission of gathering requests to STUN servers.
    pub stun_retransmit: RetransmitConfig,
    /// Controlling, regular nomination: how long after the first valid pair to wait for a
    /// better one before nominating the best so far. A valid pair that no pending pair can
    /// beat is nominated at once.
    pub nomination_delay: Duration,
    /// Give up (state `failed`, reason `timeout`) when not connected this long after checks
    /// could start.
    pub connect_timeout: Duration,
    /// Consent freshness (RFC 7675 §5.1): a request on the selected pair every interval,
    /// randomised by ±20 %.
    pub consent_interval: Duration,
    /// No consent answer for this long: state `disconnected`.
    pub disconnected_timeout: Duration,
    /// No consent answer for this long: state `failed`, reason `consent-expired` (RFC 7675: 30 s).
    pub consent_timeout: Duration,
    /// Seed for credentials, tie-breaker, transaction IDs and consent jitter.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            controlling: true,
            lite: false,
            nomination: Nomination::Regular,
            policy: Policy::All,
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
            ta: Duration::from_millis(50),
            // Sends at 0, 0.2, 0.6, 1.4, 3.0 s; a pair fails 4.6 s after its first check.
            check_retransmit: RetransmitConfig {
                rto: Duration::from_millis(200),
                rc: 5,
                rm: 8,
            },
            stun_retransmit: RetransmitConfig {
                rto: Duration::from_millis(200),
                rc: 5,
                rm: 8,
            },
            nomination_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            consent_interval: Duration::from_secs(5),
            disconnected_timeout: Duration::from_secs(8),
            consent_timeout: Duration::from_secs(30),
            seed: 0,
        }
    }
}
