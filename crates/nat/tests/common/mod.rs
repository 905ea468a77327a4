//! Packet builders and independent checksum verification (pnet's helpers, not ours).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use pnet_packet::Packet;
use pnet_packet::icmp::IcmpPacket;
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::tcp::{self, MutableTcpPacket, TcpPacket};
use pnet_packet::udp::{self, MutableUdpPacket, UdpPacket};

pub(crate) fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

pub(crate) fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// An IPv4 header of `options_len` bytes of options (multiple of 4) around `payload`.
pub(crate) fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options_len: usize,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 20 + options_len;
    let mut buf = vec![0u8; ihl + payload.len()];
    {
        let mut p = MutableIpv4Packet::new(&mut buf).unwrap();
        p.set_version(4);
        p.set_header_length((ihl / 4) as u8);
        p.set_total_length((ihl + payload.len()) as u16);
        p.set_identification(0x1234);
        p.set_ttl(64);
        p.set_next_level_protocol(pnet_packet::ip::IpNextHeaderProtocol(proto));
        p.set_source(src);
        p.set_destination(dst);
    }
    for i in 0..options_len {
        buf[20 + i] = 1; // NOP options
    }
    buf[ihl..].copy_from_slice(payload);
    let c = ipv4::checksum(&Ipv4Packet::new(&buf).unwrap());
    buf[10..12].copy_from_slice(&c.to_be_bytes());
    buf
}

pub(crate) fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    udp_opts(src, dst, payload, 0, true)
}

pub(crate) fn udp_opts(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    options_len: usize,
    csum: bool,
) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload.len()];
    {
        let mut p = MutableUdpPacket::new(&mut u).unwrap();
        p.set_source(src.port());
        p.set_destination(dst.port());
        p.set_length((8 + payload.len()) as u16);
        p.set_payload(payload);
    }
    if csum {
        let c = udp::ipv4_checksum(&UdpPacket::new(&u).unwrap(), src.ip(), dst.ip());
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    ipv4(*src.ip(), *dst.ip(), 17, options_len, &u)
}

pub(crate) fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20 + payload.len()];
    {
        let mut p = MutableTcpPacket::new(&mut t).unwrap();
        p.set_source(src.port());
        p.set_destination(dst.port());
        p.set_sequence(1000);
        p.set_acknowledgement(0);
        p.set_data_offset(5);
        p.set_flags(flags);
        p.set_window(65535);
        p.set_payload(payload);
    }
    let c = tcp::ipv4_checksum(&TcpPacket::new(&t).unwrap(), src.ip(), dst.ip());
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(*src.ip(), *dst.ip(), 6, 0, &t)
}

pub(crate) fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"ping payload");
    let c = pnet_packet::icmp::checksum(&IcmpPacket::new(&m).unwrap());
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, 0, &m)
}

/// An ICMP error from `src` to `dst` quoting `embedded` (already cut as wanted).
pub(crate) fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    embedded: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(embedded);
    let c = pnet_packet::icmp::checksum(&IcmpPacket::new(&m).unwrap());
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, 0, &m)
}

fn same(field: u16, computed: u16) -> bool {
    // 0x0000 and 0xffff are both one's-complement zero.
    field == computed || (field | computed == 0xffff && (field == 0 || computed == 0))
}

/// Assert that the IPv4 header checksum and the transport checksum (UDP, TCP, ICMP) are
/// right, computed independently with pnet.
pub(crate) fn assert_checksums(buf: &[u8]) {
    let p = Ipv4Packet::new(buf).unwrap();
    assert!(
        same(p.get_checksum(), ipv4::checksum(&p)),
        "IPv4 header checksum"
    );
    let ihl = usize::from(p.get_header_length()) * 4;
    let total = usize::from(p.get_total_length());
    let l4 = &buf[ihl..total];
    let (s, d) = (p.get_source(), p.get_destination());
    match p.get_next_level_protocol() {
        IpNextHeaderProtocols::Udp => {
            let u = UdpPacket::new(l4).unwrap();
            if u.get_checksum() != 0 {
                assert!(
                    same(u.get_checksum(), udp::ipv4_checksum(&u, &s, &d)),
                    "UDP checksum"
                );
            }
        }
        IpNextHeaderProtocols::Tcp => {
            let t = TcpPacket::new(l4).unwrap();
            assert!(
                same(t.get_checksum(), tcp::ipv4_checksum(&t, &s, &d)),
                "TCP checksum"
            );
        }
        IpNextHeaderProtocols::Icmp => {
            let i = IcmpPacket::new(l4).unwrap();
            assert!(
                same(i.get_checksum(), pnet_packet::icmp::checksum(&i)),
                "ICMP checksum"
            );
        }
        other => panic!("unexpected protocol {other}"),
    }
}

/// Source and destination endpoints of a UDP or TCP packet (ICMP echo: identifier as both
/// ports).
pub(crate) fn endpoints(buf: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let p = Ipv4Packet::new(buf).unwrap();
    let l4 = p.payload();
    let (sp, dp) = match p.get_next_level_protocol() {
        IpNextHeaderProtocols::Icmp => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    (
        SocketAddrV4::new(p.get_source(), sp),
        SocketAddrV4::new(p.get_destination(), dp),
    )
}
