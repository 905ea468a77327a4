#![allow(clippy::unwrap_used)]
//! Property tests: the NAT against an independent oracle written from RFC 4787's
//! definitions, bijection and EIM invariants, checksums, and robustness on random bytes.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::{assert_checksums, endpoints, icmp_echo, icmp_error, tcp, udp, udp_opts};
use nat::{Behavior, DropReason, Nat, NatConfig, Pooling, PortAssignment, Protocol, Side};
use proptest::prelude::*;

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        Just(Behavior::EndpointIndependent),
        Just(Behavior::AddressDependent),
        Just(Behavior::AddressAndPortDependent)
    ]
}

fn config() -> impl Strategy<Value = NatConfig> {
    (
        behavior(),
        behavior(),
        prop_oneof![
            Just(PortAssignment::Preserve),
            Just(PortAssignment::Sequential),
            Just(PortAssignment::Random)
        ],
        any::<bool>(),
        1usize..=3,
        prop_oneof![Just(Pooling::Paired), Just(Pooling::Arbitrary)],
        any::<bool>(),
        prop_oneof![Just((1024u16, 65535u16)), Just((5000u16, 5011u16))],
        prop_oneof![Just(65536usize), 1usize..=4],
    )
        .prop_map(
            |(mapping, filtering, pa, parity, n_ext, pooling, refresh, range, max)| NatConfig {
                mapping,
                filtering,
                port_assignment: pa,
                port_parity: parity,
                port_range: range,
                external: (1..=n_ext as u8)
                    .map(|i| Ipv4Addr::new(203, 0, 113, i))
                    .collect(),
                pooling,
                udp_timeout: Duration::from_secs(30),
                inbound_refresh: refresh,
                hairpinning: true,
                max_mappings: max,
                ..NatConfig::default()
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    /// Internal endpoint index -> remote index, after `dt` seconds.
    Out(usize, usize, u64),
    /// Remote index -> one of the external endpoints seen so far (index) or a made-up one.
    In(usize, usize, u64),
    /// `handle_timeout` after `dt` seconds.
    Tick(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            (0usize..6, 0usize..6, 0u64..12).prop_map(|(a, b, t)| Op::Out(a, b, t)),
            (0usize..6, 0usize..16, 0u64..12).prop_map(|(a, b, t)| Op::In(a, b, t)),
            (0u64..20).prop_map(Op::Tick),
        ],
        1..80,
    )
}

fn internal(i: usize) -> SocketAddrV4 {
    // Three hosts, two ports each (5000 and 5001: preservation collides across hosts).
    SocketAddrV4::new(
        Ipv4Addr::new(192, 168, 1, 2 + (i / 2) as u8),
        5000 + (i % 2) as u16,
    )
}

fn remote(i: usize) -> SocketAddrV4 {
    // Two IPs x three ports.
    SocketAddrV4::new(
        Ipv4Addr::new(198, 51, 100, 1 + (i / 3) as u8),
        3478 + (i % 3) as u16,
    )
}

/// One mapping as RFC 4787 defines it, tracked independently of the implementation.
#[derive(Debug)]
struct OMapping {
    internal: SocketAddrV4,
    key: (SocketAddrV4, Option<Ipv4Addr>, Option<u16>),
    external: SocketAddrV4,
    /// Remote endpoint -> when the permission to hear from it lapses.
    sent: HashMap<SocketAddrV4, Instant>,
    /// Inbound refresh without a matching live permission.
    base: Option<Instant>,
}

impl OMapping {
    fn expires(&self) -> Instant {
        self.sent.values().copied().chain(self.base).max().unwrap()
    }
}

struct Oracle {
    c: NatConfig,
    maps: Vec<OMapping>,
    /// Sequential assignment: the next port to try per external IP.
    cursor: HashMap<Ipv4Addr, u16>,
}

impl Oracle {
    fn key(
        &self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> (SocketAddrV4, Option<Ipv4Addr>, Option<u16>) {
        match self.c.mapping {
            Behavior::EndpointIndependent => (src, None, None),
            Behavior::AddressDependent => (src, Some(*dst.ip()), None),
            Behavior::AddressAndPortDependent => (src, Some(*dst.ip()), Some(dst.port())),
        }
    }
    fn gc(&mut self, now: Instant) {
        self.maps.retain(|m| m.expires() > now);
    }
    /// Is `(ip, port)` free for a new mapping of internal port `want`: in range, of the
    /// right parity (REQ-4) and not held by a live mapping.
    fn port_free(&self, ip: Ipv4Addr, port: u16, want: u16) -> bool {
        let (lo, hi) = self.c.port_range;
        (lo..=hi).contains(&port)
            && (!self.c.port_parity || port % 2 == want % 2)
            && !self
                .maps
                .iter()
                .any(|m| m.external == SocketAddrV4::new(ip, port))
    }
    /// Sequential assignment (RFC 4787 §4.2.1): the first free port at or after the port
    /// following the previous assignment on `ip`, wrapping around the range.
    fn next_sequential(&self, ip: Ipv4Addr, want: u16) -> Option<u16> {
        let (lo, hi) = self.c.port_range;
        let start = self.cursor.get(&ip).copied().unwrap_or(lo);
        (start..=hi)
            .chain(lo..start)
            .find(|p| self.port_free(ip, *p, want))
    }
    /// RFC 4787 §5 from the definitions.
    fn permits(&self, m: &OMapping, remote: SocketAddrV4, now: Instant) -> bool {
        match self.c.filtering {
            Behavior::EndpointIndependent => true,
            Behavior::AddressDependent => m
                .sent
                .iter()
                .any(|(r, t)| r.ip() == remote.ip() && *t > now),
            Behavior::AddressAndPortDependent => m.sent.get(&remote).is_some_and(|t| *t > now),
        }
    }
}

/// A NAT (one of a few presets) with live UDP, TCP and ICMP echo mappings made by real
/// packets, and a valid packet of `kind` for those mappings:
/// 0-5 UDP, TCP, echo outbound then inbound; 6-8 ICMP errors from outside quoting our
/// translated UDP, TCP, echo request (RFC 5508 §4 direction out->in); 9-11 ICMP errors from
/// inside quoting the translated inbound UDP, TCP, echo reply. Returns the NAT, the packet,
/// the side it arrives on, the side it must leave by and, for an ICMP error, the endpoint
/// the quoted packet must carry after translation (its source from outside, its
/// destination from inside).
fn live_traffic(
    preset: &str,
    kind: usize,
    seed: u64,
) -> (Nat, Vec<u8>, Side, Side, Option<SocketAddrV4>) {
    let ext_ip = Ipv4Addr::new(203, 0, 113, 1);
    let mut n = Nat::new(NatConfig::preset(preset, vec![ext_ip]).unwrap(), seed).unwrap();
    let now = Instant::now();
    let host = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 5000);
    let host_tcp = SocketAddrV4::new(*host.ip(), 40000);
    let server = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 3478);
    let server_tcp = SocketAddrV4::new(*server.ip(), 443);
    let router = Ipv4Addr::new(198, 51, 100, 254);
    let out = |n: &mut Nat, mut p: Vec<u8>| {
        assert_eq!(n.process(now, Side::Inside, &mut p), Ok(Side::Outside));
        p
    };
    let inb = |n: &mut Nat, mut p: Vec<u8>| {
        assert_eq!(n.process(now, Side::Outside, &mut p), Ok(Side::Inside));
        p
    };
    // Outbound first: they make the mappings.
    let u_out = out(&mut n, udp(host, server, b"udp payload"));
    let t_out = out(&mut n, tcp(host_tcp, server_tcp, 0x02, b""));
    let e_out = out(&mut n, icmp_echo(*host.ip(), *server.ip(), 8, 77, 1));
    let (ue, _) = endpoints(&u_out);
    let (te, _) = endpoints(&t_out);
    let (ee, _) = endpoints(&e_out);
    // Replies as the host receives them.
    let u_in = inb(&mut n, udp(server, ue, b"reply"));
    let t_in = inb(&mut n, tcp(server_tcp, te, 0x12, b""));
    let e_in = inb(&mut n, icmp_echo(*server.ip(), *ee.ip(), 0, ee.port(), 1));
    let from_out = |inner: &[u8]| icmp_error(router, *ue.ip(), 3, 3, inner);
    let from_in = |inner: &[u8]| icmp_error(*host.ip(), *server.ip(), 3, 3, inner);
    let (pkt, side) = match kind {
        0 => (udp(host, server, b"more"), Side::Inside),
        1 => (udp(server, ue, b"more"), Side::Outside),
        2 => (tcp(host_tcp, server_tcp, 0x10, b"data"), Side::Inside),
        3 => (tcp(server_tcp, te, 0x10, b"data"), Side::Outside),
        4 => (icmp_echo(*host.ip(), *server.ip(), 8, 77, 2), Side::Inside),
        5 => (
            icmp_echo(*server.ip(), *ee.ip(), 0, ee.port(), 2),
            Side::Outside,
        ),
        6 => (from_out(&u_out), Side::Outside),
        // RFC 792: the IP header and the first 8 bytes of the transport header.
        7 => (from_out(&t_out[..28]), Side::Outside),
        8 => (from_out(&e_out), Side::Outside),
        9 => (from_in(&u_in), Side::Inside),
        10 => (from_in(&t_in[..28]), Side::Inside),
        _ => (from_in(&e_in), Side::Inside),
    };
    let leaves = match side {
        Side::Inside => Side::Outside,
        Side::Outside => Side::Inside,
    };
    let quoted = match kind {
        6 => Some(host),
        7 => Some(host_tcp),
        8 => Some(SocketAddrV4::new(*host.ip(), 77)),
        9 => Some(ue),
        10 => Some(te),
        11 => Some(ee),
        _ => None,
    };
    (n, pkt, side, leaves, quoted)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random configurations and flow sequences: the NAT agrees with the oracle on every
    /// mapping reuse and every inbound decision, live mappings form a bijection, and EIM
    /// never gives one internal endpoint two external endpoints.
    #[test]
    fn nat_matches_rfc4787_oracle(c in config(), ops in ops(), seed in any::<u64>()) {
        let t = c.udp_timeout;
        let mut n = Nat::new(c.clone(), seed).unwrap();
        let mut o = Oracle { c: c.clone(), maps: Vec::new(), cursor: HashMap::new() };
        let mut now = Instant::now();
        let mut seen_ext: Vec<SocketAddrV4> = Vec::new();
        for op in ops {
            match op {
                Op::Out(i, r, dt) => {
                    now += Duration::from_secs(dt);
                    o.gc(now);
                    let (src, dst) = (internal(i), remote(r));
                    let key = o.key(src, dst);
                    let got = n.outbound(now, Protocol::Udp, src, dst);
                    match o.maps.iter_mut().find(|m| m.key == key) {
                        Some(m) => {
                            // A live mapping must be reused (RFC 4787 §4.1).
                            prop_assert_eq!(got, Ok(nat::Outbound { external: m.external, hairpin_to: None }));
                            m.sent.insert(dst, now + t);
                        }
                        None => match got {
                            Err(DropReason::TableFull) => {
                                prop_assert!(o.maps.len() >= c.max_mappings, "table full with {} live", o.maps.len());
                            }
                            Ok(out) => {
                                prop_assert!(o.maps.len() < c.max_mappings, "max_mappings {} exceeded", c.max_mappings);
                                prop_assert!(out.hairpin_to.is_none());
                                let e = out.external;
                                match c.port_assignment {
                                    // §4.2.1 port preservation: a free internal port is kept.
                                    PortAssignment::Preserve if o.port_free(*e.ip(), src.port(), src.port()) => {
                                        prop_assert_eq!(e.port(), src.port(), "preservation");
                                    }
                                    // Ports are handed out in order from the last one.
                                    PortAssignment::Sequential => {
                                        prop_assert_eq!(Some(e.port()), o.next_sequential(*e.ip(), src.port()), "sequential");
                                        let (lo, hi) = c.port_range;
                                        let next = if e.port() >= hi { lo } else { e.port() + 1 };
                                        o.cursor.insert(*e.ip(), next);
                                    }
                                    _ => {}
                                }
                                prop_assert!(c.external.contains(e.ip()));
                                prop_assert!((c.port_range.0..=c.port_range.1).contains(&e.port()));
                                if c.port_parity {
                                    prop_assert_eq!(e.port() % 2, src.port() % 2);
                                }
                                if c.pooling == Pooling::Paired {
                                    for m in o.maps.iter().filter(|m| m.internal.ip() == src.ip()) {
                                        prop_assert_eq!(m.external.ip(), e.ip());
                                    }
                                }
                                let mut sent = HashMap::new();
                                sent.insert(dst, now + t);
                                o.maps.push(OMapping { internal: src, key, external: e, sent, base: None });
                                seen_ext.push(e);
                            }
                            Err(DropReason::PortsExhausted) => {
                                // Only with the small range: 12 ports (6 per parity), and
                                // only when no external IP has one free.
                                prop_assert!(o.maps.len() < c.max_mappings);
                                prop_assert!(c.port_range.1 - c.port_range.0 < 100);
                                let paired = o.maps.iter().find(|m| m.internal.ip() == src.ip());
                                let pool = match (c.pooling, paired) {
                                    (Pooling::Paired, Some(m)) => vec![*m.external.ip()],
                                    _ => c.external.clone(),
                                };
                                for ip in pool {
                                    prop_assert_eq!(o.next_sequential(ip, src.port()), None, "a port is free on {}", ip);
                                }
                            }
                            Err(e) => prop_assert!(false, "unexpected {:?}", e),
                        },
                    }
                }
                Op::In(r, x, dt) => {
                    now += Duration::from_secs(dt);
                    o.gc(now);
                    let from = remote(r);
                    let ext = seen_ext.get(x).copied().unwrap_or(SocketAddrV4::new(c.external[0], 60000));
                    let got = n.inbound(now, Protocol::Udp, from, ext);
                    let idx = o.maps.iter().position(|m| m.external == ext);
                    match idx {
                        Some(k) if o.permits(&o.maps[k], from, now) => {
                            prop_assert_eq!(got, Ok(o.maps[k].internal));
                            if c.inbound_refresh {
                                let m = &mut o.maps[k];
                                match m.sent.get_mut(&from) {
                                    Some(exp) if *exp > now => *exp = now + t,
                                    _ => m.base = Some(now + t),
                                }
                            }
                        }
                        Some(_) => prop_assert_eq!(got, Err(DropReason::Filtered)),
                        None => prop_assert!(
                            matches!(got, Err(DropReason::NoMapping | DropReason::Expired)),
                            "{:?}", got
                        ),
                    }
                }
                Op::Tick(dt) => {
                    now += Duration::from_secs(dt);
                    o.gc(now);
                    n.handle_timeout(now);
                    // Every expired mapping is gone, every live one kept, and the next
                    // wake-up is the earliest live expiry.
                    prop_assert_eq!(n.mapping_count(), o.maps.len());
                    prop_assert_eq!(n.poll_timeout(), o.maps.iter().map(OMapping::expires).min());
                    let st = n.stats();
                    prop_assert_eq!(st.mappings_created - st.mappings_expired, o.maps.len() as u64);
                }
            }
            // Invariants over the implementation's live mappings.
            let live: Vec<_> = n.mappings().filter(|m| m.expires > now).collect();
            prop_assert_eq!(live.len(), o.maps.len());
            let ext: HashSet<_> = live.iter().map(|m| m.external).collect();
            prop_assert_eq!(ext.len(), live.len(), "two live mappings share an external endpoint");
            let keys: HashSet<_> = live.iter().map(|m| (m.internal, m.scope)).collect();
            prop_assert_eq!(keys.len(), live.len());
            if c.mapping == Behavior::EndpointIndependent {
                let internals: HashSet<_> = live.iter().map(|m| m.internal).collect();
                prop_assert_eq!(internals.len(), live.len(), "EIM gave one endpoint two mappings");
            }
            for m in &live {
                let om = o.maps.iter().find(|x| x.external == m.external).unwrap();
                prop_assert_eq!(om.internal, m.internal);
                prop_assert_eq!(om.expires(), m.expires);
            }
        }
    }

    /// Translated UDP and TCP packets keep valid checksums in both directions.
    #[test]
    fn checksums_stay_valid(
        sport in 1u16.., dport in 1u16.., src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        use_tcp in any::<bool>(), flags in any::<u8>(), options in 0usize..3, seed in any::<u64>(),
    ) {
        let mut cfg = NatConfig::preset("full-cone", vec![Ipv4Addr::new(203, 0, 113, 1)]).unwrap();
        cfg.port_assignment = PortAssignment::Random;
        let mut n = Nat::new(cfg, seed).unwrap();
        let dst_ip = Ipv4Addr::from(dst);
        prop_assume!(dst_ip != Ipv4Addr::new(203, 0, 113, 1));
        let s = SocketAddrV4::new(Ipv4Addr::from(src), sport);
        let d = SocketAddrV4::new(dst_ip, dport);
        let now = Instant::now();
        let mut p = if use_tcp {
            tcp(s, d, (flags | 0x02) & !0x04, &payload)
        } else {
            udp_opts(s, d, &payload, options * 4, true)
        };
        let len = p.len();
        prop_assert_eq!(n.process(now, Side::Inside, &mut p), Ok(Side::Outside));
        prop_assert_eq!(p.len(), len);
        assert_checksums(&p);
        let (e, _) = endpoints(&p);
        let mut r = if use_tcp { tcp(d, e, 0x12, &payload) } else { udp_opts(d, e, &payload, 0, true) };
        prop_assert_eq!(n.process(now, Side::Outside, &mut r), Ok(Side::Inside));
        assert_checksums(&r);
        prop_assert_eq!(endpoints(&r), (d, s));
    }

    /// Valid packets for live mappings (UDP, TCP, ICMP echo both ways, and ICMP errors both
    /// ways quoting a packet of a live mapping), then byte flips and truncation: `process`
    /// never panics and never changes the length; unmutated packets are translated, leave by
    /// the other side with valid checksums, and errors count as translated ICMP errors.
    #[test]
    fn process_never_panics_on_mutated_live_traffic(
        preset in prop_oneof![
            Just("full-cone"), Just("port-restricted-cone"), Just("symmetric"),
            Just("symmetric-random"), Just("firewall"),
        ],
        kind in 0usize..12,
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        cut in proptest::option::weighted(0.2, any::<usize>()),
        seed in any::<u64>(),
    ) {
        let (mut n, mut pkt, side, leaves, quoted) = live_traffic(preset, kind, seed);
        let now = Instant::now();
        let pristine = flips.is_empty() && cut.is_none();
        let len0 = pkt.len();
        for (i, x) in &flips {
            pkt[i % len0] ^= x;
        }
        if let Some(c) = cut {
            pkt.truncate(c % len0);
        }
        let len = pkt.len();
        let errors = n.stats().icmp_errors;
        let got = n.process(now, side, &mut pkt);
        prop_assert_eq!(pkt.len(), len);
        if pristine {
            prop_assert_eq!(got, Ok(leaves), "{} kind {}", preset, kind);
            assert_checksums(&pkt);
            prop_assert_eq!(n.stats().icmp_errors, errors + u64::from(quoted.is_some()));
            if let Some(q) = quoted {
                // The quoted header starts after the outer IP (20) and ICMP (8) headers; its
                // source (from outside) or destination (from inside) was translated back.
                let inner = &pkt[28..];
                let (addr_off, port_off) = match (side, inner[9]) {
                    (Side::Outside, 1) => (12, 24),
                    (Side::Inside, 1) => (16, 24),
                    (Side::Outside, _) => (12, 20),
                    (Side::Inside, _) => (16, 22),
                };
                let a: [u8; 4] = inner[addr_off..addr_off + 4].try_into().unwrap();
                let port = u16::from_be_bytes([inner[port_off], inner[port_off + 1]]);
                prop_assert_eq!(SocketAddrV4::new(Ipv4Addr::from(a), port), q);
            }
        }
    }

    /// `process` never panics, on random bytes or on random bytes behind a valid-looking
    /// IPv4 header, from either side, and never changes the length.
    #[test]
    fn process_never_panics(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..120),
        fix in any::<bool>(), proto in prop_oneof![Just(1u8), Just(6u8), Just(17u8), any::<u8>()],
        inside in any::<bool>(),
    ) {
        if fix && bytes.len() >= 20 {
            let ihl = 20 + 4 * usize::from(bytes[0] % 3);
            if bytes.len() >= ihl {
                bytes[0] = 0x40 | (ihl / 4) as u8;
                let total = bytes.len() as u16;
                bytes[2..4].copy_from_slice(&total.to_be_bytes());
                bytes[6] &= 0x20; // first fragment at most
                bytes[7] = 0;
                bytes[9] = proto;
                bytes[16..20].copy_from_slice(&[203, 0, 113, 1]);
                bytes[10] = 0;
                bytes[11] = 0;
                let c = pnet_packet::ipv4::checksum(&pnet_packet::ipv4::Ipv4Packet::new(&bytes[..ihl]).unwrap());
                bytes[10..12].copy_from_slice(&c.to_be_bytes());
            }
        }
        let mut n = Nat::new(NatConfig::preset("full-cone", vec![Ipv4Addr::new(203, 0, 113, 1)]).unwrap(), 0).unwrap();
        let now = Instant::now();
        // Some state so inbound lookups can succeed.
        for port in [0u16, 1, 5000] {
            let _ = n.outbound(now, Protocol::Udp, SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), port.max(1)), SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 3478));
        }
        let len = bytes.len();
        let side = if inside { Side::Inside } else { Side::Outside };
        let _ = n.process(now, side, &mut bytes);
        prop_assert_eq!(bytes.len(), len);
    }
}
