//! Fuzz `turn::binding::Responder::handle` with arbitrary packets, transports, listeners,
//! sources, output buffer sizes and amplification bounds, for an RFC 5780 server and a plain
//! RFC 8489 one (IPv4 and IPv6 each).
//!
//! Input layout (so seeds stay readable): 10 control bytes, then the packet.
//!
//! | byte | meaning                                                                   |
//! |------|---------------------------------------------------------------------------|
//! | 0    | bit 0 TCP, bit 1 listener IP, bit 2 listener port (a plain server only    |
//! |      | has the primary), bit 3 IPv6 source, bits 4-5 config (RFC 5780 v4,        |
//! |      | plain v4, RFC 5780 v6, plain v6)                                          |
//! | 1    | bits 0-2 amplification (3 3 3 3 1 2 4 10), bits 3-4 max_padding          |
//! | 2-3  | bit 15 clear: 2048-byte output buffer; set: low 15 bits mod 2049          |
//! | 4-7  | source IP (IPv4, or the low 32 bits of 2001:db8::/96)                     |
//! | 8-9  | source port                                                               |
//!
//! Invariants checked on every reply:
//! - `reply.len <= out.len()`;
//! - amplification: `reply.len + hdr <= amplification * (packet.len() + hdr)`, hdr being the IP
//!   and UDP headers (28 for IPv4, 48 for IPv6);
//! - the reply re-parses with `stun::wire::Message::parse` (success and error alike), carries
//!   the request's transaction ID and method, a valid FINGERPRINT if any, and goes back to the
//!   source IP from a listener the server has; a success carries XOR-MAPPED-ADDRESS = source.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use stun::credentials::error_code;
use stun::rfc5780::BindingResponse;
use stun::wire::{Class, Message, attr};
use turn::binding::{Listener, Responder, ResponderConfig, Transport};

const CONTROL: usize = 10;

fn config(which: u8, amplification: usize, max_padding: usize) -> ResponderConfig {
    let (primary, alt): (SocketAddr, IpAddr) = if which & 2 == 0 {
        (
            SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 3478),
            Ipv4Addr::new(192, 0, 2, 2).into(),
        )
    } else {
        (
            SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), 3478),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
        )
    };
    let alternate = (which & 1 == 0).then_some((alt, 3479));
    let mut c = ResponderConfig::new(primary, alternate);
    c.amplification = amplification;
    c.max_padding = max_padding;
    c
}

fuzz_target!(|data: &[u8]| {
    let Some((control, packet)) = data.split_first_chunk::<CONTROL>() else {
        return;
    };
    let [flags, shape, o_hi, o_lo, a, b, c, d, p_hi, p_lo] = *control;
    let transport = if flags & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let local = Listener {
        ip: (flags >> 1) & 1,
        port: (flags >> 2) & 1,
    };
    let ip: IpAddr = if flags & 8 == 0 {
        Ipv4Addr::new(a, b, c, d).into()
    } else {
        let low = u32::from_be_bytes([a, b, c, d]);
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (low >> 16) as u16, low as u16).into()
    };
    let src = SocketAddr::new(ip, u16::from_be_bytes([p_hi, p_lo]));
    let amplification = [3, 3, 3, 3, 1, 2, 4, 10][usize::from(shape & 7)];
    let max_padding = [1200, 0, 7, 65_535][usize::from((shape >> 3) & 3)];
    let out_len = match u16::from_be_bytes([o_hi, o_lo]) {
        v if v & 0x8000 == 0 => 2048,
        v => usize::from(v & 0x7FFF) % 2049,
    };

    let responder = Responder::new(config((flags >> 4) & 3, amplification, max_padding));
    // Packets only arrive on listeners the server has: a plain server has just the primary.
    let local = if responder.config().address(local).is_some() {
        local
    } else {
        Listener::PRIMARY
    };
    let mut out = vec![0u8; out_len];
    let Ok(reply) = responder.handle(transport, local, src, packet, &mut out) else {
        return;
    };

    // The request was accepted, so it must parse (the responder only answers parsed requests).
    let request = Message::parse(packet).expect("answered a packet that does not parse");
    assert_eq!(request.class(), Class::Request, "answered a non-request");

    assert!(
        reply.len <= out.len(),
        "reply {} > buffer {}",
        reply.len,
        out.len()
    );
    let hdr = match src.ip() {
        IpAddr::V4(_) => 28,
        IpAddr::V6(_) => 48,
    };
    assert!(
        reply.len + hdr <= amplification * (packet.len() + hdr),
        "amplification: reply {} for request {} (x{amplification}, hdr {hdr})",
        reply.len,
        packet.len()
    );
    assert_eq!(reply.to.ip(), src.ip(), "replies go back to the source IP");
    assert!(
        responder.config().address(reply.from).is_some(),
        "reply from a listener the server does not have: {:?}",
        reply.from
    );

    let bytes = &out[..reply.len];
    let m = Message::parse(bytes).expect("our own reply does not parse");
    assert_eq!(m.transaction_id(), request.transaction_id());
    assert_eq!(m.method(), request.method());
    assert_ne!(
        m.check_fingerprint(),
        Err(stun::wire::WireError::BadFingerprint)
    );
    match reply.error {
        None => {
            assert_eq!(m.class(), Class::Success);
            let r = BindingResponse::parse(bytes).expect("success reply is not a Binding response");
            assert!(r.success);
            assert_eq!(r.xor_mapped, Some(src));
            assert_eq!(r.response_origin, responder.config().address(reply.from));
            if let Some(p) = r.padding {
                assert!(p <= max_padding, "PADDING {p} over the cap {max_padding}");
                let asked = request.get(attr::PADDING).map(|a| a.value.len());
                assert!(asked.is_some_and(|n| p <= n), "PADDING {p} not asked for");
            }
        }
        Some(code) => {
            assert_eq!(m.class(), Class::Error);
            assert_eq!(error_code(&m).map(|(c, _)| c), Some(code));
            assert_eq!(reply.to, src, "errors go to the source");
            assert_eq!(reply.from, local, "errors go out where the request came in");
        }
    }
});
