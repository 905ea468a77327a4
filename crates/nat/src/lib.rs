//! An RFC 4787 / RFC 5382 NAT model, sans-IO, and an in-memory network built on it.
//!
//! # The NAT core
//!
//! [`Nat`] is a pure state machine: packets (or flows) and the current time go in,
//! translations or [`DropReason`]s come out. It never reads a clock and draws port numbers
//! from a seeded RNG, so a run is reproducible from its seed. The drive loop:
//!
//! ```text
//! loop {
//!     // 1. a packet arrived on `side`: translate it in place
//!     match nat.process(now, side, &mut packet) {
//!         Ok(out_side) => forward(out_side, &packet),   // Inside -> Inside is a hairpin
//!         Err(reason) => count(reason.as_str()),
//!     }
//!     // 2. wake up when the earliest mapping expires (optional: expiry is also checked
//!     //    lazily on every lookup, so this only frees memory and ports early)
//!     if nat.poll_timeout().is_some_and(|t| t <= now) { nat.handle_timeout(now); }
//! }
//! ```
//!
//! The same core answers at flow level ([`Nat::outbound`], [`Nat::inbound`],
//! [`Nat::outbound_tcp`], [`Nat::inbound_tcp`]) for the in-memory network and for tests.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::Instant;
//! use nat::{Nat, NatConfig, Protocol, DropReason};
//!
//! let ext = Ipv4Addr::new(203, 0, 113, 1);
//! let mut nat = Nat::new(NatConfig::preset("port-restricted-cone", vec![ext]).unwrap(), 7).unwrap();
//! let now = Instant::now();
//! let host: SocketAddrV4 = "192.168.1.2:5000".parse().unwrap();
//! let server: SocketAddrV4 = "198.51.100.1:3478".parse().unwrap();
//! let out = nat.outbound(now, Protocol::Udp, host, server).unwrap();
//! assert_eq!(out.external, SocketAddrV4::new(ext, 5000)); // port preserved
//! assert_eq!(nat.inbound(now, Protocol::Udp, server, out.external), Ok(host));
//! let other: SocketAddrV4 = "198.51.100.1:3479".parse().unwrap();
//! assert_eq!(nat.inbound(now, Protocol::Udp, other, out.external), Err(DropReason::Filtered));
//! ```
//!
//! # RFC sections implemented
//!
//! - RFC 4787 §4.1 mapping (endpoint-independent, address-dependent,
//!   address-and-port-dependent; REQ-1), pooling paired/arbitrary (REQ-2);
//!   §4.2 port assignment (preservation with fallback, sequential, random, all within one
//!   configured `port_range`; REQ-3 no port overloading: an external endpoint belongs to
//!   one live mapping; REQ-4 parity); §4.3 mapping refresh (REQ-5 timeout, REQ-6 outbound always refreshes,
//!   inbound per `inbound_refresh`); §5 filtering (REQ-8); §6 hairpinning (REQ-9: the
//!   hairpinned packet carries the sender's external endpoint and passes the target's
//!   filtering as if it came from outside).
//! - RFC 5382 REQ-1/REQ-3 (TCP mapping and filtering use the same behaviours as UDP),
//!   REQ-4 (an unsolicited inbound SYN is silently dropped unless the filtering lets it
//!   through; we do not hold it for 6 s: a simultaneous open still works because the
//!   peer's retransmitted SYN passes once our own SYN went out), REQ-5 (established idle
//!   timeout 2 h 4 min, transitory 4 min). State per remote endpoint from SYN/FIN/RST seen in
//!   both directions: established once a SYN went each way, until an RST or a FIN in each
//!   direction (a half-close keeps the established timeout: RFC 7857 §2.2, RFC 6146
//!   §3.5.2.2); otherwise transitory (partially open, closed both ways, or reset). A SYN
//!   without ACK on a session that saw a FIN or an RST starts a new connection on the same
//!   4-tuple with a fresh state (RFC 6146 §3.5.2.2). A TCP mapping may be created by any
//!   outbound segment but RST (a connection picked up mid-stream stays transitory).
//! - RFC 5508 §3.1 (ICMP echo: identifier as port) and §4 in spirit (ICMP errors
//!   destination-unreachable, time-exceeded, parameter-problem translated both ways,
//!   embedded header and checksums included, only for a live mapping whose session matches
//!   the embedded packet).
//!
//! # Out of scope
//!
//! IPv6 and NAT64; reassembly (non-first fragments are dropped with
//! [`DropReason::Fragment`]; first fragments carry the ports and are translated, so their
//! followers get lost: a datagram that needs fragmenting does not cross this NAT); ALGs;
//! TTL decrement and ICMP generation by the NAT itself (it never answers pings to its own
//! addresses and never sends port-unreachable); holding unsolicited SYNs; IP options are
//! carried but not interpreted; RFC 4787 REQ-3 a (source ports 0-1023 kept in 0-1023,
//! others in 1024-65535): every source port maps into the one `port_range`.
//!
//! # Memory
//!
//! At most `max_mappings` mappings ([`DropReason::TableFull`] beyond, after expired ones
//! were removed) and [`MAX_SESSIONS_PER_MAPPING`] remote endpoints per mapping.
//!
//! # The in-memory network
//!
//! [`net`] wires hosts and NAT boxes (nestable: a home NAT behind a carrier-grade NAT) into
//! a deterministic datagram network with seeded delay, jitter, loss and reordering per link;
//! see its module docs for its drive loop.
#![deny(unsafe_code)]

pub mod checksum;
mod config;
mod nat;
pub mod net;
pub mod oracle;
mod packet;

pub use config::{Behavior, ConfigError, Mode, NatConfig, Pooling, PortAssignment, TcpTimeouts};
pub use nat::{
    DropReason, MAX_SESSIONS_PER_MAPPING, MappingInfo, Nat, NatStats, Outbound, Protocol, Scope,
    Side, TcpFlags,
};
