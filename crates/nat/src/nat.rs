//! The flow-level NAT core: mappings, filtering, port assignment, timeouts, TCP state.
//!
//! A *mapping* binds an internal endpoint (and, for endpoint-dependent mapping, the remote
//! address or endpoint it was made for) to an external endpoint. Each mapping keeps one
//! *session* per remote endpoint it has exchanged packets with; sessions are the filtering
//! state ("what the mapping has sent to", RFC 4787 §5) and carry the RFC 5382 TCP state. A
//! session lives `udp_timeout` (UDP, ICMP) or the TCP timeout of its state after its last
//! refresh; a mapping lives as long as its longest-lived session (or an inbound refresh).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{Behavior, ConfigError, Mode, NatConfig, Pooling, PortAssignment};

/// Most sessions (remote endpoints) one mapping remembers. When full, a new remote endpoint
/// evicts the session that expires first, preferring sessions the inside never sent to (opened
/// by an inbound SYN) (counted in [`NatStats::sessions_evicted`]).
pub const MAX_SESSIONS_PER_MAPPING: usize = 1024;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP (RFC 4787).
    Udp,
    /// TCP (RFC 5382).
    Tcp,
    /// ICMP query (echo); the identifier plays the port (RFC 5508 §3.1).
    Icmp,
}

impl Protocol {
    /// `udp`, `tcp`, `icmp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// A side of the NAT box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The private side.
    Inside,
    /// The public side.
    Outside,
}

/// TCP flags the state machine looks at (RFC 5382 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No flag the NAT cares about (a data or ACK segment).
    pub const NONE: TcpFlags = TcpFlags(0);
    /// FIN.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// ACK.
    pub const ACK: TcpFlags = TcpFlags(0x10);

    /// SYN is set.
    pub fn syn(self) -> bool {
        self.0 & Self::SYN.0 != 0
    }
    /// FIN is set.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN.0 != 0
    }
    /// RST is set.
    pub fn rst(self) -> bool {
        self.0 & Self::RST.0 != 0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Inbound packet refused by the filtering behaviour (RFC 4787 §5).
    Filtered,
    /// No mapping for the external endpoint (or, outbound TCP, a RST without a mapping).
    NoMapping,
    /// The mapping had timed out (found before `handle_timeout` removed it).
    Expired,
    /// No free external port.
    PortsExhausted,
    /// `max_mappings` reached.
    TableFull,
    /// `Mode::UdpBlocked` drops every UDP packet.
    UdpBlocked,
    /// Not a well-formed IPv4 packet (length, version, IHL, header checksum, transport
    /// header).
    Malformed,
    /// A non-first fragment: it carries no ports, and the model does not reassemble.
    Fragment,
    /// An IP protocol other than UDP, TCP, ICMP.
    UnsupportedProtocol,
    /// An ICMP type the model does not translate (only echo and the errors
    /// destination-unreachable, time-exceeded, parameter-problem are).
    IcmpUnsupported,
    /// Inbound to an address that is not one of this NAT's external addresses.
    NotForUs,
    /// Inside host sent to an external address of this NAT and hairpinning is off.
    HairpinDisabled,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 12;
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Filtered,
        DropReason::NoMapping,
        DropReason::Expired,
        DropReason::PortsExhausted,
        DropReason::TableFull,
        DropReason::UdpBlocked,
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::IcmpUnsupported,
        DropReason::NotForUs,
        DropReason::HairpinDisabled,
    ];

    /// A stable kebab-case name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Filtered => "filtered",
            DropReason::NoMapping => "no-mapping",
            DropReason::Expired => "expired",
            DropReason::PortsExhausted => "ports-exhausted",
            DropReason::TableFull => "table-full",
            DropReason::UdpBlocked => "udp-blocked",
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::IcmpUnsupported => "icmp-unsupported",
            DropReason::NotForUs => "not-for-us",
            DropReason::HairpinDisabled => "hairpin-disabled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of an outbound flow lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    /// The source the packet carries after translation (the internal endpoint itself for a
    /// firewall).
    pub external: SocketAddrV4,
    /// Hairpinning: the packet goes back inside, to this internal endpoint.
    pub hairpin_to: Option<SocketAddrV4>,
}

/// What a mapping was made for (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Endpoint-independent: any destination.
    Any,
    /// Address-dependent: this remote IP.
    Address(Ipv4Addr),
    /// Address-and-port-dependent: this remote endpoint.
    Endpoint(SocketAddrV4),
}

/// A snapshot of one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// Protocol.
    pub protocol: Protocol,
    /// Internal endpoint.
    pub internal: SocketAddrV4,
    /// External endpoint.
    pub external: SocketAddrV4,
    /// What destinations the mapping serves.
    pub scope: Scope,
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// Remote endpoints it has sent to that are still live (its filtering state).
    pub permitted: Vec<SocketAddrV4>,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Packets or flows translated outbound (hairpinned ones included).
    pub outbound: u64,
    /// Packets or flows translated inbound.
    pub inbound: u64,
    /// Of `outbound`, hairpinned back inside.
    pub hairpinned: u64,
    /// ICMP errors translated (either direction).
    pub icmp_errors: u64,
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings removed by timeout.
    pub mappings_expired: u64,
    /// Sessions evicted because a mapping had [`MAX_SESSIONS_PER_MAPPING`].
    pub sessions_evicted: u64,
    dropped: [u64; DropReason::COUNT],
}

impl NatStats {
    /// Packets or flows dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
    /// Non-zero drop counters.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.dropped(*r)))
            .filter(|(_, n)| *n > 0)
    }
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MapKey {
    proto: Protocol,
    internal: SocketAddrV4,
    scope: Scope,
}

/// What a session has seen of its TCP connection (RFC 5382 §5, with the FIN handling of
/// RFC 7857 §2.2 / RFC 6146 §3.5.2.2: a half-close keeps the established lifetime).
#[derive(Debug, Clone, Copy, Default)]
struct TcpState {
    syn_out: bool,
    syn_in: bool,
    fin_out: bool,
    fin_in: bool,
    rst: bool,
}

impl TcpState {
    /// Account for a segment with `flags` going out (`outbound`) or coming in.
    fn on_segment(&mut self, flags: TcpFlags, outbound: bool) {
        // A SYN without ACK on a closing session opens a new connection on the same
        // 4-tuple (RFC 6146 §3.5.2.2: a SYN in the transitory state starts over): forget
        // the old connection's FIN/RST, or the new one would stay transitory for good.
        let bare_syn = flags.syn() && flags.0 & TcpFlags::ACK.0 == 0 && !flags.rst();
        if bare_syn && self.closing() {
            *self = TcpState::default();
        }
        if outbound {
            self.syn_out |= flags.syn();
            self.fin_out |= flags.fin();
        } else {
            self.syn_in |= flags.syn();
            self.fin_in |= flags.fin();
        }
        self.rst |= flags.rst();
    }

    /// A FIN or an RST was seen: the connection is going away (or already half-closed).
    fn closing(&self) -> bool {
        self.fin_out || self.fin_in || self.rst
    }

    /// Both SYNs seen, and neither an RST nor FINs in both directions.
    fn established(&self) -> bool {
        self.syn_out && self.syn_in && !self.rst && !(self.fin_out && self.fin_in)
    }
}

#[derive(Debug, Clone)]
struct Session {
    /// Last refresh.
    last: Instant,
    /// The mapping has sent to this remote endpoint (filtering permission).
    sent: bool,
    tcp: TcpState,
    expires: Instant,
}

#[derive(Debug)]
struct Mapping {
    key: MapKey,
    external: SocketAddrV4,
    sessions: HashMap<SocketAddrV4, Session>,
    /// Expiry from inbound refreshes that matched no session.
    base_expires: Option<Instant>,
    expires: Instant,
}

/// The NAT: configuration, mapping table, counters. See the crate docs for the drive loop.
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    rng: StdRng,
    mappings: BTreeMap<u64, Mapping>,
    next_id: u64,
    by_key: HashMap<MapKey, u64>,
    by_external: HashMap<(Protocol, SocketAddrV4), u64>,
    timers: BTreeSet<(Instant, u64)>,
    /// Paired pooling: internal IP -> (external IP, number of mappings).
    paired: HashMap<Ipv4Addr, (Ipv4Addr, usize)>,
    /// Sequential assignment: next port to try per protocol and external IP.
    cursors: HashMap<(Protocol, Ipv4Addr), u16>,
    pub(crate) stats: NatStats,
}

impl Nat {
    /// A NAT with `config` (validated) and a seed for its port choices.
    pub fn new(config: NatConfig, seed: u64) -> Result<Nat, ConfigError> {
        config.validate()?;
        Ok(Nat {
            config,
            rng: StdRng::seed_from_u64(seed),
            mappings: BTreeMap::new(),
            next_id: 0,
            by_key: HashMap::new(),
            by_external: HashMap::new(),
            timers: BTreeSet::new(),
            paired: HashMap::new(),
            cursors: HashMap::new(),
            stats: NatStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// Live mappings (those not yet removed; check `expires` against your `now`), in creation
    /// order.
    pub fn mappings(&self) -> impl Iterator<Item = MappingInfo> + '_ {
        self.mappings.values().map(|m| {
            let mut permitted: Vec<SocketAddrV4> = m
                .sessions
                .iter()
                .filter(|(_, s)| s.sent)
                .map(|(r, _)| *r)
                .collect();
            permitted.sort();
            MappingInfo {
                protocol: m.key.proto,
                internal: m.key.internal,
                external: m.external,
                scope: m.key.scope,
                expires: m.expires,
                permitted,
            }
        })
    }

    /// Number of mappings held (expired ones not yet removed included).
    pub fn mapping_count(&self) -> usize {
        self.mappings.len()
    }

    /// Remove every mapping that has expired at `now`. Spurious calls are harmless; expiry
    /// is also checked lazily on every lookup.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.remove(id);
            self.stats.mappings_expired += 1;
        }
    }

    /// A packet from `src` (inside) to `dst`, UDP or ICMP echo (identifier as port, remote
    /// port 0), or a TCP segment without SYN/FIN/RST. Creates or refreshes the mapping.
    pub fn outbound(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Outbound, DropReason> {
        self.outbound_tcp_flags(now, proto, src, dst, TcpFlags::NONE)
    }

    /// [`Nat::outbound`] for a TCP segment with `flags`.
    pub fn outbound_tcp(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<Outbound, DropReason> {
        self.outbound_tcp_flags(now, Protocol::Tcp, src, dst, flags)
    }

    /// A packet from `remote` (outside) to `external`; returns the internal destination.
    pub fn inbound(
        &mut self,
        now: Instant,
        proto: Protocol,
        remote: SocketAddrV4,
        external: SocketAddrV4,
    ) -> Result<SocketAddrV4, DropReason> {
        self.inbound_tcp_flags(now, proto, remote, external, TcpFlags::NONE)
    }

    /// [`Nat::inbound`] for a TCP segment with `flags`.
    pub fn inbound_tcp(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        external: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<SocketAddrV4, DropReason> {
        self.inbound_tcp_flags(now, Protocol::Tcp, remote, external, flags)
    }

    /// Earliest mapping expiry.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn outbound_tcp_flags(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<Outbound, DropReason> {
        let r = self.outbound_flow(now, proto, src, dst, flags);
        if let Err(reason) = r {
            self.stats.count_drop(reason);
        }
        r
    }

    fn inbound_tcp_flags(
        &mut self,
        now: Instant,
        proto: Protocol,
        remote: SocketAddrV4,
        external: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<SocketAddrV4, DropReason> {
        let r = self.inbound_flow(now, proto, remote, external, flags);
        if let Err(reason) = r {
            self.stats.count_drop(reason);
        }
        r
    }

    pub(crate) fn is_external(&self, ip: Ipv4Addr) -> bool {
        self.config.mode == Mode::Nat && self.config.external.contains(&ip)
    }

    /// Outbound without counting drops (callers count).
    pub(crate) fn outbound_flow(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<Outbound, DropReason> {
        if self.config.mode == Mode::UdpBlocked && proto == Protocol::Udp {
            return Err(DropReason::UdpBlocked);
        }
        let hairpin = self.is_external(*dst.ip());
        if hairpin && !self.config.hairpinning {
            return Err(DropReason::HairpinDisabled);
        }
        let id = self.outbound_mapping(now, proto, src, dst, flags)?;
        let external = self
            .mappings
            .get(&id)
            .map(|m| m.external)
            .ok_or(DropReason::NoMapping)?;
        if !hairpin {
            self.stats.outbound += 1;
            return Ok(Outbound {
                external,
                hairpin_to: None,
            });
        }
        // RFC 4787 REQ-9: the hairpinned packet carries the sender's external endpoint, and
        // the target mapping filters it as if it came from outside.
        let target = self.inbound_flow(now, proto, external, dst, flags)?;
        self.stats.outbound += 1;
        self.stats.hairpinned += 1;
        Ok(Outbound {
            external,
            hairpin_to: Some(target),
        })
    }

    /// Inbound without counting drops (callers count).
    pub(crate) fn inbound_flow(
        &mut self,
        now: Instant,
        proto: Protocol,
        remote: SocketAddrV4,
        external: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<SocketAddrV4, DropReason> {
        if self.config.mode == Mode::UdpBlocked && proto == Protocol::Udp {
            return Err(DropReason::UdpBlocked);
        }
        if self.config.mode == Mode::Nat && !self.config.external.contains(external.ip()) {
            return Err(DropReason::NotForUs);
        }
        let id = self.live_by_external(now, proto, external)?;
        let filtering = self.config.filtering;
        let inbound_refresh = self.config.inbound_refresh;
        let udp_timeout = self.config.udp_timeout;
        let tcp = self.config.tcp;
        let m = self.mappings.get_mut(&id).ok_or(DropReason::NoMapping)?;
        if !permits(m, filtering, remote, now) {
            return Err(DropReason::Filtered);
        }
        let internal = m.key.internal;
        let old = m.expires;
        let (old_s, new_s) = match m.sessions.get_mut(&remote) {
            Some(s) if s.expires > now => {
                let before = s.expires;
                if proto == Protocol::Tcp {
                    s.tcp.on_segment(flags, false);
                }
                if inbound_refresh {
                    s.last = now;
                }
                s.expires = deadline(
                    s.last,
                    session_timeout(proto, s.tcp, udp_timeout, tcp.established, tcp.transitory),
                );
                if !inbound_refresh && !s.sent {
                    // Opened by an inbound SYN and never answered: with inbound refresh off,
                    // nothing but the inside may extend it (RFC 4787 REQ-6).
                    s.expires = s.expires.min(before);
                }
                (Some(before), Some(s.expires))
            }
            _ => {
                if proto == Protocol::Tcp && flags.syn() && !flags.rst() {
                    // An inbound SYN the filter let through opens a session (simultaneous
                    // open or an inbound connection through EIF/ADF); it grants no
                    // permission (`sent` stays false). With inbound refresh off it must not
                    // outlive the mapping either, or a stream of SYNs from anywhere would
                    // keep the mapping alive (RFC 4787 REQ-6).
                    let st = TcpState {
                        syn_in: true,
                        ..TcpState::default()
                    };
                    let mut expires = deadline(now, tcp.transitory);
                    if !inbound_refresh {
                        expires = expires.min(m.expires);
                    }
                    let s = Session {
                        last: now,
                        sent: false,
                        tcp: st,
                        expires,
                    };
                    insert_session(m, remote, s, now, &mut self.stats);
                    (None, Some(expires))
                } else if inbound_refresh {
                    let t = if proto == Protocol::Tcp {
                        tcp.transitory
                    } else {
                        udp_timeout
                    };
                    // Only ever grows: `now` does not go backwards.
                    let e = deadline(now, t);
                    m.base_expires = Some(e);
                    (None, Some(e))
                } else {
                    (None, None)
                }
            }
        };
        if let Some(new_s) = new_s {
            session_changed(m, old_s, new_s);
        }
        let new = m.expires;
        self.retime(id, old, new);
        self.stats.inbound += 1;
        Ok(internal)
    }

    /// The live mapping on `external`, removing it if it has expired.
    fn live_by_external(
        &mut self,
        now: Instant,
        proto: Protocol,
        external: SocketAddrV4,
    ) -> Result<u64, DropReason> {
        let id = *self
            .by_external
            .get(&(proto, external))
            .ok_or(DropReason::NoMapping)?;
        let expired = self.mappings.get(&id).is_none_or(|m| m.expires <= now);
        if expired {
            self.remove(id);
            self.stats.mappings_expired += 1;
            return Err(DropReason::Expired);
        }
        Ok(id)
    }

    /// The mapping an outbound packet uses, created if needed, with its session refreshed.
    fn outbound_mapping(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: TcpFlags,
    ) -> Result<u64, DropReason> {
        let scope = match (self.config.mode, self.config.mapping) {
            (Mode::Nat, Behavior::AddressDependent) => Scope::Address(*dst.ip()),
            (Mode::Nat, Behavior::AddressAndPortDependent) => Scope::Endpoint(dst),
            _ => Scope::Any,
        };
        let key = MapKey {
            proto,
            internal: src,
            scope,
        };
        let mut found = self.by_key.get(&key).copied();
        if let Some(id) = found {
            if self.mappings.get(&id).is_none_or(|m| m.expires <= now) {
                self.remove(id);
                self.stats.mappings_expired += 1;
                found = None;
            }
        }
        let id = match found {
            Some(id) => id,
            None => {
                if proto == Protocol::Tcp && flags.rst() {
                    return Err(DropReason::NoMapping);
                }
                self.create(now, key)?
            }
        };
        let udp_timeout = self.config.udp_timeout;
        let tcp = self.config.tcp;
        let m = self.mappings.get_mut(&id).ok_or(DropReason::NoMapping)?;
        let old = m.expires;
        let fresh = || Session {
            last: now,
            sent: true,
            tcp: TcpState::default(),
            expires: now,
        };
        let old_s = m.sessions.get(&dst).map(|s| s.expires);
        let s = match m.sessions.get_mut(&dst) {
            Some(s) => {
                if s.expires <= now {
                    *s = fresh();
                }
                s
            }
            None => {
                insert_session(m, dst, fresh(), now, &mut self.stats);
                m.sessions.get_mut(&dst).ok_or(DropReason::NoMapping)?
            }
        };
        s.sent = true;
        s.last = now;
        if proto == Protocol::Tcp {
            s.tcp.on_segment(flags, true);
        }
        s.expires = deadline(
            now,
            session_timeout(proto, s.tcp, udp_timeout, tcp.established, tcp.transitory),
        );
        let new_s = s.expires;
        session_changed(m, old_s, new_s);
        let new = m.expires;
        self.retime(id, old, new);
        Ok(id)
    }

    fn create(&mut self, now: Instant, key: MapKey) -> Result<u64, DropReason> {
        // Expired mappings give back their slots and ports before a new one is made.
        self.handle_timeout(now);
        if self.mappings.len() >= self.config.max_mappings {
            return Err(DropReason::TableFull);
        }
        let external = if self.config.mode == Mode::Nat {
            self.allocate(key.proto, key.internal)?
        } else {
            key.internal
        };
        let id = self.next_id;
        self.next_id += 1;
        let m = Mapping {
            key,
            external,
            sessions: HashMap::new(),
            base_expires: None,
            expires: now,
        };
        self.mappings.insert(id, m);
        self.by_key.insert(key, id);
        self.by_external.insert((key.proto, external), id);
        self.timers.insert((now, id));
        if self.config.mode == Mode::Nat {
            let e = self
                .paired
                .entry(*key.internal.ip())
                .or_insert((*external.ip(), 0));
            e.1 += 1;
        }
        self.stats.mappings_created += 1;
        tracing::trace!(proto = key.proto.as_str(), internal = %key.internal, %external, "mapping created");
        Ok(id)
    }

    fn remove(&mut self, id: u64) {
        let Some(m) = self.mappings.remove(&id) else {
            return;
        };
        self.timers.remove(&(m.expires, id));
        if self.by_key.get(&m.key) == Some(&id) {
            self.by_key.remove(&m.key);
        }
        if self.by_external.get(&(m.key.proto, m.external)) == Some(&id) {
            self.by_external.remove(&(m.key.proto, m.external));
        }
        if self.config.mode == Mode::Nat {
            let ip = *m.key.internal.ip();
            if let Some(e) = self.paired.get_mut(&ip) {
                e.1 = e.1.saturating_sub(1);
                if e.1 == 0 {
                    self.paired.remove(&ip);
                }
            }
        }
        tracing::trace!(internal = %m.key.internal, external = %m.external, "mapping removed");
    }

    fn retime(&mut self, id: u64, old: Instant, new: Instant) {
        if old != new {
            self.timers.remove(&(old, id));
            self.timers.insert((new, id));
        }
    }

    /// An external endpoint for a new mapping of `internal` (RFC 4787 §4.1 pooling, §4.2
    /// port assignment, REQ-4 parity).
    fn allocate(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV4,
    ) -> Result<SocketAddrV4, DropReason> {
        let n = self.config.external.len();
        if n == 0 {
            return Err(DropReason::PortsExhausted);
        }
        let paired = match self.config.pooling {
            Pooling::Paired => self.paired.get(internal.ip()).map(|(ip, _)| *ip),
            Pooling::Arbitrary => None,
        };
        let candidates: Vec<Ipv4Addr> = match paired {
            Some(ip) => vec![ip],
            None => {
                let start = self.rng.random_range(0..n);
                (0..n)
                    .map(|i| self.config.external[(start + i) % n])
                    .collect()
            }
        };
        for ip in candidates {
            if let Some(port) = self.choose_port(proto, ip, internal.port()) {
                return Ok(SocketAddrV4::new(ip, port));
            }
        }
        Err(DropReason::PortsExhausted)
    }

    fn port_free(&self, proto: Protocol, ip: Ipv4Addr, want: u16, p: u32) -> bool {
        let (lo, hi) = self.config.port_range;
        if p < u32::from(lo) || p > u32::from(hi) {
            return false;
        }
        let parity = self.config.port_parity && proto != Protocol::Icmp;
        if parity && (p % 2) != u32::from(want % 2) {
            return false;
        }
        let Ok(port) = u16::try_from(p) else {
            return false;
        };
        !self
            .by_external
            .contains_key(&(proto, SocketAddrV4::new(ip, port)))
    }

    fn choose_port(&mut self, proto: Protocol, ip: Ipv4Addr, want: u16) -> Option<u16> {
        let (lo, hi) = self.config.port_range;
        let (lo32, hi32) = (u32::from(lo), u32::from(hi));
        let span = hi32 - lo32 + 1;
        match self.config.port_assignment {
            PortAssignment::Preserve if self.port_free(proto, ip, want, u32::from(want)) => {
                return Some(want);
            }
            PortAssignment::Sequential => {
                let cursor = u32::from(*self.cursors.get(&(proto, ip)).unwrap_or(&lo));
                let cursor = cursor.clamp(lo32, hi32);
                for i in 0..span {
                    let p = lo32 + (cursor - lo32 + i) % span;
                    if self.port_free(proto, ip, want, p) {
                        let next = if p >= hi32 { lo32 } else { p + 1 };
                        self.cursors
                            .insert((proto, ip), u16::try_from(next).unwrap_or(lo));
                        return u16::try_from(p).ok();
                    }
                }
                return None;
            }
            _ => {}
        }
        let parity = self.config.port_parity && proto != Protocol::Icmp;
        for _ in 0..32 {
            let mut p = self.rng.random_range(lo32..=hi32);
            if parity {
                p = (p & !1) | u32::from(want & 1);
            }
            if self.port_free(proto, ip, want, p) {
                return u16::try_from(p).ok();
            }
        }
        let start = self.rng.random_range(0..span);
        (0..span)
            .map(|i| lo32 + (start + i) % span)
            .find(|p| self.port_free(proto, ip, want, *p))
            .and_then(|p| u16::try_from(p).ok())
    }

    /// For ICMP errors from outside: the internal endpoint behind `external` if the mapping
    /// is live and has a live session with `remote` (the error is about a packet it sent).
    pub(crate) fn error_inbound(
        &mut self,
        now: Instant,
        proto: Protocol,
        external: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, DropReason> {
        if self.config.mode == Mode::UdpBlocked && proto == Protocol::Udp {
            return Err(DropReason::UdpBlocked);
        }
        let id = self.live_by_external(now, proto, external)?;
        let m = self.mappings.get(&id).ok_or(DropReason::NoMapping)?;
        match m.sessions.get(&remote) {
            Some(s) if s.sent && s.expires > now => Ok(m.key.internal),
            _ => Err(DropReason::Filtered),
        }
    }

    /// For ICMP errors from inside about an inbound packet from `remote` to `internal`: the
    /// external endpoint that packet was sent to.
    pub(crate) fn error_outbound(
        &mut self,
        now: Instant,
        proto: Protocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, DropReason> {
        if self.config.mode == Mode::UdpBlocked && proto == Protocol::Udp {
            return Err(DropReason::UdpBlocked);
        }
        let scope = match (self.config.mode, self.config.mapping) {
            (Mode::Nat, Behavior::AddressDependent) => Scope::Address(*remote.ip()),
            (Mode::Nat, Behavior::AddressAndPortDependent) => Scope::Endpoint(remote),
            _ => Scope::Any,
        };
        let key = MapKey {
            proto,
            internal,
            scope,
        };
        let id = *self.by_key.get(&key).ok_or(DropReason::NoMapping)?;
        match self.mappings.get(&id) {
            Some(m) if m.expires > now => Ok(m.external),
            _ => Err(DropReason::Expired),
        }
    }
}

/// `t + d` without the panic on overflow: a validated configuration keeps `d` at most
/// [`NatConfig::MAX_TIMEOUT`], but the per-packet paths must not panic whatever they are
/// given. An unrepresentable instant saturates to `t + MAX_TIMEOUT`, or `t` itself.
fn deadline(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(NatConfig::MAX_TIMEOUT))
        .unwrap_or(t)
}

fn session_timeout(
    proto: Protocol,
    tcp: TcpState,
    udp: Duration,
    established: Duration,
    transitory: Duration,
) -> Duration {
    match proto {
        Protocol::Tcp if tcp.established() => established,
        Protocol::Tcp => transitory,
        Protocol::Udp | Protocol::Icmp => udp,
    }
}

/// RFC 4787 §5: may `remote` send to this mapping?
fn permits(m: &Mapping, filtering: Behavior, remote: SocketAddrV4, now: Instant) -> bool {
    match filtering {
        Behavior::EndpointIndependent => true,
        Behavior::AddressDependent => m
            .sessions
            .iter()
            .any(|(r, s)| s.sent && s.expires > now && r.ip() == remote.ip()),
        Behavior::AddressAndPortDependent => m
            .sessions
            .get(&remote)
            .is_some_and(|s| s.sent && s.expires > now),
    }
}

fn insert_session(
    m: &mut Mapping,
    remote: SocketAddrV4,
    s: Session,
    now: Instant,
    stats: &mut NatStats,
) {
    if m.sessions.len() >= MAX_SESSIONS_PER_MAPPING {
        m.sessions.retain(|_, s| s.expires > now);
    }
    if m.sessions.len() >= MAX_SESSIONS_PER_MAPPING {
        // Sessions only opened by inbound SYNs (`sent == false`) go first: anyone can make
        // those, and they must not push out the sessions the inside opened.
        let victim = m
            .sessions
            .iter()
            .min_by_key(|(r, s)| (s.sent, s.expires, **r))
            .map(|(r, _)| *r);
        if let Some(v) = victim {
            m.sessions.remove(&v);
            stats.sessions_evicted += 1;
        }
    }
    m.sessions.insert(remote, s);
}

/// A session's expiry went from `old` to `new`: keep `m.expires` the maximum over the
/// sessions and the inbound-refresh base without scanning every session on every packet.
fn session_changed(m: &mut Mapping, old: Option<Instant>, new: Instant) {
    if new >= m.expires {
        m.expires = new;
    } else if old == Some(m.expires) {
        recompute_expiry(m);
    }
}

fn recompute_expiry(m: &mut Mapping) {
    let mut e = m.base_expires;
    for s in m.sessions.values() {
        e = Some(e.map_or(s.expires, |e| e.max(s.expires)));
    }
    if let Some(e) = e {
        m.expires = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even a configuration that skipped validation (timeouts of `Duration::MAX`) must not
    /// panic on `Instant` arithmetic in the per-packet paths.
    #[test]
    fn unvalidated_huge_timeouts_do_not_panic() {
        let ext = Ipv4Addr::new(203, 0, 113, 1);
        let cfg = NatConfig::preset("full-cone", vec![ext]).ok_or(ConfigError::NoMappings);
        let Ok(Ok(mut n)) = cfg.map(|c| Nat::new(c, 1)) else {
            panic!("preset");
        };
        n.config.udp_timeout = Duration::MAX;
        n.config.tcp.established = Duration::MAX;
        n.config.tcp.transitory = Duration::MAX;
        let now = Instant::now();
        let host = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 5000);
        let server = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 443);
        let other = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 443);
        let e = n
            .outbound(now, Protocol::Udp, host, server)
            .map(|o| o.external);
        assert_eq!(e, Ok(SocketAddrV4::new(ext, 5000)));
        let e = SocketAddrV4::new(ext, 5000);
        assert_eq!(n.inbound(now, Protocol::Udp, other, e), Ok(host));
        let t = n
            .outbound_tcp(now, host, server, TcpFlags::SYN)
            .map(|o| o.external);
        assert_eq!(t, Ok(e));
        assert_eq!(n.inbound_tcp(now, other, e, TcpFlags::SYN), Ok(host));
        assert_eq!(
            n.inbound_tcp(now, server, e, TcpFlags::SYN | TcpFlags::ACK),
            Ok(host)
        );
        // Still live much later.
        let later = now + Duration::from_secs(3600);
        assert_eq!(n.inbound(later, Protocol::Udp, server, e), Ok(host));
        n.handle_timeout(later);
        assert_eq!(n.mapping_count(), 2);
    }
}
