//! Packet level: parse a whole IPv4 packet, ask the flow-level core, rewrite in place.
//!
//! Rule for this module: every byte access goes through [`get`], [`be16`] or a slice whose
//! length was checked just before; hostile input yields a [`DropReason`], never a panic.
//! Checksums are updated incrementally (RFC 1624 eqn. 3), so a packet that arrived with a
//! wrong transport checksum leaves with a wrong one; only the ICMP checksum of a translated
//! ICMP error is recomputed in full (its payload changed in several places).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use crate::checksum;
use crate::nat::{DropReason, Nat, Protocol, Side, TcpFlags};

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

fn get(p: &[u8], i: usize) -> Result<u8, DropReason> {
    p.get(i).copied().ok_or(DropReason::Malformed)
}

fn be16(p: &[u8], i: usize) -> Result<u16, DropReason> {
    Ok(u16::from_be_bytes([get(p, i)?, get(p, i + 1)?]))
}

fn put16(p: &mut [u8], i: usize, v: u16) {
    if let Some(s) = p.get_mut(i..i + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn ip_at(p: &[u8], i: usize) -> Result<Ipv4Addr, DropReason> {
    Ok(Ipv4Addr::new(
        get(p, i)?,
        get(p, i + 1)?,
        get(p, i + 2)?,
        get(p, i + 3)?,
    ))
}

/// One's complement sum of `data` (odd trailing byte padded with zero), folded to 16 bits,
/// not complemented.
pub(crate) fn ones_sum(data: &[u8]) -> u32 {
    u32::from(checksum::fold(checksum::sum(data, 0)))
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
pub(crate) fn csum_adjust(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!csum) + u64::from(!old) + u64::from(new);
    !checksum::fold(sum)
}

fn csum_adjust_ip(csum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    let o = old.octets();
    let n = new.octets();
    let c = csum_adjust(
        csum,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([n[0], n[1]]),
    );
    csum_adjust(
        c,
        u16::from_be_bytes([o[2], o[3]]),
        u16::from_be_bytes([n[2], n[3]]),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Src,
    Dst,
}

/// An IPv4 header whose fields were checked against the buffer.
#[derive(Debug, Clone, Copy)]
struct Ip {
    ihl: usize,
    total: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    more_fragments: bool,
}

/// Parse the outer header: version, IHL, total length, header checksum, fragments.
fn parse_outer(p: &[u8]) -> Result<Ip, DropReason> {
    let vi = get(p, 0)?;
    if vi >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(vi & 0x0f) * 4;
    if ihl < 20 || ihl > p.len() {
        return Err(DropReason::Malformed);
    }
    let total = usize::from(be16(p, 2)?);
    if total < ihl || total > p.len() {
        return Err(DropReason::Malformed);
    }
    let header = p.get(..ihl).ok_or(DropReason::Malformed)?;
    if ones_sum(header) != 0xffff {
        return Err(DropReason::Malformed);
    }
    let frag = be16(p, 6)?;
    if frag & 0x1fff != 0 {
        return Err(DropReason::Fragment);
    }
    Ok(Ip {
        ihl,
        total,
        proto: get(p, 9)?,
        src: ip_at(p, 12)?,
        dst: ip_at(p, 16)?,
        more_fragments: frag & 0x2000 != 0,
    })
}

/// Parse the IP header embedded in an ICMP error: it may be truncated, so only the header
/// and the first 8 transport bytes are required.
fn parse_inner(p: &[u8]) -> Result<Ip, DropReason> {
    let vi = get(p, 0)?;
    if vi >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(vi & 0x0f) * 4;
    if ihl < 20 || ihl + 8 > p.len() {
        return Err(DropReason::Malformed);
    }
    let frag = be16(p, 6)?;
    if frag & 0x1fff != 0 {
        return Err(DropReason::Fragment);
    }
    Ok(Ip {
        ihl,
        total: p.len(),
        proto: get(p, 9)?,
        src: ip_at(p, 12)?,
        dst: ip_at(p, 16)?,
        more_fragments: frag & 0x2000 != 0,
    })
}

/// Rewrite the source or destination endpoint of the IP packet in `p` (header length
/// `ihl`): address, port (ICMP: identifier), IP header checksum and the transport checksum
/// when it lies within `p`.
fn rewrite(
    p: &mut [u8],
    ihl: usize,
    proto: u8,
    which: Which,
    new: SocketAddrV4,
) -> Result<(), DropReason> {
    let ip_off = if which == Which::Src { 12 } else { 16 };
    let old_ip = ip_at(p, ip_off)?;
    let (port_off, csum_off) = match proto {
        PROTO_UDP => (ihl + if which == Which::Src { 0 } else { 2 }, ihl + 6),
        PROTO_TCP => (ihl + if which == Which::Src { 0 } else { 2 }, ihl + 16),
        _ => (ihl + 4, ihl + 2),
    };
    let old_port = be16(p, port_off)?;
    if old_ip != *new.ip() {
        let c = be16(p, 10)?;
        put16(p, 10, csum_adjust_ip(c, old_ip, *new.ip()));
        if let Some(s) = p.get_mut(ip_off..ip_off + 4) {
            s.copy_from_slice(&new.ip().octets());
        }
    }
    put16(p, port_off, new.port());
    if let Ok(mut c) = be16(p, csum_off) {
        if proto == PROTO_UDP && c == 0 {
            return Ok(()); // no checksum (RFC 768)
        }
        if proto != PROTO_ICMP {
            c = csum_adjust_ip(c, old_ip, *new.ip());
        }
        c = csum_adjust(c, old_port, new.port());
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        put16(p, csum_off, c);
    }
    Ok(())
}

/// Rewrite only an address (outer header of an ICMP error: ICMP has no pseudo-header).
fn rewrite_addr(p: &mut [u8], which: Which, new: Ipv4Addr) -> Result<(), DropReason> {
    let ip_off = if which == Which::Src { 12 } else { 16 };
    let old = ip_at(p, ip_off)?;
    let c = be16(p, 10)?;
    put16(p, 10, csum_adjust_ip(c, old, new));
    if let Some(s) = p.get_mut(ip_off..ip_off + 4) {
        s.copy_from_slice(&new.octets());
    }
    Ok(())
}

/// Recompute the ICMP checksum over `icmp` in full.
fn icmp_checksum(icmp: &mut [u8]) {
    put16(icmp, 2, 0);
    let c = !(ones_sum(icmp) as u16);
    put16(icmp, 2, c);
}

fn ports(p: &[u8], off: usize) -> Result<(u16, u16), DropReason> {
    Ok((be16(p, off)?, be16(p, off + 2)?))
}

impl Nat {
    /// Translate one whole IPv4 packet that arrived on `from`, in place (addresses, ports or
    /// ICMP identifiers, IPv4 and transport checksums; for ICMP errors the embedded header
    /// too). The length never changes. Returns the side it leaves by (a hairpinned packet
    /// arrives and leaves `Inside`) or why it was dropped (also counted in [`Nat::stats`]).
    pub fn process(
        &mut self,
        now: Instant,
        from: Side,
        packet: &mut [u8],
    ) -> Result<Side, DropReason> {
        let r = self.process_packet(now, from, packet);
        if let Err(reason) = r {
            self.stats.count_drop(reason);
            tracing::trace!(?from, reason = reason.as_str(), "packet dropped");
        }
        r
    }

    fn process_packet(
        &mut self,
        now: Instant,
        from: Side,
        packet: &mut [u8],
    ) -> Result<Side, DropReason> {
        let ip = parse_outer(packet)?;
        let pkt = packet.get_mut(..ip.total).ok_or(DropReason::Malformed)?;
        let l4_len = ip.total - ip.ihl;
        match ip.proto {
            PROTO_UDP => {
                if l4_len < 8 {
                    return Err(DropReason::Malformed);
                }
                let ulen = usize::from(be16(pkt, ip.ihl + 4)?);
                if ulen < 8 || (!ip.more_fragments && ulen > l4_len) {
                    return Err(DropReason::Malformed);
                }
                let (sport, dport) = ports(pkt, ip.ihl)?;
                self.translate(
                    now,
                    from,
                    pkt,
                    &ip,
                    Protocol::Udp,
                    sport,
                    dport,
                    TcpFlags::NONE,
                )
            }
            PROTO_TCP => {
                if l4_len < 20 {
                    return Err(DropReason::Malformed);
                }
                let doff = usize::from(get(pkt, ip.ihl + 12)? >> 4) * 4;
                if doff < 20 || (!ip.more_fragments && doff > l4_len) {
                    return Err(DropReason::Malformed);
                }
                let flags = TcpFlags(get(pkt, ip.ihl + 13)? & 0x17);
                let (sport, dport) = ports(pkt, ip.ihl)?;
                self.translate(now, from, pkt, &ip, Protocol::Tcp, sport, dport, flags)
            }
            PROTO_ICMP => {
                if l4_len < 8 {
                    return Err(DropReason::Malformed);
                }
                if ip.more_fragments {
                    // An ICMP message split in fragments: the error payload may be cut.
                    return Err(DropReason::Fragment);
                }
                self.translate_icmp(now, from, pkt, &ip)
            }
            _ => Err(DropReason::UnsupportedProtocol),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn translate(
        &mut self,
        now: Instant,
        from: Side,
        pkt: &mut [u8],
        ip: &Ip,
        proto: Protocol,
        sport: u16,
        dport: u16,
        flags: TcpFlags,
    ) -> Result<Side, DropReason> {
        let src = SocketAddrV4::new(ip.src, sport);
        let dst = SocketAddrV4::new(ip.dst, dport);
        match from {
            Side::Inside => {
                let out = self.outbound_flow(now, proto, src, dst, flags)?;
                rewrite(pkt, ip.ihl, ip.proto, Which::Src, out.external)?;
                match out.hairpin_to {
                    Some(to) => {
                        rewrite(pkt, ip.ihl, ip.proto, Which::Dst, to)?;
                        Ok(Side::Inside)
                    }
                    None => Ok(Side::Outside),
                }
            }
            Side::Outside => {
                let internal = self.inbound_flow(now, proto, src, dst, flags)?;
                rewrite(pkt, ip.ihl, ip.proto, Which::Dst, internal)?;
                Ok(Side::Inside)
            }
        }
    }

    fn translate_icmp(
        &mut self,
        now: Instant,
        from: Side,
        pkt: &mut [u8],
        ip: &Ip,
    ) -> Result<Side, DropReason> {
        let ty = get(pkt, ip.ihl)?;
        match (ty, from) {
            (ICMP_ECHO_REQUEST, Side::Inside) => {
                if self.is_external(ip.dst) {
                    // Pinging our own external address from inside: no ICMP hairpinning.
                    return Err(DropReason::IcmpUnsupported);
                }
                let id = be16(pkt, ip.ihl + 4)?;
                let out = self.outbound_flow(
                    now,
                    Protocol::Icmp,
                    SocketAddrV4::new(ip.src, id),
                    SocketAddrV4::new(ip.dst, 0),
                    TcpFlags::NONE,
                )?;
                rewrite(pkt, ip.ihl, PROTO_ICMP, Which::Src, out.external)?;
                Ok(Side::Outside)
            }
            (ICMP_ECHO_REPLY, Side::Outside) => {
                let id = be16(pkt, ip.ihl + 4)?;
                let internal = self.inbound_flow(
                    now,
                    Protocol::Icmp,
                    SocketAddrV4::new(ip.src, 0),
                    SocketAddrV4::new(ip.dst, id),
                    TcpFlags::NONE,
                )?;
                rewrite(pkt, ip.ihl, PROTO_ICMP, Which::Dst, internal)?;
                Ok(Side::Inside)
            }
            (ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM, _) => {
                self.translate_icmp_error(now, from, pkt, ip)
            }
            _ => Err(DropReason::IcmpUnsupported),
        }
    }

    /// RFC 5508 §4 in spirit: an ICMP error about a packet of a live mapping is translated
    /// back: the outer address and the embedded packet's address, port (or identifier) and
    /// checksums.
    fn translate_icmp_error(
        &mut self,
        now: Instant,
        from: Side,
        pkt: &mut [u8],
        ip: &Ip,
    ) -> Result<Side, DropReason> {
        let inner_off = ip.ihl + 8;
        let inner_buf = pkt.get(inner_off..).ok_or(DropReason::Malformed)?;
        let inner = parse_inner(inner_buf)?;
        let (proto, a, b) = match inner.proto {
            PROTO_UDP | PROTO_TCP => {
                let (sp, dp) = ports(inner_buf, inner.ihl)?;
                let proto = if inner.proto == PROTO_UDP {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                (proto, sp, dp)
            }
            PROTO_ICMP => {
                let ity = get(inner_buf, inner.ihl)?;
                let id = be16(inner_buf, inner.ihl + 4)?;
                match (ity, from) {
                    // Outside: an error about our echo request; inside: about an echo reply
                    // that came in.
                    (ICMP_ECHO_REQUEST, Side::Outside) => (Protocol::Icmp, id, 0),
                    (ICMP_ECHO_REPLY, Side::Inside) => (Protocol::Icmp, 0, id),
                    _ => return Err(DropReason::IcmpUnsupported),
                }
            }
            _ => return Err(DropReason::UnsupportedProtocol),
        };
        let inner_src = SocketAddrV4::new(inner.src, a);
        let inner_dst = SocketAddrV4::new(inner.dst, b);
        let side = match from {
            Side::Outside => {
                // The embedded packet went out from our external endpoint to a remote one.
                if ip.dst != inner.src {
                    return Err(DropReason::NotForUs);
                }
                if self.config().mode == crate::Mode::Nat && !self.is_external(ip.dst) {
                    return Err(DropReason::NotForUs);
                }
                let internal = self.error_inbound(now, proto, inner_src, inner_dst)?;
                let inner_pkt = pkt.get_mut(inner_off..).ok_or(DropReason::Malformed)?;
                rewrite(inner_pkt, inner.ihl, inner.proto, Which::Src, internal)?;
                rewrite_addr(pkt, Which::Dst, *internal.ip())?;
                Side::Inside
            }
            Side::Inside => {
                // The embedded packet came in from a remote endpoint to an internal one.
                let external = self.error_outbound(now, proto, inner_dst, inner_src)?;
                let inner_pkt = pkt.get_mut(inner_off..).ok_or(DropReason::Malformed)?;
                rewrite(inner_pkt, inner.ihl, inner.proto, Which::Dst, external)?;
                rewrite_addr(pkt, Which::Src, *external.ip())?;
                Side::Outside
            }
        };
        let icmp = pkt.get_mut(ip.ihl..).ok_or(DropReason::Malformed)?;
        icmp_checksum(icmp);
        self.stats.icmp_errors += 1;
        Ok(side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1624_incremental_matches_full_recompute() {
        // RFC 1624 §4 example: a header word changes from 0x5555 to 0x3285.
        let mut data = vec![0x12u8, 0x34, 0x55, 0x55, 0x9a, 0xbc, 0x00, 0x00];
        let c = !(ones_sum(&data) as u16);
        data[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(ones_sum(&data), 0xffff);
        let c2 = csum_adjust(c, 0x5555, 0x3285);
        data[2..4].copy_from_slice(&[0x32, 0x85]);
        data[6..8].copy_from_slice(&c2.to_be_bytes());
        assert_eq!(ones_sum(&data), 0xffff);
    }

    #[test]
    fn odd_length_sum_pads_with_zero() {
        assert_eq!(ones_sum(&[0x01]), 0x0100);
        assert_eq!(ones_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
    }
}
