//! `natprobe`'s library: the RFC 5780 test plan and the RFC 4787 classification.
//!
//! - [`classify`]: a pure function from test outcomes to mapping, filtering, NAT presence and
//!   a derived legacy name, with how certain each conclusion is. Table-tested for every
//!   combination of outcomes.
//! - [`client`]: the tokio driver: sockets demultiplexed by transaction ID, each test driven by
//!   the sans-IO `stun::transaction::Transaction` (RFC 8489 §6.2.1 retransmissions), and a
//!   pacer for RFC 5780 §5 (at most 10 new transactions per second towards public servers).
//! - [`run`]: resolution, test I everywhere, choosing the server; the UDP and TCP plans and the
//!   lifetime search live in private modules `udp`, `tcp`, `lifetime`. Independent tests run concurrently: on a loss-free path a full UDP
//!   classification takes one round trip plus, at worst, one transaction timeout (≈1.1 s with
//!   the diagnostic profile) for tests whose answer is filtered.
//! - [`report`]: the report (JSON schema) and the human table.
//!
//! RFC 5780 sections: §4.3 mapping, §4.4 filtering, §4.5 hairpinning, §4.6 binding lifetime,
//! §5 pacing; RFC 4787 §4.1 (mapping), §5 (filtering), §6 (hairpinning).

#![deny(unsafe_code)]

pub mod classify;
pub mod cli;
pub mod client;
mod lifetime;
pub mod report;
pub mod run;
mod tcp;
mod udp;

/// Public servers known to answer RFC 5780 (OTHER-ADDRESS, CHANGE-REQUEST), tried in order.
pub const DEFAULT_RFC5780_SERVERS: &[&str] = &[
    "stun.voipgate.com:3478",
    "stunserver2024.stunprotocol.org:3478",
    "stun.nextcloud.com:3478",
];

/// A plain server used only for the cross-check of mapped addresses.
pub const DEFAULT_PLAIN_SERVERS: &[&str] = &["stun.l.google.com:19302"];
