//! TURN client (RFC 8656): a sans-IO core for one allocation on one server, and a tokio driver.
//!
//! # The drive loop
//!
//! [`Client`] never reads the clock, touches a socket or draws entropy of its own: time comes
//! in as `now`, transaction IDs from an injected seeded RNG. After every call, drain the polls:
//!
//! ```text
//! client.allocate(now)?;
//! loop {
//!     while let Some(t) = client.poll_transmit() { socket.send_to(t.payload, t.destination) }
//!     while let Some(e) = client.poll_event()    { handle(e) }   // Allocated, Data, Failed...
//!     wait until client.poll_timeout(), a datagram from the server, or a command:
//!         datagram -> client.handle_input(now, bytes)      // one datagram or one TCP frame
//!         timer    -> client.handle_timeout(now)
//!         command  -> client.send_to(now, peer, data) / bind_channel / create_permission /
//!                     refresh / close
//! }
//! ```
//!
//! Over TCP and TLS the driver cuts the byte stream into frames with [`StreamDecoder`]
//! (RFC 8656 §12.5); the core then sends each request once and waits 39.5 s, instead of the
//! UDP retransmission schedule of RFC 8489 §6.2.1, and pads ChannelData to four bytes.
//!
//! # What it does
//!
//! - Allocate (§7) with REQUESTED-TRANSPORT UDP and optional REQUESTED-ADDRESS-FAMILY and
//!   LIFETIME; long-term credentials (RFC 8489 §9.2): the first request goes unsigned, the 401
//!   challenge supplies REALM, NONCE and PASSWORD-ALGORITHMS (SHA-256 preferred), and every
//!   438 Stale Nonce is answered with a new transaction carrying the new nonce (at most
//!   [`MAX_STALE_NONCE_RETRIES`] times per request), for every method.
//! - Responses to signed requests are ignored unless their MESSAGE-INTEGRITY(-SHA256)
//!   verifies, except 401/438 which carry no integrity by nature (RFC 8489 §9.2.5).
//! - Refresh (§8) a minute before the lifetime ends (three quarters of it for short
//!   lifetimes, see [`refresh_delay`]); [`Client::close`] deallocates (LIFETIME 0).
//! - CreatePermission (§10), refreshed every [`PERMISSION_REFRESH`] (240 s < 300 s), and
//!   ChannelBind (§12), numbers from 0x4000, refreshed every [`CHANNEL_REFRESH`] (540 s <
//!   600 s); a binding also installs the permission.
//! - Data out as ChannelData when a channel is bound, as a Send indication (§11) otherwise;
//!   Data indications and ChannelData in become [`Event::Data`].
//! - Error responses become typed [`ClientError`]s in [`Event::Failed`]; a failed Allocate, a
//!   Refresh answered 437, or expiry end the allocation with [`Event::Closed`].
//!
//! Out of scope: TCP relaying (RFC 6062), DTLS to the server, dual allocation
//! (ADDITIONAL-ADDRESS-FAMILY), EVEN-PORT/RESERVATION-TOKEN, DONT-FRAGMENT, following a 300
//! redirect (it is reported with the ALTERNATE-SERVER address; the caller decides).

mod config;
mod core;
pub mod driver;
mod error;
mod event;
mod request;
mod stream;
#[cfg(test)]
mod tests;

pub use self::config::{AddressFamily, Config, Transport};
pub use self::core::{
    CHANNEL_REFRESH, Client, MAX_QUEUED, MAX_STALE_NONCE_RETRIES, PERMISSION_REFRESH,
    REFRESH_RETRY, refresh_delay,
};
pub use self::error::ClientError;
pub use self::event::{Event, Request, State, Transmit};
pub use self::stream::{MAX_FRAME, StreamDecoder, StreamError};
