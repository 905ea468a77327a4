//! natscope's server side: `turnd`, a STUN server with complete RFC 5780 support (two
//! addresses × two ports, CHANGE-REQUEST, RESPONSE-PORT, PADDING, OTHER-ADDRESS,
//! RESPONSE-ORIGIN), built to face the public Internet, and a TURN server (RFC 8656) when
//! credentials are configured.
//!
//! - [`binding`]: the sans-IO responder. One packet in, at most one answer out, no allocation.
//! - [`ratelimit`]: per-source token buckets (sans-IO), one table shared by the whole server.
//! - [`relay`]: the sans-IO TURN core, and its drivers in [`relay::driver`].
//! - [`server`]: drivers on real sockets (UDP worker threads, TCP on tokio).
//! - [`config`]: flags and TOML.
//!
//! RFC sections: RFC 8489 §6.3 (server processing), §7.3 (FINGERPRINT), §14; RFC 5780 §6.1
//! (server behaviour), §7 (attributes).

#![deny(unsafe_code)]

pub mod binding;
pub mod cli;
pub mod client;
pub mod config;
pub mod proto;
pub mod ratelimit;
pub mod relay;
pub mod server;
mod udp;
