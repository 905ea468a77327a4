//! What the client needs to know before it starts: the server, the transport to it, the
//! credentials and the allocation it asks for.

use std::net::SocketAddr;
use std::time::Duration;

use stun::transaction::RetransmitConfig;

/// The transport between the client and the TURN server (the relay itself is always UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: requests are retransmitted on the RFC 8489 §6.2.1 schedule; ChannelData is sent
    /// unpadded.
    Udp,
    /// TCP: requests are sent once and time out after 39.5 s (RFC 8489 §6.2.2); ChannelData is
    /// padded to a multiple of four (RFC 8656 §12.5).
    Tcp,
    /// TLS over TCP: as TCP.
    Tls,
}

impl Transport {
    /// True for the byte-stream transports (TCP and TLS).
    pub const fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// Lower-case name used in output: `udp`, `tcp`, `tls`.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The address family of the relayed address (REQUESTED-ADDRESS-FAMILY, RFC 8656 §18.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// An IPv4 relayed address.
    V4,
    /// An IPv6 relayed address.
    V6,
}

/// Configuration of one [`Client`](super::Client).
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The TURN server (where every [`Transmit`](super::Transmit) goes).
    pub server: SocketAddr,
    /// Transport to the server.
    pub transport: Transport,
    /// Long-term credential username.
    pub username: String,
    /// Long-term credential password (never sent; `Debug` hides it).
    pub password: String,
    /// REQUESTED-ADDRESS-FAMILY; `None` leaves the attribute out (the server picks IPv4).
    pub family: Option<AddressFamily>,
    /// LIFETIME asked for in Allocate and Refresh; `None` leaves it to the server (600 s).
    pub lifetime: Option<Duration>,
    /// Retransmission schedule over UDP (RFC 8489 defaults). Reliable transports send once and
    /// wait [`RetransmitConfig::total_timeout`] of this schedule (39.5 s by default).
    pub retransmit: RetransmitConfig,
}

impl Config {
    /// A configuration with the RFC defaults: no address family, server-chosen lifetime,
    /// RFC 8489 timers.
    pub fn new(
        server: SocketAddr,
        transport: Transport,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Config {
        Config {
            server,
            transport,
            username: username.into(),
            password: password.into(),
            family: None,
            lifetime: None,
            retransmit: RetransmitConfig::RFC8489,
        }
    }

    /// The retransmission schedule for this transport: the UDP schedule as configured, or a
    /// single send with the same overall timeout on TCP/TLS.
    pub fn transaction_timers(&self) -> RetransmitConfig {
        if self.transport.is_reliable() {
            let total = self.retransmit.total_timeout();
            // One send, then wait `rm * rto` = the whole UDP timeout (39.5 s by default).
            let rto = Duration::from_millis(100);
            let rm = u32::try_from(total.as_millis() / 100)
                .unwrap_or(u32::MAX)
                .max(1);
            RetransmitConfig { rto, rc: 1, rm }
        } else {
            self.retransmit
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("family", &self.family)
            .field("lifetime", &self.lifetime)
            .field("retransmit", &self.retransmit)
            .finish()
    }
}
