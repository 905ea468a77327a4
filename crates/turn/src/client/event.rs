//! What the client hands back to its driver: datagrams to send, events, and its state.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::ClientError;

/// Bytes to send to the TURN server. Over TCP/TLS they are one whole frame for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The server address (always [`Config::server`](super::Config::server)).
    pub destination: SocketAddr,
    /// The message: a STUN request or indication, or a ChannelData message.
    pub payload: Vec<u8>,
}

/// The request a [`Event::Failed`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Allocate (RFC 8656 §7).
    Allocate,
    /// Refresh (§8); lifetime 0 is the deallocation.
    Refresh {
        /// The LIFETIME asked for, in seconds (`None`: the server's default).
        lifetime: Option<u32>,
    },
    /// CreatePermission for the peer's IP address (§9).
    CreatePermission {
        /// The peer (only its IP address matters to the server).
        peer: SocketAddr,
    },
    /// ChannelBind (§12).
    ChannelBind {
        /// The peer.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
    },
}

/// Where the allocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing asked yet: call [`Client::allocate`](super::Client::allocate).
    Idle,
    /// Allocate sent, no final answer yet (401/438 retries happen in this state).
    Allocating,
    /// The allocation exists; refreshes, permissions and channels are kept alive.
    Allocated,
    /// Deallocation (Refresh with LIFETIME 0) sent.
    Closing,
    /// Deallocated, refused, lost or expired. Terminal.
    Closed,
}

/// Something that happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The allocation exists.
    Allocated {
        /// XOR-RELAYED-ADDRESS: where peers send to.
        relayed: SocketAddr,
        /// XOR-MAPPED-ADDRESS: the client's server-reflexive address, if the server sent it.
        mapped: Option<SocketAddr>,
        /// The lifetime the server granted.
        lifetime: Duration,
    },
    /// A Refresh succeeded.
    Refreshed {
        /// The new lifetime.
        lifetime: Duration,
    },
    /// A permission for this peer IP address is installed (or was refreshed).
    PermissionCreated {
        /// The peer IP address.
        peer: IpAddr,
    },
    /// A channel is bound (or was refreshed); data to `peer` now travels as ChannelData.
    ChannelBound {
        /// The peer transport address.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
    },
    /// Application data relayed from a peer (Data indication or ChannelData).
    Data {
        /// The peer that sent it.
        peer: SocketAddr,
        /// The payload.
        data: Vec<u8>,
    },
    /// A request failed for good (after the 401/438 retries it was entitled to).
    Failed {
        /// Which request.
        request: Request,
        /// Why.
        error: ClientError,
    },
    /// The allocation is gone: deallocated (`reason` is `None`), or refused, lost or expired.
    /// Always the last event.
    Closed {
        /// Why, when it was not a requested close.
        reason: Option<ClientError>,
    },
}
