//! Typed errors: TURN error responses (RFC 8656 §19, RFC 8489 §14.8) and local failures.

use std::net::SocketAddr;

use stun::credentials::CredentialError;

/// Why a request failed or a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// 300 Try Alternate: the server redirects to ALTERNATE-SERVER (RFC 8489 §10).
    #[error("300 Try Alternate: the server redirects to {}",
        alternate.map_or_else(|| "an unspecified server".to_owned(), |a| a.to_string()))]
    TryAlternate {
        /// ALTERNATE-SERVER, when present and well-formed.
        alternate: Option<SocketAddr>,
    },
    /// 401 after the request carried credentials: wrong username or password.
    #[error("401 Unauthenticated: the server rejected the username or password")]
    Unauthenticated,
    /// 403 Forbidden (e.g. the peer address is not allowed).
    #[error("403 Forbidden: {reason}")]
    Forbidden {
        /// The server's reason phrase.
        reason: String,
    },
    /// 437 Allocation Mismatch: no allocation on this 5-tuple, or one already exists.
    #[error("437 Allocation Mismatch")]
    AllocationMismatch,
    /// 440 Address Family not Supported.
    #[error("440 Address Family not Supported")]
    AddressFamilyNotSupported,
    /// 441 Wrong Credentials: the credentials differ from those that created the allocation.
    #[error("441 Wrong Credentials")]
    WrongCredentials,
    /// 442 Unsupported Transport Protocol.
    #[error("442 Unsupported Transport Protocol")]
    UnsupportedTransport,
    /// 486 Allocation Quota Reached.
    #[error("486 Allocation Quota Reached")]
    AllocationQuotaReached,
    /// 508 Insufficient Capacity.
    #[error("508 Insufficient Capacity")]
    InsufficientCapacity,
    /// Any other error response.
    #[error("{code} {reason}")]
    Other {
        /// ERROR-CODE number (0 when the error response had none).
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// The server kept answering 438 Stale Nonce.
    #[error("438 Stale Nonce after {retries} retries")]
    StaleNonceLoop {
        /// Retries made.
        retries: u32,
    },
    /// No response after every retransmission (or the single send over TCP/TLS).
    #[error("no response from the server after {sends} send(s)")]
    Timeout {
        /// Times the request was sent.
        sends: u32,
    },
    /// The allocation's lifetime ran out without a successful refresh.
    #[error("the allocation expired")]
    Expired,
    /// The TCP/TLS connection to the server closed.
    #[error("the connection to the server closed")]
    ConnectionLost,
    /// Credentials could not be used (no common password algorithm, text the OpaqueString
    /// profile rejects).
    #[error("credentials: {0}")]
    Credentials(#[from] CredentialError),
    /// The command needs an allocation and there is none (yet, or any more).
    #[error("no allocation")]
    NotAllocated,
    /// The command is not valid in the current state (e.g. a second `allocate`).
    #[error("not possible in state {0:?}")]
    BadState(super::State),
    /// Every channel number 0x4000..=0x4FFF is in use.
    #[error("no channel number left")]
    ChannelsExhausted,
    /// The peer's address family differs from the relayed address's.
    #[error("peer {0} has another address family than the relayed address")]
    PeerFamilyMismatch(SocketAddr),
    /// The payload does not fit in one message.
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
}

impl ClientError {
    /// Map an error response's code and reason (ALTERNATE-SERVER for 300) to a typed error.
    pub fn from_response(code: u16, reason: &str, alternate: Option<SocketAddr>) -> ClientError {
        match code {
            300 => ClientError::TryAlternate { alternate },
            401 => ClientError::Unauthenticated,
            403 => ClientError::Forbidden {
                reason: reason.to_owned(),
            },
            437 => ClientError::AllocationMismatch,
            440 => ClientError::AddressFamilyNotSupported,
            441 => ClientError::WrongCredentials,
            442 => ClientError::UnsupportedTransport,
            486 => ClientError::AllocationQuotaReached,
            508 => ClientError::InsufficientCapacity,
            _ => ClientError::Other {
                code,
                reason: reason.to_owned(),
            },
        }
    }

    /// The STUN/TURN error code this error stands for, if it came from the server.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::TryAlternate { .. } => Some(300),
            ClientError::Unauthenticated => Some(401),
            ClientError::Forbidden { .. } => Some(403),
            ClientError::AllocationMismatch => Some(437),
            ClientError::StaleNonceLoop { .. } => Some(438),
            ClientError::AddressFamilyNotSupported => Some(440),
            ClientError::WrongCredentials => Some(441),
            ClientError::UnsupportedTransport => Some(442),
            ClientError::AllocationQuotaReached => Some(486),
            ClientError::InsufficientCapacity => Some(508),
            ClientError::Other { code, .. } => Some(*code),
            _ => None,
        }
    }
}
