//! Writing to TUN devices with a virtio-net header (IFF_VNET_HDR), so that consecutive UDP
//! datagrams of one flow, bound for one device in one burst, go into the kernel as one UDP GSO
//! packet (`VIRTIO_NET_HDR_GSO_UDP_L4`, Linux 6.2+): one `writev` and one pass through the
//! receiving namespace's IP layer instead of one per datagram. The kernel splits it again where
//! it delivers to a socket (or, in a kernel NAT box, where it sends the packet on), so what a
//! program receives is what was sent: the same datagrams, in order, with the same addresses,
//! ports, payloads, TTL, TOS and flags, and the same IP IDs (only a run of consecutive IDs is
//! merged, as the kernel numbers the pieces `id, id+1, ...`), each with a correct UDP checksum.
//! Merging only ever takes datagrams whose IPv4 header checksum and UDP checksum verified, so a
//! corrupt or checksum-less datagram is written alone, untouched, and meets the receiver's stack
//! as it is. pcap files record the datagrams before this step. The technique is the one
//! wireguard-go and Tailscale use on their TUN devices.
//!
//! What sees the merged packet rather than the datagrams: the receiving namespace's IP layer
//! (and a kernel NAT box's conntrack and nftables), raw sockets and captures inside it, sockets
//! with UDP_GRO on (they get the data coalesced, as from a real GRO-capable NIC), and ICMP
//! errors raised before the split: a run to a closed port gets one port-unreachable, quoting the
//! merged header, where separate datagrams would each get one (the kernel rate-limits those to
//! a burst of 50 anyway). Datagrams with TTL 1 or 0 are never merged, so a kernel box's
//! time-exceeded errors stay per datagram. `NATSCOPE_FABRIC_GSO=off` writes every datagram
//! alone; a kernel that refuses merged frames (before 6.2) turns merging off by itself.
//!
//! Reads carry the same header; with no offload negotiated (no TUNSETOFFLOAD) the kernel hands
//! over whole, checksummed packets, but a header asking for a checksum is honoured anyway.

use nat::checksum::{fold, sum as ones_sum};

/// Size of `struct virtio_net_hdr`, the TUN default (TUNSETVNETHDRSZ is not used).
pub(crate) const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
const GSO_UDP_L4: u8 = 5;
/// IPv4 header (no options) plus UDP header: the part of the first datagram that heads a
/// merged packet.
const HEAD_LEN: usize = 28;
/// At most this many datagrams in one merged packet (the kernel's UDP_MAX_SEGMENTS was 64
/// before Linux 6.9).
const MAX_SEGS: usize = 64;
/// A merged packet must fit an IPv4 total length.
const MAX_TOTAL: usize = 65_535;

/// The header in front of a packet read from a TUN device, as far as the fabric cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadHeader {
    /// An ordinary, complete packet.
    Plain,
    /// The kernel left the transport checksum to be filled in: start and offset of the field.
    NeedsChecksum { start: usize, offset: usize },
    /// A GSO packet (never asked for, so never expected): the fabric drops it.
    Segmented,
}

/// Parse the virtio-net header of a packet read from a TUN device.
pub(crate) fn read_header(hdr: &[u8]) -> Option<ReadHeader> {
    let h = hdr.get(..VNET_HDR_LEN)?;
    let le = |i: usize| usize::from(u16::from_le_bytes([h[i], h[i + 1]]));
    if h[1] & 0x7f != GSO_NONE {
        return Some(ReadHeader::Segmented);
    }
    if h[0] & F_NEEDS_CSUM != 0 {
        return Some(ReadHeader::NeedsChecksum {
            start: le(6),
            offset: le(8),
        });
    }
    Some(ReadHeader::Plain)
}

/// Fill in a checksum the kernel left partial: the ones' complement of the sum from `start` to
/// the end of the packet (the field holds the pseudo-header sum already). `false` when the
/// positions do not fit the packet.
pub(crate) fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    if at.checked_add(2).is_none_or(|end| end > pkt.len()) || start > pkt.len() {
        return false;
    }
    let sum = fold(ones_sum(pkt.get(start..).unwrap_or_default(), 0));
    let mut ck = !sum;
    // A UDP checksum that computes to zero is sent as all ones (zero means "none").
    if ck == 0 && pkt.get(9) == Some(&17) {
        ck = 0xffff;
    }
    if let Some(f) = pkt.get_mut(at..at + 2) {
        f.copy_from_slice(&ck.to_be_bytes());
    }
    true
}

/// Sum of the UDP pseudo-header for `ip` (an IPv4 header) and a UDP length.
fn pseudo_sum(ip: &[u8], udp_len: usize) -> u64 {
    ones_sum(ip.get(12..20).unwrap_or_default(), 0) + 17 + udp_len as u64
}

/// The IPv4 header checksum of `hdr` (checksum field included as it stands).
fn header_checksum(hdr: &[u8]) -> u16 {
    !fold(ones_sum(hdr, 0))
}

/// A datagram that may be merged: IPv4 without options, not a fragment, TTL above 1, UDP with
/// a payload, lengths consistent, a valid header checksum, and a UDP checksum that is present
/// and verifies.
fn mergeable(pkt: &[u8]) -> bool {
    if pkt.len() <= HEAD_LEN || pkt.first() != Some(&0x45) || pkt.get(9) != Some(&17) {
        return false;
    }
    if pkt.get(8).is_none_or(|&ttl| ttl <= 1) {
        return false;
    }
    if pkt.get(..20).is_none_or(|h| fold(ones_sum(h, 0)) != 0xffff) {
        return false;
    }
    let be = |i: usize| {
        pkt.get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    // More-fragments flag or a fragment offset: not a whole datagram.
    if be(6).is_none_or(|f| f & 0x3fff != 0) || be(2) != Some(pkt.len()) {
        return false;
    }
    if be(24) != Some(pkt.len() - 20) || be(26).is_none_or(|ck| ck == 0) {
        return false;
    }
    let udp = pkt.get(20..).unwrap_or_default();
    fold(ones_sum(udp, pseudo_sum(pkt, udp.len()))) == 0xffff
}

/// Bytes that must be equal in every datagram of a merged packet: version and header length,
/// TOS, flags and fragment offset, TTL, protocol, addresses and ports. (Total length, IP ID,
/// the header checksum, UDP length and checksum differ per datagram.)
fn same_flow(a: &[u8], b: &[u8]) -> bool {
    const RANGES: [(usize, usize); 3] = [(0, 2), (6, 10), (12, 24)];
    RANGES.iter().all(|&(s, e)| a.get(s..e) == b.get(s..e))
}

fn ip_id(pkt: &[u8]) -> u16 {
    pkt.get(4..6)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// Datagrams waiting to be written to one device: the first one's headers and every payload.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    head: [u8; HEAD_LEN],
    payload: Vec<u8>,
    segs: usize,
    /// Payload size of the first datagram: every later one must be as long, except the last.
    seg_len: usize,
    /// A shorter datagram was taken: nothing more can follow it.
    closed: bool,
    next_id: u16,
    /// Datagrams in the frame last taken (for [`Outbox::unmerged`]).
    taken: usize,
}

/// What [`Outbox::take`] has for the device.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    /// The virtio-net header to write first.
    pub(crate) vnet: [u8; VNET_HDR_LEN],
    /// IPv4 and UDP headers (the merged packet's when several datagrams were taken).
    pub(crate) head: [u8; HEAD_LEN],
    /// Every payload, back to back.
    pub(crate) payload: &'a [u8],
    /// How many datagrams the frame carries.
    pub(crate) datagrams: usize,
}

impl Frame<'_> {
    /// Bytes of the datagrams as they were before merging (headers counted once each).
    pub(crate) fn len_unmerged(&self) -> usize {
        self.datagrams * HEAD_LEN + self.payload.len()
    }
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.segs == 0
    }

    /// Take `pkt` if it can join (or start) this outbox; `false` leaves it to the caller.
    pub(crate) fn offer(&mut self, pkt: &[u8]) -> bool {
        let Some(payload) = pkt.get(HEAD_LEN..) else {
            return false;
        };
        if self.segs == 0 {
            if !mergeable(pkt) {
                return false;
            }
            self.head
                .copy_from_slice(pkt.get(..HEAD_LEN).unwrap_or(&[0; HEAD_LEN]));
            self.payload.clear();
            self.payload.extend_from_slice(payload);
            self.segs = 1;
            self.seg_len = payload.len();
            self.closed = false;
            self.next_id = ip_id(pkt).wrapping_add(1);
            return true;
        }
        let fits = !self.closed
            && self.segs < MAX_SEGS
            && payload.len() <= self.seg_len
            && HEAD_LEN + self.payload.len() + payload.len() <= MAX_TOTAL;
        if !fits || ip_id(pkt) != self.next_id || !same_flow(&self.head, pkt) || !mergeable(pkt) {
            return false;
        }
        self.payload.extend_from_slice(payload);
        self.segs += 1;
        self.closed = payload.len() < self.seg_len;
        self.next_id = self.next_id.wrapping_add(1);
        true
    }

    /// Empty the outbox into one frame to write: the single datagram unchanged, or a UDP GSO
    /// packet whose headers cover every payload. `None` when empty.
    pub(crate) fn take(&mut self) -> Option<Frame<'_>> {
        let segs = std::mem::take(&mut self.segs);
        if segs == 0 {
            return None;
        }
        self.taken = segs;
        let mut vnet = [0u8; VNET_HDR_LEN];
        let mut head = self.head;
        if segs > 1 {
            let udp_len = 8 + self.payload.len();
            let total = 20 + udp_len;
            let h = &mut head;
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let ck = header_checksum(&h[..20]);
            h[10..12].copy_from_slice(&ck.to_be_bytes());
            h[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
            // CHECKSUM_PARTIAL convention: the field holds the folded pseudo-header sum.
            let partial = fold(pseudo_sum(&h[..20], udp_len));
            h[26..28].copy_from_slice(&partial.to_be_bytes());
            vnet[0] = F_NEEDS_CSUM;
            vnet[1] = GSO_UDP_L4;
            vnet[2..4].copy_from_slice(&(HEAD_LEN as u16).to_le_bytes());
            vnet[4..6].copy_from_slice(&(self.seg_len as u16).to_le_bytes());
            vnet[6..8].copy_from_slice(&20u16.to_le_bytes());
            vnet[8..10].copy_from_slice(&6u16.to_le_bytes());
        }
        Some(Frame {
            vnet,
            head,
            payload: &self.payload,
            datagrams: segs,
        })
    }

    /// The datagrams of the frame [`Outbox::take`] last gave, exactly as they were offered (for
    /// writing them one by one when the kernel refuses the merged frame). Empty once anything
    /// new was offered.
    pub(crate) fn unmerged(&self) -> Vec<Vec<u8>> {
        if self.segs != 0 || self.taken == 0 {
            return Vec::new();
        }
        let id = ip_id(&self.head);
        let mut out = Vec::with_capacity(self.taken);
        for (i, chunk) in self.payload.chunks(self.seg_len.max(1)).enumerate() {
            let mut p = Vec::with_capacity(HEAD_LEN + chunk.len());
            p.extend_from_slice(&self.head);
            p.extend_from_slice(chunk);
            let total = p.len();
            let udp_len = total - 20;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let ck = header_checksum(&p[..20]);
            p[10..12].copy_from_slice(&ck.to_be_bytes());
            p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
            p[26..28].copy_from_slice(&[0, 0]);
            let sum = fold(ones_sum(&p[20..], pseudo_sum(&p, udp_len)));
            // Every merged datagram had a verified, non-zero checksum: the recomputed one is it.
            let ck = match !sum {
                0 => 0xffff,
                c => c,
            };
            p[26..28].copy_from_slice(&ck.to_be_bytes());
            out.push(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP datagram 10.0.0.1:5000 -> 10.0.0.2:6000 with a correct checksum.
    fn datagram(id: u16, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let ck = header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&ck.to_be_bytes());
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&6000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        let sum = fold(ones_sum(&p[20..], pseudo_sum(&p, 8 + payload.len())));
        p[26..28].copy_from_slice(&(!sum).to_be_bytes());
        p
    }

    /// Split a frame the way the kernel's UDP GSO does, for checking: each datagram gets the
    /// head with its own length, ID (+1 each) and header checksum; its UDP checksum field is the
    /// frame's partial sum adjusted for the datagram's length (`__udp_gso_segment`), then
    /// completed over the datagram as a NIC would (`csum_start`, `csum_offset`).
    fn segment(f: &Frame<'_>) -> Vec<Vec<u8>> {
        if f.vnet[1] == GSO_NONE {
            let mut p = f.head.to_vec();
            p.extend_from_slice(f.payload);
            return vec![p];
        }
        let mss = usize::from(u16::from_le_bytes([f.vnet[4], f.vnet[5]]));
        let start = usize::from(u16::from_le_bytes([f.vnet[6], f.vnet[7]]));
        let offset = usize::from(u16::from_le_bytes([f.vnet[8], f.vnet[9]]));
        let partial = u16::from_be_bytes([f.head[26], f.head[27]]);
        let super_len = u16::from_be_bytes([f.head[24], f.head[25]]);
        let id = ip_id(&f.head);
        f.payload
            .chunks(mss)
            .enumerate()
            .map(|(i, chunk)| {
                let mut p = f.head.to_vec();
                p.extend_from_slice(chunk);
                let total = p.len();
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                p[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                p[10..12].copy_from_slice(&[0, 0]);
                let ck = header_checksum(&p[..20]);
                p[10..12].copy_from_slice(&ck.to_be_bytes());
                let new_len = (total - 20) as u16;
                p[24..26].copy_from_slice(&new_len.to_be_bytes());
                // csum16_add(csum16_sub(check, old_len), new_len)
                let adjusted = fold(
                    u64::from(fold(u64::from(partial) + u64::from(!super_len)))
                        + u64::from(new_len),
                );
                p[start + offset..start + offset + 2].copy_from_slice(&adjusted.to_be_bytes());
                assert!(complete_checksum(&mut p, start, offset));
                p
            })
            .collect()
    }

    #[test]
    fn the_checksum_helpers_agree_with_a_known_header() {
        // The IPv4 header from RFC 1071-style worked examples (Wikipedia's): checksum b861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(header_checksum(&h), 0xb861);
        assert!(mergeable(&datagram(1, b"hello")));
        assert!(mergeable(&datagram(1, b"odd")));
    }

    #[test]
    fn a_run_of_one_flow_becomes_one_gso_frame_that_splits_back_exactly() {
        let sent: Vec<Vec<u8>> = (0..5u16)
            .map(|i| {
                datagram(
                    0xfffe_u16.wrapping_add(i),
                    &vec![i as u8; if i == 4 { 7 } else { 100 }],
                )
            })
            .collect();
        let mut o = Outbox::default();
        for p in &sent {
            assert!(o.offer(p));
        }
        let f = o.take().unwrap();
        assert_eq!(f.datagrams, 5);
        assert_eq!(f.vnet[0], F_NEEDS_CSUM);
        assert_eq!(f.vnet[1], GSO_UDP_L4);
        assert_eq!(u16::from_le_bytes([f.vnet[4], f.vnet[5]]), 100);
        // The merged head is a valid IPv4 header over the whole packet.
        assert_eq!(fold(ones_sum(&f.head[..20], 0)), 0xffff);
        assert_eq!(
            usize::from(u16::from_be_bytes([f.head[2], f.head[3]])),
            28 + 407
        );
        assert_eq!(segment(&f), sent);
        assert!(o.is_empty() && o.take().is_none());
        // Written one by one instead (a kernel that refuses the frame): the same datagrams.
        assert_eq!(o.unmerged(), sent);
        assert!(o.offer(&sent[0]));
        assert!(o.unmerged().is_empty(), "something new was offered");
    }

    #[test]
    fn a_wrong_partial_checksum_would_show() {
        let sent: Vec<Vec<u8>> = (0..3u16).map(|i| datagram(i, &[i as u8 + 1; 64])).collect();
        let mut o = Outbox::default();
        for p in &sent {
            assert!(o.offer(p));
        }
        let mut f = o.take().unwrap();
        f.head[27] ^= 1;
        assert_ne!(segment(&f), sent);
    }

    #[test]
    fn a_single_datagram_is_written_unchanged_without_gso() {
        let p = datagram(7, b"just one");
        let mut o = Outbox::default();
        assert!(o.offer(&p));
        let f = o.take().unwrap();
        assert_eq!(f.vnet, [0; VNET_HDR_LEN]);
        assert_eq!([&f.head[..], f.payload].concat(), p);
    }

    #[test]
    fn what_cannot_be_merged_is_refused() {
        let mut o = Outbox::default();
        // Not an ordinary UDP datagram.
        let mut bad_ck = datagram(1, b"payload");
        bad_ck[30] ^= 1;
        assert!(!o.offer(&bad_ck));
        let mut no_ck = datagram(1, b"payload");
        no_ck[26..28].copy_from_slice(&[0, 0]);
        assert!(!o.offer(&no_ck));
        let mut frag = datagram(1, b"payload");
        frag[6] = 0x20; // more fragments
        assert!(!o.offer(&frag));
        let mut tcp = datagram(1, b"payload");
        tcp[9] = 6;
        assert!(!o.offer(&tcp));
        let mut bad_header = datagram(1, b"payload");
        bad_header[11] ^= 1;
        assert!(!o.offer(&bad_header));
        let mut last_hop = datagram(1, b"payload");
        last_hop[8] = 1;
        let ck = {
            last_hop[10..12].copy_from_slice(&[0, 0]);
            header_checksum(&last_hop[..20])
        };
        last_hop[10..12].copy_from_slice(&ck.to_be_bytes());
        assert!(!o.offer(&last_hop), "TTL 1");
        assert!(!o.offer(&datagram(1, b"")));
        assert!(!o.offer(&datagram(1, b"payload")[..30]));
        assert!(!o.offer(&[]));
        assert!(o.is_empty());

        // Joining a run: same flow, next ID, not longer than the first, nothing after a short one.
        assert!(o.offer(&datagram(10, &[1; 50])));
        assert!(!o.offer(&datagram(12, &[1; 50])), "an ID gap");
        assert!(!o.offer(&datagram(11, &[1; 51])), "longer than the first");
        let mut other_port = datagram(11, &[1; 50]);
        other_port[23] ^= 1;
        let sum_fix = |p: &mut Vec<u8>| {
            p[26..28].copy_from_slice(&[0, 0]);
            let len = p.len() - 20;
            let s = fold(ones_sum(&p[20..], pseudo_sum(p, len)));
            p[26..28].copy_from_slice(&(!s).to_be_bytes());
        };
        sum_fix(&mut other_port);
        assert!(!o.offer(&other_port), "another flow");
        let mut other_ttl = datagram(11, &[1; 50]);
        other_ttl[8] = 63;
        other_ttl[10..12].copy_from_slice(&[0, 0]);
        let ck = header_checksum(&other_ttl[..20]);
        other_ttl[10..12].copy_from_slice(&ck.to_be_bytes());
        assert!(!o.offer(&other_ttl), "another TTL");
        assert!(o.offer(&datagram(11, &[1; 20])));
        assert!(!o.offer(&datagram(12, &[1; 20])), "after a shorter one");
        assert_eq!(o.take().unwrap().datagrams, 2);
    }

    #[test]
    fn merging_stops_at_the_segment_and_size_limits() {
        let mut o = Outbox::default();
        let mut n = 0u16;
        while o.offer(&datagram(n, &[0; 1])) {
            n += 1;
        }
        assert_eq!(usize::from(n), MAX_SEGS);
        let _ = o.take();
        let big = vec![0u8; 1400];
        n = 0;
        while o.offer(&datagram(n, &big)) {
            n += 1;
        }
        assert_eq!(usize::from(n), (MAX_TOTAL - HEAD_LEN) / 1400);
        let f = o.take().unwrap();
        assert!(HEAD_LEN + f.payload.len() <= MAX_TOTAL);
    }

    #[test]
    fn read_headers_and_partial_checksums() {
        assert_eq!(read_header(&[0; 10]), Some(ReadHeader::Plain));
        assert_eq!(read_header(&[0; 9]), None);
        let mut h = [0u8; 10];
        h[1] = GSO_UDP_L4;
        assert_eq!(read_header(&h), Some(ReadHeader::Segmented));
        h = [F_NEEDS_CSUM, 0, 0, 0, 0, 0, 20, 0, 6, 0];
        assert_eq!(
            read_header(&h),
            Some(ReadHeader::NeedsChecksum {
                start: 20,
                offset: 6
            })
        );
        // A datagram whose checksum field holds only the pseudo-header sum gets completed.
        let good = datagram(3, b"complete me");
        let mut p = good.clone();
        let partial = fold(pseudo_sum(&p, p.len() - 20));
        p[26..28].copy_from_slice(&partial.to_be_bytes());
        assert!(complete_checksum(&mut p, 20, 6));
        assert_eq!(p, good);
        assert!(!complete_checksum(&mut p, 20, usize::MAX));
        let len = p.len();
        assert!(!complete_checksum(&mut p, len, 6));
        assert!(!complete_checksum(&mut p, usize::MAX, 1));
    }
}
