#![allow(clippy::unwrap_used)]
//! Packet-level translation: rewrites, checksums (verified with pnet), ICMP, malformed input.

mod common;

use std::time::Instant;

use common::{assert_checksums, endpoints, icmp_echo, icmp_error, ip, sa, tcp, udp, udp_opts};
use nat::{Behavior, DropReason, Nat, NatConfig, Side};

fn nat(filtering: Behavior) -> Nat {
    let c = NatConfig {
        filtering,
        external: vec![ip("203.0.113.1")],
        ..NatConfig::default()
    };
    Nat::new(c, 1).unwrap()
}

const HOST: &str = "192.168.1.2:5000";
const SERVER: &str = "198.51.100.1:3478";
const EXT: &str = "203.0.113.1:5000";

#[test]
fn udp_both_ways_with_valid_checksums() {
    let now = Instant::now();
    let mut n = nat(Behavior::AddressAndPortDependent);
    let mut p = udp(sa(HOST), sa(SERVER), b"binding request");
    let len = p.len();
    assert_eq!(n.process(now, Side::Inside, &mut p), Ok(Side::Outside));
    assert_eq!(p.len(), len);
    assert_eq!(endpoints(&p), (sa(EXT), sa(SERVER)));
    assert_checksums(&p);
    assert_eq!(&p[28..], b"binding request");

    let mut r = udp(sa(SERVER), sa(EXT), b"binding response");
    assert_eq!(n.process(now, Side::Outside, &mut r), Ok(Side::Inside));
    assert_eq!(endpoints(&r), (sa(SERVER), sa(HOST)));
    assert_checksums(&r);

    let mut other = udp(sa("198.51.100.1:3479"), sa(EXT), b"x");
    assert_eq!(
        n.process(now, Side::Outside, &mut other),
        Err(DropReason::Filtered)
    );
    assert_eq!(n.stats().dropped(DropReason::Filtered), 1);
    assert_eq!(n.stats().outbound, 1);
    assert_eq!(n.stats().inbound, 1);
}

#[test]
fn udp_without_checksum_keeps_zero_and_ip_options_are_respected() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let mut p = udp_opts(sa(HOST), sa(SERVER), b"abc", 8, false);
    assert_eq!(n.process(now, Side::Inside, &mut p), Ok(Side::Outside));
    assert_eq!(endpoints(&p), (sa(EXT), sa(SERVER)));
    assert_eq!(
        &p[28 + 6..28 + 8],
        &[0, 0],
        "UDP checksum 0 means none (RFC 768)"
    );
    assert_checksums(&p);
    let mut p = udp_opts(sa(HOST), sa(SERVER), b"abcd", 4, true);
    n.process(now, Side::Inside, &mut p).unwrap();
    assert_checksums(&p);
}

#[test]
fn trailing_bytes_after_total_length_are_untouched() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let mut p = udp(sa(HOST), sa(SERVER), b"abc");
    p.extend_from_slice(&[0xee; 5]);
    n.process(now, Side::Inside, &mut p).unwrap();
    assert_eq!(&p[p.len() - 5..], &[0xee; 5]);
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    assert_checksums(&p[..total]);
}

#[test]
fn tcp_handshake_translated_with_valid_checksums() {
    let now = Instant::now();
    let mut n = nat(Behavior::AddressAndPortDependent);
    let mut syn = tcp(sa(HOST), sa(SERVER), 0x02, b"");
    assert_eq!(n.process(now, Side::Inside, &mut syn), Ok(Side::Outside));
    assert_eq!(endpoints(&syn), (sa(EXT), sa(SERVER)));
    assert_checksums(&syn);
    let mut synack = tcp(sa(SERVER), sa(EXT), 0x12, b"");
    assert_eq!(n.process(now, Side::Outside, &mut synack), Ok(Side::Inside));
    assert_eq!(endpoints(&synack), (sa(SERVER), sa(HOST)));
    assert_checksums(&synack);
    let mut data = tcp(sa(HOST), sa(SERVER), 0x18, b"GET / HTTP/1.0\r\n\r\n");
    n.process(now, Side::Inside, &mut data).unwrap();
    assert_checksums(&data);
    // Established: the 2 h 4 min timeout applies.
    assert_eq!(
        n.poll_timeout(),
        Some(now + std::time::Duration::from_secs(124 * 60))
    );
    // An unsolicited SYN from elsewhere is silently dropped (RFC 5382 REQ-4).
    let mut stray = tcp(sa("198.51.100.66:80"), sa(EXT), 0x02, b"");
    assert_eq!(
        n.process(now, Side::Outside, &mut stray),
        Err(DropReason::Filtered)
    );
}

#[test]
fn icmp_echo_identifier_is_translated() {
    let now = Instant::now();
    let mut n = nat(Behavior::AddressAndPortDependent);
    let mut req = icmp_echo(ip("192.168.1.2"), ip("198.51.100.1"), 8, 0x0777, 1);
    assert_eq!(n.process(now, Side::Inside, &mut req), Ok(Side::Outside));
    assert_checksums(&req);
    let (src, dst) = endpoints(&req);
    assert_eq!(
        src,
        sa("203.0.113.1:1911"),
        "identifier preserved like a port"
    );
    assert_eq!(*dst.ip(), ip("198.51.100.1"));
    let mut rep = icmp_echo(ip("198.51.100.1"), ip("203.0.113.1"), 0, src.port(), 1);
    assert_eq!(n.process(now, Side::Outside, &mut rep), Ok(Side::Inside));
    assert_checksums(&rep);
    assert_eq!(endpoints(&rep).1, sa("192.168.1.2:1911"));
    // A reply from a host we did not ping is filtered (APDF with remote port 0).
    let mut stray = icmp_echo(ip("198.51.100.2"), ip("203.0.113.1"), 0, src.port(), 1);
    assert_eq!(
        n.process(now, Side::Outside, &mut stray),
        Err(DropReason::Filtered)
    );
    // Echo requests to the NAT itself are not answered.
    let mut ping_us = icmp_echo(ip("198.51.100.2"), ip("203.0.113.1"), 8, 1, 1);
    assert_eq!(
        n.process(now, Side::Outside, &mut ping_us),
        Err(DropReason::IcmpUnsupported)
    );
}

/// RFC 5508 §4 in spirit: a destination-unreachable about our outbound UDP comes back to the
/// inside host with the embedded packet exactly as the host sent it.
#[test]
fn icmp_error_from_outside_is_translated_exactly() {
    let now = Instant::now();
    let mut n = nat(Behavior::AddressAndPortDependent);
    let original = udp(sa(HOST), sa(SERVER), b"hello, are you there?");
    let mut out = original.clone();
    n.process(now, Side::Inside, &mut out).unwrap();
    for quoted in [28usize, out.len()] {
        // From the server itself (port unreachable) and from a router on the path (time
        // exceeded): both are about a packet of a live session.
        for (from, ty, code) in [(ip("198.51.100.1"), 3u8, 3u8), (ip("192.0.2.254"), 11, 0)] {
            let mut err = icmp_error(from, ip("203.0.113.1"), ty, code, &out[..quoted]);
            let len = err.len();
            assert_eq!(n.process(now, Side::Outside, &mut err), Ok(Side::Inside));
            assert_eq!(err.len(), len);
            assert_checksums(&err);
            assert_eq!(&err[12..16], &from.octets());
            assert_eq!(&err[16..20], &ip("192.168.1.2").octets());
            // The quoted packet is byte for byte what the host sent: addresses, port, IP
            // checksum and UDP checksum (even when the quote is cut after 8 bytes).
            assert_eq!(&err[28..], &original[..quoted]);
        }
    }
    assert_eq!(n.stats().icmp_errors, 4);
}

#[test]
fn icmp_error_about_tcp_and_echo() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let original = tcp(sa(HOST), sa(SERVER), 0x02, b"");
    let mut out = original.clone();
    n.process(now, Side::Inside, &mut out).unwrap();
    let mut err = icmp_error(ip("192.0.2.254"), ip("203.0.113.1"), 11, 0, &out);
    assert_eq!(n.process(now, Side::Outside, &mut err), Ok(Side::Inside));
    assert_checksums(&err);
    assert_eq!(&err[28..], &original[..]);

    let ping = icmp_echo(ip("192.168.1.2"), ip("198.51.100.1"), 8, 4242, 9);
    let mut out = ping.clone();
    n.process(now, Side::Inside, &mut out).unwrap();
    let mut err = icmp_error(ip("192.0.2.254"), ip("203.0.113.1"), 11, 0, &out[..28]);
    assert_eq!(n.process(now, Side::Outside, &mut err), Ok(Side::Inside));
    assert_checksums(&err);
    assert_eq!(&err[28..], &ping[..28]);
}

#[test]
fn icmp_errors_need_a_matching_session() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let mut out = udp(sa(HOST), sa(SERVER), b"x");
    n.process(now, Side::Inside, &mut out).unwrap();
    // About a packet to a remote the mapping never sent to.
    let mut fake = udp(sa(EXT), sa("198.51.100.77:1"), b"x");
    let _ = &mut fake;
    let mut err = icmp_error(ip("198.51.100.77"), ip("203.0.113.1"), 3, 3, &fake);
    assert_eq!(
        n.process(now, Side::Outside, &mut err),
        Err(DropReason::Filtered)
    );
    // About an external port with no mapping.
    let fake = udp(sa("203.0.113.1:9"), sa(SERVER), b"x");
    let mut err = icmp_error(ip("198.51.100.1"), ip("203.0.113.1"), 3, 3, &fake);
    assert_eq!(
        n.process(now, Side::Outside, &mut err),
        Err(DropReason::NoMapping)
    );
    // Addressed to someone other than the quoted source.
    let mut err = icmp_error(
        ip("198.51.100.1"),
        ip("203.0.113.1"),
        3,
        3,
        &udp(sa("203.0.113.2:5000"), sa(SERVER), b""),
    );
    assert_eq!(
        n.process(now, Side::Outside, &mut err),
        Err(DropReason::NotForUs)
    );
    // Quote too short to hold the ports.
    let mut err = icmp_error(ip("198.51.100.1"), ip("203.0.113.1"), 3, 3, &out[..24]);
    assert_eq!(
        n.process(now, Side::Outside, &mut err),
        Err(DropReason::Malformed)
    );
}

/// An internal host's port-unreachable about an inbound packet goes out with the external
/// endpoint the remote used.
#[test]
fn icmp_error_from_inside_is_translated_outward() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let mut out = udp(sa(HOST), sa(SERVER), b"x");
    n.process(now, Side::Inside, &mut out).unwrap();
    let inbound = udp(sa("198.51.100.9:777"), sa(EXT), b"unsolicited but EIF");
    let mut delivered = inbound.clone();
    assert_eq!(
        n.process(now, Side::Outside, &mut delivered),
        Ok(Side::Inside)
    );
    let mut err = icmp_error(ip("192.168.1.2"), ip("198.51.100.9"), 3, 3, &delivered);
    assert_eq!(n.process(now, Side::Inside, &mut err), Ok(Side::Outside));
    assert_checksums(&err);
    assert_eq!(&err[12..16], &ip("203.0.113.1").octets());
    assert_eq!(
        &err[28..],
        &inbound[..],
        "the remote sees its own packet quoted"
    );
}

#[test]
fn hairpin_at_packet_level() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let mut a = udp(sa(HOST), sa(SERVER), b"");
    n.process(now, Side::Inside, &mut a).unwrap();
    let mut b = udp(sa("192.168.1.3:6000"), sa(SERVER), b"");
    n.process(now, Side::Inside, &mut b).unwrap();
    let mut h = udp(sa("192.168.1.3:6000"), sa(EXT), b"hairpin");
    assert_eq!(n.process(now, Side::Inside, &mut h), Ok(Side::Inside));
    assert_eq!(endpoints(&h), (sa("203.0.113.1:6000"), sa(HOST)));
    assert_checksums(&h);
}

#[test]
fn malformed_packets_are_dropped_with_a_reason() {
    let now = Instant::now();
    let mut n = nat(Behavior::EndpointIndependent);
    let good = udp(sa(HOST), sa(SERVER), b"payload");
    let fix_ip_csum = |p: &mut Vec<u8>| {
        let ihl = usize::from(p[0] & 0xf) * 4;
        p[10] = 0;
        p[11] = 0;
        let c = pnet_packet::ipv4::checksum(
            &pnet_packet::ipv4::Ipv4Packet::new(&p[..ihl.min(p.len())]).unwrap(),
        );
        p[10..12].copy_from_slice(&c.to_be_bytes());
    };
    let mut cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("empty", vec![], DropReason::Malformed),
        ("short", good[..19].to_vec(), DropReason::Malformed),
    ];
    let mut v6 = good.clone();
    v6[0] = 0x65;
    cases.push(("version 6", v6, DropReason::Malformed));
    let mut ihl4 = good.clone();
    ihl4[0] = 0x44;
    cases.push(("ihl 4", ihl4, DropReason::Malformed));
    let mut ihl15 = good.clone(); // 35 bytes, IHL says 60
    ihl15[0] = 0x4f;
    cases.push(("ihl beyond packet", ihl15, DropReason::Malformed));
    let mut long = good.clone();
    long[2..4].copy_from_slice(&200u16.to_be_bytes());
    fix_ip_csum(&mut long);
    cases.push(("total length beyond buffer", long, DropReason::Malformed));
    let mut bad_csum = good.clone();
    bad_csum[10] ^= 0xff;
    cases.push(("bad header checksum", bad_csum, DropReason::Malformed));
    let mut frag = good.clone();
    frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
    fix_ip_csum(&mut frag);
    cases.push(("non-first fragment", frag, DropReason::Fragment));
    let mut gre = good.clone();
    gre[9] = 47;
    fix_ip_csum(&mut gre);
    cases.push(("GRE", gre, DropReason::UnsupportedProtocol));
    let mut ulen = good.clone();
    ulen[24..26].copy_from_slice(&4u16.to_be_bytes());
    cases.push(("UDP length < 8", ulen, DropReason::Malformed));
    let mut ulong = good.clone();
    ulong[24..26].copy_from_slice(&100u16.to_be_bytes());
    cases.push(("UDP length beyond packet", ulong, DropReason::Malformed));
    let short_tcp = tcp(sa(HOST), sa(SERVER), 0x02, b"");
    let mut t = short_tcp[..30].to_vec();
    t[2..4].copy_from_slice(&30u16.to_be_bytes());
    fix_ip_csum(&mut t);
    cases.push(("TCP header cut", t, DropReason::Malformed));
    let mut doff = short_tcp.clone();
    doff[32] = 0xf0;
    cases.push(("TCP data offset beyond packet", doff, DropReason::Malformed));
    let mut ts = icmp_echo(ip("192.168.1.2"), ip("198.51.100.1"), 13, 1, 1);
    ts[20] = 13;
    cases.push(("ICMP timestamp", ts, DropReason::IcmpUnsupported));

    for (i, (name, mut p, want)) in cases.into_iter().enumerate() {
        let before = p.clone();
        assert_eq!(n.process(now, Side::Inside, &mut p), Err(want), "{name}");
        assert_eq!(p, before, "{name}: a dropped packet is not modified");
        assert_eq!(n.stats().dropped_total(), i as u64 + 1);
    }
    assert_eq!(n.mapping_count(), 0);

    // A first fragment carries the ports and is translated.
    let mut first = good.clone();
    first[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ip_csum(&mut first);
    assert_eq!(n.process(now, Side::Inside, &mut first), Ok(Side::Outside));
    assert_checksums(&first);
}
