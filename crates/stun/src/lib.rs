//! natscope's STUN layer (RFC 8489), with the RFC 5780 (NAT behaviour discovery) helpers.
//!
//! - [`wire`]: a zero-copy, bounds-checked message view and an allocation-free writer. Every
//!   untrusted datagram enters through [`wire::Message::parse`]; after it succeeds nothing
//!   panics. This is the server's hot path.
//! - [`transaction`]: sans-IO client transactions with RFC 8489 §6.2.1 retransmission (RTO, Rc,
//!   Rm) and transaction-ID matching. The core never reads the clock: time comes in as `now`.
//! - [`credentials`]: short-term and long-term credentials (realm, nonce, MD5 and SHA-256
//!   password algorithms), MESSAGE-INTEGRITY(-SHA256) signing and constant-time verification.
//! - [`rfc5780`]: Binding requests with CHANGE-REQUEST, RESPONSE-PORT, PADDING and a typed
//!   Binding response (XOR-MAPPED, MAPPED, RESPONSE-ORIGIN, OTHER-ADDRESS).
//!
//! stun-rs (re-exported as [`stun_rs`]) derives keys (PRECIS OpaqueString) and is the reference
//! decoder our codec is cross-checked against (RFC 5769 vectors, property tests, fuzzing).
//!
//! Out of scope here: sockets and timers (see the `probe` and `turn` drivers), TLS/DTLS.

#![deny(unsafe_code)]

pub mod credentials;
pub mod rfc5780;
pub mod transaction;
pub mod wire;

pub use stun_rs;
